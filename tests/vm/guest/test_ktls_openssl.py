"""kTLS works in the lane's kernel, shown with tools nobody here wrote:
openssl s_server / s_client (OpenSSL 3.0, kTLS switched on with
`Options = KTLS` in an OPENSSL_CONF file, as 3.0's tools have no -ktls
flag), byte-exact transfers, and /proc/net/tls_stat moving as OpenSSL 3.0
promises: TLS 1.2 offloads transmit and receive, TLS 1.3 transmit only."""
import hashlib
import os
import subprocess

import pytest

from conftest import dead_port, tls_stat, tls_stat_delta, wait_until

MiB = 1 << 20
PAYLOAD = 4 * MiB

KTLS_CNF = """\
openssl_conf = kg_init
[kg_init]
ssl_conf = kg_ssl
[kg_ssl]
system_default = kg_ktls
[kg_ktls]
Options = KTLS
"""

# (s_server/s_client version flag, cipher option, cipher) per case; every
# cipher Linux 6.1 kTLS and OpenSSL 3.0 both support.
CASES = [
    ("-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"),
    ("-tls1_2", "-cipher", "ECDHE-ECDSA-AES256-GCM-SHA384"),
    ("-tls1_2", "-cipher", "ECDHE-ECDSA-CHACHA20-POLY1305"),
    ("-tls1_3", "-ciphersuites", "TLS_AES_128_GCM_SHA256"),
    ("-tls1_3", "-ciphersuites", "TLS_AES_256_GCM_SHA384"),
    ("-tls1_3", "-ciphersuites", "TLS_CHACHA20_POLY1305_SHA256"),
]
CASE_IDS = ["%s-%s" % (v[1:], c) for v, _, c in CASES]


def offloaded(version):
    """(TX, RX) sockets OpenSSL 3.0 puts into kTLS per kTLS-enabled end."""
    return (1, 1) if version == "-tls1_2" else (1, 0)


@pytest.fixture
def tls_files(ktls, tmp_path):
    """A self-signed P-256 server cert and the kTLS OpenSSL config."""
    cert, key = tmp_path / "server.pem", tmp_path / "server.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
                    "-subj", "/CN=localhost", "-keyout", str(key),
                    "-out", str(cert)], check=True, capture_output=True)
    cnf = tmp_path / "ktls.cnf"
    cnf.write_text(KTLS_CNF)
    return {"cert": str(cert), "key": str(key), "cnf": str(cnf),
            "dir": tmp_path}


def listening(port):
    """True once a socket listens on 127.0.0.1:port (state 0A in
    /proc/net/tcp); probing by connecting would use up -naccept 1."""
    want = "0100007F:%04X" % port
    with open("/proc/net/tcp") as f:
        return any(line.split()[1] == want and line.split()[3] == "0A"
                   for line in f.readlines()[1:])


def env_for(ktls_on, files):
    env = dict(os.environ)
    env.pop("OPENSSL_CONF", None)
    if ktls_on:
        env["OPENSSL_CONF"] = files["cnf"]
    return env


class Proc:
    """A Popen whose stderr goes to a file named after it, for messages."""

    def __init__(self, name, cmd, files, ktls_on, **kw):
        self.name = name
        self.err_path = files["dir"] / (name + ".err")
        self._err = open(self.err_path, "wb")
        self.p = subprocess.Popen(cmd, stderr=self._err,
                                  env=env_for(ktls_on, files), **kw)

    def stderr(self):
        return self.err_path.read_bytes().decode(errors="replace")[-2000:]

    def wait(self, timeout=60):
        try:
            return self.p.wait(timeout)
        finally:
            self._err.close()

    def stop(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()
        self._err.close()


@pytest.fixture
def procs():
    started = []

    def start(*a, **kw):
        p = Proc(*a, **kw)
        started.append(p)
        return p
    yield start
    for p in started:
        p.stop()


def start_server(procs, files, version, copt, cipher, ktls_on, extra,
                 stdout):
    # Bound then closed: inside the VM nothing else takes it meanwhile.
    port = dead_port()
    srv = procs("s_server", ["openssl", "s_server", "-naccept", "1",
                             "-accept", "127.0.0.1:%d" % port,
                             "-cert", files["cert"], "-key", files["key"],
                             version, copt, cipher, *extra],
                files, ktls_on, stdin=subprocess.PIPE, stdout=stdout,
                cwd=files["dir"])
    assert wait_until(lambda: listening(port) or srv.p.poll() is not None,
                      15) and srv.p.poll() is None, \
        "s_server did not listen: " + srv.stderr()
    return srv, port


def expect_offload(delta, version, ends):
    tx, rx = offloaded(version)
    assert delta["TlsTxSw"] == tx * ends, delta
    assert delta["TlsRxSw"] == rx * ends, delta
    assert delta["TlsDecryptError"] == 0, delta


def upload(procs, files, case, server_ktls, client_ktls):
    """s_client sends PAYLOAD random bytes to s_server -quiet, which writes
    them to a file; returns (data, received, delta while open, delta after).
    s_client's stdin stays open until every byte arrived: closing it early
    makes s_client close the socket with data still in flight."""
    version, copt, cipher = case
    data = os.urandom(PAYLOAD)
    out_path = files["dir"] / "received.bin"
    before = tls_stat()
    with open(out_path, "wb") as out:
        srv, port = start_server(procs, files, version, copt, cipher,
                                 server_ktls, ["-quiet"], out)
        # -nocommands: random bytes must not be read as 'Q'/'R'/'k' lines.
        cli = procs("s_client", ["openssl", "s_client", "-quiet",
                                 "-nocommands", "-no_ign_eof",
                                 "-connect", "127.0.0.1:%d" % port,
                                 version, copt, cipher],
                    files, client_ktls, stdin=subprocess.PIPE,
                    stdout=subprocess.DEVNULL)
        cli.p.stdin.write(data)
        cli.p.stdin.flush()
        arrived = wait_until(lambda: out_path.stat().st_size >= PAYLOAD, 120)
        during = tls_stat_delta(before, tls_stat())
        cli.p.stdin.close()
        assert arrived, ("server got %d of %d bytes\ns_server: %s\ns_client: %s"
                         % (out_path.stat().st_size, PAYLOAD, srv.stderr(),
                            cli.stderr()))
        assert cli.wait() == 0, cli.stderr()
        assert srv.wait() == 0, srv.stderr()
    after = tls_stat_delta(before, tls_stat())
    return data, out_path.read_bytes(), during, after


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_upload_to_ktls_server(tls_files, procs, case):
    data, got, during, after = upload(procs, tls_files, case,
                                      server_ktls=True, client_ktls=False)
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(data).hexdigest()
    version = case[0]
    tx, rx = offloaded(version)
    # The gauges count live kTLS sockets: the server's, while connected.
    assert during["TlsCurrTxSw"] == tx, during
    assert during["TlsCurrRxSw"] == rx, during
    expect_offload(after, version, ends=1)
    assert after["TlsCurrTxSw"] == 0 and after["TlsCurrRxSw"] == 0, after


@pytest.mark.parametrize("case", [CASES[0], CASES[3]],
                         ids=[CASE_IDS[0], CASE_IDS[3]])
def test_both_ends_ktls(tls_files, procs, case):
    data, got, during, after = upload(procs, tls_files, case,
                                      server_ktls=True, client_ktls=True)
    assert got == data
    tx, rx = offloaded(case[0])
    assert during["TlsCurrTxSw"] == 2 * tx, during
    assert during["TlsCurrRxSw"] == 2 * rx, during
    expect_offload(after, case[0], ends=2)
    assert after["TlsCurrTxSw"] == 0 and after["TlsCurrRxSw"] == 0, after


@pytest.mark.parametrize("case", [CASES[0], CASES[3]],
                         ids=[CASE_IDS[0], CASE_IDS[3]])
def test_download_with_sendfile(tls_files, procs, case):
    """s_server -WWW -sendfile answers with SSL_sendfile, which only works
    on a kTLS transmit socket: the file goes through the kernel's TLS."""
    version, copt, cipher = case
    data = os.urandom(PAYLOAD)
    (tls_files["dir"] / "payload.bin").write_bytes(data)
    before = tls_stat()
    srv, port = start_server(procs, tls_files, version, copt, cipher, True,
                             ["-WWW", "-sendfile"], subprocess.DEVNULL)
    cli = subprocess.run(["openssl", "s_client", "-quiet", "-nocommands",
                          "-connect", "127.0.0.1:%d" % port,
                          version, copt, cipher],
                         input=b"GET /payload.bin HTTP/1.0\r\n\r\n",
                         capture_output=True, timeout=120,
                         env=env_for(False, tls_files))
    assert cli.returncode == 0, cli.stderr.decode(errors="replace")
    head, _, body = cli.stdout.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200"), (head[:200], srv.stderr())
    assert len(body) == len(data)
    assert body == data
    assert srv.wait() == 0, srv.stderr()
    after = tls_stat_delta(before, tls_stat())
    expect_offload(after, version, ends=1)
    assert after["TlsCurrTxSw"] == 0, after


def test_no_offload_without_ktls_option(tls_files, procs):
    """Control: the same transfer with Options = KTLS on neither end moves
    no counter, so the counters above measure our switch, not noise."""
    data, got, during, after = upload(procs, tls_files, CASES[0],
                                      server_ktls=False, client_ktls=False)
    assert got == data
    assert during["TlsCurrTxSw"] == 0 and during["TlsCurrRxSw"] == 0, during
    assert after["TlsTxSw"] == 0 and after["TlsRxSw"] == 0, after
