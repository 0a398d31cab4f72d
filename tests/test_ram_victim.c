/*
 * The RAM victim index (src/ram_victim.c). White-box: each test drives a cache through the public
 * API and, after each acquire (every 7th in the longest order), asks both the index
 * (vc__ram_victim_indexed) and the walk of every RAM copy (vc__sched_ram_victim_walk) which copy
 * they would drop, once with every copy droppable and once with a pseudo-random third of them held
 * back (so both must skip the same ones), with and without a layer set aside. Wherever the index
 * answers it must name the walk's copy; and it must answer in the steady state of the passes it
 * exists for (a model, or a step group of two, whose pass streams more than the RAM cache holds),
 * leaving to the walk only what the walk alone can tell: copies of a model not in use, a layer used
 * twice per pass.
 */
#include <stdlib.h>

#include "cache_internal.h" /* white-box: the two answers */
#include "test_util.h"

static unsigned salt; /* changes which copies some_copies holds back */

static int every_copy(vc_cache *c, layer_t *l) {
    (void)c;
    return l->ram != NULL;
}

static int some_copies(vc_cache *c, layer_t *l) {
    (void)c;
    uint64_t h = (l->id ^ salt) * 0x9E3779B97F4A7C15ull;
    return l->ram != NULL && (h >> 60) % 3 != 0;
}

typedef struct tally {
    unsigned answered, walked; /* questions the index answered, and left to the walk */
} tally;

static layer_t *layer_of(vc_cache *c, vc_layer_id id) { return slot_table_get(&c->layers, id); }

/* Asks both, with each rule, for `exclude` (may be NULL). */
static void ask(vc_cache *c, const layer_t *exclude, tally *t) {
    int (*rules[2])(vc_cache *, layer_t *) = {every_copy, some_copies};
    for (int r = 0; r < 2; r++) {
        salt++;
        layer_t *x = NULL;
        int answered = vc__ram_victim_indexed(c, exclude, rules[r], &x);
        layer_t *w = vc__sched_ram_victim_walk(c, exclude, rules[r]);
        if (!answered) {
            t->walked++;
            continue;
        }
        t->answered++;
        if (x != w)
            fail_msg("the index chose %s (position %zu), the walk %s (position %zu)", x ? x->name : "nothing",
                     x ? x->order_pos : 0, w ? w->name : "nothing", w ? w->order_pos : 0);
    }
}

/* Acquires and releases layer `id`, then asks with nothing set aside and with `aside` set aside. */
static void run_layer(vc_cache *c, vc_layer_id id, vc_layer_id aside, tally *t) {
    void *p;
    assert_int_equal(vc_layer_acquire(c, id, NULL, &p), VC_OK);
    assert_int_equal(vc_layer_release(c, id, NULL), VC_OK);
    ask(c, NULL, t);
    ask(c, layer_of(c, aside), t);
}

/* (Every test here streams more than its RAM cache holds on purpose: the warning would be noise.) */
static void warnings_expected(void *user, vc_log_level level, const char *msg) {
    (void)user, (void)level, (void)msg;
}

/* A balanced, planned cache on the host backend (whatever VC_TEST_BACKEND says: the questions here
 * are about the cache's own records, and the host's copies finish at once, so a test knows which
 * copies exist when it asks) whose RAM cache holds `ram` bytes. */
static test_cache make_small_cache(size_t vram, size_t ram) {
    vc_cache_options o;
    vc_cache_options_init(&o);
    o.log_fn = warnings_expected;
    o.ram_budget = ram;
    o.vram_budget = vram;
    o.working_mem = 0;
    o.keep_ram_copy = 1;
    o.arena_segment_bytes = 64 * KB;
    o.offload_mode = VC_OFFLOAD_MODE_BALANCED;
    o.policy = VC_POLICY_PLANNED;
    test_cache t = {0};
    assert_int_equal(vc_backend_host_create(4 * MB, &t.backend), VC_OK);
    o.backend = t.backend;
    assert_int_equal(vc_cache_create(&o, &t.cache), VC_OK);
    return t;
}

/* n layers of 8-24 KB (varied, so the plan keeps some and streams the rest). */
static void add_layers(vc_cache *c, vc_model_id m, int n, test_loader *ld, vc_layer_id *ids) {
    for (int i = 0; i < n; i++) {
        ld[i] = (test_loader){.seed = (uint64_t)i + 1};
        ids[i] = add_loader_layer(c, m, "layer", 8 * KB + (size_t)(i * 7 % 5) * 4 * KB, &ld[i]);
    }
}

/* Two models of na and nb layers (at most 32 each). */
typedef struct two_models {
    vc_model_id id[2];
    test_loader ld[2][32];
    vc_layer_id layer[2][32];
} two_models;

static void add_two_models(vc_cache *c, two_models *w, const char *a, int na, const char *b, int nb) {
    w->id[0] = add_model(c, a);
    w->id[1] = add_model(c, b);
    add_layers(c, w->id[0], na, w->ld[0], w->layer[0]);
    add_layers(c, w->id[1], nb, w->ld[1], w->layer[1]);
}

static void test_one_model_streaming_more_than_ram_holds(void **state) {
    (void)state;
    enum { N = 40, PASSES = 8 };
    test_cache t = make_small_cache(200 * KB, 256 * KB); /* the model is 640 KB */
    vc_model_id m = add_model(t.cache, "denoiser");
    test_loader ld[N];
    vc_layer_id ids[N];
    add_layers(t.cache, m, N, ld, ids);
    uint64_t loads_before_last = 0;
    for (int pass = 0; pass < PASSES; pass++) {
        tally tl = {0, 0};
        if (pass == PASSES - 1) loads_before_last = get_stats(t.cache).loads;
        for (int i = 0; i < N; i++) run_layer(t.cache, ids[i], ids[(i * 13 + pass) % N], &tl);
        /* From the third pass the order is known and every copy is in it: the index answers all. */
        if (pass >= 2 && tl.walked) fail_msg("pass %d: %u of %u questions left to the walk", pass, tl.walked, tl.walked + tl.answered);
    }
    /* The point of the test: the pass streams more than RAM holds, so copies were dropped and read again. */
    assert_true(get_stats(t.cache).loads - loads_before_last > 0);
    assert_true(get_stats(t.cache).ram_evictions > 0);
    free_cache(&t);
}

/* An order of 5,000 layers: the bitmaps span two words of their summaries (4,096 positions a
 * word), so the searches skip empty words through the summary, across word and summary-word
 * boundaries. Asked at every 7th acquire (the walk is O(copies)). */
static void test_a_long_order(void **state) {
    (void)state;
    enum { N = 5000, PASSES = 3 };
    size_t bytes = 256;
    test_cache t = make_small_cache(N / 4 * bytes + 64 * KB, N / 2 * bytes);
    vc_model_id m = add_model(t.cache, "long");
    test_loader *ld = calloc(N, sizeof(*ld));
    vc_layer_id *ids = calloc(N, sizeof(*ids));
    assert_non_null(ld);
    assert_non_null(ids);
    add_loader_layers(t.cache, m, "layer", N, bytes, ld, ids);
    tally tl = {0, 0};
    void *p;
    for (int pass = 0; pass < PASSES; pass++)
        for (int i = 0; i < N; i++) {
            if (i % 7) {
                assert_int_equal(vc_layer_acquire(t.cache, ids[i], NULL, &p), VC_OK);
                assert_int_equal(vc_layer_release(t.cache, ids[i], NULL), VC_OK);
            } else {
                run_layer(t.cache, ids[i], ids[(i * 4099 + pass) % N], &tl);
            }
        }
    const model_t *lm = vc__plan_model(layer_of(t.cache, ids[0]));
    assert_true(lm->ram_ix.words > 64); /* two summary words */
    assert_true(tl.answered > tl.walked);
    assert_true(get_stats(t.cache).ram_evictions > (uint64_t)N);
    free(ld);
    free(ids);
    free_cache(&t);
}

static void test_step_group_of_two_models(void **state) {
    (void)state;
    enum { NC = 10, NU = 30, STEPS = 10 };
    test_cache t = make_small_cache(220 * KB, 300 * KB);
    two_models w;
    add_two_models(t.cache, &w, "controlnet", NC, "unet", NU);
    const vc_layer_id *ic = w.layer[0], *iu = w.layer[1];
    unsigned late_walked = 0, late_answered = 0;
    for (int step = 0; step < STEPS; step++) {
        tally tl = {0, 0};
        for (int i = 0; i < NC; i++) run_layer(t.cache, ic[i], iu[(i * 3 + step) % NU], &tl);
        for (int i = 0; i < NU; i++) run_layer(t.cache, iu[i], ic[(i + step) % NC], &tl);
        if (step >= STEPS - 3) late_walked += tl.walked, late_answered += tl.answered;
    }
    assert_non_null(t.cache->group); /* the two run as one cycle: the group's index answers */
    if (late_walked) fail_msg("last steps: %u of %u questions left to the walk", late_walked, late_walked + late_answered);
    assert_true(get_stats(t.cache).ram_evictions > 0);
    free_cache(&t);
}

/* Copies of a model that ran before (a text encoder) go first, least recently used first: only the
 * walk orders those, so the index leaves the question to it while there are any, and answers once
 * the new model's loads have dropped them. */
static void test_copies_of_a_model_not_in_use_go_to_the_walk(void **state) {
    (void)state;
    enum { NE = 8, NU = 30, PASSES = 8 };
    test_cache t = make_small_cache(200 * KB, 256 * KB);
    two_models w;
    add_two_models(t.cache, &w, "encoder", NE, "unet", NU);
    const vc_layer_id *ie = w.layer[0], *iu = w.layer[1];
    tally tl = {0, 0};
    for (int pass = 0; pass < 3; pass++)
        for (int i = 0; i < NE; i++) run_layer(t.cache, ie[i], ie[(i + 1) % NE], &tl);
    model_t *em = slot_table_get(&t.cache->models, w.id[0]);
    assert_true(em->ram_n > 0);
    int saw_walk = 0, saw_answer_after = 0;
    for (int pass = 0; pass < PASSES; pass++)
        for (int i = 0; i < NU; i++) {
            run_layer(t.cache, iu[i], iu[(i + 5) % NU], &tl);
            const model_t *um = vc__plan_model(layer_of(t.cache, iu[i]));
            layer_t *x;
            int answered = vc__ram_victim_indexed(t.cache, layer_of(t.cache, iu[i]), every_copy, &x);
            if (em->ram_n && !vc__model_active(t.cache, em, um)) {
                assert_false(answered); /* an idle model's copies: the walk's */
                saw_walk = 1;
            } else if (!em->ram_n && pass >= 3) {
                assert_true(answered);
                saw_answer_after = 1;
            }
        }
    assert_true(saw_walk);
    assert_true(saw_answer_after);
    free_cache(&t);
}

/* A layer used twice per pass is needed at the nearer of its uses: the index has no answer for its
 * model, and the walk (which checks every use) gives it. */
static void test_a_layer_used_twice_goes_to_the_walk(void **state) {
    (void)state;
    enum { N = 24, PASSES = 6 };
    test_cache t = make_small_cache(150 * KB, 200 * KB);
    vc_model_id m = add_model(t.cache, "looped");
    test_loader ld[N];
    vc_layer_id ids[N];
    add_layers(t.cache, m, N, ld, ids);
    vc_layer_id order[N + 1];
    for (int i = 0; i < N; i++) order[i] = ids[i];
    order[N] = ids[3]; /* layer 3 runs again at the end of the pass */
    assert_int_equal(vc_model_set_order(t.cache, m, order, N + 1), VC_OK);
    tally tl = {0, 0};
    for (int pass = 0; pass < PASSES; pass++)
        for (int i = 0; i <= N; i++) run_layer(t.cache, order[i], ids[(i + pass) % N], &tl);
    assert_int_equal(tl.answered, 0);
    assert_true(tl.walked > 0);
    free_cache(&t);
}

/* Random passes over two models: layers skipped (orders dropped and learned again), declared
 * orders, offloads, cache clears, a layer unregistered and registered again, plans made for new
 * budgets. The index is rebuilt or follows each change; every answer must be the walk's. */
static void random_world(unsigned seed) {
    enum { N0 = 20, N1 = 12, OPS = 300 };
    srand(seed);
    test_cache t = make_small_cache(160 * KB, 220 * KB);
    vc_model_id mid[2] = {add_model(t.cache, "a"), add_model(t.cache, "b")};
    test_loader ld[N0 + N1];
    vc_layer_id ids[N0 + N1];
    add_layers(t.cache, mid[0], N0, ld, ids);
    add_layers(t.cache, mid[1], N1, ld + N0, ids + N0);
    int first[2] = {0, N0}, count[2] = {N0, N1};
    tally tl = {0, 0};
    for (int op = 0; op < OPS; op++) {
        int k = rand() % 2, r = rand() % 20;
        if (r < 14) { /* a pass, maybe skipping a layer */
            int skip = rand() % 4 == 0 ? rand() % count[k] : -1;
            for (int i = 0; i < count[k]; i++)
                if (i != skip) run_layer(t.cache, ids[first[k] + i], ids[rand() % (N0 + N1)], &tl);
        } else if (r == 14) {
            assert_int_equal(vc_model_offload(t.cache, mid[k], rand() % 2 ? VC_OFFLOAD_VRAM : VC_OFFLOAD_ALL), VC_OK);
        } else if (r == 15) {
            assert_int_equal(vc_cache_clear(t.cache), VC_OK);
        } else if (r == 16) { /* a declared order: the pass reversed */
            vc_layer_id order[N0];
            for (int i = 0; i < count[k]; i++) order[i] = ids[first[k] + count[k] - 1 - i];
            assert_int_equal(vc_model_set_order(t.cache, mid[k], order, (size_t)count[k]), VC_OK);
            for (int i = 0; i < count[k]; i++) run_layer(t.cache, order[i], ids[rand() % (N0 + N1)], &tl);
        } else if (r == 17) {
            assert_int_equal(vc_model_set_order(t.cache, mid[k], NULL, 0), VC_OK);
        } else if (r == 18) { /* a layer goes and comes back (its model's order is dropped) */
            int i = first[k] + rand() % count[k];
            assert_int_equal(vc_layer_unregister(t.cache, ids[i]), VC_OK);
            ids[i] = add_loader_layer(t.cache, mid[k], "layer", 8 * KB + (size_t)(rand() % 5) * 4 * KB, &ld[i]);
        } else { /* another room for the streaming region: plans are made again */
            assert_int_equal(vc_cache_set_stream_slots(t.cache, (unsigned)(rand() % 3)), VC_OK);
        }
        ask(t.cache, NULL, &tl);
    }
    assert_true(tl.answered > tl.walked / 4); /* the index answered a good share of the questions */
    free_cache(&t);
}

static void test_random_changes_keep_both_answers_equal(void **state) {
    (void)state;
    for (unsigned seed = 1; seed <= 6; seed++) random_world(seed);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_one_model_streaming_more_than_ram_holds),
        cmocka_unit_test(test_a_long_order),
        cmocka_unit_test(test_step_group_of_two_models),
        cmocka_unit_test(test_copies_of_a_model_not_in_use_go_to_the_walk),
        cmocka_unit_test(test_a_layer_used_twice_goes_to_the_walk),
        cmocka_unit_test(test_random_changes_keep_both_answers_equal),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
