/* Working memory: the standing amount and reservations for large operations. */
#include "test_util.h"

/* 512 KB device, 64 KB standing working memory, 32 KB segments, eight 48 KB layers... */
static test_cache setup(vc_layer_id *l, int n, size_t layer_bytes, char (*w)[48 * KB]) {
    vc_cache_options o;
    vc_cache_options_init(&o);
    o.ram_budget = 4 * MB;
    o.working_mem = 64 * KB;
    o.arena_segment_bytes = 48 * KB;
    test_cache t = make_cache_opts(512 * KB, &o);
    vc_model_id m = add_model(t.cache, "unet");
    for (int i = 0; i < n; i++) {
        fill_pattern(w[i], layer_bytes, (uint64_t)i);
        l[i] = add_host_layer(t.cache, m, "block", w[i], layer_bytes);
    }
    return t;
}

static void fill_layers(test_cache *t, vc_layer_id *l, int n) {
    void *p;
    for (int i = 0; i < n; i++) {
        int st = vc_layer_acquire(t->cache, l[i], NULL, &p);
        if (st != VC_OK) break;
        vc_layer_release(t->cache, l[i], NULL);
    }
}

static void test_standing_working_mem_never_filled(void **state) {
    (void)state;
    static char w[16][48 * KB];
    vc_layer_id l[16];
    test_cache t = setup(l, 16, 48 * KB, w);
    fill_layers(&t, l, 16);
    vc_stats s = get_stats(t.cache);
    assert_true(s.arena_peak_bytes <= 512 * KB - 64 * KB);
    size_t free_b;
    vc_backend_mem_info(t.backend, &free_b, NULL);
    assert_true(free_b >= 64 * KB);
    free_cache(&t);
}

static void test_reservation_evicts_shortfall_only(void **state) {
    (void)state;
    static char w[16][48 * KB];
    vc_layer_id l[16];
    test_cache t = setup(l, 16, 48 * KB, w);
    fill_layers(&t, l, 16);
    vc_stats before = get_stats(t.cache);
    /* Asking for no more than the standing amount evicts nothing. */
    vc_reservation *r = NULL;
    assert_int_equal(vc_reserve_working_mem(t.cache, 64 * KB, 0, &r), VC_OK);
    assert_int_equal(get_stats(t.cache).layers_in_vram, before.layers_in_vram);
    assert_int_equal(vc_release_working_mem(t.cache, r), VC_OK);
    /* 160 KB: 96 KB beyond standing -> two 48 KB segments go, not more */
    assert_int_equal(vc_reserve_working_mem(t.cache, 160 * KB, VC_RESERVE_BUFFER, &r), VC_OK);
    assert_non_null(vc_reservation_ptr(r));
    fill_device(t.cache, vc_reservation_ptr(r), 0xab, 160 * KB); /* the buffer is really there */
    vc_stats s = get_stats(t.cache);
    assert_int_equal(s.vram_evictions[VC_EVICT_FOR_RESERVATION], 2);
    assert_int_equal(s.layers_in_vram, before.layers_in_vram - 2);
    assert_int_equal(s.reserved_bytes, 160 * KB);
    size_t free_b;
    vc_backend_mem_info(t.backend, &free_b, NULL);
    assert_true(s.arena_bytes + 160 * KB <= 512 * KB);
    /* While reserved, new loads stay inside the smaller limit. */
    fill_layers(&t, l, 16);
    s = get_stats(t.cache);
    assert_true(s.arena_bytes <= 512 * KB - 160 * KB);
    assert_int_equal(vc_release_working_mem(t.cache, r), VC_OK);
    assert_int_equal(get_stats(t.cache).reserved_bytes, 0);
    assert_int_equal(vc_release_working_mem(t.cache, r), VC_ERR_NOT_FOUND); /* double release */
    assert_true(last_error_has(t.cache, "not an active reservation"));
    /* room returns to the cache */
    fill_layers(&t, l, 16);
    assert_true(get_stats(t.cache).arena_bytes > 512 * KB - 160 * KB);
    free_cache(&t);
}

static void test_unmeetable_reservation_changes_nothing(void **state) {
    (void)state;
    static char w[16][48 * KB];
    vc_layer_id l[16];
    test_cache t = setup(l, 16, 48 * KB, w);
    void *p;
    /* hold six layers (288 KB) */
    for (int i = 0; i < 6; i++) assert_int_equal(vc_layer_acquire(t.cache, l[i], NULL, &p), VC_OK);
    fill_layers(&t, l + 6, 2); /* and two unheld */
    vc_stats before = get_stats(t.cache);
    vc_reservation *r = (vc_reservation *)0x1;
    assert_int_equal(vc_reserve_working_mem(t.cache, 300 * KB, 0, &r), VC_ERR_OUT_OF_VRAM);
    assert_ptr_equal(r, (vc_reservation *)0x1);
    assert_true(last_error_has(t.cache, "nothing was evicted"));
    vc_stats after = get_stats(t.cache);
    assert_int_equal(after.layers_in_vram, before.layers_in_vram);
    assert_int_equal(after.arena_bytes, before.arena_bytes);
    assert_int_equal(after.reserved_bytes, 0);
    assert_int_equal(after.vram_limit, before.vram_limit);
    /* held layers intact */
    for (int i = 0; i < 6; i++) {
        assert_int_equal(vc_layer_acquire(t.cache, l[i], NULL, &p), VC_OK);
        assert_true(check_device(t.cache, p, 48 * KB, (uint64_t)i));
        vc_layer_release(t.cache, l[i], NULL);
        vc_layer_release(t.cache, l[i], NULL);
    }
    /* with the holds gone the same reservation succeeds */
    assert_int_equal(vc_reserve_working_mem(t.cache, 300 * KB, 0, &r), VC_OK);
    assert_int_equal(vc_cache_destroy(t.cache), VC_ERR_BUSY); /* reservation still active */
    assert_int_equal(vc_release_working_mem(t.cache, r), VC_OK);
    free_cache(&t);
}

static void test_reservation_bad_input(void **state) {
    (void)state;
    test_cache t = make_cache(1 * MB, 1 * MB, 1);
    vc_reservation *r;
    assert_int_equal(vc_reserve_working_mem(t.cache, 10, 0x80, &r), VC_ERR_INVALID_ARG);
    assert_int_equal(vc_reserve_working_mem(t.cache, 0, VC_RESERVE_BUFFER, &r), VC_ERR_INVALID_ARG);
    assert_int_equal(vc_reserve_working_mem(t.cache, 10, 0, NULL), VC_ERR_INVALID_ARG);
    assert_int_equal(vc_reserve_working_mem(t.cache, SIZE_MAX, 0, &r), VC_ERR_OUT_OF_VRAM);
    vc_reservation *a, *b;
    assert_int_equal(vc_reserve_working_mem(t.cache, 100 * KB, 0, &a), VC_OK);
    assert_int_equal(vc_reserve_working_mem(t.cache, SIZE_MAX, 0, &b), VC_ERR_TOO_LARGE);
    assert_int_equal(vc_reserve_working_mem(t.cache, 1 * MB, 0, &b), VC_ERR_OUT_OF_VRAM);
    assert_true(last_error_has(t.cache, "at most"));
    assert_int_equal(get_stats(t.cache).reserved_bytes, 100 * KB);
    /* a reservation of another cache is refused without being read */
    test_cache u = make_cache(1 * MB, 1 * MB, 1);
    assert_int_equal(vc_release_working_mem(u.cache, a), VC_ERR_NOT_FOUND);
    free_cache(&u);
    assert_int_equal(vc_release_working_mem(t.cache, a), VC_OK);
    free_cache(&t);
}

/* A host backend whose device_alloc can be made to fail, as a driver under pressure would. */
static const vc_backend_ops *host_ops;
static int fail_device_alloc;
static int flaky_device_alloc(void *ctx, size_t bytes, void **p) {
    if (fail_device_alloc) {
        vc_backend_set_error("injected device_alloc failure");
        return VC_ERR_OUT_OF_VRAM;
    }
    return host_ops->device_alloc(ctx, bytes, p);
}

static void test_buffer_allocation_failure(void **state) {
    (void)state;
    /* Other processes took nearly everything: the reservation cannot be met at all. */
    test_cache t = make_cache(256 * KB, 1 * MB, 1);
    vc_reservation *r;
    test_set_external_usage(t.backend, 256 * KB, 200 * KB);
    assert_int_equal(vc_reserve_working_mem(t.cache, 100 * KB, VC_RESERVE_BUFFER, &r), VC_ERR_OUT_OF_VRAM);
    assert_int_equal(get_stats(t.cache).reserved_bytes, 0);
    test_set_external_usage(t.backend, 256 * KB, 0);
    assert_int_equal(vc_reserve_working_mem(t.cache, 100 * KB, VC_RESERVE_BUFFER, &r), VC_OK);
    assert_int_equal(vc_release_working_mem(t.cache, r), VC_OK);
    free_cache(&t);

    /* The device refuses the buffer although the numbers allowed it. */
    vc_backend *host;
    assert_int_equal(vc_backend_host_create(256 * KB, &host), VC_OK);
    host_ops = vc_backend_get_ops(host);
    vc_backend_ops ops = *host_ops;
    ops.device_alloc = flaky_device_alloc;
    ops.destroy = NULL; /* the context stays owned by `host` */
    vc_backend *flaky;
    assert_int_equal(vc_backend_create(&ops, vc_backend_get_ctx(host), &flaky), VC_OK);
    vc_cache_options o;
    vc_cache_options_init(&o);
    o.backend = flaky;
    o.ram_budget = 1 * MB;
    o.working_mem = 0;
    vc_cache *c;
    assert_int_equal(vc_cache_create(&o, &c), VC_OK);
    fail_device_alloc = 1;
    assert_int_equal(vc_reserve_working_mem(c, 100 * KB, VC_RESERVE_BUFFER, &r), VC_ERR_BACKEND);
    assert_true(last_error_has(c, "injected device_alloc failure"));
    vc_stats s = get_stats(c);
    assert_int_equal(s.reserved_bytes, 0);
    assert_int_equal(s.reservations, 0);
    fail_device_alloc = 0;
    assert_int_equal(vc_reserve_working_mem(c, 100 * KB, VC_RESERVE_BUFFER, &r), VC_OK);
    assert_int_equal(vc_release_working_mem(c, r), VC_OK);
    assert_int_equal(vc_cache_destroy(c), VC_OK);
    vc_backend_destroy(flaky);
    vc_backend_destroy(host);
}

/* smart_working_mem (smart_partial_loading): an operation's reservation replaces the standing
 * working memory while it lasts, so a small one leaves the weights more room; when it ends the
 * cache goes back under the standing budget at once. Off, the standing amount is a floor. */
static void test_smart_working_mem(void **state) {
    (void)state;
    static char w[16][48 * KB];
    for (int smart = 0; smart <= 1; smart++) {
        vc_cache_options o;
        vc_cache_options_init(&o);
        o.ram_budget = 4 * MB;
        o.working_mem = 192 * KB;
        o.arena_segment_bytes = 48 * KB;
        o.smart_working_mem = smart;
        test_cache t = make_cache_opts(512 * KB, &o);
        vc_model_id m = add_model(t.cache, "unet");
        vc_layer_id l[16];
        for (int i = 0; i < 16; i++) {
            fill_pattern(w[i], 48 * KB, (uint64_t)i);
            l[i] = add_host_layer(t.cache, m, "block", w[i], 48 * KB);
        }
        fill_layers(&t, l, 16);
        vc_stats before = get_stats(t.cache);
        assert_int_equal(before.vram_limit, 320 * KB);
        assert_true(before.arena_bytes <= 320 * KB);
        vc_reservation *r = NULL;
        assert_int_equal(vc_reserve_working_mem(t.cache, 32 * KB, 0, &r), VC_OK);
        fill_layers(&t, l, 16);
        vc_stats during = get_stats(t.cache);
        size_t free_b;
        vc_backend_mem_info(t.backend, &free_b, NULL);
        assert_true(free_b >= 32 * KB); /* the reservation itself is always honoured */
        if (smart) {
            assert_int_equal(during.vram_limit, 480 * KB);
            assert_true(during.layers_in_vram > before.layers_in_vram);
            assert_true(during.arena_bytes > 320 * KB && during.arena_bytes <= 480 * KB);
        } else {
            assert_int_equal(during.vram_limit, 320 * KB);
            assert_true(during.arena_bytes <= 320 * KB);
        }
        assert_int_equal(vc_release_working_mem(t.cache, r), VC_OK);
        vc_stats after = get_stats(t.cache);
        assert_int_equal(after.vram_limit, 320 * KB);
        assert_true(after.arena_bytes <= 320 * KB); /* back under the standing budget at once */
        if (smart) assert_true(after.vram_evictions[VC_EVICT_BUDGET_SHRANK] > 0);
        void *p; /* and the evicted layers come back intact */
        for (int i = 0; i < 16; i++) {
            assert_int_equal(vc_layer_acquire(t.cache, l[i], NULL, &p), VC_OK);
            assert_true(check_device(t.cache, p, 48 * KB, (uint64_t)i));
            assert_int_equal(vc_layer_release(t.cache, l[i], NULL), VC_OK);
        }
        free_cache(&t);
    }
    /* invokeai.yaml's smart_partial_loading sets it */
    vc_config *cfg;
    assert_int_equal(vc_config_create(&cfg), VC_OK);
    static const char text[] = "smart_partial_loading: true\n";
    assert_int_equal(vc_config_load_string(cfg, text, sizeof text - 1, "s.yaml", VC_CONFIG_NO_ENV, NULL), VC_OK);
    vc_cache_options o;
    vc_cache_options_init(&o);
    assert_int_equal(vc_config_apply(cfg, &o), VC_OK);
    assert_int_equal(o.smart_working_mem, 1);
    vc_config_destroy(cfg);
}

static void test_vae_estimates(void **state) {
    (void)state;
    /* 1024x1024 fp16: InvokeAI 2.25 GB, ComfyUI 4.25 GB */
    size_t inv = vc_estimate_vae_decode_bytes(1024, 1024, 2, VC_VAE_ESTIMATE_INVOKEAI);
    size_t com = vc_estimate_vae_decode_bytes(1024, 1024, 2, VC_VAE_ESTIMATE_COMFYUI);
    assert_int_equal(inv, (size_t)(1024.0 * 1024 * 2 * 960 * 1.2));
    assert_int_equal(com, (size_t)2178 * 128 * 128 * 64 * 2);
    assert_true(com > inv && com < 3 * inv);
    assert_int_equal(vc_estimate_vae_decode_bytes(512, 512, 4, VC_VAE_ESTIMATE_INVOKEAI),
                     vc_estimate_vae_decode_bytes(1024, 512, 2, VC_VAE_ESTIMATE_INVOKEAI));
    assert_int_equal(vc_estimate_vae_decode_bytes(0, 1024, 2, VC_VAE_ESTIMATE_INVOKEAI), 0);
    assert_int_equal(vc_estimate_vae_decode_bytes(1024, 1024, 2, (vc_vae_estimate)7), 0);
    assert_true(vc_estimate_vae_decode_bytes(4000000000u, 4000000000u, 4, VC_VAE_ESTIMATE_COMFYUI) == SIZE_MAX);
}

/* A small card under the default working memory has no room for weights at all: the error says
 * which setting takes it, and a long layer name (a full module path) does not push that hint out
 * of the message. */
static void test_working_mem_taking_the_whole_device(void **state) {
    (void)state;
    vc_cache_options o;
    vc_cache_options_init(&o);
    o.ram_budget = 1 * MB;
    o.working_mem = 512 * KB; /* more than the 256 KB device */
    test_cache t = make_cache_opts(256 * KB, &o);
    /* names of a thousand bytes and more (the message must keep its hint) */
    static char name[1501], model[1001];
    memset(name, 'x', 1500);
    memset(model, 'm', 1000);
    static char w[16 * KB];
    vc_layer_id l = add_host_layer(t.cache, add_model(t.cache, model), name, w, sizeof w);
    void *p;
    assert_int_equal(vc_layer_acquire(t.cache, l, NULL, &p), VC_ERR_OUT_OF_VRAM);
    assert_true(last_error_has(t.cache, name));
    assert_true(last_error_has(t.cache, model));
    assert_non_null(strstr(vc_last_error(), "lower it"));
    assert_true(last_error_has(t.cache, "the standing working memory (device_working_mem_gb) takes all of the"));
    assert_true(last_error_has(t.cache, "lower it"));
    free_cache(&t);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_standing_working_mem_never_filled),
        cmocka_unit_test(test_reservation_evicts_shortfall_only),
        cmocka_unit_test(test_unmeetable_reservation_changes_nothing),
        cmocka_unit_test(test_reservation_bad_input),
        cmocka_unit_test(test_buffer_allocation_failure),
        cmocka_unit_test(test_smart_working_mem),
        cmocka_unit_test(test_vae_estimates),
        cmocka_unit_test(test_working_mem_taking_the_whole_device),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
