"""https listeners: per-request round robin over one keep-alive connection,
client-identity headers, strict HTTP/1.1 handling, backend keep-alive pool,
large bodies. Backends here are keep-alive HTTP/1.1 servers that count
their connections and record every request they see."""
import base64
import hashlib
import http.server
import json
import os
import random
import socket
import ssl
import threading
import time
import urllib.parse
import urllib.request

import pytest

from conftest import (base_config, client_context, dead_port, run, tls_listener,
                      wait_until, worker_counter)

BLOCK = random.Random(7).randbytes(65521)  # prime length: never aligned to records


def pattern(size):
    """size bytes of a fixed pseudo-random pattern."""
    reps, rest = divmod(size, len(BLOCK))
    return BLOCK * reps + BLOCK[:rest]


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self):
        super().setup()
        with self.server.kg_lock:
            self.server.kg_conns += 1

    def _body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            h, n = hashlib.sha256(), 0
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b""):
                        pass
                    return n, h.hexdigest()
                left = size
                while left:
                    data = self.rfile.read(min(left, 1 << 20))
                    h.update(data)
                    left -= len(data)
                n += size
                self.rfile.readline()
        left = int(self.headers.get("Content-Length", "0"))
        h, n = hashlib.sha256(), left
        while left:
            data = self.rfile.read(min(left, 1 << 20))
            if not data:
                break
            h.update(data)
            left -= len(data)
        return n, h.hexdigest()

    def _record(self):
        with self.server.kg_lock:
            self.server.kg_requests.append(self.path)

    def _reply(self, body, chunked=False, ctype="application/json"):
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        if self.server.kg_close:
            self.send_header("Connection", "close")
            self.close_connection = True
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            step = 50000
            for i in range(0, len(body), step):
                part = body[i:i + step]
                self.wfile.write(b"%x\r\n" % len(part) + part + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
        else:
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

    def do_GET(self):
        self._record()
        url = urllib.parse.urlsplit(self.path)
        q = urllib.parse.parse_qs(url.query)
        if url.path in self.server.kg_routes:
            ctype, body = self.server.kg_routes[url.path]
            self._reply(body, ctype=ctype)
            return
        if url.path == "/who":
            self._reply(("backend=%s" % self.server.kg_name).encode(), ctype="text/plain")
            return
        if url.path == "/download":
            self._reply(pattern(int(q["size"][0])), chunked="chunked" in q,
                        ctype="application/octet-stream")
            return
        info = {"backend": self.server.kg_name, "path": self.path,
                "headers": [[k, v] for k, v in self.headers.items()]}
        self._reply(json.dumps(info).encode())

    do_HEAD = do_GET

    def do_POST(self):
        self._record()
        n, digest = self._body()
        self._reply(json.dumps({"backend": self.server.kg_name, "length": n,
                                "sha256": digest}).encode())

    def log_message(self, *args):
        pass


class _Server(http.server.ThreadingHTTPServer):
    request_queue_size = 128
    daemon_threads = True


class KeepAliveBackend:
    """HTTP/1.1 keep-alive backend: counts connections, records paths.
    GET /who answers "backend=NAME"; routes maps more paths to fixed
    (content type, body) answers."""

    def __init__(self, name, close=False, routes=None):
        self.server = _Server(("127.0.0.1", 0), _Handler)
        self.server.kg_name = name
        self.server.kg_lock = threading.Lock()
        self.server.kg_conns = 0
        self.server.kg_requests = []
        self.server.kg_close = close
        self.server.kg_routes = routes or {}
        self.address = "127.0.0.1:%d" % self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def conns(self):
        with self.server.kg_lock:
            return self.server.kg_conns

    @property
    def requests(self):
        with self.server.kg_lock:
            return list(self.server.kg_requests)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def backends():
    made = []

    def make(*names, close=False):
        out = [KeepAliveBackend(n, close=close) for n in names]
        made.extend(out)
        return out
    yield make
    for b in made:
        b.close()


def https_listener(pki, members, http=None, **extra):
    lst = tls_listener(pki, members, protocol="https", **extra)
    if http is not None:
        lst["http"] = http
    return lst


def start(spawn_kgated, pki, members, http=None, workers=1, **extra):
    d = spawn_kgated(base_config(pki, [https_listener(pki, members, http, **extra)],
                                 workers=workers))
    return d


def curl_urls(pki, port, paths, cert="client", extra=(), timeout=120, http="--http1.1"):
    """One curl process, one connection when it can keep it: URLs in a row.
    HTTP/1.1 unless http says otherwise ("--http2": ALPN h2, test_h2.py):
    curl offers h2 by default and the listener takes it."""
    cmd = ["curl", "-sS", http, "--max-time", "100", "--cacert", pki.ca,
           "--resolve", "localhost:%d:127.0.0.1" % port,
           "-w", "\\n@@connects=%{num_connects} status=%{http_code}\\n"]
    if cert:
        cmd += ["--cert", pki.cert(cert), "--key", pki.key(cert)]
    cmd += list(extra)
    cmd += ["https://localhost:%d%s" % (port, p) for p in paths]
    return run(cmd, check=False, timeout=timeout)


def parse_curl(out):
    """[(body, connects, status)] from curl_urls' output."""
    res = []
    chunks = out.split("\n@@")
    body = chunks[0]
    for c in chunks[1:]:
        meta, _, rest = c.partition("\n")
        kv = dict(x.split("=") for x in meta.split())
        res.append((body, int(kv["connects"]), int(kv["status"])))
        body = rest
    return res


def header_values(info, name):
    return [v for k, v in info["headers"] if k.lower() == name.lower()]


# ---------------------------------------------------------------- raw client

class Raw:
    """A TLS connection for hand-written requests."""

    def __init__(self, pki, port, cert="client", ctx=None):
        ctx = ctx or client_context(pki, cert)
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.s = ctx.wrap_socket(raw, server_hostname="localhost")
        self.buf = b""
        self.eof = False

    def send(self, data):
        self.s.sendall(data)

    def _fill(self):
        try:
            data = self.s.recv(65536)
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionResetError):
            data = b""
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def _line(self):
        while b"\r\n" not in self.buf:
            if not self._fill():
                raise AssertionError("connection closed; have %r" % self.buf[:200])
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def _exact(self, n):
        while len(self.buf) < n:
            if not self._fill():
                raise AssertionError("connection closed in a body")
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def response(self, head_request=False):
        """(status, {lower-name: value}, body) of the next response."""
        status = int(self._line().split()[1])
        headers = {}
        while True:
            line = self._line()
            if not line:
                break
            k, _, v = line.decode().partition(":")
            headers[k.strip().lower()] = v.strip()
        if head_request or status in (204, 304) or status < 200:
            return status, headers, b""
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while True:
                size = int(self._line().split(b";")[0], 16)
                if size == 0:
                    self._line()
                    return status, headers, body
                body += self._exact(size)
                self._line()
        if "content-length" in headers:
            return status, headers, self._exact(int(headers["content-length"]))
        while self._fill():
            pass
        body, self.buf = self.buf, b""
        return status, headers, body

    def closed(self, timeout=5.0):
        """True when the server closes the connection within timeout."""
        self.s.settimeout(timeout)
        try:
            while self._fill():
                pass
        except socket.timeout:
            return False
        return True

    def close(self):
        self.s.close()


@pytest.fixture
def raw_conns():
    made = []

    def make(*args, **kw):
        r = Raw(*args, **kw)
        made.append(r)
        return r
    yield make
    for r in made:
        r.close()


def cert_der(pki, name):
    with open(pki.cert(name)) as f:
        return ssl.PEM_cert_to_DER_cert(f.read())


# ---------------------------------------------------------------- tests

def test_requests_alternate_on_one_connection(pki, spawn_kgated, backends):
    a, b = backends("A", "B")
    d = start(spawn_kgated, pki, [a, b])
    res = curl_urls(pki, d.port, ["/r%d" % i for i in range(10)])
    assert res.returncode == 0, res.stderr
    out = parse_curl(res.stdout)
    assert len(out) == 10
    assert sum(c for _, c, _ in out) == 1, "curl needed more than one connection"
    names = [json.loads(body)["backend"] for body, _, status in out]
    assert all(status == 200 for _, _, status in out)
    assert names in (["A", "B"] * 5, ["B", "A"] * 5), names
    assert sorted(a.requests + b.requests) == sorted("/r%d" % i for i in range(10))


def test_identity_headers(pki, spawn_kgated, backends):
    a, = backends("A")
    d = start(spawn_kgated, pki, [a])
    res = curl_urls(pki, d.port, ["/id"])
    assert res.returncode == 0, res.stderr
    info = json.loads(parse_curl(res.stdout)[0][0])
    der = cert_der(pki, "client")
    want = {
        "X-Forwarded-For": "127.0.0.1",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Port": str(d.port),
        "X-Forwarded-Clientcert-subjectdn": "CN=client1,O=kgate test",
        "X-Forwarded-Clientcert-issuerdn": "CN=kgate test CA,O=kgate test,C=DE",
        "X-Forwarded-Clientcert-fingerprint": hashlib.sha1(der).hexdigest(),
        "X-Forwarded-Clientcert-clientverify": "SUCCESS",
        "Client-Cert": ":%s:" % base64.b64encode(der).decode(),
    }
    for name, value in want.items():
        assert header_values(info, name) == [value], name
    assert header_values(info, "Client-Cert-Chain") == []


def test_identity_headers_on_an_idle_connection(pki, spawn_kgated, backends, tmp_path):
    """The certificates a client sends besides its own are freed once the
    connection forwards, and the per-exchange memory once it has idled
    (100 ms): every request of the connection still carries the same
    identity, Client-Cert-Chain included, and parses as before."""
    a, = backends("A")
    d = start(spawn_kgated, pki, [a], http={"headers": [
        "Client-Cert", "Client-Cert-Chain", "X-Forwarded-Clientcert-subjectdn"]})
    # The client sends its certificate and, after it, the CA's.
    with open(pki.ca) as f:
        ca_pem = f.read()
    ca_der = ssl.PEM_cert_to_DER_cert(ca_pem)
    with open(pki.cert("client")) as f:
        bundle = str(tmp_path / "client-chain.pem")
        with open(bundle, "w") as out:
            out.write(f.read() + ca_pem)
    ctx = client_context(pki, cert=None)
    ctx.load_cert_chain(bundle, pki.key("client"))
    r = Raw(pki, d.port, ctx=ctx)
    leaf = ":%s:" % base64.b64encode(cert_der(pki, "client")).decode()
    for i in range(3):
        r.send(b"GET /idle%d HTTP/1.1\r\nHost: localhost\r\nX-Mine: %d\r\n\r\n" % (i, i))
        status, _, body = r.response()
        assert status == 200
        info = json.loads(body)
        assert header_values(info, "Client-Cert") == [leaf]
        assert header_values(info, "Client-Cert-Chain") == [
            ":%s:" % base64.b64encode(ca_der).decode()]
        assert header_values(info, "X-Forwarded-Clientcert-subjectdn") == [
            "CN=client1,O=kgate test"]
        assert header_values(info, "X-Mine") == [str(i)]
        time.sleep(0.3)  # past the idle trim
    r.close()
    assert a.requests == ["/idle0", "/idle1", "/idle2"]


def test_spoofed_identity_headers_are_replaced(pki, spawn_kgated, backends):
    a, = backends("A")
    d = start(spawn_kgated, pki, [a])
    spoof = ["X-Forwarded-For: 6.6.6.6", "x-forwarded-proto: http",
             "X-Forwarded-Port: 1", "X-Forwarded-Clientcert-subjectdn: CN=admin",
             "X-FORWARDED-CLIENTCERT-ISSUERDN: CN=evil", "X-Forwarded-Clientcert-fingerprint: 00",
             "X-Forwarded-Clientcert-clientverify: SUCCESS", "Client-Cert: :AAAA:",
             "Client-Cert-Chain: :AAAA:", "Connection: X-Hop", "X-Hop: gone",
             "Keep-Alive: timeout=5", "X-Kept: yes"]
    extra = []
    for h in spoof:
        extra += ["-H", h]
    res = curl_urls(pki, d.port, ["/spoof"], extra=extra)
    assert res.returncode == 0, res.stderr
    info = json.loads(parse_curl(res.stdout)[0][0])
    assert header_values(info, "X-Forwarded-For") == ["127.0.0.1"]
    assert header_values(info, "X-Forwarded-Proto") == ["https"]
    assert header_values(info, "X-Forwarded-Port") == [str(d.port)]
    assert header_values(info, "X-Forwarded-Clientcert-subjectdn") == ["CN=client1,O=kgate test"]
    assert header_values(info, "X-Forwarded-Clientcert-issuerdn") == [
        "CN=kgate test CA,O=kgate test,C=DE"]
    assert header_values(info, "X-Forwarded-Clientcert-fingerprint") == [
        hashlib.sha1(cert_der(pki, "client")).hexdigest()]
    assert header_values(info, "Client-Cert") == [
        ":%s:" % base64.b64encode(cert_der(pki, "client")).decode()]
    assert header_values(info, "Client-Cert-Chain") == []
    # hop-by-hop: Connection, what it names, Keep-Alive
    assert header_values(info, "X-Hop") == []
    assert header_values(info, "Connection") == []
    assert header_values(info, "Keep-Alive") == []
    assert header_values(info, "X-Kept") == ["yes"]


def test_header_selection_and_sha256(pki, spawn_kgated, backends):
    a, = backends("A")
    d = start(spawn_kgated, pki, [a], http={
        "headers": ["x-forwarded-for", "X-Forwarded-Clientcert-fingerprint"],
        "fingerprint": "sha256"})
    res = curl_urls(pki, d.port, ["/sel"], extra=["-H", "Client-Cert: :AAAA:",
                                                 "-H", "X-Forwarded-Proto: gopher"])
    info = json.loads(parse_curl(res.stdout)[0][0])
    assert header_values(info, "X-Forwarded-For") == ["127.0.0.1"]
    assert header_values(info, "X-Forwarded-Clientcert-fingerprint") == [
        hashlib.sha256(cert_der(pki, "client")).hexdigest()]
    for gone in ("Client-Cert", "X-Forwarded-Proto", "X-Forwarded-Port",
                 "X-Forwarded-Clientcert-subjectdn", "X-Forwarded-Clientcert-clientverify"):
        assert header_values(info, gone) == [], gone


def test_optional_mtls_without_certificate(pki, spawn_kgated, backends):
    a, = backends("A")
    d = start(spawn_kgated, pki, [a], mutual_auth="optional")
    res = curl_urls(pki, d.port, ["/anon"], cert=None,
                    extra=["-H", "X-Forwarded-Clientcert-subjectdn: CN=admin"])
    assert res.returncode == 0, res.stderr
    info = json.loads(parse_curl(res.stdout)[0][0])
    assert header_values(info, "X-Forwarded-Clientcert-clientverify") == ["NONE"]
    assert header_values(info, "X-Forwarded-Clientcert-subjectdn") == []
    assert header_values(info, "Client-Cert") == []


def test_no_client_certificate_is_refused(pki, spawn_kgated, backends):
    a, = backends("A")
    d = start(spawn_kgated, pki, [a])
    res = curl_urls(pki, d.port, ["/"], cert=None)
    assert res.returncode != 0
    assert a.requests == []


SMUGGLING = [
    ("CL and TE", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ("two Content-Length", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
     b"Content-Length: 41\r\n\r\nhelloGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ("Content-Length list", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\n"
     b"hello", 400),
    ("TE not chunked last", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip"
     b"\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ("TE without chunked", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked"
     b"\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ("TE empty", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\r\n\r\n"
     b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ("TE in HTTP/1.0", b"POST / HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ("TE with space before colon", b"POST / HTTP/1.1\r\nHost: x\r\n"
     b"Transfer-Encoding : chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n", 400),
    ("obs-fold", b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n", 400),
    ("obs-fold TE", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\r\n chunked\r\n"
     b"Content-Length: 3\r\n\r\n0\r\n\r\n", 400),
    ("bare LF", b"GET / HTTP/1.1\nHost: x\n\nGET /smuggled HTTP/1.1\nHost: x\n\n", 400),
    ("bare LF ends the head", b"GET / HTTP/1.1\r\nHost: x\r\n\nGET /smuggled HTTP/1.1\r\n"
     b"Host: x\r\n\r\n", 400),
    ("bare LF in a header", b"GET / HTTP/1.1\r\nHost: x\nX-A: b\r\n\r\n", 400),
    ("bare CR", b"GET / HTTP/1.1\r\nHost: x\rX-A: b\r\n\r\n", 400),
    ("bare CR before the request line", b"\r\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ("no Host", b"GET / HTTP/1.1\r\nX-A: b\r\n\r\n", 400),
    ("two Host", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    ("absolute form", b"GET http://evil/ HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ("HTTP/0.9", b"GET /\r\n\r\n", 400),
    ("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400),
    ("garbage", b"\x16\x03\x01\x00\xff garbage\r\n\r\n", 400),
    ("bad chunk size", b"POST /chunk HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"zz\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n", 400),
]


@pytest.mark.parametrize("name,request_bytes,status", SMUGGLING,
                         ids=[c[0] for c in SMUGGLING])
def test_smuggling_and_garbage_refused(pki, spawn_kgated, backends, raw_conns,
                                       name, request_bytes, status):
    a, = backends("A")
    d = start(spawn_kgated, pki, [a])
    r = raw_conns(pki, d.port)
    r.send(request_bytes)
    got, headers, _ = r.response()
    assert got == status
    assert headers.get("connection") == "close"
    assert r.closed()
    assert "/smuggled" not in a.requests
    # Only a body error comes after the head went out; a bad head never
    # reaches the backend.
    assert len(a.requests) <= (1 if name == "bad chunk size" else 0), a.requests
    assert d.alive()


def test_header_limits_431(pki, spawn_kgated, backends, raw_conns):
    a, = backends("A")
    d = start(spawn_kgated, pki, [a], http={"max_header_bytes": 4096, "max_headers": 20})
    r = raw_conns(pki, d.port)
    r.send(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 5000 + b"\r\n\r\n")
    assert r.response()[0] == 431
    assert r.closed()
    r = raw_conns(pki, d.port)
    r.send(b"GET / HTTP/1.1\r\nHost: x\r\n" +
           b"".join(b"X-%d: v\r\n" % i for i in range(30)) + b"\r\n")
    assert r.response()[0] == 431
    assert r.closed()
    r = raw_conns(pki, d.port)
    r.send(b"GET /fine HTTP/1.1\r\nHost: x\r\n" +
           b"".join(b"X-%d: v\r\n" % i for i in range(10)) + b"\r\n")
    assert r.response()[0] == 200
    assert a.requests == ["/fine"]


def test_request_timeout_408(pki, spawn_kgated, backends, raw_conns):
    a, = backends("A")
    d = start(spawn_kgated, pki, [a], http={"request_timeout_ms": 300})
    r = raw_conns(pki, d.port)
    r.send(b"GET / HTTP/1.1\r\nHost: x\r\n")  # head never ends
    status, headers, _ = r.response()
    assert status == 408
    assert r.closed()
    assert a.requests == []


def test_backends_down_502_and_unhealthy_503(pki, spawn_kgated, raw_conns):
    d = start(spawn_kgated, pki, ["127.0.0.1:%d" % dead_port(),
                                  "127.0.0.1:%d" % dead_port()])
    r = raw_conns(pki, d.port)
    r.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    status, headers, body = r.response()
    assert status == 502 and b"502" in body
    assert r.closed()

    d2 = start(spawn_kgated, pki, ["127.0.0.1:%d" % dead_port()],
               health_check={"type": "tcp", "interval_ms": 100, "timeout_ms": 100,
                             "unhealthy_threshold": 1, "unknown_is_up": False})
    r = raw_conns(pki, d2.port)
    r.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    status, _, body = r.response()
    assert status == 503 and b"503" in body
    assert r.closed()


def test_failed_member_is_skipped(pki, spawn_kgated, backends):
    a, = backends("A")
    d = start(spawn_kgated, pki, ["127.0.0.1:%d" % dead_port(), a])
    res = curl_urls(pki, d.port, ["/1", "/2", "/3", "/4"])
    out = parse_curl(res.stdout)
    assert [s for _, _, s in out] == [200] * 4
    assert sorted(a.requests) == ["/1", "/2", "/3", "/4"]


def test_connection_close_and_http10(pki, spawn_kgated, backends, raw_conns):
    a, b = backends("A", "B")
    d = start(spawn_kgated, pki, [a, b])
    r = raw_conns(pki, d.port)
    r.send(b"GET /c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    status, headers, _ = r.response()
    assert status == 200 and headers["connection"] == "close"
    assert r.closed()

    r = raw_conns(pki, d.port)
    r.send(b"GET /h10 HTTP/1.0\r\n\r\n")
    status, headers, body = r.response()
    assert status == 200 and json.loads(body)["path"] == "/h10"
    assert r.closed()

    r = raw_conns(pki, d.port)
    r.send(b"GET /k1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    status, headers, body1 = r.response()
    assert status == 200 and headers["connection"] == "keep-alive"
    r.send(b"GET /k2 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    status, headers, body2 = r.response()
    assert status == 200
    assert {json.loads(body1)["backend"], json.loads(body2)["backend"]} == {"A", "B"}


def test_pipelined_requests_answered_in_order(pki, spawn_kgated, backends, raw_conns):
    a, b = backends("A", "B")
    d = start(spawn_kgated, pki, [a, b])
    r = raw_conns(pki, d.port)
    r.send(b"".join(b"GET /p%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(5)) +
           b"HEAD /p5 HTTP/1.1\r\nHost: x\r\n\r\n"
           b"POST /p6 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
           b"GET /p7 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    seen = []
    for i in range(8):
        status, headers, body = r.response(head_request=(i == 5))
        assert status == 200
        if i == 5:
            assert body == b"" and int(headers["content-length"]) > 0
            seen.append(None)
        elif i == 6:
            info = json.loads(body)
            assert info["length"] == 3
            assert info["sha256"] == hashlib.sha256(b"abc").hexdigest()
            seen.append(info["backend"])
        else:
            info = json.loads(body)
            assert info["path"] == "/p%d" % i
            seen.append(info["backend"])
    assert r.closed()
    # Request i went to the first backend when i is even (the HEAD's
    # response, #5, says nothing about its backend).
    other = {"A": "B", "B": "A"}
    want = [seen[0] if i % 2 == 0 else other[seen[0]] for i in range(8)]
    assert [s for s in seen if s] == [w for w, s in zip(want, seen) if s], seen


def test_expect_100_continue(pki, spawn_kgated, backends, raw_conns):
    a, = backends("A")
    d = start(spawn_kgated, pki, [a])
    r = raw_conns(pki, d.port)
    body = pattern(100000)
    r.send(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
           b"Expect: 100-continue\r\n\r\n" % len(body))
    status, _, _ = r.response()
    assert status == 100
    r.send(body)
    status, _, resp = r.response()
    assert status == 200
    info = json.loads(resp)
    assert info["length"] == len(body)
    assert info["sha256"] == hashlib.sha256(body).hexdigest()


def test_backend_pool_reuses_connections(pki, spawn_kgated, backends):
    a, b = backends("A", "B")
    d = start(spawn_kgated, pki, [a, b])
    n = 30
    # Separate client connections, so only the backend side can reuse.
    for i in range(n):
        res = curl_urls(pki, d.port, ["/n%d" % i])
        assert res.returncode == 0 and parse_curl(res.stdout)[0][2] == 200
    assert len(a.requests) + len(b.requests) == n
    assert a.conns + b.conns <= 4, (a.conns, b.conns)


def test_two_send_responses_are_acknowledged_at_once(pki, spawn_kgated, backends, raw_conns):
    """These backends (Python's http.server) write a response's head and
    body in two sends with Nagle on: the body waits for the head's ACK.
    kgated acknowledges a response that arrived in part at once
    (TCP_QUICKACK) instead of after its 40 ms delayed ACK; the counter says
    it did, for each such response and no other (bench/slow_ack.py
    measures the latency)."""
    a, = backends("A")
    d = start(spawn_kgated, pki, [a])
    r = raw_conns(pki, d.port)
    n = 20
    for i in range(n):
        r.send(b"GET /who HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, body = r.response()
        assert (status, body) == (200, b"backend=A")
    d.terminate()
    acked = worker_counter(d, "http_quickack")
    # A response whose body caught up with its head in one read needs none.
    assert 1 <= acked <= n, acked


def test_one_send_responses_cost_no_quickack(pki, spawn_kgated, raw_backend, raw_conns):
    body = b"x" * 300
    be = raw_backend(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    d = start(spawn_kgated, pki, [be])
    r = raw_conns(pki, d.port)
    for _ in range(5):
        r.send(b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, got = r.response()
        assert (status, got) == (200, body)
    d.terminate()
    assert worker_counter(d, "http_requests") == 5
    assert worker_counter(d, "http_quickack") == 0


def _worker_connections(mport):
    text = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % mport,
                                  timeout=10).read().decode()
    return [int(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line.startswith("kgate_worker_connections{")]


def test_connections_spread_evenly_over_workers(pki, spawn_kgated, backends, raw_conns):
    """Each worker has its own SO_REUSEPORT socket and the kernel picks one
    by a hash of the addresses, which can leave one worker with far more of
    a few long-lived keep-alive connections: accepted connections are
    handed to the least loaded worker, so 64 connections opened one after
    another end up 32/32 (by the hash alone: about 1 chance in 10)."""
    a, b = backends("A", "B")
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    mport = s.getsockname()[1]
    s.close()
    d = spawn_kgated(base_config(pki, [https_listener(pki, [a, b])], workers=2),
                     args=["--metrics", "127.0.0.1:%d" % mport])
    conns = []
    for i in range(64):
        r = raw_conns(pki, d.port)
        r.send(b"GET /w%d HTTP/1.1\r\nHost: localhost\r\n\r\n" % i)
        status, _, _ = r.response()
        assert status == 200
        conns.append(r)
    assert _worker_connections(mport) == [32, 32]
    # Still served on both workers after the hand-over, and the counts
    # fall back as the connections close.
    for i, r in enumerate(conns):
        r.send(b"GET /again%d HTTP/1.1\r\nHost: localhost\r\n\r\n" % i)
        assert r.response()[0] == 200
        r.close()
    assert wait_until(lambda: _worker_connections(mport) == [0, 0], 10), \
        _worker_connections(mport)
    assert len(a.requests) + len(b.requests) == 128


def test_backend_closing_connections_are_not_reused(pki, spawn_kgated, backends):
    a, b = backends("A", "B", close=True)
    d = start(spawn_kgated, pki, [a, b])
    res = curl_urls(pki, d.port, ["/c%d" % i for i in range(6)])
    out = parse_curl(res.stdout)
    assert [s for _, _, s in out] == [200] * 6
    assert sum(c for _, c, _ in out) == 1
    assert a.conns + b.conns == 6


SIZE = 64 << 20


def upload(pki, port, tmp_path, chunked, size=SIZE, timeout=300):
    """POSTs size bytes of the pattern through kgated; the backend answers
    with the length and SHA-256 it received."""
    path = tmp_path / "up.bin"
    data = pattern(size)
    path.write_bytes(data)
    extra = ["--data-binary", "@%s" % path, "-H", "Content-Type: application/octet-stream"]
    if chunked:
        extra += ["-H", "Transfer-Encoding: chunked"]
    res = curl_urls(pki, port, ["/upload"], extra=extra, timeout=timeout)
    assert res.returncode == 0, res.stderr
    body, _, status = parse_curl(res.stdout)[0]
    assert status == 200
    info = json.loads(body)
    assert info["length"] == size
    assert info["sha256"] == hashlib.sha256(data).hexdigest()


def download(pki, port, tmp_path, chunked, size=SIZE, timeout=300):
    """GETs size bytes of the pattern through kgated and checks them."""
    out = tmp_path / "down.bin"
    q = "/download?size=%d%s" % (size, "&chunked=1" if chunked else "")
    cmd = ["curl", "-sS", "--http1.1", "--max-time", str(timeout - 100), "--cacert", pki.ca,
           "--resolve", "localhost:%d:127.0.0.1" % port,
           "--cert", pki.cert("client"), "--key", pki.key("client"),
           "-o", str(out), "-w", "%{http_code}", "https://localhost:%d%s" % (port, q)]
    res = run(cmd, check=False, timeout=timeout)
    assert res.returncode == 0, res.stderr
    assert res.stdout == "200"
    assert out.stat().st_size == size
    h = hashlib.sha256()
    with open(out, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    assert h.hexdigest() == hashlib.sha256(pattern(size)).hexdigest()


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_upload_64mib(pki, spawn_kgated, backends, tmp_path, chunked):
    a, = backends("A")
    d = start(spawn_kgated, pki, [a])
    upload(pki, d.port, tmp_path, chunked)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_download_64mib(pki, spawn_kgated, backends, tmp_path, chunked):
    a, = backends("A")
    d = start(spawn_kgated, pki, [a])
    download(pki, d.port, tmp_path, chunked)


def test_access_log(pki, spawn_kgated, backends):
    a, = backends("A")
    d = start(spawn_kgated, pki, [a])
    curl_urls(pki, d.port, ["/quiet"])
    assert d.events("http.access") == [], d.log()
    d2 = start(spawn_kgated, pki, [a], name="logged", http={"access_log": "on"})
    curl_urls(pki, d2.port, ["/x1", "/x2"])
    ev = d2.wait_event("http.access", 2)[0]
    assert (ev["listener"], ev["method"], ev["target"], ev["status"]) == \
        ("logged", "GET", "/x1", "200"), ev
    assert ev["backend"] == a.address and "CN=client1" in ev["subject"], ev


@pytest.mark.parametrize("listener,message", [
    ({"protocol": "tls", "http": {}}, "only for protocol \"https\""),
    ({"http": {"headers": ["X-Nope"]}}, "unknown header"),
    ({"http": {"fingerprint": "md5"}}, "must be one of"),
    ({"forwarding": "sockmap"}, "only for protocol \"tcp\""),
    ({"http": {"max_header_bytes": 10}}, "must be 1024-65536"),
])
def test_config_errors(pki, tmp_path, listener, message):
    lst = https_listener(pki, ["127.0.0.1:9"])
    lst.update(listener)
    cfg = tmp_path / "bad.json"
    cfg.write_text(json.dumps(base_config(pki, [lst])))
    from conftest import KGATED
    res = run([KGATED, "--check", "--config", str(cfg)], check=False)
    if res.returncode == 0:
        res = run([KGATED, "--config", str(cfg)], check=False, timeout=10)
    assert res.returncode != 0
    assert message in res.stderr, res.stderr


class RawBackend:
    """One-connection-at-a-time backend with a fixed answer to every
    request head: close-delimited bodies, or no answer at all."""

    def __init__(self, answer):
        self.answer = answer
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.address = "127.0.0.1:%d" % self.sock.getsockname()[1]
        self.heads = []
        self.stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            with conn:
                conn.settimeout(5)
                data = b""
                try:
                    while b"\r\n\r\n" not in data:
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                except OSError:
                    continue
                self.heads.append(data)
                if self.answer:
                    conn.sendall(self.answer)

    def close(self):
        self.stop = True
        self.thread.join(2)
        self.sock.close()


@pytest.fixture
def raw_backend():
    made = []

    def make(answer):
        b = RawBackend(answer)
        made.append(b)
        return b
    yield make
    for b in made:
        b.close()


def test_close_delimited_response(pki, spawn_kgated, raw_backend, raw_conns):
    body = pattern(300000)
    be = raw_backend(b"HTTP/1.1 200 OK\r\nContent-Type: x/y\r\n\r\n" + body)
    d = start(spawn_kgated, pki, [be])
    r = raw_conns(pki, d.port)
    r.send(b"GET /cd HTTP/1.1\r\nHost: x\r\n\r\n")
    status, headers, got = r.response()
    assert status == 200
    assert headers["connection"] == "close"
    assert got == body


def test_backend_closing_without_answer_gets_502(pki, spawn_kgated, raw_backend, raw_conns):
    be = raw_backend(None)
    d = start(spawn_kgated, pki, [be])
    r = raw_conns(pki, d.port)
    r.send(b"GET /silent HTTP/1.1\r\nHost: x\r\n\r\n")
    status, headers, body = r.response()
    assert status == 502 and b"502" in body
    assert r.closed()
    assert len(be.heads) == 1 and be.heads[0].startswith(b"GET /silent HTTP/1.1\r\n")


def test_malformed_backend_response_gets_502(pki, spawn_kgated, raw_backend, raw_conns):
    be = raw_backend(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab")
    d = start(spawn_kgated, pki, [be])
    r = raw_conns(pki, d.port)
    r.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert r.response()[0] == 502
    assert r.closed()


def test_upgrade_request_is_served_as_plain_http(pki, spawn_kgated, backends, raw_conns):
    a, = backends("A")
    d = start(spawn_kgated, pki, [a])
    r = raw_conns(pki, d.port)
    # A websocket upgrade reaches the backend (test_websocket.py); one it
    # answers with 200 is a plain response, and the pipelined request
    # behind it is served as HTTP. Other upgrades are dropped.
    r.send(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
           b"GET /h2c HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
           b"GET /after HTTP/1.1\r\nHost: x\r\n\r\n")
    status, _, body = r.response()
    assert status == 200
    info = json.loads(body)
    assert header_values(info, "Upgrade") == ["websocket"]
    assert header_values(info, "Connection") == ["upgrade"]
    status, _, body = r.response()
    info = json.loads(body)
    assert status == 200 and info["path"] == "/h2c"
    assert header_values(info, "Upgrade") == [] and header_values(info, "Connection") == []
    status, _, body = r.response()
    assert status == 200 and json.loads(body)["path"] == "/after"


def test_https_listener_created_and_updated_live(pki, spawn_kgated, backends, tmp_path):
    from conftest import KGATECTL
    a, b = backends("A", "B")
    state = str(tmp_path / "state")
    d = spawn_kgated(base_config(pki, []), args=["--state-dir", state])
    ctl = [KGATECTL, "--socket", os.path.join(state, "control.sock")]
    run(ctl + ["listener", "create", "--name", "live", "--protocol", "https", "--port", "0",
               "--bind", "127.0.0.1", "--cert", "web", "--ca", "clients",
               "--http", '{"headers": ["X-Forwarded-Proto"], "access_log": "on"}',
               "--backend", a.address, "--backend", b.address])
    show = json.loads(run(ctl + ["-o", "json", "listener", "show", "live"]).stdout)
    assert show["protocol"] == "https"
    port = int(show["address"].rsplit(":", 1)[1])
    out = parse_curl(curl_urls(pki, port, ["/l1", "/l2"]).stdout)
    infos = [json.loads(body) for body, _, _ in out]
    assert {i["backend"] for i in infos} == {"A", "B"}
    assert header_values(infos[0], "X-Forwarded-Proto") == ["https"]
    assert header_values(infos[0], "X-Forwarded-For") == []
    assert d.wait_event("http.access", 2, listener="live")
    bad = run(ctl + ["listener", "update", "live", "--http", '{"fingerprint": "md5"}'],
              check=False)
    assert bad.returncode != 0 and "fingerprint" in bad.stderr
    run(ctl + ["listener", "update", "live", "--http", "none"])
    info = json.loads(parse_curl(curl_urls(pki, port, ["/l3"]).stdout)[0][0])
    assert header_values(info, "X-Forwarded-For") == ["127.0.0.1"]
    stats = json.loads(run(ctl + ["-o", "json", "stats"]).stdout)
    assert stats["connections"]["http_requests"] == 3
    assert stats["connections"]["path_http-userspace-tls"] == 2
    assert stats["connections"]["http_errors"] == 0


def kernel_has_ktls():
    return os.path.exists("/proc/net/tls_stat")


def test_auto_picks_the_path_the_kernel_allows(pki, spawn_kgated, backends, tmp_path):
    """auto: http-ktls-splice with kernel TLS, http-userspace-tls without
    it (this CI kernel); the plan shows in the start-up log, the stop line,
    kgatectl stats and kgate_connections_by_path_total."""
    from conftest import KGATECTL
    a, b = backends("A", "B")
    mport = dead_port()  # free now: the metrics endpoint binds it
    state = str(tmp_path / "state")
    d = spawn_kgated(base_config(pki, [https_listener(pki, [a, b])]),
                     args=["--state-dir", state, "--metrics", "127.0.0.1:%d" % mport])
    want, other = (("http-ktls-splice", "http-userspace-tls") if kernel_has_ktls()
                   else ("http-userspace-tls", "http-ktls-splice"))
    assert d.events("listener.plan", listener="web", forwarding=want), d.log()
    res = curl_urls(pki, d.port, ["/p1", "/p2"])
    assert res.returncode == 0, res.stderr
    assert [s for _, _, s in parse_curl(res.stdout)] == [200, 200]
    stats = json.loads(run([KGATECTL, "--socket", os.path.join(state, "control.sock"),
                            "-o", "json", "stats"]).stdout)
    assert stats["connections"]["path_" + want] == 1, stats
    assert stats["connections"]["path_" + other] == 0, stats
    import urllib.request
    text = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % mport,
                                  timeout=10).read().decode()
    assert 'kgate_connections_by_path_total{path="%s"} 1' % want in text, text
    assert 'kgate_connections_by_path_total{path="%s"} 0' % other in text, text
    if not kernel_has_ktls():
        # Nothing can be spliced over userspace TLS.
        assert "kgate_http_spliced_bytes_backend_to_client_total 0" in text, text
    assert d.terminate() == 0
    from conftest import path_count
    assert path_count(d, want) == 1 and path_count(d, other) == 0, d.log()


@pytest.mark.skipif(kernel_has_ktls(), reason="this kernel has kTLS: the plan is possible")
def test_forcing_ktls_splice_without_ktls_is_refused(pki, tmp_path):
    """forwarding "splice" names http-ktls-splice; without kernel TLS that
    is a start-up error saying why, never a silent fallback."""
    from conftest import KGATED
    lst = https_listener(pki, ["127.0.0.1:9"], forwarding="splice")
    cfg = tmp_path / "forced.json"
    cfg.write_text(json.dumps(base_config(pki, [lst])))
    for args in (["--check"], ["--user", "root"]):
        res = run([KGATED, *args, "--config", str(cfg)], check=False, timeout=30)
        assert res.returncode != 0, res.stdout
        assert "listeners[0].forwarding" in res.stderr, res.stderr
        assert "http-ktls-splice" in res.stderr and "needs kernel TLS" in res.stderr, res.stderr
        assert "TLS ULP" in res.stderr, res.stderr
