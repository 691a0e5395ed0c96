"""A framework call described once, as data, that both runs and prints as its reproduction.

An adapter describes what it does for one check as a `Program`: a few statements (imports,
precision flags, tensors placed on a device, the convolution, a gradient tape...) whose
expressions are data: names, attribute paths, calls with their arguments, literals. `run`
interprets those statements in a namespace that holds the case's float64 tensors (`x`, `w`, and for
derivatives `dy`, `vx`, `vw`) and returns the result variable; `source` prints the very same
statements as the Python a user pastes after building those tensors. Because both are derived
from one description, the reproduction cannot drift from the call that was judged (it did, twice,
when they were written separately); `tests/test_reproductions.py` executes every target's source
and compares bits.

One mechanism for every adapter, Keras' whole composite models included. Why data rather than source
text run through `ast` and `compile`: the harness reuses what is expensive to rebuild across checks,
keyed by its text (`Cached`, `Once`: a traced tf.function, a compiled model), and must know which names
such a part reads (only modules, so equal text is an equal value); a description answers both
directly, where source would have to be parsed back for every check.

Only what the adapters need is here: no control flow, operators `+` and `*`, one-expression
lambdas, `with` blocks, and `Cached` (an expression) and `Once` (statements) for what is expensive
to rebuild and safe to reuse (a `tf.function`, whose tracing is the expensive part; a compiled
Keras model).
"""

from __future__ import annotations

import importlib
import operator
import os
import types
from abc import ABC, abstractmethod
from collections import ChainMap, OrderedDict
from collections.abc import Callable, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Union

from conformance import held_memory

# A value in a description: an `Expr`, a Python literal (None, bool, int, float, str), or a list or
# tuple of values.
Value = Union["Expr", None, bool, int, float, str, Sequence["Value"]]
Namespace = MutableMapping[str, Any]


class Expr(ABC):
    @abstractmethod
    def evaluate(self, namespace: Namespace) -> Any:
        """The value, computed in `namespace` (the program's variables and imported modules)."""

    @abstractmethod
    def source(self) -> str:
        """The same expression as Python source."""

    def names(self) -> Iterator[str]:
        """The free names this expression reads (first parts of dotted paths)."""
        return iter(())


_LITERALS = (int, float, str, bool, type(None))  # (checked first: most arguments are literals)


def evaluate(value: Value, namespace: Namespace) -> Any:
    if isinstance(value, _LITERALS):
        return value
    if isinstance(value, Expr):
        return value.evaluate(namespace)
    if isinstance(value, list):
        return [evaluate(item, namespace) for item in value]
    if isinstance(value, tuple):
        return tuple(evaluate(item, namespace) for item in value)
    return value


def source(value: Value) -> str:
    if isinstance(value, Expr):
        return value.source()
    if isinstance(value, list):
        return "[" + ", ".join(source(item) for item in value) + "]"
    if isinstance(value, tuple):
        return "(" + ", ".join(source(item) for item in value) + ("," if len(value) == 1 else "") + ")"
    return repr(value)


def free_names(value: Value) -> Iterator[str]:
    if isinstance(value, Expr):
        yield from value.names()
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from free_names(item)


@dataclass(frozen=True)
class Name(Expr):
    """A variable or a dotted path from one: `x_t`, `tf.nn.conv2d`, `torch.float32`."""

    path: str

    def evaluate(self, namespace: Namespace) -> Any:
        head, *rest = self.path.split(".")
        value = namespace[head]
        for part in rest:
            value = getattr(value, part)
        return value

    def source(self) -> str:
        return self.path

    def names(self) -> Iterator[str]:
        yield self.path.split(".")[0]


@dataclass(frozen=True)
class Attr(Expr):
    """An attribute of a computed value: `F.pad(xt, ...).permute`."""

    value: Expr
    attribute: str

    def evaluate(self, namespace: Namespace) -> Any:
        return getattr(self.value.evaluate(namespace), self.attribute)

    def source(self) -> str:
        return f"{self.value.source()}.{self.attribute}"

    def names(self) -> Iterator[str]:
        return self.value.names()


@dataclass(frozen=True)
class Call(Expr):
    function: Expr
    args: tuple[Value, ...] = ()
    keywords: tuple[tuple[str, Value], ...] = ()

    def evaluate(self, namespace: Namespace) -> Any:
        function = self.function.evaluate(namespace)
        args = [evaluate(arg, namespace) for arg in self.args]
        return function(*args, **{key: evaluate(value, namespace) for key, value in self.keywords})

    def source(self) -> str:
        arguments = [source(arg) for arg in self.args] + [f"{key}={source(value)}" for key, value in self.keywords]
        function = self.function.source()
        if isinstance(self.function, Lambda):  # `(lambda v: ...)(2)`: unparenthesised, the call is the body's
            function = f"({function})"
        return f"{function}({', '.join(arguments)})"

    def names(self) -> Iterator[str]:
        yield from self.function.names()
        yield from free_names(self.args)
        yield from free_names(tuple(value for _, value in self.keywords))


_OPERATORS: dict[str, Callable[[Any, Any], Any]] = {"+": operator.add, "*": operator.mul}


@dataclass(frozen=True)
class BinOp(Expr):
    operator: str  # "+" or "*"
    left: Value
    right: Value

    def evaluate(self, namespace: Namespace) -> Any:
        return _OPERATORS[self.operator](evaluate(self.left, namespace), evaluate(self.right, namespace))

    def source(self) -> str:
        return f"({source(self.left)} {self.operator} {source(self.right)})"

    def names(self) -> Iterator[str]:
        return free_names((self.left, self.right))


@dataclass(frozen=True)
class Dict(Expr):
    """`{'key': value, ...}` with string keys."""

    items: tuple[tuple[str, Value], ...]

    def evaluate(self, namespace: Namespace) -> Any:
        return {key: evaluate(value, namespace) for key, value in self.items}

    def source(self) -> str:
        return "{" + ", ".join(f"{key!r}: {source(value)}" for key, value in self.items) + "}"

    def names(self) -> Iterator[str]:
        return free_names(tuple(value for _, value in self.items))


@dataclass(frozen=True)
class Index(Expr):
    value: Expr
    key: Value

    def evaluate(self, namespace: Namespace) -> Any:
        return self.value.evaluate(namespace)[evaluate(self.key, namespace)]

    def source(self) -> str:
        return f"{self.value.source()}[{source(self.key)}]"

    def names(self) -> Iterator[str]:
        yield from self.value.names()
        yield from free_names(self.key)


@dataclass(frozen=True)
class Lambda(Expr):
    params: tuple[str, ...]
    body: Value

    def evaluate(self, namespace: Namespace) -> Any:
        def function(*args: Any) -> Any:
            return evaluate(self.body, ChainMap(dict(zip(self.params, args, strict=True)), namespace))

        return function

    def source(self) -> str:
        return f"lambda {', '.join(self.params)}: {source(self.body)}"

    def names(self) -> Iterator[str]:
        return (name for name in free_names(self.body) if name not in self.params)


# Values of `Cached` expressions, by their source and context. Each is reused by every check whose
# description has the same text, as a model reuses its layers; the oldest go first. A case's checks
# (its targets, dtypes and replicates) run back to back and share a few dozen; each value holds a
# compiled program (about 1 MiB for a small jitted convolution) or a session, so a budget of 64 is
# what the next cases reuse, and all of it goes when the process is over its memory budget
# (conformance/held_memory.py).
_cached: OrderedDict[tuple[str, tuple[Any, ...]], Any] = OrderedDict()
CACHE_SIZE = 64


@dataclass(frozen=True)
class Cached(Expr):
    """`value`, evaluated once per distinct source text and `context` (what else it depends on, e.g.
    the device). It must be closed: read only modules, so that equal text means an equal value."""

    value: Expr
    context: tuple[Any, ...] = ()

    @cached_property
    def key(self) -> tuple[str, tuple[Any, ...]]:
        # (Made once per description: a program is reused across a geometry's checks.)
        return (self.value.source(), self.context)

    def evaluate(self, namespace: Namespace) -> Any:
        key = self.key
        if key not in _cached:
            open_names = [n for n in self.value.names() if not isinstance(namespace.get(n), types.ModuleType)]
            if open_names:
                raise ValueError(f"a cached expression may read only modules, not {open_names}: {key[0]}")
            _cached[key] = self.value.evaluate(namespace)
            if len(_cached) > CACHE_SIZE:
                _cached.popitem(last=False)
        _cached.move_to_end(key)
        return _cached[key]

    def source(self) -> str:
        return self.value.source()

    def names(self) -> Iterator[str]:
        return self.value.names()


def cached_values() -> int:
    return len(_cached)


@held_memory.on_release
def clear_cache() -> None:
    _cached.clear()


# -- statements ---------------------------------------------------------------------------------


class Statement(ABC):
    @abstractmethod
    def execute(self, namespace: Namespace) -> None:
        """Run it, binding what it assigns in `namespace`."""

    @abstractmethod
    def lines(self) -> list[str]:
        """The same statement as lines of Python source."""


def _commented(line: str, comment: str) -> str:
    return f"{line}  # {comment}" if comment else line


@dataclass(frozen=True)
class Import(Statement):
    """`import module`, `import module as alias`, or `from module import a, b`."""

    module: str
    alias: str | None = None
    names: tuple[str, ...] = ()

    def execute(self, namespace: Namespace) -> None:
        module = importlib.import_module(self.module)  # (already loaded by the adapter: a dictionary lookup)
        if self.names:
            namespace.update({name: getattr(module, name) for name in self.names})
        elif self.alias:
            namespace[self.alias] = module
        else:
            head = self.module.split(".")[0]
            namespace[head] = importlib.import_module(head)

    def lines(self) -> list[str]:
        if self.names:
            return [f"from {self.module} import {', '.join(self.names)}"]
        return [f"import {self.module}" + (f" as {self.alias}" if self.alias else "")]


@dataclass(frozen=True)
class Assign(Statement):
    """`target = value`; `target` may unpack: "gx, gw" or "(g,)"."""

    target: str
    value: Value
    comment: str = ""

    def execute(self, namespace: Namespace) -> None:
        result = evaluate(self.value, namespace)
        names = [n.strip() for n in self.target.strip("()").split(",") if n.strip()]
        if "," in self.target:
            namespace.update(zip(names, result, strict=True))
        else:
            namespace[self.target] = result

    def lines(self) -> list[str]:
        return [_commented(f"{self.target} = {source(self.value)}", self.comment)]


@dataclass(frozen=True)
class Do(Statement):
    """An expression evaluated for its effect. `context`, when given, prefixes an error raised here
    (the first of two calls to a layer: which of them failed matters)."""

    value: Expr
    comment: str = ""
    context: str = ""

    def execute(self, namespace: Namespace) -> None:
        try:
            self.value.evaluate(namespace)
        except Exception as exc:
            if not self.context:
                raise
            raise _with_context(exc, self.context) from None

    def lines(self) -> list[str]:
        return [_commented(self.value.source(), self.comment)]


def _with_context(exc: Exception, context: str) -> Exception:
    """The same exception type with `context` before its message (its name is part of the finding);
    an exception type that cannot be rebuilt from a message is kept as it is."""
    try:
        return type(exc)(f"{context}: {exc}")
    except Exception:
        return exc


@dataclass(frozen=True)
class SetAttr(Statement):
    """`module.attribute.path = value` (a framework's global flag)."""

    path: str
    value: Value

    def execute(self, namespace: Namespace) -> None:
        owner, _, attribute = self.path.rpartition(".")
        setattr(Name(owner).evaluate(namespace), attribute, evaluate(self.value, namespace))

    def lines(self) -> list[str]:
        return [f"{self.path} = {source(self.value)}"]


@dataclass(frozen=True)
class SetEnv(Statement):
    """An environment variable a framework reads once, at import: it must come before the import.
    (A process that runs such a program was started with it set; setting it again changes nothing.)"""

    variable: str
    value: str

    def execute(self, namespace: Namespace) -> None:
        os.environ[self.variable] = self.value

    def lines(self) -> list[str]:
        return [f"import os; os.environ[{self.variable!r}] = {self.value!r}"]


@dataclass(frozen=True)
class With(Statement):
    context: Expr
    body: tuple[Statement, ...]
    name: str | None = None

    def execute(self, namespace: Namespace) -> None:
        with self.context.evaluate(namespace) as entered:
            if self.name:
                namespace[self.name] = entered
            for statement in self.body:
                statement.execute(namespace)

    def lines(self) -> list[str]:
        header = f"with {self.context.source()}" + (f" as {self.name}" if self.name else "") + ":"
        return [header, *(f"    {line}" for statement in self.body for line in statement.lines())]


class _ModulesOnly(dict[str, Any]):
    """The scope of a `Once` body: the modules, and what the body binds; reading any other name is
    the description's mistake, said as such (a KeyError inside a framework call passes as it is)."""

    def __init__(self, modules: Mapping[str, Any], source: str) -> None:
        super().__init__(modules)
        self.source = source

    def __missing__(self, name: str) -> Any:
        raise ValueError(f"a statement run once may read only modules, not {name!r}: {self.source}")


@dataclass(frozen=True)
class Once(Statement):
    """Statements whose results are expensive to rebuild and safe to reuse (a Keras model built and
    compiled, whose compiled predict step is the expensive part): run once per distinct source and
    `context`, and on every later run the names they bound are bound again. Like `Cached`, the body
    may read only modules; it prints as the plain statements. `context` must carry every setting
    made outside the body that a compilation captures (the device, TF32)."""

    body: tuple[Statement, ...]
    context: tuple[Any, ...] = ()

    @cached_property
    def key(self) -> tuple[str, tuple[Any, ...]]:
        return ("\n".join(self.lines()), self.context)

    def execute(self, namespace: Namespace) -> None:
        key = self.key
        if key not in _cached:
            modules = {name: value for name, value in namespace.items() if isinstance(value, types.ModuleType)}
            scope = _ModulesOnly(modules, source=key[0])
            for statement in self.body:
                statement.execute(scope)
            _cached[key] = {name: value for name, value in scope.items() if name not in modules}
            if len(_cached) > CACHE_SIZE:
                _cached.popitem(last=False)
        _cached.move_to_end(key)
        namespace.update(_cached[key])

    def lines(self) -> list[str]:
        return [line for statement in self.body for line in statement.lines()]


@dataclass(frozen=True)
class Program:
    statements: tuple[Statement, ...]
    result: str = "y"

    def run(self, bindings: Mapping[str, Any]) -> Any:
        namespace: dict[str, Any] = dict(bindings)
        for statement in self.statements:
            statement.execute(namespace)
        return namespace[self.result]

    def source(self) -> str:
        return self.text

    @cached_property
    def text(self) -> str:
        return "\n".join(line for statement in self.statements for line in statement.lines())


# -- shorthands for descriptions -----------------------------------------------------------------


def invoke(function: str | Expr, *args: Value, **keywords: Value) -> Call:
    """`function(*args, **keywords)`; a string names the function by its dotted path."""
    return Call(Name(function) if isinstance(function, str) else function, args, tuple(keywords.items()))


def method(value: Expr | str, name: str, *args: Value, **keywords: Value) -> Call:
    """`value.name(*args, **keywords)`."""
    return invoke(Attr(Name(value) if isinstance(value, str) else value, name), *args, **keywords)
