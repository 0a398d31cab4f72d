/*
 * API-sequence fuzzer: the input is a program of cache operations (register, acquire, release,
 * offload a layer or the model, patch, stage a layer or the model into RAM, unregister, reserve,
 * declare an order, arm a backend fault, let "another process" take device memory, read) run on a
 * small cache over a fault-injecting, capacity-capped backend: the host backend, or (one input in two)
 * the simulated device with real bytes, where every acquired layer is read by a kernel and the host
 * sometimes waits for the device, so uploads, write-backs and releases are still in flight when
 * later operations come. After every operation the invariants are checked — held layers keep their
 * bytes, hold counts match, the pools stay within budget, statuses are among the documented ones,
 * and on the simulator no two operations race on the same bytes (vc_sim_hazards: the ordering a GPU
 * needs) — and at the end every layer's bytes must equal its source. Any violation traps.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "vramcache.h"
#include "vramcache_fault.h"
#include "vramcache_sim.h"

#include "cache_internal.h" /* vc__clear_cache: the keep-alive timer's action */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define NL 12
#define DEVICE (96 * 1024)
#define RAM (64 * 1024)

typedef struct slot {
    int live;
    vc_layer_id id;
    size_t bytes;
    uint8_t seed;
    unsigned holds;
    unsigned holds_on[2]; /* of them, on each engine stream (a hold is released on the stream that used it) */
    void *dptr;
    uint8_t *borrowed;
    int loader_fail;
    int xored; /* patched an odd number of times since the last unpatch */
    vc_layer_id sid; /* the same layer on the second device (vc_layer_register_shared), when there is one */
} slot;

static uint8_t byte_at(uint8_t seed, size_t i) { return (uint8_t)(seed * 31u + i * 7u + (i >> 8)); }

static int loader(void *user, vc_layer_id id, void *dst, size_t bytes) {
    (void)id;
    slot *s = user;
    if (s->loader_fail) {
        s->loader_fail = 0;
        return -1;
    }
    for (size_t i = 0; i < bytes; i++) ((uint8_t *)dst)[i] = byte_at(s->seed, i);
    return 0;
}

static uint8_t want(const slot *s, size_t i) { return (uint8_t)(byte_at(s->seed, i) ^ (s->xored ? 0x5a : 0)); }

static int intact(const uint8_t *p, const slot *s) {
    for (size_t i = 0; i < s->bytes; i++)
        if (p[i] != want(s, i)) return 0;
    return 1;
}

static int xor_5a(void *user, void *w, size_t n) {
    (void)user;
    for (size_t i = 0; i < n; i++) ((uint8_t *)w)[i] ^= 0x5a;
    return 0;
}

/* The per-step check samples (a prime stride and the last byte); the final check reads it all. */
static int intact_sampled(const uint8_t *p, const slot *s) {
    for (size_t i = 0; i < s->bytes; i += 61)
        if (p[i] != want(s, i)) return 0;
    return p[s->bytes - 1] == want(s, s->bytes - 1);
}

#define CHECK(x)                                                                                   \
    do {                                                                                           \
        if (!(x)) __builtin_trap();                                                                \
    } while (0)

/* The engine's kernel on a layer it holds, on the stream it acquired it on (simulator only: the
 * ordering check sees it read). */
static void kernel(vc_backend *sim, vc_stream stream, void *p, size_t bytes) {
    if (sim) CHECK(vc_sim_compute_reading(sim, stream, 1e-6, 1, &p, &bytes, NULL, NULL) == VC_OK);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 2) return 0;
    vc_backend *host, *fault, *sim = NULL;
    vc_stream streams[2] = {NULL, NULL}; /* the engine's: on the simulator two, used in turn or at once */
    if ((data[1] >> 4) & 1) {
        vc_sim_params sp;
        vc_sim_params_init(&sp);
        sp.device_bytes = DEVICE;
        sp.h2d_bytes_per_s = sp.d2h_bytes_per_s = 1e9; /* a 10 KB layer: 10 us, ten kernels */
        sp.copy_latency_s = 1e-6;
        if (vc_backend_sim_create(&sp, &host) != VC_OK) return 0;
        sim = host;
        CHECK(vc_sim_stream_create(sim, &streams[0]) == VC_OK && vc_sim_stream_create(sim, &streams[1]) == VC_OK);
    } else if (vc_backend_host_create(DEVICE, &host) != VC_OK) {
        return 0;
    }
    if (vc_backend_fault_create(host, &fault) != VC_OK) {
        vc_backend_destroy(host);
        return 0;
    }
    CHECK(vc_fault_set_device_capacity(fault, DEVICE, 0) == VC_OK); /* so other processes can be simulated */
    vc_cache_options o;
    vc_cache_options_init(&o);
    o.backend = fault;
    o.ram_budget = RAM;
    o.working_mem = (data[0] & 3) * 4096;
    o.keep_ram_copy = data[0] >> 7;
    o.arena_segment_bytes = 16 * 1024;
    o.policy = (data[0] >> 2) & 1 ? VC_POLICY_LRU : VC_POLICY_PLANNED;
    o.offload_mode = (vc_offload_mode)((data[1] >> 6) & 3);
    o.smart_working_mem = (data[1] >> 5) & 1;
    o.copy_part_min_bytes = (size_t)(data[1] & 3) * 1024; /* fenced copies split at every fence, or not below 1-3 KB */
    vc_cache *c;
    if (vc_cache_create(&o, &c) != VC_OK) {
        vc_backend_destroy(fault);
        vc_backend_destroy(host);
        return 0;
    }
    /* Sometimes traced (to nowhere), with event times known at once or, as on a GPU, only once the
     * copy has run (queued spans, drained by later calls and at the end). */
    if ((data[0] >> 4) & 1) {
        CHECK(vc_fault_late_event_times(fault, (data[0] >> 5) & 1) == VC_OK);
        CHECK(vc_cache_trace_start(c, "/dev/null") == VC_OK);
    }
    /* Sometimes a second device whose cache shares every layer from the first (several GPUs, one
     * RAM copy): it uploads from the first cache's RAM pool, and must see its patches. */
    vc_backend *host2 = NULL, *sim2 = NULL;
    vc_cache *c2 = NULL;
    vc_model_id model2 = 0;
    vc_stream stream2 = NULL;
    if ((data[0] >> 3) & 1) {
        if (sim) {
            vc_sim_params sp;
            vc_sim_params_init(&sp);
            sp.device_bytes = DEVICE;
            sp.h2d_bytes_per_s = sp.d2h_bytes_per_s = 2e9;
            CHECK(vc_backend_sim_create(&sp, &host2) == VC_OK);
            sim2 = host2;
            CHECK(vc_sim_stream_create(sim2, &stream2) == VC_OK);
        } else {
            CHECK(vc_backend_host_create(DEVICE, &host2) == VC_OK);
        }
        vc_cache_options o2 = o;
        o2.backend = host2;
        o2.ram_budget = 0; /* it holds no RAM copies of its own */
        o2.working_mem = 0;
        CHECK(vc_cache_create(&o2, &c2) == VC_OK);
        CHECK(vc_model_register(c2, "shared", &model2) == VC_OK);
    }
    /* Two models: slots 0..NL/2-1 belong to the first, the rest to the second (a ControlNet and a
     * UNet: op 10 runs their passes in turn, which makes them a step group). */
    vc_model_id models[2];
    CHECK(vc_model_register(c, "fuzz", &models[0]) == VC_OK);
    CHECK(vc_model_register(c, "fuzz2", &models[1]) == VC_OK);
    slot *s = calloc(NL, sizeof *s);
    vc_reservation *res[2] = {NULL, NULL};
    for (size_t pc = 2; pc + 1 < size; pc += 2) {
        uint8_t op = data[pc], arg = data[pc + 1];
        slot *x = &s[arg % NL];
        vc_model_id m = models[arg % NL >= NL / 2];
        void *p = NULL;
        int st;
        switch (op % 11) {
        case 0: /* register */
            if (x->live) break;
            memset(x, 0, sizeof *x);
            x->bytes = 1 + (size_t)arg * 97;
            x->seed = op;
            vc_layer_desc d = {.name = "l", .bytes = x->bytes};
            if (op & 0x80) {
                x->borrowed = malloc(x->bytes);
                for (size_t i = 0; i < x->bytes; i++) x->borrowed[i] = byte_at(x->seed, i);
                d.host_ptr = x->borrowed;
            } else {
                d.loader = loader;
                d.loader_user = x;
            }
            CHECK(vc_layer_register(c, m, &d, &x->id) == VC_OK);
            if (c2) CHECK(vc_layer_register_shared(c2, model2, c, x->id, &x->sid) == VC_OK);
            vc_layer_id back; /* the other way round would let the two caches' locks cross: refused */
            if (c2 && (op & 0x40)) CHECK(vc_layer_register_shared(c, m, c2, x->sid, &back) == VC_ERR_INVALID_ARG);
            x->live = 1;
            break;
        case 1: case 2: case 3: /* acquire */
            if (!x->live) break;
            if (op & 0x40) x->loader_fail = 1;
            int on = (op >> 5) & 1;
            st = vc_layer_acquire(c, x->id, streams[on], &p);
            x->loader_fail = 0;
            CHECK(st == VC_OK || st == VC_ERR_OUT_OF_VRAM || st == VC_ERR_OUT_OF_RAM || st == VC_ERR_LOADER ||
                  st == VC_ERR_BACKEND || st == VC_ERR_NO_MEMORY);
            if (st == VC_OK) {
                CHECK(intact(p, x));
                if (x->holds) CHECK(p == x->dptr);
                x->holds++;
                x->holds_on[on]++;
                x->dptr = p;
                kernel(sim, streams[on], p, x->bytes);
            }
            break;
        case 4: case 5: /* release (sometimes the host then waits for the device); or the second device uses it */
            if (!x->live) break;
            if (c2 && (op & 0x40)) {
                if (op & 0x80) x->loader_fail = 1; /* the owner's loader, run on the second device's behalf */
                st = vc_layer_acquire(c2, x->sid, stream2, &p);
                x->loader_fail = 0;
                CHECK(st == VC_OK || st == VC_ERR_OUT_OF_VRAM || st == VC_ERR_OUT_OF_RAM || st == VC_ERR_LOADER ||
                      st == VC_ERR_BACKEND || st == VC_ERR_NO_MEMORY);
                if (st != VC_OK) break;
                CHECK(intact(p, x)); /* the source's current weights, patches included */
                kernel(sim2, stream2, p, x->bytes);
                CHECK(vc_layer_release(c2, x->sid, stream2) == VC_OK);
                break;
            }
            int off = x->holds_on[(op >> 5) & 1] ? (op >> 5) & 1 : !((op >> 5) & 1);
            st = vc_layer_release(c, x->id, streams[off]);
            if (sim && (op & 0x80)) CHECK(vc_sim_stream_synchronize(sim, streams[off]) == VC_OK);
            CHECK(st == (x->holds ? VC_OK : VC_ERR_NOT_HELD));
            if (x->holds) {
                x->holds--;
                x->holds_on[off]--;
            }
            break;
        case 6: /* offload, patch, unpatch, stage into RAM; the same for the whole model */
            if (!x->live) break;
            if ((op >> 4) % 6 == 4) {
                unsigned any_held = 0;
                for (int i = 0; i < NL; i++) /* of this model */
                    any_held |= s[i].live && s[i].holds && (i >= NL / 2) == (arg % NL >= NL / 2);
                st = vc_model_offload(c, m, arg & 1 ? VC_OFFLOAD_ALL : VC_OFFLOAD_VRAM);
                CHECK(st == (any_held ? VC_ERR_BUSY : VC_OK));
            } else if ((op >> 4) % 6 == 5) {
                if (op & 0x40) x->loader_fail = 1;
                st = vc_model_load_ram(c, m);
                x->loader_fail = 0;
                CHECK(st == VC_OK || st == VC_ERR_OUT_OF_RAM || st == VC_ERR_NO_MEMORY || st == VC_ERR_LOADER);
            } else if ((op >> 4) % 6 == 3) {
                if (op & 0x40) x->loader_fail = 1;
                st = vc_layer_load_ram(c, x->id);
                x->loader_fail = 0;
                CHECK(st == VC_OK || st == VC_ERR_OUT_OF_RAM || st == VC_ERR_NO_MEMORY || st == VC_ERR_LOADER);
            } else if ((op >> 4) % 6 == 0) {
                st = vc_layer_offload(c, x->id, arg & 1 ? VC_OFFLOAD_ALL : VC_OFFLOAD_VRAM);
                CHECK(st == (x->holds ? VC_ERR_BUSY : VC_OK));
            } else if ((op >> 4) % 6 == 1) {
                int patched_before = 0;
                vc_layer_info info;
                CHECK(vc_layer_get_info(c, x->id, &info) == VC_OK);
                patched_before = info.patched;
                vc_patch_mode mode = arg & 1 ? VC_PATCH_FUSE : VC_PATCH_BACKUP;
                if (op & 0x40) x->loader_fail = 1;
                st = vc_layer_patch(c, x->id, mode, xor_5a, NULL);
                x->loader_fail = 0;
                if (x->holds) CHECK(st == VC_ERR_BUSY);
                else if (mode == VC_PATCH_FUSE && patched_before) /* busy comes first, as for a held layer */
                    CHECK(st == VC_ERR_INVALID_ARG || (c2 && st == VC_ERR_BUSY));
                else CHECK(st == VC_OK || st == VC_ERR_OUT_OF_RAM || st == VC_ERR_NO_MEMORY || st == VC_ERR_LOADER ||
                           st == VC_ERR_BACKEND || (c2 && st == VC_ERR_BUSY)); /* the second device still copying */
                if (st == VC_OK) x->xored ^= 1;
            } else {
                st = vc_layer_unpatch(c, x->id);
                CHECK(x->holds ? st == VC_ERR_BUSY : st == VC_OK || st == VC_ERR_BACKEND || (c2 && st == VC_ERR_BUSY));
                if (st == VC_OK) x->xored = 0;
            }
            break;
        case 7: /* unregister (the second device's layer first: it reads this one) */
            if (!x->live) break;
            if (c2 && !x->holds) CHECK(vc_layer_unregister(c2, x->sid) == VC_OK);
            st = vc_layer_unregister(c, x->id);
            CHECK(st == (x->holds ? VC_ERR_BUSY : VC_OK));
            if (st == VC_OK) { /* (held here: the second device's layer stays too) */
                free(x->borrowed);
                memset(x, 0, sizeof *x);
            }
            break;
        case 8: { /* reserve or release working memory */
            int r = arg & 1;
            if (res[r]) {
                CHECK(vc_release_working_mem(c, res[r]) == VC_OK);
                res[r] = NULL;
            } else {
                st = vc_reserve_working_mem(c, (size_t)arg * 128, (arg & 2) ? VC_RESERVE_BUFFER : 0, &res[r]);
                CHECK(st == VC_OK || st == VC_ERR_OUT_OF_VRAM || st == VC_ERR_BACKEND || st == VC_ERR_INVALID_ARG);
                if (st != VC_OK) res[r] = NULL;
            }
            break;
        }
        case 9: /* faults, other processes' device memory, orders, stream slots */
            if ((arg & 7) == 7) {
                CHECK(vc_fault_set_device_capacity(fault, DEVICE, (size_t)(arg >> 3) * 3072) == VC_OK);
            } else if ((arg & 15) == 13) { /* the keep-alive's clear, as its timer would run it */
                pthread_mutex_lock(&c->lock);
                vc__clear_cache(c);
                pthread_mutex_unlock(&c->lock);
            } else if ((arg & 31) == 11) { /* the engine changes the region's room between passes */
                unsigned slots = (arg >> 5) % 5; /* 4: the cache measures */
                CHECK(vc_cache_set_stream_slots(c, slots == 4 ? VC_STREAM_SLOTS_TUNE : slots) == VC_OK);
            } else if (arg & 1) {
                vc_fault_fail_nth(fault, (vc_fault_op)((arg >> 1) % VC_FAULT_OP_COUNT), 1 + (arg >> 5));
            } else {
                vc_layer_id order[NL];
                size_t n = 0;
                int half = (arg % NL >= NL / 2) * (NL / 2);
                for (int i = 0; i < NL / 2; i++)
                    if (s[half + (i + arg) % (NL / 2)].live) order[n++] = s[half + (i + arg) % (NL / 2)].id;
                if ((arg & 64) && n > 1 && n < NL) { /* a layer used twice per pass */
                    order[n] = order[n / 2];
                    n++;
                }
                st = vc_model_set_order(c, m, order, n);
                CHECK(st == VC_OK || st == VC_ERR_NO_MEMORY);
            }
            break;
        case 10: /* steps: each model's live layers in slot order, the first model's pass, then the second's
                  * (sometimes twice: guidance as two passes, a step group with a model used twice) */
            for (int rep = 0; rep < 1 + (arg & 3); rep++)
                for (int j = 0; j < NL + ((arg & 16) ? NL / 2 : 0); j++) {
                    int i = j < NL ? j : j - NL / 2;
                    slot *y = &s[(arg & 4) && i < NL / 2 ? NL / 2 - 1 - i : i]; /* sometimes the first model backwards */
                    if (!y->live || ((arg & 8) && i < NL / 2 && rep == 2)) continue; /* sometimes it sits a step out */
                    vc_stream es = streams[(arg >> 5) & 1];
                    st = vc_layer_acquire(c, y->id, es, &p);
                    CHECK(st == VC_OK || st == VC_ERR_OUT_OF_VRAM || st == VC_ERR_OUT_OF_RAM || st == VC_ERR_LOADER ||
                          st == VC_ERR_BACKEND || st == VC_ERR_NO_MEMORY);
                    if (st != VC_OK) continue;
                    CHECK(intact(p, y));
                    if (y->holds) CHECK(p == y->dptr);
                    kernel(sim, es, p, y->bytes);
                    CHECK(vc_layer_release(c, y->id, es) == VC_OK);
                }
            break;
        }
        /* invariants after every step */
        vc_stats stats;
        CHECK(vc_cache_get_stats(c, &stats) == VC_OK);
        unsigned held = 0, live = 0;
        for (int i = 0; i < NL; i++) {
            if (!s[i].live) continue;
            live++;
            if (s[i].holds) {
                held++;
                CHECK(intact_sampled(s[i].dptr, &s[i]));
                vc_layer_info info;
                CHECK(vc_layer_get_info(c, s[i].id, &info) == VC_OK);
                CHECK(info.holds == s[i].holds);
            }
        }
        CHECK(stats.layers_held == held);
        CHECK(stats.layers == live);
        CHECK(stats.ram_bytes <= RAM);
        CHECK(stats.arena_bytes + stats.reserved_bytes <= DEVICE);
        CHECK(!sim || vc_sim_hazards(sim, NULL, 0) == 0);
        if (c2) {
            vc_stats s2;
            CHECK(vc_cache_get_stats(c2, &s2) == VC_OK);
            CHECK(s2.ram_bytes == 0 && s2.layers_held == 0 && s2.layers == live);
            CHECK(!sim2 || vc_sim_hazards(sim2, NULL, 0) == 0);
        }
    }
    /* the end: faults off, the device free again, everything released, every layer's bytes intact,
     * teardown clean */
    vc_fault_clear(fault);
    CHECK(vc_fault_set_device_capacity(fault, DEVICE, 0) == VC_OK);
    for (int r = 0; r < 2; r++)
        if (res[r]) CHECK(vc_release_working_mem(c, res[r]) == VC_OK);
    for (int i = 0; i < NL; i++) {
        while (s[i].live && s[i].holds) {
            int on = s[i].holds_on[0] ? 0 : 1;
            CHECK(vc_layer_release(c, s[i].id, streams[on]) == VC_OK);
            s[i].holds_on[on]--;
            s[i].holds--;
        }
        if (!s[i].live) continue;
        uint8_t *buf = malloc(s[i].bytes);
        CHECK(vc_layer_read(c, s[i].id, buf, s[i].bytes) == VC_OK);
        CHECK(intact(buf, &s[i]));
        if (c2) { /* through the second device's shared layer: the owner's current weights */
            memset(buf, 0, s[i].bytes);
            CHECK(vc_layer_read(c2, s[i].sid, buf, s[i].bytes) == VC_OK);
            CHECK(intact(buf, &s[i]));
        }
        free(buf);
    }
    if (c2) {
        CHECK(vc_cache_destroy(c2) == VC_OK); /* first: it reads from the other */
        CHECK(!sim2 || vc_sim_hazards(sim2, NULL, 0) == 0);
        vc_backend_destroy(host2);
    }
    CHECK(vc_cache_destroy(c) == VC_OK);
    CHECK(!sim || vc_sim_hazards(sim, NULL, 0) == 0);
    for (int i = 0; i < NL; i++) free(s[i].borrowed);
    free(s);
    vc_backend_destroy(fault);
    vc_backend_destroy(host);
    return 0;
}
