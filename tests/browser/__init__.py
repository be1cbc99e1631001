"""Browser-test helpers: the system chromium under Playwright, and axe-core."""
