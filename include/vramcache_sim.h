/*
 * libvramcache simulation: a device backend on a virtual clock, and a runner for model workloads.
 *
 * The simulated backend has device memory with a capacity, one host→device and one device→host
 * copy engine with a bandwidth and a latency, one compute engine, and streams and events — all on
 * a virtual clock, so runs are deterministic and the same cache and scheduler code that drives a
 * GPU can be measured without one. Memory may be backed (real bytes, for correctness tests) or
 * virtual (addresses only, for simulating models larger than this machine's RAM).
 *
 * Threads: every function and backend operation takes the simulated device's lock, so several
 * caches and threads may use one (as they may a GPU); the virtual clock is then shared, and moves
 * when any of them waits.
 */
#ifndef VRAMCACHE_SIM_H
#define VRAMCACHE_SIM_H

#include "vramcache.h"
#include "vramcache_config.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct vc_sim_params {
    size_t struct_size;        /**< set by vc_sim_params_init */
    size_t device_bytes;       /**< device memory capacity */
    double h2d_bytes_per_s;    /**< host→device bandwidth (default 25e9) */
    double d2h_bytes_per_s;    /**< device→host bandwidth (default: same as h2d) */
    double copy_latency_s;     /**< fixed cost per copy (default 10e-6) */
    int backed;                /**< 1: real memory and copies (default); 0: addresses only */
    /** 1 (default): check every copy and every kernel given with vc_sim_compute_reading against
     *  the operations still running on the same bytes, and count each pair that would race on a
     *  GPU (vc_sim_hazards). Added after the first release: a program built before it gets 0. */
    int check_hazards;
} vc_sim_params;

VC_API void vc_sim_params_init(vc_sim_params *p);

/** Creates a simulated backend. Errors: VC_ERR_INVALID_ARG (NULL, zero bandwidth), VC_ERR_NO_MEMORY. */
VC_API int vc_backend_sim_create(const vc_sim_params *params, vc_backend **out);

/** Creates an engine stream on the simulated device (the NULL stream also works: the default
 *  stream). Owned by the backend; valid until it is destroyed. */
VC_API int vc_sim_stream_create(vc_backend *sim, vc_stream *out);
/** Queues `seconds` of compute on `stream` (one compute engine: kernels of all streams run one
 *  after another). *start and *end (may be NULL) receive when it will run. */
VC_API int vc_sim_compute(vc_backend *sim, vc_stream stream, double seconds, double *start, double *end);
/** As vc_sim_compute, for a kernel that reads device memory: `n` ranges ptrs[i], bytes[i] (the
 *  weights of the layers it runs, from vc_layer_acquire). Each range is checked for ordering
 *  hazards: the kernel must start after every copy into it has ended. Errors: VC_ERR_INVALID_ARG
 *  (not a sim backend, negative time, n > 0 with NULL arrays). */
VC_API int vc_sim_compute_reading(vc_backend *sim, vc_stream stream, double seconds, size_t n, void *const *ptrs,
                                  const size_t *bytes, double *start, double *end);
/** Ordering hazards seen so far (with vc_sim_params.check_hazards): pairs of operations on the
 *  same bytes, one of them a write, that would overlap in time on a GPU — a copy into memory a
 *  running kernel or copy still reads, a kernel that reads weights before their copy has ended, a
 *  host buffer freed while a copy uses it, and (backed memory) the host writing a buffer that a
 *  running host-to-device copy reads (seen, by a sample of its bytes, at the next operation). Returns the count (0 for a NULL or non-sim backend) and
 *  writes a description of the first one (or why there is none) into msg[size] (may be NULL).
 *  Checking stops if more than 65536 operations are in flight with the host's clock standing still;
 *  the message says so. */
VC_API size_t vc_sim_hazards(vc_backend *sim, char *msg, size_t size);
/** Lets the virtual host wait until time `t` (a host that runs ahead of the device by a bounded
 *  amount waits like this). */
VC_API int vc_sim_wait_until(vc_backend *sim, double t);
/** Blocks the (virtual) host until `stream`'s work is done: the clock advances. */
VC_API int vc_sim_stream_synchronize(vc_backend *sim, vc_stream stream);
/** The virtual clock, in seconds. */
VC_API double vc_sim_now(vc_backend *sim);
/** Seconds each engine was busy so far (copy engines and compute). Any pointer may be NULL. */
VC_API int vc_sim_busy(vc_backend *sim, double *h2d, double *d2h, double *compute);

/* ---- workloads ---------------------------------------------------------------------------- */

typedef struct vc_workload vc_workload;

/** Loads a workload file (docs/workloads.md): models with per-layer `name`, `bytes`, `flops`, and
 *  an optional pipeline of stages. Diagnostics as for configs. Errors: VC_ERR_IO, VC_ERR_CONFIG. */
VC_API int vc_workload_load(const char *path, vc_workload **out, vc_diagnostics **diags);
VC_API int vc_workload_load_string(const char *text, size_t len, const char *name, vc_workload **out,
                                   vc_diagnostics **diags);
VC_API void vc_workload_destroy(vc_workload *wl);
VC_API const char *vc_workload_name(const vc_workload *wl);
/** Bytes of all layers of all models; of the denoiser (the stage repeated per step: all the models
 *  it runs, e.g. a ControlNet and the UNet; a model the step runs twice, or a layer a model runs
 *  again with `{use: NAME}`, counts once). */
VC_API size_t vc_workload_total_bytes(const vc_workload *wl);
VC_API size_t vc_workload_step_bytes(const vc_workload *wl);
/** The denoiser's layers, its models' layers in the order they run each step (a model run twice
 *  per step appears twice, a layer's `use` entries at each use): how many, and the i-th one's name
 *  (owned by wl), bytes and flops. */
VC_API size_t vc_workload_denoiser_layer_count(const vc_workload *wl);
VC_API int vc_workload_denoiser_layer(const vc_workload *wl, size_t i, const char **name, size_t *bytes,
                                      double *flops);
/** The name of the model (owned by wl) the denoiser's i-th layer belongs to; NULL when i is out of
 *  range. A stage of several models (`models: [controlnet, unet]`) lists each model's layers in turn. */
VC_API const char *vc_workload_denoiser_layer_model(const vc_workload *wl, size_t i);
/** How many positions before the denoiser's i-th layer (round the step) the same layer ran last:
 *  for a model the step runs twice (`models: [controlnet, unet, unet]`), the distance to its other
 *  run; for a layer its model runs again (`{use: NAME}`), to its previous use;
 *  vc_workload_denoiser_layer_count() for a layer run once per step; 0 when i is out of range. */
VC_API size_t vc_workload_denoiser_layer_back(const vc_workload *wl, size_t i);
/** Working memory the denoiser stage declares (working_mem_bytes; with one per model, the most any
 *  of its passes reserves), 0 when none. */
VC_API size_t vc_workload_denoiser_working_mem(const vc_workload *wl);

/** How to run a workload on the simulated device. */
typedef struct vc_sim_run {
    size_t struct_size;  /**< set by vc_sim_run_init */
    double vram_bytes;   /**< the device's whole memory */
    double bandwidth;    /**< host→device bytes per second (device→host the same) */
    double flops;        /**< compute speed, FLOP/s (default 60e12) */
    int steps;           /**< denoising steps; 0: the workload's own (default 0) */
    vc_policy policy;
    int mode;            /**< vc_offload_mode; -1: from the config (default balanced) */
    const vc_config *config; /**< budgets and working memory; NULL: defaults */
    const char *trace_path;  /**< write a Chrome trace here; NULL: none */
    int denoiser_only;       /**< 1: run only the denoiser stage (sweeps of the step alone) */
    /** The engine acquires this many consecutive layers, runs their compute as one kernel and then
     *  releases them (as an engine that runs a whole block at a time); 0 or 1: one layer at a time
     *  (default). At most 64. */
    unsigned block_layers;
    /** The machine's RAM (added after the first release; a program built before it gets 0). With
     *  it, and no max_cache_ram_gb in the config, the RAM cache gets the default budget a real
     *  cache would on that machine (vc_default_ram_budget, InvokeAI's rules); 0: the RAM cache
     *  never limits the run (unless the config sets max_cache_ram_gb). */
    double system_ram_bytes;
    /** How fast a loader reads a layer (bytes per second; the engine's thread waits for it, as
     *  vc_layer_acquire does for a loader): 0 (default): loads take no time, and only
     *  vc_sim_result.loaded_bytes_per_step tells what they would read; when the RAM cache holds every
     *  model, each then goes into the RAM pool before its pass (vc_model_load_ram), as InvokeAI loads
     *  a model into its RAM cache before using it, so that its first pass can read ahead. Added with
     *  system_ram_bytes. */
    double disk_bytes_per_s;
    /** vc_cache_options.stream_slots for the run's cache (0, default: the planner chooses; 1 to 8;
     *  VC_STREAM_SLOTS_TUNE). Added after disk_bytes_per_s: a program built before it gets 0. */
    unsigned stream_slots;
} vc_sim_run;

/** Fills the first `struct_size` bytes of `run` with the defaults (12 GB, 25 GB/s, 60 TFLOP/s,
 *  planned, the mode from the config) and stores `struct_size`: a newer library never writes past an
 *  older program's structure. NULL is a no-op. Reach it through vc_sim_run_init(), a macro that
 *  passes the size the program was built with; the function of that name (`(vc_sim_run_init)(run)`)
 *  uses the library's size (stream_slots came with this pair: programs built before it called the
 *  function, whose size they share up to disk_bytes_per_s). */
VC_API void vc_sim_run_init_sized(vc_sim_run *run, size_t struct_size);
VC_API void(vc_sim_run_init)(vc_sim_run *run);
#define vc_sim_run_init(run) vc_sim_run_init_sized((run), sizeof(vc_sim_run))

/** Steady-state figures of one run, per denoising step (averaged over the second half of the steps,
 *  after the first passes have learned the order and laid the device out). A run of one step has no
 *  steady state: its figures are that step's, which loads and uploads every layer it uses for the
 *  first time (loaded_bytes_per_step then counts those first loads). */
typedef struct vc_sim_result {
    double bytes_per_step;             /**< host→device bytes per step */
    double lower_bound_bytes_per_step; /**< max(0, step bytes - usable VRAM) */
    double step_time_s;
    double lower_bound_step_time_s;    /**< max(compute, lower-bound bytes / bandwidth) */
    double compute_time_s;             /**< the step's compute alone (resident speed) */
    /** The segment bound: a lower bound on the step time that also counts where in the pass the
     *  bytes and the compute sit. For any cut of the pass into runs of consecutive layers, each run
     *  lasts at least max(its compute, (its bytes - usable VRAM) / bandwidth); this is the largest
     *  sum over all cuts. No schedule, of whole or partial layers, is faster; it is never below
     *  lower_bound_step_time_s, and above it where a byte-heavy stretch of the pass has too little
     *  compute to hide its copies (SD 1.5 at low usable VRAM). */
    double segment_bound_step_time_s;
    double hits_per_step, misses_per_step;
    double total_time_s;               /**< whole pipeline */
    size_t usable_vram_bytes;          /**< the weight limit the cache had (the least over the step's
                                            passes when they reserve their own working memory) */
    size_t peak_vram_bytes, peak_ram_bytes;
    /** Bytes the layers' loaders produced per step (read from disk by a real engine): 0 once the
     *  RAM cache holds what the step streams; above 0 when its budget (max_cache_ram_gb) cannot. */
    double loaded_bytes_per_step;
    size_t ram_budget_bytes; /**< the RAM cache's budget in the run */
    int steps;
    /** Empty on success; else why the run failed: the cache's message, cut at 511 bytes when very
     *  long layer or model names make it longer. Right after the call, vc_last_error() on the same
     *  thread holds the message of the failure that ended the run whole (up to 4095 bytes); the
     *  vramcache tool prints that one when it extends this. */
    char error[512];
} vc_sim_result;

/** Runs the workload. Returns VC_OK with *result filled, or an error with result->error set
 *  (e.g. VC_ERR_OUT_OF_VRAM when offload_mode none and the model does not fit).
 *  Versions: run->struct_size (set by vc_sim_run_init) tells the library which header the caller
 *  was built with, and *result is written in that header's layout and size; so a program built
 *  against the first release (no system_ram_bytes, disk_bytes_per_s, loaded_bytes_per_step or
 *  ram_budget_bytes) keeps working, and one built before stream_slots runs with 0 there. Any other
 *  struct_size is VC_ERR_INVALID_ARG.
 *  Thread-safe: each call runs its own simulated device and cache. */
VC_API int vc_sim_run_workload(const vc_workload *wl, const vc_sim_run *run, vc_sim_result *result);

#ifdef __cplusplus
}
#endif

#endif /* VRAMCACHE_SIM_H */
