"""Expiry visibility (kgated(8) METRICS and LOGGING): each certificate
entry's notAfter and its CRL's nextUpdate as metrics, as days left in
`kgatectl cert list`, and as warnings 30, 7 and 1 days before, once per
threshold and content.
"""
import calendar
import os
import time

from conftest import KGATECTL, _openssl_ca_sign, base_config, dead_port, run
from test_control import Ctl, scrape_metrics

DAY = 86400


def openssl_date(args, path, key):
    """A date openssl prints as 'key=Jan  6 08:00:00 2027 GMT', as Unix time."""
    out = run(["openssl", *args, "-noout", "-in", path]).stdout.strip()
    assert out.startswith(key + "="), out
    return calendar.timegm(time.strptime(out.split("=", 1)[1], "%b %d %H:%M:%S %Y GMT"))


def short_server(pki, name, days):
    """A server certificate of the session CA ending `days` from now."""
    end = time.strftime("%Y%m%d%H%M%SZ", time.gmtime(int(time.time()) + days * DAY))
    pem = _openssl_ca_sign(pki, os.path.join(pki.root, "openssl-db"), name, "localhost",
                           "v3_server", end=end)
    return pem, pki.key(name)


def days_between(when, before, after):
    """The whole days left kgated may have computed between two instants."""
    return {(when - int(after)) // DAY, (when - int(before)) // DAY}


def start(pki, spawn_kgated, tmp_path, certs):
    cfg = base_config(pki, [])
    cfg["certificates"].update(certs)
    state = str(tmp_path / "state")
    mport = dead_port()
    d = spawn_kgated(cfg, args=["--state-dir", state, "--metrics", "127.0.0.1:%d" % mport])
    d.ctl = Ctl(os.path.join(state, "control.sock"))
    d.mport = mport
    return d


def test_metrics_list_and_warnings(pki, spawn_kgated, tmp_path):
    before = time.time()
    soon20 = short_server(pki, "soon20", 20)
    soon5 = short_server(pki, "soon5", 5)
    far = short_server(pki, "far", 100)
    crl5 = str(tmp_path / "crl5.pem")
    run([KGATECTL, "ca", "crl", "--dir", pki.ca_dir, "--out", crl5, "--days", "5"])
    certs = {n: {"type": "server", "cert": c[0], "key": c[1]}
             for n, c in (("soon20", soon20), ("soon5", soon5), ("far", far))}
    certs["ca5"] = {"type": "ca", "cert": pki.ca, "crl": crl5}
    certs["gone"] = {"type": "server", "cert": pki.cert("server-expired"),
                     "key": pki.key("server-expired")}
    d = start(pki, spawn_kgated, tmp_path, certs)
    after = time.time()
    log = d.log()

    # Metrics: exactly the dates openssl reads from the files.
    text, values = scrape_metrics(d.mport)
    ends = {n: openssl_date(["x509", "-enddate"], c[0], "notAfter")
            for n, c in (("soon20", soon20), ("soon5", soon5), ("far", far))}
    ends["ca5"] = openssl_date(["x509", "-enddate"], pki.ca, "notAfter")
    ends["gone"] = openssl_date(["x509", "-enddate"], pki.cert("server-expired"), "notAfter")
    next5 = openssl_date(["crl", "-nextupdate"], crl5, "nextUpdate")
    for name, when in ends.items():
        kind = "ca" if name == "ca5" else "server"
        key = 'kgate_certificate_not_after_seconds{cert="%s",type="%s"}' % (name, kind)
        assert values[key] == when, (key, values.get(key), when)
    assert values['kgate_crl_next_update_seconds{cert="ca5"}'] == next5
    assert abs(next5 - (before + 5 * DAY)) < 120, next5
    assert 'kgate_crl_next_update_seconds{cert="soon20"}' not in values
    assert "# TYPE kgate_certificate_not_after_seconds gauge" in text

    # cert list: days left, and to the CRL's next update.
    listed = {c["name"]: c for c in d.ctl.json("cert", "list")}
    for name, when in ends.items():
        assert listed[name]["days_left"] in days_between(when, before, time.time()), listed[name]
    assert listed["soon20"]["days_left"] in (19, 20)
    assert listed["gone"]["days_left"] < -365
    assert listed["ca5"]["crl_days_left"] in days_between(next5, before, time.time())
    assert listed["ca5"]["crl_days_left"] in (4, 5)
    assert listed["soon20"]["crl_days_left"] is None
    assert listed["soon20"]["not_after"] and listed["soon20"]["used_by"] == []
    table = d.ctl("cert", "list").stdout.splitlines()
    head = table[0].split()
    assert "DAYS" in head and "CRL" in head, table[0]
    # The table comes a moment after the JSON: a count may have gone down by one.
    def shown(row, days):
        return str(days) in row or str(days - 1) in row
    row = next(line.split() for line in table if line.startswith("soon20 "))
    assert shown(row, listed["soon20"]["days_left"]) and "-" in row, row
    row = next(line.split() for line in table if line.startswith("ca5 "))
    assert shown(row, listed["ca5"]["crl_days_left"]), row
    show = d.ctl.json("cert", "show", "ca5")
    assert show["crl"]["next_update"] == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(next5))

    # Warnings at start: one each, the closest threshold reached.
    def soon(name, what="certificate"):
        return d.events("cert.expires_soon", cert=name, what=what)
    assert len(soon("soon20")) == 1, log
    assert int(soon("soon20")[0]["days_left"]) in (19, 20), log
    assert soon("soon20")[0]["level"] == "warn"
    assert soon("soon20")[0]["not_after"] == time.strftime(
        "%Y-%m-%dT%H:%M:%SZ", time.gmtime(ends["soon20"]))
    assert len(soon("soon5")) == 1 and int(soon("soon5")[0]["days_left"]) in (4, 5), log
    assert soon("far") == [], log
    assert len(soon("ca5", "crl")) == 1, log
    assert int(soon("ca5", "crl")[0]["days_left"]) in (4, 5), log
    assert soon("ca5", "crl")[0]["not_after"] == show["crl"]["next_update"]
    expired = [e for e in d.events("cert.past_due", cert="gone")]
    assert len(expired) == 1 and expired[0]["level"] == "error", log
    assert expired[0]["what"] == "certificate" and int(expired[0]["days_left"]) < -365

    # A change makes kgated check again: nothing said twice for the same
    # content; a replaced certificate starts over.
    d.ctl("cert", "upload", "--name", "extra", "--type", "server",
          "--cert", far[0], "--key", far[1])
    six = short_server(pki, "six", 6)
    d.ctl("cert", "replace", "soon20", "--cert", six[0], "--key", six[1])
    assert d.wait_event("cert.expires_soon", min_count=2, cert="soon20"), d.log()
    again = soon("soon20")
    assert len(again) == 2 and int(again[1]["days_left"]) in (5, 6), d.log()
    assert d.ctl.json("cert", "show", "soon20")["days_left"] in (5, 6)
    _, values = scrape_metrics(d.mport)
    assert values['kgate_certificate_not_after_seconds{cert="soon20",type="server"}'] == \
        openssl_date(["x509", "-enddate"], six[0], "notAfter")
    time.sleep(0.5)
    assert len(soon("soon5")) == 1 and len(soon("ca5", "crl")) == 1, d.log()
    assert soon("far") == [] and soon("extra") == [], d.log()
    assert len([e for e in d.events("cert.past_due", cert="gone")]) == 1
    assert d.terminate() == 0
