"""kgated under hostile or careless clients, limits, shutdown, and config
errors. Timeouts here bound hangs; they do not measure speed."""
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import time

import pytest

from conftest import (KGATED, base_config, client_context, curl, echo_exchange, log_events,
                      run, tcp_closed_by_peer, tls_listener, wait_until)

CLOSE_DEADLINE = 5.0  # handshake_timeout_ms is 1000; generous for ASan


def client_hello(pki):
    """The bytes of a real TLS ClientHello from Python's ssl."""
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = client_context(pki).wrap_bio(inc, out, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    hello = out.read()
    assert hello[0] == 0x16 and len(hello) > 100
    return hello


def garbage():
    data = bytearray(os.urandom(4096))
    data[0] = 0x47  # never a TLS handshake record type
    return bytes(data)


def connect(port):
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def good_request(pki, d):
    res = curl(pki, d.port)
    assert res.returncode == 0 and res.stdout.startswith("backend="), \
        "good client not served: rc %d %r %r" % (res.returncode, res.stdout, res.stderr)


@pytest.fixture
def hs_daemon(pki, spawn_kgated, http_backends):
    a, b = http_backends("a", "b")
    return spawn_kgated(base_config(pki, [tls_listener(
        pki, [a, b], handshake_timeout_ms=1000)]))


def test_garbage_instead_of_client_hello(pki, hs_daemon):
    socks = [connect(hs_daemon.port) for _ in range(10)]
    try:
        for s in socks:
            s.sendall(garbage())
        assert all(tcp_closed_by_peer(s, CLOSE_DEADLINE) for s in socks), \
            "a connection that sent garbage stayed open"
    finally:
        for s in socks:
            s.close()
    good_request(pki, hs_daemon)
    assert hs_daemon.alive()


def test_truncated_client_hello_then_eof(pki, hs_daemon):
    hello = client_hello(pki)
    socks = [connect(hs_daemon.port) for _ in range(10)]
    try:
        for s in socks:
            s.sendall(hello[:len(hello) // 2])
            s.shutdown(socket.SHUT_WR)
        assert all(tcp_closed_by_peer(s, CLOSE_DEADLINE) for s in socks), \
            "a connection with a truncated ClientHello and EOF stayed open"
    finally:
        for s in socks:
            s.close()
    good_request(pki, hs_daemon)


def stalled_clients(pki, port, n):
    """n/2 that send nothing, n/2 that send half a ClientHello; all stall."""
    hello = client_hello(pki)
    socks = []
    for i in range(n):
        s = connect(port)
        if i % 2:
            s.sendall(hello[:len(hello) // 2])
        socks.append(s)
    return socks


def test_stalled_handshakes_cut_while_good_client_served(pki, hs_daemon):
    socks = stalled_clients(pki, hs_daemon.port, 20)
    try:
        good_request(pki, hs_daemon)
        still_open = [s for s in socks if not tcp_closed_by_peer(s, CLOSE_DEADLINE)]
        assert not still_open, "%d stalled handshakes not cut by the daemon" % len(still_open)
    finally:
        for s in socks:
            s.close()
    good_request(pki, hs_daemon)


def test_resources_back_to_baseline_after_bad_clients(pki, hs_daemon):
    d = hs_daemon
    for _ in range(3):
        good_request(pki, d)
    base_fds, base_rss = d.fd_count(), d.rss_kib()
    hello = client_hello(pki)
    for _ in range(3):
        socks = stalled_clients(pki, d.port, 20)
        for _ in range(10):
            s = connect(d.port)
            s.sendall(garbage())
            socks.append(s)
            s = connect(d.port)
            s.sendall(hello[: len(hello) // 3])
            s.shutdown(socket.SHUT_WR)
            socks.append(s)
        good_request(pki, d)
        try:
            assert all(tcp_closed_by_peer(s, CLOSE_DEADLINE) for s in socks)
        finally:
            for s in socks:
                s.close()
    for _ in range(3):
        good_request(pki, d)
    wait_until(lambda: d.fd_count() <= base_fds + 2, 5)
    assert d.fd_count() <= base_fds + 2, "fd count %d, baseline %d: leak" % (
        d.fd_count(), base_fds)
    grown = d.rss_kib() - base_rss
    assert grown < 20 * 1024, "VmRSS grew by %d KiB" % grown


def test_max_connections_excess_gets_clean_close(pki, spawn_kgated, echo_backend):
    d = spawn_kgated(base_config(pki, [tls_listener(
        pki, [echo_backend], max_connections=5, handshake_timeout_ms=3000)]))
    ctx = client_context(pki)

    def open_tls():
        raw = connect(d.port)
        return ctx.wrap_socket(raw, server_hostname="localhost")

    def echo_ok(s, msg):
        return echo_exchange(s, msg) == msg

    held = []
    try:
        for i in range(5):
            s = open_tls()
            held.append(s)
            assert echo_ok(s, b"ping %d\n" % i), "connection %d not served" % i
        # The 6th must be turned away, not kept waiting for a slot.
        refused = False
        try:
            s6 = open_tls()
            try:
                s6.sendall(b"six\n")
                refused = s6.recv(16) == b""
            except (ssl.SSLError, ConnectionError):
                refused = True
            finally:
                s6.close()
        except (ssl.SSLError, ConnectionError):
            refused = True
        except socket.timeout:
            pytest.fail("6th connection neither served nor closed within 5 s")
        assert refused, "6th connection was served despite max_connections=5"
        assert d.alive()
        for i, s in enumerate(held):
            assert echo_ok(s, b"again %d\n" % i), "held connection %d broken" % i
        # A slot frees up once one of the 5 goes away.
        held.pop().close()

        def new_one_served():
            try:
                s = open_tls()
            except (ssl.SSLError, OSError):
                return False
            held.append(s)
            try:
                return echo_ok(s, b"slot\n")
            except (ssl.SSLError, OSError):
                return False
        assert wait_until(new_one_served, 5, interval=0.1), \
            "no new connection accepted after one of 5 closed"
    finally:
        for s in held:
            s.close()


def test_idle_timeout_closes_idle_connection(pki, spawn_kgated, echo_backend):
    d = spawn_kgated(base_config(pki, [tls_listener(
        pki, [echo_backend], idle_timeout_ms=1000)]))
    ctx = client_context(pki)
    with socket.create_connection(("127.0.0.1", d.port), timeout=10) as raw:
        s = ctx.wrap_socket(raw, server_hostname="localhost")
        # Activity keeps it open past the timeout...
        for i in range(4):
            s.sendall(b"tick %d\n" % i)
            assert s.recv(64) == b"tick %d\n" % i
            time.sleep(0.4)  # idle, but less than the timeout
        # ...silence ends it.
        assert tcp_closed_by_peer(s, CLOSE_DEADLINE), "idle connection not closed"
    assert wait_until(lambda: echo_backend.finished, 5), "backend side not closed"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_with_idle_connection_drains_and_exits_0(pki, spawn_kgated,
                                                        echo_backend, signum):
    drain_ms = 4000
    d = spawn_kgated(base_config(pki, [tls_listener(pki, [echo_backend])],
                                 drain_timeout_ms=drain_ms))
    ctx = client_context(pki)
    raw = connect(d.port)
    s = ctx.wrap_socket(raw, server_hostname="localhost")
    try:
        s.sendall(b"before\n")
        assert s.recv(64) == b"before\n"
        d.proc.send_signal(signum)

        def refused():
            try:
                with socket.create_connection(("127.0.0.1", d.port), timeout=0.5) as r2:
                    c2 = ctx.wrap_socket(r2, server_hostname="localhost")
                    c2.sendall(b"x")
                    return c2.recv(1) == b""
            except (OSError, ssl.SSLError):
                return True
        assert wait_until(refused, 2, interval=0.05), "still serving new connections"
        # The established connection keeps working during the drain.
        assert d.alive(), "exited at once instead of draining the open connection"
        s.sendall(b"during\n")
        assert s.recv(64) == b"during\n", "idle connection broken during drain"
        try:
            rc = d.proc.wait(drain_ms / 1000 + 5)
        except subprocess.TimeoutExpired:
            pytest.fail("kgated still running 5 s after the drain timeout")
        assert rc == 0, "kgated exited %d" % rc
        # The daemon cut the leftover connection when it gave up draining.
        assert tcp_closed_by_peer(s, 2), "connection still open after exit"
    finally:
        s.close()


def test_signal_without_connections_exits_0_promptly(pki, spawn_kgated, echo_backend):
    d = spawn_kgated(base_config(pki, [tls_listener(pki, [echo_backend])],
                                 drain_timeout_ms=30000))
    d.proc.send_signal(signal.SIGTERM)
    # Nothing to drain: well before the 30 s drain timeout.
    rc = d.proc.wait(10)
    assert rc == 0


# ---------------------------------------------------------------- config

def write_config(tmp_path, cfg):
    path = tmp_path / "kgated.json"
    path.write_text(cfg if isinstance(cfg, str) else json.dumps(cfg))
    return str(path)


def check(path):
    return run([KGATED, "--check", "--config", path], check=False, timeout=30)


def valid_config(pki):
    return base_config(pki, [tls_listener(pki, ["127.0.0.1:9"])])


def test_check_accepts_valid_config(pki, tmp_path):
    res = check(write_config(tmp_path, valid_config(pki)))
    assert res.returncode == 0, res.stderr


def test_check_resolves_relative_paths_against_config_folder(pki, tmp_path):
    for name in ("server.pem", "server.key"):
        shutil.copy(os.path.join(pki.root, name), tmp_path / name)
    shutil.copy(pki.ca, tmp_path / "ca.pem")
    shutil.copy(pki.crl, tmp_path / "ca.crl")
    cfg = valid_config(pki)
    cfg["certificates"] = {
        "web": {"type": "server", "cert": "server.pem", "key": "server.key"},
        "clients": {"type": "ca", "cert": "ca.pem", "crl": "ca.crl"}}
    res = run([KGATED, "--check", "--config", write_config(tmp_path, cfg)],
              check=False, cwd="/")
    assert res.returncode == 0, res.stderr


def _set(cfg, path, value):
    node = cfg
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    return cfg


CONFIG_ERRORS = {
    "unknown_key": (lambda c, p: _set(c, ["listeners", 0, "bogus"], 1),
                    r"listeners\[0\]\.bogus"),
    "unknown_settings_key": (lambda c, p: _set(c, ["settings", "bogus"], True),
                             r"settings\.bogus"),
    "wrong_type": (lambda c, p: _set(c, ["listeners", 0, "port"], "443"),
                   r"listeners\[0\]\.port"),
    "missing_cert_file": (lambda c, p: _set(c, ["certificates", "web", "cert"],
                                            "/nonexistent/server.pem"),
                          r"certificates\.web"),
    "key_does_not_match": (lambda c, p: _set(c, ["certificates", "web", "key"],
                                             p.key("client")),
                           r"certificates\.web"),
    "ca_not_a_ca": (lambda c, p: _set(c, ["certificates", "clients", "cert"],
                                      p.cert("client")),
                    r"certificates\.clients"),
    "expired_server_cert": (lambda c, p: _set(
        _set(c, ["certificates", "web", "cert"], p.cert("server-expired")),
        ["certificates", "web", "key"], p.key("server-expired")),
        r"certificates\.web"),
}


@pytest.mark.parametrize("case", sorted(CONFIG_ERRORS))
def test_check_refuses_bad_config(pki, tmp_path, case):
    mutate, path_re = CONFIG_ERRORS[case]
    res = check(write_config(tmp_path, mutate(valid_config(pki), pki)))
    assert res.returncode == 1, "rc %d, stderr %r" % (res.returncode, res.stderr)
    assert re.search(r"kgated: config error: " + path_re, res.stderr), res.stderr


def test_check_refuses_bad_json(tmp_path):
    res = check(write_config(tmp_path, '{"settings": {"workers": 1,'))
    assert res.returncode == 1, res.stderr
    assert "kgated: config error:" in res.stderr, res.stderr


@pytest.mark.parametrize("user_args", [(), ("--user", "kgate-no-such-user")],
                         ids=["default_user", "missing_user"])
def test_start_with_bad_config_exits_1(pki, tmp_path, user_args):
    """The configuration is checked before the user is looked up: the
    default user (kgate) may not exist here, and a missing one must not
    hide the configuration's error."""
    cfg = _set(valid_config(pki), ["certificates", "web", "cert"], "/nonexistent/x.pem")
    res = run([KGATED, "--config", write_config(tmp_path, cfg), *user_args], check=False,
              timeout=15)
    assert res.returncode == 1, res.stderr
    evs = log_events(res.stderr)
    assert [e["event"] for e in evs] == ["config.invalid"], res.stderr
    assert evs[0]["reason"].startswith("certificates.web"), res.stderr
