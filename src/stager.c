/* The stager: one worker thread per cache (vc_cache_options.stage_ahead) that runs the loaders of
 * layers coming up in a known order, so that they reach the RAM pool before the prefetch window
 * gets to them.
 *
 * Why a thread: prefetch runs inside vc_layer_acquire, and a loader (a file read) there would stall
 * the very acquire that triggered it. The scheduler instead queues loader-only layers here when the
 * prefetch scan stops at one; the worker stages them with the same code as vc_layer_load_ram, which
 * releases the cache lock while the loader runs and marks the layer `loading`, so an acquire of it
 * meanwhile waits for the result instead of loading it twice.
 *
 * The queue holds layer ids, not pointers: a layer unregistered while queued is simply not found.
 * Failures are the engine's business only when it acquires the layer (its acquire loads it again
 * and reports the error), so the worker logs them and keeps them out of the handle's last error. */
#include <string.h>

#include "cache_internal.h"

#define STAGE_QUEUE (sizeof(((vc_cache *)0)->stage_q) / sizeof(vc_layer_id))

static void *stager_main(void *arg) {
    vc_cache *c = arg;
    vc__tls_internal_thread = 1;
    pthread_mutex_lock(&c->lock);
    for (;;) {
        while (!c->stager_stop && c->stage_len == 0) pthread_cond_wait(&c->stage_cv, &c->lock);
        if (c->stager_stop) break;
        vc_layer_id id = c->stage_q[c->stage_head];
        c->stage_head = (c->stage_head + 1) % STAGE_QUEUE;
        c->stage_len--;
        layer_t *l = slot_table_get(&c->layers, id);
        if (!l) continue; /* unregistered while queued */
        l->stage_queued = 0;
        if (l->loading || !vc__needs_load(l)) continue;
        int st = vc__stage_layer(c, l, "stage ahead");
        if (st != VC_OK)
            vc__log(c, VC_LOG_WARN, "%s (its acquire will load it)", vc_last_error()); /* names the stager */
    }
    pthread_mutex_unlock(&c->lock);
    return NULL;
}

int vc__stager_start(vc_cache *c) {
    c->stager_stop = 0;
    c->stage_head = c->stage_len = 0;
    if (pthread_cond_init(&c->stage_cv, NULL) != 0)
        return vc__fail(NULL, VC_ERR_NO_MEMORY, "vc_cache_create: stage_ahead: could not create a condition variable");
    if (pthread_create(&c->stager, NULL, stager_main, c) != 0) {
        pthread_cond_destroy(&c->stage_cv);
        return vc__fail(NULL, VC_ERR_NO_MEMORY, "vc_cache_create: stage_ahead: could not start its thread");
    }
    c->stager_on = 1;
    return VC_OK;
}

void vc__stager_stop(vc_cache *c) {
    if (!c->stager_on) return;
    pthread_mutex_lock(&c->lock);
    c->stager_stop = 1;
    pthread_cond_signal(&c->stage_cv);
    pthread_mutex_unlock(&c->lock);
    pthread_join(c->stager, NULL);
    /* Layers still queued lose their mark: a restarted stager starts from an empty queue. */
    pthread_mutex_lock(&c->lock);
    for (size_t k = 0; k < c->stage_len; k++) {
        layer_t *l = slot_table_get(&c->layers, c->stage_q[(c->stage_head + k) % STAGE_QUEUE]);
        if (l) l->stage_queued = 0;
    }
    c->stage_len = 0;
    c->stager_on = 0;
    pthread_mutex_unlock(&c->lock);
    pthread_cond_destroy(&c->stage_cv);
}

void vc__stager_enqueue(vc_cache *c, layer_t *l) {
    if (!c->stager_on || c->stager_stop || l->stage_queued || c->stage_len == STAGE_QUEUE) return;
    c->stage_q[(c->stage_head + c->stage_len) % STAGE_QUEUE] = l->id;
    c->stage_len++;
    l->stage_queued = 1;
    pthread_cond_signal(&c->stage_cv);
}
