/*
 * Working-memory reservations: device memory the cache leaves free for an operation's activations.
 *
 * The weight limit (vram_pool.c) subtracts max(standing working memory, sum of reservations) from
 * what the device could give the cache (with smart_working_mem, while reservations are active, just
 * their sum). A new reservation lowers that limit; the cache then frees
 * whole arena segments (evicting their unheld layers) until the arena fits under it, so the device
 * really has the memory free. Whether that is possible is checked before anything is evicted, so a
 * reservation that cannot be met leaves the cache exactly as it was.
 */
#include <stdlib.h>

#include "cache_internal.h"

static void link_reservation(vc_cache *c, vc_reservation *r) {
    r->prev = NULL;
    r->next = c->reservations;
    if (r->next) r->next->prev = r;
    c->reservations = r;
}

static void unlink_reservation(vc_cache *c, vc_reservation *r) {
    if (r->prev)
        r->prev->next = r->next;
    else
        c->reservations = r->next;
    if (r->next) r->next->prev = r->prev;
    r->prev = r->next = NULL;
}

/* Takes back a reservation that could not be made: the sum and the weight limit as before it. */
static void undo_reservation(vc_cache *c, vc_reservation *r, size_t before) {
    unlink_reservation(c, r);
    c->reserved_sum = before;
    vc__weight_limit(c);
}

int vc_reserve_working_mem(vc_cache *c, size_t bytes, unsigned flags, vc_reservation **out) {
    static const char fn[] = "vc_reserve_working_mem";
    if (!c || !out)
        return vc__fail(NULL, VC_ERR_INVALID_ARG, "%s: %s is NULL", fn, !c ? "cache" : "out");
    if (flags & ~VC_RESERVE_BUFFER)
        return vc__fail_unlocked(c, VC_ERR_INVALID_ARG, "%s: unknown flags %#x (only VC_RESERVE_BUFFER)",
                                 fn, flags);
    if (bytes == 0 && (flags & VC_RESERVE_BUFFER))
        return vc__fail_unlocked(c, VC_ERR_INVALID_ARG, "%s: a buffer of 0 bytes was requested", fn);
    vc_reservation *r = calloc(1, sizeof(*r));
    if (!r) return vc__fail_unlocked(c, VC_ERR_NO_MEMORY, "%s: out of host memory", fn);
    r->cache = c;
    r->bytes = bytes;

    pthread_mutex_lock(&c->lock);
    vc__range_push(c, "reserve", "working memory");
    char a[32], b[32], d[32];
    int st = VC_OK;
    size_t before = c->reserved_sum;
    if (bytes > SIZE_MAX - before) {
        st = vc__fail(c, VC_ERR_TOO_LARGE, "%s: %zu bytes on top of %zu already reserved overflows", fn,
                      bytes, before);
        goto fail;
    }
    size_t avail = vc__device_avail(c);
    if (before + bytes > avail) {
        st = vc__fail(c, VC_ERR_OUT_OF_VRAM, "%s: cannot reserve %s of working memory: the device can "
                      "give this cache at most %s (free memory plus what the cache holds), of which %s "
                      "is already reserved; nothing was evicted", fn, vc__fmt_bytes(bytes, a, sizeof a),
                      vc__fmt_bytes(avail, b, sizeof b), vc__fmt_bytes(before, d, sizeof d));
        goto fail;
    }
    /* Linked before the limit is computed: with smart_working_mem the limit depends on whether any
     * reservation is active (the first one replaces the standing reserve; computed without it, the
     * cache would evict down to the standing reserve and report that limit). */
    c->reserved_sum = before + bytes;
    link_reservation(c, r);
    size_t limit = vc__weight_limit(c);
    if (vc__vram_total(c) > limit) {
        /* Prefetches still arriving, or ranges quarantined after a failed write-back, may be all
         * that stands in the way: wait for them, then look again. */
        if (vc__shrink_arena(c, limit, VC_EVICT_FOR_RESERVATION, 1) != VC_OK &&
            (!vc__wait_prefetches(c, NULL) || vc__shrink_arena(c, limit, VC_EVICT_FOR_RESERVATION, 1) != VC_OK) &&
            (!vc__free_device_quarantine(c, 0) || vc__shrink_arena(c, limit, VC_EVICT_FOR_RESERVATION, 1) != VC_OK)) {
            undo_reservation(c, r, before);
            st = vc__fail(c, VC_ERR_OUT_OF_VRAM, "%s: cannot reserve %s of working memory: held layers "
                          "keep %s of device memory in use and the device can give the cache at most %s "
                          "beside the reservations; nothing was evicted", fn,
                          vc__fmt_bytes(bytes, a, sizeof a), vc__fmt_bytes(vc__vram_used(c), b, sizeof b),
                          vc__fmt_bytes(sat_add(limit, c->reserved_sum), d, sizeof d));
            goto fail;
        }
        if (vc__shrink_arena(c, limit, VC_EVICT_FOR_RESERVATION, 0) != VC_OK) {
            /* What the dry run counted on can fail only if an eviction's write-back could not be
             * waited for: its device range stays quarantined, and the reservation would overrun. */
            undo_reservation(c, r, before);
            st = vc__fail(c, VC_ERR_BACKEND, "%s: cannot reserve %s of working memory: device memory that a "
                          "failed copy may still read cannot be given back yet (layers evicted for it stay "
                          "evicted; their weights are kept or reloaded)", fn, vc__fmt_bytes(bytes, a, sizeof a));
            goto fail;
        }
    }
    if (flags & VC_RESERVE_BUFFER) {
        r->async = c->stream_ordered && c->ops->device_alloc_async;
        st = r->async ? c->ops->device_alloc_async(c->bctx, bytes, NULL, &r->buffer)
                      : c->ops->device_alloc(c->bctx, bytes, &r->buffer);
        if (st != VC_OK) {
            undo_reservation(c, r, before);
            st = vc__fail(c, VC_ERR_BACKEND, "%s: device allocation of the %s working-memory buffer "
                          "failed: %s (layers evicted for it stay evicted; their weights are kept)", fn,
                          vc__fmt_bytes(bytes, a, sizeof a), vc__take_backend_error());
            goto fail;
        }
        c->buffer_bytes += bytes;
    }
    c->stats.reservations++;
    vc__log(c, c->log_memory_usage ? VC_LOG_INFO : VC_LOG_DEBUG,
            "reserved %s of working memory (%s reserved in all; weight limit now %s)",
            vc__fmt_bytes(bytes, a, sizeof a), vc__fmt_bytes(c->reserved_sum, b, sizeof b),
            vc__fmt_bytes(c->stats.vram_limit, d, sizeof d));
    vc__range_pop(c);
    pthread_mutex_unlock(&c->lock);
    *out = r;
    return VC_OK;
fail:
    vc__range_pop(c);
    pthread_mutex_unlock(&c->lock);
    free(r);
    return st;
}

void *vc_reservation_ptr(const vc_reservation *r) { return r ? r->buffer : NULL; }

int vc_release_working_mem(vc_cache *c, vc_reservation *r) {
    static const char fn[] = "vc_release_working_mem";
    if (!c || !r) return vc__fail(NULL, VC_ERR_INVALID_ARG, "%s: %s is NULL", fn, !c ? "cache" : "reservation");
    pthread_mutex_lock(&c->lock);
    /* Compare pointers only: a stale or foreign pointer is rejected without being read. */
    vc_reservation *x = c->reservations;
    while (x && x != r) x = x->next;
    if (!x) {
        int st = vc__fail(c, VC_ERR_NOT_FOUND, "%s: %p is not an active reservation of this cache "
                          "(released twice?)", fn, (void *)r);
        pthread_mutex_unlock(&c->lock);
        return st;
    }
    unlink_reservation(c, r);
    c->reserved_sum -= r->bytes;
    if (r->buffer) {
        if (r->async)
            c->ops->device_free_async(c->bctx, r->buffer, NULL);
        else
            c->ops->device_free(c->bctx, r->buffer);
        c->buffer_bytes -= r->bytes;
    }
    size_t limit = vc__weight_limit(c);
    /* With smart_working_mem the last reservation's end brings the standing reserve back, which may
     * be larger: evict unheld layers back under it now (best effort: held ones leave at the next
     * load decision, as when another process takes memory). */
    if (vc__vram_total(c) > limit) vc__shrink_arena(c, limit, VC_EVICT_BUDGET_SHRANK, 0);
    char a[32];
    vc__log(c, c->log_memory_usage ? VC_LOG_INFO : VC_LOG_DEBUG, "released %s of working memory",
            vc__fmt_bytes(r->bytes, a, sizeof a));
    pthread_mutex_unlock(&c->lock);
    free(r);
    return VC_OK;
}

size_t vc_estimate_vae_decode_bytes(unsigned width, unsigned height, unsigned bytes_per_element,
                                    vc_vae_estimate method) {
    /* In double, then saturated: 65535^2 * 4 * 2178 still fits a double exactly enough. */
    double px = (double)width * (double)height * (double)bytes_per_element, b;
    switch (method) {
    case VC_VAE_ESTIMATE_INVOKEAI: b = px * 960.0 * 1.2; break;
    case VC_VAE_ESTIMATE_COMFYUI: b = 2178.0 * ((double)width / 8.0) * ((double)height / 8.0) * 64.0 * bytes_per_element; break;
    default: return 0;
    }
    return b >= (double)SIZE_MAX ? SIZE_MAX : (size_t)b;
}
