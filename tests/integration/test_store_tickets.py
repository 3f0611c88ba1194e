"""Store mode's session-ticket keys (kgated(8) STORE MODE): PREFIX/ticket-keys
holds the fleet's key set sealed under the KEK; every instance installs it
and caches it in its state dir, so a ticket one instance issued resumes on
another; rotations are compare-and-swaps on the key's revision (by an
instance when the current key is due, or by kgatectl store
rotate-ticket-keys); a value an instance cannot open is refused and the
keys in use stay.

One real etcd per module and two kgated instances with the same KEK, as in
test_store.py. Resumption is checked on both sides: SSLSocket.session_reused
and the resuming instance's handshakes.resumed counter."""
import base64
import json
import os
import ssl
import time

import pytest

from conftest import KGATECTL, client_context, https_resume, run, wait_until
# etcd is module-scoped: this module gets an etcd of its own.
from test_store import (ETCD, ETCDCTL, PREFIX, etcd, fresh, instances, kek,  # noqa: F401
                        push, store_ctl, wait_applied, write_config)

pytestmark = pytest.mark.skipif(not ETCD or not ETCDCTL,
                                reason="etcd-server/etcd-client not installed")

TICKETS_KEY = PREFIX + "/ticket-keys"
VERSIONS = {"tls13": ssl.TLSVersion.TLSv1_3, "tls12": ssl.TLSVersion.TLSv1_2}


def get(ctx, port, session=None):
    """One GET over a new connection offering session: (reused?, the
    session to offer next)."""
    data, _, reused, session = https_resume(ctx, port, session)
    assert data.startswith(b"HTTP/1.1 200"), data[:200]
    return reused, session


def resumed(inst):
    return json.loads(inst.ctl("-o", "json", "stats").stdout)["handshakes"]["resumed"]


def cached(inst):
    """The key set in the instance's cache: [current name, previous name]."""
    try:
        with open(os.path.join(inst.state, "ticket-keys")) as f:
            return [k["name"] for k in json.load(f)["keys"]]
    except (OSError, ValueError):
        return None


def stored(etcd):
    """PREFIX/ticket-keys: (value, mod_revision, version), or None."""
    out = json.loads(etcd.ctl("get", TICKETS_KEY, "-w", "json").stdout)
    if not out.get("kvs"):
        return None
    kv = out["kvs"][0]
    return (base64.b64decode(kv["value"]).decode(), int(kv["mod_revision"]),
            int(kv["version"]))


def converged(insts, etcd, not_before=0):
    """Every instance caches the same set, written at or after revision
    not_before: that set's names."""
    def same():
        st = stored(etcd)
        names = [cached(i) for i in insts]
        if st is None or st[1] < not_before or names[0] is None:
            return None
        applied = all(i.d.count_event("store.ticket_keys_applied", revision=st[1])
                      for i in insts)
        return applied and all(n == names[0] for n in names) and names[0]
    names = wait_until(same, 10)
    assert names, ([cached(i) for i in insts], stored(etcd), [i.d.log() for i in insts])
    return names


def rotate(etcd, kek_path):
    r = store_ctl(etcd, kek_path, "-o", "json", "store", "rotate-ticket-keys")
    return json.loads(r.stdout)["revision"]


def fleet(fresh, pki, kek_path, instances, http_backends, tmp_path):
    a = http_backends("a")
    insts = instances(fresh)
    rev = push(fresh, kek_path, write_config(tmp_path, pki, [a]))
    for i in insts:
        assert wait_applied(i, rev), i.d.log()
    return insts, converged(insts, fresh)


@pytest.mark.parametrize("version", sorted(VERSIONS))
def test_ticket_from_a_resumes_on_b_across_rotations(fresh, pki, kek, instances, http_backends,
                                                     tmp_path, version):
    (a, b), names = fleet(fresh, pki, kek, instances, http_backends, tmp_path)
    # Sealed in etcd: no key bytes, whatever the case of their hex digits.
    value, _, _ = stored(fresh)
    assert value.startswith("kgseal1:"), value[:40]
    with open(os.path.join(a.state, "ticket-keys")) as f:
        for k in json.load(f)["keys"]:
            for field in ("aes", "hmac"):
                assert k[field].lower() not in value.lower()
    ctx = client_context(pki, tls_min=VERSIONS[version], tls_max=VERSIONS[version])
    reused, old = get(ctx, a.port())
    assert not reused
    reused, _ = get(ctx, b.port(), old)
    assert reused, "a ticket instance A issued did not resume on B"
    assert resumed(b) == 1 and resumed(a) == 0

    # One rotation: the old ticket's key is the previous, accepted by both.
    rev = rotate(fresh, kek)
    names1 = converged((a, b), fresh, rev)
    assert names1[1] == names[0] and names1[0] != names[0]
    for n, i in enumerate((a, b)):
        reused, _ = get(ctx, i.port(), old)
        assert reused, "the previous key did not resume on instance %d" % n
    assert resumed(a) == 1 and resumed(b) == 2
    # A ticket issued under the new current key resumes on the other one.
    _, new = get(ctx, b.port())
    reused, _ = get(ctx, a.port(), new)
    assert reused

    # Two rotations: the old ticket's key is gone everywhere.
    rev = rotate(fresh, kek)
    names2 = converged((a, b), fresh, rev)
    assert names2[1] == names1[0] and names[0] not in names2
    for i in (a, b):
        before = resumed(i)
        reused, _ = get(ctx, i.port(), old)
        assert not reused, "a ticket two rotations old resumed"
        assert resumed(i) == before
    # No instance rotated on its own (the keys are fresh): only kgatectl.
    for i in (a, b):
        assert not [e for e in i.d.events("store.ticket_keys_written")
                    if e["why"].startswith("the current key")]


def test_rotation_when_due_is_one_cas(fresh, pki, kek, instances, http_backends, tmp_path):
    """Both instances start with a cached key older than the rotation
    interval and an empty store: one creates PREFIX/ticket-keys from its
    cache, then exactly one rotation wins the compare-and-swap and both
    install it; the old key stays accepted as the previous."""
    old_name = "ab" * 16
    old = {"version": 1, "keys": [{"name": old_name, "aes": "11" * 32, "hmac": "22" * 32,
                                   "created": int(time.time()) - 50000}]}
    for n in range(2):
        st = tmp_path / ("state%d" % n)
        st.mkdir(mode=0o700)
        path = st / "ticket-keys"
        path.write_text(json.dumps(old))
        os.chmod(path, 0o600)
    a, b = instances(fresh)
    names = converged((a, b), fresh)
    assert names[1] == old_name.upper() or names[1].lower() == old_name, names
    writes = [e for i in (a, b) for e in i.d.events("store.ticket_keys_written")]
    whys = sorted(e["why"].split(" is ")[0] for e in writes)
    assert whys == ["absent from the store", "the current key"], writes
    _, _, version = stored(fresh)
    assert version == 2, "PREFIX/ticket-keys written %d times" % version


GARBAGE = ["not sealed", "other KEK", "other prefix"]


@pytest.mark.parametrize("garbage", GARBAGE)
def test_garbage_refused_keys_kept(fresh, pki, kek, instances, http_backends, tmp_path,
                                   garbage):
    (a, b), names = fleet(fresh, pki, kek, instances, http_backends, tmp_path)
    if garbage == "not sealed":
        value, reason = '{"version": 1, "keys": []}', "not a sealed value"
    else:
        other_kek = kek
        if garbage == "other KEK":
            other_kek = str(tmp_path / "other.kek")
            with open(other_kek, "w") as f:
                f.write(os.urandom(32).hex())
            os.chmod(other_kek, 0o600)
        url = fresh.url.replace(PREFIX, "/kgother")
        run([KGATECTL, "--store", url, "--store-kek", other_kek, "store", "rotate-ticket-keys"])
        value = fresh.ctl("get", "/kgother/ticket-keys", "--print-value-only").stdout.strip()
        fresh.ctl("del", "--prefix", "/kgother")
        reason = "another" if garbage == "other KEK" else ""
    ctx = client_context(pki)
    _, sess = get(ctx, a.port())
    fresh.ctl("put", TICKETS_KEY, input=value)
    for i in (a, b):
        evs = i.d.wait_event("store.ticket_keys_refused", timeout=10)
        assert evs and reason in evs[-1]["reason"], (evs, i.d.log())
        assert i.store()["documents_refused"] == 1
        assert cached(i) == names
    reused, _ = get(ctx, b.port(), sess)
    assert reused, "resumption stopped after a refused key set"
    # kgatectl leaves a value it cannot open alone.
    r = store_ctl(fresh, kek, "store", "rotate-ticket-keys", check=False)
    assert r.returncode == 1 and TICKETS_KEY in r.stderr, r.stderr
    assert stored(fresh)[0] == value
    # Deleted: the instances write theirs again, and a rotation works.
    fresh.ctl("del", TICKETS_KEY)
    assert converged((a, b), fresh) == names
    rev = rotate(fresh, kek)
    assert converged((a, b), fresh, rev)[1] == names[0]


def test_start_while_etcd_down_resumes_fleet_tickets(fresh, pki, kek, instances, http_backends,
                                                     tmp_path):
    (a, b), names = fleet(fresh, pki, kek, instances, http_backends, tmp_path)
    rev = rotate(fresh, kek)
    names = converged((a, b), fresh, rev)
    b.d.terminate()
    fresh.stop()
    try:
        (b2,) = instances(fresh, n=1, state=b.state, idx=1)
        assert not b2.store()["reachable"]
        assert cached(b2) == names
        ctx = client_context(pki)
        _, sess = get(ctx, a.port())
        reused, _ = get(ctx, b2.port(), sess)
        assert reused, "the cached keys did not resume A's ticket"
        assert resumed(b2) == 1
    finally:
        fresh.start()
    assert wait_until(lambda: b2.store()["reachable"], 15)
    # Back in touch, it follows the store again.
    rev = rotate(fresh, kek)
    assert converged((a, b2), fresh, rev)[1] == names[0]
