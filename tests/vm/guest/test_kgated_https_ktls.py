"""The https listener over kernel TLS (path http-ktls-splice): after the
mutual-TLS handshake the client socket goes to kTLS, request heads are
read as plaintext from it and parsed as on the host, and Content-Length
bodies are spliced both ways. Proven by kgated's path counters, its
spliced-byte counters (kgatectl stats), /proc/net/tls_stat, byte-exact
64 MiB transfers, and the host's https behaviour (keep-alive round robin,
identity headers, pipelining, Expect: 100-continue, smuggling refused)
replayed against the kTLS variant."""
import hashlib
import inspect
import json
import os
import time

import pytest

from conftest import (KGATECTL, base_config, load_host_tests, path_count, run, tls_stat,
                      tls_stat_delta, wait_until)
from test_kgated_ktls import start_s_client

# The host's https tests, as a module: their backends, raw client and
# request cases are reused; their test functions are called below with a
# kgated that must take the kTLS path.
https = load_host_tests("test_https")
backends = https.backends    # fixtures, registered here under their names
raw_conns = https.raw_conns
raw_backend = https.raw_backend

MiB = 1 << 20
SIZE = 64 * MiB
PATH = "http-ktls-splice"


@pytest.fixture
def ktls_kgated(ktls, spawn_kgated, tmp_path):
    """Wraps spawn_kgated: every daemon it starts runs with a state dir
    (for kgatectl stats) and must have forwarded on http-ktls-splice only:
    checked from its worker.stopped events when the test ends."""
    made = []

    def spawn(config, args=()):
        state = str(tmp_path / ("state%d" % len(made)))
        d = spawn_kgated(config, args=["--state-dir", state, *args])
        d.ctl_sock = os.path.join(state, "control.sock")
        made.append(d)
        return d
    yield spawn
    for d in made:
        if d.alive():
            assert d.terminate() == 0, d.log()[-3000:]
        assert path_count(d, "http-userspace-tls") == 0, d.log()[-3000:]
        assert path_count(d, PATH) >= 1, d.log()[-3000:]
        stops = d.events("worker.stopped")
        assert stops and all(e["ktls_failed"] == "0" for e in stops), d.log()[-3000:]


def stats(d):
    return json.loads(run([KGATECTL, "--socket", d.ctl_sock, "-o", "json", "stats"]).stdout)


def spliced(d):
    b = stats(d)["bytes"]
    return b["http_spliced_client_to_backend"], b["http_spliced_backend_to_client"]


def start(ktls_kgated, pki, members, http=None, forwarding="splice", **extra):
    lst = https.https_listener(pki, members, http, forwarding=forwarding, **extra)
    return ktls_kgated(base_config(pki, [lst], log_level="debug"))


def spawn_adapter(ktls_kgated):
    """spawn_kgated's signature for the host tests, on the kTLS fixture."""
    def spawn(config, args=(), wait=True, prefix=()):
        for lst in config["listeners"]:
            lst["forwarding"] = "splice"  # forced: no silent userspace TLS
        return ktls_kgated(config, args)
    return spawn


# ---------------------------------------------------------------- behaviour

# The host's https tests that run as they are against the kTLS variant
# (spawn_adapter forces the path; ktls_kgated checks it was taken).
REPLAYED = [
    "test_spoofed_identity_headers_are_replaced",
    "test_header_selection_and_sha256",
    "test_pipelined_requests_answered_in_order",
    "test_expect_100_continue",
    "test_connection_close_and_http10",
    "test_header_limits_431",
    "test_request_timeout_408",
    "test_backends_down_502_and_unhealthy_503",
    "test_access_log",
    "test_close_delimited_response",
    "test_backend_closing_without_answer_gets_502",
    "test_malformed_backend_response_gets_502",
    "test_upgrade_request_is_served_as_plain_http",
]


@pytest.mark.parametrize("name", REPLAYED)
def test_host_https_behaviour(ktls_kgated, request, name):
    fn = getattr(https, name)
    args = {"spawn_kgated": spawn_adapter(ktls_kgated)}
    for param in inspect.signature(fn).parameters:
        if param not in args:
            args[param] = request.getfixturevalue(param)
    fn(**args)


def test_requests_alternate_with_identity_headers(ktls_kgated, pki, backends):
    a, b = backends("A", "B")
    d = start(ktls_kgated, pki, [a, b])
    before = tls_stat()
    res = https.curl_urls(pki, d.port, ["/r%d" % i for i in range(10)])
    assert res.returncode == 0, res.stderr
    out = https.parse_curl(res.stdout)
    assert len(out) == 10 and sum(c for _, c, _ in out) == 1
    assert all(status == 200 for _, _, status in out)
    infos = [json.loads(body) for body, _, _ in out]
    names = [i["backend"] for i in infos]
    assert names in (["A", "B"] * 5, ["B", "A"] * 5), names
    der = https.cert_der(pki, "client")
    for info in infos:
        assert https.header_values(info, "X-Forwarded-Clientcert-subjectdn") == [
            "CN=client1,O=kgate test"]
        assert https.header_values(info, "X-Forwarded-Clientcert-fingerprint") == [
            hashlib.sha1(der).hexdigest()]
        assert https.header_values(info, "X-Forwarded-Proto") == ["https"]
        assert https.header_values(info, "X-Forwarded-For") == ["127.0.0.1"]
    delta = tls_stat_delta(before, tls_stat())
    assert delta["TlsRxSw"] >= 1 and delta["TlsTxSw"] >= 1, delta
    assert d.terminate() == 0
    assert path_count(d, PATH) == 1, d.log()


def test_pipelined_large_body_is_spliced_exactly(ktls_kgated, pki, backends, raw_conns):
    """A 1 MiB POST with the next requests right behind it in one write:
    the body is partly buffered with the head (copied) and the rest
    spliced for exactly its length, so the pipelined requests stay in the
    socket for the parser."""
    a, b = backends("A", "B")
    d = start(ktls_kgated, pki, [a, b])
    body = https.pattern(MiB)
    r = raw_conns(pki, d.port)
    r.send(b"POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) +
           body + b"GET /after1 HTTP/1.1\r\nHost: x\r\n\r\n"
           b"POST /small HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nxyz"
           b"GET /after2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    status, _, resp = r.response()
    assert status == 200
    info = json.loads(resp)
    assert info["length"] == len(body)
    assert info["sha256"] == hashlib.sha256(body).hexdigest()
    status, _, resp = r.response()
    assert status == 200 and json.loads(resp)["path"] == "/after1"
    status, _, resp = r.response()
    assert status == 200 and json.loads(resp)["sha256"] == hashlib.sha256(b"xyz").hexdigest()
    status, headers, resp = r.response()
    assert status == 200 and json.loads(resp)["path"] == "/after2"
    assert headers["connection"] == "close"
    assert r.closed()
    c2b, _ = spliced(d)
    assert 0 < c2b <= len(body), c2b


def test_head_and_no_body_responses(ktls_kgated, pki, backends, raw_conns):
    """HEAD's response carries Content-Length but no body: nothing may be
    spliced for it, and the next request on the connection works."""
    a, = backends("A")
    d = start(ktls_kgated, pki, [a])
    r = raw_conns(pki, d.port)
    r.send(b"HEAD /download?size=500000 HTTP/1.1\r\nHost: x\r\n\r\n")
    status, headers, body = r.response(head_request=True)
    assert status == 200 and int(headers["content-length"]) == 500000 and body == b""
    r.send(b"GET /download?size=300000 HTTP/1.1\r\nHost: x\r\n\r\n")
    status, headers, body = r.response()
    assert status == 200 and body == https.pattern(300000)
    _, b2c = spliced(d)
    assert 0 < b2c <= 300000, b2c


@pytest.mark.parametrize("name,request_bytes,status", https.SMUGGLING,
                         ids=[c[0] for c in https.SMUGGLING])
def test_smuggling_and_garbage_refused(ktls_kgated, pki, backends, raw_conns, name,
                                       request_bytes, status):
    https.test_smuggling_and_garbage_refused(pki, spawn_adapter(ktls_kgated), backends,
                                             raw_conns, name, request_bytes, status)


@pytest.mark.parametrize("forwarding", ["userspace", "splice"])
def test_backend_pool_reuses_connections(ktls, spawn_kgated, pki, backends, forwarding):
    a, b = backends("A", "B")
    # The box is slow under TCG (a curl can take seconds): idle pooled
    # connections must not expire between two requests.
    lst = https.https_listener(pki, [a, b], {"pool_idle_timeout_ms": 600000},
                               forwarding=forwarding)
    d = spawn_kgated(base_config(pki, [lst], log_level="debug"))
    n = 30
    seen = []  # (backend connections so far, seconds the request took)
    for i in range(n):
        t = time.monotonic()
        res = https.curl_urls(pki, d.port, ["/n%d" % i])
        assert res.returncode == 0 and https.parse_curl(res.stdout)[0][2] == 200
        seen.append((a.conns + b.conns, round(time.monotonic() - t, 2)))
    print(forwarding, "backend connections after each request, seconds:", seen)
    assert len(a.requests) + len(b.requests) == n
    assert a.conns + b.conns <= 4, (a.conns, b.conns)


# ---------------------------------------------------------------- large bodies

@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("direction", ["upload", "download"])
def test_64mib(ktls_kgated, pki, backends, tmp_path, direction, chunked):
    """Byte-exact both ways; a Content-Length body goes through the pipe
    (all but what came with the head), a chunked one is copied."""
    a, = backends("A")
    d = start(ktls_kgated, pki, [a])
    before = tls_stat()
    getattr(https, direction)(pki, d.port, tmp_path, chunked, timeout=600)
    delta = tls_stat_delta(before, tls_stat())
    assert delta["TlsRxSw"] >= 1 and delta["TlsTxSw"] >= 1, delta
    c2b, b2c = spliced(d)
    moved, other = (c2b, b2c) if direction == "upload" else (b2c, c2b)
    if chunked:
        assert moved == 0, moved  # copied as plaintext, no userspace TLS
    else:
        assert SIZE - 256 * 1024 <= moved <= SIZE, moved
    assert other < 64 * 1024, other  # the small answer or request


# ---------------------------------------------------------------- TLS records

def test_key_update_closes_cleanly(ktls_kgated, pki, backends):
    """openssl s_client's `k` sends a TLS 1.3 KeyUpdate: kgated does not
    re-key the kernel, it sends close_notify and closes; the response
    before it arrived whole and the daemon goes on serving."""
    a, = backends("A")
    d = start(ktls_kgated, pki, [a])
    p, out, reader = start_s_client(pki, d.port, "-crlf")  # HTTP wants CRLF
    try:
        p.stdin.write(b"GET /who HTTP/1.1\nHost: x\n\n")
        p.stdin.flush()
        assert wait_until(lambda: b"backend=A" in bytes(out), 60), bytes(out)[-2000:]
        time.sleep(0.5)
        p.stdin.write(b"k\n")
        p.stdin.flush()
        # kgated closes: s_client sees the end of the stream and exits
        p.wait(60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        reader.join(10)
    assert d.wait_event("ktls.key_update"), d.log()
    assert d.alive()
    assert a.requests == ["/who"]
    res = https.curl_urls(pki, d.port, ["/still"])
    assert res.returncode == 0 and https.parse_curl(res.stdout)[0][2] == 200


def test_client_close_notify_between_requests(ktls_kgated, pki, backends, raw_conns):
    """close_notify from the client ends the connection cleanly: kgated
    answers with its own close_notify (a clean TLS EOF for the client)."""
    a, = backends("A")
    d = start(ktls_kgated, pki, [a])
    r = raw_conns(pki, d.port)
    r.send(b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n")
    assert r.response()[0] == 200
    r.s = r.s.unwrap()  # sends close_notify and waits for kgated's
    r.s.settimeout(10)
    assert r.s.recv(1) == b""
    assert d.wait_event("conn.closed", reason="client closed"), d.log()


# ---------------------------------------------------------------- measurement

def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick


def test_cpu_per_mib_report(ktls, spawn_kgated, pki, backends, tmp_path):
    """Not an assertion on speed (functional numbers under qemu TCG): the
    proxy's CPU per MiB of a 64 MiB download on each variant, printed
    for bench/README.md. The transfers are checked byte for byte."""
    a, = backends("A")
    rows = []
    asan = False
    for forwarding, chunked, label in (
            ("userspace", False, "http-userspace-tls, content-length"),
            ("userspace", True, "http-userspace-tls, chunked"),
            ("splice", True, "http-ktls-splice, chunked (copy)"),
            ("splice", False, "http-ktls-splice, content-length (splice)")):
        lst = https.https_listener(pki, [a], forwarding=forwarding)
        d = spawn_kgated(base_config(pki, [lst]))
        with open("/proc/%d/maps" % d.pid) as f:
            asan = asan or "libasan" in f.read()
        https.download(pki, d.port, tmp_path, chunked, size=1 << 20)  # warm: pool, caches
        t0, w0 = cpu_seconds(d.pid), time.monotonic()
        https.download(pki, d.port, tmp_path, chunked, timeout=600)
        cpu, wall = cpu_seconds(d.pid) - t0, time.monotonic() - w0
        rows.append((label, cpu * 1000 / 64, wall))
        assert d.terminate() == 0
    print("\nkgated CPU per MiB, 64 MiB download, qemu TCG, %s build:"
          % ("ASan" if asan else "Release"))
    for label, ms, wall in rows:
        print("  %-42s %7.1f ms/MiB  (wall %.1f s)" % (label, ms, wall))
