#!/usr/bin/env bash
# Installs the Debian packages kgate needs, when missing. Usage:
#   tests/install-deps.sh build|test|demo|bench|vm|package|fuzz|fleet
# Idempotent; needs root (apt-get) only when something is missing.
set -euo pipefail

build=(gcc make cmake pkg-config libssl-dev liburing-dev libjson-c-dev libcap-dev scdoc
	clang llvm libbpf-dev bpftool linux-libc-dev node-llhttp libcurl4-openssl-dev libnghttp2-dev)
test=("${build[@]}" libcriterion-dev openssl curl python3 python3-pytest procps systemd man-db
	chromium libnss3-tools util-linux sslscan testssl.sh prometheus haproxy
	python3-cryptography gunicorn etcd-server etcd-client bird2
	python3-h2 python3-websockets python3-grpcio nghttp2-client)
demo=("${build[@]}" openssl curl python3)
bench=("${test[@]}" wrk nginx-light gnuplot-nox nghttp2-client libjemalloc-dev libmimalloc-dev
	valgrind) # valgrind: bench/ktls_insn.py (in the VM lane)
# The VM lane boots a Debian kernel under qemu with a busybox initramfs;
# the guest runs the host's own tools, so it needs the test group too.
vm=("${test[@]}" qemu-system-x86 busybox-static)
# tests/package/test_deb.py: cpack's dpkg-shlibdeps, systemd-analyze, setpriv;
# systemd-nspawn for its systemd stage where systemd is not PID 1.
package=("${build[@]}" dpkg-dev systemd util-linux curl python3 man-db systemd-container)
# libFuzzer harnesses: clang and its runtime (libFuzzer, ASan, UBSan).
fuzz=("${build[@]}" clang libclang-rt-14-dev)
# tests/fleet/run: network namespaces with BIRD 2 (router and instances),
# ip(8) and curl for packaging/kgate-anycast.
fleet=("${test[@]}" bird2 iproute2 curl)

case "${1:-test}" in
build) want=("${build[@]}") ;;
test) want=("${test[@]}") ;;
demo) want=("${demo[@]}") ;;
bench) want=("${bench[@]}") ;;
vm) want=("${vm[@]}") ;;
package) want=("${package[@]}") ;;
fuzz) want=("${fuzz[@]}") ;;
fleet) want=("${fleet[@]}") ;;
*) echo "usage: $0 build|test|demo|bench|vm|package|fuzz|fleet" >&2; exit 2 ;;
esac

missing=()
for p in "${want[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
((${#missing[@]} == 0)) && exit 0
if [ "$(id -u)" -ne 0 ]; then
	echo "install-deps: missing packages: ${missing[*]} (run as root or: sudo apt-get install ${missing[*]})" >&2
	exit 1
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
