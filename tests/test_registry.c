/* Models and layers: registration, lookup, ids, and every bad input. */
#include <math.h>

#include "test_util.h"

static void test_register_and_find(void **state) {
    (void)state;
    test_cache t = make_cache(1 * MB, 1 * MB, 1);
    vc_model_id te = add_model(t.cache, "text_encoder"), unet = add_model(t.cache, "unet");
    assert_int_not_equal(te, 0);
    assert_int_not_equal(te, unet);
    vc_model_id found = 0;
    assert_int_equal(vc_model_find(t.cache, "unet", &found), VC_OK);
    assert_int_equal(found, unet);
    assert_int_equal(vc_model_find(t.cache, "vae", &found), VC_ERR_NOT_FOUND);
    assert_true(last_error_has(t.cache, "'vae'"));

    static char w[4096];
    test_loader ld = {.seed = 7};
    vc_layer_id a = add_host_layer(t.cache, unet, "down.0", w, sizeof w);
    vc_layer_id b = add_loader_layer(t.cache, unet, "down.1", 10000, &ld);
    vc_layer_info info;
    assert_int_equal(vc_layer_get_info(t.cache, a, &info), VC_OK);
    assert_string_equal(info.name, "down.0");
    assert_int_equal(info.model, unet);
    assert_int_equal(info.bytes, sizeof w);
    assert_int_equal(info.alignment, 256);
    assert_int_equal(info.residency, VC_RES_RAM); /* the borrowed pointer is a host copy */
    assert_int_equal(info.borrowed_source, 1);
    assert_int_equal(vc_layer_get_info(t.cache, b, &info), VC_OK);
    assert_int_equal(info.residency, VC_RES_NONE);
    assert_int_equal(ld.calls, 0); /* registration loads nothing */
    vc_stats s = get_stats(t.cache);
    assert_int_equal(s.models, 2);
    assert_int_equal(s.layers, 2);
    free_cache(&t);
}

static void test_bad_registrations(void **state) {
    (void)state;
    test_cache t = make_cache(1 * MB, 1 * MB, 1);
    vc_model_id m = add_model(t.cache, "m");
    vc_model_id dummy;
    assert_int_equal(vc_model_register(t.cache, "m", &dummy), VC_ERR_EXISTS);
    assert_true(last_error_has(t.cache, "already registered"));
    assert_int_equal(vc_model_register(t.cache, "", &dummy), VC_ERR_INVALID_ARG);
    assert_int_equal(vc_model_register(t.cache, NULL, &dummy), VC_ERR_INVALID_ARG);
    assert_int_equal(vc_model_register(NULL, "x", &dummy), VC_ERR_INVALID_ARG);
    assert_int_equal(vc_model_register(t.cache, "x", NULL), VC_ERR_INVALID_ARG);

    static char w[1024];
    test_loader ld = {0};
    vc_layer_id id;
    vc_layer_desc d = {.name = "l", .bytes = 0, .host_ptr = w};
    assert_int_equal(vc_layer_register(t.cache, m, &d, &id), VC_ERR_INVALID_ARG);
    assert_true(last_error_has(t.cache, "size 0"));
    d.bytes = sizeof w;
    d.loader = test_loader_fn; /* two sources */
    d.loader_user = &ld;
    assert_int_equal(vc_layer_register(t.cache, m, &d, &id), VC_ERR_INVALID_ARG);
    assert_true(last_error_has(t.cache, "both"));
    d.loader = NULL;
    d.host_ptr = NULL; /* no source */
    assert_int_equal(vc_layer_register(t.cache, m, &d, &id), VC_ERR_INVALID_ARG);
    assert_true(last_error_has(t.cache, "none"));
    d.host_ptr = w;
    d.alignment = 3000;
    assert_int_equal(vc_layer_register(t.cache, m, &d, &id), VC_ERR_INVALID_ARG);
    assert_true(last_error_has(t.cache, "power of two"));
    d.alignment = (size_t)4 << 20;
    assert_int_equal(vc_layer_register(t.cache, m, &d, &id), VC_ERR_INVALID_ARG);
    d.alignment = 0;
    d.name = "";
    assert_int_equal(vc_layer_register(t.cache, m, &d, &id), VC_ERR_INVALID_ARG);
    d.name = NULL;
    assert_int_equal(vc_layer_register(t.cache, m, &d, &id), VC_ERR_INVALID_ARG);
    d.name = "huge";
    d.bytes = SIZE_MAX - 10;
    assert_int_equal(vc_layer_register(t.cache, m, &d, &id), VC_ERR_TOO_LARGE);
    assert_true(last_error_has(t.cache, "overflows"));
    d.bytes = sizeof w;
    const double bad_costs[] = {-1.0, NAN, INFINITY, 1e31}; /* compute per use: finite, >= 0 */
    for (size_t i = 0; i < sizeof bad_costs / sizeof *bad_costs; i++) {
        d.cost = bad_costs[i];
        assert_int_equal(vc_layer_register(t.cache, m, &d, &id), VC_ERR_INVALID_ARG);
        assert_true(last_error_has(t.cache, "must be a finite number >= 0"));
    }
    d.cost = 0;
    assert_int_equal(vc_layer_register(t.cache, m + 1, &d, &id), VC_ERR_NOT_FOUND);
    assert_int_equal(vc_layer_register(t.cache, 0, &d, &id), VC_ERR_NOT_FOUND);
    assert_int_equal(vc_layer_register(t.cache, m, NULL, &id), VC_ERR_INVALID_ARG);
    assert_int_equal(vc_layer_register(t.cache, m, &d, NULL), VC_ERR_INVALID_ARG);
    assert_int_equal(get_stats(t.cache).layers, 0); /* nothing half-registered */
    /* A layer bigger than the device is accepted; acquiring it fails clearly. */
    d.bytes = 2 * MB;
    d.host_ptr = malloc(d.bytes);
    assert_int_equal(vc_layer_register(t.cache, m, &d, &id), VC_OK);
    void *p;
    assert_int_equal(vc_layer_acquire(t.cache, id, NULL, &p), VC_ERR_OUT_OF_VRAM);
    assert_true(last_error_has(t.cache, "'huge'"));
    assert_int_equal(residency(t.cache, id), VC_RES_RAM);
    free((void *)d.host_ptr);
    free_cache(&t);
}

static void test_stale_ids(void **state) {
    (void)state;
    test_cache t = make_cache(1 * MB, 1 * MB, 1);
    static char w[512];
    vc_model_id m = add_model(t.cache, "m");
    vc_layer_id l = add_host_layer(t.cache, m, "l", w, sizeof w);
    assert_int_equal(vc_layer_unregister(t.cache, l), VC_OK);
    vc_layer_info info;
    assert_int_equal(vc_layer_get_info(t.cache, l, &info), VC_ERR_NOT_FOUND);
    /* the slot is reused, but the old id stays dead */
    vc_layer_id l2 = add_host_layer(t.cache, m, "l2", w, sizeof w);
    assert_int_not_equal(l, l2);
    assert_int_equal(vc_layer_unregister(t.cache, l), VC_ERR_NOT_FOUND);
    void *p;
    assert_int_equal(vc_layer_acquire(t.cache, l, NULL, &p), VC_ERR_NOT_FOUND);
    assert_int_equal(vc_layer_acquire(t.cache, 0, NULL, &p), VC_ERR_NOT_FOUND);
    assert_int_equal(vc_layer_acquire(t.cache, 0xdeadbeefcafeull, NULL, &p), VC_ERR_NOT_FOUND);
    assert_int_equal(vc_layer_offload(t.cache, l, VC_OFFLOAD_VRAM), VC_ERR_NOT_FOUND);
    assert_true(last_error_has(t.cache, "not registered"));
    char buf[sizeof w];
    assert_int_equal(vc_layer_read(t.cache, l, buf, sizeof buf), VC_ERR_NOT_FOUND);
    /* a buffer of the wrong size is refused, and says both sizes */
    assert_int_equal(vc_layer_read(t.cache, l2, buf, sizeof buf - 1), VC_ERR_INVALID_ARG);
    assert_true(last_error_has(t.cache, "has 512 bytes, buffer has 511"));
    assert_int_equal(vc_layer_get_info(t.cache, l2, &info), VC_OK);
    assert_int_equal(vc_model_unregister(t.cache, m), VC_OK);
    assert_int_equal(vc_layer_get_info(t.cache, l2, &info), VC_ERR_NOT_FOUND);
    assert_int_equal(vc_model_unregister(t.cache, m), VC_ERR_NOT_FOUND);
    /* every whole-model call on a model id that is gone */
    assert_int_equal(vc_model_acquire(t.cache, m, NULL), VC_ERR_NOT_FOUND);
    assert_int_equal(vc_model_release(t.cache, m, NULL), VC_ERR_NOT_FOUND);
    assert_true(last_error_has(t.cache, "is not registered"));
    assert_int_equal(vc_model_offload(t.cache, m, VC_OFFLOAD_VRAM), VC_ERR_NOT_FOUND);
    assert_true(last_error_has(t.cache, "is not registered"));
    assert_int_equal(vc_model_load_ram(t.cache, m), VC_ERR_NOT_FOUND);
    assert_int_equal(get_stats(t.cache).layers, 0);
    free_cache(&t);
}

static void test_unregister_while_held(void **state) {
    (void)state;
    test_cache t = make_cache(1 * MB, 1 * MB, 1);
    static char w[512];
    vc_model_id m = add_model(t.cache, "m");
    vc_layer_id l = add_host_layer(t.cache, m, "l", w, sizeof w);
    vc_layer_id l2 = add_host_layer(t.cache, m, "l2", w, sizeof w);
    void *p;
    assert_int_equal(vc_layer_acquire(t.cache, l, NULL, &p), VC_OK);
    assert_int_equal(vc_layer_unregister(t.cache, l), VC_ERR_BUSY);
    assert_true(last_error_has(t.cache, "held"));
    assert_int_equal(vc_model_unregister(t.cache, m), VC_ERR_BUSY);
    /* nothing was removed: both layers are still there */
    vc_layer_info info;
    assert_int_equal(vc_layer_get_info(t.cache, l2, &info), VC_OK);
    assert_int_equal(vc_cache_destroy(t.cache), VC_ERR_BUSY);
    assert_true(last_error_has(t.cache, "release it first"));
    assert_int_equal(vc_layer_release(t.cache, l, NULL), VC_OK);
    assert_int_equal(vc_model_unregister(t.cache, m), VC_OK);
    free_cache(&t);
}

static void test_null_handles(void **state) {
    (void)state;
    void *p;
    vc_layer_info info;
    vc_stats s;
    assert_int_equal(vc_layer_acquire(NULL, 1, NULL, &p), VC_ERR_INVALID_ARG);
    assert_int_equal(vc_layer_release(NULL, 1, NULL), VC_ERR_INVALID_ARG);
    assert_int_equal(vc_layer_unregister(NULL, 1), VC_ERR_INVALID_ARG);
    assert_int_equal(vc_layer_get_info(NULL, 1, &info), VC_ERR_INVALID_ARG);
    assert_int_equal(vc_layer_offload(NULL, 1, VC_OFFLOAD_VRAM), VC_ERR_INVALID_ARG);
    assert_int_equal(vc_layer_read(NULL, 1, &p, 1), VC_ERR_INVALID_ARG);
    assert_int_equal(vc_model_unregister(NULL, 1), VC_ERR_INVALID_ARG);
    assert_int_equal(vc_model_acquire(NULL, 1, NULL), VC_ERR_INVALID_ARG);
    assert_int_equal(vc_model_release(NULL, 1, NULL), VC_ERR_INVALID_ARG);
    assert_int_equal(vc_model_offload(NULL, 1, VC_OFFLOAD_VRAM), VC_ERR_INVALID_ARG);
    assert_int_equal(vc_cache_get_stats(NULL, &s), VC_ERR_INVALID_ARG);
    assert_int_equal(vc_cache_print_stats(NULL, NULL, NULL), VC_ERR_INVALID_ARG);
    assert_int_equal(vc_cache_destroy(NULL), VC_ERR_INVALID_ARG);
    assert_int_equal(vc_reserve_working_mem(NULL, 1, 0, NULL), VC_ERR_INVALID_ARG);
    assert_int_equal(vc_release_working_mem(NULL, NULL), VC_ERR_INVALID_ARG);
    assert_null(vc_reservation_ptr(NULL));
    assert_null(vc_cache_backend(NULL));
    assert_string_equal(vc_backend_name(NULL), "");
    assert_int_equal(vc_backend_mem_info(NULL, NULL, NULL), VC_ERR_INVALID_ARG);
    assert_int_equal(vc_backend_host_set_external_usage(NULL, 0), VC_ERR_INVALID_ARG);
    vc_backend_destroy(NULL);
    vc_cache_options_init(NULL);
    test_cache t = make_cache(1 * MB, 1 * MB, 1);
    assert_int_equal(vc_layer_acquire(t.cache, 1, NULL, NULL), VC_ERR_INVALID_ARG);
    assert_int_equal(vc_layer_get_info(t.cache, 1, NULL), VC_ERR_INVALID_ARG);
    assert_int_equal(vc_layer_offload(t.cache, 1, (vc_offload_target)7), VC_ERR_INVALID_ARG);
    free_cache(&t);
}

static void test_backend_create_checks(void **state) {
    (void)state;
    vc_backend *b = NULL;
    assert_int_equal(vc_backend_host_create(1 * MB, &b), VC_OK);
    assert_string_equal(vc_backend_name(b), "host");
    vc_backend_ops ops = *vc_backend_get_ops(b);
    vc_backend *w = NULL;
    ops.abi_version = 999;
    assert_int_equal(vc_backend_create(&ops, NULL, &w), VC_ERR_UNSUPPORTED);
    assert_non_null(strstr(vc_last_error(), "ABI"));
    ops.abi_version = VC_BACKEND_ABI_VERSION;
    ops.copy_h2d = NULL;
    assert_int_equal(vc_backend_create(&ops, NULL, &w), VC_ERR_INVALID_ARG);
    assert_null(w);
    assert_int_equal(vc_backend_create(NULL, NULL, &w), VC_ERR_INVALID_ARG);
    size_t f, tot;
    assert_int_equal(vc_backend_mem_info(b, &f, &tot), VC_OK);
    assert_int_equal(tot, 1 * MB);
    assert_int_equal(f, 1 * MB);
    vc_backend_destroy(b);
}

static void test_many_layers(void **state) {
    (void)state;
    test_cache t = make_cache(64 * MB, 64 * MB, 1);
    static char w[256];
    vc_model_id m = add_model(t.cache, "big");
    enum { N = 100000 };
    vc_layer_id *ids = malloc(N * sizeof *ids);
    for (int i = 0; i < N; i++) ids[i] = add_host_layer(t.cache, m, "l", w, sizeof w);
    assert_int_equal(get_stats(t.cache).layers, N);
    for (int i = 0; i < N; i += 2) assert_int_equal(vc_layer_unregister(t.cache, ids[i]), VC_OK);
    assert_int_equal(get_stats(t.cache).layers, N / 2);
    vc_layer_info info;
    for (int i = 1; i < N; i += 2) assert_int_equal(vc_layer_get_info(t.cache, ids[i], &info), VC_OK);
    assert_int_equal(vc_model_unregister(t.cache, m), VC_OK);
    free(ids);
    free_cache(&t);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_register_and_find),
        cmocka_unit_test(test_bad_registrations),
        cmocka_unit_test(test_stale_ids),
        cmocka_unit_test(test_unregister_while_held),
        cmocka_unit_test(test_null_handles),
        cmocka_unit_test(test_backend_create_checks),
        cmocka_unit_test(test_many_layers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
