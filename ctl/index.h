/* The CA database in the format `openssl ca` reads and writes, so one CA
 * folder serves both tools:
 *   index.txt   one line per issued certificate, six tab-separated fields:
 *               status (V valid, R revoked, E expired), notAfter
 *               (YYMMDDHHMMSSZ, or YYYYMMDDHHMMSSZ from 2050), revocation
 *               "date[,reason[,extra]]" (empty unless R), serial (upper-case
 *               hex, even length), file name ("unknown"), subject
 *               ("/C=../CN=.." as X509_NAME_oneline writes it).
 *   serial      the next serial in hex, one line; crlnumber likewise. */
#ifndef KG_CTL_INDEX_H
#define KG_CTL_INDEX_H

#include <stdbool.h>
#include <stddef.h>
#include <time.h>

#include <openssl/bn.h>

#include "fileio.h"

/* 20 octets of serial as hex, plus NUL. */
#define KG_SERIAL_HEX_MAX 41
#define KG_TIME_MAX 16

enum kg_reason {
	KG_REASON_NONE = -1, /* revoked without a recorded reason */
	KG_REASON_UNSPECIFIED = 0,
	KG_REASON_KEY_COMPROMISE = 1,
	KG_REASON_CA_COMPROMISE = 2,
	KG_REASON_AFFILIATION_CHANGED = 3,
	KG_REASON_SUPERSEDED = 4,
	KG_REASON_CESSATION = 5,
	KG_REASON_CERTIFICATE_HOLD = 6,
};

struct kg_index_entry {
	char status;                     /* 'V', 'R' or 'E' */
	char expires[KG_TIME_MAX];       /* ASN.1 time string */
	char revoked[KG_TIME_MAX];       /* revocation time, "" unless R */
	int reason;                      /* enum kg_reason, or a code from openssl ca */
	char *rev_info;                  /* text after the date ("keyCompromise", "holdInstruction,OID"), or NULL */
	char serial[KG_SERIAL_HEX_MAX];
	char *file;
	char *subject;
};

struct kg_index {
	struct kg_index_entry *entries;
	size_t n, cap;
};

/* Loads path (which must exist; empty is fine). NULL with err naming
 * path:line on a malformed line. */
struct kg_index *kg_index_load(const char *path, struct kg_err *err);
struct kg_index *kg_index_create(void);
void kg_index_destroy(struct kg_index *idx);
/* The whole file's text (caller frees). */
char *kg_index_format(const struct kg_index *idx);
/* Copies strings; serial is normalised. */
int kg_index_add(struct kg_index *idx, char status, const char *expires, const char *serial,
		 const char *subject);
struct kg_index_entry *kg_index_find(struct kg_index *idx, const char *serial);
/* Marks e revoked at t for reason. -EALREADY if it is already revoked. */
int kg_index_revoke(struct kg_index_entry *e, time_t t, int reason);

/* Effective status at now: a V entry past notAfter counts as expired. */
const char *kg_index_status(const struct kg_index_entry *e, time_t now);

/* Reasons by name (case-insensitive, as openssl ca compares them). */
int kg_reason_parse(const char *name);
const char *kg_reason_name(int reason);

/* Serials: normalises hex text (upper case, even length, no leading zero
 * octets) into out; -EINVAL if not hex, zero, or longer than 159 bits. */
int kg_serial_normalize(const char *hex, char out[KG_SERIAL_HEX_MAX]);
int kg_serial_format(const BIGNUM *bn, char out[KG_SERIAL_HEX_MAX]);
/* Reads a serial file (serial, crlnumber): its first line as hex. */
int kg_serial_read(const char *path, BIGNUM **out, struct kg_err *err);
/* The file text holding bn + 1, "HEX\n" (caller frees). */
char *kg_serial_next_text(const BIGNUM *bn);

/* ASN.1 time strings as index.txt keeps them. */
int kg_time_to_text(time_t t, char out[KG_TIME_MAX]);
int kg_time_from_text(const char *text, time_t *out);

#endif
