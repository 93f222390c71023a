// The example of docs/socketio.md, run by the test suite (tests/socketio.rs):
//   node example.mjs http://localhost:8080 <JWT>
// Connects with the official client, joins `general`, sends a message, prints what
// it sees and exits once the message has come back and is acknowledged.
import { io } from "socket.io-client";

const [url, token] = process.argv.slice(2);
const socket = io(url, { auth: { token } });
let pending = 2; // the message back, and its ack
const done = () => --pending === 0 && socket.disconnect();

socket.on("connected", ({ user, socketId }) => console.log(`hello ${user.username} (${socketId})`));
socket.on("new_message", (msg) => {
  console.log(`${msg.sender.username}: ${msg.content} (offset ${msg.offset})`);
  done();
});
socket.on("connect_error", (err) => {
  console.error(`connect_error: ${err.message}`);
  process.exit(1);
});
socket.emit("join_room", { roomId: "general" }, (res) => {
  console.log("joined", JSON.stringify(res));
  socket.emit("send_message", { roomId: "general", content: "hi" }, (ack) => {
    console.log("ack", JSON.stringify(ack)); // once durable: {ok: true, id, offset}
    done();
  });
});
