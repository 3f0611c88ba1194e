"""WebSocket over HTTP/2 (RFC 8441) through https listeners (issue 17):
kgated advertises SETTINGS_ENABLE_CONNECT_PROTOCOL, turns an extended
CONNECT with :protocol websocket into the HTTP/1.1 handshake to the
backend (its own Sec-WebSocket-Key, the identity headers, spoofs
stripped), answers the backend's 101 with 200 and relays the stream's
DATA both ways, with the tunnel limits, counters, events and access line
of HTTP/1.1 tunnels.

python3-websockets has no HTTP/2 client: the client is python3-h2 (with
its header validation off so that it sends :protocol), speaking RFC 6455
frames written here; the backend is test_websocket.py's websockets echo
server."""
import base64
import hashlib
import json
import os
import signal
import socket
import struct
import time

import h2.events
import h2.settings
import pytest

from conftest import worker_counter
from test_h2 import H2Client, h2clients  # noqa: F401
from test_websocket import start, tunnel_closed, ws_backend  # noqa: F401


def frame(opcode, payload):
    """A masked client frame (RFC 6455 5.2), FIN set."""
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload)) if n < 4096 else \
        (int.from_bytes(payload, "big") ^ int.from_bytes((mask * (n // 4 + 1))[:n], "big")
         ).to_bytes(n, "big")
    return head + mask + masked


def parse(buf):
    """Whole server frames at the front of buf: [(opcode, payload)], rest."""
    out = []
    while len(buf) >= 2:
        b0, b1 = buf[0], buf[1]
        assert not b1 & 0x80, "server frames are not masked"
        n, off = b1 & 0x7f, 2
        if n == 126:
            if len(buf) < 4:
                break
            n, off = struct.unpack("!H", buf[2:4])[0], 4
        elif n == 127:
            if len(buf) < 10:
                break
            n, off = struct.unpack("!Q", buf[2:10])[0], 10
        if len(buf) < off + n:
            break
        assert b0 & 0x80, "no fragmented messages expected"
        out.append((b0 & 0x0f, bytes(buf[off:off + n])))
        buf = buf[off + n:]
    return out, buf


class WsH2(H2Client):
    """H2Client plus extended CONNECT streams carrying WebSocket frames."""

    def __init__(self, *a, **kw):
        self.remote_settings = {}
        super().__init__(*a, **kw)
        self.pump(lambda: h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL
                  in self.remote_settings)

    def event(self, ev):
        if isinstance(ev, h2.events.RemoteSettingsChanged):
            for k, v in ev.changed_settings.items():
                self.remote_settings[k] = v.new_value
            return
        super().event(ev)

    def open_ws(self, path, headers=(), protocol="websocket", wait=True):
        sid = self.conn.get_next_available_stream_id()
        hdrs = [(":method", "CONNECT"), (":protocol", protocol), (":scheme", "https"),
                (":authority", "localhost:%d" % self.port), (":path", path),
                ("sec-websocket-version", "13")] + list(headers)
        self.conn.send_headers(sid, hdrs)
        self.streams[sid] = {"status": None, "headers": [], "data": bytearray(), "done": False,
                             "reset": None, "rest": b""}
        self.flush()
        if wait:
            self.pump(lambda: self.streams[sid]["status"] is not None
                      or self.streams[sid]["done"])
        return sid

    def send_msg(self, sid, payload, opcode=None, end=False):
        if opcode is None:
            opcode = 1 if isinstance(payload, str) else 2
        if isinstance(payload, str):
            payload = payload.encode()
        data = frame(opcode, payload)
        if end and len(data) <= min(self.conn.local_flow_control_window(sid),
                                    self.conn.max_outbound_frame_size):
            # END_STREAM on the frame's own DATA: kgated sees both at once
            self.conn.send_data(sid, data, end_stream=True)
            self.flush()
            return
        self.send_body(sid, data, end=end)

    def messages(self, sid, count, timeout=60):
        """The next count server frames on the stream."""
        st = self.streams[sid]
        got = []

        def enough():
            frames, st["data"] = parse(st["data"])
            got.extend(frames)
            return len(got) >= count or st["done"]
        self.pump(enough, timeout)
        frames, st["data"] = parse(st["data"])
        got.extend(frames)
        return got


def ws_start(spawn_kgated, pki, backend, **extra):
    return start(spawn_kgated, pki, backend, **extra)


def access_tunnels(d):
    return [e for e in d.events("http.access") if e["status"] == "101" and e["proto"] == "h2"]


def test_settings_and_echo_text_binary_large(pki, spawn_kgated, ws_backend):
    """ENABLE_CONNECT_PROTOCOL=1 in kgated's SETTINGS; the extended CONNECT
    gets 200 (RFC 8441 5); text, binary and a 5 MiB message (far past
    every window: flow control both ways) echo; the client's close and
    END_STREAM end the tunnel cleanly, reason client, with one access
    line (status 101, proto h2, the bytes both ways)."""
    d = ws_start(spawn_kgated, pki, ws_backend)
    c = WsH2(pki, d.port)
    assert c.remote_settings[h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL] == 1
    sid = c.open_ws("/echo")
    st = c.streams[sid]
    assert st["status"] == 200, st
    assert not any(k.startswith("sec-websocket-accept") for k, _ in st["headers"])
    c.send_msg(sid, "hello over h2")
    c.send_msg(sid, b"\x00\x01\xfe\xff")
    assert c.messages(sid, 2) == [(1, b"hello over h2"), (2, b"\x00\x01\xfe\xff")]
    big = os.urandom(5 << 20)
    c.send_msg(sid, big)
    got = c.messages(sid, 1)
    assert len(got) == 1 and got[0][0] == 2 and got[0][1] == big
    c.send_msg(sid, struct.pack("!H", 1000), opcode=8, end=True)
    c.wait(sid)
    assert st["reset"] is None
    frames, _ = parse(st["data"])
    assert frames and frames[-1][0] == 8  # the backend's close answer
    assert tunnel_closed(d, "client")
    acc = access_tunnels(d)
    assert len(acc) == 1
    assert acc[0]["method"] == "CONNECT" and acc[0]["target"] == "/echo"
    assert int(acc[0]["bytes_in"]) > 5 << 20 and int(acc[0]["bytes_out"]) > 5 << 20
    assert d.events("http.tunnel_opened", path="h2")
    assert d.terminate() == 0
    assert worker_counter(d, "http_tunnels") == 1
    assert worker_counter(d, "http_tunnels_closed_client") == 1


def test_two_tunnels_and_get_streams_on_one_connection(pki, spawn_kgated, ws_backend):
    """Two WebSocket streams and ordinary GET streams interleave on one
    connection: each tunnel echoes its own messages, each GET gets the
    backend's answer."""
    d = ws_start(spawn_kgated, pki, ws_backend)
    c = WsH2(pki, d.port)
    a = c.open_ws("/echo")
    b = c.open_ws("/echo")
    gets = [c.request("/plain%d" % i) for i in range(4)]
    for i in range(20):
        c.send_msg(a, "a%d" % i)
        c.send_msg(b, b"b%d" % i)
    c.send_msg(b, os.urandom(300000))
    ma = c.messages(a, 20)
    mb = c.messages(b, 21)
    assert [p for _, p in ma] == [b"a%d" % i for i in range(20)]
    assert [p for _, p in mb[:20]] == [b"b%d" % i for i in range(20)]
    assert len(mb[20][1]) == 300000
    for st in c.wait(*gets):
        # websockets answers a request without an upgrade itself: 426
        assert st["status"] == 426, st
    for sid in (a, b):
        c.send_msg(sid, struct.pack("!H", 1000), opcode=8, end=True)
    c.wait(a, b)
    assert tunnel_closed(d, "client", count=2)
    assert len(access_tunnels(d)) == 2


def test_identity_in_the_backend_handshake_and_spoofs_stripped(pki, spawn_kgated, ws_backend):
    """The backend's handshake: GET with Upgrade and Connection, kgate's
    own Sec-WebSocket-Key (a client's is dropped), the client's version
    and subprotocol, kgate's identity headers, no spoof."""
    d = ws_start(spawn_kgated, pki, ws_backend)
    c = WsH2(pki, d.port)
    sid = c.open_ws("/headers", headers=[
        ("sec-websocket-protocol", "chat"),
        ("sec-websocket-key", "c3Bvb2ZlZCBrZXkgMTIzNA=="),
        ("x-forwarded-for", "6.6.6.6"), ("x-forwarded-clientcert-subject", "CN=evil"),
        ("client-cert", ":ZXZpbA==:"), ("x-real-ip", "6.6.6.6")])
    assert c.streams[sid]["status"] == 200
    (op, payload), = c.messages(sid, 1)
    hdrs = json.loads(payload)

    def vals(name):
        return [v for k, v in hdrs if k.lower() == name]
    assert vals("upgrade") == ["websocket"]
    assert vals("connection") == ["upgrade"]
    assert vals("sec-websocket-version") == ["13"]
    assert vals("sec-websocket-protocol") == ["chat"]
    key, = vals("sec-websocket-key")
    assert key != "c3Bvb2ZlZCBrZXkgMTIzNA==" and len(key) == 24
    assert vals("x-forwarded-for") == ["127.0.0.1"]
    assert "6.6.6.6" not in json.dumps(hdrs)
    assert "CN=evil" not in json.dumps(hdrs) and "ZXZpbA" not in json.dumps(hdrs)
    assert vals("x-forwarded-clientcert-subjectdn") == ["CN=client1,O=kgate test"]
    assert vals("host") == ["localhost:%d" % d.port]
    c.conn.reset_stream(sid)
    c.flush()


def test_refused_handshake_is_an_ordinary_response(pki, spawn_kgated, ws_backend):
    """A backend that answers the handshake with 403: the client's stream
    gets that 403 and its body; no tunnel is counted."""
    d = ws_start(spawn_kgated, pki, ws_backend)
    c = WsH2(pki, d.port)
    sid = c.open_ws("/deny")
    st, = c.wait(sid)
    assert st["status"] == 403 and bytes(st["data"]) == b"denied\n"
    # the connection goes on
    assert c.streams[c.open_ws("/echo")]["status"] == 200
    assert d.terminate() == 0
    assert worker_counter(d, "http_tunnels") == 1


def test_plain_connect_and_other_protocols_refused(pki, spawn_kgated, ws_backend):
    """A CONNECT without :protocol (a forward-proxy tunnel) and an
    extended CONNECT for another protocol get 400; neither reaches the
    backend."""
    d = ws_start(spawn_kgated, pki, ws_backend)
    c = WsH2(pki, d.port)
    sid = c.conn.get_next_available_stream_id()
    c.conn.send_headers(sid, [(":method", "CONNECT"), (":authority", "example.com:443")])
    c.streams[sid] = {"status": None, "headers": [], "data": bytearray(), "done": False,
                      "reset": None}
    c.flush()
    st, = c.wait(sid)
    assert st["status"] == 400
    other = c.open_ws("/echo", protocol="connect-udp")
    st, = c.wait(other)
    assert st["status"] == 400
    assert ws_backend.handshakes == []


def test_idle_timeout_cuts_a_silent_tunnel(pki, spawn_kgated, ws_backend):
    """No byte either way for tunnel_idle_timeout_ms: the stream is reset
    (CANCEL), reason idle_timeout, the backend's connection closed; the
    client connection lives on."""
    d = ws_start(spawn_kgated, pki, ws_backend, tunnel_idle_timeout_ms=800)
    c = WsH2(pki, d.port)
    sid = c.open_ws("/silent")
    c.send_msg(sid, "nobody answers")
    st, = c.wait(sid, timeout=10)
    assert st["reset"] == 8, st
    assert tunnel_closed(d, "idle_timeout")
    assert len(access_tunnels(d)) == 1
    live = c.open_ws("/echo")
    c.send_msg(live, "still here")
    assert c.messages(live, 1) == [(1, b"still here")]
    assert d.terminate() == 0
    assert worker_counter(d, "http_tunnels_closed_idle_timeout") == len(
        d.events("http.tunnel_closed", reason="idle_timeout"))


def test_backend_close_ends_the_stream(pki, spawn_kgated, ws_backend):
    """The backend closes (its close frame, then FIN): the client sees the
    frames, then END_STREAM; the client's END_STREAM completes it,
    reason backend."""
    d = ws_start(spawn_kgated, pki, ws_backend)
    c = WsH2(pki, d.port)
    sid = c.open_ws("/bye")
    msgs = c.messages(sid, 2)
    assert msgs[0] == (1, b"bye") and msgs[1][0] == 8
    c.pump(lambda: c.streams[sid]["done"])
    assert c.streams[sid]["reset"] is None
    c.send_msg(sid, msgs[1][1], opcode=8, end=True)
    c.flush()
    assert tunnel_closed(d, "backend")
    assert d.terminate() == 0
    assert worker_counter(d, "http_tunnels_closed_backend") == 1


def test_client_reset_closes_the_backend(pki, spawn_kgated, ws_backend):
    """RST_STREAM from the client mid-tunnel: the backend connection is
    closed, reason error, one access line; the connection goes on."""
    d = ws_start(spawn_kgated, pki, ws_backend)
    c = WsH2(pki, d.port)
    sid = c.open_ws("/echo")
    c.send_msg(sid, "x")
    assert c.messages(sid, 1) == [(1, b"x")]
    closed = ws_backend.closed
    c.conn.reset_stream(sid, error_code=8)
    c.flush()
    assert tunnel_closed(d, "error")
    assert wait_closed(ws_backend, closed + 1)
    assert len(access_tunnels(d)) == 1
    assert c.streams[c.open_ws("/echo")]["status"] == 200


def wait_closed(backend, n, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if backend.closed >= n:
            return True
        time.sleep(0.05)
    return False


def test_lifetime_limit_cuts_a_busy_tunnel(pki, spawn_kgated, ws_backend):
    """tunnel_max_lifetime_s=1 cuts a tunnel that is never idle."""
    d = ws_start(spawn_kgated, pki, ws_backend, tunnel_max_lifetime_s=1)
    c = WsH2(pki, d.port)
    sid = c.open_ws("/echo")
    t0 = time.monotonic()
    for i in range(100):
        c.send_msg(sid, "tick%d" % i)
        c.messages(sid, 1)
        if c.streams[sid]["done"]:
            break
        time.sleep(0.05)
    lived = time.monotonic() - t0
    assert c.streams[sid]["reset"] == 8 and 0.8 < lived < 4, (lived, c.streams[sid])
    assert tunnel_closed(d, "lifetime")
    assert d.terminate() == 0
    assert worker_counter(d, "http_tunnels_closed_lifetime") == 1


def test_drain_sends_goaway_and_cuts_tunnels_at_the_deadline(pki, spawn_kgated, ws_backend):
    """SIGTERM: GOAWAY, the open tunnel stays while the daemon drains and
    is cut at the drain timeout (base_config: 2 s)."""
    d = ws_start(spawn_kgated, pki, ws_backend)
    c = WsH2(pki, d.port)
    sid = c.open_ws("/echo")
    c.send_msg(sid, "before")
    assert c.messages(sid, 1) == [(1, b"before")]
    d.proc.send_signal(signal.SIGTERM)
    t0 = time.monotonic()
    c.pump(lambda: c.goaway is not None)
    # python3-h2 sends nothing after a GOAWAY it received: the tunnel
    # stays open (no reset, no END_STREAM) until the drain timeout.
    assert not c.streams[sid]["done"]
    c.pump(lambda: c.closed or c.streams[sid]["done"], timeout=10)
    cut = time.monotonic() - t0
    assert 1.0 < cut < 6, cut
    d.proc.wait(10)
    assert d.terminate() == 0
    assert d.events("http.tunnel_closed", reason="drain"), d.log()
    assert worker_counter(d, "http_tunnels_closed_drain") == 1


class Switcher:
    """A backend that answers every handshake with the 101 it is given
    (wrong ones included), then sends "hi" as a text frame."""

    def __init__(self, answer):
        import threading
        self.answer = answer
        self.heads = []
        self.srv = socket.socket()
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(8)
        self.address = "127.0.0.1:%d" % self.srv.getsockname()[1]
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while True:
            try:
                s, _ = self.srv.accept()
            except OSError:
                return
            with s:
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    head += chunk
                self.heads.append(head.decode())
                key = [ln.split(":", 1)[1].strip() for ln in head.decode().split("\r\n")
                       if ln.lower().startswith("sec-websocket-key:")]
                accept = base64.b64encode(hashlib.sha1(
                    (key[0] if key else "").encode() + WS_GUID).digest()).decode()
                s.sendall(self.answer.replace("{accept}", accept).encode() + b"\x81\x02hi")
                s.recv(1)

    def close(self):
        self.srv.close()


WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
GOOD_101 = ("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n"
            "Sec-WebSocket-Protocol: chat\r\n\r\n")


@pytest.mark.parametrize("answer,status", [
    (GOOD_101, 200),
    (GOOD_101.replace("{accept}", "d3JvbmcgYWNjZXB0IHZhbHVlIQ=="), 502),
    (GOOD_101.replace("Upgrade: websocket\r\n", "Upgrade: h2c\r\n"), 502),
])
def test_the_backend_101_is_checked(pki, spawn_kgated, answer, status):
    """The backend's 101 must carry the Sec-WebSocket-Accept of the key
    kgate sent and Upgrade: websocket, else the client gets 502; a good
    one becomes 200 with the backend's subprotocol (no accept field), and
    the frame that came with the 101 follows it."""
    b = Switcher(answer)
    try:
        d = ws_start(spawn_kgated, pki, b)
        c = WsH2(pki, d.port)
        sid = c.open_ws("/x", headers=[("sec-websocket-protocol", "chat")])
        st = c.streams[sid]
        assert st["status"] == status, st
        if status == 200:
            assert ("sec-websocket-protocol", "chat") in st["headers"]
            assert not [k for k, _ in st["headers"] if k == "sec-websocket-accept"]
            assert c.messages(sid, 1) == [(1, b"hi")]
        else:
            c.wait(sid)
            assert d.events("http.error_response", status="502")
        assert "Sec-WebSocket-Key:" in b.heads[0] and "GET /x HTTP/1.1" in b.heads[0]
    finally:
        b.close()


def test_not_offered_with_h2_backends(pki, spawn_kgated, ws_backend):
    """backend_protocol h2: tunnels go to HTTP/1.1 backends only, so the
    SETTINGS do not offer the extended CONNECT, and one sent anyway is
    refused (reset, or 400) without reaching a backend."""
    d = ws_start(spawn_kgated, pki, ws_backend, backend_protocol="h2")
    c = H2Client(pki, d.port)
    c.get("/who")  # kgated's SETTINGS came before any answer (an h2c 502 here)
    assert c.conn.remote_settings.enable_connect_protocol in (None, 0)
    sid = c.conn.get_next_available_stream_id()
    c.conn.send_headers(sid, [(":method", "CONNECT"), (":protocol", "websocket"),
                              (":scheme", "https"), (":authority", "localhost:%d" % d.port),
                              (":path", "/echo"), ("sec-websocket-version", "13")])
    c.streams[sid] = {"status": None, "headers": [], "data": bytearray(), "done": False,
                      "reset": None}
    c.flush()
    c.pump(lambda: c.streams[sid]["done"] or c.closed)
    st = c.streams[sid]
    assert c.closed or st["reset"] is not None or st["status"] == 400, st
    assert ws_backend.handshakes == []
