/* The JSON reader of the safetensors module (json_reader.h). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cache_internal.h"
#include "json_reader.h"
#include "json_string.h"

enum {
    MAX_NESTING = 64, /* how deep an unknown value may nest before we stop reading it */
    MAX_ARRAY = 4096  /* entries in an array of integers: no tensor has this many dimensions */
};

int vc__json_fail(vc_json_reader *p, const char *fmt, ...) {
    if (p->failed) return VC_ERR_FORMAT; /* keep the first message */
    p->failed = 1;
    char what[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    return vc__fail(NULL, VC_ERR_FORMAT, "%s: %s: %s %zu: %s", p->fn, p->path, p->unit, p->pos, what);
}

void vc__json_skip_ws(vc_json_reader *p) {
    while (p->pos < p->n && (p->s[p->pos] == ' ' || p->s[p->pos] == '\t' || p->s[p->pos] == '\n' || p->s[p->pos] == '\r'))
        p->pos++;
}

int vc__json_expect(vc_json_reader *p, char ch, const char *what) {
    vc__json_skip_ws(p);
    if (p->pos >= p->n || p->s[p->pos] != ch) return vc__json_fail(p, "expected %s", what);
    p->pos++;
    return VC_OK;
}

static int json_hex4(vc_json_reader *p, unsigned *out) {
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        if (p->pos >= p->n) return vc__json_fail(p, "\\u escape cut short");
        char c = p->s[p->pos++];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
        else return vc__json_fail(p, "\\u escape with a non-hex digit");
    }
    *out = v;
    return VC_OK;
}

static size_t json_put_utf8(char *d, unsigned cp) {
    if (cp < 0x80) {
        d[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        d[0] = (char)(0xc0 | (cp >> 6));
        d[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        d[0] = (char)(0xe0 | (cp >> 12));
        d[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        d[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    d[0] = (char)(0xf0 | (cp >> 18));
    d[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    d[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
    d[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

/* A JSON string, escapes decoded, into a malloc'ed NUL-terminated *out (NULL: read and dropped).
 * A string holding U+0000 is refused: names and values are C strings here. */
int vc__json_string(vc_json_reader *p, char **out) {
    if (out) *out = NULL;
    int st = vc__json_expect(p, '"', "a string");
    if (st) return st;
    size_t start = p->pos;
    /* decoded text is never longer than the text it comes from */
    size_t end = start;
    while (end < p->n && p->s[end] != '"') end += p->s[end] == '\\' ? 2 : 1;
    char *d = out ? malloc(end - start + 1) : NULL;
    if (out && !d) return vc__fail(NULL, VC_ERR_NO_MEMORY, "%s: out of host memory", p->fn);
    size_t len = 0;
    for (;;) {
        if (p->pos >= p->n) {
            free(d);
            return vc__json_fail(p, "string not closed");
        }
        unsigned char ch = (unsigned char)p->s[p->pos];
        if (ch == '"') {
            p->pos++;
            break;
        }
        if (ch < 0x20) {
            free(d);
            return vc__json_fail(p, "control character 0x%02x in a string", ch);
        }
        if (ch != '\\') {
            size_t k = (size_t)json_utf8_len((const unsigned char *)p->s + p->pos); /* the text ends with a NUL */
            if (!k) {
                free(d);
                return vc__json_fail(p, "byte 0x%02x is not UTF-8 text", ch);
            }
            if (d) memcpy(d + len, p->s + p->pos, k);
            len += k;
            p->pos += k;
            continue;
        }
        p->pos++;
        if (p->pos >= p->n) {
            free(d);
            return vc__json_fail(p, "escape cut short");
        }
        char e = p->s[p->pos++];
        const char *simple = strchr("\"\\/bfnrt", e);
        if (simple && e) {
            static const char map[] = "\"\\/\b\f\n\r\t";
            if (d) d[len] = map[simple - "\"\\/bfnrt"];
            len++;
            continue;
        }
        if (e != 'u') {
            free(d);
            return vc__json_fail(p, "unknown escape '\\%c'", e);
        }
        unsigned cp = 0;
        if ((st = json_hex4(p, &cp))) {
            free(d);
            return st;
        }
        if (cp >= 0xd800 && cp <= 0xdbff) { /* a surrogate pair: the low half must follow */
            unsigned lo;
            if (p->pos + 2 > p->n || p->s[p->pos] != '\\' || p->s[p->pos + 1] != 'u') {
                free(d);
                return vc__json_fail(p, "lone surrogate \\u%04x", cp);
            }
            p->pos += 2;
            if ((st = json_hex4(p, &lo))) {
                free(d);
                return st;
            }
            if (lo < 0xdc00 || lo > 0xdfff) {
                free(d);
                return vc__json_fail(p, "surrogate \\u%04x not followed by a low surrogate", cp);
            }
            cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
        } else if (cp >= 0xdc00 && cp <= 0xdfff) {
            free(d);
            return vc__json_fail(p, "lone surrogate \\u%04x", cp);
        } else if (cp == 0) {
            free(d);
            return vc__json_fail(p, "\\u0000 in a string");
        }
        char buf[4];
        size_t k = json_put_utf8(buf, cp); /* a \uXXXX escape (6 bytes, 12 for a pair) decodes to at most 4 */
        if (d) memcpy(d + len, buf, k);
        len += k;
    }
    if (d) {
        d[len] = '\0';
        *out = d;
    }
    return VC_OK;
}

/* A non-negative integer that fits 64 bits (sizes and offsets), as JSON writes it. */
int vc__json_u64(vc_json_reader *p, uint64_t *out, const char *what) {
    vc__json_skip_ws(p);
    size_t start = p->pos;
    uint64_t v = 0;
    while (p->pos < p->n && p->s[p->pos] >= '0' && p->s[p->pos] <= '9') {
        unsigned dgt = (unsigned)(p->s[p->pos] - '0');
        if (v > (UINT64_MAX - dgt) / 10) return vc__json_fail(p, "%s does not fit 64 bits", what);
        v = v * 10 + dgt;
        p->pos++;
    }
    if (p->pos == start) return vc__json_fail(p, "expected %s (a non-negative integer)", what);
    if (p->s[start] == '0' && p->pos - start > 1) return vc__json_fail(p, "%s with a leading zero", what);
    if (p->pos < p->n && (p->s[p->pos] == '.' || p->s[p->pos] == 'e' || p->s[p->pos] == 'E'))
        return vc__json_fail(p, "%s must be an integer", what);
    *out = v;
    return VC_OK;
}

/* Any JSON value, read and dropped (fields the format may grow). */
int vc__json_skip_value(vc_json_reader *p, int depth) {
    if (depth > MAX_NESTING) return vc__json_fail(p, "values nested more than %d deep", MAX_NESTING);
    vc__json_skip_ws(p);
    if (p->pos >= p->n) return vc__json_fail(p, "expected a value");
    char c = p->s[p->pos];
    int st;
    if (c == '"') return vc__json_string(p, NULL);
    if (c == '{' || c == '[') {
        char close = c == '{' ? '}' : ']';
        p->pos++;
        vc__json_skip_ws(p);
        if (p->pos < p->n && p->s[p->pos] == close) {
            p->pos++;
            return VC_OK;
        }
        for (;;) {
            if (c == '{') {
                if ((st = vc__json_string(p, NULL)) || (st = vc__json_expect(p, ':', "':'"))) return st;
            }
            if ((st = vc__json_skip_value(p, depth + 1))) return st;
            vc__json_skip_ws(p);
            if (p->pos < p->n && p->s[p->pos] == ',') {
                p->pos++;
                continue;
            }
            return vc__json_expect(p, close, c == '{' ? "',' or '}'" : "',' or ']'");
        }
    }
    static const char *const words[] = {"true", "false", "null"};
    for (int i = 0; i < 3; i++) {
        size_t k = strlen(words[i]);
        if (p->n - p->pos >= k && !memcmp(p->s + p->pos, words[i], k)) {
            p->pos += k;
            return VC_OK;
        }
    }
    /* a number: -?digits(.digits)?([eE][+-]?digits)? */
    size_t start = p->pos;
    if (p->s[p->pos] == '-') p->pos++;
    size_t digits = p->pos;
    while (p->pos < p->n && p->s[p->pos] >= '0' && p->s[p->pos] <= '9') p->pos++;
    if (p->pos == digits) {
        p->pos = start;
        return vc__json_fail(p, "expected a value");
    }
    if (p->pos < p->n && p->s[p->pos] == '.') {
        p->pos++;
        size_t f = p->pos;
        while (p->pos < p->n && p->s[p->pos] >= '0' && p->s[p->pos] <= '9') p->pos++;
        if (p->pos == f) return vc__json_fail(p, "a number with no digits after '.'");
    }
    if (p->pos < p->n && (p->s[p->pos] == 'e' || p->s[p->pos] == 'E')) {
        p->pos++;
        if (p->pos < p->n && (p->s[p->pos] == '+' || p->s[p->pos] == '-')) p->pos++;
        size_t f = p->pos;
        while (p->pos < p->n && p->s[p->pos] >= '0' && p->s[p->pos] <= '9') p->pos++;
        if (p->pos == f) return vc__json_fail(p, "a number with no digits in its exponent");
    }
    return VC_OK;
}

/* Calls each(p, key, user) for every member of an object; the callback reads the value. */


int vc__json_object(vc_json_reader *p, vc_json_member_fn each, void *user) {
    int st = vc__json_expect(p, '{', "'{'");
    if (st) return st;
    vc__json_skip_ws(p);
    if (p->pos < p->n && p->s[p->pos] == '}') {
        p->pos++;
        return VC_OK;
    }
    for (;;) {
        char *key;
        if ((st = vc__json_string(p, &key))) return st;
        if ((st = vc__json_expect(p, ':', "':'"))) {
            free(key);
            return st;
        }
        if ((st = each(p, key, user))) return st; /* each() owns key */
        vc__json_skip_ws(p);
        if (p->pos < p->n && p->s[p->pos] == ',') {
            p->pos++;
            continue;
        }
        return vc__json_expect(p, '}', "',' or '}'");
    }
}

int vc__json_u64_array(vc_json_reader *p, uint64_t **out, unsigned *count, const char *what) {
    int st = vc__json_expect(p, '[', "'['");
    if (st) return st;
    size_t n = 0, cap = 0;
    uint64_t *v = NULL;
    vc__json_skip_ws(p);
    if (p->pos < p->n && p->s[p->pos] == ']') {
        p->pos++;
    } else {
        for (;;) {
            if (n == MAX_ARRAY) { /* before growing: a 100 MB header could otherwise cost 400 MB */
                free(v);
                return vc__json_fail(p, "%s has more than %d entries", what, MAX_ARRAY);
            }
            if (n == cap) {
                cap = cap ? cap * 2 : 4;
                uint64_t *g = realloc(v, cap * sizeof *v);
                if (!g) {
                    free(v);
                    return vc__fail(NULL, VC_ERR_NO_MEMORY, "%s: out of host memory", p->fn);
                }
                v = g;
            }
            if ((st = vc__json_u64(p, &v[n], what))) {
                free(v);
                return st;
            }
            n++;
            vc__json_skip_ws(p);
            if (p->pos < p->n && p->s[p->pos] == ',') {
                p->pos++;
                continue;
            }
            if ((st = vc__json_expect(p, ']', "',' or ']'"))) {
                free(v);
                return st;
            }
            break;
        }
    }
    *out = v;
    *count = (unsigned)n;
    return VC_OK;
}
