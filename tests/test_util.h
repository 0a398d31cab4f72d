/* Helpers shared by the test executables: caches over a backend of a given size, layers whose
 * bytes follow a known pattern, and loaders that can be told to fail.
 *
 * The backend under test: the host backend, unless VC_TEST_BACKEND=cuda, in which case the same
 * tests run on CUDA device 0 seen through a capacity cap of the fault wrapper (so a test's "device of
 * 256 KB" is 256 KB of real VRAM), or VC_TEST_BACKEND=sim: the simulated device with real bytes
 * behind the same cap, whose ordering check must see no hazard by the time the test destroys it
 * (the host backend's copies finish when called; the simulator's run on streams, as a GPU's do).
 * On either device memory is read and written only through the backend's copies (check_device /
 * fill_device), never dereferenced. */
#ifndef VC_TEST_UTIL_H
#define VC_TEST_UTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "vramcache.h"
#include "vramcache_backend.h"
#include "vramcache_fault.h"
#include "vramcache_config.h"
#include "vramcache_sim.h"

#define KB ((size_t)1024)
#define MB ((size_t)1 << 20)
#define GB ((size_t)1 << 30)

/* Byte i of layer `seed` — different for every layer and position. */
static inline uint8_t pattern_byte(uint64_t seed, size_t i) {
    uint64_t x = (seed + 1) * 0x9E3779B97F4A7C15ull + i * 0xBF58476D1CE4E5B9ull;
    x ^= x >> 29;
    return (uint8_t)(x ^ (x >> 17));
}

static inline void fill_pattern(void *dst, size_t n, uint64_t seed) {
    uint8_t *p = dst;
    for (size_t i = 0; i < n; i++) p[i] = pattern_byte(seed, i);
}

static inline int check_pattern(const void *src, size_t n, uint64_t seed) {
    const uint8_t *p = src;
    for (size_t i = 0; i < n; i++)
        if (p[i] != pattern_byte(seed, i)) return 0;
    return 1;
}

/* Loader context: fills the pattern of `seed`; fails while fail_next > 0 (counting down). */
typedef struct test_loader {
    uint64_t seed;
    int fail_next;
    int calls;
} test_loader;

static inline int test_loader_fn(void *user, vc_layer_id layer, void *dst, size_t bytes) {
    (void)layer;
    test_loader *t = user;
    t->calls++;
    if (t->fail_next > 0) {
        t->fail_next--;
        return -5;
    }
    fill_pattern(dst, bytes, t->seed);
    return 0;
}

/* ---- the backend under test ------------------------------------------------------------------ */

static inline int test_on_cuda(void) {
    const char *b = getenv("VC_TEST_BACKEND");
    return b && strcmp(b, "cuda") == 0;
}

static inline int test_on_sim(void) {
    const char *b = getenv("VC_TEST_BACKEND");
    return b && strcmp(b, "sim") == 0;
}

/* A device other than the host backend: its memory is reached through copies. */
static inline int test_on_device(void) { return test_on_cuda() || test_on_sim(); }

/* A GPU backend the way an engine gets one: through the `device` setting (the run-time module, or a
 * backend linked in statically). */
static inline int test_gpu_backend(const char *device, vc_backend **out, char *why, size_t why_size) {
    vc_config *cfg;
    assert_int_equal(vc_config_create(&cfg), VC_OK);
    assert_int_equal(vc_config_set(cfg, VC_CFG_DEVICE, device), VC_OK);
    int st = vc_config_create_backend(cfg, out, why, why_size);
    vc_config_destroy(cfg);
    return st;
}

/* The CUDA or simulated backends behind capped wrappers, so test_backend_destroy can free both. */
static struct {
    vc_backend *wrapper, *inner;
} test_wrapped[64];

/* A device of `capacity` bytes: the host backend, or a capped CUDA device (see the top). A test run
 * that asks for CUDA and cannot have it fails rather than skips: it was asked for explicitly.
 * `cuda_index` picks the CUDA device (tests that want a second GPU fall back to 0 without one). */
static inline vc_backend *test_backend_create_on(size_t capacity, int cuda_index) {
    vc_backend *b = NULL;
    if (!test_on_device()) {
        assert_int_equal(vc_backend_host_create(capacity, &b), VC_OK);
        return b;
    }
    static int said;
    vc_backend *cuda = NULL; /* the device under the cap: CUDA's or the simulator's */
    char why[256];
    if (test_on_sim()) {
        vc_sim_params sp;
        vc_sim_params_init(&sp);
        sp.device_bytes = capacity < SIZE_MAX / 2 ? 2 * capacity + MB : SIZE_MAX; /* the cap bounds it */
        sp.h2d_bytes_per_s = sp.d2h_bytes_per_s = 1e9;
        sp.copy_latency_s = 1e-6;
        assert_int_equal(vc_backend_sim_create(&sp, &cuda), VC_OK);
        snprintf(why, sizeof why, "the simulated device, ordering checked");
    } else {
        char dev[16];
        snprintf(dev, sizeof dev, "cuda:%d", cuda_index);
        if (cuda_index > 0 && test_gpu_backend(dev, &cuda, why, sizeof why) != VC_OK) snprintf(dev, sizeof dev, "cuda:0");
        if (!cuda && test_gpu_backend(dev, &cuda, why, sizeof why) != VC_OK) fail_msg("VC_TEST_BACKEND=cuda: %s", why);
    }
    if (!said++) print_message("backend under test: %s (capped per test)\n", why);
    assert_int_equal(vc_backend_fault_create(cuda, &b), VC_OK);
    assert_int_equal(vc_fault_set_device_capacity(b, capacity, 0), VC_OK);
    size_t i = 0;
    while (i < 64 && test_wrapped[i].wrapper) i++;
    assert_true(i < 64);
    test_wrapped[i].wrapper = b;
    test_wrapped[i].inner = cuda;
    return b;
}

static inline vc_backend *test_backend_create(size_t capacity) { return test_backend_create_on(capacity, 0); }

static inline void test_backend_destroy(vc_backend *b) {
    vc_backend_destroy(b);
    for (size_t i = 0; i < 64; i++)
        if (b && test_wrapped[i].wrapper == b) {
            char msg[384];
            if (test_on_sim() && vc_sim_hazards(test_wrapped[i].inner, msg, sizeof msg)) fail_msg("%s", msg);
            vc_backend_destroy(test_wrapped[i].inner);
            test_wrapped[i].wrapper = test_wrapped[i].inner = NULL;
        }
}

/* Other processes' use of the device, as the host backend's external usage or the cap's. */
static inline void test_set_external_usage(vc_backend *b, size_t capacity, size_t bytes) {
    if (test_on_device())
        assert_int_equal(vc_fault_set_device_capacity(b, capacity, bytes), VC_OK);
    else
        assert_int_equal(vc_backend_host_set_external_usage(b, bytes), VC_OK);
}

/* Waits until the work queued on the legacy default stream has finished. */
static inline void test_default_stream_sync(vc_backend *b) {
    const vc_backend_ops *ops = vc_backend_get_ops(b);
    void *ctx = vc_backend_get_ctx(b), *ev = NULL;
    assert_int_equal(ops->event_create(ctx, &ev), VC_OK);
    assert_int_equal(ops->event_record(ctx, ev, NULL), VC_OK);
    assert_int_equal(ops->event_synchronize(ctx, ev), VC_OK);
    ops->event_destroy(ctx, ev);
}

/* Copies `n` device bytes at `dptr` into `dst` on the legacy default stream (ordered after the
 * upload the engine's NULL stream waited for) and waits for them. */
static inline void test_device_read(vc_backend *b, void *dst, const void *dptr, size_t n) {
    assert_int_equal(vc_backend_get_ops(b)->copy_d2h(vc_backend_get_ctx(b), dst, dptr, n, NULL), VC_OK);
    test_default_stream_sync(b);
}

/* Applies a host-side check (check_pattern or the like) to device memory of cache `c` (the pointer
 * an acquire returned), reading it through the backend when the device is real. */
typedef int (*test_check_fn)(const void *p, size_t n, uint64_t seed);

static inline int check_device_by(vc_cache *c, const void *dptr, size_t n, uint64_t seed, test_check_fn check) {
    if (!test_on_device()) return check(dptr, n, seed);
    void *buf = malloc(n ? n : 1);
    assert_non_null(buf);
    test_device_read(vc_cache_backend(c), buf, dptr, n);
    int ok = check(buf, n, seed);
    free(buf);
    return ok;
}

static inline int check_device(vc_cache *c, const void *dptr, size_t n, uint64_t seed) {
    return check_device_by(c, dptr, n, seed, check_pattern);
}

/* memset for device memory of cache `c` (a reservation's buffer). */
static inline void fill_device(vc_cache *c, void *dptr, int byte, size_t n) {
    if (!test_on_device()) {
        memset(dptr, byte, n);
        return;
    }
    vc_backend *b = vc_cache_backend(c);
    void *buf = malloc(n ? n : 1);
    assert_non_null(buf);
    memset(buf, byte, n);
    assert_int_equal(vc_backend_get_ops(b)->copy_h2d(vc_backend_get_ctx(b), dptr, buf, n, NULL), VC_OK);
    test_default_stream_sync(b);
    free(buf);
}

/* A cache over its own backend with `device` bytes of "VRAM". Explicit budgets unless AUTO. */
typedef struct test_cache {
    vc_backend *backend;
    vc_cache *cache;
} test_cache;

static inline test_cache make_cache_opts(size_t device, vc_cache_options *o) {
    test_cache t = {0};
    t.backend = test_backend_create(device);
    o->backend = t.backend;
    assert_int_equal(vc_cache_create(o, &t.cache), VC_OK);
    return t;
}

/* Defaults for small tests: dynamic VRAM budget, no standing working memory, 64 KB segments,
 * RAM budget `ram`. */
static inline test_cache make_cache(size_t device, size_t ram, int keep_ram_copy) {
    vc_cache_options o;
    vc_cache_options_init(&o);
    o.ram_budget = ram;
    o.working_mem = 0;
    o.keep_ram_copy = keep_ram_copy;
    o.arena_segment_bytes = 64 * KB;
    return make_cache_opts(device, &o);
}

static inline void free_cache(test_cache *t) {
    assert_int_equal(vc_cache_destroy(t->cache), VC_OK);
    test_backend_destroy(t->backend);
}

static inline vc_layer_id add_loader_layer(vc_cache *c, vc_model_id m, const char *name, size_t bytes,
                                           test_loader *ld) {
    vc_layer_desc d = {.name = name, .bytes = bytes, .loader = test_loader_fn, .loader_user = ld};
    vc_layer_id id = 0;
    assert_int_equal(vc_layer_register(c, m, &d, &id), VC_OK);
    return id;
}

/* n layers of `bytes` each in model m, named `name`, layer i loaded by ld[i], which fills the
 * pattern of seed i + 1; their ids in ids[0..n). */
static inline void add_loader_layers(vc_cache *c, vc_model_id m, const char *name, int n, size_t bytes,
                                     test_loader *ld, vc_layer_id *ids) {
    for (int i = 0; i < n; i++) {
        ld[i] = (test_loader){.seed = (uint64_t)i + 1};
        ids[i] = add_loader_layer(c, m, name, bytes, &ld[i]);
    }
}

static inline vc_layer_id add_host_layer(vc_cache *c, vc_model_id m, const char *name, const void *p,
                                         size_t bytes) {
    vc_layer_desc d = {.name = name, .bytes = bytes, .host_ptr = p};
    vc_layer_id id = 0;
    assert_int_equal(vc_layer_register(c, m, &d, &id), VC_OK);
    return id;
}

static inline vc_model_id add_model(vc_cache *c, const char *name) {
    vc_model_id m = 0;
    assert_int_equal(vc_model_register(c, name, &m), VC_OK);
    return m;
}

static inline vc_stats get_stats(vc_cache *c) {
    vc_stats s;
    assert_int_equal(vc_cache_get_stats(c, &s), VC_OK);
    return s;
}

static inline vc_residency residency(vc_cache *c, vc_layer_id l) {
    vc_layer_info i;
    assert_int_equal(vc_layer_get_info(c, l, &i), VC_OK);
    return i.residency;
}

/* The message of the last error on c contains `needle`. */
static inline int last_error_has(vc_cache *c, const char *needle) {
    char buf[4096];
    vc_cache_last_error(c, buf, sizeof buf);
    return strstr(buf, needle) != NULL;
}

#endif
