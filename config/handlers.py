"""The ASGI handler for HTTP: each request's middleware and view in one thread."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import asynccontextmanager, closing
from typing import Any

from asgiref.sync import ThreadSensitiveContext, sync_to_async
from asgiref.typing import ASGIReceiveCallable, ASGISendCallable, Scope
from corsheaders.middleware import CorsMiddleware
from django.conf import settings
from django.core.exceptions import BadRequest, RequestAborted
from django.core.handlers.asgi import ASGIHandler
from django.db import connections
from django.http import HttpRequest, HttpResponseBase

from config.errors import error_response
from realtime.security import scope_request

logger = logging.getLogger(__name__)


class RequestThreads:
    """A fixed set of threads, one lent to each request; the rest wait.

    Django's own handler gives every request a new thread, so nothing a
    thread holds outlives its request: a database connection is opened and
    closed per request, which is why Django advises CONN_MAX_AGE = 0 under
    ASGI. Kept threads keep their connection wrappers (and, with
    CONN_MAX_AGE, their connections), never more of them than threads.

    Used from one event loop at a time, as a server runs one.
    """

    def __init__(self, size: int) -> None:
        # One worker each: asgiref's thread-sensitive calls of one request
        # must all run in the same thread. It starts on first use.
        self._idle = [
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="http-request")
            for _ in range(size)
        ]
        self._waiting: deque[asyncio.Future[ThreadPoolExecutor]] = deque()

    async def take(self, timeout: float) -> ThreadPoolExecutor:
        """A free thread; TimeoutError when none is free within ``timeout`` s."""
        if self._idle:
            # Last in, first out: the thread that just finished (its
            # connection open, its caches warm) serves next, and the others
            # start only when requests overlap.
            return self._idle.pop()
        waiter = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        try:
            async with asyncio.timeout(timeout):
                return await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._give(waiter.result())  # handed over as the wait ended
            else:
                waiter.cancel()
            raise

    @asynccontextmanager
    async def use(self, executor: ThreadPoolExecutor) -> AsyncIterator[None]:
        """Run the block's thread-sensitive calls in ``executor``'s thread."""
        try:
            async with ThreadSensitiveContext(executor=executor):
                yield
        except BaseException:
            # Cancelled, say, while the request's sync code still runs there:
            # lend the thread again only once that code has finished.
            self._give_when_idle(executor)
            raise
        self._give(executor)

    def close(self) -> None:
        """Stop the idle threads, closing their database connections first."""
        while self._idle:
            executor = self._idle.pop()
            executor.submit(connections.close_all)
            executor.shutdown(wait=True)

    def _give(self, executor: ThreadPoolExecutor) -> None:
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(executor)
                return
        self._idle.append(executor)

    def _give_when_idle(self, executor: ThreadPoolExecutor) -> None:
        loop = asyncio.get_running_loop()

        def finished(_: Future[None]) -> None:
            try:
                loop.call_soon_threadsafe(self._give, executor)
            except RuntimeError:  # the loop has closed: nobody left to serve
                pass

        try:
            # Runs after whatever the executor's one thread is still doing.
            executor.submit(lambda: None).add_done_callback(finished)
        except RuntimeError:  # the interpreter is exiting: no more requests
            pass


class SyncStackASGIHandler(ASGIHandler):
    """Django's ASGI handler, running each request as a sync stack in a kept thread.

    Under Django's own handler every ``MiddlewareMixin`` middleware (all of
    Django's) runs in async mode, and in async mode it sends its
    ``process_request`` and its ``process_response`` to the request's thread
    one at a time: two thread switches, each copying the request's context,
    per middleware per request, around a view (DRF's) that is sync anyway.
    Here the whole request (middleware, URL resolution, view) is one call in
    that thread.

    Measured on PostgreSQL with the pool (issue 14, BENCHMARKS.md "Request
    handler"), the web's CPU per POST /api/payments/, medians on a shared,
    loaded machine: this handler 18.4 ms; the sync chain alone with
    Django's thread per request 21.9 ms (+19 %); plain
    ``get_asgi_application()`` 24.8 ms (+35 %). Both pieces earn their keep.

    That thread is one of ``ASGI_REQUEST_THREADS`` kept for the process
    (RequestThreads) rather than a new one per request, so Django's
    per-thread database wrapper (and, with CONN_MAX_AGE, its connection) is
    made once, not per request. A request that finds none free
    within ``ASGI_REQUEST_THREAD_TIMEOUT`` seconds (all stuck behind a
    database lock, say) is answered 503 rather than left waiting.

    Async views still work (Django runs them with ``async_to_sync``), at the
    cost of the switch this saves elsewhere; this project has none.
    """

    def __init__(
        self, threads: int | None = None, thread_timeout: float | None = None
    ) -> None:
        super().__init__()
        self.threads = RequestThreads(threads or settings.ASGI_REQUEST_THREADS)
        self.thread_timeout = (
            settings.ASGI_REQUEST_THREAD_TIMEOUT
            if thread_timeout is None
            else thread_timeout
        )

    def load_middleware(self, is_async: bool = False) -> None:
        super().load_middleware(is_async=False)

    def create_request(
        self, scope: Scope, body_file: Any
    ) -> tuple[HttpRequest | None, HttpResponseBase | None]:
        try:
            return super().create_request(scope, body_file)
        except BadRequest:
            # Django 6.1 parses Content-Type as it builds the request and
            # raises for a malformed one, which its handler does not catch:
            # a 500 and a traceback, on any path.
            response = error_response(
                400, "bad_request", "Content-Type: not a valid media type."
            )
            return None, _with_cors_headers(scope, response)

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] != "http":
            raise ValueError(
                f"Django can only handle ASGI/HTTP connections, not {scope['type']}."
            )
        # The body first, so that a slow upload holds no thread (daphne
        # buffers bodies before calling the application; uvicorn streams).
        try:
            body = await super().read_body(receive)
        except RequestAborted:
            return
        try:
            executor = await self.threads.take(self.thread_timeout)
        except TimeoutError:
            logger.warning(
                "no request thread free for %.1f s; answering 503 to %s %s",
                self.thread_timeout,
                scope["method"],
                scope["path"],
            )
            with closing(body):
                await self.send_response(self.busy_response(scope), send)
            return
        # In place of ASGIHandler.__call__'s ThreadSensitiveContext(), which
        # starts a thread per request.
        async with self.threads.use(executor):
            await self.handle(scope, BodyRead(receive, body), send)

    def busy_response(self, scope: Scope) -> HttpResponseBase:
        """503 in the API's error shape, made without a thread to run Django in.

        Django's middleware does not run, so django-cors-headers adds its
        headers here, for a page on an allowed origin to read the answer.
        """
        return _with_cors_headers(
            scope,
            error_response(
                503,
                "service_unavailable",
                "server: every request thread is busy; retry shortly.",
                headers={"Retry-After": "1"},
            ),
        )

    async def read_body(self, receive: ASGIReceiveCallable) -> Any:
        if isinstance(receive, BodyRead):
            return receive.body
        return await super().read_body(receive)

    async def get_response_async(self, request: HttpRequest) -> HttpResponseBase:
        # BaseHandler.get_response: the same steps (URLconf, chain, closers,
        # logging of 4xx/5xx) as get_response_async, synchronously.
        return await sync_to_async(self.get_response, thread_sensitive=True)(request)


def _with_cors_headers(scope: Scope, response: HttpResponseBase) -> HttpResponseBase:
    """Add django-cors-headers' headers to an answer made without the middleware.

    So that a page on an allowed origin can read it. The request is only for
    CorsMiddleware: scope_request's, which needs no body and no valid
    Content-Type.
    """
    request = scope_request(dict(scope))
    CorsMiddleware(lambda _: response).add_response_headers(request, response)
    return response


class BodyRead:
    """The ``receive`` of a request whose body was read before it got a thread."""

    def __init__(self, receive: ASGIReceiveCallable, body: Any) -> None:
        self.receive = receive
        self.body = body

    async def __call__(self) -> Any:
        return await self.receive()  # only the disconnect is left to come
