#!/usr/bin/python3
"""Client load for the fleet lane, run inside the client namespace: mutual
TLS connections to the anycast address, one GET each, and keep-alive
connections held open, each request answered by a backend that names the
kgated instance that forwarded it ("peer=IP", http_backend.py --peer).

fleet_client.py --vip IP --port P --ca CA --cert CERT --key KEY --out FILE
                (--count N | --stop FILE [--rate R] [--held H]) [--threads T]

--count N: exactly N new connections over T threads, then exit.
--resume V (TLSv1_2 or TLSv1_3) [--trials K]: K times (default 1), one
connection, then new ones offering its session until one reaches another
instance (at most 200): writes {"trials": [{"first", "other", "reused",
"tries"}, ...], "resumed": how many of them resumed}.
--stop FILE: new connections at about R per second until FILE exists (at
most --seconds), and H held connections sending a GET every 100 ms.
Writes JSON to FILE (atomically): {"new": [[t0, t1, ok, kind, instance],
...], "held": [{"instance", "t_open", "t_end", "ok", "failed", "kind"}]};
times are CLOCK_MONOTONIC seconds, the same clock as the test's.
"""
import argparse
import json
import os
import socket
import ssl
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tools"))
from upgrade_load import BadReply, classify, read_response_body  # noqa: E402

TIMEOUT = 3.0


def read_response(s, buf):
    """One response: (instance, keep-alive?, leftover bytes)."""
    _, alive, body, rest = read_response_body(s, buf)
    peer = [w[5:] for w in body.decode().split() if w.startswith("peer=")]
    if not peer:
        raise BadReply("no peer= in %r" % body)
    return peer[0], alive, rest


class Client:
    def __init__(self, a):
        self.a = a
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self.ctx.load_verify_locations(a.ca)
        self.ctx.load_cert_chain(a.cert, a.key)
        self.lock = threading.Lock()
        self.new = []
        self.held = []

    def connect(self):
        raw = socket.create_connection((self.a.vip, self.a.port), timeout=TIMEOUT)
        try:
            return self.ctx.wrap_socket(raw, server_hostname="localhost")
        except BaseException:
            raw.close()
            raise

    def one(self):
        t0 = time.monotonic()
        try:
            with self.connect() as s:
                s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                inst, _, _ = read_response(s, b"")
            rec = [t0, time.monotonic(), True, "", inst]
        except Exception as e:  # every failure is counted, by kind
            rec = [t0, time.monotonic(), False, classify(e), ""]
        with self.lock:
            self.new.append(rec)

    def resume_elsewhere(self, version):
        """A session from one instance, offered to another one."""
        v = getattr(ssl.TLSVersion, version)
        self.ctx.minimum_version = self.ctx.maximum_version = v

        def get(session=None):
            raw = socket.create_connection((self.a.vip, self.a.port), timeout=TIMEOUT)
            with self.ctx.wrap_socket(raw, server_hostname="localhost", session=session) as s:
                s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                inst, _, _ = read_response(s, b"")
                return inst, s.session_reused, s.session
        first, _, sess = get()
        for tries in range(1, 201):
            inst, reused, _ = get(sess)
            if inst != first:
                return {"first": first, "other": inst, "reused": reused, "tries": tries}
        return {"first": first, "other": None, "reused": False, "tries": 200}

    def counted(self, n):
        left = [n]

        def run():
            while True:
                with self.lock:
                    if left[0] == 0:
                        return
                    left[0] -= 1
                self.one()
        threads = [threading.Thread(target=run) for _ in range(self.a.threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def paced(self, stop, rate):
        period = 1.0 / rate
        nxt = time.monotonic()
        while not stop.is_set():
            self.one()
            nxt += period
            delay = nxt - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                nxt = time.monotonic()

    def hold(self, stop):
        """One kept-alive connection at a time: a GET every 100 ms; when it
        fails, the failure is recorded and a new one is opened."""
        while not stop.is_set():
            rec = {"instance": "", "t_open": time.monotonic(), "t_end": None, "ok": 0,
                   "failed": False, "kind": ""}
            try:
                s = self.connect()
            except Exception as e:
                rec.update(t_end=time.monotonic(), failed=True, kind="connect:" + classify(e))
                with self.lock:
                    self.held.append(rec)
                time.sleep(0.1)
                continue
            buf = b""
            with s:
                while not stop.is_set():
                    try:
                        s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
                        inst, alive, buf = read_response(s, buf)
                    except Exception as e:
                        rec.update(failed=True, kind=classify(e))
                        break
                    rec["instance"] = rec["instance"] or inst
                    rec["ok"] += 1
                    if not alive:
                        rec["kind"] = "closed_by_kgated"
                        break
                    stop.wait(0.1)
            rec["t_end"] = time.monotonic()
            with self.lock:
                self.held.append(rec)


def main():
    ap = argparse.ArgumentParser()
    for name in ("vip", "ca", "cert", "key", "out"):
        ap.add_argument("--" + name, required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--count", type=int, default=0)
    ap.add_argument("--stop")
    ap.add_argument("--rate", type=float, default=50.0)
    ap.add_argument("--held", type=int, default=0)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=120.0)
    ap.add_argument("--resume")
    ap.add_argument("--trials", type=int, default=1)
    a = ap.parse_args()
    c = Client(a)
    if a.resume:
        trials = [c.resume_elsewhere(a.resume) for _ in range(a.trials)]
        result = {"trials": trials, "resumed": sum(1 for t in trials if t["reused"])}
        with open(a.out + ".tmp", "w") as f:
            json.dump(result, f)
        os.rename(a.out + ".tmp", a.out)
        return 0
    if a.count:
        c.counted(a.count)
    else:
        stop = threading.Event()
        threads = [threading.Thread(target=c.paced, args=(stop, a.rate / a.threads))
                   for _ in range(a.threads)]
        threads += [threading.Thread(target=c.hold, args=(stop,)) for _ in range(a.held)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + a.seconds
        while time.monotonic() < deadline and not os.path.exists(a.stop):
            time.sleep(0.02)
        stop.set()
        for t in threads:
            t.join(TIMEOUT * 3)
    with open(a.out + ".tmp", "w") as f:
        json.dump({"new": c.new, "held": c.held}, f)
    os.rename(a.out + ".tmp", a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
