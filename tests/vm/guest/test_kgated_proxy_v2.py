"""The `ktls-splice` path with "proxy_protocol": "v2": the PROXY header
reaches the backend before the client's first byte (sent right after the
handshake, so it is pipelined behind the client's Finished and decrypted in
userspace before the handoff), with the TLS facts captured before the SSL
is freed, and then kernel TLS + splice carries the rest byte-exact. The
backend parses the header with tests/integration/pp2_backend.py."""
import os
import socket
import ssl
import sys

import pytest

from conftest import (base_config, client_context, path_count, tls_listener, tls_stat,
                      tls_stat_delta)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "..", "integration"))
from pp2_backend import ProxyV2Backend, exchange  # noqa: E402

VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


@pytest.fixture
def pp_backend():
    b = ProxyV2Backend()
    yield b
    b.close()


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_proxy_v2_header_on_kernel_tls_path(ktls, pki, spawn_kgated, pp_backend, version):
    d = spawn_kgated(base_config(
        pki, [tls_listener(pki, [pp_backend], forwarding="splice", proxy_protocol="v2")],
        log_level="debug"))
    ctx = client_context(pki, tls_min=VERSIONS[version], tls_max=VERSIONS[version])
    before = tls_stat()
    with socket.create_connection(("127.0.0.1", d.port), timeout=30) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            pp = exchange(s, b"first bytes right behind the handshake")
            client = s.getsockname()
            facts = (s.version(), s.cipher()[0])
            # Then the spliced path, both ways.
            payload = os.urandom(4 << 20)
            assert exchange_echo(s, payload) == payload
    delta = tls_stat_delta(before, tls_stat())
    assert delta["TlsTxSw"] >= 1 and delta["TlsRxSw"] >= 1, delta
    assert (pp["src"], pp["sport"]) == client
    assert (pp["dst"], pp["dport"]) == ("127.0.0.1", d.port)
    assert pp["tlvs"]["authority"] == "localhost"
    ssl_info = pp["tlvs"]["ssl"]
    assert ssl_info["client"] == ["ssl", "cert_conn", "cert_sess"] and ssl_info["verify"] == 0
    assert (ssl_info["version"], ssl_info["cipher"]) == facts
    assert ssl_info["cn"] == "client1"
    assert d.terminate() == 0
    assert path_count(d, "ktls-splice") == 1, d.log()


def exchange_echo(s, payload):
    """Sends payload in chunks while reading the echo back."""
    got = bytearray()
    view = memoryview(payload)
    chunk = 1 << 16
    for off in range(0, len(payload), chunk):
        s.sendall(view[off:off + chunk])
        while len(got) < min(off + chunk, len(payload)):
            data = s.recv(1 << 16)
            assert data, "echo cut after %d bytes" % len(got)
            got += data
    return bytes(got)
