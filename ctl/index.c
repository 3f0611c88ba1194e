#include "index.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/asn1.h>
#include <openssl/crypto.h>
#include <openssl/err.h>

/* openssl ca's names, in the order of their CRL reason codes (8 and up
 * are its extras: hold instructions and compromise times). */
static const char *const reason_names[] = {
	"unspecified", "keyCompromise", "CACompromise", "affiliationChanged",
	"superseded", "cessationOfOperation", "certificateHold", "removeFromCRL",
};

int kg_reason_parse(const char *name)
{
	for (size_t i = 0; i < sizeof(reason_names) / sizeof(reason_names[0]); i++)
		if (strcasecmp(name, reason_names[i]) == 0)
			return (int)i;
	return -EINVAL;
}

const char *kg_reason_name(int reason)
{
	if (reason < 0 || (size_t)reason >= sizeof(reason_names) / sizeof(reason_names[0]))
		return NULL;
	return reason_names[reason];
}

/* Reason code of the text after the revocation date, as openssl ca's
 * unpack_revinfo reads it; -EINVAL if unknown. */
static int reason_of_info(const char *info)
{
	char name[32];
	size_t n = strcspn(info, ",");

	if (n >= sizeof(name))
		return -EINVAL;
	memcpy(name, info, n);
	name[n] = '\0';
	if (strcasecmp(name, "holdInstruction") == 0)
		return KG_REASON_CERTIFICATE_HOLD;
	if (strcasecmp(name, "keyTime") == 0)
		return KG_REASON_KEY_COMPROMISE;
	if (strcasecmp(name, "CAkeyTime") == 0)
		return KG_REASON_CA_COMPROMISE;
	return kg_reason_parse(name);
}

int kg_time_to_text(time_t t, char out[KG_TIME_MAX])
{
	ASN1_TIME *at = ASN1_TIME_set(NULL, t);

	if (!at)
		return -EINVAL;
	int len = ASN1_STRING_length(at);
	if (len <= 0 || len >= KG_TIME_MAX) {
		ASN1_TIME_free(at);
		return -EINVAL;
	}
	memcpy(out, ASN1_STRING_get0_data(at), (size_t)len);
	out[len] = '\0';
	ASN1_TIME_free(at);
	return 0;
}

int kg_time_from_text(const char *text, time_t *out)
{
	size_t len = strlen(text);
	ASN1_TIME *at;
	struct tm tm;
	int ret = -EINVAL;

	/* UTCTime (13) or GeneralizedTime (15), always in Zulu. */
	if ((len != 13 && len != 15) || text[len - 1] != 'Z' || strspn(text, "0123456789") != len - 1)
		return -EINVAL;
	at = ASN1_TIME_new();
	if (!at)
		return -ENOMEM;
	if (ASN1_TIME_set_string(at, text) == 1 && ASN1_TIME_to_tm(at, &tm) == 1) {
		*out = timegm(&tm);
		ret = 0;
	}
	ERR_clear_error();
	ASN1_TIME_free(at);
	return ret;
}

/* Hex text (zero allowed) into a BIGNUM of at most 159 bits. */
static int serial_parse(const char *hex, BIGNUM **out)
{
	size_t len = strlen(hex);
	BIGNUM *bn = NULL;

	if (len == 0 || len > 40 || strspn(hex, "0123456789abcdefABCDEF") != len)
		return -EINVAL;
	if (BN_hex2bn(&bn, hex) != (int)len) {
		BN_free(bn);
		ERR_clear_error();
		return -EINVAL;
	}
	/* 20 octets in DER including the sign bit, as RFC 5280 allows. */
	if (BN_num_bits(bn) > 159) {
		BN_free(bn);
		return -EINVAL;
	}
	*out = bn;
	return 0;
}

int kg_serial_format(const BIGNUM *bn, char out[KG_SERIAL_HEX_MAX])
{
	char *hex;

	if (BN_is_zero(bn)) {
		strcpy(out, "00");
		return 0;
	}
	/* BN_bn2hex: upper case, whole octets, as openssl ca names files. */
	hex = BN_bn2hex(bn);
	if (!hex)
		return -ENOMEM;
	if (strlen(hex) >= KG_SERIAL_HEX_MAX || hex[0] == '-') {
		OPENSSL_free(hex);
		return -ERANGE;
	}
	strcpy(out, hex);
	OPENSSL_free(hex);
	return 0;
}

int kg_serial_normalize(const char *hex, char out[KG_SERIAL_HEX_MAX])
{
	BIGNUM *bn = NULL;
	int ret = serial_parse(hex, &bn);

	if (ret)
		return ret;
	if (BN_is_zero(bn))
		ret = -EINVAL; /* RFC 5280: serials are positive */
	else
		ret = kg_serial_format(bn, out);
	BN_free(bn);
	return ret;
}

int kg_serial_read(const char *path, BIGNUM **out, struct kg_err *err)
{
	char *text = kg_file_read(path, 256, NULL, err);
	int ret;

	if (!text)
		return -EIO;
	text[strcspn(text, "\r\n")] = '\0';
	ret = serial_parse(text, out);
	if (ret)
		kg_errf(err, EINVAL, "%s: '%s' is not a hex serial number", path, text);
	free(text);
	return ret;
}

char *kg_serial_next_text(const BIGNUM *bn)
{
	char hex[KG_SERIAL_HEX_MAX];
	BIGNUM *next = BN_dup(bn);
	char *text = NULL;

	if (!next)
		return NULL;
	if (BN_add_word(next, 1) && kg_serial_format(next, hex) == 0 &&
	    asprintf(&text, "%s\n", hex) == -1)
		text = NULL;
	BN_free(next);
	return text;
}

struct kg_index *kg_index_create(void)
{
	return calloc(1, sizeof(struct kg_index));
}

static void entry_clear(struct kg_index_entry *e)
{
	free(e->rev_info);
	free(e->file);
	free(e->subject);
}

void kg_index_destroy(struct kg_index *idx)
{
	if (!idx)
		return;
	for (size_t i = 0; i < idx->n; i++)
		entry_clear(&idx->entries[i]);
	free(idx->entries);
	free(idx);
}

static struct kg_index_entry *entry_new(struct kg_index *idx)
{
	if (idx->n == idx->cap) {
		size_t cap = idx->cap ? idx->cap * 2 : 16;
		void *p = realloc(idx->entries, cap * sizeof(*idx->entries));
		if (!p)
			return NULL;
		idx->entries = p;
		idx->cap = cap;
	}
	struct kg_index_entry *e = &idx->entries[idx->n];
	memset(e, 0, sizeof(*e));
	e->reason = KG_REASON_NONE;
	return e;
}

/* Fills e from the revocation field "date[,info]"; -EINVAL if malformed. */
static int parse_revocation(struct kg_index_entry *e, const char *field)
{
	size_t n = strcspn(field, ",");
	time_t t;

	if (n >= KG_TIME_MAX)
		return -EINVAL;
	memcpy(e->revoked, field, n);
	e->revoked[n] = '\0';
	if (kg_time_from_text(e->revoked, &t) != 0)
		return -EINVAL;
	if (field[n] == ',') {
		e->reason = reason_of_info(field + n + 1);
		if (e->reason < 0)
			return -EINVAL;
		e->rev_info = strdup(field + n + 1);
		if (!e->rev_info)
			return -ENOMEM;
	}
	return 0;
}

/* Parses one line (without its newline) into a new entry. */
static int parse_line(struct kg_index *idx, char *line, const char **why)
{
	char *f[6];
	size_t nf = 0;
	char *p = line;
	struct kg_index_entry *e;
	time_t t;

	for (;;) {
		if (nf == 6) {
			*why = "more than 6 tab-separated fields";
			return -EINVAL;
		}
		f[nf++] = p;
		p = strchr(p, '\t');
		if (!p)
			break;
		*p++ = '\0';
	}
	if (nf != 6) {
		*why = "fewer than 6 tab-separated fields";
		return -EINVAL;
	}
	if (strlen(f[0]) != 1 || !strchr("VRE", f[0][0])) {
		*why = "status is not V, R or E";
		return -EINVAL;
	}
	if (strlen(f[1]) >= KG_TIME_MAX || kg_time_from_text(f[1], &t) != 0) {
		*why = "bad expiry date";
		return -EINVAL;
	}
	e = entry_new(idx);
	if (!e) {
		*why = "out of memory";
		return -ENOMEM;
	}
	e->status = f[0][0];
	strcpy(e->expires, f[1]);
	if (e->status == 'R' ? parse_revocation(e, f[2]) != 0 : f[2][0] != '\0') {
		*why = e->status == 'R' ? "bad revocation date or reason"
					: "revocation field set on an unrevoked entry";
		entry_clear(e);
		return -EINVAL;
	}
	if (kg_serial_normalize(f[3], e->serial) != 0) {
		*why = "bad serial number";
		entry_clear(e);
		return -EINVAL;
	}
	e->file = strdup(f[4]);
	e->subject = strdup(f[5]);
	if (!e->file || !e->subject) {
		*why = "out of memory";
		entry_clear(e);
		return -ENOMEM;
	}
	idx->n++;
	return 0;
}

struct kg_index *kg_index_load(const char *path, struct kg_err *err)
{
	char *text = kg_file_read(path, 64u << 20, NULL, err);
	struct kg_index *idx;
	char *line, *next;
	int lineno = 0;

	if (!text)
		return NULL;
	idx = kg_index_create();
	if (!idx) {
		kg_errf(err, ENOMEM, "%s: out of memory", path);
		goto free_text;
	}
	for (line = text; *line; line = next) {
		const char *why = NULL;
		next = strchr(line, '\n');
		if (!next) {
			kg_errf(err, EINVAL, "%s:%d: last line has no newline (file cut short?)",
				path, lineno + 1);
			goto destroy_idx;
		}
		*next++ = '\0';
		lineno++;
		if (parse_line(idx, line, &why) != 0) {
			kg_errf(err, EINVAL, "%s:%d: %s", path, lineno, why);
			goto destroy_idx;
		}
		if (kg_index_find(idx, idx->entries[idx->n - 1].serial) != &idx->entries[idx->n - 1]) {
			kg_errf(err, EINVAL, "%s:%d: serial %s appears twice", path, lineno,
				idx->entries[idx->n - 1].serial);
			goto destroy_idx;
		}
	}
	free(text);
	return idx;

destroy_idx:
	kg_index_destroy(idx);
free_text:
	free(text);
	return NULL;
}

char *kg_index_format(const struct kg_index *idx)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);

	if (!f)
		return NULL;
	for (size_t i = 0; i < idx->n; i++) {
		const struct kg_index_entry *e = &idx->entries[i];
		fprintf(f, "%c\t%s\t%s%s%s\t%s\t%s\t%s\n", e->status, e->expires, e->revoked,
			e->rev_info ? "," : "", e->rev_info ? e->rev_info : "", e->serial,
			e->file, e->subject);
	}
	if (fclose(f) != 0) {
		free(buf);
		return NULL;
	}
	return buf;
}

int kg_index_add(struct kg_index *idx, char status, const char *expires, const char *serial,
		 const char *subject)
{
	struct kg_index_entry *e;
	time_t t;

	if (!strchr("VE", status) || strlen(expires) >= KG_TIME_MAX ||
	    kg_time_from_text(expires, &t) != 0 || strchr(subject, '\t') || strchr(subject, '\n'))
		return -EINVAL;
	e = entry_new(idx);
	if (!e)
		return -ENOMEM;
	e->status = status;
	strcpy(e->expires, expires);
	if (kg_serial_normalize(serial, e->serial) != 0)
		return -EINVAL;
	e->file = strdup("unknown");
	e->subject = strdup(subject);
	if (!e->file || !e->subject) {
		entry_clear(e);
		return -ENOMEM;
	}
	idx->n++;
	return 0;
}

struct kg_index_entry *kg_index_find(struct kg_index *idx, const char *serial)
{
	char norm[KG_SERIAL_HEX_MAX];

	if (kg_serial_normalize(serial, norm) != 0)
		return NULL;
	for (size_t i = 0; i < idx->n; i++)
		if (strcmp(idx->entries[i].serial, norm) == 0)
			return &idx->entries[i];
	return NULL;
}

int kg_index_revoke(struct kg_index_entry *e, time_t t, int reason)
{
	char *info = NULL;

	if (e->status == 'R')
		return -EALREADY;
	if (reason != KG_REASON_NONE) {
		const char *name = kg_reason_name(reason);
		if (!name || !(info = strdup(name)))
			return name ? -ENOMEM : -EINVAL;
	}
	if (kg_time_to_text(t, e->revoked) != 0) {
		free(info);
		return -EINVAL;
	}
	free(e->rev_info);
	e->rev_info = info;
	e->reason = reason;
	e->status = 'R';
	return 0;
}

const char *kg_index_status(const struct kg_index_entry *e, time_t now)
{
	time_t exp;

	if (e->status == 'R')
		return "revoked";
	if (e->status == 'E' || (kg_time_from_text(e->expires, &exp) == 0 && exp < now))
		return "expired";
	return "valid";
}
