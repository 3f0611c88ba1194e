"""Upgrades (SIGUSR2) while connections run over kernel TLS: the old
process keeps its kTLS connections (tls: ktls-splice, https:
http-ktls-splice) to their end, the new one takes new connections on the
same sockets and hands them to kTLS too. The host's upgrade load and
checks (tests/integration/test_upgrade.py) are reused."""
import time

import pytest

from conftest import become_subreaper, load_host_tests, path_count

host = load_host_tests("test_upgrade")


@pytest.fixture(scope="module", autouse=True)
def subreaper():
    become_subreaper()


def test_upgrades_under_ktls_load(ktls, spawn_kgated, pki, http_backends, echo_backend,
                                  tmp_path):
    http_b = http_backends("a")
    d = host.start(spawn_kgated, pki, http_b, echo_backend, tmp_path, drain_timeout_ms=10000)
    # The VM runs without KVM: a lower rate, fewer upgrades than the host's.
    load = host.Load(pki, tmp_path, d, rate=30, tcp_rate=30)
    try:
        time.sleep(2.0)
        for _ in range(5):
            d.upgrade(timeout=60)
            time.sleep(1.0)
        time.sleep(2.0)
    finally:
        summary = load.stop()
    print("load summary:", summary)
    host.assert_clean(summary, ["new", "https_keepalive", "tls_keepalive", "tcp"])
    d.check_retired(timeout=20)
    # Old and new processes alike put their TLS connections on kTLS.
    assert path_count(d, "ktls-splice") >= 5, d.log()[-3000:]
    assert path_count(d, "http-ktls-splice") >= 5, d.log()[-3000:]
    assert path_count(d, "userspace-tls") == 0
    assert path_count(d, "http-userspace-tls") == 0
