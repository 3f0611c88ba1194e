/* The CRL watcher (kgated(8) CRLS): one small thread that watches the
 * folders of the running document's CRL files with inotify, and on a
 * change (written in place, or renamed over: how editors and `kgatectl ca
 * crl` write) reads the file, offers it as the new CRL in force (crl.h) and
 * has the listeners of that CA rebuilt. A refused CRL leaves the previous
 * one in force; the refusal is logged (crl.refused) and counted. The
 * workers never read, parse or wait for a CRL: they see a new listener
 * snapshot. */
#ifndef KGATE_CRL_WATCH_H
#define KGATE_CRL_WATCH_H

#include <stddef.h>

struct kg_ops;
struct kg_crl_watch;

/* A change is read this long after its last inotify event, so a writer
 * that writes in several steps is read once, complete. */
#define KG_CRL_SETTLE_MS 50
/* How long one crl_url download may take, connection included. */
#define KG_CRL_FETCH_TIMEOUT_MS 10000u

/* Starts the thread. NULL with err when inotify or the thread cannot be
 * had. */
struct kg_crl_watch *kg_crl_watch_start(struct kg_ops *ops, char *err, size_t errlen);
/* Stops and joins the thread; tolerates NULL. */
void kg_crl_watch_stop(struct kg_crl_watch *w);

#endif
