/**
 * payments-client.js: the browser side of the payments API, no dependencies.
 *
 *   import { PaymentsClient } from "/static/realtime/payments-client.js";
 *   const client = new PaymentsClient();
 *   client.on("status", (payment) => console.log(payment.status));
 *   client.connect();
 *   await client.pay({ amount: 1000, paymentMethod: "pm_card_visa" });
 *
 * Why it is more than a WebSocket: a socket drops frames while it is away,
 * so the client reconnects (backoff with jitter; at once after 1001, the
 * server restarting), subscribes again to every payment not yet terminal
 * (the server answers with its current state), drops frames whose version it
 * has already applied, and polls GET /api/payments/{id}/ when WebSockets do
 * not work at all.
 */

const TERMINAL = new Set(["succeeded", "failed", "canceled"]);
const GOING_AWAY = 1001;
// Payments whose last version is remembered: the live admin sees every
// payment for as long as it stays open; the oldest is forgotten first.
const MAX_TRACKED = 10000;
const encoder = new TextEncoder();

/** An error answered by the API: {status, code, message, fields}. */
export class ApiError extends Error {
  constructor({ status = 0, code, message, fields = null }) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.fields = fields;
  }
}

/** Tell whether a payment status is final. */
export function isTerminal(status) {
  return TERMINAL.has(status);
}

const ZERO_DECIMAL = new Set(["jpy", "krw", "vnd", "clp", "isk", "ugx"]);

/** Format minor units as the admin does: 1234 usd → "12.34 USD". */
export function formatMoney(amount, currency) {
  const code = String(currency).toUpperCase();
  if (ZERO_DECIMAL.has(String(currency).toLowerCase())) return `${amount.toLocaleString("en")} ${code}`;
  const major = Math.trunc(amount / 100).toLocaleString("en");
  return `${major}.${String(amount % 100).padStart(2, "0")} ${code}`;
}

function byteLength(text) {
  return typeof text === "string" ? encoder.encode(text).length : 0;
}

function readCookie(name) {
  const prefix = `${name}=`;
  for (const part of document.cookie.split(";")) {
    const item = part.trim();
    if (item.startsWith(prefix)) return decodeURIComponent(item.slice(prefix.length));
  }
  return "";
}

/**
 * One connection to /ws/payments/ and the payments it follows.
 *
 * state: "idle" | "connecting" | "open" | "reconnecting" | "polling" | "closed"
 * ("polling": WebSockets failed `fallbackAfter` times in a row, so followed
 * payments are read over HTTP while the socket keeps retrying).
 * Events: "status" (payment, {source, bytes}), "state" ({state, socketId}),
 * "error" (ApiError from a socket error frame or a failed poll).
 */
export class PaymentsClient {
  constructor({
    baseUrl = globalThis.location?.origin ?? "",
    socketPath = "/ws/payments/",
    pollInterval = 1000,
    initialDelay = 250,
    maxDelay = 5000,
    fallbackAfter = 2,
    payRetries = 3,
    WebSocketImpl = globalThis.WebSocket,
  } = {}) {
    this.baseUrl = baseUrl.replace(/\/$/, "");
    this.socketUrl = this.baseUrl.replace(/^http/, "ws") + socketPath;
    this.pollInterval = pollInterval;
    this.initialDelay = initialDelay;
    this.maxDelay = maxDelay;
    this.fallbackAfter = fallbackAfter;
    this.payRetries = payRetries;
    this.WebSocketImpl = WebSocketImpl;
    this.state = "idle";
    this.socketId = null;
    /** HTTP requests made, and bytes received in bodies and frames. */
    this.stats = { requests: 0, bytes: 0, frames: 0 };
    this._listeners = new Map();
    this._followed = new Map(); // id → {id, clientSecret, status, subscribedOn}
    this._latest = new Map(); // id → {version, status} last applied
    this._ws = null;
    this._attempt = 0;
    this._failures = 0;
    this._retryTimer = null;
    this._pollTimer = null;
  }

  on(event, callback) {
    if (!this._listeners.has(event)) this._listeners.set(event, new Set());
    this._listeners.get(event).add(callback);
    return this;
  }

  off(event, callback) {
    this._listeners.get(event)?.delete(callback);
    return this;
  }

  _emit(event, ...args) {
    for (const callback of [...(this._listeners.get(event) ?? [])]) {
      try {
        callback(...args);
      } catch (error) {
        // A listener's bug must not stop the others or the socket.
        queueMicrotask(() => {
          throw error;
        });
      }
    }
  }

  _setState(state) {
    if (state === this.state) return;
    this.state = state;
    this._emit("state", { state, socketId: this.socketId });
  }

  /** Open the socket (and keep it open until close()). */
  connect() {
    if (this.state !== "idle" && this.state !== "closed") return this;
    if (typeof this.WebSocketImpl !== "function") {
      this._failures = this.fallbackAfter;
      this._setState("polling");
      this._startPolling();
      return this;
    }
    this._open();
    return this;
  }

  close() {
    clearTimeout(this._retryTimer);
    this._stopPolling();
    this._ws?.close(1000);
    this._ws = null;
    this.socketId = null;
    this._setState("closed");
  }

  _open() {
    if (this._failures >= this.fallbackAfter) this._setState("polling");
    else this._setState(this._attempt === 0 && this.state !== "reconnecting" ? "connecting" : "reconnecting");
    let ws;
    try {
      ws = new this.WebSocketImpl(this.socketUrl);
    } catch {
      this._scheduleReconnect(false, 0);
      return;
    }
    this._ws = ws;
    let ready = false;
    ws.onmessage = ({ data }) => {
      if (this._ws !== ws) return; // closed by close(), or replaced
      this.stats.frames += 1;
      this.stats.bytes += byteLength(data);
      let frame;
      try {
        frame = JSON.parse(data);
      } catch {
        return;
      }
      if (frame.event === "socket-id") {
        ready = true;
        this._attempt = 0;
        this._failures = 0;
        this.socketId = frame.data;
        this._stopPolling();
        this._setState("open");
        this._resubscribe();
      } else if (frame.event === "payment-status") {
        this._apply(frame.data, "socket", byteLength(data));
      } else if (frame.event === "error") {
        this._emit("error", new ApiError({ ...frame.data, status: 0 }));
      }
    };
    ws.onclose = ({ code }) => {
      // close() let go of it already: a connect() since must not get a
      // second reconnect loop from this late event.
      if (this._ws !== ws) return;
      this._ws = null;
      this.socketId = null;
      this._scheduleReconnect(ready, code);
    };
  }

  _scheduleReconnect(wasReady, code) {
    if (!wasReady) this._failures += 1;
    let delay = 0;
    if (!(wasReady && code === GOING_AWAY)) {
      const ceiling = Math.min(this.maxDelay, this.initialDelay * 2 ** this._attempt);
      // Equal jitter: spread clients dropped together, never at once.
      delay = ceiling / 2 + Math.random() * (ceiling / 2);
      this._attempt += 1;
    }
    if (this._failures >= this.fallbackAfter) {
      this._setState("polling");
      this._startPolling();
    } else {
      this._setState("reconnecting");
    }
    clearTimeout(this._retryTimer);
    this._retryTimer = setTimeout(() => this._open(), delay);
  }

  _send(frame) {
    if (this._ws?.readyState === 1 && this.socketId) {
      this._ws.send(JSON.stringify(frame));
      return true;
    }
    return false;
  }

  _subscribe(entry) {
    if (entry.subscribedOn === this.socketId) return;
    if (this._send({ action: "subscribe", payment_id: entry.id, client_secret: entry.clientSecret })) {
      entry.subscribedOn = this.socketId;
    }
  }

  _resubscribe() {
    for (const entry of this._followed.values()) {
      if (!isTerminal(entry.status)) this._subscribe(entry);
    }
  }

  /** Apply a payment's state once per version; emit "status" if it is new. */
  _apply(payment, source, bytes = 0) {
    if (!payment || typeof payment.id !== "string") return;
    const version = Number(payment.version);
    if (!(version > (this._latest.get(payment.id)?.version ?? 0))) return;
    this._latest.delete(payment.id); // re-inserted as the newest
    this._latest.set(payment.id, { version, status: payment.status });
    if (this._latest.size > MAX_TRACKED) this._latest.delete(this._latest.keys().next().value);
    const entry = this._followed.get(payment.id);
    if (entry) {
      entry.status = payment.status;
      if (isTerminal(payment.status) && entry.subscribedOn && entry.subscribedOn === this.socketId) {
        // Frees one of the socket's subscriptions (the server caps them).
        this._send({ action: "unsubscribe", payment_id: entry.id });
        entry.subscribedOn = null;
      }
    }
    this._emit("status", payment, { source, bytes });
  }

  /** Follow a payment created elsewhere ({id, client_secret}). */
  follow(payment) {
    const entry = this._followed.get(payment.id) ?? {
      id: payment.id,
      clientSecret: payment.client_secret,
      status: this._latest.get(payment.id)?.status ?? payment.status ?? "pending",
      subscribedOn: null,
    };
    this._followed.set(payment.id, entry);
    if (!isTerminal(entry.status)) this._subscribe(entry);
    return entry;
  }

  async _request(path, init) {
    this.stats.requests += 1;
    const response = await fetch(this.baseUrl + path, { credentials: "same-origin", ...init });
    const text = await response.text();
    const bytes = byteLength(text);
    this.stats.bytes += bytes;
    let body = null;
    try {
      body = text ? JSON.parse(text) : null;
    } catch {
      body = null;
    }
    if (!response.ok) {
      const error = body?.error;
      throw new ApiError({
        status: response.status,
        code: error?.code ?? "http_error",
        message: error?.message ?? `HTTP ${response.status}`,
        fields: error?.fields ?? null,
      });
    }
    if (body === null) {
      throw new ApiError({ status: response.status, code: "bad_response", message: "body: not JSON." });
    }
    return { body, bytes };
  }

  /**
   * Create a payment bound to this socket; resolve with it (client_secret
   * included). A network error retries the POST with the same
   * Idempotency-Key, so it is charged once; an API error rejects with ApiError.
   */
  async pay({ amount, currency, paymentMethod, description, idempotencyKey } = {}) {
    const key = idempotencyKey ?? crypto.randomUUID();
    const socketId = this.socketId;
    const payload = { amount };
    if (currency) payload.currency = currency;
    if (paymentMethod) payload.payment_method = paymentMethod;
    if (description) payload.description = description;
    if (socketId) payload.socket_id = socketId;
    const headers = { "Content-Type": "application/json", "Idempotency-Key": key };
    const csrf = readCookie("csrftoken");
    if (csrf) headers["X-CSRFToken"] = csrf;
    const requestBody = JSON.stringify(payload); // a bad argument throws here, once
    for (let attempt = 0; ; attempt += 1) {
      try {
        const { body, bytes } = await this._request("/api/payments/", {
          method: "POST",
          headers,
          body: requestBody,
        });
        const entry = this.follow(body);
        // Bound to the socket it was posted with; a socket opened since
        // (reconnect during the POST) must subscribe instead.
        if (socketId && socketId === this.socketId) entry.subscribedOn = socketId;
        else this._subscribe(entry);
        const { client_secret: _secret, ...publicData } = body;
        this._apply(publicData, "http", bytes);
        return body;
      } catch (error) {
        if (error instanceof ApiError || attempt >= this.payRetries) throw error;
        const delay = this.initialDelay * 2 ** attempt;
        await new Promise((resolve) => setTimeout(resolve, delay / 2 + Math.random() * (delay / 2)));
      }
    }
  }

  /** Read a payment over HTTP with its secret (the polling fallback's call). */
  async get(id, clientSecret) {
    const { body, bytes } = await this._request(`/api/payments/${encodeURIComponent(id)}/`, {
      headers: { "X-Client-Secret": clientSecret, Accept: "application/json" },
    });
    return { payment: body, bytes };
  }

  _startPolling() {
    if (this._pollTimer !== null) return;
    // A round still awaiting answers when polling stops and starts again
    // must not schedule a second loop.
    const generation = (this._pollGeneration = (this._pollGeneration ?? 0) + 1);
    const round = async () => {
      const pending = [...this._followed.values()].filter((entry) => !isTerminal(entry.status));
      await Promise.all(
        pending.map(async (entry) => {
          try {
            const { payment, bytes } = await this.get(entry.id, entry.clientSecret);
            this._apply(payment, "poll", bytes);
          } catch (error) {
            // A network error (the server away) is retried next round.
            if (error instanceof ApiError) this._emit("error", error);
          }
        }),
      );
      if (this._pollTimer !== null && generation === this._pollGeneration) {
        this._pollTimer = setTimeout(round, this.pollInterval);
      }
    };
    this._pollTimer = setTimeout(round, 0);
  }

  _stopPolling() {
    clearTimeout(this._pollTimer);
    this._pollTimer = null;
  }
}
