"""HTTP/2 on an https listener over kernel TLS (path h2-ktls): after the
mutual-TLS handshake the client socket goes to kTLS and the HTTP/2 frames
are read and written as plaintext on it. Proven by kgated's path counters,
/proc/net/tls_stat, per-stream round robin over one connection with the
identity headers, and byte-exact bodies both ways."""
import hashlib
import json

import pytest

from conftest import base_config, load_host_tests, path_count, run, tls_stat, tls_stat_delta

https = load_host_tests("test_https")
backends = https.backends  # fixture, registered here under its name

MiB = 1 << 20


@pytest.fixture
def h2_kgated(ktls, spawn_kgated, backends, pki):
    """start() -> a kgated with an https listener forced onto kTLS over
    backends A and B; each must have served HTTP/2 on h2-ktls only."""
    made = []

    def start():
        a, b = backends("A", "B")
        lst = https.https_listener(pki, [a, b], forwarding="splice")
        d = spawn_kgated(base_config(pki, [lst], log_level="debug"))
        made.append(d)
        return d
    yield start
    for d in made:
        if d.alive():
            assert d.terminate() == 0, d.log()[-3000:]
        assert path_count(d, "h2-ktls") >= 1, d.log()[-3000:]
        assert path_count(d, "h2-userspace-tls") == 0, d.log()[-3000:]
        stops = d.events("worker.stopped")
        assert stops and all(e["ktls_failed"] == "0" for e in stops), d.log()[-3000:]


def curl_h2(pki, port, paths, extra=()):
    return https.curl_urls(pki, port, paths, extra=list(extra), http="--http2")


def test_streams_alternate_with_identity_over_ktls(h2_kgated, pki):
    d = h2_kgated()
    before = tls_stat()
    res = curl_h2(pki, d.port, ["/r%d" % i for i in range(6)],
                  extra=["-H", "x-forwarded-for: 6.6.6.6"])
    assert res.returncode == 0, res.stderr
    out = https.parse_curl(res.stdout)
    assert len(out) == 6 and sum(c for _, c, _ in out) == 1
    infos = [json.loads(body) for body, _, _ in out]
    names = [i["backend"] for i in infos]
    assert names in (["A", "B"] * 3, ["B", "A"] * 3), names
    for info in infos:
        assert https.header_values(info, "X-Forwarded-For") == ["127.0.0.1"]
        assert https.header_values(info, "X-Forwarded-Clientcert-subjectdn") == [
            "CN=client1,O=kgate test"]
    delta = tls_stat_delta(before, tls_stat())
    assert delta["TlsRxSw"] >= 1 and delta["TlsTxSw"] >= 1, delta


def test_bodies_both_ways_over_ktls(h2_kgated, pki, tmp_path):
    d = h2_kgated()
    size = 8 * MiB + 3
    body = https.pattern(size)
    f = tmp_path / "body"
    f.write_bytes(body)
    res = curl_h2(pki, d.port, ["/up"], extra=["--data-binary", "@%s" % f])
    assert res.returncode == 0, res.stderr
    info = json.loads(https.parse_curl(res.stdout)[0][0])
    assert (info["length"], info["sha256"]) == (size, hashlib.sha256(body).hexdigest())
    for q in ("", "&chunked=1"):
        got = tmp_path / ("got" + q[1:4])
        res = run(["curl", "-sS", "--http2", "--max-time", "300", "--cacert", pki.ca,
                   "--cert", pki.cert("client"), "--key", pki.key("client"),
                   "--resolve", "localhost:%d:127.0.0.1" % d.port, "-o", str(got),
                   "https://localhost:%d/download?size=%d%s" % (d.port, size, q)],
                  check=False, timeout=320)
        assert res.returncode == 0, res.stderr
        assert got.read_bytes() == body
