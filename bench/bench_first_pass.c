/*
 * A model's first pass, before its order is known (src/schedule.c, read_ahead). For SD 1.5, SDXL
 * and FLUX.1-dev's denoisers (workloads/) on the simulated device, usable VRAM at 25%, 50% and 75%
 * of the denoiser and links of 25 and 55 GB/s, 60 TFLOP/s, the weights in host memory the engine
 * lends the cache (host_ptr), layers registered in the order they run, the host two kernels ahead
 * of the device (as `vramcache simulate` runs it):
 *
 *   - the first pass's time over its lower bound, max(its compute, all its bytes / bandwidth)
 *     (nothing is resident before it, so every byte moves once);
 *   - the same with prefetch_depth 0 in the same run: the cache as it was before readahead, which
 *     could not upload ahead of use until an order was known (learned from this pass);
 *   - the steady step (the last of 8 passes) over its lower bound, for scale.
 *
 *   bench_first_pass [--json] [--workloads DIR] [--tflops T]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_args.h"
#include "vramcache.h"
#include "vramcache_sim.h"

#define PASSES 8
#define HOST_LAG 2

typedef struct pass_times {
    double first, steady;
} pass_times;

/* Runs PASSES passes of wl's denoiser with `usable` bytes of device memory for weights. 0, or -1
 * after a message on stderr. */
static int run(const vc_workload *wl, double usable, double bw, double flops, unsigned depth, const void *host,
               pass_times *out) {
    size_t n = vc_workload_denoiser_layer_count(wl);
    vc_sim_params p;
    vc_sim_params_init(&p);
    p.device_bytes = (size_t)usable;
    p.h2d_bytes_per_s = p.d2h_bytes_per_s = bw;
    p.backed = 0;
    vc_backend *sim;
    if (vc_backend_sim_create(&p, &sim) != VC_OK) return -1;
    vc_cache_options o;
    vc_cache_options_init(&o);
    o.backend = sim;
    o.working_mem = 0;
    o.offload_mode = VC_OFFLOAD_MODE_BALANCED;
    o.prefetch_depth = depth;
    vc_cache *c = NULL;
    vc_layer_id *ids = calloc(n, sizeof(*ids));
    double *secs = calloc(n, sizeof(*secs));
    size_t *bytes = calloc(n, sizeof(*bytes));
    int st = !ids || !secs || !bytes ? VC_ERR_NO_MEMORY : vc_cache_create(&o, &c);
    vc_stream s = NULL;
    if (st == VC_OK) st = vc_sim_stream_create(sim, &s);
    /* (a model of a pipeline that runs twice per step, as a ControlNet's UNet, is one model here) */
    vc_model_id m = 0;
    if (st == VC_OK) st = vc_model_register(c, vc_workload_name(wl), &m);
    for (size_t i = 0; i < n && st == VC_OK; i++) {
        const char *name;
        double f;
        vc_workload_denoiser_layer(wl, i, &name, &bytes[i], &f);
        secs[i] = f / flops;
        vc_layer_desc d = {.name = name, .bytes = bytes[i], .host_ptr = host};
        st = vc_layer_register(c, m, &d, &ids[i]);
    }
    double lag[HOST_LAG] = {0}, start = 0;
    unsigned li = 0;
    for (int pass = 0; pass < PASSES && st == VC_OK; pass++) {
        for (size_t i = 0; i < n && st == VC_OK; i++) {
            void *ptr;
            double t0, t1;
            if ((st = vc_layer_acquire(c, ids[i], s, &ptr)) != VC_OK) break;
            vc_sim_compute_reading(sim, s, secs[i], 1, &ptr, &bytes[i], &t0, &t1);
            vc_layer_release(c, ids[i], s);
            vc_sim_wait_until(sim, lag[li]); /* the host runs ahead by HOST_LAG kernels at most */
            lag[li] = t1;
            li = (li + 1) % HOST_LAG;
        }
        vc_sim_stream_synchronize(sim, s);
        double now = vc_sim_now(sim);
        if (pass == 0) out->first = now;
        out->steady = now - start;
        start = now;
    }
    char hz[256];
    if (st != VC_OK) fprintf(stderr, "bench_first_pass: %s\n", c ? (vc_cache_last_error(c, hz, sizeof hz), hz) : "out of memory");
    else if (vc_sim_hazards(sim, hz, sizeof hz)) fprintf(stderr, "bench_first_pass: ordering hazard: %s\n", hz), st = -1;
    if (c) vc_cache_destroy(c);
    vc_backend_destroy(sim);
    free(ids);
    free(secs);
    free(bytes);
    return st == VC_OK ? 0 : -1;
}

int main(int argc, char **argv) {
    int json = 0;
    const char *dir = VC_WORKLOAD_DIR;
    double tflops = 60;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--json")) json = 1;
        else if (!strcmp(argv[i], "--workloads") && i + 1 < argc) dir = argv[++i];
        else if (!strcmp(argv[i], "--tflops") && i + 1 < argc) {
            if (!bench_arg_double("--tflops", argv[++i], 1e-3, 1e6, &tflops)) return 2;
        } else {
            fprintf(stderr, "usage: bench_first_pass [--json] [--workloads DIR] [--tflops T]\n");
            return 2;
        }
    }
    static const char *files[] = {"sd15.yaml", "sdxl.yaml", "flux1-dev.yaml"};
    static const double fracs[] = {0.25, 0.5, 0.75}, bws[] = {25e9, 55e9};
    if (json) printf("[");
    else {
        printf("first pass (order not yet known) on the simulated device, %g TFLOP/s, weights lent by the engine\n",
               tflops);
        printf("| workload | usable | GB/s | first pass s | bound s | first/bound | without readahead | "
               "speed-up | steady step/LB |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
    }
    int rows = 0, rc = 0;
    for (size_t w = 0; w < sizeof files / sizeof *files; w++) {
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", dir, files[w]);
        vc_workload *wl;
        if (vc_workload_load(path, &wl, NULL) != VC_OK) {
            fprintf(stderr, "bench_first_pass: %s\n", vc_last_error());
            return 1;
        }
        size_t n = vc_workload_denoiser_layer_count(wl), total = 0, largest = 0;
        double compute = 0;
        for (size_t i = 0; i < n; i++) {
            size_t b;
            double f;
            vc_workload_denoiser_layer(wl, i, NULL, &b, &f);
            total += b;
            largest = b > largest ? b : largest;
            compute += f / (tflops * 1e12);
        }
        void *host = malloc(largest); /* every layer lends the same bytes: the device is not backed */
        for (size_t fi = 0; fi < 3 && host; fi++)
            for (size_t bi = 0; bi < 2; bi++) {
                double usable = fracs[fi] * (double)total, bw = bws[bi];
                pass_times ra, none;
                if (run(wl, usable, bw, tflops * 1e12, 8, host, &ra) || run(wl, usable, bw, tflops * 1e12, 0, host, &none)) {
                    rc = 1;
                    continue;
                }
                double bound = compute > total / bw ? compute : total / bw;
                double lb_bytes = (double)total - usable, lb = compute > lb_bytes / bw ? compute : lb_bytes / bw;
                if (json)
                    printf("%s{\"workload\":\"%s\",\"usable_fraction\":%g,\"bandwidth_gbps\":%g,\"first_pass_s\":%.6f,"
                           "\"first_pass_bound_s\":%.6f,\"first_pass_no_readahead_s\":%.6f,\"steady_step_s\":%.6f,"
                           "\"steady_lower_bound_s\":%.6f}",
                           rows ? "," : "", vc_workload_name(wl), fracs[fi], bw / 1e9, ra.first, bound, none.first,
                           ra.steady, lb);
                else
                    printf("| %s | %.0f%% | %.0f | %.4f | %.4f | %.3f | %.3f | %.2fx | %.3f |\n", vc_workload_name(wl),
                           100 * fracs[fi], bw / 1e9, ra.first, bound, ra.first / bound, none.first / bound,
                           none.first / ra.first, ra.steady / lb);
                rows++;
            }
        if (!host) rc = 1;
        free(host);
        vc_workload_destroy(wl);
    }
    if (json) printf("]\n");
    return rc;
}
