"""CRL lifecycle (issue 16 section 4, kgated(8) CRLS): CRL files watched and
re-read when written in place or renamed over; a CRL that does not parse,
is signed by another key or is another issuer's leaves the previous one in
force (logged crl.refused, counted in kgate_crl_reloads_total); an expired
CRL in force refuses every client (crl_expired reject, the default) or is
tolerated while revoked certificates stay refused (warn); and a CRL
replaced under load costs no good request.

Each test has its own CA (kgatectl ca init), so revoking here never touches
the session PKI other tests use.
"""
import datetime
import functools
import http.server
import json
import os
import shutil
import socket
import ssl
import threading
import time
import urllib.request

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from conftest import (KGATECTL, dead_port, echo_exchange, https_get, run, tls_listener,
                      wait_until)
from test_store import (ETCD, ETCDCTL, etcd, fresh, instances, kek,  # noqa: F401 (fixtures)
                        wait_applied)
from test_store import push as store_push

REVOKE_WITHIN_S = 1.0


class CaEnv:
    """A CA folder, a server certificate, a good client and a victim to revoke."""

    def __init__(self, root, name="crltest"):
        self.root = root
        self.dir = os.path.join(root, "ca")
        self.ca = os.path.join(self.dir, "ca.pem")
        self.crl = os.path.join(root, "crls", "ca.crl")
        os.makedirs(os.path.dirname(self.crl))
        self.kgatectl("ca", "init", "--dir", self.dir, "--subject",
                      "/C=DE/O=kgate crl/CN=%s CA" % name, "--days", "30")
        self.kgatectl("ca", "issue", "--dir", self.dir, "--type", "server", "--subject",
                      "/O=kgate crl/CN=localhost", "--san", "DNS:localhost,IP:127.0.0.1",
                      "--days", "30", "--out", os.path.join(root, "server"))
        for who in ("good", "victim"):
            self.kgatectl("ca", "issue", "--dir", self.dir, "--type", "client", "--subject",
                          "/O=kgate crl/CN=" + who, "--days", "30",
                          "--out", os.path.join(root, who))
        self.write_crl(self.crl)

    @staticmethod
    def kgatectl(*args):
        return run([KGATECTL, *args])

    def path(self, name, ext):
        return os.path.join(self.root, name + "." + ext)

    def write_crl(self, out):
        self.kgatectl("ca", "crl", "--dir", self.dir, "--out", out)
        return out

    def revoke(self, who="victim"):
        self.kgatectl("ca", "revoke", "--dir", self.dir, "--cert", self.path(who, "pem"))

    def client(self, who):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(self.ca)
        ctx.load_cert_chain(self.path(who, "pem"), self.path(who, "key"))
        return ctx

    def config(self, backend, crl_expired=None, workers=1):
        ca = {"type": "ca", "cert": self.ca, "crl": self.crl}
        if crl_expired:
            ca["crl_expired"] = crl_expired
        return {"settings": {"workers": workers, "drain_timeout_ms": 2000,
                             "log_level": "info"},
                "certificates": {
                    "web": {"type": "server", "cert": self.path("server", "pem"),
                            "key": self.path("server", "key")},
                    "clients": ca},
                "listeners": [tls_listener(None, [backend])]}

    def ca_key(self):
        with open(os.path.join(self.dir, "private", "ca.key"), "rb") as f:
            return serialization.load_pem_private_key(f.read(), None)

    def ca_cert(self):
        with open(self.ca, "rb") as f:
            return x509.load_pem_x509_certificate(f.read())

    def crafted_crl(self, out, next_update_s=3600, key=None, revoke=()):
        """A CRL named as this CA's, signed with key (default the CA's own),
        valid for next_update_s seconds, listing the serials of revoke."""
        now = datetime.datetime.now(datetime.timezone.utc)
        b = (x509.CertificateRevocationListBuilder()
             .issuer_name(self.ca_cert().subject)
             .last_update(now - datetime.timedelta(seconds=60))
             .next_update(now + datetime.timedelta(seconds=next_update_s)))
        for who in revoke:
            with open(self.path(who, "pem"), "rb") as f:
                serial = x509.load_pem_x509_certificate(f.read()).serial_number
            b = b.add_revoked_certificate(x509.RevokedCertificateBuilder()
                                          .serial_number(serial).revocation_date(now).build())
        crl = b.sign(key or self.ca_key(), hashes.SHA256())
        with open(out, "wb") as f:
            f.write(crl.public_bytes(serialization.Encoding.PEM))
        return out


@pytest.fixture
def ca_env(tmp_path):
    return CaEnv(str(tmp_path / "pki"))


def accepted(ctx, port):
    """A full exchange through the echo backend works."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost") as s:
                return echo_exchange(s, b"ping\n") == b"ping\n"
    except (ssl.SSLError, OSError):
        return False


def metrics(mport):
    text = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % mport, timeout=10).read()
    out = {}
    for line in text.decode().splitlines():
        if line and not line.startswith("#"):
            k, v = line.rsplit(" ", 1)
            out[k] = float(v)
    return out


def reloads(mport, result):
    return metrics(mport)['kgate_crl_reloads_total{cert="clients",result="%s"}' % result]


def start(spawn_kgated, ca_env, echo_backend, **kw):
    mport = dead_port()
    d = spawn_kgated(ca_env.config(echo_backend, **kw), args=["--metrics", "127.0.0.1:%d" % mport])
    return d, mport


def rejected_within(ctx, port, seconds):
    """Seconds until ctx is refused, or None when it is still accepted."""
    t0 = time.monotonic()
    refused = wait_until(lambda: not accepted(ctx, port), seconds + 4)
    return time.monotonic() - t0 if refused else None


@pytest.mark.parametrize("how", ["in_place", "rename"])
def test_replaced_crl_file_revokes_within_a_second(spawn_kgated, ca_env, echo_backend, how):
    d, mport = start(spawn_kgated, ca_env, echo_backend)
    good, victim = ca_env.client("good"), ca_env.client("victim")
    assert accepted(good, d.port) and accepted(victim, d.port)
    ca_env.revoke()
    if how == "rename":
        # What `kgatectl ca crl --out` and editors do: a new file renamed over.
        ca_env.write_crl(ca_env.crl)
    else:
        new = ca_env.write_crl(os.path.join(ca_env.root, "new.crl"))
        with open(new, "rb") as src, open(ca_env.crl, "r+b") as dst:
            dst.truncate(0)
            dst.write(src.read())
    took = rejected_within(victim, d.port, REVOKE_WITHIN_S)
    assert took is not None, d.log()[-3000:]
    assert took <= REVOKE_WITHIN_S + 0.5, took
    assert d.wait_event("crl.reloaded", cert="clients", source="file")
    assert accepted(good, d.port)
    assert reloads(mport, "applied") == 1
    assert metrics(mport)['kgate_crl_revoked_entries{cert="clients"}'] == 1
    assert any(e["reason"].find("revoked") >= 0 for e in d.events("tls.handshake_failed"))


@pytest.mark.parametrize("bad", ["garbage", "wrong_signer", "other_issuer", "expired"])
def test_bad_crl_keeps_the_previous_one(spawn_kgated, ca_env, echo_backend, bad, pki):
    ca_env.revoke()
    ca_env.write_crl(ca_env.crl)
    d, mport = start(spawn_kgated, ca_env, echo_backend)
    good, victim = ca_env.client("good"), ca_env.client("victim")
    assert accepted(good, d.port) and not accepted(victim, d.port)
    tmp = os.path.join(ca_env.root, "candidate.crl")
    if bad == "garbage":
        with open(tmp, "w") as f:
            f.write("-----BEGIN X509 CRL-----\nnot base64 at all\n-----END X509 CRL-----\n")
    elif bad == "wrong_signer":
        # This CA's name, another key: an empty CRL that would revoke nobody.
        with open(os.path.join(pki.other_ca_dir, "private", "ca.key"), "rb") as f:
            other = serialization.load_pem_private_key(f.read(), None)
        ca_env.crafted_crl(tmp, key=other)
    elif bad == "other_issuer":
        run([KGATECTL, "ca", "crl", "--dir", pki.other_ca_dir, "--out", tmp])
    else:
        ca_env.crafted_crl(tmp, next_update_s=-10)
    os.rename(tmp, ca_env.crl)
    ev = d.wait_event("crl.refused", cert="clients", timeout=5)
    assert ev, d.log()[-3000:]
    want = {"garbage": "not a CRL", "wrong_signer": "signature does not verify",
            "other_issuer": "not in the CA bundle", "expired": "expired on"}[bad]
    assert want in ev[0]["reason"], ev
    assert ev[0]["effect"] == "the previous CRL stays in force"
    assert reloads(mport, "refused") == 1 and reloads(mport, "applied") == 0
    # The CRL in force still revokes the victim; good clients come in.
    assert accepted(good, d.port) and not accepted(victim, d.port)
    assert metrics(mport)['kgate_crl_revoked_entries{cert="clients"}'] == 1
    # A good CRL after the bad one is applied.
    ca_env.write_crl(ca_env.crl)
    assert d.wait_event("crl.reloaded", cert="clients")
    assert reloads(mport, "applied") == 1


@pytest.mark.parametrize("mode", ["reject", "warn"])
def test_expired_crl_reject_or_warn(spawn_kgated, ca_env, echo_backend, mode):
    # Valid for a few seconds: long enough for a loaded machine to start
    # kgated (an expired CRL with reject would keep the listener down).
    expires = time.time() + 6
    ca_env.crafted_crl(ca_env.crl, next_update_s=6, revoke=["victim"])
    d, mport = start(spawn_kgated, ca_env, echo_backend, crl_expired=mode)
    good, victim = ca_env.client("good"), ca_env.client("victim")
    assert accepted(good, d.port) and not accepted(victim, d.port)
    time.sleep(max(0, expires + 1 - time.time()))
    if mode == "reject":
        assert not accepted(good, d.port)
        fails = d.events("tls.handshake_failed")
        assert any("CRL has expired" in e["reason"] for e in fails), fails
    else:
        assert accepted(good, d.port)
    # Revocation still counts in either mode.
    assert not accepted(victim, d.port)
    assert metrics(mport)['kgate_crl_next_update_seconds{cert="clients"}'] < time.time()


def test_crl_expired_key_through_the_control_socket(spawn_kgated, ca_env, echo_backend,
                                                    tmp_path):
    """crl_expired is kept in state.json and shown by cert show / list; a
    server entry refuses it."""
    state = str(tmp_path / "state")
    d = spawn_kgated(ca_env.config(echo_backend, crl_expired="warn"),
                     args=["--state-dir", state])
    sock = os.path.join(state, "control.sock")

    def ctl(*args, check=True):
        return run([KGATECTL, "--socket", sock, *args], check=check)
    show = json.loads(ctl("-o", "json", "cert", "show", "clients").stdout)
    assert show["crl_expired"] == "warn" and show["crl_state"] == "ok"
    assert show["crl"]["state"] == "ok" and show["crl"]["revoked"] == 0
    listed = {c["name"]: c for c in json.loads(ctl("-o", "json", "cert", "list").stdout)}
    assert listed["clients"]["crl_state"] == "ok"
    assert "CRL" in ctl("cert", "list").stdout
    ctl("cert", "set-crl", "clients", "--crl", ca_env.crl, "--crl-expired", "reject")
    show = json.loads(ctl("-o", "json", "cert", "show", "clients").stdout)
    assert show["crl_expired"] == "reject"
    with open(os.path.join(state, "state.json")) as f:
        assert json.load(f)["certificates"]["clients"]["crl_expired"] == "reject"
    # crl_url and crl_refresh_s the same way (nothing serves the URL: the
    # download is refused and the CRL in force stays).
    ctl("cert", "set-crl", "clients", "--crl", ca_env.crl, "--crl-url",
        "http://127.0.0.1:%d/ca.crl" % dead_port(), "--crl-refresh-s", "600")
    show = json.loads(ctl("-o", "json", "cert", "show", "clients").stdout)
    assert show["crl_url"].startswith("http://127.0.0.1:") and show["crl_refresh_s"] == 600
    with open(os.path.join(state, "state.json")) as f:
        entry = json.load(f)["certificates"]["clients"]
    assert entry["crl_refresh_s"] == 600 and entry["crl_url"] == show["crl_url"]
    assert d.wait_event("crl.refused", cert="clients", source="url")
    assert json.loads(ctl("-o", "json", "cert", "show", "clients").stdout)["crl"]["state"] == "ok"
    r = ctl("cert", "set-crl", "clients", "--crl", ca_env.crl, "--crl-url", "ftp://x/y",
            check=False)
    assert r.returncode != 0 and "crl_url: must be an http:// or https:// URL" in r.stderr
    r = ctl("cert", "replace", "web", "--cert", ca_env.path("server", "pem"), "--key",
            ca_env.path("server", "key"), "--crl-expired", "warn", check=False)
    assert r.returncode != 0 and "only \"ca\" entries have a CRL" in r.stderr, r.stderr


def ctl_json(sock, *args):
    return json.loads(run([KGATECTL, "--socket", sock, "-o", "json", *args]).stdout)


def test_push_over_the_control_socket(spawn_kgated, ca_env, echo_backend, pki, tmp_path):
    """ca crl --push goes to every ca certificate whose certificate is the
    CA's (two names here), not to another CA's; a CA kgated does not use
    is refused with nothing sent."""
    cfg = ca_env.config(echo_backend)
    cfg["certificates"]["same-ca"] = {"type": "ca", "cert": ca_env.ca, "crl": ca_env.crl}
    cfg["certificates"]["session-ca"] = {"type": "ca", "cert": pki.ca, "crl": pki.crl}
    state = str(tmp_path / "state")
    d = spawn_kgated(cfg, args=["--state-dir", state])
    sock = os.path.join(state, "control.sock")
    port = ctl_json(sock, "listener", "show", "web")["address"].rsplit(":", 1)[1]
    port = int(port)
    victim = ca_env.client("victim")
    assert accepted(victim, port)
    session_before = ctl_json(sock, "cert", "show", "session-ca")["crl"]
    ca_env.revoke()
    out = run([KGATECTL, "--socket", sock, "-o", "json", "ca", "crl", "--dir", ca_env.dir,
               "--out", str(tmp_path / "pushed.crl"), "--push"])
    res = json.loads(out.stdout)
    assert sorted(res["pushed_to"]) == ["clients", "same-ca"], res
    t0 = time.monotonic()
    assert wait_until(lambda: not accepted(victim, port), 5)
    assert time.monotonic() - t0 <= REVOKE_WITHIN_S, time.monotonic() - t0
    assert accepted(ca_env.client("good"), port)
    for name in ("clients", "same-ca"):
        assert ctl_json(sock, "cert", "show", name)["crl"]["revoked"] == 1
    assert ctl_json(sock, "cert", "show", "session-ca")["crl"] == session_before
    assert d.count_event("cert.crl_updated") == 2

    third = CaEnv(str(tmp_path / "third"), name="third")
    r = run([KGATECTL, "--socket", sock, "ca", "crl", "--dir", third.dir, "--out",
             str(tmp_path / "third.crl"), "--push"], check=False)
    assert r.returncode == 1 and "no ca certificate in kgated is the CA in" in r.stderr, r.stderr
    assert os.path.exists(str(tmp_path / "third.crl"))
    assert d.count_event("cert.crl_updated") == 2


@pytest.mark.skipif(not ETCD or not ETCDCTL, reason="etcd-server/etcd-client not installed")
def test_push_to_the_store(ca_env, echo_backend, instances, fresh, kek, tmp_path):
    """ca crl --store URL --push changes the store's document; the instance
    following it applies the new CRL."""
    cfg = ca_env.config(echo_backend)
    cfg["listeners"][0]["port"] = 0
    path = str(tmp_path / "store.json")
    with open(path, "w") as f:
        json.dump(cfg, f)
    rev = store_push(fresh, kek, path)
    inst = instances(fresh, n=1)[0]
    assert wait_applied(inst, rev), inst.d.log()[-3000:]
    victim = ca_env.client("victim")
    assert accepted(victim, inst.port())
    ca_env.revoke()
    out = run([KGATECTL, "--store", fresh.url, "--store-kek", kek, "-o", "json", "ca", "crl",
               "--dir", ca_env.dir, "--out", str(tmp_path / "pushed.crl"), "--push"])
    assert json.loads(out.stdout)["pushed_to"] == ["clients"]
    assert wait_until(lambda: not accepted(victim, inst.port()), 10), inst.d.log()[-3000:]
    assert accepted(ca_env.client("good"), inst.port())
    assert json.loads(inst.ctl("-o", "json", "cert", "show", "clients").stdout)[
        "crl"]["revoked"] == 1


LOAD_CLIENTS = 50
LOAD_SECONDS = 8.0


def test_crl_replaced_under_load(spawn_kgated, ca_env, http_backends):
    """Issue 16: 50 good clients running (a new handshake per request), the
    CRL file replaced: 0 failed good requests, and the newly revoked
    certificate refused within a second. Bounded: 8 s of load."""
    backend = http_backends("a")
    d = spawn_kgated(ca_env.config(backend, workers=2))
    port = d.port
    good, victim = ca_env.client("good"), ca_env.client("victim")
    assert accepted_http(victim, port)
    stop = threading.Event()
    lock = threading.Lock()
    stats = {"ok": 0, "failed": 0, "errors": []}

    def client():
        while not stop.is_set():
            try:
                assert https_get(good, port, timeout=10).strip() == "backend=a"
                with lock:
                    stats["ok"] += 1
            except Exception as e:  # every failure counts
                with lock:
                    stats["failed"] += 1
                    if len(stats["errors"]) < 10:
                        stats["errors"].append(repr(e))

    threads = [threading.Thread(target=client, daemon=True) for _ in range(LOAD_CLIENTS)]
    for t in threads:
        t.start()
    try:
        time.sleep(2.0)
        ok_before = stats["ok"]
        ca_env.revoke()
        t0 = time.monotonic()
        ca_env.write_crl(ca_env.crl)
        refused_at = None
        while time.monotonic() - t0 < LOAD_SECONDS - 2:
            if refused_at is None and not accepted_http(victim, port):
                refused_at = time.monotonic() - t0
            if refused_at is not None and time.monotonic() - t0 > 3:
                break
            time.sleep(0.02)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=20)
    assert not any(t.is_alive() for t in threads)
    assert stats["failed"] == 0, stats
    assert stats["ok"] > ok_before > 0, stats
    assert refused_at is not None and refused_at <= REVOKE_WITHIN_S, refused_at
    assert d.count_event("crl.reloaded") == 1
    print("load: %d good requests, 0 failed; victim refused %.3f s after the CRL was written"
          % (stats["ok"], refused_at))


def accepted_http(ctx, port):
    try:
        return https_get(ctx, port, timeout=10).strip() == "backend=a"
    except (ssl.SSLError, OSError):
        return False


class CrlServer:
    """A local HTTP server (Python's http.server) serving files of one folder."""

    def __init__(self, folder):
        handler = functools.partial(_QuietHandler, directory=folder)
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_crl_fetched_from_url_then_broken_server(spawn_kgated, ca_env, echo_backend, tmp_path):
    """crl_url, every crl_refresh_s: a fresh CRL from the server is applied;
    garbage, a 404 and a server that is gone are refused (logged, counted)
    and the CRL in force stays."""
    served = tmp_path / "www"
    served.mkdir()
    shutil.copy(ca_env.crl, str(served / "ca.crl"))
    srv = CrlServer(str(served))
    try:
        cfg = ca_env.config(echo_backend)
        cfg["certificates"]["clients"].update(
            {"crl_url": "http://127.0.0.1:%d/ca.crl" % srv.port, "crl_refresh_s": 1})
        mport = dead_port()
        d = spawn_kgated(cfg, args=["--metrics", "127.0.0.1:%d" % mport])
        good, victim = ca_env.client("good"), ca_env.client("victim")
        assert accepted(victim, d.port)
        # DER, as distribution points serve it, written by rename.
        ca_env.revoke()
        pem = ca_env.write_crl(os.path.join(ca_env.root, "next.crl"))
        der = x509.load_pem_x509_crl(open(pem, "rb").read()).public_bytes(
            serialization.Encoding.DER)
        with open(str(served / "tmp"), "wb") as f:
            f.write(der)
        os.rename(str(served / "tmp"), str(served / "ca.crl"))
        assert d.wait_event("crl.reloaded", cert="clients", source="url", timeout=5), \
            d.log()[-3000:]
        assert wait_until(lambda: not accepted(victim, d.port), 3)
        assert accepted(good, d.port)
        assert reloads(mport, "applied") == 1

        # Garbage, then nothing there (404), then no server at all.
        with open(str(served / "ca.crl"), "w") as f:
            f.write("<html>maintenance</html>\n")
        ev = d.wait_event("crl.refused", source="url", timeout=5)
        assert ev and "not a CRL" in ev[0]["reason"], d.log()[-3000:]
        os.unlink(str(served / "ca.crl"))
        assert wait_until(lambda: any("HTTP 404" in e["reason"]
                                      for e in d.events("crl.refused", source="url")), 5)
        srv.close()
        srv = None
        assert wait_until(lambda: any("HTTP" not in e["reason"] and "not a CRL" not in e["reason"]
                                      for e in d.events("crl.refused", source="url")), 5), \
            d.log()[-3000:]
        assert reloads(mport, "refused") >= 3
        assert all(e["effect"] == "the previous CRL stays in force"
                   for e in d.events("crl.refused"))
        assert accepted(good, d.port) and not accepted(victim, d.port)
        assert metrics(mport)['kgate_crl_revoked_entries{cert="clients"}'] == 1
    finally:
        if srv:
            srv.close()
