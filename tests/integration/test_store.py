"""Store mode: kgated instances following the desired state in a real etcd
(Debian's etcd-server 3.4) and kgatectl --store writing it.

One etcd per module on loopback (kernel-chosen ports, temp data dir,
stopped by PID); two kgated instances with separate state dirs and the same
KEK per test. A missing etcd binary is a skip (77)."""
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import urllib.request

import pytest

from conftest import (KGATECTL, KGATED, REPO, base_config, log_events, client_context, dead_port, https_get, run,
                      tls_listener, wait_until)

ETCD = shutil.which("etcd")
ETCDCTL = shutil.which("etcdctl")

pytestmark = pytest.mark.skipif(not ETCD or not ETCDCTL,
                                reason="etcd-server/etcd-client not installed")

PREFIX = "/kgtest"
STATE_KEY = PREFIX + "/state"


class Etcd:
    """One etcd member on 127.0.0.1; stop() and start() keep its ports and
    data, as an outage would."""

    def __init__(self, workdir):
        self.dir = workdir
        self.port, self.peer = dead_port(), dead_port()
        self.client_url = "http://127.0.0.1:%d" % self.port
        self.url = "etcd://127.0.0.1:%d%s" % (self.port, PREFIX)
        self.proc = None
        self.start()

    def start(self):
        peer_url = "http://127.0.0.1:%d" % self.peer
        cmd = [ETCD, "--name", "t", "--data-dir", os.path.join(self.dir, "data"),
               "--listen-client-urls", self.client_url, "--advertise-client-urls",
               self.client_url, "--listen-peer-urls", peer_url,
               "--initial-advertise-peer-urls", peer_url, "--initial-cluster", "t=" + peer_url,
               "--log-outputs", "stderr"]
        self.log = open(os.path.join(self.dir, "etcd.log"), "a")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     cwd=self.dir)
        deadline = time.monotonic() + 20
        while True:
            assert self.proc.poll() is None, "etcd exited: %s" % self.proc.returncode
            try:
                with urllib.request.urlopen(self.client_url + "/health", timeout=1) as r:
                    if b'"health":"true"' in r.read():
                        return
            except OSError:
                pass
            assert time.monotonic() < deadline, "etcd not ready"
            time.sleep(0.1)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    def ctl(self, *args, input=None):
        env = dict(os.environ, ETCDCTL_API="3")
        return subprocess.run([ETCDCTL, "--endpoints", self.client_url, *args], env=env,
                              input=input, capture_output=True, text=True, timeout=20,
                              check=True)


@pytest.fixture(scope="module")
def etcd(tmp_path_factory):
    e = Etcd(str(tmp_path_factory.mktemp("etcd")))
    yield e
    e.stop()


@pytest.fixture
def kek(tmp_path):
    path = str(tmp_path / "kek")
    with open(path, "w") as f:
        f.write(os.urandom(32).hex() + "\n")
    os.chmod(path, 0o600)
    return path


@pytest.fixture
def fresh(etcd):
    """An empty prefix for each test."""
    etcd.ctl("del", "--prefix", PREFIX)
    return etcd


def store_ctl(etcd, kek, *args, check=True, timeout=60):
    return run([KGATECTL, "--store", etcd.url, "--store-kek", kek, *args], check=check,
               timeout=timeout)


def write_config(tmp_path, pki, backends, name="store.json"):
    cfg = base_config(pki, [tls_listener(pki, backends, port=0)], workers=1)
    path = str(tmp_path / name)
    with open(path, "w") as f:
        json.dump(cfg, f)
    return path


def push(etcd, kek, path, *extra, check=True):
    r = store_ctl(etcd, kek, "-o", "json", "store", "push", path, *extra, check=check)
    return json.loads(r.stdout)["revision"] if r.returncode == 0 else r


class Instance:
    def __init__(self, daemon, state):
        self.d = daemon
        self.state = state
        self.sock = os.path.join(state, "control.sock")

    def ctl(self, *args, check=True):
        return run([KGATECTL, "--socket", self.sock, *args], check=check)

    def status(self):
        return json.loads(self.ctl("-o", "json", "status").stdout)

    def store(self):
        return self.status()["store"]

    def port(self):
        show = json.loads(self.ctl("-o", "json", "listener", "show", "web").stdout)
        return int(show["address"].rsplit(":", 1)[1])

    def applied(self):
        return self.store()["applied_revision"]


@pytest.fixture
def instances(spawn_kgated, tmp_path, kek):
    """instances(etcd, n=2, ids=None, kek=kek, wait=True) -> [Instance]"""
    def start(etcd, n=2, kek_path=kek, wait=True, state=None, idx=0):
        out = []
        for i in range(idx, idx + n):
            st = state or str(tmp_path / ("state%d" % i))
            args = ["--state-dir", st, "--store", etcd.url, "--store-kek", kek_path,
                    "--instance-id", "kg%d" % i]
            d = spawn_kgated({"settings": {"workers": 1, "drain_timeout_ms": 1000}},
                             args=args, wait=wait)
            out.append(Instance(d, st))
        return out
    return start


def serves(pki, inst, want):
    body = https_get(client_context(pki), inst.port())
    return want in body


def wait_applied(inst, rev, timeout=10):
    return wait_until(lambda: inst.applied() >= rev, timeout, interval=0.01)


def test_push_converges_on_both(fresh, pki, kek, instances, http_backends, tmp_path):
    a, b = http_backends("a", "b")
    insts = instances(fresh)
    r = store_ctl(fresh, kek, "store", "push", write_config(tmp_path, pki, [a]))
    assert r.stderr == "" and r.stdout.startswith("revision "), (r.stdout, r.stderr)
    rev = int(r.stdout.split()[1])
    for i in insts:
        assert wait_applied(i, rev), i.d.log()
        assert serves(pki, i, "backend=a")
    # A second push changes the backend: time from push to applied on both.
    path = write_config(tmp_path, pki, [b], "second.json")
    t0 = time.monotonic()
    rev2 = push(fresh, kek, path)
    t_push = time.monotonic()
    done = {}
    while len(done) < 2 and time.monotonic() - t0 < 10:
        for n, i in enumerate(insts):
            if n not in done and i.applied() >= rev2:
                done[n] = time.monotonic() - t_push
        time.sleep(0.005)
    assert len(done) == 2, [i.d.log() for i in insts]
    print("convergence after push (s): push itself %.3f, instance0 %.3f, instance1 %.3f"
          % (t_push - t0, done[0], done[1]))
    for i in insts:
        assert serves(pki, i, "backend=b")
        # The port an instance picked for port 0 stays across changes.
        assert i.d.count_event("listener.listening") == 1, i.d.log()
    show = json.loads(store_ctl(fresh, kek, "-o", "json", "store", "show").stdout)
    assert show["revision"] == rev2
    assert show["document"]["certificates"]["web"]["key"] == "(sealed)"
    raw = fresh.ctl("get", STATE_KEY, "--print-value-only").stdout
    assert "PRIVATE KEY" not in raw and "kgseal1:" in raw


def test_racing_pushes(fresh, pki, kek, http_backends, tmp_path):
    a, b = http_backends("a", "b")
    rev = push(fresh, kek, write_config(tmp_path, pki, [a]))
    p1, p2 = write_config(tmp_path, pki, [a], "p1.json"), write_config(tmp_path, pki, [b], "p2.json")
    results = [None, None]

    def go(i, p):
        results[i] = store_ctl(fresh, kek, "store", "push", p, "--expect-revision", str(rev),
                               check=False)
    threads = [threading.Thread(target=go, args=(i, p)) for i, p in enumerate((p1, p2))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    codes = sorted(r.returncode for r in results)
    assert codes == [0, 1], [(r.returncode, r.stderr) for r in results]
    loser = next(r for r in results if r.returncode == 1)
    assert "%s changed since it was read (revision %d, now " % (STATE_KEY, rev) in loser.stderr
    assert "read it again and retry" in loser.stderr


@pytest.mark.parametrize("garbage,reason", [
    ("this is not json", "not a JSON object"),
    ('{"listeners": [{"name": "x", "protocol": "tls", "port": 99999}]}', "listeners[0]"),
    ("clear-key", "private keys are never stored in clear"),
])
def test_garbage_refused(fresh, pki, kek, instances, http_backends, tmp_path, garbage, reason):
    a = http_backends("a")
    insts = instances(fresh)
    rev = push(fresh, kek, write_config(tmp_path, pki, [a]))
    for i in insts:
        assert wait_applied(i, rev)
    if garbage == "clear-key":
        doc = json.loads(fresh.ctl("get", STATE_KEY, "--print-value-only").stdout)
        with open(pki.key("server")) as f:
            doc["certificates"]["web"]["key"] = f.read()
        garbage = json.dumps(doc)
    fresh.ctl("put", STATE_KEY, input=garbage)
    for i in insts:
        evs = i.d.wait_event("store.document_refused", timeout=10)
        assert evs and reason in evs[-1]["reason"], (evs, i.d.log())
        assert i.store()["documents_refused"] == 1
        assert i.applied() == rev
        assert serves(pki, i, "backend=a")
    # A good push after garbage applies again.
    rev2 = push(fresh, kek, write_config(tmp_path, pki, [a], "again.json"))
    for i in insts:
        assert wait_applied(i, rev2)


def test_metrics(fresh, pki, kek, spawn_kgated, http_backends, tmp_path):
    a = http_backends("a")
    rev = push(fresh, kek, write_config(tmp_path, pki, [a]))
    mport = dead_port()
    st = str(tmp_path / "mstate")
    d = spawn_kgated({"settings": {"workers": 1}}, args=[
        "--state-dir", st, "--store", fresh.url, "--store-kek", kek, "--metrics",
        "127.0.0.1:%d" % mport])
    text = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % mport, timeout=10).read().decode()
    assert "kgate_store_reachable 1" in text
    assert "kgate_store_applied_revision %d" % rev in text
    assert "kgate_store_documents_refused_total 0" in text
    assert "kgate_store_seconds_since_contact " in text
    # Served in store mode = the kgate_store_ families of kgated(8) METRICS.
    served = {line.split()[2] for line in text.splitlines()
              if line.startswith("# TYPE kgate_store_")}
    man = open(os.path.join(REPO, "doc", "kgated.8.scd")).read()
    section = man[man.index("\n# METRICS"):man.index("\n# EXIT STATUS")]
    assert served == set(re.findall(r"^\*(kgate_store_[a-z_]+)\*", section, re.M))
    d.terminate()


def test_etcd_outage(fresh, pki, kek, instances, http_backends, tmp_path):
    a, b = http_backends("a", "b")
    insts = instances(fresh)
    rev = push(fresh, kek, write_config(tmp_path, pki, [a]))
    for i in insts:
        assert wait_applied(i, rev)
    fresh.stop()
    try:
        for i in insts:
            assert wait_until(lambda: not i.store()["reachable"], 10), i.d.log()
            assert serves(pki, i, "backend=a")
            assert i.d.wait_event("store.unreachable")
        t0 = time.monotonic()
        r = push(fresh, kek, write_config(tmp_path, pki, [b], "b.json"), check=False)
        took = time.monotonic() - t0
        assert r.returncode == 1 and took < 10, (took, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("kgatectl: store push: store %s:"
                                                       % fresh.url), r.stderr
        print("store push against a stopped etcd failed after %.2f s: %s"
              % (took, r.stderr.strip()))
    finally:
        fresh.start()
    rev2 = push(fresh, kek, write_config(tmp_path, pki, [b], "b.json"))
    t0 = time.monotonic()
    for i in insts:
        assert wait_applied(i, rev2, timeout=15), i.d.log()
        assert serves(pki, i, "backend=b")
        assert i.store()["reachable"]
    print("after etcd came back, both instances applied the push in %.2f s"
          % (time.monotonic() - t0))


def test_start_while_etcd_down_serves_cache(fresh, pki, kek, instances, http_backends,
                                             tmp_path):
    a = http_backends("a")
    rev = push(fresh, kek, write_config(tmp_path, pki, [a]))
    (first,) = instances(fresh, n=1)
    assert wait_applied(first, rev)
    first.d.terminate()
    fresh.stop()
    try:
        (again,) = instances(fresh, n=1, state=first.state)
        assert again.d.count_event("store.unreachable") >= 1
        st = again.store()
        assert not st["reachable"] and st["applied_revision"] == rev
        assert serves(pki, again, "backend=a")
    finally:
        fresh.start()
    assert wait_until(lambda: again.store()["reachable"], 15)


def start_fails(tmp_path, *args):
    """kgated must refuse to start: (exit status, its stderr log)."""
    seed = tmp_path / "seed.json"
    seed.write_text(json.dumps({"settings": {"workers": 1}}))
    res = run([KGATED, "--user", "root", "--config", str(seed), "--state-dir",
               str(tmp_path / "st"), *args], check=False, timeout=30)
    return res.returncode, res.stderr


def test_kek_errors(fresh, pki, kek, http_backends, tmp_path):
    a = http_backends("a")
    push(fresh, kek, write_config(tmp_path, pki, [a]))
    other = str(tmp_path / "other.kek")
    with open(other, "w") as f:
        f.write(os.urandom(32).hex())
    os.chmod(other, 0o600)
    for path, words in ((other, "--store-kek does not open %s" % STATE_KEY),
                        (str(tmp_path / "missing.kek"), "--store-kek:")):
        rc, log = start_fails(tmp_path, "--store", fresh.url, "--store-kek", path)
        assert rc == 1, log
        ev = log_events(log, "store.start_failed")
        assert ev and words in ev[0]["reason"], log
    rc, log = start_fails(tmp_path, "--store", fresh.url)
    assert rc == 1 and "--store-kek" in log, log


def test_control_socket_read_only(fresh, pki, kek, instances, http_backends, tmp_path):
    a, b = http_backends("a", "b")
    (inst,) = instances(fresh, n=1)
    rev = push(fresh, kek, write_config(tmp_path, pki, [a]))
    assert wait_applied(inst, rev)
    r = inst.ctl("backend", "add", "web", b.address, check=False)
    assert r.returncode == 1
    assert "this kgated follows the store %s: change it with kgatectl --store" % fresh.url \
        in r.stderr and r.stderr.rstrip().endswith("[store_mode]"), r.stderr
    st = inst.status()["store"]
    assert st["url"] == fresh.url and st["reachable"] and st["applied_revision"] == rev
    assert st["seconds_since_contact"] is not None and st["documents_refused"] == 0
    assert json.loads(inst.ctl("-o", "json", "listener", "list").stdout)


def fleet(etcd, kek):
    return json.loads(store_ctl(etcd, kek, "-o", "json", "fleet", "status").stdout)


def test_fleet_status(fresh, pki, kek, instances, http_backends, tmp_path):
    a = http_backends("a")
    insts = instances(fresh)
    rev = push(fresh, kek, write_config(tmp_path, pki, [a]))

    def converged():
        f = fleet(fresh, kek)
        rows = {r["id"]: r for r in f["instances"]}
        return (f["revision"] == rev and len(rows) == 2 and
                all(r["state"] == "alive" and r["converged"] for r in rows.values()) and rows)
    rows = wait_until(converged, 10)
    assert rows, fleet(fresh, kek)
    assert rows["kg0"]["listeners"] == [{"name": "web", "state": "serving"}]
    assert rows["kg0"]["members"]["unknown"] + rows["kg0"]["members"]["healthy"] == 1
    # SIGTERM revokes the lease: gone at once.
    insts[0].d.terminate()
    t0 = time.monotonic()
    gone = lambda: {r["id"]: r["state"] for r in fleet(fresh, kek)["instances"]}  # noqa: E731
    assert wait_until(lambda: gone().get("kg0") == "gone", 3), gone()
    print("SIGTERM: gone in fleet status after %.2f s" % (time.monotonic() - t0))
    # kill -9: gone when the lease expires (10 s TTL).
    insts[1].d.kill9()
    t0 = time.monotonic()
    assert wait_until(lambda: gone().get("kg1") == "gone", 13, interval=0.2), gone()
    print("kill -9: gone in fleet status after %.2f s" % (time.monotonic() - t0))
    text = store_ctl(fresh, kek, "fleet", "status").stdout
    assert "kg0" in text and "gone" in text


def test_upgrade_in_store_mode(fresh, pki, kek, instances, http_backends, tmp_path):
    from conftest import become_subreaper
    become_subreaper()
    a, b = http_backends("a", "b")
    (inst,) = instances(fresh, n=1)
    rev = push(fresh, kek, write_config(tmp_path, pki, [a]))
    assert wait_applied(inst, rev)
    inst.d.upgrade()
    inst.d.check_retired()
    rev2 = push(fresh, kek, write_config(tmp_path, pki, [b], "b.json"))
    assert wait_applied(inst, rev2), inst.d.log()
    assert serves(pki, inst, "backend=b")
