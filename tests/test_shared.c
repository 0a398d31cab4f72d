/* One RAM pool serving caches on several devices: layers shared from an owning cache are held in
 * RAM once, loaded once, and uploaded to every device that uses them. */
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>

#include "test_util.h"

typedef struct gpus {
    vc_backend *dev[2];
    vc_cache *cache[2]; /* cache[0] owns the RAM copies; cache[1] shares from it */
    vc_model_id model[2];
    vc_layer_id layer[2][8];
    test_loader loader[8];
} gpus;

static void make_gpus_in(gpus *g, size_t device, size_t ram, int keep, vc_offload_mode mode) {
    memset(g, 0, sizeof *g);
    for (int d = 0; d < 2; d++) {
        g->dev[d] = test_backend_create_on(device, d); /* on CUDA: two GPUs where there are two */
        vc_cache_options o;
        vc_cache_options_init(&o);
        o.backend = g->dev[d];
        o.ram_budget = d == 0 ? ram : 0; /* the second device's cache needs no RAM of its own */
        o.working_mem = 0;
        o.keep_ram_copy = keep;
        o.arena_segment_bytes = 32 * KB;
        o.offload_mode = mode;
        assert_int_equal(vc_cache_create(&o, &g->cache[d]), VC_OK);
        g->model[d] = add_model(g->cache[d], "unet");
    }
    for (int i = 0; i < 8; i++) {
        g->loader[i] = (test_loader){.seed = (uint64_t)i + 60};
        g->layer[0][i] = add_loader_layer(g->cache[0], g->model[0], "block", 32 * KB, &g->loader[i]);
        assert_int_equal(vc_layer_register_shared(g->cache[1], g->model[1], g->cache[0], g->layer[0][i],
                                                  &g->layer[1][i]), VC_OK);
    }
}

static void make_gpus(gpus *g, size_t device, size_t ram, int keep) {
    make_gpus_in(g, device, ram, keep, VC_OFFLOAD_MODE_BALANCED);
}

static void free_gpus(gpus *g) {
    assert_int_equal(vc_cache_destroy(g->cache[0]), VC_ERR_BUSY); /* the other cache still reads it */
    assert_int_equal(vc_cache_destroy(g->cache[1]), VC_OK);
    assert_int_equal(vc_cache_destroy(g->cache[0]), VC_OK);
    for (int d = 0; d < 2; d++) test_backend_destroy(g->dev[d]);
}

static void use(gpus *g, int d, int i) {
    void *p;
    assert_int_equal(vc_layer_acquire(g->cache[d], g->layer[d][i], NULL, &p), VC_OK);
    assert_true(check_device(g->cache[d], p, 32 * KB, g->loader[i].seed));
    assert_int_equal(vc_layer_release(g->cache[d], g->layer[d][i], NULL), VC_OK);
}

static void test_held_in_ram_once(void **state) {
    (void)state;
    gpus g;
    make_gpus(&g, 1 * MB, 1 * MB, 1);
    vc_layer_info info;
    assert_int_equal(vc_layer_get_info(g.cache[1], g.layer[1][3], &info), VC_OK);
    assert_int_equal(info.bytes, 32 * KB);
    for (int r = 0; r < 3; r++)
        for (int i = 0; i < 8; i++) {
            use(&g, 1, i); /* the second GPU first: the owner loads on its behalf */
            use(&g, 0, i);
        }
    for (int i = 0; i < 8; i++) assert_int_equal(g.loader[i].calls, 1);
    vc_stats a = get_stats(g.cache[0]), b = get_stats(g.cache[1]);
    assert_int_equal(a.ram_bytes, 8 * 32 * KB); /* once... */
    assert_int_equal(b.ram_bytes, 0);           /* ...not twice */
    assert_int_equal(a.layers_in_vram, 8);
    assert_int_equal(b.layers_in_vram, 8);
    /* reads through the shared layer come from the owner */
    assert_int_equal(vc_layer_offload(g.cache[1], g.layer[1][2], VC_OFFLOAD_ALL), VC_OK);
    unsigned char buf[32 * KB];
    assert_int_equal(vc_layer_read(g.cache[1], g.layer[1][2], buf, sizeof buf), VC_OK);
    assert_true(check_pattern(buf, sizeof buf, g.loader[2].seed));
    free_gpus(&g);
}

static void test_owner_ram_pressure_and_keep_copy_off(void **state) {
    (void)state;
    /* The owner's RAM pool holds three copies; its devices stream. Nothing is lost, and the second
     * device never needs RAM of its own. */
    gpus g;
    make_gpus(&g, 96 * KB, 96 * KB, 0);
    for (int r = 0; r < 4; r++)
        for (int i = 0; i < 8; i++) {
            use(&g, r & 1, i);
            use(&g, !(r & 1), 7 - i);
        }
    vc_stats a = get_stats(g.cache[0]), b = get_stats(g.cache[1]);
    assert_true(a.ram_peak_bytes <= 96 * KB);
    assert_int_equal(b.ram_peak_bytes, 0);
    assert_int_equal(a.layers_held + b.layers_held, 0);
    free_gpus(&g);
}

/* The owner's RAM copy may still be on its way back from the owner's device (a write-back: keep_ram_copy
 * off) when a sharing cache uploads from it. The two copies run on different devices' streams, which
 * cannot wait on each other's events, so the host must wait for the write-back before the sharer's
 * upload reads that memory. On the fake CUDA runtime (core_on_fake_cuda) a copy runs only when
 * something waits for it, so an upload that did not wait copied memory nothing had written yet. */
static void test_sharer_reads_a_written_back_copy(void **state) {
    (void)state;
    gpus g;
    make_gpus(&g, 1 * MB, 1 * MB, 0);
    for (int i = 0; i < 2; i++) {
        use(&g, 0, i); /* the owner's device holds the only copy: keep_ram_copy is off */
        assert_int_equal(vc_layer_offload(g.cache[0], g.layer[0][i], VC_OFFLOAD_VRAM), VC_OK); /* written back */
        use(&g, 1, i); /* the sharer's upload reads the written-back copy */
        assert_int_equal(g.loader[i].calls, 1); /* from the write-back, not the loader again */
        use(&g, 0, i);
    }
    free_gpus(&g);
}

static int noop_patch(void *user, void *w, size_t n) {
    (void)user, (void)w, (void)n;
    return 0;
}

static int xor_a5(void *user, void *w, size_t n) {
    (void)user;
    for (size_t i = 0; i < n; i++) ((unsigned char *)w)[i] ^= 0xa5;
    return 0;
}

static int is_xored_a5(const void *p, size_t n, uint64_t seed) {
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)(b[i] ^ 0xa5) != pattern_byte(seed, i)) return 0;
    return 1;
}

/* A LoRA patched at the source reaches every device: a sharing cache whose device copy predates a
 * patch (or an unpatch) loads the new weights at its next acquire, instead of computing with the
 * old ones for as long as its copy stays resident. While an upload of a sharing cache still reads
 * the source's RAM copy, patching it would change bytes under that copy: refused, with the way out. */
static void test_patched_source_reaches_sharers(void **state) {
    (void)state;
    gpus g;
    make_gpus(&g, 1 * MB, 1 * MB, 1);
    uint64_t seed = g.loader[3].seed;
    void *p;
    use(&g, 1, 3); /* resident on the second device, kept there (the device has room) */
    assert_int_equal(vc_layer_acquire(g.cache[1], g.layer[1][3], NULL, &p), VC_OK);
    assert_true(check_device(g.cache[1], p, 32 * KB, seed));
    uint64_t h2d = get_stats(g.cache[1]).bytes_h2d;
    assert_int_equal(vc_layer_release(g.cache[1], g.layer[1][3], NULL), VC_OK);
    assert_int_equal(vc_layer_patch(g.cache[0], g.layer[0][3], VC_PATCH_BACKUP, xor_a5, NULL), VC_OK);
    unsigned char buf[32 * KB]; /* a read through the sharing cache gives the source's weights too */
    assert_int_equal(vc_layer_read(g.cache[1], g.layer[1][3], buf, sizeof buf), VC_OK);
    assert_true(is_xored_a5(buf, sizeof buf, seed));
    assert_int_equal(vc_layer_acquire(g.cache[1], g.layer[1][3], NULL, &p), VC_OK);
    assert_true(check_device_by(g.cache[1], p, 32 * KB, seed, is_xored_a5)); /* the patched weights */
    assert_int_equal(get_stats(g.cache[1]).bytes_h2d, h2d + 32 * KB);           /* by one new upload */
    assert_int_equal(vc_layer_release(g.cache[1], g.layer[1][3], NULL), VC_OK);
    /* unchanged since: a hit again */
    assert_int_equal(vc_layer_acquire(g.cache[1], g.layer[1][3], NULL, &p), VC_OK);
    assert_int_equal(get_stats(g.cache[1]).bytes_h2d, h2d + 32 * KB);
    /* another layer's patch costs this one nothing */
    assert_int_equal(vc_layer_release(g.cache[1], g.layer[1][3], NULL), VC_OK);
    use(&g, 1, 4);
    h2d = get_stats(g.cache[1]).bytes_h2d;
    assert_int_equal(vc_layer_patch(g.cache[0], g.layer[0][3], VC_PATCH_BACKUP, xor_a5, NULL), VC_OK); /* stacked */
    assert_int_equal(vc_layer_unpatch(g.cache[0], g.layer[0][3]), VC_OK); /* the original again */
    use(&g, 1, 4);
    assert_int_equal(get_stats(g.cache[1]).bytes_h2d, h2d);
    use(&g, 1, 3); /* checks the original pattern: reloaded after the unpatch */
    assert_int_equal(get_stats(g.cache[1]).bytes_h2d, h2d + 32 * KB);
    /* an upload of the sharing cache that may still read the source: patch and unpatch wait for it */
    assert_int_equal(vc_layer_offload(g.cache[1], g.layer[1][5], VC_OFFLOAD_VRAM), VC_OK);
    assert_int_equal(vc_layer_acquire(g.cache[1], g.layer[1][5], NULL, &p), VC_OK); /* uploads, pins the source */
    assert_int_equal(vc_layer_patch(g.cache[0], g.layer[0][5], VC_PATCH_BACKUP, xor_a5, NULL), VC_ERR_BUSY);
    assert_true(last_error_has(g.cache[0], "caches sharing it still read its RAM copy"));
    assert_int_equal(vc_layer_release(g.cache[1], g.layer[1][5], NULL), VC_OK); /* lets finished uploads go */
    test_default_stream_sync(g.dev[1]);
    (void)get_stats(g.cache[1]);
    assert_int_equal(vc_layer_patch(g.cache[0], g.layer[0][5], VC_PATCH_BACKUP, xor_a5, NULL), VC_OK);
    assert_int_equal(vc_layer_acquire(g.cache[1], g.layer[1][5], NULL, &p), VC_OK);
    assert_true(check_device_by(g.cache[1], p, 32 * KB, g.loader[5].seed, is_xored_a5));
    assert_int_equal(vc_layer_release(g.cache[1], g.layer[1][5], NULL), VC_OK);
    free_gpus(&g);
}

static void test_errors(void **state) {
    (void)state;
    gpus g;
    make_gpus(&g, 1 * MB, 1 * MB, 1);
    vc_layer_id x;
    assert_int_equal(vc_layer_register_shared(g.cache[0], g.model[0], g.cache[0], g.layer[0][0], &x),
                     VC_ERR_INVALID_ARG);
    assert_int_equal(vc_layer_register_shared(g.cache[1], g.model[1], g.cache[0], 0xabcdefull, &x),
                     VC_ERR_NOT_FOUND);
    assert_int_equal(vc_layer_register_shared(g.cache[1], 999, g.cache[0], g.layer[0][0], &x), VC_ERR_NOT_FOUND);
    assert_int_equal(vc_layer_register_shared(NULL, g.model[1], g.cache[0], g.layer[0][0], &x), VC_ERR_INVALID_ARG);
    /* roles: a cache others share from shares from nobody, and a sharing cache is shared from by
     * nobody (each takes its owner's lock inside its own: a cycle could deadlock); nothing registered */
    assert_int_equal(vc_layer_register_shared(g.cache[0], g.model[0], g.cache[1], g.layer[1][0], &x),
                     VC_ERR_INVALID_ARG);
    assert_true(last_error_has(g.cache[0], "share from this cache, so it cannot share from another"));
    vc_backend *third_dev = test_backend_create_on(1 * MB, 0);
    vc_cache_options o;
    vc_cache_options_init(&o);
    o.backend = third_dev;
    o.ram_budget = 0;
    o.working_mem = 0;
    vc_cache *third;
    assert_int_equal(vc_cache_create(&o, &third), VC_OK);
    vc_model_id tm = add_model(third, "unet");
    assert_int_equal(vc_layer_register_shared(third, tm, g.cache[1], g.layer[1][0], &x), VC_ERR_INVALID_ARG);
    assert_true(last_error_has(third, "the owning cache itself shares 8 layer(s)"));
    assert_int_equal(vc_layer_register_shared(third, tm, g.cache[0], g.layer[0][0], &x), VC_OK); /* the owner: fine */
    assert_int_equal(get_stats(third).layers, 1);
    assert_int_equal(get_stats(g.cache[0]).layers, 8);
    assert_int_equal(vc_cache_destroy(third), VC_OK);
    test_backend_destroy(third_dev);
    /* the shared layer takes the source's whole name, however long (a 300-byte module path) */
    char longname[301];
    memset(longname, 'n', 300);
    longname[300] = '\0';
    test_loader ll = {.seed = 5};
    vc_layer_id lsrc = add_loader_layer(g.cache[0], g.model[0], longname, 32 * KB, &ll), lshared;
    assert_int_equal(vc_layer_register_shared(g.cache[1], g.model[1], g.cache[0], lsrc, &lshared), VC_OK);
    vc_layer_info li;
    assert_int_equal(vc_layer_get_info(g.cache[1], lshared, &li), VC_OK);
    assert_string_equal(li.name, longname);
    /* shared layers are patched at their source */
    assert_int_equal(vc_layer_patch(g.cache[1], g.layer[1][0], VC_PATCH_BACKUP, noop_patch, NULL), VC_ERR_UNSUPPORTED);
    assert_true(last_error_has(g.cache[1], "patch its source there"));
    /* the source goes away: a clear error on the next use */
    assert_int_equal(vc_layer_unregister(g.cache[0], g.layer[0][5]), VC_OK);
    void *p;
    assert_int_equal(vc_layer_acquire(g.cache[1], g.layer[1][5], NULL, &p), VC_ERR_NOT_FOUND);
    assert_true(last_error_has(g.cache[1], "source layer in the owning cache was unregistered"));
    /* a loader failure in the owner surfaces in the reader, and a retry works */
    g.loader[6].fail_next = 1;
    assert_int_equal(vc_layer_acquire(g.cache[1], g.layer[1][6], NULL, &p), VC_ERR_LOADER);
    assert_true(last_error_has(g.cache[1], "in the owning cache"));
    use(&g, 1, 6);
    free_gpus(&g);
}

/* While an upload of the sharing cache may still read the owner's RAM copy, neither the layer nor its
 * model can be unregistered (freeing the copy under that upload): VC_ERR_BUSY, nothing removed, and
 * both go once the sharer's finished uploads are reaped. */
static void test_source_read_by_a_sharer_stays(void **state) {
    (void)state;
    gpus g;
    make_gpus(&g, 1 * MB, 1 * MB, 1);
    void *p;
    assert_int_equal(vc_layer_acquire(g.cache[1], g.layer[1][2], NULL, &p), VC_OK); /* pins the source */
    assert_int_equal(vc_model_unregister(g.cache[0], g.model[0]), VC_ERR_BUSY);
    assert_true(last_error_has(g.cache[0], "being read by another cache"));
    assert_int_equal(vc_layer_unregister(g.cache[0], g.layer[0][2]), VC_ERR_BUSY);
    assert_true(last_error_has(g.cache[0], "being read by another cache"));
    assert_int_equal(get_stats(g.cache[0]).layers, 8); /* nothing removed */
    assert_true(check_device(g.cache[1], p, 32 * KB, g.loader[2].seed));
    assert_int_equal(vc_layer_release(g.cache[1], g.layer[1][2], NULL), VC_OK);
    test_default_stream_sync(g.dev[1]);
    (void)get_stats(g.cache[1]); /* reaps the finished upload: the pin goes */
    assert_int_equal(vc_model_unregister(g.cache[0], g.model[0]), VC_OK);
    use(&g, 1, 2); /* the copy already on the sharer's device stays usable... */
    assert_int_equal(vc_layer_offload(g.cache[1], g.layer[1][2], VC_OFFLOAD_VRAM), VC_OK);
    assert_int_equal(vc_layer_acquire(g.cache[1], g.layer[1][2], NULL, &p), VC_ERR_NOT_FOUND); /* ...not more */
    free_gpus(&g);
}

/* A sharing cache's acquire or read that needs the owner's loader (a disk read) runs it without the
 * sharing cache's lock, as staging does: meanwhile that cache answers other threads, and shows the layer as
 * loading. The loader waits for the main thread's call to come back; the timed wait is only a
 * watchdog, so that the old behaviour (the sharer locked for the whole read) fails instead of hanging. */
typedef struct owner_gate {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int entered, open;
} owner_gate;

static int gated_owner_loader(void *user, vc_layer_id layer, void *dst, size_t bytes) {
    (void)layer;
    owner_gate *g = user;
    pthread_mutex_lock(&g->mu);
    g->entered = 1;
    pthread_cond_broadcast(&g->cv);
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 20;
    while (!g->open && pthread_cond_timedwait(&g->cv, &g->mu, &until) == 0) {}
    pthread_mutex_unlock(&g->mu);
    fill_pattern(dst, bytes, 77);
    return 0;
}

typedef struct acquirer {
    vc_cache *cache;
    vc_layer_id layer;
    int read; /* vc_layer_read instead of an acquire */
    int status, intact;
} acquirer;

static void *acquire_shared(void *arg) {
    acquirer *a = arg;
    if (a->read) {
        static unsigned char buf[32 * KB];
        a->status = vc_layer_read(a->cache, a->layer, buf, sizeof buf);
        a->intact = a->status == VC_OK && check_pattern(buf, sizeof buf, 77);
        return NULL;
    }
    void *p;
    a->status = vc_layer_acquire(a->cache, a->layer, NULL, &p);
    if (a->status == VC_OK) {
        a->intact = check_device(a->cache, p, 32 * KB, 77);
        vc_layer_release(a->cache, a->layer, NULL);
    }
    return NULL;
}

static void test_owner_load_does_not_lock_the_sharer(void **state) {
    (void)state;
    gpus g;
    make_gpus(&g, 1 * MB, 1 * MB, 1);
    owner_gate gate = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0};
    vc_layer_desc d = {.name = "read from disk", .bytes = 32 * KB, .loader = gated_owner_loader, .loader_user = &gate};
    vc_layer_id src, shared;
    assert_int_equal(vc_layer_register(g.cache[0], g.model[0], &d, &src), VC_OK);
    assert_int_equal(vc_layer_register_shared(g.cache[1], g.model[1], g.cache[0], src, &shared), VC_OK);
    for (int read = 0; read < 2; read++) { /* an acquire, then a read through the sharing cache */
        assert_int_equal(vc_layer_offload(g.cache[0], src, VC_OFFLOAD_ALL), VC_OK); /* only the loader has it */
        gate.entered = gate.open = 0;
        acquirer a = {g.cache[1], shared, read, -1, 0};
        pthread_t th;
        assert_int_equal(pthread_create(&th, NULL, acquire_shared, &a), 0);
        pthread_mutex_lock(&gate.mu);
        while (!gate.entered) pthread_cond_wait(&gate.cv, &gate.mu);
        pthread_mutex_unlock(&gate.mu);
        vc_layer_info info; /* the owner's loader is running for the sharing cache's call */
        assert_int_equal(vc_layer_get_info(g.cache[1], shared, &info), VC_OK);
        vc_residency seen = info.residency;
        pthread_mutex_lock(&gate.mu);
        gate.open = 1;
        pthread_cond_broadcast(&gate.cv);
        pthread_mutex_unlock(&gate.mu);
        pthread_join(th, NULL);
        assert_int_equal(seen, VC_RES_LOADING); /* answered during the read, not after it */
        assert_int_equal(a.status, VC_OK);
        assert_true(a.intact);
    }
    free_gpus(&g);
}

typedef struct runner {
    gpus *g;
    int d;
    atomic_int *failures;
    int patches; /* the owner's threads also patch and unpatch */
} runner;

static int either(const void *p, size_t n, uint64_t seed) { return check_pattern(p, n, seed) || is_xored_a5(p, n, seed); }

static void *hammer(void *arg) {
    runner *r = arg;
    unsigned seed = 11u + (unsigned)r->d * 7u;
    for (int it = 0; it < 3000; it++) {
        seed = seed * 1664525u + 1013904223u;
        int i = (int)((seed >> 8) % 8);
        if (r->patches && r->d == 0 && (seed >> 12) % 11 == 0) { /* a LoRA on and off at the source */
            vc_patch_mode how = (seed >> 16) % 4 ? VC_PATCH_BACKUP : VC_PATCH_FUSE;
            int st = (seed >> 18) & 1 ? vc_layer_patch(r->g->cache[0], r->g->layer[0][i], how, xor_a5, NULL)
                                      : vc_layer_unpatch(r->g->cache[0], r->g->layer[0][i]);
            /* BUSY: held, or a sharer's upload reads the copy; INVALID_ARG: a FUSE on a patched layer */
            if (st != VC_OK && st != VC_ERR_BUSY && st != VC_ERR_OUT_OF_RAM && st != VC_ERR_INVALID_ARG)
                atomic_fetch_add(r->failures, 1);
            continue;
        }
        void *p;
        int st = vc_layer_acquire(r->g->cache[r->d], r->g->layer[r->d][i], NULL, &p);
        if (st == VC_OK) {
            /* the source's weights, or with the (involutive) patch in force when the copy was made */
            if (!check_device_by(r->g->cache[r->d], p, 32 * KB, r->g->loader[i].seed, r->patches ? either : check_pattern))
                atomic_fetch_add(r->failures, 1);
            vc_layer_release(r->g->cache[r->d], r->g->layer[r->d][i], NULL);
        } else if (st != VC_ERR_OUT_OF_RAM && st != VC_ERR_OUT_OF_VRAM) {
            atomic_fetch_add(r->failures, 1);
        }
        if ((seed >> 20) % 7 == 0) vc_layer_offload(r->g->cache[r->d], r->g->layer[r->d][i], VC_OFFLOAD_ALL);
    }
    return NULL;
}

static void two_devices_concurrently(vc_offload_mode mode, int keep, int patches) {
    gpus g;
    make_gpus_in(&g, 128 * KB, 128 * KB, keep, mode);
    atomic_int failures = 0;
    runner r[4] = {{&g, 0, &failures, patches}, {&g, 1, &failures, patches}, {&g, 0, &failures, patches},
                   {&g, 1, &failures, patches}};
    pthread_t th[4];
    for (int k = 0; k < 4; k++) pthread_create(&th[k], NULL, hammer, &r[k]);
    for (int k = 0; k < 4; k++) pthread_join(th[k], NULL);
    assert_int_equal(atomic_load(&failures), 0);
    vc_stats a = get_stats(g.cache[0]);
    assert_true(a.ram_peak_bytes <= 128 * KB);
    unsigned char buf[32 * KB];
    /* every patch undone (all first: patched weights and backups fill the RAM pool), then both
     * devices read the source's weights. While a sharer's upload still reads a copy, unpatch answers
     * VC_ERR_BUSY until the sharer's next call lets the finished upload go: poll that way out (on a
     * device whose copies run late, the fake CUDA runtime's, the upload may still be running) */
    int still_read[8] = {0}; /* the simulator's copies finish only as its clock moves: may stay BUSY */
    for (int i = 0; i < 8; i++) {
        int st = vc_layer_unpatch(g.cache[0], g.layer[0][i]);
        for (long tries = 0; st == VC_ERR_BUSY && tries < 100000; tries++) {
            get_stats(g.cache[1]);
            st = vc_layer_unpatch(g.cache[0], g.layer[0][i]);
        }
        assert_true(st == VC_OK || st == VC_ERR_BUSY);
        still_read[i] = st == VC_ERR_BUSY;
    }
    for (int i = 0; i < 8; i++) {
        if (still_read[i]) continue;
        for (int d = 0; d < 2; d++) {
            assert_int_equal(vc_layer_read(g.cache[d], g.layer[d][i], buf, sizeof buf), VC_OK);
            assert_true(check_pattern(buf, sizeof buf, g.loader[i].seed));
            void *p;
            int st = vc_layer_acquire(g.cache[d], g.layer[d][i], NULL, &p);
            /* VC_ERR_OUT_OF_RAM: the owner's RAM pool may be full of copies the sharer's uploads still
             * read (pinned until its next call, as vc_layer_register_shared documents), or of the
             * patched weights of a layer still read */
            if (!(st == VC_OK || st == VC_ERR_OUT_OF_VRAM || st == VC_ERR_OUT_OF_RAM))
                fail_msg("device %d layer %d: %s (%s)", d, i, vc_strerror(st), vc_last_error());
            if (st != VC_OK) continue;
            assert_true(check_device(g.cache[d], p, 32 * KB, g.loader[i].seed));
            assert_int_equal(vc_layer_release(g.cache[d], g.layer[d][i], NULL), VC_OK);
        }
    }
    free_gpus(&g);
}

static void test_two_devices_concurrently(void **state) {
    (void)state;
    two_devices_concurrently(VC_OFFLOAD_MODE_BALANCED, 1, 0);
}

/* The same with the owner's threads patching and unpatching (backup and fused) while the sharer's
 * upload, in every offload mode: each copy holds the source's weights with or without the patch,
 * never a mix, and once the patches are undone both devices read the original. */
static void test_two_devices_with_patches_in_every_mode(void **state) {
    (void)state;
    const vc_offload_mode modes[] = {VC_OFFLOAD_MODE_BALANCED, VC_OFFLOAD_MODE_SEQUENTIAL, VC_OFFLOAD_MODE_MODEL,
                                     VC_OFFLOAD_MODE_NONE};
    for (int k = 0; k < 4; k++) two_devices_concurrently(modes[k], k % 2, 1);
}

/* Staging a shared model from the device's cache fills the owner's RAM pool once. */
static void test_stage_shared(void **state) {
    (void)state;
    gpus g;
    make_gpus(&g, 1 * MB, 1 * MB, 1);
    assert_int_equal(vc_model_load_ram(g.cache[1], g.model[1]), VC_OK);
    assert_int_equal(vc_model_load_ram(g.cache[1], g.model[1]), VC_OK);
    for (int i = 0; i < 8; i++) assert_int_equal(g.loader[i].calls, 1);
    assert_int_equal(get_stats(g.cache[0]).ram_bytes, 8 * 32 * KB);
    assert_int_equal(get_stats(g.cache[1]).ram_bytes, 0);
    for (int i = 0; i < 8; i++) use(&g, 1, i);
    for (int i = 0; i < 8; i++) assert_int_equal(g.loader[i].calls, 1);
    /* the owner's layer gone: a clear error on the sharing cache */
    assert_int_equal(vc_layer_unregister(g.cache[0], g.layer[0][5]), VC_OK);
    assert_int_equal(vc_layer_load_ram(g.cache[1], g.layer[1][5]), VC_ERR_NOT_FOUND);
    assert_true(last_error_has(g.cache[1], "unregistered"));
    free_gpus(&g);
}

/* Offload mode model on the sharing device: a miss loads the whole model there. One of its layers
 * whose source the owner has unregistered can never load again; it must not fail the acquires of the
 * model's other layers (the first version failed every one of them with VC_ERR_NOT_FOUND, naming
 * the orphan), and acquiring it says why. */
static void test_orphan_in_a_whole_model_load(void **state) {
    (void)state;
    vc_backend *dev[2];
    vc_cache *cache[2];
    vc_model_id model[2];
    test_loader ld[3];
    vc_layer_id own[3], shared[3];
    for (int d = 0; d < 2; d++) {
        dev[d] = test_backend_create_on(1 * MB, d);
        vc_cache_options o;
        vc_cache_options_init(&o);
        o.backend = dev[d];
        o.ram_budget = d == 0 ? 1 * MB : 0;
        o.working_mem = 0;
        o.arena_segment_bytes = 32 * KB;
        o.offload_mode = d == 1 ? VC_OFFLOAD_MODE_MODEL : VC_OFFLOAD_MODE_BALANCED;
        assert_int_equal(vc_cache_create(&o, &cache[d]), VC_OK);
        model[d] = add_model(cache[d], "unet");
    }
    for (int i = 0; i < 3; i++) {
        ld[i] = (test_loader){.seed = (uint64_t)i + 90};
        own[i] = add_loader_layer(cache[0], model[0], "block", 32 * KB, &ld[i]);
        assert_int_equal(vc_layer_register_shared(cache[1], model[1], cache[0], own[i], &shared[i]), VC_OK);
    }
    assert_int_equal(vc_layer_unregister(cache[0], own[1]), VC_OK);
    void *p;
    assert_int_equal(vc_layer_acquire(cache[1], shared[0], NULL, &p), VC_OK);
    assert_true(check_device(cache[1], p, 32 * KB, 90));
    vc_layer_info info;
    assert_int_equal(vc_layer_get_info(cache[1], shared[2], &info), VC_OK);
    assert_true(info.residency == VC_RES_VRAM); /* the rest of the model came along */
    assert_int_equal(vc_layer_acquire(cache[1], shared[1], NULL, &p), VC_ERR_NOT_FOUND);
    assert_true(last_error_has(cache[1], "its source layer in the owning cache was unregistered"));
    assert_int_equal(vc_layer_release(cache[1], shared[0], NULL), VC_OK);
    for (int d = 1; d >= 0; d--) {
        assert_int_equal(vc_cache_destroy(cache[d]), VC_OK);
        test_backend_destroy(dev[d]);
    }
}

/* The owner's loader blocks from its second call on, until the test opens the gate. */
typedef struct second_gate {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int calls, entered, open;
} second_gate;

static int second_call_waits(void *user, vc_layer_id layer, void *dst, size_t bytes) {
    (void)layer;
    second_gate *g = user;
    pthread_mutex_lock(&g->mu);
    if (++g->calls > 1) {
        g->entered = 1;
        pthread_cond_broadcast(&g->cv);
        while (!g->open) pthread_cond_wait(&g->cv, &g->mu);
    }
    pthread_mutex_unlock(&g->mu);
    fill_pattern(dst, bytes, 77);
    return 0;
}

/* A layer on the owner's device whose RAM copy was dropped: a sharing cache's upload runs its loader
 * in the owner; meanwhile the owner's last release evicts it (offload mode sequential). The first
 * version wrote the device copy back into the RAM pool as well, so the load that finished next gave
 * the layer a second RAM copy: the first leaked, counted in the pool for ever, and the layer was
 * listed twice (later RAM evictions looped or lost copies). The load alone now makes the copy. */
static void test_release_while_a_sharer_loads_the_source(void **state) {
    (void)state;
    second_gate gate = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0};
    vc_backend *dev[2];
    vc_cache *cache[2];
    vc_model_id model[2];
    for (int d = 0; d < 2; d++) {
        dev[d] = test_backend_create_on(1 * MB, d);
        vc_cache_options o;
        vc_cache_options_init(&o);
        o.backend = dev[d];
        o.ram_budget = d == 0 ? 64 * KB : 0; /* two copies */
        o.working_mem = 0;
        o.arena_segment_bytes = 32 * KB;
        o.offload_mode = d == 0 ? VC_OFFLOAD_MODE_SEQUENTIAL : VC_OFFLOAD_MODE_BALANCED;
        assert_int_equal(vc_cache_create(&o, &cache[d]), VC_OK);
        model[d] = add_model(cache[d], "unet");
    }
    vc_layer_desc d = {.name = "gated", .bytes = 32 * KB, .loader = second_call_waits, .loader_user = &gate};
    vc_layer_id l, shared;
    assert_int_equal(vc_layer_register(cache[0], model[0], &d, &l), VC_OK);
    test_loader ld[2] = {{.seed = 1}, {.seed = 2}};
    vc_layer_id other[2];
    for (int i = 0; i < 2; i++) other[i] = add_loader_layer(cache[0], model[0], "other", 32 * KB, &ld[i]);
    assert_int_equal(vc_layer_register_shared(cache[1], model[1], cache[0], l, &shared), VC_OK);
    void *p;
    assert_int_equal(vc_layer_acquire(cache[0], l, NULL, &p), VC_OK);
    for (int i = 0; i < 2; i++) { /* RAM pressure drops the held layer's RAM copy */
        assert_int_equal(vc_layer_acquire(cache[0], other[i], NULL, &p), VC_OK);
        assert_int_equal(vc_layer_release(cache[0], other[i], NULL), VC_OK);
    }
    vc_layer_info info;
    assert_int_equal(vc_layer_get_info(cache[0], l, &info), VC_OK);
    assert_int_equal(info.residency, VC_RES_VRAM);
    acquirer a = {cache[1], shared, 0, -1, 0}; /* an acquire; the loader fills seed 77's pattern */
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, acquire_shared, &a), 0);
    pthread_mutex_lock(&gate.mu);
    while (!gate.entered) pthread_cond_wait(&gate.cv, &gate.mu); /* the owner's loader runs for it */
    pthread_mutex_unlock(&gate.mu);
    assert_int_equal(vc_layer_release(cache[0], l, NULL), VC_OK); /* sequential: it leaves the device */
    pthread_mutex_lock(&gate.mu);
    gate.open = 1;
    pthread_cond_broadcast(&gate.cv);
    pthread_mutex_unlock(&gate.mu);
    pthread_join(th, NULL);
    assert_int_equal(a.status, VC_OK);
    assert_true(a.intact);
    vc_stats s = get_stats(cache[1]); /* (lets go of its finished upload) */
    s = get_stats(cache[0]);
    assert_int_equal(s.ram_bytes, s.layers_in_ram * 32 * KB);
    assert_int_equal(vc_cache_clear(cache[0]), VC_OK); /* every copy leaves: nothing stays counted */
    s = get_stats(cache[0]);
    assert_int_equal(s.ram_bytes, 0);
    assert_int_equal(s.layers_in_ram, 0);
    for (int k = 1; k >= 0; k--) {
        assert_int_equal(vc_cache_destroy(cache[k]), VC_OK);
        test_backend_destroy(dev[k]);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_held_in_ram_once),
        cmocka_unit_test(test_owner_ram_pressure_and_keep_copy_off),
        cmocka_unit_test(test_sharer_reads_a_written_back_copy),
        cmocka_unit_test(test_patched_source_reaches_sharers),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_source_read_by_a_sharer_stays),
        cmocka_unit_test(test_owner_load_does_not_lock_the_sharer),
        cmocka_unit_test(test_two_devices_concurrently),
        cmocka_unit_test(test_two_devices_with_patches_in_every_mode),
        cmocka_unit_test(test_stage_shared),
        cmocka_unit_test(test_orphan_in_a_whole_model_load),
        cmocka_unit_test(test_release_while_a_sharer_loads_the_source),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
