/* The BIO OpenSSL writes a connection's outgoing ciphertext to, and the
 * outgoing byte queue behind it.
 *
 * Records go straight into the connection's send span (c_out, a pool
 * buffer), so they are copied once between OpenSSL and the socket rather
 * than twice through a memory BIO (the copies were a fifth of the CPU of a
 * 1 MiB response). What does not fit behind the bytes already in c_out
 * queues in a "spill" memory BIO that exists only then; bytes never
 * overtake each other: once something is spilled, everything after it is
 * spilled too until the flush has moved it into c_out. */
#ifndef KGATE_CLIENT_BIO_H
#define KGATE_CLIENT_BIO_H

#include <stddef.h>

#include <openssl/bio.h>

struct kg_conn;

/* A new BIO writing into c's send span; NULL when out of memory. The SSL
 * it is given to owns it; c must outlive it (it is freed with c->ssl). */
BIO *kg_client_bio_new(struct kg_conn *c);

/* Appends len bytes to the connection's outgoing queue (c_out, then the
 * spill BIO), as the BIO does for OpenSSL's records; on a kTLS socket the
 * https listener queues plaintext here and the kernel encrypts it when
 * kg_conn_flush_client sends. 0, or -1 when out of memory. */
int kg_client_out_write(struct kg_conn *c, const void *data, size_t len);

/* Bytes OpenSSL wrote that wait in the spill BIO (not yet in c_out). */
size_t kg_client_spill_pending(const struct kg_conn *c);

#endif
