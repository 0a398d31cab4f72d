/*
 * Step groups: models that run in turn every step (a ControlNet and its UNet; a whole few-step
 * image; models interleaved layer by layer) joined into one hidden model that gets one plan.
 *
 * docs/architecture.md ("Step groups") gives the rules. Everything here runs under the cache lock.
 */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "cache_internal.h"
#include "schedule_internal.h"

_Static_assert(sizeof(((vc_cache *)0)->phist) / sizeof(model_t *) == 4 * GROUP_MAX,
               "the pass history holds two periods of the longest cycle, twice (vc__note_pass_start)");

/* ---- step groups ------------------------------------------------------------------------------- */

/* Models that run in turn, whole pass after whole pass, every step (a ControlNet and then the UNet
 * it conditions, each step) are one pass to the device. Planned apart, each plan would assume the
 * whole device, the kept sets would push each other out and no prefetch would look past the end
 * of its own model (into the next model's first layers). So once each of them has begun its pass
 * right after the same other model's pass ended, two steps in a row, round a cycle, they are joined:
 * a hidden group model whose order is their orders in the order they run gets the plan, the ring,
 * the homes and the prefetch scan, exactly as one model would. Models interleaved layer by layer
 * join from a recorded period of their acquires instead (grec_*, below). A layer of another model
 * than the one due (a ControlNet that stops before the last steps) parts them again. One group at
 * a time. */

/* The group no longer holds: members plan alone again (each re-plans as its next pass begins). */
void vc__unjoin(vc_cache *c, const char *why) {
    model_t *g = c->group;
    if (!g) return;
    vc__log(c, VC_LOG_INFO, "models of group '%s' planned apart again: %s", g->name, why);
    if (c->stream_model == g) vc__release_stream_region(c, VC_EVICT_PLAN);
    vc__set_layout_pending(c, g, 0);
    const layer_t *cur = g->order_n ? g->order[g->pos] : NULL;
    for (size_t k = 0; k < g->nmembers; k++) {
        model_t *m = g->members[k];
        m->joined = NULL;
        m->step_prev_seen = 0;
        m->plan_capacity = 0; /* re-planned at its next pass */
        for (size_t i = 0; i < m->order_n; i++) {
            m->order[i]->keep = 0;
            m->order[i]->home_gen = 0;
            m->order[i]->uses = 0;
        }
        vc__mark_uses(m->order, m->order_n, m->next_use != NULL); /* its own positions, as install_order had them */
        m->pos = cur && cur->model == m ? cur->order_pos : m->order_n - 1;
        m->pf_next = (m->pos + 1) % m->order_n;
        m->pass_mismatches = 0;
    }
    c->group = NULL;
    vc__ram_ix_stale(c); /* members' positions and kept marks are their own again */
    vc__ram_ix_free(g);
    vc__tuner_model_gone(c, g);
    /* The history of passes went on through a group of whole passes (follow notes its members'
     * pass starts): what runs next may still close a longer cycle (try_join_repeating). */
    if (!g->whole_passes) c->phist_n = 0;
    free(g->members);
    free(g->order);
    free(g->next_use);
    free(g->uorder);
    free(g->pass_start);
    free(g->name);
    free(g);
}

/* Notes which model's pass ended right before m's pass begins now. */
void vc__note_step_prev(vc_cache *c, model_t *m) {
    if (c->last_ended_pass && c->last_model == m) {
        if (m->run_len < UINT_MAX) m->run_len++;
    } else {
        m->prev_run_len = m->run_len;
        m->run_len = 1;
        m->prev_run_start = m->run_start;
        m->run_start = c->use_clock;
    }
    model_t *p = c->last_ended_pass && c->last_model != m ? c->last_model : NULL;
    if (p && p == m->step_prev) {
        if (m->step_prev_seen < 2) m->step_prev_seen++;
    } else {
        m->step_prev = p;
        m->step_prev_seen = p != NULL;
    }
}

/* 1 when a member runs a layer more than once in its own pass (a shared module). */
static int any_own_repeats(model_t *const *members, size_t k) {
    for (size_t j = 0; j < k; j++)
        if (members[j]->next_use) return 1;
    return 0;
}

/* Forms the group of the k models `members` (in the order their first layers run) with `order`
 * (n layers, owned by the group from here; freed on failure): every member's order once, each in its
 * own order — or, with next_use (a member run twice per pass), twice, with the distinct layers in
 * uorder (un of them; both owned from here). `at` is the group position of the layer being
 * acquired. Returns 1 when formed (the group's plan is made). */
static int form_group(vc_cache *c, model_t **members, size_t k, layer_t **order, size_t n, size_t at,
                      size_t *next_use, layer_t **uorder, size_t un, int whole_passes) {
    size_t name_len = 1;
    for (size_t j = 0; j < k; j++) name_len += strlen(members[j]->name) + 1;
    int own_repeats = any_own_repeats(members, k);
    model_t *g = calloc(1, sizeof(*g));
    model_t **mem = malloc(k * sizeof(*mem));
    char *name = malloc(name_len);
    unsigned char *starts = whole_passes && own_repeats ? calloc(n, 1) : NULL;
    if (!g || !mem || !name || (whole_passes && own_repeats && !starts)) { /* no group: each plans alone */
        free(g), free(mem), free(name), free(starts), free(order), free(next_use), free(uorder);
        return 0;
    }
    name[0] = 0;
    for (size_t j = 0; j < k; j++) {
        model_t *m = mem[j] = members[j];
        if (j) strcat(name, "+");
        strcat(name, m->name);
        m->joined = g;
        vc__set_layout_pending(c, m, 0); /* the group's layout replaces the member's region and homes */
        g->vram_layers += m->vram_layers;
    }
    vc__mark_uses(order, n, next_use != NULL); /* a layer used twice: its first use */
    vc__ram_ix_stale(c);
    g->name = name;
    g->whole_passes = whole_passes;
    if (starts) {
        /* A member's first layer may come again inside its pass: mark where its passes begin (the
         * order is whole member passes, one after another). */
        g->pass_start = starts;
        for (size_t i = 0; i < n; i += order[i]->model->order_n) {
            starts[i] = 1;
            g->npasses++;
        }
    }
    for (size_t i = 0; whole_passes && !own_repeats && i < n; i++) g->npasses += order[i] == order[i]->model->order[0];
    g->members = mem;
    g->nmembers = k;
    g->order = order;
    g->order_n = n;
    g->order_valid = 1;
    g->next_use = next_use;
    g->uorder = uorder;
    g->uorder_n = un;
    g->layers = uorder ? uorder : order; /* the plan walks a model's layers: the group's distinct ones */
    g->nlayers = uorder ? un : n;
    g->pos = at;
    g->pf_next = at;
    g->last_tick = c->use_clock;
    c->group = g;
    vc__log(c, VC_LOG_INFO, "models %s run in turn every step: planned as one pass of %zu layers", name, n);
    vc__make_plan(c, g, 0);
    return 1;
}

/* form_group for an order whose layers each occur once unless a member runs some more than once in
 * its own pass (a shared module): those uses are linked first (vc__link_uses). */
static int form_linked_group(vc_cache *c, model_t **members, size_t k, layer_t **order, size_t n,
                             int whole_passes) {
    size_t *next_use = NULL, un = 0;
    layer_t **uorder = NULL;
    if (any_own_repeats(members, k) && vc__link_uses(order, n, &next_use, &uorder, &un) != VC_OK) {
        free(order);
        return 0; /* no group: each plans alone */
    }
    return form_group(c, members, k, order, n, 0, next_use, uorder, un, whole_passes);
}

static int may_plan_groups(const vc_cache *c) {
    return c->policy == VC_POLICY_PLANNED && (c->mode == VC_OFFLOAD_MODE_BALANCED || c->mode == VC_OFFLOAD_MODE_SEQUENTIAL);
}

int vc__may_group(const vc_cache *c) { return !c->group && may_plan_groups(c); }

/* As a's pass begins: when a has begun twice in a row right after the same model's pass, and the
 * models before it close a cycle back to a (each seen at least once), join them, a first; returns 1
 * when joined (the group's plan is made). A model that runs once per image (a text encoder before
 * the steps, a VAE after) never reaches twice here: the next step's predecessor is the model itself
 * (a whole few-step image joins through try_join_repeating). */
int vc__try_join(vc_cache *c, model_t *a) {
    if (!vc__may_group(c)) return 0;
    model_t *mem[GROUP_MAX] = {0};
    size_t k = 0, n = 0;
    model_t *x = a;
    do {
        if (!x || x->step_prev_seen < (x == a ? 2u : 1u) || !order_known(x) || x->joined || k == GROUP_MAX) return 0;
        for (size_t j = 0; j < k; j++)
            if (mem[j] == x) return 0; /* a cycle that does not come back to a */
        mem[k++] = x;
        n += x->order_n;
        x = x->step_prev;
    } while (x != a);
    if (k < 2) return 0;
    /* Run order: a, then the model whose pass follows a's (the last one found), and so on. */
    model_t *members[GROUP_MAX];
    members[0] = a;
    for (size_t j = 1; j < k; j++) members[j] = mem[k - j];
    layer_t **order = malloc(n * sizeof(*order));
    if (!order) return 0;
    size_t at = 0;
    for (size_t j = 0; j < k; j++)
        for (size_t i = 0; i < members[j]->order_n; i++) order[at++] = members[j]->order[i];
    return form_linked_group(c, members, k, order, n, 1);
}

/* Notes that m's whole pass begins now: after the previous model's whole pass (or m's own), the
 * history of passes goes on; after a model stopped in its midst, it starts afresh. */
void vc__note_pass_start(vc_cache *c, model_t *m) {
    if (c->last_model != m && !c->last_ended_pass && !c->last_recorded_whole) c->phist_n = 0;
    if (c->phist_n == sizeof c->phist / sizeof c->phist[0]) {
        /* Periods need the last 2 * GROUP_MAX entries; the history holds twice that and drops its
         * older half when full, so a pass start moves memory once every 2 * GROUP_MAX of them (a
         * one-layer model's every acquire is a pass start). */
        const unsigned keep = 2 * GROUP_MAX;
        memmove(c->phist, c->phist + c->phist_n - keep, keep * sizeof(*c->phist));
        memmove(c->phist_lim, c->phist_lim + c->phist_n - keep, keep * sizeof(*c->phist_lim));
        c->phist_n = keep;
    }
    c->phist_lim[c->phist_n] = c->stats.vram_limit;
    c->phist[c->phist_n++] = m;
}

/* As a's pass begins: when the passes of the last two repetitions agree with a period of 3 to 64
 * passes in which some model runs more than once, join them, with a layer's uses linked by
 * next_use. Such a period is a step that runs a model twice (a ControlNet, then the UNet for each
 * half of guidance: CN, U, U), or a whole image of a few-step pipeline (text encoders, the UNet or
 * transformer 1-62 times, the VAE): planned apart, the encoders and the VAE push the denoiser's kept
 * set out every image; as one, they stream through and it stays (docs/performance.md). Cycles of
 * distinct models join through try_join. */
int vc__try_join_repeating(vc_cache *c, model_t *a) {
    /* A group of whole passes may be inside a longer cycle (a ControlNet and its UNet, joined every
     * step, with the encoders and the VAE of an 8-step image around them): the cycle replaces it. */
    model_t *inner = c->group;
    if (!may_plan_groups(c) || (inner && !inner->whole_passes)) return 0;
    const unsigned h = c->phist_n;
    unsigned q = 1; /* the shortest period of the last two repetitions */
    while (q <= GROUP_MAX && (2 * q > h || memcmp(c->phist + h - q, c->phist + h - 2 * q, q * sizeof(*c->phist))))
        q++;
    if (q < 3 || q > GROUP_MAX) return 0; /* none, one model alone, or two in turn (try_join's) */
    /* After a cycle parted out of turn (the step count changes from image to image), two
     * repetitions may be a coincidence of run lengths (..., b, a x 7, b, a x 6, b: the last 7 passes
     * twice), and a group formed there parts again soon: ask for three. */
    if (c->cycle_parted && (h < 3 * q || memcmp(c->phist + h - q, c->phist + h - 3 * q, q * sizeof(*c->phist))))
        return 0;
    if (inner && q <= inner->npasses) return 0; /* (the group's own cycle, or a shorter one) */
    /* The group's plan is made, and checked, as its cycle begins, for the weight limit then. When
     * passes reserve their own working memory (smart_partial_loading: the denoiser 1 GB, the
     * encoders the standing 3 GB, the VAE 2.25 GB), begin the cycle with the pass that has the most
     * room, so that the kept set is sized for it; the leaner passes evict some of it, which the
     * roomier ones load again, rather than every pass streaming what a smaller plan left out. */
    size_t most = 0;
    for (unsigned j = h - q; j < h; j++) most = c->phist_lim[j] > most ? c->phist_lim[j] : most;
    if (c->phist_lim[h - 1] < most - most / 16) return 0; /* joined as the roomiest pass begins */
    model_t *const *last = c->phist + h - q;
    /* The cycle from a on: a (the latest), then the period's passes in the order they ran. */
    model_t *pass[GROUP_MAX] = {0}, *members[GROUP_MAX] = {0};
    size_t k = 0, n = 0, un = 0, runs[GROUP_MAX] = {0};
    int repeat = 0;
    pass[0] = a;
    for (unsigned j = 1; j < q; j++) pass[j] = last[j - 1];
    for (unsigned j = 0; j < q; j++) {
        model_t *x = pass[j];
        if (!order_known(x) || (x->joined && x->joined != inner)) return 0;
        size_t i = 0;
        while (i < k && members[i] != x) i++;
        if (i == k) members[k++] = x, un += x->order_n;
        repeat |= ++runs[i] > 1;
        n += x->order_n;
    }
    if (!repeat || k < 2) return 0; /* distinct models: try_join's case */
    /* Two models each running pass after pass that do not fit together (SDXL's base UNet for 24
     * steps, then its refiner for 6, on a card that holds either but not both): one kept set for the
     * whole cycle would keep part of each and stream the rest at every pass; apart, each keeps its
     * own layers through its run (model_active) and loads once per image: 63.1 GB per image on 8 GB
     * instead of 12.1 (docs/performance.md). Where they fit together, the cycle keeps both. */
    unsigned phased = 0;
    size_t phased_bytes = 0;
    for (size_t i = 0; i < k; i++)
        for (unsigned j = 0; j < q; j++)
            if (pass[j] == members[i] && pass[(j + 1) % q] == members[i]) {
                phased++;
                for (size_t l = 0; l < members[i]->order_n; l++)
                    phased_bytes = sat_add(phased_bytes, arena_round(members[i]->order[l]->bytes));
                break;
            }
    if (phased >= 2 && phased_bytes > most) return 0;
    for (size_t j = 0; inner && j < inner->nmembers; j++) {
        size_t i = 0;
        while (i < k && members[i] != inner->members[j]) i++;
        if (i == k) return 0; /* the group has a model the cycle does not run */
    }
    if (any_own_repeats(members, k)) { /* its uses are linked with the cycle's, by layer */
        layer_t **order = malloc(n * sizeof(*order));
        if (!order) return 0;
        if (inner) vc__unjoin(c, "they run inside a longer cycle, planned as one");
        size_t at = 0;
        for (unsigned j = 0; j < q; j++)
            for (size_t i = 0; i < pass[j]->order_n; i++) order[at++] = pass[j]->order[i];
        return form_linked_group(c, members, k, order, n, 1);
    }
    if (inner) vc__unjoin(c, "they run inside a longer cycle, planned as one");
    layer_t **order = malloc(n * sizeof(*order)), **uorder = malloc(un * sizeof(*uorder));
    size_t *next_use = malloc(n * sizeof(*next_use)), start[GROUP_MAX];
    if (!order || !uorder || !next_use) {
        free(order), free(uorder), free(next_use);
        return 0;
    }
    size_t at = 0, uat = 0;
    for (unsigned j = 0; j < q; j++) {
        start[j] = at;
        for (size_t i = 0; i < pass[j]->order_n; i++) order[at++] = pass[j]->order[i];
        unsigned first = 1;
        for (unsigned e = 0; e < j; e++) first &= pass[e] != pass[j];
        for (size_t i = 0; first && i < pass[j]->order_n; i++) uorder[uat++] = pass[j]->order[i];
    }
    for (unsigned j = 0; j < q; j++) { /* each use points at the same layer's next use, round the cycle */
        unsigned nx = (j + 1) % q;
        while (pass[nx] != pass[j]) nx = (nx + 1) % q;
        for (size_t i = 0; i < pass[j]->order_n; i++) next_use[start[j] + i] = start[nx] + i;
    }
    return form_group(c, members, k, order, n, 0, next_use, uorder, un, 1);
}

/* Models interleaved layer by layer (an adapter's layers used between the UNet's): once a model's
 * pass has seen another model's layers in its midst, the acquires of all models are recorded from
 * its next pass start until its first layer comes round again; if that period holds each model it
 * names exactly once, in its own order, it becomes the group's order. */
void vc__grec_stop(vc_cache *c) {
    free(c->grec);
    free(c->grec_prev);
    c->grec = c->grec_prev = NULL;
    c->grec_n = c->grec_cap = c->grec_prev_n = 0;
}

void vc__grec_start(vc_cache *c, layer_t *l) {
    size_t cap = 16;
    for (uint32_t i = 0; i < c->models.count; i++) {
        const model_t *o = c->models.slots[i].ptr;
        if (o && order_known(o)) cap += o->order_n;
    }
    free(c->grec); /* (a period before it, if any, stays in grec_prev) */
    c->grec_n = c->grec_cap = 0;
    c->grec = malloc(cap * sizeof(*c->grec));
    if (!c->grec) return;
    c->grec_cap = cap;
    c->grec[c->grec_n++] = l;
}

static int grec_finish(vc_cache *c) {
    model_t *members[GROUP_MAX];
    size_t k = 0, n = c->grec_n;
    int ok = 1;
    for (size_t i = 0; i < n && ok; i++) {
        model_t *m = c->grec[i]->model;
        size_t j = 0;
        while (j < k && members[j] != m) j++;
        if (j == k) {
            if (k == GROUP_MAX) ok = 0;
            else members[k++] = m, m->grec_seen = 0;
        }
        if (!ok) break;
        /* its next layer in its own order, or the period is not a clean interleaving */
        if (!c->grec[i]->in_order || m->grec_seen >= m->order_n || m->order[m->grec_seen] != c->grec[i]) ok = 0;
        else m->grec_seen++;
    }
    for (size_t j = 0; j < k && ok; j++) ok = members[j]->grec_seen == members[j]->order_n;
    if (!ok || k < 2 || !vc__may_group(c)) {
        vc__grec_stop(c);
        return 0;
    }
    /* Formed once two periods in a row agree (an irregular interleaving would part the group at
     * once and lay the device out again for nothing); else this one waits for the next. */
    layer_t **order = c->grec, *first = order[0];
    int same = c->grec_prev && c->grec_prev_n == n && !memcmp(c->grec_prev, order, n * sizeof(*order));
    free(c->grec_prev);
    c->grec_prev = order;
    c->grec_prev_n = n;
    c->grec = NULL;
    if (!same) {
        vc__grec_start(c, first);
        return 0;
    }
    c->grec_prev = NULL;
    vc__grec_stop(c);
    return form_linked_group(c, members, k, order, n, 0);
}

/* Each acquire while a period is recorded; 1 when it completed a period and formed the group
 * (l is then the group's first layer, already followed). */
int vc__grec_step(vc_cache *c, layer_t *l) {
    if (l == c->grec[0]) /* the anchor's first layer again: one period */
        return grec_finish(c);
    if (l->model->joined || !order_known(l->model) || !l->in_order || c->grec_n == c->grec_cap)
        vc__grec_stop(c);
    else
        c->grec[c->grec_n++] = l;
    return 0;
}
