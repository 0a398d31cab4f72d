/* Acquire / release / eviction: the residency state machine on the host backend. */
#include "test_util.h"

static void test_hit_miss_and_pointer(void **state) {
    (void)state;
    test_cache t = make_cache(1 * MB, 1 * MB, 1);
    vc_model_id m = add_model(t.cache, "m");
    test_loader ld = {.seed = 3};
    vc_layer_id l = add_loader_layer(t.cache, m, "l", 10000, &ld);
    void *p = NULL, *q = NULL;
    assert_int_equal(vc_layer_acquire(t.cache, l, NULL, &p), VC_OK);
    assert_non_null(p);
    assert_int_equal((uintptr_t)p % 256, 0);
    assert_true(check_device(t.cache, p, 10000, 3)); /* the device copy holds the weights */
    assert_int_equal(residency(t.cache, l), VC_RES_VRAM_RAM);
    assert_int_equal(ld.calls, 1);
    /* nested hold: same pointer, a hit */
    assert_int_equal(vc_layer_acquire(t.cache, l, NULL, &q), VC_OK);
    assert_ptr_equal(p, q);
    vc_layer_info info;
    vc_layer_get_info(t.cache, l, &info);
    assert_int_equal(info.holds, 2);
    vc_stats s = get_stats(t.cache);
    assert_int_equal(s.misses, 1);
    assert_int_equal(s.hits, 1);
    assert_int_equal(s.bytes_h2d, 10000);
    assert_int_equal(s.bytes_loaded, 10000);
    assert_int_equal(s.loads, 1);
    assert_int_equal(s.layers_held, 1);
    assert_int_equal(vc_layer_release(t.cache, l, NULL), VC_OK);
    assert_int_equal(vc_layer_release(t.cache, l, NULL), VC_OK);
    assert_int_equal(vc_layer_release(t.cache, l, NULL), VC_ERR_NOT_HELD);
    assert_true(last_error_has(t.cache, "not held"));
    assert_int_equal(get_stats(t.cache).layers_held, 0);
    /* still resident after release: the next acquire is a hit with no copy */
    assert_int_equal(vc_layer_acquire(t.cache, l, NULL, &q), VC_OK);
    assert_ptr_equal(p, q);
    s = get_stats(t.cache);
    assert_int_equal(s.hits, 2);
    assert_int_equal(s.bytes_h2d, 10000);
    assert_int_equal(vc_layer_release(t.cache, l, NULL), VC_OK);
    free_cache(&t);
}

static void test_release_without_acquire(void **state) {
    (void)state;
    test_cache t = make_cache(1 * MB, 1 * MB, 1);
    static char w[1000];
    vc_layer_id l = add_host_layer(t.cache, add_model(t.cache, "m"), "l", w, sizeof w);
    assert_int_equal(vc_layer_release(t.cache, l, NULL), VC_ERR_NOT_HELD);
    assert_int_equal(residency(t.cache, l), VC_RES_RAM);
    free_cache(&t);
}

/* Four 40 KB layers on a 128 KB device: LRU evicts the least recently released layer. */
static void test_lru_eviction(void **state) {
    (void)state;
    vc_cache_options o;
    vc_cache_options_init(&o);
    o.ram_budget = 1 * MB;
    o.working_mem = 0;
    o.arena_segment_bytes = 128 * KB;
    o.policy = VC_POLICY_LRU;
    test_cache t = make_cache_opts(128 * KB, &o);
    vc_model_id m = add_model(t.cache, "m");
    static char w[4][40 * KB];
    vc_layer_id l[4];
    for (int i = 0; i < 4; i++) {
        fill_pattern(w[i], sizeof w[i], (uint64_t)i);
        char name[8] = {'l', (char)('0' + i), 0};
        l[i] = add_host_layer(t.cache, m, name, w[i], sizeof w[i]);
    }
    void *p;
    for (int i = 0; i < 3; i++) {
        assert_int_equal(vc_layer_acquire(t.cache, l[i], NULL, &p), VC_OK);
        assert_int_equal(vc_layer_release(t.cache, l[i], NULL), VC_OK);
    }
    /* touch l0 so l1 becomes least recently used */
    assert_int_equal(vc_layer_acquire(t.cache, l[0], NULL, &p), VC_OK);
    assert_int_equal(vc_layer_release(t.cache, l[0], NULL), VC_OK);
    assert_int_equal(vc_layer_acquire(t.cache, l[3], NULL, &p), VC_OK);
    assert_true(check_device(t.cache, p, 40 * KB, 3));
    assert_int_equal(residency(t.cache, l[1]), VC_RES_RAM);
    assert_int_equal(residency(t.cache, l[0]), VC_RES_VRAM_RAM);
    assert_int_equal(residency(t.cache, l[2]), VC_RES_VRAM_RAM);
    vc_stats s = get_stats(t.cache);
    assert_int_equal(s.vram_evictions[VC_EVICT_FOR_LOAD], 1);
    assert_true(s.arena_bytes <= 128 * KB);
    assert_int_equal(vc_layer_release(t.cache, l[3], NULL), VC_OK);
    free_cache(&t);
}

static void test_held_layers_never_evicted(void **state) {
    (void)state;
    test_cache t = make_cache(128 * KB, 1 * MB, 1);
    vc_model_id m = add_model(t.cache, "m");
    static char w[3][60 * KB];
    vc_layer_id l[3];
    for (int i = 0; i < 3; i++) {
        fill_pattern(w[i], sizeof w[i], (uint64_t)i + 10);
        char name[8] = {'l', (char)('0' + i), 0};
        l[i] = add_host_layer(t.cache, m, name, w[i], sizeof w[i]);
    }
    void *p0, *p1, *p2;
    assert_int_equal(vc_layer_acquire(t.cache, l[0], NULL, &p0), VC_OK);
    assert_int_equal(vc_layer_acquire(t.cache, l[1], NULL, &p1), VC_OK);
    /* no room for a third while both are held */
    assert_int_equal(vc_layer_acquire(t.cache, l[2], NULL, &p2), VC_ERR_OUT_OF_VRAM);
    assert_true(last_error_has(t.cache, "needs 61440 B of device memory")); /* each number its own */
    assert_true(last_error_has(t.cache, "held layers occupy 122880 B"));
    assert_true(check_device(t.cache, p0, 60 * KB, 10));
    assert_true(check_device(t.cache, p1, 60 * KB, 11));
    vc_layer_info info;
    vc_layer_get_info(t.cache, l[2], &info);
    assert_int_equal(info.holds, 0);
    assert_int_equal(info.residency, VC_RES_RAM);
    /* release one: the third fits by evicting exactly that one */
    assert_int_equal(vc_layer_release(t.cache, l[0], NULL), VC_OK);
    assert_int_equal(vc_layer_acquire(t.cache, l[2], NULL, &p2), VC_OK);
    assert_true(check_device(t.cache, p2, 60 * KB, 12));
    assert_true(check_device(t.cache, p1, 60 * KB, 11));
    assert_int_equal(residency(t.cache, l[0]), VC_RES_RAM);
    assert_int_equal(vc_layer_release(t.cache, l[1], NULL), VC_OK);
    assert_int_equal(vc_layer_release(t.cache, l[2], NULL), VC_OK);
    free_cache(&t);
}

/* Fails its first two calls, the first with a reason, the second without one. */
static int explaining_loader(void *user, vc_layer_id layer, void *dst, size_t bytes) {
    (void)layer;
    int *calls = user;
    if (++*calls == 1) {
        vc_loader_set_error("checksum of %s is wrong", "mid.bin");
        return -7;
    }
    if (*calls == 2) return -8;
    memset(dst, 1, bytes);
    return 0;
}

/* A loader's own reason (vc_loader_set_error) ends the cache's message, and only for the failure
 * it was given for. */
static void test_loader_explains_its_failure(void **state) {
    (void)state;
    test_cache t = make_cache(1 * MB, 1 * MB, 1);
    vc_model_id m = add_model(t.cache, "unet");
    int calls = 0;
    vc_layer_desc d = {.name = "mid", .bytes = 4096, .loader = explaining_loader, .loader_user = &calls};
    vc_layer_id l;
    assert_int_equal(vc_layer_register(t.cache, m, &d, &l), VC_OK);
    void *p;
    assert_int_equal(vc_layer_acquire(t.cache, l, NULL, &p), VC_ERR_LOADER);
    assert_true(last_error_has(t.cache, "'mid' of model 'unet' returned -7: checksum of mid.bin is wrong; "));
    vc_loader_set_error("stale"); /* outside a loader: forgotten when the next one starts */
    assert_int_equal(vc_layer_load_ram(t.cache, l), VC_ERR_LOADER);
    assert_true(last_error_has(t.cache, "returned -8"));
    assert_false(last_error_has(t.cache, "stale"));
    assert_false(last_error_has(t.cache, "checksum"));
    assert_int_equal(vc_layer_acquire(t.cache, l, NULL, &p), VC_OK);
    assert_int_equal(vc_layer_release(t.cache, l, NULL), VC_OK);
    free_cache(&t);
}

static void test_loader_failure_and_retry(void **state) {
    (void)state;
    test_cache t = make_cache(1 * MB, 1 * MB, 1);
    vc_model_id m = add_model(t.cache, "unet");
    test_loader ld = {.seed = 9, .fail_next = 1};
    vc_layer_id l = add_loader_layer(t.cache, m, "mid", 5000, &ld);
    void *p = (void *)0x1234;
    assert_int_equal(vc_layer_acquire(t.cache, l, NULL, &p), VC_ERR_LOADER);
    assert_ptr_equal(p, (void *)0x1234); /* untouched on error */
    assert_true(last_error_has(t.cache, "'mid' of model 'unet' returned -5"));
    vc_stats s = get_stats(t.cache);
    assert_int_equal(s.ram_bytes, 0); /* the failed load's buffer is gone */
    assert_int_equal(s.vram_bytes, 0);
    assert_int_equal(s.load_failures, 1);
    assert_int_equal(residency(t.cache, l), VC_RES_NONE);
    assert_int_equal(vc_layer_acquire(t.cache, l, NULL, &p), VC_OK);
    assert_true(check_device(t.cache, p, 5000, 9));
    assert_int_equal(vc_layer_release(t.cache, l, NULL), VC_OK);
    free_cache(&t);
}

static void test_ram_pool_lru_and_reload(void **state) {
    (void)state;
    /* RAM budget of two layers: loading a third drops the least recently used RAM copy. */
    test_cache t = make_cache(1 * MB, 80 * KB, 1);
    vc_model_id m = add_model(t.cache, "m");
    test_loader ld[3] = {{.seed = 1}, {.seed = 2}, {.seed = 3}};
    vc_layer_id l[3];
    for (int i = 0; i < 3; i++) l[i] = add_loader_layer(t.cache, m, "l", 40 * KB, &ld[i]);
    void *p;
    for (int i = 0; i < 3; i++) {
        assert_int_equal(vc_layer_acquire(t.cache, l[i], NULL, &p), VC_OK);
        assert_int_equal(vc_layer_release(t.cache, l[i], NULL), VC_OK);
        assert_true(get_stats(t.cache).ram_bytes <= 80 * KB);
    }
    vc_stats s = get_stats(t.cache);
    assert_int_equal(s.ram_evictions, 1);
    assert_int_equal(residency(t.cache, l[0]), VC_RES_VRAM); /* RAM copy dropped, device copy kept */
    /* leaving VRAM without a RAM copy writes the weights back (nothing lost) */
    assert_int_equal(vc_layer_offload(t.cache, l[0], VC_OFFLOAD_VRAM), VC_OK);
    assert_int_equal(residency(t.cache, l[0]), VC_RES_RAM);
    assert_int_equal(get_stats(t.cache).bytes_d2h, 40 * KB);
    unsigned char buf[40 * KB];
    assert_int_equal(vc_layer_read(t.cache, l[0], buf, sizeof buf), VC_OK);
    assert_true(check_pattern(buf, sizeof buf, 1));
    assert_int_equal(ld[0].calls, 1);
    free_cache(&t);
}

static void test_layer_larger_than_ram_budget(void **state) {
    (void)state;
    test_cache t = make_cache(1 * MB, 16 * KB, 1);
    test_loader ld = {.seed = 1};
    vc_layer_id l = add_loader_layer(t.cache, add_model(t.cache, "m"), "big", 20 * KB, &ld);
    void *p;
    assert_int_equal(vc_layer_acquire(t.cache, l, NULL, &p), VC_ERR_OUT_OF_RAM);
    assert_true(last_error_has(t.cache, "max_cache_ram_gb"));
    assert_int_equal(ld.calls, 0);
    free_cache(&t);
}

static void test_dynamic_budget_follows_other_processes(void **state) {
    (void)state;
    /* 256 KB device, 32 KB standing working memory, dynamic budget. */
    vc_cache_options o;
    vc_cache_options_init(&o);
    o.ram_budget = 1 * MB;
    o.working_mem = 32 * KB;
    o.arena_segment_bytes = 32 * KB;
    o.prefetch_depth = 0; /* l[7]'s acquire is the load decision (no readahead placed it earlier) */
    test_cache t = make_cache_opts(256 * KB, &o);
    vc_model_id m = add_model(t.cache, "m");
    static char w[8][32 * KB];
    vc_layer_id l[8];
    for (int i = 0; i < 8; i++) {
        fill_pattern(w[i], sizeof w[i], (uint64_t)i);
        l[i] = add_host_layer(t.cache, m, "l", w[i], sizeof w[i]);
    }
    void *p;
    for (int i = 0; i < 7; i++) {
        assert_int_equal(vc_layer_acquire(t.cache, l[i], NULL, &p), VC_OK);
        assert_int_equal(vc_layer_release(t.cache, l[i], NULL), VC_OK);
    }
    vc_stats s = get_stats(t.cache);
    assert_true(s.arena_bytes <= 256 * KB - 32 * KB); /* working memory never filled */
    assert_int_equal(s.layers_in_vram, 7);
    /* another process takes the 32 KB left free: the next load decision gives room back */
    test_set_external_usage(t.backend, 256 * KB, 32 * KB);
    assert_int_equal(vc_layer_acquire(t.cache, l[7], NULL, &p), VC_OK);
    assert_true(check_device(t.cache, p, 32 * KB, 7));
    s = get_stats(t.cache);
    size_t free_b, total;
    vc_backend_mem_info(t.backend, &free_b, &total);
    assert_true(free_b >= 32 * KB);                 /* working memory is free on the device */
    assert_true(s.arena_bytes <= 256 * KB - 32 * KB - 32 * KB);
    assert_int_equal(s.vram_evictions[VC_EVICT_BUDGET_SHRANK], 1); /* one 32 KB segment, no more */
    assert_int_equal(residency(t.cache, l[0]), VC_RES_RAM);        /* the least recently used */
    assert_int_equal(residency(t.cache, l[6]), VC_RES_VRAM_RAM);
    assert_int_equal(vc_layer_release(t.cache, l[7], NULL), VC_OK);
    free_cache(&t);
}

static void test_explicit_budget(void **state) {
    (void)state;
    vc_cache_options o;
    vc_cache_options_init(&o);
    o.ram_budget = 1 * MB;
    o.vram_budget = 64 * KB; /* takes precedence over working memory */
    o.working_mem = 1 * MB;
    o.arena_segment_bytes = 16 * KB;
    test_cache t = make_cache_opts(1 * MB, &o);
    vc_model_id m = add_model(t.cache, "m");
    static char w[6][16 * KB];
    vc_layer_id l[6];
    void *p;
    for (int i = 0; i < 6; i++) {
        l[i] = add_host_layer(t.cache, m, "l", w[i], sizeof w[i]);
        assert_int_equal(vc_layer_acquire(t.cache, l[i], NULL, &p), VC_OK);
        assert_int_equal(vc_layer_release(t.cache, l[i], NULL), VC_OK);
        assert_true(get_stats(t.cache).arena_bytes <= 64 * KB);
    }
    vc_stats s = get_stats(t.cache);
    assert_int_equal(s.layers_in_vram, 4);
    assert_int_equal(s.vram_limit, 64 * KB);
    assert_true(s.arena_peak_bytes <= 64 * KB);
    free_cache(&t);

    /* A zero budget caches nothing: an acquire cannot be met at all. */
    o.vram_budget = 0;
    t = make_cache_opts(1 * MB, &o);
    l[0] = add_host_layer(t.cache, add_model(t.cache, "m"), "l", w[0], sizeof w[0]);
    assert_int_equal(vc_layer_acquire(t.cache, l[0], NULL, &p), VC_ERR_OUT_OF_VRAM);
    free_cache(&t);
}

static void test_fragmentation_makes_a_hole(void **state) {
    (void)state;
    /* One 64 KB segment filled with 16 KB layers A B C D; hold B and D... then a 32 KB layer can
     * only fit where A+B or C+D were; with B held, evicting C and D (unheld) opens the hole. */
    vc_cache_options o;
    vc_cache_options_init(&o);
    o.ram_budget = 1 * MB;
    o.vram_budget = 64 * KB;
    o.working_mem = 0;
    o.arena_segment_bytes = 64 * KB;
    test_cache t = make_cache_opts(1 * MB, &o);
    vc_model_id m = add_model(t.cache, "m");
    static char w[4][16 * KB], big[32 * KB];
    fill_pattern(big, sizeof big, 99);
    vc_layer_id l[4];
    void *p;
    for (int i = 0; i < 4; i++) {
        fill_pattern(w[i], sizeof w[i], (uint64_t)i);
        l[i] = add_host_layer(t.cache, m, "small", w[i], sizeof w[i]);
        assert_int_equal(vc_layer_acquire(t.cache, l[i], NULL, &p), VC_OK);
    }
    assert_int_equal(vc_layer_release(t.cache, l[0], NULL), VC_OK);
    assert_int_equal(vc_layer_release(t.cache, l[2], NULL), VC_OK);
    assert_int_equal(vc_layer_release(t.cache, l[3], NULL), VC_OK);
    /* Evict A and C: 32 KB free in two 16 KB holes separated by held B. */
    assert_int_equal(vc_layer_offload(t.cache, l[0], VC_OFFLOAD_VRAM), VC_OK);
    assert_int_equal(vc_layer_offload(t.cache, l[2], VC_OFFLOAD_VRAM), VC_OK);
    vc_layer_id lb = add_host_layer(t.cache, m, "big", big, sizeof big);
    assert_int_equal(vc_layer_acquire(t.cache, lb, NULL, &p), VC_OK);
    assert_true(check_device(t.cache, p, sizeof big, 99));
    vc_stats s = get_stats(t.cache);
    assert_int_equal(s.vram_evictions[VC_EVICT_FRAGMENTATION], 1); /* only D had to go */
    assert_int_equal(residency(t.cache, l[3]), VC_RES_RAM);
    assert_int_equal(residency(t.cache, l[1]), VC_RES_VRAM_RAM);
    assert_int_equal(vc_layer_release(t.cache, lb, NULL), VC_OK);
    assert_int_equal(vc_layer_release(t.cache, l[1], NULL), VC_OK);
    free_cache(&t);
}

static void test_alignment_honoured(void **state) {
    (void)state;
    test_cache t = make_cache(1 * MB, 1 * MB, 1);
    static char w[3000];
    vc_model_id m = add_model(t.cache, "m");
    vc_layer_desc d = {.name = "a", .bytes = 100, .host_ptr = w};
    vc_layer_id a, b;
    assert_int_equal(vc_layer_register(t.cache, m, &d, &a), VC_OK);
    d.name = "b";
    d.bytes = sizeof w;
    d.alignment = 8192;
    assert_int_equal(vc_layer_register(t.cache, m, &d, &b), VC_OK);
    void *pa, *pb;
    assert_int_equal(vc_layer_acquire(t.cache, a, NULL, &pa), VC_OK);
    assert_int_equal(vc_layer_acquire(t.cache, b, NULL, &pb), VC_OK);
    assert_int_equal((uintptr_t)pb % 8192, 0);
    vc_layer_release(t.cache, a, NULL);
    vc_layer_release(t.cache, b, NULL);
    free_cache(&t);
}

static void test_model_lock_all_or_nothing(void **state) {
    (void)state;
    test_cache t = make_cache(100 * KB, 1 * MB, 1);
    vc_model_id small = add_model(t.cache, "vae"), big = add_model(t.cache, "unet");
    static char w[6][30 * KB];
    for (int i = 0; i < 2; i++) add_host_layer(t.cache, small, "v", w[i], sizeof w[i]);
    for (int i = 2; i < 6; i++) add_host_layer(t.cache, big, "u", w[i], sizeof w[i]);
    assert_int_equal(vc_model_acquire(t.cache, small, NULL), VC_OK);
    assert_int_equal(get_stats(t.cache).layers_held, 2);
    /* 4 x 30 KB cannot fit beside the held VAE: fails and releases what it took */
    assert_int_equal(vc_model_acquire(t.cache, big, NULL), VC_ERR_OUT_OF_VRAM);
    assert_true(last_error_has(t.cache, "vc_model_acquire"));
    assert_int_equal(get_stats(t.cache).layers_held, 2);
    assert_int_equal(vc_model_offload(t.cache, small, VC_OFFLOAD_VRAM), VC_ERR_BUSY);
    assert_int_equal(vc_model_release(t.cache, small, NULL), VC_OK);
    assert_int_equal(vc_model_release(t.cache, small, NULL), VC_ERR_NOT_HELD);
    assert_int_equal(vc_model_offload(t.cache, small, VC_OFFLOAD_VRAM), VC_OK);
    assert_int_equal(vc_model_acquire(t.cache, big, NULL), VC_ERR_OUT_OF_VRAM); /* 120 KB > 100 KB */
    assert_int_equal(get_stats(t.cache).layers_held, 0);
    assert_int_equal(vc_model_acquire(t.cache, 12345, NULL), VC_ERR_NOT_FOUND);
    free_cache(&t);
}

static void test_offload_all_and_busy(void **state) {
    (void)state;
    test_cache t = make_cache(1 * MB, 1 * MB, 1);
    test_loader ld = {.seed = 4};
    vc_layer_id l = add_loader_layer(t.cache, add_model(t.cache, "m"), "l", 4000, &ld);
    void *p;
    assert_int_equal(vc_layer_acquire(t.cache, l, NULL, &p), VC_OK);
    assert_int_equal(vc_layer_offload(t.cache, l, VC_OFFLOAD_ALL), VC_ERR_BUSY);
    assert_int_equal(vc_layer_release(t.cache, l, NULL), VC_OK);
    assert_int_equal(vc_layer_offload(t.cache, l, VC_OFFLOAD_ALL), VC_OK);
    assert_int_equal(residency(t.cache, l), VC_RES_NONE);
    vc_stats s = get_stats(t.cache);
    assert_int_equal(s.ram_bytes, 0);
    assert_int_equal(s.vram_bytes, 0);
    assert_int_equal(s.vram_evictions[VC_EVICT_MANUAL], 1);
    assert_int_equal(vc_layer_offload(t.cache, l, VC_OFFLOAD_ALL), VC_OK); /* already out */
    assert_int_equal(vc_layer_acquire(t.cache, l, NULL, &p), VC_OK);      /* reloads */
    assert_true(check_device(t.cache, p, 4000, 4));
    assert_int_equal(ld.calls, 2);
    assert_int_equal(vc_layer_release(t.cache, l, NULL), VC_OK);
    free_cache(&t);
}

static void test_several_models_share_one_cache(void **state) {
    (void)state;
    test_cache t = make_cache(200 * KB, 1 * MB, 1);
    const char *names[] = {"text_encoder", "unet", "vae"};
    test_loader ld[9];
    vc_layer_id l[9];
    for (int mi = 0; mi < 3; mi++) {
        vc_model_id m = add_model(t.cache, names[mi]);
        for (int k = 0; k < 3; k++) {
            int i = mi * 3 + k;
            ld[i] = (test_loader){.seed = (uint64_t)i + 100};
            l[i] = add_loader_layer(t.cache, m, "layer", 30 * KB, &ld[i]);
        }
    }
    for (int round = 0; round < 3; round++)
        for (int i = 0; i < 9; i++) {
            void *p;
            assert_int_equal(vc_layer_acquire(t.cache, l[i], NULL, &p), VC_OK);
            assert_true(check_device(t.cache, p, 30 * KB, (uint64_t)i + 100));
            assert_int_equal(vc_layer_release(t.cache, l[i], NULL), VC_OK);
        }
    vc_stats s = get_stats(t.cache);
    assert_int_equal(s.loads, 9); /* RAM kept every copy: each loaded once */
    assert_true(s.arena_peak_bytes <= 200 * KB);
    free_cache(&t);
}

/* vc_layer_load_ram: the loader runs once, ahead of the acquire; bad ids and loader failures leave
 * nothing behind. */
static void test_load_ram_stages_a_layer(void **state) {
    (void)state;
    test_cache t = make_cache(1 * MB, 1 * MB, 1);
    vc_model_id m = add_model(t.cache, "m");
    test_loader ld = {.seed = 9, .fail_next = 1};
    vc_layer_id l = add_loader_layer(t.cache, m, "l", 10000, &ld);
    static char w[1000];
    vc_layer_id h = add_host_layer(t.cache, m, "h", w, sizeof w);
    assert_int_equal(vc_layer_load_ram(NULL, l), VC_ERR_INVALID_ARG);
    assert_int_equal(vc_layer_load_ram(t.cache, (vc_layer_id)0x7777777700000099ULL), VC_ERR_NOT_FOUND);
    assert_true(last_error_has(t.cache, "not registered"));
    /* a failing loader: nothing staged, the pool is as it was */
    assert_int_equal(vc_layer_load_ram(t.cache, l), VC_ERR_LOADER);
    assert_true(last_error_has(t.cache, "returned -5"));
    assert_int_equal(residency(t.cache, l), VC_RES_NONE);
    assert_int_equal(get_stats(t.cache).ram_bytes, 0);
    /* the retry stages it */
    assert_int_equal(vc_layer_load_ram(t.cache, l), VC_OK);
    assert_int_equal(ld.calls, 2);
    assert_int_equal(residency(t.cache, l), VC_RES_RAM);
    vc_stats s = get_stats(t.cache);
    assert_int_equal(s.ram_bytes, 10000);
    assert_int_equal(s.loads, 1);
    assert_int_equal(s.bytes_h2d, 0); /* nothing went to the device */
    /* staged twice, or borrowed: no loader call, no RAM taken */
    assert_int_equal(vc_layer_load_ram(t.cache, l), VC_OK);
    assert_int_equal(vc_layer_load_ram(t.cache, h), VC_OK);
    assert_int_equal(ld.calls, 2);
    assert_int_equal(get_stats(t.cache).ram_bytes, 10000);
    /* the acquire copies from RAM */
    void *p;
    assert_int_equal(vc_layer_acquire(t.cache, l, NULL, &p), VC_OK);
    assert_true(check_device(t.cache, p, 10000, 9));
    assert_int_equal(ld.calls, 2);
    assert_int_equal(get_stats(t.cache).ram_hits, 1);
    assert_int_equal(vc_layer_release(t.cache, l, NULL), VC_OK);
    free_cache(&t);
}

/* vc_model_load_ram: all layers, or a clear refusal before any loader runs when the model cannot fit
 * the RAM budget; a loader error stops the walk and keeps what was staged. */
static void test_load_ram_model(void **state) {
    (void)state;
    test_cache t = make_cache(1 * MB, 100 * KB, 0);
    vc_model_id big = add_model(t.cache, "big");
    test_loader lb[3] = {{.seed = 1}, {.seed = 2}, {.seed = 3}};
    for (int i = 0; i < 3; i++) add_loader_layer(t.cache, big, "b", 40 * KB, &lb[i]);
    assert_int_equal(vc_model_load_ram(t.cache, big), VC_ERR_OUT_OF_RAM);
    assert_true(last_error_has(t.cache, "nothing was loaded"));
    for (int i = 0; i < 3; i++) assert_int_equal(lb[i].calls, 0);
    assert_int_equal(get_stats(t.cache).ram_bytes, 0);
    assert_int_equal(vc_model_load_ram(t.cache, (vc_model_id)12345), VC_ERR_NOT_FOUND);
    assert_int_equal(vc_model_load_ram(NULL, big), VC_ERR_INVALID_ARG);

    vc_model_id m = add_model(t.cache, "m");
    test_loader ld[3] = {{.seed = 4}, {.seed = 5, .fail_next = 1}, {.seed = 6}};
    vc_layer_id l[3];
    for (int i = 0; i < 3; i++) l[i] = add_loader_layer(t.cache, m, "l", 20 * KB, &ld[i]);
    assert_int_equal(vc_model_load_ram(t.cache, m), VC_ERR_LOADER);
    assert_int_equal(residency(t.cache, l[0]), VC_RES_RAM); /* staged before the failure: kept */
    assert_int_equal(residency(t.cache, l[1]), VC_RES_NONE);
    assert_int_equal(residency(t.cache, l[2]), VC_RES_NONE);
    assert_int_equal(ld[2].calls, 0);
    assert_int_equal(get_stats(t.cache).ram_bytes, 20 * KB);
    assert_int_equal(vc_model_load_ram(t.cache, m), VC_OK);
    assert_int_equal(ld[0].calls, 1); /* not loaded again */
    for (int i = 0; i < 3; i++) assert_int_equal(residency(t.cache, l[i]), VC_RES_RAM);
    assert_int_equal(get_stats(t.cache).ram_bytes, 60 * KB);
    /* on the device without a RAM copy (keep_ram_copy off): nothing to stage, no RAM taken */
    void *p;
    assert_int_equal(vc_layer_acquire(t.cache, l[0], NULL, &p), VC_OK);
    assert_true(check_device(t.cache, p, 20 * KB, ld[0].seed)); /* waits for the upload on a GPU */
    assert_int_equal(vc_layer_release(t.cache, l[0], NULL), VC_OK);
    assert_int_equal(residency(t.cache, l[0]), VC_RES_VRAM);
    assert_int_equal(vc_model_load_ram(t.cache, m), VC_OK);
    assert_int_equal(ld[0].calls, 1);
    assert_int_equal(get_stats(t.cache).ram_bytes, 40 * KB);
    free_cache(&t);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hit_miss_and_pointer),
        cmocka_unit_test(test_release_without_acquire),
        cmocka_unit_test(test_lru_eviction),
        cmocka_unit_test(test_held_layers_never_evicted),
        cmocka_unit_test(test_loader_failure_and_retry),
        cmocka_unit_test(test_loader_explains_its_failure),
        cmocka_unit_test(test_ram_pool_lru_and_reload),
        cmocka_unit_test(test_layer_larger_than_ram_budget),
        cmocka_unit_test(test_dynamic_budget_follows_other_processes),
        cmocka_unit_test(test_explicit_budget),
        cmocka_unit_test(test_fragmentation_makes_a_hole),
        cmocka_unit_test(test_alignment_honoured),
        cmocka_unit_test(test_model_lock_all_or_nothing),
        cmocka_unit_test(test_offload_all_and_busy),
        cmocka_unit_test(test_several_models_share_one_cache),
        cmocka_unit_test(test_load_ram_stages_a_layer),
        cmocka_unit_test(test_load_ram_model),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
