"""kgatectl --store with the cert, listener and backend verbs: each verb
runs kgated's own operation code on the document in etcd and writes it
back as a compare-and-swap, and the instances that follow the store apply
it.

Every change is made twice with the same arguments: with --store, and
against a reference kgated's control socket (single-box mode, its own
state dir). Exit status, refusal messages and the JSON keys of results
must be the same; the two store instances must then show the change
through their own control sockets, and serve it where that is cheap.

The race between two operators is made deterministic without a test hook:
--expect-revision names the revision an operator read (store show), and a
second change made from that same read must lose, through the real
compare in etcd's transaction (the verb runs on the current document; only
the compare refuses it)."""
import json
import os

import pytest

from conftest import KGATECTL, client_context, https_get, run
from test_store import (ETCD, ETCDCTL, STATE_KEY, etcd, fresh, instances, kek,  # noqa: F401
                        wait_applied)

pytestmark = pytest.mark.skipif(not ETCD or not ETCDCTL,
                                reason="etcd-server/etcd-client not installed")


class Store:
    """kgatectl --store against one prefix; every run checks that its
    temporary state dir (private keys in clear) is gone afterwards."""

    def __init__(self, etcd, kek, tmp):
        self.etcd, self.kek, self.tmp = etcd, kek, tmp
        os.makedirs(tmp, exist_ok=True)

    def ctl(self, *args, check=True, expect=None):
        pre = ["--expect-revision", str(expect)] if expect is not None else []
        r = run([KGATECTL, "--store", self.etcd.url, "--store-kek", self.kek, *pre, *args],
                check=check, env=dict(os.environ, TMPDIR=self.tmp))
        assert os.listdir(self.tmp) == [], "temporary state left behind"
        return r

    def revision(self):
        out = self.etcd.ctl("get", STATE_KEY, "-w", "json").stdout
        kvs = json.loads(out).get("kvs", [])
        return int(kvs[0]["mod_revision"]) if kvs else 0

    def raw(self):
        return self.etcd.ctl("get", STATE_KEY, "--print-value-only").stdout


def same_keys(a, b):
    """Same keys at every level, null values matching anything."""
    if isinstance(a, dict) and isinstance(b, dict):
        assert set(a) == set(b), (sorted(set(a) ^ set(b)), a, b)
        for k in a:
            same_keys(a[k], b[k])
    elif isinstance(a, list) and isinstance(b, list) and a and b:
        same_keys(a[0], b[0])


class Pair:
    """The same verb through the store and through a reference kgated."""

    def __init__(self, store, ref):
        self.store, self.ref = store, ref

    def run(self, *args, fails=False):
        before = self.store.revision()
        s = self.store.ctl("-o", "json", *args, check=False)
        r = self.ref.ctl("-o", "json", *args, check=False)
        assert (s.returncode, r.returncode) == ((1, 1) if fails else (0, 0)), \
            (args, s.returncode, s.stderr, r.returncode, r.stderr)
        if fails:
            assert s.stderr == r.stderr, (s.stderr, r.stderr)
            assert s.stdout == "" and self.store.revision() == before
            return s.stderr
        assert s.stderr == "", s.stderr
        res = json.loads(s.stdout)
        same_keys(res, json.loads(r.stdout))
        return res


class Ref:
    def __init__(self, sock):
        self.sock = sock

    def ctl(self, *args, check=True):
        return run([KGATECTL, "--socket", self.sock, *args], check=check)


@pytest.fixture
def pair(fresh, kek, spawn_kgated, tmp_path):
    st = str(tmp_path / "ref-state")
    spawn_kgated({"settings": {"workers": 1, "drain_timeout_ms": 1000}},
                 args=["--state-dir", st])
    return Pair(Store(fresh, kek, str(tmp_path / "tmp")), Ref(os.path.join(st, "control.sock")))


def show(inst, name="web"):
    return json.loads(inst.ctl("-o", "json", "listener", "show", name).stdout)


def members(inst):
    return {m["address"]: m for m in show(inst)["members"]}


def converge(store, insts):
    rev = store.revision()
    for i in insts:
        assert wait_applied(i, rev), i.d.log()
    return rev


def serves(pki, inst, want):
    return want in https_get(client_context(pki), int(show(inst)["address"].rsplit(":", 1)[1]))


def issue_server(pki, tmp_path, name):
    out = str(tmp_path / name)
    run([KGATECTL, "ca", "issue", "--dir", pki.ca_dir, "--type", "server", "--subject",
         "/O=kgate test/CN=localhost", "--san", "DNS:localhost,IP:127.0.0.1", "--days", "30",
         "--out", out])
    return out + ".pem", out + ".key"


def test_every_verb_through_the_store(pair, pki, kek, instances, http_backends, tmp_path):
    a, b = http_backends("a", "b")
    store = pair.store
    insts = instances(store.etcd)
    # No document yet: an empty state, and the first change creates it.
    assert pair.run("cert", "list") == [] and store.revision() == 0
    assert pair.run("listener", "list") == []

    # cert upload (server and ca): the key leaves this machine sealed.
    res = pair.run("cert", "upload", "--name", "web", "--type", "server",
                   "--cert", pki.cert("server"), "--key", pki.key("server"))
    assert res["name"] == "web" and res["used_by"] == []
    pair.run("cert", "upload", "--name", "clients", "--type", "ca", "--cert", pki.ca)
    raw = store.raw()
    assert "PRIVATE KEY" not in raw and "kgseal1:" in raw
    assert {c["name"] for c in pair.run("cert", "list")} == {"web", "clients"}

    # listener create: both instances serve it.
    res = pair.run("listener", "create", "--name", "web", "--protocol", "tls", "--port", "0",
                   "--bind", "127.0.0.1", "--cert", "web", "--ca", "clients",
                   "--mutual-auth", "required", "--backend", a.address)
    # What only a running kgated knows is null, never invented.
    assert res["state"] is None and res["active"] is None and res["counters"] is None
    assert res["members"][0]["health"] is None
    converge(store, insts)
    for i in insts:
        assert show(i)["state"] == "running"
        assert serves(pki, i, "backend=a")

    # backend add / set-weight / drain / disable / enable / remove.
    pair.run("backend", "add", "web", b.address, "--weight", "3")
    converge(store, insts)
    for i in insts:
        assert members(i)[b.address]["weight"] == 3
    pair.run("backend", "set-weight", "web", b.address, "5")
    pair.run("backend", "drain", "web", a.address)
    converge(store, insts)
    for i in insts:
        m = members(i)
        assert m[b.address]["weight"] == 5 and m[a.address]["drained"]
        assert serves(pki, i, "backend=b")
    pair.run("backend", "disable", "web", a.address)
    converge(store, insts)
    for i in insts:
        assert members(i)[a.address]["state"] == "disabled"
    assert pair.run("backend", "enable", "web", a.address) == {"ok": True}
    res = pair.run("listener", "show", "web")
    assert not res["members"][0]["drained"] and not res["members"][0]["disabled"]
    pair.run("backend", "remove", "web", b.address)
    converge(store, insts)
    for i in insts:
        assert set(members(i)) == {a.address}
        assert not members(i)[a.address]["disabled"]
        assert serves(pki, i, "backend=a")

    # listener update / stop / start.
    pair.run("listener", "update", "web", "--idle-timeout-ms", "61000")
    converge(store, insts)
    for i in insts:
        assert show(i)["idle_timeout_ms"] == 61000
    # The OCSP keys through the store (soft, and nothing answers there:
    # clients still get in).
    pair.run("listener", "update", "web", "--ocsp", "soft", "--ocsp-url",
             "http://127.0.0.1:9/", "--ocsp-timeout-ms", "500")
    converge(store, insts)
    for i in insts:
        s = show(i)
        assert (s["ocsp"], s["ocsp_url"], s["ocsp_timeout_ms"]) == \
            ("soft", "http://127.0.0.1:9/", 500), s
        assert serves(pki, i, "backend=a")
    pair.run("listener", "update", "web", "--ocsp", "off", "--ocsp-url", "none")
    converge(store, insts)
    for i in insts:
        assert show(i)["ocsp"] == "off" and show(i)["ocsp_url"] is None
    res = pair.run("listener", "stop", "web")
    assert res["state"] == "stopped"
    converge(store, insts)
    for i in insts:
        assert show(i)["state"] == "stopped"
    pair.run("listener", "start", "web")
    converge(store, insts)
    for i in insts:
        assert show(i)["state"] == "running" and serves(pki, i, "backend=a")

    # cert replace and set-crl: the instances use the new files.
    cert, key = issue_server(pki, tmp_path, "server2")
    res = pair.run("cert", "replace", "web", "--cert", cert, "--key", key)
    assert "PRIVATE KEY" not in store.raw()
    pair.run("cert", "set-crl", "clients", "--crl", pki.crl)
    converge(store, insts)
    for i in insts:
        got = json.loads(i.ctl("-o", "json", "cert", "show", "web").stdout)
        assert got["sha256"] == res["sha256"]
        assert json.loads(i.ctl("-o", "json", "cert", "show", "clients").stdout)["has_crl"]
        assert serves(pki, i, "backend=a")
    assert pair.run("cert", "show", "clients")["crl"]["revoked"] == 1

    # listener delete and cert delete.
    pair.run("listener", "delete", "web")
    pair.run("cert", "delete", "web")
    converge(store, insts)
    for i in insts:
        assert json.loads(i.ctl("-o", "json", "listener", "list").stdout) == []
        assert [c["name"] for c in json.loads(i.ctl("-o", "json", "cert", "list").stdout)] \
            == ["clients"]


def test_refusals_match_the_control_socket(pair, pki, http_backends):
    a = http_backends("a")
    pair.run("cert", "upload", "--name", "web", "--type", "server",
             "--cert", pki.cert("server"), "--key", pki.key("server"))
    pair.run("cert", "upload", "--name", "clients", "--type", "ca", "--cert", pki.ca)
    pair.run("listener", "create", "--name", "web", "--protocol", "tls", "--port", "0",
             "--bind", "127.0.0.1", "--cert", "web", "--ca", "clients", "--backend", a.address)
    refusals = [
        (("backend", "add", "nosuch", "127.0.0.1:9"), "[not_found]"),
        (("cert", "delete", "web"), "[in_use]"),
        (("backend", "remove", "web", a.address), "[invalid_argument]"),
        (("cert", "upload", "--name", "web", "--type", "server", "--cert", pki.cert("server"),
          "--key", pki.key("server")), "[already_exists]"),
        (("cert", "set-crl", "web", "--crl", pki.crl), "[invalid_argument]"),
        # Validation of the document as a configuration, and of new files.
        (("listener", "create", "--name", "two", "--protocol", "tls", "--port", "0",
          "--bind", "127.0.0.1", "--cert", "nosuch", "--backend", a.address),
         "[invalid_argument]"),
        (("cert", "replace", "web", "--cert", pki.cert("server"), "--key", pki.key("client")),
         "[invalid_argument]"),
        (("cert", "upload", "--name", "old", "--type", "server",
          "--cert", pki.cert("server-expired"), "--key", pki.key("server-expired")),
         "[invalid_argument]"),
        (("listener", "update", "web", "--max-connections", "0"), "[invalid_argument]"),
        # Only building the listener's snapshot finds this one.
        (("listener", "create", "--name", "two", "--protocol", "https", "--port", "0",
          "--bind", "127.0.0.1", "--cert", "web", "--mutual-auth", "off",
          "--forwarding", "sockmap", "--backend", a.address), "[invalid_argument]"),
    ]
    for args, code in refusals:
        msg = pair.run(*args, fails=True)
        assert msg.startswith("kgatectl: ") and msg.rstrip().endswith(code), (args, msg)
    # Kernel features are the instances' business: what this machine's
    # kernel lacks (kTLS for splice) is not held against the document.
    r = pair.ref.ctl("listener", "update", "web", "--forwarding", "splice", check=False)
    if r.returncode == 1:
        assert "kernel TLS" in r.stderr, r.stderr
    before = pair.store.revision()
    pair.store.ctl("listener", "update", "web", "--forwarding", "splice")
    assert pair.store.revision() > before
    # Usage errors are kgatectl's own, before any store or socket.
    s = pair.store.ctl("listener", "create", "--name", "x", "--protocol", "tls", "--port",
                       "70000", "--backend", a.address, check=False)
    r = pair.ref.ctl("listener", "create", "--name", "x", "--protocol", "tls", "--port",
                     "70000", "--backend", a.address, check=False)
    assert (s.returncode, s.stderr) == (r.returncode, r.stderr) == (2, r.stderr)


def test_runtime_questions_refused(fresh, kek, tmp_path):
    store = Store(fresh, kek, str(tmp_path / "tmp"))
    for args in (("status",), ("stats",), ("upgrade",)):
        r = store.ctl(*args, check=False)
        assert r.returncode == 1 and r.stdout == ""
        assert "only a running kgated answers this" in r.stderr and "fleet status" in r.stderr
    r = run([KGATECTL, "--store", fresh.url, "cert", "list"], check=False)
    assert r.returncode == 2 and "needs --store-kek FILE" in r.stderr
    r = run([KGATECTL, "--expect-revision", "3", "cert", "list"], check=False)
    assert r.returncode == 2 and "--expect-revision: only with --store" in r.stderr


def test_same_read_revision_one_wins(fresh, kek, pki, tmp_path, http_backends):
    a, b, c = http_backends("a", "b", "c")
    store = Store(fresh, kek, str(tmp_path / "tmp"))
    store.ctl("cert", "upload", "--name", "web", "--type", "server",
              "--cert", pki.cert("server"), "--key", pki.key("server"))
    store.ctl("listener", "create", "--name", "web", "--protocol", "tls", "--port", "0",
              "--bind", "127.0.0.1", "--cert", "web", "--mutual-auth", "off",
              "--backend", a.address)
    # Two operators read the same revision (store show), then change it.
    read = json.loads(store.ctl("-o", "json", "store", "show").stdout)["revision"]
    assert read == store.revision()
    first = store.ctl("backend", "add", "web", b.address, expect=read, check=False)
    assert first.returncode == 0, first.stderr
    now = store.revision()
    assert now > read
    second = store.ctl("backend", "add", "web", c.address, expect=read, check=False)
    assert second.returncode == 1 and second.stdout == ""
    assert second.stderr == ("kgatectl: %s changed since it was read (revision %d, now %d): "
                             "read it again and retry\n" % (STATE_KEY, read, now))
    assert store.revision() == now
    addrs = [m["address"] for m in json.loads(
        store.ctl("-o", "json", "listener", "show", "web").stdout)["members"]]
    assert addrs == [a.address, b.address]
    # Expecting no document when there is one loses the same way.
    r = store.ctl("backend", "add", "web", c.address, expect=0, check=False)
    assert r.returncode == 1 and "(revision 0, now %d)" % now in r.stderr
    # Read again and retry: it goes through.
    store.ctl("backend", "add", "web", c.address, expect=now)
    assert store.revision() > now


def test_bad_document_in_store(fresh, kek, tmp_path):
    store = Store(fresh, kek, str(tmp_path / "tmp"))
    fresh.ctl("put", STATE_KEY, input="this is not json")
    r = store.ctl("cert", "list", check=False)
    assert r.returncode == 1 and r.stderr.startswith("kgatectl: cert list: %s (revision "
                                                      % STATE_KEY), r.stderr
    fresh.ctl("put", STATE_KEY, input='{"listeners": [{"name": "x"}]}')
    rev = store.revision()
    r = store.ctl("listener", "delete", "x", check=False)
    assert r.returncode == 1 and "is not valid" in r.stderr and "store push" in r.stderr
    assert store.revision() == rev
