/* Injected faults: every failing backend operation and loader call ends in a specific status and a
 * message, leaves the cache consistent with the weights intact, and a retry after the fault clears
 * succeeds. Run under ASan/LSan in CI, which also proves nothing leaks. */
#include "test_util.h"
#include "vramcache_fault.h"
#include "vramcache_sim.h"

typedef struct rig {
    vc_backend *host, *fault;
    vc_cache *cache;
    vc_model_id model;
    vc_layer_id layer[8];
    test_loader loader[8];
    int n;
} rig;

/* The rig is filled in place: the loaders' contexts live in it, so it must not move. */
static void make_rig(rig *rp, int n, size_t device, size_t ram, int keep_ram_copy) {
#define r (*rp)
    memset(&r, 0, sizeof r);
    assert_int_equal(vc_backend_host_create(device, &r.host), VC_OK);
    assert_int_equal(vc_backend_fault_create(r.host, &r.fault), VC_OK);
    vc_cache_options o;
    vc_cache_options_init(&o);
    o.backend = r.fault;
    o.ram_budget = ram;
    o.working_mem = 0;
    o.keep_ram_copy = keep_ram_copy;
    o.arena_segment_bytes = 32 * KB;
    assert_int_equal(vc_cache_create(&o, &r.cache), VC_OK);
    r.model = add_model(r.cache, "m");
    r.n = n;
    for (int i = 0; i < n; i++) {
        r.loader[i] = (test_loader){.seed = (uint64_t)i + 40};
        r.layer[i] = add_loader_layer(r.cache, r.model, "layer", 32 * KB, &r.loader[i]);
    }
#undef r
}

static void free_rig(rig *r) {
    assert_int_equal(vc_cache_destroy(r->cache), VC_OK);
    vc_backend_destroy(r->fault);
    vc_backend_destroy(r->host);
}

/* No holds, pools within budget, every layer's bytes equal to its source. */
static void assert_consistent(rig *r, size_t ram_budget, size_t device) {
    vc_fault_clear(r->fault);
    for (int i = 0; i < r->n; i++) r->loader[i].fail_next = 0; /* (one armed for a layer that then hit) */
    vc_stats s = get_stats(r->cache);
    assert_int_equal(s.layers_held, 0);
    assert_true(s.ram_bytes <= ram_budget);
    assert_true(s.arena_bytes <= device);
    assert_true(s.vram_bytes <= s.arena_bytes);
    for (int i = 0; i < r->n; i++) {
        unsigned char buf[32 * KB];
        assert_int_equal(vc_layer_read(r->cache, r->layer[i], buf, sizeof buf), VC_OK);
        assert_true(check_pattern(buf, sizeof buf, r->loader[i].seed));
    }
}

static void acquire_ok(rig *r, int i) {
    void *p;
    assert_int_equal(vc_layer_acquire(r->cache, r->layer[i], NULL, &p), VC_OK);
    assert_true(check_pattern(p, 32 * KB, r->loader[i].seed));
    assert_int_equal(vc_layer_release(r->cache, r->layer[i], NULL), VC_OK);
}

static void test_device_alloc_fails_then_retry(void **state) {
    (void)state;
    rig r;
    make_rig(&r, 4, 256 * KB, 1 * MB, 1);
    assert_int_equal(vc_fault_fail_nth(r.fault, VC_FAULT_DEVICE_ALLOC, 1), VC_OK);
    void *p = (void *)0x1;
    assert_int_equal(vc_layer_acquire(r.cache, r.layer[0], NULL, &p), VC_ERR_OUT_OF_VRAM);
    assert_ptr_equal(p, (void *)0x1);
    assert_true(last_error_has(r.cache, "injected fault: device_alloc"));
    assert_int_equal(get_stats(r.cache).vram_bytes, 0);
    acquire_ok(&r, 0); /* the fault has cleared */
    assert_consistent(&r, 1 * MB, 256 * KB);
    free_rig(&r);
}

static void test_device_oom_evicts_and_retries(void **state) {
    (void)state;
    /* Four layers resident in four 32 KB segments; then the device refuses every allocation (another
     * process took the rest): the next layer still loads, into the room of an evicted one. */
    rig r;
    make_rig(&r, 6, 1 * MB, 1 * MB, 1);
    for (int i = 0; i < 4; i++) acquire_ok(&r, i);
    assert_int_equal(vc_fault_fail_always(r.fault, VC_FAULT_DEVICE_ALLOC, 1), VC_OK);
    acquire_ok(&r, 4);
    vc_stats s = get_stats(r.cache);
    assert_int_equal(s.layers_in_vram, 4);
    unsigned long failed = 0;
    vc_fault_counts(r.fault, VC_FAULT_DEVICE_ALLOC, NULL, &failed);
    assert_true(failed >= 1);
    /* with every other layer held there is nothing to evict: a clear error */
    void *p[4];
    for (int i = 1; i < 5; i++) assert_int_equal(vc_layer_acquire(r.cache, r.layer[i], NULL, &p[i - 1]), VC_OK);
    void *q;
    assert_int_equal(vc_layer_acquire(r.cache, r.layer[5], NULL, &q), VC_ERR_OUT_OF_VRAM);
    assert_true(last_error_has(r.cache, "the device refused"));
    for (int i = 1; i < 5; i++) vc_layer_release(r.cache, r.layer[i], NULL);
    assert_consistent(&r, 1 * MB, 1 * MB);
    acquire_ok(&r, 5);
    free_rig(&r);
}

static void test_host_alloc_fails(void **state) {
    (void)state;
    rig r;
    make_rig(&r, 2, 1 * MB, 1 * MB, 1);
    assert_int_equal(vc_fault_fail_nth(r.fault, VC_FAULT_HOST_ALLOC, 1), VC_OK);
    void *p;
    assert_int_equal(vc_layer_acquire(r.cache, r.layer[0], NULL, &p), VC_ERR_NO_MEMORY);
    assert_true(last_error_has(r.cache, "RAM copy of layer"));
    vc_stats s = get_stats(r.cache);
    assert_int_equal(s.ram_bytes, 0);
    assert_int_equal(s.vram_bytes, 0);
    assert_int_equal(r.loader[0].calls, 0);
    acquire_ok(&r, 0);
    assert_consistent(&r, 1 * MB, 1 * MB);
    free_rig(&r);
}

static void test_upload_copy_fails(void **state) {
    (void)state;
    rig r;
    make_rig(&r, 2, 1 * MB, 1 * MB, 1);
    assert_int_equal(vc_fault_fail_nth(r.fault, VC_FAULT_COPY_H2D, 1), VC_OK);
    void *p;
    assert_int_equal(vc_layer_acquire(r.cache, r.layer[1], NULL, &p), VC_ERR_BACKEND);
    assert_true(last_error_has(r.cache, "upload of layer"));
    assert_true(last_error_has(r.cache, "injected fault: copy_h2d"));
    vc_stats s = get_stats(r.cache);
    assert_int_equal(s.vram_bytes, 0);
    assert_int_equal(s.layers_held, 0);
    assert_int_equal(residency(r.cache, r.layer[1]), VC_RES_RAM); /* the RAM copy stays */
    acquire_ok(&r, 1);
    assert_int_equal(r.loader[1].calls, 1); /* no reload was needed */
    assert_consistent(&r, 1 * MB, 1 * MB);
    free_rig(&r);
}

static void test_writeback_copy_fails(void **state) {
    (void)state;
    /* keep_ram_copy off: leaving VRAM copies back; when that copy fails the weights are dropped and
     * the loader produces them again: nothing lost. */
    rig r;
    make_rig(&r, 2, 1 * MB, 1 * MB, 0);
    acquire_ok(&r, 0);
    assert_int_equal(residency(r.cache, r.layer[0]), VC_RES_VRAM);
    assert_int_equal(vc_fault_fail_nth(r.fault, VC_FAULT_COPY_D2H, 1), VC_OK);
    assert_int_equal(vc_layer_offload(r.cache, r.layer[0], VC_OFFLOAD_VRAM), VC_OK);
    assert_int_equal(residency(r.cache, r.layer[0]), VC_RES_NONE);
    assert_int_equal(get_stats(r.cache).ram_bytes, 0); /* the failed write-back's buffer is gone */
    acquire_ok(&r, 0);
    assert_int_equal(r.loader[0].calls, 2);
    /* a read of a device-only layer whose download fails is an error, and can be retried */
    assert_int_equal(residency(r.cache, r.layer[0]), VC_RES_VRAM);
    assert_int_equal(vc_fault_fail_nth(r.fault, VC_FAULT_COPY_D2H, 1), VC_OK);
    unsigned char buf[32 * KB];
    assert_int_equal(vc_layer_read(r.cache, r.layer[0], buf, sizeof buf), VC_ERR_BACKEND);
    assert_consistent(&r, 1 * MB, 1 * MB);
    free_rig(&r);
}

static void test_event_faults(void **state) {
    (void)state;
    rig r;
    make_rig(&r, 3, 1 * MB, 1 * MB, 1);
    /* the first event operation of an acquire fails: the acquire fails and holds nothing */
    assert_int_equal(vc_fault_fail_nth(r.fault, VC_FAULT_EVENT, 1), VC_OK);
    void *p;
    assert_int_equal(vc_layer_acquire(r.cache, r.layer[0], NULL, &p), VC_ERR_BACKEND);
    assert_int_equal(get_stats(r.cache).layers_held, 0);
    assert_int_equal(get_stats(r.cache).vram_bytes, 0);
    acquire_ok(&r, 0);
    /* an event failing at release still releases the hold */
    assert_int_equal(vc_layer_acquire(r.cache, r.layer[1], NULL, &p), VC_OK);
    assert_int_equal(vc_fault_fail_always(r.fault, VC_FAULT_EVENT, 1), VC_OK);
    assert_int_equal(vc_layer_release(r.cache, r.layer[1], NULL), VC_OK);
    assert_int_equal(get_stats(r.cache).layers_held, 0);
    /* queries that cannot answer count as "not finished": nothing is freed early, nothing breaks */
    assert_int_equal(vc_layer_offload(r.cache, r.layer[1], VC_OFFLOAD_ALL), VC_OK);
    assert_int_equal(vc_fault_fail_always(r.fault, VC_FAULT_EVENT, 0), VC_OK);
    assert_consistent(&r, 1 * MB, 1 * MB);
    free_rig(&r);
}

static void test_stream_create_and_mem_info_faults(void **state) {
    (void)state;
    vc_backend *host, *fault;
    assert_int_equal(vc_backend_host_create(1 * MB, &host), VC_OK);
    assert_int_equal(vc_backend_fault_create(host, &fault), VC_OK);
    vc_cache_options o;
    vc_cache_options_init(&o);
    o.backend = fault;
    o.ram_budget = 1 * MB;
    o.working_mem = 0;
    vc_cache *c = (vc_cache *)0x1;
    assert_int_equal(vc_fault_fail_nth(fault, VC_FAULT_STREAM_CREATE, 2), VC_OK); /* the second stream */
    assert_int_equal(vc_cache_create(&o, &c), VC_ERR_BACKEND);
    assert_null(c);
    assert_non_null(strstr(vc_last_error(), "copy streams"));
    assert_int_equal(vc_cache_create(&o, &c), VC_OK);
    /* without a memory reading the budget is what the cache already holds: nothing new loads */
    static char w[4 * KB];
    vc_layer_id l = add_host_layer(c, add_model(c, "m"), "l", w, sizeof w);
    assert_int_equal(vc_fault_fail_always(fault, VC_FAULT_MEM_INFO, 1), VC_OK);
    void *p;
    assert_int_equal(vc_layer_acquire(c, l, NULL, &p), VC_ERR_OUT_OF_VRAM);
    assert_int_equal(vc_fault_fail_always(fault, VC_FAULT_MEM_INFO, 0), VC_OK);
    assert_int_equal(vc_layer_acquire(c, l, NULL, &p), VC_OK);
    assert_int_equal(vc_layer_release(c, l, NULL), VC_OK);
    assert_int_equal(vc_cache_destroy(c), VC_OK);
    /* bad use of the fault API */
    assert_int_equal(vc_fault_fail_nth(host, VC_FAULT_COPY_H2D, 1), VC_ERR_INVALID_ARG);
    assert_int_equal(vc_fault_fail_nth(fault, (vc_fault_op)99, 1), VC_ERR_INVALID_ARG);
    assert_int_equal(vc_fault_fail_random(fault, VC_FAULT_COPY_H2D, 2.0, 1), VC_ERR_INVALID_ARG);
    assert_int_equal(vc_backend_fault_create(NULL, &fault), VC_ERR_INVALID_ARG);
    vc_backend_destroy(fault);
    vc_backend_destroy(host);
}

static void test_loader_faults_at_random(void **state) {
    (void)state;
    /* Loaders that fail now and then: every failure is VC_ERR_LOADER, the next try works. */
    rig r;
    make_rig(&r, 8, 128 * KB, 96 * KB, 0);
    unsigned seed = 7;
    int failures = 0;
    for (int it = 0; it < 400; it++) {
        seed = seed * 1103515245u + 12345u;
        int i = (int)((seed >> 8) % 8);
        if ((seed >> 20) % 5 == 0) r.loader[i].fail_next = 1;
        void *p;
        int st = vc_layer_acquire(r.cache, r.layer[i], NULL, &p);
        if (st == VC_ERR_LOADER) {
            failures++;
            assert_true(last_error_has(r.cache, "returned -5"));
            continue;
        }
        assert_int_equal(st, VC_OK);
        assert_true(check_pattern(p, 32 * KB, r.loader[i].seed));
        assert_int_equal(vc_layer_release(r.cache, r.layer[i], NULL), VC_OK);
    }
    assert_true(failures > 10);
    assert_consistent(&r, 96 * KB, 128 * KB);
    free_rig(&r);
}

static void test_random_faults_everywhere(void **state) {
    (void)state;
    /* Every operation fails now and then (seeded); a random workload runs through it. Each call
     * either succeeds or returns one of the documented statuses; afterwards the cache is consistent
     * and every layer's weights are intact. */
    for (uint64_t seed = 1; seed <= 6; seed++) {
        rig r;
    make_rig(&r, 8, 160 * KB, 128 * KB, (int)(seed & 1));
        for (int op = 0; op < VC_FAULT_OP_COUNT; op++)
            assert_int_equal(vc_fault_fail_random(r.fault, (vc_fault_op)op, 0.05, seed * 31 + (uint64_t)op), VC_OK);
        unsigned rs = (unsigned)seed;
        for (int it = 0; it < 1500; it++) {
            rs = rs * 1664525u + 1013904223u;
            int i = (int)((rs >> 8) % 8);
            void *p;
            switch ((rs >> 16) % 6) {
            case 0: {
                vc_reservation *res;
                int st = vc_reserve_working_mem(r.cache, 40 * KB, (rs >> 24) & 1 ? VC_RESERVE_BUFFER : 0, &res);
                assert_true(st == VC_OK || st == VC_ERR_OUT_OF_VRAM || st == VC_ERR_BACKEND);
                if (st == VC_OK) assert_int_equal(vc_release_working_mem(r.cache, res), VC_OK);
                break;
            }
            case 1: {
                int st = vc_layer_offload(r.cache, r.layer[i], (rs >> 24) & 1 ? VC_OFFLOAD_ALL : VC_OFFLOAD_VRAM);
                assert_int_equal(st, VC_OK);
                break;
            }
            default: {
                int st = vc_layer_acquire(r.cache, r.layer[i], NULL, &p);
                assert_true(st == VC_OK || st == VC_ERR_OUT_OF_VRAM || st == VC_ERR_NO_MEMORY ||
                            st == VC_ERR_BACKEND || st == VC_ERR_OUT_OF_RAM);
                if (st == VC_OK) {
                    assert_true(check_pattern(p, 32 * KB, r.loader[i].seed));
                    assert_int_equal(vc_layer_release(r.cache, r.layer[i], NULL), VC_OK);
                }
            }
            }
        }
        unsigned long failed = 0, total = 0;
        for (int op = 0; op < VC_FAULT_OP_COUNT; op++) {
            unsigned long f;
            vc_fault_counts(r.fault, (vc_fault_op)op, NULL, &f);
            failed += f;
        }
        total = failed;
        assert_true(total > 20); /* the faults really fired */
        assert_consistent(&r, 128 * KB, 160 * KB);
        for (int i = 0; i < 8; i++) acquire_ok(&r, i); /* and everything works again */
        free_rig(&r);
    }
}

/* A simulated device with real bytes behind a fault wrapper: the simulator counts every host buffer
 * freed while a queued copy still reads it, which a host backend (whose copies are done at once)
 * cannot show. */
static void sim_rig(vc_backend **sim, vc_backend **fault) {
    vc_sim_params sp;
    vc_sim_params_init(&sp);
    sp.device_bytes = 1 * MB;
    sp.h2d_bytes_per_s = sp.d2h_bytes_per_s = 1e9;
    assert_int_equal(vc_backend_sim_create(&sp, sim), VC_OK);
    assert_int_equal(vc_backend_fault_create(*sim, fault), VC_OK);
}

/* Counts the "cannot be waited for" errors, which these tests expect, instead of printing them. */
static void count_unwaitable(void *user, vc_log_level level, const char *msg) {
    if (level == VC_LOG_ERROR && strstr(msg, "cannot be waited for")) ++*(int *)user;
}

static vc_cache *sim_cache(vc_backend *fault, size_t ram_budget, int *unwaitable) {
    vc_cache_options o;
    vc_cache_options_init(&o);
    o.backend = fault;
    o.ram_budget = ram_budget;
    o.working_mem = 0;
    o.arena_segment_bytes = 64 * KB;
    o.log_fn = count_unwaitable;
    o.log_user = unwaitable;
    vc_cache *c;
    assert_int_equal(vc_cache_create(&o, &c), VC_OK);
    return c;
}

static void assert_no_hazard(vc_backend *sim) {
    char msg[384];
    if (vc_sim_hazards(sim, msg, sizeof msg)) fail_msg("%s", msg);
}

/* Destroys the cache (its teardown too must free nothing under a copy), then the backends. */
static void sim_teardown(vc_cache *c, vc_backend *fault, vc_backend *sim) {
    assert_no_hazard(sim);
    assert_int_equal(vc_cache_destroy(c), VC_OK);
    assert_no_hazard(sim);
    vc_backend_destroy(fault);
    vc_backend_destroy(sim);
}

static void test_unsettled_upload_keeps_its_ram_copy(void **state) {
    (void)state;
    /* An upload's copy is queued, then every event call fails: the copy cannot be waited for, so
     * the RAM copy it reads must outlive it, whatever asks for that RAM next. */
    for (int how = 0; how < 3; how++) {
        vc_backend *sim, *fault;
        sim_rig(&sim, &fault);
        int unwaitable = 0;
        vc_cache *c = sim_cache(fault, how == 2 ? 32 * KB : 1 * MB, &unwaitable);
        test_loader ld[2] = {{.seed = 5}, {.seed = 6}};
        vc_model_id m = add_model(c, "m");
        vc_layer_id a = add_loader_layer(c, m, "a", 32 * KB, &ld[0]);
        vc_layer_id b = add_loader_layer(c, m, "b", 32 * KB, &ld[1]);
        assert_int_equal(vc_fault_fail_always(fault, VC_FAULT_EVENT, 1), VC_OK);
        void *p;
        assert_int_equal(vc_layer_acquire(c, a, NULL, &p), VC_ERR_BACKEND);
        assert_int_equal(residency(c, a), VC_RES_RAM);
        assert_true(unwaitable > 0);
        int st;
        if (how == 0) /* the engine drops it */
            assert_int_equal(vc_layer_offload(c, a, VC_OFFLOAD_ALL), VC_OK);
        else if (how == 1) /* the engine unregisters it */
            assert_int_equal(vc_layer_unregister(c, a), VC_OK);
        else /* the RAM pool (32 KB) needs the room for b */
            assert_true((st = vc_layer_acquire(c, b, NULL, &p)) == VC_ERR_OUT_OF_RAM || st == VC_ERR_BACKEND);
        assert_no_hazard(sim);
        assert_int_equal(get_stats(c).ram_bytes, 32 * KB); /* kept and counted */
        /* once the device answers again everything works and the kept copy goes */
        assert_int_equal(vc_fault_fail_always(fault, VC_FAULT_EVENT, 0), VC_OK);
        assert_int_equal(vc_layer_acquire(c, b, NULL, &p), VC_OK);
        assert_int_equal(vc_layer_release(c, b, NULL), VC_OK);
        if (how != 1) {
            assert_int_equal(vc_layer_acquire(c, a, NULL, &p), VC_OK);
            assert_int_equal(vc_layer_release(c, a, NULL), VC_OK);
            unsigned char buf[32 * KB];
            assert_int_equal(vc_layer_read(c, a, buf, sizeof buf), VC_OK);
            assert_true(check_pattern(buf, sizeof buf, 5));
        }
        sim_teardown(c, fault, sim);
    }
}

static void test_unsettled_shared_upload_keeps_the_owners_copy(void **state) {
    (void)state;
    /* The same for a layer shared from another cache: the owner's RAM copy stays pinned while the
     * sharer's copy from it cannot be waited for. */
    for (int how = 0; how < 2; how++) {
        vc_backend *sim, *fault;
        sim_rig(&sim, &fault);
        int unwaitable = 0;
        vc_cache *owner = sim_cache(fault, 1 * MB, &unwaitable), *sharer = sim_cache(fault, 1 * MB, &unwaitable);
        test_loader ld[2] = {{.seed = 7}, {.seed = 8}};
        vc_model_id om = add_model(owner, "m");
        vc_layer_id src = add_loader_layer(owner, om, "a", 32 * KB, &ld[0]);
        vc_layer_id other = add_loader_layer(owner, om, "b", 32 * KB, &ld[1]);
        vc_model_id sm = add_model(sharer, "m");
        vc_layer_id x, y;
        assert_int_equal(vc_layer_register_shared(sharer, sm, owner, src, &x), VC_OK);
        assert_int_equal(vc_layer_register_shared(sharer, sm, owner, other, &y), VC_OK);
        assert_int_equal(vc_fault_fail_always(fault, VC_FAULT_EVENT, 1), VC_OK);
        void *p;
        assert_int_equal(vc_layer_acquire(sharer, x, NULL, &p), VC_ERR_BACKEND);
        assert_true(unwaitable > 0);
        if (how == 1) { /* the sharer lets go of the layer: the pin outlives it, and so does the owner */
            assert_int_equal(vc_layer_unregister(sharer, x), VC_OK);
            assert_int_equal(vc_cache_destroy(owner), VC_ERR_BUSY);
            assert_true(last_error_has(owner, "could not be waited for yet"));
        }
        /* the owner cannot free the copy under the sharer's copy */
        assert_int_equal(vc_layer_offload(owner, src, VC_OFFLOAD_ALL), VC_OK);
        assert_int_equal(residency(owner, src), VC_RES_RAM);
        assert_int_equal(vc_layer_unregister(owner, src), VC_ERR_BUSY);
        assert_no_hazard(sim);
        /* the device answers again: the sharer's next call lets go of the pin */
        assert_int_equal(vc_fault_fail_always(fault, VC_FAULT_EVENT, 0), VC_OK);
        assert_int_equal(vc_layer_acquire(sharer, y, NULL, &p), VC_OK);
        assert_int_equal(vc_layer_release(sharer, y, NULL), VC_OK);
        assert_int_equal(vc_layer_offload(owner, src, VC_OFFLOAD_ALL), VC_OK);
        assert_int_equal(residency(owner, src), VC_RES_NONE);
        if (how == 0) {
            assert_int_equal(vc_layer_acquire(sharer, x, NULL, &p), VC_OK);
            assert_int_equal(vc_layer_release(sharer, x, NULL), VC_OK);
        }
        assert_int_equal(vc_cache_destroy(sharer), VC_OK);
        sim_teardown(owner, fault, sim);
    }
}

/* A backend over the fault wrapper whose next device-to-host copy, once armed, starts an event
 * outage as soon as it is queued: the copy runs, and nothing can tell when it ends. */
static vc_backend *outage_fault;
static const vc_backend_ops *outage_inner;
static int outage_armed;

static int copy_d2h_then_outage(void *ctx, void *dst, const void *src, size_t bytes, vc_stream stream) {
    int st = outage_inner->copy_d2h(ctx, dst, src, bytes, stream);
    if (st == VC_OK && outage_armed) {
        outage_armed = 0;
        assert_int_equal(vc_fault_fail_always(outage_fault, VC_FAULT_EVENT, 1), VC_OK);
    }
    return st;
}

/* The simulated device under the outage backend, and a cache on it with keep_ram_copy off (the
 * device holds a layer's only copy, and leaving VRAM copies it back) and a VRAM budget of
 * `vram_budget`, holding layer a (seed 9) resident and b (seed 10) unloaded. */
typedef struct outage_rig {
    vc_backend *sim, *fault, *outage;
    vc_cache *c;
    test_loader ld[2];
    vc_layer_id a, b;
    int unwaitable;
} outage_rig;

static void make_outage_rig(outage_rig *r, size_t vram_budget) {
    memset(r, 0, sizeof *r);
    sim_rig(&r->sim, &r->fault);
    outage_fault = r->fault;
    outage_inner = vc_backend_get_ops(r->fault);
    static vc_backend_ops ops; /* borrowed by the backend for its lifetime */
    ops = *outage_inner;
    ops.name = "outage";
    ops.copy_d2h = copy_d2h_then_outage;
    ops.destroy = NULL; /* the fault wrapper is destroyed on its own */
    assert_int_equal(vc_backend_create(&ops, vc_backend_get_ctx(r->fault), &r->outage), VC_OK);
    vc_cache_options o;
    vc_cache_options_init(&o);
    o.backend = r->outage;
    o.ram_budget = 1 * MB;
    o.vram_budget = vram_budget;
    o.working_mem = 0;
    o.arena_segment_bytes = 32 * KB;
    o.keep_ram_copy = 0;
    o.log_fn = count_unwaitable;
    o.log_user = &r->unwaitable;
    assert_int_equal(vc_cache_create(&o, &r->c), VC_OK);
    r->ld[0] = (test_loader){.seed = 9};
    r->ld[1] = (test_loader){.seed = 10};
    vc_model_id m = add_model(r->c, "m");
    r->a = add_loader_layer(r->c, m, "a", 32 * KB, &r->ld[0]);
    r->b = add_loader_layer(r->c, m, "b", 32 * KB, &r->ld[1]);
    void *p;
    assert_int_equal(vc_layer_acquire(r->c, r->a, NULL, &p), VC_OK);
    assert_int_equal(vc_layer_release(r->c, r->a, NULL), VC_OK);
    assert_int_equal(residency(r->c, r->a), VC_RES_VRAM); /* its only copy */
    outage_armed = 1; /* the next write-back cannot be waited for */
}

static void test_unsettled_writeback_keeps_its_device_range(void **state) {
    (void)state;
    /* When a write-back cannot be waited for, its device range must not take another layer: an
     * upload into it would overwrite bytes the copy has not read yet. */
    outage_rig r;
    make_outage_rig(&r, 32 * KB); /* room for one layer */
    vc_cache *c = r.c;
    vc_backend *sim = r.sim, *fault = r.fault;
    vc_layer_id a = r.a, b = r.b;
    void *p;
    assert_int_equal(vc_layer_offload(c, a, VC_OFFLOAD_VRAM), VC_OK);
    assert_int_equal(outage_armed, 0);
    assert_true(r.unwaitable > 0);
    assert_int_equal(residency(c, a), VC_RES_NONE); /* its loader produces it again */
    vc_stats s = get_stats(c);
    assert_int_equal(s.layers_in_vram, 0);
    assert_int_equal(s.vram_bytes, 32 * KB); /* the range stays taken, and counted */
    assert_int_equal(vc_layer_acquire(c, b, NULL, &p), VC_ERR_OUT_OF_VRAM); /* and is not reused */
    assert_no_hazard(sim);
    assert_int_equal(vc_fault_fail_always(fault, VC_FAULT_EVENT, 0), VC_OK);
    assert_int_equal(vc_layer_acquire(c, b, NULL, &p), VC_OK); /* the device answers: the range is free */
    assert_int_equal(vc_layer_release(c, b, NULL), VC_OK);
    unsigned char buf[32 * KB];
    assert_int_equal(vc_layer_read(c, b, buf, sizeof buf), VC_OK); /* from the device: its only copy */
    assert_true(check_pattern(buf, sizeof buf, 10));
    assert_int_equal(vc_layer_acquire(c, a, NULL, &p), VC_OK);
    assert_int_equal(vc_layer_release(c, a, NULL), VC_OK);
    assert_int_equal(vc_cache_clear(c), VC_OK);
    assert_int_equal(get_stats(c).arena_bytes, 0);
    sim_teardown(c, fault, sim);
    vc_backend_destroy(r.outage); /* a table over the fault wrapper's context: nothing of its own */
}

static void test_reservation_beside_an_unsettled_writeback(void **state) {
    (void)state;
    /* A reservation that needs layer a's segment evicts a, and a's write-back cannot be waited
     * for: the segment must stay (its range quarantined) and the reservation fail, rather than the
     * segment go back with a range still counted in it, or the reservation overrun the device. */
    outage_rig r;
    make_outage_rig(&r, VC_SIZE_AUTO);
    vc_reservation *res = NULL;
    size_t fr = 0, total = 0;
    assert_int_equal(vc_backend_mem_info(r.sim, &fr, &total), VC_OK);
    assert_int_equal(vc_reserve_working_mem(r.c, fr + 16 * KB, 0, &res), VC_ERR_BACKEND);
    assert_null(res);
    assert_int_equal(outage_armed, 0); /* a was written back */
    assert_true(last_error_has(r.c, "cannot be given back yet"));
    vc_stats s = get_stats(r.c);
    assert_int_equal(s.reserved_bytes, 0);
    assert_int_equal(s.arena_bytes, 32 * KB); /* the segment stays, holding the range */
    assert_int_equal(s.vram_bytes, 32 * KB);
    assert_int_equal(s.layers_in_vram, 0);
    assert_no_hazard(r.sim);
    /* the device answers again: the reservation goes through, and a loads afterwards */
    assert_int_equal(vc_fault_fail_always(r.fault, VC_FAULT_EVENT, 0), VC_OK);
    assert_int_equal(vc_reserve_working_mem(r.c, fr + 16 * KB, 0, &res), VC_OK);
    assert_int_equal(get_stats(r.c).arena_bytes, 0);
    assert_int_equal(vc_release_working_mem(r.c, res), VC_OK);
    unsigned char buf[32 * KB];
    assert_int_equal(vc_layer_read(r.c, r.a, buf, sizeof buf), VC_OK);
    assert_true(check_pattern(buf, sizeof buf, 9));
    sim_teardown(r.c, r.fault, r.sim);
    vc_backend_destroy(r.outage);
}

static void test_loader_fault_wrapper(void **state) {
    (void)state;
    /* The wrapper fails the n-th loader call or calls at random, like the backend operations. */
    vc_backend *host, *fault;
    assert_int_equal(vc_backend_host_create(1 * MB, &host), VC_OK);
    assert_int_equal(vc_backend_fault_create(host, &fault), VC_OK);
    vc_cache_options o;
    vc_cache_options_init(&o);
    o.backend = fault;
    o.ram_budget = 64 * KB;
    o.working_mem = 0;
    vc_cache *c;
    assert_int_equal(vc_cache_create(&o, &c), VC_OK);
    vc_model_id m = add_model(c, "m");
    test_loader inner[4];
    vc_fault_loader_ctx lc[4];
    vc_layer_id l[4];
    for (int i = 0; i < 4; i++) {
        inner[i] = (test_loader){.seed = (uint64_t)i + 9};
        lc[i] = (vc_fault_loader_ctx){fault, test_loader_fn, &inner[i]};
        vc_layer_desc d = {.name = "l", .bytes = 32 * KB, .loader = vc_fault_loader, .loader_user = &lc[i]};
        assert_int_equal(vc_layer_register(c, m, &d, &l[i]), VC_OK);
    }
    void *p;
    assert_int_equal(vc_fault_fail_nth(fault, VC_FAULT_LOADER, 2), VC_OK);
    assert_int_equal(vc_layer_acquire(c, l[0], NULL, &p), VC_OK);
    vc_layer_release(c, l[0], NULL);
    assert_int_equal(vc_layer_acquire(c, l[1], NULL, &p), VC_ERR_LOADER); /* the second call */
    assert_int_equal(vc_layer_acquire(c, l[1], NULL, &p), VC_OK);
    assert_true(check_pattern(p, 32 * KB, 10));
    vc_layer_release(c, l[1], NULL);
    assert_int_equal(vc_fault_fail_random(fault, VC_FAULT_LOADER, 0.3, 42), VC_OK);
    int failed = 0;
    for (int it = 0; it < 200; it++) {
        int i = it % 4;
        int st = vc_layer_acquire(c, l[i], NULL, &p);
        if (st == VC_ERR_LOADER) {
            failed++;
            continue;
        }
        assert_int_equal(st, VC_OK);
        assert_true(check_pattern(p, 32 * KB, inner[i].seed));
        vc_layer_release(c, l[i], NULL);
        assert_int_equal(vc_layer_offload(c, l[i], VC_OFFLOAD_ALL), VC_OK); /* the next use reloads */
    }
    assert_true(failed > 5);
    unsigned long calls, fired;
    vc_fault_counts(fault, VC_FAULT_LOADER, &calls, &fired);
    assert_int_equal(fired, (unsigned long)failed + 1);
    assert_int_equal(vc_cache_destroy(c), VC_OK);
    vc_backend_destroy(fault);
    vc_backend_destroy(host);
}

/* The capacity cap: a large device seen as a small one, other processes' usage, and its errors. */
static void test_device_capacity_cap(void **state) {
    (void)state;
    vc_backend *host, *f;
    assert_int_equal(vc_backend_host_create(4 * MB, &host), VC_OK);
    assert_int_equal(vc_backend_fault_create(host, &f), VC_OK);
    assert_int_equal(vc_fault_set_device_capacity(host, 1 * MB, 0), VC_ERR_INVALID_ARG); /* not a wrapper */
    assert_int_equal(vc_fault_set_device_capacity(f, 256 * KB, 0), VC_OK);
    size_t fr = 0, total = 0;
    assert_int_equal(vc_backend_mem_info(f, &fr, &total), VC_OK);
    assert_int_equal(total, 256 * KB);
    assert_int_equal(fr, 256 * KB);
    const vc_backend_ops *ops = vc_backend_get_ops(f);
    void *ctx = vc_backend_get_ctx(f), *a = NULL, *b = NULL;
    assert_int_equal(ops->device_alloc(ctx, 200 * KB, &a), VC_OK);
    assert_int_equal(ops->device_alloc(ctx, 100 * KB, &b), VC_ERR_OUT_OF_VRAM); /* the real device has room */
    assert_int_equal(vc_backend_mem_info(f, &fr, NULL), VC_OK);
    assert_int_equal(fr, 56 * KB);
    /* other processes take 40 KB of what is left */
    assert_int_equal(vc_fault_set_device_capacity(f, 256 * KB, 40 * KB), VC_OK);
    assert_int_equal(vc_backend_mem_info(f, &fr, NULL), VC_OK);
    assert_int_equal(fr, 16 * KB);
    ops->device_free(ctx, a);
    assert_int_equal(vc_backend_mem_info(f, &fr, NULL), VC_OK);
    assert_int_equal(fr, 216 * KB);
    /* a cache over the capped device keeps to the cap with a dynamic budget */
    vc_cache_options o;
    vc_cache_options_init(&o);
    o.backend = f;
    o.ram_budget = 1 * MB;
    o.working_mem = 0;
    o.arena_segment_bytes = 32 * KB;
    vc_cache *c;
    assert_int_equal(vc_cache_create(&o, &c), VC_OK);
    vc_model_id m = add_model(c, "m");
    test_loader ld[10];
    vc_layer_id l[10];
    for (int i = 0; i < 10; i++) {
        ld[i] = (test_loader){.seed = (uint64_t)i};
        l[i] = add_loader_layer(c, m, "l", 32 * KB, &ld[i]);
    }
    for (int r = 0; r < 2; r++)
        for (int i = 0; i < 10; i++) {
            void *p;
            assert_int_equal(vc_layer_acquire(c, l[i], NULL, &p), VC_OK);
            assert_true(check_pattern(p, 32 * KB, ld[i].seed));
            assert_int_equal(vc_layer_release(c, l[i], NULL), VC_OK);
        }
    assert_true(get_stats(c).arena_peak_bytes <= 216 * KB);
    assert_int_equal(vc_cache_destroy(c), VC_OK);
    vc_backend_destroy(f);
    /* a cap cannot start after memory was taken without one: those bytes would go uncounted */
    assert_int_equal(vc_backend_fault_create(host, &f), VC_OK);
    ops = vc_backend_get_ops(f); /* the first wrapper's table went with it */
    ctx = vc_backend_get_ctx(f);
    assert_int_equal(ops->device_alloc(ctx, 8 * KB, &a), VC_OK);
    assert_int_equal(vc_fault_set_device_capacity(f, 256 * KB, 0), VC_ERR_BUSY);
    assert_int_equal(vc_fault_set_device_capacity(f, 0, 0), VC_OK); /* no cap: changes nothing */
    ops->device_free(ctx, a);
    vc_backend_destroy(f);
    vc_backend_destroy(host);
}

/* A backend whose device memory is 16 bytes off the 256-byte grain (a third-party allocator that
 * only promises malloc's alignment). Before the cache checked, acquire grew a segment a few bytes
 * too short for the layer, gave it back and grew another, forever; now it is a clear error. */
static const vc_backend_ops *offset_inner; /* the host backend's table; its context is ours */

static int offset_alloc(void *ctx, size_t bytes, void **p) {
    void *base = NULL;
    int st = offset_inner->device_alloc(ctx, bytes + 16, &base);
    if (st == VC_OK) *p = (char *)base + 16;
    return st;
}

static void offset_free(void *ctx, void *p) { offset_inner->device_free(ctx, (char *)p - 16); }

static void test_misaligned_device_memory_is_refused(void **state) {
    (void)state;
    vc_backend *host, *odd;
    assert_int_equal(vc_backend_host_create(1 * MB, &host), VC_OK);
    offset_inner = vc_backend_get_ops(host);
    vc_backend_ops ops = *offset_inner;
    ops.name = "offset";
    ops.device_alloc = offset_alloc;
    ops.device_free = offset_free;
    ops.destroy = NULL; /* the host backend is destroyed on its own */
    assert_int_equal(vc_backend_create(&ops, vc_backend_get_ctx(host), &odd), VC_OK);
    vc_cache_options o;
    vc_cache_options_init(&o);
    o.backend = odd;
    o.ram_budget = 1 * MB;
    o.working_mem = 0;
    o.arena_segment_bytes = 32 * KB;
    vc_cache *c;
    assert_int_equal(vc_cache_create(&o, &c), VC_OK);
    test_loader ld = {.seed = 3};
    vc_layer_id l = add_loader_layer(c, add_model(c, "m"), "l", 32 * KB, &ld);
    void *p = (void *)0x1;
    assert_int_equal(vc_layer_acquire(c, l, NULL, &p), VC_ERR_OUT_OF_VRAM);
    assert_ptr_equal(p, (void *)0x1);
    assert_true(last_error_has(c, "backend 'offset' returned device memory at"));
    assert_true(last_error_has(c, "not aligned to 256 bytes"));
    vc_stats s = get_stats(c);
    assert_int_equal(s.arena_bytes, 0); /* the refused segment went back */
    assert_int_equal(s.layers_in_vram, 0);
    unsigned char buf[32 * KB];
    assert_int_equal(vc_layer_read(c, l, buf, sizeof buf), VC_OK); /* the weights are intact in RAM */
    assert_true(check_pattern(buf, sizeof buf, 3));
    assert_int_equal(vc_cache_destroy(c), VC_OK);
    vc_backend_destroy(odd);
    size_t fr = 0, total = 0;
    assert_int_equal(vc_backend_mem_info(host, &fr, &total), VC_OK);
    assert_int_equal(fr, total); /* every refused segment was freed */
    vc_backend_destroy(host);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_device_alloc_fails_then_retry),
        cmocka_unit_test(test_device_oom_evicts_and_retries),
        cmocka_unit_test(test_host_alloc_fails),
        cmocka_unit_test(test_upload_copy_fails),
        cmocka_unit_test(test_writeback_copy_fails),
        cmocka_unit_test(test_event_faults),
        cmocka_unit_test(test_stream_create_and_mem_info_faults),
        cmocka_unit_test(test_loader_faults_at_random),
        cmocka_unit_test(test_random_faults_everywhere),
        cmocka_unit_test(test_unsettled_upload_keeps_its_ram_copy),
        cmocka_unit_test(test_unsettled_shared_upload_keeps_the_owners_copy),
        cmocka_unit_test(test_unsettled_writeback_keeps_its_device_range),
        cmocka_unit_test(test_reservation_beside_an_unsettled_writeback),
        cmocka_unit_test(test_loader_fault_wrapper),
        cmocka_unit_test(test_device_capacity_cap),
        cmocka_unit_test(test_misaligned_device_memory_is_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
