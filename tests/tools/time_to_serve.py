#!/usr/bin/python3
"""How long until a tls listener (an echo backend behind it) serves again.

time_to_serve.py --ca CA --cert CERT --key KEY --port N [--kill PID]
                 [--timeout S]

With --kill it first sends SIGKILL to PID (the clock starts there, so the
figure is the whole outage: systemd's RestartSec= plus start-up). Then one
mTLS connection with an echo exchange (upgrade_load.py's) every 20 ms until
one succeeds. Prints {"seconds": S, "attempts": N, "errors": {kind: N}} and
exits 0, or 1 when --timeout (default 30) passed first."""
import argparse
import json
import os
import signal
import ssl
import sys
import time

from upgrade_load import classify, new_tls


def main():
    ap = argparse.ArgumentParser()
    for name in ("ca", "cert", "key"):
        ap.add_argument("--" + name, required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--kill", type=int)
    ap.add_argument("--timeout", type=float, default=30.0)
    a = ap.parse_args()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(a.ca)
    ctx.load_cert_chain(a.cert, a.key)
    t0 = time.monotonic()
    if a.kill:
        os.kill(a.kill, signal.SIGKILL)
    attempts, errors, ok = 0, {}, False
    while not ok and time.monotonic() - t0 < a.timeout:
        attempts += 1
        try:
            new_tls(ctx, a.port)
            ok = True
        except Exception as e:  # counted by kind; the next try follows
            errors[classify(e)] = errors.get(classify(e), 0) + 1
            time.sleep(0.02)
    print(json.dumps({"seconds": round(time.monotonic() - t0, 3), "attempts": attempts,
                      "errors": errors, "served": ok}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
