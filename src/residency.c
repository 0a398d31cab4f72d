/*
 * Residency: moving layers between not-loaded, RAM and VRAM, and the budgets that bound both pools.
 *
 * Every function here runs with c->lock held, except that a loader callback runs with it released
 * while its layer is marked `loading` (which pins the layer: nothing evicts, unregisters or loads
 * it concurrently; other acquirers wait on c->loaded).
 *
 * Device memory is reused in stream order rather than by blocking the host: before a freed range
 * can be overwritten, the upload stream waits on the evicted layer's release event (recorded on the
 * engine's stream), and on the write-back event when its weights are being copied back to RAM.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cache_internal.h"

/* ---- intrusive lists ------------------------------------------------------------------------- */

#define LINKS(x, vram) ((vram) ? &(x)->vprev : &(x)->rprev)
#define NEXT(x, vram) ((vram) ? &(x)->vnext : &(x)->rnext)

void list_push_tail(layer_list *l, layer_t *x, int vram) {
    *LINKS(x, vram) = l->tail;
    *NEXT(x, vram) = NULL;
    if (l->tail)
        *NEXT(l->tail, vram) = x;
    else
        l->head = x;
    l->tail = x;
}

void list_unlink(layer_list *l, layer_t *x, int vram) {
    layer_t *p = *LINKS(x, vram), *n = *NEXT(x, vram);
    if (p)
        *NEXT(p, vram) = n;
    else if (l->head == x)
        l->head = n;
    else
        return; /* not in the list */
    if (n)
        *LINKS(n, vram) = p;
    else
        l->tail = p;
    *LINKS(x, vram) = *NEXT(x, vram) = NULL;
}

/* ---- logging --------------------------------------------------------------------------------- */

void vc__log_memory(vc_cache *c, const char *what, const layer_t *l) {
    if (!c->log_memory_usage) return;
    char a[32], b[32], d[32], e[32], f[32], g[32], h[32]; /* one buffer per number */
    vc__log(c, VC_LOG_INFO,
            "%s layer '%s' of model '%s' (%s): VRAM weights %s of limit %s (arena %s), RAM pool %s "
            "of %s, working memory reserved %s",
            what, l->name, l->model->name, vc__fmt_bytes(l->bytes, a, sizeof a),
            vc__fmt_bytes(vc__vram_used(c), b, sizeof b), vc__fmt_bytes(c->stats.vram_limit, d, sizeof d),
            vc__fmt_bytes(vc__vram_total(c), e, sizeof e), vc__fmt_bytes(c->ram_bytes, f, sizeof f),
            vc__fmt_bytes(c->ram_budget, g, sizeof g), vc__fmt_bytes(c->reserved_sum, h, sizeof h));
}

/* ---- events ---------------------------------------------------------------------------------- */

static int ensure_event(vc_cache *c, void **ev) {
    return *ev ? VC_OK : c->ops->event_create(c->bctx, ev);
}

static void free_ram_buffer(vc_cache *c, void *p, size_t bytes, int pinned);

/* Host memory that a copy may still use, with no event left to tell when it is done (settle_stream
 * failed): a write-back still writing it, or an upload still reading it (unsettled_until). Freeing
 * it could let the copy write into memory the process has reused, or upload bytes the process has
 * overwritten, so it is kept, counted in the RAM pool, until both copy streams can be waited for
 * again (ram_reserve tries when it runs short) or the cache is destroyed, after its device memory
 * has gone (cudaFree waits for the device). */
static void quarantine_node(vc_cache *c, deferred_free *d) { /* a buffer already counted in ram_bytes */
    d->layer = NULL;
    d->next = c->quarantine;
    c->quarantine = d;
}

static void quarantine(vc_cache *c, void *p, size_t bytes, int pinned, int counted) {
    deferred_free *d = malloc(sizeof *d);
    if (!d) { /* cannot even track it: lost, which beats freeing it under a copy */
        if (counted) c->ram_bytes -= bytes;
        return;
    }
    *d = (deferred_free){.ptr = p, .bytes = bytes, .pinned = pinned};
    if (!counted) c->ram_bytes += bytes;
    quarantine_node(c, d);
}

static int settle_stream(vc_cache *c, vc_stream stream, const char *what);

/* Keeps a device range out of use: a write-back from it could not be waited for. */
static void quarantine_range(vc_cache *c, arena *a, arena_block *b) {
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
    if (!settled && !settle_stream(c, c->download_stream, NULL)) return 0;
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
        free_ram_buffer(c, d->ptr, d->bytes, d->pinned);
        free(d);
    }
}

/* Makes later work on `stream` wait for `ev`. When the backend cannot queue the wait, the host
 * waits for the event instead: slower, never out of order (a copy issued after it cannot overtake
 * the work the event captures). VC_ERR_BACKEND only when neither works. */
static int order_after(vc_cache *c, vc_stream stream, void *ev) {
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
static int settle_stream(vc_cache *c, vc_stream stream, const char *what) {
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
static void mark_unsettled(vc_cache *c, layer_t *l) { l->unsettled_until = c->upload_settles + 1; }

/* 1 while an unsettled upload of l may still run; a quiet wait for the upload stream is tried
 * first, so one transient failure does not keep the source for ever. */
static int upload_unsettled(vc_cache *c, layer_t *l) {
    if (l->unsettled_until > c->upload_settles) settle_stream(c, c->upload_stream, NULL);
    if (l->unsettled_until > c->upload_settles) return 1;
    l->unsettled_until = 0;
    return 0;
}

/* 1 when the latest upload of l completed (and forgets it), 0 while in flight. */
static int upload_done(vc_cache *c, layer_t *l) {
    if (l->unsettled_until && upload_unsettled(c, l)) return 0;
    if (!l->upload_pending) return 1;
    if (c->ops->event_query(c->bctx, l->upload_ev) != 1) return 0; /* pending, or unknown: assume pending */
    l->upload_pending = 0;
    return 1;
}

static int writeback_done(vc_cache *c, layer_t *l) {
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
static int wait_upload(vc_cache *c, layer_t *l) {
    if (l->unsettled_until > c->upload_settles && !settle_stream(c, c->upload_stream, "upload wait"))
        return VC_ERR_BACKEND;
    if (l->unsettled_until) { /* the stream wait covered the latest upload too */
        l->unsettled_until = 0;
        l->upload_pending = 0;
    }
    if (l->upload_pending && c->ops->event_synchronize(c->bctx, l->upload_ev) != VC_OK &&
        !settle_stream(c, c->upload_stream, "upload wait"))
        return VC_ERR_BACKEND;
    l->upload_pending = 0;
    return VC_OK;
}

static int wait_writeback(vc_cache *c, layer_t *l) {
    if (l->ram_pending && c->ops->event_synchronize(c->bctx, l->ram_ev) != VC_OK &&
        !settle_stream(c, c->download_stream, "write-back wait"))
        return VC_ERR_BACKEND;
    l->ram_pending = 0;
    return VC_OK;
}

/* ---- budgets --------------------------------------------------------------------------------- */

size_t vc__device_avail(vc_cache *c) {
    size_t free_b = 0, total = 0;
    if (c->ops->mem_info(c->bctx, &free_b, &total) != VC_OK) {
        vc__take_backend_error();
        free_b = 0;
    }
    return sat_add(sat_add(free_b, vc__vram_total(c)), c->buffer_bytes);
}

size_t vc__weight_limit(vc_cache *c) {
    size_t free_b = 0, total = 0;
    if (c->ops->mem_info(c->bctx, &free_b, &total) != VC_OK) {
        /* Without a reading, assume nothing beyond what the cache already holds. */
        vc__log(c, VC_LOG_WARN, "backend '%s' could not report free memory: %s", c->ops->name,
                vc__take_backend_error());
        free_b = 0;
    }
    /* What the cache could hold if it alone used the device: free memory plus its own. */
    size_t avail = sat_add(sat_add(free_b, vc__vram_total(c)), c->buffer_bytes);
    size_t limit;
    if (c->vram_budget == VC_SIZE_AUTO && c->smart_working_mem && c->reservations)
        limit = sat_sub(avail, c->reserved_sum); /* the operations' own estimates replace the flat reserve */
    else if (c->vram_budget == VC_SIZE_AUTO)
        limit = sat_sub(avail, max_sz(c->working_mem, c->reserved_sum));
    else /* an explicit budget replaces the standing working memory (seed 000), not reservations */
        limit = min_sz(c->vram_budget, sat_sub(avail, c->reserved_sum));
    if (c->mode == VC_OFFLOAD_MODE_BALANCED && c->max_gpu_memory > 0) { /* seed 001's threshold */
        double thr = c->max_gpu_memory <= 1.0 ? c->max_gpu_memory * (double)total
                                              : c->max_gpu_memory * (double)VC_GB;
        if (thr < (double)limit) limit = (size_t)thr;
    }
    c->stats.vram_limit = limit;
    return limit;
}

/* ---- RAM pool -------------------------------------------------------------------------------- */

static void free_ram_buffer(vc_cache *c, void *p, size_t bytes, int pinned) {
    c->ops->host_free(c->bctx, p, bytes, pinned);
    c->ram_bytes -= bytes;
}

void vc__drop_ram(vc_cache *c, layer_t *l) {
    if (!l->ram) return;
    int idle = (wait_upload(c, l) | wait_writeback(c, l)) == VC_OK; /* both waits run */
    list_unlink(&c->ram_lru, l, 0);
    if (idle)
        free_ram_buffer(c, l->ram, l->bytes, l->ram_pinned);
    else
        quarantine(c, l->ram, l->bytes, l->ram_pinned, 1);
    l->ram = NULL;
    c->stats.layers_in_ram--;
}

/* Frees deferred RAM buffers whose uploads completed; with `wait`, all of them. `only` limits the
 * pass to one layer's buffers. */
static void drain_deferred(vc_cache *c, int wait, const layer_t *only) {
    deferred_free **pp = &c->deferred;
    while (*pp) {
        deferred_free *d = *pp;
        if (only && d->layer != only) {
            pp = &d->next;
            continue;
        }
        int idle = 1;
        if (wait)
            idle = wait_upload(c, d->layer) == VC_OK;
        else if (!upload_done(c, d->layer)) {
            pp = &d->next;
            continue;
        }
        *pp = d->next;
        if (idle) {
            free_ram_buffer(c, d->ptr, d->bytes, d->pinned);
            free(d);
        } else {
            quarantine_node(c, d);
        }
    }
}

static void drain_remote_pins(vc_cache *c, int wait, const layer_t *only);

void vc__reap_deferred(vc_cache *c) {
    if (c->deferred) drain_deferred(c, 0, NULL);
    if (c->remote_pins) drain_remote_pins(c, 0, NULL); /* owners may patch once our uploads are done */
}

/* keep_ram_copy off: the RAM copy goes once the upload reading it completes. */
static void drop_ram_after_upload(vc_cache *c, layer_t *l) {
    if (l->host_pins) return; /* another cache's upload reads it */
    if (upload_done(c, l)) {
        vc__drop_ram(c, l);
        return;
    }
    deferred_free *d = malloc(sizeof(*d));
    if (!d) return; /* keep the copy: costs RAM within budget, loses nothing */
    d->ptr = l->ram;
    d->bytes = l->bytes;
    d->pinned = l->ram_pinned;
    d->layer = l;
    d->next = c->deferred;
    c->deferred = d;
    list_unlink(&c->ram_lru, l, 0);
    l->ram = NULL;
    c->stats.layers_in_ram--;
}

static int ram_droppable(vc_cache *c, layer_t *l) {
    return !l->loading && !l->uploading && !l->patched && !l->host_pins && upload_done(c, l) && writeback_done(c, l);
}

/* Makes room for `bytes` in the RAM pool by dropping least recently used RAM copies (all of which a
 * loader can produce again). `quiet` skips recording an error (used on best-effort paths). */
static int ram_reserve(vc_cache *c, size_t bytes, const layer_t *exclude, const char *fn, int quiet) {
    char a[32], b[32], d[32];
    if (bytes > c->ram_budget) {
        if (quiet) return VC_ERR_OUT_OF_RAM;
        return vc__fail(c, VC_ERR_OUT_OF_RAM, "%s: layer '%s' of model '%s' needs %s of RAM, more than "
                        "the whole RAM cache budget of %s (raise max_cache_ram_gb)", fn, exclude->name,
                        exclude->model->name, vc__fmt_bytes(bytes, a, sizeof a),
                        vc__fmt_bytes(c->ram_budget, b, sizeof b));
    }
    drain_deferred(c, 0, NULL);
    layer_t *x = c->ram_lru.head;
    int planned = c->policy == VC_POLICY_PLANNED;
    while (c->ram_bytes > c->ram_budget - bytes) {
        if (planned)
            x = vc__sched_ram_victim(c, exclude, ram_droppable);
        else
            while (x && (x == exclude || !ram_droppable(c, x))) x = x->rnext;
        if (!x) {
            if (c->deferred) {
                drain_deferred(c, 1, NULL);
                x = c->ram_lru.head;
                continue;
            }
            /* Copies that only a copy still in flight keeps (an upload reading them, a write-back
             * filling them): wait for the least recently used one rather than fail for a moment's
             * state. On a GPU with a tight RAM budget that moment is every prefetch. */
            layer_t *busy = c->ram_lru.head;
            while (busy && (busy == exclude || busy->loading || busy->uploading || busy->patched || busy->host_pins ||
                            !(busy->upload_pending || busy->ram_pending || busy->unsettled_until)))
                busy = busy->rnext;
            if (busy && (wait_upload(c, busy) | wait_writeback(c, busy)) == VC_OK) {
                x = c->ram_lru.head;
                continue;
            }
            if (c->quarantine && settle_stream(c, c->download_stream, fn) && settle_stream(c, c->upload_stream, fn)) {
                vc__free_quarantine(c); /* the copies that might have used them are done */
                vc__free_device_quarantine(c, 1);
                x = c->ram_lru.head;
                continue;
            }
            if (quiet) return VC_ERR_OUT_OF_RAM;
            /* Patched weights and LoRA backups never leave: say how much of the pool they are. */
            size_t patched = 0;
            for (const layer_t *p = c->ram_lru.head; p; p = p->rnext)
                if (p->patched) patched += p->bytes + (p->backup ? p->bytes : 0);
            size_t held_back = 0; /* the quarantine: copies a failing device may still run */
            for (const deferred_free *q = c->quarantine; q; q = q->next) held_back += q->bytes;
            char e[32], f[32], why[320] = "loading or being copied";
            if (patched)
                snprintf(why, sizeof why, "%s of them patched weights and their backups, which stay until "
                         "vc_layer_unpatch; the rest loading or being copied", vc__fmt_bytes(patched, e, sizeof e));
            if (held_back)
                snprintf(why + strlen(why), sizeof why - strlen(why), "; %s of them buffers that copies the "
                         "device could not be waited for may still use, kept until it can be",
                         vc__fmt_bytes(held_back, f, sizeof f));
            return vc__fail(c, VC_ERR_OUT_OF_RAM, "%s: layer '%s' of model '%s' needs %s of RAM; the "
                            "RAM cache holds %s of its %s budget in copies that cannot be dropped now "
                            "(%s)", fn, exclude->name, exclude->model->name,
                            vc__fmt_bytes(bytes, a, sizeof a), vc__fmt_bytes(c->ram_bytes, b, sizeof b),
                            vc__fmt_bytes(c->ram_budget, d, sizeof d), why);
        }
        layer_t *next = x->rnext;
        vc__drop_ram(c, x);
        c->stats.ram_evictions++;
        x = next;
    }
    return VC_OK;
}

/* ---- VRAM pool ------------------------------------------------------------------------------- */

void vc__evict_vram(vc_cache *c, layer_t *l, vc_evict_reason reason, int drop_ok) {
    void *dptr = arena_block_ptr(l->vblock);
    vc__range_push(c, "evict", l->name);
    /* No later upload may overwrite this range before the engine's last use of it completes. A ring
     * placement defers that wait to the copy into the range (nothing reads the range again here:
     * the layer has another copy); see upload(). */
    if (l->release_recorded) {
        int deferred = 0;
        if (c->collect_fences && c->nfence < sizeof c->fence / sizeof c->fence[0] && l->vblock->seg == c->fence_seg &&
            (l->host_src || l->ram || l->owner || drop_ok)) {
            c->fence[c->nfence].at = l->vblock->offset;
            c->fence[c->nfence].ev = l->release_ev;
            c->nfence++;
            deferred = 1;
        }
        if (!deferred) order_after(c, c->upload_stream, l->release_ev);
    }
    /* A layer whose loader is running (another cache's upload asked for its RAM copy while this
     * one stayed on the device) gets its RAM copy from that load: a write-back as well would give
     * it two, and list it twice in the RAM pool. */
    int range_idle = 1; /* no write-back from the range that cannot be waited for */
    if (!l->host_src && !l->ram && !l->owner && !drop_ok && !l->loading) {
        /* The device holds the only copy (keep_ram_copy off): copy it back when the RAM pool has
         * room, else drop it, since the loader can produce it again. */
        void *buf = NULL;
        int pinned = 0, queued = 0, recorded = 0;
        int st = ram_reserve(c, l->bytes, l, "evict", 1);
        if (st == VC_OK) st = c->ops->host_alloc(c->bctx, l->bytes, &buf, &pinned);
        if (st == VC_OK) st = ensure_event(c, &l->ram_ev);
        if (st == VC_OK && l->release_recorded)
            st = order_after(c, c->download_stream, l->release_ev);
        if (st == VC_OK && l->upload_pending) /* a prefetch evicted before it has landed */
            st = order_after(c, c->download_stream, l->upload_ev);
        void *trace_ev = st == VC_OK ? vc__trace_mark(c, c->download_stream) : NULL;
        if (st == VC_OK) st = c->ops->copy_d2h(c->bctx, buf, dptr, l->bytes, c->download_stream);
        queued = st == VC_OK;
        if (queued && c->trace)
            vc__trace_copy(c, "writeback", l, trace_ev, c->download_stream);
        else if (trace_ev)
            c->ops->event_destroy(c->bctx, trace_ev);
        if (st == VC_OK) st = c->ops->event_record(c->bctx, l->ram_ev, c->download_stream);
        recorded = st == VC_OK;
        if (st == VC_OK) st = order_after(c, c->upload_stream, l->ram_ev);
        if (st == VC_OK) {
            l->ram = buf;
            l->ram_pinned = pinned;
            l->ram_pending = 1;
            c->ram_bytes += l->bytes;
            vc__note_ram(c);
            list_push_tail(&c->ram_lru, l, 0);
            c->stats.layers_in_ram++;
            c->stats.bytes_d2h += l->bytes;
        } else {
            /* A queued copy must finish before its buffer goes and before its device range takes
             * another layer (an upload into it would overwrite what the copy has not read yet):
             * with the backend able neither to order nor to wait, both are quarantined (see
             * settle_stream, device_quarantine). The layer itself leaves: the loader produces it
             * again. */
            int idle = !queued || (recorded && c->ops->event_synchronize(c->bctx, l->ram_ev) == VC_OK) ||
                       settle_stream(c, c->download_stream, "evict");
            if (buf && idle) c->ops->host_free(c->bctx, buf, l->bytes, pinned);
            else if (buf) quarantine(c, buf, l->bytes, pinned, 0);
            range_idle = idle;
            vc__log(c, VC_LOG_DEBUG, "layer '%s' of model '%s' leaves VRAM without a write-back (%s); "
                    "its loader will produce it again", l->name, l->model->name, vc__take_backend_error());
        }
    }
    list_unlink(&c->vram_lru, l, 1);
    if (range_idle)
        arena_free(l->in_stream ? &c->sarena : &c->arena, l->vblock);
    else
        quarantine_range(c, l->in_stream ? &c->sarena : &c->arena, l->vblock);
    l->vblock = NULL;
    l->in_stream = 0;
    if (l->prefetched) { /* a prefetch that was never used */
        l->prefetched = 0;
        c->prefetch_inflight--;
    }
    vc__note_vram_layer(c, l, -1);
    vc__sched_on_evict(c, l);
    c->stats.vram_evictions[reason]++;
    vc__trace_instant(c, "evict", l, vc_evict_reason_name((int)reason));
    vc__log(c, VC_LOG_DEBUG, "evicted layer '%s' of model '%s' from VRAM (%s)", l->name, l->model->name,
            vc_evict_reason_name((int)reason));
    vc__log_memory(c, "unloaded", l);
    vc__range_pop(c);
}

static int owner_evictable(void *owner, void *ud) {
    return vc__evictable(ud, owner);
}

static int segment_pinned(vc_cache *c, const arena_segment *s) {
    for (const arena_block *b = s->first; b; b = b->next)
        if (b->owner && !owner_evictable(b->owner, c)) return 1;
    return 0;
}

/* Evicts every owner of the blocks from `first` to `last` (inclusive). Owners are collected first
 * because freeing merges blocks. Returns VC_ERR_NOT_FOUND when the run owns nothing (no progress:
 * the caller must try something else rather than loop). */
static int evict_run(vc_cache *c, arena_block *first, arena_block *last, vc_evict_reason reason) {
    size_t n = 0;
    for (arena_block *b = first;; b = b->next) {
        n += b->owner != NULL;
        if (b == last) break;
    }
    if (n == 0) return VC_ERR_NOT_FOUND;
    layer_t **owners = malloc(n * sizeof(*owners));
    if (!owners) return VC_ERR_NO_MEMORY;
    size_t i = 0;
    for (arena_block *b = first;; b = b->next) {
        if (b->owner) owners[i++] = b->owner;
        if (b == last) break;
    }
    for (i = 0; i < n; i++) vc__evict_vram(c, owners[i], reason, 0);
    free(owners);
    return VC_OK;
}

static void release_empty_segments(vc_cache *c, arena *a) {
    arena_segment *s = a->segments;
    while (s) {
        arena_segment *next = s->next;
        if (s->used == 0) c->ops->device_free(c->bctx, arena_remove_segment(a, s));
        s = next;
    }
}

/* The streaming region gives back its empty segments, and its share shrinks to what it still
 * has. With the whole region gone its model is planned afresh at its next pass (as after a cache
 * clear), which lays a region out again; without that it would stream through the kept arena
 * until its budget happened to move. */
static void shrink_stream_region(vc_cache *c) {
    release_empty_segments(c, &c->sarena);
    c->stream_budget = min_sz(c->stream_budget, c->sarena.total);
    if (!c->stream_budget && c->stream_model) {
        c->stream_model->plan_capacity = 0;
        c->stream_model = NULL;
    }
}

void vc__release_empty_segments(vc_cache *c) {
    release_empty_segments(c, &c->sarena);
    release_empty_segments(c, &c->arena);
}

static int grow_arena(vc_cache *c, arena *a, size_t need, size_t align, size_t limit, size_t max_seg);

/* Evicts the owners of a whole segment and gives the segment back. */
static int free_segment(vc_cache *c, arena *a, arena_segment *seg, vc_evict_reason reason) {
    arena_block *last = seg->first;
    while (last->next) last = last->next;
    if (evict_run(c, seg->first, last, reason) == VC_ERR_NO_MEMORY) return VC_ERR_NO_MEMORY;
    /* An eviction whose write-back could not be waited for left its range quarantined: the
     * segment stays (pinned by it) until the range is free. */
    if (seg->used) return VC_ERR_BUSY;
    c->ops->device_free(c->bctx, arena_remove_segment(a, seg));
    return VC_OK;
}

int vc__layout_pinned(vc_cache *c) {
    const arena *arenas[2] = {&c->arena, &c->sarena};
    for (int i = 0; i < 2; i++)
        for (const arena_segment *s = arenas[i]->segments; s; s = s->next)
            if (segment_pinned(c, s)) return 1;
    return 0;
}

void vc__release_stream_region(vc_cache *c, vc_evict_reason reason) {
    for (arena_segment *s = c->sarena.segments, *n; s; s = n) {
        n = s->next;
        if (!segment_pinned(c, s)) free_segment(c, &c->sarena, s, reason);
    }
    c->stream_budget = 0;
    c->stream_model = NULL;
}

void vc__clear_model_layout(vc_cache *c, model_t *m, vc_evict_reason reason) {
    (void)m; /* every model's: the others are idle while this one's plan is laid out */
    for (arena_segment *s = c->arena.segments, *n; s; s = n) {
        n = s->next;
        if (!segment_pinned(c, s)) free_segment(c, &c->arena, s, reason);
    }
}

void vc__reserve_layout(vc_cache *c, size_t kept, size_t stream_budget) {
    size_t limit = vc__weight_limit(c);
    size_t want = sat_sub(kept, c->arena.total) & ~(ARENA_GRAIN - 1);
    if (want >= ARENA_GRAIN) grow_arena(c, &c->arena, want, ARENA_GRAIN, limit, want);
    want = sat_sub(stream_budget, c->sarena.total) & ~(ARENA_GRAIN - 1);
    if (want >= ARENA_GRAIN) grow_arena(c, &c->sarena, want, ARENA_GRAIN, limit, want);
}

int vc__shrink_arena(vc_cache *c, size_t target, vc_evict_reason reason, int dry_run) {
    arena *arenas[2] = {&c->sarena, &c->arena}; /* the streaming region goes first: it holds no kept layer */
    if (c->mode == VC_OFFLOAD_MODE_NONE) { /* everything stays resident: only empty segments go */
        size_t empty = 0;
        for (int i = 0; i < 2; i++)
            for (arena_segment *s = arenas[i]->segments, *n; s; s = n) {
                n = s->next;
                if (s->used) continue;
                if (!dry_run && vc__vram_total(c) > target)
                    c->ops->device_free(c->bctx, arena_remove_segment(arenas[i], s));
                else
                    empty += s->size;
            }
        return vc__vram_total(c) - empty > target ? VC_ERR_OUT_OF_VRAM : VC_OK;
    }
    size_t freeable = 0;
    for (int i = 0; i < 2; i++)
        for (arena_segment *s = arenas[i]->segments; s; s = s->next)
            if (!segment_pinned(c, s)) freeable += s->size;
    if (vc__vram_total(c) - freeable > target) return VC_ERR_OUT_OF_VRAM;
    if (dry_run) return VC_OK;
    while (vc__vram_total(c) > target) {
        /* The streaming region first; then the unpinned segment holding the fewest weight bytes,
         * and among equals the one whose layers were used longest ago. */
        arena *in = NULL;
        arena_segment *best = NULL;
        uint64_t best_recent = 0;
        for (int i = 0; i < 2 && !best; i++)
            for (arena_segment *s = arenas[i]->segments; s; s = s->next) {
                if (segment_pinned(c, s)) continue;
                uint64_t recent = 0;
                for (const arena_block *b = s->first; b; b = b->next)
                    if (b->owner && ((const layer_t *)b->owner)->last_use > recent)
                        recent = ((const layer_t *)b->owner)->last_use;
                if (!best || s->used < best->used || (s->used == best->used && recent < best_recent)) {
                    best = s;
                    best_recent = recent;
                    in = arenas[i];
                }
            }
        if (!best) return VC_ERR_OUT_OF_VRAM; /* a range went to the quarantine meanwhile (free_segment) */
        int st = free_segment(c, in, best, reason);
        if (st == VC_ERR_NO_MEMORY) return st; /* BUSY: it is pinned now, the next look skips it */
    }
    return VC_OK;
}

/* Adds a segment to `a` that can hold `need` bytes at `align`, within the weight limit, of at most
 * `max_seg` bytes (0: the usual segment size). */
static int grow_arena(vc_cache *c, arena *a, size_t need, size_t align, size_t limit, size_t max_seg) {
    size_t want = sat_add(need, align > ARENA_GRAIN ? align - ARENA_GRAIN : 0);
    size_t room = sat_sub(limit, vc__vram_total(c));
    if (a == &c->arena) room = sat_sub(room, sat_sub(c->stream_budget, c->sarena.total)); /* the region's share */
    room &= ~(ARENA_GRAIN - 1);
    if (room < want) return VC_ERR_OUT_OF_VRAM;
    /* Whole segments of 2 MB granules where the budget allows, as drivers hand them out. */
    size_t seg = max_seg ? max_sz(want, max_seg) : max_sz(want, c->segment_bytes);
    if (!max_seg && seg >= 2 * VC_MB)
        seg = seg > SIZE_MAX - 2 * VC_MB ? want : (seg + 2 * VC_MB - 1) & ~(2 * VC_MB - 1);
    if (seg > room) seg = room; /* at most one segment's worth: room >= want */
    seg &= ~(ARENA_GRAIN - 1);
    void *base = NULL;
    int st = c->ops->device_alloc(c->bctx, seg, &base);
    if (st != VC_OK) {
        snprintf(c->alloc_detail, sizeof c->alloc_detail, "allocating a %zu-byte segment: %s", seg,
                 vc__take_backend_error());
        vc__log(c, VC_LOG_DEBUG, "device refused memory (%s); evicting and retrying", c->alloc_detail);
        return VC_ERR_BACKEND;
    }
    /* Blocks are aligned by absolute address: a base off the grain would leave every segment a few
     * bytes short of the layer it was grown for, and the caller would give it back and grow another
     * forever. cudaMalloc and hipMalloc align to 256 bytes at least; a backend that does not is
     * refused (once per segment, as a failed allocation) and said so. */
    if ((uintptr_t)base & (ARENA_GRAIN - 1)) {
        c->ops->device_free(c->bctx, base);
        snprintf(c->alloc_detail, sizeof c->alloc_detail,
                 "a %zu-byte segment: backend '%s' returned device memory at %p, not aligned to %zu bytes "
                 "as the backend contract asks", seg,
                 c->ops->name, base, ARENA_GRAIN);
        vc__log(c, VC_LOG_ERROR, "%s", c->alloc_detail);
        return VC_ERR_BACKEND;
    }
    if (arena_add_segment(a, base, seg) != VC_OK) {
        c->ops->device_free(c->bctx, base);
        return VC_ERR_NO_MEMORY;
    }
    vc__note_vram(c);
    return VC_OK;
}

/* Device bytes of layers held, loading or arriving; of every model but `except` (NULL: all). */
static size_t held_vram_bytes_except(vc_cache *c, const model_t *except) {
    size_t held = 0;
    const arena *arenas[2] = {&c->arena, &c->sarena};
    for (int i = 0; i < 2; i++)
        for (const arena_segment *s = arenas[i]->segments; s; s = s->next)
            for (const arena_block *b = s->first; b; b = b->next)
                if (b->owner && vc__plan_model(b->owner) != except && !owner_evictable(b->owner, c))
                    held += b->size;
    return held;
}

static size_t held_vram_bytes(vc_cache *c) { return held_vram_bytes_except(c, NULL); }

size_t vc__held_by_others(vc_cache *c, const model_t *m) { return held_vram_bytes_except(c, m); }

typedef struct streamable_ctx {
    vc_cache *c;
    const layer_t *asking;
    size_t max_distance;
} streamable_ctx;

static int streamable_owner(void *owner, void *ud) {
    streamable_ctx *sc = ud;
    return vc__sched_streamable(sc->c, sc->asking, sc->max_distance, owner);
}

/* Evicting a layer whose last kernel has not finished makes the copy into its room wait for it:
 * count that as far dearer than bytes. */
static size_t streamable_cost(void *owner, void *ud) {
    streamable_ctx *sc = ud;
    layer_t *x = owner;
    size_t cost = arena_round(x->bytes);
    if (x->release_recorded && sc->c->ops->event_query(sc->c->bctx, x->release_ev) != 1) cost += (size_t)1 << 40;
    if (x->prefetched) cost += (size_t)1 << 41; /* already paid for and needed soon */
    return cost;
}

/* What a placement may do: evict only victims needed later than max_distance (prefetch), and stay
 * quiet on failure. */
typedef struct place_req {
    size_t max_distance;
    int quiet;
} place_req;

static const place_req ACQUIRE_REQ = {VC_ANY_DISTANCE, 0};

/* The kept arena gives whole segments back until the streaming region's share is free: empty ones
 * first, then those holding the fewest bytes (their layers load again where they belong). */
static void make_region_room(vc_cache *c, size_t limit, size_t want) {
    release_empty_segments(c, &c->arena);
    while (sat_sub(limit, vc__vram_total(c)) < want) {
        arena_segment *best = NULL;
        for (arena_segment *s = c->arena.segments; s; s = s->next)
            if (!segment_pinned(c, s) && (!best || s->used < best->used)) best = s;
        if (!best || free_segment(c, &c->arena, best, VC_EVICT_PLAN) != VC_OK) return;
    }
}

/* ---- homes: planned places for kept layers ------------------------------------------------------
 *
 * A plan gives each kept layer a home, an offset in the kept arena (packed, largest first). A kept
 * layer always loads into its home, evicting whatever took the room meanwhile (a layer placed there
 * while its owner was out). Without homes, kept layers of nearly equal sizes land in each other's
 * holes after any disturbance, and each pass a few of them evict their neighbours for want of a hole
 * (a fragmentation chain that never settles, since every eviction leaves the next hole a little too
 * small); with homes every kept layer has its room and the set settles after one pass. */

/* A block that stays where it is while homes are laid out: a kept layer of m still resident (in a
 * segment the layout could not free: it keeps that place as its home), a kept layer of another
 * model's plan, or a layer of another model that is held, loading or arriving. Other blocks are
 * evicted when a home's owner arrives. */
static int home_obstacle(vc_cache *c, const model_t *m, const arena_block *b) {
    const layer_t *o = b->owner;
    if (!o) return 0;
    if (vc__plan_model(o) == m) return o->keep && !o->in_stream;
    return o->keep || !vc__evictable(c, (layer_t *)o);
}

typedef struct home_gap {
    arena_segment *seg;
    size_t start, end;
} home_gap;

static int cmp_layer_size_desc(const void *a, const void *b) {
    const layer_t *x = *(layer_t *const *)a, *y = *(layer_t *const *)b;
    return x->bytes < y->bytes ? 1 : x->bytes > y->bytes ? -1 : 0;
}

void vc__assign_homes(vc_cache *c, model_t *m) {
    for (size_t i = 0; i < m->nlayers; i++) m->layers[i]->home_gen = 0;
    /* Kept layers still resident keep their places; the rest are packed first-fit, largest first,
     * into the gaps between the blocks that stay. */
    size_t ngaps = 0, nobst = 0, nkept = 0;
    for (arena_segment *s = c->arena.segments; s; s = s->next)
        for (const arena_block *b = s->first; b; b = b->next) nobst += home_obstacle(c, m, b);
    for (size_t i = 0; i < vc__plan_n(m); i++) nkept += vc__plan_at(m, i)->keep;
    home_gap *gaps = malloc((c->arena.nsegments + nobst) * sizeof(*gaps));
    layer_t **todo = malloc((nkept ? nkept : 1) * sizeof(*todo));
    if (!gaps || !todo) { /* no homes: kept layers are placed as any other */
        free(gaps);
        free(todo);
        return;
    }
    for (arena_segment *s = c->arena.segments; s; s = s->next) {
        size_t start = 0;
        for (arena_block *b = s->first; b; b = b->next) {
            if (!home_obstacle(c, m, b)) continue;
            if (b->offset > start) gaps[ngaps++] = (home_gap){s, start, b->offset};
            start = b->offset + b->size;
            layer_t *o = b->owner;
            if (vc__plan_model(o) == m && o->keep) {
                o->home_gen = s->gen;
                o->home_off = b->offset;
            }
        }
        if (s->size > start) gaps[ngaps++] = (home_gap){s, start, s->size};
    }
    size_t n = 0;
    for (size_t i = 0; i < vc__plan_n(m); i++)
        if (vc__plan_at(m, i)->keep && !vc__plan_at(m, i)->home_gen) todo[n++] = vc__plan_at(m, i);
    qsort(todo, n, sizeof(*todo), cmp_layer_size_desc);
    for (size_t i = 0; i < n; i++) {
        layer_t *x = todo[i];
        size_t need = arena_round(x->bytes);
        size_t align = x->align > ARENA_GRAIN ? x->align : ARENA_GRAIN;
        for (size_t g = 0; g < ngaps; g++) {
            uintptr_t base = (uintptr_t)gaps[g].seg->base;
            size_t at = gaps[g].start + (size_t)((align - ((base + gaps[g].start) & (align - 1))) & (align - 1));
            if (at > gaps[g].end || gaps[g].end - at < need) continue;
            x->home_gen = gaps[g].seg->gen;
            x->home_off = at;
            gaps[g].start = at + need;
            break;
        }
        /* No gap takes it (the packing lost a little around what stays): a layer the streaming
         * region can carry streams instead, one copy per pass, rather than evict a kept neighbour
         * for room every pass; a larger one is placed as any other. */
        if (!x->home_gen && 2 * need <= c->stream_budget) x->keep = 0;
    }
    free(gaps);
    free(todo);
}

/* Loads kept layer l into its home. VC_ERR_NOT_FOUND: it has none (or the home cannot be had now:
 * the caller places it as any other layer); VC_ERR_OUT_OF_VRAM: a prefetch that must wait. */
static int place_home(vc_cache *c, layer_t *l, const place_req *rq, arena_block **out) {
    arena_segment *seg = l->home_gen ? arena_segment_by_gen(&c->arena, l->home_gen) : NULL;
    size_t need = arena_round(l->bytes);
    if (!seg || l->home_off > seg->size || seg->size - l->home_off < need) {
        l->home_gen = 0; /* the segment went back, or the layer grew: no home until the next plan */
        return VC_ERR_NOT_FOUND;
    }
    size_t start = l->home_off;
    arena_block *first = seg->first, *last = NULL;
    while (first->offset + first->size <= start) first = first->next;
    streamable_ctx sc = {c, l, rq->max_distance};
    for (arena_block *b = first;; b = b->next) {
        if (b->owner) {
            /* A prefetch displaces only what the plan streams and needs later; a load, anything
             * evictable. */
            int ok = rq->max_distance == VC_ANY_DISTANCE ? vc__evictable(c, b->owner) : streamable_owner(b->owner, &sc);
            if (!ok) return rq->max_distance == VC_ANY_DISTANCE ? VC_ERR_NOT_FOUND : VC_ERR_OUT_OF_VRAM;
        }
        last = b;
        if (b->offset + b->size >= start + need) break;
    }
    int er = evict_run(c, first, last, rq->max_distance == VC_ANY_DISTANCE ? VC_EVICT_FOR_LOAD : VC_EVICT_FOR_PREFETCH);
    if (er == VC_ERR_NO_MEMORY) return er;
    return arena_alloc_at(&c->arena, seg, start, need, l, out) == VC_OK ? VC_OK : VC_ERR_NOT_FOUND;
}

/* Makes the upload stream wait for every deferred fence (the placement will not copy into them). */
static void flush_fences(vc_cache *c) {
    for (unsigned i = 0; i < c->nfence; i++) order_after(c, c->upload_stream, c->fence[i].ev);
    c->nfence = 0;
}

/* Copies l's bytes into blk on the upload stream, each part after the release of the layer that
 * occupied it (the fences of its ring placement, in address order): the copy engine fills the room
 * already free while the last occupants still compute, as a fluid copy would. */
static int copy_fenced(vc_cache *c, const layer_t *l, const arena_block *blk, const void *src) {
    char *dst = arena_block_ptr(blk);
    size_t done = 0;
    int st = VC_OK;
    for (unsigned i = 1; i < c->nfence; i++) /* insertion sort: at most 16 */
        for (unsigned j = i; j > 0 && c->fence[j - 1].at > c->fence[j].at; j--) {
            struct vc_fence t = c->fence[j];
            c->fence[j] = c->fence[j - 1];
            c->fence[j - 1] = t;
        }
    unsigned k = 0;
    for (; k < c->nfence && st == VC_OK; k++) {
        size_t rel = c->fence[k].at > blk->offset ? c->fence[k].at - blk->offset : 0;
        if (rel >= l->bytes) break; /* past the bytes: waited for after the copy */
        if (rel > done) {
            st = c->ops->copy_h2d(c->bctx, dst + done, (const char *)src + done, rel - done, c->upload_stream);
            if (st != VC_OK) break; /* fence k not waited for yet: the loop below does */
            done = rel;
        }
        st = order_after(c, c->upload_stream, c->fence[k].ev);
    }
    if (st == VC_OK && done < l->bytes)
        st = c->ops->copy_h2d(c->bctx, dst + done, (const char *)src + done, l->bytes - done, c->upload_stream);
    for (; k < c->nfence; k++) order_after(c, c->upload_stream, c->fence[k].ev);
    c->nfence = 0;
    return st;
}

/* The streaming region is a ring: streamed layers are placed one after another in the order they
 * are asked for (pass order, prefetches included), wrapping to the start when the next one does not
 * fit before the end. What lies at the head is then always what was placed longest ago, already used
 * this pass, so room is made by evicting it, and layers of mixed sizes never split the region into
 * holes too small for the next one (which would push it out into the kept arena). Returns VC_OK,
 * VC_ERR_OUT_OF_VRAM when the layers at the head cannot go yet (held, arriving, or needed before l),
 * or VC_ERR_NO_MEMORY. */
static int ring_place(vc_cache *c, layer_t *l, const place_req *rq, arena_block **out) {
    arena *a = &c->sarena;
    arena_segment *seg = a->segments;
    size_t off = 0;
    for (arena_segment *s = a->segments; s; s = s->next)
        if (s->gen == c->ring_gen) seg = s, off = c->ring_off;
    if (!seg) return VC_ERR_OUT_OF_VRAM;
    size_t need = arena_round(l->bytes);
    size_t align = l->align > ARENA_GRAIN ? l->align : ARENA_GRAIN;
    streamable_ctx sc = {c, l, rq->max_distance};
    for (size_t hop = 0; hop <= a->nsegments; hop++) {
        uintptr_t base = (uintptr_t)seg->base;
        size_t start = off + (size_t)((align - ((base + off) & (align - 1))) & (align - 1));
        if (start <= seg->size && seg->size - start >= need) {
            arena_block *first = seg->first, *last = NULL;
            while (first->offset + first->size <= start) first = first->next;
            for (arena_block *b = first;; b = b->next) {
                if (b->owner && !streamable_owner(b->owner, &sc)) return VC_ERR_OUT_OF_VRAM;
                last = b;
                if (b->offset + b->size >= start + need) break;
            }
            c->nfence = 0;
            c->collect_fences = 1;
            c->fence_seg = seg;
            int er = evict_run(c, first, last,
                               rq->max_distance == VC_ANY_DISTANCE ? VC_EVICT_FOR_LOAD : VC_EVICT_FOR_PREFETCH);
            c->collect_fences = 0;
            int st = er == VC_ERR_NO_MEMORY ? er : arena_alloc_at(a, seg, start, need, l, out);
            if (st != VC_OK) {
                flush_fences(c);
                return st;
            }
            c->ring_gen = seg->gen;
            c->ring_off = start + need;
            return VC_OK;
        }
        seg = seg->next ? seg->next : a->segments; /* wrap: the rest of this segment is too short */
        off = 0;
    }
    return VC_ERR_OUT_OF_VRAM; /* l is larger than any segment of the region */
}

/* Layers the plan streams go through the streaming region, a separate range of segments where only
 * streamed layers live, so their varied sizes never fragment the kept set. Returns VC_ERR_NOT_FOUND
 * when l does not belong there (or the region cannot take it: the caller places it normally). */
static int place_streamed(vc_cache *c, layer_t *l, const place_req *rq, size_t limit, arena_block **out) {
    if (!c->stream_budget || c->stream_model != vc__plan_model(l) || l->keep || !l->in_order) return VC_ERR_NOT_FOUND;
    size_t need = arena_round(l->bytes);
    /* A layer larger than the whole region (a cycle's once-used embedding: region_for_once_used in
     * schedule.c) borrows room from the kept arena instead, prefetched as any other. */
    if (need > c->stream_budget) return VC_ERR_NOT_FOUND;
    streamable_ctx sc = {c, l, rq->max_distance};
    for (int tries = 0; tries < 1024; tries++) {
        if (c->sarena.total >= c->stream_budget && !c->stream_model->plan_shared) { /* ring: alone only */
            int st = ring_place(c, l, rq, out);
            if (st == VC_OK) l->in_stream = 1;
            if (st != VC_ERR_OUT_OF_VRAM) return st;
            if (rq->max_distance != VC_ANY_DISTANCE) return st; /* a prefetch waits its turn */
        }
        int st = arena_alloc(&c->sarena, need, l->align, l, out);
        if (st == VC_OK) {
            l->in_stream = 1;
            return VC_OK;
        }
        if (st == VC_ERR_NO_MEMORY) return st;
        if (c->sarena.total < c->stream_budget) {
            size_t want = c->stream_budget - c->sarena.total;
            /* Take room from the kept arena only while the plan's budget holds; under a smaller limit
             * (a reservation, another process) the region waits for the next plan instead. */
            if (sat_sub(limit, vc__vram_total(c)) < want && limit >= vc__plan_model(l)->plan_capacity)
                make_region_room(c, limit, want);
            if (grow_arena(c, &c->sarena, need, l->align, limit, want) == VC_OK) continue;
        }
        arena_block *first, *last;
        if (arena_find_window_cost(&c->sarena, need, l->align, streamable_owner, streamable_cost, &sc, &first, &last)) {
            int er = evict_run(c, first, last,
                               rq->max_distance == VC_ANY_DISTANCE ? VC_EVICT_FOR_LOAD : VC_EVICT_FOR_PREFETCH);
            if (er == VC_ERR_NO_MEMORY) return er;
            if (er == VC_OK) continue;
        }
        if (rq->max_distance != VC_ANY_DISTANCE) return VC_ERR_OUT_OF_VRAM; /* a prefetch waits its turn */
        if (arena_find_window(&c->sarena, need, l->align, owner_evictable, c, &first, &last)) {
            int er = evict_run(c, first, last, VC_EVICT_FOR_LOAD);
            if (er == VC_ERR_NO_MEMORY) return er;
            if (er == VC_OK) continue;
        }
        break;
    }
    return VC_ERR_NOT_FOUND;
}

/* Finds device memory for l, evicting unheld layers as needed. On success *out is l's block. */
static int vram_place(vc_cache *c, layer_t *l, const char *fn, const place_req *rq, arena_block **out) {
    size_t need = arena_round(l->bytes);
    size_t slack = l->align > ARENA_GRAIN ? l->align - ARENA_GRAIN : 0;
    size_t limit = vc__weight_limit(c);
    if (!c->stream_budget && c->sarena.total) release_empty_segments(c, &c->sarena); /* a dropped region */
    if (vc__vram_total(c) > limit) vc__shrink_arena(c, limit, VC_EVICT_BUDGET_SHRANK, 0); /* best effort */
    int st = l->keep && l->home_gen ? place_home(c, l, rq, out) : VC_ERR_NOT_FOUND;
    if (st == VC_OK || st == VC_ERR_NO_MEMORY || (st == VC_ERR_OUT_OF_VRAM && rq->quiet)) return st;
    st = place_streamed(c, l, rq, limit, out);
    if (st == VC_OK || st == VC_ERR_NO_MEMORY || (st != VC_ERR_NOT_FOUND && rq->quiet)) return st;
    int grow_failed = 0, waited_prefetches = 0;
    for (;;) {
        st = arena_alloc(&c->arena, need, l->align, l, out);
        if (st == VC_OK) return VC_OK;
        if (st == VC_ERR_NO_MEMORY) break;
        if (!grow_failed) {
            st = grow_arena(c, &c->arena, need, l->align, limit, 0);
            if (st == VC_OK) continue;
            if (st == VC_ERR_NO_MEMORY) break;
            if (st == VC_ERR_BACKEND) { /* the device refused: re-read what it has */
                grow_failed = 1;
                limit = vc__weight_limit(c);
            }
        }
        /* Empty segments too small for l: give them back if that makes room for one that fits. */
        size_t empty = 0;
        for (arena_segment *s = c->arena.segments; s; s = s->next)
            if (s->used == 0) empty += s->size;
        if (empty && sat_sub(limit, vc__vram_total(c) - empty) >= sat_add(need, slack)) {
            release_empty_segments(c, &c->arena);
            grow_failed = 0;
            continue;
        }
        arena_block *first, *last;
        /* Planned: open a hole from free room and layers the plan streams anyway (needed later than
         * this one), so layers of different sizes never push out the kept set. */
        if (c->policy == VC_POLICY_PLANNED && vc__plan_model(l)->order_valid && c->mode != VC_OFFLOAD_MODE_NONE &&
            c->mode != VC_OFFLOAD_MODE_MODEL) {
            streamable_ctx sc = {c, l, rq->max_distance};
            if (arena_find_window_cost(&c->arena, need, l->align, streamable_owner, streamable_cost, &sc, &first,
                                       &last)) {
                int er = evict_run(c, first, last,
                                   rq->max_distance == VC_ANY_DISTANCE ? VC_EVICT_FOR_LOAD : VC_EVICT_FOR_PREFETCH);
                if (er == VC_ERR_NO_MEMORY) break;
                if (er == VC_OK) {
                    grow_failed = 0;
                    continue;
                }
            }
        }
        /* Enough free bytes but no hole: evict the cheapest run of neighbours that makes one. */
        if (rq->max_distance == VC_ANY_DISTANCE && c->mode != VC_OFFLOAD_MODE_NONE &&
            arena_free_bytes(&c->arena) >= need &&
            arena_find_window(&c->arena, need, l->align, owner_evictable, c, &first, &last)) {
            int er = evict_run(c, first, last, VC_EVICT_FRAGMENTATION);
            if (er == VC_ERR_NO_MEMORY) break;
            if (er == VC_OK) {
                grow_failed = 0;
                continue;
            }
        }
        vc_evict_reason reason;
        layer_t *victim = vc__sched_victim(c, l, rq->max_distance, &reason);
        if (victim && victim->in_stream) {
            /* Room in the streaming region does not help here: shrink the region instead, one layer
             * at a time (each pass evicts something, so this ends), giving its empty segments back. */
            if (rq->max_distance != VC_ANY_DISTANCE) break;
            vc__evict_vram(c, victim, reason, 0);
            shrink_stream_region(c);
            grow_failed = 0;
            continue;
        }
        if (!victim && rq->max_distance == VC_ANY_DISTANCE && !waited_prefetches) {
            /* Prefetches still arriving are the only thing in the way: an acquire waits for them
             * (they finish on their own; failing would leave the engine nothing to retry with). */
            waited_prefetches = 1;
            if (vc__wait_prefetches(c, l)) {
                grow_failed = 0;
                st = place_streamed(c, l, rq, limit, out); /* the region may have room now */
                if (st == VC_OK || st == VC_ERR_NO_MEMORY) return st;
                continue;
            }
        }
        if (!victim && rq->max_distance == VC_ANY_DISTANCE && c->stream_budget) {
            /* Nothing left to evict, and the streaming region has room no layer uses: segments its
             * model's layers all left (an offload, evictions, a failed copy), or the share its plan
             * set aside and never took (a reservation shrank the region away, an allocation
             * failed), which the kept arena may not grow into. Give both back rather than fail on a
             * device holding no weights. With the whole region gone, its model is planned afresh at
             * its next pass (as after a cache clear), which lays the region out again. */
            size_t before = c->sarena.total, budget = c->stream_budget;
            shrink_stream_region(c);
            if (c->sarena.total < before || c->sarena.total < budget) {
                grow_failed = 0;
                continue;
            }
        }
        if (!victim && rq->max_distance == VC_ANY_DISTANCE && vc__free_device_quarantine(c, 0)) {
            grow_failed = 0; /* ranges a failed write-back held are free again */
            continue;
        }
        if (!victim) break;
        if (reason == VC_EVICT_MODEL_SWAP) { /* model mode: the whole model leaves, not just a layer */
            model_t *vm = victim->model;
            for (size_t i = 0; i < vm->nlayers; i++)
                if (vm->layers[i]->vblock && vc__evictable(c, vm->layers[i]))
                    vc__evict_vram(c, vm->layers[i], reason, 0);
        } else {
            vc__evict_vram(c, victim, reason, 0);
        }
        grow_failed = 0;
    }
    if (rq->quiet) return VC_ERR_OUT_OF_VRAM;
    if (c->mode == VC_OFFLOAD_MODE_NONE) {
        char a[32], b[32];
        return vc__fail(c, VC_ERR_OUT_OF_VRAM, "%s: layer '%s' of model '%s' needs %s of device memory, but "
                        "offload_mode none keeps everything resident and the weight budget of %s is full: "
                        "the models do not fit (use offload_mode balanced or sequential to stream layers)",
                        fn, l->name, l->model->name, vc__fmt_bytes(need, a, sizeof a),
                        vc__fmt_bytes(limit, b, sizeof b));
    }
    char a[32], b[32], d[32], e[32], h[32]; /* one buffer per number: all are formatted before the call */
    /* A small card with the default 3 GB of working memory has no room for weights at all: say which
     * setting to change rather than leave the user to work it out from the numbers. */
    char hint[160] = "";
    size_t avail = vc__device_avail(c);
    if (c->vram_budget == VC_SIZE_AUTO && !c->smart_working_mem && c->working_mem >= avail) {
        char g[32];
        snprintf(hint, sizeof hint, "; the standing working memory (device_working_mem_gb) takes all of the %s "
                 "this device can give: lower it", vc__fmt_bytes(avail, g, sizeof g));
    }
    return vc__fail(c, VC_ERR_OUT_OF_VRAM,
                    "%s: layer '%s' of model '%s' needs %s of device memory; the weight budget is %s "
                    "(%s, working memory %s, reserved %s) and held layers occupy %s%s%s%s", fn, l->name,
                    l->model->name, vc__fmt_bytes(need, a, sizeof a), vc__fmt_bytes(limit, b, sizeof b),
                    c->vram_budget == VC_SIZE_AUTO ? "dynamic: free device memory + cache - working memory"
                                                   : "explicit max_cache_vram",
                    vc__fmt_bytes(c->working_mem, d, sizeof d), vc__fmt_bytes(c->reserved_sum, e, sizeof e),
                    vc__fmt_bytes(held_vram_bytes(c), h, sizeof h), grow_failed ? "; the device refused " : "",
                    grow_failed ? c->alloc_detail : "", hint);
}

/* The layer behind an id, or NULL with VC_ERR_NOT_FOUND recorded for `fn` (lock held). */
static layer_t *find_layer(vc_cache *c, vc_layer_id id, const char *fn) {
    layer_t *l = slot_table_get(&c->layers, id);
    if (!l) vc__fail(c, VC_ERR_NOT_FOUND, "%s: layer id %#llx is not registered", fn, (unsigned long long)id);
    return l;
}

/* Said at DEBUG: a stall worth seeing when an engine waits on the stage-ahead worker. */
void vc__wait_for_load(vc_cache *c, const layer_t *l) {
    vc__log(c, VC_LOG_DEBUG, "layer '%s' of model '%s' is being loaded or patched by another thread: "
            "waiting for it", l->name, l->model->name);
    pthread_cond_wait(&c->loaded, &c->lock);
}

layer_t *vc__settled_layer(vc_cache *c, vc_layer_id id) {
    layer_t *l = slot_table_get(&c->layers, id);
    while (l && l->loading) {
        vc__wait_for_load(c, l);
        l = slot_table_get(&c->layers, id);
    }
    return l;
}

model_t *vc__settled_model(vc_cache *c, vc_model_id id) {
    for (;;) {
        model_t *m = slot_table_get(&c->models, id);
        const layer_t *loading = NULL;
        for (size_t i = 0; m && i < m->nlayers && !loading; i++)
            if (m->layers[i]->loading) loading = m->layers[i];
        if (!loading) return m;
        vc__wait_for_load(c, loading); /* the model may go meanwhile: looked up again */
    }
}

/* ---- acquire / release ----------------------------------------------------------------------- */

/* Produces a host copy to upload from: the borrowed pointer, the RAM copy, or a fresh load. May
 * release the lock while the loader runs. */
static int host_source(vc_cache *c, layer_t *l, const char *fn, const void **src);

/* Lets go of the owner's host copy (and of the owner itself, for a pin that outlived its layer).
 * Lock order: ours, then the owner's. */
static void release_remote_pin(remote_pin *r) {
    pthread_mutex_lock(&r->owner->lock);
    layer_t *ol = slot_table_get(&r->owner->layers, r->source);
    if (ol && ol->host_pins) ol->host_pins--;
    if (r->holds_dependent) r->owner->dependents--;
    pthread_mutex_unlock(&r->owner->lock);
    free(r);
}

/* Our layer l goes while uploads from an owner's copy could not be waited for: their pins stay,
 * with the owner counted as read (so it cannot go either) until the upload stream settles. Returns
 * 1 when a pin took over l's place in the owner's dependents. */
static int orphan_remote_pins(vc_cache *c, const layer_t *l) {
    int took = 0;
    for (remote_pin *r = c->remote_pins; r; r = r->next)
        if (r->layer == l) {
            r->layer = NULL;
            r->settled_after = c->upload_settles + 1;
            r->holds_dependent = !took;
            took = 1;
        }
    return took;
}

void vc__release_remote_pins(vc_cache *c) {
    while (c->remote_pins) {
        remote_pin *r = c->remote_pins;
        c->remote_pins = r->next;
        release_remote_pin(r);
    }
}

/* Releases pins on owner caches' host copies once our uploads from them have completed (all of them
 * with `wait`, or only those of `only`); a pin whose upload cannot be waited for stays. Lock order:
 * ours, then the owner's. */
static void drain_remote_pins(vc_cache *c, int wait, const layer_t *only) {
    remote_pin **pp = &c->remote_pins;
    while (*pp) {
        remote_pin *r = *pp;
        int done;
        if (only && r->layer != only)
            done = 0;
        else if (r->layer)
            done = wait ? wait_upload(c, r->layer) == VC_OK : upload_done(c, r->layer);
        else /* its layer is gone, its copy unsettled: a wait for the whole upload stream settles it */
            done = c->upload_settles >= r->settled_after || settle_stream(c, c->upload_stream, NULL);
        if (!done) { /* a copy may still read the owner's copy: the pin stays */
            pp = &r->next;
            continue;
        }
        *pp = r->next;
        release_remote_pin(r);
    }
}

/* A shared layer's host copy lives in its owner cache: owner_fetch produces it there (the owner's
 * loader may run) taking only the owner's lock. With `pin`, *src points at it and it is pinned until
 * our upload from it completes; without, it is only staged into the owner's RAM pool. On failure
 * `msg` gets the owner's message. Callers holding our lock take the owner's after it (lock order:
 * ours, then the owner's). */
static int owner_fetch(vc_cache *o, vc_layer_id oid, const char *fn, const void **src, int pin, char *msg,
                       size_t msg_size, uint32_t *gen) {
    pthread_mutex_lock(&o->lock);
    layer_t *ol = slot_table_get(&o->layers, oid);
    while (ol && ol->loading) {
        pthread_cond_wait(&o->loaded, &o->lock);
        ol = slot_table_get(&o->layers, oid);
    }
    int st = !ol ? VC_ERR_NOT_FOUND : !pin && (ol->host_src || ol->ram) ? VC_OK : host_source(o, ol, fn, src);
    /* The owner may still be writing this copy back from its own device (its RAM copy was dropped
     * while the layer stayed in VRAM, or keep_ram_copy is off). Our upload runs on another backend's
     * streams, which cannot wait on the owner's event: the host waits for it here, or our device
     * would copy bytes the write-back has not written yet. */
    if (st == VC_OK && pin && wait_writeback(o, ol) != VC_OK)
        st = vc__fail(o, VC_ERR_BACKEND, "%s: the write-back of layer '%s' into RAM failed: %s", fn, ol->name,
                      vc__take_backend_error());
    if (st == VC_OK && pin) ol->host_pins++;
    if (st == VC_OK && gen) *gen = ol->weights_gen;
    snprintf(msg, msg_size, "%s", o->last_error);
    pthread_mutex_unlock(&o->lock);
    return st;
}

static int owner_status(vc_cache *c, const layer_t *l, const char *fn, int st, const char *msg) {
    if (st == VC_ERR_NOT_FOUND)
        return vc__fail(c, st, "%s: shared layer '%s': its source layer in the owning cache was unregistered",
                        fn, l->name);
    if (st != VC_OK) return vc__fail(c, st, "%s: shared layer '%s': in the owning cache: %s", fn, l->name, msg);
    return VC_OK;
}

static int owner_copy(vc_cache *c, layer_t *l, const char *fn, const void **src, int pin) {
    char msg[sizeof c->last_error];
    /* which weights our device copy will hold: the epoch first, so a patch in between shows */
    uint32_t epoch = atomic_load_explicit(&l->owner->weights_epoch, memory_order_acquire), gen = 0;
    int st = owner_fetch(l->owner, l->owner_layer, fn, src, pin, msg, sizeof msg, &gen);
    if (st == VC_OK && pin) {
        l->src_gen = gen;
        l->src_epoch = epoch;
    }
    return owner_status(c, l, fn, st, msg);
}

/* A shared layer whose source the owning cache has unregistered: it can never be loaded again. */
static int shared_source_gone(const layer_t *l) {
    pthread_mutex_lock(&l->owner->lock);
    int gone = !slot_table_get(&l->owner->layers, l->owner_layer);
    pthread_mutex_unlock(&l->owner->lock);
    return gone;
}

/* A shared layer's device copy is stale when its source was patched or unpatched since it was made.
 * Checked at each acquire that finds it resident and unheld: one atomic load, and the owner's lock
 * only after some layer of the owner changed. */
static int shared_stale(layer_t *l) {
    uint32_t e = atomic_load_explicit(&l->owner->weights_epoch, memory_order_acquire);
    if (e == l->src_epoch) return 0;
    pthread_mutex_lock(&l->owner->lock);
    const layer_t *ol = slot_table_get(&l->owner->layers, l->owner_layer);
    int stale = ol && ol->weights_gen != l->src_gen;
    pthread_mutex_unlock(&l->owner->lock);
    if (!stale) l->src_epoch = e;
    return stale;
}

/* The weights of l changed (patch, unpatch): devices sharing it reload them at their next acquire. */
static void weights_changed(vc_cache *c, layer_t *l) {
    l->weights_gen++;
    atomic_fetch_add_explicit(&c->weights_epoch, 1, memory_order_release);
}

static int shared_source(vc_cache *c, layer_t *l, const char *fn, const void **src) {
    remote_pin *pin = malloc(sizeof(*pin)); /* first: a failure after pinning would leak the pin */
    if (!pin) return vc__fail(c, VC_ERR_NO_MEMORY, "%s: out of host memory", fn);
    int st = owner_copy(c, l, fn, src, 1);
    if (st != VC_OK) {
        free(pin);
        return st;
    }
    *pin = (remote_pin){.owner = l->owner, .source = l->owner_layer, .layer = l, .next = c->remote_pins};
    c->remote_pins = pin;
    return VC_OK;
}

static int host_source(vc_cache *c, layer_t *l, const char *fn, const void **src) {
    if (l->owner) return shared_source(c, l, fn, src);
    if (l->host_src && !l->patched) {
        *src = l->host_src;
        c->stats.ram_hits++;
        return VC_OK;
    }
    if (l->ram) {
        list_unlink(&c->ram_lru, l, 0);
        list_push_tail(&c->ram_lru, l, 0);
        *src = l->ram;
        c->stats.ram_hits++;
        return VC_OK;
    }
    int st = ram_reserve(c, l->bytes, l, fn, 0);
    if (st != VC_OK) return st;
    void *buf = NULL;
    int pinned = 0;
    if (c->ops->host_alloc(c->bctx, l->bytes, &buf, &pinned) != VC_OK) {
        char a[32];
        return vc__fail(c, VC_ERR_NO_MEMORY, "%s: could not allocate %s of host memory for the RAM copy "
                        "of layer '%s' of model '%s': %s", fn, vc__fmt_bytes(l->bytes, a, sizeof a),
                        l->name, l->model->name, vc__take_backend_error());
    }
    c->ram_bytes += l->bytes; /* counted now, so concurrent loads respect the budget */
    vc__note_ram(c);
    l->loading = 1;
    pthread_mutex_unlock(&c->lock);
    vc__clear_loader_error();
    int rc = l->loader(l->loader_user, l->id, buf, l->bytes);
    pthread_mutex_lock(&c->lock);
    l->loading = 0;
    pthread_cond_broadcast(&c->loaded);
    if (rc != 0) {
        free_ram_buffer(c, buf, l->bytes, pinned);
        c->stats.load_failures++;
        return vc__fail(c, VC_ERR_LOADER, "%s: the loader of layer '%s' of model '%s' returned %d%s; the "
                        "layer stays unloaded and a later acquire calls the loader again", fn, l->name,
                        l->model->name, rc, vc__loader_error_suffix());
    }
    l->ram = buf;
    l->ram_pinned = pinned;
    list_push_tail(&c->ram_lru, l, 0);
    c->stats.layers_in_ram++;
    c->stats.loads++;
    c->stats.bytes_loaded += l->bytes;
    *src = buf;
    /* Its loader ran before: the RAM cache dropped the copy and the engine reads it again (from
     * disk, typically). Once that has cost more than the whole budget, say so, once: a model whose
     * pass streams more than the RAM cache holds does this every pass (InvokeAI's default budget
     * beside a 12 GB card is 9 GB; FLUX.1-dev streams 13.5 GB per step there). */
    if (l->loaded_before && c->reread_bytes <= c->ram_budget) {
        c->reread_bytes += l->bytes;
        if (c->reread_bytes > c->ram_budget) {
            char a[32];
            vc__log(c, VC_LOG_WARN, "loaders have read more than the whole RAM cache budget (%s) again, the "
                    "last for layer '%s' of model '%s': the RAM cache does not hold what the models in use "
                    "stream, so their layers are read again every pass; raise max_cache_ram_gb if the "
                    "machine has RAM to spare (vramcache plan --ram-gb says how much a workload needs)",
                    vc__fmt_bytes(c->ram_budget, a, sizeof a), l->name, l->model->name);
        }
    }
    l->loaded_before = 1;
    return VC_OK;
}

/* Uploads l (its host copy produced first, with the loader if need be). With `wait`, `stream` waits
 * for the upload; a prefetch passes wait = 0 and the acquire that follows does the waiting. */
static int upload(vc_cache *c, layer_t *l, vc_stream stream, int wait, const char *fn, const place_req *rq) {
    const void *src = NULL;
    if (c->remote_pins) drain_remote_pins(c, 0, NULL);
    int st = host_source(c, l, fn, &src);
    if (st != VC_OK) return st;
    arena_block *blk;
    /* Making room may write evicted layers back into the RAM pool: keep our source out of reach. */
    l->uploading = 1;
    st = vram_place(c, l, fn, rq, &blk);
    l->uploading = 0;
    if (st != VC_OK) flush_fences(c); /* nothing to copy: every deferred wait stands */
    if (st != VC_OK) {
        if (l->owner) drain_remote_pins(c, 1, l); /* nothing was copied: let go of the source */
        return st;
    }
    void *dst = arena_block_ptr(blk);
    vc__range_push(c, wait ? "upload" : "prefetch", l->name);
    void *trace_ev = vc__trace_mark(c, c->upload_stream); /* NULL unless tracing with device times */
    if (l->ram_pending) st = order_after(c, c->upload_stream, l->ram_ev);
    int copying = st == VC_OK; /* from here a failure may leave (part of) the copy queued */
    if (st == VC_OK) st = c->nfence ? copy_fenced(c, l, blk, src) : c->ops->copy_h2d(c->bctx, dst, src, l->bytes, c->upload_stream);
    if (c->nfence) flush_fences(c); /* a failed wait above: never copy over a running layer later */
    if (st == VC_OK) st = ensure_event(c, &l->upload_ev);
    if (st == VC_OK) st = c->ops->event_record(c->bctx, l->upload_ev, c->upload_stream);
    if (st == VC_OK) { /* ordered after any unsettled copy of ours on the same stream: it covers them */
        l->upload_pending = 1;
        l->unsettled_until = 0;
    }
    if (st == VC_OK && wait) st = order_after(c, stream, l->upload_ev);
    if (st == VC_OK && c->trace)
        vc__trace_copy(c, wait ? "upload" : "prefetch", l, trace_ev, c->upload_stream);
    else if (trace_ev)
        c->ops->event_destroy(c->bctx, trace_ev);
    vc__range_pop(c);
    if (st != VC_OK) {
        char why[256];
        snprintf(why, sizeof why, "%s", vc__take_backend_error());
        /* Later uploads into this range are ordered after the failed one on the same stream, but its
         * source (a RAM copy that may be dropped next, another cache's) must outlive it. */
        if (copying && !settle_stream(c, c->upload_stream, fn)) mark_unsettled(c, l);
        arena_free(l->in_stream ? &c->sarena : &c->arena, blk);
        l->in_stream = 0;
        if (l->owner) drain_remote_pins(c, 1, l);
        char a[32];
        return vc__fail(c, VC_ERR_BACKEND, "%s: upload of layer '%s' of model '%s' (%s) failed: %s", fn,
                        l->name, l->model->name, vc__fmt_bytes(l->bytes, a, sizeof a), why);
    }
    l->vblock = blk;
    vc__note_vram_layer(c, l, +1);
    list_push_tail(&c->vram_lru, l, 1);
    c->stats.bytes_h2d += l->bytes;
    vc__note_vram(c);
    if (!c->keep_ram_copy && l->ram && !l->patched) drop_ram_after_upload(c, l);
    vc__log_memory(c, "loaded", l);
    return VC_OK;
}

/* A held layer is out of the VRAM LRU list (nothing may evict it) and counted as held; hold and
 * unhold keep the list and the counts in step with `holds`, so a hold taken by another thread while
 * the lock is down (a loader running) cannot leave a held layer listed, or list it twice. */
static void hold(vc_cache *c, layer_t *l) {
    if (l->holds++ == 0) {
        list_unlink(&c->vram_lru, l, 1);
        c->stats.layers_held++;
        model_t *m = l->model;
        if (++m->held_now > m->held_peak_cur) m->held_peak_cur = m->held_now;
    }
}

/* Returns 1 when that was the last hold. */
static int unhold(vc_cache *c, layer_t *l) {
    if (--l->holds) return 0;
    list_push_tail(&c->vram_lru, l, 1);
    c->stats.layers_held--;
    l->model->held_now--;
    return 1;
}

int vc__prefetch_upload(vc_cache *c, layer_t *l, size_t distance) {
    place_req rq = {distance, 1};
    return upload(c, l, NULL, 0, "prefetch", &rq);
}

int vc__load_whole_model(vc_cache *c, layer_t *l, vc_stream stream, const char *fn) {
    model_t *m = l->model;
    size_t need = 0, limit = vc__weight_limit(c);
    for (size_t i = 0; i < m->nlayers; i++) {
        const layer_t *x = m->layers[i];
        if (x == l || !x->owner || !shared_source_gone(x)) need = sat_add(need, arena_round(x->bytes));
    }
    if (need > limit) {
        char a[32], b[32];
        return vc__fail(c, VC_ERR_OUT_OF_VRAM, "%s: model '%s' needs %s of device memory and offload_mode model "
                        "moves whole models, but the weight budget is %s (enable partial loading, or use "
                        "offload_mode balanced or sequential, to stream layers)", fn, m->name,
                        vc__fmt_bytes(need, a, sizeof a), vc__fmt_bytes(limit, b, sizeof b));
    }
    /* Snapshot the ids: a loader may release the lock. */
    size_t n = m->nlayers;
    vc_layer_id *ids = malloc((n ? n : 1) * sizeof(*ids));
    if (!ids) return vc__fail(c, VC_ERR_NO_MEMORY, "%s: out of host memory", fn);
    for (size_t i = 0; i < n; i++) ids[i] = m->layers[i]->id;
    int st = VC_OK;
    hold(c, l); /* keep the acquired layer in place while the rest arrive (loaders drop the lock) */
    for (size_t i = 0; i < n && st == VC_OK; i++) {
        layer_t *x = slot_table_get(&c->layers, ids[i]);
        if (!x || x == l || x->vblock || x->loading) continue;
        /* A shared layer whose source has gone is no longer part of what the model can load: it
         * must not fail every acquire of the model's other layers (its own acquire says why). */
        if (x->owner && shared_source_gone(x)) continue;
        st = upload(c, x, stream, 1, fn, &ACQUIRE_REQ);
        if (st == VC_OK) c->stats.misses++;
    }
    unhold(c, l);
    free(ids);
    return st;
}

int vc_layer_acquire(vc_cache *c, vc_layer_id id, vc_stream stream, void **device_ptr) {
    static const char fn[] = "vc_layer_acquire";
    if (!c || !device_ptr)
        return vc__fail(NULL, VC_ERR_INVALID_ARG, "%s: %s is NULL", fn, !c ? "cache" : "device_ptr");
    pthread_mutex_lock(&c->lock);
    int st = VC_OK;
    if (c->trace) vc__trace_poll(c, 0); /* copies that have run since: their spans */
    layer_t *l = vc__settled_layer(c, id); /* another thread loading it: wait, then take its result */
    /* A shared layer whose owner has no copy in RAM: the owner's loader (a disk read) runs first, as
     * staging runs it, without our lock and the layer marked loading, so that this cache's other
     * threads (its stage-ahead worker, other engine threads) do not wait for the read. */
    if (c->shared_layers && l && l->owner && !l->vblock && vc__needs_load(l)) {
        st = vc__stage_layer(c, l, fn);
        l = vc__settled_layer(c, id); /* others may have acted on it meanwhile */
    }
    /* (the cache-wide count first: caches without shared layers never touch l->owner here) */
    if (st == VC_OK && c->shared_layers && l && l->owner && l->vblock && !l->holds && shared_stale(l))
        vc__evict_vram(c, l, VC_EVICT_MANUAL, 1); /* its source was patched: load the new weights */
    if (st != VC_OK) {
        /* the owner's loader failed: its message is recorded */
    } else if (!l) {
        st = vc__fail(c, VC_ERR_NOT_FOUND, "%s: layer id %#llx is not registered", fn, (unsigned long long)id);
    } else if (l->vblock) {
        c->stats.hits++;
        if (c->remote_pins) drain_remote_pins(c, 0, NULL);
        /* The upload may still be in flight: the engine stream waits for it, the host does not. */
        if (l->upload_pending && !upload_done(c, l)) {
            c->late_acquires++; /* the engine's stream may wait for the copy (the tuner's sign) */
            if (order_after(c, stream, l->upload_ev) != VC_OK)
                st = vc__fail(c, VC_ERR_BACKEND, "%s: layer '%s': stream could not wait on the upload: %s",
                              fn, l->name, vc__take_backend_error());
        }
    } else {
        st = upload(c, l, stream, 1, fn, &ACQUIRE_REQ);
        if (st == VC_OK) {
            c->stats.misses++;
            c->late_acquires++; /* uploaded on demand: the engine's stream waits for it */
        }
        if (st == VC_OK && c->mode == VC_OFFLOAD_MODE_MODEL) st = vc__load_whole_model(c, l, stream, fn);
    }
    if (st == VC_OK) {
        hold(c, l);
        l->last_use = ++c->use_clock;
        vc__sched_on_acquire(c, l);
        if (c->trace) vc__trace_async(c, "hold", l->name, l->id, 1, vc__trace_now(c));
        *device_ptr = arena_block_ptr(l->vblock);
    }
    pthread_mutex_unlock(&c->lock);
    return st;
}

static int release_locked(vc_cache *c, layer_t *l, vc_stream stream) {
    /* Record where the engine last used the weights; with holds from several streams, chain them so
     * the event covers every stream's work. */
    int recorded = ensure_event(c, &l->release_ev) == VC_OK;
    if (recorded) {
        if (l->release_recorded && l->release_stream != stream &&
            c->ops->event_query(c->bctx, l->release_ev) != 1)
            order_after(c, stream, l->release_ev);
        recorded = c->ops->event_record(c->bctx, l->release_ev, stream) == VC_OK;
        if (recorded) {
            l->release_recorded = 1;
            l->release_stream = stream;
        }
    }
    if (!recorded) {
        /* Without an event (or with an older one) the only safe order is the host's: wait for the
         * engine's work on the stream, so that the next copy into these bytes cannot overtake it. */
        vc__log(c, VC_LOG_WARN, "layer '%s': release event failed (%s); waiting for the stream instead", l->name,
                vc__take_backend_error());
        settle_stream(c, stream, "vc_layer_release");
    }
    if (unhold(c, l)) vc__sched_on_release(c, l);
    if (c->trace) vc__trace_async(c, "hold", l->name, l->id, 0, vc__trace_now(c));
    return VC_OK;
}

int vc_layer_release(vc_cache *c, vc_layer_id id, vc_stream stream) {
    static const char fn[] = "vc_layer_release";
    if (!c) return vc__fail(NULL, VC_ERR_INVALID_ARG, "%s: cache is NULL", fn);
    pthread_mutex_lock(&c->lock);
    if (c->trace) vc__trace_poll(c, 0);
    int st;
    layer_t *l = find_layer(c, id, fn);
    if (!l)
        st = VC_ERR_NOT_FOUND;
    else if (l->holds == 0)
        st = vc__fail(c, VC_ERR_NOT_HELD, "%s: layer '%s' of model '%s' is not held (release without "
                      "acquire, or released twice)", fn, l->name, l->model->name);
    else
        st = release_locked(c, l, stream);
    vc__reap_deferred(c); /* RAM copies whose uploads finished go now, not at the next RAM need */
    pthread_mutex_unlock(&c->lock);
    return st;
}

/* ---- offload, read, teardown ----------------------------------------------------------------- */

static int check_offload_args(vc_cache *c, vc_offload_target target, const char *fn) {
    if (!c) return vc__fail(NULL, VC_ERR_INVALID_ARG, "%s: cache is NULL", fn);
    if (target != VC_OFFLOAD_VRAM && target != VC_OFFLOAD_ALL)
        return vc__fail_unlocked(c, VC_ERR_INVALID_ARG, "%s: target %d is not VC_OFFLOAD_VRAM or "
                                 "VC_OFFLOAD_ALL", fn, (int)target);
    return VC_OK;
}

int vc__offload_layer(vc_cache *c, layer_t *l, vc_offload_target target, const char *fn) {
    if (l->holds || l->loading)
        return vc__fail(c, VC_ERR_BUSY, "%s: layer '%s' of model '%s' is %s and cannot be offloaded", fn,
                        l->name, l->model->name, l->loading ? "loading" : "held");
    int all = target == VC_OFFLOAD_ALL;
    if (l->vblock) vc__evict_vram(c, l, VC_EVICT_MANUAL, all && l->loader != NULL && !l->patched);
    if (all && l->ram && !l->patched && !l->host_pins) {
        vc__drop_ram(c, l);
        c->stats.ram_evictions++;
    }
    return VC_OK;
}

int vc_layer_offload(vc_cache *c, vc_layer_id id, vc_offload_target target) {
    static const char fn[] = "vc_layer_offload";
    int st = check_offload_args(c, target, fn);
    if (st != VC_OK) return st;
    pthread_mutex_lock(&c->lock);
    layer_t *l = vc__settled_layer(c, id); /* another thread loading it (the stage-ahead worker): wait */
    if (!l) {
        find_layer(c, id, fn); /* records "not registered" */
        st = VC_ERR_NOT_FOUND;
    } else {
        st = vc__offload_layer(c, l, target, fn);
    }
    pthread_mutex_unlock(&c->lock);
    return st;
}

int vc_layer_read(vc_cache *c, vc_layer_id id, void *dst, size_t size) {
    static const char fn[] = "vc_layer_read";
    if (!c || !dst) return vc__fail(NULL, VC_ERR_INVALID_ARG, "%s: %s is NULL", fn, !c ? "cache" : "dst");
    pthread_mutex_lock(&c->lock);
    int st = VC_OK;
    layer_t *l = vc__settled_layer(c, id); /* another thread loading or patching it: wait for its result */
    if (!l) {
        st = vc__fail(c, VC_ERR_NOT_FOUND, "%s: layer id %#llx is not registered", fn, (unsigned long long)id);
    } else if (size != l->bytes) {
        st = vc__fail(c, VC_ERR_INVALID_ARG, "%s: layer '%s' has %zu bytes, buffer has %zu", fn, l->name,
                      l->bytes, size);
    } else if (l->host_src && !l->patched) {
        memcpy(dst, l->host_src, size);
    } else if (l->ram) {
        st = wait_writeback(c, l);
        if (st == VC_OK)
            memcpy(dst, l->ram, size);
        else
            st = vc__fail(c, st, "%s: layer '%s': its write-back cannot be waited for: %s", fn, l->name,
                          vc__take_backend_error());
    } else if (l->owner) { /* from the owner: its weights are the current ones, our device copy may
                              * predate a patch. Its loader may run (a disk read): without our lock, the
                              * layer marked loading meanwhile, as staging does. */
        l->loading = 1;
        pthread_mutex_unlock(&c->lock);
        st = vc_layer_read(l->owner, l->owner_layer, dst, size);
        char why[sizeof c->last_error];
        snprintf(why, sizeof why, "%s", vc_last_error());
        pthread_mutex_lock(&c->lock);
        l->loading = 0;
        pthread_cond_broadcast(&c->loaded);
        if (st != VC_OK) st = vc__fail(c, st, "%s: shared layer '%s': %s", fn, l->name, why);
    } else if (l->vblock) {
        /* Off the hot path: a synchronous download of the only copy. */
        st = ensure_event(c, &l->ram_ev);
        if (st == VC_OK && l->upload_pending)
            st = order_after(c, c->download_stream, l->upload_ev);
        int queued = 0;
        if (st == VC_OK) st = c->ops->copy_d2h(c->bctx, dst, arena_block_ptr(l->vblock), size, c->download_stream);
        queued = st == VC_OK;
        if (st == VC_OK) st = c->ops->event_record(c->bctx, l->ram_ev, c->download_stream);
        if (st == VC_OK) st = c->ops->event_synchronize(c->bctx, l->ram_ev);
        if (st != VC_OK) {
            char why[256];
            snprintf(why, sizeof why, "%s", vc__take_backend_error());
            /* the caller may free dst on our error: the copy into it must have run by then */
            if (queued) settle_stream(c, c->download_stream, fn);
            st = vc__fail(c, VC_ERR_BACKEND, "%s: download of layer '%s' failed: %s", fn, l->name, why);
        }
    } else {
        l->loading = 1;
        pthread_mutex_unlock(&c->lock);
        vc__clear_loader_error();
        int rc = l->loader(l->loader_user, id, dst, size);
        pthread_mutex_lock(&c->lock);
        l->loading = 0;
        pthread_cond_broadcast(&c->loaded);
        if (rc != 0)
            st = vc__fail(c, VC_ERR_LOADER, "%s: the loader of layer '%s' of model '%s' returned %d%s", fn,
                          l->name, l->model->name, rc, vc__loader_error_suffix());
    }
    pthread_mutex_unlock(&c->lock);
    return st;
}

void vc__layer_destroy(vc_cache *c, layer_t *l) {
    vc__sched_forget(c, l);
    drain_remote_pins(c, 1, l);
    if (l->owner) {
        if (!orphan_remote_pins(c, l)) { /* one reader fewer for the owner */
            pthread_mutex_lock(&l->owner->lock);
            l->owner->dependents--;
            pthread_mutex_unlock(&l->owner->lock);
        }
        c->shared_layers--;
    }
    if (l->vblock) {
        if (l->release_recorded) order_after(c, c->upload_stream, l->release_ev);
        list_unlink(&c->vram_lru, l, 1);
        arena_free(l->in_stream ? &c->sarena : &c->arena, l->vblock);
        l->vblock = NULL;
        l->in_stream = 0;
        vc__note_vram_layer(c, l, -1);
    }
    drain_deferred(c, 1, l);
    l->patched = 0; /* the layer goes: its RAM copy with it */
    vc__drop_ram(c, l);
    if (l->backup) {
        c->ops->host_free(c->bctx, l->backup, l->bytes, l->backup_pinned);
        c->ram_bytes -= l->bytes;
        l->backup = NULL;
    }
    wait_upload(c, l);
    wait_writeback(c, l);
    if (l->upload_ev) c->ops->event_destroy(c->bctx, l->upload_ev);
    if (l->release_ev) c->ops->event_destroy(c->bctx, l->release_ev);
    if (l->ram_ev) c->ops->event_destroy(c->bctx, l->ram_ev);
    model_t *m = l->model;
    m->layers[l->model_pos] = m->layers[--m->nlayers];
    m->layers[l->model_pos]->model_pos = l->model_pos;
    slot_table_remove(&c->layers, l->id);
    c->stats.layers--;
    free(l->name);
    free(l);
}

/* ---- whole models ---------------------------------------------------------------------------- */

/* Copies the model's layer ids under the lock, so the caller can work on them without it. */
static int snapshot_layers(vc_cache *c, vc_model_id id, const char *fn, vc_layer_id **ids, size_t *n) {
    pthread_mutex_lock(&c->lock);
    int st = VC_OK;
    model_t *m = slot_table_get(&c->models, id);
    if (!m) {
        st = vc__fail(c, VC_ERR_NOT_FOUND, "%s: model id %#llx is not registered", fn, (unsigned long long)id);
    } else {
        *n = m->nlayers;
        *ids = malloc((m->nlayers ? m->nlayers : 1) * sizeof(**ids));
        if (!*ids)
            st = vc__fail(c, VC_ERR_NO_MEMORY, "%s: out of host memory", fn);
        else
            for (size_t i = 0; i < m->nlayers; i++) (*ids)[i] = m->layers[i]->id;
    }
    pthread_mutex_unlock(&c->lock);
    return st;
}

int vc_model_acquire(vc_cache *c, vc_model_id model, vc_stream stream) {
    static const char fn[] = "vc_model_acquire";
    if (!c) return vc__fail(NULL, VC_ERR_INVALID_ARG, "%s: cache is NULL", fn);
    vc_layer_id *ids = NULL;
    size_t n = 0;
    int st = snapshot_layers(c, model, fn, &ids, &n);
    if (st != VC_OK) return st;
    size_t i;
    void *p;
    for (i = 0; i < n; i++)
        if ((st = vc_layer_acquire(c, ids[i], stream, &p)) != VC_OK) break;
    if (st != VC_OK) {
        /* All or nothing: give back what was taken, keeping the first error's message. */
        pthread_mutex_lock(&c->lock);
        char msg[sizeof c->last_error];
        memcpy(msg, c->last_error, sizeof msg);
        for (size_t j = 0; j < i; j++) {
            layer_t *l = slot_table_get(&c->layers, ids[j]);
            if (l && l->holds) release_locked(c, l, stream);
        }
        vc__fail(c, st, "vc_model_acquire: %s", msg);
        pthread_mutex_unlock(&c->lock);
    }
    free(ids);
    return st;
}

int vc_model_release(vc_cache *c, vc_model_id model, vc_stream stream) {
    static const char fn[] = "vc_model_release";
    if (!c) return vc__fail(NULL, VC_ERR_INVALID_ARG, "%s: cache is NULL", fn);
    pthread_mutex_lock(&c->lock);
    int st = VC_OK;
    model_t *m = slot_table_get(&c->models, model);
    if (!m) {
        st = vc__fail(c, VC_ERR_NOT_FOUND, "%s: model id %#llx is not registered", fn, (unsigned long long)model);
        goto done;
    }
    for (size_t i = 0; i < m->nlayers; i++)
        if (m->layers[i]->holds == 0) {
            st = vc__fail(c, VC_ERR_NOT_HELD, "%s: layer '%s' of model '%s' is not held; nothing was "
                          "released", fn, m->layers[i]->name, m->name);
            goto done;
        }
    for (size_t i = 0; i < m->nlayers; i++) release_locked(c, m->layers[i], stream);
done:
    pthread_mutex_unlock(&c->lock);
    return st;
}

int vc_model_offload(vc_cache *c, vc_model_id model, vc_offload_target target) {
    static const char fn[] = "vc_model_offload";
    int st = check_offload_args(c, target, fn);
    if (st != VC_OK) return st;
    pthread_mutex_lock(&c->lock);
    model_t *m = vc__settled_model(c, model); /* the stage-ahead worker loading one of its layers: wait */
    if (!m) {
        st = vc__fail(c, VC_ERR_NOT_FOUND, "%s: model id %#llx is not registered", fn, (unsigned long long)model);
        goto done;
    }
    size_t busy = 0;
    for (size_t i = 0; i < m->nlayers; i++) {
        layer_t *l = m->layers[i];
        if (l->holds)
            busy++;
        else
            vc__offload_layer(c, l, target, fn);
    }
    if (busy)
        st = vc__fail(c, VC_ERR_BUSY, "%s: %zu layer(s) of model '%s' are held and stayed; the others were "
                      "offloaded", fn, busy, m->name);
done:
    pthread_mutex_unlock(&c->lock);
    return st;
}

/* ---- staging into the RAM pool ---------------------------------------------------------------- */

/* Whether l's weights can only come from its loader now: not borrowed, not in the RAM pool, not on
 * the device (a patched layer always has its private RAM copy or a device copy). */
int vc__needs_loader(const layer_t *l) {
    return !l->owner && !l->host_src && !l->ram && !l->vblock;
}

int vc__needs_load(layer_t *l) {
    if (!l->owner) return vc__needs_loader(l);
    if (l->vblock) return 0;
    /* Shared: the bytes come from the owner's RAM copy (or engine pointer); without one, the
     * owner's loader must run first, or is running now (either would stall the caller). */
    vc_cache *o = l->owner;
    pthread_mutex_lock(&o->lock);
    layer_t *ol = slot_table_get(&o->layers, l->owner_layer);
    int need = ol && (ol->loading || (!ol->host_src && !ol->ram));
    pthread_mutex_unlock(&o->lock);
    return need;
}

int vc__stage_layer(vc_cache *c, layer_t *l, const char *fn) {
    const void *src;
    if (l->owner) {
        /* The owner's loader may take a while: like our own loads, it runs without our lock, the
         * layer marked loading so that its acquire waits for the result. */
        char msg[sizeof c->last_error];
        vc_cache *o = l->owner;
        vc_layer_id oid = l->owner_layer;
        l->loading = 1;
        pthread_mutex_unlock(&c->lock);
        int st = owner_fetch(o, oid, fn, &src, 0, msg, sizeof msg, NULL);
        pthread_mutex_lock(&c->lock);
        l->loading = 0;
        pthread_cond_broadcast(&c->loaded);
        return owner_status(c, l, fn, st, msg);
    }
    if (!vc__needs_loader(l)) return VC_OK;
    return host_source(c, l, fn, &src);
}

int vc_layer_load_ram(vc_cache *c, vc_layer_id id) {
    static const char fn[] = "vc_layer_load_ram";
    if (!c) return vc__fail(NULL, VC_ERR_INVALID_ARG, "%s: cache is NULL", fn);
    pthread_mutex_lock(&c->lock);
    layer_t *l = vc__settled_layer(c, id); /* another thread loading it: its result is ours */
    int st = l ? vc__stage_layer(c, l, fn)
               : vc__fail(c, VC_ERR_NOT_FOUND, "%s: layer id %#llx is not registered", fn, (unsigned long long)id);
    pthread_mutex_unlock(&c->lock);
    return st;
}

int vc_model_load_ram(vc_cache *c, vc_model_id model) {
    static const char fn[] = "vc_model_load_ram";
    if (!c) return vc__fail(NULL, VC_ERR_INVALID_ARG, "%s: cache is NULL", fn);
    pthread_mutex_lock(&c->lock);
    int st = VC_OK;
    vc_layer_id *ids = NULL;
    model_t *m = slot_table_get(&c->models, model);
    if (!m) {
        st = vc__fail(c, VC_ERR_NOT_FOUND, "%s: model id %#llx is not registered", fn, (unsigned long long)model);
        goto done;
    }
    /* A model whose pooled weights exceed the budget would evict its own first layers to load its
     * last ones: refuse before loading anything. */
    size_t need = 0;
    for (size_t i = 0; i < m->nlayers; i++) {
        const layer_t *x = m->layers[i];
        if (x->ram || vc__needs_loader(x)) need = sat_add(need, x->bytes);
    }
    if (need > c->ram_budget) {
        char a[32], b[32];
        st = vc__fail(c, VC_ERR_OUT_OF_RAM, "%s: model '%s' needs %s in the RAM pool, more than its budget of "
                      "%s (raise max_cache_ram_gb, or stage layers one at a time as they are needed); "
                      "nothing was loaded", fn, m->name, vc__fmt_bytes(need, a, sizeof a),
                      vc__fmt_bytes(c->ram_budget, b, sizeof b));
        goto done;
    }
    size_t n = m->nlayers; /* snapshot: a loader releases the lock */
    ids = malloc((n ? n : 1) * sizeof(*ids));
    if (!ids) {
        st = vc__fail(c, VC_ERR_NO_MEMORY, "%s: out of host memory", fn);
        goto done;
    }
    for (size_t i = 0; i < n; i++) ids[i] = m->layers[i]->id;
    for (size_t i = 0; i < n && st == VC_OK; i++) {
        layer_t *x = vc__settled_layer(c, ids[i]);
        if (x) st = vc__stage_layer(c, x, fn);
    }
done:
    free(ids);
    pthread_mutex_unlock(&c->lock);
    return st;
}

/* ---- patching (LoRA backup / fuse) ------------------------------------------------------------ */

/* Gives l a private, authoritative RAM copy of its current weights. */
static int private_copy(vc_cache *c, layer_t *l, const char *fn) {
    if (l->ram) { /* the caller writes it next: nothing may still be copying it */
        if ((wait_writeback(c, l) | wait_upload(c, l)) != VC_OK)
            return vc__fail(c, VC_ERR_BACKEND, "%s: layer '%s': copies of its RAM copy cannot be waited for: %s", fn,
                            l->name, vc__take_backend_error());
        return VC_OK;
    }
    if (!l->host_src && !l->vblock) { /* only the loader has it: load into the pool */
        const void *src;
        return host_source(c, l, fn, &src);
    }
    int st = ram_reserve(c, l->bytes, l, fn, 0);
    if (st != VC_OK) return st;
    void *buf = NULL;
    int pinned = 0;
    if (c->ops->host_alloc(c->bctx, l->bytes, &buf, &pinned) != VC_OK)
        return vc__fail(c, VC_ERR_NO_MEMORY, "%s: no host memory for a private copy of layer '%s': %s", fn, l->name,
                        vc__take_backend_error());
    if (l->host_src) {
        memcpy(buf, l->host_src, l->bytes);
    } else { /* the device holds the only copy (keep_ram_copy off): read it back */
        st = ensure_event(c, &l->ram_ev);
        if (st == VC_OK && l->upload_pending)
            st = order_after(c, c->download_stream, l->upload_ev);
        int queued = 0;
        if (st == VC_OK) st = c->ops->copy_d2h(c->bctx, buf, arena_block_ptr(l->vblock), l->bytes, c->download_stream);
        queued = st == VC_OK;
        if (st == VC_OK) st = c->ops->event_record(c->bctx, l->ram_ev, c->download_stream);
        if (st == VC_OK) st = c->ops->event_synchronize(c->bctx, l->ram_ev);
        if (st != VC_OK) {
            char why[256];
            snprintf(why, sizeof why, "%s", vc__take_backend_error());
            if (!queued || settle_stream(c, c->download_stream, fn)) c->ops->host_free(c->bctx, buf, l->bytes, pinned);
            else quarantine(c, buf, l->bytes, pinned, 0);
            return vc__fail(c, VC_ERR_BACKEND, "%s: reading layer '%s' back from the device failed: %s", fn, l->name,
                            why);
        }
        c->stats.bytes_d2h += l->bytes;
    }
    l->ram = buf;
    l->ram_pinned = pinned;
    c->ram_bytes += l->bytes;
    vc__note_ram(c);
    list_push_tail(&c->ram_lru, l, 0);
    c->stats.layers_in_ram++;
    return VC_OK;
}

int vc_layer_patch(vc_cache *c, vc_layer_id id, vc_patch_mode mode, int (*fn)(void *, void *, size_t), void *user) {
    static const char name[] = "vc_layer_patch";
    if (!c || !fn) return vc__fail(NULL, VC_ERR_INVALID_ARG, "%s: %s is NULL", name, !c ? "cache" : "fn");
    if (mode != VC_PATCH_BACKUP && mode != VC_PATCH_FUSE)
        return vc__fail_unlocked(c, VC_ERR_INVALID_ARG, "%s: mode %d is not VC_PATCH_BACKUP or VC_PATCH_FUSE", name,
                                 (int)mode);
    pthread_mutex_lock(&c->lock);
    int st = VC_OK;
    layer_t *l = vc__settled_layer(c, id); /* another thread loading or patching it: wait */
    void *backup = NULL;
    int backup_pinned = 0, new_backup = 0;
    if (!l) {
        st = vc__fail(c, VC_ERR_NOT_FOUND, "%s: layer id %#llx is not registered", name, (unsigned long long)id);
        goto done;
    }
    if (l->holds) {
        st = vc__fail(c, VC_ERR_BUSY, "%s: layer '%s' of model '%s' is held; patch it between uses", name, l->name,
                      l->model->name);
        goto done;
    }
    if (l->owner) {
        st = vc__fail(c, VC_ERR_UNSUPPORTED, "%s: layer '%s' is shared from another cache: patch its source there",
                      name, l->name);
        goto done;
    }
    if (l->host_pins) {
        st = vc__fail(c, VC_ERR_BUSY, "%s: layer '%s': %u upload(s) of caches sharing it still read its RAM copy; "
                      "patch it once they have finished (a sharing cache lets them go at its next acquire, "
                      "release or vc_cache_get_stats)", name, l->name, l->host_pins);
        goto done;
    }
    if (mode == VC_PATCH_FUSE && l->patched) {
        st = vc__fail(c, VC_ERR_INVALID_ARG, "%s: layer '%s' is already patched; FUSE would leave nothing to "
                      "restore: unpatch it first, or stack patches with VC_PATCH_BACKUP", name, l->name);
        goto done;
    }
    st = private_copy(c, l, name); /* may run the loader (which pins the layer meanwhile) */
    /* On fused weights the original is the source's, not in RAM: a backup of them would be restored
     * as if original. A patch over a FUSE stacks without one, and unpatch reads the source. */
    if (st == VC_OK && mode == VC_PATCH_BACKUP && !l->backup && !l->patch_fused) {
        st = ram_reserve(c, l->bytes, l, name, 0);
        if (st == VC_OK && c->ops->host_alloc(c->bctx, l->bytes, &backup, &backup_pinned) != VC_OK)
            st = vc__fail(c, VC_ERR_NO_MEMORY, "%s: no host memory for the backup of layer '%s'", name, l->name);
        if (st == VC_OK) {
            memcpy(backup, l->ram, l->bytes);
            c->ram_bytes += l->bytes;
            vc__note_ram(c);
            new_backup = 1;
        }
    }
    if (st != VC_OK) goto done;
    /* The patch runs without the lock; a copy of the weights before it lets a failed patch undo. */
    void *scratch = NULL;
    if (!new_backup) {
        scratch = malloc(l->bytes);
        if (!scratch) {
            st = vc__fail(c, VC_ERR_NO_MEMORY, "%s: no host memory to stage the patch of layer '%s'", name, l->name);
            goto done;
        }
        memcpy(scratch, l->ram, l->bytes);
    }
    void *weights = l->ram;
    l->loading = 1; /* pinned while the patch runs: no eviction, acquire waits */
    pthread_mutex_unlock(&c->lock);
    vc__clear_loader_error();
    int rc = fn(user, weights, l->bytes);
    pthread_mutex_lock(&c->lock);
    l->loading = 0;
    pthread_cond_broadcast(&c->loaded);
    if (rc != 0) {
        memcpy(l->ram, new_backup ? backup : scratch, l->bytes);
        if (new_backup) {
            c->ops->host_free(c->bctx, backup, l->bytes, backup_pinned);
            c->ram_bytes -= l->bytes;
        }
        free(scratch);
        st = vc__fail(c, VC_ERR_LOADER, "%s: the patch function for layer '%s' returned %d%s; the weights are as "
                      "they were", name, l->name, rc, vc__loader_error_suffix());
        goto done;
    }
    free(scratch);
    if (new_backup) {
        l->backup = backup;
        l->backup_pinned = backup_pinned;
    }
    l->patched = 1;
    l->patch_fused = l->patch_fused || mode == VC_PATCH_FUSE; /* (cleared by unpatch) */
    weights_changed(c, l);
    if (l->vblock) vc__evict_vram(c, l, VC_EVICT_MANUAL, 0); /* the device has the old weights */
done:
    pthread_mutex_unlock(&c->lock);
    return st;
}

int vc_layer_unpatch(vc_cache *c, vc_layer_id id) {
    static const char name[] = "vc_layer_unpatch";
    if (!c) return vc__fail(NULL, VC_ERR_INVALID_ARG, "%s: cache is NULL", name);
    pthread_mutex_lock(&c->lock);
    int st = VC_OK;
    layer_t *l = vc__settled_layer(c, id); /* another thread loading or patching it: wait */
    if (!l) {
        st = vc__fail(c, VC_ERR_NOT_FOUND, "%s: layer id %#llx is not registered", name, (unsigned long long)id);
    } else if (l->holds) {
        st = vc__fail(c, VC_ERR_BUSY, "%s: layer '%s' is held", name, l->name);
    } else if (l->patched && l->host_pins) {
        st = vc__fail(c, VC_ERR_BUSY, "%s: layer '%s': %u upload(s) of caches sharing it still read its RAM copy; "
                      "unpatch it once they have finished (a sharing cache lets them go at its next acquire, "
                      "release or vc_cache_get_stats)", name, l->name, l->host_pins);
    } else if (l->patched) {
        if (l->vblock) vc__evict_vram(c, l, VC_EVICT_MANUAL, 1);
        if (l->backup && wait_upload(c, l) != VC_OK) {
            st = vc__fail(c, VC_ERR_BACKEND, "%s: layer '%s': an upload from its RAM copy cannot be waited for: %s",
                          name, l->name, vc__take_backend_error());
        } else if (l->backup) {
            memcpy(l->ram, l->backup, l->bytes);
            c->ops->host_free(c->bctx, l->backup, l->bytes, l->backup_pinned);
            c->ram_bytes -= l->bytes;
            l->backup = NULL;
            l->patched = 0;
            weights_changed(c, l);
            if (l->host_src) vc__drop_ram(c, l); /* the engine's copy is the original again */
        } else { /* fused: the source has the original */
            l->patched = 0;
            weights_changed(c, l);
            vc__drop_ram(c, l);
        }
        l->patch_fused = 0;
    }
    pthread_mutex_unlock(&c->lock);
    return st;
}
