"""The MCP connection manager against real MCP servers started here (tests/mcpserver.py, the
SDK's server side) over Streamable HTTP and stdio: list and call, a nested schema, a server that
is down, restarted between two calls, slow past the timeout, answering with an error, sending
list-changed. Each test has a manager of its own, closed at the end."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agents.mcp.config import ServerConfig
from agents.mcp.manager import Catalog, McpManager, McpOutcomeUnknown, McpUnavailable
from agents.mcp.tools import McpTool
from agents.tools.base import ToolContext, ToolError, ToolOutcomeUnknown
from tests.mcpservers import HttpMcpServer, free_port, stdio_command

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

CTX = ToolContext(room_id=0, turn_id=0, call_id=0, initiator_id=None)


@pytest.fixture
def manager(settings: Any) -> Iterator[McpManager]:
    settings.MCP_CONNECT_WAIT = 15.0  # a loaded machine may take a while to start a server
    m = McpManager()
    yield m
    m.close()


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[HttpMcpServer]:
    server = HttpMcpServer(log=tmp_path / "runs.log").start()
    yield server
    server.stop()


def http_config(url: str, **more: Any) -> ServerConfig:
    return ServerConfig(id=more.pop("id", 1), name=more.pop("name", "demo"), transport="http", url=url,
                        command="", args=(), **more)  # fmt: skip


def stdio_config(log: Path, **more: Any) -> ServerConfig:
    command, args, env = stdio_command(log)
    return ServerConfig(id=2, name="local", transport="stdio", url="", command=command, args=tuple(args),
                        env=env, **more)  # fmt: skip


def tool(config: ServerConfig, catalog: Catalog, name: str, manager: McpManager) -> McpTool:
    entry = next(t for t in catalog.tools or [] if t["name"] == name)
    return McpTool(config, entry, manager)


def catalog_of(manager: McpManager, config: ServerConfig, wait: float = 15.0) -> Catalog:
    return manager.catalogs([config], wait=wait)[0]


def test_http_server_tools_are_listed_with_their_schemas_and_called(manager, http_server):
    config = http_config(http_server.url, read_only=frozenset({"add"}))
    catalog = catalog_of(manager, config)
    assert {"add", "register", "fail", "slow", "grow", "launch"} <= {t["name"] for t in catalog.tools or []}
    assert manager.call(config, "add", {"a": 2, "b": 3}).structured_content == {"result": 5}
    add = tool(config, catalog, "add", manager)
    assert (add.name, add.side_effects, add.idempotent) == ("demo__add", False, True)
    assert add.run(CTX, {"a": 40, "b": 2}) == {"result": 42}
    launch = tool(config, catalog, "launch", manager)
    assert (launch.name, launch.side_effects, launch.idempotent) == ("demo__launch", True, False)


def test_a_schema_with_nested_objects_reaches_the_model_and_validates_input(manager, http_server):
    from jsonschema import Draft202012Validator

    config = http_config(http_server.url)
    register = tool(config, catalog_of(manager, config), "register", manager)
    schema = register.spec()["function"]["parameters"]
    person = schema["properties"]["person"]
    nested = schema["$defs"][person["$ref"].rsplit("/", 1)[1]]
    assert nested["properties"]["address"]["$ref"].endswith("/Address")
    assert schema["$defs"]["Address"]["required"] == ["city", "postcode"]
    validator = Draft202012Validator(schema)  # the loop checks the model's input with it
    good = {"person": {"name": "Ana", "address": {"city": "Porto", "postcode": "4000"}}, "tags": ["x"]}
    assert validator.is_valid(good)
    assert not validator.is_valid({"person": {"name": "Ana", "address": {"city": "Porto"}}, "tags": []})
    assert register.run(CTX, good) == {"registered": "Ana", "city": "Porto", "tags": ["x"]}


def test_stdio_server_tools_are_listed_and_called(manager, tmp_path):
    config = stdio_config(tmp_path / "stdio.log")
    catalog = catalog_of(manager, config)
    assert "register" in {t["name"] for t in catalog.tools or []}
    launch = tool(config, catalog, "launch", manager)
    assert launch.run(CTX, {"label": "one"}) == {"result": "launched one"}
    assert (tmp_path / "stdio.log").read_text().splitlines() == ["one"]


def test_an_error_answer_reaches_the_model_as_the_servers_reason(manager, http_server):
    config = http_config(http_server.url)
    fail = tool(config, catalog_of(manager, config), "fail", manager)
    with pytest.raises(ToolError) as raised:
        fail.run(CTX, {"why": "the printer is on fire"})
    assert "the printer is on fire" in str(raised.value)
    assert not isinstance(raised.value, ToolOutcomeUnknown)  # it answered: the outcome is known


def test_a_call_slower_than_its_timeout_ends_with_outcome_unknown_and_the_session_goes_on(
    manager, http_server
):
    config = http_config(http_server.url, call_timeout=1.0)
    catalog = catalog_of(manager, config)
    began = time.monotonic()
    with pytest.raises(McpOutcomeUnknown):
        manager.call(config, "slow", {"seconds": 20})
    print(
        f"\nFIGURES slow call: outcome unknown after {time.monotonic() - began:.2f} s (timeout 1 s, tool 20 s)"
    )
    # a side-effecting tool: the loop records it `interrupted` (it may have taken effect)
    with pytest.raises(ToolOutcomeUnknown):
        tool(config, catalog, "slow", manager).run(CTX, {"seconds": 20})
    read_only = http_config(http_server.url, call_timeout=1.0, read_only=frozenset({"slow"}))
    with pytest.raises(ToolError) as raised:
        tool(read_only, catalog, "slow", manager).run(CTX, {"seconds": 20})
    assert not isinstance(raised.value, ToolOutcomeUnknown)
    assert manager.call(config, "add", {"a": 1, "b": 1}).structured_content == {"result": 2}


class RefusingPort:
    """A port that accepts and at once closes every connection, counting them: a server that is
    down, whose connection attempts can be counted."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self.sock.close()


def test_a_down_server_costs_one_attempt_per_interval_not_one_per_call(manager, settings, caplog):
    settings.MCP_RETRY_MIN = 60.0  # the breaker stays open for the whole test
    settings.MCP_RETRY_MAX = 60.0
    down = RefusingPort()
    try:
        config = http_config(f"http://127.0.0.1:{down.port}/mcp", name="gone")
        with caplog.at_level(logging.DEBUG, logger="agents.mcp"):
            catalog = catalog_of(manager, config, wait=10)
            assert catalog.tools is None and "next attempt in" in catalog.error
            attempts = down.accepted
            assert attempts >= 1
            for _ in range(50):  # 50 calls and 50 turns while it is down
                with pytest.raises(McpUnavailable):
                    manager.call(config, "add", {"a": 1, "b": 2})
                assert catalog_of(manager, config, wait=10).tools is None
            assert down.accepted == attempts  # none of them touched the network
        warnings = [
            r for r in caplog.records if r.name.startswith("agents.mcp") and r.levelno >= logging.WARNING
        ]
        assert len(warnings) == 1 and "gone is unavailable" in warnings[0].getMessage()
        print(f"\nFIGURES down server: {down.accepted} connection attempt(s) and {len(warnings)} warning "
              "for 1 + 50 catalogue reads and 50 calls")  # fmt: skip
        with pytest.raises(ToolError) as raised:
            McpTool(config, {"name": "add", "input_schema": {"type": "object"}}, manager).run(CTX, {})
        assert "unavailable" in str(raised.value) and "not sent" in str(raised.value)
    finally:
        down.close()


def test_a_server_that_comes_up_later_is_connected_by_the_back_off(manager, settings, tmp_path):
    settings.MCP_RETRY_MIN = 0.2
    settings.MCP_RETRY_MAX = 0.5
    server = HttpMcpServer(port=free_port())
    config = http_config(server.url, name="late")
    assert catalog_of(manager, config, wait=1).tools is None  # not started yet
    server.start()
    try:
        deadline = time.monotonic() + 30
        began = time.monotonic()
        while catalog_of(manager, config, wait=5).tools is None:
            assert time.monotonic() < deadline, "never reconnected"
        print(
            f"\nFIGURES late server: connected {time.monotonic() - began:.2f} s after it came up (back-off 0.2-0.5 s)"
        )
        assert manager.call(config, "add", {"a": 2, "b": 2}).structured_content == {"result": 4}
    finally:
        server.stop()


def test_a_server_restarted_between_two_calls_is_reconnected_before_the_second(
    manager, settings, http_server
):
    settings.MCP_IDLE_CHECK = 0.0  # every call checks its session first (as after an idle spell)
    config = http_config(http_server.url)
    catalog = catalog_of(manager, config)
    launch = tool(config, catalog, "launch", manager)
    assert launch.run(CTX, {"label": "before"}) == {"result": "launched before"}
    http_server.restart()  # its sessions are gone: the old one is dead
    # the side-effecting call is sent once, on the new session, and runs once
    began = time.monotonic()
    assert launch.run(CTX, {"label": "after"}) == {"result": "launched after"}
    print(
        f"\nFIGURES restarted server: the next call pinged, reconnected and ran in {time.monotonic() - began:.2f} s"
    )
    assert http_server.runs() == ["before", "after"]
    assert manager.state("demo") == "up"


def test_list_changed_refreshes_the_catalogue(manager, http_server):
    config = http_config(http_server.url)
    assert "fresh" not in {t["name"] for t in catalog_of(manager, config).tools or []}
    assert manager.call(config, "grow", {}).structured_content == {"result": "grown"}
    began = deadline = time.monotonic()
    deadline += 30
    while "fresh" not in {t["name"] for t in catalog_of(manager, config).tools or []}:
        assert time.monotonic() < deadline, "the catalogue never saw the new tool"
        time.sleep(0.05)
    print(
        f"\nFIGURES list-changed: the catalogue had the new tool {time.monotonic() - began:.2f} s after the call"
    )
    assert manager.call(config, "fresh", {}).content[0].text == "fresh!"


def test_a_call_refused_for_a_session_the_restarted_server_forgot_is_sent_once_on_a_new_one(
    manager, settings, http_server
):
    settings.MCP_IDLE_CHECK = 3600.0  # no ping first: the call itself meets the dead session
    config = http_config(http_server.url)
    launch = tool(config, catalog_of(manager, config), "launch", manager)
    assert launch.run(CTX, {"label": "before"}) == {"result": "launched before"}
    http_server.restart()
    # the server answers 404 for the old session without running the call: a new session, once
    assert launch.run(CTX, {"label": "after"}) == {"result": "launched after"}
    assert http_server.runs() == ["before", "after"]


def test_a_server_no_turn_asks_for_any_more_is_disconnected_then_reconnected_on_demand(
    settings, monkeypatch, http_server
):
    import agents.mcp.manager as manager_module

    settings.MCP_CONNECT_WAIT = 15.0
    monkeypatch.setattr(manager_module, "UNWANTED_CLOSE_S", 0.5)
    manager = McpManager()
    try:
        config = http_config(http_server.url)
        assert catalog_of(manager, config).tools is not None
        deadline = time.monotonic() + 30
        while manager.state("demo") != "":  # let go: no turn asked for it
            assert time.monotonic() < deadline, "never let go"
            time.sleep(0.05)
        assert manager.call(config, "add", {"a": 1, "b": 2}).structured_content == {"result": 3}
    finally:
        manager.close()
