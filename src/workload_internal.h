/* The parsed form of a workload file, shared by the loader and the simulation runner. */
#ifndef VC_WORKLOAD_INTERNAL_H
#define VC_WORKLOAD_INTERNAL_H

#include <stddef.h>

typedef struct wl_layer {
    char *name;
    size_t bytes;
    double flops;
    size_t same; /* 0: a layer of its own; else 1 + the index of the earlier layer this entry runs
                    again ({use: NAME}: a module the pass uses twice); name and bytes are that one's */
} wl_layer;

typedef struct wl_model {
    char *name;
    wl_layer *layers;
    size_t n;
} wl_model;

#define WL_STAGE_MODELS 256 /* models one stage may run in turn (a ControlNet, then the UNet; a whole image) */

typedef struct wl_stage {
    size_t *model; /* nmodels, run in this order, each repetition (one allocation with pass_wm) */
    size_t nmodels;
    int per_step;       /* repeated `steps` times: the denoiser */
    unsigned repeat;    /* otherwise this many times */
    size_t working_mem; /* activations the stage needs (reserved while it runs); per model: the most */
    int wm_per_pass;    /* working_mem_bytes named models: each pass reserves its model's pass_wm ... */
    size_t *pass_wm;    /* ... (nmodels) for its duration (a VAE decode inside an image's cycle) */
} wl_stage;

struct vc_workload {
    char *name;
    int steps;
    wl_model *models;
    size_t nmodels;
    wl_stage *stages;
    size_t nstages;
    size_t denoiser; /* index of the per-step stage */
    size_t *den_back; /* per denoiser position: how far back round the step its layer last ran */
};

#endif
