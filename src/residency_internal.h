/*
 * What the residency files share among themselves: residency.c (acquire, release, offload, staging),
 * copy_sync.c (when copies are done), ram_pool.c, vram_pool.c, shared_layers.c and patch.c. What
 * the rest of the library uses of them is in cache_internal.h.
 *
 * Every function here runs with c->lock held (the shared-layer ones also take an owner cache's
 * lock, after ours).
 */
#ifndef VC_RESIDENCY_INTERNAL_H
#define VC_RESIDENCY_INTERNAL_H

#include "cache_internal.h"

/* ---- copy_sync.c: events, waits, quarantines ---------------------------------------------------- */

/** Creates *ev on first use; VC_OK or the backend's status. */
int vc__ensure_event(vc_cache *c, void **ev);
/** Keeps a host buffer already counted in ram_bytes until copies can be waited for again. */
void vc__quarantine_node(vc_cache *c, deferred_free *d);
/** Keeps host buffer p (counted in ram_bytes unless `counted` says it already is) out of reuse until
 *  copies can be waited for again; freed by vc__free_quarantine. */
void vc__quarantine(vc_cache *c, void *p, size_t bytes, int pinned, int counted);
/** Keeps device block b of arena a out of use: a write-back from it could not be waited for. */
void vc__quarantine_range(vc_cache *c, arena *a, arena_block *b);
/** Makes later work on `stream` wait for `ev` (or the host wait for it). VC_ERR_BACKEND when
 *  neither works. */
int vc__order_after(vc_cache *c, vc_stream stream, void *ev);
/** Waits for everything queued on `stream` through a fresh event; 1 on success, 0 when even that
 *  fails (logged at ERROR naming `what`; with `what` NULL, one quiet try). */
int vc__settle_stream(vc_cache *c, vc_stream stream, const char *what);
/** Marks l's latest upload as one no event tracks: its source counts as read until the upload
 *  stream has been waited for. */
void vc__mark_unsettled(vc_cache *c, layer_t *l);
/** 1 when l's latest upload has run (and forgets it), 0 while it may still run. Never waits. */
int vc__upload_done(vc_cache *c, layer_t *l);
/** 1 when l's latest write-back into RAM has run, 0 while in flight. Never waits. */
int vc__writeback_done(vc_cache *c, layer_t *l);
/** Blocks until l's latest upload has run: VC_OK, or VC_ERR_BACKEND when it cannot be waited for
 *  (it then still counts as in flight: its memory must not be freed or written). */
int vc__wait_upload(vc_cache *c, layer_t *l);
/** As vc__wait_upload, for l's write-back into RAM. */
int vc__wait_writeback(vc_cache *c, layer_t *l);

/* ---- ram_pool.c ---------------------------------------------------------------------------------- */

/** Gives a RAM-pool buffer back to the backend and takes it off ram_bytes. */
void vc__free_ram_buffer(vc_cache *c, void *p, size_t bytes, int pinned);
/** Frees deferred RAM buffers whose uploads have run; with `wait`, all of them (quarantining those
 *  that cannot be waited for); `only`: one layer's. */
void vc__drain_deferred(vc_cache *c, int wait, const layer_t *only);
/** keep_ram_copy off: l's RAM copy goes once the upload reading it has run. */
void vc__drop_ram_after_upload(vc_cache *c, layer_t *l);
/** Makes room for `bytes` in the RAM pool (never dropping `exclude`). VC_OK, or VC_ERR_OUT_OF_RAM
 *  with a message naming `fn` and what holds the pool (none recorded with `quiet`). */
int vc__ram_reserve(vc_cache *c, size_t bytes, const layer_t *exclude, const char *fn, int quiet);

/* ---- vram_pool.c --------------------------------------------------------------------------------- */

/** What a placement may do: evict only victims needed later than max_distance (a prefetch), and
 *  stay quiet on failure. */
typedef struct place_req {
    size_t max_distance;
    int quiet;
} place_req;

/** Finds l its device room (its home, the ring, or the kept arena, evicting what `rq` allows and
 *  growing the arena within the weight limit). VC_OK with *out set, or VC_ERR_OUT_OF_VRAM (with a
 *  message naming `fn` unless rq->quiet) or a backend error. */
int vc__vram_place(vc_cache *c, layer_t *l, const char *fn, const place_req *rq, arena_block **out);
/** Model mode, before a whole-model load of l's model: `need` bytes (the arena-rounded sizes of the
 *  layers it will upload, padding for their alignment included) in one segment of their own, made
 *  room for by evicting other models whole (vc__sched_victim's choice) and giving back the segments
 *  they emptied; vc__vram_place then lays the model's layers out in it one after another.
 *  Without that room (held layers, the device refusing) nothing is reserved and the layers are
 *  placed as any other. vc__end_whole_model ends it. */
void vc__reserve_whole_model(vc_cache *c, layer_t *l, size_t need);
void vc__end_whole_model(vc_cache *c);
/** Queues l's copy from src into blk on the upload stream part by part, each part after the
 *  release of the layer that occupied it (the fences vc__vram_place left for a ring placement). */
int vc__copy_fenced(vc_cache *c, const layer_t *l, const arena_block *blk, const void *src);
/** Makes the upload stream wait for every fence vc__vram_place left (when the copy will not go
 *  part by part). */
void vc__flush_fences(vc_cache *c);

/* ---- shared_layers.c ------------------------------------------------------------------------------ */

/** l goes while uploads from an owner's copy could not be waited for: its pins stay until the upload
 *  stream settles. Returns 1 when a pin took over l's place in the owner's dependents. */
int vc__orphan_remote_pins(vc_cache *c, const layer_t *l);
/** Releases pins on owners' copies whose uploads have run (all, with `wait`; `only`: one layer's). */
void vc__drain_remote_pins(vc_cache *c, int wait, const layer_t *only);
/** Produces the host copy of owner o's layer oid in o (its loader may run), taking only o's lock;
 *  with `pin`, *src points at it, pinned. On failure `msg` gets o's message; *gen (if given) its
 *  weights generation. */
int vc__owner_fetch(vc_cache *o, vc_layer_id oid, const char *fn, const void **src, int pin, char *msg,
                    size_t msg_size, uint32_t *gen);
/** The status to report for shared layer l after vc__owner_fetch returned st with msg. */
int vc__owner_status(vc_cache *c, const layer_t *l, const char *fn, int st, const char *msg);
/** 1 when the owner has unregistered shared layer l's source. */
int vc__shared_source_gone(const layer_t *l);
/** 1 when shared layer l's device copy predates a patch or unpatch of its source. */
int vc__shared_stale(layer_t *l);
/** l's weights changed (patch, unpatch): caches sharing it reload them at their next acquire. */
void vc__weights_changed(vc_cache *c, layer_t *l);
/** The owner's host copy of shared layer l, pinned until our upload from it has run. */
int vc__shared_source(vc_cache *c, layer_t *l, const char *fn, const void **src);

/* ---- residency.c ---------------------------------------------------------------------------------- */

/** A host copy of l to upload from: the borrowed pointer, the RAM copy, the owner's, or a fresh
 *  load (the lock is released while the loader runs). */
int vc__host_source(vc_cache *c, layer_t *l, const char *fn, const void **src);

#endif /* VC_RESIDENCY_INTERNAL_H */
