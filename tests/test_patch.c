/* LoRA-style patching (seed 001): backup and fuse modes, borrowed sources, keep_ram_copy off, and
 * failures that leave the weights as they were. */
#include "test_util.h"

static int xor_5a(void *user, void *w, size_t n) {
    int *calls = user;
    if (calls) (*calls)++;
    for (size_t i = 0; i < n; i++) ((uint8_t *)w)[i] ^= 0x5a;
    return 0;
}

static int half_then_fail(void *user, void *w, size_t n) {
    (void)user;
    memset(w, 0, n / 2); /* damage, then give up, saying why */
    vc_loader_set_error("LoRA rank mismatch");
    return -3;
}

static int is_xored(const void *p, size_t n, uint64_t seed) {
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++)
        if (b[i] != (uint8_t)(pattern_byte(seed, i) ^ 0x5a)) return 0;
    return 1;
}

static void read_back(vc_cache *c, vc_layer_id l, void *buf, size_t n) {
    assert_int_equal(vc_layer_read(c, l, buf, n), VC_OK);
}

static void test_backup_mode(void **state) {
    (void)state;
    test_cache t = make_cache(1 * MB, 1 * MB, 1);
    test_loader ld = {.seed = 3};
    vc_layer_id l = add_loader_layer(t.cache, add_model(t.cache, "unet"), "attn", 32 * KB, &ld);
    void *p;
    assert_int_equal(vc_layer_acquire(t.cache, l, NULL, &p), VC_OK);
    assert_int_equal(vc_layer_patch(t.cache, l, VC_PATCH_BACKUP, xor_5a, NULL), VC_ERR_BUSY); /* held */
    assert_int_equal(vc_layer_release(t.cache, l, NULL), VC_OK);
    int calls = 0;
    assert_int_equal(vc_layer_patch(t.cache, l, VC_PATCH_BACKUP, xor_5a, &calls), VC_OK);
    assert_int_equal(calls, 1);
    vc_layer_info info;
    vc_layer_get_info(t.cache, l, &info);
    assert_int_equal(info.patched, 1);
    assert_int_equal(get_stats(t.cache).ram_bytes, 64 * KB); /* weights + backup: "up to 2x" */
    assert_int_equal(vc_layer_acquire(t.cache, l, NULL, &p), VC_OK);
    assert_true(check_device_by(t.cache, p, 32 * KB, 3, is_xored)); /* the device got the patched weights */
    assert_int_equal(vc_layer_release(t.cache, l, NULL), VC_OK);
    /* patched weights are never dropped, even when asked to leave everything */
    assert_int_equal(vc_layer_offload(t.cache, l, VC_OFFLOAD_ALL), VC_OK);
    unsigned char buf[32 * KB];
    read_back(t.cache, l, buf, sizeof buf);
    assert_true(is_xored(buf, sizeof buf, 3));
    assert_int_equal(vc_layer_unpatch(t.cache, l), VC_OK);
    read_back(t.cache, l, buf, sizeof buf);
    assert_true(check_pattern(buf, sizeof buf, 3));
    assert_int_equal(get_stats(t.cache).ram_bytes, 32 * KB);
    assert_int_equal(ld.calls, 1); /* restored from the backup, not the loader */
    assert_int_equal(vc_layer_unpatch(t.cache, l), VC_OK); /* unpatched already: fine */
    free_cache(&t);
}

static void test_fuse_mode_and_stacking(void **state) {
    (void)state;
    test_cache t = make_cache(1 * MB, 1 * MB, 1);
    test_loader ld = {.seed = 4};
    vc_layer_id l = add_loader_layer(t.cache, add_model(t.cache, "unet"), "ff", 16 * KB, &ld);
    assert_int_equal(vc_layer_patch(t.cache, l, VC_PATCH_FUSE, xor_5a, NULL), VC_OK);
    assert_int_equal(get_stats(t.cache).ram_bytes, 16 * KB); /* no second copy */
    assert_int_equal(vc_layer_patch(t.cache, l, VC_PATCH_FUSE, xor_5a, NULL), VC_ERR_INVALID_ARG);
    assert_true(last_error_has(t.cache, "unpatch it first"));
    unsigned char buf[16 * KB];
    read_back(t.cache, l, buf, sizeof buf);
    assert_true(is_xored(buf, sizeof buf, 4));
    assert_int_equal(vc_layer_unpatch(t.cache, l), VC_OK); /* from the source again */
    read_back(t.cache, l, buf, sizeof buf);
    assert_true(check_pattern(buf, sizeof buf, 4));
    /* backup patches stack; one unpatch restores the original */
    assert_int_equal(vc_layer_patch(t.cache, l, VC_PATCH_BACKUP, xor_5a, NULL), VC_OK);
    assert_int_equal(vc_layer_patch(t.cache, l, VC_PATCH_BACKUP, xor_5a, NULL), VC_OK);
    read_back(t.cache, l, buf, sizeof buf);
    assert_true(check_pattern(buf, sizeof buf, 4)); /* xor twice */
    assert_int_equal(vc_layer_unpatch(t.cache, l), VC_OK);
    read_back(t.cache, l, buf, sizeof buf);
    assert_true(check_pattern(buf, sizeof buf, 4));
    free_cache(&t);
}

static int add_one(void *user, void *w, size_t n) {
    (void)user;
    for (size_t i = 0; i < n; i++) ((uint8_t *)w)[i]++;
    return 0;
}

/* A LoRA fused in, then a second applied with a backup on top: the only original is the source, so
 * unpatch must go back to it. (The first version backed up the fused weights and restored those as
 * if original: the layer read as fused or original depending on whether its RAM copy had been dropped
 * since.) */
static void test_backup_over_fuse_restores_the_original(void **state) {
    (void)state;
    test_cache t = make_cache(1 * MB, 1 * MB, 1);
    test_loader ld = {.seed = 6};
    vc_layer_id l = add_loader_layer(t.cache, add_model(t.cache, "unet"), "proj", 16 * KB, &ld);
    assert_int_equal(vc_layer_patch(t.cache, l, VC_PATCH_FUSE, xor_5a, NULL), VC_OK);
    assert_int_equal(vc_layer_patch(t.cache, l, VC_PATCH_BACKUP, add_one, NULL), VC_OK);
    assert_int_equal(get_stats(t.cache).ram_bytes, 16 * KB); /* no copy of the fused weights */
    unsigned char buf[16 * KB];
    read_back(t.cache, l, buf, sizeof buf);
    for (size_t i = 0; i < sizeof buf; i++) assert_int_equal(buf[i], (uint8_t)((pattern_byte(6, i) ^ 0x5a) + 1));
    assert_int_equal(vc_layer_unpatch(t.cache, l), VC_OK);
    vc_layer_info info;
    assert_int_equal(vc_layer_get_info(t.cache, l, &info), VC_OK);
    assert_int_equal(info.patched, 0);
    read_back(t.cache, l, buf, sizeof buf);
    assert_true(check_pattern(buf, sizeof buf, 6)); /* the original, not the fused weights */
    void *p;
    assert_int_equal(vc_layer_acquire(t.cache, l, NULL, &p), VC_OK);
    assert_true(check_device(t.cache, p, sizeof buf, 6));
    assert_int_equal(vc_layer_release(t.cache, l, NULL), VC_OK);
    free_cache(&t);
}

static void test_borrowed_source_is_never_written(void **state) {
    (void)state;
    test_cache t = make_cache(1 * MB, 1 * MB, 1);
    static char w[8 * KB];
    fill_pattern(w, sizeof w, 5);
    vc_layer_id l = add_host_layer(t.cache, add_model(t.cache, "m"), "l", w, sizeof w);
    for (int mode = 0; mode < 2; mode++) {
        assert_int_equal(vc_layer_patch(t.cache, l, (vc_patch_mode)mode, xor_5a, NULL), VC_OK);
        assert_true(check_pattern(w, sizeof w, 5)); /* the engine's memory is untouched */
        void *p;
        assert_int_equal(vc_layer_acquire(t.cache, l, NULL, &p), VC_OK);
        assert_true(check_device_by(t.cache, p, sizeof w, 5, is_xored));
        assert_int_equal(vc_layer_release(t.cache, l, NULL), VC_OK);
        assert_int_equal(vc_layer_unpatch(t.cache, l), VC_OK);
        assert_int_equal(vc_layer_acquire(t.cache, l, NULL, &p), VC_OK);
        assert_true(check_device(t.cache, p, sizeof w, 5));
        assert_int_equal(vc_layer_release(t.cache, l, NULL), VC_OK);
        assert_int_equal(get_stats(t.cache).ram_bytes, 0); /* the private copy is gone again */
    }
    free_cache(&t);
}

static void test_keep_ram_copy_off_and_device_only(void **state) {
    (void)state;
    test_cache t = make_cache(1 * MB, 1 * MB, 0);
    test_loader ld = {.seed = 6};
    vc_layer_id l = add_loader_layer(t.cache, add_model(t.cache, "m"), "l", 16 * KB, &ld);
    void *p;
    assert_int_equal(vc_layer_acquire(t.cache, l, NULL, &p), VC_OK);
    assert_int_equal(vc_layer_release(t.cache, l, NULL), VC_OK);
    assert_int_equal(residency(t.cache, l), VC_RES_VRAM); /* the device has the only copy */
    assert_int_equal(vc_layer_patch(t.cache, l, VC_PATCH_BACKUP, xor_5a, NULL), VC_OK);
    assert_int_equal(ld.calls, 1); /* read back from the device, not reloaded */
    /* with keep_ram_copy off the patched copy still stays in RAM: it is the only one */
    assert_int_equal(vc_layer_acquire(t.cache, l, NULL, &p), VC_OK);
    assert_true(check_device_by(t.cache, p, 16 * KB, 6, is_xored));
    assert_int_equal(vc_layer_release(t.cache, l, NULL), VC_OK);
    assert_int_equal(residency(t.cache, l), VC_RES_VRAM_RAM);
    assert_int_equal(vc_layer_unpatch(t.cache, l), VC_OK);
    unsigned char buf[16 * KB];
    read_back(t.cache, l, buf, sizeof buf);
    assert_true(check_pattern(buf, sizeof buf, 6));
    free_cache(&t);
}

static void test_failed_patch_changes_nothing(void **state) {
    (void)state;
    test_cache t = make_cache(1 * MB, 1 * MB, 1);
    test_loader ld = {.seed = 7};
    vc_layer_id l = add_loader_layer(t.cache, add_model(t.cache, "m"), "l", 16 * KB, &ld);
    unsigned char buf[16 * KB];
    for (int mode = 0; mode < 2; mode++) {
        assert_int_equal(vc_layer_patch(t.cache, l, (vc_patch_mode)mode, half_then_fail, NULL), VC_ERR_LOADER);
        assert_true(last_error_has(t.cache, "returned -3: LoRA rank mismatch; the weights are as they were"));
        read_back(t.cache, l, buf, sizeof buf);
        assert_true(check_pattern(buf, sizeof buf, 7));
        vc_layer_info info;
        vc_layer_get_info(t.cache, l, &info);
        assert_int_equal(info.patched, 0);
        assert_int_equal(get_stats(t.cache).ram_bytes, 16 * KB);
    }
    /* a failing stacked patch keeps the first patch */
    assert_int_equal(vc_layer_patch(t.cache, l, VC_PATCH_BACKUP, xor_5a, NULL), VC_OK);
    assert_int_equal(vc_layer_patch(t.cache, l, VC_PATCH_BACKUP, half_then_fail, NULL), VC_ERR_LOADER);
    read_back(t.cache, l, buf, sizeof buf);
    assert_true(is_xored(buf, sizeof buf, 7));
    /* a loader failing while producing the weights to patch */
    ld.fail_next = 1;
    test_loader ld2 = {.seed = 8, .fail_next = 1};
    vc_layer_id l2 = add_loader_layer(t.cache, add_model(t.cache, "m2"), "l2", 16 * KB, &ld2);
    assert_int_equal(vc_layer_patch(t.cache, l2, VC_PATCH_BACKUP, xor_5a, NULL), VC_ERR_LOADER);
    assert_int_equal(vc_layer_patch(t.cache, l2, VC_PATCH_BACKUP, xor_5a, NULL), VC_OK);
    /* RAM too small for the backup */
    free_cache(&t);
    t = make_cache(1 * MB, 16 * KB, 1);
    test_loader ld3 = {.seed = 9};
    vc_layer_id l3 = add_loader_layer(t.cache, add_model(t.cache, "m"), "l", 16 * KB, &ld3);
    assert_int_equal(vc_layer_patch(t.cache, l3, VC_PATCH_BACKUP, xor_5a, NULL), VC_ERR_OUT_OF_RAM);
    assert_int_equal(vc_layer_patch(t.cache, l3, VC_PATCH_FUSE, xor_5a, NULL), VC_OK); /* fuse needs no backup */
    /* the pool is full of patched weights, which never leave: the error says so */
    test_loader ld4 = {.seed = 10};
    vc_layer_id l4 = add_loader_layer(t.cache, add_model(t.cache, "m4"), "l4", 16 * KB, &ld4);
    void *p4;
    assert_int_equal(vc_layer_acquire(t.cache, l4, NULL, &p4), VC_ERR_OUT_OF_RAM);
    assert_true(last_error_has(t.cache, "16384 B of them patched weights and their backups"));
    /* bad arguments */
    assert_int_equal(vc_layer_patch(t.cache, l3, (vc_patch_mode)9, xor_5a, NULL), VC_ERR_INVALID_ARG);
    assert_int_equal(vc_layer_patch(t.cache, l3, VC_PATCH_FUSE, NULL, NULL), VC_ERR_INVALID_ARG);
    assert_int_equal(vc_layer_patch(t.cache, 12345, VC_PATCH_FUSE, xor_5a, NULL), VC_ERR_NOT_FOUND);
    assert_int_equal(vc_layer_unpatch(t.cache, 12345), VC_ERR_NOT_FOUND);
    assert_int_equal(vc_layer_unpatch(NULL, l3), VC_ERR_INVALID_ARG);
    free_cache(&t);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_backup_mode),
        cmocka_unit_test(test_fuse_mode_and_stacking),
        cmocka_unit_test(test_backup_over_fuse_restores_the_original),
        cmocka_unit_test(test_borrowed_source_is_never_written),
        cmocka_unit_test(test_keep_ram_copy_off_and_device_only),
        cmocka_unit_test(test_failed_patch_changes_nothing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
