"""Security properties of a running kgated (issue 9):

- the control socket checks its peer's credentials itself, so a socket
  file whose mode was widened by mistake still refuses other users;
- private keys in the state folder are 0600 and never appear in the log,
  in `cert list/show` (table or JSON) or in state.json;
- a client certificate that expires while its connection is open: the
  connection is kept (as HAProxy and NGINX do; a certificate is checked at
  the handshake), and its next handshake is refused as expired;
- a CRL whose nextUpdate passes while kgated runs: every new client is
  refused (fail closed, reason "expired": a stale CRL cannot say who was
  revoked since), open connections stay, and a fresh CRL (cert set-crl)
  lets clients in again. An expired CRL is refused at upload and, stored,
  keeps its listeners from starting (test_control).
"""
import grp
import json
import os
import pwd
import shutil
import socket
import ssl
import stat
import tempfile
import time

import pytest

from conftest import (KGATECTL, _openssl_ca_sign, base_config, client_context, echo_exchange,
                      https_get, run, tls_listener, wait_until)
from test_control import Ctl, gated, port_of  # noqa: F401 (gated is a fixture)

# --------------------------------------------------------------------------
# control socket: peer credentials
# --------------------------------------------------------------------------


@pytest.fixture
def public_dir():
    """A folder other users may traverse (a state folder is 0700)."""
    path = tempfile.mkdtemp(prefix="kgate-sec-")
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path)


def as_user(user, group, *args):
    return run(["setpriv", "--reuid", user, "--regid", group, "--clear-groups", KGATECTL,
                *args], check=False)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as other users")
def test_control_socket_refuses_other_uid_even_with_open_mode(pki, gated, public_dir):
    sock = os.path.join(public_dir, "ctl.sock")
    d = gated([], args=["--control", sock])
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
    # A mode widened by mistake: the daemon still checks SO_PEERCRED.
    os.chmod(sock, 0o666)
    nobody = pwd.getpwnam("nobody").pw_uid
    r = as_user("nobody", "nogroup", "--socket", sock, "listener", "list")
    assert r.returncode != 0
    assert "[permission_denied]" in r.stderr and "uid %d" % nobody in r.stderr, r.stderr
    refused = d.wait_event("control.peer_refused")
    assert refused and "uid %d" % nobody in refused[0]["peer"], refused
    # Root (and the daemon's own user) still get in; nothing changed.
    assert Ctl(sock).json("status")["pid"] == d.pid
    assert Ctl(sock).json("listener", "list") == []


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as other users")
def test_control_group_checked_by_peer_gid(pki, gated, public_dir):
    sock = os.path.join(public_dir, "ctl.sock")
    d = gated([], args=["--control", sock, "--control-group", "nogroup"])
    os.chmod(sock, 0o666)
    assert json.loads(as_user("nobody", "nogroup", "--socket", sock, "-o", "json",
                              "status").stdout)["pid"] == d.pid
    r = as_user("nobody", "daemon", "--socket", sock, "status")
    assert r.returncode != 0 and "[permission_denied]" in r.stderr, r.stderr
    assert grp.getgrnam("nogroup").gr_gid != grp.getgrnam("daemon").gr_gid


# --------------------------------------------------------------------------
# private keys
# --------------------------------------------------------------------------

def key_lines(path):
    """Base64 lines of a PEM file (what would show if it leaked)."""
    return [l for l in open(path).read().splitlines()
            if l and not l.startswith("-----") and len(l) >= 24]


def test_private_keys_0600_and_never_shown(pki, spawn_kgated, http_backends, tmp_path):
    a = http_backends("a")
    state = str(tmp_path / "state")
    d = spawn_kgated(base_config(pki, [tls_listener(pki, [a])], log_level="debug"),
                     args=["--state-dir", state])
    ctl = Ctl(os.path.join(state, "control.sock"))
    # A second server key arrives through the control socket.
    ctl("cert", "upload", "--name", "api", "--type", "server", "--cert", pki.cert("server"),
        "--key", pki.key("server"))
    ctl("cert", "replace", "web", "--cert", pki.cert("server"), "--key", pki.key("server"))
    assert https_get(client_context(pki), port_of(ctl, "web")) == "backend=a\n"

    assert stat.S_IMODE(os.stat(state).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(os.path.join(state, "certs")).st_mode) == 0o700
    keys = [f for f in os.listdir(os.path.join(state, "certs")) if f.endswith(".key")]
    assert len(keys) == 2, keys  # web's and api's, nothing left of the replaced one
    for f in keys:
        st = os.stat(os.path.join(state, "certs", f))
        assert stat.S_IMODE(st.st_mode) == 0o600, (f, oct(st.st_mode))
        with open(os.path.join(state, "certs", f)) as fh:
            assert "PRIVATE KEY" in fh.read()

    secret = key_lines(pki.key("server"))
    assert secret
    outputs = {
        "cert list": ctl("cert", "list").stdout,
        "cert list json": ctl("-o", "json", "cert", "list").stdout,
        "cert show": ctl("cert", "show", "web").stdout + ctl("cert", "show", "api").stdout,
        "cert show json": ctl("-o", "json", "cert", "show", "web").stdout,
        "listener show": ctl("-o", "json", "listener", "show", "web").stdout,
        "status": ctl("-o", "json", "status").stdout,
        "state.json": open(os.path.join(state, "state.json")).read(),
    }
    # A refused upload echoes no key either (a key that does not match).
    r = ctl("cert", "upload", "--name", "bad", "--type", "server", "--cert",
            pki.cert("server"), "--key", pki.key("client"), check=False)
    assert r.returncode != 0
    outputs["refusal"] = r.stdout + r.stderr
    assert d.terminate() == 0
    outputs["log"] = d.log()
    for where, text in outputs.items():
        assert "PRIVATE KEY" not in text, where
        leaked = [l for l in secret + key_lines(pki.key("client")) if l in text]
        assert not leaked, "%s shows key material: %s" % (where, leaked[:2])
    assert "BEGIN" not in outputs["state.json"]  # the document names files only


# --------------------------------------------------------------------------
# certificates and CRLs expiring while kgated runs
# --------------------------------------------------------------------------

def until(epoch):
    while time.time() < epoch:
        time.sleep(0.1)


def stamp(epoch):
    return time.strftime("%Y%m%d%H%M%SZ", time.gmtime(epoch))


def tls_conn(ctx, port):
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    return ctx.wrap_socket(raw, server_hostname="localhost")


echo = echo_exchange


def handshake_refused(ctx, port):
    try:
        with tls_conn(ctx, port) as s:
            s.sendall(b"x")
            return s.recv(1) == b""
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
        return True


def failures(ctl, reason):
    return ctl.json("stats", "--listener", "web")["listeners"][0][
        "handshake_failed_by_reason"][reason]


def test_client_cert_expiring_during_connection(pki, gated, echo_backend):
    """Kept: the certificate was valid at the handshake. Its next handshake
    is refused and counted as expired."""
    d = gated([tls_listener(pki, [echo_backend])], workers=1)
    port = port_of(d.ctl, "web")
    not_after = int(time.time()) + 4
    pem = _openssl_ca_sign(pki, os.path.join(pki.root, "openssl-db"), "short-client",
                           "short-client", "v3_client", end=stamp(not_after))
    ctx = client_context(pki, cert=None)
    ctx.load_cert_chain(pem, pki.key("short-client"))
    held = tls_conn(ctx, port)
    try:
        assert echo(held, b"before\n") == b"before\n"
        until(not_after + 1.5)
        assert echo(held, b"after expiry\n") == b"after expiry\n", \
            "an open connection was cut when its client certificate expired"
        assert handshake_refused(ctx, port), "an expired client certificate was accepted"
        assert wait_until(lambda: failures(d.ctl, "expired") == 1, 5)
        assert echo(held, b"still\n") == b"still\n"
    finally:
        held.close()
    good = tls_conn(client_context(pki), port)
    assert echo(good, b"good\n") == b"good\n"
    good.close()


def openssl_crl(pki, out, seconds):
    """A CRL of the test CA valid for `seconds` (openssl ca -crlsec)."""
    db = os.path.join(pki.root, "openssl-db")
    crlnumber = os.path.join(db, "crlnumber")
    if not os.path.exists(crlnumber):
        with open(crlnumber, "w") as f:
            f.write("1000\n")
    run(["openssl", "ca", "-batch", "-config", os.path.join(db, "ca.cnf"), "-gencrl",
         "-crlsec", str(seconds), "-out", out])
    return out


def test_crl_expiring_while_running_refuses_all_new_clients(pki, gated, echo_backend,
                                                            tmp_path):
    d = gated([tls_listener(pki, [echo_backend])], workers=1)
    port = port_of(d.ctl, "web")
    ctx = client_context(pki)
    # A CRL that is valid now and stale in a few seconds.
    short = openssl_crl(pki, str(tmp_path / "short.crl"), 5)
    d.ctl("cert", "set-crl", "clients", "--crl", short)
    held = tls_conn(ctx, port)
    try:
        assert echo(held, b"one\n") == b"one\n"
        until(time.time() + 6.5)
        # Fail closed: a good client is refused while the CRL is stale...
        assert handshake_refused(ctx, port), "a client was accepted with a stale CRL"
        assert wait_until(lambda: failures(d.ctl, "expired") >= 1, 5), d.log()[-2000:]
        assert any("CRL has expired" in e["reason"]
                   for e in d.wait_event("tls.handshake_failed", listener="web")), d.log()[-2000:]
        # ...while the connection made before stays.
        assert echo(held, b"two\n") == b"two\n"
        # A fresh CRL lets clients in again.
        d.ctl("cert", "set-crl", "clients", "--crl", pki.crl)
        s = tls_conn(ctx, port)
        assert echo(s, b"three\n") == b"three\n"
        s.close()
    finally:
        held.close()
    # Uploading a CRL that has already expired is refused outright.
    stale = openssl_crl(pki, str(tmp_path / "stale.crl"), 1)
    until(time.time() + 2.2)
    msg = d.ctl.refused("cert", "set-crl", "clients", "--crl", stale,
                        code="invalid_argument")
    assert "expired on" in msg, msg
