#!/usr/bin/python3
"""HTTP/2 front ends: kgated's https listener against HAProxy and NGINX.

Driven by bench/run-h2 (which installs the packages and builds the tools);
see bench/README.md. The proxies are bench_https.py's (mutual TLS, the same
five identity headers, round robin over the same two http_backend origins
with kept-alive HTTP/1.1 backend connections), with h2 offered by ALPN:
kgated's default, HAProxy's `alpn h2,http/1.1`, NGINX's `listen ... http2`.
Each is checked first over h2 (curl --http2: protocol, per-stream
alternation on one connection, identity headers); then h2load (through the
client-certificate shim) drives GETs at 1 and at 100 concurrent streams per
connection through each in turn, round after round. Reports requests/s,
proxy CPU per request, p50/p99 from h2load's per-request log, and, with
--idle N, memory per idle h2 connection (ALPN h2, one GET, then idle).
"""
import argparse
import os
import re
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench as kb  # noqa: E402
import bench_https as kh  # noqa: E402
from bench import BenchError, log, median  # noqa: E402

ROOT = kb.ROOT


class KgatedH2(kh.KgatedHttps):
    """kgated's https listener with h2 on (its default, said explicitly)."""

    def prepare(self):
        super().prepare()
        with open(self.conf_path) as f:
            conf = kh.json.load(f)
        conf["listeners"][0]["h2"] = True
        # Idle backend connections kept per origin: one per stream in
        # flight (HAProxy's http-reuse keeps them all; NGINX gets the same
        # keepalive below), so no proxy reconnects at 100 streams.
        conf["listeners"][0]["http"]["pool_max_idle"] = pool_size(self.env.args)
        with open(self.conf_path, "w") as f:
            kh.json.dump(conf, f, indent=1)


def pool_size(args):
    """Streams in flight at once (round robin halves them per origin),
    within kgated's bound on pool_max_idle."""
    return min(1024, args.conns * max(args.streams))


class HaproxyH2(kh.HaproxyHttp):
    def prepare(self):
        super().prepare()
        with open(self.conf_path) as f:
            text = f.read()
        with open(self.conf_path, "w") as f:
            f.write(re.sub(r"(\n  bind 127\.0\.0\.1:\d+ .*)", r"\1 alpn h2,http/1.1", text,
                           count=1))


class NginxH2(kh.NginxHttps):
    def write_config(self, d, conf):
        # Every stream in flight holds a backend connection: room for all.
        need = 2 * (self.env.args.conns * max(self.env.args.streams) + self.env.args.idle) + 2000
        conf = re.sub(r"keepalive 64;", f"keepalive {pool_size(self.env.args)};", conf)
        conf = re.sub(r"worker_connections (\d+);",
                      lambda m: f"worker_connections {max(int(m.group(1)), need)};", conf)
        super().write_config(d, re.sub(r"(listen 127\.0\.0\.1:\d+ ssl);", r"\1 http2;", conf))


PROXIES = {"kgated": lambda env, w: KgatedH2(env, w, env.kgated, "kgated"),
           "haproxy-http": lambda env, w: HaproxyH2(env, w),
           "nginx": lambda env, w: NginxH2(env, w)}


class Env(kh.Env):
    def check_h2(self, proxy):
        port = proxy.ports["small"]
        r = subprocess.run(["curl", "-sS", "--http2", "--max-time", "10", "--cacert", self.ca,
                            "--resolve", f"localhost:{port}:127.0.0.1", "--cert",
                            self.client_cert, "--key", self.client_key, "-o", "/dev/null",
                            "-w", "%{http_version} %{http_code}", f"https://localhost:{port}/"],
                           capture_output=True, text=True)
        if r.stdout.strip() != "2 200":
            raise BenchError(f"{proxy.name}: curl --http2 got {r.stdout.strip()!r} "
                             f"{r.stderr.strip()}")
        self.check(proxy)  # HTTP/1.1 checks: alternation, identity, refusals
        # The same over h2: who answered each of six streams on one connection.
        res = self.curl_many(port, ["/"] * 6, ["--http2"])
        who = [b.split()[1] if b.startswith("backend ") else "?" for b, _, _ in res]
        if sum(n for _, _, n in res) != 1 or who[0] == who[1] or \
                who[0::2] != [who[0]] * 3 or who[1::2] != [who[1]] * 3:
            raise BenchError(f"{proxy.name}: 6 h2 streams on one connection went to {who}")
        log(f"{proxy.name}: h2 negotiated; 6 streams on one connection alternate "
            f"({' '.join(who)})")

    def run_h2load(self, proxy, streams, tag):
        a = self.args
        env = dict(os.environ, KG_CLIENT_CERT=self.client_cert, KG_CLIENT_KEY=self.client_key,
                   KG_TLS_MAX="1.3", LD_PRELOAD=self.shim)
        out = f"{self.work}/h2load-{tag}.log"
        reqlog = f"{self.work}/h2load-{tag}.req"
        argv = [self.h2load, "-c", str(a.conns), "-t", str(a.threads), "-m", str(streams),
                "-D", str(a.duration), "--warm-up-time", "1", "--log-file", reqlog,
                f"https://127.0.0.1:{proxy.ports['small']}/"]
        la = kh.loadavg()[0]
        c0 = kb.cpu_seconds(proxy.pid)
        r = subprocess.run(argv, env=env, capture_output=True, text=True,
                           timeout=a.duration + 60)
        c1 = kb.cpu_seconds(proxy.pid)
        with open(out, "w") as f:
            f.write(r.stdout + r.stderr)
        m = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, "
                      r"(\d+) failed, (\d+) errored, (\d+) timeout", r.stdout)
        fin = re.search(r"finished in ([\d.]+)s, ([\d.]+) req/s", r.stdout)
        if r.returncode != 0 or not m or not fin:
            raise BenchError(f"h2load failed ({out}): {(r.stdout + r.stderr).strip()[-300:]}")
        codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", r.stdout)
        done = int(m.group(2))
        if done <= 0:
            raise BenchError(f"h2load finished no request ({out})")
        lat = []
        with open(reqlog) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3:
                    lat.append(int(parts[2]) / 1000.0)
        lat.sort()

        def pct(p):
            return lat[min(len(lat) - 1, int(len(lat) * p / 100))] if lat else float("nan")
        errors = int(m.group(4)) + int(m.group(5)) + int(m.group(6))
        if codes:
            errors += int(codes.group(3)) + int(codes.group(4))
        # Warm-up requests are not in the count h2load reports; the CPU
        # window covers them too, so measure against every request logged.
        reqs = max(done, len(lat))
        return {"load1": la, "rps": float(fin.group(2)), "requests": reqs,
                "cpu_s": c1 - c0, "cpu_us": (c1 - c0) * 1e6 / reqs, "p50_ms": pct(50),
                "p99_ms": pct(99), "errors": errors}

    def idle_h2_rss(self, proxy):
        n = self.args.idle
        proxy.stop()
        proxy.start()
        time.sleep(0.5)
        before = kb.rss_kib(proxy.pid)
        logf = f"{self.work}/idle-h2-{proxy.name}-{time.monotonic_ns()}.log"
        hold = self.procs.start([kb.PY, f"{ROOT}/bench/idle_conns.py", "--h2", "--port",
                                 str(proxy.ports["small"]), "--cert", self.client_cert,
                                 "--key", self.client_key, "--ca", self.ca, "--count", str(n),
                                 "--hold", "300"], logf)
        try:
            kb.wait_for(logf, r"^ready", 180, hold)
            time.sleep(1.0)
            after = kb.rss_kib(proxy.pid)
        finally:
            self.procs.stop(hold, 10)
        return before, after, (after - before) / n


FIELDS = ["workers", "proxy", "streams", "round", "load1", "rps", "requests", "cpu_s",
          "cpu_us", "p50_ms", "p99_ms", "errors"]


def run(args):
    env = Env(args)
    env.h2load = subprocess.run(["sh", "-c", "command -v h2load"], capture_output=True,
                                text=True).stdout.strip()
    if not env.h2load:
        raise BenchError("h2load not found (Debian's nghttp2-client)")
    rows, idle_rows = [], []
    load_start = kh.loadavg()
    try:
        env.make_certs()
        env.start_backends()
        for w in args.workers:
            proxies = [PROXIES[name](env, w) for name in args.proxies]
            for p in proxies:
                p.prepare()
                p.start()
                env.check_h2(p)
            for streams in args.streams:
                for rnd in range(1, args.rounds + 1):
                    for p in proxies:
                        r = env.run_h2load(p, streams, f"{p.name}-w{w}-m{streams}-{rnd}")
                        log(f"w={w} m={streams} round {rnd} {p.name}: {r['rps']:.0f}/s, CPU "
                            f"{r['cpu_us']:.1f} µs/req, p50 {r['p50_ms']:.2f} p99 "
                            f"{r['p99_ms']:.2f} ms, errors {r['errors']}, load {r['load1']:.2f}")
                        rows.append(dict(r, workers=w, proxy=p.name, streams=streams,
                                         round=rnd))
            if args.idle > 0:
                for p in proxies:
                    before, after, per = env.idle_h2_rss(p)
                    log(f"w={w} idle h2 {p.name}: RSS {before} -> {after} KiB: {per:.1f} "
                        "KiB each")
                    idle_rows.append({"workers": w, "proxy": p.name, "before": before,
                                      "after": after, "per": per})
            for p in proxies:
                p.stop()
        versions = kb.tool_versions(env)
        versions["h2load"] = subprocess.run([env.h2load, "--version"], capture_output=True,
                                            text=True).stdout.strip()
    finally:
        env.cleanup()
    write_results(args, rows, idle_rows, versions, load_start, kh.loadavg())


def write_results(args, rows, idle_rows, versions, load_start, load_end):
    stamp, base = kh.write_csv(args, "h2", FIELDS, rows)
    loads = [r["load1"] for r in rows]
    md = [f"# HTTP/2 front ends: kgated vs HAProxy and NGINX, {stamp} UTC"
          f"{' (' + args.label + ')' if args.label else ''}", "",
          f"- machine: {os.cpu_count()} CPU, kernel {os.uname().release}; kgate "
          f"{versions.get('kgate', '?')}; {versions.get('openssl', '?')}; "
          f"{versions.get('haproxy', '?')}; {versions.get('nginx', '?')}; "
          f"{versions.get('h2load', '?')}",
          f"- load average (1 min) before / during runs (min–max) / after: {load_start[0]:.2f} / "
          f"{min(loads, default=float('nan')):.2f}–{max(loads, default=float('nan')):.2f} / "
          f"{load_end[0]:.2f} (shared machine: compare same-round ratios)",
          f"- h2load -c {args.conns} -t {args.threads} -m STREAMS -D {args.duration} "
          "--warm-up-time 1, GETs of 64-byte bodies, TLS 1.3, client certificate through "
          f"the shim; {args.rounds} rounds, proxies in turn; HTTP/1.1 keep-alive to the same "
          "two http_backend origins; the same five identity headers added by every proxy",
          "- CPU = utime+stime of the proxy over the run / requests h2load logged; ratios = "
          "median of same-round ratios; p50/p99 from h2load's per-request log", "",
          "| workers | streams/conn | proxy | req/s | CPU µs/req | × HAProxy | × NGINX | "
          "× better anchor | p50 ms | p99 ms | errors |",
          "|---|---|---|---|---|---|---|---|---|---|---|"]
    keys = []
    for r in rows:
        if (r["workers"], r["streams"], r["proxy"]) not in keys:
            keys.append((r["workers"], r["streams"], r["proxy"]))
    by = {(r["workers"], r["streams"], r["proxy"], r["round"]): r for r in rows}
    for w, s, p in keys:
        rs = [r for r in rows if (r["workers"], r["streams"], r["proxy"]) == (w, s, p)]

        def ratio(anchors):
            xs = []
            for r in rs:
                vs = [by[(w, s, a, r["round"])]["cpu_us"] for a in anchors
                      if (w, s, a, r["round"]) in by]
                if vs:
                    xs.append(r["cpu_us"] / min(vs))
            return median(xs)
        md.append(f"| {w} | {s} | {p} | {kh.fmt(median([r['rps'] for r in rs]), 0)} | "
                  f"**{kh.fmt(median([r['cpu_us'] for r in rs]))}** | "
                  f"{kh.fmt(ratio(['haproxy-http']), 2)} | {kh.fmt(ratio(['nginx']), 2)} | "
                  f"{kh.fmt(ratio(['haproxy-http', 'nginx']), 2)} | "
                  f"{kh.fmt(median([r['p50_ms'] for r in rs]), 2)} | "
                  f"{kh.fmt(median([r['p99_ms'] for r in rs]), 2)} | "
                  f"{sum(r['errors'] for r in rs)} |")
    md += kh.idle_table(idle_rows, f"Idle h2 connections ({args.idle}; ALPN h2, one GET, then "
                        "idle; a fresh proxy each; VmRSS delta / connections):")
    kh.write_md(base, md)


def main():
    p = argparse.ArgumentParser(description="HTTP/2: kgated vs HAProxy and NGINX "
                                "(see bench/README.md)")
    kh.add_common_args(p, workers="1", conns=20, threads=1, what="h2")
    p.add_argument("--streams", default="1 100",
                   help="concurrent streams per connection (h2load -m), each measured")
    p.add_argument("--proxies", default="kgated haproxy-http nginx",
                   help="of kgated, haproxy-http, nginx")
    args = p.parse_args()
    # bench.py's Env sizes HAProxy's maxconn (and so its descriptors) from
    # the most connections held at once: every stream in flight holds a
    # backend connection.
    args.streams = [int(x) for x in args.streams.split()]
    args.idle_cpu = [args.conns * max(args.streams)]
    args.access_log = False
    args.workers = [int(x) for x in args.workers.split()]
    args.proxies = args.proxies.split()
    for name in args.proxies:
        if name not in PROXIES:
            p.error(f"unknown proxy {name}")
    return kb.run_main(run, args)


if __name__ == "__main__":
    sys.exit(main())
