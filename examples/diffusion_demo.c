/*
 * A small diffusion-style pipeline on libvramcache's host backend.
 *
 * Three models share one cache: a text encoder (run once), a denoiser (run for several steps) and a
 * VAE decoder (run once, after reserving working memory for its activations). Their weights live
 * in .safetensors files, one per model, as checkpoints do; each layer ("layers.3": its weight
 * matrix and its bias) is registered from the file and read from it on demand, and the "device"
 * (host memory with a capacity) is too small to hold them all, so layers stream in and out. Every
 * layer does real arithmetic with its weights (a matrix-vector product plus bias), so a wrong byte
 * anywhere changes the output. The demo runs the pipeline three times — on the small device with the order-aware policy
 * and with LRU, and on a device that holds everything — and checks that all produce the same
 * checksum.
 *
 *   diffusion_demo [--steps N] [--device-mb MB] [--verbose]
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vramcache.h"
#include "vramcache_safetensors.h"

#define DIM 256 /* activations are DIM floats; each layer is a DIM x DIM matrix (256 KB) and a bias */
#define WEIGHT_BYTES ((size_t)DIM * DIM * sizeof(float))
#define MB ((size_t)1 << 20)

typedef struct stage {
    const char *model;
    int layers;
} stage;

static const stage STAGES[] = {{"text_encoder", 4}, {"denoiser", 12}, {"vae_decoder", 3}};
enum { NSTAGES = 3, MAX_LAYERS = 12 };


/* Deterministic pseudo-random weights, scaled so activations stay bounded. */
static void make_weights(float *w, unsigned seed) {
    uint32_t x = seed * 2654435761u + 1;
    for (size_t i = 0; i < (size_t)DIM * DIM; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        w[i] = ((float)(x & 0xffff) / 65535.0f - 0.5f) * (2.0f / DIM);
    }
}

/* y = tanh(W x + b + x): a residual layer. W and b come from device memory. */
static void apply_layer(const float *w, const float *b, const float *x, float *y) {
    for (int r = 0; r < DIM; r++) {
        float acc = 0.0f;
        const float *row = w + (size_t)r * DIM;
        for (int c = 0; c < DIM; c++) acc += row[c] * x[c];
        y[r] = tanhf(acc + b[r] + x[r]);
    }
}

/* Writes a model's layers as a .safetensors file: "layers.N.weight" (DIM x DIM) and "layers.N.bias"
 * (DIM), float32, named and laid out in sorted order as the reference writer does. */
static int write_checkpoint(const char *path, int layers, unsigned first_seed) {
    char header[8192] = "{";
    size_t len = 1, offset = 0;
    /* sorted names put layers.10 before layers.2: write in that order */
    int order[64], n = 0;
    for (int i = 0; i < layers; i++) order[n++] = i;
    for (int a = 0; a < n; a++)
        for (int b = a + 1; b < n; b++) {
            char x[16], y[16];
            snprintf(x, sizeof x, "%d", order[a]);
            snprintf(y, sizeof y, "%d", order[b]);
            if (strcmp(x, y) > 0) {
                int t = order[a];
                order[a] = order[b];
                order[b] = t;
            }
        }
    for (int k = 0; k < n; k++) {
        size_t bias = DIM * sizeof(float);
        len += (size_t)snprintf(header + len, sizeof header - len,
                                "%s\"layers.%d.bias\":{\"dtype\":\"F32\",\"shape\":[%d],\"data_offsets\":[%zu,%zu]},"
                                "\"layers.%d.weight\":{\"dtype\":\"F32\",\"shape\":[%d,%d],\"data_offsets\":[%zu,%zu]}",
                                k ? "," : "", order[k], DIM, offset, offset + bias, order[k], DIM, DIM, offset + bias,
                                offset + bias + WEIGHT_BYTES);
        offset += bias + WEIGHT_BYTES;
    }
    len += (size_t)snprintf(header + len, sizeof header - len, "}");
    while (len % 8) header[len++] = ' ';
    FILE *f = fopen(path, "wb");
    if (!f) return 1;
    unsigned char n8[8];
    for (int i = 0; i < 8; i++) n8[i] = (unsigned char)((uint64_t)len >> (8 * i));
    fwrite(n8, 1, 8, f);
    fwrite(header, 1, len, f);
    static float w[DIM * DIM];
    for (int k = 0; k < n; k++) {
        float b[DIM];
        make_weights(w, first_seed + (unsigned)order[k]);
        for (int i = 0; i < DIM; i++) b[i] = w[i] * 0.25f;
        fwrite(b, 1, sizeof b, f);
        fwrite(w, 1, WEIGHT_BYTES, f);
    }
    return fclose(f) != 0;
}

static uint64_t fnv1a(const void *data, size_t n) {
    const unsigned char *p = data;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 1099511628211ull;
    return h;
}

typedef struct run_result {
    uint64_t checksum;
    vc_stats stats;
} run_result;

static int check(int st, const char *what, vc_cache *c) {
    if (st == VC_OK) return 0;
    char msg[512] = "";
    if (c) vc_cache_last_error(c, msg, sizeof msg);
    fprintf(stderr, "diffusion_demo: %s failed: %s (%s)\n", what, vc_strerror(st), c ? msg : vc_last_error());
    return 1;
}

/* Where a layer's tensors sit in its device buffer (vc_safetensors_tensor.layer_offset). */
typedef struct layer_tensors {
    size_t weight, bias;
} layer_tensors;

/* Runs every layer of a stage in order on activations x (in place). */
static int run_stage(vc_cache *c, vc_layer_id *ids, const layer_tensors *at, int n, float *x) {
    float y[DIM];
    for (int i = 0; i < n; i++) {
        void *w;
        if (check(vc_layer_acquire(c, ids[i], NULL, &w), "acquire", c)) return 1;
        apply_layer((const float *)((const char *)w + at[i].weight), (const float *)((const char *)w + at[i].bias), x, y);
        memcpy(x, y, sizeof y);
        if (check(vc_layer_release(c, ids[i], NULL), "release", c)) return 1;
    }
    return 0;
}

static int run_pipeline(vc_safetensors *const *files, const layer_tensors (*at)[MAX_LAYERS], size_t device_bytes, int steps, int verbose, vc_policy policy, run_result *out) {
    vc_backend *backend = NULL;
    vc_cache *cache = NULL;
    int rc = 1;
    if (check(vc_backend_host_create(device_bytes, &backend), "vc_backend_host_create", NULL)) return 1;
    vc_cache_options o;
    vc_cache_options_init(&o);
    o.backend = backend;
    o.working_mem = 1 * MB;            /* standing working memory */
    o.ram_budget = 64 * MB;
    o.arena_segment_bytes = 4 * (WEIGHT_BYTES + DIM * sizeof(float)); /* four layers */
    o.log_memory_usage = verbose;
    o.policy = policy;
    o.log_level = verbose ? VC_LOG_INFO : VC_LOG_WARN;
    if (check(vc_cache_create(&o, &cache), "vc_cache_create", NULL)) goto out;

    /* each model's layers straight from its file: read from it when the cache needs them */
    vc_layer_id ids[NSTAGES][MAX_LAYERS];
    for (int s = 0; s < NSTAGES; s++) {
        vc_model_id m;
        if (check(vc_model_register(cache, STAGES[s].model, &m), "vc_model_register", cache)) goto out;
        if (check(vc_safetensors_register(files[s], cache, m, NULL, ids[s]), "vc_safetensors_register", NULL)) goto out;
    }

    /* 1. text encoder, once: the "prompt" becomes the conditioning vector */
    float cond[DIM], x[DIM];
    for (int i = 0; i < DIM; i++) cond[i] = sinf((float)i * 0.1f);
    if (run_stage(cache, ids[0], at[0], STAGES[0].layers, cond)) goto out;
    /* 2. denoiser, `steps` times: x <- x + 0.5 * (denoiser(x + cond) - x) */
    for (int i = 0; i < DIM; i++) x[i] = cosf((float)i * 0.37f);
    for (int step = 0; step < steps; step++) {
        float h[DIM];
        for (int i = 0; i < DIM; i++) h[i] = x[i] + cond[i];
        if (run_stage(cache, ids[1], at[1], STAGES[1].layers, h)) goto out;
        for (int i = 0; i < DIM; i++) x[i] += 0.5f * (h[i] - x[i]);
    }
    /* 3. VAE decode: reserve working memory for the "image", then decode into it */
    vc_reservation *res = NULL;
    size_t image_rows = 1536; /* 1.5 MB: more than the standing working memory */
    size_t image_floats = image_rows * DIM;
    if (check(vc_reserve_working_mem(cache, image_floats * sizeof(float), VC_RESERVE_BUFFER, &res),
              "vc_reserve_working_mem", cache))
        goto out;
    float *image = vc_reservation_ptr(res);
    if (run_stage(cache, ids[2], at[2], STAGES[2].layers, x)) {
        vc_release_working_mem(cache, res);
        goto out;
    }
    for (size_t r = 0; r < image_rows; r++)
        for (size_t cidx = 0; cidx < DIM; cidx++) image[r * DIM + cidx] = x[cidx] * cosf((float)r * 0.2f);
    out->checksum = fnv1a(image, image_floats * sizeof(float));
    if (check(vc_release_working_mem(cache, res), "vc_release_working_mem", cache)) goto out;
    vc_cache_get_stats(cache, &out->stats);
    if (verbose) vc_cache_print_stats(cache, NULL, NULL);
    rc = 0;
out:
    if (cache && vc_cache_destroy(cache) != VC_OK) rc = 1;
    vc_backend_destroy(backend);
    return rc;
}

static unsigned long long evictions(const vc_stats *s) {
    unsigned long long n = 0;
    for (int r = 0; r < VC_EVICT_REASON_COUNT; r++) n += s->vram_evictions[r];
    return n;
}

static void report(const char *label, size_t device, const run_result *r) {
    const vc_stats *s = &r->stats;
    printf("%-15s device %5.2f MB | h2d %7.2f MB | loaded %6.2f MB | hits %4llu misses %4llu | "
           "evictions %3llu (reservation %llu) | peak VRAM %5.2f MB | checksum %016llx\n",
           label, (double)device / MB, (double)s->bytes_h2d / MB, (double)s->bytes_loaded / MB,
           (unsigned long long)s->hits, (unsigned long long)s->misses,
           (unsigned long long)evictions(s),
           (unsigned long long)s->vram_evictions[VC_EVICT_FOR_RESERVATION],
           (double)s->arena_peak_bytes / MB, (unsigned long long)r->checksum);
}

int main(int argc, char **argv) {
    int steps = 8, verbose = 0;
    size_t device = 3 * MB;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--steps") && i + 1 < argc)
            steps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--device-mb") && i + 1 < argc)
            device = (size_t)atoi(argv[++i]) * MB;
        else if (!strcmp(argv[i], "--verbose"))
            verbose = 1;
        else {
            fprintf(stderr, "usage: %s [--steps N] [--device-mb MB] [--verbose]\n", argv[0]);
            return 2;
        }
    }
    if (steps < 1 || device < 2 * MB) {
        fprintf(stderr, "diffusion_demo: need --steps >= 1 and --device-mb >= 2\n");
        return 2;
    }
    /* Write the three models' weights as .safetensors checkpoints in a temporary directory, and
     * open them as an engine would: the header is read and checked, the tensors stay on disk. */
    const char *tmp = getenv("TMPDIR");
    char dir[256], path[NSTAGES][320];
    snprintf(dir, sizeof dir, "%s/diffusion_demo_XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(dir)) {
        perror("diffusion_demo: mkdtemp");
        return 1;
    }
    vc_safetensors *files[NSTAGES] = {NULL};
    static layer_tensors at[NSTAGES][MAX_LAYERS];
    int total_layers = 0, rc = 1;
    size_t model_bytes = 0;
    for (int s = 0; s < NSTAGES; s++) {
        snprintf(path[s], sizeof path[s], "%s/%s.safetensors", dir, STAGES[s].model);
        if (write_checkpoint(path[s], STAGES[s].layers, (unsigned)total_layers)) {
            fprintf(stderr, "diffusion_demo: cannot write %s\n", path[s]);
            goto done;
        }
        total_layers += STAGES[s].layers;
        if (check(vc_safetensors_open(path[s], NULL, &files[s]), "vc_safetensors_open", NULL)) goto done;
        for (int i = 0; i < STAGES[s].layers; i++) {
            char name[48];
            size_t t;
            model_bytes += vc_safetensors_get_layer(files[s], (size_t)i)->bytes;
            snprintf(name, sizeof name, "layers.%d.weight", i);
            if (check(vc_safetensors_find(files[s], name, &t), "vc_safetensors_find", NULL)) goto done;
            at[s][i].weight = (size_t)vc_safetensors_get_tensor(files[s], t)->layer_offset;
            snprintf(name, sizeof name, "layers.%d.bias", i);
            if (check(vc_safetensors_find(files[s], name, &t), "vc_safetensors_find", NULL)) goto done;
            at[s][i].bias = (size_t)vc_safetensors_get_tensor(files[s], t)->layer_offset;
        }
    }
    printf("libvramcache %s demo: %d layers, %.2f MB of weights in 3 .safetensors files (text encoder, "
           "denoiser x %d steps, VAE decode)\n", vc_version_string(), total_layers, (double)model_bytes / MB, steps);

    run_result small, lru, whole;
    size_t big = model_bytes + 8 * MB;
    if (run_pipeline(files, at, device, steps, verbose, VC_POLICY_PLANNED, &small) ||
        run_pipeline(files, at, device, steps, 0, VC_POLICY_LRU, &lru) ||
        run_pipeline(files, at, big, steps, 0, VC_POLICY_PLANNED, &whole))
        goto done;
    rc = 0;
done:
    for (int s = 0; s < NSTAGES; s++) {
        vc_safetensors_close(files[s]);
        remove(path[s]);
    }
    remove(dir);
    if (rc) return rc;
    report("streamed", device, &small);
    report("streamed (LRU)", device, &lru);
    report("fully resident", big, &whole);
    if (small.checksum != whole.checksum || lru.checksum != whole.checksum) {
        printf("MISMATCH: streaming changed the result\n");
        return 1;
    }
    printf("checksums match: streaming %.2f MB of weights through a %.2f MB device gave the same image;\n"
           "the order-aware policy moved %.2f MB where LRU moved %.2f MB\n",
           (double)model_bytes / MB, (double)device / MB, (double)small.stats.bytes_h2d / MB,
           (double)lru.stats.bytes_h2d / MB);
    return 0;
}
