// The benchmark's load client: Node's `ws` (with bufferutil) or a plain TCP socket.
// usage: node client.mjs '<json spec>'   (bench/perf/run.py writes the spec)
//
// spec: {workload: "w1"|"w2"|"w3"|"w4"|"w5"|"request", kind: "raw"|"gateway"|"websocketd"|"websockify",
//        host, port, path, ...workload parameters}
// Talks to run.py through stdout (one JSON object per line: {"event": ...}) and stdin (one
// line to go on after a "pause" event). Every loop is bounded in count and in time.
//
// How each kind carries lines:
//   gateway, websocketd  a text frame is one line (the server adds and strips the "\n")
//   websockify           binary frames of raw TCP bytes: we send "line\n" and split what
//                        comes back on "\n" ourselves (its frames are TCP reads, not lines)
//   raw                  the device's TCP socket itself: the ceiling
import net from "node:net";
import readline from "node:readline";
import { Worker, isMainThread, parentPort, workerData } from "node:worker_threads";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const WebSocket = require("ws");
let bufferutil = false;
try { require("bufferutil"); bufferutil = !process.env.WS_NO_BUFFER_UTIL; } catch { /* reported */ }

const spec = isMainThread ? JSON.parse(process.argv[2]) : workerData.spec;
const NL = 10;

function emit(obj) { process.stdout.write(JSON.stringify(obj) + "\n"); }

const stdinWaiters = [];
let stdinLines = null;
if (isMainThread) {
  stdinLines = readline.createInterface({ input: process.stdin });
  stdinLines.on("line", (line) => { const w = stdinWaiters.shift(); if (w) w(line); });
}
function pause(name, extra = {}) {  // resolves with run.py's answer line (W5: a JSON object)
  return new Promise((resolve) => { stdinWaiters.push(resolve); emit({ event: "pause", name, ...extra }); });
}
// run.py samples the servers' CPU at each mark; we wait for its word, so a per-client
// server process (websockify, websocketd) is still there when it looks.
function mark(name) {
  return new Promise((resolve) => {
    stdinWaiters.push(resolve);
    emit({ event: "mark", name, cpu: process.cpuUsage(), t: performance.now() });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// A connection that hands complete lines (Buffers without "\n") to onLine; `path`: W5's
// clients each have their own device.
function connect(onLine, path = spec.path) {
  return new Promise((resolve, reject) => {
    const conn = { onLine, open: false, closed: false };
    const streamKind = spec.kind === "raw" || spec.kind === "websockify";
    let rest = null;
    const onChunk = (buf) => {
      let start = 0;
      if (rest !== null) { buf = Buffer.concat([rest, buf]); rest = null; }
      for (;;) {
        const nl = buf.indexOf(NL, start);
        if (nl < 0) break;
        conn.onLine(buf.subarray(start, nl));
        start = nl + 1;
      }
      if (start < buf.length) rest = Buffer.from(buf.subarray(start));
    };
    if (spec.kind === "raw") {
      const sock = net.connect({ port: spec.port, host: spec.host, noDelay: true });
      let pending = [];
      let scheduled = false;
      const flush = () => { scheduled = false; const d = pending.join(""); pending = []; sock.write(d); };
      conn.send = (line) => {  // lines sent in one tick go out in one write
        pending.push(line + "\n");
        if (!scheduled) { scheduled = true; process.nextTick(flush); }
      };
      conn.close = () => sock.destroy();
      sock.on("connect", () => { sock.setNoDelay(true); conn.open = true; resolve(conn); });
      sock.on("data", onChunk);
      sock.on("error", (e) => { if (!conn.open) reject(e); });
      sock.on("close", () => { conn.closed = true; });
      return;
    }
    const url = `ws://${spec.host}:${spec.port}${path || "/"}`;
    const ws = new WebSocket(url, spec.kind === "websockify" ? ["binary"] : [], { perMessageDeflate: false });
    let corked = false;
    const uncork = () => { corked = false; ws._socket.uncork(); };
    const cork = () => {  // frames sent in one tick go out in one write
      if (!corked && ws._socket) { corked = true; ws._socket.cork(); process.nextTick(uncork); }
    };
    if (streamKind) {
      conn.send = (line) => { cork(); ws.send(Buffer.from(line + "\n"), { binary: true }); };
      ws.on("message", (data) => onChunk(data));
    } else {
      conn.send = (line) => { cork(); ws.send(line, { binary: false }); };
      ws.on("message", (data) => conn.onLine(data));
    }
    conn.close = () => ws.terminate();
    ws.on("open", () => {
      conn.open = true;
      ws._socket.setNoDelay(true);
      resolve(conn);
    });
    ws.on("error", (e) => { if (!conn.open) reject(e); else conn.error = String(e); });
    ws.on("close", (code) => { conn.closed = true; conn.closeCode = code; });
  });
}

// Open `n` connections, at most `parallel` handshakes at a time, within `deadline` ms.
async function openMany(n, makeOnLine, parallel, deadlineMs, pathOf = () => spec.path) {
  const conns = new Array(n);
  let next = 0, failed = 0;
  const until = performance.now() + deadlineMs;
  async function worker() {
    while (next < n && performance.now() < until) {
      const i = next++;
      for (let attempt = 0; attempt < 3; attempt++) {
        try { conns[i] = await connect(makeOnLine(i), pathOf(i)); break; } catch (e) {
          if (attempt === 2) { failed++; conns[i] = null; } else await sleep(50);
        }
      }
    }
  }
  await Promise.all(Array.from({ length: Math.min(parallel, n) }, worker));
  return { conns, failed };
}

function percentile(sorted, p) {
  if (!sorted.length) return null;
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))];
}

function waitUntil(cond, timeoutMs, poll = 5) {
  const until = performance.now() + timeoutMs;
  return new Promise((resolve) => {
    const tick = () => {
      if (cond()) resolve(true);
      else if (performance.now() > until) resolve(false);
      else setTimeout(tick, poll);
    };
    tick();
  });
}

// W1: one client, one 20-byte line, send and wait.
async function w1() {
  let waiter = null;
  const conn = await connect(() => { const w = waiter; waiter = null; if (w) w(); });
  const roundTrip = (i) => new Promise((resolve) => {
    waiter = resolve;
    conn.send(`ping-${String(i).padStart(15, "0")}`);  // 20 bytes
  });
  const timeout = spec.seconds * 1000;
  for (let i = 0; i < spec.warmup; i++) await roundTrip(i);
  const lat = new Float64Array(spec.count);
  await mark("start");
  const t0 = performance.now();
  let n = 0;
  for (; n < spec.count && performance.now() - t0 < timeout; n++) {
    const s = performance.now();
    await roundTrip(n);
    lat[n] = performance.now() - s;
  }
  const elapsed = (performance.now() - t0) / 1000;
  await mark("stop");
  const sorted = Array.from(lat.subarray(0, n)).sort((a, b) => a - b);
  conn.close();
  return { round_trips: n, rate: n / elapsed, p50_ms: percentile(sorted, 0.5), p99_ms: percentile(sorted, 0.99), seconds: elapsed };
}

// W2: one client, `count` messages with at most `window` unanswered.
async function w2() {
  let received = 0, sent = 0, done = null;
  const total = spec.count, window = spec.window;
  const fill = () => {
    while (sent < total && sent - received < window) conn.send(`msg-${String(sent++).padStart(15, "0")}`);
  };
  const conn = await connect(() => {
    received++;
    if (received === total) { if (done) done(); } else fill();
  });
  await mark("start");
  const t0 = performance.now();
  const finished = new Promise((resolve) => { done = resolve; });
  fill();
  await Promise.race([finished, sleep(spec.seconds * 1000)]);
  const elapsed = (performance.now() - t0) / 1000;
  await mark("stop");
  conn.close();
  return { messages: received, complete: received === total, rate: received / elapsed, seconds: elapsed };
}

// The number after "t=" in a burst line, or -1.
function lineNumber(buf) {
  if (buf.length < 3 || buf[0] !== 116 || buf[1] !== 61) return -1;  // "t="
  let v = 0;
  for (let i = 2; i < buf.length; i++) {
    const c = buf[i];
    if (c === 32) return v;
    v = v * 10 + (c - 48);
  }
  return v;
}

// W3: `clients` clients; one "GO n" burst each must receive. A gateway fans one device
// stream out to all of them (one GO); the others have no fan-out: each client drives its
// own device connection with its own GO. The clients are spread over `workers` threads
// (one per core by default) so that the load client is not what limits the rate.
const now = () => performance.timeOrigin + performance.now();  // ms, comparable across threads

async function w3() {
  const workers = Math.max(1, Math.min(spec.workers || 1, spec.clients));
  const shared = spec.kind === "gateway";
  const ws = [];
  const inbox = [];  // messages from workers, in arrival order
  let wake = null;
  const next = (type) => new Promise((resolve) => {
    const look = () => {
      const i = inbox.findIndex((m) => m.type === type);
      if (i >= 0) resolve(inbox.splice(i, 1)[0]); else wake = look;
    };
    look();
  });
  const collect = async (type) => { const out = []; for (let i = 0; i < workers; i++) out.push(await next(type)); return out; };
  for (let w = 0; w < workers; w++) {
    const indices = [];
    for (let i = w; i < spec.clients; i += workers) indices.push(i);
    const worker = new Worker(new URL(import.meta.url), { workerData: { spec, indices, leader: w === 0 } });
    worker.on("message", (m) => { inbox.push(m); const f = wake; wake = null; if (f) f(); });
    worker.on("error", (e) => { inbox.push({ type: "error", error: String(e) }); const f = wake; wake = null; if (f) f(); });
    ws.push(worker);
  }
  const opened = await collect("opened");
  const failed = opened.reduce((a, m) => a + m.failed, 0);
  // Every client must be attached before the burst: the gateway's echo of one sync line
  // reaches all of its clients; elsewhere each client syncs its own connection.
  for (const w of ws) w.postMessage({ type: "sync" });
  const synced = (await collect("synced")).every((m) => m.ok);
  await mark("start");
  const t0 = now();
  for (const w of ws) w.postMessage({ type: "go", t0 });
  const done = await collect("done");
  await mark("stop");
  for (const w of ws) w.postMessage({ type: "close" });
  const lastLine = Math.max(...done.map((m) => m.lastLine));
  const elapsed = ((lastLine > 0 ? lastLine : now()) - t0) / 1000;
  const sum = (k) => done.reduce((a, m) => a + m[k], 0);
  const delivered = sum("delivered");
  return {
    clients: spec.clients, workers, failed, synced, complete: delivered === spec.clients * spec.lines,
    delivered, rate: delivered / elapsed, seconds: elapsed, lost: sum("lost"), duplicated: sum("dup"),
    reordered: sum("reordered"), max_lost_per_client: Math.max(...done.map((m) => m.maxLost)),
    closed_early: sum("closedEarly"), fanout: shared,
  };
}

// One W3 worker thread: its share of the clients.
async function w3worker({ indices, leader }) {
  const n = spec.lines, shared = spec.kind === "gateway";
  const sync = `sync-${process.pid}-${spec.port}`;
  const stats = [];
  let lastLine = 0;
  const makeOnLine = (i) => {
    const s = { seen: new Uint8Array(n + 1), unique: 0, dup: 0, reordered: 0, max: 0, synced: false };
    stats[i] = s;
    return (buf) => {
      const k = lineNumber(buf);
      if (k < 1 || k > n) {
        if (buf.length === sync.length && buf.toString() === sync) s.synced = true;
        return;
      }
      if (s.seen[k]) { s.dup++; return; }
      s.seen[k] = 1;
      s.unique++;
      if (k < s.max) s.reordered++; else s.max = k;
      lastLine = now();
    };
  };
  const { conns, failed } = await openMany(indices.length, makeOnLine, 50, 30000);
  const live = conns.filter(Boolean);
  const port = parentPort;
  const message = (type) => new Promise((resolve) => {
    const on = (m) => { if (m.type === type) { port.off("message", on); resolve(m); } };
    port.on("message", on);
  });
  port.postMessage({ type: "opened", failed });
  await message("sync");
  if (!shared) for (const c of live) c.send(sync);
  else if (leader && live.length) live[0].send(sync);
  const ok = await waitUntil(() => stats.every((s) => s.synced), 10000);
  port.postMessage({ type: "synced", ok });
  await message("go");
  if (!shared) for (const c of live) c.send(`GO ${n}`);
  else if (leader && live.length) live[0].send(`GO ${n}`);
  const expect = indices.length * n;
  let lastTotal = -1, lastChange = performance.now();
  await waitUntil(() => {
    let total = 0;
    for (const s of stats) total += s.unique;
    const t = performance.now();
    if (total !== lastTotal) { lastTotal = total; lastChange = t; }
    return total === expect || t - lastChange > 5000;  // done, or nothing new for 5 s
  }, spec.seconds * 1000, 2);
  let delivered = 0, lost = 0, dup = 0, reordered = 0, maxLost = 0;
  for (const s of stats) {
    delivered += s.unique; dup += s.dup; reordered += s.reordered;
    lost += n - s.unique; maxLost = Math.max(maxLost, n - s.unique);
  }
  port.postMessage({ type: "done", delivered, lost, dup, reordered, maxLost, lastLine,
                     closedEarly: live.filter((c) => c.closed).length });
  await message("close");
  for (const c of live) c.close();
}

// W4: `clients` idle connections held `hold` s; then each of `senders` of them sends one
// line and must get it back (through a gateway every client gets every echo).
async function w4() {
  const got = [];
  const tags = [];
  const makeOnLine = (i) => {
    got[i] = 0;
    tags[i] = `idle-${String(i).padStart(15, "0")}`;
    return (buf) => { if (buf.length === 20 && buf.toString() === tags[i]) got[i] = 1; else got[i] |= 2; };
  };
  const t0 = performance.now();
  const { conns, failed } = await openMany(spec.clients, makeOnLine, spec.parallel || 100, spec.connect_seconds * 1000);
  const opened = conns.filter(Boolean).length;
  const connectSeconds = (performance.now() - t0) / 1000;
  await sleep(spec.hold * 1000);
  const closedIdle = conns.filter((c) => c && c.closed).length;
  await pause("idle", { opened });
  const every = Math.max(1, Math.floor(spec.clients / spec.senders));
  const senders = [];
  for (let i = 0; i < spec.clients; i += every) if (conns[i] && !conns[i].closed) senders.push(i);
  await mark("start");
  const t1 = performance.now();
  for (const i of senders) conns[i].send(tags[i]);
  const echoed = await waitUntil(() => senders.every((i) => got[i] & 1), spec.seconds * 1000, 10);
  const echoSeconds = (performance.now() - t1) / 1000;
  await mark("stop");
  const answered = senders.filter((i) => got[i] & 1).length;
  // Through a fan-out every held connection also sees the others' echoes.
  const hearing = got.filter((g) => g & 3).length;
  await pause("echoed");
  const alive = conns.filter((c) => c && !c.closed).length;
  for (const c of conns) if (c) c.close();
  return { clients: spec.clients, opened, failed, connect_seconds: connectSeconds, closed_while_idle: closedIdle,
           senders: senders.length, answered, echoed, echo_seconds: echoSeconds, hearing, alive };
}

// W5: one json client per device (`devices` of them, /ws/dev<i>?format=json). Once every
// client has its hello, "pause opened": run.py has each device send one line a second
// ("t=<k> v=<i>.<...>", k = 1, 2, ... per device) and answers with what each device sent,
// {"sent": [...]}; each client must then hold lines 1..sent[i] of its own device, each once,
// in order (waiting at most `seconds` s for the last ones).
// W6 (fleet.py) adds: `latency`: lines carry " ns=<CLOCK_MONOTONIC ns>" stamped by the
// device as it wrote them, and each client takes the delay on arrival (process.hrtime is
// CLOCK_MONOTONIC too; same machine); `events_path`: one more client, on /ws/_events,
// counting what it hears; `paths`: the clients' paths, when not path_prefix + i.
const STAMP = / ns=(\d+)/;

async function w5() {
  const n = spec.devices, most = spec.max_lines;
  const stats = [];
  const delays = [];  // ms, device write to client arrival (W6)
  const slowAt = {};  // second k: how many of its lines took 50 ms or more
  const makeOnLine = (i) => {
    const s = { hello: false, seen: new Uint8Array(most + 2), unique: 0, dup: 0, reordered: 0, max: 0,
                foreign: 0, beyond: 0, other: 0 };
    stats[i] = s;
    return (buf) => {
      const arrived = spec.latency ? process.hrtime.bigint() : 0n;
      let msg;
      try { msg = JSON.parse(buf); } catch { s.other++; return; }
      if (msg.type === "hello") { s.hello = true; return; }
      if (msg.type !== "line") { if (msg.type !== "status") s.other++; return; }
      const m = /^t=(\d+) v=(\d+)\./.exec(msg.line);
      if (!m) { s.other++; return; }
      const k = Number(m[1]);
      if (Number(m[2]) !== i) { s.foreign++; return; }
      if (k < 1 || k > most) { s.beyond++; return; }
      if (s.seen[k]) { s.dup++; return; }
      s.seen[k] = 1;
      s.unique++;
      if (k < s.max) s.reordered++; else s.max = k;
      if (spec.latency) {
        const t = STAMP.exec(msg.line);
        if (t) {
          const d = Number(arrived - BigInt(t[1])) / 1e6;
          delays.push(d);
          if (d >= 50) slowAt[k] = (slowAt[k] || 0) + 1;
        }
      }
    };
  };
  const events = { opened: false, messages: 0, types: {} };
  let eventsConn = null;
  if (spec.events_path) {  // a gateway without it (an old core) is still measured
    try {
      eventsConn = await connect((buf) => {
        events.messages++;
        try { const t = JSON.parse(buf).type; events.types[t] = (events.types[t] || 0) + 1; } catch { /* counted */ }
      }, spec.events_path);
      events.opened = true;
    } catch (e) {
      events.error = String(e);
    }
  }
  const t0 = performance.now();
  const pathOf = spec.paths ? (i) => `${spec.paths[i]}?format=json` : (i) => `${spec.path_prefix}${i}?format=json`;
  const { conns, failed } = await openMany(n, makeOnLine, spec.parallel || 100, spec.connect_seconds * 1000, pathOf);
  const opened = conns.filter(Boolean).length;
  const connectSeconds = (performance.now() - t0) / 1000;
  const hellos = await waitUntil(() => stats.every((s) => s.hello), 10000, 20);
  const answer = JSON.parse(await pause("opened", { opened, hellos }));
  const sent = answer.sent || [];
  const complete = await waitUntil(() => stats.every((s, i) => s.unique >= (sent[i] || 0)), spec.seconds * 1000, 20);
  let lost = 0, dup = 0, reordered = 0, delivered = 0, foreign = 0, beyond = 0, other = 0, maxLost = 0;
  const lostAt = [];  // the first few lines missing, "devI:t=K/SENT"
  for (let i = 0; i < n; i++) {
    const s = stats[i], want = Math.min(sent[i] || 0, most);
    let got = 0;
    for (let k = 1; k <= want; k++) { got += s.seen[k]; if (!s.seen[k] && lostAt.length < 10) lostAt.push(`dev${i}:t=${k}/${want}`); }
    const l = want - got;
    lost += l; maxLost = Math.max(maxLost, l);
    beyond += s.unique - got + s.beyond;  // lines numbered past what the device sent
    dup += s.dup; reordered += s.reordered; delivered += s.unique;
    foreign += s.foreign; other += s.other;
  }
  const alive = conns.filter((c) => c && !c.closed).length;
  for (const c of conns) if (c) c.close();
  const out = { devices: n, opened, failed, connect_seconds: connectSeconds, hellos, complete, delivered,
                expected: sent.reduce((a, b) => a + b, 0), lost, duplicated: dup, reordered, max_lost_per_client: maxLost,
                foreign, beyond, other, alive, lost_at: lostAt };
  if (spec.latency) {
    const sorted = Float64Array.from(delays).sort();
    Object.assign(out, { stamped: sorted.length, p50_ms: percentile(sorted, 0.5), p99_ms: percentile(sorted, 0.99),
                         max_ms: sorted.length ? sorted[sorted.length - 1] : null, slow_at: slowAt });
  }
  if (eventsConn) {
    Object.assign(out, { events_alive: !eventsConn.closed, events_messages: events.messages, events_types: events.types });
    eventsConn.close();
  } else if (events.error) {
    out.events_error = events.error;
  }
  return out;
}

// W6 request: one json client on `path` sends `count` lines one at a time, each with
// "reply": true, and waits for its reply (a device that echoes): round trip ms, p50, p99.
async function request() {
  let waiting = null;
  const replies = { ok: 0, failed: 0, errors: [] };
  const conn = await connect((buf) => {
    let msg;
    try { msg = JSON.parse(buf); } catch { return; }
    if (waiting && msg.id === waiting.id && (msg.type === "reply" || msg.type === "error")) {
      const w = waiting; waiting = null; w.resolve(msg);
    }
  }, `${spec.path}?format=json`);
  const rtt = [];
  const t0 = performance.now();
  for (let k = 1; k <= spec.count && performance.now() - t0 < spec.seconds * 1000; k++) {
    const line = `PING ${k} ${spec.tag || ""}`.trim();
    const s = performance.now();
    const msg = await new Promise((resolve) => {
      waiting = { id: k, resolve };
      conn.send(JSON.stringify({ line, id: k, reply: true, timeout: spec.timeout || 5 }));
      setTimeout(() => { if (waiting && waiting.id === k) { waiting = null; resolve({ type: "timeout" }); } },
                 (spec.timeout || 5) * 1000 + 1000);
    });
    if (msg.type === "reply" && msg.line === line) { replies.ok++; rtt.push(performance.now() - s); }
    else {
      replies.failed++;
      if (replies.errors.length < 5) replies.errors.push(msg.type === "error" ? msg.error : msg.type === "reply" ? `reply ${msg.line}` : msg.type);
    }
  }
  conn.close();
  const sorted = Float64Array.from(rtt).sort();
  return { sent: replies.ok + replies.failed, replies: replies.ok, failed: replies.failed, errors: replies.errors, p50_ms: percentile(sorted, 0.5),
           p99_ms: percentile(sorted, 0.99), max_ms: sorted.length ? sorted[sorted.length - 1] : null };
}

const workloads = { w1, w2, w3, w4, w5, request };
if (isMainThread) {
  const overall = setTimeout(() => { emit({ event: "error", error: "client time limit" }); process.exit(3); }, spec.limit * 1000);
  try {
    const result = await workloads[spec.workload]();
    emit({ event: "result", bufferutil, ...result });
  } catch (e) {
    emit({ event: "error", error: String(e && e.stack || e) });
  }
  clearTimeout(overall);
  stdinLines.close();
  setTimeout(() => process.exit(0), 100);
} else {
  await w3worker(workerData);
  process.exit(0);
}
