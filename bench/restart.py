#!/usr/bin/python3
"""Connections lost across restarts and upgrades: kgated's SIGUSR2 upgrade
against the baseline SIGTERM-then-start, under the same client load.

bench/restart.py [--build DIR] [--cycles N] [--rate R] [--gap S] [--label L]

For each way (upgrade, restart) a fresh kgated (Release build, state
directory, one https, one tls and one tcp listener, 2 workers) serves
tests/tools/upgrade_load.py: new mTLS connections at R per second (half
https GET, half tls echo), an https and a tls keep-alive client, and plain
TCP connections at R per second. After 2 s of load, N cycles S seconds
apart; 2 s more, then the load stops. Every failure is counted by kind
(refused, reset, eof, timeout, bad_reply, other) and client. For restart,
the gap (old process gone to new one ready) is timed. Writes
bench/results/<date>-restart[-label].md and prints it. Root only (ports,
kgated's --user root); everything it starts it stops by PID.
"""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import http.server
import socketserver

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
LOAD = os.path.join(REPO, "tests", "tools", "upgrade_load.py")


def log(msg):
    print("restart.py: " + msg, flush=True)


def run(cmd):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = b"ok\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Echo(socketserver.BaseRequestHandler):
    def handle(self):
        try:
            while True:
                data = self.request.recv(65536)
                if not data:
                    return
                self.request.sendall(data)
        except OSError:
            return


class Servers:
    """An HTTP origin and an echo origin, in threads of this process."""

    def __init__(self):
        http.server.ThreadingHTTPServer.daemon_threads = True
        self.http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.http.request_queue_size = 1024
        socketserver.ThreadingTCPServer.daemon_threads = True
        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.echo = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Echo)
        for srv in (self.http, self.echo):
            threading.Thread(target=srv.serve_forever, daemon=True).start()

    def close(self):
        for srv in (self.http, self.echo):
            srv.shutdown()
            srv.server_close()


def pki(ctl, d):
    ca = os.path.join(d, "ca")
    run([ctl, "ca", "init", "--dir", ca, "--subject", "/O=bench/CN=bench CA"])
    run([ctl, "ca", "issue", "--dir", ca, "--type", "server", "--subject", "/O=bench/CN=localhost",
         "--san", "DNS:localhost,IP:127.0.0.1", "--out", os.path.join(d, "server")])
    run([ctl, "ca", "issue", "--dir", ca, "--type", "client", "--subject", "/O=bench/CN=client",
         "--out", os.path.join(d, "client")])
    return {"ca": os.path.join(ca, "ca.pem"), "server": os.path.join(d, "server"),
            "client": os.path.join(d, "client")}


def config(p, servers):
    def tls(name, protocol, backend):
        return {"name": name, "protocol": protocol, "bind": "127.0.0.1", "port": 0,
                "certificate": "web", "mutual_auth": "required", "ca": "clients",
                "backends": [{"address": backend}]}
    http_b = "127.0.0.1:%d" % servers.http.server_address[1]
    echo_b = "127.0.0.1:%d" % servers.echo.server_address[1]
    return {"settings": {"workers": 2, "drain_timeout_ms": 10000, "log_level": "notice"},
            "certificates": {"web": {"type": "server", "cert": p["server"] + ".pem",
                                     "key": p["server"] + ".key"},
                             "clients": {"type": "ca", "cert": p["ca"]}},
            "listeners": [tls("web", "https", http_b), tls("raw", "tls", echo_b),
                          {"name": "plain", "protocol": "tcp", "bind": "127.0.0.1",
                           "port": 0, "backends": [{"address": echo_b}]}]}


class Kgated:
    """kgated on a state directory; its log is shared by upgraded processes."""

    def __init__(self, binary, work, cfg):
        self.binary = binary
        self.work = work
        self.state = os.path.join(work, "state")
        self.conf = os.path.join(work, "kgated.json")
        with open(self.conf, "w") as f:
            json.dump(cfg, f)
        self.logpath = os.path.join(work, "kgated.log")
        self.logf = open(self.logpath, "a")
        self.pid = None

    def events(self, name):
        with open(self.logpath) as f:
            return [line for line in f if " event=%s " % name in line or
                    line.rstrip().endswith(" event=%s" % name)]

    def wait_event(self, name, count, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.events(name)) >= count:
                return
            time.sleep(0.005)
        raise SystemExit("restart.py: no %s #%d within %d s; log: %s"
                         % (name, count, timeout, self.logpath))

    def start(self):
        n = len(self.events("kgated.ready"))
        self.proc = subprocess.Popen([self.binary, "--config", self.conf, "--state-dir",
                                      self.state, "--user", "root"],
                                     stdout=self.logf, stderr=self.logf,
                                     stdin=subprocess.DEVNULL)
        self.pid = self.proc.pid
        self.wait_event("kgated.ready", n + 1)

    def ports(self):
        out = {}
        for line in self.events("listener.listening"):
            kv = dict(x.split("=", 1) for x in line.split() if "=" in x)
            out[kv["listener"]] = int(kv["addr"].rsplit(":", 1)[1])
        return out

    def stop(self):
        """SIGTERM and wait; returns seconds until the process was gone."""
        t0 = time.monotonic()
        os.kill(self.pid, signal.SIGTERM)
        wait_pid(self.pid, 30)
        return time.monotonic() - t0

    def upgrade(self):
        n = len(self.events("upgrade.took_over"))
        os.kill(self.pid, signal.SIGUSR2)
        self.wait_event("upgrade.took_over", n + 1)
        line = self.events("upgrade.handed_over")[-1]
        self.pid = int(line.split(" pid=", 1)[1].split()[0])


def wait_pid(pid, timeout):
    """Waits for pid to end: ours (waitpid) or adopted (we are a subreaper)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            got, _ = os.waitpid(pid, os.WNOHANG)
            if got == pid:
                return
        except ChildProcessError:
            if not os.path.exists("/proc/%d" % pid):
                return
        time.sleep(0.005)
    os.kill(pid, signal.SIGKILL)
    raise SystemExit("restart.py: pid %d still ran %d s after SIGTERM" % (pid, timeout))


def become_subreaper():
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(36, 1, 0, 0, 0) != 0:  # PR_SET_CHILD_SUBREAPER
        raise SystemExit("restart.py: prctl(PR_SET_CHILD_SUBREAPER) failed")


def one_way(way, args, binary, p, servers, root):
    work = tempfile.mkdtemp(prefix="kg-restart-%s-" % way, dir=root)
    k = Kgated(binary, work, config(p, servers))
    k.start()
    ports = k.ports()
    out = os.path.join(work, "load.json")
    load = subprocess.Popen(["/usr/bin/python3", LOAD, "--ca", p["ca"],
                             "--cert", p["client"] + ".pem", "--key", p["client"] + ".key",
                             "--out", out, "--stop", out + ".stop",
                             "--https", str(ports["web"]), "--tls", str(ports["raw"]),
                             "--tcp", str(ports["plain"]), "--rate", str(args.rate),
                             "--tcp-rate", str(args.rate),
                             "--seconds", str(args.cycles * (args.gap + 2) + 30)])
    gaps = []
    try:
        time.sleep(2)
        for _ in range(args.cycles):
            if way == "upgrade":
                k.upgrade()
            else:
                # As systemctl restart: the new process starts once the
                # old one is gone; the old one stops listening at SIGTERM.
                t0 = time.monotonic()
                k.stop()
                k.start()
                gaps.append(time.monotonic() - t0)
            time.sleep(args.gap)
        time.sleep(2)
    finally:
        open(out + ".stop", "w").close()
        load.wait(60)
        k.stop()
        # Processes an upgrade replaced drain and exit by themselves.
        time.sleep(0.5)
    with open(out) as f:
        summary = json.load(f)
    shutil.rmtree(work, ignore_errors=True)
    return summary, gaps


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default=os.path.join(REPO, "build-release"))
    ap.add_argument("--cycles", type=int, default=10)
    ap.add_argument("--rate", type=float, default=150)
    ap.add_argument("--gap", type=float, default=1.0)
    ap.add_argument("--label", default="")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("restart.py: run as root")
    binary = os.path.join(args.build, "dataplane", "kgated")
    ctl = os.path.join(args.build, "ctl", "kgatectl")
    for b in (binary, ctl):
        if not os.access(b, os.X_OK):
            raise SystemExit("restart.py: %s missing (cmake --build %s)" % (b, args.build))
    become_subreaper()
    load_before = os.getloadavg()
    root = tempfile.mkdtemp(prefix="kg-restart-")
    servers = Servers()
    results = {}
    try:
        p = pki(ctl, root)
        for way in ("upgrade", "restart"):
            log("%s x%d under load" % (way, args.cycles))
            results[way] = one_way(way, args, binary, p, servers, root)
    finally:
        servers.close()
        shutil.rmtree(root, ignore_errors=True)
    load_after = os.getloadavg()
    write_report(args, results, load_before, load_after)


def write_report(args, results, load_before, load_after):
    clients = ("new", "https_keepalive", "tls_keepalive", "tcp")
    kinds = ("refused", "reset", "eof", "timeout", "bad_reply", "other")
    stamp = time.strftime("%Y-%m-%d-%H%M", time.gmtime())
    rev = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True).stdout.strip()
    lines = ["# kgated: connections lost across %d restarts vs %d upgrades, %s UTC"
             % (args.cycles, args.cycles, stamp), "",
             "- kgate %s, Release (%s); %d CPUs; load average before / after: %s / %s"
             % (rev, args.build, os.cpu_count(),
                " ".join("%.2f" % x for x in load_before),
                " ".join("%.2f" % x for x in load_after)),
             "- load (tests/tools/upgrade_load.py): new mTLS connections %.0f/s (half https "
             "GET, half tls echo), one https and one tls keep-alive client back to back, "
             "plain TCP connections %.0f/s; cycles %.1f s apart" % (args.rate, args.rate,
                                                                   args.gap),
             "- restart = SIGTERM, wait until the process is gone, start a new kgated on the "
             "same state directory; upgrade = SIGUSR2 (kgated(8), UPGRADE)", "",
             "| way | client | ok | failed | " + " | ".join(kinds) + " |",
             "|---|---|--:|--:|" + "--:|" * len(kinds)]
    for way, (summary, gaps) in results.items():
        for c in clients:
            e = summary.get(c, {"ok": 0, "failed": 0, "errors": {}})
            lines.append("| %s | %s | %d | %d | %s |" % (
                way, c, e["ok"], e["failed"],
                " | ".join(str(e["errors"].get(k, 0)) for k in kinds)))
        if gaps:
            gaps.sort()
            lines.append("")
            lines.append("%s: no process listening for %.0f ms median, %.0f ms max per cycle "
                         "(SIGTERM to the new process ready: the old one's drain, then its "
                         "start)" % (way, 1000 * gaps[len(gaps) // 2], 1000 * gaps[-1]))
    text = "\n".join(lines) + "\n"
    name = "%s-restart%s.md" % (stamp, "-" + args.label if args.label else "")
    path = os.path.join(REPO, "bench", "results", name)
    with open(path, "w") as f:
        f.write(text)
    print(text)
    log("wrote %s" % os.path.relpath(path, REPO))


if __name__ == "__main__":
    sys.exit(main())
