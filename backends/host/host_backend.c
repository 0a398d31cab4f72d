/*
 * Host backend: "device memory" is host memory with a capacity, so the whole cache runs and is
 * tested without a GPU. Copies are memcpy and complete when issued; events are therefore always
 * complete and streams are placeholders. Capacity accounting is exact and thread-safe, and
 * vc_backend_host_set_external_usage() simulates memory taken by other processes.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "../../src/cache_internal.h"

typedef struct host_ctx {
    pthread_mutex_t lock;
    size_t capacity;
    size_t used;     /* device_alloc'ed bytes */
    size_t external; /* pretend other processes use this much */
} host_ctx;

/* Every allocation carries its size in a header so that device_free can account it. */
#define HOST_HDR ((size_t)4096)

static int host_device_alloc(void *ctx, size_t bytes, void **dptr) {
    host_ctx *h = ctx;
    pthread_mutex_lock(&h->lock);
    size_t avail = sat_sub(h->capacity, sat_add(h->used, h->external));
    if (bytes > avail || bytes > SIZE_MAX - HOST_HDR) {
        pthread_mutex_unlock(&h->lock);
        vc_backend_set_error("host device: %zu bytes requested, %zu free of %zu", bytes, avail,
                             h->capacity);
        return VC_ERR_OUT_OF_VRAM;
    }
    h->used += bytes;
    pthread_mutex_unlock(&h->lock);
    /* Page-aligned, like device memory; the header keeps the size. */
    char *p = aligned_alloc(HOST_HDR, (bytes + 2 * HOST_HDR - 1) / HOST_HDR * HOST_HDR);
    if (!p) {
        pthread_mutex_lock(&h->lock);
        h->used -= bytes;
        pthread_mutex_unlock(&h->lock);
        vc_backend_set_error("host device: aligned_alloc of %zu bytes failed", bytes);
        return VC_ERR_OUT_OF_VRAM;
    }
    memcpy(p, &bytes, sizeof bytes);
    *dptr = p + HOST_HDR;
    return VC_OK;
}

static void host_device_free(void *ctx, void *dptr) {
    if (!dptr) return;
    host_ctx *h = ctx;
    char *p = (char *)dptr - HOST_HDR;
    size_t bytes;
    memcpy(&bytes, p, sizeof bytes);
    free(p);
    pthread_mutex_lock(&h->lock);
    h->used -= bytes;
    pthread_mutex_unlock(&h->lock);
}

static int host_host_alloc(void *ctx, size_t bytes, void **hptr, int *pinned) {
    (void)ctx;
    void *p = malloc(bytes ? bytes : 1);
    if (!p) {
        vc_backend_set_error("host: malloc of %zu bytes failed", bytes);
        return VC_ERR_NO_MEMORY;
    }
    *hptr = p;
    *pinned = 0;
    return VC_OK;
}

static void host_host_free(void *ctx, void *hptr, size_t bytes, int pinned) {
    (void)ctx;
    (void)pinned;
    (void)bytes;
    free(hptr);
}

/* Streams and events carry no state: work completes when issued. A distinct non-NULL token keeps
 * "no stream" (NULL) distinguishable from the cache's own streams. */
static char host_token;

static int host_stream_create(void *ctx, vc_stream *s) {
    (void)ctx;
    *s = &host_token;
    return VC_OK;
}
static void host_stream_destroy(void *ctx, vc_stream s) {
    (void)ctx;
    (void)s;
}
static int host_copy(void *ctx, void *dst, const void *src, size_t bytes, vc_stream s) {
    (void)ctx;
    (void)s;
    memcpy(dst, src, bytes);
    return VC_OK;
}
static int host_event_create(void *ctx, void **ev) {
    (void)ctx;
    *ev = &host_token;
    return VC_OK;
}
static void host_event_destroy(void *ctx, void *ev) {
    (void)ctx;
    (void)ev;
}
static int host_event_record(void *ctx, void *ev, vc_stream s) {
    (void)ctx;
    (void)ev;
    (void)s;
    return VC_OK;
}
static int host_event_query(void *ctx, void *ev) {
    (void)ctx;
    (void)ev;
    return 1;
}
static int host_event_sync(void *ctx, void *ev) {
    (void)ctx;
    (void)ev;
    return VC_OK;
}
static int host_stream_wait(void *ctx, vc_stream s, void *ev) {
    (void)ctx;
    (void)s;
    (void)ev;
    return VC_OK;
}
static int host_mem_info(void *ctx, size_t *free_bytes, size_t *total) {
    host_ctx *h = ctx;
    pthread_mutex_lock(&h->lock);
    *free_bytes = sat_sub(h->capacity, sat_add(h->used, h->external));
    *total = h->capacity;
    pthread_mutex_unlock(&h->lock);
    return VC_OK;
}
static void host_destroy(void *ctx) {
    host_ctx *h = ctx;
    pthread_mutex_destroy(&h->lock);
    free(h);
}

static const vc_backend_ops host_ops = {
    .abi_version = VC_BACKEND_ABI_VERSION,
    .name = "host",
    .kind = VC_BACKEND_KIND_HOST,
    .device_alloc = host_device_alloc,
    .device_free = host_device_free,
    .host_alloc = host_host_alloc,
    .host_free = host_host_free,
    .stream_create = host_stream_create,
    .stream_destroy = host_stream_destroy,
    .copy_h2d = host_copy,
    .copy_d2h = host_copy,
    .event_create = host_event_create,
    .event_destroy = host_event_destroy,
    .event_record = host_event_record,
    .event_query = host_event_query,
    .event_synchronize = host_event_sync,
    .stream_wait_event = host_stream_wait,
    .mem_info = host_mem_info,
    .destroy = host_destroy,
};

int vc_backend_host_create(size_t capacity, vc_backend **out) {
    if (!out) return vc__fail(NULL, VC_ERR_INVALID_ARG, "vc_backend_host_create: out is NULL");
    *out = NULL;
    host_ctx *h = calloc(1, sizeof(*h));
    if (!h) return vc__fail(NULL, VC_ERR_NO_MEMORY, "vc_backend_host_create: out of host memory");
    pthread_mutex_init(&h->lock, NULL);
    h->capacity = capacity ? capacity : vc_system_ram(NULL, 0);
    int st = vc_backend_create(&host_ops, h, out);
    if (st != VC_OK) host_destroy(h);
    return st;
}

int vc_backend_host_set_external_usage(vc_backend *b, size_t bytes) {
    if (!b || b->ops != &host_ops)
        return vc__fail(NULL, VC_ERR_INVALID_ARG,
                        "vc_backend_host_set_external_usage: not a host backend");
    host_ctx *h = b->ctx;
    pthread_mutex_lock(&h->lock);
    h->external = bytes;
    pthread_mutex_unlock(&h->lock);
    return VC_OK;
}
