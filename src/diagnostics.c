/* A growable list of configuration diagnostics with owned strings. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config_internal.h"

typedef struct diag_entry {
    vc_diagnostic pub;
    char *strings; /* file, key and message, NUL-separated, one allocation */
} diag_entry;

struct vc_diagnostics {
    diag_entry *items;
    size_t count, cap, errors;
    int oom; /* an entry could not be stored: reported as an extra error by print */
};

vc_diagnostics *vc__diag_new(void) { return calloc(1, sizeof(vc_diagnostics)); }

void vc__diag_add(vc_diagnostics *d, vc_diag_severity sev, const char *file, unsigned line,
                  unsigned col, const char *key, const char *fmt, ...) {
    if (!d) return;
    if (sev == VC_DIAG_ERROR) d->errors++; /* counted even if it cannot be stored */
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (!file) file = "";
    if (!key) key = "";
    if (d->count == d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 8;
        diag_entry *n = realloc(d->items, cap * sizeof(*n));
        if (!n) {
            d->oom = 1;
            return;
        }
        d->items = n;
        d->cap = cap;
    }
    size_t lf = strlen(file) + 1, lk = strlen(key) + 1, lm = strlen(msg) + 1;
    char *s = malloc(lf + lk + lm);
    if (!s) {
        d->oom = 1;
        return;
    }
    memcpy(s, file, lf);
    memcpy(s + lf, key, lk);
    memcpy(s + lf + lk, msg, lm);
    diag_entry *e = &d->items[d->count++];
    e->strings = s;
    e->pub = (vc_diagnostic){sev, s, line, col, s + lf, s + lf + lk};
}

size_t vc_diagnostics_count(const vc_diagnostics *d) { return d ? d->count : 0; }
size_t vc_diagnostics_errors(const vc_diagnostics *d) { return d ? d->errors : 0; }

const vc_diagnostic *vc_diagnostics_get(const vc_diagnostics *d, size_t i) {
    return d && i < d->count ? &d->items[i].pub : NULL;
}

static void print_stdout(void *user, const char *text) {
    (void)user;
    fputs(text, stdout);
}

int vc_diagnostics_print(const vc_diagnostics *d, vc_print_fn print, void *user) {
    if (!d) return VC_ERR_INVALID_ARG;
    if (!print) print = print_stdout;
    char line[1024];
    for (size_t i = 0; i < d->count; i++) {
        const vc_diagnostic *g = &d->items[i].pub;
        const char *sev = g->severity == VC_DIAG_ERROR ? "error" : "warning";
        if (g->line)
            snprintf(line, sizeof line, "%s:%u:%u: %s: %s\n", g->file, g->line, g->column ? g->column : 1,
                     sev, g->message);
        else
            snprintf(line, sizeof line, "%s: %s: %s\n", g->file, sev, g->message);
        print(user, line);
    }
    if (d->oom) print(user, "vramcache: error: out of memory while recording diagnostics\n");
    return VC_OK;
}

void vc_diagnostics_destroy(vc_diagnostics *d) {
    if (!d) return;
    for (size_t i = 0; i < d->count; i++) free(d->items[i].strings);
    free(d->items);
    free(d);
}
