"""gRPC through kgated (issue 17, back end): an https listener with
backend_protocol h2 in front of real gRPC servers (python3-grpcio, h2c on
loopback), a real gRPC client over mTLS. Unary, the three streaming kinds,
error status and message, several-MiB messages (flow control both ways),
metadata both ways with kgate's identity headers and spoofed ones
stripped, per-stream balancing, backend down, deadlines (the client's
cancel reaches the backend), and a backend's GOAWAY. Streams a backend
refuses unprocessed (a python3-h2 backend that does it on purpose) are
sent once more.

No protoc: methods are generic handlers over bytes, called with identity
serializers."""
import hashlib
import json
import queue
import socket
import subprocess
import threading
import time
from concurrent import futures

import grpc
import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import pytest

from conftest import KGATED, base_config, dead_port, run, wait_until, worker_counter
from test_h2 import H2Client
from test_control import gated  # noqa: F401
from test_h2 import curl
from test_https import https_listener
from test_identity import ISSUER, SUBJECT

TIMEOUT = 30
MIB = 1 << 20
BIG = 6 * MIB
MSG_OPTS = [("grpc.max_receive_message_length", 16 * MIB),
            ("grpc.max_send_message_length", 16 * MIB)]


class GrpcBackend:
    """A gRPC server on 127.0.0.1 (cleartext HTTP/2), service t.S; it
    records each call's metadata and the calls cancelled under it."""

    def __init__(self, name):
        self.name = name
        self.calls = []      # (method, metadata dict)
        self.yielded = 0     # bytes ServerStreamBig handed to grpc
        self.cancelled = threading.Event()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=16),
                                  options=MSG_OPTS)
        ident = lambda b: b  # noqa: E731
        h = {
            "Unary": grpc.unary_unary_rpc_method_handler(self.unary, ident, ident),
            "Fail": grpc.unary_unary_rpc_method_handler(self.fail, ident, ident),
            "Big": grpc.unary_unary_rpc_method_handler(self.big, ident, ident),
            "Slow": grpc.unary_unary_rpc_method_handler(self.slow, ident, ident),
            "Meta": grpc.unary_unary_rpc_method_handler(self.meta, ident, ident),
            "ServerStream": grpc.unary_stream_rpc_method_handler(self.server_stream, ident,
                                                                 ident),
            "ServerStreamBig": grpc.unary_stream_rpc_method_handler(self.server_stream_big,
                                                                    ident, ident),
            "ClientStream": grpc.stream_unary_rpc_method_handler(self.client_stream, ident,
                                                                 ident),
            "Bidi": grpc.stream_stream_rpc_method_handler(self.bidi, ident, ident),
        }
        self.server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("t.S", h)])
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.address = "127.0.0.1:%d" % self.port
        self.server.start()

    def note(self, method, context):
        md = {}
        for k, v in context.invocation_metadata():
            md.setdefault(k, []).append(v)
        self.calls.append((method, md))

    def unary(self, req, context):
        self.note("Unary", context)
        return self.name.encode() + b":" + req

    def fail(self, req, context):
        self.note("Fail", context)
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad argument: %s" % req.decode())

    def big(self, req, context):
        self.note("Big", context)
        # The request's bytes reversed: both directions carry BIG bytes.
        return req[::-1]

    def slow(self, req, context):
        self.note("Slow", context)
        context.add_callback(self.cancelled.set)
        deadline = time.monotonic() + float(req.decode())
        while time.monotonic() < deadline and context.is_active():
            time.sleep(0.02)
        return b"slept"

    def meta(self, req, context):
        self.note("Meta", context)
        context.send_initial_metadata((("x-initial", "i-" + self.name),))
        context.set_trailing_metadata((("x-trailing", "t-" + self.name),
                                       ("x-bin-bin", b"\x00\x01\xff")))
        return req

    def server_stream(self, req, context):
        self.note("ServerStream", context)
        for i in range(int(req.decode())):
            yield b"msg-%d" % i

    def server_stream_big(self, req, context):
        self.note("ServerStreamBig", context)
        chunk = b"z" * MIB
        for _ in range(int(req.decode())):
            yield chunk
            self.yielded += len(chunk)

    def client_stream(self, it, context):
        self.note("ClientStream", context)
        n = total = 0
        for m in it:
            n += 1
            total += len(m)
        return b"%d/%d" % (n, total)

    def bidi(self, it, context):
        self.note("Bidi", context)
        for m in it:
            yield b"echo:" + m

    def stop(self, grace=None):
        return self.server.stop(grace)


@pytest.fixture
def grpc_backends():
    made = []

    def make(*names):
        out = [GrpcBackend(n) for n in names]
        made.extend(out)
        return out
    yield make
    for b in made:
        b.stop(None).wait(5)


def grpc_listener(pki, members, **extra):
    return https_listener(pki, members, backend_protocol="h2", **extra)


def channel(pki, port, cert="client", own_connection=False):
    creds = grpc.ssl_channel_credentials(
        root_certificates=open(pki.ca, "rb").read(),
        private_key=open(pki.key(cert), "rb").read(),
        certificate_chain=open(pki.cert(cert), "rb").read())
    opts = MSG_OPTS + [("grpc.ssl_target_name_override", "localhost"),
                       ("grpc.enable_http_proxy", 0),
                       ("grpc.enable_retries", 0)]
    if own_connection:
        # grpc shares connections between channels to one target by default.
        opts.append(("grpc.use_local_subchannel_pool", 1))
    return grpc.secure_channel("127.0.0.1:%d" % port, creds, options=opts)


def method(ch, name, kind="unary_unary"):
    return getattr(ch, kind)("/t.S/" + name, request_serializer=None,
                             response_deserializer=None)


def start(gated, pki, members, **extra):
    return gated([grpc_listener(pki, members, **extra)], workers=1)


def test_unary_and_streaming_kinds(pki, gated, grpc_backends):
    a, = grpc_backends("A")
    d = start(gated, pki, [a])
    with channel(pki, d.port) as ch:
        assert method(ch, "Unary")(b"hi", timeout=TIMEOUT) == b"A:hi"
        got = list(method(ch, "ServerStream", "unary_stream")(b"50", timeout=TIMEOUT))
        assert got == [b"msg-%d" % i for i in range(50)]
        msgs = (b"x" * 10000 for _ in range(20))
        assert method(ch, "ClientStream", "stream_unary")(msgs, timeout=TIMEOUT) == \
            b"20/200000"

        # Bidirectional, interleaved: each answer arrives before the next
        # message is sent.
        q = queue.Queue()

        def gen():
            while True:
                item = q.get()
                if item is None:
                    return
                yield item
        call = method(ch, "Bidi", "stream_stream")(gen(), timeout=TIMEOUT)
        for i in range(5):
            q.put(b"m%d" % i)
            assert next(call) == b"echo:m%d" % i
        q.put(None)
        assert list(call) == []
        assert call.code() == grpc.StatusCode.OK
    assert [m for m, _ in a.calls] == ["Unary", "ServerStream", "ClientStream", "Bidi"]
    d.terminate()
    assert worker_counter(d, "h2_backend_streams") == 4
    assert worker_counter(d, "h2_backend_conns") == 1  # one client connection, one member


def test_error_status_and_message_intact(pki, gated, grpc_backends):
    a, = grpc_backends("A")
    d = start(gated, pki, [a])
    with channel(pki, d.port) as ch:
        with pytest.raises(grpc.RpcError) as e:
            method(ch, "Fail")("zürich 100%".encode(), timeout=TIMEOUT)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        # grpc-message is percent-encoded on the wire: it came through as sent.
        assert e.value.details() == "bad argument: zürich 100%"
        # The connection serves on after an error status.
        assert method(ch, "Unary")(b"after", timeout=TIMEOUT) == b"A:after"


def test_large_messages_both_ways(pki, gated, grpc_backends):
    a, = grpc_backends("A")
    d = start(gated, pki, [a])
    payload = bytes(range(256)) * (BIG // 256)
    with channel(pki, d.port) as ch:
        big = method(ch, "Big")
        for _ in range(2):
            assert big(payload, timeout=TIMEOUT) == payload[::-1]


def test_metadata_both_ways_identity_and_spoofs(pki, gated, grpc_backends):
    a, = grpc_backends("A")
    d = start(gated, pki, [a])
    spoofs = (("x-forwarded-for", "6.6.6.6"), ("x-forwarded-clientcert-subjectdn", "CN=admin"),
              ("x-forwarded-clientcert-whatever", "spoof"), ("x-real-ip", "6.6.6.6"),
              ("forwarded", "for=6.6.6.6"), ("client-cert-whatever", "spoof"))
    with channel(pki, d.port) as ch:
        resp, call = method(ch, "Meta").with_call(
            b"m", timeout=TIMEOUT, metadata=(("x-custom", "c1"), ("x-data-bin", b"\x00\xfe"))
            + spoofs)
        assert resp == b"m"
        assert ("x-initial", "i-A") in call.initial_metadata()
        trailing = dict(call.trailing_metadata())
        assert trailing["x-trailing"] == "t-A"
        assert trailing["x-bin-bin"] == b"\x00\x01\xff"
    (_, md), = a.calls
    assert md["x-custom"] == ["c1"]
    assert md["x-data-bin"] == [b"\x00\xfe"]
    assert md["x-forwarded-for"] == ["127.0.0.1"], md
    assert md["x-forwarded-proto"] == ["https"], md
    assert md["x-forwarded-port"] == [str(d.port)], md
    assert md["x-forwarded-clientcert-subjectdn"] == [SUBJECT], md
    assert md["x-forwarded-clientcert-issuerdn"] == [ISSUER], md
    assert md["x-forwarded-clientcert-clientverify"] == ["SUCCESS"], md
    for name in ("x-forwarded-clientcert-whatever", "x-real-ip", "forwarded",
                 "client-cert-whatever"):
        assert name not in md, (name, md)
    for values in md.values():
        for v in values:
            assert v not in ("6.6.6.6", "CN=admin", "spoof", "for=6.6.6.6"), md


def test_per_stream_round_robin(pki, gated, grpc_backends):
    a, b = grpc_backends("A", "B")
    d = start(gated, pki, [a, b])
    with channel(pki, d.port) as ch:
        unary = method(ch, "Unary")
        names = [unary(b"x", timeout=TIMEOUT).split(b":")[0] for _ in range(10)]
    # One client connection, its calls alternating between the members.
    assert sorted(names) == [b"A"] * 5 + [b"B"] * 5, names
    assert all(names[i] != names[i + 1] for i in range(9)), names
    d.terminate()
    assert worker_counter(d, "h2_backend_conns") == 2


def test_backend_connections_shared_by_client_connections(pki, gated, grpc_backends):
    """The worker's backend connection to a member carries the streams of
    every client connection: three at once, then a later one."""
    a, = grpc_backends("A")
    d = start(gated, pki, [a])
    chans = [channel(pki, d.port, own_connection=True) for _ in range(3)]
    try:
        slow = [method(ch, "Slow").future(b"0.3", timeout=TIMEOUT) for ch in chans]
        assert [f.result() for f in slow] == [b"slept"] * 3
        for ch in chans:
            assert method(ch, "Unary")(b"s", timeout=TIMEOUT) == b"A:s"
    finally:
        for ch in chans:
            ch.close()
    with channel(pki, d.port, own_connection=True) as ch:
        assert method(ch, "Unary")(b"later", timeout=TIMEOUT) == b"A:later"
    d.terminate()
    assert worker_counter(d, "accepted") == 4
    assert worker_counter(d, "h2_backend_streams") == 7
    assert worker_counter(d, "h2_backend_conns") == 1


def test_backend_down_is_unavailable(pki, gated):
    d = start(gated, pki, ["127.0.0.1:%d" % dead_port()])
    with channel(pki, d.port) as ch:
        with pytest.raises(grpc.RpcError) as e:
            method(ch, "Unary")(b"x", timeout=TIMEOUT)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE, e.value


def test_deadline_exceeded_cancels_backend_stream(pki, gated, grpc_backends):
    a, = grpc_backends("A")
    d = start(gated, pki, [a])
    with channel(pki, d.port) as ch:
        # Connected first (mTLS, the backend connection): the deadline
        # then runs out while the call sits in the backend's handler,
        # not while a loaded machine is still handshaking.
        assert method(ch, "Unary")(b"warm", timeout=TIMEOUT) == b"A:warm"
        t0 = time.monotonic()
        with pytest.raises(grpc.RpcError) as e:
            method(ch, "Slow")(b"20", timeout=1.5)
        assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - t0 < 10
        # The client's RST_STREAM became one to the backend: its handler
        # saw the call end long before its 20 s.
        assert a.cancelled.wait(10)
        assert method(ch, "Unary")(b"on", timeout=TIMEOUT) == b"A:on"
    d.terminate()
    assert worker_counter(d, "h2_backend_resets") >= 1


def test_backend_goaway_lets_inflight_finish(pki, gated, grpc_backends):
    a, = grpc_backends("A")
    d = start(gated, pki, [a])
    with channel(pki, d.port) as ch:
        assert method(ch, "Unary")(b"warm", timeout=TIMEOUT) == b"A:warm"
        fut = method(ch, "Slow").future(b"1.5", timeout=TIMEOUT)
        assert wait_until(lambda: len(a.calls) == 2, 10)
        stopped = a.stop(5)  # GOAWAY; the call in flight has 5 s to finish
        assert fut.result() == b"slept"
        stopped.wait(10)
        # Nothing listens there any more: a new call is refused cleanly.
        with pytest.raises(grpc.RpcError) as e:
            method(ch, "Unary")(b"x", timeout=TIMEOUT)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    d.terminate()
    assert worker_counter(d, "h2_backend_goaway") >= 1


def test_key_from_kgatectl_http1_clients_and_refusals(pki, gated, grpc_backends, tmp_path):
    a, = grpc_backends("A")
    d = start(gated, pki, [a])
    show = d.ctl.json("listener", "show", "web")
    assert show["backend_protocol"] == "h2", show
    # HTTP/1.1 requests are not translated: 505 names why.
    (_, version, status, _), = curl(pki, d.port, ["/t.S/Unary"], http="--http1.1")
    assert (version, status) == ("1.1", 505)
    d.ctl("listener", "update", "web", "--backend-protocol", "http/1.1")
    assert d.ctl.json("listener", "show", "web")["backend_protocol"] == "http/1.1"
    d.ctl("listener", "update", "web", "--backend-protocol", "h2")
    with channel(pki, d.port) as ch:
        assert method(ch, "Unary")(b"k", timeout=TIMEOUT) == b"A:k"
    for lst, why in (
            (dict(grpc_listener(pki, [a]), h2=False),
             'listeners[0].backend_protocol: "h2" needs "h2": true'),
            (dict(grpc_listener(pki, [a]), protocol="tls"),
             'listeners[0].backend_protocol: only for protocol "https"')):
        cfg = tmp_path / "bad.json"
        cfg.write_text(json.dumps(base_config(pki, [lst])))
        res = run([KGATED, "--check", "--config", str(cfg)], check=False)
        assert res.returncode != 0
        assert why in res.stderr, res.stderr


def test_slow_client_bounds_what_kgated_holds(pki, gated, grpc_backends):
    """A client that stops reading a 256 MiB server stream: kgated passes
    the backend's window on only as the client takes bytes, so the server
    gets to send little of it and kgated's memory stays flat."""
    a, = grpc_backends("A")
    d = start(gated, pki, [a])
    c = H2Client(pki, d.port)
    try:
        rss0 = d.rss_kib()
        body = b"256"
        c.request("/t.S/ServerStreamBig", method="POST",
                  headers=[("content-type", "application/grpc"), ("te", "trailers")],
                  body=b"\x00" + len(body).to_bytes(4, "big") + body)
        # Read a little, then stop reading altogether.
        c.pump(until=lambda: len(c.streams[1]["data"]) >= MIB)
        assert wait_until(lambda: a.yielded >= 2 * MIB, 10)
        time.sleep(2)
        held = a.yielded
        time.sleep(1)
        # What the server could write is bounded by the socket buffers on
        # both hops and one stream window in kgated, not by the stream.
        assert a.yielded == held, (a.yielded, held)
        assert held < 48 * MIB, held
        assert d.rss_kib() - rss0 < 32 * 1024, (rss0, d.rss_kib())
    finally:
        c.close()


class RefusingH2cBackend:
    """An h2c backend (python3-h2) that refuses streams unprocessed the way a
    restarting or overloaded server does, then serves. Each request takes
    the next of `actions` (then "serve"): "goaway" (GOAWAY with last
    stream 0 on its HEADERS, then the connection closes: a restart's
    race), "rst" (RST_STREAM REFUSED_STREAM on its HEADERS), "rst_at_end"
    (the same once the whole body is read), "hints" (a 103 Early Hints
    head first, then served). A served answer says which
    connection served it and the length and sha256 of the body read."""

    def __init__(self, actions):
        self.actions = list(actions)
        self.lock = threading.Lock()
        self.conns = 0
        self.requests = 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.address = "127.0.0.1:%d" % self.sock.getsockname()[1]
        self.stopping = False
        self.thread = threading.Thread(target=self.accept_loop, daemon=True)
        self.thread.start()

    def accept_loop(self):
        while not self.stopping:
            try:
                s, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.conns += 1
                n = self.conns
            threading.Thread(target=self.serve, args=(s, n), daemon=True).start()

    def next_action(self):
        with self.lock:
            self.requests += 1
            return self.actions.pop(0) if self.actions else "serve"

    def serve(self, s, conn_no):
        cfg = h2.config.H2Configuration(client_side=False)
        conn = h2.connection.H2Connection(config=cfg)
        conn.initiate_connection()
        streams = {}
        s.settimeout(TIMEOUT)
        try:
            s.sendall(conn.data_to_send())
            while True:
                data = s.recv(65536)
                if not data:
                    return
                for ev in conn.receive_data(data):
                    if isinstance(ev, h2.events.RequestReceived):
                        act = self.next_action()
                        if act == "goaway":
                            conn.close_connection(last_stream_id=0)
                            s.sendall(conn.data_to_send())
                            return
                        if act == "rst":
                            conn.reset_stream(ev.stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
                            continue
                        if act == "hints":
                            conn.send_headers(ev.stream_id, [(":status", "103"),
                                                             ("link", "</a.css>; rel=preload")])
                        streams[ev.stream_id] = [act, bytearray()]
                        if ev.stream_ended:
                            self.finish(conn, ev.stream_id, streams.pop(ev.stream_id), conn_no)
                    elif isinstance(ev, h2.events.DataReceived):
                        conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                        if ev.stream_id in streams:
                            streams[ev.stream_id][1] += ev.data
                    elif isinstance(ev, h2.events.StreamEnded) and ev.stream_id in streams:
                        self.finish(conn, ev.stream_id, streams.pop(ev.stream_id), conn_no)
                s.sendall(conn.data_to_send())
        except (OSError, h2.exceptions.ProtocolError):
            return
        finally:
            s.close()

    def finish(self, conn, sid, st, conn_no=0):
        act, body = st
        if act == "rst_at_end":
            conn.reset_stream(sid, h2.errors.ErrorCodes.REFUSED_STREAM)
            return
        answer = json.dumps({"conn": conn_no, "len": len(body),
                             "sha": hashlib.sha256(body).hexdigest()}).encode()
        conn.send_headers(sid, [(":status", "200"), ("content-length", str(len(answer)))])
        conn.send_data(sid, answer, end_stream=True)

    def close(self):
        self.stopping = True
        self.sock.close()


def test_interim_head_from_h2_backend_reaches_the_client(pki, gated):
    b = RefusingH2cBackend(["hints"])
    try:
        d = start(gated, pki, [b.address])
        cli = H2Client(pki, d.port)
        sid = cli.request("/r")
        cli.pump(until=lambda: cli.streams[sid]["done"])
        st = cli.streams[sid]
        assert st["status"] == 200, st
        assert [dict(h) for h in st["interim"]] == [
            {":status": "103", "link": "</a.css>; rel=preload"}], st["interim"]
        cli.close()
    finally:
        b.close()


def refused_case(pki, gated, actions, body=None):
    """One request through kgated to a RefusingH2cBackend: (status, answer
    dict or None, retries counted, resets counted, the backend)."""
    b = RefusingH2cBackend(actions)
    try:
        d = start(gated, pki, [b.address])
        cli = H2Client(pki, d.port)
        sid = cli.request("/r", method="POST" if body is not None else "GET", body=body)
        cli.pump(until=lambda: cli.streams[sid]["done"] or cli.streams[sid]["reset"])
        st = cli.streams[sid]
        answer = json.loads(bytes(st["data"])) if st["status"] == 200 else None
        cli.close()
        d.terminate()
        return (st["status"], answer, worker_counter(d, "h2_backend_retries"),
                worker_counter(d, "h2_backend_resets"), b)
    finally:
        b.close()


KIB = 1024


@pytest.mark.parametrize("actions,body_len,status,retries,resets,requests", [
    # RFC 9113 8.7: a stream the backend did not process is safe to send
    # again: refused by a GOAWAY racing it (a backend restarting) or by
    # RST_STREAM REFUSED_STREAM, the client gets its answer, the body intact.
    (["goaway"], 10 * KIB, 200, 1, 0, 2),
    (["goaway"], None, 200, 1, 0, 2),
    (["rst"], 10 * KIB, 200, 1, 0, 2),
    (["rst"], None, 200, 1, 0, 2),
    # Refused after the whole body was read: sent again while kgate still
    # keeps all of it (64 KiB) ...
    (["rst_at_end"], 60 * KIB, 200, 1, 0, 2),
    # ... not past that: 502.
    (["rst_at_end"], 200 * KIB, 502, 0, 1, 1),
    # Once per stream: refused again, 502.
    (["rst", "rst"], None, 502, 1, 1, 2),
], ids=["goaway-body", "goaway-get", "rst-body", "rst-get", "at-end-kept", "at-end-too-big",
        "twice"])
def test_refused_stream_sent_again_once_while_kept(pki, gated, actions, body_len, status,
                                                  retries, resets, requests):
    body = None if body_len is None else bytes(range(256)) * (body_len // 256)
    got, answer, n_retries, n_resets, b = refused_case(pki, gated, actions, body=body)
    assert (got, n_retries, n_resets) == (status, retries, resets), answer
    assert b.requests == requests
    if status == 200:
        assert answer["len"] == len(body or b"") and \
            answer["sha"] == hashlib.sha256(body or b"").hexdigest(), answer
        if actions == ["goaway"]:
            assert answer["conn"] == 2, answer  # not on the connection going away
