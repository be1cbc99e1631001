// Small DOM helpers. Everything shown comes from peers (edges name their own entities),
// so text always goes in as text nodes, never as HTML.

/** Make an element: h("td", {class: "x", onclick: fn}, "text", child, ...). */
export function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else if (name === "dataset") Object.assign(element.dataset, value);
    else element.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return element;
}

/** Replace what `parent` shows. */
export function show(parent, ...children) {
  parent.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined));
}

/** "3 s ago", "5 min ago" from epoch milliseconds. */
export function ago(ms, now = Date.now()) {
  if (!ms) return "never";
  const s = Math.max(0, (now - ms) / 1000);
  if (s < 90) return `${Math.round(s)} s ago`;
  if (s < 5400) return `${Math.round(s / 60)} min ago`;
  if (s < 129600) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

/** Bytes (or bytes/s) in kB/MB with one decimal. */
export function bytes(n) {
  if (n === null || n === undefined) return "–";
  if (n < 1000) return `${Math.round(n)} B`;
  if (n < 1e6) return `${(n / 1e3).toFixed(1)} kB`;
  if (n < 1e9) return `${(n / 1e6).toFixed(1)} MB`;
  return `${(n / 1e9).toFixed(1)} GB`;
}

/** A number with a unit, or an en dash when unknown. */
export function num(n, unit = "", digits = 0) {
  if (n === null || n === undefined || Number.isNaN(n)) return "–";
  return `${Number(n).toLocaleString("en", { maximumFractionDigits: digits })}${unit}`;
}
