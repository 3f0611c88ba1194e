#!/usr/bin/env bash
# Regenerates the fixed PKI the handshake harness and its seeds use: a
# client CA (with a CRL revoking "revoked"), a server certificate, client
# certificates. 100-year validity: these are fuzz fixtures, not a test of
# expiry (the unit tests generate their PKI at run time for that). The
# keys are test-only and public.
set -euo pipefail
cd "$(dirname "$0")"
days=36500
ec() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
ec ca.key
openssl req -x509 -new -key ca.key -subj "/CN=Fuzz Client CA" -days $days -out ca.pem \
	-addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
ec server.key
openssl req -x509 -new -key server.key -subj "/CN=localhost" -days $days -out server.pem \
	-addext basicConstraints=critical,CA:FALSE -addext extendedKeyUsage=serverAuth \
	-addext subjectAltName=DNS:localhost
ec client.key
cat > ca.cnf <<CNF
[ca]
default_ca = fuzz
[fuzz]
database = index.txt
default_md = sha256
default_crl_days = $days
CNF
: > index.txt
for who in good revoked noeku; do
	ext="basicConstraints=CA:FALSE"
	[ "$who" = noeku ] || ext="$ext
extendedKeyUsage=clientAuth"
	openssl req -new -key client.key -subj "/CN=$who" -out "$who.csr"
	openssl x509 -req -in "$who.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days $days \
		-extfile <(echo "$ext") -out "$who.pem" 2>/dev/null
	rm "$who.csr"
done
openssl ca -config ca.cnf -revoke revoked.pem -keyfile ca.key -cert ca.pem 2>/dev/null
openssl ca -config ca.cnf -gencrl -keyfile ca.key -cert ca.pem -out ca.crl 2>/dev/null
rm -f ca.cnf index.txt* ca.srl
