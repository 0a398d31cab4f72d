/* Writing JSON strings (traces, and the --json output of the tools and benchmarks): names come
 * from users' files (a workload called `my "fast" model`) and reasons from drivers, so every
 * string is escaped. Header-only, so the tools outside the library share it. */
#ifndef VC_JSON_STRING_H
#define VC_JSON_STRING_H

#include <stdio.h>

/* Writes s as a JSON string, quotes included: '"' and '\\' escaped, control characters as \\u00XX.
 * A NULL s is written as null. */
static inline void json_put_string(FILE *f, const char *s) {
    if (!s) {
        fputs("null", f);
        return;
    }
    fputc('"', f);
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\')
            fprintf(f, "\\%c", ch);
        else if (ch < 0x20)
            fprintf(f, "\\u%04x", ch);
        else
            fputc(ch, f);
    }
    fputc('"', f);
}

#endif
