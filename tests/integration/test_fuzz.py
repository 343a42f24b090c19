"""Property-based fuzzing (hypothesis) of the room socket and of the HTTP forms.

Part 1 talks to the real stack (Daphne, Celery worker and beat, Postgres, Redis) over ONE token
socket reused across examples (websockets' sync client, so no event loop in the test thread).
Every frame is checked against a model of docs/protocol.md (`expected_codes`): the server must
answer with a typed `error` whose code the model allows, or with no error where the frame is
valid; a rejected frame must write no row (Message, RoomEvent, Turn, StreamChunk); the socket
must stay open and answer the `ping` that follows every case with a `pong`; Daphne must log no
traceback. Part 2 posts random and malformed data to the forms with Django's test client
(in-process, CSRF enforced, token supplied): never a 5xx, and a rejected post writes nothing.

The number of cases that ran is printed at the end of the module (with or without `-s`) and
carried in each test's final assertion message.

Examples are derandomized (the same on every run); shrinking is off unless FUZZ_SHRINK=1, since
each replay is a round trip to a stateful server. FUZZ_SKIP_KNOWN=1: see SKIP_KNOWN below.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
import traceback
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model
from django.contrib.messages import get_messages
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.signals import got_request_exception
from django.db import connection, transaction
from django.test import Client
from django.utils import timezone
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed, InvalidStatus, InvalidURI
from websockets.sync.client import connect as ws_connect

from agents.models import Turn
from rooms.events import seq_reserve_locked
from rooms.models import ApiToken, Membership, Message, Room, RoomEvent, StreamChunk
from rooms.services import room_create, token_create

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

# Hypothesis caches source constants under ./.hypothesis by default: keep the checkout clean.
os.environ.setdefault(
    "HYPOTHESIS_STORAGE_DIRECTORY", os.path.join(tempfile.gettempdir(), "roomchat-hypothesis")
)

# Examples per property; the whole module (stack start included) stays under a minute.
WS_EXAMPLES = 500
ROOM_EXAMPLES = 60
HTTP_EXAMPLES = 60

FUZZ = settings(
    derandomize=True,  # the same examples on every run: CI-stable
    database=None,  # no example database
    deadline=None,
    print_blob=False,
    # Shrinking replays many frames against a stateful server: minutes, not seconds. The corpus
    # tests hold the minimal repros; FUZZ_SHRINK=1 shrinks a new failure.
    phases=[Phase.explicit, Phase.generate]
    + ([Phase.shrink] if os.environ.get("FUZZ_SHRINK") == "1" else []),
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
        HealthCheck.large_base_example,
    ],
)

# docs/protocol.md's error codes, plus `rate_limited` (rooms/ratelimit.py), which the fuzzer
# treats as "try again" rather than as an answer.
DOCUMENTED_CODES = frozenset(
    {"too_large", "bad_json", "unknown_type", "invalid", "not_found", "forbidden", "conflict", "unsupported"}
)
ALLOWED_CODES = DOCUMENTED_CODES | {"rate_limited"}
OK = "ok"  # in an expected set: "no error frame" is a correct answer

# `retry` is in rooms/protocol.py but not (yet) in docs/protocol.md.
CLIENT_TYPES = ("send", "cancel", "retry", "sync", "typing", "ping", "tool_result", "tool_approval")
FIELDS = {
    "send": ({"client_id", "content"}, {"tools"}),
    "cancel": ({"turn_id"}, set()),
    "retry": ({"turn_id"}, set()),
    "sync": ({"since"}, set()),
    "typing": (set(), set()),
    "ping": (set(), set()),
    "tool_result": ({"call_id"}, {"output", "error"}),
    "tool_approval": ({"call_id", "approved"}, {"reason"}),
}  # type -> (required fields, optional fields)

CASES: Counter[str] = Counter()  # what ran, for the summary line

# The fuzz properties fail while the server bugs this fuzzer found are open (the corpus tests below
# reproduce each one by name). FUZZ_SKIP_KNOWN=1 leaves those triggers out of the properties, to
# see whether anything *else* fails; it does not change the corpus tests.
SKIP_KNOWN = os.environ.get("FUZZ_SKIP_KNOWN") == "1"

PROJECT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRACEBACK_MARKERS = (
    "Traceback (most recent call last)",
    "Exception inside application",
    " ERROR ",
    "ERROR:",
    "CRITICAL",
)


# --- the model of the protocol (docs/protocol.md) ---------------------------------------------


def _max_frame() -> int:
    return int(django_settings.CHAT_MAX_FRAME_BYTES)


def _max_chars() -> int:
    return int(django_settings.CHAT_MAX_MESSAGE_CHARS)


def _is_int(value: Any) -> bool:
    return type(value) is int  # strict: no bool, no float, no digit string


def _is_uuid_text(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _has_surrogate(value: Any) -> bool:
    return isinstance(value, str) and any("\ud800" <= ch <= "\udfff" for ch in value)


def _depth(value: Any) -> int:
    depth = 0
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        depth = max(depth, level)
        if isinstance(item, dict):
            stack.extend((v, level + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, level + 1) for v in item)
    return depth


@dataclass
class RoomContext:
    """What the model needs to know about the fuzzed room."""

    own_turns: dict[int, str] = field(default_factory=dict)  # the fuzzer's turns in the room -> status
    # turns of someone else in the room: a member stops or retries only their own turns
    foreign_turns: dict[int, str] = field(default_factory=dict)
    other_room_turns: set[int] = field(default_factory=set)
    conflict_client_id: str = ""
    conflict_content: str = ""
    sent: dict[uuid.UUID, str] = field(default_factory=dict)  # acked client_id -> content
    acked: dict[uuid.UUID, int] = field(default_factory=dict)  # acked client_id -> message id


def field_ok(kind: str, name: str, value: Any) -> bool:
    """Whether one field value is valid for its frame type (docs/protocol.md)."""
    if name == "client_id":
        return _is_uuid_text(value)
    if name == "content":
        return (
            isinstance(value, str)
            and bool(value.strip())
            and len(value) <= _max_chars()
            and "\x00" not in value
        )
    if name == "turn_id":
        return _is_int(value) and 1 <= value <= 2**62
    if name == "since":
        return _is_int(value) and 0 <= value <= 2**62
    if name == "call_id":
        return isinstance(value, str) and 1 <= len(value) <= 100
    if name == "error":
        return value is None or (isinstance(value, str) and len(value) <= 2000)
    if name == "output":
        return True
    if name == "approved":
        return isinstance(value, bool)
    if name == "reason":
        return value is None or (isinstance(value, str) and len(value) <= 500)
    if name == "tools":
        return value == []  # the fuzzer offers no tool, or malformed ones
    raise AssertionError(f"no rule for {kind}.{name}")


def expected_codes(obj: Any, ctx: RoomContext) -> set[str]:
    """The answers the protocol allows for one parsed frame: error codes, or OK."""
    if not isinstance(obj, dict):
        return {"bad_json"}
    kind = obj.get("type")
    if not isinstance(kind, str) or kind not in CLIENT_TYPES:
        return {"unknown_type"}
    required, optional = FIELDS[kind]
    present = set(obj) - {"type"}
    if present - required - optional or required - present:
        return {"invalid"}
    if not all(field_ok(kind, name, obj[name]) for name in present):
        return {"invalid"}
    surrogates = any(
        _has_surrogate(obj.get(k)) for k in ("content", "client_id", "call_id", "error", "reason")
    )
    if kind == "send":
        earlier = ctx.sent.get(uuid.UUID(obj["client_id"]))  # idempotent per client_id
        expected = {OK} if earlier is None or earlier == obj["content"] else {"conflict"}
        # Unpaired surrogates cannot be stored as UTF-8: refusing them is fine, crashing is not.
        return expected | ({"invalid"} if surrogates else set())
    if kind in ("cancel", "retry") and obj["turn_id"] in ctx.foreign_turns:
        return {"forbidden"}
    if kind == "cancel":
        return {OK} if obj["turn_id"] in ctx.own_turns else {"not_found"}
    if kind == "retry":
        status = ctx.own_turns.get(obj["turn_id"])
        if status is None:
            return {"not_found"}
        return {OK, "forbidden"} if status in ("failed", "interrupted") else {"conflict"}
    if kind in ("tool_result", "tool_approval"):
        expected = {"not_found"}  # the fuzzed rooms have no tool calls
        if _depth(obj.get("output")) > 64 or surrogates:
            expected.add("invalid")  # pydantic's recursion guard / unencodable text
        return expected
    return {OK}  # sync, typing, ping


def expected_for_text(text: str, ctx: RoomContext) -> set[str]:
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > _max_frame():
        return {"too_large"}
    try:
        obj = json.loads(text)
    except RecursionError:
        return {"bad_json", "unknown_type", "invalid", "unsupported"}  # depth near the limit
    except ValueError:
        return {"bad_json"}
    if _depth(obj) > 400:  # the server's stack is deeper than ours: either answer is fine
        return expected_codes(obj, ctx) | {"bad_json", "invalid"}
    return expected_codes(obj, ctx)


def expected_ref(obj: Any) -> Any:
    """The `ref` an error must echo (docs: the frame's client_id or turn_id), or None."""
    if not isinstance(obj, dict):
        return None
    kind = obj.get("type")
    if kind == "send" and isinstance(obj.get("client_id"), str) and "turn_id" not in obj:
        return obj["client_id"]
    if kind in ("cancel", "retry") and _is_int(obj.get("turn_id")) and "client_id" not in obj:
        return obj["turn_id"]
    return None


def _same_ref(expected: Any, got: Any) -> bool:
    if expected == got:
        return True
    if got is None and isinstance(expected, str):  # refs that can't be echoed safely are dropped
        try:
            expected.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return len(expected) > 100
    if got is None and _is_int(expected):  # so are ids outside a signed 64-bit integer
        return abs(expected) >= 2**63
    return _is_uuid_text(expected) and _is_uuid_text(got) and uuid.UUID(expected) == uuid.UUID(got)


# --- strategies -------------------------------------------------------------------------------

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=20)
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
NOT_INT = st.sampled_from(
    [
        None,
        True,
        False,
        "1",
        "",
        "0x1",
        1.0,
        1.5,
        -0.0,
        float("nan"),
        float("inf"),
        1e308,
        [],
        {},
        [1],
        {"id": 1},
    ]
)
BAD_TURN_ID = NOT_INT | st.integers(max_value=0) | st.integers(min_value=2**62 + 1, max_value=2**80)
BAD_SINCE = NOT_INT | st.integers(max_value=-1, min_value=-(2**80)) | st.integers(min_value=2**62 + 1)
NOT_STR = st.sampled_from([None, True, 0, 1, -1, 1.5, [], {}, ["x"], {"x": 1}])
BAD_UUID = (
    st.sampled_from(
        [
            "",
            "not-a-uuid",
            "1234",
            "g" * 32,
            "00000000-0000-0000-0000-00000000000",
            "00000000-0000-0000-0000-0000000000000",
            str(uuid.UUID(int=1)) + "0",
            "\x00" * 36,
        ]
    )
    | st.text(max_size=40).filter(lambda s: not _is_uuid_text(s))
    | NOT_STR
)
GOOD_UUID = (
    st.uuids().map(str)
    | st.uuids().map(lambda u: "{" + str(u).upper() + "}")
    | st.uuids().map(lambda u: u.hex)
)
GOOD_CONTENT = st.text(min_size=1, max_size=300).filter(lambda s: s.strip() and "\x00" not in s)
BAD_CONTENT = (
    st.sampled_from(["", " ", "\n\t  ", "\u3000", "\x00", "a\x00b"])
    | st.integers(min_value=1, max_value=3000).map(lambda n: "x" * (16_001 + n))
    | NOT_STR
)
GOOD_SINCE = st.integers(min_value=0, max_value=2**62)
GOOD_CALL_ID = st.text(min_size=1, max_size=100)
BAD_CALL_ID = st.sampled_from(["", "c" * 101, "c" * 5000]) | NOT_STR
BAD_ERROR = st.sampled_from([0, 1.5, True, [], {}, ["e"], {"e": 1}])
SURROGATE_TEXT = (
    st.lists(
        st.sampled_from(["\ud800", "\udfff", "\udc00", "a", "\ud83d", "\ude00", " "]), min_size=1, max_size=6
    )
    .map("".join)
    .filter(_has_surrogate)
)


def _good_values(ctx_turns: list[int]) -> dict[str, st.SearchStrategy[Any]]:
    turn_ids = st.integers(min_value=1, max_value=2**62)
    if ctx_turns:
        turn_ids = turn_ids | st.sampled_from(ctx_turns)
    return {
        "client_id": GOOD_UUID,
        "content": GOOD_CONTENT,
        "turn_id": turn_ids,
        "since": GOOD_SINCE,
        "call_id": GOOD_CALL_ID,
        "output": JSON,
        "error": st.none() | st.text(max_size=40),
        "approved": st.booleans(),
        "reason": st.none() | st.text(max_size=40),
        "tools": st.just([]),
    }


BAD_VALUES = {
    "client_id": BAD_UUID,
    "content": BAD_CONTENT,
    "turn_id": BAD_TURN_ID,
    "since": BAD_SINCE,
    "call_id": BAD_CALL_ID,
    "output": st.nothing(),
    "error": BAD_ERROR,
    "approved": st.sampled_from([0, 1, "yes", None, [], {}]),
    "reason": st.sampled_from([0, [], {}, "r" * 501]),
    "tools": st.sampled_from([{}, "t", [1], [{"name": "bad name!", "parameters": {}}], [{"name": "x"}]]),
}


@st.composite
def typed_frames(draw: Any, turn_ids: list[int]) -> dict[str, Any]:
    """A frame of a real type: valid, or with one field wrong, missing or extra."""
    good = _good_values(turn_ids)
    kind = draw(st.sampled_from(CLIENT_TYPES))
    required, optional = FIELDS[kind]
    frame: dict[str, Any] = {"type": kind}
    for name in sorted(required):
        frame[name] = draw(good[name])
    for name in sorted(optional):
        if draw(st.booleans()):
            frame[name] = draw(good[name])
    mutation = draw(st.sampled_from(["valid", "wrong", "wrong", "missing", "extra", "surrogate"]))
    names = sorted(set(frame) - {"type"})
    if mutation == "wrong":
        wrongable = [n for n in sorted(required | optional) if n != "output"]
        if wrongable:
            name = draw(st.sampled_from(wrongable))
            frame[name] = draw(BAD_VALUES[name])
    elif mutation == "missing" and names:
        del frame[draw(st.sampled_from(names))]
    elif mutation == "extra":
        key = draw(st.text(max_size=12).filter(lambda k: k not in required | optional | {"type"}))
        frame[key] = draw(JSON)
    elif mutation == "surrogate":
        texty = [
            n for n in ("content", "client_id", "call_id", "error", "reason") if n in required | optional
        ]
        if texty:
            frame[draw(st.sampled_from(texty))] = draw(SURROGATE_TEXT)
    return frame


def _dumps(obj: Any, ascii_only: bool) -> str:
    text = json.dumps(obj, ensure_ascii=ascii_only)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates go as \ud800 escapes
        text = json.dumps(obj)
    return text


@dataclass(frozen=True)
class WsCase:
    label: str
    payload: str | bytes

    def __repr__(self) -> str:
        shown = self.payload if len(self.payload) <= 300 else self.payload[:300]
        return f"WsCase({self.label}, {len(self.payload)} {'bytes' if isinstance(self.payload, bytes) else 'chars'}: {shown!r})"


def _nested(depth: int, kind: str) -> str:
    if kind == "list":
        return "[" * depth + "]" * depth
    return '{"a":' * depth + "1" + "}" * depth


def ws_cases(turn_ids: list[int], conflict_client_id: str) -> st.SearchStrategy[WsCase]:
    text_json = st.builds(lambda v, a: WsCase("json-value", _dumps(v, a)), JSON, st.booleans())
    random_keys = st.builds(
        lambda d, t, a: WsCase("random-keys", _dumps({**d, **t}, a)),
        st.dictionaries(st.text(max_size=10), JSON, max_size=6),
        st.sampled_from(
            [
                {},
                {"type": "send"},
                {"type": "cancel"},
                {"type": "sync"},
                {"type": "ping"},
                {"type": "tool_result"},
                {"type": None},
                {"type": "SEND"},
                {"type": " ping"},
                {"type": ["ping"]},
                {"type": 1},
            ]
        ),
        st.booleans(),
    )
    typed = st.builds(lambda f, a: WsCase("typed-frame", _dumps(f, a)), typed_frames(turn_ids), st.booleans())
    raw_text = st.builds(lambda t: WsCase("raw-text", t), st.text(max_size=200))
    raw_json_ish = st.builds(
        lambda t: WsCase("jsonish", t),
        st.sampled_from(
            [
                "",
                " ",
                "null",
                "[]",
                "{}",
                "{",
                "}",
                '{"type":"ping"',
                '{"type":"ping"}}',
                '{"type":"ping"} x',
                '\ufeff{"type":"ping"}',
                '{"type":"ping","type":"nope"}',
                '{"type":"nope","type":"ping"}',
                '{"type":NaN}',
                '{"type":"sync","since":NaN}',
                '{"type":"sync","since":Infinity}',
                '{"type":"sync","since":-Infinity}',
                '{"type":"sync","since":1e400}',
                '{"type":"sync","since":1E2}',
                '{"type":"cancel","turn_id":1' + "0" * 5000 + "}",
                '{"type":"cancel","turn_id":-0}',
                '{"type":"\\u0000ping"}',
                '{"type":"ping\\u0000"}',
                '{"\\ud800":1,"type":"ping"}',
                '{"type":"\\ud800"}',
                '"\\ud800"',
                '{"type":"send","client_id":"\\udfff","content":1}',
                "\x00",
                "\ud7ff",
                "1" * 5000,
            ]
        ),
    )
    binary = st.builds(lambda b: WsCase("binary", b), st.binary(max_size=300))
    binary_json = st.builds(
        lambda t: WsCase("binary-json", t.encode()),
        st.sampled_from(
            ['{"type":"ping"}', '{"type":"send","client_id":"%s","content":"hi"}' % uuid.UUID(int=7)]
        ),
    )
    bad_utf8 = st.builds(
        lambda prefix, junk: WsCase("binary-bad-utf8", prefix + junk),
        st.sampled_from([b"", b'{"type":"ping","x":"', b'{"type":"send","content":"']),
        st.sampled_from(
            [b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x80\x80", b"\xfe\xfe"]
        ),
    )

    def huge_frame(n: int, kind: str) -> WsCase:
        cid = str(uuid.UUID(int=n))
        if kind == "send":
            return WsCase("huge", json.dumps({"type": "send", "client_id": cid, "content": "x" * n}))
        if kind == "wide":  # few characters, many UTF-8 bytes
            return WsCase(
                "huge",
                json.dumps({"type": "send", "client_id": cid, "content": "€" * (n // 3)}, ensure_ascii=False),
            )
        if kind == "escaped":
            return WsCase("huge", json.dumps({"type": "ping", "pad": "\u20ac" * (n // 6)}))
        return WsCase("huge", "x" * n)

    huge = st.builds(
        huge_frame,
        st.sampled_from(
            [
                _max_frame() - 100,
                _max_frame() - 40,
                _max_frame() + 1,
                _max_frame() + 1000,
                200_000,
                600_000,
                1_000_000,
            ]
        ),
        st.sampled_from(["send", "junk", "wide", "escaped"]),
    )
    nested = st.builds(
        lambda depth, kind, wrap: WsCase(
            f"nested-{depth}",
            ('{"type":"tool_result","call_id":"c","output":%s}' % _nested(depth, kind))
            if wrap
            else _nested(depth, kind),
        ),
        st.sampled_from([10, 63, 65, 100, 500, 900, 1000, 1100, 5000, 10_000, 30_000]),
        st.sampled_from(["list", "dict"]),
        st.booleans(),
    )
    turn_frames = st.builds(
        lambda kind, tid, extra: WsCase("turn-id", json.dumps({"type": kind, "turn_id": tid, **extra})),
        st.sampled_from(["cancel", "retry"]),
        st.sampled_from(turn_ids) if turn_ids else st.integers(min_value=1),
        st.sampled_from([{}, {}, {}, {"x": 1}]),
    )
    sync_frames = st.builds(
        lambda since: WsCase("sync", json.dumps({"type": "sync", "since": since})),
        st.sampled_from([0, 1, 2**31, 2**53 + 1, 2**62, 2**62 + 1, 2**63, 2**64, 10**30, -1, -(2**63)])
        | st.integers(),
    )
    tool_results = st.builds(
        lambda call_id, extra: WsCase(
            "tool-result", _dumps({"type": "tool_result", "call_id": call_id, **extra}, True)
        ),
        GOOD_CALL_ID | BAD_CALL_ID | SURROGATE_TEXT,
        st.fixed_dictionaries(
            {}, optional={"output": JSON, "error": st.none() | st.text(max_size=20) | BAD_ERROR}
        ),
    )
    conflict = st.builds(
        lambda content, form: WsCase(
            "conflict",
            json.dumps({"type": "send", "client_id": form(conflict_client_id), "content": content}),
        ),
        GOOD_CONTENT,
        st.sampled_from([str, str.upper, lambda c: "{" + c + "}", lambda c: c.replace("-", "")]),
    )
    surrogates = st.builds(
        lambda kind, s, u: WsCase(
            "surrogate",
            json.dumps(
                {
                    "send": {"type": "send", "client_id": str(u), "content": "hi " + s},
                    "client_id": {"type": "send", "client_id": s, "content": "hi"},
                    "turn_id": {"type": "cancel", "turn_id": s},
                    "call_id": {"type": "tool_result", "call_id": s},
                    "type": {"type": s},
                }[kind]
            ),
        ),
        st.sampled_from(["send", "client_id", "turn_id", "call_id", "type"]),
        SURROGATE_TEXT,
        st.uuids(),
    )
    return st.one_of(
        text_json,
        random_keys,
        typed,
        typed,
        typed,
        raw_text,
        raw_json_ish,
        binary,
        binary_json,
        bad_utf8,
        huge,
        nested,
        turn_frames,
        sync_frames,
        tool_results,
        conflict,
        surrogates,
    )


# --- helpers: row counts, the Daphne log, the socket ------------------------------------------


def ws_row_counts() -> tuple[int, ...]:
    tables = [m._meta.db_table for m in (Message, RoomEvent, Turn, StreamChunk)]
    sql = "SELECT " + ", ".join(f"(SELECT count(*) FROM {t})" for t in tables)
    with connection.cursor() as cursor:
        cursor.execute(sql)
        return tuple(cursor.fetchone())


class DaphneLog:
    """New lines of the web process's log since the last look."""

    def __init__(self, stack: Any) -> None:
        self.path = stack.logdir / "web.log"
        self.offset = self.path.stat().st_size if self.path.exists() else 0

    def new(self) -> str:
        if not self.path.exists():
            return ""
        with self.path.open("rb") as f:
            f.seek(self.offset)
            data = f.read()
        self.offset += len(data)
        return data.decode("utf-8", "replace")

    def problems(self) -> str:
        text = self.new()
        return _traceback_gist(text) if any(marker in text for marker in TRACEBACK_MARKERS) else ""


def _traceback_gist(text: str) -> str:
    """The lines of a logged traceback that matter: the project's frames and the exceptions."""
    lines = text.splitlines()
    keep = []
    for i, line in enumerate(lines):
        if line.startswith(
            ("Exception inside application", "Internal Server Error", "ValueError")
        ) or re.match(r"^\s*[\w.]+(Error|Exception)\b", line):
            keep.append(line.strip())
        elif line.strip().startswith(f'File "{PROJECT}') and "/.venv/" not in line:
            keep.append(line.strip() + (" :: " + lines[i + 1].strip() if i + 1 < len(lines) else ""))
    return "\n".join(dict.fromkeys(keep)) or text[-2000:]


@dataclass
class Outcome:
    frames: list[dict[str, Any]]
    pong: dict[str, Any] | None = None
    closed: int | None = None
    closed_reason: str = ""
    timed_out: bool = False
    non_json: list[Any] = field(default_factory=list)
    stale: list[dict[str, Any]] = field(default_factory=list)  # answers that came after a pong


class FuzzSocket:
    """One token socket, reused across examples; reopened only if the server closed it."""

    def __init__(self, stack: Any, slug: str, token: str) -> None:
        self.url = stack.base_url.replace("http://", "ws://") + f"/ws/rooms/{slug}/"
        self.headers = {"Authorization": f"Bearer {token}"}
        self.ws: Any = None
        self.opened = 0
        self.last_at = 0.0
        self.counts: tuple[int, ...] | None = None

    def open(self) -> None:
        self.ws = ws_connect(
            self.url,
            additional_headers=self.headers,
            max_size=None,
            open_timeout=10,
            compression=None,
            legacy=True,
        )
        self.opened += 1
        deadline = time.monotonic() + 10
        while json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic()))).get("type") != "ready":
            pass

    def close(self) -> None:
        if self.ws is not None:
            self.ws.close()
            self.ws = None

    def exchange(self, payload: str | bytes, pongs: int = 1, timeout: float = 15.0) -> Outcome:
        """Send `payload`, then a ping; collect every frame until the pong (the `pongs`th one,
        when the payload is itself a ping)."""
        if self.ws is None:
            self.open()
        # Stay under the per-socket frame rate (RATE_FRAMES_PER_SECOND=200 in tests/stack.py).
        wait = self.last_at + 0.012 - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        self.last_at = time.monotonic()
        out = Outcome(frames=[])
        try:
            while True:  # anything left over from the previous case?
                try:
                    stale = json.loads(self.ws.recv(timeout=0))
                except TimeoutError:
                    break
                if stale.get("type") in ("error", "ack", "pong"):
                    out.stale.append(stale)
            self.ws.send(payload)
            self.ws.send('{"type":"ping"}')
            deadline = time.monotonic() + timeout
            while True:
                raw = self.ws.recv(timeout=max(0.05, deadline - time.monotonic()))
                try:
                    frame = json.loads(raw)
                except ValueError:
                    out.non_json.append(raw)
                    continue
                if frame.get("type") == "pong":
                    pongs -= 1
                    if pongs <= 0:
                        out.pong = frame
                        return out
                out.frames.append(frame)
        except ConnectionClosed as exc:
            out.closed = exc.rcvd.code if exc.rcvd else -1
            out.closed_reason = exc.rcvd.reason if exc.rcvd else "no close frame"
            self.ws = None
        except TimeoutError:
            out.timed_out = True
            self.close()
        return out


def _is_valid_ping(obj: Any, expected: set[str]) -> bool:
    return isinstance(obj, dict) and obj.get("type") == "ping" and OK in expected


def _answers(out: Outcome) -> list[dict[str, Any]]:
    """The frames that answer the fuzzed frame (room events and ephemera are not answers)."""
    return [f for f in out.frames if f.get("type") in ("error", "ack")]


def known_ws_bug(payload: str | bytes) -> str | None:
    """Known bug: a lone surrogate (a `\\ud800` escape) the server stores or echoes back (content,
    client_id/turn_id/call_id as `ref`, an extra key's name in `detail`) crashes the consumer."""
    if isinstance(payload, bytes) or len(payload) > _max_frame():
        return None
    try:
        obj = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    if isinstance(obj, dict) and any(
        _has_surrogate(key) or (key != "output" and _has_surrogate(value)) for key, value in obj.items()
    ):
        return "ws-surrogate"
    return None


def _fresh_client_id(payload: str | bytes, ctx: RoomContext) -> str | bytes:
    """Give a `send` a client_id of its own (except the conflict tests' one), so that replaying an
    example does not meet the message it stored the first time (which would answer `conflict`)."""
    if isinstance(payload, bytes) or '"client_id"' not in payload or len(payload) > _max_frame():
        return payload
    try:
        obj = json.loads(payload)
    except (ValueError, RecursionError):
        return payload
    cid = obj.get("client_id") if isinstance(obj, dict) else None
    if not _is_uuid_text(cid) or uuid.UUID(cid) == uuid.UUID(ctx.conflict_client_id):
        return payload
    return payload.replace(json.dumps(cid), json.dumps(str(uuid.uuid4())), 1)


def check_ws_case(case: WsCase, sock: FuzzSocket, log: DaphneLog, ctx: RoomContext) -> None:
    """Send one case; assert the answer is typed and allowed, nothing was stored, the socket lives."""
    case = WsCase(case.label, _fresh_client_id(case.payload, ctx))
    if isinstance(case.payload, bytes):
        expected, obj = {"bad_json"}, None
    else:
        expected = expected_for_text(case.payload, ctx)
        try:
            obj = json.loads(case.payload) if len(case.payload) <= _max_frame() else None
        except (ValueError, RecursionError):
            obj = None
    for _attempt in range(5):
        before = sock.counts if sock.counts is not None else ws_row_counts()
        out = sock.exchange(case.payload, pongs=2 if _is_valid_ping(obj, expected) else 1)
        after = sock.counts = ws_row_counts()  # only this socket writes: the next case's "before"
        errors = [f for f in out.frames if f.get("type") == "error"]
        limited = [e for e in errors if e.get("code") == "rate_limited"]
        if not limited:
            break
        assert before == after, f"rows written for a rate-limited frame: {case!r}"
        time.sleep(max(float(limited[0].get("retry_after") or 0.1), 0.05) + 0.05)
    CASES[f"ws:{case.label.split('-')[0]}"] += 1
    CASES["ws"] += 1
    problems = log.problems()
    closed = f"; the socket was closed ({out.closed} {out.closed_reason!r})" if out.closed is not None else ""
    assert not problems, f"Daphne logged an error for {case!r}{closed}:\n{problems}"
    assert out.closed is None, f"socket closed ({out.closed} {out.closed_reason!r}) on {case!r}"
    assert not out.timed_out, f"no pong within 15 s after {case!r}; got {out.frames[-5:]}"
    assert not out.stale, f"answers arrived after the pong of the previous case: {out.stale}"
    assert not out.non_json, f"non-JSON server frame after {case!r}: {out.non_json[:2]!r}"
    answers = _answers(out)
    assert len(answers) <= 1, f"{len(answers)} answers to one frame {case!r}: {answers}"
    for e in errors:
        assert set(e) <= {"type", "code", "detail", "ref", "retry_after"}, f"odd error frame {e}"
        assert e.get("code") in ALLOWED_CODES, f"undocumented error code {e} for {case!r}"
        assert isinstance(e.get("detail"), str), f"error without a detail {e}"
    got = errors[0]["code"] if errors else OK
    assert got in expected, (
        f"answered {got!r} (frames {out.frames[:3]}), expected one of {sorted(expected)} for {case!r}"
    )
    if errors:
        assert after == before, f"rows written for rejected frame {case!r}: {before} -> {after}"
        if got not in ("too_large", "bad_json", "unsupported"):
            want = expected_ref(obj)
            if want is not None:
                assert _same_ref(want, errors[0].get("ref")), (
                    f"ref {errors[0].get('ref')!r} != {want!r} for {case!r}"
                )
    elif isinstance(obj, dict) and obj.get("type") == "send":
        acks = [f for f in out.frames if f.get("type") == "ack"]
        assert acks and _same_ref(obj["client_id"], acks[0]["client_id"]), (
            f"no ack for valid {case!r}: {out.frames}"
        )
        key = uuid.UUID(obj["client_id"])
        ctx.sent[key] = obj["content"]
        message_id = ctx.acked.setdefault(key, acks[0]["message_id"])
        assert acks[0]["message_id"] == message_id, f"a repeated send stored a second message: {case!r}"
    elif isinstance(obj, dict) and obj.get("type") == "sync":
        readies = [f for f in out.frames if f.get("type") == "ready"]
        assert readies, f"sync without ready {case!r}: {out.frames[-3:]}"
        want_seq = max(obj["since"], out.pong["latest_seq"] if out.pong else 0)
        assert readies[-1]["seq"] == want_seq, f"ready {readies[-1]} after {case!r}, expected seq {want_seq}"
        assert after == before, f"sync wrote rows {case!r}"
    else:
        assert after == before, f"rows written for {case!r}: {before} -> {after}"
    assert out.pong is not None and isinstance(out.pong.get("latest_seq"), int)


# --- fixtures --------------------------------------------------------------------------------


def _frozen_turn(room: Room, author: Any, status: str) -> Turn:
    """A turn no worker will touch: a `running` one holds the room's lease for an hour, so the
    room's queued turns stay queued (the sweep only kicks rooms with nothing running)."""
    with transaction.atomic():
        seq = seq_reserve_locked(room_id=room.pk, count=1)
        trigger = Message.objects.create(
            room=room,
            seq=seq,
            role="user",
            author=author,
            content=f"fixture {status}",
            client_id=uuid.uuid4(),
        )
        extra: dict[str, Any] = {}
        if status == "running":
            extra = dict(
                lease_owner="fuzz-fixture",
                lease_until=timezone.now() + timedelta(hours=1),
                started_at=timezone.now(),
                attempt=1,
                lease_generation=1,
            )
        if status in ("done", "cancelled"):
            extra = dict(finished_at=timezone.now(), attempt=1)
        return Turn.objects.create(room=room, queue_seq=seq, trigger_message=trigger, status=status, **extra)


def _quick_user(name: str) -> tuple[Any, str]:
    """Like conftest's make_user, without hashing a password (about 0.5 s a user)."""
    user = get_user_model()(username=f"{name.lower()}-{uuid.uuid4().hex[:6]}", first_name=name)
    user.set_unusable_password()
    user.save()
    _, raw = token_create(user=user, name="test")
    return user, raw


@pytest.fixture
def alice() -> tuple[Any, str]:  # overrides conftest's, faster
    return _quick_user("Alice")


@pytest.fixture
def bob() -> tuple[Any, str]:  # overrides conftest's, faster
    return _quick_user("Bob")


@pytest.fixture
def fuzz_room(stack: Any, alice: tuple[Any, str], bob: tuple[Any, str]) -> Any:
    """Alice's public room with the AI off (so accidental sends start no turn), Alice's turns
    Bob may not touch, Bob's own turns, and Alice's private room Bob is not in."""
    room = room_create(owner=alice[0], title="Fuzz room", ai_enabled=False)
    Membership.objects.create(room=room, user=bob[0])
    running = _frozen_turn(room, alice[0], "running")
    queued = _frozen_turn(room, alice[0], "queued")
    done = _frozen_turn(room, alice[0], "done")
    # Bob's own turns have ended: cancelling one is an accepted no-op, retrying one a conflict
    # (a frame that changes a turn writes its event, which the model's row counts do not expect)
    bobs = {t.pk: t.status for t in (_frozen_turn(room, bob[0], s) for s in ("done", "cancelled"))}
    private = room_create(owner=alice[0], title="Private", visibility="private", ai_enabled=False)
    _frozen_turn(private, alice[0], "running")
    other_queued = _frozen_turn(private, alice[0], "queued")
    other_done = _frozen_turn(private, alice[0], "done")
    ctx = RoomContext(
        own_turns=bobs,
        foreign_turns={running.pk: "running", queued.pk: "queued", done.pk: "done"},
        other_room_turns={other_queued.pk, other_done.pk},
        conflict_client_id=str(uuid.uuid4()),
        conflict_content="the original text",
    )
    yield room, private, ctx
    Turn.objects.filter(room__in=[room, private]).update(status="cancelled")  # nothing left running


@pytest.fixture(scope="module", autouse=True)
def _summary(request: Any) -> Any:
    yield
    ws = CASES["ws"]
    http = CASES["http"]
    rooms = CASES["ws-connect"]
    line = (
        f"fuzz: {ws} websocket cases, {rooms} websocket connects to bad rooms, {http} http cases"
        f" ({ws + rooms + http} in total); by kind: "
        + ", ".join(f"{k}={v}" for k, v in sorted(CASES.items()) if ":" in k)
    )
    capture = request.config.pluginmanager.getplugin("capturemanager")
    if capture is not None:  # shown with or without -s (what capsys.disabled() does)
        with capture.global_and_fixture_disabled():
            print("\n" + line)
    else:
        print("\n" + line)


# --- 1. the WebSocket protocol ---------------------------------------------------------------


def test_websocket_fuzz_every_frame_gets_a_typed_answer_and_rejected_frames_store_nothing(
    stack: Any, fuzz_room: Any, bob: tuple[Any, str]
) -> None:
    room, _private, ctx = fuzz_room
    log = DaphneLog(stack)
    sock = FuzzSocket(stack, room.slug, bob[1])
    turn_ids = (
        sorted(ctx.own_turns) + sorted(ctx.foreign_turns) + sorted(ctx.other_room_turns) + [2**62, 10**9]
    )
    start = CASES["ws"]
    try:
        seed = WsCase(
            "seed",
            json.dumps(
                {"type": "send", "client_id": ctx.conflict_client_id, "content": ctx.conflict_content}
            ),
        )
        check_ws_case(seed, sock, log, ctx)

        @settings(FUZZ, max_examples=WS_EXAMPLES)
        @given(case=ws_cases(turn_ids, ctx.conflict_client_id))
        def fuzz(case: WsCase) -> None:
            assume(not (SKIP_KNOWN and known_ws_bug(case.payload)))
            check_ws_case(case, sock, log, ctx)

        fuzz()
    finally:
        sock.close()
    ran = CASES["ws"] - start
    assert ran >= WS_EXAMPLES // 2, f"fuzz: only {ran} websocket cases ran"
    assert sock.opened == 1, (
        f"fuzz: {ran} websocket cases, but the socket was reopened {sock.opened - 1} times"
    )


# The cases the brief names, each sent once whatever hypothesis draws (a fixed corpus).
def _corpus(ctx: RoomContext, own_ids: list[int]) -> list[WsCase]:
    queued = next(t for t, s in ctx.foreign_turns.items() if s == "queued")
    cases = [
        WsCase(
            "seed-again",
            json.dumps(
                {"type": "send", "client_id": ctx.conflict_client_id, "content": ctx.conflict_content}
            ),
        ),  # idempotent: same ack
        WsCase(
            "conflict",
            json.dumps(
                {"type": "send", "client_id": ctx.conflict_client_id.upper(), "content": "other text"}
            ),
        ),
        WsCase(
            "huge-64k+1",
            json.dumps({"type": "send", "client_id": str(uuid.uuid4()), "content": "x" * _max_frame()}),
        ),
        WsCase("huge-junk", "y" * (_max_frame() + 1)),
        WsCase("huge-binary", b"\x00" * (_max_frame() + 1)),
        WsCase("nested-10000-list", _nested(10_000, "list")),
        WsCase("nested-10000-dict", _nested(10_000, "dict")),
        WsCase(
            "nested-10000-in-frame",
            '{"type":"tool_result","call_id":"c","output":%s}' % _nested(10_000, "list"),
        ),
        WsCase("binary-bad-utf8", b"\xff\xfe\xfd"),
        WsCase("binary-json", b'{"type":"ping"}'),
        WsCase("surrogate-content", '{"type":"send","client_id":"%s","content":"hi \\ud800"}' % uuid.uuid4()),
        WsCase("surrogate-client-id", '{"type":"send","client_id":"\\ud800","content":"hi"}'),
        WsCase("surrogate-type", '{"type":"\\ud800"}'),
        WsCase("surrogate-turn-id", '{"type":"cancel","turn_id":"\\ud800"}'),
        WsCase("surrogate-call-id", '{"type":"tool_result","call_id":"\\ud800"}'),
        WsCase("surrogate-key", '{"type":"ping","\\udfff":1}'),
        WsCase("forbidden-queued", json.dumps({"type": "cancel", "turn_id": queued})),
        WsCase("sync-huge", json.dumps({"type": "sync", "since": 10**30})),
        WsCase("sync-max", json.dumps({"type": "sync", "since": 2**62})),
        WsCase("sync-negative", json.dumps({"type": "sync", "since": -1})),
        WsCase("sync-zero", json.dumps({"type": "sync", "since": 0})),
        WsCase("tool-result", json.dumps({"type": "tool_result", "call_id": "call_123", "output": {"x": 1}})),
        WsCase(
            "tool-result-random",
            json.dumps({"type": "tool_result", "call_id": uuid.uuid4().hex, "error": "no"}),
        ),
        WsCase("tool-result-long-id", json.dumps({"type": "tool_result", "call_id": "c" * 101})),
        WsCase("random-bytes", bytes(range(256))),
        WsCase("empty-text", ""),
        WsCase("empty-binary", b""),
    ]
    for turn_id in sorted(ctx.other_room_turns):
        cases.append(WsCase("other-room-cancel", json.dumps({"type": "cancel", "turn_id": turn_id})))
        cases.append(WsCase("other-room-retry", json.dumps({"type": "retry", "turn_id": turn_id})))
    for turn_id in own_ids:
        cases.append(WsCase("own-retry", json.dumps({"type": "retry", "turn_id": turn_id})))
    return cases


def test_websocket_corpus_of_named_cases(stack: Any, fuzz_room: Any, bob: tuple[Any, str]) -> None:
    room, _private, ctx = fuzz_room
    log = DaphneLog(stack)
    sock = FuzzSocket(stack, room.slug, bob[1])
    check_ws_case(
        WsCase(
            "seed",
            json.dumps(
                {"type": "send", "client_id": ctx.conflict_client_id, "content": ctx.conflict_content}
            ),
        ),
        sock,
        log,
        ctx,
    )
    failures: list[str] = []
    cases = _corpus(ctx, sorted(t for t, s in ctx.own_turns.items() if s != "running"))
    try:
        for case in cases:
            try:
                check_ws_case(case, sock, log, ctx)
            except AssertionError as exc:
                failures.append(str(exc)[:3000])
    finally:
        sock.close()
    assert not failures, f"fuzz: {len(failures)} of {len(cases)} corpus cases failed:\n" + "\n---\n".join(
        failures
    )


def test_websocket_protocol_level_garbage_is_refused_cleanly(
    stack: Any, fuzz_room: Any, bob: tuple[Any, str]
) -> None:
    """Invalid UTF-8 in a *text* frame and a frame over Daphne's 1 MiB message limit can only be
    refused by closing (1007 / 1009): the close must be clean and Daphne must log no traceback."""
    room, _private, ctx = fuzz_room
    log = DaphneLog(stack)
    cases = [
        ("text-bad-utf8", b'{"type":"ping","x":"\xff"}', True, {1007, None}),
        ("text-bad-utf8-surrogate", b'{"type":"ping","x":"\xed\xa0\x80"}', True, {1007, None}),
        ("over-1mib", "z" * (1 << 20) + "z", None, {1009, None}),
        ("over-1mib-binary", b"z" * ((1 << 20) + 1), None, {1009, None}),
    ]
    for label, payload, text, codes in cases:
        before = ws_row_counts()
        ws = ws_connect(
            stack.base_url.replace("http://", "ws://") + f"/ws/rooms/{room.slug}/",
            additional_headers={"Authorization": f"Bearer {bob[1]}"},
            max_size=None,
            compression=None,
            legacy=True,
        )
        answer: Any = None
        try:
            while json.loads(ws.recv(timeout=10)).get("type") != "ready":
                pass
            ws.send(payload, text=text)
            ws.send('{"type":"ping"}')
            while True:
                frame = json.loads(ws.recv(timeout=10))
                if frame.get("type") in ("error", "pong"):
                    answer = frame
                    break
        except ConnectionClosed as exc:  # the server may drop us while we are still sending
            answer = exc.rcvd.code if exc.rcvd else None
        except OSError:  # connection reset mid-send
            answer = None
        finally:
            ws.close()
        CASES["ws:protocol"] += 1
        CASES["ws"] += 1
        assert answer in codes or (
            isinstance(answer, dict) and answer.get("code") in ("too_large", "bad_json")
        ), f"{label}: got {answer!r}"
        assert ws_row_counts() == before
        problems = log.problems()
        assert not problems, f"{label}: Daphne logged:\n{problems[-3000:]}"


SLUG_RE = re.compile(r"[-a-zA-Z0-9_]{1,64}")


def slugs() -> st.SearchStrategy[str]:
    return st.one_of(
        st.from_regex(r"[-a-zA-Z0-9_]{1,64}", fullmatch=True),
        st.text(max_size=80),
        st.text(alphabet="./%-_\\~a", max_size=30),
        st.integers(min_value=65, max_value=5000).map(lambda n: "a" * n),
        st.sampled_from(
            [
                "..",
                "../..",
                "../../etc/passwd",
                "..%2f..%2fetc%2fpasswd",
                "%2e%2e",
                "%2e%2e%2f%2e%2e",
                "a/../b",
                ".",
                "./",
                "~",
                "%00",
                "a%00b",
                "%ff",
                "%c0%ae%c0%ae",
                "room/extra",
                "room%2fextra",
                "%",
                "%%",
                "a" * 64,
                "a" * 65,
                "-",
                "_",
                "a b",
                "\u00e9",
                "\U0001f600",
                "CON",
                "null",
                "*",
                "?x=1",
                "#x",
            ]
        ),
    )


def test_websocket_unknown_rooms_close_4404_or_are_refused(
    stack: Any, fuzz_room: Any, bob: tuple[Any, str]
) -> None:
    room, private, _ctx = fuzz_room
    log = DaphneLog(stack)
    base = stack.base_url.replace("http://", "ws://") + "/ws/rooms/"
    known = {room.slug, private.slug}
    start = CASES["ws-connect"]

    @settings(FUZZ, max_examples=ROOM_EXAMPLES)
    @given(
        slug=slugs(),
        since=st.sampled_from(["", "?since=0", "?since=5", "?since=-1", "?since=x", "?since=" + "9" * 40]),
    )
    def fuzz(slug: str, since: str) -> None:
        assume(slug not in known)
        # Known bug: a path the route regex does not match is a 500 with a traceback, not a 4404.
        assume(not (SKIP_KNOWN and not SLUG_RE.fullmatch(slug)))
        path = quote(slug, safe="/%.~-_") if "%" in slug or "/" in slug else quote(slug, safe="")
        url = base + path + "/" + since
        before = Membership.objects.count(), Room.objects.count()
        outcome: Any
        try:
            ws = ws_connect(
                url, additional_headers={"Authorization": f"Bearer {bob[1]}"}, open_timeout=10, legacy=True
            )
        except InvalidURI:
            assume(False)
            return
        except InvalidStatus as exc:
            outcome = ("refused", exc.response.status_code)
        else:
            try:
                frame = ws.recv(timeout=10)
                outcome = ("accepted", frame)
            except ConnectionClosed as exc:
                outcome = ("closed", exc.rcvd.code if exc.rcvd else None)
            finally:
                ws.close()
        CASES["ws-connect"] += 1
        CASES["ws-connect:" + outcome[0]] += 1
        problems = log.problems()
        assert not problems, f"connect to {url!r} ({outcome}): Daphne logged an error:\n{problems[-4000:]}"
        if outcome[0] == "refused":
            assert 400 <= outcome[1] < 500, f"connect to {url!r} refused with HTTP {outcome[1]}"
        else:
            assert outcome[0] == "closed" and outcome[1] in (4404, 4400), f"connect to {url!r}: {outcome}"
        assert (Membership.objects.count(), Room.objects.count()) == before

    fuzz()
    ran = CASES["ws-connect"] - start
    assert ran >= ROOM_EXAMPLES // 3, f"fuzz: only {ran} websocket connects to unknown rooms ran"


# --- 2. HTTP forms ---------------------------------------------------------------------------


def http_row_counts() -> tuple[int, ...]:
    User = get_user_model()
    tables = [m._meta.db_table for m in (User, Room, Membership, Message, RoomEvent, Turn, ApiToken)]
    sql = "SELECT " + ", ".join(f"(SELECT count(*) FROM {t})" for t in tables)
    sql += f", (SELECT count(*) FROM {ApiToken._meta.db_table} WHERE revoked_at IS NOT NULL)"
    with connection.cursor() as cursor:
        cursor.execute(sql)
        return tuple(cursor.fetchone())


def browser(user: Any = None, path: str = "/") -> tuple[Client, str]:
    """A test client that enforces CSRF, with the csrftoken cookie a page would give it."""
    client = Client(enforce_csrf_checks=True, raise_request_exception=False)
    if user is not None:
        client.force_login(user)
    response = client.get(path)
    assert response.status_code == 200, (path, response.status_code)
    return client, client.cookies["csrftoken"].value


FIELD_VALUE = st.one_of(
    st.text(max_size=60),
    st.text(max_size=60).map(lambda s: s + "\x00"),
    st.sampled_from(
        [
            "",
            " ",
            "\x00",
            "on",
            "true",
            "1",
            "public",
            "private",
            "every",
            "mention",
            "\ufeff",
            "\ud7ff",
            "<script>alert(1)</script>",
            "' OR 1=1 --",
            "{{ 7*7 }}",
            "%s%s%n",
        ]
    ),
    st.integers(min_value=100, max_value=3000).map(lambda n: "t" * n),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.lists(st.text(max_size=10), min_size=2, max_size=3),  # a repeated field
    st.builds(lambda b: SimpleUploadedFile("x.bin", b), st.binary(max_size=100)),  # a file, not text
)
HUGE = st.sampled_from([70_000, 300_000, 3_000_000]).map(lambda n: "h" * n)  # 3 MB > DATA_UPLOAD_MAX


@st.composite
def form_posts(draw: Any, fields: dict[str, st.SearchStrategy[Any]]) -> dict[str, Any]:
    """A form post: some of the form's fields (random or valid values), maybe extra ones."""
    data: dict[str, Any] = {}
    for name, good in fields.items():
        choice = draw(st.sampled_from(["good", "good", "random", "missing", "huge", "nul"]))
        if choice == "good":
            data[name] = draw(good)
        elif choice == "random":
            data[name] = draw(FIELD_VALUE)
        elif choice == "huge":
            data[name] = draw(HUGE)
        elif choice == "nul":
            data[name] = draw(good) + "\x00"
    data.update(
        draw(
            st.dictionaries(
                st.text(min_size=1, max_size=10).filter(lambda k: k not in fields), FIELD_VALUE, max_size=3
            )
        )
    )
    return data


@dataclass(frozen=True)
class RawBody:
    """A body sent as is (non-UTF-8, bad encodings, wrong content types)."""

    body: bytes
    content_type: str


def raw_bodies(fields: list[str]) -> st.SearchStrategy[RawBody]:
    def urlencoded(parts: list[tuple[str, bytes]]) -> bytes:
        return b"&".join(name.encode() + b"=" + value for name, value in parts)

    junk = st.sampled_from(
        [b"\xff\xfe", b"%ff%fe", b"%00", b"\xc3\x28", b"%ED%A0%80", b"a%", b"%zz", b"x" * 100, b"%e2%82"]
    )
    return st.one_of(
        st.builds(
            lambda parts: RawBody(urlencoded(parts), "application/x-www-form-urlencoded"),
            st.lists(st.tuples(st.sampled_from(fields), junk), min_size=1, max_size=4),
        ),
        st.builds(lambda b: RawBody(b, "application/x-www-form-urlencoded"), st.binary(max_size=200)),
        st.builds(
            lambda b, ct: RawBody(b, ct),
            st.binary(max_size=200),
            st.sampled_from(
                [
                    "application/json",
                    "multipart/form-data",
                    "multipart/form-data; boundary=x",
                    "text/plain",
                    "application/x-www-form-urlencoded; charset=latin-1",
                    "application/x-www-form-urlencoded; charset=nope",
                ]
            ),
        ),
        st.just(RawBody(b"&".join([b"a=1"] * 1500), "application/x-www-form-urlencoded")),  # > 1000 fields
    )


def known_http_bug(payload: Any, next_: str = "") -> str | None:
    """Known bugs: Django 5.2's 400 handler re-reads a urlencoded body with a non-UTF-8 charset and
    the exception escapes (a 500); /guest/?next= is passed to redirect() unchecked."""
    if isinstance(payload, RawBody) and payload.content_type.startswith("application/x-www-form-urlencoded"):
        charset = payload.content_type.partition("charset=")[2]
        if charset and charset.lower() != "utf-8":
            return "django-charset"
    if next_ in ("?next=nope", "?next=javascript:alert(1)", "?next=%00"):
        return "guest-next-500"
    if next_ in ("?next=https://evil.example/", "?next=//evil.example"):
        return "guest-open-redirect"
    return None


def http_post(client: Client, token: str, path: str, payload: Any) -> Any:
    headers = {"X-CSRFToken": token}
    if isinstance(payload, RawBody):  # the bytes as they are: no re-encoding by the test client
        return client.generic(
            "POST", path, data=payload.body, content_type=payload.content_type, headers=headers
        )
    return client.post(path, data=payload, headers=headers)


def check_http(label: str, call: Any, payload: Any) -> Any:
    """Run one request: a 5xx (or an exception escaping Django) is a bug."""
    CASES["http"] += 1
    CASES[f"http:{label}"] += 1
    tracebacks: list[str] = []

    def grab(sender: Any, request: Any = None, **kwargs: Any) -> None:
        tracebacks.append(traceback.format_exc())

    got_request_exception.connect(grab, weak=False)
    try:
        response = call()
    except Exception:
        pytest.fail(f"{label}: exception for {payload!r:.600}:\n{traceback.format_exc()[-3000:]}")
    finally:
        got_request_exception.disconnect(grab)
    assert response.status_code < 500, f"{label}: HTTP {response.status_code} for {payload!r:.600}:\n" + (
        tracebacks[0][:1500] + "\n...\n" + tracebacks[-1][-1500:] if tracebacks else ""
    )
    return response


def _errors_in(response: Any) -> list[str]:
    """Error messages added by this request (older ones may wait in the messages cookie)."""
    storage = get_messages(response.wsgi_request)
    return [str(m) for m in getattr(storage, "_queued_messages", []) if m.level_tag == "error"]


def _short(payload: Any) -> str:
    return repr(payload)[:600]


def test_http_room_create_fuzz(alice: tuple[Any, str]) -> None:
    client, token = browser(alice[0])
    fields = {
        "title": st.text(min_size=1, max_size=120).filter(str.strip),
        "visibility": st.sampled_from(["public", "private"]),
        "ai_enabled": st.sampled_from(["on", "true", ""]),
        # the server's list (LLM_MODELS) or anything else, which must be refused
        "ai_model": st.sampled_from(["", django_settings.LLM_MODEL]) | st.text(max_size=40),
        "system_prompt": st.text(max_size=200),
        "ai_trigger": st.sampled_from(["every", "mention"]),
    }

    @settings(FUZZ, max_examples=HTTP_EXAMPLES)
    @given(payload=form_posts(fields) | raw_bodies(list(fields)))
    def fuzz(payload: Any) -> None:
        assume(not (SKIP_KNOWN and known_http_bug(payload)))
        before = http_row_counts()
        response = check_http("room-create", lambda: http_post(client, token, "/", payload), payload)
        after = http_row_counts()
        if response.status_code == 302:
            assert re.fullmatch(r"/r/[-a-zA-Z0-9_]+/", response["Location"]), response["Location"]
            room = Room.objects.get(slug=response["Location"].split("/")[2])
            assert (
                room.owner_id == alice[0].pk and "\x00" not in room.title + room.ai_model + room.system_prompt
            )
            assert room.ai_model == "" or room.ai_model in django_settings.LLM_MODELS
            assert after[1] == before[1] + 1 and after[2] == before[2] + 1
        else:
            assert after == before, (
                f"room create rejected ({response.status_code}) but rows changed for {_short(payload)}"
            )
        text_fields = ("title", "ai_model", "system_prompt")
        if isinstance(payload, dict) and any("\x00" in str(payload.get(k, "")) for k in text_fields):
            assert response.status_code != 302, f"a NUL byte was accepted: {_short(payload)}"

    fuzz()
    assert CASES["http:room-create"] >= HTTP_EXAMPLES // 2, (
        f"fuzz: {CASES['http:room-create']} room-create cases"
    )


def test_http_room_post_fuzz(alice: tuple[Any, str], bob: tuple[Any, str]) -> None:
    room = room_create(owner=alice[0], title="Posts", ai_enabled=False)
    secret = room_create(owner=bob[0], title="Bob's secret", visibility="private", ai_enabled=False)
    client, token = browser(alice[0])
    fields = {
        "client_id": st.uuids().map(str),
        "content": st.text(min_size=1, max_size=200).filter(str.strip),
    }

    @settings(FUZZ, max_examples=HTTP_EXAMPLES)
    @given(
        payload=form_posts(fields) | raw_bodies(list(fields)),
        slug=st.sampled_from([room.slug, room.slug, room.slug, secret.slug, "no-such-room", "x" * 64]),
    )
    def fuzz(payload: Any, slug: str) -> None:
        assume(not (SKIP_KNOWN and known_http_bug(payload)))
        before = http_row_counts()
        path = f"/r/{slug}/post/"
        response = check_http("room-post", lambda: http_post(client, token, path, payload), (slug, payload))
        after = http_row_counts()
        if slug != room.slug:
            assert response.status_code in (400, 403, 404), f"{slug}: {response.status_code}"
            assert after == before, f"rows written by a refused post to {slug}: {_short(payload)}"
            return
        if response.status_code != 302:
            assert response.status_code in (400, 403), response.status_code
            assert after == before, f"rows changed for rejected post {_short(payload)}"
            return
        if _errors_in(response):
            assert after == before, f"rows changed for rejected post {_short(payload)}: {before} -> {after}"
        else:
            assert after[3] - before[3] in (0, 1), f"{_short(payload)}: {before} -> {after}"
        if isinstance(payload, dict) and "\x00" in str(payload.get("content", "")):
            assert after == before, f"a NUL byte was stored: {_short(payload)}"

    fuzz()
    assert CASES["http:room-post"] >= HTTP_EXAMPLES // 2, f"fuzz: {CASES['http:room-post']} room-post cases"


def test_http_token_create_and_revoke_fuzz(alice: tuple[Any, str], bob: tuple[Any, str]) -> None:
    client, token = browser(alice[0], "/tokens/")
    bobs = [token_create(user=bob[0], name=f"bob {i}")[0].pk for i in range(3)]
    bobs.append(ApiToken.objects.filter(user=bob[0]).order_by("pk").first().pk)

    @settings(FUZZ, max_examples=HTTP_EXAMPLES)
    @given(
        payload=form_posts({"name": st.text(min_size=1, max_size=80).filter(str.strip)})
        | raw_bodies(["name"])
    )
    def create(payload: Any) -> None:
        assume(not (SKIP_KNOWN and known_http_bug(payload)))
        before = http_row_counts()
        response = check_http("token-create", lambda: http_post(client, token, "/tokens/", payload), payload)
        after = http_row_counts()
        created = response.status_code == 200 and re.search(rb"rct_[A-Za-z0-9_-]{43}", response.content)
        if created:
            assert after[6] == before[6] + 1
        else:
            assert after == before, f"token create rejected but rows changed for {_short(payload)}"

    create()

    @settings(FUZZ, max_examples=HTTP_EXAMPLES)
    @given(
        token_id=st.sampled_from(bobs) | st.integers(min_value=0, max_value=10**30) | st.just(2**63),
        payload=st.just({}) | form_posts({"token_id": st.integers().map(str)}),
    )
    def revoke(token_id: int, payload: Any) -> None:
        bob_active = ApiToken.objects.filter(user=bob[0], revoked_at__isnull=True).count()
        before = http_row_counts()
        path = f"/tokens/{token_id}/revoke/"
        response = check_http(
            "token-revoke", lambda: http_post(client, token, path, payload), (token_id, payload)
        )
        assert response.status_code in (302, 400, 403, 404), response.status_code
        assert ApiToken.objects.filter(user=bob[0], revoked_at__isnull=True).count() == bob_active, (
            f"Alice revoked Bob's token {token_id}"
        )
        assert http_row_counts()[:7] == before[:7]

    revoke()
    assert CASES["http:token-revoke"] >= HTTP_EXAMPLES // 2


def test_http_guest_and_signup_fuzz() -> None:
    guest_fields = {"display_name": st.text(min_size=1, max_size=60).filter(str.strip)}
    nexts = st.sampled_from(
        [
            "",
            "",
            "?next=/",
            "?next=/tokens/",
            "?next=home",
            "?next=tokens",
            "?next=nope",
            "?next=https://evil.example/",
            "?next=//evil.example",
            "?next=javascript:alert(1)",
            "?next=%00",
            "?next=/%0d%0aSet-Cookie:x=1",
        ]
    )

    @settings(FUZZ, max_examples=HTTP_EXAMPLES)
    @given(payload=form_posts(guest_fields) | raw_bodies(["display_name"]), next_=nexts)
    def guest(payload: Any, next_: str) -> None:
        assume(not (SKIP_KNOWN and known_http_bug(payload, next_)))
        client, token = browser(None, "/guest/")
        before = http_row_counts()
        response = check_http(
            "guest", lambda: http_post(client, token, "/guest/" + next_, payload), (next_, payload)
        )
        after = http_row_counts()
        if response.status_code == 302:
            assert after[0] == before[0] + 1
            location = response["Location"]
            assert location.startswith("/") and not location.startswith("//"), (
                f"open redirect to {location!r}"
            )
        else:
            assert after == before, f"guest rejected but rows changed for {_short(payload)}"

    guest()

    password = "Correct-Horse-" + uuid.uuid4().hex[:8]
    signup_fields = {
        "username": st.from_regex(r"[a-z]{3,12}", fullmatch=True).map(lambda s: s + uuid.uuid4().hex[:4]),
        "display_name": st.text(max_size=60),
        "password1": st.just(password),
        "password2": st.just(password),
    }

    @settings(FUZZ, max_examples=HTTP_EXAMPLES // 2)
    @given(payload=form_posts(signup_fields) | raw_bodies(list(signup_fields)))
    def signup(payload: Any) -> None:
        assume(not (SKIP_KNOWN and known_http_bug(payload)))
        client, token = browser(None, "/signup/")
        before = http_row_counts()
        response = check_http("signup", lambda: http_post(client, token, "/signup/", payload), payload)
        after = http_row_counts()
        if response.status_code == 302:
            assert after[0] == before[0] + 1
        else:
            assert after == before, f"signup rejected but rows changed for {_short(payload)}"

    signup()
    assert CASES["http:guest"] >= HTTP_EXAMPLES // 2


def test_http_invite_links_fuzz(alice: tuple[Any, str], bob: tuple[Any, str]) -> None:
    private = room_create(owner=alice[0], title="Invite only", visibility="private", ai_enabled=False)
    client, token = browser(bob[0])

    @settings(FUZZ, max_examples=HTTP_EXAMPLES)
    @given(
        slug=st.sampled_from([private.slug, private.slug, "no-such-room", "a" * 80]),
        invite=st.one_of(
            st.text(min_size=1, max_size=80),
            st.sampled_from(
                [
                    "..",
                    "%00",
                    "%ff",
                    private.invite_token[:-1],
                    private.invite_token + "x",
                    private.invite_token.upper(),
                    " " + private.invite_token,
                    "x" * 5000,
                ]
            ),
        ),
        method=st.sampled_from(["get", "post"]),
    )
    def fuzz(slug: str, invite: str, method: str) -> None:
        assume(invite != private.invite_token)
        path = f"/r/{slug}/join/{quote(invite, safe='%')}/"
        before = http_row_counts()
        if method == "get":
            response = check_http("invite", lambda: client.get(path), path)
        else:
            response = check_http("invite", lambda: http_post(client, token, path, {}), path)
        assert response.status_code in (403, 404), f"{path!r:.300}: {response.status_code}"
        assert http_row_counts() == before, f"rows written for a wrong invite {path!r:.300}"
        assert not Membership.objects.filter(room=private, user=bob[0]).exists()

    fuzz()
    # The right token still works.
    response = client.get(f"/r/{private.slug}/join/{private.invite_token}/")
    assert response.status_code == 302 and Membership.objects.filter(room=private, user=bob[0]).exists()
    assert CASES["http:invite"] >= HTTP_EXAMPLES // 2, f"fuzz: {CASES['http:invite']} invite cases"


def test_websocket_corpus_of_bad_room_paths(stack: Any, bob: tuple[Any, str]) -> None:
    """Paths the route regex does not match: a 4404 close or a 4xx refusal, never a 500."""
    log = DaphneLog(stack)
    base = stack.base_url.replace("http://", "ws://") + "/ws/rooms/"
    failures = []
    for path in ["", "../../etc/passwd", "..%2f..%2fetc", "a" * 65, "room/extra", "%00", "no-such-room"]:
        url = base + path + "/"
        CASES["ws-connect"] += 1
        try:
            ws = ws_connect(
                url, additional_headers={"Authorization": f"Bearer {bob[1]}"}, open_timeout=10, legacy=True
            )
        except InvalidStatus as exc:
            outcome: Any = ("refused", exc.response.status_code)
        else:
            try:
                ws.recv(timeout=10)
                outcome = ("accepted", None)
            except ConnectionClosed as exc:
                outcome = ("closed", exc.rcvd.code if exc.rcvd else None)
            finally:
                ws.close()
        problems = log.problems()
        ok = (outcome[0] == "refused" and 400 <= outcome[1] < 500) or outcome == ("closed", 4404)
        if problems or not ok:
            tail = "\n".join(problems.strip().splitlines()[-3:])
            failures.append(f"{url}: {outcome}\n{tail}")
    assert not failures, f"fuzz: {len(failures)} bad room paths failed:\n" + "\n---\n".join(failures)


def test_http_corpus_of_named_cases(alice: tuple[Any, str]) -> None:
    """Malformed requests named in the brief, each sent once: never a 5xx, never an open redirect."""
    room = room_create(owner=alice[0], title="Corpus", ai_enabled=False)
    failures = []

    def attempt(label: str, call: Any, check: Any = None) -> None:
        before = http_row_counts()
        try:
            response = check_http("corpus", call, label)
            if check is not None:
                check(response, before)
        except (AssertionError, pytest.fail.Exception) as exc:
            failures.append(f"{label}: {str(exc)[:1500]}")

    def no_rows(response: Any, before: tuple[int, ...]) -> None:
        assert http_row_counts() == before, f"rows changed: {before} -> {http_row_counts()}"

    def local_redirect(response: Any, before: tuple[int, ...]) -> None:
        location = response.get("Location", "")
        assert location.startswith("/") and not location.startswith("//"), f"redirects to {location!r}"

    latin1 = RawBody(b"title=caf\xe9", "application/x-www-form-urlencoded; charset=latin-1")
    for path in ["/", f"/r/{room.slug}/post/", "/tokens/"]:
        client, token = browser(alice[0])
        attempt(
            f"POST {path} charset=latin-1",
            lambda c=client, t=token, p=path: http_post(c, t, p, latin1),
            no_rows,
        )
    client, token = browser(None, "/signup/")
    attempt("POST /signup/ charset=latin-1", lambda: http_post(client, token, "/signup/", latin1), no_rows)
    for next_ in [
        "nope",
        "javascript:alert(1)",
        "https://evil.example/",
        "//evil.example",
        "/\r\nSet-Cookie: x=1",
    ]:
        client, token = browser(None, "/guest/")
        attempt(
            f"POST /guest/?next={next_!r}",
            lambda c=client, t=token, n=next_: c.post(
                "/guest/?" + urlencode({"next": n}), {"display_name": "Eve"}, headers={"X-CSRFToken": t}
            ),
            local_redirect,
        )
    client, token = browser(alice[0])
    attempt(
        "POST / with a 3 MB title", lambda: http_post(client, token, "/", {"title": "t" * 3_000_000}), no_rows
    )
    attempt(
        "POST / with 1500 fields",
        lambda: http_post(
            client, token, "/", RawBody(b"&".join([b"a=1"] * 1500), "application/x-www-form-urlencoded")
        ),
        no_rows,
    )
    attempt(
        "POST / with a NUL title",
        lambda: http_post(
            client, token, "/", {"title": "a\x00b", "visibility": "public", "ai_trigger": "every"}
        ),
        no_rows,
    )
    attempt(
        "POST /tokens/<2**63>/revoke/",
        lambda: http_post(client, token, f"/tokens/{2**63}/revoke/", {}),
        no_rows,
    )
    attempt(
        "POST /tokens/<10**30>/revoke/",
        lambda: http_post(client, token, f"/tokens/{10**30}/revoke/", {}),
        no_rows,
    )
    assert not failures, f"fuzz: {len(failures)} http corpus cases failed:\n" + "\n---\n".join(failures)
