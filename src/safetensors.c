/* Safetensors files as layers: the header's reader and checks, grouping tensors into layers, each
 * layer's buffer layout, and the loader that reads a layer from the file. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cache_internal.h"
#include "json_reader.h"
#include "read_file.h"
#include "vramcache_safetensors.h"

enum {
    MAX_HEADER_BYTES = 100000000, /* the reference implementation's limit */
    READ_CHUNK = 1 << 30,         /* pread at most this much at once (Linux caps a read near 2 GB) */
    READ_ENDED = 1                /* read_full: the file ended first */
};

#define OUT_OF_MEMORY() vc__fail(NULL, VC_ERR_NO_MEMORY, "vc_safetensors_open: out of host memory")

typedef struct layer_ctx { /* what a registered layer's loader gets */
    vc_safetensors *st;
    size_t index;
} layer_ctx;

struct vc_safetensors {
    char *path;   /* what was opened (a file, or a sharded checkpoint's index), for messages */
    size_t nfiles;
    int *fds;     /* one per file */
    char **paths;
    size_t alignment;
    size_t ntensors, nlayers, nmeta;
    vc_safetensors_tensor *tensors; /* grouped by layer, each layer's in file order */
    vc_safetensors_layer *layers;
    size_t *by_name;                /* tensor indices in name order, for vc_safetensors_find */
    layer_ctx *ctx;
    char **meta; /* nmeta key/value pairs: meta[2i], meta[2i+1] */
};

void vc_safetensors_options_init_sized(vc_safetensors_options *opts, size_t struct_size) {
    if (!opts) return;
    vc_safetensors_options d = {.struct_size = sizeof d, .group_depth = 0, .tensor_alignment = 256};
    if (struct_size > sizeof d) struct_size = sizeof d;
    memcpy(opts, &d, struct_size);
    opts->struct_size = struct_size;
}

/* ---------------------------------------------------------------------------------------------- */
/* The header: a JSON object of tensors, read with the few parts of JSON it may use                */
/* ---------------------------------------------------------------------------------------------- */

typedef struct raw_tensor { /* a tensor as the header gives it, before the checks */
    char *name, *dtype;
    uint64_t *shape;
    unsigned rank;
    uint64_t begin, end; /* in the file's data */
    size_t at;           /* header byte where its entry starts, for messages */
    size_t file;         /* which of the handle's files holds it */
    uint64_t data_start; /* where that file's data starts */
} raw_tensor;

typedef struct tensor_fields {
    raw_tensor *t;
    int have_dtype, have_shape, have_offsets;
} tensor_fields;

static int tensor_member(vc_json_reader *p, char *key, void *user) {
    tensor_fields *f = user;
    int st = VC_OK;
    int *seen = !strcmp(key, "dtype") ? &f->have_dtype : !strcmp(key, "shape") ? &f->have_shape
              : !strcmp(key, "data_offsets") ? &f->have_offsets : NULL;
    if (seen && *seen) st = vc__json_fail(p, "'%s' given twice", key);
    else if (!seen) st = vc__json_skip_value(p, 1);
    else if (seen == &f->have_dtype) st = vc__json_string(p, &f->t->dtype);
    else if (seen == &f->have_shape) st = vc__json_u64_array(p, &f->t->shape, &f->t->rank, "a shape entry");
    else {
        uint64_t *o = NULL;
        unsigned k = 0;
        size_t at = p->pos;
        st = vc__json_u64_array(p, &o, &k, "a data offset");
        if (!st && k != 2) {
            p->pos = at;
            st = vc__json_fail(p, "data_offsets has %u entries, expected [begin, end]", k);
        }
        if (!st) f->t->begin = o[0], f->t->end = o[1];
        free(o);
    }
    if (seen && !st) *seen = 1;
    free(key);
    return st;
}

typedef struct header {
    raw_tensor *t;
    size_t n, cap;
    char **meta;
    size_t nmeta, meta_cap;
    int have_meta;
} header;

static int meta_member(vc_json_reader *p, char *key, void *user) {
    header *h = user;
    if (h->nmeta == h->meta_cap) {
        size_t cap = h->meta_cap ? h->meta_cap * 2 : 8;
        char **g = realloc(h->meta, cap * 2 * sizeof *g);
        if (!g) {
            free(key);
            return OUT_OF_MEMORY();
        }
        h->meta = g;
        h->meta_cap = cap;
    }
    vc__json_skip_ws(p);
    if (p->pos < p->n && p->s[p->pos] != '"') {
        free(key);
        return vc__json_fail(p, "__metadata__ values must be strings");
    }
    char *value;
    int st = vc__json_string(p, &value);
    if (st) {
        free(key);
        return st;
    }
    h->meta[2 * h->nmeta] = key;
    h->meta[2 * h->nmeta + 1] = value;
    h->nmeta++;
    return VC_OK;
}

static int top_member(vc_json_reader *p, char *key, void *user) {
    header *h = user;
    if (!strcmp(key, "__metadata__")) {
        free(key);
        if (h->have_meta) return vc__json_fail(p, "__metadata__ given twice");
        h->have_meta = 1;
        return vc__json_object(p, meta_member, h);
    }
    if (h->n == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 64;
        raw_tensor *g = realloc(h->t, cap * sizeof *g);
        if (!g) {
            free(key);
            return OUT_OF_MEMORY();
        }
        h->t = g;
        h->cap = cap;
    }
    raw_tensor *t = &h->t[h->n++];
    memset(t, 0, sizeof *t);
    t->name = key;
    vc__json_skip_ws(p);
    t->at = p->pos;
    tensor_fields f = {.t = t};
    int st = vc__json_object(p, tensor_member, &f);
    if (st) return st;
    if (!f.have_dtype || !f.have_shape || !f.have_offsets) {
        p->pos = t->at;
        return vc__json_fail(p, "tensor '%s' lacks '%s'", key,
                          !f.have_dtype ? "dtype" : !f.have_shape ? "shape" : "data_offsets");
    }
    return VC_OK;
}

static void header_free(header *h) {
    for (size_t i = 0; i < h->n; i++) {
        free(h->t[i].name);
        free(h->t[i].dtype);
        free(h->t[i].shape);
    }
    free(h->t);
    for (size_t i = 0; i < 2 * h->nmeta; i++) free(h->meta[i]);
    free(h->meta);
}

/* ---------------------------------------------------------------------------------------------- */
/* Checks, grouping and layout                                                                     */
/* ---------------------------------------------------------------------------------------------- */

static unsigned dtype_bits(const char *dtype) {
    static const struct {
        const char *name;
        unsigned bits;
    } table[] = {{"BOOL", 8},    {"U8", 8},       {"I8", 8},       {"F8_E5M2", 8}, {"F8_E4M3", 8},
                 {"F8_E8M0", 8}, {"I16", 16},     {"U16", 16},     {"F16", 16},    {"BF16", 16},
                 {"I32", 32},    {"U32", 32},     {"F32", 32},     {"F64", 64},    {"I64", 64},
                 {"U64", 64},    {"C64", 64},     {"F4", 4},       {"F6_E2M3", 6}, {"F6_E3M2", 6}};
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++)
        if (!strcmp(dtype, table[i].name)) return table[i].bits;
    return 0;
}

/* Compares names with runs of digits compared as numbers: "blocks.2" < "blocks.10". */
static int natural_cmp(const char *a, const char *b) {
    while (*a && *b) {
        if (*a >= '0' && *a <= '9' && *b >= '0' && *b <= '9') {
            const char *x = a, *y = b;
            while (*x == '0' && x[1] >= '0' && x[1] <= '9') x++;
            while (*y == '0' && y[1] >= '0' && y[1] <= '9') y++;
            size_t nx = 0, ny = 0;
            while (x[nx] >= '0' && x[nx] <= '9') nx++;
            while (y[ny] >= '0' && y[ny] <= '9') ny++;
            if (nx != ny) return nx < ny ? -1 : 1;
            int c = memcmp(x, y, nx);
            if (c) return c < 0 ? -1 : 1;
            a = x + nx;
            b = y + ny;
            continue;
        }
        if (*a != *b) return (unsigned char)*a < (unsigned char)*b ? -1 : 1;
        a++;
        b++;
    }
    return *a ? 1 : *b ? -1 : 0;
}

/* Length of the prefix of `name` that names its layer (see vc_safetensors_options.group_depth). */
static size_t group_prefix(const char *name, unsigned depth) {
    size_t len = strlen(name), comps = 1;
    if (depth == VC_SAFETENSORS_EACH_TENSOR) return len;
    for (size_t i = 0; i < len; i++) comps += name[i] == '.';
    if (comps == 1) return len;
    size_t keep = comps - 1; /* at most all but the last component */
    if (depth) {
        if (depth < keep) keep = depth;
    } else {
        /* the last component, short of the final one, that is all digits */
        size_t idx = 0, start = 0, last_num = 0;
        for (size_t i = 0; i <= len; i++) {
            if (name[i] != '.' && name[i] != '\0') continue;
            int digits = i > start;
            for (size_t k = start; k < i && digits; k++) digits = name[k] >= '0' && name[k] <= '9';
            idx++;
            if (digits && idx < comps) last_num = idx;
            start = i + 1;
        }
        if (last_num) keep = last_num;
    }
    size_t seen = 0;
    for (size_t i = 0; i < len; i++)
        if (name[i] == '.' && ++seen == keep) return i;
    return len;
}

typedef struct sort_item {
    raw_tensor *t;
    char *key; /* its layer's name */
} sort_item;

static int by_layer_then_offset(const void *pa, const void *pb) {
    const sort_item *a = pa, *b = pb;
    int c = natural_cmp(a->key, b->key);
    if (!c) c = strcmp(a->key, b->key); /* "b.01" and "b.1" are different layers */
    if (c) return c;
    if (a->t->begin != b->t->begin) return a->t->begin < b->t->begin ? -1 : 1;
    return a->t->end < b->t->end ? -1 : a->t->end > b->t->end;
}

static int by_begin(const void *pa, const void *pb) {
    const raw_tensor *a = *(const raw_tensor *const *)pa, *b = *(const raw_tensor *const *)pb;
    if (a->begin != b->begin) return a->begin < b->begin ? -1 : 1;
    return a->end < b->end ? -1 : a->end > b->end;
}

typedef struct named {
    const char *name;
    size_t index;
} named;

static int by_name(const void *pa, const void *pb) {
    const named *a = pa, *b = pb;
    int c = strcmp(a->name, b->name);
    return c ? c : a->index < b->index ? -1 : a->index > b->index;
}

void vc_safetensors_close(vc_safetensors *st) {
    if (!st) return;
    for (size_t i = 0; i < st->nfiles; i++) {
        if (st->fds[i] >= 0) close(st->fds[i]);
        free(st->paths[i]);
    }
    free(st->fds);
    free(st->paths);
    for (size_t i = 0; i < st->ntensors; i++) {
        free((char *)st->tensors[i].name);
        free((char *)st->tensors[i].dtype);
        free((uint64_t *)st->tensors[i].shape);
    }
    for (size_t i = 0; i < st->nlayers; i++) free((char *)st->layers[i].name);
    for (size_t i = 0; i < 2 * st->nmeta; i++) free(st->meta[i]);
    free(st->meta);
    free(st->tensors);
    free(st->layers);
    free(st->by_name);
    free(st->ctx);
    free(st->path);
    free(st);
}

static int read_full(int fd, void *dst, uint64_t size, uint64_t off) {
    char *d = dst;
    while (size) {
        size_t want = size > READ_CHUNK ? READ_CHUNK : (size_t)size;
        ssize_t got = pread(fd, d, want, (off_t)off);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) return -errno;
        if (got == 0) return READ_ENDED;
        d += got;
        off += (uint64_t)got;
        size -= (uint64_t)got;
    }
    return 0;
}


/* No two tensors of the handle share a name (within a file or across a checkpoint's shards). */
static int check_names(const vc_safetensors *st, const header *h) {
    named *names = malloc((h->n ? h->n : 1) * sizeof *names);
    if (!names) return OUT_OF_MEMORY();
    for (size_t i = 0; i < h->n; i++) names[i] = (named){.name = h->t[i].name, .index = i};
    qsort(names, h->n, sizeof *names, by_name);
    int status = VC_OK;
    for (size_t i = 1; i < h->n && !status; i++)
        if (!strcmp(names[i].name, names[i - 1].name)) {
            const raw_tensor *x = &h->t[names[i - 1].index], *y = &h->t[names[i].index];
            status = vc__fail(NULL, VC_ERR_FORMAT, "vc_safetensors_open: tensor '%s' is named twice: %s header byte %zu and %s header byte %zu",
                              y->name, st->paths[x->file], x->at, st->paths[y->file], y->at);
        }
    free(names);
    return status;
}

/* Checks one file's tensors (h->t[first..h->n)), in header order, so the first bad entry is the one
 * reported; `data_bytes` is what the file holds after its header. */
static int check(const char *path, header *h, size_t first, uint64_t data_bytes) {
    size_t n = h->n - first;
    const raw_tensor **order = malloc((n ? n : 1) * sizeof *order);
    if (!order) return OUT_OF_MEMORY();
    int status = VC_OK;
    for (size_t i = first; i < h->n && !status; i++) {
        const raw_tensor *t = &h->t[i];
        unsigned bits = dtype_bits(t->dtype);
        uint64_t elements = 1, nbits = 0;
        int too_big = 0;
        for (unsigned k = 0; k < t->rank; k++) too_big |= __builtin_mul_overflow(elements, t->shape[k], &elements);
        if (bits) too_big |= __builtin_mul_overflow(elements, (uint64_t)bits, &nbits);
        if (!bits)
            status = vc__fail(NULL, VC_ERR_FORMAT, "vc_safetensors_open: %s: tensor '%s' (header byte %zu): unknown dtype '%s'", path,
                              t->name, t->at, t->dtype);
        else if (too_big)
            status = vc__fail(NULL, VC_ERR_FORMAT, "vc_safetensors_open: %s: tensor '%s': its size does not fit 64 bits", path,
                              t->name);
        else if (nbits % 8)
            status = vc__fail(NULL, VC_ERR_FORMAT,
                              "vc_safetensors_open: %s: tensor '%s': %llu elements of %s (%u bits) are not a whole number of bytes",
                              path, t->name, (unsigned long long)elements, t->dtype, bits);
        else if (t->end < t->begin)
            status = vc__fail(NULL, VC_ERR_FORMAT, "vc_safetensors_open: %s: tensor '%s': data_offsets [%llu, %llu] end before they begin",
                              path, t->name, (unsigned long long)t->begin, (unsigned long long)t->end);
        else if (t->end - t->begin != nbits / 8)
            status = vc__fail(NULL, VC_ERR_FORMAT,
                              "vc_safetensors_open: %s: tensor '%s': data_offsets [%llu, %llu] hold %llu bytes, but %llu elements of %s "
                              "take %llu",
                              path, t->name, (unsigned long long)t->begin, (unsigned long long)t->end,
                              (unsigned long long)(t->end - t->begin), (unsigned long long)elements, t->dtype,
                              (unsigned long long)(nbits / 8));
    }
    /* the data: tensors back to back from its first byte to its last, with neither overlaps nor
     * gaps (as the reference requires: a gap could hide another file format's content) */
    for (size_t i = 0; i < n; i++) order[i] = &h->t[first + i];
    qsort(order, n, sizeof *order, by_begin);
    uint64_t at = 0;
    for (size_t i = 0; i < n && !status; i++) {
        const raw_tensor *t = order[i];
        if (t->begin != at)
            status = vc__fail(NULL, VC_ERR_FORMAT,
                              "vc_safetensors_open: %s: tensor '%s' starts at data byte %llu, but %s at %llu: tensors must follow "
                              "each other with neither overlaps nor gaps",
                              path, t->name, (unsigned long long)t->begin, i ? "the tensor before it ends" : "the data starts",
                              (unsigned long long)at);
        at = t->end;
    }
    free(order);
    if (!status && at != data_bytes)
        status = vc__fail(NULL, VC_ERR_FORMAT, "vc_safetensors_open: %s: the tensors cover %llu bytes of data, but the file holds %llu after its header%s",
                          path, (unsigned long long)at, (unsigned long long)data_bytes, at > data_bytes ? " (cut short?)" : "");
    return status;
}

/* Fills st from the checked tensors: grouped into layers, ordered, and laid out. Moves the
 * tensors' strings and shapes from h to st. */
static int build(vc_safetensors *st, header *h, unsigned depth) {
    size_t n = h->n, cap = n ? n : 1;
    sort_item *items = calloc(cap, sizeof *items);
    st->tensors = calloc(cap, sizeof *st->tensors);
    st->layers = calloc(cap, sizeof *st->layers);
    st->by_name = malloc(cap * sizeof *st->by_name);
    st->ctx = calloc(cap, sizeof *st->ctx);
    named *names = malloc(cap * sizeof *names);
    int status = items && st->tensors && st->layers && st->by_name && st->ctx && names ? VC_OK : OUT_OF_MEMORY();
    for (size_t i = 0; i < n && !status; i++) {
        items[i].t = &h->t[i];
        items[i].key = strndup(h->t[i].name, group_prefix(h->t[i].name, depth));
        if (!items[i].key) status = OUT_OF_MEMORY();
    }
    if (!status) qsort(items, n, sizeof *items, by_layer_then_offset);
    for (size_t i = 0; i < n && !status; i++) {
        raw_tensor *t = items[i].t;
        if (i == 0 || strcmp(items[i].key, st->layers[st->nlayers - 1].name)) {
            vc_safetensors_layer *l = &st->layers[st->nlayers];
            l->name = items[i].key; /* moves to the layer */
            items[i].key = NULL;
            l->first_tensor = i;
            st->ctx[st->nlayers] = (layer_ctx){.st = st, .index = st->nlayers};
            st->nlayers++;
        }
        vc_safetensors_layer *l = &st->layers[st->nlayers - 1];
        vc_safetensors_tensor *o = &st->tensors[i];
        o->name = t->name;
        o->dtype = t->dtype;
        o->shape = t->shape;
        t->name = t->dtype = NULL;
        t->shape = NULL;
        st->ntensors = i + 1;
        o->rank = t->rank;
        o->bits = dtype_bits(o->dtype);
        o->elements = 1;
        for (unsigned k = 0; k < o->rank; k++) o->elements *= o->shape[k];
        o->bytes = t->end - t->begin;
        o->file_offset = t->data_start + t->begin;
        o->file = t->file;
        o->layer = st->nlayers - 1;
        uint64_t a = st->alignment, off = (l->bytes + a - 1) / a * a;
        if (l->bytes > UINT64_MAX / 2 || off > SIZE_MAX - o->bytes) {
            status = vc__fail(NULL, VC_ERR_TOO_LARGE, "vc_safetensors_open: %s: layer '%s' is too large for this machine", st->path,
                              l->name);
            break;
        }
        /* an empty tensor takes no room: it sits where the next one would start, within the buffer */
        o->layer_offset = o->bytes ? off : l->bytes;
        if (o->bytes) l->bytes = off + o->bytes;
        if (o->rank >= 2) l->weight_elements += o->elements;
        l->tensor_count++;
    }
    for (size_t i = 0; items && i < n; i++) free(items[i].key);
    free(items);
    if (!status) {
        for (size_t i = 0; i < st->ntensors; i++) names[i] = (named){.name = st->tensors[i].name, .index = i};
        qsort(names, st->ntensors, sizeof *names, by_name);
        for (size_t i = 0; i < st->ntensors; i++) st->by_name[i] = names[i].index;
    }
    free(names);
    return status;
}

/* Opens file `file` of st (its path in st->paths), reads its header into h (appending its tensors)
 * and checks them. */
static int read_header(vc_safetensors *st, size_t file, header *h) {
    const char *path = st->paths[file];
    int fd = st->fds[file] = open(path, O_RDONLY | O_CLOEXEC);
    struct stat sb;
    if (fd < 0 || fstat(fd, &sb) != 0) return vc__fail(NULL, VC_ERR_IO, "vc_safetensors_open: %s: %s", path, strerror(errno));
    if (!S_ISREG(sb.st_mode)) return vc__fail(NULL, VC_ERR_IO, "vc_safetensors_open: %s: not a regular file", path);
    uint64_t file_bytes = (uint64_t)sb.st_size;
    unsigned char len8[8];
    if (file_bytes < 8 || read_full(fd, len8, 8, 0) != 0)
        return vc__fail(NULL, VC_ERR_FORMAT, "vc_safetensors_open: %s: %llu bytes, shorter than a safetensors header's length",
                        path, (unsigned long long)file_bytes);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | len8[i];
    if (hlen > MAX_HEADER_BYTES || hlen > file_bytes - 8)
        return vc__fail(NULL, VC_ERR_FORMAT,
                        "vc_safetensors_open: %s: header length %llu is %s (a safetensors file starts with its header's length, "
                        "little-endian, at most 100 MB)",
                        path, (unsigned long long)hlen, hlen > MAX_HEADER_BYTES ? "over 100 MB" : "past the end of the file");
    char *text = malloc((size_t)hlen + 1); /* NUL-terminated, as the JSON reader wants */
    if (!text) return OUT_OF_MEMORY();
    text[hlen] = '\0';
    int r = read_full(fd, text, hlen, 8);
    if (r) {
        free(text);
        return vc__fail(NULL, VC_ERR_IO, "vc_safetensors_open: %s: reading its header: %s", path,
                        r == READ_ENDED ? "the file ended early" : strerror(-r));
    }
    vc_json_reader p = {.s = text, .n = (size_t)hlen, .fn = "vc_safetensors_open", .path = path, .unit = "header byte"};
    size_t first = h->n;
    int status;
    h->have_meta = 0;
    if (!hlen || text[0] != '{') {
        status = vc__json_fail(&p, "a safetensors header starts with '{'");
    } else if ((status = vc__json_object(&p, top_member, h)) == VC_OK) {
        vc__json_skip_ws(&p);
        if (p.pos != p.n) status = vc__json_fail(&p, "text after the header's object");
    }
    free(text);
    for (size_t i = first; i < h->n; i++) {
        h->t[i].file = file;
        h->t[i].data_start = 8 + hlen;
    }
    return status ? status : check(path, h, first, file_bytes - 8 - hlen);
}

int vc_safetensors_open_files(const char *const *paths, size_t n, const vc_safetensors_options *opts, vc_safetensors **out) {
    if (out) *out = NULL;
    if (!paths || !n || !out)
        return vc__fail(NULL, VC_ERR_INVALID_ARG, "vc_safetensors_open: %s", !out ? "out is NULL" : "no files given");
    for (size_t i = 0; i < n; i++)
        if (!paths[i]) return vc__fail(NULL, VC_ERR_INVALID_ARG, "vc_safetensors_open: path %zu is NULL", i);
    vc_safetensors_options o;
    vc_safetensors_options_init(&o);
    if (opts) {
        if (opts->struct_size != sizeof o)
            return vc__fail(NULL, VC_ERR_INVALID_ARG,
                            "vc_safetensors_open: opts->struct_size is %zu, expected %zu (initialise with vc_safetensors_options_init)",
                            opts->struct_size, sizeof o);
        o = *opts;
    }
    if (!o.tensor_alignment) o.tensor_alignment = 256;
    if (o.tensor_alignment & (o.tensor_alignment - 1) || o.tensor_alignment > ((size_t)2 << 20))
        return vc__fail(NULL, VC_ERR_INVALID_ARG, "vc_safetensors_open: tensor_alignment %zu is not a power of two up to 2 MB",
                        o.tensor_alignment);
    vc_safetensors *st = calloc(1, sizeof *st);
    if (!st) return OUT_OF_MEMORY();
    st->alignment = o.tensor_alignment;
    st->fds = malloc(n * sizeof *st->fds);
    st->paths = calloc(n, sizeof *st->paths);
    int status = st->fds && st->paths && (st->path = strdup(paths[0])) ? VC_OK : OUT_OF_MEMORY();
    for (size_t i = 0; i < n && !status; i++) {
        st->fds[i] = -1;
        st->nfiles = i + 1;
        if (!(st->paths[i] = strdup(paths[i]))) status = OUT_OF_MEMORY();
    }
    header h = {0};
    for (size_t i = 0; i < n && !status; i++) status = read_header(st, i, &h);
    if (!status) status = check_names(st, &h);
    if (!status) status = build(st, &h, o.group_depth);
    if (!status) {
        st->meta = h.meta;
        st->nmeta = h.nmeta;
        h.meta = NULL;
        h.nmeta = 0;
    }
    header_free(&h);
    if (status) {
        vc_safetensors_close(st);
        return status;
    }
    *out = st;
    return VC_OK;
}

/* A sharded checkpoint's index ("model.safetensors.index.json"): {"metadata": {...}, "weight_map":
 * {"tensor name": "shard file name", ...}}. */
typedef struct index_map {
    char **names, **shards; /* n pairs */
    size_t n, cap;
} index_map;

static int weight_map_member(vc_json_reader *p, char *key, void *user) {
    index_map *m = user;
    if (m->n == m->cap) {
        size_t cap = m->cap ? m->cap * 2 : 256;
        char **a = realloc(m->names, cap * sizeof *a);
        if (a) m->names = a;
        char **b = a ? realloc(m->shards, cap * sizeof *b) : NULL;
        if (b) m->shards = b;
        if (!a || !b) {
            free(key);
            return OUT_OF_MEMORY();
        }
        m->cap = cap;
    }
    char *shard = NULL;
    vc__json_skip_ws(p);
    int st = p->pos < p->n && p->s[p->pos] == '"' ? vc__json_string(p, &shard) : vc__json_fail(p, "weight_map values must be file names");
    if (st) {
        free(key);
        return st;
    }
    m->names[m->n] = key;
    m->shards[m->n++] = shard;
    return VC_OK;
}

static int index_member(vc_json_reader *p, char *key, void *user) {
    int is_map = !strcmp(key, "weight_map");
    free(key);
    if (!is_map) return vc__json_skip_value(p, 1);
    index_map *m = user;
    if (m->cap) return vc__json_fail(p, "weight_map given twice");
    return vc__json_object(p, weight_map_member, m);
}

static int cmp_str(const void *a, const void *b) { return natural_cmp(*(char *const *)a, *(char *const *)b); }

static int open_index(const char *path, const vc_safetensors_options *opts, vc_safetensors **out) {
    char *text = NULL, why[128];
    size_t len = 0;
    int status = vc__read_file(path, MAX_HEADER_BYTES, &text, &len, why, sizeof why);
    if (status) return vc__fail(NULL, status, "vc_safetensors_open: %s: %s", path, why);
    vc_json_reader p = {.s = text, .n = len, .fn = "vc_safetensors_open", .path = path, .unit = "byte"};
    index_map m = {0};
    status = vc__json_object(&p, index_member, &m);
    if (!status) {
        vc__json_skip_ws(&p);
        if (p.pos != p.n) status = vc__json_fail(&p, "text after the index's object");
        else if (!m.n) status = vc__json_fail(&p, "no weight_map (a sharded checkpoint's index maps each tensor to its file)");
    }
    free(text);
    /* the shards, each once, in name order ("-00001-of-00003" first), beside the index */
    char **files = NULL;
    size_t nfiles = 0;
    if (!status) {
        char **sorted = malloc(m.n * sizeof *sorted);
        files = calloc(m.n, sizeof *files);
        if (!sorted || !files) status = OUT_OF_MEMORY();
        if (!status) {
            memcpy(sorted, m.shards, m.n * sizeof *sorted);
            qsort(sorted, m.n, sizeof *sorted, cmp_str);
            const char *slash = strrchr(path, '/');
            size_t dirlen = slash ? (size_t)(slash - path) + 1 : 0;
            for (size_t i = 0; i < m.n && !status; i++) {
                if (nfiles && !strcmp(sorted[i], sorted[i - 1])) continue;
                if (!*sorted[i] || sorted[i][0] == '/') {
                    status = vc__fail(NULL, VC_ERR_FORMAT, "vc_safetensors_open: %s: weight_map names '%s', not a file beside the index",
                                      path, sorted[i]);
                    break;
                }
                files[nfiles] = malloc(dirlen + strlen(sorted[i]) + 1);
                if (!files[nfiles]) {
                    status = OUT_OF_MEMORY();
                    break;
                }
                memcpy(files[nfiles], path, dirlen);
                strcpy(files[nfiles] + dirlen, sorted[i]);
                nfiles++;
            }
        }
        free(sorted);
    }
    vc_safetensors *st = NULL;
    if (!status) status = vc_safetensors_open_files((const char *const *)files, nfiles, opts, &st);
    /* every tensor the index names is in the shard it names */
    for (size_t i = 0; i < m.n && !status; i++) {
        size_t t;
        const char *in = NULL;
        if (vc_safetensors_find(st, m.names[i], &t) == VC_OK) {
            in = st->paths[st->tensors[t].file];
            const char *base = strrchr(in, '/');
            in = base ? base + 1 : in;
        }
        if (!in || strcmp(in, m.shards[i]))
            status = vc__fail(NULL, VC_ERR_FORMAT, "vc_safetensors_open: %s: weight_map puts tensor '%s' in %s, but %s%s", path,
                              m.names[i], m.shards[i], in ? "it is in " : "no shard holds it", in ? in : "");
    }
    if (!status && st) {
        free(st->path);
        if (!(st->path = strdup(path))) status = OUT_OF_MEMORY();
    }
    for (size_t i = 0; i < nfiles; i++) free(files[i]);
    free(files);
    for (size_t i = 0; i < m.n; i++) {
        free(m.names[i]);
        free(m.shards[i]);
    }
    free(m.names);
    free(m.shards);
    if (status) {
        vc_safetensors_close(st);
        return status;
    }
    *out = st;
    return VC_OK;
}

int vc_safetensors_open(const char *path, const vc_safetensors_options *opts, vc_safetensors **out) {
    if (out) *out = NULL;
    if (!path || !out) return vc__fail(NULL, VC_ERR_INVALID_ARG, "vc_safetensors_open: %s is NULL", !path ? "path" : "out");
    size_t n = strlen(path), k = strlen(".index.json");
    if (n >= k && !strcmp(path + n - k, ".index.json")) return open_index(path, opts, out);
    return vc_safetensors_open_files(&path, 1, opts, out);
}

size_t vc_safetensors_file_count(const vc_safetensors *st) { return st ? st->nfiles : 0; }

const char *vc_safetensors_file_path(const vc_safetensors *st, size_t i) {
    return st && i < st->nfiles ? st->paths[i] : NULL;
}

/* ---------------------------------------------------------------------------------------------- */
/* Queries, reading and registration                                                               */
/* ---------------------------------------------------------------------------------------------- */

size_t vc_safetensors_tensor_count(const vc_safetensors *st) { return st ? st->ntensors : 0; }

const vc_safetensors_tensor *vc_safetensors_get_tensor(const vc_safetensors *st, size_t i) {
    return st && i < st->ntensors ? &st->tensors[i] : NULL;
}

size_t vc_safetensors_layer_count(const vc_safetensors *st) { return st ? st->nlayers : 0; }

const vc_safetensors_layer *vc_safetensors_get_layer(const vc_safetensors *st, size_t i) {
    return st && i < st->nlayers ? &st->layers[i] : NULL;
}

int vc_safetensors_find(const vc_safetensors *st, const char *name, size_t *index) {
    if (!st || !name || !index) return vc__fail(NULL, VC_ERR_INVALID_ARG, "vc_safetensors_find: NULL argument");
    size_t lo = 0, hi = st->ntensors;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(st->tensors[st->by_name[mid]].name, name);
        if (!c) {
            *index = st->by_name[mid];
            return VC_OK;
        }
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    return vc__fail(NULL, VC_ERR_NOT_FOUND, "vc_safetensors_find: %s has no tensor '%s'", st->path, name);
}

const char *vc_safetensors_metadata(const vc_safetensors *st, const char *key) {
    if (!st || !key) return NULL;
    for (size_t i = 0; i < st->nmeta; i++)
        if (!strcmp(st->meta[2 * i], key)) return st->meta[2 * i + 1];
    return NULL;
}

int vc_safetensors_read_layer(const vc_safetensors *st, size_t layer, void *dst, size_t size) {
    if (!st || !dst) return vc__fail(NULL, VC_ERR_INVALID_ARG, "vc_safetensors_read_layer: %s is NULL", !st ? "st" : "dst");
    if (layer >= st->nlayers)
        return vc__fail(NULL, VC_ERR_INVALID_ARG, "vc_safetensors_read_layer: layer %zu of %zu", layer, st->nlayers);
    const vc_safetensors_layer *l = &st->layers[layer];
    if (size != l->bytes)
        return vc__fail(NULL, VC_ERR_INVALID_ARG, "vc_safetensors_read_layer: layer '%s' is %llu bytes, not %zu", l->name,
                        (unsigned long long)l->bytes, size);
    char *d = dst;
    uint64_t filled = 0;
    size_t i = l->first_tensor, end = l->first_tensor + l->tensor_count;
    while (i < end) {
        const vc_safetensors_tensor *t = &st->tensors[i];
        if (!t->bytes) {
            i++;
            continue;
        }
        /* one read for a run of tensors that lie back to back both in the file and in the buffer */
        uint64_t run = t->bytes;
        size_t j = i + 1;
        while (j < end && st->tensors[j].file == t->file && st->tensors[j].file_offset == t->file_offset + run &&
               st->tensors[j].layer_offset == t->layer_offset + run) {
            run += st->tensors[j].bytes;
            j++;
        }
        memset(d + filled, 0, (size_t)(t->layer_offset - filled));
        int r = read_full(st->fds[t->file], d + t->layer_offset, run, t->file_offset);
        if (r)
            return vc__fail(NULL, VC_ERR_IO, "vc_safetensors_read_layer: %s: tensor '%s': %s", st->paths[t->file], t->name,
                            r == READ_ENDED ? "the file is shorter than when it was opened" : strerror(-r));
        filled = t->layer_offset + run;
        i = j;
    }
    if (filled < size) memset(d + filled, 0, (size_t)(size - filled));
    return VC_OK;
}

static int layer_loader(void *user, vc_layer_id id, void *dst, size_t bytes) {
    (void)id;
    const layer_ctx *x = user;
    int status = vc_safetensors_read_layer(x->st, x->index, dst, bytes);
    if (status != VC_OK) vc_loader_set_error("%s", vc_last_error());
    return status;
}

int vc_safetensors_register(vc_safetensors *st, vc_cache *cache, vc_model_id model, const char *prefix,
                            vc_layer_id *ids) {
    if (!st || !cache) return vc__fail(NULL, VC_ERR_INVALID_ARG, "vc_safetensors_register: %s is NULL", !st ? "st" : "cache");
    if (prefix && !*prefix) prefix = NULL;
    size_t matching = 0;
    for (size_t i = 0; i < st->nlayers; i++) matching += !prefix || !strncmp(st->layers[i].name, prefix, strlen(prefix));
    if (prefix && !matching) /* a typo would otherwise register nothing, silently */
        return vc__fail(NULL, VC_ERR_NOT_FOUND, "vc_safetensors_register: no layer of %s starts with '%s' (the first is '%s')",
                        st->path, prefix, st->nlayers ? st->layers[0].name : "none: the file holds no tensors");
    vc_layer_id *got = calloc(st->nlayers ? st->nlayers : 1, sizeof *got);
    if (!got) return vc__fail(NULL, VC_ERR_NO_MEMORY, "vc_safetensors_register: out of host memory");
    for (size_t i = 0; i < st->nlayers; i++) {
        const vc_safetensors_layer *l = &st->layers[i];
        if (!l->bytes || (prefix && strncmp(l->name, prefix, strlen(prefix)))) continue;
        vc_layer_desc d = {.name = l->name,
                           .bytes = (size_t)l->bytes,
                           .alignment = st->alignment,
                           .loader = layer_loader,
                           .loader_user = &st->ctx[i]};
        int status = vc_layer_register(cache, model, &d, &got[i]);
        if (status != VC_OK) {
            char why[4096]; /* (the thread's last error, whole) */
            snprintf(why, sizeof why, "%s", vc_last_error());
            for (size_t k = i; k-- > 0;)
                if (got[k]) vc_layer_unregister(cache, got[k]);
            free(got);
            return vc__fail(NULL, status, "vc_safetensors_register: %s: layer '%s' (%zu of %zu; none is left registered): %s",
                            st->path, l->name, i + 1, st->nlayers, why);
        }
    }
    if (ids) memcpy(ids, got, st->nlayers * sizeof *ids);
    free(got);
    return VC_OK;
}
