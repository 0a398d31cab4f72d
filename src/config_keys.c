/*
 * The configuration keys libvramcache understands, the InvokeAI keys it accepts without using, and
 * the parsing of one scalar value for a key (shared by files, the environment and the API).
 */
#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "config_internal.h"

/* Sizes above this many GB (1 PB) are absurd for any machine this library will meet. */
#define MAX_GB 1048576.0

static const char *const PRECISIONS[] = {"auto", "float16", "bfloat16", "float32", NULL};
static const char *const OFFLOAD_MODES[] = {"none", "model", "sequential", "balanced", NULL};

const cfg_key_def vc__cfg_keys[VC_CFG_KEY_COUNT] = {
    [VC_CFG_ENABLE_PARTIAL_LOADING] = {"enable_partial_loading", CFG_BOOL, 0, 0, 0, 0, NULL, "true",
        "stream layers between RAM and VRAM as they are needed; false: whole models move"},
    [VC_CFG_MAX_CACHE_RAM_GB] = {"max_cache_ram_gb", CFG_GB, 1, 0, MAX_GB, 1, NULL, "null",
        "RAM cache budget in GB; unset: computed from this machine's RAM"},
    [VC_CFG_MAX_CACHE_VRAM_GB] = {"max_cache_vram_gb", CFG_GB, 1, 0, MAX_GB, 0, NULL, "null",
        "VRAM for cached weights in GB; unset: dynamic (free device memory - working memory)"},
    [VC_CFG_DEVICE_WORKING_MEM_GB] = {"device_working_mem_gb", CFG_GB, 0, 0, MAX_GB, 0, NULL, "3",
        "VRAM kept free for activations, in GB"},
    [VC_CFG_KEEP_RAM_COPY_OF_WEIGHTS] = {"keep_ram_copy_of_weights", CFG_BOOL, 0, 0, 0, 0, NULL, "true",
        "keep a RAM copy while a layer is in VRAM (faster switching, more RAM)"},
    [VC_CFG_LOG_MEMORY_USAGE] = {"log_memory_usage", CFG_BOOL, 0, 0, 0, 0, NULL, "false",
        "log a memory snapshot at every load and unload"},
    [VC_CFG_DEVICE] = {"device", CFG_DEVICE, 0, 0, 0, 0, NULL, "auto",
        "auto, cpu, cuda, cuda:N, hip or hip:N"},
    [VC_CFG_PYTORCH_CUDA_ALLOC_CONF] = {"pytorch_cuda_alloc_conf", CFG_STRING, 1, 0, 0, 0, NULL, "null",
        "backend:cudaMallocAsync serves working memory from a stream-ordered pool on CUDA"},
    [VC_CFG_PRECISION] = {"precision", CFG_ENUM, 0, 0, 0, 0, PRECISIONS, "auto",
        "auto, float16, bfloat16 or float32 (read and exposed)"},
    [VC_CFG_OFFLOAD_MODE] = {"offload_mode", CFG_ENUM, 1, 0, 0, 0, OFFLOAD_MODES, "null",
        "none, model, sequential or balanced; unset: balanced with partial loading, else model"},
    [VC_CFG_OFFLOAD_MAX_GPU_MEMORY] = {"offload_max_gpu_memory", CFG_GB_OR_FRACTION, 0, 0, MAX_GB, 1, NULL,
        "0.75", "balanced threshold: <= 1 is a fraction of device memory, > 1 is GB"},
    [VC_CFG_SCHEMA_VERSION] = {"schema_version", CFG_VERSION, 0, 0, 0, 0, NULL, "4.0.2",
        "4.0.x; absent means current"},
    [VC_CFG_DIFFUSERS_MOVE_BASE] = {"diffusers_move_base", CFG_BOOL, 0, 0, 0, 0, NULL, "false",
        "SD.Next: move the base model to CPU when using the refiner (the engine calls vc_model_offload)"},
    [VC_CFG_DIFFUSERS_MOVE_UNET] = {"diffusers_move_unet", CFG_BOOL, 0, 0, 0, 0, NULL, "false",
        "SD.Next: move the base model to CPU when using the VAE (the engine calls vc_model_offload)"},
    [VC_CFG_DIFFUSERS_MOVE_REFINER] = {"diffusers_move_refiner", CFG_BOOL, 0, 0, 0, 0, NULL, "false",
        "SD.Next: move the refiner to CPU when not in use (the engine calls vc_model_offload)"},
    [VC_CFG_MODEL_CACHE_KEEP_ALIVE_MIN] = {"model_cache_keep_alive_min", CFG_MINUTES, 0, 0, 1e7, 0, NULL, "0",
        "minutes without use after which the cache is cleared (VRAM, and RAM copies a loader can read "
        "again); 0: never"},
    [VC_CFG_SMART_PARTIAL_LOADING] = {"smart_partial_loading", CFG_BOOL, 0, 0, 0, 0, NULL, "false",
        "while an operation reserves its own working memory, hold back that instead of "
        "device_working_mem_gb"},
    [VC_CFG_LOWVRAM] = {"lowvram", CFG_BOOL, 0, 0, 0, 0, NULL, "false",
        "SD.Next's --lowvram: offload_mode sequential unless offload_mode is set"},
    [VC_CFG_MEDVRAM] = {"medvram", CFG_BOOL, 0, 0, 0, 0, NULL, "false",
        "SD.Next's --medvram: offload_mode model unless offload_mode or lowvram is set"},
};

/* SD.Next spellings. */
static const struct {
    const char *alias;
    vc_config_key key;
} ALIASES[] = {
    {"diffusers_offload_mode", VC_CFG_OFFLOAD_MODE},
    {"diffusers_offload_max_gpu_memory", VC_CFG_OFFLOAD_MAX_GPU_MEMORY},
    /* before offload modes (2023-24), SD.Next's settings for its --lowvram and --medvram */
    {"diffusers_seq_cpu_offload", VC_CFG_LOWVRAM},
    {"diffusers_model_cpu_offload", VC_CFG_MEDVRAM},
};

/* Values other programs write for our enum keys, read as one of ours with a warning. */
static const struct {
    vc_config_key key;
    const char *spelled, *read_as, *warning;
} ENUM_ALIASES[] = {
    /* as InvokeAI 4.0.1 migrates it; also SD.Next's default */
    {VC_CFG_PRECISION, "autocast", "auto", "precision 'autocast' (InvokeAI 3.x; SD.Next's default) is read as 'auto'"},
    /* SD.Next's other choice beside Autocast: no autocast; its dtype is its cuda_dtype */
    {VC_CFG_PRECISION, "full", "auto", "precision 'Full' (SD.Next: no autocast; its dtype is cuda_dtype) read as 'auto'"},
    /* SD.Next's diffusers group offloading: each group of layers comes to the GPU as it runs, the
     * next one on a stream, and leaves after: only what is in use and what is arriving stays, which
     * is sequential mode (with prefetch) here */
    {VC_CFG_OFFLOAD_MODE, "group", "sequential",
     "offload_mode 'group' (SD.Next's group offloading) is read as 'sequential': only the layers in use and "
     "those arriving stay on the device; 'balanced' keeps what fits and is faster"},
};

/* InvokeAI settings (4.x, 5.x and 3.x) that belong to InvokeAI, not to us. */
static const char *const INVOKEAI_KEYS[] = {
    "host", "port", "allow_origins", "allow_credentials", "allow_methods", "allow_headers",
    "ssl_certfile", "ssl_keyfile", "log_tokenization", "patchmatch", "models_dir",
    "convert_cache_dir", "download_cache_dir", "legacy_conf_dir", "db_dir", "outputs_dir",
    "custom_nodes_dir", "style_presets_dir", "workflow_thumbnails_dir", "log_handlers", "log_format",
    "log_level", "log_sql", "log_level_network", "use_memory_db", "dev_reload", "profile_graphs",
    "profile_prefix", "profiles_dir", "sequential_guidance", "attention_type", "attention_slice_size",
    "force_tiled_decode", "pil_compress_level", "max_queue_size", "clear_queue_on_startup",
    "max_queue_history", "allow_nodes", "deny_nodes", "node_cache_size", "hashing_algorithm",
    "remote_api_tokens", "scan_models_on_startup", "unsafe_disable_picklescan", "allow_unknown_models",
    "legacy_models_yaml_path", "multiuser", "external_gemini_api_key", "external_openai_api_key",
    "image_subfolder_strategy", "session_queue_mode", "strict_password_checking", "base_url",
    "forwarded_allow_ips", "external_alibabacloud_api_key", "external_alibabacloud_base_url",
    "external_gemini_base_url", "external_openai_base_url", "external_seedream_api_key",
    "external_seedream_base_url",
    /* 3.x names that migration drops or renames silently */
    "outdir", "conf_path", "root", "esrgan", "internet_available", "ignore_missing_core_models",
    "autoimport_dir", "lora_dir", "embedding_dir", "controlnet_dir", "skip_model_hash",
    "convert_cache", "always_use_cpu", "free_gpu_mem", "xformers_enabled", "tiled_decode",
    "png_compress_level", "nsfw_checker", "precision_autocast", "max_loaded_models", "restore",
    "sequential_guidance", "infile", "web", "model", "version", NULL};

int vc__cfg_is_invokeai_key(const char *name) {
    for (size_t i = 0; INVOKEAI_KEYS[i]; i++)
        if (strcmp(INVOKEAI_KEYS[i], name) == 0) return 1;
    return 0;
}

/* SD.Next's offload settings (its config.json, "Model Offloading") beyond the mode and the high
 * watermark, which are read as offload_mode and offload_max_gpu_memory. Each names what does its
 * job here. Most need nothing: the cache evicts an idle model's layers only when room is needed
 * and copies on its own stream, so SD.Next's low watermark, pre-forward offload and stream
 * switches have nothing to act on. The module lists name SD.Next's pipeline components, which
 * only the engine can map to its models: a non-empty one is warned about (`list` 1). */
static const struct {
    const char *name;
    int list;
    const char *instead;
} SDNEXT_OFFLOAD_KEYS[] = {
    {"diffusers_offload_min_gpu_memory", 0, "the cache evicts an idle model's layers only when room is needed"},
    {"diffusers_offload_max_cpu_memory", 0, "the RAM cache's budget is max_cache_ram_gb"},
    {"diffusers_offload_pre", 0, "the cache evicts when room is needed, not as a module starts"},
    {"diffusers_offload_streams", 0, "copies always run on the cache's own stream"},
    {"diffusers_offload_nonblocking", 0, "copies are always asynchronous"},
    {"group_offload_type", 0, "offload_mode 'group' is read as 'sequential', which moves single layers"},
    {"group_offload_stream", 0, "copies always run on the cache's own stream"},
    {"group_offload_record", 0, "copies are ordered by events on the engine's stream"},
    {"group_offload_blocks", 0, "offload_mode 'group' is read as 'sequential', which moves single layers"},
    {"diffusers_offload_always", 1,
     "an engine offloads a model whenever it chooses with vc_model_offload; this list names SD.Next's "
     "pipeline components, which only the engine can map to its models"},
    {"diffusers_offload_never", 1,
     "an engine keeps a model resident by holding it (vc_model_acquire); this list names SD.Next's "
     "pipeline components, which only the engine can map to its models"},
    {"models_not_to_offload", 1,
     "an engine keeps a model resident by holding it (vc_model_acquire); this list names SD.Next's "
     "model types, which only the engine can map to its models"},
};

/* Keys only SD.Next's config.json holds: a file with one of them is SD.Next's settings, whose
 * hundreds of other keys are its own (summed up in one warning rather than one each). */
static const char *const SDNEXT_MARKERS[] = {"sd_model_checkpoint", "sd_backend", "diffusers_pipeline",
                                             "sd_checkpoint_autoload", "cross_attention_optimization",
                                             "diffusers_offload_pre", "cuda_dtype", NULL};

int vc__cfg_sdnext_key(const char *name, int *list, const char **instead) {
    for (size_t i = 0; i < sizeof SDNEXT_OFFLOAD_KEYS / sizeof SDNEXT_OFFLOAD_KEYS[0]; i++)
        if (!strcmp(SDNEXT_OFFLOAD_KEYS[i].name, name)) {
            *list = SDNEXT_OFFLOAD_KEYS[i].list;
            *instead = SDNEXT_OFFLOAD_KEYS[i].instead;
            return 1;
        }
    return 0;
}

int vc__cfg_is_sdnext_marker(const char *name) {
    for (size_t i = 0; SDNEXT_MARKERS[i]; i++)
        if (!strcmp(SDNEXT_MARKERS[i], name)) return 1;
    return 0;
}

const char *vc__cfg_deprecated(const char *name) {
    if (!strcmp(name, "ram") || !strcmp(name, "max_cache_size")) return "max_cache_ram_gb";
    if (!strcmp(name, "vram") || !strcmp(name, "max_vram_cache_size")) return "max_cache_vram_gb";
    if (!strcmp(name, "lazy_offload"))
        return "the dynamic VRAM cache (enable_partial_loading, max_cache_vram_gb); lazy offloading is always on";
    return NULL;
}

int vc__cfg_lookup(const char *name) {
    for (int k = 0; k < VC_CFG_KEY_COUNT; k++)
        if (strcmp(vc__cfg_keys[k].name, name) == 0) return k;
    for (size_t i = 0; i < sizeof ALIASES / sizeof ALIASES[0]; i++)
        if (strcmp(ALIASES[i].alias, name) == 0) return (int)ALIASES[i].key;
    return -1;
}

size_t vc__edit_distance(const char *a, const char *b) {
    size_t la = strlen(a), lb = strlen(b);
    if (la > 64 || lb > 64) return 99;
    size_t row[65];
    for (size_t j = 0; j <= lb; j++) row[j] = j;
    for (size_t i = 1; i <= la; i++) {
        size_t diag = row[0];
        row[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t up = row[j];
            size_t cost = tolower((unsigned char)a[i - 1]) == tolower((unsigned char)b[j - 1]) ? 0 : 1;
            size_t best = diag + cost;
            if (row[j - 1] + 1 < best) best = row[j - 1] + 1;
            if (up + 1 < best) best = up + 1;
            row[j] = best;
            diag = up;
        }
    }
    return row[lb];
}

size_t vc__suggest_limit(const char *name) {
    size_t limit = strlen(name) / 4 + 1;
    return limit > 3 ? 3 : limit;
}

const char *vc__cfg_suggest(const char *name) {
    const char *best = NULL;
    size_t best_d = (size_t)-1;
    size_t limit = vc__suggest_limit(name);
    for (int k = 0; k < VC_CFG_KEY_COUNT; k++) {
        size_t d = vc__edit_distance(name, vc__cfg_keys[k].name);
        if (d < best_d) best_d = d, best = vc__cfg_keys[k].name;
    }
    for (size_t i = 0; i < sizeof ALIASES / sizeof ALIASES[0]; i++) { /* SD.Next's spellings, as written */
        size_t d = vc__edit_distance(name, ALIASES[i].alias);
        if (d < best_d) best_d = d, best = ALIASES[i].alias;
    }
    for (size_t i = 0; INVOKEAI_KEYS[i]; i++) {
        size_t d = vc__edit_distance(name, INVOKEAI_KEYS[i]);
        if (d < best_d) best_d = d, best = INVOKEAI_KEYS[i];
    }
    return best_d <= limit ? best : NULL;
}

/* ---- parsing one value ---------------------------------------------------------------------- */

static int is_null_text(const char *t, cfg_text_kind kind) {
    return kind != CFG_TEXT_YAML_QUOTED && (!t[0] || !strcmp(t, "~") || !strcasecmp(t, "null"));
}

static int parse_bool(const char *t, int *out) {
    /* YAML 1.1's words, and the strings pydantic (InvokeAI's settings) also takes */
    static const char *const yes[] = {"true", "yes", "on", "y", "t", "1", NULL};
    static const char *const no[] = {"false", "no", "off", "n", "f", "0", NULL};
    for (int i = 0; yes[i]; i++)
        if (!strcasecmp(t, yes[i])) return *out = 1, 0;
    for (int i = 0; no[i]; i++)
        if (!strcasecmp(t, no[i])) return *out = 0, 0;
    return -1;
}

/* Digits of `base` and '_' from *p on (at least one digit): their value, '_' skipped, saturating
 * at 1e300 (far beyond any key's range). Advances *p past them. */
static int read_digits(const char **p, int base, double *out) {
    double v = 0;
    int any = 0;
    for (;; (*p)++) {
        int c = (unsigned char)**p, d;
        if (c == '_') continue;
        if (isdigit(c)) d = c - '0';
        else if (isxdigit(c)) d = 10 + tolower(c) - 'a';
        else break;
        if (d >= base) break;
        v = v < 1e300 ? v * base + d : v;
        any = 1;
    }
    *out = v;
    return any;
}

/* PyYAML's YAML 1.1 numbers that a YAML 1.2 reader (or strtod) reads otherwise or not at all, for
 * an unquoted scalar: integers in binary (0b101), hex (0x10), octal (014 is 12) or base 60 (1:30
 * is 90), '_' allowed after the first digit (1_000), and floats with '_' (1_000.5) or base 60
 * (1:30.5). InvokeAI loads invokeai.yaml with PyYAML, so these are the values it sees. Returns 0
 * and *out when t is one of them, with `note` set for readings a reader may not expect
 * (octal, base 60); -1 when t is none of them (a plain decimal is left to parse_number). */
static int yaml11_number(const char *t, double *out, char *note, size_t note_size) {
    const char *p = t;
    note[0] = '\0';
    double sign = 1, v = 0;
    if (*p == '-' || *p == '+') sign = *p++ == '-' ? -1 : 1;
    const char *digits = p;
    if (p[0] == '0' && (p[1] == 'b' || p[1] == 'x')) { /* binary, hex */
        int base = p[1] == 'b' ? 2 : 16;
        p += 2;
        if (!read_digits(&p, base, &v) || *p) return -1;
    } else if (p[0] == '0' && p[1] && strspn(p + 1, "01234567_") == strlen(p + 1)) { /* octal */
        p++;
        if (!read_digits(&p, 8, &v)) return -1; /* "0_" */
        snprintf(note, note_size, "'%s' is an octal number in YAML 1.1, which is how InvokeAI reads the file: "
                 "%.0f (write it without the leading 0 for a decimal)", t, sign * v);
    } else if (isdigit((unsigned char)p[0])) {
        if (!read_digits(&p, 10, &v)) return -1;
        int sexagesimal = 0;
        while (*p == ':') { /* base 60: each further part one or two digits, 0-59 */
            p++;
            int part = 0, n = 0;
            for (; n < 2 && isdigit((unsigned char)*p); n++, p++) part = part * 10 + (*p - '0');
            if (!n || part >= 60) return -1;
            v = v * 60 + part;
            sexagesimal = 1;
        }
        if (sexagesimal && digits[0] == '0') return -1; /* YAML 1.1: base 60 starts with 1-9 */
        int fraction = *p == '.';
        if (fraction) { /* '.' then digits and '_' (a plain one is parse_number's) */
            p++;
            double f = 0, scale = 1;
            for (; isdigit((unsigned char)*p) || *p == '_'; p++)
                if (*p != '_') f += (scale /= 10) * (*p - '0');
            v += f;
            if ((*p == 'e' || *p == 'E') && !sexagesimal && (p[1] == '-' || p[1] == '+') &&
                isdigit((unsigned char)p[2])) {
                char *end;
                double e = strtod(p + 1, &end);
                p = end;
                v *= pow(10, e);
            }
        }
        if (*p) return -1;
        int underscores = strchr(digits, '_') != NULL;
        if (!sexagesimal && !underscores) return -1; /* plain decimal: parse_number */
        if (sexagesimal)
            snprintf(note, note_size, "'%s' is a base-60 number in YAML 1.1, which is how InvokeAI reads the file: "
                     "%g", t, sign * v);
    } else {
        return -1;
    }
    *out = sign * v;
    return 0;
}

/* A finite decimal number, nothing else (no hex, no inf/nan, no trailing text). */
static int parse_number(const char *t, double *out) {
    while (isspace((unsigned char)*t)) t++;
    if (!*t || strpbrk(t, "xXnN_") || strpbrk(t, "iI")) return -1;
    char *end;
    double v = strtod(t, &end);
    while (isspace((unsigned char)*end)) end++;
    if (*end || !isfinite(v)) return -1;
    *out = v;
    return 0;
}

/* A decimal written as a string (quoted in the file, in the environment, through vc_config_set)
 * with '_' between digits, "1_000": Python's float() and InvokeAI's settings (pydantic) read it so.
 * Copies it without the underscores into buf; -1 when an underscore is not between two digits
 * ("_1", "1_", "1__0", "1_.5"), as Python refuses those too. */
static int strip_digit_underscores(const char *t, char *buf, size_t size) {
    size_t n = 0;
    for (const char *p = t; *p; p++) {
        if (*p == '_') {
            if (p == t || !isdigit((unsigned char)p[-1]) || !isdigit((unsigned char)p[1])) return -1;
            continue;
        }
        if (n + 1 >= size) return -1;
        buf[n++] = *p;
    }
    buf[n] = '\0';
    return 0;
}

static void format_number(double v, char *buf, size_t size) {
    if (v == floor(v) && fabs(v) < 1e15)
        snprintf(buf, size, "%.0f", v);
    else
        snprintf(buf, size, "%.6g", v);
}

int vc__cfg_parse(const cfg_key_def *def, const char *text, cfg_text_kind kind, cfg_value *out, char *err,
                  size_t err_size, char *warn, size_t warn_size) {
    memset(out, 0, sizeof *out);
    warn[0] = '\0';
    out->set = 1;
    char shown[64];
    snprintf(shown, sizeof shown, "%s%s", text, strlen(text) >= sizeof shown ? "..." : "");
    if (is_null_text(text, kind)) {
        if (def->optional) {
            out->is_null = 1;
            snprintf(out->text, sizeof out->text, "null");
            return 0;
        }
        snprintf(err, err_size, "%s needs a value (%s)", def->name, def->doc);
        return -1;
    }
    switch (def->type) {
    case CFG_BOOL:
        if (parse_bool(text, &out->b) != 0) {
            snprintf(err, err_size, "%s must be true or false, got '%s'", def->name, shown);
            return -1;
        }
        snprintf(out->text, sizeof out->text, "%s", out->b ? "true" : "false");
        return 0;
    case CFG_GB:
    case CFG_MINUTES:
    case CFG_GB_OR_FRACTION: {
        double v;
        char note[192];
        /* (a plain scalar reaches us trimmed: YAML drops the spaces around it) */
        int yaml11 = kind == CFG_TEXT_YAML_PLAIN && yaml11_number(text, &v, note, sizeof note) == 0;
        int bad = !yaml11 && parse_number(text, &v) != 0;
        char plain[128];
        if (bad && kind != CFG_TEXT_YAML_PLAIN && strchr(text, '_') &&
            strip_digit_underscores(text, plain, sizeof plain) == 0)
            bad = parse_number(plain, &v) != 0; /* a string "1_000", as pydantic reads it */
        if (yaml11 && note[0]) snprintf(warn, warn_size, "%s: %s", def->name, note);
        if (!bad) bad = def->min_exclusive ? !(v > def->min) : !(v >= def->min);
        if (!bad) bad = v > def->max;
        if (bad) {
            if (def->type == CFG_GB_OR_FRACTION)
                snprintf(err, err_size, "%s must be a number > 0: a fraction of device memory (<= 1) or "
                         "GB (> 1, at most %.0f), got '%s'", def->name, def->max, shown);
            else if (def->type == CFG_MINUTES)
                snprintf(err, err_size, "%s must be a number of minutes >= %g and <= %.0f (0: never), got '%s'",
                         def->name, def->min, def->max, shown);
            else
                snprintf(err, err_size, "%s must be a number of GB %s %g and <= %.0f, got '%s'", def->name,
                         def->min_exclusive ? ">" : ">=", def->min, def->max, shown);
            return -1;
        }
        out->num = v;
        format_number(v, out->text, sizeof out->text);
        return 0;
    }
    case CFG_ENUM:
        for (int i = 0; def->enum_values[i]; i++)
            if (!strcasecmp(text, def->enum_values[i])) {
                snprintf(out->text, sizeof out->text, "%s", def->enum_values[i]);
                out->dev_kind = i; /* index of the value */
                return 0;
            }
        for (size_t a = 0; a < sizeof ENUM_ALIASES / sizeof ENUM_ALIASES[0]; a++) {
            if (def != &vc__cfg_keys[ENUM_ALIASES[a].key] || strcasecmp(text, ENUM_ALIASES[a].spelled)) continue;
            for (int i = 0; def->enum_values[i]; i++)
                if (!strcmp(def->enum_values[i], ENUM_ALIASES[a].read_as)) out->dev_kind = i;
            snprintf(out->text, sizeof out->text, "%s", ENUM_ALIASES[a].read_as);
            snprintf(warn, warn_size, "%s", ENUM_ALIASES[a].warning);
            return 0;
        }
        {
            size_t n = (size_t)snprintf(err, err_size, "%s must be one of", def->name);
            for (int i = 0; def->enum_values[i] && n < err_size; i++)
                n += (size_t)snprintf(err + n, err_size - n, "%s %s", i ? "," : "", def->enum_values[i]);
            if (n < err_size) snprintf(err + n, err_size - n, "; got '%s'", shown);
        }
        return -1;
    case CFG_DEVICE: {
        static const char *const kinds[] = {"auto", "cpu", "cuda", "hip"};
        out->dev_index = -1;
        if (!strcasecmp(text, "mps")) { /* valid for InvokeAI on macOS; nothing here drives it */
            out->dev_kind = VC_DEVICE_AUTO;
            snprintf(out->text, sizeof out->text, "auto");
            snprintf(warn, warn_size, "device 'mps' (Apple Metal) has no libvramcache backend; using 'auto'");
            return 0;
        }
        for (int k = 0; k < 4; k++) {
            size_t n = strlen(kinds[k]);
            if (strncasecmp(text, kinds[k], n) != 0) continue;
            if (text[n] == '\0') {
                out->dev_kind = k;
                snprintf(out->text, sizeof out->text, "%s", kinds[k]);
                return 0;
            }
            if (text[n] == ':' && (k == VC_DEVICE_CUDA || k == VC_DEVICE_HIP) && isdigit((unsigned char)text[n + 1])) {
                char *end;
                long idx = strtol(text + n + 1, &end, 10);
                if (*end == '\0' && idx >= 0 && idx < 1024) {
                    out->dev_kind = k;
                    out->dev_index = (int)idx;
                    snprintf(out->text, sizeof out->text, "%s:%ld", kinds[k], idx);
                    return 0;
                }
            }
        }
        snprintf(err, err_size, "device must be auto, cpu, cuda, cuda:N, hip or hip:N (N a device number), "
                 "got '%s'", shown);
        return -1;
    }
    case CFG_STRING:
        if (strlen(text) >= sizeof out->text) {
            snprintf(err, err_size, "%s is too long (at most %zu characters)", def->name, sizeof out->text - 1);
            return -1;
        }
        snprintf(out->text, sizeof out->text, "%s", text);
        if (def == &vc__cfg_keys[VC_CFG_PYTORCH_CUDA_ALLOC_CONF] && !strstr(text, "backend:cudaMallocAsync"))
            snprintf(warn, warn_size, "pytorch_cuda_alloc_conf '%s' does not apply to libvramcache (only "
                     "backend:cudaMallocAsync does); it is kept for the engine and otherwise ignored", shown);
        return 0;
    case CFG_VERSION: {
        unsigned major = 0, minor = 0, patch = 0;
        int fields = sscanf(text, "%u.%u.%u", &major, &minor, &patch);
        char tail[8] = "";
        if (fields >= 2) {
            char rebuilt[32];
            if (fields == 3)
                snprintf(rebuilt, sizeof rebuilt, "%u.%u.%u", major, minor, patch);
            else
                snprintf(rebuilt, sizeof rebuilt, "%u.%u", major, minor);
            if (strcmp(rebuilt, text) != 0) snprintf(tail, sizeof tail, "?");
        }
        if (fields < 2 || tail[0]) {
            snprintf(err, err_size, "schema_version must look like 4.0.2, got '%s'", shown);
            return -1;
        }
        if (major != 4) {
            snprintf(err, err_size, "schema_version %s is not supported: libvramcache reads 4.0.x files "
                     "(InvokeAI 4 and 5) and migrates InvokeAI 3.x files (top-level 'InvokeAI:')", shown);
            return -1;
        }
        if (minor != 0)
            snprintf(warn, warn_size, "schema_version %s is newer than 4.0.x; reading it as 4.0", shown);
        snprintf(out->text, sizeof out->text, "%s", text);
        return 0;
    }
    }
    snprintf(err, err_size, "internal: unknown key type");
    return -1;
}
