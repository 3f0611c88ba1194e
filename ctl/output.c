#include "output.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

int kg_output_parse(const char *text, enum kg_output_mode *out)
{
	if (strcmp(text, "json") == 0)
		*out = KG_OUT_JSON;
	else if (strcmp(text, "text") == 0 || strcmp(text, "table") == 0)
		*out = KG_OUT_TEXT;
	else
		return -EINVAL;
	return 0;
}

static const char *cell(json_object *row, const char *key)
{
	json_object *v = NULL;

	if (!json_object_object_get_ex(row, key, &v) || !v)
		return "-";
	return json_object_get_string(v);
}

static int print_json(FILE *f, json_object *obj)
{
	const char *s = json_object_to_json_string_ext(
		obj, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_SPACED | JSON_C_TO_STRING_NOSLASHESCAPE);

	if (!s || fprintf(f, "%s\n", s) < 0)
		return -EIO;
	return 0;
}

int kg_output_rows(FILE *f, enum kg_output_mode mode, json_object *rows,
		   const struct kg_column *cols, size_t ncols)
{
	size_t n = json_object_array_length(rows);
	size_t *width;

	if (mode == KG_OUT_JSON)
		return print_json(f, rows);
	width = calloc(ncols, sizeof(*width));
	if (!width)
		return -ENOMEM;
	for (size_t c = 0; c < ncols; c++) {
		width[c] = strlen(cols[c].title);
		for (size_t r = 0; r < n; r++) {
			size_t len = strlen(cell(json_object_array_get_idx(rows, r), cols[c].key));
			if (len > width[c])
				width[c] = len;
		}
	}
	/* Header then rows; the last column is not padded (no trailing blanks). */
	for (size_t r = 0; r <= n; r++) {
		json_object *row = r ? json_object_array_get_idx(rows, r - 1) : NULL;
		for (size_t c = 0; c < ncols; c++) {
			const char *s = row ? cell(row, cols[c].key) : cols[c].title;
			if (c + 1 < ncols)
				fprintf(f, "%-*s  ", (int)width[c], s);
			else
				fprintf(f, "%s\n", s);
		}
	}
	free(width);
	return ferror(f) ? -EIO : 0;
}

int kg_output_object(FILE *f, enum kg_output_mode mode, json_object *obj)
{
	if (mode == KG_OUT_JSON)
		return print_json(f, obj);
	json_object_object_foreach(obj, key, val) {
		if (val)
			fprintf(f, "%s: %s\n", key, json_object_get_string(val));
	}
	return ferror(f) ? -EIO : 0;
}

json_object *kg_json_time(time_t t)
{
	char buf[32];
	struct tm tm;

	if (t == 0 || !gmtime_r(&t, &tm))
		return NULL;
	strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
	return json_object_new_string(buf);
}
