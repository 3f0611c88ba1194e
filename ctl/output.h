/* kgatectl's two output modes: aligned text tables for people, JSON for
 * scripts (-o json). Commands build json-c objects either way, so both
 * modes print the same facts. */
#ifndef KG_CTL_OUTPUT_H
#define KG_CTL_OUTPUT_H

#include <stddef.h>
#include <stdio.h>
#include <time.h>

#include <json-c/json.h>

enum kg_output_mode { KG_OUT_TEXT, KG_OUT_JSON };

/* -o/--output values "text" (also "table") and "json"; -EINVAL otherwise. */
int kg_output_parse(const char *text, enum kg_output_mode *out);

struct kg_column {
	const char *key;   /* member of each row object */
	const char *title; /* column header */
};

/* rows: a JSON array of objects. Text mode prints a table of cols (absent
 * or null members as "-"); JSON mode prints the array itself. */
int kg_output_rows(FILE *f, enum kg_output_mode mode, json_object *rows,
		   const struct kg_column *cols, size_t ncols);
/* One result object: "key: value" lines in text mode, JSON otherwise. */
int kg_output_object(FILE *f, enum kg_output_mode mode, json_object *obj);

/* "2026-01-31T12:00:00Z" into a JSON string (NULL for t == 0). */
json_object *kg_json_time(time_t t);

#endif
