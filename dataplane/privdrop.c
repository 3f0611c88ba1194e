/* Least privilege: see privdrop.h for what the process looks like after
 * kg_priv_drop(). */
#include "privdrop.h"

#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/capability.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <kgate/log.h>

/* The capabilities kgated keeps for its whole life. CAP_NET_BIND_SERVICE:
 * the control plane can add a listener on a port below 1024 after start.
 * Not kept: CAP_BPF/CAP_NET_ADMIN — BPF objects are loaded before the drop
 * and a sockmap, or the steering maps (steer.h), are updated through the
 * map fds kgated already holds. */
static const cap_value_t kg_priv_kept[] = {CAP_NET_BIND_SERVICE};
#define N_KEPT (sizeof(kg_priv_kept) / sizeof(kg_priv_kept[0]))

static bool name_valid(const char *name)
{
	size_t len = strlen(name);
	if (len == 0 || len > KG_PRIV_NAME_MAX || name[0] == '-')
		return false;
	for (size_t i = 0; i < len; i++) {
		char c = name[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '_' || c == '-' || c == '.'))
			return false;
	}
	return true;
}

int kg_priv_plan(const char *user, struct kg_priv_plan *plan, char *err, size_t errlen)
{
	uid_t self = geteuid();
	bool given = user != NULL;
	*plan = (struct kg_priv_plan){.extra_gid = (gid_t)-1, .started_root = self == 0};

	if (!given && self != 0) {
		/* Started unprivileged (e.g. systemd User=): stay that user. */
		struct passwd pw, *res = NULL;
		char buf[4096];
		if (getpwuid_r(self, &pw, buf, sizeof(buf), &res) == 0 && res)
			snprintf(plan->user, sizeof(plan->user), "%s", res->pw_name);
		else
			snprintf(plan->user, sizeof(plan->user), "%u", (unsigned)self);
		plan->uid = self;
		plan->gid = getegid();
		return 0;
	}
	if (!given)
		user = KG_PRIV_DEFAULT_USER;
	if (!name_valid(user)) {
		snprintf(err, errlen, "user '%.40s': not a valid user name", user);
		return -EINVAL;
	}
	struct passwd pw, *res = NULL;
	char buf[4096];
	int r = getpwnam_r(user, &pw, buf, sizeof(buf), &res);
	if (r != 0) {
		snprintf(err, errlen, "user '%s': cannot look it up: %s", user, strerror(r));
		return -r;
	}
	if (!res) {
		snprintf(err, errlen,
			 "user '%s' does not exist: create it (useradd --system --no-create-home "
			 "--shell /usr/sbin/nologin %s), choose another with --user, or pass "
			 "--user root to keep running as root",
			 user, user);
		return -ENOENT;
	}
	if (self != 0 && res->pw_uid != self) {
		snprintf(err, errlen,
			 "user '%s': kgated runs as uid %u and cannot switch users; start it as "
			 "root or as '%s'",
			 user, (unsigned)self, user);
		return -EPERM;
	}
	snprintf(plan->user, sizeof(plan->user), "%s", res->pw_name);
	plan->uid = res->pw_uid;
	plan->gid = res->pw_gid;
	plan->switch_user = self == 0 && res->pw_uid != 0;
	return 0;
}

static bool is_kept(cap_value_t c)
{
	for (size_t i = 0; i < N_KEPT; i++)
		if (kg_priv_kept[i] == c)
			return true;
	return false;
}

/* Narrows the bounding set to the kept capabilities, so not even an exec of
 * a set-uid binary could bring the others back. Needs CAP_SETPCAP; without
 * it (started unprivileged) the caller's bounding set stays: returns 1. */
static int drop_bounding(char *err, size_t errlen)
{
	cap_t cur = cap_get_proc();
	if (!cur) {
		snprintf(err, errlen, "cannot read capabilities: %s", strerror(errno));
		return -errno;
	}
	cap_flag_value_t setpcap = CAP_CLEAR;
	int r = cap_get_flag(cur, CAP_SETPCAP, CAP_EFFECTIVE, &setpcap);
	cap_free(cur);
	if (r == -1 || setpcap != CAP_SET)
		return 1;
	for (cap_value_t c = 0; c < (cap_value_t)cap_max_bits(); c++) {
		if (is_kept(c) || CAP_IS_SUPPORTED(c) == 0)
			continue;
		if (cap_drop_bound(c) == -1) {
			snprintf(err, errlen, "cannot drop %s from the bounding set: %s",
				 cap_to_name(c), strerror(errno));
			return -errno;
		}
	}
	return 0;
}

/* Adds plan->extra_gid to the supplementary groups (root only), or checks
 * that the process already has it. */
static int join_extra_group(const struct kg_priv_plan *plan, char *err, size_t errlen)
{
	if (plan->gid == plan->extra_gid)
		return 0;
	int n = getgroups(0, NULL);
	gid_t *groups = n >= 0 ? calloc((size_t)n + 1, sizeof(*groups)) : NULL;
	int ret = 0;
	if (!groups || (n = getgroups(n, groups)) == -1) {
		snprintf(err, errlen, "cannot read groups: %s", strerror(errno));
		ret = groups ? -errno : -ENOMEM;
		goto free_groups;
	}
	for (int i = 0; i < n; i++)
		if (groups[i] == plan->extra_gid)
			goto free_groups;
	if (!plan->started_root) {
		snprintf(err, errlen, "user '%s' is not a member of group %u: add it "
			 "(usermod -aG, or SupplementaryGroups= in the unit)", plan->user,
			 (unsigned)plan->extra_gid);
		ret = -EPERM;
		goto free_groups;
	}
	groups[n++] = plan->extra_gid;
	if (setgroups((size_t)n, groups) == -1) {
		snprintf(err, errlen, "cannot join group %u: %s", (unsigned)plan->extra_gid,
			 strerror(errno));
		ret = -errno;
	}
free_groups:
	free(groups);
	return ret;
}

static int switch_user(const struct kg_priv_plan *plan, char *err, size_t errlen)
{
	/* KEEPCAPS: setuid away from 0 would otherwise clear the permitted set,
	 * and with it CAP_NET_BIND_SERVICE. */
	if (prctl(PR_SET_KEEPCAPS, 1L, 0L, 0L, 0L) == -1) {
		snprintf(err, errlen, "prctl(PR_SET_KEEPCAPS): %s", strerror(errno));
		return -errno;
	}
	/* The user's supplementary groups, e.g. ssl-cert for keys that a
	 * control-plane reload reads later. Groups first: setuid drops the
	 * right to change them. */
	if (initgroups(plan->user, plan->gid) == -1) {
		snprintf(err, errlen, "user '%s': cannot set groups: %s", plan->user, strerror(errno));
		return -errno;
	}
	if (plan->extra_gid != (gid_t)-1) {
		int r = join_extra_group(plan, err, errlen);
		if (r < 0)
			return r;
	}
	if (setresgid(plan->gid, plan->gid, plan->gid) == -1) {
		snprintf(err, errlen, "user '%s': cannot set gid %u: %s", plan->user,
			 (unsigned)plan->gid, strerror(errno));
		return -errno;
	}
	if (setresuid(plan->uid, plan->uid, plan->uid) == -1) {
		snprintf(err, errlen, "user '%s': cannot set uid %u: %s", plan->user,
			 (unsigned)plan->uid, strerror(errno));
		return -errno;
	}
	if (prctl(PR_SET_KEEPCAPS, 0L, 0L, 0L, 0L) == -1) {
		snprintf(err, errlen, "prctl(PR_SET_KEEPCAPS): %s", strerror(errno));
		return -errno;
	}
	return 0;
}

/* Permitted = effective = kept ∩ permitted now; inheritable empty, which
 * also empties the ambient set. */
static int narrow_sets(char *err, size_t errlen)
{
	cap_t cur = cap_get_proc();
	cap_t next = cap_init();
	int ret = 0;
	if (!cur || !next) {
		snprintf(err, errlen, "cannot read capabilities: %s", strerror(errno));
		ret = -errno;
		goto free_caps;
	}
	for (size_t i = 0; i < N_KEPT; i++) {
		cap_flag_value_t have = CAP_CLEAR;
		if (cap_get_flag(cur, kg_priv_kept[i], CAP_PERMITTED, &have) == -1 || have != CAP_SET)
			continue;
		if (cap_set_flag(next, CAP_PERMITTED, 1, &kg_priv_kept[i], CAP_SET) == -1 ||
		    cap_set_flag(next, CAP_EFFECTIVE, 1, &kg_priv_kept[i], CAP_SET) == -1) {
			snprintf(err, errlen, "cannot build capability set: %s", strerror(errno));
			ret = -errno;
			goto free_caps;
		}
	}
	if (cap_reset_ambient() == -1 && errno != EINVAL) {
		snprintf(err, errlen, "cannot clear ambient capabilities: %s", strerror(errno));
		ret = -errno;
		goto free_caps;
	}
	if (cap_set_proc(next) == -1) {
		snprintf(err, errlen, "cannot set capabilities: %s", strerror(errno));
		ret = -errno;
	}
free_caps:
	cap_free(next);
	cap_free(cur);
	return ret;
}

int kg_priv_drop(const struct kg_priv_plan *plan, struct kg_priv_result *res, char *err,
		 size_t errlen)
{
	int bound = drop_bounding(err, errlen);
	if (bound < 0)
		return bound;
	if (plan->switch_user) {
		int r = switch_user(plan, err, errlen);
		if (r < 0)
			return r;
	} else if (plan->extra_gid != (gid_t)-1) {
		int r = join_extra_group(plan, err, errlen);
		if (r < 0)
			return r;
	}
	int r = narrow_sets(err, errlen);
	if (r < 0)
		return r;
	/* Nothing kgated could exec may gain privileges (set-uid, file caps). */
	if (prctl(PR_SET_NO_NEW_PRIVS, 1L, 0L, 0L, 0L) == -1) {
		snprintf(err, errlen, "prctl(PR_SET_NO_NEW_PRIVS): %s", strerror(errno));
		return -errno;
	}
	/* Trust but verify (as OpenSSH does): root must be out of reach now. */
	if (plan->switch_user && (setuid(0) != -1 || seteuid(0) != -1 || getuid() != plan->uid ||
				  geteuid() != plan->uid || getegid() != plan->gid)) {
		snprintf(err, errlen, "user '%s': uid 0 is still reachable after the switch",
			 plan->user);
		return -EPERM;
	}
#if defined(__SANITIZE_ADDRESS__)
	/* The uid change made the process non-dumpable, and LeakSanitizer's
	 * exit-time scan needs to ptrace its own threads. Sanitizer builds
	 * only: a release build stays non-dumpable (no core with keys in it). */
	if (plan->switch_user && prctl(PR_SET_DUMPABLE, 1L, 0L, 0L, 0L) == -1) {
		snprintf(err, errlen, "prctl(PR_SET_DUMPABLE): %s", strerror(errno));
		return -errno;
	}
#endif
	cap_t now = cap_get_proc();
	char *text = now ? cap_to_text(now, NULL) : NULL;
	res->uid = getuid();
	res->gid = getgid();
	snprintf(res->caps, sizeof(res->caps), "%s", text ? text : "?");
	res->bounding_kept = bound == 1;
	cap_free(text);
	cap_free(now);
	return 0;
}

int kg_priv_exec_caps_raise(void)
{
	cap_t cur = cap_get_proc();
	int ret = 0;
	if (!cur)
		return -errno;
	for (size_t i = 0; i < N_KEPT; i++) {
		cap_flag_value_t have = CAP_CLEAR;
		if (cap_get_flag(cur, kg_priv_kept[i], CAP_PERMITTED, &have) == -1 || have != CAP_SET)
			continue;
		if (cap_set_flag(cur, CAP_INHERITABLE, 1, &kg_priv_kept[i], CAP_SET) == -1) {
			ret = -errno;
			goto free_caps;
		}
	}
	if (cap_set_proc(cur) == -1) {
		ret = -errno;
		goto free_caps;
	}
	for (size_t i = 0; i < N_KEPT; i++) {
		cap_flag_value_t have = CAP_CLEAR;
		if (cap_get_flag(cur, kg_priv_kept[i], CAP_INHERITABLE, &have) == 0 && have == CAP_SET &&
		    cap_set_ambient(kg_priv_kept[i], CAP_SET) == -1) {
			ret = -errno;
			goto free_caps;
		}
	}
free_caps:
	cap_free(cur);
	return ret;
}

void kg_priv_exec_caps_clear(void)
{
	char err[160];
	/* narrow_sets empties inheritable and ambient and keeps the rest. */
	if (narrow_sets(err, sizeof(err)) < 0)
		log_warn("privileges.exec_caps_not_cleared", KV("reason", err));
}
