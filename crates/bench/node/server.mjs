// A minimal Node socket.io 4.x server with the scenario surface of
// `switchboard-bench --proto socketio` (connect and fanout), to compare Switchboard's
// Socket.IO endpoint with the reference implementation on the same machine
// (scripts/bench-socketio.sh, docs/benchmarks.md).
//
//   SWITCHBOARD_JWT_SECRET=dev-secret node server.mjs 127.0.0.1:3000
//
// What it does, and no more:
// - WebSocket transport only (no long-polling, no upgrade), per-message deflate off
//   (socket.io's default), the HTTP request of each connection dropped once the
//   connection is open and `bufferutil` installed: the socket.io documentation's
//   performance tuning.
// - CONNECT: `auth.token` must be an HS256 JWT signed with SWITCHBOARD_JWT_SECRET
//   (node:crypto, no library), not expired, with a `sub`; else the connection is
//   refused with "Authentication failed". The socket then gets `connected`.
// - `join_room {roomId}`: joins the room (additive), answers `room_joined` (at most
//   100 members and peers listed, with totals) then `room_members` (at most 100), and
//   tells the room's others `user_joined_room` while it has at most 1,000 connections.
// - `send_message {roomId, content}` (with an ack): a member's message gets the room's
//   next offset and a random id and goes to the whole room, sender included, as
//   `new_message` {id, roomId, sender, content, type, metadata, timestamp, offset};
//   the ack is {ok: true, id, offset}. Refusals are {ok: false, error, code} (or an
//   `error` event without an ack).
// Nothing is stored: messages live only in flight (Switchboard commits each one to
// SQLite before its ack). One process, one thread for JavaScript.

import { createHmac, randomUUID, timingSafeEqual } from "node:crypto";
import { createServer } from "node:http";
import { Server } from "socket.io";

const listen = process.argv[2] ?? process.env.LISTEN ?? "127.0.0.1:3000";
const colon = listen.lastIndexOf(":");
const host = listen.slice(0, colon) || "127.0.0.1";
const port = Number(listen.slice(colon + 1));
const secret = process.env.SWITCHBOARD_JWT_SECRET ?? process.env.JWT_SECRET ?? "dev-secret";

const LIST_LIMIT = 100;
const ANNOUNCE_MAX = 1000;
const ROOM_ID = /^[A-Za-z0-9_.:@-]{1,128}$/;
const EPOCH = randomUUID();

/** The user of an HS256 token signed with `secret`, or null. */
function verify(token) {
  if (typeof token !== "string") return null;
  const parts = token.split(".");
  if (parts.length !== 3) return null;
  const [head, body, sig] = parts;
  try {
    const header = JSON.parse(Buffer.from(head, "base64url"));
    if (header.alg !== "HS256") return null;
    const expected = createHmac("sha256", secret).update(`${head}.${body}`).digest();
    const given = Buffer.from(sig, "base64url");
    if (given.length !== expected.length || !timingSafeEqual(given, expected)) return null;
    const claims = JSON.parse(Buffer.from(body, "base64url"));
    if (typeof claims.sub !== "string" || claims.sub === "") return null;
    if (typeof claims.exp === "number" && claims.exp * 1000 <= Date.now()) return null;
    return { id: claims.sub, username: typeof claims.username === "string" ? claims.username : claims.sub };
  } catch {
    return null;
  }
}

/** roomId -> { offset, sockets: Map<socketId, user>, users: Map<userId, connections> } */
const rooms = new Map();

const http = createServer((_req, res) => {
  res.writeHead(404).end();
});
const io = new Server(http, {
  transports: ["websocket"],
  serveClient: false,
  // Switchboard's defaults.
  pingInterval: 25_000,
  pingTimeout: 20_000,
  maxHttpBufferSize: 1_000_000,
});

io.engine.on("connection", (raw) => {
  raw.request = null;
});

io.use((socket, next) => {
  const user = verify(socket.handshake.auth?.token);
  if (!user) return next(new Error("Authentication failed"));
  socket.data.user = user;
  next();
});

io.on("connection", (socket) => {
  const user = socket.data.user;
  const joined = new Set();
  socket.emit("connected", { user, socketId: socket.id, clientId: socket.id, timestamp: Date.now() });

  const refuse = (ack, error, code) => {
    if (typeof ack === "function") ack({ ok: false, error, code });
    else socket.emit("error", { message: error, code, timestamp: Date.now() });
  };

  socket.on("join_room", (data, ack) => {
    const roomId = data?.roomId;
    if (typeof roomId !== "string" || !ROOM_ID.test(roomId)) return refuse(ack, "Invalid room ID", "INVALID_ROOM");
    let room = rooms.get(roomId);
    if (!room) {
      room = { offset: 0, sockets: new Map(), users: new Map() };
      rooms.set(roomId, room);
    }
    const fresh = !room.sockets.has(socket.id);
    const announce = fresh && room.sockets.size < ANNOUNCE_MAX;
    if (fresh) {
      room.sockets.set(socket.id, user);
      room.users.set(user.id, (room.users.get(user.id) ?? 0) + 1);
    }
    joined.add(roomId);
    socket.join(roomId);

    const users = new Map([[user.id, user]]);
    const peers = [];
    for (const [peerId, u] of room.sockets) {
      if (users.size < LIST_LIMIT && !users.has(u.id)) users.set(u.id, u);
      if (peerId !== socket.id && peers.length < LIST_LIMIT) peers.push({ peerId, user: u });
      if (users.size >= LIST_LIMIT && peers.length >= LIST_LIMIT) break;
    }
    const timestamp = Date.now();
    const members = [...users.values()];
    const reply = {
      roomId,
      timestamp,
      members,
      peers,
      memberCount: room.users.size,
      peerCount: room.sockets.size - 1,
      epoch: EPOCH,
      offset: room.offset,
    };
    socket.emit("room_joined", reply);
    if (typeof ack === "function") ack({ ok: true, ...reply });
    socket.emit("room_members", {
      roomId,
      members: members.map((u) => ({ ...u, status: "online", joinedAt: timestamp })),
    });
    if (announce) {
      socket.to(roomId).emit("user_joined_room", { user, roomId, peerId: socket.id, timestamp });
    }
  });

  socket.on("send_message", (data, ack) => {
    const roomId = data?.roomId;
    if (typeof roomId !== "string" || !ROOM_ID.test(roomId)) return refuse(ack, "Invalid room ID", "INVALID_ROOM");
    const room = rooms.get(roomId);
    if (!room || !room.sockets.has(socket.id)) return refuse(ack, "Not a member of the room", "NOT_IN_ROOM");
    if (data.content === undefined || data.content === null || data.content === "") {
      return refuse(ack, "Invalid payload: the message has no content", "INVALID_PAYLOAD");
    }
    const offset = ++room.offset;
    const id = randomUUID();
    io.to(roomId).emit("new_message", {
      id,
      roomId,
      sender: user,
      content: data.content,
      type: "text",
      metadata: {},
      timestamp: Date.now(),
      offset,
    });
    if (typeof ack === "function") ack({ ok: true, id, offset });
  });

  socket.on("disconnect", () => {
    for (const roomId of joined) {
      const room = rooms.get(roomId);
      if (!room) continue;
      room.sockets.delete(socket.id);
      const left = (room.users.get(user.id) ?? 1) - 1;
      if (left > 0) room.users.set(user.id, left);
      else room.users.delete(user.id);
      if (room.sockets.size === 0) rooms.delete(roomId);
    }
  });
});

http.listen(port, host, 4096, () => {
  console.log(`node socket.io server listening on ${host}:${port} (pid ${process.pid})`);
});

for (const signal of ["SIGINT", "SIGTERM"]) {
  process.on(signal, () => {
    io.close();
    process.exit(0);
  });
}
