/* The vc_config object: layered values, typed getters, and the bridge to caches and backends. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cache_internal.h"
#include "config_internal.h"
#include "read_file.h"

#define MAX_CONFIG_FILE ((size_t)16 << 20)

static void set_defaults(vc_config *cfg) {
    for (int k = 0; k < VC_CFG_KEY_COUNT; k++) {
        char err[256], warn[256];
        const cfg_key_def *def = &vc__cfg_keys[k];
        vc__cfg_parse(def, def->default_text, CFG_TEXT_STRING, &cfg->layer[LAYER_DEFAULT][k], err, sizeof err, warn,
                      sizeof warn);
    }
}

int vc_config_create(vc_config **out) {
    if (!out) return vc__fail(NULL, VC_ERR_INVALID_ARG, "vc_config_create: out is NULL");
    *out = calloc(1, sizeof(vc_config));
    if (!*out) return vc__fail(NULL, VC_ERR_NO_MEMORY, "vc_config_create: out of host memory");
    set_defaults(*out);
    return VC_OK;
}

void vc_config_destroy(vc_config *cfg) { free(cfg); }

const cfg_value *vc__cfg_effective(const vc_config *cfg, vc_config_key key, int *layer) {
    for (int l = LAYER_COUNT - 1; l > LAYER_DEFAULT; l--)
        if (cfg->layer[l][key].set) {
            if (layer) *layer = l;
            return &cfg->layer[l][key];
        }
    if (layer) *layer = LAYER_DEFAULT;
    return &cfg->layer[LAYER_DEFAULT][key];
}

static int valid_key(vc_config_key key) { return (int)key >= 0 && key < VC_CFG_KEY_COUNT; }

int vc_config_load_string(vc_config *cfg, const char *text, size_t len, const char *name, unsigned flags,
                          vc_diagnostics **diags) {
    if (diags) *diags = NULL;
    if (!cfg || (!text && len))
        return vc__fail(NULL, VC_ERR_INVALID_ARG, "vc_config_load_string: %s is NULL", !cfg ? "cfg" : "text");
    if (flags & ~VC_CONFIG_NO_ENV)
        return vc__fail(NULL, VC_ERR_INVALID_ARG, "vc_config_load_string: unknown flags %#x", flags);
    if (!name) name = "<string>";
    vc_diagnostics *d = vc__diag_new();
    if (!d) return vc__fail(NULL, VC_ERR_NO_MEMORY, "vc_config_load_string: out of host memory");
    /* Parse into fresh layers; the config changes only if everything parsed. */
    cfg_value file[VC_CFG_KEY_COUNT], env[VC_CFG_KEY_COUNT];
    memset(file, 0, sizeof file);
    memset(env, 0, sizeof env);
    vc__cfg_parse_yaml(text ? text : "", len, name, file, d);
    if (!(flags & VC_CONFIG_NO_ENV)) vc__cfg_read_env(env, d);
    int st = VC_OK;
    size_t errors = vc_diagnostics_errors(d);
    if (errors) {
        const vc_diagnostic *first = NULL;
        for (size_t i = 0; i < vc_diagnostics_count(d) && !first; i++)
            if (vc_diagnostics_get(d, i)->severity == VC_DIAG_ERROR) first = vc_diagnostics_get(d, i);
        st = vc__fail(NULL, VC_ERR_CONFIG, "%s: %zu error(s) in the configuration, nothing applied; first: "
                      "%s:%u:%u: %s", name, errors, first ? first->file : name, first ? first->line : 0,
                      first ? first->column : 0, first ? first->message : "(not recorded)");
    } else {
        memcpy(cfg->layer[LAYER_FILE], file, sizeof file);
        memcpy(cfg->layer[LAYER_ENV], env, sizeof env);
    }
    if (diags)
        *diags = d;
    else
        vc_diagnostics_destroy(d);
    return st;
}

int vc_config_load_file(vc_config *cfg, const char *path, unsigned flags, vc_diagnostics **diags) {
    if (diags) *diags = NULL;
    if (!cfg || !path)
        return vc__fail(NULL, VC_ERR_INVALID_ARG, "vc_config_load_file: %s is NULL", !cfg ? "cfg" : "path");
    char *buf, why[128];
    size_t size;
    int read = vc__read_file(path, MAX_CONFIG_FILE, &buf, &size, why, sizeof why);
    if (read != VC_OK) {
        if (read == VC_ERR_TOO_LARGE) strncat(why, ": not a configuration file", sizeof why - strlen(why) - 1);
        if (diags && (*diags = vc__diag_new()))
            vc__diag_add(*diags, VC_DIAG_ERROR, path, 0, 0, "", "cannot read the file: %s", why);
        return vc__fail(NULL, VC_ERR_IO, "vc_config_load_file: cannot read '%s': %s", path, why);
    }
    int st = vc_config_load_string(cfg, buf, size, path, flags, diags);
    free(buf);
    return st;
}

int vc_config_set(vc_config *cfg, vc_config_key key, const char *value) {
    if (!cfg || !value || !valid_key(key))
        return vc__fail(NULL, VC_ERR_INVALID_ARG, "vc_config_set: %s", !cfg ? "cfg is NULL"
                        : !value ? "value is NULL" : "unknown key");
    char err[384], warn[256];
    cfg_value v;
    if (vc__cfg_parse(&vc__cfg_keys[key], value, CFG_TEXT_STRING, &v, err, sizeof err, warn, sizeof warn) != 0)
        return vc__fail(NULL, VC_ERR_CONFIG, "vc_config_set: %s", err);
    cfg->layer[LAYER_API][key] = v;
    return VC_OK;
}

int vc_config_unset(vc_config *cfg, vc_config_key key) {
    if (!cfg || !valid_key(key)) return vc__fail(NULL, VC_ERR_INVALID_ARG, "vc_config_unset: bad argument");
    memset(&cfg->layer[LAYER_API][key], 0, sizeof(cfg_value));
    return VC_OK;
}

const char *vc_config_key_name(vc_config_key key) { return valid_key(key) ? vc__cfg_keys[key].name : NULL; }

int vc_config_key_from_name(const char *name, vc_config_key *out) {
    if (!name || !out) return vc__fail(NULL, VC_ERR_INVALID_ARG, "vc_config_key_from_name: NULL argument");
    int k = vc__cfg_lookup(name);
    if (k < 0) return vc__fail(NULL, VC_ERR_NOT_FOUND, "no configuration key named '%s'", name);
    *out = (vc_config_key)k;
    return VC_OK;
}

vc_config_source vc_config_get_source(const vc_config *cfg, vc_config_key key) {
    if (!cfg || !valid_key(key)) return VC_CFG_SOURCE_DEFAULT;
    int layer;
    const cfg_value *v = vc__cfg_effective(cfg, key, &layer);
    static const vc_config_source map[LAYER_COUNT] = {VC_CFG_SOURCE_DEFAULT, VC_CFG_SOURCE_FILE,
                                                      VC_CFG_SOURCE_ENV, VC_CFG_SOURCE_API};
    /* Unset values that the library derives at run time. */
    if (v->is_null && (key == VC_CFG_MAX_CACHE_RAM_GB || key == VC_CFG_MAX_CACHE_VRAM_GB ||
                       key == VC_CFG_OFFLOAD_MODE))
        return VC_CFG_SOURCE_COMPUTED;
    return map[layer];
}

int vc_config_get_bool(const vc_config *cfg, vc_config_key key, int *out) {
    if (!cfg || !out || !valid_key(key) || vc__cfg_keys[key].type != CFG_BOOL)
        return vc__fail(NULL, VC_ERR_INVALID_ARG, "vc_config_get_bool: not a boolean key");
    *out = vc__cfg_effective(cfg, key, NULL)->b;
    return VC_OK;
}

int vc_config_get_number(const vc_config *cfg, vc_config_key key, double *out) {
    if (!cfg || !out || !valid_key(key) ||
        (vc__cfg_keys[key].type != CFG_GB && vc__cfg_keys[key].type != CFG_GB_OR_FRACTION &&
         vc__cfg_keys[key].type != CFG_MINUTES))
        return vc__fail(NULL, VC_ERR_INVALID_ARG, "vc_config_get_number: not a numeric key");
    const cfg_value *v = vc__cfg_effective(cfg, key, NULL);
    if (v->is_null) return VC_ERR_NOT_FOUND;
    *out = v->num;
    return VC_OK;
}

const char *vc_config_get_text(const vc_config *cfg, vc_config_key key) {
    if (!cfg || !valid_key(key)) return NULL;
    return vc__cfg_effective(cfg, key, NULL)->text;
}

int vc_config_get_device(const vc_config *cfg, vc_device_kind *kind, int *index) {
    if (!cfg) return vc__fail(NULL, VC_ERR_INVALID_ARG, "vc_config_get_device: cfg is NULL");
    const cfg_value *v = vc__cfg_effective(cfg, VC_CFG_DEVICE, NULL);
    if (kind) *kind = (vc_device_kind)v->dev_kind;
    if (index) *index = v->dev_index;
    return VC_OK;
}

/* The offload mode as the configuration alone decides it, and why; *why NULL when it is only the
 * default of partial loading (balanced), which a small GPU turns into sequential. */
static vc_offload_mode config_mode(const vc_config *cfg, const char **why) {
    *why = NULL;
    if (!cfg) return VC_OFFLOAD_MODE_BALANCED;
    const cfg_value *v = vc__cfg_effective(cfg, VC_CFG_OFFLOAD_MODE, NULL);
    if (!v->is_null) {
        *why = "set in the configuration";
        return (vc_offload_mode)v->dev_kind; /* enum index: none, model, sequential, balanced */
    }
    /* SD.Next: --lowvram triggers sequential offload, --medvram model offload; as there, they pick
     * the default, so an explicit offload_mode still wins */
    if (vc__cfg_effective(cfg, VC_CFG_LOWVRAM, NULL)->b) {
        *why = "since lowvram is true (SD.Next's --lowvram)";
        return VC_OFFLOAD_MODE_SEQUENTIAL;
    }
    if (vc__cfg_effective(cfg, VC_CFG_MEDVRAM, NULL)->b) {
        *why = "since medvram is true (SD.Next's --medvram)";
        return VC_OFFLOAD_MODE_MODEL;
    }
    if (!vc__cfg_effective(cfg, VC_CFG_ENABLE_PARTIAL_LOADING, NULL)->b) {
        *why = "since enable_partial_loading is false";
        return VC_OFFLOAD_MODE_MODEL;
    }
    return VC_OFFLOAD_MODE_BALANCED;
}

vc_offload_mode vc_config_get_offload_mode(const vc_config *cfg) {
    const char *why;
    return config_mode(cfg, &why);
}

vc_offload_mode vc_config_get_offload_mode_for(const vc_config *cfg, int is_gpu, size_t device_bytes,
                                               char *why, size_t why_size) {
    char dummy[8];
    if (!why || !why_size) why = dummy, why_size = sizeof dummy;
    const char *reason;
    vc_offload_mode m = config_mode(cfg, &reason);
    if (reason) {
        snprintf(why, why_size, "%s", reason);
    } else if (is_gpu && device_bytes > 0 && (double)device_bytes / (double)VC_GB < 4.5) {
        /* SD.Next: sequential for GPUs of 4 GB or less (whole GB, rounded), balanced above */
        m = VC_OFFLOAD_MODE_SEQUENTIAL;
        snprintf(why, why_size, "since the GPU has %.1f GB (4 GB or less: minimum VRAM)",
                 (double)device_bytes / (double)VC_GB);
    } else {
        snprintf(why, why_size, "since enable_partial_loading is true%s", is_gpu ? " and the GPU has more than 4 GB" : "");
    }
    return m;
}

/* "none", "model", "sequential" or "balanced": the names the offload_mode key accepts. */
static const char *mode_name(vc_offload_mode m) { return vc__cfg_keys[VC_CFG_OFFLOAD_MODE].enum_values[m]; }

int vc_config_cuda_malloc_async(const vc_config *cfg) {
    if (!cfg) return 0;
    const cfg_value *v = vc__cfg_effective(cfg, VC_CFG_PYTORCH_CUDA_ALLOC_CONF, NULL);
    return !v->is_null && strstr(v->text, "backend:cudaMallocAsync") != NULL;
}

static size_t gb_to_bytes(double gb) { return (size_t)(gb * (double)VC_GB); }

int vc_config_apply(const vc_config *cfg, vc_cache_options *opts) {
    if (!cfg || !opts || opts->struct_size < VC__OPTIONS_FIRST_SIZE || opts->struct_size > sizeof(*opts))
        return vc__fail(NULL, VC_ERR_INVALID_ARG, "vc_config_apply: %s", !cfg ? "cfg is NULL"
                        : !opts ? "opts is NULL"
                                : "opts not initialised with vc_cache_options_init (struct_size out of range)");
    double gb = 0;
    opts->ram_budget = vc_config_get_number(cfg, VC_CFG_MAX_CACHE_RAM_GB, &gb) == VC_OK ? gb_to_bytes(gb) : VC_SIZE_AUTO;
    opts->vram_budget = vc_config_get_number(cfg, VC_CFG_MAX_CACHE_VRAM_GB, &gb) == VC_OK ? gb_to_bytes(gb) : VC_SIZE_AUTO;
    vc_config_get_number(cfg, VC_CFG_DEVICE_WORKING_MEM_GB, &gb);
    opts->working_mem = gb_to_bytes(gb);
    vc_config_get_bool(cfg, VC_CFG_KEEP_RAM_COPY_OF_WEIGHTS, &opts->keep_ram_copy);
    vc_config_get_bool(cfg, VC_CFG_LOG_MEMORY_USAGE, &opts->log_memory_usage);
    opts->offload_mode = vc_config_get_offload_mode(cfg);
    opts->stream_ordered_working_mem = vc_config_cuda_malloc_async(cfg);
    vc_config_get_number(cfg, VC_CFG_OFFLOAD_MAX_GPU_MEMORY, &opts->offload_max_gpu_memory);
    /* Fields added after the first release: a program built against it has no room for them. */
    double minutes = 0;
    vc_config_get_number(cfg, VC_CFG_MODEL_CACHE_KEEP_ALIVE_MIN, &minutes);
    if (VC__OPTIONS_HAVE(opts, keep_alive_s)) opts->keep_alive_s = minutes * 60;
    if (VC__OPTIONS_HAVE(opts, smart_working_mem))
        vc_config_get_bool(cfg, VC_CFG_SMART_PARTIAL_LOADING, &opts->smart_working_mem);
    return VC_OK;
}

int vc_config_create_backend(const vc_config *cfg, vc_backend **out, char *why, size_t why_size) {
    if (!cfg || !out) return vc__fail(NULL, VC_ERR_INVALID_ARG, "vc_config_create_backend: NULL argument");
    vc_device_kind kind;
    int index;
    vc_config_get_device(cfg, &kind, &index);
    return vc__select_backend(kind, index, out, why, why_size);
}

int vc_backend_open(const char *device, vc_backend **out, char *why, size_t why_size) {
    if (out) *out = NULL;
    if (!device || !out) return vc__fail(NULL, VC_ERR_INVALID_ARG, "vc_backend_open: %s is NULL", !out ? "out" : "device");
    /* the parser and the selection the `device` key goes through */
    cfg_value v;
    char err[256], warn[160];
    if (vc__cfg_parse(&vc__cfg_keys[VC_CFG_DEVICE], device, CFG_TEXT_STRING, &v, err, sizeof err, warn, sizeof warn) != 0)
        return vc__fail(NULL, VC_ERR_INVALID_ARG, "vc_backend_open: %s", err);
    return vc__select_backend((vc_device_kind)v.dev_kind, v.dev_index, out, why, why_size);
}

int vc_cache_create_from_config(const vc_config *cfg, vc_cache **out) {
    if (!cfg || !out) return vc__fail(NULL, VC_ERR_INVALID_ARG, "vc_cache_create_from_config: NULL argument");
    *out = NULL;
    vc_cache_options o;
    vc_cache_options_init(&o);
    vc_config_apply(cfg, &o);
    char why[256];
    int st = vc_config_create_backend(cfg, &o.backend, why, sizeof why);
    if (st != VC_OK) return st;
    size_t total = 0;
    int gpu = vc_backend_get_ops(o.backend)->kind == VC_BACKEND_KIND_GPU &&
              vc_backend_mem_info(o.backend, NULL, &total) == VC_OK;
    char mode_why[128];
    o.offload_mode = vc_config_get_offload_mode_for(cfg, gpu, total, mode_why, sizeof mode_why);
    st = vc_cache_create(&o, out);
    if (st != VC_OK) {
        vc_backend_destroy(o.backend);
        return st;
    }
    (*out)->owns_backend = 1;
    vc__log(*out, VC_LOG_INFO, "device '%s': %s", vc_config_get_text(cfg, VC_CFG_DEVICE), why);
    vc__log(*out, VC_LOG_INFO, "offload_mode %s, %s", mode_name(o.offload_mode), mode_why);
    return VC_OK;
}

int vc_cache_create_from_file(const char *path, vc_cache **out, vc_diagnostics **diags) {
    if (diags) *diags = NULL;
    if (!path || !out) return vc__fail(NULL, VC_ERR_INVALID_ARG, "vc_cache_create_from_file: NULL argument");
    *out = NULL;
    vc_config *cfg;
    int st = vc_config_create(&cfg);
    if (st != VC_OK) return st;
    st = vc_config_load_file(cfg, path, 0, diags);
    if (st == VC_OK) st = vc_cache_create_from_config(cfg, out);
    vc_config_destroy(cfg);
    return st;
}

/* ---- show ------------------------------------------------------------------------------------ */

/* A free-text value as a YAML double-quoted scalar, so that `config show` stays YAML whatever the
 * value holds (": " or " #" would otherwise start a mapping or a comment). */
static void yaml_quote(const char *s, char *out, size_t size) {
    size_t n = 0;
    out[n++] = '"';
    for (; *s && n + 6 < size; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') {
            out[n++] = '\\';
            out[n++] = (char)ch;
        } else if (ch < 0x20) {
            n += (size_t)snprintf(out + n, size - n, "\\x%02x", ch);
        } else {
            out[n++] = (char)ch;
        }
    }
    out[n++] = '"';
    out[n] = '\0';
}

static void print_stdout(void *user, const char *text) {
    (void)user;
    fputs(text, stdout);
}

int vc_config_show(const vc_config *cfg, vc_print_fn print, void *user) {
    if (!cfg) return vc__fail(NULL, VC_ERR_INVALID_ARG, "vc_config_show: cfg is NULL");
    if (!print) print = print_stdout;
    static const char *const src_names[] = {"default", "file", "env", "api", "computed"};
    /* What this machine computes: the backend, its memory, the RAM budget. */
    char backend_why[256] = "", ram_why[128], budget_why[384], a[32], b[32], c[32];
    vc_backend *backend = NULL;
    int backend_st = vc_config_create_backend(cfg, &backend, backend_why, sizeof backend_why);
    size_t free_b = 0, total = 0;
    int gpu = backend && vc_backend_get_ops(backend)->kind == VC_BACKEND_KIND_GPU;
    if (gpu) vc_backend_mem_info(backend, &free_b, &total);
    vc_cache_options o;
    vc_cache_options_init(&o);
    vc_config_apply(cfg, &o);
    size_t sys = vc_system_ram(ram_why, sizeof ram_why);
    size_t ram_budget = vc__ram_budget(sys, gpu ? total : 0, o.vram_budget, o.working_mem,
                                       vc_config_get_offload_mode_for(cfg, gpu, total, NULL, 0), budget_why,
                                       sizeof budget_why);
    print(user, "# libvramcache effective settings (GB = 2^30 bytes)\n");
    char line[2048], quoted[2 * sizeof(((cfg_value *)0)->text) + 8];
    for (int k = 0; k < VC_CFG_KEY_COUNT; k++) {
        vc_config_source src = vc_config_get_source(cfg, (vc_config_key)k);
        const char *text = vc_config_get_text(cfg, (vc_config_key)k);
        if (vc__cfg_keys[k].type == CFG_STRING && strcmp(text, "null") != 0) {
            yaml_quote(text, quoted, sizeof quoted);
            text = quoted;
        }
        char detail[640] = "";
        switch (k) {
        case VC_CFG_ENABLE_PARTIAL_LOADING:
            if (src == VC_CFG_SOURCE_DEFAULT)
                snprintf(detail, sizeof detail, "; InvokeAI's own default is false (whole models move)");
            break;
        case VC_CFG_MAX_CACHE_RAM_GB:
            if (src == VC_CFG_SOURCE_COMPUTED)
                snprintf(detail, sizeof detail, ": %.2f GB on this machine; system RAM %s; %s",
                         (double)ram_budget / (double)VC_GB, ram_why, budget_why);
            break;
        case VC_CFG_MAX_CACHE_VRAM_GB:
            if (src == VC_CFG_SOURCE_COMPUTED && gpu)
                snprintf(detail, sizeof detail, ": dynamic, now %s = free %s - working memory %s",
                         vc__fmt_bytes(sat_sub(free_b, o.working_mem), a, sizeof a), vc__fmt_bytes(free_b, b, sizeof b),
                         vc__fmt_bytes(o.working_mem, c, sizeof c));
            else if (src == VC_CFG_SOURCE_COMPUTED)
                snprintf(detail, sizeof detail, ": dynamic (free device memory - working memory)");
            else if (gpu) {
                size_t safe = sat_sub(total, o.working_mem);
                int above = o.vram_budget > safe;
                snprintf(detail, sizeof detail, "; %slargest safe value on this GPU: %.2f GB (%s - working memory)%s",
                         above ? "ABOVE the " : "", (double)safe / (double)VC_GB, vc__fmt_bytes(total, a, sizeof a),
                         above ? ": operations may run out of device memory" : "");
            }
            break;
        case VC_CFG_DEVICE:
            if (backend_st == VC_OK)
                snprintf(detail, sizeof detail, "; resolves to backend '%s': %s", vc_backend_name(backend), backend_why);
            else
                snprintf(detail, sizeof detail, "; UNAVAILABLE: %s", vc_last_error());
            break;
        case VC_CFG_PYTORCH_CUDA_ALLOC_CONF:
            if (strcmp(text, "null") != 0)
                snprintf(detail, sizeof detail, "; %s", vc_config_cuda_malloc_async(cfg)
                         ? "working memory from a stream-ordered pool on CUDA" : "not applicable to libvramcache");
            break;
        case VC_CFG_OFFLOAD_MODE:
            if (src == VC_CFG_SOURCE_COMPUTED) {
                char mode_why[128];
                vc_offload_mode m = vc_config_get_offload_mode_for(cfg, gpu, total, mode_why, sizeof mode_why);
                snprintf(detail, sizeof detail, ": %s, %s", mode_name(m), mode_why);
            }
            break;
        default:
            break;
        }
        snprintf(line, sizeof line, "%s: %s  # %s%s\n", vc__cfg_keys[k].name, text, src_names[src], detail);
        print(user, line);
    }
    vc_backend_destroy(backend);
    return VC_OK;
}
