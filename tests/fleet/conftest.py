"""The fleet lane's network: network namespaces built here, torn down here.

    client 10.77.1.2 ── 10.77.1.1 router (BIRD 2, kernel ECMP, L4 hash)
                                 10.77.0.1 on br0 (a bridge: the "switch")
               ┌───────────┬────────┴──┬───────────┬───────────┐
            inst1       inst2       inst3        back1       back2
          .11 (eth0)   .12         .13          .21:8080    .22:8080
          kgated + kgate-anycast + BIRD 2       http_backend.py --peer

The anycast address 10.77.100.10/32 is on each instance's lo (so it
accepts) and, while its kgated's /ready answers 200, on its kgate0, which
BIRD exports to the router over BGP with BFD. Backends are their own
namespaces; each answers "backend=NAME peer=IP", IP naming the instance
that forwarded the request. Every address is private and lives only in
these namespaces; every namespace and process is removed or stopped by
name or PID at the end (an interrupted run leaves namespaces named
kgf<PID>-*, removed by the next run of tests/fleet/run).

Binaries come from $KG_BUILD_DIR (default build-asan in the checkout)."""
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time

import pytest

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD_DIR = os.environ.get("KG_BUILD_DIR", os.path.join(REPO, "build-asan"))
KGATED = os.path.join(BUILD_DIR, "dataplane", "kgated")
KGATECTL = os.path.join(BUILD_DIR, "ctl", "kgatectl")
ANNOUNCER = os.path.join(REPO, "packaging", "kgate-anycast")
BIRD_EXAMPLES = os.path.join(REPO, "packaging", "bird")
BACKEND = os.path.join(REPO, "tests", "tools", "http_backend.py")
CLIENT = os.path.join(os.path.dirname(__file__), "fleet_client.py")

VIP = "10.77.100.10"
PORT = 8443
ROUTER = "10.77.0.1"
INSTANCES = {"inst1": "10.77.0.11", "inst2": "10.77.0.12", "inst3": "10.77.0.13"}
BACKENDS = {"back1": "10.77.0.21", "back2": "10.77.0.22"}
# The store (test_store_fleet.py): an etcd cluster of three members.
ETCDS = {"etcd1": "10.77.0.31", "etcd2": "10.77.0.32", "etcd3": "10.77.0.33"}
PREFIX = "/kgate"
STORE_URL = "etcd://" + ",".join("%s:2379" % a for a in ETCDS.values()) + PREFIX
CLIENT_ADDR, CLIENT_GW = "10.77.1.2", "10.77.1.1"
METRICS = "127.0.0.1:9190"
WITHDRAW_DELAY_MS = 2000


def say(text):
    """A figure for the report: lines start with '==> '."""
    print("==> " + text, flush=True)


def sh(*cmd, check=True, timeout=30):
    res = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise AssertionError("%s: rc %d: %s" % (" ".join(cmd), res.returncode, res.stderr))
    return res


def wait_until(pred, timeout, interval=0.02):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() > deadline:
            return v
        time.sleep(interval)


class Proc:
    """A process started in a namespace with `ip netns exec`, which execs
    it: the PID is the program's own, stopped by that PID."""

    def __init__(self, ns, cmd, log_path, env=None):
        self.log_path = log_path
        self._log = open(log_path, "a")
        self.p = subprocess.Popen(["ip", "netns", "exec", ns, *cmd], stdin=subprocess.DEVNULL,
                                  stdout=self._log, stderr=self._log, env=env)
        self.pid = self.p.pid

    def alive(self):
        return self.p.poll() is None

    def signal(self, sig):
        if self.alive():
            os.kill(self.pid, sig)

    def stop(self, timeout=10, again_after=None):
        """SIGTERM (a second one again_after seconds later: kgated then
        skips the rest of its withdraw delay), then SIGKILL after timeout.
        The exit status."""
        if self.alive():
            self.p.send_signal(signal.SIGTERM)
            if again_after is not None:
                try:
                    self.p.wait(again_after)
                except subprocess.TimeoutExpired:
                    self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(5)
        self._log.close()
        return self.p.returncode

    def log(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()


class RouteWatch:
    """Polls the router's route to the anycast address every 20 ms and
    records each change: [(monotonic time, frozenset of next hops)]."""

    def __init__(self, fleet):
        self.fleet = fleet
        self.changes = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        last = None
        while not self._stop.is_set():
            hops = self.fleet.next_hops()
            if hops != last:
                self.changes.append((time.monotonic(), hops))
                last = hops
            self._stop.wait(0.02)

    def first_without(self, gw, after):
        for t, hops in self.changes:
            if t >= after and gw not in hops:
                return t
        return None

    def stop(self):
        self._stop.set()
        self._t.join(5)


class Fleet:
    def __init__(self, tmp):
        self.tmp = tmp
        self.prefix = "kgf%d-" % os.getpid()
        self.namespaces = []
        self.procs = []
        self.kgated = {}
        self.announcers = {}
        self.birds = {}
        self.etcds = {}
        self.kek = None

    def ns(self, role):
        return self.prefix + role

    def netns_add(self, role):
        sh("ip", "netns", "add", self.ns(role))
        self.namespaces.append(self.ns(role))
        sh("ip", "-n", self.ns(role), "link", "set", "lo", "up")

    def nsexec(self, role, *cmd, check=True):
        return sh("ip", "netns", "exec", self.ns(role), *cmd, check=check)

    def start(self, role, cmd, log_name, env=None):
        p = Proc(self.ns(role), cmd, os.path.join(self.tmp, log_name), env=env)
        self.procs.append(p)
        return p

    # ---- network -------------------------------------------------------

    def build_network(self):
        r = self.ns("router")
        self.netns_add("router")
        sh("ip", "-n", r, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", r, "addr", "add", ROUTER + "/24", "dev", "br0")
        sh("ip", "-n", r, "link", "set", "br0", "up")
        for role, addr in {**INSTANCES, **BACKENDS, **ETCDS}.items():
            self.netns_add(role)
            sh("ip", "-n", r, "link", "add", "v-" + role, "type", "veth", "peer", "name", "eth0",
               "netns", self.ns(role))
            sh("ip", "-n", r, "link", "set", "v-" + role, "master", "br0", "up")
            sh("ip", "-n", self.ns(role), "addr", "add", addr + "/24", "dev", "eth0")
            sh("ip", "-n", self.ns(role), "link", "set", "eth0", "up")
            sh("ip", "-n", self.ns(role), "route", "add", "default", "via", ROUTER)
        self.netns_add("client")
        sh("ip", "-n", r, "link", "add", "v-client", "type", "veth", "peer", "name", "eth0",
           "netns", self.ns("client"))
        sh("ip", "-n", r, "addr", "add", CLIENT_GW + "/24", "dev", "v-client")
        sh("ip", "-n", r, "link", "set", "v-client", "up")
        sh("ip", "-n", self.ns("client"), "addr", "add", CLIENT_ADDR + "/24", "dev", "eth0")
        sh("ip", "-n", self.ns("client"), "link", "set", "eth0", "up")
        sh("ip", "-n", self.ns("client"), "route", "add", "default", "via", CLIENT_GW)
        # The router forwards, and hashes flows by addresses and ports:
        # without policy 1 every connection of the one client address
        # would go to the same instance.
        self.nsexec("router", "sysctl", "-qw", "net.ipv4.ip_forward=1")
        self.nsexec("router", "sysctl", "-qw", "net.ipv4.fib_multipath_hash_policy=1")

    # ---- programs ------------------------------------------------------

    def build_pki(self):
        d = os.path.join(self.tmp, "pki")
        ca = os.path.join(d, "ca")
        os.makedirs(d)
        sh(KGATECTL, "ca", "init", "--dir", ca, "--subject", "/O=kgate fleet/CN=fleet CA",
           "--days", "2")
        sh(KGATECTL, "ca", "issue", "--dir", ca, "--type", "server", "--subject",
           "/O=kgate fleet/CN=localhost", "--san", "DNS:localhost,IP:" + VIP, "--days", "2",
           "--out", os.path.join(d, "server"))
        sh(KGATECTL, "ca", "issue", "--dir", ca, "--type", "client", "--subject",
           "/O=kgate fleet/CN=client", "--days", "2", "--out", os.path.join(d, "client"))
        # etcd runs with client-certificate auth: each member gets a peer
        # certificate (server and client use), kgated and kgatectl a client one.
        for role, addr in ETCDS.items():
            sh(KGATECTL, "ca", "issue", "--dir", ca, "--type", "peer", "--subject",
               "/O=kgate fleet/CN=" + role, "--san", "IP:" + addr, "--days", "2",
               "--out", os.path.join(d, role))
        sh(KGATECTL, "ca", "issue", "--dir", ca, "--type", "client", "--subject",
           "/O=kgate fleet/CN=store client", "--days", "2", "--out", os.path.join(d, "store"))
        self.store_tls = ["--store-ca", os.path.join(ca, "ca.pem"),
                          "--store-cert", os.path.join(d, "store.pem"),
                          "--store-key", os.path.join(d, "store.key")]
        self.pki = {"ca": os.path.join(ca, "ca.pem"),
                    "server": os.path.join(d, "server.pem"), "server_key": os.path.join(d, "server.key"),
                    "client": os.path.join(d, "client.pem"), "client_key": os.path.join(d, "client.key")}

    def start_backends(self):
        for role in BACKENDS:
            self.start(role, ["/usr/bin/python3", BACKEND, "--name", role, "--bind", "0.0.0.0",
                              "--port", "8080", "--peer"], role + ".log")

    def kgated_config(self, withdraw_ms):
        return {
            "settings": {"workers": 1, "drain_timeout_ms": 5000,
                         "withdraw_delay_ms": withdraw_ms, "log_level": "notice"},
            "certificates": {
                "web": {"type": "server", "cert": self.pki["server"], "key": self.pki["server_key"]},
                "clients": {"type": "ca", "cert": self.pki["ca"]}},
            # 0.0.0.0: the anycast address is on lo, and connections to it
            # must be served even while it is not announced (the withdraw).
            "listeners": [{"name": "web", "protocol": "https", "bind": "0.0.0.0", "port": PORT,
                           "certificate": "web", "ca": "clients", "mutual_auth": "required",
                           "backends": [{"address": "%s:8080" % a} for a in BACKENDS.values()]}]}

    def start_kgated(self, role, withdraw_ms=WITHDRAW_DELAY_MS):
        """kgated in the instance's namespace, its state dir seeded from
        the configuration at every start (--reseed: a case may change it)."""
        d = os.path.join(self.tmp, role)
        os.makedirs(d, exist_ok=True)
        cfg = os.path.join(d, "kgated.json")
        with open(cfg, "w") as f:
            json.dump(self.kgated_config(withdraw_ms), f, indent=1)
        env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:quarantine_size_mb=16")
        self.kgated[role] = self.start(role, [KGATED, "--config", cfg, "--state-dir",
                                              os.path.join(d, "state"), "--reseed", "--user",
                                              "root", "--metrics", METRICS],
                                       role + "-kgated.log", env=env)
        self.kgated[role].withdraw_ms = withdraw_ms

    def start_announcer(self, role):
        self.announcers[role] = self.start(role, ["/bin/sh", ANNOUNCER, "--address", VIP + "/32",
                                                  "--url", "http://%s/ready" % METRICS],
                                           role + "-anycast.log")

    def bird_conf(self, role, name, subs):
        """A shipped example with the lane's addresses put in."""
        with open(os.path.join(BIRD_EXAMPLES, name)) as f:
            text = f.read()
        for a, b in subs:
            assert a in text, (name, a)
            text = text.replace(a, b)
        path = os.path.join(self.tmp, "%s-bird.conf" % role)
        with open(path, "w") as f:
            f.write(text)
        return path

    def start_bird(self, role, conf):
        ctl = os.path.join(self.tmp, role + "-bird.ctl")
        self.birds[role] = self.start(role, ["bird", "-f", "-c", conf, "-s", ctl],
                                      role + "-bird.log")

    def start_all(self):
        self.build_pki()
        self.start_backends()
        for role, addr in INSTANCES.items():
            self.start_kgated(role)
            self.start_announcer(role)
            conf = self.bird_conf(role, "instance.conf", [("198.51.100.11", addr),
                                                    ("198.51.100.1 ", ROUTER + " "),
                                                    ("192.0.2.10/32", VIP + "/32")])
            self.start_bird(role, conf)
        subs = [("198.51.100.1 ", ROUTER + " "), ("198.51.100.1;", ROUTER + ";"),
                ('"eth0"', '"br0"'), ("192.0.2.10/32", VIP + "/32")]
        subs += [("198.51.100.1%d" % (n + 1), a) for n, a in enumerate(INSTANCES.values())]
        self.start_bird("router", self.bird_conf("router", "router.conf", subs))

    # ---- the store -----------------------------------------------------

    def start_etcd(self, role):
        """One member of the three-member cluster, with its data kept across
        a stop and start (an outage, not a new member). Clients must show a
        certificate from the fleet's CA (kgatectl ca issue)."""
        addr = ETCDS[role]
        d = os.path.join(self.tmp, "pki")
        cluster = ",".join("%s=http://%s:2380" % (r, a) for r, a in ETCDS.items())
        self.etcds[role] = self.start(role, [
            "etcd", "--name", role, "--data-dir", os.path.join(self.tmp, role + "-data"),
            "--listen-client-urls", "https://%s:2379" % addr,
            "--advertise-client-urls", "https://%s:2379" % addr,
            "--cert-file", os.path.join(d, role + ".pem"),
            "--key-file", os.path.join(d, role + ".key"),
            "--trusted-ca-file", self.pki["ca"], "--client-cert-auth",
            "--listen-peer-urls", "http://%s:2380" % addr,
            "--initial-advertise-peer-urls", "http://%s:2380" % addr,
            "--initial-cluster", cluster, "--initial-cluster-token", self.prefix + "etcd",
            "--initial-cluster-state", "new"], role + ".log")

    def etcd_healthy(self, role):
        d = os.path.join(self.tmp, "pki")
        res = self.nsexec(role, "curl", "-s", "--max-time", "1", "--cacert", self.pki["ca"],
                          "--cert", os.path.join(d, "store.pem"), "--key",
                          os.path.join(d, "store.key"), "https://%s:2379/health" % ETCDS[role],
                          check=False)
        return '"health":"true"' in res.stdout

    def stop_etcd(self, role):
        self.etcds[role].stop()

    def make_kek(self):
        self.kek = os.path.join(self.tmp, "kek")
        with open(self.kek, "w") as f:
            f.write(sh("openssl", "rand", "-hex", "32").stdout)
        os.chmod(self.kek, 0o600)

    def ctl_store(self, *args, check=True, timeout=30):
        """kgatectl --store from the client's namespace (an operator's
        machine, reaching etcd through the router)."""
        return sh("ip", "netns", "exec", self.ns("client"), KGATECTL, "--store", STORE_URL,
                  "--store-kek", self.kek, *self.store_tls, *args, check=check, timeout=timeout)

    def start_kgated_store(self, role, kek=None, state="store-state"):
        """kgated in store mode: its state is the store's, cached in its
        own state dir (kept across restarts: the cache)."""
        if kek is None and role in self.kgated and self.kgated[role].alive():
            self.kgated[role].stop(again_after=0.2)
        d = os.path.join(self.tmp, role)
        os.makedirs(d, exist_ok=True)
        env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:quarantine_size_mb=16")
        p = self.start(role, [KGATED, "--store", STORE_URL, "--store-kek", kek or self.kek,
                              *self.store_tls, "--state-dir", os.path.join(d, state), "--instance-id", role,
                              "--user", "root", "--metrics", METRICS],
                       "%s-kgated-%s.log" % (role, state), env=env)
        p.withdraw_ms = WITHDRAW_DELAY_MS
        p.sock = os.path.join(d, state, "control.sock")
        if kek is None:
            self.kgated[role] = p
        return p

    def instance_status(self, role):
        res = sh(KGATECTL, "--socket", self.kgated[role].sock, "-o", "json", "status",
                 check=False)
        return json.loads(res.stdout) if res.returncode == 0 else None

    # ---- state ---------------------------------------------------------

    def next_hops(self):
        res = sh("ip", "-n", self.ns("router"), "-j", "route", "show", VIP, check=False)
        if res.returncode != 0 or not res.stdout.strip():
            return frozenset()
        hops = set()
        for route in json.loads(res.stdout):
            if "gateway" in route:
                hops.add(route["gateway"])
            for nh in route.get("nexthops", []):
                hops.add(nh["gateway"])
        return frozenset(hops)

    def wait_all_announced(self, timeout=45):
        want = frozenset(INSTANCES.values())
        if not wait_until(lambda: self.next_hops() == want, timeout, 0.1):
            raise AssertionError("router's route to %s: %s, not all of %s after %d s\n%s"
                                 % (VIP, sorted(self.next_hops()), sorted(want), timeout,
                                    self.diagnostics()))

    def heal(self, withdraw_ms=WITHDRAW_DELAY_MS):
        """Every instance serving (with this withdraw delay) and announced,
        after a case stopped one."""
        for role in INSTANCES:
            self.nsexec(role, "ip", "link", "set", "eth0", "up")
            # A link that went down took its routes with it (IPv4 flushes
            # them): without the default route the host cannot answer.
            self.nsexec(role, "ip", "route", "replace", "default", "via", ROUTER)
            if self.kgated[role].alive() and self.kgated[role].withdraw_ms != withdraw_ms:
                self.kgated[role].stop(again_after=0.2)
            if not self.kgated[role].alive():
                self.start_kgated(role, withdraw_ms)
        self.wait_all_announced()

    def client(self, out, *args):
        return self.start("client", ["/usr/bin/python3", CLIENT, "--vip", VIP, "--port", str(PORT),
                                     "--ca", self.pki["ca"], "--cert", self.pki["client"],
                                     "--key", self.pki["client_key"], "--out", out, *args],
                          "client.log")

    def diagnostics(self):
        out = [sh("ip", "-n", self.ns("router"), "route", check=False).stdout]
        for role in [*INSTANCES, "router"]:
            ctl = os.path.join(self.tmp, role + "-bird.ctl")
            out.append(sh("birdc", "-s", ctl, "show", "protocols", check=False).stdout)
        for p in self.procs:
            if p.log_path.endswith(("-anycast.log", "-bird.log")):
                out.append("---- %s\n%s" % (os.path.basename(p.log_path), p.log()[-2000:]))
        return "\n".join(out)

    def teardown(self):
        problems = []
        for p in reversed(self.procs):
            rc = p.stop(again_after=0.2 if p in self.kgated.values() else None)
            if rc is not None and rc < 0 and rc not in (-signal.SIGKILL, -signal.SIGTERM):
                problems.append("%s died of signal %d" % (p.log_path, -rc))
        for name in reversed(self.namespaces):
            sh("ip", "netns", "del", name, check=False)
        return problems


def remove_stale_namespaces():
    """Namespaces an interrupted run left (their PID no longer runs)."""
    res = sh("ip", "netns", "list", check=False)
    for line in res.stdout.splitlines():
        name = line.split()[0] if line.strip() else ""
        if name.startswith("kgf") and "-" in name:
            pid = name[3:].split("-", 1)[0]
            if pid.isdigit() and not os.path.exists("/proc/%s" % pid):
                sh("ip", "netns", "del", name, check=False)


@pytest.fixture(scope="session")
def fleet():
    if os.geteuid() != 0:
        pytest.skip("the fleet lane needs root (network namespaces)")
    for tool in ("bird", "birdc", "curl", "ip"):
        if not shutil.which(tool):
            pytest.skip("%s not installed (tests/install-deps.sh fleet)" % tool)
    for exe in (KGATED, KGATECTL):
        if not os.access(exe, os.X_OK):
            pytest.fail("%s not found (set KG_BUILD_DIR)" % exe)
    remove_stale_namespaces()
    tmp = tempfile.mkdtemp(prefix="kgate-fleet-")
    f = Fleet(tmp)
    t0 = time.monotonic()
    try:
        f.build_network()
        f.start_all()
        f.wait_all_announced()
        say("fleet up: 3 instances announced in %.1f s (namespaces, BIRD, kgated, announcers)"
            % (time.monotonic() - t0))
        yield f
    finally:
        problems = f.teardown()
        # Sanitizer reports in any kgated log fail the lane.
        for p in f.procs:
            text = p.log()
            for marker in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:"):
                if marker in text:
                    problems.append("%s contains %r" % (p.log_path, marker))
        if problems or os.environ.get("KG_FLEET_KEEP"):
            print("fleet logs kept in %s" % tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
        assert not problems, problems
