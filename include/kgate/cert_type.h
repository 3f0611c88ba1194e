/* What a certificate is for: one enum for kgated and kgatectl. kgated's
 * certificate entries (kgate.json "certificates", `kgatectl cert upload
 * --type`) are server or ca; `kgatectl ca issue --type` makes client,
 * server or peer leaves. The values are fixed: config.c parses "type" by index
 * (server 0, ca 1). */
#ifndef KGATE_CERT_TYPE_H
#define KGATE_CERT_TYPE_H

enum kg_cert_type {
	KG_CERT_SERVER, /* a chain with its key; extendedKeyUsage serverAuth */
	KG_CERT_CA,     /* CA certificates that client certificates chain to */
	KG_CERT_CLIENT, /* a leaf with extendedKeyUsage clientAuth (kgatectl ca issue only) */
	/* Both serverAuth and clientAuth (kgatectl ca issue only): for a
	 * service that is both, such as an etcd member under client-cert auth,
	 * whose JSON gateway connects to its own gRPC port with its server
	 * certificate. */
	KG_CERT_PEER,
};

#endif
