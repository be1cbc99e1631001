// Devices waiting for approval, and claim tokens for zero-touch enrolment.
import { api, attempt } from "./api.js";
import { h, show } from "./dom.js";

export function enrolmentView() {
  const list = h("div");
  const tokenOut = h("div", { "aria-live": "polite" });
  const group = h("input", { id: "token-group", name: "group", value: "default", required: true });
  const ttl = h("input", { id: "token-ttl", name: "ttl", type: "number", min: "60", value: "86400", required: true });

  async function decide(id, verb) {
    await attempt(`${verb} ${id}`, () => api(`/devices/${encodeURIComponent(id)}/${verb}`, { method: "POST", body: {} }));
    load();
  }

  async function load() {
    const devices = await attempt("loading devices", () => api("/devices"));
    if (!devices) {
      show(list, h("p", {}, "Enrolment is off on this hub (provisioning.enabled)."));
      return;
    }
    const pending = devices.filter((d) => d.status === "pending");
    show(list, pending.length
      ? h("table", { "aria-label": "Pending devices" },
        h("thead", {}, h("tr", {}, ["Device", "Host", "Hardware", "Key fingerprint", "Asked", ""].map((c) => h("th", { scope: "col" }, c)))),
        h("tbody", {}, pending.map((d) => h("tr", { dataset: { device: d.id } },
          h("td", {}, d.id), h("td", {}, d.hostname || "–"),
          h("td", {}, Object.entries(d.hardware || {}).map(([k, v]) => `${k}: ${v}`).join(", ") || "–"),
          h("td", {}, h("code", {}, d.fingerprint)),
          h("td", {}, new Date(d.enrolled_at * 1000).toLocaleString("en-GB")),
          h("td", {},
            h("button", { type: "button", onclick: () => decide(d.id, "approve") }, `Approve ${d.id}`),
            h("button", { type: "button", class: "danger", onclick: () => decide(d.id, "reject") }, `Reject ${d.id}`))))))
      : h("p", {}, "No device is waiting."));
  }

  async function createToken(event) {
    event.preventDefault();
    const made = await attempt("creating a claim token", () =>
      api("/claim-tokens", { method: "POST", body: { group: group.value, ttl: Number(ttl.value) } }));
    if (!made) return;
    const field = h("input", { id: "claim-token", readonly: true, value: made.token, size: 48 });
    show(tokenOut,
      h("p", {}, "The token is shown once: put it on the device's boot partition."),
      h("label", { for: "claim-token" }, "Claim token"), field,
      h("button", { type: "button", onclick: () => navigator.clipboard.writeText(made.token).then(
        () => { tokenOut.querySelector(".copied").textContent = "copied"; }) }, "Copy"),
      h("span", { class: "copied" }));
  }

  load();
  const timer = setInterval(load, 5000);
  const element = h("section", { "aria-labelledby": "enrol-title" },
    h("h2", { id: "enrol-title" }, "Enrolment"), h("h3", {}, "Waiting for approval"), list,
    h("h3", {}, "New claim token"),
    h("form", { onsubmit: createToken },
      h("label", { for: "token-group" }, "Group"), group,
      h("label", { for: "token-ttl" }, "Valid for (s)"), ttl,
      h("button", { type: "submit", id: "create-token" }, "Create token")), tokenOut);
  return { element, title: "Enrolment", view: "enrolment", close: () => clearInterval(timer) };
}
