/*
 * A fake CUDA runtime, so the CUDA backend (backends/gpu built with VC_GPU_CUDA) and the core's
 * scheduling on top of it run in CI, on machines without a GPU. It implements the part of the runtime
 * API that gpu_backend.c and tests/test_gpu.c call, on host memory, with CUDA's ordering rules for
 * streams and events, and it runs queued work as LATE as those rules allow: nothing a stream queues
 * runs until the host forces it (a synchronize, a query, a free that synchronizes, a stream waiting on
 * an event whose stream is then forced). A real GPU may be that slow, so a schedule correct on CUDA
 * passes here; one that leans on timing instead of events (an upload read before its event, memory
 * reused while a queued copy still reads it) reads stale bytes here, or touches freed memory, which
 * AddressSanitizer reports. What it does not show: the real driver's behaviour, real concurrency
 * between streams, speed. Running on a GPU still matters (tools/gpu-run.sh).
 *
 * The rules modelled, as the CUDA documentation gives them:
 * - work on one stream runs in order; cudaStreamWaitEvent orders a stream after the event's most
 *   recent record at the time of the call; an event never recorded counts as complete;
 * - the legacy default stream (NULL) waits for all earlier work of blocking streams
 *   (cudaStreamCreate) and they wait for its earlier work; non-blocking streams take no part;
 * - several devices (VC_FAKE_CUDA_DEVICES, default 2): memory, streams and events belong to the
 *   calling thread's current device when made; NULL is the current device's legacy stream; an
 *   event may only be recorded on a stream of its own device; copies and waits may cross devices;
 * - cudaFree and cudaFreeHost synchronise the device; cudaStreamDestroy and cudaEventDestroy return
 *   at once and let queued work finish;
 * - a copy between device memory and pageable host memory may be synchronous with respect to the
 *   host: a pageable source is read when the copy is queued, a pageable destination is written
 *   before the call returns; pinned memory is read and written when the copy runs;
 * - cudaMallocAsync memory is usable at once; cudaFreeAsync gives it back when the stream gets there.
 * The first query of a pending event runs its stream up to it (the device makes progress) and still
 * answers cudaErrorNotReady, so both answers are exercised.
 *
 * Environment: VC_FAKE_CUDA_MEM_MB, each device's memory (default 4096); VC_FAKE_CUDA_DEVICES (1-8,
 * default 2).
 * One lock serialises every call; the library may call from any thread.
 */
#include <cuda_runtime_api.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MB ((size_t)1 << 20)
#define MAX_DEVICES 8
#define QUEUE_DEPTH 1024            /* a stream's queued operations before the oldest must run */
#define LINK_BYTES_PER_NS 12.0      /* the fake clock's copy speed: 12 GB/s */
#define FILL_BYTES_PER_NS 500.0     /* and memset's */

typedef enum { OP_COPY, OP_SET, OP_MARK, OP_WAIT, OP_FREE } op_kind;

struct fake_event;

typedef struct op {
    struct op *next;
    op_kind kind;
    uint64_t seq; /* position on its stream, from 1 */
    char *dst;
    const char *src;
    size_t n;
    int value;
    int dst_device, src_device; /* which side must still be live device memory when it runs */
    char *snapshot;             /* a pageable source, read when the copy was queued */
    struct fake_event *event;   /* OP_MARK */
    int wait_stream;            /* OP_WAIT: run that stream up to wait_seq first */
    uint64_t wait_seq;
    double queued_ns; /* the host's clock when it was queued */
} op;

typedef struct fake_stream {
    int id, blocking, live, device;
    uint64_t issued, done; /* operations 1..issued were queued, 1..done have run */
    op *head, *tail;
    size_t pending;
} fake_stream;

typedef struct fake_event {
    int timing, refs, destroyed, recorded, stream, device;
    uint64_t seq;   /* the most recent record: complete once its stream has run this far */
    double time_ns; /* when that record ran, on the fake clock */
} fake_event;

enum { K_DEVICE = 1, K_POOL = 2, K_PINNED = 4, K_FREEING = 8 };
typedef struct alloc {
    char *p;
    size_t n;
    int kind, device;
} alloc;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static _Thread_local cudaError_t last_error = cudaSuccess;
static _Thread_local int current_device = 0;
static fake_stream **streams; /* never freed, so a stream used after destroy is reported instead of
                                 touching freed memory */
static int nstreams, cap_streams;
static int legacy_id[MAX_DEVICES] = {-1, -1, -1, -1, -1, -1, -1, -1}; /* each device's NULL stream */
static alloc *allocs;
static size_t nallocs, cap_allocs;
static size_t device_used[MAX_DEVICES], pool_used[MAX_DEVICES];
static double clock_ns;
static char memory_pool_handle[MAX_DEVICES]; /* cudaDeviceGetDefaultMemPool's answers: addresses only */

static cudaError_t err(cudaError_t e) {
    if (e != cudaSuccess && e != cudaErrorNotReady) last_error = e;
    return e;
}

/* A misuse the real runtime would report with an error, or not at all (a fault, corrupt memory):
 * said on stderr, so a failing test names the cause. */
static cudaError_t misuse(cudaError_t e, const char *what, const void *p, size_t n) {
    fprintf(stderr, "fake CUDA: %s (%p, %zu bytes)\n", what, p, n);
    return err(e);
}

static void die(const char *what, const void *p, size_t n) {
    fprintf(stderr, "fake CUDA: %s (%p, %zu bytes): the schedule let queued work outlive its memory\n", what, p, n);
    abort();
}

static int device_count(void) {
    const char *env = getenv("VC_FAKE_CUDA_DEVICES");
    long n = env ? strtol(env, NULL, 10) : 2;
    return n < 1 ? 1 : n > MAX_DEVICES ? MAX_DEVICES : (int)n;
}

static size_t capacity(void) {
    const char *env = getenv("VC_FAKE_CUDA_MEM_MB");
    long mb = env ? strtol(env, NULL, 10) : 0;
    return (mb > 0 ? (size_t)mb : 4096) * MB;
}

/* ---- memory registry ---------------------------------------------------------------------------- */

static alloc *find(const void *p, size_t n, int kinds) {
    const char *c = p;
    for (size_t i = 0; i < nallocs; i++)
        if ((allocs[i].kind & kinds) && c >= allocs[i].p && n <= allocs[i].n &&
            (size_t)(c - allocs[i].p) <= allocs[i].n - n)
            return &allocs[i];
    return NULL;
}

static int add_alloc(void *p, size_t n, int kind, int device) {
    if (nallocs == cap_allocs) {
        size_t cap = cap_allocs ? 2 * cap_allocs : 64;
        alloc *a = realloc(allocs, cap * sizeof *a);
        if (!a) return 0;
        allocs = a, cap_allocs = cap;
    }
    allocs[nallocs++] = (alloc){p, n, kind, device};
    if (kind & (K_DEVICE | K_POOL)) device_used[device] += n;
    if (kind & K_POOL) pool_used[device] += n;
    return 1;
}

static void drop_alloc(alloc *a) {
    if (a->kind & (K_DEVICE | K_POOL)) device_used[a->device] -= a->n;
    if (a->kind & K_POOL) pool_used[a->device] -= a->n;
    free(a->p);
    *a = allocs[--nallocs];
}

/* ---- streams and their queues ------------------------------------------------------------------- */

static fake_stream *new_stream(int blocking, int device) {
    if (nstreams == cap_streams) {
        int cap = cap_streams ? 2 * cap_streams : 16;
        fake_stream **s = realloc(streams, (size_t)cap * sizeof *s);
        if (!s) return NULL;
        streams = s, cap_streams = cap;
    }
    fake_stream *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->id = nstreams;
    s->blocking = blocking;
    s->device = device;
    s->live = 1;
    streams[nstreams++] = s;
    return s;
}

static fake_stream *legacy(int device) {
    if (legacy_id[device] < 0) {
        fake_stream *s = new_stream(1, device);
        if (!s) abort(); /* a test helper: no memory left to model anything */
        legacy_id[device] = s->id;
    }
    return streams[legacy_id[device]];
}

/* NULL, cudaStreamLegacy and cudaStreamPerThread are the current device's default stream (per-thread
 * default streams are not modelled; treating them as the legacy one orders more, never less). */
static fake_stream *get_stream(cudaStream_t h) {
    if ((uintptr_t)h <= 2) return legacy(current_device);
    fake_stream *s = (fake_stream *)h;
    return s->live ? s : NULL;
}

static void event_unref(fake_event *e) {
    if (--e->refs == 0) free(e);
}

static void run_stream(int id, uint64_t upto);

static double host_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

/* The device's clock, in CLOCK_MONOTONIC nanoseconds as a real device's time stamps follow real time
 * (the cache compares them with its own clock): one operation at a time, each starting no earlier
 * than it was queued and taking what the fake link's speed gives it. When the host makes it run,
 * and how long the memcpy behind it takes here, do not count (under ASan on a loaded machine a
 * 32 MB memcpy takes longer than a real link would). */
static void execute(fake_stream *s, op *o) {
    if (clock_ns < o->queued_ns) clock_ns = o->queued_ns;
    switch (o->kind) {
    case OP_COPY:
    case OP_SET:
        if (o->dst_device && !find(o->dst, o->n, K_DEVICE | K_POOL)) die("a queued write reached freed device memory", o->dst, o->n);
        if (o->src_device && !find(o->src, o->n, K_DEVICE | K_POOL)) die("a queued read reached freed device memory", o->src, o->n);
        if (o->kind == OP_SET) {
            memset(o->dst, o->value, o->n);
            clock_ns += (double)o->n / FILL_BYTES_PER_NS;
        } else {
            memcpy(o->dst, o->snapshot ? o->snapshot : o->src, o->n);
            clock_ns += 1000.0 + (double)o->n / LINK_BYTES_PER_NS;
        }
        break;
    case OP_MARK:
        if (o->event->stream == s->id && o->event->seq == o->seq) o->event->time_ns = clock_ns;
        event_unref(o->event);
        break;
    case OP_WAIT:
        run_stream(o->wait_stream, o->wait_seq);
        break;
    case OP_FREE: {
        alloc *a = find(o->dst, 1, K_POOL);
        if (a && a->p == o->dst) drop_alloc(a);
        break;
    }
    }
    free(o->snapshot);
}

/* Runs stream `id`'s queue up to operation `upto`. Waits name positions that existed when they were
 * queued, so the recursion follows the order of the calls and cannot cycle. */
static void run_stream(int id, uint64_t upto) {
    fake_stream *s = streams[id];
    while (s->head && s->head->seq <= upto) {
        op *o = s->head;
        s->head = o->next;
        if (!s->head) s->tail = NULL;
        s->pending--;
        execute(s, o);
        s->done = o->seq;
        free(o);
    }
}

static void run_all(void) {
    for (int i = 0; i < nstreams; i++) run_stream(i, UINT64_MAX);
}

static void push(fake_stream *s, op *o) {
    o->seq = ++s->issued;
    o->queued_ns = host_now_ns();
    if (s->tail)
        s->tail->next = o;
    else
        s->head = o;
    s->tail = o;
    if (++s->pending > QUEUE_DEPTH) run_stream(s->id, s->head->seq); /* a full queue blocks the host */
}

static op *new_op(op_kind kind) {
    op *o = calloc(1, sizeof *o);
    if (!o) abort(); /* a test helper: no memory left to model anything */
    o->kind = kind;
    return o;
}

static void push_wait(fake_stream *s, fake_stream *on, uint64_t seq) {
    if (on->done >= seq) return;
    op *w = new_op(OP_WAIT);
    w->wait_stream = on->id;
    w->wait_seq = seq;
    push(s, w);
}

/* Queues `o` on `s`, after its device's legacy stream's implicit ordering. */
static void enqueue(fake_stream *s, op *o) {
    fake_stream *l = legacy(s->device);
    if (s == l) {
        for (int i = 0; i < nstreams; i++)
            if (streams[i] != l && streams[i]->live && streams[i]->blocking && streams[i]->device == s->device)
                push_wait(s, streams[i], streams[i]->issued);
    } else if (s->blocking) {
        push_wait(s, l, l->issued);
    }
    push(s, o);
}

/* ---- the runtime API ---------------------------------------------------------------------------- */

const char *cudaGetErrorString(cudaError_t e) {
    switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorNotReady: return "device not ready";
    default: return "unknown error";
    }
}

cudaError_t cudaGetLastError(void) {
    cudaError_t e = last_error;
    last_error = cudaSuccess;
    return e;
}

cudaError_t cudaGetDeviceCount(int *count) {
    if (!count) return err(cudaErrorInvalidValue);
    *count = device_count();
    return cudaSuccess;
}

cudaError_t cudaGetDevice(int *device) {
    if (!device) return err(cudaErrorInvalidValue);
    *device = current_device;
    return cudaSuccess;
}

cudaError_t cudaSetDevice(int device) {
    if (device < 0 || device >= device_count()) return err(cudaErrorInvalidDevice);
    current_device = device;
    return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(struct cudaDeviceProp *prop, int device) {
    if (!prop) return err(cudaErrorInvalidValue);
    if (device < 0 || device >= device_count()) return err(cudaErrorInvalidDevice);
    memset(prop, 0, sizeof *prop);
    snprintf(prop->name, sizeof prop->name, "fake CUDA device %d (tests/fake_cuda)", device);
    prop->totalGlobalMem = capacity();
    return cudaSuccess;
}

cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total) {
    if (!free_bytes || !total) return err(cudaErrorInvalidValue);
    pthread_mutex_lock(&lock);
    size_t cap = capacity();
    *total = cap;
    size_t used = device_used[current_device];
    *free_bytes = used < cap ? cap - used : 0;
    pthread_mutex_unlock(&lock);
    return cudaSuccess;
}

static cudaError_t device_alloc(void **p, size_t n, int kind, int device) {
    if (!p) return err(cudaErrorInvalidValue);
    *p = NULL;
    pthread_mutex_lock(&lock);
    cudaError_t e = cudaSuccess;
    size_t cap = capacity(), used = device_used[device];
    if (used > cap || n > cap - used) {
        e = err(cudaErrorMemoryAllocation);
    } else {
        void *v = NULL; /* cudaMalloc aligns to 256 bytes at least, and the cache relies on it */
        char *m = posix_memalign(&v, 256, n ? n : 1) == 0 ? v : NULL;
        if (m) memset(m, 0xA5, n < 65536 ? n : 65536); /* never-written device memory reads as junk */
        if (!m || !add_alloc(m, n ? n : 1, kind, device)) {
            free(m);
            e = err(cudaErrorMemoryAllocation);
        } else {
            *p = m;
        }
    }
    pthread_mutex_unlock(&lock);
    return e;
}

cudaError_t cudaMalloc(void **p, size_t n) { return device_alloc(p, n, K_DEVICE, current_device); }

/* cudaFree and cudaFreeHost: both synchronise the device first (HIP documents it for hipHostFree). */
static cudaError_t free_synchronising(void *p, int kinds, const char *misuse_what) {
    if (!p) return cudaSuccess; /* initialises the context */
    pthread_mutex_lock(&lock);
    run_all();
    alloc *a = find(p, 1, kinds);
    cudaError_t e = cudaSuccess;
    if (a && a->p == p)
        drop_alloc(a);
    else
        e = misuse(cudaErrorInvalidValue, misuse_what, p, 0);
    pthread_mutex_unlock(&lock);
    return e;
}

cudaError_t cudaFree(void *p) {
    return free_synchronising(p, K_DEVICE | K_POOL, "cudaFree of memory that is not a device allocation");
}

cudaError_t cudaMallocAsync(void **p, size_t n, cudaStream_t stream) {
    pthread_mutex_lock(&lock);
    fake_stream *s = get_stream(stream);
    pthread_mutex_unlock(&lock);
    if (!s) return misuse(cudaErrorInvalidResourceHandle, "cudaMallocAsync on a destroyed stream", stream, n);
    return device_alloc(p, n, K_POOL, s->device); /* the stream's device, as its pool's */
}

cudaError_t cudaFreeAsync(void *p, cudaStream_t stream) {
    pthread_mutex_lock(&lock);
    fake_stream *s = get_stream(stream);
    alloc *a = find(p, 1, K_POOL);
    cudaError_t e = cudaSuccess;
    if (!s) {
        e = misuse(cudaErrorInvalidResourceHandle, "cudaFreeAsync on a destroyed stream", p, 0);
    } else if (!a || a->p != p || (a->kind & K_FREEING)) {
        e = misuse(cudaErrorInvalidValue, "cudaFreeAsync of memory that is not a live pool allocation", p, 0);
    } else {
        a->kind |= K_FREEING;
        op *o = new_op(OP_FREE);
        o->dst = p;
        enqueue(s, o);
    }
    pthread_mutex_unlock(&lock);
    return e;
}

cudaError_t cudaHostAlloc(void **p, size_t n, unsigned int flags) {
    (void)flags;
    if (!p) return err(cudaErrorInvalidValue);
    pthread_mutex_lock(&lock);
    char *m = malloc(n ? n : 1);
    cudaError_t e = cudaSuccess;
    if (!m || !add_alloc(m, n ? n : 1, K_PINNED, current_device)) {
        free(m);
        m = NULL;
        e = err(cudaErrorMemoryAllocation);
    }
    *p = m;
    pthread_mutex_unlock(&lock);
    return e;
}

cudaError_t cudaFreeHost(void *p) {
    return free_synchronising(p, K_PINNED, "cudaFreeHost of memory that cudaHostAlloc did not return");
}

cudaError_t cudaPointerGetAttributes(struct cudaPointerAttributes *attr, const void *p) {
    if (!attr) return err(cudaErrorInvalidValue);
    memset(attr, 0, sizeof *attr);
    pthread_mutex_lock(&lock);
    alloc *a = find(p, 1, K_DEVICE | K_POOL | K_PINNED);
    if (a && (a->kind & K_PINNED)) {
        attr->type = cudaMemoryTypeHost;
        attr->hostPointer = (void *)p;
        attr->devicePointer = (void *)p;
    } else if (a) {
        attr->type = cudaMemoryTypeDevice;
        attr->device = a->device;
        attr->devicePointer = (void *)p;
    } else {
        attr->type = cudaMemoryTypeUnregistered; /* CUDA 11+: pageable memory is no error */
        attr->device = -2;
    }
    pthread_mutex_unlock(&lock);
    return cudaSuccess;
}

static cudaError_t stream_create(cudaStream_t *out, int blocking) {
    if (!out) return err(cudaErrorInvalidValue);
    pthread_mutex_lock(&lock);
    legacy(current_device);
    fake_stream *s = new_stream(blocking, current_device);
    pthread_mutex_unlock(&lock);
    if (!s) return err(cudaErrorMemoryAllocation);
    *out = (cudaStream_t)s;
    return cudaSuccess;
}

cudaError_t cudaStreamCreate(cudaStream_t *s) { return stream_create(s, 1); }

cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned int flags) {
    return stream_create(s, !(flags & cudaStreamNonBlocking));
}

cudaError_t cudaStreamDestroy(cudaStream_t stream) {
    pthread_mutex_lock(&lock);
    fake_stream *s = (uintptr_t)stream <= 2 ? NULL : get_stream(stream);
    cudaError_t e = cudaSuccess;
    if (!s) {
        e = misuse(cudaErrorInvalidResourceHandle, "cudaStreamDestroy of the default or a destroyed stream", stream, 0);
    } else {
        run_stream(s->id, UINT64_MAX); /* its queued work still completes */
        s->live = 0;
    }
    pthread_mutex_unlock(&lock);
    return e;
}

cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
    pthread_mutex_lock(&lock);
    fake_stream *s = get_stream(stream);
    if (s) run_stream(s->id, UINT64_MAX);
    pthread_mutex_unlock(&lock);
    return s ? cudaSuccess : misuse(cudaErrorInvalidResourceHandle, "cudaStreamSynchronize of a destroyed stream", stream, 0);
}

static int is_device(const void *p, size_t n) { return find(p, n, K_DEVICE | K_POOL) != NULL; }

cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t n, enum cudaMemcpyKind kind, cudaStream_t stream) {
    if (n == 0) return cudaSuccess;
    if (!dst || !src) return err(cudaErrorInvalidValue);
    pthread_mutex_lock(&lock);
    fake_stream *s = get_stream(stream);
    cudaError_t e = cudaSuccess;
    int dst_dev = is_device(dst, n), src_dev = is_device(src, n);
    if (kind == cudaMemcpyDefault) kind = dst_dev ? (src_dev ? cudaMemcpyDeviceToDevice : cudaMemcpyHostToDevice)
                                                  : (src_dev ? cudaMemcpyDeviceToHost : cudaMemcpyHostToHost);
    int want_dst = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
    int want_src = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
    if (!s) {
        e = misuse(cudaErrorInvalidResourceHandle, "cudaMemcpyAsync on a destroyed stream", dst, n);
    } else if (want_dst != dst_dev) {
        e = misuse(cudaErrorInvalidValue, want_dst ? "cudaMemcpyAsync: the destination is not (all) device memory"
                                                   : "cudaMemcpyAsync: the destination is device memory",
                   dst, n);
    } else if (want_src != src_dev) {
        e = misuse(cudaErrorInvalidValue, want_src ? "cudaMemcpyAsync: the source is not (all) device memory"
                                                   : "cudaMemcpyAsync: the source is device memory",
                   src, n);
    } else {
        op *o = new_op(OP_COPY);
        o->dst = dst, o->src = src, o->n = n;
        o->dst_device = dst_dev, o->src_device = src_dev;
        if (!src_dev && !find(src, n, K_PINNED)) { /* pageable source: read now */
            o->snapshot = malloc(n);
            if (!o->snapshot) abort();
            memcpy(o->snapshot, src, n);
        }
        enqueue(s, o);
        if (!dst_dev && !find(dst, n, K_PINNED)) run_stream(s->id, o->seq); /* pageable destination */
    }
    pthread_mutex_unlock(&lock);
    return e;
}

cudaError_t cudaMemsetAsync(void *p, int value, size_t n, cudaStream_t stream) {
    if (n == 0) return cudaSuccess;
    pthread_mutex_lock(&lock);
    fake_stream *s = get_stream(stream);
    cudaError_t e = cudaSuccess;
    if (!s)
        e = misuse(cudaErrorInvalidResourceHandle, "cudaMemsetAsync on a destroyed stream", p, n);
    else if (!is_device(p, n))
        e = misuse(cudaErrorInvalidValue, "cudaMemsetAsync of memory that is not (all) device memory", p, n);
    else {
        op *o = new_op(OP_SET);
        o->dst = p, o->n = n, o->value = value, o->dst_device = 1;
        enqueue(s, o);
    }
    pthread_mutex_unlock(&lock);
    return e;
}

static cudaError_t event_create(cudaEvent_t *out, int timing) {
    if (!out) return err(cudaErrorInvalidValue);
    fake_event *e = calloc(1, sizeof *e);
    if (!e) return err(cudaErrorMemoryAllocation);
    e->timing = timing;
    e->device = current_device;
    e->refs = 1;
    *out = (cudaEvent_t)e;
    return cudaSuccess;
}

cudaError_t cudaEventCreate(cudaEvent_t *e) { return event_create(e, 1); }

cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e, unsigned int flags) {
    return event_create(e, !(flags & cudaEventDisableTiming));
}

cudaError_t cudaEventDestroy(cudaEvent_t event) {
    if (!event) return err(cudaErrorInvalidResourceHandle);
    pthread_mutex_lock(&lock);
    fake_event *e = (fake_event *)event;
    e->destroyed = 1;
    event_unref(e); /* a record still queued keeps it until it runs */
    pthread_mutex_unlock(&lock);
    return cudaSuccess;
}

cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
    if (!event) return err(cudaErrorInvalidResourceHandle);
    pthread_mutex_lock(&lock);
    fake_stream *s = get_stream(stream);
    fake_event *e = (fake_event *)event;
    cudaError_t r = cudaSuccess;
    if (!s) {
        r = misuse(cudaErrorInvalidResourceHandle, "cudaEventRecord on a destroyed stream", event, 0);
    } else if (s->device != e->device) {
        r = misuse(cudaErrorInvalidResourceHandle, "cudaEventRecord of an event on a stream of another device",
                   event, 0);
    } else {
        op *o = new_op(OP_MARK);
        o->event = e;
        e->refs++;
        enqueue(s, o);
        e->recorded = 1;
        e->stream = s->id;
        e->seq = o->seq;
    }
    pthread_mutex_unlock(&lock);
    return r;
}

static int complete(const fake_event *e) { return !e->recorded || streams[e->stream]->done >= e->seq; }

cudaError_t cudaEventQuery(cudaEvent_t event) {
    if (!event) return err(cudaErrorInvalidResourceHandle);
    pthread_mutex_lock(&lock);
    fake_event *e = (fake_event *)event;
    cudaError_t r = cudaSuccess;
    if (!complete(e)) {
        run_stream(e->stream, e->seq); /* the device got there meanwhile; this answer predates it */
        r = cudaErrorNotReady;
    }
    pthread_mutex_unlock(&lock);
    return r;
}

cudaError_t cudaEventSynchronize(cudaEvent_t event) {
    if (!event) return err(cudaErrorInvalidResourceHandle);
    pthread_mutex_lock(&lock);
    fake_event *e = (fake_event *)event;
    if (!complete(e)) run_stream(e->stream, e->seq);
    pthread_mutex_unlock(&lock);
    return cudaSuccess;
}

cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t start, cudaEvent_t end) {
    if (!ms || !start || !end) return err(cudaErrorInvalidValue);
    pthread_mutex_lock(&lock);
    fake_event *a = (fake_event *)start, *b = (fake_event *)end;
    cudaError_t r = cudaSuccess;
    if (!a->recorded || !b->recorded || !a->timing || !b->timing)
        r = err(cudaErrorInvalidResourceHandle);
    else if (!complete(a) || !complete(b))
        r = cudaErrorNotReady;
    else
        *ms = (float)((b->time_ns - a->time_ns) * 1e-6);
    pthread_mutex_unlock(&lock);
    return r;
}

cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned int flags) {
    (void)flags;
    if (!event) return err(cudaErrorInvalidResourceHandle);
    pthread_mutex_lock(&lock);
    fake_stream *s = get_stream(stream);
    fake_event *e = (fake_event *)event;
    cudaError_t r = cudaSuccess;
    if (!s)
        r = misuse(cudaErrorInvalidResourceHandle, "cudaStreamWaitEvent on a destroyed stream", event, 0);
    else if (e->recorded && streams[e->stream] != s)
        push_wait(s, streams[e->stream], e->seq);
    pthread_mutex_unlock(&lock);
    return r;
}

cudaError_t cudaDeviceGetDefaultMemPool(cudaMemPool_t *pool, int device) {
    if (!pool) return err(cudaErrorInvalidValue);
    if (device < 0 || device >= device_count()) return err(cudaErrorInvalidDevice);
    *pool = (cudaMemPool_t)(void *)&memory_pool_handle[device];
    return cudaSuccess;
}

cudaError_t cudaMemPoolGetAttribute(cudaMemPool_t pool, enum cudaMemPoolAttr attr, void *value) {
    char *h = (char *)(void *)pool;
    if (h < memory_pool_handle || h >= memory_pool_handle + MAX_DEVICES || !value) return err(cudaErrorInvalidValue);
    if (attr != cudaMemPoolAttrUsedMemCurrent && attr != cudaMemPoolAttrReservedMemCurrent)
        return err(cudaErrorInvalidValue);
    pthread_mutex_lock(&lock);
    *(uint64_t *)value = pool_used[h - memory_pool_handle];
    pthread_mutex_unlock(&lock);
    return cudaSuccess;
}
