"""The page at / as HTML: its assets, its CSP, no inline code."""

from __future__ import annotations

import re

import pytest
from django.contrib.staticfiles import finders

pytestmark = pytest.mark.django_db


def test_page_serves_only_local_assets_and_no_inline_code(client) -> None:
    response = client.get("/")

    assert response.status_code == 200
    html = response.content.decode()
    assert not re.search(r"https?://|[\"'(]//", html), "an asset from elsewhere"
    assert "<style" not in html and " style=" not in html
    assert not re.search(r"<script(?![^>]*\bsrc=)", html), "an inline script"
    assert re.search(r" on[a-z]+=", html) is None, "an inline event handler"
    assets = re.findall(r"""(?:src|href)="(/static/[^"]+)\"""", html)
    assert {a.rsplit("/", 1)[-1] for a in assets} >= {"page.js", "page.css"}
    for url in assets:
        assert finders.find(url.removeprefix("/static/")), url
    assert finders.find("realtime/payments-client.js")
    # Every test card the gateway knows is offered.
    for method in ("pm_card_visa", "pm_card_chargeDeclinedExpiredCard"):
        assert f'value="{method}"' in html


def test_page_has_a_content_security_policy_of_its_own_origin(client) -> None:
    csp = client.get("/")["Content-Security-Policy"]

    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["default-src"] == "'self'"
    assert directives["script-src"] == "'self'"
    assert directives["style-src"] == "'self'"
    assert directives["connect-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"
    assert "unsafe" not in csp


def test_page_sets_the_csrf_cookie_for_logged_in_posts(client) -> None:
    assert "csrftoken" in client.get("/").cookies


def test_page_refuses_other_methods(client) -> None:
    assert client.post("/").status_code == 405


def test_favicon_redirects_to_the_static_icon(client) -> None:
    response = client.get("/favicon.ico")

    assert response.status_code == 301
    assert response["Location"] == "/static/realtime/favicon.svg"
