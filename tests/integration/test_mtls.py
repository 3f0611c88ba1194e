"""Mutual TLS at kgated's listener: real clients (curl, openssl s_client,
Python ssl) with kgatectl-issued certificates, the rejection matrix, and
round robin over two HTTP backends."""
import os
import re
import socket
import ssl

import pytest

from conftest import (base_config, client_context, curl, https_get, run,
                      tls_listener)

TLS12 = ["--tlsv1.2", "--tls-max", "1.2"]
TLS13 = ["--tlsv1.3"]
VERSIONS = {"tls12": TLS12, "tls13": TLS13}
REQUEST = "GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"

# Bad client certificates and a pattern the daemon's tls.handshake_failed
# line must match (OpenSSL's verify strings, or a close paraphrase).
REJECTED = {
    "nocert": (None, r"did.not.return.a.certificate|no.(client.)?cert|certificate.required"),
    "otherca": ("otherca-client", r"unable to get local issuer|unable to verify|issuer"),
    "expired": ("expired", r"expired"),
    "notyet": ("notyet", r"not yet valid"),
    "revoked": ("revoked", r"revoked"),
    "no_clientauth_eku": ("serveronly", r"purpose|clientauth|key usage|eku"),
    "selfsigned": ("selfsigned", r"self.signed|unable to get (local issuer|certificate crl)"),
}


def two_backend_daemon(pki, spawn_kgated, http_backends, workers=1, **listener):
    a, b = http_backends("a", "b")
    d = spawn_kgated(base_config(pki, [tls_listener(pki, [a, b], **listener)],
                                 workers=workers))
    return d, a, b


def body_backend(res):
    m = re.fullmatch(r"backend=(\w+)\n", res.stdout)
    assert res.returncode == 0 and m, "curl rc %d, stdout %r, stderr %r" % (
        res.returncode, res.stdout, res.stderr)
    return m.group(1)


def assert_rejected(d, res, reason_re, before):
    assert res.returncode != 0, "request with a bad client cert succeeded"
    assert "backend=" not in res.stdout, "a body came through: %r" % res.stdout
    assert d.wait_event("tls.handshake_failed", before + 1), \
        "no new tls.handshake_failed event in the log"
    reasons = [e["reason"] for e in d.events("tls.handshake_failed")][before:]
    assert any(re.search(reason_re, r, re.I) for r in reasons), \
        "no tls.handshake_failed reason matches %r: %r" % (reason_re, reasons)


@pytest.mark.parametrize("version", sorted(VERSIONS))
def test_curl_client_cert_gets_200(pki, spawn_kgated, http_backends, version):
    d, _, _ = two_backend_daemon(pki, spawn_kgated, http_backends)
    assert body_backend(curl(pki, d.port, extra=VERSIONS[version])) in ("a", "b")


def test_curl_p12_client_cert_gets_200(pki, spawn_kgated, http_backends):
    d, _, _ = two_backend_daemon(pki, spawn_kgated, http_backends)
    res = curl(pki, d.port, cert=None,
               extra=["--cert-type", "P12", "--cert",
                      "%s:%s" % (pki.path("client", "p12"), pki.p12_pass)])
    assert body_backend(res) in ("a", "b")


def test_round_robin_alternates_exactly_one_worker(pki, spawn_kgated, http_backends):
    d, a, b = two_backend_daemon(pki, spawn_kgated, http_backends, workers=1)
    seq = [body_backend(curl(pki, d.port)) for _ in range(10)]
    assert set(seq) == {"a", "b"}, seq
    assert all(x != y for x, y in zip(seq, seq[1:])), "not alternating: %s" % seq
    assert (a.hits, b.hits) == (5, 5)


def test_round_robin_balanced_two_workers(pki, spawn_kgated, http_backends):
    d, a, b = two_backend_daemon(pki, spawn_kgated, http_backends, workers=2)
    assert d.events("kgated.ready", workers=2), "ready event does not report 2 workers"
    seq = [body_backend(curl(pki, d.port)) for _ in range(10)]
    assert 4 <= seq.count("a") <= 6 and 4 <= seq.count("b") <= 6, seq


@pytest.mark.parametrize("version", sorted(VERSIONS))
@pytest.mark.parametrize("case", sorted(REJECTED))
def test_rejected_at_handshake(pki, spawn_kgated, http_backends, case, version):
    d, a, b = two_backend_daemon(pki, spawn_kgated, http_backends)
    cert, reason = REJECTED[case]
    before = d.count_event("tls.handshake_failed")
    res = curl(pki, d.port, cert=cert, extra=VERSIONS[version])
    assert_rejected(d, res, reason, before)
    assert a.hits + b.hits == 0, "a backend saw the rejected client"
    # The daemon still serves good clients afterwards.
    assert body_backend(curl(pki, d.port, extra=VERSIONS[version])) in ("a", "b")


def test_python_ssl_client_rejected_without_cert(pki, spawn_kgated, http_backends):
    """TLS 1.3: the client's handshake completes first; the alert arrives on
    the first read, so reading is what proves the rejection."""
    d, _, _ = two_backend_daemon(pki, spawn_kgated, http_backends)
    ctx = client_context(pki, cert=None)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        https_get(ctx, d.port)


def test_optional_mode_without_cert_passes(pki, spawn_kgated, http_backends):
    d, _, _ = two_backend_daemon(pki, spawn_kgated, http_backends,
                                 mutual_auth="optional")
    for v in VERSIONS.values():
        assert body_backend(curl(pki, d.port, cert=None, extra=v)) in ("a", "b")
    assert body_backend(curl(pki, d.port)) in ("a", "b")


@pytest.mark.parametrize("version", sorted(VERSIONS))
@pytest.mark.parametrize("case", ["otherca", "expired", "selfsigned"])
def test_optional_mode_rejects_bad_cert(pki, spawn_kgated, http_backends, case, version):
    d, a, b = two_backend_daemon(pki, spawn_kgated, http_backends,
                                 mutual_auth="optional")
    cert, reason = REJECTED[case]
    before = d.count_event("tls.handshake_failed")
    assert_rejected(d, curl(pki, d.port, cert=cert, extra=VERSIONS[version]),
                    reason, before)
    assert a.hits + b.hits == 0


def s_client(pki, port, *args, stdin=REQUEST, cert="client"):
    cmd = ["openssl", "s_client", "-connect", "127.0.0.1:%d" % port,
           "-servername", "localhost", "-CAfile", pki.ca,
           "-verify_return_error", "-ign_eof"]
    if cert:
        cmd += ["-cert", pki.cert(cert), "-key", pki.key(cert)]
    return run(cmd + list(args), check=False, input=stdin, timeout=20)


@pytest.mark.parametrize("flag,name", [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")])
def test_s_client_versions_work(pki, spawn_kgated, http_backends, flag, name):
    d, _, _ = two_backend_daemon(pki, spawn_kgated, http_backends)
    res = s_client(pki, d.port, flag)
    assert res.returncode == 0, res.stdout + res.stderr
    assert re.search(r"New, %s, Cipher is" % re.escape(name), res.stdout), res.stdout
    assert "Verify return code: 0 (ok)" in res.stdout
    assert re.search(r"backend=(a|b)", res.stdout), res.stdout


def test_s_client_tls11_refused(pki, spawn_kgated, http_backends):
    d, a, b = two_backend_daemon(pki, spawn_kgated, http_backends)
    before = d.count_event("tls.handshake_failed")
    # SECLEVEL=0 so the refusal comes from kgated, not from our own client.
    res = s_client(pki, d.port, "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0")
    out = res.stdout + res.stderr
    assert "no protocols available" not in out, "client refused TLS 1.1 itself"
    assert res.returncode != 0, out
    assert "backend=" not in res.stdout
    assert a.hits + b.hits == 0
    assert d.wait_event("tls.handshake_failed", before + 1), "refusal not logged"


def test_tls12_non_aead_cipher_refused(pki, spawn_kgated, http_backends):
    d, _, _ = two_backend_daemon(pki, spawn_kgated, http_backends)
    cbc = "ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA256:ECDHE-RSA-AES128-SHA"
    res = s_client(pki, d.port, "-tls1_2", "-cipher", cbc)
    assert res.returncode != 0 and "backend=" not in res.stdout, res.stdout
    gcm = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256"
    res = s_client(pki, d.port, "-tls1_2", "-cipher", gcm)
    assert res.returncode == 0 and "backend=" in res.stdout, res.stdout + res.stderr


@pytest.mark.parametrize("flag,name", [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")])
def test_s_client_session_resumption(pki, spawn_kgated, http_backends, tmp_path,
                                     flag, name):
    d, _, _ = two_backend_daemon(pki, spawn_kgated, http_backends)
    sess = str(tmp_path / "session.pem")
    first = s_client(pki, d.port, flag, "-sess_out", sess)
    assert first.returncode == 0 and "backend=" in first.stdout, first.stdout + first.stderr
    assert re.search(r"New, %s" % re.escape(name), first.stdout)
    second = s_client(pki, d.port, flag, "-sess_in", sess)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "Reused, %s" % name in second.stdout, \
        "session not resumed:\n" + second.stdout
    assert "backend=" in second.stdout


@pytest.mark.parametrize("flag,name", [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")])
def test_session_cache_off_means_full_handshakes(pki, spawn_kgated, http_backends, tmp_path,
                                                 flag, name):
    d, _, _ = two_backend_daemon(pki, spawn_kgated, http_backends, tls_session_cache=0)
    sess = str(tmp_path / "session.pem")
    first = s_client(pki, d.port, flag, "-sess_out", sess)
    assert first.returncode == 0 and "backend=" in first.stdout, first.stdout + first.stderr
    # s_client saves a session only when the server made one resumable
    # (a TLS 1.2 session ID, a TLS 1.3 ticket); if it did, using it must
    # still give a full handshake.
    if os.path.exists(sess):
        second = s_client(pki, d.port, flag, "-sess_in", sess)
        assert second.returncode == 0 and "backend=" in second.stdout, \
            second.stdout + second.stderr
        assert "New, %s" % name in second.stdout, "resumed with the cache off:\n" + second.stdout
    assert "New Session Ticket" not in first.stdout, first.stdout


@pytest.mark.parametrize("tls_max", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_python_ssl_client(pki, spawn_kgated, http_backends, tls_max):
    d, _, _ = two_backend_daemon(pki, spawn_kgated, http_backends)
    ctx = client_context(pki, tls_max=tls_max)
    with socket.create_connection(("127.0.0.1", d.port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            assert s.version() == tls_max.name.replace("v1_", "v1.")
            cipher = s.cipher()[0]
            assert re.search(r"GCM|CHACHA20", cipher), cipher
    body = https_get(ctx, d.port)
    assert re.fullmatch(r"backend=(a|b)\n", body), body


def test_ipv6_listener(pki, spawn_kgated, http_backends):
    try:
        socket.socket(socket.AF_INET6).bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback")
    a = http_backends("a")
    d = spawn_kgated(base_config(pki, [tls_listener(pki, [a], bind="::1")]))
    assert d.events("listener.listening", addr="[::1]:%d" % d.port), d.log()
    ctx = client_context(pki)
    with socket.create_connection(("::1", d.port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            s.sendall(REQUEST.encode())
            data = b""
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
    assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"backend=a\n"), data
