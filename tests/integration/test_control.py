"""Control plane: kgatectl against a running kgated with a state directory.

Every verb and its refusals (a refusal is one clear line naming the
problem, with the state and the daemon unchanged), live changes under a
bounded load loop from a second process, persistence across kill -9, the
control socket's robustness, and the metrics endpoint.
"""
import hashlib
import json
import os
import re
import shutil
import socket
import ssl
import stat
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from conftest import (KGATECTL, KGATED, REPO, base_config, client_context, curl, dead_port,
                      https_get, run, tls_listener, wait_until)

LOAD_LOOP = os.path.join(REPO, "tests", "tools", "load_loop.py")


class Ctl:
    """kgatectl bound to one daemon's control socket."""

    def __init__(self, sock):
        self.sock = sock

    def __call__(self, *args, check=True):
        return run([KGATECTL, "--socket", self.sock, *args], check=check)

    def json(self, *args):
        return json.loads(self("-o", "json", *args).stdout)

    def refused(self, *args, code):
        """Runs a command that must fail; returns its one-line message."""
        r = self(*args, check=False)
        assert r.returncode != 0, "expected a refusal: %s\n%s" % (args, r.stdout)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1, r.stderr
        assert lines[0].startswith("kgatectl: "), r.stderr
        assert lines[0].endswith("[%s]" % code), r.stderr
        return lines[0]

    def certs(self):
        """cert list without the countdowns: a certificate issued for 30
        days shows 29 days left a second later."""
        return [{k: v for k, v in c.items() if k not in ("days_left", "crl_days_left")}
                for c in self.json("cert", "list")]

    def snapshot(self):
        """Everything a refusal must leave unchanged."""
        return (self.certs(), self.json("listener", "list"))


def port_of(ctl, name):
    return int(ctl.json("listener", "show", name)["address"].rsplit(":", 1)[1])


def scrape_metrics(mport):
    """GET /metrics: (the text, {series: int value})."""
    text = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % mport, timeout=10).read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            k, v = line.rsplit(" ", 1)
            # Counters and dates are integers; durations are seconds.
            values[k] = int(v) if v.lstrip("-").isdigit() else float(v)
    return text, values


@pytest.fixture
def gated(pki, spawn_kgated, tmp_path):
    """gated(listeners=[], state=None, args=()) -> Daemon with .ctl and .state."""
    def start(listeners=(), state=None, args=(), workers=2, config=None):
        state = state or str(tmp_path / "state")
        cfg = config or base_config(pki, list(listeners), workers=workers)
        d = spawn_kgated(cfg, args=["--state-dir", state, *args])
        d.state = state
        d.ctl = Ctl(os.path.join(state, "control.sock"))
        return d
    return start


def sha256_of_pem(path):
    der = ssl.PEM_cert_to_DER_cert(open(path).read())
    return hashlib.sha256(der).hexdigest()


def served_cert_sha256(port):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            return hashlib.sha256(s.getpeercert(binary_form=True)).hexdigest()


def issue(pki, tmp_path, name, kind="client"):
    """A fresh certificate from the session CA (for replace / CRL tests)."""
    out = str(tmp_path / name)
    subject = "/O=kgate test/CN=" + ("localhost" if kind == "server" else name)
    args = ["ca", "issue", "--dir", pki.ca_dir, "--type", kind, "--subject", subject,
            "--days", "30", "--out", out]
    if kind == "server":
        args += ["--san", "DNS:localhost,IP:127.0.0.1"]
    run([KGATECTL, *args])
    return out + ".pem", out + ".key"


class LoadLoop:
    """load_loop.py as a second process; stop() returns its summary."""

    def __init__(self, pki, port, tmp_path, name="load"):
        self.stop_file = str(tmp_path / (name + ".stop"))
        self.out = str(tmp_path / (name + ".json"))
        self.proc = subprocess.Popen(
            ["/usr/bin/python3", LOAD_LOOP, str(port), pki.ca, pki.cert("client"),
             pki.key("client"), self.stop_file, self.out, "20000", "120"])

    def wait_some(self, n=20):
        # The loop only reports at the end; give it a moment to run.
        time.sleep(0.3)

    def stop(self):
        open(self.stop_file, "w").close()
        self.proc.wait(timeout=60)
        with open(self.out) as f:
            return json.load(f)


# --------------------------------------------------------------------------
# status, lists, JSON output
# --------------------------------------------------------------------------

def test_status_and_lists_parse_as_json(pki, gated, http_backends):
    be = http_backends("a")
    d = gated([tls_listener(pki, [be])])
    st = d.ctl.json("status")
    assert st["pid"] == d.pid
    assert st["workers"] == 2
    assert st["listeners"] == 1 and st["certificates"] == 2
    assert st["kernel"]["io_uring"] is True
    assert "path_userspace-tls" in st["connections"]
    certs = d.ctl.json("cert", "list")
    assert sorted(c["name"] for c in certs) == ["clients", "web"]
    lst = d.ctl.json("listener", "list")
    assert [l["name"] for l in lst] == ["web"] and lst[0]["state"] == "running"
    show = d.ctl.json("listener", "show", "web")
    [m] = show["members"]
    assert (m["address"], m["weight"], m["state"], m["health"], m["active"]) == \
        (be.address, 1, "up", "not checked", 0)
    cert = d.ctl.json("cert", "show", "web")
    assert cert["used_by"] == ["web"]
    assert cert["sha256"].replace(":", "").lower() == sha256_of_pem(pki.cert("server"))
    assert "DNS:localhost" in cert["sans"]
    ca = d.ctl.json("cert", "show", "clients")
    assert ca["crl"]["revoked"] >= 1
    stats = d.ctl.json("stats")
    assert stats["listeners"][0]["name"] == "web"
    assert d.ctl.json("stats", "--listener", "web")["listeners"][0]["name"] == "web"
    # Text mode prints the same facts.
    assert "web" in d.ctl("listener", "list").stdout
    assert "clients" in d.ctl("cert", "list").stdout


def kernel_io_uring(flags):
    """(accepted, features) of an io_uring_setup(2) with flags, asked of
    the kernel directly (syscall 425 on every architecture kgate runs on)."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    params = (ctypes.c_uint32 * 30)()  # struct io_uring_params, 120 bytes
    params[2] = flags
    fd = libc.syscall(425, 8, ctypes.byref(params))
    if fd < 0:
        return False, None
    os.close(fd)
    return True, params[5]  # .features


def test_status_reports_io_uring_rings(pki, gated, http_backends):
    """Per worker: the ring's set-up flags (or the fallback) and the
    kernel's feature flags, in status (JSON and table) and in metrics."""
    single_issuer, defer_taskrun = 1 << 12, 1 << 13
    fast, _ = kernel_io_uring(single_issuer | defer_taskrun)
    _, features = kernel_io_uring(0)
    mport = dead_port()  # free now; kgated binds it
    d = gated([tls_listener(pki, [http_backends("a")])], workers=2,
              args=["--metrics", "127.0.0.1:%d" % mport])
    rings = d.ctl.json("status")["io_uring"]
    assert [r["worker"] for r in rings] == [0, 1]
    for r in rings:
        assert r["setup"] == ("SINGLE_ISSUER|DEFER_TASKRUN" if fast else "none"), r
        assert (r["fallback"] is None) == fast, r
        assert r["features_mask"] == features, r
        assert "SINGLE_MMAP" in r["features"].split(","), r
        assert "FAST_POLL" in r["features"].split(","), r
    table = d.ctl("status").stdout
    assert "IO_URING SETUP" in table and "IO_URING FEATURES" in table, table
    rows = [line for line in table.splitlines() if "SINGLE_MMAP" in line]
    assert len(rows) == 2, table
    text = scrape_metrics(mport)[0]
    info = [line for line in text.splitlines()
            if line.startswith("kgate_io_uring_ring_info{")]
    assert len(info) == 2, text
    for w, line in enumerate(info):
        assert line.endswith("} 1"), line
        assert 'worker="%d"' % w in line
        assert 'setup="%s"' % rings[w]["setup"] in line
        assert 'fallback="%s"' % ("false" if fast else "true") in line
        assert 'features_mask="0x%x"' % features in line
        assert 'features="%s"' % rings[w]["features"] in line


def test_state_dir_seeded_then_wins(pki, gated, http_backends, tmp_path):
    be = http_backends("a")
    d = gated([tls_listener(pki, [be])])
    assert d.events("state.loaded", source="config", reseed="false"), d.log()
    st = os.stat(os.path.join(d.state, "state.json"))
    assert stat.S_IMODE(st.st_mode) == 0o600
    sock = os.stat(os.path.join(d.state, "control.sock"))
    assert stat.S_IMODE(sock.st_mode) == 0o600
    keys = [f for f in os.listdir(os.path.join(d.state, "certs")) if f.endswith(".key")]
    assert keys
    for k in keys:
        assert stat.S_IMODE(os.stat(os.path.join(d.state, "certs", k)).st_mode) == 0o600
    d.ctl("listener", "stop", "web")
    d.terminate()
    # A different --config: the state directory still wins.
    d2 = gated([], state=d.state)
    assert d2.events("state.loaded", source="state", config_ignored="true"), d2.log()
    assert d2.ctl.json("listener", "list")[0]["state"] == "stopped"
    d2.terminate()
    # --reseed replaces the state with the file.
    be2 = http_backends("b")
    d3 = gated([tls_listener(pki, [be2], name="other")], state=d.state, args=["--reseed"])
    assert d3.events("state.loaded", source="config", reseed="true"), d3.log()
    assert [l["name"] for l in d3.ctl.json("listener", "list")] == ["other"]
    assert https_get(client_context(pki), d3.ports["other"]).strip() == "backend=b"


# --------------------------------------------------------------------------
# certificates
# --------------------------------------------------------------------------

def test_cert_upload_show_delete(pki, gated, tmp_path):
    d = gated([])
    name = "edge/web-1.example_*"
    d.ctl("cert", "upload", "--name", name, "--type", "server",
          "--cert", pki.cert("server"), "--key", pki.key("server"))
    d.ctl("cert", "upload", "--name", "ca2", "--type", "ca", "--cert", pki.ca,
          "--crl", pki.crl)
    names = [c["name"] for c in d.ctl.json("cert", "list")]
    assert name in names and "ca2" in names
    show = d.ctl.json("cert", "show", name)
    assert show["type"] == "server" and show["used_by"] == []
    assert "CN=localhost" in show["subject"]
    d.ctl("cert", "delete", name)
    assert name not in [c["name"] for c in d.ctl.json("cert", "list")]
    d.ctl.refused("cert", "show", name, code="not_found")
    d.ctl.refused("cert", "delete", name, code="not_found")


def _bad_pem(tmp_path):
    p = str(tmp_path / "bad.pem")
    with open(p, "w") as f:
        f.write("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n")
    return p


UPLOAD_REFUSALS = {
    # case: (args builder, code, text expected in the message)
    "malformed PEM": (lambda p, t: ["--name", "x", "--type", "ca", "--cert", _bad_pem(t)],
                      "invalid_argument", "certificate x"),
    "key mismatch": (lambda p, t: ["--name", "x", "--type", "server", "--cert", p.cert("server"),
                                   "--key", p.key("client")],
                     "invalid_argument", "does not match"),
    "empty name": (lambda p, t: ["--name", "", "--type", "ca", "--cert", p.ca],
                   "invalid_argument", "name"),
    "81 chars": (lambda p, t: ["--name", "a" * 81, "--type", "ca", "--cert", p.ca],
                 "invalid_argument", "1-80"),
    "space": (lambda p, t: ["--name", "a b", "--type", "ca", "--cert", p.ca],
              "invalid_argument", "a b"),
    "umlaut": (lambda p, t: ["--name", "\u00fc", "--type", "ca", "--cert", p.ca],
               "invalid_argument", "name"),
    "expired": (lambda p, t: ["--name", "x", "--type", "server", "--cert",
                              p.cert("server-expired"), "--key", p.key("server-expired")],
                "invalid_argument", "expired"),
    "non-CA as CA": (lambda p, t: ["--name", "x", "--type", "ca", "--cert", p.cert("server")],
                     "invalid_argument", "not a CA"),
    "duplicate": (lambda p, t: ["--name", "web", "--type", "ca", "--cert", p.ca],
                  "already_exists", "web"),
    "bad type": (lambda p, t: ["--name", "x", "--type", "client", "--cert", p.ca],
                 "invalid_argument", "type"),
    "server without key": (lambda p, t: ["--name", "x", "--type", "server", "--cert",
                                         p.cert("server")],
                           "invalid_argument", "key"),
    "key on a CA": (lambda p, t: ["--name", "x", "--type", "ca", "--cert", p.ca,
                                  "--key", p.key("server")],
                    "invalid_argument", "key"),
}


def test_cert_upload_refusals(pki, gated, http_backends, tmp_path):
    be = http_backends("a")
    d = gated([tls_listener(pki, [be])])
    before = d.ctl.snapshot()
    files_before = sorted(os.listdir(os.path.join(d.state, "certs")))
    for case, (build, code, text) in UPLOAD_REFUSALS.items():
        msg = d.ctl.refused("cert", "upload", *build(pki, tmp_path), code=code)
        assert text in msg, (case, msg)
        assert d.alive(), case
    assert d.ctl.snapshot() == before
    # Refused uploads leave no files behind.
    assert sorted(os.listdir(os.path.join(d.state, "certs"))) == files_before
    assert https_get(client_context(pki), port_of(d.ctl, "web")).strip() == "backend=a"


def test_cert_delete_in_use_refused(pki, gated, http_backends):
    d = gated([tls_listener(pki, [http_backends("a")])])
    before = d.ctl.snapshot()
    assert "web" in d.ctl.refused("cert", "delete", "web", code="in_use")
    assert "web" in d.ctl.refused("cert", "delete", "clients", code="in_use")
    d.ctl.refused("cert", "set-crl", "web", "--crl", pki.crl, code="invalid_argument")
    d.ctl.refused("cert", "replace", "web", "--cert", pki.cert("server"),
                  "--key", pki.key("client"), code="invalid_argument")
    assert d.ctl.snapshot() == before


# --------------------------------------------------------------------------
# listeners
# --------------------------------------------------------------------------

def create_args(name, backends, port=0, extra=(), cert="web"):
    args = ["listener", "create", "--name", name, "--protocol", "tls", "--port", str(port),
            "--bind", "127.0.0.1", "--cert", cert, "--ca", "clients",
            "--mutual-auth", "required"]
    for b in backends:
        args += ["--backend", b]
    return args + list(extra)


def refused_connect(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def test_listener_lifecycle(pki, gated, http_backends):
    a, b = http_backends("a", "b")
    d = gated([])
    ctx = client_context(pki)
    d.ctl(*create_args("web2", [a.address, b.address + ",weight=1"]))
    port = port_of(d.ctl, "web2")
    bodies = {https_get(ctx, port).strip() for _ in range(4)}
    assert bodies == {"backend=a", "backend=b"}
    d.ctl("listener", "stop", "web2")
    assert d.ctl.json("listener", "show", "web2")["state"] == "stopped"
    assert wait_until(lambda: refused_connect(port), 5)
    d.ctl("listener", "start", "web2")
    assert https_get(ctx, port).strip().startswith("backend=")
    d.ctl("listener", "update", "web2", "--idle-timeout-ms", "60000", "--scheduler", "wrr")
    show = d.ctl.json("listener", "show", "web2")
    assert show["idle_timeout_ms"] == 60000 and show["address"].endswith(":%d" % port)
    d.ctl("listener", "update", "web2", "--mutual-auth", "optional")
    assert https_get(client_context(pki, cert=None), port).strip().startswith("backend=")
    d.ctl("listener", "delete", "web2")
    assert d.ctl.json("listener", "list") == []
    assert wait_until(lambda: refused_connect(port), 5)
    assert d.events("listener.deleted", listener="web2"), d.log()


def test_tcp_listener_created_live(pki, gated, echo_backend):
    d = gated([])
    d.ctl("listener", "create", "--name", "plain", "--protocol", "tcp", "--port", "0",
          "--bind", "127.0.0.1", "--backend", echo_backend.address)
    show = d.ctl.json("listener", "show", "plain")
    assert show["protocol"] == "tcp" and show["certificate"] is None
    port = port_of(d.ctl, "plain")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"hello")
        s.shutdown(socket.SHUT_WR)
        got = b""
        while True:
            chunk = s.recv(100)
            if not chunk:
                break
            got += chunk
    assert got == b"hello"
    d.ctl("listener", "delete", "plain")


def test_health_checks_follow_live_changes(pki, gated, http_backends):
    a, b = http_backends("a", "b")
    hc = '{"type": "http", "path": "/", "expected_status": "2xx", "interval_ms": 200, ' \
         '"timeout_ms": 1000, "healthy_threshold": 1, "unhealthy_threshold": 1, ' \
         '"unknown_is_up": false}'
    d = gated([])
    d.ctl(*create_args("web", [a.address], extra=["--health-check", hc]))

    def health():
        return {m["address"]: m["health"]
                for m in d.ctl.json("listener", "show", "web")["members"]}
    assert wait_until(lambda: health() == {a.address: "healthy"}, 10), health()
    # A member added live is checked too, and the known one stays healthy.
    d.ctl("backend", "add", "web", b.address)
    assert health()[a.address] == "healthy"
    assert wait_until(lambda: health() == {a.address: "healthy", b.address: "healthy"},
                      10), health()
    ctx = client_context(pki)
    port = port_of(d.ctl, "web")
    assert {https_get(ctx, port).strip() for _ in range(4)} == {"backend=a", "backend=b"}
    # A member that goes away leaves the rotation.
    b.close()
    assert wait_until(lambda: health()[b.address] == "unhealthy", 10), health()
    assert {https_get(ctx, port).strip() for _ in range(3)} == {"backend=a"}
    d.ctl("listener", "update", "web", "--health-check", "none")
    assert health() == {a.address: "not checked", b.address: "not checked"}


def test_listener_refusals(pki, gated, http_backends):
    a = http_backends("a")
    d = gated([tls_listener(pki, [a])])
    web_port = port_of(d.ctl, "web")
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    busy_port = busy.getsockname()[1]
    before = d.ctl.snapshot()
    try:
        for verb in ("show", "stop", "start", "delete"):
            d.ctl.refused("listener", verb, "nope", code="not_found")
        d.ctl.refused("listener", "update", "nope", "--max-connections", "5", code="not_found")
        msg = d.ctl.refused(*create_args("x", [a.address], port=busy_port),
                            code="address_in_use")
        assert str(busy_port) in msg and "in use" in msg
        d.ctl.refused(*create_args("x", [a.address], port=web_port), code="invalid_argument")
        d.ctl.refused(*create_args("web", [a.address]), code="already_exists")
        d.ctl.refused(*create_args("a b", [a.address]), code="invalid_argument")
        d.ctl.refused(*create_args("x", ["localhost:80"]), code="invalid_argument")
        msg = d.ctl.refused(*create_args("x", [a.address], cert="nosuch"),
                            code="invalid_argument")
        assert "nosuch" in msg
        d.ctl.refused("listener", "create", "--name", "t", "--protocol", "tcp", "--port", "0",
                      "--bind", "127.0.0.1", "--cert", "web", "--backend", a.address,
                      code="invalid_argument")
        d.ctl.refused("listener", "create", "--name", "t", "--protocol", "tls", "--port", "0",
                      "--bind", "127.0.0.1", "--cert", "web", "--forwarding", "sockmap",
                      "--backend", a.address, code="invalid_argument")
        d.ctl.refused("listener", "update", "web", "--cert", "clients", code="invalid_argument")
        d.ctl.refused("listener", "update", "web", "--max-connections", "0",
                      code="invalid_argument")
    finally:
        busy.close()
    assert d.ctl.snapshot() == before
    assert https_get(client_context(pki), web_port).strip() == "backend=a"


# --------------------------------------------------------------------------
# backends
# --------------------------------------------------------------------------

def test_backend_add_remove_set_weight(pki, gated, http_backends):
    a, b = http_backends("a", "b")
    d = gated([tls_listener(pki, [a])], workers=1)
    ctx = client_context(pki)
    port = port_of(d.ctl, "web")
    d.ctl("backend", "add", "web", b.address, "--weight", "3")
    members = d.ctl.json("listener", "show", "web")["members"]
    assert [(m["address"], m["weight"]) for m in members] == [(a.address, 1), (b.address, 3)]
    got = [https_get(ctx, port).strip() for _ in range(8)]
    assert got.count("backend=b") == 6 and got.count("backend=a") == 2
    d.ctl("backend", "set-weight", "web", b.address, "1")
    got = [https_get(ctx, port).strip() for _ in range(4)]
    assert got.count("backend=b") == 2
    d.ctl("backend", "remove", "web", a.address)
    assert {https_get(ctx, port).strip() for _ in range(3)} == {"backend=b"}
    before = d.ctl.snapshot()
    d.ctl.refused("backend", "remove", "web", b.address, code="invalid_argument")
    d.ctl.refused("backend", "remove", "web", a.address, code="not_found")
    d.ctl.refused("backend", "add", "web", b.address, code="already_exists")
    d.ctl.refused("backend", "add", "nope", a.address, code="not_found")
    d.ctl.refused("backend", "add", "web", "not-an-address", code="invalid_argument")
    d.ctl.refused("backend", "set-weight", "web", b.address, "0", code="invalid_argument")
    d.ctl.refused("backend", "set-weight", "web", b.address, "257", code="invalid_argument")
    assert d.ctl.snapshot() == before


def test_backend_drain_and_enable_persist(pki, gated, http_backends):
    a, b = http_backends("a", "b")
    d = gated([tls_listener(pki, [a, b])], workers=1)
    ctx = client_context(pki)
    port = port_of(d.ctl, "web")
    d.ctl("backend", "drain", "web", b.address)
    members = {m["address"]: m for m in d.ctl.json("listener", "show", "web")["members"]}
    assert members[b.address]["drained"] is True and members[b.address]["state"] == "down"
    assert {https_get(ctx, port).strip() for _ in range(4)} == {"backend=a"}
    assert d.events("backend.drained", backend=b.address), d.log()
    d.ctl.refused("backend", "drain", "web", "127.0.0.1:1", code="not_found")
    d.kill9()
    d2 = gated([], state=d.state, workers=1)
    members = {m["address"]: m for m in d2.ctl.json("listener", "show", "web")["members"]}
    assert members[b.address]["drained"] is True
    assert {https_get(ctx, port).strip() for _ in range(4)} == {"backend=a"}
    d2.ctl("backend", "enable", "web", b.address)
    assert {https_get(ctx, port).strip() for _ in range(4)} == {"backend=a", "backend=b"}


def echo_session(pki, port):
    """A TLS connection through kgated that reached the echo backend."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    s = client_context(pki).wrap_socket(raw, server_hostname="localhost")
    s.sendall(b"ping")
    assert s.recv(100) == b"ping"
    return s


def closed_by_kgated(s):
    """True when the connection ends (EOF or reset) within the socket's
    timeout; the echo backend sends nothing unasked, so data means open."""
    try:
        return s.recv(100) == b""
    except (ssl.SSLError, OSError):
        return True
    finally:
        s.close()


def test_backend_disable_cuts_connections_and_persists(pki, gated, echo_backend,
                                                       http_backends):
    """Like HAProxy's maintenance state: out of rotation at once and open
    connections closed (unlike drain), kept across kill -9, undone by
    enable; also for connections made before the snapshot was rebuilt."""
    a = http_backends("a")
    e = echo_backend.address
    d = gated([tls_listener(pki, [e])], workers=1)
    port = port_of(d.ctl, "web")
    ctx = client_context(pki)
    old = echo_session(pki, port)          # on the snapshot before the add
    d.ctl("backend", "add", "web", a.address)
    d.ctl("backend", "disable", "web", e)
    assert closed_by_kgated(old)
    members = {m["address"]: m for m in d.ctl.json("listener", "show", "web")["members"]}
    assert members[e]["state"] == "disabled" and members[e]["disabled"] is True
    assert members[e]["drained"] is False
    assert members[a.address]["state"] == "up"
    assert "disabled" in d.ctl("listener", "show", "web").stdout
    assert {https_get(ctx, port).strip() for _ in range(4)} == {"backend=a"}
    assert d.count_event("backend.disabled", backend=e) == 1, d.log()
    assert d.ctl.json("stats")["connections"]["cut_disabled"] == 1
    before = d.ctl.snapshot()
    d.ctl.refused("backend", "disable", "web", "127.0.0.1:1", code="not_found")
    d.ctl.refused("backend", "disable", "nope", e, code="not_found")
    d.ctl.refused("backend", "disable", "web", "not-an-address", code="invalid_argument")
    assert d.ctl.snapshot() == before
    doc = json.load(open(os.path.join(d.state, "state.json")))
    assert doc["listeners"][0]["backends"][0] == {"address": e, "disabled": True}

    d.kill9()
    d2 = gated([], state=d.state, workers=1)
    assert d2.events("backend.disabled", backend=e), d2.log()
    members = {m["address"]: m for m in d2.ctl.json("listener", "show", "web")["members"]}
    assert members[e]["state"] == "disabled"
    assert {https_get(ctx, port).strip() for _ in range(4)} == {"backend=a"}
    # drain replaces disable (one state at a time); enable clears either.
    d2.ctl("backend", "drain", "web", e)
    doc = json.load(open(os.path.join(d2.state, "state.json")))
    assert doc["listeners"][0]["backends"][0] == {"address": e, "drained": True}
    d2.ctl("backend", "enable", "web", e)
    doc = json.load(open(os.path.join(d2.state, "state.json")))
    assert doc["listeners"][0]["backends"][0] == {"address": e}
    assert d2.events("backend.drain_ended", backend=e), d2.log()
    # A connection on the current snapshot: only e in rotation while a is
    # disabled, then a back and e disabled.
    d2.ctl("backend", "disable", "web", a.address)
    cur = echo_session(pki, port)
    d2.ctl("backend", "enable", "web", a.address)
    assert d2.events("backend.disable_ended", backend=a.address), d2.log()
    d2.ctl("backend", "disable", "web", e)
    assert closed_by_kgated(cur)
    # One line at start (from the document), one for this change.
    assert d2.count_event("backend.disabled", backend=e) == 2, d2.log()
    assert d2.ctl.json("stats")["connections"]["cut_disabled"] == 1
    d2.ctl("backend", "enable", "web", e)
    members = d2.ctl.json("listener", "show", "web")["members"]
    assert [(m["state"], m["disabled"], m["drained"]) for m in members] == \
        [("up", False, False)] * 2


def test_listener_show_reports_health_like_the_console(pki, gated, http_backends):
    """Issue 6: per member normal/abnormal, the last check's reason and the
    time in that state, in JSON and in the table."""
    from conftest import dead_port, wait_until
    a = http_backends("a")
    dead = "127.0.0.1:%d" % dead_port()
    check = {"type": "tcp", "interval_ms": 100, "timeout_ms": 500,
             "healthy_threshold": 1, "unhealthy_threshold": 1}
    started = time.monotonic()
    d = gated([tls_listener(pki, [a, dead], health_check=check)], workers=1)

    def members():
        return {m["address"]: m for m in d.ctl.json("listener", "show", "web")["members"]}
    assert wait_until(lambda: members()[dead]["status"] == "abnormal"
                      and members()[a.address]["status"] == "normal", 10), members()
    m = members()
    assert m[dead]["state"] == "down" and m[a.address]["state"] == "up"
    assert "refused" in m[dead]["last_check"], m[dead]
    # Whole seconds since the member went down, which was after the start.
    down_for = m[dead]["in_state_s"]
    assert isinstance(down_for, int) and 0 <= down_for <= time.monotonic() - started, m[dead]
    # It counts on while the member stays down.
    time.sleep(1.0)
    assert members()[dead]["in_state_s"] >= down_for + 1, members()[dead]
    table = d.ctl("listener", "show", "web").stdout
    assert "HEALTH" in table and "LAST CHECK" in table, table
    rows = {line.split()[0]: line for line in table.splitlines() if line.startswith("127.0.0.1:")}
    assert "abnormal" in rows[dead] and "normal" in rows[a.address], table


def test_concurrent_clients_are_serialized(pki, gated, http_backends):
    a = http_backends("a")
    d = gated([tls_listener(pki, [a])])
    ports = [dead_port() for _ in range(8)]
    procs = [subprocess.Popen([KGATECTL, "--socket", d.ctl.sock, "backend", "add", "web",
                               "127.0.0.1:%d" % p], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE) for p in ports]
    assert [p.wait(timeout=60) for p in procs] == [0] * 8
    members = {m["address"] for m in d.ctl.json("listener", "show", "web")["members"]}
    assert members == {a.address} | {"127.0.0.1:%d" % p for p in ports}


# --------------------------------------------------------------------------
# live changes under load
# --------------------------------------------------------------------------

def test_live_changes_under_load(pki, gated, http_backends, tmp_path):
    a, b, c = http_backends("a", "b", "c")
    d = gated([tls_listener(pki, [a])])
    port = port_of(d.ctl, "web")
    ctx = client_context(pki)
    loop = LoadLoop(pki, port, tmp_path)
    try:
        loop.wait_some()
        # A second listener comes and goes; the first keeps serving.
        d.ctl(*create_args("second", [c.address]))
        port2 = port_of(d.ctl, "second")
        assert https_get(ctx, port2).strip() == "backend=c"
        d.ctl("listener", "delete", "second")
        assert wait_until(lambda: refused_connect(port2), 5)
        # A backend joins.
        d.ctl("backend", "add", "web", b.address)
        assert wait_until(lambda: https_get(ctx, port).strip() == "backend=b", 5)
        # The server certificate is replaced: new handshakes present it.
        cert2, key2 = issue(pki, tmp_path, "server2", kind="server")
        old = served_cert_sha256(port)
        d.ctl("cert", "replace", "web", "--cert", cert2, "--key", key2)
        assert served_cert_sha256(port) == sha256_of_pem(cert2) != old
        # The CA with its CRL is replaced in place (same CA, fresh CRL).
        d.ctl("cert", "replace", "clients", "--cert", pki.ca, "--crl", pki.crl)
        d.ctl("backend", "set-weight", "web", b.address, "2")
        # Draining b: no new connections go there, nothing fails.
        d.ctl("backend", "drain", "web", b.address)
        assert {https_get(ctx, port).strip() for _ in range(4)} == {"backend=a"}
        time.sleep(0.3)
    finally:
        res = loop.stop()
    assert res["failed"] == 0, res["errors"]
    assert res["ok"] > 0
    assert set(res["backends"]) <= {"backend=a", "backend=b"}
    assert "backend=b" in res["backends"]


def test_crl_update_rejects_revoked_client_at_next_handshake(pki, gated, echo_backend,
                                                           tmp_path):
    d = gated([tls_listener(pki, [echo_backend])])
    port = port_of(d.ctl, "web")
    cert, key = issue(pki, tmp_path, "late")
    late = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    late.load_verify_locations(pki.ca)
    late.load_cert_chain(cert, key)
    # An established connection of the soon-revoked client.
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    held = late.wrap_socket(raw, server_hostname="localhost")
    held.sendall(b"ping1")
    assert held.recv(100) == b"ping1"
    run([KGATECTL, "ca", "revoke", "--dir", pki.ca_dir, "--cert", cert])
    crl = str(tmp_path / "new.crl")
    run([KGATECTL, "ca", "crl", "--dir", pki.ca_dir, "--out", crl])
    d.ctl("cert", "set-crl", "clients", "--crl", crl)
    assert d.ctl.json("cert", "show", "clients")["crl"]["revoked"] >= 2
    # The next handshake of the revoked client fails...
    with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as r2:
            with late.wrap_socket(r2, server_hostname="localhost") as s2:
                s2.sendall(b"x")
                if not s2.recv(10):
                    raise ssl.SSLError("closed")
    # ...while its established connection and other clients carry on.
    held.sendall(b"ping2")
    assert held.recv(100) == b"ping2"
    held.close()
    ok = client_context(pki).wrap_socket(socket.create_connection(("127.0.0.1", port)),
                                         server_hostname="localhost")
    ok.sendall(b"hi")
    assert ok.recv(10) == b"hi"
    ok.close()


# --------------------------------------------------------------------------
# persistence
# --------------------------------------------------------------------------

def test_persistence_across_kill9(pki, gated, http_backends, tmp_path):
    a, b = http_backends("a", "b")
    d = gated([tls_listener(pki, [a])])
    d.ctl("cert", "upload", "--name", "ca/extra", "--type", "ca", "--cert", pki.ca)
    d.ctl(*create_args("second", [b.address]))
    d.ctl("backend", "add", "web", b.address, "--weight", "2")
    d.ctl("listener", "update", "web", "--idle-timeout-ms", "12345")
    d.ctl("listener", "stop", "second")
    certs, listeners = d.ctl.snapshot()
    shows = {n: d.ctl.json("listener", "show", n) for n in ("web", "second")}
    d.kill9()
    d2 = gated([], state=d.state)
    assert d2.events("state.loaded", source="state"), d2.log()
    certs2, listeners2 = d2.ctl.snapshot()
    assert certs2 == certs
    strip = lambda ls: [{k: v for k, v in l.items() if k != "active"} for l in ls]
    assert strip(listeners2) == strip(listeners)
    for n, before in shows.items():
        after = d2.ctl.json("listener", "show", n)
        for key in ("address", "members", "idle_timeout_ms", "state", "certificate", "ca"):
            assert after[key] == before[key], (n, key)
    ctx = client_context(pki)
    port = port_of(d2.ctl, "web")
    assert {https_get(ctx, port).strip() for _ in range(3)} == {"backend=a", "backend=b"}
    d2.ctl("listener", "start", "second")
    assert https_get(ctx, port_of(d2.ctl, "second")).strip() == "backend=b"


def test_certificate_expired_since_upload_fails_only_its_listener(pki, gated,
                                                                   http_backends):
    """A stored server certificate that expired since it was uploaded: after
    a restart its listener is "failed" with the reason, every other one runs;
    `listener start` says why it cannot; --check calls it an error; a
    replaced certificate starts it."""
    from conftest import _openssl_ca_sign
    a = http_backends("a")
    d = gated([tls_listener(pki, [a])], workers=1)
    # openssl ca sets the end to the second; a few seconds are enough to
    # upload it while it is still valid.
    not_after = int(time.time()) + 5
    pem = _openssl_ca_sign(pki, os.path.join(pki.root, "openssl-db"), "short-lived",
                           "localhost", "v3_server",
                           end=time.strftime("%Y%m%d%H%M%SZ", time.gmtime(not_after)))
    d.ctl("cert", "upload", "--name", "short", "--type", "server", "--cert", pem,
          "--key", pki.key("short-lived"))
    d.ctl(*create_args("short", [a.address], cert="short"))
    short_port, web_port = port_of(d.ctl, "short"), port_of(d.ctl, "web")
    while time.time() < not_after + 1.5:   # until the certificate has expired
        time.sleep(0.25)
    d.kill9()

    d2 = gated([], state=d.state, workers=1)
    log = d2.log()
    assert [e for e in d2.events("cert.expired", cert="short", field="cert")
            if e["reason"].startswith("the certificate expired on")], log
    assert [e for e in d2.events("listener.start_failed", listener="short")
            if e["reason"].startswith("certificate short: the certificate expired on")], log
    listed = {l["name"]: l for l in d2.ctl.json("listener", "list")}
    assert listed["web"]["state"] == "running" and listed["web"]["reason"] is None
    assert listed["short"]["state"] == "failed"
    assert "certificate short: the certificate expired on" in listed["short"]["reason"]
    show = d2.ctl.json("listener", "show", "short")
    assert show["state"] == "failed" and show["reason"] == listed["short"]["reason"]
    row = [l for l in d2.ctl("listener", "list").stdout.splitlines() if l.startswith("short")]
    assert "failed" in row[0] and "expired" in row[0], row
    ctx = client_context(pki)
    assert https_get(ctx, web_port).strip() == "backend=a"
    assert refused_connect(short_port)
    # Trying again says why; unrelated changes still go through.
    msg = d2.ctl.refused("listener", "start", "short", code="invalid_argument")
    assert "listener short cannot start: certificate short: the certificate expired on" in msg
    d2.ctl("listener", "update", "web", "--idle-timeout-ms", "54321")
    # A CRL update of the CA both listeners use, and a change of the failed
    # listener itself, are taken; it stays failed rather than blocking them.
    d2.ctl("cert", "set-crl", "clients", "--crl", pki.crl)
    d2.ctl("listener", "update", "short", "--idle-timeout-ms", "12345")
    show = d2.ctl.json("listener", "show", "short")
    assert (show["state"], show["idle_timeout_ms"]) == ("failed", 12345), show
    assert d2.count_event("listener.start_failed", listener="short") == 1, d2.log()
    assert https_get(ctx, web_port).strip() == "backend=a"
    # --check on the same document reports the expired certificate as an error.
    r = run([KGATED, "--check", "--config", os.path.join(d.state, "state.json")],
            check=False)
    assert r.returncode == 1 and "certificates.short.cert: the certificate expired on" \
        in r.stderr, r.stderr
    # A fresh certificate brings the listener up.
    d2.ctl("cert", "replace", "short", "--cert", pki.cert("server"), "--key",
           pki.key("server"))
    listed = {l["name"]: l for l in d2.ctl.json("listener", "list")}
    assert listed["short"]["state"] == "running" and listed["short"]["reason"] is None
    assert https_get(ctx, port_of(d2.ctl, "short")).strip() == "backend=a"


# --------------------------------------------------------------------------
# the control socket itself
# --------------------------------------------------------------------------

def raw_request(sock_path, data, shut=True, timeout=30):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(timeout)
    s.connect(sock_path)
    try:
        s.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        pass
    if shut:
        s.shutdown(socket.SHUT_WR)
    out = b""
    while True:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        out += chunk
    s.close()
    return json.loads(out)


BAD_REQUESTS = {
    "garbage": (lambda: b"\x00\xffhello", "bad_request"),
    "truncated": (lambda: b'{"version": 1, "op": "listener.li', "bad_request"),
    "not an object": (lambda: b"[1, 2]", "bad_request"),
    "trailing data": (lambda: b'{"version": 1, "op": "status"} {}', "bad_request"),
    "no version": (lambda: b'{"op": "status"}', "bad_request"),
    "wrong version": (lambda: b'{"version": 99, "op": "status"}', "unsupported_version"),
    "unknown op": (lambda: b'{"version": 1, "op": "listener.explode"}', "unknown_op"),
    "args not object": (lambda: b'{"version": 1, "op": "status", "args": 3}', "bad_request"),
    "40 MB": (lambda: b"{" + b" " * (40 << 20), "too_large"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_requests_are_clean_errors(pki, gated, http_backends, case):
    make, code = BAD_REQUESTS[case]
    data = make()
    d = gated([tls_listener(pki, [http_backends("a")])])
    before = d.ctl.snapshot()
    reply = raw_request(d.ctl.sock, data)
    assert reply["ok"] is False and reply["version"] == 1
    assert reply["error"]["code"] == code, reply
    assert reply["error"]["message"]
    assert d.alive()
    assert d.ctl.snapshot() == before
    assert d.ctl.json("status")["pid"] == d.pid


def test_incomplete_request_times_out_cleanly(pki, gated):
    d = gated([])
    reply = raw_request(d.ctl.sock, b'{"version": 1', shut=False)
    assert reply["error"]["code"] == "timeout"
    assert d.ctl.json("status")["pid"] == d.pid


def test_metrics_endpoint(pki, gated, http_backends):
    mport = dead_port()  # free now; kgated binds it
    backend = http_backends("a")
    d = gated([tls_listener(pki, [backend])],
              args=["--metrics", "127.0.0.1:%d" % mport])
    port = port_of(d.ctl, "web")
    https_get(client_context(pki), port)
    member = 'listener="web",backend="%s"' % backend.address
    active = "kgate_backend_connections_active{%s}" % member

    def active_now():
        return scrape_metrics(mport)[1][active]
    # The request is over once the client has read the response (the
    # backend closes); kgated may take a moment more to close its side.
    assert wait_until(lambda: active_now() == 0, 5), active_now()
    with client_context(pki).wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10),
                                         server_hostname="localhost"):
        assert wait_until(lambda: active_now() == 1, 5), active_now()
    assert wait_until(lambda: active_now() == 0, 5), active_now()
    text, values = scrape_metrics(mport)
    assert values["kgate_connections_total"] >= 1
    assert values["kgate_handshakes_total"] >= 1
    assert values['kgate_listener_handshakes_total{listener="web",result="ok"}'] >= 1
    assert values['kgate_handshake_failures_by_reason_total{reason="revoked"}'] == 0
    assert d.ctl.json("stats")["handshakes"]["ok"] >= 1
    assert d.ctl.json("status")["metrics"] == "127.0.0.1:%d" % mport
    assert values["kgate_backend_in_rotation{%s}" % member] == 1
    assert values['kgate_backend_health_checks_total{%s,result="ok"}' % member] == 0
    # No active checks on this listener: no health gauge for its member.
    assert "kgate_backend_healthy{%s}" % member not in values
    # Every family served is documented in kgated(8) METRICS, and every
    # documented family is served (the kgate_store_ ones only with --store:
    # test_store.py checks those).
    served = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}
    man = open(os.path.join(REPO, "doc", "kgated.8.scd")).read()
    section = man[man.index("\n# METRICS"):man.index("\n# EXIT STATUS")]
    documented = {f for f in re.findall(r"^\*(kgate_[a-z0-9_]+)\*", section, re.M)
                  if not f.startswith("kgate_store_")}
    assert served == documented, (served - documented, documented - served)
    # Prometheus' own linter: naming, _total counters, HELP/TYPE for each.
    promtool = shutil.which("promtool")
    if promtool:
        res = subprocess.run([promtool, "check", "metrics"], input=text,
                             capture_output=True, text=True, timeout=30)
        assert res.returncode == 0, res.stdout + res.stderr
    else:
        assert os.environ.get("CI") != "true", "promtool missing in CI (tests/install-deps.sh test)"


def counter_table():
    """kgated's worker counters, one dict per row (kgated --list-counters)."""
    out = run([KGATED, "--list-counters"]).stdout
    rows = [dict(zip(("group", "key", "family", "labels", "log_key"), line.split("\t")))
            for line in out.splitlines()]
    assert len(rows) >= 30 and all(len(r) == 5 for r in rows), out
    return rows


def test_every_counter_reaches_stats_metrics_log_and_man(pki, gated, http_backends):
    """The counter table (dataplane/counters.h) generates the stats JSON,
    the Prometheus text and the worker.stopped event; the man page is
    written by hand, so it is checked here against the same table."""
    mport = dead_port()
    d = gated([tls_listener(pki, [http_backends("a")])], workers=1,
              args=["--metrics", "127.0.0.1:%d" % mport])
    https_get(client_context(pki), port_of(d.ctl, "web"))
    rows = counter_table()
    stats = d.ctl.json("stats")
    text = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % mport, timeout=10).read().decode()
    samples = {line.rsplit(" ", 1)[0] for line in text.splitlines()
               if line and not line.startswith("#")}
    man = open(os.path.join(REPO, "doc", "kgated.8.scd")).read()
    section = man[man.index("\n# METRICS"):man.index("\n# EXIT STATUS")]
    stopped_doc = man[man.index("*worker.stopped* info:"):]
    stopped_doc = stopped_doc[:stopped_doc.index("\n\n")]
    for r in rows:
        assert isinstance(stats[r["group"]][r["key"]], int), r
        sample = r["family"] + ("{%s}" % r["labels"] if r["labels"] else "")
        assert sample in samples, r
        assert re.search(r"^\*%s\*" % re.escape(r["family"]), section, re.M), r
        assert r["log_key"] in stopped_doc, r
    # One request through: the rows that must have counted it did.
    assert stats["connections"]["total"] == 1 and stats["handshakes"]["ok"] == 1
    d.terminate()
    stopped = d.events("worker.stopped")
    assert len(stopped) == 1
    for r in rows:
        assert r["log_key"] in stopped[0], r
    assert int(stopped[0]["accepted"]) == 1 and int(stopped[0]["closed"]) == 1


def test_handshake_failures_counted_by_reason(pki, gated, http_backends):
    d = gated([tls_listener(pki, [http_backends("a")])])
    port = port_of(d.ctl, "web")
    cases = {None: "no_cert", "revoked": "revoked", "expired": "expired",
             "otherca-client": "unknown_ca", "serveronly": "bad_eku"}
    for cert in cases:
        assert curl(pki, port, cert=cert).returncode != 0, cert
    want = {reason: 1 for reason in cases.values()}
    want["protocol"] = 0

    def reasons():
        return d.ctl.json("stats", "--listener", "web")["listeners"][0][
            "handshake_failed_by_reason"]
    wait_until(lambda: reasons() == {**reasons(), **want}, 5)
    got = reasons()
    assert {k: got[k] for k in want} == want
    assert d.ctl.json("stats")["handshakes"]["failed_by_reason"]["revoked"] == 1
    assert curl(pki, port).returncode == 0


def test_control_group_members_only(pki, gated, tmp_path):
    import grp
    import shutil
    import tempfile
    # A folder others may traverse (the state dir itself is 0700).
    pub = tempfile.mkdtemp(prefix="kgate-ctl-")
    try:
        os.chmod(pub, 0o755)
        sock = os.path.join(pub, "ctl.sock")
        d = gated([], args=["--control", sock, "--control-group", "nogroup"])
        st = os.stat(sock)
        assert stat.S_IMODE(st.st_mode) == 0o660
        assert st.st_gid == grp.getgrnam("nogroup").gr_gid
        as_member = ["setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups",
                     KGATECTL, "--socket", sock, "-o", "json", "status"]
        assert json.loads(run(as_member).stdout)["pid"] == d.pid
        as_other = ["setpriv", "--reuid", "nobody", "--regid", "daemon", "--clear-groups",
                    KGATECTL, "--socket", sock, "status"]
        r = run(as_other, check=False)
        assert r.returncode != 0 and "Permission denied" in r.stderr, r.stderr
        assert d.ctl.__class__(sock).json("status")["pid"] == d.pid
    finally:
        shutil.rmtree(pub)
