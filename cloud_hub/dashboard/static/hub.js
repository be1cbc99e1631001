// The hub itself: its /health, NATS, the SYNC_BATCHES stream and the materialiser.
import { api, attempt } from "./api.js";
import { h, num, show } from "./dom.js";

export function hubView() {
  const out = h("div");

  async function load() {
    const [health, state] = await Promise.all([
      attempt("health", () => fetch("/health", { credentials: "same-origin" }).then((r) => r.json())),
      attempt("hub state", () => api("/dashboard/hub")),
    ]);
    if (!health || !state) return;
    const stream = state.stream || {};
    show(out,
      h("p", {}, "Overall: ", h("span", { class: `badge ${health.status === "healthy" ? "online" : "degraded"}`, id: "hub-status" }, health.status)),
      h("table", { "aria-label": "Components" },
        h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Component"), h("th", { scope: "col" }, "Status"), h("th", { scope: "col" }, "Detail"))),
        h("tbody", {}, Object.entries(health.components || {}).map(([name, c]) => h("tr", {},
          h("th", { scope: "row" }, name), h("td", {}, c.status), h("td", {}, JSON.stringify(Object.fromEntries(Object.entries(c).filter(([k]) => k !== "status")))))))),
      h("h3", {}, "NATS"),
      h("p", {}, `${state.nats.embedded ? "embedded server" : "cluster"} · connected to ${state.nats.connected_url} · servers ${state.nats.servers.join(", ")}`),
      h("h3", {}, "Log (SYNC_BATCHES)"),
      stream.error ? h("p", {}, stream.error) : h("p", {},
        `${num(stream.messages)} batches, ${num(stream.replicas)} replicas, leader ${stream.leader || "–"}`,
        (stream.peers || []).map((p) => ` · ${p.name}: ${p.current ? "current" : "behind"} (lag ${p.lag})`)),
      h("h3", {}, "Materialiser"),
      h("p", {}, `${state.materialiser.status} · position ${num(state.materialiser.position)} · ${num(state.materialiser.pending_batches)} batches behind · ${num(state.materialiser.applied_batches)} applied`));
  }

  load();
  const timer = setInterval(load, 5000);
  const element = h("section", { "aria-labelledby": "hub-title" }, h("h2", { id: "hub-title" }, "Hub health"), out);
  return { element, title: "Hub health", view: "hub", close: () => clearInterval(timer) };
}
