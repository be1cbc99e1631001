// One edge: its status and why, charts of the last hour, conflicts, registry actions.
import { api, attempt } from "./api.js";
import { chart } from "./chart.js";
import { ago, bytes, h, num, show } from "./dom.js";

export function edgeView(edgeId) {
  const heading = h("h2", { id: "edge-title" }, edgeId);
  const facts = h("dl", { class: "facts" });
  const actions = h("div", { class: "actions" });
  const charts = h("div", { class: "charts" });
  const conflicts = h("div");
  let timer = null;

  function fact(name, value) {
    return [h("dt", {}, name), h("dd", {}, value)];
  }

  async function action(verb) {
    if (verb !== "approve" && !window.confirm(`${verb} ${edgeId}?`)) return;
    await attempt(`${verb} ${edgeId}`, () => api(`/devices/${encodeURIComponent(edgeId)}/${verb}`, { method: "POST", body: {} }));
    load();
  }

  async function load() {
    const detail = await attempt(`loading ${edgeId}`, () => api(`/dashboard/edges/${encodeURIComponent(edgeId)}`));
    if (!detail) return;
    const { edge, history, state, config } = detail;
    show(facts,
      fact("Status", h("span", { class: `badge ${edge.status}`, id: "edge-status" }, edge.status)),
      fact("Why", edge.reasons.length ? edge.reasons.join("; ") : "–"),
      fact("Last seen", ago(edge.last_seen_ms)),
      fact("Linked to this instance", edge.linked_here ? "yes" : "no"),
      fact("Lag", num(edge.lag_s, " s", 1)),
      fact("Group", edge.group || "–"),
      fact("Host", edge.hostname || "–"),
      fact("Agent version", edge.agent_version || "–"),
      fact("Batches applied", num(state.batches_applied)),
      fact("Events applied", num(edge.deltas)),
      fact("Entity types", Object.entries(state.types || {}).map(([t, n]) => `${t} ${n}`).join(", ") || "–"),
      fact("CPU / memory / disk", `${num(edge.cpu_percent, " %")} / ${num(edge.memory_percent, " %")} / ${num(edge.disk_percent, " %")}`),
      fact("Temperature", num(edge.temperature_c, " °C", 1)),
      fact("Outbox backlog", `${num(edge.backlog_entities)} entities, ${bytes(edge.backlog_bytes)}`),
      fact("Dead letters (since the agent started)", num(edge.dead_letters)),
      fact("Credential", config.enrolled
        ? `enrolled key ${config.key_fingerprint}, valid ${num(config.credential_ttl_s / 86400)} d, renewed by the device`
        : config.credential),
      config.enrolled ? fact("Hardware", Object.entries(config.hardware || {}).map(([k, v]) => `${k}: ${v}`).join(", ") || "–") : null,
      config.enrolled ? fact("Sync settings given", `filters ${JSON.stringify(config.sync_filters)}, rate cap ${config.max_bytes_per_second ? bytes(config.max_bytes_per_second) + "/s" : "none"}`) : null);
    show(actions,
      h("button", { type: "button", onclick: () => action("approve"), disabled: edge.status !== "pending" && edge.status !== "revoked" }, "Approve"),
      h("button", { type: "button", class: "danger", onclick: () => action("revoke"), disabled: edge.status === "revoked" }, "Revoke"),
      h("button", { type: "button", id: "rotate", onclick: () => action("rotate"), disabled: edge.status === "pending" || edge.status === "revoked" }, "Rotate credential"));
    const t = history.t;
    const made = [
      chart("Throughput (events/s)", t, { "events/s": history.events_per_s }, ""),
      chart("Lag (s)", t, { lag: history.lag_s }, " s"),
      chart("Outbox backlog (entities)", t, { backlog: history.backlog }, ""),
      chart("Bandwidth (bytes/s)", t, { wire: history.wire_bps, raw: history.raw_bps }, " B/s"),
    ];
    show(charts, made.map((c) => c.element));
    made.forEach((c) => requestAnimationFrame(c.fit));
    show(conflicts, detail.conflicts.length
      ? h("table", { "aria-label": "Conflicts caused by this edge" },
        h("thead", {}, h("tr", {}, ["When", "Entity", "Kind", "Detail"].map((c) => h("th", { scope: "col" }, c)))),
        h("tbody", {}, detail.conflicts.map((c) => h("tr", {},
          h("td", {}, c.recorded_at), h("td", {}, h("a", { href: `#/graph/${encodeURIComponent(c.entity_id)}` }, c.entity_id)),
          h("td", {}, c.kind), h("td", {}, c.detail)))))
      : h("p", {}, "No conflicts."));
  }

  load();
  timer = setInterval(load, 10000);
  const element = h("section", { "aria-labelledby": "edge-title" },
    h("p", {}, h("a", { href: "#/" }, "← Fleet")), heading, facts, actions,
    h("h3", {}, "Last hour"), charts, h("h3", {}, "Recent conflicts"), conflicts);
  return { element, title: edgeId, view: "fleet", close: () => clearInterval(timer) };
}
