"""Hardened defaults: each test here fails without its fix (see README "Security")."""

from __future__ import annotations

import socket

import pytest
from django.test import Client

from rooms.models import Room

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
