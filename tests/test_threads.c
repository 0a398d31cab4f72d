/* Several threads on one cache: acquires, releases, reservations, offloads and patches race; afterwards the
 * pools are within budget, nothing is held, and every layer's weights are intact. Iteration counts,
 * not time, bound the test, and no sleeps order anything. */
#include <pthread.h>
#include <stdatomic.h>

#include "test_util.h"

enum { NTHREADS = 4, NLAYERS = 24, ITERS = 3000 };

typedef struct shared {
    vc_cache *cache;
    vc_model_id model, model_b; /* model_b: the second half of the layers, when the stress has two */
    int churn; /* random threads also declare and clear orders, and register models and drop them */
    int iters; /* operations per thread */
    atomic_int churned; /* models that came and went */
    vc_layer_id layers[NLAYERS];
    test_loader loaders[NLAYERS];
    size_t sizes[NLAYERS];
    atomic_int failures;
} shared;

typedef struct worker {
    shared *sh;
    unsigned seed;
    int index;
} worker;

/* Patches are an involution (xor 0x5a), so a layer's bytes are its pattern or the xored pattern. */
static int xor_5a(void *user, void *w, size_t n) {
    (void)user;
    for (size_t i = 0; i < n; i++) ((uint8_t *)w)[i] ^= 0x5a;
    return 0;
}

static int intact(const void *p, size_t n, uint64_t seed) {
    if (check_pattern(p, n, seed)) return 1;
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++)
        if (b[i] != (uint8_t)(pattern_byte(seed, i) ^ 0x5a)) return 0;
    return 1;
}


static unsigned next(unsigned *s) {
    *s = *s * 1664525u + 1013904223u;
    return *s >> 8;
}

/* A denoising loop: the same layers in the same order, so the cache learns the order, plans, and
 * prefetches while the other threads do random work on the same cache. */
static void *loop(void *arg) {
    worker *w = arg;
    shared *sh = w->sh;
    for (int pass = 0; pass < sh->iters / NLAYERS; pass++)
        /* with two models, one pass of each in turn (a ControlNet and its UNet) */
        for (int i = sh->model_b && pass % 2 ? NLAYERS / 2 : 0, end = i + NLAYERS / 2; i < end; i++) {
            void *p;
            int st = vc_layer_acquire(sh->cache, sh->layers[i], NULL, &p);
            if (st == VC_OK) {
                if (!check_device_by(sh->cache, p, sh->sizes[i], sh->loaders[i].seed, intact))
                    atomic_fetch_add(&sh->failures, 1);
                vc_layer_release(sh->cache, sh->layers[i], NULL);
            } else if (st != VC_ERR_OUT_OF_VRAM && st != VC_ERR_OUT_OF_RAM) {
                atomic_fetch_add(&sh->failures, 1);
            }
        }
    return NULL;
}

/* A model of the engine's that comes and goes (a LoRA'd copy, a ControlNet used once): registered,
 * run once from a borrowed host copy, dropped. */
static uint8_t churn_weights[8 * KB];
static pthread_once_t churn_once = PTHREAD_ONCE_INIT;
static void fill_churn_weights(void) { fill_pattern(churn_weights, sizeof churn_weights, 99); }

static int churn_model(shared *sh, int thread, int it) {
    pthread_once(&churn_once, fill_churn_weights);
    char name[64];
    snprintf(name, sizeof name, "churn.%d.%d", thread, it);
    vc_model_id m;
    vc_layer_id l;
    vc_layer_desc d = {.name = "w", .bytes = sizeof churn_weights, .host_ptr = churn_weights};
    if (vc_model_register(sh->cache, name, &m) != VC_OK) return 1;
    atomic_fetch_add(&sh->churned, 1);
    int bad = vc_layer_register(sh->cache, m, &d, &l) != VC_OK;
    void *p;
    int st = bad ? VC_OK : vc_layer_acquire(sh->cache, l, NULL, &p);
    if (!bad && st == VC_OK) {
        bad = !check_device(sh->cache, p, sizeof churn_weights, 99);
        bad |= vc_layer_release(sh->cache, l, NULL) != VC_OK;
    } else if (st != VC_OK && st != VC_ERR_OUT_OF_VRAM) {
        bad = 1;
    }
    return bad | (vc_model_unregister(sh->cache, m) != VC_OK);
}

static void *run(void *arg) {
    worker *w = arg;
    shared *sh = w->sh;
    if (w->seed == 0) return loop(arg);
    for (int it = 0; it < sh->iters; it++) {
        unsigned r = next(&w->seed);
        int i = (int)(r % NLAYERS);
        if (sh->churn && (r >> 8) % 8 == 2 && (r >> 12) % 4 < 2) {
            if ((r >> 12) % 4 == 0) { /* the engine declares the loop's order, or lets the cache learn it */
                int st = (r >> 14) & 1 ? vc_model_set_order(sh->cache, sh->model, sh->layers, NLAYERS / 2)
                                       : vc_model_set_order(sh->cache, sh->model, NULL, 0);
                if (st != VC_OK) atomic_fetch_add(&sh->failures, 1);
            } else if (churn_model(sh, w->index, it)) {
                atomic_fetch_add(&sh->failures, 1);
            }
            continue;
        }
        switch ((r >> 8) % 8) {
        case 0: { /* reservation around nothing */
            vc_reservation *res;
            if (vc_reserve_working_mem(sh->cache, 16 * KB, VC_RESERVE_BUFFER, &res) == VC_OK)
                vc_release_working_mem(sh->cache, res);
            break;
        }
        case 1:
            if ((r >> 12) % 3 == 0) { /* patch (LoRA backup mode, or fused on every fourth) or unpatch */
                vc_patch_mode how = (r >> 15) % 4 ? VC_PATCH_BACKUP : VC_PATCH_FUSE;
                int st = (r >> 14) & 1 ? vc_layer_patch(sh->cache, sh->layers[i], how, xor_5a, NULL)
                                       : vc_layer_unpatch(sh->cache, sh->layers[i]);
                /* INVALID_ARG: a FUSE on a layer already patched */
                if (st != VC_OK && st != VC_ERR_BUSY && st != VC_ERR_OUT_OF_RAM &&
                    !(st == VC_ERR_INVALID_ARG && how == VC_PATCH_FUSE && (r >> 14) & 1))
                    atomic_fetch_add(&sh->failures, 1);
            } else if ((r >> 12) % 3 == 1) { /* stage into RAM: races the acquires' own loads */
                int st = (r >> 14) % 8 == 0 ? vc_model_load_ram(sh->cache, sh->model)
                                            : vc_layer_load_ram(sh->cache, sh->layers[i]);
                if (st != VC_OK && st != VC_ERR_OUT_OF_RAM) atomic_fetch_add(&sh->failures, 1);
            } else if ((r >> 14) % 16 == 0) { /* "Clear Model Cache", or a whole model moved out */
                int st = (r >> 18) & 1 ? vc_cache_clear(sh->cache)
                                       : vc_model_offload(sh->cache, sh->model_b && i >= NLAYERS / 2 ? sh->model_b : sh->model,
                                                          VC_OFFLOAD_VRAM);
                if (st != VC_OK && st != VC_ERR_BUSY) atomic_fetch_add(&sh->failures, 1);
            } else {
                vc_layer_offload(sh->cache, sh->layers[i], (r >> 12) & 1 ? VC_OFFLOAD_ALL : VC_OFFLOAD_VRAM);
            }
            break;
        default: {
            void *p;
            int st = vc_layer_acquire(sh->cache, sh->layers[i], NULL, &p);
            if (st == VC_OK) {
                /* while held, the bytes stay put whatever the other threads do */
                if (!check_device_by(sh->cache, p, sh->sizes[i], sh->loaders[i].seed, intact))
                    atomic_fetch_add(&sh->failures, 1);
                if (vc_layer_release(sh->cache, sh->layers[i], NULL) != VC_OK) atomic_fetch_add(&sh->failures, 1);
            } else if (st != VC_ERR_OUT_OF_VRAM && st != VC_ERR_OUT_OF_RAM) {
                /* OUT_OF_RAM: patched weights (and their backups) cannot leave the RAM pool */
                atomic_fetch_add(&sh->failures, 1);
            }
        }
        }
    }
    return NULL;
}

static int loader_calls;
static pthread_mutex_t calls_lock = PTHREAD_MUTEX_INITIALIZER;

static int counting_loader(void *user, vc_layer_id layer, void *dst, size_t bytes) {
    pthread_mutex_lock(&calls_lock);
    loader_calls++;
    pthread_mutex_unlock(&calls_lock);
    return test_loader_fn(user, layer, dst, bytes);
}

typedef struct stress_setup {
    int keep_ram_copy;
    vc_offload_mode mode;
    int two_models; /* layers split over two models that run in turn */
    int smart_working_mem;
    vc_policy policy;
    unsigned prefetch_depth; /* 0: the default */
    int churn;
    int sweep; /* one of many setups in a test */
} stress_setup;

static void stress(const stress_setup *setup) {
    vc_cache_options o;
    vc_cache_options_init(&o);
    o.ram_budget = 256 * KB;
    o.working_mem = 32 * KB;
    o.keep_ram_copy = setup->keep_ram_copy;
    o.arena_segment_bytes = 64 * KB;
    o.offload_mode = setup->mode;
    o.smart_working_mem = setup->smart_working_mem;
    o.policy = setup->policy;
    if (setup->prefetch_depth) o.prefetch_depth = setup->prefetch_depth;
    o.stage_ahead = 1; /* the cache's own loader thread joins the race */
    o.log_level = VC_LOG_ERROR; /* a RAM cache this small re-reads every pass: its warning says so */
    test_cache t = make_cache_opts(384 * KB, &o);
    /* the sweeps over modes run many setups: a third of the operations each (CI time) */
    shared sh = {.cache = t.cache, .churn = setup->churn, .iters = setup->sweep ? ITERS / 3 : ITERS};
    vc_model_id m = add_model(t.cache, "m");
    sh.model = m;
    if (setup->two_models) sh.model_b = add_model(t.cache, "m_b");
    for (int i = 0; i < NLAYERS; i++) {
        sh.loaders[i] = (test_loader){.seed = (uint64_t)i * 7 + 1};
        sh.sizes[i] = (size_t)(4 + (i * 5) % 28) * KB;
        vc_layer_desc d = {.name = "l", .bytes = sh.sizes[i], .loader = counting_loader,
                           .loader_user = &sh.loaders[i]};
        assert_int_equal(vc_layer_register(t.cache, sh.model_b && i >= NLAYERS / 2 ? sh.model_b : m, &d,
                                           &sh.layers[i]),
                         VC_OK);
    }
    pthread_t th[NTHREADS];
    worker w[NTHREADS];
    for (int k = 0; k < NTHREADS; k++) {
        w[k] = (worker){.sh = &sh, .seed = k == 0 ? 0u : (unsigned)k * 977u + 13u, .index = k}; /* 0 loops */
        assert_int_equal(pthread_create(&th[k], NULL, run, &w[k]), 0);
    }
    for (int k = 0; k < NTHREADS; k++) pthread_join(th[k], NULL);
    assert_int_equal(atomic_load(&sh.failures), 0);
    vc_stats s = get_stats(t.cache);
    assert_int_equal(s.layers_held, 0);
    assert_int_equal(s.models, setup->two_models ? 2 : 1);
    if (setup->churn) assert_true(atomic_load(&sh.churned) > 30);
    assert_true(s.ram_peak_bytes <= 256 * KB);
    /* smart working memory: while a 16 KB reservation is active, it replaces the standing 32 KB */
    assert_true(s.arena_peak_bytes <= 384 * KB - (setup->smart_working_mem ? 16 : 32) * KB);
    assert_int_equal(s.reserved_bytes, 0);
    for (int i = 0; i < NLAYERS; i++) {
        unsigned char buf[32 * KB];
        assert_int_equal(vc_layer_read(t.cache, sh.layers[i], buf, sh.sizes[i]), VC_OK);
        assert_true(intact(buf, sh.sizes[i], sh.loaders[i].seed));
        assert_int_equal(vc_layer_unpatch(t.cache, sh.layers[i]), VC_OK); /* and the original comes back */
        assert_int_equal(vc_layer_read(t.cache, sh.layers[i], buf, sh.sizes[i]), VC_OK);
        assert_true(check_pattern(buf, sh.sizes[i], sh.loaders[i].seed));
    }
    free_cache(&t);
}

static void test_stress_keep_ram_copy(void **state) {
    (void)state;
    stress(&(stress_setup){.keep_ram_copy = 1, .mode = VC_OFFLOAD_MODE_BALANCED});
}

static void test_stress_no_ram_copy(void **state) {
    (void)state;
    stress(&(stress_setup){.keep_ram_copy = 0, .mode = VC_OFFLOAD_MODE_BALANCED});
}

/* The same race in every offload mode, with two models running in turn (planned as one cycle, then
 * apart again whenever a random acquire breaks the turn), whole-model offloads and cache clears,
 * and with working memory per operation: each mode keeps the budgets and every layer's weights. */
static void test_stress_every_mode_two_models(void **state) {
    (void)state;
    const vc_offload_mode modes[] = {VC_OFFLOAD_MODE_BALANCED, VC_OFFLOAD_MODE_SEQUENTIAL, VC_OFFLOAD_MODE_MODEL,
                                     VC_OFFLOAD_MODE_NONE};
    for (int k = 0; k < 4; k++)
        for (int smart = 0; smart < 2; smart++)
            stress(&(stress_setup){.keep_ram_copy = (k + smart) % 2, .mode = modes[k], .two_models = 1,
                                   .smart_working_mem = smart, .sweep = 1});
}

/* The engine changing its mind meanwhile: the loop's order declared and cleared again, models
 * registered, run once and dropped, under either policy and a deep or shallow prefetch. */
static void test_stress_orders_and_models_that_come_and_go(void **state) {
    (void)state;
    for (int k = 0; k < 4; k++)
        stress(&(stress_setup){.keep_ram_copy = k % 2, .mode = VC_OFFLOAD_MODE_BALANCED, .two_models = k >= 2,
                               .policy = k == 1 ? VC_POLICY_LRU : VC_POLICY_PLANNED,
                               .prefetch_depth = k == 3 ? 1 : 0, .churn = 1, .sweep = 1});
    stress(&(stress_setup){.keep_ram_copy = 1, .mode = VC_OFFLOAD_MODE_SEQUENTIAL, .churn = 1, .sweep = 1});
    stress(&(stress_setup){.keep_ram_copy = 0, .mode = VC_OFFLOAD_MODE_MODEL, .two_models = 1, .churn = 1, .sweep = 1});
}

/* Read, offload, patch, unpatch and unregister of a layer (offload or unregister of its model,
 * clearing the cache) whose loader is running on another thread (staging it into RAM, as the
 * stage-ahead worker does) wait for the load, as acquire does, instead of failing with
 * VC_ERR_BUSY. Ordered without sleeps: the loader blocks until the caller's thread logs that it
 * waits for it, which it does just before it waits. */
typedef struct gate {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int entered, go;
    uint64_t seed;
} gate;

static void gate_set(gate *g, int *flag) {
    pthread_mutex_lock(&g->mu);
    *flag = 1;
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
}

static void gate_wait(gate *g, const int *flag) {
    pthread_mutex_lock(&g->mu);
    while (!*flag) pthread_cond_wait(&g->cv, &g->mu);
    pthread_mutex_unlock(&g->mu);
}

static int gated_loader(void *user, vc_layer_id layer, void *dst, size_t bytes) {
    (void)layer;
    gate *g = user;
    gate_set(g, &g->entered);
    gate_wait(g, &g->go);
    fill_pattern(dst, bytes, g->seed);
    return 0;
}

static void open_gate_on_wait(void *user, vc_log_level level, const char *message) {
    gate *g = user;
    if (level == VC_LOG_DEBUG && strstr(message, "waiting for it")) gate_set(g, &g->go);
}

typedef struct stager {
    vc_cache *cache;
    vc_layer_id layer;
    int status;
} stager;

static void *stage_layer(void *arg) {
    stager *a = arg;
    a->status = vc_layer_load_ram(a->cache, a->layer);
    return NULL;
}

static int xor_ff(void *user, void *w, size_t n) {
    (void)user;
    for (size_t i = 0; i < n; i++) ((uint8_t *)w)[i] ^= 0xff;
    return 0;
}

static void test_calls_wait_for_a_load_in_progress(void **state) {
    (void)state;
    gate g = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 5};
    vc_cache_options o;
    vc_cache_options_init(&o);
    o.ram_budget = 1 * MB;
    o.working_mem = 0;
    o.log_fn = open_gate_on_wait;
    o.log_user = &g;
    o.log_level = VC_LOG_DEBUG;
    test_cache t = make_cache_opts(1 * MB, &o);
    vc_layer_desc d = {.name = "gated", .bytes = 16 * KB, .loader = gated_loader, .loader_user = &g};
    vc_layer_id l;
    vc_model_id m = add_model(t.cache, "m");
    assert_int_equal(vc_layer_register(t.cache, m, &d, &l), VC_OK);
    unsigned char buf[16 * KB];
    for (int op = 0; op < 8; op++) {
        g.entered = g.go = 0;
        stager a = {t.cache, l, -1};
        pthread_t th;
        assert_int_equal(pthread_create(&th, NULL, stage_layer, &a), 0);
        gate_wait(&g, &g.entered); /* the loader is running: the layer is loading */
        int st = op == 0   ? vc_layer_read(t.cache, l, buf, sizeof buf)
                 : op == 1 ? vc_layer_offload(t.cache, l, VC_OFFLOAD_VRAM)
                 : op == 2 ? vc_layer_patch(t.cache, l, VC_PATCH_BACKUP, xor_ff, NULL)
                 : op == 3 ? vc_layer_unpatch(t.cache, l)
                 : op == 4 ? vc_model_offload(t.cache, m, VC_OFFLOAD_VRAM)
                 : op == 5 ? vc_cache_clear(t.cache)
                 : op == 6 ? vc_layer_unregister(t.cache, l)
                           : vc_model_unregister(t.cache, m);
        gate_set(&g, &g.go); /* before a failed call, that never waited, can end the test */
        pthread_join(th, NULL);
        assert_int_equal(a.status, VC_OK);
        if (st != VC_OK) fail_msg("operation %d on a loading layer: %s", op, vc_last_error());
        if (op >= 6) { /* gone once the load ended; registered again for the next operation */
            assert_int_equal(vc_layer_read(t.cache, l, buf, sizeof buf), VC_ERR_NOT_FOUND);
            if (op == 7) break;
            assert_int_equal(vc_layer_register(t.cache, m, &d, &l), VC_OK);
        }
        assert_int_equal(vc_layer_read(t.cache, l, buf, sizeof buf), VC_OK);
        if (op != 2) assert_true(check_pattern(buf, sizeof buf, 5));
        if (op == 2) {
            assert_false(check_pattern(buf, sizeof buf, 5)); /* patched */
            assert_int_equal(vc_layer_unpatch(t.cache, l), VC_OK); /* so that the loader runs again */
        }
        assert_int_equal(vc_layer_offload(t.cache, l, VC_OFFLOAD_ALL), VC_OK); /* load again next */
    }
    free_cache(&t);
}

/* An engine that swaps models (a checkpoint change) on a cache with stage_ahead: its worker is
 * loading the next layers at random moments, and unregistering the model must still succeed every
 * time (it waits for the worker's load instead of failing with VC_ERR_BUSY), with nothing left
 * behind. Iterations bound it; no sleeps. (When unregister refused a loading layer, this failed
 * within the first 120 swaps in each of three runs.) */
static int slow_loader(void *user, vc_layer_id layer, void *dst, size_t bytes) {
    for (int r = 0; r < 16; r++) /* a disk read's worth of time, so the worker is often mid-load */
        test_loader_fn(user, layer, dst, bytes);
    ((test_loader *)user)->calls -= 15;
    return 0;
}

static void test_model_swaps_under_stage_ahead(void **state) {
    (void)state;
    vc_cache_options o;
    vc_cache_options_init(&o);
    o.ram_budget = 128 * KB; /* half of a model: the worker keeps loading */
    o.working_mem = 0;
    o.arena_segment_bytes = 64 * KB;
    o.stage_ahead = 1;
    o.log_level = VC_LOG_ERROR; /* the RAM cache is meant to be too small: no warning about it */
    test_cache t = make_cache_opts(128 * KB, &o);
    enum { N = 16 };
    test_loader loaders[N];
    for (int swap = 0; swap < 150; swap++) {
        char name[16];
        snprintf(name, sizeof name, "m%d", swap);
        vc_model_id m = add_model(t.cache, name);
        vc_layer_id ids[N];
        for (int i = 0; i < N; i++) {
            loaders[i] = (test_loader){.seed = (uint64_t)(swap * N + i)};
            vc_layer_desc d = {.name = "l", .bytes = 16 * KB, .loader = slow_loader, .loader_user = &loaders[i]};
            assert_int_equal(vc_layer_register(t.cache, m, &d, &ids[i]), VC_OK);
        }
        for (int pass = 0; pass < 3; pass++) /* the order is learned on the first: the worker stages */
            for (int i = 0; i < (pass < 2 ? N : 1 + swap % N); i++) { /* the last pass stops anywhere */
                void *p;
                assert_int_equal(vc_layer_acquire(t.cache, ids[i], NULL, &p), VC_OK);
                assert_true(check_device(t.cache, p, 16 * KB, loaders[i].seed));
                assert_int_equal(vc_layer_release(t.cache, ids[i], NULL), VC_OK);
            }
        int st = vc_model_unregister(t.cache, m);
        if (st != VC_OK) fail_msg("swap %d: %s", swap, vc_last_error());
        vc_stats s = get_stats(t.cache);
        assert_int_equal(s.layers, 0);
        assert_int_equal(s.ram_bytes, 0);
        assert_int_equal(s.vram_bytes, 0);
    }
    free_cache(&t);
}

/* Two caches sharing one device (two engines in one process): each sees the other's memory as
 * taken, neither exceeds the device, both keep their weights. */
static void *hammer(void *arg) {
    shared *sh = arg;
    unsigned seed = (unsigned)(uintptr_t)sh;
    for (int it = 0; it < ITERS; it++) {
        seed = seed * 1664525u + 1013904223u;
        int i = (int)((seed >> 8) % NLAYERS);
        void *p;
        int st = vc_layer_acquire(sh->cache, sh->layers[i], NULL, &p);
        if (st == VC_OK) {
            if (!check_device(sh->cache, p, sh->sizes[i], sh->loaders[i].seed)) atomic_fetch_add(&sh->failures, 1);
            vc_layer_release(sh->cache, sh->layers[i], NULL);
        } else if (st != VC_ERR_OUT_OF_VRAM) {
            atomic_fetch_add(&sh->failures, 1);
        }
    }
    return NULL;
}

static void test_two_caches_one_device(void **state) {
    (void)state;
    vc_backend *dev = test_backend_create(512 * KB);
    shared sh[2];
    memset(sh, 0, sizeof sh);
    for (int k = 0; k < 2; k++) {
        vc_cache_options o;
        vc_cache_options_init(&o);
        o.backend = dev;
        o.ram_budget = 1 * MB;
        o.working_mem = 32 * KB;
        o.arena_segment_bytes = 32 * KB;
        assert_int_equal(vc_cache_create(&o, &sh[k].cache), VC_OK);
        vc_model_id m = add_model(sh[k].cache, "m");
        sh[k].model = m;
        for (int i = 0; i < NLAYERS; i++) {
            sh[k].loaders[i] = (test_loader){.seed = (uint64_t)(k * 100 + i)};
            sh[k].sizes[i] = 16 * KB;
            vc_layer_desc d = {.name = "l", .bytes = sh[k].sizes[i], .loader = counting_loader,
                               .loader_user = &sh[k].loaders[i]};
            assert_int_equal(vc_layer_register(sh[k].cache, m, &d, &sh[k].layers[i]), VC_OK);
        }
    }
    pthread_t th[2];
    for (int k = 0; k < 2; k++) pthread_create(&th[k], NULL, hammer, &sh[k]);
    for (int k = 0; k < 2; k++) pthread_join(th[k], NULL);
    size_t peak = 0;
    for (int k = 0; k < 2; k++) {
        assert_int_equal(atomic_load(&sh[k].failures), 0);
        vc_stats s = get_stats(sh[k].cache);
        peak += s.arena_peak_bytes;
        assert_int_equal(vc_cache_destroy(sh[k].cache), VC_OK);
    }
    assert_true(peak <= 2 * 512 * KB); /* each within the device; together never both at peak */
    size_t fr;
    vc_backend_mem_info(dev, &fr, NULL);
    assert_int_equal(fr, 512 * KB); /* everything given back */
    test_backend_destroy(dev);
}

/* Every thread acquires (or stages) the same unloaded layer: the loader runs once, the others wait for it. */
static void *acquire_once(void *arg) {
    shared *sh = arg;
    void *p;
    if (vc_layer_acquire(sh->cache, sh->layers[0], NULL, &p) != VC_OK ||
        !check_device(sh->cache, p, sh->sizes[0], sh->loaders[0].seed))
        atomic_fetch_add(&sh->failures, 1);
    return NULL;
}

/* Stages the same layer into RAM (the engine's worker thread racing its acquires). */
static void *stage_once(void *arg) {
    shared *sh = arg;
    if (vc_layer_load_ram(sh->cache, sh->layers[0]) != VC_OK) atomic_fetch_add(&sh->failures, 1);
    return NULL;
}

static void test_concurrent_first_load_calls_loader_once(void **state) {
    (void)state;
    test_cache t = make_cache(1 * MB, 1 * MB, 1);
    shared sh = {.cache = t.cache};
    sh.loaders[0] = (test_loader){.seed = 77};
    sh.sizes[0] = 100 * KB;
    vc_layer_desc d = {.name = "shared", .bytes = sh.sizes[0], .loader = counting_loader,
                       .loader_user = &sh.loaders[0]};
    assert_int_equal(vc_layer_register(t.cache, add_model(t.cache, "m"), &d, &sh.layers[0]), VC_OK);
    loader_calls = 0;
    pthread_t th[12];
    for (int k = 0; k < 12; k++) pthread_create(&th[k], NULL, k % 3 == 1 ? stage_once : acquire_once, &sh);
    for (int k = 0; k < 12; k++) pthread_join(th[k], NULL);
    assert_int_equal(atomic_load(&sh.failures), 0);
    assert_int_equal(loader_calls, 1);
    vc_layer_info info;
    vc_layer_get_info(t.cache, sh.layers[0], &info);
    assert_int_equal(info.holds, 8);
    for (int k = 0; k < 8; k++) assert_int_equal(vc_layer_release(t.cache, sh.layers[0], NULL), VC_OK);
    free_cache(&t);
}

/* Offload mode model: an acquire that misses loads the rest of its model, and each loader it runs
 * drops the lock. Another thread may meanwhile acquire and hold the layer being acquired (it is
 * already on the device). Both holds, and their releases, must leave that layer listed for eviction
 * exactly once: a second model that needs the whole device then evicts every layer of the first.
 * (The first version kept the layer in place with a bare count, so the other thread's hold left it
 * listed while held, and the last release listed it twice: the eviction walk lost layers or looped.) */
static void test_hold_taken_during_a_whole_model_load(void **state) {
    (void)state;
    gate g = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 9};
    vc_cache_options o;
    vc_cache_options_init(&o);
    o.ram_budget = 4 * MB;
    o.working_mem = 0;
    o.arena_segment_bytes = 64 * KB;
    o.offload_mode = VC_OFFLOAD_MODE_MODEL;
    test_cache t = make_cache_opts(1 * MB, &o);
    shared sh = {.cache = t.cache};
    vc_model_id m = add_model(t.cache, "m");
    sh.loaders[0] = (test_loader){.seed = 3};
    sh.sizes[0] = 256 * KB;
    sh.layers[0] = add_loader_layer(t.cache, m, "a", sh.sizes[0], &sh.loaders[0]);
    vc_layer_desc d = {.name = "b", .bytes = 256 * KB, .loader = gated_loader, .loader_user = &g};
    vc_layer_id b;
    assert_int_equal(vc_layer_register(t.cache, m, &d, &b), VC_OK);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, acquire_once, &sh), 0); /* uploads a, then loads b */
    gate_wait(&g, &g.entered); /* b's loader runs without the lock */
    void *p;
    assert_int_equal(vc_layer_acquire(t.cache, sh.layers[0], NULL, &p), VC_OK); /* a is on the device */
    gate_set(&g, &g.go);
    pthread_join(th, NULL);
    assert_int_equal(atomic_load(&sh.failures), 0);
    assert_int_equal(vc_layer_release(t.cache, sh.layers[0], NULL), VC_OK);
    assert_int_equal(vc_layer_release(t.cache, sh.layers[0], NULL), VC_OK);
    assert_int_equal(get_stats(t.cache).layers_held, 0);
    /* a model as large as the device: both of m's layers must leave */
    test_loader lc = {.seed = 5};
    vc_layer_id c = add_loader_layer(t.cache, add_model(t.cache, "n"), "c", 1 * MB, &lc);
    assert_int_equal(vc_layer_acquire(t.cache, c, NULL, &p), VC_OK);
    assert_true(check_device(t.cache, p, 1 * MB, lc.seed));
    vc_layer_info ia, ib;
    assert_int_equal(vc_layer_get_info(t.cache, sh.layers[0], &ia), VC_OK);
    assert_int_equal(vc_layer_get_info(t.cache, b, &ib), VC_OK);
    assert_true(ia.residency == VC_RES_RAM && ib.residency == VC_RES_RAM);
    assert_int_equal(vc_layer_release(t.cache, c, NULL), VC_OK);
    /* and m comes back whole, over n */
    assert_int_equal(vc_layer_acquire(t.cache, b, NULL, &p), VC_OK);
    assert_int_equal(vc_layer_get_info(t.cache, sh.layers[0], &ia), VC_OK);
    assert_int_equal(vc_layer_get_info(t.cache, c, &ib), VC_OK);
    assert_true(ia.residency == VC_RES_VRAM_RAM && ib.residency == VC_RES_RAM);
    assert_int_equal(vc_layer_release(t.cache, b, NULL), VC_OK);
    free_cache(&t);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stress_keep_ram_copy),
        cmocka_unit_test(test_stress_no_ram_copy),
        cmocka_unit_test(test_stress_every_mode_two_models),
        cmocka_unit_test(test_stress_orders_and_models_that_come_and_go),
        cmocka_unit_test(test_calls_wait_for_a_load_in_progress),
        cmocka_unit_test(test_model_swaps_under_stage_ahead),
        cmocka_unit_test(test_concurrent_first_load_calls_loader_once),
        cmocka_unit_test(test_two_caches_one_device),
        cmocka_unit_test(test_hold_taken_during_a_whole_model_load),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
