/* See client_bio.h. Runs on the connection's worker thread only. */
#include "client_bio.h"

#include <limits.h>
#include <pthread.h>
#include <string.h>

#include "conn.h"
#include "worker.h"

static pthread_once_t method_once = PTHREAD_ONCE_INIT;
static BIO_METHOD *method; /* process lifetime, built once */

size_t kg_client_spill_pending(const struct kg_conn *c)
{
	if (!c->out_spill)
		return 0;
	size_t n = BIO_ctrl_pending(c->out_spill);
	return n;
}

int kg_client_out_write(struct kg_conn *c, const void *data, size_t len)
{
	if (kg_client_spill_pending(c) == 0) {
		/* Sent already: start the span over (a send in flight
		 * reads [off, len), so only then). */
		if (!c->c_send_busy && c->c_out.off >= c->c_out.len)
			c->c_out.off = c->c_out.len = 0;
		if (!c->c_out.data && !(c->c_out.data = kg_buf_get(&c->worker->bufs)))
			return -1;
		if (len <= KG_POOL_BUF_SIZE - c->c_out.len) {
			/* Past c_out.len: a send in flight never reads there. */
			memcpy(c->c_out.data + c->c_out.len, data, len);
			c->c_out.len += (uint32_t)len;
			return 0;
		}
	}
	if (len > INT_MAX || (!c->out_spill && !(c->out_spill = BIO_new(BIO_s_mem()))))
		return -1;
	c->bio_grown += (uint32_t)len;
	return BIO_write(c->out_spill, data, (int)len) == (int)len ? 0 : -1;
}

static int out_write(BIO *b, const char *data, int len)
{
	struct kg_conn *c = BIO_get_data(b);
	BIO_clear_retry_flags(b);
	if (!c || len <= 0)
		return len == 0 ? 0 : -1;
	return kg_client_out_write(c, data, (size_t)len) == 0 ? len : -1;
}

static long out_ctrl(BIO *b, int cmd, long num, void *ptr)
{
	const struct kg_conn *c = BIO_get_data(b);
	(void)num;
	(void)ptr;
	switch (cmd) {
	case BIO_CTRL_FLUSH:
		/* Bytes are sent by the worker's flush, never held here. */
		return 1;
	case BIO_CTRL_PENDING:
	case BIO_CTRL_WPENDING:
		return c ? (long)kg_client_spill_pending(c) : 0;
	default:
		/* Anything else (kTLS queries included): not supported. */
		return 0;
	}
}

static void build_method(void)
{
	int type = BIO_get_new_index();
	if (type == -1)
		return;
	BIO_METHOD *m = BIO_meth_new(type | BIO_TYPE_SOURCE_SINK, "kgate client out");
	if (!m)
		return;
	if (BIO_meth_set_write(m, out_write) != 1 || BIO_meth_set_ctrl(m, out_ctrl) != 1) {
		BIO_meth_free(m);
		return;
	}
	method = m;
}

BIO *kg_client_bio_new(struct kg_conn *c)
{
	if (pthread_once(&method_once, build_method) != 0 || !method)
		return NULL;
	BIO *b = BIO_new(method);
	if (!b)
		return NULL;
	BIO_set_data(b, c);
	BIO_set_init(b, 1);
	return b;
}
