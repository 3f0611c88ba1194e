"""State persistence under faults, against a running kgated.

The state folder is a small tmpfs mounted in a private mount namespace that
only kgated lives in (unshare -m; the test reaches it with nsenter and
/proc/PID/root), so nothing is left mounted whatever happens: the mount
goes away with the process. The folder then runs full or turns read-only:
a kgatectl change is refused with persist_failed naming the cause, the
running configuration and state.json both stay at the last acknowledged
state, no temp file is left, traffic goes on; once space (or write access)
returns, changes go through again. And kill -9 in the middle of a burst of
concurrent kgatectl changes: the state left behind always loads, holds
every acknowledged change and nothing that was never asked for."""
import json
import os
import random
import shutil
import subprocess
import time

import pytest

from conftest import (KGATECTL, base_config, client_context, https_get, run, tls_listener,
                      wait_until)
from test_control import Ctl, port_of

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("nsenter"),
    reason="needs root, unshare and nsenter for a private tmpfs")

# Mounts a tmpfs on $0 inside the new namespace, then execs kgated.
MOUNT_THEN_EXEC = 'mount -t tmpfs -o size=%s,mode=0700 kgate-state "$0" && exec "$@"'


def spawn_on_tmpfs(spawn_kgated, pki, tmp_path, listeners, size="1m"):
    state = str(tmp_path / "state")
    os.mkdir(state)
    sock = str(tmp_path / "control.sock")  # outside the tmpfs: reachable from here
    prefix = ("unshare", "-m", "--propagation", "private",
              "sh", "-c", MOUNT_THEN_EXEC % size, state)
    d = spawn_kgated(base_config(pki, listeners),
                     args=("--user", "root", "--state-dir", state, "--control", sock),
                     prefix=prefix)
    d.state = state
    d.ctl = Ctl(sock)
    d.view = "/proc/%d/root%s" % (d.pid, state)  # the folder as kgated sees it
    return d


def in_ns(d, *cmd, check=True):
    return run(["nsenter", "-t", str(d.pid), "-m", "--", *cmd], check=check)


def disk_state(d):
    with open(os.path.join(d.view, "state.json")) as f:
        return json.load(f)


def files(d):
    """Every file of the state folder but the filler, relative names."""
    out = set()
    for root, _, names in os.walk(d.view):
        for n in names:
            rel = os.path.relpath(os.path.join(root, n), d.view)
            if rel != "filler":
                out.add(rel)
    return out


STABLE = ("address", "weight", "state", "drained", "disabled")


def running(d):
    """What kgated runs, minus what moves by itself (times, counters)."""
    members = [{k: m[k] for k in STABLE} for m in d.ctl.json("listener", "show", "web")["members"]]
    return d.ctl.certs(), members


def fill(d):
    # dd stops at ENOSPC with an error: that is the point.
    in_ns(d, "dd", "if=/dev/zero", "of=" + os.path.join(d.state, "filler"), "bs=4k",
          check=False)
    r = in_ns(d, "df", "--output=avail", "-B1", d.state)
    assert int(r.stdout.split()[-1]) == 0, r.stdout


def attempts(pki, dead):
    """Changes of every kind that write to the folder: a backend (document
    only), a certificate upload (a new file, then the document) and a CRL
    update (a replaced file)."""
    return [
        ("backend", "add", "web", dead),
        ("cert", "upload", "--name", "more", "--type", "ca", "--cert", pki.ca),
        ("cert", "set-crl", "clients", "--crl", pki.crl),
    ]


def refused_unchanged(d, pki, changes, cause):
    before_disk, before_run, before_files = disk_state(d), running(d), files(d)
    for args in changes:
        msg = d.ctl.refused(*args, code="persist_failed")
        assert "nothing changed" in msg and cause in msg, msg
        assert running(d) == before_run, "running state changed by a refused %s" % (args,)
        assert disk_state(d) == before_disk, "state.json changed by a refused %s" % (args,)
        assert files(d) == before_files, "files left behind: %s" % (files(d) - before_files)
    assert not [f for f in files(d) if f.endswith(".tmp")]
    # Traffic is not affected.
    port = port_of(d.ctl, "web")
    assert https_get(client_context(pki), port).startswith("backend=")
    assert d.alive()


def accepted_again(d, changes):
    for args in changes:
        d.ctl(*args)
    members = {m["address"] for m in running(d)[1]}
    assert changes[0][3] in members
    on_disk = disk_state(d)
    assert "more" in on_disk["certificates"]
    web = [l for l in on_disk["listeners"] if l["name"] == "web"][0]
    assert changes[0][3] in [b["address"] for b in web["backends"]]


def test_full_state_folder_refuses_changes_then_recovers(pki, spawn_kgated, http_backends,
                                                         tmp_path):
    a = http_backends("a")
    d = spawn_on_tmpfs(spawn_kgated, pki, tmp_path, [tls_listener(pki, [a])])
    d.ctl("backend", "set-weight", "web", a.address, "3")  # an acknowledged change
    changes = attempts(pki, "127.0.0.1:9")
    fill(d)
    refused_unchanged(d, pki, changes, "No space left on device")
    # Each refusal is logged with its cause.
    logged = [e for e in d.events("control.op_refused") if "No space left on device" in e["reason"]]
    assert len(logged) >= len(changes), d.log()[-2000:]
    in_ns(d, "rm", os.path.join(d.state, "filler"))
    accepted_again(d, changes)
    assert [m["weight"] for m in running(d)[1] if m["address"] == a.address] == [3]


def test_read_only_state_folder_refuses_changes_then_recovers(pki, spawn_kgated,
                                                              http_backends, tmp_path):
    a = http_backends("a")
    d = spawn_on_tmpfs(spawn_kgated, pki, tmp_path, [tls_listener(pki, [a])])
    d.ctl("backend", "set-weight", "web", a.address, "2")
    changes = attempts(pki, "127.0.0.1:9")
    in_ns(d, "mount", "-o", "remount,ro", d.state)
    try:
        refused_unchanged(d, pki, changes, "Read-only file system")
    finally:
        in_ns(d, "mount", "-o", "remount,rw", d.state)
    accepted_again(d, changes)


# --------------------------------------------------------------------------
# kill -9 during a burst of changes
# --------------------------------------------------------------------------

def test_kill9_during_a_burst_of_changes(pki, gated_state, http_backends, tmp_path):
    """Rounds of 12 concurrent kgatectl changes (backend adds, certificate
    uploads), kgated SIGKILLed at a random moment after the first one was
    acknowledged. After each kill: state.json parses, no temp file counts, kgated
    starts from it, and what it runs lies between what was acknowledged and
    what was asked."""
    a = http_backends("a")
    state = str(tmp_path / "state")
    rng = random.Random(9)
    asked_members, acked_members = set(), set()
    asked_certs, acked_certs = set(), set()
    d = gated_state([tls_listener(pki, [a])], state)
    for rnd in range(5):
        procs = []
        for i in range(12):
            if i % 3 == 2:
                name = "ca-%d-%d" % (rnd, i)
                args = ("cert", "upload", "--name", name, "--type", "ca", "--cert", pki.ca)
                asked_certs.add(name)
            else:
                addr = "127.0.0.1:%d" % (20000 + rnd * 100 + i)
                args = ("backend", "add", "web", addr, "--weight", str(1 + i % 4))
                asked_members.add(addr)
            procs.append((args, subprocess.Popen([KGATECTL, "--socket", d.ctl.sock, *args],
                                                 stdout=subprocess.DEVNULL,
                                                 stderr=subprocess.PIPE)))
        # Killed after the first acknowledgement, while the rest are in flight.
        assert wait_until(lambda: any(p.poll() == 0 for _, p in procs), 30)
        time.sleep(rng.uniform(0.0, 0.15))
        d.kill9()
        for args, p in procs:
            rc = p.wait(timeout=30)
            if rc == 0:  # acknowledged: it must survive
                (acked_certs if args[0] == "cert" else acked_members).add(args[3])
        with open(os.path.join(state, "state.json")) as f:
            json.load(f)  # never half-written
        d = gated_state([], state)
        assert d.events("state.loaded", source="state"), d.log()[-2000:]
        members = {m["address"] for m in d.ctl.json("listener", "show", "web")["members"]}
        certs = {c["name"] for c in d.ctl.json("cert", "list")}
        assert acked_members <= members - {a.address} <= asked_members, (rnd, members)
        assert acked_certs <= certs - {"web", "clients"} <= asked_certs, (rnd, certs)
        # What came back is what counts as acknowledged from here on.
        acked_members |= members - {a.address}
        acked_certs |= certs - {"web", "clients"}
        assert d.ctl.json("status")["pid"] == d.pid
    assert acked_members | acked_certs, "no change was ever acknowledged before a kill"


@pytest.fixture
def gated_state(pki, spawn_kgated):
    def start(listeners, state):
        d = spawn_kgated(base_config(pki, list(listeners), workers=1),
                         args=["--state-dir", state])
        d.ctl = Ctl(os.path.join(state, "control.sock"))
        return d
    return start
