/* Streams two layers through a one-layer host "device" with the installed library and checks the
 * bytes: exit 0 when everything worked. */
#include <stdio.h>
#include <string.h>

#include <vramcache.h>

int main(void) {
    static unsigned char a[4096], b[4096];
    memset(a, 1, sizeof a);
    memset(b, 2, sizeof b);
    vc_backend *dev;
    if (vc_backend_host_create(64 * 1024, &dev) != VC_OK) return 1;
    vc_cache_options o;
    vc_cache_options_init(&o);
    o.backend = dev;
    o.vram_budget = 6000;
    o.ram_budget = 1 << 20;
    o.working_mem = 0;
    vc_cache *c;
    if (vc_cache_create(&o, &c) != VC_OK) return 2;
    vc_model_id m;
    vc_layer_id l[2];
    vc_model_register(c, "m", &m);
    vc_layer_desc da = {.name = "a", .bytes = sizeof a, .host_ptr = a};
    vc_layer_desc db = {.name = "b", .bytes = sizeof b, .host_ptr = b};
    if (vc_layer_register(c, m, &da, &l[0]) || vc_layer_register(c, m, &db, &l[1])) return 3;
    for (int pass = 0; pass < 3; pass++)
        for (int i = 0; i < 2; i++) {
            void *p;
            if (vc_layer_acquire(c, l[i], NULL, &p) != VC_OK) return 4;
            if (((unsigned char *)p)[100] != (unsigned char)(i + 1)) return 5;
            vc_layer_release(c, l[i], NULL);
        }
    vc_stats s;
    vc_cache_get_stats(c, &s);
    printf("consumer: %s, %llu misses, %s\n", vc_version_string(), (unsigned long long)s.misses,
           vc_strerror(VC_ERR_OUT_OF_VRAM));
    vc_cache_destroy(c);
    vc_backend_destroy(dev);
    return s.misses >= 4 ? 0 : 6;
}
