"""Steering of new connections over the workers (issue 19 §3; kgated(8),
ACCEPT STEERING): the sk_reuseport program sends each new connection to
the least-loaded worker's listening socket, so no connection is handed
over in userspace; settings.accept_steering "userspace" (or no CAP_BPF)
keeps the hand-over. Per-worker counts come from the metrics'
kgate_worker_connections."""
import json
import os
import shutil
import socket
import subprocess
import time

import pytest

from conftest import (KGATECTL, KGATED, base_config, become_subreaper, dead_port, run,
                      wait_until)

N = 40


@pytest.fixture(scope="module", autouse=True)
def subreaper():
    become_subreaper()


def plain(echo_b, name="plain"):
    return {"name": name, "protocol": "tcp", "bind": "127.0.0.1", "port": 0,
            "backends": [{"address": echo_b.address}]}


def start(spawn_kgated, pki, echo_b, tmp_path, listeners=None, prefix=(), wait=True,
          **settings):
    mport = dead_port()
    state = str(tmp_path / "state")
    cfg = base_config(pki, [plain(echo_b)] if listeners is None else listeners, workers=2,
                      **settings)
    # With a prefix the fixture leaves --user to the test.
    user = ("--user", "root") if prefix else ()
    d = spawn_kgated(cfg, args=("--state-dir", state, "--metrics", "127.0.0.1:%d" % mport,
                                *user), prefix=prefix, wait=wait)
    d.mport = mport
    d.sock = os.path.join(state, "control.sock")
    return d


def metrics(d):
    import urllib.request
    text = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % d.mport,
                                  timeout=10).read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            k, v = line.rsplit(" ", 1)
            values[k] = int(v)
    return values


def per_worker(d):
    v = metrics(d)
    return [v['kgate_worker_connections{worker="%d"}' % w] for w in range(2)]


def open_held(port, n):
    """n connections, each proven through (one echo) and then held open."""
    conns = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        conns.append(s)
    for s in conns:
        s.sendall(b"x")
    for s in conns:
        assert s.recv(1) == b"x"
    return conns


def wait_total(d, total):
    counts = wait_until(lambda: (lambda c: c if sum(c) == total else None)(per_worker(d)), 10)
    assert counts, (per_worker(d), total)
    return counts


def close_all(conns):
    for s in conns:
        s.close()


def steered(d):
    return metrics(d)['kgate_accept_steered_total{result="steered"}']


def assert_bpf_spread(d, port):
    """N held connections spread within one or two of each other (the pending
    mark and the accept's count change are two stores, so a reader can see
    one between them), none handed over; then the least-loaded property:
    after closing the first half (which the kernel's hash alone would leave
    lopsided), new connections go to the emptier worker."""
    before = steered(d)
    conns = open_held(port, N)
    counts = wait_total(d, N)
    assert abs(counts[0] - counts[1]) <= 2, counts
    assert steered(d) - before == N
    # Close every connection of worker 0's that we can tell apart: none; so
    # close the oldest half and check the refill evens out what is left.
    close_all(conns[:N // 2])
    del conns[:N // 2]
    left = wait_total(d, N - N // 2)
    conns += open_held(port, N // 2)
    counts = wait_total(d, N)
    assert abs(counts[0] - counts[1]) <= 2, (left, counts)
    v = metrics(d)
    assert v["kgate_connections_handed_over_total"] == 0, v
    assert v['kgate_accept_steering{mode="bpf"}'] == 1
    close_all(conns)
    wait_total(d, 0)


def test_bpf_steering_spreads_held_connections(spawn_kgated, pki, echo_backend, tmp_path):
    d = start(spawn_kgated, pki, echo_backend, tmp_path)
    ev = d.events("accept.steering")
    assert len(ev) == 1 and ev[0]["mode"] == "bpf", ev
    st = run([KGATECTL, "--socket", d.sock, "status"]).stdout
    assert "accept_steering.mode: bpf" in st, st
    assert_bpf_spread(d, d.port)


def test_userspace_forced_hands_over(spawn_kgated, pki, echo_backend, tmp_path):
    d = start(spawn_kgated, pki, echo_backend, tmp_path, accept_steering="userspace")
    ev = d.events("accept.steering")
    assert [(e["mode"], e["reason"]) for e in ev] == \
        [("userspace", 'settings.accept_steering is "userspace"')], ev
    conns = open_held(d.port, N)
    counts = wait_total(d, N)
    assert abs(counts[0] - counts[1]) <= 2, counts
    v = metrics(d)
    assert v['kgate_accept_steering{mode="userspace"}'] == 1
    assert v['kgate_accept_steered_total{result="steered"}'] == 0
    # The kernel's hash alone cannot have alternated 40 times in a row.
    assert v["kgate_connections_handed_over_total"] > 0, v
    close_all(conns)


NO_BPF = ("setpriv", "--bounding-set=-bpf,-sys_admin", "--inh-caps=-bpf,-sys_admin", "--")


def need_setpriv():
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to start kgated without CAP_BPF")


def test_without_cap_bpf_auto_falls_back(spawn_kgated, pki, echo_backend, tmp_path):
    need_setpriv()
    d = start(spawn_kgated, pki, echo_backend, tmp_path,
              prefix=NO_BPF)
    ev = d.events("accept.steering")
    assert len(ev) == 1 and ev[0]["mode"] == "userspace", ev
    assert "CAP_BPF" in ev[0]["reason"], ev
    conns = open_held(d.port, N)
    counts = wait_total(d, N)
    assert abs(counts[0] - counts[1]) <= 2, counts
    assert metrics(d)["kgate_connections_handed_over_total"] > 0
    close_all(conns)


def test_bpf_forced_without_cap_bpf_is_an_error(pki, echo_backend, tmp_path):
    need_setpriv()
    cfg = base_config(pki, [plain(echo_backend)], workers=2, accept_steering="bpf")
    path = str(tmp_path / "kgated.json")
    with open(path, "w") as f:
        json.dump(cfg, f)
    r = subprocess.run([*NO_BPF, KGATED, "--config", path, "--user", "root"],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, r.stderr
    line = [l for l in r.stderr.splitlines() if "event=config.invalid" in l]
    assert len(line) == 1, r.stderr
    assert 'reason="settings.accept_steering: \\"bpf\\" cannot be used"' in line[0], line
    assert "CAP_BPF" in line[0] and "kgated.ready" not in r.stderr
    # --check says the same before anything starts.
    r = subprocess.run([*NO_BPF, KGATED, "--check", "--config", path],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, r.stderr
    assert 'settings.accept_steering: "bpf" cannot be used' in r.stderr, r.stderr


def test_listener_created_at_run_time_is_steered(spawn_kgated, pki, echo_backend, tmp_path):
    d = start(spawn_kgated, pki, echo_backend, tmp_path, listeners=[])
    run([KGATECTL, "--socket", d.sock, "listener", "create", "--name", "live", "--protocol",
         "tcp", "--port", "0", "--bind", "127.0.0.1", "--backend", echo_backend.address])
    ev = d.wait_event("listener.listening", listener="live")
    assert ev, d.log()
    assert not d.events("accept.steering_failed")
    assert_bpf_spread(d, int(ev[0]["addr"].rsplit(":", 1)[1]))
    # Deleted and made again in the same slot: steered again.
    run([KGATECTL, "--socket", d.sock, "listener", "delete", "live"])
    run([KGATECTL, "--socket", d.sock, "listener", "create", "--name", "live2", "--protocol",
         "tcp", "--port", "0", "--bind", "127.0.0.1", "--backend", echo_backend.address])
    ev = d.wait_event("listener.listening", listener="live2")
    assert_bpf_spread(d, int(ev[0]["addr"].rsplit(":", 1)[1]))


def test_upgrade_keeps_steering(spawn_kgated, pki, echo_backend, tmp_path):
    d = start(spawn_kgated, pki, echo_backend, tmp_path, drain_timeout_ms=20000)
    port = d.port
    # Connections the first process owns keep it draining through both
    # upgrades, so the third process takes the load bank back while the
    # first still runs (kg_steer_hand_over).
    old_conns = open_held(port, 10)
    first = d.pid
    d.upgrade()
    ev = d.events("accept.steering")
    assert [e["mode"] for e in ev] == ["bpf", "bpf"], ev
    assert ev[-1]["reason"] == "program inherited from the upgraded process", ev
    assert_bpf_spread(d, port)
    d.upgrade()
    assert os.path.exists("/proc/%d" % first)
    assert [e["mode"] for e in d.events("accept.steering")] == ["bpf"] * 3
    assert_bpf_spread(d, port)
    # The first process's connections end; its workers' counts must not
    # reach the program the third process's workers feed.
    close_all(old_conns)
    d.check_retired()
    assert_bpf_spread(d, port)
