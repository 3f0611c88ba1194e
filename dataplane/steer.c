/* Owner of the sk_reuseport steering program (steer.h). */
#include "steer.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <linux/capability.h>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include <kgate/limits.h>
#include <kgate/log.h>

#include "kg_reuseport_bpf.skel.h"
#include "libbpf_log.h"
#include "runtime.h"

_Static_assert(KG_RP_MAX_WORKERS == KG_MAX_WORKERS, "one sockarray row per worker");
_Static_assert(KG_RP_MAX_LISTENERS == KG_MAX_LISTENERS, "one sockarray row per listener slot");

#ifndef SO_DETACH_REUSEPORT_BPF
#define SO_DETACH_REUSEPORT_BPF 68
#endif

enum { FD_PROG, FD_SOCKS, FD_LISTENERS, FD_LOADS, FD_STATS };

struct kg_steer {
	struct kg_reuseport_bpf *skel; /* NULL when adopted */
	int fd[KG_STEER_FDS];
	bool own_fds;                  /* fd[] are ours to close (adopted) */
	bool handed_over;              /* the maps belong to the upgraded process */
	struct kg_rp_loads *loads;     /* mmap of kg_rp_loads */
	uint32_t bank;
};

static struct kg_steer *fail(struct kg_steer *s, char *err, size_t errlen, const char *what,
			     int e)
{
	snprintf(err, errlen, "%s: %s", what, strerror(e));
	kg_steer_close(s);
	return NULL;
}

static struct kg_steer *steer_new(void)
{
	struct kg_steer *s = calloc(1, sizeof(*s));
	if (!s)
		return NULL;
	for (int i = 0; i < KG_STEER_FDS; i++)
		s->fd[i] = -1;
	return s;
}

/* Maps the loads and readies bank for n_workers workers with no
 * connections. */
static int map_loads(struct kg_steer *s, uint32_t bank, unsigned n_workers)
{
	void *p = mmap(NULL, sizeof(struct kg_rp_loads), PROT_READ | PROT_WRITE, MAP_SHARED,
		       s->fd[FD_LOADS], 0);
	if (p == MAP_FAILED)
		return -errno;
	s->loads = p;
	s->bank = bank;
	/* The old process may be writing the other bank: only ours is
	 * cleared. */
	memset(s->loads->conns[bank], 0, sizeof(s->loads->conns[bank]));
	memset(s->loads->pending[bank], 0, sizeof(s->loads->pending[bank]));
	__atomic_store_n(&s->loads->n_workers[bank], n_workers, __ATOMIC_RELEASE);
	return 0;
}

bool kg_steer_may_load(void)
{
	struct __user_cap_header_struct hdr = {.version = _LINUX_CAPABILITY_VERSION_3};
	struct __user_cap_data_struct data[2];
	if (syscall(SYS_capget, &hdr, data) == -1)
		return true; /* unknown: let the load say why */
	unsigned long long eff = data[0].effective | (unsigned long long)data[1].effective << 32;
	return (eff & (1ULL << CAP_BPF)) || (eff & (1ULL << CAP_SYS_ADMIN));
}

struct kg_steer *kg_steer_open(unsigned n_workers, char *err, size_t errlen)
{
	if (n_workers == 0 || n_workers > KG_RP_MAX_WORKERS)
		return fail(NULL, err, errlen, "worker count", EINVAL);
	struct kg_steer *s = steer_new();
	if (!s)
		return fail(NULL, err, errlen, "allocation", ENOMEM);
	kg_libbpf_log_init();
	s->skel = kg_reuseport_bpf__open();
	if (!s->skel)
		return fail(s, err, errlen, "opening the BPF object", errno);
	int e = -kg_reuseport_bpf__load(s->skel);
	if (e)
		return fail(s, err, errlen,
			    "loading the sk_reuseport program (needs CAP_BPF)", e);
	s->fd[FD_PROG] = bpf_program__fd(s->skel->progs.kg_rp_select);
	s->fd[FD_SOCKS] = bpf_map__fd(s->skel->maps.kg_rp_socks);
	s->fd[FD_LISTENERS] = bpf_map__fd(s->skel->maps.kg_rp_listeners);
	s->fd[FD_LOADS] = bpf_map__fd(s->skel->maps.kg_rp_loads);
	s->fd[FD_STATS] = bpf_map__fd(s->skel->maps.kg_rp_stats);
	e = map_loads(s, 0, n_workers);
	if (e)
		return fail(s, err, errlen, "mapping the load array", -e);
	return s;
}

/* fd must be a BPF object of the expected kind: an upgrade's environment
 * names numbers, and a wrong one must not be written to. */
static int check_fd(int fd, bool prog, uint32_t type)
{
	if (prog) {
		struct bpf_prog_info pi = {0};
		uint32_t len = sizeof(pi);
		if (bpf_obj_get_info_by_fd(fd, &pi, &len) == -1)
			return -errno;
		return pi.type == type ? 0 : -EINVAL;
	}
	struct bpf_map_info mi = {0};
	uint32_t len = sizeof(mi);
	if (bpf_obj_get_info_by_fd(fd, &mi, &len) == -1)
		return -errno;
	return mi.type == type ? 0 : -EINVAL;
}

struct kg_steer *kg_steer_adopt(int fds[KG_STEER_FDS], unsigned n_workers, char *err,
				size_t errlen)
{
	static const struct {
		bool prog;
		uint32_t type;
	} kinds[KG_STEER_FDS] = {
		[FD_PROG] = {true, BPF_PROG_TYPE_SK_REUSEPORT},
		[FD_SOCKS] = {false, BPF_MAP_TYPE_REUSEPORT_SOCKARRAY},
		[FD_LISTENERS] = {false, BPF_MAP_TYPE_HASH},
		[FD_LOADS] = {false, BPF_MAP_TYPE_ARRAY},
		[FD_STATS] = {false, BPF_MAP_TYPE_PERCPU_ARRAY},
	};
	struct kg_steer *s = steer_new();
	if (!s) {
		for (int i = 0; i < KG_STEER_FDS; i++)
			close(fds[i]);
		return fail(NULL, err, errlen, "allocation", ENOMEM);
	}
	s->own_fds = true;
	for (int i = 0; i < KG_STEER_FDS; i++) {
		s->fd[i] = fds[i];
		fds[i] = -1;
	}
	if (n_workers == 0 || n_workers > KG_RP_MAX_WORKERS)
		return fail(s, err, errlen, "worker count", EINVAL);
	for (int i = 0; i < KG_STEER_FDS; i++) {
		int e = check_fd(s->fd[i], kinds[i].prog, kinds[i].type);
		if (e)
			return fail(s, err, errlen, "an inherited BPF object", -e);
	}
	/* The old process keeps writing the bank the program reads now, so
	 * this one takes the other. Read through a map lookup: the array is
	 * not mapped yet. */
	struct kg_rp_loads cur;
	uint32_t zero = 0;
	if (bpf_map_lookup_elem(s->fd[FD_LOADS], &zero, &cur) == -1)
		return fail(s, err, errlen, "reading the inherited load array", errno);
	int e = map_loads(s, (cur.bank & 1) ^ 1, n_workers);
	if (e)
		return fail(s, err, errlen, "mapping the inherited load array", -e);
	return s;
}

void kg_steer_close(struct kg_steer *s)
{
	if (!s)
		return;
	if (s->loads)
		munmap(s->loads, sizeof(*s->loads));
	if (s->own_fds)
		for (int i = 0; i < KG_STEER_FDS; i++)
			if (s->fd[i] >= 0)
				close(s->fd[i]);
	kg_reuseport_bpf__destroy(s->skel);
	free(s);
}

int kg_steer_fds(const struct kg_steer *s, int fds[KG_STEER_FDS])
{
	for (int i = 0; i < KG_STEER_FDS; i++) {
		fds[i] = fcntl(s->fd[i], F_DUPFD_CLOEXEC, 3);
		if (fds[i] < 0) {
			int e = -errno;
			while (i-- > 0)
				close(fds[i]);
			return e;
		}
	}
	return 0;
}

void kg_steer_activate(struct kg_steer *s)
{
	__atomic_store_n(&s->loads->bank, s->bank, __ATOMIC_RELEASE);
}

static int sock_cookie(int fd, uint64_t *cookie)
{
	socklen_t len = sizeof(*cookie);
	if (getsockopt(fd, SOL_SOCKET, SO_COOKIE, cookie, &len) == -1)
		return -errno;
	return 0;
}

int kg_steer_listen(struct kg_steer *s, uint32_t slot, const int *fds, unsigned n)
{
	int prog = s->fd[FD_PROG];
	int e = 0;
	if (slot >= KG_RP_MAX_LISTENERS || n == 0 || n > KG_RP_MAX_WORKERS)
		return -EINVAL;
	/* Sockets first, cookies last: until a socket's cookie is there the
	 * program lets the kernel's hash choose, so it never looks up a row
	 * that is half written. */
	for (unsigned w = 0; w < n && !e; w++) {
		uint32_t key = KG_RP_KEY(slot, w);
		uint64_t fd = (uint64_t)fds[w];
		if (bpf_map_update_elem(s->fd[FD_SOCKS], &key, &fd, BPF_ANY) == -1)
			e = -errno;
	}
	/* One attach per group (they share the program); an inherited group
	 * may carry an old process's program, which this replaces. */
	if (!e && setsockopt(fds[0], SOL_SOCKET, SO_ATTACH_REUSEPORT_EBPF, &prog, sizeof(prog)) == -1)
		e = -errno;
	for (unsigned w = 0; w < n && !e; w++) {
		uint64_t cookie;
		e = sock_cookie(fds[w], &cookie);
		if (!e && bpf_map_update_elem(s->fd[FD_LISTENERS], &cookie, &slot, BPF_ANY) == -1)
			e = -errno;
	}
	if (e) {
		kg_steer_unlisten(s, slot, fds, n);
		kg_steer_detach(fds[0]);
	}
	return e;
}

void kg_steer_hand_over(struct kg_steer *s)
{
	if (!s)
		return;
	s->handed_over = true;
	/* This process's workers go on storing counts while they drain. The
	 * new process took the other bank, but a third process (the next
	 * upgrade) takes this one again, maybe before this one has exited:
	 * so the shared mapping is swapped, in one step, for private memory
	 * the workers may keep writing to. */
	void *p = mmap(s->loads, sizeof(*s->loads), PROT_READ | PROT_WRITE,
		       MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		log_warn("accept.steering_cleanup_failed", KV_ERRNO(errno));
}

void kg_steer_unlisten(struct kg_steer *s, uint32_t slot, const int *fds, unsigned n)
{
	if (s->handed_over)
		return;
	for (unsigned w = 0; w < n && w < KG_RP_MAX_WORKERS; w++) {
		uint64_t cookie;
		uint32_t key = KG_RP_KEY(slot, w);
		if (fds[w] >= 0 && sock_cookie(fds[w], &cookie) == 0 &&
		    bpf_map_delete_elem(s->fd[FD_LISTENERS], &cookie) == -1 && errno != ENOENT)
			log_warn("accept.steering_cleanup_failed", KV("slot", slot), KV("worker", w),
				 KV_ERRNO(errno));
		if (bpf_map_delete_elem(s->fd[FD_SOCKS], &key) == -1 && errno != ENOENT)
			log_warn("accept.steering_cleanup_failed", KV("slot", slot), KV("worker", w),
				 KV_ERRNO(errno));
	}
}

void kg_steer_detach(int fd)
{
	int zero = 0;
	/* ENOENT: no program on the group, the usual case. */
	if (setsockopt(fd, SOL_SOCKET, SO_DETACH_REUSEPORT_BPF, &zero, sizeof(zero)) == -1 &&
	    errno != ENOENT)
		log_warn("accept.steering_cleanup_failed", KV_ERRNO(errno));
}

uint32_t *kg_steer_conns_cell(struct kg_steer *s, unsigned w)
{
	return &s->loads->conns[s->bank][w];
}

int32_t *kg_steer_pending_cell(struct kg_steer *s, unsigned w)
{
	return &s->loads->pending[s->bank][w];
}

int kg_steer_stats(const struct kg_steer *s, uint64_t out[KG_RP_N_STATS])
{
	int ncpu = libbpf_num_possible_cpus();
	if (ncpu < 0)
		return ncpu;
	uint64_t *vals = calloc((size_t)ncpu, sizeof(*vals));
	if (!vals)
		return -ENOMEM;
	int e = 0;
	for (uint32_t k = 0; k < KG_RP_N_STATS && !e; k++) {
		out[k] = 0;
		if (bpf_map_lookup_elem(s->fd[FD_STATS], &k, vals) == -1) {
			e = -errno;
			break;
		}
		for (int c = 0; c < ncpu; c++)
			out[k] += vals[c];
	}
	free(vals);
	return e;
}
