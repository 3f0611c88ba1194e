"""A real systemd for the .deb lane on a machine whose PID 1 is not systemd:
systemd-nspawn boots a container on a throwaway overlay of this machine's
root file system (so it sees the kgate package the lane has just installed,
and what it changes stays in a tmpfs), with a private network.

    with Container(console_log) as ct:
        ct.run(["systemctl", "start", "kgate"])

How, and why each step:
- nspawn refuses --directory=/, so the container's root is an overlay
  (lowerdir=/, upper and work on a tmpfs), mounted in a private mount
  namespace (unshare --mount --propagation private): the mounts die with
  the namespace's last process, nspawn.
- Without a systemd on the host nobody gives nspawn a cgroup: the launcher
  is moved into kgate-nspawn.<pid> in the name=systemd and unified
  hierarchies (hybrid v1/v2) or in the v2 root, and the folders are
  removed after the container is gone.
- nspawn keeps lock folders in /run/systemd/nspawn: where /run is not a
  tmpfs, the namespace gets a private one.
- Commands run in the container's namespaces through nsenter with bare
  --root/--wd (the target's own root and cwd; a value would be opened on
  the host before entering). They stay in this process's cgroup, and the
  kernel ends them with the container's PID 1 at the latest.
- Power off is SIGRTMIN+4 to the container's PID 1; SIGKILL to it (which
  ends its whole PID namespace) when it has not stopped in time.
Every process this module starts is stopped by its PID, with a timeout.
"""
import os
import shutil
import signal
import subprocess
import tempfile
import time

TOOLS = ("systemd-nspawn", "unshare", "nsenter")
BOOT_TIMEOUT = 60
POWEROFF_TIMEOUT = 30
ENV = ["env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"]

# Runs in the private mount namespace: $1 = a host folder for the tmpfs,
# then nspawn's arguments. exec: nspawn is the launcher's PID.
LAUNCH = r"""
work=$1; shift
mount -t tmpfs -o mode=0755 kgate-nspawn "$work"
mkdir "$work/upper" "$work/work" "$work/root"
mount -t overlay -o lowerdir=/,upperdir="$work/upper",workdir="$work/work" \
	kgate-nspawn-root "$work/root"
[ "$(stat -f -c %T /run)" = tmpfs ] || mount -t tmpfs -o mode=0755 kgate-nspawn-run /run
exec systemd-nspawn --directory="$work/root" "$@"
"""


def cgroup_hierarchies():
    """The hierarchies nspawn needs a cgroup in: the v2 root, or on a
    hybrid host the v1 name=systemd one and the unified one."""
    if os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
        return ["/sys/fs/cgroup"]
    return [h for h in ("/sys/fs/cgroup/systemd", "/sys/fs/cgroup/unified")
            if os.path.exists(os.path.join(h, "cgroup.procs"))]


def unavailable():
    """Why a container cannot be booted here, or None."""
    if os.geteuid() != 0:
        return "needs root"
    missing = [t for t in TOOLS if not shutil.which(t)]
    if missing:
        return "%s missing (tests/install-deps.sh package)" % " ".join(missing)
    if os.path.isdir("/run/systemd/system"):
        return "systemd is PID 1 here (no hand-made cgroup for nspawn)"
    if not cgroup_hierarchies():
        return "no usable cgroup hierarchy under /sys/fs/cgroup"
    return None


class Container:
    """A booted container; construct, use, stop() (or use as a context
    manager). The constructor stops what it started when the boot fails."""

    def __init__(self, console_log, boot_timeout=BOOT_TIMEOUT):
        self.console_log = console_log
        self.cgroups = [os.path.join(h, "kgate-nspawn.%d" % os.getpid())
                        for h in cgroup_hierarchies()]
        self.work = tempfile.mkdtemp(prefix="kgate-nspawn-")
        self.nspawn = None
        self.leader = None
        self.spawned = []
        try:
            self._boot(boot_timeout)
        except BaseException:
            self.stop()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    def _join_cgroups(self):
        # In the launcher, between fork and exec: nspawn starts in them.
        for cg in self.cgroups:
            with open(os.path.join(cg, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))

    def _boot(self, timeout):
        for cg in self.cgroups:
            os.mkdir(cg)
        # --private-network: a loopback of its own, so the example
        # configuration's ports cannot clash with this machine's.
        # basic.target: none of this machine's enabled services start.
        nspawn = ["--quiet", "--machine=kgate-lane", "--boot",
                  "--register=no", "--keep-unit", "--private-network",
                  "--link-journal=no", "--resolv-conf=off", "--timezone=off",
                  "systemd.unit=basic.target", "systemd.show_status=false"]
        with open(self.console_log, "w") as log:
            self.nspawn = subprocess.Popen(
                ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-euc",
                 LAUNCH, "sh", self.work, *nspawn],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                preexec_fn=self._join_cgroups)
        deadline = time.monotonic() + timeout
        while self.leader is None:
            self.leader = self._find_leader()
            if self.leader is None:
                self._check_alive(deadline, "no container PID 1")
                time.sleep(0.05)
        # --wait returns once the boot transaction is done; before systemd
        # listens it fails at once, hence the loop.
        while True:
            res = self.run(["systemctl", "is-system-running", "--wait"], timeout=timeout)
            if res.stdout.strip() in ("running", "degraded"):
                self.state = res.stdout.strip()
                return
            self._check_alive(deadline, "systemd did not finish booting (%s)"
                              % res.stdout.strip())
            time.sleep(0.05)

    def _check_alive(self, deadline, what):
        if self.nspawn.poll() is not None or time.monotonic() > deadline:
            with open(self.console_log) as f:
                raise RuntimeError("container: %s; nspawn %s; console:\n%s"
                                   % (what, "exited %s" % self.nspawn.returncode
                                      if self.nspawn.returncode is not None
                                      else "still running", f.read()))

    def _find_leader(self):
        """nspawn's child that runs systemd: the container's PID 1."""
        path = "/proc/%d/task/%d/children" % (self.nspawn.pid, self.nspawn.pid)
        try:
            with open(path) as f:
                kids = [int(p) for p in f.read().split()]
        except OSError:
            return None
        for pid in kids:
            try:
                with open("/proc/%d/comm" % pid) as f:
                    if f.read().strip() == "systemd":
                        return pid
            except OSError:
                pass
        return None

    def command(self, cmd):
        """cmd as a host command line that runs it inside, with a clean
        environment."""
        return ["nsenter", "--target", str(self.leader), "--mount", "--uts", "--ipc",
                "--net", "--pid", "--root", "--wd", "--", *ENV, *cmd]

    def run(self, cmd, timeout=60, **kw):
        """subprocess.run of cmd inside (output captured as text);
        CompletedProcess, whatever the exit status."""
        return subprocess.run(self.command(cmd), capture_output=True, text=True,
                              timeout=timeout, **kw)

    def spawn(self, cmd, **kw):
        """cmd started inside in the background: an InnerProcess."""
        p = InnerProcess(subprocess.Popen(self.command(cmd), **kw))
        self.spawned.append(p)
        return p

    def path(self, inner):
        """A path inside, as this machine reaches it (through PID 1's root)."""
        return "/proc/%d/root%s" % (self.leader, inner)

    def stop(self):
        """Stops what is left of spawn()'s processes, powers the container
        off (SIGKILL to its PID 1 after POWEROFF_TIMEOUT), removes the
        folder and the cgroups. Safe to call twice."""
        for p in self.spawned:
            p.stop()
        self.spawned = []
        if self.nspawn is not None and self.nspawn.poll() is None:
            if self.leader is not None:
                os.kill(self.leader, signal.SIGRTMIN + 4)
            try:
                self.nspawn.wait(POWEROFF_TIMEOUT)
            except subprocess.TimeoutExpired:
                print("container: no power off in %d s; SIGKILL to its PID 1 %s"
                      % (POWEROFF_TIMEOUT, self.leader), flush=True)
                if self.leader is not None:
                    os.kill(self.leader, signal.SIGKILL)
                try:
                    self.nspawn.wait(10)
                except subprocess.TimeoutExpired:
                    self.nspawn.kill()
                    self.nspawn.wait(10)
        self.leader = None
        if self.work is not None:
            # The namespace's mounts went with nspawn: an empty folder.
            os.rmdir(self.work)
            self.work = None
        for cg in self.cgroups:
            # Deepest first: whatever nspawn and the container's systemd
            # made below ours; every process in them is gone by now.
            for top, dirs, _ in os.walk(cg, topdown=False):
                for d in dirs:
                    os.rmdir(os.path.join(top, d))
            if os.path.isdir(cg):
                os.rmdir(cg)
        self.cgroups = []


class InnerProcess:
    """A process started inside through nsenter. nsenter --pid forks and
    waits without passing signals on, so stop() signals nsenter's child
    (the process itself, by its host PID) and then waits for nsenter."""

    def __init__(self, popen):
        self.popen = popen
        self.pid = None
        deadline = time.monotonic() + 10
        while self.pid is None and popen.poll() is None and time.monotonic() < deadline:
            try:
                with open("/proc/%d/task/%d/children" % (popen.pid, popen.pid)) as f:
                    kids = f.read().split()
            except OSError:
                kids = []
            if kids:
                self.pid = int(kids[0])
            else:
                time.sleep(0.01)

    def wait(self, timeout):
        return self.popen.wait(timeout)

    def stop(self, timeout=10):
        if self.popen.poll() is None and self.pid is not None:
            try:
                os.kill(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            if self.pid is not None:
                os.kill(self.pid, signal.SIGKILL)
            self.popen.kill()
            self.popen.wait(10)
        return self.popen.returncode
