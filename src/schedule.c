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
 */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "cache_internal.h"

#define PREFETCH_WINDOW 256 /* layers looked ahead per acquire at most */
#define GROUP_MAX 64         /* passes (and models) in a step group's cycle */
_Static_assert(sizeof(((vc_cache *)0)->phist) / sizeof(model_t *) == 4 * GROUP_MAX,
               "the pass history holds two periods of the longest cycle, twice (note_pass_start)");

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
static model_t *plan_model_at(vc_cache *c, uint32_t i) {
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

static int order_known(const model_t *m) { return m->order_valid && m->order_n > 0; }

/* Steps until l is needed again in its model's pass; the current layer counts as a full pass. A
 * layer used twice per pass (next_use) is needed at the nearer of its uses. */
static size_t distance_of(const layer_t *l) {
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
static int model_active(const vc_cache *c, const model_t *m, const model_t *asking) {
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

layer_t *vc__sched_victim(vc_cache *c, const layer_t *for_layer, size_t max_distance, vc_evict_reason *reason) {
    const model_t *asking = vc__plan_model(for_layer);
    int prefetch = max_distance != VC_ANY_DISTANCE;
    *reason = prefetch ? VC_EVICT_FOR_PREFETCH : VC_EVICT_FOR_LOAD;
    if (c->mode == VC_OFFLOAD_MODE_NONE) return NULL;
    if (c->mode == VC_OFFLOAD_MODE_MODEL) {
        *reason = VC_EVICT_MODEL_SWAP;
        for (layer_t *x = c->vram_lru.head; x; x = x->vnext)
            if (x->model != for_layer->model && vc__evictable(c, x)) return x;
        return NULL;
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
        if (!model_active(c, xm, asking)) return x;
        if (!order_known(xm) || !x->in_order) {
            if (!prefetch || xm != asking) return x;
        }
        if (order_known(xm) && x->in_order) break; /* the rest are active and ordered */
    }
    /* 2. Belady among active ordered models: the resident layer needed furthest ahead. A prefetch
     *    may only displace streamed layers needed later than itself; an acquire takes the furthest
     *    of any (a tie goes to the streamed layer, to keep the plan). */
    layer_t *best = NULL;
    size_t best_d = 0;
    for (uint32_t i = 0; i <= c->models.count; i++) {
        model_t *m = plan_model_at(c, i);
        if (!m || !order_known(m) || !m->vram_layers || !model_active(c, m, asking)) continue;
        for (int kept = 0; kept < (prefetch ? 1 : 2); kept++) {
            /* Among streamed layers, prefer one whose last use has finished on the device, so the
             * copy into its room need not wait for a kernel; else the furthest. */
            layer_t *first = NULL, *done = NULL;
            size_t first_d = 0, done_d = 0;
            for (size_t k = m->order_n - 1; k >= 1 && (!prefetch || k > max_distance); k--) {
                layer_t *x = m->order[(m->pos + k) % m->order_n];
                if (!x->vblock || x->keep != kept || !vc__evictable(c, x)) continue;
                if (m->next_use && distance_of(x) != k) continue; /* needed sooner, at its other use */
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
    /* 3. anything else evictable (e.g. the current model's own layers, held elsewhere) */
    for (layer_t *x = c->vram_lru.head; x; x = x->vnext)
        if (vc__evictable(c, x) && (!prefetch || distance_of(x) > max_distance)) return x;
    return NULL;
}

layer_t *vc__sched_ram_victim(vc_cache *c, const layer_t *exclude, int (*droppable)(vc_cache *, layer_t *)) {
    const model_t *asking = exclude ? vc__plan_model(exclude) : NULL;
    layer_t *best = NULL;
    size_t best_d = 0;
    for (layer_t *x = c->ram_lru.head; x; x = x->rnext) {
        if (x == exclude || !droppable(c, x)) continue;
        const model_t *xm = vc__plan_model(x);
        if (!order_known(xm) || !x->in_order || (asking && !model_active(c, xm, asking))) return x;
        /* A copy is needed at the layer's next upload: not within the pass for a kept layer in VRAM;
         * after its next use for one uploaded ahead and not used yet (it leaves after that use and
         * comes back); else at its next use (a streamed layer used this pass has left the ring, or
         * will have, by then). */
        size_t d = distance_of(x);
        if (x->vblock && x->keep)
            d = VC_ANY_DISTANCE;
        else if (x->vblock && x->prefetched)
            d += xm->order_n;
        if (!best || d > best_d) best = x, best_d = d;
    }
    return best;
}

int vc__sched_streamable(vc_cache *c, const layer_t *asking, size_t max_distance, layer_t *x) {
    if (!vc__evictable(c, x)) return 0;
    const model_t *xm = vc__plan_model(x);
    if (!model_active(c, xm, vc__plan_model(asking)) || !order_known(xm) || !x->in_order) return 1;
    size_t limit = max_distance == VC_ANY_DISTANCE ? 0 : max_distance;
    if (x->prefetched && max_distance != VC_ANY_DISTANCE) return 0; /* one prefetch never undoes another */
    /* A streamed layer the region cannot take (a cycle's once-used embedding, region_for_once_used)
     * borrows room from kept layers needed later than itself; they come back to their homes. */
    int outsider = !asking->keep && c->stream_budget && c->stream_model == vc__plan_model(asking) &&
                   arena_round(asking->bytes) > c->stream_budget;
    return (!x->keep || outsider) && distance_of(x) > limit;
}

/* ---- the plan ---------------------------------------------------------------------------------- */

/* Another model ran within the last two passes of m: the device is
 * shared (a ControlNet beside a UNet), and m's plan does not own the kept arena. */
static int others_in_use(vc_cache *c, const model_t *m) {
    for (uint32_t i = 0; i <= c->models.count; i++) {
        const model_t *o = plan_model_at(c, i);
        if (o && o != m && o->last_tick && model_active(c, o, m)) return 1;
    }
    return 0;
}

/* Lays the device out for a new plan: streamed layers move to a fresh streaming region, and the
 * model's other unheld layers leave so that kept layers are packed again as the next pass loads
 * them (an old layout would be fragmented by the layers that used to stream through it). Kept
 * layers get homes, and the region works as a ring, only while m has the device to itself: beside
 * another model in use both assume an order of placement the other model's layers break, and two
 * interleaved models moved 1.2-1.6x the bytes with them (tests/test_schedule.c, interleaved). */
static void apply_plan_layout(vc_cache *c, model_t *m, size_t kept, size_t stream_budget) {
    /* (also what an earlier release left because it was pinned then) */
    if ((c->stream_model || c->sarena.total) && (c->stream_model != m || c->stream_budget != stream_budget))
        vc__release_stream_region(c, VC_EVICT_PLAN);
    if (!stream_budget) return;
    vc__clear_model_layout(c, m, VC_EVICT_PLAN);
    c->stream_model = m;
    c->stream_budget = stream_budget;
    /* One segment for the kept set and one for the region: packed, nothing lost to segment ends. */
    vc__reserve_layout(c, kept, stream_budget);
    if (!m->plan_shared)
        vc__assign_homes(c, m);
    else
        for (size_t i = 0; i < m->nlayers; i++) m->layers[i]->home_gen = 0;
}

static void set_layout_pending(vc_cache *c, model_t *m, int pending) {
    if (m->layout_pending == pending) return;
    m->layout_pending = pending;
    if (pending)
        c->layout_pending_count++;
    else
        c->layout_pending_count--;
}

/* Lays out m's pending plan: at once when forced, else only while nothing in the arenas is held
 * or arriving, so that every old segment can go and the kept set is packed in one piece, each
 * layer with its home (a held layer would stay where it is and split the room around it). */
static void try_layout(vc_cache *c, model_t *m, int force) {
    if (!m->layout_pending || (!force && vc__layout_pinned(c))) return;
    set_layout_pending(c, m, 0);
    apply_plan_layout(c, m, m->pending_kept, m->pending_stream);
}

/* The order in which layers become candidates to stream: by size, except that a layer its group
 * uses k times per pass (the UNet of guidance run as two passes, a few-step image's denoiser) moves
 * k times per pass when streamed, so every layer used once comes first, then those used twice, and
 * so on. (Sizes stay far below 2^56; uses at most GROUP_MAX.) */
#define USED_TWICE ((size_t)1 << 56)
static size_t stream_rank(const layer_t *x) {
    return arena_round(x->bytes) + (x->uses > 1 ? (size_t)(x->uses - 1) * USED_TWICE : 0);
}

static int cmp_size(const void *a, const void *b) {
    size_t x = *(const size_t *)a, y = *(const size_t *)b;
    return x < y ? -1 : x > y;
}

/* Three quarters of the pairs of consecutive streamed layers (in pass order, round the loop) fit in
 * this many bytes; 0 with fewer than two streamed layers. */
static size_t streamed_pair_quantile(const model_t *m) {
    size_t n = 0, first = SIZE_MAX, prev = SIZE_MAX;
    for (size_t i = 0; i < m->order_n; i++) n += !m->order[i]->keep;
    if (n < 2) return 0;
    size_t *pairs = malloc(n * sizeof(*pairs));
    if (!pairs) return 0;
    size_t k = 0;
    for (size_t i = 0; i < m->order_n; i++) {
        if (m->order[i]->keep) continue;
        size_t b = arena_round(m->order[i]->bytes);
        if (prev != SIZE_MAX) pairs[k++] = prev + b;
        if (first == SIZE_MAX) first = b;
        prev = b;
    }
    pairs[k++] = prev + first;
    qsort(pairs, k, sizeof(*pairs), cmp_size);
    size_t q = pairs[(k * 3) / 4 < k ? (k * 3) / 4 : k - 1];
    free(pairs);
    return q;
}

/* A pass begins: the most layers held at once in the pass that ended becomes the last pass's. */
static void roll_hold_peak(model_t *m) {
    m->held_peak = m->held_peak_cur;
    m->held_peak_cur = m->held_now;
}

/* Layers an engine holds at once (a block of layers acquired before its kernels run, released
 * together): over this pass and the last, of each member for a group; at most 16, at least 1. */
#define HOLD_MAX 16
static unsigned hold_window(const model_t *m) {
    unsigned w = 1;
    for (size_t k = 0; k < (m->members ? m->nmembers : 1); k++) {
        const model_t *x = m->members ? m->members[k] : m;
        if (x->held_peak > w) w = x->held_peak;
        if (x->held_peak_cur > w) w = x->held_peak_cur;
    }
    return w < HOLD_MAX ? w : HOLD_MAX;
}

/* Bytes that 9 in 10 of the runs of w consecutive layers in pass order (round the loop) stream:
 * their streamed layers, and at least the next streamed layer after the run. An engine that holds
 * a block of b layers at once keeps the block's streamed layers in the region while the next
 * block's arrive: the region must take runs of 2b (measured with blocks of 2, 4 and 8 layers on
 * the workloads: 3/4 of the runs left FLUX and SDXL 3-7% slower at blocks of 4, all runs cost
 * SD 1.5 2 more points of bytes at blocks of 2; docs/performance.md). */
static size_t streamed_block_quantile(const model_t *m, unsigned w) {
    size_t n = m->order_n;
    size_t *sums = malloc(n * sizeof(*sums)), *ahead = malloc(n * sizeof(*ahead));
    if (!sums || !ahead) {
        free(sums);
        free(ahead);
        return 0;
    }
    /* ahead[p]: how far from p (round the loop) the first streamed layer at or after it lies, so the
     * next streamed layer after each run is found in O(1); SIZE_MAX when none streams. */
    size_t next = SIZE_MAX;
    for (size_t r = 2 * n; r-- > 0;) {
        size_t p = r % n;
        if (!m->order[p]->keep) next = r;
        if (r < n) ahead[p] = next == SIZE_MAX ? SIZE_MAX : next - r;
    }
    for (size_t i = 0; i < n; i++) {
        size_t sum = 0, j = 0;
        for (; j < w && j < n; j++) {
            const layer_t *x = m->order[(i + j) % n];
            if (!x->keep) sum += arena_round(x->bytes);
        }
        /* the next streamed layer, arriving while the run is held (not the run's own again) */
        size_t d = j < n ? ahead[(i + j) % n] : SIZE_MAX;
        if (d != SIZE_MAX && j + d < n) sum += arena_round(m->order[(i + j + d) % n]->bytes);
        sums[i] = sum;
    }
    qsort(sums, n, sizeof(*sums), cmp_size);
    size_t q = n ? sums[(n * 9) / 10 < n ? (n * 9) / 10 : n - 1] : 0;
    free(sums);
    free(ahead);
    return q;
}

/* The two shapes a plan may take (see make_plan). */
typedef struct plan_shape {
    double margin;    /* stream layers up to the smallest size whose layers hold margin x the bytes to stream */
    double region_of; /* the region holds this many of the largest streamed layer */
    int shared;       /* another model is in use: the rules as they were before the ring (below) */
    /* A cycle's layers used once per cycle (an encoder's, a VAE's) larger than this do not size the
     * region: each such layer takes room from the kept set when it comes (its neighbours reload
     * once per cycle) instead of widening the region that every pass of the cycle pays for. */
    size_t once_cap;
    unsigned slots; /* the engine fixed the region at this many layers (stream_slots): no pair room */
} plan_shape;

/* The largest streamed layer the region must take, with x streamed too: x counts unless it is a
 * once-used layer above the shape's once_cap. */
static size_t region_largest(size_t largest, const layer_t *x, plan_shape shape) {
    size_t b = arena_round(x->bytes);
    return (x->uses > 1 || b <= shape.once_cap) && b > largest ? b : largest;
}

/* Marks which layers of m stay resident for a weight limit of cap and returns the streaming
 * region's size (0: no streaming region); *kept_out: the kept bytes. */
static size_t plan_keep_set(model_t *m, size_t cap, size_t total, size_t largest, plan_shape shape,
                            size_t *kept_out) {
    for (size_t i = 0; i < vc__plan_n(m); i++) vc__plan_at(m, i)->keep = 1;
    /* The streaming region: room for the copies in flight. Three of the largest streamed layers let a
     * copy run while one layer computes and the next waits; but the region is paid in bytes moved
     * every step, so it stays within 3% of what must stream anyway, and never below the shape's
     * share (two in the usual shape: one computing, one arriving). */
    size_t lower_bound = total - cap;
    size_t slack = 0; /* alignment in the packed kept segment: sizes are whole grains already */
    for (size_t i = 0; i < vc__plan_n(m); i++) slack += shape.shared ? ARENA_GRAIN : vc__plan_at(m, i)->align - ARENA_GRAIN;
#define REGION_FOR(big) max_sz((size_t)(shape.region_of * (double)(big)), min_sz(3 * (big), lower_bound / 33))
    size_t keep_budget = sat_sub(cap, REGION_FOR(largest) + slack);
    /* Spread: the bytes to stream are earned half by compute, so that each streamed layer's copy can
     * run while the layers before it compute, and half by bytes, so that the copy engine sees a
     * steady stream where compute is thin (measured best of the mixes tried: docs/performance.md).
     * With no costs known, bytes alone. */
    double total_cost = 0;
    for (size_t i = 0; i < vc__plan_n(m); i++) total_cost += vc__plan_at(m, i)->cost;
    int by_cost = total_cost > 0;
    if (!by_cost) total_cost = (double)total;
    double need = (double)(total - keep_budget);
    /* Stream only layers up to a size cap, the smallest cap whose layers hold the bytes that must
     * stream with the shape's margin (twice them in the usual shape, so the spread has layers to
     * choose from; at most 1.5 times when the whole model does not hold that): the region is sized
     * by the largest streamed layer, and it is paid in bytes every step. The cap sets the region and
     * the region adds to what must stream: take the smallest cap that holds what it implies.
     * Margins measured on the workload sweep: docs/performance.md. */
    /* The cap is on stream_rank: layers a group uses twice per pass stream only once every layer
     * used once may. */
    size_t size_cap = SIZE_MAX;
    size_t *sizes = malloc(2 * vc__plan_n(m) * sizeof(*sizes)); /* pairs: rank, bytes */
    if (sizes) {
        for (size_t i = 0; i < vc__plan_n(m); i++) {
            sizes[2 * i] = stream_rank(vc__plan_at(m, i));
            sizes[2 * i + 1] = arena_round(vc__plan_at(m, i)->bytes);
        }
        qsort(sizes, vc__plan_n(m), 2 * sizeof(*sizes), cmp_size);
        const double margins[] = {shape.margin, shape.margin < 1.5 ? shape.margin : 1.5};
        for (size_t k = 0; k < sizeof margins / sizeof margins[0] && size_cap == SIZE_MAX; k++) {
            double sum = 0;
            size_t biggest = 0; /* the largest layer under the cap: what the region must take */
            for (size_t i = 0; i < vc__plan_n(m); i++) {
                sum += (double)sizes[2 * i + 1];
                if (sizes[2 * i] >= USED_TWICE || sizes[2 * i + 1] <= shape.once_cap)
                    biggest = max_sz(biggest, sizes[2 * i + 1]);
                if (i + 1 < vc__plan_n(m) && sizes[2 * i + 2] == sizes[2 * i]) continue; /* a cap takes all of a size */
                double need_i = (double)(total - sat_sub(cap, REGION_FOR(shape.shared ? largest : biggest) + slack));
                if (sum >= need_i * margins[k]) {
                    size_cap = sizes[2 * i];
                    need = need_i;
                    break;
                }
            }
        }
        free(sizes);
    }
    /* When even layers used twice per pass must stream (the cap reaches them), every layer used once
     * streams first, and the spread shares out what remains among the others. */
    int once_first = m->next_use && size_cap >= USED_TWICE; /* (no cap at all: SIZE_MAX) */
    double spread_total = (double)total, spread_cost = total_cost;
    if (once_first) {
        spread_total = spread_cost = 0;
        for (size_t i = 0; i < vc__plan_n(m); i++) {
            const layer_t *x = vc__plan_at(m, i);
            if (x->uses <= 1) {
                need -= (double)arena_round(x->bytes);
                continue;
            }
            spread_total += (double)arena_round(x->bytes);
            spread_cost += by_cost ? x->cost : (double)arena_round(x->bytes);
        }
        if (need < 0) need = 0;
        if (spread_total <= 0) spread_total = 1;
        if (spread_cost <= 0) spread_cost = 1;
    }
    double credit = 0;
    size_t kept = 0, streamed_largest = 0;
    for (size_t i = 0; i < vc__plan_n(m); i++) {
        layer_t *x = vc__plan_at(m, i);
        double b = (double)arena_round(x->bytes);
        if (once_first && x->uses <= 1) {
            x->keep = 0;
            streamed_largest = region_largest(streamed_largest, x, shape);
            continue;
        }
        credit += by_cost ? (0.5 * x->cost / spread_cost + 0.5 * b / spread_total) * need : b * need / spread_cost;
        if (stream_rank(x) <= size_cap && credit >= b * 0.5) {
            x->keep = 0;
            credit -= b;
            streamed_largest = region_largest(streamed_largest, x, shape);
        } else {
            kept += arena_round(x->bytes);
        }
    }
    /* The copies in flight need only room for the largest *streamed* layers, and for most pairs of
     * streamed layers that follow each other (one computing while the next arrives): the shape's
     * share of the largest may be less than two of them only where most pairs are smaller. */
    unsigned w = hold_window(m);
    /* Room for most pairs of consecutive streamed layers, or for two blocks where the engine holds
     * blocks of layers. */
    size_t pair_room = shape.slots ? 0 : w > 1 ? streamed_block_quantile(m, 2 * w) : streamed_pair_quantile(m);
#define REGION_OF(big) max_sz(REGION_FOR(big), pair_room)
    keep_budget = sat_sub(cap, REGION_OF(streamed_largest) + slack);
    /* Too much kept (rounding, or credit left unspent for want of layers under the cap): stream the
     * largest kept layers under the size cap until it fits, and only then larger ones, since those
     * would grow the region. */
    while (kept > keep_budget) {
        layer_t *big = NULL, *under = NULL;
        for (size_t i = 0; i < vc__plan_n(m); i++) {
            layer_t *x = vc__plan_at(m, i);
            if (!x->keep) continue;
            if (!big || x->bytes > big->bytes) big = x;
            if (stream_rank(x) <= size_cap && (!under || x->bytes > under->bytes)) under = x;
        }
        if (under) big = under;
        if (!big) break;
        big->keep = 0;
        kept -= arena_round(big->bytes);
        size_t grown = region_largest(streamed_largest, big, shape);
        if (grown != streamed_largest) {
            streamed_largest = grown;
            keep_budget = sat_sub(cap, REGION_OF(streamed_largest) + slack);
        }
    }
    /* Room left over: keep streamed layers (those used most per pass first; spread, smallest
     * first) while they fit. */
    for (unsigned most = GROUP_MAX; most >= 1; most--) {
        for (int pass = 0; pass < 2; pass++)
            for (size_t i = 0; i < vc__plan_n(m); i++) {
                layer_t *x = vc__plan_at(m, i);
                size_t b = arena_round(x->bytes);
                if ((x->uses > 1 ? x->uses : 1) != most) continue;
                if (x->keep || b > keep_budget - kept || (pass == 0 && b * 2 > streamed_largest)) continue;
                x->keep = 1;
                kept += b;
            }
    }
    /* Kept layers live in segments of up to segment_bytes; count the last one's slack as kept. */
    size_t stream_budget = sat_sub(cap, kept + slack) & ~(ARENA_GRAIN - 1);
    if (stream_budget < (size_t)(shape.region_of * (double)streamed_largest))
        stream_budget = 0; /* no room to overlap: plain placement */
#undef REGION_OF
#undef REGION_FOR
    *kept_out = kept + slack;
    return stream_budget;
}

/* Bytes a cycle's plan moves per cycle, as just marked by plan_keep_set with a region of `region`:
 * each streamed layer once per use, and a streamed layer the region cannot take (an *outsider*,
 * whose bytes go to *outside*) also its own size again: it takes room from the kept set, whose
 * layers there reload. *squeezed: some streamed layer has less room than the shape gives one. */
static double cycle_bytes(const model_t *m, size_t region, double region_of, double *outside, int *squeezed) {
    double sum = 0;
    *outside = 0;
    *squeezed = 0;
    for (size_t i = 0; i < vc__plan_n(m); i++) {
        const layer_t *x = vc__plan_at(m, i);
        if (x->keep) continue;
        size_t b = arena_round(x->bytes);
        sum += (double)b * (x->uses > 1 ? x->uses : 1);
        if (b > region)
            *outside += (double)b;
        else if ((double)b * region_of > (double)region)
            *squeezed = 1;
    }
    return sum + *outside;
}

/* A cycle that runs some models many times and others once (images in a row: encoders, the
 * denoiser's steps, the VAE) pays for its region at every pass, and the region is sized by the
 * largest streamed layer, often a text encoder's embedding (76-127 MB) used once per cycle. Tries
 * leaving the largest once-used layers out of the region's size (they then borrow room from the
 * kept set as they come, prefetched: place_streamed in residency.c) and says whether that moves
 * at least 1% fewer bytes per cycle; *shape gets the best once_cap. Measured on the image
 * workloads (docs/performance.md): without the squeeze and outsider limits below, bytes fell in
 * most cells but time rose by up to 1.5% (FLUX.1-schnell on 24 GB: T5's 252 MB blocks in a ring of
 * 283 MB; the whole of SDXL's second text encoder borrowing from the UNet's kept set). */
static int region_for_once_used(model_t *m, size_t cap, size_t total, size_t largest, plan_shape *shape) {
    enum { TRIES = 6 };
    size_t sizes[TRIES] = {0}, n = 0; /* the largest distinct sizes of layers used once, descending */
    for (size_t i = 0; i < vc__plan_n(m); i++) {
        const layer_t *x = vc__plan_at(m, i);
        size_t b = arena_round(x->bytes);
        if (x->uses > 1) continue;
        size_t k = 0;
        while (k < n && sizes[k] > b) k++;
        if (k < n && sizes[k] == b) continue;
        if (k >= TRIES) continue;
        if (n < TRIES) n++;
        memmove(&sizes[k + 1], &sizes[k], (n - 1 - k) * sizeof(*sizes));
        sizes[k] = b;
    }
    size_t kept, region = plan_keep_set(m, cap, total, largest, *shape, &kept);
    /* Where the region holds all the repeated layers that stream, they stay in it from one pass to
     * the next (only the once-used layers pass through): the region costs nothing per pass there. */
    size_t repeated = 0;
    for (size_t i = 0; i < vc__plan_n(m); i++) {
        const layer_t *x = vc__plan_at(m, i);
        if (!x->keep && x->uses > 1) repeated += arena_round(x->bytes);
    }
    if (repeated <= region) return 0;
    int squeezed;
    double outside, best = cycle_bytes(m, region, shape->region_of, &outside, &squeezed), base = best;
    size_t best_cap = SIZE_MAX;
    for (size_t k = 0; k < n; k++) {
        plan_shape s = *shape;
        s.once_cap = sizes[k] - 1;
        region = plan_keep_set(m, cap, total, largest, s, &kept);
        if (!region) continue;
        double b = cycle_bytes(m, region, s.region_of, &outside, &squeezed);
        if (squeezed) continue; /* a layer in a ring of hardly more than itself: copy and compute in turn */
        /* The kept layers an outsider displaces reload at once, when the next pass may have no
         * compute to spare for them: only where outsiders are few beside what the region saves. */
        if (b < best * 0.99 && outside * 4 <= base - (b - outside)) best = b, best_cap = s.once_cap;
    }
    shape->once_cap = best_cap;
    return best_cap != SIZE_MAX;
}

static void make_plan(vc_cache *c, model_t *m) {
    /* The ring, homes, the deferred layout and the lean shape assume the plan has the device to
     * itself. Beside another model in use (a ControlNet beside a UNet) each model's plan ignores the
     * other's needs, and those rules then moved 1.2-1.7x the bytes of the rules before them (two
     * interleaved models at 40-60% of their size: tests/test_schedule.c, interleaved): the plan
     * keeps those rules there until a plan over all models in use replaces them. */
    int shared = others_in_use(c, m);
    /* What other models hold now stays where it is: plan around it (alone; shared, they move). */
    size_t limit = vc__weight_limit(c);
    size_t cap = shared ? limit : sat_sub(limit, vc__held_by_others(c, m));
    size_t total = 0, largest = 0;
    for (size_t i = 0; i < vc__plan_n(m); i++) {
        size_t b = arena_round(vc__plan_at(m, i)->bytes);
        total = sat_add(total, b);
        if (b > largest) largest = b;
        vc__plan_at(m, i)->keep = 1;
    }
    m->plan_capacity = limit ? limit : 1; /* re-planned when the limit moves away from this */
    m->plan_slots = c->stream_slots;
    m->plan_hold = hold_window(m);
    m->plan_shared = shared;
    set_layout_pending(c, m, 0);
    if (total <= cap || c->mode != VC_OFFLOAD_MODE_BALANCED) { /* it fits (or nothing is kept): no streaming */
        if (c->stream_model == m) vc__release_stream_region(c, VC_EVICT_PLAN);
        for (size_t i = 0; i < m->nlayers; i++) m->layers[i]->home_gen = 0; /* placed as any other */
        return;
    }
    /* The usual shape streams layers of up to a generous size, spread by compute, through room for
     * two of them. Its region is paid in bytes every step: where it would cost more than 5% of what
     * must stream anyway (the bytes goal of docs/performance.md; it happens when a model's largest
     * layers are large beside the bytes that must stream, as SD 1.5's), take the lean shape instead
     * when it moves fewer bytes: only the smallest layers stream, and the ring (residency.c) holds
     * 1.4 of the largest of them. Measured on the workload sweep (docs/performance.md). Only while
     * the model has the device to itself, as the ring. */
    /* The engine may fix the region's room (stream_slots): both shapes then take that many layers. */
    unsigned slots = c->stream_slots;
    const plan_shape usual = {2.0, slots ? slots : 2.0, shared, SIZE_MAX, slots},
                     lean = {1.0, slots ? slots : 1.4, 0, SIZE_MAX, slots};
    size_t lower_bound = total - cap, kept;
    size_t stream_budget = plan_keep_set(m, cap, total, largest, usual, &kept);
    const char *shape = shared ? "shared" : "usual";
    plan_shape chosen = usual;
    if (sat_sub(cap, kept) > lower_bound / 20 && !shared) {
        size_t lean_kept, lean_budget = plan_keep_set(m, cap, total, largest, lean, &lean_kept);
        if (lean_budget && sat_sub(cap, lean_kept) < sat_sub(cap, kept)) {
            stream_budget = lean_budget;
            kept = lean_kept;
            shape = "lean";
            chosen = lean;
        } else {
            stream_budget = plan_keep_set(m, cap, total, largest, usual, &kept);
        }
    }
    if (m->next_use && !shared) {
        plan_shape best = chosen;
        int outside = region_for_once_used(m, cap, total, largest, &best);
        stream_budget = plan_keep_set(m, cap, total, largest, best, &kept); /* the tries marked others */
        if (outside)
            shape = chosen.margin == lean.margin ? "lean, once-used layers outside the region"
                                                 : "usual, once-used layers outside the region";
    }
    vc__log(c, VC_LOG_INFO, "plan for model '%s' (%s shape): keep %zu of %zu bytes resident, stream the rest "
            "through %zu bytes", m->name, shape, kept, total, stream_budget);
    /* The plan is made as a pass starts, while its first layer is held: lay the device out at the
     * first release after it (prefetch waits till then), or at the next pass at the latest. Beside
     * another model in use there are no homes to pack, so there is nothing to wait for. */
    m->pending_kept = kept;
    m->pending_stream = stream_budget;
    set_layout_pending(c, m, 1);
    try_layout(c, m, shared);
}

/* ---- step groups ------------------------------------------------------------------------------- */

/* Models that run in turn, whole pass after whole pass, every step (a ControlNet and then the UNet
 * it conditions, each step) are one pass to the device. Planned apart, each plan would assume the
 * whole device, the kept sets would push each other out and no prefetch would look past the end
 * of its own model (into the next model's first layers). So once each of them has begun its pass
 * right after the same other model's pass ended, two steps in a row, round a cycle, they are joined:
 * a hidden group model whose order is their orders in the order they run gets the plan, the ring,
 * the homes and the prefetch scan, exactly as one model would. Models interleaved layer by layer
 * join from a recorded period of their acquires instead (grec_*, below). A layer of another model
 * than the one due (a ControlNet that stops before the last steps) parts them again. One group at
 * a time. */


/* The group no longer holds: members plan alone again (each re-plans as its next pass begins). */
static void unjoin(vc_cache *c, const char *why) {
    model_t *g = c->group;
    if (!g) return;
    vc__log(c, VC_LOG_INFO, "models of group '%s' planned apart again: %s", g->name, why);
    if (c->stream_model == g) vc__release_stream_region(c, VC_EVICT_PLAN);
    set_layout_pending(c, g, 0);
    const layer_t *cur = g->order_n ? g->order[g->pos] : NULL;
    for (size_t k = 0; k < g->nmembers; k++) {
        model_t *m = g->members[k];
        m->joined = NULL;
        m->step_prev_seen = 0;
        m->plan_capacity = 0; /* re-planned at its next pass */
        for (size_t i = 0; i < m->order_n; i++) {
            m->order[i]->order_pos = i;
            m->order[i]->keep = 0;
            m->order[i]->home_gen = 0;
            m->order[i]->uses = 0;
        }
        m->pos = cur && cur->model == m ? cur->order_pos : m->order_n - 1;
        m->pf_next = (m->pos + 1) % m->order_n;
        m->pass_mismatches = 0;
    }
    c->group = NULL;
    vc__tuner_model_gone(c, g);
    /* The history of passes went on through a group of whole passes (follow notes its members'
     * pass starts): what runs next may still close a longer cycle (try_join_repeating). */
    if (!g->whole_passes) c->phist_n = 0;
    free(g->members);
    free(g->order);
    free(g->next_use);
    free(g->uorder);
    free(g->name);
    free(g);
}

/* Notes which model's pass ended right before m's pass begins now. */
static void note_step_prev(vc_cache *c, model_t *m) {
    if (c->last_ended_pass && c->last_model == m) {
        if (m->run_len < UINT_MAX) m->run_len++;
    } else {
        m->prev_run_len = m->run_len;
        m->run_len = 1;
        m->run_start = c->use_clock;
    }
    model_t *p = c->last_ended_pass && c->last_model != m ? c->last_model : NULL;
    if (p && p == m->step_prev) {
        if (m->step_prev_seen < 2) m->step_prev_seen++;
    } else {
        m->step_prev = p;
        m->step_prev_seen = p != NULL;
    }
}

/* Forms the group of the k models `members` (in the order their first layers run) with `order`
 * (n layers, owned by the group from here; freed on failure): every member's order once, each in its
 * own order — or, with next_use (a member run twice per pass), twice, with the distinct layers in
 * uorder (un of them; both owned from here). `at` is the group position of the layer being
 * acquired. Returns 1 when formed (the group's plan is made). */
static int form_group(vc_cache *c, model_t **members, size_t k, layer_t **order, size_t n, size_t at,
                      size_t *next_use, layer_t **uorder, size_t un, int whole_passes) {
    size_t name_len = 1;
    for (size_t j = 0; j < k; j++) name_len += strlen(members[j]->name) + 1;
    model_t *g = calloc(1, sizeof(*g));
    model_t **mem = malloc(k * sizeof(*mem));
    char *name = malloc(name_len);
    if (!g || !mem || !name) { /* no group: each plans alone, as before */
        free(g), free(mem), free(name), free(order), free(next_use), free(uorder);
        return 0;
    }
    name[0] = 0;
    for (size_t j = 0; j < k; j++) {
        model_t *m = mem[j] = members[j];
        if (j) strcat(name, "+");
        strcat(name, m->name);
        m->joined = g;
        set_layout_pending(c, m, 0); /* the group's layout replaces the member's region and homes */
        g->vram_layers += m->vram_layers;
    }
    for (size_t i = n; i-- > 0;) order[i]->order_pos = i; /* a layer used twice: its first use */
    for (size_t i = 0; next_use && i < n; i++) order[i]->uses = order[i]->order_pos == i ? 1 : order[i]->uses + 1;
    g->name = name;
    g->whole_passes = whole_passes;
    for (size_t i = 0; whole_passes && i < n; i++) g->npasses += order[i] == order[i]->model->order[0];
    g->members = mem;
    g->nmembers = k;
    g->order = order;
    g->order_n = n;
    g->order_valid = 1;
    g->next_use = next_use;
    g->uorder = uorder;
    g->uorder_n = un;
    g->layers = uorder ? uorder : order; /* the plan walks a model's layers: the group's distinct ones */
    g->nlayers = uorder ? un : n;
    g->pos = at;
    g->pf_next = at;
    g->last_tick = c->use_clock;
    c->group = g;
    vc__log(c, VC_LOG_INFO, "models %s run in turn every step: planned as one pass of %zu layers", name, n);
    make_plan(c, g);
    return 1;
}

static int may_plan_groups(const vc_cache *c) {
    return c->policy == VC_POLICY_PLANNED && (c->mode == VC_OFFLOAD_MODE_BALANCED || c->mode == VC_OFFLOAD_MODE_SEQUENTIAL);
}

static int may_group(const vc_cache *c) { return !c->group && may_plan_groups(c); }

/* As a's pass begins: when a has begun twice in a row right after the same model's pass, and the
 * models before it close a cycle back to a (each seen at least once), join them, a first; returns 1
 * when joined (the group's plan is made). A model that runs once per image (a text encoder before
 * the steps, a VAE after) never reaches twice here: the next step's predecessor is the model itself
 * (a whole few-step image joins through try_join_repeating). */
static int try_join(vc_cache *c, model_t *a) {
    if (!may_group(c)) return 0;
    model_t *mem[GROUP_MAX] = {0};
    size_t k = 0, n = 0;
    model_t *x = a;
    do {
        if (!x || x->step_prev_seen < (x == a ? 2u : 1u) || !order_known(x) || x->joined || k == GROUP_MAX) return 0;
        for (size_t j = 0; j < k; j++)
            if (mem[j] == x) return 0; /* a cycle that does not come back to a */
        mem[k++] = x;
        n += x->order_n;
        x = x->step_prev;
    } while (x != a);
    if (k < 2) return 0;
    /* Run order: a, then the model whose pass follows a's (the last one found), and so on. */
    model_t *members[GROUP_MAX];
    members[0] = a;
    for (size_t j = 1; j < k; j++) members[j] = mem[k - j];
    layer_t **order = malloc(n * sizeof(*order));
    if (!order) return 0;
    size_t at = 0;
    for (size_t j = 0; j < k; j++)
        for (size_t i = 0; i < members[j]->order_n; i++) order[at++] = members[j]->order[i];
    return form_group(c, members, k, order, n, 0, NULL, NULL, 0, 1);
}

/* Notes that m's whole pass begins now: after the previous model's whole pass (or m's own), the
 * history of passes goes on; after a model stopped in its midst, it starts afresh. */
static void note_pass_start(vc_cache *c, model_t *m) {
    if (c->last_model != m && !c->last_ended_pass) c->phist_n = 0;
    if (c->phist_n == sizeof c->phist / sizeof c->phist[0]) {
        /* Periods need the last 2 * GROUP_MAX entries; the history holds twice that and drops its
         * older half when full, so a pass start moves memory once every 2 * GROUP_MAX of them (a
         * one-layer model's every acquire is a pass start). */
        const unsigned keep = 2 * GROUP_MAX;
        memmove(c->phist, c->phist + c->phist_n - keep, keep * sizeof(*c->phist));
        memmove(c->phist_lim, c->phist_lim + c->phist_n - keep, keep * sizeof(*c->phist_lim));
        c->phist_n = keep;
    }
    c->phist_lim[c->phist_n] = c->stats.vram_limit;
    c->phist[c->phist_n++] = m;
}

/* As a's pass begins: when the passes of the last two repetitions agree with a period of 3 to 64
 * passes in which some model runs more than once, join them, with a layer's uses linked by
 * next_use. Such a period is a step that runs a model twice (a ControlNet, then the UNet for each
 * half of guidance: CN, U, U), or a whole image of a few-step pipeline (text encoders, the UNet or
 * transformer 1-62 times, the VAE): planned apart, the encoders and the VAE push the denoiser's kept
 * set out every image; as one, they stream through and it stays (docs/performance.md). Cycles of
 * distinct models join through try_join. */
static int try_join_repeating(vc_cache *c, model_t *a) {
    /* A group of whole passes may be inside a longer cycle (a ControlNet and its UNet, joined every
     * step, with the encoders and the VAE of an 8-step image around them): the cycle replaces it. */
    model_t *inner = c->group;
    if (!may_plan_groups(c) || (inner && !inner->whole_passes)) return 0;
    const unsigned h = c->phist_n;
    unsigned q = 1; /* the shortest period of the last two repetitions */
    while (q <= GROUP_MAX && (2 * q > h || memcmp(c->phist + h - q, c->phist + h - 2 * q, q * sizeof(*c->phist))))
        q++;
    if (q < 3 || q > GROUP_MAX) return 0; /* none, one model alone, or two in turn (try_join's) */
    /* After a cycle parted out of turn (the step count changes from image to image), two
     * repetitions may be a coincidence of run lengths (..., b, a x 7, b, a x 6, b: the last 7 passes
     * twice), and a group formed there parts again soon: ask for three. */
    if (c->cycle_parted && (h < 3 * q || memcmp(c->phist + h - q, c->phist + h - 3 * q, q * sizeof(*c->phist))))
        return 0;
    if (inner && q <= inner->npasses) return 0; /* (the group's own cycle, or a shorter one) */
    /* The group's plan is made, and checked, as its cycle begins, for the weight limit then. When
     * passes reserve their own working memory (smart_partial_loading: the denoiser 1 GB, the
     * encoders the standing 3 GB, the VAE 2.25 GB), begin the cycle with the pass that has the most
     * room, so that the kept set is sized for it; the leaner passes evict some of it, which the
     * roomier ones load again, rather than every pass streaming what a smaller plan left out. */
    size_t most = 0;
    for (unsigned j = h - q; j < h; j++) most = c->phist_lim[j] > most ? c->phist_lim[j] : most;
    if (c->phist_lim[h - 1] < most - most / 16) return 0; /* joined as the roomiest pass begins */
    model_t *const *last = c->phist + h - q;
    /* The cycle from a on: a (the latest), then the period's passes in the order they ran. */
    model_t *pass[GROUP_MAX] = {0}, *members[GROUP_MAX] = {0};
    size_t k = 0, n = 0, un = 0, runs[GROUP_MAX] = {0};
    int repeat = 0;
    pass[0] = a;
    for (unsigned j = 1; j < q; j++) pass[j] = last[j - 1];
    for (unsigned j = 0; j < q; j++) {
        model_t *x = pass[j];
        if (!order_known(x) || (x->joined && x->joined != inner)) return 0;
        size_t i = 0;
        while (i < k && members[i] != x) i++;
        if (i == k) members[k++] = x, un += x->order_n;
        repeat |= ++runs[i] > 1;
        n += x->order_n;
    }
    if (!repeat || k < 2) return 0; /* distinct models: try_join's case */
    /* Two models each running pass after pass that do not fit together (SDXL's base UNet for 24
     * steps, then its refiner for 6, on a card that holds either but not both): one kept set for the
     * whole cycle would keep part of each and stream the rest at every pass; apart, each keeps its
     * own layers through its run (model_active) and loads once per image: 63.1 GB per image on 8 GB
     * instead of 12.1 (docs/performance.md). Where they fit together, the cycle keeps both. */
    unsigned phased = 0;
    size_t phased_bytes = 0;
    for (size_t i = 0; i < k; i++)
        for (unsigned j = 0; j < q; j++)
            if (pass[j] == members[i] && pass[(j + 1) % q] == members[i]) {
                phased++;
                for (size_t l = 0; l < members[i]->order_n; l++)
                    phased_bytes = sat_add(phased_bytes, arena_round(members[i]->order[l]->bytes));
                break;
            }
    if (phased >= 2 && phased_bytes > most) return 0;
    for (size_t j = 0; inner && j < inner->nmembers; j++) {
        size_t i = 0;
        while (i < k && members[i] != inner->members[j]) i++;
        if (i == k) return 0; /* the group has a model the cycle does not run */
    }
    if (inner) unjoin(c, "they run inside a longer cycle, planned as one");
    layer_t **order = malloc(n * sizeof(*order)), **uorder = malloc(un * sizeof(*uorder));
    size_t *next_use = malloc(n * sizeof(*next_use)), start[GROUP_MAX];
    if (!order || !uorder || !next_use) {
        free(order), free(uorder), free(next_use);
        return 0;
    }
    size_t at = 0, uat = 0;
    for (unsigned j = 0; j < q; j++) {
        start[j] = at;
        for (size_t i = 0; i < pass[j]->order_n; i++) order[at++] = pass[j]->order[i];
        unsigned first = 1;
        for (unsigned e = 0; e < j; e++) first &= pass[e] != pass[j];
        for (size_t i = 0; first && i < pass[j]->order_n; i++) uorder[uat++] = pass[j]->order[i];
    }
    for (unsigned j = 0; j < q; j++) { /* each use points at the same layer's next use, round the cycle */
        unsigned nx = (j + 1) % q;
        while (pass[nx] != pass[j]) nx = (nx + 1) % q;
        for (size_t i = 0; i < pass[j]->order_n; i++) next_use[start[j] + i] = start[nx] + i;
    }
    return form_group(c, members, k, order, n, 0, next_use, uorder, un, 1);
}

/* Models interleaved layer by layer (an adapter's layers used between the UNet's): once a model's
 * pass has seen another model's layers in its midst, the acquires of all models are recorded from
 * its next pass start until its first layer comes round again; if that period holds each model it
 * names exactly once, in its own order, it becomes the group's order. */
static void grec_stop(vc_cache *c) {
    free(c->grec);
    free(c->grec_prev);
    c->grec = c->grec_prev = NULL;
    c->grec_n = c->grec_cap = c->grec_prev_n = 0;
}

static void grec_start(vc_cache *c, layer_t *l) {
    size_t cap = 16;
    for (uint32_t i = 0; i < c->models.count; i++) {
        const model_t *o = c->models.slots[i].ptr;
        if (o && order_known(o)) cap += o->order_n;
    }
    free(c->grec); /* (a period before it, if any, stays in grec_prev) */
    c->grec_n = c->grec_cap = 0;
    c->grec = malloc(cap * sizeof(*c->grec));
    if (!c->grec) return;
    c->grec_cap = cap;
    c->grec[c->grec_n++] = l;
}

static int grec_finish(vc_cache *c) {
    model_t *members[GROUP_MAX];
    size_t k = 0, n = c->grec_n;
    int ok = 1;
    for (size_t i = 0; i < n && ok; i++) {
        model_t *m = c->grec[i]->model;
        size_t j = 0;
        while (j < k && members[j] != m) j++;
        if (j == k) {
            if (k == GROUP_MAX) ok = 0;
            else members[k++] = m, m->grec_seen = 0;
        }
        if (!ok) break;
        /* its next layer in its own order, or the period is not a clean interleaving */
        if (!c->grec[i]->in_order || m->grec_seen >= m->order_n || m->order[m->grec_seen] != c->grec[i]) ok = 0;
        else m->grec_seen++;
    }
    for (size_t j = 0; j < k && ok; j++) ok = members[j]->grec_seen == members[j]->order_n;
    if (!ok || k < 2 || !may_group(c)) {
        grec_stop(c);
        return 0;
    }
    /* Formed once two periods in a row agree (an irregular interleaving would part the group at
     * once and lay the device out again for nothing); else this one waits for the next. */
    layer_t **order = c->grec, *first = order[0];
    int same = c->grec_prev && c->grec_prev_n == n && !memcmp(c->grec_prev, order, n * sizeof(*order));
    free(c->grec_prev);
    c->grec_prev = order;
    c->grec_prev_n = n;
    c->grec = NULL;
    if (!same) {
        grec_start(c, first);
        return 0;
    }
    c->grec_prev = NULL;
    grec_stop(c);
    return form_group(c, members, k, order, n, 0, NULL, NULL, 0, 0);
}

/* Each acquire while a period is recorded; 1 when it completed a period and formed the group
 * (l is then the group's first layer, already followed). */
static int grec_step(vc_cache *c, layer_t *l) {
    if (l == c->grec[0]) /* the anchor's first layer again: one period */
        return grec_finish(c);
    if (l->model->joined || !order_known(l->model) || !l->in_order || c->grec_n == c->grec_cap)
        grec_stop(c);
    else
        c->grec[c->grec_n++] = l;
    return 0;
}

/* ---- order tracking ---------------------------------------------------------------------------- */

static void drop_order(vc_cache *c, model_t *m) {
    if (m->joined) unjoin(c, "a member's order changed");
    vc__tuner_model_gone(c, m); /* its passes no longer time the cycle: measure again */
    grec_stop(c); /* a recorded period may name its layers */
    if (c->stream_model == m) vc__release_stream_region(c, VC_EVICT_PLAN);
    for (size_t i = 0; i < m->order_n; i++) {
        m->order[i]->in_order = 0;
        m->order[i]->keep = 0;
    }
    free(m->order);
    m->order = NULL;
    m->order_n = 0;
    m->order_valid = 0;
    set_layout_pending(c, m, 0);
    m->order_declared = 0;
    m->plan_capacity = 0;
    m->pos = 0;
}

static int install_order(vc_cache *c, model_t *m, layer_t **order, size_t n, int declared) {
    drop_order(c, m);
    m->order = order;
    m->order_n = n;
    m->order_valid = 1;
    m->order_declared = declared;
    m->pass_mismatches = 0;
    for (size_t i = 0; i < n; i++) {
        order[i]->in_order = 1;
        order[i]->order_pos = i;
    }
    m->pos = n - 1; /* the next expected layer is order[0] */
    m->pf_next = 0;
    if (c->policy == VC_POLICY_PLANNED) make_plan(c, m);
    return VC_OK;
}

static void start_recording(model_t *m, layer_t *l) {
    m->recording = 1;
    m->rec_n = 0;
    if (!m->rec_cap) {
        m->rec = malloc(16 * sizeof(*m->rec));
        m->rec_cap = m->rec ? 16 : 0;
    }
    if (m->rec_cap) m->rec[m->rec_n++] = l;
}

/* Learning: record the pass until its first layer comes round again. */
static void record(vc_cache *c, model_t *m, layer_t *l) {
    if (!m->recording) {
        start_recording(m, l);
        return;
    }
    if (m->rec_n && l == m->rec[0]) { /* one whole pass */
        layer_t **order = malloc(m->rec_n * sizeof(*order));
        if (order) {
            memcpy(order, m->rec, m->rec_n * sizeof(*order));
            install_order(c, m, order, m->rec_n, 0);
            m->pos = 0;
            c->stats.orders_learned++;
            vc__log(c, VC_LOG_INFO, "learned the execution order of model '%s': %zu layers per pass", m->name,
                    m->order_n);
            note_step_prev(c, m); /* this acquire begins its second pass: a step for step groups */
            note_pass_start(c, m);
        }
        m->recording = 0;
        return;
    }
    for (size_t i = 1; i < m->rec_n; i++)
        if (m->rec[i] == l) { /* a layer used twice per pass: not a simple loop; start again here */
            start_recording(m, l);
            return;
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
}

static void follow(vc_cache *c, model_t *m, layer_t *l) {
    size_t expected = (m->pos + 1) % m->order_n;
    /* (a layer a group uses twice has order_pos at its first use: the second is found in the order) */
    if (l->in_order && (l->order_pos == expected || (m->next_use && m->order[expected] == l))) {
        m->pos = expected;
        if (m->whole_passes && l == l->model->order[0]) note_pass_start(c, l->model); /* a member's pass */
        if (expected == 0) { /* a new pass */
            vc__tuner_on_pass(c, m); /* may change stream_slots: the re-plan below follows it */
            if (!m->members) {
                roll_hold_peak(m);
                int interleaved = m->saw_others;
                m->saw_others = 0;
                note_step_prev(c, m);
                note_pass_start(c, m);
                if (try_join(c, m) || try_join_repeating(c, m)) return;
                if (interleaved && may_group(c) && !c->grec) grec_start(c, l);
            } else {
                for (size_t k = 0; k < m->nmembers; k++) roll_hold_peak(m->members[k]);
                if (m->next_use) c->cycle_parted = 0; /* the cycle ran whole */
            }
            try_layout(c, m, 1);
            /* Another model came into use beside this one's plan, or left it: lay it out again. */
            int replan = m->plan_capacity && m->plan_shared != others_in_use(c, m);
            /* The engine now holds more layers at once than the plan's region allows for, or far fewer
             * (after a whole-model acquire); small swings down keep the plan (no re-plan each pass). */
            unsigned w = hold_window(m);
            replan |= m->plan_capacity && (w > m->plan_hold || 2 * w < m->plan_hold);
            replan |= m->plan_capacity && m->plan_slots != c->stream_slots; /* vc_cache_set_stream_slots */
            m->pass_mismatches = 0;
            /* The budget moved since the plan was made (reservation ended, another process): re-plan. */
            size_t limit = c->stats.vram_limit;
            size_t diff = limit > m->plan_capacity ? limit - m->plan_capacity : m->plan_capacity - limit;
            if (c->policy == VC_POLICY_PLANNED && (diff > m->plan_capacity / 16 || replan)) make_plan(c, m);
        }
        return;
    }
    c->stats.order_mismatches++;
    m->pass_mismatches++;
    if (m->members && (!l->in_order || l->model != m->order[expected]->model || m->pass_mismatches > 2 + m->order_n / 8)) {
        /* Another model than the one due (or a layer outside the orders): they no longer run in turn. */
        if (m->next_use) c->cycle_parted = 1;
        unjoin(c, l->in_order && l->model != m->order[expected]->model ? "another model ran than the one due"
                                                                          : "the pass changed");
        if (order_known(l->model)) follow(c, l->model, l);
        else record(c, l->model, l);
        return;
    }
    if (!m->order_declared && (!l->in_order || m->pass_mismatches > 2 + m->order_n / 8)) {
        vc__log(c, VC_LOG_INFO, "model '%s' left its learned order at layer '%s'; learning again", m->name,
                l->name);
        c->stats.order_resets++;
        drop_order(c, m);
        start_recording(m, l);
        return;
    }
    if (l->in_order) m->pos = (m->pos + distance_of(l)) % m->order_n; /* resynchronise: a branch or a skip */
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

void vc__sched_on_acquire(vc_cache *c, layer_t *l) {
    model_t *own = l->model;
    own->last_tick = c->use_clock;
    if (l->prefetched) {
        l->prefetched = 0;
        c->prefetch_inflight--;
        c->stats.prefetch_hits++;
    }
    /* Another model's layer in the midst of the previous model's pass: they interleave. */
    model_t *prev = c->last_model;
    if (prev && prev != own && !prev->joined && order_known(prev) && prev->pos != prev->order_n - 1)
        prev->saw_others = 1;
    if (c->grec && grec_step(c, l))
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
    c->last_ended_pass = order_known(own) && l->in_order &&
                         (own->joined ? own->joined->whole_passes && l == own->order[own->order_n - 1]
                                      : own->pos == own->order_n - 1);
    if (c->policy != VC_POLICY_PLANNED || !order_known(m) || !c->prefetch_depth ||
        c->mode == VC_OFFLOAD_MODE_NONE || c->mode == VC_OFFLOAD_MODE_MODEL)
        return;
    if (m->layout_pending) { /* nothing ahead is known to be resident: scan afresh afterwards */
        m->pf_next = (m->pos + 1) % m->order_n;
        return;
    }
    /* Upload what comes next, in order, while room can be made without hurting sooner needs. The
     * scan resumes where it stopped last time (layers it passed are resident or arriving; an
     * eviction pulls it back), so a hit costs O(1) however long the pass. */
    size_t depth = c->mode == VC_OFFLOAD_MODE_SEQUENTIAL ? 2 : c->prefetch_depth;
    size_t window = m->order_n - 1 < PREFETCH_WINDOW ? m->order_n - 1 : PREFETCH_WINDOW;
    size_t k = (m->pf_next + m->order_n - m->pos) % m->order_n;
    if (k == 0 || k > window) k = 1;
    for (; k <= window && c->prefetch_inflight < depth; k++) {
        layer_t *x = m->order[(m->pos + k) % m->order_n];
        if (x->vblock || x->loading) continue;
        if (vc__needs_load(x)) { /* a loader call here (ours or a sharing owner's) would stall this acquire */
            if (c->stager_on) stage_ahead(c, m, k, window);
            break;
        }
        if (vc__prefetch_upload(c, x, k) != VC_OK) break;
        x->prefetched = 1;
        c->prefetch_inflight++;
        c->stats.prefetches++;
    }
    /* Past the window the next scan starts at its last layer (pos + window + 1 could wrap round
     * to pos itself and read as "everything ahead is resident" for ever). */
    m->pf_next = (m->pos + (k > window ? window : k)) % m->order_n;
}

void vc__sched_on_evict(vc_cache *c, layer_t *l) {
    (void)c;
    model_t *m = vc__plan_model(l);
    if (!l->in_order || !order_known(m)) return;
    size_t d = distance_of(l);
    size_t f = (m->pf_next + m->order_n - m->pos) % m->order_n;
    if (d < m->order_n && d < f) m->pf_next = (m->pos + d) % m->order_n;
}

void vc__sched_on_release(vc_cache *c, layer_t *l) {
    if (c->layout_pending_count) /* any model's: another model's release may be the moment */
        for (uint32_t i = 0; i <= c->models.count; i++) {
            model_t *pm = plan_model_at(c, i);
            if (pm && pm->layout_pending) try_layout(c, pm, 0);
        }
    if (c->mode == VC_OFFLOAD_MODE_SEQUENTIAL && l->holds == 0 && l->vblock)
        vc__evict_vram(c, l, VC_EVICT_SEQUENTIAL, 0);
}

void vc__sched_forget(vc_cache *c, layer_t *l) {
    grec_stop(c); /* the recorded period may hold l */
    model_t *m = l->model;
    if (l->prefetched) {
        l->prefetched = 0;
        c->prefetch_inflight--;
    }
    if (l->in_order) drop_order(c, m); /* the pass changed shape: learn it again */
    if (m->recording) m->recording = 0;
}

void vc__sched_model_free(vc_cache *c, model_t *m) {
    grec_stop(c);
    vc__tuner_model_gone(c, m);
    if (m->joined) unjoin(c, "a member was unregistered");
    if (c->last_model == m) c->last_model = NULL;
    for (unsigned i = 0; i < c->phist_n; i++)
        if (c->phist[i] == m) c->phist_n = 0; /* the history no longer holds */
    for (uint32_t i = 0; i < c->models.count; i++) {
        model_t *o = c->models.slots[i].ptr;
        if (o && o->step_prev == m) o->step_prev = NULL, o->step_prev_seen = 0;
    }
    free(m->order);
    free(m->rec);
    m->order = m->rec = NULL;
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
    for (size_t i = 0; i < n; i++) /* each layer once: mark, check, unmark */
        if (order[i]->in_order == 2) {
            st = vc__fail(c, VC_ERR_INVALID_ARG, "%s: layer '%s' appears twice in the order", fn, order[i]->name);
            for (size_t j = 0; j < i; j++) order[j]->in_order = 1;
            goto restore;
        } else {
            order[i]->in_order = 2;
        }
    for (size_t i = 0; i < n; i++) order[i]->in_order = 1;
    m->recording = 0;
    if (m->order_valid && m->order_n == n && !memcmp(m->order, order, n * sizeof(*order))) {
        /* The order it runs by already (an engine declaring it at every generation): it becomes
         * declared, and the plan, the layout and any step group stay as they are (installing it
         * again would lay the device out afresh, reloading every kept layer). */
        m->order_declared = 1;
        goto done;
    }
    install_order(c, m, order, n, 1);
    order = NULL;
    goto done;
restore:
    /* in_order marks of the old order must be exact again */
    for (size_t i = 0; i < n; i++) order[i]->in_order = 0;
    for (size_t i = 0; i < m->order_n; i++) m->order[i]->in_order = 1;
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
