"""The origin's last step, for real: a browser with the client's PKCS#12
imported opens the https listener and its requests alternate between the
backends over one keep-alive connection, which the browser speaks HTTP/2
on; without the certificate the page does not load.

Headless Chromium (Debian's `chromium`) reads client certificates from the
NSS database under $HOME/.pki/nssdb (filled with pk12util/certutil from
libnss3-tools in a temporary $HOME) and picks one without a dialog only
when the AutoSelectCertificateForUrls policy says so; Linux Chromium reads
policies only from /etc/chromium/policies/managed, so the test writes one
file there for its own origin and removes it afterwards. Chromium exits 0
even when a page fails: the assertions are on the DOM it dumps."""
import json
import os
import re
import shutil
import subprocess

import pytest

from conftest import base_config, run, tls_listener
from test_https import KeepAliveBackend

POLICY_DIR = "/etc/chromium/policies/managed"

# Six sequential fetches on the page's connection; the DOM shows what came
# back. The empty icon keeps Chromium from fetching /favicon.ico meanwhile.
PAGE = b"""<html><head><link rel="icon" href="data:,"></head><body>
<pre id="out">loading</pre><script>
(async () => {
  const seen = [];
  for (let i = 0; i < 6; i++) {
    const r = await fetch("/who?" + i);
    seen.push((await r.text()).trim());
  }
  document.getElementById("out").textContent = "RESULT " + seen.join(" ") + " END";
})();
</script></body></html>"""


@pytest.fixture
def page_backends():
    made = [KeepAliveBackend(n, routes={"/": ("text/html", PAGE)}) for n in ("A", "B")]
    yield made
    for b in made:
        b.close()


def tool(name):
    path = shutil.which(name)
    if not path:
        pytest.fail("%s not installed (tests/install-deps.sh test installs chromium "
                    "and libnss3-tools)" % name)
    return path


def nss_home(tmp_path, pki, with_cert):
    """A $HOME whose NSS database trusts the test CA and, with_cert, holds
    the client's certificate and key imported from its .p12."""
    home = tmp_path / ("home-cert" if with_cert else "home-nocert")
    db = home / ".pki" / "nssdb"
    db.mkdir(parents=True)
    env = dict(os.environ, HOME=str(home))
    certutil, pk12util = tool("certutil"), tool("pk12util")
    run([certutil, "-N", "-d", "sql:%s" % db, "--empty-password"], env=env,
        stdin=subprocess.DEVNULL)
    run([certutil, "-A", "-n", "kgate test CA", "-t", "C,,", "-i", pki.ca,
         "-d", "sql:%s" % db], env=env, stdin=subprocess.DEVNULL)
    if with_cert:
        run([pk12util, "-i", pki.path("client", "p12"), "-d", "sql:%s" % db,
             "-W", pki.p12_pass, "-K", ""], env=env, stdin=subprocess.DEVNULL)
        listing = run([certutil, "-L", "-d", "sql:%s" % db], env=env,
                      stdin=subprocess.DEVNULL).stdout
        assert "u,u,u" in listing, listing  # the key came with the certificate
    return home


@pytest.fixture
def cert_policy(tmp_path):
    """Writes the AutoSelectCertificateForUrls policy for one origin."""
    if os.geteuid() != 0:
        pytest.skip("writing %s needs root" % POLICY_DIR)
    paths = []

    def write(origin):
        os.makedirs(POLICY_DIR, exist_ok=True)
        path = os.path.join(POLICY_DIR, "kgate-test-%d-%d.json" % (os.getpid(), len(paths)))
        rule = json.dumps({"pattern": origin, "filter": {}})
        with open(path, "w") as f:
            json.dump({"AutoSelectCertificateForUrls": [rule]}, f)
        paths.append(path)
    yield write
    for p in paths:
        os.unlink(p)


def chromium_dom(home, tmp_path, url):
    profile = tmp_path / ("profile-%s" % os.path.basename(home))
    cmd = [tool("chromium"), "--headless", "--no-sandbox", "--disable-gpu", "--no-zygote",
           "--no-first-run", "--disable-dev-shm-usage", "--user-data-dir=%s" % profile,
           "--virtual-time-budget=15000", "--dump-dom", url]
    res = run(cmd, check=False, timeout=120, env=dict(os.environ, HOME=str(home)),
              stdin=subprocess.DEVNULL)
    return res.stdout


def test_browser_sees_backends_alternate(pki, spawn_kgated, page_backends, tmp_path,
                                         cert_policy):
    a, b = page_backends
    lst = tls_listener(pki, [a, b], protocol="https", http={"access_log": "on"})
    d = spawn_kgated(base_config(pki, [lst]))
    origin = "https://localhost:%d" % d.port
    cert_policy(origin)

    dom = chromium_dom(nss_home(tmp_path, pki, True), tmp_path, origin + "/")
    m = re.search(r"RESULT ((?:backend=\w+ ?)+) END", dom)
    assert m, "page did not finish its fetches; DOM:\n%s" % dom[:2000]
    seen = m.group(1).split()
    assert len(seen) == 6
    assert {"backend=A", "backend=B"} == set(seen)
    assert all(x != y for x, y in zip(seen, seen[1:])), seen

    # One TLS connection carried the page and all six fetches.
    evs = [e for e in d.events("http.access", method="GET")
           if e["target"].startswith("/who?")]
    assert len(evs) == 6, evs
    clients = {e["client"] for e in evs}
    assert len(clients) == 1, clients
    assert all("CN=client1" in e["subject"] for e in evs)
    # Over HTTP/2 (ALPN h2, the listener's default): every stream one
    # request, balanced on its own.
    assert all(e["proto"] == "h2" for e in evs), evs
    assert len({e["stream"] for e in evs}) == 6, evs


def test_browser_without_certificate_fails(pki, spawn_kgated, page_backends, tmp_path,
                                           cert_policy):
    a, b = page_backends
    d = spawn_kgated(base_config(pki, [tls_listener(pki, [a, b], protocol="https")]))
    origin = "https://localhost:%d" % d.port
    cert_policy(origin)
    dom = chromium_dom(nss_home(tmp_path, pki, False), tmp_path, origin + "/")
    assert "RESULT" not in dom and "backend=" not in dom, dom[:2000]
    assert a.requests == [] and b.requests == []
    assert d.wait_event("tls.handshake_failed")
