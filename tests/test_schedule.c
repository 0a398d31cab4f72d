/* The order-aware scheduler on the simulated device: prefetch without stalls, eviction that never
 * takes a held or in-flight layer, order learning and change detection, and the offload modes'
 * memory promises. */
#include <pthread.h>

#include "cache_internal.h" /* white-box checks of the layout: homes and the ring */
#include "test_util.h"
#include "vramcache_backend.h"
#include "vramcache_sim.h"

#define MS 1e-3

typedef struct sim_world {
    vc_backend *sim;
    vc_cache *cache;
    vc_stream stream;
    vc_model_id model;
    vc_layer_id layer[64];
    char *weights[64];
    size_t bytes[64];
    int n;
} sim_world;

/* The options every cache of these tests starts from: 64 MB of RAM, no working memory, 64 KB segments. */
/* A kernel that reads one layer's weights at p: the simulator checks they had arrived (and that no
 * copy overwrites them while it runs); every test ends by asserting it saw no ordering hazard. */
static void kernel(vc_backend *sim, vc_stream stream, double secs, void *p, size_t bytes, double *s, double *e) {
    assert_int_equal(vc_sim_compute_reading(sim, stream, secs, 1, &p, &bytes, s, e), VC_OK);
}

static void assert_no_hazard(vc_backend *sim) {
    char msg[384];
    if (vc_sim_hazards(sim, msg, sizeof msg)) fail_msg("%s", msg);
}

static vc_cache_options sched_options(vc_backend *backend, vc_offload_mode mode, vc_policy policy) {
    vc_cache_options o;
    vc_cache_options_init(&o);
    o.backend = backend;
    o.ram_budget = 64 * MB;
    o.working_mem = 0;
    o.arena_segment_bytes = 64 * KB;
    o.offload_mode = mode;
    o.policy = policy;
    return o;
}

/* n layers of sizes[i] bytes (all `bytes` when sizes is NULL) on a simulated device of `device`
 * bytes, h2d at `bw` bytes/s. */
static sim_world make_world_sized(int n, size_t bytes, const size_t *sizes, size_t device, double bw, double latency,
                                  vc_offload_mode mode, vc_policy policy) {
    sim_world w;
    memset(&w, 0, sizeof w);
    vc_sim_params p;
    vc_sim_params_init(&p);
    p.device_bytes = device;
    p.h2d_bytes_per_s = p.d2h_bytes_per_s = bw;
    p.copy_latency_s = latency;
    assert_int_equal(vc_backend_sim_create(&p, &w.sim), VC_OK);
    vc_cache_options o = sched_options(w.sim, mode, policy);
    assert_int_equal(vc_cache_create(&o, &w.cache), VC_OK);
    assert_int_equal(vc_sim_stream_create(w.sim, &w.stream), VC_OK);
    w.model = add_model(w.cache, "denoiser");
    w.n = n;
    for (int i = 0; i < n; i++) {
        w.bytes[i] = sizes ? sizes[i] : bytes;
        w.weights[i] = malloc(w.bytes[i]);
        fill_pattern(w.weights[i], w.bytes[i], (uint64_t)i + 1);
        w.layer[i] = add_host_layer(w.cache, w.model, "layer", w.weights[i], w.bytes[i]);
    }
    return w;
}

static sim_world make_world(int n, size_t bytes, size_t device, double bw, double latency, vc_offload_mode mode,
                            vc_policy policy) {
    return make_world_sized(n, bytes, NULL, device, bw, latency, mode, policy);
}

static void free_world(sim_world *w) {
    assert_int_equal(vc_cache_destroy(w->cache), VC_OK);
    assert_no_hazard(w->sim);
    vc_backend_destroy(w->sim);
    for (int i = 0; i < w->n; i++) free(w->weights[i]);
}

/* One pass: acquire, compute `compute` seconds, release, each layer in order. Returns the largest
 * gap between one layer's compute ending and the next one's starting (a stall). */
static double pass(sim_world *w, double compute) {
    double prev_end = -1, worst = 0;
    for (int i = 0; i < w->n; i++) {
        void *p;
        assert_int_equal(vc_layer_acquire(w->cache, w->layer[i], w->stream, &p), VC_OK);
        assert_true(check_pattern(p, w->bytes[i], (uint64_t)i + 1));
        double s, e;
        kernel(w->sim, w->stream, compute, p, w->bytes[i], &s, &e);
        if (prev_end >= 0 && s - prev_end > worst) worst = s - prev_end;
        prev_end = e;
        assert_int_equal(vc_layer_release(w->cache, w->layer[i], w->stream), VC_OK);
        vc_sim_wait_until(w->sim, s); /* the host stays about a layer ahead of the device */
    }
    vc_sim_stream_synchronize(w->sim, w->stream);
    return worst;
}

/* Replaces w's cache by one with smart_working_mem over 512 KB of standing working memory, no
 * balanced threshold, logging at INFO to fn (w's layers are registered again by the caller). */
static void smart_cache(sim_world *w, vc_log_fn fn, void *user) {
    assert_int_equal(vc_cache_destroy(w->cache), VC_OK);
    vc_cache_options o = sched_options(w->sim, VC_OFFLOAD_MODE_BALANCED, VC_POLICY_PLANNED);
    o.working_mem = 512 * KB;
    o.smart_working_mem = 1;
    o.offload_max_gpu_memory = 1.0;
    o.log_fn = fn;
    o.log_user = user;
    o.log_level = VC_LOG_INFO;
    assert_int_equal(vc_cache_create(&o, &w->cache), VC_OK);
}

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

/* A denoiser that streams, run after a text encoder: its order is learned as its second pass
 * begins, while the encoder still counts as in use (it ran within two passes' worth of acquires).
 * The recorded pass ran alone, so the plan is made alone, once; it used to be made shared there and
 * again, alone, at the third pass, each time laying the device out anew (the whole model reloaded
 * twice: FLUX.1-dev on 12 GB, 22 GB in each of passes 2 and 3 against 13.5 GB). */
static void test_plan_once_after_an_encoder(void **state) {
    (void)state;
    sim_world w = make_world(16, 64 * KB, 640 * KB, 1e9, 1e-6, VC_OFFLOAD_MODE_BALANCED, VC_POLICY_PLANNED);
    struct denoiser_plans pl = {0, 0, 0};
    assert_int_equal(vc_cache_destroy(w.cache), VC_OK);
    vc_cache_options o = sched_options(w.sim, VC_OFFLOAD_MODE_BALANCED, VC_POLICY_PLANNED);
    o.log_fn = log_denoiser_plans;
    o.log_user = &pl;
    o.log_level = VC_LOG_INFO;
    assert_int_equal(vc_cache_create(&o, &w.cache), VC_OK);
    vc_model_id enc = add_model(w.cache, "encoder");
    vc_layer_id el[4];
    for (int i = 0; i < 4; i++) el[i] = add_host_layer(w.cache, enc, "enc", w.weights[i], w.bytes[i]);
    w.model = add_model(w.cache, "denoiser");
    for (int i = 0; i < w.n; i++) w.layer[i] = add_host_layer(w.cache, w.model, "layer", w.weights[i], w.bytes[i]);
    for (int i = 0; i < 4; i++) {
        void *p;
        assert_int_equal(vc_layer_acquire(w.cache, el[i], w.stream, &p), VC_OK);
        assert_int_equal(vc_layer_release(w.cache, el[i], w.stream), VC_OK);
    }
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
    sim_world w = make_world(16, 64 * KB, 640 * KB, 1e9, 1e-6, VC_OFFLOAD_MODE_BALANCED, VC_POLICY_PLANNED);
    struct denoiser_plans pl = {0, 0, 0};
    assert_int_equal(vc_cache_destroy(w.cache), VC_OK);
    vc_cache_options o = sched_options(w.sim, VC_OFFLOAD_MODE_BALANCED, VC_POLICY_PLANNED);
    o.log_fn = log_denoiser_plans;
    o.log_user = &pl;
    o.log_level = VC_LOG_INFO;
    assert_int_equal(vc_cache_create(&o, &w.cache), VC_OK);
    vc_model_id cn = add_model(w.cache, "controlnet");
    vc_layer_id cl[4];
    for (int i = 0; i < 4; i++) cl[i] = add_host_layer(w.cache, cn, "cn", w.weights[i], w.bytes[i]);
    w.model = add_model(w.cache, "denoiser");
    for (int i = 0; i < w.n; i++) w.layer[i] = add_host_layer(w.cache, w.model, "layer", w.weights[i], w.bytes[i]);
    for (int step = 0; step < 6; step++) {
        for (int i = 0; i < 4; i++) {
            void *p;
            assert_int_equal(vc_layer_acquire(w.cache, cl[i], w.stream, &p), VC_OK);
            assert_true(check_pattern(p, w.bytes[i], (uint64_t)i + 1));
            assert_int_equal(vc_layer_release(w.cache, cl[i], w.stream), VC_OK);
        }
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

typedef struct plan_log {
    int joined;
    size_t kept; /* of the latest group plan */
} plan_log;

static void note_group_plan(void *user, vc_log_level level, const char *msg) {
    (void)level;
    plan_log *p = user;
    p->joined += strstr(msg, "run in turn every step") != NULL;
    const char *k = strstr(msg, "+");
    unsigned long long kept;
    if (k && strstr(msg, "plan for model") && (k = strstr(msg, "keep ")) && sscanf(k, "keep %llu", &kept) == 1)
        p->kept = (size_t)kept;
}

/* Images in a row whose passes reserve their own working memory under smart_working_mem: the
 * encoder none (the standing 512 KB apply), the denoiser 64 KB, the VAE 256 KB. The image's cycle
 * joins as the roomiest pass (the denoiser's) begins, so the group's kept set is sized for the
 * denoiser's room, not for the encoder's or the VAE's. The host runs ahead of the device, so each
 * reservation finds the next pass's prefetches still arriving: it waits for them rather than fail. */
static void test_image_cycle_planned_for_roomiest_pass(void **state) {
    (void)state;
    sim_world w = make_world(24, 48 * KB, 1024 * KB, 1e9, 1e-6, VC_OFFLOAD_MODE_BALANCED, VC_POLICY_PLANNED);
    plan_log log = {0};
    smart_cache(&w, note_group_plan, &log);
    vc_model_id te = add_model(w.cache, "te"), unet = add_model(w.cache, "unet"), vae = add_model(w.cache, "vae");
    for (int i = 0; i < w.n; i++) /* 4 encoder layers, 16 denoiser layers, 4 VAE layers */
        w.layer[i] = add_host_layer(w.cache, i < 4 ? te : i < 20 ? unet : vae, "layer", w.weights[i], w.bytes[i]);
    for (int image = 0; image < 6; image++)
        for (int p = 0; p < 5; p++) { /* te, unet x 3, vae */
            int first = p == 0 ? 0 : p == 4 ? 20 : 4, n = p == 0 || p == 4 ? 4 : 16;
            size_t reserve = p == 0 ? 0 : p == 4 ? 256 * KB : 64 * KB;
            vc_reservation *r = NULL;
            if (reserve) assert_int_equal(vc_reserve_working_mem(w.cache, reserve, 0, &r), VC_OK);
            for (int i = first; i < first + n; i++) {
                void *d;
                assert_int_equal(vc_layer_acquire(w.cache, w.layer[i], w.stream, &d), VC_OK);
                assert_true(check_pattern(d, w.bytes[i], (uint64_t)i + 1));
                kernel(w.sim, w.stream, 2e-5, d, w.bytes[i], NULL, NULL);
                assert_int_equal(vc_layer_release(w.cache, w.layer[i], w.stream), VC_OK);
            }
            if (r) assert_int_equal(vc_release_working_mem(w.cache, r), VC_OK);
        }
    assert_int_equal(log.joined, 1);
    assert_true(log.kept > 768 * KB); /* more than the VAE's pass has room for (768 KB), or the encoder's */
    free_world(&w);
}

/* Replaces w's cache by one with the whole device for weights, logging at INFO to note_group_plan. */
static void logging_cache(sim_world *w, plan_log *log) {
    assert_int_equal(vc_cache_destroy(w->cache), VC_OK);
    vc_cache_options o = sched_options(w->sim, VC_OFFLOAD_MODE_BALANCED, VC_POLICY_PLANNED);
    o.offload_max_gpu_memory = 1.0;
    o.log_fn = note_group_plan;
    o.log_user = log;
    o.log_level = VC_LOG_INFO;
    assert_int_equal(vc_cache_create(&o, &w->cache), VC_OK);
}

/* Two models, each fitting the 768 KB device alone and not together (ten 64 KB layers each: A is
 * layers 0-9 of w, B 10-19), on a cache logging to `log`. */
static sim_world two_model_world(plan_log *log, vc_model_id *a, vc_model_id *b) {
    sim_world w = make_world(20, 64 * KB, 768 * KB, 1e9, 1e-6, VC_OFFLOAD_MODE_BALANCED, VC_POLICY_PLANNED);
    logging_cache(&w, log);
    *a = add_model(w.cache, "a");
    *b = add_model(w.cache, "b");
    for (int i = 0; i < w.n; i++) w.layer[i] = add_host_layer(w.cache, i < 10 ? *a : *b, "l", w.weights[i], w.bytes[i]);
    return w;
}

/* One whole pass of the model whose layers are w's [first, first + n); returns the bytes it moved
 * host to device (its own uploads and what it prefetched). */
static uint64_t model_pass_of(sim_world *w, int first, int n) {
    uint64_t before = get_stats(w->cache).bytes_h2d;
    for (int i = first; i < first + n; i++) {
        void *d;
        assert_int_equal(vc_layer_acquire(w->cache, w->layer[i], w->stream, &d), VC_OK);
        assert_true(check_pattern(d, w->bytes[i], (uint64_t)i + 1));
        kernel(w->sim, w->stream, 2e-5, d, w->bytes[i], NULL, NULL);
        assert_int_equal(vc_layer_release(w->cache, w->layer[i], w->stream), VC_OK);
    }
    vc_sim_stream_synchronize(w->sim, w->stream);
    return get_stats(w->cache).bytes_h2d - before;
}

static uint64_t model_pass(sim_world *w, int first) { return model_pass_of(w, first, 10); }

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

/* Images in a row in which two models each run pass after pass (SDXL's base UNet, then its
 * refiner): planned as one cycle, one kept set would hold part of each and stream the rest at every
 * pass; apart, each keeps its own layers through its run and loads once per image. */
static void test_two_phase_cycle_is_planned_apart(void **state) {
    (void)state;
    plan_log log = {0};
    vc_model_id a, b;
    sim_world w = two_model_world(&log, &a, &b);
    for (int image = 0; image < 6; image++) {
        for (int p = 0; p < 3; p++) {
            uint64_t moved = model_pass(&w, 0);
            if (p > 0 && image > 0) assert_int_equal(moved, 0);
        }
        for (int p = 0; p < 3; p++) {
            uint64_t moved = model_pass(&w, 10);
            if (p > 0 && image > 0) assert_int_equal(moved, 0);
        }
    }
    assert_int_equal(log.joined, 0);
    free_world(&w);
}

/* The same two runs with models that fit together (five 64 KB layers each), and a third model run
 * once per image that does not fit beside them: the image joins as one cycle, which keeps both. */
static void test_two_phase_cycle_that_fits_joins(void **state) {
    (void)state;
    plan_log log = {0};
    sim_world w = make_world(15, 64 * KB, 768 * KB, 1e9, 1e-6, VC_OFFLOAD_MODE_BALANCED, VC_POLICY_PLANNED);
    logging_cache(&w, &log);
    vc_model_id m[3] = {add_model(w.cache, "te"), add_model(w.cache, "a"), add_model(w.cache, "b")};
    for (int i = 0; i < w.n; i++) w.layer[i] = add_host_layer(w.cache, m[i / 5], "l", w.weights[i], w.bytes[i]);
    for (int image = 0; image < 6; image++) {
        model_pass_of(&w, 0, 5);
        for (int p = 0; p < 6; p++) model_pass_of(&w, p < 3 ? 5 : 10, 5);
    }
    assert_int_equal(log.joined, 1);
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

/* Passes whose compute is far below their copies (a decoded token): with room for one streamed
 * layer (vc_cache_set_stream_slots(1)) the cache moves a layer less per pass than with the
 * planner's two, and is no slower (the copies run back to back either way); set back to 0, the
 * next pass is planned as before. Each change takes effect at the next pass. */
static double pass_bytes(sim_world *w, int passes, double compute, double *secs) {
    vc_stats a = get_stats(w->cache);
    double t0 = vc_sim_now(w->sim);
    for (int i = 0; i < passes; i++) pass(w, compute);
    vc_stats b = get_stats(w->cache);
    if (secs) *secs = (vc_sim_now(w->sim) - t0) / passes;
    return (double)(b.bytes_h2d - a.bytes_h2d) / passes;
}

static void test_stream_slots_for_copy_bound_passes(void **state) {
    (void)state;
    /* 12 layers of 64 KB, room for 8: 4 must stream; a copy takes 66 us, a layer computes 2 us */
    sim_world w = make_world(12, 64 * KB, 8 * 64 * KB, 1e9, 10e-6, VC_OFFLOAD_MODE_BALANCED, VC_POLICY_PLANNED);
    double t_auto, t_one;
    pass_bytes(&w, 3, 2e-6, NULL); /* learn the order, plan, settle */
    double b_auto = pass_bytes(&w, 4, 2e-6, &t_auto);
    assert_int_equal(vc_cache_set_stream_slots(w.cache, 1), VC_OK);
    pass_bytes(&w, 2, 2e-6, NULL); /* re-planned at the next pass, then settled */
    double b_one = pass_bytes(&w, 4, 2e-6, &t_one);
    assert_true(b_one <= b_auto - 64 * KB); /* at least a layer less per pass */
    assert_true(b_one >= 4 * 64 * KB);      /* never below what must stream */
    assert_true(t_one <= t_auto * 1.02);    /* and no slower */
    assert_int_equal(vc_cache_set_stream_slots(w.cache, 0), VC_OK);
    pass_bytes(&w, 2, 2e-6, NULL);
    assert_true(pass_bytes(&w, 4, 2e-6, NULL) == b_auto); /* the planner's choice again */
    assert_int_equal(vc_cache_set_stream_slots(w.cache, 9), VC_ERR_INVALID_ARG);
    assert_int_equal(vc_cache_set_stream_slots(NULL, 1), VC_ERR_INVALID_ARG);
    assert_true(get_stats(w.cache).arena_peak_bytes <= 8 * 64 * KB);
    free_world(&w);
    /* at creation: the same option, and its bound */
    vc_backend *b = test_backend_create(1 * MB);
    vc_cache_options o = sched_options(b, VC_OFFLOAD_MODE_BALANCED, VC_POLICY_PLANNED);
    o.stream_slots = 9;
    vc_cache *c = NULL;
    assert_int_equal(vc_cache_create(&o, &c), VC_ERR_INVALID_ARG);
    assert_non_null(strstr(vc_last_error(), "stream_slots 9"));
    o.stream_slots = 1;
    assert_int_equal(vc_cache_create(&o, &c), VC_OK);
    assert_int_equal(vc_cache_destroy(c), VC_OK);
    test_backend_destroy(b);
}

/* Two models of ten 64 KB layers each (w's layers 0-9 and 10-19) on a `device`-byte simulated GPU,
 * copies of 66 us, logging to `log`, the cache measuring its region's room (VC_STREAM_SLOTS_TUNE). */
static sim_world tuned_two_model_world(plan_log *log, size_t device, const char *first, const char *second,
                                       vc_model_id *a, vc_model_id *b) {
    sim_world w = make_world(20, 64 * KB, device, 1e9, 10e-6, VC_OFFLOAD_MODE_BALANCED, VC_POLICY_PLANNED);
    logging_cache(&w, log);
    *a = add_model(w.cache, first);
    *b = add_model(w.cache, second);
    for (int i = 0; i < w.n; i++) w.layer[i] = add_host_layer(w.cache, i < 10 ? *a : *b, "l", w.weights[i], w.bytes[i]);
    assert_int_equal(vc_cache_set_stream_slots(w.cache, VC_STREAM_SLOTS_TUNE), VC_OK);
    return w;
}

/* Passes of `compute` seconds a layer until the stream-slots tuner has chosen; fails past `limit`.
 * Returns the passes it took. */
static int tune_until_settled(sim_world *w, double compute, int limit) {
    for (int i = 1; i <= limit; i++) {
        pass(w, compute);
        int tuning = -1;
        assert_int_equal(vc_cache_get_stream_slots(w->cache, NULL, &tuning), VC_OK);
        if (!tuning) return i;
    }
    fail_msg("the stream-slots tuner did not choose within %d passes", limit);
    return limit;
}

/* VC_STREAM_SLOTS_TUNE measures instead of predicting: on copy-bound passes it finds one slot
 * (fewer bytes, so faster: the same figures as the engine fixing 1); when the passes change (the
 * engine's compute grows a hundredfold) it measures again, and where no room is more than 1%
 * faster it keeps the planner's region. */
static void test_stream_slots_tuned_by_measuring(void **state) {
    (void)state;
    /* the world of test_stream_slots_for_copy_bound_passes: copies of 66 us, compute of 2 us */
    sim_world w = make_world(12, 64 * KB, 8 * 64 * KB, 1e9, 10e-6, VC_OFFLOAD_MODE_BALANCED, VC_POLICY_PLANNED);
    double t_planner, t_tuned;
    pass_bytes(&w, 3, 2e-6, NULL);
    double b_planner = pass_bytes(&w, 4, 2e-6, &t_planner);
    assert_int_equal(vc_cache_set_stream_slots(w.cache, VC_STREAM_SLOTS_TUNE), VC_OK);
    unsigned slots = 99;
    int tuning = 0;
    assert_int_equal(vc_cache_get_stream_slots(w.cache, &slots, &tuning), VC_OK);
    assert_int_equal(slots, 0); /* measuring starts from the planner's region */
    assert_int_equal(tuning, 1);
    int took = tune_until_settled(&w, 2e-6, 40);
    assert_true(took >= 7); /* the planner's region, then 1 and 2 slots: a transition and two passes each */
    assert_int_equal(vc_cache_get_stream_slots(w.cache, &slots, &tuning), VC_OK);
    assert_int_equal(slots, 1);
    double b_tuned = pass_bytes(&w, 4, 2e-6, &t_tuned);
    assert_true(b_tuned <= b_planner - 64 * KB); /* a layer less per pass ... */
    assert_true(b_tuned >= 4 * 64 * KB);         /* never below what must stream ... */
    assert_true(t_tuned < t_planner * 0.95);     /* ... and faster, which is what it measured */
    /* the engine setting it again (at its next generation) changes nothing: the choice stays */
    assert_int_equal(vc_cache_set_stream_slots(w.cache, VC_STREAM_SLOTS_TUNE), VC_OK);
    assert_int_equal(vc_cache_get_stream_slots(w.cache, &slots, &tuning), VC_OK);
    assert_int_equal(slots, 1);
    assert_int_equal(tuning, 0);

    /* The engine's compute grows a hundredfold (a prefill after decoding): the passes take far
     * longer than when tuned, so it measures again; the copies now hide behind compute whatever the
     * room, so none beats the planner's region by its 1%, and that is kept. */
    int retuned = 0;
    for (int i = 0; i < 5 && !retuned; i++) {
        pass(&w, 200e-6);
        assert_int_equal(vc_cache_get_stream_slots(w.cache, NULL, &tuning), VC_OK);
        retuned = tuning;
    }
    assert_true(retuned);
    tune_until_settled(&w, 200e-6, 40);
    assert_int_equal(vc_cache_get_stream_slots(w.cache, &slots, NULL), VC_OK);
    assert_int_not_equal(slots, 1);
    double t_heavy_tuned, t_heavy_planner;
    pass_bytes(&w, 4, 200e-6, &t_heavy_tuned);
    /* Back to decoding: it measures again, but only after twice as many passes off its time (six),
     * so that passes which keep changing do not keep the device being laid out again. */
    int off_passes = 0;
    for (tuning = 0; !tuning && off_passes < 20; off_passes++) {
        pass(&w, 2e-6);
        assert_int_equal(vc_cache_get_stream_slots(w.cache, NULL, &tuning), VC_OK);
    }
    assert_int_equal(off_passes, 7); /* (a pass is timed as the next one starts) */
    tune_until_settled(&w, 2e-6, 40);
    assert_int_equal(vc_cache_get_stream_slots(w.cache, &slots, NULL), VC_OK);
    assert_int_equal(slots, 1);
    assert_int_equal(vc_cache_set_stream_slots(w.cache, 0), VC_OK);
    pass_bytes(&w, 3, 200e-6, NULL);
    pass_bytes(&w, 4, 200e-6, &t_heavy_planner);
    assert_true(t_heavy_tuned <= t_heavy_planner * 1.01); /* never slower than the planner beyond its 1% */
    assert_int_equal(vc_cache_get_stream_slots(w.cache, &slots, &tuning), VC_OK);
    assert_int_equal(slots, 0);
    assert_int_equal(tuning, 0); /* a fixed setting is not measuring */
    assert_true(get_stats(w.cache).arena_peak_bytes <= 8 * 64 * KB);
    free_world(&w);

    /* Only the planned policy in balanced mode has a region to size: elsewhere nothing is measured. */
    sim_world l = make_world(12, 64 * KB, 8 * 64 * KB, 1e9, 10e-6, VC_OFFLOAD_MODE_BALANCED, VC_POLICY_LRU);
    assert_int_equal(vc_cache_set_stream_slots(l.cache, VC_STREAM_SLOTS_TUNE), VC_OK);
    for (int i = 0; i < 12; i++) pass(&l, 2e-6);
    assert_int_equal(vc_cache_get_stream_slots(l.cache, &slots, &tuning), VC_OK);
    assert_int_equal(slots, 0);
    assert_int_equal(tuning, 0);
    free_world(&l);

    /* The setting's bounds, at creation and after */
    vc_backend *b = test_backend_create(1 * MB);
    vc_cache_options o = sched_options(b, VC_OFFLOAD_MODE_BALANCED, VC_POLICY_PLANNED);
    o.stream_slots = VC_STREAM_SLOTS_TUNE - 1;
    vc_cache *c = NULL;
    assert_int_equal(vc_cache_create(&o, &c), VC_ERR_INVALID_ARG);
    assert_non_null(strstr(vc_last_error(), "VC_STREAM_SLOTS_TUNE"));
    o.stream_slots = VC_STREAM_SLOTS_TUNE;
    assert_int_equal(vc_cache_create(&o, &c), VC_OK);
    assert_int_equal(vc_cache_get_stream_slots(c, &slots, &tuning), VC_OK);
    assert_int_equal(slots, 0);
    assert_int_equal(tuning, 1);
    assert_int_equal(vc_cache_set_stream_slots(c, VC_STREAM_SLOTS_TUNE + 1), VC_ERR_INVALID_ARG);
    assert_int_equal(vc_cache_get_stream_slots(NULL, &slots, &tuning), VC_ERR_INVALID_ARG);
    assert_int_equal(vc_cache_get_stream_slots(c, NULL, NULL), VC_OK);
    assert_int_equal(vc_cache_destroy(c), VC_OK);
    test_backend_destroy(b);
}

/* Passes whose every layer has finished uploading before the engine asks for it cannot go faster
 * with any room: the tuner sees that in the planner's passes and tries nothing, so tuning costs no
 * re-layout (no plan evictions after the first) and no slower pass. */
static void test_stream_slots_tuner_leaves_compute_bound_passes_alone(void **state) {
    (void)state;
    sim_world w = make_world(12, 64 * KB, 8 * 64 * KB, 1e9, 10e-6, VC_OFFLOAD_MODE_BALANCED, VC_POLICY_PLANNED);
    assert_int_equal(vc_cache_set_stream_slots(w.cache, VC_STREAM_SLOTS_TUNE), VC_OK);
    double t_first;
    pass_bytes(&w, 3, 500e-6, &t_first); /* learn the order, plan, lay out */
    uint64_t plan_evictions = get_stats(w.cache).vram_evictions[VC_EVICT_PLAN];
    int took = tune_until_settled(&w, 500e-6, 40);
    assert_true(took <= 4);
    unsigned slots = 99;
    assert_int_equal(vc_cache_get_stream_slots(w.cache, &slots, NULL), VC_OK);
    assert_int_equal(slots, 0);
    double t_after;
    pass_bytes(&w, 4, 500e-6, &t_after);
    assert_int_equal(get_stats(w.cache).vram_evictions[VC_EVICT_PLAN], plan_evictions);
    assert_true(t_after <= 12 * 500e-6 * 1.01); /* compute-bound: the pass is its compute */
    free_world(&w);
}

/* On the host backend the tuner times passes with the real clock (CLOCK_MONOTONIC): passes of a
 * few microseconds, as noisy as the machine makes them. Whatever it measures, every pass reads the
 * right bytes, the budget holds, and it comes to a choice (at most four measured passes a room). */
static void test_stream_slots_tuner_on_the_real_clock(void **state) {
    (void)state;
    enum { N = 12 };
    vc_backend *b = test_backend_create(8 * 64 * KB);
    vc_cache_options o = sched_options(b, VC_OFFLOAD_MODE_BALANCED, VC_POLICY_PLANNED);
    o.stream_slots = VC_STREAM_SLOTS_TUNE;
    vc_cache *c;
    assert_int_equal(vc_cache_create(&o, &c), VC_OK);
    vc_model_id m = add_model(c, "denoiser");
    void *w[N];
    vc_layer_id id[N];
    for (int i = 0; i < N; i++) {
        w[i] = malloc(64 * KB);
        fill_pattern(w[i], 64 * KB, (uint64_t)i + 1);
        id[i] = add_host_layer(c, m, "layer", w[i], 64 * KB);
    }
    int settled = 0;
    for (int p = 0; p < 200; p++) {
        for (int i = 0; i < N; i++) {
            void *d;
            assert_int_equal(vc_layer_acquire(c, id[i], NULL, &d), VC_OK);
            assert_true(check_pattern(d, 64 * KB, (uint64_t)i + 1));
            assert_int_equal(vc_layer_release(c, id[i], NULL), VC_OK);
        }
        int tuning = 1;
        assert_int_equal(vc_cache_get_stream_slots(c, NULL, &tuning), VC_OK);
        settled |= !tuning;
    }
    assert_true(settled);
    assert_true(get_stats(c).arena_peak_bytes <= 8 * 64 * KB);
    assert_int_equal(vc_cache_destroy(c), VC_OK);
    test_backend_destroy(b);
    for (int i = 0; i < N; i++) free(w[i]);
}

/* The model whose passes time the tuner goes (unregistered while the tuner measures it): the tuner
 * forgets it and measures the next planned model's passes instead; declaring the order the timing
 * model already runs by changes nothing, and another order starts the measuring again. */
static void test_stream_slots_tuner_outlives_its_timing_model(void **state) {
    (void)state;
    plan_log log = {0};
    vc_model_id a, b;
    /* each model alone is larger than the device: both stream */
    sim_world w = tuned_two_model_world(&log, 512 * KB, "first", "second", &a, &b);
    for (int p = 0; p < 6; p++) model_pass_of(&w, 0, 10); /* a is planned and measured */
    int tuning = 0;
    assert_int_equal(vc_cache_get_stream_slots(w.cache, NULL, &tuning), VC_OK);
    assert_int_equal(tuning, 1);
    assert_int_equal(vc_model_unregister(w.cache, a), VC_OK);
    int p = 0;
    for (; p < 60 && tuning; p++) {
        model_pass_of(&w, 10, 10);
        assert_int_equal(vc_cache_get_stream_slots(w.cache, NULL, &tuning), VC_OK);
    }
    assert_int_equal(tuning, 0); /* b's passes timed it to a choice */
    /* the same order declared: nothing changes, the choice stays */
    assert_int_equal(vc_model_set_order(w.cache, b, w.layer + 10, 10), VC_OK);
    model_pass_of(&w, 10, 10);
    assert_int_equal(vc_cache_get_stream_slots(w.cache, NULL, &tuning), VC_OK);
    assert_int_equal(tuning, 0);
    /* another order declared (an engine that changed its pass: here the layers backwards), and
     * run: measured again */
    vc_layer_id back[10];
    for (int i = 0; i < 10; i++) back[i] = w.layer[19 - i];
    assert_int_equal(vc_model_set_order(w.cache, b, back, 10), VC_OK);
    assert_int_equal(vc_cache_get_stream_slots(w.cache, NULL, &tuning), VC_OK);
    assert_int_equal(tuning, 1);
    for (p = 0; p < 64 && tuning; p++) {
        for (int i = 19; i >= 10; i--) {
            void *d;
            assert_int_equal(vc_layer_acquire(w.cache, w.layer[i], w.stream, &d), VC_OK);
            assert_true(check_pattern(d, w.bytes[i], (uint64_t)i + 1));
            kernel(w.sim, w.stream, 2e-5, d, w.bytes[i], NULL, NULL);
            assert_int_equal(vc_layer_release(w.cache, w.layer[i], w.stream), VC_OK);
        }
        vc_sim_stream_synchronize(w.sim, w.stream);
        assert_int_equal(vc_cache_get_stream_slots(w.cache, NULL, &tuning), VC_OK);
    }
    assert_int_equal(tuning, 0);
    assert_true(get_stats(w.cache).arena_peak_bytes <= 512 * KB);
    free_world(&w);
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

/* With two models in turn every step (a ControlNet and its UNet), the tuner's timing model joins a
 * step group as they are planned as one: the group's passes time the cycle from then on, and the
 * tuner still chooses. */
static void test_stream_slots_tuned_across_a_step_group(void **state) {
    (void)state;
    plan_log log = {0};
    vc_model_id a, b;
    sim_world w = tuned_two_model_world(&log, 640 * KB, "controlnet", "unet", &a, &b);
    (void)a, (void)b;
    int tuning = 1, steps = 0;
    for (; steps < 80 && tuning; steps++) {
        model_pass_of(&w, 0, 10);
        model_pass_of(&w, 10, 10);
        assert_int_equal(vc_cache_get_stream_slots(w.cache, NULL, &tuning), VC_OK);
    }
    assert_int_equal(log.joined, 1);
    assert_int_equal(tuning, 0);
    /* and it stays chosen: passes like these do not start it again */
    for (int i = 0; i < 6; i++) {
        model_pass_of(&w, 0, 10);
        model_pass_of(&w, 10, 10);
    }
    assert_int_equal(vc_cache_get_stream_slots(w.cache, NULL, &tuning), VC_OK);
    assert_int_equal(tuning, 0);
    assert_true(get_stats(w.cache).arena_peak_bytes <= 640 * KB);
    free_world(&w);
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

/* ---- hazards: no copy may overwrite memory a layer's compute is using ------------------------- */

/* A backend that forwards to the simulator and logs each host-to-device copy with the virtual
 * interval it occupies (its end from an event recorded after it; its start from the link's speed). */
typedef struct hz_copy {
    uintptr_t dst;
    size_t bytes;
    double start, end;
} hz_copy;

typedef struct hazard_ctx {
    const vc_backend_ops *in;
    void *ictx;
    double bw, latency;
    void *ev;
    hz_copy log[8192];
    size_t n;
    unsigned joined, parted; /* step groups formed and parted (from the cache's log) */
} hazard_ctx;

#define HZ(c) ((hazard_ctx *)(c))
static int hz_device_alloc(void *c, size_t b, void **p) { return HZ(c)->in->device_alloc(HZ(c)->ictx, b, p); }
static void hz_device_free(void *c, void *p) { HZ(c)->in->device_free(HZ(c)->ictx, p); }
static int hz_host_alloc(void *c, size_t b, void **p, int *pinned) {
    return HZ(c)->in->host_alloc(HZ(c)->ictx, b, p, pinned);
}
static void hz_host_free(void *c, void *p, size_t b, int pinned) { HZ(c)->in->host_free(HZ(c)->ictx, p, b, pinned); }
static int hz_stream_create(void *c, vc_stream *s) { return HZ(c)->in->stream_create(HZ(c)->ictx, s); }
static void hz_stream_destroy(void *c, vc_stream s) { HZ(c)->in->stream_destroy(HZ(c)->ictx, s); }
static int hz_copy_d2h(void *c, void *d, const void *s, size_t b, vc_stream st) {
    return HZ(c)->in->copy_d2h(HZ(c)->ictx, d, s, b, st);
}
static int hz_event_create(void *c, void **e) { return HZ(c)->in->event_create(HZ(c)->ictx, e); }
static void hz_event_destroy(void *c, void *e) { HZ(c)->in->event_destroy(HZ(c)->ictx, e); }
static int hz_event_record(void *c, void *e, vc_stream s) { return HZ(c)->in->event_record(HZ(c)->ictx, e, s); }
static int hz_event_query(void *c, void *e) { return HZ(c)->in->event_query(HZ(c)->ictx, e); }
static int hz_event_synchronize(void *c, void *e) { return HZ(c)->in->event_synchronize(HZ(c)->ictx, e); }
static int hz_stream_wait_event(void *c, vc_stream s, void *e) {
    return HZ(c)->in->stream_wait_event(HZ(c)->ictx, s, e);
}
static int hz_mem_info(void *c, size_t *f, size_t *t) { return HZ(c)->in->mem_info(HZ(c)->ictx, f, t); }
static double hz_now(void *c) { return HZ(c)->in->now(HZ(c)->ictx); }
static double hz_event_time(void *c, void *e) { return HZ(c)->in->event_time(HZ(c)->ictx, e); }
static int hz_copy_h2d(void *c, void *d, const void *s, size_t b, vc_stream st) {
    hazard_ctx *h = c;
    int rc = h->in->copy_h2d(h->ictx, d, s, b, st);
    if (rc == VC_OK && h->n < sizeof h->log / sizeof h->log[0]) {
        h->in->event_record(h->ictx, h->ev, st);
        double end = h->in->event_time(h->ictx, h->ev);
        h->log[h->n++] = (hz_copy){(uintptr_t)d, b, end - h->latency - (double)b / h->bw, end};
    }
    return rc;
}
#undef HZ

static const vc_backend_ops hazard_ops = {
    .abi_version = VC_BACKEND_ABI_VERSION, .name = "hazard", .kind = VC_BACKEND_KIND_GPU,
    .device_alloc = hz_device_alloc, .device_free = hz_device_free, .host_alloc = hz_host_alloc,
    .host_free = hz_host_free, .stream_create = hz_stream_create, .stream_destroy = hz_stream_destroy,
    .copy_h2d = hz_copy_h2d, .copy_d2h = hz_copy_d2h, .event_create = hz_event_create,
    .event_destroy = hz_event_destroy, .event_record = hz_event_record, .event_query = hz_event_query,
    .event_synchronize = hz_event_synchronize, .stream_wait_event = hz_stream_wait_event,
    .mem_info = hz_mem_info, .now = hz_now, .event_time = hz_event_time,
};

typedef struct hz_use {
    uintptr_t ptr;
    size_t bytes;
    double start, end;
} hz_use;

/* A cache (balanced, planned) on the simulator of `device` bytes, seen through the logging backend. */
typedef struct hazard_world {
    vc_backend *sim, *hz;
    hazard_ctx *h;
    vc_cache *c;
    vc_stream stream;
} hazard_world;

static void hz_log(void *user, vc_log_level level, const char *msg) {
    (void)level;
    hazard_ctx *h = user;
    h->joined += strstr(msg, "run in turn every step") != NULL;
    h->parted += strstr(msg, "planned apart again") != NULL;
}

static hazard_world hazard_open(size_t device) {
    hazard_world w;
    vc_sim_params p;
    vc_sim_params_init(&p);
    p.device_bytes = device;
    p.h2d_bytes_per_s = p.d2h_bytes_per_s = 1e9;
    p.copy_latency_s = 1e-6;
    assert_int_equal(vc_backend_sim_create(&p, &w.sim), VC_OK);
    w.h = calloc(1, sizeof *w.h);
    w.h->in = vc_backend_get_ops(w.sim);
    w.h->ictx = vc_backend_get_ctx(w.sim);
    w.h->bw = p.h2d_bytes_per_s;
    w.h->latency = p.copy_latency_s;
    assert_int_equal(w.h->in->event_create(w.h->ictx, &w.h->ev), VC_OK);
    assert_int_equal(vc_backend_create(&hazard_ops, w.h, &w.hz), VC_OK);
    vc_cache_options o = sched_options(w.hz, VC_OFFLOAD_MODE_BALANCED, VC_POLICY_PLANNED);
    o.log_fn = hz_log;
    o.log_user = w.h;
    o.log_level = VC_LOG_INFO;
    assert_int_equal(vc_cache_create(&o, &w.c), VC_OK);
    assert_int_equal(vc_sim_stream_create(w.sim, &w.stream), VC_OK);
    return w;
}

/* Fails the test if any logged copy's interval overlaps a compute on the bytes it writes: a compute
 * that started before the copy must have ended before it began, one that starts after waited. */
static void hazard_check(const hazard_world *w, const hz_use *uses, size_t nu) {
    const hazard_ctx *h = w->h;
    assert_true(h->n < sizeof h->log / sizeof h->log[0]); /* every copy was logged */
    for (size_t k = 0; k < h->n; k++)
        for (size_t u = 0; u < nu; u++) {
            const hz_copy *cp = &h->log[k];
            int overlap = cp->dst < uses[u].ptr + uses[u].bytes && uses[u].ptr < cp->dst + cp->bytes;
            if (overlap && !(uses[u].end <= cp->start + 1e-12 || uses[u].start >= cp->end - 1e-12))
                fail_msg("copy of %zu bytes at %#lx during [%g, %g] overlaps a compute on it during [%g, %g]",
                         cp->bytes, (unsigned long)cp->dst, cp->start, cp->end, uses[u].start, uses[u].end);
        }
}

static void hazard_close(hazard_world *w) {
    assert_int_equal(vc_cache_destroy(w->c), VC_OK);
    vc_backend_destroy(w->hz);
    w->h->in->event_destroy(w->h->ictx, w->h->ev);
    free(w->h);
    assert_no_hazard(w->sim);
    vc_backend_destroy(w->sim);
}

/* One run for the hazard check: n layers of the given sizes and alignments on a device of
 * `device` bytes, each computing `compute` seconds, for `passes` passes. Checks every layer's bytes
 * at every acquire, and that no copy's interval overlaps a compute on the bytes it writes (a
 * compute that started before the copy ended before it began; one that starts after waited for
 * it). Returns how many copies were of part of a layer (fenced copies). */
static size_t hazard_run(int n, const size_t *sizes, const size_t *aligns, size_t device, double compute, int passes) {
    char **weights = calloc((size_t)n, sizeof *weights);
    for (int i = 0; i < n; i++) {
        weights[i] = malloc(sizes[i]);
        fill_pattern(weights[i], sizes[i], (uint64_t)i + 1);
    }
    hazard_world w = hazard_open(device);
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
    for (size_t k = 0; k < w.h->n; k++) {
        int whole = 0;
        for (int i = 0; i < n; i++) whole |= w.h->log[k].bytes == sizes[i];
        partial += !whole;
    }
    hazard_close(&w);
    for (int i = 0; i < n; i++) free(weights[i]);
    free(weights);
    free(ids);
    free(uses);
    return partial;
}

/* Mixed sizes streamed through a small ring with compute shorter than the copies, so copies into
 * the ring start while the layers they replace still compute: the fenced, part-by-part copies of
 * ring placements must still never overwrite a layer in use. */
static void test_copies_never_overwrite_layers_in_use(void **state) {
    (void)state;
    enum { N = 48 };
    size_t sizes[N], aligns[N], total = 0;
    for (int i = 0; i < N; i++) {
        sizes[i] = i % 6 == 5 ? 48 * KB + (size_t)(i % 4) * 4 * KB : 3 * KB + (size_t)((i * 7) % 23) * 256;
        aligns[i] = 256;
        total += sizes[i];
    }
    assert_true(hazard_run(N, sizes, aligns, total * 3 / 4, 4e-6, 10) > 0); /* a 48 KB copy takes 49 us */
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

/* Two models interleaved layer by layer (an adapter's layers used between a UNet's: B's layer i
 * runs after A's layers 2i and 2i+1), together too large for the device: data stays right, no copy
 * overwrites a layer in use, and they are planned as one group that settles to what does not fit
 * plus its streaming region. Irregular: B's layer i runs after A's layer 2i in odd passes, so no
 * two periods agree and no group forms (the data and the hazards are still checked). */
static void interleaved_run(double frac, int check_settles, int irregular) {
    enum { NA = 24, NB = 12, PASSES = 10 };
    size_t sa[NA], sb[NB], total = 0;
    char *wa[NA], *wb[NB];
    for (int i = 0; i < NA; i++) {
        sa[i] = i % 4 == 1 ? 40 * KB : 4 * KB + (size_t)(i % 7) * 512;
        total += sa[i];
        wa[i] = malloc(sa[i]);
        fill_pattern(wa[i], sa[i], (uint64_t)i + 1);
    }
    for (int i = 0; i < NB; i++) {
        sb[i] = 12 * KB + (size_t)(i % 3) * KB;
        total += sb[i];
        wb[i] = malloc(sb[i]);
        fill_pattern(wb[i], sb[i], (uint64_t)i + 101);
    }
    hazard_world w = hazard_open((size_t)((double)total * frac));
    vc_cache *c = w.c;
    vc_stream stream = w.stream;
    vc_backend *sim = w.sim;
    vc_model_id ma = add_model(c, "unet"), mb = add_model(c, "controlnet");
    vc_layer_id ia[NA], ib[NB];
    for (int i = 0; i < NA; i++) ia[i] = add_host_layer(c, ma, "a", wa[i], sa[i]);
    for (int i = 0; i < NB; i++) ib[i] = add_host_layer(c, mb, "b", wb[i], sb[i]);
    static hz_use uses[(NA + NB) * PASSES];
    size_t nu = 0;
    uint64_t per_pass[PASSES];
    for (int pass_i = 0; pass_i < PASSES; pass_i++) {
        uint64_t before = get_stats(c).bytes_h2d;
        for (int i = 0; i < NA; i++) {
            for (int k = 0; k < 2; k++) {
                int isb = k == 1;
                if (isb && i % 2 == (irregular && pass_i % 2 ? 1 : 0)) continue;
                vc_layer_id id = isb ? ib[i / 2] : ia[i];
                size_t bytes = isb ? sb[i / 2] : sa[i];
                uint64_t seed = isb ? (uint64_t)(i / 2) + 101 : (uint64_t)i + 1;
                void *d;
                assert_int_equal(vc_layer_acquire(c, id, stream, &d), VC_OK);
                assert_true(check_pattern(d, bytes, seed));
                double st, en;
                kernel(sim, stream, 10e-6, d, bytes, &st, &en);
                uses[nu++] = (hz_use){(uintptr_t)d, bytes, st, en};
                assert_int_equal(vc_layer_release(c, id, stream), VC_OK);
                vc_sim_wait_until(sim, st);
            }
        }
        per_pass[pass_i] = get_stats(c).bytes_h2d - before;
    }
    vc_sim_stream_synchronize(sim, stream);
    hazard_check(&w, uses, nu);
    /* Their acquires repeat with a period of both passes: recorded twice, they become one group. */
    assert_int_equal(w.h->joined, irregular ? 0 : 1);
    assert_int_equal(w.h->parted, 0);
    if (check_settles) {
        for (int i = PASSES - 3; i < PASSES; i++) assert_int_equal(per_pass[i], per_pass[PASSES - 4]);
        /* what does not fit plus the group's streaming region (planned apart: 1.33x at 60%) */
        uint64_t lb = total - get_stats(c).vram_limit;
        assert_true(c->stream_budget <= 2 * 40 * KB);
        assert_true((double)per_pass[PASSES - 1] <= 1.01 * (double)(lb + c->stream_budget));
    }
    hazard_close(&w);
    for (int i = 0; i < NA; i++) free(wa[i]);
    for (int i = 0; i < NB; i++) free(wb[i]);
}

static void test_interleaved_models(void **state) {
    (void)state;
    interleaved_run(0.6, 1, 0);
    /* At 30% the device is full of prefetches still arriving when an acquire needs room: the
     * acquire waits for them instead of failing with VC_ERR_OUT_OF_VRAM (it used to). */
    interleaved_run(0.3, 0, 0);
    interleaved_run(0.25, 0, 0);
    interleaved_run(0.5, 0, 1);
}

/* Models that run in turn, whole pass after whole pass (a ControlNet, then the UNet it conditions,
 * every step), together too large for the device. Runs `steps` steps; the first model runs only in
 * the steps before `first_stops` (a ControlNet that ends early) and is unregistered after step
 * `unregister_after` (-1: never). Checks every layer's bytes at every acquire and that no copy
 * overlaps a compute on its bytes; returns the bytes moved in each step through per_step. */
enum { TURN_NA = 14, TURN_NB = 30, TURN_STEPS = 16 };
typedef struct turn_world {
    hazard_world w;
    size_t sa[TURN_NA], sb[TURN_NB], total_a, total_b;
    char *wa[TURN_NA], *wb[TURN_NB];
    vc_layer_id ia[TURN_NA], ib[TURN_NB];
    vc_model_id ma, mb;
    int b_runs; /* the UNet's runs per step: 2 for guidance as two passes (CN, U, U) */
    uint64_t per_step[TURN_STEPS];
} turn_world;

static void turn_open(turn_world *t, double frac_of_both) {
    memset(t, 0, sizeof *t);
    for (int i = 0; i < TURN_NA; i++) {
        t->sa[i] = i % 5 == 2 ? 24 * KB : 2 * KB + (size_t)(i % 4) * 768;
        t->total_a += t->sa[i];
        t->wa[i] = malloc(t->sa[i]);
        fill_pattern(t->wa[i], t->sa[i], (uint64_t)i + 1);
    }
    for (int i = 0; i < TURN_NB; i++) {
        t->sb[i] = i % 6 == 3 ? 40 * KB : 3 * KB + (size_t)(i % 5) * 1024;
        t->total_b += t->sb[i];
        t->wb[i] = malloc(t->sb[i]);
        fill_pattern(t->wb[i], t->sb[i], (uint64_t)i + 201);
    }
    t->b_runs = 1;
    t->w = hazard_open((size_t)((double)(t->total_a + t->total_b) * frac_of_both));
    t->ma = add_model(t->w.c, "controlnet");
    t->mb = add_model(t->w.c, "unet");
    for (int i = 0; i < TURN_NA; i++) t->ia[i] = add_host_layer(t->w.c, t->ma, "cn", t->wa[i], t->sa[i]);
    for (int i = 0; i < TURN_NB; i++) t->ib[i] = add_host_layer(t->w.c, t->mb, "unet", t->wb[i], t->sb[i]);
}

static void turn_run(turn_world *t, int first_stops, int unregister_after) {
    static hz_use uses[(TURN_NA + 2 * TURN_NB) * TURN_STEPS];
    size_t nu = 0;
    vc_cache *c = t->w.c;
    for (int step = 0; step < TURN_STEPS; step++) {
        uint64_t before = get_stats(c).bytes_h2d;
        for (int k = 0; k < TURN_NA + t->b_runs * TURN_NB; k++) {
            int isb = k >= TURN_NA, i = isb ? (k - TURN_NA) % TURN_NB : k;
            if (!isb && (step >= first_stops || (unregister_after >= 0 && step > unregister_after))) continue;
            vc_layer_id id = isb ? t->ib[i] : t->ia[i];
            size_t bytes = isb ? t->sb[i] : t->sa[i];
            void *d;
            assert_int_equal(vc_layer_acquire(c, id, t->w.stream, &d), VC_OK);
            assert_true(check_pattern(d, bytes, isb ? (uint64_t)i + 201 : (uint64_t)i + 1));
            double st, en;
            kernel(t->w.sim, t->w.stream, isb ? 6e-6 : 3e-6, d, bytes, &st, &en);
            uses[nu++] = (hz_use){(uintptr_t)d, bytes, st, en};
            assert_int_equal(vc_layer_release(c, id, t->w.stream), VC_OK);
            vc_sim_wait_until(t->w.sim, st);
        }
        if (step == unregister_after) assert_int_equal(vc_model_unregister(c, t->ma), VC_OK);
        t->per_step[step] = get_stats(c).bytes_h2d - before;
    }
    vc_sim_stream_synchronize(t->w.sim, t->w.stream);
    hazard_check(&t->w, uses, nu);
}

static void turn_close(turn_world *t) {
    hazard_close(&t->w);
    for (int i = 0; i < TURN_NA; i++) free(t->wa[i]);
    for (int i = 0; i < TURN_NB; i++) free(t->wb[i]);
}

/* The last steps move the same bytes: what does not fit (lb) plus the plan's streaming region, no
 * more (1% for the rounding of sizes), with a region of at most two of the largest layers; and
 * every layer the plan keeps is resident. */
static void assert_settled(const turn_world *t, uint64_t lb, int from) {
    const vc_cache *c = t->w.c;
    assert_true(c->stream_budget <= 2 * 40 * KB);
    for (int s = from; s < TURN_STEPS; s++) {
        assert_int_equal(t->per_step[s], t->per_step[from]);
        assert_true((double)t->per_step[s] <= 1.01 * (double)(lb + c->stream_budget));
    }
    for (uint32_t i = 0; i < c->layers.count; i++) {
        const layer_t *l = c->layers.slots[i].ptr;
        if (l && l->keep) assert_non_null(l->vblock);
    }
}

static void test_models_in_turn_are_planned_as_one(void **state) {
    (void)state;
    const double fracs[] = {0.75, 0.5, 0.3};
    for (size_t f = 0; f < sizeof fracs / sizeof fracs[0]; f++) {
        turn_world t;
        turn_open(&t, fracs[f]);
        turn_run(&t, TURN_STEPS, -1);
        assert_int_equal(t.w.h->joined, 1);
        assert_int_equal(t.w.h->parted, 0);
        /* One plan over both: it settles to the bytes that cannot fit plus its streaming region
         * (planned apart, each plan assumed the whole device and the kept sets pushed each other
         * out: 1.56x those bytes at 75%, and no steady state at 50%). */
        uint64_t limit = get_stats(t.w.c).vram_limit;
        assert_settled(&t, t.total_a + t.total_b - limit, TURN_STEPS - 5);
        turn_close(&t);
    }
}

/* Guidance run as two UNet passes after one ControlNet pass (InvokeAI's sequential_guidance with
 * a ControlNet): CN, U, U every step. The repeating passes join as one group whose order holds
 * the UNet twice; its plan streams layers used once before layers used twice (each of which moves
 * twice per step), and the bytes settle near the least that can move with the room the plan
 * leaves for kept layers. When guidance goes back to one batched pass (CN, U), the group parts and
 * the pair joins as an ordinary one. */
static double twice_ideal(double a, double b, double room) { /* CN once, U twice, `room` kept */
    return a + 2 * b - (2 * (room < b ? room : b) + (room > b ? room - b : 0));
}

static void test_model_twice_per_step(void **state) {
    (void)state;
    const double fracs[] = {0.75, 0.5, 0.3};
    for (size_t f = 0; f < sizeof fracs / sizeof fracs[0]; f++) {
        turn_world t;
        turn_open(&t, fracs[f]);
        t.b_runs = 2;
        turn_run(&t, TURN_STEPS, -1);
        assert_int_equal(t.w.h->joined, 1);
        assert_int_equal(t.w.h->parted, 0);
        const vc_cache *c = t.w.c;
        size_t streamed = 0, once_kept = 0, twice_streamed = 0;
        for (int i = 0; i < TURN_NA; i++) {
            const layer_t *l = slot_table_get(&c->layers, t.ia[i]);
            assert_int_equal(l->uses, 1);
            streamed += l->keep ? 0 : t.sa[i];
            once_kept += l->keep != 0;
        }
        for (int i = 0; i < TURN_NB; i++) {
            const layer_t *l = slot_table_get(&c->layers, t.ib[i]);
            assert_int_equal(l->uses, 2);
            streamed += l->keep ? 0 : 2 * t.sb[i];
            twice_streamed += !l->keep;
            if (l->keep) assert_non_null(l->vblock);
        }
        if (twice_streamed) assert_int_equal(once_kept, 0); /* layers used once stream first */
        /* A layer used twice is needed at the nearer of its two uses (what Belady and prefetch go
         * by): the scheduler's distance matches a scan of the group's order from where it stands. */
        const model_t *g = c->group;
        assert_non_null(g);
        assert_non_null(g->next_use);
        /* half a step more (the ControlNet and the first UNet pass), so that the UNet's next use is
         * its second pass of this step, not its first of the next */
        for (int k = 0; k < TURN_NA + TURN_NB; k++) {
            int isb = k >= TURN_NA, i = isb ? k - TURN_NA : k;
            vc_layer_id id = isb ? t.ib[i] : t.ia[i];
            void *d;
            assert_int_equal(vc_layer_acquire(t.w.c, id, t.w.stream, &d), VC_OK);
            kernel(t.w.sim, t.w.stream, isb ? 6e-6 : 3e-6, d, isb ? t.sb[i] : t.sa[i], NULL, NULL);
            assert_int_equal(vc_layer_release(t.w.c, id, t.w.stream), VC_OK);
        }
        vc_sim_stream_synchronize(t.w.sim, t.w.stream);
        int checked = 0;
        for (int i = 0; i < TURN_NB; i++) {
            layer_t *l = slot_table_get(&c->layers, t.ib[i]);
            if (l->keep || l->prefetched || !vc__evictable(t.w.c, l)) continue;
            size_t k = 1;
            while (g->order[(g->pos + k) % g->order_n] != l) k++;
            assert_int_equal(vc__sched_streamable(t.w.c, l, k - 1, l), 1);
            assert_int_equal(vc__sched_streamable(t.w.c, l, k, l), 0);
            checked++;
        }
        assert_true(checked > 0 || !twice_streamed);
        /* Settled with a period of at most two steps (where the ring's phase lets a streamed layer
         * survive from one UNet pass to the next on every other step); on average no kept layer is
         * reloaded, and the bytes are near the least any schedule moves with the room the plan
         * leaves beside its streaming region. */
        uint64_t sum = 0;
        for (int s = TURN_STEPS - 4; s < TURN_STEPS; s++) {
            assert_int_equal(t.per_step[s], t.per_step[s - 2]);
            sum += t.per_step[s];
        }
        assert_true(sum <= 4 * (uint64_t)streamed);
        double room = (double)get_stats(t.w.c).vram_limit - (double)c->stream_budget;
        assert_true((double)sum / 4 <= 1.10 * twice_ideal((double)t.total_a, (double)t.total_b, room));
        /* Guidance batched again: the UNet runs once per step; the group parts and the pair joins. */
        if (f == 0) {
            t.b_runs = 1;
            turn_run(&t, TURN_STEPS, -1);
            assert_int_equal(t.w.h->parted, 1);
            assert_int_equal(t.w.h->joined, 2);
            for (int i = 0; i < TURN_NB; i++)
                assert_int_equal(((const layer_t *)slot_table_get(&c->layers, t.ib[i]))->uses, 0);
        }
        turn_close(&t);
    }
}

/* Three models in turn (two ControlNets, then the UNet), each step; the group's order must be their
 * order of running, or it would part at the first step after forming. A text encoder that runs
 * once before the steps never joins. */
static void test_three_models_in_turn(void **state) {
    (void)state;
    enum { NM = 3, NPER = 10, STEPS = 12 };
    static char w[NM][NPER][6 * KB];
    size_t total = 0;
    hazard_world hw = hazard_open(NM * NPER * 6 * KB / 2);
    vc_model_id te = add_model(hw.c, "text_encoder"), m[NM];
    vc_layer_id te_layer = add_host_layer(hw.c, te, "te", w[0][0], 6 * KB);
    vc_layer_id id[NM][NPER];
    for (int k = 0; k < NM; k++) {
        m[k] = add_model(hw.c, k == 0 ? "cn1" : k == 1 ? "cn2" : "unet");
        for (int i = 0; i < NPER; i++) {
            size_t b = 2 * KB + (size_t)((i * 5 + k) % 4) * KB;
            fill_pattern(w[k][i], b, (uint64_t)(k * 100 + i));
            id[k][i] = add_host_layer(hw.c, m[k], "l", w[k][i], b);
            total += b;
        }
    }
    void *d;
    assert_int_equal(vc_layer_acquire(hw.c, te_layer, hw.stream, &d), VC_OK);
    assert_int_equal(vc_layer_release(hw.c, te_layer, hw.stream), VC_OK);
    uint64_t last = 0, prev = 0;
    for (int step = 0; step < STEPS; step++) {
        uint64_t before = get_stats(hw.c).bytes_h2d;
        for (int k = 0; k < NM; k++)
            for (int i = 0; i < NPER; i++) {
                assert_int_equal(vc_layer_acquire(hw.c, id[k][i], hw.stream, &d), VC_OK);
                assert_true(check_pattern(d, 2 * KB + (size_t)((i * 5 + k) % 4) * KB, (uint64_t)(k * 100 + i)));
                kernel(hw.sim, hw.stream, 4e-6, d, 2 * KB + (size_t)((i * 5 + k) % 4) * KB, NULL, NULL);
                assert_int_equal(vc_layer_release(hw.c, id[k][i], hw.stream), VC_OK);
            }
        prev = last;
        last = get_stats(hw.c).bytes_h2d - before;
    }
    assert_int_equal(hw.h->joined, 1);
    assert_int_equal(hw.h->parted, 0);
    assert_int_equal(last, prev); /* settled */
    assert_true(last < total);    /* something stays resident across the three models */
    hazard_close(&hw);
}

/* An image's pipeline (text encoder, the UNet `steps` times, VAE) repeated image after image. With
 * few steps, a whole image fits a group's cycle (64 passes: an 8-step model with two text encoders
 * and a VAE is 11, a 30-step one with one encoder 32) and joins: the encoder and the VAE then
 * stream through the region while the UNet's layers stay, so each image moves no more than the
 * encoder's and the VAE's bytes (planned apart, each stage pushed the UNet out: 1.9x those bytes
 * here). A pipeline of more steps than a cycle holds never joins; a change of step count parts the
 * group, and the new count joins again two images later. Every layer's bytes are checked at every
 * acquire. */
static void run_images(hazard_world *hw, vc_layer_id (*id)[6], char (*w)[6][8 * KB], int images, int steps,
                       uint64_t *last_image_bytes) {
    for (int image = 0; image < images; image++) {
        uint64_t b0 = get_stats(hw->c).bytes_h2d;
        for (int stage = 0; stage < steps + 2; stage++) { /* te, unet x steps, vae */
            int k = stage == 0 ? 0 : stage == steps + 1 ? 2 : 1;
            for (int i = 0; i < 6; i++) {
                void *d;
                assert_int_equal(vc_layer_acquire(hw->c, id[k][i], hw->stream, &d), VC_OK);
                assert_true(check_pattern(d, sizeof w[k][i], (uint64_t)(k * 10 + i)));
                kernel(hw->sim, hw->stream, 4e-6, d, sizeof w[k][i], NULL, NULL);
                assert_int_equal(vc_layer_release(hw->c, id[k][i], hw->stream), VC_OK);
            }
        }
        *last_image_bytes = get_stats(hw->c).bytes_h2d - b0;
    }
}

/* A text encoder, a UNet and a VAE of six 8 KB layers each (w[k], filled), registered in hw. */
static void add_image_models(hazard_world *hw, char (*w)[6][8 * KB], vc_layer_id (*id)[6]) {
    vc_model_id m[3] = {add_model(hw->c, "text_encoder"), add_model(hw->c, "unet"), add_model(hw->c, "vae")};
    for (int k = 0; k < 3; k++)
        for (int i = 0; i < 6; i++) {
            fill_pattern(w[k][i], sizeof w[k][i], (uint64_t)(k * 10 + i));
            id[k][i] = add_host_layer(hw->c, m[k], "l", w[k][i], sizeof w[k][i]);
        }
}

static void test_pipeline_per_image(void **state) {
    (void)state;
    static char w[3][6][8 * KB];
    const int counts[] = {2, 4, 6, 8, 30, 62, 63};
    for (size_t n = 0; n < sizeof counts / sizeof counts[0]; n++) {
        hazard_world hw = hazard_open(3 * 6 * 8 * KB / 2);
        vc_layer_id id[3][6];
        add_image_models(&hw, w, id);
        uint64_t image_bytes = 0;
        run_images(&hw, id, w, 6, counts[n], &image_bytes);
        if (counts[n] + 2 > 64) { /* more passes than a cycle holds */
            assert_int_equal(hw.h->joined, 0);
        } else {
            assert_int_equal(hw.h->joined, 1);
            assert_int_equal(hw.h->parted, 0);
            assert_true(image_bytes <= 2 * 6 * 8 * KB); /* the encoder's and the VAE's, no UNet layer */
        }
        if (counts[n] == 4) { /* the step count changes: parted at once, joined again */
            run_images(&hw, id, w, 6, 3, &image_bytes);
            assert_int_equal(hw.h->parted, 1);
            assert_int_equal(hw.h->joined, 2);
            assert_true(image_bytes <= 2 * 6 * 8 * KB);
        }
        hazard_close(&hw);
    }
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

/* Images whose step counts vary (a user changing them between images): a cycle that forms from two
 * images that happened to look alike parts at the next one; after that a cycle must show three times
 * before it joins, so coincidences of run lengths (4 steps after 6 looks like a repetition of the
 * 4-step image's tail) no longer join and part image after image. Then a steady count joins again. */
static void test_varying_step_counts_join_once(void **state) {
    (void)state;
    static char w[3][6][8 * KB];
    hazard_world hw = hazard_open(3 * 6 * 8 * KB / 2);
    vc_layer_id id[3][6];
    add_image_models(&hw, w, id);
    uint64_t image_bytes = 0;
    const int counts[] = {7, 6, 5, 4, 7, 6, 5, 4, 6, 7, 4, 5, 6, 4, 7, 5};
    for (size_t n = 0; n < sizeof counts / sizeof counts[0]; n++) run_images(&hw, id, w, 1, counts[n], &image_bytes);
    assert_true(hw.h->joined <= 1);
    assert_int_equal(hw.h->parted, hw.h->joined);
    int before = hw.h->joined;
    run_images(&hw, id, w, 5, 4, &image_bytes);
    assert_int_equal(hw.h->joined, before + 1);
    assert_true(image_bytes <= 2 * 6 * 8 * KB); /* the encoder's and the VAE's, no UNet layer */
    hazard_close(&hw);
}

/* A ControlNet inside a few-step image (text encoder, then ControlNet and UNet every step, then the
 * VAE), image after image: the ControlNet and its UNet join every step, and the VAE and the encoder
 * run beside that group. Once the image's cycle has shown twice, it replaces the pair as one group
 * (the history of passes goes on through the pair): the encoder and the VAE then stream through and
 * the pair's layers stay, so an image moves no more than the encoder's and the VAE's bytes. Every
 * layer's bytes are checked at every acquire. */
static void test_controlnet_inside_image_cycle(void **state) {
    (void)state;
    enum { NMOD = 4, NPER = 6, STEPS = 8, IMAGES = 8 };
    static char w[NMOD][NPER][8 * KB];
    hazard_world hw = hazard_open(NMOD * NPER * 8 * KB * 5 / 8); /* the pair and a region fit, not all */
    static const char *const names[NMOD] = {"text_encoder", "controlnet", "unet", "vae"};
    vc_layer_id id[NMOD][NPER];
    for (int k = 0; k < NMOD; k++) {
        vc_model_id m = add_model(hw.c, names[k]);
        for (int i = 0; i < NPER; i++) {
            fill_pattern(w[k][i], sizeof w[k][i], (uint64_t)(k * 10 + i));
            id[k][i] = add_host_layer(hw.c, m, "l", w[k][i], sizeof w[k][i]);
        }
    }
    uint64_t image_bytes = 0;
    int joined_before_last = 0;
    for (int image = 0; image < IMAGES; image++) {
        if (image == IMAGES - 1) joined_before_last = hw.h->joined;
        uint64_t b0 = get_stats(hw.c).bytes_h2d;
        for (int pass = 0; pass < 2 * STEPS + 2; pass++) { /* te, (cn, unet) x steps, vae */
            int k = pass == 0 ? 0 : pass == 2 * STEPS + 1 ? 3 : pass % 2 ? 1 : 2;
            for (int i = 0; i < NPER; i++) {
                void *d;
                assert_int_equal(vc_layer_acquire(hw.c, id[k][i], hw.stream, &d), VC_OK);
                assert_true(check_pattern(d, sizeof w[k][i], (uint64_t)(k * 10 + i)));
                kernel(hw.sim, hw.stream, 4e-6, d, sizeof w[k][i], NULL, NULL);
                assert_int_equal(vc_layer_release(hw.c, id[k][i], hw.stream), VC_OK);
            }
        }
        image_bytes = get_stats(hw.c).bytes_h2d - b0;
    }
    assert_int_equal(hw.h->joined, 2);  /* the pair, then the whole image */
    assert_int_equal(hw.h->parted, 1);  /* the pair, once, for the image */
    assert_int_equal(joined_before_last, 2); /* settled before the last image */
    assert_true(image_bytes <= 2 * NPER * 8 * KB); /* the encoder's and the VAE's, no pair layer */
    hazard_close(&hw);
}

/* A ControlNet that stops before the last steps parts the group at once; the UNet then plans
 * alone and settles to its own bytes. Unregistering a member parts it too. */
static void test_step_group_parts(void **state) {
    (void)state;
    turn_world t;
    turn_open(&t, 0.5);
    turn_run(&t, 8, -1);
    assert_int_equal(t.w.h->joined, 1);
    assert_int_equal(t.w.h->parted, 1);
    uint64_t limit = get_stats(t.w.c).vram_limit;
    assert_true(t.total_b > limit);
    assert_settled(&t, t.total_b - limit, TURN_STEPS - 4);
    turn_close(&t);

    turn_open(&t, 0.5);
    turn_run(&t, TURN_STEPS, 7);
    assert_int_equal(t.w.h->joined, 1);
    assert_int_equal(t.w.h->parted, 1);
    turn_close(&t);
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

/* The tuner with an engine that holds blocks of four layers: rooms of fewer layers than a block
 * only push kept layers out (the block's streamed layers must all be resident together), so it
 * never tries them; it still comes to a choice, and the data and the budget hold throughout. */
static void test_stream_slots_tuner_with_blocks_held_at_once(void **state) {
    (void)state;
    enum { N = 48, BLOCK = 4 };
    size_t sizes[N], total = 0;
    for (int i = 0; i < N; i++) total += sizes[i] = 16 * KB + (size_t)(i % 3) * 4 * KB;
    sim_world w = make_world_sized(N, 0, sizes, total / 2, 1e9, 1e-6, VC_OFFLOAD_MODE_BALANCED, VC_POLICY_PLANNED);
    assert_int_equal(vc_cache_set_stream_slots(w.cache, VC_STREAM_SLOTS_TUNE), VC_OK);
    int tuning = 1, step = 0, tried_below_block = 0;
    for (; step < 80 && tuning; step++) {
        for (int i = 0; i < N; i += BLOCK) {
            void *ptrs[BLOCK];
            for (int j = i; j < i + BLOCK; j++) {
                assert_int_equal(vc_layer_acquire(w.cache, w.layer[j], w.stream, &ptrs[j - i]), VC_OK);
                assert_true(check_pattern(ptrs[j - i], w.bytes[j], (uint64_t)j + 1));
            }
            double s, e;
            assert_int_equal(vc_sim_compute_reading(w.sim, w.stream, BLOCK * 5e-6, BLOCK, ptrs, &w.bytes[i], &s, &e),
                             VC_OK);
            for (int j = i; j < i + BLOCK; j++)
                assert_int_equal(vc_layer_release(w.cache, w.layer[j], w.stream), VC_OK);
            vc_sim_wait_until(w.sim, s);
        }
        vc_sim_stream_synchronize(w.sim, w.stream);
        unsigned slots = 0;
        assert_int_equal(vc_cache_get_stream_slots(w.cache, &slots, &tuning), VC_OK);
        tried_below_block |= slots > 0 && slots < BLOCK;
    }
    assert_int_equal(tuning, 0);
    assert_false(tried_below_block);
    assert_true(get_stats(w.cache).arena_peak_bytes <= total / 2);
    free_world(&w);
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
    /* bad orders change nothing */
    order[1] = order[0];
    assert_int_equal(vc_model_set_order(w.cache, w.model, order, 6), VC_ERR_INVALID_ARG);
    assert_true(last_error_has(w.cache, "twice"));
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

static void test_model_mode_moves_whole_models(void **state) {
    (void)state;
    sim_world w = make_world(3, 64 * KB, 4 * 64 * KB, 1e9, 0, VC_OFFLOAD_MODE_MODEL, VC_POLICY_PLANNED);
    vc_model_id vae = add_model(w.cache, "vae");
    static char vw[3][64 * KB];
    vc_layer_id v[3];
    for (int i = 0; i < 3; i++) {
        fill_pattern(vw[i], sizeof vw[i], 100 + (uint64_t)i);
        v[i] = add_host_layer(w.cache, vae, "v", vw[i], sizeof vw[i]);
    }
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

static void test_stage_ahead_thread(void **state) {
    (void)state;
    counted_loads cl = {.main_thread = pthread_self()};
    pthread_mutex_init(&cl.lock, NULL);
    pthread_cond_init(&cl.cv, NULL);
    g_loads = &cl;
    vc_backend *sim;
    vc_cache *c = staging_cache(&sim, 64 * MB);
    vc_stream stream;
    assert_int_equal(vc_sim_stream_create(sim, &stream), VC_OK);
    vc_model_id m = add_model(c, "denoiser");
    vc_layer_id order[8];
    for (int i = 0; i < 8; i++) {
        cl.ld[i] = (test_loader){.seed = (uint64_t)i + 1};
        vc_layer_desc d = {.name = "layer", .bytes = 64 * KB, .loader = counted_loader, .loader_user = &cl.ld[i]};
        assert_int_equal(vc_layer_register(c, m, &d, &order[i]), VC_OK);
    }
    assert_int_equal(vc_model_set_order(c, m, order, 8), VC_OK);
    /* The first acquire loads layer 0 itself and hands layers 1..7 to the stager. */
    first_acquire_then_wait(c, &cl, order, 8, stream);
    assert_int_equal(cl.off_main, 7);
    assert_int_equal(get_stats(c).ram_bytes, 8 * 64 * KB);
    finish_pass(c, sim, order, 8, stream);
    for (int i = 0; i < 8; i++) assert_int_equal(cl.ld[i].calls, 1); /* each loader ran once */
    vc_stats s = get_stats(c);
    assert_int_equal(s.prefetch_hits, 6); /* layer 1 was staged too late for the first acquire's scan */
    assert_int_equal(vc_cache_destroy(c), VC_OK);
    assert_no_hazard(sim);
    vc_backend_destroy(sim);
    pthread_cond_destroy(&cl.cv);
    pthread_mutex_destroy(&cl.lock);
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
        cmocka_unit_test(test_plan_stable_under_pass_reservations),
        cmocka_unit_test(test_image_cycle_planned_for_roomiest_pass),
        cmocka_unit_test(test_model_running_alone_keeps_its_layers),
        cmocka_unit_test(test_two_phase_cycle_is_planned_apart),
        cmocka_unit_test(test_two_phase_cycle_that_fits_joins),
        cmocka_unit_test(test_lru_streams_everything_planned_keeps_a_set),
        cmocka_unit_test(test_stream_slots_for_copy_bound_passes),
        cmocka_unit_test(test_stream_slots_tuned_by_measuring),
        cmocka_unit_test(test_stream_slots_tuned_across_a_step_group),
        cmocka_unit_test(test_stream_slots_tuner_leaves_compute_bound_passes_alone),
        cmocka_unit_test(test_stream_slots_tuner_on_the_real_clock),
        cmocka_unit_test(test_stream_slots_tuner_outlives_its_timing_model),
        cmocka_unit_test(test_declaring_the_same_order_again_changes_nothing),
        cmocka_unit_test(test_stream_slots_tuner_with_blocks_held_at_once),
        cmocka_unit_test(test_mixed_sizes_settle),
        cmocka_unit_test(test_layout_forced_while_another_model_holds),
        cmocka_unit_test(test_copies_never_overwrite_layers_in_use),
        cmocka_unit_test(test_copies_never_overwrite_random),
        cmocka_unit_test(test_interleaved_models),
        cmocka_unit_test(test_models_in_turn_are_planned_as_one),
        cmocka_unit_test(test_step_group_parts),
        cmocka_unit_test(test_three_models_in_turn),
        cmocka_unit_test(test_pipeline_per_image),
        cmocka_unit_test(test_once_used_layer_outside_region),
        cmocka_unit_test(test_ram_cache_keeps_what_it_can_of_a_pass),
        cmocka_unit_test(test_varying_step_counts_join_once),
        cmocka_unit_test(test_controlnet_inside_image_cycle),
        cmocka_unit_test(test_model_twice_per_step),
        cmocka_unit_test(test_quarter_of_model_fits),
        cmocka_unit_test(test_blocks_held_at_once),
        cmocka_unit_test(test_changed_order_is_detected),
        cmocka_unit_test(test_declared_order),
        cmocka_unit_test(test_never_evicts_held_or_in_flight),
        cmocka_unit_test(test_sequential_mode_keeps_minimum),
        cmocka_unit_test(test_sequential_lookahead_is_in_bytes),
        cmocka_unit_test(test_plan_once_after_an_encoder),
        cmocka_unit_test(test_alone_plan_waits_a_pass_for_a_returning_model),
        cmocka_unit_test(test_none_mode_never_evicts),
        cmocka_unit_test(test_model_mode_moves_whole_models),
        cmocka_unit_test(test_balanced_threshold),
        cmocka_unit_test(test_unregister_drops_order),
        cmocka_unit_test(test_reservation_during_streaming),
        cmocka_unit_test(test_staged_loader_layers_are_prefetched),
        cmocka_unit_test(test_stage_ahead_thread),
        cmocka_unit_test(test_stage_ahead_shared_layers),
        cmocka_unit_test(test_stage_ahead_loader_failure),
        cmocka_unit_test(test_empty_region_gives_way),
        cmocka_unit_test(test_unused_region_share_gives_way),
        cmocka_unit_test(test_region_taken_by_another_model_is_planned_again),
        cmocka_unit_test(test_writeback_of_prefetch_in_flight),
        cmocka_unit_test(test_two_streams_share_weights),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
