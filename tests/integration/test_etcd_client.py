"""dataplane/etcd.c against a real etcd (Debian's etcd-server 3.4).

One etcd per module on loopback, kernel-chosen ports and a temp data dir;
each test runs one case of the C program etcd_client (etcd_client.c) against
it. The TLS test starts a second etcd that requires client certificates
issued by kgatectl's CA. Every etcd is stopped by PID. A missing etcd binary
is a skip (77); tests/install-deps.sh test installs it.
"""
import os
import shutil
import ssl
import subprocess
import time
import urllib.request

import pytest

from conftest import BUILD_DIR, dead_port, run

CLIENT = os.path.join(BUILD_DIR, "tests", "integration", "etcd_client")
ETCD = shutil.which("etcd")
ETCDCTL = shutil.which("etcdctl")

pytestmark = pytest.mark.skipif(not ETCD or not ETCDCTL,
                                reason="etcd-server/etcd-client not installed")


class Etcd:
    """One etcd member on 127.0.0.1; scheme https with certificates."""

    def __init__(self, workdir, tls=None):
        self.dir = workdir
        self.tls = tls
        scheme = "https" if tls else "http"
        self.port, peer = dead_port(), dead_port()
        self.url = "%s://127.0.0.1:%d" % (scheme, self.port)
        peer_url = "http://127.0.0.1:%d" % peer
        cmd = [ETCD, "--name", "t", "--data-dir", os.path.join(workdir, "data"),
               "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
               "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
               "--initial-cluster", "t=" + peer_url, "--log-outputs", "stderr"]
        if tls:
            cmd += ["--client-cert-auth", "--trusted-ca-file", tls["ca"],
                    "--cert-file", tls["server_cert"], "--key-file", tls["server_key"]]
        self.log_path = os.path.join(workdir, "etcd.log")
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     cwd=workdir)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _context(self):
        if not self.tls:
            return None
        ctx = ssl.create_default_context(cafile=self.tls["ca"])
        ctx.load_cert_chain(self.tls["client_cert"], self.tls["client_key"])
        return ctx

    def _wait_ready(self, timeout=20):
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError("etcd exited (%d):\n%s" % (self.proc.returncode,
                                                                self.log_text()))
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1,
                                            context=self._context()) as r:
                    if b'"health":"true"' in r.read():
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("etcd not ready after %d s:\n%s" % (timeout,
                                                                         self.log_text()))
            time.sleep(0.1)

    def log_text(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()[-4000:]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


@pytest.fixture(scope="module")
def etcd(tmp_path_factory):
    e = Etcd(str(tmp_path_factory.mktemp("etcd")))
    yield e
    e.stop()


def client(case, endpoints, *tls, timeout=60):
    if not os.access(CLIENT, os.X_OK):
        pytest.fail("etcd_client not found at %s (set KG_BUILD_DIR)" % CLIENT)
    res = subprocess.run([CLIENT, case, ",".join(endpoints), *tls], capture_output=True,
                         text=True, timeout=timeout)
    assert res.returncode == 0, "etcd_client %s failed (rc %d):\n%s%s" % (
        case, res.returncode, res.stdout, res.stderr)
    return res.stderr


@pytest.mark.parametrize("case", ["range", "txn", "lease", "watch", "compaction"])
def test_case(etcd, case):
    client(case, [etcd.url])


def test_failover_first_endpoint_dead(etcd):
    client("failover", ["http://127.0.0.1:%d" % dead_port(), etcd.url])


def test_every_endpoint_dead():
    out = client("unreachable", ["http://127.0.0.1:%d" % dead_port(),
                                 "http://127.0.0.1:%d" % dead_port()])
    assert "Could not connect" in out or "Couldn't connect" in out, out


@pytest.fixture(scope="module")
def tls_etcd(tmp_path_factory):
    """etcd that requires client certificates from kgatectl's CA."""
    from conftest import KGATECTL
    if not os.access(KGATECTL, os.X_OK):
        pytest.fail("kgatectl not found at %s (set KG_BUILD_DIR)" % KGATECTL)
    root = str(tmp_path_factory.mktemp("etcd-tls"))
    ca_dir = os.path.join(root, "ca")
    run([KGATECTL, "ca", "init", "--dir", ca_dir, "--subject",
         "/O=kgate test/CN=etcd test CA", "--days", "2"])
    # etcd's JSON gateway connects to the member's own gRPC port with the
    # member's certificate as its client certificate, so with
    # --client-cert-auth that certificate needs clientAuth as well as
    # serverAuth (etcd refuses a serverAuth-only one: "incompatible key
    # usage"). kgatectl issues one or the other: sign the member's with the
    # same CA through openssl.
    server = os.path.join(root, "server")
    ext = os.path.join(root, "server.ext")
    with open(ext, "w") as f:
        f.write("basicConstraints = critical, CA:FALSE\n"
                "keyUsage = critical, digitalSignature, keyEncipherment\n"
                "extendedKeyUsage = serverAuth, clientAuth\n"
                "subjectAltName = IP:127.0.0.1\n")
    run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt",
         "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", server + ".key",
         "-subj", "/O=kgate test/CN=etcd", "-out", server + ".csr"])
    run(["openssl", "x509", "-req", "-in", server + ".csr", "-CA",
         os.path.join(ca_dir, "ca.pem"), "-CAkey", os.path.join(ca_dir, "private", "ca.key"),
         "-CAcreateserial", "-days", "2", "-extfile", ext, "-out", server + ".pem"])
    run([KGATECTL, "ca", "issue", "--dir", ca_dir, "--type", "client", "--subject",
         "/O=kgate test/CN=kgated", "--days", "2", "--out", os.path.join(root, "client")])
    tls = {"ca": os.path.join(ca_dir, "ca.pem"),
           "server_cert": os.path.join(root, "server.pem"),
           "server_key": os.path.join(root, "server.key"),
           "client_cert": os.path.join(root, "client.pem"),
           "client_key": os.path.join(root, "client.key")}
    e = Etcd(os.path.join(root), tls=tls)
    yield e
    e.stop()


def test_tls_client_certificate(tls_etcd):
    t = tls_etcd.tls
    client("range", [tls_etcd.url], t["client_cert"], t["client_key"], t["ca"])
    client("txn", [tls_etcd.url], t["client_cert"], t["client_key"], t["ca"])


def test_tls_certificate_of_another_ca_refused(tls_etcd, tmp_path):
    """A client certificate of another CA: the handshake fails and the
    error names the endpoint."""
    from conftest import KGATECTL
    other = str(tmp_path / "other")
    run([KGATECTL, "ca", "init", "--dir", other, "--subject", "/O=kgate test/CN=other CA",
         "--days", "2"])
    run([KGATECTL, "ca", "issue", "--dir", other, "--type", "client", "--subject",
         "/O=kgate test/CN=kgated", "--days", "2", "--out", str(tmp_path / "client")])
    t = tls_etcd.tls
    res = subprocess.run([CLIENT, "range", tls_etcd.url, str(tmp_path / "client.pem"),
                          str(tmp_path / "client.key"), t["ca"]],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 1, res.stderr
    # The words depend on when the refusal lands (a TLS 1.3 alert after
    # the request went out, or a reset): the endpoint is what must show.
    assert tls_etcd.url in res.stderr, res.stderr
