/*
 * GPU streaming benchmark (issue 5). Needs a CUDA device; without one it says so and exits 0.
 *
 *  1. The link's limit: pinned cudaMemcpyAsync host→device bandwidth for 256 MiB buffers.
 *  2. libvramcache streaming throughput for layers of 1, 16, 64 and 256 MiB: cyclic passes over a
 *     layer set 1.5x and 2x the VRAM budget, acquire + release on an engine stream with no compute.
 *     Throughput is the bytes the cache actually copied host->device (its stats) over the time, as a
 *     fraction of the link's limit (goal >= 0.90 from 16 MiB). The planned policy keeps part of the
 *     set resident, so it copies less than the set per pass; "moved/pass" says how much.
 *  3. Peers on the same sweep, each reported as its time over libvramcache's: a naive loop
 *     (cudaMalloc + cudaMemcpy + cudaFree per layer), and with --uvm CUDA Unified Memory
 *     (cudaMallocManaged + cudaMemPrefetchAsync) held to the same budget: before prefetching a layer
 *     to the device it prefetches the oldest resident ones back to the CPU until the layer fits. The
 *     managed allocation is the layer set, far below the card's free memory: the device tool's notes
 *     warn that oversubscribing managed memory can hang a shared GPU, so the budget is enforced by
 *     the prefetches, not by the driver's page faults.
 *
 *   bench_gpu [--json] [--budget-gb G] [--passes N] [--uvm]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cuda_runtime_api.h>

#include "bench_args.h"
#include "json_string.h"
#include "vramcache.h"
#include "vramcache_gpu.h"

#define MIB ((size_t)1 << 20)
#define CK(x)                                                                                      \
    do {                                                                                           \
        cudaError_t e_ = (x);                                                                      \
        if (e_ != cudaSuccess) {                                                                   \
            fprintf(stderr, "bench_gpu: %s failed: %s\n", #x, cudaGetErrorString(e_));             \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static double link_limit(void) {
    size_t n = 256 * MIB;
    void *h, *d;
    CK(cudaHostAlloc(&h, n, 0));
    CK(cudaMalloc(&d, n));
    cudaStream_t s;
    CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    cudaEvent_t a, b;
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
    CK(cudaMemcpyAsync(d, h, n, cudaMemcpyHostToDevice, s)); /* warm-up */
    CK(cudaEventRecord(a, s));
    for (int i = 0; i < 8; i++) CK(cudaMemcpyAsync(d, h, n, cudaMemcpyHostToDevice, s));
    CK(cudaEventRecord(b, s));
    CK(cudaEventSynchronize(b));
    float ms;
    CK(cudaEventElapsedTime(&ms, a, b));
    cudaEventDestroy(a);
    cudaEventDestroy(b);
    cudaStreamDestroy(s);
    cudaFree(d);
    cudaFreeHost(h);
    return 8.0 * (double)n / (ms * 1e-3);
}

/* Seconds for `passes` cyclic passes over `count` layers of `layer` bytes through libvramcache;
 * *moved gets the bytes it copied host->device in the timed passes. */
static double ours(vc_backend *gpu, char *host, size_t layer, size_t count, size_t budget, int passes,
                   double *moved) {
    vc_cache_options o;
    vc_cache_options_init(&o);
    o.backend = gpu;
    o.vram_budget = budget;
    o.ram_budget = 1 * MIB;
    o.arena_segment_bytes = budget;
    vc_cache *c;
    if (vc_cache_create(&o, &c) != VC_OK) {
        fprintf(stderr, "bench_gpu: %s\n", vc_last_error());
        exit(1);
    }
    vc_model_id m;
    vc_model_register(c, "bench", &m);
    vc_layer_id *ids = malloc(count * sizeof *ids);
    for (size_t i = 0; i < count; i++) {
        vc_layer_desc d = {.name = "layer", .bytes = layer, .host_ptr = host + i * layer};
        vc_layer_register(c, m, &d, &ids[i]);
    }
    cudaStream_t s;
    CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    double t0 = 0;
    uint64_t h2d0 = 0;
    for (int p = -2; p < passes; p++) { /* two passes to learn the order and lay the device out */
        if (p == 0) {
            CK(cudaStreamSynchronize(s));
            vc_stats st;
            vc_cache_get_stats(c, &st);
            h2d0 = st.bytes_h2d;
            t0 = now_s();
        }
        for (size_t i = 0; i < count; i++) {
            void *dp;
            if (vc_layer_acquire(c, ids[i], s, &dp) != VC_OK) {
                char msg[512];
                vc_cache_last_error(c, msg, sizeof msg);
                fprintf(stderr, "bench_gpu: %s\n", msg);
                exit(1);
            }
            vc_layer_release(c, ids[i], s);
        }
    }
    CK(cudaStreamSynchronize(s));
    double t = now_s() - t0;
    vc_stats st;
    vc_cache_get_stats(c, &st);
    *moved = (double)(st.bytes_h2d - h2d0);
    cudaStreamDestroy(s);
    vc_cache_destroy(c);
    free(ids);
    return t;
}

static double naive(char *host, size_t layer, size_t count, int passes) {
    double t0 = now_s();
    for (int p = 0; p < passes; p++)
        for (size_t i = 0; i < count; i++) {
            void *d;
            CK(cudaMalloc(&d, layer));
            CK(cudaMemcpy(d, host + i * layer, layer, cudaMemcpyHostToDevice));
            CK(cudaFree(d));
        }
    CK(cudaDeviceSynchronize());
    return now_s() - t0;
}

static void uvm_prefetch(char *p, size_t n, int device, cudaStream_t s) {
#if CUDART_VERSION >= 13000
    struct cudaMemLocation loc = {.type = device < 0 ? cudaMemLocationTypeHost : cudaMemLocationTypeDevice,
                                  .id = device < 0 ? 0 : device};
    CK(cudaMemPrefetchAsync(p, n, loc, 0, s));
#else
    CK(cudaMemPrefetchAsync(p, n, device < 0 ? cudaCpuDeviceId : device, s));
#endif
}

/* Unified Memory held to `budget`: layers live on the device in a FIFO window; making room prefetches
 * the oldest back to the CPU. Same passes as ours(), the first two untimed. */
static double uvm(size_t layer, size_t count, size_t budget, int passes) {
    char *m;
    CK(cudaMallocManaged((void **)&m, layer * count, cudaMemAttachGlobal));
    memset(m, 1, layer * count);
    cudaStream_t s;
    CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    size_t window = budget / layer, head = 0, resident = 0; /* resident layers: head .. head+resident-1 */
    double t0 = 0;
    for (int p = -2; p < passes; p++) {
        if (p == 0) {
            CK(cudaStreamSynchronize(s));
            t0 = now_s();
        }
        for (size_t i = 0; i < count; i++) {
            if (resident && (i + count - head) % count < resident) continue; /* already on the device */
            while (resident >= window) {
                uvm_prefetch(m + head * layer, layer, -1, s);
                head = (head + 1) % count;
                resident--;
            }
            uvm_prefetch(m + i * layer, layer, 0, s);
            if (!resident) head = i;
            resident++;
        }
    }
    CK(cudaStreamSynchronize(s));
    double t = now_s() - t0;
    cudaStreamDestroy(s);
    cudaFree(m);
    return t;
}

int main(int argc, char **argv) {
    int json = 0, passes = 4, with_uvm = 0;
    double budget_gb = 2;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--json"))
            json = 1;
        else if (!strcmp(argv[i], "--uvm"))
            with_uvm = 1;
        else if (!strcmp(argv[i], "--budget-gb") && i + 1 < argc) {
            if (!bench_arg_double("--budget-gb", argv[++i], 0.001, 1048576, &budget_gb)) return 2;
        } else if (!strcmp(argv[i], "--passes") && i + 1 < argc) {
            long v;
            if (!bench_arg_long("--passes", argv[++i], 1, 100000, &v)) return 2;
            passes = (int)v;
        } else {
            fprintf(stderr, "usage: %s [--json] [--budget-gb G] [--passes N] [--uvm]\n", argv[0]);
            return 2;
        }
    }
    vc_backend *gpu;
    char why[256];
    if (vc_backend_cuda_create(0, &gpu, why, sizeof why) != VC_OK) {
        if (json) {
            printf("{\"benchmark\":\"gpu\",\"skipped\":");
            json_put_string(stdout, why);
            printf("}\n");
        } else {
            printf("bench_gpu: skipped: %s\n", why);
        }
        return 0;
    }
    size_t budget = (size_t)(budget_gb * 1024) * MIB;
    double limit = link_limit();
    size_t max_set = 2 * budget;
    char *host;
    CK(cudaHostAlloc((void **)&host, max_set + 256 * MIB, 0));
    memset(host, 7, max_set);
    const size_t sizes[] = {1 * MIB, 16 * MIB, 64 * MIB, 256 * MIB};
    if (json) {
        printf("{\"benchmark\":\"gpu\",\"device\":");
        json_put_string(stdout, why);
        printf(",\"link_gbps\":%.2f,\"budget_bytes\":%zu,\"rows\":[", limit / 1e9, budget);
    } else {
        printf("%s: pinned host->device %.2f GB/s; VRAM budget %.2f GB\n%10s %6s %11s %11s %10s %14s%s\n", why,
               limit / 1e9, budget_gb, "layer", "set", "moved/pass", "ours GB/s", "of link", "naive / ours",
               with_uvm ? "   uvm / ours" : "");
    }
    int first = 1;
    for (int si = 0; si < 4; si++)
        for (int f = 0; f < 2; f++) {
            double factor = f ? 2.0 : 1.5;
            size_t layer = sizes[si], count = (size_t)((double)budget * factor) / layer;
            if (count < 4) continue;
            double moved = 0, set = (double)layer * (double)count;
            double t_ours = ours(gpu, host, layer, count, budget, passes, &moved);
            double t_naive = naive(host, layer, count, passes);
            double t_uvm = with_uvm ? uvm(layer, count, budget, passes) : 0;
            if (json)
                printf("%s{\"layer_bytes\":%zu,\"set_factor\":%.1f,\"moved_per_pass_of_set\":%.4f,\"ours_gbps\":%.3f,"
                       "\"fraction_of_link\":%.4f,\"naive_over_ours\":%.3f,\"uvm_over_ours\":%.3f}",
                       first ? "" : ",", layer, factor, moved / passes / set, moved / t_ours / 1e9,
                       moved / t_ours / limit, t_naive / t_ours, with_uvm ? t_uvm / t_ours : 0.0);
            else
                printf("%7zu MiB %5.1fx %10.0f%% %11.2f %9.1f%% %13.2fx", layer / MIB, factor,
                       100 * moved / passes / set, moved / t_ours / 1e9, 100 * moved / t_ours / limit,
                       t_naive / t_ours);
            if (!json && with_uvm) printf(" %12.2fx", t_uvm / t_ours);
            if (!json) printf("\n");
            first = 0;
        }
    if (json) printf("]}\n");
    cudaFreeHost(host);
    vc_backend_destroy(gpu);
    return 0;
}
