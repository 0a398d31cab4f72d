/*
 * libvramcache fault injection — a backend that wraps another and makes chosen operations fail, by
 * count or at random with a seed, so engines and the library's own tests can check that every
 * failure ends in a clear error and a consistent cache.
 *
 * Threads: the wrapper's counters are protected by a mutex; operations are forwarded as they come.
 */
#ifndef VRAMCACHE_FAULT_H
#define VRAMCACHE_FAULT_H

#include <stdint.h>

#include "vramcache.h"

#ifdef __cplusplus
extern "C" {
#endif

/** Operations that can be made to fail. */
typedef enum vc_fault_op {
    VC_FAULT_DEVICE_ALLOC = 0, /**< device_alloc: reported as VC_ERR_OUT_OF_VRAM (device out of memory) */
    VC_FAULT_HOST_ALLOC,       /**< host_alloc (pinned or not): VC_ERR_NO_MEMORY */
    VC_FAULT_COPY_H2D,         /**< copy_h2d: VC_ERR_BACKEND */
    VC_FAULT_COPY_D2H,         /**< copy_d2h: VC_ERR_BACKEND */
    VC_FAULT_EVENT,            /**< event_create, event_record, stream_wait_event, event_synchronize;
                                    event_query answers "unknown" (negative) */
    VC_FAULT_STREAM_CREATE,    /**< stream_create: VC_ERR_BACKEND */
    VC_FAULT_MEM_INFO,         /**< mem_info: VC_ERR_BACKEND */
    VC_FAULT_LOADER,           /**< loader calls made through vc_fault_loader (the cache reports
                                    VC_ERR_LOADER) */
    VC_FAULT_OP_COUNT
} vc_fault_op;

/** Wraps `inner` (borrowed: it must outlive the wrapper). With no fault armed the wrapper forwards
 *  everything unchanged. Errors: VC_ERR_INVALID_ARG, VC_ERR_NO_MEMORY. */
VC_API int vc_backend_fault_create(vc_backend *inner, vc_backend **out);

/** Makes the n-th call of `op` from now fail (n = 1: the next one); n = 0 disarms it. Each arming
 *  fails exactly one call. Errors: VC_ERR_INVALID_ARG (not a fault backend, bad op). */
VC_API int vc_fault_fail_nth(vc_backend *fault, vc_fault_op op, unsigned long n);

/** Makes every call of `op` fail with probability p (0 disarms), drawn from a generator seeded
 *  with `seed`, so a run can be replayed. */
VC_API int vc_fault_fail_random(vc_backend *fault, vc_fault_op op, double p, uint64_t seed);

/** Makes every call of `op` fail while `on` is non-zero (an outage). */
VC_API int vc_fault_fail_always(vc_backend *fault, vc_fault_op op, int on);

/** Calls of `op` so far and how many were failed on purpose. Either output may be NULL. */
VC_API int vc_fault_counts(vc_backend *fault, vc_fault_op op, unsigned long *calls, unsigned long *failed);

/** Loader faults: register a layer with `loader = vc_fault_loader` and `loader_user` pointing at a
 *  vc_fault_loader_ctx; each call counts as a VC_FAULT_LOADER operation of `fault` and, unless it
 *  fires, calls `inner(inner_user, ...)`. The context is borrowed for the layer's lifetime. */
typedef struct vc_fault_loader_ctx {
    vc_backend *fault;
    vc_loader_fn inner;
    void *inner_user;
} vc_fault_loader_ctx;

VC_API int vc_fault_loader(void *user, vc_layer_id layer, void *dst, size_t bytes);

/** Makes the device look `capacity` bytes large, `external` of them taken by other processes:
 *  device allocations beyond capacity - external fail with VC_ERR_OUT_OF_VRAM, and mem_info reports
 *  total = capacity and free = the lesser of what the cap leaves and what the real device has. This
 *  runs a cache on a large GPU as if it were a small one (the library's core tests use it to run on
 *  CUDA), and `external` simulates other programs' usage. Call it before the first device
 *  allocation; later calls may change both figures. capacity = 0 changes nothing (a cap, once set,
 *  stays). Errors: VC_ERR_INVALID_ARG (not a fault backend), VC_ERR_BUSY (memory was allocated before
 *  the first cap, so the wrapper cannot account it). Thread-safe. */
VC_API int vc_fault_set_device_capacity(vc_backend *fault, size_t capacity, size_t external);

/** With `on`, event_time reports an event's time only once the event has completed, as a GPU's
 *  (whose events are stamped when they run) does, instead of as soon as it is recorded, as the
 *  simulator can: the cache's traces then take the path they take on a GPU. Errors:
 *  VC_ERR_INVALID_ARG (not a fault backend). Thread-safe. */
VC_API int vc_fault_late_event_times(vc_backend *fault, int on);

/** Disarms every fault (counters stay). */
VC_API int vc_fault_clear(vc_backend *fault);

#ifdef __cplusplus
}
#endif

#endif /* VRAMCACHE_FAULT_H */
