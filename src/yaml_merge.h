/* YAML merge keys for the file readers (src/yaml_merge.c). */
#ifndef VC_YAML_MERGE_H
#define VC_YAML_MERGE_H

#include <yaml.h>

#include "vramcache_config.h"

/** Rewrites every mapping of `doc` that has merge keys (`<<: *anchor`, `<<: [*a, *b]`) into the
 *  mapping they mean, by YAML 1.1's rules (own keys win, then earlier sources). Problems (a merge
 *  of something that is not a mapping, a mapping merged into itself, no memory) are added to `d`
 *  as errors naming `file` and the line. Returns the number of errors added. */
int vc__yaml_expand_merges(yaml_document_t *doc, const char *file, vc_diagnostics *d);

#endif
