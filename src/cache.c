/* Cache lifetime and the registry of models and layers. */
#include <stdio.h>
#include <stdlib.h>
#include <stddef.h>
#include <string.h>

#include "cache_internal.h"

#define DEFAULT_SEGMENT_BYTES ((size_t)256 << 20)
#define MAX_ALIGN ((size_t)2 << 20)

void vc_cache_options_init_sized(vc_cache_options *o, size_t size) {
    if (!o) return;
    vc_cache_options d;
    memset(&d, 0, sizeof d);
    d.ram_budget = VC_SIZE_AUTO;
    d.vram_budget = VC_SIZE_AUTO;
    d.working_mem = 3 * VC_GB;
    d.keep_ram_copy = 1;
    d.arena_segment_bytes = DEFAULT_SEGMENT_BYTES;
    d.offload_mode = VC_OFFLOAD_MODE_BALANCED;
    d.policy = VC_POLICY_PLANNED;
    d.prefetch_depth = 8;
    d.copy_part_min_bytes = (size_t)1 << 20;
    d.log_level = VC_LOG_WARN;
    /* Only the caller's bytes are written; a newer caller's unknown tail is zeroed, and
     * vc_cache_create refuses a size it does not know. */
    memset(o, 0, size);
    memcpy(o, &d, size < sizeof d ? size : sizeof d);
    if (size >= sizeof o->struct_size) o->struct_size = size;
}

void(vc_cache_options_init)(vc_cache_options *o) { vc_cache_options_init_sized(o, sizeof *o); }

static char *dup_str(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

int vc_cache_create(const vc_cache_options *opts, vc_cache **out) {
    if (!out) return vc__fail(NULL, VC_ERR_INVALID_ARG, "vc_cache_create: out is NULL");
    *out = NULL;
    vc_cache_options o;
    vc_cache_options_init(&o);
    if (opts) {
        if (opts->struct_size < VC__OPTIONS_FIRST_SIZE || opts->struct_size > sizeof(o))
            return vc__fail(NULL, VC_ERR_INVALID_ARG,
                            "vc_cache_create: options.struct_size is %zu, expected %zu to %zu (initialise "
                            "options with vc_cache_options_init; a larger size comes from a newer header "
                            "than this library)",
                            opts->struct_size, (size_t)VC__OPTIONS_FIRST_SIZE, sizeof(o));
        memcpy(&o, opts, opts->struct_size); /* fields beyond the caller's keep their defaults */
    }
    if (o.log_level > VC_LOG_DEBUG || o.log_level < VC_LOG_ERROR)
        return vc__fail(NULL, VC_ERR_INVALID_ARG, "vc_cache_create: log_level %d is not a vc_log_level",
                        (int)o.log_level);
    if (o.arena_segment_bytes == 0) o.arena_segment_bytes = DEFAULT_SEGMENT_BYTES;
    if ((int)o.offload_mode < VC_OFFLOAD_MODE_NONE || o.offload_mode > VC_OFFLOAD_MODE_BALANCED)
        return vc__fail(NULL, VC_ERR_INVALID_ARG, "vc_cache_create: offload_mode %d is not a vc_offload_mode",
                        (int)o.offload_mode);
    if (o.policy != VC_POLICY_PLANNED && o.policy != VC_POLICY_LRU)
        return vc__fail(NULL, VC_ERR_INVALID_ARG, "vc_cache_create: policy %d is not a vc_policy", (int)o.policy);
    if (!(o.offload_max_gpu_memory >= 0) || o.offload_max_gpu_memory > 1048576.0)
        return vc__fail(NULL, VC_ERR_INVALID_ARG, "vc_cache_create: offload_max_gpu_memory %g must be 0 (none), "
                        "a fraction <= 1, or GB <= 1048576", o.offload_max_gpu_memory);

    if (o.stream_slots > VC__MAX_STREAM_SLOTS && o.stream_slots != VC_STREAM_SLOTS_TUNE)
        return vc__fail(NULL, VC_ERR_INVALID_ARG, "vc_cache_create: stream_slots %u must be 0 (the planner chooses), "
                        "1 to %d, or VC_STREAM_SLOTS_TUNE (%u)", o.stream_slots, VC__MAX_STREAM_SLOTS,
                        VC_STREAM_SLOTS_TUNE);
    if (!(o.keep_alive_s >= 0) || o.keep_alive_s > 1e9)
        return vc__fail(NULL, VC_ERR_INVALID_ARG, "vc_cache_create: keep_alive_s %g must be 0 (keep for ever) or a "
                        "number of seconds up to 1e9", o.keep_alive_s);

    vc_cache *c = calloc(1, sizeof(*c));
    if (!c) return vc__fail(NULL, VC_ERR_NO_MEMORY, "vc_cache_create: out of host memory");
    /* The stand-in owner of quarantined device ranges: held for ever, so nothing evicts them. */
    static char quarantine_name[] = "(device range a write-back may still read)";
    c->quarantine_model.name = quarantine_name;
    c->quarantine_owner.name = quarantine_name;
    c->quarantine_owner.model = &c->quarantine_model;
    c->quarantine_owner.holds = 1;
    c->log_fn = o.log_fn;
    c->log_user = o.log_user;
    c->log_level = o.log_level;
    c->working_mem = o.working_mem;
    c->vram_budget = o.vram_budget;
    c->keep_ram_copy = o.keep_ram_copy ? 1 : 0;
    c->log_memory_usage = o.log_memory_usage ? 1 : 0;
    c->segment_bytes = arena_round(o.arena_segment_bytes);
    c->mode = o.offload_mode;
    c->stream_ordered = o.stream_ordered_working_mem ? 1 : 0;
    c->policy = o.policy;
    c->max_gpu_memory = o.offload_max_gpu_memory;
    c->prefetch_depth = o.prefetch_depth;
    c->keep_alive_s = o.keep_alive_s;
    c->smart_working_mem = o.smart_working_mem ? 1 : 0;
    c->slots_setting = o.stream_slots;
    c->stream_slots = o.stream_slots == VC_STREAM_SLOTS_TUNE ? 0 : o.stream_slots;
    c->copy_part_min = o.copy_part_min_bytes;

    int st;
    if (o.backend) {
        c->backend = o.backend;
    } else {
        st = vc_backend_host_create(0, &c->backend);
        if (st != VC_OK) {
            free(c);
            return st;
        }
        c->owns_backend = 1;
    }
    c->ops = c->backend->ops;
    c->bctx = c->backend->ctx;

    if ((st = c->ops->stream_create(c->bctx, &c->upload_stream)) != VC_OK ||
        (st = c->ops->stream_create(c->bctx, &c->download_stream)) != VC_OK) {
        const char *detail = vc__take_backend_error();
        if (c->upload_stream) c->ops->stream_destroy(c->bctx, c->upload_stream);
        if (c->owns_backend) vc_backend_destroy(c->backend);
        free(c);
        return vc__fail(NULL, VC_ERR_BACKEND, "vc_cache_create: backend could not create its copy "
                        "streams: %s", detail);
    }
    pthread_mutex_init(&c->lock, NULL);
    pthread_cond_init(&c->loaded, NULL);
    slot_table_init(&c->models);
    slot_table_init(&c->layers);
    arena_init(&c->arena);
    arena_init(&c->sarena);

    /* An explicit VRAM budget takes precedence over the working memory (seed 000): above the GPU's
     * memory less that working memory, operations may run out of device memory. Say so once. */
    if (o.vram_budget != VC_SIZE_AUTO && c->ops->kind == VC_BACKEND_KIND_GPU) {
        size_t free_b = 0, total = 0;
        if (c->ops->mem_info(c->bctx, &free_b, &total) != VC_OK) {
            vc__take_backend_error(); /* no reading: nothing to say */
        } else if (o.vram_budget > sat_sub(total, o.working_mem)) {
            char v[32], s[32], t[32], w[32];
            vc__log(c, VC_LOG_WARN, "max_cache_vram_gb (%s) is above this GPU's largest safe value, %s (%s less "
                    "device_working_mem_gb %s): operations may run out of device memory; lower it, or leave it "
                    "unset so the budget follows the GPU", vc__fmt_bytes(o.vram_budget, v, sizeof v),
                    vc__fmt_bytes(sat_sub(total, o.working_mem), s, sizeof s), vc__fmt_bytes(total, t, sizeof t),
                    vc__fmt_bytes(o.working_mem, w, sizeof w));
        }
    }
    /* RAM budget: explicit, or InvokeAI's heuristics on this machine (logged with the reasons),
     * without its GPU cap where layers stream (vc__ram_budget). */
    char why[384], ram_why[96], a[32];
    if (o.ram_budget != VC_SIZE_AUTO) {
        c->ram_budget = o.ram_budget;
        vc__log(c, VC_LOG_INFO, "RAM cache budget %s (explicit)",
                vc__fmt_bytes(c->ram_budget, a, sizeof a));
    } else {
        size_t free_b = 0, total = 0;
        if (c->ops->kind == VC_BACKEND_KIND_GPU) c->ops->mem_info(c->bctx, &free_b, &total);
        size_t sys = vc_system_ram(ram_why, sizeof ram_why);
        c->ram_budget = vc__ram_budget(sys, total, c->vram_budget, c->working_mem, c->mode, why, sizeof why);
        vc__log(c, VC_LOG_INFO, "RAM cache budget computed: system RAM %s; %s", ram_why, why);
    }
    if (o.stage_ahead && (st = vc__stager_start(c)) != VC_OK) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", vc_last_error());
        vc_cache_destroy(c);
        return vc__fail(NULL, st, "%s", msg);
    }
    if (o.keep_alive_s > 0 && (st = vc__keep_alive_start(c)) != VC_OK) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", vc_last_error());
        vc_cache_destroy(c);
        return vc__fail(NULL, st, "%s", msg);
    }
    c->stats.ram_budget = c->ram_budget;
    c->stats.working_mem = c->working_mem;
    c->stats.vram_limit = vc__weight_limit(c);
    vc__log(c, VC_LOG_INFO, "cache created on backend '%s': VRAM budget %s, working memory %s, "
            "keep_ram_copy %s", c->ops->name,
            c->vram_budget == VC_SIZE_AUTO ? "dynamic" : vc__fmt_bytes(c->vram_budget, a, sizeof a),
            vc__fmt_bytes(c->working_mem, why, sizeof why), c->keep_ram_copy ? "on" : "off");
    *out = c;
    return VC_OK;
}

/* Something keeps the cache from being torn down: a hold, a loader, a reservation. */
static int cache_busy(vc_cache *c, char *what, size_t size) {
    if (c->dependents) {
        snprintf(what, size, "%u layer(s) of other caches are shared from this one (or were, and an upload of "
                 "theirs from it could not be waited for yet); unregister them, or destroy those caches, first",
                 c->dependents);
        return 1;
    }
    if (c->reservations) {
        snprintf(what, size, "a working-memory reservation of %zu bytes is active",
                 c->reservations->bytes);
        return 1;
    }
    for (uint32_t i = 0; i < c->layers.count; i++) {
        layer_t *l = c->layers.slots[i].ptr;
        if (l && (l->holds || l->loading)) {
            snprintf(what, size, "layer '%s' of model '%s' is %s", l->name, l->model->name,
                     l->loading ? "loading" : "held");
            return 1;
        }
    }
    return 0;
}

int vc_cache_destroy(vc_cache *c) {
    if (!c) return vc__fail(NULL, VC_ERR_INVALID_ARG, "vc_cache_destroy: cache is NULL");
    /* The stager first: its loader call would read as "loading" below. Restarted if we refuse. */
    int stager_was_on = c->stager_on, keep_alive_was_on = c->keep_alive_on;
    vc__stager_stop(c);
    vc__keep_alive_stop(c);
    pthread_mutex_lock(&c->lock);
    char what[256];
    if (cache_busy(c, what, sizeof what)) {
        int st = vc__fail(c, VC_ERR_BUSY, "vc_cache_destroy: %s; release it first", what);
        pthread_mutex_unlock(&c->lock);
        if (stager_was_on && vc__stager_start(c) != VC_OK)
            vc__log(c, VC_LOG_WARN, "vc_cache_destroy: stage ahead could not restart: %s", vc_last_error());
        if (keep_alive_was_on && vc__keep_alive_start(c) != VC_OK)
            vc__log(c, VC_LOG_WARN, "vc_cache_destroy: keep-alive could not restart: %s", vc_last_error());
        return st;
    }
    vc__trace_close(c);
    for (uint32_t i = 0; i < c->layers.count; i++) {
        layer_t *l = c->layers.slots[i].ptr;
        if (l) vc__layer_destroy(c, l);
    }
    for (uint32_t i = 0; i < c->models.count; i++) /* first, while every model is still there */
        if (c->models.slots[i].ptr) vc__sched_model_free(c, c->models.slots[i].ptr);
    for (uint32_t i = 0; i < c->models.count; i++) {
        model_t *m = c->models.slots[i].ptr;
        if (!m) continue;
        free(m->layers);
        free(m->name);
        free(m);
    }
    vc__free_device_quarantine(c, 1); /* the device_free below waits for the device first */
    while (c->arena.segments) c->ops->device_free(c->bctx, arena_remove_segment(&c->arena, c->arena.segments));
    while (c->sarena.segments) c->ops->device_free(c->bctx, arena_remove_segment(&c->sarena, c->sarena.segments));
    /* after the device memory: cudaFree has waited for the device, so no copy of ours still runs */
    vc__free_quarantine(c);
    vc__release_remote_pins(c);
    c->ops->stream_destroy(c->bctx, c->upload_stream);
    c->ops->stream_destroy(c->bctx, c->download_stream);
    slot_table_fini(&c->layers);
    slot_table_fini(&c->models);
    pthread_mutex_unlock(&c->lock);
    pthread_mutex_destroy(&c->lock);
    pthread_cond_destroy(&c->loaded);
    if (c->owns_backend) vc_backend_destroy(c->backend);
    free(c);
    return VC_OK;
}

vc_backend *vc_cache_backend(vc_cache *c) { return c ? c->backend : NULL; }

/* ---- models ---------------------------------------------------------------------------------- */

static model_t *find_model_by_name(vc_cache *c, const char *name) {
    for (uint32_t i = 0; i < c->models.count; i++) {
        model_t *m = c->models.slots[i].ptr;
        if (m && strcmp(m->name, name) == 0) return m;
    }
    return NULL;
}

int vc_model_register(vc_cache *c, const char *name, vc_model_id *out) {
    if (!c) return vc__fail(NULL, VC_ERR_INVALID_ARG, "vc_model_register: cache is NULL");
    if (!out || !name || !name[0])
        return vc__fail_unlocked(c, VC_ERR_INVALID_ARG, "vc_model_register: %s",
                        !out ? "out is NULL" : "name must be a non-empty string");
    pthread_mutex_lock(&c->lock);
    int st = VC_OK;
    model_t *m = NULL;
    if (find_model_by_name(c, name)) {
        st = vc__fail(c, VC_ERR_EXISTS, "vc_model_register: a model named '%s' is already registered", name);
        goto done;
    }
    m = calloc(1, sizeof(*m));
    if (!m || !(m->name = dup_str(name)) || !(m->id = slot_table_insert(&c->models, m))) {
        if (m) free(m->name);
        free(m);
        st = vc__fail(c, VC_ERR_NO_MEMORY, "vc_model_register: out of host memory for model '%s'", name);
        goto done;
    }
    c->stats.models++;
    *out = m->id;
done:
    pthread_mutex_unlock(&c->lock);
    return st;
}

int vc_model_find(vc_cache *c, const char *name, vc_model_id *out) {
    if (!c || !name || !out) return vc__fail(NULL, VC_ERR_INVALID_ARG, "vc_model_find: NULL argument");
    pthread_mutex_lock(&c->lock);
    model_t *m = find_model_by_name(c, name);
    int st = VC_OK;
    if (m)
        *out = m->id;
    else
        st = vc__fail(c, VC_ERR_NOT_FOUND, "vc_model_find: no model named '%s'", name);
    pthread_mutex_unlock(&c->lock);
    return st;
}

int vc_model_unregister(vc_cache *c, vc_model_id id) {
    if (!c) return vc__fail(NULL, VC_ERR_INVALID_ARG, "vc_model_unregister: cache is NULL");
    pthread_mutex_lock(&c->lock);
    int st = VC_OK;
    model_t *m = vc__settled_model(c, id); /* the stage-ahead worker loading one of its layers: wait */
    if (!m) {
        st = vc__fail(c, VC_ERR_NOT_FOUND, "vc_model_unregister: model id %#llx is not registered",
                      (unsigned long long)id);
        goto done;
    }
    for (size_t i = 0; i < m->nlayers; i++) {
        layer_t *l = m->layers[i];
        if (l->holds || l->host_pins) { /* host_pins: freeing the RAM copy would pull it from under a copy */
            st = vc__fail(c, VC_ERR_BUSY, "vc_model_unregister: layer '%s' of model '%s' is %s; "
                          "nothing was unregistered", l->name, m->name,
                          l->holds ? "held" : "being read by another cache (its upload is not reaped yet)");
            goto done;
        }
    }
    while (m->nlayers) vc__layer_destroy(c, m->layers[m->nlayers - 1]);
    slot_table_remove(&c->models, id);
    c->stats.models--;
    vc__sched_model_free(c, m);
    free(m->layers);
    free(m->name);
    free(m);
done:
    pthread_mutex_unlock(&c->lock);
    return st;
}

/* ---- layers ---------------------------------------------------------------------------------- */

static int shared_never_loads(void *user, vc_layer_id layer, void *dst, size_t bytes) {
    (void)user, (void)layer, (void)dst, (void)bytes;
    return -1;
}

int vc_layer_register(vc_cache *c, vc_model_id model, const vc_layer_desc *d, vc_layer_id *out) {
    if (!c) return vc__fail(NULL, VC_ERR_INVALID_ARG, "vc_layer_register: cache is NULL");
    if (!d || !out) return vc__fail_unlocked(c, VC_ERR_INVALID_ARG, "vc_layer_register: %s is NULL", !d ? "desc" : "out");
    const char *nm = d->name && d->name[0] ? d->name : "(unnamed)";
    if (!d->name || !d->name[0])
        return vc__fail_unlocked(c, VC_ERR_INVALID_ARG, "vc_layer_register: layer name must be a non-empty string");
    if (d->bytes == 0)
        return vc__fail_unlocked(c, VC_ERR_INVALID_ARG, "vc_layer_register: layer '%s' has size 0; expected > 0", nm);
    if ((d->host_ptr != NULL) == (d->loader != NULL))
        return vc__fail_unlocked(c, VC_ERR_INVALID_ARG, "vc_layer_register: layer '%s' must have exactly one "
                        "source (host_ptr or loader), it has %s", nm, d->host_ptr ? "both" : "none");
    size_t align = d->alignment ? d->alignment : ARENA_GRAIN;
    if ((align & (align - 1)) || align > MAX_ALIGN)
        return vc__fail_unlocked(c, VC_ERR_INVALID_ARG, "vc_layer_register: layer '%s' alignment %zu is not a "
                        "power of two between 1 and %zu", nm, d->alignment, MAX_ALIGN);
    if (align < ARENA_GRAIN) align = ARENA_GRAIN;
    if (!(d->cost >= 0) || d->cost > 1e30)
        return vc__fail_unlocked(c, VC_ERR_INVALID_ARG, "vc_layer_register: layer '%s' cost %g must be a finite "
                                 "number >= 0", nm, d->cost);
    if (d->bytes > SIZE_MAX / 2 - align)
        return vc__fail_unlocked(c, VC_ERR_TOO_LARGE, "vc_layer_register: layer '%s' size %zu bytes overflows "
                        "device address arithmetic (at most %zu)", nm, d->bytes, SIZE_MAX / 2 - align);

    pthread_mutex_lock(&c->lock);
    int st = VC_OK;
    model_t *m = slot_table_get(&c->models, model);
    layer_t *l = NULL;
    if (!m) {
        st = vc__fail(c, VC_ERR_NOT_FOUND, "vc_layer_register: layer '%s': model id %#llx is not registered",
                      nm, (unsigned long long)model);
        goto done;
    }
    if (m->nlayers == m->cap) {
        size_t cap = m->cap ? m->cap * 2 : 16;
        layer_t **arr = realloc(m->layers, cap * sizeof(*arr));
        if (!arr) goto oom;
        m->layers = arr;
        m->cap = cap;
    }
    l = calloc(1, sizeof(*l));
    if (!l || !(l->name = dup_str(d->name))) goto oom;
    if (!(l->id = slot_table_insert(&c->layers, l))) goto oom;
    l->model = m;
    l->bytes = d->bytes;
    l->align = align;
    l->cost = d->cost;
    l->host_src = d->host_ptr;
    l->loader = d->loader;
    l->loader_user = d->loader_user;
    l->model_pos = m->nlayers;
    m->layers[m->nlayers++] = l;
    m->ra_room = 0; /* (its largest layers may have changed) */
    c->stats.layers++;
    *out = l->id;
    goto done;
oom:
    if (l) free(l->name);
    free(l);
    st = vc__fail(c, VC_ERR_NO_MEMORY, "vc_layer_register: out of host memory registering layer '%s' of "
                  "model '%s'", nm, m->name);
done:
    pthread_mutex_unlock(&c->lock);
    return st;
}

/* Serialises shared registrations, so that two of them cannot each pass the role check below for
 * the other (cache A sharing from B while B shares from A). Registration is rare; nothing else takes it. */
static pthread_mutex_t share_roles_lock = PTHREAD_MUTEX_INITIALIZER;

int vc_layer_register_shared(vc_cache *c, vc_model_id model, vc_cache *owner, vc_layer_id source, vc_layer_id *out) {
    static const char fn[] = "vc_layer_register_shared";
    if (!c || !owner || !out || owner == c)
        return vc__fail(NULL, VC_ERR_INVALID_ARG, "%s: %s", fn, owner == c && c ? "a cache cannot share from itself"
                                                               : "NULL argument");
    /* A sharing cache takes its owner's lock inside its own, so a cache that others share from must
     * not share from anyone: two caches sharing from each other (or any cycle) could deadlock. */
    pthread_mutex_lock(&share_roles_lock);
    pthread_mutex_lock(&c->lock);
    unsigned readers = c->dependents;
    pthread_mutex_unlock(&c->lock);
    if (readers) {
        pthread_mutex_unlock(&share_roles_lock);
        return vc__fail_unlocked(c, VC_ERR_INVALID_ARG,
                                 "%s: %u layer(s) of other caches share from this cache, so it cannot share from "
                                 "another (its lock would be taken both before and after that cache's); let one "
                                 "cache own every model that is shared", fn, readers);
    }
    /* Read the source and count ourselves as its reader (owner's lock alone). */
    pthread_mutex_lock(&owner->lock);
    layer_t *src = slot_table_get(&owner->layers, source);
    size_t owner_shares = owner->shared_layers;
    char *name = NULL; /* the source's whole name, however long */
    size_t bytes = 0, align = 0;
    double cost = 0;
    if (src && !owner_shares && (name = dup_str(src->name)) != NULL) {
        bytes = src->bytes;
        align = src->align;
        cost = src->cost;
        owner->dependents++;
    }
    pthread_mutex_unlock(&owner->lock);
    int st = VC_OK;
    if (!src)
        st = vc__fail_unlocked(c, VC_ERR_NOT_FOUND, "%s: layer id %#llx is not registered in the owning cache", fn,
                               (unsigned long long)source);
    else if (owner_shares)
        st = vc__fail_unlocked(c, VC_ERR_INVALID_ARG,
                               "%s: the owning cache itself shares %zu layer(s) from another cache, so it cannot be "
                               "shared from (its lock would be taken both before and after that cache's); let one "
                               "cache own every model that is shared", fn, owner_shares);
    else if (!name)
        st = vc__fail_unlocked(c, VC_ERR_NO_MEMORY, "%s: out of host memory", fn);
    if (st != VC_OK) {
        pthread_mutex_unlock(&share_roles_lock);
        return st;
    }
    /* Register like any layer; a placeholder loader is never called (the owner produces the bytes). */
    vc_layer_desc d = {.name = name, .bytes = bytes, .alignment = align, .cost = cost, .loader = shared_never_loads};
    st = vc_layer_register(c, model, &d, out);
    free(name); /* copied by the registration */
    if (st == VC_OK) {
        pthread_mutex_lock(&c->lock);
        layer_t *l = slot_table_get(&c->layers, *out);
        l->owner = owner;
        l->owner_layer = source;
        l->loader = NULL;
        c->shared_layers++;
        pthread_mutex_unlock(&c->lock);
    } else {
        pthread_mutex_lock(&owner->lock);
        owner->dependents--;
        pthread_mutex_unlock(&owner->lock);
    }
    pthread_mutex_unlock(&share_roles_lock);
    return st;
}

int vc_layer_unregister(vc_cache *c, vc_layer_id id) {
    if (!c) return vc__fail(NULL, VC_ERR_INVALID_ARG, "vc_layer_unregister: cache is NULL");
    pthread_mutex_lock(&c->lock);
    int st = VC_OK;
    layer_t *l = vc__settled_layer(c, id); /* another thread (the stage-ahead worker) loading it: wait */
    if (!l)
        st = vc__fail(c, VC_ERR_NOT_FOUND, "vc_layer_unregister: layer id %#llx is not registered",
                      (unsigned long long)id);
    else if (l->holds || l->host_pins)
        st = vc__fail(c, VC_ERR_BUSY, "vc_layer_unregister: layer '%s' of model '%s' is %s (%u holds)",
                      l->name, l->model->name, l->holds ? "held" : "being read by another cache", l->holds);
    else
        vc__layer_destroy(c, l);
    pthread_mutex_unlock(&c->lock);
    return st;
}

vc_residency vc__residency(const layer_t *l);
vc_residency vc__residency(const layer_t *l) {
    if (l->loading) return VC_RES_LOADING;
    int ram = l->ram || l->host_src;
    if (l->vblock) return ram ? VC_RES_VRAM_RAM : VC_RES_VRAM;
    return ram ? VC_RES_RAM : VC_RES_NONE;
}

/* Output structures grow at their end; a caller passes the size it was built with (the *_sized
 * entry points, reached through macros in the header). Sizes from the first release to ours are
 * served, writing only the caller's bytes; anything else is refused. */
static int check_out_size(size_t size, size_t first, size_t ours, const char *fn, const char *type) {
    if (size >= first && size <= ours) return VC_OK;
    return vc__fail(NULL, VC_ERR_INVALID_ARG, "%s: size %zu is not a %s this library knows (%zu to %zu bytes; "
                    "a larger one comes from a newer header than this library)", fn, size, type, first, ours);
}

#define LAYER_INFO_FIRST_SIZE (offsetof(vc_layer_info, patched) + sizeof(int))
#define STATS_FIRST_SIZE (offsetof(vc_stats, layers_held) + sizeof(uint64_t))

int vc_layer_get_info_sized(vc_cache *c, vc_layer_id id, vc_layer_info *out, size_t size) {
    if (!c || !out) return vc__fail(NULL, VC_ERR_INVALID_ARG, "vc_layer_get_info: NULL argument");
    int st = check_out_size(size, LAYER_INFO_FIRST_SIZE, sizeof *out, "vc_layer_get_info", "vc_layer_info");
    if (st != VC_OK) return st;
    pthread_mutex_lock(&c->lock);
    layer_t *l = slot_table_get(&c->layers, id);
    if (!l) {
        st = vc__fail(c, VC_ERR_NOT_FOUND, "vc_layer_get_info: layer id %#llx is not registered",
                      (unsigned long long)id);
    } else {
        vc_layer_info info = {.name = l->name,
                              .model = l->model->id,
                              .bytes = l->bytes,
                              .alignment = l->align,
                              .residency = vc__residency(l),
                              .holds = l->holds,
                              .borrowed_source = l->host_src != NULL,
                              .patched = l->patched};
        memcpy(out, &info, size);
    }
    pthread_mutex_unlock(&c->lock);
    return st;
}

int(vc_layer_get_info)(vc_cache *c, vc_layer_id id, vc_layer_info *info) {
    return vc_layer_get_info_sized(c, id, info, sizeof *info);
}

/* ---- stats ----------------------------------------------------------------------------------- */

int vc_cache_get_stats_sized(vc_cache *c, vc_stats *out, size_t size) {
    if (!c || !out) return vc__fail(NULL, VC_ERR_INVALID_ARG, "vc_cache_get_stats: NULL argument");
    int st = check_out_size(size, STATS_FIRST_SIZE, sizeof *out, "vc_cache_get_stats", "vc_stats");
    if (st != VC_OK) return st;
    pthread_mutex_lock(&c->lock);
    vc__reap_deferred(c); /* so ram_bytes counts only copies still needed */
    vc_stats s = c->stats;
    s.ram_bytes = c->ram_bytes;
    s.vram_bytes = vc__vram_used(c);
    s.arena_bytes = vc__vram_total(c);
    s.reserved_bytes = c->reserved_sum;
    pthread_mutex_unlock(&c->lock);
    memcpy(out, &s, size);
    return VC_OK;
}

int(vc_cache_get_stats)(vc_cache *c, vc_stats *out) { return vc_cache_get_stats_sized(c, out, sizeof *out); }

static void print_stdout(void *user, const char *text) {
    (void)user;
    fputs(text, stdout);
}

int vc_cache_print_stats(vc_cache *c, vc_print_fn print, void *user) {
    vc_stats s;
    int st = vc_cache_get_stats(c, &s);
    if (st != VC_OK) return st;
    if (!print) print = print_stdout;
    char buf[4096], a[32], b[32], d[32];
    size_t n = 0;
#define P(...) n += (size_t)snprintf(buf + n, n < sizeof buf ? sizeof buf - n : 0, __VA_ARGS__)
    P("libvramcache stats (backend %s)\n", c->ops->name);
    P("  RAM pool : %s used, peak %s, budget %s\n", vc__fmt_bytes(s.ram_bytes, a, sizeof a),
      vc__fmt_bytes(s.ram_peak_bytes, b, sizeof b), vc__fmt_bytes(s.ram_budget, d, sizeof d));
    P("  VRAM     : %s weights, peak %s; arena %s", vc__fmt_bytes(s.vram_bytes, a, sizeof a),
      vc__fmt_bytes(s.vram_peak_bytes, b, sizeof b), vc__fmt_bytes(s.arena_bytes, d, sizeof d));
    P(", peak %s; limit %s\n", vc__fmt_bytes(s.arena_peak_bytes, a, sizeof a),
      vc__fmt_bytes(s.vram_limit, b, sizeof b));
    P("  working  : standing %s, reserved now %s, %llu reservations\n",
      vc__fmt_bytes(s.working_mem, a, sizeof a), vc__fmt_bytes(s.reserved_bytes, b, sizeof b),
      (unsigned long long)s.reservations);
    P("  traffic  : h2d %s, d2h %s, loaded %s\n", vc__fmt_bytes((size_t)s.bytes_h2d, a, sizeof a),
      vc__fmt_bytes((size_t)s.bytes_d2h, b, sizeof b), vc__fmt_bytes((size_t)s.bytes_loaded, d, sizeof d));
    P("  acquires : %llu hits, %llu misses (%llu from RAM), %llu loads, %llu load failures\n",
      (unsigned long long)s.hits, (unsigned long long)s.misses, (unsigned long long)s.ram_hits,
      (unsigned long long)s.loads, (unsigned long long)s.load_failures);
    P("  evictions:");
    for (int r = 0; r < VC_EVICT_REASON_COUNT; r++)
        if (r != VC_EVICT_RAM_BUDGET) P(" %s=%llu", vc_evict_reason_name(r), (unsigned long long)s.vram_evictions[r]);
    P("; RAM copies dropped=%llu\n", (unsigned long long)s.ram_evictions);
    P("  schedule : %llu prefetches, %llu prefetch hits; orders learned %llu, mismatches %llu, resets %llu\n",
      (unsigned long long)s.prefetches, (unsigned long long)s.prefetch_hits, (unsigned long long)s.orders_learned,
      (unsigned long long)s.order_mismatches, (unsigned long long)s.order_resets);
    unsigned slots = 0;
    pthread_mutex_lock(&c->lock);
    int tuning = vc__tuner_state(c, &slots);
    unsigned setting = c->slots_setting;
    pthread_mutex_unlock(&c->lock);
    if (slots)
        P("  region   : room for %u streamed layer%s", slots, slots > 1 ? "s" : "");
    else
        P("  region   : the planner's room");
    P("%s\n", setting != VC_STREAM_SLOTS_TUNE ? (setting ? " (stream_slots)" : "")
             : tuning                        ? " (VC_STREAM_SLOTS_TUNE: measuring)"
                                             : " (VC_STREAM_SLOTS_TUNE: chosen)");
    P("  layers   : %llu in %llu models; %llu in VRAM, %llu in RAM, %llu held\n",
      (unsigned long long)s.layers, (unsigned long long)s.models, (unsigned long long)s.layers_in_vram,
      (unsigned long long)s.layers_in_ram, (unsigned long long)s.layers_held);
#undef P
    print(user, buf);
    return VC_OK;
}
