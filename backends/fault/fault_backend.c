/*
 * Fault-injecting backend: forwards every operation to an inner backend unless a fault armed for
 * that operation fires, in which case it fails the way a real device would (an allocation that
 * finds no memory, a copy or event call that returns an error) and explains itself through
 * vc_backend_set_error.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "../../src/cache_internal.h"
#include "vramcache_fault.h"

typedef struct fault_arm {
    unsigned long nth;     /* fail when calls reaches this count (0: off) */
    double p;              /* probability per call */
    uint64_t rng;
    int always;
    unsigned long calls, failed;
} fault_arm;

typedef struct fault_ctx {
    vc_backend *inner;
    const vc_backend_ops *iops;
    void *ictx;
    pthread_mutex_t lock;
    fault_arm arm[VC_FAULT_OP_COUNT];
    /* Device capacity cap (vc_fault_set_device_capacity); 0: none. `used` counts the live device
     * allocations listed in `live`, whose sizes device_free needs. */
    size_t capacity, used, external;
    struct live_alloc {
        void *p;
        size_t bytes;
    } *live;
    size_t nlive, cap_live;
    size_t uncapped; /* live allocations made before any cap: a cap cannot start while there are some */
    int late_event_times; /* vc_fault_late_event_times */
} fault_ctx;

static const vc_backend_ops fault_ops;
static const char *const OP_NAMES[VC_FAULT_OP_COUNT] = {"device_alloc", "host_alloc", "copy_h2d", "copy_d2h",
                                                         "event", "stream_create", "mem_info", "loader"};

static double next_uniform(uint64_t *s) {
    /* xorshift64*: enough for reproducible fault schedules */
    uint64_t x = *s ? *s : 0x9E3779B97F4A7C15ull;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return (double)((x * 0x2545F4914F6CDD1Dull) >> 11) / 9007199254740992.0;
}

/* Counts a call and says whether it fails. */
static int fires(fault_ctx *f, vc_fault_op op) {
    pthread_mutex_lock(&f->lock);
    fault_arm *a = &f->arm[op];
    a->calls++;
    int fail = a->always;
    if (a->nth && a->calls >= a->nth) {
        fail = 1;
        a->nth = 0;
    }
    if (!fail && a->p > 0 && next_uniform(&a->rng) < a->p) fail = 1;
    if (fail) a->failed++;
    unsigned long n = a->calls;
    pthread_mutex_unlock(&f->lock);
    if (fail) vc_backend_set_error("injected fault: %s call %lu failed", OP_NAMES[op], n);
    return fail;
}

/* Takes `b` bytes of the capacity cap and makes room to remember the allocation; VC_OK when no cap. */
static int cap_take(fault_ctx *f, size_t b) {
    int st = VC_OK;
    pthread_mutex_lock(&f->lock);
    if (f->capacity) {
        size_t avail = sat_sub(f->capacity, sat_add(f->used, f->external));
        if (b > avail) {
            vc_backend_set_error("capped device: %zu bytes requested, %zu free of the %zu-byte cap", b, avail,
                                 f->capacity);
            st = VC_ERR_OUT_OF_VRAM;
        } else if (f->nlive == f->cap_live) {
            size_t n = f->cap_live ? 2 * f->cap_live : 64;
            struct live_alloc *g = realloc(f->live, n * sizeof *g);
            if (!g) {
                vc_backend_set_error("capped device: out of host memory for bookkeeping");
                st = VC_ERR_NO_MEMORY;
            } else {
                f->live = g;
                f->cap_live = n;
            }
        }
        if (st == VC_OK) f->used += b;
    }
    pthread_mutex_unlock(&f->lock);
    return st;
}

/* Records a successful allocation under the cap, or gives the bytes back after a failed one. */
static void cap_settle(fault_ctx *f, size_t b, void *p, int ok) {
    pthread_mutex_lock(&f->lock);
    if (f->capacity) {
        if (ok)
            f->live[f->nlive++] = (struct live_alloc){p, b};
        else
            f->used -= b;
    } else if (ok) {
        f->uncapped++;
    }
    pthread_mutex_unlock(&f->lock);
}

static void cap_release(fault_ctx *f, void *p) {
    pthread_mutex_lock(&f->lock);
    size_t i = 0;
    while (i < f->nlive && f->live[i].p != p) i++;
    if (i < f->nlive) {
        f->used -= f->live[i].bytes;
        f->live[i] = f->live[--f->nlive];
    } else if (f->uncapped) {
        f->uncapped--;
    }
    pthread_mutex_unlock(&f->lock);
}

static int f_device_alloc(void *c, size_t b, void **p) {
    fault_ctx *f = c;
    if (fires(f, VC_FAULT_DEVICE_ALLOC)) return VC_ERR_OUT_OF_VRAM;
    int st = cap_take(f, b);
    if (st != VC_OK) return st;
    st = f->iops->device_alloc(f->ictx, b, p);
    cap_settle(f, b, st == VC_OK ? *p : NULL, st == VC_OK);
    return st;
}
static void f_device_free(void *c, void *p) {
    fault_ctx *f = c;
    f->iops->device_free(f->ictx, p);
    if (p) cap_release(f, p);
}
static int f_host_alloc(void *c, size_t b, void **p, int *pinned) {
    fault_ctx *f = c;
    return fires(f, VC_FAULT_HOST_ALLOC) ? VC_ERR_NO_MEMORY : f->iops->host_alloc(f->ictx, b, p, pinned);
}
static void f_host_free(void *c, void *p, size_t bytes, int pinned) {
    fault_ctx *f = c;
    f->iops->host_free(f->ictx, p, bytes, pinned);
}
static int f_stream_create(void *c, vc_stream *s) {
    fault_ctx *f = c;
    return fires(f, VC_FAULT_STREAM_CREATE) ? VC_ERR_BACKEND : f->iops->stream_create(f->ictx, s);
}
static void f_stream_destroy(void *c, vc_stream s) {
    fault_ctx *f = c;
    f->iops->stream_destroy(f->ictx, s);
}
static int f_copy_h2d(void *c, void *d, const void *s, size_t n, vc_stream st) {
    fault_ctx *f = c;
    return fires(f, VC_FAULT_COPY_H2D) ? VC_ERR_BACKEND : f->iops->copy_h2d(f->ictx, d, s, n, st);
}
static int f_copy_d2h(void *c, void *d, const void *s, size_t n, vc_stream st) {
    fault_ctx *f = c;
    return fires(f, VC_FAULT_COPY_D2H) ? VC_ERR_BACKEND : f->iops->copy_d2h(f->ictx, d, s, n, st);
}
static int f_event_create(void *c, void **e) {
    fault_ctx *f = c;
    return fires(f, VC_FAULT_EVENT) ? VC_ERR_BACKEND : f->iops->event_create(f->ictx, e);
}
static void f_event_destroy(void *c, void *e) {
    fault_ctx *f = c;
    f->iops->event_destroy(f->ictx, e);
}
static int f_event_record(void *c, void *e, vc_stream s) {
    fault_ctx *f = c;
    return fires(f, VC_FAULT_EVENT) ? VC_ERR_BACKEND : f->iops->event_record(f->ictx, e, s);
}
static int f_event_query(void *c, void *e) {
    fault_ctx *f = c;
    return fires(f, VC_FAULT_EVENT) ? VC_ERR_BACKEND : f->iops->event_query(f->ictx, e);
}
static int f_event_sync(void *c, void *e) {
    fault_ctx *f = c;
    return fires(f, VC_FAULT_EVENT) ? VC_ERR_BACKEND : f->iops->event_synchronize(f->ictx, e);
}
static int f_stream_wait(void *c, vc_stream s, void *e) {
    fault_ctx *f = c;
    return fires(f, VC_FAULT_EVENT) ? VC_ERR_BACKEND : f->iops->stream_wait_event(f->ictx, s, e);
}
static int f_mem_info(void *c, size_t *fr, size_t *t) {
    fault_ctx *f = c;
    if (fires(f, VC_FAULT_MEM_INFO)) return VC_ERR_BACKEND;
    int st = f->iops->mem_info(f->ictx, fr, t);
    if (st != VC_OK) return st;
    pthread_mutex_lock(&f->lock);
    if (f->capacity) { /* the cap, as a smaller device would report it; never more than the real device has */
        size_t avail = sat_sub(f->capacity, sat_add(f->used, f->external));
        if (avail < *fr) *fr = avail;
        *t = f->capacity;
    }
    pthread_mutex_unlock(&f->lock);
    return VC_OK;
}
static double f_now(void *c) {
    fault_ctx *f = c;
    return f->iops->now ? f->iops->now(f->ictx) : 0.0;
}
static double f_event_time(void *c, void *e) {
    fault_ctx *f = c;
    if (!f->iops->event_time) return -1.0;
    if (f->late_event_times && f->iops->event_query(f->ictx, e) != 1) return -1.0; /* as a GPU: not yet */
    return f->iops->event_time(f->ictx, e);
}
static void f_destroy(void *c) {
    fault_ctx *f = c;
    pthread_mutex_destroy(&f->lock);
    free(f->live);
    free(f);
}

static const vc_backend_ops fault_ops = {
    .abi_version = VC_BACKEND_ABI_VERSION,
    .name = "fault",
    .kind = VC_BACKEND_KIND_HOST,
    .device_alloc = f_device_alloc,
    .device_free = f_device_free,
    .host_alloc = f_host_alloc,
    .host_free = f_host_free,
    .stream_create = f_stream_create,
    .stream_destroy = f_stream_destroy,
    .copy_h2d = f_copy_h2d,
    .copy_d2h = f_copy_d2h,
    .event_create = f_event_create,
    .event_destroy = f_event_destroy,
    .event_record = f_event_record,
    .event_query = f_event_query,
    .event_synchronize = f_event_sync,
    .stream_wait_event = f_stream_wait,
    .mem_info = f_mem_info,
    .destroy = f_destroy,
    .now = f_now,
    .event_time = f_event_time,
};


static fault_ctx *ctx_of(vc_backend *b) {
    return b && b->ops->destroy == f_destroy ? b->ctx : NULL;
}

int vc_backend_fault_create(vc_backend *inner, vc_backend **out) {
    if (!out || !inner) return vc__fail(NULL, VC_ERR_INVALID_ARG, "vc_backend_fault_create: NULL argument");
    *out = NULL;
    fault_ctx *f = calloc(1, sizeof(*f));
    vc_backend_ops *ops = malloc(sizeof(*ops));
    if (!f || !ops) {
        free(f);
        free(ops);
        return vc__fail(NULL, VC_ERR_NO_MEMORY, "vc_backend_fault_create: out of host memory");
    }
    f->inner = inner;
    f->iops = inner->ops;
    f->ictx = inner->ctx;
    pthread_mutex_init(&f->lock, NULL);
    *ops = fault_ops;
    ops->kind = inner->ops->kind;
    ops->name = inner->ops->name;
    if (!inner->ops->now) ops->now = NULL;
    if (!inner->ops->event_time) ops->event_time = NULL;
    int st = vc_backend_create(ops, f, out);
    if (st != VC_OK) {
        f_destroy(f);
        free(ops);
        return st;
    }
    (*out)->owned_ops = ops; /* freed with the handle */
    return VC_OK;
}

static int check(vc_backend *b, vc_fault_op op, fault_ctx **f) {
    *f = ctx_of(b);
    if (!*f || (int)op < 0 || op >= VC_FAULT_OP_COUNT)
        return vc__fail(NULL, VC_ERR_INVALID_ARG, "fault injection: not a fault backend or not a vc_fault_op");
    return VC_OK;
}

int vc_fault_fail_nth(vc_backend *b, vc_fault_op op, unsigned long n) {
    fault_ctx *f;
    int st = check(b, op, &f);
    if (st) return st;
    pthread_mutex_lock(&f->lock);
    f->arm[op].nth = n ? f->arm[op].calls + n : 0;
    pthread_mutex_unlock(&f->lock);
    return VC_OK;
}

int vc_fault_fail_random(vc_backend *b, vc_fault_op op, double p, uint64_t seed) {
    fault_ctx *f;
    int st = check(b, op, &f);
    if (st) return st;
    if (!(p >= 0 && p <= 1)) return vc__fail(NULL, VC_ERR_INVALID_ARG, "vc_fault_fail_random: p must be in [0, 1]");
    pthread_mutex_lock(&f->lock);
    f->arm[op].p = p;
    f->arm[op].rng = seed;
    pthread_mutex_unlock(&f->lock);
    return VC_OK;
}

int vc_fault_fail_always(vc_backend *b, vc_fault_op op, int on) {
    fault_ctx *f;
    int st = check(b, op, &f);
    if (st) return st;
    pthread_mutex_lock(&f->lock);
    f->arm[op].always = on != 0;
    pthread_mutex_unlock(&f->lock);
    return VC_OK;
}

int vc_fault_counts(vc_backend *b, vc_fault_op op, unsigned long *calls, unsigned long *failed) {
    fault_ctx *f;
    int st = check(b, op, &f);
    if (st) return st;
    pthread_mutex_lock(&f->lock);
    if (calls) *calls = f->arm[op].calls;
    if (failed) *failed = f->arm[op].failed;
    pthread_mutex_unlock(&f->lock);
    return VC_OK;
}

int vc_fault_clear(vc_backend *b) {
    fault_ctx *f;
    int st = check(b, VC_FAULT_DEVICE_ALLOC, &f);
    if (st) return st;
    pthread_mutex_lock(&f->lock);
    for (int i = 0; i < VC_FAULT_OP_COUNT; i++) {
        f->arm[i].nth = 0;
        f->arm[i].p = 0;
        f->arm[i].always = 0;
    }
    pthread_mutex_unlock(&f->lock);
    return VC_OK;
}

int vc_fault_late_event_times(vc_backend *b, int on) {
    fault_ctx *f;
    int st = check(b, VC_FAULT_EVENT, &f);
    if (st) return st;
    pthread_mutex_lock(&f->lock);
    f->late_event_times = on != 0;
    pthread_mutex_unlock(&f->lock);
    return VC_OK;
}

int vc_fault_set_device_capacity(vc_backend *b, size_t capacity, size_t external) {
    fault_ctx *f;
    int st = check(b, VC_FAULT_DEVICE_ALLOC, &f);
    if (st) return st;
    pthread_mutex_lock(&f->lock);
    /* A first cap must come before any allocation, so that every byte is counted; a cap in place may
     * change. */
    if (capacity && (f->capacity || f->uncapped == 0)) {
        f->capacity = capacity;
    } else if (capacity) {
        pthread_mutex_unlock(&f->lock);
        return vc__fail(NULL, VC_ERR_BUSY, "vc_fault_set_device_capacity: the wrapper has already allocated "
                                           "device memory without a cap; set the cap first");
    }
    if (capacity) f->external = external;
    pthread_mutex_unlock(&f->lock);
    return VC_OK;
}

int vc_fault_loader(void *user, vc_layer_id layer, void *dst, size_t bytes) {
    vc_fault_loader_ctx *lc = user;
    fault_ctx *f = lc ? ctx_of(lc->fault) : NULL;
    if (!f || !lc->inner) return -1;
    if (fires(f, VC_FAULT_LOADER)) return -2;
    return lc->inner(lc->inner_user, layer, dst, bytes);
}
