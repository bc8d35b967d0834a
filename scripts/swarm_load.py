#!/usr/bin/env python3
"""Steady load through the gateway for scripts/swarm-e2e.sh, and its tally.

`drive`: each client (one thread, one keep-alive HTTPS connection from its
own source address) sends, at its own steady rate, reads (`GET
/configs/NAME`) and idempotent writes (`PUT /configs/NAME` with the write
token), over names made beforehand (`seed`). Every answer and every
connection error is written to the log, one JSON line per second:
`{"t": SECOND, "n": {"GET 200": 31, "PUT 503+ra": 2, "GET error:ConnectionResetError": 1}}`
(`+ra`: the answer carried Retry-After). It runs until SIGTERM.

`probe HOST PORT KIND`: exits 0 only if the service itself answers there.

`tally LOG FROM TO`: what the clients saw between two instants (Unix
seconds, inclusive), as JSON: counts by kind, failures (every non-2xx and
every connection error), and the seconds in which any failed.

Standard library only: it runs on the machine's own python3.
"""
import http.client
import json
import signal
import socket
import ssl
import sys
import threading
import time
from collections import Counter

NAMES = [f"swarm-e2e-{i}" for i in range(20)]


def connect(host, port, source, ca):
    context = ssl.create_default_context(cafile=ca)
    context.check_hostname = False  # the generated certificate names localhost
    return http.client.HTTPSConnection(host, port, timeout=10, context=context, source_address=(source, 0))


def request(conn, method, path, token, body=None):
    headers = {"Content-Type": "application/json"}
    if method != "GET":
        headers["Authorization"] = f"Bearer {token}"
    conn.request(method, path, body=body, headers=headers)
    response = conn.getresponse()
    response.read()
    return response.status, response.getheader("Retry-After") is not None


def seed(host, port, source, ca, token):
    """Creates the names the load reads and writes (201, or 409 if there)."""
    conn = connect(host, port, source, ca)
    for name in NAMES:
        body = json.dumps({"name": name, "data": [{"seeded": True}]})
        status, _ = request(conn, "POST", "/configs", token, body)
        if status not in (201, 409):
            sys.exit(f"seeding {name}: {status}")
        time.sleep(0.06)  # under the per-address limit
    print(f"seeded {len(NAMES)} configs")


class Tally:
    def __init__(self, out):
        self.out = out
        self.lock = threading.Lock()
        self.second = int(time.time())
        self.counts = Counter()

    def add(self, kind):
        with self.lock:
            now = int(time.time())
            if now != self.second:
                self._flush()
                self.second = now
            self.counts[kind] += 1

    def _flush(self):
        if self.counts:
            self.out.write(json.dumps({"t": self.second, "n": self.counts}) + "\n")
            self.out.flush()
        self.counts = Counter()

    def close(self):
        with self.lock:
            self._flush()


def client(index, host, port, source, ca, token, rate, tally, stop):
    conn = None
    sent = 0
    start = time.monotonic()
    while not stop.is_set():
        # Steady: the n-th request leaves at start + n / rate, whatever the
        # last one cost (no burst to catch up after a slow answer).
        due = start + sent / rate
        pause = due - time.monotonic()
        if pause > 0:
            stop.wait(pause)
        elif pause < -1:
            start, sent = time.monotonic(), 0
        sent += 1
        name = NAMES[(index * 7 + sent) % len(NAMES)]
        write = sent % 5 == 0
        method = "PUT" if write else "GET"
        body = json.dumps({"data": [{"client": index, "n": sent}]}) if write else None
        try:
            if conn is None:
                conn = connect(host, port, source, ca)
            status, retry_after = request(conn, method, f"/configs/{name}", token, body)
            kind = f"{method} {status}"
            if status >= 300 and retry_after:
                kind += "+ra"
        except (OSError, http.client.HTTPException) as error:
            kind = f"{method} error:{type(error).__name__}"
            if conn is not None:
                conn.close()
            conn = None
        tally.add(kind)


def drive(host, port, sources, ca, token, rate, log):
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with open(log, "a", encoding="utf-8") as out:
        tally = Tally(out)
        threads = [
            threading.Thread(target=client, args=(i, host, port, s, ca, token, rate, tally, stop))
            for i, s in enumerate(sources)
        ]
        for t in threads:
            t.start()
        while not stop.is_set():
            stop.wait(0.5)
            tally.add("tick")  # flushes each second even when nothing answers
        for t in threads:
            t.join()
        tally.close()


def tally(log, since, until):
    counts = Counter()
    failed_seconds = []
    with open(log, encoding="utf-8") as lines:
        for line in lines:
            record = json.loads(line)
            if not since <= record["t"] <= until:
                continue
            second = Counter({k: v for k, v in record["n"].items() if k != "tick"})
            counts.update(second)
            if any(not k.split(" ", 1)[1].startswith("2") for k in second):
                failed_seconds.append(record["t"])
    failures = {k: v for k, v in counts.items() if not k.split(" ", 1)[1].startswith("2")}
    return {
        "requests": sum(counts.values()),
        "failed": sum(failures.values()),
        "failed_reads": sum(v for k, v in failures.items() if k.startswith("GET ")),
        "failed_writes": sum(v for k, v in failures.items() if k.startswith("PUT ")),
        "failed_other_than_503_retry_after": sum(v for k, v in failures.items() if not k.endswith(" 503+ra")),
        "failures": failures,
        "counts": dict(counts),
        "failed_seconds": failed_seconds,
    }


def hello_message():
    """An OP_MSG `{hello: 1, $db: "admin"}`, the first thing a MongoDB driver sends."""
    def cstring(text):
        return text.encode() + b"\0"

    elements = b"\x10" + cstring("hello") + (1).to_bytes(4, "little")
    elements += b"\x02" + cstring("$db") + (6).to_bytes(4, "little") + cstring("admin")
    document = (len(elements) + 5).to_bytes(4, "little") + elements + b"\0"
    body = (0).to_bytes(4, "little") + b"\0" + document
    header = (16 + len(body)).to_bytes(4, "little") + (1).to_bytes(4, "little") + (0).to_bytes(4, "little")
    return header + (2013).to_bytes(4, "little") + body


def probe(host, port, kind):
    """True when the service itself answers at HOST:PORT in its own protocol.

    A TCP connection alone proves nothing: a machine's egress proxy may
    accept any connection (this one does), so each kind checks for an answer
    only the real service gives.
    """
    request, answered = {
        "http": (b"GET /healthz HTTP/1.0\r\n\r\n", lambda r: b'"status"' in r),
        "redis": (b"PING\r\n", lambda r: r.startswith((b"+PONG", b"-NOAUTH", b"-ERR"))),
        "mongo": (hello_message(), lambda r: len(r) >= 16 and int.from_bytes(r[12:16], "little") == 2013),
    }[kind]
    try:
        with socket.create_connection((host, port), timeout=3) as conn:
            conn.settimeout(3)
            conn.sendall(request)
            reply = b""
            while len(reply) < 4096:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                reply += chunk
                if answered(reply):
                    return True
            return answered(reply)
    except OSError:
        return False


def main(argv):
    command = argv[1] if len(argv) > 1 else ""
    if command == "seed":
        host, port, source, ca, token = argv[2:7]
        seed(host, int(port), source, ca, token)
    elif command == "drive":
        host, port, sources, ca, token, rate, log = argv[2:9]
        drive(host, int(port), sources.split(","), ca, token, float(rate), log)
    elif command == "probe":
        sys.exit(0 if probe(argv[2], int(argv[3]), argv[4]) else 1)
    elif command == "tally":
        print(json.dumps(tally(argv[2], int(argv[3]), int(argv[4]))))
    else:
        sys.exit(
            "usage: swarm_load.py seed HOST PORT SOURCE CA TOKEN\n"
            "       swarm_load.py drive HOST PORT SOURCE,... CA TOKEN RATE LOG\n"
            "       swarm_load.py tally LOG FROM TO\n"
            "       swarm_load.py probe HOST PORT http|redis|mongo"
        )


if __name__ == "__main__":
    main(sys.argv)
