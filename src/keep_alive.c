/* Keep-alive (InvokeAI's model_cache_keep_alive_min): when nothing has used the cache for the
 * configured time, clear it — every unheld layer leaves VRAM and, where its loader can read it
 * again, the RAM pool — so an idle engine gives its memory back to the machine. The same action as
 * InvokeAI's "Clear Model Cache" (vc_cache_clear, also here), on a timer.
 *
 * Why a thread: an idle engine makes no calls, so nothing else would notice the time passing.
 * The thread runs only when keep_alive_s > 0 and reads activity without touching the hot path:
 * an acquire ticks c->use_clock anyway, so the thread looks at that clock, at held layers and at
 * reservations a few times per period. Idle means the clock has not moved, nothing is held or
 * loading and no reservation is active; a clear happens once the cache has been idle for the whole
 * period (at most an eighth of it late), and once per idle spell.
 *
 * Never loses data: a layer without a loader keeps its RAM copy or engine pointer (what offload
 * VC_OFFLOAD_ALL does), held and loading layers stay. Evictions count as VC_EVICT_MANUAL. */
#include <time.h>

#include "cache_internal.h"

/* Something is in use now: a held or loading layer, or an active reservation. */
static int in_use(const vc_cache *c) {
    if (c->reservations) return 1;
    for (uint32_t i = 0; i < c->layers.count; i++) {
        const layer_t *l = c->layers.slots[i].ptr;
        if (l && (l->holds || l->loading)) return 1;
    }
    return 0;
}

size_t vc__clear_cache(vc_cache *c) {
    size_t stayed = 0;
    vc__free_device_quarantine(c, 0); /* first: a quarantined range keeps its segment */
    if (c->stream_budget || c->stream_model) vc__release_stream_region(c, VC_EVICT_MANUAL);
    for (uint32_t i = 0; i < c->layers.count; i++) {
        layer_t *l = c->layers.slots[i].ptr;
        if (!l) continue;
        if (l->holds || l->loading)
            stayed++;
        else
            vc__offload_layer(c, l, VC_OFFLOAD_ALL, "keep-alive");
    }
    vc__release_empty_segments(c);
    /* Plans were laid out in memory that went back: each is made afresh as its next pass begins. */
    for (uint32_t i = 0; i < c->models.count; i++) {
        model_t *m = c->models.slots[i].ptr;
        if (m) m->plan_capacity = 0;
    }
    if (c->group) c->group->plan_capacity = 0;
    return stayed;
}

/* A layer some thread is loading or patching now (the stage-ahead worker's, typically), or NULL. */
static const layer_t *loading_layer(const vc_cache *c) {
    for (uint32_t i = 0; i < c->layers.count; i++) {
        const layer_t *l = c->layers.slots[i].ptr;
        if (l && l->loading) return l;
    }
    return NULL;
}

int vc_cache_clear(vc_cache *c) {
    if (!c) return vc__fail(NULL, VC_ERR_INVALID_ARG, "vc_cache_clear: cache is NULL");
    pthread_mutex_lock(&c->lock);
    for (const layer_t *l; (l = loading_layer(c));) vc__wait_for_load(c, l); /* as the per-layer calls do */
    size_t stayed = vc__clear_cache(c);
    int st = stayed ? vc__fail(c, VC_ERR_BUSY, "vc_cache_clear: %zu layer(s) are held and stayed; the others "
                               "were cleared", stayed)
                    : VC_OK;
    pthread_mutex_unlock(&c->lock);
    return st;
}

static void *keep_alive_main(void *arg) {
    vc_cache *c = arg;
    vc__tls_internal_thread = 1;
    const double tick = c->keep_alive_s / 8;
    pthread_mutex_lock(&c->lock);
    uint64_t seen = c->use_clock;
    double idle_since = vc__mono_seconds();
    int cleared = 0;
    while (!c->keep_alive_stop) {
        double wake = vc__mono_seconds() + tick;
        struct timespec ts = {.tv_sec = (time_t)wake, .tv_nsec = (long)((wake - (double)(time_t)wake) * 1e9)};
        if (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
        pthread_cond_timedwait(&c->keep_alive_cv, &c->lock, &ts);
        if (c->keep_alive_stop) break;
        double now = vc__mono_seconds();
        if (c->use_clock != seen || in_use(c)) { /* used since the last look: idle from now on */
            seen = c->use_clock;
            idle_since = now;
            cleared = 0;
            continue;
        }
        if (cleared || now - idle_since < c->keep_alive_s) continue;
        size_t vram = vc__vram_total(c), ram = c->ram_bytes;
        size_t stayed = vc__clear_cache(c);
        cleared = 1;
        c->keep_alive_clears++;
        char a[32], b[32];
        vc__log(c, VC_LOG_INFO,
                "cleared the model cache after %.3g min without use (model_cache_keep_alive_min): gave back %s "
                "of device memory and %s of the RAM pool%s",
                c->keep_alive_s / 60, vc__fmt_bytes(sat_sub(vram, vc__vram_total(c)), a, sizeof a),
                vc__fmt_bytes(sat_sub(ram, c->ram_bytes), b, sizeof b),
                stayed ? "; layers in use stayed" : "");
    }
    pthread_mutex_unlock(&c->lock);
    return NULL;
}

int vc__keep_alive_start(vc_cache *c) {
    c->keep_alive_stop = 0;
    pthread_condattr_t attr;
    if (pthread_condattr_init(&attr) != 0)
        return vc__fail(NULL, VC_ERR_NO_MEMORY, "vc_cache_create: keep-alive: could not create a condition variable");
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC); /* timed waits unaffected by wall-clock changes */
    int bad = pthread_cond_init(&c->keep_alive_cv, &attr) != 0;
    pthread_condattr_destroy(&attr);
    if (bad) return vc__fail(NULL, VC_ERR_NO_MEMORY, "vc_cache_create: keep-alive: could not create a condition variable");
    if (pthread_create(&c->keep_alive, NULL, keep_alive_main, c) != 0) {
        pthread_cond_destroy(&c->keep_alive_cv);
        return vc__fail(NULL, VC_ERR_NO_MEMORY, "vc_cache_create: keep-alive: could not start its thread");
    }
    c->keep_alive_on = 1;
    return VC_OK;
}

void vc__keep_alive_stop(vc_cache *c) {
    if (!c->keep_alive_on) return;
    pthread_mutex_lock(&c->lock);
    c->keep_alive_stop = 1;
    pthread_cond_signal(&c->keep_alive_cv);
    pthread_mutex_unlock(&c->lock);
    pthread_join(c->keep_alive, NULL);
    pthread_cond_destroy(&c->keep_alive_cv);
    c->keep_alive_on = 0;
}
