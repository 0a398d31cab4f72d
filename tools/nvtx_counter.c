/*
 * A minimal NVTX tool for machines without Nsight Systems: loaded by the NVTX runtime through
 * NVTX_INJECTION64_PATH, it receives every nvtxRangePushA / nvtxRangePop the program makes, exactly
 * as a profiler would, and prints at exit how many ranges of each kind it saw and whether they
 * balanced. tools/gpu-run.sh uses it to check that the CUDA backend's ranges (uploads, prefetches,
 * evictions, reservations) reach a profiler.
 *   NVTX_INJECTION64_PATH=build/tools/libvc_nvtx_counter.so ./program
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nvtx3/nvToolsExt.h>

static const char *const kinds[] = {"upload", "prefetch", "evict", "reserve"};
#define NKINDS (sizeof kinds / sizeof kinds[0])
static atomic_long pushes, pops, other, by_kind[NKINDS];
static atomic_int max_depth, depth;

static int push_a(const char *message) {
    atomic_fetch_add(&pushes, 1);
    size_t k = 0;
    while (k < NKINDS && (!message || strncmp(message, kinds[k], strlen(kinds[k])) != 0)) k++;
    if (k < NKINDS)
        atomic_fetch_add(&by_kind[k], 1);
    else
        atomic_fetch_add(&other, 1);
    int d = atomic_fetch_add(&depth, 1) + 1;
    int m = atomic_load(&max_depth);
    while (d > m && !atomic_compare_exchange_weak(&max_depth, &m, d)) {}
    return d - 1;
}

static int pop(void) {
    atomic_fetch_add(&pops, 1);
    return atomic_fetch_sub(&depth, 1) - 1;
}

static void report(void) {
    fprintf(stderr, "nvtx: %ld ranges pushed, %ld popped (max depth %d):", atomic_load(&pushes), atomic_load(&pops),
            atomic_load(&max_depth));
    for (size_t k = 0; k < NKINDS; k++) fprintf(stderr, " %s %ld", kinds[k], atomic_load(&by_kind[k]));
    fprintf(stderr, " other %ld\n", atomic_load(&other));
}

/* The entry point the NVTX runtime looks up in the library NVTX_INJECTION64_PATH names. */
__attribute__((visibility("default"))) int InitializeInjectionNvtx2(NvtxGetExportTableFunc_t get_table);

int InitializeInjectionNvtx2(NvtxGetExportTableFunc_t get_table) {
    const NvtxExportTableCallbacks *cb = (const NvtxExportTableCallbacks *)get_table(NVTX_ETID_CALLBACKS);
    NvtxFunctionTable table = NULL;
    unsigned size = 0;
    if (!cb || !cb->GetModuleFunctionTable(NVTX_CB_MODULE_CORE, &table, &size) || size <= NVTX_CBID_CORE_RangePop)
        return 0;
    *table[NVTX_CBID_CORE_RangePushA] = (NvtxFunctionPointer)push_a;
    *table[NVTX_CBID_CORE_RangePop] = (NvtxFunctionPointer)pop;
    atexit(report);
    return 1;
}
