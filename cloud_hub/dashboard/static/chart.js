// Time-series charts (uPlot) of one edge's last hour; a null value is a gap.
import uPlot from "./vendor/uplot/uPlot.esm.js";
import { h } from "./dom.js";

/** A chart of `series` (name -> [values]) over `times` (epoch seconds). */
export function chart(title, times, series, unit) {
  const figure = h("figure", { class: "chart" }, h("figcaption", {}, title));
  const colours = ["#0b5cad", "#b3361b", "#3c7a1e"];
  const names = Object.keys(series);
  const options = {
    width: 320,
    height: 160,
    series: [{}, ...names.map((name, i) => ({
      label: name, stroke: colours[i % colours.length], width: 2, spanGaps: false,
      value: (u, v) => (v === null || v === undefined ? "–" : `${v.toLocaleString("en", { maximumFractionDigits: 1 })}${unit}`),
    }))],
    axes: [{}, { size: 60 }],
    legend: { show: true },
  };
  const data = [times, ...names.map((name) => series[name])];
  const plot = new uPlot(options, data, figure);
  const fit = () => plot.setSize({ width: Math.max(240, figure.clientWidth - 8), height: 160 });
  requestAnimationFrame(fit);
  figure.setAttribute("role", "img");
  figure.setAttribute("aria-label", `${title}: ${times.length} samples over the last hour`);
  return { element: figure, plot, fit };
}
