"""Plain `tcp` listeners: per-connection round robin, and bytes moved by
splice or by the userspace copy loop (paths `splice`, `userspace-copy`) —
byte-exact both ways, half-close, nothing lost when a side closes right
after sending, bounded memory under a stalled reader, no fd leak. Also the
refusals of forwarding modes the kernel or the protocol cannot run."""
import hashlib
import os
import socket
import threading
import time

import pytest

from conftest import ThreadedServer, base_config, closing_factory, path_count, wait_until

MiB = 1 << 20
# Paths a tcp listener can take on any kernel. sockmap is refused in this
# version (the kernel cannot pause a sockmap source without losing or
# repeating bytes; bpf/README.md): see
# test_sockmap_forwarding_is_refused_until_pacing_is_fixed.
TCP_PATHS = ["auto", "splice", "userspace"]
PATH_COUNTER = {"auto": "splice", "splice": "splice", "userspace": "userspace-copy"}


def tcp_listener(backends, forwarding="auto", name="plain", **extra):
    lst = {"name": name, "protocol": "tcp", "bind": "127.0.0.1", "port": 0,
           "forwarding": forwarding,
           "backends": [{"address": b if isinstance(b, str) else b.address}
                        for b in backends]}
    lst.update(extra)
    return lst


def tcp_daemon(pki, spawn_kgated, backends, forwarding, workers=1, **extra):
    return spawn_kgated(base_config(pki, [tcp_listener(backends, forwarding, **extra)],
                                    workers=workers))


class ByteServer(ThreadedServer):
    """Per connection: `mode` "sink" reads to EOF (records count + sha256),
    "source" sends `size` random bytes then closes at once (records sha256),
    "echo" echoes and half-closes after EOF."""

    def __init__(self, mode, size=0):
        self.mode, self.size = mode, size
        self.results = []
        super().__init__()

    def handle(self, conn):
        h, n = hashlib.sha256(), 0
        try:
            if self.mode == "source":
                left = self.size
                while left:
                    chunk = os.urandom(min(left, 1 << 20))
                    conn.sendall(chunk)
                    h.update(chunk)
                    left -= len(chunk)
                n = self.size
            else:
                while True:
                    data = conn.recv(1 << 18)
                    if not data:
                        break
                    h.update(data)
                    n += len(data)
                    if self.mode == "echo":
                        conn.sendall(data)
                if self.mode == "echo":
                    conn.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        with self.lock:
            self.results.append((n, h.hexdigest()))

    def wait(self, count, timeout=60):
        return wait_until(lambda: len(self.results) >= count, timeout)


@pytest.fixture
def servers():
    yield from closing_factory(ByteServer)


def recv_all(sock, limit=None):
    h, n = hashlib.sha256(), 0
    while True:
        data = sock.recv(1 << 18)
        if not data:
            return n, h.hexdigest()
        h.update(data)
        n += len(data)


class Banner(ThreadedServer):
    """Answers each connection with its name, then closes."""

    def __init__(self, name):
        self.name = name.encode()
        super().__init__()

    def handle(self, conn):
        conn.sendall(self.name)


@pytest.mark.parametrize("forwarding", TCP_PATHS)
def test_connections_alternate_between_backends(pki, spawn_kgated, forwarding):
    a, b = Banner("A"), Banner("B")
    try:
        d = tcp_daemon(pki, spawn_kgated, [a, b], forwarding)
        seen = []
        for _ in range(10):
            with socket.create_connection(("127.0.0.1", d.port), timeout=10) as s:
                seen.append(recv_all_bytes(s))
        assert seen == [b"A", b"B"] * 5 or seen == [b"B", b"A"] * 5, seen
        assert d.terminate() == 0
        assert path_count(d, PATH_COUNTER[forwarding]) == 10, d.log()
    finally:
        a.close()
        b.close()


def recv_all_bytes(sock):
    out = b""
    while True:
        data = sock.recv(4096)
        if not data:
            return out
        out += data


@pytest.mark.parametrize("forwarding", TCP_PATHS)
def test_64mib_each_way_byte_exact(pki, spawn_kgated, servers, forwarding):
    echo = servers("echo")
    d = tcp_daemon(pki, spawn_kgated, [echo], forwarding)
    data = os.urandom(64 * MiB)
    want = hashlib.sha256(data).hexdigest()
    with socket.create_connection(("127.0.0.1", d.port), timeout=60) as s:
        got = {}
        reader = threading.Thread(target=lambda: got.update(r=recv_all(s)))
        reader.start()
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)  # half-close: the echo still comes back
        reader.join(120)
        assert not reader.is_alive(), "echo stalled"
    assert got["r"] == (len(data), want)
    assert echo.wait(1) and echo.results[0] == (len(data), want)
    assert d.terminate() == 0
    assert path_count(d, PATH_COUNTER[forwarding]) == 1, d.log()


@pytest.mark.parametrize("forwarding", TCP_PATHS)
def test_100mb_then_close_loses_nothing_upstream(pki, spawn_kgated, servers, forwarding):
    sink = servers("sink")
    d = tcp_daemon(pki, spawn_kgated, [sink], forwarding)
    data = os.urandom(100 * 1000 * 1000)
    with socket.create_connection(("127.0.0.1", d.port), timeout=60) as s:
        s.sendall(data)
    # closed at once: every byte must still reach the backend, then its EOF
    assert sink.wait(1, timeout=120), "backend never saw the end of the stream"
    assert sink.results[0] == (len(data), hashlib.sha256(data).hexdigest())


@pytest.mark.parametrize("forwarding", TCP_PATHS)
def test_100mb_then_close_loses_nothing_downstream(pki, spawn_kgated, servers, forwarding):
    size = 100 * 1000 * 1000
    source = servers("source", size)
    d = tcp_daemon(pki, spawn_kgated, [source], forwarding)
    with socket.create_connection(("127.0.0.1", d.port), timeout=60) as s:
        n, digest = recv_all(s)
    assert source.wait(1)
    assert (n, digest) == source.results[0], "client got %d of %d bytes" % (n, size)


@pytest.mark.parametrize("forwarding", TCP_PATHS)
def test_backend_half_close_reaches_client_and_upload_continues(pki, spawn_kgated,
                                                                forwarding):
    """The backend says its piece and shuts its write side; the client sees
    EOF yet can still send, and the backend receives it all."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    got = {}

    def serve():
        conn, _ = lsock.accept()
        conn.sendall(b"bye")
        conn.shutdown(socket.SHUT_WR)
        got["n"] = recv_all(conn)
        conn.close()
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        d = tcp_daemon(pki, spawn_kgated, ["127.0.0.1:%d" % lsock.getsockname()[1]],
                       forwarding)
        data = os.urandom(8 * MiB)
        with socket.create_connection(("127.0.0.1", d.port), timeout=30) as s:
            assert recv_all_bytes(s) == b"bye"
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            t.join(30)
        assert got.get("n") == (len(data), hashlib.sha256(data).hexdigest())
    finally:
        lsock.close()


@pytest.mark.parametrize("forwarding", TCP_PATHS)
def test_stalled_reader_keeps_memory_bounded(pki, spawn_kgated, servers, forwarding):
    """The client sends but never reads: the echo backend blocks writing,
    so kgated must stop reading from the client instead of queueing."""
    echo = servers("echo")
    d = tcp_daemon(pki, spawn_kgated, [echo], forwarding)
    base_rss = d.rss_kib()
    chunk = os.urandom(256 * 1024)
    sent, limit = 0, 512 * MiB
    with socket.create_connection(("127.0.0.1", d.port), timeout=10) as s:
        s.settimeout(2)
        try:
            while sent < limit:
                sent += s.send(chunk)
        except socket.timeout:
            pass
        grown = d.rss_kib() - base_rss
        # socket buffers on four sockets plus two pipes: tens of MiB at most
        assert sent < 128 * MiB, "%d MiB accepted without reading" % (sent // MiB)
        assert grown < 16 * 1024, "VmRSS grew by %d KiB" % grown
    assert d.alive()


@pytest.mark.parametrize("forwarding", TCP_PATHS)
def test_many_connections_leave_no_fds(pki, spawn_kgated, servers, forwarding):
    echo = servers("echo")
    d = tcp_daemon(pki, spawn_kgated, [echo], forwarding)
    base = d.fd_count()
    for i in range(2000):
        with socket.create_connection(("127.0.0.1", d.port), timeout=10) as s:
            s.sendall(b"x%d" % i)
            s.shutdown(socket.SHUT_WR)
            assert recv_all_bytes(s) == b"x%d" % i
    assert wait_until(lambda: d.fd_count() <= base, 10), \
        "fds: %d before, %d after 2000 connections" % (base, d.fd_count())


def test_backend_down_goes_to_the_other(pki, spawn_kgated):
    from conftest import dead_port
    good = Banner("G")
    try:
        d = tcp_daemon(pki, spawn_kgated, ["127.0.0.1:%d" % dead_port(), good], "auto")
        for _ in range(6):
            with socket.create_connection(("127.0.0.1", d.port), timeout=10) as s:
                assert recv_all_bytes(s) == b"G"
    finally:
        good.close()


def test_all_backends_down_closes_client_quickly(pki, spawn_kgated):
    from conftest import dead_port
    d = tcp_daemon(pki, spawn_kgated, ["127.0.0.1:%d" % dead_port()], "splice")
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", d.port), timeout=10) as s:
        assert recv_all_bytes(s) == b""
    assert time.monotonic() - start < 5
    assert d.wait_event("conn.no_backend")


def kernel_has_ktls():
    return os.path.exists("/proc/net/tls_stat")


def start_fails(tmp_path, config):
    """kgated must refuse the configuration at start, with a message."""
    import json
    from conftest import KGATED, run
    path = tmp_path / "refused.json"
    path.write_text(json.dumps(config))
    res = run([KGATED, "--user", "root", "--config", str(path)], check=False, timeout=30)
    assert res.returncode != 0, "kgated started with an impossible forwarding mode"
    return res.stderr


def test_sockmap_forwarding_is_refused_until_pacing_is_fixed(pki, tmp_path):
    log = start_fails(tmp_path, base_config(
        pki, [tcp_listener(["127.0.0.1:9"], "sockmap")]))
    assert "listeners[0].forwarding" in log and "disabled in this version" in log, log


def test_sockmap_on_a_tls_listener_is_refused(pki, tmp_path):
    from conftest import tls_listener
    log = start_fails(tmp_path, base_config(
        pki, [tls_listener(pki, ["127.0.0.1:9"], forwarding="sockmap")]))
    assert "listeners[0].forwarding" in log and "sockmap" in log, log


@pytest.mark.skipif(kernel_has_ktls(), reason="this kernel has kTLS: splice is possible")
def test_splice_on_a_tls_listener_without_ktls_is_refused(pki, tmp_path):
    from conftest import tls_listener
    log = start_fails(tmp_path, base_config(
        pki, [tls_listener(pki, ["127.0.0.1:9"], forwarding="splice")]))
    assert "kernel TLS" in log, log


def test_auto_on_a_tls_listener_reports_the_path(pki, spawn_kgated, http_backends):
    from conftest import curl, tls_listener
    be = http_backends("one")
    d = spawn_kgated(base_config(pki, [tls_listener(pki, [be])]))
    r = curl(pki, d.port)
    assert r.returncode == 0, r.stderr
    assert d.terminate() == 0
    want = "ktls-splice" if kernel_has_ktls() else "userspace-tls"
    assert path_count(d, want) == 1, d.log()
