"""The injector: a separate process that produces the frames the servers fan out.

    python -m bench.perf.inject relay --port P --n N [--rate R]
    python -m bench.perf.inject layer --redis URL --prefix P --group G --n N [--rate R]
                                      [--kind floor|delta --message-id M]

`relay` sends text frames to the bare relay's /pub socket; `layer` calls `group_send` on the
channels_redis pub/sub layer (the same layer and Redis as the servers). Unpaced (`--rate 0`)
sends as fast as one sequential sender can; paced sends N frames at R per second. Every frame
carries the wall-clock time (ns) at which it was handed to the transport, so clients measure
latency. It prints `ready`, waits for a line on stdin, sends, prints a JSON summary and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time


def floor_frame(i: int) -> str:
    # the 61-byte token delta of research/perf-floors.md
    return '{"t":"d","seq":%d,"ts":%d,"text":"hello wo"}' % (i, time.time_ns())


def delta_frame(message_id: int, i: int, stamp: bool) -> str:
    text = "[%d]" % time.time_ns() if stamp else "hello wo"
    return '{"type":"delta","message_id":%d,"index":%d,"text":"%s"}' % (message_id, i, text)


async def _paced(n: int, rate: float, send) -> tuple[float, float]:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    for i in range(n):
        if rate > 0:
            delay = t0 + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
        await send(i)
    return t0, loop.time()


async def run_relay(args: argparse.Namespace) -> dict:
    from websockets.asyncio.client import connect

    async with connect(f"ws://127.0.0.1:{args.port}/pub", compression=None, max_size=None) as ws:
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)

        async def send(i: int) -> None:
            await ws.send(floor_frame(i))

        t0, t1 = await _paced(args.n, args.rate, send)
    return {"sent": args.n, "seconds": t1 - t0}


async def run_layer(args: argparse.Namespace) -> dict:
    from channels_redis.pubsub import RedisPubSubChannelLayer

    layer = RedisPubSubChannelLayer(hosts=[args.redis], prefix=args.prefix)
    await layer.group_send("bench-warmup", {"type": "bench.warmup"})  # connect now (nobody listens)
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    stamp = args.rate > 0
    publish_ns: list[int] = []

    async def send(i: int) -> None:
        if args.kind == "floor":
            message = {"type": "bench.frame", "text": floor_frame(i)}
        else:
            frame = delta_frame(args.message_id, args.start_index + i, stamp)
            message = {
                "type": "room.delta",
                "message_id": args.message_id,
                "index": args.start_index + i,
                "texts": [frame],
            }
        t = time.perf_counter_ns()
        await layer.group_send(args.group, message)
        publish_ns.append(time.perf_counter_ns() - t)

    t0, t1 = await _paced(args.n, args.rate, send)
    publish_ns.sort()
    await layer.flush()
    return {
        "sent": args.n,
        "seconds": t1 - t0,
        "publish_p50_ms": publish_ns[len(publish_ns) // 2] / 1e6,
        "publish_p99_ms": publish_ns[int(len(publish_ns) * 0.99)] / 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["relay", "layer"])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--redis", default="")
    parser.add_argument("--prefix", default="")
    parser.add_argument("--group", default="bench")
    parser.add_argument("--kind", choices=["floor", "delta"], default="floor")
    parser.add_argument("--message-id", type=int, default=0)
    parser.add_argument("--start-index", type=int, default=0)
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--rate", type=float, default=0.0)
    args = parser.parse_args()
    runner = run_relay if args.mode == "relay" else run_layer
    print(json.dumps(asyncio.run(runner(args))), flush=True)


if __name__ == "__main__":
    main()
