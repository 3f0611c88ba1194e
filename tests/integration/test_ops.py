"""Least privilege: who kgated runs as after start-up, and what it can still do.

kgated started as root switches to --user and keeps only CAP_NET_BIND_SERVICE;
started the way systemd starts it (an unprivileged user with ambient
capabilities) it narrows its sets the same way. Every case checks
/proc/PID/status and that traffic still flows. Needs root (CI runs as root).
"""
import json
import os
import pwd
import shutil
import socket
import stat
import sys
import tempfile

import pytest

from conftest import (KGATECTL, KGATED, REPO, Daemon, base_config, client_context, https_get,
                      log_events, run, tls_listener)

sys.path.insert(0, os.path.join(REPO, "tests", "tools"))
from procstatus import CAP_NET_BIND_SERVICE, proc_status  # noqa: E402

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")


def caps(status, name):
    return int(status[name][0], 16)


def free_low_port():
    """A privileged port nothing listens on (443 when it is free)."""
    for port in [443, *range(600, 1024)]:
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
        finally:
            s.close()
    pytest.skip("no free port below 1024 on 127.0.0.1")


@pytest.fixture
def shared_dir():
    """A folder the unprivileged user can traverse (pytest's are root-only),
    with copies of the test certificates it may read."""
    d = tempfile.mkdtemp(prefix="kgate-ops-")
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def daemons(shared_dir):
    """Starts Daemons in folders under shared_dir (torn down before it);
    stops them and fails on a sanitizer report or an unclean exit."""
    made = []

    def start(config, workdir, args=(), prefix=()):
        d = Daemon(config, workdir, args, prefix=prefix)
        made.append(d)
        d.wait_ready()
        return d
    yield start
    errors = []
    for d in made:
        rc = d.terminate()
        if rc != 0:
            errors.append("kgated pid %d exited %d after SIGTERM" % (d.pid, rc))
        errors += d.problems()
    assert not errors, "%s\n%s" % (errors, "\n".join(d.log() for d in made))


def readable_pki(pki, folder):
    """Copies of the server cert/key and CA readable by any user."""
    out = {}
    for name, src in (("server.pem", pki.cert("server")), ("server.key", pki.key("server")),
                      ("ca.pem", pki.ca), ("ca.crl", pki.crl)):
        dst = os.path.join(folder, name)
        shutil.copyfile(src, dst)
        os.chmod(dst, 0o644)
        out[name] = dst
    return out


def readable_config(pki, folder, listeners, **settings):
    files = readable_pki(pki, folder)
    cfg = base_config(pki, listeners, workers=2, **settings)
    cfg["certificates"]["web"].update(cert=files["server.pem"], key=files["server.key"])
    cfg["certificates"]["clients"].update(cert=files["ca.pem"], crl=files["ca.crl"])
    return cfg


def assert_dropped(pid, uid, gid, bounding=CAP_NET_BIND_SERVICE):
    st = proc_status(pid)
    assert [int(x) for x in st["Uid"]] == [uid] * 4, st["Uid"]
    assert [int(x) for x in st["Gid"]] == [gid] * 4, st["Gid"]
    assert caps(st, "CapEff") == CAP_NET_BIND_SERVICE, st["CapEff"]
    assert caps(st, "CapPrm") == CAP_NET_BIND_SERVICE, st["CapPrm"]
    assert caps(st, "CapInh") == 0, st["CapInh"]
    assert caps(st, "CapAmb") == 0, st["CapAmb"]
    assert caps(st, "CapBnd") == bounding, st["CapBnd"]
    assert st["NoNewPrivs"] == ["1"]
    # Every thread, not only the main one: workers start after the drop.
    for tid in os.listdir("/proc/%d/task" % pid):
        with open("/proc/%d/task/%s/status" % (pid, tid)) as f:
            text = f.read()
        assert "\nUid:\t%d\t" % uid in text, (tid, text)
        assert "\nCapEff:\t%016x\n" % CAP_NET_BIND_SERVICE in text, (tid, text)


def test_root_start_switches_to_user_and_keeps_only_bind_service(
        pki, daemons, shared_dir, http_backends):
    nobody = pwd.getpwnam("nobody")
    be = http_backends("a")
    port = free_low_port()
    state = os.path.join(shared_dir, "state")
    cfg = readable_config(pki, shared_dir, [tls_listener(pki, [be], port=port)])
    d = daemons(cfg, os.path.join(shared_dir, "run"),
                args=["--user", "nobody", "--state-dir", state])
    assert_dropped(d.pid, nobody.pw_uid, nobody.pw_gid)
    assert d.events("privileges.dropped", user="nobody", uid=nobody.pw_uid,
                    gid=nobody.pw_gid, caps="cap_net_bind_service=ep"), d.log()
    # The privileged port was bound after the drop, with the kept capability.
    assert d.ports["web"] == port
    assert https_get(client_context(pki), port) == "backend=a\n"
    # kgated created the state directory and handed it to the user.
    st = os.stat(state)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == \
        (nobody.pw_uid, nobody.pw_gid, 0o700)


def _write(folder, cfg):
    path = os.path.join(folder, "checked.json")
    with open(path, "w") as f:
        json.dump(cfg, f)
    return path


def test_explicit_root_keeps_uid_0_with_narrowed_capabilities(pki, daemons, shared_dir,
                                                               http_backends):
    be = http_backends("a")
    cfg = readable_config(pki, shared_dir, [tls_listener(pki, [be])])
    d = daemons(cfg, os.path.join(shared_dir, "run"), args=["--user", "root"])
    assert_dropped(d.pid, 0, 0)
    assert https_get(client_context(pki), d.port) == "backend=a\n"


def test_systemd_style_start_with_ambient_capabilities(pki, daemons, shared_dir,
                                                       http_backends):
    """What the unit does (User=, AmbientCapabilities=, CapabilityBounding
    Set=), done with setpriv: kgated stays that user and clears the rest."""
    nobody = pwd.getpwnam("nobody")
    be = http_backends("a")
    port = free_low_port()
    cfg = readable_config(pki, shared_dir, [tls_listener(pki, [be], port=port)])
    prefix = ["setpriv", "--reuid=%d" % nobody.pw_uid, "--regid=%d" % nobody.pw_gid,
              "--init-groups", "--inh-caps=+net_bind_service,+net_admin",
              "--ambient-caps=+net_bind_service,+net_admin",
              "--bounding-set=-all,+net_bind_service,+net_admin", "--"]
    workdir = os.path.join(shared_dir, "run")
    os.makedirs(workdir)
    os.chown(workdir, nobody.pw_uid, nobody.pw_gid)
    d = daemons(cfg, workdir, args=["--user", "nobody"], prefix=prefix)
    # CAP_NET_ADMIN came in ambient and is gone; the bounding set is the
    # caller's (no CAP_SETPCAP to narrow it), as under systemd.
    assert_dropped(d.pid, nobody.pw_uid, nobody.pw_gid,
                   bounding=CAP_NET_BIND_SERVICE | (1 << 12))
    assert d.events("privileges.dropped", bounding_set_kept="true"), d.log()
    assert https_get(client_context(pki), port) == "backend=a\n"


def test_missing_user_is_a_clear_error(pki, shared_dir):
    cfg = readable_config(pki, shared_dir, [tls_listener(pki, ["127.0.0.1:9"])])
    res = run([KGATED, "--config", _write(shared_dir, cfg), "--user",
               "kgate-no-such-user"], check=False, timeout=30)
    assert res.returncode == 1, res
    last = log_events(res.stderr)[-1]
    assert last["event"] == "privileges.plan_failed", res.stderr
    assert last["reason"].startswith("user 'kgate-no-such-user' does not exist: create it"), \
        res.stderr
    assert not log_events(res.stderr, "listener.listening"), res.stderr


def test_unprivileged_start_cannot_switch_to_another_user(pki, shared_dir):
    nobody = pwd.getpwnam("nobody")
    cfg = readable_config(pki, shared_dir, [tls_listener(pki, ["127.0.0.1:9"])])
    res = run(["setpriv", "--reuid=%d" % nobody.pw_uid, "--regid=%d" % nobody.pw_gid,
               "--init-groups", "--", KGATED, "--config", _write(shared_dir, cfg),
               "--user", "root"], check=False, timeout=30)
    assert res.returncode == 1, res
    assert log_events(res.stderr, "privileges.plan_failed")[-1]["reason"].startswith(
        "user 'root': kgated runs as uid %d and cannot switch users" % nobody.pw_uid), \
        res.stderr


def test_key_the_user_cannot_read_is_a_clear_error(pki, shared_dir):
    """Root validates the files before the switch; the user must read them
    after it, or kgated stops instead of starting with the listener failed."""
    cfg = readable_config(pki, shared_dir, [tls_listener(pki, ["127.0.0.1:9"])])
    key = cfg["certificates"]["web"]["key"]
    os.chmod(key, 0o600)
    res = run([KGATED, "--config", _write(shared_dir, cfg), "--user", "nobody"],
              check=False, timeout=30)
    assert res.returncode == 1, res
    assert log_events(res.stderr, "privileges.dropped"), res.stderr
    last = log_events(res.stderr)[-1]
    assert last["event"] == "config.invalid" and last["user"] == "nobody", res.stderr
    assert last["reason"] == "certificates.web.key: cannot open %s: Permission denied" % key, \
        res.stderr
    assert not log_events(res.stderr, "listener.listening"), res.stderr


def test_bad_user_name_is_refused(pki, shared_dir):
    cfg = readable_config(pki, shared_dir, [tls_listener(pki, ["127.0.0.1:9"])])
    res = run([KGATED, "--config", _write(shared_dir, cfg), "--user", "-rf"],
              check=False, timeout=30)
    assert res.returncode == 1
    assert log_events(res.stderr)[-1]["reason"] == "user '-rf': not a valid user name", \
        res.stderr


def test_listener_on_443_added_at_run_time_after_the_drop(pki, daemons, shared_dir,
                                                          http_backends):
    nobody = pwd.getpwnam("nobody")
    be = http_backends("a")
    port = free_low_port()
    state = os.path.join(shared_dir, "state")
    cfg = readable_config(pki, shared_dir, [tls_listener(pki, [be])])
    d = daemons(cfg, os.path.join(shared_dir, "run"),
                args=["--user", "nobody", "--state-dir", state])
    assert_dropped(d.pid, nobody.pw_uid, nobody.pw_gid)
    sock = os.path.join(state, "control.sock")
    run([KGATECTL, "--socket", sock, "listener", "create", "--name", "low",
         "--protocol", "tls", "--port", str(port), "--bind", "127.0.0.1", "--cert", "web",
         "--ca", "clients", "--mutual-auth", "required", "--backend", be.address])
    assert https_get(client_context(pki), port) == "backend=a\n"
    assert_dropped(d.pid, nobody.pw_uid, nobody.pw_gid)
