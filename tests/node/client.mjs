// A WebSocket client nobody here wrote (Node's `ws`), driven by the end-to-end tests.
// usage: node client.mjs URL COUNT [LINE ...]
// Sends each LINE once open, collects COUNT messages, closes normally (1000), and
// prints {"messages": [...], "closeCode": N, "protocol": P} as one JSON line.
// With COUNT = -1 it never closes itself: it waits for the server to close.
import WebSocket from "ws";

const [url, countArg, ...lines] = process.argv.slice(2);
const count = Number(countArg);
const messages = [];
const ws = new WebSocket(url, process.env.WS_PROTOCOL ? [process.env.WS_PROTOCOL] : []);
const timer = setTimeout(() => { console.error("timeout"); process.exit(3); }, 20000);

ws.on("open", () => { for (const line of lines) ws.send(line); });
ws.on("message", (data, isBinary) => {
  messages.push(isBinary ? { binary: Buffer.from(data).toString("base64") } : data.toString());
  if (count >= 0 && messages.length === count) ws.close(1000, "done");
});
ws.on("close", (code) => {
  clearTimeout(timer);
  console.log(JSON.stringify({ messages, closeCode: code, protocol: ws.protocol }));
});
ws.on("error", (err) => { console.error(String(err)); process.exit(2); });
