/* Steering of new connections in the kernel (issue 19 §3): an
 * sk_reuseport program (bpf/reuseport.bpf.c) attached to every listener's
 * SO_REUSEPORT group sends each new connection to the listening socket of
 * the worker with the fewest connections, so no connection changes thread
 * after accept. Where it cannot be loaded, the workers hand connections
 * over in userspace instead (accept_balance.h).
 *
 * Map layout: one REUSEPORT_SOCKARRAY for every listener, keyed
 * KG_RP_KEY(slot, worker), and a hash from each listening socket's cookie
 * to its slot, rather than one array per listener: maps can only be made
 * with CAP_BPF, which kgated drops after start, while listeners come and
 * go at run time; with the single layout made at start, adding a listener
 * is two map updates through fds kgated keeps (no capability needed).
 *
 * Each worker owns one cell of an mmap'ed array (struct kg_rp_loads): it
 * stores its connection count there with a plain store and takes back the
 * program's "pending" mark when it accepts: no syscall per connection.
 *
 * A binary upgrade hands the program and maps to the new process
 * (kg_steer_fds / kg_steer_adopt): the program stays attached to the
 * inherited groups, and the new process writes the other bank of the loads
 * and switches to it when it starts accepting (kg_steer_activate).
 *
 * Control thread / main thread only, except the worker cells. Errors:
 * NULL with a reason, or -errno. */
#ifndef KGATE_STEER_H
#define KGATE_STEER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <kgate/reuseport_bpf.h>

/* The objects an upgrade passes on: program, sockets, listeners, loads, stats. */
#define KG_STEER_FDS 5

struct kg_steer;

/* Whether this process may load the program: CAP_BPF (or CAP_SYS_ADMIN)
 * in its effective set. Asked first under "auto", so a start without it
 * (the packaged unit) says so in one line instead of libbpf's warnings. */
bool kg_steer_may_load(void);

/* Loads the program and makes the maps (needs CAP_BPF: before the privilege
 * drop) for n_workers workers; uses bank 0. */
struct kg_steer *kg_steer_open(unsigned n_workers, char *err, size_t errlen);
/* Takes over the objects an old process handed over (fds are consumed,
 * closed on failure too), writing the bank the old process does not use. */
struct kg_steer *kg_steer_adopt(int fds[KG_STEER_FDS], unsigned n_workers, char *err,
				size_t errlen);
/* Tolerates NULL. The program stays attached to groups whose sockets live
 * on (an upgraded process's); the maps die with the last of them. */
void kg_steer_close(struct kg_steer *s);

/* Duplicates of the objects' fds for an upgrade (close-on-exec cleared by
 * the upgrade). 0 or -errno (nothing left open). */
int kg_steer_fds(const struct kg_steer *s, int fds[KG_STEER_FDS]);

/* Publishes this process's bank: from now on the program reads the counts
 * of this process's workers. */
void kg_steer_activate(struct kg_steer *s);

/* After an upgrade handed the objects over: kg_steer_unlisten no longer
 * touches the maps (the new process's entries name the same sockets), and
 * the workers' cells stop reaching the program (their stores go to
 * private memory). Tolerates NULL. */
void kg_steer_hand_over(struct kg_steer *s);

/* Puts listener slot's n sockets (fds[w] is worker w's) in the maps and
 * attaches the program to their group. On failure nothing of the slot is
 * left in the maps (the caller hands its connections over in userspace). */
int kg_steer_listen(struct kg_steer *s, uint32_t slot, const int *fds, unsigned n);
/* Takes slot's sockets out of the maps before they close (the kernel takes
 * a closed socket out of the sockarray by itself; the cookies are ours). */
void kg_steer_unlisten(struct kg_steer *s, uint32_t slot, const int *fds, unsigned n);
/* For a socket of a listener that is not steered (userspace mode): takes
 * off its group any program a previous process attached (an upgrade from a
 * process that steered, whose counts nobody updates now). */
void kg_steer_detach(int fd);

/* Worker w's cells in this process's bank. */
uint32_t *kg_steer_conns_cell(struct kg_steer *s, unsigned w);
int32_t *kg_steer_pending_cell(struct kg_steer *s, unsigned w);

/* The program's outcomes summed over CPUs, indexed by KG_RP_*. */
int kg_steer_stats(const struct kg_steer *s, uint64_t out[KG_RP_N_STATS]);

#endif
