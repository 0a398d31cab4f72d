// Every public header from C++ (C++11, -pedantic, warnings as errors).
#include <vramcache.h>
#include <vramcache_backend.h>
#include <vramcache_config.h>
#include <vramcache_fault.h>
#include <vramcache_gpu.h>
#include <vramcache_sim.h>

int main() {
    vc_cache_options o;
    vc_cache_options_init(&o);
    vc_config *cfg = nullptr;
    if (vc_config_create(&cfg) != VC_OK) return 1;
    vc_config_destroy(cfg);
    return o.stage_ahead;
}
