/* The PROXY v2 header writer (proxy_v2.c kg_pp2_write) over any inputs:
 * address families, addresses, ports, SSL flags and verify result, and
 * strings of any length and content for version, CN, cipher, algorithms,
 * SNI and unique ID. The harness parses what the writer produced with its
 * own small reader (written from the spec, sharing no code with the
 * writer) and checks the round trip field by field; it also computes the
 * expected outcome independently (length, or which refusal), and checks
 * that a refusal writes nothing and that nothing is written past cap (the
 * output buffer is exactly cap bytes on the heap).
 *
 * Input: a 45-byte head, zero-padded when shorter —
 *   [0] flags: 1 src IPv6, 2 dst IPv6, 4 SSL TLV, 8 source is AF_UNIX,
 *       16 grow the CN
 *   [1..2] cap (big-endian) modulo KG_PP2_MAX + 64
 *   [3] grow: with flag 16, the CN is lengthened by grow * 512 bytes
 *       (repeating itself), so lengths past the 16-bit TLV field are
 *       reached; a flag keeps most inputs small and the harness fast
 *   [4..19] src address, [20..35] dst address (IPv4: first 4 bytes)
 *   [36..37] src port, [38..39] dst port, [40] client flags, [41..44] verify
 * then fields split by "\n--8<--\n": version, CN, cipher, sig_alg, key_alg,
 * authority, unique ID. */
#include <errno.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <string.h>

#include "fuzz_util.h"
#include "proxy_v2.h"

#define HEAD 45
#define NFIELDS 7

enum { F_VERSION, F_CN, F_CIPHER, F_SIG, F_KEY, F_AUTHORITY, F_UNIQUE };
static const uint8_t subtypes[] = {KG_PP2_SUBTYPE_SSL_VERSION, KG_PP2_SUBTYPE_SSL_CN,
				   KG_PP2_SUBTYPE_SSL_CIPHER, KG_PP2_SUBTYPE_SSL_SIG_ALG,
				   KG_PP2_SUBTYPE_SSL_KEY_ALG};

static unsigned be16(const uint8_t *p)
{
	return (unsigned)p[0] << 8 | p[1];
}

static void fill_addr(struct sockaddr_storage *ss, bool v6, const uint8_t *a, const uint8_t *port)
{
	memset(ss, 0, sizeof(*ss));
	if (v6) {
		struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
		in6->sin6_family = AF_INET6;
		memcpy(&in6->sin6_addr, a, 16);
		memcpy(&in6->sin6_port, port, 2);
	} else {
		struct sockaddr_in *in = (struct sockaddr_in *)ss;
		in->sin_family = AF_INET;
		memcpy(&in->sin_addr, a, 4);
		memcpy(&in->sin_port, port, 2);
	}
}

/* The 16-byte form of an input address as the header must carry it. */
static void wire_addr(uint8_t out[16], bool v6_header, bool v6, const uint8_t *a)
{
	if (!v6_header) {
		memcpy(out, a, 4);
		return;
	}
	if (v6) {
		memcpy(out, a, 16);
		return;
	}
	memset(out, 0, 10);
	out[10] = out[11] = 0xff;
	memcpy(out + 12, a, 4);
}

static size_t tlv(size_t len)
{
	return len ? 3 + len : 0;
}

/* One TLV at *pos of buf[0..end): type and value; false when cut. */
static bool read_tlv(const uint8_t *buf, size_t end, size_t *pos, uint8_t *type,
		     const uint8_t **val, size_t *len)
{
	if (end - *pos < 3)
		return false;
	*type = buf[*pos];
	*len = be16(buf + *pos + 1);
	if (end - *pos - 3 < *len)
		return false;
	*val = buf + *pos + 3;
	*pos += 3 + *len;
	return true;
}

/* Checks that the TLV value equals the expected field. */
static void same(const uint8_t *val, size_t len, const uint8_t *want, size_t want_len)
{
	KF_FAIL_IF(len != want_len);
	KF_FAIL_IF(len && memcmp(val, want, len) != 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	uint8_t head[HEAD] = {0};
	memcpy(head, data, size < HEAD ? size : HEAD);
	const uint8_t *rest = size > HEAD ? data + HEAD : data + size;
	size_t rest_len = size > HEAD ? size - HEAD : 0;

	const uint8_t *part[NFIELDS] = {0};
	size_t part_len[NFIELDS] = {0};
	size_t nparts = kf_split(rest, rest_len, KF_SEP, part, part_len, NFIELDS);
	for (size_t i = nparts; i < NFIELDS; i++)
		part[i] = rest, part_len[i] = 0;

	bool src6 = head[0] & 1, dst6 = head[0] & 2, has_ssl = head[0] & 4, unix_src = head[0] & 8;
	size_t cap = be16(head + 1) % (KG_PP2_MAX + 64);

	/* The CN, grown to any length by repeating itself. */
	size_t cn_len = part_len[F_CN] + (head[0] & 16 ? (size_t)head[3] * 512 : 0);
	uint8_t *cn = malloc(cn_len ? cn_len : 1);
	KF_FAIL_IF(!cn);
	if (part_len[F_CN] == 0)
		memset(cn, 'A', cn_len);
	for (size_t off = 0; part_len[F_CN] > 0 && off < cn_len; off += part_len[F_CN]) {
		size_t n = cn_len - off < part_len[F_CN] ? cn_len - off : part_len[F_CN];
		memcpy(cn + off, part[F_CN], n);
	}

	struct sockaddr_storage src, dst;
	fill_addr(&src, src6, head + 4, head + 36);
	fill_addr(&dst, dst6, head + 20, head + 38);
	if (unix_src)
		src.ss_family = AF_UNIX;
	uint32_t verify = (uint32_t)head[41] << 24 | (uint32_t)head[42] << 16 |
			  (uint32_t)head[43] << 8 | head[44];
	struct kg_pp2_ssl ssl = {
		.client = head[40], .verify = verify,
		.version = {part[F_VERSION], part_len[F_VERSION]},
		.cn = {cn, cn_len},
		.cipher = {part[F_CIPHER], part_len[F_CIPHER]},
		.sig_alg = {part[F_SIG], part_len[F_SIG]},
		.key_alg = {part[F_KEY], part_len[F_KEY]},
	};
	const uint8_t *sub_val[5] = {part[F_VERSION], cn, part[F_CIPHER], part[F_SIG], part[F_KEY]};
	size_t sub_len[5] = {part_len[F_VERSION], cn_len, part_len[F_CIPHER], part_len[F_SIG],
			     part_len[F_KEY]};
	struct kg_pp2_info info = {
		.src = (struct sockaddr *)&src, .dst = (struct sockaddr *)&dst,
		.ssl = has_ssl ? &ssl : NULL,
		.authority = {part[F_AUTHORITY], part_len[F_AUTHORITY]},
		.unique_id = {part[F_UNIQUE], part_len[F_UNIQUE]},
	};

	/* The expected outcome, computed without the writer's code. */
	bool v6_header = src6 || dst6;
	size_t ssl_value = 5;
	for (size_t i = 0; i < 5; i++)
		ssl_value += tlv(sub_len[i]);
	size_t total = 16 + (v6_header ? 36 : 12) + tlv(part_len[F_AUTHORITY]) +
		       tlv(part_len[F_UNIQUE]) + (has_ssl ? 3 + ssl_value : 0);
	ssize_t want = unix_src ? -EAFNOSUPPORT
		       : part_len[F_UNIQUE] > KG_PP2_UNIQUE_ID_MAX ? -EINVAL
		       : total > KG_PP2_MAX ? -EMSGSIZE
		       : total > cap ? -ENOSPC : (ssize_t)total;

	uint8_t *out = malloc(cap ? cap : 1);
	KF_FAIL_IF(!out);
	memset(out, 0xa5, cap);
	ssize_t n = kg_pp2_write(&info, out, cap);
	KF_FAIL_IF(n != want);
	if (n < 0) {
		for (size_t i = 0; i < cap; i++)
			KF_FAIL_IF(out[i] != 0xa5);
		goto done;
	}

	/* Parse it back. */
	size_t len = (size_t)n;
	KF_FAIL_IF(len < 16 || memcmp(out, "\r\n\r\n\0\r\nQUIT\n", 12) != 0);
	KF_FAIL_IF(out[12] != 0x21);
	KF_FAIL_IF(out[13] != (v6_header ? 0x21 : 0x11));
	KF_FAIL_IF(be16(out + 14) != len - 16);
	size_t alen = v6_header ? 16 : 4;
	uint8_t want_src[16], want_dst[16];
	wire_addr(want_src, v6_header, src6, head + 4);
	wire_addr(want_dst, v6_header, dst6, head + 20);
	const uint8_t *p = out + 16;
	KF_FAIL_IF(memcmp(p, want_src, alen) != 0 || memcmp(p + alen, want_dst, alen) != 0);
	KF_FAIL_IF(memcmp(p + 2 * alen, head + 36, 2) != 0);
	KF_FAIL_IF(memcmp(p + 2 * alen + 2, head + 38, 2) != 0);

	size_t pos = 16 + 2 * alen + 4;
	bool seen_auth = false, seen_uid = false, seen_ssl = false;
	while (pos < len) {
		uint8_t type;
		const uint8_t *val;
		size_t vlen;
		KF_FAIL_IF(!read_tlv(out, len, &pos, &type, &val, &vlen));
		if (type == KG_PP2_TYPE_AUTHORITY && !seen_auth) {
			seen_auth = true;
			same(val, vlen, part[F_AUTHORITY], part_len[F_AUTHORITY]);
		} else if (type == KG_PP2_TYPE_UNIQUE_ID && !seen_uid) {
			seen_uid = true;
			same(val, vlen, part[F_UNIQUE], part_len[F_UNIQUE]);
		} else if (type == KG_PP2_TYPE_SSL && !seen_ssl && has_ssl) {
			seen_ssl = true;
			KF_FAIL_IF(vlen < 5 || val[0] != head[40]);
			KF_FAIL_IF(memcmp(val + 1, head + 41, 4) != 0);
			size_t spos = 5;
			bool seen_sub[5] = {false};
			while (spos < vlen) {
				uint8_t st;
				const uint8_t *sv;
				size_t sl;
				KF_FAIL_IF(!read_tlv(val, vlen, &spos, &st, &sv, &sl));
				size_t k = 0;
				while (k < 5 && subtypes[k] != st)
					k++;
				KF_FAIL_IF(k == 5 || seen_sub[k]);
				seen_sub[k] = true;
				same(sv, sl, sub_val[k], sub_len[k]);
			}
			for (size_t k = 0; k < 5; k++)
				KF_FAIL_IF(seen_sub[k] != (sub_len[k] > 0));
		} else {
			KF_FAIL_IF(true); /* unknown or repeated TLV */
		}
	}
	KF_FAIL_IF(pos != len);
	KF_FAIL_IF(seen_auth != (part_len[F_AUTHORITY] > 0));
	KF_FAIL_IF(seen_uid != (part_len[F_UNIQUE] > 0));
	KF_FAIL_IF(seen_ssl != has_ssl);
done:
	free(out);
	free(cn);
	return 0;
}
