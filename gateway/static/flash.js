/* The Flash panel (admin role): one or more .bin files, each at an offset (default 0x0),
 * and a baud rate; Flash sends them to POST /api/devices/NAME/flash, which runs esptool in
 * the gateway. Progress comes back on the device's json stream as {"type": "flash", ...}
 * messages (start, phase, log, progress, end): a progress bar with percent, bytes and
 * speed, esptool's lines in the log, then the device's own boot lines as it restarts.
 * Cancel is DELETE /api/devices/NAME/flash: the flash stops and the device returns to the
 * gateway. A flash running when the page opens (or reconnects) is picked up from GET. */

import { $, api, el, toast } from "./util.js";

const MAX_BYTES = 4 * 1024 * 1024;  // the gateway's limit, all files together
const KIB = 1024;

function kib(n) {
  return (n / KIB).toFixed(n < 10 * KIB ? 1 : 0) + " KiB";
}

/* A File's bytes as base64, in pieces (btoa of a 4 MiB string at once is fine, building it
 * with one String.fromCharCode(...bytes) is not). */
async function base64Of(file) {
  const bytes = new Uint8Array(await file.arrayBuffer());
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(binary);
}

export class FlashPanel {
  /* log(kind, text, opts): a row in the page's log (kinds as app.js's: rx, tx, err, sys). */
  constructor({ log }) {
    this.log = log;
    this.device = null;    // the open device (from its stream's hello)
    this.role = null;
    this.job = null;       // the running flash's id, or null
    this.ended = null;     // the id of the last flash seen ending
    this.busy = false;     // a request in flight
    $("flash-add").addEventListener("click", () => this.addRow());
    $("flash-start").addEventListener("click", () => this.start());
    $("flash-cancel").addEventListener("click", () => this.cancel());
    this.addRow();
    this.paint();
  }

  /* Every json message of the open device's stream (app.js hands them over). */
  onMessage(device, msg) {
    if (msg.type === "hello") {
      const changed = device !== this.device;
      this.device = device;
      this.role = msg.role || "control";
      if (changed) this.reset();
      this.paint();
      if (this.role === "admin") this.resume();
    } else if (msg.type === "flash" && msg.device === this.device) {
      this.onFlash(msg);
    }
  }

  onFlash(msg) {
    switch (msg.event) {
      case "start":
        this.job = msg.id;
        this.showProgress(msg);
        this.log("sys", "flash started by " + msg.by + ": " + msg.files.map((f) => f.name + " (" + kib(f.size) + ") at " + f.offset).join(", ") +
          ", " + msg.baud + " baud", { label: "flash" });
        break;
      case "phase":
        this.job = msg.id;
        $("flash-phase").textContent = msg.phase;
        break;
      case "log":
        this.log("sys", msg.line, { label: "esptool" });
        break;
      case "progress":
        this.job = msg.id;
        this.showProgress(msg);
        break;
      case "end":
        this.job = null;
        this.ended = msg.id;
        this.showProgress(msg);
        $("flash-phase").textContent = msg.state;
        if (msg.state === "done") {
          this.log("sys", "flash done: " + kib(msg.total) + " in " + msg.write_seconds.toFixed(1) + " s of writing (" +
            kib(msg.speed) + "/s), " + msg.seconds.toFixed(1) + " s in all; the device restarts", { label: "flash" });
        } else if (msg.state === "cancelled") {
          this.log("sys", "flash cancelled at " + msg.percent + " %; the device is back", { label: "flash" });
        } else {
          this.log("err", "flash failed: " + msg.error);
        }
        break;
      default:
        return;
    }
    this.paint();
  }

  showProgress(msg) {
    const bar = $("flash-progress");
    bar.value = msg.percent;
    $("flash-percent").textContent = msg.percent.toFixed(msg.percent === 100 ? 0 : 1) + " %";
    $("flash-bytes").textContent = kib(msg.bytes) + " of " + kib(msg.total);
    $("flash-speed").textContent = msg.speed ? kib(msg.speed) + "/s" : "";
    if (msg.phase) $("flash-phase").textContent = msg.phase;
    $("flash-state").hidden = false;
  }

  /* A flash already running on this device (another page started it, or this one
   * reconnected): show it. */
  async resume() {
    const device = this.device;
    const r = await api("GET", "/api/devices/" + encodeURIComponent(device) + "/flash");
    if (!r.ok || device !== this.device || !r.data || r.data.state !== "running" || r.data.id === this.ended) return;
    this.job = r.data.id;
    this.showProgress(r.data);
    this.paint();
  }

  reset() {
    this.job = null;
    $("flash-state").hidden = true;
    $("flash-progress").value = 0;
    $("flash-error").hidden = true;
  }

  addRow() {
    const row = el("div", "flash-file");
    const file = el("input");
    file.type = "file";
    file.accept = ".bin,application/octet-stream";
    file.setAttribute("aria-label", "Firmware file");
    const offset = el("input", "offset");
    offset.type = "text";
    offset.value = "0x0";
    offset.spellcheck = false;
    offset.setAttribute("aria-label", "Offset");
    const remove = el("button", "small", "×");
    remove.type = "button";
    remove.title = "Drop this file from the flash";
    remove.setAttribute("aria-label", "Drop this file");
    remove.addEventListener("click", () => { row.remove(); this.paint(); });
    file.addEventListener("change", () => this.paint());
    row.append(file, el("span", "at", "at"), offset, remove);
    $("flash-files").append(row);
    this.paint();
  }

  rows() {
    return [...$("flash-files").querySelectorAll(".flash-file")];
  }

  paint() {
    const admin = this.role === "admin";
    $("flash-panel").hidden = !admin;
    const rows = this.rows();
    const chosen = rows.filter((r) => r.querySelector("input[type=file]").files.length > 0);
    const running = this.job !== null;
    $("flash-start").disabled = !admin || running || this.busy || chosen.length === 0 || chosen.length !== rows.length;
    $("flash-cancel").disabled = !admin || !running;
    $("flash-add").disabled = running;
    for (const r of rows) r.querySelector("button").disabled = running || rows.length === 1;
  }

  error(text) {
    const box = $("flash-error");
    box.textContent = text;
    box.hidden = !text;
  }

  async start() {
    const device = this.device;
    if (!device) return;
    this.error("");
    const files = [];
    let total = 0;
    for (const row of this.rows()) {
      const file = row.querySelector("input[type=file]").files[0];
      const offset = row.querySelector("input.offset").value.trim() || "0x0";
      if (!file) return this.error("choose a file for every row, or remove the row");
      total += file.size;
      files.push({ file, offset });
    }
    if (total > MAX_BYTES) return this.error("at most 4 MiB of image in all; these are " + kib(total));
    this.busy = true;
    this.paint();
    try {
      const body = { baud: Number($("flash-baud").value), files: [] };
      for (const f of files) body.files.push({ offset: f.offset, name: f.file.name, data: await base64Of(f.file) });
      const r = await api("POST", "/api/devices/" + encodeURIComponent(device) + "/flash", body);
      if (!r.ok) {
        this.error(r.error);
        this.log("err", "flash not started: " + r.error);
        return;
      }
      if (this.job === null && r.data && r.data.state === "running" && r.data.id !== this.ended) {
        this.job = r.data.id;  // the start message may come after this answer
        this.showProgress(r.data);
      }
    } finally {
      this.busy = false;
      this.paint();
    }
  }

  async cancel() {
    const device = this.device;
    if (!device || this.job === null) return;
    $("flash-cancel").disabled = true;
    $("flash-phase").textContent = "cancelling";
    const r = await api("DELETE", "/api/devices/" + encodeURIComponent(device) + "/flash");
    if (!r.ok) toast("Not cancelled: " + r.error);
    this.paint();
  }
}
