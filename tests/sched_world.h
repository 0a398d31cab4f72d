/* What the scheduler's test programs share (test_schedule.c, test_plan.c, test_step_group.c,
 * test_slot_tuner.c): caches on the simulated device (a "world" of one model's layers, with the host
 * staying about a layer ahead of the device), passes over them, log hooks, and a backend that logs
 * every host-to-device copy so tests can check no copy overwrote memory a kernel was reading. */
#ifndef VC_TEST_SCHED_WORLD_H
#define VC_TEST_SCHED_WORLD_H

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

/* A kernel that reads one layer's weights at p: the simulator checks they had arrived (and that no
 * copy overwrites them while it runs); every test ends by asserting it saw no ordering hazard. */
static inline void kernel(vc_backend *sim, vc_stream stream, double secs, void *p, size_t bytes, double *s, double *e) {
    assert_int_equal(vc_sim_compute_reading(sim, stream, secs, 1, &p, &bytes, s, e), VC_OK);
}

static inline void assert_no_hazard(vc_backend *sim) {
    char msg[384];
    if (vc_sim_hazards(sim, msg, sizeof msg)) fail_msg("%s", msg);
}

/* The options every cache of these tests starts from: 64 MB of RAM, no working memory, 64 KB segments. */
static inline vc_cache_options sched_options(vc_backend *backend, vc_offload_mode mode, vc_policy policy) {
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
static inline sim_world make_world_sized(int n, size_t bytes, const size_t *sizes, size_t device, double bw, double latency,
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

static inline sim_world make_world(int n, size_t bytes, size_t device, double bw, double latency, vc_offload_mode mode,
                            vc_policy policy) {
    return make_world_sized(n, bytes, NULL, device, bw, latency, mode, policy);
}

static inline void free_world(sim_world *w) {
    assert_int_equal(vc_cache_destroy(w->cache), VC_OK);
    assert_no_hazard(w->sim);
    vc_backend_destroy(w->sim);
    for (int i = 0; i < w->n; i++) free(w->weights[i]);
}

/* One pass: acquire, compute `compute` seconds, release, each layer in order. Returns the largest
 * gap between one layer's compute ending and the next one's starting (a stall). */
static inline double pass(sim_world *w, double compute) {
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
static inline void smart_cache(sim_world *w, vc_log_fn fn, void *user) {
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

typedef struct plan_log {
    int joined;
    size_t kept; /* of the latest group plan */
} plan_log;

static inline void note_group_plan(void *user, vc_log_level level, const char *msg) {
    (void)level;
    plan_log *p = user;
    p->joined += strstr(msg, "run in turn every step") != NULL;
    const char *k = strstr(msg, "+");
    unsigned long long kept;
    if (k && strstr(msg, "plan for model") && (k = strstr(msg, "keep ")) && sscanf(k, "keep %llu", &kept) == 1)
        p->kept = (size_t)kept;
}

/* Replaces w's cache by one with the whole device for weights, logging at INFO to note_group_plan. */
static inline void logging_cache(sim_world *w, plan_log *log) {
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
static inline sim_world two_model_world(plan_log *log, vc_model_id *a, vc_model_id *b) {
    sim_world w = make_world(20, 64 * KB, 768 * KB, 1e9, 1e-6, VC_OFFLOAD_MODE_BALANCED, VC_POLICY_PLANNED);
    logging_cache(&w, log);
    *a = add_model(w.cache, "a");
    *b = add_model(w.cache, "b");
    for (int i = 0; i < w.n; i++) w.layer[i] = add_host_layer(w.cache, i < 10 ? *a : *b, "l", w.weights[i], w.bytes[i]);
    return w;
}

/* One whole pass of the model whose layers are w's [first, first + n); returns the bytes it moved
 * host to device (its own uploads and what it prefetched). */
static inline uint64_t model_pass_of(sim_world *w, int first, int n) {
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

static inline uint64_t model_pass(sim_world *w, int first) { return model_pass_of(w, first, 10); }

/* `passes` passes of `compute` seconds a layer; returns the bytes moved host to device per pass,
 * and in *secs (when given) the virtual time a pass took. */
static inline double pass_bytes(sim_world *w, int passes, double compute, double *secs) {
    vc_stats a = get_stats(w->cache);
    double t0 = vc_sim_now(w->sim);
    for (int i = 0; i < passes; i++) pass(w, compute);
    vc_stats b = get_stats(w->cache);
    if (secs) *secs = (vc_sim_now(w->sim) - t0) / passes;
    return (double)(b.bytes_h2d - a.bytes_h2d) / passes;
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
    unsigned plans;          /* plans made, any model's or group's */
} hazard_ctx;

#define HZ(c) ((hazard_ctx *)(c))

static inline int hz_device_alloc(void *c, size_t b, void **p) { return HZ(c)->in->device_alloc(HZ(c)->ictx, b, p); }
static inline void hz_device_free(void *c, void *p) { HZ(c)->in->device_free(HZ(c)->ictx, p); }
static inline int hz_host_alloc(void *c, size_t b, void **p, int *pinned) {
    return HZ(c)->in->host_alloc(HZ(c)->ictx, b, p, pinned);
}

static inline void hz_host_free(void *c, void *p, size_t b, int pinned) { HZ(c)->in->host_free(HZ(c)->ictx, p, b, pinned); }
static inline int hz_stream_create(void *c, vc_stream *s) { return HZ(c)->in->stream_create(HZ(c)->ictx, s); }
static inline void hz_stream_destroy(void *c, vc_stream s) { HZ(c)->in->stream_destroy(HZ(c)->ictx, s); }
static inline int hz_copy_d2h(void *c, void *d, const void *s, size_t b, vc_stream st) {
    return HZ(c)->in->copy_d2h(HZ(c)->ictx, d, s, b, st);
}

static inline int hz_event_create(void *c, void **e) { return HZ(c)->in->event_create(HZ(c)->ictx, e); }
static inline void hz_event_destroy(void *c, void *e) { HZ(c)->in->event_destroy(HZ(c)->ictx, e); }
static inline int hz_event_record(void *c, void *e, vc_stream s) { return HZ(c)->in->event_record(HZ(c)->ictx, e, s); }
static inline int hz_event_query(void *c, void *e) { return HZ(c)->in->event_query(HZ(c)->ictx, e); }
static inline int hz_event_synchronize(void *c, void *e) { return HZ(c)->in->event_synchronize(HZ(c)->ictx, e); }
static inline int hz_stream_wait_event(void *c, vc_stream s, void *e) {
    return HZ(c)->in->stream_wait_event(HZ(c)->ictx, s, e);
}

static inline int hz_mem_info(void *c, size_t *f, size_t *t) { return HZ(c)->in->mem_info(HZ(c)->ictx, f, t); }
static inline double hz_now(void *c) { return HZ(c)->in->now(HZ(c)->ictx); }
static inline double hz_event_time(void *c, void *e) { return HZ(c)->in->event_time(HZ(c)->ictx, e); }
static inline int hz_copy_h2d(void *c, void *d, const void *s, size_t b, vc_stream st) {
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

/* A cache (balanced, planned) on the simulator of `device` bytes, seen through the logging backend.
 * Fenced copies are split at every occupant (copy_part_min_bytes 0, the most parts and so the most
 * orderings to get wrong) unless hazard_open_parts says otherwise. */
typedef struct hazard_world {
    vc_backend *sim, *hz;
    hazard_ctx *h;
    vc_cache *c;
    vc_stream stream;
} hazard_world;

static inline void hz_log(void *user, vc_log_level level, const char *msg) {
    (void)level;
    hazard_ctx *h = user;
    h->joined += strstr(msg, "run in turn every step") != NULL;
    h->parted += strstr(msg, "planned apart again") != NULL;
    h->plans += strstr(msg, "plan for model") != NULL;
}

static inline hazard_world hazard_open_parts(size_t device, size_t copy_part_min) {
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
    o.copy_part_min_bytes = copy_part_min;
    o.log_level = VC_LOG_INFO;
    assert_int_equal(vc_cache_create(&o, &w.c), VC_OK);
    assert_int_equal(vc_sim_stream_create(w.sim, &w.stream), VC_OK);
    return w;
}

static inline hazard_world hazard_open(size_t device) { return hazard_open_parts(device, 0); }

/* Fails the test if any logged copy's interval overlaps a compute on the bytes it writes: a compute
 * that started before the copy must have ended before it began, one that starts after waited. */
static inline void hazard_check(const hazard_world *w, const hz_use *uses, size_t nu) {
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

static inline void hazard_close(hazard_world *w) {
    assert_int_equal(vc_cache_destroy(w->c), VC_OK);
    vc_backend_destroy(w->hz);
    w->h->in->event_destroy(w->h->ictx, w->h->ev);
    free(w->h);
    assert_no_hazard(w->sim);
    vc_backend_destroy(w->sim);
}

#endif
