"""Faults around kgated: backends that reset mid-response, never answer,
cannot be reached or read slowly; clients that send garbage after the
handshake or vanish at every stage; a file-descriptor table that runs full.
Each test checks that kgated closes what it must, loses nothing it
acknowledged, keeps serving, and returns its fds. Timeouts bound hangs;
they do not measure speed."""
import errno
import hashlib
import json
import os
import select
import socket
import ssl
import struct
import threading
import time

import pytest

from conftest import (KGATED, EchoSession, ThreadedServer, base_config, client_context,
                      closing_factory, curl, log_events, run, run_echo_sessions,
                      tcp_closed_by_peer, tls_listener, wait_until)

MiB = 1 << 20
CLOSE_DEADLINE = 8.0  # above every timeout configured here, generous for ASan
RST_LINGER = struct.pack("ii", 1, 0)


class FaultyBackend(ThreadedServer):
    """Runs `handler(conn, record)` for each connection; record is a dict
    the test reads afterwards."""

    def __init__(self, handler, backlog=128):
        self.handler = handler
        self.records = []
        super().__init__(backlog)

    def handle(self, conn):
        rec = {"eof": False, "bytes": 0, "sha": hashlib.sha256()}
        with self.lock:
            self.records.append(rec)
        self.handler(conn, rec)


def read_to_eof(conn, rec, chunk=65536, pause=0.0):
    """Reads until EOF, recording size and digest; True on a clean EOF."""
    while True:
        data = conn.recv(chunk)
        if not data:
            rec["eof"] = True
            return True
        rec["bytes"] += len(data)
        rec["sha"].update(data)
        if pause:
            time.sleep(pause)


@pytest.fixture
def faulty_backend():
    yield from closing_factory(FaultyBackend)


def tls_client(pki, port, **kw):
    ctx = client_context(pki)
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    return ctx.wrap_socket(raw, server_hostname="localhost", **kw)


def good_request(pki, d):
    res = curl(pki, d.port)
    assert res.returncode == 0 and res.stdout.startswith("backend="), \
        "good client not served: rc %d %r %r" % (res.returncode, res.stdout, res.stderr)


def closed_without_reset(sock, timeout):
    """True when the peer ends the connection with a FIN (EOF, with or
    without close_notify) within timeout; False on timeout; raises on a
    reset, which is not a clean close."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            if not sock.recv(65536):
                return True
        except socket.timeout:
            return False
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
            return True
    return False


# --------------------------------------------------------------------------
# Backends
# --------------------------------------------------------------------------

def test_backend_reset_mid_response(pki, spawn_kgated, faulty_backend, http_backends):
    """The backend sends part of a large answer, then resets: the client
    gets the bytes sent before the reset, then its connection ends; the
    daemon returns the connection's fds and serves the next client."""
    sent_before_reset = 256 * 1024

    def handler(conn, rec):
        conn.recv(65536)
        conn.sendall(b"x" * sent_before_reset)
        time.sleep(0.2)  # let kgated read it before the reset
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RST_LINGER)
    backend = faulty_backend(handler)
    d = spawn_kgated(base_config(pki, [tls_listener(pki, [backend])]))
    base_fds = d.fd_count()
    for _ in range(3):
        s = tls_client(pki, d.port)
        s.sendall(b"GET /big HTTP/1.1\r\n\r\n")
        got, ended = 0, False
        s.settimeout(CLOSE_DEADLINE)
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += len(chunk)
        except (ssl.SSLError, ConnectionError):
            pass
        except socket.timeout:
            pytest.fail("client still open %.0f s after the backend reset" % CLOSE_DEADLINE)
        ended = True
        s.close()
        assert ended and 0 < got <= sent_before_reset, \
            "client got %d bytes of the %d sent before the reset" % (got, sent_before_reset)
    assert wait_until(lambda: d.fd_count() <= base_fds, 5), \
        "fds %d after resets, %d before" % (d.fd_count(), base_fds)
    assert d.alive()


def test_silent_backend_idle_timeout_closes_both_sides(pki, spawn_kgated, faulty_backend):
    """The backend accepts and reads but never answers: the idle timeout
    ends the connection with a FIN (no reset) to the client and closes the
    backend side too."""
    backend = faulty_backend(read_to_eof)
    d = spawn_kgated(base_config(pki, [tls_listener(pki, [backend], idle_timeout_ms=1000)]))
    s = tls_client(pki, d.port, suppress_ragged_eofs=False)
    s.sendall(b"GET / HTTP/1.1\r\n\r\n")
    try:
        assert closed_without_reset(s, CLOSE_DEADLINE), "idle connection not closed"
    finally:
        s.close()
    assert wait_until(lambda: backend.records and backend.records[0]["eof"], 5), \
        "backend side of the idle connection not closed"
    assert d.alive()


def blackhole_backend():
    """A listener whose accept queue is full and never drained: the kernel
    drops further SYNs, so a connect to it neither succeeds nor fails."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(0)
    addr = lsock.getsockname()
    fillers = []
    for _ in range(8):
        c = socket.socket()
        c.setblocking(False)
        err = c.connect_ex(addr)
        fillers.append(c)
        if err == errno.EINPROGRESS:
            _, w, _ = select.select([], [c], [], 0.3)
            if not w:
                return lsock, fillers  # this one hangs: the queue is full
    for c in fillers:
        c.close()
    lsock.close()
    pytest.skip("could not fill a listen queue on loopback (SYNs not dropped)")


def test_unreachable_backend_connect_timeout_then_next_member(pki, spawn_kgated,
                                                              http_backends):
    """connect_timeout_ms fires on a backend that never completes the TCP
    handshake; the retry goes to the next member and the client is served."""
    lsock, fillers = blackhole_backend()
    good = http_backends("good")
    try:
        addr = "127.0.0.1:%d" % lsock.getsockname()[1]
        d = spawn_kgated(base_config(pki, [tls_listener(
            pki, [addr, good], connect_timeout_ms=500, connect_retries=1)]))
        for _ in range(4):  # round robin: half of these try the blackhole first
            good_request(pki, d)
        assert d.wait_event("backend.connect_failed", backend=addr, err="timed out"), \
            "no connect timeout logged:\n" + d.log()[-2000:]
    finally:
        for c in fillers:
            c.close()
        lsock.close()


def test_unreachable_only_backend_client_closed_cleanly(pki, spawn_kgated):
    lsock, fillers = blackhole_backend()
    try:
        addr = "127.0.0.1:%d" % lsock.getsockname()[1]
        d = spawn_kgated(base_config(pki, [tls_listener(
            pki, [addr], connect_timeout_ms=500, connect_retries=0)]))
        base_fds = d.fd_count()
        s = tls_client(pki, d.port, suppress_ragged_eofs=False)
        s.sendall(b"hello\n")
        try:
            assert closed_without_reset(s, CLOSE_DEADLINE), \
                "client kept open after the backend connect timed out"
        finally:
            s.close()
        assert wait_until(lambda: d.fd_count() <= base_fds, 5), "fd leak after connect timeout"
        assert d.alive()
    finally:
        for c in fillers:
            c.close()
        lsock.close()


def test_slow_backend_memory_flat_nothing_lost(pki, spawn_kgated, faulty_backend):
    """The backend reads 16 KiB every 10 ms while the client uploads as fast
    as it can: kgated must push back (stop reading the client) rather than
    queue, and every byte must arrive in order."""
    backend = faulty_backend(lambda c, r: read_to_eof(c, r, chunk=16384, pause=0.01))
    d = spawn_kgated(base_config(pki, [tls_listener(pki, [backend])]))
    base_rss = d.rss_kib()
    payload = os.urandom(24 * MiB)
    s = tls_client(pki, d.port)
    peak = [0]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], d.rss_kib() - base_rss)
            time.sleep(0.05)
    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        s.settimeout(120)
        s.sendall(payload)
        s.unwrap()  # close_notify: kgated passes the end on to the backend
    finally:
        s.close()
        stop.set()
        t.join()
    assert wait_until(lambda: backend.records and backend.records[0]["eof"], 60), \
        "backend never saw the end of the upload"
    rec = backend.records[0]
    assert rec["bytes"] == len(payload), "backend got %d of %d bytes" % (rec["bytes"], len(payload))
    assert rec["sha"].hexdigest() == hashlib.sha256(payload).hexdigest(), "upload corrupted"
    assert peak[0] < 48 * 1024, "VmRSS grew by %d KiB behind a slow backend" % peak[0]


# --------------------------------------------------------------------------
# Clients
# --------------------------------------------------------------------------

def garbage_records():
    app_data = bytes([23, 3, 3]) + struct.pack(">H", 512) + os.urandom(512)
    not_tls = b"\x47ET / HTTP/1.1\r\n\r\n" + os.urandom(256)
    oversized = bytes([23, 3, 3, 0xff, 0xff]) + os.urandom(1024)
    alert_garbage = bytes([21, 3, 3, 0, 2, 0xff, 0xff])
    return {"bad-mac": app_data, "not-tls": not_tls, "oversized": oversized,
            "plain-alert": alert_garbage}


@pytest.mark.parametrize("kind", sorted(garbage_records()))
def test_garbage_after_handshake(pki, spawn_kgated, faulty_backend, kind):
    """After a good handshake and one request, the client writes bytes
    that are not valid records under the session keys: kgated ends that
    connection (and its backend side) and serves others."""
    def echo_then_read(conn, rec):
        conn.sendall(conn.recv(65536))
        read_to_eof(conn, rec)
    backend = faulty_backend(echo_then_read)
    d = spawn_kgated(base_config(pki, [tls_listener(pki, [backend])]))
    base_fds = d.fd_count()
    s = tls_client(pki, d.port)
    s.sendall(b"ping\n")
    assert s.recv(16) == b"ping\n"
    # Bypass the TLS layer: straight onto the TCP stream.
    raw = socket.socket(fileno=os.dup(s.fileno()))
    try:
        raw.sendall(garbage_records()[kind])
        assert tcp_closed_by_peer(raw, CLOSE_DEADLINE), "connection kept after garbage records"
    finally:
        raw.close()
        s.close()
    assert wait_until(lambda: backend.records and backend.records[0]["eof"], 5), \
        "backend side kept open after the client sent garbage"
    assert wait_until(lambda: d.fd_count() <= base_fds, 5), "fd leak after garbage"
    s = tls_client(pki, d.port)
    s.sendall(b"again\n")
    assert s.recv(16) == b"again\n"
    s.close()


def test_many_clients_vanish_at_every_stage(pki, spawn_kgated, http_backends):
    """Clients that close right after connecting, reset halfway through the
    ClientHello, or reset right after the handshake with a request in
    flight: afterwards kgated holds no more fds than before and serves."""
    a, b = http_backends("a", "b")
    d = spawn_kgated(base_config(pki, [tls_listener(pki, [a, b])], workers=2))
    good_request(pki, d)
    base_fds = d.fd_count()
    ctx = client_context(pki)
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    with pytest.raises(ssl.SSLWantReadError):
        ctx.wrap_bio(inc, out, server_hostname="localhost").do_handshake()
    hello = out.read()
    for i in range(150):
        raw = socket.create_connection(("127.0.0.1", d.port), timeout=10)
        kind = i % 3
        if kind == 1:
            raw.sendall(hello[: len(hello) // 2])
        elif kind == 2:
            s = ctx.wrap_socket(raw, server_hostname="localhost")
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            raw = s
        if kind:
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RST_LINGER)
        raw.close()
    good_request(pki, d)
    assert wait_until(lambda: d.fd_count() <= base_fds, 10), \
        "fds %d after vanished clients, %d before" % (d.fd_count(), base_fds)
    assert d.alive()


def test_fd_exhaustion_then_recovery(pki, spawn_kgated, http_backends):
    """kgated started with RLIMIT_NOFILE 32 (prlimit), then offered far more
    connections than fit: accept fails with EMFILE, kgated keeps running
    without spinning, and once the held connections go away it accepts and
    serves again. (The limit is set at start: io_uring reads it when the
    multishot accept is armed, so lowering it on a running daemon only
    bites after a re-arm.)"""
    a = http_backends("a")
    d = spawn_kgated(base_config(pki, [tls_listener(pki, [a], handshake_timeout_ms=30000)]),
                     args=("--user", "root"), prefix=("prlimit", "--nofile=32:32", "--"))
    good_request(pki, d)
    held = []
    try:
        for _ in range(80):  # far more than the free slots
            held.append(socket.create_connection(("127.0.0.1", d.port), timeout=5))
        assert wait_until(lambda: d.count_event("listener.accept_failed", err="Too many open files") > 0, 5), \
            "EMFILE never reached (fds %d):\n%s" % (d.fd_count(), d.log()[-2000:])
        cpu_before = proc_cpu_ticks(d.pid)
        time.sleep(1.0)
        spent = proc_cpu_ticks(d.pid) - cpu_before
        assert spent < 50, "kgated spun at a full fd table (%d ticks in 1 s)" % spent
        assert d.alive()
    finally:
        for s in held:
            s.close()
    served = wait_until(lambda: curl(pki, d.port).returncode == 0, 15, interval=0.5)
    assert served, "not serving after the fd table emptied:\n" + d.log()[-2000:]
    good_request(pki, d)
    assert d.alive()


def test_locked_memory_limit_spared_or_named(pki, spawn_kgated, http_backends, tmp_path):
    """Each worker's io_uring ring (~0.8 MiB) counts against the user's
    RLIMIT_MEMLOCK unless it is made with CAP_IPC_LOCK. Under a 1 MiB
    limit, kgated started as root makes its rings before it drops
    privileges and runs 8 workers. Without CAP_IPC_LOCK and
    CAP_SYS_RESOURCE (out of the bounding set) it can neither spare nor
    raise the limit: it exits 1, and worker.start_failed names the limit
    and the way out."""
    a = http_backends("a")
    cfg = base_config(pki, [tls_listener(pki, [a])], workers=8)
    d = spawn_kgated(cfg, args=("--user", "root"),
                     prefix=("prlimit", "--memlock=1048576:1048576", "--"))
    good_request(pki, d)
    assert d.count_event("worker.ring") == 8

    path = tmp_path / "eight.json"
    path.write_text(json.dumps(cfg))
    r = run(["prlimit", "--memlock=1048576:1048576", "--", "setpriv",
             "--bounding-set=-ipc_lock,-sys_resource", "--", KGATED, "--config", str(path),
             "--user", "root"], check=False, timeout=30)
    assert r.returncode == 1, r.stderr[-2000:]
    failed = log_events(r.stderr, "worker.start_failed")
    assert len(failed) == 1, r.stderr[-2000:]
    assert failed[0]["err"] == "Cannot allocate memory", failed[0]
    assert failed[0]["memlock_kib"] == "1024", failed[0]
    assert "LimitMEMLOCK" in failed[0]["hint"], failed[0]


def proc_cpu_ticks(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def test_poll_wait_knob_moves_bytes_and_says_so(pki, spawn_kgated, echo_backend, monkeypatch):
    """KGATED_POLL_WAIT=1 (kgated(8) ENVIRONMENT, for valgrind): the worker
    sleeps in poll(2) on an eventfd registered on its ring; bytes still
    move both ways exactly, and worker.ring names the wait. Without it the
    worker waits in io_uring_enter as always."""
    cfg = base_config(pki, [tls_listener(pki, [echo_backend], forwarding="userspace")])
    plain = spawn_kgated(cfg)
    assert [e["wait"] for e in plain.events("worker.ring")] == ["io_uring"], plain.log()
    monkeypatch.setenv("KGATED_POLL_WAIT", "1")
    d = spawn_kgated(cfg)
    assert [e["wait"] for e in d.events("worker.ring")] == ["poll"], d.log()
    data = os.urandom(4 << 20)
    s = EchoSession(client_context(pki), d.port, data, half_close=True)
    assert run_echo_sessions([s], timeout=60) == [], "transfer stalled under the poll wait"
    assert s.error is None, repr(s.error)
    assert s.rx_len == len(data)
    assert s.rx_hash.hexdigest() == hashlib.sha256(data).hexdigest()
