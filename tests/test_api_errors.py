"""Under /api/ every answer is JSON, whatever DEBUG says and whatever the target.

Django answers some requests before any view runs (a Host outside
ALLOWED_HOSTS, too many query fields, CORS preflights, APPEND_SLASH, a path
the resolver does not know) and, with DEBUG on, with its technical pages
rather than the handler400/404/500 hooks. Each case is sent to the real ASGI
application (config.asgi's HTTP handler, all middleware) with DEBUG off and
on, and the targets only a server parses (``//api/...``, absolute-form) to a
real daphne running the production settings.
"""

from __future__ import annotations

import http.client
import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from django.conf import settings
from django.db import connection

from payments import selectors
from payments.models import Payment
from tests.live import HOST, LiveStack, free_port, process_env
from tests.live import database_url as database_url_of

ORIGIN = "http://localhost:3000"  # in the test settings' CORS_ALLOWED_ORIGINS
NO_SUCH_PAYMENT = "00000000-0000-0000-0000-000000000000"
DETAIL = f"/api/payments/{NO_SUCH_PAYMENT}/"
JSON = {"Content-Type": "application/json"}
TIMEOUT = 10.0


def assert_json_error(
    status: int, headers: Any, content: bytes, expected: int, *names: str
) -> dict[str, Any]:
    """Check for ``expected`` in the error shape, its message naming ``names``."""
    assert status == expected, (status, content[:500])
    assert headers.get("content-type") == "application/json", headers
    error = json.loads(content)["error"]
    assert {"code", "message"} <= set(error) <= {"code", "message", "fields"}, error
    for name in names:
        assert name in error["message"], (name, error)
    assert b"Traceback" not in content
    return error


def check(response: httpx.Response, expected: int, *names: str) -> dict[str, Any]:
    return assert_json_error(
        response.status_code, response.headers, response.content, expected, *names
    )


@pytest.fixture(params=[False, True], ids=["debug-off", "debug-on"])
def api(request, settings, asgi_client: httpx.AsyncClient) -> httpx.AsyncClient:
    """The ASGI client, with DEBUG off (production) and on."""
    settings.DEBUG = request.param
    return asgi_client


# Requests Django answers before a view ----------------------------------------


async def test_a_host_outside_allowed_hosts_gets_json_400(api, caplog) -> None:
    for method, path in [("GET", DETAIL), ("POST", "/api/payments/")]:
        response = await api.request(
            method,
            path,
            content=b'{"amount": 1000}',
            headers={**JSON, "Host": "evil.example"},
        )

        error = check(response, 400, "Host")
        assert error["code"] == "invalid_host"
        assert "evil.example" not in response.text
    # Django's security log still hears of each, as when Django answers.
    logged = [r for r in caplog.records if r.name == "django.security.DisallowedHost"]
    assert len(logged) == 2, caplog.records


async def test_more_query_fields_than_django_parses_gets_json_400(api, caplog) -> None:
    query = "&".join(
        f"f{i}=1" for i in range(settings.DATA_UPLOAD_MAX_NUMBER_FIELDS + 1)
    )

    for path in [DETAIL, "/api/payments/"]:
        response = await api.get(f"{path}?{query}")

        error = check(response, 400, "query")
        assert error["code"] == "too_many_fields"
    logged = [r.name for r in caplog.records if r.name.startswith("django.security")]
    assert logged == ["django.security.TooManyFieldsSent"] * 2


async def test_more_form_fields_than_django_parses_gets_json_400(api) -> None:
    # The token endpoint also takes form bodies (DRF's ObtainAuthToken).
    body = "&".join(
        f"f{i}=1" for i in range(settings.DATA_UPLOAD_MAX_NUMBER_FIELDS + 1)
    )

    response = await api.post(
        "/api/auth/token/",
        content=body.encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )

    assert check(response, 400, "body")["code"] == "too_many_fields"


@pytest.mark.parametrize(
    "content_type", ["text/plain; a*=x'y'z", "application/json;" + "a=b;" * 3000]
)
async def test_a_malformed_content_type_is_json_400_on_any_path(
    api, content_type: str, caplog
) -> None:
    for method, path in [
        ("POST", "/api/payments/"),
        ("GET", DETAIL),
        ("POST", "/api/auth/token/"),
        ("GET", "/healthz"),
        ("GET", "/admin/login/"),
    ]:
        response = await api.request(
            method,
            path,
            content=b"{}",
            headers={"Content-Type": content_type, "Origin": ORIGIN},
        )

        assert check(response, 400, "Content-Type")["code"] == "bad_request"
        if path.startswith("/api/"):  # CORS_URLS_REGEX: readable by the page
            assert response.headers["access-control-allow-origin"] == ORIGIN
    assert not [r for r in caplog.records if r.exc_info], caplog.records


async def test_a_cors_preflight_is_204_with_no_body_and_no_type(api) -> None:
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type",
    }

    allowed = await api.options(
        "/api/payments/", headers={**preflight, "Origin": ORIGIN}
    )
    foreign = await api.options(
        "/api/payments/", headers={**preflight, "Origin": "http://evil.example"}
    )

    for response in (allowed, foreign):
        assert response.status_code == 204, response
        assert "content-type" not in response.headers
        assert response.content == b""
    assert allowed.headers["access-control-allow-origin"] == ORIGIN
    assert "access-control-allow-origin" not in foreign.headers


@pytest.mark.django_db(transaction=True)
async def test_a_post_without_the_slash_is_served_not_redirected(api) -> None:
    response = await api.post(
        "/api/payments", content=b'{"amount": 1000}', headers=JSON
    )

    assert response.status_code == 202, response.content
    created = response.json()
    assert response.headers["location"] == f"/api/payments/{created['id']}/"
    assert await Payment.objects.filter(pk=created["id"]).aexists()


async def test_other_paths_without_the_slash_are_json_404_naming_the_slash(api) -> None:
    for method, path in [
        ("GET", DETAIL.rstrip("/")),
        ("POST", "/api/auth/token"),
        ("GET", "/api/schema"),
    ]:
        response = await api.request(method, path, content=b"{}", headers=JSON)

        error = check(response, 404, "path", f"{path}/")
        assert error["code"] == "not_found"
        assert "location" not in response.headers


async def test_an_unknown_api_path_is_json_404(api) -> None:
    for path in ["/api", "/api/", "/api/nope", "/api/payments/x/y/", "/api/%00/"]:
        response = await api.get(path)

        assert check(response, 404, "path")["code"] == "not_found"


@pytest.mark.django_db(transaction=True)
async def test_an_unexpected_error_under_api_is_json_500_without_details(
    api, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(**_: Any) -> None:
        raise RuntimeError("secret detail")  # a bug, injected

    monkeypatch.setattr(selectors, "payment_get_visible", broken)

    response = await api.get(DETAIL)

    error = check(response, 500)
    assert error == {"code": "server_error", "message": "Internal error; retry."}
    assert "secret detail" not in response.text


# HEAD and OPTIONS on every route ----------------------------------------------

ROUTES = [
    # (path, HEAD status, OPTIONS status); anonymous, no Origin.
    ("/api/payments/", 401, 200),
    ("/api/payments", 401, 200),
    ("/api/payments/make-payment-with-socket", 405, 200),
    ("/api/payments/make-payment-with-socket/", 405, 200),
    (DETAIL, 404, 200),
    ("/api/auth/token/", 405, 200),
    ("/api/schema/", 200, 200),
    ("/api/docs/", 200, 405),
    ("/api/nope/", 404, 404),
]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(("path", "head", "options"), ROUTES)
async def test_head_and_options_on_every_api_route(
    api, path: str, head: int, options: int
) -> None:
    for method, expected in [("HEAD", head), ("OPTIONS", options)]:
        response = await api.request(method, path)

        assert response.status_code == expected, (method, response.content[:500])
        if expected >= 400:
            content_type = response.headers.get("content-type")
            assert content_type == "application/json", (method, content_type)
            if method == "OPTIONS":  # a HEAD answer has no body to look at
                check(response, expected, "")


@pytest.mark.django_db(transaction=True)
async def test_head_of_the_list_as_a_user_is_its_get_without_a_body(
    api, django_user_model
) -> None:
    user = await django_user_model.objects.acreate(username="ann")
    token = await _token(user)
    auth = {"Authorization": f"Token {token}"}

    head = await api.head("/api/payments/", headers=auth)
    get = await api.get("/api/payments/", headers=auth)

    assert head.status_code == get.status_code == 200
    assert get.json()["results"] == []


async def _token(user: Any) -> str:
    from rest_framework.authtoken.models import Token

    return (await Token.objects.acreate(user=user)).key


# The wire: targets daphne parses, production settings --------------------------


@pytest.fixture(scope="module", params=[False, True], ids=["debug-off", "debug-on"])
def live_web(request, django_db_setup, django_db_blocker) -> Iterator[LiveStack]:
    """daphne (realtime.server) on config.settings.production, on the test database."""
    with django_db_blocker.unblock():
        database_url = database_url_of(connection.settings_dict)
    stack = LiveStack(
        port=free_port(),
        env=process_env(
            DJANGO_SETTINGS_MODULE="config.settings.production",
            DJANGO_DEBUG=str(request.param).lower(),
            DJANGO_SECRET_KEY="x" * 50,
            DJANGO_ALLOWED_HOSTS=HOST,
            DJANGO_SECURE_SSL_REDIRECT="false",
            CORS_ALLOWED_ORIGINS=ORIGIN,
            DATABASE_URL=database_url,
            REDIS_URL=settings.REDIS_URL,
            CHANNELS_PREFIX=f"test-{uuid.uuid4().hex[:12]}",
            CACHE_PREFIX=f"test-{uuid.uuid4().hex[:12]}",
            PYTHONUNBUFFERED="1",
        ),
    )
    try:
        stack.start_web()
        yield stack
    finally:
        stack.close()
        print(stack.report())  # shown when a test fails
    assert "Traceback" not in stack.web.output()


def send(
    live: LiveStack,
    method: str,
    target: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    conn: http.client.HTTPConnection | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """Send ``target`` exactly as given (absolute-form, ``//``) and read the answer."""
    conn = conn or http.client.HTTPConnection(HOST, live.port, timeout=TIMEOUT)
    conn.request(method, target, body=body, headers={**JSON, **(headers or {})})
    response = conn.getresponse()
    content = response.read()
    return (
        response.status,
        {k.lower(): v for k, v in response.getheaders()},
        content,
    )


@pytest.mark.parametrize(
    ("target", "expected", "name"),
    [
        (f"/{DETAIL}", 404, "path"),
        (f"//{DETAIL}", 404, "path"),
        ("//api/nope", 404, "path"),
        ("ABSOLUTE", 404, "path"),  # http://127.0.0.1:<port>/api/payments/<id>/
        # The target's authority stands for the Host, and is not allowed.
        (f"http://evil.example{DETAIL}", 400, "Host"),
    ],
)
def test_targets_daphne_passes_through_get_json_errors(
    live_web, target: str, expected: int, name: str
) -> None:
    if target == "ABSOLUTE":
        target = f"http://{HOST}:{live_web.port}{DETAIL}"

    status, headers, content = send(live_web, "GET", target)

    assert_json_error(status, headers, content, expected, name)


def test_the_wire_answers_json_where_django_answered_html(live_web) -> None:
    status, headers, content = send(
        live_web, "GET", DETAIL, headers={"Host": "evil.example"}
    )
    assert_json_error(status, headers, content, 400, "Host")

    query = "&".join(f"f{i}=1" for i in range(1001))
    status, headers, content = send(live_web, "GET", f"{DETAIL}?{query}")
    assert_json_error(status, headers, content, 400, "query")

    for path in ["/api/payments/", "/api/payments/make-payment-with-socket"]:
        status, headers, content = send(
            live_web, "POST", path, body=b'{"amount":1000,"\\ud800":1}'
        )
        assert_json_error(status, headers, content, 400, "\\ud800")

    status, headers, content = send(live_web, "HEAD", "/api/payments/")
    assert (status, content) == (401, b"")
    assert headers["content-type"] == "application/json"


def test_a_preflight_on_the_wire_is_204_and_keeps_the_connection(live_web) -> None:
    conn = http.client.HTTPConnection(HOST, live_web.port, timeout=TIMEOUT)
    preflight = {
        "Origin": ORIGIN,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type",
    }

    status, headers, content = send(
        live_web, "OPTIONS", "/api/payments/", headers=preflight, conn=conn
    )
    # The next request on the same connection is read as a request: the
    # preflight's answer was framed right (no body, no stray length).
    after = send(live_web, "GET", DETAIL, conn=conn)

    assert (status, content) == (204, b"")
    assert "content-type" not in headers
    assert headers["access-control-allow-origin"] == ORIGIN
    assert after[0] == 404
