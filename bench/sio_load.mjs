// The load client of bench/benchmarks/socketio.py: real socket.io-client
// sockets (or, for comparison, the JSON protocol's plain WebSockets), driven
// by the benchmark over stdin/stdout, one JSON object a line.
//
//   node bench/sio_load.mjs '{"url": ..., "mode": ..., "sockets": N, ...}'
//
// It opens the sockets (`concurrency` handshakes at a time) and prints
// {"event": "open", ...}; then, on {"cmd": "pay", ...} from stdin, runs a
// closed loop of payments bound to the sockets in turn and prints
// {"event": "paid", ...} with one record a payment; on {"cmd": "close"} it
// disconnects everything and exits.
//
// Modes: "websocket" and "polling" are socket.io-client with
// transports: [mode]; "upgrade" is its default (polling, then the upgrade);
// "json" is the JSON protocol at /ws/payments/ with the `ws` package (the one
// socket.io-client itself uses in Node). The packages come from
// tests/node_modules (tests/package.json, npm ci), not a copy.
import { createRequire } from "node:module";
import http from "node:http";
import { createInterface } from "node:readline";

const require = createRequire(new URL("../tests/package.json", import.meta.url));
const { io } = require("socket.io-client");
const WebSocket = require("ws");

const config = JSON.parse(process.argv[2]);
const URL_BASE = config.url; // http://127.0.0.1:PORT
const MODE = config.mode;
const ORIGIN = config.origin;
const TIMEOUT_MS = config.timeout_ms ?? 30000;
const now = () => performance.now();
const out = (line) => process.stdout.write(JSON.stringify(line) + "\n");

// One keep-alive HTTP agent for the API and for polling, as a browser reuses
// its connections (engine.io-client's Node default is a new one a request).
const agent = new http.Agent({ keepAlive: true });

function postJson(path, body) {
  const data = Buffer.from(JSON.stringify(body));
  return new Promise((resolve, reject) => {
    const request = http.request(
      `${URL_BASE}${path}`,
      {
        method: "POST",
        agent,
        headers: {
          "Content-Type": "application/json",
          "Content-Length": data.length,
          Accept: "application/json",
          Origin: ORIGIN,
        },
        timeout: TIMEOUT_MS,
      },
      (response) => {
        const chunks = [];
        response.on("data", (chunk) => chunks.push(chunk));
        response.on("end", () => {
          const text = Buffer.concat(chunks).toString();
          let json = null;
          try {
            json = JSON.parse(text);
          } catch {
            // Not JSON: the status says what went wrong.
          }
          resolve({ status: response.statusCode, body: json });
        });
        response.on("error", reject);
      },
    );
    request.on("timeout", () => request.destroy(new Error("HTTP timeout")));
    request.on("error", reject);
    request.end(data);
  });
}

// Arrival time of each (payment, status), whichever socket it came on, and
// whoever waits for one.
const arrivals = new Map();
const waiters = new Map();
let frames = 0;
function arrived(data) {
  frames += 1;
  const key = `${data.id} ${data.status}`;
  if (!arrivals.has(key)) arrivals.set(key, now());
  const waiter = waiters.get(key);
  if (waiter) {
    waiters.delete(key);
    waiter(arrivals.get(key));
  }
}
function waitStatus(id, status) {
  const key = `${id} ${status}`;
  if (arrivals.has(key)) return Promise.resolve(arrivals.get(key));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      waiters.delete(key);
      reject(new Error(`timeout: ${status}`));
    }, TIMEOUT_MS);
    waiters.set(key, (t) => {
      clearTimeout(timer);
      resolve(t);
    });
  });
}

const counts = { disconnects: 0, reconnects: 0, connect_errors: 0, disconnect_reasons: {} };
function disconnected(reason) {
  counts.disconnects += 1;
  counts.disconnect_reasons[reason] = (counts.disconnect_reasons[reason] || 0) + 1;
}

// Open one client; resolve with {socketId, close()} once its socket id arrived.
function openSocketIO() {
  return new Promise((resolve, reject) => {
    const options = {
      forceNew: true,
      autoConnect: false,
      extraHeaders: { Origin: ORIGIN },
      ...(MODE === "upgrade" ? {} : { transports: [MODE] }),
      ...(MODE === "websocket" ? {} : { agent }),
    };
    const socket = io(URL_BASE, options);
    let connected = false;
    // The post's frontend keeps the latest socket-id (setSocketId): after a
    // reconnect, new payments are bound to the new one.
    const client = {
      socketId: null,
      transport: () => socket.io.engine?.transport?.name,
      close: () => socket.disconnect(),
    };
    const timer = setTimeout(() => {
      socket.disconnect();
      reject(new Error("timeout: socket-id"));
    }, TIMEOUT_MS);
    socket.on("socket-id", (socketId) => {
      client.socketId = socketId;
      if (connected) {
        counts.reconnects += 1;
        return;
      }
      connected = true;
      clearTimeout(timer);
      resolve(client);
    });
    socket.on("payment-status", arrived);
    socket.on("disconnect", disconnected);
    socket.on("connect_error", () => (counts.connect_errors += 1));
    socket.connect();
  });
}

function openJson() {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`${URL_BASE.replace("http", "ws")}/ws/payments/`, {
      origin: ORIGIN,
      perMessageDeflate: false,
    });
    let opened = false;
    const timer = setTimeout(() => {
      ws.terminate();
      reject(new Error("timeout: socket-id"));
    }, TIMEOUT_MS);
    ws.on("message", (raw) => {
      const frame = JSON.parse(raw.toString());
      if (frame.event === "payment-status") arrived(frame.data);
      else if (frame.event === "socket-id" && !opened) {
        opened = true;
        clearTimeout(timer);
        resolve({ socketId: frame.data, transport: () => "json", close: () => ws.close() });
      }
    });
    ws.on("close", (code) => opened && disconnected(`close ${code}`));
    ws.on("error", (error) => {
      clearTimeout(timer);
      if (!opened) reject(error);
    });
  });
}

// Opens stop being started past `deadline` ms: what opened by then is used.
async function openAll(count, concurrency, deadline) {
  const open = MODE === "json" ? openJson : openSocketIO;
  const sockets = [];
  let failed = 0;
  let next = 0;
  const started = now();
  async function lane() {
    while (next < count && now() - started < deadline) {
      next += 1;
      try {
        sockets.push(await open());
      } catch {
        failed += 1;
      }
    }
  }
  await Promise.all(Array.from({ length: Math.min(concurrency, count) }, lane));
  return { sockets, failed, seconds: (now() - started) / 1000 };
}

// A closed loop: `inFlight` lanes, each POSTs a payment bound to the next
// socket in turn and waits for its `succeeded` before the next one.
async function pay(sockets, { payments, in_flight: inFlight }) {
  const records = [];
  const errors = { http: 0, lost: 0, statuses: {} };
  const create =
    MODE === "json"
      ? (socketId) => postJson("/api/payments/", { amount: 1000, socket_id: socketId })
      : (socketId) =>
          postJson("/api/payments/make-payment-with-socket", { amount: 1000, socketId });
  let next = 0;
  async function lane() {
    while (next < payments) {
      const index = next++;
      const socket = sockets[index % sockets.length];
      const tPost = now();
      let response;
      try {
        response = await create(socket.socketId);
      } catch {
        errors.http += 1;
        continue;
      }
      const tResponse = now();
      const id = MODE === "json" ? response.body?.id : response.body?.payment?.id;
      if (response.status >= 300 || !id) {
        errors.http += 1;
        errors.statuses[response.status] = (errors.statuses[response.status] || 0) + 1;
        continue;
      }
      try {
        const tSucceeded = await waitStatus(id, "succeeded");
        const tProcessing = arrivals.get(`${id} processing`) ?? null;
        records.push({ index, t_post: tPost, t_response: tResponse, t_processing: tProcessing, t_succeeded: tSucceeded });
      } catch {
        errors.lost += 1;
      }
    }
  }
  const started = now();
  await Promise.all(Array.from({ length: inFlight }, lane));
  return { records, errors, seconds: (now() - started) / 1000, frames };
}

const opened = await openAll(
  config.sockets,
  config.concurrency ?? 50,
  config.open_deadline_ms ?? Infinity,
);
const transports = {};
for (const socket of opened.sockets) {
  const name = socket.transport();
  transports[name] = (transports[name] || 0) + 1;
}
out({
  event: "open",
  opened: opened.sockets.length,
  failed: opened.failed,
  seconds: opened.seconds,
  transports,
  ...counts,
});

for await (const line of createInterface({ input: process.stdin })) {
  const command = JSON.parse(line);
  if (command.cmd === "pay") {
    out({ event: "paid", ...(await pay(opened.sockets, command)), ...counts });
  } else if (command.cmd === "close") {
    const transportsNow = {};
    for (const socket of opened.sockets) {
      const name = socket.transport() ?? "none";
      transportsNow[name] = (transportsNow[name] || 0) + 1;
    }
    const before = JSON.parse(JSON.stringify(counts));
    for (const socket of opened.sockets) socket.close();
    // Time for the close packets to go out (on polling, a POST each), so
    // the server ends the sessions now rather than at their ping timeout.
    await new Promise((resolve) => setTimeout(resolve, 1000));
    out({ event: "closed", transports: transportsNow, frames, ...before });
    break;
  }
}
process.exit(0);
