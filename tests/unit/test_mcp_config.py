"""MCP servers' configuration against real Postgres: the admin stores credentials encrypted and
never shows them again, bad rows are refused, a room owner switches on only what the admin
allows, and which servers a room's turn uses."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import Client

from agents.mcp.config import room_servers
from agents.mcp.models import McpServer, RoomMcpServer
from agents.mcp.secrets import secrets_open, secrets_seal
from agents.mcp.tools import tool_name
from rooms.services import room_create
from tests.conftest import make_user

pytestmark = pytest.mark.django_db(transaction=True)

FORM = {"name": "crm", "title": "", "transport": "http", "url": "https://mcp.example.com/mcp", "command": "",
        "args": "[]", "availability": "optional", "read_only_tools": '["lookup"]', "call_timeout": "20",
        "headers": "", "environment": ""}  # fmt: skip


@pytest.fixture
def staff(settings: Any) -> Client:
    from cryptography.fernet import Fernet

    settings.MCP_SECRET_KEY = Fernet.generate_key().decode()
    user, _ = make_user("root")
    user.is_staff = user.is_superuser = True
    user.save()
    web = Client()
    web.force_login(user)
    return web


def test_credentials_are_stored_encrypted_and_never_shown_again(staff: Client) -> None:
    response = staff.post(
        "/admin/agents/mcpserver/add/", {**FORM, "headers": "Authorization: Bearer s3cret-token"}
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    server = McpServer.objects.get(name="crm")
    assert "s3cret-token" not in server.secrets and server.secrets
    assert secrets_open(server.secrets)["headers"] == {"Authorization": "Bearer s3cret-token"}
    page = staff.get(f"/admin/agents/mcpserver/{server.pk}/change/").content.decode()
    assert "s3cret-token" not in page and "headers: Authorization" in page
    # saved again with the field empty: the stored credential stays
    staff.post(f"/admin/agents/mcpserver/{server.pk}/change/", {**FORM, "title": "CRM"})
    server.refresh_from_db()
    assert server.title == "CRM"
    assert secrets_open(server.secrets)["headers"] == {"Authorization": "Bearer s3cret-token"}
    staff.post(f"/admin/agents/mcpserver/{server.pk}/change/", {**FORM, "clear_credentials": "on"})
    server.refresh_from_db()
    assert (server.secrets, server.secrets_summary) == ("", "")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"name": "my__crm"}, "name"),  # two underscores would break the `server__tool` split
        ({"name": "CRM"}, "name"),
        ({"url": ""}, "url"),  # HTTP needs a URL
        ({"transport": "stdio", "url": ""}, "command"),  # stdio needs a command
        ({"args": '"-y"'}, "args"),
        ({"headers": "no colon here"}, "headers"),
        ({"call_timeout": "0"}, "__all__"),
    ],
)
def test_a_bad_server_is_refused_with_the_field_named_and_nothing_saved(
    staff: Client, change: dict[str, str], field: str
) -> None:
    response = staff.post("/admin/agents/mcpserver/add/", {**FORM, **change})
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert field in errors, errors
    assert not McpServer.objects.exists()


def test_without_a_key_and_with_debug_off_credentials_are_refused(staff: Client, settings: Any) -> None:
    settings.DEBUG, settings.MCP_SECRET_KEY = False, ""
    response = staff.post("/admin/agents/mcpserver/add/", {**FORM, "headers": "Authorization: Bearer x"})
    assert (
        response.status_code == 200
        and "MCP_SECRET_KEY" in response.context["adminform"].form.errors["headers"][0]
    )
    assert not McpServer.objects.exists()
    with pytest.raises(ImproperlyConfigured):
        secrets_seal({"headers": {"Authorization": "x"}, "env": {}})
    settings.MCP_SECRET_KEY = "not a key"
    with pytest.raises(ImproperlyConfigured):
        secrets_seal({"headers": {"Authorization": "x"}, "env": {}})


def test_a_token_made_with_an_old_key_opens_after_a_rotation(settings: Any) -> None:
    from cryptography.fernet import Fernet

    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.MCP_SECRET_KEY = old
    token = secrets_seal({"headers": {"X-Key": "v"}, "env": {}})
    settings.MCP_SECRET_KEY = f"{new},{old}"
    assert secrets_open(token)["headers"] == {"X-Key": "v"}
    settings.MCP_SECRET_KEY = new  # the old key dropped too early: no credential, no crash
    assert secrets_open(token) == {"headers": {}, "env": {}}


def servers(room: Any) -> list[str]:
    return [s.config.name for s in room_servers(room=room)]


def test_a_room_uses_the_default_servers_and_those_its_owner_switched_on() -> None:
    owner, _ = make_user("owner")
    room = room_create(owner=owner, title="r")
    off = McpServer.objects.create(name="off", url="https://a/mcp", availability="off")
    optional = McpServer.objects.create(name="optional", url="https://b/mcp", availability="optional")
    default = McpServer.objects.create(name="default", url="https://c/mcp", availability="default")
    assert servers(room) == ["default"]
    RoomMcpServer.objects.create(room=room, server=optional, on=True, ask_first=False)
    RoomMcpServer.objects.create(room=room, server=default, on=False)
    RoomMcpServer.objects.create(room=room, server=off, on=True)  # the admin's "off" wins
    assert servers(room) == ["optional"]
    assert room_servers(room=room)[0].ask_first is False


def test_the_owners_page_saves_only_allowed_servers_and_only_for_the_owner() -> None:
    owner, _ = make_user("owner")
    other, _ = make_user("other")
    room = room_create(owner=owner, title="r")
    off = McpServer.objects.create(name="off", url="https://a/mcp", availability="off")
    optional = McpServer.objects.create(name="optional", url="https://b/mcp", availability="optional")
    web = Client()
    web.force_login(other)
    assert web.post(f"/r/{room.slug}/mcp/", {"on": [str(optional.pk)]}).status_code == 403
    assert not RoomMcpServer.objects.exists()
    web.force_login(owner)
    page = web.get(f"/r/{room.slug}/mcp/").content.decode()
    assert "optional" in page and 'data-server="off"' not in page
    response = web.post(f"/r/{room.slug}/mcp/", {"on": [str(optional.pk), str(off.pk), "x"], "ask_first": []})
    assert response.status_code == 302
    assert list(RoomMcpServer.objects.values_list("server__name", "on", "ask_first")) == [
        ("optional", True, False)
    ]


def test_tool_names_are_namespaced_in_the_characters_models_accept() -> None:
    assert tool_name("crm", "find contact/v2") == "crm__find_contact_v2"
    assert len(tool_name("crm", "x" * 100)) == 64
