#!/usr/bin/python3
"""kgated's https listener against HAProxy `mode http` and NGINX.

Driven by bench/run-https (which installs the packages and builds the
tools); see bench/README.md. Every proxy terminates mutual TLS, balances
each request round robin over the same two bench/http_backend origins with
kept-alive backend connections, and adds the same client-identity headers
(X-Forwarded-For, X-Forwarded-Proto, the subject DN, the SHA-1 fingerprint
and RFC 9440 Client-Cert, client-sent copies replaced). Each proxy is
checked first; then wrk (through the client-certificate shim) drives the
same keep-alive GETs through each in turn, round after round.
"""
import argparse
import base64
import csv
import datetime
import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench as kb  # noqa: E402  (bench.py: processes, wrk parsing, CPU and RSS)
from bench import BenchError, log, median  # noqa: E402

ROOT = kb.ROOT
# The identity headers, in kgated's names; every proxy adds these five.
IDENT = ["X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Clientcert-subjectdn",
         "X-Forwarded-Clientcert-fingerprint", "Client-Cert"]
# wrk prints its latency distribution beyond p99 only through a script.
WRK_LUA = """done = function(summary, latency, requests)
  for _, p in pairs({50, 90, 99, 99.9}) do
    io.write(string.format("latency_pct %g %d\\n", p, latency:percentile(p)))
  end
  io.write(string.format("latency_max %d\\n", latency.max))
end
"""


def loadavg():
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]


def tasks(pid):
    """/proc paths of every thread of pid and its child processes."""
    out = []
    for p in kb.pid_tree(pid):
        try:
            out += [f"/proc/{p}/task/{t}" for t in os.listdir(f"/proc/{p}/task")]
        except OSError:
            continue
    return out


def thread_cpu(pid):
    """CPU seconds per thread (or per process for NGINX's workers): how the
    load spread over the proxy's workers."""
    out = {}
    for t in tasks(pid):
        try:
            with open(t + "/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[t] = (int(rest[11]) + int(rest[12])) / kb.CLK_TCK
    return out


def sched_stats(pid):
    """Summed over the proxy's threads: seconds spent runnable but waiting
    for a CPU (schedstat run_delay) and voluntary context switches (times a
    thread went to sleep): how much the shared machine delayed the proxy."""
    delay, sleeps = 0.0, 0
    for t in tasks(pid):
        try:
            with open(t + "/schedstat") as f:
                delay += int(f.read().split()[1]) / 1e9
            with open(t + "/status") as f:
                m = re.search(r"^voluntary_ctxt_switches:\s+(\d+)", f.read(), re.M)
                sleeps += int(m.group(1)) if m else 0
        except (OSError, IndexError):
            continue
    return delay, sleeps


class StallSampler(threading.Thread):
    """Reads each thread's state and CPU time of the proxy every 2 ms while
    wrk runs, and notes every gap of 50 ms or more in which a thread got no
    CPU: asleep (S, waiting for events: nothing for it to do, or a missed
    wake-up) or runnable (R, waiting for a CPU: the machine's load)."""

    def __init__(self, pid):
        super().__init__(daemon=True)
        self.tasks = []
        self.group = {}  # task -> "proxy", "wrk" or "origins"
        self.add("proxy", pid)
        self.stop_at = None
        self.gaps = []  # (task, ms, dominant state)
        self.cpu = {}

    def add(self, group, pid):
        for t in tasks(pid):
            self.group[t] = group
        self.tasks = list(self.group)

    def run(self):
        last = {}
        while self.stop_at is None or time.monotonic() < self.stop_at:
            now = time.monotonic()
            for t in self.tasks:
                try:
                    with open(t + "/stat") as f:
                        state = f.read().rsplit(")", 1)[1].split()[0]
                    with open(t + "/schedstat") as f:
                        cpu = int(f.read().split()[0])
                except OSError:
                    continue
                self.cpu.setdefault(t, [cpu, cpu])[1] = cpu
                prev = last.get(t)
                if prev is None or cpu != prev[0]:
                    if prev is not None and now - prev[1] >= 0.05:
                        self.gaps.append((t, (now - prev[1]) * 1e3,
                                          max(prev[2], key=prev[2].get) if prev[2] else "?"))
                    last[t] = [cpu, now, {}]
                else:
                    prev[2][state] = prev[2].get(state, 0) + 1
            time.sleep(0.002)

    def summary(self, nworkers):
        """Gaps of the proxy's busiest nworkers threads by state, and the
        runnable gaps of wrk's and the origins' threads:
        "R 5/310 S 0/0; wrk R 2/120; origins R 1/80" (count/longest ms)."""
        def busiest(group, n):
            ts = [t for t in self.cpu if self.group.get(t) == group]
            return sorted(ts, key=lambda t: self.cpu[t][1] - self.cpu[t][0], reverse=True)[:n]

        def gaps(tasks, st):
            g = [ms for t, ms, s in self.gaps if t in tasks and s == st]
            return f"{st} {len(g)}/{max(g, default=0):.0f}"
        proxy = busiest("proxy", nworkers)
        return (f"{gaps(proxy, 'R')} {gaps(proxy, 'S')}; wrk {gaps(busiest('wrk', 3), 'R')}; "
                f"origins {gaps(busiest('origins', 2), 'R')}")


def split_text(before, after, nworkers):
    """The busiest nworkers threads' shares of the whole proxy's CPU over the
    run, e.g. "51/47" (the rest: control thread, NGINX's master)."""
    all_d = sorted((after[k] - before.get(k, 0.0) for k in after), reverse=True)
    d = all_d[:nworkers]
    total = sum(all_d)
    if total <= 0:
        return "-"
    return "/".join(f"{100 * x / total:.0f}" for x in d)


def client_conn_bytes(port):
    """Bytes each established client connection to 127.0.0.1:port has
    received so far (ss, client side): how evenly the proxy served them."""
    r = subprocess.run(["ss", "-tniH", "state", "established", "dst", f"127.0.0.1:{port}"],
                       capture_output=True, text=True)
    return [int(m.group(1)) for m in re.finditer(r"bytes_received:(\d+)", r.stdout)]


# ---- the proxies -------------------------------------------------------------
# kgated-routes: the origins as a backend group behind ROUTES routes that a
# request walks to the end (host routes that do not match, one with a
# client-certificate matcher that does not match, then "/" to the group):
# the cost of per-request routing at the table's limit.
ROUTES = 64


def bench_routes(group):
    routes = [{"name": f"h{i}", "match": {"host": f"h{i}.example.com"}, "group": group}
              for i in range(ROUTES - 2)]
    routes.append({"name": "cert", "match": {"path_prefix": "/", "cert": {"ou": "no-such-ou"}},
                   "group": group})
    routes.append({"name": "all", "match": {"path_prefix": "/"}, "group": group})
    return routes


class KgatedHttps(kb.Proxy):
    """kgated's https listener; binary lets a run compare two builds;
    routes puts the origins behind bench_routes()."""

    def __init__(self, env, workers, binary, name, routes=False):
        super().__init__(env, workers)
        self.binary = binary
        self.name = name
        self.label = name
        self.routes = routes

    def prepare(self):
        e = self.env
        self.ports["small"] = kb.free_port()
        conf = {"settings": {"workers": self.workers, "drain_timeout_ms": 2000,
                             "log_level": "info"},
                "certificates": {"web": {"type": "server", "cert": e.server_cert,
                                         "key": e.server_key},
                                 "clients": {"type": "ca", "cert": e.ca}},
                "listeners": [{"name": "web", "protocol": "https", "bind": "127.0.0.1",
                               "port": self.ports["small"], "certificate": "web",
                               "mutual_auth": "required", "ca": "clients",
                               "max_connections": e.args.idle + 10000,
                               "idle_timeout_ms": 600000,
                               "backends": [{"address": f"127.0.0.1:{p}"}
                                            for p in e.small_ports],
                               "http": {"headers": IDENT, "keepalive_timeout_ms": 600000,
                                        "pool_max_idle": 64,
                                        "access_log": "on" if e.args.access_log else "off"}}]}
        if self.routes:
            listener = conf["listeners"][0]
            conf["backend_groups"] = {"origin": {"backends": listener.pop("backends")}}
            listener["routes"] = bench_routes("origin")
        self.conf_path = os.path.join(e.work, f"{self.name}-w{self.workers}.json")
        with open(self.conf_path, "w") as f:
            json.dump(conf, f, indent=1)
        chk = subprocess.run([self.binary, "--config", self.conf_path, "--check"],
                             capture_output=True, text=True)
        if chk.returncode != 0:
            raise BenchError(f"{self.binary} --check refused the bench config: "
                             f"{chk.stderr.strip()}")

    def start(self):
        self.log = os.path.join(self.env.work,
                                f"{self.name}-w{self.workers}-{time.monotonic_ns()}.log")
        argv = [self.binary, "--config", self.conf_path, "--workers", str(self.workers)]
        if os.geteuid() == 0:
            argv += ["--user", "root"]  # the bench's private work folder
        self.logs = getattr(self, "logs", []) + [self.log]
        self.proc = self.env.procs.start(argv, self.log)
        # The second form is the line of kgated builds older than the
        # logfmt logs, which --base-kgated may name.
        kb.wait_for(self.log, r"( event=kgated\.ready |kgated ready \(pid)", 10, self.proc)


class HaproxyHttp(kb.Haproxy):
    """HAProxy mode http with the identity headers; bench.py's start."""

    def __init__(self, env, workers):
        super().__init__(env, workers, "http")

    def prepare(self):
        e = self.env
        self.ports["small"] = kb.free_port()
        bind, lines = self.common_config()
        lines += [
            "frontend f_https",
            f"  bind 127.0.0.1:{self.ports['small']} {bind}",
            # set-header replaces any copy the client sent, like kgated.
            "  http-request set-header X-Forwarded-For %[src]",
            "  http-request set-header X-Forwarded-Proto https",
            "  http-request set-header X-Forwarded-Clientcert-subjectdn "
            "%[ssl_c_s_dn(,0,rfc2253)]",
            "  http-request set-header X-Forwarded-Clientcert-fingerprint "
            "%[ssl_c_sha1,hex,lower]",
            "  http-request set-header Client-Cert :%[ssl_c_der,base64]:",
            "  default_backend b_https",
            "backend b_https",
            "  balance roundrobin",
            "  http-reuse always",
        ]
        lines += [f"  server s{i} 127.0.0.1:{p}" for i, p in enumerate(e.small_ports)]
        self.write_config(lines)


# NGINX has no base64-DER variable: the PEM body is the same base64 split in
# lines of 64, so a map joins the lines (named captures, up to 24 lines:
# 1,536 characters, a 1,150-byte certificate).
PEM_LINES = 24


def nginx_client_cert_map():
    groups = "".join(f"(?:(?<l{i}>[A-Za-z0-9+/=]+)\\n)?" for i in range(PEM_LINES))
    value = ":" + "".join(f"$l{i}" for i in range(PEM_LINES)) + ":"
    return ("map $ssl_client_raw_cert $kg_client_cert {\n"
            f"  \"~^-----BEGIN CERTIFICATE-----\\n{groups}-----END CERTIFICATE-----\" "
            f"\"{value}\";\n  default \"\";\n}}")


class NginxHttps(kb.Nginx):
    """NGINX with the identity headers; bench.py's start."""

    def prepare(self):
        e = self.env
        self.ports["small"] = kb.free_port()
        d = os.path.join(e.work, f"nginx-w{self.workers}")
        os.makedirs(d, exist_ok=True)
        ups = ("upstream u_https {\n" +
               "".join(f"  server 127.0.0.1:{p};\n" for p in e.small_ports) +
               "  keepalive 64;\n  keepalive_requests 1000000;\n  keepalive_timeout 600s;\n}")
        server = f"""server {{
  listen 127.0.0.1:{self.ports['small']} ssl;
  ssl_certificate {e.server_cert};
  ssl_certificate_key {e.server_key};
  ssl_client_certificate {e.ca};
  ssl_verify_client on;
  ssl_protocols TLSv1.2 TLSv1.3;
  ssl_ecdh_curve X25519:prime256v1;
  location / {{
    proxy_pass http://u_https;
    proxy_http_version 1.1;
    # kgated and HAProxy pass the client's Host on; a set header replaces
    # any copy the client sent.
    proxy_set_header Host $http_host;
    proxy_set_header Connection "";
    proxy_set_header X-Forwarded-For $remote_addr;
    proxy_set_header X-Forwarded-Proto https;
    proxy_set_header X-Forwarded-Clientcert-subjectdn $ssl_client_s_dn;
    proxy_set_header X-Forwarded-Clientcert-fingerprint $ssl_client_fingerprint;
    proxy_set_header Client-Cert $kg_client_cert;
  }}
}}"""
        conf = kb.nginx_conf(d, self.workers, 2 * e.args.idle + 2000,
                             "\n".join([nginx_client_cert_map(), ups, server]))
        self.write_config(d, conf)


# ---- the environment -----------------------------------------------------------
class Env(kb.Env):
    def start_backends(self):
        self.small_ports = []
        self.origins = []
        for name in ("b1", "b2"):
            logf = f"{self.work}/backend-{name}.log"
            p = self.procs.start([self.backend, "--name", name, "--port", "0",
                                  "--body-bytes", "64"], logf)
            m = kb.wait_for(logf, r"listening on 127\.0\.0\.1:(\d+)", 5, p)
            self.small_ports.append(int(m.group(1)))
            self.origins.append(p)
        log(f"origins b1 b2 on {self.small_ports}")

    def expected_identity(self):
        """The header values every proxy must add, computed here from the
        client certificate with the openssl tool, not by any proxy."""
        def ossl(*argv):
            r = subprocess.run(["openssl", "x509", "-in", self.client_cert, *argv],
                               capture_output=True)
            if r.returncode != 0:
                raise BenchError(f"openssl x509 {' '.join(argv)}: {r.stderr.decode().strip()}")
            return r.stdout
        der = ossl("-outform", "DER")
        subject = ossl("-noout", "-subject", "-nameopt", "RFC2253").decode().strip()
        return {"X-Forwarded-For": "127.0.0.1", "X-Forwarded-Proto": "https",
                "X-Forwarded-Clientcert-subjectdn": subject.split("=", 1)[1],
                "X-Forwarded-Clientcert-fingerprint": hashlib.sha1(der).hexdigest(),
                "Client-Cert": ":" + base64.b64encode(der).decode() + ":"}

    def curl_many(self, port, paths, extra=()):
        """GETs on one connection (curl reuses it); bodies and connect counts."""
        sep = "\n--KG-END--\n"
        argv = ["curl", "-sS", "--max-time", "10", "--cacert", self.ca, "--resolve",
                f"localhost:{port}:127.0.0.1", "--cert", self.client_cert, "--key",
                self.client_key, "-w", "%{http_code} %{num_connects}" + sep, *extra]
        argv += [f"https://localhost:{port}{p}" for p in paths]
        r = subprocess.run(argv, capture_output=True, text=True)
        if r.returncode != 0:
            raise BenchError(f"curl to {port}: {r.stderr.strip()}")
        out = []
        for part in r.stdout.split(sep)[:-1]:
            m = re.search(r"(\d+) (\d+)$", part)
            if not m:
                raise BenchError(f"curl to {port}: unexpected output {part[-80:]!r}")
            out.append((part[:m.start()], m.group(1), int(m.group(2))))
        return out

    def check(self, proxy):
        port = proxy.ports["small"]
        # Per-request round robin on ONE keep-alive connection.
        res = self.curl_many(port, ["/"] * 6)
        who = [b.split()[1] if b.startswith("backend ") else "?" for b, _, _ in res]
        connects = sum(n for _, _, n in res)
        if any(code != "200" for _, code, _ in res) or connects != 1 or \
                who[0::2] != [who[0]] * 3 or who[1::2] != [who[1]] * 3 or who[0] == who[1]:
            raise BenchError(f"{proxy.name}: 6 GETs on one connection: backends {who}, "
                             f"statuses {[c for _, c, _ in res]}, connects {connects} "
                             "(want strict alternation on 1 connection)")
        # Identity headers: present once each, right values, client copies gone.
        spoof = ["-H", "X-Forwarded-Clientcert-subjectdn: CN=spoofed",
                 "-H", "Client-Cert: :c3Bvb2Zl:", "-H", "X-Forwarded-For: 192.0.2.1"]
        want = self.expected_identity()
        for body, code, _ in self.curl_many(port, ["/echo", "/echo"], spoof):
            got = {}
            for line in body.splitlines()[2:]:
                k, sep, v = line.partition(":")
                if sep:
                    got.setdefault(k.strip().lower(), []).append(v.strip())
            for h, v in want.items():
                if got.get(h.lower()) != [v]:
                    raise BenchError(f"{proxy.name}: header {h}: got {got.get(h.lower())}, "
                                     f"want [{v[:60]}]")
            if code != "200":
                raise BenchError(f"{proxy.name}: /echo status {code}")
        self.check_refused(proxy, port)
        log(f"{proxy.name} w={proxy.workers}: 6 GETs on one connection alternate "
            f"({' '.join(who)}); identity headers right, client copies replaced; "
            "refused without a certificate and with another CA's")

    def run_wrk(self, proxy, tag):
        a = self.args
        env = dict(os.environ, KG_CLIENT_CERT=self.client_cert, KG_CLIENT_KEY=self.client_key,
                   KG_TLS_MAX="1.3", LD_PRELOAD=self.shim)
        out = f"{self.work}/wrk-{tag}.log"
        argv = [self.wrk, "-c", str(a.conns), "-t", str(a.threads), "-d", f"{a.duration}s",
                "--latency", "-s", self.lua, f"https://127.0.0.1:{proxy.ports['small']}/"]
        la = loadavg()[0]
        t0 = thread_cpu(proxy.pid)
        s0 = sched_stats(proxy.pid)
        c0 = kb.cpu_seconds(proxy.pid)
        sampler = StallSampler(proxy.pid)
        for o in self.origins:
            sampler.add("origins", o.pid)
        sampler.start()
        p = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
        time.sleep(0.3)  # wrk's threads exist
        sampler.add("wrk", p.pid)
        # Near the end, while wrk's connections are all open: what each got.
        time.sleep(max(0.5, a.duration - 1.0))
        per_conn = client_conn_bytes(proxy.ports["small"])
        text, _ = p.communicate()
        sampler.stop_at = time.monotonic()
        sampler.join()
        c1 = kb.cpu_seconds(proxy.pid)
        s1 = sched_stats(proxy.pid)
        t1 = thread_cpu(proxy.pid)
        with open(out, "w") as f:
            f.write(text)
        if p.returncode != 0:
            raise BenchError(f"wrk failed ({out}): {text.strip()[-300:]}")
        res = kb.parse_wrk(text)
        if res["requests"] <= 0:
            raise BenchError(f"wrk counted no request ({out})")
        for m in re.finditer(r"latency_pct ([\d.]+) (\d+)", text):
            res[f"p{m.group(1)}"] = int(m.group(2)) / 1000.0
        m = re.search(r"latency_max (\d+)", text)
        res["max_ms"] = int(m.group(1)) / 1000.0 if m else float("nan")
        kinds = re.findall(r"(?:Socket errors: (.*)|Non-2xx or 3xx responses: (\d+))", text)
        res["error_kinds"] = "; ".join(a or f"non-2xx {b}" for a, b in kinds) or "-"
        res["cpu_s"] = c1 - c0
        res["cpu_us"] = res["cpu_s"] * 1e6 / res["requests"]
        res["split"] = split_text(t0, t1, proxy.workers)
        res["stalls"] = sampler.summary(proxy.workers)
        res["wait_ms_s"] = (s1[0] - s0[0]) * 1e3 / a.duration
        res["sleeps_per_req"] = (s1[1] - s0[1]) / res["requests"]
        mean = sum(per_conn) / len(per_conn) if per_conn else float("nan")
        res["conns_seen"] = len(per_conn)
        res["conn_min"] = min(per_conn) / mean if per_conn else float("nan")
        res["conn_max"] = max(per_conn) / mean if per_conn else float("nan")
        res["load1"] = la
        return res


# ---- plan and results --------------------------------------------------------------
FIELDS = ["workers", "proxy", "round", "load1", "rps", "requests", "cpu_s", "cpu_us",
          "p50_ms", "p90_ms", "p99_ms", "p99.9_ms", "max_ms", "errors", "split",
          "conns_seen", "conn_min", "conn_max", "wait_ms_s", "sleeps_per_req", "stalls", "error_kinds"]


def run(args):
    env = Env(args)
    env.lua = os.path.join(env.work, "latency.lua")
    with open(env.lua, "w") as f:
        f.write(WRK_LUA)
    rows, idle_rows, notes = [], [], []
    load_start = loadavg()
    try:
        env.make_certs()
        env.start_backends()
        for w in args.workers:
            proxies = []
            for name in args.proxies:
                if name == "kgated":
                    proxies.append(KgatedHttps(env, w, env.kgated, "kgated"))
                elif name == "kgated-routes":
                    proxies.append(KgatedHttps(env, w, env.kgated, "kgated-routes", routes=True))
                elif name == "kgated-base":
                    if not args.base_kgated:
                        raise BenchError("kgated-base needs --base-kgated PATH")
                    proxies.append(KgatedHttps(env, w, args.base_kgated, "kgated-base"))
                elif name == "haproxy-http":
                    proxies.append(HaproxyHttp(env, w))
                elif name == "nginx":
                    proxies.append(NginxHttps(env, w))
                else:
                    raise BenchError(f"unknown proxy {name}")
            for p in proxies:
                p.prepare()
                p.start()
                env.check(p)
            for rnd in range(1, args.rounds + 1):
                for p in proxies:
                    r = env.run_wrk(p, f"{p.name}-w{w}-{rnd}")
                    log(f"w={w} round {rnd} {p.name}: {r['rps']:.0f}/s, CPU {r['cpu_us']:.1f} "
                        f"µs/req, p50 {r['p50']:.2f} p99 {r['p99']:.2f} p99.9 "
                        f"{r.get('p99.9', float('nan')):.2f} max {r['max_ms']:.1f} ms, "
                        f"threads {r['split']}, per-conn {r['conn_min']:.2f}-"
                        f"{r['conn_max']:.2f}x mean, runqueue wait {r['wait_ms_s']:.0f} ms/s, "
                        f"sleeps/req {r['sleeps_per_req']:.3f}, gaps >=50 ms without CPU (count/"
                        f"longest ms) {r['stalls']}, load {r['load1']:.2f}, "
                        f"errors {r['errors']} ({r['error_kinds']})")
                    rows.append({"workers": w, "proxy": p.name, "round": rnd,
                                 "load1": r["load1"], "rps": r["rps"],
                                 "requests": r["requests"], "cpu_s": r["cpu_s"],
                                 "cpu_us": r["cpu_us"], "p50_ms": r["p50"],
                                 "p90_ms": r.get("p90", float("nan")), "p99_ms": r["p99"],
                                 "p99.9_ms": r.get("p99.9", float("nan")),
                                 "max_ms": r["max_ms"], "errors": r["errors"],
                                 "split": r["split"], "conns_seen": r["conns_seen"],
                                 "conn_min": r["conn_min"], "conn_max": r["conn_max"],
                                 "wait_ms_s": r["wait_ms_s"],
                                 "sleeps_per_req": r["sleeps_per_req"],
                                 "stalls": r["stalls"], "error_kinds": r["error_kinds"]})
            if args.idle > 0:
                for p in proxies:
                    before, after, per = env.idle_rss(p)
                    log(f"w={w} idle {p.name}: RSS {before} -> {after} KiB with {args.idle} "
                        f"connections: {per:.1f} KiB each")
                    idle_rows.append({"workers": w, "proxy": p.name, "before": before,
                                      "after": after, "per": per})
            for p in proxies:
                p.stop()
                if isinstance(p, KgatedHttps):
                    # The first instance ran the loads; a later one, the idle test.
                    for i, path in enumerate(p.logs):
                        with open(path) as f:
                            notes += [f"{p.name} w={w} ({'loads' if i == 0 else 'idle'}): "
                                      f"{l.split(' event=', 1)[-1].strip()}"
                                      for l in f if " event=worker.stopped " in l]
        versions = kb.tool_versions(env)
    finally:
        env.cleanup()
    write_results(args, rows, idle_rows, notes, versions, load_start, loadavg())


def fmt(v, nd=1):
    return "–" if v != v else f"{v:.{nd}f}"


def write_results(args, rows, idle_rows, notes, versions, load_start, load_end):
    stamp, base = write_csv(args, "https", FIELDS, rows)
    loads = [r["load1"] for r in rows]
    md = [f"# https: kgated vs HAProxy mode http and NGINX, {stamp} UTC"
          f"{' (' + args.label + ')' if args.label else ''}", "",
          f"- machine: {os.cpu_count()} CPU, kernel {os.uname().release}; kgate "
          f"{versions.get('kgate', '?')}; {versions.get('openssl', '?')}; "
          f"{versions.get('haproxy', '?')}; {versions.get('nginx', '?')}; wrk "
          f"{versions.get('wrk', '?')}",
          f"- load average (1 min) before / during runs (min–max) / after: {load_start[0]:.2f} / "
          f"{min(loads, default=float('nan')):.2f}–{max(loads, default=float('nan')):.2f} / "
          f"{load_end[0]:.2f} (shared machine: compare CPU per request and same-round ratios)",
          f"- wrk -c {args.conns} -t {args.threads} -d {args.duration}s --latency, keep-alive "
          "GETs of 64-byte bodies, TLS 1.3, EC P-256, client certificate through the shim; "
          f"{args.rounds} rounds, proxies in turn each round; same two http_backend origins "
          "with backend keep-alive; the same five identity headers added by every proxy",
          "- CPU = utime+stime of the proxy's threads/processes over the run / wrk's requests;"
          " `× HAProxy` = median of same-round ratios; threads = share of the run's CPU per "
          "busiest worker thread/process; per-conn = bytes received by wrk's least / most "
          "served connection relative to the mean, sampled near the end; runqueue wait = "
          "time the proxy's threads were runnable but not running (schedstat), per second; "
          "sleeps/req = voluntary context switches per request", "",
          "| workers | proxy | req/s | CPU µs/req | × HAProxy http | × NGINX | p50 ms | "
          "p99 ms | p99.9 ms | max ms | threads % | per-conn min–max | runqueue wait ms/s | "
          "sleeps/req | errors |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    keys = []
    for r in rows:
        if (r["workers"], r["proxy"]) not in keys:
            keys.append((r["workers"], r["proxy"]))
    by = {(r["workers"], r["proxy"], r["round"]): r for r in rows}
    for w, p in keys:
        rs = [r for r in rows if r["workers"] == w and r["proxy"] == p]

        def ratio(anchor):
            xs = [r["cpu_us"] / by[(w, anchor, r["round"])]["cpu_us"] for r in rs
                  if (w, anchor, r["round"]) in by]
            return median(xs)
        md.append(f"| {w} | {p} | {fmt(median([r['rps'] for r in rs]), 0)} | "
                  f"**{fmt(median([r['cpu_us'] for r in rs]))}** | "
                  f"{fmt(ratio('haproxy-http'), 2)} | {fmt(ratio('nginx'), 2)} | "
                  f"{fmt(median([r['p50_ms'] for r in rs]), 2)} | "
                  f"{fmt(median([r['p99_ms'] for r in rs]), 2)} | "
                  f"{fmt(median([r['p99.9_ms'] for r in rs]), 2)} | "
                  f"{fmt(median([r['max_ms'] for r in rs]), 0)} | "
                  f"{' '.join(r['split'] for r in rs)} | "
                  f"{fmt(min(r['conn_min'] for r in rs), 2)}–"
                  f"{fmt(max(r['conn_max'] for r in rs), 2)} | "
                  f"{fmt(median([r['wait_ms_s'] for r in rs]), 0)} | "
                  f"{fmt(median([r['sleeps_per_req'] for r in rs]), 3)} | "
                  f"{sum(r['errors'] for r in rs)} |")
    md += idle_table(idle_rows, f"Idle connections ({args.idle}, handshake + one GET, then "
                     "idle; a fresh proxy each; VmRSS delta / connections):")
    if notes:
        md += ["", "kgated's counters:", ""] + [f"    {n}" for n in notes]
    write_md(base, md)


def write_csv(args, kind, fields, rows):
    """Writes every run to <out-dir>/<date>-<kind>[-label].csv; the stamp
    and the path without its extension, for the .md."""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d-%H%M")
    base = os.path.join(args.out_dir, f"{stamp}-{kind}{'-' + args.label if args.label else ''}")
    os.makedirs(args.out_dir, exist_ok=True)
    with open(base + ".csv", "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        wr.writeheader()
        for r in rows:
            wr.writerow({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()})
    return stamp, base


def idle_table(idle_rows, title):
    """The memory-per-idle-connection table's lines (none without rows)."""
    if not idle_rows:
        return []
    return ["", title, "",
            "| workers | proxy | RSS before KiB | after KiB | KiB per connection |",
            "|---|---|---|---|---|"] + [
        f"| {r['workers']} | {r['proxy']} | {r['before']} | {r['after']} | "
        f"**{r['per']:.1f}** |" for r in idle_rows]


def write_md(base, md):
    with open(base + ".md", "w") as f:
        f.write("\n".join(md) + "\n")
    log(f"results: {base}.csv, {base}.md")
    print("\n".join(md))


def add_common_args(p, workers, conns, threads, what):
    """The options bench_https.py and bench_h2.py share."""
    p.add_argument("--build", default=os.path.join(ROOT, "build-bench"))
    p.add_argument("--duration", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--workers", default=workers)
    p.add_argument("--conns", type=int, default=conns)
    p.add_argument("--threads", type=int, default=threads)
    p.add_argument("--idle", type=int, default=0,
                   help=f"also measure RSS per idle {what} connection with this many")
    p.add_argument("--out-dir", default=os.path.join(ROOT, "bench/results"))
    p.add_argument("--label", default="")
    p.add_argument("--keep", action="store_true")


def main():
    p = argparse.ArgumentParser(description="https: kgated vs HAProxy mode http and NGINX "
                                "(see bench/README.md)")
    add_common_args(p, workers="1 2", conns=50, threads=2, what="https")
    p.add_argument("--proxies", default="kgated haproxy-http nginx",
                   help="of kgated, kgated-routes (the origins behind 64 routes, the last "
                   "one matching), kgated-base, haproxy-http, nginx")
    p.add_argument("--base-kgated", default="",
                   help="another kgated binary, measured as proxy kgated-base")
    p.add_argument("--access-log", action="store_true",
                   help="kgated logs every request (diagnosis: in-daemon time per request; "
                   "costs CPU, so not for comparisons)")
    args = p.parse_args()
    # bench.py's Env sizes its limits from the idle workloads, which this
    # bench does not run (it has --idle alone).
    args.idle_cpu = []
    args.workers = [int(x) for x in args.workers.split()]
    args.proxies = args.proxies.split()
    if args.base_kgated and "kgated-base" not in args.proxies:
        args.proxies.insert(0, "kgated-base")
    return kb.run_main(run, args)


if __name__ == "__main__":
    sys.exit(main())
