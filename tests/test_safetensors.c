/* Safetensors files as layers: grouping, layout, registration, the loader, and every check a
 * malformed file must fail (each with its message, nothing leaked). */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "test_util.h"
#include "vramcache_safetensors.h"

static char dir[256];

static int setup(void **state) {
    (void)state;
    const char *t = getenv("TMPDIR");
    snprintf(dir, sizeof dir, "%s/vc_st_XXXXXX", t && *t ? t : "/tmp");
    assert_non_null(mkdtemp(dir));
    return 0;
}

static int teardown(void **state) {
    (void)state;
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : -1;
}

/* Writes a file: the header's length (little-endian), the header, then `data`. */
static const char *write_raw(const char *name, const void *len8, const char *header, size_t header_len, const void *data,
                             size_t data_len) {
    static char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    unsigned char n[8];
    uint64_t h = header_len;
    for (int i = 0; i < 8; i++) n[i] = (unsigned char)(h >> (8 * i));
    assert_int_equal(fwrite(len8 ? len8 : n, 1, 8, f), 8);
    if (header_len) assert_int_equal(fwrite(header, 1, header_len, f), header_len);
    if (data_len) assert_int_equal(fwrite(data, 1, data_len, f), data_len);
    assert_int_equal(fclose(f), 0);
    return path;
}

static const char *write_header(const char *name, const char *header, size_t data_len) {
    char *data = calloc(1, data_len + 1);
    const char *p = write_raw(name, NULL, header, strlen(header), data, data_len);
    free(data);
    return p;
}

/* A tensor for write_model: its bytes are the pattern of seed `seed` */
typedef struct spec {
    const char *name, *dtype;
    unsigned rank;
    uint64_t shape[4];
    unsigned bits;
} spec;

static uint64_t spec_bytes(const spec *s) {
    uint64_t e = 1;
    for (unsigned k = 0; k < s->rank; k++) e *= s->shape[k];
    return e * s->bits / 8;
}

/* Writes the tensors in the order given (as a writer lays them out), header padded with spaces to
 * a multiple of 8 as the reference writer does; tensor i holds the pattern of seed first_seed + i + 1. */
static const char *write_shard(const char *name, const spec *s, size_t n, const char *metadata, size_t first_seed) {
    char *header = malloc(64 * 1024);
    size_t len = 0, data_len = 0;
    len += (size_t)sprintf(header + len, "{");
    if (metadata) len += (size_t)sprintf(header + len, "\"__metadata__\":%s,", metadata);
    for (size_t i = 0; i < n; i++) {
        uint64_t b = spec_bytes(&s[i]);
        len += (size_t)sprintf(header + len, "%s\"%s\":{\"dtype\":\"%s\",\"shape\":[", i ? "," : "", s[i].name, s[i].dtype);
        for (unsigned k = 0; k < s[i].rank; k++)
            len += (size_t)sprintf(header + len, "%s%llu", k ? "," : "", (unsigned long long)s[i].shape[k]);
        len += (size_t)sprintf(header + len, "],\"data_offsets\":[%zu,%llu]}", data_len, (unsigned long long)(data_len + b));
        data_len += (size_t)b;
    }
    len += (size_t)sprintf(header + len, "}");
    while (len % 8) header[len++] = ' ';
    char *data = malloc(data_len + 1);
    size_t at = 0;
    for (size_t i = 0; i < n; i++) {
        fill_pattern(data + at, (size_t)spec_bytes(&s[i]), first_seed + i + 1);
        at += (size_t)spec_bytes(&s[i]);
    }
    const char *p = write_raw(name, NULL, header, len, data, data_len);
    free(header);
    free(data);
    return p;
}

static const char *write_model(const char *name, const spec *s, size_t n, const char *metadata) {
    return write_shard(name, s, n, metadata, 0);
}

/* A small model in the three naming styles engines meet: a diffusers UNet, a FLUX transformer and
 * a language model, with mixed dtypes (bf16 weights, f32 norms) and the tensors of one layer not
 * next to each other in the file. */
static const spec MODEL[] = {
    {"down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.weight", "BF16", 2, {40, 40}, 16},
    {"double_blocks.10.img_attn.qkv.weight", "BF16", 2, {24, 72}, 16},
    {"double_blocks.2.img_attn.qkv.weight", "BF16", 2, {24, 72}, 16},
    {"double_blocks.2.img_attn.norm.scale", "F32", 1, {24}, 32},
    {"model.layers.0.self_attn.q_proj.weight", "BF16", 2, {16, 16}, 16},
    {"down_blocks.1.attentions.0.proj_in.weight", "F16", 4, {40, 40, 1, 1}, 16},
    {"model.embed_tokens.weight", "BF16", 2, {100, 16}, 16},
    {"double_blocks.2.img_mlp.0.weight", "BF16", 2, {24, 96}, 16},
    {"down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_k.weight", "BF16", 2, {40, 40}, 16},
    {"model.layers.0.input_layernorm.weight", "F32", 1, {16}, 32},
    {"img_in.weight", "BF16", 2, {8, 24}, 16},
    {"img_in.bias", "BF16", 1, {24}, 16},
    {"logit_scale", "F32", 0, {0}, 32},
    {"down_blocks.1.attentions.0.transformer_blocks.0.norm1.bias", "F32", 1, {0}, 32}, /* empty */
};
enum { NMODEL = sizeof MODEL / sizeof MODEL[0] };

static size_t spec_index(const char *name) {
    for (size_t i = 0; i < NMODEL; i++)
        if (!strcmp(MODEL[i].name, name)) return i;
    fail_msg("no spec %s", name);
    return 0;
}

static void test_groups_layers_by_name(void **state) {
    (void)state;
    const char *path = write_model("model.safetensors", MODEL, NMODEL, "{\"format\":\"pt\",\"note\":\"caf\\u00e9\"}");
    vc_safetensors *st = NULL;
    assert_int_equal(vc_safetensors_open(path, NULL, &st), VC_OK);
    assert_int_equal(vc_safetensors_tensor_count(st), NMODEL);
    /* layers by name, numbers as numbers (2 before 10), each named to its last numbered component */
    static const char *const expect[] = {
        "double_blocks.2", "double_blocks.2.img_mlp.0", "double_blocks.10",
        "down_blocks.1.attentions.0", "down_blocks.1.attentions.0.transformer_blocks.0",
        "img_in", "logit_scale", "model.embed_tokens", "model.layers.0"};
    assert_int_equal(vc_safetensors_layer_count(st), sizeof expect / sizeof expect[0]);
    for (size_t i = 0; i < sizeof expect / sizeof expect[0]; i++)
        assert_string_equal(vc_safetensors_get_layer(st, i)->name, expect[i]);
    assert_null(vc_safetensors_get_layer(st, 99));
    assert_null(vc_safetensors_get_tensor(st, NMODEL));
    assert_string_equal(vc_safetensors_metadata(st, "format"), "pt");
    assert_string_equal(vc_safetensors_metadata(st, "note"), "caf\xc3\xa9");
    assert_null(vc_safetensors_metadata(st, "absent"));

    /* each layer's tensors: consecutive, in file order, at 256-aligned offsets inside its bytes */
    for (size_t li = 0; li < vc_safetensors_layer_count(st); li++) {
        const vc_safetensors_layer *l = vc_safetensors_get_layer(st, li);
        uint64_t weights = 0;
        for (size_t k = 0; k < l->tensor_count; k++) {
            const vc_safetensors_tensor *t = vc_safetensors_get_tensor(st, l->first_tensor + k);
            assert_int_equal(t->layer, li);
            assert_int_equal(strncmp(t->name, l->name, strlen(l->name)), 0);
            if (t->bytes) assert_int_equal(t->layer_offset % 256, 0);
            assert_true(t->layer_offset + t->bytes <= l->bytes);
            if (k) assert_true(t->file_offset >= vc_safetensors_get_tensor(st, l->first_tensor + k - 1)->file_offset);
            if (t->rank >= 2) weights += t->elements;
            const spec *s = &MODEL[spec_index(t->name)];
            assert_string_equal(t->dtype, s->dtype);
            assert_int_equal(t->bits, s->bits);
            assert_int_equal(t->rank, s->rank);
            assert_int_equal(t->bytes, spec_bytes(s));
        }
        assert_int_equal(l->weight_elements, weights);
    }
    size_t i;
    assert_int_equal(vc_safetensors_find(st, "double_blocks.2.img_attn.norm.scale", &i), VC_OK);
    const vc_safetensors_tensor *t = vc_safetensors_get_tensor(st, i);
    assert_string_equal(t->name, "double_blocks.2.img_attn.norm.scale");
    assert_string_equal(vc_safetensors_get_layer(st, t->layer)->name, "double_blocks.2");
    assert_int_equal(t->rank, 1);
    assert_int_equal(t->shape[0], 24);
    assert_int_equal(vc_safetensors_find(st, "double_blocks.2", &i), VC_ERR_NOT_FOUND);
    assert_non_null(strstr(vc_last_error(), "no tensor 'double_blocks.2'"));
    assert_int_equal(vc_safetensors_find(st, NULL, &i), VC_ERR_INVALID_ARG);
    /* a scalar is one element */
    assert_int_equal(vc_safetensors_find(st, "logit_scale", &i), VC_OK);
    assert_int_equal(vc_safetensors_get_tensor(st, i)->elements, 1);
    assert_int_equal(vc_safetensors_get_tensor(st, i)->bytes, 4);
    vc_safetensors_close(st);
}

static void test_group_depth(void **state) {
    (void)state;
    const char *path = write_model("depth.safetensors", MODEL, NMODEL, NULL);
    vc_safetensors_options o;
    vc_safetensors_options_init(&o);
    o.group_depth = 1;
    o.tensor_alignment = 64;
    vc_safetensors *st = NULL;
    assert_int_equal(vc_safetensors_open(path, &o, &st), VC_OK);
    static const char *const expect[] = {"double_blocks", "down_blocks", "img_in", "logit_scale", "model"};
    assert_int_equal(vc_safetensors_layer_count(st), 5);
    for (size_t i = 0; i < 5; i++) assert_string_equal(vc_safetensors_get_layer(st, i)->name, expect[i]);
    for (size_t i = 0; i < vc_safetensors_tensor_count(st); i++)
        assert_int_equal(vc_safetensors_get_tensor(st, i)->layer_offset % 64, 0);
    vc_safetensors_close(st);
    o.group_depth = VC_SAFETENSORS_EACH_TENSOR; /* a layer per tensor, named as the tensor */
    assert_int_equal(vc_safetensors_open(path, &o, &st), VC_OK);
    assert_int_equal(vc_safetensors_layer_count(st), NMODEL);
    for (size_t i = 0; i < NMODEL; i++) {
        const vc_safetensors_tensor *t = vc_safetensors_get_tensor(st, i);
        assert_int_equal(t->layer, i);
        assert_int_equal(t->layer_offset, 0);
        assert_string_equal(vc_safetensors_get_layer(st, i)->name, t->name);
        assert_int_equal(vc_safetensors_get_layer(st, i)->bytes, t->bytes);
    }
    vc_safetensors_close(st);
    o.group_depth = 3; /* never more than all but the last component */
    assert_int_equal(vc_safetensors_open(path, &o, &st), VC_OK);
    size_t i;
    assert_int_equal(vc_safetensors_find(st, "img_in.bias", &i), VC_OK);
    assert_string_equal(vc_safetensors_get_layer(st, vc_safetensors_get_tensor(st, i)->layer)->name, "img_in");
    assert_int_equal(vc_safetensors_find(st, "model.layers.0.self_attn.q_proj.weight", &i), VC_OK);
    assert_string_equal(vc_safetensors_get_layer(st, vc_safetensors_get_tensor(st, i)->layer)->name, "model.layers.0");
    vc_safetensors_close(st);
}

static void check_layers_on_device(const vc_safetensors *st, test_cache *tc, const vc_layer_id *ids);

/* Registered with a cache, every layer reaches the device with each tensor's bytes at its offset
 * and zeros between them; a layer of only empty tensors is not registered. */
static void test_registered_layers_carry_the_file(void **state) {
    (void)state;
    const char *path = write_model("reg.safetensors", MODEL, NMODEL, NULL);
    vc_safetensors *st = NULL;
    assert_int_equal(vc_safetensors_open(path, NULL, &st), VC_OK);
    test_cache t = make_cache(64 * KB, 1 * MB, 1);
    vc_model_id m = add_model(t.cache, "model");
    vc_layer_id ids[16];
    assert_int_equal(vc_safetensors_register(st, t.cache, m, NULL, ids), VC_OK);
    check_layers_on_device(st, &t, ids);
    /* all or nothing: into a model that does not exist, nothing is registered */
    vc_stats before = get_stats(t.cache);
    assert_int_equal(vc_safetensors_register(st, t.cache, m + 12345, NULL, NULL), VC_ERR_NOT_FOUND);
    assert_non_null(strstr(vc_last_error(), "none is left registered"));
    assert_int_equal(get_stats(t.cache).layers, before.layers);
    assert_int_equal(vc_safetensors_register(NULL, t.cache, m, NULL, NULL), VC_ERR_INVALID_ARG);
    free_cache(&t);
    vc_safetensors_close(st);
}

/* Every layer of st (registered as ids) on t's device: each tensor's bytes (the pattern of its
 * index in MODEL) at its offset, zeros between them, layers of no bytes unregistered. */
static void check_layers_on_device(const vc_safetensors *st, test_cache *tc, const vc_layer_id *ids) {
    test_cache t = *tc;
    size_t n = vc_safetensors_layer_count(st);
    for (size_t li = 0; li < n; li++) {
        const vc_safetensors_layer *l = vc_safetensors_get_layer(st, li);
        if (!l->bytes) {
            assert_int_equal(ids[li], 0);
            continue;
        }
        void *p;
        assert_int_equal(vc_layer_acquire(t.cache, ids[li], NULL, &p), VC_OK);
        assert_int_equal((uintptr_t)p % 256, 0);
        unsigned char *host = malloc((size_t)l->bytes);
        test_device_read(t.backend, host, p, (size_t)l->bytes);
        uint64_t at = 0;
        for (size_t k = 0; k < l->tensor_count; k++) {
            const vc_safetensors_tensor *tn = vc_safetensors_get_tensor(st, l->first_tensor + k);
            if (!tn->bytes) continue;
            for (uint64_t b = at; b < tn->layer_offset; b++) assert_int_equal(host[b], 0);
            assert_true(check_pattern(host + tn->layer_offset, (size_t)tn->bytes, spec_index(tn->name) + 1));
            at = tn->layer_offset + tn->bytes;
        }
        free(host);
        assert_int_equal(vc_layer_release(t.cache, ids[li], NULL), VC_OK);
    }
}

/* The file cut short after it was opened: the read fails with a message, the acquire with
 * VC_ERR_LOADER, and nothing is left half-loaded. */
static void test_file_cut_short_after_open(void **state) {
    (void)state;
    const char *path = write_model("cut.safetensors", MODEL, NMODEL, NULL);
    char keep[512];
    snprintf(keep, sizeof keep, "%s", path);
    vc_safetensors *st = NULL;
    assert_int_equal(vc_safetensors_open(keep, NULL, &st), VC_OK);
    test_cache t = make_cache(64 * KB, 1 * MB, 1);
    vc_model_id m = add_model(t.cache, "model");
    vc_layer_id ids[16];
    assert_int_equal(vc_safetensors_register(st, t.cache, m, NULL, ids), VC_OK);
    struct stat sb;
    assert_int_equal(stat(keep, &sb), 0);
    assert_int_equal(truncate(keep, sb.st_size / 2), 0);
    size_t last = vc_safetensors_layer_count(st) - 1; /* "model.layers.0": written near the end */
    const vc_safetensors_layer *l = vc_safetensors_get_layer(st, last);
    void *buf = malloc((size_t)l->bytes), *p;
    assert_int_equal(vc_safetensors_read_layer(st, last, buf, (size_t)l->bytes), VC_ERR_IO);
    assert_non_null(strstr(vc_last_error(), "shorter than when it was opened"));
    assert_int_equal(vc_safetensors_read_layer(st, last, buf, (size_t)l->bytes - 1), VC_ERR_INVALID_ARG);
    assert_int_equal(vc_safetensors_read_layer(st, last + 1, buf, (size_t)l->bytes), VC_ERR_INVALID_ARG);
    free(buf);
    assert_int_equal(vc_layer_acquire(t.cache, ids[last], NULL, &p), VC_ERR_LOADER);
    /* the cache's message ends with the reader's reason (vc_loader_set_error) */
    assert_true(last_error_has(t.cache, "returned -15: vc_safetensors_read_layer: "));
    assert_true(last_error_has(t.cache, "shorter than when it was opened"));
    assert_int_equal(residency(t.cache, ids[last]), VC_RES_NONE);
    free_cache(&t);
    vc_safetensors_close(st);
}

static void test_empty_file_and_bad_arguments(void **state) {
    (void)state;
    vc_safetensors *st = (vc_safetensors *)1;
    assert_int_equal(vc_safetensors_open(write_header("empty.safetensors", "{}", 0), NULL, &st), VC_OK);
    assert_int_equal(vc_safetensors_tensor_count(st), 0);
    assert_int_equal(vc_safetensors_layer_count(st), 0);
    test_cache t = make_cache(64 * KB, 1 * MB, 1);
    assert_int_equal(vc_safetensors_register(st, t.cache, add_model(t.cache, "m"), NULL, NULL), VC_OK);
    free_cache(&t);
    vc_safetensors_close(st);
    vc_safetensors_close(NULL);
    assert_int_equal(vc_safetensors_tensor_count(NULL), 0);
    assert_null(vc_safetensors_metadata(NULL, "x"));

    st = (vc_safetensors *)1;
    assert_int_equal(vc_safetensors_open(NULL, NULL, &st), VC_ERR_INVALID_ARG);
    assert_null(st);
    char missing[300];
    snprintf(missing, sizeof missing, "%s/missing.safetensors", dir);
    assert_int_equal(vc_safetensors_open(missing, NULL, &st), VC_ERR_IO);
    assert_non_null(strstr(vc_last_error(), "No such file"));
    assert_int_equal(vc_safetensors_open(dir, NULL, &st), VC_ERR_IO);
    assert_non_null(strstr(vc_last_error(), "not a regular file"));
    vc_safetensors_options o;
    vc_safetensors_options_init(&o);
    o.tensor_alignment = 48;
    assert_int_equal(vc_safetensors_open(missing, &o, &st), VC_ERR_INVALID_ARG);
    assert_non_null(strstr(vc_last_error(), "power of two"));
    vc_safetensors_options_init(&o);
    o.struct_size = 4;
    assert_int_equal(vc_safetensors_open(missing, &o, &st), VC_ERR_INVALID_ARG);
    assert_non_null(strstr(vc_last_error(), "struct_size"));
}

/* Headers that must be refused: each with VC_ERR_FORMAT and a message saying what is wrong. */
static void test_malformed_headers_are_refused(void **state) {
    (void)state;
    static const struct {
        const char *header;
        size_t data;
        const char *says;
    } cases[] = {
        {"[]", 0, "starts with '{'"},
        {" {}", 0, "starts with '{'"},
        {"{", 0, "expected a string"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},}", 4, "expected a string"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}} x", 4, "text after the header"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4, "lacks 'data_offsets'"},
        {"{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "lacks 'dtype'"},
        {"{\"a\":{\"dtype\":\"F32\",\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "given twice"},
        {"{\"a\":{\"dtype\":\"Q4_K\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "unknown dtype 'Q4_K'"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}", 4, "take 8"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,0]}}", 4, "end before they begin"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4, "non-negative integer"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1.0],\"data_offsets\":[0,4]}}", 4, "must be an integer"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[01],\"data_offsets\":[0,4]}}", 4, "leading zero"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,8]}}", 8, "expected [begin, end]"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[99999999999999999999],\"data_offsets\":[0,4]}}", 4, "does not fit 64 bits"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,4]}}", 4, "does not fit 64 bits"},
        {"{\"a\":{\"dtype\":\"F4\",\"shape\":[3],\"data_offsets\":[0,2]}}", 2, "not a whole number of bytes"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
         "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[2,6]}}", 8, "neither overlaps nor gaps"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8, "neither overlaps nor gaps"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 6, "file holds 6"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
         "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8, "named twice"},
        {"{\"__metadata__\":{\"n\":1}}", 0, "values must be strings"},
        {"{\"__metadata__\":{},\"__metadata__\":{}}", 0, "__metadata__ given twice"},
        {"{\"a\\q\":{}}", 0, "unknown escape"},
        {"{\"a\\ud800\":{}}", 0, "lone surrogate"},
        {"{\"a\\udc00x\":{}}", 0, "lone surrogate"},
        {"{\"a\\u0000\":{}}", 0, "\\u0000"},
        {"{\"a\\u12\":{}}", 0, "non-hex digit"},
        {"{\"a\xff\":{}}", 0, "not UTF-8"},
        {"{\"a\xc0\x80\":{}}", 0, "not UTF-8"},
        {"{\"a\tb\":{}}", 0, "control character"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"x\":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["
         "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]"
         "]]]]]]]]]]]]]]]]]}}", 4, "nested more than"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"x\":tru}}", 4, "expected a value"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"x\":1.}}", 4, "no digits after"},
        {"{\"a\":7}", 0, "expected '{'"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}", 4, "',' or '}'"},
        {"{\"a", 0, "not closed"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char name[32];
        snprintf(name, sizeof name, "bad%zu.safetensors", i);
        vc_safetensors *st = (vc_safetensors *)1;
        int status = vc_safetensors_open(write_header(name, cases[i].header, cases[i].data), NULL, &st);
        if (status != VC_ERR_FORMAT || !strstr(vc_last_error(), cases[i].says))
            fail_msg("case %zu (%s): status %s, message \"%s\", expected \"%s\"", i, cases[i].header, vc_status_name(status),
                     vc_last_error(), cases[i].says);
        assert_null(st);
        assert_non_null(strstr(vc_last_error(), name)); /* says which file */
    }
}

/* What a valid header may hold beyond the tensors: unknown fields of any kind (nested within
 * bounds), escapes, whitespace and padding, empty tensors. */
static void test_valid_headers_beyond_the_basics(void **state) {
    (void)state;
    const char *header = "{ \"__metadata__\" : { } ,\n"
                         "\t\"t\\u00e9\\ud83d\\ude00\\\"\\\\\\/\\n.w\" : {\"x\":{\"y\":[1,-2.5e3,true,false,null,\"s\"]},"
                         "\"dtype\":\"BF16\", \"shape\":[2, 3], \"data_offsets\":[0, 12], \"z\":0} ,"
                         "\"e.w\":{\"dtype\":\"F8_E4M3\",\"shape\":[0,5],\"data_offsets\":[12,12]},"
                         "\"f.w\":{\"dtype\":\"F4\",\"shape\":[4],\"data_offsets\":[12,14]}}      ";
    vc_safetensors *st = NULL;
    assert_int_equal(vc_safetensors_open(write_header("ok.safetensors", header, 14), NULL, &st), VC_OK);
    assert_int_equal(vc_safetensors_tensor_count(st), 3);
    size_t i;
    assert_int_equal(vc_safetensors_find(st, "t\xc3\xa9\xf0\x9f\x98\x80\"\\/\n.w", &i), VC_OK);
    assert_int_equal(vc_safetensors_get_tensor(st, i)->bytes, 12);
    assert_int_equal(vc_safetensors_get_tensor(st, i)->file_offset, 8 + strlen(header));
    assert_int_equal(vc_safetensors_find(st, "e.w", &i), VC_OK);
    const vc_safetensors_layer *l = vc_safetensors_get_layer(st, vc_safetensors_get_tensor(st, i)->layer);
    assert_int_equal(l->bytes, 0); /* only an empty tensor: not registered */
    test_cache t = make_cache(64 * KB, 1 * MB, 1);
    vc_layer_id ids[3];
    assert_int_equal(vc_safetensors_register(st, t.cache, add_model(t.cache, "m"), NULL, ids), VC_OK);
    assert_int_equal(ids[vc_safetensors_get_tensor(st, i)->layer], 0);
    assert_int_equal(get_stats(t.cache).layers, 2);
    free_cache(&t);
    vc_safetensors_close(st);
}

/* Several engine threads and the stage-ahead worker call the loaders of one handle at once, on a
 * device too small for the model, so layers are read again and again: every read gives the file's
 * bytes (run under ThreadSanitizer in CI). */
typedef struct reader_arg {
    const vc_safetensors *st;
    test_cache *t;
    const vc_layer_id *ids;
    int ok, reads;
    char why[160];
} reader_arg;

static void *reader(void *p) {
    reader_arg *a = p;
    a->ok = 1;
    size_t n = vc_safetensors_layer_count(a->st);
    for (int round = 0; round < 20 && a->ok; round++)
        for (size_t li = 0; li < n && a->ok; li++) {
            const vc_safetensors_layer *l = vc_safetensors_get_layer(a->st, li);
            if (!a->ids[li]) continue;
            void *dptr;
            int st = vc_layer_acquire(a->t->cache, a->ids[li], NULL, &dptr);
            /* the other threads' layers fill the room for now: the device, or the RAM pool with
             * copies being loaded or uploaded */
            if (st == VC_ERR_OUT_OF_VRAM || st == VC_ERR_OUT_OF_RAM) continue;
            if (st != VC_OK) {
                snprintf(a->why, sizeof a->why, "acquire of %s: %s", l->name, vc_status_name(st));
                a->ok = 0;
                break;
            }
            unsigned char *host = malloc((size_t)l->bytes);
            test_device_read(a->t->backend, host, dptr, (size_t)l->bytes);
            for (size_t k = 0; k < l->tensor_count; k++) {
                const vc_safetensors_tensor *tn = vc_safetensors_get_tensor(a->st, l->first_tensor + k);
                if (tn->bytes && !check_pattern(host + tn->layer_offset, (size_t)tn->bytes, spec_index(tn->name) + 1)) {
                    snprintf(a->why, sizeof a->why, "tensor %s: wrong bytes", tn->name);
                    a->ok = 0;
                }
            }
            free(host);
            a->reads++;
            if (vc_layer_release(a->t->cache, a->ids[li], NULL) != VC_OK) a->ok = 0;
        }
    return NULL;
}

static void test_loaders_on_several_threads(void **state) {
    (void)state;
    vc_safetensors *st = NULL;
    assert_int_equal(vc_safetensors_open(write_model("threads.safetensors", MODEL, NMODEL, NULL), NULL, &st), VC_OK);
    vc_cache_options o;
    vc_cache_options_init(&o);
    o.ram_budget = 12 * KB; /* about half the model: the loaders run again and again */
    o.working_mem = 0;
    o.arena_segment_bytes = 8 * KB;
    o.stage_ahead = 1;
    test_cache t = make_cache_opts(20 * KB, &o); /* about half the model */
    vc_layer_id ids[16];
    assert_int_equal(vc_safetensors_register(st, t.cache, add_model(t.cache, "m"), NULL, ids), VC_OK);
    pthread_t th[3];
    reader_arg args[3];
    for (int i = 0; i < 3; i++) {
        args[i] = (reader_arg){.st = st, .t = &t, .ids = ids};
        assert_int_equal(pthread_create(&th[i], NULL, reader, &args[i]), 0);
    }
    int reads = 0;
    for (int i = 0; i < 3; i++) {
        assert_int_equal(pthread_join(th[i], NULL), 0);
        if (!args[i].ok) fail_msg("thread %d: %s", i, args[i].why);
        reads += args[i].reads;
    }
    /* 540 acquires; refusals for room are few (no more than 20 in 60 runs three at a time) */
    assert_true(reads >= 540 / 4);
    uint64_t model_bytes = 0;
    for (size_t li = 0; li < vc_safetensors_layer_count(st); li++) model_bytes += vc_safetensors_get_layer(st, li)->bytes;
    /* read again, not served from RAM: 2.0 to 43 times the model's bytes in 30 runs */
    assert_true(get_stats(t.cache).bytes_loaded > model_bytes);
    free_cache(&t);
    vc_safetensors_close(st);
}

/* A single-file Stable Diffusion checkpoint holds three models (UNet, VAE, text encoder): each is
 * registered from the one file by its prefix, into a model of its own. */
static void test_one_file_three_models(void **state) {
    (void)state;
    static const spec SD[] = {
        {"cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc1.weight", "F16", 2, {64, 16}, 16},
        {"cond_stage_model.transformer.text_model.embeddings.position_ids", "I64", 2, {1, 77}, 64},
        {"first_stage_model.decoder.up.0.block.0.conv1.weight", "F16", 4, {8, 8, 3, 3}, 16},
        {"first_stage_model.decoder.conv_out.weight", "F16", 4, {3, 8, 3, 3}, 16},
        {"model.diffusion_model.input_blocks.1.0.in_layers.2.weight", "F16", 4, {32, 32, 3, 3}, 16},
        {"model.diffusion_model.input_blocks.1.0.in_layers.0.weight", "F32", 1, {32}, 32},
        {"model.diffusion_model.out.2.weight", "F16", 4, {4, 32, 3, 3}, 16},
        {"model_ema.decay", "F32", 0, {0}, 32},
    };
    enum { NSD = sizeof SD / sizeof SD[0] };
    vc_safetensors *st;
    assert_int_equal(vc_safetensors_open(write_model("sd.safetensors", SD, NSD, NULL), NULL, &st), VC_OK);
    size_t n = vc_safetensors_layer_count(st);
    test_cache t = make_cache(256 * KB, 1 * MB, 1);
    static const char *const prefixes[] = {"model.diffusion_model.", "first_stage_model.", "cond_stage_model."};
    size_t registered = 0;
    for (int k = 0; k < 3; k++) {
        vc_layer_id ids[16];
        vc_model_id m = add_model(t.cache, prefixes[k]);
        assert_int_equal(vc_safetensors_register(st, t.cache, m, prefixes[k], ids), VC_OK);
        for (size_t li = 0; li < n; li++) {
            int mine = !strncmp(vc_safetensors_get_layer(st, li)->name, prefixes[k], strlen(prefixes[k]));
            assert_int_equal(ids[li] != 0, mine);
            registered += mine;
            if (!mine) continue;
            vc_layer_info info;
            assert_int_equal(vc_layer_get_info(t.cache, ids[li], &info), VC_OK);
            assert_string_equal(info.name, vc_safetensors_get_layer(st, li)->name);
            assert_true(info.model == m);
        }
    }
    assert_int_equal(get_stats(t.cache).layers, registered);
    assert_int_equal(registered, n - 1); /* all but model_ema.decay */
    /* a prefix that matches nothing is refused, not an empty model */
    assert_int_equal(vc_safetensors_register(st, t.cache, add_model(t.cache, "x"), "model.diffusion_model_ema.", NULL),
                     VC_ERR_NOT_FOUND);
    assert_non_null(strstr(vc_last_error(), "no layer of"));
    assert_int_equal(get_stats(t.cache).layers, registered);
    free_cache(&t);
    vc_safetensors_close(st);
}

/* A checkpoint in two shards and its index: one handle, layers whose tensors span both files are
 * one layer each, read from both; an index that does not match its shards is refused. */
static void test_sharded_checkpoint(void **state) {
    (void)state;
    enum { SPLIT = 7 }; /* "down_blocks...transformer_blocks.0" and "model.layers.0" span the two */
    char shard1[300], shard2[300], index[300];
    snprintf(shard1, sizeof shard1, "%s", write_shard("m-00001-of-00002.safetensors", MODEL, SPLIT, "{\"format\":\"pt\"}", 0));
    snprintf(shard2, sizeof shard2, "%s", write_shard("m-00002-of-00002.safetensors", MODEL + SPLIT, NMODEL - SPLIT, NULL, SPLIT));
    /* the index, with the weight_map in a sorted order and metadata the reader skips */
    char *json = malloc(16384);
    size_t len = (size_t)sprintf(json, "{\"metadata\": {\"total_size\": 123}, \"weight_map\": {");
    for (size_t i = 0; i < NMODEL; i++)
        len += (size_t)sprintf(json + len, "%s\"%s\": \"m-0000%d-of-00002.safetensors\"", i ? ", " : "", MODEL[i].name,
                               i < SPLIT ? 1 : 2);
    sprintf(json + len, "}}\n");
    snprintf(index, sizeof index, "%s/m.safetensors.index.json", dir);
    FILE *f = fopen(index, "w");
    assert_non_null(f);
    fputs(json, f);
    fclose(f);

    vc_safetensors *st = NULL;
    assert_int_equal(vc_safetensors_open(index, NULL, &st), VC_OK);
    assert_int_equal(vc_safetensors_file_count(st), 2);
    assert_string_equal(vc_safetensors_file_path(st, 0), shard1);
    assert_string_equal(vc_safetensors_file_path(st, 1), shard2);
    assert_null(vc_safetensors_file_path(st, 2));
    assert_int_equal(vc_safetensors_tensor_count(st), NMODEL);
    assert_int_equal(vc_safetensors_layer_count(st), 9);
    assert_string_equal(vc_safetensors_metadata(st, "format"), "pt");
    size_t i;
    assert_int_equal(vc_safetensors_find(st, "model.layers.0.input_layernorm.weight", &i), VC_OK);
    const vc_safetensors_tensor *norm = vc_safetensors_get_tensor(st, i);
    assert_int_equal(norm->file, 1);
    assert_int_equal(vc_safetensors_find(st, "model.layers.0.self_attn.q_proj.weight", &i), VC_OK);
    assert_int_equal(vc_safetensors_get_tensor(st, i)->file, 0);
    assert_int_equal(vc_safetensors_get_tensor(st, i)->layer, norm->layer); /* one layer over two files */
    test_cache t = make_cache(64 * KB, 1 * MB, 1);
    vc_layer_id ids[16];
    assert_int_equal(vc_safetensors_register(st, t.cache, add_model(t.cache, "m"), NULL, ids), VC_OK);
    check_layers_on_device(st, &t, ids);
    free_cache(&t);
    vc_safetensors_close(st);

    /* the same two files given directly */
    const char *both[] = {shard2, shard1};
    assert_int_equal(vc_safetensors_open_files(both, 2, NULL, &st), VC_OK);
    assert_int_equal(vc_safetensors_layer_count(st), 9);
    vc_safetensors_close(st);
    const char *twice[] = {shard1, shard1};
    assert_int_equal(vc_safetensors_open_files(twice, 2, NULL, &st), VC_ERR_FORMAT);
    assert_non_null(strstr(vc_last_error(), "is named twice"));
    assert_int_equal(vc_safetensors_open_files(both, 0, NULL, &st), VC_ERR_INVALID_ARG);
    assert_int_equal(vc_safetensors_open_files(NULL, 1, NULL, &st), VC_ERR_INVALID_ARG);

    /* indexes that do not match */
    static const struct {
        const char *json;
        int status;
        const char *says;
    } bad[] = {
        {"{\"weight_map\": {\"img_in.bias\": \"m-00001-of-00002.safetensors\", \"logit_scale\": \"m-00002-of-00002.safetensors\"}}",
         VC_ERR_FORMAT, "but it is in m-00002"},
        {"{\"weight_map\": {\"nope\": \"m-00001-of-00002.safetensors\"}}", VC_ERR_FORMAT, "no shard holds it"},
        {"{\"weight_map\": {\"a\": \"missing.safetensors\"}}", VC_ERR_IO, "No such file"},
        {"{\"weight_map\": {\"a\": 3}}", VC_ERR_FORMAT, "must be file names"},
        {"{\"weight_map\": {\"a\": \"/etc/x.safetensors\"}}", VC_ERR_FORMAT, "not a file beside the index"},
        {"{\"metadata\": {}}", VC_ERR_FORMAT, "no weight_map"},
        {"{\"weight_map\": {}, \"weight_map\": {}}", VC_ERR_FORMAT, "no weight_map"},
        {"[]", VC_ERR_FORMAT, "expected '{'"},
    };
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        f = fopen(index, "w");
        assert_non_null(f);
        fputs(bad[k].json, f);
        fclose(f);
        st = (vc_safetensors *)1;
        int status = vc_safetensors_open(index, NULL, &st);
        if (status != bad[k].status || !strstr(vc_last_error(), bad[k].says))
            fail_msg("index %zu (%s): status %s, message \"%s\", expected \"%s\"", k, bad[k].json, vc_status_name(status),
                     vc_last_error(), bad[k].says);
        assert_null(st);
    }
    free(json);
}

/* The first eight bytes: a file too short, a header longer than the file or than 100 MB. */
static void test_header_length_is_checked(void **state) {
    (void)state;
    vc_safetensors *st;
    assert_int_equal(vc_safetensors_open(write_raw("short.safetensors", "\x02\0\0\0\0\0\0\0", "", 0, NULL, 0), NULL, &st),
                     VC_ERR_FORMAT); /* only the length */
    assert_non_null(strstr(vc_last_error(), "past the end of the file"));
    /* write_raw writes 8 bytes of the given length: make one of 5 bytes by hand */
    char path[300];
    snprintf(path, sizeof path, "%s/five.safetensors", dir);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    fwrite("\x02\0\0\0\0", 1, 5, f);
    fclose(f);
    assert_int_equal(vc_safetensors_open(path, NULL, &st), VC_ERR_FORMAT);
    assert_non_null(strstr(vc_last_error(), "shorter than"));
    assert_int_equal(vc_safetensors_open(write_raw("long.safetensors", "\x40\0\0\0\0\0\0\0", "{}", 2, NULL, 0), NULL, &st),
                     VC_ERR_FORMAT);
    assert_non_null(strstr(vc_last_error(), "past the end of the file"));
    assert_int_equal(
        vc_safetensors_open(write_raw("huge.safetensors", "\0\0\0\x10\0\0\0\0", "{}", 2, NULL, 0), NULL, &st),
        VC_ERR_FORMAT);
    assert_non_null(strstr(vc_last_error(), "over 100 MB"));
    assert_int_equal(
        vc_safetensors_open(write_raw("max.safetensors", "\xff\xff\xff\xff\xff\xff\xff\xff", "{}", 2, NULL, 0), NULL, &st),
        VC_ERR_FORMAT);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_groups_layers_by_name),
        cmocka_unit_test(test_group_depth),
        cmocka_unit_test(test_registered_layers_carry_the_file),
        cmocka_unit_test(test_file_cut_short_after_open),
        cmocka_unit_test(test_empty_file_and_bad_arguments),
        cmocka_unit_test(test_malformed_headers_are_refused),
        cmocka_unit_test(test_valid_headers_beyond_the_basics),
        cmocka_unit_test(test_header_length_is_checked),
        cmocka_unit_test(test_sharded_checkpoint),
        cmocka_unit_test(test_one_file_three_models),
        cmocka_unit_test(test_loaders_on_several_threads),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
