/* Where an https connection's plaintext comes from and goes to.
 *
 * Userspace TLS: OpenSSL decrypts what conn.c fed into the memory BIO and
 * encrypts into the connection's send queue (kg_client_out_write, conn.h). Kernel TLS
 * (after the handoff of conn.c/ktls.c): the client socket itself carries
 * plaintext; the kernel decrypts on recvmsg and encrypts on send, and
 * records that are not data come back with their type
 * (kg_client_ktls_control). forward_http.c runs one HTTP engine over
 * either; where they differ in kind (bodies spliced, readiness polled,
 * close_notify sent after the last byte) it asks `kernel`. */
#ifndef KGATE_CLIENT_IO_H
#define KGATE_CLIENT_IO_H

#include <stdbool.h>
#include <stddef.h>

struct kg_conn;

/* read's answers besides a byte count. */
enum {
	KG_CIO_WANT = 0,    /* no plaintext yet: OpenSSL armed a receive (the
			     * data handler runs when it completes); kernel:
			     * the caller polls the socket for POLLIN */
	KG_CIO_EOF = -1,    /* the client ended its stream (FIN, close_notify) */
	KG_CIO_CLOSED = -2, /* the connection was closed (logged) */
};

struct kg_client_io {
	const char *name;
	/* The client socket carries plaintext: bodies may be spliced to and
	 * from it, readiness is polled, and close_notify is sent with
	 * kg_ktls_send_close_notify once everything queued went out. */
	bool kernel;
	/* Up to len bytes of plaintext into buf: > 0 bytes, or KG_CIO_*. */
	int (*read)(struct kg_conn *c, unsigned char *buf, size_t len);
	/* Queues plaintext for the client; kg_conn_flush_client sends it.
	 * 0, or -errno after closing c. */
	int (*write)(struct kg_conn *c, const void *p, size_t n);
	/* Queues close_notify behind what was written, where the TLS
	 * library does so (OpenSSL); a no-op for the kernel. */
	void (*end)(struct kg_conn *c);
};

extern const struct kg_client_io kg_client_io_openssl;
extern const struct kg_client_io kg_client_io_ktls;

/* A record that is not application data came from the client's kTLS
 * socket (read with kg_ktls_recv_record): close_notify returns 0 (end of
 * the client's stream); an alert, a TLS 1.3 KeyUpdate (kgate does not
 * re-key the kernel: close_notify, then close) or anything else closes c
 * and returns -errno. Shared by the splice paths and the https listener. */
int kg_client_ktls_control(struct kg_conn *c, unsigned char type, const unsigned char *rec,
			   size_t n);

#endif
