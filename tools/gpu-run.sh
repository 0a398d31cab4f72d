#!/usr/bin/env bash
# Everything that needs a GPU, in one command for the GPU machine (see the device tool's notes):
# configure and build with the unpacked .devdeps, then, most wanted first, test_gpu, the headline
# (FLUX.1-dev on a 12 GB card), the core tests over the CUDA backend (core_on_cuda), the GPU
# benchmarks, the whole test suite, test_gpu and test_model_based under compute-sanitizer, and
# leave the logs in /tmp/vc-gpu-logs, packed into $OUT/gpu-logs.tgz after every step (the device
# tool brings back at most 8 files, and only what is in $OUT when a command is stopped).
#   usage (on the GPU machine, from the project root):  bash tools/gpu-run.sh [all | tests bench headline nsys ...]
# Every step has its own time limit, so one hang cannot eat the whole lease, and the script stops
# starting steps at VC_GPU_DEADLINE seconds (default 560: the device tool stops a command at 600):
# the steps it skipped are listed in steps.txt; name them in a second call (the build is reused
# while the machine stays warm).
set -uo pipefail
out=${OUT:-gpu-results}
logs=/tmp/vc-gpu-logs
rm -rf "$logs"; mkdir -p "$logs" "$out"
what=" ${*:-all} "
want() { [[ $what == *" all "* || $what == *" $1 "* ]]; }
if [ -d .devdeps/root/usr ]; then
  P=$PWD/.devdeps/root/usr
  export CMAKE_PREFIX_PATH=$P PKG_CONFIG_PATH=$P/lib/x86_64-linux-gnu/pkgconfig
  export LD_LIBRARY_PATH=$P/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
fi
deadline=${VC_GPU_DEADLINE:-560}
pack() { tar -czf "$out/gpu-logs.tgz" -C /tmp vc-gpu-logs; cp "$logs/steps.txt" "$logs/gpu.txt" "$out/" 2>/dev/null; }
step() { # step NAME SECONDS COMMAND...: run with a limit, log to $logs/NAME.txt, note the status
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS left=$((deadline - SECONDS))
  if [ "$left" -le 10 ]; then
    echo "$name skipped: past VC_GPU_DEADLINE (${deadline}s)" | tee -a "$logs/steps.txt"
    return 124
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  timeout -k 5 "$limit" "$@" > "$logs/$name.txt" 2>&1
  local rc=$?
  echo "$name rc=$rc ${SECONDS}s-total $((SECONDS - t0))s" | tee -a "$logs/steps.txt"
  pack
  return $rc
}
{ nvidia-smi --query-gpu=name,driver_version,memory.total,pcie.link.gen.current,pcie.link.width.current \
    --format=csv,noheader; nvcc --version | tail -2; nproc; date -u; } > "$logs/gpu.txt" 2>&1
step configure 120 cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=Release -DVC_BUILD_HIP=OFF
step build 300 cmake --build build-gpu -j"$(nproc)" || { tail -40 "$logs/build.txt"; }
export VRAMCACHE_BACKEND_DIR=$PWD/build-gpu
step test_gpu 120 ./build-gpu/tests/test_gpu
if want bench || want headline; then
  # the headline: FLUX.1-dev on a 12 GB card (the device capped, 3 GB working memory, dynamic budget)
  step bench_gpu_denoiser 240 ./build-gpu/bench/bench_gpu_denoiser --card-gb 12 --working-gb 3 --json
fi
# the core tests again on the GPU
want tests && step core_on_cuda 300 ctest --test-dir build-gpu --output-on-failure -R core_on_cuda -V
if want bench; then
  step bench_gpu 300 ./build-gpu/bench/bench_gpu --budget-gb 8 --uvm
  # the smaller denoisers at half their bytes (SDXL's UNet 4.8 GiB, SD 1.5's 1.6 GiB)
  step denoiser_sdxl 120 ./build-gpu/bench/bench_gpu_denoiser --workload workloads/sdxl.yaml --budget-gb 2.4 --json
  step denoiser_sd15 120 ./build-gpu/bench/bench_gpu_denoiser --workload workloads/sd15.yaml --budget-gb 0.8 --json
  # the cache measuring the streaming region's room (VC_STREAM_SLOTS_TUNE, session 17): SD 1.5 at
  # three quarters of its bytes, where the simulator has it 1.215 -> 1.093 x the time bound
  step denoiser_sd15_tuned 180 ./build-gpu/bench/bench_gpu_denoiser --workload workloads/sd15.yaml --budget-gb 1.2 \
    --steps 20 --json
  step denoiser_sd15_tuned_tune 180 ./build-gpu/bench/bench_gpu_denoiser --workload workloads/sd15.yaml \
    --budget-gb 1.2 --steps 20 --stream-slots tune --json
  # two models every step (a step group, session 5): SD 1.5's ControlNet and UNet at half their bytes
  step denoiser_sd15_controlnet 120 ./build-gpu/bench/bench_gpu_denoiser --workload workloads/sd15-controlnet.yaml \
    --budget-gb 1.14 --json
  # the same with guidance as two UNet passes (a model twice per step, session 6)
  step denoiser_sd15_seqcfg 120 ./build-gpu/bench/bench_gpu_denoiser --workload workloads/sd15-controlnet-seqcfg.yaml \
    --budget-gb 1.14 --json
  # two denoisers in turn, images in a row (session 9): SDXL base then its refiner, 5 GB for weights
  # (each UNet fits, not both: planned apart, each loads once per image)
  step denoiser_sdxl_refiner 240 ./build-gpu/bench/bench_gpu_denoiser --workload workloads/sdxl-refiner-images.yaml \
    --budget-gb 5 --steps 4 --json
  # images in a row whose text encoder's embedding streams outside the cycle's region (session 10):
  # SD 1.5 + ControlNet at 8 LCM steps, 2 GB for weights (a 5 GB card)
  step denoiser_lcm_images 240 ./build-gpu/bench/bench_gpu_denoiser \
    --workload workloads/sd15-controlnet-lcm-images.yaml --budget-gb 2 --steps 8 --json
fi
if want tests; then
  # the whole suite (the simulator's and the host's tests, which CI runs too)
  step ctest 300 ctest --test-dir build-gpu --output-on-failure -j8 -E core_on_cuda
  if command -v compute-sanitizer > /dev/null; then
    step sanitizer_test_gpu 300 compute-sanitizer --tool memcheck ./build-gpu/tests/test_gpu
    VC_TEST_BACKEND=cuda step sanitizer_model_based 300 compute-sanitizer --tool memcheck \
      ./build-gpu/tests/test_model_based
  fi
fi
if want nsys; then
  # Nsight Systems, where the image has it: the NVTX ranges (uploads, evictions, reservations) and
  # which CUDA calls the streamed denoiser makes (no device- or stream-wide synchronisation)
  if command -v nsys > /dev/null; then
    step nsys_profile 240 nsys profile -o /tmp/vc-nsys --force-overwrite true --trace cuda,nvtx \
      ./build-gpu/bench/bench_gpu_denoiser --workload workloads/sdxl.yaml --budget-gb 2.4 --steps 4
    step nsys_stats 120 nsys stats --report nvtx_sum,cuda_api_sum --format csv /tmp/vc-nsys.nsys-rep
  fi
  # Without nsys too: the NVTX counter tool receives the ranges as a profiler would
  export NVTX_INJECTION64_PATH=$PWD/build-gpu/tools/libvc_nvtx_counter.so
  step nvtx_denoiser 120 ./build-gpu/bench/bench_gpu_denoiser --workload workloads/sdxl.yaml --budget-gb 2.4 --steps 4
  step nvtx_test_gpu 120 ./build-gpu/tests/test_gpu
  unset NVTX_INJECTION64_PATH
fi
[ -n "${VC_GPU_HOTPATH:-}" ] && step bench_hotpath 120 ./build-gpu/bench/bench_hotpath
pack
cat "$logs/gpu.txt" "$logs/steps.txt"
for f in test_gpu core_on_cuda bench_gpu bench_gpu_denoiser denoiser_sdxl denoiser_sd15 denoiser_sd15_controlnet denoiser_sd15_seqcfg denoiser_sdxl_refiner denoiser_lcm_images nsys_stats; do [ -f "$logs/$f.txt" ] && { echo "== $f"; tail -25 "$logs/$f.txt"; }; done
grep -h "^nvtx:" "$logs"/nvtx_*.txt 2>/dev/null || true
grep -h -E "FAILED|ERROR SUMMARY|tests passed" "$logs"/ctest.txt "$logs"/core_on_cuda.txt "$logs"/sanitizer_*.txt 2>/dev/null | sort | uniq -c || true
