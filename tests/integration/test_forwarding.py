"""Bytes through kgated: byte-exact echo both ways, many concurrent
connections, half-close in both directions, and backend failover."""
import hashlib
import os
import socket
import ssl
import threading
import time

import pytest

from conftest import (EchoSession, base_config, client_context, curl,
                      dead_port, run_echo_sessions, tls_listener, wait_until)

MiB = 1 << 20


def echo_daemon(pki, spawn_kgated, backend, **listener):
    return spawn_kgated(base_config(pki, [tls_listener(pki, [backend], **listener)]))


def wait_backend_done(echo, count, timeout=30):
    return wait_until(lambda: len(echo.finished) >= count, timeout)


def test_64mib_random_each_way_byte_exact(pki, spawn_kgated, echo_backend):
    d = echo_daemon(pki, spawn_kgated, echo_backend)
    data = os.urandom(64 * MiB)
    want = hashlib.sha256(data).hexdigest()
    s = EchoSession(client_context(pki), d.port, data, half_close=False)
    late = run_echo_sessions([s], timeout=300)
    assert not late, "transfer stalled at %d/%d bytes echoed" % (s.rx_len, len(data))
    assert s.error is None, repr(s.error)
    assert s.rx_len == len(data), "closed (%s) after %d/%d bytes" % (
        s.eof, s.rx_len, len(data))
    assert s.rx_hash.hexdigest() == want, "echoed bytes differ (client side)"
    # The upstream direction on its own: what the backend received.
    assert wait_backend_done(echo_backend, 1), "backend never saw the close"
    n, digest, _ = echo_backend.finished[0]
    assert n == len(data) and digest == want, "backend received %d bytes" % n


@pytest.mark.parametrize("workers", [1, 2])
def test_200_concurrent_connections_echo(pki, spawn_kgated, echo_backend, workers):
    d = spawn_kgated(base_config(pki, [tls_listener(pki, [echo_backend])],
                                 workers=workers))
    ctx = client_context(pki)
    payloads = [os.urandom(256 * 1024) for _ in range(200)]
    sessions = [EchoSession(ctx, d.port, p, half_close=False) for p in payloads]
    late = run_echo_sessions(sessions, timeout=300)
    assert not late, "%d connections did not finish, e.g. %d/%d bytes" % (
        len(late), late[0].rx_len, late[0].expect_len)
    errors = [repr(s.error) for s in sessions if s.error is not None]
    assert not errors, "%d failed: %s" % (len(errors), errors[:3])
    short = [(s.rx_len, s.eof) for s in sessions if s.rx_len != s.expect_len]
    assert not short, "%d connections closed early (received bytes, eof): %s" % (
        len(short), short[:5])
    bad = [i for i, (s, p) in enumerate(zip(sessions, payloads))
           if s.rx_hash.hexdigest() != hashlib.sha256(p).hexdigest()]
    assert not bad, "connections with a wrong echo: %s" % bad[:10]
    assert wait_backend_done(echo_backend, 200), \
        "backend saw %d of 200 closes" % len(echo_backend.finished)
    got = sorted(digest for _, digest, _ in echo_backend.finished)
    assert got == sorted(hashlib.sha256(p).hexdigest() for p in payloads)


@pytest.mark.parametrize("tls_max", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_client_half_close_still_gets_whole_echo(pki, spawn_kgated, echo_backend, tls_max):
    """Client sends, then close_notify (its write side ends); the echo
    backend only finishes (and half-closes) after that EOF reaches it."""
    d = echo_daemon(pki, spawn_kgated, echo_backend)
    data = os.urandom(3 * MiB + 123)
    s = EchoSession(client_context(pki, tls_max=tls_max), d.port, data,
                    half_close=True)
    late = run_echo_sessions([s], timeout=60)
    assert not late, "no end of echo: %d/%d bytes, unwrapped=%s" % (
        s.rx_len, len(data), s.unwrapped)
    assert s.error is None, repr(s.error)
    assert s.rx_len == len(data), "echo truncated at %d/%d" % (s.rx_len, len(data))
    assert s.rx_hash.hexdigest() == hashlib.sha256(data).hexdigest()
    assert s.eof == "close_notify", "backend EOF ended as %s, not close_notify" % s.eof
    assert wait_backend_done(echo_backend, 1)
    n, digest, saw_eof = echo_backend.finished[0]
    assert saw_eof and n == len(data)
    assert digest == hashlib.sha256(data).hexdigest()


class GreetThenDrain:
    """Backend that sends a greeting, half-closes, then reads to EOF."""

    GREETING = b"hello from the backend\n" * 1000

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.address = "127.0.0.1:%d" % self.sock.getsockname()[1]
        self.received = []
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            conn.sendall(self.GREETING)
            conn.shutdown(socket.SHUT_WR)
            h, n = hashlib.sha256(), 0
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                h.update(chunk)
                n += len(chunk)
            self.received.append((n, h.hexdigest()))

    def close(self):
        self.sock.close()


def test_backend_half_close_reaches_client_and_upload_continues(pki, spawn_kgated):
    backend = GreetThenDrain()
    try:
        d = spawn_kgated(base_config(pki, [tls_listener(pki, [backend.address])]))
        ctx = client_context(pki, tls_max=ssl.TLSVersion.TLSv1_3)
        data = os.urandom(2 * MiB)
        with socket.create_connection(("127.0.0.1", d.port), timeout=15) as raw:
            s = ctx.wrap_socket(raw, server_hostname="localhost")
            got = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += chunk
            assert got == GreetThenDrain.GREETING
            # Our read side is closed; our write side must still work.
            s.sendall(data)
            s.unwrap()
        assert wait_until(lambda: backend.received, 15), \
            "backend never saw the end of the upload"
        assert backend.received[0] == (len(data), hashlib.sha256(data).hexdigest())
    finally:
        backend.close()


def test_backend_down_requests_go_to_the_other(pki, spawn_kgated, http_backends):
    alive = http_backends("alive")
    d = spawn_kgated(base_config(pki, [tls_listener(
        pki, ["127.0.0.1:%d" % dead_port(), alive], connect_timeout_ms=1000)]))
    bodies = []
    for _ in range(10):
        res = curl(pki, d.port)
        assert res.returncode == 0, res.stderr
        bodies.append(res.stdout)
    assert bodies == ["backend=alive\n"] * 10
    assert alive.hits == 10


def test_all_backends_down_closes_client_quickly(pki, spawn_kgated):
    d = spawn_kgated(base_config(pki, [tls_listener(
        pki, ["127.0.0.1:%d" % dead_port(), "127.0.0.1:%d" % dead_port()],
        connect_timeout_ms=1000)]))
    ctx = client_context(pki)
    for _ in range(3):
        start = time.monotonic()
        with socket.create_connection(("127.0.0.1", d.port), timeout=10) as raw:
            closed = False
            try:
                s = ctx.wrap_socket(raw, server_hostname="localhost")
                s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
                closed = s.recv(4096) == b""
            except (ssl.SSLError, ConnectionError):
                closed = True
            except socket.timeout:
                pytest.fail("connection still open after %.1f s"
                            % (time.monotonic() - start))
        assert closed, "got data although no backend is up"
    assert d.alive()


def test_backpressure_bounds_daemon_memory(pki, spawn_kgated, echo_backend):
    """A client that sends but never reads: the echo backend blocks, and
    kgated must stop reading instead of queueing everything in memory."""
    d = echo_daemon(pki, spawn_kgated, echo_backend)
    ctx = client_context(pki)
    base_rss = d.rss_kib()
    chunk = os.urandom(256 * 1024)
    sent, limit = 0, 256 * MiB
    with socket.create_connection(("127.0.0.1", d.port), timeout=10) as raw:
        s = ctx.wrap_socket(raw, server_hostname="localhost")
        s.settimeout(2)
        try:
            while sent < limit:
                sent += s.send(chunk)
        except (socket.timeout, ssl.SSLWantWriteError):
            pass
        grown = d.rss_kib() - base_rss
        assert sent < limit, "all %d MiB accepted without reading: no back-pressure" % (limit // MiB)
        assert grown < 48 * 1024, "VmRSS grew by %d KiB with %d MiB stuck" % (grown, sent // MiB)
        s.close()
    assert d.alive()


class ResettingBackend:
    """Accepts one connection, reads once, then resets it (SO_LINGER 0)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.address = "127.0.0.1:%d" % self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        conn.recv(65536)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
        conn.close()

    def close(self):
        self.sock.close()


def test_backend_reset_closes_client(pki, spawn_kgated):
    backend = ResettingBackend()
    try:
        d = spawn_kgated(base_config(pki, [tls_listener(pki, [backend.address])]))
        ctx = client_context(pki)
        with socket.create_connection(("127.0.0.1", d.port), timeout=10) as raw:
            s = ctx.wrap_socket(raw, server_hostname="localhost")
            s.sendall(b"hello\n")
            try:
                assert s.recv(100) == b"", "data from a backend that reset"
            except (ssl.SSLError, ConnectionError):
                pass
            except socket.timeout:
                pytest.fail("client still open 10 s after the backend reset")
    finally:
        backend.close()


def test_client_reset_closes_backend_side(pki, spawn_kgated, echo_backend):
    d = echo_daemon(pki, spawn_kgated, echo_backend)
    ctx = client_context(pki)
    raw = socket.create_connection(("127.0.0.1", d.port), timeout=10)
    s = ctx.wrap_socket(raw, server_hostname="localhost")
    s.sendall(b"ping\n")
    assert s.recv(16) == b"ping\n"
    base_fds = d.fd_count()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
    s.close()
    assert wait_backend_done(echo_backend, 1, timeout=10), \
        "backend connection still open after the client reset"
    assert wait_until(lambda: d.fd_count() <= base_fds - 2, 5), \
        "daemon kept fds: %d, with the connection %d" % (d.fd_count(), base_fds)
    assert d.alive()
