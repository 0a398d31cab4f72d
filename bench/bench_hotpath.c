/*
 * Hot-path cost of the cache's bookkeeping, as the number of registered layers grows.
 *
 *  - hit:  acquire + release of a resident layer (the common case inside a denoising step);
 *  - miss: acquire + release of a layer that is not resident, evicting the least recently used
 *          one to make room — with the copy itself excluded (the backend's copy is a no-op), so only
 *          the library's bookkeeping is timed;
 *  - re-read: a sweep under the planned policy with VRAM for a quarter of the layers and a RAM
 *          cache for half, so each pass streams three quarters and its loaders (which copy
 *          nothing) read a third of those again: every load drops the RAM copy needed furthest
 *          ahead (src/ram_victim.c). Per acquire + release, hits and misses together.
 *
 * Layers are visited in a fixed pseudo-random order so the CPU caches see a realistic spread.
 * Each figure is the best of several repetitions. Prints a table with the growth from the smallest
 * to the largest layer count (goal: under 2x), or one JSON object with --json.
 *
 *   bench_hotpath [--json] [--quick]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "vramcache.h"
#include "vramcache_backend.h"

#define LAYER_BYTES 256

static double now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

/* The host backend with copies turned into no-ops: what remains is bookkeeping. */
static const vc_backend_ops *host_ops;
static int copy_nothing(void *ctx, void *dst, const void *src, size_t n, vc_stream s) {
    (void)ctx, (void)dst, (void)src, (void)n, (void)s;
    return VC_OK;
}

static void die(const char *what, vc_cache *c) {
    char msg[512] = "";
    if (c) vc_cache_last_error(c, msg, sizeof msg);
    fprintf(stderr, "bench_hotpath: %s failed: %s\n", what, c ? msg : vc_last_error());
    exit(1);
}

typedef struct result {
    size_t layers;
    double hit_hot_ns, hit_sweep_ns, miss_ns, reread_ns;
} result;

/* The layers a run visits, in execution order: a hot set of HOT layers spread over the registry
 * (one block of a denoiser while the rest of the models sit registered), or a sweep over every
 * layer (one whole step of a model with that many layers). */
#define HOT 64
static unsigned *visit_order(size_t n, size_t count, int sweep) {
    unsigned *o = malloc(count * sizeof *o);
    size_t stride = n / HOT;
    for (size_t i = 0; i < count; i++) o[i] = (unsigned)(sweep ? i % n : (i % HOT) * stride);
    return o;
}

enum { HIT_HOT, HIT_SWEEP, MISS_SWEEP, REREAD_SWEEP };

static void quiet(void *user, vc_log_level level, const char *msg) { /* (the re-reads are the point) */
    (void)user, (void)level, (void)msg;
}

static int load_nothing(void *user, vc_layer_id id, void *dst, size_t bytes) {
    (void)user, (void)id, (void)dst, (void)bytes;
    return 0;
}

/* Best ns per acquire+release over `reps` runs of `nops` visits in one mode. */
static double run_mode(vc_backend *backend, size_t nlayers, int mode, size_t nops, int reps) {
    static char weights[LAYER_BYTES];
    vc_cache_options o;
    vc_cache_options_init(&o);
    o.backend = backend;
    o.ram_budget = mode == REREAD_SWEEP ? nlayers / 2 * LAYER_BYTES : (size_t)1 << 30;
    o.working_mem = 0;
    if (mode == REREAD_SWEEP) o.log_fn = quiet;
    /* hits: everything fits; misses: a quarter fits, and a cyclic sweep under LRU always misses */
    o.vram_budget = mode >= MISS_SWEEP ? nlayers / 4 * LAYER_BYTES : nlayers * LAYER_BYTES + (1u << 20);
    o.arena_segment_bytes = 1u << 20;
    /* A cyclic sweep under the planned policy keeps a set resident (hits): misses are measured
     * under LRU, where every acquire of the sweep misses. Hits use the default (planned) policy. */
    if (mode == MISS_SWEEP) o.policy = VC_POLICY_LRU;
    vc_cache *c;
    if (vc_cache_create(&o, &c)) die("vc_cache_create", NULL);
    vc_model_id m;
    if (vc_model_register(c, "bench", &m)) die("vc_model_register", c);
    vc_layer_id *ids = malloc(nlayers * sizeof *ids);
    for (size_t i = 0; i < nlayers; i++) {
        vc_layer_desc d = {.name = "layer", .bytes = LAYER_BYTES, .host_ptr = weights};
        if (mode == REREAD_SWEEP) d.host_ptr = NULL, d.loader = load_nothing;
        if (vc_layer_register(c, m, &d, &ids[i])) die("vc_layer_register", c);
    }
    void *p;
    /* warm up: make resident, or fill the budget; for re-reads, learn the order and lay out the plan */
    for (int pass = 0; pass < (mode == REREAD_SWEEP ? 6 : 1); pass++)
        for (size_t i = 0; i < nlayers; i++) {
            if (vc_layer_acquire(c, ids[i], NULL, &p)) die("acquire", c);
            vc_layer_release(c, ids[i], NULL);
        }
    /* one order for all repetitions, each going on where the last stopped: a miss sweep shorter than
     * the model (--quick at 100k layers) that started again from the first layer found it resident */
    unsigned *order = visit_order(nlayers, nops * (size_t)reps, mode != HIT_HOT);
    double best = 1e30;
    for (int rep = 0; rep < reps; rep++) {
        vc_stats before, after;
        vc_cache_get_stats(c, &before);
        double t0 = now_ns();
        for (size_t k = 0; k < nops; k++) {
            vc_layer_id id = ids[order[(size_t)rep * nops + k]];
            if (vc_layer_acquire(c, id, NULL, &p) != VC_OK) die("acquire", c);
            vc_layer_release(c, id, NULL);
        }
        double per = (now_ns() - t0) / (double)nops;
        vc_cache_get_stats(c, &after);
        uint64_t hits = after.hits - before.hits;
        if (mode < MISS_SWEEP && hits != nops) die("a hit run missed", NULL);
        if (mode == MISS_SWEEP && hits != 0) die("a miss run hit", NULL);
        if (mode == REREAD_SWEEP && after.loads - before.loads < nops / 5) die("a re-read run read little", NULL);
        if (per < best) best = per;
    }
    free(order);
    free(ids);
    if (vc_cache_destroy(c)) die("vc_cache_destroy", c);
    return best;
}

static result measure(size_t nlayers, size_t nops, int reps) {
    vc_backend *host, *nocopy;
    if (vc_backend_host_create((size_t)1 << 30, &host)) die("host backend", NULL);
    host_ops = vc_backend_get_ops(host);
    vc_backend_ops ops = *host_ops;
    ops.copy_h2d = copy_nothing;
    ops.destroy = NULL;
    if (vc_backend_create(&ops, vc_backend_get_ctx(host), &nocopy)) die("wrapper backend", NULL);
    result r = {.layers = nlayers};
    r.hit_hot_ns = run_mode(nocopy, nlayers, HIT_HOT, nops, reps);
    r.hit_sweep_ns = run_mode(nocopy, nlayers, HIT_SWEEP, nops, reps);
    r.miss_ns = run_mode(nocopy, nlayers, MISS_SWEEP, nops / 4, reps);
    r.reread_ns = run_mode(nocopy, nlayers, REREAD_SWEEP, nlayers, reps); /* whole passes */
    vc_backend_destroy(nocopy);
    vc_backend_destroy(host);
    return r;
}

int main(int argc, char **argv) {
    int json = 0, quick = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--json"))
            json = 1;
        else if (!strcmp(argv[i], "--quick"))
            quick = 1;
        else {
            fprintf(stderr, "usage: %s [--json] [--quick]\n", argv[0]);
            return 2;
        }
    }
    const size_t counts[] = {1000, 10000, 100000};
    result res[3];
    for (int i = 0; i < 3; i++) res[i] = measure(counts[i], quick ? 20000 : 400000, quick ? 2 : 5);
    double hot_growth = res[2].hit_hot_ns / res[0].hit_hot_ns;
    double sweep_growth = res[2].hit_sweep_ns / res[0].hit_sweep_ns;
    double miss_growth = res[2].miss_ns / res[0].miss_ns;
    double reread_growth = res[2].reread_ns / res[0].reread_ns;
    if (json) {
        printf("{\"benchmark\":\"hotpath\",\"unit\":\"ns_per_acquire_release\",\"results\":[");
        for (int i = 0; i < 3; i++)
            printf("%s{\"layers\":%zu,\"hit_hot_ns\":%.1f,\"hit_sweep_ns\":%.1f,\"miss_bookkeeping_ns\":%.1f,"
                   "\"reread_sweep_ns\":%.1f}",
                   i ? "," : "", res[i].layers, res[i].hit_hot_ns, res[i].hit_sweep_ns, res[i].miss_ns, res[i].reread_ns);
        printf("],\"growth_1k_to_100k\":{\"hit_hot\":%.3f,\"hit_sweep\":%.3f,\"miss\":%.3f,\"reread\":%.3f}}\n",
               hot_growth, sweep_growth, miss_growth, reread_growth);
        return 0;
    }
    printf("libvramcache %s hot path (host backend, copies excluded; best of repetitions)\n",
           vc_version_string());
    printf("%8s %18s %18s %24s %22s\n", "layers", "hit, hot set", "hit, full sweep", "miss bookkeeping, sweep",
           "re-read sweep, planned");
    for (int i = 0; i < 3; i++)
        printf("%8zu %15.1f ns %15.1f ns %21.1f ns %19.1f ns\n", res[i].layers, res[i].hit_hot_ns,
               res[i].hit_sweep_ns, res[i].miss_ns, res[i].reread_ns);
    printf("growth 1k -> 100k: hot hit %.2fx, sweep hit %.2fx, miss %.2fx, re-read %.2fx (goal: hit < 100 ns, "
           "growth < 2x)\n", hot_growth, sweep_growth, miss_growth, reread_growth);
    return 0;
}
