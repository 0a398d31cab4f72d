/* Status strings, version, and the per-thread / per-cache error messages. */
#include <stdio.h>
#include <string.h>

#include "cache_internal.h"

#define VC_STR_(x) #x
#define VC_XSTR_(x) VC_STR_(x)

unsigned vc_version(void) { return VC_VERSION_NUMBER; }

const char *vc_version_string(void) {
    return VC_XSTR_(VC_VERSION_MAJOR) "." VC_XSTR_(VC_VERSION_MINOR) "." VC_XSTR_(VC_VERSION_PATCH);
}

const char *vc_strerror(int status) {
    switch (status) {
#define VC_STATUS_TEXT_(name, code, text) \
    case code:                            \
        return text;
        VC_STATUS_MAP(VC_STATUS_TEXT_)
#undef VC_STATUS_TEXT_
    }
    return "unknown status";
}

const char *vc_status_name(int status) {
    switch (status) {
#define VC_STATUS_NAME_(name, code, text) \
    case code:                            \
        return #name;
        VC_STATUS_MAP(VC_STATUS_NAME_)
#undef VC_STATUS_NAME_
    }
    return "UNKNOWN";
}

static _Thread_local char tls_error[4096]; /* messages name layers and models (and files): room for long ones */
static _Thread_local char tls_backend_error[256];
_Thread_local int vc__tls_internal_thread;

const char *vc_last_error(void) { return tls_error; }

void vc_backend_set_error(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tls_backend_error, sizeof tls_backend_error, fmt, ap);
    va_end(ap);
}

static _Thread_local char tls_loader_error[256];

void vc_loader_set_error(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tls_loader_error, sizeof tls_loader_error, fmt, ap);
    va_end(ap);
}

void vc__clear_loader_error(void) { tls_loader_error[0] = '\0'; }

const char *vc__loader_error_suffix(void) {
    static _Thread_local char suffix[sizeof tls_loader_error + 2];
    if (!tls_loader_error[0]) return "";
    snprintf(suffix, sizeof suffix, ": %s", tls_loader_error);
    tls_loader_error[0] = '\0';
    return suffix;
}

const char *vc__take_backend_error(void) {
    static _Thread_local char taken[256];
    memcpy(taken, tls_backend_error, sizeof taken);
    tls_backend_error[0] = '\0';
    return taken;
}

#if defined(__GNUC__)
__attribute__((format(printf, 3, 0)))
#endif
static int vfail(vc_cache *c, int status, const char *fmt, va_list ap) {
    vsnprintf(tls_error, sizeof tls_error, fmt, ap);
    if (c && !vc__tls_internal_thread) {
        c->last_status = status;
        memcpy(c->last_error, tls_error, sizeof c->last_error);
        vc__log(c, VC_LOG_DEBUG, "error %s: %s", vc_status_name(status), tls_error);
    }
    return status;
}

int vc__fail(vc_cache *c, int status, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vfail(c, status, fmt, ap);
    va_end(ap);
    return status;
}

int vc__fail_unlocked(vc_cache *c, int status, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    if (c) pthread_mutex_lock(&c->lock);
    vfail(c, status, fmt, ap);
    if (c) pthread_mutex_unlock(&c->lock);
    va_end(ap);
    return status;
}

int vc_cache_last_error(vc_cache *c, char *buf, size_t size) {
    if (!c) {
        if (buf && size) buf[0] = '\0';
        return VC_ERR_INVALID_ARG;
    }
    pthread_mutex_lock(&c->lock);
    int st = c->last_status;
    if (buf && size) snprintf(buf, size, "%s", c->last_error);
    pthread_mutex_unlock(&c->lock);
    return st;
}

const char *vc_evict_reason_name(int reason) {
    static const char *const names[VC_EVICT_REASON_COUNT] = {
        "for_load", "for_reservation", "budget_shrank", "fragmentation", "manual",
        "ram_budget", "for_prefetch", "sequential", "model_swap", "plan"};
    return reason >= 0 && reason < VC_EVICT_REASON_COUNT ? names[reason] : "unknown";
}

const char *vc__fmt_bytes(size_t bytes, char *buf, size_t size) {
    if (bytes >= VC_GB)
        snprintf(buf, size, "%.2f GB", (double)bytes / (double)VC_GB);
    else if (bytes >= VC_MB)
        snprintf(buf, size, "%.2f MB", (double)bytes / (double)VC_MB);
    else
        snprintf(buf, size, "%zu B", bytes);
    return buf;
}
