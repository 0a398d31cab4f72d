/*
 * Layers shared between caches (vc_layer_register_shared): one host copy, in the owning cache, read
 * by each device that uses it.
 *
 * A sharing cache fetches the owner's copy under the owner's lock (lock order: ours, then the
 * owner's), pins it while its own upload reads it (remote pins), and notices when the owner patched
 * the weights since its device copy was made (weights epochs).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cache_internal.h"
#include "residency_internal.h"

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
int vc__orphan_remote_pins(vc_cache *c, const layer_t *l) {
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
void vc__drain_remote_pins(vc_cache *c, int wait, const layer_t *only) {
    remote_pin **pp = &c->remote_pins;
    while (*pp) {
        remote_pin *r = *pp;
        int done;
        if (only && r->layer != only)
            done = 0;
        else if (r->layer)
            done = wait ? vc__wait_upload(c, r->layer) == VC_OK : vc__upload_done(c, r->layer);
        else /* its layer is gone, its copy unsettled: a wait for the whole upload stream settles it */
            done = c->upload_settles >= r->settled_after || vc__settle_stream(c, c->upload_stream, NULL);
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
int vc__owner_fetch(vc_cache *o, vc_layer_id oid, const char *fn, const void **src, int pin, char *msg,
                    size_t msg_size, uint32_t *gen) {
    pthread_mutex_lock(&o->lock);
    layer_t *ol = slot_table_get(&o->layers, oid);
    while (ol && ol->loading) {
        pthread_cond_wait(&o->loaded, &o->lock);
        ol = slot_table_get(&o->layers, oid);
    }
    int st = !ol ? VC_ERR_NOT_FOUND : !pin && (ol->host_src || ol->ram) ? VC_OK : vc__host_source(o, ol, fn, src);
    /* The owner may still be writing this copy back from its own device (its RAM copy was dropped
     * while the layer stayed in VRAM, or keep_ram_copy is off). Our upload runs on another backend's
     * streams, which cannot wait on the owner's event: the host waits for it here, or our device
     * would copy bytes the write-back has not written yet. */
    if (st == VC_OK && pin && vc__wait_writeback(o, ol) != VC_OK)
        st = vc__fail(o, VC_ERR_BACKEND, "%s: the write-back of layer '%s' into RAM failed: %s", fn, ol->name,
                      vc__take_backend_error());
    if (st == VC_OK && pin) ol->host_pins++;
    if (st == VC_OK && gen) *gen = ol->weights_gen;
    snprintf(msg, msg_size, "%s", o->last_error);
    pthread_mutex_unlock(&o->lock);
    return st;
}

int vc__owner_status(vc_cache *c, const layer_t *l, const char *fn, int st, const char *msg) {
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
    int st = vc__owner_fetch(l->owner, l->owner_layer, fn, src, pin, msg, sizeof msg, &gen);
    if (st == VC_OK && pin) {
        l->src_gen = gen;
        l->src_epoch = epoch;
    }
    return vc__owner_status(c, l, fn, st, msg);
}

/* A shared layer whose source the owning cache has unregistered: it can never be loaded again. */
int vc__shared_source_gone(const layer_t *l) {
    pthread_mutex_lock(&l->owner->lock);
    int gone = !slot_table_get(&l->owner->layers, l->owner_layer);
    pthread_mutex_unlock(&l->owner->lock);
    return gone;
}

/* A shared layer's device copy is stale when its source was patched or unpatched since it was made.
 * Checked at each acquire that finds it resident and unheld: one atomic load, and the owner's lock
 * only after some layer of the owner changed. */
int vc__shared_stale(layer_t *l) {
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
void vc__weights_changed(vc_cache *c, layer_t *l) {
    l->weights_gen++;
    atomic_fetch_add_explicit(&c->weights_epoch, 1, memory_order_release);
}

int vc__shared_source(vc_cache *c, layer_t *l, const char *fn, const void **src) {
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
