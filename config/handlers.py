"""The ASGI handler for HTTP: each request's middleware and view in one thread call."""

from __future__ import annotations

from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIHandler
from django.http import HttpRequest, HttpResponseBase


class SyncStackASGIHandler(ASGIHandler):
    """Django's ASGI handler, running each request's middleware chain in sync mode.

    Under Django's own handler every ``MiddlewareMixin`` middleware (all of
    Django's) runs in async mode, and in async mode it sends its
    ``process_request`` and its ``process_response`` to the request's thread
    one at a time: two thread switches, each copying the request's context,
    per middleware per request, around a view (DRF's) that is sync anyway.
    Here the whole request (middleware, URL resolution, view) is one call in
    that thread. Measured on PostgreSQL with the pool, web CPU per
    POST /api/payments/: FIGURE.

    Everything else is Django's: the body is read first, each request gets
    its thread (``ThreadSensitiveContext``), signals and closers as usual.
    Async views still work (Django runs them with ``async_to_sync``), at the
    cost of the switch this saves elsewhere; this project has none.
    """

    def load_middleware(self, is_async: bool = False) -> None:
        super().load_middleware(is_async=False)

    async def get_response_async(self, request: HttpRequest) -> HttpResponseBase:
        # BaseHandler.get_response: the same steps (URLconf, chain, closers,
        # logging of 4xx/5xx) as get_response_async, synchronously.
        return await sync_to_async(self.get_response, thread_sensitive=True)(request)
