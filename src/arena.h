/*
 * Offset allocator over device memory segments.
 *
 * Device memory is taken from the backend in segments (rarely: allocation may synchronise the
 * device) and sub-allocated here, so the hot path never calls the driver's allocator. All
 * bookkeeping lives in host memory: blocks are host structs describing [offset, offset+size) of a
 * segment. Free blocks sit in size-segregated lists (TLSF-style: 8 sub-classes per power of two)
 * found through two bitmaps, so allocation and free are O(1) apart from the rare exact-bin scan.
 *
 * Not thread-safe: the cache serialises calls under its lock.
 */
#ifndef VC_ARENA_H
#define VC_ARENA_H

#include <stddef.h>
#include <stdint.h>

/** Every block starts and ends on this boundary (cudaMalloc's guarantee). */
#define ARENA_GRAIN ((size_t)256)

typedef struct arena_segment arena_segment;
typedef struct arena_block arena_block;

struct arena_block {
    size_t offset;                      /* from the segment's base */
    size_t size;                        /* multiple of ARENA_GRAIN */
    arena_block *prev, *next;           /* neighbours in address order within the segment */
    arena_block *free_prev, *free_next; /* bin list links; valid only while free */
    arena_segment *seg;
    void *owner;                        /* NULL when free */
};

struct arena_segment {
    void *base;
    size_t size;
    size_t used;         /* bytes in owned blocks */
    arena_block *first;  /* lowest block */
    uint64_t gen;        /* unique within its arena: names it safely after others come and go */
    size_t min_owned;    /* at most the smallest owned block (the smallest carved since the
                          * segment was last empty; SIZE_MAX then): bounds arena_find_window */
    arena_segment *prev, *next;
};

#define ARENA_FL 64
#define ARENA_SL 8

typedef struct arena {
    arena_segment *segments;
    size_t nsegments;
    size_t total; /* bytes of all segments */
    size_t used;  /* bytes in owned blocks */
    uint64_t next_gen; /* the gen of the next segment added (from 1) */
    uint64_t fl_bitmap;
    uint8_t sl_bitmap[ARENA_FL];
    arena_block *bins[ARENA_FL][ARENA_SL];
} arena;

void arena_init(arena *a);

/** Adds [base, base+size) as a segment (size a multiple of ARENA_GRAIN). Returns 0 or
 *  VC_ERR_NO_MEMORY (host bookkeeping). */
int arena_add_segment(arena *a, void *base, size_t size);

/** Removes an empty segment (used == 0) and returns its base for the caller to free. */
void *arena_remove_segment(arena *a, arena_segment *seg);

/** Allocates `size` bytes (rounded up to ARENA_GRAIN) aligned to `align` (power of two) on the
 *  absolute address. Returns 0 and *out, VC_ERR_OUT_OF_VRAM when no hole fits, or
 *  VC_ERR_NO_MEMORY when host bookkeeping fails. `owner` must be non-NULL. */
int arena_alloc(arena *a, size_t size, size_t align, void *owner, arena_block **out);

/** Allocates `size` bytes (rounded up to ARENA_GRAIN) at exactly `offset` (a multiple of
 *  ARENA_GRAIN) of segment `seg` of `a`. Returns 0 and *out, VC_ERR_OUT_OF_VRAM when that range is
 *  not wholly inside one free block, or VC_ERR_NO_MEMORY when host bookkeeping fails. */
int arena_alloc_at(arena *a, arena_segment *seg, size_t offset, size_t size, void *owner, arena_block **out);
/** The same, searching for the block that holds `offset` from `from` (a live block of seg at or
 *  below offset; NULL or any other: from the segment's first block), so callers that know a block
 *  near the place do not walk the whole segment. */
int arena_alloc_at_from(arena *a, arena_segment *seg, arena_block *from, size_t offset, size_t size, void *owner,
                        arena_block **out);

/** The segment of `a` whose gen is `gen`, or NULL when it is gone. O(segments). */
arena_segment *arena_segment_by_gen(const arena *a, uint64_t gen);

/** Returns a block to its segment, merging with free neighbours. */
void arena_free(arena *a, arena_block *b);

static inline void *arena_block_ptr(const arena_block *b) {
    return (char *)b->seg->base + b->offset;
}

/** Size arena_alloc() rounds a request to. Saturates at SIZE_MAX & ~(GRAIN-1). */
size_t arena_round(size_t size);

/** Looks for a run of neighbouring blocks in one segment whose combined span holds an aligned
 *  request of `size` bytes, where every owned block in the run satisfies `evictable`. Picks the run
 *  whose owned bytes are fewest (the first in segment and address order among equals). Returns 1
 *  and the run's first/last blocks, or 0 when none exists. Segments that cannot hold a cheaper run
 *  than one already found are not walked (see arena_find_window_cost). */
int arena_find_window(const arena *a, size_t size, size_t align,
                      int (*evictable)(void *owner, void *ud), void *ud,
                      arena_block **first, arena_block **last);

/** As arena_find_window, with the cost of evicting each owner given by `cost` (owned bytes when
 *  NULL). `cost` must be at least the owner's block size: the search skips a segment whose free
 *  bytes fall short of the request when its smallest owned block (or the owned bytes the request
 *  needs beyond the free ones) already costs no less than the best run found. */
int arena_find_window_cost(const arena *a, size_t size, size_t align,
                           int (*evictable)(void *owner, void *ud), size_t (*cost)(void *owner, void *ud),
                           void *ud, arena_block **first, arena_block **last);

/** Total size of free blocks (all segments). */
static inline size_t arena_free_bytes(const arena *a) { return a->total - a->used; }

#endif /* VC_ARENA_H */
