// The page at /: a form that pays through payments-client.js, a live
// timeline per payment, and the polling vs push comparison.
import { PaymentsClient, formatMoney, isTerminal } from "./payments-client.js";

const $ = (selector) => document.querySelector(selector);
const client = new PaymentsClient();
// For the browser's console (and the browser tests): the page's client.
globalThis.paymentsPage = { client };
const POLL_EVERY = 1000;

const stateOutput = $("#state");
const socketOutput = $("#socket-id");
const STATE_LABELS = {
  idle: "idle",
  connecting: "connecting…",
  open: "live (WebSocket)",
  reconnecting: "reconnecting…",
  polling: "polling (WebSockets unavailable)",
  closed: "closed",
};

client.on("state", ({ state, socketId }) => {
  stateOutput.dataset.state = state;
  stateOutput.textContent = STATE_LABELS[state] ?? state;
  socketOutput.textContent = socketId ?? "—";
});

function clock(iso) {
  const date = new Date(iso);
  return Number.isNaN(date.getTime())
    ? ""
    : date.toLocaleTimeString([], { hour12: false }) + "." + String(date.getMilliseconds()).padStart(3, "0");
}

function paymentArticle(payment) {
  let article = document.getElementById(`payment-${payment.id}`);
  if (article) return article;
  $("#empty").hidden = true;
  article = document.createElement("article");
  article.className = "payment";
  article.id = `payment-${payment.id}`;
  article.dataset.paymentId = payment.id;
  const title = document.createElement("h3");
  const amount = document.createElement("span");
  amount.textContent = `${formatMoney(payment.amount, payment.currency)} · `;
  const method = document.createElement("code");
  method.textContent = payment.payment_method;
  const status = document.createElement("span");
  status.className = "badge";
  title.append(amount, method, " ", status);
  const id = document.createElement("p");
  id.className = "note";
  id.textContent = `id ${payment.id}`;
  const timeline = document.createElement("ol");
  timeline.className = "timeline";
  timeline.setAttribute("aria-label", "status changes");
  article.append(title, id, timeline);
  $("#payments").prepend(article);
  return article;
}

// Each version once, in version order, whichever way it arrived.
function showStatus(payment, { source } = {}) {
  const article = paymentArticle(payment);
  const timeline = article.querySelector(".timeline");
  if (timeline.querySelector(`li[data-version="${payment.version}"]`)) return;
  const item = document.createElement("li");
  item.dataset.status = payment.status;
  item.dataset.version = String(payment.version);
  const name = document.createElement("strong");
  name.textContent = payment.status;
  const at = document.createElement("time");
  const iso = payment.version === 1 ? payment.created_at : payment.updated_at;
  at.dateTime = iso;
  at.textContent = clock(iso);
  item.append(name, " ", at);
  if (payment.status === "failed") {
    const reason = document.createElement("span");
    reason.className = "reason";
    reason.textContent = ` ${payment.failure_message} (${payment.failure_code})`;
    item.append(reason);
  }
  if (source) {
    const via = document.createElement("span");
    via.className = "via";
    via.textContent = ` via ${source}`;
    item.append(via);
  }
  const later = [...timeline.children].find((li) => Number(li.dataset.version) > payment.version);
  timeline.insertBefore(item, later ?? null);
  const latest = timeline.lastElementChild;
  const badge = article.querySelector(".badge");
  badge.textContent = latest.dataset.status;
  badge.dataset.status = latest.dataset.status;
  article.dataset.status = latest.dataset.status;
  $("#announcer").textContent = `Payment of ${formatMoney(payment.amount, payment.currency)}: ${payment.status}`;
}

client.on("status", showStatus);
client.connect();

// Polling vs push --------------------------------------------------------------

const comparison = {
  section: $("#comparison"),
  set(side, field, value) {
    $(`#cmp-${side}-${field}`).textContent = value;
  },
};

function ms(value) {
  return `${Math.max(0, Math.round(value))} ms`;
}

function startComparison(created, createBytes, startedAt) {
  comparison.section.hidden = false;
  const push = { requests: 1, bytes: createBytes };
  const poll = { requests: 1, bytes: createBytes };
  for (const side of ["push", "poll"]) {
    comparison.set(side, "requests", "1");
    comparison.set(side, "bytes", String(createBytes));
    comparison.set(side, "after", "…");
    comparison.set(side, "late", "…");
  }
  const learned = (side, payment) => {
    comparison.set(side, "after", ms(performance.now() - startedAt));
    comparison.set(side, "late", ms(Date.now() - new Date(payment.updated_at).getTime()));
  };

  const onPush = (payment, { source, bytes }) => {
    if (payment.id !== created.id || source !== "socket") return;
    push.bytes += bytes;
    comparison.set("push", "bytes", String(push.bytes));
    if (isTerminal(payment.status)) {
      learned("push", payment);
      client.off("status", onPush);
    }
  };
  client.on("status", onPush);

  // The old way: GET the payment every second until it is final.
  const pollOnce = async () => {
    poll.requests += 1;
    comparison.set("poll", "requests", String(poll.requests));
    let payment = null;
    try {
      const response = await fetch(`/api/payments/${created.id}/`, {
        headers: { "X-Client-Secret": created.client_secret, Accept: "application/json" },
      });
      const text = await response.text();
      poll.bytes += new TextEncoder().encode(text).length;
      comparison.set("poll", "bytes", String(poll.bytes));
      if (response.ok) payment = JSON.parse(text);
    } catch {
      // Network error: asked again next second.
    }
    if (payment && isTerminal(payment.status)) learned("poll", payment);
    else setTimeout(pollOnce, POLL_EVERY);
  };
  setTimeout(pollOnce, POLL_EVERY);
}

// The form ---------------------------------------------------------------------

const form = $("#pay");
const formError = $("#form-error");
const button = $("#pay-button");

function showError(error) {
  formError.hidden = false;
  formError.textContent = `${error.message}${error.code ? ` (${error.code})` : ""}`;
  for (const name of Object.keys(error.fields ?? {})) {
    form.elements.namedItem(name)?.setAttribute?.("aria-invalid", "true");
  }
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  formError.hidden = true;
  for (const input of form.querySelectorAll("[aria-invalid]")) input.removeAttribute("aria-invalid");
  const data = new FormData(form);
  const amount = Number(data.get("amount"));
  button.disabled = true;
  const startedAt = performance.now();
  const bytesBefore = client.stats.bytes;
  try {
    const created = await client.pay({
      amount: Number.isInteger(amount) ? amount : data.get("amount"),
      currency: data.get("currency"),
      paymentMethod: data.get("payment_method"),
      description: data.get("description") || undefined,
    });
    const { client_secret: _secret, ...publicData } = created;
    showStatus(publicData, { source: "http" });
    if (data.get("compare")) startComparison(created, client.stats.bytes - bytesBefore, startedAt);
  } catch (error) {
    showError(error);
  } finally {
    button.disabled = false;
  }
});
