#include "arena.h"

#include <stdlib.h>
#include <string.h>

#include "vramcache.h"

#ifdef VC_ARENA_DEBUG
void arena_validate(const arena *a);
#define ARENA_VALIDATE(a) arena_validate(a)
#else
#define ARENA_VALIDATE(a) ((void)0)
#endif

static unsigned log2_floor(size_t v) {
    return (unsigned)(sizeof(size_t) * 8 - 1) - (unsigned)__builtin_clzl((unsigned long)v);
}

/* Maps a size to its (first-level, second-level) bin. Sizes are counted in grains: below 8 grains
 * each grain count has its own bin; above, each power of two is split in 8 equal classes. */
static void bin_of(size_t size, unsigned *fl, unsigned *sl) {
    size_t u = size / ARENA_GRAIN;
    if (u < ARENA_SL) {
        *fl = 0;
        *sl = (unsigned)u;
        return;
    }
    unsigned lg = log2_floor(u);
    *fl = lg - 2;
    *sl = (unsigned)((u >> (lg - 3)) & (ARENA_SL - 1));
}

size_t arena_round(size_t size) {
    if (size > SIZE_MAX - (ARENA_GRAIN - 1)) return SIZE_MAX & ~(ARENA_GRAIN - 1);
    size_t r = (size + ARENA_GRAIN - 1) & ~(ARENA_GRAIN - 1);
    return r ? r : ARENA_GRAIN;
}

static void bin_insert(arena *a, arena_block *b) {
    unsigned fl, sl;
    bin_of(b->size, &fl, &sl);
    b->free_prev = NULL;
    b->free_next = a->bins[fl][sl];
    if (b->free_next) b->free_next->free_prev = b;
    a->bins[fl][sl] = b;
    a->fl_bitmap |= (uint64_t)1 << fl;
    a->sl_bitmap[fl] |= (uint8_t)(1u << sl);
}

static void bin_remove(arena *a, arena_block *b) {
    unsigned fl, sl;
    bin_of(b->size, &fl, &sl);
    if (b->free_prev)
        b->free_prev->free_next = b->free_next;
    else
        a->bins[fl][sl] = b->free_next;
    if (b->free_next) b->free_next->free_prev = b->free_prev;
    if (!a->bins[fl][sl]) {
        a->sl_bitmap[fl] &= (uint8_t)~(1u << sl);
        if (!a->sl_bitmap[fl]) a->fl_bitmap &= ~((uint64_t)1 << fl);
    }
    b->free_prev = b->free_next = NULL;
}

void arena_init(arena *a) { memset(a, 0, sizeof(*a)); }

int arena_add_segment(arena *a, void *base, size_t size) {
    arena_segment *s = calloc(1, sizeof(*s));
    arena_block *b = calloc(1, sizeof(*b));
    if (!s || !b) {
        free(s);
        free(b);
        return VC_ERR_NO_MEMORY;
    }
    s->base = base;
    s->size = size;
    s->gen = ++a->next_gen;
    s->min_owned = SIZE_MAX;
    s->first = b;
    b->size = size;
    b->seg = s;
    s->next = a->segments;
    if (a->segments) a->segments->prev = s;
    a->segments = s;
    a->nsegments++;
    a->total += size;
    bin_insert(a, b);
    return VC_OK;
}

void *arena_remove_segment(arena *a, arena_segment *s) {
    /* An empty segment is exactly one free block. */
    arena_block *b = s->first;
    bin_remove(a, b);
    free(b);
    if (s->prev)
        s->prev->next = s->next;
    else
        a->segments = s->next;
    if (s->next) s->next->prev = s->prev;
    a->nsegments--;
    a->total -= s->size;
    void *base = s->base;
    free(s);
    return base;
}

/* Bytes a free block must skip at its start so that the absolute address is aligned. */
static size_t pad_for(const arena_block *b, size_t align) {
    uintptr_t addr = (uintptr_t)b->seg->base + b->offset;
    return (size_t)((align - (addr & (align - 1))) & (align - 1));
}

static int fits(const arena_block *b, size_t size, size_t align) {
    size_t pad = pad_for(b, align);
    return b->size >= pad && b->size - pad >= size;
}

/* First free block in a bin whose class is at least (fl, sl). */
static arena_block *find_from(const arena *a, unsigned fl, unsigned sl) {
    if (fl >= ARENA_FL) return NULL;
    unsigned slmap = a->sl_bitmap[fl] & (unsigned)(~0u << sl) & 0xffu;
    if (!slmap) {
        uint64_t flmap = fl + 1 < 64 ? a->fl_bitmap & (~(uint64_t)0 << (fl + 1)) : 0;
        if (!flmap) return NULL;
        fl = (unsigned)__builtin_ctzll(flmap);
        slmap = a->sl_bitmap[fl];
    }
    sl = (unsigned)__builtin_ctz(slmap);
    return a->bins[fl][sl];
}

static arena_block *find_block(const arena *a, size_t size, size_t align) {
    /* Fast path: a bin whose smallest member holds size + worst-case padding. */
    size_t slack = align > ARENA_GRAIN ? align - ARENA_GRAIN : 0;
    if (size <= SIZE_MAX - slack - ARENA_GRAIN * 8) {
        size_t want = size + slack;
        size_t u = want / ARENA_GRAIN;
        if (u >= ARENA_SL) {
            /* round up to the next class boundary so every block in the bin fits */
            size_t step = (size_t)1 << (log2_floor(u) - 3);
            want = (u + step - 1) / step * step * ARENA_GRAIN;
        }
        unsigned fl, sl;
        bin_of(want, &fl, &sl);
        arena_block *b = find_from(a, fl, sl);
        if (b && fits(b, size, align)) return b;
    }
    /* Exact path: blocks in the request's own bin (or any bin when alignment padding matters) may
     * still fit; scan them so that a hole that fits is never missed. */
    unsigned fl, sl;
    bin_of(size, &fl, &sl);
    for (unsigned f = fl; f < ARENA_FL; f++) {
        if (!(a->fl_bitmap & ((uint64_t)1 << f))) continue;
        for (unsigned s = (f == fl ? sl : 0); s < ARENA_SL; s++)
            for (arena_block *b = a->bins[f][s]; b; b = b->free_next)
                if (fits(b, size, align)) return b;
        if (slack == 0 && f > fl) break; /* without padding, any block of a higher class fits */
    }
    return NULL;
}

/* Takes [b->offset + pad, + size) of the free block b for owner; what is left on either side stays
 * free. */
static int carve(arena *a, arena_block *b, size_t pad, size_t size, void *owner, arena_block **out) {
    size_t tail = b->size - pad - size;
    /* Reserve the bookkeeping first so a host OOM leaves the arena untouched. */
    arena_block *head_blk = NULL, *tail_blk = NULL;
    if (pad && !(head_blk = calloc(1, sizeof(*head_blk)))) return VC_ERR_NO_MEMORY;
    if (tail && !(tail_blk = calloc(1, sizeof(*tail_blk)))) {
        free(head_blk);
        return VC_ERR_NO_MEMORY;
    }
    bin_remove(a, b);
    if (head_blk) { /* leading padding stays free, before b */
        head_blk->offset = b->offset;
        head_blk->size = pad;
        head_blk->seg = b->seg;
        head_blk->prev = b->prev;
        head_blk->next = b;
        if (b->prev)
            b->prev->next = head_blk;
        else
            b->seg->first = head_blk;
        b->prev = head_blk;
        b->offset += pad;
        b->size -= pad;
        bin_insert(a, head_blk);
    }
    if (tail_blk) {
        tail_blk->offset = b->offset + size;
        tail_blk->size = tail;
        tail_blk->seg = b->seg;
        tail_blk->prev = b;
        tail_blk->next = b->next;
        if (b->next) b->next->prev = tail_blk;
        b->next = tail_blk;
        b->size = size;
        bin_insert(a, tail_blk);
    }
    b->owner = owner;
    if (b->size < b->seg->min_owned) b->seg->min_owned = b->size;
    b->seg->used += b->size;
    a->used += b->size;
    *out = b;
    ARENA_VALIDATE(a);
    return VC_OK;
}

int arena_alloc(arena *a, size_t size, size_t align, void *owner, arena_block **out) {
    size = arena_round(size);
    if (align < ARENA_GRAIN) align = ARENA_GRAIN;
    arena_block *b = find_block(a, size, align);
    if (!b) return VC_ERR_OUT_OF_VRAM;
    return carve(a, b, pad_for(b, align), size, owner, out);
}

arena_segment *arena_segment_by_gen(const arena *a, uint64_t gen) {
    for (arena_segment *s = a->segments; s; s = s->next)
        if (s->gen == gen) return s;
    return NULL;
}

int arena_alloc_at(arena *a, arena_segment *seg, size_t offset, size_t size, void *owner, arena_block **out) {
    return arena_alloc_at_from(a, seg, NULL, offset, size, owner, out);
}

int arena_alloc_at_from(arena *a, arena_segment *seg, arena_block *from, size_t offset, size_t size, void *owner,
                        arena_block **out) {
    size = arena_round(size);
    if (offset & (ARENA_GRAIN - 1) || offset > seg->size || seg->size - offset < size) return VC_ERR_OUT_OF_VRAM;
    arena_block *b = from && from->seg == seg && from->offset <= offset ? from : seg->first;
    while (b && b->offset + b->size <= offset) b = b->next;
    if (!b || b->owner || b->offset + b->size - offset < size) return VC_ERR_OUT_OF_VRAM;
    return carve(a, b, offset - b->offset, size, owner, out);
}

void arena_free(arena *a, arena_block *b) {
    b->seg->used -= b->size;
    if (b->seg->used == 0) b->seg->min_owned = SIZE_MAX;
    a->used -= b->size;
    b->owner = NULL;
    arena_block *p = b->prev, *n = b->next;
    if (p && !p->owner) { /* absorb b into p */
        bin_remove(a, p);
        p->size += b->size;
        p->next = n;
        if (n) n->prev = p;
        free(b);
        b = p;
    }
    if (n && !n->owner) {
        bin_remove(a, n);
        b->size += n->size;
        b->next = n->next;
        if (n->next) n->next->prev = b;
        free(n);
    }
    bin_insert(a, b);
    ARENA_VALIDATE(a);
}

int arena_find_window(const arena *a, size_t size, size_t align,
                      int (*evictable)(void *owner, void *ud), void *ud,
                      arena_block **first, arena_block **last) {
    return arena_find_window_cost(a, size, align, evictable, NULL, ud, first, last);
}

int arena_find_window_cost(const arena *a, size_t size, size_t align,
                           int (*evictable)(void *owner, void *ud), size_t (*costf)(void *owner, void *ud),
                           void *ud, arena_block **first, arena_block **last) {
    size = arena_round(size);
    if (align < ARENA_GRAIN) align = ARENA_GRAIN;
    size_t best_cost = SIZE_MAX;
    int found = 0;
    for (const arena_segment *s = a->segments; s; s = s->next) {
        /* Every run here costs at least the owned bytes it needs beyond the segment's free ones, and
         * where those fall short of the request it holds an owned block, of min_owned bytes or
         * more. A segment that cannot beat the best run so far (a strictly cheaper one replaces it)
         * is skipped: with a model of thousands of equal layers whose segments each end in a sliver
         * too small for one more, the first segment's run is as cheap as any, and the search walks
         * one segment instead of every block at every placement. */
        size_t seg_free = s->size - s->used;
        if (found && seg_free < size) {
            size_t lb = size - seg_free;
            if (s->min_owned > lb) lb = s->min_owned;
            if (lb >= best_cost) continue;
        }
        /* Sliding window over the blocks in address order: [lo, hi]. */
        arena_block *lo = s->first;
        size_t cost = 0; /* owned bytes inside the window */
        for (arena_block *hi = s->first; hi; hi = hi->next) {
            if (hi->owner && !evictable(hi->owner, ud)) {
                lo = hi->next;
                cost = 0;
                continue;
            }
            if (hi->owner) cost += costf ? costf(hi->owner, ud) : hi->size;
            for (;;) {
                uintptr_t start = (uintptr_t)s->base + lo->offset;
                size_t pad = (size_t)((align - (start & (align - 1))) & (align - 1));
                size_t span = hi->offset + hi->size - lo->offset;
                if (span < pad || span - pad < size) break;
                if (cost < best_cost) {
                    best_cost = cost;
                    *first = lo;
                    *last = hi;
                    found = 1;
                }
                /* shrink from the left while the window still holds the request */
                if (lo == hi) break;
                if (lo->owner) cost -= costf ? costf(lo->owner, ud) : lo->size;
                lo = lo->next;
            }
        }
    }
    return found;
}

#ifdef VC_ARENA_DEBUG
#include <stdio.h>
/* Checks every structural invariant; aborts with a message on the first violation. */
void arena_validate(const arena *a);
void arena_validate(const arena *a) {
    size_t total = 0, used = 0, free_blocks = 0;
    for (const arena_segment *s = a->segments; s; s = s->next) {
        total += s->size;
        size_t off = 0, sused = 0;
        const arena_block *prev = NULL;
        for (const arena_block *b = s->first; b; b = b->next) {
            if (b->seg != s || b->prev != prev || b->offset != off || b->size == 0) {
                fprintf(stderr, "arena: block chain broken\n");
                abort();
            }
            if (!b->owner) {
                free_blocks++;
                if (prev && !prev->owner) {
                    fprintf(stderr, "arena: adjacent free blocks not merged\n");
                    abort();
                }
            } else {
                sused += b->size;
                if (b->size < s->min_owned) {
                    fprintf(stderr, "arena: a block is smaller than its segment's min_owned\n");
                    abort();
                }
            }
            off += b->size;
            prev = b;
        }
        if (off != s->size || sused != s->used) {
            fprintf(stderr, "arena: segment sizes wrong\n");
            abort();
        }
        used += sused;
    }
    size_t in_bins = 0;
    for (unsigned f = 0; f < ARENA_FL; f++)
        for (unsigned s = 0; s < ARENA_SL; s++)
            for (const arena_block *b = a->bins[f][s]; b; b = b->free_next) {
                unsigned bf, bs;
                bin_of(b->size, &bf, &bs);
                if (b->owner || bf != f || bs != s || ++in_bins > free_blocks) {
                    fprintf(stderr, "arena: bin %u/%u holds a wrong or repeated block\n", f, s);
                    abort();
                }
            }
    if (total != a->total || used != a->used || in_bins != free_blocks) {
        fprintf(stderr, "arena: totals wrong (%zu/%zu, %zu/%zu, %zu/%zu)\n", total, a->total, used, a->used,
                in_bins, free_blocks);
        abort();
    }
}
#endif
