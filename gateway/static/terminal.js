/* The Terminal view: one device's binary stream (/ws/NAME?format=binary, raw bytes both
 * ways) in xterm.js (vendored: window.Terminal, window.FitAddon), or as a hex dump for
 * streams that are not text. Keys go out as typed (Enter is CR, Ctrl-C 0x03, arrows as
 * escape sequences), pastes as they are; nothing is echoed locally: what shows is what
 * the device sent. The socket is open only while the view is shown. */

import { $, wsUrl, plural } from "./util.js";

const RETRY_MIN = 500;     // ms; reconnect backoff doubles up to RETRY_MAX
const RETRY_MAX = 10000;
const HEX_KEEP = 16384;    // bytes the hex view keeps (whole 16-byte rows)
const encoder = new TextEncoder();

/* A hexdump -C of the newest bytes received: offset, 16 bytes in hex, the printable ones. */
class HexDump {
  constructor(box) {
    this.box = box;
    this.buf = new Uint8Array(0);
    this.base = 0;     // stream offset of buf[0], a multiple of 16
    this.frame = 0;
    this.visible = false;
  }

  clear() {
    this.buf = new Uint8Array(0);
    this.base = 0;
    this.box.textContent = "";
    this.box.dataset.bytes = "0";
  }

  add(bytes) {
    const next = new Uint8Array(this.buf.length + bytes.length);
    next.set(this.buf);
    next.set(bytes, this.buf.length);
    this.buf = next;
    if (this.buf.length > 2 * HEX_KEEP) {
      const drop = (this.buf.length - HEX_KEEP) & ~15;
      this.buf = this.buf.slice(drop);
      this.base += drop;
    }
    this.box.dataset.bytes = String(this.base + this.buf.length);
    if (this.visible && !this.frame) this.frame = requestAnimationFrame(() => this.render());
  }

  show(visible) {
    this.visible = visible;
    if (visible) this.render();
  }

  render() {
    this.frame = 0;
    const b = this.buf;
    const lines = [];
    for (let i = 0; i < b.length; i += 16) {
      const row = b.subarray(i, i + 16);
      let hex = "";
      let text = "";
      for (let j = 0; j < 16; j++) {
        hex += j < row.length ? row[j].toString(16).padStart(2, "0") + " " : "   ";
        if (j === 7) hex += " ";
        if (j < row.length) text += row[j] >= 0x20 && row[j] < 0x7f ? String.fromCharCode(row[j]) : ".";
      }
      lines.push((this.base + i).toString(16).padStart(8, "0") + "  " + hex + " |" + text + "|");
    }
    const box = this.box;
    const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
    box.textContent = lines.join("\n");
    if (atBottom) box.scrollTop = box.scrollHeight;
  }
}

export class TerminalView {
  constructor() {
    this.card = $("term-card");
    this.stateEl = $("term-state");
    this.device = null;
    this.visible = false;
    this.mode = "text";       // text | hex
    this.canSend = true;      // false for a view token
    this.ws = null;
    this.phase = "closed";    // closed | connecting | live | away
    this.attempt = 0;
    this.retryTimer = null;
    this.bytesIn = 0;
    this.bytesOut = 0;
    this.term = null;
    this.fit = null;
    this.hex = new HexDump($("hex"));
    $("term-mode-text").addEventListener("click", () => this.setMode("text"));
    $("term-mode-hex").addEventListener("click", () => this.setMode("hex"));
    $("term-clear").addEventListener("click", () => this.clear());
  }

  /* xterm is made on first use: a page that never opens the terminal never pays for it. */
  ensureTerm() {
    if (this.term) return;
    this.term = new window.Terminal({
      convertEol: true,          // a device's bare LF starts a new line at the left
      cursorBlink: true,
      scrollback: 5000,
      fontSize: 13,
      fontFamily: '"DejaVu Sans Mono", ui-monospace, Menlo, Consolas, monospace',
      disableStdin: !this.canSend,
    });
    this.fit = new window.FitAddon.FitAddon();
    this.term.loadAddon(this.fit);
    this.term.open($("term"));
    this.term.onData((data) => this.send(encoder.encode(data)));  // keys and pastes
    this.term.onBinary((data) => this.send(Uint8Array.from(data, (c) => c.charCodeAt(0) & 0xff)));
    new ResizeObserver(() => this.refit()).observe($("term"));
  }

  refit() {
    if (this.term && this.visible && this.mode === "text" && $("term").clientWidth > 0) this.fit.fit();
  }

  /* A device was chosen: the view starts afresh on its stream. */
  open(device) {
    this.disconnect();
    this.device = device;
    this.clear();
    if (this.visible) this.connect();
  }

  show(visible) {
    this.visible = visible;
    this.card.hidden = !visible;
    if (visible) {
      this.setMode(this.mode);
      if (this.device && !this.ws) this.connect();
    } else {
      this.disconnect();
    }
  }

  setMode(mode) {
    this.mode = mode;
    for (const m of ["text", "hex"]) $("term-mode-" + m).setAttribute("aria-pressed", String(m === mode));
    $("term").hidden = mode !== "text";
    $("hex").hidden = mode !== "hex";
    this.hex.show(this.visible && mode === "hex");
    if (mode === "text" && this.visible) {
      this.ensureTerm();
      this.refit();
      if (this.canSend) this.term.focus();
    }
  }

  setCanSend(canSend) {
    this.canSend = canSend;
    if (this.term) this.term.options.disableStdin = !canSend;
    $("term-hint").textContent = canSend
      ? "Raw bytes both ways: keys go out as typed (Enter is CR, Ctrl-C is 0x03, arrows as escape sequences), pastes as they are; no local echo."
      : "This token may only watch: keys are not sent.";
    this.showState();
  }

  clear() {
    if (this.term) this.term.reset();
    this.hex.clear();
    this.bytesIn = 0;
    this.bytesOut = 0;
    this.showState();
  }

  connect() {
    clearTimeout(this.retryTimer);
    if (!this.device || !this.visible) return;
    const ws = new WebSocket(wsUrl("/ws/" + encodeURIComponent(this.device) + "?format=binary"));
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    this.setPhase("connecting");
    ws.onopen = () => {
      if (this.ws !== ws) return;
      this.attempt = 0;
      this.setPhase("live");
    };
    ws.onmessage = (ev) => {
      if (this.ws !== ws) return;
      const bytes = typeof ev.data === "string" ? encoder.encode(ev.data) : new Uint8Array(ev.data);
      this.bytesIn += bytes.length;
      if (this.term) this.term.write(bytes);
      this.hex.add(bytes);
      this.showState();
    };
    ws.onclose = () => {
      if (this.ws !== ws) return;
      this.ws = null;
      const delay = Math.min(RETRY_MAX, RETRY_MIN * 2 ** this.attempt);
      this.attempt += 1;
      this.setPhase("away");
      this.retryTimer = setTimeout(() => this.connect(), delay);
    };
  }

  disconnect() {
    clearTimeout(this.retryTimer);
    this.attempt = 0;
    if (this.ws) {
      const ws = this.ws;
      this.ws = null;
      ws.onclose = null;
      ws.onmessage = null;
      ws.close(1000, "closed by the page");
    }
    this.setPhase("closed");
  }

  /* The gateway is back (the line stream said hello): do not wait out the backoff. */
  retryNow() {
    if (this.phase === "away") this.connect();
  }

  send(bytes) {
    if (!this.canSend || !bytes.length) return;
    if (!this.ws || this.phase !== "live") {
      this.stateEl.classList.remove("flash");
      void this.stateEl.offsetWidth;  // restart the animation
      this.stateEl.classList.add("flash");
      return;
    }
    this.ws.send(bytes);
    this.bytesOut += bytes.length;
    this.showState();
  }

  setPhase(phase) {
    this.phase = phase;
    this.showState();
  }

  showState() {
    const text = { closed: "closed", connecting: "connecting…", live: "live", away: "reconnecting…" }[this.phase];
    this.stateEl.dataset.state = this.phase;
    this.stateEl.textContent = text + (this.phase === "live" && !this.canSend ? " (watch only)" : "");
    $("term-count").textContent = plural("byte", this.bytesIn) + " in, " + plural("byte", this.bytesOut) + " out";
  }
}
