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

typedef struct trace_writer {
    FILE *f;
    int first;
    double t0; /* host clock origin when the backend has none */
} trace_writer;

static double mono(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

double vc__trace_now(vc_cache *c) {
    trace_writer *t = c->trace;
    if (c->ops->now) return c->ops->now(c->bctx);
    return t ? mono() - t->t0 : 0.0;
}

/* JSON string body: quotes, backslashes and control characters escaped. */
static void put_json_string(FILE *f, const char *s) {
    fputc('"', f);
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\')
            fprintf(f, "\\%c", ch);
        else if (ch < 0x20)
            fprintf(f, "\\u%04x", ch);
        else
            fputc(ch, f);
    }
    fputc('"', f);
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

void vc__trace_copy(vc_cache *c, const char *what, const layer_t *l, double start, double end) {
    FILE *f = begin_event(c);
    if (!f) return;
    fprintf(f, "{\"ph\":\"X\",\"pid\":1,\"tid\":%d,\"ts\":%.3f,\"dur\":%.3f,\"cat\":\"%s\",\"name\":",
            strcmp(what, "writeback") ? TID_H2D : TID_D2H, start * 1e6, (end - start) * 1e6, what);
    put_json_string(f, l->name);
    fprintf(f, ",\"args\":{\"model\":");
    put_json_string(f, l->model->name);
    fprintf(f, ",\"bytes\":%zu}}", l->bytes);
}

void vc__trace_instant(vc_cache *c, const char *what, const layer_t *l, const char *reason) {
    FILE *f = begin_event(c);
    if (!f) return;
    fprintf(f, "{\"ph\":\"i\",\"s\":\"t\",\"pid\":1,\"tid\":%d,\"ts\":%.3f,\"cat\":\"%s\",\"name\":", TID_EVICT,
            vc__trace_now(c) * 1e6, what);
    put_json_string(f, l->name);
    fprintf(f, ",\"args\":{\"model\":");
    put_json_string(f, l->model->name);
    fprintf(f, ",\"reason\":\"%s\",\"bytes\":%zu}}", reason, l->bytes);
}

void vc__trace_async(vc_cache *c, const char *cat, const char *name, uint64_t id, int begin, double ts) {
    FILE *f = begin_event(c);
    if (!f) return;
    fprintf(f, "{\"ph\":\"%s\",\"pid\":1,\"tid\":%d,\"ts\":%.3f,\"cat\":\"%s\",\"id\":\"%llx\",\"name\":",
            begin ? "b" : "e", strcmp(cat, "hold") ? TID_RESERVE : TID_HOLDS, ts * 1e6, cat,
            (unsigned long long)id);
    put_json_string(f, name);
    fputc('}', f);
}

void vc__trace_close(vc_cache *c) {
    trace_writer *t = c->trace;
    if (!t) return;
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
    t->t0 = mono();
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
    fprintf(f, "{\"ph\":\"M\",\"pid\":1,\"name\":\"process_name\",\"args\":{\"name\":\"libvramcache (%s)\"}}",
            c->ops->name);
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
        put_json_string(f, track ? track : "engine");
        fputs(",\"name\":", f);
        put_json_string(f, name);
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
