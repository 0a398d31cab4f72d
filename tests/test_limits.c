/* Limits: a million layers, sizes near SIZE_MAX, budgets of zero and of terabytes, and the RAM a
 * container may really use (cgroup memory.max). */
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cache_internal.h"
#include "test_util.h"

static void test_million_layers(void **state) {
    (void)state;
    vc_cache_options o;
    vc_cache_options_init(&o);
    o.ram_budget = 64 * MB;
    o.working_mem = 0;
    o.arena_segment_bytes = 1 * MB;
    test_cache t = make_cache_opts(512 * MB, &o);
    static char w[256];
    vc_model_id m = add_model(t.cache, "huge");
    enum { N = 1000000 };
    vc_layer_id *ids = malloc(N * sizeof *ids);
    vc_layer_desc d = {.name = "l", .bytes = sizeof w, .host_ptr = w};
    for (int i = 0; i < N; i++) assert_int_equal(vc_layer_register(t.cache, m, &d, &ids[i]), VC_OK);
    assert_int_equal(get_stats(t.cache).layers, N);
    void *p;
    for (int i = 0; i < N; i += 997) {
        assert_int_equal(vc_layer_acquire(t.cache, ids[i], NULL, &p), VC_OK);
        assert_int_equal(vc_layer_release(t.cache, ids[i], NULL), VC_OK);
    }
    assert_int_equal(vc_model_unregister(t.cache, m), VC_OK);
    assert_int_equal(get_stats(t.cache).layers, 0);
    free(ids);
    free_cache(&t);
}

static void test_sizes_near_size_max(void **state) {
    (void)state;
    test_cache t = make_cache(1 * MB, 1 * MB, 1);
    vc_model_id m = add_model(t.cache, "m");
    test_loader ld = {.seed = 1};
    vc_layer_id id;
    vc_layer_desc d = {.name = "giant", .loader = test_loader_fn, .loader_user = &ld};
    d.bytes = SIZE_MAX;
    assert_int_equal(vc_layer_register(t.cache, m, &d, &id), VC_ERR_TOO_LARGE);
    d.bytes = SIZE_MAX / 2 + 1;
    assert_int_equal(vc_layer_register(t.cache, m, &d, &id), VC_ERR_TOO_LARGE);
    d.bytes = SIZE_MAX / 2 - 4096; /* registers; can never load here, and says why */
    assert_int_equal(vc_layer_register(t.cache, m, &d, &id), VC_OK);
    void *p;
    assert_int_equal(vc_layer_acquire(t.cache, id, NULL, &p), VC_ERR_OUT_OF_RAM);
    assert_int_equal(ld.calls, 0);
    static char w[64];
    vc_layer_desc hd = {.name = "giant-borrowed", .bytes = SIZE_MAX / 2 - 4096, .host_ptr = w};
    assert_int_equal(vc_layer_register(t.cache, m, &hd, &id), VC_OK);
    assert_int_equal(vc_layer_acquire(t.cache, id, NULL, &p), VC_ERR_OUT_OF_VRAM);
    vc_reservation *r;
    assert_int_equal(vc_reserve_working_mem(t.cache, SIZE_MAX, VC_RESERVE_BUFFER, &r), VC_ERR_OUT_OF_VRAM);
    assert_int_equal(vc_reserve_working_mem(t.cache, SIZE_MAX / 2, 0, &r), VC_ERR_OUT_OF_VRAM);
    vc_stats s = get_stats(t.cache);
    assert_int_equal(s.ram_bytes, 0);
    assert_int_equal(s.vram_bytes, 0);
    assert_int_equal(s.reserved_bytes, 0);
    free_cache(&t);
}

static void test_zero_and_terabyte_budgets(void **state) {
    (void)state;
    static char w[16 * KB];
    test_loader ld = {.seed = 2};
    /* RAM budget 0: borrowed layers work, loaded layers cannot be held in RAM */
    vc_cache_options o;
    vc_cache_options_init(&o);
    o.ram_budget = 0;
    o.working_mem = 0;
    test_cache t = make_cache_opts(1 * MB, &o);
    vc_model_id m = add_model(t.cache, "m");
    vc_layer_id b = add_host_layer(t.cache, m, "borrowed", w, sizeof w);
    vc_layer_id l = add_loader_layer(t.cache, m, "loaded", 16 * KB, &ld);
    void *p;
    assert_int_equal(vc_layer_acquire(t.cache, b, NULL, &p), VC_OK);
    assert_int_equal(vc_layer_release(t.cache, b, NULL), VC_OK);
    assert_int_equal(vc_layer_acquire(t.cache, l, NULL, &p), VC_ERR_OUT_OF_RAM);
    free_cache(&t);
    /* terabyte budgets on a 1 MB device: the device still bounds what is used */
    o.ram_budget = (size_t)4 << 40;
    o.vram_budget = (size_t)2 << 40;
    t = make_cache_opts(1 * MB, &o);
    m = add_model(t.cache, "m");
    vc_layer_id ids[80];
    for (int i = 0; i < 80; i++) {
        ids[i] = add_host_layer(t.cache, m, "l", w, sizeof w);
        assert_int_equal(vc_layer_acquire(t.cache, ids[i], NULL, &p), VC_OK);
        assert_int_equal(vc_layer_release(t.cache, ids[i], NULL), VC_OK);
    }
    vc_stats s = get_stats(t.cache);
    assert_true(s.arena_peak_bytes <= 1 * MB);
    assert_true(s.vram_limit <= 1 * MB);
    free_cache(&t);
    /* working memory of "everything": nothing can be cached, and the error says so */
    o.vram_budget = VC_SIZE_AUTO;
    o.working_mem = SIZE_MAX;
    t = make_cache_opts(1 * MB, &o);
    b = add_host_layer(t.cache, add_model(t.cache, "m"), "l", w, sizeof w);
    assert_int_equal(vc_layer_acquire(t.cache, b, NULL, &p), VC_ERR_OUT_OF_VRAM);
    assert_true(last_error_has(t.cache, "weight budget is 0 B"));
    free_cache(&t);
}

static void write_file(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void test_cgroup_limit_counts(void **state) {
    (void)state;
    char root[] = "/tmp/vc_cgroup_XXXXXX";
    assert_non_null(mkdtemp(root));
    char path[512], self[128], sub[128];
    snprintf(self, sizeof self, "%s/self_cgroup", root);
    snprintf(sub, sizeof sub, "%s/app.slice", root);
    mkdir(sub, 0700);
    char why[128];
    /* no limit anywhere: physical RAM */
    write_file(self, "0::/app.slice\n");
    snprintf(path, sizeof path, "%s/memory.max", sub);
    write_file(path, "max\n");
    assert_int_equal(vc__system_ram_at(root, self, 64 * GB, why, sizeof why), 64 * GB);
    assert_non_null(strstr(why, "physical"));
    /* the process's own cgroup v2 limit wins when lower */
    write_file(path, "8589934592\n");
    assert_int_equal(vc__system_ram_at(root, self, 64 * GB, why, sizeof why), 8 * GB);
    assert_non_null(strstr(why, "cgroup v2"));
    /* and the default RAM budget follows: 0.5 x 8 GB - 2 GB = 2 GB -> the 4 GB floor */
    assert_int_equal(vc_default_ram_budget(8 * GB, 0, VC_SIZE_AUTO, 3 * GB, NULL, 0), 4 * GB);
    /* a limit above physical RAM changes nothing */
    write_file(path, "137438953472\n");
    assert_int_equal(vc__system_ram_at(root, self, 64 * GB, why, sizeof why), 64 * GB);
    /* cgroup v1 */
    remove(path);
    char v1[128];
    snprintf(v1, sizeof v1, "%s/memory", root);
    mkdir(v1, 0700);
    snprintf(path, sizeof path, "%s/memory/memory.limit_in_bytes", root);
    write_file(path, "4294967296\n");
    assert_int_equal(vc__system_ram_at(root, self, 64 * GB, why, sizeof why), 4 * GB);
    assert_non_null(strstr(why, "cgroup v1"));
    /* v1's "unlimited" is a huge number */
    write_file(path, "9223372036854771712\n");
    assert_int_equal(vc__system_ram_at(root, self, 64 * GB, why, sizeof why), 64 * GB);
    /* garbage is ignored */
    write_file(path, "lots\n");
    assert_int_equal(vc__system_ram_at(root, self, 64 * GB, why, sizeof why), 64 * GB);
    remove(path);
    rmdir(v1);
    remove(self);
    rmdir(sub);
    rmdir(root);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_million_layers),
        cmocka_unit_test(test_sizes_near_size_max),
        cmocka_unit_test(test_zero_and_terabyte_budgets),
        cmocka_unit_test(test_cgroup_limit_counts),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
