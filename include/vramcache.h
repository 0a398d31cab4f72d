/*
 * libvramcache — GPU/CPU weight offloading for inference engines.
 *
 * This header is the contract between the library and the engine that links it.
 *
 * The model in one paragraph: an engine creates a cache over a backend (a GPU, or the host backend
 * that simulates one), registers its models and their layers, and calls vc_layer_acquire() just
 * before a layer runs. The cache makes the layer resident in device memory ("VRAM"), evicting layers
 * nobody holds when room is needed, and returns a device pointer valid until vc_layer_release().
 * Layers whose weights come from a loader callback are kept in a bounded RAM pool between uses.
 * Working memory (VRAM the cache must leave free for activations) is a standing amount plus
 * temporary reservations (vc_reserve_working_mem) for large operations such as a VAE decode.
 *
 * Conventions used by every function below:
 *  - Status: functions returning int return VC_OK (0) or a negative vc_status. vc_strerror() names a
 *    status; vc_cache_last_error() / vc_last_error() give the message of the last failure, which says
 *    what failed, on which model/layer, and what was expected.
 *  - A failed call changes nothing observable unless its documentation says otherwise (for example,
 *    layers evicted while trying to make room stay evicted; their weights are never lost).
 *  - Ownership: strings passed in are copied; pointers returned by the library stay owned by it.
 *  - Threads: every vc_cache function may be called from any thread at the same time as any other;
 *    a cache serialises its bookkeeping with one mutex and never holds it while a loader callback runs.
 *    vc_cache_destroy() must not race with other calls on the same cache.
 *  - Sizes are in bytes. "GB" in documentation means 2^30 bytes, as in invokeai.yaml.
 */
#ifndef VRAMCACHE_H
#define VRAMCACHE_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------------------------------------- */
/* Export macro and version                                                                        */
/* ---------------------------------------------------------------------------------------------- */

#if defined(VC_STATIC)
#define VC_API
#elif defined(_WIN32)
#if defined(VC_BUILDING_LIBRARY)
#define VC_API __declspec(dllexport)
#else
#define VC_API __declspec(dllimport)
#endif
#elif defined(__GNUC__) && __GNUC__ >= 4
#define VC_API __attribute__((visibility("default")))
#else
#define VC_API
#endif

#define VC_VERSION_MAJOR 0
#define VC_VERSION_MINOR 1
#define VC_VERSION_PATCH 0
/** The version as one number, major * 10000 + minor * 100 + patch, for compile-time checks. */
#define VC_VERSION_NUMBER (VC_VERSION_MAJOR * 10000 + VC_VERSION_MINOR * 100 + VC_VERSION_PATCH)

/** Returns the version of the library actually linked (same encoding as VC_VERSION_NUMBER).
 *  Thread-safe; never fails. */
VC_API unsigned vc_version(void);
/** Returns the linked version as "MAJOR.MINOR.PATCH"; a static string. Thread-safe; never fails. */
VC_API const char *vc_version_string(void);

/* ---------------------------------------------------------------------------------------------- */
/* Status codes                                                                                    */
/* ---------------------------------------------------------------------------------------------- */

/* One list, expanded into the enum here and into the strings in src/status.c (libuv's pattern). */
#define VC_STATUS_MAP(X)                                                                           \
    X(OK, 0, "success")                                                                            \
    X(ERR_INVALID_ARG, -1, "invalid argument")                                                     \
    X(ERR_NO_MEMORY, -2, "out of host memory")                                                     \
    X(ERR_OUT_OF_VRAM, -3, "not enough device memory within the budget")                           \
    X(ERR_OUT_OF_RAM, -4, "not enough RAM within the RAM cache budget")                            \
    X(ERR_TOO_LARGE, -5, "size too large")                                                         \
    X(ERR_NOT_FOUND, -6, "no such model, layer or reservation")                                    \
    X(ERR_BUSY, -7, "object is in use (held or loading)")                                          \
    X(ERR_NOT_HELD, -8, "layer is not held")                                                       \
    X(ERR_LOADER, -9, "layer loader callback failed")                                              \
    X(ERR_BACKEND, -10, "backend operation failed")                                                \
    X(ERR_EXISTS, -11, "name already registered")                                                  \
    X(ERR_CONFIG, -12, "invalid configuration")                                                    \
    X(ERR_UNSUPPORTED, -13, "operation not supported by this backend or build")                    \
    X(ERR_NO_DEVICE, -14, "requested device is not available")                                     \
    X(ERR_IO, -15, "input/output error")                                                           \
    X(ERR_FORMAT, -16, "malformed file")

/** Status codes. VC_OK is 0; every error is negative. */
typedef enum vc_status {
#define VC_STATUS_ENUM_(name, code, text) VC_##name = code,
    VC_STATUS_MAP(VC_STATUS_ENUM_)
#undef VC_STATUS_ENUM_
} vc_status;

/** Returns a static, human-readable description of a status ("invalid argument"), or
 *  "unknown status" for a value not in the list. Thread-safe; never fails. */
VC_API const char *vc_strerror(int status);
/** Returns the status' symbolic name without prefix ("ERR_INVALID_ARG"), or "UNKNOWN". */
VC_API const char *vc_status_name(int status);
/** Returns the message of the last failed call made by the calling thread, on any handle or none
 *  (vc_cache_create failing, for instance); "" if none failed yet. The pointer is thread-local and
 *  valid until the thread's next failing call. */
VC_API const char *vc_last_error(void);

/* ---------------------------------------------------------------------------------------------- */
/* Logging                                                                                         */
/* ---------------------------------------------------------------------------------------------- */

typedef enum vc_log_level {
    VC_LOG_ERROR = 0,
    VC_LOG_WARN = 1,
    VC_LOG_INFO = 2,
    VC_LOG_DEBUG = 3
} vc_log_level;

/** Receives one log line (no trailing newline). `message` is valid only during the call. Called
 *  from whichever thread produced the line, possibly with the cache's lock held: it must not call
 *  back into the cache. */
typedef void (*vc_log_fn)(void *user, vc_log_level level, const char *message);

/** Sets the process-wide default log sink used by caches created without their own, and by
 *  functions that have no cache. NULL restores the default (stderr, levels up to WARN). Not
 *  thread-safe with respect to itself: set it once at start-up. */
VC_API void vc_set_log_callback(vc_log_fn fn, void *user, vc_log_level max_level);

/** Text output sink used by the printers (vc_cache_print_stats). NULL means stdout. */
typedef void (*vc_print_fn)(void *user, const char *text);

/* ---------------------------------------------------------------------------------------------- */
/* Handles                                                                                         */
/* ---------------------------------------------------------------------------------------------- */

typedef struct vc_cache vc_cache;             /**< A residency cache over one device. */
typedef struct vc_backend vc_backend;         /**< A device backend (host, CUDA, HIP, custom). */
typedef struct vc_reservation vc_reservation; /**< An active working-memory reservation. */

/** Identifies a model in a cache. 0 is never a valid id. Ids are not reused while the cache lives
 *  (a generation counter makes a stale id fail with VC_ERR_NOT_FOUND instead of aliasing). */
typedef uint64_t vc_model_id;
/** Identifies a layer in a cache; same rules as vc_model_id. */
typedef uint64_t vc_layer_id;

/** An engine stream: a cudaStream_t or hipStream_t cast to void*, or NULL for the device's default
 *  stream. The host backend ignores streams (its work is complete when a call returns). */
typedef void *vc_stream;

/** "Compute this for me" marker for budgets in vc_cache_options. */
#define VC_SIZE_AUTO SIZE_MAX

/* ---------------------------------------------------------------------------------------------- */
/* Backends                                                                                        */
/* ---------------------------------------------------------------------------------------------- */

/** Creates the host backend: "device memory" is host memory limited to `capacity` bytes (0 means
 *  the machine's RAM), copies are memcpy and complete when issued. It is always available and is
 *  the fallback when no GPU is usable. On success *out owns the backend; free it with
 *  vc_backend_destroy() after every cache using it is destroyed.
 *  Errors: VC_ERR_INVALID_ARG (out is NULL), VC_ERR_NO_MEMORY. Thread-safe. */
VC_API int vc_backend_host_create(size_t capacity, vc_backend **out);

/** Opens the backend for a device named as invokeai.yaml's `device` setting does: "auto" (CUDA,
 *  then HIP, then the host backend, with the reason for the choice in `why`), "cpu", "cuda",
 *  "cuda:N", "hip", "hip:N". GPU backends are the run-time modules (libvramcache-cuda.so,
 *  libvramcache-hip.so) or ones linked in statically. `why` (may be NULL) receives a line saying what
 *  was chosen and why. On success *out owns the backend (vc_backend_destroy after its caches).
 *  Errors: VC_ERR_INVALID_ARG (NULL out, or a name that is none of the above: the message lists the
 *  accepted forms), VC_ERR_NO_DEVICE (an explicit GPU that cannot be had, with the reason),
 *  VC_ERR_NO_MEMORY. Thread-safe. */
VC_API int vc_backend_open(const char *device, vc_backend **out, char *why, size_t why_size);

/** Host backend only: pretends that `bytes` of the device are used by another process, so free
 *  memory shrinks as it would on a shared GPU. Errors: VC_ERR_INVALID_ARG when `backend` is NULL or
 *  not a host backend. Thread-safe. */
VC_API int vc_backend_host_set_external_usage(vc_backend *backend, size_t bytes);

/** Returns the backend's name ("host", "cuda", ...), or "" for NULL. Static or backend-owned. */
VC_API const char *vc_backend_name(const vc_backend *backend);

/** Reads the device's free and total memory, as the dynamic VRAM budget sees them. Either output
 *  may be NULL. Errors: VC_ERR_INVALID_ARG, VC_ERR_BACKEND. Thread-safe. */
VC_API int vc_backend_mem_info(vc_backend *backend, size_t *free_bytes, size_t *total_bytes);

/** Destroys a backend created by this library. NULL is a no-op. The caller must have destroyed
 *  every cache that uses it first. */
VC_API void vc_backend_destroy(vc_backend *backend);

/* ---------------------------------------------------------------------------------------------- */
/* Cache creation                                                                                  */
/* ---------------------------------------------------------------------------------------------- */

/** SD.Next's offload modes (seed 001): how much of the device the cache uses. */
typedef enum vc_offload_mode {
    VC_OFFLOAD_MODE_NONE = 0,       /**< everything resident; nothing is evicted; a model that does
                                         not fit fails with VC_ERR_OUT_OF_VRAM */
    VC_OFFLOAD_MODE_MODEL = 1,      /**< whole models move: a miss loads its whole model (packed in
                                         device memory of its own; the engine's stream waits only
                                         for each layer it acquires), evicting whole other models,
                                         the one needed furthest ahead first (partial loading off) */
    VC_OFFLOAD_MODE_SEQUENTIAL = 2, /**< minimum VRAM: a layer leaves VRAM at its last release;
                                         only held and prefetched layers are resident (prefetched:
                                         at most the bytes of the model's two largest layers) */
    VC_OFFLOAD_MODE_BALANCED = 3    /**< layer-level, within the budget and offload_max_gpu_memory */
} vc_offload_mode;

/** Eviction and prefetch policy. */
typedef enum vc_policy {
    VC_POLICY_PLANNED = 0, /**< order-aware (default): prefetch the next layers, keep a planned
                                resident set, evict the layer needed furthest in the future */
    VC_POLICY_LRU = 1      /**< least recently used, no prefetch (what engines do today) */
} vc_policy;

/** Options for vc_cache_create(). Always initialise with vc_cache_options_init(), then set fields:
 *  that keeps programs source- and binary-compatible when fields are added. */
typedef struct vc_cache_options {
    size_t struct_size; /**< Set by vc_cache_options_init(); do not change. */

    /** Device backend, borrowed (must outlive the cache). NULL: the cache creates and owns a host
     *  backend whose capacity is the machine's RAM. */
    vc_backend *backend;

    /** RAM pool budget (max_cache_ram_gb). VC_SIZE_AUTO (default): computed as InvokeAI does —
     *  0.5 x system RAM (or the cgroup limit, when lower) - 2 GB; capped at 32 GB, or with a GPU at
     *  total VRAM - working memory (at vram_budget when that is explicit); at least 4 GB. The
     *  result and the rules applied are logged at INFO when the cache is created. */
    size_t ram_budget;

    /** VRAM budget for weights (max_cache_vram_gb). VC_SIZE_AUTO (default): dynamic, re-read at every
     *  load decision as free device memory + device memory this cache holds - working memory.
     *  An explicit value takes precedence over working_mem, as in InvokeAI, but is still capped by
     *  what the device can give. 0 means "cache nothing beyond held layers". */
    size_t vram_budget;

    /** Standing working memory (device_working_mem_gb); default 3 GB. Used by the dynamic budget. */
    size_t working_mem;

    /** keep_ram_copy_of_weights (default 1): keep a layer's RAM copy while it is in VRAM, so leaving
     *  VRAM costs no copy. 0: drop it after upload; leaving VRAM copies the weights back (or drops
     *  them if the RAM pool has no room, since a loader can read them again). */
    int keep_ram_copy;

    /** log_memory_usage (default 0): log a memory snapshot at INFO at every load and unload. */
    int log_memory_usage;

    /** Granularity in which device memory is taken from the backend (default 256 MB; a larger
     *  layer gets a segment of its own size). Smaller wastes less, larger fragments less. */
    size_t arena_segment_bytes;

    /** Offload mode (default VC_OFFLOAD_MODE_BALANCED). */
    vc_offload_mode offload_mode;
    /** Balanced mode's threshold (offload_max_gpu_memory): <= 1 is a fraction of the device's total
     *  memory, > 1 is GB; 0 (default here; the config's default is 0.75) means no threshold. */
    double offload_max_gpu_memory;
    /** Eviction/prefetch policy (default VC_POLICY_PLANNED). */
    vc_policy policy;
    /** Most prefetch copies queued or running at once (default 8, at most 256; 0 disables
     *  prefetch, the readahead of a model whose order is not known yet included:
     *  vc_layer_register). A layer whose copy has landed no longer counts, so the depth adapts to
     *  the link: how far ahead uploaded layers wait is bounded by room, since a layer is prefetched
     *  only when room can be made without evicting anything needed sooner. In offload mode
     *  sequential, what is ahead is also bounded in bytes: at most the bytes of the order's two
     *  largest layers, so the peak stays held layers plus two of the largest, however small the
     *  layers in between are. */
    unsigned prefetch_depth;

    /** Serve VC_RESERVE_BUFFER reservations from the backend's stream-ordered pool
     *  (cudaMallocAsync; set from pytorch_cuda_alloc_conf: backend:cudaMallocAsync). Default 0;
     *  ignored by backends without one. */
    int stream_ordered_working_mem;

    /** Log sink for this cache; NULL uses the process-wide sink (vc_set_log_callback). */
    vc_log_fn log_fn;
    void *log_user;
    vc_log_level log_level; /**< Most verbose level delivered; default VC_LOG_WARN. */

    /** Stage ahead (default 0): the cache runs one worker thread of its own that calls the loaders
     *  of layers coming up in a known execution order (vc_layer_load_ram in the background), so
     *  that file-backed layers reach the RAM pool, and then the device, before their acquire.
     *  Prefetch never calls a loader itself; without this, engines that register loader layers
     *  stage them with vc_model_load_ram. Loaders then run on that thread, concurrently with the
     *  engine's own calls (never twice for one layer at a time). Its failures are logged at WARN and
     *  leave the layer to its acquire, which loads it and reports any error; they never change
     *  vc_cache_last_error. The thread ends in vc_cache_destroy. */
    int stage_ahead;

    /** Keep-alive (model_cache_keep_alive_min, in seconds here; default 0: keep for ever). When the
     *  cache has gone unused this long — no acquire, nothing held or loading, no reservation — it is
     *  cleared as InvokeAI's "Clear Model Cache" does: every unheld layer leaves VRAM and, when its
     *  loader can read it again, the RAM pool; device segments left empty go back to the device.
     *  Weights are never lost (layers without a loader keep their RAM copy or engine pointer), and
     *  the next use reloads and re-plans. Once per idle spell, at most an eighth of the period
     *  late; logged at INFO; its evictions count as VC_EVICT_MANUAL. A value > 0 runs one thread
     *  of the cache's own, which ends in vc_cache_destroy. Must be finite, >= 0 and at most 1e9. */
    double keep_alive_s;

    /** Working memory per operation (InvokeAI's smart_partial_loading; default 0). While at least
     *  one vc_reserve_working_mem reservation is active, the dynamic budget holds back only what the
     *  reservations ask for, even when that is less than working_mem: an operation that knows its
     *  need (a denoise at a small resolution) gets the rest of the device for weights. Without a
     *  reservation the standing working_mem applies as usual, and when the last reservation ends the
     *  cache evicts unheld layers back under that budget (held ones leave at the next load decision).
     *  An operation's reservation is then all the activation memory it gets: reserve what it needs
     *  (a reservation of 0 bytes leaves the whole device to weights). No effect with an explicit
     *  vram_budget. */
    int smart_working_mem;

    /** Room the streaming region keeps for copies in flight, in layers (added after the first
     *  release; a program built before it gets 0). 0 (default): chosen by the planner — two of
     *  the largest streamed layers and room for most pairs that follow each other, so one layer
     *  computes while the next arrives. N (1 to 8): N of the largest streamed layers, no more. The
     *  region is paid in bytes every step, so 1 suits passes whose compute is far below their
     *  copies, as a language model decoding one token at a time (the copies run back to back
     *  anyway): Llama 3 8B on a 12 GB card moves 1.09 × the bytes bound instead of 1.16, in the
     *  simulator; with real compute (a prefill) 1 is slower (docs/performance.md). Engines that know
     *  their phase set it (vc_cache_set_stream_slots); VC_STREAM_SLOTS_TUNE lets the cache measure. */
    unsigned stream_slots;

    /** Smallest part of a fenced copy, in bytes (added after stream_slots; default 1 MB). A layer
     *  streamed into room whose previous occupants are still computing is copied part by part,
     *  each part after its own occupant's last kernel, so the copy engine fills the room already
     *  free instead of waiting for the last occupant. Every part costs a copy's fixed overhead
     *  (microseconds on PCIe; the simulator charges 10 us, a quarter of 1 MB's transfer at
     *  25 GB/s), and the most a part can gain is its own transfer time, so a part smaller than
     *  this is not copied on its own: it waits for the next occupant and goes with the part after
     *  it (a layer's last part goes whatever its size). 0 copies every part on its own; any value
     *  is valid. Models of many small layers gain most (20,000 layers of 64 KB to 1 MB, 5 GB
     *  usable, 25 GB/s: a step 1.91 x its time bound with 0, 1.50 x with 1 MB, in the simulator;
     *  docs/performance.md). */
    size_t copy_part_min_bytes;
} vc_cache_options;

/** vc_cache_options.stream_slots: the cache chooses the region's room by measuring passes. It
 *  times the passes of the first planned model (start to start, so with several models in turn,
 *  the whole cycle) with the backend's clock (the simulator's virtual one, else CLOCK_MONOTONIC),
 *  tries the planner's region and then climbs from it: the next whole room of layers above it,
 *  larger ones while each does better than the one before, else the next rooms below it; it keeps
 *  the fastest; a room must beat the best so far by more than 1%, and its
 *  time is the least of its measured passes. Where every layer had finished uploading before the
 *  engine acquired it, no room can be faster and nothing is tried. Each room tried costs a pass
 *  that lays the device out again (the kept layers load again) and two to four measured passes:
 *  10 to 25 passes in all, which long runs pay back (a language model's decode, many images in a
 *  row) and one short image does not (SD 1.5, 30 steps: up to 1.14 × the planner's time in the
 *  simulator; docs/performance.md). It measures again when the pass time moves by more than 25%
 *  for three passes in a row (six after the first such return, then 12, up to 96), or that
 *  model's order is learned again. Only in offload mode balanced with the planned policy
 *  (elsewhere it is the planner's region). Traces show each room tried and the choice. On a GPU
 *  the clock is the host's: it times the device's passes when the host keeps pace with the device
 *  (an engine waiting for each step's result, or one whose launch queue has filled); a host running
 *  more than a pass ahead shifts each measurement by its lead, of which the unmeasured pass after
 *  each switch covers one pass. Measured in the simulator only so far (docs/performance.md). */
#define VC_STREAM_SLOTS_TUNE 255u

/** Changes vc_cache_options.stream_slots (0 to 8, or VC_STREAM_SLOTS_TUNE, which starts measuring)
 *  for the passes to come: each model is planned again as its next pass begins (an engine switching
 *  between prefill and decode). The value in force already changes nothing (an engine may set it at
 *  every generation; the tuner goes on; to make it measure afresh, set 0 and then
 *  VC_STREAM_SLOTS_TUNE). Thread-safe. Errors: VC_ERR_INVALID_ARG (NULL, a value outside those). */
VC_API int vc_cache_set_stream_slots(vc_cache *cache, unsigned slots);

/** The streaming region's room in use: `*slots` (may be NULL) receives 0 (the planner's region) or
 *  1 to 8 layers, and `*tuning` (may be NULL) 1 while VC_STREAM_SLOTS_TUNE is still measuring, else
 *  0. Once the tuner has chosen, an engine may keep `*slots` and pass it as a fixed stream_slots the
 *  next time it runs the same model on the same GPU and settings, and so skip the measuring.
 *  Thread-safe. Errors: VC_ERR_INVALID_ARG (NULL cache). */
VC_API int vc_cache_get_stream_slots(vc_cache *cache, unsigned *slots, int *tuning);

/** Fills the first `struct_size` bytes of `opts` with the defaults documented above and stores
 *  `struct_size` in it. Programs reach it through vc_cache_options_init(), which passes the size of
 *  the structure they were compiled with: a newer library then never writes past an older
 *  program's structure, and vc_cache_create gives the fields that program does not know their
 *  defaults. NULL is a no-op. Thread-safe. */
VC_API void vc_cache_options_init_sized(vc_cache_options *opts, size_t struct_size);
/** Fills `opts` with the defaults documented above. NULL is a no-op. A macro over
 *  vc_cache_options_init_sized() so the caller's structure size is compiled in; the function of
 *  the same name (call it as `(vc_cache_options_init)(opts)`, or from other languages) uses the
 *  library's size. */
VC_API void(vc_cache_options_init)(vc_cache_options *opts);
#define vc_cache_options_init(opts) vc_cache_options_init_sized((opts), sizeof(vc_cache_options))

/** Creates a cache. `opts` may be NULL for all defaults. On success *out owns the cache.
 *  Errors: VC_ERR_INVALID_ARG (out NULL, struct_size unset, smaller than the first release's
 *  structure, or larger than this library's), VC_ERR_NO_MEMORY,
 *  VC_ERR_BACKEND (the backend failed to create its streams). On failure *out is NULL.
 *  Thread-safe (creates independent objects). */
VC_API int vc_cache_create(const vc_cache_options *opts, vc_cache **out);

/** Destroys a cache and everything it holds (models, layers, RAM copies, device memory).
 *  Refuses with VC_ERR_BUSY, destroying nothing, while any layer is held or loading or any
 *  working-memory reservation is active: release them first. NULL returns VC_ERR_INVALID_ARG.
 *  Must not race with other calls on the same cache. */
VC_API int vc_cache_destroy(vc_cache *cache);

/** Copies the message of the last failed call on this cache (from any thread) into buf
 *  (always NUL-terminated when size > 0) and returns the status of that failure, or VC_OK if
 *  none failed yet. Thread-safe. */
VC_API int vc_cache_last_error(vc_cache *cache, char *buf, size_t size);

/** Returns the backend the cache runs on (borrowed). */
VC_API vc_backend *vc_cache_backend(vc_cache *cache);

/** Computes InvokeAI's default RAM budget, as vc_cache_create() does for VC_SIZE_AUTO in offload
 *  modes none and model. In balanced and sequential modes (layers stream through the RAM cache)
 *  the cache leaves out the GPU cap of rule 2: that value is what this returns for total_vram 0.
 *  `system_ram`: usable RAM (cgroup limit applied); `total_vram`: the GPU's memory, 0 when there
 *  is no GPU; `vram_budget`: explicit VRAM budget or VC_SIZE_AUTO; `working_mem`: standing
 *  working memory. `why` (may be NULL) receives the rules applied, e.g. "rule 1: 0.5 x 24.00 GB
 *  RAM - 2 GB = 10.00 GB => 10.00 GB". Never fails. */
VC_API size_t vc_default_ram_budget(size_t system_ram, size_t total_vram, size_t vram_budget,
                                    size_t working_mem, char *why, size_t why_size);

/** Returns the RAM this process may use: the machine's physical RAM, or the cgroup (v2
 *  memory.max, v1 memory.limit_in_bytes) limit when lower. `why` (may be NULL) says which. */
VC_API size_t vc_system_ram(char *why, size_t why_size);

/* ---------------------------------------------------------------------------------------------- */
/* Models and layers                                                                               */
/* ---------------------------------------------------------------------------------------------- */

/** Fills `dst` (`bytes` long, pinned host memory when the backend provides it) with a layer's
 *  weights. Return 0 on success, any negative value on failure (the cache reports VC_ERR_LOADER
 *  and keeps the layer unloaded; a later acquire tries again). Called without any cache lock held,
 *  possibly from several threads at once for different layers; it may be called again for the
 *  same layer after its RAM copy was evicted, so it must be repeatable. */
typedef int (*vc_loader_fn)(void *user, vc_layer_id layer, void *dst, size_t bytes);

/** Lets a loader (or a vc_layer_patch function) say why it failed: called on the loader's thread
 *  before it returns non-zero, the text ends the VC_ERR_LOADER message the cache reports ("...
 *  returned -1: weights.safetensors: tensor 'x': the file is shorter than when it was opened").
 *  printf-style, at most 255 bytes kept; thread-local, and forgotten when the next loader starts on
 *  that thread. Outside a loader it has no effect. */
VC_API void vc_loader_set_error(const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 1, 2)))
#endif
    ;

/** Describes a layer at registration. Exactly one source must be given. */
typedef struct vc_layer_desc {
    const char *name; /**< Layer name for messages and stats; copied. Required, non-empty. */
    size_t bytes;     /**< Size of the weights; > 0. */
    size_t alignment; /**< Required device alignment: a power of two ≤ 2 MB, or 0 for 256. */
    /** Borrowed source: the engine's host copy, read-only, valid until the layer is unregistered.
     *  It is not counted in the RAM pool (the engine owns it). On a failing device, when the cache
     *  has logged at ERROR that "a queued copy cannot be waited for", a copy from it may still run
     *  after the unregistration: keep it until vc_cache_destroy returns (whose device frees wait
     *  for the device). */
    const void *host_ptr;
    /** Loader source: called to fill a RAM-pool buffer when the layer is needed and not in RAM. */
    vc_loader_fn loader;
    void *loader_user; /**< Passed to `loader`; borrowed. */
    /** Optional: the layer's compute per use, in any unit common to the model's layers (FLOPs is
     *  natural). The planner spreads streamed layers by it, so copies hide behind compute; 0 (all
     *  unknown) spreads them by bytes. Must be finite, >= 0 and at most 1e30. */
    double cost;
} vc_layer_desc;

/** Registers a model. `name` is copied and must be unique in the cache. On success *out is set.
 *  Errors: VC_ERR_INVALID_ARG (NULL/empty name, NULL out), VC_ERR_EXISTS, VC_ERR_NO_MEMORY. */
VC_API int vc_model_register(vc_cache *cache, const char *name, vc_model_id *out);

/** Unregisters a model and all its layers, freeing their RAM and device memory. Waits while another
 *  thread (the stage-ahead worker, typically) runs the loader of one of its layers, so it must not be
 *  called from one of the model's own loaders. Calls on other threads that name the model or its
 *  layers get VC_ERR_NOT_FOUND once it has gone.
 *  Errors: VC_ERR_NOT_FOUND, VC_ERR_BUSY (a layer is held, or a sharing cache's upload may still read
 *  its RAM copy (vc_layer_register_shared): nothing is removed). */
VC_API int vc_model_unregister(vc_cache *cache, vc_model_id model);

/** Finds a model by name. Errors: VC_ERR_INVALID_ARG, VC_ERR_NOT_FOUND. */
VC_API int vc_model_find(vc_cache *cache, const char *name, vc_model_id *out);

/** Registers a layer of `model`; it starts not loaded. On success *out is set.
 *  Register a model's layers in the order they run where you can: until the model's order is known
 *  (declared, or learned from its first pass), the planned policy uploads the next registered
 *  layers ahead once acquires have followed the registration order for two layers in a row
 *  (prefetch_depth bounds it; a layer only its loader can provide is read ahead once it is in the
 *  RAM pool: vc_model_load_ram, or stage_ahead, which queues it for the stager).
 *  Errors: VC_ERR_INVALID_ARG (no name, zero size, no source or two sources, alignment not a power
 *  of two or above 2 MB, a cost that is negative, not a number or above 1e30), VC_ERR_TOO_LARGE
 *  (size plus alignment overflows), VC_ERR_NOT_FOUND (model),
 *  VC_ERR_NO_MEMORY. A layer larger than the current VRAM budget is accepted (budgets are dynamic);
 *  acquiring it fails with VC_ERR_OUT_OF_VRAM while it does not fit. */
VC_API int vc_layer_register(vc_cache *cache, vc_model_id model, const vc_layer_desc *desc,
                             vc_layer_id *out);

/** Registers a layer of `model` whose weights come from layer `source` of another cache, `owner` —
 *  for several GPUs serving one model: each GPU's cache registers the layer as shared from one owning
 *  cache, and the weights are held in RAM once, in the owner's RAM pool (loaded there by its loader
 *  when needed), however many devices upload from them. Name, size and alignment are the source's.
 *  While a shared layer exists, `owner` cannot be destroyed (VC_ERR_BUSY), and while an upload of
 *  this cache may still read the source's RAM copy, the source (and its model) cannot be
 *  unregistered (VC_ERR_BUSY until this cache's next call reaps the finished upload), and it cannot
 *  be dropped from the owner's RAM pool either: an acquire on the owner whose load finds the pool
 *  full of such copies fails with VC_ERR_OUT_OF_RAM (retry after the sharing cache's next call).
 *  When this cache's backend fails so that an upload from the source cannot even be waited for (a
 *  failing device, logged at ERROR), the source stays pinned, and `owner` stays undestroyable, even
 *  after the shared layer is unregistered, until this cache's upload stream can be waited for again
 *  (tried at its next calls) or this cache is destroyed: freeing a copy under a running upload
 *  would send whatever the memory holds next to the device.
 *  If the source layer is unregistered, a copy already on this cache's device stays usable until it
 *  leaves; then acquiring the shared layer fails with VC_ERR_NOT_FOUND (in offload mode model, the loads of its
 *  whole model leave it out, so its model's other layers still load). Shared layers cannot be
 *  patched (patch the source): a patch or unpatch of the source reaches this cache at its next
 *  acquire of the layer while no hold is on it (a copy already held keeps its weights until then).
 *  Roles: a sharing cache takes the owner's lock inside its own, so a cache that others share from
 *  shares from nobody, and a cache that shares is shared from by nobody (a cycle could deadlock):
 *  let one cache own every model that is shared, and the others share from it. Such a registration
 *  is refused, with nothing registered. Thread-safe.
 *  Errors: VC_ERR_INVALID_ARG (NULL, owner == cache, `cache` is shared from, `owner` shares),
 *  VC_ERR_NOT_FOUND, VC_ERR_NO_MEMORY. */
VC_API int vc_layer_register_shared(vc_cache *cache, vc_model_id model, vc_cache *owner, vc_layer_id source,
                                    vc_layer_id *out);

/** Unregisters a layer, freeing its RAM copy and device memory. Waits while another thread runs its
 *  loader or patch function (so it must not be called from them).
 *  Errors: VC_ERR_NOT_FOUND, VC_ERR_BUSY (held, or a sharing cache's upload may still read its RAM
 *  copy: nothing changes). */
VC_API int vc_layer_unregister(vc_cache *cache, vc_layer_id layer);

/** Makes `layer` resident in device memory and holds it: it will not be evicted until a matching
 *  vc_layer_release(). Holds nest (acquire twice, release twice). `stream` is the engine stream that
 *  will read the weights; when the call returns, work queued on `stream` after it sees the weights
 *  (the stream waits on the upload's event; the host does not). NULL is the legacy default stream
 *  of the cache's device, whichever device the calling thread has current. *device_ptr receives
 *  the address, valid until the last release. A miss may call the layer's loader (without the
 *  lock), evict unheld layers (with the planned policy and a known order, the one needed furthest
 *  in the future; otherwise the least recently used) and copy host→device; in offload mode model
 *  it loads the layer's whole model, whose other copies `stream` does not wait for (each later
 *  acquire waits for its own layer's), and its loaders run within this call. While another thread
 *  loads the same layer (the stage-ahead worker included), it waits for that load and uses it.
 *  Errors: VC_ERR_INVALID_ARG, VC_ERR_NOT_FOUND, VC_ERR_OUT_OF_VRAM (held layers and working memory
 *  leave no room: message gives the numbers), VC_ERR_OUT_OF_RAM (a loaded layer needs more RAM than
 *  unheld RAM copies can free), VC_ERR_LOADER, VC_ERR_BACKEND. On error the layer is not held and
 *  *device_ptr is untouched; layers evicted to make room stay evicted (their weights are kept).
 *  CUDA graphs: neither this nor vc_layer_release may be called while `stream` (or, in CUDA's
 *  global capture mode, any stream) is being captured: they may allocate device memory and query
 *  events, which capture forbids (CUDA then invalidates the capture), and an event they record on
 *  a capturing stream becomes part of the graph, which the cache cannot then wait for. A layer's
 *  address holds only between its acquire and its last release, and a layer that streams lands
 *  elsewhere each pass: a graph may use the addresses of layers acquired before its capture began
 *  and released after its last replay. */
VC_API int vc_layer_acquire(vc_cache *cache, vc_layer_id layer, vc_stream stream, void **device_ptr);

/** Releases one hold. `stream` is the stream on which the engine last used the weights: device
 *  memory is reused only after work already queued there completes.
 *  Errors: VC_ERR_NOT_FOUND, VC_ERR_NOT_HELD (no hold to release: nothing changes). */
VC_API int vc_layer_release(vc_cache *cache, vc_layer_id layer, vc_stream stream);

/** Where a layer's weights are. */
typedef enum vc_residency {
    VC_RES_NONE = 0,      /**< Not loaded: only the loader can produce the weights. */
    VC_RES_RAM = 1,       /**< A host copy exists (RAM pool or the engine's borrowed pointer). */
    VC_RES_VRAM = 2,      /**< On the device only (keep_ram_copy off, or RAM copy evicted). */
    VC_RES_VRAM_RAM = 3,  /**< On the device and in host memory. */
    VC_RES_LOADING = 4    /**< The loader is running for it. */
} vc_residency;

/** A snapshot of one layer. `name` is owned by the cache and valid until the layer is
 *  unregistered. */
typedef struct vc_layer_info {
    const char *name;
    vc_model_id model;
    size_t bytes;
    size_t alignment;
    vc_residency residency;
    unsigned holds;
    int borrowed_source; /**< 1 when the source is the engine's host pointer. */
    int patched;         /**< 1 while vc_layer_patch's changes are in force. */
} vc_layer_info;

/** Fills *info. `info->name` is the cache's copy of the name: valid until the layer is
 *  unregistered. Thread-safe. Errors: VC_ERR_INVALID_ARG, VC_ERR_NOT_FOUND (*info unchanged).
 *  vc_layer_get_info() is a macro that passes the size of the vc_layer_info the program was built
 *  with to vc_layer_get_info_sized(), so a later library whose structure has grown writes only
 *  that many bytes; a size it does not know (a newer header than the library) is
 *  VC_ERR_INVALID_ARG. The function of the same name (`(vc_layer_get_info)(...)`, or from other
 *  languages) assumes this header's size. */
VC_API int vc_layer_get_info_sized(vc_cache *cache, vc_layer_id layer, vc_layer_info *info, size_t info_size);
VC_API int(vc_layer_get_info)(vc_cache *cache, vc_layer_id layer, vc_layer_info *info);
#define vc_layer_get_info(cache, layer, info) vc_layer_get_info_sized((cache), (layer), (info), sizeof(vc_layer_info))

/** Copies the layer's current weights into `dst` (`size` must equal the layer's size), from
 *  whichever copy is authoritative: RAM, device (synchronously), or the loader. Changes no
 *  residency. For verification and for engines that save weights. While another thread loads or
 *  patches the layer (the stage-ahead worker included) it waits for that to finish, as acquire
 *  does; so it must not be called from that layer's own loader or patch function.
 *  Errors: VC_ERR_INVALID_ARG, VC_ERR_NOT_FOUND, VC_ERR_LOADER, VC_ERR_BACKEND. */
VC_API int vc_layer_read(vc_cache *cache, vc_layer_id layer, void *dst, size_t size);

/** Where vc_layer_offload() and vc_model_offload() move weights out of. */
typedef enum vc_offload_target {
    VC_OFFLOAD_VRAM = 1, /**< Leave device memory (keeping or writing back a RAM copy). */
    VC_OFFLOAD_ALL = 3   /**< Leave device memory and the RAM pool (loader layers only reload). */
} vc_offload_target;

/** Manual offload ("move base model to CPU"): moves an unheld layer out of VRAM (and out of the RAM
 *  pool with VC_OFFLOAD_ALL). Weights are never lost: with keep_ram_copy off they are copied back
 *  first. A layer already out is a success. Waits while another thread loads or patches the layer.
 *  Errors: VC_ERR_INVALID_ARG, VC_ERR_NOT_FOUND, VC_ERR_BUSY (held), VC_ERR_BACKEND. */
VC_API int vc_layer_offload(vc_cache *cache, vc_layer_id layer, vc_offload_target target);

/** Whole-model lock for engines that do not work per layer (InvokeAI's model lock): acquires every
 *  layer of the model, all or nothing — on failure the holds taken so far are released.
 *  Errors: as vc_layer_acquire, plus VC_ERR_NOT_FOUND for the model. */
VC_API int vc_model_acquire(vc_cache *cache, vc_model_id model, vc_stream stream);
/** Releases one hold on every layer of the model. All or nothing: VC_ERR_NOT_HELD if any layer is
 *  not held (nothing is released then). */
VC_API int vc_model_release(vc_cache *cache, vc_model_id model, vc_stream stream);
/** vc_layer_offload() for every unheld layer of the model; held layers are skipped and counted:
 *  returns VC_ERR_BUSY when any was skipped, after offloading the rest. Waits first while another
 *  thread loads or patches any of its layers. */
VC_API int vc_model_offload(vc_cache *cache, vc_model_id model, vc_offload_target target);
/** InvokeAI's "Clear Model Cache" (what keep_alive_s does on a timer): every unheld layer of every
 *  model leaves VRAM and, when its loader can read it again, the RAM pool (VC_OFFLOAD_ALL); device
 *  segments left empty go back to the device, and plans are made afresh at each model's next pass.
 *  Weights are never lost. Waits first while another thread loads or patches a layer. Held layers
 *  stay: returns VC_ERR_BUSY after clearing the rest when any did. Errors: VC_ERR_INVALID_ARG
 *  (cache NULL), VC_ERR_BUSY. Thread-safe. */
VC_API int vc_cache_clear(vc_cache *cache);

/** Stages a layer's weights into the RAM pool ahead of use (InvokeAI's "load into the RAM cache"):
 *  runs its loader when the weights are neither borrowed, nor in the RAM pool, nor on the device,
 *  so that a later acquire or prefetch copies from RAM instead of calling the loader. Prefetching
 *  never calls a loader (it would stall the acquire that triggers it), so an engine that loads
 *  from files calls this, e.g. from a worker thread while another model runs, to let the scheduler
 *  stream those layers ahead. A shared layer is staged in its owning cache. The copy is an ordinary
 *  RAM-pool entry: later loads may evict it under the RAM budget. Already staged is a success
 *  without a loader call. Thread-safe: the loader runs without the cache lock, and an acquire of
 *  the same layer meanwhile waits for it instead of loading twice.
 *  Errors: VC_ERR_INVALID_ARG (cache NULL), VC_ERR_NOT_FOUND, VC_ERR_OUT_OF_RAM (the RAM copies that
 *  could be dropped do not make room), VC_ERR_LOADER, VC_ERR_NO_MEMORY. On error no copy of the
 *  layer was added. */
VC_API int vc_layer_load_ram(vc_cache *cache, vc_layer_id layer);
/** vc_layer_load_ram() for every layer of a model, in registration order. Refuses with
 *  VC_ERR_OUT_OF_RAM, loading nothing, when the model's weights that live in the RAM pool exceed
 *  the pool's budget. A loader error stops the walk: the layers staged before it stay staged (they
 *  are valid copies), the rest are not loaded. Errors: as vc_layer_load_ram. Thread-safe. */
VC_API int vc_model_load_ram(vc_cache *cache, vc_model_id model);

/** How vc_layer_patch keeps the original weights (seed 001's LoRA modes). */
typedef enum vc_patch_mode {
    VC_PATCH_BACKUP = 0, /**< keep a RAM copy of the original; vc_layer_unpatch restores it at once.
                              Costs RAM: up to twice the patched layers' size. Patches may stack; on a
                              layer patched with FUSE one stacks without a copy (the original is the
                              source's) and unpatch reads the source, as for FUSE. */
    VC_PATCH_FUSE = 1    /**< change the weights in place, no second copy; vc_layer_unpatch reads the
                              original from the source again (loader or borrowed pointer) */
} vc_patch_mode;

/** Changes a layer's weights (a LoRA merge, a fine-tune delta): `fn(user, weights, bytes)` is called,
 *  without the cache lock, with the layer's current weights in a RAM-pool buffer and changes them in
 *  place, returning 0 (or a negative value to cancel). The patched weights become the layer's only
 *  authoritative copy: they stay in the RAM pool (counted, never dropped, whatever keep_ram_copy says)
 *  and reach the device at the next acquire, on every device that shares the layer too
 *  (vc_layer_register_shared). A borrowed source is never written: the layer gets a private copy.
 *  FUSE on a layer that is already patched is refused (unpatch first). Waits while another thread
 *  loads or patches the layer (`fn` must not call the cache for this layer).
 *  Errors: VC_ERR_INVALID_ARG, VC_ERR_NOT_FOUND, VC_ERR_BUSY (held, or an upload of a
 *  cache sharing the layer still reads its RAM copy: that cache lets it go at its next acquire,
 *  release or vc_cache_get_stats), VC_ERR_UNSUPPORTED (a shared layer: patch its source), VC_ERR_OUT_OF_RAM,
 *  VC_ERR_NO_MEMORY, VC_ERR_LOADER (producing the current weights, or `fn` failed: the weights are
 *  left as they were), VC_ERR_BACKEND. */
VC_API int vc_layer_patch(vc_cache *cache, vc_layer_id layer, vc_patch_mode mode,
                          int (*fn)(void *user, void *weights, size_t bytes), void *user);

/** Restores a patched layer's original weights (from the backup, or from the source after FUSE).
 *  Devices sharing the layer get the original back at their next acquire. An unpatched layer is a
 *  success. Waits while another thread loads or patches the layer. Errors: VC_ERR_NOT_FOUND,
 *  VC_ERR_BUSY (held, or a sharing cache's upload still reads its RAM copy, as for
 *  vc_layer_patch), VC_ERR_BACKEND (an upload still reading the RAM copy cannot be waited for: the
 *  layer stays patched). */
VC_API int vc_layer_unpatch(vc_cache *cache, vc_layer_id layer);

/** Declares the order in which the model's layers run in one pass (a denoising step): `n` layer
 *  ids of this model; a layer that runs more than once in the pass (a module shared by two blocks,
 *  a block run in a loop) is listed at each of its uses (the cache learns such passes too). With an
 *  order known, the planned policy prefetches the next layers and keeps a resident set chosen so
 *  that streamed layers are spread between resident ones.
 *  Declaring the order the model already runs by (learned or declared before) changes nothing but
 *  making it declared: an engine may declare it at every generation at no cost.
 *  A declared order is kept through mismatches (branches only cost prefetch accuracy); n == 0 clears
 *  it, and the cache learns the order from the next pass instead (the default: it records the first
 *  pass, checks later passes, and drops a learned order after repeated mismatches). Unregistering
 *  one of the model's layers drops its order, declared or learned: the next pass is learned (or
 *  declare the new order again).
 *  Models that run whole passes in turn every step (a ControlNet, then the UNet it conditions) are
 *  planned as one pass once the cache has seen them alternate for two steps, and planned apart
 *  again as soon as another model runs than the one due (logged at INFO). An engine may hold
 *  several layers at once (a block run as one kernel): the plan leaves room for two such blocks.
 *  Errors: VC_ERR_INVALID_ARG (a layer of another model, or order NULL with n > 0),
 *  VC_ERR_NOT_FOUND, VC_ERR_NO_MEMORY. Nothing changes on error. */
VC_API int vc_model_set_order(vc_cache *cache, vc_model_id model, const vc_layer_id *order, size_t n);

/** Reports the model's execution order state: *known is 1 when an order is in use, *declared 1
 *  when it was declared rather than learned, *length its number of uses per pass (its layers,
 *  counting a layer that runs more than once at each use). Any output may be NULL. */
VC_API int vc_model_get_order(vc_cache *cache, vc_model_id model, int *known, int *declared, size_t *length);

/* ---------------------------------------------------------------------------------------------- */
/* Tracing                                                                                         */
/* ---------------------------------------------------------------------------------------------- */

/** Starts writing a Chrome trace-event JSON timeline (opens in Perfetto and chrome://tracing) to
 *  `path`: uploads and write-backs as they run on the copy engines (exactly on the simulated
 *  backend; on CUDA/HIP with VRAMCACHE_EVENT_TIMING=1 set when the backend is created, written once
 *  each copy has run; at issue time otherwise), evictions with their reasons, holds and
 *  reservations per layer. Errors: VC_ERR_INVALID_ARG, VC_ERR_IO (cannot create the file), VC_ERR_BUSY (already
 *  tracing). */
VC_API int vc_cache_trace_start(vc_cache *cache, const char *path);
/** Adds an engine span (a kernel, a pipeline stage) to the trace: `start_s` and `duration_s` on the
 *  backend's clock (vc_sim_now for the simulator; for other backends, CLOCK_MONOTONIC seconds since
 *  vc_cache_trace_start). No-op when not tracing. */
VC_API int vc_cache_trace_span(vc_cache *cache, const char *track, const char *name, double start_s,
                               double duration_s);
/** Finishes and closes the trace file. Also done by vc_cache_destroy. */
VC_API int vc_cache_trace_stop(vc_cache *cache);

/* ---------------------------------------------------------------------------------------------- */
/* Working memory                                                                                  */
/* ---------------------------------------------------------------------------------------------- */

/** Flags for vc_reserve_working_mem(). */
#define VC_RESERVE_BUFFER 1u /**< Also allocate a device buffer of that size (vc_reservation_ptr). */

/** Guarantees `bytes` of device memory for an operation (e.g. a VAE decode) until the matching
 *  vc_release_working_mem(). The standing working memory counts toward it (an operation may ask for
 *  more than the standing amount, never less; with smart_working_mem the reservations replace it
 *  while any is active): the cache evicts unheld layers for the shortfall only and returns the
 *  device memory they occupied. Layers the cache is still prefetching are waited for (their
 *  uploads finish on their own) when they alone stand in the way; the call then blocks for those
 *  copies. With VC_RESERVE_BUFFER the cache also allocates a
 *  device buffer of `bytes` for the caller (vc_reservation_ptr).
 *  Errors: VC_ERR_INVALID_ARG, VC_ERR_OUT_OF_VRAM (held layers leave too little room: the cache is
 *  left exactly as it was), VC_ERR_BACKEND (the buffer could not be allocated, or a failing device
 *  left a copy that cannot be waited for holding memory the reservation needs: evicted layers stay
 *  evicted, nothing is reserved), VC_ERR_NO_MEMORY. */
VC_API int vc_reserve_working_mem(vc_cache *cache, size_t bytes, unsigned flags,
                                  vc_reservation **out);

/** How to estimate a VAE decode's working memory. */
typedef enum vc_vae_estimate {
    VC_VAE_ESTIMATE_INVOKEAI = 0, /**< H * W * element bytes * 960 * 1.2 (InvokeAI's SD/SDXL rule) */
    VC_VAE_ESTIMATE_COMFYUI = 1   /**< 2178 * (H/8) * (W/8) * 64 * element bytes (ComfyUI's SD/SDXL rule) */
} vc_vae_estimate;

/** Estimates the device memory a VAE decode of a `width` x `height` image needs, with elements of
 *  `bytes_per_element` (2 for fp16/bf16, 4 for fp32), to pass to vc_reserve_working_mem. The two
 *  engines' rules differ by about 2x (ComfyUI's is the more cautious); both are for the SD/SDXL VAE
 *  family (FLUX's 16-channel VAE decodes through the same upsampling stack). Saturates at SIZE_MAX;
 *  0 for a zero dimension or an unknown method. Thread-safe; never fails. */
VC_API size_t vc_estimate_vae_decode_bytes(unsigned width, unsigned height, unsigned bytes_per_element,
                                           vc_vae_estimate method);

/** Returns the device buffer of a reservation made with VC_RESERVE_BUFFER, else NULL. */
VC_API void *vc_reservation_ptr(const vc_reservation *reservation);

/** Ends a reservation, freeing its buffer; the room returns to the cache. The caller must have
 *  finished using the buffer on the device. Errors: VC_ERR_INVALID_ARG, VC_ERR_NOT_FOUND (not an
 *  active reservation of this cache: nothing happens). */
VC_API int vc_release_working_mem(vc_cache *cache, vc_reservation *reservation);

/* ---------------------------------------------------------------------------------------------- */
/* Statistics                                                                                      */
/* ---------------------------------------------------------------------------------------------- */

/** Why a layer left a pool. */
typedef enum vc_evict_reason {
    VC_EVICT_FOR_LOAD = 0,        /**< Room for a layer being acquired. */
    VC_EVICT_FOR_RESERVATION = 1, /**< Working memory reservation. */
    VC_EVICT_BUDGET_SHRANK = 2,   /**< Dynamic budget fell (another process took device memory). */
    VC_EVICT_FRAGMENTATION = 3,   /**< Chosen to open a contiguous hole. */
    VC_EVICT_MANUAL = 4,          /**< vc_layer_offload / vc_model_offload. */
    VC_EVICT_RAM_BUDGET = 5,      /**< RAM pool full (RAM copies only). */
    VC_EVICT_FOR_PREFETCH = 6,    /**< Room for a layer needed sooner than the victim. */
    VC_EVICT_SEQUENTIAL = 7,      /**< Sequential mode: released, so it leaves. */
    VC_EVICT_MODEL_SWAP = 8,      /**< Model mode: another whole model needed the room. */
    VC_EVICT_PLAN = 9,            /**< A new residency plan laid the device out afresh. */
    VC_EVICT_REASON_COUNT = 10
} vc_evict_reason;

/** Returns a static name for an eviction reason ("for_load"), or "unknown". */
VC_API const char *vc_evict_reason_name(int reason);

/** Counters and gauges of one cache. Gauges are exact at the moment of the call. */
typedef struct vc_stats {
    /* RAM pool */
    size_t ram_bytes;        /**< Bytes of RAM copies held in the pool now. */
    size_t ram_peak_bytes;   /**< Highest ram_bytes seen. */
    size_t ram_budget;       /**< The pool's budget. */
    /* device */
    size_t vram_bytes;       /**< Bytes of device memory occupied by layer weights now (with any range
                                  *   kept out of use while a failed write-back may still read it). */
    size_t vram_peak_bytes;  /**< Highest vram_bytes seen. */
    size_t arena_bytes;      /**< Device memory the cache holds for weights (used + free holes). */
    size_t arena_peak_bytes; /**< Highest arena_bytes seen; never above the budget in force. */
    size_t vram_limit;       /**< The weight budget at the last load decision. */
    size_t reserved_bytes;   /**< Working memory reserved now by active reservations. */
    size_t working_mem;      /**< Standing working memory. */
    /* traffic */
    uint64_t bytes_h2d;      /**< Bytes copied host→device. */
    uint64_t bytes_d2h;      /**< Bytes copied device→host (write-backs with keep_ram_copy off). */
    uint64_t bytes_loaded;   /**< Bytes produced by loader callbacks. */
    /* events */
    uint64_t hits;           /**< Acquires that found the layer in VRAM. */
    uint64_t misses;         /**< Acquires that had to upload it. */
    uint64_t ram_hits;       /**< Misses served from a RAM copy (or a borrowed pointer). */
    uint64_t loads;          /**< Loader calls that succeeded. */
    uint64_t load_failures;  /**< Loader calls that failed. */
    uint64_t vram_evictions[VC_EVICT_REASON_COUNT]; /**< Layers leaving VRAM, by reason. */
    uint64_t ram_evictions;  /**< RAM copies dropped to respect the RAM budget. */
    uint64_t reservations;   /**< Working-memory reservations granted. */
    /* scheduling */
    uint64_t prefetches;     /**< Uploads started ahead of use. */
    uint64_t prefetch_hits;  /**< Acquires that found their layer prefetched. */
    uint64_t orders_learned; /**< Execution orders learned from a first pass. */
    uint64_t order_mismatches; /**< Acquires out of the known order (branches, skips). */
    uint64_t order_resets;   /**< Learned orders dropped after too many mismatches. */
    /* population */
    uint64_t models, layers, layers_in_vram, layers_in_ram, layers_held;
} vc_stats;

/** Fills *out with a consistent snapshot (and frees RAM copies whose uploads have finished, so
 *  ram_bytes counts only what is still needed). Thread-safe. Errors: VC_ERR_INVALID_ARG (*out
 *  unchanged). vc_cache_get_stats() is a macro that passes the size of the vc_stats the program
 *  was built with to vc_cache_get_stats_sized(), so a later library with more counters writes only
 *  that many bytes; a size it does not know (a newer header than the library) is
 *  VC_ERR_INVALID_ARG. The function of the same name (`(vc_cache_get_stats)(...)`, or from other
 *  languages) assumes this header's size. */
VC_API int vc_cache_get_stats_sized(vc_cache *cache, vc_stats *out, size_t out_size);
VC_API int(vc_cache_get_stats)(vc_cache *cache, vc_stats *out);
#define vc_cache_get_stats(cache, out) vc_cache_get_stats_sized((cache), (out), sizeof(vc_stats))

/** Prints the stats in a human-readable block through `print` (NULL: stdout).
 *  Errors: VC_ERR_INVALID_ARG. Thread-safe. */
VC_API int vc_cache_print_stats(vc_cache *cache, vc_print_fn print, void *user);

#ifdef __cplusplus
}
#endif

#endif /* VRAMCACHE_H */
