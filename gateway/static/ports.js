/* The Ports panel and the gateway's event stream.
 *
 * Ports: GET /api/ports (what is plugged in now), then kept current by /ws/_events
 * ({"type": "port", "event": "added" | "removed", "port": {...}}). "Open" asks for a
 * name and a baud rate and adds the device: POST /api/devices (SPEC section 8). */

import { $, el, api, wsUrl, toast } from "./util.js";

const RETRY_MIN = 500;     // ms; the event stream's reconnect backoff doubles up to RETRY_MAX
const RETRY_MAX = 10000;

/* vid/pid as the 4 hex digits everyone writes (1a86:7523); null when not USB. */
function usbId(port) {
  const hex = (v) => (typeof v === "number" ? v.toString(16).padStart(4, "0") : String(v).toLowerCase());
  return port.vid === null || port.vid === undefined ? null : hex(port.vid) + ":" + hex(port.pid);
}

const basename = (path) => String(path).split("/").pop();

/* The device URL for a port: its by-id link when it has one (a re-plug under another
 * /dev name finds it again), else its path. */
export function portUrl(port) {
  return "serial://" + (port.by_id || port.path);
}

/* A name to offer for a port's device: ttyUSB0, acm0, pts5 ... (letters, digits, - and _). */
function suggestName(port, taken) {
  let name = basename(port.path).replace(/[^A-Za-z0-9_-]+/g, "-") || "serial";
  if (/^\d/.test(name)) name = basename(port.path.replace(/\/[^/]*$/, "")) + name;
  let candidate = name;
  for (let i = 2; taken(candidate); i++) candidate = name + "-" + i;
  return candidate;
}

export class PortsPanel {
  /* onOpened(name): a device was added from a port. isTaken(name): a device has it. */
  constructor({ onOpened, isTaken }) {
    this.ports = new Map();   // path -> port, in the order the gateway listed them
    this.loaded = false;
    this.canAdd = true;       // false unless the role may use the device API
    this.onOpened = onOpened;
    this.isTaken = isTaken;
    this.opening = null;      // the port the dialog is for
    this.list = $("port-list");
    this.dialog = $("open-dialog");
    $("open-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      this.submit();
    });
    $("open-cancel").addEventListener("click", () => this.dialog.close());
  }

  /* -> whether the gateway listed its ports (a gateway without /api/ports has no event
   * stream either; a refused token would be refused there too). */
  async load() {
    const r = await api("GET", "/api/ports");
    if (r.ok && !Array.isArray(r.data)) Object.assign(r, { ok: false, error: "the answer was cut short" });  // the gateway stopped meanwhile
    if (!r.ok) {
      if (!this.loaded) this.message(r.status === 404 ? "This gateway does not list ports." : "Ports: " + r.error);
      return false;
    }
    this.ports = new Map(r.data.map((p) => [p.path, p]));
    this.loaded = true;
    this.render();
    return true;
  }

  /* A {"type": "port"} event. */
  onEvent(msg) {
    if (!msg.port || !msg.port.path) return;
    if (msg.event === "added") this.ports.set(msg.port.path, msg.port);
    else if (msg.event === "removed") this.ports.delete(msg.port.path);
    this.loaded = true;
    this.render();
  }

  setCanAdd(canAdd) {
    this.canAdd = canAdd;
    if (this.loaded) this.render();
  }

  message(text) {
    this.list.replaceChildren(el("li", "empty", text));
  }

  render() {
    if (!this.ports.size) {
      this.message("No serial ports found.");
      return;
    }
    this.list.replaceChildren();
    for (const p of this.ports.values()) {
      const li = el("li", "port");
      li.dataset.path = p.path;
      if (p.by_id) li.dataset.byId = p.by_id;
      const name = el("div", "port-name", basename(p.by_id || p.path));
      name.title = p.by_id ? p.by_id + " → " + p.path : p.path;
      const meta = el("div", "port-meta");
      const id = usbId(p);
      if (id) meta.append(el("span", "usb-id", id));
      const desc = p.description && p.description !== "n/a" ? p.description : p.manufacturer || "";
      if (desc) meta.append(el("span", "desc", desc));
      if (p.by_id) meta.append(el("span", "dev-path", p.path));
      li.append(name, meta);
      if (p.device) {
        const use = el("div", "port-use", "in use by ");
        use.append(el("b", null, p.device));
        li.append(use);
      } else {
        const b = el("button", "small", "Open");
        b.type = "button";
        b.setAttribute("aria-label", "Open " + basename(p.by_id || p.path));
        b.disabled = !this.canAdd;
        b.title = this.canAdd ? "Add a device on this port" : "this token may not add devices";
        b.addEventListener("click", () => this.ask(p));
        li.append(b);
      }
      this.list.append(li);
    }
  }

  ask(port) {
    this.opening = port;
    $("open-port").textContent = (port.by_id || port.path) + (usbId(port) ? " (" + usbId(port) + ")" : "");
    $("open-name").value = suggestName(port, this.isTaken);
    $("open-error").hidden = true;
    $("open-submit").disabled = false;
    this.dialog.showModal();
    $("open-name").select();
  }

  async submit() {
    const name = $("open-name").value.trim();
    const baud = $("open-baud").value;
    if (!name || !this.opening) return;
    $("open-submit").disabled = true;
    const r = await api("POST", "/api/devices", { name, url: portUrl(this.opening), baudrate: Number(baud) });
    $("open-submit").disabled = false;
    if (!r.ok) {
      $("open-error").textContent = r.status === 409 ? "A device named " + name + " exists already: choose another name." : r.error;
      $("open-error").hidden = false;
      return;
    }
    this.dialog.close();
    toast("Opened " + name + " at " + baud + " baud");
    this.onOpened(name);
    this.load();  // the port is in use now
  }
}

/* /ws/_events: every port and device event of the gateway on one json WebSocket,
 * reconnected with backoff. onOpen runs at each (re)connection: what happened meanwhile
 * is not replayed, so the caller reloads what it shows. */
export class EventsStream {
  constructor({ onMessage, onOpen }) {
    this.onMessage = onMessage;
    this.onOpen = onOpen;
    this.ws = null;
    this.attempt = 0;
    this.timer = null;
    this.started = false;    // connect() was called: the gateway has the stream
  }

  connect() {
    this.started = true;
    clearTimeout(this.timer);
    const ws = new WebSocket(wsUrl("/ws/_events"));
    this.ws = ws;
    ws.onopen = () => {
      this.attempt = 0;
      this.onOpen();
    };
    ws.onmessage = (ev) => {
      let msg;
      try { msg = JSON.parse(ev.data); } catch (e) { return; }
      this.onMessage(msg);
    };
    ws.onclose = () => {
      if (this.ws !== ws) return;
      this.ws = null;
      const delay = Math.min(RETRY_MAX, RETRY_MIN * 2 ** this.attempt);
      this.attempt += 1;
      this.timer = setTimeout(() => this.connect(), delay);
    };
  }

  /* The gateway answered again elsewhere: do not wait out the backoff. */
  retryNow() {
    if (this.started && !this.ws) this.connect();
  }
}
