"""What a room socket does on the database: each call one visit, on the sockets' own threads.

Not asgiref's single thread (where every socket of the process would queue,
docs/performance.md): a pool of threads, one per pooled connection. Channels' wrapper closes
the thread's connection before and after each call, which with the connection pool returns it
to the pool. The functions only compose services and selectors.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from channels.db import database_sync_to_async
from django.conf import settings
from django.utils import timezone

from rooms import selectors, services
from rooms.auth import socket_user
from rooms.models import Room
from rooms.protocol import (
    CLOSE_FORBIDDEN,
    CLOSE_NOT_FOUND,
    CLOSE_RELOAD,
    CLOSE_TOO_MANY_SOCKETS,
    CLOSE_UNAUTHENTICATED,
    FrameError,
)
from rooms.standing import SocketId, socket_standing, sockets_standing

_T = TypeVar("_T")


def _db_threads() -> int:
    """One thread per pooled connection: a call holds one connection for its duration."""
    pool = settings.DATABASES["default"].get("OPTIONS", {}).get("pool")
    if isinstance(pool, dict):
        return int(pool.get("max_size") or pool.get("min_size") or 4)
    return 4 if pool else 8


_DB_EXECUTOR = ThreadPoolExecutor(max_workers=_db_threads(), thread_name_prefix="room-db")


def _on_db_threads(func: Callable[..., _T]) -> Callable[..., Any]:
    return database_sync_to_async(func, thread_sensitive=False, executor=_DB_EXECUTOR)


# Open sockets per user in this process (SOCKETS_PER_USER): claimed on the database threads
# during a connect, released by the consumer when the socket ends.
_open_by_user: Counter[int] = Counter()
_open_lock = threading.Lock()


def socket_claim(user_id: int) -> bool:
    """Count one more socket of this user in this process; False (nothing counted) when the
    user already holds SOCKETS_PER_USER of them."""
    limit = settings.SOCKETS_PER_USER
    with _open_lock:
        if limit > 0 and _open_by_user[user_id] >= limit:
            return False
        _open_by_user[user_id] += 1
        return True


def socket_release(user_id: int) -> None:
    with _open_lock:
        _open_by_user[user_id] -= 1
        if _open_by_user[user_id] <= 0:
            del _open_by_user[user_id]


@dataclass(frozen=True)
class Admission:
    """What a connect's database visit decided: a close code, or who joined and the replay."""

    close_code: int = 0
    user: Any = None
    token_id: int | None = None
    room_id: int = 0
    replay: selectors.Replay | None = None
    admitted_at: Any = None  # when its access was checked (a later kick closes it)


def admit(
    scope: dict[str, Any], slug: str, since: int, subscribe: Callable[[int, int, int | None], None]
) -> Admission:
    """A connect's one database visit: the user, the room and their access (joining a public
    room), then, once `subscribe` returns (Redis confirmed), the replay after `since`."""
    admitted_at = timezone.now()
    user, token_id = socket_user(scope)
    if not user.is_authenticated:
        return Admission(CLOSE_UNAUTHENTICATED)
    found = services.room_enter(slug=slug, user=user)
    if not found.room_id:
        return Admission(CLOSE_NOT_FOUND)
    if found.access != "member":
        return Admission(CLOSE_FORBIDDEN)
    if not socket_claim(user.pk):  # the consumer releases it when the socket ends
        return Admission(CLOSE_TOO_MANY_SOCKETS)
    try:
        subscribe(found.room_id, user.pk, token_id)  # before reading: nothing falls between
        replay = selectors.replay_after(room_id=found.room_id, since=since)  # replay and live
    except BaseException:
        socket_release(user.pk)
        raise
    if replay.too_far:
        socket_release(user.pk)
        return Admission(CLOSE_RELOAD)
    return Admission(0, user, token_id, found.room_id, replay, admitted_at)


def as_member(room_id: int, user: Any, ref: Any, action: Callable[..., _T], /, **kwargs: Any) -> _T:
    """`action(room=..., **kwargs)` if the user is still a member (memberships can be removed
    mid-socket): one database visit for a frame that writes."""
    room = selectors.room_of_member(room_id=room_id, user=user)
    if room is None:
        raise FrameError("forbidden", "you are not a member of this room", ref)
    return action(room=room, **kwargs)


class AccessLost(Exception):
    """The socket lost its right to the room (ban, kick, removal, deactivation, revoked token):
    it is closed with `code`, whether or not the broadcast that said so arrived."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class ReplayTooLong(AccessLost):
    """The socket is too far behind to be replayed (CHAT_REPLAY_MAX_EVENTS / _BYTES): it is
    closed with 4413 and the client reloads the page, a fresh transcript, instead."""

    def __init__(self) -> None:
        super().__init__(CLOSE_RELOAD)


def _standing(socket: SocketId) -> int:
    code, latest = socket_standing(socket=socket)
    if code:
        raise AccessLost(code)
    return latest


def as_standing_member(socket: SocketId, action: Callable[..., _T], /, **kwargs: Any) -> _T:
    """`action(room=..., **kwargs)` if the socket still stands (every write frame): raises
    AccessLost otherwise. The room is read fresh (its lock and slow mode)."""
    _standing(socket)
    return action(room=Room.objects.get(pk=socket.room_id), **kwargs)


def replay_standing(socket: SocketId, since: int, start: int | None = None) -> selectors.Replay:
    """A batch of the replay after `since` (a `sync`, a catch-up) if the socket still stands."""
    _standing(socket)
    return selectors.replay_after(room_id=socket.room_id, since=since, start=start)


def latest_seq_standing(socket: SocketId) -> int:
    """The heartbeat: the room's latest seq if the socket still stands (one statement)."""
    return _standing(socket)


on_db_threads = _on_db_threads  # rooms.api's database visits run on the same threads
admit_on_db = _on_db_threads(admit)
as_standing_member_on_db = _on_db_threads(as_standing_member)
replay_standing_on_db = _on_db_threads(replay_standing)
latest_seq_standing_on_db = _on_db_threads(latest_seq_standing)
sockets_standing_on_db = _on_db_threads(sockets_standing)
replay_on_db = _on_db_threads(selectors.replay_after)
as_member_on_db = _on_db_threads(as_member)
latest_seq_on_db = _on_db_threads(selectors.room_latest_seq)
