/* Helpers shared by the test executables: caches over a host backend of a given size, layers whose
 * bytes follow a known pattern, and loaders that can be told to fail. */
#ifndef VC_TEST_UTIL_H
#define VC_TEST_UTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "vramcache.h"
#include "vramcache_backend.h"

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

/* A cache over its own host backend with `device` bytes of "VRAM". Explicit budgets unless AUTO. */
typedef struct test_cache {
    vc_backend *backend;
    vc_cache *cache;
} test_cache;

static inline test_cache make_cache_opts(size_t device, vc_cache_options *o) {
    test_cache t = {0};
    assert_int_equal(vc_backend_host_create(device, &t.backend), VC_OK);
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
    vc_backend_destroy(t->backend);
}

static inline vc_layer_id add_loader_layer(vc_cache *c, vc_model_id m, const char *name, size_t bytes,
                                           test_loader *ld) {
    vc_layer_desc d = {.name = name, .bytes = bytes, .loader = test_loader_fn, .loader_user = ld};
    vc_layer_id id = 0;
    assert_int_equal(vc_layer_register(c, m, &d, &id), VC_OK);
    return id;
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
    char buf[512];
    vc_cache_last_error(c, buf, sizeof buf);
    return strstr(buf, needle) != NULL;
}

#endif
