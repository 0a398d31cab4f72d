/*
 * Order-aware scheduling: what to evict, what to upload ahead of use, and which layers to keep.
 *
 * A denoising loop runs the same layers in the same order every step. Each model's order is either
 * declared by the engine or learned: the first pass is recorded until its first layer comes round
 * again; later passes are checked against it, and a learned order is dropped after too many
 * mismatches in one pass (as DeepSpeed's parameter trace is). With an order known (planned policy):
 *
 *  - a plan marks which layers stay resident: when the pass does not fit, streamed layers are
 *    spread between kept ones (Bresenham over bytes), so each streamed layer's copy can hide behind
 *    the compute of the kept layers before it, and room for two of the largest streamed layers is
 *    left free for the copies in flight;
 *  - victims are, in order: layers of models not in use (least recently used first); layers of
 *    models without an order (LRU); then, Belady-style, the layer of an active model whose next use
 *    is furthest ahead (a prefetch may displace only streamed layers needed later than itself);
 *  - after each acquire the next layers of the pass are uploaded ahead of use, as far as room can
 *    be made without evicting anything needed sooner, and at most prefetch_depth at a time.
 *
 * Branches and skipped layers only cost accuracy: an acquire out of order moves the position to
 * the acquired layer. Everything here runs under the cache lock.
 *
 * The plan is made and laid out in plan.c; models that run in turn are joined into one cycle in
 * step_group.c; schedule_internal.h is what the three share.
 */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "cache_internal.h"
#include "residency_internal.h"
#include "schedule_internal.h"

#define PREFETCH_WINDOW 256 /* layers looked ahead per acquire at most */

void vc__note_vram_layer(vc_cache *c, layer_t *l, int delta) {
    model_t *g = l->model->joined;
    if (delta > 0) {
        c->stats.layers_in_vram++;
        l->model->vram_layers++;
        if (g) g->vram_layers++;
    } else {
        c->stats.layers_in_vram--;
        l->model->vram_layers--;
        if (g) g->vram_layers--;
    }
}

/* The models plans are made for, by index 0..c->models.count: each model outside the step group,
 * then the group (NULL for the others). */
model_t *vc__plan_model_at(vc_cache *c, uint32_t i) {
    model_t *m = i < c->models.count ? c->models.slots[i].ptr : c->group;
    return m && !m->joined ? m : NULL;
}

int vc__evictable(vc_cache *c, layer_t *l) {
    if (l->holds || l->loading) return 0;
    if (l->prefetched && l->upload_pending) {
        if (c->ops->event_query(c->bctx, l->upload_ev) != 1) return 0; /* still arriving (or unknown) */
        l->upload_pending = 0;
    }
    return 1;
}

/* Steps until l is needed again in its model's pass; the current layer counts as a full pass. A
 * layer used twice per pass (next_use) is needed at the nearer of its uses. */
size_t vc__distance_of(const layer_t *l) {
    const model_t *m = vc__plan_model(l);
    if (!order_known(m) || !l->in_order) return VC_ANY_DISTANCE - 1;
    size_t d = (l->order_pos + m->order_n - m->pos) % m->order_n;
    d = d ? d : m->order_n;
    if (m->next_use)
        for (size_t p = m->next_use[l->order_pos]; p != l->order_pos; p = m->next_use[p]) {
            size_t e = (p + m->order_n - m->pos) % m->order_n;
            if (e && e < d) d = e;
        }
    return d;
}

/* A model is in use when it ran within the last two passes' worth of acquires of the model
 * asking for room (so interleaved models, such as a ControlNet beside a UNet, count as active). */
int vc__model_active(const vc_cache *c, const model_t *m, const model_t *asking) {
    if (m == asking) return 1;
    /* A model that runs pass after pass alone (a denoise loop; SDXL's base UNet before its refiner),
     * or did so last time, uses no other model's layers until its run ends: another model is in use
     * only if it ran since the run began. Else the model that ran just before (the refiner, the text
     * encoder) would count as in use for two more passes, and its layers, each due early in its own
     * pass, would be kept while this model evicted its own and loaded them again. */
    if ((asking->run_len >= 2 || asking->prev_run_len >= 2) && m->last_tick < asking->run_start) return 0;
    uint64_t window = 2 * (uint64_t)(asking->nlayers ? asking->nlayers : 1);
    return m->last_tick + window >= c->use_clock;
}

/* Model mode with the LRU policy: the least recently used layer of another model than for_layer's. */
static layer_t *lru_other_model(vc_cache *c, const layer_t *for_layer) {
    for (layer_t *x = c->vram_lru.head; x; x = x->vnext)
        if (x->model != for_layer->model && vc__evictable(c, x)) return x;
    return NULL;
}

/* Model mode: when m's next run should begin, in c->use_clock, from the time between its last two
 * runs' starts; UINT64_MAX while unknown (it has run once, or its next run is overdue: the
 * pipeline changed). */
static uint64_t next_run_estimate(const vc_cache *c, const model_t *m) {
    if (!m->prev_run_start || m->run_start <= m->prev_run_start) return UINT64_MAX;
    uint64_t next = m->run_start + (m->run_start - m->prev_run_start);
    return next < m->run_start || next <= c->use_clock ? UINT64_MAX : next;
}

/* Model mode's victim: a layer of the model (not for_layer's) whose next run is furthest ahead.
 * Models that run in a cycle (the encoders, the UNet, the refiner, the VAE of each image) come
 * back in the order they ran, so the least recently used is the one needed soonest, and evicting
 * it first reloaded every model every image (SDXL base + refiner on 12 GB: 10.6 GB per image, not
 * 5.3). A model whose next run cannot be told yet goes first, least recently used first. The walk
 * covers the resident layers, once per model evicted (whole models go). */
static layer_t *model_mode_victim(vc_cache *c, const layer_t *for_layer) {
    layer_t *best = NULL;
    uint64_t best_next = 0;
    for (layer_t *x = c->vram_lru.head; x; x = x->vnext) {
        if (x->model == for_layer->model || !vc__evictable(c, x)) continue;
        uint64_t next = next_run_estimate(c, x->model);
        if (next == UINT64_MAX) return x;
        if (!best || next > best_next) best = x, best_next = next;
    }
    return best;
}

layer_t *vc__sched_victim(vc_cache *c, const layer_t *for_layer, size_t max_distance, vc_evict_reason *reason) {
    const model_t *asking = vc__plan_model(for_layer);
    int prefetch = max_distance != VC_ANY_DISTANCE;
    *reason = prefetch ? VC_EVICT_FOR_PREFETCH : VC_EVICT_FOR_LOAD;
    if (c->mode == VC_OFFLOAD_MODE_NONE) return NULL;
    if (c->mode == VC_OFFLOAD_MODE_MODEL) {
        *reason = VC_EVICT_MODEL_SWAP;
        return c->policy == VC_POLICY_LRU ? lru_other_model(c, for_layer) : model_mode_victim(c, for_layer);
    }
    if (c->policy == VC_POLICY_LRU) {
        for (layer_t *x = c->vram_lru.head; x; x = x->vnext)
            if (vc__evictable(c, x)) return x;
        return NULL;
    }
    /* 1. layers of models not in use, and of models with no order yet: least recently used first.
     *    Such layers gather at the LRU head, so the walk is short in the steady state. */
    for (layer_t *x = c->vram_lru.head; x; x = x->vnext) {
        if (!vc__evictable(c, x)) continue;
        const model_t *xm = vc__plan_model(x);
        if (!vc__model_active(c, xm, asking)) return x;
        if (!order_known(xm) || !x->in_order) {
            if (!prefetch || xm != asking) return x;
            /* A readahead (read_ahead: its model is learning its order) may take the model's own
             * layers registered before the latest acquire, which a pass in registration order has
             * used and needs last; never one it read ahead, nor one after (needed sooner). */
            if (!order_known(asking) && !x->prefetched && x->model_pos + 1 < asking->ra_last) return x;
        }
        if (order_known(xm) && x->in_order) break; /* the rest are active and ordered */
    }
    /* 2. Belady among active ordered models: the resident layer needed furthest ahead. A prefetch
     *    may only displace streamed layers needed later than itself; an acquire takes the furthest
     *    of any (a tie goes to the streamed layer, to keep the plan). Not a layer in the streaming
     *    region: the room is wanted outside it (vram_place), and the region would be emptied layer
     *    by layer and given back, and its plan laid out again (a VAE's first layer after the
     *    denoise loop of a ControlNet and its UNet: the pair's kept set loaded again every image). */
    layer_t *best = NULL;
    size_t best_d = 0;
    for (uint32_t i = 0; i <= c->models.count; i++) {
        model_t *m = vc__plan_model_at(c, i);
        if (!m || !order_known(m) || !m->vram_layers || !vc__model_active(c, m, asking)) continue;
        for (int kept = 0; kept < (prefetch ? 1 : 2); kept++) {
            /* Among streamed layers, prefer one whose last use has finished on the device, so the
             * copy into its room need not wait for a kernel; else the furthest. */
            layer_t *first = NULL, *done = NULL;
            size_t first_d = 0, done_d = 0;
            for (size_t k = m->order_n - 1; k >= 1 && (!prefetch || k > max_distance); k--) {
                layer_t *x = m->order[(m->pos + k) % m->order_n];
                if (!x->vblock || x->keep != kept || x->in_stream || !vc__evictable(c, x)) continue;
                if (m->next_use && vc__distance_of(x) != k) continue; /* needed sooner, at its other use */
                if (!first) first = x, first_d = k;
                if (kept || !x->release_recorded || c->ops->event_query(c->bctx, x->release_ev) == 1) {
                    done = x, done_d = k;
                    break;
                }
            }
            if (done) first = done, first_d = done_d;
            if (first && first_d > best_d) best = first, best_d = first_d;
            if (best) break; /* a streamed victim is enough: keep the plan's resident set */
        }
    }
    if (best || prefetch) return best;
    /* 3. anything else evictable (e.g. the current model's own layers, held elsewhere); in the
     *    streaming region only when nothing outside it can go (as in 2) */
    for (int region = 0; region < 2; region++)
        for (layer_t *x = c->vram_lru.head; x; x = x->vnext)
            if (x->in_stream == region && vc__evictable(c, x) && (!prefetch || vc__distance_of(x) > max_distance))
                return x;
    return NULL;
}

layer_t *vc__sched_ram_victim_walk(vc_cache *c, const layer_t *exclude, int (*droppable)(vc_cache *, layer_t *)) {
    const model_t *asking = exclude ? vc__plan_model(exclude) : NULL;
    layer_t *best = NULL;
    size_t best_d = 0;
    for (layer_t *x = c->ram_lru.head; x; x = x->rnext) {
        if (x == exclude || !droppable(c, x)) continue;
        const model_t *xm = vc__plan_model(x);
        if (!order_known(xm) || !x->in_order || (asking && !vc__model_active(c, xm, asking))) return x;
        /* A copy is needed at the layer's next upload (a streamed layer used this pass has left the
         * ring, or will have, by then): the one needed last goes. */
        size_t d = vc__ram_victim_rank(x, vc__distance_of(x), xm->order_n);
        if (!best || d > best_d) best = x, best_d = d;
    }
    return best;
}

int vc__sched_streamable(vc_cache *c, const layer_t *asking, size_t max_distance, layer_t *x) {
    if (!vc__evictable(c, x)) return 0;
    const model_t *xm = vc__plan_model(x);
    if (!vc__model_active(c, xm, vc__plan_model(asking)) || !order_known(xm) || !x->in_order) return 1;
    size_t limit = max_distance == VC_ANY_DISTANCE ? 0 : max_distance;
    if (x->prefetched && max_distance != VC_ANY_DISTANCE) return 0; /* one prefetch never undoes another */
    /* A streamed layer the region cannot take (a cycle's once-used embedding, region_for_once_used)
     * borrows room from kept layers needed later than itself; they come back to their homes. */
    int outsider = !asking->keep && c->stream_budget && c->stream_model == vc__plan_model(asking) &&
                   arena_round(asking->bytes) > c->stream_budget;
    return (!x->keep || outsider) && vc__distance_of(x) > limit;
}

/* Uploads x ahead of use, `distance` steps before it is needed, and counts it in flight (in layers
 * for prefetch_depth, in bytes for sequential mode's bound) until it is acquired or leaves. Returns
 * 0 when room could not be made without evicting anything needed sooner: the scan stops there. */
static int prefetch_layer(vc_cache *c, layer_t *x, size_t distance) {
    if (vc__prefetch_upload(c, x, distance) != VC_OK) return 0;
    if (c->pf_len < VC__PF_QUEUE) c->pf_queue[(c->pf_head + c->pf_len++) % VC__PF_QUEUE] = x->id;
    x->prefetched = 1;
    vc__ram_ix_touch(c, x, 0);
    c->prefetch_inflight++;
    c->prefetch_inflight_bytes += x->bytes;
    c->stats.prefetches++;
    return 1;
}

/* Prefetch copies still running: prefetch_depth bounds these, not the layers uploaded ahead and
 * not yet acquired. The depth keeps the copy engine's queue short (a copy queued is a placement
 * committed to); how far ahead layers wait, landed, is the room's business: the plan's region and
 * homes, and a prefetch never evicting anything needed sooner. Counting landed layers too stopped
 * the scan at prefetch_depth layers ahead wherever they were small: a VAE's few-MB layers, landed
 * long before, held every place through the VAE decode with the copy engine idle, and the text
 * encoders after it waited for their copies (FLUX.1-schnell images; docs/performance.md). Copies
 * land in the order they were queued, so the queue's head is the oldest: it goes once landed,
 * acquired or evicted; one settled behind a running one still counts until then (slightly early). */
static size_t copies_in_flight(vc_cache *c) {
    while (c->pf_len) {
        layer_t *x = slot_table_get(&c->layers, c->pf_queue[c->pf_head]);
        if (x && x->prefetched && x->vblock && !vc__upload_done(c, x)) break;
        c->pf_head = (c->pf_head + 1) % VC__PF_QUEUE;
        c->pf_len--;
    }
    return c->pf_len;
}

/* The most prefetch copies a scan may leave running (prefetch_depth, at most the queue's size);
 * the landed ones leave the queue first, so c->pf_len is then what still copies. */
static size_t scan_depth(vc_cache *c) {
    (void)copies_in_flight(c);
    return c->prefetch_depth < VC__PF_QUEUE ? c->prefetch_depth : VC__PF_QUEUE;
}

/* ---- readahead while the order is learned -------------------------------------------------------
 *
 * Until a model's order is known (its first pass, or a pass after its order was dropped) nothing
 * says what comes next, and every acquire waited for its own copy: the first pass of a model that
 * does not fit ran copy, then compute, layer after layer. Engines mostly register a model's layers
 * in the order they run (module by module; a checkpoint's tensors in name order), so once acquires
 * have followed the registration order for RA_STREAK layers in a row, the next registered layers
 * are uploaded ahead (as prefetches: at most prefetch_depth in flight, sequential mode's bound in
 * bytes), as an operating system reads a file ahead once its reads turn sequential. Layers only a
 * loader can provide go to the stager when it runs (stage_ahead), else the readahead stops there:
 * a loader called here would hold up the very acquire that asked.
 *
 * A guess that does not come true costs only its copies: an acquire out of registration order (or
 * of another model, or the order becoming known) stops the readahead until the order is followed
 * again, and what it read ahead past the latest acquire no longer counts as in flight (it stays
 * resident as any unheld layer, except in sequential mode: readahead_stop). Else layers read ahead and
 * never acquired (a registered module the pass does not use) would hold sequential mode's bound in
 * bytes, and no model could prefetch there (before session 25 they held prefetch_depth's count in
 * every mode; the depth now counts copies still running, as for the scan: copies_in_flight). */
#define RA_STREAK 2

/* The bytes of the two largest of n layers (at least 1): sequential mode's bound on what is ahead. */
static size_t two_largest(layer_t *const *v, size_t n) {
    size_t a = 0, b = 0;
    for (size_t i = 0; i < n; i++) {
        size_t x = v[i]->bytes;
        if (x > a) {
            b = a;
            a = x;
        } else if (x > b) b = x;
    }
    return a + b ? a + b : 1;
}

/* Sequential mode's bound on what is ahead, as sequential_room but over the registered layers. */
static size_t readahead_room(model_t *m) {
    if (!m->ra_room) m->ra_room = two_largest(m->layers, m->nlayers);
    return m->ra_room;
}

/* x, if uploaded ahead, no longer counts as in flight; with `leave`, in sequential mode (minimum
 * VRAM) it leaves the device once its copy lands, else it stays resident as any unheld layer. */
static void let_go(vc_cache *c, layer_t *x, int leave) {
    if (vc__prefetch_settle(c, x) && leave && c->mode == VC_OFFLOAD_MODE_SEQUENTIAL && x->vblock && !x->holds &&
        vc__wait_upload(c, x) == VC_OK)
        vc__evict_vram(c, x, VC_EVICT_SEQUENTIAL, 0);
}

/* Stops m's readahead: what it uploaded past the latest acquire no longer counts as in flight.
 * `leave` (an acquire stopped it): in sequential mode, which keeps only held and prefetched layers
 * on the device, those layers leave as soon as their copies have landed (copies the acquire that
 * stopped the readahead would queue behind anyway). Not while layers are being unregistered. */
static void readahead_stop(vc_cache *c, model_t *m, int leave) {
    for (size_t k = m->ra_last; k < m->ra_next && k < m->nlayers; k++) let_go(c, m->layers[k], leave);
    m->ra_next = m->ra_last;
    m->ra_streak = 0;
}

/* m's pass ended and another model's begins: what m's prefetch scan uploaded round its order, for
 * its next pass, no longer counts as in flight. The budget serves the model in use: a text
 * encoder's first layer read ahead at the end of its pass (for the next image) held prefetch_depth's
 * count, or in sequential mode the bytes bound, for the whole denoise loop (FLUX.1-schnell on 3.5
 * GB: T5's 263 MB embedding, more than the transformer's bound, so the transformer's second image
 * ran with no prefetch at all, 1.57x its time). In sequential mode those layers leave once their
 * copies land (minimum VRAM); otherwise they stay resident as any unheld layer. */
static void prefetch_stop(vc_cache *c, model_t *m) {
    for (size_t i = 0; c->prefetch_inflight && i < m->nlayers; i++) let_go(c, m->layers[i], 1);
}

static void read_ahead(vc_cache *c, model_t *m, layer_t *l) {
    size_t p = l->model_pos;
    if (m->ra_last && p == m->ra_last) { /* (ra_last is the latest acquire's model_pos + 1) */
        if (m->ra_streak < UINT_MAX) m->ra_streak++;
    } else {
        if (m->ra_last) readahead_stop(c, m, 1); /* (l itself was settled as it was acquired) */
        m->ra_next = p + 1;
    }
    m->ra_last = p + 1;
    if (m->ra_streak < RA_STREAK) return;
    size_t room = c->mode == VC_OFFLOAD_MODE_SEQUENTIAL ? readahead_room(m) : SIZE_MAX;
    size_t k = m->ra_next > p ? m->ra_next : p + 1;
    size_t depth = scan_depth(c);
    for (; k < m->nlayers && k - p <= PREFETCH_WINDOW && c->pf_len < depth; k++) {
        layer_t *x = m->layers[k];
        if (x->vblock || x->loading) continue;
        if (x->bytes > room || c->prefetch_inflight_bytes > room - x->bytes) break;
        if (vc__needs_load(x)) {
            for (size_t j = k; c->stager_on && j < m->nlayers && j - k < 2 * sizeof c->stage_q / sizeof c->stage_q[0]; j++)
                if (!m->layers[j]->loading && vc__needs_load(m->layers[j])) vc__stager_enqueue(c, m->layers[j]);
            break;
        }
        if (!prefetch_layer(c, x, k - p)) break;
    }
    m->ra_next = k;
}

/* ---- order tracking ---------------------------------------------------------------------------- */

static void drop_order(vc_cache *c, model_t *m) {
    if (m->joined) vc__unjoin(c, "a member's order changed");
    vc__tuner_model_gone(c, m); /* its passes no longer time the cycle: measure again */
    vc__grec_stop(c); /* a recorded period may name its layers */
    if (c->stream_model == m) vc__release_stream_region(c, VC_EVICT_PLAN);
    for (size_t i = 0; i < m->order_n; i++) {
        m->order[i]->in_order = 0;
        m->order[i]->keep = 0;
        m->order[i]->uses = 0;
    }
    free(m->order);
    free(m->next_use);
    free(m->uorder);
    m->order = m->uorder = NULL;
    m->next_use = NULL;
    m->uorder_n = 0;
    m->order_n = 0;
    m->order_valid = 0;
    vc__set_layout_pending(c, m, 0);
    m->order_declared = 0;
    m->plan_capacity = 0;
    m->seq_room = 0;
    m->pos = 0;
    vc__ram_ix_stale(c); /* (after the marks: releasing the region may have rebuilt an index) */
}

void vc__mark_uses(layer_t *const *order, size_t n, int repeats) {
    for (size_t i = n; i-- > 0;) order[i]->order_pos = i; /* the first use wins */
    for (size_t i = 0; repeats && i < n; i++) order[i]->uses = order[i]->order_pos == i ? 1 : order[i]->uses + 1;
}

int vc__link_uses(layer_t *const *order, size_t n, size_t **next_use, layer_t ***uorder, size_t *un) {
    *next_use = NULL;
    *uorder = NULL;
    *un = 0;
    /* Each distinct layer's first and latest use so far, in a table keyed by the layer. */
    typedef struct use_slot {
        const layer_t *l;
        size_t first, last;
    } use_slot;
    size_t cap = 16;
    while (cap < 2 * n) cap *= 2;
    use_slot *t = calloc(cap, sizeof(*t));
    size_t *next = malloc((n ? n : 1) * sizeof(*next));
    layer_t **u = malloc((n ? n : 1) * sizeof(*u));
    if (!t || !next || !u) {
        free(t), free(next), free(u);
        return VC_ERR_NO_MEMORY;
    }
    size_t distinct = 0;
    for (size_t i = 0; i < n; i++) {
        size_t h = (size_t)(((uintptr_t)order[i] >> 4) * 0x9E3779B97F4A7C15ull) & (cap - 1);
        while (t[h].l && t[h].l != order[i]) h = (h + 1) & (cap - 1);
        if (!t[h].l) {
            t[h] = (use_slot){order[i], i, i};
            u[distinct++] = order[i];
        } else {
            next[t[h].last] = i;
            t[h].last = i;
        }
        next[i] = SIZE_MAX; /* a last use: closed round the pass below */
    }
    if (distinct == n) { /* each layer once: the usual order */
        free(t), free(next), free(u);
        return VC_OK;
    }
    for (size_t h = 0; h < cap; h++)
        if (t[h].l) next[t[h].last] = t[h].first;
    free(t);
    layer_t **shrunk = realloc(u, distinct * sizeof(*u));
    *next_use = next;
    *uorder = shrunk ? shrunk : u;
    *un = distinct;
    return VC_OK;
}

/* Takes `order` (owned from here) as m's order and plans it; `learned_alone` as vc__make_plan. A
 * layer may occur more than once (vc__link_uses). VC_ERR_NO_MEMORY (order freed; m's order as it
 * was) when the repeats cannot be linked. */
static int install_order(vc_cache *c, model_t *m, layer_t **order, size_t n, int declared, int learned_alone) {
    size_t *next_use, un;
    layer_t **uorder;
    if (vc__link_uses(order, n, &next_use, &uorder, &un) != VC_OK) {
        free(order);
        return VC_ERR_NO_MEMORY;
    }
    drop_order(c, m);
    readahead_stop(c, m, 1); /* the order says what comes next from here */
    m->ra_last = m->ra_next = 0;
    m->order = order;
    m->order_n = n;
    m->next_use = next_use;
    m->uorder = uorder;
    m->uorder_n = un;
    m->order_valid = 1;
    m->order_declared = declared;
    m->pass_mismatches = 0;
    for (size_t i = 0; i < n; i++) order[i]->in_order = 1;
    vc__mark_uses(order, n, next_use != NULL);
    vc__ram_ix_stale(c);
    m->pos = n - 1; /* the next expected layer is order[0] */
    m->pf_next = 0;
    if (c->policy == VC_POLICY_PLANNED) vc__make_plan(c, m, learned_alone);
    return VC_OK;
}

static void start_recording(model_t *m, layer_t *l) {
    m->recording = 1;
    m->rec_n = 0;
    m->rec_repeats = 0;
    m->rec_start = l->last_use;
    m->rec_gen++;
    if (!m->rec_cap) {
        m->rec = malloc(16 * sizeof(*m->rec));
        m->rec_cap = m->rec ? 16 : 0;
    }
    if (m->rec_cap) {
        m->rec[m->rec_n++] = l;
        l->rec_mark = m->rec_gen;
    }
}

/* A pass being recorded has taken every registered layer of its model: when another model's layer
 * comes next, the pass has ended (unless the model then runs some of them again: a rare pattern,
 * whose history entry then only delays a join). */
static int recorded_whole(const model_t *m) {
    return m->recording && !m->rec_strict && m->rec_n - m->rec_repeats == m->nlayers;
}

/* Learning: record the pass until its first layer comes round again. A layer may run more than
 * once in the pass (a shared module, a block run in a loop): its uses are all recorded, and linked
 * when the order is installed (vc__link_uses). If more uses repeat than the model has layers before
 * the first comes back, the first may have run only once (an embedding acquired once before a loop
 * of blocks): recording starts again at the repeated layer, and from there a repeat ends the pass
 * (rec_strict), which learns the loop. Should the pass then turn out longer than that loop (a
 * loop inside the pass, run many times), the order is dropped, and the model waits twice as long
 * for its first layer the next time (loop_tries), up to 32 times as long: the recording then holds
 * at most 33 uses per layer of the model (a loop run more often than that is learned as the loop). */
static void record(vc_cache *c, model_t *m, layer_t *l) {
    if (!m->recording) {
        /* A first pass that begins as another model's whole pass ends (or as the first of all) is a
         * pass of the history too: a few-step image's cycle then joins once its second image has
         * run, not its third (vc__try_join_repeating needs two periods of history). */
        if (c->last_model != m && (!c->last_model || c->last_ended_pass || c->last_recorded_whole))
            vc__note_pass_start(c, m);
        start_recording(m, l);
        return;
    }
    /* One whole pass; a layer acquired again at once (an engine that acquires each layer twice) is
     * a repeat, unless the model has just that layer. */
    if (m->rec_n && l == m->rec[0] && (m->rec_n > 1 || m->nlayers == 1 || m->rec_strict)) {
        layer_t **order = malloc(m->rec_n * sizeof(*order));
        if (order) {
            memcpy(order, m->rec, m->rec_n * sizeof(*order));
            /* every acquire since the recording began was one of this pass's */
            int alone = c->use_clock - m->rec_start == (uint64_t)m->rec_n;
            if (install_order(c, m, order, m->rec_n, 0, alone) == VC_OK) {
                m->pos = 0;
                m->order_strict = m->rec_strict;
                m->rec_strict = 0;
                c->stats.orders_learned++;
                if (m->uorder)
                    vc__log(c, VC_LOG_INFO, "learned the execution order of model '%s': %zu layers per pass, "
                            "%zu of them uses of a layer that ran before in the pass", m->name, m->order_n,
                            m->order_n - m->uorder_n);
                else
                    vc__log(c, VC_LOG_INFO, "learned the execution order of model '%s': %zu layers per pass",
                            m->name, m->order_n);
                vc__note_step_prev(c, m); /* this acquire begins its second pass: a step for step groups */
                vc__note_pass_start(c, m);
            }
        }
        m->recording = 0;
        return;
    }
    if (l->rec_mark == m->rec_gen) { /* a layer used again in the pass */
        unsigned shift = m->loop_tries < 5 ? m->loop_tries : 5;
        if (m->rec_strict || ++m->rec_repeats > (m->nlayers << shift)) {
            m->rec_strict = 1; /* the first layer ran once: learn the loop from here, as one pass */
            start_recording(m, l);
            return;
        }
        /* (recorded below, as any other use) */
    }
    if (m->rec_n == m->rec_cap) {
        size_t cap = m->rec_cap * 2;
        layer_t **r = realloc(m->rec, cap * sizeof(*r));
        if (!r) {
            m->recording = 0;
            return;
        }
        m->rec = r;
        m->rec_cap = cap;
    }
    m->rec[m->rec_n++] = l;
    l->rec_mark = m->rec_gen;
}

/* At a pass start, after the re-plan check. A plan that fits its room but fills it evicted its own
 * layers for room in the pass that ended: the free room is in pieces too small for layers coming
 * back after another model ran, and each eviction leaves the next hole too small again, pass after
 * pass (SDXL's UNet at 96% of an 8 GB card's 5 GB, its refiner in between: 24 to 120 MB every pass
 * of every image). Such a plan gets homes where its layers lie and gaps for the rest, as streaming
 * plans have, kept across images while it fits. Where the room is too tight for the packing (SDXL
 * alone at 99.6% of its room) the homes leave some layers without one and the chain goes on: after
 * three such passes in a row they are dropped for good. Measured: docs/performance.md. */
static void note_fit_chain(vc_cache *c, model_t *m) {
    if (m->plan_capacity && m->plan_fits && !m->plan_shared && c->policy == VC_POLICY_PLANNED &&
        c->mode == VC_OFFLOAD_MODE_BALANCED) {
        if (m->self_evicts && !m->fit_homes) {
            m->fit_homes = 1;
            m->fit_chain = 0;
            vc__assign_homes(c, m, 1);
        } else if (m->fit_homes == 1) {
            m->fit_chain = m->self_evicts ? m->fit_chain + 1 : 0; /* (the next pass still moves some in) */
            if (m->fit_chain >= 3) {
                m->fit_homes = -1;
                for (size_t i = 0; i < m->nlayers; i++) m->layers[i]->home_gen = 0;
            }
        }
    }
    m->self_evicts = 0;
}

/* As a group's pass begins: its passes one after another with no other model's between (a
 * ControlNet and its UNet through the denoise loop) are a run, as vc__note_step_prev keeps a
 * model's, so that a model that ran before the run began (the text encoder, once per image) is not
 * in use beside it (vc__model_active). Else the group's plan went shared for two passes after the
 * encoder, and alone again after them: two layouts, each loading the kept set again, every image
 * of a pipeline too long to join as one cycle (SD 1.5 + ControlNet at 50 steps on 5 GB: 3.8 GB
 * more per image). */
static void note_group_run(vc_cache *c, model_t *g) {
    int run = g->run_len > 0; /* (the first pass after the group formed begins its first run) */
    for (uint32_t i = 0; run && i < c->models.count; i++) {
        const model_t *o = c->models.slots[i].ptr;
        if (o && o->joined != g && o->last_tick > g->pass_tick) run = 0; /* o ran since the last pass began */
    }
    g->pass_tick = c->use_clock;
    if (run) {
        if (g->run_len < UINT_MAX) g->run_len++;
    } else {
        g->prev_run_len = g->run_len;
        g->run_len = 1;
        g->run_start = c->use_clock;
    }
}

static void follow(vc_cache *c, model_t *m, layer_t *l) {
    size_t expected = (m->pos + 1) % m->order_n;
    /* (a layer a group uses twice has order_pos at its first use: the second is found in the order) */
    if (l->in_order && (l->order_pos == expected || (m->next_use && m->order[expected] == l))) {
        m->pos = expected;
        if (m->whole_passes && l == l->model->order[0] && (!m->pass_start || m->pass_start[expected]))
            vc__note_pass_start(c, l->model); /* a member's pass */
        if (expected == 0) { /* a new pass */
            vc__tuner_on_pass(c, m); /* may change stream_slots: the re-plan below follows it */
            if (!m->members) {
                vc__roll_hold_peak(m);
                int interleaved = m->saw_others;
                m->saw_others = 0;
                vc__note_step_prev(c, m);
                vc__note_pass_start(c, m);
                if (vc__try_join(c, m) || vc__try_join_repeating(c, m)) return;
                if (interleaved && vc__may_group(c) && !c->grec) vc__grec_start(c, l);
            } else {
                for (size_t k = 0; k < m->nmembers; k++) vc__roll_hold_peak(m->members[k]);
                if (m->next_use) c->cycle_parted = 0; /* the cycle ran whole */
                note_group_run(c, m);
            }
            vc__try_layout(c, m, 1);
            /* Another model came into use beside this one's plan, or left it: lay it out again. */
            int replan = m->plan_capacity && m->plan_shared != vc__others_in_use(c, m);
            if (replan && m->alone_grace && !m->plan_shared) replan = 0; /* (plan.c, vc__make_plan) */
            m->alone_grace = 0;
            /* The engine now holds more layers at once than the plan's region allows for, or far fewer
             * (after a whole-model acquire); small swings down keep the plan (no re-plan each pass). */
            unsigned w = vc__hold_window(m);
            replan |= m->plan_capacity && (w > m->plan_hold || 2 * w < m->plan_hold);
            replan |= m->plan_capacity && m->plan_slots != c->stream_slots; /* vc_cache_set_stream_slots */
            /* Another model's plan took the streaming region (a text encoder too large for the device,
             * planned beside this one as it ran): without its region this plan's streamed layers go
             * through the kept arena and push kept layers out, pass after pass, so plan again. (A
             * plan alone only: a shared one, made beside another model in use, has no ring to lose.) */
            replan |= m->plan_capacity && !m->plan_shared && !m->plan_fits && m->pending_stream &&
                      c->stream_model != m && !m->layout_pending;
            m->pass_mismatches = 0;
            /* The budget moved since the plan was made (reservation ended, another process): re-plan. */
            size_t limit = c->stats.vram_limit;
            size_t diff = limit > m->plan_capacity ? limit - m->plan_capacity : m->plan_capacity - limit;
            if (c->policy == VC_POLICY_PLANNED && (diff > m->plan_capacity / 16 || replan)) vc__make_plan(c, m, 0);
            note_fit_chain(c, m);
        }
        return;
    }
    c->stats.order_mismatches++;
    m->pass_mismatches++;
    if (m->members && (!l->in_order || l->model != m->order[expected]->model || m->pass_mismatches > 2 + m->order_n / 8)) {
        /* Another model than the one due (or a layer outside the orders): they no longer run in turn. */
        if (m->next_use) c->cycle_parted = 1;
        vc__unjoin(c, l->in_order && l->model != m->order[expected]->model ? "another model ran than the one due"
                                                                          : "the pass changed");
        if (order_known(l->model)) follow(c, l->model, l);
        else record(c, l->model, l);
        return;
    }
    if (!m->order_declared && (!l->in_order || m->pass_mismatches > 2 + m->order_n / 8)) {
        vc__log(c, VC_LOG_INFO, "model '%s' left its learned order at layer '%s'; learning again", m->name,
                l->name);
        if (m->order_strict && m->loop_tries < 5) m->loop_tries++; /* a loop guessed wrong (record) */
        c->stats.order_resets++;
        drop_order(c, m);
        start_recording(m, l);
        return;
    }
    if (l->in_order) m->pos = (m->pos + vc__distance_of(l)) % m->order_n; /* resynchronise: a branch or a skip */
}

/* Hands the loader-only layers from distance k on to the stager, nearest first, as many as its
 * queue takes (bounded scan: this runs inside an acquire). */
static void stage_ahead(vc_cache *c, model_t *m, size_t k, size_t window) {
    size_t limit = k + 2 * sizeof c->stage_q / sizeof c->stage_q[0];
    for (; k <= window && k < limit; k++) {
        layer_t *x = m->order[(m->pos + k) % m->order_n];
        if (!x->loading && vc__needs_load(x)) vc__stager_enqueue(c, x);
    }
}

/* Sequential mode promises minimum VRAM: what is held, and what is uploaded ahead of use. It used to
 * allow two layers ahead, which a model registered module by module (InvokeAI's granularity: each
 * norm, a few KB, its own layer) spends on a norm and a projection, and its copies then stop hiding
 * behind compute (FLUX.1-dev on 4 GB 16% slower than with norms folded into the next layer). The
 * bound is now in bytes: as much as the order's two largest layers, the most the old rule could
 * have in flight, so the peak promise is unchanged and small layers no longer shorten the look-ahead.
 * Measured: docs/performance.md. */
static size_t sequential_room(model_t *m) {
    if (!m->seq_room) m->seq_room = two_largest(m->order, m->order_n);
    return m->seq_room;
}

void vc__sched_on_acquire(vc_cache *c, layer_t *l) {
    model_t *own = l->model;
    own->last_tick = c->use_clock;
    if (vc__prefetch_settle(c, l)) c->stats.prefetch_hits++;
    /* Another model's layer in the midst of the previous model's pass: they interleave. */
    model_t *prev = c->last_model;
    if (prev && prev != own && !prev->joined && order_known(prev) && prev->pos != prev->order_n - 1)
        prev->saw_others = 1;
    if (prev && prev != own && prev->ra_next > prev->ra_last) readahead_stop(c, prev, 1);
    model_t *prev_plan = prev && prev->joined ? prev->joined : prev;
    if (prev_plan && prev_plan != vc__plan_model(l) && c->last_ended_pass && order_known(prev_plan))
        prefetch_stop(c, prev_plan);
    if (c->grec && vc__grec_step(c, l))
        ; /* l began the group formed from the recorded period */
    else if (own->joined)
        follow(c, own->joined, l);
    else if (order_known(own))
        follow(c, own, l);
    else
        record(c, own, l);
    model_t *m = vc__plan_model(l); /* after follow: it may have joined or parted a group */
    m->last_tick = c->use_clock;
    c->last_model = own;
    model_t *g = own->joined;
    c->last_ended_pass = order_known(own) && l->in_order &&
                         (g ? g->whole_passes && l == own->order[own->order_n - 1] &&
                                  (!g->pass_start || g->pass_start[(g->pos + 1) % g->order_n])
                            : own->pos == own->order_n - 1);
    c->last_recorded_whole = !order_known(own) && recorded_whole(own);
    if (c->policy != VC_POLICY_PLANNED || !c->prefetch_depth || c->mode == VC_OFFLOAD_MODE_NONE ||
        c->mode == VC_OFFLOAD_MODE_MODEL)
        return;
    if (!order_known(m)) {
        read_ahead(c, own, l); /* (a model without an order is in no group: m is own) */
        return;
    }
    if (m->layout_pending) { /* nothing ahead is known to be resident: scan afresh afterwards */
        m->pf_next = (m->pos + 1) % m->order_n;
        return;
    }
    /* Upload what comes next, in order, while room can be made without hurting sooner needs. The
     * scan resumes where it stopped last time (layers it passed are resident or arriving; an
     * eviction pulls it back), so a hit costs O(1) however long the pass. */
    size_t room = c->mode == VC_OFFLOAD_MODE_SEQUENTIAL ? sequential_room(m) : SIZE_MAX;
    size_t window = m->order_n - 1 < PREFETCH_WINDOW ? m->order_n - 1 : PREFETCH_WINDOW;
    size_t k = (m->pf_next + m->order_n - m->pos) % m->order_n;
    if (k == 0 || k > window) k = 1;
    size_t depth = scan_depth(c);
    for (; k <= window && c->pf_len < depth; k++) {
        layer_t *x = m->order[(m->pos + k) % m->order_n];
        if (x->vblock || x->loading) continue;
        /* (another model's prefetches may already hold more than this model's room) */
        if (x->bytes > room || c->prefetch_inflight_bytes > room - x->bytes) break;
        if (vc__needs_load(x)) { /* a loader call here (ours or a sharing owner's) would stall this acquire */
            if (c->stager_on) stage_ahead(c, m, k, window);
            break;
        }
        if (!prefetch_layer(c, x, k)) break;
    }
    /* Past the window the next scan starts at its last layer (pos + window + 1 could wrap round
     * to pos itself and read as "everything ahead is resident" for ever). */
    m->pf_next = (m->pos + (k > window ? window : k)) % m->order_n;
}

void vc__sched_on_evict(vc_cache *c, layer_t *l) {
    (void)c;
    model_t *m = vc__plan_model(l);
    if (!l->in_order || !order_known(m)) return;
    size_t d = vc__distance_of(l);
    size_t f = (m->pf_next + m->order_n - m->pos) % m->order_n;
    if (d < m->order_n && d < f) m->pf_next = (m->pos + d) % m->order_n;
}

void vc__sched_on_release(vc_cache *c, layer_t *l) {
    if (c->layout_pending_count) /* any model's: another model's release may be the moment */
        for (uint32_t i = 0; i <= c->models.count; i++) {
            model_t *pm = vc__plan_model_at(c, i);
            if (pm && pm->layout_pending) vc__try_layout(c, pm, 0);
        }
    if (c->mode == VC_OFFLOAD_MODE_SEQUENTIAL && l->holds == 0 && l->vblock)
        vc__evict_vram(c, l, VC_EVICT_SEQUENTIAL, 0);
}

void vc__sched_forget(vc_cache *c, layer_t *l) {
    vc__grec_stop(c); /* the recorded period may hold l */
    model_t *m = l->model;
    readahead_stop(c, m, 0); /* (the layers after l in registration order move) */
    m->ra_last = m->ra_next = 0;
    vc__prefetch_settle(c, l);
    if (l->in_order) drop_order(c, m); /* the pass changed shape: learn it again */
    if (m->recording) m->recording = 0;
}

void vc__sched_model_free(vc_cache *c, model_t *m) {
    vc__grec_stop(c);
    vc__tuner_model_gone(c, m);
    if (m->joined) vc__unjoin(c, "a member was unregistered");
    if (c->last_model == m) c->last_model = NULL;
    for (unsigned i = 0; i < c->phist_n; i++)
        if (c->phist[i] == m) c->phist_n = 0; /* the history no longer holds */
    for (uint32_t i = 0; i < c->models.count; i++) {
        model_t *o = c->models.slots[i].ptr;
        if (o && o->step_prev == m) o->step_prev = NULL, o->step_prev_seen = 0;
    }
    free(m->order);
    free(m->next_use);
    free(m->uorder);
    free(m->rec);
    vc__ram_ix_free(m);
    m->order = m->rec = m->uorder = NULL;
    m->next_use = NULL;
}

/* ---- public: declared orders ------------------------------------------------------------------ */

int vc_cache_set_stream_slots(vc_cache *c, unsigned slots) {
    if (!c) return vc__fail(NULL, VC_ERR_INVALID_ARG, "vc_cache_set_stream_slots: cache is NULL");
    if (slots > VC__MAX_STREAM_SLOTS && slots != VC_STREAM_SLOTS_TUNE)
        return vc__fail_unlocked(c, VC_ERR_INVALID_ARG, "vc_cache_set_stream_slots: %u slots; 0 (the planner "
                                 "chooses), 1 to %d, or VC_STREAM_SLOTS_TUNE (%u)", slots, VC__MAX_STREAM_SLOTS,
                                 VC_STREAM_SLOTS_TUNE);
    pthread_mutex_lock(&c->lock);
    if (slots == c->slots_setting) { /* (an engine setting it at every generation: the tuner goes on) */
        pthread_mutex_unlock(&c->lock);
        return VC_OK;
    }
    if (slots == VC_STREAM_SLOTS_TUNE)
        vc__log(c, VC_LOG_INFO, "streaming region: its room is measured, from the next pass");
    else if (slots)
        vc__log(c, VC_LOG_INFO, "streaming region: room for %u layer%s, from each model's next pass", slots,
                slots > 1 ? "s" : "");
    else
        vc__log(c, VC_LOG_INFO, "streaming region: the planner chooses its room again, from each model's next pass");
    c->slots_setting = slots;
    c->stream_slots = slots == VC_STREAM_SLOTS_TUNE ? 0 : slots; /* each model's next pass re-plans */
    vc__tuner_reset(c); /* (to TUNE: measuring starts) */
    pthread_mutex_unlock(&c->lock);
    return VC_OK;
}

int vc_cache_get_stream_slots(vc_cache *c, unsigned *slots, int *tuning) {
    if (!c) return vc__fail(NULL, VC_ERR_INVALID_ARG, "vc_cache_get_stream_slots: cache is NULL");
    pthread_mutex_lock(&c->lock);
    unsigned in_use;
    int t = vc__tuner_state(c, &in_use);
    pthread_mutex_unlock(&c->lock);
    if (slots) *slots = in_use;
    if (tuning) *tuning = t;
    return VC_OK;
}

int vc_model_set_order(vc_cache *c, vc_model_id model, const vc_layer_id *ids, size_t n) {
    static const char fn[] = "vc_model_set_order";
    if (!c) return vc__fail(NULL, VC_ERR_INVALID_ARG, "%s: cache is NULL", fn);
    if (n && !ids) return vc__fail_unlocked(c, VC_ERR_INVALID_ARG, "%s: order is NULL with n = %zu", fn, n);
    pthread_mutex_lock(&c->lock);
    int st = VC_OK;
    layer_t **order = NULL;
    model_t *m = slot_table_get(&c->models, model);
    if (!m) {
        st = vc__fail(c, VC_ERR_NOT_FOUND, "%s: model id %#llx is not registered", fn, (unsigned long long)model);
        goto done;
    }
    if (n == 0) {
        drop_order(c, m);
        m->recording = 0;
        goto done;
    }
    order = malloc(n * sizeof(*order));
    if (!order) {
        st = vc__fail(c, VC_ERR_NO_MEMORY, "%s: out of host memory for %zu layers", fn, n);
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        layer_t *l = slot_table_get(&c->layers, ids[i]);
        if (!l || l->model != m) {
            st = vc__fail(c, l ? VC_ERR_INVALID_ARG : VC_ERR_NOT_FOUND, "%s: entry %zu (%#llx) is %s", fn, i,
                          (unsigned long long)ids[i], l ? "a layer of another model" : "not a registered layer");
            goto done;
        }
        order[i] = l;
    }
    if (m->order_valid && m->order_n == n && !memcmp(m->order, order, n * sizeof(*order))) {
        /* The order it runs by already (an engine declaring it at every generation): it becomes
         * declared, and the plan, the layout and any step group stay as they are (installing it
         * again would lay the device out afresh, reloading every kept layer). */
        m->recording = 0;
        m->order_declared = 1;
        goto done;
    }
    /* (a layer listed more than once runs more than once in the pass: install_order links its uses) */
    st = install_order(c, m, order, n, 1, 0);
    order = NULL;
    if (st != VC_OK) {
        st = vc__fail(c, st, "%s: out of host memory for the uses of %zu layers", fn, n);
        goto done;
    }
    m->recording = 0;
done:
    free(order);
    pthread_mutex_unlock(&c->lock);
    return st;
}

int vc_model_get_order(vc_cache *c, vc_model_id model, int *known, int *declared, size_t *length) {
    if (!c) return vc__fail(NULL, VC_ERR_INVALID_ARG, "vc_model_get_order: cache is NULL");
    pthread_mutex_lock(&c->lock);
    int st = VC_OK;
    model_t *m = slot_table_get(&c->models, model);
    if (!m) {
        st = vc__fail(c, VC_ERR_NOT_FOUND, "vc_model_get_order: model id %#llx is not registered",
                      (unsigned long long)model);
    } else {
        if (known) *known = order_known(m);
        if (declared) *declared = m->order_declared;
        if (length) *length = m->order_valid ? m->order_n : 0;
    }
    pthread_mutex_unlock(&c->lock);
    return st;
}
