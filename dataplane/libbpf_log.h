/* libbpf's own messages (verifier logs, probe failures) routed into
 * kgate's logger, for every BPF object kgated loads (sockmap.c,
 * steer.c). */
#ifndef KGATE_LIBBPF_LOG_H
#define KGATE_LIBBPF_LOG_H

/* Idempotent; call before opening a skeleton. */
void kg_libbpf_log_init(void);

#endif
