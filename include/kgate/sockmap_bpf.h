/* Layouts shared by bpf/sockmap.bpf.c and its userspace owner
 * (dataplane/sockmap.c). Plain fixed-width types only: the BPF side
 * includes this without libc. */
#ifndef KGATE_SOCKMAP_BPF_H
#define KGATE_SOCKMAP_BPF_H

#include <linux/types.h>

/* Sides of a relayed pair. A socket's key in the sockhash is
 * slot * 2 + side, so its peer is key ^ 1. */
#define KG_SM_CLIENT 0
#define KG_SM_BACKEND 1

/* Default number of pair slots (each slot holds two sockets). */
#define KG_SM_DEFAULT_PAIRS 65536

/* Back-pressure (bpf/README.md): the kernel queues redirected bytes in
 * front of the receiving socket without limit, so userspace pauses a source
 * (kg_sm_paused) when more than KG_SM_PAUSE_BYTES wait in front of its
 * peer's TCP; the verdict then passes the source's bytes to its own
 * receive queue, whose size (fixed at KG_SM_RCVBUF) stops the sender, and
 * userspace copies the rest of that direction. */
#define KG_SM_PAUSE_BYTES (4 * 1024 * 1024)
#define KG_SM_RCVBUF (256 * 1024)

/* Per-socket entry of kg_sm_socks, keyed by the socket's cookie
 * (SO_COOKIE): which pair and side the socket is. */
struct kg_sm_sock {
	__u32 slot;
	__u32 side;
};

/* Per-pair entry of kg_sm_pairs, keyed by slot. into[s] counts the bytes
 * the verdict program redirected into side s (from side s ^ 1): userspace
 * compares it with what side s's TCP has taken, to know when it is safe to
 * shut side s down. dropped[s] counts bytes from side s ^ 1 that could not
 * be redirected (the peer socket was no longer in the map). */
struct kg_sm_pair {
	__u64 into[2];
	__u64 dropped[2];
};

#endif
