"""The MCP connections of one worker process, reused across turns.

The SDK's client is async and its sessions are async context managers that must be entered and
left by one task, so an asyncio loop in a background thread owns them: one supervising task per
server connects (`mcp.Client`, the initialize handshake), lists the tools, keeps the catalogue
fresh (on the server's list-changed notification, every MCP_CATALOG_TTL, after a reconnect) and
reconnects when the session breaks. The worker's threads ask it for catalogues and calls through
`run_coroutine_threadsafe`.

Failures cost little: between failed attempts the supervisor waits with an exponential back-off
(tenacity, MCP_RETRY_MIN doubling to MCP_RETRY_MAX), and while it waits the server is *down*:
calls fail at once without touching the network (the circuit breaker), and only the first
failure of a spell is logged as a warning. A call after MCP_IDLE_CHECK idle seconds pings first,
so a connection the server dropped meanwhile is replaced before the call is sent, not after.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx2
from django.conf import settings
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import (
    CONNECTION_CLOSED,
    INVALID_REQUEST,
    REQUEST_TIMEOUT,
    CallToolResult,
    ToolListChangedNotification,
)
from tenacity import AsyncRetrying, RetryCallState, retry_if_not_exception_type, wait_exponential_jitter

from agents.mcp.config import ServerConfig

log = logging.getLogger(__name__)

T = TypeVar("T")

REQUEST_TIMEOUT_S = 10.0  # the handshake, a tool list, a ping
PING_TIMEOUT_S = 5.0
# a server no turn asked for in this long (switched off, deleted, or its rooms are quiet) is
# let go: its session closed, its stdio process ended; the next turn that wants it reconnects
UNWANTED_CLOSE_S = 900.0


class McpUnavailable(Exception):
    """The server is not connected (down, or still starting): nothing was sent."""


class McpOutcomeUnknown(Exception):
    """The call was sent and no answer came (a timeout, a lost connection)."""


class McpCallFailed(Exception):
    """The server answered the call with a protocol error."""


class _Lost(Exception):
    """A connected session broke: reconnect."""


@dataclass
class Catalog:
    """A server's tools as this process knows them now; `tools` is None while it is not up."""

    name: str
    tools: list[dict[str, Any]] | None
    error: str = ""


@dataclass
class _Server:
    config: ServerConfig
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    broken: asyncio.Event = field(default_factory=asyncio.Event)
    refresh: asyncio.Event = field(default_factory=asyncio.Event)
    state: str = "starting"  # starting | up | down (waiting out its back-off)
    client: Client | None = None
    tools: list[dict[str, Any]] | None = None
    error: str = ""
    retry_at: float = 0.0
    last_used: float = 0.0
    wanted: float = 0.0  # when a turn or a call last asked for it
    failures: int = 0  # failed attempts in a row
    task: asyncio.Task[None] | None = None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        return _describe(exc.exceptions[0])
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:300] if str(exc) else text


def _session_gone(exc: MCPError) -> bool:
    """The Streamable HTTP transport's reading of a 404 for our session id (a request the server
    refused unread: it did not run)."""
    message = (exc.error.message or "").lower()
    return exc.code == INVALID_REQUEST and message in ("session not found", "session terminated")


def tool_entry(tool: Any) -> dict[str, Any]:
    """An MCP tool as the catalogue keeps it (JSON)."""
    return {"name": tool.name, "description": tool.description or "", "input_schema": tool.input_schema}


class McpManager:
    """The process's MCP sessions: one supervising task per server on a private event loop."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._servers: dict[int, _Server] = {}
        self._thread = threading.Thread(target=self._loop.run_forever, name="mcp", daemon=True)
        self._thread.start()
        self._loop.call_soon_threadsafe(lambda: self._loop.create_task(self._let_go_unwanted()))

    # --- the worker's side (any thread) ------------------------------------------------------

    def _submit(self, coro: Awaitable[T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self._loop)  # type: ignore[arg-type]

    def _wait(self, future: Future[T], *, timeout: float, heartbeat: Callable[[], None] | None) -> T:
        deadline = time.monotonic() + timeout
        while True:
            try:
                return future.result(timeout=0.25)
            except FutureTimeout:
                if time.monotonic() > deadline:
                    future.cancel()
                    raise
                if heartbeat is not None:
                    heartbeat()

    def catalogs(
        self, configs: list[ServerConfig], *, wait: float, heartbeat: Callable[[], None] | None = None
    ) -> list[Catalog]:
        """The tools of these servers, waiting up to `wait` s for those still starting."""
        return self._wait(self._submit(self._catalogs(configs, wait)), timeout=wait + 5, heartbeat=heartbeat)

    def call(
        self, config: ServerConfig, tool: str, arguments: dict[str, Any], *, retry_lost: bool = False
    ) -> CallToolResult:
        """Call one tool. Raises McpUnavailable (not sent), McpOutcomeUnknown (sent, no answer),
        McpCallFailed (an error answer). `retry_lost`: a read-only call whose connection broke
        is sent once more on the new connection."""
        timeout = config.call_timeout + settings.MCP_CONNECT_WAIT + PING_TIMEOUT_S + 5
        future = self._submit(self._call(config, tool, arguments, retry_lost))
        try:
            return self._wait(future, timeout=timeout, heartbeat=None)
        except FutureTimeout:
            raise McpOutcomeUnknown(f"no answer within {config.call_timeout:g} s") from None

    def state(self, name: str) -> str:
        """A server's connection state in this process ('' if it has none)."""
        for server in list(self._servers.values()):
            if server.config.name == name:
                return server.state
        return ""

    def close(self) -> None:
        """End every session (stdio servers' processes end with them) and the loop."""
        if self._loop.is_closed() or not self._loop.is_running():
            return
        with contextlib.suppress(Exception):
            self._submit(self._close()).result(timeout=5)
        self._loop.call_soon_threadsafe(self._loop.stop)

    # --- the loop's side ---------------------------------------------------------------------

    def _server(self, config: ServerConfig) -> _Server:
        server = self._servers.get(config.id)
        if server is not None and server.config == config:  # (credentials aside: they change the version)
            server.wanted = self._loop.time()
            return server
        if server is not None and server.task is not None:  # edited in the admin: connect anew
            server.task.cancel()
        server = _Server(config=config, wanted=self._loop.time())
        server.task = self._loop.create_task(self._supervise(server), name=f"mcp-{config.name}")
        self._servers[config.id] = server
        return server

    async def _catalogs(self, configs: list[ServerConfig], wait: float) -> list[Catalog]:
        servers = [self._server(c) for c in configs]
        starting = [s for s in servers if s.state == "starting"]
        if starting:
            waits = [asyncio.ensure_future(s.ready.wait()) for s in starting]
            await asyncio.wait(waits, timeout=wait)
            for w in waits:
                w.cancel()
        out = []
        for s in servers:
            if s.state == "up" and s.tools is not None:
                out.append(Catalog(s.config.name, list(s.tools)))
            elif s.state == "down":
                retry_in = max(0.0, s.retry_at - self._loop.time())
                out.append(Catalog(s.config.name, None, f"{s.error} (next attempt in {retry_in:.0f} s)"))
            else:
                out.append(Catalog(s.config.name, None, s.error or "still connecting"))
        return out

    async def _ready_client(self, server: _Server) -> Client:
        if server.state == "down":
            retry_in = max(0.0, server.retry_at - self._loop.time())
            raise McpUnavailable(f"{server.error} (next attempt in {retry_in:.0f} s)")
        if server.state != "up":
            try:
                await asyncio.wait_for(server.ready.wait(), timeout=settings.MCP_CONNECT_WAIT)
            except TimeoutError:
                raise McpUnavailable(server.error or "still connecting") from None
        if server.client is None:
            raise McpUnavailable(server.error or "not connected")
        return server.client

    def _break(self, server: _Server, why: str) -> None:
        """The session failed under a call: drop it now; the supervisor reconnects."""
        if server.state == "up":
            log.warning("MCP server %s: connection lost (%s); reconnecting", server.config.name, why)
        server.error = why
        server.state = "starting"
        server.client = None
        server.ready.clear()
        server.broken.set()

    async def _call(
        self,
        config: ServerConfig,
        tool: str,
        arguments: dict[str, Any],
        retry_lost: bool,
        resend: bool = True,
    ) -> Any:
        server = self._server(config)
        client = await self._ready_client(server)
        if self._loop.time() - server.last_used > settings.MCP_IDLE_CHECK:
            try:  # idle for a while: the server may have dropped the session meanwhile
                async with asyncio.timeout(PING_TIMEOUT_S):
                    await client.session.send_ping()
            except Exception as exc:
                self._break(server, f"no answer to a ping after idling: {_describe(exc)}")
                client = await self._ready_client(server)
        server.last_used = self._loop.time()
        try:
            result = await client.call_tool(tool, arguments, read_timeout_seconds=config.call_timeout)
        except MCPError as exc:
            if exc.code == REQUEST_TIMEOUT:
                raise McpOutcomeUnknown(f"no answer within {config.call_timeout:g} s") from None
            if _session_gone(exc) and resend:
                # HTTP 404 for our session id: the server restarted and refused the call before
                # running it; the spec says start a new session. Sent once more on the new one.
                self._break(server, "the server no longer knows our session")
                return await self._call(config, tool, arguments, retry_lost, resend=False)
            if exc.code != CONNECTION_CLOSED:
                raise McpCallFailed(exc.error.message[:1000] or "the server refused the call") from None
            lost = "the connection closed during the call"
        except Exception as exc:
            lost = f"the connection failed during the call ({_describe(exc)})"
        else:
            server.last_used = self._loop.time()
            return result
        self._break(server, lost)
        if retry_lost:
            return await self._call(config, tool, arguments, retry_lost=False, resend=resend)
        raise McpOutcomeUnknown(lost)

    @contextlib.asynccontextmanager
    async def _connect(self, server: _Server) -> Any:
        config = server.config

        async def on_message(message: Any) -> None:
            if isinstance(message, ToolListChangedNotification):
                server.refresh.set()

        async with contextlib.AsyncExitStack() as stack:
            if config.transport == "stdio":
                target: Any = StdioServerParameters(
                    command=config.command, args=list(config.args), env=dict(config.env) or None
                )
            else:
                http = await stack.enter_async_context(
                    httpx2.AsyncClient(
                        headers=config.headers, timeout=httpx2.Timeout(REQUEST_TIMEOUT_S, read=300)
                    )
                )
                target = streamable_http_client(config.url, http_client=http)
            # legacy: the initialize handshake every deployed server speaks, with pings and
            # list-changed notifications on the session
            client = Client(
                target, mode="legacy", message_handler=on_message, cache=None,
                read_timeout_seconds=REQUEST_TIMEOUT_S,
            )  # fmt: skip
            yield await stack.enter_async_context(client)

    async def _list(self, client: Client) -> list[dict[str, Any]]:
        tools: list[dict[str, Any]] = []
        cursor: str | None = None
        for _ in range(50):  # pages; a server that never ends its list cannot hang us
            page = await client.list_tools(cursor=cursor)
            tools += [tool_entry(t) for t in page.tools]
            cursor = page.next_cursor
            if not cursor:
                break
        return tools

    async def _session(self, server: _Server) -> None:
        """Connect, list, then serve until the session breaks (raises _Lost)."""
        server.state = "starting"
        async with self._connect(server) as client:
            server.tools = await self._list(client)
            server.client, server.state, server.error = client, "up", ""
            server.broken.clear()
            server.refresh.clear()
            server.last_used = self._loop.time()
            server.ready.set()
            if server.failures:
                log.info(
                    "MCP server %s is back after %s failed attempts", server.config.name, server.failures
                )
            server.failures = 0
            await _catalog_saved(server.config.id, server.tools)
            try:
                while True:
                    waits = [asyncio.ensure_future(e.wait()) for e in (server.broken, server.refresh)]
                    await asyncio.wait(
                        waits, timeout=settings.MCP_CATALOG_TTL, return_when=asyncio.FIRST_COMPLETED
                    )
                    for w in waits:
                        w.cancel()
                    if server.broken.is_set():
                        raise _Lost(server.error)
                    server.refresh.clear()
                    try:  # list-changed, or the timer: read the list again
                        server.tools = await self._list(client)
                    except Exception as exc:
                        raise _Lost(f"the tool list failed: {_describe(exc)}") from None
                    await _catalog_saved(server.config.id, server.tools)
            finally:
                if server.client is client:
                    server.client = None
                    server.ready.clear()

    def _down(self, server: _Server, retry: RetryCallState) -> None:
        exc = retry.outcome.exception() if retry.outcome else None
        server.error = _describe(exc) if exc else "unavailable"
        server.state, server.tools, server.client = "down", None, None
        server.ready.clear()
        wait = retry.next_action.sleep if retry.next_action else settings.MCP_RETRY_MIN
        server.retry_at = self._loop.time() + wait
        if server.failures == 0:  # one warning per spell, not one per attempt
            log.warning(
                "MCP server %s is unavailable: %s; retrying with back-off", server.config.name, server.error
            )
        else:
            log.debug("MCP server %s still unavailable (attempt %s): %s", server.config.name,
                      server.failures + 1, server.error)  # fmt: skip
        server.failures += 1

    async def _supervise(self, server: _Server) -> None:
        while True:
            began = self._loop.time()
            try:
                async for attempt in AsyncRetrying(
                    wait=wait_exponential_jitter(
                        multiplier=settings.MCP_RETRY_MIN,
                        max=settings.MCP_RETRY_MAX,
                        jitter=min(1.0, settings.MCP_RETRY_MIN),
                    ),
                    retry=retry_if_not_exception_type((_Lost, asyncio.CancelledError)),
                    before_sleep=lambda retry: self._down(server, retry),
                ):
                    with attempt:
                        server.state = "starting"
                        try:
                            await self._session(server)
                        except BaseExceptionGroup as group:  # the SDK's task groups wrap ours
                            lost = group.subgroup(_Lost)
                            if lost is None:
                                raise
                            raise _Lost(_describe(lost)) from None
            except _Lost:
                server.state, server.tools = "starting", None
                # reconnect at once (a restarted server is back), but a session that breaks
                # as soon as it is up waits first: no storm of reconnects
                if self._loop.time() - began < settings.MCP_RETRY_MIN:
                    await asyncio.sleep(settings.MCP_RETRY_MIN)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug in here: keep supervising, after a pause
                log.exception("MCP server %s: supervisor failed", server.config.name)
                await asyncio.sleep(settings.MCP_RETRY_MAX)

    async def _let_go_unwanted(self) -> None:
        while True:
            await asyncio.sleep(min(60.0, UNWANTED_CLOSE_S / 2))
            for key, server in list(self._servers.items()):
                if self._loop.time() - server.wanted > UNWANTED_CLOSE_S and server.task is not None:
                    log.info("MCP server %s: not used for a while, disconnecting", server.config.name)
                    server.task.cancel()
                    del self._servers[key]

    async def _close(self) -> None:
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=3)
        self._servers.clear()


_saved: dict[int, list[dict[str, Any]]] = {}


async def _catalog_saved(server_id: int, tools: list[dict[str, Any]]) -> None:
    """Keep the last catalogue in the database (the admin and settings pages show it)."""
    if _saved.get(server_id) == tools:
        return
    try:
        await asyncio.to_thread(_catalog_write, server_id, tools)
        _saved[server_id] = tools
    except Exception:
        log.warning("MCP server %s: could not save its tool list", server_id, exc_info=True)


def _catalog_write(server_id: int, tools: list[dict[str, Any]]) -> None:
    from django.db import connection
    from django.utils import timezone

    from agents.mcp.models import McpServer

    try:  # update(): leaves updated_at alone, which would make every worker reconnect
        McpServer.objects.filter(pk=server_id).update(catalog=tools, catalog_at=timezone.now())
    finally:
        connection.close()


_manager: McpManager | None = None
_manager_pid = 0
_lock = threading.Lock()


def mcp_manager() -> McpManager:
    """This process's manager (made on first use, and again in a forked child)."""
    global _manager, _manager_pid
    with _lock:
        if _manager is None or _manager_pid != os.getpid():
            _manager, _manager_pid = McpManager(), os.getpid()
            atexit.register(_manager.close)
        return _manager
