/* invokeai.yaml loading: every key, every kind of bad file (written as files in tests/config/),
 * the environment, precedence, and the bridge to caches. */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "test_util.h"
#include "vramcache_config.h"
#include "vramcache_sim.h"

#ifndef VC_TEST_DATA_DIR
#error "VC_TEST_DATA_DIR must point at tests/config"
#endif

static const char *path_of(const char *name) {
    static char buf[1024];
    snprintf(buf, sizeof buf, "%s/%s", VC_TEST_DATA_DIR, name);
    return buf;
}

static void clear_env(void) {
    for (int k = 0; k < VC_CFG_KEY_COUNT; k++) {
        char var[96] = "INVOKEAI_";
        const char *n = vc_config_key_name((vc_config_key)k);
        size_t i = strlen(var);
        for (; *n; n++) var[i++] = (char)(*n >= 'a' && *n <= 'z' ? *n - 32 : *n);
        var[i] = '\0';
        unsetenv(var);
    }
    unsetenv("INVOKEAI_RAM");
}

static int setup(void **state) {
    (void)state;
    clear_env();
    return 0;
}

/* Loads a test file (without the environment) into a fresh config. */
static int load(const char *name, vc_config **cfg, vc_diagnostics **d) {
    assert_int_equal(vc_config_create(cfg), VC_OK);
    return vc_config_load_file(*cfg, path_of(name), VC_CONFIG_NO_ENV, d);
}

static double num(vc_config *cfg, vc_config_key k) {
    double v = -1;
    assert_int_equal(vc_config_get_number(cfg, k, &v), VC_OK);
    return v;
}

static int boolean(vc_config *cfg, vc_config_key k) {
    int v = -1;
    assert_int_equal(vc_config_get_bool(cfg, k, &v), VC_OK);
    return v;
}

/* The first diagnostic whose message contains `needle`, or NULL. */
static const vc_diagnostic *find_diag(vc_diagnostics *d, const char *needle) {
    for (size_t i = 0; i < vc_diagnostics_count(d); i++)
        if (strstr(vc_diagnostics_get(d, i)->message, needle)) return vc_diagnostics_get(d, i);
    return NULL;
}

static void test_defaults(void **state) {
    (void)state;
    vc_config *cfg;
    assert_int_equal(vc_config_create(&cfg), VC_OK);
    assert_int_equal(boolean(cfg, VC_CFG_ENABLE_PARTIAL_LOADING), 1);
    assert_int_equal(boolean(cfg, VC_CFG_KEEP_RAM_COPY_OF_WEIGHTS), 1);
    assert_int_equal(boolean(cfg, VC_CFG_LOG_MEMORY_USAGE), 0);
    assert_true(num(cfg, VC_CFG_DEVICE_WORKING_MEM_GB) == 3.0);
    assert_true(num(cfg, VC_CFG_OFFLOAD_MAX_GPU_MEMORY) == 0.75);
    double v;
    assert_int_equal(vc_config_get_number(cfg, VC_CFG_MAX_CACHE_RAM_GB, &v), VC_ERR_NOT_FOUND);
    assert_int_equal(vc_config_get_number(cfg, VC_CFG_MAX_CACHE_VRAM_GB, &v), VC_ERR_NOT_FOUND);
    assert_int_equal(vc_config_get_source(cfg, VC_CFG_MAX_CACHE_RAM_GB), VC_CFG_SOURCE_COMPUTED);
    assert_int_equal(vc_config_get_source(cfg, VC_CFG_DEVICE), VC_CFG_SOURCE_DEFAULT);
    assert_string_equal(vc_config_get_text(cfg, VC_CFG_DEVICE), "auto");
    assert_string_equal(vc_config_get_text(cfg, VC_CFG_PRECISION), "auto");
    assert_int_equal(vc_config_get_offload_mode(cfg), VC_OFFLOAD_MODE_BALANCED);
    assert_int_equal(vc_config_cuda_malloc_async(cfg), 0);
    /* partial loading off: model mode */
    assert_int_equal(vc_config_set(cfg, VC_CFG_ENABLE_PARTIAL_LOADING, "false"), VC_OK);
    assert_int_equal(vc_config_get_offload_mode(cfg), VC_OFFLOAD_MODE_MODEL);
    vc_config_destroy(cfg);
}

static void test_valid_v4_every_key(void **state) {
    (void)state;
    vc_config *cfg;
    vc_diagnostics *d;
    assert_int_equal(load("valid_v4.yaml", &cfg, &d), VC_OK);
    assert_int_equal(vc_diagnostics_count(d), 0); /* InvokeAI's keys raise nothing */
    assert_int_equal(boolean(cfg, VC_CFG_ENABLE_PARTIAL_LOADING), 1);
    assert_true(num(cfg, VC_CFG_MAX_CACHE_RAM_GB) == 28.0);
    assert_true(num(cfg, VC_CFG_MAX_CACHE_VRAM_GB) == 18.0);
    assert_true(num(cfg, VC_CFG_DEVICE_WORKING_MEM_GB) == 4.0);
    assert_int_equal(boolean(cfg, VC_CFG_KEEP_RAM_COPY_OF_WEIGHTS), 0);
    assert_int_equal(boolean(cfg, VC_CFG_LOG_MEMORY_USAGE), 1);
    vc_device_kind kind;
    int index;
    vc_config_get_device(cfg, &kind, &index);
    assert_int_equal(kind, VC_DEVICE_CUDA);
    assert_int_equal(index, 1);
    assert_int_equal(vc_config_cuda_malloc_async(cfg), 1);
    assert_string_equal(vc_config_get_text(cfg, VC_CFG_PRECISION), "bfloat16");
    assert_int_equal(vc_config_get_offload_mode(cfg), VC_OFFLOAD_MODE_SEQUENTIAL);
    assert_true(num(cfg, VC_CFG_OFFLOAD_MAX_GPU_MEMORY) == 10.5);
    assert_int_equal(vc_config_get_source(cfg, VC_CFG_MAX_CACHE_VRAM_GB), VC_CFG_SOURCE_FILE);
    vc_cache_options o;
    vc_cache_options_init(&o);
    assert_int_equal(vc_config_apply(cfg, &o), VC_OK);
    assert_int_equal(o.ram_budget, 28 * GB);
    assert_int_equal(o.vram_budget, 18 * GB);
    assert_int_equal(o.working_mem, 4 * GB);
    assert_int_equal(o.keep_ram_copy, 0);
    assert_int_equal(o.log_memory_usage, 1);
    vc_diagnostics_destroy(d);
    vc_config_destroy(cfg);
}

static void test_v3_nested_migrated(void **state) {
    (void)state;
    vc_config *cfg;
    vc_diagnostics *d;
    assert_int_equal(load("v3_nested.yaml", &cfg, &d), VC_OK);
    assert_int_equal(vc_diagnostics_errors(d), 0);
    const vc_diagnostic *g = find_diag(d, "'max_cache_size'");
    assert_non_null(g);
    assert_int_equal(g->line, 12);
    assert_non_null(strstr(g->message, "max_cache_ram_gb"));
    g = find_diag(d, "'max_vram_cache_size'");
    assert_non_null(g);
    assert_non_null(strstr(g->message, "max_cache_vram_gb"));
    assert_non_null(find_diag(d, "'lazy_offload'"));
    g = find_diag(d, "autocast");
    assert_non_null(g);
    assert_int_equal(g->severity, VC_DIAG_WARNING);
    assert_string_equal(vc_config_get_text(cfg, VC_CFG_PRECISION), "auto");
    assert_int_equal(boolean(cfg, VC_CFG_LOG_MEMORY_USAGE), 1); /* read from 'Model Cache' */
    assert_null(find_diag(d, "unknown key"));                  /* 3.x keys are InvokeAI's */
    assert_int_equal(vc_diagnostics_count(d), 4);
    vc_diagnostics_destroy(d);
    vc_config_destroy(cfg);
}

static void test_bom_crlf_comments(void **state) {
    (void)state;
    vc_config *cfg;
    vc_diagnostics *d;
    assert_int_equal(load("bom_crlf.yaml", &cfg, &d), VC_OK);
    assert_int_equal(vc_diagnostics_count(d), 0);
    assert_true(num(cfg, VC_CFG_MAX_CACHE_VRAM_GB) == 6.0);
    assert_int_equal(boolean(cfg, VC_CFG_KEEP_RAM_COPY_OF_WEIGHTS), 0);
    vc_diagnostics_destroy(d);
    vc_config_destroy(cfg);
}

static void test_tabs_are_a_clear_error(void **state) {
    (void)state;
    vc_config *cfg;
    vc_diagnostics *d;
    assert_int_equal(load("tabs.yaml", &cfg, &d), VC_ERR_CONFIG);
    assert_int_equal(vc_diagnostics_errors(d), 1);
    const vc_diagnostic *g = vc_diagnostics_get(d, 0);
    assert_int_equal(g->severity, VC_DIAG_ERROR);
    assert_int_equal(g->line, 3);
    assert_true(g->column >= 1);
    assert_non_null(strstr(g->message, "tabs cannot indent YAML"));
    /* nothing applied, even the valid first line */
    double v;
    assert_int_equal(vc_config_get_number(cfg, VC_CFG_MAX_CACHE_RAM_GB, &v), VC_ERR_NOT_FOUND);
    vc_diagnostics_destroy(d);
    vc_config_destroy(cfg);
}

static void test_empty_files_warn_and_use_defaults(void **state) {
    (void)state;
    const char *files[] = {"empty.yaml", "comments_only.yaml"};
    for (int i = 0; i < 2; i++) {
        vc_config *cfg;
        vc_diagnostics *d;
        assert_int_equal(load(files[i], &cfg, &d), VC_OK);
        assert_int_equal(vc_diagnostics_count(d), 1);
        assert_int_equal(vc_diagnostics_get(d, 0)->severity, VC_DIAG_WARNING);
        assert_non_null(strstr(vc_diagnostics_get(d, 0)->message, "empty"));
        assert_true(num(cfg, VC_CFG_DEVICE_WORKING_MEM_GB) == 3.0);
        vc_diagnostics_destroy(d);
        vc_config_destroy(cfg);
    }
}

/* Files that are not regular: a pipe (`vramcache config check <(ssh host cat invokeai.yaml)`) is
 * read to its end; a directory is named as one (it read as "larger than 16 MB"). */
static void test_pipes_and_directories(void **state) {
    (void)state;
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    static const char text[] = "max_cache_ram_gb: 7\n";
    assert_int_equal(write(fds[1], text, sizeof text - 1), (ssize_t)(sizeof text - 1));
    close(fds[1]);
    char path[64];
    snprintf(path, sizeof path, "/dev/fd/%d", fds[0]);
    vc_config *cfg;
    assert_int_equal(vc_config_create(&cfg), VC_OK);
    vc_diagnostics *d = NULL;
    assert_int_equal(vc_config_load_file(cfg, path, VC_CONFIG_NO_ENV, &d), VC_OK);
    assert_true(num(cfg, VC_CFG_MAX_CACHE_RAM_GB) == 7.0);
    vc_diagnostics_destroy(d);
    close(fds[0]);
    assert_int_equal(vc_config_load_file(cfg, "/tmp", VC_CONFIG_NO_ENV, &d), VC_ERR_IO);
    assert_non_null(find_diag(d, "is a directory"));
    assert_non_null(strstr(vc_last_error(), "is a directory"));
    assert_true(num(cfg, VC_CFG_MAX_CACHE_RAM_GB) == 7.0); /* untouched */
    vc_diagnostics_destroy(d);
    vc_workload *wl = NULL;
    assert_int_equal(vc_workload_load("/tmp", &wl, NULL), VC_ERR_IO);
    assert_null(wl);
    assert_non_null(strstr(vc_last_error(), "is a directory"));
    vc_config_destroy(cfg);
}

static void test_not_a_mapping(void **state) {
    (void)state;
    vc_config *cfg;
    vc_diagnostics *d;
    assert_int_equal(load("not_mapping.yaml", &cfg, &d), VC_ERR_CONFIG);
    assert_non_null(find_diag(d, "must be a mapping"));
    assert_non_null(find_diag(d, "a list"));
    vc_diagnostics_destroy(d);
    vc_config_destroy(cfg);
}

/* Shapes a hand-edited file can take that are not settings: each named, the valid rest read. */
static void test_odd_yaml_shapes(void **state) {
    (void)state;
    const struct {
        const char *text, *needle;
        int status;
    } cases[] = {
        {"InvokeAI: 5\n", "must hold categories such as 'Model Cache:', got a scalar", VC_ERR_CONFIG},
        {"InvokeAI:\n  Model Cache: 5\n", "category 'Model Cache' is not a mapping of settings; ignored", VC_OK},
        {"? [a, b]\n: 1\n", "a key must be a plain name, got a list", VC_ERR_CONFIG},
        {"max_cache_ram_gb: 4\n---\nmax_cache_ram_gb: 8\n", "only the first YAML document is read", VC_OK},
        {"---\n", "the file is empty", VC_OK},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        vc_config *cfg;
        vc_diagnostics *d = NULL;
        assert_int_equal(vc_config_create(&cfg), VC_OK);
        int st = vc_config_load_string(cfg, cases[i].text, strlen(cases[i].text), "odd.yaml", 0, &d);
        if (st != cases[i].status || !find_diag(d, cases[i].needle))
            fail_msg("case %zu: status %d, no diagnostic containing \"%s\"", i, st, cases[i].needle);
        if (i == 3) assert_true(num(cfg, VC_CFG_MAX_CACHE_RAM_GB) == 4.0); /* the first document's */
        vc_diagnostics_destroy(d);
        vc_config_destroy(cfg);
    }
}

static void test_duplicates_warn_later_wins(void **state) {
    (void)state;
    vc_config *cfg;
    vc_diagnostics *d;
    assert_int_equal(load("duplicates.yaml", &cfg, &d), VC_OK);
    const vc_diagnostic *g = find_diag(d, "duplicate key 'max_cache_vram_gb'");
    assert_non_null(g);
    assert_int_equal(g->line, 3);
    assert_non_null(strstr(g->message, "line 1"));
    assert_true(num(cfg, VC_CFG_MAX_CACHE_VRAM_GB) == 10.0);
    vc_diagnostics_destroy(d);
    vc_config_destroy(cfg);
}

/* Merge keys (`<<: *anchor`) mean what they mean to PyYAML: own keys win, then earlier sources;
 * before, '<<' was an unknown key and the merged settings were lost. */
static void test_merge_keys(void **state) {
    (void)state;
    vc_config *cfg;
    vc_diagnostics *d;
    assert_int_equal(load("merge_keys.yaml", &cfg, &d), VC_OK);
    assert_int_equal(vc_diagnostics_errors(d), 0);
    assert_null(find_diag(d, "'<<'"));
    assert_true(num(cfg, VC_CFG_MAX_CACHE_VRAM_GB) == 4.0);
    assert_true(num(cfg, VC_CFG_DEVICE_WORKING_MEM_GB) == 1.5); /* the earlier source wins */
    assert_int_equal(boolean(cfg, VC_CFG_KEEP_RAM_COPY_OF_WEIGHTS), 1); /* the file's own key wins */
    assert_string_equal(vc_config_get_text(cfg, VC_CFG_OFFLOAD_MODE), "sequential");
    assert_null(find_diag(d, "duplicate key"));
    vc_diagnostics_destroy(d);
    vc_config_destroy(cfg);
    /* a merge of a scalar is an error, and the file changes nothing */
    assert_int_equal(load("merge_bad.yaml", &cfg, &d), VC_ERR_CONFIG);
    const vc_diagnostic *g = find_diag(d, "takes a mapping or a list of mappings");
    assert_non_null(g);
    assert_int_equal(g->line, 2);
    double v;
    assert_int_equal(vc_config_get_number(cfg, VC_CFG_MAX_CACHE_VRAM_GB, &v), VC_ERR_NOT_FOUND);
    vc_diagnostics_destroy(d);
    vc_config_destroy(cfg);
}

static void test_quoted_numbers_and_booleans(void **state) {
    (void)state;
    vc_config *cfg;
    vc_diagnostics *d;
    assert_int_equal(load("quoted_numbers.yaml", &cfg, &d), VC_OK);
    assert_int_equal(vc_diagnostics_count(d), 0);
    assert_true(num(cfg, VC_CFG_MAX_CACHE_RAM_GB) == 12.0);
    assert_true(num(cfg, VC_CFG_MAX_CACHE_VRAM_GB) == 7.5);
    assert_true(num(cfg, VC_CFG_DEVICE_WORKING_MEM_GB) == 0.0);
    vc_diagnostics_destroy(d);
    vc_config_destroy(cfg);
    assert_int_equal(load("booleans.yaml", &cfg, &d), VC_OK);
    assert_int_equal(boolean(cfg, VC_CFG_ENABLE_PARTIAL_LOADING), 1);
    assert_int_equal(boolean(cfg, VC_CFG_KEEP_RAM_COPY_OF_WEIGHTS), 0);
    assert_int_equal(boolean(cfg, VC_CFG_LOG_MEMORY_USAGE), 1);
    vc_diagnostics_destroy(d);
    vc_config_destroy(cfg);
}

/* max_cache_ram_gb as read from a one-line file, or -1 when the file is refused; *warned: a
 * warning came with it. */
static double ram_gb_from(const char *line, int *warned) {
    char text[128];
    int n = snprintf(text, sizeof text, "max_cache_ram_gb: %s\n", line);
    vc_config *cfg;
    vc_diagnostics *d = NULL;
    assert_int_equal(vc_config_create(&cfg), VC_OK);
    int st = vc_config_load_string(cfg, text, (size_t)n, "t.yaml", VC_CONFIG_NO_ENV, &d);
    double v = -1;
    if (st == VC_OK) v = num(cfg, VC_CFG_MAX_CACHE_RAM_GB);
    *warned = d && vc_diagnostics_count(d) > vc_diagnostics_errors(d);
    vc_diagnostics_destroy(d);
    vc_config_destroy(cfg);
    return v;
}

static void test_yaml11_numbers_as_invokeai_reads_them(void **state) {
    (void)state;
    /* InvokeAI loads invokeai.yaml with PyYAML (YAML 1.1): an unquoted 014 is octal 12, 0x10 is
     * 16, 1_000 is 1000, 1:30 is 90. The same file must mean the same to the cache; the readings a
     * user may not expect (octal, base 60) come with a warning. Quoted, they are strings, read as
     * decimals (or refused), with '_' between digits as InvokeAI's settings (pydantic, as Python's
     * float()) take it: '1_000' is 1000, '1__0' and '_1' are refused. */
    struct {
        const char *text;
        double want; /* -1: refused */
        int warns;
    } cases[] = {
        {"12", 12, 0},       {"014", 12, 1},       {"0_14", 12, 1},     {"0x10", 16, 0},    {"+0x1_0", 16, 0},
        {"0b1100", 12, 0},   {"1_000", 1000, 0},   {"1_0.5", 10.5, 0},  {"1:30", 90, 1},    {"1:30.5", 90.5, 1},
        {"1:3", 63, 1},      {"09", 9, 0},         {"012.5", 12.5, 0},  {"1e3", 1000, 0},   {"1.5e+1", 15, 0},
        {"0", -1, 0},        {"1:60", -1, 0},      {"1:030", -1, 0},    {"0x", -1, 0},      {"0b12", -1, 0},
        {"\"014\"", 14, 0},  {"\"0x10\"", -1, 0},  {"'1_000'", 1000, 0}, {".inf", -1, 0},    {"0:30", -1, 0},
        {"1__0", 10, 0},     {" 014 ", 12, 1},     {"'1_2.5'", 12.5, 0}, {"'1__0'", -1, 0},  {"'_1'", -1, 0},
        {"'1_'", -1, 0},     {"'1_.5'", -1, 0},    {"\"1_2e1\"", 120, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int warned = 0;
        double got = ram_gb_from(cases[i].text, &warned);
        if (got != cases[i].want || (got >= 0 && warned != cases[i].warns))
            fail_msg("max_cache_ram_gb: %s read as %g (warning: %d), expected %g (warning: %d)", cases[i].text, got,
                     warned, cases[i].want, cases[i].warns);
    }
    /* the environment and the API take strings, as InvokeAI's settings do from the environment */
    vc_config *cfg;
    assert_int_equal(vc_config_create(&cfg), VC_OK);
    assert_int_equal(vc_config_set(cfg, VC_CFG_MAX_CACHE_RAM_GB, "014"), VC_OK);
    assert_true(num(cfg, VC_CFG_MAX_CACHE_RAM_GB) == 14.0);
    assert_int_equal(vc_config_set(cfg, VC_CFG_MAX_CACHE_RAM_GB, "0x10"), VC_ERR_CONFIG);
    assert_int_equal(vc_config_set(cfg, VC_CFG_MAX_CACHE_RAM_GB, "2_4"), VC_OK);
    assert_true(num(cfg, VC_CFG_MAX_CACHE_RAM_GB) == 24.0);
    assert_int_equal(vc_config_set(cfg, VC_CFG_MAX_CACHE_RAM_GB, "2__4"), VC_ERR_CONFIG);
    vc_config_destroy(cfg);
}

static void test_bad_values_each_named(void **state) {
    (void)state;
    vc_config *cfg;
    vc_diagnostics *d;
    assert_int_equal(load("bad_values.yaml", &cfg, &d), VC_ERR_CONFIG);
    struct {
        const char *needle;
        unsigned line;
    } expect[] = {
        {"max_cache_vram_gb must be a number of GB >= 0 and <= 1048576, got 'lots'", 1},
        {"max_cache_ram_gb must be a number of GB > 0 and <= 1048576, got '-4'", 2},
        {"device_working_mem_gb must be a number of GB >= 0", 3},
        {"offload_max_gpu_memory must be a number > 0", 4},
        {"got '1e30'", 5},
        {"keep_ram_copy_of_weights must be true or false, got 'maybe'", 6},
        {"device must be auto, cpu, cuda, cuda:N, hip or hip:N", 7},
        {"precision must be one of auto, float16, bfloat16, float32; got 'float8'", 8},
        {"offload_mode must be one of none, model, sequential, balanced; got 'partial'", 9},
        {"schema_version must look like 4.0.2, got 'banana'", 10},
    };
    for (size_t i = 0; i < sizeof expect / sizeof expect[0]; i++) {
        const vc_diagnostic *g = find_diag(d, expect[i].needle);
        if (!g) fail_msg("no diagnostic containing \"%s\"", expect[i].needle);
        assert_int_equal(g->severity, VC_DIAG_ERROR);
        assert_int_equal(g->line, expect[i].line);
        assert_true(g->column > 1);
        assert_true(g->key[0] != '\0');
    }
    assert_int_equal(vc_diagnostics_errors(d), 10);
    assert_non_null(strstr(vc_last_error(), "10 error(s)"));
    vc_diagnostics_destroy(d);
    vc_config_destroy(cfg);
}

static void test_syntax_error_reports_position(void **state) {
    (void)state;
    vc_config *cfg;
    vc_diagnostics *d;
    assert_int_equal(load("syntax_error.yaml", &cfg, &d), VC_ERR_CONFIG);
    const vc_diagnostic *g = find_diag(d, "YAML syntax error");
    assert_non_null(g);
    assert_true(g->line >= 1);
    vc_diagnostics_destroy(d);
    vc_config_destroy(cfg);
}

static void test_schema_versions(void **state) {
    (void)state;
    vc_config *cfg;
    vc_diagnostics *d;
    assert_int_equal(load("unknown_major.yaml", &cfg, &d), VC_ERR_CONFIG);
    assert_non_null(find_diag(d, "schema_version 5.0.0 is not supported"));
    vc_diagnostics_destroy(d);
    vc_config_destroy(cfg);
    assert_int_equal(load("newer_minor.yaml", &cfg, &d), VC_OK);
    assert_non_null(find_diag(d, "newer than 4.0.x"));
    assert_true(num(cfg, VC_CFG_MAX_CACHE_VRAM_GB) == 8.0);
    vc_diagnostics_destroy(d);
    vc_config_destroy(cfg);
}

static void test_deprecated_keys(void **state) {
    (void)state;
    vc_config *cfg;
    vc_diagnostics *d;
    assert_int_equal(load("deprecated.yaml", &cfg, &d), VC_OK);
    assert_int_equal(vc_diagnostics_count(d), 3);
    assert_non_null(strstr(find_diag(d, "'ram'")->message, "replaced by max_cache_ram_gb"));
    assert_non_null(strstr(find_diag(d, "'vram'")->message, "replaced by max_cache_vram_gb"));
    assert_non_null(find_diag(d, "'lazy_offload'"));
    double v; /* and ignored */
    assert_int_equal(vc_config_get_number(cfg, VC_CFG_MAX_CACHE_RAM_GB, &v), VC_ERR_NOT_FOUND);
    vc_diagnostics_destroy(d);
    vc_config_destroy(cfg);
}

static void test_sdnext_aliases_and_alloc_conf(void **state) {
    (void)state;
    vc_config *cfg;
    vc_diagnostics *d;
    assert_int_equal(load("sdnext_aliases.yaml", &cfg, &d), VC_OK);
    assert_int_equal(vc_diagnostics_count(d), 0);
    assert_int_equal(vc_config_get_offload_mode(cfg), VC_OFFLOAD_MODE_SEQUENTIAL);
    assert_true(num(cfg, VC_CFG_OFFLOAD_MAX_GPU_MEMORY) == 0.5);
    int on = 0;
    assert_int_equal(vc_config_get_bool(cfg, VC_CFG_DIFFUSERS_MOVE_BASE, &on), VC_OK);
    assert_true(on);
    assert_int_equal(vc_config_get_bool(cfg, VC_CFG_DIFFUSERS_MOVE_UNET, &on), VC_OK);
    assert_false(on); /* default */
    assert_int_equal(vc_config_get_bool(cfg, VC_CFG_DIFFUSERS_MOVE_REFINER, &on), VC_OK);
    assert_true(on);
    vc_diagnostics_destroy(d);
    vc_config_destroy(cfg);
    assert_int_equal(load("alloc_conf_other.yaml", &cfg, &d), VC_OK);
    assert_non_null(find_diag(d, "does not apply"));
    assert_int_equal(vc_config_cuda_malloc_async(cfg), 0);
    assert_string_equal(vc_config_get_text(cfg, VC_CFG_PYTORCH_CUDA_ALLOC_CONF), "expandable_segments:True");
    vc_diagnostics_destroy(d);
    vc_config_destroy(cfg);
}

static void test_nested_value_typo_nulls_mps(void **state) {
    (void)state;
    vc_config *cfg;
    vc_diagnostics *d;
    assert_int_equal(load("nested_value.yaml", &cfg, &d), VC_ERR_CONFIG);
    assert_non_null(find_diag(d, "must be a single value"));
    vc_diagnostics_destroy(d);
    vc_config_destroy(cfg);

    assert_int_equal(load("typo.yaml", &cfg, &d), VC_OK);
    assert_non_null(find_diag(d, "did you mean 'max_cache_vram_gb'"));
    assert_non_null(find_diag(d, "did you mean 'device'"));
    assert_non_null(find_diag(d, "'completely_unrelated_setting' is ignored: neither"));
    vc_diagnostics_destroy(d);
    vc_config_destroy(cfg);

    assert_int_equal(load("null_optional.yaml", &cfg, &d), VC_OK);
    assert_int_equal(vc_diagnostics_count(d), 0);
    assert_int_equal(vc_config_get_source(cfg, VC_CFG_MAX_CACHE_VRAM_GB), VC_CFG_SOURCE_COMPUTED);
    vc_diagnostics_destroy(d);
    vc_config_destroy(cfg);

    assert_int_equal(load("null_required.yaml", &cfg, &d), VC_ERR_CONFIG);
    assert_non_null(find_diag(d, "device_working_mem_gb needs a value"));
    vc_diagnostics_destroy(d);
    vc_config_destroy(cfg);

    assert_int_equal(load("mps_device.yaml", &cfg, &d), VC_OK);
    assert_non_null(find_diag(d, "mps"));
    assert_string_equal(vc_config_get_text(cfg, VC_CFG_DEVICE), "auto");
    vc_diagnostics_destroy(d);
    vc_config_destroy(cfg);
}

static void test_failed_load_leaves_settings_untouched(void **state) {
    (void)state;
    vc_config *cfg;
    vc_diagnostics *d;
    assert_int_equal(load("valid_v4.yaml", &cfg, &d), VC_OK);
    vc_diagnostics_destroy(d);
    assert_int_equal(vc_config_load_file(cfg, path_of("bad_values.yaml"), VC_CONFIG_NO_ENV, &d), VC_ERR_CONFIG);
    vc_diagnostics_destroy(d);
    assert_true(num(cfg, VC_CFG_MAX_CACHE_VRAM_GB) == 18.0);
    assert_true(num(cfg, VC_CFG_MAX_CACHE_RAM_GB) == 28.0);
    /* missing file: VC_ERR_IO, a diagnostic, nothing changed */
    assert_int_equal(vc_config_load_file(cfg, path_of("no_such_file.yaml"), 0, &d), VC_ERR_IO);
    assert_int_equal(vc_diagnostics_errors(d), 1);
    assert_non_null(find_diag(d, "cannot read"));
    vc_diagnostics_destroy(d);
    assert_true(num(cfg, VC_CFG_MAX_CACHE_VRAM_GB) == 18.0);
    /* a new file replaces the old file's values */
    assert_int_equal(vc_config_load_file(cfg, path_of("quoted_numbers.yaml"), VC_CONFIG_NO_ENV, NULL), VC_OK);
    assert_true(num(cfg, VC_CFG_MAX_CACHE_VRAM_GB) == 7.5);
    assert_int_equal(boolean(cfg, VC_CFG_KEEP_RAM_COPY_OF_WEIGHTS), 1); /* back to default */
    vc_config_destroy(cfg);
}

static void test_environment_and_precedence(void **state) {
    (void)state;
    vc_config *cfg;
    vc_diagnostics *d;
    assert_int_equal(vc_config_create(&cfg), VC_OK);
    setenv("INVOKEAI_MAX_CACHE_VRAM_GB", "6", 1);
    setenv("INVOKEAI_DEVICE", "cpu", 1);
    setenv("INVOKEAI_RAM", "4", 1);
    /* env > file */
    assert_int_equal(vc_config_load_file(cfg, path_of("duplicates.yaml"), 0, &d), VC_OK);
    assert_true(num(cfg, VC_CFG_MAX_CACHE_VRAM_GB) == 6.0);
    assert_int_equal(vc_config_get_source(cfg, VC_CFG_MAX_CACHE_VRAM_GB), VC_CFG_SOURCE_ENV);
    assert_true(num(cfg, VC_CFG_DEVICE_WORKING_MEM_GB) == 2.0); /* the file's, env does not set it */
    const vc_diagnostic *g = find_diag(d, "INVOKEAI_RAM");
    assert_non_null(g);
    assert_string_equal(g->file, "environment");
    vc_diagnostics_destroy(d);
    /* API > env */
    assert_int_equal(vc_config_set(cfg, VC_CFG_MAX_CACHE_VRAM_GB, "5"), VC_OK);
    assert_true(num(cfg, VC_CFG_MAX_CACHE_VRAM_GB) == 5.0);
    assert_int_equal(vc_config_get_source(cfg, VC_CFG_MAX_CACHE_VRAM_GB), VC_CFG_SOURCE_API);
    /* API values survive a reload */
    assert_int_equal(vc_config_load_file(cfg, path_of("valid_v4.yaml"), 0, NULL), VC_OK);
    assert_true(num(cfg, VC_CFG_MAX_CACHE_VRAM_GB) == 5.0);
    assert_int_equal(vc_config_unset(cfg, VC_CFG_MAX_CACHE_VRAM_GB), VC_OK);
    assert_true(num(cfg, VC_CFG_MAX_CACHE_VRAM_GB) == 6.0);
    /* VC_CONFIG_NO_ENV: the file alone */
    assert_int_equal(vc_config_load_file(cfg, path_of("valid_v4.yaml"), VC_CONFIG_NO_ENV, NULL), VC_OK);
    assert_true(num(cfg, VC_CFG_MAX_CACHE_VRAM_GB) == 18.0);
    /* a bad environment value is an error like a bad file value */
    setenv("INVOKEAI_MAX_CACHE_VRAM_GB", "plenty", 1);
    assert_int_equal(vc_config_load_file(cfg, path_of("valid_v4.yaml"), 0, &d), VC_ERR_CONFIG);
    g = find_diag(d, "INVOKEAI_MAX_CACHE_VRAM_GB");
    assert_non_null(g);
    assert_int_equal(g->severity, VC_DIAG_ERROR);
    vc_diagnostics_destroy(d);
    assert_true(num(cfg, VC_CFG_MAX_CACHE_VRAM_GB) == 18.0);
    clear_env();
    vc_config_destroy(cfg);
}

/* An unset offload_mode: model without partial loading; with it, sequential on GPUs of 4 GB or less
 * (SD.Next's default, whole GB rounded) and balanced otherwise; an explicit mode always wins. */
static void test_offload_mode_for_device(void **state) {
    (void)state;
    vc_config *cfg;
    assert_int_equal(vc_config_create(&cfg), VC_OK);
    char why[128];
    assert_int_equal(vc_config_get_offload_mode_for(cfg, 1, 4 * GB, why, sizeof why), VC_OFFLOAD_MODE_SEQUENTIAL);
    assert_non_null(strstr(why, "4 GB or less"));
    assert_int_equal(vc_config_get_offload_mode_for(cfg, 1, 4 * GB + 400 * MB, NULL, 0), VC_OFFLOAD_MODE_SEQUENTIAL);
    assert_int_equal(vc_config_get_offload_mode_for(cfg, 1, 4 * GB + 600 * MB, why, sizeof why),
                     VC_OFFLOAD_MODE_BALANCED);
    assert_int_equal(vc_config_get_offload_mode_for(cfg, 1, 80 * GB, why, sizeof why), VC_OFFLOAD_MODE_BALANCED);
    assert_int_equal(vc_config_get_offload_mode_for(cfg, 0, 1 * GB, why, sizeof why), VC_OFFLOAD_MODE_BALANCED);
    assert_int_equal(vc_config_get_offload_mode_for(NULL, 1, 2 * GB, NULL, 0), VC_OFFLOAD_MODE_SEQUENTIAL);
    assert_int_equal(vc_config_set(cfg, VC_CFG_ENABLE_PARTIAL_LOADING, "false"), VC_OK);
    assert_int_equal(vc_config_get_offload_mode_for(cfg, 1, 2 * GB, why, sizeof why), VC_OFFLOAD_MODE_MODEL);
    assert_non_null(strstr(why, "enable_partial_loading is false"));
    assert_int_equal(vc_config_set(cfg, VC_CFG_OFFLOAD_MODE, "balanced"), VC_OK);
    assert_int_equal(vc_config_get_offload_mode_for(cfg, 1, 2 * GB, why, sizeof why), VC_OFFLOAD_MODE_BALANCED);
    assert_non_null(strstr(why, "set in the configuration"));
    vc_config_destroy(cfg);
}

/* SD.Next's --lowvram and --medvram, as lowvram/medvram settings: they pick the offload mode when
 * offload_mode is unset (lowvram before medvram, both before enable_partial_loading and the 4 GB
 * rule), and an explicit offload_mode still wins; the environment sets them like any key. */
static void test_lowvram_medvram_flags(void **state) {
    (void)state;
    vc_config *cfg;
    vc_diagnostics *d = NULL;
    char why[128];
    assert_int_equal(vc_config_create(&cfg), VC_OK);
    static const char low[] = "lowvram: true\nenable_partial_loading: false\n";
    assert_int_equal(vc_config_load_string(cfg, low, sizeof low - 1, "low.yaml", VC_CONFIG_NO_ENV, &d), VC_OK);
    assert_null(find_diag(d, "unknown"));
    vc_diagnostics_destroy(d);
    assert_int_equal(vc_config_get_offload_mode(cfg), VC_OFFLOAD_MODE_SEQUENTIAL);
    assert_int_equal(vc_config_get_offload_mode_for(cfg, 1, 24 * GB, why, sizeof why), VC_OFFLOAD_MODE_SEQUENTIAL);
    assert_non_null(strstr(why, "lowvram"));
    vc_cache_options o;
    vc_cache_options_init(&o);
    assert_int_equal(vc_config_apply(cfg, &o), VC_OK);
    assert_int_equal(o.offload_mode, VC_OFFLOAD_MODE_SEQUENTIAL);

    static const char med[] = "medvram: yes\n";
    assert_int_equal(vc_config_load_string(cfg, med, sizeof med - 1, "med.yaml", VC_CONFIG_NO_ENV, NULL), VC_OK);
    assert_int_equal(vc_config_get_offload_mode_for(cfg, 1, 2 * GB, why, sizeof why), VC_OFFLOAD_MODE_MODEL);
    assert_non_null(strstr(why, "medvram"));
    /* both: lowvram wins, as SD.Next checks it first */
    assert_int_equal(vc_config_set(cfg, VC_CFG_LOWVRAM, "true"), VC_OK);
    assert_int_equal(vc_config_get_offload_mode(cfg), VC_OFFLOAD_MODE_SEQUENTIAL);
    /* an explicit mode wins over both */
    assert_int_equal(vc_config_set(cfg, VC_CFG_OFFLOAD_MODE, "balanced"), VC_OK);
    assert_int_equal(vc_config_get_offload_mode_for(cfg, 1, 2 * GB, why, sizeof why), VC_OFFLOAD_MODE_BALANCED);
    assert_non_null(strstr(why, "set in the configuration"));
    assert_int_equal(vc_config_unset(cfg, VC_CFG_OFFLOAD_MODE), VC_OK);
    assert_int_equal(vc_config_unset(cfg, VC_CFG_LOWVRAM), VC_OK);

    /* not a boolean: an error naming the key, and nothing of the file applied */
    static const char bad[] = "lowvram: sometimes\nmax_cache_vram_gb: 2\n";
    assert_int_equal(vc_config_load_string(cfg, bad, sizeof bad - 1, "bad.yaml", VC_CONFIG_NO_ENV, &d), VC_ERR_CONFIG);
    assert_non_null(find_diag(d, "lowvram"));
    vc_diagnostics_destroy(d);
    assert_int_equal(vc_config_get_offload_mode(cfg), VC_OFFLOAD_MODE_MODEL); /* med.yaml still */
    assert_int_equal(vc_config_get_number(cfg, VC_CFG_MAX_CACHE_VRAM_GB, &(double){0}), VC_ERR_NOT_FOUND);

    /* the environment: INVOKEAI_LOWVRAM, as for every key */
    setenv("INVOKEAI_LOWVRAM", "1", 1);
    assert_int_equal(vc_config_load_string(cfg, "", 0, NULL, 0, NULL), VC_OK);
    assert_int_equal(vc_config_get_offload_mode(cfg), VC_OFFLOAD_MODE_SEQUENTIAL);
    assert_int_equal(vc_config_get_source(cfg, VC_CFG_LOWVRAM), VC_CFG_SOURCE_ENV);
    clear_env();
    vc_config_destroy(cfg);
}

static void test_api_setter_validation(void **state) {
    (void)state;
    vc_config *cfg;
    assert_int_equal(vc_config_create(&cfg), VC_OK);
    assert_int_equal(vc_config_set(cfg, VC_CFG_MAX_CACHE_RAM_GB, "0"), VC_ERR_CONFIG);
    assert_non_null(strstr(vc_last_error(), "> 0"));
    assert_int_equal(vc_config_set(cfg, VC_CFG_DEVICE, "hip:2"), VC_OK);
    vc_device_kind kind;
    int index;
    vc_config_get_device(cfg, &kind, &index);
    assert_int_equal(kind, VC_DEVICE_HIP);
    assert_int_equal(index, 2);
    assert_int_equal(vc_config_set(cfg, (vc_config_key)99, "1"), VC_ERR_INVALID_ARG);
    assert_int_equal(vc_config_set(cfg, VC_CFG_DEVICE, NULL), VC_ERR_INVALID_ARG);
    vc_config_key k;
    assert_int_equal(vc_config_key_from_name("diffusers_offload_mode", &k), VC_OK);
    assert_int_equal(k, VC_CFG_OFFLOAD_MODE);
    assert_int_equal(vc_config_key_from_name("nope", &k), VC_ERR_NOT_FOUND);
    assert_null(vc_config_key_name((vc_config_key)-1));
    double v;
    assert_int_equal(vc_config_get_number(cfg, VC_CFG_DEVICE, &v), VC_ERR_INVALID_ARG);
    int b;
    assert_int_equal(vc_config_get_bool(cfg, VC_CFG_DEVICE, &b), VC_ERR_INVALID_ARG);
    /* the strings pydantic takes for a boolean, as from InvokeAI's environment */
    assert_int_equal(vc_config_set(cfg, VC_CFG_LOG_MEMORY_USAGE, "T"), VC_OK);
    assert_int_equal(boolean(cfg, VC_CFG_LOG_MEMORY_USAGE), 1);
    assert_int_equal(vc_config_set(cfg, VC_CFG_LOG_MEMORY_USAGE, "f"), VC_OK);
    assert_int_equal(boolean(cfg, VC_CFG_LOG_MEMORY_USAGE), 0);
    assert_int_equal(vc_config_set(cfg, VC_CFG_LOG_MEMORY_USAGE, "2"), VC_ERR_CONFIG);
    assert_int_equal(vc_config_load_string(cfg, "max_cache_vram_gb: 3\n", 21, NULL, 0x10, NULL), VC_ERR_INVALID_ARG);
    assert_int_equal(vc_config_load_string(NULL, "", 0, NULL, 0, NULL), VC_ERR_INVALID_ARG);
    assert_int_equal(vc_config_load_string(cfg, "max_cache_vram_gb: 3\n", 21, NULL, VC_CONFIG_NO_ENV, NULL), VC_OK);
    assert_true(num(cfg, VC_CFG_MAX_CACHE_VRAM_GB) == 3.0);
    /* text with an embedded NUL is rejected by the YAML reader, not read past */
    assert_int_equal(vc_config_load_string(cfg, "device: cpu\0device: cuda\n", 25, NULL, VC_CONFIG_NO_ENV, NULL),
                     VC_ERR_CONFIG);
    vc_config_destroy(cfg);
}

/* What `device: auto` resolves to on this machine: CUDA, then HIP, then the host backend. The
 * tests run on machines with and without a GPU, so they ask rather than assume. */
static const char *auto_backend_name(void) {
    static char name[16];
    vc_backend *b = NULL;
    char why[256];
    if (test_gpu_backend("cuda:0", &b, why, sizeof why) == VC_OK)
        snprintf(name, sizeof name, "cuda");
    else if (test_gpu_backend("hip:0", &b, why, sizeof why) == VC_OK)
        snprintf(name, sizeof name, "hip");
    else
        snprintf(name, sizeof name, "host");
    if (b) vc_backend_destroy(b);
    return name;
}

static void test_backend_and_cache_from_config(void **state) {
    (void)state;
    vc_config *cfg;
    assert_int_equal(vc_config_create(&cfg), VC_OK);
    vc_backend *b = NULL;
    char why[256];
    assert_int_equal(vc_config_create_backend(cfg, &b, why, sizeof why), VC_OK);
    assert_string_equal(vc_backend_name(b), auto_backend_name());
    assert_non_null(strstr(why, "auto"));
    vc_backend_destroy(b);
    assert_int_equal(vc_config_set(cfg, VC_CFG_DEVICE, "cuda:1023"), VC_OK); /* no machine has it */
    b = (vc_backend *)0x1;
    assert_int_equal(vc_config_create_backend(cfg, &b, why, sizeof why), VC_ERR_NO_DEVICE);
    assert_null(b);
    assert_non_null(strstr(vc_last_error(), "cuda:1023"));
    vc_cache *c = NULL;
    assert_int_equal(vc_cache_create_from_config(cfg, &c), VC_ERR_NO_DEVICE);
    assert_null(c);
    vc_config_destroy(cfg);

    /* one call from a file to a cache */
    vc_diagnostics *d;
    assert_int_equal(vc_cache_create_from_file(path_of("quoted_numbers.yaml"), &c, &d), VC_OK);
    vc_stats s = get_stats(c);
    assert_int_equal(s.ram_budget, 12 * GB);
    assert_int_equal(s.working_mem, 0);
    assert_string_equal(vc_backend_name(vc_cache_backend(c)), auto_backend_name());
    assert_int_equal(vc_cache_destroy(c), VC_OK); /* the cache owns its backend */
    vc_diagnostics_destroy(d);
    assert_int_equal(vc_cache_create_from_file(path_of("bad_values.yaml"), &c, &d), VC_ERR_CONFIG);
    assert_null(c);
    assert_int_equal(vc_diagnostics_errors(d), 10);
    vc_diagnostics_destroy(d);
}

/* A program built against the first release has smaller vc_cache_options (they end with
 * stage_ahead): vc_config_apply fills what it has and writes nothing past it, as vc_cache_create
 * reads only that much; a size below the first release's, or above ours, is refused. */
static void test_apply_to_first_release_options(void **state) {
    (void)state;
    vc_config *cfg;
    assert_int_equal(vc_config_create(&cfg), VC_OK);
    static const char text[] = "max_cache_ram_gb: 5\ndevice_working_mem_gb: 1\nmodel_cache_keep_alive_min: 2\n"
                               "smart_partial_loading: true\n";
    assert_int_equal(vc_config_load_string(cfg, text, sizeof text - 1, "t.yaml", VC_CONFIG_NO_ENV, NULL), VC_OK);
    const size_t first = offsetof(vc_cache_options, stage_ahead) + sizeof(int);
    union {
        vc_cache_options o;
        unsigned char b[sizeof(vc_cache_options) + 16];
    } u;
    memset(&u, 0xab, sizeof u);
    vc_cache_options_init_sized(&u.o, first);
    assert_int_equal(vc_config_apply(cfg, &u.o), VC_OK);
    assert_int_equal(u.o.ram_budget, 5 * GB);
    assert_int_equal(u.o.working_mem, 1 * GB);
    for (size_t i = first; i < sizeof u.b; i++) assert_int_equal(u.b[i], 0xab);
    u.o.backend = NULL;
    u.o.ram_budget = 1 * MB;
    vc_cache *c;
    assert_int_equal(vc_cache_create(&u.o, &c), VC_OK); /* and a cache from them, keep-alive off */
    assert_int_equal(get_stats(c).ram_budget, 1 * MB);
    assert_int_equal(vc_cache_destroy(c), VC_OK);
    u.o.struct_size = first - 1;
    assert_int_equal(vc_config_apply(cfg, &u.o), VC_ERR_INVALID_ARG);
    u.o.struct_size = sizeof(vc_cache_options) + 8;
    assert_int_equal(vc_config_apply(cfg, &u.o), VC_ERR_INVALID_ARG);
    assert_non_null(strstr(vc_last_error(), "struct_size"));
    vc_cache_options full; /* the current size gets every field */
    vc_cache_options_init(&full);
    assert_int_equal(vc_config_apply(cfg, &full), VC_OK);
    assert_true(full.keep_alive_s == 120.0);
    assert_int_equal(full.smart_working_mem, 1);
    vc_config_destroy(cfg);
}

typedef struct text_sink {
    char buf[8192];
} text_sink;

static void sink(void *user, const char *text) {
    text_sink *s = user;
    strncat(s->buf, text, sizeof s->buf - strlen(s->buf) - 1);
}

static void test_show_names_sources(void **state) {
    (void)state;
    vc_config *cfg;
    assert_int_equal(vc_config_create(&cfg), VC_OK);
    setenv("INVOKEAI_LOG_MEMORY_USAGE", "true", 1);
    assert_int_equal(vc_config_load_file(cfg, path_of("quoted_numbers.yaml"), 0, NULL), VC_OK);
    assert_int_equal(vc_config_set(cfg, VC_CFG_PRECISION, "float16"), VC_OK);
    text_sink *s = calloc(1, sizeof *s);
    assert_int_equal(vc_config_show(cfg, sink, s), VC_OK);
    assert_non_null(strstr(s->buf, "max_cache_ram_gb: 12  # file\n"));
    assert_non_null(strstr(s->buf, "max_cache_vram_gb: 7.5  # file"));
    assert_non_null(strstr(s->buf, "log_memory_usage: true  # env\n"));
    assert_non_null(strstr(s->buf, "precision: float16  # api\n"));
    assert_non_null(strstr(s->buf, "keep_ram_copy_of_weights: true  # default\n"));
    char resolved[96];
    snprintf(resolved, sizeof resolved, "device: auto  # default; resolves to backend '%s'", auto_backend_name());
    assert_non_null(strstr(s->buf, resolved));
    assert_non_null(strstr(s->buf, "offload_mode: null  # computed: balanced"));
    /* every line but the header is key: value # source */
    int lines = 0;
    for (char *p = s->buf; (p = strchr(p, '\n')); p++) lines++;
    assert_int_equal(lines, VC_CFG_KEY_COUNT + 1);
    memset(s, 0, sizeof *s);
    assert_int_equal(vc_config_unset(cfg, VC_CFG_PRECISION), VC_OK);
    assert_int_equal(vc_config_load_string(cfg, "", 0, NULL, VC_CONFIG_NO_ENV, NULL), VC_OK);
    assert_int_equal(vc_config_show(cfg, sink, s), VC_OK);
    assert_non_null(strstr(s->buf, "max_cache_ram_gb: null  # computed: "));
    assert_non_null(strstr(s->buf, "rule 1"));
    free(s);
    clear_env();
    vc_config_destroy(cfg);
}

/* `config show` prints YAML: a free-text value (PyTorch's allocator options, which may be long and
 * hold ": ", " #", quotes) is quoted, and reading the output back gives the same value. Values
 * of up to 511 bytes are kept (a 123-byte one was an error that made InvokeAI's file unusable). */
static void test_show_round_trips_free_text(void **state) {
    (void)state;
    static const char value[] = "expandable_segments:True,garbage_collection_threshold:0.6,max_split_size_mb:512,"
                                "roundup_power2_divisions:[256:1,512:2,1024:4,>:8], a: b # not a \"comment\" \\ ";
    vc_config *cfg, *back;
    assert_int_equal(vc_config_create(&cfg), VC_OK);
    assert_int_equal(vc_config_set(cfg, VC_CFG_PYTORCH_CUDA_ALLOC_CONF, value), VC_OK);
    text_sink *s = calloc(1, sizeof *s);
    assert_int_equal(vc_config_show(cfg, sink, s), VC_OK);
    assert_non_null(strstr(s->buf, "pytorch_cuda_alloc_conf: \"expandable_segments:True,"));
    /* the comments after each value go with it: strip nothing, read the whole output back */
    assert_int_equal(vc_config_create(&back), VC_OK);
    vc_diagnostics *d;
    assert_int_equal(vc_config_load_string(back, s->buf, strlen(s->buf), "shown.yaml", VC_CONFIG_NO_ENV, &d), VC_OK);
    assert_int_equal(vc_diagnostics_errors(d), 0);
    assert_string_equal(vc_config_get_text(back, VC_CFG_PYTORCH_CUDA_ALLOC_CONF), value);
    vc_diagnostics_destroy(d);
    /* 511 bytes are kept, 512 are an error naming the limit */
    char big[600];
    memset(big, 'x', sizeof big);
    big[511] = '\0';
    assert_int_equal(vc_config_set(cfg, VC_CFG_PYTORCH_CUDA_ALLOC_CONF, big), VC_OK);
    big[511] = 'x';
    big[512] = '\0';
    assert_int_equal(vc_config_set(cfg, VC_CFG_PYTORCH_CUDA_ALLOC_CONF, big), VC_ERR_CONFIG);
    assert_non_null(strstr(vc_last_error(), "at most 511 characters"));
    free(s);
    vc_config_destroy(back);
    vc_config_destroy(cfg);
}

/* Loads `text` as a file named config.json into cfg. */
static int load_text(vc_config *cfg, const char *text, unsigned flags, vc_diagnostics **d) {
    return vc_config_load_string(cfg, text, strlen(text), "config.json", flags, d);
}

/* SD.Next's config.json (its offload keys, beside hundreds of its own): read without an error and
 * without a warning per key; the offload keys that act elsewhere here are silent unless they name
 * modules, and SD.Next's 'group' mode and 'Full' precision are read with a warning. */
static void test_sdnext_config_json(void **state) {
    (void)state;
    vc_config *cfg;
    vc_diagnostics *d;
    assert_int_equal(load("sdnext_config.json", &cfg, &d), VC_OK);
    assert_int_equal(vc_diagnostics_errors(d), 0);
    assert_int_equal(vc_config_get_offload_mode(cfg), VC_OFFLOAD_MODE_BALANCED);
    assert_true(num(cfg, VC_CFG_OFFLOAD_MAX_GPU_MEMORY) == 0.7);
    assert_string_equal(vc_config_get_text(cfg, VC_CFG_PRECISION), "auto");
    /* two warnings: Autocast, and one for all of SD.Next's own keys (20 of them, the first named
     * where it stands) */
    assert_int_equal(vc_diagnostics_count(d), 2);
    assert_non_null(find_diag(d, "autocast"));
    const vc_diagnostic *g = find_diag(d, "SD.Next's config.json");
    assert_non_null(g);
    assert_int_equal(g->severity, VC_DIAG_WARNING);
    assert_int_equal(g->line, 2);
    assert_non_null(strstr(g->message, "20 of its own settings"));
    assert_non_null(strstr(g->message, "('sd_backend', 'diffusers_pipeline', 'sd_model_checkpoint', ...)"));
    assert_null(find_diag(d, "unknown key"));
    vc_diagnostics_destroy(d);
    vc_config_destroy(cfg);

    /* the same keys with other values */
    assert_int_equal(vc_config_create(&cfg), VC_OK);
    assert_int_equal(load_text(cfg, "{\"sd_backend\": \"diffusers\", \"diffusers_offload_mode\": \"group\", "
                                    "\"precision\": \"Full\",\n"
                                    " \"diffusers_offload_never\": \"vae, text_encoder\", \"diffusers_offload_always\": [],\n"
                                    " \"models_not_to_offload\": [\"FLUX\"], \"diffusers_offload_max_gpu_memroy\": 0.5,\n"
                                    " \"group_offload_blocks\": 2}\n",
                               VC_CONFIG_NO_ENV, &d),
                     VC_OK);
    assert_int_equal(vc_diagnostics_errors(d), 0);
    /* group offloading keeps only what is in use and arriving: sequential here */
    assert_int_equal(vc_config_get_offload_mode(cfg), VC_OFFLOAD_MODE_SEQUENTIAL);
    assert_string_equal(vc_config_get_text(cfg, VC_CFG_OFFLOAD_MODE), "sequential");
    g = find_diag(d, "'group'");
    assert_non_null(g);
    assert_int_equal(g->line, 1);
    assert_non_null(find_diag(d, "precision 'Full'"));
    assert_string_equal(vc_config_get_text(cfg, VC_CFG_PRECISION), "auto");
    /* a list that names modules is the user's to act on; an empty one is not */
    g = find_diag(d, "'diffusers_offload_never'");
    assert_non_null(g);
    assert_int_equal(g->line, 2);
    assert_non_null(strstr(g->message, "vc_model_acquire"));
    assert_null(find_diag(d, "'diffusers_offload_always'"));
    assert_non_null(find_diag(d, "'models_not_to_offload'"));
    /* a misspelt key of ours is still named, with its spelling, in a file of SD.Next's */
    g = find_diag(d, "did you mean 'diffusers_offload_max_gpu_memory'");
    assert_non_null(g);
    assert_int_equal(g->line, 3);
    assert_true(num(cfg, VC_CFG_OFFLOAD_MAX_GPU_MEMORY) == 0.75);
    g = find_diag(d, "SD.Next's config.json"); /* the one other key of SD.Next's own */
    assert_non_null(g);
    assert_non_null(strstr(g->message, "1 of its own settings that libvramcache does not use is ignored ('sd_backend')"));
    assert_int_equal(vc_diagnostics_count(d), 6);
    vc_diagnostics_destroy(d);

    /* without one of SD.Next's own keys it is not SD.Next's file: each unknown key is warned about */
    assert_int_equal(load_text(cfg, "diffusers_offload_mode: group\nui_request_timeout: 30000\nsamples_save: true\n",
                               VC_CONFIG_NO_ENV, &d),
                     VC_OK);
    assert_int_equal(vc_diagnostics_count(d), 3);
    assert_non_null(find_diag(d, "unknown key 'ui_request_timeout'"));
    assert_non_null(find_diag(d, "unknown key 'samples_save'"));
    vc_diagnostics_destroy(d);

    /* SD.Next's settings before its offload modes: the switches for --lowvram and --medvram */
    assert_int_equal(load_text(cfg, "{\"sd_backend\": \"diffusers\", \"diffusers_model_cpu_offload\": true}\n",
                               VC_CONFIG_NO_ENV, &d),
                     VC_OK);
    assert_int_equal(vc_config_get_offload_mode(cfg), VC_OFFLOAD_MODE_MODEL);
    vc_diagnostics_destroy(d);
    assert_int_equal(load_text(cfg, "{\"sd_backend\": \"diffusers\", \"diffusers_model_cpu_offload\": true, "
                                    "\"diffusers_seq_cpu_offload\": true}\n",
                               VC_CONFIG_NO_ENV, &d),
                     VC_OK);
    assert_int_equal(vc_config_get_offload_mode(cfg), VC_OFFLOAD_MODE_SEQUENTIAL); /* as SD.Next: sequential wins */
    assert_int_equal(vc_diagnostics_count(d), 1); /* sd_backend, SD.Next's own */
    vc_diagnostics_destroy(d);

    /* a bad value under SD.Next's spelling names that spelling and the key it is read as */
    assert_int_equal(load_text(cfg, "{\"sd_backend\": \"diffusers\", \"diffusers_offload_max_gpu_memory\": 0}\n",
                               VC_CONFIG_NO_ENV, &d),
                     VC_ERR_CONFIG);
    g = find_diag(d, "'diffusers_offload_max_gpu_memory' is read as offload_max_gpu_memory: offload_max_gpu_memory must be");
    assert_non_null(g);
    assert_int_equal(g->severity, VC_DIAG_ERROR);
    vc_diagnostics_destroy(d);

    /* the environment and the API read 'group' as a file does */
    setenv("INVOKEAI_OFFLOAD_MODE", "group", 1);
    assert_int_equal(load_text(cfg, "device_working_mem_gb: 2\n", 0, &d), VC_OK);
    unsetenv("INVOKEAI_OFFLOAD_MODE");
    assert_int_equal(vc_config_get_offload_mode(cfg), VC_OFFLOAD_MODE_SEQUENTIAL);
    g = find_diag(d, "'group'");
    assert_non_null(g);
    assert_string_equal(g->file, "environment");
    vc_diagnostics_destroy(d);
    assert_int_equal(vc_config_unset(cfg, VC_CFG_OFFLOAD_MODE), VC_OK);
    assert_int_equal(vc_config_set(cfg, VC_CFG_OFFLOAD_MODE, "group"), VC_OK);
    assert_int_equal(vc_config_get_offload_mode(cfg), VC_OFFLOAD_MODE_SEQUENTIAL);
    assert_int_equal(vc_config_set(cfg, VC_CFG_OFFLOAD_MODE, "groups"), VC_ERR_CONFIG);
    vc_config_destroy(cfg);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_defaults, setup),
        cmocka_unit_test_setup(test_valid_v4_every_key, setup),
        cmocka_unit_test_setup(test_v3_nested_migrated, setup),
        cmocka_unit_test_setup(test_bom_crlf_comments, setup),
        cmocka_unit_test_setup(test_tabs_are_a_clear_error, setup),
        cmocka_unit_test_setup(test_empty_files_warn_and_use_defaults, setup),
        cmocka_unit_test_setup(test_not_a_mapping, setup),
        cmocka_unit_test_setup(test_pipes_and_directories, setup),
        cmocka_unit_test_setup(test_odd_yaml_shapes, setup),
        cmocka_unit_test_setup(test_duplicates_warn_later_wins, setup),
        cmocka_unit_test_setup(test_merge_keys, setup),
        cmocka_unit_test_setup(test_quoted_numbers_and_booleans, setup),
        cmocka_unit_test_setup(test_yaml11_numbers_as_invokeai_reads_them, setup),
        cmocka_unit_test_setup(test_bad_values_each_named, setup),
        cmocka_unit_test_setup(test_syntax_error_reports_position, setup),
        cmocka_unit_test_setup(test_schema_versions, setup),
        cmocka_unit_test_setup(test_deprecated_keys, setup),
        cmocka_unit_test_setup(test_sdnext_aliases_and_alloc_conf, setup),
        cmocka_unit_test_setup(test_sdnext_config_json, setup),
        cmocka_unit_test_setup(test_nested_value_typo_nulls_mps, setup),
        cmocka_unit_test_setup(test_failed_load_leaves_settings_untouched, setup),
        cmocka_unit_test_setup(test_environment_and_precedence, setup),
        cmocka_unit_test_setup(test_api_setter_validation, setup),
        cmocka_unit_test_setup(test_offload_mode_for_device, setup),
        cmocka_unit_test_setup(test_lowvram_medvram_flags, setup),
        cmocka_unit_test_setup(test_backend_and_cache_from_config, setup),
        cmocka_unit_test_setup(test_apply_to_first_release_options, setup),
        cmocka_unit_test_setup(test_show_names_sources, setup),
        cmocka_unit_test_setup(test_show_round_trips_free_text, setup),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
