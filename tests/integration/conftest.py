"""Shared harness for kgated integration tests.

Everything runs on 127.0.0.1 with kernel-chosen ports and per-test temp
dirs; every process started here is stopped by PID. Binaries come from
$KG_BUILD_DIR (set by ctest) or /work/main/build.
"""
import hashlib
import http.server
import json
import os
import re
import selectors
import signal
import socket
import socketserver
import ssl
import subprocess
import sys
import threading
import time

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tools"))
import logfmt  # noqa: E402  (tests/tools)

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD_DIR = os.environ.get("KG_BUILD_DIR", os.path.join(REPO, "build"))
KGATED = os.environ.get("KG_KGATED",
                        os.path.join(BUILD_DIR, "dataplane", "kgated"))
KGATECTL = os.environ.get("KG_KGATECTL",
                          os.path.join(BUILD_DIR, "ctl", "kgatectl"))

READY_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
# A sanitizer report means a daemon bug even when the test itself passed.
SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer",
                     "runtime error:")


def run(cmd, check=True, timeout=60, **kw):
    """Runs a command, returns CompletedProcess with text output."""
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                         **kw)
    if check and res.returncode != 0:
        raise AssertionError("command failed (rc %d): %s\nstdout:\n%s\nstderr:\n%s"
                             % (res.returncode, " ".join(map(str, cmd)),
                                res.stdout, res.stderr))
    return res


def log_events(text, event=None):
    """The lines of a kgated log or stderr text, each parsed strictly
    (logfmt.py raises on a line that is not one event), those of one
    event id if asked."""
    return [e for e in logfmt.parse_log(text, journal=False)
            if event is None or e["event"] == event]


def worker_counter(d, key):
    """A counter summed over the workers' stop events (once d stopped)."""
    return sum(int(e[key]) for e in d.events("worker.stopped"))


def path_count(d, name):
    """Connections that took path `name`, from the workers' stop events."""
    return worker_counter(d, "path_" + name.replace("-", "_"))


def wait_until(pred, timeout, interval=0.02):
    """Polls pred until it returns a true value or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        val = pred()
        if val:
            return val
        if time.monotonic() >= deadline:
            return val
        time.sleep(interval)


# --------------------------------------------------------------------------
# PKI (kgatectl for everything it can do; `openssl ca` for the odd certs)
# --------------------------------------------------------------------------

OPENSSL_CA_CNF = """\
[ ca ]
default_ca = kgtest

[ kgtest ]
dir = {db}
certificate = {cadir}/ca.pem
private_key = {cadir}/private/ca.key
database = $dir/index.txt
new_certs_dir = $dir/newcerts
serial = $dir/serial
rand_serial = yes
default_md = sha256
default_days = 30
policy = policy_any
unique_subject = no
copy_extensions = none
email_in_dn = no

[ policy_any ]
countryName = optional
stateOrProvinceName = optional
organizationName = optional
organizationalUnitName = optional
commonName = supplied

[ v3_client ]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid

[ v3_serveronly ]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid

[ v3_server ]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


class Pki:
    """Paths of every certificate the suite uses (all PEM unless noted)."""

    def __init__(self, root):
        self.root = root
        self.ca_dir = os.path.join(root, "ca")
        self.ca = os.path.join(self.ca_dir, "ca.pem")
        self.crl = os.path.join(root, "ca.crl")
        self.other_ca_dir = os.path.join(root, "otherca")
        self.p12_pass = "kgate-test-pass"

    def path(self, name, ext):
        return os.path.join(self.root, name + "." + ext)

    def cert(self, name):
        return self.path(name, "pem")

    def key(self, name):
        return self.path(name, "key")


def kgatectl(*args, check=True):
    return run([KGATECTL, *args], check=check)


def _openssl_ca_sign(pki, db, name, cn, ext, start=None, end=None):
    """Signs a fresh P-256 key with the kgatectl CA through `openssl ca`."""
    key, csr, pem = pki.key(name), pki.path(name, "csr"), pki.cert(name)
    run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt",
         "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key,
         "-subj", "/O=kgate test/CN=" + cn, "-out", csr])
    cmd = ["openssl", "ca", "-batch", "-notext", "-config",
           os.path.join(db, "ca.cnf"), "-extensions", ext, "-in", csr,
           "-out", pem]
    if start:
        cmd += ["-startdate", start]
    if end:
        cmd += ["-enddate", end]
    else:
        cmd += ["-days", "30"]
    run(cmd)
    return pem


def build_pki(root):
    pki = Pki(root)
    os.makedirs(root, exist_ok=True)
    pass_file = os.path.join(root, "p12.pass")
    with open(pass_file, "w") as f:
        f.write(pki.p12_pass)

    kgatectl("ca", "init", "--dir", pki.ca_dir, "--subject",
             "/C=DE/O=kgate test/CN=kgate test CA", "--days", "30")
    kgatectl("ca", "issue", "--dir", pki.ca_dir, "--type", "server",
             "--subject", "/O=kgate test/CN=localhost",
             "--san", "DNS:localhost,IP:127.0.0.1", "--days", "30",
             "--out", os.path.join(root, "server"))
    kgatectl("ca", "issue", "--dir", pki.ca_dir, "--type", "client",
             "--subject", "/O=kgate test/CN=client1", "--days", "30",
             "--out", os.path.join(root, "client"),
             "--p12", pki.path("client", "p12"), "--p12-pass-file", pass_file)
    kgatectl("ca", "issue", "--dir", pki.ca_dir, "--type", "client",
             "--subject", "/O=kgate test/CN=revoked", "--days", "30",
             "--out", os.path.join(root, "revoked"))
    kgatectl("ca", "revoke", "--dir", pki.ca_dir, "--cert",
             pki.cert("revoked"))
    kgatectl("ca", "crl", "--dir", pki.ca_dir, "--out", pki.crl)

    kgatectl("ca", "init", "--dir", pki.other_ca_dir, "--subject",
             "/C=DE/O=somebody else/CN=other CA", "--days", "30")
    kgatectl("ca", "issue", "--dir", pki.other_ca_dir, "--type", "client",
             "--subject", "/O=somebody else/CN=client1", "--days", "30",
             "--out", os.path.join(root, "otherca-client"))

    # openssl ca keeps its own database (random serials) so the kgatectl
    # index stays untouched; only the CA cert and key are shared.
    db = os.path.join(root, "openssl-db")
    os.makedirs(os.path.join(db, "newcerts"))
    open(os.path.join(db, "index.txt"), "w").close()
    with open(os.path.join(db, "ca.cnf"), "w") as f:
        f.write(OPENSSL_CA_CNF.format(db=db, cadir=pki.ca_dir))
    _openssl_ca_sign(pki, db, "expired", "expired", "v3_client",
                     "20200101000000Z", "20210101000000Z")
    _openssl_ca_sign(pki, db, "notyet", "notyet", "v3_client",
                     "20990101000000Z", "20991231000000Z")
    _openssl_ca_sign(pki, db, "serveronly", "serveronly", "v3_serveronly")
    _openssl_ca_sign(pki, db, "server-expired", "localhost", "v3_server",
                     "20200101000000Z", "20210101000000Z")
    run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
         "ec_paramgen_curve:prime256v1", "-nodes", "-days", "30",
         "-subj", "/O=kgate test/CN=client1",
         "-addext", "extendedKeyUsage=clientAuth",
         "-addext", "basicConstraints=critical,CA:FALSE",
         "-keyout", pki.key("selfsigned"), "-out", pki.cert("selfsigned")])
    return pki


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    if not os.access(KGATECTL, os.X_OK):
        pytest.fail("kgatectl not found at %s (set KG_BUILD_DIR)" % KGATECTL)
    return build_pki(str(tmp_path_factory.mktemp("pki")))


def client_context(pki, cert="client", tls_min=None, tls_max=None):
    """A Python ssl client context trusting the test CA; cert=None: no cert."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(pki.ca)
    if cert:
        ctx.load_cert_chain(pki.cert(cert), pki.key(cert))
    if tls_min:
        ctx.minimum_version = tls_min
    if tls_max:
        ctx.maximum_version = tls_max
    return ctx


# --------------------------------------------------------------------------
# Backends
# --------------------------------------------------------------------------

class _HttpHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = ("backend=%s\n" % self.server.kg_name).encode()
        with self.server.kg_lock:
            self.server.kg_hits += 1
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def log_message(self, *args):
        pass


class _HttpServer(http.server.ThreadingHTTPServer):
    request_queue_size = 1024  # the default 5 resets bursts of connects
    daemon_threads = True


class HttpBackend:
    """Threaded HTTP server answering every GET with 'backend=NAME'."""

    def __init__(self, name):
        self.name = name
        self.server = _HttpServer(("127.0.0.1", 0), _HttpHandler)
        self.server.kg_name = name
        self.server.kg_hits = 0
        self.server.kg_lock = threading.Lock()
        self.port = self.server.server_address[1]
        self.address = "127.0.0.1:%d" % self.port
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    @property
    def hits(self):
        return self.server.kg_hits

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class _EchoHandler(socketserver.BaseRequestHandler):
    def handle(self):
        sock = self.request
        h = hashlib.sha256()
        n = 0
        try:
            while True:
                data = sock.recv(262144)
                if not data:
                    break
                h.update(data)
                n += len(data)
                sock.sendall(data)
            # Half-close back so the client sees the end of the echo.
            sock.shutdown(socket.SHUT_WR)
            eof = True
        except OSError:
            eof = False
        with self.server.kg_lock:
            self.server.kg_done.append((n, h.hexdigest(), eof))


class _EchoServer(socketserver.ThreadingTCPServer):
    request_queue_size = 1024
    daemon_threads = True
    allow_reuse_address = True


class EchoBackend:
    """Threaded TCP echo; records (bytes, sha256, saw_eof) per connection."""

    def __init__(self):
        self.server = _EchoServer(("127.0.0.1", 0), _EchoHandler)
        self.server.kg_lock = threading.Lock()
        self.server.kg_done = []
        self.port = self.server.server_address[1]
        self.address = "127.0.0.1:%d" % self.port
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    @property
    def finished(self):
        with self.server.kg_lock:
            return list(self.server.kg_done)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class ThreadedServer:
    """A loopback TCP server running self.handle(conn) on a thread per
    connection (the connection is closed afterwards); subclasses say what
    handle does. close() stops accepting."""

    def __init__(self, backlog=256):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(backlog)
        self.address = "127.0.0.1:%d" % self.sock.getsockname()[1]
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn):
        try:
            self.handle(conn)
        except OSError:
            pass
        finally:
            conn.close()

    def handle(self, conn):
        raise NotImplementedError

    def close(self):
        self.sock.close()


def closing_factory(ctor, close=lambda obj: obj.close()):
    """Body of a factory fixture: `yield from closing_factory(Cls)` gives
    the test make(*args) -> Cls(*args), and closes every object made."""
    made = []

    def make(*args, **kw):
        obj = ctor(*args, **kw)
        made.append(obj)
        return obj
    try:
        yield make
    finally:
        for obj in made:
            close(obj)


@pytest.fixture
def http_backends():
    made = []

    def make(*names):
        out = [HttpBackend(n) for n in names]
        made.extend(out)
        return out if len(out) > 1 else out[0]
    yield make
    for b in made:
        b.close()


@pytest.fixture
def echo_backend():
    b = EchoBackend()
    yield b
    b.close()


def dead_port():
    """A loopback port with nothing listening (bound then closed)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# --------------------------------------------------------------------------
# kgated
# --------------------------------------------------------------------------

def tls_listener(pki, backends, name="web", **extra):
    """A listener config dict for a TLS listener on an ephemeral port."""
    lst = {"name": name, "protocol": "tls", "bind": "127.0.0.1", "port": 0,
           "certificate": "web", "ca": "clients", "mutual_auth": "required",
           "backends": [{"address": b if isinstance(b, str) else b.address}
                        for b in backends]}
    lst.update(extra)
    if lst.get("mutual_auth") == "off" and "ca" not in extra:
        del lst["ca"]
    return lst


def base_config(pki, listeners, workers=1, **settings):
    s = {"workers": workers, "drain_timeout_ms": 2000, "log_level": "info"}
    s.update(settings)
    return {"settings": s,
            "certificates": {
                "web": {"type": "server", "cert": pki.cert("server"),
                        "key": pki.key("server")},
                "clients": {"type": "ca", "cert": pki.ca, "crl": pki.crl}},
            "listeners": listeners}


class PidProc:
    """The Popen-like handle of a kgated that an upgrade started: a child of
    the kgated it replaced, adopted by this process (a child subreaper,
    become_subreaper) once that one exits, and waited for by PID."""

    REAPED_ELSEWHERE = -999  # gone, its status collected by its parent

    def __init__(self, pid):
        self.pid = pid
        self.returncode = None

    def poll(self):
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                # Not ours yet (its parent still runs) or reaped by it.
                if not os.path.exists("/proc/%d" % self.pid):
                    self.returncode = self.REAPED_ELSEWHERE
                return self.returncode
            if pid == self.pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout=None):
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired("kgated pid %d" % self.pid, timeout)
            time.sleep(0.02)
        return self.returncode

    def send_signal(self, sig):
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self):
        self.send_signal(signal.SIGKILL)


def become_subreaper():
    """Orphaned descendants (an upgraded kgated whose parent exited) become
    this process's children, so tests can wait for them by PID."""
    import ctypes
    PR_SET_CHILD_SUBREAPER = 36
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0, ctypes.get_errno()


class Daemon:
    def __init__(self, config, workdir, extra_args=(), prefix=(), journal=False, exe=KGATED):
        """prefix: a command that execs kgated (e.g. setpriv ... --).
        journal: JOURNAL_STREAM names the log file, as systemd names the
        journal's stream, so kgated writes journald's form."""
        self.journal = journal
        self.workdir = workdir
        os.makedirs(workdir, exist_ok=True)
        self.config_path = os.path.join(workdir, "kgated.json")
        with open(self.config_path, "w") as f:
            json.dump(config, f, indent=1)
        self.log_path = os.path.join(workdir, "kgated.log")
        self.ports = {}
        self.returncode = None
        self.killed = False  # SIGKILLed on purpose by a test
        self._log = open(self.log_path, "w")
        env = dict(os.environ)
        # ASan parks freed memory in a 256 MB quarantine, so VmRSS would
        # follow allocation churn (OpenSSL's released record buffers)
        # rather than what the daemon holds: memory-bound tests measure
        # the latter. A later option in the string wins.
        env["ASAN_OPTIONS"] = (env.get("ASAN_OPTIONS", "detect_leaks=1") +
                               ":quarantine_size_mb=16")
        env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1")
        env.pop("JOURNAL_STREAM", None)
        if journal:
            st = os.fstat(self._log.fileno())
            env["JOURNAL_STREAM"] = "%d:%d" % (st.st_dev, st.st_ino)
        # Started as root, kgated switches to --user (default kgate, which
        # a test machine may lack): tests keep root explicitly unless they
        # test the switch themselves.
        if os.geteuid() == 0 and not prefix and "--user" not in extra_args:
            extra_args = ("--user", "root", *extra_args)
        self.proc = subprocess.Popen(
            [*prefix, exe, "--config", self.config_path, *extra_args],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log,
            env=env)
        self.pid = self.proc.pid
        self.retired = []  # processes an upgrade replaced (they drain and exit)

    def upgrade(self, timeout=READY_TIMEOUT * 3):
        """SIGUSR2; returns once the new process took over (self.pid is
        then the new one) — the old one drains in the background and
        check_retired() waits for it. Needs become_subreaper()."""
        before = self.count_event("upgrade.took_over")
        failed = self.count_event("upgrade.failed")
        old = self.proc
        os.kill(self.pid, signal.SIGUSR2)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            evs = self.events("upgrade.took_over")
            if len(evs) > before:
                new = int(self.events("upgrade.handed_over")[-1]["pid"])
                self.retired.append(old)
                self.proc = PidProc(new)
                self.pid = new
                return evs[-1]
            if self.count_event("upgrade.failed") > failed:
                raise AssertionError("upgrade failed: %s"
                                     % self.events("upgrade.failed")[-1])
            time.sleep(0.02)
        raise AssertionError("no upgrade within %.0f s; log:\n%s" % (timeout, self.log()))

    def check_retired(self, timeout=STOP_TIMEOUT + 5):
        """Every replaced process exited 0 (after its drain)."""
        for p in self.retired:
            try:
                rc = p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
                raise AssertionError("replaced kgated pid %d still ran %.0f s later"
                                     % (p.pid, timeout))
            assert rc in (0, PidProc.REAPED_ELSEWHERE), "replaced kgated pid %d exited %s" % (p.pid, rc)

    def log(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def events(self, event=None, **match):
        """The log's events (dicts of its key=value pairs, logfmt.py),
        those of one event id and with the given key values if asked;
        values compare as text. Lines that are not logfmt (a sanitizer
        report) are skipped here: problems() reports them."""
        out = []
        for line in self.log().splitlines():
            try:
                rec = logfmt.parse_line(line)
            except logfmt.LogfmtError:
                continue
            if event is not None and rec["event"] != event:
                continue
            if all(rec.get(k) == str(v) for k, v in match.items()):
                out.append(rec)
        return out

    def count_event(self, event, **match):
        return len(self.events(event, **match))

    def wait_event(self, event, min_count=1, timeout=5.0, **match):
        """The matching events once there are min_count of them, else []."""
        def enough():
            evs = self.events(event, **match)
            return evs if len(evs) >= min_count else None
        return wait_until(enough, timeout) or []

    def wait_ready(self, timeout=READY_TIMEOUT):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log()
            if self.events("kgated.ready"):
                for ev in self.events("listener.listening"):
                    self.ports[ev["listener"]] = int(ev["addr"].rsplit(":", 1)[1])
                return
            if self.proc.poll() is not None:
                raise AssertionError("kgated exited with %s before ready; log:\n%s"
                                     % (self.proc.returncode, text))
            time.sleep(0.02)
        raise AssertionError("kgated not ready after %.0f s; log:\n%s"
                             % (timeout, self.log()))

    @property
    def port(self):
        """The port of the only (or first) listener."""
        return next(iter(self.ports.values()))

    def alive(self):
        return self.proc.poll() is None

    def count_log(self, needle):
        return self.log().count(needle)

    def wait_log(self, needle, min_count=1, timeout=5.0):
        return wait_until(lambda: self.count_log(needle) >= min_count, timeout)

    def fd_count(self):
        return len(os.listdir("/proc/%d/fd" % self.pid))

    def rss_kib(self):
        with open("/proc/%d/status" % self.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise AssertionError("no VmRSS for pid %d" % self.pid)

    def terminate(self, timeout=STOP_TIMEOUT):
        """SIGTERM, wait up to timeout, then SIGKILL. Returns returncode."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                self.returncode = self.proc.returncode
                self._log.close()
                raise AssertionError("kgated did not exit %.0f s after SIGTERM"
                                     % timeout)
        self.returncode = self.proc.returncode
        self._log.close()
        return self.returncode

    def kill9(self):
        """SIGKILL (a crash, for persistence tests); not counted as a problem."""
        self.killed = True
        self.proc.kill()
        self.proc.wait()

    def problems(self):
        """Reasons this daemon's run counts as broken, for the teardown."""
        out = []
        if self.returncode is not None and self.returncode < 0 and not self.killed:
            out.append("died of signal %d" % -self.returncode)
        text = self.log()
        for marker in SANITIZER_MARKERS:
            if marker in text:
                out.append("log contains %r" % marker)
        if not any("log contains" in p for p in out):
            # Every line kgated writes is one logfmt event.
            try:
                logfmt.parse_log(_without_asan_stack_switch_note(text),
                                 journal=self.journal)
            except logfmt.LogfmtError as e:
                out.append("log is not logfmt: %s" % e)
        return out


# ASan's note, printed once, when a thread first runs on another stack:
# OCSP checks run handshakes in OpenSSL async jobs (makecontext/swapcontext,
# dataplane/ocsp.h). ASan's own errors are still caught above.
_ASAN_STACK_NOTE = re.compile(
    r"^==\d+==WARNING: ASan is ignoring requested __asan_handle_no_return: .*\n"
    r"False positive error reports may follow\n"
    r"For details see https://github.com/google/sanitizers/issues/189\n", re.M)


def _without_asan_stack_switch_note(text):
    return _ASAN_STACK_NOTE.sub("", text)


def _tail(text, lines=150):
    parts = text.splitlines()
    return "\n".join(parts[-lines:])


@pytest.fixture
def spawn_kgated(request, tmp_path):
    """spawn_kgated(config_dict, args=(), prefix=(), exe=KGATED) -> Daemon,
    ready, ports parsed; prefix is a command that execs kgated (Daemon);
    exe the kgated binary to run."""
    daemons = []
    request.node.kg_daemons = daemons

    def spawn(config, args=(), wait=True, prefix=(), journal=False, exe=KGATED):
        d = Daemon(config, str(tmp_path / ("kgated%d" % len(daemons))), args, prefix=prefix,
                   journal=journal, exe=exe)
        daemons.append(d)
        if wait:
            d.wait_ready()
        return d
    yield spawn
    errors = []
    for d in daemons:
        try:
            rc = d.terminate()
            if rc not in (0, None) and not d.killed:
                errors.append("kgated pid %d exited %d after SIGTERM" % (d.pid, rc))
            d.check_retired()
        except AssertionError as e:
            errors.append(str(e))
        errors += ["kgated pid %d: %s" % (d.pid, p) for p in d.problems()]
    if errors:
        logs = "\n".join("---- kgated pid %d log (tail) ----\n%s"
                         % (d.pid, _tail(d.log())) for d in daemons)
        pytest.fail("; ".join(errors) + "\n" + logs, pytrace=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call" and rep.failed:
        for d in getattr(item, "kg_daemons", []):
            rep.sections.append(("kgated pid %d log" % d.pid, _tail(d.log())))


# ctest's SKIP_RETURN_CODE (tests/integration/CMakeLists.txt).
SKIP_EXIT = 77
_ran = []  # node ids of tests that ran: passed or failed in a phase


def pytest_runtest_logreport(report):
    if report.failed or (report.when == "call" and report.passed):
        _ran.append(report.nodeid)


def pytest_sessionfinish(session, exitstatus):
    """A run in which no test ran (every one skipped, or none collected)
    exits 77, so ctest shows the suite as skipped, never as passed. Skips
    inside a suite that ran show in pytest's -rs summary."""
    if exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED) and not _ran:
        session.exitstatus = SKIP_EXIT


# --------------------------------------------------------------------------
# Clients
# --------------------------------------------------------------------------

def curl(pki, port, cert="client", extra=(), timeout=15):
    """curl https://localhost:PORT/ with a client cert; CompletedProcess."""
    cmd = ["curl", "-sS", "--max-time", "10", "--cacert", pki.ca,
           "--resolve", "localhost:%d:127.0.0.1" % port]
    if cert:
        cmd += ["--cert", pki.cert(cert), "--key", pki.key(cert)]
    cmd += [*extra, "https://localhost:%d/" % port]
    return run(cmd, check=False, timeout=timeout)


def https_resume(ctx, port, session=None, timeout=10):
    """One GET over a fresh Python ssl connection offering session: (the
    whole response, the client's (address, port), whether the session was
    reused, the session to offer next; in TLS 1.3 it comes with the data)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost", session=session) as s:
            client = s.getsockname()[:2]
            s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n"
                      b"Connection: close\r\n\r\n")
            data = b""
            while True:
                try:
                    chunk = s.recv(65536)
                except ssl.SSLEOFError:
                    break
                if not chunk:
                    break
                data += chunk
            return data, client, s.session_reused, s.session


def https_exchange(ctx, port, timeout=10):
    """One GET over a fresh Python ssl connection: (the whole response,
    the client's (address, port))."""
    data, client, _, _ = https_resume(ctx, port, timeout=timeout)
    return data, client


def https_get(ctx, port, timeout=10):
    """One GET over a fresh Python ssl connection; returns the body text."""
    data, _ = https_exchange(ctx, port, timeout)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), data[:200]
    return body.decode()


class EchoSession:
    """One TLS connection driven by run_echo_sessions (memory BIOs over a
    non-blocking socket, so reading and writing never deadlock)."""

    CHUNK = 65536
    OUT_LIMIT = 1 << 20

    def __init__(self, ctx, port, payload, half_close, expect_len=None):
        self.payload = memoryview(payload)
        self.sent = 0
        self.half_close = half_close
        self.expect_len = len(payload) if expect_len is None else expect_len
        self.rx_hash = hashlib.sha256()
        self.rx_len = 0
        self.error = None
        self.eof = None  # "close_notify" | "tcp" once the peer is done
        self.unwrapped = False
        self.handshaken = False
        self.raw_out = b""
        self.raw_eof = False
        self.inc, self.outb = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.inc, self.outb, server_hostname="localhost")
        self.sock = socket.socket()
        self.sock.setblocking(False)
        self.sock.connect_ex(("127.0.0.1", port))

    @property
    def done(self):
        # An early EOF ends the session too; the caller sees rx_len short.
        if self.error is not None or self.eof is not None:
            return True
        return not self.half_close and self.rx_len >= self.expect_len

    def _read_tls(self):
        while True:
            try:
                data = self.obj.read(self.CHUNK)
            except ssl.SSLWantReadError:
                return
            except ssl.SSLZeroReturnError:
                self.eof = "close_notify"
                return
            except ssl.SSLEOFError:
                self.eof = "tcp"
                return
            if not data:
                self.eof = "close_notify"
                return
            self.rx_hash.update(data)
            self.rx_len += len(data)

    def step(self):
        """Advances everything that can advance without blocking."""
        try:
            if not self.handshaken:
                try:
                    self.obj.do_handshake()
                    self.handshaken = True
                except ssl.SSLWantReadError:
                    pass
            if self.handshaken:
                self._read_tls()
                while (self.sent < len(self.payload)
                       and self.outb.pending + len(self.raw_out) < self.OUT_LIMIT):
                    end = min(self.sent + self.CHUNK, len(self.payload))
                    self.sent += self.obj.write(self.payload[self.sent:end])
                if (self.sent == len(self.payload) and self.half_close
                        and not self.unwrapped and self.eof is None):
                    # Drain complete records first: a second SSL_shutdown()
                    # would discard application data it finds.
                    self._read_tls()
                    self.unwrapped = True
                    try:
                        self.obj.unwrap()
                    except ssl.SSLWantReadError:
                        pass
                    self._read_tls()
            if self.raw_eof and self.eof is None and self.inc.pending == 0:
                self.eof = "tcp"
        except (ssl.SSLError, OSError) as e:
            self.error = e
        self.raw_out += self.outb.read()

    def on_readable(self):
        try:
            data = self.sock.recv(262144)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self.error = e
            return
        if data:
            self.inc.write(data)
        else:
            self.raw_eof = True
            self.inc.write_eof()

    def on_writable(self):
        if not self.raw_out:
            return
        try:
            n = self.sock.send(self.raw_out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self.error = e
            return
        self.raw_out = self.raw_out[n:]

    def events(self):
        ev = 0
        if not self.raw_eof:
            ev |= selectors.EVENT_READ
        if self.raw_out:
            ev |= selectors.EVENT_WRITE
        return ev


def run_echo_sessions(sessions, timeout):
    """Drives sessions until each is done or failed, or the deadline passes.
    Returns the sessions that did not finish in time."""
    sel = selectors.DefaultSelector()
    registered = {}
    deadline = time.monotonic() + timeout
    pending = list(sessions)
    try:
        while pending and time.monotonic() < deadline:
            for s in pending:
                s.step()
            still = []
            for s in pending:
                if s.done:
                    if s in registered:
                        sel.unregister(s.sock)
                        del registered[s]
                    continue
                still.append(s)
                ev = s.events()
                if ev == 0:
                    # Nothing to wait for from the socket: only local work.
                    if s in registered:
                        sel.unregister(s.sock)
                        del registered[s]
                    continue
                if s in registered:
                    if registered[s] != ev:
                        sel.modify(s.sock, ev, s)
                        registered[s] = ev
                else:
                    sel.register(s.sock, ev, s)
                    registered[s] = ev
            pending = still
            if not pending:
                break
            for key, ev in sel.select(timeout=0.2):
                s = key.data
                if ev & selectors.EVENT_WRITE:
                    s.on_writable()
                if ev & selectors.EVENT_READ:
                    s.on_readable()
        return [s for s in pending if not s.done]
    finally:
        sel.close()
        for s in sessions:
            s.sock.close()


def echo_exchange(sock, msg):
    """Sends msg and reads as many bytes back; returns what came (short on EOF)."""
    sock.sendall(msg)
    got = b""
    while len(got) < len(msg):
        chunk = sock.recv(len(msg) - len(got))
        if not chunk:
            break
        got += chunk
    return got


def tcp_closed_by_peer(sock, timeout):
    """True when the peer closes (EOF or reset) within timeout; the socket
    may receive some bytes (e.g. a TLS alert) before that."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        sock.settimeout(left)
        try:
            data = sock.recv(65536)
        except socket.timeout:
            return False
        except (ConnectionResetError, BrokenPipeError, ssl.SSLEOFError,
                ssl.SSLZeroReturnError):
            return True
        if not data:
            return True
