"""Case-file loading: valid files load, every kind of mistake is named precisely, the rest still loads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conformance.cases import load_file, load_paths, materialize
from conformance.generators import content_hash, generate

GOOD = """
[[case]]
id = "good"
input = { generator = "uniform", seed = 1, shape = [1, 5, 5, 1] }
kernel = { generator = "ones", shape = [3, 3, 1, 1] }
"""


def load_text(tmp_path: Path, text: str, name: str = "sample.toml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return load_file(path, tmp_path)


def only_error(tmp_path: Path, text: str):
    loaded = load_text(tmp_path, text)
    assert len(loaded.errors) == 1, loaded.errors
    return loaded, loaded.errors[0]


def test_every_shipped_case_file_is_valid(repo: Path) -> None:
    loaded = load_paths([repo / "cases"])
    assert loaded.errors == []
    assert len(loaded.cases) >= 20


def test_unknown_key_suggests_the_right_one(tmp_path: Path) -> None:
    loaded, error = only_error(
        tmp_path,
        GOOD + '\n[[case]]\nid = "typo"\ndilaton = 2\n'
        'input = { generator = "ones", shape = [1, 5, 5, 1] }\n'
        'kernel = { generator = "ones", shape = [3, 3, 1, 1] }\n',
    )
    assert error.case == "typo" and error.field == "dilaton" and error.line == 9  # the key's own line
    assert "unknown key 'dilaton'" in error.message
    assert [c.id for c in loaded.cases] == ["good"]  # the valid case still loads


def test_close_misspelling_gets_a_suggestion(tmp_path: Path) -> None:
    _, error = only_error(tmp_path, GOOD.replace('id = "good"', 'id = "good"\nstirde = 2'))
    assert "did you mean 'stride'?" in error.message


@pytest.mark.parametrize(
    ("snippet", "field", "words"),
    [
        ("rate = 0", "rate", "rate"),
        ("stride = -1", "stride", "stride"),
        ("rate = 1.5", "rate", "rate"),
        ('padding = "FULL"', "padding", "padding"),
        ('dtypes = ["float8"]', "dtypes.0", "float8"),
    ],
)
def test_bad_values_name_the_field(tmp_path: Path, snippet: str, field: str, words: str) -> None:
    _, error = only_error(tmp_path, GOOD.replace('id = "good"', f'id = "good"\n{snippet}'))
    assert error.case == "good" and error.field == field, error
    assert str(error).startswith("sample.toml:")


def test_missing_required_field(tmp_path: Path) -> None:
    _, error = only_error(
        tmp_path, '[[case]]\nid = "no-kernel"\ninput = { generator = "ones", shape = [1, 5, 5, 1] }\n'
    )
    assert error.case == "no-kernel" and error.field == "kernel" and "required" in error.message


def test_generator_without_seed(tmp_path: Path) -> None:
    _, error = only_error(tmp_path, GOOD.replace("seed = 1, ", ""))
    assert error.case == "good" and "seed" in error.message


def test_channel_mismatch(tmp_path: Path) -> None:
    _, error = only_error(tmp_path, GOOD.replace("[3, 3, 1, 1]", "[3, 3, 2, 1]"))
    assert error.field == "kernel.shape" and "input channels 1" in error.message


def test_ragged_values(tmp_path: Path) -> None:
    text = GOOD.replace('{ generator = "ones", shape = [3, 3, 1, 1] }', "{ values = [[[[1]], [[1], [2]]]] }")
    _, error = only_error(tmp_path, text)
    assert error.field == "kernel.values" and "ragged" in error.message


def test_values_that_contradict_the_declared_shape(tmp_path: Path) -> None:
    text = GOOD.replace('{ generator = "ones", shape = [3, 3, 1, 1] }', "{ values = [[[[1]]]], shape = [1, 1, 1, 2] }")
    _, error = only_error(tmp_path, text)
    assert error.field == "kernel.shape" and "[1, 1, 1, 1]" in error.message


def test_expected_values_of_the_wrong_shape(tmp_path: Path) -> None:
    _, error = only_error(tmp_path, GOOD + 'expect = { kind = "values", plane = [[1, 2], [3, 4]] }\n')
    assert error.field == "expect.plane" and "[3, 3]" in error.message


def test_no_valid_output_claim_is_checked(tmp_path: Path) -> None:
    _, error = only_error(tmp_path, GOOD + 'expect = { kind = "no-valid-output" }\n')
    assert error.field == "expect.kind" and "output shape [1, 3, 3, 1]" in error.message


def test_output_shape_claim_is_checked(tmp_path: Path) -> None:
    _, error = only_error(tmp_path, GOOD + 'expect = { kind = "reference", output_shape = [1, 5, 5, 1] }\n')
    assert error.field == "expect.output_shape" and "[1, 3, 3, 1]" in error.message


def test_duplicate_ids(tmp_path: Path) -> None:
    loaded, error = only_error(tmp_path, GOOD + GOOD)
    assert error.field == "id" and "duplicate" in error.message and len(loaded.cases) == 1


def test_absurd_size_is_refused_before_allocation(tmp_path: Path) -> None:
    _, error = only_error(tmp_path, GOOD.replace("[1, 5, 5, 1]", "[64, 4096, 4096, 1]"))
    assert error.field == "input.shape" and "exceeds the limit of 67108864" in error.message


def test_syntax_error_gives_the_line(tmp_path: Path) -> None:
    _, error = only_error(tmp_path, GOOD + "rate = = 2\n")
    assert error.line == 6 and "TOML syntax error" in error.message


def test_empty_file(tmp_path: Path) -> None:
    _, error = only_error(tmp_path, "\n")
    assert "empty" in error.message


def test_defaults_apply_and_cases_override(tmp_path: Path) -> None:
    text = (
        '[defaults]\nrate = 2\ndtypes = ["float16"]\ntags = ["x"]\n'
        + GOOD
        + GOOD.replace('"good"', '"own"').replace("[[case]]", '[[case]]\nrate = 1\ntags = ["y"]')
    )
    loaded = load_text(tmp_path, text)
    assert not loaded.errors
    first, second = loaded.cases
    assert first.rate == (2, 2) and first.dtypes == ("float16",) and first.tags == ("x",)
    assert second.rate == (1, 1) and second.tags == ("x", "y")


def test_generators_are_pinned() -> None:
    # Golden hashes: if these change, every recorded result's input changed. Never update casually.
    assert (
        content_hash(generate({"generator": "normal", "seed": 7}, (2, 3, 4, 5)).astype(np.float32))
        == "623fd8f9baa40d1a"
    )
    assert (
        content_hash(generate({"generator": "uniform", "seed": 7, "low": -2, "high": 2}, (3, 3))) == "d81e6734d056aecd"
    )
    assert (
        content_hash(generate({"generator": "integers", "seed": 7, "low": -3, "high": 3}, (10,))) == "80929939a50ef6e2"
    )


def test_normal_generator_has_unit_variance() -> None:
    sample = generate({"generator": "normal", "seed": 3}, (200_000,))
    assert abs(sample.mean()) < 0.01 and abs(sample.std() - 1) < 0.01


def test_materialize_rounds_once_to_the_case_dtype(tmp_path: Path) -> None:
    (case,) = load_text(tmp_path, GOOD).cases
    data = materialize(case, "bfloat16")
    assert data.x.dtype.name == "bfloat16"
    np.testing.assert_array_equal(
        data.x.astype(np.float64), generate(case.input_spec, (1, 5, 5, 1)).astype(data.x.dtype)
    )


def test_cli_validate(tmp_path: Path, capsys: pytest.CaptureFixture[str], repo: Path) -> None:
    from conformance.cli import main

    assert main(["validate", str(repo / "cases")]) == 0
    (tmp_path / "bad.toml").write_text(GOOD.replace('id = "good"', 'id = "good"\nrate = 0'))
    assert main(["validate", str(tmp_path)]) == 1
    assert "case 'good': field 'rate'" in capsys.readouterr().err


def test_the_forward_op_is_conv_and_its_former_name_still_reads(tmp_path: Path) -> None:
    """Operations are rank-free: `conv` is the default, and `conv2d`, its name in case files written
    before, reads as `conv` (so the two ids of one file's cases are one operation)."""
    text = GOOD + GOOD.replace('"good"', '"former"').replace("[[case]]", '[[case]]\nop = "conv2d"')
    loaded = load_text(tmp_path, text)
    assert not loaded.errors
    assert [case.op for case in loaded.cases] == ["conv", "conv"]


OTHER_RANKS = """
[[case]]
id = "causal-1d"
input = { generator = "normal", seed = 1, shape = [1, 16, 3] }
kernel = { generator = "normal", seed = 2, shape = [3, 3, 4] }
rate = 2
padding = [[4, 0]]

[[case]]
id = "volume-3d"
input = { generator = "normal", seed = 3, shape = [1, 6, 7, 8, 2] }
kernel = { generator = "normal", seed = 4, shape = [3, 2, 3, 2, 4] }
rate = [1, 2, 2]
stride = [1, 1, 2]
padding = "SAME"

[[case]]
id = "transposed-3d"
op = "conv_transpose"
input = { generator = "normal", seed = 3, shape = [1, 4, 5, 3, 2] }
kernel = { generator = "normal", seed = 4, shape = [3, 2, 3, 4, 2] }
rate = [1, 2, 1]
stride = [2, 1, 2]
padding = [[1, 0], [0, 1], [1, 1]]
output_padding = [1, 0, 1]
"""


def test_rank_is_data_one_and_three_spatial_axes_load(tmp_path: Path) -> None:
    """The schema and the loader take 1 to 3 spatial axes: the geometry follows the tensors' rank
    (a causal 1-D case: all its padding before; SAME in 3-D; a transposed 3-D case with crops)."""
    loaded = load_text(tmp_path, OTHER_RANKS)
    assert not loaded.errors, loaded.errors
    causal, volume, transposed = loaded.cases
    assert (causal.rank, causal.output_shape, causal.geometry.pads) == (1, (1, 16, 4), ((4, 0),))
    assert volume.rank == 3 and volume.output_shape == (1, 6, 7, 4, 4)
    assert volume.geometry.pads == ((1, 1), (1, 1), (1, 2))  # k_eff (3, 3, 5), stride 2 on the last axis
    assert transposed.output_shape == (1, 9, 6, 6, 4) and transposed.geometry.output_padding == (1, 0, 1)


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        (("rate = 2", "rate = [2, 2]"), "rate", "has 2 values; expected one per spatial axis (1)"),
        (("shape = [3, 3, 4]", "shape = [3, 3, 3, 4]"), "input.shape", "[1, 16, 3] has 1 spatial axes, the kernel"),
        (("shape = [1, 16, 3]", "shape = [1, 16, 16, 3]"), "kernel.shape", "[3, 3, 4] has 1 spatial axes, the input"),
        (("padding = [[4, 0]]", "padding = [[4, 0], [0, 0]]"), "padding", "2 [before, after] pairs for 1 spatial"),
        (
            ("seed = 1, shape", "seed = 1, set = [{ at = [0, 1, 2, 0], value = 1.0 }], shape"),
            "input.set[0].at",
            "4 axes",
        ),
        (("shape = [1, 16, 3]", "shape = [16, 3]"), "input.shape", "too short"),
    ],
)
def test_a_case_of_another_rank_says_which_axes_disagree(
    tmp_path: Path, change: tuple[str, str], field: str, words: str
) -> None:
    first = OTHER_RANKS[: OTHER_RANKS.index('[[case]]\nid = "volume-3d"')]
    _, error = only_error(tmp_path, first.replace(*change))
    assert error.field == field and words in error.message, error


def test_cases_of_one_geometry_share_it_and_any_case_has_its_own(tmp_path: Path) -> None:
    """A geometry is resolved once per distinct settings and shared (the large tier draws each one
    130 times); a case whose settings do not hash (made in code, with lists) still gets its own, the
    same; another setting, another geometry."""
    import dataclasses

    path = tmp_path / "g.toml"
    path.write_text(
        '[[case]]\nid = "a"\ndtypes = ["float32"]\nrate = 2\npadding = [[1, 2], [0, 1]]\n'
        'input = { generator = "uniform", seed = 1, shape = [1, 9, 9, 1] }\n'
        'kernel = { generator = "uniform", seed = 2, shape = [3, 3, 1, 1] }\n'
    )
    (case,) = load_file(path).cases
    replicate = dataclasses.replace(case, id="b", input_spec={**case.input_spec, "seed": 3})
    assert replicate.geometry is case.geometry
    listed = dataclasses.replace(case, id="c", padding=[[1, 2], [0, 1]])  # type: ignore[arg-type]
    assert listed.geometry == case.geometry and listed.geometry is not case.geometry
    assert dataclasses.replace(case, id="d", rate=(1, 1)).geometry != case.geometry
