#!/usr/bin/python3
"""Connection churn and idle holding against a kgated listener, for the
soak script (tests/soak/churn.sh) and the integration suite.

churn.py churn --port P --ca CA --cert C --key K --total N [--procs 4]
    N short mutual-TLS connections, spread over --procs processes: each
    one connects, completes a full handshake (no session is ever reused),
    sends one "GET / HTTP/1.1" with "Connection: close", reads the answer
    to EOF and checks it is a 200. Prints one JSON object: ok, failed,
    the first errors, seconds, per-process counts.

churn.py idle --port P --ca CA --cert C --key K --count M [--hold S] [--procs 4]
    M connections (spread over --procs processes), each with a handshake
    and one keep-alive GET, then silent; records for
    each how long after its last byte the server closed it. Prints one
    JSON object: closed, still_open, min_s, max_s (close time after the
    connection's request was sent; noticed within the time 20 handshakes
    take while connections are still being opened, 0.2 s after).

Both stop by themselves: the client processes get --budget seconds in all
(default 3600), then are killed; "problems" in the JSON names any process
that ran over, died or raised, and the exit status is then 1.

Standard library only; runs with /usr/bin/python3.
"""
import argparse
import json
import multiprocessing
import os
import resource
import selectors
import signal
import socket
import ssl
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                "bench"))
from idle_conns import read_response  # noqa: E402  (one HTTP/1.1 response, 200 or raise)

REQUEST = b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: %s\r\n\r\n"


def context(a):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(a.ca)
    ctx.load_cert_chain(a.cert, a.key)
    return ctx


def raise_fd_limit(needed):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(needed, hard), hard))


def one_connection(ctx, port, timeout):
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            s.sendall(REQUEST % b"close")
            data = b""
            while True:
                try:
                    chunk = s.recv(65536)
                except ssl.SSLEOFError:  # no close_notify from the backend side
                    break
                if not chunk:
                    break
                data += chunk
    if not data.startswith(b"HTTP/1.1 200"):
        raise ConnectionError("answer %r" % data[:60])


def churn_worker(args):
    a, n = args
    ctx = context(a)
    ok, failed, errors = 0, 0, []
    for _ in range(n):
        try:
            one_connection(ctx, a.port, a.timeout)
            ok += 1
        except (OSError, ssl.SSLError, ConnectionError) as e:
            failed += 1
            if len(errors) < 5:
                errors.append(repr(e))
    return ok, failed, errors


def _child(fn, job, conn):
    try:
        conn.send(("ok", fn(job)))
    except BaseException as e:  # reported by the parent, which then fails
        conn.send(("error", repr(e)))
    finally:
        conn.close()


def run_in_processes(fn, jobs, budget_s):
    """fn(job) for each job in its own process; returns their results.
    Not multiprocessing.Pool: its terminate() can wait for ever on a queue
    lock a worker holds, and a worker that dies loses its task silently (an
    idle run in CI hung 600 s after kgated had closed its connections). Here each child has its own pipe, and one
    that misses the budget is killed and named, so a run always ends."""
    ctx = multiprocessing.get_context("fork")
    running = []
    try:
        for job in jobs:
            parent_end, child_end = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_child, args=(fn, job, child_end), daemon=True)
            proc.start()
            child_end.close()
            running.append((proc, parent_end))
        deadline = time.monotonic() + budget_s
        results, problems = [], []
        for i, (proc, conn) in enumerate(running):
            if not conn.poll(max(0.0, deadline - time.monotonic())):
                problems.append("process %d still running after the %.0f s budget" % (i, budget_s))
                continue
            try:
                status, value = conn.recv()
            except EOFError:
                problems.append("process %d died (exit %s)" % (i, proc.exitcode))
                continue
            if status == "ok":
                results.append(value)
            else:
                problems.append("process %d raised %s" % (i, value))
        return results, problems
    finally:
        for proc, conn in running:
            if proc.is_alive():
                proc.kill()
            proc.join()
            conn.close()


def churn(a):
    per = [a.total // a.procs + (1 if i < a.total % a.procs else 0) for i in range(a.procs)]
    t0 = time.monotonic()
    results, problems = run_in_processes(churn_worker, [(a, n) for n in per], a.budget)
    secs = time.monotonic() - t0
    out = {"ok": sum(r[0] for r in results), "failed": sum(r[1] for r in results),
           "errors": [e for r in results for e in r[2]][:10], "seconds": round(secs, 2),
           "per_process": [r[0] for r in results], "problems": problems}
    print(json.dumps(out), flush=True)
    return 1 if problems else 0


def idle_worker(args):
    a, count = args
    raise_fd_limit(count + 64)
    ctx = context(a)
    sel = selectors.DefaultSelector()
    delays = []

    def poll_closed(timeout):
        """Records the connections the server has closed by now."""
        for key, _ in sel.select(timeout=timeout):
            s = key.fileobj
            try:
                if s.recv(4096):
                    continue  # bytes from an idle connection: not a close
            except ssl.SSLWantReadError:
                continue
            except (ssl.SSLError, OSError):
                pass
            delays.append(time.monotonic() - key.data)
            sel.unregister(s)
            s.close()

    for i in range(count):
        raw = socket.create_connection(("127.0.0.1", a.port), timeout=a.timeout)
        s = ctx.wrap_socket(raw, server_hostname="localhost")
        # kgated's last activity on the connection comes after this (the
        # request, then the answer), so a close is never early measured
        # from here, however late this process reads the answer.
        since = time.monotonic()
        s.sendall(REQUEST % b"keep-alive")
        read_response(s)
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, since)
        if i % 20 == 19:
            poll_closed(0)  # the first ones may time out while the rest open
    deadline = time.monotonic() + a.hold
    while len(delays) < count and time.monotonic() < deadline:
        poll_closed(0.2)
    for key in list(sel.get_map().values()):
        key.fileobj.close()
    return delays, count


def idle(a):
    per = [a.count // a.procs + (1 if i < a.count % a.procs else 0) for i in range(a.procs)]
    results, problems = run_in_processes(idle_worker, [(a, n) for n in per], a.budget)
    delays = [x for r in results for x in r[0]]
    out = {"closed": len(delays), "still_open": a.count - len(delays),
           "min_s": round(min(delays), 3) if delays else None,
           "max_s": round(max(delays), 3) if delays else None, "problems": problems}
    print(json.dumps(out), flush=True)
    return 1 if problems else 0


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=["churn", "idle"])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--ca", required=True)
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--total", type=int, default=1000)
    p.add_argument("--procs", type=int, default=min(4, os.cpu_count() or 1))
    p.add_argument("--count", type=int, default=2000)
    p.add_argument("--hold", type=float, default=120.0)
    p.add_argument("--timeout", type=float, default=20.0)
    p.add_argument("--budget", type=float, default=3600.0,
                   help="seconds the client processes may take in all; then they are killed")
    a = p.parse_args()
    # SIGTERM unwinds through run_in_processes, which kills the client
    # processes: none outlives this one.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    return churn(a) if a.mode == "churn" else idle(a)


if __name__ == "__main__":
    sys.exit(main())
