"""Backend groups and routes (kgate.json(5) backend_groups, backend_group,
routes, default_group): requests routed by Host (exact and wildcard),
path prefix, method and client-certificate attributes (certificates from
`kgatectl ca issue` with different OUs and SANs), the default group and
404, round robin and health checks per group (a dead member leaves only
its own group), one group shared by two listeners (one round robin, one
set of checks), a live route change that drops no connection, and the
group verbs through the control socket; route counters in metrics and
the route in the access log."""
import json
import os
import socket
import time

import pytest

from conftest import base_config, become_subreaper, dead_port, wait_until
from test_access import context, people  # noqa: F401 (people is a fixture)
from test_control import gated, port_of, scrape_metrics  # noqa: F401 (gated is a fixture)
from test_https import backends as keepalive_backends  # noqa: F401 (a fixture)


@pytest.fixture
def backends(keepalive_backends):  # noqa: F811
    """backends(*names): test_https's keep-alive backends (GET, HEAD and
    POST; the JSON they answer names them); one or a list."""
    def make(*names):
        out = keepalive_backends(*names)
        return out[0] if len(out) == 1 else out
    return make


def hits(b):
    return len(b.requests)


def group(*members, check=None):
    g = {"backends": [{"address": m if isinstance(m, str) else m.address} for m in members]}
    if check:
        g["health_check"] = check
    return g


def https_listener(name="web", **extra):
    lst = {"name": name, "protocol": "https", "bind": "127.0.0.1", "port": 0,
           "certificate": "web", "ca": "clients", "mutual_auth": "required"}
    lst.update(extra)
    return lst


def config(pki, people, listeners, groups, **settings):
    cfg = base_config(pki, listeners, **settings)
    cfg["certificates"]["clients"] = {"type": "ca", "cert": people["bundle"]}
    cfg["backend_groups"] = groups
    return cfg


def read_response(s):
    """One response from s: (status, body); keep-alive safe (Content-Length)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        k, _, v = line.partition(":")
        if k.strip().lower() == "content-length":
            length = int(v)
    while len(body) < length:
        chunk = s.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, body.decode()


def send(s, method="GET", path="/", host="localhost", close=True):
    extra = "Content-Length: 0\r\n" if method in ("POST", "PUT") else ""
    s.sendall(("%s %s HTTP/1.1\r\nHost: %s\r\n%s%s\r\n" % (
        method, path, host, extra, "Connection: close\r\n" if close else "")).encode())


def request(ctx, port, method="GET", path="/", host="localhost"):
    """One request on a fresh connection: (status, the backend's name or
    the body of kgate's own answer)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            send(s, method, path, host)
            status, body = read_response(s)
    if method == "HEAD":
        return status, ""
    return status, who(body)


def who(body):
    """The backend's name in its JSON answer, or kgate's own body."""
    try:
        return json.loads(body)["backend"]
    except ValueError:
        return body


ROUTES = [
    {"name": "admin-ops", "match": {"path_prefix": "/admin/", "cert": {"ou": "ops"}},
     "group": "ops"},
    {"name": "api-host", "match": {"host": "api.example.com"}, "group": "api"},
    {"name": "wild", "match": {"host": "*.example.net", "method": ["GET", "HEAD"]},
     "group": "web"},
    {"name": "v1", "match": {"path_prefix": "/v1/"}, "group": "api"},
    {"name": "post", "match": {"method": "POST", "path_prefix": "/p/"}, "group": "admin"},
    {"name": "spiffe", "match": {"path_prefix": "/s/",
                                 "cert": {"san_uri": "spiffe://other.org/*"}}, "group": "admin"},
]

# (who, method, path, host, group expected, route expected). The
# absolute-form target ("http://host/path") is refused by the parser
# before routing (400), so it has no case here.
CASES = [
    ("alice", "GET", "/admin/x", "localhost", "ops", "admin-ops"),  # OU ops
    ("bob", "GET", "/admin/x", "localhost", "dflt", "(default)"),   # OU dev: not that route
    ("alice", "GET", "/", "api.example.com", "api", "api-host"),
    ("alice", "GET", "/", "API.Example.COM:8443", "api", "api-host"),  # case, port
    ("alice", "GET", "/", "a.example.net", "web", "wild"),
    ("alice", "GET", "/", "b.c.example.net", "web", "wild"),
    ("alice", "HEAD", "/", "a.example.net", "web", "wild"),
    ("alice", "POST", "/", "a.example.net", "dflt", "(default)"),   # method not listed
    ("alice", "GET", "/", "example.net", "dflt", "(default)"),      # needs a label
    ("alice", "GET", "/", "xexample.net", "dflt", "(default)"),
    ("alice", "GET", "/v1/users?x=1", "localhost", "api", "v1"),
    ("alice", "GET", "/v1", "localhost", "dflt", "(default)"),      # bytes of "/v1/"
    ("alice", "GET", "/v2/v1/", "localhost", "dflt", "(default)"),
    ("bob", "POST", "/p/x", "localhost", "admin", "post"),
    ("bob", "GET", "/p/x", "localhost", "dflt", "(default)"),
    ("bob", "GET", "/s/1", "localhost", "admin", "spiffe"),         # SAN URI other.org
    ("alice", "GET", "/s/1", "localhost", "dflt", "(default)"),
]


@pytest.fixture
def routed(pki, people, gated, backends):
    """A listener with ROUTES over five one-member groups; metrics on."""
    bs = dict(zip(("ops", "api", "web", "admin", "dflt"),
                  backends("ops", "api", "web", "admin", "dflt")))
    mport = dead_port()
    d = gated(config=config(pki, people, [https_listener(
        routes=ROUTES, default_group="dflt", http={"access_log": "on"})],
        {n: group(b) for n, b in bs.items()}), args=["--metrics", "127.0.0.1:%d" % mport])
    d.mport = mport
    return d, bs


def test_routes_by_host_path_method_and_certificate(pki, people, routed):
    d, bs = routed
    ctxs = {w: context(pki, people[w]) for w in ("alice", "bob")}
    for who, method, path, host, want, _ in CASES:
        status, got = request(ctxs[who], d.port, method, path, host)
        assert status == 200, (who, method, path, host, status, got)
        if method != "HEAD":
            assert got == want, (who, method, path, host, got)
    counts = {n: hits(b) for n, b in bs.items()}
    assert counts == {g: sum(1 for c in CASES if c[4] == g) for g in bs}, counts
    # The access log names the route, "(default)" for the default group's.
    assert [e["route"] for e in d.events("http.access")] == [c[5] for c in CASES]
    # Metrics per listener and route, and the same in listener show.
    want = {r["name"]: sum(1 for c in CASES if c[5] == r["name"]) for r in ROUTES}
    want["(default)"] = sum(1 for c in CASES if c[5] == "(default)")
    want["(none)"] = 0
    _, values = scrape_metrics(d.mport)
    series = 'kgate_listener_route_requests_total{listener="web",route="%s"}'
    assert {r: values[series % r] for r in want} == want
    assert d.ctl.json("listener", "show", "web")["counters"]["routes"] == want


def test_no_default_group_answers_404(pki, people, gated, backends):
    a1, a2 = backends("a1", "a2")
    d = gated(config=config(pki, people, [https_listener(routes=ROUTES[1:2],
                                                         http={"access_log": "on"})],
                            {"api": group(a1, a2)}))
    ctx = context(pki, people["alice"])
    assert request(ctx, d.port, host="api.example.com")[0] == 200
    status, body = request(ctx, d.port, host="other.example.com")
    assert status == 404, body
    assert d.wait_event("http.error_response", status="404")
    # On one keep-alive connection: the second member of the group, then a
    # request no route takes. Its 404 names no backend of the one before.
    with socket.create_connection(("127.0.0.1", d.port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            send(s, host="api.example.com", close=False)
            assert read_response(s)[0] == 200
            send(s, host="other.example.com", close=False)
            assert read_response(s)[0] == 404
    logged = d.events("http.access")
    assert [(e["route"], e["status"]) for e in logged] == [
        ("api-host", "200"), ("(none)", "404"), ("api-host", "200"), ("(none)", "404")]
    assert logged[2]["backend"] != logged[0]["backend"]
    assert [e["backend"] for e in logged if e["status"] == "404"] == ["", ""]
    show = d.ctl.json("listener", "show", "web")
    assert show["counters"]["routes"] == {"api-host": 2, "(default)": 0, "(none)": 2}
    assert show["routes"] == [{"name": "api-host", "group": "api"}]
    assert show["default_group"] is None and show["members"] == []


def test_inline_backends_take_unmatched_requests(pki, people, gated, backends):
    api, own = backends("api", "own")
    d = gated(config=config(pki, people, [https_listener(
        routes=ROUTES[3:4], backends=[{"address": own.address}])], {"api": group(api)}))
    ctx = context(pki, people["alice"])
    assert request(ctx, d.port, path="/v1/x") == (200, "api")
    assert request(ctx, d.port, path="/x") == (200, "own")


def test_round_robin_per_group(pki, people, gated, backends):
    a1, a2, w1, w2, w3 = backends("a1", "a2", "w1", "w2", "w3")
    d = gated(config=config(pki, people, [https_listener(routes=ROUTES[3:4], default_group="w")],
                            {"api": group(a1, a2), "w": group(w1, w2, w3)}))
    ctx = context(pki, people["alice"])
    # One keep-alive connection: every request is balanced on its own,
    # each group with its own cursor, however they interleave.
    seen = []
    with socket.create_connection(("127.0.0.1", d.port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            for i in range(12):
                send(s, path="/v1/%d" % i if i % 2 == 0 else "/w/%d" % i, close=False)
                status, body = read_response(s)
                assert status == 200
                seen.append(who(body))
    assert seen[0::2] == ["a1", "a2"] * 3 or seen[0::2] == ["a2", "a1"] * 3, seen
    ws = seen[1::2]
    assert sorted(ws[:3]) == ["w1", "w2", "w3"] and ws[3:] == ws[:3], seen


def test_health_per_group(pki, people, gated, backends):
    """A dead member leaves only its own group: the other group, which
    lists no dead member, keeps both of its members in rotation."""
    a1, w1, w2 = backends("a1", "w1", "w2")
    dead = "127.0.0.1:%d" % dead_port()
    check = {"type": "tcp", "interval_ms": 100, "timeout_ms": 500, "healthy_threshold": 1,
             "unhealthy_threshold": 1}
    d = gated(config=config(pki, people, [https_listener(routes=ROUTES[3:4], default_group="w")],
                            {"api": group(a1, dead, check=check),
                             "w": group(w1, w2, check=check)}))
    assert d.wait_event("backend.health_changed", group="api", backend=dead, to="unhealthy",
                        timeout=10)
    ctx = context(pki, people["alice"])
    assert {request(ctx, d.port, path="/v1/%d" % i)[1] for i in range(6)} == {"a1"}
    assert {request(ctx, d.port, path="/x%d" % i)[1] for i in range(6)} == {"w1", "w2"}
    def statuses(name):
        return {m["address"]: m["status"] for m in d.ctl.json("group", "show", name)["members"]}
    status = {a1.address: "normal", dead: "abnormal"}
    assert wait_until(lambda: statuses("api") == status, 5), statuses("api")
    # Both of w's members checked (every 100 ms) and found up.
    assert wait_until(lambda: set(statuses("w").values()) == {"normal"}, 5), statuses("w")
    # listener show has each group it sends to, with its members' health.
    groups = {g["name"]: g for g in d.ctl.json("listener", "show", "web")["groups"]}
    assert set(groups) == {"api", "w"}
    assert {m["address"]: m["status"] for m in groups["api"]["members"]} == status
    text = d.ctl("listener", "show", "web").stdout
    part = text[text.index("\ngroup api:\n"):]
    assert "abnormal" in part.split("\ngroup w:\n")[0] and "normal" in part, text
    assert not d.events("backend.health_changed", group="w", to="unhealthy")


def test_group_shared_by_two_listeners(pki, people, gated, backends):
    a1, a2 = backends("a1", "a2")
    dead = "127.0.0.1:%d" % dead_port()
    check = {"type": "tcp", "interval_ms": 200, "timeout_ms": 500, "healthy_threshold": 1,
             "unhealthy_threshold": 1}
    tls = {"name": "raw", "protocol": "tls", "bind": "127.0.0.1", "port": 0,
           "certificate": "web", "ca": "clients", "backend_group": "api"}
    mport = dead_port()
    d = gated(config=config(pki, people, [https_listener(backend_group="api"), tls],
                            {"api": group(a1, a2, dead, check=check)}, workers=2),
              args=["--metrics", "127.0.0.1:%d" % mport])
    assert d.wait_event("backend.health_changed", group="api", backend=dead, to="unhealthy",
                        timeout=10)
    # One round robin over both listeners' traffic.
    ctx = context(pki, people["alice"])
    https_port, tls_port = port_of(d.ctl, "web"), port_of(d.ctl, "raw")
    got = []
    for i in range(4):
        got.append(request(ctx, https_port if i % 2 == 0 else tls_port)[1])
    assert sorted(got) == ["a1", "a1", "a2", "a2"] and got[0] != got[1] != got[2], got
    # One set of checks: the dead member is probed once per interval, not
    # once per listener (each check of it fails).
    time.sleep(1.0)
    _, v1 = scrape_metrics(mport)
    time.sleep(2.0)
    _, v2 = scrape_metrics(mport)
    key = 'kgate_backend_health_checks_total{group="api",backend="%s",result="failed"}' % dead
    rate = (v2[key] - v1[key]) / 2.0
    assert 2.5 <= rate <= 7.5, rate  # 5 per second at interval 200 ms, not 10
    assert len(d.events("backend.health_changed", group="api", backend=dead)) == 1
    # Both listeners show the group; delete is refused while in use.
    for name in ("web", "raw"):
        show = d.ctl.json("listener", "show", name)
        assert show["group"] == "api" and show["backend_group"] == "api"
        assert len(show["members"]) == 3
    used = d.ctl.json("group", "list")[0]["used_by"]
    assert sorted(used) == ["raw (backend_group)", "web (backend_group)"]
    msg = d.ctl.refused("group", "delete", "api", code="in_use")
    assert "raw (backend_group)" in msg and "web (backend_group)" in msg, msg


def test_group_health_carries_over_an_upgrade(pki, people, gated, backends):
    """A named group's verdicts go to the upgraded process (as "@name"):
    its dead member is down at once, with its time in that state going on,
    not "unknown" (which would be in rotation)."""
    become_subreaper()  # the upgraded kgated is adopted by this process
    a1 = backends("a1")
    dead = "127.0.0.1:%d" % dead_port()
    check = {"type": "tcp", "interval_ms": 200, "timeout_ms": 200, "healthy_threshold": 1,
             "unhealthy_threshold": 1}
    d = gated(config=config(pki, people, [https_listener(backend_group="api")],
                            {"api": group(a1, dead, check=check)}))

    def health():
        return {m["address"]: (m["health"], m["state"])
                for m in d.ctl.json("group", "show", "api")["members"]}
    want = {a1.address: ("healthy", "up"), dead: ("unhealthy", "down")}
    assert wait_until(lambda: health() == want, 10), health()
    time.sleep(1.2)
    d.upgrade()
    assert d.events("upgrade.inherited")[-1]["health"] == "true"
    assert health() == want
    members = d.ctl.json("group", "show", "api")["members"]
    assert all(m["in_state_s"] >= 1 for m in members), members


def test_live_route_change_keeps_connections(pki, people, gated, backends):
    api, web = backends("api", "web")
    d = gated(config=config(pki, people, [https_listener(routes=ROUTES[3:4], default_group="w")],
                            {"api": group(api), "w": group(web)}))
    ctx = context(pki, people["alice"])
    with socket.create_connection(("127.0.0.1", d.port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            send(s, path="/v1/a", close=False)
            assert who(read_response(s)[1]) == "api"
            new = [{"name": "v2", "match": {"path_prefix": "/v2/"}, "group": "api"}]
            out = d.ctl.json("listener", "update", "web", "--routes", json.dumps(new))
            assert out["routes"] == [{"name": "v2", "group": "api"}]
            # New connections take the new routes at once...
            assert request(ctx, d.port, path="/v1/a") == (200, "web")
            assert request(ctx, d.port, path="/v2/a") == (200, "api")
            # ...and the open one was not dropped: it keeps the routes it
            # started with.
            send(s, path="/v1/b", close=False)
            status, body = read_response(s)
            assert status == 200 and who(body) == "api", body
    # Persisted before the answer: the state document has the new routes.
    doc = json.load(open(os.path.join(d.state, "state.json")))
    assert doc["listeners"][0]["routes"] == new
    # default-group none with routes and no own group: 404 for the rest.
    d.ctl("listener", "update", "web", "--default-group", "none")
    assert request(ctx, d.port, path="/x")[0] == 404
    assert d.ctl.json("listener", "show", "web")["default_group"] is None


def test_group_verbs_through_the_socket(pki, people, gated, backends):
    a1, a2, own = backends("a1", "a2", "own")
    d = gated(config=config(pki, people, [https_listener(backends=[{"address": own.address}])],
                            {}))
    ctx = context(pki, people["alice"])
    assert request(ctx, d.port) == (200, "own")
    out = d.ctl.json("group", "create", "api", "--backend", a1.address,
                     "--health-check", '{"type": "tcp", "interval_ms": 200}')
    assert out["name"] == "api" and out["backends"] == 1 and out["health_check"] == "tcp"
    d.ctl("backend", "add", "--group", "api", a2.address, "--weight", "2")
    d.ctl.refused("group", "create", "api", "--backend", a1.address, code="already_exists")
    # backend_group replaces the inline backends.
    show = d.ctl.json("listener", "update", "web", "--backend-group", "api")
    assert show["backend_group"] == "api" and show["backends"] == 2
    got = [request(ctx, d.port)[1] for _ in range(6)]
    assert sorted(got) == ["a1", "a1", "a2", "a2", "a2", "a2"], got
    # A listener that sends to a group has no members of its own.
    msg = d.ctl.refused("backend", "add", "web", a1.address, code="invalid_argument")
    assert "--group" in msg, msg
    d.ctl("backend", "drain", "--group", "api", a2.address)
    assert {request(ctx, d.port)[1] for _ in range(3)} == {"a1"}
    members = {m["address"]: m for m in d.ctl.json("group", "show", "api")["members"]}
    assert members[a2.address]["drained"] and members[a2.address]["weight"] == 2
    d.ctl("backend", "enable", "--group", "api", a2.address)
    d.ctl("group", "update", "api", "--health-check", "none")
    assert d.ctl.json("group", "show", "api")["health_check"] == "none"
    d.ctl.refused("group", "delete", "api", code="in_use")
    d.ctl.refused("group", "show", "nope", code="not_found")
    d.ctl.refused("listener", "update", "web", "--backend-group", "nope",
                  code="invalid_argument")
    # Back to inline backends is delete + create; then the group can go.
    d.ctl("listener", "delete", "web")
    d.ctl("group", "delete", "api")
    assert d.ctl.json("group", "list") == []
    doc = json.load(open(os.path.join(d.state, "state.json")))
    assert "backend_groups" not in doc


ROUTE = [{"name": "a", "match": {"host": "x.example.com"}, "group": "api"}]


def routes_with(**match):
    return json.dumps([{"name": "a", "match": match, "group": "api"}])


# kgatectl listener create options after the common ones, and the message.
REFUSALS = [
    (["--backend-group", "nope"],
     'listeners[0].backend_group: no backend group named "nope"'),
    (["--routes", json.dumps([dict(ROUTE[0], group="nope")])],
     'listeners[0].routes[0].group: no backend group named "nope"'),
    (["--routes", routes_with(host="a.*.com")],
     'listeners[0].routes[0].match.host: "a.*.com": a wildcard is "*." at the start only'),
    (["--routes", routes_with(host="http://a.com/")],
     'listeners[0].routes[0].match.host: "http://a.com/": a host name has'),
    (["--routes", routes_with(path_prefix="v1")],
     'listeners[0].routes[0].match.path_prefix: must start with "/"'),
    (["--routes", routes_with(method="G ET")],
     "listeners[0].routes[0].match.method: expected a method"),
    (["--routes", routes_with(method=[])],
     "listeners[0].routes[0].match.method: must not be an empty array"),
    (["--routes", routes_with(cert={"cn": "x", "dept": "y"})],
     "listeners[0].routes[0].match.cert.dept: unknown key"),
    (["--routes", routes_with(cert={})],
     "listeners[0].routes[0].match.cert: needs at least one matcher"),
    (["--routes", routes_with()],
     "listeners[0].routes[0].match: needs at least one matcher"),
    (["--routes", json.dumps(ROUTE + ROUTE)],
     'listeners[0].routes[1].name: duplicate route name "a"'),
    (["--routes", json.dumps([{"name": "a b", "match": {"host": "x"}, "group": "api"}])],
     "listeners[0].routes[0].name: use 1-80 letters"),
    (["--routes", "[]"], "listeners[0].routes: must not be an empty array"),
    (["--backend-group", "api", "--backend", "127.0.0.1:1"],
     'listeners[0].backend_group: excludes "backends"'),
    (["--default-group", "api"], 'listeners[0].default_group: needs "routes"'),
    (["--default-group", "api", "--backend", "127.0.0.1:1", "--routes", json.dumps(ROUTE)],
     'listeners[0].default_group: excludes "backends"'),
    ([], 'listeners[0].backends: is required (or "backend_group", or "routes")'),
]


@pytest.mark.parametrize("i", range(len(REFUSALS)))
def test_refusals_name_the_json_path(pki, people, gated, backends, i):
    args, want = REFUSALS[i]
    api = backends("api")
    d = gated(config=config(pki, people, [], {"api": group(api)}))
    msg = d.ctl.refused("listener", "create", "--name", "web", "--protocol", "https",
                        "--port", "0", "--bind", "127.0.0.1", "--cert", "web", *args,
                        code="invalid_argument")
    assert want in msg, msg


def test_routes_refused_on_tls(pki, people, gated, backends):
    api = backends("api")
    d = gated(config=config(pki, people, [], {"api": group(api)}))
    msg = d.ctl.refused("listener", "create", "--name", "t", "--protocol", "tls", "--port", "0",
                        "--bind", "127.0.0.1", "--cert", "web", "--backend-group", "api",
                        "--routes", json.dumps(ROUTES[1:2]), code="invalid_argument")
    assert "listeners[0].routes: only for protocol \"https\"" in msg, msg


# --------------------------------------------------------------------------
# Through the store: kgatectl --store runs the same group and listener
# operations on the document in etcd (test_store_verbs.py's Pair: each verb
# against the store and against a reference kgated, same answers), and
# the instances that follow the store serve the result.

from test_store import ETCD, ETCDCTL, etcd, fresh, instances, kek  # noqa: F401,E402
from test_store_verbs import converge, pair, serves, show  # noqa: F401,E402


@pytest.mark.skipif(not ETCD or not ETCDCTL, reason="etcd-server/etcd-client not installed")
def test_group_verbs_through_the_store(pair, pki, instances, http_backends):  # noqa: F811
    a, b = http_backends("a", "b")
    store = pair.store
    insts = instances(store.etcd)
    pair.run("cert", "upload", "--name", "web", "--type", "server",
             "--cert", pki.cert("server"), "--key", pki.key("server"))
    pair.run("cert", "upload", "--name", "clients", "--type", "ca", "--cert", pki.ca)
    res = pair.run("group", "create", "api", "--backend", a.address,
                   "--health-check", '{"type": "tcp", "interval_ms": 500}')
    assert res["used_by"] == [] and res["members"][0]["address"] == a.address
    # What only a running kgated knows is null, never invented.
    assert res["members"][0]["health"] is None
    pair.run("listener", "create", "--name", "web", "--protocol", "https", "--port", "0",
             "--bind", "127.0.0.1", "--cert", "web", "--ca", "clients",
             "--mutual-auth", "required", "--backend-group", "api")
    converge(store, insts)
    for i in insts:
        assert show(i)["backend_group"] == "api" and serves(pki, i, "backend=a")
    # Members of the group, by the group.
    pair.run("backend", "add", "--group", "api", b.address, "--weight", "2")
    pair.run("backend", "drain", "--group", "api", a.address)
    converge(store, insts)
    for i in insts:
        m = {x["address"]: x for x in show(i)["members"]}
        assert m[b.address]["weight"] == 2 and m[a.address]["drained"]
        assert serves(pki, i, "backend=b")
    pair.run("backend", "enable", "--group", "api", a.address)
    # Routes and the default group, live.
    pair.run("group", "create", "v1", "--backend", b.address)
    routes = [{"name": "v1", "match": {"path_prefix": "/v1/"}, "group": "v1"}]
    res = pair.run("listener", "update", "web", "--routes", json.dumps(routes))
    assert res["routes"] == [{"name": "v1", "group": "v1"}]
    converge(store, insts)
    for i in insts:
        assert show(i)["routes"] == [{"name": "v1", "group": "v1"}]
        assert {g["name"] for g in show(i)["groups"]} == {"api", "v1"}
    # Refusals are the same through both: a group in use, an unknown one.
    msg = pair.run("group", "delete", "v1", fails=True)
    assert "in use by listener(s)" in msg and "web (routes[0])" in msg, msg
    msg = pair.run("listener", "update", "web", "--default-group", "nope", fails=True)
    assert "no backend group named" in msg, msg
    assert {g["name"] for g in pair.run("group", "list")} == {"api", "v1"}
    pair.run("group", "update", "v1", "--health-check", '{"type": "tcp"}')
    pair.run("listener", "update", "web", "--routes", "none")
    assert pair.run("group", "delete", "v1") == {"deleted": "v1"}
    doc = json.loads(store.raw())
    assert set(doc["backend_groups"]) == {"api"}
    assert doc["backend_groups"]["api"]["backends"][1] == {"address": b.address, "weight": 2}
    converge(store, insts)
    for i in insts:
        assert show(i)["routes"] is None and serves(pki, i, "backend=")
