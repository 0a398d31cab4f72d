/* The offset allocator: placement, alignment, coalescing, windows, and a randomized comparison
 * against a byte map of what is owned. */
#include "arena.h"
#include "test_util.h"

static char base_mem[1 << 20] __attribute__((aligned(4096)));

static void test_alloc_free_coalesce(void **state) {
    (void)state;
    arena a;
    arena_init(&a);
    assert_int_equal(arena_add_segment(&a, base_mem, 64 * KB), VC_OK);
    arena_block *b1, *b2, *b3;
    int o1, o2, o3;
    assert_int_equal(arena_alloc(&a, 1000, 256, &o1, &b1), VC_OK);
    assert_int_equal(b1->size, 1024); /* rounded to the grain */
    assert_int_equal(arena_alloc(&a, 16 * KB, 256, &o2, &b2), VC_OK);
    assert_int_equal(arena_alloc(&a, 47 * KB, 256, &o3, &b3), VC_OK);
    assert_int_equal(a.used, 1024 + 16 * KB + 47 * KB);
    arena_block *none;
    assert_int_equal(arena_alloc(&a, 1 * KB, 256, &o1, &none), VC_ERR_OUT_OF_VRAM);
    arena_free(&a, b2);
    arena_free(&a, b1);
    /* b1 and b2 merged: a 17 KB hole at the start */
    arena_block *b4;
    assert_int_equal(arena_alloc(&a, 17 * KB, 256, &o2, &b4), VC_OK);
    assert_ptr_equal(arena_block_ptr(b4), base_mem);
    arena_free(&a, b4);
    arena_free(&a, b3);
    assert_int_equal(a.used, 0);
    assert_non_null(a.segments);
    assert_null(a.segments->first->next); /* one free block again */
    assert_ptr_equal(arena_remove_segment(&a, a.segments), base_mem);
    assert_int_equal(a.total, 0);
}

static void test_alignment(void **state) {
    (void)state;
    arena a;
    arena_init(&a);
    assert_int_equal(arena_add_segment(&a, base_mem + 256, 256 * KB), VC_OK);
    arena_block *b1, *b2;
    int o;
    assert_int_equal(arena_alloc(&a, 512, 256, &o, &b1), VC_OK);
    assert_int_equal(arena_alloc(&a, 4 * KB, 64 * KB, &o, &b2), VC_OK);
    assert_int_equal((uintptr_t)arena_block_ptr(b2) % (64 * KB), 0);
    arena_free(&a, b1);
    arena_free(&a, b2);
    assert_int_equal(a.used, 0);
    assert_null(a.segments->first->next);
    arena_remove_segment(&a, a.segments);
}

static void test_exact_fit_never_missed(void **state) {
    (void)state;
    /* A hole whose size class is the request's own class must be found. */
    arena a;
    arena_init(&a);
    assert_int_equal(arena_add_segment(&a, base_mem, 100 * KB), VC_OK);
    arena_block *x, *y, *z;
    int o;
    assert_int_equal(arena_alloc(&a, 40 * KB, 256, &o, &x), VC_OK);
    assert_int_equal(arena_alloc(&a, 37 * KB + 256, 256, &o, &y), VC_OK);
    assert_int_equal(arena_alloc(&a, 100 * KB - 77 * KB - 256, 256, &o, &z), VC_OK);
    arena_free(&a, y); /* hole of 37.25 KB */
    arena_block *w;
    assert_int_equal(arena_alloc(&a, 37 * KB + 256, 256, &o, &w), VC_OK);
    assert_ptr_equal(w, y == w ? w : w); /* found */
    assert_int_equal(w->offset, 40 * KB);
    arena_free(&a, w);
    arena_free(&a, x);
    arena_free(&a, z);
    arena_remove_segment(&a, a.segments);
}

static int evictable_if_odd(void *owner, void *ud) {
    (void)ud;
    return (int)(intptr_t)owner & 1;
}

static void test_find_window(void **state) {
    (void)state;
    arena a;
    arena_init(&a);
    assert_int_equal(arena_add_segment(&a, base_mem, 8 * KB), VC_OK);
    /* blocks of 1 KB owned by 1..8: odd owners evictable */
    arena_block *b[8];
    for (intptr_t i = 0; i < 8; i++) assert_int_equal(arena_alloc(&a, KB, 256, (void *)(i + 1), &b[i]), VC_OK);
    arena_block *f, *l;
    /* need 1 KB: any single odd block qualifies */
    assert_true(arena_find_window(&a, KB, 256, evictable_if_odd, NULL, &f, &l));
    assert_ptr_equal(f, l);
    assert_true((intptr_t)f->owner & 1);
    /* need 2 KB: no two neighbours are both odd */
    assert_false(arena_find_window(&a, 2 * KB, 256, evictable_if_odd, NULL, &f, &l));
    /* free block 2 (owner 2, even): now blocks 1,2,3 form a 3 KB run costing 2 KB */
    arena_free(&a, b[1]);
    assert_true(arena_find_window(&a, 2 * KB, 256, evictable_if_odd, NULL, &f, &l));
    assert_int_equal(f->offset + 0, 0);
    assert_true(l->offset + l->size - f->offset >= 2 * KB);
    for (int i = 0; i < 8; i++)
        if (i != 1) arena_free(&a, b[i]);
    arena_remove_segment(&a, a.segments);
}

static int evictable_if_positive(void *owner, void *ud) {
    (void)ud;
    return (intptr_t)owner > 0;
}

/* Segments of equal layers, each ending in a sliver too small for one more (a model registered
 * tensor by tensor): the first segment's run is as cheap as any other, and later segments are
 * passed over; a segment where a cheaper run exists is still searched, though its free bytes fall
 * short of the request, and its run is chosen. */
static void test_find_window_passes_over_segments(void **state) {
    (void)state;
    arena a;
    arena_init(&a);
    /* searched last (segments are searched newest first): a 3840-byte block, a 256-byte sliver,
     * and a block that cannot move */
    assert_int_equal(arena_add_segment(&a, base_mem, 8 * KB), VC_OK);
    arena_segment *cheap = a.segments;
    arena_block *c1, *c2;
    assert_int_equal(arena_alloc_at(&a, cheap, 0, 3840, (void *)(intptr_t)1, &c1), VC_OK);
    assert_int_equal(arena_alloc_at(&a, cheap, 4 * KB, 4 * KB, (void *)(intptr_t)-1, &c2), VC_OK);
    /* searched first: two segments of four 4 KB blocks and a sliver */
    arena_block *blk[2][4];
    for (int s = 0; s < 2; s++) {
        assert_int_equal(arena_add_segment(&a, base_mem + (s + 1) * 32 * KB, 16 * KB + 256), VC_OK);
        for (int i = 0; i < 4; i++)
            assert_int_equal(arena_alloc_at(&a, a.segments, (size_t)i * 4 * KB, 4 * KB,
                                            (void *)(intptr_t)(2 + 4 * s + i), &blk[s][i]), VC_OK);
    }
    arena_block *f, *l;
    /* 4 KB: 3840 owned bytes beside the sliver beat any 4 KB block */
    assert_true(arena_find_window(&a, 4 * KB, 256, evictable_if_positive, NULL, &f, &l));
    assert_ptr_equal(f, c1);
    assert_ptr_equal(l, c1->next);
    /* with that block unmovable, the first 4 KB block of the newest segment, as a full walk finds */
    c1->owner = (void *)(intptr_t)-2;
    assert_true(arena_find_window(&a, 4 * KB, 256, evictable_if_positive, NULL, &f, &l));
    assert_ptr_equal(f, blk[1][0]);
    assert_ptr_equal(l, blk[1][0]);
    c1->owner = (void *)(intptr_t)1;
    for (int s = 0; s < 2; s++)
        for (int i = 0; i < 4; i++) arena_free(&a, blk[s][i]);
    arena_free(&a, c1);
    arena_free(&a, c2);
    while (a.segments) arena_remove_segment(&a, a.segments);
}

/* Placement at a given offset: inside one free block only; the rest of the block stays free on
 * both sides. */
static void test_alloc_at(void **state) {
    (void)state;
    arena a;
    arena_init(&a);
    assert_int_equal(arena_add_segment(&a, base_mem, 64 * KB), VC_OK);
    arena_segment *seg = a.segments;
    arena_block *x, *y, *none;
    int o;
    assert_int_equal(arena_alloc_at(&a, seg, 8 * KB, 4 * KB, &o, &x), VC_OK);
    assert_ptr_equal(arena_block_ptr(x), base_mem + 8 * KB);
    assert_int_equal(x->size, 4 * KB);
    assert_non_null(x->prev); /* [0, 8 KB) stays free before it */
    assert_null(x->prev->owner);
    assert_int_equal(x->prev->size, 8 * KB);
    /* overlapping an owned block, past the end, or off the grain: refused, nothing changes */
    assert_int_equal(arena_alloc_at(&a, seg, 10 * KB, 4 * KB, &o, &none), VC_ERR_OUT_OF_VRAM);
    assert_int_equal(arena_alloc_at(&a, seg, 6 * KB, 4 * KB, &o, &none), VC_ERR_OUT_OF_VRAM);
    assert_int_equal(arena_alloc_at(&a, seg, 62 * KB, 4 * KB, &o, &none), VC_ERR_OUT_OF_VRAM);
    assert_int_equal(arena_alloc_at(&a, seg, 65 * KB, KB, &o, &none), VC_ERR_OUT_OF_VRAM);
    assert_int_equal(arena_alloc_at(&a, seg, 100, KB, &o, &none), VC_ERR_OUT_OF_VRAM);
    assert_int_equal(a.used, 4 * KB);
    /* right against it, and at the very end */
    assert_int_equal(arena_alloc_at(&a, seg, 12 * KB, 1000, &o, &y), VC_OK);
    assert_ptr_equal(y->prev, x);
    assert_int_equal(y->size, 1024);
    arena_block *z;
    assert_int_equal(arena_alloc_at(&a, seg, 60 * KB, 4 * KB, &o, &z), VC_OK);
    assert_null(z->next);
    /* ordinary allocation still finds the holes left around them */
    arena_block *w;
    assert_int_equal(arena_alloc(&a, 8 * KB, 256, &o, &w), VC_OK);
    arena_free(&a, w);
    arena_free(&a, x);
    arena_free(&a, z);
    arena_free(&a, y);
    assert_int_equal(a.used, 0);
    assert_null(seg->first->next);
    arena_remove_segment(&a, seg);
}

/* Segments are named by a gen that is never reused, so a name kept across a segment's removal
 * finds nothing rather than a newcomer at the same address. */
static void test_segment_gen(void **state) {
    (void)state;
    arena a;
    arena_init(&a);
    assert_int_equal(arena_add_segment(&a, base_mem, 64 * KB), VC_OK);
    uint64_t g1 = a.segments->gen;
    assert_ptr_equal(arena_segment_by_gen(&a, g1), a.segments);
    arena_remove_segment(&a, a.segments);
    assert_int_equal(arena_add_segment(&a, base_mem, 64 * KB), VC_OK);
    assert_int_not_equal(a.segments->gen, g1);
    assert_null(arena_segment_by_gen(&a, g1));
    assert_null(arena_segment_by_gen(&a, 0));
    assert_ptr_equal(arena_segment_by_gen(&a, a.segments->gen), a.segments);
    arena_remove_segment(&a, a.segments);
}

/* The window search as it was before segments could be skipped (a sliding window over every
 * block): arena_find_window_cost must return the same run, ties included. */
static int reference_window(const arena *a, size_t size, size_t align, int (*evictable)(void *, void *),
                            size_t (*costf)(void *, void *), arena_block **first, arena_block **last) {
    size = arena_round(size);
    size_t best = SIZE_MAX;
    int found = 0;
    for (const arena_segment *s = a->segments; s; s = s->next) {
        arena_block *lo = s->first;
        size_t cost = 0;
        for (arena_block *hi = s->first; hi; hi = hi->next) {
            if (hi->owner && !evictable(hi->owner, NULL)) {
                lo = hi->next;
                cost = 0;
                continue;
            }
            if (hi->owner) cost += costf ? costf(hi->owner, NULL) : hi->size;
            for (;;) {
                uintptr_t start = (uintptr_t)s->base + lo->offset;
                size_t pad = (size_t)((align - (start & (align - 1))) & (align - 1));
                size_t span = hi->offset + hi->size - lo->offset;
                if (span < pad || span - pad < size) break;
                if (cost < best) {
                    best = cost;
                    *first = lo;
                    *last = hi;
                    found = 1;
                }
                if (lo == hi) break;
                if (lo->owner) cost -= costf ? costf(lo->owner, NULL) : lo->size;
                lo = lo->next;
            }
        }
    }
    return found;
}

static int evictable_unless_7(void *owner, void *ud) {
    (void)ud;
    return (intptr_t)owner % 7 != 0;
}

/* At least any block's bytes (blocks here are at most 12 KB), as the cache's costs are; some
 * owners cost twice as much. */
static size_t cost_by_owner(void *owner, void *ud) {
    (void)ud;
    return (intptr_t)owner % 3 == 0 ? 2 * 16384 : 16384 + (size_t)(intptr_t)owner;
}

/* Random allocations and frees over three segments, checked against an ownership map. */
static void test_random_against_map(void **state) {
    (void)state;
    enum { SEG = 64 * 1024, NSEG = 3, N = 64 };
    arena a;
    arena_init(&a);
    for (int s = 0; s < NSEG; s++) assert_int_equal(arena_add_segment(&a, base_mem + s * SEG, SEG), VC_OK);
    static unsigned char owner_map[NSEG * SEG];
    memset(owner_map, 0, sizeof owner_map);
    arena_block *live[N] = {0};
    int placed_at = 0, refused_at = 0, windows_found = 0;
    unsigned seed = 12345;
    for (int step = 0; step < 20000; step++) {
        seed = seed * 1103515245u + 12345u;
        int i = (int)((seed >> 8) % N);
        if (live[i]) {
            char *p = arena_block_ptr(live[i]);
            size_t off = (size_t)(p - base_mem);
            for (size_t k = 0; k < live[i]->size; k++) {
                assert_int_equal(owner_map[off + k], i + 1);
                owner_map[off + k] = 0;
            }
            arena_free(&a, live[i]);
            live[i] = NULL;
        } else if ((seed >> 20) % 4 == 0) {
            /* at a chosen offset: succeeds exactly when the range is free (free blocks coalesce,
             * so a free range lies in one block) */
            size_t size = arena_round(1 + (seed >> 12) % (12 * 1024));
            int sidx = (int)((seed >> 24) % NSEG);
            size_t off = ((seed >> 3) % (SEG / 256)) * 256;
            arena_segment *sg = a.segments;
            while (sg && sg->base != base_mem + sidx * SEG) sg = sg->next;
            assert_non_null(sg);
            int is_free = off + size <= SEG;
            for (size_t k = 0; is_free && k < size; k++) is_free = owner_map[sidx * SEG + off + k] == 0;
            int st = arena_alloc_at(&a, sg, off, size, (void *)(intptr_t)(i + 1), &live[i]);
            assert_int_equal(st, is_free ? VC_OK : VC_ERR_OUT_OF_VRAM);
            placed_at += st == VC_OK;
            refused_at += st != VC_OK;
            if (st != VC_OK) {
                live[i] = NULL;
                continue;
            }
            assert_ptr_equal(arena_block_ptr(live[i]), base_mem + sidx * SEG + off);
            assert_int_equal(live[i]->size, size);
            for (size_t k = 0; k < size; k++) owner_map[sidx * SEG + off + k] = (unsigned char)(i + 1);
        } else {
            size_t size = 1 + (seed >> 12) % (12 * 1024);
            size_t align = (size_t)256 << ((seed >> 4) % 4);
            int st = arena_alloc(&a, size, align, (void *)(intptr_t)(i + 1), &live[i]);
            if (st == VC_ERR_OUT_OF_VRAM) {
                live[i] = NULL;
                continue;
            }
            assert_int_equal(st, VC_OK);
            char *p = arena_block_ptr(live[i]);
            assert_int_equal((uintptr_t)p % align, 0);
            assert_true(live[i]->size >= size);
            size_t off = (size_t)(p - base_mem);
            for (size_t k = 0; k < live[i]->size; k++) {
                assert_int_equal(owner_map[off + k], 0);
                owner_map[off + k] = (unsigned char)(i + 1);
            }
        }
        size_t used = 0;
        for (int k = 0; k < N; k++) used += live[k] ? live[k]->size : 0;
        assert_int_equal(a.used, used);
        if (step % 7 == 0) { /* the window search skips segments yet finds the reference's run */
            size_t size = 1 + (seed >> 5) % (24 * 1024), align = (size_t)256 << ((seed >> 9) % 3);
            size_t (*costf)(void *, void *) = (seed >> 14) & 1 ? cost_by_owner : NULL;
            arena_block *f = NULL, *l = NULL, *rf = NULL, *rl = NULL;
            int got = arena_find_window_cost(&a, size, align, evictable_unless_7, costf, NULL, &f, &l);
            int want = reference_window(&a, size, align, evictable_unless_7, costf, &rf, &rl);
            assert_int_equal(got, want);
            if (want) {
                assert_ptr_equal(f, rf);
                assert_ptr_equal(l, rl);
            }
            windows_found += want;
        }
    }
    assert_true(placed_at > 100 && refused_at > 100); /* both outcomes were exercised */
    assert_true(windows_found > 100);
    for (int k = 0; k < N; k++)
        if (live[k]) arena_free(&a, live[k]);
    assert_int_equal(a.used, 0);
    while (a.segments) {
        assert_null(a.segments->first->next);
        arena_remove_segment(&a, a.segments);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_alloc_free_coalesce),
        cmocka_unit_test(test_alignment),
        cmocka_unit_test(test_exact_fit_never_missed),
        cmocka_unit_test(test_find_window),
        cmocka_unit_test(test_find_window_passes_over_segments),
        cmocka_unit_test(test_alloc_at),
        cmocka_unit_test(test_segment_gen),
        cmocka_unit_test(test_random_against_map),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
