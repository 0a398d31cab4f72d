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

#include "bench_sim_pass.h"

#define MB 1048576.0
enum { N = 40, PASSES = 24, MAX_USES = 4 * N };

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
    bench_sim w;
    if (bench_sim_open(&w, total / 2, total, policy)) return -1;
    vc_model_id m;
    vc_layer_id ids[N] = {0};
    int st = vc_model_register(w.c, "model", &m);
    for (int i = 0; i < N && !st; i++) {
        char name[16];
        snprintf(name, sizeof name, "layer.%d", i);
        vc_layer_desc d = {.name = name, .bytes = sizes[i], .loader = bench_sim_no_bytes, .cost = BENCH_SIM_COMPUTE};
        st = vc_layer_register(w.c, m, &d, &ids[i]);
    }
    for (int pass = 0; pass < PASSES && !st; pass++) {
        if (pass == PASSES / 2) bench_sim_mark(&w);
        for (int k = 0; k < uses && !st; k++) st = bench_sim_use(&w, ids[seq[k]], sizes[seq[k]]);
    }
    vc_stats end;
    if (bench_sim_finish(&w, "bench_repeats", st, (double)total, uses, PASSES, &r->bytes_ratio, &r->time_ratio, &end))
        return -1;
    r->learned = (unsigned long long)end.orders_learned;
    return 0;
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
