/* The daemon's desired state: one JSON document (the configuration
 * schema, config.h) in STATE_DIR/state.json, with the certificate files it
 * names stored under STATE_DIR/certs/ (private keys 0600). The document is
 * the source of truth for the control plane: a change is made on a copy,
 * validated by parsing it like a configuration, applied, and persisted
 * atomically (temp file, fsync, rename, fsync of the folder) before it is
 * acknowledged. Owned by one thread at a time (main, then the control
 * thread). */
#ifndef KGATE_STATE_H
#define KGATE_STATE_H

#include <stdbool.h>
#include <stddef.h>

#include <json-c/json.h>

#include "config.h"

struct kg_state {
	char *dir;          /* absolute */
	json_object *doc;   /* the last acknowledged document; file paths relative to dir */
	int lock_fd;        /* the folder, flock()ed; valid when locked */
	bool locked;
};

/* Creates dir (0700) and dir/certs if missing. 0 or -errno with err. */
int kg_state_open(struct kg_state *st, const char *dir, char *err, size_t errlen);
void kg_state_close(struct kg_state *st);

/* One kgated per state folder: an exclusive flock on the folder itself,
 * held for the process's life. inherited_fd >= 0 is the folder's fd that
 * an upgrading kgated passed on (upgrade.h), already locked: the lock
 * comes with it. 0, or -EWOULDBLOCK (another kgated holds it) / -errno
 * with err. */
int kg_state_lock(struct kg_state *st, int inherited_fd, char *err, size_t errlen);
/* Gives the lock up (the process it was handed to holds it now). */
void kg_state_unlock(struct kg_state *st);

enum kg_state_source { KG_STATE_FROM_DIR, KG_STATE_FROM_CONFIG, KG_STATE_EMPTY };

/* Loads st->doc: the state already in the folder wins; otherwise (or with
 * reseed) the configuration file at seed_path (may be NULL) is imported —
 * its certificate files copied into the folder — and persisted. The
 * result is only read here; the caller parses and applies it. */
int kg_state_load(struct kg_state *st, const char *seed_path, bool reseed,
		  enum kg_state_source *source, char *err, size_t errlen);

/* Reads a JSON document (a state.json or a configuration file): NULL with
 * err naming path when unreadable or not a JSON object. */
json_object *kg_state_read_doc(const char *path, char *err, size_t errlen);

/* Writes data as a new file under certs/ (fsynced, mode 0600 when secret,
 * else 0644) named after the certificate; returns its path relative to
 * the state folder (free it), or NULL with err. */
char *kg_state_store_file(struct kg_state *st, const char *cert_name, const char *ext,
			  const char *data, size_t len, bool secret, char *err,
			  size_t errlen);

/* Parses doc like a configuration (paths resolve against the folder). */
struct kg_config *kg_state_parse(const struct kg_state *st, json_object *doc, char *err,
				 size_t errlen);

/* Persists doc atomically, then makes it st->doc (taking the caller's
 * reference; the old one is released). 0, or -errno with err and st
 * unchanged. */
int kg_state_commit(struct kg_state *st, json_object *doc, char *err, size_t errlen);

/* Removes files under certs/ that the document no longer names (left by
 * replaced or deleted certificates, or by a crash between steps). */
void kg_state_gc(struct kg_state *st);

/* Writes a document to path atomically (exposed for unit tests). */
int kg_state_write_atomic(const char *path, const char *text, char *err, size_t errlen);

#endif
