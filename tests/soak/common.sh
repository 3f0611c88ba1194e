# Shell helpers shared by the soak scripts (sourced; bash). They use the
# caller's PIDS array (processes to stop at exit), WORK (temp folder),
# BACKEND (bench/http_backend) and KG_PID (kgated), and its die().

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

fds() { ls "/proc/$KG_PID/fd" | wc -l; }
rss() { awk '/^VmRSS:/ {print $2}' "/proc/$KG_PID/status"; }
