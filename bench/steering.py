#!/usr/bin/python3
"""New connections spread over 2 workers: the sk_reuseport program
(settings.accept_steering "bpf") against the userspace hand-over
("userspace"), side by side in one run (issue 19, 3).

Starts two kgated, 2 workers each, one mutual-TLS listener in front of an
echo origin, identical but for accept_steering, and per round, for each
(in turn, every other round in reverse order):
  spread     opens --held connections (full TLS 1.3 mTLS handshake and an
             8-byte echo each) and keeps them open; reads
             kgate_worker_connections from the metrics: the two workers'
             counts, the larger share, and how many were handed over
             (kgate_connections_handed_over_total);
  handshake  --threads clients make -n full handshakes in all (no session
             offered, one 8-byte echo each), while those connections stay
             open: p50/p99 of connect-to-echo time, and kgated's CPU
             (every thread's /proc/PID/task/TID/schedstat) over the run / n.
Then it closes the held connections.

    KG_BUILD_DIR=$PWD/build-release bench/steering.py [-n 2000] [-r 3] [--held 400]

(Debian's python3: it imports the integration tests' pytest helpers.)
Prints a Markdown report (keep it as bench/results/<date>-steering.md)."""
import argparse
import json
import os
import shutil
import socket
import ssl
import statistics
import sys
import tempfile
import threading
import time
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "bench"))
sys.path.insert(0, os.path.join(REPO, "tests", "integration"))

from conftest import (KGATED, EchoBackend, base_config, build_pki,  # noqa: E402
                      client_context, dead_port, tls_listener)
from fleet_tickets import cpu_ns, start  # noqa: E402

MODES = ("bpf", "userspace")


def scrape(mport):
    text = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % mport,
                                  timeout=10).read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            k, v = line.rsplit(" ", 1)
            values[k] = int(v)
    return values


def workers(mport):
    v = scrape(mport)
    return [v['kgate_worker_connections{worker="%d"}' % w] for w in range(2)], v


def one(ctx, port):
    """One full handshake and echo; the open TLS socket."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    s = ctx.wrap_socket(raw, server_hostname="localhost")
    s.sendall(b"steerme\n")
    assert s.recv(8) == b"steerme\n"
    assert not s.session_reused
    return s


def handshake_run(ctx, port, n, threads):
    """n full handshakes over `threads` clients; each one's seconds."""
    times = []
    lock = threading.Lock()

    def client(count):
        mine = []
        for _ in range(count):
            t0 = time.perf_counter()
            one(ctx, port).close()
            mine.append(time.perf_counter() - t0)
        with lock:
            times.extend(mine)

    ts = [threading.Thread(target=client, args=(n // threads,)) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return times


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=2000, help="full handshakes per run")
    ap.add_argument("-r", type=int, default=3, help="rounds")
    ap.add_argument("--held", type=int, default=400, help="connections held open per run")
    ap.add_argument("--threads", type=int, default=4, help="handshaking clients")
    opt = ap.parse_args()
    work = tempfile.mkdtemp(prefix="kg-steering-bench-")
    load_before = open("/proc/loadavg").read().split()[:3]
    pki = build_pki(os.path.join(work, "pki"))
    echo = EchoBackend()
    procs = {}
    try:
        for mode in MODES:
            cfg = base_config(pki, [tls_listener(pki, [echo])], workers=2,
                              log_level="notice", accept_steering=mode)
            path = os.path.join(work, mode + ".json")
            with open(path, "w") as f:
                json.dump(cfg, f)
            mport = dead_port()
            proc, port, log = start(mode, work, ["--config", path, "--metrics",
                                                 "127.0.0.1:%d" % mport])
            got = [line for line in open(log) if "event=accept.steering" in line]
            assert got and ("mode=%s " % mode) in got[0], got
            procs[mode] = (proc, port, mport)
        ctx = client_context(pki, tls_min=ssl.TLSVersion.TLSv1_3,
                             tls_max=ssl.TLSVersion.TLSv1_3)
        for mode in MODES:  # warm-up
            handshake_run(ctx, procs[mode][1], 100, 2)
        per = {m: [] for m in MODES}
        for rnd in range(opt.r):
            for mode in (MODES if rnd % 2 == 0 else MODES[::-1]):
                proc, port, mport = procs[mode]
                _, v0 = workers(mport)
                held = [one(ctx, port) for _ in range(opt.held)]
                time.sleep(0.2)
                counts, v1 = workers(mport)
                c0, t0 = cpu_ns(proc.pid), time.monotonic()
                times = handshake_run(ctx, port, opt.n, opt.threads)
                cpu_us = (cpu_ns(proc.pid) - c0) / len(times) / 1000
                rate = len(times) / (time.monotonic() - t0)
                _, v2 = workers(mport)
                for s in held:
                    s.close()
                per[mode].append({
                    "counts": counts, "share": max(counts) / max(1, sum(counts)),
                    "handed_held": v1["kgate_connections_handed_over_total"] -
                    v0["kgate_connections_handed_over_total"],
                    "handed_hs": v2["kgate_connections_handed_over_total"] -
                    v1["kgate_connections_handed_over_total"],
                    "steered": v2['kgate_accept_steered_total{result="steered"}'] -
                    v0['kgate_accept_steered_total{result="steered"}'],
                    "p50": pct(times, 50) * 1000, "p99": pct(times, 99) * 1000,
                    "cpu_us": cpu_us, "rate": rate, "n": len(times)})
                time.sleep(0.5)
        load_after = open("/proc/loadavg").read().split()[:3]
        print("# Accept steering: sk_reuseport program vs userspace hand-over\n")
        print("- kgated %s, 2 workers, one `tls` listener (mTLS required) in front of an "
              "echo origin; per run %d connections held open, then %d full TLS 1.3 mTLS "
              "handshakes (+ 8-byte echo) from %d Python clients while they stay open; "
              "%d rounds, modes alternating; load average before / after: %s / %s\n"
              % (KGATED, opt.held, opt.n, opt.threads, opt.r, " ".join(load_before),
                 " ".join(load_after)))
        print("| mode | held per worker (each round) | larger share (median) | "
              "handed over: held / handshakes | steered by the program | p50 ms | p99 ms | "
              "µs CPU per handshake (median) | per round | handshakes/s (client-bound) |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for mode in MODES:
            rs = per[mode]
            print("| %s | %s | %.3f | %s | %s | %.2f | %.2f | **%.1f** | %s | %.0f |" % (
                mode, " / ".join("%d+%d" % tuple(r["counts"]) for r in rs),
                statistics.median(r["share"] for r in rs),
                " / ".join("%d+%d" % (r["handed_held"], r["handed_hs"]) for r in rs),
                " / ".join(str(r["steered"]) for r in rs),
                statistics.median(r["p50"] for r in rs),
                statistics.median(r["p99"] for r in rs),
                statistics.median(r["cpu_us"] for r in rs),
                " / ".join("%.1f" % r["cpu_us"] for r in rs),
                statistics.median(r["rate"] for r in rs)))
    finally:
        for proc, _, _ in procs.values():
            proc.terminate()
            proc.wait(timeout=15)
        echo.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
