/*
 * Chrome trace-event JSON timelines (Perfetto, chrome://tracing). Events are written as they
 * happen; times come from the backend's clock when it has one (the simulator's virtual clock),
 * else from CLOCK_MONOTONIC since the trace started. Tracks: copy engines (uploads, prefetches,
 * write-backs), evictions (instants with their reason), holds and reservations (async spans per
 * layer), and engine spans added with vc_cache_trace_span.
 */
#include <stdio.h>
#include <string.h>
#include <stdlib.h>
#include <time.h>

#include "cache_internal.h"
#include "json_string.h"

/* A copy whose device times are not known yet (a GPU's events are stamped when they complete). */
typedef struct pending_copy {
    void *ev0, *ev1; /* recorded before and after the copy, on its stream */
    char *name, *model;
    size_t bytes;
    const char *what; /* a string literal */
    double issued;    /* when it was queued: the fallback if its times never become known */
    struct pending_copy *next;
} pending_copy;

typedef struct trace_writer {
    FILE *f;
    int first;
    double t0; /* host clock origin when the backend has none */
    pending_copy *head, *tail;
} trace_writer;

double vc__trace_now(vc_cache *c) {
    trace_writer *t = c->trace;
    if (c->ops->now) return c->ops->now(c->bctx);
    return t ? vc__mono_seconds() - t->t0 : 0.0;
}


static FILE *begin_event(vc_cache *c) {
    trace_writer *t = c->trace;
    if (!t) return NULL;
    fputs(t->first ? "\n" : ",\n", t->f);
    t->first = 0;
    return t->f;
}

/* Thread ids name the tracks (see the metadata written at start). */
enum { TID_H2D = 1, TID_D2H = 2, TID_EVICT = 3, TID_HOLDS = 4, TID_RESERVE = 5, TID_ENGINE = 6 };

static void write_copy(vc_cache *c, const char *what, const char *name, const char *model, size_t bytes, double start,
                       double end) {
    FILE *f = begin_event(c);
    if (!f) return;
    fprintf(f, "{\"ph\":\"X\",\"pid\":1,\"tid\":%d,\"ts\":%.3f,\"dur\":%.3f,\"cat\":\"%s\",\"name\":",
            strcmp(what, "writeback") ? TID_H2D : TID_D2H, start * 1e6, (end - start) * 1e6, what);
    json_put_string(f, name);
    fprintf(f, ",\"args\":{\"model\":");
    json_put_string(f, model);
    fprintf(f, ",\"bytes\":%zu}}", bytes);
}

/* An event's time on the trace's clock, or negative while unknown. Without a backend clock the
 * backend's times are CLOCK_MONOTONIC seconds, and the trace counts from its start. */
static double event_secs(vc_cache *c, void *ev) {
    double v = ev && c->ops->event_time ? c->ops->event_time(c->bctx, ev) : -1;
    if (v < 0) return -1;
    return c->ops->now ? v : v - ((trace_writer *)c->trace)->t0;
}

static void destroy_ev(vc_cache *c, void *ev) {
    if (ev) c->ops->event_destroy(c->bctx, ev);
}

void *vc__trace_mark(vc_cache *c, vc_stream stream) {
    if (!c->trace || !c->ops->event_time) return NULL;
    void *ev = NULL;
    if (c->ops->event_create(c->bctx, &ev) != VC_OK) return NULL;
    if (c->ops->event_record(c->bctx, ev, stream) != VC_OK) {
        c->ops->event_destroy(c->bctx, ev);
        return NULL;
    }
    return ev;
}

void vc__trace_copy(vc_cache *c, const char *what, const layer_t *l, void *ev0, vc_stream stream) {
    trace_writer *t = c->trace;
    if (!t) {
        destroy_ev(c, ev0);
        return;
    }
    double issued = vc__trace_now(c);
    void *ev1 = ev0 ? vc__trace_mark(c, stream) : NULL;
    double t0 = event_secs(c, ev0), t1 = event_secs(c, ev1);
    if (t0 >= 0 && t1 >= t0) { /* known at once (the simulator's virtual clock) */
        write_copy(c, what, l->name, l->model->name, l->bytes, t0, t1);
    } else if (ev1 && c->ops->event_query(c->bctx, ev1) == 0) { /* a GPU's: once the copy has run */
        pending_copy *p = calloc(1, sizeof *p);
        char *name = strdup(l->name), *model = strdup(l->model->name);
        if (p && name && model) {
            *p = (pending_copy){ev0, ev1, name, model, l->bytes, what, issued, NULL};
            if (t->tail)
                t->tail->next = p;
            else
                t->head = p;
            t->tail = p;
            return;
        }
        free(p), free(name), free(model);
        write_copy(c, what, l->name, l->model->name, l->bytes, issued, issued);
    } else { /* no device times: drawn where it was issued */
        write_copy(c, what, l->name, l->model->name, l->bytes, issued, issued);
    }
    destroy_ev(c, ev0);
    destroy_ev(c, ev1);
}

void vc__trace_poll(vc_cache *c, int wait) {
    trace_writer *t = c->trace;
    while (t && t->head) {
        pending_copy *p = t->head;
        if (!wait && c->ops->event_query(c->bctx, p->ev1) == 0) break; /* the rest are later, or wait their turn */
        if (wait) c->ops->event_synchronize(c->bctx, p->ev1); /* on failure the times stay unknown: issue time */
        double t0 = event_secs(c, p->ev0), t1 = event_secs(c, p->ev1);
        if (t0 < 0 || t1 < t0) t0 = t1 = p->issued;
        write_copy(c, p->what, p->name, p->model, p->bytes, t0, t1);
        t->head = p->next;
        if (!t->head) t->tail = NULL;
        destroy_ev(c, p->ev0);
        destroy_ev(c, p->ev1);
        free(p->name);
        free(p->model);
        free(p);
    }
}

void vc__trace_instant(vc_cache *c, const char *what, const layer_t *l, const char *reason) {
    FILE *f = begin_event(c);
    if (!f) return;
    fprintf(f, "{\"ph\":\"i\",\"s\":\"t\",\"pid\":1,\"tid\":%d,\"ts\":%.3f,\"cat\":\"%s\",\"name\":", TID_EVICT,
            vc__trace_now(c) * 1e6, what);
    json_put_string(f, l->name);
    fprintf(f, ",\"args\":{\"model\":");
    json_put_string(f, l->model->name);
    fprintf(f, ",\"reason\":\"%s\",\"bytes\":%zu}}", reason, l->bytes);
}

void vc__trace_note(vc_cache *c, const char *cat, const char *name) {
    FILE *f = begin_event(c);
    if (!f) return;
    /* process-wide instant: a decision about every layer, not one layer's event */
    fprintf(f, "{\"ph\":\"i\",\"s\":\"p\",\"pid\":1,\"tid\":%d,\"ts\":%.3f,\"cat\":\"%s\",\"name\":", TID_EVICT,
            vc__trace_now(c) * 1e6, cat);
    json_put_string(f, name);
    fputc('}', f);
}

void vc__trace_async(vc_cache *c, const char *cat, const char *name, uint64_t id, int begin, double ts) {
    FILE *f = begin_event(c);
    if (!f) return;
    fprintf(f, "{\"ph\":\"%s\",\"pid\":1,\"tid\":%d,\"ts\":%.3f,\"cat\":\"%s\",\"id\":\"%llx\",\"name\":",
            begin ? "b" : "e", strcmp(cat, "hold") ? TID_RESERVE : TID_HOLDS, ts * 1e6, cat,
            (unsigned long long)id);
    json_put_string(f, name);
    fputc('}', f);
}

void vc__trace_close(vc_cache *c) {
    trace_writer *t = c->trace;
    if (!t) return;
    vc__trace_poll(c, 1); /* copies still running: their times, once they have run */
    fputs("\n]}\n", t->f);
    fclose(t->f);
    free(t);
    c->trace = NULL;
}

int vc_cache_trace_start(vc_cache *c, const char *path) {
    if (!c || !path) return vc__fail(NULL, VC_ERR_INVALID_ARG, "vc_cache_trace_start: NULL argument");
    pthread_mutex_lock(&c->lock);
    int st = VC_OK;
    if (c->trace) {
        st = vc__fail(c, VC_ERR_BUSY, "vc_cache_trace_start: already tracing");
        goto done;
    }
    trace_writer *t = calloc(1, sizeof(*t));
    FILE *f = t ? fopen(path, "w") : NULL;
    if (!f) {
        free(t);
        st = vc__fail(c, t ? VC_ERR_IO : VC_ERR_NO_MEMORY, "vc_cache_trace_start: cannot create '%s'", path);
        goto done;
    }
    t->f = f;
    t->first = 1;
    t->t0 = vc__mono_seconds();
    c->trace = t;
    fputs("{\"displayTimeUnit\":\"ms\",\"traceEvents\":[", f);
    static const char *const tracks[] = {"", "h2d copy engine", "d2h copy engine", "evictions", "holds",
                                         "working memory", "engine"};
    for (int tid = 1; tid <= TID_ENGINE; tid++) {
        begin_event(c);
        fprintf(f, "{\"ph\":\"M\",\"pid\":1,\"tid\":%d,\"name\":\"thread_name\",\"args\":{\"name\":\"%s\"}}", tid,
                tracks[tid]);
    }
    begin_event(c);
    char process[160]; /* the backend's name is a third party's string: escaped like the others */
    snprintf(process, sizeof process, "libvramcache (%s)", c->ops->name);
    fputs("{\"ph\":\"M\",\"pid\":1,\"name\":\"process_name\",\"args\":{\"name\":", f);
    json_put_string(f, process);
    fputs("}}", f);
done:
    pthread_mutex_unlock(&c->lock);
    return st;
}

int vc_cache_trace_span(vc_cache *c, const char *track, const char *name, double start_s, double duration_s) {
    if (!c || !name) return vc__fail(NULL, VC_ERR_INVALID_ARG, "vc_cache_trace_span: NULL argument");
    pthread_mutex_lock(&c->lock);
    FILE *f = begin_event(c);
    if (f) {
        fprintf(f, "{\"ph\":\"X\",\"pid\":1,\"tid\":%d,\"ts\":%.3f,\"dur\":%.3f,\"cat\":", TID_ENGINE, start_s * 1e6,
                duration_s * 1e6);
        json_put_string(f, track ? track : "engine");
        fputs(",\"name\":", f);
        json_put_string(f, name);
        fputc('}', f);
    }
    pthread_mutex_unlock(&c->lock);
    return VC_OK;
}

int vc_cache_trace_stop(vc_cache *c) {
    if (!c) return vc__fail(NULL, VC_ERR_INVALID_ARG, "vc_cache_trace_stop: cache is NULL");
    pthread_mutex_lock(&c->lock);
    vc__trace_close(c);
    pthread_mutex_unlock(&c->lock);
    return VC_OK;
}
