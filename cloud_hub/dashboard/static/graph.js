// The merged graph: look up an entity (with each edge's part), and explore PathRAG paths.
import cytoscape from "./vendor/cytoscape/cytoscape.esm.min.mjs";
import { api, attempt } from "./api.js";
import { h, show } from "./dom.js";

function propertyTable(label, properties) {
  const entries = Object.entries(properties || {});
  if (!entries.length) return h("p", {}, "No properties.");
  return h("table", { "aria-label": label },
    h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Property"), h("th", { scope: "col" }, "Value"))),
    h("tbody", {}, entries.map(([k, v]) => h("tr", {}, h("th", { scope: "row" }, k), h("td", {}, JSON.stringify(v))))));
}

function entityLink(id) {
  return h("a", { href: `#/graph/${encodeURIComponent(id)}` }, id);
}

function drawPaths(container, start, answer) {
  const nodes = new Map([[start, { data: { id: start, label: start } }]]);
  const edges = new Map();
  for (const path of answer.paths) {
    path.forEach((id, i) => {
      if (!nodes.has(id)) nodes.set(id, { data: { id, label: `${id} (${(answer.scores[id] ?? 0).toFixed(2)})` } });
      if (i > 0) edges.set(`${path[i - 1]}→${id}`, { data: { id: `${path[i - 1]}→${id}`, source: path[i - 1], target: id } });
    });
  }
  return cytoscape({
    container,
    elements: [...nodes.values(), ...edges.values()],
    layout: { name: "breadthfirst", roots: [start], directed: true, spacingFactor: 1.1 },
    style: [
      { selector: "node", style: { label: "data(label)", "font-size": 11, "background-color": "#0b5cad", color: "#111" } },
      { selector: `node[id = "${start.replace(/"/g, "")}"]`, style: { "background-color": "#b3361b" } },
      { selector: "edge", style: { width: 2, "line-color": "#6b7785", "target-arrow-shape": "triangle", "target-arrow-color": "#6b7785", "curve-style": "bezier" } },
    ],
  });
}

export function graphView(entityId) {
  const idField = h("input", { id: "entity-id", name: "entity", required: true, value: entityId, placeholder: "e.g. fleet-west" });
  const depth = h("input", { id: "path-depth", type: "number", min: "1", max: "5", value: "2" });
  const entityOut = h("div");
  const pathList = h("ol", { "aria-label": "Paths" });
  const canvas = h("div", { class: "paths", id: "path-graph", role: "img", "aria-label": "Paths from the entity" });
  let drawn = null;

  async function lookup(id) {
    const entity = await attempt(`entity ${id}`, () => api(`/graph/entities/${encodeURIComponent(id)}?provenance=1`));
    if (!entity) { show(entityOut); return; }
    const parts = Object.entries(entity.provenance || {});
    show(entityOut,
      h("h3", { id: "entity-title" }, `${entity.entity_type} ${entity.entity_id}`),
      h("p", {}, `version ${entity.version} · updated ${entity.updated_at} · newest from ${entity.origin}`),
      propertyTable("Merged properties", entity.properties),
      h("h4", {}, "Relationships"),
      entity.relationships && entity.relationships.length
        ? h("ul", {}, entity.relationships.map((r) => h("li", {}, `${r.predicate} → `, entityLink(r.object), ` (weight ${r.weight})`)))
        : h("p", {}, "None."),
      h("h4", {}, `Contributions (${parts.length} edges)`),
      parts.map(([edge, part]) => h("details", {}, h("summary", {}, `${edge} · version ${part.version} · ${part.updated_at}`),
        propertyTable(`Properties from ${edge}`, part.properties))));
  }

  async function paths() {
    const start = idField.value.trim();
    const answer = await attempt(`paths from ${start}`, () =>
      api("/graph/query/path", { method: "POST", body: { start_entity: start, max_depth: Number(depth.value) } }));
    if (drawn) { drawn.destroy(); drawn = null; }
    if (!answer) { show(pathList); return; }
    show(pathList, answer.paths.map((p) => h("li", {}, p.join(" → "))));
    drawn = drawPaths(canvas, start, answer);
  }

  const element = h("section", { "aria-labelledby": "graph-title" },
    h("h2", { id: "graph-title" }, "Graph"),
    h("form", { onsubmit: (e) => { e.preventDefault(); window.location.hash = `#/graph/${encodeURIComponent(idField.value.trim())}`; } },
      h("label", { for: "entity-id" }, "Entity id"), idField, h("button", { type: "submit" }, "Look up"),
      h("label", { for: "path-depth" }, "Depth"), depth,
      h("button", { type: "button", id: "explore-paths", onclick: paths }, "Explore paths")),
    entityOut, h("h3", {}, "PathRAG paths"), pathList, canvas);
  if (entityId) lookup(entityId);
  return { element, title: entityId || "Graph", view: "graph", close: () => drawn && drawn.destroy() };
}
