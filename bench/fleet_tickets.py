#!/usr/bin/python3
"""Handshake CPU of kgated in store mode vs single-box mode (issue 15, 3).

Starts one etcd (loopback, temp dir) and three kgated, one worker each, one
mutual-TLS listener in front of an echo origin:
  single-stateless  --config --state-dir, tls_session_tickets stateless
  store-stateless   --store (the same document pushed with kgatectl), the
                    fleet's ticket keys from PREFIX/ticket-keys
  single-stateful   the reference without stateless tickets
and drives N full TLS 1.3 mTLS handshakes (no session offered, one 8-byte
echo each, so every handshake issues its one ticket) against each in
turn (every other round in reverse order), R rounds. CPU = the kgated process's threads' time on CPU
(/proc/PID/task/TID/schedstat) over the run / N. Also the idle CPU of each
over a few seconds (store mode runs three etcd client threads).

    KG_BUILD_DIR=$PWD/build-release bench/fleet_tickets.py [-n 1500] [-r 3]

(Debian's python3: it imports the integration tests' pytest helpers.)

Prints a Markdown report (bench/results/<date>-fleet-tickets.md)."""
import argparse
import json
import os
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests", "integration"))

from conftest import (KGATECTL, KGATED, EchoBackend, base_config, build_pki,  # noqa: E402
                      client_context, tls_listener)
from test_store import Etcd  # noqa: E402


def cpu_ns(pid):
    total = 0
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{t}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return total


def wait_port(log_path, proc, timeout=20):
    """The listener's port from kgated's listener.listening line."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, open(log_path).read()
        with open(log_path) as f:
            for line in f:
                if "event=listener.listening" in line:
                    return int(line.split("addr=")[1].split()[0].rsplit(":", 1)[1])
        time.sleep(0.05)
    raise RuntimeError("no listener in %s" % log_path)


def start(name, work, args):
    log = os.path.join(work, name + ".log")
    proc = subprocess.Popen([KGATED, *args, "--user", "root"] if os.geteuid() == 0
                            else [KGATED, *args], stdout=open(log, "w"),
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return proc, wait_port(log, proc), log


def handshakes(ctx, port, n, name="localhost"):
    """n full handshakes (server name name), one 8-byte echo each."""
    for _ in range(n):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname=name) as s:
                s.sendall(b"ticket?\n")
                assert s.recv(8) == b"ticket?\n"
                assert not s.session_reused


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=1500, help="full handshakes per run")
    ap.add_argument("-r", type=int, default=3, help="rounds")
    ap.add_argument("--idle-s", type=float, default=6.0)
    opt = ap.parse_args()
    work = tempfile.mkdtemp(prefix="kg-fleet-tickets-")
    load_before = open("/proc/loadavg").read().split()[:3]
    pki = build_pki(os.path.join(work, "pki"))
    echo = EchoBackend()
    etcd = Etcd(work)
    kek = os.path.join(work, "kek")
    with open(kek, "w") as f:
        f.write(os.urandom(32).hex() + "\n")
    os.chmod(kek, 0o600)
    procs = {}
    try:
        for mode in ("stateless", "stateful"):
            cfg = base_config(pki, [tls_listener(pki, [echo], tls_session_tickets=mode)],
                              workers=1, log_level="notice")
            path = os.path.join(work, mode + ".json")
            with open(path, "w") as f:
                json.dump(cfg, f)
            procs["single-" + mode] = start("single-" + mode, work, [
                "--config", path, "--state-dir", os.path.join(work, "st-" + mode)])
        subprocess.run([KGATECTL, "--store", etcd.url, "--store-kek", kek, "store", "push",
                        os.path.join(work, "stateless.json")], check=True,
                       capture_output=True)
        procs["store-stateless"] = start("store-stateless", work, [
            "--state-dir", os.path.join(work, "st-store"), "--store", etcd.url,
            "--store-kek", kek])
        ctx = client_context(pki, tls_min=ssl.TLSVersion.TLSv1_3,
                             tls_max=ssl.TLSVersion.TLSv1_3)
        names = ["single-stateless", "store-stateless", "single-stateful"]
        for name in names:  # warm-up
            handshakes(ctx, procs[name][1], 50)
        per = {n: [] for n in names}
        for rnd in range(opt.r):
            # Every other round in reverse: drift on the shared box and the
            # position in the round hit every kgated alike.
            for name in (names if rnd % 2 == 0 else names[::-1]):
                proc, port, _ = procs[name]
                c0, t0 = cpu_ns(proc.pid), time.monotonic()
                handshakes(ctx, port, opt.n)
                per[name].append(((cpu_ns(proc.pid) - c0) / opt.n / 1000,
                                  opt.n / (time.monotonic() - t0)))
        idle = {}
        for name in names:
            pid = procs[name][0].pid
            c0 = cpu_ns(pid)
            time.sleep(opt.idle_s)
            idle[name] = (cpu_ns(pid) - c0) / opt.idle_s / 1e6
        load_after = open("/proc/loadavg").read().split()[:3]
        with open(procs["store-stateless"][2]) as f:
            store_log = f.read()
        assert "event=store.ticket_keys_applied" in store_log, store_log
        print("# Handshake CPU: store mode vs single-box (stateless tickets)\n")
        print("- kgated %s; %d full TLS 1.3 mTLS handshakes per run, %d rounds, 1 worker; "
              "load average before / after: %s / %s\n"
              % (KGATED, opt.n, opt.r, " ".join(load_before), " ".join(load_after)))
        print("| kgated | µs CPU per full handshake (median) | per round | handshakes/s "
              "(client-bound) | idle CPU ms/s |")
        print("|---|---|---|---|---|")
        for name in names:
            us = [u for u, _ in per[name]]
            print("| %s | **%.1f** | %s | %.0f | %.2f |"
                  % (name, statistics.median(us), " / ".join("%.1f" % u for u in us),
                     statistics.median(r for _, r in per[name]), idle[name]))
    finally:
        for proc, _, _ in procs.values():
            proc.terminate()
            proc.wait(timeout=15)
        etcd.stop()
        echo.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
