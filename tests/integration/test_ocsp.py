"""OCSP for client certificates (kgate.json(5) ocsp, ocsp_url): `openssl ocsp`
as the responder over a kgatectl CA's index.txt; good, revoked, unknown,
responder down (soft and hard), a stale answer, one shared query, the
handshake suspended while other connections are served, and the AIA URL
that `kgatectl ca issue --ocsp-url` writes."""
import datetime
import http.server
import os
import shutil
import socket
import subprocess
import threading
import time

import pytest

from conftest import KGATECTL, dead_port, run, tls_listener, wait_until

TIMEOUT = 20  # every wait below is bounded by this many seconds


class OcspPki:
    """A CA of its own (so its index.txt is this module's): good and
    revoked client certificates, and 'unknown', which the responder's index
    copy does not list."""

    def __init__(self, root):
        self.root = root
        self.dir = os.path.join(root, "ca")
        self.ca = os.path.join(self.dir, "ca.pem")
        self.ca_key = os.path.join(self.dir, "private", "ca.key")

    def cert(self, name):
        return os.path.join(self.root, name + ".pem")

    def key(self, name):
        return os.path.join(self.root, name + ".key")

    def issue(self, name, *extra):
        run([KGATECTL, "ca", "issue", "--dir", self.dir, "--type", "client",
             "--subject", "/O=ocsp test/CN=" + name, "--days", "30",
             "--out", os.path.join(self.root, name), *extra])


@pytest.fixture(scope="module")
def opki(tmp_path_factory):
    p = OcspPki(str(tmp_path_factory.mktemp("ocsp-pki")))
    run([KGATECTL, "ca", "init", "--dir", p.dir, "--subject", "/O=ocsp test/CN=ocsp CA",
         "--days", "30"])
    for name in ("good", "revoked", "slow", "shared"):
        p.issue(name)
    run([KGATECTL, "ca", "revoke", "--dir", p.dir, "--cert", p.cert("revoked")])
    # The responder's view: every certificate but 'unknown'.
    p.index = os.path.join(p.root, "responder-index.txt")
    shutil.copy(os.path.join(p.dir, "index.txt"), p.index)
    shutil.copy(os.path.join(p.dir, "index.txt.attr"), p.index + ".attr")
    p.issue("unknown")
    p.issue("aia", "--ocsp-url", "http://127.0.0.1:%d/ocsp" % dead_port())
    return p


class Responder:
    """`openssl ocsp` serving the index on a loopback port."""

    def __init__(self, p, *extra):
        self.port = dead_port()
        self.log = os.path.join(p.root, "responder-%d.log" % self.port)
        self.proc = subprocess.Popen(
            ["openssl", "ocsp", "-index", p.index, "-port", str(self.port),
             "-rsigner", p.ca, "-rkey", p.ca_key, "-CA", p.ca, "-nmin", "10", *extra],
            stdout=subprocess.DEVNULL, stderr=open(self.log, "w"))
        # Not probed by connecting: openssl ocsp serves one connection at
        # a time and a probe would hold it up.
        ok = wait_until(lambda: "waiting for OCSP client" in open(self.log).read(), TIMEOUT)
        assert ok, "openssl ocsp did not start"

    @property
    def url(self):
        return "http://127.0.0.1:%d/" % self.port

    def close(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)


@pytest.fixture
def responder(opki):
    r = Responder(opki)
    yield r
    r.close()


class CannedResponder:
    """An HTTP responder in this process: each POST waits `delay` seconds,
    then answers with `answer(request_der)` (DER), counting requests."""

    def __init__(self, answer, delay=0.0):
        outer = self
        self.requests = 0
        self.lock = threading.Lock()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with outer.lock:
                    outer.requests += 1
                time.sleep(delay)
                der = answer(body)
                self.send_response(200)
                self.send_header("Content-Type", "application/ocsp-response")
                self.send_header("Content-Length", str(len(der)))
                self.end_headers()
                self.wfile.write(der)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self):
        return "http://127.0.0.1:%d/" % self.server.server_address[1]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def proxy_to(responder):
    """answer() that forwards the request to an `openssl ocsp`."""
    import urllib.request

    def answer(body):
        req = urllib.request.Request(responder.url, data=body,
                                     headers={"Content-Type": "application/ocsp-request"})
        return urllib.request.urlopen(req, timeout=10).read()
    return answer


def stale_answer(opki, name):
    """answer(): 'good' for name, signed by the CA, with thisUpdate two
    days and nextUpdate one day in the past."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509 import ocsp

    ca = x509.load_pem_x509_certificate(open(opki.ca, "rb").read())
    key = serialization.load_pem_private_key(open(opki.ca_key, "rb").read(), None)
    cert = x509.load_pem_x509_certificate(open(opki.cert(name), "rb").read())
    now = datetime.datetime.utcnow()
    b = ocsp.OCSPResponseBuilder().add_response(
        cert=cert, issuer=ca, algorithm=hashes.SHA1(), cert_status=ocsp.OCSPCertStatus.GOOD,
        this_update=now - datetime.timedelta(days=2),
        next_update=now - datetime.timedelta(days=1),
        revocation_time=None, revocation_reason=None).responder_id(
        ocsp.OCSPResponderEncoding.HASH, ca)
    der = b.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)
    return lambda body: der


def config(opki, backends, ocsp="hard", url=None, workers=1, extra_listeners=(), **more):
    lst = tls_listener(None, backends, ocsp=ocsp, **more)
    if url:
        lst["ocsp_url"] = url
    return {"settings": {"workers": workers, "drain_timeout_ms": 2000, "log_level": "info"},
            "certificates": {"web": {"type": "server", "cert": opki.server_cert,
                                     "key": opki.server_key},
                             "clients": {"type": "ca", "cert": opki.ca}},
            "listeners": [lst, *extra_listeners]}


@pytest.fixture
def server_pki(opki, pki):
    """kgated's server certificate comes from the session PKI."""
    opki.server_cert, opki.server_key = pki.cert("server"), pki.key("server")
    return opki


def get(opki, port, name, timeout=TIMEOUT):
    """curl through the listener with client certificate name."""
    return run(["curl", "-sS", "--max-time", str(timeout), "-k",
                "--cert", opki.cert(name), "--key", opki.key(name),
                "https://127.0.0.1:%d/" % port], check=False, timeout=timeout + 5)


def served(res):
    return res.returncode == 0 and res.stdout.startswith("backend=")


def stats(d):
    return run([KGATECTL, "--socket", os.path.join(d.state, "control.sock"), "-o", "json",
                "stats"]).stdout


@pytest.fixture
def gated(spawn_kgated, tmp_path):
    def start(cfg):
        state = str(tmp_path / "state")
        d = spawn_kgated(cfg, args=["--state-dir", state])
        d.state = state
        return d
    return start


def failed_reasons(d, before=0):
    return [e["reason"] for e in d.events("tls.handshake_failed")][before:]


def test_good_revoked_unknown_hard(server_pki, gated, http_backends, responder):
    be = http_backends("a")
    d = gated(config(server_pki, [be], "hard", responder.url))
    assert served(get(server_pki, d.port, "good"))
    r = get(server_pki, d.port, "revoked")
    assert not served(r), r.stdout
    assert d.wait_event("tls.handshake_failed", 1)
    assert any("revoked" in x for x in failed_reasons(d)), failed_reasons(d)
    r = get(server_pki, d.port, "unknown")
    assert not served(r), r.stdout
    assert d.wait_event("tls.handshake_failed", 2)
    assert any("does not know" in x for x in failed_reasons(d)), failed_reasons(d)
    # A second good handshake is answered from the cache: no new query.
    assert served(get(server_pki, d.port, "good"))
    s = stats(d)
    assert '"ocsp_cache_hits": 1' in s and '"ocsp_queries": 3' in s, s
    assert '"ocsp_revoked": 1' in s and '"ocsp_unknown": 1' in s, s


def test_unknown_soft_is_let_in_and_logged(server_pki, gated, http_backends, responder):
    be = http_backends("a")
    d = gated(config(server_pki, [be], "soft", responder.url))
    assert served(get(server_pki, d.port, "unknown"))
    assert d.wait_event("ocsp.soft_allowed", 1)
    r = get(server_pki, d.port, "revoked")
    assert not served(r), "soft mode still refuses a revoked certificate"


@pytest.mark.parametrize("mode", ["soft", "hard"])
def test_responder_down(server_pki, gated, http_backends, mode):
    be = http_backends("a")
    d = gated(config(server_pki, [be], mode, "http://127.0.0.1:%d/" % dead_port()))
    r = get(server_pki, d.port, "good")
    assert d.wait_event("ocsp.query_failed", 1)
    if mode == "soft":
        assert served(r), r.stderr
        assert d.wait_event("ocsp.soft_allowed", 1)
        assert '"ocsp_soft_allowed": 1' in stats(d)
    else:
        assert not served(r), r.stdout
        assert d.wait_event("tls.handshake_failed", 1)
        assert any("no answer" in x for x in failed_reasons(d)), failed_reasons(d)


def test_responder_timeout_hard(server_pki, gated, http_backends, responder):
    slow = CannedResponder(proxy_to(responder), delay=3.0)
    try:
        be = http_backends("a")
        d = gated(config(server_pki, [be], "hard", slow.url, ocsp_timeout_ms=500))
        assert not served(get(server_pki, d.port, "good"))
        assert d.wait_event("ocsp.query_failed", 1)
        assert '"ocsp_query_timeouts": 1' in stats(d)
    finally:
        slow.close()


def test_stale_answer_is_not_trusted(server_pki, gated, http_backends):
    canned = CannedResponder(stale_answer(server_pki, "good"))
    try:
        be = http_backends("a")
        d = gated(config(server_pki, [be], "hard", canned.url))
        assert not served(get(server_pki, d.port, "good"))
        assert d.wait_event("ocsp.query_failed", 1)
        ev = d.events("ocsp.query_failed")
        assert any("stale" in e["reason"] for e in ev), ev
        assert canned.requests == 1
    finally:
        canned.close()


def test_handshake_suspended_others_served(server_pki, pki, gated, http_backends, responder):
    """One worker; the responder answers after 2 s. While that handshake
    waits, connections to a second listener on the same worker are served;
    then the waiting one completes. Three handshakes with one certificate
    share one query."""
    slow = CannedResponder(proxy_to(responder), delay=2.0)
    try:
        be = http_backends("a")
        plain = tls_listener(pki, [be], name="plain", mutual_auth="off")
        d = gated(config(server_pki, [be], "hard", slow.url, extra_listeners=[plain]))
        plain_port = next(l["port"] for l in d_listeners(d) if l["name"] == "plain")
        results = []

        def waiting():
            results.append(get(server_pki, d.port, "slow"))
        threads = [threading.Thread(target=waiting) for _ in range(3)]
        for t in threads:
            t.start()
        assert wait_until(lambda: slow.requests >= 1, TIMEOUT)
        for _ in range(5):
            r = run(["curl", "-sS", "--max-time", "5", "-k",
                     "https://127.0.0.1:%d/" % plain_port], check=False, timeout=10)
            assert served(r), r.stderr
        assert any(t.is_alive() for t in threads), \
            "the OCSP handshakes ended before the other connections were served"
        for t in threads:
            t.join(TIMEOUT)
        assert len(results) == 3 and all(served(r) for r in results), results
        assert slow.requests == 1, "three handshakes for one certificate made %d queries" % \
            slow.requests
        s = stats(d)
        assert '"ocsp_queries_over_1s": 1' in s and '"ocsp_good": 3' in s, s
    finally:
        slow.close()


def d_listeners(d):
    import json
    out = run([KGATECTL, "--socket", os.path.join(d.state, "control.sock"), "-o", "json",
               "listener", "list"]).stdout
    lst = json.loads(out)
    lst = lst.get("listeners", lst) if isinstance(lst, dict) else lst
    for l in lst:
        l["port"] = int(l["address"].rsplit(":", 1)[1])
    return lst


def test_aia_url_from_kgatectl(server_pki, gated, http_backends):
    """--ocsp-url puts the responder into the certificate; without
    ocsp_url kgated asks there (nothing listens: hard refuses, naming the
    AIA's address in the log)."""
    text = run(["openssl", "x509", "-noout", "-ocsp_uri", "-in", server_pki.cert("aia")]).stdout
    assert text.startswith("http://127.0.0.1:"), text
    be = http_backends("a")
    d = gated(config(server_pki, [be], "hard"))
    assert not served(get(server_pki, d.port, "aia"))
    assert d.wait_event("ocsp.query_failed", 1)
    port = text.strip().split(":")[2].split("/")[0]
    assert any(port in e["responder"] for e in d.events("ocsp.query_failed"))
    # A certificate without AIA and no ocsp_url: no responder, refused.
    assert not served(get(server_pki, d.port, "good"))


def test_https_listener(server_pki, gated, http_backends, responder):
    be = http_backends("a")
    d = gated(config(server_pki, [be], "hard", responder.url, protocol="https"))
    assert served(get(server_pki, d.port, "good"))
    assert not served(get(server_pki, d.port, "revoked"))
    assert d.wait_event("tls.handshake_failed", 1)
    assert any("revoked" in x for x in failed_reasons(d)), failed_reasons(d)


def test_turned_on_live_and_shown(server_pki, gated, http_backends, responder):
    """listener update turns OCSP on for new handshakes; listener show
    and the state document carry the keys; a session from before does not
    resume past the check."""
    import json
    be = http_backends("a")
    d = gated(config(server_pki, [be], "off"))
    ctl = [KGATECTL, "--socket", os.path.join(d.state, "control.sock")]
    assert served(get(server_pki, d.port, "revoked")), "ocsp off: the index is not asked"
    run([*ctl, "listener", "update", "web", "--ocsp", "hard", "--ocsp-url", responder.url,
         "--ocsp-timeout-ms", "2000"])
    show = json.loads(run([*ctl, "-o", "json", "listener", "show", "web"]).stdout)
    show = show.get("listener", show)
    assert (show["ocsp"], show["ocsp_url"], show["ocsp_timeout_ms"]) == \
        ("hard", responder.url, 2000), show
    state = json.load(open(os.path.join(d.state, "state.json")))
    lst = next(x for x in state["listeners"] if x["name"] == "web")
    assert (lst["ocsp"], lst["ocsp_url"]) == ("hard", responder.url), lst
    assert not served(get(server_pki, d.port, "revoked"))
    assert served(get(server_pki, d.port, "good"))
    run([*ctl, "listener", "update", "web", "--ocsp-url", "none", "--ocsp", "off"])
    assert served(get(server_pki, d.port, "revoked"))


def test_bad_ocsp_url_refused(server_pki, gated, http_backends):
    import json
    be = http_backends("a")
    d = gated(config(server_pki, [be], "off"))
    ctl = [KGATECTL, "--socket", os.path.join(d.state, "control.sock")]
    for url, why in (("https://127.0.0.1/", "not an http:// URL"),
                     ("http://ocsp.example.com/", "IP address or localhost"),
                     ("http://127.0.0.1:99999/", "bad port")):
        r = run([*ctl, "listener", "update", "web", "--ocsp-url", url], check=False)
        assert r.returncode != 0 and "listeners[0].ocsp_url" in r.stderr and why in r.stderr, \
            r.stderr
    show = json.loads(run([*ctl, "-o", "json", "listener", "show", "web"]).stdout)
    assert show.get("listener", show)["ocsp_url"] is None


def staple_status(port):
    """openssl s_client -status against the listener: its stdout."""
    r = run(["openssl", "s_client", "-connect", "127.0.0.1:%d" % port, "-status",
             "-servername", "localhost"], check=False, timeout=TIMEOUT, input="")
    return r.stdout


def test_stapling(opki, gated, http_backends, tmp_path):
    """A server certificate naming its responder (kgatectl ca issue
    --ocsp-url): kgated fetches the response off the workers and staples
    it; listener show says so. Stopping the responder keeps the staple
    (it is still valid); a certificate without AIA is refused for
    stapling with the reason."""
    import json
    port = dead_port()
    out = str(tmp_path / "stapled")
    run([KGATECTL, "ca", "issue", "--dir", opki.dir, "--type", "server",
         "--subject", "/O=ocsp test/CN=localhost", "--san", "DNS:localhost,IP:127.0.0.1",
         "--days", "30", "--ocsp-url", "http://127.0.0.1:%d/" % port, "--out", out])
    # The CA's own index: it lists the server certificate just issued.
    opki_live = OcspPki(opki.root)
    opki_live.index = os.path.join(opki.dir, "index.txt")
    resp = Responder.__new__(Responder)
    resp.port = port
    resp.log = str(tmp_path / "responder.log")
    resp.proc = subprocess.Popen(
        ["openssl", "ocsp", "-index", opki_live.index, "-port", str(port), "-rsigner", opki.ca,
         "-rkey", opki.ca_key, "-CA", opki.ca, "-nmin", "10"],
        stdout=subprocess.DEVNULL, stderr=open(resp.log, "w"))
    try:
        assert wait_until(lambda: "waiting for OCSP client" in open(resp.log).read(), TIMEOUT)
        be = http_backends("a")
        opki.server_cert, opki.server_key = out + ".pem", out + ".key"
        cfg = config(opki, [be], "off", ocsp_stapling=True, mutual_auth="optional")
        d = gated(cfg)
        assert d.wait_event("ocsp.staple_updated", 1, timeout=TIMEOUT)
        text = staple_status(d.port)
        assert "OCSP Response Status: successful" in text and "Cert Status: good" in text, text
        ctl = [KGATECTL, "--socket", os.path.join(d.state, "control.sock")]
        show = json.loads(run([*ctl, "-o", "json", "listener", "show", "web"]).stdout)
        show = show.get("listener", show)
        assert show["ocsp_stapling"] is True
        st = show["ocsp_staple"]
        assert st["stapled"] and st["status"] == "good" and st["error"] is None, st
        assert st["responder"] == "http://127.0.0.1:%d/" % port, st
        resp.close()
        assert "Cert Status: good" in staple_status(d.port), "the staple went with the responder"
        # Without --status no staple is sent (the client did not ask).
        r = run(["openssl", "s_client", "-connect", "127.0.0.1:%d" % d.port], check=False,
                timeout=TIMEOUT, input="")
        assert "OCSP response" not in r.stdout
        # Off again: no staple.
        run([*ctl, "listener", "update", "web", "--ocsp-stapling", "false"])
        assert "OCSP response: no response sent" in staple_status(d.port)
    finally:
        resp.close()


def test_stapling_needs_an_aia(server_pki, gated, http_backends):
    be = http_backends("a")
    d = gated(config(server_pki, [be], "off"))
    ctl = [KGATECTL, "--socket", os.path.join(d.state, "control.sock")]
    r = run([*ctl, "listener", "update", "web", "--ocsp-stapling", "true"], check=False)
    assert r.returncode != 0 and "names no http OCSP responder" in r.stderr, r.stderr


def test_handshake_timeout_while_waiting(server_pki, gated, http_backends, responder):
    """The handshake deadline passes while the answer is pending: the
    connection is closed, its paused handshake is wound up (no leak: the
    sanitizer build checks at exit), and the late answer harms nothing."""
    slow = CannedResponder(proxy_to(responder), delay=2.0)
    try:
        be = http_backends("a")
        d = gated(config(server_pki, [be], "hard", slow.url, handshake_timeout_ms=300,
                         ocsp_timeout_ms=10000))
        assert not served(get(server_pki, d.port, "slow"))
        assert d.wait_event("tls.handshake_timeout", 1, timeout=TIMEOUT)
        assert wait_until(lambda: slow.requests == 1, TIMEOUT)
        time.sleep(2.5)  # the answer arrives for nobody
        # The answer was cached all the same: the next handshake is quick.
        assert served(get(server_pki, d.port, "slow"))
        assert '"ocsp_cache_hits": 1' in stats(d)
    finally:
        slow.close()


def test_fifty_waiting_handshakes_share_one_query(server_pki, gated, http_backends, responder):
    """50 clients with one certificate arrive while its answer is pending
    (the responder takes 1 s): one query, all 50 served, on 2 workers."""
    import ssl
    slow = CannedResponder(proxy_to(responder), delay=1.0)
    try:
        be = http_backends("a")
        d = gated(config(server_pki, [be], "hard", slow.url, workers=2))
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.load_cert_chain(server_pki.cert("shared"), server_pki.key("shared"))
        results = []

        def client():
            try:
                with socket.create_connection(("127.0.0.1", d.port), timeout=TIMEOUT) as raw:
                    with ctx.wrap_socket(raw) as s:
                        s.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
                        data = b""
                        while True:
                            chunk = s.recv(4096)
                            if not chunk:
                                break
                            data += chunk
                results.append(b"backend=a" in data)
            except (OSError, ssl.SSLError) as e:
                results.append(repr(e))
        threads = [threading.Thread(target=client) for _ in range(50)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(TIMEOUT)
        assert results.count(True) == 50, results
        # One query per worker at most (each worker has its own cache).
        assert 1 <= slow.requests <= 2, slow.requests
    finally:
        slow.close()
