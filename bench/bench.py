#!/usr/bin/python3
"""kgated against HAProxy and NGINX on loopback, with mutual TLS.

Driven by bench/run (which installs the packages and builds the tools);
see bench/README.md. Every process started here is recorded and stopped by
its PID, on success, failure or Ctrl-C.
"""
import argparse
import csv
import datetime
import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = "/usr/bin/python3"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024
BIG_BODY = 1 << 20


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


class BenchError(Exception):
    pass


# ---- processes -----------------------------------------------------------
class Procs:
    """Every process we start, stopped by PID in reverse order."""

    def __init__(self):
        self.procs = []

    def start(self, argv, logfile, env=None):
        out = open(logfile, "w")
        try:
            p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env,
                                 start_new_session=True)
        finally:
            out.close()
        self.procs.append(p)
        return p

    def stop(self, p, grace=5.0):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(grace)
            except subprocess.TimeoutExpired:
                log(f"pid {p.pid} still running after {grace}s, sending SIGKILL")
                p.kill()
                p.wait()
        if p in self.procs:
            self.procs.remove(p)
        return p.returncode

    def stop_all(self):
        for p in reversed(list(self.procs)):
            self.stop(p, 3.0)


def wait_for(path, regex, timeout, proc):
    deadline = time.monotonic() + timeout
    rx = re.compile(regex, re.M)
    while time.monotonic() < deadline:
        try:
            with open(path) as f:
                m = rx.search(f.read())
            if m:
                return m
        except FileNotFoundError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    with open(path) as f:
        tail = f.read()[-600:]
    raise BenchError(f"{os.path.basename(path)}: no /{regex}/ within {timeout}s: {tail}")


def wait_port(port, timeout, proc):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.05)
    raise BenchError(f"nothing listening on 127.0.0.1:{port}")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pid_tree(pid):
    """pid and its descendants (NGINX workers are the master's children)."""
    children = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(rest[1]), []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_seconds(pid):
    """utime+stime of the process tree (all threads: /proc/PID/stat of a
    thread-group leader sums its threads)."""
    return sum(cpu_split(pid))


def cpu_split(pid):
    """(utime, stime) seconds of the process tree: the kernel's share."""
    u = st = 0
    for p in pid_tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        u += int(rest[11])
        st += int(rest[12])
    return u / CLK_TCK, st / CLK_TCK


SYSCALL_EVENTS = ("raw_syscalls:sys_enter", "syscalls:sys_enter_io_uring_enter")


def perf_stat_start(pid, path):
    """--syscalls: perf stat counting the proxy's system calls (all of
    them, and io_uring_enter) until perf_stat_end."""
    argv = ["perf", "stat", "-x", ",", "-o", path, "-e", ",".join(SYSCALL_EVENTS),
            "-p", ",".join(str(p) for p in pid_tree(pid))]
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.3)  # attached before the load starts
    return p


def perf_stat_end(p, path):
    """{event: count} from a perf_stat_start."""
    p.send_signal(signal.SIGINT)
    p.wait(10)
    counts = {}
    with open(path) as f:
        for line in f:
            parts = line.strip().split(",")
            if len(parts) > 2 and parts[2] in SYSCALL_EVENTS and parts[0].isdigit():
                counts[parts[2]] = int(parts[0])
    return counts


def cpu_ns(pid):
    """Time on CPU of the process tree's live threads, in nanoseconds
    (/proc/PID/task/TID/schedstat): fine enough to tell an idle proxy's
    few ms per second apart, where utime+stime counts 10 ms ticks. Threads
    that exit meanwhile are not counted: for idle proxies, none do."""
    total = 0
    for p in pid_tree(pid):
        try:
            tids = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for t in tids:
            try:
                with open(f"/proc/{p}/task/{t}/schedstat") as f:
                    total += int(f.read().split()[0])
            except (OSError, ValueError, IndexError):
                continue
    return total


def rss_kib(pid):
    total = 0
    for p in pid_tree(pid):
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * PAGE_KIB
        except OSError:
            continue
    return total


# ---- the proxies -----------------------------------------------------------
class Proxy:
    """One proxy configuration, its process and its ports per workload:
    'small' (64-byte responses), 'big' (1 MiB responses) over mTLS, and
    tcp relays for workload (e)."""

    name = "?"
    label = "?"

    def __init__(self, env, workers):
        self.env = env
        self.workers = workers
        self.proc = None
        self.ports = {}
        self.relays = {}  # relay name -> port (plain tcp)
        self.notes = []

    @property
    def pid(self):
        return self.proc.pid

    def stop(self):
        if self.proc:
            rc = self.env.procs.stop(self.proc, 10.0)
            if rc not in (0, -signal.SIGTERM, 143):
                log(f"warning: {self.name} exited with status {rc}")
            self.proc = None


class Kgated(Proxy):
    name = "kgated"
    label = "kgated (userspace TLS)"

    def __init__(self, env, workers, binary=None, name=None, tickets=None, ocsp=False,
                 https=False):
        """https: the two mTLS listeners are protocol "https" (HTTP/1.1 parsed,
        backend keep-alive pool) instead of "tls"; named kgated-https.
        tickets: the listeners' tls_session_tickets ("stateless" or
        "stateful"; None: kgated's default); named kgated-<tickets>.
        ocsp: the tls listeners check client certificates with OCSP (hard,
        env's responder; after the first query answers come from the
        worker's cache, so this measures what the check costs a handshake);
        named kgated-ocsp."""
        super().__init__(env, workers)
        self.binary = binary or env.kgated
        self.tickets = tickets
        self.ocsp = ocsp
        self.https = https
        if https:
            self.name = "kgated-https"
            self.label = "kgated (https listener, userspace TLS)"
        if ocsp:
            self.name = "kgated-ocsp"
            self.label = "kgated (userspace TLS, OCSP hard, cached)"
        if name:
            self.name = name + ("-https" if https else "")
            self.label = f"kgated ({binary}{', https' if https else ''})"
        if tickets:
            self.name = f"kgated-{tickets}"
            self.label = f"kgated (userspace TLS, {tickets} tickets)"

    def config(self, sockmap):
        e = self.env
        small = [{"address": f"127.0.0.1:{p}"} for p in e.small_ports]
        big = [{"address": f"127.0.0.1:{p}"} for p in e.big_ports]
        bulk = [{"address": f"127.0.0.1:{e.bulk_port}"}]
        common = {"bind": "127.0.0.1", "max_connections": e.max_idle + 10000,
                  "idle_timeout_ms": 600000}

        def tls(name, port, backends):
            lst = dict(common, name=name, protocol="tls", port=port, certificate="web",
                       mutual_auth="required", ca="clients", forwarding="userspace",
                       backends=backends)
            if self.https:
                lst["protocol"] = "https"
                lst["http"] = {"keepalive_timeout_ms": 600000, "pool_max_idle": 64}
            if self.tickets:
                lst["tls_session_tickets"] = self.tickets
            if self.ocsp:
                lst["ocsp"] = "hard"
                lst["ocsp_url"] = e.ocsp_url()
            return lst

        listeners = [tls("small", self.ports["small"], small),
                     tls("big", self.ports["big"], big)]
        for relay, fwd in (("splice", "splice"), ("copy", "userspace"), ("sockmap", "sockmap")):
            if relay == "sockmap" and not sockmap:
                continue
            listeners.append(dict(common, name=f"tcp-{relay}", protocol="tcp",
                                  port=self.relays[relay], forwarding=fwd, backends=bulk))
        return {"settings": {"workers": self.workers, "drain_timeout_ms": 2000,
                             "log_level": "info"},
                "certificates": {"web": {"type": "server", "cert": e.server_cert,
                                         "key": e.server_key},
                                 "clients": {"type": "ca", "cert": e.ca}},
                "listeners": listeners}

    def write_config(self, sockmap):
        path = os.path.join(self.env.work, f"{self.name}-w{self.workers}{'-sockmap' if sockmap else ''}.json")
        with open(path, "w") as f:
            json.dump(self.config(sockmap), f, indent=1)
        return path

    def prepare(self):
        for k in ("small", "big"):
            self.ports[k] = free_port()
        for r in ("splice", "copy", "sockmap"):
            self.relays[r] = free_port()
        # The sockmap relay is tried at the first start: whether the kernel
        # and this kgated offer it is only known once it probes.
        self.conf_path = self.write_config(False)
        chk = subprocess.run([self.binary, "--config", self.conf_path, "--check"],
                             capture_output=True, text=True)
        if chk.returncode != 0:
            raise BenchError(f"kgated --check refused the bench config: {chk.stderr.strip()}")
        self.try_sockmap = True

    def start(self):
        if self.try_sockmap:
            self.try_sockmap = False
            full = self.write_config(True)
            try:
                self.start_with(full)
                self.conf_path = full
                return
            except BenchError as e:
                self.stop()
                lines = open(self.log).read().splitlines()
                # Not the counters' line: it names sockmap_fallback and http_errors.
                lines = [l for l in lines if " event=worker.stopped " not in l]
                why = [l for l in lines if "sockmap" in l and "error" in l] or \
                      [l for l in lines if "sockmap" in l]
                if not why:
                    raise e
                self.notes.append(f"kgated sockmap relay skipped: {why[-1].strip()}")
                log(self.notes[-1])
                del self.relays["sockmap"]
        self.start_with(self.conf_path)

    def start_with(self, conf):
        logf = os.path.join(self.env.work, f"kgated-w{self.workers}-{time.monotonic_ns()}.log")
        self.log = logf
        argv = [self.binary, "--config", conf, "--workers", str(self.workers)]
        if os.geteuid() == 0:
            # Started as root kgated switches to the "kgate" user, which
            # cannot read the bench's private work folder; root keeps it.
            argv += ["--user", "root"]
        self.proc = self.env.procs.start(argv, logf)
        wait_for(logf, r" event=kgated\.ready ", 10, self.proc)

    def counters(self, log_path=None):
        with open(log_path or self.log) as f:
            return [l.split(" event=", 1)[-1].strip() for l in f
                    if " event=worker.stopped " in l or " event=worker.bufring_empty " in l]


class Haproxy(Proxy):
    mode = "tcp"

    def __init__(self, env, workers, mode):
        super().__init__(env, workers)
        self.mode = mode
        self.name = f"haproxy-{mode}"
        self.label = f"HAProxy mode {mode}"

    def prepare(self):
        e = self.env
        for k in ("small", "big"):
            self.ports[k] = free_port()
        if self.mode == "tcp":
            self.relays["haproxy"] = free_port()
        bind, lines = self.common_config()
        for k, ports in (("small", e.small_ports), ("big", e.big_ports)):
            lines += [f"frontend f_{k}", f"  bind 127.0.0.1:{self.ports[k]} {bind}",
                      f"  default_backend b_{k}", f"backend b_{k}", "  balance roundrobin"]
            lines += [f"  server s{i} 127.0.0.1:{p}" for i, p in enumerate(ports)]
        if self.mode == "tcp":
            lines += ["frontend f_bulk", f"  bind 127.0.0.1:{self.relays['haproxy']}",
                      "  default_backend b_bulk", "backend b_bulk",
                      f"  server s0 127.0.0.1:{e.bulk_port}"]
        self.write_config(lines)

    def common_config(self):
        """The mTLS bind options, and the global and defaults sections."""
        e = self.env
        bind = (f"ssl crt {e.haproxy_pem} ca-file {e.ca} verify required "
                "ssl-min-ver TLSv1.2 curves X25519:P-256")
        return bind, [
            "global",
            f"  nbthread {self.workers}",
            f"  maxconn {e.max_idle + 500}",
            "  tune.ssl.default-dh-param 2048",
            "defaults",
            f"  mode {self.mode}",
            "  timeout connect 5s",
            "  timeout client 600s",
            "  timeout server 600s",
            "  timeout http-keep-alive 600s",
        ]

    def write_config(self, lines):
        """Writes the configuration lines and has haproxy -c check them."""
        e = self.env
        self.conf_path = os.path.join(e.work, f"{self.name}-w{self.workers}.cfg")
        with open(self.conf_path, "w") as f:
            f.write("\n".join(lines) + "\n")
        chk = subprocess.run([e.haproxy, "-c", "-f", self.conf_path], capture_output=True,
                             text=True)
        if chk.returncode != 0:
            raise BenchError(f"haproxy -c refused {self.conf_path}: {chk.stdout}{chk.stderr}")

    def start(self):
        logf = os.path.join(self.env.work, f"{self.name}-w{self.workers}.log")
        self.proc = self.env.procs.start([self.env.haproxy, "-db", "-f", self.conf_path], logf)
        for p in list(self.ports.values()) + list(self.relays.values()):
            wait_port(p, 10, self.proc)


def nginx_conf(d, workers, worker_connections, http_body):
    """nginx.conf for a bench NGINX in folder d: in the foreground, as root,
    no access log, keep-alive without limits; http_body goes inside http."""
    return f"""daemon off;
master_process on;
user root;
worker_processes {workers};
worker_rlimit_nofile {max(65536, 2 * worker_connections + 1024)};
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections {worker_connections}; }}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  keepalive_timeout 600s;
  keepalive_requests 1000000;
{http_body}
}}
"""


class Nginx(Proxy):
    name = "nginx"
    label = "NGINX http"

    def prepare(self):
        e = self.env
        for k in ("small", "big"):
            self.ports[k] = free_port()
        d = os.path.join(e.work, f"nginx-w{self.workers}")
        os.makedirs(d, exist_ok=True)
        ups = []
        servers = []
        for k, ports in (("small", e.small_ports), ("big", e.big_ports)):
            ups.append(f"upstream u_{k} {{\n" +
                       "".join(f"  server 127.0.0.1:{p};\n" for p in ports) +
                       "  keepalive 64;\n  keepalive_requests 1000000;\n"
                       "  keepalive_timeout 600s;\n}")
            servers.append(
                f"server {{\n  listen 127.0.0.1:{self.ports[k]} ssl;\n"
                f"  ssl_certificate {e.server_cert};\n  ssl_certificate_key {e.server_key};\n"
                f"  ssl_client_certificate {e.ca};\n  ssl_verify_client on;\n"
                "  ssl_protocols TLSv1.2 TLSv1.3;\n  ssl_ecdh_curve X25519:prime256v1;\n"
                f"  location / {{\n    proxy_pass http://u_{k};\n"
                "    proxy_http_version 1.1;\n    proxy_set_header Connection \"\";\n  }\n}")
        conf = nginx_conf(d, self.workers, 2 * e.max_idle + 2000,
                          "  proxy_buffers 16 16k;\n  proxy_max_temp_file_size 0;\n" +
                          "\n".join(ups) + "\n" + "\n".join(servers))
        self.write_config(d, conf)

    def write_config(self, d, conf):
        """Writes d/nginx.conf and has nginx -t check it."""
        self.conf_path = os.path.join(d, "nginx.conf")
        with open(self.conf_path, "w") as f:
            f.write(conf)
        chk = subprocess.run([self.env.nginx, "-t", "-q", "-p", d, "-c", self.conf_path],
                             capture_output=True, text=True)
        if chk.returncode != 0:
            raise BenchError(f"nginx -t refused {self.conf_path}: {chk.stderr.strip()}")

    def start(self):
        d = os.path.dirname(self.conf_path)
        logf = os.path.join(d, "stderr.log")
        self.proc = self.env.procs.start([self.env.nginx, "-p", d, "-c", self.conf_path], logf)
        for p in self.ports.values():
            wait_port(p, 10, self.proc)
        # The workers must exist before CPU and RSS are sampled.
        deadline = time.monotonic() + 5
        while len(pid_tree(self.pid)) < 1 + self.workers and time.monotonic() < deadline:
            time.sleep(0.05)


# ---- load tools --------------------------------------------------------------
def to_ms(text):
    m = re.match(r"([\d.]+)(us|ms|s|m)$", text)
    if not m:
        return float("nan")
    v = float(m.group(1))
    return v * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[m.group(2)]


def parse_wrk(text):
    r = {"requests": 0, "rps": 0.0, "p50": float("nan"), "p99": float("nan"),
         "errors": 0, "full": 0, "resumed": 0, "failed": 0, "bytes": 0}
    for line in text.splitlines():
        s = line.strip()
        m = re.match(r"(\d+) requests in [\d.]+\w+, ([\d.]+)(\w+) read", s)
        if m:
            r["requests"] = int(m.group(1))
            mult = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}
            r["bytes"] = float(m.group(2)) * mult.get(m.group(3), 1)
        elif s.startswith("Requests/sec:"):
            r["rps"] = float(s.split()[1])
        elif s.startswith("50%"):
            r["p50"] = to_ms(s.split()[1])
        elif s.startswith("99%"):
            r["p99"] = to_ms(s.split()[1])
        elif s.startswith("Socket errors:"):
            r["errors"] += sum(int(x) for x in re.findall(r"\d+", s))
        elif s.startswith("Non-2xx"):
            r["errors"] += int(s.split()[-1])
        elif "wrk_mtls_shim: handshakes" in s:
            for kv in s.split():
                if "=" in kv:
                    k, v = kv.split("=")
                    r[k] = int(v)
    return r


WORKLOADS = {
    # name: (port kind, extra wrk args, env, unit, description)
    "keepalive": ("small", [], {}, "request", "(a) keep-alive GET, 64 B"),
    "handshake": ("small", ["-H", "Connection: close"], {"KG_FULL_HANDSHAKE": "1"},
                  "handshake", "(b) Connection: close, full mTLS handshake (TLS 1.3)"),
    "bulk1m": ("big", [], {}, "MiB", "(c) keep-alive GET, 1 MiB responses"),
    # Not in the default set: wrk's SSL_clear keeps each connection's last
    # session, so every reconnect offers it; CPU is per resumed handshake.
    "resume": ("small", ["-H", "Connection: close"], {}, "resumed",
               "(g) Connection: close, resumed mTLS handshake (TLS 1.3)"),
}


class Env:
    def __init__(self, args):
        self.args = args
        # The most connections any proxy holds at once (idle workloads).
        self.max_idle = max([args.idle] + args.idle_cpu)
        self.procs = Procs()
        self.work = tempfile.mkdtemp(prefix="kgate-bench.")
        b = args.build
        self.kgated = os.path.join(b, "dataplane/kgated")
        self.kgatectl = os.path.join(b, "ctl/kgatectl")
        self.shim = os.path.join(b, "bench/wrk_mtls_shim.so")
        self.backend = os.path.join(b, "bench/http_backend")
        self.wrk = shutil.which("wrk")
        self.haproxy = shutil.which("haproxy")
        self.nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        for tool in (self.kgated, self.kgatectl, self.shim, self.backend, self.wrk,
                     self.haproxy, self.nginx):
            if not tool or not os.path.exists(tool):
                raise BenchError(f"missing tool {tool} (bench/run installs and builds them)")

    def cleanup(self):
        """Stops every process started; removes the work folder unless --keep."""
        self.procs.stop_all()
        if self.args.keep:
            log(f"kept {self.work}")
        else:
            shutil.rmtree(self.work, ignore_errors=True)

    # -- certificates: two CAs with kgatectl, the second for the rejection check
    def kgatectl_run(self, *argv):
        r = subprocess.run([self.kgatectl, *argv], capture_output=True, text=True)
        if r.returncode != 0:
            raise BenchError(f"kgatectl {' '.join(argv[:2])} failed: {r.stderr.strip()}")

    def make_certs(self):
        w = self.work
        for ca, cn in (("ca", "kgate bench CA"), ("ca2", "another CA")):
            self.kgatectl_run("ca", "init", "--dir", f"{w}/{ca}", "--subject",
                              f"/C=US/O=kgate bench/CN={cn}", "--key", "ec-p256", "--days", "2")
        self.kgatectl_run("ca", "issue", "--dir", f"{w}/ca", "--type", "server", "--subject",
                          "/C=US/O=kgate bench/CN=localhost", "--san",
                          "DNS:localhost,IP:127.0.0.1", "--key", "ec-p256", "--days", "2",
                          "--out", f"{w}/server")
        self.kgatectl_run("ca", "issue", "--dir", f"{w}/ca", "--type", "client", "--subject",
                          "/C=US/O=kgate bench/CN=bench-client", "--key", "ec-p256", "--days",
                          "2", "--out", f"{w}/client")
        self.kgatectl_run("ca", "issue", "--dir", f"{w}/ca2", "--type", "client", "--subject",
                          "/C=US/O=kgate bench/CN=stranger", "--key", "ec-p256", "--days", "2",
                          "--out", f"{w}/stranger")
        self.ca = f"{w}/ca/ca.pem"
        self.server_cert, self.server_key = f"{w}/server.pem", f"{w}/server.key"
        self.client_cert, self.client_key = f"{w}/client.pem", f"{w}/client.key"
        self.stranger_cert, self.stranger_key = f"{w}/stranger.pem", f"{w}/stranger.key"
        self.haproxy_pem = f"{w}/server-haproxy.pem"
        with open(self.haproxy_pem, "w") as out:
            for f in (self.server_cert, self.server_key):
                with open(f) as src:
                    out.write(src.read())

    def ocsp_url(self):
        """`openssl ocsp` over the bench CA's index, started on first use
        (kgated-ocsp only)."""
        if not getattr(self, "ocsp_port", None):
            self.ocsp_port = free_port()
            logf = f"{self.work}/ocsp-responder.log"
            w = self.work
            p = self.procs.start(["openssl", "ocsp", "-index", f"{w}/ca/index.txt", "-port",
                                  str(self.ocsp_port), "-rsigner", f"{w}/ca/ca.pem", "-rkey",
                                  f"{w}/ca/private/ca.key", "-CA", f"{w}/ca/ca.pem",
                                  "-nmin", "60"], logf)
            wait_for(logf, r"waiting for OCSP client connections", 5, p)
        return f"http://127.0.0.1:{self.ocsp_port}/"

    def start_backends(self):
        self.small_ports, self.big_ports = [], []
        for name, body, ports in (("b1", 64, self.small_ports), ("b2", 64, self.small_ports),
                                  ("m1", BIG_BODY, self.big_ports),
                                  ("m2", BIG_BODY, self.big_ports)):
            logf = f"{self.work}/backend-{name}.log"
            p = self.procs.start([self.backend, "--name", name, "--port", "0",
                                  "--body-bytes", str(body)], logf)
            m = wait_for(logf, r"listening on 127\.0\.0\.1:(\d+)", 5, p)
            ports.append(int(m.group(1)))
        if self.args.bulk_origin == "nginx":
            self.big_ports = self.start_nginx_origin()
        logf = f"{self.work}/bulk.log"
        p = self.procs.start([PY, f"{ROOT}/bench/bulk.py", "serve"], logf)
        self.bulk_port = int(wait_for(logf, r"bulk listening on [\d.]+:(\d+)", 5, p).group(1))
        log(f"backends: small {self.small_ports}, 1 MiB {self.big_ports}, bulk {self.bulk_port}")

    def start_nginx_origin(self):
        """--bulk-origin nginx: the 1 MiB responses come from one NGINX
        (1 worker, sendfile) serving a 1 MiB file on two ports, instead of
        two http_backend: how a backend writes (sendfile in NGINX's
        chunks, or one send of head and body) shapes what a proxy
        receives at a time. Returns the ports."""
        d = os.path.join(self.work, "nginx-origin")
        os.makedirs(os.path.join(d, "www"), exist_ok=True)
        with open(os.path.join(d, "www", "big"), "wb") as f:
            f.write(b"m" * BIG_BODY)
        ports = [free_port(), free_port()]
        servers = "".join(
            f"  server {{\n    listen 127.0.0.1:{port};\n    root {d}/www;\n"
            "    location / {\n      try_files /big =404;\n"
            "      default_type application/octet-stream;\n    }\n  }\n" for port in ports)
        conf = os.path.join(d, "nginx.conf")
        with open(conf, "w") as f:
            f.write(nginx_conf(d, 1, 1024, "  sendfile on;\n" + servers))
        p = self.procs.start([self.nginx, "-p", d, "-c", conf], os.path.join(d, "stderr.log"))
        for port in ports:
            wait_port(port, 10, p)
        return ports

    # -- correctness: 200 with the cert, refused without / with another CA's,
    # both backends answering
    def curl(self, port, cert=None, key=None):
        argv = ["curl", "-sS", "--max-time", "5", "--cacert", self.ca, "--resolve",
                f"localhost:{port}:127.0.0.1", "-o", "-", "-w", "\n%{http_code}"]
        if cert:
            argv += ["--cert", cert, "--key", key]
        r = subprocess.run(argv + [f"https://localhost:{port}/"], capture_output=True, text=True)
        body, _, code = r.stdout.rpartition("\n")
        return r.returncode, code.strip(), body

    def check_refused(self, proxy, port):
        """No 200 without a client certificate or with another CA's."""
        for what, cert, key in (("without a certificate", None, None),
                                ("with another CA's certificate", self.stranger_cert,
                                 self.stranger_key)):
            rc, code, _ = self.curl(port, cert, key)
            if rc == 0 and code == "200":
                raise BenchError(f"{proxy.name}: a client {what} got 200")

    def check(self, proxy):
        port = proxy.ports["small"]
        seen = []
        for _ in range(4):
            rc, code, body = self.curl(port, self.client_cert, self.client_key)
            if rc != 0 or code != "200" or not body.startswith("backend "):
                raise BenchError(f"{proxy.name}: with a client certificate: curl {rc}, "
                                 f"status {code}, body {body[:40]!r}")
            seen.append(body.split()[1])
        if set(seen) != {"b1", "b2"}:
            raise BenchError(f"{proxy.name}: backends did not alternate: {seen}")
        self.check_refused(proxy, port)
        rc, code, body = self.curl(proxy.ports["big"], self.client_cert, self.client_key)
        if rc != 0 or code != "200" or len(body) != BIG_BODY:
            raise BenchError(f"{proxy.name}: 1 MiB response: curl {rc}, status {code}, "
                             f"{len(body)} bytes")
        for relay, rport in proxy.relays.items():
            out = self.bulk_fetch(rport, 1 << 20)
            if out is None:
                raise BenchError(f"{proxy.name}: tcp relay {relay} lost bytes")
        log(f"{proxy.name} w={proxy.workers}: 200 from {' '.join(seen)}; refused without a "
            f"certificate and with another CA's; 1 MiB intact; relays {sorted(proxy.relays)} ok")

    # -- wrk through the shim
    def run_wrk(self, proxy, workload, tag):
        kind, extra, envx, unit, _ = WORKLOADS[workload]
        a = self.args
        conns = a.conns if workload != "bulk1m" else max(2, a.conns // 6)
        env = dict(os.environ, KG_CLIENT_CERT=self.client_cert, KG_CLIENT_KEY=self.client_key,
                   KG_TLS_MAX="1.3", LD_PRELOAD=self.shim, **envx)
        out = f"{self.work}/wrk-{tag}.log"
        argv = [self.wrk, "-c", str(conns), "-t", str(a.threads), "-d", f"{a.duration}s",
                "--latency", *extra, f"https://127.0.0.1:{proxy.ports[kind]}/"]
        perf = perf_stat_start(proxy.pid, out + ".perf") if a.syscalls else None
        rec = None
        if a.profile:
            # Every proxy, not only kgated: the anchors' profiles, taken the
            # same way in the same rounds, are what kgated's are read against.
            os.makedirs(a.profile, exist_ok=True)
            rec = subprocess.Popen(["perf", "record", "--call-graph", a.profile_call_graph,
                                    "-F", str(a.profile_freq), "-q", "-o",
                                    os.path.join(a.profile, f"{tag}.perf.data"), "-p",
                                    ",".join(str(p) for p in pid_tree(proxy.pid))],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.3)
        u0, s0 = cpu_split(proxy.pid)
        r = subprocess.run(argv, env=env, capture_output=True, text=True)
        u1, s1 = cpu_split(proxy.pid)
        counts = perf_stat_end(perf, out + ".perf") if perf else {}
        if rec:
            rec.send_signal(signal.SIGINT)
            rec.wait(30)
        with open(out, "w") as f:
            f.write(r.stdout + r.stderr)
        if r.returncode != 0:
            raise BenchError(f"wrk failed ({out}): {r.stderr.strip()[-300:]}")
        res = parse_wrk(r.stdout + r.stderr)
        res["cpu_s"] = (u1 - u0) + (s1 - s0)
        res["sys_share"] = (s1 - s0) / res["cpu_s"] if res["cpu_s"] else float("nan")
        if unit == "request":
            units = res["requests"]
        elif unit == "handshake":
            units = res["full"]
        elif unit == "resumed":
            units = res["resumed"]
        else:
            units = res["bytes"] / (1 << 20)
        res["units"] = units
        res["rate"] = res["rps"]
        # µs per request/handshake, ms per MiB
        scale = 1e3 if unit == "MiB" else 1e6
        res["cpu_per_unit"] = res["cpu_s"] * scale / units if units else float("nan")
        for key, event in (("syscalls", SYSCALL_EVENTS[0]), ("uring_enters", SYSCALL_EVENTS[1])):
            n = counts.get(event)
            res[key] = n / units if n is not None and units else float("nan")
        return res

    def bulk_fetch(self, port, nbytes):
        r = subprocess.run([PY, f"{ROOT}/bench/bulk.py", "fetch", "--port", str(port),
                            "--bytes", str(nbytes)], capture_output=True, text=True)
        m = re.search(r"bytes=(\d+) seconds=([\d.]+) gbit=([\d.]+)", r.stdout)
        if r.returncode != 0 or not m:
            got = m.group(1) if m else "?"
            self.bulk_error = f"{got} of {nbytes} bytes arrived ({r.stderr.strip()[-160:]})"
            return None
        return float(m.group(2)), float(m.group(3))

    def hold_idle(self, proxy, n, tag):
        """Opens n idle mTLS connections to proxy (handshake + one GET
        each) from as many idle_conns.py processes as it takes, each from
        its own loopback source address (one address has 28k ephemeral
        ports); returns them once all are ready."""
        per = 20000
        holders = []
        for i in range((n + per - 1) // per):
            count = min(per, n - i * per)
            logf = f"{self.work}/idle-{tag}-{i}-{time.monotonic_ns()}.log"
            holders.append((self.procs.start(
                [PY, f"{ROOT}/bench/idle_conns.py", "--port", str(proxy.ports["small"]),
                 "--cert", self.client_cert, "--key", self.client_key, "--ca", self.ca,
                 "--count", str(count), "--source", f"127.0.0.{2 + i}", "--hold", "900"],
                logf), logf))
        try:
            for p, logf in holders:
                wait_for(logf, r"^ready", 900, p)
        except BaseException:
            for p, _ in holders:
                self.procs.stop(p, 10)
            raise
        return [p for p, _ in holders]

    # -- idle connections: CPU while holding them, a fresh proxy each
    def idle_cpu(self, proxy, n):
        proxy.stop()
        proxy.start()
        rc, code, _ = self.curl(proxy.ports["small"], self.client_cert, self.client_key)
        if code != "200":
            raise BenchError(f"{proxy.name}: warm-up request failed (curl {rc}, {code})")
        holders = self.hold_idle(proxy, n, f"cpu-{proxy.name}")
        try:
            time.sleep(3.0)  # handshakes' aftermath (session tickets, trims) settles
            secs = self.args.idle_cpu_seconds
            c0, t0 = cpu_ns(proxy.pid), time.monotonic()
            time.sleep(secs)
            c1, t1 = cpu_ns(proxy.pid), time.monotonic()
            rss = rss_kib(proxy.pid)
        finally:
            for p in holders:
                self.procs.stop(p, 30)
        return (c1 - c0) / 1e6 / (t1 - t0), rss

    # -- idle connections: RSS delta on a freshly started proxy
    def idle_rss(self, proxy):
        n = self.args.idle
        proxy.stop()
        proxy.start()
        rc, code, _ = self.curl(proxy.ports["small"], self.client_cert, self.client_key)
        if code != "200":
            raise BenchError(f"{proxy.name}: warm-up request failed (curl {rc}, {code})")
        time.sleep(0.5)
        before = rss_kib(proxy.pid)
        logf = f"{self.work}/idle-{proxy.name}-w{proxy.workers}-{time.monotonic_ns()}.log"
        hold = self.procs.start([PY, f"{ROOT}/bench/idle_conns.py", "--port",
                                 str(proxy.ports["small"]), "--cert", self.client_cert, "--key",
                                 self.client_key, "--ca", self.ca, "--count", str(n),
                                 "--hold", "300"], logf)
        try:
            wait_for(logf, r"^ready", 180, hold)
            time.sleep(1.0)
            after = rss_kib(proxy.pid)
        finally:
            self.procs.stop(hold, 10)
        # What the allocator gives back once the wave is over (kgated's
        # heap trim runs within a second or two of it, heap_trim.h).
        time.sleep(3.0)
        return before, after, (after - before) / n, rss_kib(proxy.pid)


# ---- measurement plan ------------------------------------------------------------
def median(xs):
    xs = [x for x in xs if x == x]
    return statistics.median(xs) if xs else float("nan")


def run(args):
    env = Env(args)
    rows = []
    notes = []
    versions = {}
    load_start = open("/proc/loadavg").read().split()[:3]
    try:
        env.make_certs()
        env.start_backends()
        for w in args.workers:
            proxies = [Kgated(env, w), Kgated(env, w, https=True),
                       Kgated(env, w, tickets="stateless"),
                       Kgated(env, w, tickets="stateful"), Kgated(env, w, ocsp=True),
                       Haproxy(env, w, "tcp"),
                       Haproxy(env, w, "http"), Nginx(env, w)]
            proxies = [p for p in proxies if p.name in args.proxies]
            # Other kgated builds (before a change, another allocator)
            # measured in the same rounds, right after this one.
            # With kgated-https in --proxies, each of them as https too.
            extra = [Kgated(env, w, path, name) for name, path in args.compare_kgated]
            if "kgated-https" in args.proxies:
                extra += [Kgated(env, w, path, name, https=True)
                          for name, path in args.compare_kgated]
            proxies[1:1] = extra
            for p in proxies:
                p.prepare()
                p.start()
                notes.extend(n for n in p.notes if n not in notes)
                env.check(p)
            # (a)-(c): each proxy in turn, round after round (A B C D A B C D ...)
            for workload in args.workloads:
                if workload not in WORKLOADS:
                    continue
                for rnd in range(1, args.rounds + 1):
                    for p in proxies:
                        res = env.run_wrk(p, workload, f"{p.name}-w{w}-{workload}-{rnd}")
                        unit = WORKLOADS[workload][3]
                        log(f"w={w} {workload} round {rnd} {p.name}: {res['rate']:.0f}/s, p50 "
                            f"{res['p50']:.2f} ms, p99 {res['p99']:.2f} ms, CPU "
                            f"{res['cpu_per_unit']:.2f} {'ms/MiB' if unit == 'MiB' else 'µs/' + unit}"
                            f", errors {res['errors']}, handshakes full={res['full']} "
                            f"resumed={res['resumed']}")
                        rows.append(dict(workers=w, workload=workload, proxy=p.name,
                                         round=rnd, rate=res["rate"], p50_ms=res["p50"],
                                         p99_ms=res["p99"], units=res["units"], unit=unit,
                                         cpu_s=res["cpu_s"], cpu_per_unit=res["cpu_per_unit"],
                                         errors=res["errors"], hs_full=res["full"],
                                         hs_resumed=res["resumed"],
                                         sys_share=res["sys_share"],
                                         syscalls=res["syscalls"],
                                         uring_enters=res["uring_enters"]))
            # (e): tcp relays, direct baseline first in each round
            if "tcp" in args.workloads:
                relays = [("direct", None, env.bulk_port)]
                for p in proxies:
                    for r, port in sorted(p.relays.items()):
                        relays.append((f"{p.name}-{r}" if p.name == "kgated" else p.name, p,
                                       port))
                nbytes = args.bulk_mib << 20
                for rnd in range(1, args.rounds + 1):
                    for name, p, port in relays:
                        c0 = cpu_seconds(p.pid) if p else 0.0
                        got = env.bulk_fetch(port, nbytes)
                        c1 = cpu_seconds(p.pid) if p else 0.0
                        if got is None:
                            # Lost bytes are a finding, not a reason to stop
                            # the other relays: noted, no row.
                            notes.append(f"w={w} tcp round {rnd} {name}: transfer FAILED: "
                                         f"{env.bulk_error}")
                            log(notes[-1])
                            continue
                        secs, gbit = got
                        per_gib = (c1 - c0) / (nbytes / (1 << 30)) if p else float("nan")
                        log(f"w={w} tcp round {rnd} {name}: {gbit:.2f} Gbit/s, proxy CPU "
                            f"{per_gib:.3f} s/GiB")
                        rows.append(dict(workers=w, workload="tcp", proxy=name, round=rnd,
                                         rate=gbit, p50_ms=float("nan"), p99_ms=float("nan"),
                                         units=nbytes / (1 << 30), unit="GiB", cpu_s=c1 - c0,
                                         cpu_per_unit=per_gib, errors=0, hs_full=0,
                                         hs_resumed=0))
            # kgated's counters over the loads above, before (d) restarts it
            for p in proxies:
                if isinstance(p, Kgated):
                    p.stop()
                    notes.extend(f"kgated w={w} (loads) {c}" for c in p.counters())
                    p.start()
            # (d): idle connections, a fresh proxy each
            if "idle" in args.workloads and args.idle > 0:
                for rnd in range(1, args.idle_rounds + 1):
                    for p in proxies:
                        before, after, per, closed = env.idle_rss(p)
                        log(f"w={w} idle round {rnd} {p.name}: RSS {before} -> {after} KiB with "
                            f"{args.idle} connections: {per:.1f} KiB each; {closed} KiB 3 s "
                            f"after they closed")
                        notes.append(f"w={w} idle round {rnd} {p.name}: RSS {before} KiB before, "
                                     f"{after} holding {args.idle}, {closed} 3 s after they "
                                     f"closed")
                        rows.append(dict(workers=w, workload="idle", proxy=p.name, round=rnd,
                                         rate=float("nan"), p50_ms=float("nan"),
                                         p99_ms=float("nan"), units=args.idle,
                                         unit="connection", cpu_s=float("nan"),
                                         cpu_per_unit=per, errors=0, hs_full=0, hs_resumed=0,
                                         rss_before=before, rss_after=after,
                                         rss_closed=closed))
            # (f): CPU while holding idle connections, a fresh proxy each
            if "idlecpu" in args.workloads:
                for n in args.idle_cpu:
                    for p in proxies:
                        ms_s, rss = env.idle_cpu(p, n)
                        log(f"w={w} idlecpu {n} {p.name}: {ms_s:.3f} ms of CPU per second "
                            f"holding {n} idle connections (RSS {rss} KiB)")
                        rows.append(dict(workers=w, workload=f"idlecpu{n}", proxy=p.name,
                                         round=1, rate=float("nan"), p50_ms=float("nan"),
                                         p99_ms=float("nan"), units=n, unit="second",
                                         cpu_s=ms_s / 1000, cpu_per_unit=ms_s, errors=0,
                                         hs_full=0, hs_resumed=0, rss_after=rss))
            for p in proxies:
                p.stop()
                if isinstance(p, Kgated):
                    for c in p.counters():
                        notes.append(f"kgated w={w} (last instance) {c}")
        versions = tool_versions(env)
    finally:
        env.cleanup()
    load_end = open("/proc/loadavg").read().split()[:3]
    write_results(args, rows, notes, versions, load_start, load_end)


def tool_versions(env):
    def first(argv):
        r = subprocess.run(argv, capture_output=True, text=True)
        return (r.stdout + r.stderr).strip().splitlines()[0] if (r.stdout + r.stderr) else "?"
    head = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", ROOT, "diff", "--quiet", "HEAD", "--", "dataplane"]
                           ).returncode != 0
    return {
        "kgate": f"{head}{' (uncommitted dataplane changes)' if dirty else ''}, Release",
        "openssl": first(["openssl", "version"]),
        "haproxy": first([env.haproxy, "-v"]).split(" - ")[0],
        "nginx": first([env.nginx, "-v"]),
        "wrk": first(["dpkg-query", "-W", "-f=${Version}", "wrk"]),
    }


# ---- results ---------------------------------------------------------------------
UNIT_TEXT = {"request": "µs/request", "handshake": "µs/handshake",
             "resumed": "µs/resumed handshake", "MiB": "ms/MiB",
             "GiB": "s/GiB", "connection": "KiB/connection", "second": "ms CPU/s"}
WL_TEXT = {"keepalive": "(a) keep-alive GET 64 B",
           "handshake": "(b) Connection: close, full mTLS handshake",
           "bulk1m": "(c) 1 MiB responses", "idle": "(d) idle mTLS connection",
           "tcp": "(e) tcp relay, bulk one way",
           "resume": "(g) Connection: close, resumed mTLS handshake"}
ANCHORS = ("haproxy-tcp", "haproxy-http", "nginx")


def wl_text(workload):
    if workload.startswith("idlecpu"):
        return f"(f) CPU holding {int(workload[7:]):,} idle mTLS connections"
    return WL_TEXT.get(workload, workload)


def summarise(rows):
    """Median per (workers, workload, proxy); ratios are medians of the
    per-round ratios (same round = same conditions)."""
    keys = []
    for r in rows:
        k = (r["workers"], r["workload"], r["proxy"])
        if k not in keys:
            keys.append(k)
    by_round = {(r["workers"], r["workload"], r["proxy"], r["round"]): r for r in rows}
    out = []
    for k in keys:
        rs = [r for r in rows if (r["workers"], r["workload"], r["proxy"]) == k]
        s = dict(workers=k[0], workload=k[1], proxy=k[2], rounds=len(rs), unit=rs[0]["unit"])
        for f in ("rate", "p50_ms", "p99_ms", "cpu_per_unit"):
            s[f] = median([r[f] for r in rs])
        for f in ("sys_share", "syscalls", "uring_enters"):
            s[f] = median([r.get(f, float("nan")) for r in rs])
        s["errors"] = sum(r["errors"] for r in rs)
        s["hs_full"] = sum(r["hs_full"] for r in rs)
        s["hs_resumed"] = sum(r["hs_resumed"] for r in rs)
        for a in ANCHORS:
            ratios = []
            for r in rs:
                ar = by_round.get((k[0], k[1], a, r["round"]))
                if ar and ar["cpu_per_unit"] and ar["cpu_per_unit"] == ar["cpu_per_unit"]:
                    ratios.append(r["cpu_per_unit"] / ar["cpu_per_unit"])
            s[f"vs_{a}"] = median(ratios)
        out.append(s)
    return out


def fmt(v, nd=1):
    return "–" if v != v else f"{v:.{nd}f}"


def write_results(args, rows, notes, versions, load_start, load_end):
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d-%H%M")
    host = socket.gethostname().split(".")[0]
    base = os.path.join(args.out_dir, f"{stamp}-{host}{'-' + args.label if args.label else ''}")
    os.makedirs(args.out_dir, exist_ok=True)
    fields = ["workers", "workload", "proxy", "round", "rate", "p50_ms", "p99_ms", "units",
              "unit", "cpu_s", "cpu_per_unit", "errors", "hs_full", "hs_resumed",
              "rss_before", "rss_after", "rss_closed", "sys_share", "syscalls", "uring_enters"]
    with open(base + ".csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (round(v, 4) if isinstance(v, float) else v)
                        for k, v in r.items()})
    summary = summarise(rows)
    cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"],
                         capture_output=True, text=True).stdout.strip()
    mem = int(open("/proc/meminfo").read().split()[1]) / (1 << 20)
    md = [f"# kgated vs HAProxy and NGINX, {stamp} UTC{' (' + args.label + ')' if args.label else ''}",
          "",
          f"- machine: {os.cpu_count()} CPU ({cpu}), {mem:.0f} GiB, kernel {os.uname().release}",
          f"- kgate {versions.get('kgate', '?')}; {versions.get('openssl', '?')}; "
          f"{versions.get('haproxy', '?')}; {versions.get('nginx', '?')}; "
          f"wrk {versions.get('wrk', '?')}",
          f"- load average before / after: {' '.join(load_start)} / {' '.join(load_end)}"
          " (the box is shared: compare CPU per unit and same-round ratios, not rates)",
          f"- wrk -t {args.threads} -c {args.conns} (1 MiB: -c {max(2, args.conns // 6)}) "
          f"-d {args.duration}s through the client-certificate shim, TLS 1.3, EC P-256 certs "
          f"from kgatectl; {args.rounds} round(s), proxies measured in turn each round; "
          f"2 http_backend origins per workload"
          f"{' (1 MiB: one NGINX serving a file, --bulk-origin nginx)' if args.bulk_origin == 'nginx' else ''}; idle: {args.idle} connections "
          f"(handshake + one GET, then idle), a fresh proxy each, {args.idle_rounds} round(s); "
          f"tcp: {args.bulk_mib} MiB one way per transfer (bench/bulk.py)",
          "- CPU = utime+stime of the proxy's processes and threads (/proc/PID/stat) over the "
          "run, divided by the requests / full handshakes (counted by the shim) / MiB wrk read;"
          " RSS = VmRSS delta of the proxy's processes / connections",
          "- kernel share = stime / (utime+stime) of the same counters; with --syscalls, "
          "perf stat counts the proxy's system calls (raw_syscalls:sys_enter) and io_uring_enter "
          "calls over the run, per unit",
          "- values are medians over rounds; `× HAProxy tcp` / `× HAProxy http` / `× NGINX` = "
          "median of the same-round ratios of CPU (or RSS) per unit (HAProxy http is the anchor "
          "of kgated's `https` listener)",
          ""]
    md += ["| workers | workload | proxy | rate | p50 ms | p99 ms | CPU or RSS per unit | "
           "× HAProxy tcp | × HAProxy http | × NGINX | errors | handshakes full / resumed | "
           "kernel share of CPU | syscalls / io_uring_enter per unit |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in summary:
        rate = fmt(s["rate"], 2) + " Gbit/s" if s["unit"] == "GiB" else fmt(s["rate"], 0) + "/s"
        if s["unit"] in ("connection", "second"):
            rate = "–"
        md.append(f"| {s['workers']} | {wl_text(s['workload'])} | {s['proxy']} | {rate} | "
                  f"{fmt(s['p50_ms'], 2)} | {fmt(s['p99_ms'], 2)} | "
                  f"**{fmt(s['cpu_per_unit'], 3 if s['unit'] in ('MiB', 'GiB', 'second') else 1)}** "
                  f"{UNIT_TEXT[s['unit']]} | {fmt(s['vs_haproxy-tcp'], 2)} | "
                  f"{fmt(s['vs_haproxy-http'], 2)} | {fmt(s['vs_nginx'], 2)} | {s['errors']} | {s['hs_full']} / {s['hs_resumed']} | "
                  f"{fmt(100 * s['sys_share'], 0)}{'' if s['sys_share'] != s['sys_share'] else ' %'} | "
                  f"{fmt(s['syscalls'], 1)} / {fmt(s['uring_enters'], 1)} |")
    if notes:
        md += ["", "Notes and kgated's own counters:", ""]
        md += [f"    {n}" for n in notes]
    md += ["", f"![CPU per unit relative to HAProxy mode tcp]({os.path.basename(base)}.png)", ""]
    with open(base + ".md", "w") as f:
        f.write("\n".join(md) + "\n")
    plot(base, summary)
    log(f"results: {base}.csv, {base}.md, {base}.png")
    print("\n".join(md))


def plot(base, summary):
    """Clustered bars: per workload (1 worker), each proxy's CPU (RSS for
    idle) per unit relative to HAProxy mode tcp's from the same rounds."""
    gp = shutil.which("gnuplot")
    if not gp:
        log("gnuplot missing: no plot")
        return
    w0 = min(s["workers"] for s in summary) if summary else 1
    proxies = ["kgated", "haproxy-tcp", "haproxy-http", "nginx"]
    lines = ["workload " + " ".join(proxies)]
    idlecpu = sorted({x["workload"] for x in summary if x["workload"].startswith("idlecpu")},
                     key=lambda wl: int(wl[7:]))
    for wl in ("keepalive", "handshake", "bulk1m", "idle", *idlecpu):
        vals = []
        for p in proxies:
            s = next((x for x in summary if x["workers"] == w0 and x["workload"] == wl and
                      x["proxy"] == p), None)
            v = s["vs_haproxy-tcp"] if s else float("nan")
            vals.append("NaN" if v != v else f"{v:.3f}")
        if any(v != "NaN" for v in vals):
            lines.append(f'"{wl}" ' + " ".join(vals))
    with open(base + ".dat", "w") as f:
        f.write("\n".join(lines) + "\n")
    script = f"""set terminal pngcairo size 900,500 font ",10"
set output "{base}.png"
set title "CPU (idle: RSS) per unit relative to HAProxy mode tcp, {w0} worker(s); lower is better"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.8 border -1
set key top left
set yrange [0:*]
set grid ytics
set ylabel "× HAProxy mode tcp (same rounds)"
plot for [i=2:{len(proxies) + 1}] "{base}.dat" using i:xtic(1) title columnheader(i)
"""
    r = subprocess.run([gp], input=script, capture_output=True, text=True)
    if r.returncode != 0:
        log(f"gnuplot failed: {r.stderr.strip()}")
    os.remove(base + ".dat")


def run_main(run_fn, args):
    """Runs run_fn(args) with SIGTERM as an exit; the process's exit status."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        run_fn(args)
    except BenchError as e:
        log(f"error: {e}")
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


def main():
    p = argparse.ArgumentParser(description="kgated vs HAProxy and NGINX (see bench/README.md)")
    p.add_argument("--build", default=os.path.join(ROOT, "build-bench"))
    p.add_argument("--quick", action="store_true",
                   help="3 s runs, 2 rounds, 1 worker, 500 idle connections, 512 MiB transfers")
    p.add_argument("--duration", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--idle-rounds", type=int, default=1)
    p.add_argument("--workers", default="1 2")
    p.add_argument("--idle", type=int, default=2000)
    p.add_argument("--idle-cpu", default="7000 50000",
                   help="idlecpu workload: connection counts held, one fresh proxy each")
    p.add_argument("--idle-cpu-seconds", type=float, default=20.0,
                   help="idlecpu workload: how long CPU is measured while holding them")
    p.add_argument("--conns", type=int, default=50)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--bulk-mib", type=int, default=2048)
    p.add_argument("--workloads", default="keepalive handshake bulk1m tcp idle")
    p.add_argument("--proxies", default="kgated haproxy-tcp haproxy-http nginx",
                   help="also kgated-stateless, kgated-stateful: kgated with that "
                   "tls_session_tickets on its tls listeners; kgated-ocsp: OCSP hard on "
                   "them (openssl ocsp as the responder, answers cached)")
    p.add_argument("--syscalls", action="store_true",
                   help="wrk workloads: count each proxy's system calls (and io_uring_enter) "
                   "per unit with perf stat")
    p.add_argument("--profile", default="", metavar="DIR",
                   help="wrk workloads: perf record -g of each proxy's run (-p, every "
                   "process and thread of it) into DIR "
                   "(<proxy>-w<N>-<workload>-<round>.perf.data); costs CPU, so not for the "
                   "numbers of the same run")
    p.add_argument("--profile-call-graph", default="fp", choices=("fp", "dwarf"),
                   help="--profile: how perf unwinds stacks; Debian's libcrypto has no frame "
                   "pointers and no symbols for its internals, so only dwarf (.eh_frame) "
                   "reaches the exported EVP/X509 callers of its hot loops (about 8 KiB per "
                   "sample)")
    p.add_argument("--profile-freq", type=int, default=4000, metavar="HZ",
                   help="--profile: samples per second (perf record -F)")
    p.add_argument("--bulk-origin", default="backend", choices=("backend", "nginx"),
                   help="what serves the 1 MiB responses: two http_backend (default) or "
                   "one NGINX serving a 1 MiB file on two ports")
    p.add_argument("--out-dir", default=os.path.join(ROOT, "bench/results"))
    p.add_argument("--label", default="")
    p.add_argument("--compare-kgated", default=[], action="append", metavar="[NAME=]PATH",
                   help="also measure this kgated binary (another build) as kgated-compare, "
                   "or as kgated-NAME; may be given several times")
    p.add_argument("--keep", action="store_true")
    args = p.parse_args()
    if args.quick:
        args.duration, args.rounds, args.idle, args.bulk_mib = 3, 2, 500, 512
        if args.workers == "1 2":
            args.workers = "1"
    args.workers = [int(x) for x in args.workers.split()]
    args.workloads = args.workloads.split()
    args.idle_cpu = [int(x) for x in args.idle_cpu.split()] if "idlecpu" in args.workloads else []
    # Thousands of held connections: the proxies, backends and holders
    # (children) need more descriptors than a login shell has. A proxy
    # holds two per connection, so the hard limit caps what can be held.
    want = max(65536, 4 * max([args.idle] + args.idle_cpu) + 4096)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < want and os.geteuid() == 0:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            soft, hard = want, want
        except (ValueError, OSError):
            pass  # no CAP_SYS_RESOURCE: the hard limit stays
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    too_many = [n for n in args.idle_cpu if 2 * n + 1024 > target]
    if too_many:
        log(f"error: --idle-cpu {too_many}: a proxy needs two descriptors per connection and "
            f"the open-file limit here is {target} (raising it needs CAP_SYS_RESOURCE)")
        return 2
    args.proxies = args.proxies.split()
    if (args.syscalls or args.profile) and not shutil.which("perf"):
        p.error("--syscalls and --profile need perf (Debian: linux-perf)")
    compare = []
    for c in args.compare_kgated:
        name, sep, path = c.partition("=")
        compare.append((f"kgated-{name}", path) if sep else ("kgated-compare", c))
    args.compare_kgated = compare
    if "haproxy-tcp" not in args.proxies or "nginx" not in args.proxies:
        log("note: ratios need haproxy-tcp and nginx in --proxies")
    return run_main(run, args)


if __name__ == "__main__":
    sys.exit(main())
