/*
 * The harness bench_interleaved and bench_repeats share: a cache (offload mode balanced, no working
 * memory) on a simulated device of a given size whose memory is not backed (loaders write nothing),
 * a 25 GB/s link, every use of a layer computing 1 ms, and per-pass figures over the second half of
 * the passes against the lower bounds (bytes: the layers' bytes - usable VRAM; time: the larger of
 * the pass's compute and those bytes over the link).
 */
#ifndef VC_BENCH_SIM_PASS_H
#define VC_BENCH_SIM_PASS_H

#include <stdio.h>

#include "vramcache.h"
#include "vramcache_sim.h"

#define BENCH_SIM_BW 25e9
#define BENCH_SIM_COMPUTE 1e-3

typedef struct bench_sim {
    vc_backend *sim;
    vc_cache *c;
    vc_stream s;
    double t_mid;  /* virtual time at the start of the measured half */
    vc_stats mid;  /* the cache's counters then */
} bench_sim;

/* A loader for memory that is not backed: nothing to write. */
static inline int bench_sim_no_bytes(void *user, vc_layer_id layer, void *dst, size_t bytes) {
    (void)user, (void)layer, (void)dst, (void)bytes;
    return 0;
}

/* Opens the device (device_bytes) and a cache on it with RAM for every layer (`total` bytes) and
 * the given policy. Returns 0, or -1 with nothing left open. */
static inline int bench_sim_open(bench_sim *w, size_t device_bytes, size_t total, vc_policy policy) {
    *w = (bench_sim){0};
    vc_sim_params p;
    vc_sim_params_init(&p);
    p.device_bytes = device_bytes;
    p.h2d_bytes_per_s = p.d2h_bytes_per_s = BENCH_SIM_BW;
    p.backed = 0;
    if (vc_backend_sim_create(&p, &w->sim) != VC_OK) return -1;
    vc_cache_options o;
    vc_cache_options_init(&o);
    o.backend = w->sim;
    o.ram_budget = total + 64 * (size_t)1048576;
    o.working_mem = 0;
    o.offload_mode = VC_OFFLOAD_MODE_BALANCED;
    o.policy = policy;
    if (vc_cache_create(&o, &w->c) != VC_OK) {
        vc_backend_destroy(w->sim);
        return -1;
    }
    vc_sim_stream_create(w->sim, &w->s);
    return 0;
}

/* Starts the measured half: the figures count from here. */
static inline void bench_sim_mark(bench_sim *w) {
    vc_sim_stream_synchronize(w->sim, w->s);
    w->t_mid = vc_sim_now(w->sim);
    vc_cache_get_stats(w->c, &w->mid);
}

/* One use of a layer as an engine makes it: acquire, a kernel reading its bytes, release; the host
 * runs ahead no further than the kernel's start. Returns the acquire's status. */
static inline int bench_sim_use(bench_sim *w, vc_layer_id id, size_t bytes) {
    void *ptr;
    double t0;
    int st = vc_layer_acquire(w->c, id, w->s, &ptr);
    if (st) return st;
    vc_sim_compute_reading(w->sim, w->s, BENCH_SIM_COMPUTE, 1, &ptr, &bytes, &t0, NULL);
    vc_layer_release(w->c, id, w->s);
    vc_sim_wait_until(w->sim, t0);
    return VC_OK;
}

/* Ends a run of `passes` passes of `uses` uses each over layers of `total` bytes, whose status so
 * far is `st`: reports a failure or an ordering hazard (the figures of a racy schedule mean
 * nothing) on stderr under `prog`, else sets the ratios (and *end, which may be NULL, to the final
 * counters); closes everything. Returns 0 with figures, else -1. */
static inline int bench_sim_finish(bench_sim *w, const char *prog, int st, double total, int uses, int passes,
                                   double *bytes_ratio, double *time_ratio, vc_stats *end) {
    char hz[384];
    if (st) {
        fprintf(stderr, "%s: %s\n", prog, vc_last_error());
    } else if (vc_sim_hazards(w->sim, hz, sizeof hz)) {
        fprintf(stderr, "%s: %s\n", prog, hz);
        st = -1;
    } else {
        vc_stats s_end;
        vc_sim_stream_synchronize(w->sim, w->s);
        vc_cache_get_stats(w->c, &s_end);
        double n = passes - passes / 2, lb = total - (double)s_end.vram_limit;
        double t = (vc_sim_now(w->sim) - w->t_mid) / n, lbt = uses * BENCH_SIM_COMPUTE;
        if (lb / BENCH_SIM_BW > lbt) lbt = lb / BENCH_SIM_BW;
        *bytes_ratio = (double)(s_end.bytes_h2d - w->mid.bytes_h2d) / n / lb;
        *time_ratio = t / lbt;
        if (end) *end = s_end;
    }
    vc_cache_destroy(w->c);
    vc_backend_destroy(w->sim);
    return st ? -1 : 0;
}

#endif /* VC_BENCH_SIM_PASS_H */
