#!/usr/bin/env bash
# Everything that needs a GPU, in one command for the GPU machine (see the device tool's notes):
# configure and build with the unpacked .devdeps, run the whole test suite (test_gpu runs its GPU
# cases there), the GPU benchmark and the CPU-side benchmarks, and copy the results into $OUT.
#   usage (on the GPU machine, from the project root):  bash tools/gpu-run.sh
set -uo pipefail
out=${OUT:-gpu-results}
mkdir -p "$out"
if [ -d .devdeps/root/usr ]; then
  P=$PWD/.devdeps/root/usr
  export CMAKE_PREFIX_PATH=$P PKG_CONFIG_PATH=$P/lib/x86_64-linux-gnu/pkgconfig
  export LD_LIBRARY_PATH=$P/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
fi
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true; } > "$out/gpu.txt" 2>&1
cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=Release -DVC_BUILD_HIP=OFF > "$out/configure.log" 2>&1
cmake --build build-gpu -j"$(nproc)" > "$out/build.log" 2>&1 || { tail -50 "$out/build.log"; exit 1; }
(cd build-gpu && VRAMCACHE_BACKEND_DIR=$PWD ctest --output-on-failure -j4) > "$out/ctest.log" 2>&1
(cd build-gpu && VRAMCACHE_BACKEND_DIR=$PWD ./tests/test_gpu) > "$out/test_gpu.log" 2>&1
./build-gpu/bench/bench_gpu --budget-gb 8 > "$out/bench_gpu.txt" 2>&1
./build-gpu/bench/bench_gpu --budget-gb 8 --json > "$out/bench_gpu.json" 2>&1
./build-gpu/bench/bench_gpu_denoiser --budget-gb 9 > "$out/bench_gpu_denoiser.txt" 2>&1
./build-gpu/bench/bench_gpu_denoiser --budget-gb 9 --json > "$out/bench_gpu_denoiser.json" 2>&1
./build-gpu/bench/bench_hotpath > "$out/bench_hotpath.txt" 2>&1
cat "$out/gpu.txt" "$out/bench_gpu.txt" "$out/bench_gpu_denoiser.txt"; tail -5 "$out/ctest.log"; tail -12 "$out/test_gpu.log"
