/* libFuzzer target for the safetensors reader (model files come from anywhere): any bytes must give
 * a status and a message, never a crash, a leak or undefined behaviour; a file that opens must
 * describe itself consistently (every tensor in one layer, inside its buffer, aligned, found by its
 * name) and read back each tensor's bytes from where the header says they are. Built with ASan +
 * UBSan. The input is written to an in-memory file (memfd) and opened by its /proc path; its
 * length chooses the grouping (automatic, by depth 1 or 2, or a layer per tensor) and the alignment. */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "vramcache_safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static int fd = -1;
    static char path[64];
    if (fd < 0) {
        fd = memfd_create("fuzz.safetensors", 0);
        if (fd < 0) __builtin_trap();
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    }
    if (ftruncate(fd, 0) != 0 || (size && pwrite(fd, data, size, 0) != (ssize_t)size)) __builtin_trap();
    /* the input's length picks the grouping and the alignment, so every input tries one of each */
    vc_safetensors_options o;
    vc_safetensors_options_init(&o);
    o.group_depth = size % 4 == 3 ? VC_SAFETENSORS_EACH_TENSOR : (unsigned)(size % 4);
    o.tensor_alignment = (size_t)1 << (size % 9);
    vc_safetensors *st = (vc_safetensors *)1;
    int status = vc_safetensors_open(path, &o, &st);
    if (status != VC_OK) {
        if (st || strlen(vc_last_error()) == 0 || !strstr(vc_last_error(), path)) __builtin_trap();
        if (status != VC_ERR_FORMAT && status != VC_ERR_TOO_LARGE) __builtin_trap();
        return 0;
    }
    size_t n = vc_safetensors_tensor_count(st), seen = 0;
    for (size_t li = 0; li < vc_safetensors_layer_count(st); li++) {
        const vc_safetensors_layer *l = vc_safetensors_get_layer(st, li);
        if (l->first_tensor != seen || l->tensor_count == 0 || !l->name) __builtin_trap();
        seen += l->tensor_count;
        unsigned char *buf = l->bytes ? malloc((size_t)l->bytes) : NULL;
        if (l->bytes && (!buf || vc_safetensors_read_layer(st, li, buf, (size_t)l->bytes) != VC_OK)) __builtin_trap();
        for (size_t k = 0; k < l->tensor_count; k++) {
            const vc_safetensors_tensor *t = vc_safetensors_get_tensor(st, l->first_tensor + k);
            size_t found;
            if (t->layer != li || t->layer_offset + t->bytes > l->bytes) __builtin_trap();
            if (t->bytes && t->layer_offset % o.tensor_alignment) __builtin_trap();
            if (o.group_depth == VC_SAFETENSORS_EACH_TENSOR && (l->tensor_count != 1 || strcmp(l->name, t->name))) __builtin_trap();
            if (t->file_offset + t->bytes > size || t->elements * t->bits != t->bytes * 8) __builtin_trap();
            if (vc_safetensors_find(st, t->name, &found) != VC_OK || found != l->first_tensor + k) __builtin_trap();
            if (t->bytes && memcmp(buf + t->layer_offset, data + t->file_offset, (size_t)t->bytes)) __builtin_trap();
        }
        free(buf);
    }
    if (seen != n) __builtin_trap();
    vc_safetensors_close(st);
    return 0;
}
