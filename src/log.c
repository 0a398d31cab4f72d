/* Log sinks: one per cache, else the process-wide sink (the library's only global mutable state). */
#include <stdio.h>

#include "cache_internal.h"

static void stderr_sink(void *user, vc_log_level level, const char *msg) {
    (void)user;
    static const char *const names[] = {"error", "warning", "info", "debug"};
    fprintf(stderr, "vramcache: %s: %s\n", names[level], msg);
}

static vc_log_fn g_log_fn = stderr_sink;
static void *g_log_user;
static vc_log_level g_log_level = VC_LOG_WARN;

void vc_set_log_callback(vc_log_fn fn, void *user, vc_log_level max_level) {
    g_log_fn = fn ? fn : stderr_sink;
    g_log_user = fn ? user : NULL;
    g_log_level = fn ? max_level : VC_LOG_WARN;
}

void vc__log(const vc_cache *c, vc_log_level level, const char *fmt, ...) {
    vc_log_fn fn = g_log_fn;
    void *user = g_log_user;
    vc_log_level max = g_log_level;
    if (c) { /* a cache's own level always applies; its own sink when it has one */
        max = c->log_level;
        if (c->log_fn) {
            fn = c->log_fn;
            user = c->log_user;
        }
    }
    if (level > max || !fn) return;
    char msg[4096]; /* as long as an error message (status.c) */
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fn(user, level, msg);
}
