/* The path → forwarder table (forwarders.h). */
#include "forwarders.h"

#include "forward_h2.h"
#include "forward_http.h"
#include "forward_sockmap.h"
#include "forward_splice.h"
#include "forward_user.h"
#include "fwd.h"
#include "handoff.h"

void kg_forwarders_register(void)
{
	static const struct {
		enum kg_path path;
		const struct kg_fwd_ops *ops;
	} table[] = {
		{KG_PATH_USERSPACE, &kg_fwd_user_ops},
		{KG_PATH_KTLS_SPLICE, &kg_fwd_splice_ops},
		{KG_PATH_SPLICE, &kg_fwd_splice_ops},
		{KG_PATH_COPY, &kg_fwd_splice_ops},
		{KG_PATH_SOCKMAP, &kg_fwd_sockmap_ops},
		{KG_PATH_HTTP, &kg_fwd_http_ops},
		{KG_PATH_HTTP_KTLS, &kg_fwd_http_ops},
		{KG_PATH_H2, &kg_fwd_h2_ops},
		{KG_PATH_H2_KTLS, &kg_fwd_h2_ops},
	};
	for (size_t i = 0; i < sizeof(table) / sizeof(table[0]); i++)
		kg_fwd_register(table[i].path, table[i].ops);
	kg_handoff_register();
}
