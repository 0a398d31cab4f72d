/*
 * invokeai.yaml → the file layer, with libyaml's document loader (every node keeps its line and
 * column), and INVOKEAI_<KEY> → the environment layer. InvokeAI 3.x files are migrated in memory
 * as InvokeAI's migrate_v3_config_dict does; the user's file is never written.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <yaml.h>

#include "config_internal.h"
#include "yaml_merge.h"

typedef struct seen_key {
    const char *name; /* canonical name (points into the document or the key table) */
    unsigned line;
} seen_key;

typedef struct loader {
    yaml_document_t *doc;
    const char *file;
    cfg_value *out;
    vc_diagnostics *d;
    seen_key seen[256];
    size_t nseen;
    /* SD.Next's config.json (it holds one of SD.Next's own keys): its other keys are its settings,
     * hundreds of them, summed up in one warning after the walk instead of one each. */
    int sdnext;
    size_t sdnext_other;            /* such keys seen */
    const char *sdnext_example[3];  /* the first few, named in that warning */
    unsigned sdnext_line, sdnext_col; /* where the first is */
} loader;

static unsigned line_of(const yaml_node_t *n) { return (unsigned)n->start_mark.line + 1; }
static unsigned col_of(const yaml_node_t *n) { return (unsigned)n->start_mark.column + 1; }

static const char *node_kind(const yaml_node_t *n) {
    switch (n->type) {
    case YAML_SEQUENCE_NODE: return "a list";
    case YAML_MAPPING_NODE: return "a mapping";
    default: return "a scalar";
    }
}

/* Records `canon` as seen at `line`; warns when it was seen before (the later value wins). */
static void note_key(loader *L, const char *canon, const char *spelled, const yaml_node_t *k) {
    for (size_t i = 0; i < L->nseen; i++)
        if (!strcmp(L->seen[i].name, canon)) {
            vc__diag_add(L->d, VC_DIAG_WARNING, L->file, line_of(k), col_of(k), spelled,
                         "duplicate key '%s' (also on line %u); the value on line %u wins", spelled,
                         L->seen[i].line, line_of(k));
            L->seen[i].line = line_of(k);
            return;
        }
    if (L->nseen < sizeof L->seen / sizeof L->seen[0]) L->seen[L->nseen++] = (seen_key){canon, line_of(k)};
}

/* One `key: value` pair, from the top level or (3.x) from a category. */
static void handle_pair(loader *L, const yaml_node_t *k, const yaml_node_t *v, int v3) {
    if (k->type != YAML_SCALAR_NODE) {
        vc__diag_add(L->d, VC_DIAG_ERROR, L->file, line_of(k), col_of(k), "",
                     "a key must be a plain name, got %s", node_kind(k));
        return;
    }
    const char *name = (const char *)k->data.scalar.value;
    if (v3) { /* InvokeAI's 3.x → 4.0 renames */
        if (!strcmp(name, "max_cache_size") || !strcmp(name, "max_vram_cache_size")) {
            note_key(L, name, name, k);
            vc__diag_add(L->d, VC_DIAG_WARNING, L->file, line_of(k), col_of(k), name,
                         "'%s' (InvokeAI 3.x, migrated to '%s') is no longer used and is ignored; it was "
                         "replaced by %s", name, name[4] == 'c' ? "ram" : "vram", vc__cfg_deprecated(name));
            return;
        }
    }
    int key = vc__cfg_lookup(name);
    if (key >= 0) {
        const cfg_key_def *def = &vc__cfg_keys[key];
        note_key(L, def->name, name, k);
        if (v->type != YAML_SCALAR_NODE) {
            vc__diag_add(L->d, VC_DIAG_ERROR, L->file, line_of(v), col_of(v), name,
                         "%s must be a single value (%s), got %s", name, def->doc, node_kind(v));
            return;
        }
        char err[384], warn[256];
        cfg_value val;
        int quoted = v->data.scalar.style == YAML_SINGLE_QUOTED_SCALAR_STYLE ||
                     v->data.scalar.style == YAML_DOUBLE_QUOTED_SCALAR_STYLE;
        if (vc__cfg_parse(def, (const char *)v->data.scalar.value, quoted ? CFG_TEXT_YAML_QUOTED : CFG_TEXT_YAML_PLAIN,
                          &val, err, sizeof err, warn, sizeof warn) != 0) {
            if (strcmp(name, def->name)) /* an alias (SD.Next's spelling): say which key it is read as */
                vc__diag_add(L->d, VC_DIAG_ERROR, L->file, line_of(v), col_of(v), name, "'%s' is read as %s: %s", name,
                             def->name, err);
            else
                vc__diag_add(L->d, VC_DIAG_ERROR, L->file, line_of(v), col_of(v), name, "%s", err);
            return;
        }
        if (warn[0]) vc__diag_add(L->d, VC_DIAG_WARNING, L->file, line_of(v), col_of(v), name, "%s", warn);
        L->out[key] = val;
        return;
    }
    note_key(L, name, name, k);
    const char *replaced = vc__cfg_deprecated(name);
    if (replaced) {
        vc__diag_add(L->d, VC_DIAG_WARNING, L->file, line_of(k), col_of(k), name,
                     "'%s' is no longer used and is ignored; it was replaced by %s", name, replaced);
        return;
    }
    if (vc__cfg_is_invokeai_key(name)) return; /* InvokeAI's own setting: the file is shared */
    int list;
    const char *instead;
    if (vc__cfg_sdnext_key(name, &list, &instead)) {
        /* SD.Next's own offload setting: its job is done another way here (see the key table); a
         * list of its module names is the one the user must act on, when it names any */
        if (list && !(v->type == YAML_SCALAR_NODE && v->data.scalar.length == 0) &&
            !(v->type == YAML_SEQUENCE_NODE && v->data.sequence.items.start == v->data.sequence.items.top))
            vc__diag_add(L->d, VC_DIAG_WARNING, L->file, line_of(k), col_of(k), name,
                         "'%s' (SD.Next's) is ignored: %s", name, instead);
        return;
    }
    const char *hint = vc__cfg_suggest(name);
    if (!hint && L->sdnext) {
        if (L->sdnext_other < sizeof L->sdnext_example / sizeof L->sdnext_example[0])
            L->sdnext_example[L->sdnext_other] = name;
        if (!L->sdnext_other) L->sdnext_line = line_of(k), L->sdnext_col = col_of(k);
        L->sdnext_other++;
        return;
    }
    if (hint)
        vc__diag_add(L->d, VC_DIAG_WARNING, L->file, line_of(k), col_of(k), name,
                     "unknown key '%s' is ignored (did you mean '%s'?)", name, hint);
    else
        vc__diag_add(L->d, VC_DIAG_WARNING, L->file, line_of(k), col_of(k), name,
                     "unknown key '%s' is ignored: neither libvramcache nor InvokeAI uses it", name);
}

static void walk_mapping(loader *L, yaml_node_t *map, int v3) {
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++) {
        yaml_node_t *k = yaml_document_get_node(L->doc, p->key);
        yaml_node_t *v = yaml_document_get_node(L->doc, p->value);
        if (!k || !v) continue;
        if (!v3 && k->type == YAML_SCALAR_NODE && !strcmp((const char *)k->data.scalar.value, "InvokeAI")) {
            if (v->type != YAML_MAPPING_NODE) {
                vc__diag_add(L->d, VC_DIAG_ERROR, L->file, line_of(v), col_of(v), "InvokeAI",
                             "'InvokeAI:' (an InvokeAI 3.x file) must hold categories such as 'Model Cache:', "
                             "got %s", node_kind(v));
                continue;
            }
            /* 3.x: categories ("Web Server", "Model Cache", "Device", ...) of key: value pairs */
            for (yaml_node_pair_t *c = v->data.mapping.pairs.start; c < v->data.mapping.pairs.top; c++) {
                yaml_node_t *ck = yaml_document_get_node(L->doc, c->key);
                yaml_node_t *cv = yaml_document_get_node(L->doc, c->value);
                if (!ck || !cv) continue;
                if (cv->type != YAML_MAPPING_NODE) {
                    vc__diag_add(L->d, VC_DIAG_WARNING, L->file, line_of(ck), col_of(ck), "",
                                 "InvokeAI 3.x category '%s' is not a mapping of settings; ignored",
                                 ck->type == YAML_SCALAR_NODE ? (const char *)ck->data.scalar.value : "?");
                    continue;
                }
                walk_mapping(L, cv, 1);
            }
            continue;
        }
        handle_pair(L, k, v, v3);
    }
}

/* The source line holding `line` (1-based), for hints about tabs. */
static int line_has_tab(const char *text, size_t len, size_t line) {
    size_t cur = 1, i = 0;
    while (i < len && cur < line)
        if (text[i++] == '\n') cur++;
    for (; i < len && text[i] != '\n'; i++)
        if (text[i] == '\t') return 1;
    return 0;
}

void vc__cfg_parse_yaml(const char *text, size_t len, const char *name, cfg_value *out, vc_diagnostics *d) {
    yaml_parser_t parser;
    yaml_document_t doc;
    if (!yaml_parser_initialize(&parser)) {
        vc__diag_add(d, VC_DIAG_ERROR, name, 0, 0, "", "out of memory starting the YAML parser");
        return;
    }
    yaml_parser_set_input_string(&parser, (const unsigned char *)text, len);
    if (!yaml_parser_load(&parser, &doc)) {
        size_t line = parser.problem_mark.line + 1, col = parser.problem_mark.column + 1;
        const char *problem = parser.problem ? parser.problem : "malformed YAML";
        const char *tab = line_has_tab(text, len, line) || (parser.context && strstr(parser.context, "tab"))
                              ? " (tabs cannot indent YAML: use spaces)"
                              : "";
        if (parser.context)
            vc__diag_add(d, VC_DIAG_ERROR, name, (unsigned)line, (unsigned)col, "",
                         "YAML syntax error: %s %s (line %zu)%s", problem, parser.context,
                         parser.context_mark.line + 1, tab);
        else
            vc__diag_add(d, VC_DIAG_ERROR, name, (unsigned)line, (unsigned)col, "", "YAML syntax error: %s%s",
                         problem, tab);
        yaml_parser_delete(&parser);
        return;
    }
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    if (vc__yaml_expand_merges(&doc, name, d)) {
        /* an error is already listed; reading the rest would report settings half-merged */
    } else if (!root) {
        vc__diag_add(d, VC_DIAG_WARNING, name, 0, 0, "", "the file is empty; using the defaults");
    } else if (root->type == YAML_SCALAR_NODE && root->data.scalar.length == 0) {
        vc__diag_add(d, VC_DIAG_WARNING, name, 0, 0, "", "the file is empty; using the defaults");
    } else if (root->type != YAML_MAPPING_NODE) {
        vc__diag_add(d, VC_DIAG_ERROR, name, line_of(root), col_of(root), "",
                     "the top level must be a mapping of 'key: value' lines, got %s", node_kind(root));
    } else {
        loader L = {.doc = &doc, .file = name, .out = out, .d = d};
        for (yaml_node_pair_t *p = root->data.mapping.pairs.start; p < root->data.mapping.pairs.top && !L.sdnext; p++) {
            yaml_node_t *k = yaml_document_get_node(&doc, p->key);
            L.sdnext = k && k->type == YAML_SCALAR_NODE && vc__cfg_is_sdnext_marker((const char *)k->data.scalar.value);
        }
        walk_mapping(&L, root, 0);
        if (L.sdnext_other) {
            char names[256];
            size_t n = 0, shown = L.sdnext_other < 3 ? L.sdnext_other : 3;
            names[0] = '\0';
            for (size_t i = 0; i < shown && n < sizeof names; i++)
                n += (size_t)snprintf(names + n, sizeof names - n, "%s'%s'", i ? ", " : "", L.sdnext_example[i]);
            vc__diag_add(d, VC_DIAG_WARNING, name, L.sdnext_line, L.sdnext_col, L.sdnext_example[0],
                         "this is SD.Next's config.json: %zu of its own settings that libvramcache does not use "
                         "%s ignored (%s%s)", L.sdnext_other, L.sdnext_other == 1 ? "is" : "are", names,
                         L.sdnext_other > shown ? ", ..." : "");
        }
        /* A second document would be ignored by InvokeAI too; say so. */
        yaml_document_t extra;
        if (yaml_parser_load(&parser, &extra)) {
            yaml_node_t *r2 = yaml_document_get_root_node(&extra);
            if (r2)
                vc__diag_add(d, VC_DIAG_WARNING, name, line_of(r2), col_of(r2), "",
                             "only the first YAML document is read; this one is ignored");
            yaml_document_delete(&extra);
        }
    }
    yaml_document_delete(&doc);
    yaml_parser_delete(&parser);
}

void vc__cfg_read_env(cfg_value *out, vc_diagnostics *d) {
    char var[96];
    for (int k = 0; k < VC_CFG_KEY_COUNT; k++) {
        const cfg_key_def *def = &vc__cfg_keys[k];
        size_t n = (size_t)snprintf(var, sizeof var, "INVOKEAI_");
        for (const char *p = def->name; *p && n + 1 < sizeof var; p++) var[n++] = (char)toupper((unsigned char)*p);
        var[n] = '\0';
        const char *val = getenv(var);
        if (!val) continue;
        char err[384], warn[256];
        cfg_value v;
        if (vc__cfg_parse(def, val, CFG_TEXT_STRING, &v, err, sizeof err, warn, sizeof warn) != 0) {
            vc__diag_add(d, VC_DIAG_ERROR, "environment", 0, 0, var, "%s: %s", var, err);
            continue;
        }
        if (warn[0]) vc__diag_add(d, VC_DIAG_WARNING, "environment", 0, 0, var, "%s: %s", var, warn);
        out[k] = v;
    }
    static const char *const deprecated[] = {"INVOKEAI_RAM", "INVOKEAI_VRAM", "INVOKEAI_LAZY_OFFLOAD"};
    static const char *const names[] = {"ram", "vram", "lazy_offload"};
    for (int i = 0; i < 3; i++)
        if (getenv(deprecated[i]))
            vc__diag_add(d, VC_DIAG_WARNING, "environment", 0, 0, deprecated[i],
                         "%s is no longer used and is ignored; it was replaced by %s", deprecated[i],
                         vc__cfg_deprecated(names[i]));
}
