#!/usr/bin/python3
"""gRPC unary calls through kgated (issue 17, backend_protocol h2): a
python3-grpcio server (cleartext HTTP/2) behind an https listener with
backend_protocol h2, a python3-grpcio client over mTLS making unary calls
from several threads over one channel (streams multiplexed on one client
connection) and over several channels (one connection each). Reported:
calls/s and kgated's CPU (utime + stime of the process) per call; the
Python client and server are the bottleneck of the rate, kgated's CPU per
call is the number that matters.

Writes bench/results/<date>-grpc-unary.md. Needs a Release build (--build)."""
import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent import futures

import grpc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import bench as kb  # noqa: E402  (Procs, wait_for, free_port)
from h2_vs_h1 import cpu_ticks, make_pki  # noqa: E402


def serve():
    ident = lambda b: b  # noqa: E731
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    h = {"Echo": grpc.unary_unary_rpc_method_handler(lambda req, ctx: req, ident, ident)}
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("b.S", h)])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


def channel(port, ca, cert, key, own):
    creds = grpc.ssl_channel_credentials(open(ca, "rb").read(), open(key, "rb").read(),
                                         open(cert, "rb").read())
    opts = [("grpc.ssl_target_name_override", "localhost"), ("grpc.enable_http_proxy", 0)]
    if own:
        opts.append(("grpc.use_local_subchannel_pool", 1))
    return grpc.secure_channel("127.0.0.1:%d" % port, creds, options=opts)


def run_calls(chans, threads, calls, payload):
    """calls unary calls split over threads, thread i on chans[i % len]."""
    per = calls // threads
    errors = []

    def work(i):
        stub = chans[i % len(chans)].unary_unary("/b.S/Echo")
        try:
            for _ in range(per):
                if stub(payload, timeout=30) != payload:
                    raise RuntimeError("bad echo")
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(e)
    ts = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    t0 = time.monotonic()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        raise RuntimeError("calls failed: %r" % errors[:3])
    return per * threads, time.monotonic() - t0


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--build", default=os.path.join(ROOT, "build-release"))
    p.add_argument("--calls", type=int, default=20000)
    p.add_argument("--threads", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--payload", type=int, default=100)
    p.add_argument("--out-dir", default=os.path.join(ROOT, "bench", "results"))
    args = p.parse_args()
    kgated = os.path.join(args.build, "dataplane", "kgated")
    kgatectl = os.path.join(args.build, "ctl", "kgatectl")
    work = tempfile.mkdtemp(prefix="kg-grpcbench-")
    procs = kb.Procs()
    server, bport = serve()
    try:
        ca, scert, skey, cert, key = make_pki(kgatectl, work)
        port = kb.free_port()
        conf = {"settings": {"workers": 1, "drain_timeout_ms": 2000, "log_level": "info"},
                "certificates": {"web": {"type": "server", "cert": scert, "key": skey},
                                 "clients": {"type": "ca", "cert": ca}},
                "listeners": [{"name": "web", "protocol": "https", "bind": "127.0.0.1",
                               "port": port, "certificate": "web", "mutual_auth": "required",
                               "ca": "clients", "forwarding": "userspace",
                               "backend_protocol": "h2",
                               "backends": [{"address": "127.0.0.1:%d" % bport}]}]}
        conf_path = os.path.join(work, "kgated.json")
        with open(conf_path, "w") as f:
            json.dump(conf, f)
        log = os.path.join(work, "kgated.log")
        argv = [kgated, "--config", conf_path, "--state-dir", os.path.join(work, "state")]
        if os.geteuid() == 0:
            argv += ["--user", "root"]
        kp = procs.start(argv, log)
        kb.wait_for(log, r" event=kgated\.ready ", 10, kp)
        hz = os.sysconf("SC_CLK_TCK")
        payload = b"x" * args.payload
        cases = [("1 channel, %d threads" % args.threads, 1),
                 ("%d channels, 1 thread each" % args.threads, args.threads)]
        rows = []
        for name, n_chans in cases:
            chans = [channel(port, ca, cert, key, own=n_chans > 1) for _ in range(n_chans)]
            run_calls(chans, args.threads, 200 * args.threads, payload)  # warm up
            rates, cpus = [], []
            for _ in range(args.rounds):
                t0 = cpu_ticks(kp.pid)
                done, secs = run_calls(chans, args.threads, args.calls, payload)
                t1 = cpu_ticks(kp.pid)
                rates.append(done / secs)
                cpus.append((t1 - t0) / hz / done * 1e6)
            for ch in chans:
                ch.close()
            mid = len(rates) // 2
            rows.append((name, sorted(rates)[mid], sorted(cpus)[mid]))
        stamp = datetime.datetime.utcnow().strftime("%Y-%m-%d-%H%M")
        path = os.path.join(args.out_dir, "%s-grpc-unary.md" % stamp)
        with open(path, "w") as f:
            f.write("# gRPC unary calls through kgated (bench/grpc_unary.py)\n\n")
            f.write("python3-grpcio client and server (%d-byte messages), %d calls per round "
                    "(median of %d rounds), TLS 1.3 with a client certificate, kgated 1 "
                    "worker, userspace TLS, backend_protocol h2 (h2c) to one server; kgated "
                    "CPU = its utime+stime over the round / calls (clock ticks of %d Hz, so "
                    "a round's CPU is known to 1/%d s). The Python processes bound the "
                    "rate. This host: %d CPUs shared with other jobs; %s.\n\n"
                    % (args.payload, args.calls, args.rounds, hz, hz, os.cpu_count(),
                       os.uname().release))
            f.write("| client | calls/s | kgated CPU per call (µs) |\n| --- | --- | --- |\n")
            for name, rate, cpu in rows:
                f.write("| %s | %.0f | %.1f |\n" % (name, rate, cpu))
        print(open(path).read())
    finally:
        procs.stop_all()
        server.stop(None)


if __name__ == "__main__":
    main()
