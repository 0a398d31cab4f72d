/*
 * The VRAM pool: the weight limit, the arenas, eviction, and where each upload lands.
 *
 * Weights live in two arenas of device segments: the kept arena (a plan's kept layers at their
 * homes; everything when there is no plan) and the streaming region (a ring the plan's streamed
 * layers pass through). vc__vram_place finds a layer its room: its home, the ring, or the kept
 * arena's free space after evicting what the scheduler allows, growing the arena within the
 * weight limit when it can.
 *
 * Device memory is reused in stream order rather than by blocking the host: before a freed range
 * can be overwritten, the upload stream waits on the evicted layer's release event (recorded on the
 * engine's stream), and on the write-back event when its weights are being copied back to RAM.
 *
 * Runs with c->lock held.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cache_internal.h"
#include "residency_internal.h"

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
        if (!deferred) vc__order_after(c, c->upload_stream, l->release_ev);
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
        int st = vc__ram_reserve(c, l->bytes, l, "evict", 1);
        if (st == VC_OK) st = c->ops->host_alloc(c->bctx, l->bytes, &buf, &pinned);
        if (st == VC_OK) st = vc__ensure_event(c, &l->ram_ev);
        if (st == VC_OK && l->release_recorded)
            st = vc__order_after(c, c->download_stream, l->release_ev);
        if (st == VC_OK && l->upload_pending) /* a prefetch evicted before it has landed */
            st = vc__order_after(c, c->download_stream, l->upload_ev);
        void *trace_ev = st == VC_OK ? vc__trace_mark(c, c->download_stream) : NULL;
        if (st == VC_OK) st = c->ops->copy_d2h(c->bctx, buf, dptr, l->bytes, c->download_stream);
        queued = st == VC_OK;
        if (queued && c->trace)
            vc__trace_copy(c, "writeback", l, trace_ev, c->download_stream);
        else if (trace_ev)
            c->ops->event_destroy(c->bctx, trace_ev);
        if (st == VC_OK) st = c->ops->event_record(c->bctx, l->ram_ev, c->download_stream);
        recorded = st == VC_OK;
        if (st == VC_OK) st = vc__order_after(c, c->upload_stream, l->ram_ev);
        if (st == VC_OK) {
            l->ram = buf;
            l->ram_pinned = pinned;
            l->ram_pending = 1;
            c->ram_bytes += l->bytes;
            vc__note_ram(c);
            list_push_tail(&c->ram_lru, l, 0);
            vc__ram_ix_touch(c, l, +1);
            c->stats.layers_in_ram++;
            c->stats.bytes_d2h += l->bytes;
        } else {
            /* A queued copy must finish before its buffer goes and before its device range takes
             * another layer (an upload into it would overwrite what the copy has not read yet):
             * with the backend able neither to order nor to wait, both are quarantined (see
             * settle_stream, device_quarantine). The layer itself leaves: the loader produces it
             * again. */
            int idle = !queued || (recorded && c->ops->event_synchronize(c->bctx, l->ram_ev) == VC_OK) ||
                       vc__settle_stream(c, c->download_stream, "evict");
            if (buf && idle) c->ops->host_free(c->bctx, buf, l->bytes, pinned);
            else if (buf) vc__quarantine(c, buf, l->bytes, pinned, 0);
            range_idle = idle;
            vc__log(c, VC_LOG_DEBUG, "layer '%s' of model '%s' leaves VRAM without a write-back (%s); "
                    "its loader will produce it again", l->name, l->model->name, vc__take_backend_error());
        }
    }
    list_unlink(&c->vram_lru, l, 1);
    if (range_idle)
        arena_free(l->in_stream ? &c->sarena : &c->arena, l->vblock);
    else
        vc__quarantine_range(c, l->in_stream ? &c->sarena : &c->arena, l->vblock);
    l->vblock = NULL;
    l->in_stream = 0;
    vc__ram_ix_touch(c, l, 0);
    vc__prefetch_settle(c, l); /* (a prefetch that was never used) */
    vc__note_vram_layer(c, l, -1);
    if (c->placing && l->keep && vc__plan_model(l) == vc__plan_model(c->placing))
        vc__plan_model(l)->self_evicts++; /* room for its own plan: a fragmentation chain if it repeats */
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

/* ---- model mode: a whole model in a segment of its own -------------------------------------------
 *
 * Model mode loads and evicts whole models. Placed layer by layer into the holes the models before
 * it left, a model of other layer sizes found no hole for some layers, and the load evicted its
 * own earlier layers to make them: each missed again at its acquire and loaded the whole model
 * again (SDXL's refiner after its base on a 12 GB card: 70 GB moved per pass). Packed into one
 * segment of its own, a model fits exactly, leaves whole, and its segment goes back. */

void vc__reserve_whole_model(vc_cache *c, layer_t *l, size_t need) {
    vc__end_whole_model(c);
    size_t limit = vc__weight_limit(c);
    if (!need || need > limit) return;
    for (;;) {
        release_empty_segments(c, &c->arena);
        if (sat_sub(limit, vc__vram_total(c)) >= need) break;
        vc_evict_reason reason;
        layer_t *victim = vc__sched_victim(c, l, VC_ANY_DISTANCE, &reason);
        if (!victim) return; /* held layers in the way: place as any other */
        model_t *vm = victim->model;
        for (size_t i = 0; i < vm->nlayers; i++)
            if (vm->layers[i]->vblock && vc__evictable(c, vm->layers[i])) vc__evict_vram(c, vm->layers[i], reason, 0);
    }
    if (grow_arena(c, &c->arena, need, ARENA_GRAIN, limit, need) != VC_OK) return;
    c->whole_model = l->model;
    c->whole_gen = c->arena.next_gen; /* the gen arena_add_segment just gave */
    c->whole_off = 0;
}

void vc__end_whole_model(vc_cache *c) {
    c->whole_model = NULL;
    c->whole_gen = 0;
    c->whole_off = 0;
}

/* Places l at the next offset of its model's whole-load segment. VC_ERR_NOT_FOUND when it cannot
 * (the segment went, or another thread's layer took the room meanwhile): placed as any other. */
static int place_whole(vc_cache *c, layer_t *l, arena_block **out) {
    arena_segment *seg = arena_segment_by_gen(&c->arena, c->whole_gen);
    if (!seg) {
        vc__end_whole_model(c);
        return VC_ERR_NOT_FOUND;
    }
    size_t need = arena_round(l->bytes);
    size_t align = l->align > ARENA_GRAIN ? l->align : ARENA_GRAIN;
    uintptr_t base = (uintptr_t)seg->base;
    size_t at = c->whole_off + (size_t)((align - ((base + c->whole_off) & (align - 1))) & (align - 1));
    if (at > seg->size || seg->size - at < need) return VC_ERR_NOT_FOUND;
    int st = arena_alloc_at(&c->arena, seg, at, need, l, out);
    if (st == VC_OK) c->whole_off = at + need;
    return st == VC_ERR_NO_MEMORY ? st : st == VC_OK ? VC_OK : VC_ERR_NOT_FOUND;
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
 * evicted when a home's owner arrives. For a plan that fits (`fitting`: its homes are laid where
 * its layers lie, after a fragmentation chain), another model's kept layers stay in the way only
 * while that model is in use: an idle model's would otherwise hold the gaps the chain needs. */
static int home_obstacle(vc_cache *c, const model_t *m, const arena_block *b, int fitting) {
    const layer_t *o = b->owner;
    if (!o) return 0;
    if (vc__plan_model(o) == m) return o->keep && !o->in_stream;
    if (fitting) /* another model's kept layer stays only while that model is in use */
        return !vc__evictable(c, (layer_t *)o) || (o->keep && vc__model_active(c, vc__plan_model(o), m));
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

void vc__assign_homes(vc_cache *c, model_t *m, int fitting) {
    for (size_t i = 0; i < m->nlayers; i++) m->layers[i]->home_gen = 0;
    /* Kept layers still resident keep their places; the rest are packed first-fit, largest first,
     * into the gaps between the blocks that stay. */
    size_t ngaps = 0, nobst = 0, nkept = 0;
    for (arena_segment *s = c->arena.segments; s; s = s->next)
        for (const arena_block *b = s->first; b; b = b->next) nobst += home_obstacle(c, m, b, fitting);
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
            if (!home_obstacle(c, m, b, fitting)) continue;
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
        if (!x->home_gen && !fitting && 2 * need <= c->stream_budget) x->keep = 0;
    }
    vc__ram_ix_stale(c); /* (kept marks may have changed) */
    free(gaps);
    free(todo);
}

/* A block of seg at or below `start` to look for l's home from: the block of a layer resident just
 * before l in the pass, when it lies there (a resident layer's block is owned, so never merged away).
 * Homes follow the pass order, so the walk from it is short; from the segment's first block, a pass
 * of n kept layers cost O(n^2) (100,000 layers). */
static arena_block *home_walk_start(const layer_t *l, const arena_segment *seg, size_t start) {
    const model_t *m = vc__plan_model(l);
    if (!l->in_order || !m->order || l->order_pos >= m->order_n) return NULL;
    for (size_t k = 1; k <= 4 && k <= l->order_pos; k++) {
        arena_block *b = m->order[l->order_pos - k]->vblock;
        if (b && b->seg == seg && b->offset <= start) return b;
    }
    return NULL;
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
    arena_block *first = home_walk_start(l, seg, start), *last = NULL;
    if (!first) first = seg->first;
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
    /* (looked up again: the evictions may have merged free blocks; a resident layer's block stays) */
    return arena_alloc_at_from(&c->arena, seg, home_walk_start(l, seg, start), start, need, l, out) == VC_OK
               ? VC_OK
               : VC_ERR_NOT_FOUND;
}

/* Makes the upload stream wait for every deferred fence (the placement will not copy into them). */
void vc__flush_fences(vc_cache *c) {
    for (unsigned i = 0; i < c->nfence; i++) vc__order_after(c, c->upload_stream, c->fence[i].ev);
    c->nfence = 0;
}

/* Copies l's bytes into blk on the upload stream, each part after the release of the layer that
 * occupied it (the fences of its ring placement, in address order): the copy engine fills the room
 * already free while the last occupants still compute, as a fluid copy would. Parts smaller than
 * copy_part_min are not worth a copy's fixed cost: they wait for the next fence as well. */
int vc__copy_fenced(vc_cache *c, const layer_t *l, const arena_block *blk, const void *src) {
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
        /* A part too small to be worth a copy of its own waits for this fence too and goes with
         * the next part (the tail after the last fence is copied whatever its size). */
        if (rel > done && rel - done >= c->copy_part_min) {
            st = c->ops->copy_h2d(c->bctx, dst + done, (const char *)src + done, rel - done, c->upload_stream);
            if (st != VC_OK) break; /* fence k not waited for yet: the loop below does */
            done = rel;
        }
        st = vc__order_after(c, c->upload_stream, c->fence[k].ev);
    }
    if (st == VC_OK && done < l->bytes)
        st = c->ops->copy_h2d(c->bctx, dst + done, (const char *)src + done, l->bytes - done, c->upload_stream);
    for (; k < c->nfence; k++) vc__order_after(c, c->upload_stream, c->fence[k].ev);
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
                vc__flush_fences(c);
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
    if (c->whole_gen && l->model == c->whole_model) {
        int ws = place_whole(c, l, out);
        if (ws != VC_ERR_NOT_FOUND) return ws;
    }
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
                        "offload_mode none keeps everything resident and the weight budget of %s %s: "
                        "the models do not fit (use offload_mode balanced or sequential to stream layers)",
                        fn, l->name, l->model->name, vc__fmt_bytes(need, a, sizeof a),
                        vc__fmt_bytes(limit, b, sizeof b), need > limit ? "is smaller than the layer" : "is full");
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

int vc__vram_place(vc_cache *c, layer_t *l, const char *fn, const place_req *rq, arena_block **out) {
    layer_t *outer = c->placing; /* (never nested today; kept right if it ever is) */
    c->placing = l;
    int st = vram_place(c, l, fn, rq, out);
    c->placing = outer;
    return st;
}
