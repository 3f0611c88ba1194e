"""Per-SNI certificates and client policies (kgate.json(5) "sni",
"strict_sni"): the SNI matrix with openssl s_client -servername (which
certificate is served, which CA names the CertificateRequest lists, strict
on and off), per-entry mutual_auth and access rules with Python ssl and
curl clients holding certificates from `kgatectl ca issue`, 421 on https
when a request's Host belongs to another client policy (curl --resolve and
-H Host, and one reused Python connection), resumption that must not cross
policies, live changes, the document's refusals, and the certificate
objects (cert list used_by, cert delete, expiry metrics)."""
import json
import os
import re
import socket
import ssl

import pytest

from conftest import KGATED, base_config, dead_port, kgatectl, run, tls_listener
from test_control import gated, port_of, scrape_metrics  # noqa: F401 (gated is a fixture)
from test_store import ETCD, ETCDCTL, etcd, fresh, instances, kek  # noqa: F401 (fixtures)
from test_store_verbs import converge, pair, show  # noqa: F401 (pair is a fixture)

API = "api.example.com"
WILD = "*.example.org"
SAME = "same.example.net"


@pytest.fixture(scope="module")
def sni_pki(pki):
    """Server certificates for api.example.com and *.example.org from the
    suite's CA; a second kgatectl CA "partners" with clients partner1 and
    partner2."""
    out = {"partners_dir": os.path.join(pki.root, "sni-partners")}
    if not os.path.exists(os.path.join(pki.root, "sni-api.pem")):
        for name, cn, san in (("api", API, "DNS:%s,DNS:%s" % (API, SAME)),
                              ("wild", "wild.example.org", "DNS:" + WILD)):
            kgatectl("ca", "issue", "--dir", pki.ca_dir, "--type", "server", "--subject",
                     "/O=kgate test/CN=" + cn, "--san", san, "--days", "30",
                     "--out", os.path.join(pki.root, "sni-" + name))
        kgatectl("ca", "init", "--dir", out["partners_dir"], "--subject",
                 "/C=DE/O=partners/OU=p/CN=partners CA", "--days", "30")
        for who in ("partner1", "partner2"):
            kgatectl("ca", "issue", "--dir", out["partners_dir"], "--type", "client",
                     "--subject", "/C=DE/O=partners/OU=p/CN=" + who, "--days", "30",
                     "--out", os.path.join(pki.root, "sni-" + who))
    for name in ("api", "wild", "partner1", "partner2"):
        out[name] = (os.path.join(pki.root, "sni-%s.pem" % name),
                     os.path.join(pki.root, "sni-%s.key" % name))
    out["partners"] = os.path.join(out["partners_dir"], "ca.pem")
    return out


def entries(partner_rules=None):
    """api: its own CA (partners); *.example.org: no client certificates;
    same.example.net: another certificate under the listener's policy."""
    api = {"names": [API], "certificate": "api", "ca": "partners",
           "mutual_auth": "required"}
    if partner_rules is not None:
        api["access_rules"] = partner_rules
        api["access_default"] = "deny"
    return [api,
            {"names": [WILD], "certificate": "wild", "mutual_auth": "off"},
            {"names": [SAME], "certificate": "api"}]


def config(pki, sp, backend, protocol="tls", strict=False, sni=None, **extra):
    lst = tls_listener(pki, [backend], protocol=protocol,
                       sni=entries() if sni is None else sni, **extra)
    if strict:
        lst["strict_sni"] = True
    cfg = base_config(pki, [lst])
    cfg["certificates"]["api"] = {"type": "server", "cert": sp["api"][0], "key": sp["api"][1]}
    cfg["certificates"]["wild"] = {"type": "server", "cert": sp["wild"][0],
                                   "key": sp["wild"][1]}
    cfg["certificates"]["partners"] = {"type": "ca", "cert": sp["partners"]}
    return cfg


def s_client(port, servername, *extra):
    """openssl s_client over TLS 1.3 (the client is done before the server
    judges its certificate, so the CertificateRequest is printed either
    way); its whole output."""
    cmd = ["openssl", "s_client", "-connect", "127.0.0.1:%d" % port, "-tls1_3"]
    cmd += ["-noservername"] if servername is None else ["-servername", servername]
    res = run(cmd + list(extra), check=False, input="", timeout=20)
    return res.stdout + res.stderr


def served_cn(out):
    m = re.search(r"^subject=.*CN ?= ?([^,\n]+)", out, re.M)
    return m.group(1).strip() if m else None


def ca_names(out):
    if "No client certificate CA names sent" in out:
        return []
    m = re.search(r"Acceptable client certificate CA names\n((?:.+\n)+?)(?:Requested|Client "
                  r"Certificate Types|Peer signing|Shared)", out)
    return re.findall(r"CN ?= ?([^,\n]+)", m.group(1)) if m else None


# servername: (certificate CN served, CA names asked for), or None where
# only the listener's own settings (default) serve it.
MATRIX = {
    API: ("api.example.com", ["partners CA"]),
    "API.Example.COM": ("api.example.com", ["partners CA"]),
    "x.example.org": ("wild.example.org", []),
    "a.b.example.org": None,   # a wildcard stands for one label
    "example.org": None,       # ... and for one, not none
    "unknown.test": None,
    None: None,                # no server_name extension
}
DEFAULT = ("localhost", ["kgate test CA"])


@pytest.mark.parametrize("strict", [False, True], ids=["lenient", "strict"])
def test_sni_matrix(pki, sni_pki, gated, echo_backend, strict):
    d = gated(config=config(pki, sni_pki, echo_backend, strict=strict))
    port = port_of(d.ctl, "web")
    refused = 0
    for name, want in MATRIX.items():
        out = s_client(port, name)
        if want is None and strict:
            refused += 1
            assert re.search(r"unrecognized name|alert number 112", out), (name, out[-1500:])
            assert served_cn(out) is None, (name, out[-1500:])
            continue
        cn, cas = want or DEFAULT
        assert served_cn(out) == cn, (name, out[-2000:])
        assert ca_names(out) == cas, (name, out[-2000:])
    c = d.ctl.json("listener", "show", "web")["counters"]
    assert c["handshake_failed_by_reason"]["unknown_sni"] == refused, c
    reasons = [e["reason"] for e in d.events("tls.handshake_failed")]
    if strict:
        assert 'strict_sni: unknown server name "unknown.test"' in reasons, reasons
        assert "strict_sni: no server name" in reasons, reasons
    else:
        assert not any(r.startswith("strict_sni") for r in reasons), reasons


def context(pki, cert=None, ca=None):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(ca or pki.ca)
    if cert:
        ctx.load_cert_chain(*cert)
    return ctx


def echo(ctx, port, servername):
    """One echo round trip: "ok" or the error."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname=servername) as s:
                s.sendall(b"ping\n")
                data = s.recv(100)
                return "ok" if data == b"ping\n" else "eof %r" % data
    except (ssl.SSLError, OSError) as e:
        return str(e)


def client_cert(pki, name):
    return (pki.cert(name), pki.key(name))


def test_per_entry_mutual_auth(pki, sni_pki, gated, echo_backend):
    d = gated(config=config(pki, sni_pki, echo_backend))
    port = port_of(d.ctl, "web")
    partner, own = sni_pki["partner1"], client_cert(pki, "client")
    cases = [
        # (client certificate, server name, served)
        (partner, API, True),
        (own, API, False),                 # the listener's CA is not api's
        (None, API, False),                # api requires one
        (own, "localhost", True),
        (partner, "localhost", False),     # partners is only api's CA
        (client_cert(pki, "revoked"), "localhost", False),  # the listener's CRL
        (None, "x.example.org", True),     # no client certificates there
        (own, SAME, True),                 # the listener's policy
        (partner, SAME, False),
    ]
    for cert, name, ok in cases:
        got = echo(context(pki, cert), port, name)
        assert (got == "ok") == ok, (cert, name, got)


def test_per_entry_access_rules(pki, sni_pki, gated, echo_backend):
    rules = [{"name": "p1", "action": "allow", "match": {"cn": "partner1"}}]
    d = gated(config=config(pki, sni_pki, echo_backend, sni=entries(rules)))
    port = port_of(d.ctl, "web")
    assert echo(context(pki, sni_pki["partner1"]), port, API) == "ok"
    assert echo(context(pki, sni_pki["partner2"]), port, API) != "ok"
    # The listener itself has no rules: its clients all get in.
    assert echo(context(pki, client_cert(pki, "client")), port, "localhost") == "ok"
    reasons = [e["reason"] for e in d.events("tls.handshake_failed")]
    assert any(r.startswith('access denied by rule "(default)"') and "CN=partner2" in r
               for r in reasons), reasons
    show = d.ctl.json("listener", "show", "web")
    api = show["sni"][0]
    assert api["names"] == [API] and api["access_rules"] == ["p1"], api
    assert api["access_default"] == "deny" and api["ca"] == "partners", api
    assert show["sni"][2]["policy"] == "listener" and show["sni"][2]["ca"] == "clients"
    assert show["counters"]["access_denied"] == 1, show["counters"]


def http_conn(ctx, port, servername):
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    return ctx.wrap_socket(raw, server_hostname=servername)


def http_request(s, host):
    """One keep-alive GET on s: (status, body)."""
    s.sendall(("GET / HTTP/1.1\r\nHost: %s\r\n\r\n" % host).encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    m = re.search(rb"content-length: *(\d+)", head, re.I)
    while m and len(body) < int(m.group(1)):
        chunk = s.recv(65536)
        if not chunk:
            break
        body += chunk
    status = int(head.split(b" ")[1]) if head.startswith(b"HTTP/1.1 ") else 0
    return status, body


def test_https_421_when_host_has_another_policy(pki, sni_pki, gated, http_backends):
    backend = http_backends("a")
    d = gated(config=config(pki, sni_pki, backend, protocol="https"))
    port = port_of(d.ctl, "web")
    # One connection under *.example.org (no client certificate): its own
    # names are served, api's and the listener's are not, whatever comes
    # first on the connection.
    s = http_conn(context(pki), port, "x.example.org")
    try:
        assert http_request(s, "x.example.org:%d" % port)[0] == 200
        assert http_request(s, "Y.EXAMPLE.ORG")[0] == 200  # same entry, any case
        assert http_request(s, API)[0] == 421  # the NGINX pitfall
    finally:
        s.close()
    for host in ("localhost", SAME, "[::1]:%d" % port, "example.org."):
        s = http_conn(context(pki), port, "x.example.org")
        try:
            assert http_request(s, host)[0] == 421, host
        finally:
            s.close()
    # Under the listener's policy: same.example.net shares it (served),
    # api and *.example.org do not.
    own = client_cert(pki, "client")
    s = http_conn(context(pki, own), port, "localhost")
    try:
        assert http_request(s, "localhost")[0] == 200
        assert http_request(s, SAME)[0] == 200
        assert http_request(s, "z.example.org")[0] == 421
    finally:
        s.close()
    # A second Host field cannot smuggle another name past the check:
    # the request is refused (400, RFC 9112 3.2) before any of them is
    # looked at.
    s = http_conn(context(pki), port, "x.example.org")
    try:
        s.sendall(("GET / HTTP/1.1\r\nHost: x.example.org\r\nHost: %s\r\n\r\n"
                   % API).encode())
        assert s.recv(100).startswith(b"HTTP/1.1 400")
    finally:
        s.close()
    # curl: --resolve for the connection's name, -H Host for another.
    base = ["curl", "-sS", "--max-time", "10", "--cacert", pki.ca, "-o", "/dev/null",
            "-w", "%{http_code}", "--resolve", "x.example.org:%d:127.0.0.1" % port]
    url = "https://x.example.org:%d/" % port
    assert run(base + [url]).stdout == "200"
    assert run(base + ["-H", "Host: " + API, url]).stdout == "421"
    partner = sni_pki["partner1"]
    res = run(["curl", "-sS", "--max-time", "10", "--cacert", pki.ca, "-o", "/dev/null",
               "-w", "%{http_code}", "--cert", partner[0], "--key", partner[1],
               "--resolve", "%s:%d:127.0.0.1" % (API, port), "https://%s:%d/" % (API, port)])
    assert res.stdout == "200"
    hits = backend.hits
    assert hits == 6, hits  # nothing answered 421 reached the backend
    ev = d.events("http.error_response", status="421")
    assert ev, d.log[-2000:]
    stats = d.ctl.json("stats")
    assert stats["connections"]["http_requests_misdirected"] == 7, stats["connections"]


def test_https_421_strict(pki, sni_pki, gated, http_backends):
    """With strict_sni no name is the listener's own: a Host no entry has
    is refused, whatever the connection's entry."""
    backend = http_backends("a")
    d = gated(config=config(pki, sni_pki, backend, protocol="https", strict=True))
    port = port_of(d.ctl, "web")
    for host, want in (("x.example.org", 200), ("unknown.test", 421)):
        s = http_conn(context(pki), port, "x.example.org")
        try:
            assert http_request(s, host)[0] == want, host
        finally:
            s.close()
    assert backend.hits == 1


@pytest.mark.parametrize("version,tickets", [("tls13", "stateless"), ("tls12", "stateful")])
def test_resumption_does_not_cross_policies(pki, sni_pki, gated, http_backends, version,
                                            tickets):
    """A session made under *.example.org (no client certificate) must not
    resume under api.example.com, which requires one: a resumed handshake
    verifies nothing. Stateless tickets (keys shared by every entry) and
    the stateful cache (the listener's, shared too) alike."""
    d = gated(config=config(pki, sni_pki, http_backends("a"), protocol="https",
                            tls_session_tickets=tickets))
    port = port_of(d.ctl, "web")
    ctx = context(pki)
    ctx.minimum_version = ctx.maximum_version = (
        ssl.TLSVersion.TLSv1_3 if version == "tls13" else ssl.TLSVersion.TLSv1_2)

    def get(name, session=None):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname=name, session=session) as s:
                s.sendall(("GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n"
                           % name).encode())
                data = b""
                while True:
                    try:
                        chunk = s.recv(65536)
                    except ssl.SSLError:
                        break
                    if not chunk:
                        break
                    data += chunk
                return data, s.session_reused, s.session
    data, _, session = get("x.example.org")
    assert data.startswith(b"HTTP/1.1 200"), data[:200]
    data, reused, session = get("y.example.org", session)
    assert reused, "no resumption within one entry"
    try:
        data, reused, _ = get(API, session)
    except (ssl.SSLError, OSError) as e:
        data, reused = str(e).encode(), False
    assert not reused and b"200 OK" not in data, data[:200]


def test_live_update(pki, sni_pki, gated, echo_backend):
    d = gated(config=config(pki, sni_pki, echo_backend))
    port = port_of(d.ctl, "web")
    partner, own = sni_pki["partner1"], client_cert(pki, "client")
    held = http_conn(context(pki, partner), port, API)
    try:
        held.sendall(b"one\n")
        assert held.recv(100) == b"one\n"
        new = entries()
        new[0]["ca"] = "clients"
        d.ctl("listener", "update", "web", "--sni", json.dumps(new))
        # New handshakes only: the open connection goes on.
        held.sendall(b"two\n")
        assert held.recv(100) == b"two\n"
    finally:
        held.close()
    assert echo(context(pki, partner), port, API) != "ok"
    assert echo(context(pki, own), port, API) == "ok"
    assert served_cn(s_client(port, "unknown.test")) == "localhost"
    d.ctl("listener", "update", "web", "--strict-sni", "true")
    assert re.search(r"unrecognized name|alert number 112", s_client(port, "unknown.test"))
    show = d.ctl("listener", "show", "web").stdout
    assert "strict_sni: true" in show, show
    assert ("sni[0]: %s certificate=api ca=clients mutual_auth=required "
            "access_default=allow policy=own\n" % API) in show, show
    assert "sni[1]: %s certificate=wild mutual_auth=off" % WILD in show, show
    stored = json.load(open(os.path.join(d.state, "state.json")))["listeners"][0]
    assert stored["sni"][0]["ca"] == "clients" and stored["strict_sni"] is True, stored
    # The entries cannot go while strict_sni needs them; then both go.
    res = d.ctl("listener", "update", "web", "--sni", "none", check=False)
    assert res.returncode != 0 and "strict_sni" in res.stderr, res
    d.ctl("listener", "update", "web", "--sni", "none", "--strict-sni", "false")
    assert served_cn(s_client(port, API)) == "localhost"
    assert "sni" not in json.load(open(os.path.join(d.state, "state.json")))["listeners"][0]


def test_certificates_used_only_by_entries(pki, sni_pki, gated, echo_backend):
    mport = dead_port()
    d = gated(config=config(pki, sni_pki, echo_backend),
              args=["--metrics", "127.0.0.1:%d" % mport])
    certs = {c["name"]: c for c in d.ctl.json("cert", "list")}
    for name in ("api", "wild", "partners"):
        assert certs[name]["used_by"] == ["web"], certs[name]
        assert isinstance(certs[name]["days_left"], int), certs[name]
    res = d.ctl("cert", "delete", "wild", check=False)
    assert res.returncode != 0 and "in use" in res.stderr, res
    # A certificate only an entry uses is replaced for new handshakes.
    port = port_of(d.ctl, "web")
    out = os.path.join(pki.root, "sni-wild2")
    kgatectl("ca", "issue", "--dir", pki.ca_dir, "--type", "server", "--subject",
             "/O=kgate test/CN=wild2.example.org", "--san", "DNS:" + WILD, "--days", "30",
             "--out", out)
    d.ctl("cert", "replace", "wild", "--cert", out + ".pem", "--key", out + ".key")
    assert served_cn(s_client(port, "x.example.org")) == "wild2.example.org"
    _, values = scrape_metrics(mport)
    for name, kind in (("api", "server"), ("wild", "server"), ("partners", "ca")):
        key = 'kgate_certificate_not_after_seconds{cert="%s",type="%s"}' % (name, kind)
        assert values.get(key, 0) > 0, sorted(values)[:40]


@pytest.mark.parametrize("change,message", [
    (lambda l: l["sni"][0].update(certificate="nope"),
     'listeners[0].sni[0].certificate: no certificate named "nope"'),
    (lambda l: l["sni"][0].update(ca="nope"),
     'listeners[0].sni[0].ca: no certificate named "nope"'),
    (lambda l: l["sni"][0].update(certificate="partners"),
     'listeners[0].sni[0].certificate: "partners" is a "ca" entry'),
    (lambda l: l["sni"][0].pop("certificate"), "listeners[0].sni[0].certificate: is required"),
    (lambda l: l["sni"][1]["names"].append("API.example.com"),
     'listeners[0].sni[1].names[1]: "api.example.com" is also in sni[0]'),
    (lambda l: l["sni"][0]["names"].append("*.com"),
     'listeners[0].sni[0].names[1]: "*.com" a wildcard needs two labels'),
    (lambda l: l["sni"][0]["names"].append("a.*.example.org"),
     'listeners[0].sni[0].names[1]: "a.*.example.org" has \'*\' other than'),
    (lambda l: l["sni"][0]["names"].append("foo..example.org"),
     "listeners[0].sni[0].names[1]: \"foo..example.org\" has an empty label"),
    (lambda l: l["sni"][0]["names"].append("example.org."),
     "listeners[0].sni[0].names[1]: \"example.org.\" ends with a dot"),
    (lambda l: l["sni"][0]["names"].append("exa_mple.org"),
     "listeners[0].sni[0].names[1]: \"exa_mple.org\" has '_'"),
    (lambda l: l["sni"][0].update(names=[]), "listeners[0].sni[0].names: must have 1-64"),
    (lambda l: l["sni"][0].update(nope=1), "listeners[0].sni[0].nope: unknown key"),
    # The listener's rules are not the entry's to free when it is refused.
    (lambda l: (l.update(access_rules=[{"name": "a", "action": "allow", "match": {"cn": "x"}}]),
                l["sni"][0].update(certificate="nope")),
     'listeners[0].sni[0].certificate: no certificate named "nope"'),
    (lambda l: l["sni"][0].update(mutual_auth="optional", access_rules=[
        {"name": "a", "action": "allow", "match": {"cn": "x"}}]),
     'listeners[0].sni[0].access_rules: needs mutual_auth "required"'),
    (lambda l: l["sni"][1].update(mutual_auth="required"),
     'listeners[0].sni[1].mutual_auth: "required" needs "ca"'),
    (lambda l: (l.pop("sni"), l.update(strict_sni=True)),
     'listeners[0].strict_sni: needs "sni" entries'),
    (lambda l: (l.update(protocol="tcp"), [l.pop(k) for k in ("certificate", "ca",
                                                                "mutual_auth")]),
     'listeners[0].sni: not allowed with protocol "tcp"'),
])
def test_config_refusals(pki, sni_pki, tmp_path, echo_backend, change, message):
    cfg = config(pki, sni_pki, echo_backend)
    change(cfg["listeners"][0])
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(cfg))
    res = run([KGATED, "--check", "--config", str(path)], check=False)
    assert res.returncode != 0
    assert message in res.stderr + res.stdout, res.stderr + res.stdout


@pytest.mark.skipif(not ETCD or not ETCDCTL, reason="etcd-server/etcd-client not installed")
def test_through_the_store(pair, pki, sni_pki, instances, http_backends):
    """kgatectl --store: the entries go into etcd's document with the
    same checks and answers as the control socket's, and both instances
    serve them."""
    store = pair.store
    insts = instances(store.etcd)
    for name, kind, files in (("web", "server", (pki.cert("server"), pki.key("server"))),
                              ("api", "server", sni_pki["api"]),
                              ("clients", "ca", (pki.ca,)),
                              ("partners", "ca", (sni_pki["partners"],))):
        pair.run("cert", "upload", "--name", name, "--type", kind, "--cert", files[0],
                 *(("--key", files[1]) if kind == "server" else ()))
    sni = [{"names": [API], "certificate": "api", "ca": "partners"}]
    res = pair.run("listener", "create", "--name", "web", "--protocol", "tls", "--port", "0",
                   "--bind", "127.0.0.1", "--cert", "web", "--ca", "clients", "--sni",
                   json.dumps(sni), "--strict-sni", "true",
                   "--backend", http_backends("a").address)
    assert res["sni"][0]["names"] == [API] and res["strict_sni"] is True, res
    assert "in use" in pair.run("cert", "delete", "partners", fails=True)
    converge(store, insts)
    for i in insts:
        port = int(show(i)["address"].rsplit(":", 1)[1])
        out = s_client(port, API)
        assert served_cn(out) == API and ca_names(out) == ["partners CA"], out[-2000:]
        assert re.search(r"unrecognized name|alert number 112", s_client(port, "other.test"))
    pair.run("listener", "update", "web", "--sni", "none", "--strict-sni", "false")
    converge(store, insts)
    for i in insts:
        port = int(show(i)["address"].rsplit(":", 1)[1])
        assert served_cn(s_client(port, API)) == "localhost"
