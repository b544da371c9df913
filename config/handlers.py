"""The ASGI handler for HTTP: each request's middleware and view in one thread."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from asgiref.sync import ThreadSensitiveContext, sync_to_async
from asgiref.typing import ASGIReceiveCallable, ASGISendCallable, Scope
from django.conf import settings
from django.core.handlers.asgi import ASGIHandler
from django.http import HttpRequest, HttpResponseBase


class RequestThreads:
    """A fixed set of threads, one lent to each request; the rest wait.

    Django's own handler gives every request a new thread, so nothing a
    thread holds outlives its request: a database connection is opened and
    closed per request, which is why Django advises CONN_MAX_AGE = 0 under
    ASGI. Kept threads keep their connections (CONN_MAX_AGE), and there are
    never more of them than threads: on SQLite, opening one (Django registers
    its SQL functions, the PRAGMAs run) was a third of a GET's CPU.
    """

    def __init__(self, size: int) -> None:
        # Last in, first out: the thread that just finished (its connection
        # open, its caches warm) serves next, and the others start only
        # when requests overlap.
        self._idle: asyncio.LifoQueue[ThreadPoolExecutor] = asyncio.LifoQueue()
        for _ in range(size):
            # One worker each: asgiref's thread-sensitive calls of one
            # request must all run in the same thread. It starts on first use.
            self._idle.put_nowait(
                ThreadPoolExecutor(max_workers=1, thread_name_prefix="http-request")
            )

    @asynccontextmanager
    async def lend(self) -> AsyncIterator[None]:
        """Run the block's thread-sensitive calls in one free thread."""
        executor = await self._idle.get()
        try:
            async with ThreadSensitiveContext(executor=executor):
                yield
        finally:
            self._idle.put_nowait(executor)


class SyncStackASGIHandler(ASGIHandler):
    """Django's ASGI handler, running each request as a sync stack in a kept thread.

    Under Django's own handler every ``MiddlewareMixin`` middleware (all of
    Django's) runs in async mode, and in async mode it sends its
    ``process_request`` and its ``process_response`` to the request's thread
    one at a time: two thread switches, each copying the request's context,
    per middleware per request, around a view (DRF's) that is sync anyway.
    Here the whole request (middleware, URL resolution, view) is one call in
    that thread: measured on POST /api/payments/, 6.3 → 4.2 ms of CPU.

    That thread is one of ``ASGI_REQUEST_THREADS`` kept for the process
    (RequestThreads) rather than a new one per request, so its database
    connection lasts as CONN_MAX_AGE says.

    Async views still work (Django runs them with ``async_to_sync``), at the
    cost of the switch this saves elsewhere; this project has none.
    """

    def __init__(self, threads: int | None = None) -> None:
        super().__init__()
        self.threads = threads or settings.ASGI_REQUEST_THREADS
        # Per event loop, as an asyncio.Queue belongs to one: a server runs
        # one loop, tests several.
        self._threads: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, RequestThreads
        ] = weakref.WeakKeyDictionary()

    def load_middleware(self, is_async: bool = False) -> None:
        super().load_middleware(is_async=False)

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] != "http":
            raise ValueError(
                f"Django can only handle ASGI/HTTP connections, not {scope['type']}."
            )
        loop = asyncio.get_running_loop()
        threads = self._threads.get(loop)
        if threads is None:
            threads = self._threads[loop] = RequestThreads(self.threads)
        # In place of ASGIHandler.__call__'s ThreadSensitiveContext(), which
        # starts a thread per request.
        async with threads.lend():
            await self.handle(scope, receive, send)

    async def get_response_async(self, request: HttpRequest) -> HttpResponseBase:
        # BaseHandler.get_response: the same steps (URLconf, chain, closers,
        # logging of 4xx/5xx) as get_response_async, synchronously.
        return await sync_to_async(self.get_response, thread_sensitive=True)(request)
