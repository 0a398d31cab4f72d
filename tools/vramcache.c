/*
 * vramcache — the command-line companion of libvramcache.
 *
 *   vramcache config check FILE     exit 0 without errors (warnings allowed), 1 with errors;
 *                                   diagnostics on stderr as FILE:LINE:COL: error|warning: ...
 *   vramcache config show [FILE]    effective settings as YAML with where each value came from
 *   vramcache version
 */
#include <stdio.h>
#include <string.h>

#include "vramcache.h"
#include "vramcache_config.h"

static void to_stderr(void *user, const char *text) {
    (void)user;
    fputs(text, stderr);
}

static int usage(FILE *f) {
    fprintf(f, "usage: vramcache config check FILE\n"
               "       vramcache config show [FILE]\n"
               "       vramcache version\n");
    return f == stderr ? 2 : 0;
}

static int config_check(const char *path) {
    vc_config *cfg;
    if (vc_config_create(&cfg) != VC_OK) return 1;
    vc_diagnostics *d = NULL;
    int st = vc_config_load_file(cfg, path, VC_CONFIG_NO_ENV, &d);
    vc_diagnostics_print(d, to_stderr, NULL);
    size_t errors = vc_diagnostics_errors(d), total = vc_diagnostics_count(d);
    if (st == VC_OK)
        fprintf(stderr, "%s: OK (%zu warning%s)\n", path, total - errors, total - errors == 1 ? "" : "s");
    else
        fprintf(stderr, "%s: %zu error%s, %zu warning%s\n", path, errors, errors == 1 ? "" : "s", total - errors,
                total - errors == 1 ? "" : "s");
    vc_diagnostics_destroy(d);
    vc_config_destroy(cfg);
    return st == VC_OK ? 0 : 1;
}

static int config_show(const char *path) {
    vc_config *cfg;
    if (vc_config_create(&cfg) != VC_OK) return 1;
    vc_diagnostics *d = NULL;
    int st;
    if (path)
        st = vc_config_load_file(cfg, path, 0, &d);
    else
        st = vc_config_load_string(cfg, "", 0, "<defaults>", 0, &d); /* defaults and the environment */
    vc_diagnostics_print(d, to_stderr, NULL);
    vc_diagnostics_destroy(d);
    if (st == VC_OK) vc_config_show(cfg, NULL, NULL);
    vc_config_destroy(cfg);
    return st == VC_OK ? 0 : 1;
}

int main(int argc, char **argv) {
    if (argc >= 2 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "help")))
        return usage(stdout);
    if (argc == 2 && (!strcmp(argv[1], "version") || !strcmp(argv[1], "--version"))) {
        printf("vramcache %s\n", vc_version_string());
        return 0;
    }
    if (argc >= 3 && !strcmp(argv[1], "config")) {
        if (!strcmp(argv[2], "check") && argc == 4) return config_check(argv[3]);
        if (!strcmp(argv[2], "show") && argc <= 4) return config_show(argc == 4 ? argv[3] : NULL);
    }
    return usage(stderr);
}
