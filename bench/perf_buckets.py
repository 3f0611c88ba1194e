#!/usr/bin/python3
"""Where a proxy's CPU goes in a full mTLS handshake or a keep-alive
request, by what the code is doing rather than by object: a perf.data
recorded with `bench/run --profile DIR --profile-call-graph dwarf` (issue
19 §2, the floor).

bench/perf_buckets.py FILE.perf.data [FILE2 ...] [--us-per-unit X ...] [--top N]

Debian's libcrypto and libssl have no symbols for their internals, so a
flat profile names only addresses there. With dwarf unwinding (.eh_frame)
the exported callers of those hot loops resolve, and each sample is
filed by the first rule its call chain meets (order matters):

1. leaf in the kernel: by the kernel frames (TCP send, which on loopback
   also delivers to the peer's socket; TCP receive; accept; close; page
   faults; io_uring and scheduling);
2. under X509_verify_cert: the CA's signature (ECDSA_do_verify below it)
   or the rest of the chain work;
3. ECDSA sign and verify (ECDSA_sign_ex / ECDSA_do_verify: the math),
   EVP_DigestSign/Verify around them (context, fetch, the hash); in
   Debian's OpenSSL 3.0 build the ECDSA_* frames do not show (the
   provider reaches the math through internal calls), so the math is
   counted under EVP_DigestSign/Verify and X509_verify_cert;
4. the key share (EVP_PKEY_keygen, _derive, encoded public keys), HKDF
   (EVP_KDF_*), RNG, session serialisation, hashes and MACs, ciphers,
   certificate and key decoding, provider fetches; the allocator's share
   of each is given with it;
5. a leaf in malloc/free (glibc, mimalloc, jemalloc) outside those;
6. otherwise the leaf's object (kgated, libssl, libcrypto, libc, ...).

With --us-per-unit (CPU per handshake or request from a bench run without
the profiler, one value per file) each bucket is also given in µs: share ×
that CPU (derived, not measured directly). Prints a Markdown table.
"""
import argparse
import collections
import re
import subprocess
import sys

MALLOC = re.compile(r"^(__libc_)?(malloc|free|calloc|realloc|cfree)$|^_int_(malloc|free|realloc)$|"
                    r"^malloc_consolidate$|^unlink_chunk|^tcache_|^__malloc_|^mi_|^_mi_|^je_|"
                    r"^arena_|^__GI___libc_(malloc|free)$|^_int_free_|^__libc_memalign$")

# (bucket, regex on a frame's symbol); the first rule whose regex matches
# any frame of the chain wins, so specific rules come first.
STACK_RULES = [
    ("X.509 chain: CA signature (ECDSA verify)",
     None),  # handled in code: X509_verify_cert and ECDSA_(do_)verify
    ("X.509 chain verification (X509_verify_cert; the CA's signature too unless split out)",
     re.compile(r"^X509_verify_cert$")),
    ("SSL_new / SSL_free (per-connection objects)", re.compile(r"^SSL_(new|free)$")),
    ("ECDSA P-256 sign (math)", re.compile(r"^ECDSA_(do_)?sign(_ex)?$")),
    ("ECDSA P-256 verify, CertificateVerify (math)", re.compile(r"^ECDSA_(do_)?verify$")),
    ("ECDSA sign + verify via EVP_DigestSign/Verify (the math too unless split out)",
     re.compile(r"^EVP_(DigestSign|DigestVerify|PKEY_sign|PKEY_verify)")),
    ("key share X25519 (keygen, derive, encode)",
     re.compile(r"^EVP_PKEY_(keygen|generate|paramgen|derive|set1_encoded_public_key|"
                r"get1_encoded_public_key|Q_keygen)")),
    ("HKDF (EVP_KDF)", re.compile(r"^EVP_KDF_")),
    ("RNG", re.compile(r"^(RAND_|EVP_RAND_)")),
    ("stateless ticket: d2i_SSL_SESSION (client certificate decoded again)",
     re.compile(r"^d2i_SSL_SESSION$")),
    ("session encoding (i2d_SSL_SESSION, SSL_SESSION_*)",
     re.compile(r"^i2d_SSL_SESSION$|^SSL_SESSION_")),
    ("hash / HMAC (transcript, Finished, ticket MAC)",
     re.compile(r"^(EVP_Digest|EVP_MD_CTX_|EVP_MAC_|EVP_Q_mac|HMAC|SHA256|SHA384)")),
    ("AES (records, ticket)",
     re.compile(r"^EVP_(Cipher|Encrypt|Decrypt)")),
    ("certificate / key decoding (client cert)",
     re.compile(r"^(d2i_X509|X509_(new|get0_pubkey|get_pubkey|PUBKEY_)|ASN1_item_d2i|"
                r"OSSL_DECODER|d2i_PUBKEY)")),
    ("provider fetch / EVP_PKEY_CTX set-up",
     re.compile(r"^(EVP_[A-Z_]+_fetch|EVP_PKEY_CTX_new|OSSL_|EVP_PKEY_fromdata|EVP_PKEY_dup|"
                r"EVP_PKEY_copy_parameters)")),
]

KERNEL_RULES = [
    ("kernel: page faults", re.compile(r"^(asm_)?exc_page_fault$|^handle_mm_fault$")),
    ("kernel: accept", re.compile(r"accept")),
    ("kernel: close / TCP teardown", re.compile(r"^(tcp_close|__tcp_close|inet_release|"
                                                 r"sock_close|io_close|tcp_fin|tcp_time_wait|"
                                                 r"inet_csk_destroy_sock|tcp_v4_destroy_sock)$")),
    ("kernel: TCP send (incl. loopback delivery to the peer)",
     re.compile(r"^tcp_sendmsg(_locked)?$")),
    ("kernel: TCP receive", re.compile(r"^tcp_recvmsg(_locked)?$")),
    ("kernel: softirq (incoming segments, ACKs, timers)",
     re.compile(r"^(__do_softirq|net_rx_action|do_softirq)$")),
    ("kernel: io_uring machinery",
     re.compile(r"^(io_|__io_|__x64_sys_io_uring|__do_sys_io_uring)")),
    ("kernel: scheduling, wakeups", re.compile(r"^(schedule|__schedule|try_to_wake_up)$")),
]


def dso_bucket(dso):
    base = dso.rsplit("/", 1)[-1]
    for key, name in (("kgated", "kgated's own code"), ("libssl", "libssl (state machine, "
                      "record layer)"), ("libcrypto", "libcrypto, unattributed"),
                      ("liburing", "liburing"), ("libc.so", "libc, other (memcpy, ...)"),
                      ("haproxy", "haproxy's own code"), ("nginx", "nginx's own code"),
                      ("libmimalloc", "malloc/free"), ("libjemalloc", "malloc/free")):
        if key in base:
            return name
    return "other (" + base + ")"


FRAME = re.compile(r"^\s+([0-9a-f]+)\s+(.*?)\s+\((.*)\)\s*$")


def samples(path):
    """(frames) per sample; frames are (sym, dso), leaf first."""
    p = subprocess.Popen(["perf", "script", "-i", path, "-F", "ip,sym,dso", "--no-inline"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                         errors="replace")
    cur = []
    for line in p.stdout:
        m = FRAME.match(line)
        if m:
            sym = m.group(2)
            sym = sym.split("+0x")[0]
            cur.append((sym, m.group(3)))
        elif not line.strip():
            if cur:
                yield cur
            cur = []
    if cur:
        yield cur
    p.wait()


def bucket(frames):
    leaf_sym, leaf_dso = frames[0]
    if "kernel.kallsyms" in leaf_dso or leaf_dso.startswith("[kernel"):
        ksyms = [s for s, d in frames if "kernel" in d]
        for name, rx in KERNEL_RULES:
            if any(rx.search(s) for s in ksyms):
                return name
        for s in ksyms:
            m = re.match(r"^__(x64|do)_sys_(\w+)$", s)
            if m:
                return f"kernel: {m.group(2)}() other"
        return "kernel: other"
    syms = [s for s, _ in frames]
    if "X509_verify_cert" in syms:
        below = syms[:syms.index("X509_verify_cert")]
        if any(re.match(r"^ECDSA_(do_)?verify$", s) for s in below):
            return STACK_RULES[0][0]
        return STACK_RULES[1][0]
    for name, rx in STACK_RULES[2:]:
        if any(rx.search(s) for s in syms):
            return name
    if MALLOC.search(leaf_sym):
        return "malloc/free (outside the operations above)"
    return dso_bucket(leaf_dso)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="+")
    ap.add_argument("--us-per-unit", type=float, nargs="*", default=[])
    ap.add_argument("--top", type=int, default=0, help="also the N hottest leaf symbols")
    ap.add_argument("--min-share", type=float, default=0.0, metavar="PCT",
                    help="buckets under PCT %% in every file are summed into one row")
    a = ap.parse_args()
    if a.us_per_unit and len(a.us_per_unit) != len(a.files):
        ap.error("one --us-per-unit value per file")
    results = []
    for path in a.files:
        counts = collections.Counter()
        mallocs = collections.Counter()  # of each bucket, samples in malloc/free
        leaves = collections.Counter()
        n = 0
        for fr in samples(path):
            b = bucket(fr)
            counts[b] += 1
            if MALLOC.search(fr[0][0]) and not b.startswith("malloc/free"):
                mallocs[b] += 1
            leaves[(fr[0][0], fr[0][1].rsplit("/", 1)[-1])] += 1
            n += 1
        results.append((path, n, counts, leaves, mallocs))
    names = []
    for _, _, c, _, _ in results:
        for k, _ in c.most_common():
            if k not in names:
                names.append(k)
    head = "| bucket | " + " | ".join(
        f"{p.rsplit('/', 1)[-1].replace('.perf.data', '')} (% of {n} samples"
        f"{', µs' if a.us_per_unit else ''})" for p, n, _, _, _ in results) + " |"
    print(head)
    print("|---" * (1 + len(results)) + "|")
    # Totals first: the merge below would hide kernel and allocator rows.
    kernel_tot = [sum(v for k, v in c.items() if k.startswith("kernel"))
                  for _, _, c, _, _ in results]
    malloc_tot = [sum(m.values()) + sum(v for k, v in c.items() if k.startswith("malloc/free"))
                  for _, _, c, _, m in results]
    small = [k for k in names
             if all(100 * c.get(k, 0) / n < a.min_share for _, n, c, _, _ in results if n)]
    if len(small) > 1:
        for _, _, c, _, m in results:
            c["the rest (each under %g %%)" % a.min_share] = sum(c.pop(k, 0) for k in small)
            m["the rest (each under %g %%)" % a.min_share] = sum(m.pop(k, 0) for k in small)
        names = [k for k in names if k not in small] + ["the rest (each under %g %%)" %
                                                        a.min_share]
    for k in names:
        cells = []
        for i, (_, n, c, _, m) in enumerate(results):
            share = c.get(k, 0) / n if n else 0
            cell = f"{100 * share:.1f} %"
            if a.us_per_unit:
                cell += f" / {share * a.us_per_unit[i]:.1f}"
            if m.get(k):
                cell += f" (malloc/free {100 * m[k] / n:.1f} %)"
            cells.append(cell)
        print(f"| {k} | " + " | ".join(cells) + " |")
    for label, totals in (("malloc/free, all of it (leaf in the allocator)", malloc_tot),
                          ("kernel, all of it", kernel_tot)):
        cells = []
        for i, (_, n, _, _, _) in enumerate(results):
            share = totals[i] / n
            cells.append(f"{100 * share:.1f} %" + (f" / {share * a.us_per_unit[i]:.1f}"
                                                    if a.us_per_unit else ""))
        print(f"| **{label}** | " + " | ".join(cells) + " |")
    if a.top:
        for p, n, _, leaves, _ in results:
            print(f"\nHottest leaves, {p.rsplit('/', 1)[-1]}:\n")
            print("| % | symbol | object |\n|---|---|---|")
            for (sym, dso), k in leaves.most_common(a.top):
                print(f"| {100 * k / n:.1f} | `{sym}` | {dso} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
