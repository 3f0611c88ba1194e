#!/usr/bin/env bash
# Bounded soak of kgated (not part of everyday CI): mixed load on loopback
# for DURATION seconds, sampling kgated's open fds and RSS, then checks that
# both came back to where they were after warm-up.
#   tests/soak/run.sh [DURATION-seconds (default 600)] [--keep]
# Load, all at once:
#   - wrk through bench's client-certificate shim, half keep-alive and half
#     "Connection: close" with a full TLS 1.3 handshake per request;
#   - a loop of `openssl s_client` handshakes (TLS 1.2 and 1.3) with a request;
#   - bad_clients.py: no certificate, revoked certificate, garbage, half a
#     ClientHello then reset, connect-and-close, garbage after the handshake.
# Fails when kgated dies or exits non-zero on SIGTERM; when it ends with
# more fds than before the load (+2); when RSS grew by more than 10% + 8 MiB
# over the last third of the run (earlier growth is the TLS session cache
# filling up to its bound, 20,000 sessions, and malloc's arenas); when a
# good client was refused or a bad one served. Uses the Release build.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
DURATION=${1:-600}
KEEP=0
[[ "${2:-}" == --keep ]] && KEEP=1
WARMUP=$((DURATION / 10 < 30 ? DURATION / 10 : 30))

# shellcheck source=tests/soak/common.sh
. tests/soak/common.sh
soak_init soak

tests/install-deps.sh bench
build=${KG_SOAK_BUILD_DIR:-build-release}
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$build" -j"$(nproc)" --target kgated kgatectl wrk_mtls_shim http_backend >/dev/null
KGATED=$ROOT/$build/dataplane/kgated
CTL=$ROOT/$build/ctl/kgatectl
SHIM=$ROOT/$build/bench/wrk_mtls_shim.so
BACKEND=$ROOT/$build/bench/http_backend

# ---- PKI ---------------------------------------------------------------------
P=$WORK/pki
mkdir -p "$P"
"$CTL" ca init --dir "$P/ca" --subject "/O=kgate soak/CN=soak CA" --days 2 >/dev/null
"$CTL" ca issue --dir "$P/ca" --type server --subject "/O=kgate soak/CN=localhost" \
	--san DNS:localhost,IP:127.0.0.1 --days 2 --out "$P/server" >/dev/null
for c in client revoked; do
	"$CTL" ca issue --dir "$P/ca" --type client --subject "/O=kgate soak/CN=$c" --days 2 \
		--out "$P/$c" >/dev/null
done
"$CTL" ca revoke --dir "$P/ca" --cert "$P/revoked.pem" >/dev/null
"$CTL" ca crl --dir "$P/ca" --out "$P/ca.crl" >/dev/null

# ---- backends and kgated -----------------------------------------------------
start_backends a b
start_kgated 2000 10000
log "kgated pid $KG_PID on port $PORT, $DURATION s, warm-up $WARMUP s, work dir $WORK"

PRE_FDS=$(fds) PRE_RSS=$(rss)

# ---- load ----------------------------------------------------------------------
end=$((SECONDS + DURATION))
env KG_CLIENT_CERT="$P/client.pem" KG_CLIENT_KEY="$P/client.key" LD_PRELOAD="$SHIM" \
	wrk -c 20 -t 1 -d "${DURATION}s" "https://127.0.0.1:$PORT/" >"$WORK/wrk-keepalive.log" 2>&1 &
PIDS+=($!)
WRK_KA=$!
env KG_CLIENT_CERT="$P/client.pem" KG_CLIENT_KEY="$P/client.key" KG_FULL_HANDSHAKE=1 \
	KG_TLS_MAX=1.3 LD_PRELOAD="$SHIM" \
	wrk -c 10 -t 1 -d "${DURATION}s" -H "Connection: close" "https://127.0.0.1:$PORT/" \
	>"$WORK/wrk-full.log" 2>&1 &
PIDS+=($!)
WRK_FULL=$!
(
	ok=0 bad=0 i=0
	trap 'echo "s_client: ok=$ok failed=$bad" >"$WORK/sclient.result"; exit 0' TERM
	while :; do
		v=-tls1_3
		((i++ % 2)) && v=-tls1_2
		if printf 'GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n' |
			timeout 10 openssl s_client -quiet -ign_eof -connect "127.0.0.1:$PORT" $v \
				-CAfile "$P/ca/ca.pem" -cert "$P/client.pem" -key "$P/client.key" \
				-verify_return_error 2>/dev/null | grep -q "^backend "; then
			ok=$((ok + 1))
		else
			bad=$((bad + 1))
		fi
		echo "s_client: ok=$ok failed=$bad" >"$WORK/sclient.result"
		sleep 0.2
	done
) &
PIDS+=($!)
SCLIENT=$!
/usr/bin/python3 tests/soak/bad_clients.py "$PORT" "$P/ca/ca.pem" "$P/client.pem" \
	"$P/client.key" "$P/revoked.pem" "$P/revoked.key" >"$WORK/bad.log" 2>&1 &
PIDS+=($!)
BAD=$!

# ---- sampling --------------------------------------------------------------------
echo "t_s fds rss_kib" >"$WORK/samples"
sleep "$WARMUP"
BASE_FDS=$(fds) BASE_RSS=$(rss) MAX_FDS=0 MAX_RSS=0 THIRD_RSS=""
third=$((end - DURATION / 3))
while ((SECONDS < end)); do
	kill -0 "$KG_PID" 2>/dev/null || die "kgated died: $(tail -20 "$WORK/kgated.log")"
	f=$(fds) r=$(rss)
	((f > MAX_FDS)) && MAX_FDS=$f
	((r > MAX_RSS)) && MAX_RSS=$r
	echo "$SECONDS $f $r" >>"$WORK/samples"
	[[ -z "$THIRD_RSS" ]] && ((SECONDS >= third)) && THIRD_RSS=$r
	sleep 5
done
wait "$WRK_KA" "$WRK_FULL" 2>/dev/null || true
stop_pid "$SCLIENT" 5
stop_pid "$BAD" 10
# Connections still open drain (handshake and idle timeouts bound it).
for ((i = 0; i < 150; i++)); do
	(($(fds) <= PRE_FDS)) && break
	sleep 0.1
done
END_FDS=$(fds) END_RSS=$(rss)
echo "$SECONDS $END_FDS $END_RSS" >>"$WORK/samples"

kill -TERM "$KG_PID"
rc=0
wait "$KG_PID" || rc=$?

# ---- report -------------------------------------------------------------------------
reqs() { awk '/requests in/ {print $1}' "$1"; }
errs() { awk '/Socket errors|Non-2xx/ {print}' "$1" | tr '\n' ' '; }
echo "soak: ${DURATION}s, kgated 2 workers, mutual TLS required"
echo "wrk keep-alive: $(reqs "$WORK/wrk-keepalive.log") requests $(errs "$WORK/wrk-keepalive.log")"
echo "wrk full TLS 1.3 handshake per request: $(reqs "$WORK/wrk-full.log") requests $(errs "$WORK/wrk-full.log")"
grep -h "wrk_mtls_shim" "$WORK"/wrk-*.log || true
cat "$WORK/sclient.result" 2>/dev/null || true
cat "$WORK/bad.log"
THIRD_RSS=${THIRD_RSS:-$BASE_RSS}
echo "kgated fds: before load $PRE_FDS, after warm-up $BASE_FDS, max $MAX_FDS, end $END_FDS"
echo "kgated RSS KiB: before load $PRE_RSS, after warm-up $BASE_RSS, at 2/3 $THIRD_RSS, max $MAX_RSS, end $END_RSS"
grep -E " event=worker.stopped " "$WORK/kgated.log" || true
cp "$WORK/samples" "${KG_SOAK_SAMPLES:-/dev/null}" 2>/dev/null || true

fail=0
((rc == 0)) || { log "FAIL: kgated exited $rc on SIGTERM"; fail=1; }
((END_FDS <= PRE_FDS + 2)) || { log "FAIL: fds $END_FDS at the end, $PRE_FDS before the load"; fail=1; }
((END_RSS <= THIRD_RSS + THIRD_RSS / 10 + 8192)) ||
	{ log "FAIL: RSS $END_RSS KiB at the end, $THIRD_RSS two thirds in"; fail=1; }
grep -q "failed=0" "$WORK/sclient.result" || { log "FAIL: s_client handshakes failed"; fail=1; }
grep -q "accepted_when_it_should_not=0" "$WORK/bad.log" || { log "FAIL: a bad client was served"; fail=1; }
grep -qE "Socket errors|Non-2xx" "$WORK/wrk-keepalive.log" "$WORK/wrk-full.log" &&
	{ log "FAIL: wrk saw errors"; fail=1; }
if grep -qE "ERROR: (Address|Leak)Sanitizer|runtime error:" "$WORK/kgated.log"; then
	log "FAIL: sanitizer report"; fail=1
elif ! /usr/bin/python3 "$ROOT/tests/tools/logfmt.py" "$WORK/kgated.log"; then
	log "FAIL: a kgated log line is not logfmt"; fail=1
fi
((fail == 0)) && echo "soak: PASS"
exit "$fail"
