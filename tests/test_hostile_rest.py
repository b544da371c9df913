"""Hostile REST input: one table of bad requests, each answered the same way.

Every row must get its 4xx in the one error shape (JSON, never HTML, never a
5xx), with the documented code, a message that names the offending field (or
header, or ``body``), a small answer whatever the size of the request, and no
row written anywhere: no payment, event, job or remembered Idempotency-Key.

tests/test_api.py holds the basic validation matrix (each field's types and
bounds); this table adds what an attacker or a broken client sends.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

import pytest
from django.test import Client, RequestFactory
from django_tasks_db.models import DBTaskResult

from config import views
from payments.models import IdempotencyKey, Payment, PaymentEvent
from realtime.groups import new_socket_id

pytestmark = pytest.mark.django_db

CREATE = "/api/payments/"
SEED = "/api/payments/make-payment-with-socket"
LIST = "/api/payments/"
JSON = "application/json"
# Above DATA_UPLOAD_MAX_MEMORY_SIZE (Django's default, 2.5 MiB).
OVER_UPLOAD_LIMIT = 3 * 1024 * 1024
ONE_MB = 1024 * 1024
# An error answer stays small whatever was sent (no echo of a huge input).
MAX_ERROR_BYTES = 4096
VALID = {"amount": 1000}


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@dataclass(frozen=True)
class Bad:
    """One hostile request and the answer it must get."""

    status: int
    code: str
    #: Names the message must contain; for validation errors also keys of fields.
    names: tuple[str, ...]
    method: str = "POST"
    url: str = CREATE
    #: A JSON value to send, or raw bytes/str in ``raw``.
    json: Any = None
    raw: bytes | str | None = None
    content_type: str = JSON
    headers: dict[str, str] = field(default_factory=dict)
    query: dict[str, Any] | None = None
    #: "user" logs in a plain user first (the list needs one).
    as_user: bool = False

    def body(self) -> bytes:
        if self.raw is not None:
            return self.raw.encode() if isinstance(self.raw, str) else self.raw
        if self.json is None:
            return b""
        return json.dumps(self.json).encode()


def post(body: Any = None, *, url: str = CREATE, **kwargs: Any) -> dict[str, Any]:
    return {"method": "POST", "url": url, "json": body, **kwargs}


def invalid(*names: str, **request: Any) -> Bad:
    return Bad(400, "validation_error", names, **request)


def row(case_id: str, bad: Bad) -> Any:
    return pytest.param(bad, id=case_id)


def bad_list_query(name: str, value: str) -> Bad:
    """A logged-in GET of the list with one bad query parameter."""
    return invalid(name, method="GET", url=LIST, query={name: value}, as_user=True)


def surrogate_list_query(name: str) -> Bad:
    """The list with ``name`` set to U+D800 as UTF-8 would spell it, if it could."""
    return invalid(name, method="GET", url=f"{LIST}?{name}=%ED%A0%80", as_user=True)


ROWS = [
    # Types and bounds ---------------------------------------------------------
    row("amount-exponent", invalid("amount", raw='{"amount": 1e3}')),
    row("amount-inf-literal", invalid("amount", raw='{"amount": 1e999}')),
    row("amount-negative-zero", invalid("amount", raw='{"amount": -0}')),
    row("amount-2**63", invalid("amount", **post({"amount": 2**63}))),
    row("amount-10**40", invalid("amount", **post({"amount": 10**40}))),
    row(
        "amount-5000-digits",
        Bad(400, "parse_error", ("body",), raw='{"amount": 1' + "0" * 5000 + "}"),
    ),
    row(
        "amount-arabic-digits",
        invalid("amount", **post({"amount": "\u0661\u0660\u0660\u0660"})),
    ),
    row("amount-hex-string", invalid("amount", **post({"amount": "0x3e8"}))),
    row("amount-duplicate-key", invalid("amount", raw='{"amount":1000,"amount":0}')),
    row(
        "description-bool",
        invalid("description", **post({**VALID, "description": True})),
    ),
    row(
        "description-object",
        invalid("description", **post({**VALID, "description": {"a": 1}})),
    ),
    row("socket-id-list", invalid("socket_id", **post({**VALID, "socket_id": ["a"]}))),
    row(
        "method-upper-case",
        invalid("payment_method", **post({**VALID, "payment_method": "PM_CARD_VISA"})),
    ),
    # Nulls for every field ----------------------------------------------------
    row(
        "null-payment-method",
        invalid("payment_method", **post({**VALID, "payment_method": None})),
    ),
    row(
        "null-description",
        invalid("description", **post({**VALID, "description": None})),
    ),
    row("null-socket-id", invalid("socket_id", **post({**VALID, "socket_id": None}))),
    row(
        "null-everything",
        invalid(
            "amount",
            "currency",
            "payment_method",
            "description",
            "socket_id",
            **post(
                dict.fromkeys(
                    ["amount", "currency", "payment_method", "description", "socket_id"]
                )
            ),
        ),
    ),
    row(
        "seed-null-everything",
        invalid(
            "amount",
            "socketId",
            "currency",
            **post({"amount": None, "socketId": None, "currency": None}, url=SEED),
        ),
    ),
    # Unicode and control characters -------------------------------------------
    row("currency-nul", invalid("currency", **post({**VALID, "currency": "u\x00d"}))),
    row("currency-emoji", invalid("currency", **post({**VALID, "currency": "💵"}))),
    row(
        "currency-rtl-override",
        invalid("currency", **post({**VALID, "currency": "\u202edsu"})),
    ),
    row(
        "currency-fullwidth",
        invalid("currency", **post({**VALID, "currency": "\uff55\uff53\uff44"})),
    ),
    row(
        "currency-cyrillic-lookalike",
        invalid("currency", **post({**VALID, "currency": "us\u0501"})),
    ),
    row(
        "method-zero-width-space",
        invalid(
            "payment_method", **post({**VALID, "payment_method": "pm_card_visa\u200b"})
        ),
    ),
    row(
        "method-nul",
        invalid("payment_method", **post({**VALID, "payment_method": "pm\x00"})),
    ),
    row(
        "description-only-nul",
        invalid("description", **post({**VALID, "description": "\x00"})),
    ),
    row(
        "description-256-emoji",
        invalid("description", **post({**VALID, "description": "😀" * 256})),
    ),
    row(
        "socket-id-rtl-override",
        invalid("socket_id", **post({**VALID, "socket_id": "\u202e" + "a" * 31})),
    ),
    row(
        "socket-id-cyrillic",
        invalid("socket_id", **post({**VALID, "socket_id": "\u0430" * 32})),
    ),
    row(
        "seed-socket-id-emoji",
        invalid("socketId", **post({**VALID, "socketId": "😀" * 16}, url=SEED)),
    ),
    row("unknown-field-nul-name", invalid("\x00", **post({**VALID, "\x00": 1}))),
    # A JSON escape of a lone surrogate decodes to a str no UTF-8 can carry:
    # named as the client wrote it (the literal \ud800), on both create routes.
    row(
        "unknown-field-lone-surrogate-name",
        invalid("\\ud800", raw='{"amount":1000,"\\ud800":1}'),
    ),
    row(
        "seed-unknown-field-lone-surrogate-name",
        invalid("\\udfff", url=SEED, raw='{"amount":1000,"\\udfff":1}'),
    ),
    row(
        "unknown-field-surrogate-inside-name",
        invalid("a\\udc00b", raw='{"amount":1000,"a\\udc00b":1}'),
    ),
    *[
        row(f"{url_id}{name}-lone-surrogate", invalid(name, url=url, raw=raw))
        for url_id, url in [("", CREATE), ("seed-", SEED)]
        for name, raw in [
            ("description", '{"amount":1000,"description":"a\\ud800"}'),
            ("currency", '{"amount":1000,"currency":"\\ud800sd"}'),
            ("payment_method", '{"amount":1000,"payment_method":"\\udbff"}'),
            ("amount", '{"amount":"\\ud800"}'),
        ]
    ],
    row(
        "socket-id-lone-surrogate",
        invalid("socket_id", raw='{"amount":1000,"socket_id":"\\ud800"}'),
    ),
    row(
        "seed-socket-id-lone-surrogate",
        invalid("socketId", url=SEED, raw='{"amount":1000,"socketId":"\\ud800"}'),
    ),
    row(
        "idempotency-key-lone-surrogate",
        invalid(
            "Idempotency-Key", **post(VALID, headers={"Idempotency-Key": "\ud800"})
        ),
    ),
    row(
        "unknown-field-proto", invalid("__proto__", **post({**VALID, "__proto__": {}}))
    ),
    row("unknown-field-case", invalid("Amount", **post({**VALID, "Amount": 1}))),
    row(
        "unknown-field-seed-name-on-create",
        invalid("socketId", **post({**VALID, "socketId": new_socket_id()})),
    ),
    row(
        "unknown-field-name-10k-chars",
        # Names are cut to 64 characters in the answer.
        invalid("x" * 64, **post({**VALID, "x" * 10_000: 1})),
    ),
    # Sizes and nesting --------------------------------------------------------
    row(
        "1mb-description",
        invalid("description", **post({**VALID, "description": "x" * ONE_MB})),
    ),
    row(
        "1mb-of-unknown-fields",
        # Only the first 20 are named, so the answer stays small.
        invalid("k00000", **post({**VALID, **{f"k{i:05}": 1 for i in range(70_000)}})),
    ),
    row(
        "over-upload-limit",
        Bad(
            413,
            "request_too_large",
            ("body",),
            **post({**VALID, "description": "x" * OVER_UPLOAD_LIMIT}),
        ),
    ),
    row(
        "seed-over-upload-limit",
        Bad(
            413,
            "request_too_large",
            ("body",),
            **post({**VALID, "description": "x" * OVER_UPLOAD_LIMIT}, url=SEED),
        ),
    ),
    row(
        "deep-array-in-field",
        Bad(
            400,
            "parse_error",
            ("body",),
            raw='{"amount":1000,"description":' + "[" * 50_000 + "]" * 50_000 + "}",
        ),
    ),
    row(
        "deep-objects",
        Bad(400, "parse_error", ("body",), raw='{"a":' * 100_000 + "1" + "}" * 100_000),
    ),
    row(
        "nested-500-in-field",
        invalid(
            "description",
            raw='{"amount":1000,"description":' + "[" * 500 + "]" * 500 + "}",
        ),
    ),
    row(
        "seed-deep-nesting",
        Bad(
            400,
            "parse_error",
            ("body",),
            url=SEED,
            raw="{" * 1 + '"a":' + "[" * 100_000,
        ),
    ),
    # Broken JSON --------------------------------------------------------------
    row(
        "utf8-bom",
        Bad(400, "parse_error", ("body",), raw=b'\xef\xbb\xbf{"amount":1000}'),
    ),
    row(
        "trailing-garbage", Bad(400, "parse_error", ("body",), raw='{"amount":1000} x')
    ),
    row("single-quotes", Bad(400, "parse_error", ("body",), raw="{'amount': 1000}")),
    row(
        "nan-in-field",
        Bad(400, "parse_error", ("body",), raw='{"amount":1000,"description":NaN}'),
    ),
    row(
        "declared-utf16-sent-utf8",
        Bad(
            400,
            "parse_error",
            ("body",),
            raw='{"amount":1000}',
            content_type="application/json; charset=utf-16",
        ),
    ),
    # Wrong content types ------------------------------------------------------
    row(
        "text-plain",
        Bad(
            415,
            "unsupported_media_type",
            ("Content-Type",),
            raw='{"amount":1000}',
            content_type="text/plain",
        ),
    ),
    row(
        "no-content-type",
        Bad(
            415,
            "unsupported_media_type",
            ("Content-Type",),
            raw='{"amount":1000}',
            content_type="",
        ),
    ),
    row(
        "seed-form-urlencoded",
        Bad(
            415,
            "unsupported_media_type",
            ("Content-Type",),
            url=SEED,
            raw="amount=1000",
            content_type="application/x-www-form-urlencoded",
        ),
    ),
    row(
        "multipart",
        Bad(
            415,
            "unsupported_media_type",
            ("Content-Type",),
            raw=(
                '--b\r\nContent-Disposition: form-data; name="amount"\r\n\r\n'
                "1000\r\n--b--\r\n"
            ),
            content_type="multipart/form-data; boundary=b",
        ),
    ),
    row(
        "json-api-vendor-type",
        Bad(
            415,
            "unsupported_media_type",
            ("Content-Type",),
            raw='{"amount":1000}',
            content_type="application/vnd.api+json",
        ),
    ),
    row(
        "xml",
        Bad(
            415,
            "unsupported_media_type",
            ("Content-Type",),
            raw="<amount>1000</amount>",
            content_type="application/xml",
        ),
    ),
    # Idempotency-Key ---------------------------------------------------------------
    row(
        "idempotency-key-empty",
        invalid("Idempotency-Key", **post(VALID, headers={"Idempotency-Key": ""})),
    ),
    row(
        "idempotency-key-256-chars",
        invalid(
            "Idempotency-Key", **post(VALID, headers={"Idempotency-Key": "k" * 256})
        ),
    ),
    row(
        "idempotency-key-control-char",
        invalid(
            "Idempotency-Key", **post(VALID, headers={"Idempotency-Key": "key\x01"})
        ),
    ),
    row(
        "idempotency-key-tab",
        invalid("Idempotency-Key", **post(VALID, headers={"Idempotency-Key": "a\tb"})),
    ),
    row(
        "seed-idempotency-key-too-long",
        invalid(
            "Idempotency-Key",
            **post(VALID, url=SEED, headers={"Idempotency-Key": "k" * 1000}),
        ),
    ),
    row(
        "idempotency-key-with-invalid-body",
        # Failed validation is not remembered (no IdempotencyKey row).
        invalid("amount", **post({"amount": 0}, headers={"Idempotency-Key": "k-1"})),
    ),
    # GET /api/payments/{id}/ --------------------------------------------------
    row(
        "detail-nul-id",
        Bad(404, "not_found", ("payment_id",), method="GET", url="/api/payments/%00/"),
    ),
    row(
        "detail-10k-id",
        Bad(
            404,
            "not_found",
            ("payment_id",),
            method="GET",
            url=f"/api/payments/{'a' * 10_000}/",
        ),
    ),
    row(
        "detail-unicode-id",
        Bad(
            404,
            "not_found",
            ("payment_id",),
            method="GET",
            url="/api/payments/%F0%9F%92%B5/",
        ),
    ),
    row(
        "detail-uuid-braces",
        Bad(
            404,
            "not_found",
            ("payment_id",),
            method="GET",
            url="/api/payments/{00000000-0000-0000-0000-000000000000}/",
        ),
    ),
    row(
        "detail-traversal",
        Bad(
            404,
            "not_found",
            ("path",),
            method="GET",
            url="/api/payments/..%2F..%2Fadmin/x/",
        ),
    ),
    row(
        "detail-huge-secret",
        Bad(
            404,
            "not_found",
            ("payment_id",),
            method="GET",
            url="/api/payments/00000000-0000-0000-0000-000000000000/",
            query={"client_secret": "s" * 100_000},
        ),
    ),
    row(
        "detail-nul-secret-header",
        Bad(
            404,
            "not_found",
            ("payment_id",),
            method="GET",
            url="/api/payments/00000000-0000-0000-0000-000000000000/",
            headers={"X-Client-Secret": "\x00"},
        ),
    ),
    # GET /api/payments/ (the list) --------------------------------------------
    row(
        "list-anonymous",
        Bad(401, "not_authenticated", ("Authorization",), method="GET", url=LIST),
    ),
    row(
        "list-garbage-token",
        Bad(
            401,
            "authentication_failed",
            ("Authorization",),
            method="GET",
            url=LIST,
            headers={"Authorization": "Token nope"},
        ),
    ),
    row(
        "list-token-with-spaces",
        Bad(
            401,
            "authentication_failed",
            ("Authorization",),
            method="GET",
            url=LIST,
            headers={"Authorization": "Token a b"},
        ),
    ),
    row("list-status-bogus", bad_list_query("status", "bogus")),
    row("list-status-upper", bad_list_query("status", "PENDING")),
    row("list-status-one-bad-of-two", bad_list_query("status", ["pending", "x"])),
    row("list-created-after-notadate", bad_list_query("created_after", "notadate")),
    row(
        "list-created-before-month-13",
        bad_list_query("created_before", "2024-13-01T00:00:00Z"),
    ),
    row(
        "list-created-after-past-datetime-max",
        bad_list_query("created_after", "9999-12-31T23:59:59-14:00"),
    ),
    row(
        "list-created-before-before-datetime-min",
        bad_list_query("created_before", "0001-01-01T00:00:00+14:00"),
    ),
    row("list-page-size-abc", bad_list_query("page_size", "abc")),
    row("list-page-size-0", bad_list_query("page_size", "0")),
    row("list-page-size-100000", bad_list_query("page_size", "100000")),
    row("list-page-size-negative", bad_list_query("page_size", "-5")),
    row("list-page-size-fraction", bad_list_query("page_size", "1.5")),
    row("list-page-size-5000-digits", bad_list_query("page_size", "9" * 5000)),
    row(
        "list-cursor-5000-digit-offset",
        bad_list_query("cursor", b64("o=" + "9" * 5000)),
    ),
    row("list-page-size-arabic-digit", bad_list_query("page_size", "\u0665")),
    row("list-cursor-garbage", bad_list_query("cursor", "garbage")),
    row("list-cursor-non-ascii", bad_list_query("cursor", "é")),
    row("list-cursor-bad-position", bad_list_query("cursor", b64("p=notadate"))),
    row(
        "list-cursor-position-past-max",
        bad_list_query("cursor", b64("p=9999-12-31T23:59:59-14:00")),
    ),
    row("list-cursor-bad-reverse", bad_list_query("cursor", b64("r=x"))),
    # Percent-encoded surrogates (UTF-8 cannot hold them) in every parameter.
    row("list-status-surrogate", surrogate_list_query("status")),
    row("list-created-after-surrogate", surrogate_list_query("created_after")),
    row("list-cursor-surrogate", surrogate_list_query("cursor")),
    row("list-page-size-surrogate", surrogate_list_query("page_size")),
    row(
        "detail-surrogate-secret",
        Bad(
            404,
            "not_found",
            ("payment_id",),
            method="GET",
            url=f"/api/payments/{'0' * 8}-0000-0000-0000-{'0' * 12}/"
            "?client_secret=%ED%A0%80",
        ),
    ),
    row(
        "detail-surrogate-secret-header",
        Bad(
            404,
            "not_found",
            ("payment_id",),
            method="GET",
            url=f"/api/payments/{'0' * 8}-0000-0000-0000-{'0' * 12}/",
            headers={"X-Client-Secret": "\ud800"},
        ),
    ),
    row(
        "detail-surrogate-id",
        Bad(
            404,
            "not_found",
            ("payment_id",),
            method="GET",
            url="/api/payments/%ED%A0%80/",
        ),
    ),
    row(
        "token-surrogate-username",
        invalid(
            "username",
            url="/api/auth/token/",
            raw='{"username":"\\ud800","password":"x"}',
        ),
    ),
]


def assert_nothing_written() -> None:
    assert Payment.objects.count() == 0
    assert PaymentEvent.objects.count() == 0
    assert DBTaskResult.objects.count() == 0
    assert IdempotencyKey.objects.count() == 0


@pytest.mark.parametrize("debug", [False, True], ids=["debug-off", "debug-on"])
@pytest.mark.parametrize("bad", ROWS)
def test_hostile_request_gets_a_clean_error(
    bad: Bad, debug: bool, django_user_model, settings
) -> None:
    # JSON under /api/ with DEBUG on as well: none of Django's technical pages.
    settings.DEBUG = debug
    client = Client()
    if bad.as_user:
        client.force_login(
            django_user_model.objects.create_user(username="mallory", password="pw")
        )

    response = client.generic(
        bad.method,
        bad.url,
        bad.body(),
        content_type=bad.content_type,
        headers=bad.headers,
        query_params=bad.query,
    )

    assert response.status_code == bad.status, response.content[:2000]
    assert response["Content-Type"] == "application/json", response["Content-Type"]
    assert len(response.content) <= MAX_ERROR_BYTES, len(response.content)
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert error["code"] == bad.code, error
    assert isinstance(error["message"], str)
    for name in bad.names:
        assert name in error["message"], (name, error["message"])
    if bad.code == "validation_error":
        assert set(error) == {"code", "message", "fields"}
        for name in bad.names:
            assert name in error["fields"], (name, error["fields"])
            assert all(isinstance(m, str) and m for m in error["fields"][name])
    else:
        assert set(error) == {"code", "message"}
    assert "Traceback" not in response.content.decode()
    assert_nothing_written()


def test_table_has_at_least_forty_rows() -> None:
    assert len(ROWS) >= 40
    assert len({r.id for r in ROWS}) == len(ROWS)


# Unicode that is data, not an attack, is kept exactly ---------------------------


@pytest.mark.parametrize(
    "description",
    [
        pytest.param("😀" * 255, id="255-astral-characters"),
        pytest.param("\u202eevil.exe\u202c", id="rtl-override"),
        pytest.param("e\u0301" * 10, id="combining-marks"),
        pytest.param("<script>alert(1)</script>", id="html"),
        pytest.param("'; DROP TABLE payments_payment; --", id="sql"),
    ],
)
def test_unicode_description_is_stored_and_returned_as_sent(
    description: str,
) -> None:
    client = Client()
    response = client.post(
        CREATE, {**VALID, "description": description}, content_type=JSON
    )

    assert response.status_code == 202, response.content
    assert response["Content-Type"] == "application/json"
    created = response.json()
    assert created["description"] == description
    assert Payment.objects.get().description == description
    read = client.get(
        f"/api/payments/{created['id']}/", {"client_secret": created["client_secret"]}
    )
    assert read.json()["description"] == description


# The 500 handler (no client input reaches it; called directly) -------------------


def test_server_error_under_api_is_json_without_details() -> None:
    request = RequestFactory().get("/api/payments/")

    response = views.server_error(request)

    assert response.status_code == 500
    assert response["Content-Type"] == "application/json"
    assert json.loads(response.content) == {
        "error": {"code": "server_error", "message": "Internal error; retry."}
    }


def test_server_error_elsewhere_is_django_page() -> None:
    response = views.server_error(RequestFactory().get("/admin/"))

    assert response.status_code == 500
    assert response["Content-Type"].startswith("text/html")


# CORS: only the allowed origins may read answers, and never with cookies ---------


@pytest.mark.parametrize(
    "origin",
    ["http://evil.example", "http://localhost:3000.evil.example", "null"],
)
def test_cors_preflight_from_a_foreign_origin_is_not_allowed(origin: str) -> None:
    response = Client().options(
        CREATE,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )

    assert "Access-Control-Allow-Origin" not in response
    assert "Access-Control-Allow-Credentials" not in response


def test_cors_preflight_from_the_frontend_is_allowed_without_credentials() -> None:
    origin = "http://localhost:3000"

    response = Client().options(
        CREATE,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, idempotency-key",
        },
    )
    created = Client().post(
        CREATE, VALID, content_type=JSON, headers={"Origin": origin}
    )

    assert response.status_code == 204
    assert response["Access-Control-Allow-Origin"] == origin
    allowed = response["Access-Control-Allow-Headers"]
    assert {"content-type", "idempotency-key", "x-client-secret"} <= set(
        allowed.replace(" ", "").split(",")
    )
    # A page on an allowed origin still cannot ride a user's session cookie.
    assert "Access-Control-Allow-Credentials" not in response
    assert created["Access-Control-Allow-Origin"] == origin
    # Location to follow the payment; Retry-After of a 429 or a 503; the
    # request id to quote in a report.
    exposed = created["Access-Control-Expose-Headers"].lower().replace(" ", "")
    assert set(exposed.split(",")) == {"location", "retry-after", "x-request-id"}
