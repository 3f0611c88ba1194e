#!/usr/bin/python3
"""A tiny HTTP/1.1 backend for the demo and the health-check tests: answers
every GET with "backend=NAME" (status --status, after --delay-ms), plus
"client=DN" when an https listener sent the client's subject, and with
--peer "peer=IP" (the address the request came from: in the fleet lane,
which kgated instance forwarded it). Prints "listening on PORT" once bound
(port 0 = any) on --bind (default 127.0.0.1)."""
import argparse
import http.server
import sys
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", required=True)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--status", type=int, default=200)
    ap.add_argument("--delay-ms", type=int, default=0)
    ap.add_argument("--bind", default="127.0.0.1")
    ap.add_argument("--peer", action="store_true")
    args = ap.parse_args()
    body = f"backend={args.name}\n".encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            if args.delay_ms:
                time.sleep(args.delay_ms / 1000)
            out = body
            # Behind an https listener: say who kgate says the client is.
            client = self.headers.get("X-Forwarded-Clientcert-subjectdn")
            if client:
                out = body[:-1] + f" client={client}\n".encode()
            if args.peer:
                out = out[:-1] + f" peer={self.client_address[0]}\n".encode()
            self.send_response(args.status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer((args.bind, args.port), Handler)
    srv.daemon_threads = True
    print(f"listening on {srv.server_address[1]}", flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
