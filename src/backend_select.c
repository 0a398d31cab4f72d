/*
 * Run-time choice of a backend for a `device` setting. GPU backends are found here as this build
 * provides them; without one, `auto` falls back to the host backend and an explicit GPU device is a
 * clear error.
 */
#include <stdio.h>

#include "cache_internal.h"
#include "config_internal.h"

int vc__select_backend(vc_device_kind kind, int index, vc_backend **out, char *why, size_t why_size) {
    char dummy[8];
    if (!why || !why_size) why = dummy, why_size = sizeof dummy;
    *out = NULL;
    if (kind == VC_DEVICE_CUDA || kind == VC_DEVICE_HIP) {
        const char *name = kind == VC_DEVICE_CUDA ? "cuda" : "hip";
        char dev[32];
        if (index >= 0)
            snprintf(dev, sizeof dev, "%s:%d", name, index);
        else
            snprintf(dev, sizeof dev, "%s", name);
        snprintf(why, why_size, "this build of libvramcache has no %s backend", kind == VC_DEVICE_CUDA ? "CUDA" : "HIP");
        return vc__fail(NULL, VC_ERR_NO_DEVICE, "device '%s' is not available: %s; use device: auto or cpu", dev, why);
    }
    int st = vc_backend_host_create(0, out);
    if (st != VC_OK) return st;
    snprintf(why, why_size, "%s", kind == VC_DEVICE_CPU ? "device: cpu selects the host backend"
                                                        : "auto: no CUDA or HIP backend in this build, so the host backend");
    return VC_OK;
}
