"""TLS session resumption across restarts and listener changes.

tls_session_tickets "stateless": the session travels in the ticket, under
keys kept in STATE_DIR/ticket-keys, so a Python ssl client (TLS 1.3 and
1.2) resumes after kgated is stopped with SIGTERM and started again on the
same state directory, and after a listener change rebuilds the listener's
SSL_CTX. "stateful": the session lives in one SSL_CTX's cache, so the same
client makes a full handshake in both cases (while resuming fine against
the same process and listener). A ticket-keys file kgated cannot use stops
it at start with a message naming the file, and the file is left as it
was. Resumption is checked on both sides: SSLSocket.session_reused and
kgated's handshakes.resumed counter."""
import json
import os
import ssl
import stat
import subprocess

import pytest

from conftest import KGATED, base_config, client_context, log_events, tls_listener
from test_control import Ctl
from test_upgrade import echo_once

VERSIONS = {"tls13": ssl.TLSVersion.TLSv1_3, "tls12": ssl.TLSVersion.TLSv1_2}


def exchange(ctx, port, session=None):
    """One echo over a fresh connection offering session: (the session to
    offer next, whether this one was resumed)."""
    reused, session = echo_once(ctx, port, session)
    return session, reused


def start(spawn_kgated, pki, backend, state, mode):
    cfg = base_config(pki, [tls_listener(pki, [backend], tls_session_tickets=mode)])
    d = spawn_kgated(cfg, args=["--state-dir", state])
    d.ctl = Ctl(os.path.join(state, "control.sock"))
    return d


def resumed_count(d):
    return d.ctl.json("stats")["handshakes"]["resumed"]


@pytest.mark.parametrize("version", sorted(VERSIONS))
@pytest.mark.parametrize("mode", ["stateless", "stateful"])
def test_resumption_across_restart(pki, spawn_kgated, echo_backend, tmp_path, mode, version):
    be = echo_backend
    state = str(tmp_path / "state")
    ctx = client_context(pki, tls_min=VERSIONS[version], tls_max=VERSIONS[version])
    d = start(spawn_kgated, pki, be, state, mode)
    session, reused = exchange(ctx, d.port)
    assert not reused and session is not None
    # Against the same process both kinds resume: the restart is what differs.
    _, reused = exchange(ctx, d.port, session)
    assert reused, "no resumption at all in %s mode" % mode
    assert resumed_count(d) == 1
    assert d.terminate() == 0

    keys = os.path.join(state, "ticket-keys")
    assert stat.S_IMODE(os.stat(keys).st_mode) == 0o600
    before = open(keys).read()
    d2 = start(spawn_kgated, pki, be, state, mode)
    assert open(keys).read() == before, "a fresh key file replaced the kept one"
    _, reused = exchange(ctx, d2.port, session)
    if mode == "stateless":
        assert reused, "stateless ticket not resumed after a restart"
        assert resumed_count(d2) == 1
    else:
        assert not reused, "a stateful session survived the restart"
        assert resumed_count(d2) == 0
    assert d2.ctl.json("stats")["handshakes"]["ok"] == 1


@pytest.mark.parametrize("mode", ["stateless", "stateful"])
def test_resumption_across_listener_change(pki, spawn_kgated, echo_backend, tmp_path, mode):
    """listener update of an unrelated setting builds a new snapshot, with a
    new SSL_CTX."""
    be = echo_backend
    d = start(spawn_kgated, pki, be, str(tmp_path / "state"), mode)
    ctx = client_context(pki)
    session, reused = exchange(ctx, d.port)
    assert not reused
    d.ctl("listener", "update", "web", "--idle-timeout-ms", "123456")
    assert d.ctl.json("listener", "show", "web")["idle_timeout_ms"] == 123456
    _, reused = exchange(ctx, d.port, session)
    assert reused == (mode == "stateless")
    assert resumed_count(d) == (1 if mode == "stateless" else 0)


def test_mode_change_at_run_time(pki, spawn_kgated, echo_backend, tmp_path):
    """tls_session_tickets is changed by listener update, and shown."""
    be = echo_backend
    d = start(spawn_kgated, pki, be, str(tmp_path / "state"), "stateful")
    assert d.ctl.json("listener", "show", "web")["tls_session_tickets"] == "stateful"
    d.ctl("listener", "update", "web", "--tls-session-tickets", "stateless")
    assert d.ctl.json("listener", "show", "web")["tls_session_tickets"] == "stateless"
    ctx = client_context(pki)
    session, _ = exchange(ctx, d.port)
    _, reused = exchange(ctx, d.port, session)
    assert reused


def test_without_state_dir_keys_stay_in_memory(pki, spawn_kgated, echo_backend, tmp_path):
    be = echo_backend
    d = spawn_kgated(base_config(pki, [tls_listener(pki, [be])]))
    ctx = client_context(pki)
    session, _ = exchange(ctx, d.port)
    _, reused = exchange(ctx, d.port, session)
    assert reused
    assert not [p for p in os.listdir(d.workdir) if "ticket" in p]


GOOD_KEY = {"name": "00" * 16, "aes": "11" * 32, "hmac": "22" * 32, "created": 1}


@pytest.mark.parametrize("text, mode, want", [
    ("garbage\n", 0o600, "not a JSON object"),
    ('{"version": 1, "keys": [{"name": "00"', 0o600, "not a JSON object"),
    (json.dumps({"version": 1, "keys": [dict(GOOD_KEY, aes="11" * 16)]}), 0o600,
     "keys[0].aes: expected 64 hex digits"),
    (json.dumps({"version": 1, "keys": [GOOD_KEY]}), 0o644, "mode 0644"),
], ids=["garbage", "truncated", "short-key", "mode-0644"])
def test_unusable_key_file_stops_start(pki, echo_backend, tmp_path, text, mode, want):
    be = echo_backend
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    keys = state / "ticket-keys"
    keys.write_text(text)
    os.chmod(keys, mode)
    cfg = tmp_path / "kgated.json"
    cfg.write_text(json.dumps(base_config(pki, [tls_listener(pki, [be])])))
    args = [KGATED, "--config", str(cfg), "--state-dir", str(state)]
    if os.geteuid() == 0:
        args += ["--user", "root"]
    r = subprocess.run(args, capture_output=True, text=True, timeout=30,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 1, r.stderr
    evs = log_events(r.stdout + r.stderr, "tls.ticket_keys_invalid")
    assert len(evs) == 1, r.stderr
    assert str(keys) in evs[0]["reason"] and want in evs[0]["reason"], evs[0]
    assert "kgated.ready" not in r.stdout + r.stderr
    assert keys.read_text() == text, "the key file was changed"
    assert stat.S_IMODE(keys.stat().st_mode) == mode
