#!/usr/bin/python3
"""Bounded client load for restart and upgrade tests, run as a second
process so its threads do not share the test's interpreter lock.

upgrade_load.py --ca CA --cert CERT --key KEY --out FILE --stop FILE
                [--https PORT] [--tls PORT] [--tcp PORT] [--rate N]
                [--tcp-rate N] [--seconds S]

Until STOPFILE exists or S seconds passed (default 120), it runs:
- new: mTLS connections opened at about --rate per second in total (default
  200), each one GET with "Connection: close" on the https listener, or
  one echo exchange on the tls listener, alternately (what is given);
- https_keepalive: one connection at a time sending GETs back to back,
  reconnecting only when kgated answers "Connection: close";
- tls_keepalive: one connection at a time to the tls listener (an echo
  backend), 16-byte exchanges back to back, replaced every second;
- tcp: with --tcp-rate, plain TCP connections to the tcp listener (an echo
  backend) in bursts, each one 8-byte exchange.
Every failure is counted by kind (refused, reset, eof, timeout, bad_reply,
other). Writes {kind_of_client: {"ok": N, "failed": N, "errors": {kind: N},
"examples": [...]}} to OUTFILE (atomically) and exits 0.
"""
import argparse
import json
import os
import socket
import ssl
import threading
import time

TIMEOUT = 10.0


class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.by_client = {}

    def _entry(self, client):
        return self.by_client.setdefault(client, {"ok": 0, "failed": 0, "errors": {},
                                                  "examples": []})

    def ok(self, client, n=1):
        with self.lock:
            self._entry(client)["ok"] += n

    def failed(self, client, exc):
        kind = classify(exc)
        with self.lock:
            e = self._entry(client)
            e["failed"] += 1
            e["errors"][kind] = e["errors"].get(kind, 0) + 1
            if len(e["examples"]) < 10:
                e["examples"].append("%.3f %s" % (time.time(), repr(exc)))


class BadReply(Exception):
    pass


def classify(exc):
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, ConnectionResetError):
        return "reset"
    if isinstance(exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError, EOFError,
                        BrokenPipeError)):
        return "eof"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timeout"
    if isinstance(exc, BadReply):
        return "bad_reply"
    return "other"


def recv_exact(s, n):
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            raise EOFError("connection closed after %d of %d bytes" % (len(data), n))
        data += chunk
    return data


def read_response(s, buf):
    """One HTTP/1.1 response with Content-Length: (status line, keep-alive?,
    leftover bytes)."""
    status, alive, _, rest = read_response_body(s, buf)
    return status, alive, rest


def read_response_body(s, buf):
    """read_response, with the body: (status line, keep-alive?, body,
    leftover bytes)."""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            raise EOFError("connection closed before a whole response head "
                           "(%d bytes)" % len(buf))
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(b":")
        headers[k.strip().lower()] = v.strip().lower()
    if not lines[0].startswith(b"HTTP/1.1 200"):
        raise BadReply(lines[0].decode(errors="replace"))
    length = int(headers.get(b"content-length", b"-1"))
    if length < 0:
        raise BadReply("no Content-Length")
    while len(rest) < length:
        chunk = s.recv(65536)
        if not chunk:
            raise EOFError("connection closed in a response body")
        rest += chunk
    return lines[0], headers.get(b"connection") != b"close", rest[:length], rest[length:]


def connect(ctx, port):
    raw = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    try:
        return ctx.wrap_socket(raw, server_hostname="localhost")
    except BaseException:
        raw.close()
        raise


def new_https(ctx, port):
    with connect(ctx, port) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        read_response(s, b"")


def new_tls(ctx, port):
    with connect(ctx, port) as s:
        s.sendall(b"ping-new\n")
        if recv_exact(s, 9) != b"ping-new\n":
            raise BadReply("echo mismatch")


def paced(stop, rate, fn, tally, name):
    """Calls fn about rate times per second until stop is set."""
    period = 1.0 / rate
    nxt = time.monotonic()
    while not stop.is_set():
        try:
            fn()
            tally.ok(name)
        except Exception as e:  # every failure is counted
            tally.failed(name, e)
        nxt += period
        delay = nxt - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        else:
            nxt = time.monotonic()  # behind: no burst to catch up


class HttpsExchange:
    """GETs back to back; the connection ends when kgated says "Connection:
    close"."""

    def __init__(self):
        self.buf = b""

    def __call__(self, s, i):
        s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        _, alive, self.buf = read_response(s, self.buf)
        return alive


class EchoExchange:
    """16-byte echoes back to back; the connection is replaced every second."""

    def __init__(self):
        self.until = time.monotonic() + 1.0

    def __call__(self, s, i):
        msg = b"%015d\n" % i
        s.sendall(msg)
        if recv_exact(s, 16) != msg:
            raise BadReply("echo mismatch")
        return time.monotonic() < self.until


def keepalive(stop, ctx, port, tally, name, exchange_type):
    """One connection at a time, exchanges back to back on it until the
    exchange says it ends (or fails: counted), then the next connection."""
    while not stop.is_set():
        try:
            s = connect(ctx, port)
        except Exception as e:
            tally.failed(name, e)
            time.sleep(0.05)
            continue
        with s:
            exchange = exchange_type()
            alive, i = True, 0
            while alive and not stop.is_set():
                try:
                    alive = exchange(s, i)
                    tally.ok(name)
                except Exception as e:
                    tally.failed(name, e)
                    break
                i += 1


def tcp_once(port):
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as s:
        s.sendall(b"tcp-ping")
        if recv_exact(s, 8) != b"tcp-ping":
            raise BadReply("echo mismatch")


def main():
    ap = argparse.ArgumentParser()
    for name in ("ca", "cert", "key", "out", "stop"):
        ap.add_argument("--" + name, required=True)
    ap.add_argument("--https", type=int)
    ap.add_argument("--tls", type=int)
    ap.add_argument("--tcp", type=int)
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--tcp-rate", type=float, default=0.0)
    ap.add_argument("--seconds", type=float, default=120.0)
    a = ap.parse_args()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(a.ca)
    ctx.load_cert_chain(a.cert, a.key)
    tally = Tally()
    stop = threading.Event()
    threads = []

    def start(target, *args):
        t = threading.Thread(target=target, args=args, daemon=True)
        t.start()
        threads.append(t)

    kinds = [(new_https, a.https), (new_tls, a.tls)]
    kinds = [(fn, port) for fn, port in kinds if port]
    # Four pacers share the rate, so one slow handshake does not stall it.
    for i in range(4 if kinds else 0):
        fn, port = kinds[i % len(kinds)]
        start(paced, stop, a.rate / 4, lambda fn=fn, port=port: fn(ctx, port), tally, "new")
    if a.https:
        start(keepalive, stop, ctx, a.https, tally, "https_keepalive", HttpsExchange)
    if a.tls:
        start(keepalive, stop, ctx, a.tls, tally, "tls_keepalive", EchoExchange)
    if a.tcp and a.tcp_rate > 0:
        for _ in range(4):
            start(paced, stop, a.tcp_rate / 4, lambda: tcp_once(a.tcp), tally, "tcp")
    deadline = time.monotonic() + a.seconds
    while time.monotonic() < deadline and not os.path.exists(a.stop):
        time.sleep(0.05)
    stop.set()
    for t in threads:
        t.join(TIMEOUT + 5)
    with open(a.out + ".tmp", "w") as f:
        json.dump(tally.by_client, f, indent=1, sort_keys=True)
    os.rename(a.out + ".tmp", a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
