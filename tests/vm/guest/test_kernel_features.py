"""The lane's kernel offers what kgate's kernel paths need — kTLS, io_uring,
sockmap/sockhash — probed with raw syscalls (ctypes), and refuses to mix
kTLS and sockmap on one socket in either order, the reason kgate has no
kTLS+sockmap path (README.md, "Forwarding paths"). A missing feature skips
outside the VM and fails inside it."""
import ctypes
import errno
import os
import socket
import struct

import pytest

from conftest import IN_VM

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long

SYS_BPF = 321            # x86_64
SYS_IO_URING_SETUP = 425
BPF_MAP_CREATE, BPF_MAP_UPDATE_ELEM, BPF_MAP_DELETE_ELEM = 0, 2, 3
BPF_MAP_TYPE_SOCKMAP, BPF_MAP_TYPE_SOCKHASH = 15, 18
SOL_TLS, TLS_TX, TLS_RX = 282, 1, 2
TCP_ULP = 31
TLS_1_2_VERSION = 0x0303
TLS_CIPHER_AES_GCM_128 = 51


def missing(what):
    if IN_VM:
        pytest.fail(what + " in the VM lane's kernel", pytrace=False)
    pytest.skip(what + " in kernel " + os.uname().release)


def kernel_config():
    path = "/boot/config-" + os.uname().release
    if not os.path.exists(path):
        missing("no " + path)
    with open(path) as f:
        return dict(line.strip().split("=", 1) for line in f
                    if "=" in line and not line.startswith("#"))


def test_kernel_config_matches_running_kernel():
    cfg = kernel_config()
    if IN_VM:
        assert os.uname().release == os.environ["KG_VM_KERNEL"]
    for opt in ("CONFIG_IO_URING", "CONFIG_BPF_SYSCALL",
                "CONFIG_BPF_STREAM_PARSER"):
        assert cfg.get(opt) == "y", opt
    if cfg.get("CONFIG_TLS") not in ("y", "m"):
        missing("CONFIG_TLS unset")


def test_tls_module_loaded(ktls):
    with open("/proc/modules") as f:
        names = {line.split()[0] for line in f}
    # Built in (=y) needs no module; Debian builds it as one.
    assert "tls" in names or kernel_config().get("CONFIG_TLS") == "y"


def test_io_uring_setup():
    params = ctypes.create_string_buffer(120)  # struct io_uring_params
    fd = libc.syscall(SYS_IO_URING_SETUP, 8, params)
    if fd < 0:
        missing("io_uring_setup failed: %s" % os.strerror(ctypes.get_errno()))
    os.close(fd)
    sq_entries, cq_entries, flags, _, _, features = struct.unpack_from(
        "<6I", params.raw)
    assert sq_entries == 8 and cq_entries == 16
    assert features != 0, "no IORING_FEAT_* bits"


class BpfAttr(ctypes.Structure):
    # The union bpf_attr members used here, overlaid on one 128-byte block.
    _fields_ = [("raw", ctypes.c_uint8 * 128)]


def bpf(cmd, fmt, *values):
    attr = BpfAttr()
    struct.pack_into(fmt, attr.raw, 0, *values)
    res = libc.syscall(SYS_BPF, cmd, ctypes.byref(attr), ctypes.sizeof(attr))
    return res, ctypes.get_errno()


def map_create(map_type, key_size):
    fd, err = bpf(BPF_MAP_CREATE, "<4I", map_type, key_size, 4, 4)
    if fd < 0:
        missing("BPF map type %d: %s" % (map_type, os.strerror(err)))
    return fd


def map_update(map_fd, key_bytes, sock_fd):
    key = ctypes.create_string_buffer(key_bytes)
    val = ctypes.c_uint32(sock_fd)
    return bpf(BPF_MAP_UPDATE_ELEM, "<IIQQQ", map_fd, 0,
               ctypes.addressof(key), ctypes.addressof(val), 0)


def map_delete(map_fd, key_bytes):
    key = ctypes.create_string_buffer(key_bytes)
    return bpf(BPF_MAP_DELETE_ELEM, "<IIQ", map_fd, 0, ctypes.addressof(key))


@pytest.fixture
def tcp_pair():
    """A connected loopback TCP pair (client, server side)."""
    lst = socket.create_server(("127.0.0.1", 0))
    cli = socket.create_connection(lst.getsockname())
    srv, _ = lst.accept()
    lst.close()
    yield cli, srv
    cli.close()
    srv.close()


@pytest.mark.parametrize("map_type,key_size", [
    (BPF_MAP_TYPE_SOCKMAP, 4), (BPF_MAP_TYPE_SOCKHASH, 8)],
    ids=["sockmap", "sockhash"])
def test_sockmap_accepts_established_tcp(tcp_pair, map_type, key_size):
    fd = map_create(map_type, key_size)
    try:
        key = bytes(key_size)
        res, err = map_update(fd, key, tcp_pair[0].fileno())
        assert res == 0, "map update: " + os.strerror(err)
        res, err = map_delete(fd, key)
        assert res == 0, "map delete: " + os.strerror(err)
    finally:
        os.close(fd)


def set_ktls_tx(sock):
    """TCP_ULP "tls" then TLS_TX with a dummy AES-GCM-128 key. Returns the
    errno of the first step that failed, 0 when both worked."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, TCP_ULP, b"tls")
        # struct tls12_crypto_info_aes_gcm_128: version, cipher, iv[8],
        # key[16], salt[4], rec_seq[8]; the key's value does not matter.
        info = struct.pack("<HH8s16s4s8s", TLS_1_2_VERSION,
                           TLS_CIPHER_AES_GCM_128, bytes(8), bytes(16),
                           bytes(4), bytes(8))
        sock.setsockopt(SOL_TLS, TLS_TX, info)
    except OSError as e:
        return e.errno
    return 0


def test_ktls_setup_on_plain_socket(ktls, tcp_pair):
    assert set_ktls_tx(tcp_pair[0]) == 0


def test_ktls_refused_on_socket_in_sockmap(ktls, tcp_pair):
    """Debian 6.1.189+ carries "tls: reject the combination of TLS and
    sockmap": the ULP attaches, but TLS_TX is refused. (Deleted from the
    map again, with no programs attached, the socket takes TLS_TX; kgate
    does not rely on either: a kTLS socket never enters a sockmap.)"""
    fd = map_create(BPF_MAP_TYPE_SOCKMAP, 4)
    try:
        res, err = map_update(fd, bytes(4), tcp_pair[0].fileno())
        assert res == 0, "map update: " + os.strerror(err)
        assert set_ktls_tx(tcp_pair[0]) == errno.EINVAL
    finally:
        os.close(fd)


def test_sockmap_refuses_ktls_socket(ktls, tcp_pair):
    fd = map_create(BPF_MAP_TYPE_SOCKMAP, 4)
    try:
        assert set_ktls_tx(tcp_pair[0]) == 0
        res, err = map_update(fd, bytes(4), tcp_pair[0].fileno())
        assert (res, err) == (-1, errno.EINVAL)
    finally:
        os.close(fd)
