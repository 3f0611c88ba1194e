/* The HTTP/2 client session of one backend connection (h2_client.h). */
#include "h2_client.h"
#include "h2_block.h"
#include "h2_sendq.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <nghttp2/nghttp2.h>

/* The connection's receive window: per-stream windows bound what each
 * stream holds, so the connection's is wide enough that one slow stream
 * never stalls the others on the same backend connection. */
#define CONN_WINDOW (1u << 30)
#define MAX_WINDOW ((1u << 31) - 1)

struct kg_h2c_stream {
	int32_t id;
	void *user;
	struct kg_h2c_stream *next;
	/* Request body queue. */
	struct kg_h2_sendq sq;
	bool data_source, data_end, deferred;
	struct kg_h2_block block; /* the header block being read */
	size_t block_bytes;
	int status;
	bool head_done;  /* the final head was handed on */
	bool too_large;  /* the block passed the bound: reset */
	size_t unconsumed;
};

struct kg_h2c {
	nghttp2_session *s;
	struct kg_h2c_limits lim;
	struct kg_h2c_handler cb;
	void *ctx;
	struct kg_h2c_stream *streams;
	size_t n_open;
	bool goaway; /* received */
	bool fatal;
	bool dead;   /* being destroyed: no callback */
};

/* The allocator of h2_block.h and h2_sendq.h: nothing here is counted. */
static void *plain_realloc(void *p, size_t n, void *ud)
{
	(void)ud;
	return realloc(p, n);
}

static void plain_free(void *p, void *ud)
{
	(void)ud;
	free(p);
}

/* By the caller's list, not nghttp2's stream data: nghttp2 opens a
 * stream only when its HEADERS frame is serialized, and body bytes may be
 * queued before that. */
static struct kg_h2c_stream *stream_of(const struct kg_h2c *h, int32_t id)
{
	for (struct kg_h2c_stream *st = h->streams; st; st = st->next)
		if (st->id == id)
			return st;
	return NULL;
}

static void stream_free(struct kg_h2c *h, struct kg_h2c_stream *st)
{
	for (struct kg_h2c_stream **pp = &h->streams; *pp; pp = &(*pp)->next)
		if (*pp == st) {
			*pp = st->next;
			break;
		}
	free(st->sq.q);
	kg_h2_block_free(&st->block, plain_free, NULL);
	free(st);
}

/* ---- nghttp2 callbacks ---- */

static int on_begin_headers(nghttp2_session *s, const nghttp2_frame *frame, void *ud)
{
	(void)s;
	struct kg_h2c_stream *st = stream_of(ud, frame->hd.stream_id);
	if (st) {
		kg_h2_block_clear(&st->block);
		st->block_bytes = 0;
		st->status = 0;
	}
	return 0;
}

static int on_header(nghttp2_session *s, const nghttp2_frame *frame, const uint8_t *name,
		     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags, void *ud)
{
	struct kg_h2c *h = ud;
	(void)flags;
	struct kg_h2c_stream *st = stream_of(h, frame->hd.stream_id);
	if (!st || st->too_large)
		return 0;
	st->block_bytes += namelen + valuelen + 32;
	if (st->block_bytes > h->lim.max_header_list_bytes) {
		st->too_large = true;
		int rv = nghttp2_submit_rst_stream(s, NGHTTP2_FLAG_NONE, st->id,
						   NGHTTP2_INTERNAL_ERROR);
		return rv == 0 || !nghttp2_is_fatal(rv) ? 0 : NGHTTP2_ERR_CALLBACK_FAILURE;
	}
	if (namelen == 7 && memcmp(name, ":status", 7) == 0) {
		/* nghttp2 checked it is three digits. */
		st->status = atoi((const char *)value);
		return 0;
	}
	if (namelen > 0 && name[0] == ':')
		return 0;
	if (kg_h2_block_add(&st->block, name, namelen, value, valuelen, plain_realloc, NULL) < 0)
		return NGHTTP2_ERR_CALLBACK_FAILURE;
	return 0;
}

/* The block's fields as the handler takes them (pointers into the arena). */
static struct kg_h2_field *fields_of(struct kg_h2c_stream *st)
{
	struct kg_h2_field *out = calloc(st->block.n ? st->block.n : 1, sizeof(*out));
	if (!out)
		return NULL;
	for (size_t i = 0; i < st->block.n; i++)
		out[i] = kg_h2_block_field(&st->block, i);
	return out;
}

static int on_frame_recv(nghttp2_session *s, const nghttp2_frame *frame, void *ud)
{
	struct kg_h2c *h = ud;
	(void)s;
	if (frame->hd.type == NGHTTP2_GOAWAY) {
		h->goaway = true;
		if (h->cb.on_goaway)
			h->cb.on_goaway(h->ctx, frame->goaway.last_stream_id,
					frame->goaway.error_code);
		return 0;
	}
	struct kg_h2c_stream *st = stream_of(h, frame->hd.stream_id);
	if (!st || st->too_large)
		return 0;
	bool end = frame->hd.flags & NGHTTP2_FLAG_END_STREAM;
	if (frame->hd.type == NGHTTP2_DATA) {
		if (end && h->cb.on_end)
			h->cb.on_end(h->ctx, st->id, st->user, NULL, 0);
		return 0;
	}
	if (frame->hd.type != NGHTTP2_HEADERS)
		return 0;
	/* Which block this is goes by what came before, not by nghttp2's
	 * category: a final head after an interim one is HCAT_HEADERS too. */
	bool head = !st->head_done;
	bool interim = head && st->status < 200;
	if (interim && !h->cb.on_interim) {
		kg_h2_block_clear(&st->block);
		return 0; /* the final one follows */
	}
	st->head_done = !interim;
	struct kg_h2_field *f = fields_of(st);
	if (!f)
		return NGHTTP2_ERR_CALLBACK_FAILURE;
	if (interim) {
		h->cb.on_interim(h->ctx, st->id, st->user, st->status, f, st->block.n);
	} else if (head) {
		if (h->cb.on_response)
			h->cb.on_response(h->ctx, st->id, st->user, st->status, f, st->block.n, end);
	} else if (h->cb.on_end) {
		/* A block after the final head is the trailer section (nghttp2
		 * checked it ends the stream). */
		h->cb.on_end(h->ctx, st->id, st->user, f, st->block.n);
	}
	free(f);
	kg_h2_block_clear(&st->block);
	return 0;
}

static int on_data_chunk(nghttp2_session *s, uint8_t flags, int32_t id, const uint8_t *p,
			 size_t n, void *ud)
{
	struct kg_h2c *h = ud;
	(void)flags;
	struct kg_h2c_stream *st = stream_of(h, id);
	if (!st || st->too_large || !h->cb.on_data)
		return nghttp2_session_consume(s, id, n) == 0 ? 0 : NGHTTP2_ERR_CALLBACK_FAILURE;
	st->unconsumed += n;
	h->cb.on_data(h->ctx, id, st->user, p, n);
	return 0;
}

static int on_stream_close(nghttp2_session *s, int32_t id, uint32_t code, void *ud)
{
	struct kg_h2c *h = ud;
	struct kg_h2c_stream *st = stream_of(h, id);
	if (!st)
		return 0;
	/* What the caller never consumed goes back to the connection window. */
	if (st->unconsumed && nghttp2_session_consume_connection(s, st->unconsumed) != 0)
		return NGHTTP2_ERR_CALLBACK_FAILURE;
	h->n_open--;
	if (st->too_large && code == 0)
		code = NGHTTP2_INTERNAL_ERROR;
	if (!h->dead && h->cb.on_stream_close)
		h->cb.on_stream_close(h->ctx, id, st->user, code);
	stream_free(h, st);
	return 0;
}


static ssize_t on_read_data(nghttp2_session *s, int32_t id, uint8_t *buf, size_t length,
			    uint32_t *data_flags, nghttp2_data_source *source, void *ud)
{
	struct kg_h2c *h = ud;
	struct kg_h2c_stream *st = source->ptr;
	(void)s;
	(void)id;
	if (!h->dead && kg_h2_sendq_room_due(&st->sq, st->data_end, length) && h->cb.on_send_room)
		h->cb.on_send_room(h->ctx, st->id, st->user);
	size_t n = kg_h2_sendq_take(&st->sq, buf, length);
	if (st->sq.len == 0 && st->data_end) {
		*data_flags |= NGHTTP2_DATA_FLAG_EOF;
		return (ssize_t)n;
	}
	if (n == 0) {
		st->deferred = true;
		return NGHTTP2_ERR_DEFERRED;
	}
	return (ssize_t)n;
}

/* ---- API ---- */

struct kg_h2c *kg_h2c_create(const struct kg_h2c_limits *limits,
			     const struct kg_h2c_handler *handler, void *ctx)
{
	if (!limits || !handler || limits->stream_window == 0 ||
	    limits->stream_window > MAX_WINDOW || limits->max_header_list_bytes < 1024 ||
	    limits->max_streams_default == 0)
		return NULL;
	struct kg_h2c *h = calloc(1, sizeof(*h));
	if (!h)
		return NULL;
	h->lim = *limits;
	h->cb = *handler;
	h->ctx = ctx;
	nghttp2_session_callbacks *cbs = NULL;
	nghttp2_option *opt = NULL;
	if (nghttp2_session_callbacks_new(&cbs) != 0)
		goto fail;
	nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, on_begin_headers);
	nghttp2_session_callbacks_set_on_header_callback(cbs, on_header);
	nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, on_frame_recv);
	nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, on_data_chunk);
	nghttp2_session_callbacks_set_on_stream_close_callback(cbs, on_stream_close);
	if (nghttp2_option_new(&opt) != 0)
		goto fail;
	/* Response bodies are flow-controlled by the caller (kg_h2c_consume). */
	nghttp2_option_set_no_auto_window_update(opt, 1);
	nghttp2_option_set_no_closed_streams(opt, 1);
	nghttp2_option_set_peer_max_concurrent_streams(opt, limits->max_streams_default);
	if (nghttp2_session_client_new2(&h->s, cbs, h, opt) != 0)
		goto fail;
	nghttp2_option_del(opt);
	opt = NULL;
	nghttp2_session_callbacks_del(cbs);
	cbs = NULL;
	const nghttp2_settings_entry iv[] = {
		{NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
		{NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, limits->stream_window},
		{NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, limits->max_header_list_bytes},
	};
	if (nghttp2_submit_settings(h->s, NGHTTP2_FLAG_NONE, iv, 3) != 0 ||
	    nghttp2_session_set_local_window_size(h->s, NGHTTP2_FLAG_NONE, 0, CONN_WINDOW) != 0)
		goto fail;
	return h;
fail:
	nghttp2_option_del(opt);
	nghttp2_session_callbacks_del(cbs);
	kg_h2c_destroy(h);
	return NULL;
}

void kg_h2c_destroy(struct kg_h2c *h)
{
	if (!h)
		return;
	h->dead = true;
	nghttp2_session_del(h->s);
	h->s = NULL;
	while (h->streams)
		stream_free(h, h->streams);
	free(h);
}

int kg_h2c_feed(struct kg_h2c *h, const uint8_t *p, size_t n)
{
	if (h->fatal)
		return -EPROTO;
	ssize_t rv = nghttp2_session_mem_recv(h->s, p, n);
	if (rv < 0) {
		h->fatal = true;
		return rv == NGHTTP2_ERR_NOMEM || rv == NGHTTP2_ERR_CALLBACK_FAILURE ? -ENOMEM
										     : -EPROTO;
	}
	return 0;
}

ssize_t kg_h2c_output(struct kg_h2c *h, const uint8_t **p)
{
	*p = NULL;
	if (h->fatal)
		return -EPROTO;
	ssize_t n = nghttp2_session_mem_send(h->s, p);
	if (n < 0) {
		h->fatal = true;
		return n == NGHTTP2_ERR_NOMEM ? -ENOMEM : -EPROTO;
	}
	return n;
}

bool kg_h2c_can_open(const struct kg_h2c *h)
{
	if (h->fatal || h->goaway || !nghttp2_session_want_read(h->s))
		return false;
	uint32_t max =
		nghttp2_session_get_remote_settings(h->s, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS);
	return h->n_open < max && nghttp2_session_get_next_stream_id(h->s) < (1u << 31) - 2;
}

static bool field_ok(const struct kg_h2_field *f)
{
	if (f->name_len == 0 || f->name[0] == ':')
		return false;
	for (size_t i = 0; i < f->name_len; i++)
		if ((f->name[i] >= 'A' && f->name[i] <= 'Z') || f->name[i] <= ' ')
			return false;
	for (size_t i = 0; i < f->value_len; i++)
		if (f->value[i] == '\r' || f->value[i] == '\n' || f->value[i] == '\0')
			return false;
	return true;
}

#define NV(n, v, nl, vl) ((nghttp2_nv){(uint8_t *)(n), (uint8_t *)(v), nl, vl, NGHTTP2_NV_FLAG_NONE})

int32_t kg_h2c_request(struct kg_h2c *h, const struct kg_h2c_request *req, void *user)
{
	if (!kg_h2c_can_open(h))
		return -EAGAIN;
	if (!req->method || !req->scheme || !req->path)
		return -EINVAL;
	nghttp2_nv *nv = calloc(req->n_fields + 4, sizeof(*nv));
	struct kg_h2c_stream *st = calloc(1, sizeof(*st));
	if (!nv || !st) {
		free(nv);
		free(st);
		return -ENOMEM;
	}
	size_t k = 0;
	nv[k++] = NV(":method", req->method, 7, strlen(req->method));
	nv[k++] = NV(":scheme", req->scheme, 7, strlen(req->scheme));
	if (req->authority)
		nv[k++] = NV(":authority", req->authority, 10, strlen(req->authority));
	nv[k++] = NV(":path", req->path, 5, strlen(req->path));
	for (size_t i = 0; i < req->n_fields; i++) {
		if (!field_ok(&req->fields[i])) {
			free(nv);
			free(st);
			return -EINVAL;
		}
		nv[k++] = NV(req->fields[i].name, req->fields[i].value, req->fields[i].name_len,
			     req->fields[i].value_len);
	}
	st->user = user;
	st->data_source = !req->end_stream;
	st->data_end = req->end_stream;
	nghttp2_data_provider dp = {.source.ptr = st, .read_callback = on_read_data};
	int32_t id = nghttp2_submit_request(h->s, NULL, nv, k, req->end_stream ? NULL : &dp, NULL);
	free(nv);
	if (id < 0) {
		free(st);
		return id == NGHTTP2_ERR_NOMEM ? -ENOMEM : -EINVAL;
	}
	st->id = id;
	st->next = h->streams;
	h->streams = st;
	h->n_open++;
	return id;
}

void kg_h2c_set_stream_user(struct kg_h2c *h, int32_t id, void *user)
{
	struct kg_h2c_stream *st = stream_of(h, id);
	if (st)
		st->user = user;
}

int kg_h2c_send_data(struct kg_h2c *h, int32_t id, const void *p, size_t n, bool end,
		     size_t low_water)
{
	struct kg_h2c_stream *st = stream_of(h, id);
	if (!st)
		return -ENOENT;
	if (!st->data_source || st->data_end)
		return -EINVAL;
	if (kg_h2_sendq_push(&st->sq, p, n, end, low_water, plain_realloc, NULL) < 0)
		return -ENOMEM;
	st->data_end = end;
	if (!st->deferred)
		return 0;
	st->deferred = false;
	int rv = nghttp2_session_resume_data(h->s, id);
	return rv == 0 ? 0 : rv == NGHTTP2_ERR_NOMEM ? -ENOMEM : -EINVAL;
}

size_t kg_h2c_send_pending(const struct kg_h2c *h, int32_t id)
{
	const struct kg_h2c_stream *st = stream_of(h, id);
	return st ? st->sq.len : 0;
}

int kg_h2c_consume(struct kg_h2c *h, int32_t id, size_t n)
{
	struct kg_h2c_stream *st = stream_of(h, id);
	if (!st)
		return -ENOENT;
	if (n > st->unconsumed)
		return -EINVAL;
	int rv = nghttp2_session_consume(h->s, id, n);
	if (rv != 0)
		return rv == NGHTTP2_ERR_NOMEM ? -ENOMEM : -EINVAL;
	st->unconsumed -= n;
	return 0;
}

int kg_h2c_reset(struct kg_h2c *h, int32_t id, uint32_t code)
{
	if (!stream_of(h, id))
		return -ENOENT;
	int rv = nghttp2_submit_rst_stream(h->s, NGHTTP2_FLAG_NONE, id, code);
	return rv == 0 ? 0 : rv == NGHTTP2_ERR_NOMEM ? -ENOMEM : -EINVAL;
}

size_t kg_h2c_open_streams(const struct kg_h2c *h)
{
	return h->n_open;
}

bool kg_h2c_going_away(const struct kg_h2c *h)
{
	return h->goaway || h->fatal;
}

bool kg_h2c_done(const struct kg_h2c *h)
{
	return h->fatal ||
	       (!nghttp2_session_want_read(h->s) && !nghttp2_session_want_write(h->s)) ||
	       (h->goaway && h->n_open == 0);
}
