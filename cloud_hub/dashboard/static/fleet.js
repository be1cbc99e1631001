// The fleet: one row per edge, live; sortable, filterable, with bulk approve/revoke.
import { api, attempt } from "./api.js";
import { ago, bytes, h, num, show } from "./dom.js";

const STATUSES = ["offline", "degraded", "pending", "revoked", "online"];
const COLUMNS = [
  ["edge_id", "Edge"],
  ["status", "Status"],
  ["group", "Group"],
  ["last_seen_ms", "Last seen"],
  ["lag_s", "Lag"],
  ["backlog_entities", "Backlog"],
  ["wire_bps", "Wire/s"],
  ["raw_bps", "Raw/s"],
  ["events_per_s", "Events/s"],
  ["cpu_percent", "CPU"],
  ["memory_percent", "Mem"],
  ["disk_percent", "Disk"],
  ["temperature_c", "Temp"],
];

function cell(row, key, rising) {
  switch (key) {
    case "edge_id":
      return h("a", { href: `#/edges/${encodeURIComponent(row.edge_id)}` }, row.edge_id);
    case "status":
      return [h("span", { class: `badge ${row.status}` }, row.status),
        row.reasons.length ? h("span", { class: "why" }, ` ${row.reasons.join("; ")}`) : null];
    case "last_seen_ms":
      return ago(row.last_seen_ms);
    case "lag_s":
      return h("span", { class: rising ? "rising" : "" }, num(row.lag_s, " s", 1),
        rising ? h("span", { "aria-label": "rising" }, " ↑") : null);
    case "wire_bps":
    case "raw_bps":
      return bytes(row[key]);
    case "events_per_s":
      return num(row[key], "", 1);
    case "cpu_percent":
    case "memory_percent":
    case "disk_percent":
      return num(row[key], " %");
    case "temperature_c":
      return num(row[key], " °C", 1);
    case "backlog_entities":
      return num(row[key]);
    default:
      return row[key] || "–";
  }
}

function compare(key, a, b) {
  if (key === "status") return STATUSES.indexOf(a.status) - STATUSES.indexOf(b.status);
  const x = a[key], y = b[key];
  if (x === y) return 0;
  if (x === null || x === undefined || x === "") return 1;
  if (y === null || y === undefined || y === "") return -1;
  return x < y ? -1 : 1;
}

export function fleetView() {
  const state = { sort: "status", descending: false, status: "", group: "", text: "" };
  const selected = new Set();
  let previousLag = new Map();
  let rows = [];

  const summary = h("p", { class: "summary", "aria-live": "polite" });
  const statusFilter = h("select", { id: "filter-status", onchange: (e) => { state.status = e.target.value; render(); } },
    h("option", { value: "" }, "any status"), STATUSES.map((s) => h("option", { value: s }, s)));
  const groupFilter = h("select", { id: "filter-group", onchange: (e) => { state.group = e.target.value; render(); } });
  const textFilter = h("input", { id: "filter-text", type: "search", placeholder: "edge id, host, reason",
    oninput: (e) => { state.text = e.target.value.toLowerCase(); render(); } });
  const bulk = h("div", { class: "bulk" },
    h("button", { type: "button", id: "bulk-approve", onclick: () => act("approve") }, "Approve selected"),
    h("button", { type: "button", id: "bulk-revoke", class: "danger", onclick: () => act("revoke") }, "Revoke selected"),
    h("span", { id: "selected-count" }, "0 selected"));
  const head = h("thead");
  const body = h("tbody");
  const table = h("table", { class: "fleet", "aria-label": "Edges" }, head, body);

  async function act(action) {
    const ids = [...selected];
    if (!ids.length) return;
    if (action === "revoke" && !window.confirm(`Revoke ${ids.length} device(s)? Their links are cut.`)) return;
    for (const id of ids) {
      await attempt(`${action} ${id}`, () => api(`/devices/${encodeURIComponent(id)}/${action}`, { method: "POST", body: {} }));
    }
    selected.clear();
    render();
  }

  function header() {
    show(head, h("tr", {},
      h("th", { scope: "col" }, h("span", { class: "visually-hidden" }, "Select")),
      COLUMNS.map(([key, label]) => {
        const sorted = state.sort === key;
        return h("th", { scope: "col", "aria-sort": sorted ? (state.descending ? "descending" : "ascending") : "none" },
          h("button", { type: "button", class: "sort", onclick: () => {
            state.descending = sorted ? !state.descending : false;
            state.sort = key;
            render();
          } }, label, sorted ? (state.descending ? " ▾" : " ▴") : ""));
      })));
  }

  function render() {
    header();
    const groups = [...new Set(rows.map((r) => r.group).filter(Boolean))].sort();
    if (groupFilter.options.length !== groups.length + 1) {
      show(groupFilter, h("option", { value: "" }, "any group"), groups.map((g) => h("option", { value: g }, g)));
      groupFilter.value = state.group;
    }
    const shown = rows.filter((r) =>
      (!state.status || r.status === state.status) &&
      (!state.group || r.group === state.group) &&
      (!state.text || [r.edge_id, r.hostname, r.group, ...r.reasons].join(" ").toLowerCase().includes(state.text)));
    shown.sort((a, b) => compare(state.sort, a, b) * (state.descending ? -1 : 1) || compare("edge_id", a, b));
    show(body, shown.length ? shown.map((row) => {
      const rising = previousLag.has(row.edge_id) && row.lag_s > previousLag.get(row.edge_id) + 1;
      const box = h("input", { type: "checkbox", "aria-label": `select ${row.edge_id}`,
        checked: selected.has(row.edge_id), onchange: (e) => {
          if (e.target.checked) selected.add(row.edge_id); else selected.delete(row.edge_id);
          bulk.querySelector("#selected-count").textContent = `${selected.size} selected`;
        } });
      return h("tr", { class: `row-${row.status}${rising ? " row-rising" : ""}`, dataset: { edge: row.edge_id, status: row.status } },
        h("td", {}, box), COLUMNS.map(([key]) => h("td", { dataset: { column: key } }, cell(row, key, rising))));
    }) : h("tr", {}, h("td", { colspan: COLUMNS.length + 1 }, rows.length ? "No edge matches the filters." : "No edge has been heard from yet.")));
    bulk.querySelector("#selected-count").textContent = `${selected.size} selected`;
  }

  function onFleet(snapshot) {
    previousLag = new Map(rows.map((r) => [r.edge_id, r.lag_s ?? 0]));
    rows = snapshot.edges;
    const counts = Object.entries(snapshot.summary).filter(([, n]) => n).map(([s, n]) => `${n} ${s}`);
    summary.textContent = `${rows.length} edges${counts.length ? `: ${counts.join(", ")}` : ""}`;
    render();
  }

  const element = h("section", { "aria-labelledby": "fleet-title" },
    h("h2", { id: "fleet-title" }, "Fleet"), summary,
    h("div", { class: "filters" },
      h("label", { for: "filter-status" }, "Status"), statusFilter,
      h("label", { for: "filter-group" }, "Group"), groupFilter,
      h("label", { for: "filter-text" }, "Search"), textFilter),
    bulk, h("div", { class: "scroll" }, table));
  render();
  // The stream sends only changes; "last seen" ages between them.
  const timer = setInterval(render, 10000);
  return { element, title: "Fleet", view: "fleet", onFleet, close: () => clearInterval(timer) };
}
