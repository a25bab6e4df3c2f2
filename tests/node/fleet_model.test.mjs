// The page's fleet list as data (gateway/static/fleet_model.js), with no DOM: node --test.
// Run by tests/test_fleet_model.py.
import assert from "node:assert/strict";
import { test } from "node:test";

import { Fleet, UNKNOWN, compareNames, rowWindow, scrollToShow, searchWords } from "../../gateway/static/fleet_model.js";

const dev = (name, state = "connected", owner = "gw-a", kind = "sim") => ({ name, state, owner, kind, remote: owner !== "gw-a" });

function fleetOf(n) {
  const f = new Fleet();
  f.replace(Array.from({ length: n }, (_, i) => dev("dev-" + i)));
  return f;
}

test("names sort with their numbers, search words split and fold", () => {
  assert.deepEqual(["dev-10", "dev-2", "Dev-1", "alpha"].sort(compareNames), ["alpha", "Dev-1", "dev-2", "dev-10"]);
  assert.deepEqual(searchWords("  Lab  01 "), ["lab", "01"]);
  assert.deepEqual(searchWords(""), []);
});

test("the row window covers the viewport and its overscan, within the list", () => {
  assert.deepEqual(rowWindow(0, 480, 48, 1000, 4), [0, 14]);
  assert.deepEqual(rowWindow(4800, 480, 48, 1000, 4), [96, 114]);
  assert.deepEqual(rowWindow(48 * 995, 480, 48, 1000, 4), [991, 1000]);
  assert.deepEqual(rowWindow(0, 480, 48, 0, 4), [0, 0]);
  assert.deepEqual(rowWindow(-30, 100, 50, 3, 0), [0, 2]);
  // Scrolling into view: up to the row, down to show it whole, or not at all.
  assert.equal(scrollToShow(10, 1000, 480, 48), 480);
  assert.equal(scrollToShow(30, 0, 480, 48), 30 * 48 + 48 - 480);
  assert.equal(scrollToShow(5, 0, 480, 48), 0);
});

test("a list of 1000: sorted once, counted, filtered by words, state and owner", () => {
  const f = fleetOf(1000);
  assert.equal(f.size, 1000);
  assert.equal(f.visible()[0], "dev-0");
  assert.equal(f.visible()[999], "dev-999");
  assert.deepEqual(f.stateCounts(), [["connected", 1000], ["reconnecting", 0], ["disconnected", 0]]);
  f.setFilter({ text: "DEV-99" });
  assert.deepEqual(f.visible(), ["dev-99", "dev-990", "dev-991", "dev-992", "dev-993", "dev-994", "dev-995", "dev-996", "dev-997", "dev-998", "dev-999"]);
  f.setFilter({ text: "dev 5 0" });  // every word must match
  assert.ok(f.visible().every((n) => n.includes("5") && n.includes("0")));
  f.setFilter({ text: "" });
  f.setState("dev-7", "reconnecting");
  f.setState("dev-8", "external");  // a state the page does not know is counted too
  assert.deepEqual(f.stateCounts(), [["connected", 998], ["reconnecting", 1], ["disconnected", 0], ["external", 1]]);
  f.setFilter({ state: "reconnecting" });
  assert.deepEqual(f.visible(), ["dev-7"]);
  f.setState("dev-7", "connected");  // it leaves the filter by itself
  assert.deepEqual(f.visible(), []);
  f.setFilter({ state: "" });
  f.upsert(dev("far-1", "connected", "gw-b"));
  assert.deepEqual(f.ownerCounts(), [["gw-a", 1000], ["gw-b", 1]]);
  f.setFilter({ owner: "gw-b" });
  assert.deepEqual(f.visible(), ["far-1"]);
  assert.equal(f.get("far-1").remote, true);
});

test("added, removed, and events about devices it does not list", () => {
  const f = fleetOf(3);
  assert.equal(f.upsert(dev("dev-10", "disconnected")), true);
  assert.deepEqual(f.visible(), ["dev-0", "dev-1", "dev-2", "dev-10"]);
  assert.equal(f.upsert(dev("dev-10", "connected")), false);  // listed already: an update
  assert.deepEqual(f.stateCounts()[0], ["connected", 4]);
  assert.equal(f.remove("dev-1"), true);
  assert.equal(f.remove("dev-1"), false);
  assert.equal(f.setState("dev-1", "connected"), false);  // a removed device's late state
  assert.deepEqual(f.visible(), ["dev-0", "dev-2", "dev-10"]);
  assert.deepEqual(f.stateCounts()[0], ["connected", 3]);
  assert.equal(f.get("dev-0").remote, false);
  f.replace([{ name: "x" }]);  // missing fields: no state known, not remote
  assert.equal(f.stateOf("x"), UNKNOWN);
  assert.equal(f.get("x").remote, false);
});

test("a lost gateway: every state unknown until reported again", () => {
  const f = fleetOf(5);
  f.setFilter({ state: "connected" });
  assert.equal(f.visible().length, 5);
  f.stale();
  assert.deepEqual(f.stateCounts(), [["connected", 0], ["reconnecting", 0], ["disconnected", 0], [UNKNOWN, 5]]);
  assert.equal(f.stateOf("dev-0"), UNKNOWN);
  assert.deepEqual(f.visible(), []);  // none is known to be connected
  f.setState("dev-0", "connected");   // the open device's stream said so
  assert.deepEqual(f.stateCounts(), [["connected", 1], ["reconnecting", 0], ["disconnected", 0], [UNKNOWN, 4]]);
  f.replace(Array.from({ length: 5 }, (_, i) => dev("dev-" + i)));
  assert.deepEqual(f.stateCounts(), [["connected", 5], ["reconnecting", 0], ["disconnected", 0]]);
  f.remove("dev-0");
  f.stale();
  f.remove("dev-1");
  assert.deepEqual(f.stateCounts().at(-1), [UNKNOWN, 3]);
});

test("10,000 state changes and a filter over 1000 devices are quick", () => {
  const f = fleetOf(1000);
  f.setFilter({ state: "reconnecting" });
  const t0 = performance.now();
  for (let i = 0; i < 10000; i++) {
    f.setState("dev-" + (i % 1000), i % 3 ? "connected" : "reconnecting");
    if (i % 100 === 0) f.visible();  // a frame every 100 events
  }
  const took = performance.now() - t0;
  assert.ok(took < 500, took + " ms");
  console.log(`# 10,000 events over 1000 devices, 100 frames: ${took.toFixed(1)} ms`);
});
