"""The fleet's desired state in etcd (issue 15, sections 1, 3 and 4): three
etcd members in their own namespaces, the three instances in store mode
(--store, one KEK), changes made with kgatectl --store from the client's
namespace. Runs after test_anycast.py (the instances switch to store mode
here and stay so).

Figures go to lines starting with "==> "."""
import json
import os
import statistics
import time

import pytest

from conftest import ETCDS, INSTANCES, KGATECTL, PREFIX, say, sh, wait_until

LISTENER = "web"


def applied(fleet, role):
    st = fleet.instance_status(role)
    return st["store"]["applied_revision"] if st and "store" in st else -1


def store_revision(fleet):
    return json.loads(fleet.ctl_store("-o", "json", "store", "show").stdout)["revision"]


def wait_converged(fleet, rev, timeout=10):
    """Seconds until every instance applied revision rev (None: not in time)."""
    t0 = time.monotonic()
    ok = wait_until(lambda: all(applied(fleet, r) >= rev for r in INSTANCES), timeout, 0.01)
    return time.monotonic() - t0 if ok else None


def requests_ok(fleet, n=30):
    """n mTLS requests to the anycast address from the client namespace:
    how many succeeded (the failures' kinds are printed)."""
    out = os.path.join(fleet.tmp, "req-%d.json" % time.monotonic_ns())
    p = fleet.client(out, "--count", str(n), "--threads", "2")
    p.p.wait(60)
    with open(out) as f:
        recs = json.load(f)["new"]
    bad = [(rec[3], rec[4]) for rec in recs if not rec[2]]
    if bad:
        print("failed requests (kind, instance):", bad)
    return len(recs) - len(bad)


@pytest.fixture(scope="module")
def store_fleet(fleet):
    """etcd up, the configuration pushed, every instance in store mode."""
    fleet.heal()
    fleet.make_kek()
    t0 = time.monotonic()
    for role in ETCDS:
        fleet.start_etcd(role)
    assert wait_until(lambda: all(fleet.etcd_healthy(r) for r in ETCDS), 30, 0.2), \
        fleet.diagnostics()
    say("etcd: 3 members healthy in %.1f s" % (time.monotonic() - t0))
    cfg = os.path.join(fleet.tmp, "fleet.json")
    with open(cfg, "w") as f:
        json.dump(fleet.kgated_config(2000), f, indent=1)
    fleet.ctl_store("store", "push", cfg)
    rev = store_revision(fleet)
    for role in INSTANCES:
        fleet.start_kgated_store(role)
        assert wait_until(lambda: fleet.instance_status(role), 30, 0.05), \
            fleet.kgated[role].log()[-2000:]
    fleet.wait_all_announced()
    assert wait_converged(fleet, rev, 30) is not None, [applied(fleet, r) for r in INSTANCES]
    yield fleet


def change_steps(fleet):
    """20 changes of every kind the issue names: a listener created, backends
    added and removed, a certificate replaced, a CRL set."""
    pki = fleet.pki
    extra = "10.77.0.21:8081"
    steps = [("listener", "create", "--name", "side", "--protocol", "tls", "--port", "8444",
              "--bind", "0.0.0.0", "--cert", "web", "--ca", "clients", "--mutual-auth",
              "required", "--backend", "10.77.0.21:8080")]
    for i in range(6):
        steps.append(("backend", "add", LISTENER, "10.77.0.21:%d" % (8090 + i)))
        steps.append(("backend", "remove", LISTENER, "10.77.0.21:%d" % (8090 + i)))
    steps.append(("backend", "set-weight", LISTENER, "10.77.0.22:8080", "2"))
    steps.append(("backend", "set-weight", LISTENER, "10.77.0.22:8080", "1"))
    steps.append(("cert", "replace", "web", "--cert", pki["server"], "--key", pki["server_key"]))
    steps.append(("cert", "set-crl", "clients", "--crl", pki["crl"]))
    steps.append(("backend", "add", "side", extra))
    steps.append(("backend", "remove", "side", extra))
    steps.append(("listener", "delete", "side"))
    assert len(steps) == 20
    return steps


def test_twenty_changes_reach_every_instance(store_fleet):
    fleet = store_fleet
    fleet.pki["crl"] = os.path.join(fleet.tmp, "pki", "ca.crl")
    sh(KGATECTL, "ca", "crl", "--dir", os.path.join(fleet.tmp, "pki", "ca"),
       "--out", fleet.pki["crl"], "--days", "2")
    times = []
    for step in change_steps(fleet):
        fleet.ctl_store(*step)
        rev = store_revision(fleet)
        took = wait_converged(fleet, rev)
        assert took is not None, (step, rev, [applied(fleet, r) for r in INSTANCES])
        times.append(took)
    for role in INSTANCES:
        st = fleet.instance_status(role)
        assert st["store"]["documents_refused"] == 0, (role, st["store"])
    p50, worst = statistics.median(times), max(times)
    say("20 changes through kgatectl --store: applied on all 3 instances after p50 %.0f ms, "
        "max %.0f ms (from kgatectl's return)" % (1000 * p50, 1000 * worst))
    assert worst <= 3.0, times
    assert requests_ok(fleet) == 30


def test_resumption_on_another_instance(store_fleet):
    """A ticket one instance issued resumes on another: the ticket keys
    come from the store. 50 clients per TLS version, each resuming on an
    instance other than the one that issued its ticket."""
    fleet = store_fleet
    for version in ("TLSv1_3", "TLSv1_2"):
        out = os.path.join(fleet.tmp, "resume-%s.json" % version)
        p = fleet.client(out, "--resume", version, "--trials", "50")
        assert p.p.wait(120) == 0
        with open(out) as f:
            r = json.load(f)
        moved = [t for t in r["trials"] if t["other"] and t["other"] != t["first"]]
        say("resumption %s across instances: %d of %d sessions resumed on an instance other "
            "than the one that issued the ticket" % (version, r["resumed"], len(r["trials"])))
        assert len(moved) == 50, r["trials"]
        assert r["resumed"] == 50, r["trials"]


def test_garbage_in_the_store_is_refused_everywhere(store_fleet):
    fleet = store_fleet
    before = {r: fleet.instance_status(r)["store"]["documents_refused"] for r in INSTANCES}
    rev = applied(fleet, "inst1")
    pki = os.path.join(fleet.tmp, "pki")
    fleet.nsexec("etcd1", "env", "ETCDCTL_API=3", "etcdctl", "--endpoints",
                 "https://%s:2379" % ETCDS["etcd1"], "--cacert", fleet.pki["ca"], "--cert",
                 os.path.join(pki, "store.pem"), "--key", os.path.join(pki, "store.key"),
                 "put", PREFIX + "/state", "not a document")
    assert wait_until(lambda: all(fleet.instance_status(r)["store"]["documents_refused"] >
                                  before[r] for r in INSTANCES), 10, 0.05)
    for role in INSTANCES:
        assert applied(fleet, role) == rev
        assert "store.document_refused" in fleet.kgated[role].log()
    assert requests_ok(fleet) == 30
    # A good document applies again.
    cfg = os.path.join(fleet.tmp, "fleet.json")
    fleet.ctl_store("store", "push", cfg)
    assert wait_converged(fleet, store_revision(fleet)) is not None


def test_etcd_outage_and_lost_quorum(store_fleet):
    """etcd fully stopped, then 2 of 3 members down: the instances serve
    on, changes fail within 10 s with a clear error, and converge after."""
    fleet = store_fleet
    for down in (list(ETCDS), ["etcd2", "etcd3"]):
        for role in down:
            fleet.stop_etcd(role)
        assert requests_ok(fleet) == 30
        t0 = time.monotonic()
        res = fleet.ctl_store("backend", "add", LISTENER, "10.77.0.21:8099", check=False,
                              timeout=30)
        took = time.monotonic() - t0
        say("etcd %s down: kgatectl --store change failed after %.1f s (exit %d): %s"
            % ("fully" if len(down) == 3 else "2 of 3 members", took, res.returncode,
               res.stderr.strip()[:160]))
        assert res.returncode != 0 and took <= 10, (res.returncode, took, res.stderr)
        assert res.stderr.startswith("kgatectl: "), res.stderr
        for role in down:
            fleet.start_etcd(role)
        assert wait_until(lambda: all(fleet.etcd_healthy(r) for r in ETCDS), 30, 0.2)
        fleet.ctl_store("backend", "add", LISTENER, "10.77.0.21:8099")
        took = wait_converged(fleet, store_revision(fleet), 30)
        say("etcd back: converged again %.2f s after the next change" % took)
        assert took is not None
        fleet.ctl_store("backend", "remove", LISTENER, "10.77.0.21:8099")
        assert wait_converged(fleet, store_revision(fleet), 30) is not None


def test_instance_started_without_etcd_serves_its_cache(store_fleet):
    fleet = store_fleet
    for role in ETCDS:
        fleet.stop_etcd(role)
    try:
        fleet.start_kgated_store("inst2")
        st = wait_until(lambda: fleet.instance_status("inst2"), 30, 0.05)
        fleet.wait_all_announced()
        assert st["store"]["reachable"] is False, st["store"]
        assert st["store"]["applied_revision"] > 0
        assert requests_ok(fleet) == 30
        say("inst2 restarted with etcd down: serves its cached revision %d"
            % st["store"]["applied_revision"])
    finally:
        for role in ETCDS:
            fleet.start_etcd(role)
        assert wait_until(lambda: all(fleet.etcd_healthy(r) for r in ETCDS), 30, 0.2)
    assert wait_until(lambda: fleet.instance_status("inst2")["store"]["reachable"], 15, 0.1)


def test_wrong_kek_refuses_to_start(store_fleet):
    fleet = store_fleet
    wrong = os.path.join(fleet.tmp, "wrong-kek")
    with open(wrong, "w") as f:
        f.write(sh("openssl", "rand", "-hex", "32").stdout)
    os.chmod(wrong, 0o600)
    p = fleet.start_kgated_store("inst1", kek=wrong, state="wrong-kek-state")
    rc = p.p.wait(30)
    log = p.log()
    assert rc == 1, log[-2000:]
    assert "key-encryption key" in log, log[-2000:]
    say("wrong KEK: kgated exits %d: %s" % (rc, [l for l in log.splitlines()
                                               if "store.start_failed" in l][-1][:200]))
