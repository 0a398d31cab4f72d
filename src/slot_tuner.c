/* The stream-slots tuner (vc_cache_options.stream_slots = VC_STREAM_SLOTS_TUNE): chooses the
 * streaming region's room by measuring passes instead of predicting them.
 *
 * Why measure: the planner sizes the region by bytes alone (two of the largest streamed layers). A
 * pass whose copies outrun its compute (a language model decoding one token) is faster with one
 * slot, since the region's room is paid in streamed bytes every pass; a pass whose small, compute-
 * light layers come in runs (SD 1.5's low-resolution blocks) is faster with three or four, since a
 * larger region lets copies run further ahead. Which applies depends on compute and copy times the
 * cache cannot predict on a real GPU, but it sees every pass start, and a denoising loop or a
 * decode runs the same pass tens to thousands of times: a few passes spent trying rooms pay back.
 *
 * Where every layer the engine acquired in the planner's measured passes had finished uploading,
 * copies never held a pass up and no room can make it faster: nothing is tried (compute-bound
 * passes pay no re-layout for the tuner).
 *
 * How: one model's pass starts time the cycle (the first planned model to start a pass; with
 * several models in turn, start to start of it is the whole cycle). Candidates run in turn: the
 * planner's own region (0), then a climb from it (its room in layers of its largest streamed one,
 * e.g. 1.4): the whole room above it (2), larger while each does better than the one before; if
 * that one is no faster than the planner's, the one below it (1), always the one below that, and
 * smaller while each does better (never below the engine's hold window, for an engine holding
 * blocks of layers at once). Until session 18 it tried 1, 2, 3 ... from the bottom, one room more
 * than this for SD 1.5-like passes, which gain from larger rooms.
 * After a switch the first pass is a transition (the device is laid out again) and is not
 * measured; then passes are measured until two in a row agree within 0.5%, or for at most four.
 * A candidate replaces the best only when it is faster by more than 1% (noise on a real GPU; and
 * fewer slots move fewer bytes); its time is the least of its measured passes. The choice is kept
 * until the measured pass time leaves it by more than 25% for three passes in a row (the engine
 * changed resolution, or prefill for decode; twice as many after each such return, up to 96), or
 * the timing model loses its order or joins a step group: then tuning starts again.
 *
 * Everything here runs under the cache lock, from schedule.c's pass starts. */
#include "cache_internal.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#define TUNER_AGREE 0.005       /* two measured passes this close: the candidate's time */
#define TUNER_MAX_MEASURED 4    /* ... or the last of this many */
#define TUNER_HYSTERESIS 0.01   /* a candidate must beat the best by this much */
#define TUNER_DRIFT 0.25        /* a settled choice is tried again beyond this change ... */
#define TUNER_DRIFT_PASSES 3    /* ... for this many passes in a row */

static double tuner_clock(vc_cache *c) {
    return c->ops->now ? c->ops->now(c->bctx) : vc__mono_seconds(); /* (the simulator's clock is virtual) */
}

void vc__tuner_reset(vc_cache *c) {
    slot_tuner *t = &c->tuner;
    memset(t, 0, sizeof(*t));
    if (c->slots_setting == VC_STREAM_SLOTS_TUNE) c->stream_slots = 0; /* start from the planner's region */
}

void vc__tuner_model_gone(vc_cache *c, const model_t *m) {
    if (c->tuner.clock == m) vc__tuner_reset(c);
}

static void try_next(vc_cache *c, unsigned slots) {
    slot_tuner *t = &c->tuner;
    if (c->trace) {
        char what[64];
        if (slots)
            snprintf(what, sizeof what, "tuner: trying room for %u layer%s", slots, slots > 1 ? "s" : "");
        else
            snprintf(what, sizeof what, "tuner: measuring the planner's region");
        vc__trace_note(c, "stream-slots", what);
    }
    t->cand = slots;
    t->passes = 0;
    t->last = -1;
    t->min_t = -1;
    t->late_sum = 0;
    c->stream_slots = slots; /* each model re-plans at its next pass start (plan_slots differs) */
}

static void settle(vc_cache *c, const char *why) {
    slot_tuner *t = &c->tuner;
    t->done = 1;
    t->off_track = 0;
    c->stream_slots = t->best;
    if (c->trace) {
        char what[64];
        snprintf(what, sizeof what, "tuner: chose %u (0: the planner's region)", t->best);
        vc__trace_note(c, "stream-slots", what);
    }
    if (t->best)
        vc__log(c, VC_LOG_INFO, "stream-slots tuner: room for %u layer%s in the streaming region (%.6f s per pass; "
                "the planner's region: %.6f s)%s", t->best, t->best > 1 ? "s" : "", t->best_t, t->time[0], why);
    else
        vc__log(c, VC_LOG_INFO, "stream-slots tuner: the planner's region (%.6f s per pass)%s", t->best_t, why);
}

/* Measuring begins (again) at m's pass start, from the planner's region. */
static void start(vc_cache *c, const model_t *m, double now, uint64_t h2d) {
    slot_tuner *t = &c->tuner;
    vc__tuner_reset(c);
    t->clock = m;
    t->t_prev = now;
    t->h2d_prev = h2d;
    t->late_prev = c->late_acquires;
    try_next(c, 0);
}

/* A candidate's pass time is known: keep it if it is the best, and choose what to try next. */
static void measured(vc_cache *c, double pass_s, uint64_t moved, uint64_t late) {
    slot_tuner *t = &c->tuner;
    unsigned s = t->cand;
    /* an engine holding a block of layers at once needs the block's streamed layers in the region
     * together: rooms of fewer layers than that only push kept layers out */
    unsigned hold = t->clock->plan_hold > 1 ? t->clock->plan_hold : 1;
    t->time[s] = pass_s;
    if (s == 0) {
        t->best = 0;
        t->best_t = pass_s;
        if (!moved) { /* nothing streams: the region's room does not matter */
            settle(c, "; nothing streams");
            return;
        }
        /* Every layer the engine acquired had finished uploading: copies never held a pass up, so
         * no room can make it faster (fewer slots would only move fewer bytes at the same time,
         * which the 1% rule does not take either). Nothing to try. */
        if (!late) {
            settle(c, "; every layer was uploaded before the engine asked for it");
            return;
        }
        if (hold > VC__MAX_STREAM_SLOTS) {
            settle(c, "; the engine holds more layers at once than a fixed room takes");
            return;
        }
        /* Climb from the planner's own room (its region in layers of its largest streamed one, e.g.
         * 1.4): the next whole room above it first (2), and larger while each is faster than the
         * one before; if that is no faster than the planner's region, the next below it (1), then
         * always the one below that, and smaller while each is faster than the one before (a
         * decode's planner region of 2.3 ties with 2, and 1 is where it gains). */
        double r = t->clock->plan_room;
        unsigned up0 = (unsigned)floor(r) + 1, down0 = r >= 1 ? (unsigned)ceil(r) - 1 : 0;
        t->up0 = up0 < hold ? hold : up0;
        t->down0 = down0 >= hold ? down0 : 0;
        t->dir = t->up0 <= VC__MAX_STREAM_SLOTS ? 1 : -1;
        if (t->dir < 0 && !t->down0) {
            settle(c, "; no other room to try");
            return;
        }
        try_next(c, t->dir > 0 ? t->up0 : t->down0);
        return;
    }
    if (pass_s < t->best_t * (1.0 - TUNER_HYSTERESIS)) {
        t->best = s;
        t->best_t = pass_s;
    }
    int first_step = s == (t->dir > 0 ? t->up0 : t->down0);
    double before = first_step ? t->time[0] : t->time[(int)s - t->dir]; /* the planner's, or the last tried */
    int faster = pass_s < before * (1.0 - TUNER_AGREE);
    if (t->dir > 0 && faster && s < VC__MAX_STREAM_SLOTS)
        try_next(c, s + 1);
    else if (t->dir > 0 && first_step && !faster && t->down0) {
        t->dir = -1; /* the room above was no faster than the planner's region: try below */
        try_next(c, t->down0);
    } else if (t->dir < 0 && (faster || first_step) && s > hold)
        try_next(c, s - 1); /* (the first below may tie with the planner's region, as 2 of 2.3) */
    else
        settle(c, "");
}

void vc__tuner_on_pass(vc_cache *c, const model_t *m) {
    slot_tuner *t = &c->tuner;
    if (c->slots_setting != VC_STREAM_SLOTS_TUNE || c->policy != VC_POLICY_PLANNED ||
        c->mode != VC_OFFLOAD_MODE_BALANCED || !m->plan_capacity)
        return;
    double now = tuner_clock(c);
    uint64_t h2d = c->stats.bytes_h2d;
    /* The timing model joined a step group: the group's passes are the cycle now (measure again). */
    if (!t->clock || (t->clock->joined && t->clock->joined == m)) {
        start(c, m, now, h2d);
        return;
    }
    if (t->clock != m) return;
    double pass_s = now - t->t_prev;
    uint64_t moved = h2d - t->h2d_prev, late = c->late_acquires - t->late_prev;
    t->late_prev = c->late_acquires;
    t->t_prev = now;
    t->h2d_prev = h2d;
    if (t->done) {
        int off = fabs(pass_s - t->best_t) > TUNER_DRIFT * t->best_t;
        t->off_track = off ? t->off_track + 1 : 0;
        /* Each time it tunes again it waits twice as long before the next (up to 32 times):
         * passes that never settle (jitter, an engine doing other work between them) must not
         * keep the device being laid out again. */
        unsigned retunes = t->retunes;
        if (t->off_track >= (unsigned)TUNER_DRIFT_PASSES << (retunes < 5 ? retunes : 5)) {
            vc__log(c, VC_LOG_INFO, "stream-slots tuner: passes now take %.6f s (%.6f s when tuned): tuning again",
                    pass_s, t->best_t);
            start(c, m, now, h2d);
            t->retunes = retunes + 1;
        }
        return;
    }
    if (++t->passes == 1) return; /* the pass after a switch lays the device out again */
    /* The least of the measured passes: a pass can take longer than the candidate makes it (the
     * engine paused between passes, another process used the GPU), hardly shorter. */
    t->min_t = t->last < 0 || pass_s < t->min_t ? pass_s : t->min_t;
    if (t->last >= 0 && (fabs(pass_s - t->last) <= TUNER_AGREE * pass_s || t->passes > TUNER_MAX_MEASURED)) {
        measured(c, t->min_t, moved, t->late_sum + late);
        return;
    }
    t->last = pass_s;
    t->late_sum += late;
}

int vc__tuner_state(const vc_cache *c, unsigned *in_use) {
    if (in_use) *in_use = c->stream_slots;
    return c->slots_setting == VC_STREAM_SLOTS_TUNE && !c->tuner.done && c->policy == VC_POLICY_PLANNED &&
           c->mode == VC_OFFLOAD_MODE_BALANCED; /* (elsewhere nothing is measured) */
}
