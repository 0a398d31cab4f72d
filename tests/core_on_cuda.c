/*
 * The core's test suite on a CUDA device (issue 5, point 10). CTest runs this with the core test
 * executables as arguments: when device cuda:0 can be had it runs each of them with
 * VC_TEST_BACKEND=cuda (test_util.h then gives every test a real CUDA device capped to the test's
 * size) and fails if any fails; without a device it prints why and exits 77, which CTest reports as
 * skipped.
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include "vramcache.h"
#include "vramcache_config.h"

#define SKIP 77

static int cuda_available(char *why, size_t why_size) {
    vc_config *cfg;
    if (vc_config_create(&cfg) != VC_OK) return 0;
    vc_backend *b = NULL;
    int ok = vc_config_set(cfg, VC_CFG_DEVICE, "cuda:0") == VC_OK &&
             vc_config_create_backend(cfg, &b, why, why_size) == VC_OK;
    if (b) vc_backend_destroy(b);
    vc_config_destroy(cfg);
    return ok;
}

int main(int argc, char **argv) {
    char why[512] = "";
    if (!cuda_available(why, sizeof why)) {
        printf("SKIPPED: the core suite on CUDA needs a CUDA device: %s\n", why);
        return SKIP;
    }
    printf("core suite on %s\n", why);
    fflush(stdout);
    if (setenv("VC_TEST_BACKEND", "cuda", 1) != 0) return 1;
    int failed = 0;
    for (int i = 1; i < argc; i++) {
        pid_t pid = fork();
        if (pid < 0) return 1;
        if (pid == 0) {
            execv(argv[i], (char *[]){argv[i], NULL});
            perror(argv[i]);
            _exit(127);
        }
        int status = 0;
        waitpid(pid, &status, 0);
        int ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
        printf("%s %s\n", ok ? "passed:" : "FAILED:", argv[i]);
        failed += !ok;
    }
    printf("%d of %d core test programs failed on CUDA\n", failed, argc - 1);
    return failed ? 1 : 0;
}
