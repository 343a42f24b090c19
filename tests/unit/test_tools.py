"""The built-in server tools (agents/tools/) against real Postgres: what each one returns."""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.contrib.postgres.search import SearchQuery, SearchVector
from django.db import connection, transaction
from django.utils import timezone
from jsonschema import Draft202012Validator

from agents.tools.base import ToolContext, ToolError
from agents.tools.calculator import Calculator
from agents.tools.clock import WEEKDAYS, Clock
from agents.tools.notes import Note
from agents.tools.registry import server_tools
from agents.tools.search import RoomSearch
from rooms.models import SEARCH_CONFIG, Message, RoomEvent, RoomNote
from rooms.protocol import NoteEvent, parse_server_frame
from rooms.services import membership_join, message_post, room_create, room_update

NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def ctx(room_id: int = 1, call_id: int = 7) -> ToolContext:
    return ToolContext(room_id=room_id, turn_id=1, call_id=call_id, initiator_id=None)


# --- every tool -------------------------------------------------------------------------------


def test_every_registered_tool_offers_a_valid_json_schema_and_a_wire_name():
    tools = server_tools()
    assert set(tools) == {"calculator", "current_time", "search_room", "note", "schedule"}
    for name, tool in tools.items():
        spec = tool.spec()
        assert spec["type"] == "function" and spec["function"]["name"] == name
        assert NAME.match(name)
        assert len(spec["function"]["description"]) > 40
        schema = spec["function"]["parameters"]
        Draft202012Validator.check_schema(schema)
        assert schema["type"] == "object"
        json.dumps(spec)  # offered to the model as JSON


def test_schemas_accept_the_documented_examples_and_refuse_strays():
    tools = server_tools()
    examples = {
        "calculator": {"expression": "17% of 2340"},
        "current_time": {"timezone": "Europe/Lisbon"},
        "search_room": {"query": "Porto", "author": "Bob", "since": "2026-12-02", "limit": 5},
        "note": {"text": "Flights to Porto on Friday"},
    }
    for name, args in examples.items():
        validator = Draft202012Validator(tools[name].parameters)
        assert not list(validator.iter_errors(args)), name
        assert list(validator.iter_errors({**args, "stray": 1})), name
    assert list(
        Draft202012Validator(tools["search_room"].parameters).iter_errors({"query": "x", "limit": 21})
    )


def test_only_the_note_and_schedule_tools_have_side_effects_and_ask_first():
    tools = server_tools()
    assert [n for n, t in tools.items() if t.side_effects] == ["note", "schedule"]
    assert [n for n, t in tools.items() if t.ask_first] == ["note", "schedule"]
    # a schedule is unique per call: running the call again returns the same one
    assert [n for n, t in tools.items() if not t.idempotent] == ["note"]


# --- calculator -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "expression, result",
    [
        ("17% of 2340", 397.8),
        ("17% * 2340", 397.8),
        ("2340 * 17%", 397.8),
        ("17 percent of 2,340", 397.8),
        ("10 % 3", 1),
        ("(3 + 4) * 2 - 1", 13),
        ("7 // 2", 3),
        ("2 ** 10", 1024),
        ("2^10", 1024),
        ("0.1 + 0.2", 0.3),
        ("10 / 4", 2.5),
        ("sqrt(16) + abs(-2)", 6),
        ("round(2.567, 2)", 2.57),
        ("max(1, 340, 7) - min(4, 2)", 338),
        ("log(e)", 1),
        ("log(8, 2)", 3),
        ("cos(0) + sin(0)", 1),
        ("round(pi, 4)", 3.1416),
        ("12 × 3 ÷ 4", 9),
        ("2 + 2 =", 4),
    ],
)
def test_calculator_evaluates_arithmetic_and_percentages(expression, result):
    output = Calculator().run(ctx(), {"expression": expression})
    assert output == {"expression": expression, "result": result}
    json.dumps(output)


@pytest.mark.parametrize(
    "expression, says",
    [
        ("__import__('os')", "unknown function '__import__'"),
        ("__import__('os').system('true')", "not supported"),
        ("open('/etc/passwd').read()", "not supported"),
        ("(1).__class__", "not supported"),
        ("x + 1", "unknown name 'x'"),
        ("exec('1')", "unknown function 'exec'"),
        ("'a' * 10", "not a number"),
        ("[1, 2]", "not supported"),
        ("lambda: 1", "not supported"),
        ("1; 2", "not an arithmetic expression"),
        ("y = 2", "not an arithmetic expression"),
        ("2 +", "not an arithmetic expression"),
        ("1 if 1 else 2", "not supported"),
        ("9 ** 9 ** 9", "too large"),
        ("2 ** 100000", "too large"),
        ("10 ** 400", "too large"),
        ("1e308 * 10", "too large"),
        ("exp(1000)", "cannot compute"),
        ("1 / 0", "division by zero"),
        ("sqrt(-1)", "cannot compute"),
        ("sqrt", "no numeric value"),
        ("1 + " * 200 + "1", "longer than 500 characters"),
        ("   ", "empty"),
    ],
)
def test_calculator_refuses_what_is_not_bounded_arithmetic(expression, says):
    with pytest.raises(ToolError, match=re.escape(says)):
        Calculator().run(ctx(), {"expression": expression})


def test_calculator_never_runs_code(tmp_path):
    marker = tmp_path / "ran"
    with pytest.raises(ToolError):
        Calculator().run(ctx(), {"expression": f"__import__('pathlib').Path('{marker}').touch()"})
    assert not marker.exists()


# --- current_time -----------------------------------------------------------------------------


def test_clock_gives_now_in_utc_by_default():
    output = Clock().run(ctx(), {})
    now = datetime.fromisoformat(output["iso"])
    assert output["timezone"] == "UTC" and output["utc_offset"] == "+00:00"
    assert abs((datetime.now(UTC) - now).total_seconds()) < 5
    assert output["date"] == now.date().isoformat() and output["time"] == now.strftime("%H:%M:%S")
    assert output["weekday"] == WEEKDAYS[now.weekday()]


def test_clock_gives_now_in_a_named_zone():
    output = Clock().run(ctx(), {"timezone": "Asia/Kolkata"})  # no daylight saving time there
    now = datetime.fromisoformat(output["iso"])
    assert output["timezone"] == "Asia/Kolkata" and output["utc_offset"] == "+05:30"
    assert now.utcoffset() == timedelta(hours=5, minutes=30)
    assert abs((datetime.now(UTC) - now).total_seconds()) < 5


@pytest.mark.parametrize("zone", ["Mars/Olympus_Mons", "../../etc/passwd", "Not a zone"])
def test_clock_refuses_an_unknown_zone(zone):
    with pytest.raises(ToolError, match="unknown time zone"):
        Clock().run(ctx(), {"timezone": zone})


# --- search_room ------------------------------------------------------------------------------


def say(room, user, text, *, ago: timedelta, status: str | None = None) -> Message:
    """A message by `user` (None: the assistant) written `ago` before now."""
    if user is None:
        seq = room.last_seq + 1000 + Message.objects.filter(room=room).count()
        message = Message.objects.create(room=room, seq=seq, role="assistant", content=text)
    else:
        posted = message_post(room=room, author=user, client_id=uuid.uuid4(), content=text)
        message = Message.objects.get(pk=posted.message_id)
    Message.objects.filter(pk=message.pk).update(
        created_at=timezone.now() - ago, **({"status": status} if status else {})
    )
    message.refresh_from_db()
    return message


@pytest.fixture
def transcript(room, alice, bob):
    """A room where Bob talked about Porto yesterday, and other messages that must not match."""
    room_update(room=room, ai_enabled=False)  # no turns queued by these posts
    alice_user, bob_user = alice[0], bob[0]
    membership_join(room=room, user=bob_user)  # only members post (rooms.standing)
    other = room_create(owner=bob_user, title="Other room", ai_enabled=False)
    return {
        "old": say(room, bob_user, "Porto was lovely last year", ago=timedelta(days=3)),
        "bob": say(room, bob_user, "I found cheap flights to Porto for Friday!", ago=timedelta(days=1)),
        "alice": say(room, alice_user, "Porto sounds great, count me in", ago=timedelta(hours=20)),
        "hidden": say(room, bob_user, "Porto secret", ago=timedelta(hours=19), status="hidden"),
        "assistant": say(room, None, "Porto is in the north of Portugal.", ago=timedelta(hours=18)),
        "streaming": say(room, None, "Porto and", ago=timedelta(hours=1), status="streaming"),
        "lisbon": say(room, bob_user, "Lisbon is nice too", ago=timedelta(hours=2)),
        "elsewhere": say(other, bob_user, "Porto, in another room", ago=timedelta(hours=1)),
        "room": room,
    }


def search(transcript, **args):
    return RoomSearch().run(ctx(room_id=transcript["room"].pk), args)


def seqs(output):
    return [r["seq"] for r in output["results"]]


@pytest.mark.django_db
def test_search_finds_what_bob_said_about_porto_yesterday(transcript):
    yesterday = (datetime.now(UTC).date() - timedelta(days=1)).isoformat()
    output = search(transcript, query="Porto", author="Bob", since=yesterday)
    assert seqs(output) == [transcript["bob"].seq] and output["count"] == 1
    hit = output["results"][0]
    assert hit["author"] == "Bob" and hit["role"] == "user"
    assert hit["created_at"] == transcript["bob"].created_at.isoformat()
    assert "**Porto**" in hit["excerpt"]
    assert search(transcript, query="porto", author="bob", since="yesterday") == output


@pytest.mark.django_db
def test_search_lists_only_this_rooms_visible_messages_newest_first(transcript):
    output = search(transcript, query="Porto")
    expected = [transcript[k].seq for k in ("assistant", "alice", "bob", "old")]
    assert seqs(output) == sorted(expected, reverse=True)
    assert output["results"][0]["author"] == "Assistant"


@pytest.mark.django_db
def test_search_respects_until_author_and_limit(transcript):
    two_days_ago = (datetime.now(UTC).date() - timedelta(days=2)).isoformat()
    assert seqs(search(transcript, query="Porto", until=two_days_ago)) == [transcript["old"].seq]
    assert seqs(search(transcript, query="Porto", author="Assistant")) == [transcript["assistant"].seq]
    assert seqs(search(transcript, query="Porto", author="Carol")) == []
    assert len(search(transcript, query="Porto", limit=2)["results"]) == 2


@pytest.mark.django_db
def test_search_matches_word_forms_phrases_and_exclusions(transcript):
    assert seqs(search(transcript, query="flight")) == [transcript["bob"].seq]
    assert seqs(search(transcript, query='"cheap flights"')) == [transcript["bob"].seq]
    assert transcript["bob"].seq not in seqs(search(transcript, query="Porto -flights"))
    assert seqs(search(transcript, query="Lisbon or Portugal")) == sorted(
        [transcript["lisbon"].seq, transcript["assistant"].seq], reverse=True
    )


@pytest.mark.django_db
def test_search_with_a_blank_query_lists_a_persons_newest_messages(transcript):
    output = search(transcript, query="", author="Bob", since="yesterday")
    assert seqs(output) == [transcript["lisbon"].seq, transcript["bob"].seq]
    assert output["results"][0]["excerpt"] == "Lisbon is nice too"


@pytest.mark.django_db
def test_search_reads_dates_in_the_given_zone(transcript):
    bob = transcript["bob"].created_at
    start = bob.astimezone(UTC).replace(tzinfo=None) - timedelta(minutes=1)  # no offset: the zone's
    output = search(transcript, query="flights", since=start.isoformat(timespec="minutes"))
    assert seqs(output) == [transcript["bob"].seq]
    later = (bob + timedelta(minutes=1)).astimezone(UTC).replace(tzinfo=None)
    assert seqs(search(transcript, query="flights", since=later.isoformat())) == []
    # the same moment, written in Lisbon's or Tokyo's local time
    for zone in ("Europe/Lisbon", "Asia/Tokyo"):
        local = (bob - timedelta(minutes=1)).astimezone(ZoneInfo(zone)).replace(tzinfo=None)
        assert seqs(search(transcript, query="flights", since=local.isoformat(), timezone=zone)) == [
            transcript["bob"].seq
        ]


@pytest.mark.django_db
def test_search_says_when_nothing_matched(transcript):
    output = search(transcript, query="Zanzibar")
    assert output["results"] == [] and output["count"] == 0 and "hint" in output


@pytest.mark.django_db
@pytest.mark.parametrize(
    "args, says",
    [
        ({"query": "x", "since": "last Tuesday"}, "not an ISO date"),
        ({"query": "x", "since": "2026-12-03", "until": "2026-12-01"}, "since must be before until"),
        ({"query": "x", "timezone": "Nowhere/City"}, "unknown time zone"),
        ({"query": "x", "limit": 50}, "limit must be"),
        ({"query": 5}, "query must be a string"),
    ],
)
def test_search_refuses_bad_arguments(room, args, says):
    with pytest.raises(ToolError, match=says):
        RoomSearch().run(ctx(room_id=room.pk), args)


@pytest.mark.django_db
def test_the_full_text_index_serves_the_search_expression(transcript):
    tsquery = SearchQuery("porto", search_type="websearch", config=SEARCH_CONFIG)
    rows = Message.objects.annotate(document=SearchVector("content", config=SEARCH_CONFIG)).filter(
        document=tsquery
    )
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        plan = rows.values("pk").explain()
    assert "message_content_search_idx" in plan


# --- note -------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_note_writes_a_room_note_and_its_note_event(room):
    before = room.last_seq
    output = Note().run(ctx(room_id=room.pk, call_id=42), {"text": "  Flights to Porto on Friday  "})
    note = RoomNote.objects.get(room=room)
    assert output == {"note_id": note.pk, "text": "Flights to Porto on Friday"}
    assert note.call_id == 42
    event = RoomEvent.objects.get(room=room, type="note")
    assert event.seq == before + 1
    frame = parse_server_frame(event.frame)
    assert isinstance(frame, NoteEvent) and frame.seq == event.seq
    assert frame.note.id == note.pk and frame.note.text == note.text and frame.note.call_id == 42


@pytest.mark.django_db
def test_note_without_text_is_refused_and_writes_nothing(room):
    for args in ({"text": "   "}, {}, {"text": 3}):
        with pytest.raises(ToolError):
            Note().run(ctx(room_id=room.pk), args)
    assert not RoomNote.objects.filter(room=room).exists()
    assert not RoomEvent.objects.filter(room=room, type="note").exists()
