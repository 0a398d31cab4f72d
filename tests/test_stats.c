/* Statistics getter, printer, and the log_memory_usage snapshots. */
#include <stdio.h>

#include "test_util.h"

typedef struct sink {
    char text[8192];
    int info_lines;
    int load_lines, unload_lines;
    char last_load[512];
} sink;

static void print_sink(void *user, const char *text) {
    sink *s = user;
    strncat(s->text, text, sizeof s->text - strlen(s->text) - 1);
}

static void log_sink(void *user, vc_log_level level, const char *msg) {
    sink *s = user;
    if (level == VC_LOG_INFO) s->info_lines++;
    if (strncmp(msg, "loaded layer", 12) == 0) {
        s->load_lines++;
        snprintf(s->last_load, sizeof s->last_load, "%s", msg);
    }
    if (strncmp(msg, "unloaded layer", 14) == 0) s->unload_lines++;
}

static void test_counters_and_peaks(void **state) {
    (void)state;
    test_cache t = make_cache(64 * KB, 1 * MB, 1);
    vc_model_id m = add_model(t.cache, "m");
    test_loader ld[3] = {{.seed = 1}, {.seed = 2}, {.seed = 3}};
    vc_layer_id l[3];
    for (int i = 0; i < 3; i++) l[i] = add_loader_layer(t.cache, m, "l", 30 * KB, &ld[i]);
    void *p;
    for (int i = 0; i < 3; i++) {
        assert_int_equal(vc_layer_acquire(t.cache, l[i], NULL, &p), VC_OK);
        assert_int_equal(vc_layer_release(t.cache, l[i], NULL), VC_OK);
    }
    vc_stats s = get_stats(t.cache);
    assert_int_equal(s.misses, 3);
    assert_int_equal(s.hits, 0);
    assert_int_equal(s.loads, 3);
    assert_int_equal(s.bytes_loaded, 90 * KB);
    assert_int_equal(s.bytes_h2d, 90 * KB);
    assert_int_equal(s.ram_bytes, 90 * KB);
    assert_int_equal(s.ram_peak_bytes, 90 * KB);
    assert_int_equal(s.vram_bytes, 60 * KB);          /* two fit in 64 KB */
    assert_int_equal(s.vram_peak_bytes, 60 * KB);
    assert_int_equal(s.vram_evictions[VC_EVICT_FOR_LOAD], 1);
    assert_int_equal(s.layers_in_vram, 2);
    assert_int_equal(s.layers_in_ram, 3);
    assert_int_equal(s.layers_held, 0);
    assert_true(s.arena_peak_bytes <= 64 * KB);
    assert_int_equal(vc_layer_offload(t.cache, l[2], VC_OFFLOAD_ALL), VC_OK);
    s = get_stats(t.cache);
    assert_int_equal(s.ram_bytes, 60 * KB);
    assert_int_equal(s.ram_peak_bytes, 90 * KB); /* peaks stay */
    free_cache(&t);
}

static void test_printer(void **state) {
    (void)state;
    test_cache t = make_cache(64 * KB, 1 * MB, 1);
    static char w[1000];
    vc_layer_id l = add_host_layer(t.cache, add_model(t.cache, "m"), "l", w, sizeof w);
    void *p;
    vc_layer_acquire(t.cache, l, NULL, &p);
    vc_layer_release(t.cache, l, NULL);
    sink s;
    memset(&s, 0, sizeof s);
    assert_int_equal(vc_cache_print_stats(t.cache, print_sink, &s), VC_OK);
    assert_non_null(strstr(s.text, "RAM pool"));
    assert_non_null(strstr(s.text, "1 misses"));
    assert_non_null(strstr(s.text, "for_load=0"));
    assert_non_null(strstr(s.text, "region   : the planner's room\n"));
    char backend[64];
    snprintf(backend, sizeof backend, "backend %s", vc_backend_name(t.backend));
    assert_non_null(strstr(s.text, backend));
    free_cache(&t);
}

static void test_log_memory_usage(void **state) {
    (void)state;
    sink s;
    memset(&s, 0, sizeof s);
    vc_cache_options o;
    vc_cache_options_init(&o);
    o.ram_budget = 1 * MB;
    o.working_mem = 0;
    o.log_memory_usage = 1;
    o.log_fn = log_sink;
    o.log_user = &s;
    o.log_level = VC_LOG_INFO;
    o.arena_segment_bytes = 32 * KB;
    test_cache t = make_cache_opts(64 * KB, &o);
    vc_model_id m = add_model(t.cache, "m");
    static char w[3][30 * KB];
    void *p;
    for (int i = 0; i < 3; i++) {
        vc_layer_id l = add_host_layer(t.cache, m, "l", w[i], sizeof w[i]);
        vc_layer_acquire(t.cache, l, NULL, &p);
        vc_layer_release(t.cache, l, NULL);
    }
    assert_int_equal(s.load_lines, 3);
    assert_int_equal(s.unload_lines, 1);
    /* every number is its own: the layer's size, and the reservations (none) */
    if (!strstr(s.last_load, "(30720 B)") || !strstr(s.last_load, "working memory reserved 0 B"))
        fail_msg("snapshot: %s", s.last_load);
    free_cache(&t);

    /* off: no snapshots */
    memset(&s, 0, sizeof s);
    o.log_memory_usage = 0;
    t = make_cache_opts(64 * KB, &o);
    vc_layer_id l = add_host_layer(t.cache, add_model(t.cache, "m"), "l", w[0], sizeof w[0]);
    vc_layer_acquire(t.cache, l, NULL, &p);
    vc_layer_release(t.cache, l, NULL);
    assert_int_equal(s.load_lines, 0);
    free_cache(&t);
}

/* Profiler ranges (NVTX on CUDA, so Nsight Systems shows them): a backend with range_push/range_pop
 * gets one balanced range per upload, prefetch, eviction and reservation, named after the layer. */
typedef struct ranges {
    void *host_ctx;
    const vc_backend_ops *host;
    int depth, max_depth, pushes;
    char names[64][160];
} ranges;

static ranges g_ranges;

static void r_push(void *ctx, const char *name) {
    (void)ctx;
    if (g_ranges.pushes < 64) snprintf(g_ranges.names[g_ranges.pushes], 160, "%s", name);
    g_ranges.pushes++;
    if (++g_ranges.depth > g_ranges.max_depth) g_ranges.max_depth = g_ranges.depth;
}
static void r_pop(void *ctx) {
    (void)ctx;
    g_ranges.depth--;
}
static int seen(const char *name) {
    for (int i = 0; i < g_ranges.pushes && i < 64; i++)
        if (strcmp(g_ranges.names[i], name) == 0) return 1;
    return 0;
}

static void test_profiler_ranges(void **state) {
    (void)state;
    memset(&g_ranges, 0, sizeof g_ranges);
    vc_backend *host;
    assert_int_equal(vc_backend_host_create(64 * KB, &host), VC_OK);
    vc_backend_ops ops = *vc_backend_get_ops(host);
    ops.range_push = r_push;
    ops.range_pop = r_pop;
    ops.destroy = NULL; /* the host backend below is destroyed on its own */
    vc_backend *b;
    assert_int_equal(vc_backend_create(&ops, vc_backend_get_ctx(host), &b), VC_OK);
    vc_cache_options o;
    vc_cache_options_init(&o);
    o.backend = b;
    o.ram_budget = 1 * MB;
    o.working_mem = 0;
    o.arena_segment_bytes = 32 * KB;
    vc_cache *c;
    assert_int_equal(vc_cache_create(&o, &c), VC_OK);
    vc_model_id m = add_model(c, "unet");
    test_loader ld[3] = {{.seed = 1}, {.seed = 2}, {.seed = 3}};
    vc_layer_id l[3];
    l[0] = add_loader_layer(c, m, "conv_in", 32 * KB, &ld[0]);
    l[1] = add_loader_layer(c, m, "mid", 32 * KB, &ld[1]);
    l[2] = add_loader_layer(c, m, "conv_out", 32 * KB, &ld[2]);
    for (int i = 0; i < 3; i++) {
        void *p;
        assert_int_equal(vc_layer_acquire(c, l[i], NULL, &p), VC_OK);
        assert_int_equal(vc_layer_release(c, l[i], NULL), VC_OK);
    }
    vc_reservation *r;
    assert_int_equal(vc_reserve_working_mem(c, 16 * KB, 0, &r), VC_OK);
    assert_int_equal(vc_release_working_mem(c, r), VC_OK);
    assert_int_equal(vc_reserve_working_mem(c, 1 * MB, 0, &r), VC_ERR_OUT_OF_VRAM); /* a failure pops too */
    assert_true(seen("upload conv_in"));
    assert_true(seen("upload conv_out"));
    assert_true(seen("evict conv_in")); /* room for conv_out in a 64 KB device */
    assert_true(seen("reserve working memory"));
    assert_int_equal(g_ranges.depth, 0); /* every range closed */
    assert_true(g_ranges.max_depth <= 2); /* an eviction may nest inside an upload */
    assert_int_equal(vc_cache_destroy(c), VC_OK);
    vc_backend_destroy(b);
    vc_backend_destroy(host);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_counters_and_peaks),
        cmocka_unit_test(test_printer),
        cmocka_unit_test(test_profiler_ranges),
        cmocka_unit_test(test_log_memory_usage),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
