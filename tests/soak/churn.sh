#!/usr/bin/env bash
# Connection churn and idle soak of kgated (issue 9), Release build:
#   tests/soak/churn.sh [CONNECTIONS (default 100000; 0: idle part only)] [IDLE (default 2000)]
#
# 1. CONNECTIONS short mutual-TLS connections (full handshake, one GET with
#    "Connection: close", read to EOF) from 4 client processes
#    (tests/tools/churn.py) through a `tls` listener to two bench
#    http_backend origins. Before it, a warm-up of 25,000 connections fills
#    the listener's TLS session cache to its bound (20,000 sessions), so
#    the baseline is the steady state and what stays after is growth.
#    Checks: every client connection succeeded; kgated counted exactly as
#    many successful handshakes and no failed one (kgatectl stats); open
#    fds back to the baseline; RSS back within 10% + 8 MiB of the baseline.
# 2. IDLE connections (handshake and one keep-alive GET each) held silent
#    until the idle timeout (30 s) closes them, twice. Checks: all closed,
#    none before the timeout and none more than 15 s late; fds back; at
#    least half of what RSS grew by during a round handed back within 10 s
#    of the last close (the workers give freed heap back to the kernel once
#    a wave of connections is over: dataplane/heap_trim.h; the session
#    cache and the buffer pools stay), and the second round leaves no more
#    than the first (within 8 MiB).
# Prints connections, duration, handshakes/s, fds and RSS (before, peak,
# after). Exits non-zero on any failed check.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
TOTAL=${1:-100000}
IDLE=${2:-2000}
IDLE_MS=30000
WARMUP=25000

# shellcheck source=tests/soak/common.sh
. tests/soak/common.sh
soak_init churn

build=${KG_SOAK_BUILD_DIR:-build-release}
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$build" -j"$(nproc)" --target kgated kgatectl http_backend >/dev/null
KGATED=$ROOT/$build/dataplane/kgated
CTL=$ROOT/$build/ctl/kgatectl
BACKEND=$ROOT/$build/bench/http_backend
CHURN=(/usr/bin/python3 "$ROOT/tests/tools/churn.py")

P=$WORK/pki
mkdir -p "$P"
"$CTL" ca init --dir "$P/ca" --subject "/O=kgate churn/CN=churn CA" --days 2 >/dev/null
"$CTL" ca issue --dir "$P/ca" --type server --subject "/O=kgate churn/CN=localhost" \
	--san DNS:localhost,IP:127.0.0.1 --days 2 --out "$P/server" >/dev/null
"$CTL" ca issue --dir "$P/ca" --type client --subject "/O=kgate churn/CN=client" --days 2 \
	--out "$P/client" >/dev/null
"$CTL" ca crl --dir "$P/ca" --out "$P/ca.crl" >/dev/null
TLS=(--ca "$P/ca/ca.pem" --cert "$P/client.pem" --key "$P/client.key")

start_backends a b
ulimit -n 20000
start_kgated 5000 "$IDLE_MS" --state-dir "$WORK/state"
ctl() { "$CTL" --socket "$WORK/state/control.sock" "$@"; }

hs() { ctl -o json stats | /usr/bin/python3 -c 'import json,sys; h=json.load(sys.stdin)["handshakes"]; print(h["ok"], h["failed"])'; }
settle() { # wait (up to 15 s) until fds are back to $1
	local i
	for ((i = 0; i < 150; i++)); do
		(($(fds) <= $1)) && return 0
		sleep 0.1
	done
}
PEAK_FILE=$WORK/peak
sampler() { # records the max fds and RSS until killed
	local mf=0 mr=0 f r
	while kill -0 "$KG_PID" 2>/dev/null; do
		f=$(fds) r=$(rss)
		((f > mf)) && mf=$f
		((r > mr)) && mr=$r
		echo "$mf $mr" >"$PEAK_FILE"
		sleep 0.5
	done
}
json_get() { /usr/bin/python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }

fail=0
check() { # condition message
	if ! eval "$1"; then log "FAIL: $2"; fail=1; fi
}

# ---- 1. churn ------------------------------------------------------------------
BASE_FDS=$(fds)
if ((TOTAL > 0)); then
	log "kgated pid $KG_PID port $PORT; warm-up $WARMUP connections (fills the session cache)"
	"${CHURN[@]}" churn --port "$PORT" "${TLS[@]}" --total "$WARMUP" --procs 4 >"$WORK/warmup.json"
	sleep 2 # connections of the warm-up finish closing
	BASE_FDS=$(fds) BASE_RSS=$(rss)
	read -r HS_OK0 HS_FAIL0 < <(hs)
	sampler &
	SAMPLER=$!
	PIDS+=("$SAMPLER")
	log "$TOTAL connections"
	RES=$("${CHURN[@]}" churn --port "$PORT" "${TLS[@]}" --total "$TOTAL" --procs 4)
	stop_pid "$SAMPLER" 1
	read -r PEAK_FDS PEAK_RSS <"$PEAK_FILE"
	settle "$BASE_FDS" || true
	END_FDS=$(fds) END_RSS=$(rss)
	read -r HS_OK1 HS_FAIL1 < <(hs)
	OK=$(json_get "$RES" ok) FAILED=$(json_get "$RES" failed) SECS=$(json_get "$RES" seconds)
	RATE=$(/usr/bin/python3 -c "print(round($OK / $SECS))")
	echo "churn: $OK of $TOTAL connections ok, $FAILED failed, in $SECS s ($RATE handshakes/s, 4 client processes)"
	echo "churn: kgated handshakes ok $((HS_OK1 - HS_OK0)), failed $((HS_FAIL1 - HS_FAIL0))"
	echo "churn: kgated fds before $BASE_FDS, peak $PEAK_FDS, after $END_FDS"
	echo "churn: kgated RSS KiB before $BASE_RSS, peak $PEAK_RSS, after $END_RSS"
	check "((OK == TOTAL && FAILED == 0))" "client failures: $(json_get "$RES" errors)"
	check "((HS_OK1 - HS_OK0 == OK))" "kgated counted $((HS_OK1 - HS_OK0)) handshakes for $OK clients"
	check "((HS_FAIL1 - HS_FAIL0 == 0))" "kgated counted failed handshakes"
	check "((END_FDS <= BASE_FDS))" "fds $END_FDS after, $BASE_FDS before"
	check "((END_RSS <= BASE_RSS + BASE_RSS / 10 + 8192))" "RSS $END_RSS KiB after, $BASE_RSS before"
fi

# ---- 2. idle ---------------------------------------------------------------------
IDLE_BASE_RSS=$(rss)
AFTER=()
for round in 1 2; do
	sampler &
	SAMPLER=$!
	PIDS+=("$SAMPLER")
	RES=$("${CHURN[@]}" idle --port "$PORT" "${TLS[@]}" --count "$IDLE" --procs 4 \
		--hold $((IDLE_MS / 1000 + 60)))
	stop_pid "$SAMPLER" 1
	read -r PEAK_FDS PEAK_RSS <"$PEAK_FILE"
	settle "$BASE_FDS" || true
	END_FDS=$(fds)
	for _ in $(seq 100); do # the last trim comes at most 5 s after the wave
		END_RSS=$(rss)
		((END_RSS <= (IDLE_BASE_RSS + PEAK_RSS) / 2)) && break
		sleep 0.1
	done
	AFTER+=("$END_RSS")
	CLOSED=$(json_get "$RES" closed) MIN=$(json_get "$RES" min_s) MAX=$(json_get "$RES" max_s)
	echo "idle round $round: $CLOSED of $IDLE closed $MIN-$MAX s after going idle (timeout $((IDLE_MS / 1000)) s); fds peak $PEAK_FDS, after $END_FDS; RSS KiB before $IDLE_BASE_RSS, peak $PEAK_RSS, after $END_RSS"
	check "((CLOSED == IDLE))" "round $round: $((IDLE - CLOSED)) idle connections never closed"
	check "((PEAK_FDS >= BASE_FDS + 2 * IDLE))" "round $round: never held all $IDLE at once"
	check "/usr/bin/python3 -c 'import sys; sys.exit(not ($MIN >= $IDLE_MS / 1000 - 0.2 and $MAX <= $IDLE_MS / 1000 + 15))'" \
		"round $round: closed $MIN-$MAX s after going idle, timeout $((IDLE_MS / 1000)) s"
	check "((END_FDS <= BASE_FDS))" "round $round: fds $END_FDS after, $BASE_FDS before"
	check "((END_RSS <= (IDLE_BASE_RSS + PEAK_RSS) / 2))" \
		"round $round: RSS $END_RSS KiB after, peak $PEAK_RSS, $IDLE_BASE_RSS before the rounds"
done
check "((AFTER[1] <= AFTER[0] + 8192))" "RSS ${AFTER[1]} KiB after idle round 2, ${AFTER[0]} after round 1"

kill -TERM "$KG_PID"
rc=0
wait "$KG_PID" || rc=$?
check "((rc == 0))" "kgated exited $rc on SIGTERM"
grep -E "worker [0-9]+: stopped" "$WORK/kgated.log" || true
((fail == 0)) && echo "churn: PASS"
exit "$fail"
