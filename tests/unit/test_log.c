/* log.c: level names and the one-line rule for text that carries input. */
#include <string.h>

#include <criterion/criterion.h>
#include <criterion/parameterized.h>

#include <kgate/log.h>

#include "certgen.h"

static const struct {
	const char *in, *want;
} one_line[] = {
	{"", ""},
	{"plain text, unchanged: 100%", "plain text, unchanged: 100%"},
	{"two\nlines", "two?lines"},
	{"cr\rlf\r\n", "cr?lf??"},
	{"\x1b[31mred\x1b[0m", "?[31mred?[0m"},
	{"tab\tdel\x7f", "tab?del?"},
	{"UTF-8 stays: \xc3\xa9\xe2\x82\xac", "UTF-8 stays: \xc3\xa9\xe2\x82\xac"},
};

TC_INDEX_PARAMS(log, text_one_line, sizeof(one_line) / sizeof(one_line[0]))
ParameterizedTest(size_t *i, log, text_one_line)
{
	char buf[64];
	strcpy(buf, one_line[*i].in);
	kg_text_one_line(buf);
	cr_expect_str_eq(buf, one_line[*i].want, "case %zu", *i);
}

Test(log, level_names)
{
	cr_expect_eq(kg_log_level_parse("warn"), KG_LOG_WARN);
	cr_expect_eq(kg_log_level_parse("debug"), KG_LOG_DEBUG);
	cr_expect_eq(kg_log_level_parse("loud"), -1);
}
