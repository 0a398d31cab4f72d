/*
 * vramcache — the command-line companion of libvramcache.
 *
 *   vramcache config check FILE     exit 0 without errors (warnings allowed), 1 with errors;
 *                                   diagnostics on stderr as FILE:LINE:COL: error|warning: ...
 *   vramcache config show [FILE]    effective settings as YAML with where each value came from
 *   vramcache simulate --workload FILE --vram-gb X --bandwidth-gbps B [--tflops T] [--steps N]
 *                      [--policy lru|planned] [--mode none|model|sequential|balanced]
 *                      [--config invokeai.yaml] [--json] [--trace FILE] [--block-layers K] [--ram-gb R]
 *                      [--disk-gbps D] [--stream-slots N|tune]
 *   vramcache plan --workload FILE --vram-gb X --bandwidth-gbps B [--tflops T] [--steps N] [--json]
 *                  [--config invokeai.yaml] [--block-layers K] [--ram-gb R] [--disk-gbps D] [--stream-slots N|tune]
 *   vramcache workload FILE.safetensors|INDEX.json [--tokens N] [--group-depth K] [--prefix P]
 *                                   a workload (YAML) for a model file or a sharded checkpoint's
 *                                   index: its layers' names and bytes,
 *                                   FLOPs estimated from N tokens; simulate and plan also take a
 *                                   .safetensors file as --workload (with --tokens)
 *   vramcache version
 */
#define _POSIX_C_SOURCE 200809L /* open_memstream */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json_string.h"
#include "vramcache.h"
#include "vramcache_backend.h"
#include "vramcache_config.h"
#include "vramcache_safetensors.h"
#include "vramcache_sim.h"

#define GIB 1073741824.0
/* Steps at least for a run that shows VC_STREAM_SLOTS_TUNE's choice: trying rooms takes 10 to 25
 * passes, and a run's figures are over its second half. */
#define TUNE_STEPS 96

static void to_stderr(void *user, const char *text) {
    (void)user;
    fputs(text, stderr);
}

static int usage(FILE *f) {
    fprintf(f, "usage: vramcache config check FILE\n"
               "       vramcache config show [FILE]\n"
               "       vramcache simulate --workload FILE --vram-gb X --bandwidth-gbps B [--tflops T] [--steps N]\n"
               "                          [--policy lru|planned] [--mode none|model|sequential|balanced]\n"
               "                          [--config invokeai.yaml] [--json] [--trace FILE] [--block-layers K]\n"
               "                          [--ram-gb R] [--disk-gbps D] [--stream-slots N|tune]\n"
               "       vramcache plan --workload FILE --vram-gb X --bandwidth-gbps B [--tflops T] [--steps N] [--json]\n"
               "                      [--config invokeai.yaml] [--block-layers K] [--ram-gb R] [--disk-gbps D]\n"
               "                      [--stream-slots N|tune]\n"
               "       vramcache workload FILE.safetensors|FILE.safetensors.index.json [--tokens N] [--group-depth K]\n"
               "                          [--prefix P]\n"
               "       vramcache version\n"
               "--block-layers K: the engine holds K consecutive layers at once and runs them as one kernel.\n"
               "--stream-slots N|tune: the streaming region's room in layers (vc_cache_options.stream_slots; 0,\n"
               "  the default, lets the planner choose; 1 suits compute far below the copies, as a decoded token;\n"
               "  tune: the cache measures passes and keeps the fastest room, VC_STREAM_SLOTS_TUNE; give it\n"
               "  --steps 96 or more: trying rooms takes 10 to 25 passes, and the figures are the second half's).\n"
               "--ram-gb R: the machine's RAM; without max_cache_ram_gb in the config the RAM cache gets the\n"
               "  default budget for it (InvokeAI's rules), and what it cannot hold is read again by loaders.\n"
               "--disk-gbps D: how fast loaders read (the engine waits for them); default: loads take no time,\n"
               "  and, when the RAM cache holds every model, each is loaded into it before its pass, as InvokeAI does.\n"
               "plan --config FILE: the modes run with the file's other settings, and the file as it stands is\n"
               "  run too, so the output says what the recommendation gains over it.\n"
               "--workload FILE.safetensors (or a sharded checkpoint's FILE.safetensors.index.json): a model\n"
               "  file (its layers, as vramcache workload prints them) with\n"
               "  --tokens N: each layer computes 2 x N x its weights FLOPs per use (matrices and convolutions;\n"
               "  e.g. 4608 for FLUX at 1024x1024: 4096 image + 512 text tokens; 0: copies only);\n"
               "  --group-depth K: a layer is the first K parts of its tensors' names (default: up to the last\n"
               "  numbered part, e.g. double_blocks.7 or down_blocks.1.attentions.0.transformer_blocks.2;\n"
               "  tensor: each tensor a layer of its own);\n"
               "  --prefix P: only the layers whose names start with P (one model of a file that holds several,\n"
               "  e.g. model.diffusion_model. in a single-file Stable Diffusion checkpoint).\n"
               "GB of memory are 2^30 bytes (as in invokeai.yaml); link speeds are GB/s of 10^9 bytes.\n");
    return f == stderr ? 2 : 0;
}

/* The seed's "max safe value" tip, checked where the file's GPU is (device: as the file says):
 * an explicit max_cache_vram_gb above the GPU's memory less device_working_mem_gb leaves the
 * operations too little. Prints a warning and returns 1 when it does. */
static int vram_cap_unsafe(const vc_config *cfg, const char *path) {
    double cap_gb = 0, work_gb = 0;
    if (vc_config_get_number(cfg, VC_CFG_MAX_CACHE_VRAM_GB, &cap_gb) != VC_OK) return 0; /* unset: dynamic */
    vc_config_get_number(cfg, VC_CFG_DEVICE_WORKING_MEM_GB, &work_gb);
    vc_backend *b = NULL;
    char why[256];
    size_t free_b = 0, total = 0;
    int unsafe = 0;
    if (vc_config_create_backend(cfg, &b, why, sizeof why) == VC_OK &&
        vc_backend_get_ops(b)->kind == VC_BACKEND_KIND_GPU && vc_backend_mem_info(b, &free_b, &total) == VC_OK) {
        double safe_gb = (double)total / GIB - work_gb;
        if (cap_gb > safe_gb) {
            fprintf(stderr, "%s: warning: max_cache_vram_gb is %g, above the largest safe value on this GPU, %.2f "
                    "(%.2f GB less device_working_mem_gb %g): operations may run out of device memory; lower it, "
                    "or leave it unset so the budget follows the GPU\n", path, cap_gb, safe_gb > 0 ? safe_gb : 0,
                    (double)total / GIB, work_gb);
            unsafe = 1;
        }
    }
    vc_backend_destroy(b);
    return unsafe;
}

static int config_check(const char *path) {
    vc_config *cfg;
    if (vc_config_create(&cfg) != VC_OK) return 1;
    vc_diagnostics *d = NULL;
    int st = vc_config_load_file(cfg, path, VC_CONFIG_NO_ENV, &d);
    vc_diagnostics_print(d, to_stderr, NULL);
    size_t errors = vc_diagnostics_errors(d), total = vc_diagnostics_count(d);
    if (st == VC_OK && vram_cap_unsafe(cfg, path)) total++;
    if (st == VC_OK)
        fprintf(stderr, "%s: OK (%zu warning%s)\n", path, total - errors, total - errors == 1 ? "" : "s");
    else
        fprintf(stderr, "%s: %zu error%s, %zu warning%s\n", path, errors, errors == 1 ? "" : "s", total - errors,
                total - errors == 1 ? "" : "s");
    vc_diagnostics_destroy(d);
    vc_config_destroy(cfg);
    return st == VC_OK ? 0 : 1;
}

static int config_show(const char *path) {
    vc_config *cfg;
    if (vc_config_create(&cfg) != VC_OK) return 1;
    vc_diagnostics *d = NULL;
    int st;
    if (path)
        st = vc_config_load_file(cfg, path, 0, &d);
    else
        st = vc_config_load_string(cfg, "", 0, "<defaults>", 0, &d); /* defaults and the environment */
    vc_diagnostics_print(d, to_stderr, NULL);
    vc_diagnostics_destroy(d);
    if (st == VC_OK) vc_config_show(cfg, NULL, NULL);
    vc_config_destroy(cfg);
    return st == VC_OK ? 0 : 1;
}

/* ---- simulate and plan ---- */

static const char *const MODES[] = {"none", "model", "sequential", "balanced"};

typedef struct sim_args {
    const char *workload, *config, *trace;
    double vram_gb, bandwidth_gbps, tflops, ram_gb, disk_gbps;
    double tokens; /* a .safetensors --workload: FLOPs per weight per use are 2 x tokens */
    const char *prefix; /* ... and only its layers whose names start with this */
    int tokens_set;
    int steps, json, mode;
    unsigned block_layers, group_depth, stream_slots;
    vc_policy policy;
} sim_args;

static int parse_number_arg(const char *flag, const char *v, double lo, double hi, double *out) {
    char *end;
    double x = v ? strtod(v, &end) : NAN;
    if (!v || *end || !isfinite(x) || x < lo || x > hi) {
        fprintf(stderr, "vramcache: %s needs a number between %.10g and %.10g, got '%s'\n", flag, lo, hi, v ? v : "");
        return -1;
    }
    *out = x;
    return 0;
}

static int parse_sim_args(int argc, char **argv, int first, sim_args *a, int allow_run_opts) {
    memset(a, 0, sizeof *a);
    a->tflops = 60;
    a->mode = -1;
    a->policy = VC_POLICY_PLANNED;
    for (int i = first; i < argc; i++) {
        const char *f = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        double x;
        if (!strcmp(f, "--json")) {
            a->json = 1;
            continue;
        }
        /* Known before its value is looked for: a misspelt last option is unknown, not valueless. */
        static const struct {
            const char *name;
            int run_only; /* simulate's, not plan's */
        } KNOWN[] = {{"--workload", 0}, {"--vram-gb", 0}, {"--bandwidth-gbps", 0}, {"--tflops", 0},
                     {"--steps", 0},    {"--block-layers", 0}, {"--config", 0}, {"--policy", 1},
                     {"--mode", 1},     {"--trace", 1},        {"--ram-gb", 0}, {"--disk-gbps", 0},
                     {"--tokens", 0},   {"--group-depth", 0},      {"--prefix", 0}, {"--stream-slots", 0}};
        int known = 0;
        for (size_t k = 0; k < sizeof KNOWN / sizeof KNOWN[0]; k++)
            known |= !strcmp(f, KNOWN[k].name) && (allow_run_opts || !KNOWN[k].run_only);
        if (!known) {
            fprintf(stderr, "vramcache: unknown option '%s' (vramcache --help lists them)\n", f);
            return -1;
        }
        if (!v) {
            fprintf(stderr, "vramcache: %s needs a value\n", f);
            return -1;
        }
        i++;
        if (!strcmp(f, "--workload"))
            a->workload = v;
        else if (!strcmp(f, "--vram-gb")) {
            if (parse_number_arg(f, v, 0.001, 1048576, &a->vram_gb)) return -1;
        } else if (!strcmp(f, "--bandwidth-gbps")) {
            if (parse_number_arg(f, v, 0.001, 100000, &a->bandwidth_gbps)) return -1;
        } else if (!strcmp(f, "--ram-gb")) {
            if (parse_number_arg(f, v, 1, 1048576, &a->ram_gb)) return -1;
        } else if (!strcmp(f, "--disk-gbps")) {
            if (parse_number_arg(f, v, 0.001, 100000, &a->disk_gbps)) return -1;
        } else if (!strcmp(f, "--tflops")) {
            if (parse_number_arg(f, v, 0.001, 1e6, &a->tflops)) return -1;
        } else if (!strcmp(f, "--steps")) {
            if (parse_number_arg(f, v, 1, 100000, &x) || x != floor(x)) return -1;
            a->steps = (int)x;
        } else if (!strcmp(f, "--stream-slots")) {
            if (!strcmp(v, "tune")) {
                a->stream_slots = VC_STREAM_SLOTS_TUNE;
            } else {
                if (parse_number_arg(f, v, 0, 8, &x) || x != floor(x)) return -1;
                a->stream_slots = (unsigned)x;
            }
        } else if (!strcmp(f, "--prefix")) {
            a->prefix = v;
        } else if (!strcmp(f, "--tokens")) {
            if (parse_number_arg(f, v, 0, 1e9, &a->tokens)) return -1;
            a->tokens_set = 1;
        } else if (!strcmp(f, "--group-depth")) {
            if (!strcmp(v, "tensor"))
                a->group_depth = VC_SAFETENSORS_EACH_TENSOR;
            else if (parse_number_arg(f, v, 1, 1000, &x) || x != floor(x))
                return -1;
            else
                a->group_depth = (unsigned)x;
        } else if (!strcmp(f, "--block-layers")) {
            if (parse_number_arg(f, v, 1, 64, &x) || x != floor(x)) return -1;
            a->block_layers = (unsigned)x;
        } else if (allow_run_opts && !strcmp(f, "--policy")) {
            if (!strcmp(v, "lru"))
                a->policy = VC_POLICY_LRU;
            else if (!strcmp(v, "planned"))
                a->policy = VC_POLICY_PLANNED;
            else {
                fprintf(stderr, "vramcache: --policy must be lru or planned, got '%s'\n", v);
                return -1;
            }
        } else if (allow_run_opts && !strcmp(f, "--mode")) {
            a->mode = -2;
            for (int m = 0; m < 4; m++)
                if (!strcmp(v, MODES[m])) a->mode = m;
            if (a->mode == -2) {
                fprintf(stderr, "vramcache: --mode must be none, model, sequential or balanced, got '%s'\n", v);
                return -1;
            }
        } else if (!strcmp(f, "--config"))
            a->config = v;
        else if (allow_run_opts && !strcmp(f, "--trace"))
            a->trace = v;
        else {
            fprintf(stderr, "vramcache: unknown option '%s'\n", f);
            return -1;
        }
    }
    if (!a->workload || !a->vram_gb || !a->bandwidth_gbps) {
        fprintf(stderr, "vramcache: --workload, --vram-gb and --bandwidth-gbps are required\n");
        return -1;
    }
    return 0;
}

/* A model file, or a sharded checkpoint's index ("model.safetensors.index.json")? */
static int is_safetensors(const char *path) {
    static const char *const ends[] = {".safetensors", ".index.json"};
    for (int i = 0; i < 2; i++) {
        size_t n = strlen(path), k = strlen(ends[i]);
        if (n >= k && !strcmp(path + n - k, ends[i])) return 1;
    }
    return 0;
}

/* Writes a workload for a safetensors file: one model, its layers in the file's name order, each
 * with its bytes and 2 x tokens x weights FLOPs. Returns 0, or 1 with the reason on stderr. */
static int write_safetensors_workload(FILE *out, const char *path, double tokens, unsigned group_depth, const char *prefix) {
    vc_safetensors_options o;
    vc_safetensors_options_init(&o);
    o.group_depth = group_depth;
    vc_safetensors *st;
    if (vc_safetensors_open(path, &o, &st) != VC_OK) {
        fprintf(stderr, "vramcache: %s\n", vc_last_error());
        return 1;
    }
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    size_t nl = vc_safetensors_layer_count(st), kept = 0, plen = prefix ? strlen(prefix) : 0;
    uint64_t total = 0;
    for (size_t i = 0; i < nl; i++) {
        const vc_safetensors_layer *l = vc_safetensors_get_layer(st, i);
        if (strncmp(l->name, prefix ? prefix : "", plen)) continue;
        kept += l->bytes > 0;
        total += l->bytes;
    }
    size_t ntensors = vc_safetensors_tensor_count(st);
    fprintf(out, "# From %s (%zu file%s, %zu tensor%s): %zu layer%s%s%s%s (%.3f GB), grouped %s.\n", base,
            vc_safetensors_file_count(st), vc_safetensors_file_count(st) > 1 ? "s" : "", ntensors,
            ntensors == 1 ? "" : "s", kept, kept == 1 ? "" : "s", prefix ? " named '" : "", prefix ? prefix : "", prefix ? "...'" : "", (double)total / GIB,
            group_depth == VC_SAFETENSORS_EACH_TENSOR ? "one per tensor"
            : group_depth                             ? "by --group-depth"
                                                      : "to the last numbered part of their names");
    fprintf(out, "# flops: 2 x %.10g tokens x each layer's weights (matrices and convolutions). The layers are in\n"
                 "# name order: for predictions closer to your engine, put them in the order it runs them.\n", tokens);
    fputs("name: ", out);
    json_put_string(out, base);
    fputs("\nlayers:\n", out);
    for (size_t i = 0; i < nl; i++) {
        const vc_safetensors_layer *l = vc_safetensors_get_layer(st, i);
        if (!l->bytes || strncmp(l->name, prefix ? prefix : "", plen)) continue; /* nothing to move, or not asked for */
        fputs("  - {name: ", out);
        json_put_string(out, l->name);
        fprintf(out, ", bytes: %llu, flops: %.6g}\n", (unsigned long long)l->bytes, 2.0 * tokens * (double)l->weight_elements);
    }
    vc_safetensors_close(st);
    if (!kept) {
        if (prefix)
            fprintf(stderr, "vramcache: no layer of %s with data starts with '%s'\n", path, prefix);
        else
            fprintf(stderr, "vramcache: %s holds no tensor data\n", path);
        return 1;
    }
    return 0;
}

static int cmd_workload(int argc, char **argv) {
    double tokens = 0;
    unsigned depth = 0;
    const char *path = NULL, *prefix = NULL;
    for (int i = 2; i < argc; i++) {
        double x;
        if (!strcmp(argv[i], "--prefix") && i + 1 < argc) {
            prefix = argv[++i];
        } else if (!strcmp(argv[i], "--group-depth") && i + 1 < argc && !strcmp(argv[i + 1], "tensor")) {
            depth = VC_SAFETENSORS_EACH_TENSOR;
            i++;
        } else if (!strcmp(argv[i], "--tokens") || !strcmp(argv[i], "--group-depth")) {
            int tok = !strcmp(argv[i], "--tokens");
            if (i + 1 >= argc || parse_number_arg(argv[i], argv[i + 1], tok ? 0 : 1, tok ? 1e9 : 1000, &x) ||
                (!tok && x != floor(x)))
                return 2;
            if (tok) tokens = x;
            else depth = (unsigned)x;
            i++;
        } else if (argv[i][0] == '-' || path) {
            fprintf(stderr, "vramcache: workload takes one FILE.safetensors and --tokens, --group-depth, --prefix; got '%s'\n",
                    argv[i]);
            return 2;
        } else {
            path = argv[i];
        }
    }
    if (!path) return usage(stderr);
    return write_safetensors_workload(stdout, path, tokens, depth, prefix);
}

/* Loads the workload (a workload file, or a .safetensors file turned into one) and the optional
 * config; prints diagnostics. */
static int load_inputs(const sim_args *a, vc_workload **wl, vc_config **cfg) {
    vc_diagnostics *d = NULL;
    int st;
    if (is_safetensors(a->workload)) {
        if (!a->tokens_set) {
            fprintf(stderr, "vramcache: %s is a model file, which gives each layer's bytes but not its compute: add\n"
                            "  --tokens N (each layer computes 2 x N x its weights FLOPs per use; e.g. 4608 for FLUX at\n"
                            "  1024x1024), or write a workload with vramcache workload and edit it\n", a->workload);
            return -1;
        }
        char *text = NULL;
        size_t len = 0;
        FILE *mem = open_memstream(&text, &len);
        if (!mem) {
            fprintf(stderr, "vramcache: out of memory\n");
            return -1;
        }
        int bad = write_safetensors_workload(mem, a->workload, a->tokens, a->group_depth, a->prefix);
        fclose(mem);
        st = bad ? VC_ERR_FORMAT : vc_workload_load_string(text, len, a->workload, wl, &d);
        free(text);
        if (bad) return -1;
    } else {
        if (a->tokens_set || a->group_depth || a->prefix) {
            fprintf(stderr, "vramcache: --tokens, --group-depth and --prefix apply to a .safetensors --workload\n");
            return -1;
        }
        st = vc_workload_load(a->workload, wl, &d);
    }
    if (d) vc_diagnostics_print(d, to_stderr, NULL);
    vc_diagnostics_destroy(d);
    if (st != VC_OK) {
        fprintf(stderr, "vramcache: %s\n", vc_last_error());
        return -1;
    }
    *cfg = NULL;
    if (vc_config_create(cfg) != VC_OK) return -1;
    if (a->config) {
        st = vc_config_load_file(*cfg, a->config, 0, &d);
        vc_diagnostics_print(d, to_stderr, NULL);
        vc_diagnostics_destroy(d);
        if (st != VC_OK) return -1;
    }
    return 0;
}

static void run_init_from(const sim_args *a, const vc_config *cfg, vc_sim_run *r) {
    vc_sim_run_init(r);
    r->vram_bytes = a->vram_gb * GIB;
    r->bandwidth = a->bandwidth_gbps * 1e9;
    r->flops = a->tflops * 1e12;
    r->steps = a->steps;
    r->block_layers = a->block_layers;
    r->stream_slots = a->stream_slots;
    r->policy = a->policy;
    r->mode = a->mode;
    r->config = cfg;
    r->trace_path = a->trace;
    r->system_ram_bytes = a->ram_gb * GIB;
    r->disk_bytes_per_s = a->disk_gbps * 1e9;
}

/* Parses the options and loads the workload and config: 0 when ready, else the exit code. */
static int open_inputs(int argc, char **argv, int run_opts, sim_args *a, vc_workload **wl, vc_config **cfg) {
    *wl = NULL;
    *cfg = NULL;
    if (parse_sim_args(argc, argv, 2, a, run_opts)) return 2;
    if (load_inputs(a, wl, cfg)) {
        vc_workload_destroy(*wl);
        vc_config_destroy(*cfg);
        return 1;
    }
    return 0;
}

/* Does the config set max_cache_ram_gb? */
static int ram_budget_set(const vc_config *cfg) {
    double gb;
    return cfg && vc_config_get_number(cfg, VC_CFG_MAX_CACHE_RAM_GB, &gb) == VC_OK;
}

/* num / den as a percentage ("12.3%"), or "n/a" where it means nothing: a workload whose layers
 * state no compute, or a step with nothing to wait for. */
static const char *percent(double num, double den, char *buf, size_t size) {
    if (!(num > 0) || !(den > 0)) return "n/a";
    snprintf(buf, size, "%.1f%%", 100.0 * num / den);
    return buf;
}

/* num / den to three places, or "n/a" when den is 0 (a bound of 0 s: no compute and nothing to move). */
static const char *ratio_of(double num, double den, char *buf, size_t size) {
    if (!(den > 0)) return "n/a";
    snprintf(buf, size, "%.3f", num / den);
    return buf;
}

/* A failed run's message in full. result->error is cut at 511 bytes (very long layer names); the
 * thread's last error holds the same message whole until another call sets one, so take it right
 * after the run. */
static void run_error(const vc_sim_result *res, int st, char *out, size_t n) {
    const char *why = res->error[0] ? res->error : st != VC_OK ? vc_last_error() : "";
    size_t len = strlen(res->error);
    if (len && strlen(vc_last_error()) > len && !strncmp(vc_last_error(), res->error, len)) why = vc_last_error();
    snprintf(out, n, "%s", why[0] || st == VC_OK ? why : vc_strerror(st));
}

static int cmd_simulate(int argc, char **argv) {
    sim_args a;
    vc_workload *wl;
    vc_config *cfg;
    int rc = open_inputs(argc, argv, 1, &a, &wl, &cfg);
    if (rc) return rc;
    vc_sim_run r;
    run_init_from(&a, cfg, &r);
    vc_sim_result res;
    int st = vc_sim_run_workload(wl, &r, &res);
    /* the mode the run used: unset, the simulated GPU's size decides it (4 GB or less: sequential) */
    int mode = a.mode >= 0 ? a.mode : (int)vc_config_get_offload_mode_for(cfg, 1, (size_t)r.vram_bytes, NULL, 0);
    if (st != VC_OK) {
        char why[4096];
        run_error(&res, st, why, sizeof why);
        if (a.json) {
            printf("{\"workload\":");
            json_put_string(stdout, vc_workload_name(wl));
            printf(",\"error\":");
            json_put_string(stdout, vc_strerror(st));
            printf(",\"detail\":");
            json_put_string(stdout, why);
            printf("}\n");
        }
        fprintf(stderr, "vramcache: simulation failed: %s\n", why);
        if (strstr(why, "device_working_mem_gb"))
            fprintf(stderr, "vramcache: device_working_mem_gb comes from --config (InvokeAI's default, 3 GB, "
                    "without one); `vramcache plan` with the same arguments suggests a value\n");
    } else if (a.json) {
        printf("{\"workload\":");
        json_put_string(stdout, vc_workload_name(wl));
        printf(",\"vram_gb\":%g,\"bandwidth_gbps\":%g,\"tflops\":%g,\"steps\":%d,"
               "\"policy\":\"%s\",\"mode\":\"%s\",\"usable_vram_bytes\":%zu,\"step_bytes\":%zu,"
               "\"bytes_per_step\":%.0f,\"lower_bound_bytes_per_step\":%.0f,\"step_time_s\":%.6f,"
               "\"lower_bound_step_time_s\":%.6f,\"segment_bound_step_time_s\":%.6f,\"compute_time_s\":%.6f,"
               "\"hits_per_step\":%.1f,"
               "\"misses_per_step\":%.1f,\"total_time_s\":%.6f,\"peak_vram_bytes\":%zu,\"peak_ram_bytes\":%zu,"
               "\"loaded_bytes_per_step\":%.0f,\"ram_budget_bytes\":%zu}\n",
               a.vram_gb, a.bandwidth_gbps, a.tflops, res.steps,
               a.policy == VC_POLICY_LRU ? "lru" : "planned", MODES[mode], res.usable_vram_bytes,
               vc_workload_step_bytes(wl), res.bytes_per_step, res.lower_bound_bytes_per_step, res.step_time_s,
               res.lower_bound_step_time_s, res.segment_bound_step_time_s, res.compute_time_s, res.hits_per_step,
               res.misses_per_step, res.total_time_s, res.peak_vram_bytes, res.peak_ram_bytes,
               res.loaded_bytes_per_step, res.ram_budget_bytes);
    } else {
        double lbb = res.lower_bound_bytes_per_step;
        printf("workload %s: denoiser %.2f GB per step, %d steps\n", vc_workload_name(wl),
               (double)vc_workload_step_bytes(wl) / GIB, res.steps);
        printf("device %g GB (usable for weights %.2f GB), link %g GB/s, %g TFLOP/s, policy %s, mode %s\n",
               a.vram_gb, (double)res.usable_vram_bytes / GIB, a.bandwidth_gbps, a.tflops,
               a.policy == VC_POLICY_LRU ? "lru" : "planned", MODES[mode]);
        if (a.block_layers > 1) printf("engine: %u layers held at once, run as one kernel\n", a.block_layers);
        if (a.stream_slots == VC_STREAM_SLOTS_TUNE)
            printf("streaming region: measured by the cache (VC_STREAM_SLOTS_TUNE)%s\n",
                   res.steps < TUNE_STEPS ? "; trying rooms takes 10 to 25 passes, so with fewer than 96 steps "
                                            "the figures below may include them (--trace shows the choice)"
                                          : "");
        else if (a.stream_slots)
            printf("streaming region: room for %u layer%s (--stream-slots)\n", a.stream_slots,
                   a.stream_slots > 1 ? "s" : "");
        if (a.ram_gb > 0 || ram_budget_set(cfg))
            printf("RAM cache budget %.2f GB (%s)\n", (double)res.ram_budget_bytes / GIB,
                   ram_budget_set(cfg) ? "max_cache_ram_gb" : "the default for this much RAM: --ram-gb");
        /* One step has no steady state: its figures are the first step's, which loads and uploads
         * every layer it streams for the first time. */
        int one = res.steps < 2;
        printf(one ? "the one denoising step (no steady state with one step: it loads every layer it uses):\n"
                   : "per denoising step, steady state:\n");
        char ratio[32] = "n/a (fits)";
        if (lbb > 0) snprintf(ratio, sizeof ratio, "%.3f", res.bytes_per_step / lbb);
        printf("  bytes moved host->device  %9.3f GB   lower bound %9.3f GB   ratio %s\n", res.bytes_per_step / GIB,
               lbb / GIB, ratio);
        char r1[32], r2[32], pc[32];
        printf("  step time                 %9.3f s    lower bound %9.3f s    ratio %s\n", res.step_time_s,
               res.lower_bound_step_time_s, ratio_of(res.step_time_s, res.lower_bound_step_time_s, r1, sizeof r1));
        if (res.segment_bound_step_time_s > res.lower_bound_step_time_s * 1.001)
            printf("  (no schedule can beat %.3f s here: the segment bound, where the pass's bytes sit apart from its "
                   "compute; ratio to it %s)\n",
                   res.segment_bound_step_time_s,
                   ratio_of(res.step_time_s, res.segment_bound_step_time_s, r2, sizeof r2));
        printf("  compute alone (resident)  %9.3f s    speed vs resident %s\n", res.compute_time_s,
               percent(res.compute_time_s, res.step_time_s, pc, sizeof pc));
        printf("  hits %.1f, misses %.1f per step; peak VRAM %.2f GB, peak RAM pool %.2f GB; pipeline %.2f s\n",
               res.hits_per_step, res.misses_per_step, (double)res.peak_vram_bytes / GIB,
               (double)res.peak_ram_bytes / GIB, res.total_time_s);
        if (res.loaded_bytes_per_step > 0 && one)
            printf("  loaders read %.3f GB in the step: its first loads; run 2 steps or more to see whether the RAM "
                   "cache holds what a step streams\n", res.loaded_bytes_per_step / GIB);
        else if (res.loaded_bytes_per_step > 0 && a.disk_gbps > 0)
            printf("  loaders read %.3f GB per step at %g GB/s (in the step time): the RAM cache (max_cache_ram_gb) "
                   "does not hold what the step streams\n",
                   res.loaded_bytes_per_step / GIB, a.disk_gbps);
        else if (res.loaded_bytes_per_step > 0)
            printf("  loaders read %.3f GB per step: the RAM cache (max_cache_ram_gb) does not hold what the step "
                   "streams, so a real engine reads it from disk again (not timed: --disk-gbps)\n",
                   res.loaded_bytes_per_step / GIB);
        if (a.trace) printf("trace written to %s\n", a.trace);
    }
    vc_workload_destroy(wl);
    vc_config_destroy(cfg);
    return st == VC_OK ? 0 : 1;
}

/* A log sink that passes errors only (a cache's own level, WARN by default, still decides what
 * reaches the sink). */
static void errors_only(void *user, vc_log_level level, const char *msg) {
    (void)user;
    if (level == VC_LOG_ERROR) fprintf(stderr, "vramcache: error: %s\n", msg);
}

/* plan's line on the user's own settings (--config): their step time, and what the recommendation
 * (rec_s; < 0: none) gains over it, or why the file's settings cannot run the workload. */
static void print_current(const char *path, int st, const vc_sim_result *mine, const char *why, int mode,
                          double resident, double rec_s) {
    char pc[32], gain[48] = "";
    if (st != VC_OK) {
        printf("your settings (%s, offload_mode %s) do not run this workload on this GPU: %s\n", path, MODES[mode],
               why);
        return;
    }
    if (rec_s > 0)
        snprintf(gain, sizeof gain, "; the recommendation: %.3f s (%.2fx)", rec_s, mine->step_time_s / rec_s);
    else if (rec_s == 0)
        snprintf(gain, sizeof gain, "; the recommendation: %.3f s", rec_s);
    printf("your settings (%s, offload_mode %s): %.3f s per step, %s of resident speed%s\n", path, MODES[mode],
           mine->step_time_s, percent(resident, mine->step_time_s, pc, sizeof pc), gain);
}

static int cmd_plan(int argc, char **argv) {
    sim_args a;
    vc_workload *wl;
    vc_config *cfg;
    int rc = open_inputs(argc, argv, 0, &a, &wl, &cfg);
    if (rc) return rc;
    /* The runs below are what-ifs: their caches' warnings (a RAM cache too small) would repeat, mode
     * after mode, what the recommendations say; errors still show. */
    vc_set_log_callback(errors_only, NULL, VC_LOG_ERROR);
    /* With --config, the user's settings as they stand first (their mode, working memory and VRAM
     * cap), so the output can say what changing them buys. */
    vc_sim_result mine;
    char mine_why[4096] = "";
    int mine_st = VC_OK, mine_mode = -1;
    if (a.config) {
        vc_sim_run r;
        a.mode = -1; /* the config's, or what a GPU of this size gets without one */
        run_init_from(&a, cfg, &r);
        r.policy = VC_POLICY_PLANNED;
        mine_st = vc_sim_run_workload(wl, &r, &mine);
        run_error(&mine, mine_st, mine_why, sizeof mine_why);
        mine_mode = (int)vc_config_get_offload_mode_for(cfg, 1, (size_t)r.vram_bytes, NULL, 0);
    }
    /* Working memory: what the denoiser's activations need (the VAE decode reserves its own). */
    double work_gb = vc_workload_denoiser_working_mem(wl) / GIB;
    /* The workload does not say: the user's device_working_mem_gb (--config, or INVOKEAI_ in the
     * environment) when they set one, else InvokeAI's default. */
    int work_assumed = !(work_gb > 0), work_users = 0;
    if (work_assumed && vc_config_get_source(cfg, VC_CFG_DEVICE_WORKING_MEM_GB) != VC_CFG_SOURCE_DEFAULT &&
        vc_config_get_number(cfg, VC_CFG_DEVICE_WORKING_MEM_GB, &work_gb) == VC_OK)
        work_users = 1;
    else
        work_gb = work_assumed ? 3.0 : ceil(work_gb * 2) / 2;
    char text[32];
    snprintf(text, sizeof text, "%g", work_gb);
    vc_config_set(cfg, VC_CFG_DEVICE_WORKING_MEM_GB, text);
    vc_config_set(cfg, VC_CFG_MAX_CACHE_VRAM_GB, "null");
    vc_sim_result res[4];
    char why[4][4096];
    int st[4], best = -1;
    for (int m = 0; m < 4; m++) {
        vc_sim_run r;
        a.mode = m;
        run_init_from(&a, cfg, &r);
        r.policy = VC_POLICY_PLANNED;
        st[m] = vc_sim_run_workload(wl, &r, &res[m]);
        run_error(&res[m], st[m], why[m], sizeof why[m]);
        if (st[m] == VC_OK && (best < 0 || res[m].step_time_s < res[best].step_time_s)) best = m;
    }
    /* Within 1% of the fastest, prefer balanced: it also adapts when other programs take memory
     * and when an operation reserves working memory. */
    if (best >= 0 && st[VC_OFFLOAD_MODE_BALANCED] == VC_OK &&
        res[VC_OFFLOAD_MODE_BALANCED].step_time_s <= res[best].step_time_s * 1.01)
        best = VC_OFFLOAD_MODE_BALANCED;
    double safe = a.vram_gb - work_gb;
    /* The RAM cache cannot hold what a step streams: each step re-reads the excess from disk. How
     * much would hold it, whether this machine has it to spare, and what the best mode then gives
     * (`with`: what the user gets after the change; the table stays at the settings given). */
    struct {
        double need, budget_gb, reread_gb;
        int fits, held;
        vc_sim_result with;
    } ram;
    memset(&ram, 0, sizeof ram);
    if (best >= 0 && res[best].loaded_bytes_per_step > 0 && res[best].steps >= 2) { /* (one step: its first loads) */
        ram.budget_gb = (double)res[best].ram_budget_bytes / GIB;
        ram.reread_gb = res[best].loaded_bytes_per_step / GIB;
        ram.need = ceil(ram.budget_gb + ram.reread_gb + 0.5);
        ram.fits = a.ram_gb <= 0 || ram.need <= a.ram_gb - 4; /* the OS and the engine itself */
        if (ram.fits) {
            char gb[32];
            snprintf(gb, sizeof gb, "%g", ram.need);
            vc_config_set(cfg, VC_CFG_MAX_CACHE_RAM_GB, gb);
            vc_sim_run r;
            a.mode = best;
            run_init_from(&a, cfg, &r);
            ram.held = vc_sim_run_workload(wl, &r, &ram.with) == VC_OK && ram.with.loaded_bytes_per_step == 0;
        }
    }
    /* For engines: with the cache measuring its streaming region's room (VC_STREAM_SLOTS_TUNE), what
     * balanced mode gives once tuned (a run of TUNE_STEPS at least); said only when more than 2%
     * faster. */
    vc_sim_result tuned;
    int tuned_faster = 0;
    if (best == VC_OFFLOAD_MODE_BALANCED && !ram.held && a.stream_slots == 0 && res[best].steps >= 2) {
        vc_sim_run r;
        a.mode = VC_OFFLOAD_MODE_BALANCED;
        run_init_from(&a, cfg, &r);
        r.policy = VC_POLICY_PLANNED;
        r.stream_slots = VC_STREAM_SLOTS_TUNE;
        r.steps = a.steps > TUNE_STEPS ? a.steps : TUNE_STEPS;
        r.trace_path = NULL;
        tuned_faster = vc_sim_run_workload(wl, &r, &tuned) == VC_OK &&
                       tuned.step_time_s < 0.98 * res[best].step_time_s;
    }
    if (a.json) {
        char ram_text[32] = "null"; /* unset: the default holds what a step streams, or RAM cannot */
        if (ram.need > 0 && ram.fits) snprintf(ram_text, sizeof ram_text, "%g", ram.need);
        printf("{\"workload\":");
        json_put_string(stdout, vc_workload_name(wl));
        printf(",\"vram_gb\":%g,\"bandwidth_gbps\":%g,\"tflops\":%g,\"modes\":{", a.vram_gb, a.bandwidth_gbps,
               a.tflops);
        for (int m = 0; m < 4; m++) {
            printf("%s\"%s\":", m ? "," : "", MODES[m]);
            if (st[m] == VC_OK)
                printf("{\"step_time_s\":%.6f,\"bytes_per_step\":%.0f}", res[m].step_time_s, res[m].bytes_per_step);
            else {
                printf("{\"error\":");
                json_put_string(stdout, vc_strerror(st[m]));
                printf(",\"detail\":");
                json_put_string(stdout, why[m]);
                printf("}");
            }
        }
        const vc_sim_result *rec = ram.held ? &ram.with : best >= 0 ? &res[best] : NULL;
        printf("},\"recommended\":{\"offload_mode\":\"%s\",\"device_working_mem_gb\":%g,"
               "\"max_cache_vram_gb\":null,\"max_cache_vram_gb_largest_safe\":%.2f,\"enable_partial_loading\":%s,"
               "\"max_cache_ram_gb\":%s,\"step_time_s\":%.6f},"
               "\"best_possible_step_time_s\":%.6f,\"loaded_bytes_per_step\":%.0f,\"ram_budget_bytes\":%zu,",
               best >= 0 ? MODES[best] : "none", work_gb, safe > 0 ? safe : 0,
               best == VC_OFFLOAD_MODE_BALANCED || best == VC_OFFLOAD_MODE_SEQUENTIAL ? "true" : "false", ram_text,
               rec ? rec->step_time_s : 0.0,
               best >= 0 ? res[best].segment_bound_step_time_s : 0.0, best >= 0 ? res[best].loaded_bytes_per_step : 0.0,
               best >= 0 ? res[best].ram_budget_bytes : (size_t)0);
        if (tuned_faster)
            printf("\"stream_slots_tune\":{\"step_time_s\":%.6f,\"bytes_per_step\":%.0f},\"current\":",
                   tuned.step_time_s, tuned.bytes_per_step);
        else
            printf("\"stream_slots_tune\":null,\"current\":");
        if (!a.config) {
            printf("null}\n");
        } else if (mine_st == VC_OK) {
            printf("{\"offload_mode\":\"%s\",\"step_time_s\":%.6f,\"bytes_per_step\":%.0f}}\n", MODES[mine_mode],
                   mine.step_time_s, mine.bytes_per_step);
        } else {
            printf("{\"offload_mode\":\"%s\",\"error\":", MODES[mine_mode]);
            json_put_string(stdout, vc_strerror(mine_st));
            printf(",\"detail\":");
            json_put_string(stdout, mine_why);
            printf("}}\n");
        }
    } else {
        double resident = best >= 0 ? res[best].compute_time_s : 0;
        printf("plan for %s on a %g GB GPU, %g GB/s link, %g TFLOP/s (working memory %.1f GB%s)\n",
               vc_workload_name(wl), a.vram_gb, a.bandwidth_gbps, a.tflops, work_gb,
               work_users     ? ", your device_working_mem_gb: the workload states none"
               : work_assumed ? ", InvokeAI's default: the workload states none"
                              : "");
        if (best >= 0 && res[best].steps < 2)
            printf("one step: each mode's figures are that step's, cold (every layer it uses loaded and uploaded "
                   "for the first time); a one-step model run image after image is a workload whose pipeline "
                   "repeats (docs/workloads.md)\n");
        printf("  %-11s %12s %14s %16s\n", "mode", "step time", "vs resident", "moved per step");
        char pc[32];
        for (int m = 0; m < 4; m++) {
            if (st[m] == VC_OK)
                printf("  %-11s %10.3f s %14s %13.2f GB%s\n", MODES[m], res[m].step_time_s,
                       percent(resident, res[m].step_time_s, pc, sizeof pc), res[m].bytes_per_step / GIB,
                       m == best ? "  <= best" : "");
            else
                printf("  %-11s %12s   %s (below)\n", MODES[m], "-", vc_strerror(st[m]));
        }
        /* The reasons in full after the table: the part that says what to change comes last. */
        for (int m = 0; m < 4; m++)
            if (st[m] != VC_OK) printf("  %s: %s\n", MODES[m], why[m]);
        if (best < 0 && work_assumed && !work_users && work_gb >= a.vram_gb)
            printf("the assumed working memory (%g GB) does not leave this GPU room for weights: state the denoiser "
                   "stage's working_mem_bytes in the workload (docs/workloads.md)\n",
                   work_gb);
        if (best < 0) {
            printf("no mode runs this workload on this GPU\n");
            if (a.config) print_current(a.config, mine_st, &mine, mine_why, mine_mode, mine.compute_time_s, -1);
        } else {
            printf("recommended invokeai.yaml settings:\n");
            printf("  enable_partial_loading: %s\n",
                   best == VC_OFFLOAD_MODE_BALANCED || best == VC_OFFLOAD_MODE_SEQUENTIAL ? "true" : "false");
            printf("  offload_mode: %s\n", MODES[best]);
            printf("  device_working_mem_gb: %g\n", work_gb);
            printf("  # max_cache_vram_gb: leave unset (dynamic); if you set it, at most %.1f (GPU - working memory)\n",
                   safe > 0 ? safe : 0);
            if (ram.need > 0 && ram.fits)
                printf("  max_cache_ram_gb: %g  # the RAM cache of %.1f GB re-reads %.2f GB from disk every step%s",
                       ram.need, ram.budget_gb, ram.reread_gb, ram.held ? "" : "\n");
            if (ram.need > 0 && ram.fits && ram.held)
                printf("; with %g GB none, and %.3f s per step\n", ram.need, ram.with.step_time_s);
            if (ram.need > 0 && !ram.fits)
                printf("  # max_cache_ram_gb: %.0f or more would stop %.2f GB of disk reads per step, but this "
                       "machine's %.0f GB of RAM cannot spare it\n",
                       ram.need, ram.reread_gb, a.ram_gb);
            double rec_s = ram.held ? ram.with.step_time_s : res[best].step_time_s;
            if (a.config) print_current(a.config, mine_st, &mine, mine_why, mine_mode, resident, rec_s);
            /* What no schedule can beat with this much VRAM and this link: tells a user whether the
             * remaining gap is the scheduler's or the hardware's. */
            double bound = res[best].segment_bound_step_time_s;
            printf("no offloading scheme can beat %.3f s per step on this GPU and link (%s of resident speed); "
                   "the recommendation is %.1f%% slower than that\n",
                   bound, percent(resident, bound, pc, sizeof pc),
                   /* at the bound to within rounding: print 0.0, not -0.0 */
                   bound > 0 ? fmax(0.0, 100.0 * (rec_s / bound - 1)) : 0.0);
            if (tuned_faster)
                printf("for engines: with vc_cache_options.stream_slots = VC_STREAM_SLOTS_TUNE the cache measures its "
                       "streaming region's room and, once tuned (10 to 25 passes), runs %.3f s per step (%.1f%% faster), "
                       "moving %.2f GB per step instead of %.2f; worth it over long runs, not for one short image\n",
                       tuned.step_time_s, 100.0 * (res[best].step_time_s / tuned.step_time_s - 1),
                       tuned.bytes_per_step / GIB, res[best].bytes_per_step / GIB);
            /* That bound counts the GPU and its link only: where the recommendation still re-reads
             * from disk, say how much of the gap that is, so the user looks at RAM, not the GPU. */
            if (!ram.held && ram.reread_gb > 0 && a.disk_gbps > 0)
                printf("  the bound leaves out the disk: loaders read %.2f GB from it every step (%.3f s of reading at %g "
                       "GB/s, partly behind the GPU's queued work) because "
                       "the RAM cache of %.1f GB cannot hold what a step streams; more RAM or a faster disk is what "
                       "would help\n",
                       ram.reread_gb, ram.reread_gb * GIB / (a.disk_gbps * 1e9), a.disk_gbps, ram.budget_gb);
        }
    }
    vc_workload_destroy(wl);
    vc_config_destroy(cfg);
    return best >= 0 ? 0 : 1;
}

int main(int argc, char **argv) {
    if (argc >= 2 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "help")))
        return usage(stdout);
    if (argc == 2 && (!strcmp(argv[1], "version") || !strcmp(argv[1], "--version"))) {
        printf("vramcache %s\n", vc_version_string());
        return 0;
    }
    if (argc >= 2 && !strcmp(argv[1], "simulate")) return cmd_simulate(argc, argv);
    if (argc >= 2 && !strcmp(argv[1], "plan")) return cmd_plan(argc, argv);
    if (argc >= 2 && !strcmp(argv[1], "workload")) return cmd_workload(argc, argv);
    if (argc >= 3 && !strcmp(argv[1], "config")) {
        if (!strcmp(argv[2], "check") && argc == 4) return config_check(argv[3]);
        if (!strcmp(argv[2], "show") && argc <= 4) return config_show(argc == 4 ? argv[3] : NULL);
    }
    return usage(stderr);
}
