"""Clients that count their bytes: a WebSocket (websockets) and plain HTTP/1.1.

Bytes are counted at the client's socket: every byte written to and read
from the TCP stream (HTTP headers, WebSocket handshake, frame headers and
masks included; TCP/IP headers excluded).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from bench.harness import HOST, ORIGIN

#: Handshakes the server refused (and that were retried) in this process.
stats: Counter[str] = Counter()


class _CountingTransport:
    """A transport proxy that adds written bytes to its connection's count."""

    def __init__(self, transport: Any, owner: CountingConnection) -> None:
        self._transport = transport
        self._owner = owner

    def write(self, data: bytes) -> None:
        self._owner.bytes_out += len(data)
        self._transport.write(data)

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.write(chunk)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class CountingConnection(ClientConnection):
    bytes_in = 0
    bytes_out = 0

    def connection_made(self, transport: Any) -> None:
        super().connection_made(_CountingTransport(transport, self))  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        self.bytes_in += len(data)
        super().data_received(data)


async def ws_open(url: str, *, timeout: float = 30.0) -> tuple[CountingConnection, str]:
    """Open a socket as a browser would (Origin), return it and its socket id.

    No client pings (browsers send none) and no compression offer, so the
    server is measured as it is.
    """
    ws = await connect(
        url,
        origin=ORIGIN,  # type: ignore[arg-type]
        compression=None,
        ping_interval=None,
        # Never through a proxy from the environment: loopback only.
        proxy=None,
        open_timeout=timeout,
        close_timeout=5,
        max_queue=None,
        create_connection=CountingConnection,
    )
    frame = json.loads(await asyncio.wait_for(ws.recv(), timeout))
    if frame.get("event") != "socket-id":
        raise RuntimeError(f"first frame was not socket-id: {frame}")
    return ws, frame["data"]  # type: ignore[return-value]


async def ws_open_retry(
    url: str, *, timeout: float = 30.0, attempts: int = 3
) -> tuple[CountingConnection, str]:
    """ws_open, trying again after a refused handshake (as a browser would).

    Refusals (e.g. a 500 from the server) are counted in ``stats``.
    """
    for attempt in range(attempts):
        try:
            return await ws_open(url, timeout=timeout)
        except InvalidStatus:
            stats["handshake_failures"] += 1
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(0.1 * (attempt + 1))
    raise AssertionError("unreachable")


async def ws_open_many(
    url: str, count: int, *, concurrency: int = 50, timeout: float = 60.0
) -> tuple[list[tuple[CountingConnection, str]], float]:
    """Open ``count`` sockets, ``concurrency`` handshakes at a time.

    Return them and the seconds it took.
    """
    sem = asyncio.Semaphore(concurrency)

    async def one() -> tuple[CountingConnection, str]:
        async with sem:
            return await ws_open_retry(url, timeout=timeout)

    started = time.perf_counter()
    tasks = [asyncio.ensure_future(one()) for _ in range(count)]
    try:
        result = await asyncio.wait_for(asyncio.gather(*tasks), timeout)
    except BaseException:
        for task in tasks:
            task.cancel()
        opened = [t.result() for t in tasks if t.done() and not t.cancelled()]
        await ws_close_all([ws for ws, _ in opened if not isinstance(ws, Exception)])
        raise
    return list(result), time.perf_counter() - started


async def ws_close_all(
    sockets: list[CountingConnection], concurrency: int = 200
) -> None:
    sem = asyncio.Semaphore(concurrency)

    async def one(ws: CountingConnection) -> None:
        async with sem:
            try:
                await asyncio.wait_for(ws.close(), 5)
            except Exception:
                ws.transport.abort()

    await asyncio.gather(*(one(ws) for ws in sockets), return_exceptions=True)


class HttpConnection:
    """A keep-alive HTTP/1.1 connection that counts its bytes exactly."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.bytes_in = 0
        self.bytes_out = 0
        self.requests = 0

    async def _ensure(self) -> None:
        if self.writer is None or self.writer.is_closing():
            self.reader, self.writer = await asyncio.open_connection(HOST, self.port)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await asyncio.wait_for(self.writer.wait_closed(), 5)
            except Exception:
                pass
            self.writer = None

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        timeout: float = 30.0,
    ) -> tuple[int, dict[str, str], bytes]:
        return await asyncio.wait_for(
            self._request(method, path, body, headers or {}), timeout
        )

    async def _request(
        self, method: str, path: str, body: Any, headers: dict[str, str]
    ) -> tuple[int, dict[str, str], bytes]:
        await self._ensure()
        assert self.reader is not None and self.writer is not None
        payload = b"" if body is None else json.dumps(body).encode()
        lines = [
            f"{method} {path} HTTP/1.1",
            f"Host: {HOST}:{self.port}",
            "User-Agent: bench/1",
            "Accept: application/json",
        ]
        if body is not None:
            lines += [
                "Content-Type: application/json",
                f"Content-Length: {len(payload)}",
            ]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        data = ("\r\n".join(lines) + "\r\n\r\n").encode() + payload
        self.writer.write(data)
        self.bytes_out += len(data)
        head = await self.reader.readuntil(b"\r\n\r\n")
        self.bytes_in += len(head)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split(" ", 2)[1])
        response_headers: dict[str, str] = {}
        for line in header_lines:
            if ":" in line:
                name, value = line.split(":", 1)
                response_headers[name.strip().lower()] = value.strip()
        if "content-length" in response_headers:
            content = await self.reader.readexactly(
                int(response_headers["content-length"])
            )
            self.bytes_in += len(content)
        elif response_headers.get("transfer-encoding", "").lower() == "chunked":
            content = await self._read_chunked()
        else:
            content = await self.reader.read()
            self.bytes_in += len(content)
            await self.close()
        if response_headers.get("connection", "").lower() == "close":
            await self.close()
        self.requests += 1
        return status, response_headers, content

    async def _read_chunked(self) -> bytes:
        assert self.reader is not None
        parts = []
        while True:
            size_line = await self.reader.readuntil(b"\r\n")
            self.bytes_in += len(size_line)
            size = int(size_line.split(b";")[0], 16)
            chunk = await self.reader.readexactly(size + 2)
            self.bytes_in += len(chunk)
            if size == 0:
                return b"".join(parts)
            parts.append(chunk[:-2])
