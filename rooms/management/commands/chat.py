from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from rooms.client import RoomClient


class Command(BaseCommand):
    help = "Send to and tail a room from a terminal, with resume (the Python protocol client)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("room", help="room slug")
        parser.add_argument("--url", default=os.environ.get("CHAT_URL", "http://127.0.0.1:8000"))
        parser.add_argument("--token", default=os.environ.get("CHAT_TOKEN"))
        parser.add_argument("--send", action="append", default=[], help="message to send (repeat)")
        parser.add_argument("--tail", action="store_true", help="keep printing the room live")
        parser.add_argument("--since", type=int, default=None, help="replay from this seq")
        parser.add_argument(
            "--drop-after",
            type=int,
            default=0,
            help="demo of resume: drop the socket after N deltas, then reconnect with since",
        )

    def handle(self, *args: Any, **opts: Any) -> None:
        if not opts["token"]:
            raise CommandError("a token is needed: --token or CHAT_TOKEN (manage.py create_token)")
        try:
            asyncio.run(self._run(opts))
        except KeyboardInterrupt:
            pass

    async def _run(self, opts: dict[str, Any]) -> None:
        client = RoomClient(opts["url"], opts["room"], token=opts["token"])
        out = sys.stdout
        deltas = 0
        live = False

        shown: dict[int, int] = {}  # characters of each message already on screen

        def write_rest(message_id: int, content: str) -> None:
            out.write(content[shown.get(message_id, 0) :])
            shown[message_id] = max(shown.get(message_id, 0), len(content))

        def show(frame: dict[str, Any]) -> None:
            nonlocal deltas
            kind = frame["type"]
            if kind == "message" and (live or opts["since"] is not None):
                m = frame["message"]
                who = (m["author"] or {}).get("name", "Assistant")
                out.write(f"\n[{frame['seq']}] {who}: ")
                shown[m["id"]] = 0
                write_rest(m["id"], m["content"])
            elif kind == "delta" and live:
                deltas += 1
                write_rest(frame["message_id"], client.state.messages[frame["message_id"]].content)
            elif kind == "snapshot" and live:
                out.write(f"\n-- resumed at chunk {frame['next_index']}; the text since the drop: --\n")
                write_rest(frame["message_id"], frame["content"])
            elif kind == "message_update" and frame["message"]["id"] in shown:
                m = frame["message"]
                write_rest(m["id"], m["content"])
                if m["status"] != "complete":
                    out.write(f"  [{m['status']}]")
            elif kind == "turn" and frame["turn"]["status"] in ("done", "parked") and live:
                out.write(f"\n[{frame['seq']}] (turn {frame['turn']['id']} {frame['turn']['status']})")
            elif kind in ("tool_call", "tool_update") and live:
                call = frame["call"]
                result = call["output"] if call["state"] == "done" else call["error"]
                out.write(f"\n[{frame['seq']}] tool {call['name']} #{call['id']} {call['state']}")
                out.write(f": {json.dumps(call['input'])}" if kind == "tool_call" else "")
                out.write(f" -> {json.dumps(result)}" if result is not None else "")
            elif kind == "error":
                out.write(f"\n! error {frame['code']}: {frame['detail']}")
            elif kind == "ready":
                out.write(f"\n-- ready at seq {frame['seq']} --")
            out.flush()

        client.on_frame = show
        if opts["since"] is not None:
            client.state.last_seq = opts["since"]
        await client.connect()
        live = True
        if opts["since"] is None:
            for seq, role, status, content in client.state.transcript()[-10:]:
                out.write(f"\n[{seq}] {role} ({status}): {content}")
        for text in opts["send"]:
            client_id = await client.send(text)
            ack = await client.wait_ack(client_id)
            out.write(f"\n-- acked: message {ack['message_id']} at seq {ack['seq']} --")
        dropped = False
        while opts["tail"] or self._streaming(client):
            if opts["drop_after"] and not dropped and deltas >= opts["drop_after"]:
                dropped = True
                out.write(
                    f"\n-- dropping the socket after {deltas} deltas;"
                    f" reconnecting with since={client.state.last_seq} --"
                )
                await client.drop()
                await client.connect()
            await asyncio.sleep(0.05)
        out.write("\n")
        await client.close()

    @staticmethod
    def _streaming(client: RoomClient) -> bool:
        busy = any(m.status == "streaming" for m in client.state.messages.values())
        queued = any(t["status"] in ("queued", "running") for t in client.state.turns.values())
        return busy or queued
