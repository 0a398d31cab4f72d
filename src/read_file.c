/* Reading a whole text file: see read_file.h. */
#include "read_file.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "vramcache.h"

int vc__read_file(const char *path, size_t max_bytes, char **buf, size_t *len, char *why, size_t why_size) {
    *buf = NULL;
    *len = 0;
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(why, why_size, "%s", strerror(errno));
        return VC_ERR_IO;
    }
    /* A directory opens on Linux and then fails to read: say what it is. */
    struct stat sb;
    if (fstat(fileno(f), &sb) == 0 && S_ISDIR(sb.st_mode)) {
        fclose(f);
        snprintf(why, why_size, "is a directory");
        return VC_ERR_IO;
    }
    char *data = NULL;
    size_t n = 0, cap = 0, got;
    char chunk[65536];
    int failed = VC_OK;
    while (!failed && (got = fread(chunk, 1, sizeof chunk, f)) > 0) {
        if (got > max_bytes - n) {
            snprintf(why, why_size, "larger than %zu MB", max_bytes >> 20);
            failed = VC_ERR_TOO_LARGE;
        } else if (n + got + 1 > cap) {
            size_t want = (n + got + 1) * 2;
            char *grown = realloc(data, want);
            if (!grown) {
                snprintf(why, why_size, "out of host memory");
                failed = VC_ERR_NO_MEMORY;
            } else {
                data = grown, cap = want;
            }
        }
        if (!failed) {
            memcpy(data + n, chunk, got);
            n += got;
        }
    }
    if (!failed && ferror(f)) {
        snprintf(why, why_size, "%s", errno ? strerror(errno) : "read failed");
        failed = VC_ERR_IO;
    }
    fclose(f);
    if (!failed && !data && !(data = malloc(1))) {
        snprintf(why, why_size, "out of host memory");
        failed = VC_ERR_NO_MEMORY;
    }
    if (failed) {
        free(data);
        return failed;
    }
    data[n] = '\0';
    *buf = data;
    *len = n;
    return VC_OK;
}
