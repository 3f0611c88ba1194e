#!/usr/bin/python3
"""CI lane: build the .deb, install it into THIS machine, start the installed
service with the example configuration, check it serves, then purge it.

It installs a package system-wide and creates the kgate user, so it runs only
with CI=true (CI's fresh clone, as root) or with --really-install-on-this-
machine. Where systemd is PID 1 it uses systemctl; otherwise it runs the
installed unit's ExecStartPre/ExecStart the way the unit says: as its User=
and Group=, with its AmbientCapabilities= and CapabilityBoundingSet=,
no_new_privs, StateDirectory=/RuntimeDirectory= created for that user, and a
$NOTIFY_SOCKET that must receive READY=1 and, on SIGTERM, STOPPING=1.
Every process it starts it stops by PID. Exit 0 = passed.
"""
import glob
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.path.join(REPO, "build-deb")
UNIT = "/usr/lib/systemd/system/kgate.service"
CONF = "/etc/kgate/kgate.json"
READY_TIMEOUT = 20

sys.path.insert(0, os.path.join(REPO, "tests", "tools"))
from procstatus import CAP_NET_BIND_SERVICE, proc_status  # noqa: E402


def step(msg):
    print("==> " + msg, flush=True)


def run(cmd, check=True, **kw):
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kw)
    if check and res.returncode != 0:
        raise SystemExit("FAILED (rc %d): %s\n%s%s" % (res.returncode, " ".join(cmd),
                                                      res.stdout, res.stderr))
    return res


def build_deb():
    step("build the .deb (Release, prefix /usr)")
    run([os.path.join(REPO, "tests", "install-deps.sh"), "package"])
    run(["cmake", "-S", REPO, "-B", BUILD, "-DCMAKE_BUILD_TYPE=Release",
         "-DCMAKE_INSTALL_PREFIX=/usr", "-DKG_BUILD_TESTS=OFF"])
    run(["cmake", "--build", BUILD, "-j%d" % (os.cpu_count() or 1)])
    for old in glob.glob(os.path.join(BUILD, "kgate_*.deb")):
        os.unlink(old)
    run(["cpack", "-G", "DEB"], cwd=BUILD)
    debs = glob.glob(os.path.join(BUILD, "kgate_*.deb"))
    assert len(debs) == 1, debs
    info = run(["dpkg-deb", "-I", debs[0]]).stdout
    for dep in ("libssl3", "liburing2", "libjson-c5", "libcap2", "passwd"):
        assert dep in info, "Depends lacks %s:\n%s" % (dep, info)
    assert "conffiles" in info, info
    return debs[0]


def unit_settings(path):
    """The [Service] keys of a unit file: key -> list of values."""
    out = {}
    section = None
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("["):
                section = line
                continue
            if section == "[Service]":
                key, _, val = line.partition("=")
                out.setdefault(key, []).append(val)
    return out


class Backends:
    """The two backends the example configuration names (9001, 9002)."""

    def __init__(self):
        self.procs = []
        tool = os.path.join(REPO, "tests", "tools", "http_backend.py")
        for name, port in (("one", 9001), ("two", 9002)):
            p = subprocess.Popen(["/usr/bin/python3", tool, "--name", name, "--port",
                                  str(port)], stdout=subprocess.PIPE, text=True)
            self.procs.append(p)
            line = p.stdout.readline()
            if "listening on" not in line:
                raise SystemExit("backend %s on 127.0.0.1:%d did not start: %r"
                                 % (name, port, line))

    def stop(self):
        for p in self.procs:
            p.terminate()
            p.wait(10)


class Notify:
    """A $NOTIFY_SOCKET that records what kgated sends."""

    def __init__(self, folder, owner):
        self.path = os.path.join(folder, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        os.chown(self.path, owner.pw_uid, owner.pw_gid)
        self.messages = []

    def wait_for(self, what, timeout):
        deadline = time.monotonic() + timeout
        while what not in self.messages:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.sock.settimeout(left)
            try:
                self.messages += self.sock.recv(4096).decode().split("\n")
            except socket.timeout:
                return False
        return True


def setpriv_prefix(svc, user):
    caps = ",".join("+" + c.lower().removeprefix("cap_")
                    for c in " ".join(svc["AmbientCapabilities"]).split())
    bound = ",".join("+" + c.lower().removeprefix("cap_")
                     for c in " ".join(svc["CapabilityBoundingSet"]).split())
    assert svc["NoNewPrivileges"] == ["yes"], svc["NoNewPrivileges"]
    return ["setpriv", "--reuid=%d" % user.pw_uid, "--regid=%d" % user.pw_gid,
            "--init-groups", "--inh-caps=" + caps, "--ambient-caps=" + caps,
            "--bounding-set=-all," + bound, "--no-new-privs", "--"]


def service_dirs(svc, user):
    for key, base in (("StateDirectory", "/var/lib"), ("RuntimeDirectory", "/run")):
        mode = int(svc.get(key + "Mode", ["0755"])[0], 8)
        for name in svc.get(key, []):
            path = os.path.join(base, name)
            os.makedirs(path, exist_ok=True)
            os.chown(path, user.pw_uid, user.pw_gid)
            os.chmod(path, mode)


def check_serves(work):
    step("a client certificate from the demo CA; curl through kgated")
    out = os.path.join(work, "alice")
    run(["/usr/bin/kgatectl", "ca", "issue", "--dir", "/etc/kgate/tls/ca", "--type",
         "client", "--subject", "/O=kgate demo/CN=alice", "--days", "2", "--out", out])
    seen = set()
    for _ in range(4):
        res = run(["curl", "-sS", "--max-time", "10", "--cacert", "/etc/kgate/tls/ca/ca.pem",
                   "--cert", out + ".pem", "--key", out + ".key",
                   "https://localhost:8443/"])
        seen.add(res.stdout.strip())
    assert seen == {"backend=one", "backend=two"}, seen
    res = run(["curl", "-sS", "--max-time", "10", "--cacert", "/etc/kgate/tls/ca/ca.pem",
               "https://localhost:8443/"], check=False)
    assert res.returncode != 0, "a client without a certificate was served"


def check_control(pid):
    """The unit's --state-dir: the example configuration seeded the state,
    and kgatectl's default socket is the one the service serves."""
    step("state seeded; kgatectl through its default socket")
    assert os.path.exists("/var/lib/kgate/state.json"), os.listdir("/var/lib/kgate")
    env = {k: v for k, v in os.environ.items() if k != "KGATE_SOCKET"}
    st = json.loads(run(["/usr/bin/kgatectl", "-o", "json", "status"], env=env).stdout)
    assert st["pid"] == pid, st
    lst = json.loads(run(["/usr/bin/kgatectl", "-o", "json", "listener", "list"],
                         env=env).stdout)
    assert [(l["name"], l["state"]) for l in lst] == [("web", "running")], lst


def start_direct(svc, work):
    """The unit's commands, as the unit would run them, without systemd."""
    user = pwd.getpwnam(svc["User"][0])
    assert svc["Group"] == [svc["User"][0]]
    service_dirs(svc, user)
    prefix = setpriv_prefix(svc, user)
    for pre in svc.get("ExecStartPre", []):
        step("ExecStartPre as %s: %s" % (user.pw_name, pre))
        run(prefix + shlex.split(pre), cwd="/")
    cmd = shlex.split(svc["ExecStart"][0])
    assert cmd[0] == "/usr/sbin/kgated", cmd
    step("ExecStart as %s with %s: %s" % (user.pw_name, svc["AmbientCapabilities"][0],
                                          " ".join(cmd)))
    os.chmod(work, 0o755)
    notify = Notify(work, user)
    log = open(os.path.join(work, "kgated.log"), "w")
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "NOTIFY_SOCKET": notify.path}
    proc = subprocess.Popen(prefix + cmd, stdout=log, stderr=log, cwd="/", env=env,
                            stdin=subprocess.DEVNULL)
    return proc, notify, log, user


def stop_direct(proc, notify):
    proc.send_signal(signal.SIGTERM)
    assert notify.wait_for("STOPPING=1", 10), notify.messages
    rc = proc.wait(30)
    assert rc == 0, "kgated exited %d after SIGTERM" % rc


def test_installed(work):
    step("installed files")
    for path in ("/usr/sbin/kgated", "/usr/bin/kgatectl", UNIT, CONF,
                 "/usr/share/man/man8/kgated.8.gz", "/usr/share/man/man8/kgatectl.8.gz",
                 "/usr/share/man/man5/kgate.json.5.gz",
                 "/usr/share/bash-completion/completions/kgatectl",
                 "/etc/kgate/tls/server.pem", "/etc/kgate/tls/server.key"):
        assert os.path.exists(path), path
    user = pwd.getpwnam("kgate")
    assert user.pw_shell == "/usr/sbin/nologin", user
    st = os.stat("/etc/kgate/tls/server.key")
    assert (st.st_mode & 0o777, st.st_gid) == (0o640, user.pw_gid), st
    man = [] if shutil.which("man") else ["--man=no"]
    run(["systemd-analyze", "verify", *man, UNIT])
    res = run(["systemd-analyze", "security", "--offline=yes", UNIT], check=False)
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", res.stdout + res.stderr)
    assert m, res.stdout + res.stderr
    step("systemd-analyze security: exposure %s" % m.group(1))
    run(["/usr/sbin/kgated", "--check", "--config", CONF])

    backends = Backends()
    try:
        svc = unit_settings(UNIT)
        if os.path.isdir("/run/systemd/system"):
            step("systemd is PID 1: systemctl start kgate")
            run(["systemctl", "start", "kgate"])
            pid = int(run(["systemctl", "show", "-p", "MainPID", "--value", "kgate"]).stdout)
            check_running(pid, pwd.getpwnam("kgate"))
            check_control(pid)
            check_serves(work)
            run(["systemctl", "stop", "kgate"])
        else:
            step("systemd is not PID 1: running the unit's commands directly")
            proc, notify, log, user = start_direct(svc, work)
            try:
                if not notify.wait_for("READY=1", READY_TIMEOUT):
                    raise SystemExit("no READY=1 within %d s; log:\n%s"
                                     % (READY_TIMEOUT, open(log.name).read()))
                check_running(proc.pid, user)
                check_control(proc.pid)
                check_serves(work)
                stop_direct(proc, notify)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                log.close()
                print(open(log.name).read(), end="")
    finally:
        backends.stop()


def check_running(pid, user):
    st = proc_status(pid)
    step("kgated pid %d: Uid %s, CapEff %s, CapPrm %s, CapBnd %s, CapAmb %s"
         % (pid, st["Uid"][0], st["CapEff"][0], st["CapPrm"][0], st["CapBnd"][0],
            st["CapAmb"][0]))
    assert [int(x) for x in st["Uid"]] == [user.pw_uid] * 4, st["Uid"]
    assert [int(x) for x in st["Gid"]] == [user.pw_gid] * 4, st["Gid"]
    for key in ("CapEff", "CapPrm", "CapBnd"):
        assert int(st[key][0], 16) == CAP_NET_BIND_SERVICE, (key, st[key])
    for key in ("CapInh", "CapAmb"):
        assert int(st[key][0], 16) == 0, (key, st[key])
    assert st["NoNewPrivs"] == ["1"]


def purge():
    step("apt-get purge kgate")
    run(["apt-get", "purge", "-y", "-qq", "kgate"], env=dict(os.environ,
                                                             DEBIAN_FRONTEND="noninteractive"))
    for path in ("/usr/sbin/kgated", "/usr/bin/kgatectl", UNIT, "/etc/kgate", "/var/lib/kgate"):
        assert not os.path.exists(path), "left after purge: " + path


def main():
    if os.environ.get("CI") != "true" and "--really-install-on-this-machine" not in sys.argv:
        print("test_deb: installs a package system-wide; runs with CI=true only "
              "(or --really-install-on-this-machine)")
        return 0
    if os.geteuid() != 0:
        raise SystemExit("test_deb: needs root")
    if run(["dpkg-query", "-W", "-f=${Status}", "kgate"], check=False).stdout.startswith(
            "install ok"):
        raise SystemExit("test_deb: a kgate package is installed already; not touching it")
    deb = build_deb()
    step("apt-get install %s" % os.path.relpath(deb, REPO))
    run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", deb],
        env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
    work = tempfile.mkdtemp(prefix="kgate-deb-")
    try:
        test_installed(work)
    finally:
        purge()
        shutil.rmtree(work, ignore_errors=True)
    step("package test passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
