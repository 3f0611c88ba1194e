"""kgatectl ca, checked by tools nobody here wrote: openssl verify / x509 /
pkcs12 / ca / s_server and curl. Every folder is a per-test temp dir, the
TLS server listens on 127.0.0.1 with a kernel-chosen port and is stopped
by PID."""
import hashlib
import json
import os
import re
import stat
import subprocess
import time

import pytest

BUILD_DIR = os.environ.get("KG_BUILD_DIR", "/work/main/build-a")
KGATECTL = os.path.join(BUILD_DIR, "ctl", "kgatectl")
SUBJ = "/C=CN/ST=Zhejiang/L=Hangzhou/O=Example/OU=Edge"
P12_PASS = "p12-pass-123"
KEY_PASS = "key-pass-456"


def run(cmd, check=True, timeout=60):
    res = subprocess.run([str(c) for c in cmd], capture_output=True, text=True,
                         timeout=timeout)
    if check and res.returncode != 0:
        raise AssertionError("rc %d: %s\nstdout:\n%s\nstderr:\n%s" % (
            res.returncode, " ".join(map(str, cmd)), res.stdout, res.stderr))
    return res


def kg(*args, check=True):
    return run([KGATECTL, *args], check=check)


def write(path, text):
    with open(path, "w") as f:
        f.write(text)
    return path


class World:
    """A CA with a server, two clients (one revoked), an RSA client with an
    encrypted key, and a client of another CA."""

    def __init__(self, root):
        self.root = root
        self.ca_dir = os.path.join(root, "ca")
        self.ca = os.path.join(self.ca_dir, "ca.pem")
        self.crl = os.path.join(root, "ca.crl")
        self.p12_pass_file = write(os.path.join(root, "p12.pass"), P12_PASS + "\n")
        self.key_pass_file = write(os.path.join(root, "key.pass"), KEY_PASS)

    def p(self, name):
        return os.path.join(self.root, name)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    if not os.access(KGATECTL, os.X_OK):
        pytest.fail("kgatectl not found at %s (set KG_BUILD_DIR)" % KGATECTL)
    w = World(str(tmp_path_factory.mktemp("pki")))
    kg("ca", "init", "--dir", w.ca_dir, "--subject", SUBJ + "/CN=Example Root CA")
    kg("ca", "issue", "--dir", w.ca_dir, "--type", "server", "--subject",
       SUBJ + "/CN=localhost", "--san", "DNS:localhost,IP:127.0.0.1",
       "--out", w.p("server"))
    kg("ca", "issue", "--dir", w.ca_dir, "--type", "client", "--subject",
       SUBJ + "/CN=alice", "--out", w.p("alice"), "--p12", w.p("alice.p12"),
       "--p12-pass-file", w.p12_pass_file)
    kg("ca", "issue", "--dir", w.ca_dir, "--type", "client", "--subject",
       "/O=Example/CN=bob", "--out", w.p("bob"))
    kg("ca", "issue", "--dir", w.ca_dir, "--type", "client", "--subject",
       "/CN=carol", "--key", "rsa-2048", "--key-pass-file", w.key_pass_file,
       "--out", w.p("carol"))
    kg("ca", "revoke", "--dir", w.ca_dir, "--cert", w.p("bob.pem"),
       "--reason", "keyCompromise")
    kg("ca", "crl", "--dir", w.ca_dir, "--out", w.crl)
    kg("ca", "init", "--dir", w.p("other"), "--subject", "/O=Mallory/CN=Other CA")
    kg("ca", "issue", "--dir", w.p("other"), "--type", "client", "--subject",
       "/O=Mallory/CN=alice", "--out", w.p("mallory"), "--p12", w.p("mallory.p12"),
       "--p12-pass-file", w.p12_pass_file)
    return w


def snapshot(folder):
    """Every path below folder with its mode and content hash."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            digest = None
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
            out[os.path.relpath(path, folder)] = (stat.S_IMODE(st.st_mode), digest)
    return out


# ---------------------------------------------------------------- layout

def test_ca_folder_layout_and_modes(world):
    mode = lambda p: stat.S_IMODE(os.stat(p).st_mode)
    assert mode(os.path.join(world.ca_dir, "private")) == 0o700
    assert mode(os.path.join(world.ca_dir, "private", "ca.key")) == 0o600
    for name in ("alice.key", "bob.key", "carol.key", "alice.p12"):
        assert mode(world.p(name)) == 0o600, name
    with open(os.path.join(world.ca_dir, "serial")) as f:
        assert re.fullmatch(r"([0-9A-F]{2})+\n", f.read())
    with open(os.path.join(world.ca_dir, "index.txt")) as f:
        lines = f.read().splitlines()
    assert len(lines) == 4
    for line in lines:
        fields = line.split("\t")
        assert len(fields) == 6, line
        assert os.path.exists(os.path.join(world.ca_dir, "newcerts", fields[3] + ".pem"))
    assert [l.split("\t")[0] for l in lines] == ["V", "V", "R", "V"]
    assert re.fullmatch(r"\d{12}Z,keyCompromise", lines[2].split("\t")[2])
    with open(world.p("carol.key")) as f:
        assert f.readline().strip() == "-----BEGIN ENCRYPTED PRIVATE KEY-----"
    run(["openssl", "pkey", "-in", world.p("carol.key"), "-passin",
         "file:" + world.key_pass_file, "-noout"])
    assert run(["openssl", "pkey", "-in", world.p("carol.key"), "-passin", "pass:wrong",
                "-noout"], check=False).returncode != 0


# ---------------------------------------------------------------- openssl verify

@pytest.mark.parametrize("name,purpose", [("server", "sslserver"), ("alice", "sslclient"),
                                          ("carol", "sslclient"), ("bob", "sslclient")])
def test_openssl_verify_accepts_issued(world, name, purpose):
    res = run(["openssl", "verify", "-purpose", purpose, "-CAfile", world.ca,
               world.p(name + ".pem")])
    assert res.stdout.strip().endswith(": OK")


def test_openssl_verify_wrong_purpose_and_wrong_ca(world):
    res = run(["openssl", "verify", "-purpose", "sslserver", "-CAfile", world.ca,
               world.p("alice.pem")], check=False)
    assert res.returncode != 0 and "unsuitable certificate purpose" in res.stdout + res.stderr
    res = run(["openssl", "verify", "-CAfile", world.ca, world.p("mallory.pem")], check=False)
    assert res.returncode != 0


def test_openssl_verify_crl_check(world):
    ok = run(["openssl", "verify", "-crl_check", "-CAfile", world.ca, "-CRLfile", world.crl,
              world.p("alice.pem"), world.p("server.pem")])
    assert ok.stdout.count(": OK") == 2
    bad = run(["openssl", "verify", "-crl_check", "-CAfile", world.ca, "-CRLfile", world.crl,
               world.p("bob.pem")], check=False)
    assert bad.returncode != 0
    assert "certificate revoked" in bad.stdout + bad.stderr


def test_crl_contents(world):
    text = run(["openssl", "crl", "-in", world.crl, "-noout", "-text"]).stdout
    serial = run(["openssl", "x509", "-in", world.p("bob.pem"), "-noout", "-serial"]).stdout
    serial = serial.strip().split("=")[1]
    assert "Version 2" in text
    assert "X509v3 CRL Number" in text
    assert "X509v3 Authority Key Identifier" in text
    assert "Serial Number: " + serial in text
    assert "Key Compromise" in text
    assert text.count("Serial Number:") == 1
    run(["openssl", "crl", "-in", world.crl, "-CAfile", world.ca, "-noout"])


# ---------------------------------------------------------------- x509 -text

X509_CASES = [
    ("ca/ca.pem", ["Basic Constraints: critical", "CA:TRUE",
                   "Key Usage: critical", "Certificate Sign, CRL Sign",
                   "Subject Key Identifier", "ecdsa-with-SHA256", "NIST CURVE: P-256"],
     ["Extended Key Usage"]),
    ("server.pem", ["CA:FALSE", "Key Usage: critical", "Digital Signature",
                    "TLS Web Server Authentication", "Subject Key Identifier",
                    "Authority Key Identifier", "DNS:localhost, IP Address:127.0.0.1",
                    "ecdsa-with-SHA256"],
     ["TLS Web Client Authentication", "Key Encipherment"]),
    ("alice.pem", ["CA:FALSE", "Digital Signature", "TLS Web Client Authentication",
                   "Authority Key Identifier", "Subject Key Identifier"],
     ["TLS Web Server Authentication", "Subject Alternative Name", "Key Encipherment"]),
    ("carol.pem", ["Digital Signature, Key Encipherment", "TLS Web Client Authentication",
                   "Public-Key: (2048 bit)", "ecdsa-with-SHA256"], []),
]


@pytest.mark.parametrize("name,present,absent", X509_CASES, ids=[c[0] for c in X509_CASES])
def test_x509_text_shows_extensions(world, name, present, absent):
    text = run(["openssl", "x509", "-in", world.p(name), "-noout", "-text"]).stdout
    for want in present:
        assert want in text, want
    for unwanted in absent:
        assert unwanted not in text, unwanted


def test_server_san_defaults_to_cn(world, tmp_path):
    kg("ca", "issue", "--dir", world.ca_dir, "--type", "server", "--subject",
       "/CN=api.example.net", "--out", tmp_path / "api")
    text = run(["openssl", "x509", "-in", tmp_path / "api.pem", "-noout", "-ext",
                "subjectAltName"]).stdout
    assert "DNS:api.example.net" in text


# ---------------------------------------------------------------- PKCS#12

def test_pkcs12_info_opens_with_password(world):
    res = run(["openssl", "pkcs12", "-info", "-noout", "-in", world.p("alice.p12"),
               "-passin", "file:" + world.p12_pass_file])
    info = res.stdout + res.stderr
    assert "MAC: sha256" in info
    assert "AES-256-CBC" in info
    assert "RC2" not in info and "3DES" not in info
    res = run(["openssl", "pkcs12", "-in", world.p("alice.p12"), "-nodes",
               "-passin", "file:" + world.p12_pass_file])
    assert "CN = alice" in res.stdout and "CN = Example Root CA" in res.stdout
    assert "PRIVATE KEY" in res.stdout
    bad = run(["openssl", "pkcs12", "-info", "-noout", "-in", world.p("alice.p12"),
               "-passin", "pass:wrong-password"], check=False)
    assert bad.returncode != 0


def test_export_p12_with_encrypted_key(world, tmp_path):
    out = tmp_path / "carol.p12"
    kg("ca", "export-p12", "--cert", world.p("carol.pem"), "--key", world.p("carol.key"),
       "--key-pass-file", world.key_pass_file, "--ca", world.ca, "--out", out,
       "--pass-file", world.p12_pass_file)
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    res = run(["openssl", "pkcs12", "-in", out, "-nodes", "-passin",
               "file:" + world.p12_pass_file])
    assert "CN = carol" in res.stdout and "PRIVATE KEY" in res.stdout
    # Without the key's passphrase (stdin is no terminal): a clear refusal.
    res = kg("ca", "export-p12", "--cert", world.p("carol.pem"), "--key", world.p("carol.key"),
             "--ca", world.ca, "--out", tmp_path / "x.p12", "--pass-file",
             world.p12_pass_file, check=False)
    assert res.returncode == 1
    assert "the key is encrypted: give --key-pass-file" in res.stderr
    assert not os.path.exists(tmp_path / "x.p12")


# ---------------------------------------------------------------- openssl ca

OPENSSL_CNF = """\
[ ca ]
default_ca = kg

[ kg ]
dir = {dir}
certificate = $dir/ca.pem
private_key = $dir/private/ca.key
database = $dir/index.txt
new_certs_dir = $dir/newcerts
serial = $dir/serial
crlnumber = $dir/crlnumber
default_md = sha256
default_days = 30
default_crl_days = 30
policy = policy_match

[ policy_match ]
countryName = match
organizationName = match
commonName = supplied

[ v3_client ]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


def openssl_ca_sign(cnf, tmp_path, name, start=None, end=None):
    key, csr, pem = (tmp_path / (name + ext) for ext in (".key", ".csr", ".pem"))
    run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", key, "-subj", "/C=DE/O=Shared/CN=" + name, "-out", csr])
    cmd = ["openssl", "ca", "-batch", "-notext", "-config", cnf, "-extensions", "v3_client",
           "-in", csr, "-out", pem]
    cmd += ["-startdate", start, "-enddate", end] if start else ["-days", "30"]
    run(cmd)
    return pem


def list_json(ca_dir):
    return json.loads(kg("ca", "list", "--dir", ca_dir, "-o", "json").stdout)


def test_openssl_ca_shares_the_folder(tmp_path):
    ca_dir = tmp_path / "ca"
    kg("ca", "init", "--dir", ca_dir, "--subject", "/C=DE/O=Shared/CN=Shared CA",
       "--serial", "10")
    kg("ca", "issue", "--dir", ca_dir, "--type", "client", "--subject", "/C=DE/O=Shared/CN=k1",
       "--out", tmp_path / "k1")
    cnf = write(tmp_path / "ca.cnf", OPENSSL_CNF.format(dir=ca_dir))

    # openssl ca continues kgatectl's serials and writes to the same index.
    expired = openssl_ca_sign(cnf, tmp_path, "expired", "20200101000000Z", "20210101000000Z")
    notyet = openssl_ca_sign(cnf, tmp_path, "notyet", "20990101000000Z", "20991231000000Z")
    fresh = openssl_ca_sign(cnf, tmp_path, "fresh")
    for pem, serial in ((expired, "11"), (notyet, "12"), (fresh, "13")):
        out = run(["openssl", "x509", "-in", pem, "-noout", "-serial"]).stdout
        assert out.strip() == "serial=" + serial
    res = run(["openssl", "verify", "-CAfile", ca_dir / "ca.pem", expired], check=False)
    assert res.returncode != 0 and "certificate has expired" in res.stderr
    res = run(["openssl", "verify", "-CAfile", ca_dir / "ca.pem", notyet], check=False)
    assert res.returncode != 0 and "certificate is not yet valid" in res.stderr
    run(["openssl", "verify", "-CAfile", ca_dir / "ca.pem", fresh, tmp_path / "k1.pem"])

    # ... and kgatectl reads what openssl ca wrote, and continues after it.
    res = kg("ca", "issue", "--dir", ca_dir, "--type", "client", "--subject",
             "/C=DE/O=Shared/CN=k2", "--out", tmp_path / "k2", "-o", "json")
    assert json.loads(res.stdout)["serial"] == "14"
    rows = {r["serial"]: r for r in list_json(ca_dir)}
    assert sorted(rows) == ["10", "11", "12", "13", "14"]
    assert rows["11"]["status"] == "expired"
    assert rows["11"]["not_after"] == "2021-01-01T00:00:00Z"
    assert rows["12"]["status"] == "valid"
    assert all(r["type"] == "client" for r in rows.values())
    assert rows["14"]["subject"] == "/C=DE/O=Shared/CN=k2"

    # Revocations from either tool land in both tools' CRLs.
    run(["openssl", "ca", "-config", cnf, "-revoke", tmp_path / "k1.pem",
         "-crl_reason", "superseded"])
    kg("ca", "revoke", "--dir", ca_dir, "--serial", "13", "--reason", "cACompromise")
    kg("ca", "crl", "--dir", ca_dir, "--out", tmp_path / "kg.crl")
    text = run(["openssl", "crl", "-in", tmp_path / "kg.crl", "-noout", "-text"]).stdout
    assert "Serial Number: 10" in text and "Superseded" in text
    assert "Serial Number: 13" in text and "CA Compromise" in text
    run(["openssl", "ca", "-config", cnf, "-gencrl", "-out", tmp_path / "os.crl"])
    text = run(["openssl", "crl", "-in", tmp_path / "os.crl", "-noout", "-text"]).stdout
    assert "Serial Number: 13" in text and "CA Compromise" in text
    # Both CRLs count on one crlnumber.
    nums = [run(["openssl", "crl", "-in", tmp_path / f, "-noout", "-crlnumber"]).stdout.strip()
            for f in ("kg.crl", "os.crl")]
    assert nums == ["crlNumber=0x01", "crlNumber=0x02"]
    rows = {r["serial"]: r for r in list_json(ca_dir)}
    assert rows["10"]["status"] == "revoked" and rows["10"]["reason"] == "superseded"
    assert rows["13"]["reason"] == "CACompromise"


# ---------------------------------------------------------------- list

def test_list_table_and_json(world):
    rows = list_json(world.ca_dir)
    by_cn = {r["subject"].rsplit("CN=", 1)[1]: r for r in rows}
    assert by_cn["localhost"]["type"] == "server"
    assert by_cn["alice"]["type"] == "client"
    assert by_cn["bob"]["status"] == "revoked"
    assert by_cn["bob"]["reason"] == "keyCompromise"
    assert by_cn["alice"]["status"] == "valid"
    for r in rows:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", r["not_after"])
        assert re.fullmatch(r"([0-9A-F]{2})+", r["serial"])
    table = kg("ca", "list", "--dir", world.ca_dir).stdout.splitlines()
    assert table[0].split() == ["SERIAL", "TYPE", "STATUS", "NOT", "AFTER", "SUBJECT"]
    assert len(table) == 1 + len(rows)
    bob = [l for l in table if l.endswith("/CN=bob")][0]
    assert bob.split()[1:3] == ["client", "revoked"]
    # The global option works before the object too.
    assert json.loads(kg("-o", "json", "ca", "list", "--dir", world.ca_dir).stdout) == rows


# ---------------------------------------------------------------- TLS with s_server + curl

class SServer:
    def __init__(self, world, logdir, extra=()):
        self.log = os.path.join(logdir, "s_server.log")
        self.out = open(self.log, "w")
        self.proc = subprocess.Popen(
            ["openssl", "s_server", "-accept", "127.0.0.1:0", "-cert", world.p("server.pem"),
             "-key", world.p("server.key"), "-Verify", "1", "-CAfile", world.ca, "-www",
             # Without it s_server logs a failed verification and goes on.
             "-verify_return_error",
             *extra], stdin=subprocess.DEVNULL, stdout=self.out, stderr=subprocess.STDOUT)
        self.port = None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self.proc.poll() is None:
            with open(self.log) as f:
                m = re.search(r"ACCEPT 127\.0\.0\.1:(\d+)", f.read())
            if m:
                self.port = int(m.group(1))
                break
            time.sleep(0.05)
        if self.port is None:
            self.stop()
            with open(self.log) as f:
                pytest.fail("s_server did not start:\n" + f.read())

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.out.close()


@pytest.fixture(scope="module")
def sserver(world, tmp_path_factory):
    srv = SServer(world, str(tmp_path_factory.mktemp("s_server")))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def sserver_crl(world, tmp_path_factory):
    srv = SServer(world, str(tmp_path_factory.mktemp("s_server_crl")),
                  ("-crl_check", "-CRL", world.crl))
    yield srv
    srv.stop()


def curl(world, port, *args):
    return run(["curl", "-sS", "--max-time", "10", "--cacert", world.ca, *args,
                "https://127.0.0.1:%d/" % port], check=False, timeout=30)


SERVED = "Ciphers supported in s_server binary"


def test_curl_pem_client_cert_accepted(world, sserver):
    res = curl(world, sserver.port, "--cert", world.p("alice.pem"), "--key", world.p("alice.key"))
    assert res.returncode == 0, res.stderr
    assert SERVED in res.stdout
    assert "CN = alice" in res.stdout or "CN=alice" in res.stdout


def test_curl_p12_client_cert_accepted(world, sserver):
    res = curl(world, sserver.port, "--cert-type", "P12",
               "--cert", "%s:%s" % (world.p("alice.p12"), P12_PASS))
    assert res.returncode == 0, res.stderr
    assert SERVED in res.stdout


@pytest.mark.parametrize("args", [
    ("--cert", "mallory.pem", "--key", "mallory.key"),
    ("--cert-type", "P12", "--cert", "mallory.p12:" + P12_PASS),
    (),
], ids=["other-ca-pem", "other-ca-p12", "no-cert"])
def test_curl_rejected_without_our_client_cert(world, sserver, args):
    args = [world.p(a) if a.startswith("mallory.") else a for a in args]
    res = curl(world, sserver.port, *args)
    # TLS 1.3 reports the server's alert after the handshake: exit 56, not 35.
    assert res.returncode != 0
    assert SERVED not in res.stdout and res.stdout == ""


def test_curl_revoked_cert_rejected_with_crl(world, sserver_crl):
    ok = curl(world, sserver_crl.port, "--cert", world.p("alice.pem"), "--key",
              world.p("alice.key"))
    assert ok.returncode == 0 and SERVED in ok.stdout, ok.stderr
    res = curl(world, sserver_crl.port, "--cert", world.p("bob.pem"), "--key",
               world.p("bob.key"))
    assert res.returncode != 0 and res.stdout == ""


# ---------------------------------------------------------------- refusals and errors

REFUSALS = [
    ("rsa-1024 CA", ["init", "--dir", "{new}", "--subject", "/CN=x", "--key", "rsa-1024"],
     "--key rsa-1024: RSA keys below 2048 bits are weak"),
    ("md5 CA", ["init", "--dir", "{new}", "--subject", "/CN=x", "--digest", "md5"],
     "--digest md5: refused"),
    ("sha1 leaf", ["issue", "--dir", "{ca}", "--type", "client", "--subject", "/CN=x",
                   "--digest", "sha1", "--out", "{out}"], "--digest sha1: refused"),
    ("rsa-1024 leaf", ["issue", "--dir", "{ca}", "--type", "client", "--subject", "/CN=x",
                       "--key", "rsa-1024", "--out", "{out}"], "below 2048 bits"),
    ("900 days", ["issue", "--dir", "{ca}", "--type", "client", "--subject", "/CN=x",
                  "--days", "900", "--out", "{out}"], "beyond 825 days are refused"),
    ("existing CA", ["init", "--dir", "{ca}", "--subject", "/CN=x"], "already holds a CA"),
    ("policy C", ["issue", "--dir", "{ca}", "--type", "client", "--subject", "/C=US/CN=x",
                  "--out", "{out}"], "--subject: C: 'US' differs from the CA's 'CN'"),
    ("policy OU", ["issue", "--dir", "{ca}", "--type", "client", "--subject",
                   "/OU=Core/CN=x", "--out", "{out}"], "OU: 'Core' differs"),
    ("no CN", ["issue", "--dir", "{ca}", "--type", "client", "--subject", "/O=Example",
               "--out", "{out}"], "CN: missing"),
    ("unknown field", ["issue", "--dir", "{ca}", "--type", "client", "--subject",
                       "/CN=x/X=1", "--out", "{out}"], "unknown field 'X'"),
    ("existing output", ["issue", "--dir", "{ca}", "--type", "client", "--subject",
                         "/CN=x", "--out", "{alice}"], "alice.pem: exists (use --force"),
    ("bad type", ["issue", "--dir", "{ca}", "--type", "both", "--subject", "/CN=x",
                  "--out", "{out}"], "--type both: must be client, server or peer"),
    ("bad SAN", ["issue", "--dir", "{ca}", "--type", "server", "--subject", "/CN=x",
                 "--san", "DNS:a,FTP:b", "--out", "{out}"], "--san FTP:b: unknown type"),
    ("p12 without pass", ["issue", "--dir", "{ca}", "--type", "client", "--subject",
                          "/CN=x", "--out", "{out}", "--p12", "{out}.p12"],
     "--p12 and --p12-pass-file go together"),
    ("short pass", ["issue", "--dir", "{ca}", "--type", "client", "--subject", "/CN=x",
                    "--out", "{out}", "--key-pass-file", "{short}"],
     "--key-pass-file: passphrase shorter than 4"),
    ("missing pass file", ["issue", "--dir", "{ca}", "--type", "client", "--subject",
                           "/CN=x", "--out", "{out}", "--key-pass-file", "{out}.nope"],
     "No such file or directory"),
    ("no CA", ["issue", "--dir", "{new}", "--type", "client", "--subject", "/CN=x",
               "--out", "{out}"], "no CA here"),
    ("unknown serial", ["revoke", "--dir", "{ca}", "--serial", "ABCDEF"],
     "serial ABCDEF: not in"),
    ("bad reason", ["revoke", "--dir", "{ca}", "--serial", "01", "--reason", "boredom"],
     "--reason boredom: unknown"),
    ("already revoked", ["revoke", "--dir", "{ca}", "--cert", "{bob}"], "already revoked"),
    ("foreign cert", ["revoke", "--dir", "{ca}", "--cert", "{mallory}"],
     "not issued by the CA"),
    ("unknown verb", ["isue"], "ca isue: unknown verb"),
    ("prefix is not a verb", ["lis", "--dir", "{ca}"], "ca lis: unknown verb"),
    ("option of another verb", ["list", "--dir", "{ca}", "--force"],
     "--force: not an option of this verb"),
    ("passphrase on argv", ["issue", "--dir", "{ca}", "--type", "client", "--subject",
                            "/CN=x", "--out", "{out}", "--key-pass", "secret"],
     "--key-pass: unknown option"),
    ("missing --dir", ["crl", "--out", "{out}.crl"], "ca crl: --dir is required"),
]


@pytest.mark.parametrize("desc,args,want", REFUSALS, ids=[r[0] for r in REFUSALS])
def test_refusals_are_one_clear_line(world, tmp_path, desc, args, want):
    short = write(tmp_path / "short.pass", "abc\n")
    subst = {"new": tmp_path / "newca", "ca": world.ca_dir, "out": tmp_path / "out",
             "alice": world.p("alice"), "bob": world.p("bob.pem"),
             "mallory": world.p("mallory.pem"), "short": short}
    args = [a.format(**{k: str(v) for k, v in subst.items()}) for a in args]
    before = snapshot(world.ca_dir)
    res = kg("ca", *args, check=False)
    assert res.returncode in (1, 2), res
    lines = res.stderr.splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("kgatectl: ") and want in lines[0], lines[0]
    assert res.stdout == ""
    assert snapshot(world.ca_dir) == before, "a refused command changed the CA folder"
    assert not os.path.exists(tmp_path / "out.pem")
    assert not os.path.exists(tmp_path / "newca" / "ca.pem")


def test_failed_issue_leaves_everything_as_it_was(world, tmp_path):
    before = snapshot(world.ca_dir)
    # Fails after the cert and key were staged: the p12's folder is missing.
    res = kg("ca", "issue", "--dir", world.ca_dir, "--type", "client", "--subject", "/CN=zed",
             "--out", tmp_path / "zed", "--p12", tmp_path / "nodir" / "zed.p12",
             "--p12-pass-file", world.p12_pass_file, check=False)
    assert res.returncode == 1 and "nodir/zed.p12" in res.stderr
    assert snapshot(world.ca_dir) == before
    assert os.listdir(tmp_path) == [], "temp files were left behind"


def test_force_overrides_validity_cap_and_existing_output(world, tmp_path):
    out = tmp_path / "long"
    kg("ca", "issue", "--dir", world.ca_dir, "--type", "client", "--subject", "/CN=long",
       "--days", "900", "--force", "--out", out)
    first = open(str(out) + ".pem").read()
    kg("ca", "issue", "--dir", world.ca_dir, "--type", "client", "--subject", "/CN=long",
       "--out", out, "--force")
    assert open(str(out) + ".pem").read() != first
    run(["openssl", "verify", "-CAfile", world.ca, str(out) + ".pem"])


def test_help_and_exact_dispatch(world):
    res = kg("--help")
    assert "ca" in res.stdout and res.returncode == 0
    res = kg("ca", "help")
    for verb in ("init", "issue", "export-p12", "revoke", "crl", "list"):
        assert "ca %s " % verb in res.stdout
    res = kg("ca", "issue", "--help")
    assert res.stdout.startswith("Usage: kgatectl ca issue --dir DIR --type client|server")
    res = kg("nosuch", check=False)
    assert res.returncode == 2 and res.stderr == "kgatectl: nosuch: unknown object (see 'kgatectl --help')\n"
