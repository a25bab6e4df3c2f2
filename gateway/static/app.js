/* The gateway's control page: device list, one device's stream (json mode), send box,
 * configured buttons, live log and a live telemetry chart (uPlot, vendored); the device
 * list of a fleet (fleet.js, its data fleet_model.js), the Ports panel (ports.js), the
 * device settings (settings.js) and the Terminal view (terminal.js, xterm.js vendored) are
 * modules of their own.
 *
 * Plain JS modules, no build step. Everything comes from the gateway itself: /api/devices
 * for the list and the open device, /ws/NAME?format=json for the stream (SPEC sections 3
 * and 4), /api/ports and /ws/_events for ports and device changes (section 8). A `?token=`
 * in the page URL is passed on to all of them.
 */
import { $, el, token, toast, withToken, wsUrl } from "./util.js";
import { EventsStream, PortsPanel } from "./ports.js";
import { DeviceSettings } from "./settings.js";
import { TerminalView } from "./terminal.js";
import { FlashPanel } from "./flash.js";
import { FleetList } from "./fleet.js";
import { UNKNOWN, UNKNOWN_TEXT } from "./fleet_model.js";

(function () {
  const HISTORY = 200;          // device lines replayed when a device is opened
  const LOG_MAX = 2000;         // rows kept in the log
  const RETRY_MIN = 500;        // ms; reconnect backoff doubles up to RETRY_MAX
  const RETRY_MAX = 10000;
  const HELLO_TIMEOUT = 10000;  // ms for a connection attempt to be answered
  const POLL_MS = 3000;         // the open device's counters (the whole list without the event stream)
  const CHART_MAX_POINTS = 20000;
  const SEND_HISTORY_MAX = 100;
  const COLORS = ["#1f77b4", "#e8590c", "#2f9e44", "#c2255c", "#7048e8", "#0c8599", "#f08c00", "#5c940d", "#862e9c", "#495057"];
  const ARROWS = { ArrowUp: "up", ArrowDown: "down", ArrowLeft: "left", ArrowRight: "right" };

  /* A log row's time cell: HH:MM:SS, then .mmm (hidden at phone width). */
  function clock(ms) {
    const d = new Date(ms);
    const p = (n, w) => String(n).padStart(w || 2, "0");
    const cell = el("span", "t", p(d.getHours()) + ":" + p(d.getMinutes()) + ":" + p(d.getSeconds()));
    cell.append(el("span", "ms", "." + p(d.getMilliseconds(), 3)));
    return cell;
  }

  function store(key, fallback) {
    try {
      const v = localStorage.getItem("gateway." + key);
      return v === null ? fallback : JSON.parse(v);
    } catch (e) {
      return fallback;
    }
  }

  function save(key, value) {
    try { localStorage.setItem("gateway." + key, JSON.stringify(value)); } catch (e) { /* private mode */ }
  }

  /* ---------------------------------------------------------------- devices -- */

  /* The list (fleet.js) holds every device's summary. /ws/_events keeps it live: at each
   * (re)connection the page asks for the whole list ({"type": "devices"}) and applies the
   * device events that follow it, so no change is missed or applied out of order. The
   * poll reads the open device's full item (GET /api/devices/NAME: counters, buttons,
   * settings); only while the event stream is not listing does it read the whole list. */
  let current = null;          // the open device's name
  const details = new Map();   // name -> full /api/devices item, from the last whole list read
  let buttonsShown = "";       // the open device's buttons as rendered (JSON)
  let pollTimer = null;
  let listedBy = null;         // the event stream's WebSocket that sent the list in use

  /* A device's state is shown only while it is fresh: reported by the gateway (a list, an
   * event, or the open device's hello and status frames) since the page last lost the
   * gateway. While the gateway is unreachable the page claims no state: "unknown". */
  let epoch = 0;               // bumped when the gateway is lost or a whole list arrives: answers asked for before are stale

  const fleet = new FleetList({ onOpen: (name) => openDevice(name) });

  function gatewayLost() {
    epoch += 1;
    fleet.stale();
    if (current) paintPill(UNKNOWN);
    // The event stream may still be up (only the device's stream went): if so, its answer
    // makes the list fresh again; if the gateway is gone, there is no answer.
    if (eventsListing()) events.ws.send(JSON.stringify({ type: "devices" }));
  }

  /* The event stream is open and its list is the one shown. */
  function eventsListing() {
    return listedBy !== null && events.ws === listedBy && listedBy.readyState === WebSocket.OPEN;
  }

  async function refreshDevices() {
    clearTimeout(pollTimer);
    pollTimer = setTimeout(refreshDevices, POLL_MS);
    if (stream && stream.phase === "away") return; // the gateway is gone; the stream retries
    const whole = !eventsListing();
    if (!whole && !current) return;
    const name = current;
    const asked = epoch;
    let data;
    try {
      const res = await fetch(withToken(whole ? "/api/devices" : "/api/devices/" + encodeURIComponent(name)), { cache: "no-store" });
      if (res.status === 401 || res.status === 403) {
        fleet.showMessage(token ? "The token in the page URL was refused." : "This gateway needs a token: open the page as /?token=…");
        return;
      }
      if (res.status === 404 && !whole) {
        if (name === current && !fleet.has(name)) notHere(name);
        return;
      }
      if (!res.ok) throw new Error("HTTP " + res.status);
      data = await res.json();
    } catch (e) {
      if (!stream || stream.phase !== "live") gatewayLost();
      if (!fleet.size) fleet.showMessage("Cannot reach the gateway (" + e.message + ").");
      return;
    }
    if (!whole) {
      if (name === current) showDetail(data);  // counters and settings: no state from here
      return;
    }
    if (asked !== epoch) return;  // asked before the gateway was lost, or before a newer list
    details.clear();
    for (const d of data) details.set(d.name, d);
    fleet.replace(data);
    listed(data);
    if (current && details.has(current)) showDetail(details.get(current));
  }

  /* A whole list arrived (the poll's, or the event stream's). */
  function listed(list) {
    if (current && fleet.has(current)) paintPill(fleet.stateOf(current));
    if (current && !fleet.has(current) && stream && stream.phase !== "closed") notHere(current);
    if (!current && list.length) {
      const wanted = decodeURIComponent(location.hash.slice(1));
      openDevice(fleet.has(wanted) ? wanted : list[0].name);  // else the gateway's first
    }
  }

  /* The open device is not on this gateway any more (a restart without it). */
  function notHere(name) {
    if (!stream || stream.phase === "closed") return;
    stream.close();  // its reconnects would only be refused
    stream.setPhase("closed");
    terminal.disconnect();
    log.add("err", "device " + name + " is not on this gateway any more: choose another");
  }

  /* The open device's full item: counters, settings, and its buttons when they changed. */
  function showDetail(d) {
    details.set(d.name, d);
    renderDeviceHead(d);
    settings.show(d);
    if (JSON.stringify(d.buttons || []) !== buttonsShown) renderButtons(d.buttons || []);
  }

  /* A state reported by the gateway just now (an event, hello, status). */
  function setDeviceState(name, state) {
    fleet.setState(name, state);
    if (name === current) paintPill(state);
  }

  function paintPill(state) {
    const pill = $("device-state");
    pill.dataset.state = state;
    pill.textContent = state === UNKNOWN ? UNKNOWN_TEXT : state;
  }

  function renderDeviceHead(d) {
    $("device-name").textContent = d.name;
    $("device-kind").textContent = d.kind + (d.remote ? " on " + d.owner : "");
    paintPill(fleet.stateOf(d.name));
    const c = d.counters || {};
    const parts = [["in", c.lines_in], ["out", c.lines_out], ["errors", c.errors], ["clients", c.clients], ["reconnects", c.reconnects]];
    const box = $("device-counters");
    box.replaceChildren();
    for (const [label, value] of parts) {
      if (value === undefined) continue;
      const s = el("span", "counter");
      s.append(el("b", null, String(value)), document.createTextNode(" " + label));
      box.append(s);
    }
  }

  function openDevice(name) {
    if (stream) stream.close();
    current = name;
    document.title = name + " — gateway";
    history.replaceState(null, "", location.pathname + location.search + "#" + encodeURIComponent(name));
    const summary = fleet.get(name) || { name, kind: "" };
    const d = details.get(name) || { ...summary, buttons: [] };
    for (const id of ["device-head", "chart-card", "control-card", "settings-card", "log-card"]) $(id).hidden = false;
    $("empty-main").hidden = true;
    fleet.setCurrent(name);
    renderDeviceHead(d);
    renderButtons(d.buttons || []);
    settings.show(d);
    terminal.open(name);
    log.clear();
    chart.reset(name);
    sendHistory.load(name);
    stream = new Stream(name);
    stream.connect();
  }

  /* ----------------------------------------------------------------- stream -- */

  let stream = null;

  /* One device's WebSocket, reconnected with backoff. Lines are numbered by the gateway
   * (`seq`, within a `run`); a reconnect asks for `since=<last seq seen>&run=<run>`, so
   * the gateway replays what was missed, or says (a `gap` frame) what it no longer holds. */
  class Stream {
    constructor(device) {
      this.device = device;
      this.ws = null;
      this.phase = "connecting";  // connecting | live | away | closed
      this.run = null;            // the gateway's run id, from hello
      this.seq = 0;               // the newest line seen
      this.floor = 0;             // lines at or below this were shown before a reconnect
      this.attempt = 0;
      this.retryAt = 0;
      this.retryTimer = null;
      this.helloTimer = null;
      this.countdown = null;
      this.lostReason = "";
      this.nextId = 1;
      this.pending = new Map();   // id -> log row of a line sent, until ack or error
    }

    url() {
      let q = "format=json";
      if (this.run === null) q += "&history=" + HISTORY;
      else q += "&since=" + this.seq + "&run=" + encodeURIComponent(this.run);
      return wsUrl("/ws/" + encodeURIComponent(this.device) + "?" + q);
    }

    connect() {
      clearTimeout(this.retryTimer);
      clearInterval(this.countdown);
      if (this.phase === "closed") return;
      this.setPhase("connecting");
      let ws;
      try {
        ws = new WebSocket(this.url());
      } catch (e) {
        this.lost("cannot open a WebSocket: " + e.message);
        return;
      }
      this.ws = ws;
      // A handshake into a dead network can hang for minutes: give up, and retry, sooner.
      clearTimeout(this.helloTimer);
      this.helloTimer = setTimeout(() => { if (this.ws === ws && this.phase !== "live") ws.close(); }, HELLO_TIMEOUT);
      ws.onmessage = (ev) => this.onMessage(ev.data);
      ws.onclose = (ev) => {
        if (this.ws !== ws) return;
        this.ws = null;
        const why = ev.code === 1006 ? "" : "code " + ev.code + (ev.reason ? ": " + ev.reason : "");
        this.lost(why);
      };
    }

    close() {
      this.phase = "closed";
      clearTimeout(this.helloTimer);
      clearTimeout(this.retryTimer);
      clearInterval(this.countdown);
      if (this.ws) {
        const ws = this.ws;
        this.ws = null;
        ws.onclose = null;
        ws.onmessage = null;
        ws.close(1000, "closed by the page");
      }
    }

    retryNow() {
      if (this.phase === "away") this.connect();
    }

    /* The browser says the network is gone: do not wait for TCP to notice. */
    drop() {
      if (this.ws && this.phase === "live") this.ws.close();
    }

    lost(why) {
      if (this.phase === "closed") return;
      gatewayLost();  // until the gateway answers again, the page knows no device's state
      if (this.phase === "live") {
        log.add("sys", "connection to the gateway lost" + (why ? " (" + why + ")" : "") + "; reconnecting…");
      }
      for (const [id, row] of this.pending) {
        log.mark(row, "unknown", "no ack: the connection dropped");
        this.pending.delete(id);
      }
      this.lostReason = why;
      const base = Math.min(RETRY_MAX, RETRY_MIN * Math.pow(2, this.attempt));
      const delay = Math.round(base * (0.85 + Math.random() * 0.3));
      this.attempt += 1;
      this.retryAt = Date.now() + delay;
      this.setPhase("away");
      this.retryTimer = setTimeout(() => this.connect(), delay);
      this.countdown = setInterval(() => this.showPhase(), 250);
    }

    setPhase(phase) {
      this.phase = phase;
      this.showPhase();
      const live = phase === "live";
      $("device-list").classList.toggle("stale", phase === "away");
      const canSend = live && this.role !== "view";  // a view token may watch, not send
      $("send-button").disabled = !canSend;
      $("send-button").title = live && !canSend ? "this token may only watch" : "";
      for (const b of $("device-buttons").querySelectorAll("button")) b.disabled = !canSend;
      settings.setLink(live, this.role === undefined ? null : this.role);
    }

    showPhase() {
      const box = $("link-state");
      const banner = $("banner");
      let text;
      if (this.phase === "live") text = "live";
      else if (this.phase === "connecting") text = this.attempt ? "reconnecting…" : "connecting…";
      else if (this.phase === "closed") text = "closed";
      else {
        const secs = Math.max(0, Math.ceil((this.retryAt - Date.now()) / 1000));
        text = "offline — retry in " + secs + " s";
        $("banner-text").textContent = "Lost the connection to the gateway" + (this.lostReason ? " (" + this.lostReason + ")" : "") +
          ". Reconnecting in " + secs + " s (attempt " + this.attempt + "); lines the device sends meanwhile will be replayed.";
      }
      box.dataset.state = this.phase;
      $("link-text").textContent = text;
      banner.hidden = this.phase !== "away";
    }

    send(line, label) {
      return this.sendMessage({ line }, line, label);
    }

    /* A json message with an id (a line, or a signal such as {"type": "reset"}), logged as
     * `text` until its ack or error. */
    sendMessage(message, text, label) {
      if (this.phase !== "live" || !this.ws) {
        log.add("err", "not connected: not sent: " + text);
        return false;
      }
      const id = this.nextId++;
      this.ws.send(JSON.stringify({ ...message, id }));
      this.pending.set(id, log.add("tx", text, { label, signal: !("line" in message) }));
      return true;
    }

    onMessage(text) {
      let msg;
      try {
        msg = JSON.parse(text);
      } catch (e) {
        log.add("err", "not JSON from the gateway: " + String(text).slice(0, 200));
        return;
      }
      flash.onMessage(this.device, msg);  // the Flash panel (flash.js) sees the stream too
      switch (msg.type) {
        case "hello": return this.onHello(msg);
        case "line": return this.onLine(msg);
        case "gap": return this.onGap(msg);
        case "status":
          if (msg.state === "removed") return deviceRemoved(this.device);  // before its close: not a lost gateway
          setDeviceState(this.device, msg.state);
          log.add("sys", "device " + msg.state);
          return;
        case "ack": {
          const row = this.pending.get(msg.id);
          if (row) {
            this.pending.delete(msg.id);
            log.mark(row, "acked", "written to the device");
          }
          return;
        }
        case "error": {
          const row = this.pending.get(msg.id);
          if (row) {
            this.pending.delete(msg.id);
            log.mark(row, "failed", msg.error);
          }
          log.add("err", msg.error + (row ? " — " + row.dataset.text : ""));
          return;
        }
        case "reply":
          log.add("rx", msg.line);
          return;
        default:
          return;
      }
    }

    onHello(msg) {
      const first = this.run === null;
      const restarted = !first && msg.run !== this.run;
      if (first) {
        this.floor = 0;
        this.seq = msg.seq;  // the history replay that follows is at or below this
      } else if (restarted) {
        this.floor = 0;
        this.seq = 0;        // a new run numbers its lines from 1 again
      } else {
        this.floor = this.seq;
      }
      this.run = msg.run;
      this.role = msg.role || "control";
      this.attempt = 0;
      terminal.setCanSend(this.role !== "view");
      ports.setCanAdd(this.role === "admin");
      terminal.retryNow();  // the gateway is back: so is everything else's
      startEvents();
      clearTimeout(this.helloTimer);
      chart.resetClock();
      setDeviceState(this.device, msg.state);
      if (restarted) log.add("sys", "reconnected: the gateway was restarted; showing what it has received since");
      else if (!first) log.add("sys", "reconnected; replaying what was missed");
      this.setPhase("live");
      refreshDevices();  // counters now count this client; a restarted gateway may differ
    }

    onGap(msg) {
      const n = msg.to >= msg.from ? msg.to - msg.from + 1 : 0;
      let text = "gap: " + (msg.reason || "lines missing") + " — ";
      if (n > 0) text += n + " line" + (n === 1 ? "" : "s") + " (seq " + msg.from + "–" + msg.to + ") no longer held by the gateway";
      else text += "whatever the device sent while the gateway was down was not received";
      log.add("sys", text, { gap: true });
    }

    onLine(msg) {
      if (msg.seq <= this.floor) return;  // already shown before the reconnect
      if (msg.seq > this.seq) this.seq = msg.seq;
      const tsMs = msg.ts * 1000;
      const tele = msg.data !== undefined && Object.keys(msg.data).length > 0;
      log.add("rx", msg.line, { seq: msg.seq, ts: tsMs, tele, raw: msg.raw });
      if (tele) chart.add(msg.ts, msg.data);
    }
  }

  /* -------------------------------------------------------------------- log -- */

  const log = {
    box: $("log"),
    paused: false,
    held: [],        // rows made while paused
    queued: [],      // rows waiting for the next frame
    frame: 0,

    add(kind, text, opts) {
      opts = opts || {};
      const row = el("div", "row " + kind + (opts.tele ? " tele" : "") + (opts.gap ? " gap" : "") + (opts.signal ? " signal" : ""));
      row.dataset.text = text;
      const glyph = { rx: "←", tx: "→", err: "✕", sys: "•" }[kind] || "";
      row.append(
        clock(opts.ts || Date.now()),
        el("span", "n", opts.seq !== undefined ? "#" + opts.seq : ""),
        el("span", "g", glyph),
      );
      const body = el("span", "x", text);
      if (opts.raw) {
        body.title = "not valid text; raw bytes (base64): " + opts.raw;
        body.prepend(el("span", "badge", "bytes"));
      }
      if (opts.label && opts.label !== text) body.prepend(el("span", "badge", opts.label));
      row.append(body);
      if (kind === "tx") row.append(el("span", "status pending", "sent"));
      if (this.paused) {
        this.held.push(row);
        if (this.held.length > LOG_MAX) this.held.splice(0, this.held.length - LOG_MAX);
        this.showHeld();
      } else {
        this.queue(row);
      }
      return row;
    },

    mark(row, status, title) {
      row.classList.add(status);
      const s = row.querySelector(".status");
      if (!s) return;
      s.className = "status " + status;
      s.textContent = { acked: "ack", failed: "error", unknown: "no ack" }[status] || status;
      s.title = title || "";
    },

    queue(row) {
      this.queued.push(row);
      if (this.queued.length > LOG_MAX) this.queued.splice(0, this.queued.length - LOG_MAX);
      if (!this.frame) this.frame = requestAnimationFrame(() => this.flush());
    },

    flush() {
      this.frame = 0;
      if (!this.queued.length) return;
      const box = this.box;
      const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
      const frag = document.createDocumentFragment();
      frag.append(...this.queued);
      this.queued = [];
      box.append(frag);
      let excess = box.childElementCount - LOG_MAX;
      while (excess-- > 0) box.firstElementChild.remove();
      if (atBottom) box.scrollTop = box.scrollHeight;
    },

    clear() {
      this.box.replaceChildren();
      this.queued = [];
      this.held = [];
      this.showHeld();
    },

    setPaused(paused) {
      this.paused = paused;
      const b = $("log-pause");
      b.textContent = paused ? "Resume" : "Pause";
      b.setAttribute("aria-pressed", String(paused));
      if (!paused) {
        for (const row of this.held) this.queue(row);
        this.held = [];
      }
      this.showHeld();
    },

    showHeld() {
      const note = $("paused-note");
      note.hidden = !this.paused;
      const n = this.held.length;
      note.textContent = "Paused — " + n + " new line" + (n === 1 ? "" : "s") + " held; Resume to show them.";
    },

    text() {
      this.flush();
      const hideTele = this.box.classList.contains("hide-tele");
      const lines = [];
      for (const row of this.box.children) {
        if (hideTele && row.classList.contains("tele")) continue;
        const cells = [...row.children].map((c) => c.textContent).filter(Boolean);
        lines.push(cells.join(" "));
      }
      return lines.join("\n");
    },
  };

  async function copyText(text) {
    if (navigator.clipboard && window.isSecureContext) {
      try {
        await navigator.clipboard.writeText(text);
        return true;
      } catch (e) { /* fall back below */ }
    }
    // Plain http on a LAN address is not a secure context: no clipboard API there.
    const ta = el("textarea");
    ta.value = text;
    ta.setAttribute("readonly", "");
    ta.style.position = "fixed";
    ta.style.opacity = "0";
    document.body.append(ta);
    ta.select();
    let ok = false;
    try { ok = document.execCommand("copy"); } catch (e) { ok = false; }
    ta.remove();
    return ok;
  }

  /* ------------------------------------------------------------------ chart -- */

  /* Numeric telemetry (numbers, booleans as 0/1) against the gateway's timestamps. The
   * x axis ends at "now" on the gateway's clock, so the chart scrolls even when quiet. */
  const chart = {
    device: null,
    keys: [],          // series order
    xs: [],            // seconds
    ys: new Map(),     // key -> values (null where a line lacked the key)
    latest: new Map(), // key -> newest value
    hidden: new Set(),
    palette: [],       // keys in the order they got their colours
    windowSec: 60,
    clockOffset: null, // gateway clock minus ours, seconds
    u: null,
    timer: 0,

    reset(device) {
      this.device = device;
      this.keys = [];
      this.xs = [];
      this.ys = new Map();
      this.latest = new Map();
      this.hidden = new Set(store("hidden." + device, []));
      this.palette = store("colors." + device, []);
      this.clockOffset = null;
      if (this.u) {
        this.u.destroy();
        this.u = null;
      }
      $("chart-empty").hidden = false;
      $("chart").dataset.points = "0";
      this.renderToggles();
    },

    resetClock() {
      this.clockOffset = null;
    },

    add(ts, data) {
      const off = ts - Date.now() / 1000;
      if (this.clockOffset === null || off > this.clockOffset) this.clockOffset = off;
      const values = {};
      let any = false;
      for (const [k, v] of Object.entries(data)) {
        if (typeof v === "number" && isFinite(v)) values[k] = v;
        else if (typeof v === "boolean") values[k] = v ? 1 : 0;
        else continue;
        any = true;
      }
      if (!any) return;
      let rebuild = false;
      for (const k of Object.keys(values)) {
        if (!this.ys.has(k)) {
          this.keys.push(k);
          this.ys.set(k, new Array(this.xs.length).fill(null));
          rebuild = true;
        }
      }
      // Keep x ascending (uPlot needs it); lines nearly always arrive in order.
      let i = this.xs.length;
      while (i > 0 && this.xs[i - 1] > ts) i--;
      this.xs.splice(i, 0, ts);
      for (const [k, arr] of this.ys) arr.splice(i, 0, k in values ? values[k] : null);
      for (const [k, v] of Object.entries(values)) this.latest.set(k, v);
      this.trim();
      if (rebuild) {
        this.build();
        this.renderToggles();
      } else {
        this.updateValues(null);
      }
      this.schedule();
    },

    trim() {
      const oldest = this.xs[this.xs.length - 1] - 3600;
      let drop = 0;
      while (drop < this.xs.length && this.xs[drop] < oldest) drop++;
      drop = Math.max(drop, this.xs.length - CHART_MAX_POINTS);
      if (drop > 0) {
        this.xs.splice(0, drop);
        for (const arr of this.ys.values()) arr.splice(0, drop);
      }
    },

    now() {
      const now = Date.now() / 1000 + (this.clockOffset || 0);
      const last = this.xs.length ? this.xs[this.xs.length - 1] : now;
      return Math.max(now, last);
    },

    /* The last `windowSec` seconds; while less than that has been seen, just what
     * has (at least 10 s), so a fresh chart is not a stripe at the right edge. */
    xRange() {
      const end = this.now();
      const first = this.xs.length ? this.xs[0] : end;
      return [Math.max(end - this.windowSec, Math.min(first, end - 10)), end];
    },

    tick(t) {
      const d = new Date(t * 1000);
      const p = (n) => String(n).padStart(2, "0");
      const hm = p(d.getHours()) + ":" + p(d.getMinutes());
      return this.windowSec > 900 ? hm : hm + ":" + p(d.getSeconds());
    },

    /* A key keeps its colour on this device from one visit to the next. */
    colorOf(k) {
      let i = this.palette.indexOf(k);
      if (i < 0) {
        i = this.palette.push(k) - 1;
        save("colors." + this.device, this.palette);
      }
      return COLORS[i % COLORS.length];
    },

    css(name) {
      return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
    },

    build() {
      if (this.u) this.u.destroy();
      const box = $("chart");
      $("chart-empty").hidden = true;
      const axis = {
        stroke: this.css("--muted"),
        grid: { stroke: this.css("--grid"), width: 1 },
        ticks: { stroke: this.css("--grid"), width: 1 },
        font: "11px system-ui, sans-serif",
      };
      const opts = {
        width: Math.max(200, box.clientWidth),
        height: this.height(),
        legend: { show: false },
        cursor: { drag: { x: false, y: false, setScale: false }, points: { size: 6 } },
        scales: { x: { time: true, range: () => this.xRange() } },
        axes: [{ ...axis, values: (u, splits) => splits.map((t) => this.tick(t)) }, { ...axis, size: 52 }],
        series: [{}].concat(this.keys.map((k) => ({
          label: k,
          stroke: this.colorOf(k),
          width: 1.6,
          spanGaps: true,
          show: !this.hidden.has(k),
          points: { size: 4 },
        }))),
        hooks: { setCursor: [(u) => this.updateValues(u.cursor.idx)] },
      };
      this.u = new uPlot(opts, this.data(), box);
    },

    height() {
      return window.matchMedia("(max-width: 640px)").matches ? 170 : 240;
    },

    data() {
      return [this.xs].concat(this.keys.map((k) => this.ys.get(k)));
    },

    schedule() {
      if (this.timer) return;
      this.timer = setTimeout(() => {
        this.timer = 0;
        this.draw();
      }, 150);
    },

    draw() {
      if (!this.u) return;
      this.u.setData(this.data());
      const lo = this.xRange()[0];
      let n = 0;
      for (let i = this.xs.length - 1; i >= 0 && this.xs[i] >= lo; i--) n++;
      $("chart").dataset.points = String(n);
    },

    resize() {
      if (this.u) this.u.setSize({ width: Math.max(200, $("chart").clientWidth), height: this.height() });
    },

    toggle(k) {
      if (this.hidden.has(k)) this.hidden.delete(k);
      else this.hidden.add(k);
      save("hidden." + this.device, [...this.hidden]);
      if (this.u) this.u.setSeries(this.keys.indexOf(k) + 1, { show: !this.hidden.has(k) });
      this.renderToggles();
    },

    renderToggles() {
      const box = $("series-toggles");
      box.replaceChildren();
      for (const k of this.keys) {
        const b = el("button", "series");
        b.type = "button";
        b.dataset.key = k;
        b.setAttribute("aria-pressed", String(!this.hidden.has(k)));
        b.title = (this.hidden.has(k) ? "show " : "hide ") + k;
        const sw = el("span", "swatch");
        sw.style.background = this.colorOf(k);
        b.append(sw, el("span", "key", k), el("span", "val", ""));
        b.addEventListener("click", () => this.toggle(k));
        box.append(b);
      }
      this.updateValues(null);
    },

    /* The chips show the newest values, or the values under the cursor. */
    updateValues(idx) {
      for (const b of $("series-toggles").children) {
        const k = b.dataset.key;
        let v = this.latest.get(k);
        if (idx !== null && idx !== undefined && this.ys.has(k)) v = this.ys.get(k)[idx];
        b.querySelector(".val").textContent = v === null || v === undefined ? "–" : formatValue(v);
      }
    },
  };

  function formatValue(v) {
    if (Number.isInteger(v)) return String(v);
    const a = Math.abs(v);
    return a >= 1000 ? v.toFixed(0) : a >= 1 ? String(+v.toFixed(3)) : String(+v.toPrecision(3));
  }

  /* ------------------------------------------------------- send and buttons -- */

  const sendHistory = {
    device: null,
    items: [],
    pos: 0,
    draft: "",

    load(device) {
      this.device = device;
      this.items = store("sent." + device, []);
      this.pos = this.items.length;
      this.draft = "";
    },

    push(line) {
      if (this.items[this.items.length - 1] !== line) this.items.push(line);
      if (this.items.length > SEND_HISTORY_MAX) this.items.splice(0, this.items.length - SEND_HISTORY_MAX);
      save("sent." + this.device, this.items);
      this.pos = this.items.length;
      this.draft = "";
    },

    move(input, step) {
      if (!this.items.length) return;
      if (this.pos === this.items.length) this.draft = input.value;
      this.pos = Math.min(this.items.length, Math.max(0, this.pos + step));
      input.value = this.pos === this.items.length ? this.draft : this.items[this.pos];
      input.setSelectionRange(input.value.length, input.value.length);
    },
  };

  let arrowButtons = {};

  function renderButtons(buttons) {
    const box = $("device-buttons");
    box.replaceChildren();
    buttonsShown = JSON.stringify(buttons);
    arrowButtons = {};
    for (const spec of buttons) {
      const b = el("button", "device-button", spec.label);
      b.type = "button";
      b.title = "sends: " + spec.line;
      b.dataset.line = spec.line;
      b.disabled = !(stream && stream.phase === "live" && stream.role !== "view");
      b.addEventListener("click", () => pressButton(b, spec));
      box.append(b);
      const dir = spec.label.trim().toLowerCase();
      if (["up", "down", "left", "right"].includes(dir)) arrowButtons[dir] = { b, spec };
    }
    box.hidden = !buttons.length;
    $("arrow-hint").hidden = !Object.keys(arrowButtons).length;
  }

  function pressButton(b, spec) {
    if (!stream) return;
    stream.send(spec.line, spec.label);
    b.classList.add("pressed");
    setTimeout(() => b.classList.remove("pressed"), 160);
  }

  /* ------------------------------------------------------------------ wiring -- */

  $("send-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const input = $("send-input");
    const line = input.value;
    if (!line || !stream) return;
    if (stream.send(line)) {
      sendHistory.push(line);
      input.value = "";
    }
  });

  $("send-input").addEventListener("keydown", (ev) => {
    if (ev.key === "ArrowUp") {
      ev.preventDefault();
      sendHistory.move(ev.target, -1);
    } else if (ev.key === "ArrowDown") {
      ev.preventDefault();
      sendHistory.move(ev.target, +1);
    }
  });

  document.addEventListener("keydown", (ev) => {
    const dir = ARROWS[ev.key];
    if (!dir || !arrowButtons[dir] || ev.altKey || ev.ctrlKey || ev.metaKey || ev.shiftKey) return;
    const t = ev.target;
    if (t && (t.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(t.tagName))) return;
    ev.preventDefault();  // no page scrolling
    if (ev.repeat) return;  // one line per key press: a held key must not flood the device
    pressButton(arrowButtons[dir].b, arrowButtons[dir].spec);
  });

  $("log-pause").addEventListener("click", () => log.setPaused(!log.paused));
  $("log-clear").addEventListener("click", () => log.clear());
  $("log-copy").addEventListener("click", async () => {
    const text = log.text();
    const n = text ? text.split("\n").length : 0;
    toast((await copyText(text)) ? "Copied " + n + " line" + (n === 1 ? "" : "s") : "Copy failed: select the log and copy by hand");
  });
  $("show-telemetry").addEventListener("change", (ev) => {
    log.box.classList.toggle("hide-tele", !ev.target.checked);
  });
  const windowSelect = $("chart-window");
  if ([...windowSelect.options].some((o) => o.value === String(store("window", "")))) windowSelect.value = String(store("window", ""));
  chart.windowSec = Number(windowSelect.value);
  windowSelect.addEventListener("change", () => {
    chart.windowSec = Number(windowSelect.value);
    save("window", chart.windowSec);
    if (chart.u) chart.build();  // tick labels depend on the window
  });
  $("term-toggle").addEventListener("click", () => showTerminal(!terminal.visible));
  $("retry-now").addEventListener("click", () => stream && stream.retryNow());
  window.addEventListener("online", () => stream && stream.retryNow());
  window.addEventListener("offline", () => stream && stream.drop());

  new ResizeObserver(() => chart.resize()).observe($("chart"));
  // The chart's axis colours come from the stylesheet: rebuild it when they change.
  matchMedia("(prefers-color-scheme: dark)").addEventListener("change", () => chart.u && chart.build());
  setInterval(() => chart.draw(), 1000);  // scroll the time window even when quiet

  /* ------------------------------------------------ ports, settings, terminal -- */

  const terminal = new TerminalView();
  const flash = new FlashPanel({ log: (kind, text, opts) => log.add(kind, text, opts) });
  const settings = new DeviceSettings({
    send: (message, text, label) => stream && stream.sendMessage(message, text, label),
    onChanged: () => refreshDevices(),
    onRemoved: (name) => deviceRemoved(name),
  });

  /* A device was taken off the gateway (by this page or another): if it was open, its
   * stream is over (no reconnecting to a device that is gone) and the next one opens. */
  function deviceRemoved(name) {
    fleet.remove(name);
    details.delete(name);
    if (name === current) {
      if (stream) stream.close();
      terminal.disconnect();
      current = null;
      fleet.setCurrent(null);
      for (const id of ["device-head", "chart-card", "control-card", "settings-card", "log-card"]) $(id).hidden = true;
      terminal.show(false);
      $("empty-main").hidden = false;
      $("link-state").dataset.state = "idle";
      $("link-text").textContent = "no device open";
      $("banner").hidden = true;
      toast("Device " + name + " was removed");
    }
    if (!eventsListing()) refreshDevices();  // else the event stream lists what is left
  }
  const ports = new PortsPanel({
    onOpened: (name) => openDevice(name),  // its "added" event lists it
    isTaken: (name) => fleet.has(name),
  });

  function showTerminal(visible) {
    terminal.show(visible);
    $("term-toggle").setAttribute("aria-pressed", String(visible));
    $("streams").classList.toggle("split", visible);
    save("terminal", visible);
  }

  /* Device and port changes, pushed by the gateway. At each (re)connection the page asks
   * for the whole device list; the device events after its answer are the changes since
   * (CONTRACT-NOTES.md, issue 15). The list's rows follow once per animation frame. */
  const events = new EventsStream({
    onOpen: () => {
      events.ws.send(JSON.stringify({ type: "devices" }));
      ports.load();
    },
    onMessage: (msg) => {
      if (msg.type === "hello") {
        ports.setCanAdd(msg.role === "admin");
        fleet.setGateway(msg.gateway);
      } else if (msg.type === "devices" && Array.isArray(msg.devices)) {
        epoch += 1;  // a whole list read before this one is older
        listedBy = events.ws;
        fleet.replace(msg.devices);
        listed(msg.devices);
      } else if (msg.type === "port") {
        ports.onEvent(msg);
      } else if (msg.type === "device") {
        if (msg.event === "state" && typeof msg.state === "string") {
          setDeviceState(msg.device, msg.state);  // ignored for a device not listed (removed meanwhile)
        } else if (msg.event === "removed") {
          deviceRemoved(msg.device);
          portsChanged();  // its port is free again
        } else if (msg.event === "added") {
          fleet.upsert({ ...msg, name: msg.device });
          portsChanged();  // a port is in use
        }
      }
    },
  });

  /* Devices came or went: the Ports panel shows which port is whose. Many at once
   * (a reload, a fleet) read the ports once. */
  let portsTimer = 0;
  function portsChanged() {
    if (!portsTimer) portsTimer = setTimeout(() => { portsTimer = 0; ports.load(); }, 200);
  }

  /* The event stream is section 8, like /api/ports: it is opened once the ports were
   * listed (a gateway without them has neither; a token refused there is refused here). */
  async function startEvents() {
    if (events.started) return events.retryNow();
    if ((await ports.load()) && !events.started) events.connect();
  }

  refreshDevices();
  startEvents();
  if (store("terminal", false)) showTerminal(true);
})();
