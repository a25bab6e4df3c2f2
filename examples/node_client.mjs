#!/usr/bin/env node
// A json-mode client with Node's `ws`: requests with replies, then the device's lines.
//
//   cd examples && npm ci          # once: installs `ws` from package-lock.json
//   node examples/node_client.mjs                                   # ws://127.0.0.1:8765/ws/sim
//   node examples/node_client.mjs --send "GET temp" --send PING --count 2
//   GATEWAY_WS=ws://127.0.0.1:8765/ws/esp node examples/node_client.mjs
//
// Each --send line goes as a request ({"line", "id", "reply": true}): the device's next
// line comes back to this client as {"type": "reply"} (printed `reply ID: LINE`), and to
// every client as a normal line (printed `SEQ LINE`). With --count N it closes after N
// device lines; without, it runs until stopped, reconnecting 0.5 s doubling to 5 s.
import WebSocket from "ws";

let url = process.env.GATEWAY_WS || "ws://127.0.0.1:8765/ws/sim";
let count = 0;
const send = [];
const args = process.argv.slice(2);
for (let i = 0; i < args.length; i++) {
  if (args[i] === "--send") send.push(args[++i]);
  else if (args[i] === "--count") count = Number(args[++i]);
  else if (args[i].startsWith("-")) { console.error(`unknown option ${args[i]}`); process.exit(2); }
  else url = args[i];
}

let lines = 0;
let delay = 500;
let done = false;

function connect() {
  const target = new URL(url);
  target.searchParams.set("format", "json");
  const ws = new WebSocket(target);

  ws.on("open", () => {
    delay = 500;
    send.forEach((line, i) => ws.send(JSON.stringify({ line, id: i + 1, reply: true, timeout: 2 })));
  });
  ws.on("message", (data) => {
    const msg = JSON.parse(data);
    if (msg.type === "reply") console.log(`reply ${msg.id}: ${msg.line}`);
    else if (msg.type === "error") console.log(`# error ${msg.id}: ${msg.error}`);
    else if (msg.type === "status") console.log(`# device ${msg.state}`);
    else if (msg.type === "line") {
      console.log(`${msg.seq} ${msg.line}`);
      if (count && ++lines >= count) { done = true; ws.close(1000, "done"); }
    }
  });
  ws.on("error", (err) => console.error(`# ${err.message}`)); // "close" follows
  ws.on("close", (code) => {
    if (done) return; // nothing else keeps Node running: it exits
    console.log(`# closed (${code}); connecting again in ${delay / 1000} s`);
    setTimeout(connect, delay);
    delay = Math.min(delay * 2, 5000);
  });
}

connect();
