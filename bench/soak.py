#!/usr/bin/env python3
"""Attackers and one well-behaved client against the gateway (bench/soak.sh).

    soak.py --gateway HOST:PORT --seconds N --role good|attack

`good`: the well-behaved client (from 127.0.5.1) reads and writes configs
at a steady 15 requests/second, under its rate limit, on one keep-alive
connection, and prints its success rate and latency percentiles.
`attack`: a mix of cheap attacks, each from its own address (127.0.9.x),
each under the rate limit per address unless said otherwise: malformed and
truncated bodies, stalled uploads, bodies that never come, responses never
read, slowloris heads, an idle-connection flood, HTTP/2 streams left
without window, odd targets and headers, and one address far over its
rate; prints what the attackers got. The two run as separate processes,
so the attackers' own work never delays the client's clock.
"""

import argparse
import asyncio
import json
import socket
import struct
import time

GOOD_SOURCE = "127.0.5.1"


async def connect(source, host, port):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((source, 0))
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, port))
    return await asyncio.open_connection(sock=sock)


async def read_response(reader):
    """Reads one response with a Content-Length body; returns its status."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    if length:
        await reader.readexactly(length)
    return status


class Tally:
    def __init__(self):
        self.counts = {}

    def add(self, key):
        self.counts[key] = self.counts.get(key, 0) + 1


async def well_behaved(host, port, seconds, rate=15.0):
    """GETs (and a PUT every tenth request) at `rate`, timing each."""
    latencies, failures, sent = [], 0, 0
    reader = writer = None
    deadline = time.monotonic() + seconds
    next_at = time.monotonic()
    while time.monotonic() < deadline:
        next_at += 1.0 / rate
        sent += 1
        if sent % 10 == 0:
            body = json.dumps({"data": [{"k": sent}]}).encode()
            request = (
                b"PUT /configs/soak-small HTTP/1.1\r\nHost: soak\r\nContent-Type: application/json\r\n"
                + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
            )
        else:
            request = b"GET /configs/soak-small HTTP/1.1\r\nHost: soak\r\n\r\n"
        started = time.monotonic()
        try:
            if writer is None:
                reader, writer = await connect(GOOD_SOURCE, host, port)
            writer.write(request)
            await writer.drain()
            status = await asyncio.wait_for(read_response(reader), 10)
            if status == 200:
                latencies.append((time.monotonic() - started) * 1000)
            else:
                failures += 1
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError):
            failures += 1
            if writer is not None:
                writer.close()
            reader = writer = None
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    latencies.sort()

    def pct(p):
        return round(latencies[min(len(latencies) - 1, int(len(latencies) * p))], 3) if latencies else None

    return {
        "requests": sent,
        "ok": len(latencies),
        "success_rate": round(len(latencies) / sent, 5) if sent else 0,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "max_ms": round(latencies[-1], 3) if latencies else None,
    }


async def paced(seconds, rate, action):
    """Runs `action()` as a task `rate` times a second for `seconds`."""
    tasks = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        tasks.append(asyncio.create_task(action()))
        await asyncio.sleep(1.0 / rate)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def one_shot(source, host, port, payload, tally, name, hold=0.0, read=True):
    """An attack request: send `payload`, optionally read the answer, hold the connection."""

    async def run():
        try:
            reader, writer = await connect(source, host, port)
        except OSError:
            tally.add(f"{name}:refused")
            return
        try:
            writer.write(payload)
            await writer.drain()
            if read:
                status = await asyncio.wait_for(read_response(reader), 15)
                tally.add(f"{name}:{status}")
            if hold:
                await asyncio.sleep(hold)
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError):
            tally.add(f"{name}:closed")
        finally:
            writer.close()

    return run


def h2_frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def hpack_literal(name, value):
    name, value = name.encode(), value.encode()
    return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value


async def h2_no_window(source, host, port, tally, seconds):
    """An HTTP/2 (h2c) connection that asks for large responses with a
    window of zero and never opens it; counts the streams the gateway resets."""
    try:
        reader, writer = await connect(source, host, port)
    except OSError:
        tally.add("h2_no_window:refused")
        return
    settings = struct.pack(">HI", 0x4, 0)  # SETTINGS_INITIAL_WINDOW_SIZE = 0
    writer.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + h2_frame(0x4, 0, 0, settings))
    block = (
        hpack_literal(":method", "GET")
        + hpack_literal(":scheme", "http")
        + hpack_literal(":path", "/configs/soak-big")
        + hpack_literal(":authority", "soak")
    )
    for stream in range(1, 40, 2):
        writer.write(h2_frame(0x1, 0x5, stream, block))  # HEADERS, END_STREAM | END_HEADERS
    await writer.drain()
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            head = await asyncio.wait_for(reader.readexactly(9), max(0.1, deadline - time.monotonic()))
            length = int.from_bytes(head[:3], "big")
            body = await reader.readexactly(length)
            if head[3] == 0x3:
                tally.add("h2_no_window:stream_reset")
            elif head[3] == 0x4 and not head[4] & 0x1:
                writer.write(h2_frame(0x4, 0x1, 0))  # SETTINGS ACK
            elif head[3] == 0x6 and not head[4] & 0x1:
                writer.write(h2_frame(0x6, 0x1, 0, body))  # PING ACK
    except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError):
        pass
    writer.close()


async def slowloris(source, host, port, tally, seconds, count=100):
    async def one():
        try:
            reader, writer = await connect(source, host, port)
            writer.write(b"GET /configs HTTP/1.1\r\nHost: soak\r\nX-Slow: ")
            while True:
                await asyncio.sleep(2)
                writer.write(b"a")
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            tally.add("slowloris:closed")

    tasks = [asyncio.create_task(one()) for _ in range(count)]
    await asyncio.sleep(seconds)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def idle_flood(source, host, port, tally, seconds, count=300):
    """More idle connections than one client may hold."""
    held = []
    for _ in range(count):
        try:
            held.append(await connect(source, host, port))
        except OSError:
            tally.add("idle_flood:refused")
    await asyncio.sleep(seconds)
    for _, writer in held:
        writer.close()


async def attacks(host, port, seconds, tally):
    def src(n):
        return f"127.0.9.{n}"

    malformed = b"POST /configs HTTP/1.1\r\nHost: soak\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"
    truncated = b"POST /configs HTTP/1.1\r\nHost: soak\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"na"
    stalled = b"POST /configs HTTP/1.1\r\nHost: soak\r\nContent-Type: application/json\r\nContent-Length: 200000\r\n\r\n" + b" " * 1000
    stalled_chunked = (
        b"POST /configs HTTP/1.1\r\nHost: soak\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"3e8\r\n" + b" " * 1000 + b"\r\n"
    )
    no_body = b"GET /configs/soak-small HTTP/1.1\r\nHost: soak\r\nContent-Length: 10\r\n\r\nhello"
    unread = b"GET /configs/soak-big HTTP/1.1\r\nHost: soak\r\n\r\n"
    odd = [
        b"OPTIONS * HTTP/1.1\r\nHost: soak\r\n\r\n",
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
        b"GET /configs HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET /configs/soak-small HTTP/1.1\r\nHost: soak\r\nConnection: Host, X-Request-Id\r\n\r\n",
        b"GET /nowhere/" + b"x" * 20000 + b" HTTP/1.1\r\nHost: soak\r\n\r\n",
    ]
    odd_i = [0]

    def odd_request():
        payload = odd[odd_i[0] % len(odd)]
        odd_i[0] += 1
        return one_shot(src(8), host, port, payload, tally, "odd")()

    await asyncio.gather(
        paced(seconds, 15, one_shot(src(1), host, port, malformed, tally, "malformed")),
        paced(seconds, 15, one_shot(src(2), host, port, truncated, tally, "truncated", read=False)),
        paced(seconds, 15, one_shot(src(3), host, port, stalled, tally, "stalled_upload")),
        paced(seconds, 15, one_shot(src(3 + 10), host, port, stalled_chunked, tally, "stalled_chunked")),
        paced(seconds, 15, one_shot(src(4), host, port, no_body, tally, "body_never_comes")),
        paced(seconds, 5, one_shot(src(5), host, port, unread, tally, "unread_response", hold=seconds, read=False)),
        slowloris(src(6), host, port, tally, seconds),
        idle_flood(src(7), host, port, tally, seconds),
        paced(seconds, 15, odd_request),
        *[h2_no_window(src(20 + i), host, port, tally, seconds) for i in range(5)],
        # Over its rate: 100 requests a second from one address.
        paced(seconds, 100, one_shot(src(9), host, port, b"GET /configs/soak-small HTTP/1.1\r\nHost: soak\r\n\r\n", tally, "flood")),
    )


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--gateway", required=True)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--role", choices=["good", "attack"], required=True)
    args = parser.parse_args()
    host, port = args.gateway.rsplit(":", 1)
    port = int(port)
    if args.role == "good":
        print(json.dumps(await well_behaved(host, port, args.seconds)))
        return
    tally = Tally()
    await attacks(host, port, args.seconds, tally)
    print(json.dumps(dict(sorted(tally.counts.items()))))


if __name__ == "__main__":
    asyncio.run(main())
