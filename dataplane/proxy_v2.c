/* PROXY protocol v2 writer (proxy_v2.h). Lengths are computed first and
 * checked against every bound, then the bytes are written in one pass, so
 * a refusal leaves nothing half-written to send by mistake. */
#include "proxy_v2.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <string.h>

/* One address block: 16-byte addresses (IPv4 ones mapped) unless both
 * sides are IPv4. Ports and addresses stay in network byte order. */
struct pp2_addrs {
	uint8_t fam;
	size_t addr_len; /* 4 or 16 */
	uint8_t src[16], dst[16];
	uint8_t src_port[2], dst_port[2];
};

static int addr_bytes(const struct sockaddr *sa, bool as_v6, uint8_t out[16], uint8_t port[2])
{
	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
		if (as_v6) {
			/* ::ffff:a.b.c.d (RFC 4291 2.5.5.2) */
			memset(out, 0, 10);
			out[10] = out[11] = 0xff;
			memcpy(out + 12, &in->sin_addr, 4);
		} else {
			memcpy(out, &in->sin_addr, 4);
		}
		memcpy(port, &in->sin_port, 2);
		return 0;
	}
	if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
		memcpy(out, &in6->sin6_addr, 16);
		memcpy(port, &in6->sin6_port, 2);
		return 0;
	}
	return -EAFNOSUPPORT;
}

static int pp2_addrs(const struct kg_pp2_info *info, struct pp2_addrs *a)
{
	if (!info->src || !info->dst)
		return -EINVAL;
	bool v6 = info->src->sa_family == AF_INET6 || info->dst->sa_family == AF_INET6;
	a->fam = v6 ? KG_PP2_FAM_TCP6 : KG_PP2_FAM_TCP4;
	a->addr_len = v6 ? 16 : 4;
	int r = addr_bytes(info->src, v6, a->src, a->src_port);
	if (r == 0)
		r = addr_bytes(info->dst, v6, a->dst, a->dst_port);
	return r;
}

/* A TLV's size on the wire, 0 when it is left out; SIZE_MAX when its
 * value does not fit the 16-bit length field. */
static size_t tlv_size(size_t value_len)
{
	return value_len > UINT16_MAX ? SIZE_MAX : 3 + value_len;
}

/* Adds b's TLV size to *total: 0, -EINVAL (length without data) or
 * -EMSGSIZE (over the 16-bit length field). */
static int add_field(size_t *total, const struct kg_pp2_bytes *b)
{
	if (b->len == 0)
		return 0;
	if (!b->data)
		return -EINVAL;
	size_t n = tlv_size(b->len);
	if (n == SIZE_MAX)
		return -EMSGSIZE;
	*total += n;
	return 0;
}

/* The SSL TLV's value length (client, verify, sub-TLVs) in *len; 0 or
 * add_field's error. */
static int ssl_value_len(const struct kg_pp2_ssl *s, size_t *len)
{
	const struct kg_pp2_bytes *subs[] = {&s->version, &s->cn, &s->cipher, &s->sig_alg,
					     &s->key_alg};
	*len = 1 + 4;
	for (size_t i = 0; i < sizeof(subs) / sizeof(subs[0]); i++) {
		/* Each sub-TLV is at most 3 + 65535 bytes: five of them
		 * cannot overflow size_t, only the SSL TLV's own length. */
		int r = add_field(len, subs[i]);
		if (r < 0)
			return r;
	}
	return tlv_size(*len) == SIZE_MAX ? -EMSGSIZE : 0;
}

static unsigned char *put_tlv_head(unsigned char *p, uint8_t type, size_t len)
{
	p[0] = type;
	p[1] = (uint8_t)(len >> 8);
	p[2] = (uint8_t)len;
	return p + 3;
}

static unsigned char *put_tlv(unsigned char *p, uint8_t type, const struct kg_pp2_bytes *b)
{
	if (b->len == 0)
		return p;
	p = put_tlv_head(p, type, b->len);
	memcpy(p, b->data, b->len);
	return p + b->len;
}

ssize_t kg_pp2_write(const struct kg_pp2_info *info, unsigned char *out, size_t cap)
{
	struct pp2_addrs a;
	int r = pp2_addrs(info, &a);
	if (r < 0)
		return r;
	if (info->unique_id.len > KG_PP2_UNIQUE_ID_MAX)
		return -EINVAL;

	/* Sizes first: every bound is checked before a byte is written. */
	size_t body = 2 * a.addr_len + 4, ssl_len = 0;
	if ((r = add_field(&body, &info->authority)) < 0 ||
	    (r = add_field(&body, &info->unique_id)) < 0)
		return r;
	if (info->ssl) {
		if ((r = ssl_value_len(info->ssl, &ssl_len)) < 0)
			return r;
		body += tlv_size(ssl_len);
	}
	size_t total = KG_PP2_FIXED_LEN + body;
	if (total > KG_PP2_MAX)
		return -EMSGSIZE;
	if (total > cap)
		return -ENOSPC;

	unsigned char *p = out;
	memcpy(p, KG_PP2_SIG, KG_PP2_SIG_LEN);
	p += KG_PP2_SIG_LEN;
	*p++ = KG_PP2_VER_CMD_PROXY;
	*p++ = a.fam;
	*p++ = (uint8_t)(body >> 8);
	*p++ = (uint8_t)body;
	memcpy(p, a.src, a.addr_len);
	p += a.addr_len;
	memcpy(p, a.dst, a.addr_len);
	p += a.addr_len;
	memcpy(p, a.src_port, 2);
	memcpy(p + 2, a.dst_port, 2);
	p += 4;
	/* HAProxy's order: authority, unique ID, then SSL. */
	p = put_tlv(p, KG_PP2_TYPE_AUTHORITY, &info->authority);
	p = put_tlv(p, KG_PP2_TYPE_UNIQUE_ID, &info->unique_id);
	if (info->ssl) {
		const struct kg_pp2_ssl *s = info->ssl;
		p = put_tlv_head(p, KG_PP2_TYPE_SSL, ssl_len);
		*p++ = s->client;
		*p++ = (uint8_t)(s->verify >> 24);
		*p++ = (uint8_t)(s->verify >> 16);
		*p++ = (uint8_t)(s->verify >> 8);
		*p++ = (uint8_t)s->verify;
		p = put_tlv(p, KG_PP2_SUBTYPE_SSL_VERSION, &s->version);
		p = put_tlv(p, KG_PP2_SUBTYPE_SSL_CN, &s->cn);
		p = put_tlv(p, KG_PP2_SUBTYPE_SSL_CIPHER, &s->cipher);
		p = put_tlv(p, KG_PP2_SUBTYPE_SSL_SIG_ALG, &s->sig_alg);
		p = put_tlv(p, KG_PP2_SUBTYPE_SSL_KEY_ALG, &s->key_alg);
	}
	return (ssize_t)(p - out);
}
