/* libFuzzer target for the configuration loader: any bytes must give a status and diagnostics,
 * never a crash, a leak or undefined behaviour (built with ASan + UBSan). */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "vramcache.h"
#include "vramcache_config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void discard(void *user, const char *text) {
    (void)user;
    (void)text;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    vc_config *cfg;
    if (vc_config_create(&cfg) != VC_OK) return 0;
    vc_diagnostics *d = NULL;
    int st = vc_config_load_string(cfg, (const char *)data, size, "fuzz", VC_CONFIG_NO_ENV, &d);
    /* Every diagnostic is well formed. */
    for (size_t i = 0; i < vc_diagnostics_count(d); i++) {
        const vc_diagnostic *g = vc_diagnostics_get(d, i);
        if (!g->file || !g->key || !g->message || strlen(g->message) == 0) __builtin_trap();
    }
    if ((st == VC_OK) != (vc_diagnostics_errors(d) == 0)) __builtin_trap();
    vc_diagnostics_print(d, discard, NULL);
    vc_diagnostics_destroy(d);
    vc_cache_options o;
    vc_cache_options_init(&o);
    vc_config_apply(cfg, &o);
    for (int k = 0; k < VC_CFG_KEY_COUNT; k++)
        if (!vc_config_get_text(cfg, (vc_config_key)k)) __builtin_trap();
    vc_config_destroy(cfg);
    return 0;
}
