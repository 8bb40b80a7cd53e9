"""The end-to-end server: ``python -m bench.server VARIANT`` runs uvicorn on a free loopback port.

It binds the socket itself (port 0, so no race for a port), prints ``PORT <n>`` once
listening, serves until its standard input is closed (then shuts down like on SIGTERM,
lifespan included) and prints one JSON line with the tasks it ran and the spans exported.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import threading

import uvicorn

from bench import apps, probe


def main() -> None:
    name = sys.argv[1]
    variant = apps.build(name)
    probe.install()
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets whose proto says TCP.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        variant.app,
        loop="asyncio",
        http="h11",
        lifespan="on",
        access_log=False,
        log_level="warning",
        backlog=1024,
    )
    server = uvicorn.Server(config)

    async def serve() -> None:
        loop = asyncio.get_running_loop()

        def wait_for_stdin_close() -> None:
            sys.stdin.read()
            loop.call_soon_threadsafe(setattr, server, "should_exit", True)

        threading.Thread(target=wait_for_stdin_close, daemon=True).start()
        task = asyncio.ensure_future(server.serve(sockets=[sock]))
        while not server.started and not task.done():
            await asyncio.sleep(0.01)
        print(f"PORT {sock.getsockname()[1]}", flush=True)
        await task

    asyncio.run(serve())
    spans = variant.spans_exported()
    ran = {
        "tasks_async": apps.RAN["async"],
        "tasks_sync": apps.RAN["sync"],
        "spans": spans,
        "requests_load": probe.COUNTS["loads"],
        "requests_stats": probe.COUNTS["stats"],
    }
    print(json.dumps(ran))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
