/* Writing JSON strings (traces, and the --json output of the tools and benchmarks): names come
 * from users' files (a workload called `my "fast" model`) and reasons from drivers, so every
 * string is escaped. Header-only, so the tools outside the library share it. */
#ifndef VC_JSON_STRING_H
#define VC_JSON_STRING_H

#include <stdio.h>

/* Length of the well-formed UTF-8 sequence at s (1 to 4 bytes), or 0 where the bytes are not one:
 * a stray continuation byte, a sequence cut short, an overlong form, a surrogate or a code point
 * past U+10FFFF. JSON text must be UTF-8, and names reach us from engines (Latin-1 file names, a
 * name cut mid-character to fit a buffer). */
static inline int json_utf8_len(const unsigned char *s) {
    unsigned c = s[0], n, min;
    if (c < 0x80) return 1;
    if (c >= 0xc2 && c <= 0xdf)
        n = 2, min = 0x80;
    else if (c >= 0xe0 && c <= 0xef)
        n = 3, min = 0x800;
    else if (c >= 0xf0 && c <= 0xf4)
        n = 4, min = 0x10000;
    else
        return 0;
    unsigned cp = c & (0x3fu >> (n - 1));
    for (unsigned i = 1; i < n; i++) {
        if ((s[i] & 0xc0) != 0x80) return 0; /* the terminating NUL stops here too */
        cp = (cp << 6) | (s[i] & 0x3fu);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
    return (int)n;
}

/* Writes s as a JSON string, quotes included: '"' and '\\' escaped, control characters as \\u00XX,
 * and each byte that is not part of well-formed UTF-8 as \\ufffd (the replacement character), so
 * the output is valid JSON whatever the bytes. A NULL s is written as null. */
static inline void json_put_string(FILE *f, const char *s) {
    if (!s) {
        fputs("null", f);
        return;
    }
    fputc('"', f);
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        int n = ch < 0x80 ? 1 : json_utf8_len((const unsigned char *)s);
        if (ch == '"' || ch == '\\') {
            fprintf(f, "\\%c", ch);
        } else if (ch < 0x20) {
            fprintf(f, "\\u%04x", ch);
        } else if (n == 0) {
            fputs("\\ufffd", f);
        } else {
            fwrite(s, 1, (size_t)n, f);
            s += n - 1;
        }
    }
    fputc('"', f);
}

#endif
