# Shell helpers shared by the soak scripts (sourced; bash). soak_init sets
# up PIDS (processes stopped at exit), WORK (a temp folder, removed at exit
# unless KEEP=1) and log/die; the others use BACKEND (bench/http_backend)
# and KG_PID (kgated).

soak_init() { # name: the log prefix and the temp folder's name
	SOAK_NAME=$1
	PIDS=()
	WORK=$(mktemp -d "/tmp/kgate-$1.XXXXXX")
	trap soak_cleanup EXIT
	trap 'exit 130' INT TERM
}

log() { printf '%s: %s\n' "$SOAK_NAME" "$*" >&2; }
die() { log "FAIL: $*"; exit 1; }

soak_cleanup() {
	local pid
	for pid in "${PIDS[@]}"; do stop_pid "$pid" 3; done
	if ((${KEEP:-0})); then log "kept $WORK"; else rm -rf "$WORK"; fi
}

stop_pid() { # pid grace-seconds: SIGTERM, wait, then SIGKILL
	local pid=$1 i
	kill -0 "$pid" 2>/dev/null || return 0
	kill -TERM "$pid" 2>/dev/null || true
	for ((i = 0; i < ${2:-5} * 10; i++)); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
	wait "$pid" 2>/dev/null || true
}

wait_line() { # file regex seconds: until the regex shows in the file
	local i
	for ((i = 0; i < $3 * 10; i++)); do
		grep -qE "$2" "$1" 2>/dev/null && return 0
		sleep 0.1
	done
	return 1
}

start_backends() { # name...: one http_backend each, their ports in BPORTS
	local name
	BPORTS=()
	for name in "$@"; do
		"$BACKEND" --port 0 --name "$name" >"$WORK/backend-$name.log" 2>&1 &
		PIDS+=($!)
		wait_line "$WORK/backend-$name.log" "listening on" 5 || die "backend $name did not start"
		BPORTS+=("$(sed -n 's/.*listening on [^ ]*:\([0-9]*\).*/\1/p' "$WORK/backend-$name.log")")
	done
}

start_kgated() { # handshake-ms idle-ms [kgated args...]: a `tls` listener "web"
	# with mTLS required (PKI in $P) over the backends in BPORTS; sets
	# KG_PID and PORT.
	local hs_ms=$1 idle_ms=$2 user_args=()
	shift 2
	cat >"$WORK/kgated.json" <<JSON
{"settings": {"workers": 2, "drain_timeout_ms": 3000, "log_level": "notice"},
 "certificates": {"web": {"type": "server", "cert": "$P/server.pem", "key": "$P/server.key"},
                  "clients": {"type": "ca", "cert": "$P/ca/ca.pem", "crl": "$P/ca.crl"}},
 "listeners": [{"name": "web", "protocol": "tls", "bind": "127.0.0.1", "port": 0,
   "certificate": "web", "ca": "clients", "mutual_auth": "required",
   "handshake_timeout_ms": $hs_ms, "idle_timeout_ms": $idle_ms,
   "backends": [{"address": "127.0.0.1:${BPORTS[0]}"}, {"address": "127.0.0.1:${BPORTS[1]}"}]}]}
JSON
	# Started as root, kgated switches to --user (default kgate, which a
	# test machine may lack); the soak keeps root, as the integration
	# tests do.
	(($(id -u) == 0)) && user_args=(--user root)
	"$KGATED" --config "$WORK/kgated.json" "${user_args[@]}" "$@" >"$WORK/kgated.log" 2>&1 &
	KG_PID=$!
	PIDS+=("$KG_PID")
	wait_line "$WORK/kgated.log" " event=kgated.ready " 10 ||
		die "kgated not ready: $(tail -5 "$WORK/kgated.log")"
	PORT=$(sed -n 's/.* event=listener.listening listener=web addr=[^ ]*:\([0-9]*\)$/\1/p' \
		"$WORK/kgated.log")
}

fds() { ls "/proc/$KG_PID/fd" | wc -l; }
rss() { awk '/^VmRSS:/ {print $2}' "/proc/$KG_PID/status"; }
