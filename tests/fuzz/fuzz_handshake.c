/* A server-side TLS handshake through kgate's own SSL_CTX (tls.c, required
 * mutual auth with a CA and CRL, the kTLS keylog/record tracking attached)
 * over memory BIOs, fed the way conn.c feeds it: record by record while
 * the framing says the bytes are TLS, the rest in one piece. Input: the
 * bytes a client sends. Seeds are real client flights (TLS 1.2 with a
 * client certificate reaches kgate's verify callback, since the client's
 * Certificate message is not encrypted there). */
#include <stdio.h>
#include <stdlib.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "fuzz_util.h"
#include "ktls.h"
#include "tls.h"

#ifndef KF_DATA_DIR
#error "KF_DATA_DIR must name tests/fuzz/data"
#endif

static SSL_CTX *ctx;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	static struct kg_cert_conf server = {.name = "web", .type = KG_CERT_SERVER,
					     .cert_path = KF_DATA_DIR "/server.pem",
					     .key_path = KF_DATA_DIR "/server.key"};
	static struct kg_cert_conf ca = {.name = "clients", .type = KG_CERT_CA,
					 .cert_path = KF_DATA_DIR "/ca.pem",
					 .crl_path = KF_DATA_DIR "/ca.crl"};
	struct kg_listener_conf l = {.name = "web", .protocol = KG_PROTO_TLS,
				     .certificate = &server, .ca = &ca,
				     .mutual_auth = KG_MTLS_REQUIRED, .verify_depth = 4,
				     .tls_session_cache = KG_TLS_SESSION_CACHE_DEFAULT};
	char err[512] = "";
	ctx = kg_tls_ctx_create(&l, NULL, err, sizeof(err));
	if (!ctx || kg_ktls_ctx_prepare(ctx) != 0) {
		fprintf(stderr, "fuzz_handshake: cannot build the SSL_CTX: %s\n", err);
		abort();
	}
	return 0;
}

/* One SSL_do_handshake step, status mapped as conn.c does; true to go on. */
static bool step(SSL *ssl, struct kg_ktls_track *t)
{
	char reason[256];
	int ret = SSL_do_handshake(ssl);
	if (ret == 1) {
		kg_ktls_handshake_done(ssl, t);
		return false;
	}
	enum kg_tls_status st = kg_tls_status(ssl, ret, reason, sizeof(reason));
	KF_FAIL_IF(ERR_peek_error() != 0); /* kg_tls_status promises an empty error queue */
	return st == KG_TLS_WANT_READ || st == KG_TLS_WANT_WRITE;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	SSL *ssl = SSL_new(ctx);
	BIO *in = BIO_new(BIO_s_mem()), *out = BIO_new(BIO_s_mem());
	struct kg_ktls_track track = {0};
	KF_FAIL_IF(!ssl || !in || !out);
	/* The SSL owns both BIOs from here on (conn.c does the same). */
	SSL_set_bio(ssl, in, out);
	SSL_set_accept_state(ssl);
	KF_FAIL_IF(kg_ktls_track_attach(ssl, &track) != 0);
	size_t pos = 0;
	bool more = true;
	while (more && pos < size) {
		size_t rec = kg_tls_record_len(data + pos, size - pos);
		if (rec == 0 || rec == SIZE_MAX)
			rec = size - pos;
		KF_FAIL_IF(BIO_write(in, data + pos, (int)rec) != (int)rec);
		pos += rec;
		more = step(ssl, &track);
		(void)BIO_reset(out); /* what the server sends goes nowhere */
	}
	kg_ktls_track_detach(ssl);
	SSL_free(ssl);
	ERR_clear_error();
	return 0;
}
