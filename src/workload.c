/*
 * Workload files (docs/workloads.md): models as lists of layers with bytes and FLOPs, and a
 * pipeline of stages. Parsed with libyaml's document loader so every error names its line.
 */
#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <yaml.h>

#include "cache_internal.h"
#include "config_internal.h"
#include "read_file.h"
#include "vramcache_sim.h"
#include "workload_internal.h"
#include "yaml_merge.h"

static char *dup_str(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

void vc_workload_destroy(vc_workload *wl) {
    if (!wl) return;
    for (size_t i = 0; i < wl->nmodels; i++) {
        for (size_t j = 0; j < wl->models[i].n; j++) free(wl->models[i].layers[j].name);
        free(wl->models[i].layers);
        free(wl->models[i].name);
    }
    free(wl->models);
    for (size_t i = 0; wl->stages && i < wl->nstages; i++) free(wl->stages[i].model);
    free(wl->stages);
    free(wl->den_back);
    free(wl->name);
    free(wl);
}

typedef struct wparser {
    yaml_document_t *doc;
    const char *file;
    vc_diagnostics *d;
} wparser;

static unsigned ln(const yaml_node_t *n) { return (unsigned)n->start_mark.line + 1; }
static unsigned cl(const yaml_node_t *n) { return (unsigned)n->start_mark.column + 1; }

static yaml_node_t *get(wparser *P, yaml_node_t *map, const char *key) {
    if (!map || map->type != YAML_MAPPING_NODE) return NULL;
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++) {
        yaml_node_t *k = yaml_document_get_node(P->doc, p->key);
        if (k && k->type == YAML_SCALAR_NODE && !strcmp((const char *)k->data.scalar.value, key))
            return yaml_document_get_node(P->doc, p->value);
    }
    return NULL;
}

static const char *scalar(yaml_node_t *n) {
    return n && n->type == YAML_SCALAR_NODE ? (const char *)n->data.scalar.value : NULL;
}

/* Warns about each key of `map` not in `known` (NULL-terminated), with the closest known key when
 * one is near: a misspelt optional field (working_mem_bytes) would otherwise be dropped silently. */
static void warn_unknown_keys(wparser *P, yaml_node_t *map, const char *const *known, const char *where) {
    if (!map || map->type != YAML_MAPPING_NODE) return;
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++) {
        yaml_node_t *k = yaml_document_get_node(P->doc, p->key);
        const char *key = scalar(k);
        if (!key) continue;
        const char *best = NULL;
        size_t best_d = (size_t)-1, i;
        for (i = 0; known[i] && strcmp(known[i], key); i++) {
            /* a known key that begins with this one (working_mem for working_mem_bytes) is near */
            size_t d = strlen(key) >= 4 && !strncmp(known[i], key, strlen(key)) ? 1 : vc__edit_distance(key, known[i]);
            if (d < best_d) best_d = d, best = known[i];
        }
        if (known[i]) continue;
        if (best && best_d <= vc__suggest_limit(key))
            vc__diag_add(P->d, VC_DIAG_WARNING, P->file, ln(k), cl(k), key,
                         "unknown %s key '%s' is ignored (did you mean '%s'?)", where, key, best);
        else
            vc__diag_add(P->d, VC_DIAG_WARNING, P->file, ln(k), cl(k), key, "unknown %s key '%s' is ignored", where, key);
    }
}

static const char *const TOP_KEYS[] = {"name", "description", "resolution", "dtype", "steps", "layers", "models", "pipeline", NULL};
static const char *const MODEL_KEYS[] = {"name", "layers", NULL};
static const char *const LAYER_KEYS[] = {"name", "bytes", "flops", NULL};
static const char *const USE_KEYS[] = {"use", "flops", NULL};
static const char *const STAGE_KEYS[] = {"model", "models", "repeat", "working_mem_bytes", NULL};

/* A finite number >= 0 (bytes must also be a whole number >= 1). */
static int number(wparser *P, yaml_node_t *n, const char *what, double *out) {
    const char *s = scalar(n);
    char *end = NULL;
    double v = s ? strtod(s, &end) : NAN;
    while (end && isspace((unsigned char)*end)) end++;
    if (!s || !*s || !end || *end || !isfinite(v) || v < 0 || strpbrk(s, "xXnN")) {
        vc__diag_add(P->d, VC_DIAG_ERROR, P->file, n ? ln(n) : 0, n ? cl(n) : 0, what,
                     "%s must be a finite number >= 0, got '%s'", what, s ? s : "(not a scalar)");
        return -1;
    }
    *out = v;
    return 0;
}

/* Names already read, for the duplicate-name warning: an open-addressing set of indices + 1 into
 * m->layers (a linear search made a model of 100,000 layers, one per tensor, take minutes). */
static uint64_t name_hash(const char *s) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

static size_t *name_slot(size_t *set, size_t mask, const wl_model *m, const char *name) {
    size_t i = (size_t)name_hash(name) & mask;
    while (set[i] && strcmp(m->layers[set[i] - 1].name, name)) i = (i + 1) & mask;
    return &set[i];
}

static int parse_layers(wparser *P, yaml_node_t *seq, wl_model *m) {
    if (!seq || seq->type != YAML_SEQUENCE_NODE) {
        vc__diag_add(P->d, VC_DIAG_ERROR, P->file, seq ? ln(seq) : 0, seq ? cl(seq) : 0, "layers",
                     "model '%s' needs 'layers:', a list of {name, bytes, flops}", m->name);
        return -1;
    }
    size_t n = (size_t)(seq->data.sequence.items.top - seq->data.sequence.items.start);
    m->layers = calloc(n ? n : 1, sizeof(*m->layers));
    if (!m->layers) return -1;
    size_t cap = 16;
    while (cap < 2 * n) cap *= 2;
    size_t *seen = calloc(cap, sizeof(*seen));
    if (!seen) return -1;
    int bad = 0;
    for (size_t i = 0; i < n; i++) {
        yaml_node_t *it = yaml_document_get_node(P->doc, seq->data.sequence.items.start[i]);
        const char *name = scalar(get(P, it, "name"));
        double bytes = 0, flops = 0;
        yaml_node_t *use = it && it->type == YAML_MAPPING_NODE ? get(P, it, "use") : NULL;
        if (use) { /* {use: NAME[, flops: F]}: an earlier layer of this model runs again here */
            const char *of = scalar(use);
            size_t *slot = of && *of ? name_slot(seen, cap - 1, m, of) : NULL;
            if (!slot || !*slot) {
                vc__diag_add(P->d, VC_DIAG_ERROR, P->file, ln(it), cl(it), "use",
                             "'use: %s' names no earlier layer of model '%s' (a use runs a layer listed above "
                             "it again)", of ? of : "(not a scalar)", m->name);
                bad = 1;
                continue;
            }
            if (name || get(P, it, "bytes")) {
                vc__diag_add(P->d, VC_DIAG_ERROR, P->file, ln(it), cl(it), name ? "name" : "bytes",
                             "'use: %s' takes the name and bytes of the layer it runs again; give only "
                             "'flops' (by default that layer's)", of);
                bad = 1;
                continue;
            }
            warn_unknown_keys(P, it, USE_KEYS, "layer use");
            const wl_layer *orig = &m->layers[*slot - 1];
            yaml_node_t *fn = get(P, it, "flops");
            flops = orig->flops;
            if (fn && number(P, fn, "flops", &flops)) {
                bad = 1;
                continue;
            }
            if (flops > 1e18) {
                vc__diag_add(P->d, VC_DIAG_ERROR, P->file, ln(it), cl(it), "flops",
                             "use of layer '%s': flops must be at most 1e18", of);
                bad = 1;
                continue;
            }
            wl_layer *L = &m->layers[m->n++];
            L->name = dup_str(orig->name);
            L->bytes = orig->bytes;
            L->flops = flops;
            L->same = (size_t)(orig - m->layers) + 1;
            if (!L->name) {
                free(seen);
                return -1;
            }
            continue;
        }
        if (!it || it->type != YAML_MAPPING_NODE || !name || !*name) {
            vc__diag_add(P->d, VC_DIAG_ERROR, P->file, it ? ln(it) : 0, it ? cl(it) : 0, "layers",
                         "each layer needs a name, bytes and flops");
            bad = 1;
            continue;
        }
        yaml_node_t *bn = get(P, it, "bytes"), *fn = get(P, it, "flops");
        if (!bn || !fn) {
            vc__diag_add(P->d, VC_DIAG_ERROR, P->file, ln(it), cl(it), bn ? "flops" : "bytes",
                         "layer '%s' needs '%s'", name, bn ? "flops" : "bytes");
            bad = 1;
            continue;
        }
        warn_unknown_keys(P, it, LAYER_KEYS, "layer");
        if (number(P, bn, "bytes", &bytes) || number(P, fn, "flops", &flops)) {
            bad = 1;
            continue;
        }
        /* Names only label layers (ids identify them), but two alike make traces and messages
         * ambiguous: most likely a copied line. */
        size_t *slot = name_slot(seen, cap - 1, m, name);
        if (*slot)
            vc__diag_add(P->d, VC_DIAG_WARNING, P->file, ln(it), cl(it), "name",
                         "model '%s' has two layers named '%s' (layers %zu and %zu)", m->name, name, *slot, i + 1);
        if (bytes < 1 || bytes != floor(bytes) || bytes > 1e15) {
            vc__diag_add(P->d, VC_DIAG_ERROR, P->file, ln(it), cl(it), "bytes",
                         "layer '%s': bytes must be a whole number between 1 and 1e15", name);
            bad = 1;
            continue;
        }
        if (flops > 1e18) { /* hours per use on any GPU: the simulator's microseconds would blur */
            vc__diag_add(P->d, VC_DIAG_ERROR, P->file, ln(it), cl(it), "flops",
                         "layer '%s': flops must be at most 1e18 (one use of the largest real layers is ~1e15)",
                         name);
            bad = 1;
            continue;
        }
        wl_layer *L = &m->layers[m->n++];
        L->name = dup_str(name);
        L->bytes = (size_t)bytes;
        L->flops = flops;
        if (!L->name) {
            free(seen);
            return -1;
        }
        if (!*slot) *slot = m->n; /* (the first of a name keeps the slot) */
    }
    free(seen);
    if (!bad && m->n == 0) {
        vc__diag_add(P->d, VC_DIAG_ERROR, P->file, ln(seq), cl(seq), "layers", "model '%s' has no layers", m->name);
        bad = 1;
    }
    return bad ? -1 : 0;
}

/* Index of the model named `name`, or wl->nmodels. */
static size_t model_index(const vc_workload *wl, const char *name) {
    for (size_t k = 0; name && k < wl->nmodels; k++)
        if (!strcmp(wl->models[k].name, name)) return k;
    return wl->nmodels;
}

/* A stage runs `model: X`, or `models: [X, Y, ...]` in turn each repetition (a ControlNet and then
 * the UNet it conditions, every denoising step). A model may be named more than once: an engine
 * that runs classifier-free guidance as two passes (InvokeAI's sequential_guidance) runs the UNet
 * twice per step, after a ControlNet run once for both. */
/* working_mem_bytes as a mapping from model names to bytes: each pass of a named model reserves
 * its bytes while it runs (a VAE decode, or the denoiser's activations, inside a stage that runs a
 * whole image); models not named reserve nothing. */
static int parse_pass_working_mem(wparser *P, yaml_node_t *wm, size_t i, const vc_workload *wl, wl_stage *st) {
    size_t *per_model = st->pass_wm; /* (zeroed by stage_alloc) */
    for (yaml_node_pair_t *p = wm->data.mapping.pairs.start; p < wm->data.mapping.pairs.top; p++) {
        yaml_node_t *kn = yaml_document_get_node(P->doc, p->key), *vn = yaml_document_get_node(P->doc, p->value);
        const char *mname = scalar(kn);
        size_t k = 0;
        while (k < st->nmodels && (!mname || strcmp(wl->models[st->model[k]].name, mname))) k++;
        if (k == st->nmodels) {
            vc__diag_add(P->d, VC_DIAG_ERROR, P->file, kn ? ln(kn) : ln(wm), kn ? cl(kn) : cl(wm), "working_mem_bytes",
                         "stage %zu: working_mem_bytes names '%s', which is not a model of the stage", i + 1,
                         mname ? mname : "");
            return -1;
        }
        double v;
        if (number(P, vn, "working_mem_bytes", &v)) return -1;
        if (v > 1e15 || v != floor(v)) {
            vc__diag_add(P->d, VC_DIAG_ERROR, P->file, ln(vn), cl(vn), "working_mem_bytes",
                         "stage %zu: working_mem_bytes of '%s' must be a whole number of bytes up to 1e15, got '%s'",
                         i + 1, mname, scalar(vn));
            return -1;
        }
        for (size_t j = 0; j < st->nmodels; j++)
            if (st->model[j] == st->model[k]) per_model[j] = (size_t)v;
    }
    st->wm_per_pass = 1;
    for (size_t j = 0; j < st->nmodels; j++)
        if (per_model[j] > st->working_mem) st->working_mem = per_model[j];
    return 0;
}

/* Room in st for n models and their passes' working memory (zeroed); st->nmodels stays 0. */
static int stage_alloc(wl_stage *st, size_t n) {
    st->model = calloc(2 * n, sizeof(*st->model));
    if (!st->model) return -1;
    st->pass_wm = st->model + n;
    return 0;
}

/* A stage that runs model m once per repetition (per_step: `steps` times). */
static int one_model_stage(wl_stage *st, size_t m, int per_step) {
    *st = (wl_stage){.per_step = per_step, .repeat = 1};
    if (stage_alloc(st, 1)) return -1;
    st->model[st->nmodels++] = m;
    return 0;
}

static int parse_stage_models(wparser *P, yaml_node_t *sn, size_t i, const vc_workload *wl, wl_stage *st) {
    yaml_node_t *one = get(P, sn, "model"), *list = get(P, sn, "models");
    unsigned line = sn ? ln(sn) : 0, col = sn ? cl(sn) : 0;
    if (!sn || sn->type != YAML_MAPPING_NODE || (!one == !list)) {
        vc__diag_add(P->d, VC_DIAG_ERROR, P->file, line, col, "model",
                     "stage %zu needs either 'model: NAME' or 'models: [NAME, ...]'", i + 1);
        return -1;
    }
    yaml_node_item_t *items = NULL;
    size_t n = 1;
    if (list) {
        if (list->type != YAML_SEQUENCE_NODE || list->data.sequence.items.top == list->data.sequence.items.start ||
            list->data.sequence.items.top - list->data.sequence.items.start > WL_STAGE_MODELS) {
            vc__diag_add(P->d, VC_DIAG_ERROR, P->file, ln(list), cl(list), "models",
                         "stage %zu: 'models' must list 1 to %d model names", i + 1, WL_STAGE_MODELS);
            return -1;
        }
        items = list->data.sequence.items.start;
        n = (size_t)(list->data.sequence.items.top - items);
    }
    if (stage_alloc(st, n)) return -1;
    for (size_t k = 0; k < n; k++) {
        yaml_node_t *nn = items ? yaml_document_get_node(P->doc, items[k]) : one;
        const char *mname = scalar(nn);
        size_t mi = model_index(wl, mname);
        if (mi == wl->nmodels) {
            vc__diag_add(P->d, VC_DIAG_ERROR, P->file, nn ? ln(nn) : line, nn ? cl(nn) : col, "model",
                         "stage %zu names model '%s', which the workload does not define", i + 1, mname ? mname : "");
            return -1;
        }
        st->model[st->nmodels++] = mi; /* a model may run more than once per repetition (see above) */
    }
    return 0;
}

static int parse(wparser *P, yaml_node_t *root, vc_workload *wl) {
    if (!root || root->type != YAML_MAPPING_NODE) {
        vc__diag_add(P->d, VC_DIAG_ERROR, P->file, root ? ln(root) : 0, 0, "", "a workload is a mapping with "
                     "'name' and 'layers' (or 'models' and 'pipeline')");
        return -1;
    }
    const char *name = scalar(get(P, root, "name"));
    if (!name || !*name) {
        vc__diag_add(P->d, VC_DIAG_ERROR, P->file, ln(root), cl(root), "name", "the workload needs a 'name'");
        return -1;
    }
    if (!(wl->name = dup_str(name))) return -1;
    warn_unknown_keys(P, root, TOP_KEYS, "workload");
    wl->steps = 20;
    yaml_node_t *steps = get(P, root, "steps");
    if (steps) {
        double v;
        if (number(P, steps, "steps", &v) || v < 1 || v > 100000 || v != floor(v)) {
            if (!vc_diagnostics_errors(P->d))
                vc__diag_add(P->d, VC_DIAG_ERROR, P->file, ln(steps), cl(steps), "steps",
                             "steps must be a whole number from 1 to 100000, got '%s'", scalar(steps));
            return -1;
        }
        wl->steps = (int)v;
    }
    yaml_node_t *layers = get(P, root, "layers"), *models = get(P, root, "models");
    if (layers && !models) { /* the minimal form: one model, run for `steps` steps */
        wl->models = calloc(1, sizeof(*wl->models));
        wl->stages = calloc(1, sizeof(*wl->stages));
        if (!wl->models || !wl->stages || !(wl->models[0].name = dup_str(name))) return -1;
        wl->nmodels = wl->nstages = 1;
        if (one_model_stage(&wl->stages[0], 0, 1)) return -1;
        return parse_layers(P, layers, &wl->models[0]);
    }
    if (!models || models->type != YAML_SEQUENCE_NODE) {
        vc__diag_add(P->d, VC_DIAG_ERROR, P->file, ln(root), cl(root), "models",
                     "the workload needs 'layers:' (one model) or 'models:' (a list)");
        return -1;
    }
    size_t nm = (size_t)(models->data.sequence.items.top - models->data.sequence.items.start);
    wl->models = calloc(nm ? nm : 1, sizeof(*wl->models));
    if (!wl->models) return -1;
    int bad = 0;
    for (size_t i = 0; i < nm; i++) {
        yaml_node_t *mn = yaml_document_get_node(P->doc, models->data.sequence.items.start[i]);
        const char *mname = scalar(get(P, mn, "name"));
        if (!mname || !*mname) {
            vc__diag_add(P->d, VC_DIAG_ERROR, P->file, mn ? ln(mn) : 0, 0, "models", "each model needs a 'name'");
            bad = 1;
            continue;
        }
        if (model_index(wl, mname) < wl->nmodels) {
            vc__diag_add(P->d, VC_DIAG_ERROR, P->file, ln(mn), cl(mn), "models",
                         "two models are named '%s': stages name models, so names must differ", mname);
            bad = 1;
            continue;
        }
        warn_unknown_keys(P, mn, MODEL_KEYS, "model");
        wl_model *m = &wl->models[wl->nmodels++];
        if (!(m->name = dup_str(mname))) return -1;
        if (parse_layers(P, get(P, mn, "layers"), m)) bad = 1;
    }
    if (bad) return -1;
    yaml_node_t *pipe = get(P, root, "pipeline");
    if (!pipe) { /* no pipeline: every model once, the last one for `steps` steps */
        wl->stages = calloc(wl->nmodels, sizeof(*wl->stages));
        if (!wl->stages) return -1;
        for (size_t i = 0; i < wl->nmodels; i++)
            if (one_model_stage(&wl->stages[wl->nstages++], i, i + 1 == wl->nmodels)) return -1;
        return 0;
    }
    if (pipe->type != YAML_SEQUENCE_NODE) {
        vc__diag_add(P->d, VC_DIAG_ERROR, P->file, ln(pipe), cl(pipe), "pipeline", "pipeline must be a list of stages");
        return -1;
    }
    size_t ns = (size_t)(pipe->data.sequence.items.top - pipe->data.sequence.items.start);
    wl->stages = calloc(ns ? ns : 1, sizeof(*wl->stages));
    if (!wl->stages) return -1;
    int denoisers = 0;
    for (size_t i = 0; i < ns; i++) {
        yaml_node_t *sn = yaml_document_get_node(P->doc, pipe->data.sequence.items.start[i]);
        wl_stage *st = &wl->stages[wl->nstages++]; /* (from here vc_workload_destroy frees what it holds) */
        *st = (wl_stage){.repeat = 1};
        if (parse_stage_models(P, sn, i, wl, st)) return -1;
        warn_unknown_keys(P, sn, STAGE_KEYS, "stage");
        yaml_node_t *rep = get(P, sn, "repeat");
        if (rep && scalar(rep) && !strcmp(scalar(rep), "steps")) {
            st->per_step = 1;
            denoisers++;
        } else if (rep) {
            double v;
            if (number(P, rep, "repeat", &v)) return -1;
            if (v < 1 || v != floor(v) || v > 100000) {
                vc__diag_add(P->d, VC_DIAG_ERROR, P->file, ln(rep), cl(rep), "repeat",
                             "stage %zu: repeat must be 'steps' or a whole number from 1 to 100000, got '%s'", i + 1,
                             scalar(rep));
                return -1;
            }
            st->repeat = (unsigned)v;
        }
        yaml_node_t *wm = get(P, sn, "working_mem_bytes");
        if (wm && wm->type == YAML_MAPPING_NODE) {
            if (parse_pass_working_mem(P, wm, i, wl, st)) return -1;
        } else if (wm) {
            double v;
            if (number(P, wm, "working_mem_bytes", &v)) return -1;
            if (v > 1e15 || v != floor(v)) {
                vc__diag_add(P->d, VC_DIAG_ERROR, P->file, ln(wm), cl(wm), "working_mem_bytes",
                             "stage %zu: working_mem_bytes must be a whole number of bytes up to 1e15, got '%s'", i + 1,
                             scalar(wm));
                return -1;
            }
            st->working_mem = (size_t)v;
        }
    }
    if (denoisers != 1) {
        vc__diag_add(P->d, VC_DIAG_ERROR, P->file, ln(pipe), cl(pipe), "pipeline",
                     "exactly one stage must have 'repeat: steps' (the denoiser); found %d", denoisers);
        return -1;
    }
    return 0;
}

/* For a denoiser stage whose models run a layer more than once in their own pass ({use: NAME}):
 * how far back round the step each position's layer last ran (1 to n; n for a layer run once), as
 * the segment bound takes it, whether the earlier run was a use in the same model's pass or the same
 * model's earlier pass in the step. Left NULL (the per-model rule of vc_workload_denoiser_layer_back
 * applies) when no model of the stage has uses. Returns 0, or -1 when memory is short. */
static int denoiser_back(vc_workload *wl) {
    const wl_stage *st = &wl->stages[wl->denoiser];
    int uses = 0;
    size_t n = 0, keys = 0;
    for (size_t k = 0; k < st->nmodels; k++) {
        const wl_model *m = &wl->models[st->model[k]];
        for (size_t j = 0; j < m->n; j++) uses |= m->layers[j].same != 0;
        n += m->n;
    }
    if (!uses) return 0;
    for (size_t i = 0; i < wl->nmodels; i++) keys += wl->models[i].n;
    size_t *base = malloc(wl->nmodels * sizeof(*base)), *last = malloc(keys * sizeof(*last)),
           *back = malloc(n * sizeof(*back));
    if (!base || !last || !back) {
        free(base), free(last), free(back);
        return -1;
    }
    for (size_t i = 0, at = 0; i < wl->nmodels; i++) base[i] = at, at += wl->models[i].n;
    for (size_t i = 0; i < keys; i++) last[i] = SIZE_MAX;
    /* Twice round the step: the first time notes where each layer ran last, the second measures
     * each position's distance back to its layer's previous run. */
    for (size_t round = 0, p = 0; round < 2; round++)
        for (size_t k = 0; k < st->nmodels; k++) {
            const wl_model *m = &wl->models[st->model[k]];
            for (size_t j = 0; j < m->n; j++, p++) {
                size_t *l = &last[base[st->model[k]] + (m->layers[j].same ? m->layers[j].same - 1 : j)];
                if (round) back[p - n] = p - *l;
                *l = p;
            }
        }
    wl->den_back = back;
    free(base);
    free(last);
    return 0;
}

int vc_workload_load_string(const char *text, size_t len, const char *name, vc_workload **out, vc_diagnostics **diags) {
    if (diags) *diags = NULL;
    if (!out || (!text && len)) return vc__fail(NULL, VC_ERR_INVALID_ARG, "vc_workload_load_string: NULL argument");
    *out = NULL;
    if (!name) name = "<string>";
    vc_diagnostics *d = vc__diag_new();
    vc_workload *wl = calloc(1, sizeof(*wl));
    yaml_parser_t parser;
    yaml_document_t doc;
    int st = VC_OK;
    if (!d || !wl || !yaml_parser_initialize(&parser)) {
        vc_diagnostics_destroy(d);
        free(wl);
        return vc__fail(NULL, VC_ERR_NO_MEMORY, "vc_workload_load_string: out of host memory");
    }
    yaml_parser_set_input_string(&parser, (const unsigned char *)(text ? text : ""), len);
    if (!yaml_parser_load(&parser, &doc)) {
        vc__diag_add(d, VC_DIAG_ERROR, name, (unsigned)parser.problem_mark.line + 1,
                     (unsigned)parser.problem_mark.column + 1, "", "YAML syntax error: %s",
                     parser.problem ? parser.problem : "malformed YAML");
    } else {
        wparser P = {&doc, name, d};
        if (vc__yaml_expand_merges(&doc, name, d) == 0 && parse(&P, yaml_document_get_root_node(&doc), wl) &&
            !vc_diagnostics_errors(d))
            vc__diag_add(d, VC_DIAG_ERROR, name, 0, 0, "", "out of host memory reading the workload");
        yaml_document_delete(&doc);
    }
    yaml_parser_delete(&parser);
    if (vc_diagnostics_errors(d)) {
        const vc_diagnostic *g = NULL; /* the first error, not a warning before it */
        for (size_t i = 0; (g = vc_diagnostics_get(d, i)) && g->severity != VC_DIAG_ERROR; i++) {
        }
        st = vc__fail(NULL, VC_ERR_CONFIG, "%s: invalid workload: %s:%u: %s", name, name, g ? g->line : 0,
                      g ? g->message : "?");
        vc_workload_destroy(wl);
        wl = NULL;
    }
    for (size_t i = 0; wl && i < wl->nstages; i++)
        if (wl->stages[i].per_step) wl->denoiser = i;
    if (wl && denoiser_back(wl) != 0) {
        vc_workload_destroy(wl);
        wl = NULL;
        st = vc__fail(NULL, VC_ERR_NO_MEMORY, "%s: out of host memory reading the workload", name);
    }
    *out = wl;
    if (diags)
        *diags = d;
    else
        vc_diagnostics_destroy(d);
    return st;
}

int vc_workload_load(const char *path, vc_workload **out, vc_diagnostics **diags) {
    if (diags) *diags = NULL;
    if (!path || !out) return vc__fail(NULL, VC_ERR_INVALID_ARG, "vc_workload_load: NULL argument");
    *out = NULL;
    char *buf, why[128];
    size_t len;
    int read = vc__read_file(path, (size_t)64 << 20, &buf, &len, why, sizeof why);
    if (read != VC_OK)
        return vc__fail(NULL, read == VC_ERR_NO_MEMORY ? VC_ERR_NO_MEMORY : VC_ERR_IO,
                        "vc_workload_load: cannot read '%s': %s", path, why);
    int st = vc_workload_load_string(buf, len, path, out, diags);
    free(buf);
    return st;
}

const char *vc_workload_name(const vc_workload *wl) { return wl ? wl->name : ""; }

size_t vc_workload_total_bytes(const vc_workload *wl) {
    size_t t = 0;
    for (size_t i = 0; wl && i < wl->nmodels; i++)
        for (size_t j = 0; j < wl->models[i].n; j++)
            if (!wl->models[i].layers[j].same) t += wl->models[i].layers[j].bytes;
    return t;
}

/* The denoiser stage's layers as one pass: its models' layers in the order they run. */
static const wl_layer *denoiser_layer_of(const vc_workload *wl, size_t i, const wl_model **model) {
    const wl_stage *st = &wl->stages[wl->denoiser];
    for (size_t k = 0; k < st->nmodels; k++) {
        const wl_model *m = &wl->models[st->model[k]];
        if (i < m->n) {
            if (model) *model = m;
            return &m->layers[i];
        }
        i -= m->n;
    }
    return NULL;
}

static const wl_layer *denoiser_layer(const vc_workload *wl, size_t i) { return denoiser_layer_of(wl, i, NULL); }

const char *vc_workload_denoiser_layer_model(const vc_workload *wl, size_t i) {
    const wl_model *m = NULL;
    return wl && denoiser_layer_of(wl, i, &m) ? m->name : NULL;
}

size_t vc_workload_step_bytes(const vc_workload *wl) {
    if (!wl) return 0;
    const wl_stage *st = &wl->stages[wl->denoiser];
    size_t t = 0;
    for (size_t k = 0; k < st->nmodels; k++) {
        size_t j = 0;
        while (j < k && st->model[j] != st->model[k]) j++;
        if (j < k) continue; /* a model run twice per step holds its bytes once */
        for (j = 0; j < wl->models[st->model[k]].n; j++) /* (a layer's uses: once) */
            if (!wl->models[st->model[k]].layers[j].same) t += wl->models[st->model[k]].layers[j].bytes;
    }
    return t;
}

size_t vc_workload_denoiser_layer_back(const vc_workload *wl, size_t i) {
    size_t n = vc_workload_denoiser_layer_count(wl);
    if (!wl || i >= n) return 0;
    if (wl->den_back) return wl->den_back[i]; /* a model that runs a layer more than once (uses) */
    const wl_stage *st = &wl->stages[wl->denoiser];
    size_t k = 0, start = 0;
    while (i - start >= wl->models[st->model[k]].n) start += wl->models[st->model[k++]].n;
    /* back round the step to the previous run of the same model */
    size_t back = 0;
    for (size_t s = 1; s <= st->nmodels; s++) {
        size_t j = (k + st->nmodels - s) % st->nmodels;
        back += wl->models[st->model[j]].n;
        if (st->model[j] == st->model[k]) return s == st->nmodels ? n : back;
    }
    return n;
}

size_t vc_workload_denoiser_working_mem(const vc_workload *wl) {
    return wl ? wl->stages[wl->denoiser].working_mem : 0;
}

size_t vc_workload_denoiser_layer_count(const vc_workload *wl) {
    if (!wl) return 0;
    const wl_stage *st = &wl->stages[wl->denoiser];
    size_t n = 0;
    for (size_t k = 0; k < st->nmodels; k++) n += wl->models[st->model[k]].n;
    return n;
}

int vc_workload_denoiser_layer(const vc_workload *wl, size_t i, const char **name, size_t *bytes, double *flops) {
    if (!wl || i >= vc_workload_denoiser_layer_count(wl))
        return vc__fail(NULL, VC_ERR_INVALID_ARG, "vc_workload_denoiser_layer: no layer %zu", i);
    const wl_layer *l = denoiser_layer(wl, i);
    if (name) *name = l->name;
    if (bytes) *bytes = l->bytes;
    if (flops) *flops = l->flops;
    return VC_OK;
}
