/* Least privilege for kgated (libcap).
 *
 * kgated starts as root or as an unprivileged user holding capabilities
 * (systemd AmbientCapabilities), binds its listeners and loads its BPF
 * objects, then calls kg_priv_drop(): from then on it runs as the target
 * user with only the capabilities in kg_priv_kept (CAP_NET_BIND_SERVICE, so
 * listeners on ports below 1024 can still be added at run time).
 *
 * Who the target user is (kg_priv_plan):
 *   - started as root: --user, default "kgate". A user that
 *     does not exist is an error; "--user root" keeps uid 0 explicitly (the
 *     capabilities are still narrowed).
 *   - started as another user: that user; naming a different one is an
 *     error (switching users needs root).
 *
 * After the drop: uid/gid = target (real, effective, saved), supplementary
 * groups = the target's, CapPrm = CapEff = kept ∩ what the process had,
 * CapInh = CapAmb = 0, CapBnd = kept when the process could narrow it
 * (CAP_SETPCAP, i.e. started as root; under systemd the unit's
 * CapabilityBoundingSet does it), no_new_privs set. */
#ifndef KGATE_PRIVDROP_H
#define KGATE_PRIVDROP_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#define KG_PRIV_DEFAULT_USER "kgate"
#define KG_PRIV_NAME_MAX 32

struct kg_priv_plan {
	char user[KG_PRIV_NAME_MAX + 1];
	uid_t uid;
	gid_t gid;
	bool switch_user; /* setuid/setgid needed (started as root, target != root) */
	bool started_root; /* euid 0 at kg_priv_plan: groups can still be set */
	/* A group to keep access to after the drop, e.g. the control socket's
	 * (chown to a group needs membership once CAP_CHOWN is gone); (gid_t)-1
	 * = none. Set by the caller after kg_priv_plan. Started as root, kgated
	 * joins it; started unprivileged, the user must already be a member. */
	gid_t extra_gid;
};

/* Resolves the target user. user: from --user, NULL for the default. It
 * is a command-line option, not a setting: no configuration or state
 * document can change it, since with a state directory that document lives
 * in a folder the user must own. Returns 0, or -errno with a one-line
 * reason in err. Call before binding so a wrong user is reported before
 * anything runs (kgated calls it once the configuration is validated, so a
 * bad configuration is reported first). */
int kg_priv_plan(const char *user, struct kg_priv_plan *plan, char *err, size_t errlen);

/* What kg_priv_drop left the process with, for the log. */
struct kg_priv_result {
	uid_t uid;
	gid_t gid;
	char caps[256];	     /* cap_to_text of the process's sets */
	bool bounding_kept; /* no CAP_SETPCAP: bounding set left to the caller */
};

/* Switches to the planned user and narrows the capability sets. Must run
 * while the process has ONE thread: credentials and capability sets set
 * here are per thread in the kernel, and threads started later inherit
 * them. On success fills res and returns 0; on failure returns -errno with
 * the reason in err — the caller must exit, the process may be half-dropped. */
int kg_priv_drop(const struct kg_priv_plan *plan, struct kg_priv_result *res, char *err,
		 size_t errlen);

/* Before kgated executes itself (an upgrade, upgrade.h): the kept
 * capabilities the calling thread has go into its inheritable and ambient
 * sets, so the new process starts with them as a non-root user too (an
 * exec would drop them; the new process narrows its sets again). Only the
 * calling thread changes: capability sets are per thread. 0 or -errno. */
int kg_priv_exec_caps_raise(void);
/* Undoes it once the child is forked. */
void kg_priv_exec_caps_clear(void);

#endif
