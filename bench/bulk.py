#!/usr/bin/python3
"""Bulk TCP transfer for workload (e): a source server and a timed fetch.

  bulk.py serve [--bind 127.0.0.1] [--port 0]
      prints "bulk listening on ADDR:PORT"; for each connection reads one
      line "<bytes>\\n" and sends that many bytes, then closes.
  bulk.py fetch --port P --bytes N
      connects, asks for N bytes, reads until EOF and prints
      "bulk bytes=N seconds=S gbit=G"; exit 1 if fewer bytes arrived.

Both sides move data in 1 MiB chunks with sendall/recv_into, so the Python
interpreter costs a few microseconds per MiB: the copies are the kernel's.
"""
import argparse
import signal
import socket
import sys
import threading
import time

CHUNK = 1 << 20


def serve_one(conn):
    try:
        line = b""
        while not line.endswith(b"\n") and len(line) < 32:
            part = conn.recv(32 - len(line))
            if not part:
                return
            line += part
        want = int(line.strip())
        buf = memoryview(b"k" * CHUNK)
        left = want
        while left > 0:
            n = min(left, CHUNK)
            conn.sendall(buf[:n])
            left -= n
        conn.shutdown(socket.SHUT_WR)
        # Wait for the peer's FIN so the close sends no reset.
        while conn.recv(4096):
            pass
    except (OSError, ValueError) as exc:
        print(f"bulk: serve: {exc}", file=sys.stderr)
    finally:
        conn.close()


def serve(args):
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((args.bind, args.port))
    lsock.listen(128)
    host, port = lsock.getsockname()
    print(f"bulk listening on {host}:{port}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        conn, _ = lsock.accept()
        threading.Thread(target=serve_one, args=(conn,), daemon=True).start()


def fetch(args):
    sock = socket.create_connection((args.host, args.port), timeout=args.timeout)
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    got = 0
    t0 = time.monotonic()
    sock.sendall(b"%d\n" % args.bytes)
    while True:
        n = sock.recv_into(view)
        if n == 0:
            break
        got += n
    secs = time.monotonic() - t0
    sock.close()
    gbit = got * 8 / secs / 1e9 if secs > 0 else 0.0
    print(f"bulk bytes={got} seconds={secs:.4f} gbit={gbit:.3f}", flush=True)
    if got != args.bytes:
        print(f"bulk: expected {args.bytes} bytes, got {got}", file=sys.stderr)
        return 1
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--bind", default="127.0.0.1")
    s.add_argument("--port", type=int, default=0)
    f = sub.add_parser("fetch")
    f.add_argument("--host", default="127.0.0.1")
    f.add_argument("--port", type=int, required=True)
    f.add_argument("--bytes", type=int, required=True)
    f.add_argument("--timeout", type=float, default=60.0)
    args = p.parse_args()
    if args.cmd == "serve":
        serve(args)
        return 0
    return fetch(args)


if __name__ == "__main__":
    sys.exit(main())
