#!/usr/bin/env python3
"""A random workload for `vramcache simulate`, from a seed: 1-4 models of 1-300 layers (sizes and
FLOPs log-normal, some layers without compute, a few duplicate names, some run again later in the
pass), a random pipeline (models once
or repeated, the denoiser alone or in a model list, once or twice per step, working memory for the
stage or per model), and random simulate arguments (device 0.5-48 GB, link, TFLOP/s, mode, policy,
blocks, stream slots, RAM and disk limits, one of three configs). Writes the workload to stdout and
the arguments to stderr. For sweeps that check every run ends with figures or a clean error
(docs/reliability.md):

    python3 tools/random_workload.py 7 > w.yaml 2> args.txt
    build/tools/vramcache simulate --workload w.yaml $(cat args.txt)   # exit 0 or 1, never a crash

The configs it names are written next to the workload when --write-configs DIR is given. With
--images the pipeline is images in a row instead: one stage whose repetition is a whole image
(models before the loop, the loop's one or two models in turn 1-120 times, models after it), so
that cycles of every length, and pairs with encoders and decoders beside them, are tried; the
models and the arguments are the seed's as without it.
"""
import random
import sys

CONFIGS = {
    "cfg0.yaml": "device_working_mem_gb: 1\noffload_max_gpu_memory: 1\n",
    "cfg1.yaml": "device_working_mem_gb: 0.5\nsmart_partial_loading: true\n",
    "cfg2.yaml": "max_cache_vram_gb: 2\nkeep_ram_copy_of_weights: false\n",
}


def images_pipeline(seed, names):
    """One stage, repeated `steps` times, that runs a whole image: some models once before the loop,
    the loop (one or two models in turn) 1-120 times, some once after (at most 256 passes)."""
    ri = random.Random(seed * 104729 + 5)
    ri.shuffle(names)
    loop = names[:ri.choice([1, 2])] if len(names) > 1 else names[:1]
    rest = [n for n in names if n not in loop]
    before = [n for n in rest if ri.random() < 0.6]
    after = [n for n in rest if n not in before and ri.random() < 0.7]
    k = min(ri.choice([1, 2, 4, 8, 20, 30, 31, 32, 50, 120]), (256 - len(before) - len(after)) // len(loop))
    lst = before + loop * k + after
    if ri.random() < 0.4:
        wm = ", working_mem_bytes: {%s: %d}" % (ri.choice(lst), ri.randint(0, 2**31))
    else:
        wm = f", working_mem_bytes: {ri.randint(0, 2**31)}" if ri.random() < 0.3 else ""
    return ["pipeline:", f"  - {{models: [{', '.join(lst)}], repeat: steps{wm}}}"]


def workload(seed, images=False):
    r = random.Random(seed)
    models = []
    for m in range(r.choice([1, 1, 2, 3, 4])):
        n = r.choice([1, 2, 3, 5, 10, 30, 100, 300])
        mu = r.choice([12, 16, 18, 20])
        layers = []
        for i in range(n):
            b = min(max(1, int(r.lognormvariate(mu, r.choice([0.1, 1, 2])))), 3 * 2**29)
            f = r.choice([0, r.lognormvariate(r.choice([18, 24, 28]), 1.5)])
            layers.append((f"l{i}" if r.random() < 0.95 else "dup", b, f))
        models.append((f"m{m}", layers))
    out = [f"name: rand{seed}", f"steps: {r.choice([1, 2, 3, 5, 8, 20])}", "models:"]
    # Some models run a layer again later in their pass ({use: NAME}); from a generator of their
    # own, so a seed's other choices are what they were before uses existed.
    ru = random.Random(seed * 7919 + 1)
    for name, layers in models:
        out += [f"  - name: {name}", "    layers:"]
        lines = [f"      - {{name: {n}, bytes: {b}, flops: {f:.6g}}}" for n, b, f in layers]
        if ru.random() < 0.2:
            for _ in range(ru.choice([1, 2, 5])):
                at = ru.randrange(len(lines) + 1)
                earlier = [ln.split("name: ")[1].split(",")[0] for ln in lines[:at] if "name: " in ln]
                if earlier:
                    extra = f", flops: {ru.lognormvariate(24, 1.5):.6g}" if ru.random() < 0.3 else ""
                    lines.insert(at, f"      - {{use: {ru.choice(earlier)}{extra}}}")
        out += lines
    if r.random() < 0.8:
        out.append("pipeline:")
        names = [m[0] for m in models]
        den = r.choice(names)
        for n in names:
            if n != den and r.random() < 0.7:
                wm = f", working_mem_bytes: {r.randint(0, 2**31)}" if r.random() < 0.4 else ""
                rep = f", repeat: {r.randint(1, 3)}" if r.random() < 0.3 else ""
                out.append(f"  - {{model: {n}{wm}{rep}}}")
        if r.random() < 0.4 and len(names) > 1:
            lst = [x for x in names if r.random() < 0.5] or [den]
            if den not in lst:
                lst.append(den)
            if r.random() < 0.3:
                lst.append(den)
            if r.random() < 0.4:
                wm = f", working_mem_bytes: {{{den}: {r.randint(0, 2**31)}}}"
            else:
                wm = f", working_mem_bytes: {r.randint(0, 2**31)}" if r.random() < 0.3 else ""
            out.append(f"  - {{models: [{', '.join(lst)}], repeat: steps{wm}}}")
        else:
            wm = f", working_mem_bytes: {r.randint(0, 2**31)}" if r.random() < 0.4 else ""
            out.append(f"  - {{model: {den}, repeat: steps{wm}}}")
        if r.random() < 0.3:
            out.append(f"  - {{model: {r.choice(names)}}}")
    args = ["--vram-gb", str(r.choice([0.5, 1, 2, 3, 3.5, 4, 6, 8, 12, 16, 24, 48])),
            "--bandwidth-gbps", str(r.choice([1, 8, 25, 55])), "--tflops", str(r.choice([1, 10, 60, 400]))]
    if r.random() < 0.6:
        args += ["--mode", r.choice(["none", "model", "sequential", "balanced"])]
    if r.random() < 0.2:
        args += ["--policy", "lru"]
    if r.random() < 0.2:
        args += ["--block-layers", str(r.choice([2, 3, 8]))]
    if r.random() < 0.15:
        args += ["--stream-slots", r.choice(["1", "2", "3", "tune"])]
    if r.random() < 0.2:
        args += ["--ram-gb", str(r.choice([4, 8, 16, 64])), "--disk-gbps", str(r.choice([0.5, 2, 7]))]
    if r.random() < 0.5:
        args += ["--config", "cfg%d.yaml" % r.randint(0, 2)]
    if images:
        if "pipeline:" in out:
            out = out[:out.index("pipeline:")]
        out += images_pipeline(seed, [m[0] for m in models])
    return "\n".join(out), " ".join(args)


if __name__ == "__main__":
    argv = sys.argv[1:]
    images = "--images" in argv
    if images:
        argv.remove("--images")
    if len(argv) not in (1, 3) or (len(argv) == 3 and argv[1] != "--write-configs"):
        sys.exit("usage: random_workload.py SEED [--images] [--write-configs DIR]")
    if len(argv) == 3:
        for name, text in CONFIGS.items():
            with open(f"{argv[2]}/{name}", "w") as f:
                f.write(text)
    text, args = workload(int(argv[0]), images)
    print(text)
    print(args, file=sys.stderr)
