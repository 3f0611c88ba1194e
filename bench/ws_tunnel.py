#!/usr/bin/python3
"""WebSocket tunnel throughput through an https listener (issue 17).

One mTLS connection sends a WebSocket handshake; the backend answers 101
and from then on the proxy relays bytes: a download (backend → client) and
an upload (client → backend) of --mib MiB each, per round, through

  kgated-https      kgated's https listener on userspace TLS (this kernel
                    has no kTLS; tests/vm runs the spliced variant)
  haproxy-http      HAProxy mode http, which tunnels after the 101 too (the
                    anchor, if installed)

Reports MiB/s (bounded by the Python client and backend as much as by the
proxy) and the proxy's CPU time per MiB (utime+stime of its process), the
number that compares proxies. Writes bench/results/<date>-ws-tunnel.md.

  bench/ws_tunnel.py                        # needs build-bench (bench/run builds it)
  bench/ws_tunnel.py --build build-release --mib 256 --rounds 3
  bench/ws_tunnel.py backend --port 0       # the tunnel backend alone
"""
import argparse
import os
import socket
import statistics
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench as kb  # noqa: E402
from bench import BenchError, log  # noqa: E402
from slow_ack import Setup, backend_main, results_md  # noqa: E402

MiB = 1 << 20
CHUNK = b"\x5a" * MiB


def read_head(sock):
    """The bytes of an HTTP head (up to the empty line) and what followed."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            raise BenchError("connection closed before a head: %r" % buf[:200])
        buf += data
    head, rest = buf.split(b"\r\n\r\n", 1)
    return head.decode("latin-1"), rest


def tunnel_backend(conn):
    """Answers 101, then /down/N: sends N MiB and closes; /up/N: reads N
    MiB, answers "ok"."""
    with conn:
        head, rest = read_head(conn)
        _, what, n = head.split(" ", 2)[1].split("/")
        conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     b"Connection: Upgrade\r\nSec-WebSocket-Accept: bench\r\n\r\n")
        size = int(n) * MiB
        if what == "down":
            for _ in range(int(n)):
                conn.sendall(CHUNK)
            conn.shutdown(socket.SHUT_WR)
            while conn.recv(65536):
                pass
            return
        got = len(rest)
        while got < size:
            data = conn.recv(1 << 20)
            if not data:
                return
            got += len(data)
        conn.sendall(b"ok")
        while conn.recv(65536):
            pass


def serve(port):
    srv = socket.create_server(("127.0.0.1", port), backlog=64)
    print(f"tunnel backend listening on 127.0.0.1:{srv.getsockname()[1]}", flush=True)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=tunnel_backend, args=(conn,), daemon=True).start()


def transfer(port, tls_ctx, what, mib):
    """One tunnel: handshake, then mib MiB one way. Seconds of the transfer."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=60)
    s = tls_ctx.wrap_socket(raw, server_hostname="localhost")
    try:
        s.sendall(f"GET /{what}/{mib} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
                  "Connection: Upgrade\r\nSec-WebSocket-Key: YmVuY2ggYmVuY2ggYmVuY2g=\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n".encode())
        head, rest = read_head(s)
        if not head.startswith("HTTP/1.1 101"):
            raise BenchError(f"port {port}: no 101: {head.splitlines()[0]}")
        t0 = time.perf_counter()
        if what == "down":
            got = len(rest)
            while True:
                data = s.recv(1 << 20)
                if not data:
                    break
                got += len(data)
            if got != mib * MiB:
                raise BenchError(f"port {port}: {got} bytes of {mib * MiB} came down")
        else:
            for _ in range(mib):
                s.sendall(CHUNK)
            if s.recv(2) != b"ok":
                raise BenchError(f"port {port}: the upload was not acknowledged")
        return time.perf_counter() - t0
    finally:
        s.close()


class TunnelSetup(Setup):
    def kgated(self, binary, tag, backend):
        port = kb.free_port()
        p = self.start_kgated(binary, tag, [
            {"name": "https", "protocol": "https", "bind": "127.0.0.1", "port": port,
             "certificate": "web", "ca": "clients", "mutual_auth": "required",
             "forwarding": "userspace", "backends": [{"address": f"127.0.0.1:{backend}"}]}])
        return {f"{tag}-https": (port, p.pid)}

    def haproxy(self, backend):
        port, p = self.start_haproxy(backend, ["  timeout tunnel 1h"])
        return {"haproxy-http": (port, p.pid)} if port else {}


def run(args):
    s = TunnelSetup(args)
    rows = []
    la0 = os.getloadavg()[0]
    try:
        s.certs()
        backend = s.backend(__file__)
        targets = s.kgated(os.path.join(args.build, "dataplane/kgated"), "kgated", backend)
        targets.update(s.haproxy(backend))
        for rnd in range(1, args.rounds + 1):
            for name, (port, pid) in targets.items():
                for what in ("down", "up"):
                    transfer(port, s.tls_ctx, what, 8)  # warm: caches, allocator
                    cpu0 = kb.cpu_seconds(pid)
                    secs = transfer(port, s.tls_ctx, what, args.mib)
                    cpu = kb.cpu_seconds(pid) - cpu0
                    row = {"proxy": name, "round": rnd, "direction": what,
                           "mib_s": args.mib / secs, "cpu_ms_per_mib": cpu * 1e3 / args.mib}
                    rows.append(row)
                    log(f"{name:14} round {rnd} {what:4}: {row['mib_s']:7.0f} MiB/s  "
                        f"{row['cpu_ms_per_mib']:.2f} ms CPU/MiB")
    finally:
        s.close()
    la1 = os.getloadavg()[0]
    results_md(args, "ws-tunnel", lambda stamp: table(args, rows, la0, la1, stamp))


def table(args, rows, la0, la1, stamp):
    lines = [f"# WebSocket tunnel through each proxy ({stamp})", "",
             f"One mTLS connection per transfer: WebSocket handshake, 101, then {args.mib} MiB "
             f"one way (Python ssl client, Python socket backend; both on this host's "
             f"{os.cpu_count()} CPUs with the proxy, so MiB/s is a floor). CPU: the proxy's "
             f"utime+stime (10 ms ticks) over the transfer. Load average {la0:.2f} at start, "
             f"{la1:.2f} at end. kgated: {os.path.join(args.build, 'dataplane/kgated')}, "
             "https listener on userspace TLS (no kTLS on this kernel).", "",
             "| proxy | direction | rounds | MiB/s (median) | CPU ms per MiB (median) |",
             "| --- | --- | --- | --- | --- |"]
    for name in dict.fromkeys(r["proxy"] for r in rows):
        for what in ("down", "up"):
            sel = [r for r in rows if r["proxy"] == name and r["direction"] == what]
            lines.append(f"| {name} | {what} | {len(sel)} | "
                         f"{statistics.median(r['mib_s'] for r in sel):.0f} | "
                         f"{statistics.median(r['cpu_ms_per_mib'] for r in sel):.2f} |")
    lines += ["", "Every round:", "", "| proxy | round | direction | MiB/s | CPU ms/MiB |",
              "| --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['proxy']} | {r['round']} | {r['direction']} | {r['mib_s']:.0f} | "
                     f"{r['cpu_ms_per_mib']:.2f} |")
    return lines


def main():
    if backend_main(serve):
        return 0
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--build", default=os.path.join(root, "build-bench"))
    p.add_argument("--mib", type=int, default=512, help="MiB per transfer (default 512)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out-dir", default=os.path.join(root, "bench/results"))
    p.add_argument("--label", default="")
    return kb.run_main(run, p.parse_args())


if __name__ == "__main__":
    sys.exit(main())
