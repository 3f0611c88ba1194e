#!/usr/bin/env bash
# Fleet figures (issue 15, section 5): runs the fleet lane (tests/fleet/run,
# network namespaces, root) and writes its figures — ECMP spread, failover
# gaps, convergence of store changes, resumption across instances — with
# the load average to bench/results/<date>-fleet-lane[-LABEL].md. The
# handshake CPU of store mode vs single-box mode is bench/fleet_tickets.py.
# Functional figures on a shared 2-CPU machine and an ASan build: they say
# what happens and roughly how fast, not what a real router does.
#   bench/fleet.sh [LABEL]
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
stamp=$(date -u +%Y-%m-%d-%H%M)
out=bench/results/$stamp-fleet-lane${1:+-$1}.md
log=$(mktemp)
trap 'rm -f "$log"' EXIT
before=$(cut -d' ' -f1-3 /proc/loadavg)
tests/fleet/run 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
after=$(cut -d' ' -f1-3 /proc/loadavg)
{
	echo "# The fleet lane's figures, $stamp UTC"
	echo
	echo "- kgate $(git rev-parse --short HEAD), ${KG_BUILD_DIR:-build-asan} (ASan); $(nproc) CPUs; load average before / after: $before / $after"
	echo "- 3 instances (kgated + kgate-anycast + BIRD 2) behind a BIRD 2 router (ECMP, L4 hash), 3 etcd members with client-certificate TLS, 2 backends, 1 client, each in its own network namespace (tests/fleet/conftest.py)"
	echo "- lane exit status: $rc"
	echo
	sed -n 's/^\(.*\)==> /- /p' "$log"
	echo
	grep -E '^[0-9]+ (passed|failed)' "$log" | tail -n1
} >"$out"
echo "fleet: wrote $out"
exit "$rc"
