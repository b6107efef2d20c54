"""A small HTTP/1.1 keep-alive load generator, for machines without wrk: `python -m bench.loadgen`.

Runs in its own process (never inside the server under test), replays the same pre-signed request
file as bench/wrk.lua, and prints the same `BENCH {json}` line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class Tally:
    """What all connections saw: latencies (s), status counts, errors, wrap-arounds of the file."""

    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    errors: int = 0
    wrapped: int = 0
    position: int = 0


def raw_requests(path: str, target: str, host: str) -> list[bytes]:
    """Each line of the request file (`id, timestamp, signature, body`, tab-separated) as raw HTTP bytes."""
    requests = []
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            msg_id, timestamp, signature, body = line.rstrip("\n").split("\t", 3)
            data = body.encode()
            head = (f"POST {target} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(data)}\r\nwebhook-id: {msg_id}\r\nwebhook-timestamp: {timestamp}\r\n"
                    f"webhook-signature: {signature}\r\n\r\n")
            requests.append(head.encode() + data)
    return requests


def _next(requests: list[bytes], tally: Tally) -> bytes:
    if tally.position >= len(requests):
        tally.position, tally.wrapped = 0, tally.wrapped + 1
    tally.position += 1
    return requests[tally.position - 1]


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)
    return status


async def _connection(host: str, port: int, requests: list[bytes], stop_at: float, tally: Tally) -> None:
    reader = writer = None
    while time.perf_counter() < stop_at:
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port)
            started = time.perf_counter()
            writer.write(_next(requests, tally))
            status = await _read_response(reader)
            tally.latencies.append(time.perf_counter() - started)
            tally.statuses[status] = tally.statuses.get(status, 0) + 1
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
            tally.errors += 1
            if writer is not None:
                writer.close()
            reader = writer = None
    if writer is not None:
        writer.close()


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank) of `values`; 0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


async def run(url: str, path: str, connections: int, duration_s: float) -> dict:
    """Drive `url` with `connections` keep-alive connections for `duration_s`; the summary wrk.lua prints."""
    parts = urlsplit(url)
    requests = raw_requests(path, parts.path or "/", parts.netloc)
    tally = Tally()
    started = time.perf_counter()
    stop_at = started + duration_s
    await asyncio.gather(*(_connection(parts.hostname, parts.port, requests, stop_at, tally)
                           for _ in range(connections)))
    elapsed = time.perf_counter() - started
    ms = [v * 1000 for v in tally.latencies]
    return {"requests": len(ms), "duration_s": elapsed, "p50_ms": percentile(ms, 50), "p99_ms": percentile(ms, 99),
            "max_ms": max(ms, default=0.0), "errors": tally.errors, "wrapped": tally.wrapped,
            "statuses": {str(k): v for k, v in tally.statuses.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__)
    parser.add_argument("url")
    parser.add_argument("requests_file")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--duration", type=float, default=5.0)
    args = parser.parse_args(argv)
    summary = asyncio.run(run(args.url, args.requests_file, args.connections, args.duration))
    print("BENCH " + json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
