/* See client_io.h. Runs on the connection's worker thread only. */
#include "client_io.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <openssl/err.h>

#include "ktls.h"
#include "tls.h"
#include "conn.h"
#include "worker.h"

#define TLS_RT_ALERT 21
#define TLS_RT_HANDSHAKE 22
#define TLS_RT_APPDATA 23
#define TLS_HS_KEY_UPDATE 24

int kg_client_ktls_control(struct kg_conn *c, unsigned char type, const unsigned char *rec,
			   size_t n)
{
	char why[64];
	if (type == TLS_RT_ALERT && n >= 2 && rec[1] == 0)
		return 0; /* close_notify */
	if (type == TLS_RT_ALERT) {
		snprintf(why, sizeof(why), "client sent TLS alert %u", n >= 2 ? rec[1] : 0);
		kg_conn_close(c, why);
		return -ECONNABORTED;
	}
	if (type == TLS_RT_HANDSHAKE && n >= 1 && rec[0] == TLS_HS_KEY_UPDATE) {
		kg_worker_warn(c->worker, "ktls.key_update", KV("listener", c->listener->conf->name),
			       KV("reason", "client sent a TLS 1.3 KeyUpdate; "
					    "kernel re-keying is not used"),
			       KV("action", "close"));
		/* Best effort: a full send buffer only loses the courtesy. */
		kg_ktls_send_close_notify(c->cfd);
		kg_conn_close(c, "KeyUpdate on a kTLS connection");
		return -EOPNOTSUPP;
	}
	snprintf(why, sizeof(why), "unexpected TLS record type %u", type);
	kg_conn_close(c, why);
	return -EPROTO;
}

/* ---- userspace TLS ---- */

static int openssl_read(struct kg_conn *c, unsigned char *buf, size_t len)
{
	char reason[256];
	int n = SSL_read(c->ssl, buf, (int)len);
	if (n > 0)
		return n;
	enum kg_tls_status st = kg_tls_status(c->ssl, n, reason, sizeof(reason));
	kg_conn_flush_client(c); /* SSL_read may have queued a reply (ticket, alert) */
	if (c->state != KG_CONN_FORWARDING)
		return KG_CIO_CLOSED;
	switch (st) {
	case KG_TLS_WANT_READ:
	case KG_TLS_WANT_WRITE:
		if (c->client_eof)
			return KG_CIO_EOF;
		kg_conn_arm_client_recv(c);
		return KG_CIO_WANT;
	case KG_TLS_CLOSED:
		return KG_CIO_EOF;
	case KG_TLS_OK:
	case KG_TLS_WANT_ASYNC: /* async mode ends with the handshake (ocsp.h) */
	case KG_TLS_ERROR:
		break;
	}
	kg_worker_warn(c->worker, "tls.client_error", KV("listener", c->listener->conf->name),
		       KV("reason", reason));
	kg_conn_close(c, "TLS error");
	return KG_CIO_CLOSED;
}

static int openssl_write(struct kg_conn *c, const void *p, size_t n)
{
	char reason[256];
	kg_client_out_expect(c, n); /* its records in one send */
	int r = SSL_write(c->ssl, p, (int)n);
	if (r == (int)n)
		return 0;
	kg_tls_status(c->ssl, r, reason, sizeof(reason));
	kg_worker_warn(c->worker, "tls.write_failed", KV("listener", c->listener->conf->name),
		       KV("reason", reason));
	kg_conn_close(c, "TLS write failed");
	return -EIO;
}

static void openssl_end(struct kg_conn *c)
{
	SSL_shutdown(c->ssl);
	ERR_clear_error();
}

const struct kg_client_io kg_client_io_openssl = {
	.name = "openssl",
	.kernel = false,
	.read = openssl_read,
	.write = openssl_write,
	.end = openssl_end,
};

/* ---- kernel TLS ---- */

static int ktls_read(struct kg_conn *c, unsigned char *buf, size_t len)
{
	unsigned char type;
	int n = kg_ktls_recv_record(c->cfd, &type, buf, len);
	if (n == -EAGAIN || n == -EWOULDBLOCK)
		return KG_CIO_WANT;
	if (n < 0) {
		kg_conn_close_err(c, "client recv", -n);
		return KG_CIO_CLOSED;
	}
	if (type == TLS_RT_APPDATA)
		return n > 0 ? n : KG_CIO_EOF;
	return kg_client_ktls_control(c, type, buf, (size_t)n) == 0 ? KG_CIO_EOF : KG_CIO_CLOSED;
}

static int ktls_write(struct kg_conn *c, const void *p, size_t n)
{
	kg_client_out_expect(c, n); /* one send, the kernel makes the records */
	if (kg_client_out_write(c, p, n) == 0)
		return 0;
	kg_conn_close(c, "out of memory for a response");
	return -ENOMEM;
}

static void ktls_end(struct kg_conn *c)
{
	(void)c; /* sent after the flush: kTLS has no queue of its own to put it in */
}

const struct kg_client_io kg_client_io_ktls = {
	.name = "ktls",
	.kernel = true,
	.read = ktls_read,
	.write = ktls_write,
	.end = ktls_end,
};
