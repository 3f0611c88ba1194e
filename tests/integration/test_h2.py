"""HTTP/2 on https listeners (issue 17, front end): ALPN, streams balanced
one by one to HTTP/1.1 backends, identity on every stream, bodies both ways
with flow control, smuggling refused at the h2 -> h1 boundary, backend
failures, GOAWAY on drain, the access log's proto.

Clients: curl --http2 where it suffices, else python3-h2 (Debian's) over
an ssl socket, with its own header validation off so that it can send what
an attacker would."""
import hashlib
import http.server
import json
import signal
import subprocess
import socket
import ssl
import threading
import time

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import pytest

from conftest import (KGATED, ThreadedServer, base_config, dead_port, path_count, run,
                      wait_until, worker_counter)
from test_control import gated  # noqa: F401
from test_https import KeepAliveBackend, backends, header_values, https_listener, pattern  # noqa: F401
from test_identity import (FORGED, SPOOFS_DASH, SPOOFS_UNDERSCORE, GunicornBackend, RawBackend,
                           WsgirefBackend, assert_only_kgate_identity)

TIMEOUT = 30


class H2Client:
    """One HTTP/2 connection with the client certificate: requests on
    streams of their own, answers collected per stream."""

    def __init__(self, pki, port, cert="client"):
        ctx = ssl.create_default_context(cafile=pki.ca)
        ctx.load_cert_chain(pki.cert(cert), pki.key(cert))
        ctx.set_alpn_protocols(["h2"])
        raw = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.sock = ctx.wrap_socket(raw, server_hostname="localhost")
        assert self.sock.selected_alpn_protocol() == "h2"
        cfg = h2.config.H2Configuration(client_side=True, validate_outbound_headers=False,
                                        normalize_outbound_headers=False,
                                        validate_inbound_headers=False)
        self.conn = h2.connection.H2Connection(config=cfg)
        self.conn.initiate_connection()
        self.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20})
        self.conn.increment_flow_control_window(16 << 20)
        self.port = port
        self.streams = {}
        self.goaway = None
        self.closed = False
        self.flush()

    def flush(self):
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def request(self, path, method="GET", headers=(), body=None, end=True,
                authority=None):
        sid = self.conn.get_next_available_stream_id()
        hdrs = [(":method", method), (":scheme", "https"),
                (":authority", authority or "localhost:%d" % self.port), (":path", path)]
        hdrs += list(headers)
        self.conn.send_headers(sid, hdrs, end_stream=end and body is None)
        self.streams[sid] = {"status": None, "headers": [], "data": bytearray(), "done": False,
                             "reset": None, "trailers": None, "interim": []}
        self.flush()
        if body is not None:
            self.send_body(sid, body, end=end)
        return sid

    def send_body(self, sid, body, end=True):
        """Sends body respecting the windows, reading meanwhile."""
        view = memoryview(body)
        while view:
            room = min(self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size)
            if room <= 0:
                self.pump(until=lambda: self.conn.local_flow_control_window(sid) > 0
                          or self.streams[sid]["done"])
                if self.streams[sid]["done"]:
                    return
                continue
            self.conn.send_data(sid, bytes(view[:room]))
            view = view[room:]
            self.flush()
        if end:
            self.conn.end_stream(sid)
            self.flush()

    def pump(self, until, timeout=TIMEOUT):
        deadline = time.monotonic() + timeout
        while not until():
            if self.closed:
                return
            self.sock.settimeout(max(0.05, deadline - time.monotonic()))
            if time.monotonic() > deadline:
                raise AssertionError("timed out; streams: %r" % {
                    k: (v["status"], v["done"], v["reset"]) for k, v in self.streams.items()})
            try:
                data = self.sock.recv(1 << 16)
            except socket.timeout:
                continue
            except (ssl.SSLError, OSError):
                data = b""
            if not data:
                self.closed = True
                return
            try:
                events = self.conn.receive_data(data)
            except h2.exceptions.ProtocolError:
                # python3-h2 takes no frame after a GOAWAY it received
                self.closed = True
                return
            for ev in events:
                self.event(ev)
            try:
                self.flush()
            except OSError:  # kgated closed (a partial write leaves ssl unusable)
                self.closed = True
                return

    def event(self, ev):
        st = self.streams.get(getattr(ev, "stream_id", None))
        if isinstance(ev, h2.events.ResponseReceived):
            st["headers"] = [(k.decode() if isinstance(k, bytes) else k,
                              v.decode() if isinstance(v, bytes) else v) for k, v in ev.headers]
            st["status"] = int(dict(st["headers"])[":status"])
        elif isinstance(ev, h2.events.InformationalResponseReceived):
            st["interim"].append([(k.decode() if isinstance(k, bytes) else k,
                                   v.decode() if isinstance(v, bytes) else v)
                                  for k, v in ev.headers])
        elif isinstance(ev, h2.events.DataReceived):
            st["data"] += ev.data
            self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        elif isinstance(ev, h2.events.TrailersReceived):
            st["trailers"] = [(k.decode() if isinstance(k, bytes) else k,
                               v.decode() if isinstance(v, bytes) else v)
                              for k, v in ev.headers]
        elif isinstance(ev, h2.events.StreamEnded):
            st["done"] = True
        elif isinstance(ev, h2.events.StreamReset):
            if st is not None:
                st["reset"] = ev.error_code
                st["done"] = True
        elif isinstance(ev, h2.events.ConnectionTerminated):
            self.goaway = ev

    def wait(self, *sids, timeout=TIMEOUT):
        self.pump(lambda: all(self.streams[s]["done"] for s in sids), timeout)
        return [self.streams[s] for s in sids]

    def get(self, path, **kw):
        return self.wait(self.request(path, **kw))[0]

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


@pytest.fixture
def h2clients():
    made = []

    def make(*args, **kw):
        c = H2Client(*args, **kw)
        made.append(c)
        return c
    yield make
    for c in made:
        c.close()


def start(spawn_kgated, pki, members, http=None, workers=1, settings=None, **extra):
    lst = https_listener(pki, members, http, **extra)
    return spawn_kgated(base_config(pki, [lst], workers=workers, **(settings or {})))


def curl(pki, port, paths, extra=(), http="--http2"):
    cmd = ["curl", "-sS", http, "--max-time", "60", "--cacert", pki.ca,
           "--cert", pki.cert("client"), "--key", pki.key("client"),
           "--resolve", "localhost:%d:127.0.0.1" % port,
           "-w", "\\n@@v=%{http_version} s=%{http_code} c=%{num_connects}\\n", *extra]
    cmd += ["https://localhost:%d%s" % (port, p) for p in paths]
    res = run(cmd, check=False, timeout=90)
    assert res.returncode == 0, res.stderr
    out, body = [], res.stdout
    chunks = body.split("\n@@")
    body = chunks[0]
    for c in chunks[1:]:
        meta, _, rest = c.partition("\n")
        kv = dict(x.split("=") for x in meta.split())
        out.append((body, kv["v"], int(kv["s"]), int(kv["c"])))
        body = rest
    return out


# ------------------------------------------------------------------ ALPN

def test_alpn_h2_chosen_and_h2_false_gives_http11(pki, spawn_kgated, backends):
    a, = backends("A")
    d = start(spawn_kgated, pki, [a], http={"access_log": "on"})
    (body, version, status, _), = curl(pki, d.port, ["/who"])
    assert (version, status, body) == ("2", 200, "backend=A")
    (body, version, status, _), = curl(pki, d.port, ["/who"], http="--http1.1")
    assert (version, status) == ("1.1", 200)
    # The access log names the protocol of each.
    assert d.wait_event("http.access", 2)
    protos = [e["proto"] for e in d.events("http.access")]
    assert protos == ["h2", "http/1.1"], protos
    d.terminate()
    assert path_count(d, "h2-userspace-tls") == 1 and path_count(d, "http-userspace-tls") == 1

    d = start(spawn_kgated, pki, [a], h2=False)
    (body, version, status, _), = curl(pki, d.port, ["/who"])
    assert (version, status, body) == ("1.1", 200, "backend=A")
    # A client that offers only h2 gets no ALPN answer, and HTTP/1.1.
    ctx = ssl.create_default_context(cafile=pki.ca)
    ctx.load_cert_chain(pki.cert("client"), pki.key("client"))
    ctx.set_alpn_protocols(["h2"])
    with ctx.wrap_socket(socket.create_connection(("127.0.0.1", d.port), timeout=10),
                         server_hostname="localhost") as s:
        assert s.selected_alpn_protocol() is None


def test_h2_key_from_kgatectl_and_refused_off_https(pki, gated, backends, tmp_path):
    a, = backends("A")
    d = gated([https_listener(pki, [a], h2_max_streams=7)], workers=1)
    show = d.ctl.json("listener", "show", "web")
    assert show["h2"] is True and show["h2_max_streams"] == 7, show
    port = int(show["address"].rsplit(":", 1)[1])
    d.ctl("listener", "update", "web", "--h2", "false")
    (_, version, status, _), = curl(pki, port, ["/who"])
    assert (version, status) == ("1.1", 200)
    d.ctl("listener", "update", "web", "--h2", "true", "--h2-max-streams", "50")
    (_, version, _, _), = curl(pki, port, ["/who"])
    assert version == "2"
    assert d.ctl.json("listener", "show", "web")["h2_max_streams"] == 50
    lst = dict(https_listener(pki, [a]), protocol="tls", h2=False)
    cfg = tmp_path / "bad.json"
    cfg.write_text(json.dumps(base_config(pki, [lst])))
    res = run([KGATED, "--check", "--config", str(cfg)], check=False)
    assert res.returncode != 0
    assert 'listeners[0].h2: only for protocol "https"' in res.stderr, res.stderr


# ------------------------------------------------------------ balancing

def test_streams_alternate_over_one_connection(pki, spawn_kgated, backends):
    a, b = backends("A", "B")
    d = start(spawn_kgated, pki, [a, b])
    out = curl(pki, d.port, ["/who?%d" % i for i in range(10)])
    assert [v for _, v, _, _ in out] == ["2"] * 10
    assert sum(c for _, _, _, c in out) == 1, "curl needed more than one connection"
    names = [body for body, _, _, _ in out]
    assert names == ["backend=A", "backend=B"] * 5, names


def test_weights_hold_per_stream(pki, spawn_kgated, backends, h2clients):
    a, b = backends("A", "B")
    lst = https_listener(pki, [a, b])
    lst["backends"] = [{"address": a.address, "weight": 2}, {"address": b.address, "weight": 1}]
    d = spawn_kgated(base_config(pki, [lst]))
    c = h2clients(pki, d.port)
    names = [bytes(c.get("/who")["data"]).decode() for _ in range(9)]
    # smooth weighted round robin: A B A, three times
    assert names == ["backend=A", "backend=A", "backend=B"] * 3 or \
        names == ["backend=A", "backend=B", "backend=A"] * 3, names


def test_concurrent_streams(pki, spawn_kgated, backends, h2clients):
    a, b = backends("A", "B")
    d = start(spawn_kgated, pki, [a, b])
    c = h2clients(pki, d.port)
    sids = [c.request("/who?%d" % i) for i in range(40)]
    res = c.wait(*sids)
    assert all(r["status"] == 200 and r["reset"] is None for r in res), res
    names = [bytes(r["data"]).decode() for r in res]
    assert names.count("backend=A") == 20 and names.count("backend=B") == 20, names
    c.close()
    d.terminate()
    assert worker_counter(d, "h2_streams") == 40


# ------------------------------------------------------------- identity

IDENTITY_BACKENDS = {"wsgiref": WsgirefBackend, "gunicorn": GunicornBackend, "raw": RawBackend}


@pytest.fixture(params=sorted(IDENTITY_BACKENDS))
def id_backend(request, tmp_path):
    if request.param == "gunicorn" and run(["/usr/bin/python3", "-c", "import gunicorn"],
                                           check=False).returncode:
        pytest.fail("gunicorn is not installed (tests/install-deps.sh test installs it)")
    b = IDENTITY_BACKENDS[request.param](tmp_path)
    yield b
    b.close()


def h2_spoofs():
    """The HTTP/1.1 spoofs as HTTP/2 fields (names lower case)."""
    out = []
    for line in SPOOFS_UNDERSCORE + SPOOFS_DASH:
        name, _, value = line.partition(": ")
        out.append((name.lower(), value))
    return out


def test_identity_on_every_stream_and_spoofs_stripped(pki, spawn_kgated, id_backend, h2clients):
    d = start(spawn_kgated, pki, [id_backend])
    c = h2clients(pki, d.port)
    spoofs = h2_spoofs()
    # several streams on one connection: each carries kgate's identity
    for i in range(3):
        r = c.get("/echo?%d" % i, headers=spoofs if i != 1 else ())
        assert r["status"] == 200, r
        assert_only_kgate_identity(id_backend, json.loads(bytes(r["data"])), d.port)
    # concurrent streams too
    sids = [c.request("/echo?c%d" % i, headers=spoofs) for i in range(4)]
    for r in c.wait(*sids):
        assert r["status"] == 200
        info = json.loads(bytes(r["data"]))
        assert_only_kgate_identity(id_backend, info, d.port)
        for v in json.dumps(info).split('"'):
            assert v not in FORGED


def test_client_cert_header_and_host(pki, spawn_kgated, backends, h2clients):
    a, = backends("A")
    d = start(spawn_kgated, pki, [a])
    c = h2clients(pki, d.port)
    r = c.get("/hdr", headers=[("x-kept", "yes"), ("te", "trailers")],
              authority="example.test:%d" % d.port)
    info = json.loads(bytes(r["data"]))
    assert header_values(info, "Host") == ["example.test:%d" % d.port]
    assert header_values(info, "X-Kept") == ["yes"]
    assert header_values(info, "TE") == []
    assert len(header_values(info, "Client-Cert")) == 1
    assert header_values(info, "X-Forwarded-Proto") == ["https"]


def test_underscore_reject_answers_400_on_the_stream(pki, spawn_kgated, backends, h2clients):
    a, = backends("A")
    d = start(spawn_kgated, pki, [a], http={"underscores_in_headers": "reject"})
    c = h2clients(pki, d.port)
    r = c.get("/u", headers=[("x_custom", "1")])
    assert r["status"] == 400
    # the connection goes on
    assert c.get("/who")["status"] == 200
    assert a.requests == ["/who"]


# ---------------------------------------------------------------- bodies

def sha(b):
    return hashlib.sha256(b).hexdigest()


def test_interim_responses_reach_the_client(pki, spawn_kgated, backends, h2clients, tmp_path):
    """1xx heads from an HTTP/1.1 backend pass to the h2 client: curl's
    "Expect: 100-continue" upload gets its 100 at once instead of waiting
    out its 1 s timer, and a 103 Early Hints keeps its Link field."""
    a, = backends("A")
    d = start(spawn_kgated, pki, [a])
    f = tmp_path / "up"
    f.write_bytes(b"z" * (2 << 20))
    res = run(["curl", "-sS", "--http2", "-v", "--max-time", "60", "--cacert", pki.ca,
               "--cert", pki.cert("client"), "--key", pki.key("client"),
               "--resolve", "localhost:%d:127.0.0.1" % d.port, "-H", "Expect: 100-continue",
               "--data-binary", "@%s" % f, "-o", "/dev/null", "-w", "%{http_code}",
               "https://localhost:%d/echo" % d.port], check=False, timeout=90)
    assert res.returncode == 0 and res.stdout == "200", (res.stdout, res.stderr[-2000:])
    assert "< HTTP/2 100" in res.stderr, res.stderr[-2000:]
    assert "Done waiting for 100-continue" not in res.stderr

    hints = EarlyHintsBackend()
    try:
        d2 = start(spawn_kgated, pki, [hints.address])
        cli = h2clients(pki, d2.port)
        sid = cli.request("/page")
        cli.wait(sid)
        st = cli.streams[sid]
        assert st["status"] == 200 and bytes(st["data"]) == b"ok", st
        assert [dict(h) for h in st["interim"]] == [
            {":status": "103", "link": "</a.css>; rel=preload"}], st["interim"]
    finally:
        hints.close()


class EarlyHintsBackend(ThreadedServer):
    """Answers each request with 103 Early Hints, then 200 "ok"."""

    def handle(self, conn):
        buf = b""
        while True:
            data = conn.recv(65536)
            if not data:
                return
            buf += data
            while b"\r\n\r\n" in buf:
                _, buf = buf.split(b"\r\n\r\n", 1)
                conn.sendall(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
                             b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")


def test_large_bodies_both_ways(pki, spawn_kgated, backends, h2clients, tmp_path):
    a, = backends("A")
    d = start(spawn_kgated, pki, [a])
    size = 6 * 1024 * 1024 + 7
    body = pattern(size)
    c = h2clients(pki, d.port)
    # upload with content-length
    r = c.wait(c.request("/up", method="POST", body=body,
                         headers=[("content-length", str(size))]))[0]
    assert r["status"] == 200, r
    info = json.loads(bytes(r["data"]))
    assert (info["length"], info["sha256"]) == (size, sha(body))
    # upload without content-length: chunked to the backend
    r = c.wait(c.request("/up", method="POST", body=body))[0]
    info = json.loads(bytes(r["data"]))
    assert (info["length"], info["sha256"]) == (size, sha(body))
    # downloads, Content-Length and chunked from the backend
    for q in ("", "&chunked=1"):
        r = c.get("/download?size=%d%s" % (size, q))
        assert r["status"] == 200
        assert len(r["data"]) == size and sha(bytes(r["data"])) == sha(body)
        if q:
            assert "transfer-encoding" not in dict(r["headers"])
    # two at once on the same connection, both directions
    up = c.request("/up", method="POST", body=None, end=False)
    down = c.request("/download?size=%d" % size)
    c.send_body(up, body)
    ru, rd = c.wait(up, down)
    assert json.loads(bytes(ru["data"]))["sha256"] == sha(body)
    assert sha(bytes(rd["data"])) == sha(body)
    # curl --http2 with a file
    f = tmp_path / "body"
    f.write_bytes(body)
    (out, version, status, _), = curl(pki, d.port, ["/up"], extra=["--data-binary", "@%s" % f])
    assert (version, status) == ("2", 200)
    assert json.loads(out)["sha256"] == sha(body)


# ------------------------------------------------------------- smuggling

SMUGGLES = [
    ("content-length not a number", [("content-length", "abc")], b"x" * 3),
    ("two content-lengths", [("content-length", "3"), ("content-length", "4")], b"xyz"),
    ("content-length and less data", [("content-length", "10")], b"xyz"),
    ("content-length and more data", [("content-length", "2")], b"xyz"),
    ("transfer-encoding", [("transfer-encoding", "chunked")], b"3\r\nxyz\r\n0\r\n\r\n"),
    ("connection", [("connection", "keep-alive")], None),
    ("keep-alive", [("keep-alive", "timeout=5")], None),
    ("upgrade", [("upgrade", "websocket")], None),
    ("proxy-connection", [("proxy-connection", "close")], None),
    ("te not trailers", [("te", "gzip")], None),
    ("CRLF in a value", [("x-a", "1\r\nX-Injected: yes")], None),
    ("LF in a value", [("x-a", "1\nGET /evil HTTP/1.1")], None),
    ("CR in a name", [("x-a\r\nx-b", "1")], None),
    ("upper case name", [("X-Upper", "1")], None),
]


@pytest.mark.parametrize("why,headers,body", SMUGGLES, ids=[s[0] for s in SMUGGLES])
def test_smuggling_refused_at_the_h2_h1_boundary(pki, spawn_kgated, backends, h2clients,
                                                 why, headers, body):
    a, = backends("A")
    d = start(spawn_kgated, pki, [a])
    c = h2clients(pki, d.port)
    method = "POST" if body is not None else "GET"
    sid = c.request("/evil", method=method, headers=headers, body=body)
    r, = c.wait(sid)
    assert r["reset"] is not None or r["status"] == 400, (why, r)
    # nothing of it reached a backend: the next request is the only one,
    # on a connection that still works (or a new one after GOAWAY).
    if c.closed or c.goaway:
        c = h2clients(pki, d.port)
    assert c.get("/who")["status"] == 200
    if why.startswith("content-length and") and a.requests != ["/who"]:
        # Only the DATA can show it, after the head went on: the backend
        # may have got the head and the body up to the content-length
        # (never a byte past it), on a connection kgate then closed
        # (never reused, so nothing can follow it there).
        assert a.requests == ["/evil", "/who"] and a.conns == 2, (a.requests, a.conns)
    else:
        assert a.requests == ["/who"], (why, a.requests)


# --------------------------------------------------------------- failures

def test_backend_down_gives_502_or_503(pki, spawn_kgated, h2clients):
    d = start(spawn_kgated, pki, ["127.0.0.1:%d" % dead_port()], connect_retries=0)
    c = h2clients(pki, d.port)
    r = c.get("/x")
    assert r["status"] in (502, 503), r
    assert bytes(r["data"]).startswith(b"%d " % r["status"])
    # the connection stays usable for the next stream
    r = c.get("/y")
    assert r["status"] in (502, 503), r
    assert d.events("http.error_response")


class _SlowHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        delay = float(self.path.rsplit("=", 1)[1]) if "delay=" in self.path else 0
        time.sleep(delay)
        body = b"slow done"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def slow_backend():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _SlowHandler)
    srv.daemon_threads = True
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    yield "127.0.0.1:%d" % srv.server_address[1]
    srv.shutdown()
    srv.server_close()


def test_response_timeout_504_per_stream(pki, spawn_kgated, slow_backend, h2clients):
    d = start(spawn_kgated, pki, [slow_backend], http={"response_timeout_ms": 300})
    c = h2clients(pki, d.port)
    slow = c.request("/s?delay=2")
    fast = c.request("/s?delay=0")
    rs, rf = c.wait(slow, fast)
    assert rf["status"] == 200 and bytes(rf["data"]) == b"slow done"
    assert rs["status"] == 504, rs


def test_goaway_on_sigterm_lets_the_slow_stream_finish(pki, spawn_kgated, slow_backend):
    """nghttp (Debian's nghttp2-client) shows the frames; python3-h2 stops
    reading frames once it saw GOAWAY, so it cannot see a stream finish
    after one."""
    d = start(spawn_kgated, pki, [slow_backend], http={"access_log": "on"},
              settings={"drain_timeout_ms": 5000})
    proc = subprocess.Popen(
        ["nghttp", "-v", "--cert", pki.cert("client"), "--key", pki.key("client"),
         "https://127.0.0.1:%d/s?delay=1.5" % d.port],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(0.5)  # the request reached the backend, which sleeps 1.5 s
        d.proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out
    assert "recv GOAWAY frame" in out, out
    # the stream's answer came after the GOAWAY
    assert out.index("recv GOAWAY frame") < out.index("slow done"), out
    assert d.proc.wait(10) == 0
    assert d.events("http.access", proto="h2", status="200")
    d.terminate()
    assert worker_counter(d, "h2_goaway_drain") == 1


def test_client_reset_and_abuse_counted(pki, spawn_kgated, slow_backend, h2clients):
    d = start(spawn_kgated, pki, [slow_backend], h2_max_streams=2)
    c = h2clients(pki, d.port)
    # a reset stream frees its backend socket; the connection goes on
    sid = c.request("/s?delay=1")
    time.sleep(0.2)
    c.conn.reset_stream(sid)
    c.flush()
    assert c.get("/s?delay=0")["status"] == 200
    # more concurrent streams than h2_max_streams, sent before the client
    # read the server's SETTINGS: refused, counted
    c = h2clients(pki, d.port)
    sids = [c.request("/s?delay=0.5") for _ in range(4)]
    c.pump(lambda: c.closed or all(c.streams[x]["done"] for x in sids), timeout=10)
    d.terminate()
    assert worker_counter(d, "h2_abuse_streams") >= 1


def test_rapid_reset_ends_the_connection(pki, spawn_kgated, slow_backend, h2clients):
    """CVE-2023-44487: streams opened and reset at once, past the budget."""
    d = start(spawn_kgated, pki, [slow_backend])
    c = h2clients(pki, d.port)
    for _ in range(1000):
        sid = c.conn.get_next_available_stream_id()
        c.conn.send_headers(sid, [(":method", "GET"), (":scheme", "https"),
                                  (":authority", "localhost"), (":path", "/s?delay=1")])
        c.conn.reset_stream(sid)
        try:
            c.flush()
        except OSError:
            break
    c.pump(lambda: c.closed, timeout=10)
    assert c.closed
    d.terminate()
    assert worker_counter(d, "h2_abuse_rapid_reset") >= 1


def test_header_list_too_large_refused(pki, spawn_kgated, backends, h2clients):
    a, = backends("A")
    d = start(spawn_kgated, pki, [a], http={"max_header_bytes": 4096})
    c = h2clients(pki, d.port)
    r = c.get("/big", headers=[("x-big", "a" * 8000)])
    assert r["reset"] is not None or r["status"] == 431 or c.closed, r
    if c.closed or c.goaway:
        c = h2clients(pki, d.port)
    assert c.get("/who")["status"] == 200
    assert a.requests == ["/who"]
    c.close()
    d.terminate()
    assert worker_counter(d, "h2_abuse_header_list") >= 1


def test_zero_window_client_is_cut_by_the_response_timeout(pki, spawn_kgated, backends,
                                                           h2clients):
    """A client that never opens its window: kgated reads no more of the
    backend than a buffer past the stream's low water, then resets the
    stream when the response timeout passes, and frees it."""
    a, = backends("A")
    d = start(spawn_kgated, pki, [a], http={"response_timeout_ms": 500})
    c = h2clients(pki, d.port)
    c.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
    c.flush()
    rss0 = d.rss_kib()
    sids = [c.request("/download?size=%d" % (8 << 20)) for _ in range(4)]
    res = c.wait(*sids)
    assert all(r["reset"] is not None and len(r["data"]) == 0 for r in res), res
    # Nothing close to 4 x 8 MiB was held meanwhile.
    assert d.rss_kib() - rss0 < 8 * 1024, (rss0, d.rss_kib())
    # The connection itself goes on once the client opens its window.
    c.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 65535})
    c.flush()
    assert c.get("/who")["data"] == b"backend=A"


# ---- attacks with raw frames: what python3-h2 will not send ----

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
GOAWAY, ENHANCE_YOUR_CALM = 7, 0xB


def frame(ftype, flags, sid, payload=b""):
    return (len(payload).to_bytes(3, "big") + bytes([ftype, flags]) + sid.to_bytes(4, "big")
            + payload)


def raw_h2(pki, port):
    """A TLS connection that negotiated h2 and sent the preface and SETTINGS."""
    ctx = ssl.create_default_context(cafile=pki.ca)
    ctx.load_cert_chain(pki.cert("client"), pki.key("client"))
    ctx.set_alpn_protocols(["h2"])
    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT),
                        server_hostname="localhost")
    assert s.selected_alpn_protocol() == "h2"
    s.sendall(PREFACE + frame(4, 0, 0))
    return s


def send_until_cut(s, frames):
    """Sends frames until kgated stops taking them; how many went."""
    sent = 0
    for f in frames:
        try:
            s.sendall(f)
        except OSError:
            break
        sent += 1
    return sent


def goaway_code(s, timeout=10):
    """Reads frames to the end of the connection: the GOAWAY's error code,
    or None when the connection ended without one."""
    s.settimeout(timeout)
    buf, code = b"", None
    while True:
        try:
            data = s.recv(1 << 16)
        except socket.timeout:
            raise AssertionError("kgated kept the connection open")
        except (ssl.SSLError, OSError):
            data = b""
        if not data:
            return code
        buf += data
        while len(buf) >= 9:
            n = int.from_bytes(buf[:3], "big")
            if len(buf) < 9 + n:
                break
            if buf[3] == GOAWAY:
                code = int.from_bytes(buf[9 + 4:9 + 8], "big")
            buf = buf[9 + n:]


def hpack_literal(name, value):
    """A literal field without indexing, new name, no Huffman (RFC 7541 6.2.2)."""
    assert len(name) < 127 and len(value) < 127
    return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value


GET_BLOCK = bytes([0x82, 0x87, 0x84]) + b"\x01\x09localhost"  # GET https / localhost


def still_serves(pki, d, h2clients):
    c = h2clients(pki, d.port)
    assert c.get("/who")["status"] == 200
    c.close()


@pytest.mark.parametrize("kind", ["continuation", "hpack_bomb", "settings", "ping"])
def test_floods_end_the_connection_and_are_counted(pki, spawn_kgated, backends, h2clients,
                                                   kind):
    """CONTINUATION flood (CVE-2024-27316), an HPACK bomb (one 100-byte
    field put in the dynamic table, then referenced by one byte each),
    SETTINGS and PING floods: each ends the attacker's connection, is
    counted by kind, keeps kgated's memory bounded, and other clients are
    served on."""
    a, = backends("A")
    d = start(spawn_kgated, pki, [a], http={"max_header_bytes": 8192})
    rss0 = d.rss_kib()
    s = raw_h2(pki, d.port)
    if kind == "continuation":
        # HEADERS without END_HEADERS, then 64 KiB CONTINUATIONs of small
        # fields, never ending the block: 64 MiB if it were all taken.
        chunk = hpack_literal(b"x", b"y") * (65536 // 7)
        frames = [frame(1, 0x1, 1, GET_BLOCK)] + [frame(9, 0, 1, chunk)] * 1024
        counters = ["h2_abuse_continuation", "h2_abuse_header_list"]
    elif kind == "hpack_bomb":
        big = b"\x40\x06x-bomb" + bytes([100]) + b"b" * 100  # incremental indexing: index 62
        block = GET_BLOCK + big + b"\xbe" * 8000               # 8000 x 100 bytes decoded
        frames = [frame(1, 0x5, 1, block)]
        counters = ["h2_abuse_hpack", "h2_abuse_header_list"]
    elif kind == "settings":
        frames = [frame(4, 0, 0)] * 20000
        counters = ["h2_abuse_control_flood"]
    else:
        frames = [frame(6, 0, 0, b"12345678")] * 20000
        counters = ["h2_abuse_control_flood"]
    sent = send_until_cut(s, frames)
    code = goaway_code(s)
    s.close()
    assert code in (None, ENHANCE_YOUR_CALM, 1, 9), (kind, code)  # calm, protocol, compression
    still_serves(pki, d, h2clients)
    assert d.rss_kib() - rss0 < 16 * 1024, (kind, sent, rss0, d.rss_kib())
    assert a.requests == ["/who"], a.requests  # the attack reached no backend
    d.terminate()
    assert sum(worker_counter(d, k) for k in counters) >= 1, (kind, counters, d.log()[-2000:])


class TrailerBackend(ThreadedServer):
    """Answers every request with a chunked body and the trailer section
    it was given, then closes."""

    def __init__(self, trailers):
        self.trailers = trailers
        super().__init__()

    def handle(self, conn):
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = conn.recv(4096)
            if not chunk:
                return
            head += chunk
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                     b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                     b"5\r\nhello\r\n6\r\n world\r\n0\r\n" + self.trailers + b"\r\n")


@pytest.mark.parametrize("trailers,expect", [
    (b"X-Checksum: abc123\r\nGrpc-Status: 0 \r\nX-Empty:\r\n",
     [("x-checksum", "abc123"), ("grpc-status", "0"), ("x-empty", "")]),
    # A section past kgate's bound is dropped whole; the body still ends.
    (b"X-Big: " + b"b" * 2000 + b"\r\n", None),
    (b"", None),
])
def test_chunked_trailers_from_http1_backend(spawn_kgated, pki, h2clients, trailers, expect):
    b = TrailerBackend(trailers)
    try:
        d = start(spawn_kgated, pki, [b])
        c = h2clients(pki, d.port)
        r = c.get("/t")
        assert r["status"] == 200 and r["reset"] is None, r
        assert bytes(r["data"]) == b"hello world"
        assert r["trailers"] == expect, r
    finally:
        b.close()


def test_disabled_member_ends_only_its_streams(pki, gated, slow_backend, h2clients):
    """A member disabled (kgatectl backend disable) leaves at once, as on
    HTTP/1.1, but per stream: the stream it was serving gets 503 long
    before its response would have come, the stream on the other member
    and the connection go on, counted in cut_disabled."""
    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _SlowHandler)
    other.daemon_threads = True
    threading.Thread(target=other.serve_forever, kwargs={"poll_interval": 0.05},
                     daemon=True).start()
    second = "127.0.0.1:%d" % other.server_address[1]
    try:
        d = gated([https_listener(pki, [slow_backend, second])], workers=1)
        port = int(d.ctl.json("listener", "show", "web")["address"].rsplit(":", 1)[1])
        c = h2clients(pki, port)
        t0 = time.monotonic()
        sids = [c.request("/s?delay=4"), c.request("/s?delay=4")]  # one per member
        time.sleep(0.5)
        d.ctl("backend", "disable", "web", slow_backend)
        t1 = time.monotonic()
        c.pump(lambda: any(c.streams[x]["done"] for x in sids), timeout=10)
        early = [c.streams[x] for x in sids if c.streams[x]["done"]]
        assert time.monotonic() - t1 < 2.5 and [r["status"] for r in early] == [503], early
        first = c.wait(*sids, timeout=15)
        took = time.monotonic() - t0
        statuses = sorted(r["status"] for r in first)
        assert statuses == [200, 503], first
        assert took >= 3.5  # the other stream ran to its end
        cut, = [r for r in first if r["status"] == 503]
        assert b"503" in bytes(cut["data"])
        # the same connection goes on, to the member left
        assert c.get("/s?delay=0")["status"] == 200
        assert d.ctl.json("stats")["connections"]["cut_disabled"] == 1
    finally:
        other.shutdown()
        other.server_close()
