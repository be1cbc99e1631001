"""The hub's dashboard in a real browser (Debian's chromium through Playwright).

A hub with enrolment on and three enrolled edges (each simulating drones and sending
its ``system_telemetry`` every second) run as real processes; a fourth device asks to
enrol without a claim token and waits. The dashboard's offline threshold is 4 s so a
stopped edge turns offline within a test's patience. Every page is checked for console
errors and, with axe-core, for serious or critical accessibility violations.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from tests.browser.harness import axe_violations
from tests.helpers import JWT_SECRET, AgentProcess, config_dict, http_json, token, wait_until
from tests.integration.sync_harness import hub_process

pytestmark = pytest.mark.slow
pytest_plugins = ["tests.browser.fixtures"]

OFFLINE_AFTER_S = 4
EDGES = ("edge-a", "edge-b", "edge-c")
PENDING = "edge-new"
#: Where screenshots go when SEMSTREAMS_SCREENSHOTS names a folder (docs/images).
SCREENSHOTS = os.environ.get("SEMSTREAMS_SCREENSHOTS", "")


class Fleet:
    """The hub, its edges, and how to make more."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        # Every device here enrols from 127.0.0.1; the rate limit has its own test.
        provisioning = {"enabled": True, "advertise": False, "enrol_requests_per_minute": 100_000}
        self.hub = hub_process(workdir, provisioning=provisioning)
        self.hub.config["components"].append(
            {
                "id": "dashboard",
                "type": "dashboard",
                "config": {"offline_after": f"{OFFLINE_AFTER_S}s", "sample_interval": "1s"},
            }
        )
        self.hub.config_path.write_text(json.dumps(self.hub.config))
        self.edges: dict[str, AgentProcess] = {}

    def claim_token(self) -> str:
        body = json.dumps({"group": "north", "ttl": "10m"}).encode()
        status, answer = http_json(f"{self.hub.api}/claim-tokens", body)
        assert status == 201, answer
        return str(answer["token"])

    def edge(self, name: str, first: int, *, claim: str) -> AgentProcess:
        boot = self.workdir / f"{name}-provision.json"
        boot.write_text(json.dumps({"claim_token": claim, "hub_url": self.hub.api}))
        config = config_dict(
            self.workdir / f"{name}-state",
            platform={"id": name},
            provisioning={
                "enabled": True,
                "advertise": False,
                "file": str(boot),
                "retry": {"initial": "200ms", "max": "1s"},
            },
            components=[
                {
                    "id": "sim",
                    "type": "simulator",
                    "config": {"entities": 3, "interval": "500ms", "first": first},
                },
                {"id": "device", "type": "system_telemetry", "config": {"interval": "1s"}},
            ],
        )
        process = AgentProcess(config, self.workdir, name=name)
        process.start()
        self.edges[name] = process
        return process

    def rows(self) -> dict[str, dict[str, Any]]:
        status, snapshot = http_json(f"{self.hub.api}/dashboard/fleet")
        assert status == 200, snapshot
        return {row["edge_id"]: row for row in snapshot["edges"]}

    def stop(self) -> None:
        for process in [*self.edges.values(), self.hub]:
            if process.proc is not None and process.proc.poll() is None:
                process.kill()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    made = Fleet(tmp_path_factory.mktemp("dashboard"))
    made.hub.start()
    try:
        for number, name in enumerate(EDGES):
            made.edge(name, first=10 * number, claim=made.claim_token())
        made.edge(PENDING, first=90, claim="")
        wait_until(
            lambda: all(made.rows().get(e, {}).get("status") == "online" for e in EDGES),
            "three edges online",
        )
        yield made
    finally:
        made.stop()


def no_problems(page: Page, errors: list[str]) -> None:
    """No console error or uncaught exception, and no serious or critical axe finding."""
    assert errors == []
    violations = axe_violations(page)
    assert violations == [], "\n".join(str(v) for v in violations)


def screenshot(page: Page, name: str) -> None:
    if SCREENSHOTS:
        page.screenshot(path=str(Path(SCREENSHOTS) / f"dashboard-{name}.png"), full_page=True)


def fleet_row(page: Page, edge: str) -> Any:
    return page.locator(f'tr[data-edge="{edge}"]')


def test_the_fleet_is_live_and_a_stopped_edge_turns_offline_then_recovers(
    fleet: Fleet, page: Page, page_errors: list[str]
) -> None:
    page.goto(fleet.hub.api + "/")
    for edge in EDGES:
        expect(fleet_row(page, edge)).to_have_attribute("data-status", "online")
    expect(fleet_row(page, PENDING)).to_have_attribute("data-status", "pending")
    expect(page.locator("#live")).to_contain_text("live")
    screenshot(page, "fleet")
    no_problems(page, page_errors)

    fleet.edges["edge-b"].stop()
    stopped = time.monotonic()
    # The page updates by itself (server-sent events): no reload.
    expect(fleet_row(page, "edge-b")).to_have_attribute(
        "data-status", "offline", timeout=(OFFLINE_AFTER_S + 6) * 1000
    )
    assert time.monotonic() - stopped <= OFFLINE_AFTER_S + 6
    expect(fleet_row(page, "edge-b")).to_contain_text("no batch for")
    page.select_option("#filter-status", "offline")
    expect(page.locator("tbody tr")).to_have_count(1)
    page.select_option("#filter-status", "")

    # Its detail page charts the last hour; while it was away its lag has a gap.
    time.sleep(2)
    page.click('a[href="#/edges/edge-b"]')
    expect(page.locator("#edge-status")).to_have_text("offline")
    expect(page.locator("figure.chart")).to_have_count(4)
    expect(page.locator("dl.facts")).to_contain_text("enrolled key sha256:")
    _, detail = http_json(f"{fleet.hub.api}/dashboard/edges/edge-b")
    lags = detail["history"]["lag_s"]
    assert any(v is not None for v in lags) and lags[-1] is None, lags
    screenshot(page, "edge")
    no_problems(page, page_errors)

    fleet.edges["edge-b"].start()
    expect(page.locator("#edge-status")).to_have_text("online", timeout=30_000)


def test_a_pending_device_is_approved_from_the_enrolment_page_and_appears(
    fleet: Fleet, page: Page, page_errors: list[str]
) -> None:
    page.goto(fleet.hub.api + "/#/enrolment")
    row = page.locator(f'tr[data-device="{PENDING}"]')
    expect(row).to_be_visible()
    page.fill("#token-group", "south")
    page.click("#create-token")
    token = page.locator("#claim-token")
    expect(token).to_be_visible()
    assert token.input_value().startswith("ct_")
    screenshot(page, "enrolment")
    no_problems(page, page_errors)

    page.click(f"text=Approve {PENDING}")
    expect(row).to_have_count(0)
    wait_until(lambda: fleet.rows()[PENDING]["status"] == "online", "the approved device online")
    page.goto(fleet.hub.api + "/")
    expect(fleet_row(page, PENDING)).to_have_attribute("data-status", "online")


def test_revoking_a_selection_drops_its_link(
    fleet: Fleet, page: Page, page_errors: list[str]
) -> None:
    page.goto(fleet.hub.api + "/")
    page.on("dialog", lambda dialog: dialog.accept())
    page.check('input[aria-label="select edge-c"]')
    page.click("#bulk-revoke")
    expect(fleet_row(page, "edge-c")).to_have_attribute("data-status", "revoked")

    def unlinked() -> bool:
        links = {e["edge_id"]: e for e in http_json(f"{fleet.hub.api}/edges")[1]}
        return links["edge-c"]["connected"] is False

    wait_until(unlinked, "edge-c's link dropped", timeout=15)
    assert page_errors == []


def test_rotating_a_credential_from_the_edge_page_keeps_it_syncing_with_a_new_one(
    fleet: Fleet, page: Page, page_errors: list[str]
) -> None:
    enrolment = fleet.workdir / "edge-a-state" / "provisioning" / "enrolment.json"
    old = json.loads(enrolment.read_text())["credential"]
    time.sleep(1.1)  # credentials carry whole seconds
    page.on("dialog", lambda dialog: dialog.accept())
    page.goto(fleet.hub.api + "/#/edges/edge-a")
    page.click("#rotate")
    wait_until(lambda: json.loads(enrolment.read_text())["credential"] != old, "a new credential")
    before = fleet.rows()["edge-a"]["deltas"]
    wait_until(lambda: fleet.rows()["edge-a"]["deltas"] > before, "edge-a syncing again")
    # The page refreshes every 10 s; right after the relink a rising backlog may show.
    expect(page.locator("#edge-status")).to_have_text("online", timeout=25_000)
    assert page_errors == []


def test_an_entity_lookup_and_its_pathrag_paths(
    fleet: Fleet, page: Page, page_errors: list[str]
) -> None:
    page.goto(fleet.hub.api + "/#/graph/UAV-000")
    expect(page.locator("#entity-title")).to_contain_text("UAV-000")
    expect(page.locator("details summary")).to_contain_text("edge-a")
    page.click("#explore-paths")
    expect(page.locator('ol[aria-label="Paths"] li').first).to_contain_text("UAV-000 → fleet-")
    expect(page.locator("#path-graph canvas").first).to_be_attached()
    screenshot(page, "graph")
    no_problems(page, page_errors)
    page.goto(fleet.hub.api + "/#/hub")
    expect(page.locator("#hub-status")).to_be_visible()
    no_problems(page, page_errors)


# -- with auth on ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def guarded_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    hub = hub_process(
        tmp_path_factory.mktemp("guarded"), provisioning={"enabled": True, "advertise": False}
    )
    auth = {"type": "jwt", "jwt_secret": JWT_SECRET, "jwt_issuer": "semstreams"}
    hub.config["services"]["service-manager"]["config"]["auth"] = auth
    hub.config_path.write_text(json.dumps(hub.config))
    hub.start()
    yield hub
    hub.stop()


def _status(url: str, accept: str = "application/json") -> int:
    request = urllib.request.Request(url, headers={"Accept": accept})
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as refused:
        return int(refused.code)


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/static/app.js",
        "/static/vendor/uplot/uPlot.esm.js",
        "/dashboard/fleet",
        "/dashboard/events",
        "/dashboard/edges/x",
        "/dashboard/hub",
        "/edges",
        "/devices",
    ],
)
def test_with_auth_on_no_page_or_stream_answers_without_a_token(
    guarded_hub: AgentProcess, path: str
) -> None:
    assert _status(guarded_hub.api + path) == 401
    assert _status(guarded_hub.api + path, accept="text/html") == 401


def test_signing_in_with_the_token_opens_the_dashboard(
    guarded_hub: AgentProcess, page: Page, page_errors: list[str]
) -> None:
    page.goto(guarded_hub.api + "/")
    expect(page.locator("h1")).to_have_text("Sign in")
    # The sign-in page comes with the 401 itself, which the browser logs as a failed load.
    assert page_errors == [
        "console.error: Failed to load resource: the server responded with a status of 401"
        " (Unauthorized)"
    ]
    page_errors.clear()
    no_problems(page, page_errors)
    page.fill("#token", "not.a.token")
    page.click("button[type=submit]")
    expect(page.locator(".why")).to_have_text("malformed token")
    page.fill("#token", token(sub="operator"))
    page.click("button[type=submit]")
    expect(page.locator("#live")).to_contain_text("live")
    expect(page.locator("tbody")).to_contain_text("No edge has been heard from yet.")
    cookies = {c["name"]: c for c in page.context.cookies()}
    assert cookies["semstreams_session"]["httpOnly"] is True
    # A change from the page carries the CSRF token: creating a claim token works.
    page.goto(guarded_hub.api + "/#/enrolment")
    page.click("#create-token")
    expect(page.locator("#claim-token")).to_be_visible()
    page.click("text=Sign out")
    expect(page.locator("h1")).to_have_text("Sign in")
    assert all("status of 401" in e for e in page_errors), page_errors


def test_what_an_edge_names_is_shown_as_text_never_run(
    fleet: Fleet, page: Page, page_errors: list[str]
) -> None:
    # A compromised edge picks property names and values meant to run in the operator's
    # browser (entity ids and types cannot carry markup: they are checked on ingest).
    hostile = {
        "entity_id": "XSS-1",
        "entity_type": "note",
        "properties": {
            "<img src=x onerror=window.pwned=1>": "<script>window.pwned=2</script><b>x</b>",
        },
    }
    status, _ = http_json(f"{fleet.edges['edge-a'].api}/ingest", json.dumps(hostile).encode())
    assert status == 202
    wait_until(lambda: http_json(f"{fleet.hub.api}/graph/entities/XSS-1")[0] == 200, "XSS-1")
    page.goto(fleet.hub.api + "/#/graph/XSS-1")
    expect(page.locator("#main")).to_contain_text("<img src=x onerror=window.pwned=1>")
    expect(page.locator("#main")).to_contain_text("<script>window.pwned=2</script>")
    assert page.evaluate("window.pwned") is None
    assert page.locator("#main img, #main script, #main b").count() == 0
    assert page_errors == []


def test_the_fleet_fits_a_phone(fleet: Fleet, page: Page, page_errors: list[str]) -> None:
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(fleet.hub.api + "/")
    expect(fleet_row(page, "edge-a")).to_be_visible()
    # The page does not scroll sideways; the wide table scrolls inside its own box.
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.keyboard.press("Tab")  # the skip link comes first for keyboard users
    expect(page.locator(".skip")).to_be_focused()
    no_problems(page, page_errors)


def test_the_page_cannot_be_framed_and_runs_only_the_hubs_own_scripts(fleet: Fleet) -> None:
    with urllib.request.urlopen(fleet.hub.api + "/", timeout=5) as answer:
        headers = answer.headers
    policy = headers["Content-Security-Policy"]
    assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert "script-src" not in policy  # so scripts fall under default-src 'self' alone
    assert "unsafe-eval" not in policy
    assert headers["X-Frame-Options"] == "DENY"
