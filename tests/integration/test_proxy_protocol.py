"""PROXY protocol v2 towards backends ("proxy_protocol": "v2").

A Python backend parses the header with its own reader (written from
HAProxy's doc/proxy-protocol.txt, independent of kgate's writer) before any
other byte and answers with what it found, then echoes: behind a `tls`
listener with mutual TLS (addresses, ports, SSL flags, verify result, CN,
version, cipher, SNI, the server certificate's algorithms; resumption; no
client certificate) and behind a `tcp` listener on every forwarding path
this kernel runs, IPv4 and IPv6. Toggling the option at run time changes
new connections only; https listeners refuse it. Debian's HAProxy, with
`accept-proxy`, proves a real implementation takes the header.
"""
import json
import os
import shutil
import socket
import ssl
import struct
import subprocess

import pytest

from conftest import (KGATED, ThreadedServer, base_config, client_context, run,
                      tls_listener, wait_until)
from test_control import Ctl, port_of

SIG = b"\r\n\r\n\x00\r\nQUIT\n"
SSL_FLAGS = {"ssl": 0x01, "cert_conn": 0x02, "cert_sess": 0x04}
SUBTYPES = {0x21: "version", 0x22: "cn", 0x23: "cipher", 0x24: "sig_alg", 0x25: "key_alg"}


def parse_tlvs(data):
    """[(type, value)] of a TLV block; raises on a length past the end."""
    out, pos = [], 0
    while pos < len(data):
        if len(data) - pos < 3:
            raise ValueError("TLV head cut at %d" % pos)
        typ, length = data[pos], struct.unpack(">H", data[pos + 1:pos + 3])[0]
        if pos + 3 + length > len(data):
            raise ValueError("TLV 0x%02x length %d past the end" % (typ, length))
        out.append((typ, data[pos + 3:pos + 3 + length]))
        pos += 3 + length
    return out


def parse_v2(hdr):
    """The fields of one whole PROXY v2 header (16 + len bytes)."""
    assert hdr[:12] == SIG
    ver_cmd, fam, length = hdr[12], hdr[13], struct.unpack(">H", hdr[14:16])[0]
    body = hdr[16:]
    assert len(body) == length
    info = {"ver_cmd": ver_cmd, "fam": fam, "tlvs": {}}
    if fam == 0x11:
        src, dst, sport, dport = struct.unpack(">4s4sHH", body[:12])
        info.update(src=socket.inet_ntop(socket.AF_INET, src),
                    dst=socket.inet_ntop(socket.AF_INET, dst), rest=body[12:])
    elif fam == 0x21:
        src, dst, sport, dport = struct.unpack(">16s16sHH", body[:36])
        info.update(src=socket.inet_ntop(socket.AF_INET6, src),
                    dst=socket.inet_ntop(socket.AF_INET6, dst), rest=body[36:])
    else:
        raise ValueError("family 0x%02x" % fam)
    info.update(sport=sport, dport=dport)
    for typ, value in parse_tlvs(info.pop("rest")):
        assert typ not in info["tlvs"], "TLV 0x%02x twice" % typ
        if typ == 0x20:
            client, verify = value[0], struct.unpack(">I", value[1:5])[0]
            ssl_info = {"client": [k for k, bit in SSL_FLAGS.items() if client & bit],
                        "client_bits": client, "verify": verify}
            for sub, sval in parse_tlvs(value[5:]):
                name = SUBTYPES.get(sub, "0x%02x" % sub)
                assert name not in ssl_info, "sub-TLV %s twice" % name
                ssl_info[name] = sval.decode("utf-8")
            info["tlvs"]["ssl"] = ssl_info
        elif typ == 0x02:
            info["tlvs"]["authority"] = value.decode("utf-8")
        else:
            info["tlvs"]["0x%02x" % typ] = value.hex()
    return info


class ProxyV2Backend(ThreadedServer):
    """Per connection: reads a PROXY v2 header if the first bytes are its
    signature (strictly first: a client byte ahead of it shows as "no
    header"), answers one JSON line {"pp": fields or null}, then echoes."""

    def __init__(self):
        self.seen = []
        super().__init__()

    def handle(self, conn):
        conn.settimeout(20)
        buf = b""
        while len(buf) < 16 and SIG.startswith(buf[:12]):
            chunk = conn.recv(16 - len(buf))
            if not chunk:
                return
            buf += chunk
        pp = None
        if buf[:12] == SIG:
            length = struct.unpack(">H", buf[14:16])[0]
            while len(buf) < 16 + length:
                chunk = conn.recv(16 + length - len(buf))
                if not chunk:
                    return
                buf += chunk
            pp, buf = parse_v2(buf[:16 + length]), buf[16 + length:]
        with self.lock:
            self.seen.append(pp)
        conn.sendall(json.dumps({"pp": pp}).encode() + b"\n" + buf)
        while True:
            data = conn.recv(65536)
            if not data:
                return
            conn.sendall(data)


@pytest.fixture
def pp_backend():
    b = ProxyV2Backend()
    yield b
    b.close()


def read_line(sock):
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(1)
        assert chunk, "backend answer cut: %r" % data
        data += chunk
    return json.loads(data)["pp"]


def exchange(sock, payload=b"ping"):
    """Sends payload, returns the backend's PROXY fields; checks the echo."""
    sock.sendall(payload)
    pp = read_line(sock)
    got = b""
    while len(got) < len(payload):
        chunk = sock.recv(len(payload) - len(got))
        assert chunk, "echo cut after %r" % got
        got += chunk
    assert got == payload
    return pp


def tls_exchange(ctx, port, session=None, payload=b"ping"):
    """One mTLS connection through kgate: (PROXY fields, client socket
    facts). Facts are read while the connection is open."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost", session=session) as s:
            pp = exchange(s, payload)
            facts = {"addr": s.getsockname(), "version": s.version(),
                     "cipher": s.cipher()[0], "reused": s.session_reused,
                     "session": s.session}
    return pp, facts


def server_cert_algorithms(pki):
    """(signature algorithm short name, key algorithm) of kgate's server
    certificate, from openssl's text form."""
    text = run(["openssl", "x509", "-noout", "-text", "-in", pki.cert("server")]).stdout
    assert "id-ecPublicKey" in text and "256 bit" in text, "test PKI changed: " + text[:400]
    assert "Signature Algorithm: ecdsa-with-SHA256" in text
    return "ecdsa-with-SHA256", "EC256"


@pytest.mark.parametrize("forwarding", ["auto", "userspace"])
def test_tls_listener_sends_client_cert_facts(pki, spawn_kgated, pp_backend, forwarding):
    d = spawn_kgated(base_config(pki, [tls_listener(pki, [pp_backend], forwarding=forwarding,
                                                    proxy_protocol="v2")]))
    pp, facts = tls_exchange(client_context(pki), d.port)
    sig_alg, key_alg = server_cert_algorithms(pki)
    assert pp["ver_cmd"] == 0x21 and pp["fam"] == 0x11
    assert (pp["src"], pp["sport"]) == facts["addr"]
    assert (pp["dst"], pp["dport"]) == ("127.0.0.1", d.port)
    assert pp["tlvs"]["authority"] == "localhost"
    assert pp["tlvs"]["ssl"] == {
        "client": ["ssl", "cert_conn", "cert_sess"], "client_bits": 7, "verify": 0,
        "version": facts["version"], "cn": "client1", "cipher": facts["cipher"],
        "sig_alg": sig_alg, "key_alg": key_alg}
    assert set(pp["tlvs"]) == {"authority", "ssl"}


def test_tls_resumed_session_reports_cert_of_session(pki, spawn_kgated, pp_backend):
    """A resumed session: the certificate came with the session, not over
    this connection (PP2_CLIENT_CERT_SESS without _CONN)."""
    d = spawn_kgated(base_config(pki, [tls_listener(pki, [pp_backend], proxy_protocol="v2")]))
    ctx = client_context(pki)
    first, facts = tls_exchange(ctx, d.port)
    assert first["tlvs"]["ssl"]["client"] == ["ssl", "cert_conn", "cert_sess"]
    again, facts2 = tls_exchange(ctx, d.port, session=facts["session"])
    assert facts2["reused"], "session not resumed; kgate keeps a session cache"
    ssl_info = again["tlvs"]["ssl"]
    assert ssl_info["client"] == ["ssl", "cert_sess"]
    assert ssl_info["verify"] == 0 and ssl_info["cn"] == "client1"


def test_tls_without_client_cert(pki, spawn_kgated, pp_backend):
    """mutual_auth optional, no certificate: verify non-zero, no CN; no SNI
    sent, no authority TLV."""
    d = spawn_kgated(base_config(pki, [tls_listener(pki, [pp_backend], mutual_auth="optional",
                                                    proxy_protocol="v2")]))
    ctx = client_context(pki, cert=None)
    ctx.check_hostname = False
    with socket.create_connection(("127.0.0.1", d.port), timeout=20) as raw:
        with ctx.wrap_socket(raw) as s:
            pp = exchange(s)
            version = s.version()
    assert "authority" not in pp["tlvs"]
    ssl_info = pp["tlvs"]["ssl"]
    assert ssl_info["client"] == ["ssl"] and ssl_info["verify"] != 0
    assert "cn" not in ssl_info and ssl_info["version"] == version


def tcp_exchange(host, port, family=socket.AF_INET):
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(20)
        s.connect((host, port))
        pp = exchange(s, os.urandom(100000))
        return pp, s.getsockname()[:2]


# sockmap is refused in this version (test_tcp_paths.py); when it comes
# back, it joins this list.
@pytest.mark.parametrize("forwarding", ["auto", "splice", "userspace"])
def test_tcp_listener_every_path(pki, spawn_kgated, pp_backend, forwarding):
    lst = {"name": "plain", "protocol": "tcp", "bind": "127.0.0.1", "port": 0,
           "forwarding": forwarding, "proxy_protocol": "v2",
           "backends": [{"address": pp_backend.address}]}
    d = spawn_kgated(base_config(pki, [lst]))
    pp, addr = tcp_exchange("127.0.0.1", d.port)
    assert pp == {"ver_cmd": 0x21, "fam": 0x11, "tlvs": {}, "src": addr[0], "sport": addr[1],
                  "dst": "127.0.0.1", "dport": d.port}


def test_tcp_listener_ipv6(pki, spawn_kgated, pp_backend):
    lst = {"name": "plain6", "protocol": "tcp", "bind": "::1", "port": 0,
           "proxy_protocol": "v2", "backends": [{"address": pp_backend.address}]}
    d = spawn_kgated(base_config(pki, [lst]))
    pp, addr = tcp_exchange("::1", d.port, socket.AF_INET6)
    assert pp["fam"] == 0x21 and pp["tlvs"] == {}
    assert (pp["src"], pp["sport"]) == ("::1", addr[1])
    assert (pp["dst"], pp["dport"]) == ("::1", d.port)


def test_toggle_at_run_time_affects_new_connections_only(pki, spawn_kgated, pp_backend,
                                                         tmp_path):
    state = str(tmp_path / "state")
    d = spawn_kgated(base_config(pki, [tls_listener(pki, [pp_backend])]),
                     args=["--state-dir", state])
    ctl = Ctl(os.path.join(state, "control.sock"))
    assert ctl.json("listener", "show", "web")["proxy_protocol"] == "none"
    ctx, port = client_context(pki), port_of(ctl, "web")

    def open_conn():
        raw = socket.create_connection(("127.0.0.1", port), timeout=20)
        return ctx.wrap_socket(raw, server_hostname="localhost")

    old = open_conn()
    try:
        assert exchange(old) is None
        ctl("listener", "update", "web", "--proxy-protocol", "v2")
        assert ctl.json("listener", "show", "web")["proxy_protocol"] == "v2"
        new = open_conn()
        try:
            pp = exchange(new)
            assert pp["tlvs"]["ssl"]["cn"] == "client1"
            # The open connection keeps going, still without a header.
            old.sendall(b"more")
            assert old.recv(4) == b"more"
        finally:
            new.close()
        ctl("listener", "update", "web", "--proxy-protocol", "none")
        with open_conn() as third:
            assert exchange(third) is None
    finally:
        old.close()
    assert pp_backend.seen.count(None) == 2 and len(pp_backend.seen) == 3
    # Persisted in the state document.
    ctl("listener", "update", "web", "--proxy-protocol", "v2")
    with open(os.path.join(state, "state.json")) as f:
        doc = json.load(f)
    assert doc["listeners"][0]["proxy_protocol"] == "v2"


def test_refusals(pki, spawn_kgated, http_backends, tmp_path):
    a = http_backends("a")
    state = str(tmp_path / "state")
    https = tls_listener(pki, [a], name="site", protocol="https")
    spawn_kgated(base_config(pki, [https]), args=["--state-dir", state])
    ctl = Ctl(os.path.join(state, "control.sock"))
    msg = ctl.refused("listener", "update", "site", "--proxy-protocol", "v2",
                      code="invalid_argument")
    assert "proxy_protocol" in msg and "https" in msg and "X-Forwarded-For" in msg
    msg = ctl.refused("listener", "update", "site", "--proxy-protocol", "v1",
                      code="invalid_argument")
    assert 'must be one of "none", "v2"' in msg
    assert ctl.json("listener", "show", "site")["proxy_protocol"] == "none"
    # The seed config is checked the same way.
    bad = base_config(pki, [dict(https, proxy_protocol="v2")])
    cfg = tmp_path / "bad.json"
    cfg.write_text(json.dumps(bad))
    r = run([KGATED, "--config", str(cfg), "--check"], check=False)
    assert r.returncode != 0
    assert "listeners[0].proxy_protocol: is for protocol" in r.stderr + r.stdout


def test_counters(pki, spawn_kgated, pp_backend, tmp_path):
    state = str(tmp_path / "state")
    lst = {"name": "plain", "protocol": "tcp", "bind": "127.0.0.1", "port": 0,
           "proxy_protocol": "v2", "backends": [{"address": pp_backend.address}]}
    d = spawn_kgated(base_config(pki, [lst]), args=["--state-dir", state])
    for _ in range(3):
        tcp_exchange("127.0.0.1", d.port)
    ctl = Ctl(os.path.join(state, "control.sock"))
    assert wait_until(lambda: ctl.json("stats")["backends"]["proxy_headers"] == 3, 5)
    assert ctl.json("stats")["backends"]["proxy_header_failures"] == 0


HAPROXY_CFG = """
global
    maxconn 100
defaults
    mode http
    timeout connect 5s
    timeout client 10s
    timeout server 10s
frontend fe
    bind 127.0.0.1:{port} accept-proxy
    http-request return status 200 content-type text/plain lf-string "src=%[src] sport=%[src_port] dst=%[dst] dport=%[dst_port] authority=%[fc_pp_authority]\\n"
"""


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture
def haproxy_backend(tmp_path):
    exe = shutil.which("haproxy") or ("/usr/sbin/haproxy" if os.path.exists("/usr/sbin/haproxy")
                                      else None)
    if not exe:
        pytest.skip("haproxy not installed (tests/install-deps.sh test)")
    port = free_port()
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(HAPROXY_CFG.format(port=port))
    run([exe, "-c", "-f", str(cfg)])
    log = open(tmp_path / "haproxy.log", "w")
    proc = subprocess.Popen([exe, "-db", "-f", str(cfg)], stdin=subprocess.DEVNULL,
                            stdout=log, stderr=log)

    def listening():
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0
    try:
        assert wait_until(listening, 10), (tmp_path / "haproxy.log").read_text()
        yield "127.0.0.1:%d" % port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_haproxy_accepts_our_header(pki, spawn_kgated, haproxy_backend):
    """HAProxy (accept-proxy) takes the client's address from our header:
    src is the client behind the tls listener, dst the listener."""
    d = spawn_kgated(base_config(pki, [tls_listener(pki, [haproxy_backend], proxy_protocol="v2")]))
    ctx = client_context(pki)
    with socket.create_connection(("127.0.0.1", d.port), timeout=20) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            data = b""
            while True:
                try:
                    chunk = s.recv(65536)
                except ssl.SSLEOFError:
                    break
                if not chunk:
                    break
                data += chunk
            client = s.getsockname()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), data[:300]
    assert body.decode().strip() == "src=%s sport=%d dst=127.0.0.1 dport=%d authority=localhost" % (
        client[0], client[1], d.port)


def test_kgatectl_help_and_completion_offer_the_option():
    from conftest import KGATECTL, REPO
    script = os.path.join(REPO, "packaging", "kgatectl.bash-completion")
    for verb in ("create", "update"):
        out = subprocess.run(["bash", "-c", 'source "$1"; _kgatectl_options "$2" listener "$3"',
                              "-", script, KGATECTL, verb],
                             capture_output=True, text=True, check=True).stdout.split()
        assert "--proxy-protocol" in out, (verb, out)
