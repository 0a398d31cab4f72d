/*
 * The cache's private structures, shared by the src/ files that implement it. See
 * docs/architecture.md for the residency states and the locking rules.
 */
#ifndef VC_CACHE_INTERNAL_H
#define VC_CACHE_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdio.h>
#include <time.h>

#include "arena.h"
#include "slot_table.h"
#include "vramcache.h"
#include "vramcache_backend.h"

struct vc_backend {
    const vc_backend_ops *ops;
    void *ctx;
    void *owned_ops; /* an ops table made for this handle (wrappers), freed with it */
};

typedef struct vc_model_rec model_t;
typedef struct vc_layer_rec layer_t;

/* Intrusive doubly linked list with a sentinel-free head/tail pair. */
typedef struct layer_list {
    layer_t *head, *tail;
    uint64_t pushes; /* RAM list: layers appended so far (each gets the count as its rtick) */
} layer_list;

struct vc_layer_rec {
    vc_layer_id id;
    model_t *model;
    size_t model_pos; /* index in model->layers, for O(1) removal */
    char *name;
    size_t bytes;
    size_t align;
    double cost; /* compute per use (vc_layer_desc.cost); 0: unknown */

    /* source */
    vc_cache *owner;      /* shared: the weights come from layer owner_layer of this cache */
    vc_layer_id owner_layer;
    unsigned host_pins;   /* uploads of other caches reading our host copy (it must stay) */
    /* Patches and sharing, 32-bit and placed in alignment holes so the record keeps its size (a
     * sweep over 100k layers measured ~15% slower with these as three longs at the end). */
    uint32_t weights_gen; /* bumped when patch/unpatch change the weights (sharers compare it) */
    const void *host_src; /* borrowed engine copy, or NULL */
    vc_loader_fn loader;
    void *loader_user;

    /* RAM pool copy */
    void *ram;
    int ram_pinned;
    int ram_pending;      /* a device→host write-back into `ram` is in flight (ram_ev) */
    int patched;          /* `ram` holds patched weights: the only authoritative copy */
    int patch_fused;      /* patched by FUSE (no backup) */
    void *backup;         /* the original weights, for VC_PATCH_BACKUP */
    int backup_pinned;
    uint32_t src_gen;     /* shared: the source's weights_gen when our device copy was made */
    layer_t *rprev, *rnext; /* RAM LRU (every layer with a RAM-pool copy) */
    uint64_t rtick;         /* when it was appended there: the list runs in rtick order */

    /* device copy */
    arena_block *vblock;
    int in_stream; /* vblock lies in the streaming region (c->sarena) */
    int loaded_before; /* its loader has run: a later run reads it again (RAM cache too small) */
    layer_t *vprev, *vnext; /* VRAM LRU (unheld layers with a device copy) */
    unsigned holds;
    uint64_t last_use; /* c->use_clock at the latest acquire */
    uint64_t rec_mark; /* its model's rec_gen when the pass being recorded took it in (schedule.c) */
    int loading;   /* loader running without the lock */
    int uploading; /* an upload from its RAM copy is being set up: the copy must stay */

    /* scheduling (src/schedule.c) */
    size_t order_pos;  /* index in model->order when in_order */
    int in_order;
    int keep;          /* the plan keeps it resident across passes */
    unsigned uses;     /* uses per pass of its group's order when more than one (next_use), else 0 */
    uint64_t home_gen; /* kept: the kept-arena segment (gen) of its planned place; 0: none */
    size_t home_off;   /* ... and the offset there */
    int prefetched;    /* uploaded ahead of use, not acquired since */
    int stage_queued;  /* waiting in the stager's queue (src/stager.c) */

    /* events, created on first use */
    void *upload_ev;   /* recorded after the latest upload on the upload stream */
    int upload_pending;
    /* Nonzero: a copy from its host copy was queued on the upload stream and neither its event nor
     * a stream wait could tell when it ends (a failing backend). Until the upload stream has been
     * waited for (c->upload_settles reaching this value) the copy counts as running: its source
     * is neither freed nor written, and other caches' pins on it stay. */
    uint64_t unsettled_until;
    void *release_ev;  /* recorded on the engine stream at release */
    vc_stream release_stream;
    int release_recorded;
    uint32_t src_epoch;   /* shared: the owner's weights_epoch then (see shared_stale) */
    void *ram_ev;      /* recorded after a write-back on the download stream */
};

struct vc_model_rec {
    vc_model_id id;
    char *name;
    layer_t **layers;
    size_t nlayers, cap;

    /* execution order (src/schedule.c) */
    layer_t **order;   /* the pass, when order_valid */
    size_t order_n;
    /* A step group that runs a member twice per step (a ControlNet, then the UNet for each half of
     * guidance) has layers that occur twice in its order: next_use[i] is the order position of the
     * next use of order[i]'s layer (round the pass), and uorder its distinct layers in the order
     * they first run, which is what plans walk. Both NULL (owned when set) for every other model. */
    size_t *next_use;
    layer_t **uorder;
    size_t uorder_n;
    int order_valid;
    int order_declared;
    size_t pos;        /* order index of the latest acquire */
    size_t pf_next;    /* order index where the prefetch scan resumes: everything between pos and it
                          is resident or on its way (kept O(1) per acquire in the steady state) */
    unsigned pass_mismatches;
    layer_t **rec;     /* the pass being recorded while learning */
    size_t rec_n, rec_cap;
    int recording;
    size_t rec_repeats;  /* acquires in the recorded pass of a layer it had already recorded */
    int rec_strict;      /* a recording with repeats did not come back to its first layer: until the
                            next order is learned, a repeat ends the pass (schedule.c, record) */
    int order_strict;    /* the order was learned so, as a loop */
    unsigned loop_tries; /* such orders the pass outgrew (at most 5): record waits 2^loop_tries times longer */
    uint64_t rec_start;  /* c->use_clock at the recorded pass's first acquire */
    uint64_t rec_gen;    /* counts recordings: a layer whose rec_mark equals it is in this one's pass */
    int alone_grace;     /* its plan was made alone for an order learned from an uninterrupted pass
                            (vc__make_plan's learned_alone): another model coming into use at the
                            next pass start does not make it shared yet (schedule.c, follow) */
    uint64_t last_tick; /* c->use_clock at its latest acquire */
    size_t vram_layers; /* its layers resident now */
    size_t plan_capacity; /* the weight limit its plan was made for; 0: no plan */
    int plan_shared;      /* its plan was made beside another model in use (plan.c) */
    int plan_fits;        /* its plan keeps every layer: no streaming region of its own */
    double plan_room;     /* its streaming region in layers of its largest streamed one (the tuner's start) */
    size_t seq_room;      /* sequential mode: bytes of its order's two largest layers, the most it may
                             have prefetched at once (0: not yet computed for this order) */
    /* Readahead while its order is unknown (schedule.c, read_ahead): registration positions. */
    size_t ra_last;       /* model_pos + 1 of its latest acquire; 0: none yet */
    unsigned ra_streak;   /* acquires in a row that came next in registration order */
    size_t ra_next;       /* model_pos where the readahead scan resumes */
    size_t ra_room;       /* sequential mode: bytes of its two largest layers (0: not computed) */
    /* A plan that fits but fills its room: the free space left is in pieces, and layers coming back
     * after another model ran evict their own neighbours for want of a hole, pass after pass. When a
     * pass shows that (self_evicts), the plan gets homes where its layers lie (fit_homes). */
    unsigned self_evicts; /* kept layers evicted this pass to place a layer of the same plan */
    int fit_homes;        /* the fitting plan has homes (1), or had and they did not help (-1) */
    unsigned fit_chain;   /* passes in a row with self_evicts since the homes were given */
    int layout_pending;   /* a plan waits to lay the device out until nothing there is pinned */
    size_t pending_kept, pending_stream; /* ... its kept bytes and streaming region */

    /* Blocks held at once (plan.c, vc__hold_window): the plan's region takes two of them. */
    unsigned held_now;       /* its layers held now */
    unsigned held_peak_cur;  /* the most held at once in the pass under way ... */
    unsigned held_peak;      /* ... and in the pass before (an engine holding a block of layers) */
    unsigned plan_hold;      /* the layers held at once the plan was made for */
    unsigned plan_slots;     /* the cache's stream_slots when the plan was made */

    /* Step groups (step_group.c): models that run in turn every step (a ControlNet, then the UNet it
     * conditions; or an adapter's layers between the UNet's) are planned as one, through a hidden
     * group model whose order is their acquires over one step. */
    model_t *joined;      /* a member: the group that plans its layers; NULL when planned alone */
    model_t **members;    /* the group: its models, in the order they first run (owned) */
    size_t nmembers;
    int whole_passes;     /* the group: its order is whole passes of its members, one after another
                             (not an interleaving), so their pass starts go on into c->phist */
    unsigned npasses;     /* ... and how many whole passes its cycle holds */
    unsigned char *pass_start; /* where a member runs a layer more than once in its own pass: 1 at the
                                  order positions where a member's pass begins (owned); else NULL,
                                  and a member's first layer marks its pass start */
    model_t *step_prev;   /* the model whose pass ended just before this one's pass began */
    unsigned step_prev_seen; /* passes in a row that began right after step_prev's */
    unsigned run_len;      /* its whole passes in a row, the one under way included (a run) ... */
    unsigned prev_run_len; /* ... and in its run before this one */
    uint64_t run_start;    /* c->use_clock as its run began ... */
    uint64_t prev_run_start; /* ... and as its run before began (0: none): model mode's next use */
    uint64_t pass_tick;    /* a step group's: c->use_clock as its latest pass began (schedule.c) */
    int saw_others;       /* another model's layer ran in the midst of its pass under way */
    size_t grec_seen;     /* its layers found so far in a recorded period (grec_finish) */

    /* RAM copies (src/ram_victim.c): how many of its own layers have one, and, for a model whose
     * order plans them, the index that finds which to drop without walking them all. */
    size_t ram_n;
    struct ram_index {
        uint64_t epoch;   /* c->ram_ix_epoch when built: any other value, built again when needed */
        layer_t **order;  /* the order it was built for, and its length */
        size_t n;
        uint64_t *bits;   /* three bitmaps by order position, each `words` words and a summary,
                             `stride` in all (see ram_victim.c) */
        size_t words, stride, cap;
        size_t count[3];  /* bits set in each */
    } ram_ix;
};

/* The model whose order and plan cover l: its group's while it runs in one, else its own. */
static inline model_t *vc__plan_model(const layer_t *l) {
    return l->model->joined ? l->model->joined : l->model;
}

/* The distinct layers a plan decides on, in the order they first run: the order itself unless a
 * layer occurs twice in it (see next_use). */
static inline size_t vc__plan_n(const model_t *m) { return m->uorder ? m->uorder_n : m->order_n; }
static inline layer_t *vc__plan_at(const model_t *m, size_t i) { return m->uorder ? m->uorder[i] : m->order[i]; }

/* A RAM buffer that can be freed only once a copy reading it has completed. */
typedef struct deferred_free {
    void *ptr;
    size_t bytes;
    int pinned;
    layer_t *layer; /* whose upload_ev guards it */
    struct deferred_free *next;
} deferred_free;

/* A host copy in another cache that an upload of ours reads: released when the upload completes. */
typedef struct remote_pin {
    vc_cache *owner;
    vc_layer_id source;
    layer_t *layer; /* ours, whose upload_ev guards the pin; NULL once our layer is gone with its copy
                     * unsettled: then c->upload_settles reaching settled_after releases it */
    uint64_t settled_after;
    int holds_dependent; /* carries our gone layer's count in the owner's dependents */
    struct remote_pin *next;
} remote_pin;

struct vc_reservation {
    vc_cache *cache;
    size_t bytes;
    void *buffer;
    int async; /* buffer from device_alloc_async */
    vc_reservation *prev, *next;
};

/* A device range that a write-back may still read, with no event left to tell when it is done
 * (settle_stream failed on the download stream): an upload into it could overwrite bytes the copy
 * has not read yet. Its block stays allocated, owned by the cache's stand-in layer (held, so no
 * placement evicts it), until the download stream can be waited for (vc__free_device_quarantine). */
typedef struct device_quarantine {
    arena *arena;
    arena_block *block;
    struct device_quarantine *next;
} device_quarantine;

#define VC__MAX_STREAM_SLOTS 8 /* vc_cache_options.stream_slots */
#define VC__PF_QUEUE 256       /* prefetch copies in flight at most, whatever prefetch_depth says */

/* The stream-slots tuner's state (src/slot_tuner.c). */
typedef struct slot_tuner {
    const model_t *clock; /* the model whose pass starts time the cycle; NULL: not started */
    double t_prev;        /* its last pass start, in the tuner's clock */
    uint64_t h2d_prev;    /* stats.bytes_h2d then */
    uint64_t late_prev;   /* late_acquires then */
    unsigned cand;        /* the room being measured (0: the planner's region) */
    unsigned up0, down0;  /* the rooms next to the planner's region, above and below (0: none below) */
    int dir;              /* +1 while trying larger rooms, -1 smaller */
    unsigned passes;      /* pass starts since cand took effect */
    double last;          /* the candidate's previous measured pass, seconds; < 0: none */
    double time[VC__MAX_STREAM_SLOTS + 1]; /* each tried candidate's pass time */
    unsigned best;        /* the fastest candidate so far ... */
    double best_t;        /* ... and its pass time */
    int done;             /* the choice is made */
    unsigned off_track;   /* once done: passes in a row far from best_t */
    double min_t;         /* the least measured pass of the candidate; < 0: none yet */
    uint64_t late_sum;    /* late acquires in its measured passes */
    unsigned retunes;     /* times it tuned again after drifting (backs the next one off) */
} slot_tuner;

struct vc_cache {
    pthread_mutex_t lock;
    pthread_cond_t loaded; /* broadcast when a layer's loading ends */

    vc_backend *backend;
    int owns_backend;
    const vc_backend_ops *ops;
    void *bctx;
    vc_stream upload_stream;
    vc_stream download_stream;

    /* settings */
    size_t ram_budget;
    size_t vram_budget; /* VC_SIZE_AUTO = dynamic */
    size_t working_mem;
    int keep_ram_copy;
    int log_memory_usage;
    int smart_working_mem; /* active reservations replace the standing working memory */
    size_t segment_bytes;
    vc_log_fn log_fn;
    void *log_user;
    vc_log_level log_level;

    /* state */
    slot_table models;
    slot_table layers;
    arena arena;          /* kept layers, and every layer when no plan streams */
    arena sarena;         /* the streaming region: layers the plan streams pass through it */
    size_t stream_budget; /* its planned size; 0: no streaming region */
    model_t *stream_model; /* the model (or step group) whose plan owns it */
    model_t *group;        /* the step group, NULL when none (step_group.c; one at a time) */
    model_t *last_model;   /* the model of the latest acquire ... */
    int last_ended_pass;   /* ... and whether that acquire was the last layer of its pass */
    int last_recorded_whole; /* ... or, its model's first pass being recorded, that the pass had
                                taken every layer of the model by then (a pass for the history) */
    layer_t **grec;        /* one period of interleaved models' acquires being recorded, or NULL */
    size_t grec_n, grec_cap;
    layer_t **grec_prev;   /* the period recorded before it (a group forms when two agree) */
    size_t grec_prev_n;
    unsigned layout_pending_count; /* models whose plan waits to be laid out (plan.c) */
    model_t *phist[256];   /* the models whose whole passes began one after another, latest last ... */
    size_t phist_lim[256]; /* ... the weight limit as each began (working memory reserved for it) ... */
    unsigned phist_n;      /* ... (step_group.c: step groups whose cycle runs a model more than once) */
    int cycle_parted;      /* such a cycle parted out of turn since one last ran whole: the next one
                              joins only once it has shown three times (step counts that vary) */
    /* Fences of the ring placement being made (vram_pool.c, ring_place): the release events of the
     * layers it evicted, by where their room starts, so the upload can copy each part as soon as
     * its own occupant is done rather than all of it after the last. */
    struct vc_fence {
        size_t at;
        void *ev;
    } fence[16];
    unsigned nfence;
    int collect_fences;
    size_t copy_part_min; /* vc_cache_options.copy_part_min_bytes: smaller parts wait for the next fence */
    const arena_segment *fence_seg;
    uint64_t ring_gen;       /* where the streaming region places its next layer (a ring: see */
    size_t ring_off;         /* place_streamed): the segment of that gen, at ring_off; a gen no
                              * segment has (0, or the segment went): from the region's start. By
                              * gen, not pointer: a new segment can reuse a freed one's memory */
    layer_list vram_lru;
    layer_t *placing; /* the layer vc__vram_place is finding room for (NULL outside it) */
    /* Model mode: a whole-model load places its model's layers one after another, in load order,
     * in a segment taken for them (vc__reserve_whole_model): by gen, at whole_off; 0: none. */
    const model_t *whole_model;
    uint64_t whole_gen;
    size_t whole_off;
    layer_list ram_lru;
    uint64_t ram_ix_epoch; /* bumped when orders or kept sets change: RAM indexes are rebuilt */
    deferred_free *deferred;
    atomic_uint weights_epoch;  /* bumped with any layer's weights_gen: sharers' cheap check */
    size_t shared_layers;       /* ours that share another cache's (vc_layer_register_shared) */
    deferred_free *quarantine; /* host memory a copy may still use, with no event to tell (settle_stream) */
    device_quarantine *device_quarantine; /* device ranges a write-back may still read */
    layer_t quarantine_owner;  /* the stand-in owner of their blocks: held for ever, in no model's plan */
    model_t quarantine_model;  /* its model: none of the cache's */
    remote_pin *remote_pins; /* host copies of owner caches our uploads still read */
    uint64_t upload_settles; /* host waits for the whole upload stream that succeeded (settle_stream) */
    unsigned dependents;     /* shared layers in other caches reading ours */
    vc_reservation *reservations;
    size_t reserved_sum;  /* bytes of active reservations */
    size_t buffer_bytes;  /* device bytes of reservation buffers the cache allocated */
    size_t ram_bytes;     /* RAM-pool bytes, including deferred frees */
    size_t reread_bytes;  /* bytes loaders produced again (layers loaded before), for one warning */
    uint64_t use_clock;   /* ticks once per acquire */
    vc_stats stats;

    vc_offload_mode mode;
    int stream_ordered; /* reservation buffers from device_alloc_async */
    double max_gpu_memory; /* balanced threshold; 0: none */
    vc_policy policy;
    unsigned prefetch_depth;
    unsigned stream_slots; /* the region's room in layers the planner uses: 0 (its own) or 1 to 8 */
    unsigned slots_setting; /* vc_cache_options.stream_slots: as above, or VC_STREAM_SLOTS_TUNE */
    slot_tuner tuner;       /* src/slot_tuner.c, with VC_STREAM_SLOTS_TUNE */
    uint64_t late_acquires; /* acquires whose upload was still running (or not begun): the engine's
                               stream may wait for it (the tuner's sign that copies can hold a pass up) */
    size_t prefetch_inflight; /* layers prefetched and not acquired yet */
    size_t prefetch_inflight_bytes; /* ... and their bytes */
    /* The prefetch scan's copies in the order they were queued (one upload stream: they land in that
     * order), as ids so that a layer unregistered meanwhile is simply not found: prefetch_depth
     * bounds those still copying (schedule.c, copies_in_flight). */
    vc_layer_id pf_queue[VC__PF_QUEUE];
    size_t pf_head, pf_len;
    void *trace;              /* struct trace_writer, when tracing */

    char alloc_detail[200]; /* why the device last refused an arena segment */

    /* the stager (src/stager.c): a worker thread running loaders ahead of the prefetch window */
    int stager_on, stager_stop;
    pthread_t stager;
    pthread_cond_t stage_cv;
    vc_layer_id stage_q[16];
    size_t stage_head, stage_len;

    /* keep-alive (src/keep_alive.c): clears the cache after keep_alive_s without use */
    double keep_alive_s;
    int keep_alive_on, keep_alive_stop;
    pthread_t keep_alive;
    pthread_cond_t keep_alive_cv;
    uint64_t keep_alive_clears;

    /* last error, for vc_cache_last_error */
    int last_status;
    char last_error[4096];
};

/** vc__sched_ram_victim's answer from the RAM indexes (src/ram_victim.c): 1 with *out the victim
 *  (NULL: none may go), or 0 when only the walk can tell (a RAM copy of a model not in use, without
 *  an order or outside it; a layer used twice per pass; no memory for an index). */
int vc__ram_victim_indexed(vc_cache *c, const layer_t *exclude, int (*droppable)(vc_cache *, layer_t *),
                           layer_t **out);
/** l's RAM copy (ram_delta +1 made, -1 gone, 0 unchanged), device copy, kept or prefetched mark
 *  changed: keeps its model's count of RAM copies and its order's RAM index up to date (src/
 *  ram_victim.c). Call after the change. */
void vc__ram_ix_touch(vc_cache *c, layer_t *l, int ram_delta);

/* l's upload ahead of use was acquired or is gone: it no longer counts as in flight, in layers or in
 * bytes (sequential mode's look-ahead is bounded by the bytes). Returns whether it was prefetched. */
static inline int vc__prefetch_settle(vc_cache *c, layer_t *l) {
    if (!l->prefetched) return 0;
    l->prefetched = 0;
    vc__ram_ix_touch(c, l, 0);
    c->prefetch_inflight--;
    c->prefetch_inflight_bytes -= l->bytes;
    return 1;
}

/* ---- errors and logging (src/status.c, src/log.c) ------------------------------------------ */

/** Records a failure: formats the message, stores it for vc_last_error() and, when c is not NULL,
 *  for vc_cache_last_error() (the caller holds c->lock or c is not shared yet). Returns status. */
int vc__fail(vc_cache *c, int status, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;
/** vc__fail for callers that do not hold c->lock (it takes the lock to store the message). */
int vc__fail_unlocked(vc_cache *c, int status, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

/* The layout of vc_cache_options in the first release ends with stage_ahead: programs built against
 * it pass at least this struct_size. Fields added later go at the end and get their defaults when an
 * older program leaves them out (vc_cache_create), and are not written (vc_config_apply). Never move
 * this mark to a later field. */
#define VC__OPTIONS_FIRST_SIZE (offsetof(vc_cache_options, stage_ahead) + sizeof(int))
/* Whether the caller's options (of its struct_size) have room for `field`. */
#define VC__OPTIONS_HAVE(o, field) (offsetof(vc_cache_options, field) + sizeof((o)->field) <= (o)->struct_size)

/** Set on a thread of the cache's own (the stager): its failures are logged by the caller and not
 *  stored as the handle's last error, which belongs to the engine's calls. */
extern _Thread_local int vc__tls_internal_thread;
/** Takes and clears the detail a backend left with vc_backend_set_error() on this thread. */
const char *vc__take_backend_error(void);
/* A loader's or patch function's own reason (vc_loader_set_error): cleared before it runs, then
 * taken as ": reason" (or "") for the cache's message. */
void vc__clear_loader_error(void);
const char *vc__loader_error_suffix(void);

void vc__log(const vc_cache *c, vc_log_level level, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

/* ---- shared helpers ------------------------------------------------------------------------- */

#define VC_GB ((size_t)1 << 30)
#define VC_MB ((size_t)1 << 20)

/* CLOCK_MONOTONIC in seconds (the host's clock for traces, the keep-alive and the tuner). */
static inline double vc__mono_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static inline size_t sat_add(size_t a, size_t b) { return a > SIZE_MAX - b ? SIZE_MAX : a + b; }
static inline size_t sat_sub(size_t a, size_t b) { return a > b ? a - b : 0; }
static inline size_t min_sz(size_t a, size_t b) { return a < b ? a : b; }
static inline size_t max_sz(size_t a, size_t b) { return a > b ? a : b; }

/** vc_system_ram with the cgroup filesystem at `cgroup_root` and the process's cgroup file at
 *  `self_cgroup` (tests point them at fakes). */
size_t vc__system_ram_at(const char *cgroup_root, const char *self_cgroup, size_t phys, char *why,
                         size_t why_size);

/** Formats bytes as "12.34 GB"/"5.00 MB" into buf. */
const char *vc__fmt_bytes(size_t bytes, char *buf, size_t size);

void list_push_tail(layer_list *l, layer_t *x, int vram);
void list_unlink(layer_list *l, layer_t *x, int vram);

/* ---- residency (residency.c and the files of residency_internal.h), used by the rest -------- */

/** Device memory the cache could use if it alone used the device: free + its own. */
size_t vc__device_avail(vc_cache *c);
/** Current weight limit: the most device bytes the arena may hold for weights. */
size_t vc__weight_limit(vc_cache *c);
/** Evicts and frees whole segments until the arena holds at most `target` bytes. With dry_run,
 *  only reports whether it could. Returns VC_OK or VC_ERR_OUT_OF_VRAM. */
int vc__shrink_arena(vc_cache *c, size_t target, vc_evict_reason reason, int dry_run);
/** Moves a layer out of VRAM (write-back if needed unless drop_ok). Caller checked holds == 0. */
void vc__evict_vram(vc_cache *c, layer_t *l, vc_evict_reason reason, int drop_ok);
/** Drops a layer's RAM-pool copy (waiting for copies that read it). */
void vc__drop_ram(vc_cache *c, layer_t *l);
/* keep_ram_copy off: frees the RAM copies whose uploads have completed (asks, never waits). Locked. */
void vc__reap_deferred(vc_cache *c);
/* Frees the quarantined host buffers (vc_cache_destroy, once the device memory has gone). */
void vc__free_quarantine(vc_cache *c);
/* Lets go of every pin on owner caches' host copies, settled or not (vc_cache_destroy, once the
 * device memory has gone). */
void vc__release_remote_pins(vc_cache *c);
/* Gives the quarantined device ranges back once the download stream has been waited for (with
 * `settled`, the caller knows no copy of the cache still runs). Returns 1 when any went back. */
int vc__free_device_quarantine(vc_cache *c, int settled);
/** Frees a layer's record after its memory is gone. */
void vc__layer_destroy(vc_cache *c, layer_t *l);
void vc__log_memory(vc_cache *c, const char *what, const layer_t *l);

/* ---- scheduling (src/schedule.c) ------------------------------------------------------------ */

#define VC_ANY_DISTANCE SIZE_MAX

/** A layer nobody holds, not loading, and not a prefetch still in flight. */
int vc__evictable(vc_cache *c, layer_t *l);
/** Waits (lock held) for the uploads of prefetched layers still arriving, other than `except`'s,
 *  so that they can be evicted: when they are all that stands in the way of an acquire or a
 *  reservation (they finish on their own; failing would leave the engine nothing to retry with).
 *  Returns whether there were any. */
int vc__wait_prefetches(vc_cache *c, const layer_t *except);
/** Chooses what to evict to make room for `for_layer`: only victims needed later than
 *  `max_distance` steps ahead (VC_ANY_DISTANCE: any). NULL when nothing may go. */
layer_t *vc__sched_victim(vc_cache *c, const layer_t *for_layer, size_t max_distance, vc_evict_reason *reason);
/** Whether x may go to make room for `asking` without touching the plan's kept layers: it is of an
 *  idle model or one with no order, or a streamed layer needed later than max_distance. */
int vc__sched_streamable(vc_cache *c, const layer_t *asking, size_t max_distance, layer_t *x);
/** Which RAM copy to drop for room (planned policy), among those `droppable` allows, `exclude`
 *  aside: one of a model not in use or without an order (least recently used first), else the
 *  one needed furthest ahead (Belady: a denoiser's pass that streams more than the RAM cache
 *  holds then re-reads only the excess each pass, where LRU re-read all of it). NULL: none.
 *  Answered from the RAM indexes where they can (src/ram_victim.c), else by the walk below. */
layer_t *vc__sched_ram_victim(vc_cache *c, const layer_t *exclude, int (*droppable)(vc_cache *, layer_t *));
/** The same choice by a walk of every RAM copy (schedule.c): what vc__sched_ram_victim answers
 *  when its index cannot (src/ram_victim.c), and what a VC_CHECK_INTERNALS build checks it by.
 *  Among copies of layers in the pass of a model in use, the highest vc__ram_victim_rank goes; a
 *  tie goes to the least recently used. */
layer_t *vc__sched_ram_victim_walk(vc_cache *c, const layer_t *exclude, int (*droppable)(vc_cache *, layer_t *));
/** The kind of a RAM copy its pass needs: 2 a kept layer in VRAM, 1 one uploaded ahead and not
 *  used yet, 0 the rest. */
static inline int vc__ram_victim_kind(const layer_t *l) { return !l->vblock ? 0 : l->keep ? 2 : l->prefetched ? 1 : 0; }
/** When its copy is needed, for a layer needed in `d` of its pass's n acquires (the higher, the
 *  sooner it goes): a kept layer in VRAM, not within the pass; one uploaded ahead and not used
 *  yet, after that use and a pass more (it leaves after the use and comes back); else at its use. */
static inline size_t vc__ram_victim_rank(const layer_t *l, size_t d, size_t n) {
    int kind = vc__ram_victim_kind(l);
    return kind == 2 ? VC_ANY_DISTANCE : kind == 1 ? d + n : d;
}
/** Orders, positions or kept sets changed: every RAM index is built again when next needed. */
static inline void vc__ram_ix_stale(vc_cache *c) { c->ram_ix_epoch++; }
/** Frees m's RAM index (the model or group goes). */
void vc__ram_ix_free(model_t *m);
/** The default RAM budget for a cache in offload `mode` (src/ram_budget.c): vc_default_ram_budget's
 *  rules, except that where layers stream (modes balanced and sequential) rule 2 caps at 32 GB
 *  rather than at the GPU's memory less working memory. */
size_t vc__ram_budget(size_t system_ram, size_t total_vram, size_t vram_budget, size_t working_mem,
                      vc_offload_mode mode, char *why, size_t why_size);
/** After an acquire: follow or learn the order, then prefetch. */
void vc__sched_on_acquire(vc_cache *c, layer_t *l);
/** After the last release of a layer (sequential mode evicts it). */
void vc__sched_on_release(vc_cache *c, layer_t *l);
/** A layer left VRAM: the prefetch scan must look at it again. */
void vc__sched_on_evict(vc_cache *c, layer_t *l);
/** Before a layer goes away: drop it from its model's order. */
void vc__sched_forget(vc_cache *c, layer_t *l);
void vc__sched_model_free(vc_cache *c, model_t *m);
/* src/slot_tuner.c (VC_STREAM_SLOTS_TUNE): at a planned model's pass start, before any re-plan. */
void vc__tuner_on_pass(vc_cache *c, const model_t *m);
void vc__tuner_reset(vc_cache *c);
void vc__tuner_model_gone(vc_cache *c, const model_t *m);
int vc__tuner_state(const vc_cache *c, unsigned *in_use); /* 1 while measuring */
/** Uploads a layer whose host copy is available, without making any engine stream wait, evicting
 *  only layers needed later than `distance`. Quiet on failure. */
int vc__prefetch_upload(vc_cache *c, layer_t *l, size_t distance);
/** Loads the rest of l's model (model mode), in the order its pass wants them, without making the
 *  engine's stream wait (each acquire waits for its own layer). May release the lock for loaders. */
int vc__load_whole_model(vc_cache *c, layer_t *l, vc_stream stream, const char *fn);
void vc__note_vram_layer(vc_cache *c, layer_t *l, int delta);
/** Whether only l's loader can produce its weights now (not borrowed, shared, in RAM or on device). */
int vc__needs_loader(const layer_t *l);
/* vc__needs_loader, and for a shared layer whether its owner's copy is missing or being loaded
 * (takes the owner's lock: call with the layer's cache locked, as owner_copy does). */
int vc__needs_load(layer_t *l);
/** vc_layer_offload's work on a found layer (lock held). */
int vc__offload_layer(vc_cache *c, layer_t *l, vc_offload_target target, const char *fn);
/** Waits (lock held, released meanwhile) until some load or patch in progress ends; l is one of
 *  them. Logs the wait at DEBUG. */
void vc__wait_for_load(vc_cache *c, const layer_t *l);
/** The layer behind an id once no other thread is loading or patching it (NULL if not registered or
 *  unregistered meanwhile). Lock held; waits on `loaded`, which releases it. */
layer_t *vc__settled_layer(vc_cache *c, vc_layer_id id);
/** The same for a model: once none of its layers is loading or being patched (NULL if gone). */
model_t *vc__settled_model(vc_cache *c, vc_model_id id);
/** Gives back the device segments (kept arena and streaming region) that hold nothing. */
void vc__release_empty_segments(vc_cache *c);
/** vc_layer_load_ram's work on a found layer (lock held; released while a loader runs). */
int vc__stage_layer(vc_cache *c, layer_t *l, const char *fn);

/* ---- the stager (src/stager.c) -------------------------------------------------------------- */

/** Starts the worker thread (cache created, lock not held). Errors: VC_ERR_NO_MEMORY. */
int vc__stager_start(vc_cache *c);
/** Ends the worker thread and waits for it (lock not held); its current loader call completes. */
void vc__stager_stop(vc_cache *c);
/** Queues a layer for loading into the RAM pool (lock held); a no-op when the stager is off, the
 *  layer is already queued, or the queue is full. */
void vc__stager_enqueue(vc_cache *c, layer_t *l);

/* ---- keep-alive (src/keep_alive.c) ---------------------------------------------------------- */

/** Starts the thread that clears the cache after keep_alive_s without use (cache created, lock not
 *  held; keep_alive_s > 0). Errors: VC_ERR_NO_MEMORY. */
int vc__keep_alive_start(vc_cache *c);
/** Ends it and waits for it (lock not held); a no-op when it is not running. */
void vc__keep_alive_stop(vc_cache *c);
/** The clear itself (lock held): every unheld layer leaves VRAM and, when its loader can read it
 *  again, the RAM pool; empty device segments go back; plans are made afresh at the next pass.
 *  Layers held or loading stay. Returns the number of layers that stayed. */
size_t vc__clear_cache(vc_cache *c);

/* ---- tracing (src/trace.c) ------------------------------------------------------------------ */

double vc__trace_now(vc_cache *c);
/* Tracing a copy: vc__trace_mark records an event on the copy's stream before it (NULL when not
 * tracing or the backend has no event times); vc__trace_copy, after it, records another and writes
 * the span at once when the backend knows both times (the simulator), else queues it until the copy
 * has run (a GPU's events are stamped on completion; vc__trace_poll writes what has finished, all of
 * it with `wait`), or draws it at issue time when no times will come. Takes ownership of ev0. */
void *vc__trace_mark(vc_cache *c, vc_stream stream);
void vc__trace_copy(vc_cache *c, const char *what, const layer_t *l, void *ev0, vc_stream stream);
void vc__trace_poll(vc_cache *c, int wait);
void vc__trace_instant(vc_cache *c, const char *what, const layer_t *l, const char *reason);
void vc__trace_async(vc_cache *c, const char *cat, const char *name, uint64_t id, int begin, double ts);
/* A process-wide instant on the evictions track (the stream-slots tuner's decisions). */
void vc__trace_note(vc_cache *c, const char *cat, const char *name);
void vc__trace_close(vc_cache *c);

static inline void vc__note_ram(vc_cache *c) {
    if (c->ram_bytes > c->stats.ram_peak_bytes) c->stats.ram_peak_bytes = c->ram_bytes;
}
/** Profiler ranges (NVTX on CUDA) when the backend has them. */
static inline void vc__range_push(const vc_cache *c, const char *what, const char *name) {
    if (!c->ops->range_push) return;
    char text[160];
    snprintf(text, sizeof text, "%s %s", what, name);
    c->ops->range_push(c->bctx, text);
}
static inline void vc__range_pop(const vc_cache *c) {
    if (c->ops->range_pop) c->ops->range_pop(c->bctx);
}

static inline size_t vc__vram_total(const vc_cache *c) { return c->arena.total + c->sarena.total; }
static inline size_t vc__vram_used(const vc_cache *c) { return c->arena.used + c->sarena.used; }

static inline void vc__note_vram(vc_cache *c) {
    if (vc__vram_used(c) > c->stats.vram_peak_bytes) c->stats.vram_peak_bytes = vc__vram_used(c);
    if (vc__vram_total(c) > c->stats.arena_peak_bytes) c->stats.arena_peak_bytes = vc__vram_total(c);
}

/** Device bytes that layers of models other than m hold (held, loading or arriving): room a plan
 *  for m cannot count on. */
size_t vc__held_by_others(vc_cache *c, const model_t *m);

/** 1 when a layer in the kept arena or the streaming region is held, loading or arriving. */
int vc__layout_pinned(vc_cache *c);

/** Gives each kept layer of m's plan a home in the kept arena (vram_pool.c: homes). `fitting`: m's plan
 *  keeps every layer (a fragmentation chain was seen, schedule.c), and other models' kept layers stay
 *  in the way only while those models are in use (idle ones give way). */
void vc__assign_homes(vc_cache *c, model_t *m, int fitting);
/** 1 when m ran within the last two passes' worth of `asking`'s acquires (only since its run began
 *  when `asking` runs pass after pass alone). */
int vc__model_active(const vc_cache *c, const model_t *m, const model_t *asking);

/** Frees the streaming region (evicting its unheld layers); used when a plan changes. */
void vc__release_stream_region(vc_cache *c, vc_evict_reason reason);
/** Evicts every unheld layer from the kept arena and gives back empty segments (a fresh layout). */
void vc__clear_model_layout(vc_cache *c, model_t *m, vc_evict_reason reason);
/** Takes the device memory of a plan at once: kept arena up to `kept` bytes, streaming region of
 *  `stream_budget` bytes (within the weight limit; best effort). */
void vc__reserve_layout(vc_cache *c, size_t kept, size_t stream_budget);

#endif /* VC_CACHE_INTERNAL_H */
