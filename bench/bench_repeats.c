/*
 * Passes that use a layer more than once, on the simulated device: a model of 40 layers of 8-40 MB
 * (synthetic sizes, 964 MB in all), every use computing 1 ms, a 25 GB/s link, usable VRAM half of
 * the model's bytes. The pass runs its layers in order, with, per pattern:
 *   plain   every layer once (the reference);
 *   shared  layer 5 used again after layer 20 (a module two blocks share);
 *   tied    layer 0 used again at the end (an embedding tied to the output head);
 *   twice   every layer acquired twice in a row (an engine that acquires around each of two kernels);
 *   loop    layers 10-14 run four times in a row (a block run in a loop);
 *   deep    layers 10-12 run sixteen times (more repeats than the model has layers).
 * For each: bytes moved per pass over the lower bound (the model's bytes - usable VRAM, which any
 * schedule must move), planned policy and LRU, the step time over max(compute, bound / link), and
 * how many times the planned cache learned an order. Figures over the second half of 24 passes.
 *
 *   bench_repeats [--json]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vramcache.h"
#include "vramcache_sim.h"

#define MB 1048576.0
enum { N = 40, PASSES = 24, MAX_USES = 4 * N };

static int no_bytes(void *user, vc_layer_id layer, void *dst, size_t bytes) {
    (void)user, (void)layer, (void)dst, (void)bytes;
    return 0;
}

/* The pass of pattern `name` as layer indices; returns its length (0 for an unknown name). */
static int pattern(const char *name, int *seq) {
    int n = 0;
    for (int i = 0; i < N; i++) {
        int times = 1;
        if (!strcmp(name, "loop") && i == 10) {
            for (int r = 0; r < 4; r++)
                for (int j = 10; j <= 14; j++) seq[n++] = j;
            i = 14;
            continue;
        }
        if (!strcmp(name, "deep") && i == 10) {
            for (int r = 0; r < 16; r++)
                for (int j = 10; j <= 12; j++) seq[n++] = j;
            i = 12;
            continue;
        }
        if (!strcmp(name, "twice")) times = 2;
        for (int t = 0; t < times; t++) seq[n++] = i;
        if (!strcmp(name, "shared") && i == 20) seq[n++] = 5;
    }
    if (!strcmp(name, "tied")) seq[n++] = 0;
    return n;
}

typedef struct result {
    double bytes_ratio, time_ratio;
    unsigned long long learned;
} result;

/* Runs PASSES passes of `seq`; figures over the second half. Returns 0 on success. */
static int run(const int *seq, int uses, vc_policy policy, result *r) {
    size_t sizes[N], total = 0;
    for (int i = 0; i < N; i++) total += sizes[i] = (size_t)((8 + (i * 7) % 33) * MB);
    const double bw = 25e9, compute = 1e-3;
    vc_sim_params p;
    vc_sim_params_init(&p);
    p.device_bytes = total / 2;
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
    vc_model_id m;
    vc_layer_id ids[N] = {0};
    int st = vc_model_register(c, "model", &m);
    for (int i = 0; i < N && !st; i++) {
        char name[16];
        snprintf(name, sizeof name, "layer.%d", i);
        vc_layer_desc d = {.name = name, .bytes = sizes[i], .loader = no_bytes, .cost = compute};
        st = vc_layer_register(c, m, &d, &ids[i]);
    }
    double t_mid = 0;
    vc_stats s_mid = {0}, s_end;
    for (int pass = 0; pass < PASSES && !st; pass++) {
        if (pass == PASSES / 2) {
            vc_sim_stream_synchronize(sim, s);
            t_mid = vc_sim_now(sim);
            vc_cache_get_stats(c, &s_mid);
        }
        for (int k = 0; k < uses && !st; k++) {
            void *ptr;
            double t0;
            st = vc_layer_acquire(c, ids[seq[k]], s, &ptr);
            if (st) break;
            vc_sim_compute_reading(sim, s, compute, 1, &ptr, &sizes[seq[k]], &t0, NULL);
            vc_layer_release(c, ids[seq[k]], s);
            vc_sim_wait_until(sim, t0);
        }
    }
    char hz[384];
    if (st) {
        fprintf(stderr, "bench_repeats: %s\n", vc_last_error());
    } else if (vc_sim_hazards(sim, hz, sizeof hz)) { /* figures of a racy schedule mean nothing */
        fprintf(stderr, "bench_repeats: %s\n", hz);
        st = -1;
    } else {
        vc_sim_stream_synchronize(sim, s);
        vc_cache_get_stats(c, &s_end);
        double n = PASSES - PASSES / 2, lb = (double)total - (double)s_end.vram_limit;
        double t = (vc_sim_now(sim) - t_mid) / n, lbt = uses * compute;
        if (lb / bw > lbt) lbt = lb / bw;
        r->bytes_ratio = (double)(s_end.bytes_h2d - s_mid.bytes_h2d) / n / lb;
        r->time_ratio = t / lbt;
        r->learned = (unsigned long long)s_end.orders_learned;
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
    const char *names[] = {"plain", "shared", "tied", "twice", "loop", "deep"};
    if (json) printf("{\"benchmark\":\"repeats\",\"rows\":[");
    else
        printf("%-7s %5s | %10s %10s | %10s %10s | %7s\n", "pass", "uses", "bytes/LB", "LRU b/LB", "time/LB",
               "LRU t/LB", "learned");
    for (size_t k = 0; k < sizeof names / sizeof names[0]; k++) {
        int seq[MAX_USES], uses = pattern(names[k], seq);
        result pl, lru;
        if (run(seq, uses, VC_POLICY_PLANNED, &pl) || run(seq, uses, VC_POLICY_LRU, &lru)) return 1;
        if (json)
            printf("%s{\"pass\":\"%s\",\"uses\":%d,\"bytes_over_bound\":%.4f,\"lru_bytes_over_bound\":%.4f,"
                   "\"time_over_bound\":%.4f,\"lru_time_over_bound\":%.4f,\"orders_learned\":%llu}",
                   k ? "," : "", names[k], uses, pl.bytes_ratio, lru.bytes_ratio, pl.time_ratio, lru.time_ratio,
                   pl.learned);
        else
            printf("%-7s %5d | %10.3f %10.3f | %10.3f %10.3f | %7llu\n", names[k], uses, pl.bytes_ratio,
                   lru.bytes_ratio, pl.time_ratio, lru.time_ratio, pl.learned);
    }
    if (json) printf("]}\n");
    return 0;
}
