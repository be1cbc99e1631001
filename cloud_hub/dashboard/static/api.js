// The hub's API as the dashboard uses it: same-origin requests, errors shown, not thrown away.

const problem = () => document.getElementById("problem");

/** Show (or clear, with "") a problem in the page's alert line. */
export function report(message) {
  const line = problem();
  line.textContent = message;
  line.hidden = !message;
}

/** fetch + JSON; throws an Error carrying the API's message on a non-2xx answer. */
export async function api(path, { method = "GET", body } = {}) {
  const options = { method, headers: { Accept: "application/json" }, credentials: "same-origin" };
  if (body !== undefined) {
    options.body = JSON.stringify(body);
    options.headers["Content-Type"] = "application/json";
  }
  const csrf = document.cookie.match(/(?:^|; )semstreams_csrf=([^;]+)/);
  if (csrf && method !== "GET") options.headers["X-CSRF-Token"] = decodeURIComponent(csrf[1]);
  const response = await fetch(path, options);
  if (response.status === 401) {
    window.location.assign("/");
    throw new Error("not signed in");
  }
  const text = await response.text();
  const data = text ? JSON.parse(text) : null;
  if (!response.ok) throw new Error((data && data.error) || `${response.status} ${response.statusText}`);
  return data;
}

/** Run an action; report its error instead of failing silently. */
export async function attempt(what, action) {
  try {
    const result = await action();
    report("");
    return result;
  } catch (error) {
    report(`${what}: ${error.message}`);
    return undefined;
  }
}
