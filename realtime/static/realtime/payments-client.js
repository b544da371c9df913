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
 * so the client reconnects (backoff with jitter; at once after a 1001, the
 * server restarting, but not after a second one in a row), subscribes again
 * to every payment not yet terminal (the server answers with its current
 * state; a refused subscribe is retried unless the payment is not found),
 * drops frames whose version it has already applied, retries a POST that
 * got no answer or a 5xx with the same Idempotency-Key, and polls
 * GET /api/payments/{id}/ when WebSockets do not work at all.
 */

const TERMINAL = new Set(["succeeded", "failed", "canceled"]);
const GOING_AWAY = 1001;
// Subscribe refusals that a retry cannot cure; any other code (rate_limited,
// too_many_subscriptions, a server's transient failure) is retried.
const FINAL_REFUSALS = new Set(["payment_not_found", "invalid_frame"]);
// A subscribe's fence (its ping) unanswered this long: sent again.
const FENCE_TIMEOUT = 10000;
// Payments whose last version is remembered: the live admin sees every
// payment for as long as it stays open; the oldest is forgotten first.
const MAX_TRACKED = 10000;
const encoder = new TextEncoder();

/**
 * An error answered by the API: {status, code, message, fields}; also
 * retryAfter (ms, from a Retry-After header) and, for a refused subscribe,
 * paymentId.
 */
export class ApiError extends Error {
  constructor({ status = 0, code, message, fields = null, retryAfter = null, paymentId = null }) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.fields = fields;
    this.retryAfter = retryAfter;
    this.paymentId = paymentId;
  }
}

/**
 * Return a random UUID v4 (an anonymous Idempotency-Key must be one).
 * crypto.randomUUID exists only in secure contexts (HTTPS, localhost): a
 * page on plain HTTP from another host builds one from getRandomValues,
 * which every context has.
 */
export function uuid4() {
  if (typeof globalThis.crypto?.randomUUID === "function") return globalThis.crypto.randomUUID();
  const bytes = globalThis.crypto.getRandomValues(new Uint8Array(16));
  bytes[6] = (bytes[6] & 0x0f) | 0x40; // version 4
  bytes[8] = (bytes[8] & 0x3f) | 0x80; // variant 10xx (RFC 9562)
  const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/** Read a Retry-After header (seconds or an HTTP date) as milliseconds. */
function retryAfterMs(value) {
  if (!value) return null;
  const text = value.trim();
  if (/^\d+$/.test(text)) return Number(text) * 1000;
  const at = Date.parse(text);
  return Number.isNaN(at) ? null : Math.max(0, at - Date.now());
}

/** Wait between half and all of `ceiling` ms (equal jitter). */
function jittered(ceiling) {
  return ceiling / 2 + Math.random() * (ceiling / 2);
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

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
 * Events: "status" (payment, {source, bytes}), "state" ({state, socketId,
 * retryIn}: ms until the next attempt while away), "error" (ApiError from a
 * socket error frame or a failed poll).
 */
export class PaymentsClient {
  constructor({
    baseUrl = globalThis.location?.origin ?? "",
    socketPath = "/ws/payments/",
    pollInterval = 1000,
    initialDelay = 250,
    maxDelay = 5000,
    stableAfter = 10000,
    fallbackAfter = 2,
    payRetries = 3,
    maxRetryAfter = 30000,
    WebSocketImpl = globalThis.WebSocket,
  } = {}) {
    this.baseUrl = baseUrl.replace(/\/$/, "");
    this.socketUrl = this.baseUrl.replace(/^http/, "ws") + socketPath;
    this.pollInterval = pollInterval;
    this.initialDelay = initialDelay;
    this.maxDelay = maxDelay;
    this.stableAfter = stableAfter;
    this.fallbackAfter = fallbackAfter;
    this.payRetries = payRetries;
    this.maxRetryAfter = maxRetryAfter;
    this.WebSocketImpl = WebSocketImpl;
    this.state = "idle";
    this.socketId = null;
    /** ms until the next connection attempt (0: at once), while away. */
    this.retryIn = null;
    /** HTTP requests made, and bytes received in bodies and frames. */
    this.stats = { requests: 0, bytes: 0, frames: 0 };
    this._listeners = new Map();
    // id → {id, clientSecret, status, subscribedOn, subscribed, retries, ...}
    this._followed = new Map();
    this._latest = new Map(); // id → {version, status} last applied
    this._ws = null;
    this._attempt = 0;
    this._failures = 0;
    this._wentAway = false;
    this._retryTimer = null;
    this._pollTimer = null;
    // Subscribes go one at a time, each followed by a ping: the server
    // answers frames in order and its error frames name no payment, so an
    // error before the pong is that subscribe's, and the pong confirms it.
    this._queue = [];
    this._inFlight = null; // {entry, socketId, code, timer}
    this._queueTimer = null;
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
    this._emit("state", { state, socketId: this.socketId, retryIn: this.retryIn });
  }

  /** Return the last version applied of a payment, {version, status}, if any. */
  latest(id) {
    return this._latest.get(id) ?? null;
  }

  /** Tell whether the client still follows a payment (not terminal, not refused). */
  isFollowing(id) {
    const entry = this._followed.get(id);
    return Boolean(entry) && !isTerminal(entry.status);
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
    this._dropSocket();
    this._setState("closed");
  }

  _open() {
    if (this._failures >= this.fallbackAfter) this._setState("polling");
    else this._setState(this._attempt === 0 && this.state !== "reconnecting" ? "connecting" : "reconnecting");
    let ws;
    try {
      ws = new this.WebSocketImpl(this.socketUrl);
    } catch {
      this._scheduleReconnect(false, 0, 0);
      return;
    }
    this._ws = ws;
    let openedAt = 0; // when its socket-id came; 0 while not ready
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
        openedAt = Date.now();
        this._failures = 0;
        this.socketId = frame.data;
        this.retryIn = null;
        this._stopPolling();
        this._setState("open");
        this._resubscribe();
      } else if (frame.event === "payment-status") {
        this._apply(frame.data, "socket", byteLength(data));
      } else if (frame.event === "pong") {
        this._fenced();
      } else if (frame.event === "error") {
        this._refusal(new ApiError({ ...frame.data, status: 0 }));
      }
    };
    ws.onclose = ({ code }) => {
      // close() let go of it already: a connect() since must not get a
      // second reconnect loop from this late event.
      if (this._ws !== ws) return;
      this._ws = null;
      this._dropSocket();
      this._scheduleReconnect(openedAt > 0, code, openedAt);
    };
  }

  _dropSocket() {
    this.socketId = null;
    this._queue = [];
    if (this._inFlight) clearTimeout(this._inFlight.timer);
    this._inFlight = null;
    clearTimeout(this._queueTimer);
    this._queueTimer = null;
  }

  _backoff() {
    const ceiling = Math.min(this.maxDelay, this.initialDelay * 2 ** this._attempt);
    this._attempt += 1;
    // Equal jitter: spread clients dropped together, never at once.
    return jittered(ceiling);
  }

  _scheduleReconnect(wasReady, code, openedAt) {
    if (!wasReady) this._failures += 1;
    if (wasReady && Date.now() - openedAt >= this.stableAfter) {
      // It stayed up: whatever failed before is over.
      this._attempt = 0;
      this._wentAway = false;
    }
    let delay;
    if (wasReady && code === GOING_AWAY && !this._wentAway) {
      // The server restarting: another one is ready, go at once. Only the
      // first time: a server that keeps closing with 1001 gets backoff.
      this._wentAway = true;
      delay = 0;
    } else {
      delay = this._backoff();
    }
    this.retryIn = Math.round(delay);
    if (this._failures >= this.fallbackAfter) {
      this._setState("polling");
      this._startPolling();
    } else if (this.state === "reconnecting") {
      this._emit("state", { state: this.state, socketId: null, retryIn: this.retryIn });
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

  // Subscribing ---------------------------------------------------------------

  /** Queue a subscribe for `entry` on the current socket, unless it has one. */
  _subscribe(entry) {
    if (!this.socketId || entry.subscribedOn === this.socketId || entry.queuedOn === this.socketId) return;
    if (this._inFlight?.entry === entry) return;
    entry.queuedOn = this.socketId;
    this._queue.push(entry);
    this._pump();
  }

  _pump() {
    if (this._inFlight || this._queueTimer !== null || !this.socketId) return;
    while (this._queue.length) {
      const entry = this._queue.shift();
      entry.queuedOn = null;
      if (this._followed.get(entry.id) !== entry || isTerminal(entry.status)) continue;
      if (entry.subscribedOn === this.socketId) continue;
      const sent = this._send({ action: "subscribe", payment_id: entry.id, client_secret: entry.clientSecret });
      if (!sent) return; // the socket is closing: its successor subscribes again
      this._send({ action: "ping" });
      const flight = { entry, socketId: this.socketId, code: null, timer: null };
      flight.timer = setTimeout(() => {
        // No pong: both frames refused quietly (rate limit). Again, later.
        if (this._inFlight !== flight) return;
        this._inFlight = null;
        this._retrySubscribe(entry);
        this._pump();
      }, FENCE_TIMEOUT);
      this._inFlight = flight;
      return;
    }
  }

  /** The pong after a subscribe: it is settled, one way or the other. */
  _fenced() {
    const flight = this._inFlight;
    if (!flight) return; // a subscribe's fence already given up on
    clearTimeout(flight.timer);
    this._inFlight = null;
    const { entry } = flight;
    if (flight.code === null) {
      entry.subscribedOn = flight.socketId;
      entry.subscribed = true;
      entry.retries = 0;
    } else if (FINAL_REFUSALS.has(flight.code)) {
      // Not visible to this client (or never a payment id): stop following.
      this._followed.delete(entry.id);
    } else {
      this._retrySubscribe(entry);
    }
    this._pump();
  }

  _refusal(error) {
    const flight = this._inFlight;
    if (flight && flight.code === null) {
      flight.code = error.code;
      error.paymentId = flight.entry.id;
    }
    if (error.code === "rate_limited") {
      // The socket's frame budget is spent: the ping after the subscribe
      // was refused too (no pong comes), so settle it here and let the
      // whole queue wait.
      if (flight) {
        clearTimeout(flight.timer);
        this._inFlight = null;
        if (flight.code === "rate_limited" || flight.code === null) {
          flight.entry.queuedOn = flight.socketId;
          this._queue.unshift(flight.entry);
        } else if (FINAL_REFUSALS.has(flight.code)) {
          this._followed.delete(flight.entry.id);
        } else {
          this._retrySubscribe(flight.entry);
        }
      }
      if (this._queueTimer === null && this.socketId) {
        this._queueTimer = setTimeout(
          () => {
            this._queueTimer = null;
            this._pump();
          },
          jittered(Math.max(1000, this.initialDelay)),
        );
      }
    }
    this._emit("error", error);
  }

  /** Subscribe `entry` again after its own backoff. */
  _retrySubscribe(entry) {
    entry.retries = (entry.retries ?? 0) + 1;
    const ceiling = Math.min(this.maxDelay, this.initialDelay * 2 ** (entry.retries - 1));
    clearTimeout(entry.retryTimer);
    entry.retryTimer = setTimeout(() => {
      if (this._followed.get(entry.id) === entry && !isTerminal(entry.status)) this._subscribe(entry);
    }, jittered(ceiling));
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
      if (isTerminal(payment.status)) {
        clearTimeout(entry.retryTimer);
        // Frees one of the socket's subscriptions (the server caps them);
        // a payment only bound to the socket has none to free.
        if (entry.subscribed && entry.subscribedOn === this.socketId) {
          this._send({ action: "unsubscribe", payment_id: entry.id });
        }
        entry.subscribedOn = null;
        entry.subscribed = false;
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
      subscribedOn: null, // the socket that pushes its changes (bound or subscribed)
      subscribed: false, // by a subscribe frame (so an unsubscribe frees it)
      queuedOn: null,
      retries: 0,
      retryTimer: null,
    };
    this._followed.set(payment.id, entry);
    if (!isTerminal(entry.status)) this._subscribe(entry);
    return entry;
  }

  // HTTP ------------------------------------------------------------------------

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
        retryAfter: retryAfterMs(response.headers.get("Retry-After")),
      });
    }
    if (body === null) {
      throw new ApiError({ status: response.status, code: "bad_response", message: "body: not JSON." });
    }
    return { body, bytes };
  }

  /**
   * Create a payment bound to this socket; resolve with it (client_secret
   * included). A network error or a 5xx (the server unavailable, a proxy's
   * 502/504) retries the POST with the same Idempotency-Key, so it is
   * charged once, after the backoff or the Retry-After if longer; any other
   * API error rejects with ApiError at once.
   */
  async pay({ amount, currency, paymentMethod, description, idempotencyKey } = {}) {
    const key = idempotencyKey ?? uuid4();
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
        const transient = !(error instanceof ApiError) || error.status >= 500;
        if (!transient || attempt >= this.payRetries) throw error;
        let delay = jittered(this.initialDelay * 2 ** attempt);
        if (error.retryAfter !== null && error.retryAfter !== undefined) {
          if (error.retryAfter > this.maxRetryAfter) throw error;
          delay = Math.max(delay, error.retryAfter);
        }
        await sleep(delay);
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
