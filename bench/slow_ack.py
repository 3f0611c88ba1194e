#!/usr/bin/python3
"""Backends that write a response's head and body in two sends, through a proxy.

Python's http.server (and many small servers) send the head, then the body,
with Nagle on. The second send waits until the first is acknowledged; a
proxy in delayed-ACK mode acknowledges 40 ms later, so about every other
sequential keep-alive request stalls. This bench measures it: one
keep-alive mTLS connection, sequential GETs, latency of each, through

  direct            the backend itself (plain HTTP, no proxy)
  kgated-https      kgated's https listener
  kgated-tls        kgated's tls listener (bytes relayed per connection)
  haproxy-http      HAProxy mode http (the anchor, if installed)

and, with --compare-kgated, the same two listeners of another kgated build
side by side (before/after a change). Prints and writes a Markdown table
(bench/results/<date>-slow-ack.md): p50, p90, p99, max and the count of
requests over 30 ms, per proxy and round.

  bench/slow_ack.py                       # needs build-bench (bench/run builds it)
  bench/slow_ack.py --requests 200 --rounds 3 --compare-kgated /path/kgated
  bench/slow_ack.py backend --port 0      # the two-send backend alone
"""
import argparse
import datetime
import http.client
import http.server
import json
import os
import ssl
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench as kb  # noqa: E402
from bench import BenchError, log  # noqa: E402

PY = "/usr/bin/python3"
STALL_MS = 30.0
BODY = b"x" * 64


class TwoSends(http.server.BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive; end_headers() sends the head, write() the body."""
    protocol_version = "HTTP/1.1"

    def do_GET(self):  # noqa: N802 (http.server's name)
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, *_):
        pass


def serve(port):
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", port), TwoSends)
    print(f"two-send backend listening on 127.0.0.1:{srv.server_address[1]}", flush=True)
    srv.serve_forever()


def sequential(port, n, tls_ctx):
    """n GETs one after the other on one keep-alive connection; ms each."""
    if tls_ctx:
        conn = http.client.HTTPSConnection("localhost", port, context=tls_ctx, timeout=10)
    else:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    out = []
    try:
        for _ in range(n):
            t0 = time.perf_counter()
            conn.request("GET", "/")
            r = conn.getresponse()
            body = r.read()
            out.append((time.perf_counter() - t0) * 1e3)
            if r.status != 200 or body != BODY:
                raise BenchError(f"port {port}: status {r.status}, {len(body)} body bytes")
            if r.getheader("Connection", "").lower() == "close":
                raise BenchError(f"port {port}: the proxy closed the keep-alive connection")
    finally:
        conn.close()
    return out


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100.0 * (len(xs) - 1))))]


class Setup:
    def __init__(self, args):
        self.args = args
        self.procs = kb.Procs()
        import tempfile
        self.work = tempfile.mkdtemp(prefix="kgate-slowack.")
        self.kgatectl = os.path.join(args.build, "ctl/kgatectl")

    def ctl(self, *argv):
        r = subprocess.run([self.kgatectl, *argv], capture_output=True, text=True)
        if r.returncode != 0:
            raise BenchError(f"kgatectl {' '.join(argv[:2])}: {r.stderr.strip()}")

    def close(self):
        """Stops what it started and removes its folder."""
        import shutil
        self.procs.stop_all()
        shutil.rmtree(self.work, ignore_errors=True)

    def certs(self):
        w = self.work
        self.ctl("ca", "init", "--dir", f"{w}/ca", "--subject", "/O=kgate bench/CN=bench CA",
                 "--days", "2")
        self.ctl("ca", "issue", "--dir", f"{w}/ca", "--type", "server", "--subject",
                 "/O=kgate bench/CN=localhost", "--san", "DNS:localhost,IP:127.0.0.1",
                 "--days", "2", "--out", f"{w}/server")
        self.ctl("ca", "issue", "--dir", f"{w}/ca", "--type", "client", "--subject",
                 "/O=kgate bench/CN=client", "--days", "2", "--out", f"{w}/client")
        with open(f"{w}/haproxy.pem", "w") as out:
            for f in ("server.pem", "server.key"):
                out.write(open(f"{w}/{f}").read())
        ctx = ssl.create_default_context(cafile=f"{w}/ca/ca.pem")
        ctx.load_cert_chain(f"{w}/client.pem", f"{w}/client.key")
        self.tls_ctx = ctx

    def backend(self, script=__file__):
        """Starts `script backend --port 0` (a bench's backend): its port."""
        logf = f"{self.work}/backend.log"
        p = self.procs.start([PY, os.path.abspath(script), "backend", "--port", "0"], logf)
        return int(kb.wait_for(logf, r"listening on 127\.0\.0\.1:(\d+)", 5, p).group(1))

    def kgated(self, binary, tag, backend):
        ports = {"https": kb.free_port(), "tls": kb.free_port()}
        lst = [{"name": proto, "protocol": proto, "bind": "127.0.0.1", "port": port,
                "certificate": "web", "ca": "clients", "mutual_auth": "required",
                "backends": [{"address": f"127.0.0.1:{backend}"}]}
               for proto, port in ports.items()]
        lst[1]["forwarding"] = "userspace"
        self.start_kgated(binary, tag, lst)
        return {f"{tag}-{proto}": port for proto, port in ports.items()}

    def start_kgated(self, binary, tag, lst):
        """kgated with the bench certificates and listeners lst, ready: its process."""
        w = self.work
        conf = {"settings": {"workers": 1, "log_level": "notice"},
                "certificates": {"web": {"type": "server", "cert": f"{w}/server.pem",
                                         "key": f"{w}/server.key"},
                                 "clients": {"type": "ca", "cert": f"{w}/ca/ca.pem"}},
                "listeners": lst}
        path = f"{w}/{tag}.json"
        with open(path, "w") as f:
            json.dump(conf, f)
        argv = [binary, "--config", path, "--state-dir", f"{w}/state-{tag}"]
        if os.geteuid() == 0:
            argv += ["--user", "root"]
        logf = f"{w}/{tag}.log"
        p = self.procs.start(argv, logf)
        kb.wait_for(logf, r" event=kgated\.ready ", 10, p)
        return p

    def haproxy(self, backend, defaults=()):
        """HAProxy mode http in front of backend (extra lines for its
        defaults section): {"haproxy-http": port}, {} when not installed."""
        port, _ = self.start_haproxy(backend, defaults)
        return {"haproxy-http": port} if port else {}

    def start_haproxy(self, backend, defaults=()):
        import shutil
        exe = shutil.which("haproxy")
        if not exe:
            log("haproxy not installed: skipped (tests/install-deps.sh bench installs it)")
            return None, None
        w, port = self.work, kb.free_port()
        lines = ["global", "  nbthread 1", "defaults", "  mode http", "  timeout connect 5s",
                 "  timeout client 60s", "  timeout server 60s", *defaults, "frontend f",
                 f"  bind 127.0.0.1:{port} ssl crt {w}/haproxy.pem ca-file {w}/ca/ca.pem "
                 "verify required", "  default_backend b", "backend b",
                 f"  server s0 127.0.0.1:{backend}"]
        with open(f"{w}/haproxy.cfg", "w") as f:
            f.write("\n".join(lines) + "\n")
        p = self.procs.start([exe, "-db", "-f", f"{w}/haproxy.cfg"], f"{w}/haproxy.log")
        kb.wait_port(port, 10, p)
        return port, p


def run(args):
    s = Setup(args)
    rows = []
    la0 = os.getloadavg()[0]
    try:
        s.certs()
        backend = s.backend()
        targets = {"direct": backend}
        targets.update(s.kgated(os.path.join(args.build, "dataplane/kgated"), "kgated", backend))
        if args.compare_kgated:
            targets.update(s.kgated(args.compare_kgated, "compare", backend))
        targets.update(s.haproxy(backend))
        for rnd in range(1, args.rounds + 1):
            for name, port in targets.items():
                ms = sequential(port, args.requests, None if name == "direct" else s.tls_ctx)
                row = {"proxy": name, "round": rnd, "p50": statistics.median(ms),
                       "p90": pct(ms, 90), "p99": pct(ms, 99), "max": max(ms),
                       "stalled": sum(1 for x in ms if x > STALL_MS), "n": len(ms)}
                rows.append(row)
                log(f"{name:15} round {rnd}: p50 {row['p50']:.2f} ms  p99 {row['p99']:.2f} ms  "
                    f"max {row['max']:.1f} ms  over {STALL_MS:.0f} ms: {row['stalled']}/{len(ms)}")
    finally:
        s.close()
    write(args, rows, la0, os.getloadavg()[0])


def results_md(args, name, lines_of_stamp):
    """Writes bench/results/<date>-<name><label>.md from the lines
    lines_of_stamp(stamp) gives."""
    stamp = datetime.datetime.now().strftime("%Y-%m-%d-%H%M")
    path = os.path.join(args.out_dir, f"{stamp}-{name}{args.label}.md")
    with open(path, "w") as f:
        f.write("\n".join(lines_of_stamp(stamp)) + "\n")
    log(f"wrote {path}")


def write(args, rows, la0, la1):
    results_md(args, "slow-ack", lambda stamp: table(args, rows, la0, la1, stamp))


def table(args, rows, la0, la1, stamp):
    lines = [f"# Two-send backend through each proxy ({stamp})", "",
             f"{args.requests} sequential keep-alive GETs per round on one mTLS connection "
             f"(direct: plain HTTP), Python http.server backend writing head and body in two "
             f"sends. Load average {la0:.2f} at start, {la1:.2f} at end. "
             f"kgated: {os.path.join(args.build, 'dataplane/kgated')}"
             + (f"; compare: {args.compare_kgated}" if args.compare_kgated else "") + ".", "",
             f"| proxy | round | p50 ms | p90 ms | p99 ms | max ms | over {STALL_MS:.0f} ms |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['proxy']} | {r['round']} | {r['p50']:.2f} | {r['p90']:.2f} | "
                     f"{r['p99']:.2f} | {r['max']:.1f} | {r['stalled']}/{r['n']} |")
    return lines


def backend_main(serve_fn):
    """`SCRIPT backend --port N`: runs serve_fn(N) and returns True; False
    for any other command line."""
    if len(sys.argv) < 2 or sys.argv[1] != "backend":
        return False
    p = argparse.ArgumentParser()
    p.add_argument("backend")
    p.add_argument("--port", type=int, default=0)
    serve_fn(p.parse_args().port)
    return True


def main():
    if backend_main(serve):
        return 0
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--build", default=os.path.join(root, "build-bench"))
    p.add_argument("--requests", type=int, default=100)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--compare-kgated", default=None, metavar="PATH")
    p.add_argument("--out-dir", default=os.path.join(root, "bench/results"))
    p.add_argument("--label", default="")
    return kb.run_main(run, p.parse_args())


if __name__ == "__main__":
    sys.exit(main())
