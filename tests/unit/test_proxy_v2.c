/* proxy_v2.c: the PROXY protocol v2 header, byte for byte against the
 * layout of HAProxy's doc/proxy-protocol.txt (section 2.2): signature,
 * ver_cmd, fam, big-endian length, addresses then ports, TLVs as type +
 * 16-bit big-endian length + value. Also the bounds (refusal, never
 * truncation, nothing written past cap) and proxy_send.c's build on real
 * loopback sockets. */
#include <arpa/inet.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <criterion/criterion.h>
#include <openssl/err.h>
#include <openssl/rsa.h>
#include <openssl/ssl.h>

#include "certgen.h"
#include "proxy_send.h"
#include "proxy_v2.h"

#define SIG 0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a

static struct sockaddr_in v4(const char *ip, uint16_t port)
{
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
	cr_assert_eq(inet_pton(AF_INET, ip, &a.sin_addr), 1);
	return a;
}

static struct sockaddr_in6 v6(const char *ip, uint16_t port)
{
	struct sockaddr_in6 a = {.sin6_family = AF_INET6, .sin6_port = htons(port)};
	cr_assert_eq(inet_pton(AF_INET6, ip, &a.sin6_addr), 1);
	return a;
}

#define BYTES(s) ((struct kg_pp2_bytes){.data = (s), .len = sizeof(s) - 1})

static void expect_bytes(const unsigned char *got, ssize_t n, const unsigned char *want,
			 size_t wlen)
{
	cr_assert_eq(n, (ssize_t)wlen, "length %zd, expected %zu", n, wlen);
	for (size_t i = 0; i < wlen; i++)
		cr_assert_eq(got[i], want[i], "byte %zu: 0x%02x, expected 0x%02x", i, got[i],
			     want[i]);
}

/* The header of a plain tcp connection from sip:sport to dip:dport; an
 * address with a ':' is IPv6. */
static ssize_t write_plain(const char *sip, uint16_t sport, const char *dip, uint16_t dport,
			   unsigned char *out, size_t cap)
{
	struct sockaddr_storage s, d;
	const char *ips[2] = {sip, dip};
	uint16_t ports[2] = {sport, dport};
	struct sockaddr_storage *ss[2] = {&s, &d};
	for (int i = 0; i < 2; i++) {
		if (strchr(ips[i], ':')) {
			struct sockaddr_in6 a = v6(ips[i], ports[i]);
			memcpy(ss[i], &a, sizeof(a));
		} else {
			struct sockaddr_in a = v4(ips[i], ports[i]);
			memcpy(ss[i], &a, sizeof(a));
		}
	}
	struct kg_pp2_info in = {.src = (struct sockaddr *)&s, .dst = (struct sockaddr *)&d};
	return kg_pp2_write(&in, out, cap);
}

Test(proxy_v2, ipv4_no_tlv)
{
	static const unsigned char want[] = {
		SIG, 0x21, 0x11, 0x00, 0x0c,  /* v2 PROXY, TCP over IPv4, 12 bytes */
		192, 0, 2, 1, 198, 51, 100, 7, /* source, destination */
		0xdc, 0x04, 0x01, 0xbb,        /* 56324, 443 */
	};
	unsigned char out[KG_PP2_MAX];
	expect_bytes(out, write_plain("192.0.2.1", 56324, "198.51.100.7", 443, out, sizeof(out)),
		     want, sizeof(want));
}

Test(proxy_v2, ipv6_no_tlv)
{
	static const unsigned char want[] = {
		SIG, 0x21, 0x21, 0x00, 0x24, /* v2 PROXY, TCP over IPv6, 36 bytes */
		0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01,
		0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff,
		0x00, 0x01, 0x20, 0xfb,
	};
	unsigned char out[KG_PP2_MAX];
	expect_bytes(out, write_plain("2001:db8::1", 1, "2001:db8::ff", 8443, out, sizeof(out)),
		     want, sizeof(want));
}

/* An IPv4 source next to an IPv6 destination: IPv4-mapped, family IPv6. */
Test(proxy_v2, mixed_families_map_ipv4)
{
	static const unsigned char want[] = {
		SIG, 0x21, 0x21, 0x00, 0x24,
		0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 127, 0, 0, 1, /* ::ffff:127.0.0.1 */
		0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
		0x00, 0x02, 0x00, 0x03,
	};
	unsigned char out[KG_PP2_MAX];
	expect_bytes(out, write_plain("127.0.0.1", 2, "::1", 3, out, sizeof(out)), want,
		     sizeof(want));
}

Test(proxy_v2, ipv4_ssl_tlvs)
{
	struct sockaddr_in s = v4("127.0.0.1", 1000), d = v4("127.0.0.2", 8443);
	struct kg_pp2_ssl ssl = {
		.client = KG_PP2_CLIENT_SSL | KG_PP2_CLIENT_CERT_CONN | KG_PP2_CLIENT_CERT_SESS,
		.verify = 0,
		.version = BYTES("TLSv1.3"),
		.cn = BYTES("alice"),
		.cipher = BYTES("TLS_AES_128_GCM_SHA256"),
		.sig_alg = BYTES("ecdsa-with-SHA256"),
		.key_alg = BYTES("EC256"),
	};
	struct kg_pp2_info in = {.src = (struct sockaddr *)&s, .dst = (struct sockaddr *)&d,
				 .ssl = &ssl, .authority = BYTES("gw.example")};
	unsigned char out[KG_PP2_MAX];
	/* SSL value: 1 + 4 + (3+7) + (3+5) + (3+22) + (3+17) + (3+5) = 76;
	 * body: 12 + (3+10) + (3+76) = 104 = 0x68. */
	static const unsigned char want[] = {
		SIG, 0x21, 0x11, 0x00, 0x68,
		127, 0, 0, 1, 127, 0, 0, 2, 0x03, 0xe8, 0x20, 0xfb,
		0x02, 0x00, 0x0a, 'g', 'w', '.', 'e', 'x', 'a', 'm', 'p', 'l', 'e',
		0x20, 0x00, 0x4c, 0x07, 0x00, 0x00, 0x00, 0x00,
		0x21, 0x00, 0x07, 'T', 'L', 'S', 'v', '1', '.', '3',
		0x22, 0x00, 0x05, 'a', 'l', 'i', 'c', 'e',
		0x23, 0x00, 0x16, 'T', 'L', 'S', '_', 'A', 'E', 'S', '_', '1', '2', '8', '_', 'G', 'C',
		'M', '_', 'S', 'H', 'A', '2', '5', '6',
		0x24, 0x00, 0x11, 'e', 'c', 'd', 's', 'a', '-', 'w', 'i', 't', 'h', '-', 'S', 'H', 'A',
		'2', '5', '6',
		0x25, 0x00, 0x05, 'E', 'C', '2', '5', '6',
	};
	expect_bytes(out, kg_pp2_write(&in, out, sizeof(out)), want, sizeof(want));
}

/* No client certificate: verify non-zero, no CN sub-TLV; a CN holding a
 * NUL byte goes through as it is (explicit lengths). */
Test(proxy_v2, ipv6_ssl_without_cert_and_unique_id)
{
	struct sockaddr_in6 s = v6("::1", 40000), d = v6("::1", 443);
	struct kg_pp2_ssl ssl = {.client = KG_PP2_CLIENT_SSL, .verify = 0x01020304,
				 .version = BYTES("TLSv1.2"), .cn = {.data = "a\0b", .len = 3}};
	struct kg_pp2_info in = {.src = (struct sockaddr *)&s, .dst = (struct sockaddr *)&d,
				 .ssl = &ssl, .unique_id = BYTES("\x01\x02")};
	unsigned char out[KG_PP2_MAX];
	static const unsigned char want[] = {
		SIG, 0x21, 0x21, 0x00, 0x24 + 5 + 3 + 5 + 10 + 6,
		0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
		0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
		0x9c, 0x40, 0x01, 0xbb,
		0x05, 0x00, 0x02, 0x01, 0x02,
		0x20, 0x00, 0x15, 0x01, 0x01, 0x02, 0x03, 0x04,
		0x21, 0x00, 0x07, 'T', 'L', 'S', 'v', '1', '.', '2',
		0x22, 0x00, 0x03, 'a', 0, 'b',
	};
	expect_bytes(out, kg_pp2_write(&in, out, sizeof(out)), want, sizeof(want));
}

/* Bounds: each refusal has its own code and leaves out untouched. */
struct limit_case {
	const char *what;
	size_t cn_len, authority_len, unique_len, cap;
	int family;
	bool null_data;
	int want;
};

static const struct limit_case limits[] = {
	{"fits exactly", 64, 0, 0, 16 + 12 + 3 + 5 + 3 + 64, AF_INET, false, 0},
	{"one byte short of cap", 64, 0, 0, 16 + 12 + 3 + 5 + 3 + 64 - 1, AF_INET, false, -ENOSPC},
	{"cn over the header bound", KG_PP2_MAX, 0, 0, 70000, AF_INET, false, -EMSGSIZE},
	{"cn over a TLV length", 65536, 0, 0, 70000, AF_INET, false, -EMSGSIZE},
	{"ssl value over a TLV length", 65530, 0, 0, 70000, AF_INET, false, -EMSGSIZE},
	{"authority over the bound", 0, 2000, 0, 70000, AF_INET, false, -EMSGSIZE},
	{"unique id of 128", 0, 0, 128, KG_PP2_MAX, AF_INET, false, 0},
	{"unique id of 129", 0, 0, 129, KG_PP2_MAX, AF_INET, false, -EINVAL},
	{"unix socket", 0, 0, 0, KG_PP2_MAX, AF_UNIX, false, -EAFNOSUPPORT},
	{"length without data", 5, 0, 0, KG_PP2_MAX, AF_INET, true, -EINVAL},
	{"cap zero", 0, 0, 0, 0, AF_INET, false, -ENOSPC},
};

TC_INDEX_PARAMS(proxy_v2, limits, sizeof(limits) / sizeof(limits[0]))

ParameterizedTest(size_t *i, proxy_v2, limits)
{
	const struct limit_case *t = &limits[*i];
	static unsigned char big[70000];
	static unsigned char out[70000 + 16];
	memset(big, 'x', sizeof(big));
	memset(out, 0xa5, sizeof(out));
	struct sockaddr_in s = v4("127.0.0.1", 1), d = v4("127.0.0.1", 2);
	struct sockaddr_storage un = {.ss_family = AF_UNIX};
	struct kg_pp2_ssl ssl = {.client = KG_PP2_CLIENT_SSL,
				 .cn = {.data = t->null_data ? NULL : big, .len = t->cn_len}};
	struct kg_pp2_info in = {
		.src = t->family == AF_UNIX ? (struct sockaddr *)&un : (struct sockaddr *)&s,
		.dst = (struct sockaddr *)&d,
		.ssl = &ssl,
		.authority = {.data = big, .len = t->authority_len},
		.unique_id = {.data = big, .len = t->unique_len},
	};
	ssize_t n = kg_pp2_write(&in, out, t->cap);
	if (t->want < 0) {
		cr_assert_eq(n, t->want, "%s: %zd, expected %d", t->what, n, t->want);
		for (size_t k = 0; k < sizeof(out); k++)
			cr_assert_eq(out[k], 0xa5, "%s: byte %zu written on a refusal", t->what, k);
		return;
	}
	cr_assert_gt(n, 0, "%s: %zd", t->what, n);
	cr_assert_leq((size_t)n, t->cap, "%s", t->what);
	cr_assert_eq(out[n], 0xa5, "%s: byte past the header written", t->what);
	cr_assert_eq((size_t)(out[14] << 8 | out[15]) + 16, (size_t)n, "%s: length field", t->what);
}

/* A connected loopback pair; *srv is the accepted side (kgate's client
 * socket). */
static void tcp_pair(int *l, int *c, int *srv)
{
	struct sockaddr_in a = v4("127.0.0.1", 0);
	socklen_t alen = sizeof(a);
	*l = socket(AF_INET, SOCK_STREAM, 0);
	*c = socket(AF_INET, SOCK_STREAM, 0);
	cr_assert(*l >= 0 && *c >= 0);
	cr_assert_eq(bind(*l, (struct sockaddr *)&a, sizeof(a)), 0);
	cr_assert_eq(listen(*l, 1), 0);
	cr_assert_eq(getsockname(*l, (struct sockaddr *)&a, &alen), 0);
	cr_assert_eq(connect(*c, (struct sockaddr *)&a, sizeof(a)), 0);
	*srv = accept(*l, NULL, NULL);
	cr_assert(*srv >= 0);
}

/* proxy_send.c on a real loopback connection: source is the client's
 * address and port, destination the address and port it connected to. */
Test(proxy_v2, build_from_sockets)
{
	int l, c, s;
	tcp_pair(&l, &c, &s);
	struct sockaddr_in a, cl;
	socklen_t alen = sizeof(a), cllen = sizeof(cl);
	cr_assert_eq(getsockname(l, (struct sockaddr *)&a, &alen), 0);
	cr_assert_eq(getsockname(c, (struct sockaddr *)&cl, &cllen), 0);

	unsigned char out[KG_PP2_MAX];
	char err[160];
	ssize_t n = kg_proxy_build_v2(s, NULL, out, sizeof(out), err, sizeof(err));
	cr_assert_eq(n, 28, "%zd: %s", n, err);
	cr_assert_eq(memcmp(out, KG_PP2_SIG, KG_PP2_SIG_LEN), 0);
	cr_assert_eq(out[12], 0x21);
	cr_assert_eq(out[13], 0x11);
	cr_assert_eq(memcmp(out + 16, &cl.sin_addr, 4), 0);
	cr_assert_eq(memcmp(out + 20, &a.sin_addr, 4), 0);
	cr_assert_eq(memcmp(out + 24, &cl.sin_port, 2), 0);
	cr_assert_eq(memcmp(out + 26, &a.sin_port, 2), 0);

	/* Sent whole to the peer, before anything else. */
	cr_assert_eq(kg_proxy_send_v2(s, NULL, s, err, sizeof(err)), 0, "%s", err);
	unsigned char got[64];
	cr_assert_eq(recv(c, got, sizeof(got), 0), 28);
	cr_assert_eq(memcmp(got, out, 28), 0);
	close(s);
	close(c);
	close(l);

	/* A socket that is not connected: a clear refusal. */
	int u = socket(AF_INET, SOCK_STREAM, 0);
	cr_assert_eq(kg_proxy_build_v2(u, NULL, out, sizeof(out), err, sizeof(err)), -ENOTCONN);
	cr_assert(strstr(err, "client socket address") != NULL, "%s", err);
	close(u);
}

/* A client that reset before its backend connected: -ENOTCONN, which
 * conn.c closes quietly instead of counting a header failure. */
Test(proxy_v2, client_reset_is_enotconn)
{
	int l, c, s;
	tcp_pair(&l, &c, &s);
	struct linger lg = {.l_onoff = 1, .l_linger = 0};
	cr_assert_eq(setsockopt(c, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg)), 0);
	close(c); /* RST */
	char err[160];
	int r = 0;
	/* The RST is processed synchronously on loopback; a few tries cover
	 * a scheduler delay without any timing assertion. */
	for (int i = 0; i < 100 && r != -ENOTCONN; i++)
		r = kg_proxy_send_v2(s, NULL, l, err, sizeof(err));
	cr_assert_eq(r, -ENOTCONN, "%d: %s", r, err);
	close(s);
	close(l);
}

/* ---- TLS facts (proxy_send.c) from a real handshake over a BIO pair ---- */

struct tls_env {
	EVP_PKEY *ca_key, *server_key, *client_key;
	X509 *ca, *server, *client;
	SSL_CTX *sctx, *cctx;
	SSL *s, *c;
};

/* Replaces the client certificate's subject by one CN of cn_len bytes
 * set as a UTF8String directly, which skips OpenSSL's 64-character upper
 * bound for CN: a certificate someone else made can carry anything. */
static void set_long_cn(struct tls_env *e, size_t cn_len)
{
	unsigned char *cn = malloc(cn_len);
	cr_assert_not_null(cn);
	memset(cn, 'L', cn_len);
	X509_NAME *n = X509_NAME_new();
	cr_assert_not_null(n);
	cr_assert_eq(X509_NAME_add_entry_by_NID(n, NID_commonName, V_ASN1_UTF8STRING, cn,
						(int)cn_len, -1, 0), 1);
	cr_assert_eq(X509_set_subject_name(e->client, n), 1);
	cr_assert_gt(X509_sign(e->client, e->ca_key, EVP_sha256()), 0);
	X509_NAME_free(n);
	free(cn);
}

/* server_key NULL: EC P-256. */
static void tls_env_open(struct tls_env *e, EVP_PKEY *server_key, size_t long_cn)
{
	memset(e, 0, sizeof(*e));
	e->ca_key = tc_key();
	e->server_key = server_key ? server_key : tc_key();
	e->client_key = tc_key();
	e->ca = tc_cert(&(struct tc_cert_opts){.cn = "ca", .ca = true}, e->ca_key, NULL, NULL);
	e->server = tc_cert(&(struct tc_cert_opts){.cn = "gw", .eku = TC_EKU_SERVER},
			    e->server_key, e->ca, e->ca_key);
	e->client = tc_cert(&(struct tc_cert_opts){.cn = "alice", .eku = TC_EKU_CLIENT},
			    e->client_key, e->ca, e->ca_key);
	if (long_cn)
		set_long_cn(e, long_cn);
	e->sctx = SSL_CTX_new(TLS_server_method());
	e->cctx = SSL_CTX_new(TLS_client_method());
	cr_assert(e->sctx && e->cctx);
	cr_assert_eq(SSL_CTX_use_certificate(e->sctx, e->server), 1);
	cr_assert_eq(SSL_CTX_use_PrivateKey(e->sctx, e->server_key), 1);
	cr_assert_eq(X509_STORE_add_cert(SSL_CTX_get_cert_store(e->sctx), e->ca), 1);
	SSL_CTX_set_verify(e->sctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
	cr_assert_eq(SSL_CTX_use_certificate(e->cctx, e->client), 1);
	cr_assert_eq(SSL_CTX_use_PrivateKey(e->cctx, e->client_key), 1);

	BIO *sb, *cb;
	e->s = SSL_new(e->sctx);
	e->c = SSL_new(e->cctx);
	cr_assert(e->s && e->c);
	cr_assert_eq(BIO_new_bio_pair(&sb, 0, &cb, 0), 1);
	SSL_set_bio(e->s, sb, sb); /* each SSL owns its end */
	SSL_set_bio(e->c, cb, cb);
	SSL_set_accept_state(e->s);
	SSL_set_connect_state(e->c);
	cr_assert_eq(SSL_set_tlsext_host_name(e->c, "gw.example"), 1);
	bool s_done = false, c_done = false;
	for (int round = 0; round < 16 && !(s_done && c_done); round++) {
		c_done = c_done || SSL_do_handshake(e->c) == 1;
		s_done = s_done || SSL_do_handshake(e->s) == 1;
	}
	ERR_clear_error();
	cr_assert(s_done && c_done, "handshake did not finish");
}

static void tls_env_close(struct tls_env *e)
{
	SSL_free(e->s);
	SSL_free(e->c);
	SSL_CTX_free(e->sctx);
	SSL_CTX_free(e->cctx);
	X509_free(e->ca);
	X509_free(e->server);
	X509_free(e->client);
	EVP_PKEY_free(e->ca_key);
	EVP_PKEY_free(e->server_key);
	EVP_PKEY_free(e->client_key);
}

/* The value of TLV type in buf[0..end), or NULL. */
static const unsigned char *find_tlv(const unsigned char *buf, size_t end, uint8_t type,
				     size_t *len)
{
	for (size_t pos = 0; pos + 3 <= end;) {
		size_t l = (size_t)buf[pos + 1] << 8 | buf[pos + 2];
		cr_assert_leq(pos + 3 + l, end, "TLV past the end");
		if (buf[pos] == type) {
			*len = l;
			return buf + pos + 3;
		}
		pos += 3 + l;
	}
	return NULL;
}

static void expect_tlv(const unsigned char *buf, size_t end, uint8_t type, const char *want)
{
	size_t len = 0;
	const unsigned char *v = find_tlv(buf, end, type, &len);
	cr_assert_not_null(v, "TLV 0x%02x missing", type);
	cr_assert_eq(len, strlen(want), "TLV 0x%02x: %.*s, expected %s", type, (int)len, v, want);
	cr_assert_eq(memcmp(v, want, len), 0, "TLV 0x%02x: %.*s, expected %s", type, (int)len, v,
		     want);
}

static void check_tls_header(EVP_PKEY *server_key, const char *sig_alg, const char *key_alg)
{
	struct tls_env e;
	int l, c, srv;
	tls_env_open(&e, server_key, 0);
	tcp_pair(&l, &c, &srv);
	unsigned char out[KG_PP2_MAX];
	char err[160];
	ssize_t n = kg_proxy_build_v2(srv, e.s, out, sizeof(out), err, sizeof(err));
	cr_assert_gt(n, 28, "%s", err);
	const unsigned char *tlvs = out + 28;
	size_t tlen = (size_t)n - 28, slen = 0;
	expect_tlv(tlvs, tlen, KG_PP2_TYPE_AUTHORITY, "gw.example");
	const unsigned char *ssl = find_tlv(tlvs, tlen, KG_PP2_TYPE_SSL, &slen);
	cr_assert_not_null(ssl);
	cr_assert_eq(ssl[0], KG_PP2_CLIENT_SSL | KG_PP2_CLIENT_CERT_CONN | KG_PP2_CLIENT_CERT_SESS);
	cr_assert_eq(memcmp(ssl + 1, "\0\0\0\0", 4), 0, "verify result not 0");
	expect_tlv(ssl + 5, slen - 5, KG_PP2_SUBTYPE_SSL_VERSION, SSL_get_version(e.c));
	expect_tlv(ssl + 5, slen - 5, KG_PP2_SUBTYPE_SSL_CN, "alice");
	expect_tlv(ssl + 5, slen - 5, KG_PP2_SUBTYPE_SSL_CIPHER, SSL_get_cipher_name(e.c));
	expect_tlv(ssl + 5, slen - 5, KG_PP2_SUBTYPE_SSL_SIG_ALG, sig_alg);
	expect_tlv(ssl + 5, slen - 5, KG_PP2_SUBTYPE_SSL_KEY_ALG, key_alg);
	close(srv);
	close(c);
	close(l);
	tls_env_close(&e);
}

Test(proxy_v2, tls_facts_ec_server)
{
	check_tls_header(NULL, "ecdsa-with-SHA256", "EC256");
}

Test(proxy_v2, tls_facts_rsa_server)
{
	EVP_PKEY *rsa = EVP_RSA_gen(2048);
	cr_assert_not_null(rsa);
	/* The signature is the issuer's (an EC CA), the key the server's. */
	check_tls_header(rsa, "ecdsa-with-SHA256", "RSA2048");
}

/* A CN far past the X.509 bound makes the header too large: the
 * connection gets a clear refusal, never a cut CN. One of 500 bytes still
 * fits and goes through whole. */
Test(proxy_v2, long_cn_refused_not_truncated)
{
	size_t sizes[] = {500, 2000};
	for (size_t i = 0; i < 2; i++) {
		struct tls_env e;
		int l, c, srv;
		tls_env_open(&e, NULL, sizes[i]);
		tcp_pair(&l, &c, &srv);
		unsigned char out[KG_PP2_MAX];
		char err[160] = "";
		ssize_t n = kg_proxy_build_v2(srv, e.s, out, sizeof(out), err, sizeof(err));
		if (sizes[i] == 500) {
			cr_assert_gt(n, 500, "%s", err);
			size_t slen = 0, cnlen = 0;
			const unsigned char *ssl = find_tlv(out + 28, (size_t)n - 28,
							    KG_PP2_TYPE_SSL, &slen);
			cr_assert_not_null(ssl);
			cr_assert_not_null(find_tlv(ssl + 5, slen - 5, KG_PP2_SUBTYPE_SSL_CN, &cnlen));
			cr_assert_eq(cnlen, 500);
		} else {
			cr_assert_eq(n, -EMSGSIZE);
			cr_assert(strstr(err, "refused rather than truncated") != NULL, "%s", err);
		}
		close(srv);
		close(c);
		close(l);
		tls_env_close(&e);
	}
}
