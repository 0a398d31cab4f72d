/* Plans and their layout (src/plan.c, the streaming region and homes of src/vram_pool.c) on the
 * simulated device: which layers stay, when a plan is made alone or beside another model, when it is
 * made again, the region's room, and layouts that settle. */
#include "sched_world.h"

static void count_plans(void *user, vc_log_level level, const char *msg) {
    (void)level;
    *(int *)user += strstr(msg, "plan for model") != NULL;
}

struct denoiser_plans {
    int plans, shared; /* "plan for model 'denoiser'" lines, and those of the shared shape */
    int groups;        /* step groups formed */
};

static void log_denoiser_plans(void *user, vc_log_level level, const char *msg) {
    (void)level;
    struct denoiser_plans *pl = user;
    pl->groups += strstr(msg, "run in turn every step") != NULL;
    if (!strstr(msg, "plan for model 'denoiser'")) return;
    pl->plans++;
    pl->shared += strstr(msg, "(shared shape)") != NULL;
}

/* A 1 MB denoiser (16 layers of 64 KB, w's) on a 640 KB device and a 256 KB model named `other`
 * (4 layers, ol), on a cache logging the denoiser's plans to pl. */
static sim_world denoiser_and_other(struct denoiser_plans *pl, const char *other, vc_layer_id *ol) {
    sim_world w = make_world(16, 64 * KB, 640 * KB, 1e9, 1e-6, VC_OFFLOAD_MODE_BALANCED, VC_POLICY_PLANNED);
    assert_int_equal(vc_cache_destroy(w.cache), VC_OK);
    vc_cache_options o = sched_options(w.sim, VC_OFFLOAD_MODE_BALANCED, VC_POLICY_PLANNED);
    o.log_fn = log_denoiser_plans;
    o.log_user = pl;
    o.log_level = VC_LOG_INFO;
    assert_int_equal(vc_cache_create(&o, &w.cache), VC_OK);
    vc_model_id om = add_model(w.cache, other);
    for (int i = 0; i < 4; i++) ol[i] = add_host_layer(w.cache, om, other, w.weights[i], w.bytes[i]);
    w.model = add_model(w.cache, "denoiser");
    for (int i = 0; i < w.n; i++) w.layer[i] = add_host_layer(w.cache, w.model, "layer", w.weights[i], w.bytes[i]);
    return w;
}

/* One pass of the other model's 4 layers. */
static void other_pass(sim_world *w, const vc_layer_id *ol) {
    for (int i = 0; i < 4; i++) {
        void *p;
        assert_int_equal(vc_layer_acquire(w->cache, ol[i], w->stream, &p), VC_OK);
        assert_true(check_pattern(p, w->bytes[i], (uint64_t)i + 1));
        assert_int_equal(vc_layer_release(w->cache, ol[i], w->stream), VC_OK);
    }
}

/* A denoiser that streams, run after a text encoder: its order is learned as its second pass
 * begins, while the encoder still counts as in use (it ran within two passes' worth of acquires).
 * The recorded pass ran alone, so the plan is made alone, once; it used to be made shared there and
 * again, alone, at the third pass, each time laying the device out anew (the whole model reloaded
 * twice: FLUX.1-dev on 12 GB, 22 GB in each of passes 2 and 3 against 13.5 GB). */
static void test_plan_once_after_an_encoder(void **state) {
    (void)state;
    struct denoiser_plans pl = {0, 0, 0};
    vc_layer_id el[4];
    sim_world w = denoiser_and_other(&pl, "encoder", el);
    other_pass(&w, el);
    for (int step = 0; step < 6; step++) pass(&w, 20e-6);
    assert_int_equal(pl.plans, 1);
    assert_int_equal(pl.shared, 0);
    free_world(&w);
}

/* The same, with the encoder running again before every pair of denoiser passes (a ControlNet with
 * guidance run as two UNet passes: InvokeAI's sequential_guidance). Its run before the recorded
 * pass looks the same as a text encoder's, so the plan is made alone; when it turns up again the
 * plan stays alone for that pass rather than be made shared there and alone at the pass after (two
 * more whole re-layouts) until the two form a step group, planned under the group's name. */
static void test_alone_plan_waits_a_pass_for_a_returning_model(void **state) {
    (void)state;
    struct denoiser_plans pl = {0, 0, 0};
    vc_layer_id cl[4];
    sim_world w = denoiser_and_other(&pl, "controlnet", cl);
    for (int step = 0; step < 6; step++) {
        other_pass(&w, cl);
        pass(&w, 20e-6);
        pass(&w, 20e-6);
    }
    assert_int_equal(pl.plans, 1);
    assert_int_equal(pl.shared, 0);
    assert_int_equal(pl.groups, 1);
    free_world(&w);
}

/* smart_working_mem, and every pass reserves its own working memory (as an engine does around a
 * denoise or a VAE decode): the first reservation replaces the standing reserve, and the limit the
 * reservation leaves is the one the cache reports and plans with at the next pass start. Computed
 * as if no reservation were active, it read the standing limit there, and every pass re-planned
 * and laid the device out again (reloading the kept set). The plan is made once. (Between passes
 * the standing reserve applies again and the cache goes back under it: smart_partial_loading's
 * rule, docs/configuration.md.) */
static void test_plan_stable_under_pass_reservations(void **state) {
    (void)state;
    sim_world w = make_world(24, 48 * KB, 1024 * KB, 1e9, 1e-6, VC_OFFLOAD_MODE_BALANCED, VC_POLICY_PLANNED);
    int plans = 0;
    smart_cache(&w, count_plans, &plans);
    w.model = add_model(w.cache, "denoiser");
    for (int i = 0; i < w.n; i++) w.layer[i] = add_host_layer(w.cache, w.model, "layer", w.weights[i], w.bytes[i]);
    for (int step = 0; step < 8; step++) {
        vc_reservation *r;
        assert_int_equal(vc_reserve_working_mem(w.cache, 128 * KB, 0, &r), VC_OK);
        assert_int_equal(get_stats(w.cache).vram_limit, 896 * KB); /* 1 MB less this reservation */
        pass(&w, 2e-5);
        assert_int_equal(vc_release_working_mem(w.cache, r), VC_OK);
        assert_int_equal(get_stats(w.cache).vram_limit, 512 * KB); /* the standing reserve again */
    }
    assert_int_equal(plans, 1);
    free_world(&w);
}

static void test_lru_streams_everything_planned_keeps_a_set(void **state) {
    (void)state;
    /* Cyclic access over 10 layers with room for 6: LRU misses on every acquire; the planned policy
     * keeps a fixed set and streams only the rest. */
    double bytes_per_pass[2];
    for (int pol = 0; pol < 2; pol++) {
        sim_world w = make_world(10, 64 * KB, 6 * 64 * KB, 1e9, 10e-6, VC_OFFLOAD_MODE_BALANCED,
                                 pol ? VC_POLICY_LRU : VC_POLICY_PLANNED);
        for (int i = 0; i < 4; i++) pass(&w, 1 * MS);
        vc_stats a = get_stats(w.cache);
        for (int i = 0; i < 4; i++) pass(&w, 1 * MS);
        vc_stats b = get_stats(w.cache);
        bytes_per_pass[pol] = (double)(b.bytes_h2d - a.bytes_h2d) / 4;
        assert_true(b.arena_peak_bytes <= 6 * 64 * KB);
        free_world(&w);
    }
    assert_true(bytes_per_pass[1] >= 10 * 64 * KB);         /* LRU: the whole model each pass */
    assert_true(bytes_per_pass[0] <= 7 * 64 * KB);          /* planned: about what does not fit */
}

/* The settled layout, seen from inside: every kept layer resident at its home in the kept arena
 * (strict; else only those that have a home and are resident), every streamed layer (when
 * resident) in the streaming region; returns the count of kept layers at home. */
static int check_layout(const sim_world *w, int strict) {
    int kept = 0;
    for (int i = 0; i < w->n; i++) {
        const layer_t *l = slot_table_get(&w->cache->layers, w->layer[i]);
        assert_non_null(l);
        if (l->keep && (strict || (l->home_gen && l->vblock))) {
            kept++;
            assert_non_null(l->vblock);
            assert_false(l->in_stream);
            assert_true(l->home_gen != 0);
            assert_int_equal(l->vblock->seg->gen, l->home_gen);
            assert_int_equal(l->vblock->offset, l->home_off);
        } else if (!l->keep && l->vblock && strict) {
            assert_true(l->in_stream);
        }
    }
    return kept;
}

/* A U-Net-like pass of mixed sizes (a few large layers, many small ones of nearly equal sizes) at
 * three quarters of its size: once the plan has settled, every pass moves the same bytes, no kept
 * layer is evicted to open a hole (kept layers have their places; streamed ones pass through the
 * ring), and the bytes per pass stay near what does not fit. */
static void test_mixed_sizes_settle(void **state) {
    (void)state;
    enum { N = 48 };
    size_t sizes[N], total = 0;
    for (int i = 0; i < N; i++) {
        /* small layers of 3 to 9 KB, differing by a grain or two; every sixth a large one */
        sizes[i] = i % 6 == 5 ? 48 * KB + (size_t)(i % 4) * 4 * KB : 3 * KB + (size_t)((i * 7) % 23) * 256;
        total += sizes[i];
    }
    size_t usable = total * 3 / 4;
    sim_world w = make_world_sized(N, 0, sizes, usable, 1e9, 1e-6, VC_OFFLOAD_MODE_BALANCED, VC_POLICY_PLANNED);
    for (int i = 0; i < 6; i++) pass(&w, 20e-6);
    vc_stats a = get_stats(w.cache);
    uint64_t per_pass[6];
    for (int i = 0; i < 6; i++) {
        vc_stats before = get_stats(w.cache);
        pass(&w, 20e-6);
        per_pass[i] = get_stats(w.cache).bytes_h2d - before.bytes_h2d;
    }
    vc_stats b = get_stats(w.cache);
    for (int i = 1; i < 6; i++) assert_int_equal(per_pass[i], per_pass[0]);
    assert_int_equal(b.vram_evictions[VC_EVICT_FRAGMENTATION], a.vram_evictions[VC_EVICT_FRAGMENTATION]);
    assert_int_equal(b.vram_evictions[VC_EVICT_PLAN], a.vram_evictions[VC_EVICT_PLAN]);
    assert_true(per_pass[0] >= total - usable);
    assert_true(per_pass[0] < (total - usable) * 3 / 2); /* LRU would move the whole model */
    assert_true(b.arena_peak_bytes <= usable);
    assert_true(check_layout(&w, 1) >= N / 6); /* at least the large layers stay */
    free_world(&w);
}

/* A layer of another model held across passes: the plan is first made beside that model (shared
 * rules), then again once the model is idle, laid out around the held layer. The pass settles, the
 * held layer stays, and kept layers resident with a home are at it. */
static void test_layout_forced_while_another_model_holds(void **state) {
    (void)state;
    enum { N = 24 };
    size_t sizes[N], total = 0;
    for (int i = 0; i < N; i++) {
        sizes[i] = i % 4 == 3 ? 32 * KB : 4 * KB + (size_t)(i % 5) * 256;
        total += sizes[i];
    }
    static char other_w[8 * KB];
    sim_world w = make_world_sized(N, 0, sizes, total * 3 / 4 + sizeof other_w, 1e9, 1e-6, VC_OFFLOAD_MODE_BALANCED,
                                   VC_POLICY_PLANNED);
    vc_model_id om = add_model(w.cache, "encoder");
    vc_layer_id ol = add_host_layer(w.cache, om, "held", other_w, sizeof other_w);
    void *p;
    assert_int_equal(vc_layer_acquire(w.cache, ol, w.stream, &p), VC_OK); /* held throughout */
    for (int i = 0; i < 6; i++) pass(&w, 20e-6);
    uint64_t per_pass[3];
    for (int i = 0; i < 3; i++) {
        vc_stats before = get_stats(w.cache);
        pass(&w, 20e-6);
        per_pass[i] = get_stats(w.cache).bytes_h2d - before.bytes_h2d;
    }
    assert_int_equal(per_pass[1], per_pass[0]);
    assert_int_equal(per_pass[2], per_pass[0]);
    /* LRU would move it all. (This layout is poor: 0.77 of the model per pass where a quarter does
     * not fit; the plan made beside the encoder, then again once it is idle, around its held
     * layer. Recorded as open work in docs/architecture.md.) */
    assert_true(per_pass[0] < total * 4 / 5);
    check_layout(&w, 0); /* kept layers that are resident with a home are at it */
    const layer_t *held = slot_table_get(&w.cache->layers, ol);
    assert_non_null(held->vblock); /* never evicted while held */
    assert_int_equal(vc_layer_release(w.cache, ol, w.stream), VC_OK);
    free_world(&w);
}

/* Images in a row whose text encoder has one layer far larger than the others (a token embedding,
 * used once per image): sized for it, the cycle's region would be paid at every UNet pass. The
 * plan leaves it out of the region's size; it borrows room from kept UNet layers as it comes,
 * prefetched, and they come back to their homes. Checks every layer's bytes at every acquire, the
 * simulator's ordering check (hazard_close), that the embedding is prefetched (its acquire finds
 * it arriving), and that an image moves less than with a region sized for the
 * embedding would cost. */
static void test_once_used_layer_outside_region(void **state) {
    (void)state;
    enum { TE = 6, UNET = 16, VAE = 6, STEPS = 6, IMAGES = 8 };
    static const size_t te_sizes[TE] = {32 * KB, 4 * KB, 4 * KB, 4 * KB, 4 * KB, 4 * KB};
    static char te[TE][32 * KB], unet[UNET][12 * KB], vae[VAE][4 * KB];
    hazard_world hw = hazard_open(160 * KB);
    vc_model_id m[3] = {add_model(hw.c, "text_encoder"), add_model(hw.c, "unet"), add_model(hw.c, "vae")};
    vc_layer_id tid[TE], uid[UNET], vid[VAE];
    for (int i = 0; i < TE; i++) {
        fill_pattern(te[i], te_sizes[i], (uint64_t)(100 + i));
        tid[i] = add_host_layer(hw.c, m[0], "te", te[i], te_sizes[i]);
    }
    for (int i = 0; i < UNET; i++) {
        fill_pattern(unet[i], sizeof unet[i], (uint64_t)(200 + i));
        uid[i] = add_host_layer(hw.c, m[1], "unet", unet[i], sizeof unet[i]);
    }
    for (int i = 0; i < VAE; i++) {
        fill_pattern(vae[i], sizeof vae[i], (uint64_t)(300 + i));
        vid[i] = add_host_layer(hw.c, m[2], "vae", vae[i], sizeof vae[i]);
    }
    uint64_t image_bytes = 0, embedding_prefetched = 0;
    for (int image = 0; image < IMAGES; image++) {
        vc_stats s0 = get_stats(hw.c);
        for (int stage = 0; stage < STEPS + 2; stage++) {
            int k = stage == 0 ? 0 : stage == STEPS + 1 ? 2 : 1, n = k == 0 ? TE : k == 1 ? UNET : VAE;
            for (int i = 0; i < n; i++) {
                vc_layer_id id = k == 0 ? tid[i] : k == 1 ? uid[i] : vid[i];
                size_t bytes = k == 0 ? te_sizes[i] : k == 1 ? sizeof unet[i] : sizeof vae[i];
                uint64_t seed = (uint64_t)(k == 0 ? 100 + i : k == 1 ? 200 + i : 300 + i);
                uint64_t hits0 = get_stats(hw.c).prefetch_hits;
                void *d;
                assert_int_equal(vc_layer_acquire(hw.c, id, hw.stream, &d), VC_OK);
                assert_true(check_pattern(d, bytes, seed));
                if (k == 0 && i == 0 && image == IMAGES - 1) embedding_prefetched = get_stats(hw.c).prefetch_hits - hits0;
                kernel(hw.sim, hw.stream, 4e-6, d, bytes, NULL, NULL);
                assert_int_equal(vc_layer_release(hw.c, id, hw.stream), VC_OK);
            }
        }
        image_bytes = get_stats(hw.c).bytes_h2d - s0.bytes_h2d;
    }
    assert_int_equal(hw.h->joined, 1);
    assert_int_equal(embedding_prefetched, 1);
    /* 468 KB (the UNet's 16 layers do not fit: about 56 KB of them stream at each of its 6 passes,
     * then the encoder, the VAE and the 32 KB the embedding displaced); with the region sized for
     * the embedding, 576 KB */
    if (image_bytes > 500 * KB) fail_msg("%llu bytes per image", (unsigned long long)image_bytes);
    hazard_close(&hw);
}

/* A denoiser of 8 layers of 64 KB streaming through a 320 KB device in its declared order (a kept
 * set and a ring), after three passes; *steady: the bytes its fourth pass moves. */
static sim_world streaming_denoiser(uint64_t *steady) {
    sim_world w = make_world(8, 64 * KB, 5 * 64 * KB, 1e9, 1e-6, VC_OFFLOAD_MODE_BALANCED, VC_POLICY_PLANNED);
    vc_layer_id order[8];
    for (int i = 0; i < 8; i++) order[i] = w.layer[i];
    assert_int_equal(vc_model_set_order(w.cache, w.model, order, 8), VC_OK);
    for (int k = 0; k < 3; k++) pass(&w, 1e-4);
    assert_true(w.cache->sarena.total > 0);
    uint64_t h2d = get_stats(w.cache).bytes_h2d;
    pass(&w, 1e-4);
    *steady = get_stats(w.cache).bytes_h2d - h2d;
    return w;
}

/* Acquires another model's 256 KB layer (checking its bytes), then runs the denoiser until its
 * region is back and checks that a pass moves what it did before (bytes checked at every acquire). */
static void vae_then_denoiser(sim_world *w, uint64_t steady, uint64_t seed) {
    static uint8_t vae[256 * KB];
    fill_pattern(vae, sizeof vae, seed);
    vc_layer_id big = add_host_layer(w->cache, add_model(w->cache, "vae"), "decoder", vae, sizeof vae);
    void *d;
    assert_int_equal(vc_layer_acquire(w->cache, big, w->stream, &d), VC_OK);
    assert_true(check_pattern(d, sizeof vae, seed));
    kernel(w->sim, w->stream, 1e-4, d, sizeof vae, NULL, NULL);
    assert_int_equal(vc_layer_release(w->cache, big, w->stream), VC_OK);
    pass(w, 1e-4);
    pass(w, 1e-4);
    assert_true(w->cache->sarena.total > 0); /* the region is back */
    uint64_t h2d = get_stats(w->cache).bytes_h2d;
    pass(w, 1e-4);
    assert_int_equal(get_stats(w->cache).bytes_h2d - h2d, steady); /* streaming what it streamed before */
}

/* The streaming region of a model whose layers all left VRAM (vc_model_offload, evictions, a
 * failed copy) stays as its plan sized it, empty. Another model's layer that is not streamed
 * through it must still find room: the region gives back its empty segments when nothing else can
 * be evicted, instead of the acquire failing with VC_ERR_OUT_OF_VRAM on a device holding no
 * weights. */
static void test_empty_region_gives_way(void **state) {
    (void)state;
    uint64_t steady;
    sim_world w = streaming_denoiser(&steady);
    assert_int_equal(vc_model_offload(w.cache, w.model, VC_OFFLOAD_VRAM), VC_OK);
    assert_int_equal(get_stats(w.cache).vram_bytes, 0);
    vae_then_denoiser(&w, steady, 77);
    free_world(&w);
}

/* The same with the region's room never taken: a reservation shrank the region away (its planned
 * size stands until the next plan) and its model was offloaded. The share the plan set aside must
 * not keep the kept arena from growing into an empty device. */
static void test_unused_region_share_gives_way(void **state) {
    (void)state;
    uint64_t steady;
    sim_world w = streaming_denoiser(&steady);
    assert_int_equal(vc_model_offload(w.cache, w.model, VC_OFFLOAD_VRAM), VC_OK);
    vc_reservation *r;
    assert_int_equal(vc_reserve_working_mem(w.cache, 5 * 64 * KB, 0, &r), VC_OK); /* the device's all */
    assert_int_equal(vc_release_working_mem(w.cache, r), VC_OK);
    assert_int_equal(w.cache->sarena.total, 0);
    assert_true(w.cache->stream_budget > 0); /* the plan's share, not taken */
    vae_then_denoiser(&w, steady, 78);
    free_world(&w);
}

/* The same with the denoiser's layers still resident: the other model's acquire takes the room by
 * evicting the region's layers, and the region shrinks as they go. Once it is all gone the
 * denoiser is planned afresh at its next pass, as when the region gives way empty; before, its plan
 * stood without a region and streamed through the kept arena until its budget moved. */
static void test_region_taken_by_another_model_is_planned_again(void **state) {
    (void)state;
    uint64_t steady;
    sim_world w = streaming_denoiser(&steady);
    assert_true(get_stats(w.cache).vram_bytes > 0);
    vae_then_denoiser(&w, steady, 79);
    free_world(&w);
}

/* A model four times the usable VRAM (no size cap holds what must stream with the usual shape's
 * margins): the plan keeps what fits beside its region and streams the rest, about the bytes that
 * do not fit each pass (1.08x here). */
static void test_quarter_of_model_fits(void **state) {
    (void)state;
    enum { N = 40 };
    size_t sizes[N], total = 0;
    for (int i = 0; i < N; i++) total += sizes[i] = 12 * KB + (size_t)(i % 5) * 2 * KB;
    sim_world w = make_world_sized(N, 0, sizes, total / 4, 1e9, 1e-6, VC_OFFLOAD_MODE_BALANCED, VC_POLICY_PLANNED);
    uint64_t before = 0;
    for (int p = 0; p < 10; p++) {
        if (p == 6) before = get_stats(w.cache).bytes_h2d;
        pass(&w, 20e-6);
    }
    double per_pass = (double)(get_stats(w.cache).bytes_h2d - before) / 4;
    double lb = (double)(total - get_stats(w.cache).vram_limit);
    assert_true(per_pass >= lb);
    assert_true(per_pass <= 1.12 * lb);
    free_world(&w);
}

/* An engine that acquires a block of layers, runs them as one kernel and releases them together
 * (group offloading's blocks): the plan sees how many it holds at once and leaves room in the
 * streaming region for the block in use and the next one arriving, so the copies still hide behind
 * compute (with room for a pair only, each block waited for its copies: 1.49x the bound here; 1.06x now). */
static void test_blocks_held_at_once(void **state) {
    (void)state;
    enum { N = 48, BLOCK = 4, STEPS = 10 };
    size_t sizes[N], total = 0;
    for (int i = 0; i < N; i++) total += sizes[i] = 16 * KB + (size_t)(i % 3) * 4 * KB;
    const double bw = 1e9, per_layer = 25e-6; /* a 20 KB copy takes 20 us; a layer computes 25 us */
    sim_world w = make_world_sized(N, 0, sizes, total / 2, bw, 1e-6, VC_OFFLOAD_MODE_BALANCED, VC_POLICY_PLANNED);
    double t_mid = 0;
    uint64_t b_mid = 0;
    for (int step = 0; step < STEPS; step++) {
        if (step == STEPS / 2) {
            vc_sim_stream_synchronize(w.sim, w.stream);
            t_mid = vc_sim_now(w.sim);
            b_mid = get_stats(w.cache).bytes_h2d;
        }
        for (int i = 0; i < N; i += BLOCK) {
            void *ptrs[BLOCK];
            for (int j = i; j < i + BLOCK; j++) {
                assert_int_equal(vc_layer_acquire(w.cache, w.layer[j], w.stream, &ptrs[j - i]), VC_OK);
                assert_true(check_pattern(ptrs[j - i], w.bytes[j], (uint64_t)j + 1));
            }
            double s, e; /* one kernel reads the whole block */
            assert_int_equal(vc_sim_compute_reading(w.sim, w.stream, BLOCK * per_layer, BLOCK, ptrs, &w.bytes[i], &s, &e),
                             VC_OK);
            for (int j = i; j < i + BLOCK; j++)
                assert_int_equal(vc_layer_release(w.cache, w.layer[j], w.stream), VC_OK);
            vc_sim_wait_until(w.sim, s);
        }
    }
    vc_sim_stream_synchronize(w.sim, w.stream);
    double steps = STEPS - STEPS / 2;
    double step_time = (vc_sim_now(w.sim) - t_mid) / steps;
    double moved = (double)(get_stats(w.cache).bytes_h2d - b_mid) / steps;
    double lb = (double)(total - get_stats(w.cache).vram_limit);
    double bound = N * per_layer > lb / bw ? N * per_layer : lb / bw;
    assert_true(step_time <= 1.10 * bound);
    assert_true(moved <= 1.30 * lb); /* the larger region is paid in bytes, within reason */
    free_world(&w);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plan_stable_under_pass_reservations),
        cmocka_unit_test(test_lru_streams_everything_planned_keeps_a_set),
        cmocka_unit_test(test_mixed_sizes_settle),
        cmocka_unit_test(test_layout_forced_while_another_model_holds),
        cmocka_unit_test(test_once_used_layer_outside_region),
        cmocka_unit_test(test_quarter_of_model_fits),
        cmocka_unit_test(test_blocks_held_at_once),
        cmocka_unit_test(test_plan_once_after_an_encoder),
        cmocka_unit_test(test_alone_plan_waits_a_pass_for_a_returning_model),
        cmocka_unit_test(test_empty_region_gives_way),
        cmocka_unit_test(test_unused_region_share_gives_way),
        cmocka_unit_test(test_region_taken_by_another_model_is_planned_again),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
