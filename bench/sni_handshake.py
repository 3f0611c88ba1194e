#!/usr/bin/python3
"""Handshake CPU of kgated with SNI entries (issue 16, 3).

Starts three kgated, one worker each, one mutual-TLS listener in front of
an echo origin:
  no-sni        no sni entries (the reference)
  sni-miss      64 entries x 64 exact names, each entry with its own CA;
                the client's name is in none (the whole list is compared
                twice, exact then wildcard, and the listener's own
                settings serve it)
  sni-hit-last  the same listener; the client's name is the last entry's
                last name (the longest lookup, then the switch to that
                entry's SSL_CTX: certificate, verify settings)
and drives N full TLS 1.3 mTLS handshakes (fleet_tickets.handshakes: no
session offered, one 8-byte echo each) against each in turn (every other round in reverse order), R
rounds. CPU = the kgated process's threads' time on CPU
(/proc/PID/task/TID/schedstat) over the run / N.

    KG_BUILD_DIR=$PWD/build-release bench/sni_handshake.py [-n 1000] [-r 3]

(Debian's python3: it imports the integration tests' pytest helpers.)

Prints a Markdown report (bench/results/<date>-sni-handshake.md)."""
import argparse
import json
import os
import shutil
import ssl
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "bench"))
sys.path.insert(0, os.path.join(REPO, "tests", "integration"))

from conftest import (KGATED, EchoBackend, base_config, build_pki,  # noqa: E402
                      client_context, tls_listener)
from fleet_tickets import cpu_ns, handshakes, start  # noqa: E402

ENTRIES = NAMES = 64


def entries():
    return [{"names": ["h%d.e%d.example.test" % (j, i) for j in range(NAMES)],
             "certificate": "web", "ca": "clients"} for i in range(ENTRIES)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=1000, help="full handshakes per run")
    ap.add_argument("-r", type=int, default=3, help="rounds")
    opt = ap.parse_args()
    work = tempfile.mkdtemp(prefix="kg-sni-bench-")
    load_before = open("/proc/loadavg").read().split()[:3]
    pki = build_pki(os.path.join(work, "pki"))
    echo = EchoBackend()
    procs = {}
    try:
        for kind, sni in (("plain", None), ("sni", entries())):
            extra = {"sni": sni} if sni else {}
            cfg = base_config(pki, [tls_listener(pki, [echo], **extra)], workers=1,
                              log_level="notice")
            path = os.path.join(work, kind + ".json")
            with open(path, "w") as f:
                json.dump(cfg, f)
            procs[kind] = start(kind, work, ["--config", path, "--state-dir",
                                             os.path.join(work, "st-" + kind)])
        ctx = client_context(pki, tls_min=ssl.TLSVersion.TLSv1_3,
                             tls_max=ssl.TLSVersion.TLSv1_3)
        ctx.check_hostname = False  # one certificate for every name; the chain is checked
        runs = {"no-sni": ("plain", "localhost"),
                "sni-miss": ("sni", "nowhere.example.test"),
                "sni-hit-last": ("sni", "h%d.e%d.example.test" % (NAMES - 1, ENTRIES - 1))}
        names = list(runs)
        for name in names:  # warm-up
            handshakes(ctx, procs[runs[name][0]][1], 50, runs[name][1])
        per = {n: [] for n in names}
        for rnd in range(opt.r):
            for name in (names if rnd % 2 == 0 else names[::-1]):
                proc, port, _ = procs[runs[name][0]]
                c0, t0 = cpu_ns(proc.pid), time.monotonic()
                handshakes(ctx, port, opt.n, runs[name][1])
                per[name].append(((cpu_ns(proc.pid) - c0) / opt.n / 1000,
                                  opt.n / (time.monotonic() - t0)))
        load_after = open("/proc/loadavg").read().split()[:3]
        print("# Handshake CPU with SNI entries (%d entries x %d names)\n" % (ENTRIES, NAMES))
        print("- kgated %s; %d full TLS 1.3 mTLS handshakes per run, %d rounds, 1 worker; "
              "load average before / after: %s / %s\n"
              % (KGATED, opt.n, opt.r, " ".join(load_before), " ".join(load_after)))
        print("| run | µs CPU per full handshake (median) | per round | handshakes/s "
              "(client-bound) |")
        print("|---|---|---|---|")
        for name in names:
            us = [u for u, _ in per[name]]
            print("| %s | **%.1f** | %s | %.0f |"
                  % (name, statistics.median(us), " / ".join("%.1f" % u for u in us),
                     statistics.median(r for _, r in per[name])))
    finally:
        for proc, _, _ in procs.values():
            proc.terminate()
            proc.wait(timeout=15)
        echo.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
