"""A WSGI app that answers with its environ's text values as JSON: what a
WSGI backend believes about a request (HTTP_* keys, REMOTE_ADDR). Served by
wsgiref in-process and by gunicorn (test_identity.py)."""
import json


def app(environ, start_response):
    seen = {k: v for k, v in environ.items() if isinstance(v, str)}
    body = json.dumps(seen).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]
