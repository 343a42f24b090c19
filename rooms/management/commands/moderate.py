from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from rooms.models import Room
from rooms.moderation import ACTIONS, moderation_apply
from rooms.standing import ModerationRefused


class Command(BaseCommand):
    help = "Apply one moderation action as a person (audited like the admin's, source 'command')."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("action", choices=ACTIONS)
        parser.add_argument(
            "--by", required=True, help="username of who acts (staff, or the room's moderator)"
        )
        parser.add_argument("--room", help="room slug")
        parser.add_argument("--message", type=int, help="message id (hide, unhide, delete)")
        parser.add_argument("--user", help="username the action is about (mute, ban, role, deactivate, ...)")
        parser.add_argument("--token", type=int, help="token id (revoke_token)")
        parser.add_argument("--report", type=int, help="report id (resolve)")
        parser.add_argument("--seconds", type=int, help="slow_mode seconds (0: off)")
        parser.add_argument("--role", choices=["moderator", "member", "viewer"])
        parser.add_argument("--reason", default="")

    def handle(self, *args: Any, **opts: Any) -> None:
        users = get_user_model().objects
        actor = users.filter(username=opts["by"]).first()
        if actor is None:
            raise CommandError(f"no user {opts['by']!r}")
        room = None
        if opts["room"]:
            room = Room.objects.filter(slug=opts["room"]).first()
            if room is None:
                raise CommandError(f"no room {opts['room']!r}")
        user_id = None
        if opts["user"]:
            target = users.filter(username=opts["user"]).first()
            if target is None:
                raise CommandError(f"no user {opts['user']!r}")
            user_id = target.pk
        try:
            record = moderation_apply(
                actor=actor, action=opts["action"], source="command", reason=opts["reason"], room=room,
                message_id=opts["message"], user_id=user_id, token_id=opts["token"],
                report_id=opts["report"], seconds=opts["seconds"], role=opts["role"],
                stop_turns=opts["action"] == "lock",
            )  # fmt: skip
        except ModerationRefused as exc:
            raise CommandError(f"{exc.code}: {exc}") from None
        self.stdout.write(f"{record.action}: {record.target_repr} (audit #{record.pk})")
