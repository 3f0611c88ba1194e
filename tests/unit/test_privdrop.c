/* privdrop.c: the user plan and the drop itself. Criterion runs every test
 * in its own process, so each may drop privileges for good. The drops need
 * root (CI runs as root); elsewhere those tests are skipped. */
#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <string.h>
#include <sys/capability.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "privdrop.h"

#define ARBITRARY_GID 54321 /* no group needs to exist for setgroups */

static void need_root(void)
{
	if (geteuid() != 0)
		cr_skip_test("needs root");
}

static bool in_groups(gid_t gid)
{
	gid_t groups[256];
	int n = getgroups(256, groups);
	cr_assert_neq(n, -1);
	for (int i = 0; i < n; i++)
		if (groups[i] == gid)
			return true;
	return false;
}

/* Only CAP_NET_BIND_SERVICE, in permitted and effective; nothing else in
 * any set; bounding as asked. */
static void assert_narrowed(bool bounding_narrowed)
{
	cap_t now = cap_get_proc();
	char *text = cap_to_text(now, NULL);
	cr_assert_str_eq(text, "cap_net_bind_service=ep");
	cap_free(text);
	cap_free(now);
	cr_assert_eq(cap_get_bound(CAP_NET_BIND_SERVICE), 1);
	cr_assert_eq(cap_get_bound(CAP_SYS_ADMIN), bounding_narrowed ? 0 : 1);
	cr_assert_eq(cap_get_ambient(CAP_NET_BIND_SERVICE), 0);
	cr_assert_eq(prctl(PR_GET_NO_NEW_PRIVS, 0L, 0L, 0L, 0L), 1);
}

static const struct {
	const char *user;
	int ret;
	const char *message;
} bad_plans[] = {
	{"kgate-no-such-user", -ENOENT, "user 'kgate-no-such-user' does not exist: create it"},
	{"-rf", -EINVAL, "user '-rf': not a valid user name"},
	{"a b", -EINVAL, "not a valid user name"},
	{"", -EINVAL, "not a valid user name"},
	{"abcdefghijklmnopqrstuvwxyz0123456", -EINVAL, "not a valid user name"},
};

Test(privdrop, bad_plans_are_refused_with_a_reason)
{
	need_root();
	for (size_t i = 0; i < sizeof(bad_plans) / sizeof(bad_plans[0]); i++) {
		struct kg_priv_plan plan;
		char err[512] = "";
		cr_assert_eq(kg_priv_plan(bad_plans[i].user, &plan, err, sizeof(err)),
			     bad_plans[i].ret, "%s", bad_plans[i].user);
		cr_assert(strstr(err, bad_plans[i].message), "%s: %s", bad_plans[i].user, err);
	}
}

Test(privdrop, root_switches_to_the_user_for_good)
{
	need_root();
	struct passwd *nobody = getpwnam("nobody");
	cr_assert(nobody);
	struct kg_priv_plan plan;
	char err[512];
	struct kg_priv_result res;
	cr_assert_eq(kg_priv_plan("nobody", &plan, err, sizeof(err)), 0, "%s", err);
	cr_assert(plan.switch_user);
	cr_assert_eq(kg_priv_drop(&plan, &res, err, sizeof(err)), 0, "%s", err);
	uid_t r, e, s;
	cr_assert_eq(getresuid(&r, &e, &s), 0);
	cr_assert(r == nobody->pw_uid && e == nobody->pw_uid && s == nobody->pw_uid);
	cr_assert_eq(getegid(), nobody->pw_gid);
	cr_assert_eq(setuid(0), -1);
	assert_narrowed(true);
	cr_assert_eq(res.uid, nobody->pw_uid);
	cr_assert_eq(res.gid, nobody->pw_gid);
}

Test(privdrop, explicit_root_keeps_uid_0_but_not_the_capabilities)
{
	need_root();
	struct kg_priv_plan plan;
	char err[512];
	struct kg_priv_result res;
	cr_assert_eq(kg_priv_plan("root", &plan, err, sizeof(err)), 0, "%s", err);
	cr_assert_not(plan.switch_user);
	cr_assert_eq(kg_priv_drop(&plan, &res, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(geteuid(), 0);
	assert_narrowed(true);
}

Test(privdrop, root_joins_the_extra_group)
{
	need_root();
	struct kg_priv_plan plan;
	char err[512];
	struct kg_priv_result res;
	cr_assert_eq(kg_priv_plan("nobody", &plan, err, sizeof(err)), 0, "%s", err);
	plan.extra_gid = ARBITRARY_GID;
	cr_assert_eq(kg_priv_drop(&plan, &res, err, sizeof(err)), 0, "%s", err);
	cr_assert(in_groups(ARBITRARY_GID));
}

Test(privdrop, unprivileged_start_stays_and_cannot_join_or_switch)
{
	need_root();
	struct kg_priv_plan first, plan;
	char err[512] = "";
	struct kg_priv_result res;
	cr_assert_eq(kg_priv_plan("nobody", &first, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(kg_priv_drop(&first, &res, err, sizeof(err)), 0);
	/* Now as nobody, like a unit's User=: no --user means stay. */
	cr_assert_eq(kg_priv_plan(NULL, &plan, err, sizeof(err)), 0, "%s", err);
	cr_assert_not(plan.switch_user);
	cr_assert_str_eq(plan.user, "nobody");
	cr_assert_eq(kg_priv_plan("root", &plan, err, sizeof(err)), -EPERM);
	cr_assert(strstr(err, "cannot switch users"), "%s", err);
	cr_assert_eq(kg_priv_plan(NULL, &plan, err, sizeof(err)), 0, "%s", err);
	plan.extra_gid = ARBITRARY_GID;
	cr_assert_eq(kg_priv_drop(&plan, &res, err, sizeof(err)), -EPERM);
	cr_assert(strstr(err, "is not a member of group 54321"), "%s", err);
}
