"""The TLS configuration of a kgated `tls` listener as scanners see it:
sslscan (with the client certificate, since the listener requires one)
and openssl s_client. The policy comes from tls.c: TLS 1.2 and 1.3 only,
AEAD suites with forward secrecy only, no renegotiation, no compression,
the client CA advertised, and no handshake without a client certificate."""
import json
import re
import shutil
import xml.etree.ElementTree as ET

import pytest

from conftest import base_config, kgatectl, run, tls_listener

# AEAD suites in OpenSSL's and IANA's names.
AEAD = re.compile(r"(GCM|CHACHA20[-_]POLY1305|CCM)")


def need(tool):
    if not shutil.which(tool):
        pytest.fail("%s not installed (tests/install-deps.sh test)" % tool)


@pytest.fixture
def daemon(pki, spawn_kgated, http_backends):
    a = http_backends("a")
    return spawn_kgated(base_config(pki, [tls_listener(pki, [a], mutual_auth="required")]))


@pytest.fixture
def scan(pki, daemon, tmp_path):
    """sslscan's XML and text reports of the listener."""
    need("sslscan")
    xml_path = tmp_path / "sslscan.xml"
    res = run(["sslscan", "--no-colour", "--show-client-cas",
               "--certs=" + pki.cert("client"), "--pk=" + pki.key("client"),
               "--xml=" + str(xml_path), "127.0.0.1:%d" % daemon.port], timeout=120)
    root = ET.parse(str(xml_path)).getroot()
    test = root.find("ssltest")
    assert test is not None, "sslscan wrote no result:\n" + res.stdout + res.stderr
    return test, res.stdout


def test_only_tls12_and_tls13(scan):
    test, _ = scan
    enabled = {"%s%s" % (p.get("type"), p.get("version"))
               for p in test.findall("protocol") if p.get("enabled") == "1"}
    assert enabled == {"tls1.2", "tls1.3"}, "protocols enabled: %s" % sorted(enabled)


def test_only_aead_suites_with_forward_secrecy(scan):
    test, _ = scan
    ciphers = [(c.get("sslversion"), c.get("cipher")) for c in test.findall("cipher")]
    assert ciphers, "sslscan found no accepted cipher (client certificate refused?)"
    bad = [c for c in ciphers if not AEAD.search(c[1])]
    assert not bad, "non-AEAD suites accepted: %s" % bad
    # TLS 1.3 suites are all ephemeral; TLS 1.2 ones must say ECDHE/DHE.
    no_fs = [c for c in ciphers if c[0] == "TLSv1.2" and not re.match(r"(ECDHE|DHE)-", c[1])]
    assert not no_fs, "TLS 1.2 suites without forward secrecy: %s" % no_fs
    weak = [c.get("cipher") for c in test.findall("cipher")
            if c.get("strength") not in ("strong", "acceptable")]
    assert not weak, "sslscan rates these suites weak: %s" % weak


def test_no_renegotiation_no_heartbleed(scan):
    test, _ = scan
    reneg = test.find("renegotiation")
    assert reneg is not None and reneg.get("supported") == "0", \
        "renegotiation offered: %s" % (reneg.attrib if reneg is not None else None)
    vulnerable = [h.get("sslversion") for h in test.findall("heartbleed")
                  if h.get("vulnerable") != "0"]
    assert not vulnerable, "heartbleed on %s" % vulnerable


def test_client_ca_advertised(scan, pki):
    _, text = scan
    subject = run(["openssl", "x509", "-in", pki.ca, "-noout", "-subject",
                   "-nameopt", "oneline"]).stdout
    cn = re.search(r"CN = ([^,\n]+)", subject).group(1).strip()
    section = text.split("Acceptable client certificate CA names", 1)
    assert len(section) == 2, "no client CA names in the scan:\n" + text
    names = section[1].strip().split("\n\n", 1)[0]
    assert cn in names, "client CA %r not advertised; got %r" % (cn, names)
    assert "other CA" not in names


@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
def test_no_compression_and_client_cert_required(pki, daemon, version):
    """s_client with a client certificate: compression NONE. Without one:
    no application data gets through (TLS 1.2 fails the handshake; TLS 1.3
    fails at the first read, after the server saw the empty Certificate)."""
    base = ["openssl", "s_client", "-connect", "127.0.0.1:%d" % daemon.port,
            "-servername", "localhost", "-CAfile", pki.ca, version]
    with_cert = run(base + ["-cert", pki.cert("client"), "-key", pki.key("client")],
                    check=False, timeout=30, input="")
    out = with_cert.stdout + with_cert.stderr
    assert "Verify return code: 0 (ok)" in out, out
    assert "Compression: NONE" in out or version == "-tls1_3", out
    assert not re.search(r"Compression: (?!NONE)", out), out
    # -ign_eof: wait for the server's answer (an alert, or the backend's
    # reply and close) instead of quitting at the end of the input.
    without = run(base + ["-ign_eof"], check=False, timeout=30,
                  input="GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    out = without.stdout + without.stderr
    assert "backend=" not in out, "served without a client certificate:\n" + out
    assert re.search(r"alert (handshake failure|certificate required)", out), out


# testssl.sh findings that are about the certificate's content, not the
# listener's configuration: the test PKI's server certificate (kgatectl
# `ca issue`) carries no CRL distribution point or OCSP URI.
TESTSSL_EXEMPT = {"cert_revocation"}


def test_testssl_no_high_or_critical_findings(pki, spawn_kgated, http_backends, tmp_path):
    """testssl.sh against a listener with mutual_auth optional (Debian's
    3.0.8 cannot present a client certificate). Its exit code is not a
    verdict: the JSON findings are."""
    need("testssl")
    # A server certificate valid long enough for testssl's expiry rule
    # (the suite's PKI lives 30 days; testssl rates < 30 days left HIGH).
    ca_dir, srv = tmp_path / "scan-ca", tmp_path / "scan-server"
    kgatectl("ca", "init", "--dir", str(ca_dir), "--subject", "/O=kgate test/CN=scan CA",
             "--days", "400")
    kgatectl("ca", "issue", "--dir", str(ca_dir), "--type", "server",
             "--subject", "/O=kgate test/CN=localhost", "--san", "DNS:localhost,IP:127.0.0.1",
             "--days", "200", "--out", str(srv))
    a = http_backends("a")
    cfg = base_config(pki, [tls_listener(pki, [a], mutual_auth="optional")])
    cfg["certificates"]["web"] = {"type": "server", "cert": str(srv) + ".pem",
                                  "key": str(srv) + ".key"}
    d = spawn_kgated(cfg)
    out = tmp_path / "testssl.json"
    # Protocols, cipher categories, forward secrecy, server preferences and
    # defaults (certificate), vulnerabilities; not the per-cipher listing,
    # the client simulation or the HTTP headers of the backend behind.
    res = run(["testssl", "--quiet", "--color", "0", "--warnings", "off",
               "-p", "-s", "-f", "-P", "-S", "-U", "--add-ca", str(ca_dir / "ca.pem"),
               "--jsonfile", str(out), "127.0.0.1:%d" % d.port],
              check=False, timeout=840)
    assert out.exists(), "testssl wrote no JSON:\n" + res.stdout[-3000:] + res.stderr[-2000:]
    findings = json.loads(out.read_text())
    ids = {f["id"] for f in findings}
    for needed in ("SSLv3", "TLS1", "TLS1_1", "TLS1_2", "TLS1_3", "secure_renego", "CRIME_TLS"):
        assert needed in ids, "testssl did not report %s (scan incomplete?)" % needed
    bad = ["%s %s: %s" % (f["id"], f["severity"], f["finding"]) for f in findings
           if f["severity"] in ("HIGH", "CRITICAL") and f["id"] not in TESTSSL_EXEMPT]
    assert not bad, "testssl findings:\n" + "\n".join(bad)
