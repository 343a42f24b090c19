"""Start, stop and restart the test MCP server (tests/mcpserver.py) for the tests and the chaos run."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

SCRIPT = Path(__file__).with_name("mcpserver.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stdio_command(log: Path | None = None) -> tuple[str, list[str], dict[str, str]]:
    """The command, arguments and environment of the stdio server."""
    return sys.executable, [str(SCRIPT), "stdio"], ({"MCP_TEST_LOG": str(log)} if log else {})


class HttpMcpServer:
    """The test server over Streamable HTTP in a subprocess of its own, on a fixed port (so a
    restart comes back at the same URL)."""

    def __init__(self, log: Path | None = None, port: int | None = None) -> None:
        self.port = port or free_port()
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def start(self, timeout: float = 30.0) -> HttpMcpServer:
        env = dict(os.environ)
        if self.log:
            env["MCP_TEST_LOG"] = str(self.log)
        self.process = subprocess.Popen(
            [sys.executable, str(SCRIPT), "http", str(self.port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while True:  # a condition, not a sleep: the port accepts
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the MCP test server did not start on port {self.port}") from None
                time.sleep(0.05)

    def stop(self, *, kill: bool = False) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    def restart(self) -> None:
        self.stop(kill=True)
        self.start()

    def runs(self) -> list[str]:
        """The labels `launch` recorded, one line per run that completed."""
        if self.log is None or not self.log.exists():
            return []
        return self.log.read_text().splitlines()
