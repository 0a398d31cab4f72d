/* Keep-alive (model_cache_keep_alive_min): an idle cache clears itself; nothing is lost; held
 * layers stay; the next use reloads. The timer's clear is awaited through the log line it writes
 * (a condition variable, not a sleep). */
#include <math.h>
#include <pthread.h>
#include <time.h>

#include "test_util.h"

#include "cache_internal.h" /* vc__clear_cache: the clear without the timer */

/* Signalled by the log line of a clear. */
static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int clears;
} seen = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0};

static void on_log(void *user, vc_log_level level, const char *msg) {
    (void)user;
    (void)level;
    if (!strstr(msg, "cleared the model cache")) return;
    pthread_mutex_lock(&seen.mu);
    seen.clears++;
    pthread_cond_broadcast(&seen.cv);
    pthread_mutex_unlock(&seen.mu);
}

/* Waits (up to a minute: a loaded CI machine) until `n` clears have been logged. */
static int wait_for_clears(int n) {
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 60;
    pthread_mutex_lock(&seen.mu);
    while (seen.clears < n)
        if (pthread_cond_timedwait(&seen.cv, &seen.mu, &until) != 0) break;
    int got = seen.clears;
    pthread_mutex_unlock(&seen.mu);
    return got >= n;
}

/* Waits for clears until one leaves nothing in VRAM or the RAM pool: on a loaded machine a clear may
 * fall between two of the test's uses (the test thread descheduled for a whole period), and the
 * next idle spell then brings another. Returns the clears seen. */
static int wait_until_cleared(vc_cache *c, int after) {
    for (int n = after + 1; n <= after + 5; n++) {
        if (!wait_for_clears(n)) return 0;
        vc_stats s;
        assert_int_equal(vc_cache_get_stats(c, &s), VC_OK);
        if (s.vram_bytes == 0 && s.ram_bytes == 0) return n;
    }
    return 0;
}

static test_cache keep_alive_cache(double seconds) {
    vc_cache_options o;
    vc_cache_options_init(&o);
    o.ram_budget = 4 * MB;
    o.working_mem = 0;
    o.arena_segment_bytes = 64 * KB;
    o.keep_alive_s = seconds;
    o.log_fn = on_log;
    o.log_level = VC_LOG_INFO;
    return make_cache_opts(8 * MB, &o);
}

static void use(vc_cache *c, vc_layer_id l, uint64_t seed, size_t bytes) {
    void *p;
    assert_int_equal(vc_layer_acquire(c, l, NULL, &p), VC_OK);
    assert_true(check_device(c, p, bytes, seed));
    assert_int_equal(vc_layer_release(c, l, NULL), VC_OK);
}

static void test_idle_cache_clears_itself_and_reloads(void **state) {
    (void)state;
    int before = seen.clears;
    test_cache t = keep_alive_cache(0.05);
    vc_model_id m = add_model(t.cache, "unet");
    test_loader la = {.seed = 1}, lb = {.seed = 2};
    vc_layer_id a = add_loader_layer(t.cache, m, "a", 256 * KB, &la);
    vc_layer_id b = add_loader_layer(t.cache, m, "b", 128 * KB, &lb);
    static uint8_t host[64 * KB];
    fill_pattern(host, sizeof host, 3);
    vc_layer_id h = add_host_layer(t.cache, m, "h", host, sizeof host);
    use(t.cache, a, 1, 256 * KB);
    use(t.cache, b, 2, 128 * KB);
    use(t.cache, h, 3, sizeof host);
    int clears = wait_until_cleared(t.cache, before);
    assert_true(clears > before);
    /* Everything went back: VRAM weights and the arena, and the RAM copies the loaders can redo;
     * the engine's own pointer stays its own. */
    vc_stats s = get_stats(t.cache);
    assert_int_equal(s.vram_bytes, 0);
    assert_int_equal(s.arena_bytes, 0);
    assert_int_equal(s.ram_bytes, 0);
    assert_int_equal(s.layers_in_vram, 0);
    assert_true(s.vram_evictions[VC_EVICT_MANUAL] >= 3);
    assert_int_equal(residency(t.cache, a), VC_RES_NONE);
    /* The next use loads again and gets the right bytes. */
    use(t.cache, a, 1, 256 * KB);
    use(t.cache, h, 3, sizeof host);
    assert_int_equal(la.calls, 2);
    assert_int_equal(lb.calls, 1);
    /* A later idle spell clears again (once per spell). */
    assert_true(wait_until_cleared(t.cache, clears) > clears);
    free_cache(&t);
}

/* The clear itself: held layers stay, in VRAM and usable; layers without a loader keep their
 * bytes; a RAM copy a loader cannot redo (a patch) is kept. */
static void test_clear_keeps_what_is_in_use(void **state) {
    (void)state;
    test_cache t = keep_alive_cache(0); /* no timer: the clear is called directly */
    vc_model_id m = add_model(t.cache, "unet");
    test_loader la = {.seed = 1}, lb = {.seed = 2};
    vc_layer_id a = add_loader_layer(t.cache, m, "a", 256 * KB, &la);
    vc_layer_id b = add_loader_layer(t.cache, m, "b", 128 * KB, &lb);
    void *pa;
    assert_int_equal(vc_layer_acquire(t.cache, a, NULL, &pa), VC_OK);
    use(t.cache, b, 2, 128 * KB);
    pthread_mutex_lock(&t.cache->lock);
    size_t stayed = vc__clear_cache(t.cache);
    pthread_mutex_unlock(&t.cache->lock);
    assert_int_equal(stayed, 1);
    assert_int_equal(residency(t.cache, a), VC_RES_VRAM_RAM);
    assert_int_equal(residency(t.cache, b), VC_RES_NONE);
    assert_true(check_device(t.cache, pa, 256 * KB, 1)); /* the held layer's memory is untouched */
    vc_stats s = get_stats(t.cache);
    assert_int_equal(s.vram_bytes, 256 * KB);
    assert_true(s.arena_bytes >= 256 * KB && s.arena_bytes < 256 * KB + 64 * KB); /* b's segment went back */
    assert_int_equal(vc_layer_release(t.cache, a, NULL), VC_OK);
    use(t.cache, b, 2, 128 * KB);
    assert_int_equal(lb.calls, 2);
    free_cache(&t);
}

/* The same clear through the API (InvokeAI's "Clear Model Cache" button): VC_ERR_BUSY names the
 * layers in use, which stay; everything else is cleared. */
static void test_cache_clear_api(void **state) {
    (void)state;
    test_cache t = keep_alive_cache(0);
    vc_model_id m = add_model(t.cache, "unet");
    test_loader la = {.seed = 1}, lb = {.seed = 2};
    vc_layer_id a = add_loader_layer(t.cache, m, "a", 256 * KB, &la);
    vc_layer_id b = add_loader_layer(t.cache, m, "b", 128 * KB, &lb);
    use(t.cache, a, 1, 256 * KB);
    use(t.cache, b, 2, 128 * KB);
    assert_int_equal(vc_cache_clear(t.cache), VC_OK);
    vc_stats s = get_stats(t.cache);
    assert_int_equal(s.vram_bytes, 0);
    assert_int_equal(s.arena_bytes, 0);
    assert_int_equal(s.ram_bytes, 0);
    void *p;
    assert_int_equal(vc_layer_acquire(t.cache, a, NULL, &p), VC_OK);
    assert_int_equal(vc_cache_clear(t.cache), VC_ERR_BUSY);
    assert_true(last_error_has(t.cache, "1 layer(s) are held and stayed"));
    assert_true(check_device(t.cache, p, 256 * KB, 1));
    assert_int_equal(vc_layer_release(t.cache, a, NULL), VC_OK);
    assert_int_equal(vc_cache_clear(NULL), VC_ERR_INVALID_ARG);
    free_cache(&t);
}

/* A destroy refused while a layer is held keeps the timer running: the clear still comes. */
static void test_refused_destroy_keeps_the_timer(void **state) {
    (void)state;
    int before = seen.clears;
    test_cache t = keep_alive_cache(0.05);
    vc_model_id m = add_model(t.cache, "unet");
    test_loader la = {.seed = 1};
    vc_layer_id a = add_loader_layer(t.cache, m, "a", 256 * KB, &la);
    void *p;
    assert_int_equal(vc_layer_acquire(t.cache, a, NULL, &p), VC_OK);
    assert_int_equal(vc_cache_destroy(t.cache), VC_ERR_BUSY);
    assert_int_equal(vc_layer_release(t.cache, a, NULL), VC_OK);
    assert_true(wait_until_cleared(t.cache, before) > before);
    free_cache(&t);
}

static void test_bad_keep_alive_is_refused(void **state) {
    (void)state;
    const double bad[] = {-1, 2e9, (double)NAN};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        vc_cache_options o;
        vc_cache_options_init(&o);
        o.keep_alive_s = bad[i];
        vc_cache *c = (vc_cache *)0x1;
        assert_int_equal(vc_cache_create(&o, &c), VC_ERR_INVALID_ARG);
        assert_null(c);
        assert_non_null(strstr(vc_last_error(), "keep_alive_s"));
    }
}

/* invokeai.yaml's model_cache_keep_alive_min becomes keep_alive_s. */
static void test_config_key(void **state) {
    (void)state;
    vc_config *cfg;
    assert_int_equal(vc_config_create(&cfg), VC_OK);
    static const char ok[] = "model_cache_keep_alive_min: 2.5\n";
    assert_int_equal(vc_config_load_string(cfg, ok, sizeof ok - 1, "k.yaml", VC_CONFIG_NO_ENV, NULL), VC_OK);
    vc_cache_options o;
    vc_cache_options_init(&o);
    assert_int_equal(vc_config_apply(cfg, &o), VC_OK);
    assert_true(o.keep_alive_s == 150);
    vc_diagnostics *d = NULL;
    static const char neg[] = "model_cache_keep_alive_min: -3\n";
    assert_int_equal(vc_config_load_string(cfg, neg, sizeof neg - 1, "k.yaml", VC_CONFIG_NO_ENV, &d), VC_ERR_CONFIG);
    assert_non_null(strstr(vc_diagnostics_get(d, 0)->message, "number of minutes >= 0"));
    vc_diagnostics_destroy(d);
    vc_config_destroy(cfg);
    vc_config *fresh;
    assert_int_equal(vc_config_create(&fresh), VC_OK);
    vc_cache_options_init(&o);
    assert_int_equal(vc_config_apply(fresh, &o), VC_OK);
    assert_true(o.keep_alive_s == 0); /* default: keep for ever */
    vc_config_destroy(fresh);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_idle_cache_clears_itself_and_reloads),
        cmocka_unit_test(test_clear_keeps_what_is_in_use),
        cmocka_unit_test(test_cache_clear_api),
        cmocka_unit_test(test_refused_destroy_keeps_the_timer),
        cmocka_unit_test(test_bad_keep_alive_is_refused),
        cmocka_unit_test(test_config_key),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
