"""Drive a real browser in tests: Debian's chromium through Playwright, and axe-core.

The browser is the system's ``chromium`` (``make test`` installs Debian's package),
started by Playwright's sync API with ``executable_path``: no browser is ever
downloaded, so ``playwright install`` is never needed. Each page records what went
wrong in it: ``console.error`` messages and uncaught exceptions. ``axe_violations``
runs the vendored axe-core (``tests/browser/vendor/axe-core``, from ``make vendor``)
in a page and returns its accessibility violations.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from playwright.sync_api import Browser, ConsoleMessage, Error, Page, sync_playwright

AXE_JS = Path(__file__).parent / "vendor" / "axe-core" / "axe.min.js"
#: How long a page action or wait may take before the test fails (ms).
DEFAULT_TIMEOUT_MS = 15_000


class ChromiumMissing(RuntimeError):
    """No ``chromium`` on PATH: the browser tests cannot run (and must not skip)."""


def chromium_path() -> str:
    """The system chromium's path, or ``ChromiumMissing`` saying how to install it."""
    path = shutil.which("chromium")
    if path is None:
        raise ChromiumMissing(
            "the browser tests need Debian's chromium, and there is no `chromium` on PATH: "
            "run `make test` (it installs the Debian packages the tests need) or "
            "`apt-get install chromium`"
        )
    return path


def launch_args() -> list[str]:
    """Chromium flags for a headless run in a container, as root or not."""
    # /dev/shm is small in containers; chromium then crashes on shared memory.
    args = ["--disable-dev-shm-usage"]
    if os.geteuid() == 0:
        # Chromium refuses to run as root with its sandbox on.
        args.append("--no-sandbox")
    return args


@contextmanager
def launch_browser() -> Iterator[Browser]:
    """A headless system chromium under Playwright's sync API; closed on exit."""
    executable = chromium_path()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable, headless=True, args=launch_args()
        )
        try:
            yield browser
        finally:
            browser.close()


def _console_error(errors: list[str], message: ConsoleMessage) -> None:
    if message.type == "error":
        errors.append(f"console.error: {message.text}")


def _page_error(errors: list[str], error: Error) -> None:
    errors.append(f"uncaught: {error.name}: {error.message}")


@contextmanager
def open_page(browser: Browser) -> Iterator[tuple[Page, list[str]]]:
    """A page in a fresh context, and the list its errors are recorded into.

    The list gets ``"console.error: <text>"`` for each ``console.error`` (and every
    other console message of type error, such as a failed resource load) and
    ``"uncaught: <name>: <message>"`` for each uncaught exception or unhandled
    rejection in the page.
    """
    context = browser.new_context()
    context.set_default_timeout(DEFAULT_TIMEOUT_MS)
    errors: list[str] = []
    try:
        page = context.new_page()
        page.on("console", lambda message: _console_error(errors, message))
        page.on("pageerror", lambda error: _page_error(errors, error))
        yield page, errors
    finally:
        context.close()


@dataclass(frozen=True)
class Violation:
    """One axe-core rule a page breaks, and where (one CSS selector per node)."""

    id: str
    impact: str
    help: str
    targets: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.id} ({self.impact}): {self.help} at {', '.join(self.targets)}"


def _selector(target: Any) -> str:
    # A node in an iframe or shadow root has a list of selectors, outermost first.
    if isinstance(target, list):
        return " >>> ".join(_selector(part) for part in target)
    return str(target)


_RUN_AXE = """async () => {
    const result = await axe.run(document, {resultTypes: ["violations"]});
    return result.violations.map((v) => ({
        id: v.id, impact: v.impact, help: v.help, targets: v.nodes.map((n) => n.target),
    }));
}"""


def axe_violations(page: Page, impacts: Iterable[str] = ("serious", "critical")) -> list[Violation]:
    """Run axe-core on ``page``'s document; its violations whose impact is in ``impacts``.

    axe is injected with ``page.evaluate`` (not a script tag), so a page's
    Content-Security-Policy neither blocks it nor logs an error about it.
    """
    if not AXE_JS.is_file():
        raise FileNotFoundError(f"{AXE_JS} is missing: run `make vendor`")
    if page.evaluate("typeof window.axe") == "undefined":
        # A trailing expression so the script's completion value is never a function
        # (Playwright would call it).
        page.evaluate(AXE_JS.read_text() + "\n;undefined")
    wanted = set(impacts)
    return [
        Violation(
            id=found["id"],
            impact=found["impact"],
            help=found["help"],
            targets=tuple(_selector(target) for target in found["targets"]),
        )
        for found in page.evaluate(_RUN_AXE)
        if found["impact"] in wanted
    ]
