"""Screenshots of a running hub's dashboard for the docs (``docs/images/dashboard-*.png``).

Run ``make demo`` in one terminal, wait a minute (so demo-edge-3 lags and the charts
have a history), then ``.venv/bin/python tools/screenshots.py``. The browser is the
tests' (Debian's chromium under Playwright: ``tests/browser/harness.py``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.browser.harness import launch_browser, open_page

VIEWS = {
    "fleet": ("#/", "tr[data-edge]"),
    "edge": ("#/edges/demo-edge-3", "figure.chart"),
    "enrolment": ("#/enrolment", "h3"),
    "graph": ("#/graph/UAV-000", "#entity-title"),
}


def main() -> int:
    """Save one screenshot per view; the path of each is printed."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hub", default="http://127.0.0.1:8080")
    parser.add_argument("--out", type=Path, default=Path("docs/images"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with launch_browser() as browser, open_page(browser) as (page, _errors):
        page.set_viewport_size({"width": 1280, "height": 760})
        for name, (fragment, ready) in VIEWS.items():
            page.goto(f"{args.hub}/{fragment}")
            page.locator(ready).first.wait_for()
            if name == "graph":
                page.click("#explore-paths")
                page.locator("#path-graph canvas").first.wait_for(state="attached")
            page.wait_for_timeout(1500)  # charts and the path drawing settle
            path = args.out / f"dashboard-{name}.png"
            page.screenshot(path=str(path), full_page=True)
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
