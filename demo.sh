#!/usr/bin/env bash
# The origin guide's walk-through, on this machine: a private CA, a server
# and a client certificate from kgatectl, two backends, kgated started with
# an empty state folder and set up live through kgatectl (upload the
# certificates, create an https listener — mutual TLS, HTTP-aware — on
# 127.0.0.1 with HTTP health checks, add a backend), health checks that mark
# both backends healthy, requests on ONE keep-alive connection that
# alternate between the backends (as a browser's refreshes do), the
# client's identity as the backends see it, a stopped backend leaving the
# rotation, and a request without a client certificate being refused.
# Installs missing Debian packages first (as root). Leaves nothing running;
# KG_DEMO_STAY=1 (with KG_DEMO_PORT=8443, say) keeps kgated up after step 9
# so you can open the page in a browser with alice.p12 imported.
set -euo pipefail
cd "$(dirname "$0")"
root=$PWD
tests/install-deps.sh demo
build=${KG_DEMO_BUILD_DIR:-build-demo}
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKG_BUILD_TESTS=OFF >/dev/null
cmake --build "$build" -j"$(nproc)" --target kgated kgatectl >/dev/null
kgatectl=$root/$build/ctl/kgatectl
kgated=$root/$build/dataplane/kgated

work=$(mktemp -d /tmp/kgate-demo.XXXXXX)
# kgated runs as "nobody" (below) and must reach its state folder in here;
# private keys stay 0600 to root, kgatectl uploads them over the socket.
chmod 0755 "$work"
pids=()
cleanup() {
	for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
	for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
	rm -rf "$work"
}
trap cleanup EXIT
step() { printf '\n== %s\n' "$*"; }

step "1. a private CA (EC P-256, SHA-256)"
subj='/C=CN/ST=Zhejiang/L=Hangzhou/O=Example/OU=Edge'
"$kgatectl" ca init --dir "$work/ca" --subject "$subj/CN=Example Root CA"
step "2. a server certificate for 127.0.0.1 and a client certificate (+ PKCS#12 for browsers)"
"$kgatectl" ca issue --dir "$work/ca" --type server --subject "$subj/CN=localhost" \
	--san DNS:localhost,IP:127.0.0.1 --out "$work/server"
printf 'demo-p12-pass\n' >"$work/p12.pass"
"$kgatectl" ca issue --dir "$work/ca" --type client --subject "$subj/CN=alice" \
	--out "$work/alice" --p12 "$work/alice.p12" --p12-pass-file "$work/p12.pass"
"$kgatectl" ca crl --dir "$work/ca" --out "$work/ca.crl"
"$kgatectl" ca list --dir "$work/ca"
openssl verify -CAfile "$work/ca/ca.pem" "$work/server.pem" "$work/alice.pem"

step "3. two backends"
declare -A ports
for name in backend-1 backend-2; do
	coproc BACKEND { exec /usr/bin/python3 "$root/tests/tools/http_backend.py" --name "$name"; }
	pids+=("$BACKEND_PID")
	read -r line <&"${BACKEND[0]}"
	ports[$name]=${line##* }
	echo "$name on 127.0.0.1:${ports[$name]}"
done

step "4. kgated with an empty state folder; the console workflow through kgatectl"
# As root, kgated switches to an unprivileged user once its listeners are
# bound (the package creates "kgate"; every Debian has "nobody").
user_args=()
[ "$(id -u)" -eq 0 ] && user_args=(--user nobody)
"$kgated" --state-dir "$work/state" --workers 1 "${user_args[@]}" 2>"$work/kgated.log" &
pids+=($!)
for _ in $(seq 100); do grep -q " event=kgated.ready " "$work/kgated.log" && break; sleep 0.1; done
grep -q " event=kgated.ready " "$work/kgated.log" || { cat "$work/kgated.log"; echo "kgated did not start" >&2; exit 1; }
export KGATE_SOCKET=$work/state/control.sock
"$kgatectl" cert upload --name web --type server --cert "$work/server.pem" --key "$work/server.key" >/dev/null
"$kgatectl" cert upload --name clients --type ca --cert "$work/ca/ca.pem" --crl "$work/ca.crl" >/dev/null
"$kgatectl" cert list
"$kgatectl" listener create --name web --protocol https --bind 127.0.0.1 --port "${KG_DEMO_PORT:-0}" \
	--cert web --mutual-auth required --ca clients --scheduler rr \
	--health-check '{"type": "http", "path": "/", "expected_status": "2xx", "interval_ms": 500,
	                 "timeout_ms": 1000, "healthy_threshold": 2, "unhealthy_threshold": 2}' \
	--http '{"access_log": "on"}' \
	--backend "127.0.0.1:${ports[backend-1]}" >/dev/null
"$kgatectl" backend add web "127.0.0.1:${ports[backend-2]}"
"$kgatectl" listener show web
port=$("$kgatectl" -o json listener show web | /usr/bin/python3 -c \
	'import json, sys; print(json.load(sys.stdin)["address"].rsplit(":", 1)[1])')

step "5. health status: wait until both backends are healthy"
for _ in $(seq 100); do
	[ "$(grep -c -- ' event=backend.health_changed .* to=healthy ' "$work/kgated.log")" -ge 2 ] && break
	sleep 0.1
done
grep -- ' event=backend.health_changed .* to=healthy ' "$work/kgated.log" ||
	{ cat "$work/kgated.log"; echo "backends not healthy" >&2; exit 1; }
for name in backend-1 backend-2; do
	grep -q " event=backend.health_changed .* backend=127.0.0.1:${ports[$name]} from=unknown to=healthy " \
		"$work/kgated.log" ||
		{ echo "$name is not healthy" >&2; exit 1; }
	echo "$name (127.0.0.1:${ports[$name]}): health status normal"
done

step "6. six requests on ONE keep-alive connection with alice's certificate: backends alternate"
urls=()
for i in 1 2 3 4 5 6; do urls+=("https://127.0.0.1:$port/page$i"); done
curl -sS --cacert "$work/ca/ca.pem" --cert "$work/alice.pem" --key "$work/alice.key" \
	-w '   (new TLS connections for this request: %{num_connects})\n' "${urls[@]}"
echo "kgated's access log for them:"
grep ' event=http.access ' "$work/kgated.log" | sed 's/^/  /'
echo "what a backend receives (identity headers set by kgated, client copies removed):"
curl -sS --cacert "$work/ca/ca.pem" --cert "$work/alice.pem" --key "$work/alice.key" \
	-H 'X-Forwarded-Clientcert-subjectdn: CN=mallory' "https://127.0.0.1:$port/spoof"
printf 'with the PKCS#12 bundle -> '
curl -sS --cacert "$work/ca/ca.pem" --cert-type P12 --cert "$work/alice.p12:demo-p12-pass" \
	"https://127.0.0.1:$port/"

step "7. backend-2 stops: its checks fail and it leaves the rotation"
kill "${pids[1]}"
wait "${pids[1]}" 2>/dev/null || true
for _ in $(seq 100); do grep -q -- ' to=unhealthy ' "$work/kgated.log" && break; sleep 0.1; done
grep -- ' to=unhealthy ' "$work/kgated.log" || { echo "backend-2 never marked unhealthy" >&2; exit 1; }
for i in 1 2 3 4; do
	printf 'request %d -> ' "$i"
	curl -sS --cacert "$work/ca/ca.pem" --cert "$work/alice.pem" --key "$work/alice.key" \
		"https://127.0.0.1:$port/"
done

step "8. a request without a client certificate is refused"
if out=$(curl -sS --cacert "$work/ca/ca.pem" "https://127.0.0.1:$port/" 2>&1); then
	echo "UNEXPECTED: served without a client certificate: $out" >&2
	exit 1
fi
echo "refused: $out"
sleep 0.2
grep " event=tls.handshake_failed " "$work/kgated.log" | tail -1

step "9. status and counters"
"$kgatectl" status | grep -E '^(version|workers|listeners|connections\.total|kernel\.ktls):'
"$kgatectl" stats --listener web | grep -E '^listeners'

if [ -n "${KG_DEMO_STAY:-}" ]; then
	step "browser: import $work/alice.p12 (password demo-p12-pass) and $work/ca/ca.pem as a CA,"
	echo "open https://127.0.0.1:$port/ and refresh: backend-1 and backend-2 alternate."
	read -r -p "press Enter to stop " _
fi

step "10. stop: SIGTERM drains and exits 0"
kill -TERM "${pids[2]}"
wait "${pids[2]}" && echo "kgated exited 0"
tail -2 "$work/kgated.log"
