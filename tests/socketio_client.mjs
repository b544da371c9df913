// The post's frontend, run by tests/test_socketio.py against real processes.
//
// The lines between "post's frontend" markers are the post's code as it is;
// around them, the test's knobs (read from SIO_* environment variables) and
// what a browser would add by itself: the page's Origin header.
// Prints one JSON line per client, then {"done": true}.
import axios from "axios";
import { io } from "socket.io-client";

const API_BASE_URL = process.env.SIO_URL;
const CLIENTS = Number(process.env.SIO_CLIENTS || "1");
const TRANSPORTS = process.env.SIO_TRANSPORTS ? JSON.parse(process.env.SIO_TRANSPORTS) : undefined;
const PAYMENT_METHOD = process.env.SIO_PAYMENT_METHOD || "";
const PINGS = Number(process.env.SIO_PINGS || "0"); // hold until this many pings
const TIMEOUT_MS = Number(process.env.SIO_TIMEOUT_MS || "30000");
const ORIGIN = process.env.SIO_ORIGIN || "http://localhost:3000";
// Tags each client's requests with ?client=TAG<index>, so a proxy's log can
// tell which web process served whose connection (tests/test_topology.py).
const TAG = process.env.SIO_TAG || "";
// Milliseconds between the clients' starts: a ramp rather than every
// handshake at once, for many clients on a few shared cores.
const RAMP_MS = Number(process.env.SIO_RAMP_MS || "0");
const TERMINAL = new Set(["succeeded", "failed", "canceled"]);
// What a browser at ORIGIN sends with every request; Node sends none.
const BROWSER_DEFAULTS = { extraHeaders: { Origin: ORIGIN }, ...(TRANSPORTS ? { transports: TRANSPORTS } : {}) };
const log = (line) => process.stdout.write(JSON.stringify(line) + "\n");

async function client(index) {
  if (RAMP_MS) await new Promise((resolve) => setTimeout(resolve, index * RAMP_MS));
  const BROWSER = TAG ? { ...BROWSER_DEFAULTS, query: { client: `${TAG}${index}` } } : BROWSER_DEFAULTS;
  const result = { index, statuses: [], disconnects: [], pings: 0, connects: 0 };
  let setSocketId, setFinal;
  const socketIdReceived = new Promise((resolve) => (setSocketId = resolve));
  const finished = new Promise((resolve) => (setFinal = resolve));
  let payment = null;
  const setPaymentStatus = (data) => {
    result.statuses.push(data.status);
    if (TERMINAL.has(data.status)) setFinal(data);
  };

  // post's frontend ---------------------------------------------------------
  const socket = io(API_BASE_URL, { autoConnect: false, ...BROWSER });
  socket.connect();
  socket.on("socket-id", setSocketId);
  socket.on("payment-status", setPaymentStatus);
  // ------------------------------------------------------------ post's frontend

  socket.on("connect", () => {
    result.connects += 1;
    // After a reconnect: catch up on the payment (the JSON protocol's subscribe).
    if (result.connects > 1 && payment) {
      socket.emit("subscribe", { payment_id: payment.id, client_secret: payment.client_secret });
    }
  });
  const disconnects = [];
  result.disconnects = disconnects;
  socket.on("disconnect", (reason) => disconnects.push(reason));
  socket.on("error", (error) => (result.error_event = error));
  socket.io.on("ping", () => (result.pings += 1));
  const deadline = (what) =>
    new Promise((_, reject) => setTimeout(() => reject(new Error(`timeout: ${what}`)), TIMEOUT_MS));
  try {
    const socketId = await Promise.race([socketIdReceived, deadline("socket-id")]);
    result.socketId = socketId;
    result.socketDotId = socket.id;
    result.engineId = socket.io.engine.id;
    if (PINGS) {
      await Promise.race([
        new Promise((resolve) => {
          const check = () => (result.pings >= PINGS ? resolve() : null);
          socket.io.on("ping", check);
        }),
        deadline(`${PINGS} pings`),
      ]);
    } else {
      const body = { amount: 1000, socketId };
      if (PAYMENT_METHOD) body.payment_method = PAYMENT_METHOD;
      // post's frontend ---------------------------------------------------------
      const response = await axios.post(`${API_BASE_URL}/api/payments/make-payment-with-socket`, body);
      // ------------------------------------------------------------ post's frontend
      payment = response.data.payment;
      // Set by a proxy that names the web process serving each request.
      result.postServedBy = response.headers["x-served-by"];
      result.paymentId = payment.id;
      log({ paid: index, paymentId: payment.id });
      const final = await Promise.race([finished, deadline("final status")]);
      result.final = final.status;
      result.failureCode = final.failure_code;
    }
    result.transport = socket.io.engine.transport.name;
    result.ok = true;
  } catch (error) {
    result.ok = false;
    result.error = String(error?.message || error);
    result.transport = socket.io.engine?.transport?.name;
  }
  result.disconnects = [...result.disconnects];
  socket.disconnect();
  log(result);
}

await Promise.all(Array.from({ length: CLIENTS }, (_, index) => client(index)));
log({ done: true });
// Keep-alive connections (axios) would hold the process open a while.
process.exit(0);
