"""The page at / and the live admin in Chromium, against real daphne and db_worker."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator

import httpx
import pytest
from django.contrib.auth import get_user_model
from playwright.sync_api import expect

from payments.models import Payment
from tests.live import LiveStack, checked_stack

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


def open_home(open_page, live: LiveStack):
    watched = open_page()
    response = watched.page.goto(live.http_url + "/")
    assert response.status == 200
    return watched, response


def wait_live(page) -> str:
    """Wait until the page's socket is open; return its socket id."""
    expect(page.locator("#state")).to_have_attribute(
        "data-state", "open", timeout=TIMEOUT
    )
    socket_id = page.locator("#socket-id").inner_text()
    assert re.fullmatch(r"[A-Za-z0-9_-]{32}", socket_id), socket_id
    return socket_id


def pay(page, method: str = "pm_card_visa", *, compare: bool = False) -> str:
    """Fill the form and pay; return the new payment's id."""
    page.locator("#amount").fill("1234")
    page.locator(f"input[name=payment_method][value={method}]").check()
    if compare:
        page.locator("#compare").check()
    before = page.locator("article.payment").count()
    page.locator("#pay-button").click()
    expect(page.locator("article.payment")).to_have_count(before + 1, timeout=TIMEOUT)
    return page.locator("article.payment").first.get_attribute("data-payment-id")


def timeline(page, payment_id: str):
    return page.locator(f"#payment-{payment_id} .timeline li")


def wait_status(page, payment_id: str, status: str) -> None:
    expect(
        page.locator(f"#payment-{payment_id} .timeline li[data-status={status}]")
    ).to_have_count(1, timeout=TIMEOUT)


# The page -----------------------------------------------------------------------


def test_visa_succeeds_and_declined_fails_with_its_reason(live, open_page) -> None:
    watched, response = open_home(open_page, live)
    page = watched.page
    csp = response.headers["content-security-policy"]
    assert "connect-src 'self'" in csp and "script-src 'self'" in csp, csp
    wait_live(page)  # the socket opened under connect-src 'self'

    visa = pay(page, "pm_card_visa")
    wait_status(page, visa, "succeeded")
    statuses = [li.get_attribute("data-status") for li in timeline(page, visa).all()]
    assert statuses == ["pending", "processing", "succeeded"]
    expect(timeline(page, visa).nth(1)).to_contain_text("via socket")
    expect(page.locator(f"#payment-{visa} h3")).to_contain_text("12.34 USD")

    declined = pay(page, "pm_card_chargeDeclined")
    wait_status(page, declined, "failed")
    failed = page.locator(f"#payment-{declined} li[data-status=failed]")
    expect(failed).to_contain_text("Your card was declined. (card_declined)")
    expect(page.locator("#announcer")).to_contain_text("failed")
    watched.screenshot("page-paid")
    assert watched.problems() == []


def test_api_errors_show_as_structured_messages(live, open_page) -> None:
    watched, _ = open_home(open_page, live)
    page = watched.page
    wait_live(page)
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
    wait_live(page)
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
    watched = open_page(viewport={"width": 360, "height": 740})
    page = watched.page
    page.goto(live.http_url + "/")
    wait_live(page)
    payment_id = pay(page, compare=True)
    wait_status(page, payment_id, "succeeded")
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
    # The outcome comes 8 s after the charge: the web process is killed and
    # started again in between, and the page is back on a socket (at most
    # the 5-s backoff ceiling after the restart) before it comes, bound to
    # the old socket id, so only the page's subscribe again brings it.
    with checked_stack(isolated_channel_layer, PAYMENTS_SIMULATED_DELAY="8") as live:
        watched, _ = open_home(open_page, live)
        page = watched.page
        first_socket = wait_live(page)
        record_statuses(page)
        payment_id = pay(page)
        wait_status(page, payment_id, "processing")

        live.kill_web()
        expect(page.locator("#state")).not_to_have_attribute(
            "data-state", "open", timeout=TIMEOUT
        )
        live.start_web()
        second_socket = wait_live(page)
        assert second_socket != first_socket
        wait_status(page, payment_id, "succeeded")
        # Fence: a later payment's outcome on the same socket comes after any
        # copy of the first one still on its way.
        fence = pay(page)
        wait_status(page, fence, "succeeded")

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
    wait_status(page, payment_id, "succeeded")
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
        wait_live(page)
        # The switch by keyboard: focus and Space.
        page.locator("#compare").focus()
        page.keyboard.press("Space")
        expect(page.locator("#compare")).to_be_checked()
        payment_id = pay(page)
        wait_status(page, payment_id, "succeeded")
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
    # Outcomes 6 s after the charge: time to open the admin's pages first.
    with checked_stack(isolated_channel_layer, PAYMENTS_SIMULATED_DELAY="6") as live:
        visitor, _ = open_home(open_page, live)  # anonymous, not staff
        wait_live(visitor.page)
        record_statuses(visitor.page)

        first = create_payment(live, "pm_card_chargeDeclined")
        listing = log_in_as_staff(open_page, live)
        page = listing.page
        page.goto(f"{live.http_url}/admin/payments/payment/")
        expect(page.locator("html")).to_have_attribute(
            "data-live-state", "open", timeout=TIMEOUT
        )
        not_reloaded(page)
        row = page.locator("#result_list tr", has_text=first["id"])
        expect(row.locator("td.field-status")).to_have_text(
            re.compile("Pending|Processing")
        )

        detail = open_page(storage_state=page.context.storage_state())
        detail.page.goto(
            f"{live.http_url}/admin/payments/payment/{first['id']}/change/"
        )
        expect(detail.page.locator("html")).to_have_attribute(
            "data-live-state", "open", timeout=TIMEOUT
        )
        not_reloaded(detail.page)

        # A payment created while the list is open appears at its top.
        second = create_payment(live)
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
        wait_status(visitor.page, own, "succeeded")
        seen_ids = {s[0] for s in visitor.page.evaluate("window.seen")}
        assert seen_ids == {own}, seen_ids
        for watched in (visitor, listing, detail):
            assert watched.problems() == []


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


def test_pay_retries_a_lost_answer_with_the_same_idempotency_key(
    live, open_page
) -> None:
    watched, _ = open_home(open_page, live)
    page = watched.page
    wait_live(page)
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
    wait_status(page, payment_id, "succeeded")

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
    wait_status(page, own, "succeeded")
    # Fence: a second payment of the page's, pushed after the other's outcome
    # (committed before the page's own: one worker, outcomes in due order).
    assert Payment.objects.get(pk=other["id"]).status == "succeeded"
    fence = pay(page)
    wait_status(page, fence, "succeeded")
    seen_ids = {s[0] for s in page.evaluate("window.seen")}
    assert seen_ids == {own, fence}, seen_ids
    assert page.locator("article.payment").count() == 2
    assert watched.problems() == []
