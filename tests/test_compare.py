"""The tolerance model and the value comparison: sound for real rounding, tight enough to fail."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from conformance import compare, reference
from conformance.compare import ErrorModel, Expected, Outcome, classify, gamma, ulp_distance
from conformance.dtypes import float_format


def expected_for(x: np.ndarray, w: np.ndarray, dtype: str, *, tf32: bool = False, **conv) -> Expected:
    fmt = float_format(dtype)
    x = x.astype(fmt.numpy_dtype).astype(np.float64)
    w = w.astype(fmt.numpy_dtype).astype(np.float64)
    y = reference.conv(x, w, **conv)
    s = reference.conv(np.abs(x), np.abs(w), **conv)
    model = ErrorModel(fmt, w.shape[0] * w.shape[1] * w.shape[2], tf32=tf32)
    return Expected(y, s, y.shape, model, exact=model.requires_exact(x, w, s))


def sequential_low_precision_conv(x: np.ndarray, w: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """VALID, rate 1, stride 1 conv that rounds after every multiply and add: a worst-ish order."""
    k_h, k_w, c_in, c_out = w.shape
    o_h, o_w = x.shape[1] - k_h + 1, x.shape[2] - k_w + 1
    acc = np.zeros((x.shape[0], o_h, o_w, c_out), dtype=dtype)
    xd, wd = x.astype(dtype), w.astype(dtype)
    for u in range(k_h):
        for v in range(k_w):
            for c in range(c_in):
                acc = (acc + (xd[:, u : u + o_h, v : v + o_w, c, None] * wd[u, v, c]).astype(dtype)).astype(dtype)
    return acc


def test_gamma() -> None:
    assert gamma(1, 2.0**-24) == 2.0**-24 / (1 - 2.0**-24)
    assert gamma(2**24, 2.0**-24) == float("inf")


def test_bound_holds_for_naive_accumulation_in_every_format() -> None:
    rng = np.random.default_rng(5)
    x, w = rng.standard_normal((2, 9, 9, 6)), rng.standard_normal((3, 3, 6, 4))
    for dtype in ("float16", "float32", "bfloat16"):
        expected = expected_for(x, w, dtype)
        got = sequential_low_precision_conv(
            x.astype(expected.model.fmt.numpy_dtype).astype(np.float64), w, expected.model.fmt.numpy_dtype
        )
        verdict = classify(expected, got)
        assert verdict.outcome is Outcome.PASS, verdict.message
        assert 0 < verdict.error_ratio < 1


def test_an_error_a_little_beyond_the_bound_is_a_mismatch() -> None:
    rng = np.random.default_rng(6)
    x, w = rng.standard_normal((1, 6, 6, 3)), rng.standard_normal((3, 3, 3, 2))
    expected = expected_for(x, w, "float32", rate=2, padding="SAME")
    bound = expected.model.bound(expected.values, expected.abs_products)
    got = expected.values.astype(np.float32)
    got[0, 2, 3, 1] = np.float32(expected.values[0, 2, 3, 1] + 1.5 * bound[0, 2, 3, 1])
    verdict = classify(expected, got)
    assert verdict.outcome is Outcome.MISMATCH
    assert verdict.worst["index"] == [0, 2, 3, 1]
    assert "1 of 72 elements beyond the bound" in verdict.message


def test_float32_bound_is_much_tighter_than_float16() -> None:
    rng = np.random.default_rng(7)
    x, w = rng.standard_normal((1, 6, 6, 3)), rng.standard_normal((3, 3, 3, 2))
    got16 = expected_for(x, w, "float16").values.astype(np.float16)  # float16-accurate only
    expected32 = expected_for(x.astype(np.float16), w.astype(np.float16), "float32")
    assert classify(expected32, got16.astype(np.float32)).outcome is Outcome.MISMATCH


def test_tf32_bound_admits_tf32_rounding_and_strict_does_not() -> None:
    rng = np.random.default_rng(8)
    x, w = rng.standard_normal((1, 8, 8, 16)), rng.standard_normal((3, 3, 16, 4))

    def to_tf32(a: np.ndarray) -> np.ndarray:  # round to 10 explicit mantissa bits
        bits = a.astype(np.float32).view(np.uint32)
        return ((bits + 0x1000) & 0xFFFFE000).view(np.float32).astype(np.float64)

    got = reference.conv(to_tf32(x), to_tf32(w)).astype(np.float32)
    assert classify(expected_for(x, w, "float32", tf32=True), got).outcome is Outcome.PASS
    assert classify(expected_for(x, w, "float32"), got).outcome is Outcome.MISMATCH


def test_integer_data_demands_bit_exactness() -> None:
    x = np.arange(25.0).reshape(1, 5, 5, 1)
    w = np.ones((2, 2, 1, 1))
    expected = expected_for(x, w, "float32")
    assert expected.exact
    got = expected.values.astype(np.float32)
    assert classify(expected, got).outcome is Outcome.PASS
    got[0, 1, 1, 0] = np.nextafter(got[0, 1, 1, 0], np.float32(np.inf))  # one ulp off
    verdict = classify(expected, got)
    assert verdict.outcome is Outcome.MISMATCH and verdict.max_ulp == 1.0
    assert "bit-exact" in verdict.message


def test_exactness_needs_every_partial_sum_to_fit() -> None:
    x = np.full((1, 4, 4, 1), 200.0)
    w = np.ones((2, 2, 1, 1))
    assert expected_for(x, w, "float32").exact  # sums of 800 fit 24 bits
    assert not expected_for(x, w, "bfloat16").exact  # 800 > 2**8
    assert not expected_for(x + 0.5, w, "float32").exact  # not integers


def test_nan_and_inf_positions_and_signs_must_match() -> None:
    x = np.ones((1, 3, 3, 1))
    x[0, 0, 0, 0] = np.inf
    x[0, 2, 2, 0] = -np.inf
    w = np.ones((1, 1, 1, 1))
    expected = expected_for(x, w, "float32")
    got = expected.values.astype(np.float32)
    assert classify(expected, got).outcome is Outcome.PASS
    flipped = got.copy()
    flipped[0, 2, 2, 0] = np.inf
    assert classify(expected, flipped).outcome is Outcome.MISMATCH
    nan_inserted = got.copy()
    nan_inserted[0, 1, 1, 0] = np.nan
    verdict = classify(expected, nan_inserted)
    assert verdict.outcome is Outcome.MISMATCH and "NaN/Inf" in verdict.message


def test_overflow_to_infinity_is_allowed_only_near_the_format_limit() -> None:
    x = np.full((1, 1, 2, 1), 40000.0)
    w = np.ones((1, 2, 1, 1))
    expected = expected_for(x, w, "float16")  # 80000 overflows float16
    assert classify(expected, np.array([[[[np.inf]]]], dtype=np.float16)).outcome is Outcome.PASS
    assert classify(expected, np.array([[[[-np.inf]]]], dtype=np.float16)).outcome is Outcome.MISMATCH


def test_ulp_distance() -> None:
    a = np.array([1.0, -0.0, 1.0], dtype=np.float32)
    b = np.array([np.nextafter(np.float32(1), np.float32(2)), 0.0, 1.0], dtype=np.float32)
    np.testing.assert_array_equal(ulp_distance(a, b), [1, 0, 0])
    tiny = np.array([np.float32(1e-45)], dtype=np.float32)
    np.testing.assert_array_equal(ulp_distance(-tiny, tiny), [2])


def test_a_double_s_ulp_distance_is_counted_not_rounded() -> None:
    """float64's ordered bits are about 2^62: a distance of a few ulps is exact, not rounded to 1024s;
    across zero it may pass int64's range without wrapping."""
    one = np.float64(1.0)
    a = np.array([one, 4.0, -0.0, 5e-324, np.finfo(np.float64).max, -3.0])
    b = np.array([np.nextafter(one, 2.0), np.nextafter(np.nextafter(4.0, 0.0), 0.0), 0.0, -5e-324, -1.0, -3.0])
    distance = ulp_distance(a, b)
    np.testing.assert_array_equal(distance[:4], [1, 2, 0, 2])
    assert distance[4] == float(np.array(np.finfo(np.float64).max).view(np.int64)) + float(np.array(1.0).view(np.int64))
    assert distance[5] == 0


def test_error_map_keeps_one_bad_pixel_visible_after_pooling() -> None:
    from conformance.error_maps import ERROR_MAP_MAX_SIDE, error_map

    ratio = np.full((2, 100, 70, 3), 0.01)
    ratio[1, 57, 3, 2] = 40.0
    ratio[0, 0, 69, 0] = np.inf  # a NaN/Inf mismatch
    result = error_map(ratio)
    values = np.array([[np.nan if v is None else v for v in row] for row in result["values"]])
    assert result["hw"] == [100, 70] and result["block"] == [3, 2]
    assert values.shape == (34, 35) and max(values.shape) <= ERROR_MAP_MAX_SIDE
    assert values[57 // 3, 3 // 2] == 40.0
    assert np.isnan(values[0, 69 // 2])
    assert np.nanmax(np.delete(values.ravel(), [57 // 3 * 35 + 1])) == 0.01


def test_a_small_output_maps_one_cell_per_pixel() -> None:
    from conformance.compare import error_map

    result = error_map(np.arange(12.0).reshape(1, 3, 4, 1), "|error|")
    assert result["block"] == [1, 1] and result["values"][2][3] == 11.0 and result["quantity"] == "|error|"


def _verdict_fields(expected: Expected, got: np.ndarray) -> dict[str, object]:
    verdict = classify(expected, got)
    return {k: v for k, v in vars(verdict).items() if k != "outcome"} | {"outcome": verdict.outcome}


def test_the_unmasked_path_judges_as_the_masked_one() -> None:
    """Where every reference value is nonzero and every bound positive (nearly every check),
    judging skips the masks; the figures must be the masked path's exactly, pass or mismatch."""
    rng = np.random.default_rng(11)
    x, w = rng.standard_normal((2, 7, 6, 3)), rng.standard_normal((3, 3, 3, 2))
    for dtype in ("float16", "bfloat16", "float32", "float64"):
        made = expected_for(x, w, dtype, rate=2, padding="SAME")
        got = made.values.astype(made.model.fmt.numpy_dtype)
        bad = got.copy()
        bad[1, 3, 2, 1] = bad[1, 3, 2, 1] * 1.5 + 1
        for output in (got, bad):
            fast = _verdict_fields(dataclasses.replace(made), output)
            assert made.judging.all_nonzero and made.judging.all_bounded  # (the unmasked path was taken)
            masked = dataclasses.replace(made)
            object.__setattr__(
                masked, "_judging", dataclasses.replace(masked.judging, all_nonzero=False, all_bounded=False)
            )
            assert _verdict_fields(masked, output) == fast


def test_an_answer_within_its_bound_is_judged_as_the_general_path_judges_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every figure of the within-bound path's verdict must be the general path's exactly (every
    format, a contract kept and one broken); an answer beyond the bound, NaN or Inf anywhere, or a
    reference with a zero must take the general path, which says why."""
    rng = np.random.default_rng(17)
    x, w = rng.standard_normal((2, 7, 6, 3)), rng.standard_normal((3, 3, 3, 2))
    made = [
        expected_for(x, w, dtype, rate=2, padding="SAME") for dtype in ("float16", "bfloat16", "float32", "float64")
    ]
    made.append(dataclasses.replace(made[2], contract=dataclasses.replace(made[2].model, scale=1e-6), contract_id="c"))
    made.append(dataclasses.replace(made[2], contract=dataclasses.replace(made[2].model, scale=0.5), contract_id="c"))
    zero = made[2].values.copy()
    zero[0, 1, 1, 0] = 0.0
    made.append(dataclasses.replace(made[2], values=zero))
    taken: list[bool] = []
    within_bound = compare._within_bound

    def noting(*args: object) -> compare.Verdict | None:
        verdict = within_bound(*args)  # type: ignore[arg-type]
        taken.append(verdict is not None)
        return verdict

    monkeypatch.setattr(compare, "_within_bound", noting)
    for expected in made:
        fmt = expected.model.fmt.numpy_dtype
        near = expected.values * (1 + rng.uniform(-1, 1, expected.values.shape) * 4 * expected.model.fmt.unit_roundoff)
        near = near.astype(fmt)
        answers = [near]
        beyond = expected.values[1, 2, 3, 1] + 4 * expected.judging.bound[1, 2, 3, 1] + 1
        for value in (np.nan, np.inf, beyond):
            bad = near.copy()
            bad[1, 2, 3, 1] = value
            answers.append(bad)
        taken.clear()
        fast = [_verdict_fields(dataclasses.replace(expected), answer) for answer in answers]
        assert taken == ([] if expected.values is zero else [True, False, False, False])  # (none: a zero)
        with monkeypatch.context() as patched:
            patched.setattr(compare, "_within_bound", lambda *_: None)
            general = [_verdict_fields(dataclasses.replace(expected), answer) for answer in answers]
        assert fast == general, expected.model.fmt.name
        assert [v["outcome"] for v in general] == ["contract" if expected is made[4] else "pass"] + ["mismatch"] * 3


def test_an_answer_equal_to_the_reference_is_judged_as_the_general_path_judges_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An answer equal to the reference at every element skips the general path's passes: every
    figure of its verdict must be the general path's exactly (exact checks, a contract, signed zeros
    and infinities equal to the reference's), and an answer one ulp off must take the general path."""
    rng = np.random.default_rng(13)
    x, w = rng.standard_normal((2, 7, 6, 3)), rng.standard_normal((3, 3, 3, 2))
    integers = rng.integers(-3, 4, (1, 6, 6, 2)).astype(np.float64), rng.integers(-2, 3, (3, 3, 2, 2)).astype(float)
    made = []
    for dtype in ("float16", "bfloat16", "float32", "float64"):
        rounded = expected_for(x, w, dtype, rate=2, padding="SAME")  # (made representable: an answer can equal it)
        fmt = rounded.model.fmt.numpy_dtype
        made.append(dataclasses.replace(rounded, values=rounded.values.astype(fmt).astype(np.float64)))
    exact = expected_for(*integers, "float32")
    assert exact.exact
    made.append(exact)
    made.append(dataclasses.replace(made[2], contract=dataclasses.replace(made[2].model, scale=0.5), contract_id="c"))
    special = made[3].values.copy()
    special[0, 0, 0, 0], special[0, 1, 1, 1], special[1, 2, 2, 0] = np.inf, -np.inf, 0.0
    made.append(dataclasses.replace(made[3], values=special))
    for expected in made:
        equal = expected.values.astype(expected.model.fmt.numpy_dtype)
        assert np.array_equal(equal.astype(np.float64), expected.values)
        signed_zeros = np.where(equal == 0, -equal, equal)  # (-0.0 for +0.0 and back: still equal)
        off = equal.copy()
        off.view(f"u{off.itemsize}").reshape(-1)[5] += 1  # (one ulp further from zero)
        answers = (equal, signed_zeros, off)
        fast = [_verdict_fields(dataclasses.replace(expected), answer) for answer in answers]
        with monkeypatch.context() as patched:
            patched.setattr(compare, "_identical", lambda *_: None)
            general = [_verdict_fields(dataclasses.replace(expected), answer) for answer in answers]
        assert fast == general, expected.model.fmt.name
        assert fast[0]["max_abs_error"] == 0.0 < fast[2]["max_abs_error"]


def test_a_large_output_keeps_no_judging_between_checks() -> None:
    """What judging derives from a reference is kept for small outputs only: a large one's would
    hold several times the reference's memory between the checks of a batch."""
    rng = np.random.default_rng(12)
    small = expected_for(rng.standard_normal((1, 8, 8, 2)), rng.standard_normal((3, 3, 2, 2)), "float32")
    large = expected_for(rng.standard_normal((1, 140, 140, 4)), rng.standard_normal((3, 3, 4, 4)), "float32")
    assert large.values.size > compare.KEEP_JUDGING_UP_TO >= small.values.size
    assert small.judging is small.judging
    assert large.judging is not large.judging
    assert classify(large, large.values.astype(np.float32)).outcome is Outcome.PASS


def test_answers_judged_together_get_the_verdicts_each_gets_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """`classify_together` (one target's answers to a batch's draws, as one stacked array) must give
    every check the verdict `classify` gives it alone, figure for figure: answers within their
    bounds in every format, equal to the reference, beyond the bound, NaN or Inf, against a reference
    with a zero, an exact check, a contract, a wrong shape or dtype, an exception's None. Those that
    can be stacked are judged in one pass; the others, and any the pass finds beyond the bound, alone."""
    rng = np.random.default_rng(23)
    groups: list[tuple[list[Expected], list[np.ndarray]]] = []
    for dtype in ("float16", "bfloat16", "float32", "float64"):
        draws = [
            expected_for(
                rng.standard_normal((2, 7, 6, 3)), rng.standard_normal((3, 3, 3, 2)), dtype, rate=2, padding="SAME"
            )
            for _ in range(6)
        ]
        fmt = draws[0].model.fmt
        answers: list[np.ndarray] = []
        for i, expected in enumerate(draws):
            noise = 1 + rng.uniform(-1, 1, expected.values.shape) * 4 * fmt.unit_roundoff
            near = (expected.values * noise).astype(fmt.numpy_dtype)
            if i == 1:
                near = expected.values.astype(fmt.numpy_dtype)  # (the reference rounded: may equal it)
            if i == 2:
                near[1, 2, 3, 1] = expected.values[1, 2, 3, 1] + 4 * expected.judging.bound[1, 2, 3, 1] + 1
            if i == 3:
                near[0, 1, 1, 0] = np.nan
            if i == 4:
                near[1, 0, 0, 1] = np.inf
            answers.append(near)
        groups.append((draws, answers))
    draws, answers = groups[2]  # (float32)
    zero = draws[0].values.copy()
    zero[0, 1, 1, 0] = 0.0
    integers = rng.integers(-3, 4, (2, 7, 6, 3)).astype(np.float64), rng.integers(-2, 3, (3, 3, 3, 2)).astype(float)
    exact = expected_for(*integers, "float32", rate=2, padding="SAME")
    assert exact.exact
    odd = [
        dataclasses.replace(draws[0], values=zero),
        exact,
        dataclasses.replace(draws[5], contract=dataclasses.replace(draws[5].model, scale=0.5), contract_id="c"),
        draws[5],
        draws[5],
        draws[1],
    ]
    odd_answers = [
        answers[0],
        exact.values.astype(np.float32),
        answers[5],
        answers[5][:, :-1],
        answers[5].astype(np.float64),
        answers[1],  # (stacked with the six)
    ]
    groups.append((draws + odd, answers + odd_answers))
    stacked: list[int] = []
    together = compare._within_bound_together

    def noting(expected: list[Expected], got: list[np.ndarray]) -> list[compare.Verdict | None]:
        stacked.append(len(expected))
        return together(expected, got)

    monkeypatch.setattr(compare, "_within_bound_together", noting)
    for expected, answers in groups:
        stacked.clear()
        alone = [vars(classify(e, a)) for e, a in zip(expected, answers, strict=True)]
        assert [vars(v) for v in compare.classify_together(expected, answers)] == alone
        assert stacked == [6 if len(expected) == 6 else 7]  # (the zero, exact, contract, misshapen stand alone)
        outcomes = [v["outcome"] for v in alone]
        assert outcomes[:2] == [Outcome.PASS] * 2 and outcomes[2:5] == [Outcome.MISMATCH] * 3


def test_large_answers_are_judged_one_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stack of large outputs would hold several references' judging at once, for no gain (their
    judging costs their elements, not NumPy's calls): each is judged alone."""
    rng = np.random.default_rng(29)
    large = expected_for(rng.standard_normal((1, 140, 140, 4)), rng.standard_normal((3, 3, 4, 4)), "float32")
    assert large.values.size > compare.KEEP_JUDGING_UP_TO
    monkeypatch.setattr(compare, "_within_bound_together", lambda *_: pytest.fail("stacked"))
    answer = large.values.astype(np.float32)
    verdicts = compare.classify_together([large, large], [answer, answer])
    assert [vars(v) for v in verdicts] == [vars(classify(large, answer))] * 2
