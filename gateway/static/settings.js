/* The device settings panel: baud rate (PATCH /api/devices/NAME {"baudrate": N}: the
 * device reopens, its clients stay), Reset and Bootloader (json messages on the device's
 * stream, acked; only where the device carries signals), and Remove (DELETE). */

import { $, api, toast } from "./util.js";

const CONFIRM_MS = 4000;  // Remove asks once more for this long

export class DeviceSettings {
  /* send(message, text): a json message on the open device's stream, logged as `text`.
   * onChanged(): the device list should be reloaded; onRemoved(name): a device is gone. */
  constructor({ send, onChanged, onRemoved }) {
    this.send = send;
    this.onChanged = onChanged;
    this.onRemoved = onRemoved;
    this.device = null;      // the /api/devices entry shown
    this.role = null;
    this.live = false;
    this.confirmTimer = null;
    $("device-reset").addEventListener("click", () => this.send({ type: "reset" }, "reset", "Reset"));
    $("device-bootloader").addEventListener("click", () => this.send({ type: "bootloader" }, "bootloader", "Bootloader"));
    $("device-remove").addEventListener("click", () => this.remove());
    $("baud").addEventListener("change", () => this.changeBaud($("baud").value));
  }

  show(d) {
    const changed = !this.device || this.device.name !== d.name;
    this.device = d;
    if (changed) this.disarm();
    const baud = d.baudrate === null || d.baudrate === undefined ? null : String(d.baudrate);
    $("baud-box").hidden = baud === null;
    if (baud !== null && document.activeElement !== $("baud")) {
      const select = $("baud");
      if (![...select.options].some((o) => o.value === baud)) select.append(new Option(baud, baud));
      select.value = baud;
    }
    this.paint();
  }

  /* The open device's stream: live or not, and the role its hello gave. */
  setLink(live, role) {
    this.live = live;
    this.role = role;
    this.paint();
  }

  paint() {
    const canSignal = this.live && this.role !== null && this.role !== "view" && !!(this.device && this.device.signals);
    const isAdmin = this.role === "admin";
    for (const id of ["device-reset", "device-bootloader"]) {
      $(id).disabled = !canSignal;
      $(id).hidden = !!this.device && this.device.signals === false;  // tcp, udp, mqtt: no wires to pull
    }
    $("device-remove").disabled = !isAdmin;
    $("baud").disabled = !isAdmin;
    $("device-remove").title = isAdmin ? "Close the device and take it off this gateway (not written to the config file)"
      : "only an admin token may remove devices";
  }

  async changeBaud(baud) {
    const d = this.device;
    if (!d) return;
    const r = await api("PATCH", "/api/devices/" + encodeURIComponent(d.name), { baudrate: Number(baud) });
    if (!r.ok) {
      toast("Baud rate not changed: " + r.error);
      this.show(d);  // back to what the device has
      return;
    }
    toast(d.name + ": " + baud + " baud; reopening");
    this.onChanged();
  }

  disarm() {
    clearTimeout(this.confirmTimer);
    const b = $("device-remove");
    b.textContent = "Remove";
    b.classList.remove("armed");
    delete b.dataset.armed;
  }

  async remove() {
    const b = $("device-remove");
    const d = this.device;
    if (!d) return;
    if (!b.dataset.armed) {  // first press: ask
      b.dataset.armed = "1";
      b.classList.add("armed");
      b.textContent = "Remove " + d.name + "?";
      this.confirmTimer = setTimeout(() => this.disarm(), CONFIRM_MS);
      return;
    }
    this.disarm();
    const r = await api("DELETE", "/api/devices/" + encodeURIComponent(d.name));
    if (!r.ok) {
      toast("Not removed: " + r.error);
      return;
    }
    this.onRemoved(d.name);
  }
}
