/* The kTLS handoff (handoff.h). */
#include "handoff.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>

#include <kgate/limits.h>
#include <kgate/log.h>

#include "conn.h"
#include "ktls.h"
#include "runtime.h"
#include "tls.h"
#include "worker.h"

/* Userspace TLS from here on: userspace-tls, or http-userspace-tls for an
 * https listener. What the would-be kTLS connection holds (unfed
 * ciphertext, plaintext already decrypted: early) carries over. */
static void fall_back(struct kg_conn *c, const void *early, size_t early_len)
{
	kg_ktls_track_detach(c->ssl);
	free(c->ktls);
	c->ktls = NULL;
	if (kg_conn_feed_openssl(c, c->c_in.data + c->c_in.off, c->c_in.len - c->c_in.off) < 0)
		return;
	c->c_in.off = c->c_in.len = 0;
	enum kg_path path = kg_path_is_http(c->listener->plan) ? KG_PATH_HTTP : KG_PATH_USERSPACE;
	if (kg_conn_begin_path(c, path, early, early_len) == 0)
		kg_conn_run_path(c);
}

static void refused(struct kg_conn *c, const char *why, const void *early, size_t early_len)
{
	struct kg_worker *w = c->worker;
	if (c->listener->plan_forced) {
		kg_count(w, ktls_failed);
		kg_worker_warn(w, "ktls.handoff_impossible", KV("listener", c->listener->conf->name),
			       KV("reason", why), KV("forwarding", "splice"),
			       KV("path", kg_path_name(c->listener->plan)), KV("action", "close"));
		kg_conn_close(c, "kTLS handoff impossible");
		return;
	}
	kg_count(w, ktls_fallback);
	log_debug("ktls.fallback", KV("listener", c->listener->conf->name), KV("worker", w->id),
		  KV("conn", c->idx), KV("path", "userspace-tls"), KV("reason", why));
	fall_back(c, early, early_len);
}

/* The handoff cannot happen after early data was decrypted: userspace TLS
 * takes it over with what was decrypted, at most one buffer of it (more
 * cannot be carried over, so the connection closes rather than lose it). */
static void refused_with_early(struct kg_conn *c, const char *why, const void *early,
			       size_t early_len)
{
	if (early_len > KG_IO_BUF_SIZE) {
		kg_conn_close(c, "early data past one buffer when the kTLS handoff failed");
		return;
	}
	refused(c, why, early, early_len);
}

/* Whole records at the start of c_in, and whether a partial one follows
 * (*need: bytes still missing). SIZE_MAX when the bytes are not TLS. */
static size_t whole_records(const struct kg_conn *c, uint32_t *need)
{
	const unsigned char *p = c->c_in.data + c->c_in.off;
	size_t avail = c->c_in.len - c->c_in.off, pos = 0;
	*need = 0;
	while (pos < avail) {
		size_t rec = kg_tls_record_len(p + pos, avail - pos);
		if (rec == SIZE_MAX)
			return SIZE_MAX;
		if (rec == 0) {
			size_t have = avail - pos;
			*need = have < 5 ? (uint32_t)(5 - have)
					 : (uint32_t)(5 + ((size_t)p[pos + 3] << 8 | p[pos + 4]) - have);
			break;
		}
		pos += rec;
	}
	return pos;
}

/* Gives the client socket's record layer to the kernel. Steps, each of
 * which may wait for I/O and come back here (the hooks below): OpenSSL's
 * last records (session ticket) sent; a partial record completed; what
 * the client pipelined behind its Finished decrypted in userspace; keys
 * derived and installed; the path's forwarder started; OpenSSL and the
 * TLS buffers released; the path run. */
static void step(struct kg_conn *c)
{
	struct kg_worker *w = c->worker;
	char err[160];

	if (c->c_send_busy || c->c_out.off < c->c_out.len || kg_client_spill_pending(c) > 0) {
		c->handoff_wait_flush = true;
		kg_conn_flush_client(c);
		return;
	}
	c->handoff_wait_flush = false;
	kg_conn_compact_c_in(c);
	uint32_t need;
	size_t whole = whole_records(c, &need);
	if (whole == SIZE_MAX) {
		refused(c, "client sent bytes that are not TLS records", NULL, 0);
		return;
	}
	if (need > 0) {
		if (c->client_eof) {
			refused(c, "client closed mid-record", NULL, 0);
			return;
		}
		c->handoff_need = need;
		kg_conn_arm_client_recv(c);
		return;
	}
	if (c->client_eof) {
		refused(c, "client already closed", NULL, 0);
		return;
	}
	/* Early application data: decrypt in userspace, send ahead. It is at
	 * most what c_in held (one record and a bit), so it fits the scratch
	 * allocated behind c_in for this (KG_KTLS_EARLY_CAP), which stays
	 * until the connection's buffers are released. */
	unsigned char *early = c->c_in.data + c->c_in_cap;
	size_t early_cap = KG_KTLS_EARLY_CAP, early_len = 0;
	if (whole > 0) {
		if (kg_conn_feed_openssl(c, c->c_in.data, whole) < 0)
			return;
		c->c_in.off = c->c_in.len = 0;
		while (early_len < early_cap) {
			int n = SSL_read(c->ssl, early + early_len, (int)(early_cap - early_len));
			if (n <= 0)
				break;
			early_len += (size_t)n;
		}
		ERR_clear_error();
		if (BIO_pending(c->net_in) > 0 || SSL_has_pending(c->ssl) ||
		    c->c_out.off < c->c_out.len || kg_client_spill_pending(c) > 0 ||
		    SSL_get_shutdown(c->ssl) != 0) {
			/* An alert, close_notify or KeyUpdate among them:
			 * userspace TLS takes over, sending what was decrypted
			 * first. */
			refused_with_early(c, "a control record arrived with the early data", early,
					   early_len);
			return;
		}
	}
	/* From here a refusal carries what was decrypted over to userspace
	 * TLS, which takes one buffer of it. */
	struct kg_ktls_keys keys;
	if (kg_ktls_derive(c->ssl, c->ktls, &keys, err, sizeof(err)) < 0) {
		refused_with_early(c, err, early, early_len);
		return;
	}
	bool ulp_set;
	int r = kg_ktls_install(c->cfd, &keys, &ulp_set, err, sizeof(err));
	OPENSSL_cleanse(&keys, sizeof(keys));
	if (r < 0 && !ulp_set) {
		refused_with_early(c, err, early, early_len);
		return;
	}
	if (r < 0) {
		kg_count(w, ktls_failed);
		kg_worker_warn(w, "ktls.setup_failed", KV("listener", c->listener->conf->name),
			       KV("err", err), KV("action", "close"));
		kg_conn_close(c, "kTLS setup failed");
		return;
	}
	log_debug("ktls.started", KV("listener", c->listener->conf->name), KV("worker", w->id),
		  KV("conn", c->idx), KV("version", SSL_get_version(c->ssl)),
		  KV("cipher", SSL_get_cipher_name(c->ssl)),
		  KV("path", kg_path_name(c->listener->plan)));
	/* The path's forwarder takes the identity from c->ssl and copies
	 * early; then the kernel owns the record layer. */
	r = kg_conn_begin_path(c, c->listener->plan, early, early_len);
	kg_conn_drop_tls(c);
	if (r == 0)
		kg_conn_run_path(c);
}

static void on_client_drained(struct kg_conn *c)
{
	if (c->handoff_wait_flush)
		step(c);
}

static const struct kg_fwd_ops handoff_ops = {
	.name = "ktls-handoff",
	.run = step,
	.on_client_data = step,
	.on_client_drained = on_client_drained,
};

void kg_handoff_register(void)
{
	kg_fwd_register_handoff(&handoff_ops);
}
