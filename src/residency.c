/*
 * Residency: the life of a layer between not-loaded, RAM and VRAM, as the engine drives it:
 * acquire and release (with the upload each may need), offload, read, teardown, whole-model calls,
 * and staging into the RAM pool ahead of use.
 *
 * The pools themselves are ram_pool.c and vram_pool.c, the completion of copies copy_sync.c, the
 * layers shared with other caches shared_layers.c, LoRA patching patch.c; residency_internal.h is
 * what these files share.
 *
 * Every function here runs with c->lock held, except that a loader callback runs with it released
 * while its layer is marked `loading` (which pins the layer: nothing evicts, unregisters or loads
 * it concurrently; other acquirers wait on c->loaded).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cache_internal.h"
#include "residency_internal.h"

/* An acquire's placement: any victim the scheduler allows, failures reported. */
static const place_req ACQUIRE_REQ = {VC_ANY_DISTANCE, 0};

/* ---- intrusive lists ------------------------------------------------------------------------- */

#define LINKS(x, vram) ((vram) ? &(x)->vprev : &(x)->rprev)
#define NEXT(x, vram) ((vram) ? &(x)->vnext : &(x)->rnext)

void list_push_tail(layer_list *l, layer_t *x, int vram) {
    if (!vram) x->rtick = ++l->pushes;
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

int vc__host_source(vc_cache *c, layer_t *l, const char *fn, const void **src) {
    if (l->owner) return vc__shared_source(c, l, fn, src);
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
    int st = vc__ram_reserve(c, l->bytes, l, fn, 0);
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
        vc__free_ram_buffer(c, buf, l->bytes, pinned);
        c->stats.load_failures++;
        return vc__fail(c, VC_ERR_LOADER, "%s: the loader of layer '%s' of model '%s' returned %d%s; the "
                        "layer stays unloaded and a later acquire calls the loader again", fn, l->name,
                        l->model->name, rc, vc__loader_error_suffix());
    }
    l->ram = buf;
    l->ram_pinned = pinned;
    list_push_tail(&c->ram_lru, l, 0);
    vc__ram_ix_touch(c, l, +1);
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
    if (c->remote_pins) vc__drain_remote_pins(c, 0, NULL);
    int st = vc__host_source(c, l, fn, &src);
    if (st != VC_OK) return st;
    arena_block *blk;
    /* Making room may write evicted layers back into the RAM pool: keep our source out of reach. */
    l->uploading = 1;
    st = vc__vram_place(c, l, fn, rq, &blk);
    l->uploading = 0;
    if (st != VC_OK) vc__flush_fences(c); /* nothing to copy: every deferred wait stands */
    if (st != VC_OK) {
        if (l->owner) vc__drain_remote_pins(c, 1, l); /* nothing was copied: let go of the source */
        return st;
    }
    void *dst = arena_block_ptr(blk);
    vc__range_push(c, wait ? "upload" : "prefetch", l->name);
    void *trace_ev = vc__trace_mark(c, c->upload_stream); /* NULL unless tracing with device times */
    if (l->ram_pending) st = vc__order_after(c, c->upload_stream, l->ram_ev);
    int copying = st == VC_OK; /* from here a failure may leave (part of) the copy queued */
    if (st == VC_OK) st = c->nfence ? vc__copy_fenced(c, l, blk, src) : c->ops->copy_h2d(c->bctx, dst, src, l->bytes, c->upload_stream);
    if (c->nfence) vc__flush_fences(c); /* a failed wait above: never copy over a running layer later */
    if (st == VC_OK) st = vc__ensure_event(c, &l->upload_ev);
    if (st == VC_OK) st = c->ops->event_record(c->bctx, l->upload_ev, c->upload_stream);
    if (st == VC_OK) { /* ordered after any unsettled copy of ours on the same stream: it covers them */
        l->upload_pending = 1;
        l->unsettled_until = 0;
    }
    if (st == VC_OK && wait) st = vc__order_after(c, stream, l->upload_ev);
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
        if (copying && !vc__settle_stream(c, c->upload_stream, fn)) vc__mark_unsettled(c, l);
        arena_free(l->in_stream ? &c->sarena : &c->arena, blk);
        l->in_stream = 0;
        if (l->owner) vc__drain_remote_pins(c, 1, l);
        char a[32];
        return vc__fail(c, VC_ERR_BACKEND, "%s: upload of layer '%s' of model '%s' (%s) failed: %s", fn,
                        l->name, l->model->name, vc__fmt_bytes(l->bytes, a, sizeof a), why);
    }
    l->vblock = blk;
    vc__ram_ix_touch(c, l, 0);
    vc__note_vram_layer(c, l, +1);
    list_push_tail(&c->vram_lru, l, 1);
    c->stats.bytes_h2d += l->bytes;
    vc__note_vram(c);
    if (!c->keep_ram_copy && l->ram && !l->patched) vc__drop_ram_after_upload(c, l);
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

/* Whether a whole-model load uploads x, another layer of the acquired one's model: not resident,
 * not being loaded by another thread, and not a shared layer whose source has gone (no longer part
 * of what the model can load: it must not fail every acquire of the model's other layers; its own
 * acquire says why). The reservation is sized by the same rule as the load. */
static int whole_load_uploads(const layer_t *x) {
    return !x->vblock && !x->loading && !(x->owner && vc__shared_source_gone(x));
}

/* What a whole-model load of l's model will place (l and the layers whole_load_uploads picks), each
 * with room to align it. */
static size_t whole_load_bytes(const layer_t *l) {
    const model_t *m = l->model;
    size_t need = 0;
    for (size_t i = 0; i < m->nlayers; i++) {
        const layer_t *x = m->layers[i];
        if (x != l && !whole_load_uploads(x)) continue;
        need = sat_add(need, sat_add(arena_round(x->bytes), x->align > ARENA_GRAIN ? x->align - ARENA_GRAIN : 0));
    }
    return need;
}

int vc__load_whole_model(vc_cache *c, layer_t *l, vc_stream stream, const char *fn) {
    model_t *m = l->model;
    size_t need = 0, limit = vc__weight_limit(c);
    for (size_t i = 0; i < m->nlayers; i++) {
        const layer_t *x = m->layers[i];
        if (x == l || !x->owner || !vc__shared_source_gone(x)) need = sat_add(need, arena_round(x->bytes));
    }
    if (need > limit) {
        char a[32], b[32];
        return vc__fail(c, VC_ERR_OUT_OF_VRAM, "%s: model '%s' needs %s of device memory and offload_mode model "
                        "moves whole models, but the weight budget is %s (enable partial loading, or use "
                        "offload_mode balanced or sequential, to stream layers)", fn, m->name,
                        vc__fmt_bytes(need, a, sizeof a), vc__fmt_bytes(limit, b, sizeof b));
    }
    /* Snapshot the ids (a loader may release the lock) in the order the pass will want them: from
     * the acquired layer on, along the model's order when it is known (a layer it uses twice comes
     * once: the second time it is resident), else in registration order; layers outside the order
     * last. The copies queue on the one upload stream in that order. */
    size_t n = m->nlayers, k = 0;
    int ordered = m->order_valid && m->order_n && l->in_order;
    vc_layer_id *ids = malloc((n + (ordered ? m->order_n : 0) + 1) * sizeof(*ids));
    if (!ids) return vc__fail(c, VC_ERR_NO_MEMORY, "%s: out of host memory", fn);
    if (ordered) {
        for (size_t j = 1; j < m->order_n; j++) ids[k++] = m->order[(l->order_pos + j) % m->order_n]->id;
        for (size_t i = 0; i < n; i++)
            if (!m->layers[i]->in_order) ids[k++] = m->layers[i]->id;
    } else {
        for (size_t j = 1; j <= n; j++) ids[k++] = m->layers[(l->model_pos + j) % n]->id;
    }
    int st = VC_OK;
    hold(c, l); /* keep the acquired layer in place while the rest arrive (loaders drop the lock) */
    for (size_t i = 0; i < k && st == VC_OK; i++) {
        layer_t *x = slot_table_get(&c->layers, ids[i]);
        if (!x || x == l || !whole_load_uploads(x)) continue;
        /* The whole model moves now, but the engine's stream waits only for the acquired layer:
         * each later acquire waits for its own copy (the hit path), so the pass computes while
         * the rest of the model arrives instead of after all of it. */
        st = upload(c, x, stream, 0, fn, &ACQUIRE_REQ);
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
    if (st == VC_OK && c->shared_layers && l && l->owner && l->vblock && !l->holds && vc__shared_stale(l))
        vc__evict_vram(c, l, VC_EVICT_MANUAL, 1); /* its source was patched: load the new weights */
    if (st != VC_OK) {
        /* the owner's loader failed: its message is recorded */
    } else if (!l) {
        st = vc__fail(c, VC_ERR_NOT_FOUND, "%s: layer id %#llx is not registered", fn, (unsigned long long)id);
    } else if (l->vblock) {
        c->stats.hits++;
        if (c->remote_pins) vc__drain_remote_pins(c, 0, NULL);
        /* The upload may still be in flight: the engine stream waits for it, the host does not. */
        if (l->upload_pending && !vc__upload_done(c, l)) {
            c->late_acquires++; /* the engine's stream may wait for the copy (the tuner's sign) */
            if (vc__order_after(c, stream, l->upload_ev) != VC_OK)
                st = vc__fail(c, VC_ERR_BACKEND, "%s: layer '%s': stream could not wait on the upload: %s",
                              fn, l->name, vc__take_backend_error());
        }
    } else {
        /* A whole model coming in gets room of its own; the few layers of a model still resident
         * (one offloaded, or evicted for working memory) go back into the holes they left. */
        if (c->mode == VC_OFFLOAD_MODE_MODEL && !l->model->vram_layers)
            vc__reserve_whole_model(c, l, whole_load_bytes(l));
        st = upload(c, l, stream, 1, fn, &ACQUIRE_REQ);
        if (st == VC_OK) {
            c->stats.misses++;
            c->late_acquires++; /* uploaded on demand: the engine's stream waits for it */
        }
        if (st == VC_OK && c->mode == VC_OFFLOAD_MODE_MODEL) st = vc__load_whole_model(c, l, stream, fn);
        vc__end_whole_model(c);
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
    int recorded = vc__ensure_event(c, &l->release_ev) == VC_OK;
    if (recorded) {
        if (l->release_recorded && l->release_stream != stream &&
            c->ops->event_query(c->bctx, l->release_ev) != 1)
            vc__order_after(c, stream, l->release_ev);
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
        vc__settle_stream(c, stream, "vc_layer_release");
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
        st = vc__wait_writeback(c, l);
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
        st = vc__ensure_event(c, &l->ram_ev);
        if (st == VC_OK && l->upload_pending)
            st = vc__order_after(c, c->download_stream, l->upload_ev);
        int queued = 0;
        if (st == VC_OK) st = c->ops->copy_d2h(c->bctx, dst, arena_block_ptr(l->vblock), size, c->download_stream);
        queued = st == VC_OK;
        if (st == VC_OK) st = c->ops->event_record(c->bctx, l->ram_ev, c->download_stream);
        if (st == VC_OK) st = c->ops->event_synchronize(c->bctx, l->ram_ev);
        if (st != VC_OK) {
            char why[256];
            snprintf(why, sizeof why, "%s", vc__take_backend_error());
            /* the caller may free dst on our error: the copy into it must have run by then */
            if (queued) vc__settle_stream(c, c->download_stream, fn);
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
    vc__drain_remote_pins(c, 1, l);
    if (l->owner) {
        if (!vc__orphan_remote_pins(c, l)) { /* one reader fewer for the owner */
            pthread_mutex_lock(&l->owner->lock);
            l->owner->dependents--;
            pthread_mutex_unlock(&l->owner->lock);
        }
        c->shared_layers--;
    }
    if (l->vblock) {
        if (l->release_recorded) vc__order_after(c, c->upload_stream, l->release_ev);
        list_unlink(&c->vram_lru, l, 1);
        arena_free(l->in_stream ? &c->sarena : &c->arena, l->vblock);
        l->vblock = NULL;
        l->in_stream = 0;
        vc__ram_ix_touch(c, l, 0);
        vc__note_vram_layer(c, l, -1);
    }
    vc__drain_deferred(c, 1, l);
    l->patched = 0; /* the layer goes: its RAM copy with it */
    vc__drop_ram(c, l);
    if (l->backup) {
        c->ops->host_free(c->bctx, l->backup, l->bytes, l->backup_pinned);
        c->ram_bytes -= l->bytes;
        l->backup = NULL;
    }
    vc__wait_upload(c, l);
    vc__wait_writeback(c, l);
    if (l->upload_ev) c->ops->event_destroy(c->bctx, l->upload_ev);
    if (l->release_ev) c->ops->event_destroy(c->bctx, l->release_ev);
    if (l->ram_ev) c->ops->event_destroy(c->bctx, l->ram_ev);
    model_t *m = l->model;
    m->layers[l->model_pos] = m->layers[--m->nlayers];
    m->layers[l->model_pos]->model_pos = l->model_pos;
    m->ra_room = 0;
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
        int st = vc__owner_fetch(o, oid, fn, &src, 0, msg, sizeof msg, NULL);
        pthread_mutex_lock(&c->lock);
        l->loading = 0;
        pthread_cond_broadcast(&c->loaded);
        return vc__owner_status(c, l, fn, st, msg);
    }
    if (!vc__needs_loader(l)) return VC_OK;
    return vc__host_source(c, l, fn, &src);
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
