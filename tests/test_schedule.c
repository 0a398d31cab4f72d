/* The order-aware scheduler on the simulated device (src/schedule.c): order learning, declaring and
 * change detection, prefetch without stalls, eviction that never takes a held or in-flight layer, the
 * offload modes' memory promises, staging ahead of the loaders, and the copies' ordering hazards.
 * Plans and their layout are tested in test_plan.c, step groups in test_step_group.c, the
 * stream-slots tuner in test_slot_tuner.c; sched_world.h is what they share. */
#include <pthread.h>
#include <time.h>

#include "sched_world.h"

/* A model that runs pass after pass alone uses only its own layers: from its second pass in a row
 * (or from its first, when it ran in a run last time too) the model that ran before it is not in
 * use, and its layers make the room, so the runner's own stay. Before, the other model counted as
 * in use for two passes' worth of acquires, and its layers, due early in its own order, were kept
 * while the runner evicted and reloaded its own (SDXL's base UNet after its refiner: 3.9 and 2.3 GB
 * reloaded in its second and third passes). The runs are longer than a cycle may be (64 passes),
 * so this is the models planned apart, as any pipeline too long to join. */
static void test_model_running_alone_keeps_its_layers(void **state) {
    (void)state;
    plan_log log = {0};
    vc_model_id a, b;
    sim_world w = two_model_world(&log, &a, &b);
    for (int image = 0; image < 3; image++) {
        model_pass(&w, 10); /* b once */
        for (int p = 0; p < 70; p++) {
            uint64_t moved = model_pass(&w, 0);
            if (p >= 1 && image >= 1) assert_int_equal(moved, 0); /* it ran in a run before */
            if (p >= 2) assert_int_equal(moved, 0);
        }
    }
    assert_int_equal(log.joined, 0);
    free_world(&w);
}

static void test_order_learned_and_prefetch_does_not_stall(void **state) {
    (void)state;
    /* 8 layers of 64 KB, room for 4; a copy takes ~0.66 ms, a layer computes 2 ms. */
    sim_world w = make_world(8, 64 * KB, 4 * 64 * KB, 100e6, 10e-6, VC_OFFLOAD_MODE_BALANCED, VC_POLICY_PLANNED);
    pass(&w, 2 * MS);
    int known = 0, declared = 1;
    size_t len = 0;
    pass(&w, 2 * MS); /* the first layer coming round again completes the pass */
    assert_int_equal(vc_model_get_order(w.cache, w.model, &known, &declared, &len), VC_OK);
    assert_int_equal(known, 1);
    assert_int_equal(declared, 0);
    assert_int_equal(len, 8);
    vc_stats s0 = get_stats(w.cache);
    assert_int_equal(s0.orders_learned, 1);
    pass(&w, 2 * MS);
    double stall = pass(&w, 2 * MS);
    vc_stats s1 = get_stats(w.cache);
    assert_true(stall < 1e-9);              /* every layer's weights were there in time */
    assert_true(s1.prefetches > s0.prefetches);
    assert_true(s1.prefetch_hits > s0.prefetch_hits);
    assert_int_equal(s1.misses, s0.misses + 0); /* steady state: all streamed layers prefetched */
    free_world(&w);
}

/* One pass through w's layers in the order `seq` (n uses; a layer may come more than once), each
 * use read by a kernel of `compute` seconds; returns the bytes moved host to device. */
static uint64_t seq_pass(sim_world *w, const int *seq, int n, double compute) {
    uint64_t before = get_stats(w->cache).bytes_h2d;
    for (int k = 0; k < n; k++) {
        int i = seq[k];
        void *p;
        assert_int_equal(vc_layer_acquire(w->cache, w->layer[i], w->stream, &p), VC_OK);
        assert_true(check_pattern(p, w->bytes[i], (uint64_t)i + 1));
        double s;
        kernel(w->sim, w->stream, compute, p, w->bytes[i], &s, NULL);
        assert_int_equal(vc_layer_release(w->cache, w->layer[i], w->stream), VC_OK);
        vc_sim_wait_until(w->sim, s);
    }
    vc_sim_stream_synchronize(w->sim, w->stream);
    return get_stats(w->cache).bytes_h2d - before;
}

/* A pass that uses a layer more than once (a module shared by two blocks, a block run in a loop, an
 * engine acquiring each layer twice) is learned with every use, and planned as a pass without
 * repeats would be: a learned order that had to hold each layer once was learned, dropped at the
 * repeat and learned again every pass, each time laid out afresh (as many bytes as LRU). 12 layers of
 * 64 KB on room for 6; the bytes per pass in the steady state against the same pass without the
 * repeats. */
static void test_layers_used_twice_in_a_pass(void **state) {
    (void)state;
    enum { N = 12, PASSES = 12 };
    int plain[N], shared[N + 1], twice[2 * N], loop[N - 1], recur[N + 8], deep[N + 27];
    int n_shared = 0, n_twice = 0, n_recur = 0, n_deep = 0;
    for (int i = 0; i < N; i++) {
        plain[i] = i;
        shared[n_shared++] = i;
        if (i == 8) shared[n_shared++] = 3; /* layer 3 again after layer 8 */
        twice[n_twice++] = i;
        twice[n_twice++] = i;
        if (i) loop[i - 1] = i; /* layer 0 runs once, before the first pass */
    }
    recur[n_recur++] = 0; /* layers 1-3 run three times in a row, then the rest */
    for (int r = 0; r < 3; r++)
        for (int i = 1; i <= 3; i++) recur[n_recur++] = i;
    for (int i = 4; i < N; i++) recur[n_recur++] = i;
    deep[n_deep++] = 0; /* layers 1-3 ten times: more repeats than the model has layers */
    for (int r = 0; r < 10; r++)
        for (int i = 1; i <= 3; i++) deep[n_deep++] = i;
    for (int i = 4; i < N; i++) deep[n_deep++] = i;
    const struct {
        const int *seq;
        int n, first_once, max_learned;
    } cases[] = {{shared, n_shared, 0, 1}, {twice, n_twice, 0, 1}, {loop, N - 1, 1, 1}, {recur, n_recur, 0, 1},
                 {deep, n_deep, 0, 4}}; /* (deep: three loops guessed, each outgrown) */
    sim_world w = make_world(N, 64 * KB, 6 * 64 * KB, 1e9, 1e-6, VC_OFFLOAD_MODE_BALANCED, VC_POLICY_PLANNED);
    uint64_t plain_bytes = 0;
    for (int p = 0; p < PASSES; p++) plain_bytes = seq_pass(&w, plain, N, 1 * MS);
    assert_true(plain_bytes < (uint64_t)N * 64 * KB); /* the plan keeps some */
    free_world(&w);
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        w = make_world(N, 64 * KB, 6 * 64 * KB, 1e9, 1e-6, VC_OFFLOAD_MODE_BALANCED, VC_POLICY_PLANNED);
        if (cases[c].first_once) seq_pass(&w, plain, 1, 1 * MS);
        uint64_t bytes = 0;
        for (int p = 0; p < PASSES; p++) bytes = seq_pass(&w, cases[c].seq, cases[c].n, 1 * MS);
        vc_stats s = get_stats(w.cache);
        int known = 0;
        size_t len = 0;
        assert_int_equal(vc_model_get_order(w.cache, w.model, &known, NULL, &len), VC_OK);
        assert_int_equal(known, 1);
        assert_int_equal(len, (size_t)cases[c].n); /* every use */
        assert_true(s.orders_learned >= 1 && s.orders_learned <= (uint64_t)cases[c].max_learned);
        assert_int_equal(s.order_resets, s.orders_learned - 1);
        /* the pass without layer 0 needs less; the others at most one more layer than plain */
        assert_true(bytes <= plain_bytes + 64 * KB);
        free_world(&w);
    }
}

/* An engine may declare a model's order at every generation: the order it already runs by (learned
 * or declared) changes nothing but becoming declared (no new plan, no layout: the kept layers stay
 * and every pass moves what it moved before); another order is planned and laid out anew. */
static void test_declaring_the_same_order_again_changes_nothing(void **state) {
    (void)state;
    sim_world w = make_world(12, 64 * KB, 8 * 64 * KB, 1e9, 10e-6, VC_OFFLOAD_MODE_BALANCED, VC_POLICY_PLANNED);
    pass_bytes(&w, 3, 20e-6, NULL); /* learned, planned, laid out */
    double before = pass_bytes(&w, 2, 20e-6, NULL);
    vc_stats a = get_stats(w.cache);
    for (int k = 0; k < 2; k++) { /* learned -> declared, then declared -> declared */
        assert_int_equal(vc_model_set_order(w.cache, w.model, w.layer, 12), VC_OK);
        int known = 0, declared = 0;
        size_t n = 0;
        assert_int_equal(vc_model_get_order(w.cache, w.model, &known, &declared, &n), VC_OK);
        assert_true(known && declared && n == 12);
        assert_true(pass_bytes(&w, 2, 20e-6, NULL) == before);
    }
    vc_stats b = get_stats(w.cache);
    assert_int_equal(b.vram_evictions[VC_EVICT_PLAN], a.vram_evictions[VC_EVICT_PLAN]);
    assert_int_equal(b.order_resets, a.order_resets);
    /* another order (the first two layers swapped) is installed: the device is laid out for it */
    vc_layer_id swapped[12];
    memcpy(swapped, w.layer, sizeof swapped);
    swapped[0] = w.layer[1];
    swapped[1] = w.layer[0];
    assert_int_equal(vc_model_set_order(w.cache, w.model, swapped, 12), VC_OK);
    pass_bytes(&w, 1, 20e-6, NULL);
    assert_true(get_stats(w.cache).vram_evictions[VC_EVICT_PLAN] > b.vram_evictions[VC_EVICT_PLAN]);
    free_world(&w);
}

/* One run for the hazard check: n layers of the given sizes and alignments on a device of
 * `device` bytes, each computing `compute` seconds, for `passes` passes. Checks every layer's bytes
 * at every acquire, and that no copy's interval overlaps a compute on the bytes it writes (a
 * compute that started before the copy ended before it began; one that starts after waited for
 * it). Returns how many copies were of part of a layer (fenced copies); the cache splits them into
 * parts of at least part_min bytes (copy_part_min_bytes), and *small (may be NULL) counts those under
 * small_below that do not end a layer's bytes. */
static size_t hazard_run_parts(int n, const size_t *sizes, const size_t *aligns, size_t device, double compute,
                               int passes, size_t part_min, size_t small_below, size_t *small) {
    char **weights = calloc((size_t)n, sizeof *weights);
    for (int i = 0; i < n; i++) {
        weights[i] = malloc(sizes[i]);
        fill_pattern(weights[i], sizes[i], (uint64_t)i + 1);
    }
    hazard_world w = hazard_open_parts(device, part_min);
    vc_cache *c = w.c;
    vc_stream stream = w.stream;
    vc_backend *sim = w.sim;
    vc_model_id m = add_model(c, "denoiser");
    vc_layer_id *ids = calloc((size_t)n, sizeof *ids);
    for (int i = 0; i < n; i++) {
        vc_layer_desc d = {.name = "layer", .bytes = sizes[i], .host_ptr = weights[i], .alignment = aligns[i]};
        assert_int_equal(vc_layer_register(c, m, &d, &ids[i]), VC_OK);
    }
    hz_use *uses = calloc((size_t)(n * passes), sizeof *uses);
    size_t nu = 0;
    for (int pass_i = 0; pass_i < passes; pass_i++)
        for (int i = 0; i < n; i++) {
            void *d;
            assert_int_equal(vc_layer_acquire(c, ids[i], stream, &d), VC_OK);
            assert_true(check_pattern(d, sizes[i], (uint64_t)i + 1));
            assert_int_equal((uintptr_t)d % aligns[i], 0);
            double s, e;
            kernel(sim, stream, compute, d, sizes[i], &s, &e);
            uses[nu++] = (hz_use){(uintptr_t)d, sizes[i], s, e};
            assert_int_equal(vc_layer_release(c, ids[i], stream), VC_OK);
            vc_sim_wait_until(sim, s);
        }
    vc_sim_stream_synchronize(sim, stream);
    hazard_check(&w, uses, nu);
    size_t partial = 0; /* copies of part of a layer: the fences were used */
    if (small) *small = 0;
    for (size_t k = 0; k < w.h->n; k++) {
        const hz_copy *cp = &w.h->log[k];
        int whole = 0;
        for (int i = 0; i < n; i++) whole |= cp->bytes == sizes[i];
        partial += !whole;
        if (whole || !small || cp->bytes >= small_below) continue;
        int tail = 0; /* the last part of the layer next used at this address */
        for (size_t u = 0; u < nu && !tail; u++)
            tail = uses[u].start >= cp->end && uses[u].ptr <= cp->dst && cp->dst < uses[u].ptr + uses[u].bytes &&
                   cp->dst + cp->bytes == uses[u].ptr + uses[u].bytes;
        *small += !tail;
    }
    hazard_close(&w);
    for (int i = 0; i < n; i++) free(weights[i]);
    free(weights);
    free(ids);
    free(uses);
    return partial;
}

static size_t hazard_run(int n, const size_t *sizes, const size_t *aligns, size_t device, double compute, int passes) {
    return hazard_run_parts(n, sizes, aligns, device, compute, passes, 0, 0, NULL);
}

enum { MIXED_N = 48 };

/* The mixed model of the two tests below: every sixth layer 48-60 KB, the others 3-9 KB. Returns
 * the model's bytes. */
static size_t mixed_ring_model(size_t *sizes, size_t *aligns) {
    size_t total = 0;
    for (int i = 0; i < MIXED_N; i++) {
        sizes[i] = i % 6 == 5 ? 48 * KB + (size_t)(i % 4) * 4 * KB : 3 * KB + (size_t)((i * 7) % 23) * 256;
        aligns[i] = 256;
        total += sizes[i];
    }
    return total;
}

/* Mixed sizes streamed through a small ring with compute shorter than the copies, so copies into
 * the ring start while the layers they replace still compute: the fenced, part-by-part copies of
 * ring placements must still never overwrite a layer in use. */
static void test_copies_never_overwrite_layers_in_use(void **state) {
    (void)state;
    enum { N = MIXED_N };
    size_t sizes[N], aligns[N], total = mixed_ring_model(sizes, aligns);
    assert_true(hazard_run(N, sizes, aligns, total * 3 / 4, 4e-6, 10) > 0); /* a 48 KB copy takes 49 us */
}

/* A fenced copy's part smaller than copy_part_min_bytes waits for the next occupant and goes with
 * the next part, rather than pay a copy of its own: on the same run as above, with every part
 * copied on its own there are parts under 4 KB ahead of a fence (117 copies are of part of a
 * layer); with a minimum of 4 KB none is under it but a layer's last part, fewer copies are of part
 * of a layer (27), some still are (the 48 KB layers over several small ones), and no copy
 * overwrites a layer in use. */
static void test_small_parts_wait_for_the_next_fence(void **state) {
    (void)state;
    enum { N = MIXED_N };
    size_t sizes[N], aligns[N], total = mixed_ring_model(sizes, aligns);
    size_t small_all = 0, small_min = 0;
    size_t parts_all = hazard_run_parts(N, sizes, aligns, total * 3 / 4, 4e-6, 10, 0, 4 * KB, &small_all);
    size_t parts_min = hazard_run_parts(N, sizes, aligns, total * 3 / 4, 4e-6, 10, 4 * KB, 4 * KB, &small_min);
    assert_true(small_all > 0);
    assert_int_equal(small_min, 0);
    assert_true(parts_min > 0 && parts_min < parts_all);
}

/* The same check over random models: sizes from 256 B to 64 KB, alignments up to 4 KB, budgets from
 * a third of the model to nearly all of it, compute from much shorter to longer than the copies. */
static void test_copies_never_overwrite_random(void **state) {
    (void)state;
    enum { N = 40 };
    uint64_t seed = 0x9e3779b97f4a7c15ull;
    size_t partial = 0;
    for (int run = 0; run < 12; run++) {
        size_t sizes[N], aligns[N], total = 0;
        for (int i = 0; i < N; i++) {
            seed = seed * 6364136223846793005ull + 1442695040888963407ull;
            unsigned r = (unsigned)(seed >> 33);
            sizes[i] = r % 8 == 0 ? 16 * KB + r % (48 * KB) : 256 + r % (8 * KB);
            aligns[i] = (size_t)256 << ((r >> 20) % 5);
            total += sizes[i];
        }
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        double frac = 0.35 + (double)((seed >> 40) % 60) / 100.0;
        double compute = 1e-6 * (double)(1 + (seed >> 20) % 40);
        partial += hazard_run(N, sizes, aligns, (size_t)((double)total * frac), compute, 8);
    }
    assert_true(partial > 0);
}

/* A denoiser that streams more than the RAM cache holds (FLUX.1-dev's 13.5 GB per step through
 * InvokeAI's default 9 GB on a 12 GB card): with the RAM cache least recently used first, a pass
 * in order evicted each copy just before its next use, and every streamed layer was read by its
 * loader again every pass. Dropping the copy needed furthest ahead (kept layers in VRAM first)
 * re-reads only what does not fit: the plan streams 13 of the 16 layers, the RAM cache holds 8
 * copies, and a pass now calls 5 loaders (13 with the copies dropped least recently used first,
 * 16 under the LRU policy, which keeps that order), and the cache warns once that loaders re-read
 * what the RAM cache cannot hold. Checks every layer's bytes at every acquire. */
static void count_reread_warnings(void *user, vc_log_level level, const char *msg) {
    if (level == VC_LOG_WARN && strstr(msg, "RAM cache does not hold what the models in use stream")) ++*(int *)user;
}

static void ram_cache_pass_loads(vc_policy policy, int *loads_per_pass) {
    enum { N = 16, PASSES = 8 };
    vc_sim_params p;
    vc_sim_params_init(&p);
    p.device_bytes = 5 * 16 * KB; /* the plan keeps 3 layers, streams 13 through room for 2 */
    vc_backend *sim;
    assert_int_equal(vc_backend_sim_create(&p, &sim), VC_OK);
    vc_cache_options o = sched_options(sim, VC_OFFLOAD_MODE_BALANCED, policy);
    o.ram_budget = 8 * 16 * KB; /* RAM holds 8 copies */
    int warnings = 0;
    o.log_fn = count_reread_warnings;
    o.log_user = &warnings;
    o.arena_segment_bytes = 16 * KB;
    vc_cache *c;
    assert_int_equal(vc_cache_create(&o, &c), VC_OK);
    vc_stream stream;
    assert_int_equal(vc_sim_stream_create(sim, &stream), VC_OK);
    vc_model_id m = add_model(c, "denoiser");
    test_loader ld[N];
    vc_layer_id ids[N];
    add_loader_layers(c, m, "l", N, 16 * KB, ld, ids);
    int before = 0;
    for (int pass_i = 0; pass_i < PASSES; pass_i++) {
        before = 0;
        for (int i = 0; i < N; i++) before += ld[i].calls;
        for (int i = 0; i < N; i++) {
            void *d;
            assert_int_equal(vc_layer_acquire(c, ids[i], stream, &d), VC_OK);
            assert_true(check_pattern(d, 16 * KB, (uint64_t)i + 1));
            double start;
            kernel(sim, stream, 20e-6, d, 16 * KB, &start, NULL);
            assert_int_equal(vc_layer_release(c, ids[i], stream), VC_OK);
            vc_sim_wait_until(sim, start); /* the host stays about a layer ahead of the device */
        }
        vc_sim_stream_synchronize(sim, stream);
        vc_stats st = get_stats(c);
        assert_true(st.ram_bytes <= o.ram_budget && st.ram_peak_bytes <= o.ram_budget);
    }
    int after = 0;
    for (int i = 0; i < N; i++) after += ld[i].calls;
    *loads_per_pass = after - before; /* the last pass */
    assert_int_equal(warnings, 1); /* said once: the loaders re-read more than the budget */
    assert_int_equal(vc_cache_destroy(c), VC_OK);
    assert_no_hazard(sim);
    vc_backend_destroy(sim);
}

static void test_ram_cache_keeps_what_it_can_of_a_pass(void **state) {
    (void)state;
    int planned, lru;
    ram_cache_pass_loads(VC_POLICY_PLANNED, &planned);
    ram_cache_pass_loads(VC_POLICY_LRU, &lru);
    if (planned > 5 || lru < 12) fail_msg("loader calls in a pass: planned %d (want <= 5), LRU %d", planned, lru);
}

/* Before its order is known, a model whose acquires follow the order its layers were registered in
 * gets the next registered layers uploaded ahead (schedule.c, read_ahead): its first pass no longer
 * waits for copies a layer at a time. 12 layers of 64 KB on room for 6 (so the readahead evicts the
 * pass's earlier layers, as its misses would), a copy ~0.66 ms; every third layer computes 3 ms and
 * the others 0.1 ms. With the host a layer ahead a miss's copy hides behind the kernel before it
 * only: after each long kernel the second short layer waits for its copy, unless it was read
 * ahead during the long one. The same first pass in an order that is not the registration order
 * reads nothing ahead. */
static double first_pass(const int *seq, vc_stats *s) {
    enum { N = 12 };
    sim_world w = make_world(N, 64 * KB, 6 * 64 * KB, 100e6, 10e-6, VC_OFFLOAD_MODE_BALANCED, VC_POLICY_PLANNED);
    for (int k = 0; k < N; k++) {
        int i = seq[k];
        void *p;
        assert_int_equal(vc_layer_acquire(w.cache, w.layer[i], w.stream, &p), VC_OK);
        assert_true(check_pattern(p, w.bytes[i], (uint64_t)i + 1));
        double start;
        kernel(w.sim, w.stream, k % 3 == 0 ? 3 * MS : 0.1 * MS, p, w.bytes[i], &start, NULL);
        assert_int_equal(vc_layer_release(w.cache, w.layer[i], w.stream), VC_OK);
        vc_sim_wait_until(w.sim, start);
    }
    vc_sim_stream_synchronize(w.sim, w.stream);
    double t = vc_sim_now(w.sim);
    *s = get_stats(w.cache);
    int known = 1;
    assert_int_equal(vc_model_get_order(w.cache, w.model, &known, NULL, NULL), VC_OK);
    assert_int_equal(known, 0); /* (all of it before the order was learned) */
    free_world(&w); /* (asserts no copy overwrote a layer in use) */
    return t;
}

static void test_readahead_before_the_order_is_known(void **state) {
    (void)state;
    const int registered[12] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11};
    const int shuffled[12] = {0, 2, 4, 6, 8, 10, 1, 3, 5, 7, 9, 11};
    vc_stats in_order, out_of_order;
    double t_in = first_pass(registered, &in_order), t_out = first_pass(shuffled, &out_of_order);
    /* Two acquires in registration order after the first start it: layers 3-11 arrive ahead. */
    assert_int_equal(in_order.prefetches, 9);
    assert_int_equal(in_order.prefetch_hits, 9);
    assert_int_equal(in_order.misses, 3);
    assert_int_equal(out_of_order.prefetches, 0);
    assert_int_equal(out_of_order.misses, 12);
    /* After each of the three long kernels past the start, a copy no longer waited (~0.56 ms each). */
    if (!(t_in < t_out - 1 * MS)) fail_msg("first pass %.3f ms in registration order, %.3f ms out of it",
                                           t_in / MS, t_out / MS);
}

/* A readahead makes room from the model's own layers registered before the latest acquire (a pass
 * in registration order has used them: they are needed last), never from those after it, which the
 * pass is about to use, even when one of those is the least recently used. 10 layers of 64 KB on
 * room for 4; layers 8 and 9 run first (a model whose head is registered last), then 0-7: 9 is the
 * least recently used layer as the readahead starts, and must still be resident at the end. */
static void test_readahead_keeps_layers_ahead(void **state) {
    (void)state;
    sim_world w = make_world(10, 64 * KB, 4 * 64 * KB, 100e6, 10e-6, VC_OFFLOAD_MODE_BALANCED, VC_POLICY_PLANNED);
    const int seq[10] = {8, 9, 0, 1, 2, 3, 4, 5, 6, 7};
    /* Each layer once, and 8 again: 6's acquire reads it ahead, as it follows 7 in registration
     * order (8 went for 2's miss, the least recently used then). */
    assert_int_equal(seq_pass(&w, seq, 10, 2 * MS), 11 * 64 * KB);
    vc_stats s = get_stats(w.cache);
    assert_int_equal(s.prefetches, 6); /* 3-8, making room from 0-5 as each was used */
    assert_int_equal(s.prefetch_hits, 5);
    assert_int_equal(residency(w.cache, w.layer[9]), VC_RES_VRAM_RAM);
    free_world(&w);
}

/* Sequential mode keeps only held and prefetched layers on the device: layers read ahead before an
 * acquire out of registration order stop counting as prefetched, so they leave. 8 layers of 64 KB
 * (sequential's look-ahead: two of them); 0, 1, 2 in order read 3 and 4 ahead, then 6 runs. */
static void test_readahead_in_vain_leaves_in_sequential_mode(void **state) {
    (void)state;
    sim_world w = make_world(8, 64 * KB, 1 * MB, 1e9, 0, VC_OFFLOAD_MODE_SEQUENTIAL, VC_POLICY_PLANNED);
    const int seq[3] = {0, 1, 2};
    seq_pass(&w, seq, 3, 1 * MS);
    assert_int_equal(residency(w.cache, w.layer[3]), VC_RES_VRAM_RAM);
    assert_int_equal(residency(w.cache, w.layer[4]), VC_RES_VRAM_RAM);
    assert_int_equal(get_stats(w.cache).layers_in_vram, 2); /* (2 left at its release) */
    void *p;
    assert_int_equal(vc_layer_acquire(w.cache, w.layer[6], w.stream, &p), VC_OK);
    assert_int_equal(get_stats(w.cache).layers_in_vram, 1); /* 6, held */
    assert_int_equal(residency(w.cache, w.layer[3]), VC_RES_RAM);
    assert_int_equal(vc_layer_release(w.cache, w.layer[6], w.stream), VC_OK);
    free_world(&w);
}

/* A balanced cache with prefetch_depth 2 on a simulated device of 64 MB, and a stream for it. */
static vc_cache *depth2_cache(vc_backend **sim, vc_stream *stream) {
    vc_sim_params p;
    vc_sim_params_init(&p);
    p.device_bytes = 64 * MB;
    assert_int_equal(vc_backend_sim_create(&p, sim), VC_OK);
    vc_cache_options o = sched_options(*sim, VC_OFFLOAD_MODE_BALANCED, VC_POLICY_PLANNED);
    o.prefetch_depth = 2;
    vc_cache *c;
    assert_int_equal(vc_cache_create(&o, &c), VC_OK);
    assert_int_equal(vc_sim_stream_create(*sim, stream), VC_OK);
    return c;
}

/* A readahead that guessed wrong (registered layers the pass never uses) must not keep counting as
 * in flight: prefetch_depth bounds every model's prefetches together, and two such layers would
 * have stopped all prefetching for good. A pass of model A uses its layers 0-3 of 6 (so 4 and 5 are
 * read ahead and never acquired); then model B, with a declared order, must still prefetch. */
static void test_readahead_guess_that_fails_is_let_go(void **state) {
    (void)state;
    vc_backend *sim;
    vc_stream stream;
    vc_cache *c = depth2_cache(&sim, &stream);
    static char wa[6][16 * KB], wb[6][16 * KB];
    vc_model_id a = add_model(c, "a"), b = add_model(c, "b");
    vc_layer_id la[6], lb[6];
    for (int i = 0; i < 6; i++) {
        la[i] = add_host_layer(c, a, "a", wa[i], sizeof wa[i]);
        lb[i] = add_host_layer(c, b, "b", wb[i], sizeof wb[i]);
    }
    const int b_seq[6] = {5, 3, 1, 0, 2, 4}; /* (not its registration order: no readahead of its own) */
    vc_layer_id b_order[6];
    for (int i = 0; i < 6; i++) b_order[i] = lb[b_seq[i]];
    assert_int_equal(vc_model_set_order(c, b, b_order, 6), VC_OK);
    void *ptr;
    for (int i = 0; i < 4; i++) {
        assert_int_equal(vc_layer_acquire(c, la[i], stream, &ptr), VC_OK);
        assert_int_equal(vc_layer_release(c, la[i], stream), VC_OK);
    }
    vc_stats s0 = get_stats(c);
    assert_int_equal(s0.prefetches, 3); /* layers 3, 4 and 5 */
    assert_int_equal(s0.prefetch_hits, 1);
    assert_int_equal(c->prefetch_inflight, 2);
    for (int i = 0; i < 6; i++) {
        assert_int_equal(vc_layer_acquire(c, b_order[i], stream, &ptr), VC_OK);
        if (i == 0) assert_int_equal(c->prefetch_inflight, 2); /* A's let go; B's first two ahead */
        assert_int_equal(vc_layer_release(c, b_order[i], stream), VC_OK);
    }
    vc_stats s1 = get_stats(c);
    assert_int_equal(s1.prefetches - s0.prefetches, 5); /* all of B but its first layer */
    assert_int_equal(s1.prefetch_hits - s0.prefetch_hits, 5);
    assert_int_equal(vc_cache_destroy(c), VC_OK);
    assert_no_hazard(sim);
    vc_backend_destroy(sim);
}

/* prefetch_depth bounds the prefetch copies still running, not the layers uploaded ahead and not
 * acquired yet: once copies have landed, the scan goes on ahead as far as room allows. Counting
 * the landed ones too kept the scan at prefetch_depth layers ahead however idle the copy engine
 * was (a VAE's small layers held every place through its decode, and the text encoders after it
 * waited for their copies). 16 layers of 64 KB that fit, depth 2, each kernel 2 ms, the host
 * waiting for each kernel (the copies land meanwhile); a declared order's scan, then a first
 * pass's readahead. */
/* One pass over layers l[0..n) of 64 KB each (weights w), each kernel 2 ms, the host waiting for it;
 * asserts that at most two prefetch copies are ever queued and that, once the scan begins (at the
 * acquire `start`), two more layers are ahead at every acquire than at the one before. */
static void pass_ahead_grows(vc_cache *c, vc_backend *sim, vc_stream stream, const vc_layer_id *l,
                             char (*w)[64 * KB], int n, int start) {
    for (int i = 0; i < n; i++) {
        void *ptr;
        assert_int_equal(vc_layer_acquire(c, l[i], stream, &ptr), VC_OK);
        assert_true(c->pf_len <= 2); /* never more than prefetch_depth copies queued */
        size_t ahead = 0;
        for (int k = i + 1; k < n; k++)
            ahead += residency(c, l[k]) == VC_RES_VRAM || residency(c, l[k]) == VC_RES_VRAM_RAM;
        /* the copies queued at the last acquire have landed: two more go out at this one */
        size_t want = i < start ? 0 : (size_t)(i + 2 - start) < (size_t)(n - 1 - i) ? (size_t)(i + 2 - start)
                                                                                   : (size_t)(n - 1 - i);
        assert_int_equal(ahead, want);
        double s, e;
        kernel(sim, stream, 2 * MS, ptr, sizeof w[i], &s, &e);
        assert_int_equal(vc_layer_release(c, l[i], stream), VC_OK);
        vc_sim_wait_until(sim, e);
    }
}

static void test_prefetch_depth_bounds_copies_in_flight(void **state) {
    (void)state;
    vc_backend *sim;
    vc_stream stream;
    vc_cache *c = depth2_cache(&sim, &stream);
    enum { N = 16 };
    static char wt[N][64 * KB], wr[N][64 * KB];
    vc_model_id m = add_model(c, "m");
    vc_layer_id l[N];
    for (int i = 0; i < N; i++) l[i] = add_host_layer(c, m, "l", wt[i], sizeof wt[i]);
    assert_int_equal(vc_model_set_order(c, m, l, N), VC_OK);
    pass_ahead_grows(c, sim, stream, l, wt, N, 0);
    vc_stats st = get_stats(c);
    assert_int_equal(st.misses, 1);
    assert_int_equal(st.prefetch_hits, N - 1);
    /* The same for a readahead (a model learning its order, registered in the order it runs): it
     * begins at the third acquire. */
    vc_model_id r = add_model(c, "r");
    for (int i = 0; i < N; i++) l[i] = add_host_layer(c, r, "r", wr[i], sizeof wr[i]);
    pass_ahead_grows(c, sim, stream, l, wr, N, 2);
    vc_stats st2 = get_stats(c);
    assert_int_equal(st2.misses - st.misses, 3);
    assert_int_equal(st2.prefetch_hits - st.prefetch_hits, N - 3);
    assert_int_equal(vc_cache_destroy(c), VC_OK);
    assert_no_hazard(sim);
    vc_backend_destroy(sim);
}

static void test_changed_order_is_detected(void **state) {
    (void)state;
    sim_world w = make_world(6, 16 * KB, 1 * MB, 1e9, 0, VC_OFFLOAD_MODE_BALANCED, VC_POLICY_PLANNED);
    pass(&w, 1 * MS);
    pass(&w, 1 * MS);
    assert_int_equal(get_stats(w.cache).orders_learned, 1);
    /* A branch: one layer skipped is tolerated (resynchronised). */
    void *p;
    for (int i = 0; i < 6; i++) {
        if (i == 3) continue;
        assert_int_equal(vc_layer_acquire(w.cache, w.layer[i], w.stream, &p), VC_OK);
        vc_layer_release(w.cache, w.layer[i], w.stream);
    }
    vc_stats s = get_stats(w.cache);
    assert_int_equal(s.order_mismatches, 1);
    assert_int_equal(s.order_resets, 0);
    /* A different order altogether: dropped, then learned again. */
    for (int r = 0; r < 3; r++)
        for (int i = 5; i >= 0; i--) {
            assert_int_equal(vc_layer_acquire(w.cache, w.layer[i], w.stream, &p), VC_OK);
            vc_layer_release(w.cache, w.layer[i], w.stream);
        }
    s = get_stats(w.cache);
    assert_true(s.order_resets >= 1);
    assert_int_equal(s.orders_learned, 2);
    int known;
    vc_model_get_order(w.cache, w.model, &known, NULL, NULL);
    assert_int_equal(known, 1);
    free_world(&w);
}

static void test_declared_order(void **state) {
    (void)state;
    sim_world w = make_world(6, 16 * KB, 1 * MB, 1e9, 0, VC_OFFLOAD_MODE_BALANCED, VC_POLICY_PLANNED);
    vc_layer_id order[6];
    for (int i = 0; i < 6; i++) order[i] = w.layer[5 - i];
    assert_int_equal(vc_model_set_order(w.cache, w.model, order, 6), VC_OK);
    int known, declared;
    size_t len;
    vc_model_get_order(w.cache, w.model, &known, &declared, &len);
    assert_int_equal(known, 1);
    assert_int_equal(declared, 1);
    assert_int_equal(len, 6);
    /* running the other way is a mismatch each time, but a declared order is kept */
    pass(&w, 1 * MS);
    pass(&w, 1 * MS);
    vc_model_get_order(w.cache, w.model, &known, &declared, NULL);
    assert_int_equal(known, 1);
    assert_int_equal(declared, 1);
    assert_int_equal(get_stats(w.cache).order_resets, 0);
    /* a layer listed twice runs twice per pass: 7 uses of 6 layers */
    vc_layer_id with_repeat[7];
    for (int i = 0; i < 6; i++) with_repeat[i] = order[i];
    with_repeat[6] = order[2];
    assert_int_equal(vc_model_set_order(w.cache, w.model, with_repeat, 7), VC_OK);
    vc_model_get_order(w.cache, w.model, &known, &declared, &len);
    assert_int_equal(len, 7);
    assert_int_equal(vc_model_set_order(w.cache, w.model, order, 6), VC_OK);
    /* bad orders change nothing */
    vc_model_id other = add_model(w.cache, "other");
    static char x[64];
    vc_layer_id foreign = add_host_layer(w.cache, other, "x", x, sizeof x);
    order[1] = foreign;
    assert_int_equal(vc_model_set_order(w.cache, w.model, order, 6), VC_ERR_INVALID_ARG);
    order[1] = 12345;
    assert_int_equal(vc_model_set_order(w.cache, w.model, order, 6), VC_ERR_NOT_FOUND);
    assert_int_equal(vc_model_set_order(w.cache, w.model, NULL, 3), VC_ERR_INVALID_ARG);
    assert_int_equal(vc_model_set_order(w.cache, 999, order, 1), VC_ERR_NOT_FOUND);
    vc_model_get_order(w.cache, w.model, &known, &declared, &len);
    assert_int_equal(known, 1);
    assert_int_equal(len, 6);
    /* clearing returns to learning */
    assert_int_equal(vc_model_set_order(w.cache, w.model, NULL, 0), VC_OK);
    vc_model_get_order(w.cache, w.model, &known, &declared, NULL);
    assert_int_equal(known, 0);
    free_world(&w);
}

static void test_never_evicts_held_or_in_flight(void **state) { /* and waits rather than fails */
    (void)state;
    /* Room for 2 layers; slow copies (10 ms each) so a prefetch stays in flight. */
    sim_world w = make_world(4, 64 * KB, 2 * 64 * KB, 64 * KB / 10e-3, 0, VC_OFFLOAD_MODE_BALANCED,
                             VC_POLICY_PLANNED);
    vc_layer_id order[4] = {w.layer[0], w.layer[1], w.layer[2], w.layer[3]};
    assert_int_equal(vc_model_set_order(w.cache, w.model, order, 4), VC_OK);
    void *p0, *p2;
    /* acquire 0: layer 1 is prefetched and in flight (the host clock has not moved) */
    assert_int_equal(vc_layer_acquire(w.cache, w.layer[0], w.stream, &p0), VC_OK);
    vc_layer_info info;
    vc_layer_get_info(w.cache, w.layer[1], &info);
    assert_true(info.residency == VC_RES_VRAM_RAM);
    /* layer 2 needs room: 0 is held, 1 is in flight: nothing may go while it is, so the acquire
     * waits for 1's copy to land (the host clock moves to its end) and only then takes its room */
    double before = vc_sim_now(w.sim);
    assert_int_equal(vc_layer_acquire(w.cache, w.layer[2], w.stream, &p2), VC_OK);
    assert_true(vc_sim_now(w.sim) >= before + 10e-3 - 1e-9);
    assert_true(check_pattern(p2, 64 * KB, 3));
    assert_true(check_pattern(p0, 64 * KB, 1));
    vc_layer_release(w.cache, w.layer[0], w.stream);
    vc_layer_release(w.cache, w.layer[2], w.stream);
    free_world(&w);
}

/* Sequential mode bounds what it uploads ahead in bytes (the order's two largest layers), not in
 * layers: a model registered module by module, each 1 MB projection after a 4 KB norm, still looks a
 * whole projection ahead, and never has more than two projections' bytes on the way. */
static void test_sequential_lookahead_is_in_bytes(void **state) {
    (void)state;
    size_t sizes[12];
    for (int i = 0; i < 12; i++) sizes[i] = i % 2 ? 1 * MB : 4 * KB; /* norm, projection, norm, ... */
    sim_world w = make_world_sized(12, 0, sizes, 64 * MB, 1e9, 0, VC_OFFLOAD_MODE_SEQUENTIAL, VC_POLICY_PLANNED);
    uint64_t most_ahead = 0;
    for (int r = 0; r < 4; r++)
        for (int i = 0; i < 12; i++) {
            void *p;
            assert_int_equal(vc_layer_acquire(w.cache, w.layer[i], w.stream, &p), VC_OK);
            vc_stats s = get_stats(w.cache);
            /* the held layer, plus at most two projections' bytes ahead */
            assert_true(s.vram_bytes <= sizes[i] + 2 * MB);
            if (s.layers_in_vram - 1 > most_ahead) most_ahead = s.layers_in_vram - 1;
            vc_layer_release(w.cache, w.layer[i], w.stream);
        }
    /* a norm, a projection and the next norm at least (two layers ahead was the old bound) */
    assert_true(most_ahead >= 3);
    vc_stats s = get_stats(w.cache);
    assert_true(s.prefetch_hits > 0);
    assert_true(s.vram_peak_bytes <= 1 * MB + 2 * MB);
    free_world(&w);
}

static void test_sequential_mode_keeps_minimum(void **state) {
    (void)state;
    sim_world w = make_world(8, 16 * KB, 1 * MB, 1e9, 0, VC_OFFLOAD_MODE_SEQUENTIAL, VC_POLICY_PLANNED);
    for (int r = 0; r < 4; r++)
        for (int i = 0; i < 8; i++) {
            void *p;
            assert_int_equal(vc_layer_acquire(w.cache, w.layer[i], w.stream, &p), VC_OK);
            /* held + prefetched (at most 2 ahead) */
            assert_true(get_stats(w.cache).layers_in_vram <= 3);
            vc_layer_release(w.cache, w.layer[i], w.stream);
        }
    vc_stats s = get_stats(w.cache);
    assert_true(s.vram_evictions[VC_EVICT_SEQUENTIAL] > 0);
    assert_true(s.vram_peak_bytes <= 3 * 16 * KB);
    free_world(&w);
}

static void test_none_mode_never_evicts(void **state) {
    (void)state;
    sim_world w = make_world(6, 64 * KB, 4 * 64 * KB, 1e9, 0, VC_OFFLOAD_MODE_NONE, VC_POLICY_PLANNED);
    void *p;
    for (int i = 0; i < 4; i++) {
        assert_int_equal(vc_layer_acquire(w.cache, w.layer[i], w.stream, &p), VC_OK);
        vc_layer_release(w.cache, w.layer[i], w.stream);
    }
    assert_int_equal(vc_layer_acquire(w.cache, w.layer[4], w.stream, &p), VC_ERR_OUT_OF_VRAM);
    assert_true(last_error_has(w.cache, "offload_mode none"));
    vc_stats s = get_stats(w.cache);
    for (int r = 0; r < VC_EVICT_REASON_COUNT; r++) assert_int_equal(s.vram_evictions[r], 0);
    assert_int_equal(s.layers_in_vram, 4);
    /* a reservation that would need an eviction fails too, changing nothing */
    vc_reservation *res;
    assert_int_equal(vc_reserve_working_mem(w.cache, 64 * KB, 0, &res), VC_ERR_OUT_OF_VRAM);
    assert_int_equal(get_stats(w.cache).layers_in_vram, 4);
    free_world(&w);
}

/* Registers model `name` with n host layers of `bytes` each, in buf (n * bytes), filled with the
 * patterns seed, seed + 1, ...; their ids in ids. */
static vc_model_id add_pattern_model(vc_cache *c, const char *name, int n, size_t bytes, char *buf, uint64_t seed,
                                     vc_layer_id *ids) {
    vc_model_id m = add_model(c, name);
    for (int i = 0; i < n; i++) {
        fill_pattern(buf + (size_t)i * bytes, bytes, seed + (uint64_t)i);
        ids[i] = add_host_layer(c, m, name, buf + (size_t)i * bytes, bytes);
    }
    return m;
}

static void test_model_mode_moves_whole_models(void **state) {
    (void)state;
    sim_world w = make_world(3, 64 * KB, 4 * 64 * KB, 1e9, 0, VC_OFFLOAD_MODE_MODEL, VC_POLICY_PLANNED);
    static char vw[3][64 * KB];
    vc_layer_id v[3];
    add_pattern_model(w.cache, "vae", 3, 64 * KB, vw[0], 100, v);
    void *p;
    assert_int_equal(vc_layer_acquire(w.cache, w.layer[0], w.stream, &p), VC_OK);
    vc_layer_release(w.cache, w.layer[0], w.stream);
    assert_int_equal(get_stats(w.cache).layers_in_vram, 3); /* the whole denoiser came in */
    assert_int_equal(vc_layer_acquire(w.cache, v[1], w.stream, &p), VC_OK);
    assert_true(check_pattern(p, 64 * KB, 101));
    vc_layer_release(w.cache, v[1], w.stream);
    vc_stats s = get_stats(w.cache);
    assert_int_equal(s.layers_in_vram, 3); /* and it left whole for the VAE */
    assert_int_equal(s.vram_evictions[VC_EVICT_MODEL_SWAP], 3);
    for (int i = 0; i < 3; i++) assert_int_equal(residency(w.cache, v[i]), VC_RES_VRAM_RAM);
    /* a model larger than the device fails clearly */
    vc_model_id big = add_model(w.cache, "big");
    static char bw[5][64 * KB];
    vc_layer_id b0 = 0;
    for (int i = 0; i < 5; i++) {
        vc_layer_id id = add_host_layer(w.cache, big, "b", bw[i], sizeof bw[i]);
        if (i == 0) b0 = id;
    }
    assert_int_equal(vc_layer_acquire(w.cache, b0, w.stream, &p), VC_ERR_OUT_OF_VRAM);
    assert_true(last_error_has(w.cache, "moves whole models"));
    free_world(&w);
}

/* Model mode moves a whole model at its first miss, but the engine's stream waits only for the
 * layer it acquired: the pass computes while the rest of the model arrives. */
static void test_model_mode_load_overlaps_compute(void **state) {
    (void)state;
    /* 8 layers of 64 KB, 1.024 ms each on the link; 1 ms of compute each */
    sim_world w = make_world(8, 64 * KB, 1 * MB, 64e6, 0, VC_OFFLOAD_MODE_MODEL, VC_POLICY_PLANNED);
    double t0 = vc_sim_now(w.sim), first_start = -1, end = 0;
    for (int i = 0; i < w.n; i++) {
        void *p;
        assert_int_equal(vc_layer_acquire(w.cache, w.layer[i], w.stream, &p), VC_OK);
        if (i == 0) assert_int_equal(get_stats(w.cache).layers_in_vram, 8); /* the whole model moved */
        double s;
        kernel(w.sim, w.stream, 1 * MS, p, w.bytes[i], &s, &end);
        if (i == 0) first_start = s;
        assert_int_equal(vc_layer_release(w.cache, w.layer[i], w.stream), VC_OK);
    }
    vc_sim_stream_synchronize(w.sim, w.stream);
    assert_true(first_start - t0 < 1.5 * MS); /* after its own copy, not the model's 8.2 ms */
    assert_true(end - t0 < 10 * MS);          /* copies and compute overlap: not 8.2 + 8 ms */
    assert_int_equal(get_stats(w.cache).vram_evictions[VC_EVICT_FOR_LOAD], 0);
    free_world(&w);
}

/* Three models of different layer sizes, run in turn, two of them fitting at a time: each run loads
 * its model whole, once, evicting other models whole, never its own layers for a hole (they would
 * miss again at their acquire, and each miss load the model again). With `refuse`, the device
 * refuses the first allocation of each model's load (the segment the model would be packed in, as
 * a GPU whose free memory is fragmented may): its layers then go where they can, still once. */
static void model_mode_cycle(int refuse) {
    vc_sim_params sp;
    vc_sim_params_init(&sp);
    sp.device_bytes = 720 * KB;
    sp.h2d_bytes_per_s = sp.d2h_bytes_per_s = 1e9;
    vc_backend *sim, *fault;
    assert_int_equal(vc_backend_sim_create(&sp, &sim), VC_OK);
    assert_int_equal(vc_backend_fault_create(sim, &fault), VC_OK);
    vc_cache_options o = sched_options(fault, VC_OFFLOAD_MODE_MODEL, VC_POLICY_PLANNED);
    vc_cache *cache;
    assert_int_equal(vc_cache_create(&o, &cache), VC_OK);
    vc_stream stream;
    assert_int_equal(vc_sim_stream_create(sim, &stream), VC_OK);
    static const size_t a_sizes[] = {8 * KB, 40 * KB, 16 * KB, 72 * KB}, b_sizes[] = {100 * KB, 30 * KB, 90 * KB,
                                                                                     20 * KB, 60 * KB};
    enum { NA = 12, NB = 5, NC = 20 };
    static char wa[NA][72 * KB], wb[NB][100 * KB], wc[NC][12 * KB];
    vc_layer_id la[NA], lb[NB], lc[NC];
    vc_model_id a = add_model(cache, "a"), b = add_model(cache, "b"), c = add_model(cache, "c");
    size_t bytes[3] = {0, 0, 0};
    for (int i = 0; i < NA; i++) {
        size_t n = a_sizes[i % 4];
        fill_pattern(wa[i], n, 200 + (uint64_t)i);
        la[i] = add_host_layer(cache, a, "a", wa[i], n);
        bytes[0] += n;
    }
    for (int i = 0; i < NB; i++) {
        fill_pattern(wb[i], b_sizes[i], 300 + (uint64_t)i);
        lb[i] = add_host_layer(cache, b, "b", wb[i], b_sizes[i]);
        bytes[1] += b_sizes[i];
    }
    for (int i = 0; i < NC; i++) {
        fill_pattern(wc[i], sizeof wc[i], 400 + (uint64_t)i);
        lc[i] = add_host_layer(cache, c, "c", wc[i], sizeof wc[i]);
        bytes[2] += sizeof wc[i];
    }
    const vc_layer_id *ids[3] = {la, lb, lc};
    const int counts[3] = {NA, NB, NC};
    for (int round = 0; round < 6; round++)
        for (int m = 0; m < 3; m++)
            for (int pass_no = 0; pass_no < 3; pass_no++) {
                uint64_t before = get_stats(cache).bytes_h2d;
                if (refuse && pass_no == 0) assert_int_equal(vc_fault_fail_nth(fault, VC_FAULT_DEVICE_ALLOC, 1), VC_OK);
                for (int i = 0; i < counts[m]; i++) {
                    void *p;
                    assert_int_equal(vc_layer_acquire(cache, ids[m][i], stream, &p), VC_OK);
                    size_t n = m == 0 ? a_sizes[i % 4] : m == 1 ? b_sizes[i] : sizeof wc[i];
                    assert_true(check_pattern(p, n, (uint64_t)(200 + 100 * m + i)));
                    kernel(sim, stream, 1e-5, p, n, NULL, NULL);
                    assert_int_equal(vc_layer_release(cache, ids[m][i], stream), VC_OK);
                }
                uint64_t moved = get_stats(cache).bytes_h2d - before;
                /* at most the model once; nothing on its run's later passes */
                assert_true(moved <= (pass_no == 0 ? bytes[m] : 0));
            }
    vc_stats s = get_stats(cache);
    if (!refuse) assert_int_equal(s.vram_evictions[VC_EVICT_FRAGMENTATION], 0);
    assert_true(s.vram_evictions[VC_EVICT_MODEL_SWAP] > 0);
    assert_true(s.vram_peak_bytes <= 720 * KB);
    assert_int_equal(vc_cache_destroy(cache), VC_OK);
    assert_no_hazard(sim);
    vc_backend_destroy(fault);
    vc_backend_destroy(sim);
}

static void test_model_mode_swaps_without_own_evictions(void **state) {
    (void)state;
    model_mode_cycle(0);
    model_mode_cycle(1);
}

/* Model mode: a layer offloaded from a resident model comes back into the room it left, evicting
 * nothing (a whole model's room is taken only when none of it is resident). */
static void test_model_mode_layer_back_into_its_room(void **state) {
    (void)state;
    sim_world w = make_world(4, 50 * KB, 400 * KB, 1e9, 0, VC_OFFLOAD_MODE_MODEL, VC_POLICY_PLANNED);
    static char ow[4][50 * KB];
    vc_layer_id o[4];
    add_pattern_model(w.cache, "other", 4, 50 * KB, ow[0], 700, o);
    void *p;
    assert_int_equal(vc_layer_acquire(w.cache, w.layer[0], w.stream, &p), VC_OK);
    assert_int_equal(vc_layer_release(w.cache, w.layer[0], w.stream), VC_OK);
    assert_int_equal(vc_layer_acquire(w.cache, o[0], w.stream, &p), VC_OK);
    assert_int_equal(vc_layer_release(w.cache, o[0], w.stream), VC_OK);
    assert_int_equal(get_stats(w.cache).layers_in_vram, 8); /* both models, 400 KB of 400 */
    assert_int_equal(vc_layer_offload(w.cache, w.layer[2], VC_OFFLOAD_VRAM), VC_OK);
    assert_int_equal(vc_layer_acquire(w.cache, w.layer[2], w.stream, &p), VC_OK);
    assert_true(check_pattern(p, w.bytes[2], 3));
    assert_int_equal(vc_layer_release(w.cache, w.layer[2], w.stream), VC_OK);
    vc_stats s = get_stats(w.cache);
    assert_int_equal(s.layers_in_vram, 8);
    assert_int_equal(s.vram_evictions[VC_EVICT_MODEL_SWAP], 0);
    free_world(&w);
}

/* Model mode, three models run in a cycle (an image's encoder, denoiser and VAE) on a device that
 * holds two: the model evicted is the one needed furthest ahead, which in a cycle is the one that ran
 * last, so every other model run finds its model resident (1.5 loads a cycle). Least recently used
 * first would evict the very model needed next, and load all three every cycle, as the LRU policy
 * does. */
static double model_mode_cycle_loads(vc_policy policy) {
    sim_world w = make_world(1, 4 * KB, 450 * KB, 1e9, 0, VC_OFFLOAD_MODE_MODEL, policy);
    enum { NL = 4, SZ = 50 * KB };
    static char wts[3][NL][SZ];
    vc_layer_id ids[3][NL];
    for (int m = 0; m < 3; m++) {
        char name[2] = {(char)('a' + m), 0};
        add_pattern_model(w.cache, name, NL, SZ, wts[m][0], 500 + 10 * (uint64_t)m, ids[m]);
    }
    uint64_t before = 0;
    for (int cycle = 0; cycle < 10; cycle++) {
        if (cycle == 4) before = get_stats(w.cache).bytes_h2d; /* the runs' starts are known from here */
        for (int m = 0; m < 3; m++)
            for (int i = 0; i < NL; i++) {
                void *p;
                assert_int_equal(vc_layer_acquire(w.cache, ids[m][i], w.stream, &p), VC_OK);
                assert_true(check_pattern(p, SZ, 500 + 10 * (uint64_t)m + (uint64_t)i));
                kernel(w.sim, w.stream, 1e-5, p, SZ, NULL, NULL);
                assert_int_equal(vc_layer_release(w.cache, ids[m][i], w.stream), VC_OK);
            }
    }
    double loads = (double)(get_stats(w.cache).bytes_h2d - before) / (NL * SZ) / 6;
    /* The pipeline changes: the first model alternates with the third; the second, whose next run
     * is then overdue, goes first, and the two that alternate stay resident. */
    for (int cycle = 0; cycle < 6; cycle++) {
        if (cycle == 3) before = get_stats(w.cache).bytes_h2d;
        for (int m = 0; m < 3; m += 2)
            for (int i = 0; i < NL; i++) {
                void *p;
                assert_int_equal(vc_layer_acquire(w.cache, ids[m][i], w.stream, &p), VC_OK);
                kernel(w.sim, w.stream, 1e-5, p, SZ, NULL, NULL);
                assert_int_equal(vc_layer_release(w.cache, ids[m][i], w.stream), VC_OK);
            }
    }
    assert_int_equal(get_stats(w.cache).bytes_h2d - before, 0);
    assert_true(get_stats(w.cache).vram_peak_bytes <= 450 * KB);
    free_world(&w);
    return loads;
}

static void test_model_mode_evicts_the_model_needed_last(void **state) {
    (void)state;
    assert_true(model_mode_cycle_loads(VC_POLICY_PLANNED) <= 1.5);
    assert_true(model_mode_cycle_loads(VC_POLICY_LRU) == 3.0);
}

static void test_balanced_threshold(void **state) {
    (void)state;
    vc_sim_params sp;
    vc_sim_params_init(&sp);
    sp.device_bytes = 1 * MB;
    vc_backend *sim;
    assert_int_equal(vc_backend_sim_create(&sp, &sim), VC_OK);
    vc_cache_options o;
    vc_cache_options_init(&o);
    o.backend = sim;
    o.working_mem = 0;
    o.ram_budget = 16 * MB;
    o.arena_segment_bytes = 32 * KB;
    o.offload_max_gpu_memory = 0.5; /* half of the device */
    vc_cache *c;
    assert_int_equal(vc_cache_create(&o, &c), VC_OK);
    vc_model_id m = add_model(c, "m");
    static char wts[24][32 * KB];
    for (int r = 0; r < 2; r++)
        for (int i = 0; i < 24; i++) {
            static vc_layer_id ids[24];
            if (r == 0) ids[i] = add_host_layer(c, m, "l", wts[i], sizeof wts[i]);
            void *p;
            assert_int_equal(vc_layer_acquire(c, ids[i], NULL, &p), VC_OK);
            vc_layer_release(c, ids[i], NULL);
        }
    vc_stats s = get_stats(c);
    assert_true(s.arena_peak_bytes <= 512 * KB);
    assert_int_equal(s.vram_limit, 512 * KB);
    assert_int_equal(vc_cache_destroy(c), VC_OK);
    vc_backend_destroy(sim);
    /* bad settings are refused */
    o.offload_max_gpu_memory = -1;
    assert_int_equal(vc_cache_create(&o, &c), VC_ERR_INVALID_ARG);
    o.offload_max_gpu_memory = 0;
    o.offload_mode = (vc_offload_mode)7;
    assert_int_equal(vc_cache_create(&o, &c), VC_ERR_INVALID_ARG);
    o.offload_mode = VC_OFFLOAD_MODE_BALANCED;
    o.policy = (vc_policy)5;
    assert_int_equal(vc_cache_create(&o, &c), VC_ERR_INVALID_ARG);
}

static void test_unregister_drops_order(void **state) {
    (void)state;
    sim_world w = make_world(5, 16 * KB, 1 * MB, 1e9, 0, VC_OFFLOAD_MODE_BALANCED, VC_POLICY_PLANNED);
    pass(&w, 1 * MS);
    pass(&w, 1 * MS);
    int known;
    vc_model_get_order(w.cache, w.model, &known, NULL, NULL);
    assert_int_equal(known, 1);
    assert_int_equal(vc_layer_unregister(w.cache, w.layer[2]), VC_OK);
    vc_model_get_order(w.cache, w.model, &known, NULL, NULL);
    assert_int_equal(known, 0);
    /* the remaining layers still work, and a new order is learned */
    void *p;
    for (int r = 0; r < 3; r++)
        for (int i = 0; i < 5; i++) {
            if (i == 2) continue;
            assert_int_equal(vc_layer_acquire(w.cache, w.layer[i], w.stream, &p), VC_OK);
            vc_layer_release(w.cache, w.layer[i], w.stream);
        }
    vc_model_get_order(w.cache, w.model, &known, NULL, NULL);
    assert_int_equal(known, 1);
    w.n = 5;
    free_world(&w);
}

/* A model that runs once (a VAE after the denoise loop) needs room while a plan fills the device
 * with its kept set and its streaming region: the room comes out of the kept arena (a kept layer
 * needed last), not out of the region, which would be emptied layer by layer and given back, and
 * the plan made and laid out again, its kept set loaded anew. */
static void test_other_model_leaves_the_region(void **state) {
    (void)state;
    sim_world w = make_world(16, 64 * KB, 640 * KB, 1e9, 1e-6, VC_OFFLOAD_MODE_BALANCED, VC_POLICY_PLANNED);
    for (int i = 0; i < 4; i++) pass(&w, 1e-4);
    const vc_cache *c = w.cache;
    assert_non_null(c->stream_model);
    assert_string_equal(c->stream_model->name, "denoiser");
    size_t budget = c->stream_budget, region = c->sarena.total;
    assert_true(budget > 0);
    double steady = pass_bytes(&w, 2, 1e-4, NULL);
    static char vae_w[2][64 * KB];
    vc_model_id vae = add_model(w.cache, "vae");
    for (int i = 0; i < 2; i++) {
        fill_pattern(vae_w[i], sizeof vae_w[i], (uint64_t)(100 + i));
        vc_layer_id id = add_host_layer(w.cache, vae, "v", vae_w[i], sizeof vae_w[i]);
        void *d;
        assert_int_equal(vc_layer_acquire(w.cache, id, w.stream, &d), VC_OK);
        assert_true(check_pattern(d, sizeof vae_w[i], (uint64_t)(100 + i)));
        kernel(w.sim, w.stream, 1e-4, d, sizeof vae_w[i], NULL, NULL);
        assert_int_equal(vc_layer_release(w.cache, id, w.stream), VC_OK);
    }
    assert_ptr_equal(c->stream_model, c->models.slots[0].ptr); /* the denoiser's region stays */
    assert_int_equal(c->stream_budget, budget);
    assert_int_equal(c->sarena.total, region);
    /* the next pass loads the kept layers the VAE displaced, no more */
    assert_true(pass_bytes(&w, 1, 1e-4, NULL) <= steady + 2 * 64 * KB);
    free_world(&w);
}

/* An encoder run once per image, then the denoiser three passes, in sequential mode. At the end of
 * a pass the prefetch scan reads the model's next pass's first layers; when another model's pass
 * begins instead, that read must stop holding the in-flight budget (in sequential mode, bytes: the
 * order's two largest layers) and leave the device. Else the denoiser's read-ahead first layers
 * held the encoder's whole budget through its pass, and the encoder's read-ahead first layer (larger
 * than the denoiser's bound) would hold the denoiser's: no prefetch in either pass. */
static void test_prefetch_for_the_next_image_is_let_go(void **state) {
    (void)state;
    sim_world w = make_world(8, 64 * KB, 384 * KB, 1e9, 1e-6, VC_OFFLOAD_MODE_SEQUENTIAL, VC_POLICY_PLANNED);
    static char enc_w[3][256 * KB];
    const size_t enc_bytes[3] = {256 * KB, 16 * KB, 16 * KB};
    vc_model_id enc = add_model(w.cache, "encoder");
    vc_layer_id enc_id[3];
    for (int i = 0; i < 3; i++) {
        fill_pattern(enc_w[i], enc_bytes[i], (uint64_t)(200 + i));
        enc_id[i] = add_host_layer(w.cache, enc, "e", enc_w[i], enc_bytes[i]);
    }
    for (int image = 0; image < 4; image++) {
        uint64_t hits = get_stats(w.cache).prefetch_hits;
        for (int i = 0; i < 3; i++) {
            void *d;
            assert_int_equal(vc_layer_acquire(w.cache, enc_id[i], w.stream, &d), VC_OK);
            assert_true(check_pattern(d, enc_bytes[i], (uint64_t)(200 + i)));
            kernel(w.sim, w.stream, 1e-4, d, enc_bytes[i], NULL, NULL);
            assert_int_equal(vc_layer_release(w.cache, enc_id[i], w.stream), VC_OK);
        }
        /* the second image (the encoder's order known, no cycle joined yet): its layers after the
         * first arrive prefetched, as do the denoiser's after the first of each pass */
        if (image == 1) assert_int_equal(get_stats(w.cache).prefetch_hits - hits, 2);
        hits = get_stats(w.cache).prefetch_hits;
        for (int p = 0; p < 3; p++) {
            pass(&w, 1e-4);
            vc_layer_info info;
            assert_int_equal(vc_layer_get_info(w.cache, enc_id[0], &info), VC_OK);
            /* (the last pass of an image may read it ahead once the image joins as a cycle, from
             * the third image on: the next image's first layer, rightly) */
            if (image >= 1 && p < 2) assert_true(info.residency != VC_RES_VRAM && info.residency != VC_RES_VRAM_RAM);
        }
        if (image == 1) assert_true(get_stats(w.cache).prefetch_hits - hits >= 3 * (8 - 1) - 1);
    }
    free_world(&w);
}

static void test_reservation_during_streaming(void **state) {
    (void)state;
    /* 12 layers streaming through room for 8; a working-memory reservation of 3 layers' worth comes
     * and goes mid-loop: the plan yields, the device never holds more than it has, bytes stay right. */
    sim_world w = make_world(12, 64 * KB, 8 * 64 * KB, 1e9, 10e-6, VC_OFFLOAD_MODE_BALANCED, VC_POLICY_PLANNED);
    for (int i = 0; i < 3; i++) pass(&w, 1 * MS);
    vc_reservation *r;
    assert_int_equal(vc_reserve_working_mem(w.cache, 3 * 64 * KB, VC_RESERVE_BUFFER, &r), VC_OK);
    for (int i = 0; i < 3; i++) {
        pass(&w, 1 * MS);
        vc_stats s = get_stats(w.cache);
        assert_true(s.arena_bytes + 3 * 64 * KB <= 8 * 64 * KB);
    }
    assert_int_equal(vc_release_working_mem(w.cache, r), VC_OK);
    for (int i = 0; i < 3; i++) pass(&w, 1 * MS);
    vc_stats s = get_stats(w.cache);
    assert_true(s.arena_peak_bytes <= 8 * 64 * KB);
    assert_true(s.vram_evictions[VC_EVICT_FOR_RESERVATION] > 0);
    assert_int_equal(s.layers_held, 0);
    free_world(&w);
}

/* Prefetch never calls a loader, so file-backed layers are not streamed ahead until they are in
 * RAM; vc_model_load_ram stages them and the very first pass prefetches. */
static void test_staged_loader_layers_are_prefetched(void **state) {
    (void)state;
    size_t hits[2];
    for (int staged = 0; staged < 2; staged++) {
        sim_world w = make_world(0, 0, 4 * 64 * KB, 100e6, 10e-6, VC_OFFLOAD_MODE_BALANCED, VC_POLICY_PLANNED);
        test_loader ld[8];
        vc_layer_id order[8];
        for (int i = 0; i < 8; i++) {
            ld[i] = (test_loader){.seed = (uint64_t)i + 1};
            order[i] = add_loader_layer(w.cache, w.model, "layer", 64 * KB, &ld[i]);
        }
        assert_int_equal(vc_model_set_order(w.cache, w.model, order, 8), VC_OK);
        if (staged) {
            assert_int_equal(vc_model_load_ram(w.cache, w.model), VC_OK);
            assert_int_equal(get_stats(w.cache).ram_bytes, 8 * 64 * KB);
        }
        for (int i = 0; i < 8; i++) {
            void *p;
            assert_int_equal(vc_layer_acquire(w.cache, order[i], w.stream, &p), VC_OK);
            assert_true(check_pattern(p, 64 * KB, (uint64_t)i + 1));
            kernel(w.sim, w.stream, 2 * MS, p, 64 * KB, NULL, NULL);
            assert_int_equal(vc_layer_release(w.cache, order[i], w.stream), VC_OK);
        }
        vc_sim_stream_synchronize(w.sim, w.stream);
        for (int i = 0; i < 8; i++) assert_int_equal(ld[i].calls, 1); /* each loader ran once */
        vc_stats s = get_stats(w.cache);
        hits[staged] = s.prefetch_hits;
        free_world(&w);
    }
    /* Unstaged, only the wrap-around to layer 0 (whose RAM copy now exists) can be prefetched, and
     * it is not used in this pass; staged, every layer after the first arrives ahead of use. */
    assert_int_equal(hits[0], 0);
    assert_int_equal(hits[1], 7);
}

/* stage_ahead: the cache's own thread runs the loaders of the layers coming up, so they are
 * prefetched without the engine staging anything. The test waits on a condition variable that the
 * loaders signal (no sleeps), then checks the pass. */
typedef struct counted_loads {
    pthread_mutex_t lock;
    pthread_cond_t cv;
    int calls;
    pthread_t main_thread;
    int off_main; /* loader calls made on another thread than the test's */
    test_loader ld[8];
} counted_loads;

static counted_loads *g_loads;

static int counted_loader(void *user, vc_layer_id layer, void *dst, size_t bytes) {
    int rc = test_loader_fn(user, layer, dst, bytes);
    pthread_mutex_lock(&g_loads->lock);
    g_loads->calls++;
    if (!pthread_equal(pthread_self(), g_loads->main_thread)) g_loads->off_main++;
    pthread_cond_broadcast(&g_loads->cv);
    pthread_mutex_unlock(&g_loads->lock);
    return rc;
}

/* A simulated device of four 64 KB layers with a slow link, and a cache on it that stages ahead,
 * logging to `log_fn` (NULL: the process-wide sink). */
static vc_cache *staging_cache_logged(vc_backend **sim, size_t ram_budget, vc_log_fn log_fn, void *log_user) {
    vc_sim_params p;
    vc_sim_params_init(&p);
    p.device_bytes = 4 * 64 * KB;
    p.h2d_bytes_per_s = p.d2h_bytes_per_s = 100e6;
    assert_int_equal(vc_backend_sim_create(&p, sim), VC_OK);
    vc_cache_options o;
    vc_cache_options_init(&o);
    o.backend = *sim;
    o.ram_budget = ram_budget;
    o.working_mem = 0;
    o.arena_segment_bytes = 64 * KB;
    o.stage_ahead = 1;
    o.log_fn = log_fn;
    o.log_user = log_user;
    vc_cache *c;
    assert_int_equal(vc_cache_create(&o, &c), VC_OK);
    return c;
}

static vc_cache *staging_cache(vc_backend **sim, size_t ram_budget) {
    return staging_cache_logged(sim, ram_budget, NULL, NULL);
}

/* Acquires order[0], which hands the rest to the stager, and waits until all `n` loaders ran. */
static void first_acquire_then_wait(vc_cache *c, counted_loads *cl, const vc_layer_id *order, int n,
                                    vc_stream stream) {
    void *ptr;
    assert_int_equal(vc_layer_acquire(c, order[0], stream, &ptr), VC_OK);
    pthread_mutex_lock(&cl->lock);
    while (cl->calls < n) pthread_cond_wait(&cl->cv, &cl->lock);
    pthread_mutex_unlock(&cl->lock);
    /* The last loader has returned but its layer may still read as loading: vc_layer_load_ram
     * waits for that and, with the copy in place, calls no loader (checked by the callers). */
    for (int i = 1; i < n; i++) assert_int_equal(vc_layer_load_ram(c, order[i]), VC_OK);
}

/* Releases order[0] and runs the rest of the pass with 2 ms of compute per layer. */
static void finish_pass(vc_cache *c, vc_backend *sim, const vc_layer_id *order, int n, vc_stream stream) {
    assert_int_equal(vc_layer_release(c, order[0], stream), VC_OK);
    for (int i = 1; i < n; i++) {
        void *ptr;
        assert_int_equal(vc_layer_acquire(c, order[i], stream, &ptr), VC_OK);
        assert_true(check_pattern(ptr, 64 * KB, (uint64_t)i + 1));
        kernel(sim, stream, 2 * MS, ptr, 64 * KB, NULL, NULL);
        assert_int_equal(vc_layer_release(c, order[i], stream), VC_OK);
    }
    vc_sim_stream_synchronize(sim, stream);
}

/* A staging cache (staging_cache) with one model of eight 64 KB layers loaded by counted_loader
 * (cl counts the calls, and which ran off the test's thread); their ids in l[]. */
static vc_cache *counted_loader_world(counted_loads *cl, const char *model, vc_backend **sim, vc_stream *stream,
                                      vc_layer_id *l) {
    *cl = (counted_loads){.main_thread = pthread_self()};
    pthread_mutex_init(&cl->lock, NULL);
    pthread_cond_init(&cl->cv, NULL);
    g_loads = cl;
    vc_cache *c = staging_cache(sim, 64 * MB);
    assert_int_equal(vc_sim_stream_create(*sim, stream), VC_OK);
    vc_model_id m = add_model(c, model);
    for (int i = 0; i < 8; i++) {
        cl->ld[i] = (test_loader){.seed = (uint64_t)i + 1};
        vc_layer_desc d = {.name = "layer", .bytes = 64 * KB, .loader = counted_loader, .loader_user = &cl->ld[i]};
        assert_int_equal(vc_layer_register(c, m, &d, &l[i]), VC_OK);
    }
    return c;
}

static void free_counted_loader_world(vc_cache *c, vc_backend *sim, counted_loads *cl) {
    for (int i = 0; i < 8; i++) assert_int_equal(cl->ld[i].calls, 1); /* each loader ran once */
    assert_int_equal(vc_cache_destroy(c), VC_OK);
    assert_no_hazard(sim);
    vc_backend_destroy(sim);
    pthread_cond_destroy(&cl->cv);
    pthread_mutex_destroy(&cl->lock);
}

static void test_stage_ahead_thread(void **state) {
    (void)state;
    counted_loads cl;
    vc_backend *sim;
    vc_stream stream;
    vc_layer_id order[8];
    vc_cache *c = counted_loader_world(&cl, "denoiser", &sim, &stream, order);
    vc_model_id m;
    assert_int_equal(vc_model_find(c, "denoiser", &m), VC_OK);
    assert_int_equal(vc_model_set_order(c, m, order, 8), VC_OK);
    /* The first acquire loads layer 0 itself and hands layers 1..7 to the stager. */
    first_acquire_then_wait(c, &cl, order, 8, stream);
    assert_int_equal(cl.off_main, 7);
    assert_int_equal(get_stats(c).ram_bytes, 8 * 64 * KB);
    finish_pass(c, sim, order, 8, stream);
    vc_stats s = get_stats(c);
    assert_int_equal(s.prefetch_hits, 6); /* layer 1 was staged too late for the first acquire's scan */
    free_counted_loader_world(c, sim, &cl);
}

/* The readahead of a model whose order is not known yet (schedule.c, read_ahead) never calls a
 * loader itself (the acquire that triggered it would wait for the file), but with stage_ahead it
 * hands the loader-only layers it reaches to the stager, and reads them ahead once they are in RAM.
 * Eight loader-backed layers, no order declared, acquired in registration order. */
static void test_readahead_stages_loader_layers(void **state) {
    (void)state;
    counted_loads cl;
    vc_backend *sim;
    vc_stream stream;
    vc_layer_id l[8];
    vc_cache *c = counted_loader_world(&cl, "encoder", &sim, &stream, l);
    void *ptr;
    for (int i = 0; i < 3; i++) { /* loaded by their own acquires; the third starts the readahead */
        assert_int_equal(vc_layer_acquire(c, l[i], stream, &ptr), VC_OK);
        kernel(sim, stream, 2 * MS, ptr, 64 * KB, NULL, NULL);
        assert_int_equal(vc_layer_release(c, l[i], stream), VC_OK);
    }
    /* The stager's loads signal cl.cv; the deadline only turns a readahead that queued nothing into
     * a failure instead of a hang. */
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += 30;
    pthread_mutex_lock(&cl.lock);
    while (cl.calls < 8 && pthread_cond_timedwait(&cl.cv, &cl.lock, &deadline) == 0) {
    }
    int calls = cl.calls;
    pthread_mutex_unlock(&cl.lock);
    assert_int_equal(calls, 8);
    for (int i = 3; i < 8; i++) assert_int_equal(vc_layer_load_ram(c, l[i]), VC_OK); /* (waits for `loading`) */
    assert_int_equal(cl.off_main, 5); /* layers 3-7, on the stager's thread */
    for (int i = 3; i < 8; i++) {
        assert_int_equal(vc_layer_acquire(c, l[i], stream, &ptr), VC_OK);
        assert_true(check_pattern(ptr, 64 * KB, (uint64_t)i + 1));
        kernel(sim, stream, 2 * MS, ptr, 64 * KB, NULL, NULL);
        assert_int_equal(vc_layer_release(c, l[i], stream), VC_OK);
    }
    vc_sim_stream_synchronize(sim, stream);
    vc_stats s = get_stats(c);
    assert_int_equal(s.prefetch_hits, 4); /* layer 3's acquire read 4-7 ahead from RAM */
    free_counted_loader_world(c, sim, &cl);
}

/* Two engine streams (guidance halves or two requests computed at once) using the same weights:
 * a layer held on both is released on each, and the release event must cover both streams' kernels
 * before a later upload reuses its bytes. The simulator's ordering check is the oracle; the device is
 * small enough that every pass evicts and reuses. */
static void test_two_streams_share_weights(void **state) {
    (void)state;
    sim_world w = make_world(8, 64 * KB, 3 * 64 * KB, 200e6, 5e-6, VC_OFFLOAD_MODE_BALANCED, VC_POLICY_PLANNED);
    vc_stream s2;
    assert_int_equal(vc_sim_stream_create(w.sim, &s2), VC_OK);
    for (int pass_i = 0; pass_i < 6; pass_i++)
        for (int i = 0; i < w.n; i++) {
            void *p, *q;
            assert_int_equal(vc_layer_acquire(w.cache, w.layer[i], w.stream, &p), VC_OK);
            assert_int_equal(vc_layer_acquire(w.cache, w.layer[i], s2, &q), VC_OK);
            assert_ptr_equal(p, q);
            double e1, e2;
            /* the second stream's kernel is the longer one: released first, it must still be waited for */
            kernel(w.sim, w.stream, 0.1 * MS, p, w.bytes[i], NULL, &e1);
            kernel(w.sim, s2, (i % 2 ? 2 : 0.5) * MS, q, w.bytes[i], NULL, &e2);
            assert_int_equal(vc_layer_release(w.cache, w.layer[i], s2), VC_OK);
            assert_int_equal(vc_layer_release(w.cache, w.layer[i], w.stream), VC_OK);
            vc_sim_wait_until(w.sim, (e1 < e2 ? e1 : e2) - 0.1 * MS); /* the host runs ahead of both */
        }
    vc_sim_stream_synchronize(w.sim, s2);
    vc_sim_stream_synchronize(w.sim, w.stream);
    assert_true(get_stats(w.cache).vram_evictions[VC_EVICT_FOR_PREFETCH] + get_stats(w.cache).vram_evictions[VC_EVICT_FOR_LOAD] > 0);
    free_world(&w); /* asserts no hazard */
}

/* keep_ram_copy off: an upload's RAM copy goes once the upload lands, so until then the device's
 * copy is the only one being made. A prefetch evicted before it has landed must be written back
 * after its upload, not alongside it (on a GPU the write-back would read the range before the copy
 * filled it: garbage weights kept for good). The simulator's ordering check sees the difference;
 * the bytes read back after are checked too. */
static void test_writeback_of_prefetch_in_flight(void **state) {
    (void)state;
    vc_sim_params p;
    vc_sim_params_init(&p);
    p.device_bytes = 4 * 64 * KB;
    p.h2d_bytes_per_s = p.d2h_bytes_per_s = 100e6; /* a 64 KB copy: 0.66 ms */
    vc_backend *sim;
    assert_int_equal(vc_backend_sim_create(&p, &sim), VC_OK);
    vc_cache_options o = sched_options(sim, VC_OFFLOAD_MODE_BALANCED, VC_POLICY_PLANNED);
    o.keep_ram_copy = 0;
    vc_cache *c;
    assert_int_equal(vc_cache_create(&o, &c), VC_OK);
    vc_stream stream;
    assert_int_equal(vc_sim_stream_create(sim, &stream), VC_OK);
    vc_model_id m = add_model(c, "denoiser");
    test_loader ld[3];
    vc_layer_id order[3];
    add_loader_layers(c, m, "layer", 3, 64 * KB, ld, order);
    assert_int_equal(vc_model_set_order(c, m, order, 3), VC_OK);
    assert_int_equal(vc_model_load_ram(c, m), VC_OK); /* so the next layers can be prefetched */
    void *d;
    assert_int_equal(vc_layer_acquire(c, order[0], stream, &d), VC_OK);
    assert_true(get_stats(c).prefetches >= 1); /* layer 1 is on its way; the host has not waited */
    vc_layer_info info;
    assert_int_equal(vc_layer_get_info(c, order[1], &info), VC_OK);
    assert_int_equal(info.residency, VC_RES_VRAM); /* its RAM copy goes when the upload lands */
    assert_int_equal(vc_layer_offload(c, order[1], VC_OFFLOAD_VRAM), VC_OK); /* written back */
    assert_true(get_stats(c).bytes_d2h >= 64 * KB);
    assert_no_hazard(sim);
    kernel(sim, stream, 1 * MS, d, 64 * KB, NULL, NULL);
    assert_int_equal(vc_layer_release(c, order[0], stream), VC_OK);
    for (int i = 1; i < 3; i++) {
        assert_int_equal(vc_layer_acquire(c, order[i], stream, &d), VC_OK);
        assert_true(check_pattern(d, 64 * KB, (uint64_t)i + 1));
        kernel(sim, stream, 1 * MS, d, 64 * KB, NULL, NULL);
        assert_int_equal(vc_layer_release(c, order[i], stream), VC_OK);
    }
    assert_int_equal(ld[1].calls, 1); /* the written-back copy served: the loader ran once */
    assert_int_equal(vc_cache_destroy(c), VC_OK);
    assert_no_hazard(sim);
    vc_backend_destroy(sim);
}

/* A loader that fails on the stager's thread: nothing is lost (the layer's acquire loads it), and
 * the warning says once, not twice, who failed ("stage ahead: ..."), with the layer and the
 * loader's status. */
typedef struct warnings_seen {
    pthread_mutex_t lock;
    pthread_cond_t cv;
    int n;
    char first[512];
} warnings_seen;

static void note_warning(void *user, vc_log_level level, const char *message) {
    warnings_seen *w = user;
    if (level != VC_LOG_WARN) return;
    pthread_mutex_lock(&w->lock);
    if (!w->n++) snprintf(w->first, sizeof w->first, "%s", message);
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->lock);
}

static void test_stage_ahead_loader_failure(void **state) {
    (void)state;
    counted_loads cl = {.main_thread = pthread_self()};
    pthread_mutex_init(&cl.lock, NULL);
    pthread_cond_init(&cl.cv, NULL);
    g_loads = &cl;
    warnings_seen ws = {.n = 0};
    pthread_mutex_init(&ws.lock, NULL);
    pthread_cond_init(&ws.cv, NULL);
    vc_backend *sim;
    vc_cache *c = staging_cache_logged(&sim, 64 * MB, note_warning, &ws);
    vc_stream stream;
    assert_int_equal(vc_sim_stream_create(sim, &stream), VC_OK);
    vc_model_id m = add_model(c, "denoiser");
    vc_layer_id order[3];
    static const char *const names[] = {"in", "mid", "out"};
    for (int i = 0; i < 3; i++) {
        cl.ld[i] = (test_loader){.seed = (uint64_t)i + 1};
        vc_layer_desc d = {.name = names[i], .bytes = 64 * KB, .loader = counted_loader, .loader_user = &cl.ld[i]};
        assert_int_equal(vc_layer_register(c, m, &d, &order[i]), VC_OK);
    }
    assert_int_equal(vc_model_set_order(c, m, order, 3), VC_OK);
    cl.ld[1].fail_next = 1; /* the stager's call for "mid" fails */
    void *ptr;
    assert_int_equal(vc_layer_acquire(c, order[0], stream, &ptr), VC_OK);
    pthread_mutex_lock(&ws.lock);
    while (ws.n == 0) pthread_cond_wait(&ws.cv, &ws.lock);
    pthread_mutex_unlock(&ws.lock);
    assert_non_null(strstr(ws.first, "stage ahead: the loader of layer 'mid' of model 'denoiser' returned -5"));
    assert_null(strstr(ws.first, "stage ahead: stage ahead"));
    assert_non_null(strstr(ws.first, "(its acquire will load it)"));
    assert_int_equal(vc_layer_release(c, order[0], stream), VC_OK);
    for (int i = 1; i < 3; i++) {
        assert_int_equal(vc_layer_acquire(c, order[i], stream, &ptr), VC_OK);
        assert_true(check_pattern(ptr, 64 * KB, (uint64_t)i + 1));
        assert_int_equal(vc_layer_release(c, order[i], stream), VC_OK);
    }
    assert_int_equal(cl.ld[1].calls, 2); /* failed on the stager, then loaded by the acquire */
    assert_int_equal(vc_cache_destroy(c), VC_OK);
    vc_backend_destroy(sim);
    pthread_cond_destroy(&ws.cv);
    pthread_mutex_destroy(&ws.lock);
    pthread_cond_destroy(&cl.cv);
    pthread_mutex_destroy(&cl.lock);
}

/* stage_ahead on a cache that shares its layers from another (one RAM copy for two GPUs): the owner's
 * loaders run on the sharing cache's stager too, never inside the acquire whose prefetch scan
 * reached them, and the copies land in the owner's RAM pool only. */
static void test_stage_ahead_shared_layers(void **state) {
    (void)state;
    counted_loads cl = {.main_thread = pthread_self()};
    pthread_mutex_init(&cl.lock, NULL);
    pthread_cond_init(&cl.cv, NULL);
    g_loads = &cl;
    vc_backend *host;
    assert_int_equal(vc_backend_host_create(1 * MB, &host), VC_OK);
    vc_cache_options o;
    vc_cache_options_init(&o);
    o.backend = host;
    o.ram_budget = 64 * MB;
    o.working_mem = 0;
    vc_cache *owner;
    assert_int_equal(vc_cache_create(&o, &owner), VC_OK);
    vc_model_id om = add_model(owner, "denoiser");
    vc_backend *sim;
    vc_cache *c = staging_cache(&sim, 0); /* everything it streams comes from the owner's RAM */
    vc_model_id m = add_model(c, "denoiser");
    vc_layer_id order[8];
    for (int i = 0; i < 8; i++) {
        cl.ld[i] = (test_loader){.seed = (uint64_t)i + 1};
        vc_layer_desc d = {.name = "layer", .bytes = 64 * KB, .loader = counted_loader, .loader_user = &cl.ld[i]};
        vc_layer_id ol;
        assert_int_equal(vc_layer_register(owner, om, &d, &ol), VC_OK);
        assert_int_equal(vc_layer_register_shared(c, m, owner, ol, &order[i]), VC_OK);
    }
    assert_int_equal(vc_model_set_order(c, m, order, 8), VC_OK);
    vc_stream stream;
    assert_int_equal(vc_sim_stream_create(sim, &stream), VC_OK);
    first_acquire_then_wait(c, &cl, order, 8, stream);
    assert_int_equal(cl.off_main, 7); /* layer 0 by its acquire; 1..7 by the stager */
    assert_int_equal(get_stats(owner).ram_bytes, 8 * 64 * KB);
    assert_int_equal(get_stats(c).ram_bytes, 0);
    finish_pass(c, sim, order, 8, stream);
    for (int i = 0; i < 8; i++) assert_int_equal(cl.ld[i].calls, 1);
    assert_true(get_stats(c).prefetch_hits >= 6);
    assert_int_equal(vc_cache_destroy(c), VC_OK);
    assert_int_equal(vc_cache_destroy(owner), VC_OK);
    assert_no_hazard(sim);
    vc_backend_destroy(sim);
    vc_backend_destroy(host);
    pthread_cond_destroy(&cl.cv);
    pthread_mutex_destroy(&cl.lock);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_order_learned_and_prefetch_does_not_stall),
        cmocka_unit_test(test_model_running_alone_keeps_its_layers),
        cmocka_unit_test(test_declaring_the_same_order_again_changes_nothing),
        cmocka_unit_test(test_copies_never_overwrite_layers_in_use),
        cmocka_unit_test(test_small_parts_wait_for_the_next_fence),
        cmocka_unit_test(test_copies_never_overwrite_random),
        cmocka_unit_test(test_ram_cache_keeps_what_it_can_of_a_pass),
        cmocka_unit_test(test_readahead_before_the_order_is_known),
        cmocka_unit_test(test_readahead_keeps_layers_ahead),
        cmocka_unit_test(test_readahead_guess_that_fails_is_let_go),
        cmocka_unit_test(test_readahead_in_vain_leaves_in_sequential_mode),
        cmocka_unit_test(test_prefetch_depth_bounds_copies_in_flight),
        cmocka_unit_test(test_changed_order_is_detected),
        cmocka_unit_test(test_layers_used_twice_in_a_pass),
        cmocka_unit_test(test_declared_order),
        cmocka_unit_test(test_never_evicts_held_or_in_flight),
        cmocka_unit_test(test_sequential_mode_keeps_minimum),
        cmocka_unit_test(test_sequential_lookahead_is_in_bytes),
        cmocka_unit_test(test_none_mode_never_evicts),
        cmocka_unit_test(test_model_mode_moves_whole_models),
        cmocka_unit_test(test_model_mode_load_overlaps_compute),
        cmocka_unit_test(test_model_mode_swaps_without_own_evictions),
        cmocka_unit_test(test_model_mode_evicts_the_model_needed_last),
        cmocka_unit_test(test_model_mode_layer_back_into_its_room),
        cmocka_unit_test(test_balanced_threshold),
        cmocka_unit_test(test_unregister_drops_order),
        cmocka_unit_test(test_reservation_during_streaming),
        cmocka_unit_test(test_other_model_leaves_the_region),
        cmocka_unit_test(test_prefetch_for_the_next_image_is_let_go),
        cmocka_unit_test(test_staged_loader_layers_are_prefetched),
        cmocka_unit_test(test_stage_ahead_thread),
        cmocka_unit_test(test_readahead_stages_loader_layers),
        cmocka_unit_test(test_stage_ahead_shared_layers),
        cmocka_unit_test(test_stage_ahead_loader_failure),
        cmocka_unit_test(test_writeback_of_prefetch_in_flight),
        cmocka_unit_test(test_two_streams_share_weights),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
