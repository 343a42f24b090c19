from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from rooms.services import token_create


class Command(BaseCommand):
    help = "Create an API token for a user (printed once) for scripts and bots."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("username")
        parser.add_argument("--name", default="cli")
        parser.add_argument("--create-user", action="store_true", help="create the user if missing")

    def handle(self, *args: Any, **opts: Any) -> None:
        User = get_user_model()
        user = User.objects.filter(username=opts["username"]).first()
        if user is None:
            if not opts["create_user"]:
                raise CommandError(f"no user {opts['username']!r} (use --create-user)")
            user = User(username=opts["username"])
            user.set_unusable_password()
            user.save()
        _, raw = token_create(user=user, name=opts["name"])
        self.stdout.write(raw)
