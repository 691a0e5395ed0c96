"""A call described as data runs and prints as the same program (conformance/adapters/program.py)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import pytest

from conformance.adapters import program
from conformance.adapters.program import (
    Assign,
    BinOp,
    Cached,
    Do,
    Import,
    Index,
    Lambda,
    Name,
    Once,
    Program,
    SetAttr,
    With,
    invoke,
    method,
)


class Flags:
    strict = False


@contextlib.contextmanager
def placed(where: str) -> Iterator[str]:
    yield f"on {where}"


def _described() -> Program:
    return Program(
        (
            Import("math"),
            SetAttr("flags.strict", True),
            Assign("pair", (invoke("math.floor", 2.5), method("text", "upper"))),
            Assign("low, high", Name("pair")),
            With(invoke("placed", "cpu"), (Assign("where", Name("entered")),), "entered"),
            Assign("twice", Lambda(("a",), BinOp("*", Name("a"), 2))),
            Assign("y", BinOp("+", invoke("twice", Name("low")), Index(invoke("len", [Name("high"), 1, 2]), None))),
        )
    )


def test_the_source_is_the_program_that_runs() -> None:
    described = _described()
    source = described.source()
    assert source.splitlines() == [
        "import math",
        "flags.strict = True",
        "pair = (math.floor(2.5), text.upper())",
        "low, high = pair",
        "with placed('cpu') as entered:",
        "    where = entered",
        "twice = lambda a: (a * 2)",
        "y = (twice(low) + len([high, 1, 2])[None])",
    ]
    # (len(...)[None] raises in both: the printed program fails where the run fails.)
    bindings: dict[str, Any] = {"text": "ab", "flags": Flags(), "placed": placed, "len": len}
    with pytest.raises(TypeError):
        described.run(bindings)
    with pytest.raises(TypeError):
        exec(source, dict(bindings))


def test_run_and_exec_of_the_source_agree() -> None:
    described = Program(
        (
            Import("math"),
            Assign("root", invoke("math.sqrt", Name("x"))),
            Assign("y", BinOp("+", Name("root"), invoke(Lambda(("v",), BinOp("*", Name("v"), 3)), 2))),
        )
    )
    namespace: dict[str, Any] = {"x": 16.0}
    exec(described.source(), namespace)
    assert described.run({"x": 16.0}) == namespace["y"] == math.sqrt(16.0) + 6


def test_a_layer_error_says_which_call_failed() -> None:
    failing = Program((Do(invoke("int", "not a number"), "first call", "on the first input"),), result="_")
    with pytest.raises(ValueError, match=r"^on the first input: invalid literal"):
        failing.run({"int": int})


def test_cached_values_are_reused_per_text_and_context() -> None:
    program.clear_cache()
    made: list[str] = []
    recorder = type("Recorder", (), {"make": staticmethod(lambda tag: made.append(tag) or tag)})
    namespace: dict[str, Any] = {}
    Import("math").execute(namespace)
    namespace["recorder"] = recorder
    # `recorder` is not a module: a cached expression may read only modules (equal text, equal value).
    with pytest.raises(ValueError, match="may read only modules"):
        Cached(invoke("recorder.make", "a")).evaluate(namespace)
    closed = Cached(invoke("math.floor", 2.5), context=("cpu",))
    assert closed.evaluate(namespace) == closed.evaluate(namespace) == 2
    assert program.cached_values() == 1
    Cached(invoke("math.floor", 2.5), context=("gpu",)).evaluate(namespace)  # another context: another value
    assert program.cached_values() == 2
    program.clear_cache()


def test_statements_run_once_per_text_and_context_and_rebind_their_names() -> None:
    program.clear_cache()
    namespace: dict[str, Any] = {}
    Import("itertools").execute(namespace)
    Import("builtins").execute(namespace)
    body = (Assign("counter", invoke("itertools.count")), Do(invoke("builtins.next", Name("counter"))))
    counter = Once(body, ("cpu",))
    assert counter.lines() == ["counter = itertools.count()", "builtins.next(counter)"]
    counter.execute(namespace)
    first = namespace.pop("counter")
    counter.execute(namespace)
    assert namespace["counter"] is first and next(first) == 1  # the body ran once: one next() so far
    Once(body, ("gpu",)).execute(namespace)  # another context: run again, a new counter
    assert namespace["counter"] is not first
    namespace["data"] = [1, 2]
    with pytest.raises(ValueError, match="may read only modules, not 'data'"):
        Once((Assign("n", invoke("builtins.len", Name("data"))),)).execute(namespace)
    # An error of the code it runs is not relabelled.
    with pytest.raises(KeyError, match="inside"):
        Once((Do(method(invoke("builtins.dict"), "__getitem__", "inside")),)).execute(namespace)
    program.clear_cache()
