/* Status codes, strings, version, and where error messages go. */
#include <stdio.h>

#include "test_util.h"

static void test_strerror_covers_every_code(void **state) {
    (void)state;
    static const int codes[] = {
#define X_(name, code, text) code,
        VC_STATUS_MAP(X_)
#undef X_
    };
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++) {
        assert_string_not_equal(vc_strerror(codes[i]), "unknown status");
        assert_string_not_equal(vc_status_name(codes[i]), "UNKNOWN");
        if (codes[i] != 0) assert_true(codes[i] < 0);
    }
    assert_string_equal(vc_strerror(VC_OK), "success");
    assert_string_equal(vc_status_name(VC_ERR_OUT_OF_VRAM), "ERR_OUT_OF_VRAM");
    assert_string_equal(vc_strerror(12345), "unknown status");
    assert_string_equal(vc_status_name(-999), "UNKNOWN");
}

static void test_version(void **state) {
    (void)state;
    assert_int_equal(vc_version(), VC_VERSION_NUMBER);
    char expect[32];
    snprintf(expect, sizeof expect, "%d.%d.%d", VC_VERSION_MAJOR, VC_VERSION_MINOR, VC_VERSION_PATCH);
    assert_string_equal(vc_version_string(), expect);
}

static void test_evict_reason_names(void **state) {
    (void)state;
    for (int r = 0; r < VC_EVICT_REASON_COUNT; r++) assert_string_not_equal(vc_evict_reason_name(r), "unknown");
    assert_string_equal(vc_evict_reason_name(-1), "unknown");
    assert_string_equal(vc_evict_reason_name(VC_EVICT_REASON_COUNT), "unknown");
}

static void test_thread_error_without_handle(void **state) {
    (void)state;
    assert_int_equal(vc_cache_create(NULL, NULL), VC_ERR_INVALID_ARG);
    assert_non_null(strstr(vc_last_error(), "vc_cache_create"));
    vc_cache_options o;
    vc_cache_options_init(&o);
    o.struct_size = 8;
    vc_cache *c = (vc_cache *)0x1;
    assert_int_equal(vc_cache_create(&o, &c), VC_ERR_INVALID_ARG);
    assert_null(c);
    assert_non_null(strstr(vc_last_error(), "struct_size"));
    /* from a newer header than this library: refused, not half-read */
    vc_cache_options_init(&o);
    o.struct_size = sizeof o + 8;
    assert_int_equal(vc_cache_create(&o, &c), VC_ERR_INVALID_ARG);
    assert_non_null(strstr(vc_last_error(), "newer header"));
}

/* The init writes only the caller's bytes (an older program's structure is smaller than ours), and
 * the function form matches the macro. */
static void test_options_init_sized(void **state) {
    (void)state;
    unsigned char buf[sizeof(vc_cache_options) + 32];
    memset(buf, 0xAB, sizeof buf);
    vc_cache_options_init_sized((vc_cache_options *)(void *)buf, sizeof(vc_cache_options) - 8);
    for (size_t i = sizeof(vc_cache_options) - 8; i < sizeof buf; i++) assert_int_equal(buf[i], 0xAB);
    vc_cache_options a, b;
    vc_cache_options_init(&a);
    (vc_cache_options_init)(&b);
    assert_int_equal(a.struct_size, sizeof a);
    assert_memory_equal(&a, &b, sizeof a);
    assert_int_equal(a.working_mem, (size_t)3 << 30);
    assert_int_equal(a.prefetch_depth, 8);
    vc_cache_options_init_sized(NULL, sizeof a); /* no-op */
}

/* Stats and layer info are written only as far as the caller's structure goes (the macros pass
 * its size); a size the library does not know is refused without writing. */
static void test_sized_outputs(void **state) {
    (void)state;
    test_cache t = make_cache(1 * MB, 1 * MB, 1);
    static char w[4096];
    vc_model_id m = add_model(t.cache, "m");
    vc_layer_id l = add_host_layer(t.cache, m, "l", w, sizeof w);
    union {
        vc_stats s;
        unsigned char b[sizeof(vc_stats) + 16];
    } u;
    memset(&u, 0xab, sizeof u);
    assert_int_equal(vc_cache_get_stats(t.cache, &u.s), VC_OK);
    for (size_t i = sizeof(vc_stats); i < sizeof u.b; i++) assert_int_equal(u.b[i], 0xab);
    assert_int_equal(u.s.layers, 1);
    vc_stats f;
    assert_int_equal((vc_cache_get_stats)(t.cache, &f), VC_OK); /* the function: this header's size */
    assert_int_equal(f.layers, 1);
    memset(&u, 0xab, sizeof u);
    assert_int_equal(vc_cache_get_stats_sized(t.cache, &u.s, sizeof(vc_stats) + 8), VC_ERR_INVALID_ARG);
    assert_non_null(strstr(vc_last_error(), "newer header"));
    assert_int_equal(vc_cache_get_stats_sized(t.cache, &u.s, sizeof(vc_stats) - 8), VC_ERR_INVALID_ARG);
    for (size_t i = 0; i < sizeof u.b; i++) assert_int_equal(u.b[i], 0xab);
    union {
        vc_layer_info info;
        unsigned char b[sizeof(vc_layer_info) + 16];
    } v;
    memset(&v, 0xab, sizeof v);
    assert_int_equal(vc_layer_get_info(t.cache, l, &v.info), VC_OK);
    for (size_t i = sizeof(vc_layer_info); i < sizeof v.b; i++) assert_int_equal(v.b[i], 0xab);
    assert_string_equal(v.info.name, "l");
    assert_int_equal(v.info.bytes, sizeof w);
    vc_layer_info g;
    assert_int_equal((vc_layer_get_info)(t.cache, l, &g), VC_OK);
    assert_int_equal(g.model, m);
    memset(&v, 0xab, sizeof v);
    assert_int_equal(vc_layer_get_info_sized(t.cache, l, &v.info, 3), VC_ERR_INVALID_ARG);
    assert_int_equal(vc_layer_get_info_sized(t.cache, l, &v.info, sizeof(vc_layer_info) + 1), VC_ERR_INVALID_ARG);
    for (size_t i = 0; i < sizeof v.b; i++) assert_int_equal(v.b[i], 0xab);
    free_cache(&t);
}

static void test_cache_error_is_per_handle(void **state) {
    (void)state;
    test_cache a = make_cache(1 * MB, 1 * MB, 1), b = make_cache(1 * MB, 1 * MB, 1);
    char buf[256];
    assert_int_equal(vc_cache_last_error(a.cache, buf, sizeof buf), VC_OK);
    assert_string_equal(buf, "");
    assert_int_equal(vc_layer_release(a.cache, 42, NULL), VC_ERR_NOT_FOUND);
    assert_int_equal(vc_cache_last_error(a.cache, buf, sizeof buf), VC_ERR_NOT_FOUND);
    assert_non_null(strstr(buf, "vc_layer_release"));
    assert_int_equal(vc_cache_last_error(b.cache, buf, sizeof buf), VC_OK);
    /* a tiny buffer is still terminated */
    char small[4];
    vc_cache_last_error(a.cache, small, sizeof small);
    assert_int_equal(strlen(small), 3);
    assert_int_equal(vc_cache_last_error(NULL, buf, sizeof buf), VC_ERR_INVALID_ARG);
    free_cache(&a);
    free_cache(&b);
}

typedef struct log_capture {
    int lines[4];
    char last[512];
} log_capture;

static void capture(void *user, vc_log_level level, const char *msg) {
    log_capture *lc = user;
    lc->lines[level]++;
    snprintf(lc->last, sizeof lc->last, "%s", msg);
}

static void test_log_levels_filter(void **state) {
    (void)state;
    log_capture lc = {0};
    vc_cache_options o;
    vc_cache_options_init(&o);
    o.log_fn = capture;
    o.log_user = &lc;
    o.log_level = VC_LOG_INFO;
    o.ram_budget = VC_SIZE_AUTO; /* logs the computed budget and its rules at INFO */
    test_cache t = make_cache_opts(1 * MB, &o);
    assert_true(lc.lines[VC_LOG_INFO] >= 2);
    assert_int_equal(lc.lines[VC_LOG_DEBUG], 0);
    free_cache(&t);

    memset(&lc, 0, sizeof lc);
    o.log_level = VC_LOG_ERROR;
    t = make_cache_opts(1 * MB, &o);
    assert_int_equal(lc.lines[VC_LOG_INFO], 0);
    free_cache(&t);

    o.log_level = (vc_log_level)9;
    vc_cache *c = NULL;
    assert_int_equal(vc_cache_create(&o, &c), VC_ERR_INVALID_ARG);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_strerror_covers_every_code),
        cmocka_unit_test(test_version),
        cmocka_unit_test(test_evict_reason_names),
        cmocka_unit_test(test_thread_error_without_handle),
        cmocka_unit_test(test_options_init_sized),
        cmocka_unit_test(test_sized_outputs),
        cmocka_unit_test(test_cache_error_is_per_handle),
        cmocka_unit_test(test_log_levels_filter),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
