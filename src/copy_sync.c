/*
 * When copies are done: events, waits, and what happens when the backend cannot say.
 *
 * Every copy the cache queues reads or writes host memory (a RAM copy, an owner's copy) and device
 * memory (an arena range). Neither may be reused until the copy has run, and the cache learns that
 * from events. When an event cannot be recorded or waited on, settle_stream waits for the whole
 * stream instead; when even that fails, the memory is quarantined (kept, and counted) until the
 * stream can be waited for, rather than freed under a copy that may still run.
 *
 * Runs with c->lock held.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cache_internal.h"
#include "residency_internal.h"

/* ---- events ---------------------------------------------------------------------------------- */

int vc__ensure_event(vc_cache *c, void **ev) {
    return *ev ? VC_OK : c->ops->event_create(c->bctx, ev);
}

/* Host memory that a copy may still use, with no event left to tell when it is done (settle_stream
 * failed): a write-back still writing it, or an upload still reading it (unsettled_until). Freeing
 * it could let the copy write into memory the process has reused, or upload bytes the process has
 * overwritten, so it is kept, counted in the RAM pool, until both copy streams can be waited for
 * again (ram_reserve tries when it runs short) or the cache is destroyed, after its device memory
 * has gone (cudaFree waits for the device). */
void vc__quarantine_node(vc_cache *c, deferred_free *d) { /* a buffer already counted in ram_bytes */
    d->layer = NULL;
    d->next = c->quarantine;
    c->quarantine = d;
}

void vc__quarantine(vc_cache *c, void *p, size_t bytes, int pinned, int counted) {
    deferred_free *d = malloc(sizeof *d);
    if (!d) { /* cannot even track it: lost, which beats freeing it under a copy */
        if (counted) c->ram_bytes -= bytes;
        return;
    }
    *d = (deferred_free){.ptr = p, .bytes = bytes, .pinned = pinned};
    if (!counted) c->ram_bytes += bytes;
    vc__quarantine_node(c, d);
}

/* Keeps a device range out of use: a write-back from it could not be waited for. */
void vc__quarantine_range(vc_cache *c, arena *a, arena_block *b) {
    device_quarantine *q = malloc(sizeof *q);
    if (!q) { /* cannot track it: it goes back, as it did before there was a quarantine */
        arena_free(a, b);
        return;
    }
    b->owner = &c->quarantine_owner;
    *q = (device_quarantine){.arena = a, .block = b, .next = c->device_quarantine};
    c->device_quarantine = q;
}

int vc__free_device_quarantine(vc_cache *c, int settled) {
    if (!c->device_quarantine) return 0;
    if (!settled && !vc__settle_stream(c, c->download_stream, NULL)) return 0;
    while (c->device_quarantine) {
        device_quarantine *q = c->device_quarantine;
        c->device_quarantine = q->next;
        arena_free(q->arena, q->block);
        free(q);
    }
    return 1;
}

void vc__free_quarantine(vc_cache *c) {
    while (c->quarantine) {
        deferred_free *d = c->quarantine;
        c->quarantine = d->next;
        vc__free_ram_buffer(c, d->ptr, d->bytes, d->pinned);
        free(d);
    }
}

/* Makes later work on `stream` wait for `ev`. When the backend cannot queue the wait, the host
 * waits for the event instead: slower, never out of order (a copy issued after it cannot overtake
 * the work the event captures). VC_ERR_BACKEND only when neither works. */
int vc__order_after(vc_cache *c, vc_stream stream, void *ev) {
    if (c->ops->stream_wait_event(c->bctx, stream, ev) == VC_OK) return VC_OK;
    vc__log(c, VC_LOG_WARN, "a stream could not wait on an event (%s); the host waits for it instead",
            vc__take_backend_error());
    return c->ops->event_synchronize(c->bctx, ev) == VC_OK ? VC_OK : VC_ERR_BACKEND;
}

/* A copy was queued on `stream` but the event that was to track it could not be recorded or waited
 * on: the host memory it reads or writes must not be reused until it has run, so wait for the
 * stream through a fresh event (three tries: a transient failure should not cost the ordering).
 * Returns 0 when even that fails (the backend is broken): the caller must then leave the host
 * memory alone rather than free it under a copy that may still run, and the failure is logged at
 * ERROR naming `what`. With `what` NULL: one quiet try (asking again whether quarantined memory
 * can go). A success on the upload stream counts in upload_settles. */
int vc__settle_stream(vc_cache *c, vc_stream stream, const char *what) {
    int ok = 0;
    for (int tries = 0; tries < (what ? 3 : 1) && !ok; tries++) {
        void *ev = NULL;
        ok = c->ops->event_create(c->bctx, &ev) == VC_OK && c->ops->event_record(c->bctx, ev, stream) == VC_OK &&
             c->ops->event_synchronize(c->bctx, ev) == VC_OK;
        if (ev) c->ops->event_destroy(c->bctx, ev);
    }
    if (ok && stream == c->upload_stream) c->upload_settles++; /* every copy queued before has run */
    if (!ok && what)
        vc__log(c, VC_LOG_ERROR, "%s: a queued copy cannot be waited for (%s): memory it may still use is not "
                "reused until it can be", what, vc__take_backend_error());
    else if (!ok)
        vc__take_backend_error(); /* a quiet try (NULL what): the caller keeps waiting */
    return ok;
}

/* An upload of l whose copy settle_stream could not wait for: its source counts as read until the
 * upload stream has been waited for. */
void vc__mark_unsettled(vc_cache *c, layer_t *l) { l->unsettled_until = c->upload_settles + 1; }

/* 1 while an unsettled upload of l may still run; a quiet wait for the upload stream is tried
 * first, so one transient failure does not keep the source for ever. */
static int upload_unsettled(vc_cache *c, layer_t *l) {
    if (l->unsettled_until > c->upload_settles) vc__settle_stream(c, c->upload_stream, NULL);
    if (l->unsettled_until > c->upload_settles) return 1;
    l->unsettled_until = 0;
    return 0;
}

/* 1 when the latest upload of l completed (and forgets it), 0 while in flight. */
int vc__upload_done(vc_cache *c, layer_t *l) {
    if (l->unsettled_until && upload_unsettled(c, l)) return 0;
    if (!l->upload_pending) return 1;
    if (c->ops->event_query(c->bctx, l->upload_ev) != 1) return 0; /* pending, or unknown: assume pending */
    l->upload_pending = 0;
    return 1;
}

int vc__writeback_done(vc_cache *c, layer_t *l) {
    if (!l->ram_pending) return 1;
    if (c->ops->event_query(c->bctx, l->ram_ev) != 1) return 0;
    l->ram_pending = 0;
    return 1;
}

int vc__wait_prefetches(vc_cache *c, const layer_t *except) {
    int any = 0;
    for (uint32_t i = 0; i < c->layers.count; i++) {
        layer_t *x = c->layers.slots[i].ptr;
        if (x && x != except && x->vblock && x->prefetched && x->upload_pending && !x->holds) {
            c->ops->event_synchronize(c->bctx, x->upload_ev);
            any = 1;
        }
    }
    return any;
}

/* Block until l's latest upload (write-back) has run: VC_OK, or VC_ERR_BACKEND when neither its
 * event nor a fresh one on its stream can be waited for; it then still counts as in flight, and the
 * memory it uses must not be freed or written (see quarantine). */
int vc__wait_upload(vc_cache *c, layer_t *l) {
    if (l->unsettled_until > c->upload_settles && !vc__settle_stream(c, c->upload_stream, "upload wait"))
        return VC_ERR_BACKEND;
    if (l->unsettled_until) { /* the stream wait covered the latest upload too */
        l->unsettled_until = 0;
        l->upload_pending = 0;
    }
    if (l->upload_pending && c->ops->event_synchronize(c->bctx, l->upload_ev) != VC_OK &&
        !vc__settle_stream(c, c->upload_stream, "upload wait"))
        return VC_ERR_BACKEND;
    l->upload_pending = 0;
    return VC_OK;
}

int vc__wait_writeback(vc_cache *c, layer_t *l) {
    if (l->ram_pending && c->ops->event_synchronize(c->bctx, l->ram_ev) != VC_OK &&
        !vc__settle_stream(c, c->download_stream, "write-back wait"))
        return VC_ERR_BACKEND;
    l->ram_pending = 0;
    return VC_OK;
}
