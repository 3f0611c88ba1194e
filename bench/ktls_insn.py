#!/usr/bin/python3
"""kgated's userspace instructions per MiB, kTLS splice path against the
userspace-TLS path (issue 19 §5), counted by valgrind's callgrind.

Meant for the VM lane (the host kernel has no kTLS; under TCG the counts
do not depend on timing):

  flock /work/bench.lock tests/vm/run --build-dir build-release --timeout 1500 \\
      -- /usr/bin/python3 bench/ktls_insn.py > ktls-insn.log

One kgated (the build's Release binary) runs under
  valgrind --tool=callgrind --zero-before=kg_conn_accept --dump-before=kg_conn_close
           --dump-before=kg_conn_close_err --dump-before=kg_conn_reset
with KGATED_POLL_WAIT=1 (kgated(8) ENVIRONMENT: valgrind 3.19 cannot run it
otherwise) and two mutual-TLS listeners on one backend, `forwarding:
splice` (the ktls-splice path) and `forwarding: userspace`
(userspace-tls). Connections run one at a time, so each dump holds one
connection's cost, from its accept to its close: handshake, transfer and
whatever else the process did meanwhile (the worker's 100 ms tick, the
main thread). Each connection first sends a 9-byte request (size, 'D' or
'U'); the backend then sends that many bytes (download) or reads them and
answers one byte (upload).

Per MiB = (Ir(big) - Ir(small) - idle - knob) / (big - small) MiB. idle:
what the process spends per worker tick (100 ms; callgrind counts the
worker's calls to arm_tick) with a connection open and nothing moving,
measured here with idle connections held for two durations on the same
path, times the difference in ticks between the two transfers. Counting
ticks, not seconds, matters: a worker busy past a tick boundary skips that
tick. The main thread's idle work is lumped into the per-tick figure.
knob: the inclusive Ir of KGATED_POLL_WAIT's own calls (poll, read of its
eventfd, the GETEVENTS enter), taken from each dump's call records.

Every connection's path is checked: /proc/net/tls_stat's TlsTxSw and
TlsRxSw move by one for a ktls-splice connection and not at all for a
userspace-tls one, and at the end the workers' path_ktls_splice and
path_userspace_tls counters equal the connections made on each listener.
"""
import argparse
import glob
import json
import os
import re
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(REPO, "tests", "integration"))
from conftest import (KGATED, Daemon, base_config, build_pki,  # noqa: E402
                      client_context, path_count, tls_listener)

MiB = 1 << 20
CHUNK = 256 * 1024
VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
PATHS = {"splice": "ktls-splice", "userspace": "userspace-tls"}
TLS_STAT = "/proc/net/tls_stat"
# What KGATED_POLL_WAIT adds per wake-up, by callgrind's function names:
# libc's poll and read (the eventfd) and liburing's GETEVENTS enter.
KNOB_FNS = re.compile(r"^(poll|read|io_uring_get_events)$")


class Backend:
    """Download: sends the asked bytes, closes. Upload: reads them, answers 1 byte."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.address = "127.0.0.1:%d" % self.sock.getsockname()[1]
        self.errors = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn):
        try:
            with conn:
                hdr = recv_exact(conn, 9)
                n, way = struct.unpack("!QB", hdr)
                if way == ord("D"):
                    block = b"\xa5" * CHUNK
                    left = n
                    while left:
                        left -= conn.send(block[:min(left, CHUNK)])
                else:
                    got = 0
                    while got < n:
                        b = conn.recv(min(CHUNK, n - got))
                        if not b:
                            raise OSError("upload cut at %d of %d" % (got, n))
                        got += len(b)
                    conn.sendall(b"k")
        except OSError as e:
            self.errors.append(repr(e))


def recv_exact(s, n):
    out = b""
    while len(out) < n:
        b = s.recv(n - len(out))
        if not b:
            raise OSError("short read: %d of %d" % (len(out), n))
        out += b
    return out


def tls_stat():
    if not os.path.exists(TLS_STAT):
        return {}
    with open(TLS_STAT) as f:
        return {k: int(v) for k, v in (line.split() for line in f)}


def transfer(ctx, port, nbytes, way, hold_s=0.0):
    """One connection; returns its seconds from connect to close."""
    t0 = time.monotonic()
    raw = socket.create_connection(("127.0.0.1", port), timeout=600)
    with ctx.wrap_socket(raw, server_hostname="localhost") as s:
        s.sendall(struct.pack("!QB", nbytes, ord(way)))
        if hold_s:
            time.sleep(hold_s)
        if way == "D":
            got = 0
            while True:
                b = s.recv(CHUNK)
                if not b:
                    break
                got += len(b)
            if got != nbytes:
                raise AssertionError("download got %d of %d bytes" % (got, nbytes))
        else:
            block = b"\x5a" * CHUNK
            left = nbytes
            while left:
                left -= s.send(block[:min(left, CHUNK)])
            if recv_exact(s, 1) != b"k":
                raise AssertionError("upload not acknowledged")
    return time.monotonic() - t0


def parse_dump(path):
    """(total Ir, Ir of KGATED_POLL_WAIT's calls) of one callgrind dump: the
    latter is the inclusive cost of worker_main's calls to poll, read and
    io_uring_get_events (only the poll wait makes those)."""
    names, total, summary = {}, None, None
    fn = cfn = None
    in_call = False
    knob = ticks = 0

    def name(spec):
        m = re.match(r"\((\d+)\)(?: (.*))?$", spec)
        if not m:
            return spec
        if m.group(2):
            names[m.group(1)] = m.group(2)
        return names.get(m.group(1), m.group(1))

    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if line.startswith("totals:"):
                total = int(line.split()[1])
            elif line.startswith("summary:"):
                summary = int(line.split()[1])
            elif line.startswith("fn="):
                fn = name(line[3:])
            elif line.startswith("cfn="):
                cfn = name(line[4:])
            elif line.startswith("calls="):
                in_call = True
                if cfn == "arm_tick":
                    ticks += int(line[6:].split()[0])
            elif line[:1] in "0123456789+-*" and in_call:
                in_call = False
                if fn == "worker_main" and KNOB_FNS.match(cfn or ""):
                    knob += int(line.split()[-1])
    total = total if total is not None else summary
    if total is None:
        raise AssertionError("no totals in " + path)
    return total, knob, ticks


class Counter:
    """kgated under callgrind: each connection's dump(s)."""

    def __init__(self, workdir, pki, backend, fws, log_level):
        self.dumps = os.path.join(workdir, "cg")
        os.makedirs(self.dumps)
        self.seen = set()
        listeners = [tls_listener(pki, [backend], name=fw, forwarding=fw)
                     for fw in fws]
        cfg = base_config(pki, listeners, log_level=log_level)
        prefix = ["valgrind", "--tool=callgrind", "--vgdb=no",
                  "--log-file=" + os.path.join(workdir, "valgrind.log"),
                  "--callgrind-out-file=" + os.path.join(self.dumps, "cg.out"),
                  "--zero-before=kg_conn_accept", "--dump-before=kg_conn_close",
                  "--dump-before=kg_conn_close_err", "--dump-before=kg_conn_reset"]
        os.environ["KGATED_POLL_WAIT"] = "1"
        extra = ("--user", "root") if os.geteuid() == 0 else ()
        self.d = Daemon(cfg, os.path.join(workdir, "kgated"), extra_args=extra,
                        prefix=prefix, exe=KGATED)
        self.d.wait_ready(timeout=600)
        ring = self.d.events("worker.ring")
        if not ring or ring[0].get("wait") != "poll":
            raise AssertionError("worker.ring does not say wait=poll: %r" % ring)

    def port(self, fw):
        return self.d.ports[fw]

    def collect(self, timeout=120):
        """Sum of the dumps written since the last call (the connection's
        close may be logged after the dump: wait for one, then for quiet)."""
        deadline = time.monotonic() + timeout
        new = []
        while time.monotonic() < deadline:
            files = set(glob.glob(os.path.join(self.dumps, "cg.out.*"))) - self.seen
            if files and files == set(new):
                break
            new = sorted(files)
            time.sleep(2.0)
        if not new:
            ss = subprocess.run(["ss", "-tnoi"], capture_output=True, text=True).stdout
            raise AssertionError("no callgrind dump %d s after the connection closed\n"
                                 "ss:\n%s\nkgated log (tail):\n%s" %
                                 (timeout, ss, "\n".join(self.d.log().splitlines()[-40:])))
        self.seen.update(new)
        total = knob = ticks = 0
        for p in new:
            t, k, n = parse_dump(p)
            total, knob, ticks = total + t, knob + k, ticks + n
        return total, knob, ticks, len(new)

    def stop(self):
        rc = self.d.terminate(timeout=600)
        if rc != 0:
            raise AssertionError("kgated exited %s" % rc)


def progress(msg):
    print("%s %s" % (time.strftime("%H:%M:%S"), msg), file=sys.stderr, flush=True)


def measure(counter, ctx, fw, mib, way, hold_s=0.0):
    progress("%s %s %d MiB hold %.0f s" % (fw, way, mib, hold_s))
    before = tls_stat()
    secs = transfer(ctx, counter.port(fw), mib * MiB, way, hold_s)
    ir, knob, ticks, ndumps = counter.collect()
    after = tls_stat()
    tx = after.get("TlsTxSw", 0) - before.get("TlsTxSw", 0)
    rx = after.get("TlsRxSw", 0) - before.get("TlsRxSw", 0)
    want = 1 if PATHS[fw] == "ktls-splice" else 0
    if (tx, rx) != (want, want):
        raise AssertionError("%s connection: tls_stat TlsTxSw +%d TlsRxSw +%d, want +%d"
                             % (fw, tx, rx, want))
    return {"ir": ir, "knob_ir": knob, "ticks": ticks, "dumps": ndumps,
            "seconds": round(secs, 2)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--small", type=int, default=4, help="MiB (default 4)")
    ap.add_argument("--big", type=int, default=20, help="MiB (default 20)")
    ap.add_argument("--idle", default="5,25",
                    help="seconds two idle connections are held, per path (default 5,25)")
    ap.add_argument("--versions", default="1.2,1.3")
    ap.add_argument("--forwarding", default="splice,userspace")
    ap.add_argument("--ways", default="D,U", help="D download, U upload")
    ap.add_argument("--log-level", default="info", help="kgated's (debug to diagnose)")
    ap.add_argument("--allow-no-ktls", action="store_true",
                    help="outside the VM: the splice listener then takes userspace-tls")
    ap.add_argument("--out", help="JSON results (also printed last, after RESULT, "
                    "since a file written in the VM vanishes with it)")
    a = ap.parse_args()
    if not os.path.exists(TLS_STAT) and not a.allow_no_ktls:
        subprocess.run(["busybox", "modprobe", "tls"], check=False)
        if not os.path.exists(TLS_STAT):
            sys.exit("%s missing: no kTLS here (use tests/vm/run)" % TLS_STAT)
    fws = a.forwarding.split(",")
    if a.allow_no_ktls and not os.path.exists(TLS_STAT):
        PATHS["splice"] = "userspace-tls"
    idle_s = [float(x) for x in a.idle.split(",")]
    work = tempfile.mkdtemp(prefix="ktls-insn-")
    pki = build_pki(os.path.join(work, "pki"))
    backend = Backend()
    vg = subprocess.run(["valgrind", "--version"], capture_output=True, text=True).stdout.strip()
    res = {"valgrind": vg, "kernel": os.uname().release, "kgated": KGATED,
           "small_mib": a.small, "big_mib": a.big, "idle_s": idle_s, "runs": [], "rows": []}
    t_start = time.monotonic()
    c = Counter(work, pki, backend, fws, a.log_level)
    res["startup_s"] = round(time.monotonic() - t_start, 1)
    made = {fw: 0 for fw in fws}
    try:
        for ver in a.versions.split(","):
            ctx = client_context(pki, tls_min=VERSIONS[ver], tls_max=VERSIONS[ver])
            for fw in fws:
                # The first connection of a kind pays one-off costs (lazy
                # initialisation, caches): not counted.
                measure(c, ctx, fw, a.small, "D")
                made[fw] += 1
                idle = [measure(c, ctx, fw, 0, "U", hold_s=h) for h in idle_s]
                made[fw] += len(idle)
                # Idle cost per worker tick (arm_tick's calls count them;
                # the main thread's idle work is lumped in): ticks, not
                # seconds, since a busy worker skips the ticks it misses.
                rate = ((idle[1]["ir"] - idle[1]["knob_ir"] - idle[0]["ir"] + idle[0]["knob_ir"])
                        / max(1, idle[1]["ticks"] - idle[0]["ticks"]))
                for r, h in zip(idle, idle_s):
                    res["runs"].append(dict(r, version=ver, forwarding=fw, way="idle", hold_s=h))
                for way in a.ways.split(","):
                    s = measure(c, ctx, fw, a.small, way)
                    b = measure(c, ctx, fw, a.big, way)
                    made[fw] += 2
                    for r, mib in ((s, a.small), (b, a.big)):
                        res["runs"].append(dict(r, version=ver, forwarding=fw, way=way, mib=mib))
                    d_ir = b["ir"] - s["ir"]
                    d_knob = b["knob_ir"] - s["knob_ir"]
                    d_idle = rate * (b["ticks"] - s["ticks"])
                    dm = a.big - a.small
                    row = {"version": ver, "forwarding": fw, "path": PATHS[fw],
                           "way": {"D": "download", "U": "upload"}[way],
                           "raw_ir_per_mib": round(d_ir / dm),
                           "idle_ir_per_tick": round(rate),
                           "ticks_per_mib": round((b["ticks"] - s["ticks"]) / dm, 1),
                           "idle_ir_per_mib": round(d_idle / dm),
                           "knob_ir_per_mib": round(d_knob / dm),
                           "ir_per_mib": round((d_ir - d_idle - d_knob) / dm)}
                    res["rows"].append(row)
                    print(json.dumps(row), flush=True)
                    if a.out:
                        with open(a.out, "w") as f:
                            json.dump(res, f, indent=1)
    finally:
        c.stop()
    for fw in fws:
        got = path_count(c.d, PATHS[fw])
        res.setdefault("path_counts", {})[PATHS[fw]] = got
    want = {}
    for fw in fws:
        want[PATHS[fw]] = want.get(PATHS[fw], 0) + made[fw]
    if res["path_counts"] != want:
        raise AssertionError("path counters %r, connections made %r" % (res["path_counts"], want))
    if backend.errors:
        raise AssertionError("backend: %r" % backend.errors)
    res["elapsed_s"] = round(time.monotonic() - t_start, 1)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)
    print("paths %r; %.0f s" % (res["path_counts"], res["elapsed_s"]))
    print("RESULT " + json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
