/* The vc_backend handle: an operation table plus its context. */
#include <stdlib.h>

#include "cache_internal.h"

int vc_backend_create(const vc_backend_ops *ops, void *ctx, vc_backend **out) {
    if (!out) return vc__fail(NULL, VC_ERR_INVALID_ARG, "vc_backend_create: out is NULL");
    *out = NULL;
    if (!ops) return vc__fail(NULL, VC_ERR_INVALID_ARG, "vc_backend_create: ops is NULL");
    if (ops->abi_version != VC_BACKEND_ABI_VERSION)
        return vc__fail(NULL, VC_ERR_UNSUPPORTED,
                        "vc_backend_create: backend '%s' was built for backend ABI %u, this library "
                        "implements ABI %u",
                        ops->name ? ops->name : "?", ops->abi_version, VC_BACKEND_ABI_VERSION);
    if (!ops->name || !ops->device_alloc || !ops->device_free || !ops->host_alloc ||
        !ops->host_free || !ops->stream_create || !ops->stream_destroy || !ops->copy_h2d ||
        !ops->copy_d2h || !ops->event_create || !ops->event_destroy || !ops->event_record ||
        !ops->event_query || !ops->event_synchronize || !ops->stream_wait_event || !ops->mem_info)
        return vc__fail(NULL, VC_ERR_INVALID_ARG,
                        "vc_backend_create: backend '%s' lacks a required operation (every member "
                        "of vc_backend_ops except destroy must be set)",
                        ops->name ? ops->name : "?");
    vc_backend *b = calloc(1, sizeof(*b));
    if (!b) return vc__fail(NULL, VC_ERR_NO_MEMORY, "vc_backend_create: out of host memory");
    b->ops = ops;
    b->ctx = ctx;
    *out = b;
    return VC_OK;
}

const vc_backend_ops *vc_backend_get_ops(const vc_backend *b) { return b ? b->ops : NULL; }
void *vc_backend_get_ctx(const vc_backend *b) { return b ? b->ctx : NULL; }
const char *vc_backend_name(const vc_backend *b) { return b && b->ops->name ? b->ops->name : ""; }

int vc_backend_mem_info(vc_backend *b, size_t *free_bytes, size_t *total_bytes) {
    if (!b) return vc__fail(NULL, VC_ERR_INVALID_ARG, "vc_backend_mem_info: backend is NULL");
    size_t f = 0, t = 0;
    int st = b->ops->mem_info(b->ctx, &f, &t);
    if (st != VC_OK)
        return vc__fail(NULL, VC_ERR_BACKEND, "vc_backend_mem_info: backend '%s' failed: %s",
                        b->ops->name, vc__take_backend_error());
    if (free_bytes) *free_bytes = f;
    if (total_bytes) *total_bytes = t;
    return VC_OK;
}

void vc_backend_destroy(vc_backend *b) {
    if (!b) return;
    if (b->ops->destroy) b->ops->destroy(b->ctx);
    free(b->owned_ops);
    free(b);
}
