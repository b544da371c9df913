"""The page at / and the live admin in Chromium, against real daphne and db_worker."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
from django.contrib.auth import get_user_model
from playwright.sync_api import expect

from payments.models import TERMINAL_STATUSES, GatewayCall, Payment
from tests.helpers import wait_until
from tests.live import LiveStack, OutcomeGate, checked_stack

pytestmark = pytest.mark.e2e

# Generous: HTTP, worker, gateway delay, Redis and the socket are separate
# processes on a shared machine.
TIMEOUT = 20_000  # ms, Playwright's unit
# What Chromium itself prints when a connection is refused: expected only in
# the test that kills the web process.
CONNECTION_REFUSED = (
    r"WebSocket connection to .* failed",
    r"net::ERR_CONNECTION_REFUSED",
)


@pytest.fixture
def live(transactional_db: None, isolated_channel_layer: str) -> Iterator[LiveStack]:
    with checked_stack(isolated_channel_layer, PAYMENTS_SIMULATED_DELAY="0.5") as stack:
        yield stack


def open_home(open_page, live: LiveStack, *, connected: bool = True, **options):
    """Open / in a new page (``options`` go to open_page); wait for its socket.

    Return the Watched page and the document's response; with ``connected``
    False, as soon as the document loaded.
    """
    watched = open_page(**options)
    response = watched.page.goto(live.http_url + "/")
    assert response.status == 200
    if connected:
        wait_live(watched.page)
    return watched, response


def wait_live(page) -> str:
    """Wait until the page's socket is open; return its socket id."""
    expect(page.locator("#state")).to_have_attribute(
        "data-state", "open", timeout=TIMEOUT
    )
    socket_id = page.locator("#socket-id").inner_text()
    assert re.fullmatch(r"[A-Za-z0-9_-]{32}", socket_id), socket_id
    return socket_id


def pay(
    page,
    method: str = "pm_card_visa",
    *,
    compare: bool = False,
    until: str | None = "succeeded",
) -> str:
    """Fill the form and pay; return the new payment's id once it is ``until``.

    ``until`` None: as soon as the payment shows, whatever its status.
    """
    page.locator("#amount").fill("1234")
    page.locator(f"input[name=payment_method][value={method}]").check()
    if compare:
        page.locator("#compare").check()
    before = page.locator("article.payment").count()
    page.locator("#pay-button").click()
    expect(page.locator("article.payment")).to_have_count(before + 1, timeout=TIMEOUT)
    payment_id = page.locator("article.payment").first.get_attribute("data-payment-id")
    if until is not None:
        wait_status(page, payment_id, until)
    return payment_id


def timeline(page, payment_id: str):
    return page.locator(f"#payment-{payment_id} .timeline li")


def wait_status(page, payment_id: str, status: str) -> None:
    expect(
        page.locator(f"#payment-{payment_id} .timeline li[data-status={status}]")
    ).to_have_count(1, timeout=TIMEOUT)


def open_admin(page, url: str) -> None:
    """Go to an admin page and wait until its live socket is open."""
    page.goto(url)
    expect(page.locator("html")).to_have_attribute(
        "data-live-state", "open", timeout=TIMEOUT
    )


# The page -----------------------------------------------------------------------


def test_visa_succeeds_and_declined_fails_with_its_reason(live, open_page) -> None:
    watched, response = open_home(open_page, live)
    page = watched.page
    csp = response.headers["content-security-policy"]
    assert "connect-src 'self'" in csp and "script-src 'self'" in csp, csp
    # Its socket opened (open_home waited) under connect-src 'self'.

    visa = pay(page, "pm_card_visa")
    statuses = [li.get_attribute("data-status") for li in timeline(page, visa).all()]
    assert statuses == ["pending", "processing", "succeeded"]
    expect(timeline(page, visa).nth(1)).to_contain_text("via socket")
    expect(page.locator(f"#payment-{visa} h3")).to_contain_text("12.34 USD")

    declined = pay(page, "pm_card_chargeDeclined", until="failed")
    failed = page.locator(f"#payment-{declined} li[data-status=failed]")
    expect(failed).to_contain_text("Your card was declined. (card_declined)")
    expect(page.locator("#announcer")).to_contain_text("failed")
    watched.screenshot("page-paid")
    assert watched.problems() == []


def test_api_errors_show_as_structured_messages(live, open_page) -> None:
    watched, _ = open_home(open_page, live)
    page = watched.page
    page.locator("#amount").fill("0")
    page.locator("#pay-button").click()
    expect(page.locator("#form-error")).to_contain_text("amount:", timeout=TIMEOUT)
    expect(page.locator("#form-error")).to_contain_text("(validation_error)")
    expect(page.locator("#amount")).to_have_attribute("aria-invalid", "true")
    # A 400 is the browser's own console error for a failed fetch: expected.
    assert watched.problems(r"status of 400", r"^http 400: .*/api/payments/$") == []


def test_keyboard_alone_pays(live, open_page) -> None:
    watched, _ = open_home(open_page, live)
    page = watched.page
    # The first Tab reaches the skip link, which leads to the form.
    page.keyboard.press("Tab")
    expect(page.locator("a.skip")).to_be_focused()
    assert page.evaluate("getComputedStyle(document.activeElement).outlineStyle") != (
        "none"
    )
    page.locator("#amount").focus()
    page.keyboard.type("0")  # 10000
    page.keyboard.press("Enter")  # submits the form
    expect(page.locator("article.payment")).to_have_count(1, timeout=TIMEOUT)
    payment_id = page.locator("article.payment").get_attribute("data-payment-id")
    wait_status(page, payment_id, "succeeded")
    assert watched.problems() == []


def test_page_is_readable_at_phone_width(live, open_page) -> None:
    watched, _ = open_home(open_page, live, viewport={"width": 360, "height": 740})
    page = watched.page
    pay(page, compare=True)
    expect(page.locator("#cmp-poll-after")).to_have_text(
        re.compile(r"\d+ ms"), timeout=TIMEOUT
    )
    # Nothing wider than the screen: no sideways scrolling.
    assert page.evaluate("document.documentElement.scrollWidth") <= 360
    watched.screenshot("page-phone")
    assert watched.problems() == []


# Recovery ---------------------------------------------------------------------


def record_statuses(page) -> None:
    """Count, in the page, every status its client emits (before any dedupe)."""
    page.evaluate(
        """() => {
            window.seen = [];
            window.paymentsPage.client.on("status", (p, meta) =>
                window.seen.push([p.id, p.status, p.version, meta.source]));
        }"""
    )


def test_page_reconnects_after_the_web_process_dies(
    transactional_db, isolated_channel_layer, open_page
) -> None:
    # The outcome waits at a gate while the web process is killed and started
    # again, and comes once the page has subscribed on its new socket: bound
    # to the old socket id, only that subscribe brings it.
    gate = OutcomeGate()
    with checked_stack(isolated_channel_layer, **gate.env) as live:
        watched, _ = open_home(open_page, live)
        page = watched.page
        first_socket = wait_live(page)
        record_statuses(page)
        payment_id = pay(page, until="processing")

        live.kill_web()
        expect(page.locator("#state")).not_to_have_attribute(
            "data-state", "open", timeout=TIMEOUT
        )
        live.start_web()
        second_socket = wait_live(page)
        assert second_socket != first_socket
        # The page's client has its subscribe on the new socket confirmed.
        page.wait_for_function(
            """([id, socketId]) => window.paymentsPage.client._followed
                .get(id)?.subscribedOn === socketId""",
            arg=[payment_id, second_socket],
            timeout=TIMEOUT,
        )
        gate.open()
        wait_status(page, payment_id, "succeeded")
        # Fence: a later payment's outcome on the same socket comes after any
        # copy of the first one still on its way.
        pay(page)

        seen = page.evaluate("window.seen")
        finals = [s for s in seen if s[0] == payment_id and s[1] == "succeeded"]
        assert len(finals) == 1, seen
        assert finals[0][3] == "socket", seen
        statuses = [
            li.get_attribute("data-status") for li in timeline(page, payment_id).all()
        ]
        assert statuses == ["pending", "processing", "succeeded"]
        watched.screenshot("page-reconnected")
        assert watched.problems(*CONNECTION_REFUSED) == []


def test_page_falls_back_to_polling_without_websockets(live, open_page) -> None:
    watched = open_page()
    page = watched.page
    # Every socket the page opens is closed at once, before any frame.
    page.route_web_socket(re.compile(r"/ws/payments/"), lambda ws: ws.close())
    page.goto(live.http_url + "/")
    expect(page.locator("#state")).to_have_attribute(
        "data-state", "polling", timeout=TIMEOUT
    )
    expect(page.locator("#state")).to_contain_text("WebSockets unavailable")
    record_statuses(page)
    payment_id = pay(page)
    final = page.locator(f"#payment-{payment_id} li[data-status=succeeded]")
    expect(final).to_contain_text("via poll")
    sources = {s[3] for s in page.evaluate("window.seen")}
    assert "socket" not in sources, sources
    watched.screenshot("page-polling")
    assert watched.problems() == []


def test_polling_makes_more_requests_than_push_for_one_payment(
    transactional_db, isolated_channel_layer, open_page
) -> None:
    with checked_stack(isolated_channel_layer, PAYMENTS_SIMULATED_DELAY="2.5") as live:
        watched, _ = open_home(open_page, live)
        page = watched.page
        # The switch by keyboard: focus and Space.
        page.locator("#compare").focus()
        page.keyboard.press("Space")
        expect(page.locator("#compare")).to_be_checked()
        pay(page)
        for side in ("push", "poll"):
            expect(page.locator(f"#cmp-{side}-after")).to_have_text(
                re.compile(r"\d+ ms"), timeout=TIMEOUT
            )
        push = int(page.locator("#cmp-push-requests").inner_text())
        poll = int(page.locator("#cmp-poll-requests").inner_text())
        assert push == 1, push  # the POST; every status came over the socket
        assert poll > push, (poll, push)
        assert int(page.locator("#cmp-poll-bytes").inner_text()) > int(
            page.locator("#cmp-push-bytes").inner_text()
        )
        watched.screenshot("page-polling-vs-push")
        assert watched.problems() == []


# The live admin -----------------------------------------------------------------


def create_payment(live: LiveStack, method: str = "pm_card_visa") -> dict:
    """Create a payment over the API, bound to no socket."""
    response = httpx.post(
        f"{live.http_url}/api/payments/",
        json={"amount": 2500, "payment_method": method},
        trust_env=False,
        timeout=TIMEOUT / 1000,
    )
    assert response.status_code == 202, response.text
    return response.json()


def log_in_as_staff(open_page, live: LiveStack):
    get_user_model().objects.create_user(
        username="staff", password="pw-for-tests", is_staff=True, is_superuser=True
    )
    watched = open_page()
    page = watched.page
    page.goto(f"{live.http_url}/admin/login/?next=/admin/")
    page.locator("#id_username").fill("staff")
    page.locator("#id_password").fill("pw-for-tests")
    page.locator("input[type=submit]").click()
    expect(page.locator("#user-tools")).to_be_visible(timeout=TIMEOUT)
    return watched


def not_reloaded(page) -> None:
    page.evaluate("window.notReloaded = true")


def test_admin_updates_live_for_staff_and_never_for_others(
    transactional_db, isolated_channel_layer, open_page
) -> None:
    # No worker until the admin's pages are open: the first payment waits.
    with checked_stack(
        isolated_channel_layer, worker=False, PAYMENTS_SIMULATED_DELAY="0.5"
    ) as live:
        visitor, _ = open_home(open_page, live)  # anonymous, not staff
        record_statuses(visitor.page)

        first = create_payment(live, "pm_card_chargeDeclined")
        listing = log_in_as_staff(open_page, live)
        page = listing.page
        open_admin(page, f"{live.http_url}/admin/payments/payment/")
        not_reloaded(page)
        row = page.locator("#result_list tr", has_text=first["id"])
        expect(row.locator("td.field-status")).to_have_text("Pending")

        detail = open_page(storage_state=page.context.storage_state())
        open_admin(
            detail.page, f"{live.http_url}/admin/payments/payment/{first['id']}/change/"
        )
        not_reloaded(detail.page)

        # A payment created while the list is open appears at its top.
        second = create_payment(live)
        live.start_worker(wait=True)
        new_row = page.locator("#result_list tr", has_text=second["id"])
        expect(new_row).to_have_count(1, timeout=TIMEOUT)
        expect(new_row.locator("td.field-money")).to_have_text("25.00 USD")

        expect(row.locator("td.field-status")).to_have_text("Failed", timeout=TIMEOUT)
        expect(row.locator("td.field-version")).to_have_text("3")
        status = detail.page.locator(".form-row.field-status .readonly")
        expect(status).to_have_text("Failed", timeout=TIMEOUT)
        expect(detail.page.locator(".form-row.field-version .readonly")).to_have_text(
            "3"
        )
        expect(
            detail.page.locator(".form-row.field-failure_code .readonly")
        ).to_have_text("card_declined")
        last_change = detail.page.locator("#events-group tbody tr").last
        expect(last_change.locator("td.field-to_status")).to_have_text("Failed")
        expect(detail.page.locator("#live-announcer")).to_contain_text("failed")
        expect(new_row.locator("td.field-status")).to_have_text(
            "Succeeded", timeout=TIMEOUT
        )
        for watched in (listing, detail):
            assert watched.page.evaluate("window.notReloaded") is True
        listing.screenshot("admin-changelist-live")
        detail.screenshot("admin-change-live")

        # Fence: the visitor's own payment, pushed after both of the others,
        # comes over the same socket; nothing of theirs came before it.
        own = pay(visitor.page)
        seen_ids = {s[0] for s in visitor.page.evaluate("window.seen")}
        assert seen_ids == {own}, seen_ids
        for watched in (visitor, listing, detail):
            assert watched.problems() == []


def hold_staff_socket(page, held: list) -> None:
    """Keep the admin's socket from reaching the server until the test says.

    The page's WebSocket opens (on Playwright's side) but no socket-id comes
    until ``connect_to_server()`` on its route (appended to ``held``): the
    window between the page's render and its socket joining staff.payments,
    held open.
    """
    page.route_web_socket(
        re.compile(r"/ws/payments/\?feed=staff$"), lambda ws: held.append(ws)
    )


def all_terminal(*payments: dict) -> bool:
    ids = [p["id"] for p in payments]
    found = Payment.objects.filter(pk__in=ids, status__in=TERMINAL_STATUSES)
    return found.count() == len(ids)


def test_admin_catches_up_on_changes_committed_before_its_socket_opened(
    transactional_db, isolated_channel_layer, open_page
) -> None:
    # No worker until both pages are rendered: the first payment waits.
    with checked_stack(
        isolated_channel_layer, worker=False, PAYMENTS_SIMULATED_DELAY="0.5"
    ) as live:
        listing = log_in_as_staff(open_page, live)
        detail = open_page(storage_state=listing.page.context.storage_state())
        held = []  # the two pages' sockets, held at the handshake
        hold_staff_socket(listing.page, held)
        hold_staff_socket(detail.page, held)
        first = create_payment(live, "pm_card_chargeDeclined")
        listing.page.goto(f"{live.http_url}/admin/payments/payment/")
        detail.page.goto(
            f"{live.http_url}/admin/payments/payment/{first['id']}/change/"
        )
        row = listing.page.locator("#result_list tr", has_text=first["id"])
        expect(row.locator("td.field-status")).to_have_text("Pending")
        status = detail.page.locator(".form-row.field-status .readonly")
        expect(status).to_have_text("Pending")
        for watched in (listing, detail):
            # Waiting for its socket-id: it has joined no group yet.
            expect(watched.page.locator("html")).to_have_attribute(
                "data-live-state", "connecting"
            )
            not_reloaded(watched.page)
        assert len(held) == 2

        # In the window: the first payment fails, a second is made and succeeds.
        # (The timeline then holds every change the first went through.)
        second = create_payment(live)
        live.start_worker(wait=True)
        wait_until(lambda: all_terminal(first, second), "both outcomes")
        for route in held:
            route.connect_to_server()

        expect(row.locator("td.field-status")).to_have_text("Failed", timeout=TIMEOUT)
        expect(row.locator("td.field-version")).to_have_text("3")
        new_row = listing.page.locator("#result_list tr", has_text=second["id"])
        expect(new_row.locator("td.field-status")).to_have_text("Succeeded")
        expect(new_row.locator("td.field-money")).to_have_text("25.00 USD")
        expect(listing.page.locator(".paginator")).to_contain_text("2 payments")

        expect(status).to_have_text("Failed", timeout=TIMEOUT)
        page = detail.page
        expect(page.locator(".form-row.field-version .readonly")).to_have_text("3")
        expect(page.locator(".form-row.field-failure_code .readonly")).to_have_text(
            "card_declined"
        )
        # The timeline as Django renders it: every change, none made up.
        changes = page.locator("#events-group tbody tr.has_original")
        expect(changes).to_have_count(3)
        expect(changes.locator("td.field-to_status")).to_have_text(
            ["Pending", "Processing", "Failed"]
        )
        calls = page.locator("#gateway_calls-group tbody tr.has_original")
        expect(calls).to_have_count(
            GatewayCall.objects.filter(payment_id=first["id"]).count()
        )
        assert calls.count() > 0
        for watched in (listing, detail):
            assert watched.page.evaluate("window.notReloaded") is True
            assert watched.problems() == []
        detail.screenshot("admin-change-caught-up")


def test_admin_empty_list_shows_a_new_payment(live, open_page) -> None:
    listing = log_in_as_staff(open_page, live)
    page = listing.page
    open_admin(page, f"{live.http_url}/admin/payments/payment/")
    expect(page.locator(".paginator")).to_contain_text("0 payments")
    not_reloaded(page)
    payment = create_payment(live)
    row = page.locator("#result_list tr", has_text=payment["id"])
    expect(row.locator("td.field-status")).to_have_text("Succeeded", timeout=TIMEOUT)
    expect(row.locator("td.field-version")).to_have_text("3")
    expect(page.locator(".paginator")).to_contain_text("1 payment")
    assert page.evaluate("window.notReloaded") is True
    listing.screenshot("admin-changelist-first-payment")
    assert listing.problems() == []


def test_other_pages_log_no_console_errors(live, open_page) -> None:
    # The API's docs (its own, wider CSP) and the admin's login page.
    watched = open_page()
    page = watched.page
    page.goto(f"{live.http_url}/api/docs/")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text(
        "Realtime payments API", timeout=TIMEOUT
    )
    page.goto(f"{live.http_url}/admin/login/")
    expect(page.locator("#id_username")).to_be_visible()
    assert watched.problems() == []


# The client's own behaviour -----------------------------------------------------


def test_client_reconnects_at_once_after_1001(live, open_page) -> None:
    watched = open_page()
    page = watched.page
    sockets = []

    def server(ws) -> None:  # a stand-in server on a path of its own
        sockets.append(ws)
        ws.send(json.dumps({"event": "socket-id", "data": f"mock-{len(sockets)}"}))
        if len(sockets) == 1:
            ws.close(code=1001, reason="server restarting")

    page.route_web_socket(re.compile(r"/ws/test-1001/$"), server)
    page.goto(live.http_url + "/")
    # Backoff of ten minutes: only the 1001 rule reconnects within the test.
    page.evaluate(
        """async () => {
            const url = "/static/realtime/payments-client.js";
            const { PaymentsClient } = await import(url);
            window.testClient = new PaymentsClient({
                socketPath: "/ws/test-1001/", initialDelay: 600000, maxDelay: 600000,
            });
            // Into the DOM, where Playwright's waits can see it (the page's
            // CSP forbids the eval that wait_for_function needs).
            window.testClient.on("state", ({ socketId }) => {
                document.body.dataset.testSocket = socketId ?? "";
            });
            window.testClient.connect();
        }"""
    )
    expect(page.locator("body")).to_have_attribute(
        "data-test-socket", "mock-2", timeout=TIMEOUT
    )
    assert page.evaluate("window.testClient.state") == "open"
    assert len(sockets) == 2
    assert watched.problems() == []


def start_test_client(page, socket_path: str, **options: object) -> None:
    """Start a PaymentsClient in the page on a mock server's path.

    Its state, socket id, retryIn, statuses and errors go into the DOM
    (body data attributes), where Playwright's waits can see them: the
    page's CSP forbids the eval that wait_for_function needs.
    """
    page.evaluate(
        """async ([socketPath, options]) => {
            const url = "/static/realtime/payments-client.js";
            const { PaymentsClient } = await import(url);
            const client = new PaymentsClient({ socketPath, ...options });
            window.testClient = client;
            const data = document.body.dataset;
            data.testErrors = "";
            client.on("state", ({ state, socketId, retryIn }) => {
                data.testState = state;
                data.testSocket = socketId ?? "";
                data.testRetryIn = String(retryIn);
            });
            client.on("status", (payment) => {
                const name = `data-test-status-${payment.id}`;
                document.body.setAttribute(name, payment.status);
            });
            client.on("error", (error) => {
                data.testErrors += `${error.code}:${error.paymentId} `;
            });
            client.connect();
        }""",
        [socket_path, options],
    )


def test_client_backs_off_after_a_second_1001_in_a_row(live, open_page) -> None:
    watched, _ = open_home(open_page, live, connected=False)
    page = watched.page
    sockets = []

    def server(ws) -> None:  # a server that keeps closing with 1001
        sockets.append(ws)
        ws.send(json.dumps({"event": "socket-id", "data": f"mock-{len(sockets)}"}))
        ws.close(code=1001, reason="going away")

    page.route_web_socket(re.compile(r"/ws/test-1001-loop/$"), server)
    # Ten minutes of backoff: a third socket within the test is a loop.
    start_test_client(page, "/ws/test-1001-loop/", initialDelay=600000, maxDelay=600000)
    body = page.locator("body")
    # The first 1001: at once; the second: the backoff, with jitter.
    expect(body).to_have_attribute(
        "data-test-retry-in", re.compile(r"^[1-9]\d{5}$"), timeout=TIMEOUT
    )
    assert 300000 <= int(body.get_attribute("data-test-retry-in")) <= 600000
    assert page.evaluate("window.testClient.state") == "reconnecting"
    assert len(sockets) == 2
    assert watched.problems() == []


def test_refused_subscribe_is_retried_unless_the_payment_is_not_found(
    live, open_page
) -> None:
    watched, _ = open_home(open_page, live, connected=False)
    page = watched.page
    gone, flaky = str(uuid.uuid4()), str(uuid.uuid4())
    sockets, subscribes = [], []

    def server(ws) -> None:
        index = len(sockets) + 1
        sockets.append(ws)
        ws.send(json.dumps({"event": "socket-id", "data": f"mock-{index}"}))
        refused_quietly = []

        def on_message(message: str) -> None:
            frame = json.loads(message)
            if frame["action"] == "ping":
                # After a rate_limited, the server drops the next frame quietly.
                if refused_quietly:
                    refused_quietly.clear()
                else:
                    ws.send(json.dumps({"event": "pong"}))
                return
            assert frame["action"] == "subscribe", frame
            payment_id = frame["payment_id"]
            subscribes.append((index, payment_id))
            tries = subscribes.count((index, payment_id))
            if payment_id == gone:
                error = {"code": "payment_not_found", "message": "payment_id: ..."}
            elif index == 1 and tries == 1:
                refused_quietly.append(True)
                error = {"code": "rate_limited", "message": "frame: slow down."}
            elif index == 1 and tries == 2:
                error = {"code": "unavailable", "message": "try again."}
            else:
                status = "processing" if index == 1 else "succeeded"
                data = {"id": payment_id, "status": status, "version": index + 1}
                ws.send(json.dumps({"event": "payment-status", "data": data}))
                return
            ws.send(json.dumps({"event": "error", "data": error}))

        ws.on_message(on_message)

    page.route_web_socket(re.compile(r"/ws/test-subscribe/$"), server)
    start_test_client(page, "/ws/test-subscribe/", initialDelay=50, maxDelay=200)
    body = page.locator("body")
    expect(body).to_have_attribute("data-test-socket", "mock-1", timeout=TIMEOUT)
    # The one not found first: on the next socket its subscribe would come
    # before the other's, whose answer is the fence.
    page.evaluate(
        """([gone, flaky]) => {
            window.testClient.follow({ id: gone, client_secret: "s" });
            window.testClient.follow({ id: flaky, client_secret: "s" });
        }""",
        [gone, flaky],
    )
    expect(body).to_have_attribute(
        f"data-test-status-{flaky}", "processing", timeout=TIMEOUT
    )
    assert subscribes.count((1, flaky)) == 3  # rate_limited, unavailable, then ok
    errors = body.get_attribute("data-test-errors").split()
    assert f"payment_not_found:{gone}" in errors, errors
    assert f"rate_limited:{flaky}" in errors and f"unavailable:{flaky}" in errors
    assert page.evaluate(f"window.testClient.isFollowing('{gone}')") is False

    sockets[0].close(code=1000)  # a new socket: the client subscribes again
    expect(body).to_have_attribute(
        f"data-test-status-{flaky}", "succeeded", timeout=TIMEOUT
    )
    assert subscribes.count((1, gone)) == 1
    assert [s for s in subscribes if s[0] == 2] == [(2, flaky)]
    assert watched.problems() == []


def test_client_makes_a_uuid4_key_without_crypto_random_uuid(live, open_page) -> None:
    # As on plain HTTP from another host: randomUUID exists in secure
    # contexts only (https, localhost), getRandomValues everywhere.
    watched = open_page()
    page = watched.page
    page.add_init_script("delete Crypto.prototype.randomUUID;")
    page.goto(live.http_url + "/")
    wait_live(page)
    assert page.evaluate("typeof crypto.randomUUID") == "undefined"
    keys = []

    def record_key(route) -> None:
        keys.append(route.request.headers.get("idempotency-key"))
        route.continue_()

    page.route(re.compile(r"/api/payments/$"), record_key)
    pay(page)
    pay(page)

    assert len(keys) == 2 and keys[0] != keys[1], keys
    for key in keys:
        parsed = uuid.UUID(key)
        assert str(parsed) == key and parsed.version == 4, key
        assert parsed.variant == uuid.RFC_4122, key
    assert watched.problems() == []


def test_pay_retries_a_lost_answer_with_the_same_idempotency_key(
    live, open_page
) -> None:
    watched, _ = open_home(open_page, live)
    page = watched.page
    keys = []

    def lose_first_answer(route) -> None:
        keys.append(route.request.headers.get("idempotency-key"))
        if len(keys) == 1:
            route.fetch()  # the server creates the payment...
            route.abort("connectionreset")  # ...and its answer is lost
        else:
            route.continue_()

    page.route(re.compile(r"/api/payments/$"), lose_first_answer)
    payment_id = pay(page)

    assert len(keys) == 2 and keys[0] == keys[1], keys
    assert uuid.UUID(keys[0]).version == 4  # crypto.randomUUID()
    assert list(Payment.objects.values_list("id", flat=True)) == [uuid.UUID(payment_id)]
    assert watched.problems(r"net::ERR_CONNECTION_RESET") == []


def test_staff_on_the_page_pay_with_csrf_and_see_only_their_payments(
    live, open_page
) -> None:
    watched = log_in_as_staff(open_page, live)
    page = watched.page
    page.goto(live.http_url + "/")
    wait_live(page)
    record_statuses(page)
    other = create_payment(live)  # someone else's, bound to no socket
    # A session POST needs the CSRF token (DRF): the client sends the cookie's.
    own = pay(page)
    # Fence: a second payment of the page's, pushed after the other's outcome
    # (committed before the page's own: one worker, outcomes in due order).
    assert Payment.objects.get(pk=other["id"]).status == "succeeded"
    fence = pay(page)
    seen_ids = {s[0] for s in page.evaluate("window.seen")}
    assert seen_ids == {own, fence}, seen_ids
    assert page.locator("article.payment").count() == 2
    assert watched.problems() == []


def test_pay_retries_a_5xx_with_the_same_key_after_retry_after(live, open_page) -> None:
    watched, _ = open_home(open_page, live)
    page = watched.page
    calls = []

    def unavailable_twice(route) -> None:
        calls.append((time.monotonic(), route.request.headers.get("idempotency-key")))
        if len(calls) == 1:  # the API's own 503, with its Retry-After
            route.fulfill(
                status=503,
                headers={"Retry-After": "1"},
                json={"error": {"code": "service_unavailable", "message": "busy"}},
            )
        elif len(calls) == 2:  # a proxy's 502: HTML, no Retry-After
            route.fulfill(status=502, body="<h1>Bad Gateway</h1>")
        else:
            route.continue_()

    page.route(re.compile(r"/api/payments/$"), unavailable_twice)
    payment_id = pay(page)

    assert len(calls) == 3, calls
    assert len({key for _, key in calls}) == 1, calls
    assert calls[1][0] - calls[0][0] >= 0.95, "Retry-After: 1 not waited for"
    assert list(Payment.objects.values_list("id", flat=True)) == [uuid.UUID(payment_id)]
    allowed = (r"status of 50[23]", r"^http 50[23]: .*/api/payments/$")
    assert watched.problems(*allowed) == []


def test_pay_does_not_retry_a_4xx(live, open_page) -> None:
    watched, _ = open_home(open_page, live)
    page = watched.page
    calls = []

    def conflict(route) -> None:
        calls.append(route.request.headers.get("idempotency-key"))
        route.fulfill(
            status=409,
            json={"error": {"code": "idempotency_conflict", "message": "in use"}},
        )

    page.route(re.compile(r"/api/payments/$"), conflict)
    page.locator("#pay-button").click()
    # pay() rejects only once it gave up: a retry would come before this.
    expect(page.locator("#form-error")).to_contain_text(
        "(idempotency_conflict)", timeout=TIMEOUT
    )
    assert len(calls) == 1, calls
    assert not Payment.objects.exists()
    assert watched.problems(r"status of 409", r"^http 409: .*/api/payments/$") == []
