/* The stream-slots tuner (src/slot_tuner.c, VC_STREAM_SLOTS_TUNE) and fixed stream slots on the
 * simulated device: the room it settles on, what it leaves alone, the host clock it measures with. */
#include "sched_world.h"

/* Passes whose compute is far below their copies (a decoded token): with room for one streamed
 * layer (vc_cache_set_stream_slots(1)) the cache moves a layer less per pass than with the
 * planner's two, and is no slower (the copies run back to back either way); set back to 0, the
 * next pass is planned as before. Each change takes effect at the next pass. */
static void test_stream_slots_for_copy_bound_passes(void **state) {
    (void)state;
    /* 12 layers of 64 KB, room for 8: 4 must stream; a copy takes 66 us, a layer computes 2 us */
    sim_world w = make_world(12, 64 * KB, 8 * 64 * KB, 1e9, 10e-6, VC_OFFLOAD_MODE_BALANCED, VC_POLICY_PLANNED);
    double t_auto, t_one;
    pass_bytes(&w, 3, 2e-6, NULL); /* learn the order, plan, settle */
    double b_auto = pass_bytes(&w, 4, 2e-6, &t_auto);
    assert_int_equal(vc_cache_set_stream_slots(w.cache, 1), VC_OK);
    pass_bytes(&w, 2, 2e-6, NULL); /* re-planned at the next pass, then settled */
    double b_one = pass_bytes(&w, 4, 2e-6, &t_one);
    assert_true(b_one <= b_auto - 64 * KB); /* at least a layer less per pass */
    assert_true(b_one >= 4 * 64 * KB);      /* never below what must stream */
    assert_true(t_one <= t_auto * 1.02);    /* and no slower */
    assert_int_equal(vc_cache_set_stream_slots(w.cache, 0), VC_OK);
    pass_bytes(&w, 2, 2e-6, NULL);
    assert_true(pass_bytes(&w, 4, 2e-6, NULL) == b_auto); /* the planner's choice again */
    assert_int_equal(vc_cache_set_stream_slots(w.cache, 9), VC_ERR_INVALID_ARG);
    assert_int_equal(vc_cache_set_stream_slots(NULL, 1), VC_ERR_INVALID_ARG);
    assert_true(get_stats(w.cache).arena_peak_bytes <= 8 * 64 * KB);
    free_world(&w);
    /* at creation: the same option, and its bound */
    vc_backend *b = test_backend_create(1 * MB);
    vc_cache_options o = sched_options(b, VC_OFFLOAD_MODE_BALANCED, VC_POLICY_PLANNED);
    o.stream_slots = 9;
    vc_cache *c = NULL;
    assert_int_equal(vc_cache_create(&o, &c), VC_ERR_INVALID_ARG);
    assert_non_null(strstr(vc_last_error(), "stream_slots 9"));
    o.stream_slots = 1;
    assert_int_equal(vc_cache_create(&o, &c), VC_OK);
    assert_int_equal(vc_cache_destroy(c), VC_OK);
    test_backend_destroy(b);
}

/* Two models of ten 64 KB layers each (w's layers 0-9 and 10-19) on a `device`-byte simulated GPU,
 * copies of 66 us, logging to `log`, the cache measuring its region's room (VC_STREAM_SLOTS_TUNE). */
static sim_world tuned_two_model_world(plan_log *log, size_t device, const char *first, const char *second,
                                       vc_model_id *a, vc_model_id *b) {
    sim_world w = make_world(20, 64 * KB, device, 1e9, 10e-6, VC_OFFLOAD_MODE_BALANCED, VC_POLICY_PLANNED);
    logging_cache(&w, log);
    *a = add_model(w.cache, first);
    *b = add_model(w.cache, second);
    for (int i = 0; i < w.n; i++) w.layer[i] = add_host_layer(w.cache, i < 10 ? *a : *b, "l", w.weights[i], w.bytes[i]);
    assert_int_equal(vc_cache_set_stream_slots(w.cache, VC_STREAM_SLOTS_TUNE), VC_OK);
    return w;
}

/* Passes of `compute` seconds a layer until the stream-slots tuner has chosen; fails past `limit`.
 * Returns the passes it took. */
static int tune_until_settled(sim_world *w, double compute, int limit) {
    for (int i = 1; i <= limit; i++) {
        pass(w, compute);
        int tuning = -1;
        assert_int_equal(vc_cache_get_stream_slots(w->cache, NULL, &tuning), VC_OK);
        if (!tuning) return i;
    }
    fail_msg("the stream-slots tuner did not choose within %d passes", limit);
    return limit;
}

/* VC_STREAM_SLOTS_TUNE measures instead of predicting: on copy-bound passes it finds one slot
 * (fewer bytes, so faster: the same figures as the engine fixing 1); when the passes change (the
 * engine's compute grows a hundredfold) it measures again, and where no room is more than 1%
 * faster it keeps the planner's region. */
static void test_stream_slots_tuned_by_measuring(void **state) {
    (void)state;
    /* the world of test_stream_slots_for_copy_bound_passes: copies of 66 us, compute of 2 us */
    sim_world w = make_world(12, 64 * KB, 8 * 64 * KB, 1e9, 10e-6, VC_OFFLOAD_MODE_BALANCED, VC_POLICY_PLANNED);
    double t_planner, t_tuned;
    pass_bytes(&w, 3, 2e-6, NULL);
    double b_planner = pass_bytes(&w, 4, 2e-6, &t_planner);
    assert_int_equal(vc_cache_set_stream_slots(w.cache, VC_STREAM_SLOTS_TUNE), VC_OK);
    unsigned slots = 99;
    int tuning = 0;
    assert_int_equal(vc_cache_get_stream_slots(w.cache, &slots, &tuning), VC_OK);
    assert_int_equal(slots, 0); /* measuring starts from the planner's region */
    assert_int_equal(tuning, 1);
    int took = tune_until_settled(&w, 2e-6, 40);
    assert_true(took >= 7); /* the planner's region, then 1 and 2 slots: a transition and two passes each */
    assert_int_equal(vc_cache_get_stream_slots(w.cache, &slots, &tuning), VC_OK);
    assert_int_equal(slots, 1);
    double b_tuned = pass_bytes(&w, 4, 2e-6, &t_tuned);
    assert_true(b_tuned <= b_planner - 64 * KB); /* a layer less per pass ... */
    assert_true(b_tuned >= 4 * 64 * KB);         /* never below what must stream ... */
    assert_true(t_tuned < t_planner * 0.95);     /* ... and faster, which is what it measured */
    /* the engine setting it again (at its next generation) changes nothing: the choice stays */
    assert_int_equal(vc_cache_set_stream_slots(w.cache, VC_STREAM_SLOTS_TUNE), VC_OK);
    assert_int_equal(vc_cache_get_stream_slots(w.cache, &slots, &tuning), VC_OK);
    assert_int_equal(slots, 1);
    assert_int_equal(tuning, 0);

    /* The engine's compute grows a hundredfold (a prefill after decoding): the passes take far
     * longer than when tuned, so it measures again; the copies now hide behind compute whatever the
     * room, so none beats the planner's region by its 1%, and that is kept. */
    int retuned = 0;
    for (int i = 0; i < 5 && !retuned; i++) {
        pass(&w, 200e-6);
        assert_int_equal(vc_cache_get_stream_slots(w.cache, NULL, &tuning), VC_OK);
        retuned = tuning;
    }
    assert_true(retuned);
    tune_until_settled(&w, 200e-6, 40);
    assert_int_equal(vc_cache_get_stream_slots(w.cache, &slots, NULL), VC_OK);
    assert_int_not_equal(slots, 1);
    double t_heavy_tuned, t_heavy_planner;
    pass_bytes(&w, 4, 200e-6, &t_heavy_tuned);
    /* Back to decoding: it measures again, but only after twice as many passes off its time (six),
     * so that passes which keep changing do not keep the device being laid out again. */
    int off_passes = 0;
    for (tuning = 0; !tuning && off_passes < 20; off_passes++) {
        pass(&w, 2e-6);
        assert_int_equal(vc_cache_get_stream_slots(w.cache, NULL, &tuning), VC_OK);
    }
    assert_int_equal(off_passes, 7); /* (a pass is timed as the next one starts) */
    tune_until_settled(&w, 2e-6, 40);
    assert_int_equal(vc_cache_get_stream_slots(w.cache, &slots, NULL), VC_OK);
    assert_int_equal(slots, 1);
    assert_int_equal(vc_cache_set_stream_slots(w.cache, 0), VC_OK);
    pass_bytes(&w, 3, 200e-6, NULL);
    pass_bytes(&w, 4, 200e-6, &t_heavy_planner);
    assert_true(t_heavy_tuned <= t_heavy_planner * 1.01); /* never slower than the planner beyond its 1% */
    assert_int_equal(vc_cache_get_stream_slots(w.cache, &slots, &tuning), VC_OK);
    assert_int_equal(slots, 0);
    assert_int_equal(tuning, 0); /* a fixed setting is not measuring */
    assert_true(get_stats(w.cache).arena_peak_bytes <= 8 * 64 * KB);
    free_world(&w);

    /* Only the planned policy in balanced mode has a region to size: elsewhere nothing is measured. */
    sim_world l = make_world(12, 64 * KB, 8 * 64 * KB, 1e9, 10e-6, VC_OFFLOAD_MODE_BALANCED, VC_POLICY_LRU);
    assert_int_equal(vc_cache_set_stream_slots(l.cache, VC_STREAM_SLOTS_TUNE), VC_OK);
    for (int i = 0; i < 12; i++) pass(&l, 2e-6);
    assert_int_equal(vc_cache_get_stream_slots(l.cache, &slots, &tuning), VC_OK);
    assert_int_equal(slots, 0);
    assert_int_equal(tuning, 0);
    free_world(&l);

    /* The setting's bounds, at creation and after */
    vc_backend *b = test_backend_create(1 * MB);
    vc_cache_options o = sched_options(b, VC_OFFLOAD_MODE_BALANCED, VC_POLICY_PLANNED);
    o.stream_slots = VC_STREAM_SLOTS_TUNE - 1;
    vc_cache *c = NULL;
    assert_int_equal(vc_cache_create(&o, &c), VC_ERR_INVALID_ARG);
    assert_non_null(strstr(vc_last_error(), "VC_STREAM_SLOTS_TUNE"));
    o.stream_slots = VC_STREAM_SLOTS_TUNE;
    assert_int_equal(vc_cache_create(&o, &c), VC_OK);
    assert_int_equal(vc_cache_get_stream_slots(c, &slots, &tuning), VC_OK);
    assert_int_equal(slots, 0);
    assert_int_equal(tuning, 1);
    assert_int_equal(vc_cache_set_stream_slots(c, VC_STREAM_SLOTS_TUNE + 1), VC_ERR_INVALID_ARG);
    assert_int_equal(vc_cache_get_stream_slots(NULL, &slots, &tuning), VC_ERR_INVALID_ARG);
    assert_int_equal(vc_cache_get_stream_slots(c, NULL, NULL), VC_OK);
    assert_int_equal(vc_cache_destroy(c), VC_OK);
    test_backend_destroy(b);
}

/* Passes whose every layer has finished uploading before the engine asks for it cannot go faster
 * with any room: the tuner sees that in the planner's passes and tries nothing, so tuning costs no
 * re-layout (no plan evictions after the first) and no slower pass. */
static void test_stream_slots_tuner_leaves_compute_bound_passes_alone(void **state) {
    (void)state;
    sim_world w = make_world(12, 64 * KB, 8 * 64 * KB, 1e9, 10e-6, VC_OFFLOAD_MODE_BALANCED, VC_POLICY_PLANNED);
    assert_int_equal(vc_cache_set_stream_slots(w.cache, VC_STREAM_SLOTS_TUNE), VC_OK);
    double t_first;
    pass_bytes(&w, 3, 500e-6, &t_first); /* learn the order, plan, lay out */
    uint64_t plan_evictions = get_stats(w.cache).vram_evictions[VC_EVICT_PLAN];
    int took = tune_until_settled(&w, 500e-6, 40);
    assert_true(took <= 4);
    unsigned slots = 99;
    assert_int_equal(vc_cache_get_stream_slots(w.cache, &slots, NULL), VC_OK);
    assert_int_equal(slots, 0);
    double t_after;
    pass_bytes(&w, 4, 500e-6, &t_after);
    assert_int_equal(get_stats(w.cache).vram_evictions[VC_EVICT_PLAN], plan_evictions);
    assert_true(t_after <= 12 * 500e-6 * 1.01); /* compute-bound: the pass is its compute */
    free_world(&w);
}

/* On the host backend the tuner times passes with the real clock (CLOCK_MONOTONIC): passes of a
 * few microseconds, as noisy as the machine makes them. Whatever it measures, every pass reads the
 * right bytes, the budget holds, and it comes to a choice (at most four measured passes a room). */
static void test_stream_slots_tuner_on_the_real_clock(void **state) {
    (void)state;
    enum { N = 12 };
    vc_backend *b = test_backend_create(8 * 64 * KB);
    vc_cache_options o = sched_options(b, VC_OFFLOAD_MODE_BALANCED, VC_POLICY_PLANNED);
    o.stream_slots = VC_STREAM_SLOTS_TUNE;
    vc_cache *c;
    assert_int_equal(vc_cache_create(&o, &c), VC_OK);
    vc_model_id m = add_model(c, "denoiser");
    void *w[N];
    vc_layer_id id[N];
    for (int i = 0; i < N; i++) {
        w[i] = malloc(64 * KB);
        fill_pattern(w[i], 64 * KB, (uint64_t)i + 1);
        id[i] = add_host_layer(c, m, "layer", w[i], 64 * KB);
    }
    int settled = 0;
    for (int p = 0; p < 200; p++) {
        for (int i = 0; i < N; i++) {
            void *d;
            assert_int_equal(vc_layer_acquire(c, id[i], NULL, &d), VC_OK);
            assert_true(check_pattern(d, 64 * KB, (uint64_t)i + 1));
            assert_int_equal(vc_layer_release(c, id[i], NULL), VC_OK);
        }
        int tuning = 1;
        assert_int_equal(vc_cache_get_stream_slots(c, NULL, &tuning), VC_OK);
        settled |= !tuning;
    }
    assert_true(settled);
    assert_true(get_stats(c).arena_peak_bytes <= 8 * 64 * KB);
    assert_int_equal(vc_cache_destroy(c), VC_OK);
    test_backend_destroy(b);
    for (int i = 0; i < N; i++) free(w[i]);
}

/* The model whose passes time the tuner goes (unregistered while the tuner measures it): the tuner
 * forgets it and measures the next planned model's passes instead; declaring the order the timing
 * model already runs by changes nothing, and another order starts the measuring again. */
static void test_stream_slots_tuner_outlives_its_timing_model(void **state) {
    (void)state;
    plan_log log = {0};
    vc_model_id a, b;
    /* each model alone is larger than the device: both stream */
    sim_world w = tuned_two_model_world(&log, 512 * KB, "first", "second", &a, &b);
    for (int p = 0; p < 6; p++) model_pass_of(&w, 0, 10); /* a is planned and measured */
    int tuning = 0;
    assert_int_equal(vc_cache_get_stream_slots(w.cache, NULL, &tuning), VC_OK);
    assert_int_equal(tuning, 1);
    assert_int_equal(vc_model_unregister(w.cache, a), VC_OK);
    int p = 0;
    for (; p < 60 && tuning; p++) {
        model_pass_of(&w, 10, 10);
        assert_int_equal(vc_cache_get_stream_slots(w.cache, NULL, &tuning), VC_OK);
    }
    assert_int_equal(tuning, 0); /* b's passes timed it to a choice */
    /* the same order declared: nothing changes, the choice stays */
    assert_int_equal(vc_model_set_order(w.cache, b, w.layer + 10, 10), VC_OK);
    model_pass_of(&w, 10, 10);
    assert_int_equal(vc_cache_get_stream_slots(w.cache, NULL, &tuning), VC_OK);
    assert_int_equal(tuning, 0);
    /* another order declared (an engine that changed its pass: here the layers backwards), and
     * run: measured again */
    vc_layer_id back[10];
    for (int i = 0; i < 10; i++) back[i] = w.layer[19 - i];
    assert_int_equal(vc_model_set_order(w.cache, b, back, 10), VC_OK);
    assert_int_equal(vc_cache_get_stream_slots(w.cache, NULL, &tuning), VC_OK);
    assert_int_equal(tuning, 1);
    for (p = 0; p < 64 && tuning; p++) {
        for (int i = 19; i >= 10; i--) {
            void *d;
            assert_int_equal(vc_layer_acquire(w.cache, w.layer[i], w.stream, &d), VC_OK);
            assert_true(check_pattern(d, w.bytes[i], (uint64_t)i + 1));
            kernel(w.sim, w.stream, 2e-5, d, w.bytes[i], NULL, NULL);
            assert_int_equal(vc_layer_release(w.cache, w.layer[i], w.stream), VC_OK);
        }
        vc_sim_stream_synchronize(w.sim, w.stream);
        assert_int_equal(vc_cache_get_stream_slots(w.cache, NULL, &tuning), VC_OK);
    }
    assert_int_equal(tuning, 0);
    assert_true(get_stats(w.cache).arena_peak_bytes <= 512 * KB);
    free_world(&w);
}

/* With two models in turn every step (a ControlNet and its UNet), the tuner's timing model joins a
 * step group as they are planned as one: the group's passes time the cycle from then on, and the
 * tuner still chooses. */
static void test_stream_slots_tuned_across_a_step_group(void **state) {
    (void)state;
    plan_log log = {0};
    vc_model_id a, b;
    sim_world w = tuned_two_model_world(&log, 640 * KB, "controlnet", "unet", &a, &b);
    (void)a, (void)b;
    int tuning = 1, steps = 0;
    for (; steps < 80 && tuning; steps++) {
        model_pass_of(&w, 0, 10);
        model_pass_of(&w, 10, 10);
        assert_int_equal(vc_cache_get_stream_slots(w.cache, NULL, &tuning), VC_OK);
    }
    assert_int_equal(log.joined, 1);
    assert_int_equal(tuning, 0);
    /* and it stays chosen: passes like these do not start it again */
    for (int i = 0; i < 6; i++) {
        model_pass_of(&w, 0, 10);
        model_pass_of(&w, 10, 10);
    }
    assert_int_equal(vc_cache_get_stream_slots(w.cache, NULL, &tuning), VC_OK);
    assert_int_equal(tuning, 0);
    assert_true(get_stats(w.cache).arena_peak_bytes <= 640 * KB);
    free_world(&w);
}

/* The tuner with an engine that holds blocks of four layers: rooms of fewer layers than a block
 * only push kept layers out (the block's streamed layers must all be resident together), so it
 * never tries them; it still comes to a choice, and the data and the budget hold throughout. */
static void test_stream_slots_tuner_with_blocks_held_at_once(void **state) {
    (void)state;
    enum { N = 48, BLOCK = 4 };
    size_t sizes[N], total = 0;
    for (int i = 0; i < N; i++) total += sizes[i] = 16 * KB + (size_t)(i % 3) * 4 * KB;
    sim_world w = make_world_sized(N, 0, sizes, total / 2, 1e9, 1e-6, VC_OFFLOAD_MODE_BALANCED, VC_POLICY_PLANNED);
    assert_int_equal(vc_cache_set_stream_slots(w.cache, VC_STREAM_SLOTS_TUNE), VC_OK);
    int tuning = 1, step = 0, tried_below_block = 0;
    for (; step < 80 && tuning; step++) {
        for (int i = 0; i < N; i += BLOCK) {
            void *ptrs[BLOCK];
            for (int j = i; j < i + BLOCK; j++) {
                assert_int_equal(vc_layer_acquire(w.cache, w.layer[j], w.stream, &ptrs[j - i]), VC_OK);
                assert_true(check_pattern(ptrs[j - i], w.bytes[j], (uint64_t)j + 1));
            }
            double s, e;
            assert_int_equal(vc_sim_compute_reading(w.sim, w.stream, BLOCK * 5e-6, BLOCK, ptrs, &w.bytes[i], &s, &e),
                             VC_OK);
            for (int j = i; j < i + BLOCK; j++)
                assert_int_equal(vc_layer_release(w.cache, w.layer[j], w.stream), VC_OK);
            vc_sim_wait_until(w.sim, s);
        }
        vc_sim_stream_synchronize(w.sim, w.stream);
        unsigned slots = 0;
        assert_int_equal(vc_cache_get_stream_slots(w.cache, &slots, &tuning), VC_OK);
        tried_below_block |= slots > 0 && slots < BLOCK;
    }
    assert_int_equal(tuning, 0);
    assert_false(tried_below_block);
    assert_true(get_stats(w.cache).arena_peak_bytes <= total / 2);
    free_world(&w);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stream_slots_for_copy_bound_passes),
        cmocka_unit_test(test_stream_slots_tuned_by_measuring),
        cmocka_unit_test(test_stream_slots_tuned_across_a_step_group),
        cmocka_unit_test(test_stream_slots_tuner_leaves_compute_bound_passes_alone),
        cmocka_unit_test(test_stream_slots_tuner_on_the_real_clock),
        cmocka_unit_test(test_stream_slots_tuner_outlives_its_timing_model),
        cmocka_unit_test(test_stream_slots_tuner_with_blocks_held_at_once),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
