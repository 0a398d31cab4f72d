/* Reading the few parts of JSON that a safetensors header and a sharded checkpoint's index use:
 * objects read member by member through a callback, strings (escapes decoded to UTF-8), unsigned
 * 64-bit integers, arrays of them, and any other value skipped (a format's future fields). Every
 * failure is VC_ERR_FORMAT with a message that names the file and the byte. Only for the library's
 * own readers (the configuration and workloads are YAML, read by libyaml). */
#ifndef VC_JSON_READER_H
#define VC_JSON_READER_H

#include <stddef.h>
#include <stdint.h>

typedef struct vc_json_reader {
    const char *s;    /* the text, NUL-terminated at s[n] */
    size_t n, pos;
    const char *fn;   /* for messages: "vc_safetensors_open: FILE: header byte 12: ..." */
    const char *path;
    const char *unit; /* "header byte", "byte" */
    int failed;       /* the first failure's message is kept */
} vc_json_reader;

/* Reads a member's value (it owns `key`, a malloc'ed string); returns VC_OK or a failure. */
typedef int (*vc_json_member_fn)(vc_json_reader *p, char *key, void *user);

/* Sets vc_last_error to "FN: PATH: UNIT POS: what" (only the first time) and returns VC_ERR_FORMAT. */
int vc__json_fail(vc_json_reader *p, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
void vc__json_skip_ws(vc_json_reader *p);
/* The next non-space character must be ch (`what` names it for the message). */
int vc__json_expect(vc_json_reader *p, char ch, const char *what);
/* A string, decoded into a malloc'ed *out (NULL: read and dropped). U+0000 is refused. */
int vc__json_string(vc_json_reader *p, char **out);
/* A non-negative integer that fits 64 bits, written as JSON writes integers. */
int vc__json_u64(vc_json_reader *p, uint64_t *out, const char *what);
/* An array of such integers, into a malloc'ed *out of *count (at most 4096) entries. */
int vc__json_u64_array(vc_json_reader *p, uint64_t **out, unsigned *count, const char *what);
/* Any value, read and dropped; nesting deeper than 64 fails. */
int vc__json_skip_value(vc_json_reader *p, int depth);
/* An object: each(p, key, user) for every member, in order. */
int vc__json_object(vc_json_reader *p, vc_json_member_fn each, void *user);

#endif
