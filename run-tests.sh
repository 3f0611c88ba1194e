#!/usr/bin/env bash
# Builds kgate with AddressSanitizer + UndefinedBehaviorSanitizer and runs
# every test (Criterion unit suites and the integration suites that start
# real processes), ending with ctest's summary. Installs missing Debian
# packages first (as root). --fresh (first argument) runs the tests with
# the kgate user and group hidden, as on a fresh machine (tests/fresh/run);
# other arguments go to ctest.
set -euo pipefail
cd "$(dirname "$0")"
fresh=()
if [[ ${1:-} == --fresh ]]; then
	fresh=("$PWD/tests/fresh/run")
	shift
fi
tests/install-deps.sh test
# Optimised builds see warnings (-Wmaybe-uninitialized) that -O1 sanitizer
# builds miss; -Werror makes both builds part of the test.
cmake -S . -B build-release -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build-release -j"$(nproc)"
build=${KG_TEST_BUILD_DIR:-build-asan}
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Asan >/dev/null
cmake --build "$build" -j"$(nproc)"
# halt_on_error: any sanitizer report fails the process, and so the test.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:halt_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
cd "$build"
"${fresh[@]}" ctest --output-on-failure -j1 "$@"
