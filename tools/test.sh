#!/usr/bin/env bash
# Builds libvramcache with warnings as errors under gcc and clang and runs every test: the whole
# suite with each compiler, again under AddressSanitizer + UndefinedBehaviorSanitizer (with
# LeakSanitizer), and the concurrency tests under ThreadSanitizer. This is what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
VC_DEPS_SANITIZERS=1 bash tools/deps.sh
jobs=$(nproc)
run_suite() { # name, ctest filter, cmake args...
  local name=$1 filter=$2
  shift 2
  echo "=== $name ==="
  cmake -S . -B "build-test/$name" -DVC_WERROR=ON -DCMAKE_BUILD_TYPE=Debug "$@" >/dev/null
  cmake --build "build-test/$name" -j"$jobs" >/dev/null
  (cd "build-test/$name" && ctest --output-on-failure -j"$jobs" ${filter:+-R "$filter"})
}
run_suite gcc "" -DCMAKE_C_COMPILER=gcc -DCMAKE_BUILD_TYPE=RelWithDebInfo
run_suite clang-asan-ubsan "" -DCMAKE_C_COMPILER=clang -DVC_SANITIZE=address,undefined
TSAN_OPTIONS=halt_on_error=1 run_suite clang-tsan "test_threads" -DCMAKE_C_COMPILER=clang -DVC_SANITIZE=thread
echo "=== all suites passed ==="
