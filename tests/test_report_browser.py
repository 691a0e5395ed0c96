"""The HTML report in a real browser (Debian's headless Chromium, driven through chromedriver).

The report is rendered from real `run_check` records (the NumPy target, plus fake adapters that break
one pixel or raise with markup in the message) and from a synthetic 20,000-result file. Without
Chromium the tests skip, unless CONFORMANCE_REQUIRE_BROWSER=1 (set by .ci/run) makes that a failure.
A screenshot of each run is kept under reports/artifacts/.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks.report_load import chromium, synthetic_document, wait_ready
from conformance import diff as diffing
from conformance.adapters import Adapter, ConvCall, Target
from conformance.adapters.numpy import NumpyIm2col
from conformance.adapters.pytorch import TorchConv
from conformance.cases import load_file
from conformance.frameworks import Framework
from conformance.report import write_report
from conformance.results import ResultsWriter
from conformance.run_environment import base_environment
from conformance.runner import run_check
from tests.fault_adapters import HOSTILE_TEXT, Hostile

ARTIFACTS = Path(__file__).resolve().parent.parent / "reports" / "artifacts"
XSS = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'
CASES = f"""
[defaults]
dtypes = ["float32", "float64"]
tags = ["browser"]

[[case]]
id = "hostile-description"
description = '{XSS}'
input = {{ generator = "normal", seed = 1, shape = [1, 9, 9, 2] }}
kernel = {{ generator = "normal", seed = 2, shape = [3, 3, 2, 2] }}
rate = 2
padding = "SAME"

[[case]]
id = "plain-valid"
description = "An ordinary VALID case."
tags = ["browser", "other-tag"]
input = {{ generator = "uniform", seed = 3, shape = [1, 8, 8, 1] }}
kernel = {{ generator = "uniform", seed = 4, shape = [2, 2, 1, 1] }}
rate = 3
padding = "VALID"
"""


class BreaksOnePixel(Adapter):
    framework, op = Framework("fakefw", "a fake framework"), "broken_pixel"
    devices = ("cpu",)

    def check_available(self, device: str) -> None:
        return None

    def run(self, call: ConvCall, device: str, precision: str) -> np.ndarray:
        y = NumpyIm2col().run(call, device, precision)
        y[0, y.shape[1] // 2, 1, 0] += 1.0
        return y

    def reproduction(self, call: ConvCall, device: str, precision: str) -> str:
        return "fakefw.broken_pixel(x, w)"

    def environment(self) -> dict[str, Any]:
        return {"version": "0"}


class RaisesMarkup(BreaksOnePixel):
    op = "raises_markup"

    def run(self, call: ConvCall, device: str, precision: str) -> np.ndarray:
        raise RuntimeError("<b id='injected'>bold</b> & friends")


def browser_available() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install '.[test]')"
    for program in ("/usr/bin/chromium", "/usr/bin/chromedriver"):
        if not Path(program).exists():
            return f"{program} is missing (apt-get install chromium chromium-driver)"
    return None


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    missing = browser_available()
    if missing:
        if os.environ.get("CONFORMANCE_REQUIRE_BROWSER") == "1":
            pytest.fail(f"the browser test is required here but cannot run: {missing}")
        pytest.skip(missing)
    browser = chromium(str(tmp_path_factory.mktemp("chromium-profile")))
    yield browser
    browser.quit()


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("report")
    (directory / "browser.toml").write_text(CASES)
    loaded = load_file(directory / "browser.toml", directory)
    assert not loaded.errors
    writer = ResultsWriter(directory / "results.json")
    targets = [Target(NumpyIm2col(), "cpu", "strict"), Target(BreaksOnePixel(), "cpu", "strict")]
    targets += [Target(RaisesMarkup(), "cpu", "strict"), Target(TorchConv(), "gpu", "strict")]  # skipped here
    for case in loaded.cases:
        for dtype in case.dtypes:
            for target in targets:
                writer.add(run_check(case, target, dtype))
    document = writer.finish(base_environment(), ["test_report_browser"])
    path = directory / "index.html"
    write_report(document, path)
    return path


def rows(driver: Any) -> list[Any]:
    return driver.find_elements("css selector", "#matrix-body .mrow:not(.group)")


def wait_for(condition: Any, timeout_s: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def screenshot(driver: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / name))


RANKED_CASES = """
[[case]]
id = "sequence"
input = { generator = "normal", seed = 1, shape = [1, 9, 2] }
kernel = { generator = "normal", seed = 2, shape = [2, 2, 2] }
rate = 2
padding = "CAUSAL"

[[case]]
id = "image"
input = { generator = "normal", seed = 3, shape = [1, 6, 6, 2] }
kernel = { generator = "normal", seed = 4, shape = [3, 3, 2, 2] }

[[case]]
id = "volume"
input = { generator = "normal", seed = 5, shape = [1, 4, 5, 4, 2] }
kernel = { generator = "normal", seed = 6, shape = [2, 2, 2, 2, 2] }
rate = [1, 2, 1]
"""


def test_rank_is_a_filter_and_a_grouping(driver: Any, tmp_path: Path) -> None:
    (tmp_path / "ranked.toml").write_text(RANKED_CASES)
    loaded = load_file(tmp_path / "ranked.toml", tmp_path)
    assert not loaded.errors
    writer = ResultsWriter(tmp_path / "results.json")
    for case in loaded.cases:
        writer.add(run_check(case, Target(NumpyIm2col(), "cpu", "strict"), "float32"))
    path = tmp_path / "index.html"
    write_report(writer.finish(base_environment(), ["test_report_browser"]), path)
    driver.get(path.as_uri())
    assert wait_ready(driver, 60) == "true"
    assert len(rows(driver)) == 3
    driver.find_element("css selector", "#filter-rank option[value='1-D']").click()
    wait_for(lambda: len(rows(driver)) == 1)
    assert rows(driver)[0].get_attribute("data-case") == "ranked/sequence"
    driver.find_element("css selector", "#filter-rank option[value='']").click()
    driver.find_element("css selector", "#filter-group option[value=rank]").click()
    groups = lambda: [g.text for g in driver.find_elements("css selector", "#matrix-body .mrow.group")]  # noqa: E731
    wait_for(lambda: groups() == ["1-D (1)", "2-D (1)", "3-D (1)"])


def test_matrix_filters_and_detail_view(driver: Any, report: Path) -> None:
    driver.get(report.as_uri())
    assert wait_ready(driver, 60) == "true"
    assert driver.execute_script("return performance.getEntriesByType('resource').length") == 0, "loaded nothing"

    assert len(rows(driver)) == 4  # 2 cases x 2 dtypes
    header = driver.find_element("css selector", "#matrix-head").text
    for name in ("numpy", "im2col", "fakefw", "broken_pixel", "raises_markup"):
        assert name in header
    assert "null" not in driver.find_element("id", "filters").text
    outcomes = [c.get_attribute("class") for c in driver.find_elements("css selector", "#matrix-body .cell")]
    assert outcomes.count("cell o-mismatch") == 4 and outcomes.count("cell o-error") == 4
    assert outcomes.count("cell o-pass") == 4 and outcomes.count("cell o-skip") == 0  # torch-gpu ran nothing
    assert "torch" not in header
    driver.find_element("id", "show-idle").click()
    outcomes = [c.get_attribute("class") for c in driver.find_elements("css selector", "#matrix-body .cell")]
    assert outcomes.count("cell o-skip") == 4

    # Free text hides rows; the count line says so.
    search = driver.find_element("id", "filter-text")
    search.send_keys("plain-valid")
    wait_for(lambda: len(rows(driver)) == 2)
    assert "2 of 4 rows" in driver.find_element("id", "matrix-count").text
    search.clear()
    search.send_keys(" ")  # clear() fires no input event; a space does (and matches everything)
    wait_for(lambda: len(rows(driver)) == 4)

    # The framework filter removes columns; the dtype filter removes rows.
    driver.find_element("css selector", "#filter-framework input[value=fakefw]").click()
    assert "fakefw" not in driver.find_element("css selector", "#matrix-head").text
    driver.find_element("css selector", "#filter-framework input[value=fakefw]").click()
    driver.find_element("css selector", "#filter-dtype option[value=float64]").click()
    wait_for(lambda: len(rows(driver)) == 2)
    assert {r.get_attribute("data-dtype") for r in rows(driver)} == {"float64"}

    # Case text is text: the hostile description renders literally and runs nothing.
    target_row = next(r for r in rows(driver) if r.get_attribute("data-case") == "browser/hostile-description")
    target_row.click()
    wait_for(lambda: driver.find_element("id", "detail").is_displayed())
    assert driver.find_element("id", "detail-title").text.startswith("browser/hostile-description")
    assert driver.find_element("css selector", "#detail-content .description").text == XSS
    assert driver.execute_script("return window.__pwned") is None
    assert driver.find_elements("id", "injected") == []
    messages = [m.text for m in driver.find_elements("css selector", "#detail-content .message")]
    assert any("<b id='injected'>bold</b> & friends" in m for m in messages)

    # The mismatch has its heatmap: one cell per output pixel (9x9 fits without pooling), one of them hot.
    heatmap = driver.find_element("css selector", "#detail-content svg.heatmap")
    cells = heatmap.find_elements("css selector", "rect")
    assert len(cells) == 81
    hot = [c for c in cells if c.get_attribute("fill") not in ("#fff", "#000") and "210" not in c.get_attribute("fill")]
    assert len(hot) == 1
    reproductions = driver.find_elements("css selector", "#detail-content pre.reproduction")
    assert any("fakefw.broken_pixel(x, w)" in r.get_attribute("textContent") for r in reproductions)
    assert "case=browser%2Fhostile-description" in driver.current_url
    screenshot(driver, "report-detail.png")

    # "failures only" keeps rows with a failing cell; the environment block names the Python version.
    driver.find_element("id", "detail-close").click()
    driver.find_element("id", "only-failures").click()
    wait_for(lambda: len(rows(driver)) == 2)
    assert "python" in driver.find_element("id", "environment").text


def test_a_link_to_a_detail_opens_it(driver: Any, report: Path) -> None:
    driver.get(report.as_uri() + "#case=browser%2Fplain-valid&dtype=float32")
    assert wait_ready(driver, 60) == "true"
    assert driver.find_element("id", "detail").is_displayed()
    assert driver.find_element("id", "detail-title").text.startswith("browser/plain-valid")


def test_a_browser_without_from_base64_decodes_the_same_data(driver: Any, report: Path) -> None:
    """Older browsers lack Uint8Array.fromBase64: the report falls back to atob and draws the same rows."""
    driver.get(report.as_uri())
    assert wait_ready(driver, 60) == "true"
    native = [r.get_attribute("data-case") for r in rows(driver)]
    added = driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": "delete Uint8Array.fromBase64;"})
    try:
        driver.get(report.as_uri())
        assert wait_ready(driver, 60) == "true"
        assert driver.execute_script("return Uint8Array.fromBase64 === undefined")
        assert [r.get_attribute("data-case") for r in rows(driver)] == native and native
    finally:
        driver.execute_cdp_cmd("Page.removeScriptToEvaluateOnNewDocument", {"identifier": added["identifier"]})


def test_twenty_thousand_results_stay_virtualised_and_filterable(driver: Any, tmp_path: Path) -> None:
    document = synthetic_document(20_000)
    path = tmp_path / "big.html"
    write_report(document, path)
    driver.get(path.as_uri())
    assert wait_ready(driver, 120) == "true"
    assert "5000 of 5000 rows" in driver.find_element("id", "matrix-count").text  # 2,500 cases x 2 dtypes
    assert len(rows(driver)) < 150, "only the rows on screen may exist in the DOM"
    driver.find_element("id", "filter-text").send_keys("case-01234")
    wait_for(lambda: "2 of 5000 rows" in driver.find_element("id", "matrix-count").text)
    assert {r.get_attribute("data-case") for r in rows(driver)} == {"sweep10/case-01234"}
    screenshot(driver, "report-20k-filtered.png")


ADVERSARIAL = Path(__file__).with_name("adversarial") / "hostile.toml"
# Anything the corpus manages to run sets a window.__pwned_* flag, opens a dialog or adds a handler.
INJECTION_PROBE = """
return {
  flags: Object.keys(window).filter((k) => k.startsWith("__pwned")),
  scripts: document.scripts.length,
  handlers: [...document.querySelectorAll("*")].flatMap((e) => [...e.attributes].map((a) => a.name))
    .filter((n) => n.startsWith("on")),
  javascriptLinks: document.querySelectorAll("a[href^='javascript' i]").length,
  injectedElements: document.querySelectorAll("img, svg circle, style:not(head style), iframe").length,
};
"""


@pytest.fixture(scope="module")
def hostile_document(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Real records of the adversarial corpus, plus hostile run, expectation and conflict text."""
    loaded = load_file(ADVERSARIAL, ADVERSARIAL.parent)
    assert len(loaded.cases) >= 9 and len(loaded.errors) >= 4  # payloads in ids and tags are refused...
    writer = ResultsWriter(tmp_path_factory.mktemp("hostile") / "results.json")
    for error in loaded.errors:  # ...and their messages, which echo them, go into the report
        writer.add_case_error(dataclasses.asdict(error))
    for case in loaded.cases:
        for target in (Target(NumpyIm2col(), "cpu", "strict"), Target(Hostile(), "cpu", "strict")):
            writer.add(run_check(case, target, "float32"))
    environment = base_environment() | {"cpu": HOSTILE_TEXT, "frameworks": {"hostile": Hostile().environment()}}
    document = writer.finish(environment, ["pytest", HOSTILE_TEXT])
    document["expectations"] = [{
        "id": HOSTILE_TEXT, "status": "reproduced", "reason": HOSTILE_TEXT, "link": "javascript:window.__pwned_link=1",
        "xfail": 1, "xpass": 0, "other": 0, "not_run": 0,
    }]  # fmt: skip
    conflict = {"run": HOSTILE_TEXT, "outcome": "pass"}
    document["conflicts"] = [{"case": HOSTILE_TEXT, "target": HOSTILE_TEXT, "dtype": "float32",
                              "framework_version": HOSTILE_TEXT, "outcomes": [conflict]}]  # fmt: skip
    return document


def assert_inert(driver: Any) -> None:
    probe = driver.execute_script(INJECTION_PROBE)
    assert probe["flags"] == [] and probe["handlers"] == [] and probe["javascriptLinks"] == 0, probe
    assert probe["injectedElements"] == 0, probe
    try:
        alert = driver.switch_to.alert
    except Exception:  # NoAlertPresentException: what we want
        return
    raise AssertionError(f"a dialog opened: {alert.text}")


def test_adversarial_corpus_renders_as_inert_text(
    driver: Any, hostile_document: dict[str, Any], tmp_path: Path
) -> None:
    path = tmp_path / "hostile.html"
    write_report(hostile_document, path)
    driver.get(path.as_uri())
    assert wait_ready(driver, 60) == "true"
    assert_inert(driver)
    assert driver.execute_script("return document.scripts.length") == 2  # the data block and the report's own
    body = driver.find_element("tag name", "body").text
    assert HOSTILE_TEXT.split(" ")[0] in body  # the expectation, run and conflict text shows literally
    assert "膨胀卷积" in body
    case_errors = driver.find_element("id", "case-errors").text
    assert '"><img src=x onerror="window.__pwned_attribute = 1">' in case_errors
    # Open every hostile case's detail: descriptions, sources, messages and reproductions are text.
    for case in [c for c in hostile_document["results"] if c["target"] == "numpy.im2col-cpu"]:
        driver.get(path.as_uri() + f"#case={case['case'].replace('/', '%2F')}&dtype=float32")
        driver.refresh()
        assert wait_ready(driver, 60) == "true"
        detail = wait_for(lambda: driver.find_element("id", "detail-content").text)
        assert case["description"][:40] in detail or case["description"][:40].strip() in detail
        assert_inert(driver)
    messages = driver.find_elements("css selector", "#detail-content .message")
    assert any(HOSTILE_TEXT[:60] in m.text for m in messages)
    screenshot(driver, "report-adversarial.png")


def test_adversarial_diff_page_is_inert(driver: Any, hostile_document: dict[str, Any], tmp_path: Path) -> None:
    changed = {**hostile_document, "results": [
        {**r, "outcome": "mismatch", "message": HOSTILE_TEXT} if r["outcome"] == "pass" else r
        for r in hostile_document["results"]
    ]}  # fmt: skip
    result = diffing.diff(hostile_document, changed)
    assert result.changes["regressed"]
    path = tmp_path / "diff.html"
    path.write_text(diffing.html_report(result, HOSTILE_TEXT, HOSTILE_TEXT), encoding="utf-8")
    driver.get(path.as_uri())
    assert_inert(driver)
    assert driver.execute_script("return document.scripts.length") == 0
    assert HOSTILE_TEXT[:60] in driver.find_element("tag name", "body").text


def test_composite_receptive_fields_are_drawn(driver: Any, tmp_path: Path, repo: Path) -> None:
    """HDC [1, 2, 3] reaches all 13x13 pixels; the gridding stack [2, 2, 2] only a 7x7 checkerboard."""
    from conformance import composite_checks, composites

    loaded, errors = composites.load(repo / "cases" / "composites.toml", "cases/composites.toml")
    assert not errors
    writer = ResultsWriter(tmp_path / "results.json")
    target = Target(NumpyIm2col(), "cpu", "strict")
    for composite in loaded:
        if composite.kind == "stack":
            case = composite.as_case("cases/composites.toml")
            writer.add(composite_checks.run_check(composite, case, target, "float32"))
    write_report(writer.finish(base_environment(), ["test"]), tmp_path / "index.html")
    driver.get((tmp_path / "index.html").as_uri())
    wait_ready(driver)
    for case, reached in (("composites/hdc-1-2-3", 169), ("composites/gridding-2-2-2", 49)):
        next(r for r in rows(driver) if r.get_attribute("data-case") == case).click()
        wait_for(lambda case=case: driver.find_element("id", "detail-title").text.startswith(case))
        picture = driver.find_element("css selector", "#detail-content svg.heatmap")
        blue = [c for c in picture.find_elements("css selector", "rect") if c.get_attribute("fill") != "#fff"]
        assert len(blue) == reached, case
        caption = driver.find_element("css selector", "#detail-content figure.heatmap-figure figcaption")
        caption = caption.get_attribute("textContent")
        assert "Receptive field of the centre output" in caption
    screenshot(driver, "report-receptive-field.png")


KNOWN_RAISE = """
[[divergence]]
id = "fakefw-raises"
cases = ["*"]
targets = ["fakefw.raises_markup-cpu"]
outcomes = ["error"]
reason = "raises with markup"
link = "https://github.com/example/fakefw/issues/1"
"""


def test_the_first_screen_says_which_framework_fails_which_case(driver: Any, tmp_path: Path) -> None:
    """At 1280x800, without scrolling: framework x kind of check with the failing framework first, its
    known divergence linked, the failing checks and the targets that ran nothing; the per-target table
    folded away below."""
    from conformance import expectations

    (tmp_path / "browser.toml").write_text(CASES)
    (tmp_path / "expectations.toml").write_text(KNOWN_RAISE)
    known = expectations.load(tmp_path / "expectations.toml").entries
    loaded = load_file(tmp_path / "browser.toml", tmp_path)
    targets = [Target(NumpyIm2col(), "cpu", "strict"), Target(BreaksOnePixel(), "cpu", "strict")]
    targets += [Target(RaisesMarkup(), "cpu", "strict"), Target(TorchConv(), "gpu", "strict")]
    writer = ResultsWriter(tmp_path / "results.json")
    for case in loaded.cases:
        for dtype in case.dtypes:
            for target in targets:
                writer.add(expectations.apply(run_check(case, target, dtype), known, environ={}))
    document = writer.finish(base_environment(), ["test_report_browser"])
    path = tmp_path / "index.html"
    write_report(document, path)

    metrics = {"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": False}
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    try:
        driver.get(path.as_uri())
        assert wait_ready(driver, 60) == "true"
        assert driver.execute_script("return [innerWidth, innerHeight]") == [1280, 800]
        screenshot(driver, "report-first-screen.png")

        def bottom(selector: str) -> float:
            script = "return document.querySelector(arguments[0]).getBoundingClientRect().bottom"
            return float(driver.execute_script(script, selector))

        for selector in ("#glance", "#failing-checks", "details.idle > summary"):
            assert 0 < bottom(selector) <= 800, f"{selector} is below the first screen"
        rows_ = driver.find_elements("css selector", "#glance tr[data-framework]")
        assert [r.get_attribute("data-framework") for r in rows_] == ["fakefw", "numpy"]  # failing first
        forward = rows_[0].find_elements("css selector", "td.glance")[0]
        assert "failing" in forward.get_attribute("class") and "4 failing" in forward.text and "4 known" in forward.text
        link = rows_[0].find_element("css selector", "td.divergences a")
        assert (
            link.text == "fakefw-raises" and link.get_attribute("href") == "https://github.com/example/fakefw/issues/1"
        )
        assert "worst" in rows_[1].find_elements("css selector", "td.glance")[0].text  # numpy: conformant, its margin
        failing = driver.find_elements("css selector", "#failing-checks li")
        assert failing and all("fakefw.broken_pixel-cpu" in li.text and "worst at" in li.text for li in failing)
        idle = driver.find_element("css selector", "details.idle > summary").text
        assert idle.startswith("Ran nothing here: 1 target(s), 4 checks: "), idle  # then the reason, e.g. no CUDA
        # The per-target table is folded: present, closed, not drawn.
        per_target = driver.find_element("id", "per-target")
        assert per_target.get_attribute("open") is None
        assert not driver.find_element("id", "summary-table").is_displayed()
        failing[0].find_element("css selector", "a").click()
        wait_for(lambda: driver.find_element("id", "detail").is_displayed())
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_a_history_says_since_when_the_failing_checks_fail(driver: Any, tmp_path: Path) -> None:
    """The *Since when they fail* section, from a real history file holding this run."""
    from conformance import history
    from conformance.records import observed
    from conformance.results import read_results, result_key

    (tmp_path / "browser.toml").write_text(CASES)
    loaded = load_file(tmp_path / "browser.toml", tmp_path)
    writer = ResultsWriter(tmp_path / "results.json")
    targets = [Target(NumpyIm2col(), "cpu", "strict"), Target(BreaksOnePixel(), "cpu", "strict")]
    for case in loaded.cases:
        for dtype in case.dtypes:
            for target in targets:
                writer.add(run_check(case, target, dtype))
    writer.finish(base_environment(), ["test_report_browser"])
    document = read_results(tmp_path / "results.json")
    records = read_results(tmp_path / "results.json")["results"]
    failing = [result_key(r) for r in records if history.failing(observed(r))]
    assert failing
    with history.History(tmp_path / "history.sqlite") as store:
        store.add_file(tmp_path / "results.json")
        document["history"] = history.report_section(store, tmp_path / "history.sqlite", failing)
    path = tmp_path / "index.html"
    write_report(document, path)
    driver.get(path.as_uri())
    assert wait_ready(driver, 60) == "true"
    summary = driver.find_element("css selector", "#history > summary").text
    assert summary.startswith(f"Since when they fail: {len(failing)} failing check(s) in a history of 1 run(s)")
    cells = [
        [td.text for td in tr.find_elements("css selector", "td")]
        for tr in driver.find_elements("css selector", "#history-table tr")[1:]
    ]
    assert len(cells) == len(failing)
    assert all(row[1] == "fakefw.broken_pixel-cpu" and row[5] == "never" and row[6] == "1" for row in cells)
    assert all(row[3].startswith(document["created"][:10]) for row in cells)  # failing since this run
