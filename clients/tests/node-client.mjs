// The client in Node (no browser): run by e2e.mjs in a child process, with
// `--experimental-websocket` where Node 20 needs it for a global WebSocket.
//
//   node --experimental-websocket node-client.mjs <herald-url> <token> <transport>
//
// Subscribes, publishes, reads history over the given transport, then
// prints one JSON line with what it saw.

import { Herald } from "../js/dist/index.js";

const [url, token, transport] = process.argv.slice(2);
const herald = new Herald(url, { token, transports: [transport], pollWait: 2_000 });
const received = [];
const subscription = herald.subscribe("chat.general", (message) => received.push(message.data));
await subscription.ready;
const position = await herald.publish("chat.general", { id: `node-${transport}`, user: "node", name: "Node", text: `from node over ${transport}` });
while (!received.some((data) => data?.id === `node-${transport}`)) await new Promise((r) => setTimeout(r, 20));
const history = await herald.history("chat.general", { limit: 5 });
const refused = await herald
  .subscribe("chat.staff", () => {})
  .ready.then(() => null, (error) => error.code);
console.log(JSON.stringify({ transport: herald.state.transport, position, received: received.length, history: history.messages.length, refused }));
herald.close();
