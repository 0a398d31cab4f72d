/*
 * libvramcache safetensors files: a model's weights as the cache's layers.
 *
 * Most diffusion and language models ship as `.safetensors` files: an 8-byte little-endian header
 * length, a JSON header naming each tensor's dtype, shape and byte range, then the tensors' bytes.
 * This module reads and checks the header, groups the tensors into layers by name ("blocks.3.attn.
 * qkv.weight" and "blocks.3.norm1.weight" are both layer "blocks.3"), lays out each layer's tensors
 * in one buffer at aligned offsets, and registers the layers with a cache with a loader that reads
 * them from the file with pread. The engine then acquires a layer and finds each tensor at
 * device pointer + vc_safetensors_tensor.layer_offset. A checkpoint sharded over several files
 * ("diffusion_pytorch_model-00001-of-00003.safetensors" ... and their ".safetensors.index.json")
 * opens as one handle, so a layer whose tensors span two shards is still one layer.
 *
 * The file is checked as the reference implementation checks it: header within 100 MB and the
 * file, valid UTF-8 JSON object, known dtypes, shapes whose size matches the byte range, ranges
 * within the data that neither overlap nor leave holes, names unique. A file that fails any check
 * is refused whole, with a message that says where (byte offset in the header, or the tensor).
 *
 * Threads: a handle is read-only once opened; every function here but vc_safetensors_close may be
 * called on one handle from several threads at once (the loader reads with pread, which has no
 * shared file position). Errors: negative vc_status codes with the message in vc_last_error().
 */
#ifndef VRAMCACHE_SAFETENSORS_H
#define VRAMCACHE_SAFETENSORS_H

#include "vramcache.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct vc_safetensors vc_safetensors; /**< An open, checked safetensors file. */

/** vc_safetensors_options.group_depth: one layer per tensor. */
#define VC_SAFETENSORS_EACH_TENSOR 0xffffffffu

/** How vc_safetensors_open() groups tensors into layers. Initialise with vc_safetensors_options_init(). */
typedef struct vc_safetensors_options {
    size_t struct_size; /**< Set by vc_safetensors_options_init(); do not change. */
    /** How many leading dot-separated components of a tensor's name name its layer. 0 (default):
     *  up to the last component that is a number and is not the last one ("down_blocks.1.attentions.
     *  0.transformer_blocks.2.attn1.to_q.weight" → "down_blocks.1.attentions.0.transformer_blocks.2",
     *  "model.layers.7.mlp.up_proj.weight" → "model.layers.7", "double_blocks.0.img_mod.lin.weight" →
     *  "double_blocks.0"), and for names with no such number all but the last component
     *  ("model.embed_tokens.weight" → "model.embed_tokens"). N > 0: the first N components (at most
     *  all but the last), for engines that run coarser blocks, e.g. 5 for an original-layout SD
     *  checkpoint's "model.diffusion_model.input_blocks.1.0". VC_SAFETENSORS_EACH_TENSOR: every
     *  tensor is a layer of its own (engines that move tensor by tensor, as InvokeAI's partial
     *  loading does). */
    unsigned group_depth;
    /** Alignment of each tensor's offset within its layer's buffer, and of the layer on the
     *  device: a power of two, at most 2 MB; 0 (default) means 256. */
    size_t tensor_alignment;
} vc_safetensors_options;

/** Fills the first `struct_size` bytes of `opts` with the defaults; NULL is a no-op. Use the macro. */
VC_API void vc_safetensors_options_init_sized(vc_safetensors_options *opts, size_t struct_size);
#define vc_safetensors_options_init(opts) vc_safetensors_options_init_sized((opts), sizeof(vc_safetensors_options))

/** One tensor of the file. Fields are owned by the handle and valid until vc_safetensors_close(). */
typedef struct vc_safetensors_tensor {
    const char *name;       /**< UTF-8, as in the header (escapes decoded) */
    const char *dtype;      /**< as in the header: "BF16", "F16", "F32", "F8_E4M3", "I64", ... */
    unsigned bits;          /**< bits per element (4 for F4, 6 for the F6 types) */
    unsigned rank;          /**< number of dimensions (0: a scalar) */
    const uint64_t *shape;  /**< `rank` sizes */
    uint64_t elements;      /**< product of the shape */
    uint64_t file_offset;   /**< where its bytes start in its file */
    uint64_t bytes;         /**< its size in the file (= elements × bits / 8) */
    size_t layer;           /**< index of its layer (vc_safetensors_get_layer) */
    uint64_t layer_offset;  /**< where its bytes start in its layer's buffer: a multiple of
                                 tensor_alignment (an empty tensor's is only within the buffer) */
    size_t file;            /**< which of the handle's files holds it (vc_safetensors_file_path) */
} vc_safetensors_tensor;

/** One layer: a group of tensors, uploaded and held as one buffer. */
typedef struct vc_safetensors_layer {
    const char *name;      /**< the tensors' common prefix (see group_depth) */
    uint64_t bytes;        /**< buffer size: its tensors at their offsets, 0 when all are empty */
    size_t first_tensor;   /**< its tensors are first_tensor .. first_tensor + tensor_count - 1, */
    size_t tensor_count;   /**<   in the order of their bytes in the file */
    uint64_t weight_elements; /**< elements in its tensors of rank 2 or more (matrices, convolutions):
                                   2 × this × tokens is its FLOPs per use for a transformer layer */
} vc_safetensors_layer;

/** Opens and checks `path`, and groups its tensors into layers (`opts` may be NULL for the
 *  defaults). A path ending in ".index.json" is a sharded checkpoint's index (Hugging Face's
 *  `{"weight_map": {"tensor": "shard file", ...}}`): the shards it names, beside it, open together
 *  as by vc_safetensors_open_files(), and each tensor must be in the shard the index names. Layers are ordered by name, numbers compared as numbers ("blocks.2" before
 *  "blocks.10"); that is not necessarily the order a model runs them (the cache learns that).
 *  Reads only the header; the tensors are read by the loaders vc_safetensors_register() installs.
 *  On success *out owns the handle (close it with vc_safetensors_close()); on failure *out is NULL
 *  and vc_last_error() says what is wrong and where.
 *  Errors: VC_ERR_INVALID_ARG (NULL path or out, bad options), VC_ERR_IO (cannot open or read;
 *  the system's reason), VC_ERR_FORMAT (not a valid safetensors file: which check failed, at which
 *  header byte or tensor), VC_ERR_TOO_LARGE (a layer or the file too large for this machine's
 *  size_t), VC_ERR_NO_MEMORY. Thread-safe (independent handles). */
VC_API int vc_safetensors_open(const char *path, const vc_safetensors_options *opts, vc_safetensors **out);

/** Opens several files as one model (a checkpoint's shards, `n` >= 1 paths): their tensors are
 *  grouped into layers together, so a layer may take tensors from several files; no name may
 *  appear twice across them. Otherwise as vc_safetensors_open(). */
VC_API int vc_safetensors_open_files(const char *const *paths, size_t n, const vc_safetensors_options *opts,
                                     vc_safetensors **out);

/** Number of files the handle reads (0 for NULL). */
VC_API size_t vc_safetensors_file_count(const vc_safetensors *st);
/** Path of file `i` as opened (shards: the index's directory joined with the shard's name), or NULL
 *  when st is NULL or i is out of range. Owned by the handle. */
VC_API const char *vc_safetensors_file_path(const vc_safetensors *st, size_t i);

/** Closes the files and frees the handle. Layers registered from it must be unregistered (or their
 *  cache destroyed) first: their loaders read through it. NULL is a no-op. */
VC_API void vc_safetensors_close(vc_safetensors *st);

/** Number of tensors (0 for NULL). */
VC_API size_t vc_safetensors_tensor_count(const vc_safetensors *st);
/** Tensor `i` (grouped by layer, layers in order), or NULL when st is NULL or i is out of range. */
VC_API const vc_safetensors_tensor *vc_safetensors_get_tensor(const vc_safetensors *st, size_t i);
/** Finds a tensor by its exact name; sets *index. Errors: VC_ERR_INVALID_ARG (NULL), VC_ERR_NOT_FOUND. */
VC_API int vc_safetensors_find(const vc_safetensors *st, const char *name, size_t *index);
/** Number of layers (0 for NULL). */
VC_API size_t vc_safetensors_layer_count(const vc_safetensors *st);
/** Layer `i`, or NULL when st is NULL or i is out of range. */
VC_API const vc_safetensors_layer *vc_safetensors_get_layer(const vc_safetensors *st, size_t i);
/** The value of `key` in the header's `__metadata__`, or NULL when absent. Owned by the handle. */
VC_API const char *vc_safetensors_metadata(const vc_safetensors *st, const char *key);

/** Reads layer `layer` into `dst` (`size` must be its `bytes`): each tensor at its layer_offset, the
 *  alignment gaps zeroed. What the registered loaders call; engines may call it too. Thread-safe.
 *  Errors: VC_ERR_INVALID_ARG (NULL, index out of range, size differs), VC_ERR_IO (the read failed
 *  or the file was cut short since it was opened; the message names the tensor). */
VC_API int vc_safetensors_read_layer(const vc_safetensors *st, size_t layer, void *dst, size_t size);

/** Registers the layers of the file whose names start with `prefix` (NULL or "": every layer) with
 *  `cache` as layers of `model`, each with a loader that reads it from the file
 *  (vc_safetensors_read_layer) and the file's tensor_alignment. The prefix picks one model out of a
 *  file that holds several, as single-file Stable Diffusion checkpoints do: "model.diffusion_model."
 *  (the UNet), "first_stage_model." (the VAE), "cond_stage_model." (the text encoder); end it with
 *  '.' to match whole name parts. ids (may be NULL) receives vc_safetensors_layer_count() ids, in
 *  layer order; a layer not registered (another prefix, or no bytes: only empty tensors) gets
 *  id 0. The handle is borrowed by the loaders: keep it open until the layers are unregistered or
 *  the cache is destroyed, and do not rewrite the files meanwhile (a file cut short fails the
 *  loads with VC_ERR_LOADER; changed bytes would be read as they are). All or nothing: on failure
 *  the layers registered so far are unregistered again. Thread-safe as vc_layer_register.
 *  Errors: VC_ERR_INVALID_ARG (NULL), VC_ERR_NOT_FOUND (no layer starts with `prefix`: nothing
 *  registered), and vc_layer_register's (VC_ERR_NOT_FOUND for the model, ...). */
VC_API int vc_safetensors_register(vc_safetensors *st, vc_cache *cache, vc_model_id model, const char *prefix,
                                   vc_layer_id *ids);

#ifdef __cplusplus
}
#endif

#endif
