"""WebSocket through https listeners (issue 17): an Upgrade: websocket
request goes to the backend with its Upgrade, Connection and
Sec-WebSocket-* fields, and once the backend answers 101 the client
connection is a byte tunnel both ways, with idle and lifetime limits, a
drain deadline, counters and one access log line when it ends.

The backend is a python3-websockets server in a thread of its own; the
client is python3-websockets over mutual TLS. Both turn their keepalive
pings off, so a silent tunnel is really silent."""
import asyncio
import http.server
import json
import os
import random
import signal
import socket
import ssl
import threading
import time

import pytest
import websockets

from conftest import base_config, client_context, tls_listener, wait_until, worker_counter


class WsBackend:
    """A websockets server on an ephemeral loopback port. Paths:
    /echo echoes every message; /headers sends the handshake's request
    headers as one JSON message, then echoes; /bye sends "bye" and closes
    (the backend ends the tunnel); /silent reads and never answers; /deny
    refuses the handshake with 403."""

    def __init__(self):
        self.handshakes = []  # request headers of every handshake, [(name, value)]
        self.closed = 0       # connections whose handler returned
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(10), "websockets backend did not start"

    def _run(self):
        asyncio.set_event_loop(self.loop)

        async def process_request(path, headers):
            self.handshakes.append(list(headers.raw_items()))
            if path == "/deny":
                return (http.HTTPStatus.FORBIDDEN, [("Content-Type", "text/plain")], b"denied\n")
            return None

        async def handler(ws, path):
            try:
                if path == "/headers":
                    await ws.send(json.dumps(self.handshakes[-1]))
                if path == "/bye":
                    await ws.send("bye")
                    await ws.close()
                    return
                async for msg in ws:
                    if path != "/silent":
                        await ws.send(msg)
            except websockets.ConnectionClosed:
                pass
            finally:
                self.closed += 1

        async def start():
            return await websockets.serve(handler, "127.0.0.1", 0,
                                          process_request=process_request,
                                          max_size=None, ping_interval=None)

        self.server = self.loop.run_until_complete(start())
        self.address = "127.0.0.1:%d" % self.server.sockets[0].getsockname()[1]
        self._ready.set()
        self.loop.run_forever()

    def close(self):
        async def stop():
            self.server.close()
            await self.server.wait_closed()
        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


class _PlainHandler(http.server.BaseHTTPRequestHandler):
    """Answers every GET with 200 and the request's headers as JSON: a
    backend that does not take the upgrade."""
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = json.dumps([[k, v] for k, v in self.headers.items()]).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class PlainBackend:
    def __init__(self):
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _PlainHandler)
        self.server.daemon_threads = True
        self.address = "127.0.0.1:%d" % self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def ws_backend():
    b = WsBackend()
    yield b
    b.close()


@pytest.fixture
def plain_backend():
    b = PlainBackend()
    yield b
    b.close()


def start(spawn_kgated, pki, backend, log_level="debug", **extra):
    lst = tls_listener(pki, [backend.address], protocol="https",
                       http={"access_log": "on"}, **extra)
    return spawn_kgated(base_config(pki, [lst], log_level=log_level))


def connect(pki, d, path, **kw):
    return websockets.connect("wss://localhost:%d%s" % (d.port, path), ssl=client_context(pki),
                              max_size=None, ping_interval=None, close_timeout=5,
                              open_timeout=10, **kw)


def run(coro, timeout=60):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def tunnel_closed(d, reason, count=1, timeout=10):
    """The http.tunnel_closed events with reason, once there are count."""
    return d.wait_event("http.tunnel_closed", min_count=count, timeout=timeout, reason=reason)


def access_101(d):
    return [e for e in d.events("http.access") if e["status"] == "101"]


def header_values(pairs, name):
    return [v for k, v in pairs if k.lower() == name.lower()]


def test_echo_text_binary_many_and_large(pki, spawn_kgated, ws_backend):
    """Text and binary frames, 500 small messages and 6 MiB each way over
    one tunnel; the close ends the tunnel cleanly (not an error), with one
    access log line: status 101, every byte counted both ways."""
    d = start(spawn_kgated, pki, ws_backend)
    big = random.Random(5).randbytes(6 << 20)

    async def session():
        async with connect(pki, d, "/echo") as ws:
            await ws.send("hello")
            assert await ws.recv() == "hello"
            await ws.send(b"\x00\x01\xfe\xff")
            assert await ws.recv() == b"\x00\x01\xfe\xff"
            for i in range(500):
                await ws.send("m%d" % i)
            for i in range(500):
                assert await ws.recv() == "m%d" % i
            await ws.send(big)
            assert await ws.recv() == big
            assert ws.response_headers["Upgrade"].lower() == "websocket"

    run(session())
    ev = d.wait_event("http.tunnel_closed", timeout=10)
    assert ev and ev[0]["reason"] in ("client", "backend"), d.log()
    assert int(ev[0]["bytes_in"]) > len(big) and int(ev[0]["bytes_out"]) > len(big), ev
    acc = wait_until(lambda: access_101(d), 5)
    assert acc and acc[0]["method"] == "GET" and acc[0]["target"] == "/echo", d.log()
    assert int(acc[0]["bytes_in"]) > len(big) and int(acc[0]["bytes_out"]) > len(big), acc
    assert d.terminate() == 0
    assert worker_counter(d, "http_tunnels") == 1
    ended = sum(worker_counter(d, "http_tunnels_closed_" + r) for r in ("client", "backend"))
    assert ended == 1, d.log()
    assert worker_counter(d, "http_tunnels_closed_error") == 0


def test_identity_reaches_the_handshake_and_spoofs_are_stripped(pki, spawn_kgated, ws_backend):
    """The backend's handshake carries kgate's identity headers, the
    client's copies of them are gone, and the WebSocket fields pass."""
    d = start(spawn_kgated, pki, ws_backend)
    spoof = {"X-Forwarded-For": "10.9.9.9", "X-Forwarded-Proto": "gopher",
             "X-Forwarded-Clientcert-subjectdn": "CN=admin", "Client-Cert": ":AAAA:",
             "X-Kept": "yes"}

    async def session():
        async with connect(pki, d, "/headers", extra_headers=spoof) as ws:
            seen = json.loads(await ws.recv())
            await ws.send("after")
            assert await ws.recv() == "after"
            return seen

    seen = run(session())
    assert header_values(seen, "X-Forwarded-For") == ["127.0.0.1"], seen
    assert header_values(seen, "X-Forwarded-Proto") == ["https"], seen
    assert header_values(seen, "X-Forwarded-Clientcert-subjectdn") == [
        "CN=client1,O=kgate test"], seen
    assert header_values(seen, "Client-Cert") != [":AAAA:"], seen
    assert len(header_values(seen, "Client-Cert")) == 1, seen
    assert header_values(seen, "X-Kept") == ["yes"], seen
    assert [v.lower() for v in header_values(seen, "Upgrade")] == ["websocket"], seen
    assert [v.lower() for v in header_values(seen, "Connection")] == ["upgrade"], seen
    assert len(header_values(seen, "Sec-WebSocket-Key")) == 1, seen
    assert header_values(seen, "Sec-WebSocket-Version") == ["13"], seen


def tls_socket(pki, d):
    raw = socket.create_connection(("127.0.0.1", d.port), timeout=10)
    return client_context(pki).wrap_socket(raw, server_hostname="localhost")


def read_response(s):
    """(status, headers dict lower-case, body) of one Content-Length response."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = s.recv(65536)
        assert data, "connection closed before a response head: %r" % buf
        buf += data
    head, body = buf.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, v = line.split(":", 1)
        headers[k.strip().lower()] = v.strip()
    n = int(headers.get("content-length", "0"))
    while len(body) < n:
        data = s.recv(65536)
        assert data
        body += data
    return status, headers, body


def test_other_upgrades_are_dropped_and_a_refused_upgrade_stays_http(pki, spawn_kgated,
                                                                     plain_backend):
    """Upgrade: h2c does not reach the backend; a websocket upgrade the
    backend answers with 200 is a normal response, and the same
    connection goes on with HTTP."""
    d = start(spawn_kgated, pki, plain_backend)
    s = tls_socket(pki, d)
    s.sendall(b"GET /h2c HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade, HTTP2-Settings\r\n"
              b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n")
    status, _, body = read_response(s)
    seen = json.loads(body)
    assert status == 200
    assert header_values(seen, "Upgrade") == [] and header_values(seen, "Connection") == []
    assert header_values(seen, "HTTP2-Settings") == []
    s.sendall(b"GET /ws HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\n"
              b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
              b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
    status, headers, body = read_response(s)
    seen = json.loads(body)
    assert status == 200 and "upgrade" not in headers
    assert [v.lower() for v in header_values(seen, "Upgrade")] == ["websocket"], seen
    s.sendall(b"GET /after HTTP/1.1\r\nHost: localhost\r\n\r\n")
    status, _, body = read_response(s)
    assert status == 200 and header_values(json.loads(body), "Upgrade") == []
    s.close()
    assert d.terminate() == 0
    assert worker_counter(d, "http_tunnels") == 0
    assert worker_counter(d, "http_requests") == 3


def test_idle_timeout_cuts_a_silent_tunnel(pki, spawn_kgated, ws_backend):
    d = start(spawn_kgated, pki, ws_backend, tunnel_idle_timeout_ms=600)

    async def session():
        async with connect(pki, d, "/echo") as ws:
            await ws.send("x")
            assert await ws.recv() == "x"
            t0 = time.monotonic()
            with pytest.raises(websockets.ConnectionClosed):
                await ws.recv()
            return time.monotonic() - t0

    waited = run(session())
    assert 0.4 < waited < 5, waited
    ev = tunnel_closed(d, "idle_timeout")
    assert ev and ev[0]["level"] == "info", d.log()
    assert wait_until(lambda: access_101(d), 5)
    assert d.terminate() == 0
    assert worker_counter(d, "http_tunnels_closed_idle_timeout") == 1


def test_lifetime_limit_cuts_a_busy_tunnel(pki, spawn_kgated, ws_backend):
    d = start(spawn_kgated, pki, ws_backend, tunnel_max_lifetime_s=1)

    async def session():
        async with connect(pki, d, "/echo") as ws:
            t0 = time.monotonic()
            with pytest.raises(websockets.ConnectionClosed):
                for i in range(100):
                    await ws.send("tick%d" % i)
                    assert await ws.recv() == "tick%d" % i
                    await asyncio.sleep(0.05)
            return time.monotonic() - t0

    lived = run(session())
    assert 0.8 < lived < 4, lived
    assert tunnel_closed(d, "lifetime"), d.log()
    assert d.terminate() == 0
    assert worker_counter(d, "http_tunnels_closed_lifetime") == 1


def test_backend_close_ends_the_tunnel(pki, spawn_kgated, ws_backend):
    """The backend closes (close frame, then FIN): the client gets the
    close, kgate passes the FIN on as close_notify, and the tunnel ends
    as the backend's."""
    d = start(spawn_kgated, pki, ws_backend)

    async def session():
        async with connect(pki, d, "/bye") as ws:
            assert await ws.recv() == "bye"
            with pytest.raises(websockets.ConnectionClosedOK):
                await ws.recv()
            return ws.close_code

    assert run(session()) == 1000
    assert tunnel_closed(d, "backend"), d.log()
    assert d.terminate() == 0
    assert worker_counter(d, "http_tunnels_closed_backend") == 1


def test_client_end_is_passed_to_the_backend(pki, spawn_kgated, ws_backend):
    """A client that ends its stream (close_notify and FIN) without a
    close frame: the backend sees the end of its stream, and the tunnel
    ends as the client's."""
    d = start(spawn_kgated, pki, ws_backend)
    s = tls_socket(pki, d)
    s.sendall(b"GET /silent HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\n"
              b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
              b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
    status, headers, _ = read_response(s)
    assert status == 101 and headers["upgrade"].lower() == "websocket", headers
    assert headers["connection"].lower() == "upgrade"
    assert headers["sec-websocket-accept"] == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    closed = ws_backend.closed
    s = s.unwrap()  # close_notify
    s.shutdown(socket.SHUT_WR)
    assert wait_until(lambda: ws_backend.closed > closed, 10), "backend never saw the end"
    assert tunnel_closed(d, "client"), d.log()
    s.close()
    assert d.terminate() == 0
    assert worker_counter(d, "http_tunnels_closed_client") == 1


def masked_frame(payload, mask=b"\x37\xfa\x21\x3d"):
    """A client's final text frame (RFC 6455 5.2), payload under 126 bytes."""
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x81, 0x80 | len(payload)]) + mask + body


def test_bytes_behind_the_handshake_go_first(pki, spawn_kgated, ws_backend):
    """A client that sends a frame in the same write as its handshake (it
    did not wait for the 101): the frame reaches the backend as the
    tunnel's first bytes, and the echo comes back behind the 101."""
    d = start(spawn_kgated, pki, ws_backend)
    s = tls_socket(pki, d)
    s.sendall(b"GET /echo HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\n"
              b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
              b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n" + masked_frame(b"early"))
    status, _, rest = read_response(s)
    assert status == 101
    while len(rest) < 7:
        data = s.recv(100)
        assert data, rest
        rest += data
    assert rest == b"\x81\x05early", rest
    s.close()
    assert tunnel_closed(d, "client"), d.log()


def test_client_reset_mid_transfer_is_an_error_end(pki, spawn_kgated, ws_backend):
    """A client that resets its connection while the backend's bytes are
    on their way: the tunnel ends as an error, the backend's side is
    closed, and the daemon goes on serving tunnels."""
    import struct
    d = start(spawn_kgated, pki, ws_backend)
    s = tls_socket(pki, d)
    s.sendall(b"GET /echo HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\n"
              b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
              b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
    assert read_response(s)[0] == 101
    payload = bytes(4 << 20)  # echoed back: 4 MiB the client never reads
    mask = b"\x01\x02\x03\x04"
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload[:65536])) * 64
    s.sendall(bytes([0x82, 0x80 | 127]) + struct.pack(">Q", len(payload)) + mask + body)
    time.sleep(0.3)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
    assert tunnel_closed(d, "error"), d.log()

    async def again():
        async with connect(pki, d, "/echo") as ws:
            await ws.send("still")
            assert await ws.recv() == "still"

    run(again())


def test_drain_cuts_tunnels_at_the_deadline(pki, spawn_kgated, ws_backend):
    """SIGTERM: an open tunnel keeps working while the daemon drains and
    is cut at the drain timeout (base_config: 2 s), not held forever."""
    d = start(spawn_kgated, pki, ws_backend)

    async def session():
        async with connect(pki, d, "/echo") as ws:
            await ws.send("before")
            assert await ws.recv() == "before"
            d.proc.send_signal(signal.SIGTERM)
            t0 = time.monotonic()
            await asyncio.sleep(0.3)
            await ws.send("during")
            assert await ws.recv() == "during"
            with pytest.raises(websockets.ConnectionClosed):
                await ws.recv()
            return time.monotonic() - t0

    cut = run(session())
    assert 1.0 < cut < 6, cut
    d.proc.wait(10)
    assert d.terminate() == 0
    assert d.events("http.tunnel_closed", reason="drain"), d.log()
    assert worker_counter(d, "http_tunnels_closed_drain") == 1


def test_many_tunnels_leave_no_fd_behind(pki, spawn_kgated, ws_backend):
    """40 tunnels, 8 at a time, each closed by the client: the daemon's
    descriptors return to where they were (ASan checks memory at exit),
    and the active gauge to 0."""
    d = start(spawn_kgated, pki, ws_backend, log_level="info")
    base = d.fd_count()

    async def one(i):
        async with connect(pki, d, "/echo") as ws:
            await ws.send("n%d" % i)
            assert await ws.recv() == "n%d" % i

    async def all_of_them():
        for k in range(5):
            await asyncio.gather(*(one(k * 8 + i) for i in range(8)))

    run(all_of_them(), timeout=120)
    assert wait_until(lambda: d.fd_count() <= base, 10), (base, d.fd_count())
    assert d.terminate() == 0
    assert worker_counter(d, "http_tunnels") == 40
    ended = sum(worker_counter(d, "http_tunnels_closed_" + r)
                for r in ("client", "backend", "idle_timeout", "lifetime", "drain", "error"))
    assert ended == 40
    assert worker_counter(d, "http_tunnels_closed_error") == 0


def test_limits_are_listener_keys_kgatectl_changes(pki, spawn_kgated, ws_backend, tmp_path):
    """The two limits go config file -> state.json -> kgatectl listener
    show/update unchanged; an update applies to tunnels opened after it;
    a tls listener refuses them."""
    from conftest import KGATECTL, run as run_cmd
    state = str(tmp_path / "state")
    lst = tls_listener(pki, [ws_backend.address], protocol="https",
                       tunnel_max_lifetime_s=3600)
    d = spawn_kgated(base_config(pki, [lst]), args=["--state-dir", state])
    ctl = [KGATECTL, "--socket", os.path.join(state, "control.sock")]
    show = json.loads(run_cmd(ctl + ["-o", "json", "listener", "show", "web"]).stdout)
    assert show["tunnel_idle_timeout_ms"] == 3600000 and show["tunnel_max_lifetime_s"] == 3600
    run_cmd(ctl + ["listener", "update", "web", "--tunnel-idle-timeout-ms", "400"])
    show = json.loads(run_cmd(ctl + ["-o", "json", "listener", "show", "web"]).stdout)
    assert show["tunnel_idle_timeout_ms"] == 400
    doc = json.load(open(os.path.join(state, "state.json")))
    assert doc["listeners"][0]["tunnel_idle_timeout_ms"] == 400

    async def session():
        async with connect(pki, d, "/echo") as ws:
            await ws.send("x")
            assert await ws.recv() == "x"
            with pytest.raises(websockets.ConnectionClosed):
                await ws.recv()

    run(session(), timeout=10)
    assert tunnel_closed(d, "idle_timeout"), d.log()
    res = run_cmd(ctl + ["listener", "create", "--name", "t", "--protocol", "tls", "--port", "0",
                         "--bind", "127.0.0.1", "--cert", "web", "--backend",
                         ws_backend.address, "--tunnel-max-lifetime-s", "5"], check=False)
    assert res.returncode != 0 and 'only for protocol "https"' in res.stderr, res.stderr


def test_upgrade_cuts_the_old_process_tunnels_at_its_drain_deadline(pki, spawn_kgated,
                                                                    ws_backend, tmp_path):
    """SIGUSR2: a tunnel on the replaced process works on while it drains
    and is cut at its drain timeout (2 s); a new tunnel goes to the new
    process and outlives the old one."""
    from conftest import become_subreaper
    become_subreaper()
    lst = tls_listener(pki, [ws_backend.address], protocol="https", http={"access_log": "on"})
    d = spawn_kgated(base_config(pki, [lst], log_level="debug"),
                     args=["--state-dir", str(tmp_path / "state")])

    async def session():
        async with connect(pki, d, "/echo") as old:
            await old.send("a")
            assert await old.recv() == "a"
            await asyncio.get_running_loop().run_in_executor(None, d.upgrade)
            t0 = time.monotonic()
            async with connect(pki, d, "/echo") as new:
                await new.send("b")
                assert await new.recv() == "b"
                await old.send("c")
                assert await old.recv() == "c"
                with pytest.raises(websockets.ConnectionClosed):
                    await old.recv()
                cut = time.monotonic() - t0
                await new.send("d")
                assert await new.recv() == "d"
            return cut

    cut = run(session())
    assert 1.0 < cut < 6, cut
    d.check_retired()
    assert d.events("http.tunnel_closed", reason="drain"), d.log()
    assert wait_until(lambda: d.events("http.tunnel_closed", reason="backend") or
                      d.events("http.tunnel_closed", reason="client"), 5), d.log()
