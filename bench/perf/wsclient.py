"""A minimal WebSocket client on a bare asyncio Protocol: the measuring end of every figure.

All servers under test (the bare relay, the minimal Channels app, the project) are read with this
same client, so the cost of the client is the same on both sides of every ratio. It is cheap on
purpose (no per-frame objects beyond what is asked for): a 2-core machine shares its cores
between the server and the clients, and a heavy client would cap every figure.

Per frame it can: count it, note when it arrived, pull wall-clock stamps out of it (latency),
keep it (replay checks), and resolve a waiter when a frame contains a given byte string.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import time
from collections.abc import Callable
from typing import Any

# `"ts":1732560000123456789` (floor frames) or `[1732560000123456789]` (stamped project tokens)
STAMP = re.compile(rb'"ts":(\d{19})|\[(\d{19})\]')


class WSClient(asyncio.Protocol):
    def __init__(
        self,
        path: str,
        host: str = "127.0.0.1",
        headers: dict[str, str] | None = None,
        *,
        stamps: bool | bytes = False,
        keep: bool = False,
        ready: bytes | None = None,
    ) -> None:
        self.path = path
        self.host = host
        self.headers = headers or {}
        # True: stamps in every frame; bytes: only in frames starting with it (counted in .matched)
        self.stamps = stamps
        self.stamp_prefix = stamps if isinstance(stamps, bytes) else b""
        self.matched = 0
        self.keep = keep
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.open = False
        self.closed = asyncio.get_running_loop().create_future()
        self.opened = asyncio.get_running_loop().create_future()
        self.count = 0  # text/binary frames received
        self.bytes = 0
        self.first_ns = 0  # wall clock of the first and the last frame
        self.last_ns = 0
        self.latencies: list[int] = []  # ns, receive minus stamp, one per stamp found
        self.frames: list[bytes] = []
        self.close_code: int | None = None
        self._frag: bytearray | None = None
        self._watch: list[tuple[bytes, asyncio.Future[tuple[int, bytes]]]] = []
        self.on_frame: Callable[[bytes, int], None] | None = None
        self.start_ns = time.time_ns()
        # registered before the handshake, so a frame in the same read as the 101 is seen
        self.ready = self.watch(ready) if ready is not None else None

    # --- connection ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {self.path} HTTP/1.1",
            f"Host: {self.host}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
            *(f"{k}: {v}" for k, v in self.headers.items()),
            "",
            "",
        ]
        transport.write("\r\n".join(lines).encode("latin1"))  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"closed during handshake: {exc}"))
            self.opened.exception()
        if not self.closed.done():
            self.closed.set_result(self.close_code)
        for _, fut in self._watch:
            if not fut.done():
                fut.set_exception(ConnectionError(f"closed (code {self.close_code})"))
                fut.exception()  # retrieved: no "never retrieved" noise for unawaited watches
        self._watch.clear()

    def data_received(self, data: bytes) -> None:
        now = time.time_ns()
        buf = self.buf
        buf += data
        if not self.open:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(buf[: buf.find(b"\r\n")])
            del buf[: end + 4]
            if b" 101 " not in status:
                if not self.opened.done():
                    self.opened.set_exception(ConnectionError(status.decode("latin1")))
                self.transport.close()  # type: ignore[union-attr]
                return
            self.open = True
            self.opened.set_result(None)
        pos, n = 0, len(buf)
        while n - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length = b1 & 0x7F
            head = 2
            if length == 126:
                if n - pos < 4:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                head = 4
            elif length == 127:
                if n - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                head = 10
            if n - pos < head + length:
                break
            payload = bytes(buf[pos + head : pos + head + length])
            pos += head + length
            opcode = b0 & 0x0F
            if opcode == 0:  # continuation
                if self._frag is not None:
                    self._frag += payload
                    if b0 & 0x80:
                        payload, self._frag = bytes(self._frag), None
                        self._frame(payload, now)
                continue
            if opcode in (1, 2):
                if not b0 & 0x80:
                    self._frag = bytearray(payload)
                    continue
                self._frame(payload, now)
            elif opcode == 8:
                self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                self._send_frame(8, payload[:2])
                self.transport.close()  # type: ignore[union-attr]
            elif opcode == 9:
                self._send_frame(10, payload)
        if pos:
            del buf[:pos]

    def _frame(self, payload: bytes, now: int) -> None:
        self.count += 1
        self.bytes += len(payload)
        if not self.first_ns:
            self.first_ns = now
        self.last_ns = now
        if self.stamps and payload.startswith(self.stamp_prefix):
            self.matched += 1
            for a, b in STAMP.findall(payload):
                self.latencies.append(now - int(a or b))
        if self.keep:
            self.frames.append(payload)
        if self._watch:
            for item in list(self._watch):
                if item[0] in payload:
                    self._watch.remove(item)
                    if not item[1].done():
                        item[1].set_result((now, payload))
        if self.on_frame is not None:
            self.on_frame(payload, now)

    # --- sending ------------------------------------------------------------------------
    def _send_frame(self, opcode: int, payload: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        n = len(payload)
        if n < 126:
            head = bytes((0x80 | opcode, 0x80 | n))
        elif n < 65536:
            head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
        else:
            head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
        mask = os.urandom(4)
        m = int.from_bytes(mask * ((n + 3) // 4), "big") >> (8 * (-n % 4)) if n else 0
        masked = (int.from_bytes(payload, "big") ^ m).to_bytes(n, "big") if n else b""
        self.transport.write(head + mask + masked)

    def send_text(self, text: str | bytes) -> None:
        self._send_frame(1, text.encode() if isinstance(text, str) else text)

    def watch(self, needle: bytes) -> asyncio.Future[tuple[int, bytes]]:
        """A future resolved with (wall ns, frame) by the next frame that contains `needle`."""
        fut: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()
        self._watch.append((needle, fut))
        return fut

    def close(self, code: int = 1000) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self._send_frame(8, code.to_bytes(2, "big"))
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


async def connect(
    port: int,
    path: str,
    headers: dict[str, str] | None = None,
    timeout: float = 20.0,
    ready: bytes | None = None,
    **kw: Any,
) -> WSClient:
    """Open a socket; with `ready`, return once a frame containing it has arrived."""
    loop = asyncio.get_running_loop()
    _, client = await asyncio.wait_for(
        loop.create_connection(
            lambda: WSClient(path, f"127.0.0.1:{port}", headers, ready=ready, **kw), "127.0.0.1", port
        ),
        timeout,
    )
    await asyncio.wait_for(client.opened, timeout)
    if client.ready is not None:
        await asyncio.wait_for(client.ready, timeout)
    return client


async def connect_many(
    port: int,
    paths: list[str],
    headers: list[dict[str, str] | None] | None = None,
    *,
    in_flight: int = 40,
    ready: bytes | None = None,
    timeout: float = 60.0,
    **kw: Any,
) -> list[WSClient]:
    """Open one socket per path, at most `in_flight` handshakes at once (Twisted's listen
    backlog is 50); with `ready`, each counts as connected once a frame containing it arrives."""
    sem = asyncio.Semaphore(in_flight)
    out: list[WSClient | None] = [None] * len(paths)

    async def one(i: int) -> None:
        async with sem:
            hdr = headers[i] if headers else None
            out[i] = await connect(port, paths[i], hdr, timeout, ready=ready, **kw)

    await asyncio.gather(*(one(i) for i in range(len(paths))))
    return [c for c in out if c is not None]
