"""A request id per HTTP request, in every log line its work writes.

The id is the client's (or the proxy's) ``X-Request-ID`` when it is a plain
token, else a new one; it is answered in the same header. Code running for
the request logs with it, and a payment stores the id of the request that
created it (``Payment.request_id``), which the worker binds for that
payment's lines, so one payment can be followed from its POST through the
worker to its push.
"""

from __future__ import annotations

import contextvars
import logging
import re
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from django.http import HttpRequest
from django.http.response import HttpResponseBase

HEADER = "X-Request-ID"
# Letters, digits and a few separators: enough for UUIDs and the ids proxies
# make (HAProxy's unique-id, AWS's Root=1-...), nothing that could forge a
# log line or a header.
VALID = re.compile(r"[A-Za-z0-9._:=+/-]{1,128}")

_current: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")


def current_request_id() -> str:
    """The id of the request (or job) this code runs for; "" outside one."""
    return _current.get()


def new_request_id() -> str:
    return uuid.uuid4().hex


def accepted_request_id(value: str | None) -> str:
    """``value`` if it is a valid id, else a new one."""
    if value and VALID.fullmatch(value):
        return value
    return new_request_id()


@contextmanager
def request_id_bound(request_id: str) -> Iterator[None]:
    """Log with ``request_id`` inside the block (a job, a request)."""
    token = _current.set(request_id)
    try:
        yield
    finally:
        _current.reset(token)


class RequestIdMiddleware:
    """Bind the request's id for its middleware and view; answer it in a header."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        request_id = accepted_request_id(request.headers.get(HEADER))
        request.request_id = request_id  # type: ignore[attr-defined]
        with request_id_bound(request_id):
            response = self.get_response(request)
        response[HEADER] = request_id
        return response


class RequestIdFilter(logging.Filter):
    """Give every record a ``request_id`` attribute ("-" outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "request_id", None):
            record.request_id = _current.get() or "-"
        return True
