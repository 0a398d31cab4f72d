/*
 * Default RAM pool budget, computed as InvokeAI's model cache does (heuristics 1-3 of
 * _calc_ram_available_to_model_cache), with one correction InvokeAI lacks: in a container the
 * RAM that counts is the cgroup's limit, not the host's.
 */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "cache_internal.h"

size_t vc_default_ram_budget(size_t system_ram, size_t total_vram, size_t vram_budget,
                             size_t working_mem, char *why, size_t why_size) {
    return vc__ram_budget(system_ram, total_vram, vram_budget, working_mem, VC_OFFLOAD_MODE_MODEL, why, why_size);
}

size_t vc__ram_budget(size_t system_ram, size_t total_vram, size_t vram_budget, size_t working_mem,
                      vc_offload_mode mode, char *why, size_t why_size) {
    int streams = mode == VC_OFFLOAD_MODE_BALANCED || mode == VC_OFFLOAD_MODE_SEQUENTIAL;
    char a[32], b[32], r[32];
    char text[384];
    size_t n = 0;
    /* 1: half of RAM, less a 2 GB baseline for the engine itself. */
    size_t budget = sat_sub(system_ram / 2, 2 * VC_GB);
    n += (size_t)snprintf(text + n, sizeof text - n, "rule 1: 0.5 x %s RAM - 2 GB = %s",
                          vc__fmt_bytes(system_ram, a, sizeof a), vc__fmt_bytes(budget, r, sizeof r));
    /* 2: no point caching more than could ever be useful: 32 GB, or with a GPU what the GPU's
     *    weight budget can hold. */
    size_t cap = 32 * VC_GB;
    const char *cap_why = "no GPU: 32 GB";
    if (total_vram && streams) {
        /* InvokeAI's GPU cap leaves the model in use outside its budget (it is added after making
         * what room there is); this cache counts every byte, and layers stream through it, so the
         * same cap would make a model larger than the GPU re-read its layers every step. */
        cap_why = "layers stream through it: 32 GB, not InvokeAI's GPU cap";
    } else if (total_vram) {
        if (vram_budget != VC_SIZE_AUTO) {
            cap = vram_budget;
            cap_why = "GPU: max_cache_vram";
        } else {
            cap = sat_sub(total_vram, working_mem);
            cap_why = "GPU: total VRAM - working memory";
        }
    }
    if (budget > cap) {
        budget = cap;
        n += (size_t)snprintf(text + n, sizeof text - n, "; rule 2: capped at %s (%s)",
                              vc__fmt_bytes(cap, b, sizeof b), cap_why);
    }
    /* 3: never below 4 GB. */
    if (budget < 4 * VC_GB) {
        budget = 4 * VC_GB;
        n += (size_t)snprintf(text + n, sizeof text - n, "; rule 3: raised to the 4 GB floor");
    }
    if (n < sizeof text)
        snprintf(text + n, sizeof text - n, " => %s", vc__fmt_bytes(budget, r, sizeof r));
    if (why && why_size) snprintf(why, why_size, "%s", text);
    return budget;
}

/* Reads one unsigned number (or "max") from a file; returns 0 when absent or unlimited. */
static size_t read_limit(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    char buf[64] = {0};
    size_t got = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    if (got == 0 || strncmp(buf, "max", 3) == 0) return 0;
    unsigned long long v = 0;
    if (sscanf(buf, "%llu", &v) != 1) return 0;
    /* cgroup v1 reports "unlimited" as a huge page-rounded number */
    if (v >= (1ULL << 60)) return 0;
    return (size_t)v;
}

/* The cgroup v2 path of this process ("0::/some/path" in `self_cgroup`), else "". */
static void own_cgroup_path(const char *self_cgroup, char *out, size_t size) {
    out[0] = '\0';
    FILE *f = fopen(self_cgroup, "r");
    if (!f) return;
    char line[512];
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "0::", 3) == 0) {
            line[strcspn(line, "\n")] = '\0';
            snprintf(out, size, "%s", line + 3);
            break;
        }
    }
    fclose(f);
}

size_t vc__system_ram_at(const char *cgroup_root, const char *self_cgroup, size_t phys, char *why,
                         size_t why_size) {
    size_t best = phys;
    const char *src = "physical RAM";
    char path[1024], cg[512];
    own_cgroup_path(self_cgroup, cg, sizeof cg);
    size_t lim = 0;
    if (cg[0] && strcmp(cg, "/") != 0) { /* the process's own cgroup, then the root of the mount */
        snprintf(path, sizeof path, "%s%s/memory.max", cgroup_root, cg);
        lim = read_limit(path);
    }
    if (!lim) {
        snprintf(path, sizeof path, "%s/memory.max", cgroup_root);
        lim = read_limit(path);
    }
    if (lim && lim < best) {
        best = lim;
        src = "cgroup v2 memory.max";
    } else {
        snprintf(path, sizeof path, "%s/memory/memory.limit_in_bytes", cgroup_root);
        lim = read_limit(path);
        if (lim && lim < best) {
            best = lim;
            src = "cgroup v1 memory.limit_in_bytes";
        }
    }
    if (why && why_size) {
        char a[32];
        snprintf(why, why_size, "%s (%s)", vc__fmt_bytes(best, a, sizeof a), src);
    }
    return best;
}

size_t vc_system_ram(char *why, size_t why_size) {
    long pages = sysconf(_SC_PHYS_PAGES);
    long page = sysconf(_SC_PAGESIZE);
    size_t phys = (pages > 0 && page > 0) ? (size_t)pages * (size_t)page : 8 * VC_GB;
    return vc__system_ram_at("/sys/fs/cgroup", "/proc/self/cgroup", phys, why, why_size);
}
