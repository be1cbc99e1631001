// The dashboard's shell: one live stream of the fleet, and a view per #/ fragment.
import { report } from "./api.js";
import { fleetView } from "./fleet.js";

// The other views load when first opened: the fleet, the first page most people see,
// does not wait for the chart and graph libraries.
const routes = [
  [/^#\/edges\/(.+)$/, async (m) => (await import("./edge.js")).edgeView(decodeURIComponent(m[1]))],
  [/^#\/enrolment$/, async () => (await import("./enrolment.js")).enrolmentView()],
  [/^#\/graph(?:\/(.+))?$/, async (m) => (await import("./graph.js")).graphView(m[1] ? decodeURIComponent(m[1]) : "")],
  [/^#\/hub$/, async () => (await import("./hub.js")).hubView()],
  [/^(#\/?)?$/, async () => fleetView()],
];

/** The newest fleet snapshot, and the view listening to it. */
export const live = { snapshot: null, listener: null };
let current = null;

async function route() {
  const hash = window.location.hash;
  for (const [pattern, make] of routes) {
    const match = hash.match(pattern);
    if (!match) continue;
    if (current && current.close) current.close();
    report("");
    live.listener = null;
    const made = await make(match);
    if (window.location.hash !== hash) {  // another view was asked for meanwhile
      if (made.close) made.close();
      return;
    }
    current = made;
    const main = document.getElementById("main");
    main.replaceChildren(current.element);
    document.title = `${current.title} · SemStreams hub`;
    for (const link of document.querySelectorAll("nav a")) {
      link.toggleAttribute("aria-current", link.dataset.view === current.view);
    }
    if (current.onFleet) {
      live.listener = current.onFleet;
      if (live.snapshot) current.onFleet(live.snapshot);
    }
    return;
  }
  window.location.hash = "#/";
}

function connect() {
  const status = document.getElementById("live");
  const source = new EventSource("/dashboard/events");
  source.addEventListener("fleet", (event) => {
    live.snapshot = JSON.parse(event.data);
    const time = new Date(live.snapshot.at * 1000).toLocaleTimeString("en-GB");
    status.textContent = `live · ${time}`;
    status.classList.remove("stale");
    if (live.listener) live.listener(live.snapshot);
  });
  source.addEventListener("error", () => {
    status.textContent = "reconnecting…";
    status.classList.add("stale");
  });
}

function signOutButton() {
  // Only a browser signed in with a session cookie has the CSRF cookie beside it.
  if (!/(?:^|; )semstreams_csrf=[^;]+/.test(document.cookie)) return;
  const form = document.createElement("form");
  form.method = "post";
  form.action = "/logout";
  const button = document.createElement("button");
  button.type = "submit";
  button.textContent = "Sign out";
  form.append(button);
  document.querySelector("header").append(form);
}

window.addEventListener("hashchange", route);
signOutButton();
connect();
route();
