/* Expiry visibility (kgated(8) METRICS and LOGGING): the dates of each
 * certificate entry (its first certificate's notAfter, its CRL's
 * nextUpdate) for metrics and `kgatectl cert list`, and the warnings 30, 7
 * and 1 days before them, logged once per threshold and content. */
#ifndef KGATE_CERT_EXPIRY_H
#define KGATE_CERT_EXPIRY_H

#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include "config.h"

/* The control thread reads the files again this often (and after each
 * change), so a threshold crossed while running is logged within it. */
#define KG_EXPIRY_CHECK_MS (3600 * 1000)

/* kg_expiry_threshold / kg_expiry_due: no threshold. 0 means expired. */
#define KG_EXPIRY_NONE (-1)

#define KG_EXPIRY_MD_LEN 32 /* SHA-256 */

struct kg_cert_dates {
	time_t not_after;            /* the file's first certificate: a server chain's leaf */
	bool has_crl;                /* a CA entry with a readable CRL */
	bool has_next_update;        /* and that CRL carries a nextUpdate */
	time_t next_update;
	unsigned char cert_md[KG_EXPIRY_MD_LEN]; /* tell contents apart, dates aside */
	unsigned char crl_md[KG_EXPIRY_MD_LEN];
};

/* Reads the dates of entry c from its files. 0, or -errno (-ENOENT when a
 * file is gone, -EINVAL when it holds no readable certificate or CRL). */
int kg_cert_dates_read(const struct kg_cert_conf *c, struct kg_cert_dates *d);

/* t as RFC 3339 UTC ("2026-12-07T10:00:00Z"; the number when it cannot
 * be formatted). */
void kg_format_rfc3339(time_t t, char *out, size_t outlen);

/* Whole days from now until when, rounded down: negative once when is past. */
int64_t kg_expiry_days_left(time_t when, time_t now);

/* The smallest warning threshold (30, 7 or 1 days) seconds_left is
 * inside, 0 when it is not positive (expired), KG_EXPIRY_NONE when it is
 * more than 30 days away. */
int kg_expiry_threshold(int64_t seconds_left);

/* What to log now for a date seconds_left away when logged (a threshold,
 * 0, or KG_EXPIRY_NONE) is the last one logged for the same content: the
 * threshold it is inside now if that is closer than logged, otherwise
 * KG_EXPIRY_NONE (already said). */
int kg_expiry_due(int logged, int64_t seconds_left);

struct kg_expiry;

/* NULL when out of memory. destroy tolerates NULL. */
struct kg_expiry *kg_expiry_create(void);
void kg_expiry_destroy(struct kg_expiry *e);

/* Reads the dates of every entry of cfg and logs cert.expires_soon (warn)
 * or cert.expired (error) for each threshold newly reached, remembering
 * what it logged per entry name and content; entries gone from cfg are
 * forgotten. An entry whose files cannot be read keeps what was logged
 * for it. Call from one thread. 0, or -ENOMEM (nothing remembered changed). */
int kg_expiry_check(struct kg_expiry *e, const struct kg_config *cfg, time_t now);

#endif
