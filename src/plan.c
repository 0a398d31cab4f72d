/*
 * The plan: which layers of a model (or a step group) stay resident and which stream, and how much
 * room the streaming region gets; then laying that out on the device once nothing is held.
 *
 * docs/architecture.md ("The plan") gives the rules and the measurements behind them. Everything
 * here runs under the cache lock.
 */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "cache_internal.h"
#include "schedule_internal.h"

/* ---- the plan ---------------------------------------------------------------------------------- */

/* Another model ran within the last two passes of m: the device is
 * shared (a ControlNet beside a UNet), and m's plan does not own the kept arena. */
int vc__others_in_use(vc_cache *c, const model_t *m) {
    for (uint32_t i = 0; i <= c->models.count; i++) {
        const model_t *o = vc__plan_model_at(c, i);
        if (o && o != m && o->last_tick && vc__model_active(c, o, m)) return 1;
    }
    return 0;
}

/* Lays the device out for a new plan: streamed layers move to a fresh streaming region, and the
 * model's other unheld layers leave so that kept layers are packed again as the next pass loads
 * them (an old layout would be fragmented by the layers that used to stream through it). Kept
 * layers get homes, and the region works as a ring, only while m has the device to itself: beside
 * another model in use both assume an order of placement the other model's layers break, and two
 * interleaved models moved 1.2-1.6x the bytes with them (tests/test_step_group.c, interleaved). */
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
        vc__assign_homes(c, m, 0);
    else
        for (size_t i = 0; i < m->nlayers; i++) m->layers[i]->home_gen = 0;
}

void vc__set_layout_pending(vc_cache *c, model_t *m, int pending) {
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
void vc__try_layout(vc_cache *c, model_t *m, int force) {
    if (!m->layout_pending || (!force && vc__layout_pinned(c))) return;
    vc__set_layout_pending(c, m, 0);
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
void vc__roll_hold_peak(model_t *m) {
    m->held_peak = m->held_peak_cur;
    m->held_peak_cur = m->held_now;
}

/* Layers an engine holds at once (a block of layers acquired before its kernels run, released
 * together): over this pass and the last, of each member for a group; at most 16, at least 1. */
#define HOLD_MAX 16
unsigned vc__hold_window(const model_t *m) {
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
    unsigned w = vc__hold_window(m);
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
    /* (the last call marks the plan: its region in layers of its largest is where the tuner starts) */
    m->plan_room = stream_budget && streamed_largest ? (double)stream_budget / (double)streamed_largest : 0;
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
 * kept set as they come, prefetched: place_streamed in vram_pool.c) and says whether that moves
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

/* Marks each layer of m's order kept or streamed and sizes the streaming region (m->pending_*),
 * then lays that out when it can (vc__try_layout). */
static void make_plan(vc_cache *c, model_t *m, int learned_alone) {
    /* The ring, homes, the deferred layout and the lean shape assume the plan has the device to
     * itself. Beside another model in use (a ControlNet beside a UNet) each model's plan ignores the
     * other's needs, and those rules then moved 1.2-1.7x the bytes of the rules before them (two
     * interleaved models at 40-60% of their size: tests/test_step_group.c, interleaved): the plan
     * keeps those rules there until a plan over all models in use replaces them. */
    int shared = vc__others_in_use(c, m);
    /* What other models hold now stays where it is: plan around it (alone; shared, they move). */
    size_t limit = vc__weight_limit(c);
    size_t alone_cap = sat_sub(limit, vc__held_by_others(c, m));
    size_t total = 0, largest = 0;
    for (size_t i = 0; i < vc__plan_n(m); i++) {
        size_t b = arena_round(vc__plan_at(m, i)->bytes);
        total = sat_add(total, b);
        if (b > largest) largest = b;
        vc__plan_at(m, i)->keep = 1;
    }
    /* An order just learned from a pass no other model's layer interrupted (a denoiser after its
     * text encoders) is planned alone: the model that ran before it counts as in use for two more
     * passes' worth of acquires (vc__model_active), which made the plan shared here and laid the
     * device out twice, at the second pass and, alone, at the third; each re-layout streams the
     * whole model (FLUX.1-dev on 12-28 GB: 22 GB in each of those passes against 13.5 GB). Only
     * for a plan that streams: a plan that fits keeps its first passes as they were, which is
     * where a fitting plan that chains shows it and gets homes (note_fit_chain in schedule.c).
     * The model that ran before may run again beside this one (InvokeAI's sequential guidance:
     * ControlNet, UNet, UNet): the plan then stays alone through the next pass (alone_grace)
     * rather than be made shared and, a pass later, alone again, two more whole re-layouts before
     * the step group of the two forms and is planned as one. */
    m->alone_grace = 0;
    if (shared && learned_alone && c->mode == VC_OFFLOAD_MODE_BALANCED && total > alone_cap) {
        shared = 0;
        m->alone_grace = 1;
    }
    size_t cap = shared ? limit : alone_cap;
    m->plan_capacity = limit ? limit : 1; /* re-planned when the limit moves away from this */
    m->plan_slots = c->stream_slots;
    m->plan_hold = vc__hold_window(m);
    m->plan_shared = shared;
    m->plan_fits = total <= cap;
    vc__set_layout_pending(c, m, 0);
    if (total <= cap || c->mode != VC_OFFLOAD_MODE_BALANCED) { /* it fits (or nothing is kept): no streaming */
        if (c->stream_model == m) vc__release_stream_region(c, VC_EVICT_PLAN);
        if (m->fit_homes == 1 && m->plan_fits && c->mode == VC_OFFLOAD_MODE_BALANCED) {
            if (!shared) vc__assign_homes(c, m, 1); /* (beside a model in use they stay as they are) */
            return;
        }
        if (m->fit_homes == 1) m->fit_homes = 0;
        for (size_t i = 0; i < m->nlayers; i++) m->layers[i]->home_gen = 0; /* placed as any other */
        return;
    }
    m->fit_homes = 0;
    /* The usual shape streams layers of up to a generous size, spread by compute, through room for
     * two of them. Its region is paid in bytes every step: where it would cost more than 5% of what
     * must stream anyway (the bytes goal of docs/performance.md; it happens when a model's largest
     * layers are large beside the bytes that must stream, as SD 1.5's), take the lean shape instead
     * when it moves fewer bytes: only the smallest layers stream, and the ring (vram_pool.c) holds
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
    vc__set_layout_pending(c, m, 1);
    vc__try_layout(c, m, shared);
}

void vc__make_plan(vc_cache *c, model_t *m, int learned_alone) {
    vc__ram_ix_stale(c); /* kept marks change from here */
    make_plan(c, m, learned_alone);
    vc__ram_ix_stale(c);
}
