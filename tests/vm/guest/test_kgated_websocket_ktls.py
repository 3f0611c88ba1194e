"""WebSocket tunnels on the https listener over kernel TLS (path
http-ktls-splice): after the backend's 101 both directions are spliced
(socket → pipe → socket) to their ends. The host's WebSocket tests
(tests/integration/test_websocket.py) are replayed against a kgated forced
onto the kTLS path, and one transfer proves the bytes went through the
pipes (kgatectl stats' spliced counters, /proc/net/tls_stat)."""
import asyncio
import inspect
import random

import pytest

from conftest import base_config, load_host_tests, path_count, tls_stat, tls_stat_delta
from test_kgated_https_ktls import PATH, ktls_kgated, spawn_adapter, spliced  # noqa: F401

ws = load_host_tests("test_websocket")
ws_backend = ws.ws_backend        # fixtures, registered here under their names
plain_backend = ws.plain_backend

MiB = 1 << 20

REPLAYED = [
    "test_echo_text_binary_many_and_large",
    "test_identity_reaches_the_handshake_and_spoofs_are_stripped",
    "test_other_upgrades_are_dropped_and_a_refused_upgrade_stays_http",
    "test_idle_timeout_cuts_a_silent_tunnel",
    "test_lifetime_limit_cuts_a_busy_tunnel",
    "test_backend_close_ends_the_tunnel",
    "test_client_end_is_passed_to_the_backend",
    "test_bytes_behind_the_handshake_go_first",
    "test_client_reset_mid_transfer_is_an_error_end",
    "test_drain_cuts_tunnels_at_the_deadline",
    "test_many_tunnels_leave_no_fd_behind",
]


@pytest.mark.parametrize("name", REPLAYED)
def test_host_websocket_behaviour(ktls_kgated, request, name):
    fn = getattr(ws, name)
    args = {"spawn_kgated": spawn_adapter(ktls_kgated)}
    for param in inspect.signature(fn).parameters:
        if param not in args:
            args[param] = request.getfixturevalue(param)
    fn(**args)


def test_tunnel_is_spliced_both_ways(ktls_kgated, pki, ws_backend):
    """8 MiB each way through one tunnel: all but the bytes that came
    with the heads go through the pipes, and the kernel did the TLS."""
    lst = ws.tls_listener(pki, [ws_backend.address], protocol="https", forwarding="splice",
                          http={"access_log": "on"})
    d = ktls_kgated(base_config(pki, [lst], log_level="debug"))
    big = random.Random(9).randbytes(8 * MiB)
    before = tls_stat()

    async def session():
        async with ws.connect(pki, d, "/echo") as conn:
            await conn.send(big)
            assert await conn.recv() == big
            return spliced(d)

    c2b, b2c = ws.run(session(), timeout=600)
    assert 8 * MiB <= c2b <= 9 * MiB and 8 * MiB <= b2c <= 9 * MiB, (c2b, b2c)
    delta = tls_stat_delta(before, tls_stat())
    assert delta["TlsRxSw"] >= 1 and delta["TlsTxSw"] >= 1, delta
    ev = d.wait_event("http.tunnel_opened", path="splice")
    assert ev, d.log()[-3000:]
    ended = d.wait_event("http.tunnel_closed", timeout=30)
    assert ended and ended[0]["reason"] in ("client", "backend"), d.log()[-3000:]
    assert d.terminate() == 0
    assert path_count(d, PATH) == 1
