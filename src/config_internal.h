/* Private pieces of the configuration: the key table, typed values, diagnostics. */
#ifndef VC_CONFIG_INTERNAL_H
#define VC_CONFIG_INTERNAL_H

#include "vramcache_config.h"

typedef enum cfg_type {
    CFG_BOOL,    /* true/false and YAML's other spellings */
    CFG_GB,      /* a number of GB within [min, max] */
    CFG_GB_OR_FRACTION,
    CFG_MINUTES, /* a number of minutes within [min, max] */
    CFG_ENUM,    /* one of enum_values */
    CFG_DEVICE,  /* auto | cpu | cuda[:N] | hip[:N] */
    CFG_STRING,  /* free text */
    CFG_VERSION  /* schema_version */
} cfg_type;

typedef struct cfg_key_def {
    const char *name;
    cfg_type type;
    int optional;      /* null / unset allowed */
    double min, max;   /* numbers: allowed range */
    int min_exclusive; /* > min rather than >= min */
    const char *const *enum_values;
    const char *default_text; /* "null" for unset optional keys */
    const char *doc;
} cfg_key_def;

extern const cfg_key_def vc__cfg_keys[VC_CFG_KEY_COUNT];

typedef struct cfg_value {
    int set;     /* present in this layer */
    int is_null; /* explicitly unset (optional keys) */
    int b;
    double num;
    int dev_kind, dev_index;
    /* canonical text as written back by `config show`; free text (pytorch_cuda_alloc_conf, which
     * PyTorch users fill with several options) up to 511 bytes */
    char text[512];
} cfg_value;

enum { LAYER_DEFAULT, LAYER_FILE, LAYER_ENV, LAYER_API, LAYER_COUNT };

struct vc_config {
    cfg_value layer[LAYER_COUNT][VC_CFG_KEY_COUNT];
};

/* Where a value's text comes from, which decides how it reads (as InvokeAI's readers would). */
typedef enum cfg_text_kind {
    CFG_TEXT_STRING = 0, /* environment, vc_config_set, defaults: a string ("null", "~", "" unset) */
    CFG_TEXT_YAML_PLAIN, /* an unquoted scalar in a file: PyYAML's YAML 1.1 numbers (0x10, 014,
                          * 1_000, 1:30) first, as InvokeAI's loader reads them */
    CFG_TEXT_YAML_QUOTED /* a quoted scalar in a file: a string, never null */
} cfg_text_kind;

/** Parses a scalar for a key. Returns 0, or -1 with a message in err (what was expected). A
 *  non-fatal remark (e.g. a value that does not apply) goes to warn (empty when none). */
int vc__cfg_parse(const cfg_key_def *def, const char *text, cfg_text_kind kind, cfg_value *out, char *err,
                  size_t err_size, char *warn, size_t warn_size);

/** The effective value (highest layer that is set). */
const cfg_value *vc__cfg_effective(const vc_config *cfg, vc_config_key key, int *layer);

/** Names InvokeAI (4.x/5.x or 3.x) uses that libvramcache does not: accepted silently. */
int vc__cfg_is_invokeai_key(const char *name);
/** SD.Next's offload settings with no key here: 1 with *instead (what does that job here) and
 *  *list (1: a list of SD.Next's module names, warned about when not empty), else 0. */
int vc__cfg_sdnext_key(const char *name, int *list, const char **instead);
/** Keys only SD.Next's config.json holds: the file is SD.Next's settings. */
int vc__cfg_is_sdnext_marker(const char *name);
/** ram / vram / lazy_offload (and 3.x spellings): returns the replacement text, else NULL. */
const char *vc__cfg_deprecated(const char *name);
/** Canonical key for a name or alias, or -1. */
int vc__cfg_lookup(const char *name);
/* Levenshtein distance, case-insensitive; 99 for strings over 64 characters. */
size_t vc__edit_distance(const char *a, const char *b);
/* The largest edit distance at which a typed key still suggests a known one (longer keys allow
 * more, at most 3). */
size_t vc__suggest_limit(const char *name);
/** Closest known key within a small edit distance, or NULL. */
const char *vc__cfg_suggest(const char *name);

/* Diagnostics list. */
void vc__diag_add(vc_diagnostics *d, vc_diag_severity sev, const char *file, unsigned line,
                  unsigned col, const char *key, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 7, 8)))
#endif
    ;
vc_diagnostics *vc__diag_new(void);

/** Parses YAML text into the file layer `out` (unset entries stay unset). */
void vc__cfg_parse_yaml(const char *text, size_t len, const char *name, cfg_value *out,
                        vc_diagnostics *d);
/** Reads INVOKEAI_<KEY> variables into `out`. */
void vc__cfg_read_env(cfg_value *out, vc_diagnostics *d);

/** Chooses a backend for a device spec: GPU backends this build can load, else host. */
int vc__select_backend(vc_device_kind kind, int index, vc_backend **out, char *why, size_t why_size);

#endif
