#!/usr/bin/python3
"""Failing clients for the soak: round after round until SIGTERM, one of
each kind per round: no client certificate, a revoked one, garbage instead
of a ClientHello, half a ClientHello then a reset, connect and close, a
good handshake then garbage records. Prints the count per kind at exit.
Usage: bad_clients.py PORT CA CLIENT_CERT CLIENT_KEY REVOKED_CERT REVOKED_KEY"""
import os
import signal
import socket
import ssl
import struct
import sys
import time

port, ca, cert, key, rcert, rkey = sys.argv[1], *sys.argv[2:7]
port = int(port)
stop = False
counts = {}
RST = struct.pack("ii", 1, 0)


def on_term(*_):
    global stop
    stop = True


def ctx(c=None, k=None):
    x = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    x.load_verify_locations(ca)
    if c:
        x.load_cert_chain(c, k)
    return x


def conn():
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def tls_refused(context):
    """The handshake, then a read: must end in an error or EOF."""
    with conn() as raw:
        try:
            s = context.wrap_socket(raw, server_hostname="localhost")
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            return s.recv(100) == b""
        except (ssl.SSLError, OSError):
            return True


def hello_bytes():
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    try:
        ctx().wrap_bio(inc, out, server_hostname="localhost").do_handshake()
    except ssl.SSLWantReadError:
        pass
    return out.read()


def main():
    signal.signal(signal.SIGTERM, on_term)
    no_cert, revoked, good = ctx(), ctx(rcert, rkey), ctx(cert, key)
    hello = hello_bytes()
    unexpected = 0
    while not stop:
        for kind in ("no-cert", "revoked", "garbage", "half-hello-rst", "connect-close",
                     "garbage-after-handshake"):
            try:
                if kind == "no-cert":
                    ok = tls_refused(no_cert)
                elif kind == "revoked":
                    ok = tls_refused(revoked)
                elif kind == "garbage":
                    with conn() as s:
                        s.sendall(b"\x47" + os.urandom(2047))
                        ok = s.recv(100) is not None
                elif kind == "half-hello-rst":
                    s = conn()
                    s.sendall(hello[: len(hello) // 2])
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RST)
                    s.close()
                    ok = True
                elif kind == "connect-close":
                    conn().close()
                    ok = True
                else:
                    raw = conn()
                    s = good.wrap_socket(raw, server_hostname="localhost")
                    os.write(s.fileno(), bytes([23, 3, 3, 0, 64]) + os.urandom(64))
                    s.settimeout(5)
                    try:
                        s.recv(100)
                    except (ssl.SSLError, OSError):
                        pass
                    s.close()
                    ok = True
            except OSError:
                ok = kind in ("garbage",)  # a reset is a fine answer to garbage
            counts[kind] = counts.get(kind, 0) + 1
            if not ok:
                unexpected += 1
        time.sleep(0.05)
    print("bad_clients: " + " ".join("%s=%d" % kv for kv in sorted(counts.items()))
          + " accepted_when_it_should_not=%d" % unexpected)
    return 1 if unexpected else 0


if __name__ == "__main__":
    sys.exit(main())
