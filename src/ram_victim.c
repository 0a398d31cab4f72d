/*
 * Which RAM copy to drop, without walking every copy.
 *
 * With a RAM cache smaller than what a step streams, every load drops a copy, and the planned
 * policy drops the one needed furthest ahead (vc__sched_ram_victim_walk in schedule.c). Found by
 * walking the RAM LRU, that is O(copies) per drop and O(copies^2) per step: 46,140 tensors
 * registered one by one with the RAM cache under half the model spent ~7 s of host time per step
 * there, where the same run with room spent 10 ms.
 *
 * In the steady state every RAM copy belongs to a model in use whose order is known, so the choice
 * is a question about order positions. Each such model (the group, for a step group) keeps three
 * bitmaps over its order's positions, one per kind of copy (vc__ram_victim_kind: a kept layer in
 * VRAM, one uploaded ahead and not used yet, the rest): bit p of bitmap k is set when order[p]'s
 * layer has a RAM copy and is of kind k. Within a model a higher kind always ranks higher
 * (vc__ram_victim_rank), so a model's candidate is the least recently used droppable copy of
 * kind 2 (all equally far), else the furthest of kind 1, else of kind 0: the first set bit found
 * walking back round the pass from the current position (64 positions a word, 4096 a word of the
 * bitmap's summary, which marks the words that are not empty). The answer is the best of the
 * models' candidates by rank, a tie to the least recently used (rtick): the walk's own rule, so the
 * two agree wherever the index answers, and a VC_CHECK_INTERNALS build checks that they do at every
 * drop.
 *
 * The bitmaps follow each layer's RAM copy, device copy and prefetch mark as they change
 * (vc__ram_ix_touch at each change); orders, positions and kept sets change only when a plan is
 * made or dropped, which bumps c->ram_ix_epoch, and an index of another epoch is built again (O(n))
 * when next needed. Whenever the question is not one the index can answer (a RAM copy of a model
 * not in use, without an order or outside it; a layer used twice per pass; no memory for the
 * bitmaps), the walk answers.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cache_internal.h"
#include "schedule_internal.h"

typedef struct ram_index ram_index;

void vc__ram_ix_free(model_t *m) {
    free(m->ram_ix.bits);
    memset(&m->ram_ix, 0, sizeof m->ram_ix);
}

static int ix_current(const vc_cache *c, const model_t *m) {
    const ram_index *ix = &m->ram_ix;
    return ix->bits && ix->epoch == c->ram_ix_epoch && ix->order == m->order && ix->n == m->order_n;
}

/* Bitmap k: `words` words of positions, then its summary, a bit per word that is not empty (so a
 * search skips 4096 positions a word where few copies lie, as ahead of the pass's position). */
static uint64_t *ix_map(const ram_index *ix, int k) { return ix->bits + (size_t)k * ix->stride; }
static uint64_t *ix_summary(const ram_index *ix, int k) { return ix_map(ix, k) + ix->words; }

/* Puts position p in bitmap `kind` (-1: none), keeping the counts and summaries. */
static void ix_set(ram_index *ix, size_t p, int kind) {
    uint64_t bit = (uint64_t)1 << (p % 64);
    for (int k = 0; k < 3; k++) {
        uint64_t *w = &ix_map(ix, k)[p / 64];
        int on = (*w & bit) != 0;
        if (on == (k == kind)) continue;
        *w ^= bit;
        if (on) ix->count[k]--;
        else ix->count[k]++;
        uint64_t *sw = &ix_summary(ix, k)[p / 4096], sbit = (uint64_t)1 << (p / 64 % 64);
        *sw = *w ? *sw | sbit : *sw & ~sbit;
    }
}

static int ix_kind(const layer_t *l) { return l->ram ? vc__ram_victim_kind(l) : -1; }

void vc__ram_ix_touch(vc_cache *c, layer_t *l, int ram_delta) {
    if (ram_delta > 0) l->model->ram_n++;
    if (ram_delta < 0) l->model->ram_n--;
    model_t *m = vc__plan_model(l);
    if (!ix_current(c, m) || !l->in_order || l->order_pos >= m->order_n || m->order[l->order_pos] != l) return;
    ix_set(&m->ram_ix, l->order_pos, ix_kind(l));
}

/* Builds m's index for its order as it is now. 0: it has none (a layer used twice per pass, whose
 * distance is the nearer of its uses, or no memory): the walk answers. */
static int ix_build(vc_cache *c, model_t *m) {
    ram_index *ix = &m->ram_ix;
    if (m->next_use) return 0;
    size_t words = (m->order_n + 63) / 64, stride = words + (words + 63) / 64;
    if (stride > ix->cap) {
        uint64_t *bits = realloc(ix->bits, 3 * stride * sizeof(*bits));
        if (!bits) return 0;
        ix->bits = bits;
        ix->cap = stride;
    }
    ix->words = words;
    ix->stride = stride;
    memset(ix->bits, 0, 3 * stride * sizeof(*ix->bits));
    memset(ix->count, 0, sizeof ix->count);
    for (size_t p = 0; p < m->order_n; p++) {
        const layer_t *l = m->order[p];
        if (l->order_pos == p) ix_set(ix, p, ix_kind(l));
    }
    ix->epoch = c->ram_ix_epoch;
    ix->order = m->order;
    ix->n = m->order_n;
    return 1;
}

static size_t top_bit(uint64_t w) { return 63 - (size_t)__builtin_clzll(w); }

/* The highest set bit of words w[0..] at or below bit `from`, scanning word by word; SIZE_MAX when
 * none. */
static size_t scan_at_or_below(const uint64_t *w, size_t from) {
    size_t i = from / 64;
    uint64_t word = w[i] & (~(uint64_t)0 >> (63 - from % 64));
    for (;;) {
        if (word) return i * 64 + top_bit(word);
        if (i == 0) return SIZE_MAX;
        word = w[--i];
    }
}

/* The highest position of bitmap k at or below `from`; SIZE_MAX when none. */
static size_t bit_at_or_below(const ram_index *ix, int k, size_t from) {
    const uint64_t *w = ix_map(ix, k);
    uint64_t word = w[from / 64] & (~(uint64_t)0 >> (63 - from % 64));
    if (word) return from / 64 * 64 + top_bit(word);
    if (from < 64) return SIZE_MAX;
    size_t i = scan_at_or_below(ix_summary(ix, k), from / 64 - 1); /* the next word below with a bit */
    if (i == SIZE_MAX) return SIZE_MAX;
    if (!w[i]) { /* a summary out of step with its words (a defect): answer from the words alone */
#ifdef VC_CHECK_INTERNALS
        fprintf(stderr, "vc__sched_ram_victim: bitmap %d's summary marks empty word %zu\n", k, i);
        abort();
#endif
        return scan_at_or_below(w, from / 64 * 64 - 1);
    }
    return i * 64 + top_bit(w[i]);
}

/* The droppable layer of bitmap `kind` needed furthest ahead: positions from the current one (a
 * full pass away) back to 0, then from the end back to just after the current one. */
static layer_t *furthest_of_kind(vc_cache *c, model_t *m, int kind, const layer_t *exclude,
                                 int (*droppable)(vc_cache *, layer_t *)) {
    const ram_index *ix = &m->ram_ix;
    size_t lo[2] = {0, m->pos + 1}, hi[2] = {m->pos, m->order_n - 1};
    for (int r = 0; r < 2; r++) {
        if (lo[r] > hi[r]) continue;
        for (size_t p = bit_at_or_below(ix, kind, hi[r]); p != SIZE_MAX && p >= lo[r];
             p = p > lo[r] ? bit_at_or_below(ix, kind, p - 1) : SIZE_MAX) {
            layer_t *x = m->order[p];
            if (x != exclude && droppable(c, x)) return x;
        }
    }
    return NULL;
}

/* The least recently used droppable layer of bitmap 2 (kept layers in VRAM, all equally far: their
 * copies serve only if they are evicted). O(bits set): such copies are dropped first, so they do
 * not stay many. */
static layer_t *oldest_kept(vc_cache *c, model_t *m, const layer_t *exclude, int (*droppable)(vc_cache *, layer_t *)) {
    const ram_index *ix = &m->ram_ix;
    layer_t *best = NULL;
    for (size_t p = bit_at_or_below(ix, 2, m->order_n - 1); p != SIZE_MAX; p = p ? bit_at_or_below(ix, 2, p - 1) : SIZE_MAX) {
        layer_t *x = m->order[p];
        if (x != exclude && (!best || x->rtick < best->rtick) && droppable(c, x)) best = x;
    }
    return best;
}

int vc__ram_victim_indexed(vc_cache *c, const layer_t *exclude, int (*droppable)(vc_cache *, layer_t *),
                           layer_t **out) {
    const model_t *asking = exclude ? vc__plan_model(exclude) : NULL;
    layer_t *best = NULL;
    size_t best_rank = 0;
    for (uint32_t i = 0; i <= c->models.count; i++) {
        model_t *m = vc__plan_model_at(c, i);
        if (!m) continue;
        size_t copies = m->ram_n;
        for (size_t k = 0; m->members && k < m->nmembers; k++) copies += m->members[k]->ram_n;
        if (!copies) continue;
        /* A copy of a model not in use or without an order goes first, least recently used first:
         * the walk finds those. */
        if (!order_known(m) || (asking && !vc__model_active(c, m, asking))) return 0;
        if (!ix_current(c, m) && !ix_build(c, m)) return 0;
        const ram_index *ix = &m->ram_ix;
        if (ix->count[0] + ix->count[1] + ix->count[2] != copies) return 0; /* copies outside the order */
        /* Within a model a higher kind always ranks higher: its best is the first kind with one. */
        layer_t *x = NULL;
        if (ix->count[2]) x = oldest_kept(c, m, exclude, droppable);
        if (!x && ix->count[1]) x = furthest_of_kind(c, m, 1, exclude, droppable);
        if (!x && ix->count[0]) x = furthest_of_kind(c, m, 0, exclude, droppable);
        if (!x) continue;
        size_t rank = vc__ram_victim_rank(x, vc__distance_of(x), m->order_n);
        if (!best || rank > best_rank || (rank == best_rank && x->rtick < best->rtick)) best = x, best_rank = rank;
    }
    *out = best;
    return 1;
}

#ifdef VC_CHECK_INTERNALS
/* The check asks both ways under one answer per copy: whether a copy may be dropped can change from
 * one call to the next (an upload completing meanwhile, an injected fault). */
typedef struct droppable_memo {
    const layer_t *l;
    int droppable;
} droppable_memo;
static _Thread_local droppable_memo *memo;
static _Thread_local size_t memo_n;

static int cmp_memo(const void *a, const void *b) {
    uintptr_t x = (uintptr_t)((const droppable_memo *)a)->l, y = (uintptr_t)((const droppable_memo *)b)->l;
    return x < y ? -1 : x > y;
}

static int memo_droppable(vc_cache *c, layer_t *l) {
    (void)c;
    droppable_memo key = {l, 0};
    const droppable_memo *f = bsearch(&key, memo, memo_n, sizeof(*memo), cmp_memo);
    return f && f->droppable;
}

static layer_t *checked_victim(vc_cache *c, const layer_t *exclude, int (*droppable)(vc_cache *, layer_t *)) {
    size_t n = 0;
    for (const layer_t *x = c->ram_lru.head; x; x = x->rnext) n++;
    memo = malloc((n ? n : 1) * sizeof(*memo));
    if (!memo) abort();
    memo_n = 0;
    for (layer_t *x = c->ram_lru.head; x; x = x->rnext) memo[memo_n++] = (droppable_memo){x, droppable(c, x)};
    qsort(memo, memo_n, sizeof(*memo), cmp_memo);
    layer_t *x = NULL;
    int indexed = vc__ram_victim_indexed(c, exclude, memo_droppable, &x);
    layer_t *w = vc__sched_ram_victim_walk(c, exclude, memo_droppable);
    free(memo);
    memo = NULL;
    if (indexed && w != x) {
        const layer_t *both[2] = {x, w};
        for (int i = 0; i < 2; i++) {
            const layer_t *l = both[i];
            const model_t *m = l ? vc__plan_model(l) : NULL;
            fprintf(stderr, "vc__sched_ram_victim: the %s chose ", i ? "walk" : "index");
            if (!l)
                fprintf(stderr, "nothing\n");
            else
                fprintf(stderr, "'%s' of '%s' (position %zu of %zu, pass at %zu, kind %d, rtick %llu)\n",
                        l->name, m->name, l->order_pos, m->order_n, m->pos, vc__ram_victim_kind(l),
                        (unsigned long long)l->rtick);
        }
        abort();
    }
    return w;
}
#endif

layer_t *vc__sched_ram_victim(vc_cache *c, const layer_t *exclude, int (*droppable)(vc_cache *, layer_t *)) {
#ifdef VC_CHECK_INTERNALS
    return checked_victim(c, exclude, droppable);
#else
    layer_t *x;
    if (!vc__ram_victim_indexed(c, exclude, droppable, &x)) return vc__sched_ram_victim_walk(c, exclude, droppable);
    return x;
#endif
}
