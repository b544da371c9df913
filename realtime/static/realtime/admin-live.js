// The payments admin, live: the change list and a payment's page update
// status, version and timeline from the staff socket (group staff.payments,
// joined only by staff), without reload or polling.
import { PaymentsClient, formatMoney as money } from "./payments-client.js";

const changePath = location.pathname.match(/\/payment\/([0-9a-f-]{36})\/change\/$/);
const pagePaymentId = changePath ? changePath[1] : null;

const label = (status) => status.charAt(0).toUpperCase() + status.slice(1);
const when = (iso) => new Date(iso).toLocaleString();

const announcer = document.createElement("p");
announcer.className = "visually-hidden";
announcer.setAttribute("aria-live", "polite");
announcer.id = "live-announcer";
document.body.append(announcer);

function setText(element, text) {
  if (!element || element.textContent === text) return;
  element.textContent = text;
  element.classList.remove("live-updated");
  // Restart the highlight on every change.
  void element.offsetWidth;
  element.classList.add("live-updated");
}

// The change list ---------------------------------------------------------------

function rowFor(payment) {
  const link = document.querySelector(`#result_list a[href$="/payment/${payment.id}/change/"]`);
  return link ? link.closest("tr") : null;
}

function newRow(payment) {
  // Only an unfiltered first page would list it at the top.
  const body = document.querySelector("#result_list tbody");
  if (!body || location.search) return null;
  const template = body.querySelector("tr");
  if (!template) return null;
  const row = template.cloneNode(true);
  const link = row.querySelector("th.field-id a");
  link.href = link.getAttribute("href").replace(/[0-9a-f-]{36}/, payment.id);
  link.textContent = payment.id;
  const fill = {
    money: money(payment.amount, payment.currency),
    payment_method: payment.payment_method,
    created_at: when(payment.created_at),
  };
  for (const [name, text] of Object.entries(fill)) {
    const cell = row.querySelector(`.field-${name}`);
    if (cell) cell.textContent = text;
  }
  body.prepend(row);
  return row;
}

function updateList(payment) {
  const row = rowFor(payment) ?? newRow(payment);
  if (!row) return;
  setText(row.querySelector("td.field-status"), label(payment.status));
  setText(row.querySelector("td.field-version"), String(payment.version));
}

// A payment's page ----------------------------------------------------------------

function readonly(name) {
  return document.querySelector(`.form-row.field-${name} .readonly`);
}

function updatePage(payment) {
  const previous = readonly("status")?.textContent.trim() ?? "";
  setText(readonly("status"), label(payment.status));
  setText(readonly("version"), String(payment.version));
  setText(readonly("updated_at"), when(payment.updated_at));
  if (payment.failure_code) setText(readonly("failure_code"), payment.failure_code);
  if (payment.failure_message) setText(readonly("failure_message"), payment.failure_message);
  const body = document.querySelector("#events-group tbody");
  if (!body || previous === label(payment.status)) return;
  const row = document.createElement("tr");
  row.className = "form-row live-row";
  row.dataset.version = String(payment.version);
  const cells = [
    ["original", `${previous.toLowerCase()} → ${payment.status}`],
    ["field-created_at", when(payment.updated_at)],
    ["field-from_status", previous],
    ["field-to_status", label(payment.status)],
    ["field-detail", payment.failure_code ? `${payment.failure_code}: ${payment.failure_message}` : "-"],
    ["delete", ""],
  ];
  for (const [name, text] of cells) {
    const cell = document.createElement("td");
    cell.className = name;
    if (text) {
      const p = document.createElement("p");
      p.textContent = text;
      cell.append(p);
    }
    row.append(cell);
  }
  body.append(row);
  row.classList.add("live-updated");
}

// ?feed=staff: this socket joins staff.payments (staff only; ignored for others).
const client = new PaymentsClient({ socketPath: "/ws/payments/?feed=staff" });
client.on("status", (payment) => {
  if (pagePaymentId) {
    if (payment.id !== pagePaymentId) return;
    updatePage(payment);
  } else {
    updateList(payment);
  }
  announcer.textContent = `Payment ${payment.id}: ${payment.status} (version ${payment.version})`;
});
client.on("state", ({ state }) => {
  document.documentElement.dataset.liveState = state;
});
client.connect();
globalThis.paymentsAdmin = { client };
