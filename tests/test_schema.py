"""The OpenAPI schema against the API it describes, and the offline docs page.

schemathesis generates requests from /api/schema/ (valid and invalid ones) and
sends them to the Django application in-process; every answer must be one the
schema documents: no 5xx, a documented status code and content type, a body of
the documented shape. Examples are bounded and derandomized so a run is short
and repeatable.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from django.contrib.staticfiles import finders
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from hypothesis import HealthCheck, given, settings
from rest_framework.authtoken.models import Token
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from config.wsgi import application
from payments.models import Payment

SCHEMA_PATH = "/api/schema/"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    # Input the schema forbids (a string amount, page_size=abc) must be a 4xx.
    negative_data_rejection,
]
MAX_EXAMPLES = 25


OPERATIONS = [
    ("/api/payments/", "POST"),
    ("/api/payments/", "GET"),
    ("/api/payments/{payment_id}/", "GET"),
    ("/api/payments/make-payment-with-socket/", "POST"),
    ("/api/auth/token/", "POST"),
]


def caller_headers(kind: str, user_model: Any) -> dict[str, str]:
    """Return the headers that make a request come from ``kind`` of caller."""
    if kind == "anonymous":
        return {}
    user = user_model.objects.create_user(
        username=kind, password="pw", is_staff=kind == "staff"
    )
    # Something to list, read and page through.
    Payment.objects.create(amount=1000, currency="usd", payment_method="pm_card_visa")
    Payment.objects.create(
        amount=2000, currency="eur", payment_method="pm_card_visa", user=user
    )
    return {"Authorization": f"Token {Token.objects.create(user=user).key}"}


@pytest.fixture(scope="module")
def api_schema(django_db_setup, django_db_blocker) -> Any:
    """The schema exactly as /api/schema/ serves it."""
    with django_db_blocker.unblock():
        return schemathesis.openapi.from_wsgi(SCHEMA_PATH, application)


@pytest.fixture
def keep_test_connection() -> Iterator[None]:
    """Keep the test's database connection open across in-process requests.

    A WSGI request closes "old" connections when it finishes, which would close
    the one holding the test's transaction; Django's test client stops that the
    same way.
    """
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


# schemathesis' own pytest integration (schema.parametrize) sets
# Node._nodeid, which pytest 9 no longer has; its Hypothesis strategies are
# used directly instead, one test per operation, mode and caller.
@pytest.mark.django_db
@pytest.mark.usefixtures("keep_test_connection")
@pytest.mark.parametrize("caller", ["anonymous", "user", "staff"])
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
@pytest.mark.parametrize(("path", "method"), OPERATIONS)
def test_api_conforms_to_its_schema(
    api_schema, django_user_model, path, method, mode, caller
) -> None:
    """Generated requests get documented answers only (schemathesis' checks)."""
    headers = caller_headers(caller, django_user_model)
    strategy = api_schema[path][method].as_strategy(generation_mode=mode)

    @given(case=strategy)
    @settings(
        max_examples=MAX_EXAMPLES,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def check(case) -> None:
        case.call_and_validate(headers=headers, checks=CHECKS)

    check()


# The schema and the docs page ---------------------------------------------------


def test_schema_lists_every_route(api_client) -> None:
    response = api_client.get(SCHEMA_PATH, {"format": "json"})

    assert response.status_code == 200
    paths = response.json()["paths"]
    served = {
        (path, method.upper())
        for path, operations in paths.items()
        for method in operations
    }
    # Every route, the seed frontend's included, and each one fuzzed above.
    assert served == set(OPERATIONS)
    seed = paths["/api/payments/make-payment-with-socket/"]["post"]
    body = seed["requestBody"]["content"]["application/json"]["schema"]
    assert body["$ref"].endswith("/SeedPaymentInputRequest")
    assert set(seed["responses"]) >= {"200", "400", "415", "429"}


def test_docs_page_uses_only_local_assets(api_client) -> None:
    response = api_client.get("/api/docs/")

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
    html = response.content.decode()
    # Nothing from another host: no absolute or protocol-relative URL at all.
    assert not re.search(r"https?://|[\"'(]//", html), html
    assets = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", html)
    assert any(a.endswith("swagger-ui-bundle.js") for a in assets), assets
    assert any(a.endswith("swagger-ui.css") for a in assets), assets
    for url in assets:
        assert url.startswith("/static/"), f"not a local asset: {url}"
        # Shipped in an installed app (drf-spectacular-sidecar), so
        # collectstatic puts it where /static/ is served from.
        assert finders.find(url.removeprefix("/static/")), url
    assert '"/api/schema/"' in html
