/*
 * A synthetic denoiser on a real GPU (issue 6): every layer of a workload's denoiser becomes a bf16
 * weight matrix of its size and a cuBLAS matrix product of its FLOPs, run for several steps
 *   (a) fully resident (the weights all in VRAM: the compute alone),
 *   (b) streamed through libvramcache with the VRAM budget capped (default 9 GB: a 12 GB card
 *       less 3 GB of working memory), or with --card-gb as on a smaller card: the device capped to
 *       that size by the fault wrapper (the bench's own buffers counted as used), the weight budget
 *       left dynamic (free memory - working memory, --working-gb, default 3), as an engine would run,
 * and compared, in the same run, with the lower bound max(compute, (step bytes - budget) / link).
 * Needs a CUDA device with room for the resident run; without one it says so and exits 0.
 *
 *   bench_gpu_denoiser [--workload FILE] [--budget-gb G | --card-gb G [--working-gb W]] [--steps N]
 *                      [--stream-slots N|tune] [--json]
 *
 * --stream-slots: the cache's vc_cache_options.stream_slots; with tune (VC_STREAM_SLOTS_TUNE) the
 * warm-up runs until the cache has chosen (at most 80 passes), so the timed steps are the choice's.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include "bench_args.h"
#include "json_string.h"
#include "vramcache.h"
#include "vramcache_fault.h"
#include "vramcache_gpu.h"
#include "vramcache_sim.h"

#define GIB 1073741824.0
#define CK(x)                                                                                      \
    do {                                                                                           \
        cudaError_t e_ = (x);                                                                      \
        if (e_ != cudaSuccess) {                                                                   \
            fprintf(stderr, "bench_gpu_denoiser: %s: %s\n", #x, cudaGetErrorString(e_));          \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)

typedef struct layer {
    size_t bytes;
    int m, n, k; /* C(m x n) = A(m x k) * W(k x n); W is the layer's weights */
} layer;

static layer *shape(const vc_workload *wl, size_t *count, size_t *max_a, size_t *max_c) {
    size_t n = vc_workload_denoiser_layer_count(wl);
    layer *ls = calloc(n, sizeof *ls);
    *max_a = *max_c = 1;
    for (size_t i = 0; i < n; i++) {
        double flops;
        vc_workload_denoiser_layer(wl, i, NULL, &ls[i].bytes, &flops);
        size_t elems = ls[i].bytes / 2;
        int k = elems >= 3072 * 64 ? 3072 : 64;
        ls[i].k = k;
        ls[i].n = (int)(elems / (size_t)k);
        double m = flops / (2.0 * k * (ls[i].n ? ls[i].n : 1));
        ls[i].m = m < 1 ? 1 : (int)ceil(m);
        if ((size_t)ls[i].m * k > *max_a) *max_a = (size_t)ls[i].m * k;
        if ((size_t)ls[i].m * ls[i].n > *max_c) *max_c = (size_t)ls[i].m * ls[i].n;
    }
    *count = n;
    return ls;
}

static void gemm(cublasHandle_t h, const layer *l, const void *a, const void *w, void *c) {
    const float one = 1.0f, zero = 0.0f;
    if (!l->n) return;
    cublasStatus_t st = cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, l->n, l->m, l->k, &one, w, CUDA_R_16BF, l->n, a,
                                     CUDA_R_16BF, l->k, &zero, c, CUDA_R_16BF, l->n, CUBLAS_COMPUTE_32F,
                                     CUBLAS_GEMM_DEFAULT);
    if (st != CUBLAS_STATUS_SUCCESS) {
        fprintf(stderr, "bench_gpu_denoiser: cublasGemmEx failed (%d)\n", (int)st);
        exit(1);
    }
}

int main(int argc, char **argv) {
    const char *path = VC_WORKLOAD_DIR "/flux1-dev.yaml";
    double budget_gb = 9, card_gb = 0, working_gb = 3;
    int steps = 6, json = 0;
    unsigned slots = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--workload") && i + 1 < argc)
            path = argv[++i];
        else if (!strcmp(argv[i], "--budget-gb") && i + 1 < argc) {
            if (!bench_arg_double("--budget-gb", argv[++i], 0.001, 1048576, &budget_gb)) return 2;
        } else if (!strcmp(argv[i], "--card-gb") && i + 1 < argc) {
            if (!bench_arg_double("--card-gb", argv[++i], 0.001, 1048576, &card_gb)) return 2;
        } else if (!strcmp(argv[i], "--working-gb") && i + 1 < argc) {
            if (!bench_arg_double("--working-gb", argv[++i], 0, 1048576, &working_gb)) return 2;
        } else if (!strcmp(argv[i], "--steps") && i + 1 < argc) {
            long v;
            if (!bench_arg_long("--steps", argv[++i], 1, 100000, &v)) return 2;
            steps = (int)v;
        } else if (!strcmp(argv[i], "--stream-slots") && i + 1 < argc) {
            if (!bench_arg_stream_slots(argv[++i], &slots)) return 2;
        } else if (!strcmp(argv[i], "--json"))
            json = 1;
        else {
            fprintf(stderr, "usage: %s [--workload FILE] [--budget-gb G | --card-gb G [--working-gb W]] [--steps N] "
                    "[--stream-slots N|tune] [--json]\n", argv[0]);
            return 2;
        }
    }
    vc_backend *gpu;
    char why[256];
    if (vc_backend_cuda_create(0, &gpu, why, sizeof why) != VC_OK) {
        if (json) {
            printf("{\"benchmark\":\"gpu_denoiser\",\"skipped\":");
            json_put_string(stdout, why);
            printf("}\n");
        } else {
            printf("bench_gpu_denoiser: skipped: %s\n", why);
        }
        return 0;
    }
    vc_workload *wl;
    if (vc_workload_load(path, &wl, NULL) != VC_OK) {
        fprintf(stderr, "bench_gpu_denoiser: %s\n", vc_last_error());
        return 1;
    }
    size_t n, max_a, max_c, total = 0;
    layer *ls = shape(wl, &n, &max_a, &max_c);
    for (size_t i = 0; i < n; i++) total += ls[i].bytes;
    char *host;
    CK(cudaHostAlloc((void **)&host, total, 0));
    memset(host, 0, total); /* zeros are valid bf16 */
    void *act, *outb;
    CK(cudaMalloc(&act, max_a * 2));
    CK(cudaMalloc(&outb, max_c * 2));
    CK(cudaMemset(act, 0, max_a * 2));
    cudaStream_t s;
    CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    cublasHandle_t h;
    if (cublasCreate(&h) != CUBLAS_STATUS_SUCCESS) return 1;
    cublasSetStream(h, s);
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));

    /* (a) resident: one device copy of every layer */
    double resident = -1;
    char *dev = NULL;
    if (cudaMalloc((void **)&dev, total) == cudaSuccess) {
        CK(cudaMemcpy(dev, host, total, cudaMemcpyHostToDevice));
        size_t off = 0;
        for (size_t i = 0; i < n; i++) gemm(h, &ls[i], act, dev + (off += ls[i].bytes) - ls[i].bytes, outb);
        CK(cudaEventRecord(e0, s));
        for (int st = 0; st < steps; st++) {
            off = 0;
            for (size_t i = 0; i < n; i++) {
                gemm(h, &ls[i], act, dev + off, outb);
                off += ls[i].bytes;
            }
        }
        CK(cudaEventRecord(e1, s));
        CK(cudaEventSynchronize(e1));
        float ms;
        CK(cudaEventElapsedTime(&ms, e0, e1));
        resident = ms * 1e-3 / steps;
        cudaFree(dev);
    } else {
        cudaGetLastError();
    }

    /* (b) streamed through the cache, the VRAM budget capped */
    vc_cache_options o;
    vc_cache_options_init(&o);
    o.backend = gpu;
    o.vram_budget = (size_t)(budget_gb * GIB);
    vc_backend *card = NULL;
    if (card_gb > 0) { /* a smaller card: what the engine's buffers take counts as used */
        if (vc_backend_fault_create(gpu, &card) != VC_OK ||
            vc_fault_set_device_capacity(card, (size_t)(card_gb * GIB), (max_a + max_c) * 2) != VC_OK)
            return 1;
        o.backend = card;
        o.vram_budget = VC_SIZE_AUTO;
        o.working_mem = (size_t)(working_gb * GIB);
    }
    o.ram_budget = 1 << 20; /* borrowed pinned weights: the RAM pool is not used */
    o.stream_slots = slots;
    vc_cache *c;
    if (vc_cache_create(&o, &c) != VC_OK) return 1;
    /* one model per model of the denoiser stage (a ControlNet and its UNet: a step group) */
    vc_model_id m = 0;
    const char *model_name = NULL;
    int nmodels = 0;
    vc_layer_id *ids = malloc(n * sizeof *ids);
    size_t off = 0;
    for (size_t i = 0; i < n; i++) {
        const char *name, *mn = vc_workload_denoiser_layer_model(wl, i);
        double flops;
        size_t back = vc_workload_denoiser_layer_back(wl, i);
        if (back <= i) { /* a model the step runs twice (guidance as two passes): its layers again */
            ids[i] = ids[i - back];
            continue;
        }
        if (!model_name || strcmp(mn, model_name)) {
            model_name = mn;
            nmodels++;
            if (vc_model_register(c, mn, &m) != VC_OK) return 1;
        }
        vc_workload_denoiser_layer(wl, i, &name, NULL, &flops);
        vc_layer_desc d = {.name = name, .bytes = ls[i].bytes, .host_ptr = host + off, .cost = flops};
        off += ls[i].bytes;
        vc_layer_register(c, m, &d, &ids[i]);
    }
    double streamed = 0;
    /* Two passes to learn the order and lay the device out; several models form their group at the
     * fourth step and lay it out in the fifth. */
    int warm = nmodels > 1 ? 6 : 2, tuning = 0, tuning_passes = 0;
    for (int st = -warm; st < steps; st++) {
        /* with the tuner: warm up until it has chosen (the passes before are its measurements) */
        if (st == -1 && slots == VC_STREAM_SLOTS_TUNE && vc_cache_get_stream_slots(c, NULL, &tuning) == VC_OK &&
            tuning && tuning_passes < 80) {
            tuning_passes++;
            st--;
        }
        if (st == 0) CK(cudaEventRecord(e0, s));
        for (size_t i = 0; i < n; i++) {
            void *w;
            if (vc_layer_acquire(c, ids[i], s, &w) != VC_OK) {
                char msg[512];
                vc_cache_last_error(c, msg, sizeof msg);
                fprintf(stderr, "bench_gpu_denoiser: %s\n", msg);
                return 1;
            }
            gemm(h, &ls[i], act, w, outb);
            vc_layer_release(c, ids[i], s);
        }
    }
    CK(cudaEventRecord(e1, s));
    CK(cudaEventSynchronize(e1));
    float ms;
    CK(cudaEventElapsedTime(&ms, e0, e1));
    streamed = ms * 1e-3 / steps;
    vc_stats stats;
    vc_cache_get_stats(c, &stats);
    unsigned slots_used = 0;
    vc_cache_get_stream_slots(c, &slots_used, &tuning);
    char room[48] = "the planner's";
    if (slots_used) snprintf(room, sizeof room, "room for %u layer%s", slots_used, slots_used > 1 ? "s" : "");

    /* the link's limit, for the lower bound */
    void *probe;
    CK(cudaMalloc(&probe, 256 << 20));
    CK(cudaEventRecord(e0, s));
    for (int i = 0; i < 8; i++) CK(cudaMemcpyAsync(probe, host, 256 << 20, cudaMemcpyHostToDevice, s));
    CK(cudaEventRecord(e1, s));
    CK(cudaEventSynchronize(e1));
    CK(cudaEventElapsedTime(&ms, e0, e1));
    double link = 8.0 * (256 << 20) / (ms * 1e-3);
    double weight_gb = (double)stats.vram_limit / GIB; /* the budget the cache had (dynamic with --card-gb) */
    double lb_bytes = total > stats.vram_limit ? (double)(total - stats.vram_limit) : 0;
    double bound = resident > 0 ? fmax(resident, lb_bytes / link) : lb_bytes / link;
    if (json) {
        printf("{\"benchmark\":\"gpu_denoiser\",\"device\":");
        json_put_string(stdout, why);
        printf(",\"workload\":");
        json_put_string(stdout, vc_workload_name(wl));
        printf(",\"card_gb\":%.2f,"
               "\"working_gb\":%.2f,\"budget_gb\":%.2f,"
               "\"resident_step_s\":%.6f,\"streamed_step_s\":%.6f,\"lower_bound_step_s\":%.6f,\"link_gbps\":%.2f,"
               "\"speed_vs_resident\":%.4f,\"time_over_bound\":%.4f,\"stream_slots\":%u,\"tuned\":%s,"
               "\"tuning_passes\":%d}\n",
               card_gb, card_gb > 0 ? working_gb : 0.0, weight_gb, resident, streamed,
               bound, link / 1e9, resident > 0 ? resident / streamed : 0, streamed / bound, slots_used,
               slots == VC_STREAM_SLOTS_TUNE ? (tuning ? "false" : "true") : "null", tuning_passes);
    } else {
        printf("%s\n%s denoiser, %.2f GB per step, budget %.2f GB, link %.2f GB/s\n"
               "  resident %.4f s/step, streamed %.4f s/step (%.1f%% of resident), lower bound %.4f s (x%.3f)\n"
               "  prefetches %llu, prefetch hits %llu, misses %llu; streaming region: %s%s\n",
               why, vc_workload_name(wl), (double)total / GIB, weight_gb, link / 1e9, resident, streamed,
               resident > 0 ? 100 * resident / streamed : 0, bound, streamed / bound,
               (unsigned long long)stats.prefetches, (unsigned long long)stats.prefetch_hits,
               (unsigned long long)stats.misses, room,
               slots == VC_STREAM_SLOTS_TUNE ? (tuning ? " (still tuning)" : " (tuned)") : "");
    }
    vc_cache_destroy(c);
    if (card) vc_backend_destroy(card);
    vc_backend_destroy(gpu);
    cublasDestroy(h);
    cudaFreeHost(host);
    vc_workload_destroy(wl);
    free(ls);
    free(ids);
    return 0;
}
