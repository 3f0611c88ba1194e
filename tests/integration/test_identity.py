"""What backends believe about the client on https listeners (issue 21):
no header a client sends can change what a backend reads as the client's
certificate, address or scheme, whatever spelling it uses.

The backends are the kinds that trust these headers: two real WSGI servers
from Debian (the standard library's wsgiref and gunicorn 20.1), which turn
'-' and '_' into the same environ key (HTTP_X_FORWARDED_FOR) and join
duplicates with ',', and a plain header reader that records the header
lines exactly as they arrived. Each echoes what it saw as JSON."""
import json
import os
import socket
import subprocess
import threading
import urllib.request
import wsgiref.simple_server

import pytest

import wsgi_echo
from conftest import KGATECTL, base_config, dead_port, run, wait_until
from test_https import KeepAliveBackend, Raw, https_listener

SUBJECT = "CN=client1,O=kgate test"
ISSUER = "CN=kgate test CA,O=kgate test,C=DE"
# Values no kgate header ever carries: any of them reaching a backend is a
# successful spoof.
FORGED = ("6.6.6.6", "7.7.7.7", "CN=admin", "spoof", "gopher")

# The issue's spoofs, the reserved names in other spellings, and copies of
# the real names (which kgate replaced before too).
SPOOFS_UNDERSCORE = [
    "X_Forwarded_Clientcert_subjectdn: CN=admin",
    "X_Forwarded_For: 7.7.7.7",
    "x_forwarded_proto: gopher",
    "CLIENT_CERT: :c3Bvb2Y=:",
]
SPOOFS_DASH = [
    "X-Forwarded-Clientcert-Whatever: spoof",
    "X-Forwarded-Clientcert-Serial: spoof",
    "Forwarded: for=6.6.6.6",
    "X-Real-IP: 6.6.6.6",
    "X-Forwarded-For: 6.6.6.6",
    "X-FORWARDED-CLIENTCERT-SUBJECTDN: CN=admin",
    "Client-Cert-Whatever: spoof",
]

class _QuietHandler(wsgiref.simple_server.WSGIRequestHandler):
    def log_message(self, *args):
        pass


class WsgirefBackend:
    """The standard library's WSGI server (Debian's python3.11)."""
    kind = "wsgiref"

    def __init__(self, tmp_path):
        self.server = wsgiref.simple_server.make_server("127.0.0.1", 0, wsgi_echo.app,
                                                        handler_class=_QuietHandler)
        self.address = "127.0.0.1:%d" % self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class GunicornBackend:
    """gunicorn from Debian's package, one sync worker, started and stopped
    by its PID."""
    kind = "gunicorn"

    def __init__(self, tmp_path):
        port = dead_port()
        self.address = "127.0.0.1:%d" % port
        self.log = open(str(tmp_path / "gunicorn.log"), "w")
        self.proc = subprocess.Popen(
            ["/usr/bin/python3", "-m", "gunicorn", "--bind", self.address, "--workers", "1",
             "--chdir", os.path.dirname(os.path.abspath(wsgi_echo.__file__)), "wsgi_echo:app"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log)

        def accepting():
            assert self.proc.poll() is None, open(self.log.name).read()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return True
            except OSError:
                return False
        assert wait_until(accepting, 20), open(self.log.name).read()

    def close(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.log.close()


class RawBackend:
    """Records header lines as they arrived (test_https's backend)."""
    kind = "raw"

    def __init__(self, tmp_path):
        self.b = KeepAliveBackend("raw")
        self.address = self.b.address

    def close(self):
        self.b.close()


BACKENDS = {"wsgiref": WsgirefBackend, "gunicorn": GunicornBackend, "raw": RawBackend}


@pytest.fixture(params=sorted(BACKENDS))
def backend(request, tmp_path):
    if request.param == "gunicorn" and subprocess.run(
            ["/usr/bin/python3", "-c", "import gunicorn"], capture_output=True).returncode:
        assert os.environ.get("CI") != "true", "gunicorn missing in CI (tests/install-deps.sh)"
        pytest.skip("gunicorn is not installed (tests/install-deps.sh test installs it)")
    b = BACKENDS[request.param](tmp_path)
    yield b
    b.close()


def start(spawn_kgated, pki, backend, http=None, args=()):
    lst = https_listener(pki, [backend], http)
    return spawn_kgated(base_config(pki, [lst]), args=args)


def request(pki, port, headers, path="/echo", conn=None):
    """One GET with extra header lines (sent as written), on conn or a new
    connection: (status, parsed JSON body or None, the connection)."""
    r = conn or Raw(pki, port)
    head = "GET %s HTTP/1.1\r\nHost: localhost\r\n%s\r\n" % (
        path, "".join(h + "\r\n" for h in headers))
    r.send(head.encode())
    status, _, body = r.response()
    return status, (json.loads(body) if status == 200 else None), r


def seen_by(backend, info):
    """{NAME: value} as the backend reads headers: a WSGI environ's HTTP_*
    keys, or the raw reader's lines with the same folding a WSGI server
    applies (upper case, '-' as '_', duplicates joined)."""
    if backend.kind == "raw":
        out = {}
        for k, v in info["headers"]:
            key = k.upper().replace("-", "_")
            out[key] = out[key] + "," + v if key in out else v
        return out
    return {k[5:]: v for k, v in info.items() if k.startswith("HTTP_")}


def assert_only_kgate_identity(backend, info, port, raw_names=None):
    h = seen_by(backend, info)
    assert h.get("X_FORWARDED_FOR") == "127.0.0.1", h
    assert h.get("X_FORWARDED_PROTO") == "https", h
    assert h.get("X_FORWARDED_PORT") == str(port), h
    assert h.get("X_FORWARDED_CLIENTCERT_SUBJECTDN") == SUBJECT, h
    assert h.get("X_FORWARDED_CLIENTCERT_ISSUERDN") == ISSUER, h
    assert h.get("X_FORWARDED_CLIENTCERT_CLIENTVERIFY") == "SUCCESS", h
    for name in ("X_FORWARDED_CLIENTCERT_WHATEVER", "X_FORWARDED_CLIENTCERT_SERIAL",
                 "FORWARDED", "X_REAL_IP", "CLIENT_CERT_WHATEVER", "CLIENT_CERT_CHAIN"):
        assert name not in h, (name, h)
    for value in h.values():
        for forged in FORGED:
            assert forged not in value, (forged, h)
    if backend.kind == "raw":
        # Each of kgate's names exactly once, in kgate's spelling.
        for name in ("X-Forwarded-For", "X-Forwarded-Clientcert-subjectdn", "Client-Cert"):
            assert [k for k, _ in info["headers"] if k.lower() == name.lower()] == [name]
        assert not [k for k, _ in info["headers"] if "_" in k and k.upper().startswith(
            ("X_FORWARDED", "CLIENT_CERT"))], info["headers"]


@pytest.mark.parametrize("setting", ["drop", "allow"])
def test_spoofs_never_reach_the_backend(pki, spawn_kgated, backend, setting):
    d = start(spawn_kgated, pki, backend, {"underscores_in_headers": setting})
    # every spoof at once, then each alone (one may hide another)
    cases = [SPOOFS_UNDERSCORE + SPOOFS_DASH] + [[s] for s in SPOOFS_UNDERSCORE + SPOOFS_DASH]
    for spoofs in cases:
        for order in (spoofs, spoofs[::-1]):
            status, info, r = request(pki, d.port, order)
            r.close()
            assert status == 200, (order, status)
            assert_only_kgate_identity(backend, info, d.port)


def test_reject_refuses_underscore_names_and_strips_the_rest(pki, spawn_kgated, backend):
    d = start(spawn_kgated, pki, backend, {"underscores_in_headers": "reject"})
    for spoof in SPOOFS_UNDERSCORE + ["X_Custom: 1"]:
        status, _, r = request(pki, d.port, [spoof])
        assert status == 400, spoof
        assert r.closed()
        r.close()
    status, info, r = request(pki, d.port, SPOOFS_DASH)
    r.close()
    assert status == 200
    assert_only_kgate_identity(backend, info, d.port)


def test_underscore_setting_decides_for_other_names(pki, spawn_kgated, backend):
    """Names kgate does not reserve: drop removes them, allow passes them."""
    for setting, passes in (("drop", False), ("allow", True)):
        d = start(spawn_kgated, pki, backend, {"underscores_in_headers": setting})
        status, info, r = request(pki, d.port, ["X_Custom: underscored", "X-Plain: dashed"])
        r.close()
        assert status == 200
        h = seen_by(backend, info)
        assert h.get("X_PLAIN") == "dashed", h
        assert ("X_CUSTOM" in h) == passes, (setting, h)
        d.terminate()


def test_forwarded_and_x_real_ip_set_by_kgate_when_asked(pki, spawn_kgated, backend):
    d = start(spawn_kgated, pki, backend, {"headers": [
        "X-Forwarded-For", "Forwarded", "X-Real-IP", "X-Forwarded-Clientcert-subjectdn"]})
    status, info, r = request(pki, d.port, ["Forwarded: for=6.6.6.6;proto=http",
                                            "X_Real_IP: 6.6.6.6", "X-Real-Ip: 6.6.6.6"])
    r.close()
    assert status == 200
    h = seen_by(backend, info)
    assert h["FORWARDED"] == 'for=127.0.0.1;proto=https;by="127.0.0.1:%d"' % d.port, h
    assert h["X_REAL_IP"] == "127.0.0.1", h
    assert h["X_FORWARDED_FOR"] == "127.0.0.1", h
    assert h["X_FORWARDED_CLIENTCERT_SUBJECTDN"] == SUBJECT, h
    # not selected: removed, never passed through
    assert "X_FORWARDED_PROTO" not in h and "CLIENT_CERT" not in h, h


@pytest.mark.parametrize("trusted", [["127.0.0.1"], ["127.0.0.0/8", "::1"], ["127.0.0.2/32"]])
def test_trusted_proxies_append_to_x_forwarded_for(pki, spawn_kgated, backend, trusted):
    d = start(spawn_kgated, pki, backend, {
        "trusted_proxies": trusted,
        "headers": ["X-Forwarded-For", "Forwarded", "X-Forwarded-Clientcert-subjectdn"]})
    status, info, r = request(pki, d.port, ["X-Forwarded-For: 192.0.2.7",
                                            "X_Forwarded_For: 7.7.7.7",
                                            "Forwarded: for=192.0.2.7",
                                            "X-Forwarded-Clientcert-subjectdn: CN=admin"])
    r.close()
    assert status == 200
    h = seen_by(backend, info)
    hop = 'for=127.0.0.1;proto=https;by="127.0.0.1:%d"' % d.port
    if "127.0.0.2/32" in trusted:  # 127.0.0.1 is not in the list: replaced
        assert h["X_FORWARDED_FOR"] == "127.0.0.1", h
        assert h["FORWARDED"] == hop, h
    else:
        assert h["X_FORWARDED_FOR"] == "192.0.2.7, 127.0.0.1", h
        assert h["FORWARDED"] == "for=192.0.2.7, " + hop, h
    # Trust covers the address chain only, never the certificate.
    assert h["X_FORWARDED_CLIENTCERT_SUBJECTDN"] == SUBJECT, h
    assert "7.7.7.7" not in json.dumps(h)


def test_drops_are_counted_and_logged_once_per_connection(pki, spawn_kgated, tmp_path):
    b = KeepAliveBackend("raw")
    try:
        mport = dead_port()
        state = str(tmp_path / "state")
        lst = https_listener(pki, [b], {"underscores_in_headers": "drop"})
        d = spawn_kgated(base_config(pki, [lst], log_level="debug"),
                         args=["--state-dir", state, "--metrics", "127.0.0.1:%d" % mport])
        conn = None
        for _ in range(2):  # two requests on one connection
            status, _, conn = request(pki, d.port, ["X_Forwarded_For: 7.7.7.7",
                                                    "Forwarded: for=6.6.6.6",
                                                    "X_Custom: 1"], conn=conn)
            assert status == 200
        conn.close()
        status, _, r = request(pki, d.port, ["X-Forwarded-Clientcert-Serial: spoof"])
        r.close()
        assert status == 200
        # refused under reject, on a listener changed at run time
        lst["http"]["underscores_in_headers"] = "reject"
        run([KGATECTL, "--socket", os.path.join(state, "control.sock"), "listener",
             "update", "web", "--http", json.dumps(lst["http"])])
        status, _, r = request(pki, d.port, ["X_Custom: 1"])
        r.close()
        assert status == 400
        out = run([KGATECTL, "--socket", os.path.join(state, "control.sock"), "-o", "json",
                   "stats"]).stdout
        conns = json.loads(out)["connections"]
        assert conns["http_headers_dropped_reserved"] == 5, conns
        assert conns["http_headers_dropped_underscore"] == 2, conns
        assert conns["http_requests_rejected_underscore"] == 1, conns
        text = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % mport,
                                      timeout=10).read().decode()
        assert 'kgate_http_headers_dropped_total{reason="reserved"} 5\n' in text
        assert 'kgate_http_headers_dropped_total{reason="underscore"} 2\n' in text
        assert 'kgate_http_requests_rejected_total{reason="underscore"} 1\n' in text
        events = d.events("http.header_dropped")
        # one per connection: the keep-alive one, the serial one, the refused one
        assert len(events) == 3, events
        assert events[0]["header"] == "X_Forwarded_For" and events[0]["reason"] == "reserved"
        assert events[0]["action"] == "drop" and events[0]["listener"] == "web"
        assert events[1]["header"] == "X-Forwarded-Clientcert-Serial"
        assert events[2]["header"] == "X_Custom" and events[2]["action"] == "reject"
        assert events[2]["reason"] == "underscore"
        assert all(e["level"] == "debug" for e in events)
    finally:
        b.close()


def test_chunked_request_with_reserved_trailer_is_refused(pki, spawn_kgated):
    """Trailers pass through with the body; a backend that merges them into
    the header set would take a reserved one for kgate's: refused (400),
    and the backend never gets that request whole. Any other trailer
    passes."""
    b = KeepAliveBackend("raw")
    try:
        d = start(spawn_kgated, pki, b)
        head = b"POST /t HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
        for trailer, refused in ((b"X_Forwarded_Clientcert_subjectdn: CN=admin", True),
                                 (b"Checksum: abc", False)):
            r = Raw(pki, d.port)
            r.send(head + b"3\r\nabc\r\n0\r\n" + trailer + b"\r\n\r\n")
            status, _, body = r.response()
            r.close()
            assert status == (400 if refused else 200), trailer
            if not refused:
                assert json.loads(body)["length"] == 3, body
        # The refused one's head had gone out (bodies stream), but it never
        # completed: the backend answered only the other.
        assert d.count_event("http.error_response", status="400",
                             reason="a trailer named like a reserved identity header") == 1
    finally:
        b.close()
