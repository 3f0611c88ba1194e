#!/usr/bin/python3
"""Bounded mTLS load loop for live-change tests, run as a second process.

load_loop.py PORT CA CERT KEY STOPFILE OUTFILE [MAX_REQUESTS] [MAX_SECONDS]

Sends sequential HTTPS GETs (fresh TLS connection each, so every request
is a new handshake) to 127.0.0.1:PORT until STOPFILE exists, MAX_REQUESTS
were sent or MAX_SECONDS passed, then writes a JSON summary to OUTFILE:
{"ok": N, "failed": N, "errors": [...first 20...], "backends": {name: N}}.
"""
import json
import os
import ssl
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                                "integration"))
from conftest import https_get  # noqa: E402  (the harness's one GET)


def main():
    port, ca, cert, key, stop, out = sys.argv[1:7]
    max_n = int(sys.argv[7]) if len(sys.argv) > 7 else 5000
    max_s = float(sys.argv[8]) if len(sys.argv) > 8 else 60.0
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(ca)
    ctx.load_cert_chain(cert, key)
    res = {"ok": 0, "failed": 0, "errors": [], "backends": {}}
    deadline = time.monotonic() + max_s
    n = 0
    while n < max_n and time.monotonic() < deadline and not os.path.exists(stop):
        n += 1
        try:
            body = https_get(ctx, int(port)).strip()
            res["ok"] += 1
            res["backends"][body] = res["backends"].get(body, 0) + 1
        except Exception as e:  # every failure is counted and reported
            res["failed"] += 1
            if len(res["errors"]) < 20:
                res["errors"].append(repr(e))
    with open(out + ".tmp", "w") as f:
        json.dump(res, f)
    os.rename(out + ".tmp", out)


if __name__ == "__main__":
    main()
