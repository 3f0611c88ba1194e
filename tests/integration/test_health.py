"""Health checks: members leave the rotation when their checks fail and come
back when they pass; HTTP status and timeouts judged; all members down means
quick, counted refusals; bad check settings are refused at start.

Backends that must die by PID are separate processes
(tests/tools/http_backend.py). Waits are bounded by what the configuration
allows (thresholds x interval + timeout) plus generous slack for a loaded
machine; nothing asserts that something happened *fast*."""
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import threading
import time

import pytest

from conftest import (KGATED, REPO, base_config, client_context, closing_factory, dead_port,
                      https_get, log_events, run, tls_listener, wait_until)

BACKEND_TOOL = os.path.join(REPO, "tests", "tools", "http_backend.py")
SLACK = 5.0  # seconds on top of the configured bound, for a busy machine


class ProcBackend:
    """tests/tools/http_backend.py in its own process (so it can be
    killed by PID and restarted on the same port)."""

    def __init__(self, name, port=0, status=200, delay_ms=0):
        self.name = name
        cmd = ["/usr/bin/python3", BACKEND_TOOL, "--name", name, "--port",
               str(port), "--status", str(status), "--delay-ms", str(delay_ms)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline()
        m = re.match(r"listening on (\d+)", line)
        if not m:
            self.stop()
            raise AssertionError("backend %s did not start: %r" % (name, line))
        self.port = int(m.group(1))
        self.address = "127.0.0.1:%d" % self.port

    def kill(self):
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.proc.stdout.close()

    stop = kill


@pytest.fixture
def proc_backends():
    yield from closing_factory(ProcBackend, close=ProcBackend.kill)


def health_listener(pki, backends, **check):
    hc = {"type": "tcp", "interval_ms": 100, "timeout_ms": 300,
          "healthy_threshold": 2, "unhealthy_threshold": 2}
    hc.update(check)
    return tls_listener(pki, backends, health_check=hc)


def transition(d, address, old, new, timeout=5.0, reason=""):
    """Waits for the health transition event of a member; returns it, or
    None. reason: the start its reason= must have."""
    def find():
        evs = [e for e in d.events("backend.health_changed", backend=address,
                                   **{"from": old, "to": new})
               if e["reason"].startswith(reason)]
        return evs[0] if evs else None
    return wait_until(find, timeout)


def worker_totals(d, key):
    """A counter of the worker.stopped events, per worker."""
    return [int(e[key]) for e in d.events("worker.stopped")]


def bound(hc_interval_ms, threshold, timeout_ms):
    """Seconds within which a verdict must come: threshold checks, each
    interval (+5% jitter) plus a timeout, plus slack."""
    return threshold * (hc_interval_ms * 1.05 + timeout_ms) / 1000 + SLACK


def bodies(ctx, port, n):
    return [https_get(ctx, port).strip() for _ in range(n)]


def assert_alternates(seen, names):
    assert set(seen) == set(names), seen
    assert all(a != b for a, b in zip(seen, seen[1:])), \
        "not alternating: %s" % seen


@pytest.mark.parametrize("check_type", ["tcp", "http"])
def test_kill_and_restart_member(pki, spawn_kgated, proc_backends, check_type):
    a = proc_backends("a")
    b = proc_backends("b")
    d = spawn_kgated(base_config(pki, [health_listener(pki, [a, b], type=check_type)],
                                 workers=2))
    for m in (a, b):
        assert transition(d, m.address, "unknown", "healthy",
                          timeout=bound(100, 2, 300)), d.log()
    ctx = client_context(pki)
    assert_alternates(bodies(ctx, d.port, 6), ["backend=a", "backend=b"])

    b.kill()
    assert transition(d, b.address, "healthy", "unhealthy",
                      timeout=bound(100, 2, 300)), d.log()
    # Out of the rotation: every request succeeds, all on a.
    assert bodies(ctx, d.port, 8) == ["backend=a"] * 8

    b2 = proc_backends("b", port=b.port)
    assert transition(d, b.address, "unhealthy", "healthy",
                      timeout=bound(100, 2, 300)), d.log()
    assert_alternates(bodies(ctx, d.port, 6), ["backend=a", "backend=b"])
    assert b2.address == b.address
    ev = transition(d, b.address, "healthy", "unhealthy", timeout=0)
    # The reason and the time spent healthy are in the transition event.
    assert re.fullmatch(r"connect refused|timeout after 300 ms", ev["reason"]), ev
    assert ev["streak"] == "2", ev
    assert re.fullmatch(r"[0-9.]+ (ms|s|min)", ev["was_for"]), ev


def test_http_500_is_unhealthy(pki, spawn_kgated, proc_backends):
    good = proc_backends("good")
    bad = proc_backends("bad", status=500)
    d = spawn_kgated(base_config(pki, [health_listener(
        pki, [good, bad], type="http", path="/healthz")]))
    assert transition(d, bad.address, "unknown", "unhealthy", reason="HTTP 500 not expected",
                      timeout=bound(100, 2, 300)), d.log()
    assert transition(d, good.address, "unknown", "healthy", reason="HTTP 200",
                      timeout=bound(100, 2, 300)), d.log()
    assert bodies(client_context(pki), d.port, 4) == ["backend=good"] * 4


def test_expected_status_accepts_500_when_asked(pki, spawn_kgated, proc_backends):
    b = proc_backends("odd", status=500)
    d = spawn_kgated(base_config(pki, [health_listener(
        pki, [b], type="http", expected_status="2xx,500")]))
    assert transition(d, b.address, "unknown", "healthy", reason="HTTP 500",
                      timeout=bound(100, 2, 300)), d.log()


def test_slow_answer_is_a_timeout(pki, spawn_kgated, proc_backends):
    slow = proc_backends("slow", delay_ms=3000)
    d = spawn_kgated(base_config(pki, [health_listener(
        pki, [slow], type="http", timeout_ms=200)]))
    assert transition(d, slow.address, "unknown", "unhealthy", reason="timeout after 200 ms",
                      timeout=bound(100, 2, 200)), d.log()


def test_tcp_check_closed_port_is_unhealthy(pki, spawn_kgated, proc_backends):
    live = proc_backends("live")
    addr = "127.0.0.1:%d" % dead_port()
    d = spawn_kgated(base_config(pki, [health_listener(pki, [live, addr])]))
    assert transition(d, addr, "unknown", "unhealthy", reason="connect refused",
                      timeout=bound(100, 2, 300)), d.log()
    assert bodies(client_context(pki), d.port, 4) == ["backend=live"] * 4


def refused_quickly(pki, port, timeout=10):
    """One TLS connection + request with nothing behind the listener:
    True when kgated ends it (close_notify, EOF or reset) before timeout."""
    ctx = client_context(pki)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
        try:
            with ctx.wrap_socket(raw, server_hostname="localhost") as s:
                s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
                data = s.recv(65536)
                return data == b""
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError, ConnectionResetError,
                BrokenPipeError):
            return True
        except socket.timeout:
            return False


def test_all_members_down_refused_and_counted(pki, spawn_kgated):
    addrs = ["127.0.0.1:%d" % dead_port() for _ in range(2)]
    d = spawn_kgated(base_config(pki, [health_listener(pki, addrs)]))
    assert d.wait_event("listener.no_backend_in_rotation", listener="web",
                        timeout=bound(100, 2, 300)), d.log()
    for _ in range(5):
        assert refused_quickly(pki, d.port), "request hung with every member down"
    assert d.terminate() == 0
    assert sum(worker_totals(d, "no_backend")) == 5, d.log()
    # Nothing was even tried: the members were out of rotation.
    assert d.count_event("backend.connect_failed") == 0, d.log()


def test_unknown_members_wait_for_verdict_when_asked(pki, spawn_kgated, proc_backends):
    b = proc_backends("b")
    d = spawn_kgated(base_config(pki, [health_listener(
        pki, [b], unknown_is_up=False, interval_ms=3600000, timeout_ms=1000)]))
    # With a one-hour interval the first check may be far off: until then
    # the member is unknown and, as configured, out of rotation.
    if not transition(d, b.address, "unknown", "healthy", timeout=0):
        assert refused_quickly(pki, d.port)


def test_passive_failure_counts(pki, spawn_kgated, proc_backends):
    live = proc_backends("live")
    addr = "127.0.0.1:%d" % dead_port()
    # Active checks an hour apart (first one at a random point of the hour):
    # the verdict on the dead member comes from forwarding.
    d = spawn_kgated(base_config(pki, [health_listener(
        pki, [addr, live], interval_ms=3600000, unhealthy_threshold=1)]))
    ctx = client_context(pki)
    assert https_get(ctx, d.port).strip() == "backend=live"  # retried on live
    assert transition(d, addr, "unknown", "unhealthy", reason="passive: connect refused"), d.log()
    assert bodies(ctx, d.port, 4) == ["backend=live"] * 4
    assert d.count_event("backend.connect_failed") == 1, d.log()


@pytest.mark.parametrize("cut", [False, True])
def test_unhealthy_member_keeps_or_cuts_connections(pki, spawn_kgated, proc_backends,
                                                    echo_backend, cut):
    """Data goes to an echo backend; its health is judged on another port
    (health_check.port) that we can take away while a connection is open."""
    health = proc_backends("health")
    d = spawn_kgated(base_config(pki, [health_listener(
        pki, [echo_backend], type="http", port=health.port,
        cut_on_unhealthy=cut)]))
    assert transition(d, echo_backend.address, "unknown", "healthy",
                      timeout=bound(100, 2, 300)), d.log()
    ctx = client_context(pki)
    with socket.create_connection(("127.0.0.1", d.port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            s.sendall(b"ping-1")
            assert s.recv(100) == b"ping-1"
            health.kill()
            assert transition(d, echo_backend.address, "healthy", "unhealthy",
                              timeout=bound(100, 2, 300)), d.log()
            time.sleep(0.5)  # several ticks: a cut would have happened
            try:
                s.sendall(b"ping-2")
                got = s.recv(100)
            except (ssl.SSLError, OSError):
                got = b""
            assert got == (b"" if cut else b"ping-2")
    if cut:
        assert d.terminate() == 0
        assert sum(worker_totals(d, "cut_unhealthy")) == 1, d.log()


BAD_CHECKS = [
    ({"interval_ms": 0}, "listeners[0].health_check.interval_ms: must be 100-"),
    ({"type": "icmp"}, "listeners[0].health_check.type: must be one of"),
    ({"healthy_threshold": 0}, "listeners[0].health_check.healthy_threshold: must be 1-10"),
    ({"unhealthy_threshold": 0}, "listeners[0].health_check.unhealthy_threshold: must be 1-10"),
    ({"type": "http", "path": "healthz"}, "listeners[0].health_check.path: must start with '/'"),
    ({"timeout_ms": 0}, "listeners[0].health_check.timeout_ms: must be 1-"),
    ({"type": "http", "expected_status": "7xx"}, "listeners[0].health_check.expected_status:"),
]


@pytest.mark.parametrize("check,message", BAD_CHECKS)
def test_bad_check_config_refused(pki, tmp_path, check, message):
    cfg = base_config(pki, [tls_listener(pki, ["127.0.0.1:9"], health_check=check)])
    path = tmp_path / "kgated.json"
    path.write_text(json.dumps(cfg))
    res = run([KGATED, "--config", str(path)], check=False, timeout=30)
    assert res.returncode == 1, res
    evs = log_events(res.stderr)
    assert len(evs) == 1 and evs[0]["event"] == "config.invalid", res.stderr
    assert evs[0]["reason"].startswith(message), res.stderr


def test_slow_start_after_recovery(pki, spawn_kgated, proc_backends):
    a = proc_backends("a")
    b = proc_backends("b")
    d = spawn_kgated(base_config(pki, [health_listener(
        pki, [a, b], slow_start_s=1, healthy_threshold=1, unhealthy_threshold=1)]))
    assert transition(d, b.address, "unknown", "healthy",
                      timeout=bound(100, 1, 300)), d.log()
    # The first verdict is not a recovery: no slow start.
    assert d.events("backend.health_changed", slow_start="true") == [], d.log()
    b.kill()
    assert transition(d, b.address, "healthy", "unhealthy",
                      timeout=bound(100, 1, 300)), d.log()
    proc_backends("b", port=b.port)
    assert transition(d, b.address, "unhealthy", "healthy",
                      timeout=bound(100, 1, 300)), d.log()
    ev = transition(d, b.address, "unhealthy", "healthy", timeout=0)
    assert ev["slow_start"] == "true", ev
    # Served while ramping: every request succeeds, on either member.
    for body in bodies(client_context(pki), d.port, 6):
        assert body in ("backend=a", "backend=b")
    assert d.wait_event("backend.slow_start_done", backend=b.address,
                        timeout=1 + SLACK), d.log()
    assert_alternates(bodies(client_context(pki), d.port, 6), ["backend=a", "backend=b"])


def test_checks_spread_over_workers_and_listeners(pki, spawn_kgated, proc_backends):
    """Three listeners, five members, three workers: every member gets a
    verdict whichever worker owns it, and each listener routes only to its
    own healthy members."""
    live = [proc_backends("l%d" % i) for i in range(3)]
    dead = ["127.0.0.1:%d" % dead_port() for _ in range(2)]
    listeners = [
        dict(health_listener(pki, [live[0], dead[0]], type="http"), name="one"),
        dict(health_listener(pki, [live[1]]), name="two"),
        dict(health_listener(pki, [dead[1], live[2]], type="http"), name="three"),
    ]
    d = spawn_kgated(base_config(pki, listeners, workers=3))
    for m in live:
        assert transition(d, m.address, "unknown", "healthy",
                          timeout=bound(100, 2, 300)), d.log()
    for addr in dead:
        assert transition(d, addr, "unknown", "unhealthy",
                          timeout=bound(100, 2, 300)), d.log()
    ctx = client_context(pki)
    for name, want in (("one", "backend=l0"), ("two", "backend=l1"), ("three", "backend=l2")):
        assert bodies(ctx, d.ports[name], 3) == [want] * 3
    assert d.terminate() == 0
    per_worker = worker_totals(d, "health_checks")
    assert len(per_worker) == 3 and all(n > 0 for n in per_worker), per_worker


class RecordingServer:
    """Accepts health checks on an IPv4 or IPv6 loopback port, records
    each request's head and answers 204."""

    def __init__(self, family=socket.AF_INET):
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        port = self.sock.getsockname()[1]
        self.address = ("[::1]:%d" if family == socket.AF_INET6 else "127.0.0.1:%d") % port
        self.heads = []
        self.stopping = False
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while not self.stopping:
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            with conn:
                conn.settimeout(2)
                data = b""
                try:
                    while b"\r\n\r\n" not in data and len(data) < 8192:
                        chunk = conn.recv(4096)
                        if not chunk:
                            break
                        data += chunk
                    self.heads.append(data.decode(errors="replace"))
                    conn.sendall(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
                except OSError:
                    pass

    def close(self):
        self.stopping = True
        self.thread.join()
        self.sock.close()


@pytest.mark.parametrize("family,host", [(socket.AF_INET, None),
                                         (socket.AF_INET6, None),
                                         (socket.AF_INET, "app.example")])
def test_http_check_request_on_the_wire(pki, spawn_kgated, family, host):
    srv = RecordingServer(family)
    extra = {"host": host} if host else {}
    try:
        d = spawn_kgated(base_config(pki, [health_listener(
            pki, [srv.address], type="http", method="HEAD", path="/status?x=1",
            expected_status="204", **extra)]))
        assert transition(d, srv.address, "unknown", "healthy", reason="HTTP 204",
                      timeout=bound(100, 2, 300)), d.log()
    finally:
        srv.close()
    head = srv.heads[0]
    assert head.startswith("HEAD /status?x=1 HTTP/1.0\r\n"), head
    lines = head.split("\r\n")
    assert "Host: %s" % (host or srv.address) in lines, head
    assert "Connection: close" in lines, head
