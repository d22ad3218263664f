// Origin app behind Pushpin for herald-bench, on Node.js, no dependencies.
//
// Pushpin holds the clients' WebSockets and turns what happens on them into
// HTTP requests to this origin (WebSocket-over-HTTP); publishing goes to
// Pushpin's control API directly and never touches the origin. The origin
// only decides what each connection is subscribed to, with the same shape as
// the other targets:
//   client "sub <channel>"   -> GRIP subscribe, then "ok <channel>" to the client
//   client "unsub <channel>" -> GRIP unsubscribe
// Loopback only; prints "address=HOST:PORT" on stderr when listening.
"use strict";
const { createServer } = require("http");

// Events are `NAME[ HEXLEN]\r\n[CONTENT\r\n]`, one after another.
function parseEvents(body) {
  const events = [];
  let at = 0;
  while (at < body.length) {
    const lineEnd = body.indexOf("\r\n", at);
    if (lineEnd < 0) break;
    const [name, hexLength] = body.toString("latin1", at, lineEnd).split(" ");
    at = lineEnd + 2;
    let content = null;
    if (hexLength !== undefined) {
      const length = parseInt(hexLength, 16);
      content = body.toString("utf8", at, at + length);
      at += length + 2;
    }
    events.push({ name, content });
  }
  return events;
}

function textEvent(text) {
  return `TEXT ${Buffer.byteLength(text).toString(16)}\r\n${text}\r\n`;
}

// With the GRIP extension, "c:" marks control messages and "m:" messages for
// the client (unprefixed ones are dropped).
function control(type, channel) {
  return textEvent("c:" + JSON.stringify({ type, channel }));
}

function answer(events) {
  let out = "";
  for (const { name, content } of events) {
    if (name === "OPEN") {
      out += "OPEN\r\n";
    } else if (name === "TEXT" && content !== null) {
      const [verb, channel] = content.split(" ");
      if (verb === "sub" && channel) {
        out += control("subscribe", channel) + textEvent(`m:ok ${channel}`);
      } else if (verb === "unsub" && channel) {
        out += control("unsubscribe", channel);
      }
    } else if (name === "CLOSE") {
      out += "CLOSE\r\n";
    }
  }
  return out;
}

const server = createServer((request, response) => {
  const chunks = [];
  request.on("data", (chunk) => chunks.push(chunk));
  request.on("end", () => {
    const body = answer(parseEvents(Buffer.concat(chunks)));
    response.writeHead(200, {
      "Content-Type": "application/websocket-events",
      "Sec-WebSocket-Extensions": "grip",
    });
    response.end(body);
  });
});

server.keepAliveTimeout = 60_000;
server.listen(0, "127.0.0.1", () => {
  const { address, port } = server.address();
  console.error(`pushpin origin listening address=${address}:${port}`);
});
