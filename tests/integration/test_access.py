"""Access rules on verified client certificates (kgate.json(5)
access_rules): every matcher kind allowed and refused on a tls listener
with certificates from `kgatectl ca issue` (SANs, OUs), the alert the
client sees, the https 403 mode, the log lines, the counters and a live
`kgatectl listener update`."""
import json
import os
import re
import socket
import ssl

import pytest

from conftest import (KGATED, base_config, dead_port, https_exchange, https_resume, kgatectl,
                      run, tls_listener)
from test_control import gated, port_of, scrape_metrics  # noqa: F401 (gated is a fixture)

ALICE_SAN = ("DNS:alice.example.org,email:alice@example.org,IP:10.9.8.7,"
             "URI:spiffe://example.org/ns/prod/sa/alice")
BOB_SAN = ("DNS:bob.example.net,email:bob@example.net,IP:10.1.1.1,"
           "URI:spiffe://other.org/ns/dev/sa/bob")


@pytest.fixture(scope="module")
def people(pki):
    """alice (O kgate test, OU ops) and bob (O kgate dev, OU dev), issued
    with SANs of every kind by two kgatectl CAs (a kgatectl CA requires
    O and OU to be its own), which the listener trusts as one bundle;
    their serials and fingerprints."""
    out = {"bundle": os.path.join(pki.root, "access-cas.pem")}
    cas = []
    for name, org, ou, san in (("alice", "kgate test", "ops", ALICE_SAN),
                               ("bob", "kgate dev", "dev", BOB_SAN)):
        ca_dir = os.path.join(pki.root, "access-ca-" + ou)
        base = os.path.join(pki.root, "access-" + name)
        if not os.path.exists(base + ".pem"):
            kgatectl("ca", "init", "--dir", ca_dir, "--subject",
                     "/C=DE/O=%s/OU=%s/CN=%s CA" % (org, ou, ou), "--days", "30")
            kgatectl("ca", "issue", "--dir", ca_dir, "--type", "client", "--subject",
                     "/C=DE/O=%s/OU=%s/CN=%s" % (org, ou, name), "--san", san,
                     "--days", "30", "--out", base)
        cas.append(open(os.path.join(ca_dir, "ca.pem")).read())
        serial = run(["openssl", "x509", "-in", base + ".pem", "-noout",
                      "-serial"]).stdout.strip().split("=", 1)[1]
        fp = run(["openssl", "x509", "-in", base + ".pem", "-noout", "-fingerprint",
                  "-sha256"]).stdout.strip().split("=", 1)[1]
        out[name] = {"cert": base + ".pem", "key": base + ".key", "serial": serial,
                     "sha256": fp}
    with open(out["bundle"], "w") as f:
        f.write("".join(cas))
    return out


def config(pki, people, listeners, **settings):
    cfg = base_config(pki, listeners, **settings)
    cfg["certificates"]["clients"] = {"type": "ca", "cert": people["bundle"]}
    return cfg


def context(pki, who):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(pki.ca)
    ctx.load_cert_chain(who["cert"], who["key"])
    return ctx


def attempt(pki, who, port, payload=b"ping\n"):
    """One echo round trip: ("ok", data) or ("refused", the client's error)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with context(pki, who).wrap_socket(raw, server_hostname="localhost") as s:
                s.sendall(payload)
                data = b""
                while len(data) < len(payload):
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                return ("ok", data) if data == payload else ("refused", "eof %r" % data)
    except (ssl.SSLError, OSError) as e:
        return ("refused", str(e))


def listener(pki, backend, rules, default="deny", **extra):
    lst = tls_listener(pki, [backend], access_default=default, **extra)
    if rules is not None:
        lst["access_rules"] = rules
    return lst


# Each matcher kind: (match, alice allowed, bob allowed) under one allow
# rule and access_default deny.
CASES = {
    "cn_exact": ({"cn": "alice"}, True, False),
    "cn_glob": ({"cn": "b?b"}, False, True),
    "o": ({"o": "kgate test"}, True, False),
    "ou": ({"ou": "dev"}, False, True),
    "ou_array": ({"ou": ["sre", "ops"]}, True, False),
    "san_dns_glob": ({"san_dns": "*.EXAMPLE.org"}, True, False),
    "san_email": ({"san_email": "bob@example.net"}, False, True),
    "san_ip": ({"san_ip": "10.9.8.7"}, True, False),
    "san_uri_spiffe": ({"san_uri": "spiffe://example.org/ns/prod/*"}, True, False),
    "issuer": ({"issuer": "CN=ops CA,OU=ops,O=kgate test,C=DE"}, True, False),
    "issuer_glob": ({"issuer": "CN=*CA,OU=*"}, True, True),
    "issuer_other": ({"issuer": "CN=other CA*"}, False, False),
    "serial": ({"serial": "@alice.serial"}, True, False),
    "sha256": ({"sha256": "@bob.sha256"}, False, True),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_matcher_allows_and_refuses(pki, people, spawn_kgated, echo_backend, case):
    match, alice_ok, bob_ok = CASES[case]
    match = {k: (people[v[1:].split(".")[0]][v.split(".")[1]] if str(v).startswith("@") else v)
             for k, v in match.items()}
    d = spawn_kgated(config(pki, people, [listener(pki, echo_backend, [
        {"name": "r-" + case.replace("_", "-"), "action": "allow", "match": match}])]))
    for who, want in (("alice", alice_ok), ("bob", bob_ok)):
        got = attempt(pki, people[who], d.port)
        assert (got[0] == "ok") == want, "%s %s: %s" % (case, who, got)
    denied = [e["reason"] for e in d.events("tls.handshake_failed")]
    assert len(denied) == (not alice_ok) + (not bob_ok), denied
    for r in denied:
        assert r.startswith('access denied by rule "(default)" (subject '), r


def test_deny_rule_names_rule_and_subject_and_alert(pki, people, spawn_kgated, echo_backend):
    rules = [{"name": "no-dev", "action": "deny", "match": {"ou": "dev"}}]
    d = spawn_kgated(config(pki, people, [listener(pki, echo_backend, rules, default="allow")]))
    assert attempt(pki, people["alice"], d.port)[0] == "ok"
    got = attempt(pki, people["bob"], d.port)
    assert got[0] == "refused" and "HANDSHAKE_FAILURE" in got[1].upper().replace(" ", "_"), got
    assert d.wait_event("tls.handshake_failed", 1)
    reason = d.events("tls.handshake_failed")[0]["reason"]
    assert re.fullmatch(r'access denied by rule "no-dev" \(subject .*CN=bob.*\)', reason), reason
    assert "OU=dev" in reason, reason
    # openssl s_client sees handshake_failure (40), what OpenSSL 3.0 sends
    # for a refused certificate: in TLS 1.2 in the handshake itself, in
    # TLS 1.3 (the client is done first) on its first read; -ign_eof keeps
    # it reading after its input ends.
    for version in ("-tls1_2", "-tls1_3"):
        res = run(["openssl", "s_client", "-ign_eof", "-connect", "127.0.0.1:%d" % d.port,
                   version,
                   "-CAfile", pki.ca, "-cert", people["bob"]["cert"], "-key",
                   people["bob"]["key"], "-servername", "localhost"],
                  check=False, input="ping\n", timeout=20)
        out = res.stdout + res.stderr
        assert re.search(r"alert handshake failure|SSL alert number 40", out), out[-2000:]


def test_counters_and_metrics(pki, people, gated, echo_backend):
    mport = dead_port()
    rules = [{"name": "ops", "action": "allow", "match": {"ou": "ops"}}]
    d = gated(config=config(pki, people, [listener(pki, echo_backend, rules)], workers=2),
              args=["--metrics", "127.0.0.1:%d" % mport])
    port = port_of(d.ctl, "web")
    assert attempt(pki, people["alice"], port)[0] == "ok"
    assert attempt(pki, people["alice"], port)[0] == "ok"
    assert attempt(pki, people["bob"], port)[0] == "refused"
    c = d.ctl.json("listener", "show", "web")["counters"]
    assert (c["access_allowed"], c["access_denied"]) == (2, 1), c
    assert c["handshake_failed_by_reason"]["access_denied"] == 1, c
    _, values = scrape_metrics(mport)
    assert values['kgate_listener_access_decisions_total{listener="web",decision="allow"}'] == 2
    assert values['kgate_listener_access_decisions_total{listener="web",decision="deny"}'] == 1
    assert values['kgate_handshake_failures_by_reason_total{reason="access_denied"}'] == 1
    show = d.ctl.json("listener", "show", "web")
    assert show["access_default"] == "deny" and show["access_rules"] == ["ops"], show
    assert re.search(r"access_rules.*ops", d.ctl("listener", "show", "web").stdout)


def test_live_update_applies_to_new_connections_only(pki, people, gated, echo_backend):
    rules = [{"name": "ops", "action": "allow", "match": {"ou": "ops"}}]
    d = gated(config=config(pki, people, [listener(pki, echo_backend, rules)], workers=2))
    port = port_of(d.ctl, "web")
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    s = context(pki, people["alice"]).wrap_socket(raw, server_hostname="localhost")
    try:
        s.sendall(b"one\n")
        assert s.recv(100) == b"one\n"
        d.ctl("listener", "update", "web", "--access-rules", json.dumps(
            [{"name": "dev-only", "action": "allow", "match": {"ou": "dev"}}]))
        # The open connection keeps working; new ones get the new decision.
        s.sendall(b"two\n")
        assert s.recv(100) == b"two\n"
        assert attempt(pki, people["alice"], port)[0] == "refused"
        assert attempt(pki, people["bob"], port)[0] == "ok"
    finally:
        s.close()
    reasons = [e["reason"] for e in d.events("tls.handshake_failed")]
    assert any('"(default)"' in r and "CN=alice" in r for r in reasons), reasons
    # --access-default allow and --access-rules none: everyone again.
    d.ctl("listener", "update", "web", "--access-rules", "none")
    assert attempt(pki, people["alice"], port)[0] == "refused"  # default still deny
    d.ctl("listener", "update", "web", "--access-default", "allow")
    assert attempt(pki, people["alice"], port)[0] == "ok"
    stored = json.load(open(os.path.join(d.state, "state.json")))["listeners"][0] \
        if os.path.exists(os.path.join(d.state, "state.json")) else None
    if stored is not None:
        assert "access_rules" not in stored and stored["access_default"] == "allow"


@pytest.mark.parametrize("version", ["tls12", "tls13"])
def test_session_from_other_rules_does_not_resume(pki, people, gated, http_backends, version):
    """A resumed handshake skips certificate verification: a session made
    under rules that let alice in must not resume once they deny her."""
    backend = http_backends("a")
    rules = [{"name": "ops", "action": "allow", "match": {"ou": "ops"}}]
    d = gated(config=config(pki, people, [listener(pki, backend, rules)], workers=1))
    port = port_of(d.ctl, "web")
    ctx = context(pki, people["alice"])
    ctx.maximum_version = ctx.minimum_version = (
        ssl.TLSVersion.TLSv1_2 if version == "tls12" else ssl.TLSVersion.TLSv1_3)
    data, _, reused, session = https_resume(ctx, port)
    assert data.startswith(b"HTTP/1.0 200") or data.startswith(b"HTTP/1.1 200"), data[:100]
    data, _, reused, session = https_resume(ctx, port, session)
    assert reused, "no resumption under unchanged rules"
    d.ctl("listener", "update", "web", "--access-rules", json.dumps(
        [{"name": "no-ops", "action": "deny", "match": {"ou": "ops"}}]))
    try:
        data, _, reused, _ = https_resume(ctx, port, session)
    except (ssl.SSLError, OSError) as e:
        data, reused = str(e).encode(), False
    assert not reused and b"200" not in data, data[:200]
    reasons = [e["reason"] for e in d.events("tls.handshake_failed")]
    assert any('rule "no-ops"' in r for r in reasons), reasons


def test_https_403_mode(pki, people, spawn_kgated, http_backends):
    backend = http_backends("a")
    rules = [{"name": "ops", "action": "allow", "match": {"ou": "ops"}}]
    lst = listener(pki, backend, rules, protocol="https", access_denied_response="403")
    d = spawn_kgated(config(pki, people, [lst]))

    def get(who):
        return https_exchange(context(pki, people[who]), d.port)[0]
    assert get("alice").startswith(b"HTTP/1.1 200"), "alice refused"
    data = get("bob")  # the connection closes after the 403: recv ends
    assert data.startswith(b"HTTP/1.1 403 Forbidden"), data[:200]
    assert b"backend=" not in data
    assert backend.hits == 1
    ev = d.events("tls.access_denied")
    assert len(ev) == 1 and ev[0]["rule"] == "(default)" and "CN=bob" in ev[0]["subject"], ev
    assert not d.events("tls.handshake_failed")
    # The default on https is the alert.
    d2 = spawn_kgated(config(pki, people, [listener(pki, backend, rules, protocol="https")]))
    got = attempt(pki, people["bob"], d2.port, payload=b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert got[0] == "refused", got


@pytest.mark.parametrize("extra,message", [
    ({"access_rules": []}, "listeners[0].access_rules: must not be an empty array"),
    ({"access_rules": [{"name": "a", "action": "allow", "match": {"cn": "x", "nope": 1}}]},
     "listeners[0].access_rules[0].match.nope: unknown key"),
    ({"access_rules": [{"name": "a", "action": "allow", "match": {"cn": "x"}}],
      "mutual_auth": "optional"},
     'listeners[0].access_rules: needs mutual_auth "required"'),
    ({"access_denied_response": "403"}, 'listeners[0].access_denied_response: only for '
     'protocol "https"'),
])
def test_config_refusals(pki, tmp_path, echo_backend, extra, message):
    cfg = base_config(pki, [tls_listener(pki, [echo_backend], **extra)])
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(cfg))
    res = run([KGATED, "--check", "--config", str(path)], check=False)
    assert res.returncode != 0
    assert message in res.stderr + res.stdout, res.stderr + res.stdout
