"""The denoiser's layers of a workload file (docs/workloads.md), for the analysis tools beside it."""
import yaml


def denoiser_layers(path):
    """(model name, [(bytes, flops), ...] in execution order) of the stage that repeats `steps`."""
    with open(path) as f:
        doc = yaml.safe_load(f)
    models = doc.get("models") or [{"name": doc.get("name", "model"), "layers": doc["layers"]}]
    name = models[0]["name"]
    for stage in doc.get("pipeline") or []:
        if str(stage.get("repeat", "")) == "steps":
            name = stage["model"]
    model = next(m for m in models if m["name"] == name)
    if any("use" in l for l in model["layers"]):
        raise SystemExit(f"{path}: model '{name}' runs a layer again ({{use: NAME}}); "
                         "these analysis tools model passes of distinct layers only")
    return name, [(float(l["bytes"]), float(l.get("flops", 0))) for l in model["layers"]], \
        [l["name"] for l in model["layers"]]
