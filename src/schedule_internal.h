/*
 * What the scheduling files share among themselves: schedule.c (orders, victims, prefetch, the
 * hooks the residency code calls), plan.c (the plan and its layout) and step_group.c (models joined
 * into one cycle). What the rest of the library uses of them is in cache_internal.h.
 *
 * Everything here runs under the cache lock.
 */
#ifndef VC_SCHEDULE_INTERNAL_H
#define VC_SCHEDULE_INTERNAL_H

#include "cache_internal.h"

#define GROUP_MAX 64 /* passes (and models) in a step group's cycle */

static inline int order_known(const model_t *m) { return m->order_valid && m->order_n > 0; }
/* Steps until l is needed again in its model's pass (schedule.c); the current layer counts as a
 * full pass, a layer used twice per pass is needed at the nearer of its uses. */
size_t vc__distance_of(const layer_t *l);

/* ---- schedule.c ---------------------------------------------------------------------------------- */

/** The models plans are made for, by index 0..c->models.count: each model outside the step group,
 *  then the group; NULL for the others (members of the group, free slots). */
model_t *vc__plan_model_at(vc_cache *c, uint32_t i);

/* ---- plan.c -------------------------------------------------------------------------------------- */

/** 1 when another model ran within the last two passes of m: m's plan does not own the device. */
int vc__others_in_use(vc_cache *c, const model_t *m);
/** Makes m's plan from its order and the weight limit: which layers stay and the streaming region's
 *  size; the layout follows at the first release with nothing held (or at once, shared).
 *  `learned_alone`: the order was just learned from a pass no other model's layer interrupted (it
 *  may then be planned alone although the model before it still counts as in use). */
void vc__make_plan(vc_cache *c, model_t *m, int learned_alone);
/** A pass (or a cycle's order) that uses some layers more than once (a shared module, a block run
 *  in a loop, a model run twice per step): links each use to the same layer's next one round the
 *  pass (*next_use) and lists the distinct layers in the order they first run (*uorder, *un of
 *  them), so that eviction and prefetch see a layer's nearer use and plans walk distinct layers.
 *  Both NULL when every layer occurs once. Changes nothing else. VC_OK or VC_ERR_NO_MEMORY. */
int vc__link_uses(layer_t *const *order, size_t n, size_t **next_use, layer_t ***uorder, size_t *un);
/** Sets each layer's order_pos to its first use in `order` and, with `repeats` (the order has
 *  next_use links), its uses to how many times it occurs. */
void vc__mark_uses(layer_t *const *order, size_t n, int repeats);
/** Marks m's layout pending or done (prefetch is paused while one is pending). */
void vc__set_layout_pending(vc_cache *c, model_t *m, int pending);
/** Lays out m's pending plan: at once with `force`, else only while nothing in the arenas is held
 *  or arriving. */
void vc__try_layout(vc_cache *c, model_t *m, int force);
/** A pass begins: the most layers held at once in the pass that ended becomes the last pass's. */
void vc__roll_hold_peak(model_t *m);
/** Layers the engine holds at once, over this pass and the last (each member's, for a group):
 *  1 to 16. */
unsigned vc__hold_window(const model_t *m);

/* ---- step_group.c -------------------------------------------------------------------------------- */

/** 1 when a group may form now: the planned policy in a streaming mode, and no group yet. */
int vc__may_group(const vc_cache *c);
/** Parts the group (logged with `why`): members plan alone again from their next pass. */
void vc__unjoin(vc_cache *c, const char *why);
/** Notes which model's pass ended right before m's pass begins now. */
void vc__note_step_prev(vc_cache *c, model_t *m);
/** Notes that m's whole pass begins now, in the history of passes. */
void vc__note_pass_start(vc_cache *c, model_t *m);
/** As a's pass begins: joins a cycle of models that each begin right after the same one, two steps
 *  in a row. 1 when joined (the group's plan is made). */
int vc__try_join(vc_cache *c, model_t *a);
/** As a's pass begins: joins a repeating cycle of 3 to 64 passes in which some model runs more than
 *  once (guidance as two passes, whole few-step images). 1 when joined. */
int vc__try_join_repeating(vc_cache *c, model_t *a);
/** Starts recording every model's acquires from l (models interleaved layer by layer). */
void vc__grec_start(vc_cache *c, layer_t *l);
/** Stops recording and forgets the recorded periods. */
void vc__grec_stop(vc_cache *c);
/** Records the acquire of l; 1 when it completed a period and formed the group (l is then the
 *  group's first layer, already followed). */
int vc__grec_step(vc_cache *c, layer_t *l);

#endif /* VC_SCHEDULE_INTERNAL_H */
