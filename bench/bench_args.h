/*
 * Command-line numbers for the benchmark programs, read strictly: "abc", "3x", "" or a value out of
 * range is refused with a message, where atoi/atof would read 0 (or the leading digits) and run
 * something other than what was asked, printing figures that look valid.
 */
#ifndef VC_BENCH_ARGS_H
#define VC_BENCH_ARGS_H

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vramcache.h"

/* The whole of s as a whole number in [lo, hi]: 1 and *out set, or 0 after a message on stderr. */
static inline int bench_arg_long(const char *opt, const char *s, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (end == s || *end || errno || v < lo || v > hi) {
        fprintf(stderr, "%s: expected a whole number from %ld to %ld, got '%s'\n", opt, lo, hi, s);
        return 0;
    }
    *out = v;
    return 1;
}

/* The whole of s as a finite number in [lo, hi]. */
static inline int bench_arg_double(const char *opt, const char *s, double lo, double hi, double *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || *end || errno || !isfinite(v) || v < lo || v > hi) {
        fprintf(stderr, "%s: expected a number from %g to %g, got '%s'\n", opt, lo, hi, s);
        return 0;
    }
    *out = v;
    return 1;
}

/* --stream-slots: "tune" (VC_STREAM_SLOTS_TUNE) or a whole number of slots from 0 to 8. */
static inline int bench_arg_stream_slots(const char *s, unsigned *out) {
    long v;
    if (!strcmp(s, "tune")) {
        *out = VC_STREAM_SLOTS_TUNE;
        return 1;
    }
    if (!bench_arg_long("--stream-slots (or 'tune')", s, 0, 8, &v)) return 0;
    *out = (unsigned)v;
    return 1;
}

#endif
