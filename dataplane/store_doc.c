/* Store documents ↔ state documents (store_doc.h). */
#include "store_doc.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "config.h"

#define PEM_BEGIN "-----BEGIN "
/* A clear private key in the store: named as such, never applied. */
#define CLEAR_KEY "private keys are never stored in clear: seal it with " \
		  "kgatectl --store-kek ... store push"

enum field_kind { FIELD_PEM, FIELD_SEALED };

struct field {
	const char *name;
	const char *ext; /* of the file in the state dir */
	enum field_kind kind;
};

static const struct field fields[] = {
	{"cert", "cert", FIELD_PEM},
	{"key", "key", FIELD_SEALED},
	{"crl", "crl", FIELD_PEM},
};
#define N_FIELDS (sizeof(fields) / sizeof(fields[0]))

static json_object *copy_doc(json_object *doc)
{
	json_object *copy = NULL;
	if (json_object_deep_copy(doc, &copy, NULL) != 0)
		return NULL;
	return copy;
}

/* The certificates object of doc: NULL when absent (nothing to convert),
 * or -EINVAL in *r when it is not an object. */
static json_object *certificates(json_object *doc, int *r, char *err, size_t errlen)
{
	json_object *certs = NULL;
	*r = 0;
	if (!json_object_object_get_ex(doc, "certificates", &certs) ||
	    json_object_is_type(certs, json_type_null))
		return NULL;
	if (!json_object_is_type(certs, json_type_object)) {
		snprintf(err, errlen, "certificates: expected an object");
		*r = -EINVAL;
		return NULL;
	}
	return certs;
}

/* The string value of entry.field: NULL when absent; -EINVAL in *r when
 * entry is not an object or the value not a string. */
static const char *field_text(json_object *entry, const char *name, const char *field, int *r,
			      char *err, size_t errlen)
{
	json_object *v = NULL;
	*r = 0;
	if (!json_object_is_type(entry, json_type_object)) {
		snprintf(err, errlen, "certificates.%s: expected an object", name);
		*r = -EINVAL;
		return NULL;
	}
	if (!json_object_object_get_ex(entry, field, &v))
		return NULL;
	if (!json_object_is_type(v, json_type_string)) {
		snprintf(err, errlen, "certificates.%s.%s: expected a string", name, field);
		*r = -EINVAL;
		return NULL;
	}
	return json_object_get_string(v);
}

static int context_of(char *out, size_t outlen, const char *state_key, const char *name)
{
	int n = snprintf(out, outlen, "%s:%s", state_key, name);
	return n < 0 || (size_t)n >= outlen ? -ENAMETOOLONG : 0;
}

/* ---- store → state -------------------------------------------------------- */

/* The relative path st->doc names for certificates.name.field, if its
 * file holds exactly data: reusing it keeps an unchanged entry equal. */
static char *same_file(const struct kg_state *st, const char *name, const char *field,
		       const char *data, size_t len)
{
	json_object *certs = NULL, *entry = NULL, *v = NULL;
	if (!st->doc || !json_object_object_get_ex(st->doc, "certificates", &certs) ||
	    !json_object_object_get_ex(certs, name, &entry) ||
	    !json_object_object_get_ex(entry, field, &v) || !json_object_is_type(v, json_type_string))
		return NULL;
	const char *rel = json_object_get_string(v);
	char *path = NULL, *have = NULL;
	if (rel[0] == '/' || asprintf(&path, "%s/%s", st->dir, rel) < 0)
		return NULL;
	int r = kg_read_file(path, &have);
	free(path);
	bool same = r == 0 && strlen(have) == len && memcmp(have, data, len) == 0;
	if (have) {
		/* It may be a private key. */
		OPENSSL_cleanse(have, strlen(have));
		free(have);
	}
	return same ? strdup(rel) : NULL;
}

static int to_file(struct kg_state *st, const struct kg_kek *kek, const char *state_key,
		   json_object *entry, const char *name, const struct field *f, char *err,
		   size_t errlen)
{
	int r;
	const char *text = field_text(entry, name, f->name, &r, err, errlen);
	if (!text)
		return r;
	unsigned char *plain = NULL;
	size_t len = 0;
	const char *data = text;
	if (f->kind == FIELD_SEALED) {
		char ctx[512], why[256];
		if (!kg_is_sealed(text)) {
			snprintf(err, errlen, "certificates.%s.%s: %s", name, f->name, CLEAR_KEY);
			return -EPERM;
		}
		if (context_of(ctx, sizeof(ctx), state_key, name) < 0) {
			snprintf(err, errlen, "certificates.%s: name too long", name);
			return -ENAMETOOLONG;
		}
		r = kg_unseal(kek, ctx, text, &plain, &len, why, sizeof(why));
		if (r < 0) {
			snprintf(err, errlen, "certificates.%s.%s: cannot unseal: %s", name, f->name,
				 why);
			return r;
		}
		data = (const char *)plain;
		if (memchr(data, '\0', len) || !strstr(data, PEM_BEGIN)) {
			snprintf(err, errlen, "certificates.%s.%s: the sealed value is not a PEM "
				 "private key", name, f->name);
			kg_seal_free(plain, len);
			return -EINVAL;
		}
	} else {
		len = strlen(text);
		if (!strstr(text, PEM_BEGIN)) {
			snprintf(err, errlen, "certificates.%s.%s: expected PEM text (\"%s...\")",
				 name, f->name, PEM_BEGIN);
			return -EINVAL;
		}
		if (strstr(text, "PRIVATE KEY")) {
			snprintf(err, errlen, "certificates.%s.%s: holds a private key: %s", name,
				 f->name, CLEAR_KEY);
			return -EPERM;
		}
	}
	char *rel = same_file(st, name, f->ext, data, len);
	if (!rel)
		rel = kg_state_store_file(st, name, f->ext, data, len, f->kind == FIELD_SEALED, err,
					  errlen);
	kg_seal_free(plain, len);
	if (!rel)
		return -EIO; /* err says why */
	json_object_object_add(entry, f->name, json_object_new_string(rel));
	free(rel);
	return 0;
}

/* A listener the store gives port 0 ("each instance picks one") keeps the
 * port this instance picked before: otherwise every store change would
 * rebind it on a new port. */
static void keep_ports(const struct kg_state *st, json_object *doc)
{
	json_object *arr = NULL, *old = NULL;
	if (!st->doc || !json_object_object_get_ex(doc, "listeners", &arr) ||
	    !json_object_is_type(arr, json_type_array) ||
	    !json_object_object_get_ex(st->doc, "listeners", &old) ||
	    !json_object_is_type(old, json_type_array))
		return;
	for (size_t i = 0; i < json_object_array_length(arr); i++) {
		json_object *l = json_object_array_get_idx(arr, i), *name = NULL, *port = NULL;
		if (!json_object_object_get_ex(l, "name", &name) ||
		    !json_object_object_get_ex(l, "port", &port) ||
		    !json_object_is_type(port, json_type_int) || json_object_get_int(port) != 0)
			continue;
		for (size_t j = 0; j < json_object_array_length(old); j++) {
			json_object *o = json_object_array_get_idx(old, j), *on = NULL, *op = NULL;
			if (json_object_object_get_ex(o, "name", &on) &&
			    json_object_equal(on, name) &&
			    json_object_object_get_ex(o, "port", &op) &&
			    json_object_is_type(op, json_type_int))
				json_object_object_add(l, "port", json_object_get(op));
		}
	}
}

int kg_store_doc_to_state(struct kg_state *st, const struct kg_kek *kek, const char *state_key,
			  const char *text, size_t len, json_object **out, char *err,
			  size_t errlen)
{
	*out = NULL;
	enum json_tokener_error jerr = json_tokener_success;
	json_tokener *tok = json_tokener_new();
	if (!tok) {
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	json_object *doc = NULL;
	if (len > 0 && !memchr(text, '\0', len)) {
		doc = json_tokener_parse_ex(tok, text, (int)len);
		jerr = json_tokener_get_error(tok);
		/* Trailing text after the object is as wrong as a cut one. */
		if (doc && (jerr != json_tokener_success ||
			    json_tokener_get_parse_end(tok) != len)) {
			json_object_put(doc);
			doc = NULL;
			if (jerr == json_tokener_success)
				jerr = json_tokener_error_parse_unexpected;
		} else if (!doc && jerr == json_tokener_continue) {
			jerr = json_tokener_error_parse_eof;
		}
	} else {
		jerr = json_tokener_error_parse_eof;
	}
	json_tokener_free(tok);
	if (!doc || !json_object_is_type(doc, json_type_object)) {
		snprintf(err, errlen, "not a JSON object (%s)",
			 doc ? "another JSON type" : json_tokener_error_desc(jerr));
		json_object_put(doc);
		return -EINVAL;
	}
	int r;
	json_object *certs = certificates(doc, &r, err, errlen);
	if (r < 0)
		goto put_doc;
	if (certs) {
		json_object_object_foreach(certs, name, entry) {
			if (!kg_cert_name_valid(name)) {
				snprintf(err, errlen, "certificates.%.80s: invalid name (1-80 letters, "
					 "digits, - / . _ *)", name);
				r = -EINVAL;
				goto put_doc;
			}
			for (size_t i = 0; i < N_FIELDS && r == 0; i++)
				r = to_file(st, kek, state_key, entry, name, &fields[i], err, errlen);
			if (r < 0)
				goto put_doc;
		}
	}
	keep_ports(st, doc);
	*out = doc;
	return 0;
put_doc:
	json_object_put(doc);
	return r;
}

/* ---- state → store ---------------------------------------------------------- */

static int from_file(const struct kg_kek *kek, const char *state_key, const char *base_dir,
		     json_object *entry, const char *name, const struct field *f, char *err,
		     size_t errlen)
{
	int r;
	const char *rel = field_text(entry, name, f->name, &r, err, errlen);
	if (!rel)
		return r;
	char *path = NULL, *data = NULL;
	if (rel[0] == '/')
		path = strdup(rel);
	else if (asprintf(&path, "%s/%s", base_dir, rel) < 0)
		path = NULL;
	if (!path) {
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	r = kg_read_file(path, &data);
	if (r < 0) {
		snprintf(err, errlen, "certificates.%s.%s: %s: %s", name, f->name, path, strerror(-r));
		goto free_path;
	}
	size_t len = strlen(data);
	if (!strstr(data, PEM_BEGIN)) {
		snprintf(err, errlen, "certificates.%s.%s: %s: not PEM text", name, f->name, path);
		r = -EINVAL;
		goto free_data;
	}
	if (f->kind == FIELD_PEM) {
		if (strstr(data, "PRIVATE KEY")) {
			snprintf(err, errlen, "certificates.%s.%s: %s holds a private key: %s", name,
				 f->name, path, "private keys are never stored in clear (name it "
				 "in \"key\")");
			r = -EPERM;
			goto free_data;
		}
		json_object_object_add(entry, f->name, json_object_new_string(data));
		goto free_data;
	}
	char ctx[512], why[256], *sealed = NULL;
	if (context_of(ctx, sizeof(ctx), state_key, name) < 0) {
		snprintf(err, errlen, "certificates.%s: name too long", name);
		r = -ENAMETOOLONG;
		goto free_data;
	}
	r = kg_seal(kek, ctx, data, len, &sealed, why, sizeof(why));
	if (r < 0) {
		snprintf(err, errlen, "certificates.%s.%s: cannot seal: %s", name, f->name, why);
		goto free_data;
	}
	json_object_object_add(entry, f->name, json_object_new_string(sealed));
	free(sealed);
free_data:
	if (data) {
		OPENSSL_cleanse(data, len);
		free(data);
	}
free_path:
	free(path);
	return r;
}

json_object *kg_store_doc_from_state(json_object *doc, const char *base_dir,
				     const struct kg_kek *kek, const char *state_key, char *err,
				     size_t errlen)
{
	if (!json_object_is_type(doc, json_type_object)) {
		snprintf(err, errlen, "the document is not a JSON object");
		return NULL;
	}
	json_object *out = copy_doc(doc);
	if (!out) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	int r;
	json_object *certs = certificates(out, &r, err, errlen);
	if (r < 0)
		goto put_out;
	if (certs) {
		json_object_object_foreach(certs, name, entry) {
			for (size_t i = 0; i < N_FIELDS; i++)
				if (from_file(kek, state_key, base_dir, entry, name, &fields[i], err,
					      errlen) < 0)
					goto put_out;
		}
	}
	return out;
put_out:
	json_object_put(out);
	return NULL;
}

json_object *kg_store_doc_redact(json_object *doc)
{
	json_object *out = copy_doc(doc), *certs = NULL;
	if (!out || !json_object_object_get_ex(out, "certificates", &certs) ||
	    !json_object_is_type(certs, json_type_object))
		return out;
	json_object_object_foreach(certs, name, entry) {
		(void)name;
		if (json_object_is_type(entry, json_type_object) &&
		    json_object_object_get_ex(entry, "key", NULL))
			json_object_object_add(entry, "key", json_object_new_string("(sealed)"));
	}
	return out;
}
