/* keep_ram_copy_of_weights on and off: RAM use, write-backs, and that nothing is ever lost. */
#include "test_util.h"

static void cycle(test_cache *t, vc_layer_id *l, int n, int rounds, test_loader *ld) {
    for (int r = 0; r < rounds; r++)
        for (int i = 0; i < n; i++) {
            void *p;
            assert_int_equal(vc_layer_acquire(t->cache, l[i], NULL, &p), VC_OK);
            assert_true(check_device(t->cache, p, 32 * KB, ld[i].seed));
            assert_int_equal(vc_layer_release(t->cache, l[i], NULL), VC_OK);
        }
}

static void test_on_keeps_copy_no_d2h(void **state) {
    (void)state;
    test_cache t = make_cache(100 * KB, 1 * MB, 1);
    vc_model_id m = add_model(t.cache, "m");
    test_loader ld[5];
    vc_layer_id l[5];
    for (int i = 0; i < 5; i++) {
        ld[i] = (test_loader){.seed = (uint64_t)i + 1};
        l[i] = add_loader_layer(t.cache, m, "l", 32 * KB, &ld[i]);
    }
    cycle(&t, l, 5, 3, ld);
    vc_stats s = get_stats(t.cache);
    assert_int_equal(s.bytes_d2h, 0);   /* leaving VRAM cost no copy */
    assert_int_equal(s.loads, 5);       /* each loaded once */
    assert_int_equal(s.ram_bytes, 5 * 32 * KB);
    assert_int_equal(residency(t.cache, l[4]), VC_RES_VRAM_RAM);
    free_cache(&t);
}

static void test_off_drops_copy_and_writes_back(void **state) {
    (void)state;
    test_cache t = make_cache(100 * KB, 1 * MB, 0);
    vc_model_id m = add_model(t.cache, "m");
    test_loader ld[5];
    vc_layer_id l[5];
    for (int i = 0; i < 5; i++) {
        ld[i] = (test_loader){.seed = (uint64_t)i + 1};
        l[i] = add_loader_layer(t.cache, m, "l", 32 * KB, &ld[i]);
    }
    void *p;
    assert_int_equal(vc_layer_acquire(t.cache, l[0], NULL, &p), VC_OK);
    assert_int_equal(residency(t.cache, l[0]), VC_RES_VRAM); /* RAM copy dropped after upload */
    assert_true(check_device(t.cache, p, 32 * KB, ld[0].seed)); /* waits for the upload on a GPU */
    assert_int_equal(get_stats(t.cache).ram_bytes, 0);
    assert_int_equal(vc_layer_release(t.cache, l[0], NULL), VC_OK);
    cycle(&t, l, 5, 3, ld);
    vc_stats s = get_stats(t.cache);
    assert_true(s.bytes_d2h > 0);       /* leaving VRAM copied the weights back */
    assert_int_equal(s.loads, 5);       /* ... so the loader never ran twice */
    for (int i = 0; i < 5; i++) {
        unsigned char buf[32 * KB];
        assert_int_equal(vc_layer_read(t.cache, l[i], buf, sizeof buf), VC_OK);
        assert_true(check_pattern(buf, sizeof buf, ld[i].seed));
        vc_residency r = residency(t.cache, l[i]);
        assert_true(r == VC_RES_VRAM || r == VC_RES_RAM);
    }
    free_cache(&t);
}

static void test_off_without_ram_room_reloads(void **state) {
    (void)state;
    /* RAM budget of one layer: write-backs cannot all fit, so some weights are dropped and the
     * loader produces them again. Nothing is lost either way. */
    test_cache t = make_cache(64 * KB, 32 * KB, 0);
    vc_model_id m = add_model(t.cache, "m");
    test_loader ld[4];
    vc_layer_id l[4];
    for (int i = 0; i < 4; i++) {
        ld[i] = (test_loader){.seed = (uint64_t)i + 50};
        l[i] = add_loader_layer(t.cache, m, "l", 32 * KB, &ld[i]);
    }
    cycle(&t, l, 4, 3, ld);
    vc_stats s = get_stats(t.cache);
    assert_true(s.ram_peak_bytes <= 32 * KB);
    assert_true(s.loads > 4);
    free_cache(&t);
}

static void test_off_with_borrowed_source(void **state) {
    (void)state;
    /* The engine's pointer is the host copy: nothing to drop or write back. */
    test_cache t = make_cache(64 * KB, 32 * KB, 0);
    vc_model_id m = add_model(t.cache, "m");
    static char w[3][32 * KB];
    vc_layer_id l[3];
    for (int i = 0; i < 3; i++) {
        fill_pattern(w[i], sizeof w[i], (uint64_t)i);
        l[i] = add_host_layer(t.cache, m, "l", w[i], sizeof w[i]);
    }
    for (int r = 0; r < 3; r++)
        for (int i = 0; i < 3; i++) {
            void *p;
            assert_int_equal(vc_layer_acquire(t.cache, l[i], NULL, &p), VC_OK);
            assert_true(check_device(t.cache, p, 32 * KB, (uint64_t)i));
            assert_int_equal(vc_layer_release(t.cache, l[i], NULL), VC_OK);
        }
    vc_stats s = get_stats(t.cache);
    assert_int_equal(s.bytes_d2h, 0);
    assert_int_equal(s.ram_peak_bytes, 0);
    free_cache(&t);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_on_keeps_copy_no_d2h),
        cmocka_unit_test(test_off_drops_copy_and_writes_back),
        cmocka_unit_test(test_off_without_ram_room_reloads),
        cmocka_unit_test(test_off_with_borrowed_source),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
