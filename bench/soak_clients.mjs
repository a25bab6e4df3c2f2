// Soak load: N json-mode clients of one device, some of which reconnect every few
// seconds resuming with since=&run=. (soak.py holds the client that never reads: Node
// cannot shrink a socket's receive buffer, and Linux lets one grow to 32 MiB.) Checks every client's sequence numbers: a healthy client must see each
// line once, in order, across its reconnects.
// usage: node soak_clients.mjs WS_URL CLIENTS RECONNECTING SECONDS
// Prints one JSON line with the totals when SECONDS are over.
import { createRequire } from "node:module";

const require = createRequire(new URL("../tests/node/package.json", import.meta.url));
const WebSocket = require("ws");

const [url, clientsArg, reconnectingArg, secondsArg] = process.argv.slice(2);
const CLIENTS = Number(clientsArg), RECONNECTING = Number(reconnectingArg), SECONDS = Number(secondsArg);
const stats = [];

function client(i, reconnecting) {
  const s = { i, reconnecting, lines: 0, lost: 0, duplicated: 0, gaps: 0, reconnects: 0, errors: 0, lastSeq: null, run: null, first: null };
  stats.push(s);
  let ws = null;
  let stopped = false;
  const open = () => {
    const q = s.lastSeq === null ? "" : `&since=${s.lastSeq}&run=${s.run}`;
    ws = new WebSocket(`${url}?format=json${q}`);
    ws.on("message", (data) => {
      const msg = JSON.parse(data);
      if (msg.type === "hello") { s.run = msg.run; if (s.lastSeq === null) s.lastSeq = msg.seq; return; }
      if (msg.type === "gap") { s.gaps++; return; }
      if (msg.type !== "line") return;
      if (s.first === null) s.first = msg.seq;
      if (msg.seq <= s.lastSeq) s.duplicated++;
      else { s.lost += msg.seq - s.lastSeq - 1; s.lastSeq = msg.seq; s.lines++; }
    });
    ws.on("error", () => { s.errors++; });
    ws.on("close", () => {
      if (stopped) return;
      s.reconnects++;
      setTimeout(open, 50);  // resume with since=lastSeq: nothing may be missed
    });
  };
  open();
  if (reconnecting) {
    // Drop the connection every 2-5 s.
    const cycle = () => { if (!stopped) { ws.terminate(); setTimeout(cycle, 2000 + Math.random() * 3000); } };
    setTimeout(cycle, 2000 + Math.random() * 3000);
  }
  return () => { stopped = true; ws.close(); };
}

const stoppers = [];
for (let i = 0; i < CLIENTS; i++) stoppers.push(client(i, i < RECONNECTING));
setTimeout(() => {
  for (const stop of stoppers) stop();
  const healthy = stats.filter((s) => !s.reconnecting), moving = stats.filter((s) => s.reconnecting);
  const sum = (xs, k) => xs.reduce((a, s) => a + s[k], 0);
  console.log(JSON.stringify({
    clients: CLIENTS, reconnecting: RECONNECTING, seconds: SECONDS,
    lines_per_client_min: Math.min(...stats.map((s) => s.lines)),
    lines_per_client_max: Math.max(...stats.map((s) => s.lines)),
    lost_steady: sum(healthy, "lost"), lost_reconnecting: sum(moving, "lost"),
    duplicated: sum(stats, "duplicated"), gaps: sum(stats, "gaps"),
    reconnects: sum(stats, "reconnects"), errors: sum(stats, "errors"),
    node_cpu_seconds: process.cpuUsage().user / 1e6 + process.cpuUsage().system / 1e6,
  }));
  setTimeout(() => process.exit(0), 500);
}, SECONDS * 1000);
