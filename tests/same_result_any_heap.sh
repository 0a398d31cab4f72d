#!/bin/sh
# Runs `vramcache simulate` with glibc's allocator set up three ways and checks the reports are
# identical: a simulated run must not depend on where malloc puts things (it did once, when the
# streaming ring kept a pointer to a freed segment and resumed inside a new one that reused its
# memory). Other C libraries ignore GLIBC_TUNABLES, and the three runs then simply agree.
# usage: same_result_any_heap.sh VRAMCACHE_CLI simulate-arguments...
cli=$1
shift
a=$("$cli" "$@") || exit 1
b=$(GLIBC_TUNABLES=glibc.malloc.mxfast=0 "$cli" "$@") || exit 1
c=$(GLIBC_TUNABLES=glibc.malloc.tcache_count=0 "$cli" "$@") || exit 1
if [ "$a" != "$b" ] || [ "$a" != "$c" ]; then
    printf 'reports differ with the heap laid out differently:\n%s\n%s\n%s\n' "$a" "$b" "$c"
    exit 1
fi
printf '%s\n' "$a"
