/*
 * Reading a model's layers from a .safetensors file as the registered loaders do
 * (vc_safetensors_read_layer: each layer's tensors at their aligned offsets) against reading the
 * same bytes with one pread per layer into the same buffers, in the same run: what the layout and
 * the checks cost over the read itself.
 *
 * Writes a file of about --mb MB in $TMPDIR: transformer blocks of bf16 matrices (qkv 9216x3072,
 * proj 3072x3072, mlp 12288x3072) and an f32 norm, named as FLUX's are, so each block is two layers
 * ("blocks.N" and "blocks.N.mlp.0"). Warm: the file in the page cache (both readers copy from
 * memory; best of 5). Cold: the file dropped from the page cache (posix_fadvise DONTNEED after an
 * fsync) before each reader, so both read the disk (best of 3; where the kernel keeps the pages
 * anyway, cold equals warm).
 *
 *   bench_safetensors [--mb N] [--json]
 */
#define _POSIX_C_SOURCE 200809L
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bench_args.h"
#include "vramcache.h"
#include "vramcache_safetensors.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void die(const char *what) {
    fprintf(stderr, "bench_safetensors: %s: %s\n", what, vc_last_error());
    exit(1);
}

/* Writes the file; returns its data bytes. */
static size_t write_model(const char *path, int blocks) {
    static const struct {
        const char *suffix, *dtype;
        size_t rows, cols, elem;
    } T[] = {{"attn.norm.scale", "F32", 128, 1, 4},
             {"attn.proj.weight", "BF16", 3072, 3072, 2},
             {"attn.qkv.weight", "BF16", 9216, 3072, 2},
             {"mlp.0.weight", "BF16", 12288, 3072, 2}};
    size_t cap = 256 + (size_t)blocks * 512, len = 0, off = 0;
    char *h = malloc(cap);
    len += (size_t)snprintf(h + len, cap - len, "{\"__metadata__\":{\"format\":\"pt\"}");
    for (int b = 0; b < blocks; b++)
        for (size_t k = 0; k < 4; k++) {
            size_t bytes = T[k].rows * T[k].cols * T[k].elem;
            if (T[k].cols > 1)
                len += (size_t)snprintf(h + len, cap - len,
                                        ",\"blocks.%d.%s\":{\"dtype\":\"%s\",\"shape\":[%zu,%zu],\"data_offsets\":[%zu,%zu]}", b,
                                        T[k].suffix, T[k].dtype, T[k].rows, T[k].cols, off, off + bytes);
            else
                len += (size_t)snprintf(h + len, cap - len,
                                        ",\"blocks.%d.%s\":{\"dtype\":\"%s\",\"shape\":[%zu],\"data_offsets\":[%zu,%zu]}", b,
                                        T[k].suffix, T[k].dtype, T[k].rows, off, off + bytes);
            off += bytes;
        }
    len += (size_t)snprintf(h + len, cap - len, "}");
    while (len % 8) h[len++] = ' ';
    FILE *f = fopen(path, "wb");
    if (!f) die("cannot write the file");
    unsigned char n8[8];
    for (int i = 0; i < 8; i++) n8[i] = (unsigned char)((uint64_t)len >> (8 * i));
    fwrite(n8, 1, 8, f);
    fwrite(h, 1, len, f);
    char *chunk = malloc(1 << 20);
    for (size_t i = 0; i < 1 << 20; i++) chunk[i] = (char)(i * 131 + 7);
    for (size_t done = 0; done < off;) {
        size_t n = off - done < (1 << 20) ? off - done : (1 << 20);
        if (fwrite(chunk, 1, n, f) != n) die("writing the file");
        done += n;
    }
    fflush(f);
    fsync(fileno(f));
    fclose(f);
    free(chunk);
    free(h);
    return off;
}

static void drop_cache(const char *path) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return;
    posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    close(fd);
}

/* One pread per layer, over the file range its tensors cover, into its buffer. */
static double read_plain(const vc_safetensors *st, int fd, char **bufs) {
    double t0 = now_s();
    for (size_t li = 0; li < vc_safetensors_layer_count(st); li++) {
        const vc_safetensors_layer *l = vc_safetensors_get_layer(st, li);
        const vc_safetensors_tensor *a = vc_safetensors_get_tensor(st, l->first_tensor);
        const vc_safetensors_tensor *z = vc_safetensors_get_tensor(st, l->first_tensor + l->tensor_count - 1);
        size_t n = (size_t)(z->file_offset + z->bytes - a->file_offset), done = 0;
        while (done < n) {
            ssize_t got = pread(fd, bufs[li] + done, n - done, (off_t)(a->file_offset + done));
            if (got <= 0) die("pread");
            done += (size_t)got;
        }
    }
    return now_s() - t0;
}

static double read_layers(const vc_safetensors *st, char **bufs) {
    double t0 = now_s();
    for (size_t li = 0; li < vc_safetensors_layer_count(st); li++)
        if (vc_safetensors_read_layer(st, li, bufs[li], (size_t)vc_safetensors_get_layer(st, li)->bytes) != VC_OK)
            die("vc_safetensors_read_layer");
    return now_s() - t0;
}

int main(int argc, char **argv) {
    int json = 0;
    double mb = 1024;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--json"))
            json = 1;
        else if (!strcmp(argv[i], "--mb") && i + 1 < argc) {
            if (!bench_arg_double("--mb", argv[++i], 1, 1048576, &mb)) return 2;
        } else {
            fprintf(stderr, "usage: bench_safetensors [--mb N] [--json]\n");
            return 2;
        }
    }
    const double block_bytes = (128.0 * 4 + (3072.0 * 3072 + 9216.0 * 3072 + 12288.0 * 3072) * 2);
    int blocks = (int)(mb * 1048576.0 / block_bytes + 0.5);
    if (blocks < 1) blocks = 1;
    const char *tmp = getenv("TMPDIR");
    char path[512];
    snprintf(path, sizeof path, "%s/bench_safetensors_%d.safetensors", tmp && *tmp ? tmp : "/tmp", (int)getpid());
    size_t data = write_model(path, blocks);
    vc_safetensors *st;
    double t0 = now_s();
    if (vc_safetensors_open(path, NULL, &st) != VC_OK) die("vc_safetensors_open");
    double open_s = now_s() - t0;
    int fd = open(path, O_RDONLY);
    size_t nl = vc_safetensors_layer_count(st);
    char **bufs = calloc(nl, sizeof *bufs);
    for (size_t li = 0; li < nl; li++) {
        size_t n = (size_t)vc_safetensors_get_layer(st, li)->bytes;
        bufs[li] = malloc(n);
        memset(bufs[li], 0, n); /* faulted in before timing */
    }
    double warm_plain = 1e30, warm_layers = 1e30, cold_plain = 1e30, cold_layers = 1e30;
    for (int r = 0; r < 5; r++) { /* alternate, so drift hits both */
        double a = read_plain(st, fd, bufs), b = read_layers(st, bufs);
        if (a < warm_plain) warm_plain = a;
        if (b < warm_layers) warm_layers = b;
    }
    for (int r = 0; r < 3; r++) {
        drop_cache(path);
        double a = read_plain(st, fd, bufs);
        drop_cache(path);
        double b = read_layers(st, bufs);
        if (a < cold_plain) cold_plain = a;
        if (b < cold_layers) cold_layers = b;
    }
    double gb = (double)data / 1e9;
    if (json) {
        printf("{\"bench\":\"safetensors\",\"data_bytes\":%zu,\"layers\":%zu,\"tensors\":%zu,\"open_s\":%.6f,"
               "\"warm_plain_gbps\":%.3f,\"warm_layers_gbps\":%.3f,\"warm_ratio\":%.4f,"
               "\"cold_plain_gbps\":%.3f,\"cold_layers_gbps\":%.3f,\"cold_ratio\":%.4f}\n",
               data, nl, vc_safetensors_tensor_count(st), open_s, gb / warm_plain, gb / warm_layers,
               warm_layers / warm_plain, gb / cold_plain, gb / cold_layers, cold_layers / cold_plain);
    } else {
        printf("bench_safetensors: %.2f GB in %zu layers (%zu tensors); header read and checked in %.3f ms\n", gb, nl,
               vc_safetensors_tensor_count(st), open_s * 1e3);
        printf("  %-6s  one pread per layer %6.2f GB/s   vc_safetensors_read_layer %6.2f GB/s   time ratio %.3f\n", "warm",
               gb / warm_plain, gb / warm_layers, warm_layers / warm_plain);
        printf("  %-6s  one pread per layer %6.2f GB/s   vc_safetensors_read_layer %6.2f GB/s   time ratio %.3f\n", "cold",
               gb / cold_plain, gb / cold_layers, cold_layers / cold_plain);
    }
    for (size_t li = 0; li < nl; li++) free(bufs[li]);
    free(bufs);
    close(fd);
    vc_safetensors_close(st);
    remove(path);
    return 0;
}
