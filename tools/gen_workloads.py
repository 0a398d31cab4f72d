#!/usr/bin/env python3
"""Generates workloads/*.yaml: per-layer bytes and FLOPs of SD 1.5 (and its ControlNet), SDXL (base
and refiner) and FLUX.1-dev, computed
from the models' public architecture configs (diffusers / BFL configs: channel widths, depths,
heads, token counts). A "layer" is a module the size engines offload: a ResNet block, an attention
or feed-forward sub-block, a Linear of a transformer block.

FLOPs are per denoising step (per run for encoders and the VAE) at the stated resolution: 2 FLOPs
per multiply-add for every weight use, plus attention's QK^T and AV (4 * N_q * N_kv * C). SD 1.5 and
SDXL run classifier-free guidance as batch 2; FLUX.1-dev is guidance-distilled (batch 1).

    python3 tools/gen_workloads.py            # rewrites workloads/*.yaml
    python3 tools/gen_workloads.py --check    # exits 1 if the checked-in files differ
"""
import os
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "workloads")


class Model:
    def __init__(self, name, dtype_bytes):
        self.name, self.b, self.layers = name, dtype_bytes, []
        self._pending = 0  # params of small tensors (norms) folded into the next layer

    def add(self, name, params, flops):
        self.layers.append([name, (params + self._pending) * self.b, flops])
        self._pending = 0

    def small(self, params):
        self._pending += params

    def flush(self):
        if self._pending and self.layers:
            self.layers[-1][1] += self._pending * self.b
            self._pending = 0

    def linear(self, name, cin, cout, tokens, bias=True, extra_flops=0):
        self.add(name, cin * cout + (cout if bias else 0), 2 * cin * cout * tokens + extra_flops)

    def params(self):
        return sum(l[1] for l in self.layers) // self.b


def attn_flops(nq, nkv, c):
    return 4 * nq * nkv * c


# ---------------------------------------------------------------- UNet (SD 1.5 / SDXL) ------------

def resnet(m, name, cin, cout, hw, batch, temb=1280):
    # Two layers, as module-level offloading sees a ResNet block: its two convolutions (the norms,
    # the time projection and the 1x1 shortcut ride with the nearest one).
    p1 = 2 * cin + 9 * cin * cout + cout + (temb * cout + cout if temb else 0)
    m.add(f"{name}.conv1", p1, 2 * batch * hw * 9 * cin * cout)
    p2 = 2 * cout + 9 * cout * cout + cout
    f2 = 2 * batch * hw * 9 * cout * cout
    if cin != cout:
        p2 += cin * cout + cout
        f2 += 2 * batch * hw * cin * cout
    m.add(f"{name}.conv2", p2, f2)


def transformer(m, name, c, depth, hw, ctx_dim, ctx_tokens, batch, linear_proj):
    n = hw
    m.small(2 * c)  # group norm
    m.add(f"{name}.proj_in", c * c + c, 2 * batch * n * c * c)
    for d in range(depth):
        b = f"{name}.transformer_blocks.{d}"
        m.small(2 * c)
        m.add(f"{b}.attn1", 4 * c * c + c, 2 * batch * n * 4 * c * c + batch * attn_flops(n, n, c))
        m.small(2 * c)
        m.add(f"{b}.attn2", 2 * c * c + 2 * ctx_dim * c + c,
              2 * batch * (n * 2 * c * c + ctx_tokens * 2 * ctx_dim * c) + batch * attn_flops(n, ctx_tokens, c))
        m.small(2 * c)
        m.add(f"{b}.ff.net.0", c * 8 * c + 8 * c, 2 * batch * n * 8 * c * c)
        m.add(f"{b}.ff.net.2", 4 * c * c + c, 2 * batch * n * 4 * c * c)
    m.add(f"{name}.proj_out", c * c + c, 2 * batch * n * c * c)


def unet(name, blocks, depths, layers_per_block, ctx_dim, latent, batch, linear_proj, add_embed_in, controlnet=False,
         mid_depth=None):
    # controlnet: the ControlNet of this UNet (diffusers ControlNetModel): the hint encoder, a copy of
    # the down and mid blocks, and a zero 1x1 convolution on each skip output and on the mid block.
    # The time embedding is 4 x the first block's width (1280 for SD 1.5 and SDXL base, 1536 for the
    # SDXL refiner); the mid block's transformer depth is the last block's unless given.
    m = Model(name, 2)
    ch0 = blocks[0]
    temb = 4 * ch0
    m.add("time_embedding", ch0 * temb + temb + temb * temb + temb, 2 * batch * (ch0 * temb + temb * temb))
    if add_embed_in:
        m.add("add_embedding", add_embed_in * temb + temb + temb * temb + temb,
              2 * batch * (add_embed_in * temb + temb * temb))
    hw = latent * latent
    m.add("conv_in", 4 * 9 * ch0 + ch0, 2 * batch * hw * 4 * 9 * ch0)
    if controlnet:
        # controlnet_cond_embedding: 3x3 convolutions on the image-sized hint (conditioning channels
        # 16, 32, 96, 256; three of them stride 2, down to the latent), then conv_out to ch0.
        chans, res_c, cin_c = [16, 32, 96, 256], latent * 8, 3
        m.add("controlnet_cond_embedding.conv_in", 9 * cin_c * chans[0] + chans[0],
              2 * batch * res_c * res_c * 9 * cin_c * chans[0])
        for k in range(len(chans) - 1):
            a, b = chans[k], chans[k + 1]
            m.add(f"controlnet_cond_embedding.blocks.{2 * k}", 9 * a * a + a, 2 * batch * res_c * res_c * 9 * a * a)
            res_c //= 2
            m.add(f"controlnet_cond_embedding.blocks.{2 * k + 1}", 9 * a * b + b, 2 * batch * res_c * res_c * 9 * a * b)
        m.add("controlnet_cond_embedding.conv_out", 9 * chans[-1] * ch0 + ch0,
              2 * batch * hw * 9 * chans[-1] * ch0)
    res = latent
    skips = [ch0]
    cin = ch0
    for i, (c, depth) in enumerate(zip(blocks, depths)):
        for j in range(layers_per_block):
            resnet(m, f"down_blocks.{i}.resnets.{j}", cin, c, res * res, batch, temb)
            cin = c
            if depth:
                transformer(m, f"down_blocks.{i}.attentions.{j}", c, depth, res * res, ctx_dim, 77, batch, linear_proj)
            skips.append(c)
        if i < len(blocks) - 1:
            res //= 2
            m.add(f"down_blocks.{i}.downsamplers.0", 9 * c * c + c, 2 * batch * res * res * 9 * c * c)
            skips.append(c)
    c = blocks[-1]
    resnet(m, "mid_block.resnets.0", c, c, res * res, batch, temb)
    transformer(m, "mid_block.attentions.0", c, mid_depth or depths[-1] or 1, res * res, ctx_dim, 77, batch,
                linear_proj)
    resnet(m, "mid_block.resnets.1", c, c, res * res, batch, temb)
    if controlnet:
        # zero convolutions, applied to each skip output (at its resolution) and to the mid block
        r, outs = latent, [(ch0, latent)]  # conv_in's output first, then each resnet's and downsampler's
        for i, ch in enumerate(blocks):
            outs += [(ch, r)] * layers_per_block
            if i < len(blocks) - 1:
                r //= 2
                outs.append((ch, r))
        for k, (ch, r) in enumerate(outs):
            m.add(f"controlnet_down_blocks.{k}", ch * ch + ch, 2 * batch * r * r * ch * ch)
        m.add("controlnet_mid_block", c * c + c, 2 * batch * res * res * c * c)
        return m
    rev = list(reversed(blocks))
    rdepth = list(reversed(depths))
    prev = rev[0]
    for i, (c, depth) in enumerate(zip(rev, rdepth)):
        for j in range(layers_per_block + 1):
            skip = skips.pop()
            resnet(m, f"up_blocks.{i}.resnets.{j}", prev + skip, c, res * res, batch, temb)
            prev = c
            if depth:
                transformer(m, f"up_blocks.{i}.attentions.{j}", c, depth, res * res, ctx_dim, 77, batch, linear_proj)
        if i < len(rev) - 1:
            res *= 2
            m.add(f"up_blocks.{i}.upsamplers.0", 9 * c * c + c, 2 * batch * res * res * 9 * c * c)
    m.small(2 * ch0)
    m.add("conv_out", 9 * ch0 * 4 + 4, 2 * batch * latent * latent * 9 * ch0 * 4)
    return m


# ---------------------------------------------------------------- VAE decoder ----------------------

def vae_decoder(latent_ch, latent, batch=1):
    m = Model("vae_decoder", 2)
    res = latent
    m.add("post_quant_conv", latent_ch * latent_ch + latent_ch, 2 * batch * res * res * latent_ch * latent_ch)
    m.add("decoder.conv_in", 9 * latent_ch * 512 + 512, 2 * batch * res * res * 9 * latent_ch * 512)
    resnet_v = lambda n, a, b, r: resnet(m, n, a, b, r * r, batch, temb=0)
    resnet_v("decoder.mid_block.resnets.0", 512, 512, res)
    n = res * res
    m.small(2 * 512)
    m.add("decoder.mid_block.attentions.0", 4 * 512 * 512 + 4 * 512,
          2 * batch * n * 4 * 512 * 512 + batch * attn_flops(n, n, 512))
    resnet_v("decoder.mid_block.resnets.1", 512, 512, res)
    cin = 512
    for i, c in enumerate([512, 512, 256, 128]):
        for j in range(3):
            resnet_v(f"decoder.up_blocks.{i}.resnets.{j}", cin, c, res)
            cin = c
        if i < 3:
            res *= 2
            m.add(f"decoder.up_blocks.{i}.upsamplers.0", 9 * c * c + c, 2 * batch * res * res * 9 * c * c)
    m.small(2 * 128)
    m.add("decoder.conv_out", 9 * 128 * 3 + 3, 2 * batch * res * res * 9 * 128 * 3)
    return m


# ---------------------------------------------------------------- text encoders --------------------

def clip_text(name, d, mlp, layers, tokens, batch, vocab=49408, proj=0):
    m = Model(name, 2)
    m.add("embeddings", vocab * d + 77 * d, 0)
    for i in range(layers):
        m.small(2 * d)
        m.add(f"encoder.layers.{i}.self_attn", 4 * (d * d + d),
              2 * batch * tokens * 4 * d * d + batch * attn_flops(tokens, tokens, d))
        m.small(2 * d)
        m.add(f"encoder.layers.{i}.mlp", d * mlp + mlp + mlp * d + d, 2 * batch * tokens * 2 * d * mlp)
    m.small(2 * d)
    if proj:
        m.add("text_projection", d * proj, 2 * batch * d * proj)
    m.flush()
    return m


def t5_encoder(layers=24, d=4096, ff=10240, tokens=512, batch=1, vocab=32128):
    m = Model("t5_xxl", 2)
    m.add("shared", vocab * d, 0)
    for i in range(layers):
        m.small(d)
        m.add(f"encoder.block.{i}.layer.0.SelfAttention", 4 * d * d,
              2 * batch * tokens * 4 * d * d + batch * attn_flops(tokens, tokens, d))
        m.small(d)
        m.add(f"encoder.block.{i}.layer.1.DenseReluDense", 3 * d * ff, 2 * batch * tokens * 3 * d * ff)
    m.small(d)
    m.flush()
    return m


# ---------------------------------------------------------------- FLUX.1-dev transformer -----------

def flux_transformer(img_tokens=4096, txt_tokens=512, h=3072, mlp=12288, double=19, single=38):
    m = Model("transformer", 2)
    t = img_tokens + txt_tokens
    m.linear("img_in", 64, h, img_tokens)
    m.linear("time_in.in_layer", 256, h, 1)
    m.linear("time_in.out_layer", h, h, 1)
    m.linear("guidance_in.in_layer", 256, h, 1)
    m.linear("guidance_in.out_layer", h, h, 1)
    m.linear("vector_in.in_layer", 768, h, 1)
    m.linear("vector_in.out_layer", h, h, 1)
    m.linear("txt_in", 4096, h, txt_tokens)
    for i in range(double):
        b = f"double_blocks.{i}"
        for s, n in (("img", img_tokens), ("txt", txt_tokens)):
            m.linear(f"{b}.{s}_mod.lin", h, 6 * h, 1)
            m.small(2 * 128)  # q/k RMS norms
            m.linear(f"{b}.{s}_attn.qkv", h, 3 * h, n)
            # the joint attention over all t tokens runs between qkv and proj: counted with img proj
            m.linear(f"{b}.{s}_attn.proj", h, h, n, extra_flops=attn_flops(t, t, h) if s == "img" else 0)
            m.linear(f"{b}.{s}_mlp.0", h, mlp, n)
            m.linear(f"{b}.{s}_mlp.2", mlp, h, n)
    for i in range(single):
        b = f"single_blocks.{i}"
        m.linear(f"{b}.modulation.lin", h, 3 * h, 1)
        m.small(2 * 128)
        m.linear(f"{b}.linear1", h, 3 * h + mlp, t)
        m.linear(f"{b}.linear2", h + mlp, h, t, extra_flops=attn_flops(t, t, h))
    m.linear("final_layer.adaLN_modulation", h, 2 * h, 1)
    m.linear("final_layer.linear", h, 64, img_tokens)
    return m


# ---------------------------------------------------------------- output ---------------------------

def vae_working_mem(width, height, dtype_bytes):
    """InvokeAI's estimate for a VAE decode: H * W * bytes * 960 * 1.2 (see docs/workloads.md)."""
    return int(width * height * dtype_bytes * 960 * 1.2)


def emit(path, name, desc, res, dtype, steps, models, pipeline):
    lines = [f"# Generated by tools/gen_workloads.py -- do not edit by hand.", f"name: {name}",
             f"description: \"{desc}\"", f"resolution: {res}x{res}", f"dtype: {dtype}", f"steps: {steps}", "models:"]
    for m in models:
        m.flush()
        total = sum(l[1] for l in m.layers)
        lines.append(f"  # {m.name}: {len(m.layers)} layers, {m.params() / 1e6:.1f}M parameters, "
                     f"{total / 2**30:.3f} GB")
        lines.append(f"  - name: {m.name}")
        lines.append("    layers:")
        for ln, b, f in m.layers:
            lines.append(f"      - {{name: {ln}, bytes: {b}, flops: {f:.6g}}}")
    lines.append("pipeline:")
    for stage in pipeline:
        lines.append("  - {" + ", ".join(f"{k}: {v}" for k, v in stage.items()) + "}")
    return path, "\n".join(lines) + "\n"


def build():
    out = []
    # SD 1.5 at 512x512, fp16, CFG batch 2. Config: runwayml/stable-diffusion-v1-5 unet/config.json.
    sd15 = unet("unet", [320, 640, 1280, 1280], [1, 1, 1, 0], 2, 768, 64, 2, False, 0)
    out.append(emit("sd15.yaml", "sd-1.5", "Stable Diffusion 1.5, 512x512, fp16, CFG (batch 2)", 512, "float16", 30,
                    [clip_text("text_encoder", 768, 3072, 12, 77, 2), sd15, vae_decoder(4, 64)],
                    [{"model": "text_encoder"}, {"model": "unet", "repeat": "steps", "working_mem_bytes": 1 << 30},
                     {"model": "vae_decoder", "working_mem_bytes": vae_working_mem(512, 512, 2)}]))
    # SD 1.5 with a ControlNet (lllyasviel/control_v11p_sd15_canny, diffusers ControlNetModel): every
    # denoising step runs the ControlNet, then the UNet it conditions.
    cn = unet("controlnet", [320, 640, 1280, 1280], [1, 1, 1, 0], 2, 768, 64, 2, False, 0, controlnet=True)
    sd15b = unet("unet", [320, 640, 1280, 1280], [1, 1, 1, 0], 2, 768, 64, 2, False, 0)
    out.append(emit("sd15-controlnet.yaml", "sd-1.5+controlnet",
                    "Stable Diffusion 1.5 with a ControlNet, 512x512, fp16, CFG (batch 2)", 512, "float16", 30,
                    [clip_text("text_encoder", 768, 3072, 12, 77, 2), cn, sd15b, vae_decoder(4, 64)],
                    [{"model": "text_encoder"},
                     {"models": "[controlnet, unet]", "repeat": "steps", "working_mem_bytes": 1 << 30},
                     {"model": "vae_decoder", "working_mem_bytes": vae_working_mem(512, 512, 2)}]))
    # The same with guidance as two passes (InvokeAI's sequential_guidance, for low VRAM): every step
    # runs the ControlNet once for both halves (batch 2), then the UNet twice, prompt and negative
    # prompt (batch 1 each).
    sd15c = unet("unet", [320, 640, 1280, 1280], [1, 1, 1, 0], 2, 768, 64, 1, False, 0)
    out.append(emit("sd15-controlnet-seqcfg.yaml", "sd-1.5+controlnet-seqcfg",
                    "Stable Diffusion 1.5 with a ControlNet, 512x512, fp16, guidance as two UNet passes (batch 1 "
                    "each) after one ControlNet pass (batch 2)", 512, "float16", 30,
                    [clip_text("text_encoder", 768, 3072, 12, 77, 2), cn, sd15c, vae_decoder(4, 64)],
                    [{"model": "text_encoder"},
                     {"models": "[controlnet, unet, unet]", "repeat": "steps", "working_mem_bytes": 1 << 30},
                     {"model": "vae_decoder", "working_mem_bytes": vae_working_mem(512, 512, 2)}]))
    # SDXL base at 1024x1024, fp16, CFG. Config: stabilityai/stable-diffusion-xl-base-1.0 unet/config.json.
    sdxl = unet("unet", [320, 640, 1280], [0, 2, 10], 2, 2048, 128, 2, True, 2816)
    out.append(emit("sdxl.yaml", "sdxl-base-1.0", "SDXL base 1.0, 1024x1024, fp16, CFG (batch 2)", 1024, "float16", 30,
                    [clip_text("text_encoder", 768, 3072, 12, 77, 2),
                     clip_text("text_encoder_2", 1280, 5120, 32, 77, 2, proj=1280), sdxl, vae_decoder(4, 128)],
                    [{"model": "text_encoder"}, {"model": "text_encoder_2"},
                     {"model": "unet", "repeat": "steps", "working_mem_bytes": 2 << 30},
                     {"model": "vae_decoder", "working_mem_bytes": vae_working_mem(1024, 1024, 2)}]))
    # FLUX.1-dev at 1024x1024, bf16: 4096 image tokens (128x128 latent, 2x2 patches), 512 T5 tokens.
    flux = [clip_text("clip_l", 768, 3072, 12, 77, 1), t5_encoder(), flux_transformer(), vae_decoder(16, 128)]
    out.append(emit("flux1-dev.yaml", "flux.1-dev", "FLUX.1-dev, 1024x1024, bf16, guidance-distilled (batch 1)", 1024,
                    "bfloat16", 28, flux,
                    [{"model": "clip_l"}, {"model": "t5_xxl"},
                     {"model": "transformer", "repeat": "steps", "working_mem_bytes": 3 << 30},
                     {"model": "vae_decoder", "working_mem_bytes": vae_working_mem(1024, 1024, 2)}]))
    # Images in a row with a few-step model (FLUX.1-schnell: FLUX.1's architecture, 4 steps): each
    # repetition of the stage is one whole image (encoders, 4 transformer steps, VAE decode), so a
    # "step" of this workload is an image; the stage reserves the larger working memory (the
    # transformer's) throughout.
    out.append(emit("flux1-schnell-images.yaml", "flux.1-schnell-images",
                    "FLUX.1-schnell, 1024x1024, bf16, 4 steps: one repetition is one whole image", 1024,
                    "bfloat16", 8, flux,
                    [{"models": "[clip_l, t5_xxl, transformer, transformer, transformer, transformer, vae_decoder]",
                      "repeat": "steps", "working_mem_bytes": 3 << 30}]))
    # Images in a row with an 8-step SDXL distillation (SDXL-Lightning's 8-step UNet: SDXL base's
    # architecture, run without classifier-free guidance, so batch 1): 11 passes per image (two text
    # encoders, the UNet 8 times, the VAE); each UNet pass reserves 1 GB of working memory (half of
    # the base model's 2 GB at batch 2) and the VAE decode InvokeAI's estimate, each while it runs.
    sdxl1 = unet("unet", [320, 640, 1280], [0, 2, 10], 2, 2048, 128, 1, True, 2816)
    out.append(emit("sdxl-lightning-images.yaml", "sdxl-lightning-8step-images",
                    "SDXL-Lightning 8-step, 1024x1024, fp16, no CFG (batch 1): one repetition is one whole image",
                    1024, "float16", 8,
                    [clip_text("text_encoder", 768, 3072, 12, 77, 1),
                     clip_text("text_encoder_2", 1280, 5120, 32, 77, 1, proj=1280), sdxl1, vae_decoder(4, 128)],
                    [{"models": "[text_encoder, text_encoder_2" + ", unet" * 8 + ", vae_decoder]",
                      "repeat": "steps",
                      "working_mem_bytes": "{unet: %d, vae_decoder: %d}" % (1 << 30, vae_working_mem(1024, 1024, 2))}]))
    # Images in a row with a few-step SD 1.5 and a ControlNet (an LCM distillation, 8 steps, run
    # without classifier-free guidance, so batch 1): 18 passes per image (the text encoder, the
    # ControlNet and the UNet every step, the VAE); the stage reserves the UNet's working memory.
    cn1 = unet("controlnet", [320, 640, 1280, 1280], [1, 1, 1, 0], 2, 768, 64, 1, False, 0, controlnet=True)
    sd15l = unet("unet", [320, 640, 1280, 1280], [1, 1, 1, 0], 2, 768, 64, 1, False, 0)
    out.append(emit("sd15-controlnet-lcm-images.yaml", "sd-1.5+controlnet-lcm-8step-images",
                    "SD 1.5 (LCM, 8 steps) with a ControlNet, 512x512, fp16, no CFG (batch 1): one repetition "
                    "is one whole image", 512, "float16", 8,
                    [clip_text("text_encoder", 768, 3072, 12, 77, 1), cn1, sd15l, vae_decoder(4, 64)],
                    [{"models": "[text_encoder" + ", controlnet, unet" * 8 + ", vae_decoder]",
                      "repeat": "steps", "working_mem_bytes": 1 << 30}]))
    # Images in a row with SD 1.5 and a ControlNet at diffusers' default 50 steps, CFG (batch 2): 102
    # passes per image, more than a step group's cycle holds, so the ControlNet and the UNet are
    # planned as a pair and the text encoder and the VAE run beside it once per image; the UNet's
    # passes reserve 1 GB of working memory, the VAE decode InvokeAI's estimate, each while it runs.
    out.append(emit("sd15-controlnet-images.yaml", "sd-1.5+controlnet-50step-images",
                    "Stable Diffusion 1.5 with a ControlNet, 512x512, fp16, CFG (batch 2), 50 steps: one "
                    "repetition is one whole image", 512, "float16", 6,
                    [clip_text("text_encoder", 768, 3072, 12, 77, 2), cn, sd15b, vae_decoder(4, 64)],
                    [{"models": "[text_encoder" + ", controlnet, unet" * 50 + ", vae_decoder]",
                      "repeat": "steps",
                      "working_mem_bytes": "{unet: %d, vae_decoder: %d}" % (1 << 30, vae_working_mem(512, 512, 2))}]))
    # Images in a row with SDXL base and its refiner (the "ensemble of expert denoisers" way: the base
    # runs the first 80% of 30 steps, the refiner the last 20%, both with classifier-free guidance,
    # batch 2): 33 passes per image. Refiner config: stabilityai/stable-diffusion-xl-refiner-1.0
    # unet/config.json (widths 384, 768, 1536, 1536; transformers of depth 4 in the middle two levels
    # and the mid block; 1280-wide context from OpenCLIP bigG alone; 2560 inputs to its added
    # embedding). The refiner takes the base's bigG text embeddings (as diffusers' example passes
    # text_encoder_2 to both). Each denoiser pass reserves 2 GB of working memory, the VAE decode
    # InvokeAI's estimate, each while it runs.
    refiner = unet("refiner", [384, 768, 1536, 1536], [0, 4, 4, 0], 2, 1280, 128, 2, True, 2560, mid_depth=4)
    out.append(emit("sdxl-refiner-images.yaml", "sdxl-base-refiner-images",
                    "SDXL base 1.0 (24 steps) then refiner 1.0 (6 steps), 1024x1024, fp16, CFG (batch 2): one "
                    "repetition is one whole image", 1024, "float16", 8,
                    [clip_text("text_encoder", 768, 3072, 12, 77, 2),
                     clip_text("text_encoder_2", 1280, 5120, 32, 77, 2, proj=1280), sdxl, refiner,
                     vae_decoder(4, 128)],
                    [{"models": "[text_encoder, text_encoder_2" + ", unet" * 24 + ", refiner" * 6 + ", vae_decoder]",
                      "repeat": "steps",
                      "working_mem_bytes": "{unet: %d, refiner: %d, vae_decoder: %d}" % (
                          2 << 30, 2 << 30, vae_working_mem(1024, 1024, 2))}]))
    return out


def main():
    check = "--check" in sys.argv
    bad = 0
    for name, text in build():
        path = os.path.join(ROOT, name)
        if check:
            old = open(path).read() if os.path.exists(path) else ""
            if old != text:
                print(f"{path} is out of date: run tools/gen_workloads.py", file=sys.stderr)
                bad = 1
        else:
            with open(path, "w") as f:
                f.write(text)
            print(f"wrote {path}")
    sys.exit(bad)


if __name__ == "__main__":
    main()
