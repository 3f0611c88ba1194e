"""kgated from $KG_BUILD_DIR runs in the VM lane through the integration
harness (the sanitizer build included): a mutual-TLS request reaches a
backend, a byte-exact echo goes both ways, and a client without a
certificate is refused. This is the template for kgated's kTLS tests."""
import hashlib
import os

from conftest import (EchoSession, base_config, client_context, curl,
                      https_get, run_echo_sessions, tls_listener)


def test_mtls_request_reaches_backend(pki, spawn_kgated, http_backends):
    b = http_backends("b1")
    d = spawn_kgated(base_config(pki, [tls_listener(pki, [b])]))
    assert https_get(client_context(pki), d.port) == "backend=b1\n"
    assert b.hits == 1


def test_echo_byte_exact_both_ways(pki, spawn_kgated, echo_backend):
    d = spawn_kgated(base_config(pki, [tls_listener(pki, [echo_backend])]))
    data = os.urandom(4 << 20)
    s = EchoSession(client_context(pki), d.port, data, half_close=True)
    assert run_echo_sessions([s], timeout=120) == []
    assert s.error is None, s.error
    assert s.rx_len == len(data)
    assert s.rx_hash.hexdigest() == hashlib.sha256(data).hexdigest()


def test_client_without_certificate_refused(pki, spawn_kgated, http_backends):
    b = http_backends("b1")
    d = spawn_kgated(base_config(pki, [tls_listener(pki, [b])]))
    res = curl(pki, d.port, cert=None)
    assert res.returncode != 0, res.stdout
    assert b.hits == 0
