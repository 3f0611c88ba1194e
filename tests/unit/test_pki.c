/* pki.c: refusal of weak parameters, and the CA's life in a temp folder:
 * init, issue (verified with X509_verify_cert), revoke, CRL, PKCS#12,
 * and failed operations that must leave the folder as it was. */
#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <openssl/pem.h>
#include <openssl/pkcs12.h>
#include <openssl/x509v3.h>

#include "certgen.h"
#include "pki.h"

/* ---- weak parameters ---- */

struct param_case {
	const char *desc;
	char kind; /* 'k' key, 'd' digest, 'D' leaf days */
	const char *value;
	bool force;
	const char *want; /* NULL: accepted */
};

static const struct param_case param_cases[] = {
	{"ec-p256", 'k', "ec-p256", false, NULL},
	{"ec-p384", 'k', "ec-p384", false, NULL},
	{"rsa-2048", 'k', "rsa-2048", false, NULL},
	{"rsa-4096", 'k', "rsa-4096", false, NULL},
	{"rsa-1024", 'k', "rsa-1024", false, "RSA keys below 2048 bits are weak"},
	{"rsa-512", 'k', "rsa-512", false, "RSA keys below 2048 bits are weak"},
	{"odd RSA size", 'k', "rsa-2500", false, "unknown key type"},
	{"dsa", 'k', "dsa-2048", false, "unknown key type"},
	{"sha256", 'd', "sha256", false, NULL},
	{"sha512", 'd', "sha512", false, NULL},
	{"md5", 'd', "md5", false, "refused: MD5 signatures can be forged"},
	{"sha1", 'd', "sha1", false, "refused: SHA-1 signatures can be forged"},
	{"SHA1", 'd', "SHA1", false, "refused: SHA-1"},
	{"sha224", 'd', "sha224", false, "unknown digest"},
	{"825 days", 'D', "825", false, NULL},
	{"826 days", 'D', "826", false, "beyond 825 days are refused"},
	{"826 days forced", 'D', "826", true, NULL},
	{"zero days", 'D', "0", true, "not a number of days"},
	{"not a number", 'D', "12x", true, "not a number of days"},
	{"absurd", 'D', "99999999999", true, "not a number of days"},
};

TC_INDEX_PARAMS(pki, weak_parameters, sizeof(param_cases) / sizeof(param_cases[0]))

ParameterizedTest(size_t *i, pki, weak_parameters)
{
	const struct param_case *c = &param_cases[*i];
	struct kg_err err = {""};
	struct kg_key_spec spec;
	const EVP_MD *md;
	int days, ret;

	if (c->kind == 'k')
		ret = kg_key_spec_parse(c->value, &spec, &err);
	else if (c->kind == 'd')
		ret = kg_digest_parse(c->value, &md, &err);
	else
		ret = kg_days_parse(c->value, KG_LEAF_MAX_DAYS, c->force, &days, &err);
	if (!c->want) {
		cr_assert_eq(ret, 0, "%s: %s", c->desc, err.msg);
		return;
	}
	cr_assert_eq(ret, -EINVAL, "%s: accepted", c->desc);
	cr_assert(strstr(err.msg, c->want), "%s: message '%s' lacks '%s'", c->desc, err.msg,
		  c->want);
	cr_assert(strstr(err.msg, c->value), "%s: message '%s' does not name '%s'", c->desc,
		  err.msg, c->value);
}

/* ---- a CA in a temp folder ---- */

static struct tc_dir dir;
static const char *ca_dir;

static const struct kg_key_spec p256 = {EVP_PKEY_EC, NID_X9_62_prime256v1};

static void make_ca(void)
{
	struct kg_err err = {""};

	tc_dir_create(&dir);
	ca_dir = strdup(tc_file(&dir, "ca"));
	struct kg_ca_init_opts o = {.dir = ca_dir, .subject = "/C=DE/O=kgate test/CN=Test CA",
				    .key = p256, .md = EVP_sha256(), .days = 30,
				    .serial = "1000"};
	cr_assert_eq(kg_ca_init(&o, &err), 0, "init: %s", err.msg);
}

static void drop_ca(void)
{
	free((void *)ca_dir);
	tc_dir_remove(&dir);
}

static struct kg_issue_opts issue_opts(enum kg_cert_type type, const char *subject,
				       const char *out)
{
	return (struct kg_issue_opts){.dir = ca_dir, .type = type, .subject = subject,
				      .days = 30, .key = p256, .md = EVP_sha256(),
				      .out = tc_file(&dir, out)};
}

static X509 *read_cert(const char *path)
{
	FILE *f = fopen(path, "r");
	cr_assert_not_null(f, "%s", path);
	X509 *x = PEM_read_X509(f, NULL, NULL, NULL);
	fclose(f);
	cr_assert_not_null(x, "%s", path);
	return x;
}

static X509_CRL *read_crl(const char *path)
{
	FILE *f = fopen(path, "r");
	cr_assert_not_null(f, "%s", path);
	X509_CRL *crl = PEM_read_X509_CRL(f, NULL, NULL, NULL);
	fclose(f);
	cr_assert_not_null(crl, "%s", path);
	return crl;
}

static mode_t file_mode(const char *path)
{
	struct stat st;
	cr_assert_eq(stat(path, &st), 0, "%s", path);
	return st.st_mode & 07777;
}

/* X509_verify_cert of leaf against the CA (and crl if given) for purpose. */
static int verify(X509 *leaf, X509_CRL *crl, int purpose)
{
	X509_STORE *store = X509_STORE_new();
	X509_STORE_CTX *ctx = X509_STORE_CTX_new();
	X509 *ca = read_cert(tc_file(&dir, "ca/ca.pem"));

	cr_assert(X509_STORE_add_cert(store, ca));
	if (crl) {
		cr_assert(X509_STORE_add_crl(store, crl));
		X509_STORE_set_flags(store, X509_V_FLAG_CRL_CHECK);
	}
	cr_assert(X509_STORE_CTX_init(ctx, store, leaf, NULL));
	X509_STORE_CTX_set_purpose(ctx, purpose);
	int ok = X509_verify_cert(ctx);
	int err = ok == 1 ? X509_V_OK : X509_STORE_CTX_get_error(ctx);
	X509_STORE_CTX_free(ctx);
	X509_STORE_free(store);
	X509_free(ca);
	return err;
}

/* An etcd member under --client-cert-auth presents one certificate both
 * ways: a peer certificate passes as server and as client, with the
 * server's subjectAltName. */
Test(pki, peer_certificate_serves_both_purposes, .init = make_ca, .fini = drop_ca)
{
	struct kg_issue_result res;
	struct kg_err err = {""};
	struct kg_issue_opts p = issue_opts(KG_CERT_PEER, "/C=DE/CN=etcd1", "etcd1");
	p.san = "IP:10.77.0.31";
	cr_assert_eq(kg_ca_issue(&p, &res, &err), 0, "issue peer: %s", err.msg);
	X509 *peer = read_cert(tc_file(&dir, "etcd1.pem"));
	cr_expect_eq(verify(peer, NULL, X509_PURPOSE_SSL_SERVER), X509_V_OK);
	cr_expect_eq(verify(peer, NULL, X509_PURPOSE_SSL_CLIENT), X509_V_OK);
	cr_expect_eq(X509_check_ip_asc(peer, "10.77.0.31", 0), 1);
	X509_free(peer);
}

Test(pki, round_trip, .init = make_ca, .fini = drop_ca)
{
	struct kg_issue_result res;
	struct kg_err err = {""};

	cr_assert_eq(file_mode(tc_file(&dir, "ca/private")), 0700);
	cr_assert_eq(file_mode(tc_file(&dir, "ca/private/ca.key")), 0600);

	struct kg_issue_opts c = issue_opts(KG_CERT_CLIENT, "/O=kgate test/CN=alice", "alice");
	cr_assert_eq(kg_ca_issue(&c, &res, &err), 0, "issue client: %s", err.msg);
	cr_assert_str_eq(res.serial, "1000");
	struct kg_issue_opts s = issue_opts(KG_CERT_SERVER, "/C=DE/CN=localhost", "server");
	s.san = "DNS:localhost,IP:127.0.0.1";
	cr_assert_eq(kg_ca_issue(&s, &res, &err), 0, "issue server: %s", err.msg);
	cr_assert_str_eq(res.serial, "1001");

	cr_assert_eq(file_mode(tc_file(&dir, "alice.key")), 0600);
	X509 *alice = read_cert(tc_file(&dir, "alice.pem"));
	X509 *server = read_cert(tc_file(&dir, "server.pem"));
	X509 *copy = read_cert(tc_file(&dir, "ca/newcerts/1000.pem"));
	cr_assert_eq(X509_cmp(alice, copy), 0, "newcerts holds the issued cert");
	X509_free(copy);

	cr_assert_eq(verify(alice, NULL, X509_PURPOSE_SSL_CLIENT), X509_V_OK);
	cr_assert_eq(verify(server, NULL, X509_PURPOSE_SSL_SERVER), X509_V_OK);
	/* EKU keeps each to its role. */
	cr_assert_eq(verify(alice, NULL, X509_PURPOSE_SSL_SERVER), X509_V_ERR_INVALID_PURPOSE);
	cr_assert_eq(verify(server, NULL, X509_PURPOSE_SSL_CLIENT), X509_V_ERR_INVALID_PURPOSE);
	cr_assert_eq(X509_check_host(server, "localhost", 0, 0, NULL), 1);
	cr_assert_eq(X509_check_ip_asc(server, "127.0.0.1", 0), 1);
	cr_assert_eq(X509_get_signature_nid(alice), NID_ecdsa_with_SHA256);

	char serial[KG_SERIAL_HEX_MAX];
	cr_assert_eq(kg_ca_revoke(ca_dir, NULL, tc_file(&dir, "alice.pem"),
				  KG_REASON_KEY_COMPROMISE, serial, &err), 0, "revoke: %s", err.msg);
	cr_assert_str_eq(serial, "1000");
	cr_assert_eq(kg_ca_revoke(ca_dir, "1000", NULL, KG_REASON_NONE, serial, &err), -EALREADY);

	struct kg_crl_opts co = {.dir = ca_dir, .out = tc_file(&dir, "ca.crl"), .days = 30,
				 .md = EVP_sha256()};
	struct kg_crl_result cres;
	cr_assert_eq(kg_ca_crl(&co, &cres, &err), 0, "crl: %s", err.msg);
	cr_assert_eq(cres.revoked, 1);
	cr_assert_str_eq(cres.number, "01");

	X509_CRL *crl = read_crl(tc_file(&dir, "ca.crl"));
	X509_REVOKED *rev = NULL;
	cr_assert_eq(X509_CRL_get0_by_cert(crl, &rev, alice), 1, "alice is on the CRL");
	cr_assert_eq(X509_CRL_get0_by_cert(crl, &rev, server), 0, "server is not");
	cr_assert_eq(X509_CRL_get_version(crl), 1 /* v2 */);
	ASN1_INTEGER *num = X509_CRL_get_ext_d2i(crl, NID_crl_number, NULL, NULL);
	cr_assert_not_null(num);
	cr_assert_eq(ASN1_INTEGER_get(num), 1);
	ASN1_INTEGER_free(num);
	cr_assert_eq(verify(alice, crl, X509_PURPOSE_SSL_CLIENT), X509_V_ERR_CERT_REVOKED);
	cr_assert_eq(verify(server, crl, X509_PURPOSE_SSL_SERVER), X509_V_OK);
	X509_CRL_free(crl);

	/* The next CRL counts on. */
	cr_assert_eq(kg_ca_crl(&co, &cres, &err), 0, "crl: %s", err.msg);
	cr_assert_str_eq(cres.number, "02");

	struct kg_ca_list *list = kg_ca_list_create(ca_dir, time(NULL), &err);
	cr_assert_not_null(list, "%s", err.msg);
	cr_assert_eq(list->n, 2);
	cr_assert_str_eq(list->entries[0].type, "client");
	cr_assert_str_eq(list->entries[0].status, "revoked");
	cr_assert_str_eq(list->entries[0].reason, "keyCompromise");
	cr_assert_str_eq(list->entries[1].type, "server");
	cr_assert_str_eq(list->entries[1].status, "valid");
	cr_assert_str_eq(list->entries[1].subject, "/C=DE/CN=localhost");
	kg_ca_list_destroy(list);
	X509_free(alice);
	X509_free(server);
}

Test(pki, pkcs12_bundle, .init = make_ca, .fini = drop_ca)
{
	struct kg_err err = {""};
	struct kg_issue_opts c = issue_opts(KG_CERT_CLIENT, "/CN=bob", "bob");
	c.p12 = tc_file(&dir, "bob.p12");
	c.p12_pass = "p12-secret";
	c.key_pass = "key-secret";
	cr_assert_eq(kg_ca_issue(&c, NULL, &err), 0, "%s", err.msg);
	cr_assert_eq(file_mode(tc_file(&dir, "bob.p12")), 0600);

	struct kg_p12_opts e = {.cert = tc_file(&dir, "bob.pem"), .key = tc_file(&dir, "bob.key"),
				.key_pass = "key-secret", .ca = tc_file(&dir, "ca/ca.pem"),
				.out = tc_file(&dir, "bob2.p12"), .pass = "other-pass"};
	cr_assert_eq(kg_p12_export(&e, &err), 0, "%s", err.msg);
	cr_assert_eq(kg_p12_export(&e, &err), -EEXIST, "no overwrite without force");

	const char *files[] = {"bob.p12", "bob2.p12"}, *pass[] = {"p12-secret", "other-pass"};
	for (int i = 0; i < 2; i++) {
		FILE *f = fopen(tc_file(&dir, files[i]), "rb");
		cr_assert_not_null(f);
		PKCS12 *p12 = d2i_PKCS12_fp(f, NULL);
		fclose(f);
		cr_assert_not_null(p12);
		cr_assert_eq(PKCS12_verify_mac(p12, "wrong", -1), 0);
		EVP_PKEY *key = NULL;
		X509 *cert = NULL;
		STACK_OF(X509) *cas = NULL;
		cr_assert_eq(PKCS12_parse(p12, pass[i], &key, &cert, &cas), 1, "%s", files[i]);
		cr_assert_eq(X509_check_private_key(cert, key), 1);
		cr_assert_eq(sk_X509_num(cas), 1, "the CA certificate travels along");
		EVP_PKEY_free(key);
		X509_free(cert);
		sk_X509_pop_free(cas, X509_free);
		PKCS12_free(p12);
	}
	/* Wrong key passphrase for the export. */
	e.key_pass = "nope-nope";
	e.force = true;
	cr_assert_eq(kg_p12_export(&e, &err), -EACCES);
	cr_assert(strstr(err.msg, "wrong passphrase"), "%s", err.msg);
}

/* A listing of every file below ca/ with its mode and content, to compare
 * a folder before and after a failed operation. */
static char *snap_buf;
static size_t snap_len;
static FILE *snap;

static int snap_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	fprintf(snap, "%s %o\n", path, st->st_mode & 07777);
	if (flag == FTW_F) {
		FILE *f = fopen(path, "r");
		int ch;
		cr_assert_not_null(f, "%s", path);
		while ((ch = fgetc(f)) != EOF)
			fputc(ch, snap);
		fclose(f);
	}
	return 0;
}

static int by_name(const struct dirent **a, const struct dirent **b)
{
	return strcmp((*a)->d_name, (*b)->d_name);
}

/* Sorted: nftw's order follows the directory's, which may change. */
static void snap_dir(const char *path)
{
	struct dirent **names;
	int n = scandir(path, &names, NULL, by_name);
	cr_assert_geq(n, 0, "%s", path);
	for (int i = 0; i < n; i++) {
		char sub[PATH_MAX];
		if (strcmp(names[i]->d_name, ".") && strcmp(names[i]->d_name, "..")) {
			snprintf(sub, sizeof(sub), "%s/%s", path, names[i]->d_name);
			struct stat st;
			cr_assert_eq(lstat(sub, &st), 0);
			snap_one(sub, &st, S_ISDIR(st.st_mode) ? FTW_D : FTW_F, NULL);
			if (S_ISDIR(st.st_mode))
				snap_dir(sub);
		}
		free(names[i]);
	}
	free(names);
}

static char *snapshot(void)
{
	snap = open_memstream(&snap_buf, &snap_len);
	cr_assert_not_null(snap);
	snap_dir(dir.path);
	fclose(snap);
	return snap_buf;
}

struct fail_case {
	const char *desc;
	enum kg_cert_type type;
	const char *subject, *san, *out, *p12;
	int days;
	bool existing; /* out.pem exists beforehand */
	int err;
	const char *want;
};

static const struct fail_case fail_cases[] = {
	{"policy", KG_CERT_CLIENT, "/O=other/CN=x", NULL, "x", NULL, 30, false, -EPERM,
	 "O: 'other' differs"},
	{"missing CN", KG_CERT_CLIENT, "/O=kgate test", NULL, "x", NULL, 30, false, -EINVAL,
	 "CN: missing"},
	{"too long", KG_CERT_CLIENT, "/CN=x", NULL, "x", NULL, 826, false, -EINVAL,
	 "beyond 825 days"},
	{"bad SAN", KG_CERT_SERVER, "/CN=x", "DNS:ok,IP:300.1.1.1", "x", NULL, 30, false, -EINVAL,
	 "IP:300.1.1.1: not an IPv4 or IPv6"},
	{"server CN not a name", KG_CERT_SERVER, "/CN=two words", NULL, "x", NULL, 30, false,
	 -EINVAL, "give the server's names with --san"},
	{"existing output", KG_CERT_CLIENT, "/CN=x", NULL, "x", NULL, 30, true, -EEXIST,
	 "x.pem: exists"},
	{"output folder missing", KG_CERT_CLIENT, "/CN=x", NULL, "nodir/x", NULL, 30, false,
	 -ENOENT, "nodir/x.pem: cannot create a temp file"},
	/* Fails after x.pem and x.key were staged: their temps must go too. */
	{"p12 folder missing", KG_CERT_CLIENT, "/CN=x", NULL, "x", "nodir/x.p12", 30, false,
	 -ENOENT, "nodir/x.p12"},
};

TC_INDEX_PARAMS(pki, failed_issue_changes_nothing, sizeof(fail_cases) / sizeof(fail_cases[0]))

ParameterizedTest(size_t *i, pki, failed_issue_changes_nothing, .init = make_ca,
		  .fini = drop_ca)
{
	const struct fail_case *c = &fail_cases[*i];
	struct kg_err err = {""};
	struct kg_issue_opts ok = issue_opts(KG_CERT_CLIENT, "/CN=first", "first");
	cr_assert_eq(kg_ca_issue(&ok, NULL, &err), 0, "%s", err.msg);
	if (c->existing)
		tc_write_text(tc_file(&dir, "x.pem"), "precious\n");

	char *before = snapshot();
	struct kg_issue_opts o = issue_opts(c->type, c->subject, c->out);
	o.san = c->san;
	o.days = c->days;
	if (c->p12) {
		o.p12 = tc_file(&dir, c->p12);
		o.p12_pass = "p12-pass";
	}
	cr_assert_eq(kg_ca_issue(&o, NULL, &err), c->err, "%s: %s", c->desc, err.msg);
	cr_assert(strstr(err.msg, c->want), "%s: message '%s' lacks '%s'", c->desc, err.msg,
		  c->want);
	char *after = snapshot();
	cr_assert_str_eq(after, before, "%s: the folder changed", c->desc);
	free(before);
	free(after);

	/* And the CA still works: the next serial is the one after "first". */
	struct kg_issue_result res;
	struct kg_issue_opts next = issue_opts(KG_CERT_CLIENT, "/CN=second", "second");
	cr_assert_eq(kg_ca_issue(&next, &res, &err), 0, "%s", err.msg);
	cr_assert_str_eq(res.serial, "1001");
}

Test(pki, init_refuses_an_existing_ca, .init = make_ca, .fini = drop_ca)
{
	struct kg_err err = {""};
	char *before = snapshot();
	struct kg_ca_init_opts o = {.dir = ca_dir, .subject = "/CN=Another", .key = p256,
				    .md = EVP_sha256(), .days = 30};
	cr_assert_eq(kg_ca_init(&o, &err), -EEXIST);
	cr_assert(strstr(err.msg, "already holds a CA"), "%s", err.msg);
	char *after = snapshot();
	cr_assert_str_eq(after, before);
	free(before);
	free(after);

	o.force = true;
	cr_assert_eq(kg_ca_init(&o, &err), 0, "%s", err.msg);
	X509 *ca = read_cert(tc_file(&dir, "ca/ca.pem"));
	char *cn = X509_NAME_oneline(X509_get_subject_name(ca), NULL, 0);
	cr_assert_str_eq(cn, "/CN=Another");
	OPENSSL_free(cn);
	X509_free(ca);
}

Test(pki, ca_certificate_extensions, .init = make_ca, .fini = drop_ca)
{
	X509 *ca = read_cert(tc_file(&dir, "ca/ca.pem"));
	int crit = -1;
	BASIC_CONSTRAINTS *bc = X509_get_ext_d2i(ca, NID_basic_constraints, &crit, NULL);
	cr_assert_not_null(bc);
	cr_assert(bc->ca);
	cr_assert_eq(crit, 1);
	BASIC_CONSTRAINTS_free(bc);
	ASN1_BIT_STRING *ku = X509_get_ext_d2i(ca, NID_key_usage, &crit, NULL);
	cr_assert_not_null(ku);
	cr_assert_eq(crit, 1);
	ASN1_BIT_STRING_free(ku);
	cr_assert_eq(X509_get_key_usage(ca), KU_KEY_CERT_SIGN | KU_CRL_SIGN);
	cr_assert_not_null(X509_get0_subject_key_id(ca));
	cr_assert_eq(X509_check_ca(ca), 1);
	X509_free(ca);
}

Test(pki, encrypted_ca_key, .init = make_ca, .fini = drop_ca)
{
	struct kg_err err = {""};
	struct kg_ca_init_opts o = {.dir = tc_file(&dir, "enc"), .subject = "/CN=Enc CA",
				    .key = {EVP_PKEY_RSA, 2048}, .md = EVP_sha384(), .days = 30,
				    .key_pass = "ca-secret"};
	cr_assert_eq(kg_ca_init(&o, &err), 0, "%s", err.msg);

	struct kg_issue_opts c = issue_opts(KG_CERT_CLIENT, "/CN=u", "u");
	c.dir = o.dir;
	c.ca_pass = (struct kg_ca_pass){NULL, false};
	cr_assert_eq(kg_ca_issue(&c, NULL, &err), -EACCES);
	cr_assert(strstr(err.msg, "the key is encrypted: give --ca-pass-file"), "%s", err.msg);
	c.ca_pass.pass = "wrong-secret";
	cr_assert_eq(kg_ca_issue(&c, NULL, &err), -EACCES);
	cr_assert(strstr(err.msg, "wrong passphrase"), "%s", err.msg);
	c.ca_pass.pass = "ca-secret";
	c.key = (struct kg_key_spec){EVP_PKEY_RSA, 2048};
	cr_assert_eq(kg_ca_issue(&c, NULL, &err), 0, "%s", err.msg);
	X509 *u = read_cert(tc_file(&dir, "u.pem"));
	cr_assert_eq(X509_get_key_usage(u), KU_DIGITAL_SIGNATURE | KU_KEY_ENCIPHERMENT,
		     "RSA leaves get keyEncipherment");
	X509_free(u);
}

Test(pki, revoke_refuses_a_foreign_certificate, .init = make_ca, .fini = drop_ca)
{
	struct kg_err err = {""};
	struct kg_ca_init_opts o = {.dir = tc_file(&dir, "other"), .subject = "/CN=Other CA",
				    .key = p256, .md = EVP_sha256(), .days = 30, .serial = "1000"};
	cr_assert_eq(kg_ca_init(&o, &err), 0, "%s", err.msg);
	struct kg_issue_opts c = issue_opts(KG_CERT_CLIENT, "/CN=mine", "mine");
	cr_assert_eq(kg_ca_issue(&c, NULL, &err), 0, "%s", err.msg);
	c = issue_opts(KG_CERT_CLIENT, "/CN=theirs", "theirs");
	c.dir = o.dir;
	cr_assert_eq(kg_ca_issue(&c, NULL, &err), 0, "%s", err.msg);

	/* Same serial (1000) in both CAs: only the signature tells them apart. */
	cr_assert_eq(kg_ca_revoke(ca_dir, NULL, tc_file(&dir, "theirs.pem"), KG_REASON_NONE, NULL,
				  &err), -EINVAL);
	cr_assert(strstr(err.msg, "not issued by the CA"), "%s", err.msg);
	cr_assert_eq(kg_ca_revoke(ca_dir, "ABCD", NULL, KG_REASON_NONE, NULL, &err), -ENOENT);
	cr_assert(strstr(err.msg, "serial ABCD: not in"), "%s", err.msg);
}

/* --crl-url: the URL goes into CRL Distribution Points, where relying
 * parties (and crl_url) fetch the CA's CRL; anything but a plain http://
 * URL is refused before the folder changes. */
Test(pki, crl_url_in_cdp, .init = make_ca, .fini = drop_ca)
{
	struct kg_err err = {""};
	struct kg_issue_opts c = issue_opts(KG_CERT_CLIENT, "/CN=cdp", "cdp");
	c.crl_url = "http://127.0.0.1:8080/ca.crl";
	cr_assert_eq(kg_ca_issue(&c, NULL, &err), 0, "%s", err.msg);
	X509 *cert = read_cert(tc_file(&dir, "cdp.pem"));
	STACK_OF(DIST_POINT) *cdp = X509_get_ext_d2i(cert, NID_crl_distribution_points, NULL, NULL);
	cr_assert(cdp && sk_DIST_POINT_num(cdp) == 1);
	DIST_POINT_NAME *dpn = sk_DIST_POINT_value(cdp, 0)->distpoint;
	cr_assert(dpn && dpn->type == 0 && sk_GENERAL_NAME_num(dpn->name.fullname) == 1);
	GENERAL_NAME *gn = sk_GENERAL_NAME_value(dpn->name.fullname, 0);
	cr_assert_eq(gn->type, GEN_URI);
	cr_expect_str_eq((const char *)ASN1_STRING_get0_data(gn->d.uniformResourceIdentifier),
			 "http://127.0.0.1:8080/ca.crl");
	CRL_DIST_POINTS_free(cdp);
	X509_free(cert);

	static const char *const bad[] = {"https://127.0.0.1/ca.crl", "http://", "ldap://x/",
					  "http://a,URI:http://b/"};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		char *before = snapshot();
		struct kg_issue_opts o = issue_opts(KG_CERT_CLIENT, "/CN=x", "x");
		o.crl_url = bad[i];
		cr_expect_eq(kg_ca_issue(&o, NULL, &err), -EINVAL, "%s", bad[i]);
		cr_expect(strstr(err.msg, "--crl-url") != NULL, "%s: %s", bad[i], err.msg);
		char *after = snapshot();
		cr_expect_str_eq(after, before, "%s: the folder changed", bad[i]);
		free(before);
		free(after);
	}
}

/* --ocsp-url: the responder goes into Authority Information Access, where
 * kgated (and every relying party) looks; anything but an http URL is
 * refused before the CA folder changes. */
Test(pki, ocsp_url_in_aia, .init = make_ca, .fini = drop_ca)
{
	struct kg_err err = {""};
	struct kg_issue_opts c = issue_opts(KG_CERT_CLIENT, "/CN=ocsp", "ocsp");
	c.ocsp_url = "http://127.0.0.1:8888/ocsp";
	cr_assert_eq(kg_ca_issue(&c, NULL, &err), 0, "%s", err.msg);
	X509 *cert = read_cert(tc_file(&dir, "ocsp.pem"));
	STACK_OF(OPENSSL_STRING) *urls = X509_get1_ocsp(cert);
	cr_assert_eq(sk_OPENSSL_STRING_num(urls), 1);
	cr_expect_str_eq(sk_OPENSSL_STRING_value(urls, 0), "http://127.0.0.1:8888/ocsp");
	X509_email_free(urls);
	X509_free(cert);

	static const char *const bad[] = {"https://127.0.0.1/", "http://", "http://a b/",
					  "http://a,URI:http://b/"};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		char *before = snapshot();
		struct kg_issue_opts o = issue_opts(KG_CERT_CLIENT, "/CN=x", "x");
		o.ocsp_url = bad[i];
		cr_expect_eq(kg_ca_issue(&o, NULL, &err), -EINVAL, "%s", bad[i]);
		cr_expect(strstr(err.msg, "--ocsp-url") != NULL, "%s: %s", bad[i], err.msg);
		char *after = snapshot();
		cr_expect_str_eq(after, before, "%s: the folder changed", bad[i]);
		free(before);
		free(after);
	}
}
