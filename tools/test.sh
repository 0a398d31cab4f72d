#!/usr/bin/env bash
# Builds libvramcache with warnings as errors under gcc and clang and runs every test: the whole
# suite with each compiler, again under AddressSanitizer + UndefinedBehaviorSanitizer (with
# LeakSanitizer, and VC_CHECK_INTERNALS: the scheduler's indexes checked against plain walks at
# every use), and the concurrency tests (and the core suite on the fake CUDA runtime) under
# ThreadSanitizer. This is what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
VC_DEPS_SANITIZERS=1 bash tools/deps.sh
jobs=$(nproc)
mkdir -p build-test
summary=build-test/summary.log
: > "$summary"
run_suite() { # name, ctest filter, cmake args...
  local name=$1 filter=$2
  shift 2
  echo "=== $name ==="
  cmake -S . -B "build-test/$name" -DVC_WERROR=ON -DCMAKE_BUILD_TYPE=Debug "$@" >/dev/null
  cmake --build "build-test/$name" -j"$jobs" >/dev/null
  (cd "build-test/$name" && ctest --output-on-failure -j"$jobs" ${filter:+-R "$filter"}) | tee -a "$summary"
}
run_suite gcc "" -DCMAKE_C_COMPILER=gcc -DCMAKE_BUILD_TYPE=RelWithDebInfo
# What was skipped and why (GPU-only cases on a machine without a GPU).
grep -h "^SKIPPED" build-test/gcc/Testing/Temporary/LastTest.log | sort -u || true
# Both GPU backends must compile wherever their toolkits are (no GPU needed to build them).
test -f build-test/gcc/libvramcache-hip.so || { echo "the HIP backend was not built" >&2; exit 1; }
if [ -d /usr/local/cuda ]; then
  test -f build-test/gcc/libvramcache-cuda.so || { echo "the CUDA backend was not built" >&2; exit 1; }
fi
echo "=== install, then use it from outside: find_package (shared, static, C++), pkg-config ==="
pfx=$PWD/build-test/prefix
rm -rf "$pfx" build-test/consumer
cmake --install build-test/gcc --prefix "$pfx" >/dev/null
cmake -S tests/consumer -B build-test/consumer -DCMAKE_PREFIX_PATH="$pfx" >/dev/null
cmake --build build-test/consumer -j"$jobs" >/dev/null
for exe in consumer_shared consumer_static consumer_cxx; do ./build-test/consumer/$exe; done
export PKG_CONFIG_PATH=$(dirname "$(ls "$pfx"/lib*/pkgconfig/vramcache.pc "$pfx"/lib/*/pkgconfig/vramcache.pc 2>/dev/null | head -1)")
gcc -Wall -Werror tests/consumer/consumer.c $(pkg-config --cflags --libs vramcache) -o build-test/consumer/pc_shared
LD_LIBRARY_PATH=$(pkg-config --variable=libdir vramcache) ./build-test/consumer/pc_shared
gcc -Wall -Werror -static tests/consumer/consumer.c $(pkg-config --static --cflags --libs vramcache) -o build-test/consumer/pc_static
./build-test/consumer/pc_static
unset PKG_CONFIG_PATH
run_suite clang-asan-ubsan "" -DCMAKE_C_COMPILER=clang -DVC_SANITIZE=address,undefined -DVC_CHECK_INTERNALS=ON
TSAN_OPTIONS=halt_on_error=1 run_suite clang-tsan "test_threads|test_shared|test_schedule|test_plan|test_step_group|test_slot_tuner|test_keep_alive|test_safetensors|core_on_fake_cuda$" -DCMAKE_C_COMPILER=clang -DVC_SANITIZE=thread
if command -v python3 >/dev/null; then
  echo "=== workloads match their generator ==="
  python3 tools/gen_workloads.py --check
  echo "=== tools/ring_model.py still models the streaming region (SD 1.5, 75%, 25 GB/s) ==="
  # about bench_streaming's cell: 1 GB of working memory, weights 75% of the UNet's 1.6 GB
  printf 'device_working_mem_gb: 1\noffload_max_gpu_memory: 1\noffload_mode: balanced\n' > build-test/ring_cfg.yaml
  ./build-test/gcc/tools/vramcache simulate --workload workloads/sd15.yaml --vram-gb 2.2 --bandwidth-gbps 25 \
    --steps 8 --config build-test/ring_cfg.yaml --trace build-test/ring_trace.json --json > build-test/ring_sim.json
  python3 tools/ring_model.py workloads/sd15.yaml --trace build-test/ring_trace.json --compare build-test/ring_sim.json
fi
echo "=== fuzzers (bounded time each, ASan + UBSan) ==="
cmake -S . -B build-test/fuzz -DCMAKE_C_COMPILER=clang -DVC_SANITIZE=address,undefined -DVC_CHECK_INTERNALS=ON -DVC_BUILD_FUZZERS=ON \
  -DVC_BUILD_TESTS=OFF -DVC_BUILD_EXAMPLES=OFF -DVC_BUILD_BENCH=OFF -DVC_BUILD_TOOLS=OFF -DVC_WERROR=ON >/dev/null
cmake --build build-test/fuzz -j"$jobs" >/dev/null
fuzz_seconds=${VC_FUZZ_SECONDS:-30}
for f in config api workload safetensors; do
  work=$(mktemp -d)
  cp tests/fuzz/corpus_$f/* "$work"/
  # -timeout catches a hang; a unit may legitimately take ~25 s here (fuzz_api with thousands of
  # copies in flight, each checked by the simulator's hazard sampling under ASan and coverage)
  ./build-test/fuzz/tests/fuzz/fuzz_$f -max_total_time="$fuzz_seconds" -timeout=90 -max_len=4096 -print_final_stats=0 \
    "$work" 2>&1 | tail -n 3
  rm -rf "$work"
done
echo "=== all suites passed ==="
# One closing line for every suite together: ctest's "N% tests passed, F tests failed out of T".
awk '/tests passed, .* tests failed out of/ {t += $NF; f += $4} / \(Skipped\)$/ {s++}
     END {printf "tests: %d passed, %d skipped, %d failed\n", t - f - s, s, f}' "$summary"
