// Drives official socket.io-client sockets for the Rust end-to-end tests.
//
// Commands arrive on stdin, one JSON object per line; everything the sockets see goes
// to stdout, one JSON object per line. Each socket has a test-chosen `id`.
//   {op: "connect", id, url, opts}          -> {id, event: "connect", sid, recovered}
//                                              or {id, event: "connect_error", message}
//   {op: "emit", id, event, args, ack: tag} -> every event: {id, event, args}
//                                              an ack:     {id, ack: tag, args}
//                                          (binary: true adds a Buffer to the first argument)
//   {op: "drop", id}      closes the engine without telling the server's sockets
//                         (a network blip: the client reconnects by itself)
//   {op: "disconnect", id} ends the socket for good
//   {op: "exit"}
// Disconnects report {id, event: "disconnect", reason}.
import { io } from "socket.io-client";
import { createInterface } from "node:readline";

const sockets = new Map();
const out = (o) => process.stdout.write(JSON.stringify(o) + "\n");

function connect({ id, url, opts }) {
  const socket = io(url, { forceNew: true, reconnectionDelay: 100, reconnectionDelayMax: 200, ...opts });
  sockets.set(id, socket);
  socket.io.on("open", () => {
    socket.io.engine.once("upgrade", (t) => out({ id, event: "upgrade", transport: t.name }));
  });
  socket.on("connect", () => {
    out({ id, event: "connect", sid: socket.id, recovered: socket.recovered,
          transport: socket.io.engine.transport.name });
  });
  socket.on("connect_error", (err) => out({ id, event: "connect_error", message: err.message }));
  socket.on("disconnect", (reason) => out({ id, event: "disconnect", reason }));
  socket.onAny((event, ...args) => out({ id, event, args }));
}

function emit({ id, event, args = [], ack, binary }) {
  const socket = sockets.get(id);
  if (binary) args = [{ ...args[0], blob: Buffer.from([1, 2, 3]) }, ...args.slice(1)];
  if (ack === undefined) {
    socket.emit(event, ...args);
  } else {
    socket.emit(event, ...args, (...res) => out({ id, ack, args: res }));
  }
}

const rl = createInterface({ input: process.stdin });
rl.on("line", (line) => {
  const cmd = JSON.parse(line);
  switch (cmd.op) {
    case "connect": connect(cmd); break;
    case "emit": emit(cmd); break;
    case "raw": sockets.get(cmd.id).io.engine.write(cmd.data); break;
    case "drop": sockets.get(cmd.id).io.engine.close(); break;
    case "disconnect": sockets.get(cmd.id).disconnect(); break;
    case "exit": for (const s of sockets.values()) s.disconnect(); process.exit(0);
  }
});
rl.on("close", () => process.exit(0));
