#!/usr/bin/python3
"""Open N mutual-TLS connections to kgated and keep them open, idle.

Used by bench/run to measure the proxy's memory per idle connection. Each
connection completes its handshake and, unless --no-request, one keep-alive
GET (so the server has certainly finished the handshake and connected the
backend), then stays idle. Prints "ready N" on stdout once all are open,
then holds them until SIGTERM/SIGINT or --hold seconds, and closes them.

Runs with the system interpreter (/usr/bin/python3): only the standard library.
"""
import argparse
import resource
import signal
import socket
import ssl
import sys
import time


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--cert", required=True, help="client certificate (PEM)")
    p.add_argument("--key", required=True, help="client key (PEM)")
    p.add_argument("--ca", required=True, help="CA that signed the server certificate")
    p.add_argument("--server-name", default="localhost")
    p.add_argument("--source", default=None,
                   help="local address to connect from (one address has ~28k ephemeral ports)")
    p.add_argument("--count", type=int, default=2000)
    p.add_argument("--no-request", action="store_true",
                   help="handshake only, no HTTP request before going idle")
    p.add_argument("--h2", action="store_true",
                   help="negotiate h2 (ALPN); the request is one HTTP/2 GET on stream 1")
    p.add_argument("--hold", type=float, default=600.0,
                   help="give up holding after this many seconds")
    p.add_argument("--timeout", type=float, default=10.0, help="per-connection I/O timeout")
    return p.parse_args()


def raise_fd_limit(needed):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < needed:
        sys.exit(f"idle_conns: open-file limit {hard} is below the {needed} needed")


def read_response(conn):
    """Reads one HTTP/1.1 response with a Content-Length body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            raise ConnectionError("closed before the response head")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0]
    if not status.startswith(b"HTTP/1.1 200"):
        raise ConnectionError(f"unexpected status {status!r}")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = conn.recv(4096)
        if not chunk:
            raise ConnectionError("closed inside the response body")
        body += chunk


# HTTP/2 by hand, enough for one GET (RFC 9113; the standard library has no
# HTTP/2): the preface, an empty SETTINGS, and HEADERS with static-table
# HPACK indexes (:method GET, :scheme https, :path /) and :authority as a
# literal with the static name.
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def h2_frame(ftype, flags, stream, payload=b""):
    return (len(payload).to_bytes(3, "big") + bytes([ftype, flags]) +
            stream.to_bytes(4, "big") + payload)


def h2_get(server_name):
    name = server_name.encode()
    block = bytes([0x82, 0x87, 0x84, 0x01, len(name)]) + name
    return (H2_PREFACE + h2_frame(4, 0, 0) +
            h2_frame(1, 0x05, 1, block))  # HEADERS, END_STREAM|END_HEADERS


def read_exact(conn, n):
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed inside an HTTP/2 frame")
        data += chunk
    return data


def read_h2_response(conn):
    """Reads frames until stream 1 ends; acknowledges the server's SETTINGS."""
    while True:
        head = read_exact(conn, 9)
        length = int.from_bytes(head[:3], "big")
        ftype, flags = head[3], head[4]
        stream = int.from_bytes(head[5:9], "big") & 0x7FFFFFFF
        read_exact(conn, length)
        if ftype == 4 and not flags & 0x1:
            conn.sendall(h2_frame(4, 0x1, 0))  # SETTINGS ACK
        elif ftype == 7:
            raise ConnectionError("GOAWAY from the server")
        elif ftype == 3 and stream == 1:
            raise ConnectionError("stream 1 reset by the server")
        elif ftype in (0, 1) and stream == 1 and flags & 0x1:
            return


def main():
    args = parse_args()
    raise_fd_limit(args.count + 64)

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(args.ca)
    ctx.load_cert_chain(args.cert, args.key)
    if args.h2:
        ctx.set_alpn_protocols(["h2"])

    stop = False

    def on_signal(signum, frame):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    source = (args.source, 0) if args.source else None
    request = (f"GET / HTTP/1.1\r\nHost: {args.server_name}\r\n\r\n").encode()
    conns = []
    try:
        for i in range(args.count):
            if stop:
                break
            raw = socket.create_connection((args.host, args.port), timeout=args.timeout,
                                           source_address=source)
            try:
                conn = ctx.wrap_socket(raw, server_hostname=args.server_name)
            except Exception:
                raw.close()
                raise
            conns.append(conn)
            if args.h2 and conn.selected_alpn_protocol() != "h2":
                raise ConnectionError(f"ALPN chose {conn.selected_alpn_protocol()}, not h2")
            if args.h2:
                conn.sendall(h2_get(args.server_name) if not args.no_request
                             else H2_PREFACE + h2_frame(4, 0, 0))
                if not args.no_request:
                    read_h2_response(conn)
            elif not args.no_request:
                conn.sendall(request)
                read_response(conn)
        if stop:
            print(f"idle_conns: interrupted after {len(conns)} connections", file=sys.stderr)
            return 1
        print(f"ready {len(conns)}", flush=True)
        deadline = time.monotonic() + args.hold
        while not stop and time.monotonic() < deadline:
            time.sleep(0.2)
        return 0
    except (OSError, ConnectionError, ValueError) as exc:
        print(f"idle_conns: connection {len(conns) + 1} of {args.count}: {exc}", file=sys.stderr)
        return 1
    finally:
        for conn in conns:
            try:
                conn.close()
            except OSError:
                pass


if __name__ == "__main__":
    sys.exit(main())
