/* libFuzzer target for the workload loader (users write their own workload files): any bytes must
 * give a status and well-formed diagnostics, never a crash, a leak or undefined behaviour; a file
 * that loads must also run on the simulated device (to an answer or a clear error) when it is small
 * enough to run quickly. Built with ASan + UBSan. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "vramcache.h"
#include "vramcache_sim.h"
#include "workload_internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Layer uses of a run of `steps` denoising steps: bounds the simulation's work. */
static double layer_uses(const vc_workload *wl, int steps) {
    double uses = 0;
    for (size_t i = 0; i < wl->nstages; i++) {
        double n = 0;
        for (size_t k = 0; k < wl->stages[i].nmodels; k++) n += (double)wl->models[wl->stages[i].model[k]].n;
        uses += n * (wl->stages[i].per_step ? steps : wl->stages[i].repeat);
    }
    return uses;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    vc_workload *wl = NULL;
    vc_diagnostics *d = NULL;
    int st = vc_workload_load_string((const char *)data, size, "fuzz.yaml", &wl, &d);
    for (size_t i = 0; i < vc_diagnostics_count(d); i++) {
        const vc_diagnostic *g = vc_diagnostics_get(d, i);
        if (!g->file || !g->key || !g->message || strlen(g->message) == 0) __builtin_trap();
    }
    if ((st == VC_OK) != (vc_diagnostics_errors(d) == 0) || (st == VC_OK) != (wl != NULL)) __builtin_trap();
    vc_diagnostics_destroy(d);
    if (!wl) return 0;
    size_t n = vc_workload_denoiser_layer_count(wl), bytes = 0;
    for (size_t i = 0; i < n; i++) {
        size_t b;
        const char *name;
        if (vc_workload_denoiser_layer(wl, i, &name, &b, NULL) != VC_OK || !name || !vc_workload_denoiser_layer_model(wl, i))
            __builtin_trap();
        size_t back = vc_workload_denoiser_layer_back(wl, i);
        if (back < 1 || back > n) __builtin_trap();
        if (back > i) bytes += b; /* a layer's first use in the step (a model run twice holds its bytes once) */
    }
    if (bytes != vc_workload_step_bytes(wl) || bytes > vc_workload_total_bytes(wl)) __builtin_trap();
    if (layer_uses(wl, 3) <= 2000) {
        vc_sim_run run;
        vc_sim_run_init(&run);
        run.vram_bytes = 4.0 * (1u << 30);
        run.bandwidth = 25e9;
        run.flops = 60e12;
        run.steps = 3;
        vc_sim_result r;
        st = vc_sim_run_workload(wl, &run, &r);
        if (st != VC_OK && !r.error[0]) __builtin_trap(); /* a failure always says why */
        if (st == VC_OK && (r.step_time_s < r.lower_bound_step_time_s * (1 - 1e-9) ||
                            r.bytes_per_step < r.lower_bound_bytes_per_step * (1 - 1e-9)))
            __builtin_trap(); /* never below a lower bound */
    }
    vc_workload_destroy(wl);
    return 0;
}
