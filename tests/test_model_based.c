/*
 * Randomized model-based test: thousands of random register / acquire / release / reserve /
 * unreserve / offload / unregister operations on random layer sizes, checking after every step
 * that no pool exceeds its budget, that held layers were never evicted or overwritten, that the
 * cache's counts match a simple model, and that every layer's bytes still equal its source.
 * Runs with keep_ram_copy on and off, and with explicit and dynamic VRAM budgets; and in worlds of
 * two models with LoRA patches (backup and fused, stacked), cache clears, model offloads and
 * declared orders, in each offload mode, where the expected bytes follow the patches in force; with
 * a second device sharing the layers; with injected faults in every device operation and loader
 * call; and with a keep-alive that clears the cache from its own thread between generations.
 */
#include <pthread.h>
#include <stdio.h>
#include <time.h>

#include "cache_internal.h" /* white-box: the prefetch accounting (check_prefetch_accounting) */
#include "test_util.h"
#include "vramcache_fault.h"

enum { MAX_LAYERS = 48, STEPS = 4000 };

typedef struct model_layer {
    int live;
    vc_layer_id id;
    size_t bytes;
    unsigned holds;
    void *dptr;             /* device pointer while held */
    void *borrowed;         /* engine copy, for borrowed layers */
    test_loader loader;
    vc_fault_loader_ctx fctx; /* EXTRA_FAULTS: the loader, through the world's fault wrapper */
    int model;              /* index into world.models */
    int patched, fused;     /* vc_layer_patch in force; the first patch was FUSE */
    unsigned xors;          /* patches applied since the last unpatch: each xors the bytes with 0x5a */
} model_layer;

/* A layer of a second device's cache shared from one of the world's (vc_layer_register_shared). */
typedef struct shared_layer {
    int live;
    vc_layer_id id;
    int src;            /* the world's layer it reads (until it is an orphan: the slot may be reused) */
    uint64_t seed;      /* the source's pattern and size, kept for orphans */
    size_t bytes;
    unsigned holds;
    void *dptr;
    unsigned held_xors; /* the source's patches in force when the first hold was taken */
    int orphan;         /* its source was unregistered: a copy on the device may stay usable */
} shared_layer;

typedef struct sharer {
    test_cache t;
    vc_reservation *res[2]; /* working memory on the sharing device */
    vc_backend *fault_inner; /* EXTRA_FAULTS on the host: the backend under its fault wrapper */
    vc_model_id model;
    shared_layer layers[MAX_LAYERS];
} sharer;

typedef struct world {
    test_cache t;
    vc_model_id model; /* models[0] */
    vc_model_id models[2];
    vc_offload_mode mode;
    int extras; /* the operations beyond the first worlds': patches, clears, model offloads, orders;
                 * with EXTRA_STAGE_AHEAD and EXTRA_SMART, the cache's options of those names too */
    model_layer layers[MAX_LAYERS];
    vc_reservation *res[4];
    size_t res_bytes[4];
    size_t device, ram_budget, vram_budget;
    unsigned rng;
    uint64_t next_seed;
    sharer *sh; /* EXTRA_SHARED: a second device sharing the world's layers */
    int pass_start[2]; /* where each model's passes start in the layer slots (its declared order's start) */
    /* EXTRA_FAULTS: the world's backend is a fault wrapper (over `fault_inner` when the world made
     * one) whose operations and loader calls fail at random, and so is the sharing device's;
     * paused while the test itself looks */
    vc_backend *fault, *fault_inner, *sh_fault;
    unsigned long fired; /* faults fired up to the start of the current operation */
    int armed;
    unsigned long calls_at_arm, armed_calls; /* operations that could fail, while armed */
} world;

enum { EXTRA_OPS = 1, EXTRA_STAGE_AHEAD = 2, EXTRA_SMART = 4, EXTRA_SHARED = 8, EXTRA_FAULTS = 16,
       EXTRA_KEEP_ALIVE = 32, EXTRA_PASSES = 64, EXTRA_OUTAGES = 128 };

static unsigned rnd(world *w) {
    w->rng = w->rng * 1103515245u + 12345u;
    return (w->rng >> 4) & 0x7ffffff;
}

/* Faults fired so far on both devices; with `calls`, also the calls of the operations that are
 * armed (all but stream creation). */
static unsigned long fault_totals(const world *w, unsigned long *calls) {
    unsigned long total = 0, n = 0;
    const vc_backend *const wrappers[] = {w->fault, w->sh_fault};
    for (int k = 0; k < 2; k++)
        for (int op = 0; wrappers[k] && op < VC_FAULT_OP_COUNT; op++) {
            unsigned long f = 0, c = 0;
            assert_int_equal(vc_fault_counts((vc_backend *)wrappers[k], (vc_fault_op)op, &c, &f), VC_OK);
            total += f;
            if (op != VC_FAULT_STREAM_CREATE) n += c;
        }
    if (calls) *calls = n;
    return total;
}

static unsigned long faults_fired(const world *w) { return fault_totals(w, NULL); }

/* Every backend operation but stream creation (done once, at creation) fails with probability 3%,
 * and so do loader calls; seeded from the world's generator, so a world replays. */
static unsigned rnd(world *w);
static void faults_arm(world *w) {
    vc_backend *const wrappers[] = {w->fault, w->sh_fault};
    for (int k = 0; k < 2; k++)
        for (int op = 0; wrappers[k] && op < VC_FAULT_OP_COUNT; op++)
            if (op != VC_FAULT_STREAM_CREATE)
                assert_int_equal(vc_fault_fail_random(wrappers[k], (vc_fault_op)op, 0.03, rnd(w) + 1u), VC_OK);
    w->fired = fault_totals(w, &w->calls_at_arm);
    w->armed = 1;
}

static void faults_pause(world *w) {
    if (w->armed) {
        unsigned long calls;
        fault_totals(w, &calls);
        w->armed_calls += calls - w->calls_at_arm;
        w->armed = 0;
    }
    if (w->fault) assert_int_equal(vc_fault_clear(w->fault), VC_OK);
    if (w->sh_fault) assert_int_equal(vc_fault_clear(w->sh_fault), VC_OK);
}

/* check_device_by with the faults paused (on a device the test reads through the fault wrapper). */
static int device_has(world *w, vc_cache *c, const void *p, size_t n, uint64_t seed, test_check_fn check) {
    faults_pause(w);
    int ok = check_device_by(c, p, n, seed, check);
    faults_arm(w);
    return ok;
}

/* The test backend for a world's device; with EXTRA_FAULTS a fault wrapper (on a device it is one
 * already, capping the device; on the host it wraps the host backend, returned in *inner). */
static vc_backend *world_backend(int extras, size_t device, int index, vc_backend **inner) {
    vc_backend *b = test_backend_create_on(device, index);
    *inner = NULL;
    if ((extras & EXTRA_FAULTS) && !test_on_device()) {
        *inner = b;
        assert_int_equal(vc_backend_fault_create(b, &b), VC_OK);
    }
    return b;
}

/* A failure an injected fault explains: one of the statuses a failing device operation or loader
 * ends in (or VC_ERR_OUT_OF_RAM: room that buffers quarantined for copies the device could not wait
 * for still take, in an outage), in a fault world, with a fault fired since the operation began.
 * The cache must then be as the operation's contract says (the callers check that the model's
 * state still holds). */
static int injected(world *w, int st) {
    if (!w->fault) return 0;
    if (st != VC_ERR_BACKEND && st != VC_ERR_NO_MEMORY && st != VC_ERR_LOADER && st != VC_ERR_OUT_OF_VRAM &&
        st != VC_ERR_OUT_OF_RAM)
        return 0;
    return faults_fired(w) > w->fired;
}

/* EXTRA_KEEP_ALIVE: the keep-alive's clears, counted from its log line (awaited on a condition
 * variable, not a sleep). */
static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int clears;
} keep_alive_seen = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0};

static void count_clears(void *user, vc_log_level level, const char *msg) {
    (void)user;
    (void)level;
    if (!strstr(msg, "cleared the model cache")) return;
    pthread_mutex_lock(&keep_alive_seen.mu);
    keep_alive_seen.clears++;
    pthread_cond_broadcast(&keep_alive_seen.cv);
    pthread_mutex_unlock(&keep_alive_seen.mu);
}

static int check_xored(const void *p, size_t n, uint64_t seed) {
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++)
        if (b[i] != (uint8_t)(pattern_byte(seed, i) ^ 0x5a)) return 0;
    return 1;
}

/* The layer's bytes are its source's, xored once for every patch since the last unpatch. */
static test_check_fn expected(const model_layer *m) { return m->xors % 2 ? check_xored : check_pattern; }

static int has_sharers(const world *w, int i) {
    if (!w->sh) return 0;
    for (int j = 0; j < MAX_LAYERS; j++)
        if (w->sh->layers[j].live && !w->sh->layers[j].orphan && w->sh->layers[j].src == i) return 1;
    return 0;
}

static int any_patched(const world *w) {
    for (int i = 0; i < MAX_LAYERS; i++)
        if (w->layers[i].live && w->layers[i].patched) return 1;
    return 0;
}

static size_t held_bytes(world *w);

static void check_invariants_now(world *w, int full);
static void check_invariants(world *w, int full) {
    faults_pause(w); /* the checks' own device reads go through the wrapper */
    check_invariants_now(w, full);
    faults_arm(w);
}

/* White-box: the prefetches not yet acquired are counted right, in layers and in bytes (sequential
 * mode's look-ahead is bounded by the bytes: a count that drifted would shorten it for good, or,
 * wrapping below zero, stop it). */
static void check_prefetch_accounting(vc_cache *c) {
    pthread_mutex_lock(&c->lock);
    size_t n = 0, bytes = 0;
    for (uint32_t i = 0; i < c->layers.count; i++) {
        const layer_t *l = c->layers.slots[i].ptr;
        if (l && l->prefetched) n++, bytes += l->bytes;
    }
    size_t want_n = c->prefetch_inflight, want_bytes = c->prefetch_inflight_bytes;
    pthread_mutex_unlock(&c->lock);
    assert_int_equal(n, want_n);
    assert_int_equal(bytes, want_bytes);
}

static void check_invariants_now(world *w, int full) {
    check_prefetch_accounting(w->t.cache);
    if (w->sh) check_prefetch_accounting(w->sh->t.cache);
    vc_stats s = get_stats(w->t.cache);
    assert_true(s.ram_bytes <= w->ram_budget);
    assert_true(s.ram_peak_bytes <= w->ram_budget);
    if (w->vram_budget != VC_SIZE_AUTO) assert_true(s.arena_peak_bytes <= w->vram_budget);
    assert_true(s.arena_bytes + s.reserved_bytes <= w->device);
    assert_true(s.vram_bytes <= s.arena_bytes);
    unsigned held = 0, live = 0;
    for (int i = 0; i < MAX_LAYERS; i++) {
        model_layer *m = &w->layers[i];
        if (!m->live) continue;
        live++;
        vc_layer_info info;
        assert_int_equal(vc_layer_get_info(w->t.cache, m->id, &info), VC_OK);
        assert_int_equal(info.holds, m->holds);
        if (m->holds) {
            held++;
            /* held: resident, same pointer, bytes intact */
            assert_true(info.residency == VC_RES_VRAM || info.residency == VC_RES_VRAM_RAM);
            if (m->dptr) /* (unknown after a whole-model acquire) */
                assert_true(check_device_by(w->t.cache, m->dptr, m->bytes, m->loader.seed, expected(m)));
        }
        assert_int_equal(info.patched, m->patched);
        if (full) {
            unsigned char *buf = malloc(m->bytes);
            assert_int_equal(vc_layer_read(w->t.cache, m->id, buf, m->bytes), VC_OK);
            assert_true(expected(m)(buf, m->bytes, m->loader.seed));
            free(buf);
        }
    }
    assert_int_equal(s.layers_held, held);
    assert_int_equal(s.layers, live);
    if (!w->sh) return;
    /* the sharing cache: holds as the model says, held bytes as they were when first held, never a
     * byte in its own RAM pool (its weights live in the world's), its device within capacity */
    vc_stats t = get_stats(w->sh->t.cache);
    assert_int_equal(t.ram_peak_bytes, 0);
    assert_true(t.arena_bytes + t.reserved_bytes <= w->device);
    held = live = 0;
    for (int j = 0; j < MAX_LAYERS; j++) {
        shared_layer *x = &w->sh->layers[j];
        if (!x->live) continue;
        live++;
        const model_layer *src = &w->layers[x->src];
        vc_layer_info info;
        assert_int_equal(vc_layer_get_info(w->sh->t.cache, x->id, &info), VC_OK);
        assert_int_equal(info.holds, x->holds);
        if (x->holds) {
            held++;
            assert_true(check_device_by(w->sh->t.cache, x->dptr, x->bytes, x->seed,
                                        x->held_xors % 2 ? check_xored : check_pattern));
        }
        if (full && !x->orphan && !x->holds) { /* a read goes to the source's current weights */
            unsigned char *buf = malloc(src->bytes);
            assert_int_equal(vc_layer_read(w->sh->t.cache, x->id, buf, src->bytes), VC_OK);
            assert_true(expected(src)(buf, src->bytes, src->loader.seed));
            free(buf);
        }
    }
    assert_int_equal(t.layers_held, held);
    assert_int_equal(t.layers, live);
}

static void op_share(world *w, int j) {
    shared_layer *x = &w->sh->layers[j];
    if (x->live) return;
    int i = (int)(rnd(w) % MAX_LAYERS);
    if (!w->layers[i].live) return;
    memset(x, 0, sizeof *x);
    x->src = i;
    x->seed = w->layers[i].loader.seed;
    x->bytes = w->layers[i].bytes;
    assert_int_equal(vc_layer_register_shared(w->sh->t.cache, w->sh->model, w->t.cache, w->layers[i].id, &x->id), VC_OK);
    x->live = 1;
}

static void op_shared_acquire(world *w, int j) {
    shared_layer *x = &w->sh->layers[j];
    if (!x->live) return;
    const model_layer *src = &w->layers[x->src];
    void *p = NULL;
    int st = vc_layer_acquire(w->sh->t.cache, x->id, NULL, &p);
    if (st == VC_OK) {
        if (x->holds) {
            assert_ptr_equal(p, x->dptr);
        } else if (x->orphan) { /* the copy that stayed on the device: whichever weights it had */
            x->held_xors = device_has(w, w->sh->t.cache, p, x->bytes, x->seed, check_pattern) ? 0 : 1;
        } else {
            x->held_xors = src->xors; /* a patch of the source reaches a copy not held */
        }
        x->holds++;
        x->dptr = p;
        assert_true(device_has(w, w->sh->t.cache, p, x->bytes, x->seed, x->held_xors % 2 ? check_xored : check_pattern));
    } else if (st == VC_ERR_NOT_FOUND) {
        assert_true(x->orphan && !x->holds);
    } else if (injected(w, st)) { /* the source's loader or RAM copy, or this device, failed: not held */
    } else if (st == VC_ERR_OUT_OF_RAM) { /* the world's RAM pool, where the weights are loaded */
        assert_true(any_patched(w) || held_bytes(w) > 0);
    } else {
        assert_int_equal(st, VC_ERR_OUT_OF_VRAM);
    }
}

static void op_shared_release(world *w, int j) {
    shared_layer *x = &w->sh->layers[j];
    if (!x->live) return;
    int st = vc_layer_release(w->sh->t.cache, x->id, NULL);
    assert_int_equal(st, x->holds ? VC_OK : VC_ERR_NOT_HELD);
    if (st == VC_OK) x->holds--;
}

static void op_shared_drop(world *w, int j) {
    shared_layer *x = &w->sh->layers[j];
    if (!x->live) return;
    if (rnd(w) % 2) {
        int st = vc_layer_offload(w->sh->t.cache, x->id, rnd(w) % 2 ? VC_OFFLOAD_ALL : VC_OFFLOAD_VRAM);
        assert_int_equal(st, x->holds ? VC_ERR_BUSY : VC_OK);
        return;
    }
    int st = vc_layer_unregister(w->sh->t.cache, x->id);
    assert_int_equal(st, x->holds ? VC_ERR_BUSY : VC_OK);
    if (st == VC_OK) memset(x, 0, sizeof *x);
}

/* Working memory on the sharing device (with EXTRA_SMART, per operation there too): a buffer is
 * filled, and when reserving fails nothing was reserved. */
static void op_shared_reserve(world *w) {
    int r = (int)(rnd(w) % 2);
    vc_cache *c = w->sh->t.cache;
    if (w->sh->res[r]) {
        assert_int_equal(vc_release_working_mem(c, w->sh->res[r]), VC_OK);
        w->sh->res[r] = NULL;
        return;
    }
    size_t bytes = rnd(w) % (64 * KB); /* 0 too: the whole device to weights (smart) */
    unsigned flags = bytes && rnd(w) % 2 ? VC_RESERVE_BUFFER : 0;
    vc_stats before = get_stats(c);
    int st = vc_reserve_working_mem(c, bytes, flags, &w->sh->res[r]);
    if (st == VC_OK) {
        faults_pause(w);
        if (flags) fill_device(c, vc_reservation_ptr(w->sh->res[r]), 0x5a, bytes);
        faults_arm(w);
        return;
    }
    w->sh->res[r] = NULL;
    if (!injected(w, st)) assert_int_equal(st, VC_ERR_OUT_OF_VRAM);
    assert_int_equal(get_stats(c).reserved_bytes, before.reserved_bytes);
}

static size_t held_bytes(world *w) {  /* (defined here, declared above) */
    size_t b = 0;
    for (int i = 0; i < MAX_LAYERS; i++)
        if (w->layers[i].live && w->layers[i].holds) b += (w->layers[i].bytes + 255) & ~(size_t)255;
    return b;
}

static void op_register(world *w, int i) {
    model_layer *m = &w->layers[i];
    if (m->live) return;
    memset(m, 0, sizeof *m);
    m->bytes = 1 + rnd(w) % (24 * KB);
    m->loader.seed = w->next_seed++;
    vc_layer_desc d = {.name = "layer", .bytes = m->bytes};
    m->model = w->extras ? (int)(rnd(w) % 2) : 0;
    if (rnd(w) % 3 == 0) {
        m->borrowed = malloc(m->bytes);
        fill_pattern(m->borrowed, m->bytes, m->loader.seed);
        d.host_ptr = m->borrowed;
    } else if (w->fault) {
        m->fctx = (vc_fault_loader_ctx){.fault = w->fault, .inner = test_loader_fn, .inner_user = &m->loader};
        d.loader = vc_fault_loader;
        d.loader_user = &m->fctx;
    } else {
        d.loader = test_loader_fn;
        d.loader_user = &m->loader;
    }
    assert_int_equal(vc_layer_register(w->t.cache, w->models[m->model], &d, &m->id), VC_OK);
    m->live = 1;
}

static void op_acquire(world *w, int i) {
    model_layer *m = &w->layers[i];
    if (!m->live) return;
    int no_reservations = 1;
    for (int r = 0; r < 4; r++) no_reservations &= w->res[r] == NULL;
    size_t before_held = held_bytes(w);
    void *p = NULL;
    int st = vc_layer_acquire(w->t.cache, m->id, NULL, &p);
    if (st == VC_OK) {
        if (m->holds && m->dptr) assert_ptr_equal(p, m->dptr); /* held: the same place */
        m->holds++;
        m->dptr = p;
        assert_true(device_has(w, w->t.cache, p, m->bytes, m->loader.seed, expected(m)));
    } else if (injected(w, st)) {
        return; /* not held, nothing else promised (evictions made for it stay) */
    } else if (st == VC_ERR_OUT_OF_RAM) {
        assert_true(any_patched(w)); /* patched weights and backups cannot leave the RAM pool */
    } else {
        assert_int_equal(st, VC_ERR_OUT_OF_VRAM);
        /* with nothing else held and nothing reserved, a layer within budget always fits (in modes
         * that evict layer by layer) */
        size_t limit = w->vram_budget != VC_SIZE_AUTO ? w->vram_budget : w->device;
        if (before_held == 0 && no_reservations && w->mode != VC_OFFLOAD_MODE_NONE && w->mode != VC_OFFLOAD_MODE_MODEL)
            assert_true(m->bytes + 256 > limit);
    }
}

static void op_release(world *w, int i) {
    model_layer *m = &w->layers[i];
    if (!m->live) return;
    int st = vc_layer_release(w->t.cache, m->id, NULL);
    if (m->holds) {
        assert_int_equal(st, VC_OK);
        m->holds--;
    } else {
        assert_int_equal(st, VC_ERR_NOT_HELD);
    }
}

static void op_unregister(world *w, int i) {
    model_layer *m = &w->layers[i];
    if (!m->live) return;
    int st = vc_layer_unregister(w->t.cache, m->id);
    if (m->holds || (st == VC_ERR_BUSY && has_sharers(w, i))) { /* held, or a sharer's upload reads it */
        assert_int_equal(st, VC_ERR_BUSY);
        return;
    }
    assert_int_equal(st, VC_OK);
    if (w->sh)
        for (int j = 0; j < MAX_LAYERS; j++)
            if (w->sh->layers[j].live && w->sh->layers[j].src == i) w->sh->layers[j].orphan = 1;
    free(m->borrowed);
    memset(m, 0, sizeof *m);
}

static void op_offload(world *w, int i) {
    model_layer *m = &w->layers[i];
    if (!m->live) return;
    int st = vc_layer_offload(w->t.cache, m->id, rnd(w) % 2 ? VC_OFFLOAD_ALL : VC_OFFLOAD_VRAM);
    if (!m->holds && injected(w, st)) return; /* a write-back failed: the weights stay where they were */
    assert_int_equal(st, m->holds ? VC_ERR_BUSY : VC_OK);
}

static int xor_5a(void *user, void *weights, size_t n) {
    (void)user;
    for (size_t i = 0; i < n; i++) ((uint8_t *)weights)[i] ^= 0x5a;
    return 0;
}

static void op_patch(world *w, int i) {
    model_layer *m = &w->layers[i];
    if (!m->live) return;
    vc_patch_mode how = rnd(w) % 4 ? VC_PATCH_BACKUP : VC_PATCH_FUSE;
    int st = vc_layer_patch(w->t.cache, m->id, how, xor_5a, NULL);
    if (m->holds || (st == VC_ERR_BUSY && has_sharers(w, i))) {
        assert_int_equal(st, VC_ERR_BUSY);
    } else if (how == VC_PATCH_FUSE && m->patched) {
        assert_int_equal(st, VC_ERR_INVALID_ARG);
    } else if (st == VC_OK) {
        if (!m->patched) m->fused = how == VC_PATCH_FUSE;
        m->patched = 1;
        m->xors++;
    } else if (injected(w, st)) {
        return; /* reading the weights, or a copy, failed: the layer is unchanged */
    } else {
        assert_int_equal(st, VC_ERR_OUT_OF_RAM); /* a private copy or a backup finds no room: unchanged */
    }
}

static void op_unpatch(world *w, int i) {
    model_layer *m = &w->layers[i];
    if (!m->live) return;
    int st = vc_layer_unpatch(w->t.cache, m->id);
    if (m->holds || (st == VC_ERR_BUSY && m->patched && has_sharers(w, i))) {
        assert_int_equal(st, VC_ERR_BUSY);
        return;
    }
    if (injected(w, st)) return; /* still patched, as it was */
    assert_int_equal(st, VC_OK);
    m->patched = m->fused = 0;
    m->xors = 0;
}

/* InvokeAI's model lock: every layer of a model held at once, all or nothing; and its release, which
 * refuses (changing nothing) while any layer of the model is not held. */
static void op_whole_model(world *w) {
    int k = (int)(rnd(w) % 2), unheld = 0;
    for (int i = 0; i < MAX_LAYERS; i++)
        if (w->layers[i].live && w->layers[i].model == k) unheld += w->layers[i].holds == 0;
    if (rnd(w) % 2) {
        int st = vc_model_release(w->t.cache, w->models[k], NULL);
        assert_int_equal(st, unheld ? VC_ERR_NOT_HELD : VC_OK);
        if (st == VC_OK)
            for (int i = 0; i < MAX_LAYERS; i++)
                if (w->layers[i].live && w->layers[i].model == k) w->layers[i].holds--;
        return;
    }
    vc_stats before = get_stats(w->t.cache);
    int st = vc_model_acquire(w->t.cache, w->models[k], NULL);
    if (st == VC_OK) {
        for (int i = 0; i < MAX_LAYERS; i++) {
            model_layer *m = &w->layers[i];
            if (!m->live || m->model != k) continue;
            if (!m->holds) m->dptr = NULL;
            m->holds++;
        }
    } else {
        /* (an injected fault first: room quarantined for copies the device could not wait for is
         * OUT_OF_RAM without any patch, as for a single layer's acquire) */
        if (injected(w, st)) {
        } else if (st == VC_ERR_OUT_OF_RAM) {
            assert_true(any_patched(w));
        } else {
            assert_int_equal(st, VC_ERR_OUT_OF_VRAM);
        }
        assert_int_equal(get_stats(w->t.cache).layers_held, before.layers_held); /* all or nothing */
    }
}

/* "Clear Model Cache", a whole model moved out, or an order declared (or cleared) for a model. */
static void op_model_wide(world *w) {
    int k = (int)(rnd(w) % 2), held = 0;
    for (int i = 0; i < MAX_LAYERS; i++)
        if (w->layers[i].live && w->layers[i].holds && (w->layers[i].model == k)) held = 1;
    int any_held = held;
    for (int i = 0; i < MAX_LAYERS; i++) any_held |= w->layers[i].live && w->layers[i].holds;
    switch (rnd(w) % 3) {
    case 0: {
        int st = vc_cache_clear(w->t.cache);
        if (!injected(w, st)) assert_int_equal(st, any_held ? VC_ERR_BUSY : VC_OK);
        break;
    }
    case 1: {
        int st = vc_model_offload(w->t.cache, w->models[k], rnd(w) % 2 ? VC_OFFLOAD_ALL : VC_OFFLOAD_VRAM);
        if (!injected(w, st)) assert_int_equal(st, held ? VC_ERR_BUSY : VC_OK);
        break;
    }
    default: {
        vc_layer_id order[MAX_LAYERS];
        size_t n = 0;
        if (rnd(w) % 4) { /* the model's live layers, from a random start (where its passes go now) */
            int start = w->pass_start[k] = (int)(rnd(w) % MAX_LAYERS);
            for (int j = 0; j < MAX_LAYERS; j++) {
                const model_layer *m = &w->layers[(start + j) % MAX_LAYERS];
                if (m->live && m->model == k) order[n++] = m->id;
            }
            if (start % 3 == 0 && n > 2 && n < MAX_LAYERS) { /* a layer used twice per pass */
                order[n] = order[1];
                n++;
            }
        }
        assert_int_equal(vc_model_set_order(w->t.cache, w->models[k], order, n), VC_OK);
        /* and the engine changes the streaming region's room (one slot for a decode, the planner's
         * choice for a prefill, or the cache measuring: its choice follows the clock, so a seed's
         * run may differ there; the invariants may not): taken from n, so the worlds draw the same
         * random numbers as before */
        assert_int_equal(vc_cache_set_stream_slots(w->t.cache, n % 4 == 3 ? VC_STREAM_SLOTS_TUNE : (unsigned)(n % 4)),
                         VC_OK);
    }
    }
}

/* EXTRA_PASSES: denoising passes, every live layer of a model acquired and released in turn, in the order its
 * passes take (its declared order while that holds; learned otherwise), so plans, the streaming
 * region, homes and prefetches come into play between the random operations. */
static void op_pass(world *w) {
    int k = (int)(rnd(w) % 2);
    for (unsigned n = 1 + rnd(w) % 2; n > 0; n--) /* one or two in a row: enough to plan from */
        for (int j = 0; j < MAX_LAYERS; j++) {
            int i = (w->pass_start[k] + j) % MAX_LAYERS;
            model_layer *m = &w->layers[i];
            if (!m->live || m->model != k) continue;
            unsigned holds = m->holds;
            op_acquire(w, i);
            if (m->holds > holds) op_release(w, i);
        }
}

static void op_reserve(world *w) {
    int r = (int)(rnd(w) % 4);
    if (w->res[r]) {
        assert_int_equal(vc_release_working_mem(w->t.cache, w->res[r]), VC_OK);
        w->res[r] = NULL;
        return;
    }
    size_t bytes = 1 + rnd(w) % (64 * KB);
    unsigned flags = rnd(w) % 2 ? VC_RESERVE_BUFFER : 0;
    vc_stats before = get_stats(w->t.cache);
    int st = vc_reserve_working_mem(w->t.cache, bytes, flags, &w->res[r]);
    if (st == VC_OK) {
        w->res_bytes[r] = bytes;
        faults_pause(w);
        if (flags) fill_device(w->t.cache, vc_reservation_ptr(w->res[r]), 0x5a, bytes);
        faults_arm(w);
    } else if (injected(w, st)) {
        w->res[r] = NULL; /* the buffer could not be had: nothing reserved (evictions made for it stay) */
        assert_int_equal(get_stats(w->t.cache).reserved_bytes, before.reserved_bytes);
    } else {
        assert_int_equal(st, VC_ERR_OUT_OF_VRAM);
        w->res[r] = NULL;
        vc_stats after = get_stats(w->t.cache);
        assert_int_equal(after.layers_in_vram, before.layers_in_vram); /* failed: nothing evicted */
        assert_int_equal(after.reserved_bytes, before.reserved_bytes);
    }
}

static void op_release(world *w, int i);
static void op_shared_release(world *w, int j);

/* One acquire and release of a layer that loads (faults paused): a use, so the keep-alive's idle
 * spell starts again after it. 0 when no layer can be acquired now (model mode, a model too big). */
static int use_a_layer(world *w) {
    for (int i = 0; i < MAX_LAYERS; i++) {
        void *p;
        if (!w->layers[i].live || vc_layer_acquire(w->t.cache, w->layers[i].id, NULL, &p) != VC_OK) continue;
        assert_int_equal(vc_layer_release(w->t.cache, w->layers[i].id, NULL), VC_OK);
        return 1;
    }
    return 0;
}

/* Between two generations: every hold and reservation goes, one layer is used, and the world
 * waits (up to a minute: a loaded CI machine) for the keep-alive's clear that follows; then nothing
 * is left in the world's VRAM, and every layer still reads its source's bytes with the patches in
 * force. A clear counted before the use (the previous idle spell's) leaves the layer used in VRAM:
 * then another use and another wait. The faults stay paused meanwhile, so that the clear's
 * write-backs succeed. Returns whether a clear was seen. */
static int op_idle_until_cleared(world *w) {
    faults_pause(w);
    for (int r = 0; r < 4; r++)
        if (w->res[r]) {
            assert_int_equal(vc_release_working_mem(w->t.cache, w->res[r]), VC_OK);
            w->res[r] = NULL;
        }
    for (int i = 0; i < MAX_LAYERS; i++)
        while (w->layers[i].live && w->layers[i].holds) op_release(w, i);
    for (int j = 0; w->sh && j < MAX_LAYERS; j++)
        while (w->sh->layers[j].live && w->sh->layers[j].holds) op_shared_release(w, j);
    int cleared = 0, used = 0;
    for (int tries = 0; tries < 5 && !cleared; tries++) {
        pthread_mutex_lock(&keep_alive_seen.mu);
        int before = keep_alive_seen.clears, timed_out = 0;
        pthread_mutex_unlock(&keep_alive_seen.mu);
        if (!use_a_layer(w)) break;
        used = 1;
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += 60;
        pthread_mutex_lock(&keep_alive_seen.mu);
        while (keep_alive_seen.clears == before && !timed_out)
            timed_out = pthread_cond_timedwait(&keep_alive_seen.cv, &keep_alive_seen.mu, &until) != 0;
        pthread_mutex_unlock(&keep_alive_seen.mu);
        assert_false(timed_out);
        vc_stats s = get_stats(w->t.cache);
        assert_int_equal(s.layers_held, 0);
        cleared = s.vram_bytes == 0;
    }
    assert_true(cleared || !used); /* five clears all before their use: not a plausible schedule */
    check_invariants(w, 1); /* (arms the faults again) */
    return cleared;
}

static void run_world_in(int keep_ram_copy, size_t vram_budget, unsigned seed, vc_offload_mode mode, int extras) {
    /* VC_MODEL_SEED=N runs other worlds (N added to each seed), for soaks over many seeds:
     * for n in $(seq 100); do VC_MODEL_SEED=$n ./test_model_based || break; done */
    const char *more = getenv("VC_MODEL_SEED");
    if (more) seed += (unsigned)strtoul(more, NULL, 10) * 4u;
    world *w = calloc(1, sizeof *w);
    w->device = 256 * KB;
    w->ram_budget = 128 * KB;
    w->vram_budget = vram_budget;
    w->rng = seed;
    w->next_seed = 1000;
    w->mode = mode;
    w->extras = extras;
    vc_cache_options o;
    vc_cache_options_init(&o);
    o.ram_budget = w->ram_budget;
    o.vram_budget = vram_budget;
    o.working_mem = 16 * KB;
    o.keep_ram_copy = keep_ram_copy;
    o.arena_segment_bytes = 32 * KB;
    o.offload_mode = mode;
    o.stage_ahead = (extras & EXTRA_STAGE_AHEAD) != 0; /* its thread stages the declared orders' layers */
    o.smart_working_mem = (extras & EXTRA_SMART) != 0;
    /* fenced copies split at every occupant, or not into parts under 2 KB (the default 1 MB is more
     * than these layers hold) */
    o.copy_part_min_bytes = seed & 1 ? 0 : 2 * KB;
    /* a keep-alive of 1 ms: its thread clears the cache whenever the world pauses with nothing held */
    o.keep_alive_s = extras & EXTRA_KEEP_ALIVE ? 1e-3 : 0;
    if (extras & EXTRA_KEEP_ALIVE) {
        o.log_fn = count_clears;
        o.log_level = VC_LOG_INFO;
    }
    w->t.backend = o.backend = world_backend(extras, w->device, 0, &w->fault_inner);
    assert_int_equal(vc_cache_create(&o, &w->t.cache), VC_OK);
    if (extras & EXTRA_FAULTS) w->fault = w->t.backend;
    w->model = w->models[0] = add_model(w->t.cache, "random");
    w->models[1] = extras ? add_model(w->t.cache, "random.2") : w->model;
    if (extras & EXTRA_SHARED) {
        w->sh = calloc(1, sizeof *w->sh);
        vc_cache_options so;
        vc_cache_options_init(&so);
        so.ram_budget = 0; /* it keeps nothing of its own in RAM */
        so.working_mem = 16 * KB;
        so.keep_ram_copy = keep_ram_copy;
        so.arena_segment_bytes = 32 * KB;
        so.offload_mode = mode;
        so.smart_working_mem = (extras & EXTRA_SMART) != 0;
        w->sh->t.backend = so.backend = world_backend(extras, w->device, 1, &w->sh->fault_inner);
        assert_int_equal(vc_cache_create(&so, &w->sh->t.cache), VC_OK);
        if (extras & EXTRA_FAULTS) w->sh_fault = w->sh->t.backend;
        w->sh->model = add_model(w->sh->t.cache, "shared");
    }
    /* the added worlds are shorter: half as long, a quarter on the slower simulated and CUDA
     * devices; the fault and keep-alive worlds (eight) half that again (VC_MODEL_SEED soaks make up
     * the difference) */
    int steps = !extras ? STEPS : test_on_device() ? STEPS / 4 : STEPS / 2;
    if (extras & (EXTRA_FAULTS | EXTRA_KEEP_ALIVE)) steps /= 2;
    faults_arm(w);
    int idle_clears = 0;
    for (int step = 0; step < steps; step++) {
        if ((extras & EXTRA_KEEP_ALIVE) && step % 400 == 399) idle_clears += op_idle_until_cleared(w);
        w->fired = faults_fired(w);
        /* EXTRA_OUTAGES: one operation in 16 runs with every event call of both devices failing (a
         * device that stops answering for a moment): the copies it queues can be neither ordered
         * nor waited for, so what they use must be kept, not reused. The checks after the
         * operation end the outage (faults_pause). */
        if ((extras & EXTRA_OUTAGES) && rnd(w) % 16 == 0) {
            if (w->fault) assert_int_equal(vc_fault_fail_always(w->fault, VC_FAULT_EVENT, 1), VC_OK);
            if (w->sh_fault) assert_int_equal(vc_fault_fail_always(w->sh_fault, VC_FAULT_EVENT, 1), VC_OK);
        }
        int i = (int)(rnd(w) % MAX_LAYERS);
        if (w->sh && rnd(w) % 2) { /* half the steps on the sharing device */
            switch (rnd(w) % 9) {
            case 0: op_share(w, i); break;
            case 1: case 2: case 3: op_shared_acquire(w, i); break;
            case 4: case 5: case 6: op_shared_release(w, i); break;
            case 7: op_shared_drop(w, i); break;
            case 8: op_shared_reserve(w); break;
            }
            check_invariants(w, step % 17 == 0);
            continue;
        }
        switch (rnd(w) % (extras ? 15 : 10)) {
        case 0: op_register(w, i); break;
        case 1: case 2: case 3: op_acquire(w, i); break;
        case 4: case 5: case 6: op_release(w, i); break;
        case 7: op_offload(w, i); break;
        case 8: op_reserve(w); break;
        case 9: if (rnd(w) % 4 == 0) op_unregister(w, i); else op_register(w, i); break;
        case 10: op_patch(w, i); break;
        case 11: op_unpatch(w, i); break;
        case 12: op_model_wide(w); break;
        case 13: if (rnd(w) % 4) op_acquire(w, i); else op_whole_model(w); break;
        case 14: if ((extras & EXTRA_PASSES) && rnd(w) % 2) op_pass(w); else op_acquire(w, i); break;
        }
        check_invariants(w, step % (extras ? 17 : 97) == 0);
    }
    /* the keep-alive really cleared (in offload mode model every layer may belong to a model too big) */
    if ((extras & EXTRA_KEEP_ALIVE) && mode != VC_OFFLOAD_MODE_MODEL) assert_true(idle_clears > 0);
    faults_pause(w); /* with the faults gone, everything works again (below) */
    /* The faults really fired: about 3% of the calls made while armed. Against the call count, not
     * the steps: a world whose models do not fit (offload mode model) refuses most operations before
     * they reach the device. Fewer than a quarter of the expected count, once that is 20 or more,
     * has odds below 1e-4 (and a wrapper that never fires fails it in every world). */
    double due = 0.03 * (double)w->armed_calls;
    if (w->fault && due >= 20 && (double)faults_fired(w) < due / 4)
        fail_msg("world %u (mode %d): only %lu faults fired in %lu armed calls over %d steps", seed, (int)mode,
                 faults_fired(w), w->armed_calls, steps);
    for (int r = 0; r < 4; r++)
        if (w->res[r]) assert_int_equal(vc_release_working_mem(w->t.cache, w->res[r]), VC_OK);
    for (int i = 0; i < MAX_LAYERS; i++)
        while (w->layers[i].live && w->layers[i].holds) op_release(w, i);
    if (w->sh) {
        for (int r = 0; r < 2; r++)
            if (w->sh->res[r]) assert_int_equal(vc_release_working_mem(w->sh->t.cache, w->sh->res[r]), VC_OK);
        for (int j = 0; j < MAX_LAYERS; j++)
            while (w->sh->layers[j].live && w->sh->layers[j].holds) op_shared_release(w, j);
    }
    check_invariants_now(w, 1);
    for (int i = 0; w->fault && i < MAX_LAYERS; i++) {
        model_layer *m = &w->layers[i];
        void *p;
        if (!m->live) continue;
        int st = vc_layer_acquire(w->t.cache, m->id, NULL, &p);
        if (st == VC_ERR_OUT_OF_RAM) assert_true(any_patched(w)); /* patched weights fill the pool */
        else if (st == VC_ERR_OUT_OF_VRAM) assert_true(w->mode == VC_OFFLOAD_MODE_NONE || w->mode == VC_OFFLOAD_MODE_MODEL);
        else assert_int_equal(st, VC_OK);
        if (st != VC_OK) continue;
        assert_true(check_device_by(w->t.cache, p, m->bytes, m->loader.seed, expected(m)));
        assert_int_equal(vc_layer_release(w->t.cache, m->id, NULL), VC_OK);
    }
    if (w->fault) { /* no device memory stays lost to a copy whose event once failed */
        assert_int_equal(vc_cache_clear(w->t.cache), VC_OK);
        assert_int_equal(get_stats(w->t.cache).vram_bytes, 0);
    }
    if (w->sh) {
        free_cache(&w->sh->t);
        if (w->sh->fault_inner) test_backend_destroy(w->sh->fault_inner);
        free(w->sh);
    }
    for (int i = 0; i < MAX_LAYERS; i++) free(w->layers[i].borrowed);
    free_cache(&w->t);
    if (w->fault_inner) test_backend_destroy(w->fault_inner);
    free(w);
}

static void run_world(int keep_ram_copy, size_t vram_budget, unsigned seed) {
    run_world_in(keep_ram_copy, vram_budget, seed, VC_OFFLOAD_MODE_BALANCED, 0);
}

static void test_keep_copy_explicit_budget(void **state) {
    (void)state;
    run_world(1, 160 * KB, 1);
}
static void test_no_copy_explicit_budget(void **state) {
    (void)state;
    run_world(0, 160 * KB, 2);
}
static void test_keep_copy_dynamic_budget(void **state) {
    (void)state;
    run_world(1, VC_SIZE_AUTO, 3);
}
static void test_no_copy_dynamic_budget(void **state) {
    (void)state;
    run_world(0, VC_SIZE_AUTO, 4);
}

/* Two models, LoRA patches (backup and fused, stacked), cache clears, model offloads and declared
 * orders, in each offload mode (with the stage-ahead worker, and working memory per operation in
 * two of them, where the VRAM budget is dynamic): the bytes read back are always the source's with the patches in
 * force, whatever moved in between. */
static void test_patches_and_models_in_every_mode(void **state) {
    (void)state;
    const vc_offload_mode modes[] = {VC_OFFLOAD_MODE_BALANCED, VC_OFFLOAD_MODE_SEQUENTIAL, VC_OFFLOAD_MODE_MODEL,
                                     VC_OFFLOAD_MODE_NONE};
    for (unsigned k = 0; k < 4; k++) {
        run_world_in(1, VC_SIZE_AUTO, 11 + k, modes[k], EXTRA_OPS | EXTRA_STAGE_AHEAD | (k % 2 ? EXTRA_SMART : 0));
        run_world_in(0, 160 * KB, 21 + k, modes[k], EXTRA_OPS);
    }
}

/* A second device sharing the world's layers (vc_layer_register_shared): its copies follow the
 * patches of their sources at each first hold, keep their bytes while held, survive their source's
 * unregistration until they leave, and never take RAM of their own. */
static void test_a_second_device_sharing_the_layers(void **state) {
    (void)state;
    run_world_in(1, VC_SIZE_AUTO, 31, VC_OFFLOAD_MODE_BALANCED, EXTRA_OPS | EXTRA_SHARED | EXTRA_SMART);
    run_world_in(0, 160 * KB, 32, VC_OFFLOAD_MODE_BALANCED, EXTRA_OPS | EXTRA_SHARED | EXTRA_STAGE_AHEAD);
    run_world_in(1, VC_SIZE_AUTO, 33, VC_OFFLOAD_MODE_SEQUENTIAL, EXTRA_OPS | EXTRA_SHARED);
    run_world_in(0, VC_SIZE_AUTO, 34, VC_OFFLOAD_MODE_MODEL, EXTRA_OPS | EXTRA_SHARED | EXTRA_SMART);
}

/* Every device operation and loader call fails now and then (2%, seeded), in each offload mode and
 * with a sharing device: each failure ends in a documented status, a failed patch or unpatch changes
 * nothing, no hold is taken or lost by a failure, budgets hold, and every layer's bytes stay its
 * source's with the patches in force; once the faults stop, every layer can be acquired again. */
static void test_faults_in_every_mode(void **state) {
    (void)state;
    const vc_offload_mode modes[] = {VC_OFFLOAD_MODE_BALANCED, VC_OFFLOAD_MODE_SEQUENTIAL, VC_OFFLOAD_MODE_MODEL,
                                     VC_OFFLOAD_MODE_NONE};
    for (unsigned k = 0; k < 4; k++)
        run_world_in(k % 2, k % 2 ? VC_SIZE_AUTO : 160 * KB, 41 + k, modes[k],
                     EXTRA_OPS | EXTRA_FAULTS | EXTRA_OUTAGES | EXTRA_PASSES | (k % 2 ? EXTRA_SMART : EXTRA_STAGE_AHEAD));
    run_world_in(1, VC_SIZE_AUTO, 61, VC_OFFLOAD_MODE_BALANCED, EXTRA_OPS | EXTRA_FAULTS | EXTRA_OUTAGES | EXTRA_SHARED);
}

/* keep-alive (model_cache_keep_alive_min) at 1 ms: the cache is cleared from its own thread at
 * moments the world does not choose, whenever nothing is held; nothing it does may show in what
 * the world sees, whatever else runs (stage-ahead, a sharing device, faults). */
static void test_keep_alive_clears_between_operations(void **state) {
    (void)state;
    run_world_in(1, VC_SIZE_AUTO, 71, VC_OFFLOAD_MODE_BALANCED, EXTRA_OPS | EXTRA_KEEP_ALIVE | EXTRA_STAGE_AHEAD | EXTRA_PASSES);
    run_world_in(0, VC_SIZE_AUTO, 73, VC_OFFLOAD_MODE_SEQUENTIAL, EXTRA_OPS | EXTRA_KEEP_ALIVE | EXTRA_SHARED);
    run_world_in(1, 160 * KB, 74, VC_OFFLOAD_MODE_BALANCED, EXTRA_OPS | EXTRA_KEEP_ALIVE | EXTRA_FAULTS | EXTRA_PASSES);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_keep_copy_explicit_budget),
        cmocka_unit_test(test_no_copy_explicit_budget),
        cmocka_unit_test(test_keep_copy_dynamic_budget),
        cmocka_unit_test(test_no_copy_dynamic_budget),
        cmocka_unit_test(test_patches_and_models_in_every_mode),
        cmocka_unit_test(test_a_second_device_sharing_the_layers),
        cmocka_unit_test(test_faults_in_every_mode),
        cmocka_unit_test(test_keep_alive_clears_between_operations),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
