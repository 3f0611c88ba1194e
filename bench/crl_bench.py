#!/usr/bin/python3
"""A 100,000-entry CRL in kgated: load time, handshake cost, memory, and
whether requests keep flowing while it is replaced (issue 16, section 4;
HAProxy users report that large CRLs fail).

bench/crl_bench.py [--build DIR] [--entries N] [--handshakes N] [--clients N]
                   [--reloads N] [--label L]

1. Makes a CA (kgatectl ca init), a server certificate, a good client and a
   victim client; an empty CRL and --reloads + 1 CRLs of
   --entries revoked serials (random, plus the victim's), built with the
   Python cryptography module (one signature each), lastUpdate increasing.
2. Starts kgated (Release, 2 workers, config file, no state dir) with a tls
   listener in front of bench/http_backend, and the empty CRL.
3. Sequential full mTLS handshakes (+ one GET, Connection: close) with the
   empty CRL: client latency and kgated's CPU per handshake (schedstat of
   every thread); kgated's VmRSS.
4. Renames the first large CRL over the file: time from the rename to
   crl.reloaded and to the victim being refused, load_ms as kgated logs
   it, VmRSS after; then the same handshakes again.
5. --clients processes make handshakes + GETs back to back while the
   large CRL is replaced --reloads times, 3 s apart: latency (p50, p99,
   max) and failures of the requests that started while a reload was
   under way (rename to crl.reloaded + 0.5 s) against those that did not.
Writes bench/results/<date>-crl[-label].md and prints it. Root (kgated's
--user root); everything it starts it stops by PID.
"""
import argparse
import datetime
import json
import multiprocessing
import os
import random
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(REPO, "tests", "tools"))
import logfmt  # noqa: E402


def log(msg):
    print("crl_bench.py: " + msg, flush=True)


def run(cmd):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=300)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Pki:
    def __init__(self, root, kgatectl):
        self.root, self.kgatectl = root, kgatectl
        self.dir = os.path.join(root, "ca")
        os.makedirs(root, exist_ok=True)
        run([kgatectl, "ca", "init", "--dir", self.dir, "--subject",
             "/C=DE/O=kgate bench/CN=kgate CRL bench CA", "--days", "30"])
        run([kgatectl, "ca", "issue", "--dir", self.dir, "--type", "server", "--subject",
             "/O=kgate bench/CN=localhost", "--san", "DNS:localhost,IP:127.0.0.1", "--days",
             "30", "--out", self.path("server")])
        for who in ("good", "victim"):
            run([kgatectl, "ca", "issue", "--dir", self.dir, "--type", "client", "--subject",
                 "/O=kgate bench/CN=" + who, "--days", "30", "--out", self.path(who)])
        self.ca = os.path.join(self.dir, "ca.pem")

    def path(self, name):
        return os.path.join(self.root, name)

    def serial(self, who):
        with open(self.path(who) + ".pem", "rb") as f:
            return x509.load_pem_x509_certificate(f.read()).serial_number

    def big_crl(self, out, entries, age_s):
        """entries revoked serials (the victim's among them), signed by the CA,
        lastUpdate age_s seconds ago."""
        with open(os.path.join(self.dir, "private", "ca.key"), "rb") as f:
            key = serialization.load_pem_private_key(f.read(), None)
        with open(self.ca, "rb") as f:
            issuer = x509.load_pem_x509_certificate(f.read()).subject
        now = datetime.datetime.now(datetime.timezone.utc)
        rng = random.Random(age_s)
        serials = {self.serial("victim")} if entries else set()
        good = self.serial("good")
        while len(serials) < entries:
            s = rng.getrandbits(127) | 1
            if s != good:
                serials.add(s)
        when = now - datetime.timedelta(days=1)
        revoked = [x509.RevokedCertificateBuilder().serial_number(s).revocation_date(when).build()
                   for s in serials]
        # The builder's constructor takes the list whole: add_revoked_certificate
        # copies the list each time (quadratic).
        b = x509.CertificateRevocationListBuilder(
            issuer_name=issuer, last_update=now - datetime.timedelta(seconds=age_s),
            next_update=now + datetime.timedelta(days=7), revoked_certificates=revoked)
        crl = b.sign(key, hashes.SHA256())
        with open(out, "wb") as f:
            f.write(crl.public_bytes(serialization.Encoding.PEM))
        return out


def client_ctx(pki, who):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(pki.ca)
    ctx.load_cert_chain(pki.path(who) + ".pem", pki.path(who) + ".key")
    return ctx


def request(ctx, port):
    """One full handshake and a GET; True when the answer is a 200."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        # The GET right after the client's Finished: without NODELAY, Nagle
        # holds it for the delayed ACK (40 ms) and hides what is measured.
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            data = b""
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
    return data.startswith(b"HTTP/1.1 200")


def accepted(ctx, port):
    try:
        return request(ctx, port)
    except (ssl.SSLError, OSError):
        return False


class Kgated:
    def __init__(self, kgated, cfg, workdir, mport):
        self.workdir = workdir
        path = os.path.join(workdir, "kgated.json")
        with open(path, "w") as f:
            json.dump(cfg, f)
        self.log_path = os.path.join(workdir, "kgated.log")
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen([kgated, "--config", path, "--user", "root",
                                      "--metrics", "127.0.0.1:%d" % mport],
                                     stdout=self._log, stderr=self._log,
                                     stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while not self.events("kgated.ready"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("kgated did not start (exit %s):\n%s"
                                 % (self.proc.poll(), open(self.log_path).read()))
            time.sleep(0.05)
        self.port = int(self.events("listener.listening")[0]["addr"].rsplit(":", 1)[1])

    def events(self, name):
        out = []
        with open(self.log_path) as f:
            for line in f:
                try:
                    e = logfmt.parse_line(line.rstrip("\n"))
                except logfmt.LogfmtError:
                    continue
                if e["event"] == name:
                    out.append(e)
        return out

    def cpu_ns(self):
        total = 0
        task = "/proc/%d/task" % self.proc.pid
        for tid in os.listdir(task):
            try:
                with open(os.path.join(task, tid, "schedstat")) as f:
                    total += int(f.read().split()[0])
            except OSError:
                pass  # a thread that ended meanwhile
        return total

    def rss_kib(self):
        with open("/proc/%d/status" % self.proc.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def handshakes(ctx, port, n, d):
    lat = []
    cpu0 = d.cpu_ns()
    for _ in range(n):
        t0 = time.perf_counter()
        assert request(ctx, port), "a good client was refused"
        lat.append(time.perf_counter() - t0)
    cpu = (d.cpu_ns() - cpu0) / n / 1e3
    return lat, cpu


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100.0 * (len(xs) - 1))))] if xs else float("nan")


def load_client(args):
    """One load process: requests back to back until stop_at (wall time);
    returns [(start wall time, seconds, ok)]."""
    pki_root, ca, port, stop_at = args
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(ca)
    ctx.load_cert_chain(os.path.join(pki_root, "good.pem"), os.path.join(pki_root, "good.key"))
    out = []
    while time.time() < stop_at:
        t0 = time.time()
        p0 = time.perf_counter()
        try:
            ok = request(ctx, port)
        except (ssl.SSLError, OSError):
            ok = False
        out.append((t0, time.perf_counter() - p0, ok))
    return out


def log_time(e):
    return datetime.datetime.strptime(e["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=datetime.timezone.utc).timestamp()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default=os.path.join(REPO, "build-release"))
    ap.add_argument("--entries", type=int, default=100000)
    ap.add_argument("--handshakes", type=int, default=300)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--reloads", type=int, default=3)
    ap.add_argument("--label", default="")
    a = ap.parse_args()
    kgated = os.path.join(a.build, "dataplane", "kgated")
    kgatectl = os.path.join(a.build, "ctl", "kgatectl")
    backend_bin = os.path.join(a.build, "bench", "http_backend")
    for exe in (kgated, kgatectl, backend_bin):
        if not os.access(exe, os.X_OK):
            raise SystemExit("missing %s (cmake --build %s)" % (exe, a.build))
    rev = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True).stdout.strip()
    tmp = tempfile.mkdtemp(prefix="kgate-crl-bench-")
    backend = d = None
    rows = []
    try:
        pki = Pki(os.path.join(tmp, "pki"), kgatectl)
        crl_dir = os.path.join(tmp, "crls")
        os.makedirs(crl_dir)
        live = os.path.join(crl_dir, "ca.crl")
        # Empty, and older than the large ones: kgated refuses a CRL older
        # than the one in force.
        pki.big_crl(live, 0, age_s=3600)
        bigs = []
        for i in range(a.reloads + 1):
            t0 = time.monotonic()
            bigs.append(pki.big_crl(os.path.join(tmp, "big%d.crl" % i), a.entries,
                                    age_s=600 - 60 * i))
            log("made %s (%d entries, %.1f MB) in %.1f s"
                % (bigs[-1], a.entries, os.path.getsize(bigs[-1]) / 1e6, time.monotonic() - t0))
        bport = free_port()
        backend = subprocess.Popen([backend_bin, "--bind", "127.0.0.1", "--port", str(bport),
                                    "--name", "a"], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        time.sleep(0.3)
        cfg = {"settings": {"workers": 2, "log_level": "info"},
               "certificates": {
                   "web": {"type": "server", "cert": pki.path("server") + ".pem",
                           "key": pki.path("server") + ".key"},
                   "clients": {"type": "ca", "cert": pki.ca, "crl": live}},
               "listeners": [{"name": "web", "protocol": "tls", "bind": "127.0.0.1",
                              "port": 0, "certificate": "web", "ca": "clients",
                              "forwarding": "userspace",
                              "tls_session_cache": 0,
                              "backends": [{"address": "127.0.0.1:%d" % bport}]}]}
        d = Kgated(kgated, cfg, tmp, free_port())
        good, victim = client_ctx(pki, "good"), client_ctx(pki, "victim")
        assert accepted(good, d.port) and accepted(victim, d.port)
        handshakes(good, d.port, 20, d)  # warm-up
        rss_small = d.rss_kib()
        lat_small, cpu_small = handshakes(good, d.port, a.handshakes, d)

        # The first large CRL: rename over the watched file.
        t_rename = time.time()
        os.rename(bigs[0], live)
        t_mono = time.monotonic()
        refused_after = None
        while time.monotonic() - t_mono < 30:
            if not accepted(victim, d.port):
                refused_after = time.monotonic() - t_mono
                break
            time.sleep(0.01)
        ev = d.events("crl.reloaded")
        assert ev, open(d.log_path).read()[-3000:]
        reloaded_after = log_time(ev[-1]) - t_rename
        load_ms = int(ev[-1]["load_ms"])
        time.sleep(0.5)
        rss_big = d.rss_kib()
        handshakes(good, d.port, 20, d)
        lat_big, cpu_big = handshakes(good, d.port, a.handshakes, d)

        # Reloads under load.
        start = time.time() + 1.0
        stop_at = start + 2.0 + 3.0 * a.reloads + 2.0
        pool = multiprocessing.Pool(a.clients)
        res = pool.map_async(load_client, [(pki.root, pki.ca, d.port, stop_at)] * a.clients)
        renames = []
        time.sleep(max(0, start + 2.0 - time.time()))
        for i in range(1, a.reloads + 1):
            renames.append(time.time())
            os.rename(bigs[i], live)
            time.sleep(3.0)
        samples = [s for part in res.get(timeout=stop_at - time.time() + 60) for s in part]
        pool.close()
        pool.join()
        reloaded = [log_time(e) for e in d.events("crl.reloaded")][1:]
        windows = []
        for r in renames:
            done = min((t for t in reloaded if t >= r - 0.05), default=r + 3.0)
            windows.append((r, done + 0.5))
        during = [s for s in samples if any(lo <= s[0] <= hi for lo, hi in windows)]
        outside = [s for s in samples if s[0] >= start and s not in during]
        rss_after = d.rss_kib()
        loads = [int(e["load_ms"]) for e in d.events("crl.reloaded")]
        refused = d.events("crl.refused")
    finally:
        if d:
            d.stop()
        if backend:
            backend.send_signal(signal.SIGTERM)
            backend.wait(timeout=10)

    def stats(xs):
        ms = [x * 1000 for x in xs]
        return "%.2f | %.2f | %.2f" % (pct(ms, 50), pct(ms, 99), max(ms) if ms else 0)

    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d-%H%M")
    size = os.path.getsize(os.path.join(tmp, "crls", "ca.crl"))
    lines = [
        "# kgated with a %d-entry CRL, %s UTC" % (a.entries, stamp),
        "",
        "- kgate %s, Release (%s); %d CPUs; load average %s" % (
            rev, a.build, os.cpu_count(), open("/proc/loadavg").read().split(" ", 3)[:3]),
        "- kgated: 2 workers, one tls listener (userspace path, no session resumption) in "
        "front of bench/http_backend; clients: Python ssl, a full TLS 1.3 mTLS handshake "
        "(EC P-256) and one GET per connection",
        "- CRL: %d revoked serials (random 127-bit, the victim's among them), PEM %.1f MB, "
        "made with python3-cryptography" % (a.entries, size / 1e6),
        "",
        "## Loading",
        "",
        "| what | value |",
        "|---|--:|",
        "| read + parse + signature check on the watcher thread (crl.reloaded load_ms) | %d ms |"
        % load_ms,
        "| rename of the file to crl.reloaded logged | %.0f ms |" % (reloaded_after * 1000),
        "| rename of the file to the victim refused (probe every 10 ms) | %s |"
        % ("%.0f ms" % (refused_after * 1000) if refused_after is not None else "never"),
        "| later reloads, load_ms each | %s |" % ", ".join(str(x) for x in loads[1:]),
        "| refused reloads | %d |" % len(refused),
        "| kgated VmRSS with the empty CRL | %d KiB |" % rss_small,
        "| kgated VmRSS with the %d-entry CRL | %d KiB (+%d) |" % (a.entries, rss_big,
                                                                 rss_big - rss_small),
        "| kgated VmRSS after %d more reloads | %d KiB |" % (a.reloads, rss_after),
        "",
        "## Lookup: %d sequential handshakes" % a.handshakes,
        "",
        "| CRL | client latency p50 ms | p99 ms | max ms | kgated CPU per handshake |",
        "|---|--:|--:|--:|--:|",
        "| empty | %s | %.0f us |" % (stats(lat_small), cpu_small),
        "| %d entries | %s | %.0f us |" % (a.entries, stats(lat_big), cpu_big),
        "",
        "## Requests while the CRL is replaced (%d clients back to back, %d reloads 3 s apart)"
        % (a.clients, a.reloads),
        "",
        "| requests started | count | failed | p50 ms | p99 ms | max ms |",
        "|---|--:|--:|--:|--:|--:|",
        "| while a reload was under way (rename to crl.reloaded + 0.5 s) | %d | %d | %s |"
        % (len(during), sum(1 for s in during if not s[2]), stats([s[1] for s in during])),
        "| at other times | %d | %d | %s |"
        % (len(outside), sum(1 for s in outside if not s[2]), stats([s[1] for s in outside])),
        "",
    ]
    text = "\n".join(lines)
    out = os.path.join(REPO, "bench", "results",
                       "%s-crl%s.md" % (stamp, "-" + a.label if a.label else ""))
    with open(out, "w") as f:
        f.write(text)
    print(text)
    log("wrote " + out)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
