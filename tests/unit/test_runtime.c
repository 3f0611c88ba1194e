/* runtime.c: listener snapshots — a connection's reference keeps the
 * snapshot (and the document it came from) alive across a swap; member
 * health (drain, state) follows the backend address to the next snapshot.
 * ASan turns a wrong reference count into a failure here. */
#include <string.h>

#include <criterion/criterion.h>

#include "certgen.h"
#include "group.h"
#include "health.h"
#include "runtime.h"

static struct tc_dir dir;
static struct kg_runtime rt;
static char err[1024];

static void setup(void)
{
	tc_dir_create(&dir);
	EVP_PKEY *key = tc_key();
	X509 *cert = tc_cert(&(struct tc_cert_opts){.cn = "localhost", .eku = TC_EKU_SERVER}, key,
			     NULL, NULL);
	tc_write_certs(tc_file(&dir, "server.pem"), &cert, 1);
	tc_write_key(tc_file(&dir, "server.key"), key, NULL);
	X509_free(cert);
	EVP_PKEY_free(key);
	cr_assert_eq(kg_runtime_init(&rt), 0);
	kg_kernel_probe(&rt.caps);
}

static void teardown(void)
{
	kg_runtime_destroy(&rt);
	tc_dir_remove(&dir);
}

TestSuite(runtime, .init = setup, .fini = teardown);

static struct kg_config_ref *doc(const char *backends, const char *forwarding)
{
	char text[2048];
	snprintf(text, sizeof(text),
		 "{\"certificates\": {\"web\": {\"type\": \"server\", \"cert\": \"server.pem\", "
		 "\"key\": \"server.key\"}}, \"listeners\": [{\"name\": \"web\", \"protocol\": \"tls\", "
		 "\"bind\": \"127.0.0.1\", \"port\": 0, \"certificate\": \"web\", "
		 "\"forwarding\": \"%s\", \"health_check\": {\"type\": \"tcp\", "
		 "\"healthy_threshold\": 1, \"unknown_is_up\": false}, \"backends\": [%s]}]}",
		 forwarding, backends);
	struct kg_config *cfg = kg_config_parse(text, dir.path, err, sizeof(err));
	cr_assert_not_null(cfg, "%s", err);
	struct kg_config_ref *ref = kg_config_ref_new(cfg);
	cr_assert_not_null(ref);
	return ref;
}

Test(runtime, connection_keeps_its_snapshot_across_a_swap)
{
	struct kg_listener_slot *slot = &rt.slots[3];
	struct kg_config_ref *d1 = doc("{\"address\": \"127.0.0.1:9001\"}", "auto");
	struct kg_listener_rt *s1 = kg_listener_build(slot, &rt.caps, NULL, d1, &d1->cfg->listeners[0], NULL, "listeners[0]", err,
						      sizeof(err));
	cr_assert_not_null(s1, "%s", err);
	kg_config_ref_put(d1); /* the snapshot holds the document now */
	kg_listener_publish(slot, s1);
	kg_health_record(s1->group->health, 0, true, "connected", 1);

	struct kg_listener_rt *conn = kg_listener_acquire(slot);
	cr_assert_eq(conn, s1);
	cr_assert_eq(atomic_load(&s1->refs), 2);

	struct kg_config_ref *d2 = doc("{\"address\": \"127.0.0.1:9001\"}, "
				       "{\"address\": \"127.0.0.1:9002\", \"weight\": 2}, "
				       "{\"address\": \"127.0.0.1:9003\", \"drained\": true}", "auto");
	struct kg_listener_rt *s2 = kg_listener_build(slot, &rt.caps, NULL, d2, &d2->cfg->listeners[0], NULL, "listeners[0]", err,
						      sizeof(err));
	cr_assert_not_null(s2, "%s", err);
	kg_config_ref_put(d2);
	kg_listener_publish(slot, s2);

	/* The old snapshot and its document are still whole for the connection. */
	cr_assert_eq(atomic_load(&conn->refs), 1);
	cr_assert_str_eq(conn->conf->name, "web");
	cr_assert_eq(conn->conf->own.n_backends, 1);
	cr_assert_not_null(conn->ssl_ctx);
	/* New connections get the new one. */
	struct kg_listener_rt *next = kg_listener_acquire(slot);
	cr_assert_eq(next, s2);
	cr_assert_eq(next->conf->own.n_backends, 3);
	/* What health knows about a member that stays carries over to the new
	 * snapshot by address; a new member starts unknown (out of rotation
	 * here); the document's drained flag applies. */
	struct kg_health_member_info info[3];
	cr_assert_eq(kg_health_snapshot(next->group->health, info, 3, 0), 3);
	cr_assert_eq(info[0].state, KG_MEMBER_HEALTHY);
	cr_assert_eq(info[1].state, KG_MEMBER_UNKNOWN);
	cr_assert_eq(info[2].admin, KG_ADMIN_DRAINED);
	cr_assert(kg_balancer_is_up(next->group->balancer, 0));
	cr_assert_not(kg_balancer_is_up(next->group->balancer, 1));
	cr_assert_not(kg_balancer_is_up(next->group->balancer, 2));
	kg_listener_put(next);
	kg_listener_put(conn);
	kg_listener_publish(slot, NULL);
	cr_assert_null(kg_listener_acquire(slot));
}

Test(runtime, build_refuses_what_this_version_cannot_run)
{
	struct kg_config_ref *d = doc("{\"address\": \"127.0.0.1:9001\"}", "sockmap");
	cr_assert_null(kg_listener_build(&rt.slots[0], &rt.caps, NULL, d, &d->cfg->listeners[0], NULL, "listeners[0]", err,
					 sizeof(err)));
	cr_assert(strstr(err, "listeners[0].forwarding") != NULL, "%s", err);
	kg_config_ref_put(d);
}
