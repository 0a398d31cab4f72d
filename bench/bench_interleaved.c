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

#include "bench_sim_pass.h"

#define MB 1048576.0
enum { NA = 48, NB = 24, PASSES = 16 };

/* Runs PASSES passes; figures over the second half. Returns 0 on success. */
static int run(double frac, vc_policy policy, double *bytes_ratio, double *time_ratio) {
    size_t sa[NA], sb[NB], total = 0;
    for (int i = 0; i < NA; i++) total += sa[i] = (size_t)((i % 4 == 1 ? 40 : 4 + i % 4) * MB);
    for (int i = 0; i < NB; i++) total += sb[i] = (size_t)((12 + i % 3) * MB);
    bench_sim w;
    if (bench_sim_open(&w, (size_t)(frac * (double)total), total, policy)) return -1;
    vc_model_id ma, mb;
    vc_layer_id ia[NA] = {0}, ib[NB] = {0};
    int st = vc_model_register(w.c, "unet", &ma) | vc_model_register(w.c, "adapter", &mb);
    for (int i = 0; i < NA && !st; i++) {
        vc_layer_desc d = {.name = "a", .bytes = sa[i], .loader = bench_sim_no_bytes};
        st = vc_layer_register(w.c, ma, &d, &ia[i]);
    }
    for (int i = 0; i < NB && !st; i++) {
        vc_layer_desc d = {.name = "b", .bytes = sb[i], .loader = bench_sim_no_bytes};
        st = vc_layer_register(w.c, mb, &d, &ib[i]);
    }
    for (int pass = 0; pass < PASSES && !st; pass++) {
        if (pass == PASSES / 2) bench_sim_mark(&w);
        for (int k = 0; k < NA + NB && !st; k++) { /* A0 A1 B0 A2 A3 B1 ... */
            int isb = k % 3 == 2, i = isb ? k / 3 : k / 3 * 2 + k % 3;
            st = bench_sim_use(&w, isb ? ib[i] : ia[i], isb ? sb[i] : sa[i]);
        }
    }
    return bench_sim_finish(&w, "bench_interleaved", st, (double)total, NA + NB, PASSES, bytes_ratio, time_ratio,
                            NULL);
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
