#!/usr/bin/python3
"""HTTP/2 against HTTP/1.1 on one kgated https listener (issue 17): h2load
(Debian's nghttp2-client, client certificate through wrk_mtls_shim.so)
drives the same GETs as HTTP/1.1 (--h1, one request in flight per
connection), as HTTP/2 with one stream per connection and with 100
concurrent streams per connection; kgated's CPU (utime + stime of the
process) per request and requests/s are reported for each. First the
memory an idle HTTP/2 connection costs: N connections that each sent one
request, kgated's RSS before and after, divided by N.

Writes bench/results/<date>-h2-vs-h1.md. Needs a Release build (--build)
with bench/ targets (wrk_mtls_shim.so, http_backend)."""
import argparse
import datetime
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import bench as kb  # noqa: E402  (Procs, wait_for, free_port)


def cpu_ticks(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime, in clock ticks


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def make_pki(kgatectl, w):
    """A CA, a server and a client certificate (EC P-256), as bench.py makes them."""
    def ctl(*argv):
        subprocess.run([kgatectl, *argv], check=True, capture_output=True)
    ctl("ca", "init", "--dir", "%s/ca" % w, "--subject", "/C=US/O=kgate bench/CN=bench CA",
        "--key", "ec-p256", "--days", "2")
    ctl("ca", "issue", "--dir", "%s/ca" % w, "--type", "server", "--subject",
        "/C=US/O=kgate bench/CN=localhost", "--san", "DNS:localhost,IP:127.0.0.1", "--key",
        "ec-p256", "--days", "2", "--out", "%s/server" % w)
    ctl("ca", "issue", "--dir", "%s/ca" % w, "--type", "client", "--subject",
        "/C=US/O=kgate bench/CN=bench-client", "--key", "ec-p256", "--days", "2", "--out",
        "%s/client" % w)
    return ("%s/ca/ca.pem" % w, "%s/server.pem" % w, "%s/server.key" % w,
            "%s/client.pem" % w, "%s/client.key" % w)


def h2load(args, env, extra, n):
    cmd = ["h2load", "-n", str(n), *extra, "https://localhost:%d/" % args.port]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    out = res.stdout + res.stderr
    m = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    ok = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed",
                   out)
    if res.returncode != 0 or not m or not ok:
        raise RuntimeError("h2load failed:\n%s" % out)
    return float(m.group(1)), int(ok.group(1)), int(ok.group(2)), out


def idle_h2(port, ca, cert, key, count):
    """count HTTP/2 connections, one GET each, then held open."""
    import h2.connection
    import h2.events
    ctx = ssl.create_default_context(cafile=ca)
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["h2"])
    held = []
    for _ in range(count):
        s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10),
                            server_hostname="localhost")
        c = h2.connection.H2Connection()
        c.initiate_connection()
        c.send_headers(1, [(":method", "GET"), (":scheme", "https"),
                           (":authority", "localhost"), (":path", "/")], end_stream=True)
        s.sendall(c.data_to_send())
        done = False
        while not done:
            data = s.recv(65536)
            if not data:
                raise RuntimeError("closed")
            for ev in c.receive_data(data):
                done |= isinstance(ev, h2.events.StreamEnded)
            s.sendall(c.data_to_send())
        held.append((s, c))
    return held


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--build", default=os.path.join(ROOT, "build-release"))
    p.add_argument("--requests", type=int, default=100000)
    p.add_argument("--conns", type=int, default=50)
    p.add_argument("--idle", type=int, default=500)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--pool-max-idle", type=int, default=64,
                   help="the listener's http.pool_max_idle (its default 64)")
    p.add_argument("--out-dir", default=os.path.join(ROOT, "bench", "results"))
    args = p.parse_args()
    kgated = os.path.join(args.build, "dataplane", "kgated")
    kgatectl = os.path.join(args.build, "ctl", "kgatectl")
    shim = os.path.join(args.build, "bench", "wrk_mtls_shim.so")
    backend = os.path.join(args.build, "bench", "http_backend")
    work = tempfile.mkdtemp(prefix="kg-h2bench-")
    procs = kb.Procs()
    try:
        ca, scert, skey, cert, key = make_pki(kgatectl, work)
        origins = []
        for name in ("a", "b"):
            port = kb.free_port()
            log = os.path.join(work, "backend-%s.log" % name)
            bp = procs.start([backend, "--port", str(port), "--name", name], log)
            kb.wait_for(log, r"listening", 10, bp)
            origins.append(port)
        args.port = kb.free_port()
        conf = {"settings": {"workers": args.workers, "drain_timeout_ms": 2000,
                             "log_level": "info"},
                "certificates": {"web": {"type": "server", "cert": scert, "key": skey},
                                 "clients": {"type": "ca", "cert": ca}},
                "listeners": [{"name": "web", "protocol": "https", "bind": "127.0.0.1",
                               "port": args.port, "certificate": "web",
                               "mutual_auth": "required", "ca": "clients",
                               "max_connections": args.idle + 1000,
                               "forwarding": "userspace",
                               "backends": [{"address": "127.0.0.1:%d" % o} for o in origins],
                               "http": {"keepalive_timeout_ms": 600000,
                                        "pool_max_idle": args.pool_max_idle}}]}
        conf_path = os.path.join(work, "kgated.json")
        with open(conf_path, "w") as f:
            json.dump(conf, f)
        log = os.path.join(work, "kgated.log")
        state = os.path.join(work, "state")
        argv = [kgated, "--config", conf_path, "--state-dir", state]
        if os.geteuid() == 0:
            argv += ["--user", "root"]
        kp = procs.start(argv, log)
        kb.wait_for(log, r" event=kgated\.ready ", 10, kp)
        # Memory per idle HTTP/2 connection, first: a process that served
        # the load has freed heap to reuse, and RSS would not show it.
        time.sleep(0.5)
        before = rss_kib(kp.pid)
        held = idle_h2(args.port, ca, cert, key, args.idle)
        time.sleep(1.0)
        after = rss_kib(kp.pid)
        for s, _ in held:
            s.close()
        per_conn = (after - before) * 1024 / args.idle
        env = dict(os.environ, LD_PRELOAD=shim, KG_CLIENT_CERT=cert, KG_CLIENT_KEY=key,
                   KG_TLS_MAX="1.3", SSL_CERT_FILE=ca)
        hz = os.sysconf("SC_CLK_TCK")
        cases = [("http/1.1", ["--h1", "-c", str(args.conns), "-m", "1"]),
                 ("h2, 1 stream/conn", ["-c", str(args.conns), "-m", "1"]),
                 ("h2, 100 streams/conn", ["-c", "4", "-m", "100"])]
        def connects():
            out = subprocess.run([kgatectl, "--socket", os.path.join(state, "control.sock"),
                                  "-o", "json", "stats"], check=True, capture_output=True,
                                 text=True).stdout
            return json.loads(out)["backends"]["http_connects"]
        rows = []
        for name, extra in cases:
            rates, cpus, conns = [], [], []
            for _ in range(args.rounds):
                n0, t0 = connects(), cpu_ticks(kp.pid)
                rate, ok, failed, _ = h2load(args, env, ["-t", "1", *extra], args.requests)
                t1, n1 = cpu_ticks(kp.pid), connects()
                if failed:
                    raise RuntimeError("%s: %d requests failed" % (name, failed))
                rates.append(rate)
                cpus.append((t1 - t0) / hz / ok * 1e6)
                conns.append((n1 - n0) * 1000 / ok)
            mid = len(rates) // 2
            rows.append((name, sorted(rates)[mid], sorted(cpus)[mid], sorted(conns)[mid]))
        stamp = datetime.datetime.utcnow().strftime("%Y-%m-%d-%H%M")
        path = os.path.join(args.out_dir, "%s-h2-vs-h1-pool%d.md" % (stamp, args.pool_max_idle))
        with open(path, "w") as f:
            f.write("# HTTP/2 vs HTTP/1.1 through kgated (bench/h2_vs_h1.py)\n\n")
            f.write("h2load -t 1, %d GETs per round (median of %d rounds), TLS 1.3, client "
                    "certificate through wrk_mtls_shim.so, kgated %d worker(s), "
                    "userspace TLS, 2 bench/http_backend origins round robin, pool_max_idle "
                    "%d; kgated CPU = "
                    "its utime+stime over the round / requests. This host: %d CPUs shared "
                    "with other jobs; %s.\n\n" % (args.requests, args.rounds, args.workers,
                                                  args.pool_max_idle, os.cpu_count(),
                                                  os.uname().release))
            f.write("| client | requests/s | kgated CPU per request (µs) | backend connects "
                    "per 1000 requests |\n| --- | --- | --- | --- |\n")
            for name, rate, cpu, conn in rows:
                f.write("| %s | %.0f | %.1f | %.1f |\n" % (name, rate, cpu, conn))
            f.write("\nIdle HTTP/2 connections (one GET each, then idle): %d; kgated RSS "
                    "%d -> %d KiB: %.1f KiB per connection.\n"
                    % (args.idle, before, after, per_conn / 1024))
        print(open(path).read())
    finally:
        procs.stop_all()


if __name__ == "__main__":
    main()
