"""Reads: rooms for a user, the transcript, events after a seq, snapshots of streams."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.postgres.search import SearchHeadline, SearchQuery, SearchVector
from django.db import connection, transaction
from django.db.models import Q, QuerySet

from rooms.models import SEARCH_CONFIG, Membership, Message, Room, RoomNote
from rooms.protocol import MessageData, UserRef
from rooms.rendering import render_markdown
from rooms.turns import turn_queue


def display_name(user: Any) -> str:
    """The name people see: the display name, else the username."""
    if user is None:
        return "Assistant"
    return (user.first_name or user.username)[:60]


def user_data(user: Any) -> dict[str, Any] | None:
    return None if user is None else {"id": user.pk, "name": display_name(user)}


_REDACTED = (Message.Status.HIDDEN, Message.Status.DELETED)


def message_wire(message: Message, *, turn_id: int | None = None) -> MessageData:
    """A message as it travels on the wire (docs/protocol.md)."""
    author = message.author if message.author_id else None
    if message.status in _REDACTED:  # hidden or deleted: no client gets its text
        return MessageData(
            id=message.pk, seq=message.seq, role=message.role,
            author=None if author is None else UserRef(id=author.pk, name=display_name(author)),
            content="", html="", status=message.status,
            client_id=str(message.client_id) if message.client_id else None, turn_id=turn_id,
            created_at=message.created_at.isoformat(),
        )  # fmt: skip
    return MessageData(
        id=message.pk,
        seq=message.seq,
        role=message.role,
        author=None if author is None else UserRef(id=author.pk, name=display_name(author)),
        content=message.content,
        html=render_markdown(message.content),
        status=message.status,
        client_id=str(message.client_id) if message.client_id else None,
        turn_id=turn_id,
        created_at=message.created_at.isoformat(),
    )


def room_by_slug(*, slug: str) -> Room | None:
    return Room.objects.filter(slug=slug).first()


def membership_of(*, room: Room, user: Any) -> Membership | None:
    """The user's membership, unless they are banned."""
    if not user.is_authenticated:
        return None
    return Membership.objects.filter(room=room, user=user, banned_at__isnull=True).first()


def room_of_member(*, room_id: int, user: Any) -> Room | None:
    """The room, if the user is (still) a member of it: memberships can end mid-socket."""
    room = Room.objects.filter(pk=room_id).first()
    if room is None or membership_of(room=room, user=user) is None:
        return None
    return room


def room_access(*, room: Room, user: Any) -> str:
    """'member', 'can_join' (public room, signed in) or 'denied'."""
    if not user.is_authenticated:
        return "denied"
    membership = Membership.objects.filter(room=room, user=user).first()
    if membership is not None:
        return "denied" if membership.banned_at else "member"
    if room.visibility == Room.Visibility.PUBLIC:
        return "can_join"
    return "denied"


@dataclass(frozen=True)
class SocketAccess:
    """What a socket may do in the room its URL names: room_id 0 when there is no such room."""

    room_id: int
    access: str  # as room_access: 'member', 'can_join' or 'denied'


def socket_access(*, slug: str, user_id: int) -> SocketAccess:
    """room_access for a connecting socket, by slug: one hand-written statement (a connect's
    hot path; the ORM's query building cost more than the queries, docs/performance.md)."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT r.id, r.visibility, m.id IS NOT NULL, m.banned_at IS NOT NULL
            FROM rooms_room r
            LEFT JOIN rooms_membership m ON m.room_id = r.id AND m.user_id = %s
            WHERE r.slug = %s
            """,
            [user_id, slug],
        )
        row = cursor.fetchone()
    if row is None:
        return SocketAccess(0, "denied")
    room_id, visibility, is_member, banned = row
    if is_member:
        return SocketAccess(room_id, "denied" if banned else "member")
    if visibility == Room.Visibility.PUBLIC:
        return SocketAccess(room_id, "can_join")
    return SocketAccess(room_id, "denied")


def rooms_for_user(*, user: Any) -> QuerySet[Room]:
    return (
        Room.objects.filter(memberships__user=user, memberships__banned_at__isnull=True)
        .order_by("-created_at")
        .distinct()
    )


def rooms_public(*, exclude_user: Any = None) -> QuerySet[Room]:
    qs = Room.objects.filter(visibility=Room.Visibility.PUBLIC)
    if exclude_user is not None and exclude_user.is_authenticated:
        qs = qs.exclude(memberships__user=exclude_user)
    return qs.order_by("-created_at")[:50]


def room_latest_seq(*, room_id: int) -> int:
    return Room.objects.filter(pk=room_id).values_list("last_seq", flat=True).first() or 0


_EVENTS_AFTER = """
    SELECT seq, frame FROM rooms_roomevent WHERE room_id = %(room)s AND seq > %(since)s
    ORDER BY seq LIMIT %(limit)s
"""
_SNAPSHOTS = """
    SELECT m.id, COALESCE(string_agg(c.text, '' ORDER BY c.index), ''), COUNT(c.id)
    FROM rooms_message m LEFT JOIN rooms_streamchunk c ON c.message_id = m.id
    WHERE m.room_id = %(room)s AND m.status = 'streaming'
    GROUP BY m.id ORDER BY m.id
"""


@dataclass(frozen=True)
class Snapshot:
    message_id: int
    content: str
    next_index: int


def snapshots_streaming(*, room_id: int) -> list[Snapshot]:
    """The text so far of each message still streaming in a room (one query)."""
    with connection.cursor() as cursor:
        cursor.execute(_SNAPSHOTS, {"room": room_id})
        return [Snapshot(mid, content, int(n)) for mid, content, n in cursor.fetchall()]


def events_and_snapshots(
    *, room_id: int, since: int, limit: int, max_behind: int
) -> tuple[list[tuple[int, str]], list[Snapshot], int]:
    """The events after `since` (at most `limit`, oldest first, as (seq, frame text)) and
    snapshots_streaming in one hand-written statement (so from one database snapshot), with the
    room's latest seq: a connect's replay in one round trip when it fits in `limit`
    events. No event is read when the room is more than `max_behind` events past `since`."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            SELECT 0, e.seq, e.frame, 0 FROM ({_EVENTS_AFTER}) e
            WHERE (SELECT last_seq FROM rooms_room WHERE id = %(room)s) - %(since)s <= %(behind)s
            UNION ALL
            SELECT 1, s.id, s.content, s.n FROM ({_SNAPSHOTS}) s (id, content, n)
            UNION ALL
            SELECT 2, last_seq, '', 0 FROM rooms_room WHERE id = %(room)s
            ORDER BY 1, 2
            """,
            {"room": room_id, "since": since, "limit": limit, "behind": max_behind},
        )
        rows = cursor.fetchall()
    events = [(key, text) for kind, key, text, _n in rows if kind == 0]
    snapshots = [Snapshot(key, text, int(n)) for kind, key, text, n in rows if kind == 1]
    latest = next((key for kind, key, _text, _n in rows if kind == 2), 0)
    return events, snapshots, latest


@dataclass(frozen=True)
class Replay:
    """One batch of what a socket is sent to catch up: events after `since` up to `last`. When
    `more`, the next batch starts after `last`; the last batch also carries the snapshots.
    `too_far`: the room is more than CHAT_REPLAY_MAX_EVENTS events past `since` (none read)."""

    events: list[tuple[int, str]]
    snapshots: list[Snapshot]
    last: int
    more: bool = False
    too_far: bool = False


def replay_after(*, room_id: int, since: int, start: int | None = None) -> Replay:
    """The batch of a replay after `since` that starts after `start` (default: `since`): at
    most CHAT_REPLAY_BATCH events, one statement (a connect not far behind is one batch)."""
    start = since if start is None else start
    limit = settings.CHAT_REPLAY_BATCH
    behind = settings.CHAT_REPLAY_MAX_EVENTS - (start - since)
    events, snapshots, latest = events_and_snapshots(
        room_id=room_id, since=start, limit=limit, max_behind=behind
    )
    if latest - start > behind:
        return Replay([], [], start, too_far=True)
    if len(events) == limit:  # more to come: the snapshots come with the last batch
        return Replay(events, [], events[-1][0], more=True)
    return Replay(events, snapshots, events[-1][0] if events else start)


@dataclass(frozen=True)
class Transcript:
    """A consistent view of a room at `seq`: the messages, with streaming text so far."""

    room: Room
    seq: int
    messages: list[dict[str, Any]]
    has_earlier: bool


def transcript(*, room: Room, limit: int = 100) -> Transcript:
    """The newest `limit` visible messages, read in one snapshot so `seq` matches them."""
    outermost = not connection.in_atomic_block
    with transaction.atomic():
        if outermost:  # one snapshot for seq, messages and chunks
            with connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        seq = room_latest_seq(room_id=room.pk)
        messages, has_earlier = _messages_page(room=room, through=seq, limit=limit)
    return Transcript(room=room, seq=seq, messages=messages, has_earlier=has_earlier)


def transcript_before(*, room: Room, before: int, limit: int = 100) -> Transcript:
    """The `limit` visible messages just before seq `before` ("load earlier")."""
    messages, has_earlier = _messages_page(room=room, through=before - 1, limit=limit)
    return Transcript(room=room, seq=before - 1, messages=messages, has_earlier=has_earlier)


def _messages_page(*, room: Room, through: int, limit: int) -> tuple[list[dict[str, Any]], bool]:
    rows = list(
        Message.objects.filter(room=room, seq__lte=through)
        .select_related("author")
        .order_by("-seq")[: limit + 1]
    )
    has_earlier = len(rows) > limit
    rows = list(reversed(rows[:limit]))
    ids = [m.pk for m in rows]
    snaps = {s.message_id: s for s in snapshots_streaming(room_id=room.pk)}
    turn_of, turn_status = turn_queue().transcript_turns(message_ids=ids)
    calls_of = turn_queue().transcript_calls(
        message_ids=[m.pk for m in rows if m.role == Message.Role.ASSISTANT]
    )
    messages = []
    for m in rows:
        data = message_wire(m, turn_id=turn_of.get(m.pk)).model_dump()
        snap = snaps.get(m.pk)
        if snap is not None:
            data["content"] = snap.content
            data["html"] = render_markdown(snap.content)
            data["next_index"] = snap.next_index
        data["turn_status"] = turn_status.get(m.pk)
        # a moderated answer shows no tool cards either (the live page removes them too)
        calls = [] if m.status in _REDACTED else calls_of.get(m.pk, [])
        data["tool_calls"] = [c.model_dump() for c in calls]
        data["initials"] = initials(data["author"]["name"] if data["author"] else "AI")
        data["hue"] = avatar_hue(m.author_id)
        messages.append(data)
    return messages, has_earlier


def avatar_hue(user_id: int | None) -> int:
    """A stable colour per person (static/js/room/view.js computes the same)."""
    return 265 if user_id is None else (user_id * 47) % 360


def initials(name: str) -> str:
    """Up to two letters for an avatar."""
    parts = [p for p in name.replace("(", " ").split() if p[:1].isalnum()]
    return ("".join(p[0] for p in parts[:2]) or "?").upper()


def members_of(*, room: Room) -> QuerySet[Membership]:
    return (
        Membership.objects.filter(room=room, banned_at__isnull=True)
        .select_related("user")
        .order_by("joined_at")
    )


def user_can_moderate(*, room: Room, user: Any) -> bool:
    return Membership.objects.filter(
        Q(role=Membership.Role.OWNER) | Q(role=Membership.Role.MODERATOR), room=room, user=user
    ).exists()


# --- search -----------------------------------------------------------------------------------

SEARCH_EXCERPT_CHARS = 300


def messages_search(
    *,
    room_id: int,
    query: str,
    author: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 10,
) -> list[dict[str, Any]]:
    """The room's visible messages matching `query` (full text, websearch syntax: words, "a
    phrase", -not, or), newest first: [{seq, author, role, created_at, excerpt}].

    `author` is a person's display name or username (case-insensitive; a first name matches
    "Bob Smith" too) or "Assistant"; `since` is inclusive, `until` exclusive. A blank `query`
    lists the newest messages passing the other filters. Only people's and the assistant's
    finished text is searched: not hidden or streaming messages, nor tool or system rows.
    """
    rows = (
        Message.objects.filter(room_id=room_id, role__in=[Message.Role.USER, Message.Role.ASSISTANT])
        .exclude(status__in=[Message.Status.HIDDEN, Message.Status.DELETED, Message.Status.STREAMING])
        .exclude(content="")
        .select_related("author")
        .order_by("-seq")
    )
    if author is not None and author.strip():
        rows = rows.filter(_author_matches(author.strip()))
    if since is not None:
        rows = rows.filter(created_at__gte=since)
    if until is not None:
        rows = rows.filter(created_at__lt=until)
    words = query.strip()
    if words:
        tsquery = SearchQuery(words, search_type="websearch", config=SEARCH_CONFIG)
        # the same expression as the index message_content_search_idx, so the index serves it
        rows = rows.alias(document=SearchVector("content", config=SEARCH_CONFIG)).filter(document=tsquery)
        rows = rows.annotate(
            excerpt=SearchHeadline(
                "content", tsquery, config=SEARCH_CONFIG, start_sel="**", stop_sel="**",
                max_words=35, min_words=12, max_fragments=2, fragment_delimiter=" … ",
            )
        )  # fmt: skip
    found = []
    for m in rows[: max(1, limit)]:
        excerpt = getattr(m, "excerpt", None) or m.content
        found.append(
            {
                "seq": m.seq,
                "author": _author_name(m),
                "role": m.role,
                "created_at": m.created_at.isoformat(),
                "excerpt": _trimmed(excerpt, SEARCH_EXCERPT_CHARS),
            }
        )
    return found


def _author_matches(author: str) -> Q:
    if author.lower() in ("assistant", "ai", "the assistant"):
        return Q(role=Message.Role.ASSISTANT)
    return (
        Q(author__first_name__iexact=author)
        | Q(author__username__iexact=author)
        | Q(author__first_name__istartswith=author + " ")  # "Bob" finds "Bob Smith"
    )


def _author_name(message: Message) -> str:
    if message.author_id:
        return display_name(message.author)
    return "Assistant" if message.role == Message.Role.ASSISTANT else "(deleted user)"


def _trimmed(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def calls_named(*, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The transcript's messages with `initiator_name` on each tool call (one query for the
    names), for the cards' "waiting for <name>" (the wire only carries the person's id)."""
    ids = {c["initiator_id"] for m in messages for c in m.get("tool_calls", ()) if c["initiator_id"]}
    if ids:
        users = get_user_model().objects.filter(pk__in=ids).only("pk", "first_name", "username")
        names = {u.pk: display_name(u) for u in users}
    else:
        names = {}
    for m in messages:
        for call in m.get("tool_calls", ()):
            call["initiator_name"] = names.get(call["initiator_id"], "")
    return messages


def room_notes(*, room: Room, limit: int = 50) -> list[RoomNote]:
    """The room's newest `limit` notes, newest last (the room page's notes panel)."""
    newest = RoomNote.objects.filter(room=room).order_by("-created_at", "-id")[:limit]
    return list(reversed(newest))


def user_is_guest(user: Any) -> bool:
    """A guest account: made from a display name alone (rooms.services.guest_create)."""
    return bool(user.username.startswith("guest-") and not user.has_usable_password())


def user_may_create(*, user: Any, what: str) -> bool:
    """Whether `user` may create rooms or tokens (`what`): guests only if settings allow it."""
    if not user_is_guest(user):
        return True
    return bool(settings.GUESTS_MAY_CREATE_ROOMS if what == "rooms" else settings.GUESTS_MAY_CREATE_TOKENS)
