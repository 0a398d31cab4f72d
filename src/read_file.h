/* Reading a whole text file (a configuration or a workload) into memory. */
#ifndef VC_READ_FILE_H
#define VC_READ_FILE_H

#include <stddef.h>

/* Reads `path` whole, in chunks, so pipes work too (`<(...)`, /dev/stdin), into a malloc'ed,
 * NUL-terminated *buf of *len bytes (the caller frees it). Returns 0, or -1 with `why` saying what
 * went wrong in a few words: the system's reason ("No such file or directory"), "is a directory",
 * "larger than MAX MB" (max_bytes), or "out of host memory"; *buf is then NULL. */
int vc__read_file(const char *path, size_t max_bytes, char **buf, size_t *len, char *why, size_t why_size);

#endif
