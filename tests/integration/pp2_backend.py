"""A backend that reads a PROXY protocol v2 header (HAProxy's
doc/proxy-protocol.txt) with its own parser, independent of kgate's
writer, answers one JSON line with the fields it found, then echoes.
Shared by tests/integration/test_proxy_protocol.py and the VM lane's
`ktls-splice` test (tests/vm/guest/test_kgated_proxy_v2.py)."""
import json
import socket
import struct

from conftest import ThreadedServer

SIG = b"\r\n\r\n\x00\r\nQUIT\n"
SSL_FLAGS = {"ssl": 0x01, "cert_conn": 0x02, "cert_sess": 0x04}
SUBTYPES = {0x21: "version", 0x22: "cn", 0x23: "cipher", 0x24: "sig_alg", 0x25: "key_alg"}


def parse_tlvs(data):
    """[(type, value)] of a TLV block; raises on a length past the end."""
    out, pos = [], 0
    while pos < len(data):
        if len(data) - pos < 3:
            raise ValueError("TLV head cut at %d" % pos)
        typ, length = data[pos], struct.unpack(">H", data[pos + 1:pos + 3])[0]
        if pos + 3 + length > len(data):
            raise ValueError("TLV 0x%02x length %d past the end" % (typ, length))
        out.append((typ, data[pos + 3:pos + 3 + length]))
        pos += 3 + length
    return out


def parse_v2(hdr):
    """The fields of one whole PROXY v2 header (16 + len bytes)."""
    assert hdr[:12] == SIG
    ver_cmd, fam, length = hdr[12], hdr[13], struct.unpack(">H", hdr[14:16])[0]
    body = hdr[16:]
    assert len(body) == length
    info = {"ver_cmd": ver_cmd, "fam": fam, "tlvs": {}}
    if fam == 0x11:
        src, dst, sport, dport = struct.unpack(">4s4sHH", body[:12])
        info.update(src=socket.inet_ntop(socket.AF_INET, src),
                    dst=socket.inet_ntop(socket.AF_INET, dst), rest=body[12:])
    elif fam == 0x21:
        src, dst, sport, dport = struct.unpack(">16s16sHH", body[:36])
        info.update(src=socket.inet_ntop(socket.AF_INET6, src),
                    dst=socket.inet_ntop(socket.AF_INET6, dst), rest=body[36:])
    else:
        raise ValueError("family 0x%02x" % fam)
    info.update(sport=sport, dport=dport)
    for typ, value in parse_tlvs(info.pop("rest")):
        assert typ not in info["tlvs"], "TLV 0x%02x twice" % typ
        if typ == 0x20:
            client, verify = value[0], struct.unpack(">I", value[1:5])[0]
            ssl_info = {"client": [k for k, bit in SSL_FLAGS.items() if client & bit],
                        "client_bits": client, "verify": verify}
            for sub, sval in parse_tlvs(value[5:]):
                name = SUBTYPES.get(sub, "0x%02x" % sub)
                assert name not in ssl_info, "sub-TLV %s twice" % name
                ssl_info[name] = sval.decode("utf-8")
            info["tlvs"]["ssl"] = ssl_info
        elif typ == 0x02:
            info["tlvs"]["authority"] = value.decode("utf-8")
        else:
            info["tlvs"]["0x%02x" % typ] = value.hex()
    return info


class ProxyV2Backend(ThreadedServer):
    """Per connection: reads a PROXY v2 header if the first bytes are its
    signature (strictly first: a client byte ahead of it shows as "no
    header"), answers one JSON line {"pp": fields or null}, then echoes."""

    def __init__(self):
        self.seen = []
        super().__init__()

    def handle(self, conn):
        conn.settimeout(20)
        buf = b""
        while len(buf) < 16 and SIG.startswith(buf[:12]):
            chunk = conn.recv(16 - len(buf))
            if not chunk:
                return
            buf += chunk
        pp = None
        if buf[:12] == SIG:
            length = struct.unpack(">H", buf[14:16])[0]
            while len(buf) < 16 + length:
                chunk = conn.recv(16 + length - len(buf))
                if not chunk:
                    return
                buf += chunk
            pp, buf = parse_v2(buf[:16 + length]), buf[16 + length:]
        with self.lock:
            self.seen.append(pp)
        conn.sendall(json.dumps({"pp": pp}).encode() + b"\n" + buf)
        while True:
            data = conn.recv(65536)
            if not data:
                return
            conn.sendall(data)


def read_line(sock):
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(1)
        assert chunk, "backend answer cut: %r" % data
        data += chunk
    return json.loads(data)["pp"]


def exchange(sock, payload=b"ping"):
    """Sends payload, returns the backend's PROXY fields; checks the echo."""
    sock.sendall(payload)
    pp = read_line(sock)
    got = b""
    while len(got) < len(payload):
        chunk = sock.recv(len(payload) - len(got))
        assert chunk, "echo cut after %r" % got
        got += chunk
    assert got == payload
    return pp
