"""Floor 1: a bare `websockets` relay, one process. `/sub` sockets listen; every text frame a
`/pub` socket sends is fanned out to all of them with `websockets.broadcast` (no JSON, no
channel layer, no database): what one Python process and this machine's loopback can do.

    python -m bench.perf.relay --port 8765
"""

from __future__ import annotations

import argparse
import asyncio

from websockets.asyncio.server import broadcast, serve

SUBS: set = set()


async def handler(ws) -> None:
    path = ws.request.path
    if path.startswith("/pub"):
        async for message in ws:
            broadcast(SUBS, message)
        return
    SUBS.add(ws)
    try:
        await ws.wait_closed()
    finally:
        SUBS.discard(ws)


async def main(port: int) -> None:
    async with serve(
        handler,
        "127.0.0.1",
        port,
        compression=None,
        max_size=None,
        ping_interval=None,
        max_queue=None,
        backlog=1024,
    ):
        print(f"relay listening on {port}", flush=True)
        await asyncio.Future()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(main(parser.parse_args().port))
