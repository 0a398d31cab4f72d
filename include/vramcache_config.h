/*
 * libvramcache configuration — reads invokeai.yaml-style files.
 *
 * A vc_config holds every setting the library understands, each with the layer it came from.
 * Precedence, highest first: API setters (vc_config_set) > environment (INVOKEAI_<KEY>) > file >
 * defaults. Loading a file (or string) parses it completely first; if it has any error, the config
 * is left exactly as it was and the diagnostics say what is wrong and where. Loading again replaces
 * the file and environment layers (files are not merged); API values survive loads.
 *
 * Keys (see docs/configuration.md for the full table and the fine-tuning advice):
 *   enable_partial_loading (bool, true), max_cache_ram_gb (> 0, unset = computed),
 *   max_cache_vram_gb (>= 0, unset = dynamic), device_working_mem_gb (>= 0, 3),
 *   keep_ram_copy_of_weights (bool, true), log_memory_usage (bool, false),
 *   device (auto | cpu | cuda | cuda:N | hip | hip:N), pytorch_cuda_alloc_conf (string),
 *   precision (auto | float16 | bfloat16 | float32), offload_mode (none | model | sequential |
 *   balanced; default balanced with partial loading, model without), offload_max_gpu_memory
 *   (<= 1: fraction of device memory, > 1: GB; 0.75), schema_version (4.0.x).
 * SD.Next's diffusers_offload_mode / diffusers_offload_max_gpu_memory (and its older
 * diffusers_seq_cpu_offload / diffusers_model_cpu_offload for lowvram / medvram) are accepted as
 * aliases; its 'group' mode is read as sequential. SD.Next's config.json is read as it stands: its
 * other offload keys silently (a module list that names any with a warning), its own keys with
 * one warning that counts them.
 * Other InvokeAI keys are accepted silently; unknown keys get a warning with a suggestion;
 * ram, vram and lazy_offload are accepted and ignored with a warning naming their replacement;
 * InvokeAI 3.x files (top-level "InvokeAI:" with categories) are migrated as InvokeAI does.
 *
 * Threads: a vc_config is not synchronised; use one from one thread at a time (or read-only from
 * many). Diagnostics objects likewise.
 */
#ifndef VRAMCACHE_CONFIG_H
#define VRAMCACHE_CONFIG_H

#include "vramcache.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct vc_config vc_config;
typedef struct vc_diagnostics vc_diagnostics;

/** Settings, in the order `vramcache config show` prints them. */
typedef enum vc_config_key {
    VC_CFG_ENABLE_PARTIAL_LOADING = 0,
    VC_CFG_MAX_CACHE_RAM_GB,
    VC_CFG_MAX_CACHE_VRAM_GB,
    VC_CFG_DEVICE_WORKING_MEM_GB,
    VC_CFG_KEEP_RAM_COPY_OF_WEIGHTS,
    VC_CFG_LOG_MEMORY_USAGE,
    VC_CFG_DEVICE,
    VC_CFG_PYTORCH_CUDA_ALLOC_CONF,
    VC_CFG_PRECISION,
    VC_CFG_OFFLOAD_MODE,
    VC_CFG_OFFLOAD_MAX_GPU_MEMORY,
    VC_CFG_SCHEMA_VERSION,
    /* SD.Next's manual offload switches (seed 001), read and exposed for the engine, which acts on
     * them with vc_model_offload at the moments they name; the cache itself does not know which
     * model is the base, the refiner or the VAE. */
    VC_CFG_DIFFUSERS_MOVE_BASE,    /**< move the base model to CPU when the refiner runs */
    VC_CFG_DIFFUSERS_MOVE_UNET,    /**< move the base model to CPU when the VAE runs */
    VC_CFG_DIFFUSERS_MOVE_REFINER, /**< move the refiner to CPU when not in use */
    /** InvokeAI's model_cache_keep_alive_min: minutes without use after which the cache is cleared
     *  (0, the default: never); vc_config_apply sets vc_cache_options.keep_alive_s. */
    VC_CFG_MODEL_CACHE_KEEP_ALIVE_MIN,
    /** InvokeAI's smart_partial_loading (default false): working-memory reservations replace the
     *  standing device_working_mem_gb while active; sets vc_cache_options.smart_working_mem. */
    VC_CFG_SMART_PARTIAL_LOADING,
    /* SD.Next's launch flags (seed 001) as settings: `--lowvram` triggers sequential offload,
     * `--medvram` model offload. They choose the offload mode when offload_mode is unset (lowvram
     * first), ahead of the enable_partial_loading and GPU-size rules; see
     * vc_config_get_offload_mode. */
    VC_CFG_LOWVRAM, /**< lowvram: true = offload_mode sequential unless offload_mode is set */
    VC_CFG_MEDVRAM, /**< medvram: true = offload_mode model unless offload_mode or lowvram is set */
    VC_CFG_KEY_COUNT
} vc_config_key;

/** Where an effective value came from. */
typedef enum vc_config_source {
    VC_CFG_SOURCE_DEFAULT = 0,
    VC_CFG_SOURCE_FILE = 1,
    VC_CFG_SOURCE_ENV = 2,
    VC_CFG_SOURCE_API = 3,
    VC_CFG_SOURCE_COMPUTED = 4 /**< unset, so derived at run time (RAM budget, offload mode) */
} vc_config_source;

typedef enum vc_device_kind {
    VC_DEVICE_AUTO = 0,
    VC_DEVICE_CPU = 1,
    VC_DEVICE_CUDA = 2,
    VC_DEVICE_HIP = 3
} vc_device_kind;

/** Flags for the load functions. */
#define VC_CONFIG_NO_ENV 1u /**< do not read INVOKEAI_<KEY> environment variables */

/** Creates a config holding the defaults. Errors: VC_ERR_INVALID_ARG, VC_ERR_NO_MEMORY. */
VC_API int vc_config_create(vc_config **out);
/** Frees a config. NULL is a no-op. */
VC_API void vc_config_destroy(vc_config *cfg);

/** Reads `path` (UTF-8, BOM and CRLF allowed) and then the environment (unless VC_CONFIG_NO_ENV).
 *  Returns VC_OK when there are no errors (warnings allowed), VC_ERR_CONFIG when there is any error
 *  (cfg unchanged), VC_ERR_IO when the file cannot be read, VC_ERR_INVALID_ARG, VC_ERR_NO_MEMORY.
 *  When `diags` is not NULL, *diags receives every error and warning (free with
 *  vc_diagnostics_destroy), also on failure. The library never writes the file. */
VC_API int vc_config_load_file(vc_config *cfg, const char *path, unsigned flags, vc_diagnostics **diags);

/** As vc_config_load_file, from `len` bytes of `text`; `name` labels diagnostics (NULL: "<string>"). */
VC_API int vc_config_load_string(vc_config *cfg, const char *text, size_t len, const char *name,
                                 unsigned flags, vc_diagnostics **diags);

/** Sets a key from its textual form as it would appear in the file ("12", "true", "cuda:1", "null"
 *  to unset an optional key), at API precedence. Errors: VC_ERR_INVALID_ARG (NULL, unknown key),
 *  VC_ERR_CONFIG (bad value: vc_last_error() says why; nothing changes). */
VC_API int vc_config_set(vc_config *cfg, vc_config_key key, const char *value);
/** Removes an API-set value, so the environment, file or default applies again. */
VC_API int vc_config_unset(vc_config *cfg, vc_config_key key);

/** The key's invokeai.yaml name ("max_cache_vram_gb"), or NULL for an invalid key. */
VC_API const char *vc_config_key_name(vc_config_key key);
/** Looks a key up by name (aliases included). Returns VC_ERR_NOT_FOUND for an unknown name. */
VC_API int vc_config_key_from_name(const char *name, vc_config_key *out);
/** Where the effective value of `key` came from. */
VC_API vc_config_source vc_config_get_source(const vc_config *cfg, vc_config_key key);

/** Typed getters of effective values. Each returns VC_ERR_INVALID_ARG when the key is not of
 *  that type. */
VC_API int vc_config_get_bool(const vc_config *cfg, vc_config_key key, int *out);
/** Numbers (GB, fractions, minutes). Optional keys that are unset give VC_ERR_NOT_FOUND. */
VC_API int vc_config_get_number(const vc_config *cfg, vc_config_key key, double *out);
/** Text of any key as it would be written in the file ("auto", "cuda:1", "12", "null"); the
 *  pointer is owned by cfg and valid until cfg changes. NULL for an invalid key. */
VC_API const char *vc_config_get_text(const vc_config *cfg, vc_config_key key);
/** The device: kind and index (-1 when none was given). */
VC_API int vc_config_get_device(const vc_config *cfg, vc_device_kind *kind, int *index);
/** The effective offload mode: offload_mode when set; else sequential when lowvram is true, model
 *  when medvram is true (SD.Next's launch flags, lowvram first); else derived from
 *  enable_partial_loading (balanced when it is true, model when false). Without knowing the
 *  device: see vc_config_get_offload_mode_for. NULL cfg: balanced. Never fails. */
VC_API vc_offload_mode vc_config_get_offload_mode(const vc_config *cfg);

/** The effective offload mode on a device of `device_bytes` total memory (`is_gpu` 0 for the host
 *  backend): as vc_config_get_offload_mode, except that an unset offload_mode with partial loading
 *  on (and neither lowvram nor medvram) is sequential on a GPU of 4 GB or less (its size rounded to whole GB, as SD.Next decides its
 *  default), balanced above. `why` (may be NULL) gets the reason in a few words.
 *  vc_cache_create_from_config and `vramcache simulate` use it. Never fails. */
VC_API vc_offload_mode vc_config_get_offload_mode_for(const vc_config *cfg, int is_gpu, size_t device_bytes,
                                                      char *why, size_t why_size);
/** Whether pytorch_cuda_alloc_conf selects stream-ordered allocation (backend:cudaMallocAsync). */
VC_API int vc_config_cuda_malloc_async(const vc_config *cfg);

/** Fills cache options from the config (budgets in bytes, working_mem, keep_ram_copy,
 *  log_memory_usage, offload_mode, offload_max_gpu_memory, stream_ordered_working_mem,
 *  keep_alive_s, smart_working_mem); other fields of `opts` are left as they are. opts must be
 *  initialised with vc_cache_options_init; a program built against an earlier header passes its
 *  smaller struct_size, and fields its structure lacks are not written. Thread-safe for distinct
 *  opts (the config is only read). Errors: VC_ERR_INVALID_ARG (NULL, or struct_size neither this
 *  header's nor an earlier release's): opts unchanged. */
VC_API int vc_config_apply(const vc_config *cfg, vc_cache_options *opts);

/** Creates the backend that `device` asks for: auto tries the GPU backends this build has, then
 *  falls back to the host backend; cpu is the host backend. `why` (may be NULL) receives the
 *  reason for the choice. Errors: VC_ERR_NO_DEVICE (an explicit cuda/hip device that is not
 *  available, with the reason), VC_ERR_INVALID_ARG, VC_ERR_NO_MEMORY. */
VC_API int vc_config_create_backend(const vc_config *cfg, vc_backend **out, char *why, size_t why_size);

/** One call from a config file to a cache: load (with the environment), resolve the backend, and
 *  create the cache, which owns the backend; an unset offload_mode is resolved for that device
 *  (vc_config_get_offload_mode_for) and the choice logged at INFO. On failure nothing is left allocated except *diags.
 *  Errors: those of vc_config_load_file, vc_config_create_backend and vc_cache_create. */
VC_API int vc_cache_create_from_file(const char *path, vc_cache **out, vc_diagnostics **diags);
/** As above from a loaded config. */
VC_API int vc_cache_create_from_config(const vc_config *cfg, vc_cache **out);

/** Prints the effective settings as YAML, one `key: value` per line with invokeai.yaml names and
 *  GB numbers, each ending with a comment saying where the value came from (# default, # file,
 *  # env, # api, # computed: ...), including what this machine computes (RAM and VRAM budgets, the
 *  backend `device` resolves to and why). `print` NULL means stdout. */
VC_API int vc_config_show(const vc_config *cfg, vc_print_fn print, void *user);

/* ---- diagnostics ---- */

typedef enum vc_diag_severity { VC_DIAG_ERROR = 0, VC_DIAG_WARNING = 1 } vc_diag_severity;

/** One problem found while loading. Strings are owned by the diagnostics object. */
typedef struct vc_diagnostic {
    vc_diag_severity severity;
    const char *file;  /**< path, "<string>" or "environment" */
    unsigned line;     /**< 1-based; 0 when not from a file position */
    unsigned column;   /**< 1-based; 0 when unknown */
    const char *key;   /**< the key concerned, or "" */
    const char *message;
} vc_diagnostic;

VC_API size_t vc_diagnostics_count(const vc_diagnostics *d);
VC_API size_t vc_diagnostics_errors(const vc_diagnostics *d);
/** The i-th diagnostic in file order, or NULL when out of range. */
VC_API const vc_diagnostic *vc_diagnostics_get(const vc_diagnostics *d, size_t i);
/** Prints each as "FILE:LINE:COL: error: MESSAGE" (or warning) on its own line. */
VC_API int vc_diagnostics_print(const vc_diagnostics *d, vc_print_fn print, void *user);
VC_API void vc_diagnostics_destroy(vc_diagnostics *d);

#ifdef __cplusplus
}
#endif

#endif /* VRAMCACHE_CONFIG_H */
