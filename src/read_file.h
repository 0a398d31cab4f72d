/* Reading a whole text file (a configuration or a workload) into memory. */
#ifndef VC_READ_FILE_H
#define VC_READ_FILE_H

#include <stddef.h>

/* Reads `path` whole, in chunks, so pipes work too (`<(...)`, /dev/stdin), into a malloc'ed,
 * NUL-terminated *buf of *len bytes (the caller frees it). Returns VC_OK, or with *buf NULL and
 * `why` saying what went wrong in a few words: VC_ERR_IO (the system's reason, "No such file or
 * directory", or "is a directory"), VC_ERR_TOO_LARGE ("larger than MAX MB", max_bytes) or
 * VC_ERR_NO_MEMORY ("out of host memory"). */
int vc__read_file(const char *path, size_t max_bytes, char **buf, size_t *len, char *why, size_t why_size);

#endif
