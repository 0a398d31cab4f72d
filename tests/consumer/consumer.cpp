// Every public header from C++ (C++11, -pedantic, warnings as errors).
#include <vramcache.h>
#include <vramcache_backend.h>
#include <vramcache_config.h>
#include <vramcache_fault.h>
#include <vramcache_gpu.h>
#include <vramcache_safetensors.h>
#include <vramcache_sim.h>

int main() {
    vc_cache_options o;
    vc_cache_options_init(&o);
    vc_config *cfg = nullptr;
    if (vc_config_create(&cfg) != VC_OK) return 1;
    vc_config_destroy(cfg);
    // the size-passing macros and the plain functions behind them
    o.ram_budget = 1 << 20;
    vc_cache *c = nullptr;
    if (vc_cache_create(&o, &c) != VC_OK) return 1;
    vc_stats s;
    int (*get_stats)(vc_cache *, vc_stats *) = &vc_cache_get_stats;
    if (vc_cache_get_stats(c, &s) != VC_OK || get_stats(c, &s) != VC_OK || s.ram_budget != (1u << 20)) return 1;
    vc_layer_info info;
    if (vc_layer_get_info(c, 1, &info) != VC_ERR_NOT_FOUND) return 1;
    if (vc_cache_destroy(c) != VC_OK) return 1;
    vc_safetensors_options so;
    vc_safetensors_options_init(&so);
    vc_safetensors *st = nullptr;
    if (vc_safetensors_open("/nonexistent.safetensors", &so, &st) != VC_ERR_IO || st) return 1;
    return o.stage_ahead;
}
