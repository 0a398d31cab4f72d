/*
 * YAML merge keys (`<<: *defaults`) for the two file readers (invokeai.yaml and workloads).
 *
 * libyaml resolves anchors and aliases but not merge keys, which are a YAML 1.1 type that PyYAML
 * (InvokeAI's reader, and most tools that write these files) applies. Without this a file that
 * InvokeAI reads as `max_cache_vram_gb: 6` would be read here as an unknown key '<<', and the
 * setting lost. The rules are YAML 1.1's: the value of `<<` is a mapping or a list of mappings;
 * keys written in the mapping itself win over merged ones, and an earlier mapping in the list wins
 * over a later one. The expansion rewrites the document in place before it is walked, so the
 * readers see ordinary mappings (merged pairs point at the source's nodes, with their lines).
 */
#include <stdlib.h>
#include <string.h>

#include <yaml.h>

#include "config_internal.h"
#include "yaml_merge.h"

enum { UNSEEN, EXPANDING, DONE };

typedef struct merger {
    yaml_document_t *doc;
    const char *file;
    vc_diagnostics *d;
    unsigned char *state; /* per node index - 1 */
    int errors;
} merger;

static int is_merge_key(const yaml_node_t *k) {
    return k && k->type == YAML_SCALAR_NODE && k->data.scalar.style == YAML_PLAIN_SCALAR_STYLE &&
           k->data.scalar.length == 2 && !memcmp(k->data.scalar.value, "<<", 2);
}

static unsigned line_of(const yaml_node_t *n) { return (unsigned)n->start_mark.line + 1; }
static unsigned col_of(const yaml_node_t *n) { return (unsigned)n->start_mark.column + 1; }

/* Does `map` (pairs [0, upto)) have a scalar key equal to `key`? */
static int has_key(merger *M, yaml_node_t *map, size_t upto, const yaml_node_t *key) {
    if (key->type != YAML_SCALAR_NODE) return 0;
    for (size_t i = 0; i < upto; i++) {
        yaml_node_t *k = yaml_document_get_node(M->doc, map->data.mapping.pairs.start[i].key);
        if (k && k->type == YAML_SCALAR_NODE && k->data.scalar.length == key->data.scalar.length &&
            !memcmp(k->data.scalar.value, key->data.scalar.value, key->data.scalar.length))
            return 1;
    }
    return 0;
}

static void expand(merger *M, int index);

/* Appends the pairs of source mapping `src` that `map` lacks. Returns -1 when out of memory. */
static int merge_from(merger *M, int map_index, int src_index) {
    expand(M, src_index); /* its own merges first; a cycle is reported there */
    yaml_node_t *src = yaml_document_get_node(M->doc, src_index);
    size_t n = (size_t)(src->data.mapping.pairs.top - src->data.mapping.pairs.start);
    for (size_t i = 0; i < n; i++) {
        /* re-read each time: appending to `map` may move its pair array (not src's, unless src is
         * map, which expand() rules out as a cycle) */
        yaml_node_t *map = yaml_document_get_node(M->doc, map_index);
        yaml_node_pair_t p = src->data.mapping.pairs.start[i];
        yaml_node_t *k = yaml_document_get_node(M->doc, p.key);
        if (!k || is_merge_key(k)) continue; /* a source left unexpanded by a cycle */
        size_t have = (size_t)(map->data.mapping.pairs.top - map->data.mapping.pairs.start);
        if (has_key(M, map, have, k)) continue;
        if (!yaml_document_append_mapping_pair(M->doc, map_index, p.key, p.value)) return -1;
    }
    return 0;
}

static void fail(merger *M, const yaml_node_t *at, const char *msg) {
    vc__diag_add(M->d, VC_DIAG_ERROR, M->file, at ? line_of(at) : 0, at ? col_of(at) : 0, "<<", "%s", msg);
    M->errors++;
}

static void expand(merger *M, int index) {
    yaml_node_t *map = yaml_document_get_node(M->doc, index);
    if (!map || map->type != YAML_MAPPING_NODE || M->state[index - 1] == DONE) return;
    if (M->state[index - 1] == EXPANDING) {
        fail(M, map, "a merge key ('<<') merges a mapping into itself");
        return;
    }
    M->state[index - 1] = EXPANDING;
    /* Take the merge pairs out (keeping the others in order), then merge their sources in turn. */
    size_t n = (size_t)(map->data.mapping.pairs.top - map->data.mapping.pairs.start), kept = 0, nmerge = 0;
    yaml_node_pair_t *merges = NULL;
    for (size_t i = 0; i < n; i++) {
        yaml_node_pair_t p = map->data.mapping.pairs.start[i];
        if (!is_merge_key(yaml_document_get_node(M->doc, p.key))) {
            map->data.mapping.pairs.start[kept++] = p;
            continue;
        }
        if (!merges && !(merges = malloc(n * sizeof *merges))) {
            fail(M, map, "out of host memory expanding a merge key");
            M->state[index - 1] = DONE;
            return;
        }
        merges[nmerge++] = p;
    }
    map->data.mapping.pairs.top = map->data.mapping.pairs.start + kept;
    for (size_t m = 0; m < nmerge; m++) {
        yaml_node_t *v = yaml_document_get_node(M->doc, merges[m].value);
        int ok = 1;
        if (v && v->type == YAML_MAPPING_NODE) {
            if (merge_from(M, index, merges[m].value)) ok = -1;
        } else if (v && v->type == YAML_SEQUENCE_NODE) {
            for (yaml_node_item_t *it = v->data.sequence.items.start; ok == 1 && it < v->data.sequence.items.top; it++) {
                yaml_node_t *s = yaml_document_get_node(M->doc, *it);
                if (!s || s->type != YAML_MAPPING_NODE)
                    ok = 0;
                else if (merge_from(M, index, *it))
                    ok = -1;
            }
        } else {
            ok = 0;
        }
        if (ok == 0)
            fail(M, v ? v : map, "a merge key ('<<') takes a mapping or a list of mappings, such as *defaults");
        else if (ok < 0)
            fail(M, map, "out of host memory expanding a merge key");
    }
    free(merges);
    M->state[index - 1] = DONE;
}

int vc__yaml_expand_merges(yaml_document_t *doc, const char *file, vc_diagnostics *d) {
    size_t nodes = (size_t)(doc->nodes.top - doc->nodes.start);
    if (!nodes) return 0;
    merger M = {doc, file, d, calloc(nodes, 1), 0};
    if (!M.state) {
        vc__diag_add(d, VC_DIAG_ERROR, file, 0, 0, "", "out of host memory reading merge keys");
        return 1;
    }
    for (size_t i = 1; i <= nodes; i++) expand(&M, (int)i);
    free(M.state);
    return M.errors;
}
