/* Helpers shared by the page's modules: DOM shortcuts, the page token, the gateway's URLs
 * and its JSON API. */

export const $ = (id) => document.getElementById(id);

export const token = new URLSearchParams(location.search).get("token");

/* `path` with the page URL's ?token= passed on. */
export function withToken(path) {
  if (!token) return path;
  return path + (path.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token);
}

/* ws:// or wss:// URL of a gateway path, with the token. */
export function wsUrl(path) {
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  return withToken(proto + "//" + location.host + path);
}

export function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

export function toast(text) {
  const t = $("toast");
  t.textContent = text;
  t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.hidden = true; }, 2500);
}

/* A call to the gateway's JSON API: {ok, status, data, error}. `error` is one line: the
 * gateway's own (its 4xx bodies are one line of text, or JSON with an "error"), or what
 * went wrong on the way. Never throws. */
export async function api(method, path, body) {
  const init = { method, cache: "no-store", headers: {} };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  let res;
  try {
    res = await fetch(withToken(path), init);
  } catch (e) {
    return { ok: false, status: 0, data: null, error: "cannot reach the gateway (" + e.message + ")" };
  }
  const text = await res.text().catch(() => "");
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }
  if (res.ok) return { ok: true, status: res.status, data, error: "" };
  let error = data && typeof data === "object" && data.error ? String(data.error) : text.trim().split("\n")[0];
  if (res.status === 401) error = "this needs a token: open the page as /?token=…";
  else if (res.status === 403 && !error) error = "this token may not do that";
  return { ok: false, status: res.status, data, error: error || "HTTP " + res.status };
}

/* A count of things, in words: plural("line", 2) -> "2 lines". */
export function plural(word, n) {
  return n + " " + word + (n === 1 ? "" : "s");
}
