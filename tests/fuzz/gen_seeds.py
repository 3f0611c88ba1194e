#!/usr/bin/python3
"""Regenerates the seed corpora that come from real traffic or files:
handshake/ and tls_record/ (client flights recorded with Python's ssl over
memory BIOs against a server using data/'s PKI), certs/ (the data/ files in
the harness's input format), control/ (control sessions carrying data/'s
certificates inline), proxy_v2/ (headers of tcp and TLS connections and
each bound), h2/ (client connections made by python3-h2: requests,
bodies, trailers, floods, malformed heads), h2c/ (backend answers made by
python3-h2: gRPC trailers, interim heads, resets, GOAWAY, full windows).
Hand-written seeds of the other
harnesses are committed as they are. Usage:
tests/fuzz/gen_seeds.py [handshake|certs|control|proxy_v2|h2|h2c]... (default: all)"""
import base64
import json
import os
import socket
import ssl
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "data")
CORPUS = os.path.join(HERE, "corpus")
SEP = b"\n--8<--\n"


def data(name):
    with open(os.path.join(DATA, name), "rb") as f:
        return f.read()


def write(harness, name, blob):
    os.makedirs(os.path.join(CORPUS, harness), exist_ok=True)
    with open(os.path.join(CORPUS, harness, name), "wb") as f:
        f.write(blob)


def client_flights(version, client_cert=None, tls12_ciphers=None):
    """Everything the client sends in one handshake, as bytes."""
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(os.path.join(DATA, "server.pem"), os.path.join(DATA, "server.key"))
    sctx.load_verify_locations(os.path.join(DATA, "ca.pem"))
    sctx.verify_mode = ssl.CERT_OPTIONAL
    cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    cctx.check_hostname = False
    cctx.verify_mode = ssl.CERT_NONE
    cctx.minimum_version = version
    cctx.maximum_version = version
    if tls12_ciphers:
        cctx.set_ciphers(tls12_ciphers)
    if client_cert:
        cctx.load_cert_chain(os.path.join(DATA, client_cert), os.path.join(DATA, "client.key"))
    cin, cout, sin, sout = (ssl.MemoryBIO() for _ in range(4))
    c = cctx.wrap_bio(cin, cout, server_hostname="localhost")
    s = sctx.wrap_bio(sin, sout, server_side=True)
    sent = b""
    c_done = s_done = False
    for _ in range(16):
        for obj, done_name in ((c, "c"), (s, "s")):
            try:
                obj.do_handshake()
                if done_name == "c":
                    c_done = True
                else:
                    s_done = True
            except ssl.SSLWantReadError:
                pass
        chunk = cout.read()
        sent += chunk
        sin.write(chunk)
        cin.write(sout.read())
        if c_done and s_done:
            break
    # One request after the handshake, as a client would pipeline it.
    c.write(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    sent += cout.read()
    return sent


def request(op, **args):
    return json.dumps({"version": 1, "op": op, "args": args}).encode()


def control_seeds():
    pem = {n: data(n).decode() for n in ("ca.pem", "ca.crl", "server.pem", "server.key",
                                         "good.pem", "client.key")}
    upload = [request("cert.upload", name="clients", type="ca", cert=pem["ca.pem"],
                      crl=pem["ca.crl"]),
              request("cert.upload", name="web", type="server", cert=pem["server.pem"],
                      key=pem["server.key"])]
    listener = {"name": "web", "protocol": "tls", "bind": "127.0.0.1", "port": 0,
                "certificate": "web", "ca": "clients", "mutual_auth": "required",
                "backends": [{"address": "127.0.0.1:9001", "weight": 2}],
                "health_check": {"type": "http", "path": "/healthz"}}
    sessions = {
        "read-only": [request("status"), request("stats"), request("cert.list"),
                      request("listener.list")],
        "certs": upload + [request("cert.show", name="web"), request("cert.list"),
                           request("cert.set_crl", name="clients", crl=pem["ca.crl"]),
                           request("cert.replace", name="web", cert=pem["server.pem"],
                                   key=pem["server.key"]),
                           request("cert.delete", name="clients")],
        "listener": upload + [
            request("listener.create", listener=listener),
            request("backend.add", listener="web", address="[::1]:9002", weight=1),
            request("backend.set_weight", listener="web", address="127.0.0.1:9001",
                    weight=5),
            request("backend.drain", listener="web", address="127.0.0.1:9001"),
            request("backend.enable", listener="web", address="127.0.0.1:9001"),
            request("listener.update", name="web", set={"idle_timeout_ms": 1000}),
            request("listener.show", name="web"), request("stats", listener="web"),
            request("listener.stop", name="web"), request("listener.start", name="web"),
            request("cert.delete", name="web"),
            request("backend.remove", listener="web", address="[::1]:9002"),
            request("listener.delete", name="web")],
        "bad": [b"not json", b"[]", b'{"version": 2, "op": "status"}',
                b'{"version": 1, "op": "nope"}', b'{"version": 1, "op": "status", "args": 3}',
                request("cert.upload", name="x\ny", type="ca", cert="garbage"),
                request("listener.create", listener={"name": "a", "protocol": "tcp"})],
    }
    for name, reqs in sessions.items():
        write("control", name, SEP.join(reqs))


def proxy_v2_seed(flags, src, dst, sport, dport, client=0, verify=0, grow=0,
                  cap=1024, fields=()):
    """fuzz_proxy_v2's input: the 45-byte head, then the text fields."""
    def addr(a):
        packed = socket.inet_pton(socket.AF_INET6 if ":" in a else socket.AF_INET, a)
        return packed.ljust(16, b"\0")
    head = (bytes([flags]) + struct.pack(">H", cap) + bytes([grow]) + addr(src) + addr(dst) +
            struct.pack(">HHBI", sport, dport, client, verify))
    assert len(head) == 45
    return head + SEP.join(f.encode() if isinstance(f, str) else f for f in fields)


def proxy_v2_seeds():
    tls = ["TLSv1.3", "client1", "TLS_AES_128_GCM_SHA256", "ecdsa-with-SHA256", "EC256",
           "localhost"]
    write("proxy_v2", "tcp4", proxy_v2_seed(0, "127.0.0.1", "127.0.0.1", 40000, 8443))
    write("proxy_v2", "tcp6", proxy_v2_seed(3, "2001:db8::1", "::1", 40000, 443))
    write("proxy_v2", "mixed-mapped", proxy_v2_seed(2, "192.0.2.1", "::1", 1, 2))
    write("proxy_v2", "tls-mtls", proxy_v2_seed(4, "127.0.0.1", "127.0.0.2", 5555, 443,
                                                client=7, fields=tls))
    write("proxy_v2", "tls-no-cert", proxy_v2_seed(4, "127.0.0.1", "127.0.0.2", 5555, 443,
                                                   client=1, verify=1,
                                                   fields=["TLSv1.2", "", "ECDHE-ECDSA-AES128-GCM-SHA256"]))
    write("proxy_v2", "tls6-unique-id", proxy_v2_seed(7, "::1", "::1", 1, 2, client=5,
                                                      fields=tls + [bytes(range(128))]))
    write("proxy_v2", "cn-utf8-nul", proxy_v2_seed(4, "1.2.3.4", "5.6.7.8", 1, 2, client=7,
                                                   fields=["TLSv1.3", "Jos\u00e9\0x"]))
    write("proxy_v2", "cn-too-long", proxy_v2_seed(4 | 16, "1.2.3.4", "5.6.7.8", 1, 2, client=7,
                                                   grow=2, fields=["TLSv1.3", "x" * 64]))
    write("proxy_v2", "cn-over-tlv", proxy_v2_seed(4 | 16, "1.2.3.4", "5.6.7.8", 1, 2, client=7,
                                                   grow=200, fields=["", "y"]))
    write("proxy_v2", "unique-id-129", proxy_v2_seed(0, "1.2.3.4", "5.6.7.8", 1, 2,
                                                     fields=[""] * 6 + ["u" * 129]))
    write("proxy_v2", "cap-short", proxy_v2_seed(4, "1.2.3.4", "5.6.7.8", 1, 2, client=7,
                                                 cap=40, fields=tls))
    write("proxy_v2", "unix-source", proxy_v2_seed(8, "1.2.3.4", "5.6.7.8", 1, 2))


def main():
    want = set(sys.argv[1:]) or {"handshake", "certs", "control", "proxy_v2", "h2", "h2c"}
    if "h2" in want:
        h2_seeds()
    if "h2c" in want:
        h2c_seeds()
    if "proxy_v2" in want:
        proxy_v2_seeds()
    if "control" in want:
        control_seeds()
    if "certs" in want:
        cert_seeds()
    if "handshake" in want:
        handshake_seeds()


def handshake_seeds():
    v12, v13 = ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3
    flights = {
        "tls12-good": client_flights(v12, "good.pem"),
        "tls12-revoked": client_flights(v12, "revoked.pem"),
        "tls12-noeku": client_flights(v12, "noeku.pem"),
        "tls12-nocert": client_flights(v12),
        "tls12-chacha": client_flights(v12, "good.pem", "ECDHE-ECDSA-CHACHA20-POLY1305"),
        "tls13-good": client_flights(v13, "good.pem"),
    }
    for name, blob in flights.items():
        write("handshake", name, blob)
        write("tls_record", name, blob)
    # The first record alone: a ClientHello.
    hello = flights["tls13-good"]
    write("handshake", "tls13-hello", hello[: 5 + (hello[3] << 8 | hello[4])])


def cert_seeds():
    write("certs", "server-ok", b"s" + data("server.pem") + SEP + data("server.key"))
    write("certs", "server-wrong-key", b"s" + data("server.pem") + SEP + data("client.key"))
    write("certs", "server-no-key", b"s" + data("server.pem") + SEP + data("server.pem"))
    write("certs", "ca-ok", b"c" + data("ca.pem"))
    write("certs", "ca-not-ca", b"c" + data("good.pem"))
    write("certs", "ca-crl", b"C" + data("ca.pem") + SEP + data("ca.crl"))
    write("certs", "ca-wrong-crl", b"C" + data("server.pem") + SEP + data("ca.crl"))
    write("certs", "chain", b"s" + data("good.pem") + data("ca.pem") + SEP + data("client.key"))
    pem = data("ca.pem")
    write("certs", "ca-truncated", b"c" + pem[: len(pem) // 2])
    body = b"".join(l for l in pem.splitlines(True) if not l.startswith(b"-----"))
    write("certs", "der-cert", b"d" + base64.b64decode(body))


def h2_client(validate=True):
    import h2.config
    import h2.connection
    cfg = h2.config.H2Configuration(client_side=True, validate_outbound_headers=validate,
                                    normalize_outbound_headers=validate,
                                    header_encoding=None)
    c = h2.connection.H2Connection(config=cfg)
    c.initiate_connection()
    return c


def h2_out(c):
    """The client's bytes after the connection preface (fuzz_h2 sends it)."""
    out = c.data_to_send()
    magic = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    return out[len(magic):] if out.startswith(magic) else out


def h2_head(method="GET", path="/", extra=()):
    return [(b":method", method.encode()), (b":scheme", b"https"),
            (b":authority", b"a.test"), (b":path", path.encode())] + list(extra)


def h2_seeds():
    """fuzz_h2 inputs: a control byte (fuzz_h2.c), then client frames."""
    import h2.settings
    seeds = {}
    c = h2_client()
    c.send_headers(1, h2_head(extra=[(b"user-agent", b"seed"), (b"cookie", b"a=1"),
                                     (b"cookie", b"b=2")]), end_stream=True)
    seeds["get"] = (0x0c, h2_out(c))
    c = h2_client()
    body = b"x" * 20000
    c.send_headers(1, h2_head("POST", "/up", [(b"content-length", str(len(body)).encode())]))
    c.send_data(1, body[:16000])
    c.send_data(1, body[16000:], end_stream=True)
    seeds["post-body"] = (0x8a, h2_out(c))
    c = h2_client()
    c.send_headers(1, h2_head("POST", "/grpc", [(b"te", b"trailers"),
                                               (b"content-type", b"application/grpc")]))
    c.send_data(1, b"\0\0\0\0\5hello")
    c.send_headers(1, [(b"grpc-timeout", b"1S")], end_stream=True)
    seeds["trailers"] = (0x25, h2_out(c))
    c = h2_client()
    for i in range(12):
        c.send_headers(1 + 2 * i, h2_head(path="/%d" % i), end_stream=True)
    seeds["many-streams"] = (0x4b, h2_out(c))
    c = h2_client()
    for i in range(60):
        c.send_headers(1 + 2 * i, h2_head())
        c.reset_stream(1 + 2 * i)
    seeds["rapid-reset"] = (0x0b, h2_out(c))
    c = h2_client()
    for i in range(30):
        c.ping(b"%08d" % i)
        c.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1000 + i})
    c.send_headers(1, h2_head(), end_stream=True)
    seeds["control"] = (0x0a, h2_out(c))
    c = h2_client()
    c.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
    c.send_headers(1, h2_head(), end_stream=True)
    c.send_headers(3, h2_head(), end_stream=True)
    seeds["zero-window"] = (0x0b, h2_out(c))
    c = h2_client()
    c.send_headers(1, h2_head(extra=[(b"x-big", b"v" * 20000)]), end_stream=True)
    c.send_headers(3, h2_head(), end_stream=True)
    seeds["continuation"] = (0x0b, h2_out(c))
    c = h2_client(validate=False)
    c.send_headers(1, [(b":method", b"CONNECT"), (b":protocol", b"websocket"),
                       (b":scheme", b"https"), (b":path", b"/chat"),
                       (b":authority", b"a.test")])
    c.send_data(1, b"hello")
    c.send_headers(3, [(b":method", b"CONNECT"), (b":authority", b"a.test:443")])
    seeds["connect"] = (0x1b, h2_out(c))
    c = h2_client(validate=False)
    c.send_headers(1, h2_head(extra=[(b"Upper", b"1")]), end_stream=True)
    c.send_headers(3, h2_head(extra=[(b"connection", b"close")]), end_stream=True)
    c.send_headers(5, h2_head(extra=[(b"x", b"a\r\nb")]), end_stream=True)
    c.send_headers(7, h2_head("POST", extra=[(b"content-length", b"3")]))
    c.send_data(7, b"abcdef", end_stream=True)
    c.send_headers(9, h2_head(extra=[(b"host", b"other.test")]), end_stream=True)
    c.send_headers(11, [(b":method", b"GET"), (b":path", b"/")], end_stream=True)
    seeds["malformed"] = (0x0b, h2_out(c))
    for name, (ctl, blob) in seeds.items():
        write("h2", name, bytes([ctl]) + blob)


def h2_server():
    """A python3-h2 server that took fuzz_h2c's three requests (streams 1,
    3 and 5, as h2_client.c opens them); its bytes start with SETTINGS."""
    import h2.config
    import h2.connection
    cli = h2_client()
    cli.send_headers(1, h2_head(path="/get"), end_stream=True)
    cli.send_headers(3, h2_head("POST", "/open"))
    cli.send_data(3, b"body")
    cli.send_headers(5, h2_head("POST", "/ended"))
    cli.send_data(5, b"all", end_stream=True)
    srv = h2.connection.H2Connection(config=h2.config.H2Configuration(
        client_side=False, header_encoding=None))
    srv.initiate_connection()
    srv.receive_data(cli.data_to_send())
    return srv


def h2c_seeds():
    """fuzz_h2c inputs: a control byte (fuzz_h2c.c), then backend frames."""
    grpc = [(b"content-type", b"application/grpc")]
    seeds = {}
    s = h2_server()
    for sid in (1, 3, 5):
        s.send_headers(sid, [(b":status", b"200")] + grpc)
        s.send_data(sid, b"\0\0\0\0\5hello")
        s.send_headers(sid, [(b"grpc-status", b"0"), (b"grpc-message", b"ok")],
                       end_stream=True)
    seeds["grpc"] = (0x0b, s.data_to_send())
    s = h2_server()
    s.send_headers(1, [(b":status", b"100")])
    s.send_headers(1, [(b":status", b"204")], end_stream=True)
    s.send_headers(5, [(b":status", b"200"), (b"grpc-status", b"3"),
                       (b"grpc-message", b"bad%20arg")] + grpc, end_stream=True)
    s.reset_stream(3, 2)
    seeds["interim-reset"] = (0x2a, s.data_to_send())
    s = h2_server()
    s.send_headers(1, [(b":status", b"200")])
    s.send_data(1, b"z" * 16000)
    s.close_connection(last_stream_id=1)
    seeds["goaway"] = (0xcb, s.data_to_send())
    s = h2_server()
    s.send_headers(5, [(b":status", b"200")])
    s.send_data(5, b"y" * 9000)
    s.send_data(5, b"y" * 7000, end_stream=True)
    seeds["window"] = (0x95, s.data_to_send())
    for name, (ctl, blob) in seeds.items():
        write("h2c", name, bytes([ctl]) + blob)


if __name__ == "__main__":
    main()
