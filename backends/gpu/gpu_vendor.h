/*
 * One backend source for CUDA and HIP: gpu_backend.c is written against these gpu* names, which map
 * to the CUDA runtime (VC_GPU_CUDA) or HIP (VC_GPU_HIP), as ggml's vendor headers do.
 */
#ifndef VC_GPU_VENDOR_H
#define VC_GPU_VENDOR_H

#if defined(VC_GPU_HIP)
#ifndef __HIP_PLATFORM_AMD__
#define __HIP_PLATFORM_AMD__ 1
#endif
#include <hip/hip_runtime_api.h>
#define GPU_NAME "hip"
#define GPU_VENDOR "HIP"
#define gpuError_t hipError_t
#define gpuSuccess hipSuccess
#define gpuErrorNotReady hipErrorNotReady
#define gpuGetErrorString hipGetErrorString
#define gpuGetDeviceCount hipGetDeviceCount
#define gpuGetDevice hipGetDevice
#define gpuSetDevice hipSetDevice
#define gpuMalloc hipMalloc
#define gpuFree hipFree
#define gpuMallocAsync hipMallocAsync
#define gpuFreeAsync hipFreeAsync
#define gpuHostAlloc(p, n) hipHostMalloc((p), (n), hipHostMallocPortable)
#define gpuFreeHost hipHostFree
#define gpuStream_t hipStream_t
#define gpuStreamCreateNonBlocking(s) hipStreamCreateWithFlags((s), hipStreamNonBlocking)
#define gpuStreamDestroy hipStreamDestroy
#define gpuStreamSynchronize hipStreamSynchronize
#define gpuMemcpyAsync hipMemcpyAsync
#define gpuMemcpyHostToDevice hipMemcpyHostToDevice
#define gpuMemcpyDeviceToHost hipMemcpyDeviceToHost
#define gpuEvent_t hipEvent_t
#define gpuEventCreateNoTiming(e) hipEventCreateWithFlags((e), hipEventDisableTiming)
#define gpuEventCreateTimed(e) hipEventCreate(e)
#define gpuEventElapsedTime hipEventElapsedTime
#define gpuEventDestroy hipEventDestroy
#define gpuEventRecord hipEventRecord
#define gpuEventQuery hipEventQuery
#define gpuEventSynchronize hipEventSynchronize
#define gpuStreamWaitEvent(s, e) hipStreamWaitEvent((s), (e), 0)
#define gpuMemGetInfo hipMemGetInfo
#define gpuDeviceProp hipDeviceProp_t
#define gpuGetDeviceProperties hipGetDeviceProperties
#define gpuPointerAttributes hipPointerAttribute_t
#define gpuPointerGetAttributes hipPointerGetAttributes
/* HIP 6 renamed hipPointerAttribute_t's memoryType to type (as CUDA 11 had done) */
#if HIP_VERSION_MAJOR >= 6
#define GPU_ATTR_IS_PINNED(a) ((a).type == hipMemoryTypeHost)
#else
#define GPU_ATTR_IS_PINNED(a) ((a).memoryType == hipMemoryTypeHost)
#endif
#define gpuGetLastError hipGetLastError
#else
#include <cuda_runtime_api.h>
#define GPU_NAME "cuda"
#define GPU_VENDOR "CUDA"
#define gpuError_t cudaError_t
#define gpuSuccess cudaSuccess
#define gpuErrorNotReady cudaErrorNotReady
#define gpuGetErrorString cudaGetErrorString
#define gpuGetDeviceCount cudaGetDeviceCount
#define gpuGetDevice cudaGetDevice
#define gpuSetDevice cudaSetDevice
#define gpuMalloc cudaMalloc
#define gpuFree cudaFree
#define gpuMallocAsync cudaMallocAsync
#define gpuFreeAsync cudaFreeAsync
/* Portable: a RAM pool may serve caches on several GPUs (shared layers), and memory pinned for one
 * context alone would be pageable, i.e. synchronous copies, for the others. */
#define gpuHostAlloc(p, n) cudaHostAlloc((p), (n), cudaHostAllocPortable)
#define gpuFreeHost cudaFreeHost
#define gpuStream_t cudaStream_t
#define gpuStreamCreateNonBlocking(s) cudaStreamCreateWithFlags((s), cudaStreamNonBlocking)
#define gpuStreamDestroy cudaStreamDestroy
#define gpuStreamSynchronize cudaStreamSynchronize
#define gpuMemcpyAsync cudaMemcpyAsync
#define gpuMemcpyHostToDevice cudaMemcpyHostToDevice
#define gpuMemcpyDeviceToHost cudaMemcpyDeviceToHost
#define gpuEvent_t cudaEvent_t
#define gpuEventCreateNoTiming(e) cudaEventCreateWithFlags((e), cudaEventDisableTiming)
#define gpuEventCreateTimed(e) cudaEventCreate(e)
#define gpuEventElapsedTime cudaEventElapsedTime
#define gpuEventDestroy cudaEventDestroy
#define gpuEventRecord cudaEventRecord
#define gpuEventQuery cudaEventQuery
#define gpuEventSynchronize cudaEventSynchronize
#define gpuStreamWaitEvent(s, e) cudaStreamWaitEvent((s), (e), 0)
#define gpuMemGetInfo cudaMemGetInfo
#define gpuDeviceProp struct cudaDeviceProp
#define gpuGetDeviceProperties cudaGetDeviceProperties
#define gpuPointerAttributes struct cudaPointerAttributes
#define gpuPointerGetAttributes cudaPointerGetAttributes
#define GPU_ATTR_IS_PINNED(a) ((a).type == cudaMemoryTypeHost)
#define gpuGetLastError cudaGetLastError
#if defined(VC_WITH_NVTX)
#include <nvtx3/nvToolsExt.h>
#endif
#endif

#endif /* VC_GPU_VENDOR_H */
