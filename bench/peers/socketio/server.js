// Socket.IO 4 peer for herald-bench, on Node.js. Same shape as the other
// targets: "sub" joins a room named after the subject (acknowledged), "unsub"
// leaves it, "pub" emits "msg" with the payload to the room, "sync" is
// acknowledged once everything before it was handled. WebSocket
// transport only, loopback only; prints "address=HOST:PORT" when listening.
"use strict";
const { createServer } = require("http");
const { Server } = require("socket.io");

const httpServer = createServer();
const io = new Server(httpServer, {
  transports: ["websocket"],
  serveClient: false,
  maxHttpBufferSize: 1e6,
});

io.on("connection", (socket) => {
  socket.on("sub", (subject, ack) => {
    socket.join(subject);
    if (typeof ack === "function") ack();
  });
  socket.on("unsub", (subject) => socket.leave(subject));
  socket.on("pub", (subject, data) => io.to(subject).emit("msg", data));
  // Handlers run in arrival order: the ack proves earlier "pub"s were emitted.
  socket.on("sync", (ack) => {
    if (typeof ack === "function") ack();
  });
});

httpServer.listen(0, "127.0.0.1", () => {
  const { address, port } = httpServer.address();
  console.error(`socket.io listening address=${address}:${port}`);
});
