"""Hardened defaults: each test here fails without its fix (see README "Security")."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import uuid

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import Client

from rooms.auth import origin_allowed
from rooms.client import RoomClient
from rooms.models import ApiToken, Membership, Message, Room
from tests.conftest import run_async

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def _settings_form(room: Room, **changes: str) -> dict[str, str]:
    form = {"title": room.title, "visibility": room.visibility, "ai_enabled": "on", "ai_model": "",
            "system_prompt": "", "ai_trigger": room.ai_trigger, "recovery": room.recovery}  # fmt: skip
    return {**form, **changes}


def test_an_owner_picks_a_model_from_the_servers_list_only(room, alice, settings):
    settings.LLM_MODEL, settings.LLM_MODELS = "house-model", ["cheap-model"]
    web = Client()
    web.force_login(alice[0])
    page = web.get(f"/r/{room.slug}/settings/").content.decode()
    assert '<select name="ai_model"' in page and '<option value="cheap-model">' in page
    refused = web.post(f"/r/{room.slug}/settings/", _settings_form(room, ai_model="gpt-4-very-expensive"))
    assert refused.status_code == 200 and "not one of the available choices" in refused.content.decode()
    room.refresh_from_db()
    assert room.ai_model == ""
    assert (
        web.post(f"/r/{room.slug}/settings/", _settings_form(room, ai_model="cheap-model")).status_code == 302
    )
    room.refresh_from_db()
    assert room.ai_model == "cheap-model"
    created = web.post("/", {"title": "Mine", "visibility": "public", "ai_model": "gpt-4-very-expensive",
                             "ai_trigger": "every", "system_prompt": ""})  # fmt: skip
    assert created.status_code == 200 and not Room.objects.filter(title="Mine").exists()


def test_healthz_answers_without_the_database_and_readyz_checks_postgres_and_redis(
    stack, settings, django_assert_num_queries
):
    with django_assert_num_queries(0):
        assert Client().get("/healthz").json() == {"status": "ok"}
    assert Client().get("/readyz").json() == {"status": "ok"}
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        settings.REDIS_URL = f"redis://127.0.0.1:{sock.getsockname()[1]}/0"
    down = Client().get("/readyz")
    assert down.status_code == 503 and down.json() == {"status": "unavailable", "failing": ["redis"]}
    assert Client().get("/healthz").status_code == 200


def _settings_in_a_fresh_process(**environ: str) -> subprocess.CompletedProcess[str]:
    code = (
        "import django, json; from django.conf import settings; django.setup(); "
        "print(json.dumps([settings.DEBUG, settings.SECURE_SSL_REDIRECT, settings.SESSION_COOKIE_SECURE, "
        "settings.CSRF_COOKIE_SECURE, settings.SECURE_HSTS_SECONDS]))"
    )
    keep = {k: v for k, v in os.environ.items() if k not in ("DEBUG", "SECRET_KEY")}
    env = {**keep, "ENV_FILE": "/nonexistent", "DJANGO_SETTINGS_MODULE": "chatproject.settings", **environ}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)


def test_debug_is_off_unless_asked_for_and_then_https_settings_are_on():
    refused = _settings_in_a_fresh_process()
    assert refused.returncode != 0 and "SECRET_KEY must be set when DEBUG is off" in refused.stderr
    production = _settings_in_a_fresh_process(SECRET_KEY="k" * 60)
    assert production.returncode == 0, production.stderr
    assert json.loads(production.stdout) == [False, True, True, True, 31_536_000]
    development = _settings_in_a_fresh_process(DEBUG="true")
    assert json.loads(development.stdout) == [True, False, False, False, 0]


def test_static_files_are_served_compressed_from_static_root_without_debug(tmp_path, settings):
    settings.STATIC_ROOT = tmp_path
    call_command("collectstatic", "--noinput", verbosity=0)
    assert (tmp_path / "js" / "room.js.gz").exists()
    response = Client().get("/static/js/room.js", HTTP_ACCEPT_ENCODING="gzip")
    assert response.status_code == 200 and response["Content-Encoding"] == "gzip"
    assert "max-age=" in response["Cache-Control"]
    assert Client().get("/static/js/no-such-file.js").status_code == 404


def test_origins_are_compared_exactly_scheme_host_and_port(settings):
    settings.ALLOWED_ORIGINS = ["https://chat.example.com", "http://127.0.0.1:8000"]
    settings.ALLOWED_HOSTS = [".example.com", "127.0.0.1"]  # wildcards no longer widen origins
    assert origin_allowed(b"https://chat.example.com") and origin_allowed(b"https://CHAT.example.com:443")
    assert origin_allowed(b"http://127.0.0.1:8000")
    for refused in (
        b"http://chat.example.com",  # another scheme
        b"https://chat.example.com:8443",  # another port
        b"https://evil.example.com",  # an ALLOWED_HOSTS wildcard match
        b"http://127.0.0.1:8001",
        b"https://user@chat.example.com",
        b"null",
        b"https://chat.example.com\xff",
    ):
        assert not origin_allowed(refused), refused


def test_a_browser_socket_from_another_port_of_the_same_host_is_refused(stack, room, alice):
    web = Client()
    web.force_login(alice[0])
    cookie = f"sessionid={web.cookies['sessionid'].value}"
    other_port = stack.base_url.rsplit(":", 1)[0] + ":1"

    async def connects(origin: str) -> bool:
        client = RoomClient(stack.base_url, room.slug, headers={"Cookie": cookie, "Origin": origin})
        try:
            await client.connect()
        except Exception:  # refused at the handshake
            return False
        await client.close()
        return True

    assert run_async(connects(stack.base_url)) is True
    assert run_async(connects(other_port)) is False
    assert run_async(connects(stack.base_url.replace("http://", "https://"))) is False


def test_the_form_post_takes_the_same_message_quota_as_the_socket(stack, room, alice, settings):
    settings.RATE_MESSAGES_PER_MINUTE = 2
    room.ai_enabled = False
    room.save()
    web = Client()
    web.force_login(alice[0])
    for i in range(3):
        response = web.post(f"/r/{room.slug}/post/", {"content": f"form {i}", "client_id": str(uuid.uuid4())})
        assert response.status_code == 302
    assert list(Message.objects.filter(room=room).values_list("content", flat=True)) == ["form 0", "form 1"]
    page = web.get(f"/r/{room.slug}/").content.decode()
    assert "Not sent: too many messages this minute" in page


def test_a_page_view_does_not_join_a_public_room_but_a_post_or_the_socket_does(stack, room, bob):
    web = Client()
    web.force_login(bob[0])
    assert web.get(f"/r/{room.slug}/").status_code == 200  # a public room can be read
    assert not Membership.objects.filter(room=room, user=bob[0]).exists()

    async def connect() -> None:
        client = RoomClient(stack.base_url, room.slug, token=bob[1])
        await client.connect()
        await client.close()

    run_async(connect())
    assert Membership.objects.filter(room=room, user=bob[0]).exists()


def test_guests_may_not_create_rooms_or_tokens_unless_settings_allow(settings):
    web = Client()
    assert web.post("/guest/", {"display_name": "Dana"}).status_code == 302
    home = web.get("/").content.decode()
    assert "sign up</a>" in home and 'name="title"' not in home
    refused = web.post("/", {"title": "Dana's room", "visibility": "public", "ai_trigger": "every"})
    assert refused.status_code == 403 and not Room.objects.filter(title="Dana's room").exists()
    assert web.post("/tokens/", {"name": "bot"}).status_code == 403
    assert not ApiToken.objects.exists()
    settings.GUESTS_MAY_CREATE_ROOMS = True
    allowed = web.post("/", {"title": "Dana's room", "visibility": "public", "ai_trigger": "every"})
    assert allowed.status_code == 302 and Room.objects.filter(title="Dana's room").exists()


def test_guest_signup_room_and_token_creation_are_limited_per_client_address(settings):
    settings.RATE_GUESTS, settings.RATE_ROOMS, settings.RATE_TOKENS = "2/h", "1/h", "1/h"
    made = [Client().post("/guest/", {"display_name": f"g{i}"}).status_code for i in range(3)]
    assert made == [302, 302, 429]
    assert User.objects.filter(username__startswith="guest-").count() == 2
    other = Client(REMOTE_ADDR="10.1.2.3")  # another address has its own count
    assert other.post("/guest/", {"display_name": "g3"}).status_code == 302
    web = Client()
    web.force_login(User.objects.create_user("erin", password="a long pass phrase 1"))
    form = {"title": "r", "visibility": "public", "ai_trigger": "every"}
    assert [web.post("/", form).status_code for _ in range(2)] == [302, 429]
    assert Room.objects.filter(title="r").count() == 1
    assert [web.post("/tokens/", {"name": "t"}).status_code for _ in range(2)] == [200, 429]
    assert ApiToken.objects.count() == 1
    settings.RATE_SIGNUPS = "1/h"
    signups = [
        Client()
        .post(
            "/signup/",
            {"username": f"u{i}", "password1": "a long pass phrase 1", "password2": "a long pass phrase 1"},
        )
        .status_code  # fmt: skip
        for i in range(2)
    ]
    assert signups == [302, 429] and not User.objects.filter(username="u1").exists()


def test_metrics_need_a_token_outside_development(settings):
    settings.DEBUG, settings.METRICS_TOKEN = False, ""
    refused = Client().get("/metrics")
    assert refused.status_code == 403 and b"METRICS_TOKEN" in refused.content
    settings.METRICS_TOKEN = "scrape-me"
    assert Client().get("/metrics").status_code == 401
    assert Client().get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    read = Client().get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-me")
    assert read.status_code == 200 and b"roomchat_" in read.content


def _post_many(room: Room, author: User, count: int, size: int = 10) -> None:
    from rooms.services import message_post

    for i in range(count):
        text = f"{i:05d} " + "x" * max(0, size - 6)
        message_post(room=room, author=author, client_id=uuid.uuid4(), content=text)


def test_a_replay_is_read_in_batches_and_goes_back_only_so_far(room, alice, settings):
    from rooms.selectors import replay_after

    settings.RATE_MESSAGES_PER_MINUTE = 0
    settings.CHAT_REPLAY_BATCH = 10
    settings.CHAT_REPLAY_MAX_EVENTS = 50
    room.ai_enabled = False
    room.save()
    _post_many(room, alice[0], 35)
    first = replay_after(room_id=room.pk, since=0)
    assert len(first.events) == 10 and first.more and first.snapshots == []  # one batch in memory
    seqs, batch = [s for s, _ in first.events], first
    while batch.more:
        batch = replay_after(room_id=room.pk, since=0, start=batch.last)
        assert len(batch.events) <= 10
        seqs += [s for s, _ in batch.events]
    assert seqs == list(range(1, room.__class__.objects.get(pk=room.pk).last_seq + 1))
    _post_many(room, alice[0], 20)  # now more than 50 events after 0: nothing is read
    far = replay_after(room_id=room.pk, since=0)
    assert far.too_far and far.events == []
    assert not replay_after(room_id=room.pk, since=10).too_far


def test_a_socket_too_far_behind_is_told_to_reload_and_one_in_reach_gets_every_event(
    stack, room, alice, settings
):
    # the test stack: batches of 100, at most 400 events or 1 MB back (tests/stack.py)
    settings.RATE_MESSAGES_PER_MINUTE = 0
    room.ai_enabled = False
    room.save()
    _post_many(room, alice[0], 450)
    latest = Room.objects.get(pk=room.pk).last_seq

    async def connect(since: int) -> RoomClient:
        client = RoomClient(stack.base_url, room.slug, token=alice[1])
        client.state.last_seq = since
        try:
            await client.connect()
        except ConnectionError:  # closed before ready
            pass
        return client

    async def scenario() -> tuple[RoomClient, RoomClient]:
        far = await connect(0)
        near = await connect(latest - 350)  # four batches
        assert near.ready.is_set()
        await near.send_raw(json.dumps({"type": "sync", "since": 0}))  # a sync that far back
        await near.wait_for(lambda c: c.close_code is not None, timeout=10)
        return far, near

    far, near = run_async(scenario())
    assert far.close_code == 4413 and not far.ready.is_set()
    got = [f["seq"] for f in near.frames if "seq" in f and f["type"] != "ready"]
    assert got == list(range(latest - 349, latest + 1)), "every event once, in order"
    assert near.close_code == 4413
    _post_many(room, alice[0], 150, size=16_000)  # 2.4 MB in 150 events
    heavy = run_async(connect(latest))
    assert heavy.close_code == 4413, "past CHAT_REPLAY_MAX_BYTES the socket is told to reload"
    assert len([f for f in heavy.frames if f["type"] == "message"]) == 100, "it stopped after a batch"


def test_sync_frames_have_their_own_rate(stack, room, alice):
    async def scenario() -> tuple[list[dict], dict]:
        client = RoomClient(stack.base_url, room.slug, token=alice[1])
        await client.connect()
        for _ in range(200):  # the test stack allows 600 a minute, a burst of 150
            await client.send_raw(json.dumps({"type": "sync", "since": client.state.last_seq}))
        await client.wait_for(lambda c: any(e.get("ref") == "sync" for e in c.errors))
        seen = len(client.frames)
        await client.ping()
        await client.wait_for(lambda c: any(f["type"] == "pong" for f in c.frames[seen:]))
        pong = next(f for f in client.frames[seen:] if f["type"] == "pong")
        errors = list(client.errors)
        await client.close()
        return errors, pong

    errors, pong = run_async(scenario())
    limited = [e for e in errors if e.get("ref") == "sync"]
    assert limited and all(e["code"] == "rate_limited" and e["retry_after"] > 0 for e in limited)
    assert pong["type"] == "pong", "the socket stays open"


def test_one_user_may_hold_only_so_many_sockets_in_a_process(stack, room, alice):
    async def scenario() -> tuple[list[bool], int | None, bool]:
        clients = [RoomClient(stack.base_url, room.slug, token=alice[1]) for _ in range(12)]
        await asyncio.gather(*(c.connect() for c in clients))  # SOCKETS_PER_USER=12 in tests
        opened = [c.ready.is_set() for c in clients]
        extra = RoomClient(stack.base_url, room.slug, token=alice[1])
        with pytest.raises(ConnectionError):
            await extra.connect()
        await clients[0].close()
        again = RoomClient(stack.base_url, room.slug, token=alice[1])
        for _attempt in range(50):  # a socket closed: its place is free once the server saw it
            try:
                await again.connect()
                break
            except ConnectionError:
                assert again.close_code == 4429
                await asyncio.sleep(0.1)
        await asyncio.gather(*(c.close() for c in [*clients[1:], again]))
        return opened, extra.close_code, again.ready.is_set()

    opened, code, again = run_async(scenario())
    assert all(opened) and code == 4429 and again
