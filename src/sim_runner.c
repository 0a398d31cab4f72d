/*
 * Runs a workload on the simulated device: the same cache and scheduler as on a GPU, an engine
 * loop that acquires each layer, queues its compute and releases it, and a host that runs at most
 * HOST_LAG layers ahead of the device (as a real engine's host does). Per-step figures are taken
 * over the second half of the denoiser's steps: the steady state, after the first passes have
 * loaded, learned the order and laid the device out.
 */
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cache_internal.h"
#include "config_internal.h"
#include "step_bound.h"
#include "vramcache_sim.h"
#include "workload_internal.h"

#define HOST_LAG 2

void vc_sim_run_init_sized(vc_sim_run *r, size_t size) {
    if (!r) return;
    vc_sim_run d;
    memset(&d, 0, sizeof d);
    d.vram_bytes = 12.0 * (double)VC_GB;
    d.bandwidth = 25e9;
    d.flops = 60e12;
    d.policy = VC_POLICY_PLANNED;
    d.mode = -1;
    /* only the caller's bytes are written; a newer caller's unknown tail is zeroed and refused */
    memset(r, 0, size);
    memcpy(r, &d, size < sizeof d ? size : sizeof d);
    if (size >= sizeof r->struct_size) r->struct_size = size;
}

void(vc_sim_run_init)(vc_sim_run *r) { vc_sim_run_init_sized(r, sizeof *r); }

/* A loader for simulated layers: the bytes are virtual, so there is nothing to read; with a disk
 * speed the engine's thread (the host) waits as long as reading them would take. */
typedef struct disk {
    vc_backend *sim;
    double bytes_per_s;
} disk;

static int no_bytes(void *user, vc_layer_id layer, void *dst, size_t bytes) {
    (void)layer, (void)dst;
    const disk *d = user;
    if (d->bytes_per_s > 0) vc_sim_wait_until(d->sim, vc_sim_now(d->sim) + (double)bytes / d->bytes_per_s);
    return 0;
}

typedef struct engine {
    vc_backend *sim;
    vc_cache *cache;
    vc_stream stream;
    size_t block; /* layers per kernel (vc_sim_run.block_layers) */
    double lag[HOST_LAG];
    unsigned lag_i;
    double flops;
    int trace;
} engine;

static int run_model(engine *e, const wl_model *m, const vc_layer_id *ids, char *err, size_t err_size) {
    for (size_t i = 0; i < m->n; i += e->block) {
        size_t end = i + e->block < m->n ? i + e->block : m->n;
        double flops = 0;
        void *ptrs[64];
        size_t sizes[64];
        for (size_t j = i; j < end; j++) {
            void *p;
            int st = vc_layer_acquire(e->cache, ids[j], e->stream, &p);
            if (st != VC_OK) {
                vc_cache_last_error(e->cache, err, err_size);
                for (size_t k = i; k < j; k++) vc_layer_release(e->cache, ids[k], e->stream);
                return st;
            }
            flops += m->layers[j].flops;
            ptrs[j - i] = p;
            sizes[j - i] = m->layers[j].bytes;
        }
        double t0, t1;
        /* the kernel reads the weights it was given: the simulator checks they had arrived */
        vc_sim_compute_reading(e->sim, e->stream, flops / e->flops, end - i, ptrs, sizes, &t0, &t1);
        if (e->trace) vc_cache_trace_span(e->cache, m->name, m->layers[i].name, t0, t1 - t0);
        for (size_t j = i; j < end; j++) vc_layer_release(e->cache, ids[j], e->stream);
        /* The host runs ahead by HOST_LAG kernels at most. */
        vc_sim_wait_until(e->sim, e->lag[e->lag_i]);
        e->lag[e->lag_i] = t1;
        e->lag_i = (e->lag_i + 1) % HOST_LAG;
    }
    return VC_OK;
}

/* The denoiser's segment bound (step_bound.h) with the usable VRAM the cache had; -1 without memory.
 * bytes_only: the same cut over bytes alone (no compute, a link of 1 byte/s), which is the least
 * number of bytes any schedule moves per step when a layer runs twice per step: each run of the
 * pass loads its distinct layers but what was resident as it began (at most the usable VRAM). */
static double segment_bound(const vc_workload *wl, const vc_sim_run *run, double usable, int bytes_only) {
    size_t n = vc_workload_denoiser_layer_count(wl);
    double *bytes = malloc(n * sizeof(*bytes)), *secs = malloc(n * sizeof(*secs));
    size_t *back = malloc(n * sizeof(*back));
    double bound = -1;
    if (bytes && secs && back) {
        for (size_t j = 0; j < n; j++) {
            size_t b;
            double f;
            vc_workload_denoiser_layer(wl, j, NULL, &b, &f);
            bytes[j] = (double)b;
            secs[j] = bytes_only ? 0 : f / run->flops;
            back[j] = vc_workload_denoiser_layer_back(wl, j); /* a model run twice per step */
        }
        bound = vc__segment_time_bound(bytes, secs, n, usable, bytes_only ? 1.0 : run->bandwidth, back);
    }
    free(bytes);
    free(secs);
    free(back);
    return bound;
}

static int run_workload(const vc_workload *wl, const vc_sim_run *run, vc_sim_result *res) {
    memset(res, 0, sizeof(*res));
    if (!wl || !run || run->struct_size != sizeof(*run) || !(run->vram_bytes > 0) || !(run->bandwidth > 0) ||
        !(run->system_ram_bytes >= 0) || !isfinite(run->system_ram_bytes) || !(run->disk_bytes_per_s >= 0) ||
        !isfinite(run->disk_bytes_per_s) ||
        !(run->flops > 0) || run->steps < 0 || run->mode > VC_OFFLOAD_MODE_BALANCED || run->block_layers > 64 ||
        (run->stream_slots > VC__MAX_STREAM_SLOTS && run->stream_slots != VC_STREAM_SLOTS_TUNE)) {
        snprintf(res->error, sizeof res->error, "invalid run parameters");
        return vc__fail(NULL, VC_ERR_INVALID_ARG, "vc_sim_run_workload: %s", res->error);
    }
    int steps = run->steps ? run->steps : wl->steps;
    vc_sim_params sp;
    vc_sim_params_init(&sp);
    sp.device_bytes = (size_t)run->vram_bytes;
    sp.h2d_bytes_per_s = sp.d2h_bytes_per_s = run->bandwidth;
    sp.backed = 0;
    engine e = {.flops = run->flops, .block = run->block_layers > 1 ? run->block_layers : 1};
    int st = vc_backend_sim_create(&sp, &e.sim);
    if (st != VC_OK) return st;
    disk dk = {e.sim, run->disk_bytes_per_s};
    vc_cache_options o;
    vc_cache_options_init(&o);
    if (run->config) vc_config_apply(run->config, &o);
    /* the simulated GPU decides an unset mode as a real one of its size would */
    o.offload_mode = vc_config_get_offload_mode_for(run->config, 1, (size_t)run->vram_bytes, NULL, 0);
    if (run->mode >= 0) o.offload_mode = (vc_offload_mode)run->mode;
    o.policy = run->policy;
    o.stream_slots = run->stream_slots;
    o.backend = e.sim;
    /* The host side is virtual too: without an explicit budget, RAM limits the simulation only as
     * the default budget for the machine's RAM would, when the run says how much it has. */
    if (!run->config || vc__cfg_effective(run->config, VC_CFG_MAX_CACHE_RAM_GB, NULL)->is_null)
        o.ram_budget = run->system_ram_bytes >= 1
                           ? vc__ram_budget((size_t)run->system_ram_bytes, (size_t)run->vram_bytes, o.vram_budget,
                                            o.working_mem, o.offload_mode, NULL, 0)
                           : sat_add(vc_workload_total_bytes(wl), VC_GB);
    /* Loads that take no time, into a RAM cache that holds every model, leave the weights as good as
     * in RAM: each model goes into the RAM pool before its pass, as InvokeAI loads a model into its
     * RAM cache before using it, so that a first pass reads ahead (the cache never calls a loader
     * ahead of an acquire: schedule.c, read_ahead). Where the RAM cache cannot hold them all, whole
     * models staged would push out copies the RAM victim rules keep, and what loaders read again
     * (loaded_bytes_per_step, which `plan --ram-gb` advises on) would grow: layers load as used. */
    int stage_in_ram = !(run->disk_bytes_per_s > 0) && o.ram_budget >= vc_workload_total_bytes(wl);
    vc_layer_id **ids = calloc(wl->nmodels, sizeof(*ids));
    vc_model_id *mids = calloc(wl->nmodels, sizeof(*mids));
    if (!ids || !mids || (st = vc_cache_create(&o, &e.cache)) != VC_OK) {
        snprintf(res->error, sizeof res->error, "%s", vc_last_error());
        free(ids);
        free(mids);
        vc_backend_destroy(e.sim);
        return st ? st : VC_ERR_NO_MEMORY;
    }
    vc_sim_stream_create(e.sim, &e.stream);
    e.trace = run->trace_path && vc_cache_trace_start(e.cache, run->trace_path) == VC_OK;
    for (size_t i = 0; i < wl->nmodels && st == VC_OK; i++) {
        const wl_model *m = &wl->models[i];
        vc_model_id mid = 0;
        ids[i] = calloc(m->n, sizeof(**ids));
        if (!ids[i]) st = VC_ERR_NO_MEMORY;
        if (st == VC_OK) st = vc_model_register(e.cache, m->name, &mid);
        mids[i] = mid;
        for (size_t j = 0; j < m->n && st == VC_OK; j++) {
            if (m->layers[j].same) { /* a use: the layer it runs again */
                ids[i][j] = ids[i][m->layers[j].same - 1];
                continue;
            }
            vc_layer_desc d = {.name = m->layers[j].name, .bytes = m->layers[j].bytes, .loader = no_bytes,
                               .loader_user = &dk,
                               .cost = m->layers[j].flops};
            st = vc_layer_register(e.cache, mid, &d, &ids[i][j]);
        }
    }
    if (st != VC_OK) vc_cache_last_error(e.cache, res->error, sizeof res->error);

    /* The step: every model the denoiser stage runs (a ControlNet and the UNet), in turn. */
    double compute = 0;
    size_t step_bytes = vc_workload_step_bytes(wl);
    for (size_t j = 0; j < vc_workload_denoiser_layer_count(wl); j++) {
        double f;
        vc_workload_denoiser_layer(wl, j, NULL, NULL, &f);
        compute += f / run->flops;
    }
    /* Step figures: stats and times at the denoiser's step boundaries (when its last kernel of the
     * step ends). `first` is the boundary after step 1 (or the stage's start with one step). */
    vc_stats first = {0}, last = {0};
    double t_first = 0, t_last = 0;
    size_t limit_sum = 0, limit_lo = SIZE_MAX, limit_hi = 0;
    int measured = 0;
    for (size_t si = 0; si < wl->nstages && st == VC_OK; si++) {
        const wl_stage *stg = &wl->stages[si];
        if (run->denoiser_only && !stg->per_step) continue;
        unsigned reps = stg->per_step ? (unsigned)steps : stg->repeat;
        vc_reservation *r = NULL;
        if (!stg->wm_per_pass && stg->working_mem && (st = vc_reserve_working_mem(e.cache, stg->working_mem, 0, &r)) != VC_OK) {
            vc_cache_last_error(e.cache, res->error, sizeof res->error);
            break;
        }
        if (stg->per_step && reps == 1) {
            vc_sim_stream_synchronize(e.sim, e.stream);
            vc_cache_get_stats(e.cache, &first);
            t_first = vc_sim_now(e.sim);
        }
        for (unsigned k = 0; k < reps && st == VC_OK; k++) {
            size_t lo = SIZE_MAX, hi = 0; /* the weight limit over this repetition's passes */
            vc_reservation *pr = NULL; /* a pass's own working memory: an engine reserves it before a
                                          VAE decode, or a denoise of several steps, and releases it
                                          after; consecutive passes of one model share it */
            for (size_t mi = 0; mi < stg->nmodels && st == VC_OK; mi++) {
                int same = mi > 0 && stg->model[mi - 1] == stg->model[mi];
                if (stg->wm_per_pass && stg->pass_wm[mi] && !same &&
                    (st = vc_reserve_working_mem(e.cache, stg->pass_wm[mi], 0, &pr)) != VC_OK) {
                    pr = NULL;
                    vc_cache_last_error(e.cache, res->error, sizeof res->error);
                    break;
                }
                if (stg->wm_per_pass) {
                    vc_stats ps;
                    vc_cache_get_stats(e.cache, &ps);
                    lo = ps.vram_limit < lo ? ps.vram_limit : lo;
                    hi = ps.vram_limit > hi ? ps.vram_limit : hi;
                }
                if (stage_in_ram && !same) (void)vc_model_load_ram(e.cache, mids[stg->model[mi]]); /* (above) */
                st = run_model(&e, &wl->models[stg->model[mi]], ids[stg->model[mi]], res->error, sizeof res->error);
                int next_same = mi + 1 < stg->nmodels && stg->model[mi + 1] == stg->model[mi];
                if (pr && (!next_same || st != VC_OK)) {
                    vc_release_working_mem(e.cache, pr);
                    pr = NULL;
                }
            }
            if (!stg->per_step || st != VC_OK) continue;
            vc_sim_stream_synchronize(e.sim, e.stream);
            vc_stats now;
            vc_cache_get_stats(e.cache, &now);
            /* Steady state: the second half of the steps (the first passes learn the order and lay
             * the device out for the plan). */
            unsigned warm = reps > 1 ? (reps / 2 > 2 ? reps / 2 : (reps > 2 ? 2 : 1)) : 0;
            if (k + 1 <= warm) {
                first = now;
                t_first = vc_sim_now(e.sim);
                continue;
            }
            last = now;
            t_last = vc_sim_now(e.sim);
            limit_sum += now.vram_limit;
            if (stg->wm_per_pass) {
                limit_lo = lo < limit_lo ? lo : limit_lo;
                limit_hi = hi > limit_hi ? hi : limit_hi;
            }
            measured++;
        }
        if (r) vc_release_working_mem(e.cache, r);
    }
    vc_sim_stream_synchronize(e.sim, e.stream);
    char hz[384];
    if (st == VC_OK && vc_sim_now(e.sim) > 1e9) {
        /* a double's resolution there is ~0.1 us and falling: step times would be rounding noise */
        snprintf(res->error, sizeof res->error,
                 "the run lasted %.3g s of simulated time (more than 1e9 s), too long to time its steps: "
                 "lower the layers' flops or raise the compute speed", vc_sim_now(e.sim));
        st = vc__fail(NULL, VC_ERR_INVALID_ARG, "vc_sim_run_workload: %s", res->error);
    }
    if (st == VC_OK && vc_sim_hazards(e.sim, hz, sizeof hz)) {
        /* a schedule that would corrupt weights on a GPU: its figures mean nothing */
        snprintf(res->error, sizeof res->error, "%zu hazard(s), the first: %.200s",
                 vc_sim_hazards(e.sim, NULL, 0), hz);
        st = vc__fail(NULL, VC_ERR_BACKEND, "vc_sim_run_workload: %s", res->error);
    }
    if (st == VC_OK && measured) {
        vc_stats end;
        vc_cache_get_stats(e.cache, &end);
        double n = measured;
        res->steps = steps;
        res->step_time_s = (t_last - t_first) / n;
        res->bytes_per_step = (double)(last.bytes_h2d - first.bytes_h2d) / n;
        res->loaded_bytes_per_step = (double)(last.bytes_loaded - first.bytes_loaded) / n;
        res->hits_per_step = (double)(last.hits - first.hits) / n;
        res->misses_per_step = (double)(last.misses - first.misses) / n;
        res->compute_time_s = compute;
        res->usable_vram_bytes = limit_sum / (size_t)measured;
        /* Passes that reserve their own working memory (per-model working_mem_bytes) see different
         * limits within a step: a layer that does not move stays through the pass with the least
         * room, so the bytes bound takes the least limit; the time bounds, which cut the step into
         * runs, take the most (each run may start with up to that much resident): both stay bounds. */
        size_t cut_room = res->usable_vram_bytes;
        if (limit_hi) res->usable_vram_bytes = limit_lo, cut_room = limit_hi;
        res->lower_bound_bytes_per_step = (double)sat_sub(step_bytes, res->usable_vram_bytes);
        int twice = 0; /* a model run twice per step: cutting the pass between its runs bounds tighter */
        size_t n_pass = vc_workload_denoiser_layer_count(wl);
        for (size_t j = 0; j < n_pass && !twice; j++) twice = vc_workload_denoiser_layer_back(wl, j) < n_pass;
        double cut = twice ? segment_bound(wl, run, (double)cut_room, 1) : -1;
        if (cut > res->lower_bound_bytes_per_step) res->lower_bound_bytes_per_step = cut;
        double lb_copy = res->lower_bound_bytes_per_step / run->bandwidth;
        res->lower_bound_step_time_s = compute > lb_copy ? compute : lb_copy;
        res->segment_bound_step_time_s = segment_bound(wl, run, (double)cut_room, 0);
        if (res->segment_bound_step_time_s < res->lower_bound_step_time_s) /* no memory for it, or rounding */
            res->segment_bound_step_time_s = res->lower_bound_step_time_s;
        res->total_time_s = vc_sim_now(e.sim);
        res->peak_vram_bytes = end.arena_peak_bytes;
        res->peak_ram_bytes = end.ram_peak_bytes;
        res->ram_budget_bytes = end.ram_budget;
    }
    for (size_t i = 0; i < wl->nmodels; i++) free(ids[i]);
    free(ids);
    free(mids);
    vc_cache_destroy(e.cache);
    vc_backend_destroy(e.sim);
    return st;
}

/* vc_sim_result as the first release laid it out (before loaded_bytes_per_step and
 * ram_budget_bytes): what a program built against that header allocates. */
typedef struct sim_result_v1 {
    double bytes_per_step, lower_bound_bytes_per_step, step_time_s, lower_bound_step_time_s, compute_time_s;
    double segment_bound_step_time_s, hits_per_step, misses_per_step, total_time_s;
    size_t usable_vram_bytes, peak_vram_bytes, peak_ram_bytes;
    int steps;
    char error[512];
} sim_result_v1;

int vc_sim_run_workload(const vc_workload *wl, const vc_sim_run *run, vc_sim_result *res) {
    if (!res) return vc__fail(NULL, VC_ERR_INVALID_ARG, "vc_sim_run_workload: result is NULL");
    int first = run && run->struct_size == offsetof(vc_sim_run, system_ram_bytes);
    if (!run || (!first && run->struct_size != offsetof(vc_sim_run, stream_slots))) return run_workload(wl, run, res);
    /* A program built against an earlier header: the fields it does not know keep their defaults. */
    vc_sim_run sized;
    vc_sim_run_init(&sized);
    memcpy(&sized, run, run->struct_size);
    sized.struct_size = sizeof sized;
    /* Built before stream_slots: the same result layout. Built against the first release: that
     * release's smaller vc_sim_result, so the figures are written in that layout. */
    if (!first) return run_workload(wl, &sized, res);
    vc_sim_result full;
    int st = run_workload(wl, &sized, &full);
    sim_result_v1 *old = (sim_result_v1 *)(void *)res;
    *old = (sim_result_v1){full.bytes_per_step, full.lower_bound_bytes_per_step, full.step_time_s,
                           full.lower_bound_step_time_s, full.compute_time_s, full.segment_bound_step_time_s,
                           full.hits_per_step, full.misses_per_step, full.total_time_s,
                           full.usable_vram_bytes, full.peak_vram_bytes, full.peak_ram_bytes, full.steps, ""};
    memcpy(old->error, full.error, sizeof old->error);
    return st;
}
