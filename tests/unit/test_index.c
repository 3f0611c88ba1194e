/* index.c: serials (format, increment, files), index.txt lines in the
 * format `openssl ca` writes, and revocation bookkeeping. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <criterion/criterion.h>
#include <criterion/parameterized.h>

#include "certgen.h"
#include "index.h"

struct serial_case {
	const char *desc;
	const char *in;
	const char *norm; /* NULL: refused */
	const char *next; /* serial file text after it */
};

static const struct serial_case serial_cases[] = {
	{"one digit", "1", "01", "02\n"},
	{"lower case", "0a", "0A", "0B\n"},
	{"leading zero octets", "00FF", "FF", "0100\n"},
	{"odd length", "abc", "0ABC", "0ABD\n"},
	{"carry across octets", "7FFFFFFFFFFFFFFF", "7FFFFFFFFFFFFFFF", "8000000000000000\n"},
	{"159 bits", "7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF",
	 "7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF", "8000000000000000000000000000000000000000\n"},
	{"160 bits", "8000000000000000000000000000000000000000", NULL, NULL},
	{"41 digits", "01000000000000000000000000000000000000000", NULL, NULL},
	{"zero", "0", NULL, NULL},
	{"not hex", "12G4", NULL, NULL},
	{"sign", "-1", NULL, NULL},
	{"prefix", "0x10", NULL, NULL},
	{"empty", "", NULL, NULL},
};

TC_INDEX_PARAMS(index, serial, sizeof(serial_cases) / sizeof(serial_cases[0]))

ParameterizedTest(size_t *i, index, serial)
{
	const struct serial_case *c = &serial_cases[*i];
	char out[KG_SERIAL_HEX_MAX];
	int ret = kg_serial_normalize(c->in, out);

	if (!c->norm) {
		cr_assert_eq(ret, -EINVAL, "%s: accepted as %s", c->desc, out);
		return;
	}
	cr_assert_eq(ret, 0, "%s", c->desc);
	cr_assert_str_eq(out, c->norm, "%s", c->desc);
	BIGNUM *bn = NULL;
	cr_assert(BN_hex2bn(&bn, out));
	char *next = kg_serial_next_text(bn);
	cr_assert_str_eq(next, c->next, "%s", c->desc);
	free(next);
	BN_free(bn);
}

static struct tc_dir dir;

static void make_dir(void)
{
	tc_dir_create(&dir);
}

static void drop_dir(void)
{
	tc_dir_remove(&dir);
}

Test(index, serial_file, .init = make_dir, .fini = drop_dir)
{
	struct kg_err err = {""};
	char hex[KG_SERIAL_HEX_MAX];
	BIGNUM *bn = NULL;

	tc_write_text(tc_file(&dir, "serial"), "0a1b\n");
	cr_assert_eq(kg_serial_read(tc_file(&dir, "serial"), &bn, &err), 0, "%s", err.msg);
	cr_assert_eq(kg_serial_format(bn, hex), 0);
	cr_assert_str_eq(hex, "0A1B");
	BN_free(bn);
	bn = NULL;
	/* crlnumber starts at 00 in some openssl ca folders: zero reads fine. */
	tc_write_text(tc_file(&dir, "crlnumber"), "00\n");
	cr_assert_eq(kg_serial_read(tc_file(&dir, "crlnumber"), &bn, &err), 0, "%s", err.msg);
	cr_assert(BN_is_zero(bn));
	BN_free(bn);
	bn = NULL;

	tc_write_text(tc_file(&dir, "bad"), "zz\n");
	cr_assert_eq(kg_serial_read(tc_file(&dir, "bad"), &bn, &err), -EINVAL);
	cr_assert(strstr(err.msg, "'zz' is not a hex serial number"), "%s", err.msg);
	cr_assert_neq(kg_serial_read(tc_file(&dir, "missing"), &bn, &err), 0);
	cr_assert(strstr(err.msg, "No such file"), "%s", err.msg);
}

/* Lines as openssl ca writes them: valid, revoked with and without a
 * reason, a hold instruction, expired, and a GeneralizedTime expiry. */
static const char round_trip[] =
	"V\t271126182515Z\t\t62AFE1EAC5B01C0F\tunknown\t/C=CN/O=Example/CN=lb.example\n"
	"R\t271126182515Z\t261126182515Z,keyCompromise\t62AFE1EAC5B01C10\tunknown\t/CN=alice\n"
	"R\t271126182515Z\t261126182515Z\t11\tunknown\t/CN=bob\n"
	"R\t271126182515Z\t261126182515Z,holdInstruction,1.2.840.10040.2.1\t12\tunknown\t/CN=held\n"
	"E\t210101000000Z\t\t0100\t0100.pem\t/CN=old\n"
	"V\t20991231235959Z\t\t13\tunknown\t/CN=far future/O=x\n";

Test(index, round_trip, .init = make_dir, .fini = drop_dir)
{
	struct kg_err err = {""};
	struct kg_index *idx;

	tc_write_text(tc_file(&dir, "index.txt"), round_trip);
	idx = kg_index_load(tc_file(&dir, "index.txt"), &err);
	cr_assert_not_null(idx, "%s", err.msg);
	cr_assert_eq(idx->n, 6);

	struct kg_index_entry *e = &idx->entries[1];
	cr_assert_eq(e->status, 'R');
	cr_assert_str_eq(e->revoked, "261126182515Z");
	cr_assert_eq(e->reason, KG_REASON_KEY_COMPROMISE);
	cr_assert_str_eq(e->serial, "62AFE1EAC5B01C10");
	cr_assert_str_eq(e->subject, "/CN=alice");
	cr_assert_eq(idx->entries[2].reason, KG_REASON_NONE);
	cr_assert_eq(idx->entries[3].reason, KG_REASON_CERTIFICATE_HOLD);
	cr_assert_str_eq(idx->entries[4].file, "0100.pem");

	cr_assert_eq(kg_index_find(idx, "62afe1eac5b01c0f"), &idx->entries[0]);
	cr_assert_eq(kg_index_find(idx, "0011"), &idx->entries[2]);
	cr_assert_null(kg_index_find(idx, "14"));

	char *text = kg_index_format(idx);
	cr_assert_str_eq(text, round_trip);
	free(text);
	kg_index_destroy(idx);
}

Test(index, status_at_a_time)
{
	struct kg_index *idx = kg_index_create();
	time_t exp;

	cr_assert_eq(kg_index_add(idx, 'V', "300101000000Z", "01", "/CN=a"), 0);
	cr_assert_eq(kg_index_add(idx, 'E', "200101000000Z", "02", "/CN=b"), 0);
	cr_assert_eq(kg_time_from_text("300101000000Z", &exp), 0);
	cr_assert_str_eq(kg_index_status(&idx->entries[0], exp - 1), "valid");
	cr_assert_str_eq(kg_index_status(&idx->entries[0], exp + 1), "expired");
	cr_assert_str_eq(kg_index_status(&idx->entries[1], 0), "expired");
	cr_assert_eq(kg_index_revoke(&idx->entries[0], exp - 100, KG_REASON_SUPERSEDED), 0);
	cr_assert_str_eq(kg_index_status(&idx->entries[0], exp - 1), "revoked");
	cr_assert_eq(kg_index_revoke(&idx->entries[0], exp - 50, KG_REASON_NONE), -EALREADY);
	cr_assert_str_eq(idx->entries[0].revoked, "291231235820Z");

	char *text = kg_index_format(idx);
	cr_assert_str_eq(text, "R\t300101000000Z\t291231235820Z,superseded\t01\tunknown\t/CN=a\n"
			       "E\t200101000000Z\t\t02\tunknown\t/CN=b\n");
	free(text);
	/* A tab in a subject would shift every later field. */
	cr_assert_eq(kg_index_add(idx, 'V', "300101000000Z", "03", "/CN=a\tb"), -EINVAL);
	cr_assert_eq(kg_index_add(idx, 'V', "3001", "03", "/CN=a"), -EINVAL);
	cr_assert_eq(idx->n, 2);
	kg_index_destroy(idx);
}

struct bad_case {
	const char *desc;
	const char *text;
	const char *want;
};

static const struct bad_case bad_cases[] = {
	{"five fields", "V\t300101000000Z\t\t01\tunknown\n", "index.txt:1: fewer than 6"},
	{"seven fields", "V\t300101000000Z\t\t01\tunknown\t/CN=a\tx\n", "index.txt:1: more than 6"},
	{"bad status", "X\t300101000000Z\t\t01\tunknown\t/CN=a\n", "index.txt:1: status"},
	{"bad expiry", "V\t3001010000Z\t\t01\tunknown\t/CN=a\n", "index.txt:1: bad expiry"},
	{"revoked without date", "R\t300101000000Z\t\t01\tunknown\t/CN=a\n",
	 "index.txt:1: bad revocation"},
	{"unknown reason", "R\t300101000000Z\t200101000000Z,bogus\t01\tunknown\t/CN=a\n",
	 "index.txt:1: bad revocation"},
	{"valid with a date", "V\t300101000000Z\t200101000000Z\t01\tunknown\t/CN=a\n",
	 "index.txt:1: revocation field set"},
	{"bad serial", "V\t300101000000Z\t\tXY\tunknown\t/CN=a\n", "index.txt:1: bad serial"},
	{"second line", "V\t300101000000Z\t\t01\tunknown\t/CN=a\nV\t30\t\t02\tunknown\t/CN=b\n",
	 "index.txt:2: bad expiry"},
	{"duplicate serial",
	 "V\t300101000000Z\t\t01\tunknown\t/CN=a\nV\t300101000000Z\t\t0001\tunknown\t/CN=b\n",
	 "index.txt:2: serial 01 appears twice"},
	{"cut short", "V\t300101000000Z\t\t01\tunknown\t/CN=a", "index.txt:1: last line has no newline"},
};

TC_INDEX_PARAMS(index, malformed, sizeof(bad_cases) / sizeof(bad_cases[0]))

ParameterizedTest(size_t *i, index, malformed, .init = make_dir, .fini = drop_dir)
{
	const struct bad_case *c = &bad_cases[*i];
	struct kg_err err = {""};

	tc_write_text(tc_file(&dir, "index.txt"), c->text);
	cr_assert_null(kg_index_load(tc_file(&dir, "index.txt"), &err), "%s: loaded", c->desc);
	cr_assert(strstr(err.msg, c->want), "%s: message '%s' lacks '%s'", c->desc, err.msg,
		  c->want);
}

Test(index, empty_file_is_an_empty_database, .init = make_dir, .fini = drop_dir)
{
	struct kg_err err = {""};

	tc_write_text(tc_file(&dir, "index.txt"), "");
	struct kg_index *idx = kg_index_load(tc_file(&dir, "index.txt"), &err);
	cr_assert_not_null(idx, "%s", err.msg);
	cr_assert_eq(idx->n, 0);
	char *text = kg_index_format(idx);
	cr_assert_str_eq(text, "");
	free(text);
	kg_index_destroy(idx);
}

struct reason_case {
	const char *name;
	int code;
};

static const struct reason_case reason_cases[] = {
	{"unspecified", 0}, {"keyCompromise", 1}, {"keycompromise", 1}, {"cACompromise", 2},
	{"CACompromise", 2}, {"affiliationChanged", 3}, {"superseded", 4},
	{"cessationOfOperation", 5}, {"certificateHold", 6}, {"bogus", -EINVAL}, {"", -EINVAL},
};

TC_INDEX_PARAMS(index, reasons, sizeof(reason_cases) / sizeof(reason_cases[0]))

ParameterizedTest(size_t *i, index, reasons)
{
	const struct reason_case *c = &reason_cases[*i];
	cr_assert_eq(kg_reason_parse(c->name), c->code, "%s", c->name);
	if (c->code >= 0)
		cr_assert_eq(kg_reason_parse(kg_reason_name(c->code)), c->code);
}
