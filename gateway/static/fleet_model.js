/* The device list of a fleet as data, with no DOM: what fleet.js shows, testable alone
 * (tests/node/fleet_model.test.mjs).
 *
 * Devices are summaries, {name, state, kind, owner, remote}, as /ws/_events sends them
 * (its {"type": "devices"} answer and its device events) and as /api/devices items hold
 * them. A device's state counts only while it is fresh: reported by the gateway since the
 * page last lost it; otherwise it is UNKNOWN (the page claims no stale state).
 *
 * Every change is O(1) but for the order of names (sorted again, O(n log n), only after
 * devices came or went) and the filtered list (O(n), only after something that can
 * change which devices match); the view asks for them once per animation frame.
 */

export const UNKNOWN = "unknown";
export const UNKNOWN_TEXT = "unknown — gateway unreachable";
export const STATES = ["connected", "reconnecting", "disconnected"];  // listed first, in this order

const collator = new Intl.Collator(undefined, { numeric: true, sensitivity: "base" });

/* "dev-2" before "dev-10"; ties (names differing in case only) by code point. */
export function compareNames(a, b) {
  return collator.compare(a, b) || (a < b ? -1 : a > b ? 1 : 0);
}

/* Search words: lower case, split on white space; every one must match. */
export function searchWords(text) {
  return String(text || "").toLowerCase().split(/\s+/).filter(Boolean);
}

/* The rows to render for a scrolled viewport: [start, end) of `count` rows of `rowHeight`
 * pixels, `overscan` more on each side. */
export function rowWindow(scrollTop, viewHeight, rowHeight, count, overscan = 4) {
  if (count <= 0 || rowHeight <= 0) return [0, 0];
  const first = Math.floor(Math.max(0, scrollTop) / rowHeight);
  const last = Math.ceil((Math.max(0, scrollTop) + Math.max(0, viewHeight)) / rowHeight);
  return [Math.max(0, Math.min(count, first - overscan)), Math.min(count, last + overscan)];
}

/* The scrollTop that brings row `index` into a viewport (the same one if it is in). */
export function scrollToShow(index, scrollTop, viewHeight, rowHeight) {
  const top = index * rowHeight;
  if (top < scrollTop) return top;
  if (top + rowHeight > scrollTop + viewHeight) return top + rowHeight - viewHeight;
  return scrollTop;
}

function summary(d) {
  const owner = typeof d.owner === "string" ? d.owner : "";
  return {
    name: String(d.name),
    state: typeof d.state === "string" ? d.state : UNKNOWN,
    kind: typeof d.kind === "string" ? d.kind : "",
    owner,
    remote: d.remote === true,  // missing: a device of this gateway
    hay: (String(d.name) + " " + (d.kind || "")).toLowerCase(),  // what the search box searches
  };
}

export class Fleet {
  constructor() {
    this.items = new Map();    // name -> summary
    this.fresh = new Set();    // names whose state the gateway reported since it was last lost
    this.counts = new Map();   // shown state -> devices in it (all devices, whatever the filter)
    this.owners = new Map();   // owner -> devices
    this.filter = { words: [], state: "", owner: "" };
    this.order = [];           // every name, sorted
    this.shown = [];           // the names that match the filter, in order
    this.sorted = true;        // false: `order` needs sorting again
    this.matched = true;       // false: `shown` needs filtering again
  }

  get size() {
    return this.items.size;
  }

  has(name) {
    return this.items.has(name);
  }

  get(name) {
    return this.items.get(name);
  }

  /* The state to show: the gateway's, or UNKNOWN when it is not fresh. */
  stateOf(name) {
    const d = this.items.get(name);
    return d && this.fresh.has(name) ? d.state : UNKNOWN;
  }

  /* The gateway's whole list, just reported: all fresh. */
  replace(list) {
    this.items.clear();
    this.fresh.clear();
    this.counts.clear();
    this.owners.clear();
    for (const d of list) {
      const item = summary(d);
      if (this.items.has(item.name)) continue;
      this.items.set(item.name, item);
      this.fresh.add(item.name);
      bump(this.counts, item.state, 1);
      bump(this.owners, item.owner, 1);
    }
    this.order = [...this.items.keys()];
    this.sorted = false;
    this.matched = false;
  }

  /* A device added, or its summary reported (fresh): -> whether the list of names changed. */
  upsert(d) {
    const item = summary(d);
    const old = this.items.get(item.name);
    if (old) {
      this.setState(item.name, item.state);
      if (old.owner !== item.owner) {
        bump(this.owners, old.owner, -1);
        bump(this.owners, item.owner, 1);
        this.matched = false;
      }
      if (old.kind !== item.kind) this.matched = false;
      old.kind = item.kind;
      old.owner = item.owner;
      old.remote = item.remote;
      old.hay = item.hay;
      return false;
    }
    this.items.set(item.name, item);
    this.fresh.add(item.name);
    bump(this.counts, item.state, 1);
    bump(this.owners, item.owner, 1);
    this.order.push(item.name);
    this.sorted = false;
    this.matched = false;
    return true;
  }

  /* A state reported by the gateway just now (an event, a device stream's hello or status).
   * -> false for a device not listed (one removed meanwhile: its "removed" follows). */
  setState(name, state) {
    const d = this.items.get(name);
    if (!d || typeof state !== "string") return false;
    const before = this.stateOf(name);
    d.state = state;
    this.fresh.add(name);
    this.moved(before, state);
    return true;
  }

  remove(name) {
    const d = this.items.get(name);
    if (!d) return false;
    bump(this.counts, this.stateOf(name), -1);
    bump(this.owners, d.owner, -1);
    this.items.delete(name);
    this.fresh.delete(name);
    const i = this.order.indexOf(name);
    if (i >= 0) this.order.splice(i, 1);
    this.matched = false;
    return true;
  }

  /* The gateway is lost: no state is known until it reports again. */
  stale() {
    this.fresh.clear();
    this.counts.clear();
    if (this.items.size) this.counts.set(UNKNOWN, this.items.size);
    if (this.filter.state) this.matched = false;
  }

  /* A device's shown state went from `before` to `after`. */
  moved(before, after) {
    if (before === after) return;
    bump(this.counts, before, -1);
    bump(this.counts, after, 1);
    if (this.filter.state) this.matched = false;  // it may have entered or left the filter
  }

  /* {text, state, owner}: any of them; "" matches all. */
  setFilter({ text, state, owner }) {
    if (text !== undefined) this.filter.words = searchWords(text);
    if (state !== undefined) this.filter.state = state;
    if (owner !== undefined) this.filter.owner = owner;
    this.matched = false;
  }

  matches(name) {
    const d = this.items.get(name);
    const f = this.filter;
    if (!d) return false;
    if (f.state && this.stateOf(name) !== f.state) return false;
    if (f.owner && d.owner !== f.owner) return false;
    for (const w of f.words) if (!d.hay.includes(w)) return false;
    return true;
  }

  /* The names to list, in order. */
  visible() {
    if (!this.sorted) {
      this.order.sort(compareNames);
      this.sorted = true;
      this.matched = false;
    }
    if (!this.matched) {
      const f = this.filter;
      this.shown = f.words.length || f.state || f.owner ? this.order.filter((n) => this.matches(n)) : this.order.slice();
      this.matched = true;
    }
    return this.shown;
  }

  /* States with their counts: STATES first (also at 0), then any other the gateway
   * reports, then UNKNOWN. */
  stateCounts() {
    const out = STATES.map((s) => [s, this.counts.get(s) || 0]);
    for (const [s, n] of this.counts) if (n > 0 && !STATES.includes(s) && s !== UNKNOWN) out.push([s, n]);
    if (this.counts.get(UNKNOWN)) out.push([UNKNOWN, this.counts.get(UNKNOWN)]);
    return out;
  }

  /* [owner, devices] sorted by owner. */
  ownerCounts() {
    return [...this.owners].filter(([, n]) => n > 0).sort((a, b) => compareNames(a[0], b[0]));
  }
}

function bump(map, key, by) {
  const n = (map.get(key) || 0) + by;
  if (n > 0) map.set(key, n);
  else map.delete(key);
}
