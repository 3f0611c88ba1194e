#!/usr/bin/env bash
# CI lane: builds the libFuzzer harnesses with clang (ASan+UBSan) and runs
# each for a bounded time, starting from its committed corpus (crash
# reproducers included). Fails on any crash, leak, sanitizer report or
# timeout. New inputs go to a temp folder, never into the repository.
#   tests/fuzz/run-short.sh [seconds-per-harness (default 30)] [harness...]
# KG_FUZZ_RUNS=N also stops a harness after N executions (the long runs of
# tests/HARDENING.md: KG_FUZZ_RUNS=10000000 tests/fuzz/run-short.sh 3600 certs).
# Prints one line per harness: runs, exec/s, coverage, corpus size. Runs
# nproc harnesses at once.
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-30}
shift || true
tests/install-deps.sh fuzz
build=${KG_FUZZ_BUILD_DIR:-build-fuzz}
CC=clang cmake -S . -B "$build" -DKG_FUZZ=ON -DCMAKE_BUILD_TYPE=Debug >/dev/null
cmake --build "$build" -j"$(nproc)" --target fuzz >/dev/null
if (($# == 0)); then
	mapfile -t names < <(sed -n 's/^set(KG_FUZZERS \(.*\))$/\1/p' tests/fuzz/CMakeLists.txt | tr ' ' '\n')
else
	names=("$@")
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:halt_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
# One harness: its summary line on stdout, a crash's report and reproducer
# on stderr, and $work/NAME.failed when it failed.
fuzz_one() {
	local name=$1 bin opts extra log status runs rate cov ft corp
	bin="$build/tests/fuzz/fuzz_$name"
	opts=()
	if [ -n "${KG_FUZZ_RUNS:-}" ]; then
		opts+=("-runs=$KG_FUZZ_RUNS")
	fi
	# fuzz_<name>.options: extra libFuzzer flags for one harness (dict, max_len).
	if [ -f "tests/fuzz/fuzz_$name.options" ]; then
		read -ra extra < "tests/fuzz/fuzz_$name.options"
		opts+=("${extra[@]}")
	fi
	mkdir -p "$work/$name"
	log="$work/$name.log"
	if (cd tests/fuzz && "../../$bin" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
		-print_final_stats=1 -artifact_prefix="$work/$name-" "${opts[@]}" \
		"$work/$name" "corpus/$name") >"$log" 2>&1; then
		status=ok
	else
		status=FAILED
	fi
	# A crashed run may lack any of these: never let a missing one end the script.
	runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
	rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
	cov=$( (grep -o 'cov: [0-9]*' "$log" || true) | tail -1 | cut -d' ' -f2)
	ft=$( (grep -o 'ft: [0-9]*' "$log" || true) | tail -1 | cut -d' ' -f2)
	corp=$( (grep -o 'corp: [0-9]*' "$log" || true) | tail -1 | cut -d' ' -f2)
	printf 'fuzz %-11s %-6s runs %-10s exec/s %-7s cov %-6s ft %-6s corpus %s\n' \
		"$name" "$status" "${runs:-?}" "${rate:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}"
	[ "$status" = ok ] || echo "$name" >"$work/$name.failed"
	if [ "$status" != ok ]; then
		grep -E 'ERROR|SUMMARY|Test unit written|==[0-9]+==|: ' "$log" | head -20 >&2 || true
		ls "$work/$name"-* 2>/dev/null | while read -r a; do
			echo "reproducer: $a (base64: $(base64 -w0 "$a" | head -c 2000))" >&2
		done || true
	fi
}

# As many harnesses at once as there are cores (each is single-threaded):
# the same seconds each, in half the wall time on CI's two cores. A
# harness's lines are printed when it ends, so they never interleave.
jobs=$(nproc)
running=0
for name in "${names[@]}"; do
	if ((running >= jobs)); then
		wait -n || true
		running=$((running - 1))
	fi
	(
		fuzz_one "$name" >"$work/$name.out" 2>"$work/$name.err" || echo "$name" >"$work/$name.failed"
		cat "$work/$name.out"
		cat "$work/$name.err" >&2
	) &
	running=$((running + 1))
done
wait
failed=()
for name in "${names[@]}"; do
	if [ -f "$work/$name.failed" ]; then
		failed+=("$name")
	fi
done
if ((${#failed[@]} > 0)); then
	echo "fuzz: FAILED: ${failed[*]}" >&2
	exit 1
fi
