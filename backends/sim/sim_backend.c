/*
 * Simulated device on a virtual clock. Work is scheduled when it is issued: each stream has the
 * time at which its queued work ends, each engine (h2d copy, d2h copy, compute) the time at which
 * it is free, and an operation starts at the latest of the host's clock, its stream's and its
 * engine's. Events carry the end time of the work they capture. The host's clock moves only when
 * it waits (event_synchronize, vc_sim_stream_synchronize, vc_sim_wait_until, and device_free, which
 * waits for the device to go idle as cudaFree does), as a real host that runs ahead of the device
 * would.
 *
 * Ordering hazards. On a GPU the cache's correctness rests on stream order and events: a copy into
 * device memory must start after the kernels that read what was there have finished (release
 * events, fences), a kernel must start after the copy of its weights (upload events), and a host
 * buffer must outlive the copies that read or write it. Here every operation's interval is known
 * when it is issued, so each one is checked against the operations still running that touch the
 * same bytes: two of which one writes must not overlap in time. Work is issued in the order it is
 * meant to run (a stream can only wait on work already issued), so the later-issued must start
 * after the earlier ends. A violation is counted and described (vc_sim_hazards); on a GPU it would
 * be corrupted weights or a use after free.
 */
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../src/cache_internal.h"
#include "vramcache_sim.h"

typedef struct sim_stream {
    double ready; /* when its queued work ends */
    struct sim_stream *next;
} sim_stream;

typedef struct sim_event {
    double time;
    int recorded;
} sim_event;

typedef struct sim_alloc {
    void *ptr;
    void *raw; /* what to free when backed */
    size_t bytes;
    struct sim_alloc *next;
} sim_alloc;

/* One running operation's access to memory, kept until the host's clock passes its end. */
typedef struct sim_access {
    uintptr_t lo, hi; /* [lo, hi) */
    double start, end;
    unsigned char host; /* host memory (else device) */
    unsigned char write;
    unsigned char op;   /* SIM_OP_* */
    uint64_t sample;    /* host-to-device copies in backed memory: a sample of the source's bytes */
} sim_access;

enum { SIM_OP_H2D, SIM_OP_D2H, SIM_OP_KERNEL, SIM_OP_FREE, SIM_OP_HOST_WRITE };
static const char *const sim_op_name[] = {"host-to-device copy", "device-to-host copy", "kernel", "host_free",
                                          "write by the host (CPU)"};

/* Beyond this many operations in flight without the host's clock moving, checking stops (a program
 * that never waits; the cache's own runs keep a few dozen). */
#define SIM_MAX_ACCESSES 65536

typedef struct sim_ctx {
    pthread_mutex_t mu; /* every operation holds it: the backend may be shared between threads */
    vc_sim_params p;
    sim_access *acc;
    size_t nacc, cap_acc;
    size_t hazards;
    int unchecked; /* checking stopped (SIM_MAX_ACCESSES or no host memory) */
    char hazard[384]; /* the first hazard */
    double now;
    double h2d_free, d2h_free, compute_free;
    double busy_h2d, busy_d2h, busy_compute;
    size_t used;
    sim_stream default_stream;
    sim_stream *streams; /* all created streams, freed with the context */
    sim_alloc *allocs;   /* device allocations (few: arena segments and buffers) */
    uintptr_t next_fake_device, next_fake_host;
} sim_ctx;

static const vc_backend_ops sim_ops;

static sim_ctx *ctx_of(vc_backend *b) { return b && b->ops == &sim_ops ? b->ctx : NULL; }

static sim_stream *stream_of(sim_ctx *s, vc_stream st) { return st ? (sim_stream *)st : &s->default_stream; }

static double max3(double a, double b, double c) {
    double m = a > b ? a : b;
    return m > c ? m : c;
}

/* ---- ordering hazards ---- */

static void note_hazard(sim_ctx *s, const sim_access *earlier, int op, int write, uintptr_t lo, size_t bytes,
                        double start) {
    if (s->hazards++) return;
    snprintf(s->hazard, sizeof s->hazard,
             "ordering hazard: a %s %s %s memory [%#llx, +%zu) at t=%.9f s, while a %s issued before it "
             "%s [%#llx, +%zu) until t=%.9f s",
             sim_op_name[op], op == SIM_OP_FREE ? "frees" : write ? "writes" : "reads",
             earlier->host ? "host" : "device", (unsigned long long)lo, bytes, start, sim_op_name[earlier->op],
             earlier->write ? "writes" : "reads", (unsigned long long)earlier->lo,
             (size_t)(earlier->hi - earlier->lo), earlier->end);
}

/* Every 61st byte and the last, hashed: enough to see a layer's bytes rewritten. */
static uint64_t sample_of(uintptr_t lo, uintptr_t hi) {
    const unsigned char *p = (const unsigned char *)lo;
    size_t n = hi - lo;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i += 61) h = (h ^ p[i]) * 1099511628211ull;
    return (h ^ p[n - 1]) * 1099511628211ull;
}

/* The host's own writes are no operation the simulator sees, yet a host buffer that a running copy
 * reads must not change under it (on a GPU the copy could take old and new bytes). In backed memory
 * each host-to-device copy keeps a sample of its source, compared at every later operation while
 * the copy runs: the host wrote at its clock, which has not moved since the last operation, so a
 * change seen while the copy's end is still ahead happened before that end. */
static void check_host_writes(sim_ctx *s) {
    if (!s->p.backed || !s->p.check_hazards) return;
    for (size_t i = 0; i < s->nacc; i++) {
        sim_access *a = &s->acc[i];
        if (!a->host || a->write || a->op != SIM_OP_H2D || a->end <= s->now) continue;
        uint64_t now = sample_of(a->lo, a->hi);
        if (now == a->sample) continue;
        note_hazard(s, a, SIM_OP_HOST_WRITE, 1, a->lo, (size_t)(a->hi - a->lo), s->now);
        a->sample = now; /* once per change */
    }
}

/* Each operation's way in and out: the lock, and the check of what the host wrote meanwhile. */
static void sim_enter(sim_ctx *s) {
    pthread_mutex_lock(&s->mu);
    check_host_writes(s);
}

static void sim_leave(sim_ctx *s) { pthread_mutex_unlock(&s->mu); }

/* Checks an operation's access against those still running, then keeps it until it ends. */
static void note_access(sim_ctx *s, int host, const void *p, size_t bytes, int write, int op, double start,
                        double end) {
    if (!s->p.check_hazards || s->unchecked || !bytes) return;
    size_t k = 0; /* every later operation starts at or after the host's clock: older ones cannot clash */
    for (size_t i = 0; i < s->nacc; i++)
        if (s->acc[i].end > s->now) s->acc[k++] = s->acc[i];
    s->nacc = k;
    uintptr_t lo = (uintptr_t)p, hi = lo + bytes;
    for (size_t i = 0; i < s->nacc; i++) {
        const sim_access *a = &s->acc[i];
        if (a->host != host || a->hi <= lo || a->lo >= hi || (!write && !a->write)) continue;
        if (start < a->end) note_hazard(s, a, op, write, lo, bytes, start);
    }
    if (s->nacc == s->cap_acc) {
        size_t cap = s->cap_acc ? s->cap_acc * 2 : 64;
        sim_access *g = cap <= SIM_MAX_ACCESSES ? realloc(s->acc, cap * sizeof(*g)) : NULL;
        if (!g) {
            s->unchecked = 1;
            return;
        }
        s->acc = g;
        s->cap_acc = cap;
    }
    uint64_t sample = s->p.backed && host && !write && op == SIM_OP_H2D ? sample_of(lo, hi) : 0;
    s->acc[s->nacc++] = (sim_access){lo, hi, start, end, (unsigned char)host, (unsigned char)write, (unsigned char)op,
                                     sample};
}

/* Memory going away: a host buffer must not be in use by a running copy (the cache defers such
 * frees until the copy's event completes); device memory may be (cudaFree waits for the device).
 * Either way the range's records go, so a later allocation at the same address starts clean. */
static void forget_range(sim_ctx *s, int host, const void *p, size_t bytes) {
    uintptr_t lo = (uintptr_t)p, hi = lo + (bytes ? bytes : 1);
    size_t k = 0;
    int noted = 0; /* one hazard per free, however many copies were using the buffer */
    for (size_t i = 0; i < s->nacc; i++) {
        const sim_access *a = &s->acc[i];
        if (a->host == host && a->hi > lo && a->lo < hi) {
            if (host && a->end > s->now && !noted++) note_hazard(s, a, SIM_OP_FREE, 1, lo, bytes, s->now);
            continue;
        }
        s->acc[k++] = *a;
    }
    s->nacc = k;
}

/* ---- memory ---- */

#define SIM_ALIGN ((size_t)2 << 20)

static int sim_device_alloc_u(void *ctx, size_t bytes, void **dptr) {
    sim_ctx *s = ctx;
    if (bytes > s->p.device_bytes - s->used) {
        vc_backend_set_error("sim device: %zu bytes requested, %zu free of %zu", bytes,
                             s->p.device_bytes - s->used, s->p.device_bytes);
        return VC_ERR_OUT_OF_VRAM;
    }
    sim_alloc *a = calloc(1, sizeof(*a));
    if (!a) return VC_ERR_NO_MEMORY;
    if (s->p.backed) {
        a->raw = aligned_alloc(4096, (bytes + 4095) / 4096 * 4096);
        if (!a->raw) {
            free(a);
            vc_backend_set_error("sim device: host memory for %zu backed bytes unavailable", bytes);
            return VC_ERR_OUT_OF_VRAM;
        }
        a->ptr = a->raw;
    } else {
        /* Addresses only: a private range nothing ever dereferences. */
        a->ptr = (void *)s->next_fake_device;
        s->next_fake_device += (bytes + SIM_ALIGN - 1) / SIM_ALIGN * SIM_ALIGN + SIM_ALIGN;
    }
    a->bytes = bytes;
    a->next = s->allocs;
    s->allocs = a;
    s->used += bytes;
    *dptr = a->ptr;
    return VC_OK;
}

static void sim_device_free_u(void *ctx, void *dptr) {
    sim_ctx *s = ctx;
    /* cudaFree and hipFree wait for the device to go idle: so does the virtual host */
    double idle = max3(s->h2d_free, s->d2h_free, s->compute_free);
    for (sim_stream *st = s->streams; st; st = st->next)
        if (st->ready > idle) idle = st->ready;
    if (s->default_stream.ready > idle) idle = s->default_stream.ready;
    if (idle > s->now) s->now = idle;
    for (sim_alloc **pp = &s->allocs; *pp; pp = &(*pp)->next)
        if ((*pp)->ptr == dptr) {
            sim_alloc *a = *pp;
            *pp = a->next;
            forget_range(s, 0, a->ptr, a->bytes);
            s->used -= a->bytes;
            free(a->raw);
            free(a);
            return;
        }
}

static int sim_host_alloc_u(void *ctx, size_t bytes, void **hptr, int *pinned) {
    sim_ctx *s = ctx;
    *pinned = 1; /* the simulated host memory behaves as pinned */
    if (s->p.backed) {
        *hptr = malloc(bytes ? bytes : 1);
        return *hptr ? VC_OK : VC_ERR_NO_MEMORY;
    }
    *hptr = (void *)s->next_fake_host;
    s->next_fake_host += (bytes + 4095) / 4096 * 4096 + 4096;
    return VC_OK;
}

static void sim_host_free_u(void *ctx, void *hptr, size_t bytes, int pinned) {
    (void)pinned, (void)bytes;
    sim_ctx *s = ctx;
    forget_range(s, 1, hptr, bytes);
    if (s->p.backed) free(hptr);
}

/* ---- streams, copies, events ---- */

static int sim_stream_create_u(void *ctx, vc_stream *out) {
    sim_ctx *s = ctx;
    sim_stream *st = calloc(1, sizeof(*st));
    if (!st) return VC_ERR_NO_MEMORY;
    st->ready = s->now;
    st->next = s->streams;
    s->streams = st;
    *out = st;
    return VC_OK;
}

static void sim_stream_destroy(void *ctx, vc_stream st) {
    (void)ctx;
    (void)st; /* freed with the context: engine streams may outlive a cache */
}

static void schedule_copy(sim_ctx *s, sim_stream *st, double *engine_free, double *busy, double bw, size_t bytes,
                          double *start_out) {
    double start = max3(s->now, st->ready, *engine_free);
    double end = start + s->p.copy_latency_s + (double)bytes / bw;
    st->ready = end;
    *engine_free = end;
    *busy += end - start;
    *start_out = start;
}

static int sim_copy_h2d_u(void *ctx, void *dst, const void *src, size_t bytes, vc_stream stream) {
    sim_ctx *s = ctx;
    sim_stream *st = stream_of(s, stream);
    double start;
    schedule_copy(s, st, &s->h2d_free, &s->busy_h2d, s->p.h2d_bytes_per_s, bytes, &start);
    note_access(s, 1, src, bytes, 0, SIM_OP_H2D, start, st->ready);
    note_access(s, 0, dst, bytes, 1, SIM_OP_H2D, start, st->ready);
    if (s->p.backed) memcpy(dst, src, bytes);
    return VC_OK;
}

static int sim_copy_d2h_u(void *ctx, void *dst, const void *src, size_t bytes, vc_stream stream) {
    sim_ctx *s = ctx;
    sim_stream *st = stream_of(s, stream);
    double start;
    schedule_copy(s, st, &s->d2h_free, &s->busy_d2h, s->p.d2h_bytes_per_s, bytes, &start);
    note_access(s, 0, src, bytes, 0, SIM_OP_D2H, start, st->ready);
    note_access(s, 1, dst, bytes, 1, SIM_OP_D2H, start, st->ready);
    if (s->p.backed) memcpy(dst, src, bytes);
    return VC_OK;
}

static int sim_event_create(void *ctx, void **ev) {
    (void)ctx;
    *ev = calloc(1, sizeof(sim_event));
    return *ev ? VC_OK : VC_ERR_NO_MEMORY;
}

static void sim_event_destroy(void *ctx, void *ev) {
    (void)ctx;
    free(ev);
}

static int sim_event_record_u(void *ctx, void *ev, vc_stream stream) {
    sim_ctx *s = ctx;
    sim_event *e = ev;
    sim_stream *st = stream_of(s, stream);
    e->time = st->ready > s->now ? st->ready : s->now;
    e->recorded = 1;
    return VC_OK;
}

static int sim_event_query_u(void *ctx, void *ev) {
    sim_ctx *s = ctx;
    sim_event *e = ev;
    return !e->recorded || e->time <= s->now;
}

static int sim_event_synchronize_u(void *ctx, void *ev) {
    sim_ctx *s = ctx;
    sim_event *e = ev;
    if (e->recorded && e->time > s->now) s->now = e->time;
    return VC_OK;
}

static int sim_stream_wait_event_u(void *ctx, vc_stream stream, void *ev) {
    sim_ctx *s = ctx;
    sim_event *e = ev;
    sim_stream *st = stream_of(s, stream);
    if (e->recorded && e->time > st->ready) st->ready = e->time;
    return VC_OK;
}

static int sim_mem_info_u(void *ctx, size_t *free_bytes, size_t *total) {
    sim_ctx *s = ctx;
    *free_bytes = s->p.device_bytes - s->used;
    *total = s->p.device_bytes;
    return VC_OK;
}

static double sim_now_u(void *ctx) { return ((sim_ctx *)ctx)->now; }

static double sim_event_time_u(void *ctx, void *ev) {
    (void)ctx;
    sim_event *e = ev;
    return e->recorded ? e->time : -1.0;
}

static void sim_destroy(void *ctx) {
    sim_ctx *s = ctx;
    while (s->allocs) sim_device_free_u(s, s->allocs->ptr);
    while (s->streams) {
        sim_stream *n = s->streams->next;
        free(s->streams);
        s->streams = n;
    }
    free(s->acc);
    pthread_mutex_destroy(&s->mu);
    free(s);
}

/* The operations the cache calls, each under the context's lock: several caches (and an engine's
 * threads through vc_sim_*) may use one simulated device at once, as they may a GPU. */
static int sim_device_alloc(void *ctx, size_t bytes, void **dptr) {
    sim_ctx *s = ctx;
    sim_enter(s);
    int r = sim_device_alloc_u(ctx, bytes, dptr);
    sim_leave(s);
    return r;
}

static void sim_device_free(void *ctx, void *dptr) {
    sim_ctx *s = ctx;
    sim_enter(s);
    sim_device_free_u(ctx, dptr);
    sim_leave(s);
}

static int sim_host_alloc(void *ctx, size_t bytes, void **hptr, int *pinned) {
    sim_ctx *s = ctx;
    sim_enter(s);
    int r = sim_host_alloc_u(ctx, bytes, hptr, pinned);
    sim_leave(s);
    return r;
}

static void sim_host_free(void *ctx, void *hptr, size_t bytes, int pinned) {
    sim_ctx *s = ctx;
    sim_enter(s);
    sim_host_free_u(ctx, hptr, bytes, pinned);
    sim_leave(s);
}

static int sim_stream_create(void *ctx, vc_stream *out) {
    sim_ctx *s = ctx;
    sim_enter(s);
    int r = sim_stream_create_u(ctx, out);
    sim_leave(s);
    return r;
}

static int sim_copy_h2d(void *ctx, void *dst, const void *src, size_t bytes, vc_stream stream) {
    sim_ctx *s = ctx;
    sim_enter(s);
    int r = sim_copy_h2d_u(ctx, dst, src, bytes, stream);
    sim_leave(s);
    return r;
}

static int sim_copy_d2h(void *ctx, void *dst, const void *src, size_t bytes, vc_stream stream) {
    sim_ctx *s = ctx;
    sim_enter(s);
    int r = sim_copy_d2h_u(ctx, dst, src, bytes, stream);
    sim_leave(s);
    return r;
}

static int sim_event_record(void *ctx, void *ev, vc_stream stream) {
    sim_ctx *s = ctx;
    sim_enter(s);
    int r = sim_event_record_u(ctx, ev, stream);
    sim_leave(s);
    return r;
}

static int sim_event_query(void *ctx, void *ev) {
    sim_ctx *s = ctx;
    sim_enter(s);
    int r = sim_event_query_u(ctx, ev);
    sim_leave(s);
    return r;
}

static int sim_event_synchronize(void *ctx, void *ev) {
    sim_ctx *s = ctx;
    sim_enter(s);
    int r = sim_event_synchronize_u(ctx, ev);
    sim_leave(s);
    return r;
}

static int sim_stream_wait_event(void *ctx, vc_stream stream, void *ev) {
    sim_ctx *s = ctx;
    sim_enter(s);
    int r = sim_stream_wait_event_u(ctx, stream, ev);
    sim_leave(s);
    return r;
}

static int sim_mem_info(void *ctx, size_t *free_bytes, size_t *total) {
    sim_ctx *s = ctx;
    sim_enter(s);
    int r = sim_mem_info_u(ctx, free_bytes, total);
    sim_leave(s);
    return r;
}

static double sim_now(void *ctx) {
    sim_ctx *s = ctx;
    sim_enter(s);
    double r = sim_now_u(ctx);
    sim_leave(s);
    return r;
}

static double sim_event_time(void *ctx, void *ev) {
    sim_ctx *s = ctx;
    sim_enter(s);
    double r = sim_event_time_u(ctx, ev);
    sim_leave(s);
    return r;
}

static const vc_backend_ops sim_ops = {
    .abi_version = VC_BACKEND_ABI_VERSION,
    .name = "sim",
    .kind = VC_BACKEND_KIND_GPU, /* it models a GPU: budgets behave as on one */
    .device_alloc = sim_device_alloc,
    .device_free = sim_device_free,
    .host_alloc = sim_host_alloc,
    .host_free = sim_host_free,
    .stream_create = sim_stream_create,
    .stream_destroy = sim_stream_destroy,
    .copy_h2d = sim_copy_h2d,
    .copy_d2h = sim_copy_d2h,
    .event_create = sim_event_create,
    .event_destroy = sim_event_destroy,
    .event_record = sim_event_record,
    .event_query = sim_event_query,
    .event_synchronize = sim_event_synchronize,
    .stream_wait_event = sim_stream_wait_event,
    .mem_info = sim_mem_info,
    .destroy = sim_destroy,
    .now = sim_now,
    .event_time = sim_event_time,
};

void vc_sim_params_init(vc_sim_params *p) {
    if (!p) return;
    memset(p, 0, sizeof(*p));
    p->struct_size = sizeof(*p);
    p->device_bytes = (size_t)8 << 30;
    p->h2d_bytes_per_s = 25e9;
    p->d2h_bytes_per_s = 25e9;
    p->copy_latency_s = 10e-6;
    p->backed = 1;
    p->check_hazards = 1;
}

int vc_backend_sim_create(const vc_sim_params *params, vc_backend **out) {
    if (!out) return vc__fail(NULL, VC_ERR_INVALID_ARG, "vc_backend_sim_create: out is NULL");
    *out = NULL;
    /* check_hazards came later: a program built before it passes the shorter size (no checking) */
    if (!params || (params->struct_size != sizeof(*params) &&
                    params->struct_size != offsetof(vc_sim_params, check_hazards)))
        return vc__fail(NULL, VC_ERR_INVALID_ARG, "vc_backend_sim_create: params not initialised with "
                        "vc_sim_params_init");
    if (!(params->h2d_bytes_per_s > 0) || !(params->d2h_bytes_per_s > 0) || !(params->copy_latency_s >= 0))
        return vc__fail(NULL, VC_ERR_INVALID_ARG, "vc_backend_sim_create: bandwidths must be > 0 and latency >= 0");
    sim_ctx *s = calloc(1, sizeof(*s));
    if (!s) return vc__fail(NULL, VC_ERR_NO_MEMORY, "vc_backend_sim_create: out of host memory");
    memcpy(&s->p, params, params->struct_size); /* fields an older program lacks stay 0 */
    pthread_mutex_init(&s->mu, NULL);
    s->next_fake_device = (uintptr_t)1 << 44;
    s->next_fake_host = (uintptr_t)1 << 45;
    int st = vc_backend_create(&sim_ops, s, out);
    if (st != VC_OK) {
        pthread_mutex_destroy(&s->mu);
        free(s);
    }
    return st;
}

int vc_sim_stream_create(vc_backend *b, vc_stream *out) {
    sim_ctx *s = ctx_of(b);
    if (!s || !out) return vc__fail(NULL, VC_ERR_INVALID_ARG, "vc_sim_stream_create: not a sim backend");
    sim_enter(s);
    int st = sim_stream_create_u(s, out);
    sim_leave(s);
    return st;
}

int vc_sim_compute_reading(vc_backend *b, vc_stream stream, double seconds, size_t n, void *const *ptrs,
                           const size_t *bytes, double *start, double *end) {
    sim_ctx *s = ctx_of(b);
    if (!s || !(seconds >= 0) || (n && (!ptrs || !bytes)))
        return vc__fail(NULL, VC_ERR_INVALID_ARG, "vc_sim_compute: bad argument");
    sim_enter(s);
    sim_stream *st = stream_of(s, stream);
    double t0 = max3(s->now, st->ready, s->compute_free);
    double t1 = t0 + seconds;
    st->ready = t1;
    s->compute_free = t1;
    s->busy_compute += seconds;
    for (size_t i = 0; i < n; i++) note_access(s, 0, ptrs[i], bytes[i], 0, SIM_OP_KERNEL, t0, t1);
    sim_leave(s);
    if (start) *start = t0;
    if (end) *end = t1;
    return VC_OK;
}

int vc_sim_compute(vc_backend *b, vc_stream stream, double seconds, double *start, double *end) {
    return vc_sim_compute_reading(b, stream, seconds, 0, NULL, NULL, start, end);
}

size_t vc_sim_hazards(vc_backend *b, char *msg, size_t size) {
    sim_ctx *s = ctx_of(b);
    if (s) sim_enter(s);
    size_t n = s ? s->hazards : 0;
    if (msg && size) {
        const char *text = !s ? "not a sim backend"
                           : s->hazards ? s->hazard
                           : !s->p.check_hazards ? "hazards not checked (check_hazards is 0)"
                           : s->unchecked ? "no hazard until checking stopped (too many operations in flight)"
                                          : "no hazard";
        snprintf(msg, size, "%s", text);
    }
    if (s) sim_leave(s);
    return n;
}

int vc_sim_stream_synchronize(vc_backend *b, vc_stream stream) {
    sim_ctx *s = ctx_of(b);
    if (!s) return vc__fail(NULL, VC_ERR_INVALID_ARG, "vc_sim_stream_synchronize: not a sim backend");
    sim_enter(s);
    sim_stream *st = stream_of(s, stream);
    if (st->ready > s->now) s->now = st->ready;
    sim_leave(s);
    return VC_OK;
}

int vc_sim_wait_until(vc_backend *b, double t) {
    sim_ctx *s = ctx_of(b);
    if (!s) return vc__fail(NULL, VC_ERR_INVALID_ARG, "vc_sim_wait_until: not a sim backend");
    sim_enter(s);
    if (t > s->now) s->now = t;
    sim_leave(s);
    return VC_OK;
}

double vc_sim_now(vc_backend *b) {
    sim_ctx *s = ctx_of(b);
    return s ? sim_now(s) : 0.0;
}

int vc_sim_busy(vc_backend *b, double *h2d, double *d2h, double *compute) {
    sim_ctx *s = ctx_of(b);
    if (!s) return vc__fail(NULL, VC_ERR_INVALID_ARG, "vc_sim_busy: not a sim backend");
    sim_enter(s);
    if (h2d) *h2d = s->busy_h2d;
    if (d2h) *d2h = s->busy_d2h;
    if (compute) *compute = s->busy_compute;
    sim_leave(s);
    return VC_OK;
}
