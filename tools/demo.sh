#!/usr/bin/env bash
# Builds libvramcache and runs the diffusion-style demo (examples/diffusion_demo.c).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)" --target diffusion_demo vramcache_cli
./build/examples/diffusion_demo "$@"
