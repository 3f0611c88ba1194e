"""Restart and upgrade without a refused or reset connection (kgated(8),
UPGRADE): SIGUSR2 re-executes the binary on disk, which takes over the
listening sockets, the control and metrics sockets and the state lock,
becomes ready, and only then has the old process stop accepting and drain.

Each test starts kgated with a state directory; upgraded processes are
children of the ones they replace, adopted by this test process (a child
subreaper) and stopped by PID."""
import json
import os
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pytest

from conftest import (KGATECTL, KGATED, REPO, PidProc, base_config, become_subreaper, https_get,
                      client_context, dead_port, run, tls_listener, wait_until)

LOAD = os.path.join(REPO, "tests", "tools", "upgrade_load.py")


@pytest.fixture(scope="module", autouse=True)
def subreaper():
    become_subreaper()


def listeners(pki, http_b, echo_b, **extra):
    return [tls_listener(pki, [http_b], name="web", protocol="https", **extra),
            tls_listener(pki, [echo_b], name="raw", **extra),
            {"name": "plain", "protocol": "tcp", "bind": "127.0.0.1", "port": 0,
             "backends": [{"address": echo_b.address}]}]


def start(spawn_kgated, pki, http_b, echo_b, tmp_path, workers=2, extra_args=(), exe=KGATED,
          tickets=None, **settings):
    """tickets: the TLS listeners' tls_session_tickets (None: the default)."""
    extra = {"tls_session_tickets": tickets} if tickets else {}
    cfg = base_config(pki, listeners(pki, http_b, echo_b, **extra), workers=workers, **settings)
    state = str(tmp_path / "state")
    d = spawn_kgated(cfg, args=("--state-dir", state, *extra_args), exe=exe)
    d.state = state
    d.sock = os.path.join(state, "control.sock")
    return d


def ctl(d, *args, check=True):
    return run([KGATECTL, "--socket", d.sock, *args], check=check)


def ctl_json(d, *args):
    return json.loads(ctl(d, "-o", "json", *args).stdout)


class Load:
    """upgrade_load.py as a second process; stop() returns its summary."""

    def __init__(self, pki, tmp_path, d, rate=200, tcp_rate=0, seconds=120):
        self.out = str(tmp_path / ("load-%d.json" % time.monotonic_ns()))
        self.stopfile = self.out + ".stop"
        cmd = ["/usr/bin/python3", LOAD, "--ca", pki.ca, "--cert", pki.cert("client"),
               "--key", pki.key("client"), "--out", self.out, "--stop", self.stopfile,
               "--https", str(d.ports["web"]), "--tls", str(d.ports["raw"]),
               "--rate", str(rate), "--seconds", str(seconds)]
        if tcp_rate:
            cmd += ["--tcp", str(d.ports["plain"]), "--tcp-rate", str(tcp_rate)]
        self.proc = subprocess.Popen(cmd)

    def stop(self):
        open(self.stopfile, "w").close()
        try:
            self.proc.wait(60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        with open(self.out) as f:
            return json.load(f)


def assert_clean(summary, clients):
    for c in clients:
        got = summary.get(c, {"ok": 0, "failed": 0})
        assert got["ok"] > 0, (c, summary)
        assert got["failed"] == 0, (c, summary)


def test_upgrade_hands_everything_over(spawn_kgated, pki, http_backends, echo_backend,
                                       tmp_path):
    """One SIGUSR2: same ports, same control socket and metrics port, the
    state lock moves, the old process exits 0, status names the new pid."""
    http_b = http_backends("a")
    mport = socket.socket()
    mport.bind(("127.0.0.1", 0))
    metrics = "127.0.0.1:%d" % mport.getsockname()[1]
    mport.close()
    d = start(spawn_kgated, pki, http_b, echo_backend, tmp_path,
              extra_args=("--metrics", metrics))
    ports = dict(d.ports)
    old = d.pid
    fds = d.fd_count()
    before = os.stat(d.sock)
    ev = d.upgrade()
    # Nothing but what it was meant to inherit came along.
    assert d.fd_count() <= fds, (fds, os.listdir("/proc/%d/fd" % d.pid))
    assert d.pid != old
    assert ctl_json(d, "status")["pid"] == d.pid
    assert int(ev["from_pid"]) == old
    # The control socket is the same file, not re-created.
    after = os.stat(d.sock)
    assert (after.st_ino, stat.S_IMODE(after.st_mode)) == (before.st_ino, 0o600)
    assert [(l["name"], l["state"]) for l in ctl_json(d, "listener", "list")] == \
        [("web", "running"), ("raw", "running"), ("plain", "running")]
    for l in ctl_json(d, "listener", "list"):
        assert int(l["address"].rsplit(":", 1)[1]) == ports[l["name"]]
    text = urllib.request.urlopen("http://%s/metrics" % metrics, timeout=10).read().decode()
    assert "kgate_" in text
    d.check_retired()
    assert not os.path.exists("/proc/%d" % old)
    ev = d.events("upgrade.handed_over")[-1]
    assert int(ev["pid"]) == d.pid
    # The lock went with it: a second kgated on the folder is refused.
    r = subprocess.run([KGATED, "--state-dir", d.state, "--user", "root"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1
    assert "is in use by another kgated" in r.stderr, r.stderr
    # And it serves.
    ctx = client_context(pki)
    with socket.create_connection(("127.0.0.1", d.ports["raw"]), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            s.sendall(b"hello\n")
            assert s.recv(6) == b"hello\n"


UPGRADES = 20


def test_twenty_upgrades_under_load(spawn_kgated, pki, http_backends, echo_backend, tmp_path):
    """New mTLS connections at ~200/s, keep-alive clients on the https and
    tls listeners and plain TCP connections, across 20 upgrades in a row:
    nothing refused, reset or failed; at least one upgrade found
    connections waiting in the accept queues, and they were served."""
    http_b = http_backends("a")
    d = start(spawn_kgated, pki, http_b, echo_backend, tmp_path, drain_timeout_ms=10000)
    load = Load(pki, tmp_path, d, rate=200, tcp_rate=300)
    try:
        time.sleep(1.0)
        took = []
        for _ in range(UPGRADES):
            took.append(d.upgrade())
            time.sleep(0.3)
        # The queues are seldom caught non-empty (the new process accepts
        # within a millisecond or two of the old one's stop): a few more
        # upgrades, bounded, until one is.
        while sum(int(t["queued"]) for t in took) == 0 and len(took) < 2 * UPGRADES:
            took.append(d.upgrade())
            time.sleep(0.1)
        time.sleep(1.0)
    finally:
        summary = load.stop()
    print("load summary:", json.dumps(summary, sort_keys=True))
    print("queued at each hand-over:", [int(t["queued"]) for t in took])
    assert_clean(summary, ["new", "https_keepalive", "tls_keepalive", "tcp"])
    assert len(took) >= UPGRADES
    # Connections waited in the accept queues at a hand-over, and (above)
    # none of them failed.
    assert sum(int(t["queued"]) for t in took) > 0, took
    d.check_retired(timeout=15)
    # An https keep-alive connection that had to move was closed between
    # requests: the client saw "Connection: close" and reconnected.
    assert summary["https_keepalive"]["ok"] > UPGRADES


def own_binary(tmp_path):
    """A copy of kgated to start from: what an upgrade runs is whatever is
    at this path then."""
    os.makedirs(tmp_path / "bin", exist_ok=True)
    path = str(tmp_path / "bin" / "kgated")
    shutil.copy2(KGATED, path)
    return path


def replace_file(path, text, mode=0o755):
    """As a package manager does: a new file renamed over the old one (the
    running binary keeps its inode)."""
    tmp = path + ".new"
    with open(tmp, "w") as f:
        f.write(text)
    os.chmod(tmp, mode)
    os.rename(tmp, path)


def add_backend(d, address):
    return ctl(d, "backend", "add", "web", address, check=False)


@pytest.mark.parametrize("broken, reason", [
    ("#!/bin/sh\nexit 3\n", "exited with status 3 before it was ready"),
    ("not a program\n", "could not execute the binary"),
])
def test_failed_upgrade_keeps_serving(spawn_kgated, pki, http_backends, echo_backend, tmp_path,
                                      broken, reason):
    """A binary that exits at once, or cannot run: the old process keeps
    serving (0 failed requests under load), says why in its log and in
    kgatectl's reply, and accepts changes again afterwards."""
    http_b = http_backends("a")
    exe = own_binary(tmp_path)
    d = start(spawn_kgated, pki, http_b, echo_backend, tmp_path, exe=exe)
    pid = d.pid
    replace_file(exe, broken, 0o755 if broken.startswith("#!") else 0o644)
    load = Load(pki, tmp_path, d, rate=100, tcp_rate=100)
    try:
        time.sleep(0.5)
        r = ctl(d, "upgrade", check=False)
        os.kill(pid, signal.SIGUSR2)
        assert wait_until(lambda: d.count_event("upgrade.failed") >= 2, 20)
        time.sleep(0.5)
    finally:
        summary = load.stop()
    assert r.returncode == 1, r
    assert "upgrade failed, still serving from pid %d" % pid in r.stderr, r.stderr
    assert reason in r.stderr and r.stderr.rstrip().endswith("[upgrade_failed]"), r.stderr
    for ev in d.events("upgrade.failed"):
        assert reason in ev["reason"] and ev["action"] == "still serving", ev
    assert_clean(summary, ["new", "https_keepalive", "tls_keepalive", "tcp"])
    assert d.alive() and d.pid == pid
    assert ctl_json(d, "status")["pid"] == pid
    other = http_backends("b")
    assert add_backend(d, other.address).returncode == 0


def test_state_the_new_process_refuses(spawn_kgated, pki, http_backends, echo_backend,
                                       tmp_path):
    """state.json broken by hand after the start: the new process refuses
    it, the old one serves on; once a change rewrote the state, the upgrade
    goes through and the change is there."""
    http_b = http_backends("a")
    d = start(spawn_kgated, pki, http_b, echo_backend, tmp_path)
    pid = d.pid
    path = os.path.join(d.state, "state.json")
    good = open(path).read()
    with open(path, "w") as f:
        f.write(good[:len(good) // 2])
    r = ctl(d, "upgrade", check=False)
    assert r.returncode == 1 and "[upgrade_failed]" in r.stderr, r.stderr
    assert wait_until(lambda: d.count_event("state.invalid") >= 1, 5), d.log()
    assert d.pid == pid and d.alive()
    other = http_backends("b")
    assert add_backend(d, other.address).returncode == 0
    ev = d.upgrade()
    assert int(ev["from_pid"]) == pid
    members = ctl_json(d, "listener", "show", "web")["members"]
    assert other.address in [m["address"] for m in members], members


def test_change_during_upgrade_is_refused_then_kept(spawn_kgated, pki, http_backends,
                                                    echo_backend, tmp_path):
    """While the new process starts (here: a wrapper that waits 2 s before
    it runs kgated), a change is refused with "upgrade in progress, retry"
    and nothing of it is applied; status still answers; a change made just
    before the upgrade is in the new process."""
    http_b = http_backends("a")
    exe = own_binary(tmp_path)
    d = start(spawn_kgated, pki, http_b, echo_backend, tmp_path, exe=exe)
    before = http_backends("before")
    assert add_backend(d, before.address).returncode == 0
    replace_file(exe, "#!/bin/sh\nsleep 2\nexec %s \"$@\"\n" % KGATED)
    os.kill(d.pid, signal.SIGUSR2)
    assert d.wait_event("upgrade.started", timeout=5)
    during = http_backends("during")
    r = add_backend(d, during.address)
    assert r.returncode == 1, r
    assert "upgrade in progress" in r.stderr and r.stderr.rstrip().endswith("[busy]"), r.stderr
    assert ctl_json(d, "status")["pid"] == d.pid
    assert d.wait_event("upgrade.took_over", timeout=20)
    new = int(d.events("upgrade.handed_over")[-1]["pid"])
    d.retired.append(d.proc)
    d.proc = PidProc(new)
    d.pid = new
    members = [m["address"] for m in ctl_json(d, "listener", "show", "web")["members"]]
    assert before.address in members and during.address not in members, members
    assert add_backend(d, during.address).returncode == 0


def test_upgrade_without_state_dir_rereads_the_configuration(spawn_kgated, pki, http_backends,
                                                             echo_backend, tmp_path):
    """Without --state-dir the new process reads --config again (as NGINX's
    binary upgrade does): a listener added to the file starts, the others
    keep their sockets (same ports, nothing refused on them)."""
    http_b = http_backends("a")
    lst = listeners(pki, http_b, echo_backend)
    for l in lst:
        l["port"] = dead_port()
    cfg = base_config(pki, lst, workers=2)
    d = spawn_kgated(cfg)
    load = Load(pki, tmp_path, d, rate=100, tcp_rate=100)
    try:
        time.sleep(0.5)
        extra = tls_listener(pki, [echo_backend], name="extra", port=dead_port())
        cfg["listeners"].append(extra)
        with open(d.config_path, "w") as f:
            json.dump(cfg, f)
        d.upgrade()
        time.sleep(0.5)
    finally:
        summary = load.stop()
    assert_clean(summary, ["new", "https_keepalive", "tls_keepalive", "tcp"])
    assert d.count_event("upgrade.sockets_closed") == 0
    listening = d.events("listener.listening")
    assert [e["listener"] for e in listening[-4:]] == ["web", "raw", "plain", "extra"]
    ctx = client_context(pki)
    with socket.create_connection(("127.0.0.1", extra["port"]), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            s.sendall(b"extra\n")
            assert s.recv(6) == b"extra\n"


def test_health_verdicts_carry_over(spawn_kgated, pki, http_backends, echo_backend, tmp_path):
    """A member the old process found down is down in the new one at once
    (not "unknown", which would be in rotation), and a healthy one healthy,
    with the time in that state going on."""
    http_b = http_backends("a")
    dead = "127.0.0.1:%d" % dead_port()
    hc = {"type": "tcp", "interval_ms": 200, "timeout_ms": 200,
          "healthy_threshold": 1, "unhealthy_threshold": 1}
    web = tls_listener(pki, [http_b.address, dead], name="web", protocol="https",
                       health_check=hc)
    cfg = base_config(pki, [web], workers=2)
    d = spawn_kgated(cfg, args=("--state-dir", str(tmp_path / "state")))
    d.sock = str(tmp_path / "state" / "control.sock")

    def health():
        return {m["address"]: (m["health"], m["state"])
                for m in ctl_json(d, "listener", "show", "web")["members"]}
    want = {http_b.address: ("healthy", "up"), dead: ("unhealthy", "down")}
    assert wait_until(lambda: health() == want, 10), health()
    time.sleep(1.2)
    ev = d.upgrade()
    assert d.events("upgrade.inherited")[-1]["health"] == "true"
    assert int(ev["from_pid"]) != d.pid
    # Asked at once: a fresh start would show both "unknown" until checked.
    assert health() == want
    members = ctl_json(d, "listener", "show", "web")["members"]
    assert all(m["in_state_s"] >= 1 for m in members), members


def echo_once(ctx, port, session=None):
    """One echo exchange over a new TLS connection: (reused?, the session
    to offer next; in TLS 1.3 it arrives after the handshake, with data)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost", session=session) as s:
            s.sendall(b"resume?\n")
            assert s.recv(8) == b"resume?\n"
            return s.session_reused, s.session


@pytest.mark.parametrize("tickets", ["stateful", "stateless"])
@pytest.mark.parametrize("version", ["TLSv1_3", "TLSv1_2"])
def test_resumption_survives_the_upgrade(spawn_kgated, pki, http_backends, echo_backend,
                                         tmp_path, version, tickets):
    """A client that resumed before an upgrade resumes after it: with
    stateful sessions the old process hands its session cache over
    (tls_carry.h), the new one decodes a session when its client comes
    back; stateless tickets resume under the ticket keys both processes
    read from the state directory."""
    tls = getattr(ssl.TLSVersion, version)
    ctx = client_context(pki, tls_min=tls, tls_max=tls)
    d = start(spawn_kgated, pki, http_backends("a"), echo_backend, tmp_path, tickets=tickets)
    port = d.ports["raw"]
    reused, sess = echo_once(ctx, port)
    assert not reused
    reused, sess = echo_once(ctx, port, sess)
    assert reused, "no resumption before the upgrade"
    d.upgrade()
    if tickets == "stateful":
        assert d.events("upgrade.inherited")[-1]["tls_sessions"] == "true"
    reused, sess = echo_once(ctx, port, sess)
    assert reused, "the session did not survive the upgrade"
    reused, sess = echo_once(ctx, port, sess)
    assert reused
    # A session that never existed is not resumed (a full handshake).
    other = client_context(pki, tls_min=tls, tls_max=tls)
    reused, _ = echo_once(other, port)
    assert not reused


# --------------------------------------------------------------------------
# Readiness (kgated(8), READINESS): GET /ready on the metrics port, and the
# withdraw before the drain that routing follows.
# --------------------------------------------------------------------------

def metrics_addr():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    addr = "127.0.0.1:%d" % s.getsockname()[1]
    s.close()
    return addr


def ready(addr):
    """(status, body) of GET /ready, or (None, error kind) when nothing
    answers."""
    try:
        with urllib.request.urlopen("http://%s/ready" % addr, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except (urllib.error.URLError, ConnectionError) as e:
        return None, type(getattr(e, "reason", e)).__name__


def ts_ms(ev):
    """Milliseconds of a logfmt ts= (2026-11-27T07:31:34.335Z) since midnight."""
    h, m, s = ev["ts"][11:-1].split(":")
    return round((int(h) * 3600 + int(m) * 60 + float(s)) * 1000)


def test_ready_then_withdraw_serves_on_then_drains(spawn_kgated, pki, http_backends,
                                                   echo_backend, tmp_path):
    """SIGTERM with withdraw_delay_ms: /ready turns 503 at once, new
    connections are still served for the delay, then the drain as before."""
    addr = metrics_addr()
    d = start(spawn_kgated, pki, http_backends("a"), echo_backend, tmp_path,
              extra_args=("--metrics", addr), withdraw_delay_ms=1500)
    assert ready(addr) == (200, "ready\n")
    # /metrics and unknown paths are unchanged.
    assert urllib.request.urlopen("http://%s/metrics" % addr, timeout=5).status == 200
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen("http://%s/readyz" % addr, timeout=5)
    assert e.value.code == 404
    ctx = client_context(pki)
    os.kill(d.pid, signal.SIGTERM)
    assert d.wait_event("kgated.withdrawing", timeout=2, delay_ms=1500, signal="SIGTERM")
    assert ready(addr) == (503, "draining\n")
    # Served during the withdraw: new connections, as many as fit in ~1 s.
    served, t0 = 0, time.monotonic()
    while time.monotonic() - t0 < 1.0:
        assert "backend=a" in https_get(ctx, d.ports["web"])
        served += 1
    assert not d.events("kgated.draining"), "drained before the delay ran out"
    assert d.proc.wait(10) == 0
    w, dr = d.events("kgated.withdrawing")[0], d.events("kgated.draining")[0]
    assert 1450 <= ts_ms(dr) - ts_ms(w) <= 2500, (w, dr)
    assert served >= 5
    assert not d.events("kgated.withdraw_cut")
    assert ready(addr)[0] is None  # gone with the process


def test_second_sigterm_cuts_the_withdraw(spawn_kgated, pki, http_backends, echo_backend,
                                          tmp_path):
    addr = metrics_addr()
    d = start(spawn_kgated, pki, http_backends("a"), echo_backend, tmp_path,
              extra_args=("--metrics", addr), withdraw_delay_ms=60000)
    os.kill(d.pid, signal.SIGTERM)
    assert d.wait_event("kgated.withdrawing", timeout=2)
    os.kill(d.pid, signal.SIGHUP)  # ignored, the wait goes on
    assert d.wait_event("signal.ignored", timeout=2, signal="SIGHUP")
    assert d.alive() and ready(addr)[0] == 503
    t0 = time.monotonic()
    os.kill(d.pid, signal.SIGTERM)
    assert d.proc.wait(10) == 0
    assert time.monotonic() - t0 < 5
    cut = d.events("kgated.withdraw_cut")
    assert len(cut) == 1 and cut[0]["signal"] == "SIGTERM", cut
    assert d.count_event("kgated.draining") == 1


def test_no_withdraw_delay_drains_at_once(spawn_kgated, pki, http_backends, echo_backend,
                                          tmp_path):
    """The default (0) is the behaviour from before: straight to the drain."""
    addr = metrics_addr()
    d = start(spawn_kgated, pki, http_backends("a"), echo_backend, tmp_path,
              extra_args=("--metrics", addr))
    assert ready(addr) == (200, "ready\n")
    # An open connection keeps the drain going (up to drain_timeout_ms,
    # 2 s here); the metrics port refuses at once meanwhile, so a checker
    # does not wait for its timeout.
    raw = socket.create_connection(("127.0.0.1", d.ports["raw"]), timeout=5)
    with client_context(pki).wrap_socket(raw, server_hostname="localhost") as s:
        s.sendall(b"ping\n")
        assert s.recv(16) == b"ping\n"
        os.kill(d.pid, signal.SIGTERM)
        assert d.wait_event("kgated.draining", timeout=2, signal="SIGTERM")
        assert wait_until(lambda: ready(addr) == (None, "ConnectionRefusedError"), 1.0)
        assert d.alive()
    assert d.proc.wait(10) == 0
    assert not d.events("kgated.withdrawing")


def test_upgrade_does_not_withdraw(spawn_kgated, pki, http_backends, echo_backend, tmp_path):
    """Polled throughout two upgrades, /ready answers 200 every time: the
    new process answers on the inherited metrics socket itself, and the
    old one lets go of it before draining, so an announcer never sees a
    503 or a refused connection."""
    addr = metrics_addr()
    d = start(spawn_kgated, pki, http_backends("a"), echo_backend, tmp_path,
              extra_args=("--metrics", addr), withdraw_delay_ms=60000)
    answers, stop = [], threading.Event()

    def poll():
        while not stop.is_set():
            answers.append(ready(addr))
            time.sleep(0.005)
    t = threading.Thread(target=poll)
    t.start()
    try:
        for _ in range(2):
            d.upgrade()
        time.sleep(0.3)
    finally:
        stop.set()
        t.join(10)
    bad = [a for a in answers if a != (200, "ready\n")]
    assert len(answers) > 20 and not bad, (len(answers), bad[:5])
    # The replaced processes drained without a withdraw (60 s here).
    d.check_retired()
    assert not d.events("kgated.withdrawing")
    os.kill(d.pid, signal.SIGTERM)
    assert d.wait_event("kgated.withdrawing", timeout=2)
    os.kill(d.pid, signal.SIGTERM)
