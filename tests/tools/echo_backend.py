#!/usr/bin/python3
"""A TCP echo backend for the .deb lane's load (tls and tcp listeners, see
upgrade_load.py): sends every byte back, half-closes after the client's
EOF. Prints "listening on PORT" once bound (port 0 = any); SIGTERM stops it."""
import argparse
import signal
import socket
import socketserver
import sys


class Echo(socketserver.BaseRequestHandler):
    def handle(self):
        sock = self.request
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the client went away: nothing to echo to


class Server(socketserver.ThreadingTCPServer):
    # Bursts of new connections (a restart's backlog) must not overflow.
    request_queue_size = 1024
    daemon_threads = True
    allow_reuse_address = True


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    srv = Server(("127.0.0.1", args.port), Echo)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print("listening on %d" % srv.server_address[1], flush=True)
    srv.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
