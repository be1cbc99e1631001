"""Pytest fixtures for browser tests: ``browser``, ``page`` and ``page_errors``.

A test module uses them with ``pytest_plugins = ["tests.browser.fixtures"]``. The
browser is one headless system chromium per module; each test gets a
page in its own browser context, and the list of errors recorded in it. Without
chromium the fixtures fail (they never skip), naming how to install it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page

from tests.browser.harness import launch_browser, open_page


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One headless Debian chromium per test module.

    Not per session: Playwright's sync API keeps an event loop running in the main
    thread while it is open, which would break every asyncio test collected after it.
    """
    with launch_browser() as running:
        yield running


@pytest.fixture
def browser_page(browser: Browser) -> Iterator[tuple[Page, list[str]]]:
    """A fresh page and the list of its console errors and uncaught exceptions."""
    with open_page(browser) as opened:
        yield opened


@pytest.fixture
def page(browser_page: tuple[Page, list[str]]) -> Page:
    """A fresh page in its own browser context."""
    return browser_page[0]


@pytest.fixture
def page_errors(browser_page: tuple[Page, list[str]]) -> list[str]:
    """What went wrong in ``page`` so far: ``console.error: ...``, ``uncaught: ...``."""
    return browser_page[1]
