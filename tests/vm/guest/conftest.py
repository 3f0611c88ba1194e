"""Harness for tests that run inside the VM lane (tests/vm/run).

The guest sees the host's root read-only (with a tmpfs overlay), so these
tests run the host's openssl, python3 and the freshly built binaries from
$KG_BUILD_DIR, which tests/vm/run exports. Everything in
tests/integration/conftest.py (fixtures pki, spawn_kgated, echo_backend,
http_backends and helpers such as base_config, tls_listener, curl,
https_get, EchoSession) is re-exported here, so a guest test imports them
with `from conftest import ...` exactly as an integration test does.

To test kgated in the VM, drop a test_*.py here that imports from conftest
like tests/integration does and takes the `ktls` fixture when it needs
kernel TLS (see test_kgated_guest.py). It runs the kgated and kgatectl of
$KG_BUILD_DIR (tests/vm/run --build-dir, default build-asan): the
sanitizer build runs as is, since the guest uses the host's own libraries.

Outside the VM (no kTLS in the kernel) the kTLS tests skip; inside it
(KG_VM_KERNEL is set by tests/vm/run) a missing kTLS fails them, because
that lane exists to prove it.
"""
import importlib.util
import os
import sys

import pytest

_HARNESS = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                        "..", "..", "integration", "conftest.py")


def _load_harness():
    # Loaded under its own module name: both files are called conftest.py,
    # and pytest already registered this one as "conftest".
    spec = importlib.util.spec_from_file_location("kg_integration_harness",
                                                  _HARNESS)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


_harness = _load_harness()
# Fixtures, the failure-report hook and helpers become this conftest's own.
globals().update({k: v for k, v in vars(_harness).items()
                  if not k.startswith("_")})

def load_host_tests(name):
    """tests/integration/NAME.py as a module (its helpers and fixtures),
    for a guest test that replays host tests against a kTLS kgated."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                        "..", "..", "integration", name + ".py")
    spec = importlib.util.spec_from_file_location("kg_host_" + name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


TLS_STAT = "/proc/net/tls_stat"
IN_VM = bool(os.environ.get("KG_VM_KERNEL"))


def tls_stat():
    """/proc/net/tls_stat as {name: int} (TlsTxSw, TlsCurrRxSw, ...)."""
    out = {}
    with open(TLS_STAT) as f:
        for line in f:
            name, value = line.split()
            out[name] = int(value)
    return out


def tls_stat_delta(before, after):
    return {k: after[k] - before.get(k, 0) for k in after}


def require_ktls():
    """Skips outside the VM lane, fails inside it, when kTLS is missing."""
    if os.path.exists(TLS_STAT):
        return
    msg = "%s missing: kernel %s has no kTLS (tls.ko)" % (TLS_STAT,
                                                         os.uname().release)
    if IN_VM:
        pytest.fail(msg + " although this is the VM lane", pytrace=False)
    pytest.skip(msg + "; run through tests/vm/run")


@pytest.fixture
def ktls():
    """Use in every test that needs kernel TLS."""
    require_ktls()
