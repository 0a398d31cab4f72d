#!/bin/sh
# `vramcache workload` and `simulate`/`plan` on a .safetensors model file: a transformer of 12
# blocks (two bf16 matrices each) and an embedding, 1.5 GB, written as a sparse file (its header,
# then a hole), so the test needs neither the disk space nor Python.
# usage: safetensors_cli.sh VRAMCACHE_CLI
set -eu
cli=$1
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
f=$dir/model.safetensors

qkv=$((9216 * 3072 * 2)) mlp=$((12288 * 3072 * 2)) emb=$((1000 * 3072 * 2))
# names in the file's (sorted) order, as writers lay them out
header='{"__metadata__":{"format":"pt"}'
map='' # the weight_map of a sharded checkpoint: this file and a second one (below)
off=0
for b in 0 1 10 11 2 3 4 5 6 7 8 9; do
    header="$header,\"blocks.$b.attn.qkv.weight\":{\"dtype\":\"BF16\",\"shape\":[9216,3072],\"data_offsets\":[$off,$((off + qkv))]}"
    off=$((off + qkv))
    header="$header,\"blocks.$b.mlp.fc.weight\":{\"dtype\":\"BF16\",\"shape\":[12288,3072],\"data_offsets\":[$off,$((off + mlp))]}"
    off=$((off + mlp))
    map="$map\"blocks.$b.attn.qkv.weight\":\"model.safetensors\",\"blocks.$b.mlp.fc.weight\":\"model.safetensors\","
done
header="$header,\"embed.weight\":{\"dtype\":\"BF16\",\"shape\":[1000,3072],\"data_offsets\":[$off,$((off + emb))]}}"
off=$((off + emb))

# write_file PATH HEADER DATA_BYTES: the header's length (8 bytes, little-endian), the header, a hole
write_file() {
    len=${#2}
    printf "\\$(printf %o $((len % 256)))\\$(printf %o $((len / 256 % 256)))\\$(printf %o $((len / 65536)))\\0\\0\\0\\0\\0" > "$1"
    printf '%s' "$2" >> "$1"
    truncate -s $((8 + len + $3)) "$1"
}
write_file "$f" "$header" $off

fail() { printf 'FAIL: %s\n' "$1"; exit 1; }

out=$("$cli" workload "$f" --tokens 1000) || fail "workload exited $?"
printf '%s\n' "$out"
[ "$(printf '%s\n' "$out" | grep -c '^  - {name: ')" = 13 ] || fail "13 layers expected"
printf '%s\n' "$out" | grep -q "^  - {name: \"blocks.0\", bytes: $((qkv + mlp)), flops: 1.32121e+11}$" || fail "blocks.0's line"
# numbers in names compare as numbers: blocks.2 comes before blocks.10
l2=$(printf '%s\n' "$out" | grep -n '"blocks.2"' | cut -d: -f1)
l10=$(printf '%s\n' "$out" | grep -n '"blocks.10"' | cut -d: -f1)
[ "$l2" -lt "$l10" ] || fail "blocks.2 after blocks.10"
printf '%s\n' "$out" | grep -q '"embed", bytes: 6144000,' || fail "embed's line"

# the output is a workload the simulator reads, and simulate takes the file directly
printf '%s\n' "$out" > "$dir/model.yaml"
a=$("$cli" simulate --workload "$dir/model.yaml" --vram-gb 4 --bandwidth-gbps 25 --json) || fail "simulate of the YAML"
b=$("$cli" simulate --workload "$f" --tokens 1000 --vram-gb 4 --bandwidth-gbps 25 --json) || fail "simulate of the file"
printf '%s\n' "$b"
[ "$(printf '%s' "$a" | sed 's/"workload":"[^"]*"//')" = "$(printf '%s' "$b" | sed 's/"workload":"[^"]*"//')" ] ||
    fail "the file and its YAML simulate differently"
"$cli" plan --workload "$f" --tokens 1000 --group-depth 2 --vram-gb 4 --bandwidth-gbps 25 > /dev/null || fail "plan"

# without --tokens the compute is unknown: refused, saying what to add
if err=$("$cli" simulate --workload "$f" --vram-gb 4 --bandwidth-gbps 25 2>&1); then fail "no --tokens accepted"; fi
printf '%s\n' "$err" | grep -q -- '--tokens N' || fail "no --tokens message: $err"
# a damaged file: refused with where it is wrong
printf '\377\377\0\0\0\0\0\0{}' > "$dir/bad.safetensors"
if err=$("$cli" workload "$dir/bad.safetensors" 2>&1); then fail "bad file accepted"; fi
printf '%s\n' "$err" | grep -q 'past the end of the file' || fail "bad file message: $err"
# a sharded checkpoint: blocks.0's norm in a second file, and the index naming both
write_file "$dir/extra.safetensors" '{"blocks.0.norm.weight":{"dtype":"F32","shape":[3072],"data_offsets":[0,12288]}}' 12288
printf '{"metadata":{"total_size":0},"weight_map":{%s"embed.weight":"model.safetensors","blocks.0.norm.weight":"extra.safetensors"}}' \
    "$map" > "$dir/model.safetensors.index.json"
out=$("$cli" workload "$dir/model.safetensors.index.json" --tokens 1000) || fail "workload of the index exited $?"
printf '%s\n' "$out" | head -n 1
printf '%s\n' "$out" | grep -q '^# From model.safetensors.index.json (2 files, 26 tensors): 13 layers' || fail "index summary"
printf '%s\n' "$out" | grep -q "^  - {name: \"blocks.0\", bytes: $((qkv + mlp + 12288))," || fail "blocks.0 over two files"
"$cli" plan --workload "$dir/model.safetensors.index.json" --tokens 1000 --vram-gb 4 --bandwidth-gbps 25 > /dev/null ||
    fail "plan of the index"
# a layer per tensor
[ "$("$cli" workload "$f" --group-depth tensor | grep -c '^  - {name: ')" = 25 ] || fail "--group-depth tensor"
# one model of a file that holds several: --prefix
out=$("$cli" workload "$f" --tokens 1000 --prefix blocks.1) || fail "workload --prefix"
printf '%s\n' "$out" | head -n 1
[ "$(printf '%s\n' "$out" | grep -c '^  - {name: ')" = 3 ] || fail "blocks.1, blocks.10 and blocks.11 expected"
if err=$("$cli" workload "$f" --prefix nothing. 2>&1); then fail "a prefix matching nothing accepted"; fi
printf '%s\n' "$err" | grep -q "no layer of .* starts with 'nothing.'" || fail "prefix message: $err"
echo "safetensors_cli: ok"
