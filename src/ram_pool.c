/*
 * The RAM pool: host copies of layers, within max_cache_ram_gb.
 *
 * A RAM copy goes when room is needed (least recently used, or the scheduler's choice under the
 * planned policy) and only when no copy reads or writes it; with keep_ram_copy_of_weights off, a
 * copy goes once the upload reading it has run (deferred frees).
 *
 * Runs with c->lock held.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cache_internal.h"
#include "residency_internal.h"

/* ---- RAM pool -------------------------------------------------------------------------------- */

void vc__free_ram_buffer(vc_cache *c, void *p, size_t bytes, int pinned) {
    c->ops->host_free(c->bctx, p, bytes, pinned);
    c->ram_bytes -= bytes;
}

void vc__drop_ram(vc_cache *c, layer_t *l) {
    if (!l->ram) return;
    int idle = (vc__wait_upload(c, l) | vc__wait_writeback(c, l)) == VC_OK; /* both waits run */
    list_unlink(&c->ram_lru, l, 0);
    if (idle)
        vc__free_ram_buffer(c, l->ram, l->bytes, l->ram_pinned);
    else
        vc__quarantine(c, l->ram, l->bytes, l->ram_pinned, 1);
    l->ram = NULL;
    vc__ram_ix_touch(c, l, -1);
    c->stats.layers_in_ram--;
}

/* Frees deferred RAM buffers whose uploads completed; with `wait`, all of them. `only` limits the
 * pass to one layer's buffers. */
void vc__drain_deferred(vc_cache *c, int wait, const layer_t *only) {
    deferred_free **pp = &c->deferred;
    while (*pp) {
        deferred_free *d = *pp;
        if (only && d->layer != only) {
            pp = &d->next;
            continue;
        }
        int idle = 1;
        if (wait)
            idle = vc__wait_upload(c, d->layer) == VC_OK;
        else if (!vc__upload_done(c, d->layer)) {
            pp = &d->next;
            continue;
        }
        *pp = d->next;
        if (idle) {
            vc__free_ram_buffer(c, d->ptr, d->bytes, d->pinned);
            free(d);
        } else {
            vc__quarantine_node(c, d);
        }
    }
}

void vc__reap_deferred(vc_cache *c) {
    if (c->deferred) vc__drain_deferred(c, 0, NULL);
    if (c->remote_pins) vc__drain_remote_pins(c, 0, NULL); /* owners may patch once our uploads are done */
}

/* keep_ram_copy off: the RAM copy goes once the upload reading it completes. */
void vc__drop_ram_after_upload(vc_cache *c, layer_t *l) {
    if (l->host_pins) return; /* another cache's upload reads it */
    if (vc__upload_done(c, l)) {
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
    vc__ram_ix_touch(c, l, -1);
    c->stats.layers_in_ram--;
}

static int ram_droppable(vc_cache *c, layer_t *l) {
    return !l->loading && !l->uploading && !l->patched && !l->host_pins && vc__upload_done(c, l) && vc__writeback_done(c, l);
}

/* Makes room for `bytes` in the RAM pool by dropping least recently used RAM copies (all of which a
 * loader can produce again). `quiet` skips recording an error (used on best-effort paths). */
int vc__ram_reserve(vc_cache *c, size_t bytes, const layer_t *exclude, const char *fn, int quiet) {
    char a[32], b[32], d[32];
    if (bytes > c->ram_budget) {
        if (quiet) return VC_ERR_OUT_OF_RAM;
        return vc__fail(c, VC_ERR_OUT_OF_RAM, "%s: layer '%s' of model '%s' needs %s of RAM, more than "
                        "the whole RAM cache budget of %s (raise max_cache_ram_gb)", fn, exclude->name,
                        exclude->model->name, vc__fmt_bytes(bytes, a, sizeof a),
                        vc__fmt_bytes(c->ram_budget, b, sizeof b));
    }
    vc__drain_deferred(c, 0, NULL);
    layer_t *x = c->ram_lru.head;
    int planned = c->policy == VC_POLICY_PLANNED;
    while (c->ram_bytes > c->ram_budget - bytes) {
        if (planned)
            x = vc__sched_ram_victim(c, exclude, ram_droppable);
        else
            while (x && (x == exclude || !ram_droppable(c, x))) x = x->rnext;
        if (!x) {
            if (c->deferred) {
                vc__drain_deferred(c, 1, NULL);
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
            if (busy && (vc__wait_upload(c, busy) | vc__wait_writeback(c, busy)) == VC_OK) {
                x = c->ram_lru.head;
                continue;
            }
            if (c->quarantine && vc__settle_stream(c, c->download_stream, fn) && vc__settle_stream(c, c->upload_stream, fn)) {
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
