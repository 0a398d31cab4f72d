/*
 * libvramcache backend interface — for authors of device backends, not for engines.
 *
 * A backend is a table of operations (vc_backend_ops) plus a context pointer. The cache calls them
 * with its lock held, so every operation must be quick and non-blocking except where noted
 * (event_synchronize and the synchronous paths of copies on the host backend). Operations that
 * return int return VC_OK or a negative vc_status (normally VC_ERR_BACKEND or VC_ERR_OUT_OF_VRAM);
 * a backend may call vc_backend_set_error() first to explain.
 *
 * Streams and events are opaque void* owned by the backend. The cache creates its own copy streams
 * (uploads, downloads) and events; engine streams are passed through untouched.
 *
 * Thread safety: a backend may be shared by several caches and used from several threads at once;
 * each operation must be safe to call concurrently with any other.
 */
#ifndef VRAMCACHE_BACKEND_H
#define VRAMCACHE_BACKEND_H

#include "vramcache.h"

#ifdef __cplusplus
extern "C" {
#endif

/** Bumped whenever vc_backend_ops changes incompatibly. A backend module built against another
 *  version is refused by vc_backend_create(). */
#define VC_BACKEND_ABI_VERSION 1u

/** What a backend's memory is. */
typedef enum vc_backend_kind {
    VC_BACKEND_KIND_HOST = 0, /**< Device memory is host memory (no GPU). */
    VC_BACKEND_KIND_GPU = 1   /**< A real accelerator with its own memory. */
} vc_backend_kind;

typedef struct vc_backend_ops {
    unsigned abi_version; /**< VC_BACKEND_ABI_VERSION. */
    const char *name;     /**< "host", "cuda", "hip", ...; static. */
    vc_backend_kind kind;

    /** Device memory. Called rarely (arena segments, reservation buffers): may synchronise.
     *  The address must be aligned to at least 256 bytes, as cudaMalloc's and hipMalloc's are;
     *  the cache refuses a segment that is not (VC_ERR_BACKEND, with the address in the message).
     *  device_free may be called while work that used the memory is still queued: the backend
     *  must make that safe (cudaFree synchronises; a pool would defer the free). */
    int (*device_alloc)(void *ctx, size_t bytes, void **dptr);
    void (*device_free)(void *ctx, void *dptr);

    /** Host memory for the RAM pool; pinned (page-locked) where the backend can, so copies are
     *  asynchronous. *pinned reports whether it is. May fall back to pageable memory. */
    int (*host_alloc)(void *ctx, size_t bytes, void **hptr, int *pinned);
    void (*host_free)(void *ctx, void *hptr, size_t bytes, int pinned); /* bytes as allocated */

    int (*stream_create)(void *ctx, vc_stream *stream);
    void (*stream_destroy)(void *ctx, vc_stream stream);

    /** Asynchronous copies ordered on `stream`. The source must stay valid until the copy
     *  completes (the cache tracks that with an event recorded after it). */
    int (*copy_h2d)(void *ctx, void *dst, const void *src, size_t bytes, vc_stream stream);
    int (*copy_d2h)(void *ctx, void *dst, const void *src, size_t bytes, vc_stream stream);

    int (*event_create)(void *ctx, void **event);
    void (*event_destroy)(void *ctx, void *event);
    /** Captures the work queued on `stream` so far. */
    int (*event_record)(void *ctx, void *event, vc_stream stream);
    /** Returns 1 when the captured work is complete (or the event was never recorded), 0 when
     *  pending, a negative status on error. Never blocks. */
    int (*event_query)(void *ctx, void *event);
    /** Blocks the host until the event completes. Used only off the hot path. */
    int (*event_synchronize)(void *ctx, void *event);
    /** Makes later work on `stream` wait for `event`, without blocking the host. */
    int (*stream_wait_event)(void *ctx, vc_stream stream, void *event);

    /** Free and total device memory, as other processes see it. */
    int (*mem_info)(void *ctx, size_t *free_bytes, size_t *total_bytes);

    /** Frees the context; called by vc_backend_destroy(). May be NULL. */
    void (*destroy)(void *ctx);

    /** Optional (may be NULL): the backend's clock in seconds (virtual for the simulator), used to
     *  time-stamp traces. NULL: the cache uses CLOCK_MONOTONIC. */
    double (*now)(void *ctx);
    /** Optional (may be NULL): when a recorded event completes(d), in now()'s seconds
     *  (CLOCK_MONOTONIC seconds when now is NULL), or a negative value while unknown. A backend may
     *  know it when the event is recorded (the simulator) or only once it has completed (a GPU's
     *  time stamps): the cache asks again after event_query reports completion. Lets traces show
     *  copies as they run on the device. */
    double (*event_time)(void *ctx, void *event);

    /** Optional: a named range for profilers (NVTX on CUDA), pushed and popped around uploads,
     *  evictions and reservations. */
    void (*range_push)(void *ctx, const char *name);
    void (*range_pop)(void *ctx);

    /** Optional: stream-ordered allocation (cudaMallocAsync) for working-memory buffers, used when
     *  the cache is created with stream_ordered_working_mem. */
    int (*device_alloc_async)(void *ctx, size_t bytes, vc_stream stream, void **dptr);
    void (*device_free_async)(void *ctx, void *dptr, vc_stream stream);
} vc_backend_ops;

/** Wraps an operation table and its context in a vc_backend handle. `ops` is borrowed and must
 *  outlive the handle (normally a static table); `ctx` is owned by the handle and passed to
 *  ops->destroy by vc_backend_destroy(). Every function pointer is required except destroy, now,
 *  event_time, range_push/range_pop and device_alloc_async/device_free_async.
 *  Errors: VC_ERR_INVALID_ARG (NULL, missing operations), VC_ERR_UNSUPPORTED (ABI version
 *  mismatch), VC_ERR_NO_MEMORY. On failure the context is not destroyed. */
VC_API int vc_backend_create(const vc_backend_ops *ops, void *ctx, vc_backend **out);

/** The table and context of a backend (for wrappers such as fault injection). */
VC_API const vc_backend_ops *vc_backend_get_ops(const vc_backend *backend);
VC_API void *vc_backend_get_ctx(const vc_backend *backend);

/** Lets a backend operation explain its failure: the message becomes the detail of the error the
 *  cache reports for the failing call on this thread. printf-style. */
VC_API void vc_backend_set_error(const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 1, 2)))
#endif
    ;

#ifdef __cplusplus
}
#endif

#endif /* VRAMCACHE_BACKEND_H */
