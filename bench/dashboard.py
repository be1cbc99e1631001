"""Dashboard benchmark: the hub's fleet page with 500 edges, in a real browser.

Run it with ``.venv/bin/python bench/dashboard.py`` (``--help`` lists the knobs; the
defaults are the benchmark's contract and take 2.5-4 minutes on 2 cores). Every
process runs on 127.0.0.1 with its state in a temp directory (``--keep`` keeps it, with
the hub's log); every process started here is stopped at the end, also on errors,
SIGTERM or Ctrl-C (the hub in its own process group, which the kernel also SIGTERMs if
this process dies; the browser through Playwright). A 360 s budget cuts a step that
hangs. Progress goes to stderr; the last line on stdout is one JSON object with flat
keys. The exit code is 1 when a step did not complete.

One ``cloud-hub run`` (``HubNode`` from ``bench/hub.py``: its embedded nats-server, a
``websocket_input`` with a ``devices`` token for every simulated edge; the dashboard
with its defaults). The edges are not agents: each is a ``SimEdge`` of
``bench/hub.py``, an asyncio ``websockets`` client in this process speaking the sync
protocol itself, all ``--edges`` of them in one event loop. Each sends one batch (zstd
:func:`~edge_agent.sync.codec.encode_deltas` of
:class:`~edge_agent.sync.frames.EntityDelta`) holding its telemetry entity (id = the
edge's id, type ``device``: ``system.cpu_percent``, ``system.memory_percent``,
``system.disk_percent``, ``system.temperature_c``, ``sync.backlog_entities``,
``agent.version``, what the edge's ``system_telemetry`` sends) and ``--drones``
drones; then the bench polls ``GET /dashboard/fleet`` until every edge's row has its
CPU (``fleet_listed_s``, from the first send).

The browser is Debian's chromium (``tests/browser/harness.py``'s ``chromium_path`` and
``launch_args``), headless, under Playwright's async API in the same event loop. An
init script in every page notes, on the page's own clock (``performance.now()``, ms
since its navigation started): when the first ``fleet`` server-sent event arrived,
when a watched edge's new CPU value first arrived in one, and when ``tbody
tr[data-edge]`` first counted every edge (a ``MutationObserver``), then the first
task after the next animation frame, i.e. once that frame was rendered.

Steps:

0. **Snapshot** (``fleet_snapshot_ms``, no page open): five ``GET /dashboard/fleet``
   1.2 s apart, so that the hub computes the fleet anew each time (its snapshot lives
   1 s); the p50 of their times, and the body's size (``fleet_snapshot_kb``).
1. **First paint** (``fleet_first_paint_ms``): ``--paint-runs`` times, a fresh
   browser context (no cache) and page, ``goto(hub + "/")``, wait until the page has
   every edge's row, read the time above. The median, and every run
   (``..._runs``). Where it goes, medians on the same clock:
   ``fleet_dom_ready_ms`` (``DOMContentLoaded`` ended: the page and its modules),
   ``fleet_first_event_ms`` (the first ``fleet`` event arrived),
   ``fleet_rows_in_dom_ms`` (the rows were in the DOM; the rest is style, layout and
   paint). Target ≤ 1,000 ms.
2. **Live update** (``live_update_latency_ms``): one page open on the fleet;
   ``--trials`` times, one edge (a different one each time) sends a batch with its
   telemetry entity whose ``system.cpu_percent`` is a new whole number no edge had;
   the latency is from the moment the edge sent it (``SimEdge.sent_at``) until
   ``page.wait_for_function`` sees the row's ``td[data-column="cpu_percent"]`` show it
   (``"63 %"``). p50 and max. ``live_update_render_ms`` splits off the page's part:
   from the event carrying the value arriving to the cell showing it. Trials are
   spaced 1.5-2.5 s apart so that they fall at different points of the stream's 1 s
   cycle. Target ≤ 2,000 ms.
3. **Hub CPU**: the hub process's and its nats-server's CPU (psutil: user + system
   over ``--cpu-seconds`` of wall time, 100 = one core) with no page open
   (``hub_cpu_pct_no_dashboards``), then with ``--dashboards`` pages open on the fleet,
   each in its own context (``hub_cpu_pct_10_dashboards``); the edges idle in both
   (linked, answering the hub's pings). The pages are opened at once
   (``pages_live_s_10_dashboards`` until all are), and a page counts as open once its
   live stream delivered its first snapshot: they share this machine's cores with the
   hub, so waiting for each to draw every row would measure the browser; for the same
   reason chromium runs at nice 10 from here on. How many had drawn every row by the
   end is ``pages_showing_fleet_10_dashboards``; ``fleet_events_per_page_s_10_dashboards``
   is the ``fleet`` events a page got a second (on its own clock, mean of the pages),
   ``stream_reconnects_10_dashboards`` the times a page's stream opened again.
   ``browser_cpu_pct_10_dashboards`` is chromium's, all its processes.
   ``--profile DIR`` py-spies the hub meanwhile into DIR/dashboards.txt
   (``bench/hub.py``'s ``start_profile``: it needs ``py-spy`` beside the venv's
   python).

Also reported: peak RSS of the hub and its nats-server, the machine's load before, the
commit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
from common import percentile, run_main
from hub import HubNode, Run, SimEdge, commit, link_all, start_profile, stop_profile, stop_tasks
from playwright.async_api import Browser, BrowserContext, Page, Playwright, async_playwright
from playwright.async_api import Error as PlaywrightError
from sync import MB, Bench, PhaseError, machine

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.browser

from edge_agent.sync.codec import encode_deltas
from edge_agent.sync.frames import EntityDelta
from tests.browser.harness import chromium_path, launch_args

BUDGET_S = 360.0
POLL_S = 0.2
#: How long one page may take to show the fleet, or one value to appear (ms).
PAGE_TIMEOUT_MS = 15_000
#: How long step 3's pages, opened at once on a machine they saturate, may take (ms).
OPEN_PAGES_TIMEOUT_MS = 60_000
#: Step 3 runs chromium at this niceness: its pages, on other machines in real life,
#: must not starve the hub they are measuring here.
BROWSER_NICE = 10
SETTLE_S = 3.0
#: The hub's snapshot lives this long (``cloud_hub.dashboard.service``).
SNAPSHOT_TTL_S = 1.0
FIRST_PAINT_TARGET_MS = 1_000
LIVE_UPDATE_TARGET_MS = 2_000
AGENT_VERSION = "0.1.0-bench"

#: Runs in every page before its own scripts: notes the moments the bench reads.
PAGE_PROBE = """
(() => {
  const want = %d;
  const probe = {
    events: 0, opens: 0, firstEvent: null, rows: null, painted: null, watch: null,
  };
  window.__bench = probe;
  // A fleet event's CPU value for one edge, found in the text (no second JSON.parse).
  const cpuOf = (data, id) => {
    const at = data.indexOf(`"edge_id":"${id}"`);
    if (at < 0) return null;
    const key = '"cpu_percent":';
    const k = data.indexOf(key, at);
    return k < 0 ? null : parseFloat(data.slice(k + key.length, k + key.length + 24));
  };
  const Source = window.EventSource;
  window.EventSource = class extends Source {
    constructor(...args) {
      super(...args);
      this.addEventListener("open", () => { probe.opens += 1; });
      // Added before the page's own listener, so it runs first: the arrival time.
      this.addEventListener("fleet", (event) => {
        const now = performance.now();
        probe.events += 1;
        if (probe.firstEvent === null) probe.firstEvent = now;
        const watch = probe.watch;
        if (watch && watch.arrived === null && cpuOf(event.data, watch.id) === watch.value) {
          watch.arrived = now;
        }
      });
    }
  };
  const observer = new MutationObserver(() => {
    if (document.querySelectorAll("tbody tr[data-edge]").length < want) return;
    observer.disconnect();
    probe.rows = performance.now();
    requestAnimationFrame(() => setTimeout(() => { probe.painted = performance.now(); }, 0));
  });
  observer.observe(document, { childList: true, subtree: true });
})();
"""

#: Fleet events the page received so far, its clock, the times its stream (re)opened,
#: whether it has drawn every edge's row.
PAGE_COUNTS = """() => [window.__bench.events, performance.now(), window.__bench.opens,
  window.__bench.painted !== null]"""

#: The row's CPU cell shows ``text``: the page's time then, else false.
CELL_SHOWS = """([id, text]) => {
  const cell = document.querySelector(`tr[data-edge="${id}"] td[data-column="cpu_percent"]`);
  return cell !== null && cell.textContent === text ? performance.now() : false;
}"""


def log(message: str) -> None:
    """Progress on stderr, so that stdout ends with the JSON line alone."""
    print(f"[dashboard] {message}", file=sys.stderr, flush=True)


# ---- edges -------------------------------------------------------------------------------


def raise_fd_limit(needed: int) -> None:
    """Lift the soft limit on open files (the hub inherits it) to ``needed`` if allowed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    log(f"open files limit {soft} -> {target}")


def telemetry(edge_id: str, index: int, version: int, cpu: float) -> EntityDelta:
    """The edge's own device entity, as its ``system_telemetry`` would send it."""
    ts = int(time.time() * 1000)
    readings: list[tuple[str, Any]] = [
        ("system.cpu_percent", cpu),
        ("system.memory_percent", 30.0 + index % 40),
        ("system.disk_percent", 20.0 + index % 50),
        ("system.temperature_c", 40.0 + index % 25),
        ("sync.backlog_entities", 0),
        ("agent.version", AGENT_VERSION),
    ]
    return EntityDelta(
        edge_id, "device", version, ts, 3, [(key, value, ts, edge_id) for key, value in readings]
    )


def drones(edge_id: str, count: int) -> list[EntityDelta]:
    """``count`` drones of the edge, one reading each."""
    ts = int(time.time() * 1000)
    return [
        EntityDelta(
            f"{edge_id}.drone.{n:03d}",
            "drone",
            1,
            ts,
            3,
            [
                ("telemetry.altitude", 100.0 + n, ts, edge_id),
                ("telemetry.battery", 90, ts, edge_id),
            ],
        )
        for n in range(count)
    ]


def send(edge: SimEdge, deltas: list[EntityDelta]) -> int:
    """Let the edge send one more batch of ``deltas``; its seq."""
    edge.add([encode_deltas(deltas, "zstd")[0]])
    edge.size = len(deltas)
    seq = len(edge.payloads)
    edge.allow(seq)
    return seq


def initial_cpu(index: int) -> float:
    """Edge ``index``'s first CPU reading: 5-44 %, so that live values (50+) are new."""
    return 5.0 + index % 40 + 0.3


async def fleet(http: httpx.AsyncClient, hub: HubNode) -> list[dict[str, Any]]:
    """``GET /dashboard/fleet``'s rows."""
    reply = await http.get(f"{hub.api}/dashboard/fleet")
    reply.raise_for_status()
    rows: list[dict[str, Any]] = reply.json()["edges"]
    return rows


async def fill_fleet(
    http: httpx.AsyncClient, hub: HubNode, edges: list[SimEdge], drone_count: int
) -> float:
    """Every edge sends its telemetry and drones; seconds until the fleet lists all."""
    start = time.monotonic()
    for index, edge in enumerate(edges):
        send(
            edge,
            [
                telemetry(edge.edge_id, index, 1, initial_cpu(index)),
                *drones(edge.edge_id, drone_count),
            ],
        )
    wanted = {edge.edge_id for edge in edges}
    deadline = start + 60
    listed = 0
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            rows = await fleet(http, hub)
            listed = sum(1 for r in rows if r["edge_id"] in wanted and r["cpu_percent"] is not None)
            if listed == len(wanted):
                return time.monotonic() - start
        await asyncio.sleep(POLL_S)
    acked = sum(1 for edge in edges if edge.hwm >= 1)
    raise PhaseError(f"the fleet lists {listed} of {len(edges)} edges ({acked} acked) after 60 s")


async def snapshot_cost(http: httpx.AsyncClient, hub: HubNode, times: int) -> dict[str, Any]:
    """``GET /dashboard/fleet`` with its snapshot older than 1 s (so computed anew), no
    page open: how long the hub takes, and the snapshot's size."""
    took, size = [], 0
    for _ in range(times):
        await asyncio.sleep(SNAPSHOT_TTL_S + 0.2)
        start = time.monotonic()
        reply = await http.get(f"{hub.api}/dashboard/fleet")
        reply.raise_for_status()
        took.append((time.monotonic() - start) * 1000)
        size = len(reply.content)
    figures = {"fleet_snapshot_ms": percentile(took, 0.5), "fleet_snapshot_kb": round(size / 1000)}
    log(
        f"GET /dashboard/fleet, computed anew: p50 {figures['fleet_snapshot_ms']} ms,"
        f" {figures['fleet_snapshot_kb']} kB"
    )
    return figures


# ---- the browser -------------------------------------------------------------------------


async def open_fleet(
    browser: Browser,
    url: str,
    edges: int,
    until: str = "painted",
    timeout_ms: float = PAGE_TIMEOUT_MS,
) -> tuple[BrowserContext, Page]:
    """A fresh context and page on the fleet, once it shows every edge (``until``
    ``"firstEvent"``: once its live stream delivered the first snapshot)."""
    context = await browser.new_context()
    try:
        await context.add_init_script(PAGE_PROBE % edges)
        page = await context.new_page()
        page.set_default_timeout(timeout_ms)
        await page.goto(url)
        await page.wait_for_function(f"() => window.__bench.{until} !== null")
    except BaseException:
        await context.close()
        raise
    return context, page


async def open_pages(
    browser: Browser, url: str, edges: int, count: int
) -> list[tuple[BrowserContext, Page]]:
    """``count`` pages on the fleet at once, each in its own context, once each one's live
    stream delivered its first snapshot (all of them, or none is left open)."""
    results = await asyncio.gather(
        *(
            open_fleet(browser, url, edges, until="firstEvent", timeout_ms=OPEN_PAGES_TIMEOUT_MS)
            for _ in range(count)
        ),
        return_exceptions=True,
    )
    opened = [result for result in results if not isinstance(result, BaseException)]
    failed = [result for result in results if isinstance(result, BaseException)]
    if failed:
        for context, _page in opened:
            with contextlib.suppress(PlaywrightError):
                await context.close()
        raise failed[0]
    return opened


async def first_paint(browser: Browser, url: str, args: argparse.Namespace) -> dict[str, Any]:
    """Step 1: the fleet's first paint in a fresh context, ``--paint-runs`` times."""
    painted, events, ready, rows = [], [], [], []
    for run in range(args.paint_runs):
        context, page = await open_fleet(browser, url, args.edges)
        try:
            seen = await page.evaluate(
                "() => [window.__bench.painted, window.__bench.firstEvent,"
                " performance.getEntriesByType('navigation')[0].domContentLoadedEventEnd,"
                " window.__bench.rows]"
            )
        finally:
            await context.close()
        painted.append(round(seen[0], 1))
        events.append(seen[1])
        ready.append(seen[2])
        rows.append(seen[3])
        log(
            f"  run {run + 1}: {painted[-1]} ms (DOMContentLoaded {seen[2]:.0f} ms, first"
            f" fleet event {seen[1]:.0f} ms, rows in the DOM {seen[3]:.0f} ms)"
        )
    figures = {
        "fleet_first_paint_ms": round(statistics.median(painted), 1),
        "fleet_first_paint_ms_runs": painted,
        "fleet_first_event_ms": round(statistics.median(events), 1),
        "fleet_dom_ready_ms": round(statistics.median(ready), 1),
        "fleet_rows_in_dom_ms": round(statistics.median(rows), 1),
    }
    log(
        f"first paint of {args.edges} rows: median {figures['fleet_first_paint_ms']} ms"
        f" (target <= {FIRST_PAINT_TARGET_MS})"
    )
    return figures


async def live_updates(
    browser: Browser, url: str, edges: list[SimEdge], trials: int
) -> dict[str, Any]:
    """Step 2: a new CPU value sent by one edge until the open page shows it."""
    context, page = await open_fleet(browser, url, len(edges))
    latencies, render = [], []
    try:
        for trial in range(trials):
            await asyncio.sleep(1.5 + (trial * 0.37) % 1.0)
            index = (trial * 47 + 13) % len(edges)
            edge, value = edges[index], 50 + 4 * trial
            await page.evaluate(
                "([id, value]) => { window.__bench.watch = {id, value, arrived: null}; }",
                [edge.edge_id, value],
            )
            shown = asyncio.create_task(
                page.wait_for_function(CELL_SHOWS, arg=[edge.edge_id, f"{value} %"])
            )
            seq = send(edge, [telemetry(edge.edge_id, index, trial + 2, float(value))])
            try:
                handle = await shown
            finally:
                shown.cancel()
            done = time.monotonic()
            shown_at = await handle.json_value()
            arrived_at = await page.evaluate("() => window.__bench.watch.arrived")
            sent = edge.sent_at.get(seq)
            if sent is None:
                raise PhaseError(f"{edge.edge_id}'s batch {seq} shown before it was sent")
            latencies.append((done - sent) * 1000)
            part = None if arrived_at is None else shown_at - arrived_at
            if part is not None:
                render.append(part)
            log(
                f"  trial {trial + 1}: {edge.edge_id} cpu {value} % shown after"
                f" {latencies[-1]:.0f} ms (from the event's arrival: {part and round(part)} ms)"
            )
    finally:
        await context.close()
    figures = {
        "live_update_latency_ms": percentile(latencies, 0.5),
        "live_update_latency_ms_max": round(max(latencies), 1),
        "live_update_latency_ms_runs": [round(x, 1) for x in latencies],
        "live_update_render_ms": percentile(render, 0.5),
        "live_update_render_ms_max": round(max(render), 1) if render else None,
    }
    log(
        f"live update: p50 {figures['live_update_latency_ms']} ms, max"
        f" {figures['live_update_latency_ms_max']} ms (target <= {LIVE_UPDATE_TARGET_MS})"
    )
    return figures


# ---- CPU ---------------------------------------------------------------------------------


def browser_processes() -> list[psutil.Process]:
    """Chromium's processes (children of Playwright's driver, a child of this one)."""
    found = []
    for process in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if process.name().startswith(("chrom", "headless_shell")):
                found.append(process)
    return found


def cpu_seconds(processes: list[psutil.Process]) -> float:
    """User + system CPU seconds of the processes still running."""
    total = 0.0
    for process in processes:
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            total += times.user + times.system
    return total


async def cpu_use(groups: dict[str, list[psutil.Process]], seconds: float) -> dict[str, float]:
    """Each group's CPU use over ``seconds`` of wall time, in % of one core."""
    before = {label: cpu_seconds(group) for label, group in groups.items()}
    start = time.monotonic()
    await asyncio.sleep(seconds)
    wall = time.monotonic() - start
    return {
        label: round(100 * (cpu_seconds(group) - before[label]) / wall, 1)
        for label, group in groups.items()
    }


async def hub_cpu(run: Run, hub: HubNode, browser: Browser, url: str) -> dict[str, Any]:
    """Step 3: the hub's CPU with no page open, then with ``--dashboards`` open."""
    args = run.args
    pids = hub.pids()
    groups = {"hub": [psutil.Process(pids["hub"])]}
    if "hub_nats" in pids:
        groups["hub_nats"] = [psutil.Process(pids["hub_nats"])]
    await asyncio.sleep(SETTLE_S)  # the last page's stream ends
    idle = await cpu_use(groups, args.cpu_seconds)
    log(f"hub CPU, no dashboard: {idle['hub']} % (nats-server {idle.get('hub_nats')} %)")
    figures: dict[str, Any] = {
        "hub_cpu_pct_no_dashboards": idle["hub"],
        "hub_nats_cpu_pct_no_dashboards": idle.get("hub_nats"),
    }
    label = f"{args.dashboards}_dashboards"
    for process in browser_processes():  # its renderers fork from these: they inherit it
        with contextlib.suppress(psutil.Error):
            process.nice(BROWSER_NICE)
    began = time.monotonic()
    opened = await open_pages(browser, url, args.edges, args.dashboards)
    figures[f"pages_live_s_{label}"] = round(time.monotonic() - began, 1)
    log(f"  {args.dashboards} pages live after {figures[f'pages_live_s_{label}']} s")
    try:
        await asyncio.sleep(SETTLE_S)
        # A busy page answers late: its rate is counted on its own clock.
        before = await asyncio.gather(*(page.evaluate(PAGE_COUNTS) for _, page in opened))
        profiler = start_profile(run, hub, "dashboards")
        try:
            busy = await cpu_use({**groups, "browser": browser_processes()}, args.cpu_seconds)
        finally:
            stop_profile(profiler)
        after = await asyncio.gather(*(page.evaluate(PAGE_COUNTS) for _, page in opened))
    finally:
        for context, _page in opened:
            with contextlib.suppress(PlaywrightError):
                await context.close()
    figures.update(
        {
            f"hub_cpu_pct_{label}": busy["hub"],
            f"hub_nats_cpu_pct_{label}": busy.get("hub_nats"),
            f"browser_cpu_pct_{label}": busy["browser"],
            f"fleet_events_per_page_s_{label}": round(
                statistics.mean(
                    1000 * (then[0] - now[0]) / (then[1] - now[1])
                    for now, then in zip(before, after, strict=True)
                ),
                2,
            ),
            f"pages_showing_fleet_{label}": sum(counts[3] for counts in after),
            f"stream_reconnects_{label}": sum(counts[2] - 1 for counts in after),
        }
    )
    log(
        f"hub CPU, {args.dashboards} dashboards: {busy['hub']} %"
        f" (nats-server {busy.get('hub_nats')} %, chromium {busy['browser']} %);"
        f" {figures[f'fleet_events_per_page_s_{label}']} fleet events/s a page,"
        f" {figures[f'pages_showing_fleet_{label}']} pages had drawn every row,"
        f" {figures[f'stream_reconnects_{label}']} streams reconnected"
    )
    return figures


# ---- main --------------------------------------------------------------------------------


@dataclass
class Setup:
    """What the steps share: the run (args, bench, HTTP client), the hub, the edges, the
    edges' tasks and the browser."""

    run: Run
    hub: HubNode
    edges: list[SimEdge] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    browser: Browser | None = None

    @property
    def url(self) -> str:
        """The dashboard."""
        return f"{self.hub.api}/"


async def set_up(setup: Setup, playwright: Playwright, figures: dict[str, Any]) -> Browser:
    """The hub, its edges linked and listed on the fleet, and the browser."""
    run, hub = setup.run, setup.hub
    log(f"hub with {len(setup.edges)} edges ...")
    await run.bench.start(hub)
    linked = time.monotonic()
    setup.tasks = await link_all(setup.edges)
    figures["edges_linked_s"] = round(time.monotonic() - linked, 2)
    listed = await fill_fleet(run.http, hub, setup.edges, run.args.drones)
    figures["fleet_listed_s"] = round(listed, 2)
    log(
        f"{len(setup.edges)} edges linked in {figures['edges_linked_s']} s, all on"
        f" /dashboard/fleet {figures['fleet_listed_s']} s after their first batch"
    )
    setup.browser = await playwright.chromium.launch(
        executable_path=chromium_path(), headless=True, args=launch_args()
    )
    figures["chromium"] = setup.browser.version
    return setup.browser


async def measure(setup: Setup, browser: Browser, figures: dict[str, Any]) -> None:
    """Steps 1-3, each reported (its error too) and the next one run."""
    args, url = setup.run.args, setup.url
    steps: dict[str, Callable[[], Awaitable[dict[str, Any]]]] = {
        "snapshot": lambda: snapshot_cost(setup.run.http, setup.hub, 5),
        "first_paint": lambda: first_paint(browser, url, args),
        "live_update": lambda: live_updates(browser, url, setup.edges, args.trials),
        "hub_cpu": lambda: hub_cpu(setup.run, setup.hub, browser, url),
    }
    for step, run_step in steps.items():
        log(f"{step} ...")
        try:
            figures.update(await run_step())
        except (PhaseError, PlaywrightError, psutil.Error, OSError) as exc:
            figures["complete"] = False
            figures[f"{step}_error"] = f"{type(exc).__name__}: {exc}"[:300]
            log(f"{step} did not complete: {figures[f'{step}_error']}")


async def tear_down(setup: Setup, sampler: asyncio.Task[None]) -> None:
    """Close the browser, stop the edges, the RSS sampler and the hub."""
    if setup.browser is not None:
        with contextlib.suppress(PlaywrightError, TimeoutError):
            await asyncio.wait_for(setup.browser.close(), 10)
    await stop_tasks(setup.tasks)
    sampler.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await sampler
    setup.run.bench.stop(*setup.run.bench.nodes)


async def benchmark(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Set up the hub, the edges and the browser; run every step within the budget."""
    deadline = asyncio.get_running_loop().time() + BUDGET_S
    began = time.monotonic()
    figures: dict[str, Any] = {
        **await machine(),
        "commit": commit(),
        "edges": args.edges,
        "drones_per_edge": args.drones,
        "complete": True,
    }
    raise_fd_limit(4 * args.edges + 1024)
    ids = [f"edge-{i:03d}" for i in range(args.edges)]
    async with httpx.AsyncClient(timeout=10.0) as http, async_playwright() as playwright:
        bench = Bench(workdir, http, args)
        run = Run(args, bench, http)
        setup = Setup(run, HubNode(workdir, "hub", ids, run.token, []))
        setup.edges = [SimEdge(edge_id, run.token, [setup.hub.sync_url], 1) for edge_id in ids]
        bench.nodes.append(setup.hub)
        sampler = asyncio.create_task(bench.sample_rss_forever())
        try:
            async with asyncio.timeout_at(deadline):
                browser = await set_up(setup, playwright, figures)
                await measure(setup, browser, figures)
        except Exception as exc:  # setup failed, or over the budget
            figures["complete"] = False
            reason = f"over the {BUDGET_S:.0f} s budget" if isinstance(exc, TimeoutError) else exc
            figures["error"] = f"{type(exc).__name__}: {reason}"[:300]
            log(f"did not complete: {figures['error']}")
        finally:
            await tear_down(setup, sampler)
    for label, peak in sorted(bench.peak_rss.items()):
        figures[f"{label}_rss_mb"] = round(peak / MB, 1)
    figures["log_warnings"] = bench.log_levels["WARNING"] + bench.log_levels["WRN"]
    figures["log_errors"] = sum(bench.log_levels[k] for k in ("ERROR", "CRITICAL", "ERR", "FTL"))
    for line, count in bench.log_lines.most_common(10):
        log(f"log x{count}: {line}")
    figures["total_s"] = round(time.monotonic() - began, 1)
    return figures


async def main_task(args: argparse.Namespace) -> dict[str, Any]:
    """:func:`benchmark` in a temp dir (kept with ``--keep``)."""
    if args.keep:
        path = Path(tempfile.mkdtemp(prefix="bench-dashboard-"))
        log(f"state and logs kept in {path}")
        return await benchmark(args, path)
    with tempfile.TemporaryDirectory(prefix="bench-dashboard-") as tmp:
        return await benchmark(args, Path(tmp))


def parse_args() -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--edges", type=int, default=500, help="simulated edges (500)")
    parser.add_argument("--drones", type=int, default=2, help="drones in each edge's batch (2)")
    parser.add_argument("--paint-runs", type=int, default=5, help="step 1: page loads (5)")
    parser.add_argument("--trials", type=int, default=10, help="step 2: live updates (10)")
    parser.add_argument(
        "--dashboards", type=int, default=10, help="step 3: pages open at once (10)"
    )
    parser.add_argument(
        "--cpu-seconds", type=float, default=20.0, help="step 3: seconds measured, each (20)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dir and its logs")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="py-spy the hub in step 3 into DIR/dashboards.txt",
    )
    args = parser.parse_args()
    if args.edges < 1 or args.drones < 0 or min(args.paint_runs, args.trials, args.dashboards) < 1:
        parser.error("--edges, --paint-runs, --trials and --dashboards >= 1; --drones >= 0")
    if args.cpu_seconds <= 0:
        parser.error("--cpu-seconds > 0")
    return args


def main() -> int:
    """Run the benchmark and print its JSON line last."""
    return run_main(main_task(parse_args()), log, "every process it started is stopped")


if __name__ == "__main__":
    sys.exit(main())
