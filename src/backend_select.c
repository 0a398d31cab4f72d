/*
 * Run-time choice of a backend for a `device` setting. GPU backends are run-time modules
 * (libvramcache-cuda.so, libvramcache-hip.so) found next to the core library, in
 * $VRAMCACHE_BACKEND_DIR, or on the loader's path; a backend linked in statically (vramcache_cuda_static)
 * is used directly. `auto` tries CUDA, then HIP, then falls back to the host backend and says why;
 * an explicit GPU device that cannot be had is VC_ERR_NO_DEVICE with the reason.
 */
#define _GNU_SOURCE 1 /* dladdr */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cache_internal.h"
#include "config_internal.h"
#include "vramcache_gpu.h"

/* Defined only when a GPU backend is linked in statically. */
#if defined(__GNUC__)
#pragma weak vc_backend_cuda_create
#pragma weak vc_backend_hip_create
#endif

typedef int (*module_create_fn)(unsigned abi, int device, vc_backend **out, char *why, size_t why_size);

/* Loads "libvramcache-<name>.so" once per process (never unloaded: backends may live until exit). */
static void *load_module(const char *name, char *why, size_t why_size) {
    char file[64], path[1200];
    snprintf(file, sizeof file, "libvramcache-%s.so", name);
    const char *env = getenv("VRAMCACHE_BACKEND_DIR");
    void *h = NULL;
    if (env && *env) {
        snprintf(path, sizeof path, "%s/%s", env, file);
        h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    }
    if (!h) { /* next to the library that holds this code */
        Dl_info info;
        if (dladdr((void *)load_module, &info) && info.dli_fname) {
            const char *slash = strrchr(info.dli_fname, '/');
            if (slash) {
                snprintf(path, sizeof path, "%.*s/%s", (int)(slash - info.dli_fname), info.dli_fname, file);
                h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
            }
        }
    }
    if (!h) h = dlopen(file, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        const char *err = dlerror();
        snprintf(why, why_size, "the %s backend module %s is not installed or cannot load (%s)", name, file,
                 err ? err : "not found");
    }
    return h;
}

static int try_gpu(vc_device_kind kind, int index, vc_backend **out, char *why, size_t why_size) {
    const char *name = kind == VC_DEVICE_CUDA ? "cuda" : "hip";
    int (*linked)(int, vc_backend **, char *, size_t) =
        kind == VC_DEVICE_CUDA ? vc_backend_cuda_create : vc_backend_hip_create;
    if (linked) return linked(index < 0 ? 0 : index, out, why, why_size);
    void *h = load_module(name, why, why_size);
    if (!h) return VC_ERR_NO_DEVICE;
    module_create_fn create;
    *(void **)&create = dlsym(h, "vc_backend_module_create");
    if (!create) {
        snprintf(why, why_size, "the %s backend module has no entry point", name);
        return VC_ERR_NO_DEVICE;
    }
    int st = create(VC_BACKEND_ABI_VERSION, index < 0 ? 0 : index, out, why, why_size);
    if (st == VC_ERR_UNSUPPORTED) st = VC_ERR_NO_DEVICE;
    return st;
}

int vc__select_backend(vc_device_kind kind, int index, vc_backend **out, char *why, size_t why_size) {
    char dummy[8];
    if (!why || !why_size) why = dummy, why_size = sizeof dummy;
    *out = NULL;
    if (kind == VC_DEVICE_CUDA || kind == VC_DEVICE_HIP) {
        char dev[32];
        snprintf(dev, sizeof dev, "%s%s%d", kind == VC_DEVICE_CUDA ? "cuda" : "hip", index >= 0 ? ":" : "",
                 index >= 0 ? index : 0);
        if (index < 0) dev[kind == VC_DEVICE_CUDA ? 4 : 3] = '\0';
        int st = try_gpu(kind, index, out, why, why_size);
        if (st == VC_OK) return VC_OK;
        return vc__fail(NULL, VC_ERR_NO_DEVICE, "device '%s' is not available: %s (use device: auto or cpu)", dev, why);
    }
    char cuda_why[256] = "", hip_why[256] = "";
    if (kind == VC_DEVICE_AUTO) {
        if (try_gpu(VC_DEVICE_CUDA, index, out, cuda_why, sizeof cuda_why) == VC_OK) {
            snprintf(why, why_size, "auto: CUDA %s", cuda_why);
            return VC_OK;
        }
        if (try_gpu(VC_DEVICE_HIP, index, out, hip_why, sizeof hip_why) == VC_OK) {
            snprintf(why, why_size, "auto: HIP %s (CUDA: %s)", hip_why, cuda_why);
            return VC_OK;
        }
    }
    int st = vc_backend_host_create(0, out);
    if (st != VC_OK) return st;
    if (kind == VC_DEVICE_CPU)
        snprintf(why, why_size, "device: cpu selects the host backend");
    else
        snprintf(why, why_size, "auto: host backend, since CUDA: %s; HIP: %s", cuda_why, hip_why);
    vc__log(NULL, VC_LOG_INFO, "device %s", why);
    return VC_OK;
}
