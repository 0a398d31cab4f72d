#!/usr/bin/env bash
# Installs the Debian packages libvramcache's build, tests and tools need, when they are missing.
# libamdhip64-dev lets the HIP backend compile; the CUDA backend uses the toolkit in /usr/local/cuda
# when present (neither needs a GPU to build).
# Sourced by tools/demo.sh and tools/test.sh; safe to run again.
set -euo pipefail
need=()
for p in cmake make gcc g++ clang libc6-dev libcmocka-dev libyaml-dev pkg-config libamdhip64-dev; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
# The test run (VC_DEPS_SANITIZERS=1) also needs the sanitizers' runtimes for clang (LeakSanitizer,
# ThreadSanitizer), which come with clang's compiler-rt, and python3-yaml for tools/ring_model.py.
if [ "${VC_DEPS_SANITIZERS:-0}" = 1 ]; then
  for p in python3 python3-yaml; do
    dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
  done
  v=$(clang --version 2>/dev/null | sed -n 's/.*clang version \([0-9]*\).*/\1/p' | head -1)
  if [ -n "$v" ] && ! dpkg -s "libclang-rt-$v-dev" >/dev/null 2>&1 && apt-cache show "libclang-rt-$v-dev" >/dev/null 2>&1; then
    need+=("libclang-rt-$v-dev")
  fi
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO=sudo
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
