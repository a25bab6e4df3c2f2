/* The device list for a fleet: a search box, filters by state and by owner gateway, the
 * counts per state in the page's header, and only the rows in view in the DOM (a pool of
 * rows moved as the list scrolls). The data is a Fleet (fleet_model.js); changes mark it,
 * and the DOM follows once per animation frame, touching only the rows in view.
 *
 * Elements (index.html): #device-list (the scrolled viewport, holding .fleet-rows and a
 * message line), #fleet-search, #fleet-state, #fleet-owner, #fleet-shown, and in the
 * header #fleet-counts and #gateway-id. A row is <li><button class="device"
 * data-device=NAME data-state=STATE> with .dot, .name, .kind, .owner and .state inside.
 */
import { $, el } from "./util.js";
import { Fleet, UNKNOWN, UNKNOWN_TEXT, rowWindow, scrollToShow } from "./fleet_model.js";

const OVERSCAN = 6;            // rows rendered beyond each edge of the viewport
const FALLBACK_VIEW = 600;     // px, while the viewport has no height yet
const FILTERS_FROM = 8;        // devices: fewer are listed without search and filters

export class FleetList {
  /* onOpen(name): a row was chosen. */
  constructor({ onOpen }) {
    this.fleet = new Fleet();
    this.onOpen = onOpen;
    this.current = null;
    this.view = $("device-list");
    this.rows = el("ul", "fleet-rows");
    this.note = el("p", "empty", "loading…");
    this.view.replaceChildren(this.note, this.rows);
    this.shownRows = new Map();  // name -> <li> in the DOM now
    this.pool = [];              // <li>s taken out of the DOM, to reuse
    this.dirty = new Set();      // names whose row may need repainting
    this.all = true;             // every row in view needs repainting (filter, scroll, stale...)
    this.frame = 0;
    this.renders = 0;
    this.rowHeight = 0;
    this.message = null;         // a message instead of the list (no token, unreachable)
    this.ownersShown = "";       // the owner options rendered, to skip rebuilding them
    this.toReveal = null;        // a name to scroll into view at the next frame
    this.total = null;           // the header's "N devices"
    this.countButtons = null;

    this.view.addEventListener("scroll", () => this.schedule(true), { passive: true });
    new ResizeObserver(() => {
      this.rowHeight = 0;
      this.schedule(true);
    }).observe(this.view);
    this.rows.addEventListener("click", (ev) => {
      const b = ev.target.closest("button.device");
      if (!b) return;
      // Clicked with a mouse: the focus leaves the list, so the arrow keys go to the
      // device's arrow buttons (app.js); chosen with the keyboard, it stays here.
      if (ev.detail > 0) b.blur();
      this.onOpen(b.dataset.device);
    });
    this.rows.addEventListener("keydown", (ev) => this.onKey(ev));
    $("fleet-search").addEventListener("input", (ev) => this.setFilter({ text: ev.target.value }));
    $("fleet-state").addEventListener("change", (ev) => this.setFilter({ state: ev.target.value }));
    $("fleet-owner").addEventListener("change", (ev) => this.setFilter({ owner: ev.target.value }));
    $("fleet-counts").addEventListener("click", (ev) => {
      const b = ev.target.closest("button[data-state]");
      if (!b) return;
      const state = $("fleet-state").value === b.dataset.state ? "" : b.dataset.state;
      this.setFilter({ state });
    });
  }

  /* -- the data: every change is O(1) here, the DOM follows at the next frame -- */

  has(name) {
    return this.fleet.has(name);
  }

  get(name) {
    return this.fleet.get(name);
  }

  get size() {
    return this.fleet.size;
  }

  /* The gateway's whole list, just received. */
  replace(list) {
    this.fleet.replace(list);
    this.message = null;
    this.schedule(true);
  }

  upsert(d) {
    this.fleet.upsert(d);
    this.message = null;
    this.mark(d.name);
  }

  setState(name, state) {
    if (this.fleet.setState(name, state)) this.mark(name);
  }

  stateOf(name) {
    return this.fleet.stateOf(name);
  }

  remove(name) {
    if (this.fleet.remove(name)) this.schedule(true);
  }

  /* The gateway is lost: every state unknown until it reports again. */
  stale() {
    this.fleet.stale();
    this.schedule(true);
  }

  setCurrent(name) {
    const before = this.current;
    this.current = name;
    if (before) this.mark(before);
    if (name) {
      this.mark(name);
      this.reveal(name);
    }
  }

  setGateway(id) {
    const box = $("gateway-id");
    box.textContent = id || "";
    box.hidden = !id;
  }

  /* Instead of the list (a refused token, an unreachable gateway with nothing listed). */
  showMessage(text) {
    this.message = text;
    this.schedule(true);
  }

  setFilter(filter) {
    this.fleet.setFilter(filter);
    if (filter.state !== undefined) $("fleet-state").value = filter.state;
    this.view.scrollTop = 0;
    this.schedule(true);
  }

  mark(name) {
    this.dirty.add(name);
    this.schedule(false);
  }

  schedule(all) {
    if (all) this.all = true;
    if (!this.frame) this.frame = requestAnimationFrame(() => this.render());
  }

  /* Scroll so that `name`'s row is in view (when the filter lists it), at the next frame:
   * the list has its height then. */
  reveal(name) {
    this.toReveal = name;
    this.schedule(true);
  }

  /* Arrow keys, Page Up/Down, Home and End move the focus along the list, beyond the
   * rows in the DOM: the row is rendered at once, then focused. */
  onKey(ev) {
    const li = ev.target.closest("li.fleet-row");
    if (!li || ev.altKey || ev.ctrlKey || ev.metaKey || ev.shiftKey) return;
    const page = Math.max(1, Math.floor((this.view.clientHeight || FALLBACK_VIEW) / this.measure()) - 1);
    const step = { ArrowDown: 1, ArrowUp: -1, PageDown: page, PageUp: -page, Home: -Infinity, End: Infinity }[ev.key];
    if (step === undefined) return;
    ev.preventDefault();
    ev.stopPropagation();  // not also a press of the device's arrow buttons
    const names = this.fleet.visible();
    const to = names[Math.max(0, Math.min(names.length - 1, Number(li.dataset.index) + step))];
    if (to === undefined) return;
    this.toReveal = to;
    this.all = true;
    this.render();
    const row = this.shownRows.get(to);
    if (row) row.firstChild.focus({ preventScroll: true });
  }

  /* -- the DOM, once per frame -- */

  measure() {
    if (!this.rowHeight) {
      const v = parseFloat(getComputedStyle(this.view).getPropertyValue("--fleet-row"));
      this.rowHeight = v > 0 ? v : 44;
    }
    return this.rowHeight;
  }

  render() {
    if (this.frame) cancelAnimationFrame(this.frame);
    this.frame = 0;
    this.view.dataset.renders = String(++this.renders);  // frames painted: for tests and the curious
    const fleet = this.fleet;
    const before = fleet.shown;
    const names = fleet.visible();
    if (names !== before) this.all = true;  // devices came, went, or entered or left the filter
    const h = this.measure();
    this.renderCounts();
    this.renderOwners();
    const f = fleet.filter;
    $("fleet-filters").hidden = fleet.size < FILTERS_FROM && !(f.words.length || f.state || f.owner);
    const text = this.message || (!fleet.size ? "No devices configured." : !names.length ? "No device matches." : "");
    this.note.textContent = text;
    this.note.hidden = !text;
    $("fleet-shown").textContent = fleet.size ? (names.length === fleet.size ? String(fleet.size) : names.length + " of " + fleet.size) : "";
    this.rows.style.height = (this.message ? 0 : names.length * h) + "px";
    if (this.toReveal !== null) {
      const i = names.indexOf(this.toReveal);
      this.toReveal = null;
      if (i >= 0) this.view.scrollTop = scrollToShow(i, this.view.scrollTop, this.view.clientHeight || FALLBACK_VIEW, h);
    }
    const [start, end] = this.message ? [0, 0] : rowWindow(this.view.scrollTop, this.view.clientHeight || FALLBACK_VIEW, h, names.length, OVERSCAN);

    if (this.all) {
      const wanted = new Set(names.slice(start, end));
      // The focused row stays in the DOM while its device is listed, scrolled out or not:
      // taking it out would drop the keyboard's focus.
      const focused = this.rows.contains(document.activeElement) ? document.activeElement.dataset.device : undefined;
      const kept = focused !== undefined && !wanted.has(focused) ? names.indexOf(focused) : -1;
      if (kept >= 0) this.paint(this.shownRows.get(focused), fleet.get(focused), kept, names.length);
      for (const [name, li] of this.shownRows) {
        if (!wanted.has(name) && !(kept >= 0 && name === focused)) {
          this.shownRows.delete(name);
          li.remove();
          this.pool.push(li);
        }
      }
      for (let i = start; i < end; i++) {
        const name = names[i];
        let li = this.shownRows.get(name);
        if (!li) {
          li = this.pool.pop() || this.newRow();
          this.rows.append(li);
          this.shownRows.set(name, li);
        }
        this.paint(li, fleet.get(name), i, names.length);
      }
    } else {
      for (const name of this.dirty) {
        const li = this.shownRows.get(name);
        if (li) this.paint(li, fleet.get(name), Number(li.dataset.index), names.length);
      }
    }
    this.all = false;
    this.dirty.clear();
  }

  newRow() {
    const li = el("li", "fleet-row");
    const b = el("button", "device");
    b.type = "button";
    b.append(el("span", "dot"), el("span", "name"), el("span", "kind"), el("span", "owner"), el("span", "state"));
    li.append(b);
    return li;
  }

  /* Write a row only where it differs from what it shows. */
  paint(li, d, index, count) {
    const state = this.fleet.stateOf(d.name);
    const current = d.name === this.current;
    const key = [d.name, state, d.kind, d.owner, d.remote, current, index, count, this.rowHeight].join("\u0000");
    if (li.dataset.key === key) return;
    li.dataset.key = key;
    li.dataset.index = String(index);
    li.style.transform = "translateY(" + index * this.rowHeight + "px)";
    li.setAttribute("aria-posinset", String(index + 1));
    li.setAttribute("aria-setsize", String(count));
    const b = li.firstChild;
    b.dataset.device = d.name;
    b.dataset.state = state;
    b.classList.toggle("remote", d.remote);
    if (current) b.setAttribute("aria-current", "true");
    else b.removeAttribute("aria-current");
    const [, name, kind, owner, stateBox] = b.children;
    name.textContent = d.name;
    kind.textContent = d.kind;
    owner.textContent = d.remote ? "on " + d.owner : "";
    owner.title = d.remote ? "a device of gateway " + d.owner + ", reached through the broker" : "";
    stateBox.textContent = state === UNKNOWN ? UNKNOWN_TEXT : state;
    b.title = d.name + (d.remote ? " on " + d.owner : "") + ": " + stateBox.textContent;
  }

  /* The header's counts, updated in place (a focused count button keeps its focus). */
  renderCounts() {
    const box = $("fleet-counts");
    const counts = this.fleet.stateCounts();
    const chosen = $("fleet-state").value;
    const size = this.fleet.size;
    if (!this.total) {
      this.total = el("span", "total");
      this.total.append(el("b", "n"), document.createTextNode(""));
      this.countButtons = new Map();  // state -> its button
    }
    this.total.firstChild.textContent = String(size);
    this.total.lastChild.textContent = size === 1 ? " device " : " devices ";
    const known = !counts.some(([state, n]) => state === UNKNOWN && n > 0);
    const parts = [this.total];
    for (const [state, n] of counts) {
      // "0 connected" says something (when every state is known); "0 reconnecting" does not.
      if (!n && !(state === "connected" && known && size)) continue;
      let b = this.countButtons.get(state);
      if (!b) {
        b = el("button", "count");
        b.type = "button";
        b.dataset.state = state;
        b.append(el("span", "dot"), el("b", "n"), el("span", "label", " " + state + " "));
        this.countButtons.set(state, b);
      }
      b.children[1].textContent = String(n);
      b.setAttribute("aria-pressed", String(chosen === state));
      b.title = chosen === state ? "list every device" : "list only the devices " + state;
      parts.push(b);
    }
    if (parts.length !== box.childNodes.length || parts.some((p, i) => box.childNodes[i] !== p)) box.replaceChildren(...parts);
    this.renderStateOptions(counts);
  }

  /* The state filter offers the states there are (and the one chosen). */
  renderStateOptions(counts) {
    const select = $("fleet-state");
    const chosen = select.value;
    const states = counts.filter(([s, n]) => n > 0 || s === chosen || s === "connected").map(([s]) => s);
    const have = [...select.options].slice(1).map((o) => o.value);
    if (have.join("\n") === states.join("\n")) return;
    select.replaceChildren(new Option("any state", ""), ...states.map((s) => new Option(s, s)));
    select.value = chosen;
  }

  /* The owner filter offers every gateway with devices in the list. */
  renderOwners() {
    const owners = this.fleet.ownerCounts();
    const select = $("fleet-owner");
    const chosen = select.value;
    const key = owners.map(([o, n]) => o + "=" + n).join("\n") + "\n" + chosen;
    if (key === this.ownersShown) return;
    this.ownersShown = key;
    const options = [new Option("any gateway", "")];
    for (const [owner, n] of owners) options.push(new Option(owner + " (" + n + ")", owner));
    if (chosen && !owners.some(([o]) => o === chosen)) options.push(new Option(chosen + " (0)", chosen));
    select.replaceChildren(...options);
    select.value = chosen;
  }
}
