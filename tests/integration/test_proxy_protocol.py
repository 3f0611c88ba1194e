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
import subprocess

import pytest

from conftest import (KGATED, base_config, client_context, dead_port, https_exchange, run,
                      tls_listener, wait_until)
from pp2_backend import ProxyV2Backend, exchange
from test_control import Ctl, port_of


@pytest.fixture
def pp_backend():
    b = ProxyV2Backend()
    yield b
    b.close()


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
    spawn_kgated(base_config(pki, [tls_listener(pki, [pp_backend])]),
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


@pytest.fixture
def haproxy_backend(tmp_path):
    exe = shutil.which("haproxy") or ("/usr/sbin/haproxy" if os.path.exists("/usr/sbin/haproxy")
                                      else None)
    if not exe:
        pytest.skip("haproxy not installed (tests/install-deps.sh test)")
    port = dead_port()  # free now; HAProxy binds it
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
    data, client = https_exchange(client_context(pki), d.port)
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


def issue_long_cn_client(pki, tmp_path, cn_len):
    """A client certificate from the test CA whose CN is cn_len bytes: past
    X.509's 64-character bound, which OpenSSL's tools enforce but a
    certificate made elsewhere need not respect."""
    import datetime
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    with open(os.path.join(pki.ca_dir, "private", "ca.key"), "rb") as f:
        ca_key = serialization.load_pem_private_key(f.read(), None)
    with open(pki.ca, "rb") as f:
        ca = x509.load_pem_x509_certificate(f.read())
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "L" * cn_len)]))
            .issuer_name(ca.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "long.pem", tmp_path / "long.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(pki.ca)
    ctx.load_cert_chain(str(cert_path), str(key_path))
    return ctx


def test_header_too_large_closes_instead_of_truncating(pki, spawn_kgated, pp_backend,
                                                       tmp_path):
    """A verified client whose CN cannot fit the header's bound: the
    connection is closed and counted, the backend never sees a cut CN; a
    CN of 500 bytes still goes through whole."""
    state = str(tmp_path / "state")
    d = spawn_kgated(base_config(pki, [tls_listener(pki, [pp_backend], proxy_protocol="v2")]),
                     args=["--state-dir", state])
    pp, _ = tls_exchange(issue_long_cn_client(pki, tmp_path, 500), d.port)
    assert pp["tlvs"]["ssl"]["cn"] == "L" * 500
    ctx = issue_long_cn_client(pki, tmp_path, 1500)
    with socket.create_connection(("127.0.0.1", d.port), timeout=20) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            try:
                s.sendall(b"ping")
                got = s.recv(100)
            except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
                got = b""
    assert got == b""
    evs = d.wait_event("proxy.header_failed", listener="web", action="close")
    assert len(evs) == 1 and "refused rather than truncated" in evs[0]["reason"], d.log()
    ctl = Ctl(os.path.join(state, "control.sock"))
    stats = ctl.json("stats")["backends"]
    assert (stats["proxy_headers"], stats["proxy_header_failures"]) == (1, 1)
    assert len(pp_backend.seen) == 1
