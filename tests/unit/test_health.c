/* health.c's shared state machine: thresholds, rotation through the
 * balancer, drain, passive failures, cut decision, slow start, snapshot.
 * The active checkers need a worker ring and are covered by
 * tests/integration/test_health.py. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>

#include "balancer.h"
#include "config.h"
#include "health.h"
#include "worker.h"

struct fixture {
	struct kg_config *cfg;
	struct kg_balancer *b;
	struct kg_health_group *g;
	uint64_t t0;
};

/* Two backends A (weight wa) and B (weight 1) with the given health_check
 * object (JSON with single quotes). */
static void setup(struct fixture *f, const char *check, unsigned wa)
{
	char doc[1024], err[512];
	snprintf(doc, sizeof(doc),
		 "{'certificates':{'web':{'type':'server','cert':'s.pem','key':'s.key'}},"
		 "'listeners':[{'name':'web','protocol':'tls','bind':'127.0.0.1','port':0,"
		 "'certificate':'web','backends':[{'address':'127.0.0.1:9001','weight':%u},"
		 "{'address':'127.0.0.1:9002'}]%s%s}]}",
		 wa, check ? ",'health_check':" : "", check ? check : "");
	for (char *c = doc; *c; c++)
		if (*c == '\'')
			*c = '"';
	f->cfg = kg_config_parse(doc, "/", err, sizeof(err));
	cr_assert_not_null(f->cfg, "%s", err);
	const struct kg_listener_conf *lc = &f->cfg->listeners[0];
	unsigned w[2] = {lc->own.backends[0].weight, lc->own.backends[1].weight};
	f->b = kg_balancer_create("rr", w, 2);
	cr_assert_not_null(f->b);
	f->g = kg_health_group_create(&lc->own, "listener", lc->name, f->b);
	cr_assert_not_null(f->g);
	f->t0 = kg_now_ms();
}

static void teardown(struct fixture *f)
{
	kg_health_group_destroy(f->g);
	kg_balancer_destroy(f->b);
	kg_config_free(f->cfg);
}

static struct kg_health_member_info info(struct fixture *f, size_t m, uint64_t now)
{
	struct kg_health_member_info out[2];
	cr_assert_eq(kg_health_snapshot(f->g, out, 2, now), 2);
	return out[m];
}

/* Picks of member A out of n selections. */
static unsigned picks_of_a(struct fixture *f, unsigned n)
{
	unsigned a = 0;
	for (unsigned i = 0; i < n; i++) {
		int m = kg_balancer_select(f->b, 0);
		cr_assert(m == 0 || m == 1, "select gave %d", m);
		a += m == 0;
	}
	return a;
}

Test(health, thresholds_move_members_in_and_out_of_rotation)
{
	struct fixture f;
	setup(&f, "{'healthy_threshold':2,'unhealthy_threshold':3}", 1);
	uint64_t t = f.t0;
	/* unknown counts as up by default */
	cr_expect(kg_balancer_is_up(f.b, 1));
	cr_expect_eq(info(&f, 1, t).state, KG_MEMBER_UNKNOWN);

	kg_health_record(f.g, 1, false, "connect refused", ++t);
	kg_health_record(f.g, 1, false, "connect refused", ++t);
	kg_health_record(f.g, 1, true, "connected", ++t); /* breaks the streak */
	kg_health_record(f.g, 1, false, "connect refused", ++t);
	kg_health_record(f.g, 1, false, "connect refused", ++t);
	cr_expect_eq(info(&f, 1, t).state, KG_MEMBER_UNKNOWN);
	cr_expect(kg_balancer_is_up(f.b, 1));
	kg_health_record(f.g, 1, false, "timeout after 5 ms", ++t);
	struct kg_health_member_info i = info(&f, 1, t + 7);
	cr_expect_eq(i.state, KG_MEMBER_UNHEALTHY);
	cr_expect_not(i.in_rotation);
	cr_expect_str_eq(i.last_reason, "timeout after 5 ms");
	cr_expect_not(i.last_ok);
	cr_expect_eq(i.ms_in_state, 7);
	cr_expect_eq(i.checks_failed, 5);
	cr_expect_eq(i.checks_ok, 1);
	cr_expect_not(kg_balancer_is_up(f.b, 1));
	cr_expect_eq(picks_of_a(&f, 10), 10, "an unhealthy member gets no connection");

	kg_health_record(f.g, 1, true, "HTTP 200", ++t);
	cr_expect_eq(info(&f, 1, t).state, KG_MEMBER_UNHEALTHY);
	kg_health_record(f.g, 1, true, "HTTP 200", ++t);
	cr_expect_eq(info(&f, 1, t).state, KG_MEMBER_HEALTHY);
	cr_expect(kg_balancer_is_up(f.b, 1));
	cr_expect_eq(picks_of_a(&f, 10), 5);
	teardown(&f);
}

Test(health, unknown_members_can_start_out_of_rotation)
{
	struct fixture f;
	setup(&f, "{'unknown_is_up':false,'healthy_threshold':1}", 1);
	cr_expect_eq(kg_balancer_select(f.b, 0), -1, "nothing is up before a verdict");
	kg_health_record(f.g, 0, true, "connected", f.t0 + 1);
	cr_expect_eq(kg_balancer_select(f.b, 0), 0);
	cr_expect_eq(kg_balancer_select(f.b, 0), 0);
	teardown(&f);
}

Test(health, passive_failures_count_only_with_checks)
{
	struct fixture f;
	setup(&f, NULL, 1);
	for (int i = 0; i < 5; i++)
		kg_health_passive_failure(f.g, 0, "connect refused", f.t0 + 1);
	cr_expect(kg_balancer_is_up(f.b, 0), "nothing could bring it back: not counted");
	cr_expect_not(info(&f, 0, f.t0).checked);
	teardown(&f);

	setup(&f, "{'unhealthy_threshold':2}", 1);
	kg_health_passive_failure(f.g, 0, "connect refused", f.t0 + 1);
	cr_expect(kg_balancer_is_up(f.b, 0));
	kg_health_passive_failure(f.g, 0, "connect refused", f.t0 + 2);
	struct kg_health_member_info i = info(&f, 0, f.t0 + 2);
	cr_expect_eq(i.state, KG_MEMBER_UNHEALTHY);
	cr_expect_str_eq(i.last_reason, "passive: connect refused");
	cr_expect_eq(i.passive_failures, 2);
	cr_expect_eq(i.checks_failed, 0);
	cr_expect_not(kg_balancer_is_up(f.b, 0));
	teardown(&f);
}

Test(health, drain_keeps_connections_and_blocks_new_ones)
{
	struct fixture f;
	setup(&f, NULL, 1);
	kg_health_conn_start(f.g, 0);
	kg_health_conn_start(f.g, 0);
	cr_expect_eq(kg_health_set_admin(f.g, 0, KG_ADMIN_DRAINED), 0);
	struct kg_health_member_info i = info(&f, 0, f.t0);
	cr_expect_eq(i.admin, KG_ADMIN_DRAINED);
	cr_expect_not(kg_health_should_cut(f.g, 0), "drained connections finish");
	cr_expect_not(i.in_rotation);
	cr_expect_eq(i.active, 2);
	cr_expect_eq(picks_of_a(&f, 6), 0);
	kg_health_conn_end(f.g, 0);
	kg_health_conn_end(f.g, 0);
	cr_expect_eq(info(&f, 0, f.t0).active, 0);
	cr_expect_eq(kg_health_set_admin(f.g, 0, KG_ADMIN_READY), 0);
	cr_expect(info(&f, 0, f.t0).in_rotation);
	cr_expect_eq(picks_of_a(&f, 6), 3);
	cr_expect_eq(kg_health_set_admin(f.g, 2, KG_ADMIN_DRAINED), -ENOENT);
	teardown(&f);
}

Test(health, drained_or_disabled_member_stays_out_even_when_healthy)
{
	static const enum kg_admin_state out[] = {KG_ADMIN_DRAINED, KG_ADMIN_DISABLED};
	for (size_t k = 0; k < 2; k++) {
		struct fixture f;
		setup(&f, "{'healthy_threshold':1}", 1);
		cr_expect_eq(kg_health_set_admin(f.g, 1, out[k]), 0);
		kg_health_record(f.g, 1, true, "connected", f.t0 + 1);
		cr_expect_eq(info(&f, 1, f.t0 + 1).state, KG_MEMBER_HEALTHY);
		cr_expect_not(kg_balancer_is_up(f.b, 1));
		teardown(&f);
	}
}

Test(health, cut_only_when_configured_and_unhealthy)
{
	struct fixture f;
	setup(&f, "{'unhealthy_threshold':1}", 1);
	kg_health_record(f.g, 0, false, "connect refused", f.t0 + 1);
	cr_expect_not(kg_health_cuts(f.g));
	cr_expect_not(kg_health_should_cut(f.g, 0));
	teardown(&f);

	setup(&f, "{'unhealthy_threshold':1,'cut_on_unhealthy':true}", 1);
	cr_expect(kg_health_cuts(f.g));
	cr_expect_not(kg_health_should_cut(f.g, 0), "unknown is not unhealthy");
	kg_health_record(f.g, 0, false, "connect refused", f.t0 + 1);
	cr_expect(kg_health_should_cut(f.g, 0));
	cr_expect_not(kg_health_should_cut(f.g, 1));
	cr_expect_not(kg_health_should_cut(f.g, 7));
	teardown(&f);
}

Test(health, disable_cuts_whatever_the_health_settings)
{
	struct fixture f;
	/* No checks and no cut_on_unhealthy: disable cuts anyway. */
	setup(&f, NULL, 1);
	kg_health_conn_start(f.g, 0);
	cr_expect_not(kg_health_cuts(f.g));
	cr_expect_eq(kg_health_set_admin(f.g, 0, KG_ADMIN_DISABLED), 0);
	struct kg_health_member_info i = info(&f, 0, f.t0);
	cr_expect_eq(i.admin, KG_ADMIN_DISABLED);
	cr_expect_not(i.in_rotation);
	cr_expect_eq(kg_health_should_cut(f.g, 0), KG_CUT_DISABLED);
	cr_expect_eq(kg_health_should_cut(f.g, 1), KG_CUT_NONE);
	cr_expect_eq(picks_of_a(&f, 6), 0);
	/* Disabled to drained: open connections are kept again. */
	cr_expect_eq(kg_health_set_admin(f.g, 0, KG_ADMIN_DRAINED), 0);
	cr_expect_eq(kg_health_should_cut(f.g, 0), KG_CUT_NONE);
	cr_expect_not(info(&f, 0, f.t0).in_rotation);
	cr_expect_eq(kg_health_set_admin(f.g, 0, KG_ADMIN_DISABLED), 0);
	cr_expect_eq(kg_health_set_admin(f.g, 0, KG_ADMIN_READY), 0);
	cr_expect_eq(kg_health_should_cut(f.g, 0), KG_CUT_NONE);
	cr_expect(info(&f, 0, f.t0).in_rotation);
	cr_expect_eq(picks_of_a(&f, 6), 3);
	cr_expect_eq(kg_health_set_admin(f.g, 2, KG_ADMIN_DISABLED), -ENOENT);
	kg_health_conn_end(f.g, 0);
	teardown(&f);
}

Test(health, disabled_wins_over_unhealthy_and_is_inherited)
{
	struct fixture f;
	setup(&f, "{'healthy_threshold':1,'unhealthy_threshold':1,'cut_on_unhealthy':true}", 1);
	cr_expect_eq(kg_health_set_admin(f.g, 1, KG_ADMIN_DISABLED), 0);
	cr_expect_eq(kg_health_should_cut(f.g, 1), KG_CUT_DISABLED);
	/* Unhealthy and disabled: disabled is the reason given. */
	kg_health_record(f.g, 1, false, "connect refused", f.t0 + 2);
	cr_expect_eq(kg_health_should_cut(f.g, 1), KG_CUT_DISABLED);
	kg_health_record(f.g, 0, false, "connect refused", f.t0 + 2);
	cr_expect_eq(kg_health_should_cut(f.g, 0), KG_CUT_UNHEALTHY);
	/* A rebuilt snapshot's group keeps the state. */
	const struct kg_listener_conf *lc = &f.cfg->listeners[0];
	unsigned w[2] = {1, 1};
	struct kg_balancer *b2 = kg_balancer_create("rr", w, 2);
	struct kg_health_group *g2 = kg_health_group_create(&lc->own, "listener", lc->name, b2);
	cr_assert_not_null(g2);
	kg_health_group_inherit(g2, f.g);
	cr_expect_eq(kg_health_should_cut(g2, 1), KG_CUT_DISABLED);
	cr_expect_not(kg_balancer_is_up(b2, 1));
	kg_health_group_destroy(g2);
	kg_balancer_destroy(b2);
	teardown(&f);
}

Test(health, slow_start_ramps_the_recovered_member)
{
	struct fixture f;
	setup(&f, "{'healthy_threshold':1,'unhealthy_threshold':1,'slow_start_s':10}", 1);
	uint64_t t = f.t0;
	/* First verdict from unknown: no slow start (the member was never out). */
	kg_health_record(f.g, 0, true, "connected", ++t);
	cr_expect_not(kg_health_ramping(f.g));
	kg_health_record(f.g, 0, false, "connect refused", ++t);
	kg_health_record(f.g, 0, true, "connected", ++t);
	cr_assert(kg_health_ramping(f.g));
	uint64_t back = t;

	/* 10% into the ramp: A has about a tenth of B's share. */
	kg_health_slow_start_step(f.g, back + 1000);
	unsigned a = picks_of_a(&f, 281);
	cr_expect(a >= 24 && a <= 27, "A got %u of 281 at 10%% of the ramp", a);
	cr_expect_eq(info(&f, 0, back + 1000).effective_weight, 1);

	kg_health_slow_start_step(f.g, back + 5000);
	a = picks_of_a(&f, 384);
	cr_expect(a >= 126 && a <= 130, "A got %u of 384 at half the ramp", a);

	kg_health_slow_start_step(f.g, back + 10000);
	cr_expect_not(kg_health_ramping(f.g));
	cr_expect_eq(info(&f, 0, back + 10000).effective_weight, 1);
	cr_expect_eq(picks_of_a(&f, 10), 5, "configured weights again");
	teardown(&f);
}

Test(health, member_lookup_by_address)
{
	struct fixture f;
	setup(&f, NULL, 1);
	cr_expect_eq(kg_health_members(f.g), 2);
	cr_expect_eq(kg_health_member_index(f.g, "127.0.0.1:9002"), 1);
	cr_expect_eq(kg_health_member_index(f.g, "127.0.0.1:9003"), -ENOENT);
	teardown(&f);
}

Test(health, state_names)
{
	cr_expect_str_eq(kg_member_state_name(KG_MEMBER_UNKNOWN), "unknown");
	cr_expect_str_eq(kg_member_state_name(KG_MEMBER_HEALTHY), "healthy");
	cr_expect_str_eq(kg_member_state_name(KG_MEMBER_UNHEALTHY), "unhealthy");
}

/* Verdicts handed to an upgraded process: what is exported comes back,
 * for the same listener, address and kind of check only; lines that are
 * not verdicts change nothing. */
Test(health, verdicts_export_and_import)
{
	struct fixture f, g;
	setup(&f, "{'healthy_threshold':1,'unhealthy_threshold':1}", 1);
	kg_health_record(f.g, 0, true, "connected", f.t0 + 1);
	kg_health_record(f.g, 1, false, "connect refused", f.t0 + 1);
	char *text = NULL;
	size_t len = 0;
	FILE *out = open_memstream(&text, &len);
	cr_assert_not_null(out);
	cr_assert_eq(kg_health_export(f.g, "web", out), 0);
	cr_assert_eq(fclose(out), 0);

	setup(&g, "{'healthy_threshold':3,'unhealthy_threshold':3}", 1);
	cr_expect_eq(kg_health_import(g.g, "other", text), 0, "another listener's lines");
	cr_expect(kg_balancer_is_up(g.b, 1), "unknown is up");
	cr_expect_eq(kg_health_import(g.g, "web", text), 2);
	cr_expect_eq(info(&g, 0, g.t0).state, KG_MEMBER_HEALTHY);
	cr_expect_eq(info(&g, 1, g.t0).state, KG_MEMBER_UNHEALTHY);
	cr_expect_not(kg_balancer_is_up(g.b, 1));
	free(text);
	teardown(&g);

	/* An http check does not take a tcp check's verdicts. */
	setup(&g, "{'type':'http','path':'/'}", 1);
	cr_expect_eq(kg_health_import(g.g, "web", "web\t127.0.0.1:9002\t1\t2\t0\t1\t5\n"), 0);
	teardown(&g);

	static const char *const garbage[] = {
		"", "\n\n", "web", "web\t127.0.0.1:9002",
		"web\t127.0.0.1:9002\t1\t2\t0\t1",         /* a field short */
		"web\t127.0.0.1:9002\t1\t7\t0\t1\t5",       /* no such state */
		"web\t127.0.0.1:9002\t1\t-1\t0\t1\t5",
		"web\t127.0.0.1:9002\t1\t2\t0\t1\t5 extra",
		"web\t127.0.0.1:9009\t1\t2\t0\t1\t5",       /* no such member */
		"web\t127.0.0.1:9002\tx\t2\t0\t1\t5",
	};
	setup(&g, NULL, 1);
	cr_expect_eq(kg_health_import(g.g, "web", "web\t127.0.0.1:9002\t0\t2\t0\t1\t5\n"), 0,
		     "an unchecked group takes nothing");
	teardown(&g);
	setup(&g, "{'healthy_threshold':1}", 1);
	for (size_t i = 0; i < sizeof(garbage) / sizeof(garbage[0]); i++) {
		cr_expect_eq(kg_health_import(g.g, "web", garbage[i]), 0, "line %zu: %s", i,
			     garbage[i]);
		cr_expect_eq(info(&g, 1, g.t0).state, KG_MEMBER_UNKNOWN, "line %zu", i);
	}
	teardown(&g);
	teardown(&f);
}
