"""The browser-test harness is real: Debian's chromium, axe-core's findings, page errors.

Pages come from ``page.set_content`` (no network, no server): an accessible form that
axe passes, a page that breaks ``label`` and ``color-contrast``, and a page whose
``console.error`` and uncaught exception the harness records.
"""

from __future__ import annotations

import subprocess

import pytest
from playwright.sync_api import Browser, Page

from tests.browser.harness import ChromiumMissing, axe_violations, chromium_path

pytest_plugins = ["tests.browser.fixtures"]
pytestmark = pytest.mark.slow

ACCESSIBLE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta http-equiv="Content-Security-Policy" content="default-src 'none'">
  <title>Enrol an edge</title>
</head>
<body>
  <main>
    <h1>Enrol an edge</h1>
    <form>
      <label for="edge-name">Edge name</label>
      <input id="edge-name" name="edge-name" type="text" autocomplete="off">
      <button type="submit">Enrol</button>
    </form>
  </main>
</body>
</html>"""

INACCESSIBLE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>Broken</title></head>
<body>
  <main>
    <h1>Broken</h1>
    <input id="bare" type="text">
    <p id="faint" style="color: #bbbbbb; background: #ffffff">Hard to read</p>
  </main>
</body>
</html>"""

FAILING = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>Failing</title></head>
<body>
  <main><h1>Failing</h1></main>
  <script>console.log("fine"); console.error("boom: the fleet did not load");</script>
  <script>throw new TypeError("kaboom");</script>
</body>
</html>"""


def wait_for_errors(page: Page, errors: list[str], count: int) -> None:
    """Let the page's events arrive until ``errors`` has ``count`` entries (or 5 s pass)."""
    for _ in range(50):
        if len(errors) >= count:
            return
        page.wait_for_timeout(100)


def test_the_browser_is_debians_chromium(browser: Browser) -> None:
    reported = subprocess.run(
        [chromium_path(), "--version"], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert browser.version in reported, (browser.version, reported)


def test_an_accessible_form_has_no_serious_violations(page: Page, page_errors: list[str]) -> None:
    page.set_content(ACCESSIBLE)
    assert axe_violations(page) == []
    # axe ran under the page's Content-Security-Policy without tripping it.
    assert page_errors == []


def test_an_unlabelled_input_and_faint_text_are_violations(page: Page) -> None:
    page.set_content(INACCESSIBLE)
    found = {violation.id: violation for violation in axe_violations(page)}
    assert "label" in found, found
    assert found["label"].impact == "critical"
    assert found["label"].targets == ("#bare",)
    # #bbb on white is 1.9:1, under the 4.5:1 that axe reports as serious.
    assert "color-contrast" in found, found
    assert found["color-contrast"].impact == "serious"
    assert found["color-contrast"].targets == ("#faint",)
    # Only the impacts asked for.
    assert [violation.id for violation in axe_violations(page, impacts=("critical",))] == ["label"]


def test_console_errors_and_uncaught_exceptions_are_recorded(
    page: Page, page_errors: list[str]
) -> None:
    page.set_content(FAILING)
    wait_for_errors(page, page_errors, 2)
    assert sorted(page_errors) == [
        "console.error: boom: the fleet did not load",
        "uncaught: TypeError: kaboom",
    ]
    page.evaluate("setTimeout(() => { throw new Error('later') }, 0)")
    wait_for_errors(page, page_errors, 3)
    assert page_errors[-1] == "uncaught: Error: later"


def test_without_chromium_the_harness_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ChromiumMissing, match=r"make test.*apt-get install chromium"):
        chromium_path()
