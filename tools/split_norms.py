#!/usr/bin/env python3
"""Rewrites a workload with its norms as layers of their own, as an engine that registers every
module with weights (InvokeAI's partial loading does) would show them to the cache: each layer over
100 kB is preceded by a norm of 2.5 kB (5 kB before layers over 20 MB) taken out of its bytes, with
next to no compute. The shipped workloads fold norms into the next layer (docs/workloads.md); this
is for measuring how the cache copes with many tiny layers (docs/performance.md).

    python3 tools/split_norms.py workloads/flux1-dev.yaml /tmp/flux1-dev-norms.yaml
"""
import sys

import yaml


def split(doc):
    models = doc.get("models") or [doc]
    for m in models:
        out = []
        for layer in m["layers"]:
            if layer["bytes"] > 100000:
                nb = 5120 if layer["bytes"] > 20e6 else 2560
                out.append({"name": layer["name"] + ".norm", "bytes": nb, "flops": float(nb * 2048)})
                out.append({"name": layer["name"], "bytes": layer["bytes"] - nb, "flops": layer["flops"]})
            else:
                out.append(layer)
        m["layers"] = out
    return doc


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: split_norms.py IN.yaml OUT.yaml")
    with open(sys.argv[1]) as f:
        doc = split(yaml.safe_load(f))
    with open(sys.argv[2], "w") as f:
        yaml.safe_dump(doc, f, default_flow_style=None, sort_keys=False)
