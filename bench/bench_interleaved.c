/*
 * Two models interleaved layer by layer on the simulated device: a model A of 48 layers (a quarter
 * of them 40 MB, the rest 4-7 MB) and a model B of 24 layers of 12-14 MB, B's layer i running right
 * after A's layer 2i+1 (as an adapter's layers run between a UNet's, when an engine registers the
 * adapter as a model of its own). Synthetic sizes; every layer computes 1 ms, the link is 25 GB/s.
 * For usable VRAM of 30-80% of both models: bytes moved per pass over the lower bound (both models'
 * bytes - usable VRAM), planned policy and LRU, and the step time over max(compute, bound / link).
 *
 *   bench_interleaved [--json]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vramcache.h"
#include "vramcache_sim.h"

#define MB 1048576.0
enum { NA = 48, NB = 24, PASSES = 16 };

static int no_bytes(void *user, vc_layer_id layer, void *dst, size_t bytes) {
    (void)user, (void)layer, (void)dst, (void)bytes;
    return 0;
}

/* Runs PASSES passes; figures over the second half. Returns 0 on success. */
static int run(double frac, vc_policy policy, double *bytes_ratio, double *time_ratio) {
    size_t sa[NA], sb[NB], total = 0;
    for (int i = 0; i < NA; i++) total += sa[i] = (size_t)((i % 4 == 1 ? 40 : 4 + i % 4) * MB);
    for (int i = 0; i < NB; i++) total += sb[i] = (size_t)((12 + i % 3) * MB);
    const double bw = 25e9, compute = 1e-3;
    vc_sim_params p;
    vc_sim_params_init(&p);
    p.device_bytes = (size_t)(frac * (double)total);
    p.h2d_bytes_per_s = p.d2h_bytes_per_s = bw;
    p.backed = 0;
    vc_backend *sim;
    if (vc_backend_sim_create(&p, &sim) != VC_OK) return -1;
    vc_cache_options o;
    vc_cache_options_init(&o);
    o.backend = sim;
    o.ram_budget = total + 64 * (size_t)MB;
    o.working_mem = 0;
    o.offload_mode = VC_OFFLOAD_MODE_BALANCED;
    o.policy = policy;
    vc_cache *c;
    if (vc_cache_create(&o, &c) != VC_OK) {
        vc_backend_destroy(sim);
        return -1;
    }
    vc_stream s;
    vc_sim_stream_create(sim, &s);
    vc_model_id ma, mb;
    vc_layer_id ia[NA] = {0}, ib[NB] = {0};
    int st = vc_model_register(c, "unet", &ma) | vc_model_register(c, "adapter", &mb);
    for (int i = 0; i < NA && !st; i++) {
        vc_layer_desc d = {.name = "a", .bytes = sa[i], .loader = no_bytes};
        st = vc_layer_register(c, ma, &d, &ia[i]);
    }
    for (int i = 0; i < NB && !st; i++) {
        vc_layer_desc d = {.name = "b", .bytes = sb[i], .loader = no_bytes};
        st = vc_layer_register(c, mb, &d, &ib[i]);
    }
    double t_mid = 0;
    vc_stats s_mid = {0}, s_end;
    for (int pass = 0; pass < PASSES && !st; pass++) {
        if (pass == PASSES / 2) {
            vc_sim_stream_synchronize(sim, s);
            t_mid = vc_sim_now(sim);
            vc_cache_get_stats(c, &s_mid);
        }
        for (int k = 0; k < NA + NB && !st; k++) {
            /* A0 A1 B0 A2 A3 B1 ... */
            int isb = k % 3 == 2;
            vc_layer_id id = isb ? ib[k / 3] : ia[k / 3 * 2 + k % 3];
            void *ptr;
            double t0, t1;
            st = vc_layer_acquire(c, id, s, &ptr);
            if (st) break;
            size_t bytes = isb ? sb[k / 3] : sa[k / 3 * 2 + k % 3];
            vc_sim_compute_reading(sim, s, compute, 1, &ptr, &bytes, &t0, &t1);
            vc_layer_release(c, id, s);
            vc_sim_wait_until(sim, t0);
        }
    }
    char hz[384];
    if (st) {
        fprintf(stderr, "bench_interleaved: %s\n", vc_last_error());
    } else if (vc_sim_hazards(sim, hz, sizeof hz)) { /* figures of a racy schedule mean nothing */
        fprintf(stderr, "bench_interleaved: %s\n", hz);
        st = -1;
    } else {
        vc_sim_stream_synchronize(sim, s);
        vc_cache_get_stats(c, &s_end);
        double n = PASSES - PASSES / 2, lb = (double)total - (double)s_end.vram_limit;
        double t = (vc_sim_now(sim) - t_mid) / n, lbt = (NA + NB) * compute;
        if (lb / bw > lbt) lbt = lb / bw;
        *bytes_ratio = (double)(s_end.bytes_h2d - s_mid.bytes_h2d) / n / lb;
        *time_ratio = t / lbt;
    }
    vc_cache_destroy(c);
    vc_backend_destroy(sim);
    return st ? -1 : 0;
}

int main(int argc, char **argv) {
    int json = argc > 1 && !strcmp(argv[1], "--json");
    if (argc > 1 && !json) {
        fprintf(stderr, "usage: %s [--json]\n", argv[0]);
        return 2;
    }
    const double fracs[] = {0.3, 0.4, 0.5, 0.6, 0.8};
    if (json) printf("{\"benchmark\":\"interleaved\",\"rows\":[");
    else printf("%6s | %10s %10s | %10s %10s\n", "usable", "bytes/LB", "LRU b/LB", "time/LB", "LRU t/LB");
    for (size_t f = 0; f < sizeof fracs / sizeof fracs[0]; f++) {
        double pb, pt, lb, lt;
        if (run(fracs[f], VC_POLICY_PLANNED, &pb, &pt) || run(fracs[f], VC_POLICY_LRU, &lb, &lt)) return 1;
        if (json)
            printf("%s{\"usable_fraction\":%.2f,\"bytes_over_bound\":%.4f,\"lru_bytes_over_bound\":%.4f,"
                   "\"time_over_bound\":%.4f,\"lru_time_over_bound\":%.4f}",
                   f ? "," : "", fracs[f], pb, lb, pt, lt);
        else
            printf("%5.0f%% | %10.3f %10.3f | %10.3f %10.3f\n", fracs[f] * 100, pb, lb, pt, lt);
    }
    if (json) printf("]}\n");
    return 0;
}
