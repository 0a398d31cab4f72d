/*
 * libvramcache GPU backends, for engines that link them in directly. Most engines need none of
 * this: the core loads libvramcache-cuda.so / libvramcache-hip.so at run time when the config says
 * `device: auto`, `cuda[:N]` or `hip[:N]` (vc_config_create_backend). Linking a backend statically
 * (vramcache::vramcache_cuda_static) makes these functions available and the core uses them too.
 *
 * Memory: device memory comes in arena segments (cudaMalloc, rarely); the RAM pool is pinned
 * (cudaHostAlloc) up to a pinned budget — VRAMCACHE_PINNED_BUDGET_GB, default half of the RAM this
 * process may use — and pageable beyond it, in which case host→device copies go through a ring of
 * pinned staging buffers so they stay asynchronous. Streams are non-blocking; events have timing
 * off unless VRAMCACHE_EVENT_TIMING=1 (then traces show copies with the device's times). Uploads,
 * evictions and reservations are NVTX ranges (CUDA) for Nsight Systems.
 */
#ifndef VRAMCACHE_GPU_H
#define VRAMCACHE_GPU_H

#include "vramcache.h"

#ifdef __cplusplus
extern "C" {
#endif

/** Creates a backend for CUDA device `device` (0-based). `why` (may be NULL) receives what was
 *  found ("NVIDIA H100 80GB HBM3, 79.1 GB") or why nothing was: no driver, no device, an index out
 *  of range. The backend is owned by the caller (vc_backend_destroy, after every cache over it);
 *  it may be shared by several caches and used from any thread, and each operation switches to its
 *  device only for its duration, leaving the calling thread's current device as it found it.
 *  Thread-safe. Errors (*out NULL): VC_ERR_NO_DEVICE, VC_ERR_INVALID_ARG, VC_ERR_NO_MEMORY,
 *  VC_ERR_BACKEND. */
VC_API int vc_backend_cuda_create(int device, vc_backend **out, char *why, size_t why_size);
/** The same for HIP (AMD GPUs). */
VC_API int vc_backend_hip_create(int device, vc_backend **out, char *why, size_t why_size);

#ifdef __cplusplus
}
#endif

#endif /* VRAMCACHE_GPU_H */
