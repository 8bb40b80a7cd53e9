"""A small closed-loop HTTP/1.1 load generator (its own process, loopback only).

``python -m bench.loadgen PORT --connections C --warmup W --duration D [--path P]`` keeps C
keep-alive connections busy, each sending the next ``GET P`` (default ``/``) as soon as the
previous response is read, and prints one JSON line: requests completed in the measured
window, requests/s, and p50 / p99 latency in ms. Raw asyncio streams, not an HTTP client
library, so the generator costs far less CPU per request than the server it measures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time


def _request(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()


async def _connection(
    port: int,
    start: float,
    stop: float,
    latencies: list[float],
    errors: list[str],
    request: bytes,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while True:
            sent = time.perf_counter()
            if sent >= stop:
                return
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            if length:
                await reader.readexactly(length)
            done = time.perf_counter()
            if not head.startswith(b"HTTP/1.1 200"):
                errors.append(head.split(b"\r\n", 1)[0].decode(errors="replace"))
            elif sent >= start and done <= stop:
                latencies.append(done - sent)
    finally:
        writer.close()


async def run(
    port: int, connections: int, warmup: float, duration: float, path: str = "/"
) -> dict[str, object]:
    latencies: list[float] = []
    errors: list[str] = []
    begin = time.perf_counter()
    start, stop = begin + warmup, begin + warmup + duration
    await asyncio.gather(
        *(
            _connection(port, start, stop, latencies, errors, _request(path))
            for _ in range(connections)
        )
    )
    latencies.sort()
    count = len(latencies)

    def pct(p: float) -> float:
        return latencies[min(count - 1, int(p * count))] * 1e3 if count else 0.0

    return {
        "requests": count,
        "rps": count / duration,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "connections": connections,
        "duration_s": duration,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen")
    parser.add_argument("port", type=int)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--path", default="/")
    args = parser.parse_args()
    result = asyncio.run(run(args.port, args.connections, args.warmup, args.duration, args.path))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
