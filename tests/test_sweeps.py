"""Sweeps expand to ordinary cases with stable ids and data; constraints are safe and checked."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest

from conformance import sweeps
from conformance.cases import load_file, materialize
from conformance.check_records import full_reproduction

SWEEP = """
[[sweep]]
id = "grid"
description = "A small grid."
seed = 7
channels = 2
out_channels = 2
dtypes = ["float32"]
where = ["channels % groups == 0", "effective_h <= size_h + 2"]
[sweep.axes]
size = {sizes}
kernel_size = [1, 3, [2, 3]]
rate = [1, 2]
padding = ["SAME", "VALID", [[0, 2], [1, 0]]]
groups = [1, 2]
"""


def _load(tmp_path: Path, text: str, name: str = "family.toml"):
    path = tmp_path / name
    path.write_text(text)
    return load_file(path, tmp_path)


def test_every_combination_that_meets_the_constraints_is_a_case(tmp_path: Path) -> None:
    loaded = _load(tmp_path, SWEEP.format(sizes="[5, [6, 7]]"))
    assert loaded.errors == []
    expected = 0
    for size in (5, 6):
        for kernel_h in (1, 3, 2):
            for rate in (1, 2):
                expected += 3 * 2 * (rate * (kernel_h - 1) + 1 <= size + 2)
    assert len(loaded.cases) == expected
    ids = {case.id for case in loaded.cases}
    assert "grid-in6x7-k2x3-r2-p0.2.1.0-g2" in ids
    case = next(c for c in loaded.cases if c.id == "grid-in6x7-k2x3-r2-p0.2.1.0-g2")
    assert case.input_shape == (1, 6, 7, 2)
    assert case.kernel_shape == (2, 3, 1, 2)
    assert case.padding == ((0, 2), (1, 0))
    assert case.groups == 2
    assert "grid" in case.tags


def test_adding_an_axis_value_keeps_existing_ids_and_data(tmp_path: Path) -> None:
    small = _load(tmp_path, SWEEP.format(sizes="[5]"), "a.toml")
    large = _load(tmp_path, SWEEP.format(sizes="[9, 5, 4]"), "b.toml")
    by_id = {case.id: case for case in large.cases}
    assert small.cases and all(case.id in by_id for case in small.cases)
    for case in small.cases:
        other = by_id[case.id]
        assert materialize(case, "float32").x_hash == materialize(other, "float32").x_hash
        assert materialize(case, "float32").w_hash == materialize(other, "float32").w_hash


def test_seeds_differ_between_cases_and_follow_the_sweep_seed(tmp_path: Path) -> None:
    first = _load(tmp_path, SWEEP.format(sizes="[5]"), "a.toml").cases
    reseeded = _load(tmp_path, SWEEP.format(sizes="[5]").replace("seed = 7", "seed = 8"), "b.toml").cases
    hashes = {materialize(c, "float32").x_hash for c in first}
    assert len(hashes) == len(first)
    assert not hashes & {materialize(c, "float32").x_hash for c in reseeded}


def test_a_combination_the_loader_refuses_is_reported_once_and_the_rest_loads(tmp_path: Path) -> None:
    text = (
        SWEEP.format(sizes="[5]")
        .replace('where = ["channels % groups == 0", ', "where = [")
        .replace("channels = 2", "channels = 3")
    )
    loaded = _load(tmp_path, text)
    (error,) = loaded.errors
    assert error.entry == "sweep" and error.case == "grid" and error.field == "where"
    assert "groups 2 does not divide the 3 input channels" in error.message
    assert "more combinations fail too" in error.message
    assert loaded.cases and all(case.groups == 1 for case in loaded.cases)
    # The file with the sweep's line, then the sweep and the field: all of it, in that order.
    assert re.match(r"family\.toml:\d+: sweep 'grid': field 'where': combination 'grid-", str(error))


@pytest.mark.parametrize(
    ("constraint", "words"),
    [
        ("foo > 1", "unknown name 'foo'"),
        ("size_h >", "is not an expression"),
        ("__import__('os').system('true')", "only min, max and abs may be called"),
        ("size_h.real > 1", "Attribute is not allowed"),
        ("[x for x in ()]", "not allowed"),
        ("min.__class__", "not allowed"),
        ("op == 'deconv'", "op is never 'deconv'"),  # a typo that would silently never hold
        ("padding in ('same', 'VALID')", "padding is never 'same'"),
    ],
)
def test_constraints_are_checked_and_cannot_run_code(tmp_path: Path, constraint: str, words: str) -> None:
    text = SWEEP.format(sizes="[5]").replace('where = ["channels % groups == 0", ', f"where = [{constraint!r}, ")
    loaded = _load(tmp_path, text)
    assert loaded.cases == []
    (error,) = loaded.errors
    assert error.field == "where" and words in error.message, error


def test_constraint_arithmetic() -> None:
    names = sweeps.variables({**sweeps.DEFAULT_SETTINGS, "size": [7, 9], "kernel_size": 3, "rate": [2, 3]})
    assert names["effective_h"] == 5 and names["effective_w"] == 7
    holds = sweeps.Constraint.parse("max(effective_h, effective_w) == 7 and not size_h > 7 and -1 < 0").holds
    assert holds(names)
    assert not sweeps.Constraint.parse("output_w == 1 or padding != 'VALID'").holds(names)
    assert sweeps.Constraint.parse("output_w == 3").holds(names)


def test_the_forward_op_is_conv_in_constraints_and_its_former_name_still_matches() -> None:
    forward = sweeps.variables({**sweeps.DEFAULT_SETTINGS, "size": 5, "kernel_size": 3})
    transposed = sweeps.variables({**sweeps.DEFAULT_SETTINGS, "size": 5, "kernel_size": 3, "op": "conv_transpose"})
    for text in ("op == 'conv'", "op == 'conv2d'", "op in ('conv2d',)"):
        constraint = sweeps.Constraint.parse(text)
        assert constraint.holds(forward) and not constraint.holds(transposed), text


def test_sweep_errors_name_the_sweep_field_and_line(tmp_path: Path) -> None:
    text = """
[[sweep]]
id = "typo"
seed = 1
[sweep.axes]
size = [5]
kernel_sise = [3]

[[sweep]]
id = "nosize"
seed = 1
[sweep.axes]
rate = [1, 2]

[[sweep]]
id = "both"
seed = 1
rate = 2
[sweep.axes]
size = [5]
kernel_size = [3]
rate = [1, 2]
"""
    errors = {e.case: e for e in _load(tmp_path, text).errors}
    assert "did you mean 'kernel_size'" in errors["typo"].message and errors["typo"].line == 7
    assert errors["nosize"].field == "size" and "needs 'size'" in errors["nosize"].message
    assert errors["both"].field == "axes.rate" and "both an axis and a fixed setting" in errors["both"].message


def test_a_sweep_id_colliding_with_a_case_is_an_error(tmp_path: Path) -> None:
    text = """
[[case]]
id = "dup-in5-k3"
input = { generator = "ones", shape = [1, 5, 5, 1] }
kernel = { generator = "ones", shape = [3, 3, 1, 1] }

[[sweep]]
id = "dup"
seed = 1
[sweep.axes]
size = [5]
kernel_size = [3]
"""
    loaded = _load(tmp_path, text)
    assert [c.id for c in loaded.cases] == ["dup-in5-k3"]
    (error,) = loaded.errors
    assert "already defined" in error.message and error.case == "dup"


def test_replicates_draw_the_same_geometry_on_independent_data(tmp_path: Path) -> None:
    single = _load(tmp_path, SWEEP.format(sizes="[5]"), "a.toml").cases
    drawn = _load(tmp_path, SWEEP.format(sizes="[5]").replace("seed = 7", "seed = 7\nreplicates = 3"), "b.toml")
    assert not drawn.errors and len(drawn.cases) == 3 * len(single)
    for case in single:
        draws = [c for c in drawn.cases if c.id.rsplit("-d", 1)[0] == case.id]
        assert [c.id for c in draws] == [f"{case.id}-d{n}" for n in range(3)]
        assert {(c.input_shape, c.kernel_shape, c.rate, c.stride, c.padding, c.groups) for c in draws} == {
            (case.input_shape, case.kernel_shape, case.rate, case.stride, case.padding, case.groups)
        }
        assert len({materialize(c, "float32").x_hash for c in draws}) == 3  # each draw its own data
    text = SWEEP.format(sizes="[5]").replace("seed = 7", "seed = 7\nreplicates = 0")
    (error,) = _load(tmp_path, text, "c.toml").errors
    assert error.field == "replicates"


def test_replicates_count_toward_the_grid_limit(tmp_path: Path) -> None:
    text = f"""
[[sweep]]
id = "many"
seed = 1
replicates = 10000
[sweep.axes]
size = {list(range(1, 21))}
kernel_size = {list(range(1, 21))}
"""
    (error,) = _load(tmp_path, text).errors
    assert "4000000 combinations" in error.message


def test_too_large_a_grid_is_refused_before_expanding(tmp_path: Path) -> None:
    values = list(range(1, 200))
    text = f"""
[[sweep]]
id = "huge"
seed = 1
[sweep.axes]
size = {values}
kernel_size = {values}
rate = {values}
"""
    (error,) = _load(tmp_path, text).errors
    assert f"{len(values) ** 3} combinations" in error.message
    assert math.prod([len(values)] * 3) > sweeps.MAX_COMBINATIONS


def test_set_writes_special_values_into_a_generated_tensor(tmp_path: Path) -> None:
    text = """
[[case]]
id = "specials"
input = { generator = "normal", seed = 1, shape = [1, 5, 5, 1], set = [{at = [0, 1, 2, 0], value = nan}, \
  {at = [0, -1, -1, 0], value = -inf}] }
kernel = { generator = "ones", shape = [3, 3, 1, 1], set = [{at = [1, 1, 0, 0], value = -0.0}] }

[[case]]
id = "outside"
input = { generator = "normal", seed = 1, shape = [1, 5, 5, 1], set = [{at = [0, 5, 0, 0], value = 1.0}] }
kernel = { generator = "ones", shape = [3, 3, 1, 1] }
"""
    loaded = _load(tmp_path, text)
    (case,) = loaded.cases
    data = materialize(case, "float32")
    assert np.isnan(data.x[0, 1, 2, 0]) and data.x[0, 4, 4, 0] == -np.inf
    assert data.w[1, 1, 0, 0] == 0 and np.signbit(data.w[1, 1, 0, 0])
    (error,) = loaded.errors
    assert error.field == "input.set[0].at" and "outside the shape" in error.message
    # The reproduction rebuilds the same tensors, NaN and infinities included.
    source = full_reproduction(case, "float32", "")
    namespace: dict = {}
    exec(source, namespace)
    np.testing.assert_array_equal(namespace["x"].astype(np.float32), data.x)
    np.testing.assert_array_equal(namespace["w"].astype(np.float32), data.w)


RANKED_SWEEPS = """
[[sweep]]
id = "causal"
rank = 1
seed = 1
rate = [2]
padding = [[4, 0]]
axes = { size = [8, 16], kernel_size = [3] }
where = ["output_w == size_w", "pad_left == effective_w - 1", "pad_right == 0"]

[[sweep]]
id = "volume"
rank = 3
seed = 2
axes = { size = [[4, 5, 6]], kernel_size = [3, [1, 3, 3]], rate = [1, [1, 2, 2]], padding = ["SAME"] }
where = ["effective_d == 3"]
"""


def test_a_sweep_of_another_rank_names_its_own_axes(tmp_path: Path) -> None:
    """`rank` decides the shapes and the `where` names: 1-D is the width (size_w, pad_left), 3-D adds
    the depth (size_d, pad_front); 2-D sweeps are as before (the corpus loads the same cases)."""
    loaded = _load(tmp_path, RANKED_SWEEPS)
    assert not loaded.errors, loaded.errors
    ids = [case.id for case in loaded.cases]
    assert ids == ["causal-in8-k3", "causal-in16-k3", "volume-in4x5x6-k3-r1-same", "volume-in4x5x6-k3-r1x2x2-same"]
    causal, volume = loaded.cases[0], loaded.cases[3]
    assert causal.input_shape == (1, 8, 1) and causal.geometry.pads == ((4, 0),) and causal.output_shape == (1, 8, 1)
    assert volume.kernel_shape == (3, 3, 3, 1, 1) and volume.geometry.pads == ((1, 1), (2, 2), (2, 2))
    assert {"size_w", "pad_left"} <= set(sweeps.RANK_NAMES[1]) and "size_h" not in sweeps.RANK_NAMES[1]
    assert {"size_d", "pad_front", "pad_back"} <= set(sweeps.RANK_NAMES[3])


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        (("axes = { size = [8, 16]", "axes = { size = [[8, 16]]"), "size", "states 2 axes; the sweep has 1"),
        (('"pad_right == 0"', '"size_h > 1"'), "where", "unknown name 'size_h'"),
    ],
)
def test_a_sweep_s_values_and_names_follow_its_rank(
    tmp_path: Path, change: tuple[str, str], field: str, words: str
) -> None:
    loaded = _load(tmp_path, RANKED_SWEEPS.replace(*change))
    (error,) = loaded.errors
    assert error.field == field and words in error.message, error


def test_a_constraint_naming_an_axis_a_check_lacks_does_not_hold() -> None:
    """Expectations judge records of every rank: `size_d` of a 2-D record does not hold."""
    two_d = sweeps.variables({**sweeps.DEFAULT_SETTINGS, "size": 5, "kernel_size": 3})
    three_d = sweeps.variables({**sweeps.DEFAULT_SETTINGS, "rank": 3, "size": 5, "kernel_size": 3})
    deep = sweeps.Constraint.parse("size_d == 5")
    assert deep.holds(three_d) and not deep.holds(two_d)
