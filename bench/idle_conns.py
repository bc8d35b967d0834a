#!/usr/bin/env python3
"""Opens idle keep-alive connections for bench/connections.sh.

    idle_conns.py --target HOST:PORT --count N --mode h1|tls|h2 [--base 127.1] [--body BYTES]

Each connection comes from its own loopback address (127.1.x.y: distinct
clients, so per-address caps do not apply), completes one GET /healthz
(HTTP/1.1 in the clear, HTTP/1.1 over TLS, or HTTP/2 over TLS by ALPN;
with --body, an HTTP/1.1 POST /configs of that many bytes, a JSON document
the app reads in full and refuses with 422, so every proxy and the app keep
the connection),
reads the whole answer, and then stays open and idle. Prints "ready N" once
all are open (N: how many succeeded), then waits for a line on stdin and
closes them.
"""

import argparse
import asyncio
import socket
import ssl
import struct
import sys


def sources(base, count):
    a, b = (int(x) for x in base.split("."))
    for i in range(count):
        yield f"{a}.{b}.{(i // 250) % 256}.{i % 250 + 1}"


async def open_from(source, host, port, tls):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((source, 0))
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, port))
    return await asyncio.open_connection(sock=sock, ssl=tls, server_hostname="localhost" if tls else None)


async def read_h1(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    await reader.readexactly(length)
    return int(head.split()[1])


def frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def literal(name, value):
    name, value = name.encode(), value.encode()
    return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value


async def exchange_h2(reader, writer):
    block = literal(":method", "GET") + literal(":scheme", "https") + literal(":path", "/healthz") + literal(":authority", "localhost")
    writer.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(0x4, 0, 0) + frame(0x1, 0x5, 1, block))
    await writer.drain()
    while True:
        head = await reader.readexactly(9)
        length, kind, flags = int.from_bytes(head[:3], "big"), head[3], head[4]
        stream = int.from_bytes(head[5:9], "big") & 0x7FFFFFFF
        await reader.readexactly(length)
        if kind == 0x4 and not flags & 0x1:
            writer.write(frame(0x4, 0x1, 0))  # SETTINGS ACK
        if stream == 1 and kind in (0x0, 0x1) and flags & 0x1:
            return 200


async def one(source, host, port, mode, tls, held, semaphore, body):
    async with semaphore:
        try:
            reader, writer = await open_from(source, host, port, tls)
            if mode == "h2":
                await asyncio.wait_for(exchange_h2(reader, writer), 30)
            elif body:
                document = b'{"name":"idle","data":"' + b"x" * (body - 26) + b'"}'
                head = f"POST /configs HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {len(document)}\r\n\r\n"
                writer.write(head.encode() + document)
                await writer.drain()
                await asyncio.wait_for(read_h1(reader), 30)
            else:
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
                await writer.drain()
                await asyncio.wait_for(read_h1(reader), 30)
            held.append(writer)
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ssl.SSLError, ValueError) as e:
            print(f"connection from {source} failed: {e!r}", file=sys.stderr)


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", required=True)
    parser.add_argument("--count", type=int, default=10000)
    parser.add_argument("--mode", choices=["h1", "tls", "h2"], default="h1")
    parser.add_argument("--base", default="127.1")
    parser.add_argument("--body", type=int, default=0)
    args = parser.parse_args()
    host, port = args.target.rsplit(":", 1)
    tls = None
    if args.mode != "h1":
        tls = ssl.create_default_context()
        tls.check_hostname = False
        tls.verify_mode = ssl.CERT_NONE
        tls.set_alpn_protocols(["h2"] if args.mode == "h2" else ["http/1.1"])
    held = []
    semaphore = asyncio.Semaphore(200 if not args.body else 20)
    await asyncio.gather(
        *(one(s, host, int(port), args.mode, tls, held, semaphore, args.body) for s in sources(args.base, args.count))
    )
    print(f"ready {len(held)}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    for writer in held:
        writer.close()


if __name__ == "__main__":
    asyncio.run(main())
