/*
 * The GPU backend, compiled twice from this one source: with VC_GPU_CUDA against the CUDA runtime
 * and with VC_GPU_HIP against HIP (gpu_vendor.h maps the names). Built as run-time modules
 * (libvramcache-cuda.so, libvramcache-hip.so) that the core loads with dlopen, so the core has no
 * hard dependency on cudart or amdhip64, and as static libraries for engines that link them in.
 *
 * Nothing here synchronises the device on the hot path: copies are cudaMemcpyAsync on the cache's
 * non-blocking streams, ordering is by events, and the only host waits are event_synchronize (which
 * the cache uses off the hot path) and the staging ring waiting for its own oldest slot.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gpu_vendor.h"
#include "vramcache_backend.h"
#include "vramcache_gpu.h"

/* Only the public API is used here: as a module this file links against the shared core. */
#define GPU_GB ((size_t)1 << 30)

#if defined(VC_GPU_HIP)
#define GPU_CREATE vc_backend_hip_create
#else
#define GPU_CREATE vc_backend_cuda_create
#endif

#define STAGING_SLOTS 4
#define STAGING_BYTES ((size_t)32 << 20)

typedef struct gpu_ctx {
    int device;
    pthread_mutex_t lock;
    size_t pinned_budget, pinned_used;
    void *staging[STAGING_SLOTS]; /* pinned bounce buffers for pageable sources */
    gpuEvent_t staging_ev[STAGING_SLOTS];
    int staging_next;
    gpuStream_t pool_stream; /* stream-ordered working-memory buffers: created on first use */
    /* VRAMCACHE_EVENT_TIMING=1: events keep device time stamps, so traces show copies as they ran.
     * base_ev completed at base_s (CLOCK_MONOTONIC seconds); event_time measures from it. Off by
     * default: events without timing are the cheapest to record, wait on and query. */
    int timing;
    gpuEvent_t base_ev;
    double base_s;
    char name[256];
} gpu_ctx;

static double mono_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int fail(gpuError_t e, const char *what) {
    vc_backend_set_error("%s: %s (%d)", what, gpuGetErrorString(e), (int)e);
    gpuGetLastError(); /* clear sticky-free errors so the next call starts clean */
    return VC_ERR_BACKEND;
}

/* The calling thread's current device belongs to the engine (it may drive several GPUs from one
 * thread): each operation switches to this backend's device only if needed and switches back before
 * it returns. With one GPU the switch never happens. */
typedef struct dev_guard {
    int prev, switched;
} dev_guard;

static gpuError_t enter(const gpu_ctx *g, dev_guard *d) {
    d->switched = 0;
    if (gpuGetDevice(&d->prev) != gpuSuccess) {
        gpuGetLastError();
        d->prev = -1;
    }
    if (d->prev == g->device) return gpuSuccess;
    gpuError_t e = gpuSetDevice(g->device);
    d->switched = e == gpuSuccess && d->prev >= 0;
    return e;
}

static void leave(const dev_guard *d) {
    if (d->switched) gpuSetDevice(d->prev);
}

/* The value is computed before the device is switched back: `return LEAVE(staged_h2d(...))` must run
 * the copy on the backend's device (a comma expression here once ran it on the caller's, where its
 * staging event could not be recorded on the backend's stream). */
static int leave_with(const dev_guard *d, int value) {
    leave(d);
    return value;
}

/* Opens a function body on the backend's device; every return after it goes through LEAVE. */
#define ON_DEVICE(g)                                                                               \
    dev_guard guard_;                                                                              \
    do {                                                                                           \
        gpuError_t e_ = enter((g), &guard_);                                                       \
        if (e_ != gpuSuccess) return fail(e_, GPU_NAME " set device");                             \
    } while (0)
#define LEAVE(value) leave_with(&guard_, (value))

static int g_device_alloc(void *ctx, size_t bytes, void **p) {
    gpu_ctx *g = ctx;
    ON_DEVICE(g);
    gpuError_t e = gpuMalloc(p, bytes);
    if (e != gpuSuccess) {
        fail(e, GPU_NAME " device allocation");
        return LEAVE(VC_ERR_OUT_OF_VRAM);
    }
    return LEAVE(VC_OK);
}

static void g_device_free(void *ctx, void *p) {
    gpu_ctx *g = ctx;
    dev_guard d;
    enter(g, &d);
    gpuFree(p); /* synchronises: safe while work that used the memory is queued */
    leave(&d);
}

static int g_host_alloc(void *ctx, size_t bytes, void **p, int *pinned) {
    gpu_ctx *g = ctx;
    pthread_mutex_lock(&g->lock);
    int pin = bytes <= g->pinned_budget - g->pinned_used;
    if (pin) g->pinned_used += bytes;
    pthread_mutex_unlock(&g->lock);
    if (pin) {
        dev_guard d;
        enter(g, &d);
        gpuError_t e = gpuHostAlloc(p, bytes);
        leave(&d);
        if (e == gpuSuccess) {
            *pinned = 1;
            return VC_OK;
        }
        gpuGetLastError();
        pthread_mutex_lock(&g->lock);
        g->pinned_used -= bytes;
        pthread_mutex_unlock(&g->lock);
    }
    /* Beyond the pinned budget (or if pinning failed): pageable, uploaded through staging. */
    *p = malloc(bytes ? bytes : 1);
    *pinned = 0;
    if (!*p) {
        vc_backend_set_error(GPU_NAME ": host allocation of %zu bytes failed", bytes);
        return VC_ERR_NO_MEMORY;
    }
    return VC_OK;
}

static void g_host_free(void *ctx, void *p, size_t bytes, int pinned) {
    gpu_ctx *g = ctx;
    if (!pinned) {
        free(p);
        return;
    }
    gpuFreeHost(p);
    pthread_mutex_lock(&g->lock);
    g->pinned_used -= bytes <= g->pinned_used ? bytes : g->pinned_used;
    pthread_mutex_unlock(&g->lock);
}

static int g_stream_create(void *ctx, vc_stream *s) {
    gpu_ctx *g = ctx;
    ON_DEVICE(g);
    gpuStream_t st;
    gpuError_t e = gpuStreamCreateNonBlocking(&st);
    if (e != gpuSuccess) return LEAVE(fail(e, GPU_NAME " stream creation"));
    *s = (vc_stream)st;
    return LEAVE(VC_OK);
}

static void g_stream_destroy(void *ctx, vc_stream s) {
    gpu_ctx *g = ctx;
    dev_guard d;
    enter(g, &d);
    gpuStreamDestroy((gpuStream_t)s);
    leave(&d);
}

static int is_pinned(const void *p) {
    gpuPointerAttributes a;
    memset(&a, 0, sizeof a);
    if (gpuPointerGetAttributes(&a, p) != gpuSuccess) {
        gpuGetLastError(); /* plain malloc memory: not registered */
        return 0;
    }
    return GPU_ATTR_IS_PINNED(a);
}

/* A pageable source would make cudaMemcpyAsync synchronous: bounce it through pinned slots. Each
 * slot is reused once the copy that read it has finished (the only host wait in this file). */
static int staged_h2d(gpu_ctx *g, char *dst, const char *src, size_t n, gpuStream_t st) {
    pthread_mutex_lock(&g->lock);
    int st_ok = VC_OK;
    for (size_t off = 0; off < n && st_ok == VC_OK; off += STAGING_BYTES) {
        size_t chunk = n - off < STAGING_BYTES ? n - off : STAGING_BYTES;
        int k = g->staging_next;
        g->staging_next = (k + 1) % STAGING_SLOTS;
        gpuError_t e = gpuSuccess;
        if (!g->staging[k]) {
            e = gpuHostAlloc(&g->staging[k], STAGING_BYTES);
            if (e == gpuSuccess) e = gpuEventCreateNoTiming(&g->staging_ev[k]);
        } else {
            e = gpuEventSynchronize(g->staging_ev[k]);
        }
        if (e == gpuSuccess) {
            memcpy(g->staging[k], src + off, chunk);
            e = gpuMemcpyAsync(dst + off, g->staging[k], chunk, gpuMemcpyHostToDevice, st);
        }
        if (e == gpuSuccess) {
            e = gpuEventRecord(g->staging_ev[k], st);
            /* without its event the slot would next be overwritten while this copy may still read
             * it: wait for the stream now (slow, and only after a failure) */
            if (e != gpuSuccess) gpuStreamSynchronize(st);
        }
        if (e != gpuSuccess) st_ok = fail(e, GPU_NAME " staged host-to-device copy");
    }
    pthread_mutex_unlock(&g->lock);
    return st_ok;
}

static int g_copy_h2d(void *ctx, void *dst, const void *src, size_t n, vc_stream s) {
    gpu_ctx *g = ctx;
    ON_DEVICE(g);
    if (!is_pinned(src)) return LEAVE(staged_h2d(g, dst, src, n, (gpuStream_t)s));
    gpuError_t e = gpuMemcpyAsync(dst, src, n, gpuMemcpyHostToDevice, (gpuStream_t)s);
    return LEAVE(e == gpuSuccess ? VC_OK : fail(e, GPU_NAME " host-to-device copy"));
}

static int g_copy_d2h(void *ctx, void *dst, const void *src, size_t n, vc_stream s) {
    gpu_ctx *g = ctx;
    ON_DEVICE(g);
    gpuError_t e = gpuMemcpyAsync(dst, src, n, gpuMemcpyDeviceToHost, (gpuStream_t)s);
    return LEAVE(e == gpuSuccess ? VC_OK : fail(e, GPU_NAME " device-to-host copy"));
}

static int g_event_create(void *ctx, void **ev) {
    gpu_ctx *g = ctx;
    ON_DEVICE(g);
    gpuEvent_t e;
    gpuError_t r = g->timing ? gpuEventCreateTimed(&e) : gpuEventCreateNoTiming(&e);
    if (r != gpuSuccess) return LEAVE(fail(r, GPU_NAME " event creation"));
    *ev = (void *)e;
    return LEAVE(VC_OK);
}

static void g_event_destroy(void *ctx, void *ev) {
    (void)ctx;
    gpuEventDestroy((gpuEvent_t)ev);
}

/* A NULL stream is the legacy default stream of the backend's device, whichever device the calling
 * thread has current (an engine driving several GPUs from one thread): an event may only be recorded
 * on a stream of its own device. Named streams carry their device: no switch. */
static gpuError_t enter_for_stream(const gpu_ctx *g, vc_stream s, dev_guard *d) {
    d->switched = 0;
    return s ? gpuSuccess : enter(g, d);
}

static int g_event_record(void *ctx, void *ev, vc_stream s) {
    dev_guard d;
    gpuError_t e = enter_for_stream(ctx, s, &d);
    if (e == gpuSuccess) e = gpuEventRecord((gpuEvent_t)ev, (gpuStream_t)s);
    leave(&d);
    return e == gpuSuccess ? VC_OK : fail(e, GPU_NAME " event record");
}

static int g_event_query(void *ctx, void *ev) {
    (void)ctx;
    gpuError_t e = gpuEventQuery((gpuEvent_t)ev);
    if (e == gpuSuccess) return 1;
    if (e == gpuErrorNotReady) {
        gpuGetLastError();
        return 0;
    }
    return fail(e, GPU_NAME " event query");
}

static int g_event_sync(void *ctx, void *ev) {
    (void)ctx;
    gpuError_t e = gpuEventSynchronize((gpuEvent_t)ev);
    return e == gpuSuccess ? VC_OK : fail(e, GPU_NAME " event synchronize");
}

static int g_stream_wait(void *ctx, vc_stream s, void *ev) {
    dev_guard d;
    gpuError_t e = enter_for_stream(ctx, s, &d);
    if (e == gpuSuccess) e = gpuStreamWaitEvent((gpuStream_t)s, (gpuEvent_t)ev);
    leave(&d);
    return e == gpuSuccess ? VC_OK : fail(e, GPU_NAME " stream wait");
}

static int g_mem_info(void *ctx, size_t *free_b, size_t *total) {
    gpu_ctx *g = ctx;
    ON_DEVICE(g);
    gpuError_t e = gpuMemGetInfo(free_b, total);
    return LEAVE(e == gpuSuccess ? VC_OK : fail(e, GPU_NAME " memory info"));
}

/* With no stream (the cache's working-memory buffers, which the engine may use on any stream), the
 * buffer is taken on a private non-blocking stream that carries nothing else, and waited for there,
 * so it is ready for every stream when the pointer is returned. That wait covers one pool
 * allocation, never the engine's work: the legacy default stream would also wait for every
 * blocking stream. A free needs no wait: the caller has finished with the buffer (the contract of
 * vc_release_working_mem). */
static int g_alloc_async(void *ctx, size_t bytes, vc_stream s, void **p) {
    gpu_ctx *g = ctx;
    ON_DEVICE(g);
    gpuStream_t st = (gpuStream_t)s;
    gpuError_t e = gpuSuccess;
    if (!st) {
        pthread_mutex_lock(&g->lock);
        if (!g->pool_stream) e = gpuStreamCreateNonBlocking(&g->pool_stream);
        st = g->pool_stream;
        pthread_mutex_unlock(&g->lock);
    }
    if (e == gpuSuccess) e = gpuMallocAsync(p, bytes, st);
    if (e == gpuSuccess && !s) {
        e = gpuStreamSynchronize(st);
        if (e != gpuSuccess) gpuFreeAsync(*p, st);
    }
    if (e != gpuSuccess) {
        fail(e, GPU_NAME " stream-ordered allocation");
        return LEAVE(VC_ERR_OUT_OF_VRAM);
    }
    return LEAVE(VC_OK);
}

static void g_free_async(void *ctx, void *p, vc_stream s) {
    gpu_ctx *g = ctx;
    dev_guard d;
    enter(g, &d);
    gpuFreeAsync(p, s ? (gpuStream_t)s : g->pool_stream);
    leave(&d);
}

#if defined(VC_WITH_NVTX) && !defined(VC_GPU_HIP)
static void g_range_push(void *ctx, const char *name) {
    (void)ctx;
    nvtxRangePushA(name);
}
static void g_range_pop(void *ctx) {
    (void)ctx;
    nvtxRangePop();
}
#define RANGE_PUSH g_range_push
#define RANGE_POP g_range_pop
#else
#define RANGE_PUSH NULL
#define RANGE_POP NULL
#endif

static void g_destroy(void *ctx) {
    gpu_ctx *g = ctx;
    dev_guard d;
    enter(g, &d);
    for (int k = 0; k < STAGING_SLOTS; k++)
        if (g->staging[k]) {
            gpuEventSynchronize(g->staging_ev[k]);
            gpuEventDestroy(g->staging_ev[k]);
            gpuFreeHost(g->staging[k]);
        }
    if (g->pool_stream) gpuStreamDestroy(g->pool_stream);
    if (g->timing) gpuEventDestroy(g->base_ev);
    leave(&d);
    pthread_mutex_destroy(&g->lock);
    free(g);
}

/* When a recorded event completed, in CLOCK_MONOTONIC seconds (the cache's trace clock on a GPU);
 * negative without timing, or while the event is pending (the cache then asks again later). */
static double g_event_time(void *ctx, void *ev) {
    gpu_ctx *g = ctx;
    if (!g->timing) return -1.0;
    float ms = 0;
    if (gpuEventElapsedTime(&ms, g->base_ev, (gpuEvent_t)ev) != gpuSuccess) {
        gpuGetLastError(); /* not ready (or never recorded): not sticky */
        return -1.0;
    }
    return g->base_s + (double)ms * 1e-3;
}

/* The time base for event_time: an event recorded on an idle stream and waited for, stamped with the
 * host's clock as the wait returns (off by the wait's wake-up, microseconds). */
static int start_timing(gpu_ctx *g) {
    dev_guard d;
    if (enter(g, &d) != gpuSuccess) return 0;
    gpuStream_t s;
    int ok = gpuStreamCreateNonBlocking(&s) == gpuSuccess;
    if (ok) {
        ok = gpuEventCreateTimed(&g->base_ev) == gpuSuccess && gpuEventRecord(g->base_ev, s) == gpuSuccess &&
             gpuEventSynchronize(g->base_ev) == gpuSuccess;
        g->base_s = mono_s();
        gpuStreamDestroy(s);
    }
    if (!ok) gpuGetLastError();
    leave(&d);
    return ok;
}

static const vc_backend_ops gpu_ops = {
    .abi_version = VC_BACKEND_ABI_VERSION,
    .name = GPU_NAME,
    .kind = VC_BACKEND_KIND_GPU,
    .device_alloc = g_device_alloc,
    .device_free = g_device_free,
    .host_alloc = g_host_alloc,
    .host_free = g_host_free,
    .stream_create = g_stream_create,
    .stream_destroy = g_stream_destroy,
    .copy_h2d = g_copy_h2d,
    .copy_d2h = g_copy_d2h,
    .event_create = g_event_create,
    .event_destroy = g_event_destroy,
    .event_record = g_event_record,
    .event_query = g_event_query,
    .event_synchronize = g_event_sync,
    .stream_wait_event = g_stream_wait,
    .mem_info = g_mem_info,
    .destroy = g_destroy,
    .event_time = g_event_time,
    .range_push = RANGE_PUSH,
    .range_pop = RANGE_POP,
    .device_alloc_async = g_alloc_async,
    .device_free_async = g_free_async,
};

int GPU_CREATE(int device, vc_backend **out, char *why, size_t why_size) {
    char scratch[8];
    if (!why || !why_size) why = scratch, why_size = sizeof scratch;
    if (!out) {
        vc_backend_set_error("vc_backend_" GPU_NAME "_create: out is NULL");
        return VC_ERR_INVALID_ARG;
    }
    *out = NULL;
    int count = 0;
    gpuError_t e = gpuGetDeviceCount(&count);
    if (e != gpuSuccess) {
        snprintf(why, why_size, "no usable " GPU_VENDOR " runtime or device: %s", gpuGetErrorString(e));
        gpuGetLastError();
        vc_backend_set_error("%s", why);
        return VC_ERR_NO_DEVICE;
    }
    if (device < 0) device = 0;
    if (device >= count) {
        snprintf(why, why_size, GPU_NAME ":%d requested but %d " GPU_VENDOR " device(s) are present", device, count);
        vc_backend_set_error("%s", why);
        return VC_ERR_NO_DEVICE;
    }
    gpuDeviceProp prop;
    memset(&prop, 0, sizeof prop);
    /* Make the device's context now, so a device that cannot be used fails here and not at the first
     * allocation; then give the caller's thread its current device back. */
    int prev = -1;
    if (gpuGetDevice(&prev) != gpuSuccess) gpuGetLastError();
    e = gpuSetDevice(device);
    if (e == gpuSuccess) e = gpuFree(NULL);
    if (e == gpuSuccess) e = gpuGetDeviceProperties(&prop, device);
    if (prev >= 0 && prev != device) gpuSetDevice(prev);
    if (e != gpuSuccess) {
        snprintf(why, why_size, GPU_NAME ":%d cannot be used: %s", device, gpuGetErrorString(e));
        gpuGetLastError();
        vc_backend_set_error("%s", why);
        return VC_ERR_NO_DEVICE;
    }
    gpu_ctx *g = calloc(1, sizeof(*g));
    if (!g) {
        vc_backend_set_error("vc_backend_" GPU_NAME "_create: out of host memory");
        return VC_ERR_NO_MEMORY;
    }
    g->device = device;
    pthread_mutex_init(&g->lock, NULL);
    const char *env = getenv("VRAMCACHE_PINNED_BUDGET_GB");
    double gb = env ? atof(env) : -1;
    g->pinned_budget = gb >= 0 ? (size_t)(gb * (double)GPU_GB) : vc_system_ram(NULL, 0) / 2;
    snprintf(g->name, sizeof g->name, "%s", prop.name);
    const char *timing = getenv("VRAMCACHE_EVENT_TIMING");
    g->timing = timing && atoi(timing) > 0 && start_timing(g);
    snprintf(why, why_size, GPU_NAME ":%d, %s, %.1f GB", device, prop.name, (double)prop.totalGlobalMem / (double)GPU_GB);
    int st = vc_backend_create(&gpu_ops, g, out);
    if (st != VC_OK) g_destroy(g);
    return st;
}

/* The run-time module's entry point: checks the ABI, then creates the backend. */
VC_API int vc_backend_module_create(unsigned abi, int device, vc_backend **out, char *why, size_t why_size);
int vc_backend_module_create(unsigned abi, int device, vc_backend **out, char *why, size_t why_size) {
    if (abi != VC_BACKEND_ABI_VERSION) {
        if (why && why_size)
            snprintf(why, why_size, "module built for backend ABI %u, the library has %u", VC_BACKEND_ABI_VERSION, abi);
        return VC_ERR_UNSUPPORTED;
    }
    return GPU_CREATE(device, out, why, why_size);
}
