#!/usr/bin/env python
"""A fake OpenAI-compatible streaming LLM server: real HTTP on localhost, stdlib only.

Usable in-process (``with FakeLLM(delay=0) as fake: ...fake.base_url...``) and as a process
(``python tests/fakellm.py --port 8089 --delay 0.03 --tokens 40``) for benchmarks.

Directives in the LAST user message (anywhere in the text):
  !tokens=N      default reply has N words "w1 ... wN"
  !delay=MS      milliseconds before each streamed token
  !say=TEXT      reply exactly TEXT (up to the end of the line), streamed word by word
  !fail=CODE     answer with HTTP CODE and an OpenAI-style error JSON
  !hang          send the role chunk, then nothing until the client disconnects
  !streamerror   stream the reply, then an OpenAI-style error event instead of the end
  !tool=NAME:{JSON}  if the request has `tools`, stream that tool call (repeatable)
  !badargs=NAME  like !tool, but the call's arguments are malformed JSON: {"expression": "1+
Stats: ``requests`` (bodies), ``disconnects``, ``completed``; also GET /_stats, POST /_reset.
"""

from __future__ import annotations

import argparse
import json
import re
import select
import socket
import sys
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_DIRECTIVE = re.compile(
    r"!(?:(?P<key>tokens|delay|fail)=(?P<num>\d+)|say=(?P<say>[^\n]*)"
    r"|tool=(?P<tool>[\w.-]+):|badargs=(?P<badargs>[\w.-]+)"
    r"|(?P<hang>hang)\b|(?P<streamerror>streamerror)\b)"
)
BAD_ARGUMENTS = '{"expression": "1+'  # what !badargs streams as a call's arguments: not JSON
_WORDS = re.compile(r"\s+|\S+\s*")  # tokens keep their trailing spaces: "".join(...) == text
_DISCONNECT_ERRORS = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)


def split_words(text: str) -> list[str]:
    """Split text into word tokens that keep their whitespace, so joining gives the original."""
    return _WORDS.findall(text)


def parse_directives(text: str) -> tuple[dict[str, Any], str]:
    """Return (directives, text without them) for one user message."""
    opts: dict[str, Any] = {"tools": []}
    clean: list[str] = []
    pos = 0
    while m := _DIRECTIVE.search(text, pos):
        clean.append(text[pos : m.start()])
        pos = m.end()
        if m["key"]:
            opts[m["key"]] = int(m["num"])
        elif m["say"] is not None:
            opts["say"] = m["say"].rstrip("\r")
        elif m["hang"]:
            opts["hang"] = True
        elif m["streamerror"]:
            opts["streamerror"] = True
        elif m["badargs"]:
            opts["tools"].append((m["badargs"], BAD_ARGUMENTS))
        else:  # !tool=name:{json} - the JSON may contain spaces, so decode it rather than regex it
            try:
                args, pos = json.JSONDecoder().raw_decode(text, pos)
            except ValueError:
                args = {}
            opts["tools"].append((m["tool"], json.dumps(args)))
    clean.append(text[pos:])
    return opts, "".join(clean)


def _message_text(content: Any) -> str:
    if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}, ...]
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""


def _readable(sock: socket.socket, timeout: float) -> bool:
    if hasattr(select, "poll"):  # poll() has no 1024-fd limit (benchmarks open many sockets)
        poller = select.poll()
        poller.register(sock, select.POLLIN | select.POLLHUP | select.POLLERR)
        return bool(poller.poll(timeout * 1000))
    return bool(select.select([sock], [], [], timeout)[0])


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a hung stream must never block stop()
    fake: FakeLLM

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients resetting idle keep-alive connections is normal, not worth a traceback.
        if not isinstance(sys.exc_info()[1], _DISCONNECT_ERRORS):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive + chunked SSE, like real servers
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _json(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        path = self.path.split("?")[0].rstrip("/")
        if path.endswith("/models"):
            model = {"id": self.server.fake.model, "object": "model", "owned_by": "fakellm"}
            self._json(200, {"object": "list", "data": [model]})
        elif path == "/_stats":
            self._json(200, self.server.fake.stats())
        else:
            self._json(404, {"error": {"message": f"No route {self.path}", "type": "not_found"}})

    def do_POST(self) -> None:
        path = self.path.split("?")[0].rstrip("/")
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if path == "/_reset":
            self.server.fake.reset()
            self._json(200, {"ok": True})
        elif path.endswith("/chat/completions"):
            try:
                body = json.loads(raw or b"{}")
            except ValueError:
                self._json(400, {"error": {"message": "Invalid JSON body", "type": "invalid"}})
                return
            self._chat(body)
        else:
            self._json(404, {"error": {"message": f"No route {self.path}", "type": "not_found"}})

    def _chat(self, body: dict[str, Any]) -> None:
        fake = self.server.fake
        self._completed = False
        plan = fake._plan(body)
        if plan["fail"]:
            err = {
                "message": f"Fake failure (HTTP {plan['fail']}) requested by !fail",
                "type": "server_error" if plan["fail"] >= 500 else "invalid_request_error",
                "code": "fake_failure",
            }
            self._json(plan["fail"], {"error": err})
            return
        try:
            if body.get("stream"):
                self._stream(body, plan)
            elif plan["hang"] and self._client_gone(None):
                fake._count("disconnects")
            else:
                # Counted before the write, so a client that got the reply sees it counted.
                self._completed = True
                fake._count("completed")
                self._json(200, fake._completion(body, plan))
        except _DISCONNECT_ERRORS:
            self.close_connection = True
            if not self._completed:
                fake._count("disconnects")

    def _stream(self, body: dict[str, Any], plan: dict[str, Any]) -> None:
        fake = self.server.fake
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self._event(fake._chunk({"role": "assistant", "content": ""}))
        if plan["hang"]:
            if self._client_gone(None):
                raise BrokenPipeError  # counted as a disconnect by the caller
            return  # server stopping
        for piece in plan["pieces"]:
            if self._client_gone(plan["delay"]):
                raise BrokenPipeError
            self._event(fake._chunk({"content": piece}))
        if plan["streamerror"]:  # as OpenAI reports a failure after the 200 status line
            self._event({"error": {"message": "Fake error mid-stream", "type": "server_error"}})
            self._completed = True
            fake._count("completed")
            self.wfile.write(b"0\r\n\r\n")
            return
        for index, (name, args) in enumerate(plan["tool_calls"]):
            # Arguments split over two chunks; only the first has id and name (as OpenAI does).
            half = max(1, len(args) // 2)
            rest = {"index": index, "function": {"arguments": args[half:]}}
            for part in (_tool_call(index, name, args[:half]), rest):
                if self._client_gone(plan["delay"]):
                    raise BrokenPipeError
                self._event(fake._chunk({"tool_calls": [part]}))
        self._event(fake._chunk({}, plan["finish_reason"]))
        if (body.get("stream_options") or {}).get("include_usage"):
            self._event(fake._chunk(None, usage=fake._usage(body, plan)))
        # Counted before the last write, so a client that saw [DONE] also sees it counted.
        self._completed = True
        fake._count("completed")
        # [DONE], then the end of the chunked body: the connection stays reusable.
        self.wfile.write(b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n")

    def _write(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def _event(self, payload: dict[str, Any]) -> None:
        self._write(b"data: " + json.dumps(payload).encode() + b"\n\n")

    def _client_gone(self, timeout: float | None) -> bool:
        """Wait up to `timeout` (None: until the server stops); True if the client hung up.

        A write to a closed peer often succeeds once (kernel buffer), so poll for EOF instead
        of relying on BrokenPipeError alone: disconnects are then seen within one delay.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = 0.1 if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                readable = _readable(self.connection, min(left, 0.1))
                if readable and not self.connection.recv(1, socket.MSG_PEEK):
                    return True
            except (OSError, ValueError):
                return True
            if readable:  # unexpected bytes from the client: don't spin on them
                time.sleep(min(left, 0.1))
            if self.server.fake._stopping.is_set():
                return False
            if deadline is not None and time.monotonic() >= deadline:
                return False


class FakeLLM:
    """Fake OpenAI-compatible server; `start()` it, point a client at `base_url`, then `stop()`."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        delay: float = 0.02,
        tokens: int = 20,
        model: str = "fake-model",
    ) -> None:
        self.host, self.port = host, port
        self.delay, self.tokens, self.model = delay, tokens, model
        self._cond = threading.Condition()
        self._requests: list[dict[str, Any]] = []
        self._counts = {"disconnects": 0, "completed": 0}
        self._script: deque[str] = deque()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> FakeLLM:
        """Bind (port 0 picks a free port) and serve in a daemon thread."""
        self._stopping.clear()
        self._server = _Server((self.host, self.port), _Handler)
        self._server.fake = self
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"fakellm-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; hung streams are released."""
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeLLM:
        return self.start() if self._server is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        """The OpenAI base URL, e.g. http://127.0.0.1:PORT/v1."""
        return f"http://{self.host}:{self.port}/v1"

    # -- control and observability ----------------------------------------------------------
    def script(self, replies: list[str]) -> None:
        """Queue exact replies, used (in order) instead of the default reply."""
        with self._cond:
            self._script.extend(replies)

    @property
    def requests(self) -> list[dict[str, Any]]:
        """Parsed JSON bodies of the chat completion requests so far (a copy)."""
        with self._cond:
            return list(self._requests)

    @property
    def disconnects(self) -> int:
        """Streams the client closed before the server finished."""
        with self._cond:
            return self._counts["disconnects"]

    @property
    def completed(self) -> int:
        """Completions sent to the end."""
        with self._cond:
            return self._counts["completed"]

    def stats(self) -> dict[str, int]:
        """Counters as served by GET /_stats."""
        with self._cond:
            return {"requests": len(self._requests), **self._counts}

    def reset(self) -> None:
        """Forget requests, counters and scripted replies."""
        with self._cond:
            self._requests.clear()
            self._script.clear()
            self._counts = dict.fromkeys(self._counts, 0)

    def _wait(self, key: str, n: int, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.stats()[key] >= n, timeout)

    def wait_for_disconnects(self, n: int, timeout: float) -> bool:
        """True once at least `n` client disconnects were seen."""
        return self._wait("disconnects", n, timeout)

    def wait_for_completed(self, n: int, timeout: float) -> bool:
        """True once at least `n` completions were sent to the end."""
        return self._wait("completed", n, timeout)

    def wait_for_requests(self, n: int, timeout: float) -> bool:
        """True once at least `n` chat completion requests arrived."""
        return self._wait("requests", n, timeout)

    def default_reply(self, message: str, tokens: int | None = None) -> str:
        """The reply to a user message without !say or a scripted reply."""
        _, clean = parse_directives(message)
        quoted = " ".join(clean.split())[:40]
        words = " ".join(f"w{i}" for i in range(1, (self.tokens if tokens is None else tokens) + 1))
        return f"Answer to '{quoted}': {words}"

    # -- used by the handler ----------------------------------------------------------------
    def _count(self, key: str) -> None:
        with self._cond:
            self._counts[key] += 1
            self._cond.notify_all()

    def _plan(self, body: dict[str, Any]) -> dict[str, Any]:
        messages = body.get("messages") or []
        users = [i for i, m in enumerate(messages) if m.get("role") == "user"]
        last = users[-1] if users else -1
        text = _message_text(messages[last].get("content")) if users else ""
        opts, _ = parse_directives(text)
        # Once a tool result follows the user turn, answer with text (no endless tool loop).
        tool_answered = any(m.get("role") == "tool" for m in messages[last + 1 :])
        tool_calls = opts["tools"] if body.get("tools") and not tool_answered else []
        with self._cond:
            self._requests.append(body)
            self._cond.notify_all()
            if "say" in opts:
                reply = opts["say"]
            elif tool_calls:
                reply = ""
            elif self._script:
                reply = self._script.popleft()
            else:
                reply = self.default_reply(text, opts.get("tokens"))
        delay = opts["delay"] / 1000 if "delay" in opts else self.delay
        return {
            "pieces": split_words(reply),
            "tool_calls": tool_calls,
            "delay": delay,
            "fail": opts.get("fail"),
            "hang": opts.get("hang", False),
            "streamerror": opts.get("streamerror", False),
            "finish_reason": "tool_calls" if tool_calls else "stop",
        }

    def _chunk(self, delta: dict | None, finish: str | None = None, **extra: Any) -> dict:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        choices = [] if delta is None else [choice]  # no choices: the include_usage chunk
        kind = "chat.completion.chunk"
        return {"id": "chatcmpl-fake", "object": kind, "created": 0, "model": self.model,
                "choices": choices, **extra}  # fmt: skip

    def _usage(self, body: dict[str, Any], plan: dict[str, Any]) -> dict[str, int]:
        texts = (_message_text(m.get("content")) for m in body.get("messages") or [])
        prompt = sum(len(t.split()) for t in texts)
        completion = len(plan["pieces"]) + len(plan["tool_calls"])
        total = prompt + completion
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": total}

    def _completion(self, body: dict[str, Any], plan: dict[str, Any]) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": "".join(plan["pieces"])}
        calls = [_tool_call(i, name, args) for i, (name, args) in enumerate(plan["tool_calls"])]
        if calls:
            message["tool_calls"] = calls
        choice = {"index": 0, "message": message, "finish_reason": plan["finish_reason"]}
        model, usage = body.get("model") or self.model, self._usage(body, plan)
        return {"id": "chatcmpl-fake", "object": "chat.completion", "created": 0,
                "model": model, "choices": [choice], "usage": usage}  # fmt: skip


def _tool_call(index: int, name: str, arguments: str) -> dict[str, Any]:
    function = {"name": name, "arguments": arguments}
    return {"index": index, "id": f"call_fake_{index}", "type": "function", "function": function}


def main() -> None:
    """Run the fake server until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8089)
    parser.add_argument("--delay", type=float, default=0.02, help="seconds between tokens")
    parser.add_argument("--tokens", type=int, default=20, help="words in the default reply")
    args = parser.parse_args()
    fake = FakeLLM(args.host, args.port, delay=args.delay, tokens=args.tokens).start()
    print(f"FakeLLM listening on {fake.base_url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        fake.stop()


if __name__ == "__main__":
    main()
