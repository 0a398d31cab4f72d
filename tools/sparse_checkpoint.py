#!/usr/bin/env python3
"""Writes a .safetensors file with a real model's tensor names, dtypes and shapes and no weights:
the header, then a hole (a sparse file: it takes a few kB of disk whatever its size). For trying
`vramcache workload/simulate/plan` and vc_safetensors_* on a model's exact layout without the
download. Shapes are the public architectures' (FLUX.1-dev's transformer in its original, BFL,
naming; Llama 3 8B in Hugging Face's), in bf16, tensors in name order as the reference writer
lays them out.

    python3 tools/sparse_checkpoint.py flux1-dev /tmp/flux1-dev.safetensors
    python3 tools/sparse_checkpoint.py llama3-8b /tmp/llama3-8b.safetensors
"""
import json
import struct
import sys


def flux1_dev():
    h, mlp, t = 3072, 12288, []

    def linear(name, out, inp):
        t.append((name + ".weight", [out, inp]))
        t.append((name + ".bias", [out]))

    for b in range(19):
        for s in ("img", "txt"):
            p = f"double_blocks.{b}.{s}_"
            linear(p + "mod.lin", 6 * h, h)
            linear(p + "attn.qkv", 3 * h, h)
            t.append((p + "attn.norm.query_norm.scale", [128]))
            t.append((p + "attn.norm.key_norm.scale", [128]))
            linear(p + "attn.proj", h, h)
            linear(p + "mlp.0", mlp, h)
            linear(p + "mlp.2", h, mlp)
    for b in range(38):
        p = f"single_blocks.{b}."
        linear(p + "linear1", 3 * h + mlp, h)
        linear(p + "linear2", h, h + mlp)
        t.append((p + "norm.query_norm.scale", [128]))
        t.append((p + "norm.key_norm.scale", [128]))
        linear(p + "modulation.lin", 3 * h, h)
    linear("img_in", h, 64)
    linear("txt_in", h, 4096)
    for n, i in (("time_in", 256), ("vector_in", 768), ("guidance_in", 256)):
        linear(n + ".in_layer", h, i)
        linear(n + ".out_layer", h, h)
    linear("final_layer.linear", 64, h)
    linear("final_layer.adaLN_modulation.1", 2 * h, h)
    return t


def llama3_8b():
    h, inter, kv, vocab = 4096, 14336, 1024, 128256
    t = [("model.embed_tokens.weight", [vocab, h]), ("model.norm.weight", [h]), ("lm_head.weight", [vocab, h])]
    for i in range(32):
        p = f"model.layers.{i}."
        t += [(p + "self_attn.q_proj.weight", [h, h]), (p + "self_attn.k_proj.weight", [kv, h]),
              (p + "self_attn.v_proj.weight", [kv, h]), (p + "self_attn.o_proj.weight", [h, h]),
              (p + "mlp.gate_proj.weight", [inter, h]), (p + "mlp.up_proj.weight", [inter, h]),
              (p + "mlp.down_proj.weight", [h, inter]), (p + "input_layernorm.weight", [h]),
              (p + "post_attention_layernorm.weight", [h])]
    return t


ARCHS = {"flux1-dev": flux1_dev, "llama3-8b": llama3_8b}


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in ARCHS:
        sys.exit(f"usage: {sys.argv[0]} {'|'.join(ARCHS)} OUT.safetensors")
    tensors = sorted(ARCHS[sys.argv[1]]())
    header, off = {"__metadata__": {"format": "pt"}}, 0
    for name, shape in tensors:
        n = 1
        for d in shape:
            n *= d
        header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [off, off + 2 * n]}
        off += 2 * n
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(sys.argv[2], "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        f.truncate(8 + len(text) + off)
    print(f"{sys.argv[2]}: {len(tensors)} tensors, {off / 2**30:.3f} GB of bf16 (sparse)")


if __name__ == "__main__":
    main()
