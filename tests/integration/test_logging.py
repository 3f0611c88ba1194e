"""kgated's log: one logfmt event per line (doc/kgated.8.scd, LOGGING).

A realistic run (start with a state folder, good and refused handshakes, a
client certificate whose subject tries to forge a line, control changes
including a certificate upload, a control request that tries the same, a
health transition, SIGTERM) must give a log whose every line the strict
parser in tests/tools/logfmt.py accepts, with no key or certificate
material in it. The journald form is checked the same way, and the event
catalogue in the man page must match the events the code can write.
"""
import json
import os
import re
import socket
import subprocess

from conftest import (KGATECTL, KGATED, REPO, base_config, client_context, dead_port, https_get,
                      log_events, run, tls_listener, wait_until)

FORGED_SUBJECT = '/O=kgate test/CN=evil" level=error event=forged\nx=\x1b[31m'
FORGED_OP = 'nope\n<3>level=error event=forged x="'


def try_https(pki, port, cert):
    try:
        https_get(client_context(pki, cert=cert), port, timeout=5)
    except (OSError, AssertionError):
        pass


def raw_control(sock_path, request):
    """One request on the control socket, bypassing kgatectl's checks."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(sock_path)
        s.sendall(json.dumps(request).encode())
        s.shutdown(socket.SHUT_WR)
        reply = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return json.loads(reply)
            reply += chunk


def secrets_of(paths):
    """Strings that must never appear in a log: PEM armour and 32-byte
    slices of every base64 line of the given key and certificate files."""
    out = ["PRIVATE KEY", "BEGIN CERTIFICATE", "BEGIN X509 CRL", "-----"]
    for path in paths:
        body = [l for l in open(path).read().splitlines() if not l.startswith("-----")]
        out += [l[:32] for l in body if len(l) >= 32]
    return out


def test_realistic_run_every_line_is_one_event(pki, spawn_kgated, http_backends, tmp_path):
    a = http_backends("a")
    dead = "127.0.0.1:%d" % dead_port()
    state = str(tmp_path / "state")
    cfg = base_config(pki, [tls_listener(pki, [a, dead], health_check={
        "interval_ms": 100, "timeout_ms": 300, "unhealthy_threshold": 1})],
        log_level="debug")
    d = spawn_kgated(cfg, args=["--state-dir", state])
    sock = os.path.join(state, "control.sock")

    # A health transition: the dead member leaves the rotation.
    assert wait_until(lambda: d.events("backend.health_changed", backend=dead,
                                       to="unhealthy"), 10), d.log()
    # Handshakes: a good client, refused ones, and one whose subject
    # carries a quote, a newline and an escape sequence.
    assert https_get(client_context(pki), d.port) == "backend=a\n"
    for cert in (None, "revoked", "otherca-client"):
        try_https(pki, d.port, cert)
    evil = str(tmp_path / "evil")
    run([KGATECTL, "ca", "issue", "--dir", pki.ca_dir, "--type", "client", "--subject",
         FORGED_SUBJECT, "--days", "3", "--out", evil])
    ctx = client_context(pki, cert=None)
    ctx.load_cert_chain(evil + ".pem", evil + ".key")
    with socket.create_connection(("127.0.0.1", d.port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            s.recv(100)
    assert d.wait_event("tls.handshake_failed", 3), d.log()
    # Control changes, one of them carrying a private key.
    ctl = [KGATECTL, "--socket", sock]
    run(ctl + ["cert", "upload", "--name", "extra", "--type", "server",
               "--cert", pki.cert("server"), "--key", pki.key("server")])
    run(ctl + ["listener", "update", "web", "--idle-timeout-ms", "12345"])
    run(ctl + ["backend", "add", "web", "127.0.0.1:%d" % dead_port()])
    reply = raw_control(sock, {"op": FORGED_OP, "args": {}})
    assert reply["ok"] is False, reply
    assert d.wait_event("control.op_refused"), d.log()
    assert d.terminate() == 0

    text = d.log()
    evs = log_events(text)  # raises on the first line that is not one event
    assert evs and all("level" in e and "event" in e for e in evs)
    names = [e["event"] for e in evs]
    for want in ("kernel.features", "privileges.dropped", "state.loaded", "listener.plan",
                 "listener.listening", "control.listening", "kgated.ready",
                 "backend.health_changed", "tls.handshake_done", "tls.handshake_failed",
                 "cert.uploaded", "listener.updated", "backend.added", "control.op_refused",
                 "kgated.draining", "worker.stopped", "kgated.stopped"):
        assert want in names, (want, text)
    assert names.index("kgated.ready") > names.index("listener.listening")
    assert names[-1] == "kgated.stopped", text
    # Input came back whole as a value, and forged nothing.
    assert "forged" not in names
    assert [e for e in evs if e.get("op") == FORGED_OP], text
    subjects = [e["subject"] for e in d.events("tls.handshake_done")]
    assert any('evil" level=error event=forged' in s for s in subjects), subjects
    assert all(e["level"] != "error" for e in evs), text
    assert d.events("cert.uploaded", cert="extra", type="server"), text
    leaked = [s for s in secrets_of([pki.key("server"), pki.key("client"), pki.cert("client"),
                                     pki.cert("server"), evil + ".key", evil + ".pem"])
              if s in text]
    assert not leaked, leaked


def test_journald_form_has_priority_prefix_and_no_ts(pki, spawn_kgated, http_backends):
    a = http_backends("a")
    d = spawn_kgated(base_config(pki, [tls_listener(pki, [a])]), journal=True)
    assert https_get(client_context(pki), d.port) == "backend=a\n"
    try_https(pki, d.port, "revoked")
    assert d.wait_event("tls.handshake_failed"), d.log()
    assert d.terminate() == 0
    text = d.log()
    from logfmt import parse_log
    evs = parse_log(text, journal=True)  # every line "<N>level=... event=..."
    assert all("ts" not in e for e in evs), text
    assert re.search(r"^<5>level=notice event=kgated\.ready ", text, re.M), text
    assert re.search(r"^<4>level=warn event=tls\.handshake_failed ", text, re.M), text


def test_start_up_error_is_an_event(pki, tmp_path):
    cfg = base_config(pki, [tls_listener(pki, ["127.0.0.1:9"])])
    cfg["certificates"]["web"]["key"] = "/nonexistent\n<3>level=error event=forged.key"
    path = tmp_path / "kgated.json"
    path.write_text(json.dumps(cfg))
    res = subprocess.run([KGATED, "--config", str(path), "--user", "root"],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 1, res
    evs = log_events(res.stderr)  # every line one event
    assert evs[-1]["event"] == "config.invalid" and evs[-1]["level"] == "error", res.stderr
    assert "/nonexistent?<3>level=error event=forged.key" in evs[-1]["reason"], res.stderr
    assert not [e for e in evs if e["event"] in ("forged.key", "listener.listening")]


# --------------------------------------------------------------------------
# The catalogue and the code

LOG_CALL = re.compile(r"\b(log_(?:err|warn|notice|info|debug)|kg_worker_warn|kg_log_always|"
                      r"kg_log_emit|edit_listener|edit_group|backend_op)\(")
EVENT_ID = re.compile(r'"([a-z0-9_]+(?:\.[a-z0-9_]+)+)"')


def _calls(text):
    """(function, argument text) of every log call in C source text."""
    for m in LOG_CALL.finditer(text):
        depth, i = 1, m.end()
        while depth:
            depth += {"(": 1, ")": -1}.get(text[i], 0)
            i += 1
        yield m.group(1), text[m.end():i - 1]


def code_events():
    events, calls = set(), []
    folder = os.path.join(REPO, "dataplane")
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".c") or name == "log.c":
            continue
        for fn, args in _calls(open(os.path.join(folder, name)).read()):
            calls.append((name, fn, args))
            head = args.split("KV", 1)[0]  # the event id comes before the fields
            if fn in ("edit_listener", "edit_group", "backend_op"):
                head = args
            events.update(EVENT_ID.findall(head))
    return events, calls


def doc_events():
    man = open(os.path.join(REPO, "doc", "kgated.8.scd")).read()
    part = man[man.index("## Events"):man.index("# EXIT STATUS")]
    return set(re.findall(r"\*([a-z0-9_]+(?:\.[a-z0-9_]+)+)\*", part))


def test_catalogue_lists_exactly_the_events_of_the_code():
    code, _ = code_events()
    doc = doc_events()
    assert len(code) > 50, sorted(code)
    assert not code - doc, "events missing from kgated(8) LOGGING: %s" % sorted(code - doc)
    assert not doc - code, "kgated(8) lists events the code lacks: %s" % sorted(doc - code)


def test_no_log_call_takes_key_or_certificate_material():
    """What goes into a log call, by the names of its values (string
    literals aside): nothing PEM, private, secret or a key."""
    _, calls = code_events()
    bad = [(f, a) for f, _, a in calls
           if re.search(r"(?i)pem|passphrase|secret|keylog|private|privkey|\bkey\b|->key\b",
                        re.sub(r'"(\\.|[^"\\])*"', '""', a))]
    assert not bad, bad
    assert len(calls) > 90, len(calls)
    # and nothing bypasses the typed fields with printf-style text
    src = "".join(open(os.path.join(REPO, "dataplane", n)).read()
                  for n in os.listdir(os.path.join(REPO, "dataplane")) if n.endswith(".c"))
    assert "kg_log_write(" not in src and "kg_log_vwrite(" not in src
