// The payments admin, live: the change list and a payment's page follow the
// staff socket (group staff.payments, joined only by staff), without reload
// or polling.
//
// A frame updates what it can in place at once (status, version); what
// only the server renders (a payment's timeline and gateway calls, which
// payments a list shows) is fetched again from this same admin page, the
// HTML Django renders, when a frame says it changed. The same fetch runs
// every time the socket opens (the first time and after each reconnect):
// a change committed before the socket joined the group, after the page
// was rendered, was never pushed to it.
import { PaymentsClient } from "./payments-client.js";

const changePath = location.pathname.match(/\/payment\/([0-9a-f-]{36})\/change\/$/);
const pagePaymentId = changePath ? changePath[1] : null;
// At most one fetch of the page at a time, and one a second: a busy system
// sends the list a frame per change of any payment.
const REFRESH_GAP = 1000;

const label = (status) => status.charAt(0).toUpperCase() + status.slice(1);

const announcer = document.createElement("p");
announcer.className = "visually-hidden";
announcer.setAttribute("aria-live", "polite");
announcer.id = "live-announcer";
document.body.append(announcer);

function highlight(element) {
  element.classList.remove("live-updated");
  // Restart the highlight on every change.
  void element.offsetWidth;
  element.classList.add("live-updated");
}

function setText(element, text) {
  if (!element || element.textContent.trim() === text) return;
  element.textContent = text;
  highlight(element);
}

const shownVersion = (element) => Number(element?.textContent.trim()) || 0;

// Fetching the page again ------------------------------------------------------

const refresh = { running: false, again: false, last: 0, timer: null };

/** Fetch this page's HTML again soon (at once with `now`), patch it in. */
function scheduleRefresh({ now = false } = {}) {
  if (refresh.running) {
    refresh.again = true;
    return;
  }
  if (refresh.timer !== null && !now) return;
  clearTimeout(refresh.timer);
  const wait = now ? 0 : Math.max(0, refresh.last + REFRESH_GAP - Date.now());
  refresh.timer = setTimeout(runRefresh, wait);
}

async function runRefresh() {
  refresh.timer = null;
  refresh.running = true;
  refresh.again = false;
  refresh.last = Date.now();
  try {
    const response = await fetch(location.href, {
      credentials: "same-origin",
      headers: { Accept: "text/html" },
    });
    // Logged out, or the payment gone: the next navigation shows why.
    if (response.ok) {
      const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
      if (pagePaymentId) patchPage(fresh);
      else patchList(fresh);
    }
  } catch {
    // The server away: the socket reconnects, and its open fetches again.
  } finally {
    refresh.running = false;
    if (refresh.again) scheduleRefresh();
  }
}

// The change list ------------------------------------------------------------------

function rowFor(id) {
  const link = document.querySelector(`#result_list a[href$="/payment/${id}/change/"]`);
  return link ? link.closest("tr") : null;
}

function rowId(row) {
  return row.querySelector("th.field-id a")?.textContent.trim() ?? "";
}

function updateRow(row, payment) {
  const version = row.querySelector("td.field-version");
  // The page (or a fetch of it) may already show a later version.
  if (Number(payment.version) <= shownVersion(version)) return;
  setText(row.querySelector("td.field-status"), label(payment.status));
  setText(version, String(payment.version));
}

function patchList(fresh) {
  const form = document.querySelector("#changelist-form");
  const freshForm = fresh.querySelector("#changelist-form");
  if (!form || !freshForm) return;
  const before = new Map(
    [...document.querySelectorAll("#result_list tbody tr")].map((row) => [
      rowId(row),
      row.querySelector("td.field-version")?.textContent.trim(),
    ]),
  );
  // Everything the server renders around the rows goes too: the count, the
  // paginator, the date hierarchy. The search box and filters stay.
  form.replaceChildren(...freshForm.childNodes);
  const hierarchy = document.querySelector("nav.toplinks");
  const freshHierarchy = fresh.querySelector("nav.toplinks");
  if (hierarchy && freshHierarchy) hierarchy.replaceChildren(...freshHierarchy.childNodes);
  for (const row of document.querySelectorAll("#result_list tbody tr")) {
    const id = rowId(row);
    const known = client.latest(id);
    // A frame applied while the fetch was on its way is newer than it.
    if (known) updateRow(row, { id, ...known });
    const version = row.querySelector("td.field-version")?.textContent.trim();
    if (!before.has(id)) highlight(row);
    else if (before.get(id) !== version) {
      highlight(row.querySelector("td.field-status"));
      highlight(row.querySelector("td.field-version"));
    }
  }
}

function onListFrame(payment) {
  const row = rowFor(payment.id);
  if (row) {
    updateRow(row, payment);
  } else if (payment.version <= 2 || location.search) {
    // Not shown: a new payment (creation is not pushed, its first frame is
    // processing, version 2), or on a filtered, sorted or later page one it
    // may now include. Where it belongs is the server's to say.
    scheduleRefresh();
  }
}

// A payment's page -----------------------------------------------------------------

function readonly(root, name) {
  return root.querySelector(`.form-row.field-${name} .readonly`);
}

const PAGE_FIELDS = ["status", "version", "failure_code", "failure_message", "updated_at"];
const INLINES = ["#events-group", "#gateway_calls-group"];

function patchPage(fresh) {
  const version = readonly(document, "version");
  const freshVersion = readonly(fresh, "version");
  if (!freshVersion) return;
  if (shownVersion(freshVersion) < shownVersion(version)) {
    // Read before the change a frame showed: that change's own fetch
    // follows this one.
    scheduleRefresh();
    return;
  }
  // The read-only fields only: the form's inputs may hold a staff user's edit.
  for (const name of PAGE_FIELDS) {
    const text = readonly(fresh, name)?.textContent.trim();
    if (text !== undefined) setText(readonly(document, name), text);
  }
  for (const selector of INLINES) {
    const group = document.querySelector(selector);
    const freshGroup = fresh.querySelector(selector);
    if (!group || !freshGroup) continue;
    const rows = group.querySelectorAll("tbody tr.has_original").length;
    group.replaceWith(freshGroup);
    const added = [...freshGroup.querySelectorAll("tbody tr.has_original")].slice(rows);
    for (const row of added) highlight(row);
  }
}

function onPageFrame(payment) {
  if (payment.id !== pagePaymentId) return;
  if (Number(payment.version) <= shownVersion(readonly(document, "version"))) return;
  setText(readonly(document, "status"), label(payment.status));
  setText(readonly(document, "version"), String(payment.version));
  // The timeline row, the gateway call, the failure: as Django renders them.
  scheduleRefresh({ now: true });
}

// ?feed=staff: this socket joins staff.payments (staff only; ignored for others).
const client = new PaymentsClient({ socketPath: "/ws/payments/?feed=staff" });
client.on("status", (payment) => {
  if (pagePaymentId) onPageFrame(payment);
  else onListFrame(payment);
  if (!pagePaymentId || payment.id === pagePaymentId) {
    announcer.textContent = `Payment ${payment.id}: ${payment.status} (version ${payment.version})`;
  }
});
client.on("state", ({ state }) => {
  document.documentElement.dataset.liveState = state;
  // Joined the group only now: catch up with what was committed before.
  if (state === "open") scheduleRefresh({ now: true });
});
client.connect();
globalThis.paymentsAdmin = { client };
