/*
 * Patching a layer's weights in place (LoRA): vc_layer_patch and vc_layer_unpatch.
 *
 * A patched layer owns a private RAM copy of its current weights (the source may be borrowed or
 * re-read by a loader); with VC_PATCH_BACKUP the original is kept beside it and restored by
 * unpatch, fused patches drop it. Devices that share the layer reload at their next acquire.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cache_internal.h"
#include "residency_internal.h"

/* ---- patching (LoRA backup / fuse) ------------------------------------------------------------ */

/* Gives l a private, authoritative RAM copy of its current weights. */
static int private_copy(vc_cache *c, layer_t *l, const char *fn) {
    if (l->ram) { /* the caller writes it next: nothing may still be copying it */
        if ((vc__wait_writeback(c, l) | vc__wait_upload(c, l)) != VC_OK)
            return vc__fail(c, VC_ERR_BACKEND, "%s: layer '%s': copies of its RAM copy cannot be waited for: %s", fn,
                            l->name, vc__take_backend_error());
        return VC_OK;
    }
    if (!l->host_src && !l->vblock) { /* only the loader has it: load into the pool */
        const void *src;
        return vc__host_source(c, l, fn, &src);
    }
    int st = vc__ram_reserve(c, l->bytes, l, fn, 0);
    if (st != VC_OK) return st;
    void *buf = NULL;
    int pinned = 0;
    if (c->ops->host_alloc(c->bctx, l->bytes, &buf, &pinned) != VC_OK)
        return vc__fail(c, VC_ERR_NO_MEMORY, "%s: no host memory for a private copy of layer '%s': %s", fn, l->name,
                        vc__take_backend_error());
    if (l->host_src) {
        memcpy(buf, l->host_src, l->bytes);
    } else { /* the device holds the only copy (keep_ram_copy off): read it back */
        st = vc__ensure_event(c, &l->ram_ev);
        if (st == VC_OK && l->upload_pending)
            st = vc__order_after(c, c->download_stream, l->upload_ev);
        int queued = 0;
        if (st == VC_OK) st = c->ops->copy_d2h(c->bctx, buf, arena_block_ptr(l->vblock), l->bytes, c->download_stream);
        queued = st == VC_OK;
        if (st == VC_OK) st = c->ops->event_record(c->bctx, l->ram_ev, c->download_stream);
        if (st == VC_OK) st = c->ops->event_synchronize(c->bctx, l->ram_ev);
        if (st != VC_OK) {
            char why[256];
            snprintf(why, sizeof why, "%s", vc__take_backend_error());
            if (!queued || vc__settle_stream(c, c->download_stream, fn)) c->ops->host_free(c->bctx, buf, l->bytes, pinned);
            else vc__quarantine(c, buf, l->bytes, pinned, 0);
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
    vc__ram_ix_touch(c, l, +1);
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
        st = vc__ram_reserve(c, l->bytes, l, name, 0);
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
    vc__weights_changed(c, l);
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
        if (l->backup && vc__wait_upload(c, l) != VC_OK) {
            st = vc__fail(c, VC_ERR_BACKEND, "%s: layer '%s': an upload from its RAM copy cannot be waited for: %s",
                          name, l->name, vc__take_backend_error());
        } else if (l->backup) {
            memcpy(l->ram, l->backup, l->bytes);
            c->ops->host_free(c->bctx, l->backup, l->bytes, l->backup_pinned);
            c->ram_bytes -= l->bytes;
            l->backup = NULL;
            l->patched = 0;
            vc__weights_changed(c, l);
            if (l->host_src) vc__drop_ram(c, l); /* the engine's copy is the original again */
        } else { /* fused: the source has the original */
            l->patched = 0;
            vc__weights_changed(c, l);
            vc__drop_ram(c, l);
        }
        l->patch_fused = 0;
    }
    pthread_mutex_unlock(&c->lock);
    return st;
}
