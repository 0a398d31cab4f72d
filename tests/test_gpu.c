/*
 * GPU backends. Without a GPU (CI, most dev machines) this checks the no-device paths: `auto` falls
 * back to the host backend and says why, an explicit device is a clear error. With a CUDA device it
 * runs the cache's core behaviours on the CUDA backend, plus the GPU-specific guarantees: the
 * engine's stream sees the uploaded weights, and eviction never overwrites memory that queued device
 * work still reads. GPU-only cases are skipped with the reason printed.
 */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include <cuda_runtime_api.h>

#include "test_util.h"
#include "vramcache_config.h"
#include "vramcache_gpu.h"

static char no_gpu_reason[256];

static vc_backend *cuda_or_skip(void) {
    vc_backend *b = NULL;
    if (vc_backend_cuda_create(0, &b, no_gpu_reason, sizeof no_gpu_reason) != VC_OK) {
        print_message("SKIPPED (no CUDA device): %s\n", no_gpu_reason);
        skip();
    }
    return b;
}

static void test_auto_falls_back_and_says_why(void **state) {
    (void)state;
    vc_config *cfg;
    assert_int_equal(vc_config_create(&cfg), VC_OK);
    vc_backend *b = NULL;
    char why[512];
    assert_int_equal(vc_config_create_backend(cfg, &b, why, sizeof why), VC_OK);
    vc_backend *probe = NULL;
    char pwhy[256];
    if (vc_backend_cuda_create(0, &probe, pwhy, sizeof pwhy) == VC_OK) {
        assert_string_equal(vc_backend_name(b), "cuda");
        vc_backend_destroy(probe);
    } else {
        assert_string_equal(vc_backend_name(b), "host");
        assert_non_null(strstr(why, "CUDA:"));
        assert_non_null(strstr(why, "HIP:"));
        print_message("auto without a GPU: %s\n", why);
    }
    vc_backend_destroy(b);
    vc_config_destroy(cfg);
}

static void test_explicit_device_unavailable_is_clear(void **state) {
    (void)state;
    vc_config *cfg;
    assert_int_equal(vc_config_create(&cfg), VC_OK);
    /* an index no machine has */
    assert_int_equal(vc_config_set(cfg, VC_CFG_DEVICE, "cuda:1023"), VC_OK);
    vc_backend *b = (vc_backend *)0x1;
    char why[256];
    assert_int_equal(vc_config_create_backend(cfg, &b, why, sizeof why), VC_ERR_NO_DEVICE);
    assert_null(b);
    assert_non_null(strstr(vc_last_error(), "cuda:1023"));
    assert_non_null(strstr(vc_last_error(), "use device: auto or cpu"));
    vc_cache *c = (vc_cache *)0x1;
    assert_int_equal(vc_cache_create_from_config(cfg, &c), VC_ERR_NO_DEVICE);
    assert_null(c);
    assert_int_equal(vc_config_set(cfg, VC_CFG_DEVICE, "hip:1023"), VC_OK);
    assert_int_equal(vc_config_create_backend(cfg, &b, why, sizeof why), VC_ERR_NO_DEVICE);
    assert_non_null(strstr(vc_last_error(), "hip:1023"));
    vc_config_destroy(cfg);
}

/* vc_backend_open: the `device` names of invokeai.yaml, without a config object. */
static void test_backend_open_by_name(void **state) {
    (void)state;
    vc_backend *b = (vc_backend *)0x1;
    char why[512];
    assert_int_equal(vc_backend_open("tpu:0", &b, why, sizeof why), VC_ERR_INVALID_ARG);
    assert_null(b);
    assert_non_null(strstr(vc_last_error(), "vc_backend_open: device must be auto, cpu, cuda"));
    assert_int_equal(vc_backend_open(NULL, &b, why, sizeof why), VC_ERR_INVALID_ARG);
    assert_int_equal(vc_backend_open("auto", NULL, why, sizeof why), VC_ERR_INVALID_ARG);
    assert_int_equal(vc_backend_open("cuda:1023", &b, why, sizeof why), VC_ERR_NO_DEVICE);
    assert_null(b);
    assert_non_null(strstr(vc_last_error(), "cuda:1023"));
    assert_int_equal(vc_backend_open("cpu", &b, NULL, 0), VC_OK);
    assert_string_equal(vc_backend_name(b), "host");
    vc_backend_destroy(b);
    assert_int_equal(vc_backend_open("auto", &b, why, sizeof why), VC_OK);
    vc_backend *probe = NULL;
    char pwhy[256];
    int have_cuda = vc_backend_cuda_create(0, &probe, pwhy, sizeof pwhy) == VC_OK;
    if (probe) vc_backend_destroy(probe);
    if (have_cuda) assert_string_equal(vc_backend_name(b), "cuda");
    assert_non_null(strstr(why, "auto"));
    vc_backend_destroy(b);
}

/* ---- with a device ---------------------------------------------------------------------------- */

static vc_cache *gpu_cache(vc_backend *b, size_t vram_budget, int keep) {
    vc_cache_options o;
    vc_cache_options_init(&o);
    o.backend = b;
    o.ram_budget = 256 * MB;
    o.vram_budget = vram_budget;
    o.keep_ram_copy = keep;
    o.arena_segment_bytes = 8 * MB;
    vc_cache *c;
    assert_int_equal(vc_cache_create(&o, &c), VC_OK);
    return c;
}

static void test_core_on_cuda(void **state) {
    (void)state;
    vc_backend *b = cuda_or_skip();
    for (int keep = 0; keep < 2; keep++) {
        vc_cache *c = gpu_cache(b, 16 * MB, keep);
        vc_model_id m = add_model(c, "m");
        test_loader ld[8];
        vc_layer_id l[8];
        add_loader_layers(c, m, "l", 8, 3 * MB, ld, l);
        cudaStream_t s;
        assert_int_equal(cudaStreamCreate(&s), cudaSuccess);
        unsigned char *host = malloc(3 * MB);
        for (int r = 0; r < 4; r++)
            for (int i = 0; i < 8; i++) {
                void *p;
                assert_int_equal(vc_layer_acquire(c, l[i], s, &p), VC_OK);
                /* the engine's stream reads the weights after the upload */
                assert_int_equal(cudaMemcpyAsync(host, p, 3 * MB, cudaMemcpyDeviceToHost, s), cudaSuccess);
                assert_int_equal(vc_layer_release(c, l[i], s), VC_OK);
                assert_int_equal(cudaStreamSynchronize(s), cudaSuccess);
                assert_true(check_pattern(host, 3 * MB, ld[i].seed));
            }
        vc_stats st = get_stats(c);
        assert_true(st.arena_peak_bytes <= 16 * MB);
        assert_true(st.misses > 8);
        vc_reservation *res;
        assert_int_equal(vc_reserve_working_mem(c, 8 * MB, VC_RESERVE_BUFFER, &res), VC_OK);
        assert_non_null(vc_reservation_ptr(res));
        assert_int_equal(vc_release_working_mem(c, res), VC_OK);
        for (int i = 0; i < 8; i++) {
            assert_int_equal(vc_layer_read(c, l[i], host, 3 * MB), VC_OK);
            assert_true(check_pattern(host, 3 * MB, ld[i].seed));
        }
        free(host);
        cudaStreamDestroy(s);
        assert_int_equal(vc_cache_destroy(c), VC_OK);
    }
    vc_backend_destroy(b);
}

static void test_eviction_waits_for_queued_reads(void **state) {
    (void)state;
    vc_backend *b = cuda_or_skip();
    /* room for one 32 MB layer: acquiring B must evict A and upload into A's memory */
    vc_cache *c = gpu_cache(b, 33 * MB, 1);
    vc_model_id m = add_model(c, "m");
    unsigned char *wa, *wb, *out;
    assert_int_equal(cudaHostAlloc((void **)&wa, 32 * MB, 0), cudaSuccess);
    assert_int_equal(cudaHostAlloc((void **)&wb, 32 * MB, 0), cudaSuccess);
    assert_int_equal(cudaHostAlloc((void **)&out, 32 * MB, 0), cudaSuccess);
    fill_pattern(wa, 32 * MB, 1);
    fill_pattern(wb, 32 * MB, 2);
    vc_layer_id a = add_host_layer(c, m, "a", wa, 32 * MB);
    vc_layer_id bl = add_host_layer(c, m, "b", wb, 32 * MB);
    cudaStream_t s;
    assert_int_equal(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), cudaSuccess);
    void *busy;
    assert_int_equal(cudaMalloc(&busy, 512 * MB), cudaSuccess);
    void *pa, *pb;
    assert_int_equal(vc_layer_acquire(c, a, s, &pa), VC_OK);
    /* keep the engine stream busy, then read A: that read is still queued when A is released */
    for (int i = 0; i < 20; i++) cudaMemsetAsync(busy, i, 512 * MB, s);
    assert_int_equal(cudaMemcpyAsync(out, pa, 32 * MB, cudaMemcpyDeviceToHost, s), cudaSuccess);
    assert_int_equal(vc_layer_release(c, a, s), VC_OK);
    /* B is wanted on another engine stream, which knows nothing of s's queue */
    cudaStream_t s2;
    assert_int_equal(cudaStreamCreateWithFlags(&s2, cudaStreamNonBlocking), cudaSuccess);
    assert_int_equal(vc_layer_acquire(c, bl, s2, &pb), VC_OK);
    assert_ptr_equal(pa, pb); /* B landed in A's room... */
    unsigned char *outb;
    assert_int_equal(cudaHostAlloc((void **)&outb, 32 * MB, 0), cudaSuccess);
    assert_int_equal(cudaMemcpyAsync(outb, pb, 32 * MB, cudaMemcpyDeviceToHost, s2), cudaSuccess);
    assert_int_equal(cudaStreamSynchronize(s2), cudaSuccess);
    assert_true(check_pattern(outb, 32 * MB, 2)); /* s2 saw B's bytes once its upload was done */
    assert_int_equal(cudaStreamSynchronize(s), cudaSuccess);
    assert_true(check_pattern(out, 32 * MB, 1)); /* ...only after the queued read of A finished */
    assert_int_equal(vc_layer_release(c, bl, s2), VC_OK);
    cudaStreamSynchronize(s2);
    cudaStreamDestroy(s2);
    cudaFreeHost(outb);
    cudaFree(busy);
    cudaStreamDestroy(s);
    assert_int_equal(vc_cache_destroy(c), VC_OK);
    cudaFreeHost(wa);
    cudaFreeHost(wb);
    cudaFreeHost(out);
    vc_backend_destroy(b);
}

/* backend:cudaMallocAsync: reservation buffers come from the stream-ordered pool and are usable
 * on the engine's own non-blocking stream as soon as the pointer is returned. */
static void test_stream_ordered_reservations(void **state) {
    (void)state;
    vc_backend *b = cuda_or_skip();
    vc_cache_options o;
    vc_cache_options_init(&o);
    o.backend = b;
    o.ram_budget = 64 * MB;
    o.vram_budget = 64 * MB;
    o.stream_ordered_working_mem = 1;
    vc_cache *c;
    assert_int_equal(vc_cache_create(&o, &c), VC_OK);
    cudaMemPool_t pool;
    assert_int_equal(cudaDeviceGetDefaultMemPool(&pool, 0), cudaSuccess);
    cudaStream_t s;
    assert_int_equal(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), cudaSuccess);
    unsigned char *out = malloc(32 * MB);
    for (int round = 0; round < 3; round++) {
        vc_reservation *r;
        assert_int_equal(vc_reserve_working_mem(c, 32 * MB, VC_RESERVE_BUFFER, &r), VC_OK);
        void *p = vc_reservation_ptr(r);
        assert_non_null(p);
        struct cudaPointerAttributes attr;
        assert_int_equal(cudaPointerGetAttributes(&attr, p), cudaSuccess);
        assert_int_equal(attr.type, cudaMemoryTypeDevice);
        uint64_t used = 0;
        assert_int_equal(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrUsedMemCurrent, &used), cudaSuccess);
        assert_true(used >= 32 * MB); /* from the pool, not cudaMalloc */
        assert_int_equal(cudaMemsetAsync(p, 0x40 + round, 32 * MB, s), cudaSuccess);
        assert_int_equal(cudaMemcpyAsync(out, p, 32 * MB, cudaMemcpyDeviceToHost, s), cudaSuccess);
        assert_int_equal(cudaStreamSynchronize(s), cudaSuccess);
        assert_int_equal(out[0], 0x40 + round);
        assert_int_equal(out[32 * MB - 1], 0x40 + round);
        assert_int_equal(get_stats(c).reserved_bytes, 32 * MB);
        assert_int_equal(vc_release_working_mem(c, r), VC_OK);
        assert_int_equal(get_stats(c).reserved_bytes, 0);
    }
    free(out);
    cudaStreamDestroy(s);
    assert_int_equal(vc_cache_destroy(c), VC_OK);
    vc_backend_destroy(b);
}

/* Pageable sources larger than the pinned staging ring (4 x 32 MB): an engine's malloc'ed weights,
 * and a RAM pool left unpinned by a zero pinned budget. Every byte must arrive, in order. */
static void check_on_device(void *dptr, size_t n, uint64_t seed, cudaStream_t s) {
    unsigned char *back = malloc(n);
    assert_non_null(back);
    assert_int_equal(cudaMemcpyAsync(back, dptr, n, cudaMemcpyDeviceToHost, s), cudaSuccess);
    assert_int_equal(cudaStreamSynchronize(s), cudaSuccess);
    assert_true(check_pattern(back, n, seed));
    free(back);
}

static void test_pageable_sources_beyond_the_staging_ring(void **state) {
    (void)state;
    setenv("VRAMCACHE_PINNED_BUDGET_GB", "0", 1); /* nothing pinned: every copy is staged */
    vc_backend *b = cuda_or_skip();
    unsetenv("VRAMCACHE_PINNED_BUDGET_GB");
    vc_cache *c = gpu_cache(b, 300 * MB, 1);
    vc_model_id m = add_model(c, "m");
    const size_t big = 150 * MB + 12345; /* odd size: the last staged chunk is partial */
    unsigned char *engine = malloc(big);
    assert_non_null(engine);
    fill_pattern(engine, big, 11);
    vc_layer_id host_layer = add_host_layer(c, m, "pageable", engine, big);
    test_loader ld = {.seed = 12};
    vc_layer_id loaded = add_loader_layer(c, m, "loaded", big, &ld);
    cudaStream_t s;
    assert_int_equal(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), cudaSuccess);
    for (int round = 0; round < 3; round++) { /* two 150 MB layers through 300 MB: each evicts the other */
        void *p;
        assert_int_equal(vc_layer_acquire(c, host_layer, s, &p), VC_OK);
        check_on_device(p, big, 11, s);
        assert_int_equal(vc_layer_release(c, host_layer, s), VC_OK);
        assert_int_equal(vc_layer_acquire(c, loaded, s, &p), VC_OK);
        check_on_device(p, big, 12, s);
        assert_int_equal(vc_layer_release(c, loaded, s), VC_OK);
    }
    assert_int_equal(ld.calls, 1); /* the RAM copy (pageable here) served the later rounds */
    assert_true(get_stats(c).misses >= 5);
    cudaStreamDestroy(s);
    assert_int_equal(vc_cache_destroy(c), VC_OK);
    free(engine);
    vc_backend_destroy(b);
}

/* The dynamic budget on real hardware: memory taken outside the cache (here a plain cudaMalloc, as
 * another process would) shrinks what the cache uses, re-read at its load decisions; given back, the
 * cache grows again. */
static void test_dynamic_budget_sees_other_allocations(void **state) {
    (void)state;
    vc_backend *b = cuda_or_skip();
    size_t free_b = 0, total = 0;
    assert_int_equal(vc_backend_mem_info(b, &free_b, &total), VC_OK);
    const size_t room = 512 * MB, working = 256 * MB;
    void *blocker = NULL;
    assert_true(free_b > room + working + 256 * MB);
    assert_int_equal(cudaMalloc(&blocker, free_b - room - working), cudaSuccess);
    vc_cache_options o;
    vc_cache_options_init(&o);
    o.backend = b;
    o.ram_budget = 64 * MB;
    o.working_mem = working;
    o.arena_segment_bytes = 64 * MB;
    vc_cache *c;
    assert_int_equal(vc_cache_create(&o, &c), VC_OK);
    vc_model_id m = add_model(c, "m");
    unsigned char *w;
    assert_int_equal(cudaHostAlloc((void **)&w, 8 * 128 * MB, 0), cudaSuccess);
    vc_layer_id l[8];
    for (int i = 0; i < 8; i++) {
        fill_pattern(w + (size_t)i * 128 * MB, 4096, (uint64_t)i);
        l[i] = add_host_layer(c, m, "l", w + (size_t)i * 128 * MB, 128 * MB);
    }
    cudaStream_t s;
    assert_int_equal(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), cudaSuccess);
    unsigned char head[4096];
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < 8; i++) {
            void *p;
            assert_int_equal(vc_layer_acquire(c, l[i], s, &p), VC_OK);
            assert_int_equal(cudaMemcpyAsync(head, p, sizeof head, cudaMemcpyDeviceToHost, s), cudaSuccess);
            assert_int_equal(cudaStreamSynchronize(s), cudaSuccess);
            assert_true(check_pattern(head, sizeof head, (uint64_t)i));
            assert_int_equal(vc_layer_release(c, l[i], s), VC_OK);
        }
    vc_stats st = get_stats(c);
    assert_true(st.arena_peak_bytes <= room); /* what the other allocation left, less working memory */
    assert_true(st.vram_limit <= room);
    assert_int_equal(cudaStreamSynchronize(s), cudaSuccess);
    cudaFree(blocker); /* the other program exits */
    for (int pass = 0; pass < 3; pass++) /* the budget is re-read at loads; the plan follows a pass later */
        for (int i = 0; i < 8; i++) {
            void *p;
            assert_int_equal(vc_layer_acquire(c, l[i], s, &p), VC_OK);
            assert_int_equal(vc_layer_release(c, l[i], s), VC_OK);
        }
    st = get_stats(c);
    assert_true(st.vram_limit > 8 * 128 * MB); /* re-read: now the whole set fits */
    assert_int_equal(st.layers_in_vram, 8);
    cudaStreamSynchronize(s);
    cudaStreamDestroy(s);
    assert_int_equal(vc_cache_destroy(c), VC_OK);
    cudaFreeHost(w);
    vc_backend_destroy(b);
}

/* An explicit VRAM budget above the GPU's memory less the working memory (the seed's "max safe
 * value") is warned about when the cache is created; one within it is not. */
static int safe_value_warnings;

static void count_safe_value_warnings(void *user, vc_log_level level, const char *message) {
    (void)user;
    if (level == VC_LOG_WARN && strstr(message, "largest safe value")) safe_value_warnings++;
}

static void test_unsafe_vram_budget_is_warned(void **state) {
    (void)state;
    vc_backend *b = cuda_or_skip();
    size_t free_b = 0, total = 0;
    assert_int_equal(vc_backend_mem_info(b, &free_b, &total), VC_OK);
    for (int unsafe = 0; unsafe < 2; unsafe++) {
        vc_cache_options o;
        vc_cache_options_init(&o);
        o.backend = b;
        o.ram_budget = 64 * MB;
        o.working_mem = 256 * MB;
        o.vram_budget = unsafe ? total - 128 * MB : total - 512 * MB;
        o.log_fn = count_safe_value_warnings;
        safe_value_warnings = 0;
        vc_cache *c;
        assert_int_equal(vc_cache_create(&o, &c), VC_OK);
        assert_int_equal(safe_value_warnings, unsafe);
        assert_int_equal(vc_cache_destroy(c), VC_OK);
    }
    vc_backend_destroy(b);
}

/* VRAMCACHE_EVENT_TIMING=1: a trace of a real run shows each copy as it ran on the device (its
 * events stamped by the GPU), not at issue time. 32 MB uploads through a 64 MB budget: every span
 * must last about what the link allows (between 0.5 and 100 GB/s), none may have no duration. */
static void test_trace_has_device_times(void **state) {
    (void)state;
    setenv("VRAMCACHE_EVENT_TIMING", "1", 1);
    vc_backend *b = NULL;
    int ok = vc_backend_cuda_create(0, &b, no_gpu_reason, sizeof no_gpu_reason) == VC_OK;
    unsetenv("VRAMCACHE_EVENT_TIMING");
    if (!ok) {
        print_message("SKIPPED (no CUDA device): %s\n", no_gpu_reason);
        skip();
    }
    vc_cache *c = gpu_cache(b, 64 * MB, 1);
    char path[] = "/tmp/vc_gpu_trace_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    assert_int_equal(vc_cache_trace_start(c, path), VC_OK);
    vc_model_id m = add_model(c, "m");
    test_loader ld[6];
    vc_layer_id l[6];
    add_loader_layers(c, m, "l", 6, 32 * MB, ld, l);
    cudaStream_t s;
    assert_int_equal(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), cudaSuccess);
    for (int pass = 0; pass < 3; pass++)
        for (int i = 0; i < 6; i++) {
            void *p;
            assert_int_equal(vc_layer_acquire(c, l[i], s, &p), VC_OK);
            assert_int_equal(vc_layer_release(c, l[i], s), VC_OK);
        }
    assert_int_equal(cudaStreamSynchronize(s), cudaSuccess);
    assert_int_equal(vc_cache_trace_stop(c), VC_OK);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    char line[1024];
    int copies = 0;
    while (fgets(line, sizeof line, f)) {
        if (!strstr(line, "\"cat\":\"upload\"") && !strstr(line, "\"cat\":\"prefetch\"")) continue;
        const char *ts = strstr(line, "\"ts\":");
        double t0 = -1, dur = -1;
        assert_non_null(ts);
        assert_int_equal(sscanf(ts, "\"ts\":%lf,\"dur\":%lf", &t0, &dur), 2);
        double gbps = 32.0 * MB / (dur * 1e-6) / 1e9;
        if (!(t0 >= 0 && dur > 0 && gbps > 0.5 && gbps < 100)) fail_msg("copy drawn at %g us for %g us: %s", t0, dur, line);
        copies++;
    }
    fclose(f);
    remove(path);
    assert_true(copies >= 12);
    cudaStreamDestroy(s);
    assert_int_equal(vc_cache_destroy(c), VC_OK);
    vc_backend_destroy(b);
}

/* A cache on a second GPU, driven from a thread whose current device is the first (an engine that
 * drives several GPUs from one thread): every call leaves the caller's current device as it was, the
 * cache's memory is on its own device, and the engine's stream of that device sees the weights,
 * pageable ones (staged) included.
 * Skipped with fewer than two devices (on the fake CUDA runtime there are two). */
static void test_second_device_keeps_the_callers_device(void **state) {
    (void)state;
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess || count < 2) {
        cudaGetLastError();
        print_message("SKIPPED (needs two CUDA devices, found %d)\n", count);
        skip();
    }
    assert_int_equal(cudaSetDevice(0), cudaSuccess);
    vc_backend *b = NULL;
    char why[256];
    assert_int_equal(vc_backend_cuda_create(1, &b, why, sizeof why), VC_OK);
    int dev = -1;
    assert_int_equal(cudaGetDevice(&dev), cudaSuccess);
    assert_int_equal(dev, 0);
    vc_cache *c = gpu_cache(b, 8 * MB, 0); /* keep_ram_copy off: write-backs too */
    vc_model_id m = add_model(c, "m");
    test_loader ld[5];
    vc_layer_id l[5];
    add_loader_layers(c, m, "l", 4, 3 * MB, ld, l);
    /* the engine's own malloc'ed weights: pageable, so uploaded through the backend's staging ring */
    unsigned char *engine = malloc(3 * MB);
    assert_non_null(engine);
    ld[4] = (test_loader){.seed = 77};
    fill_pattern(engine, 3 * MB, ld[4].seed);
    l[4] = add_host_layer(c, m, "pageable", engine, 3 * MB);
    cudaStream_t s1;
    assert_int_equal(cudaSetDevice(1), cudaSuccess);
    assert_int_equal(cudaStreamCreateWithFlags(&s1, cudaStreamNonBlocking), cudaSuccess);
    assert_int_equal(cudaSetDevice(0), cudaSuccess);
    unsigned char *host = malloc(3 * MB);
    assert_non_null(host);
    for (int r = 0; r < 3; r++)
        for (int i = 0; i < 5; i++) {
            void *p;
            assert_int_equal(vc_layer_acquire(c, l[i], s1, &p), VC_OK);
            struct cudaPointerAttributes attr;
            assert_int_equal(cudaPointerGetAttributes(&attr, p), cudaSuccess);
            assert_int_equal(attr.type, cudaMemoryTypeDevice);
            assert_int_equal(attr.device, 1);
            assert_int_equal(cudaMemcpyAsync(host, p, 3 * MB, cudaMemcpyDeviceToHost, s1), cudaSuccess);
            assert_int_equal(vc_layer_release(c, l[i], s1), VC_OK);
            assert_int_equal(cudaStreamSynchronize(s1), cudaSuccess);
            assert_true(check_pattern(host, 3 * MB, ld[i].seed));
            assert_int_equal(cudaGetDevice(&dev), cudaSuccess);
            assert_int_equal(dev, 0);
        }
    vc_reservation *res;
    assert_int_equal(vc_reserve_working_mem(c, 4 * MB, VC_RESERVE_BUFFER, &res), VC_OK);
    struct cudaPointerAttributes attr;
    assert_int_equal(cudaPointerGetAttributes(&attr, vc_reservation_ptr(res)), cudaSuccess);
    assert_int_equal(attr.device, 1);
    assert_int_equal(vc_release_working_mem(c, res), VC_OK);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(vc_layer_offload(c, l[i], VC_OFFLOAD_VRAM), VC_OK);
        assert_int_equal(vc_layer_read(c, l[i], host, 3 * MB), VC_OK);
        assert_true(check_pattern(host, 3 * MB, ld[i].seed));
    }
    assert_int_equal(cudaGetDevice(&dev), cudaSuccess);
    assert_int_equal(dev, 0);
    free(host);
    assert_int_equal(cudaSetDevice(1), cudaSuccess);
    cudaStreamDestroy(s1);
    assert_int_equal(cudaSetDevice(0), cudaSuccess);
    assert_int_equal(vc_cache_destroy(c), VC_OK);
    free(engine);
    vc_backend_destroy(b);
    assert_int_equal(cudaGetDevice(&dev), cudaSuccess);
    assert_int_equal(dev, 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_auto_falls_back_and_says_why),
        cmocka_unit_test(test_explicit_device_unavailable_is_clear),
        cmocka_unit_test(test_backend_open_by_name),
        cmocka_unit_test(test_core_on_cuda),
        cmocka_unit_test(test_eviction_waits_for_queued_reads),
        cmocka_unit_test(test_stream_ordered_reservations),
        cmocka_unit_test(test_pageable_sources_beyond_the_staging_ring),
        cmocka_unit_test(test_dynamic_budget_sees_other_allocations),
        cmocka_unit_test(test_unsafe_vram_budget_is_warned),
        cmocka_unit_test(test_trace_has_device_times),
        cmocka_unit_test(test_second_device_keeps_the_callers_device),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
