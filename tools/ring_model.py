#!/usr/bin/env python3
"""How far a better choice of streamed layers could take a denoiser pass, in two models of the pass.

bench_streaming reports what the cache reaches; tools/stream_bound.py what no schedule can beat.
This tool sits between them: for one set of streamed layers (the rest kept resident) and the room
that leaves them, it replays a steady-state pass in

  - the *ring* model, which does what the cache's streaming region does (src/residency.c,
    ring_place and copy_fenced): streamed layers are placed one after another in a ring of that
    room, wrapping to its start when the next one does not fit before its end; a layer's copy goes
    part by part, each part after the release of the layer it overwrites; one copy engine, in
    order, paying a fixed latency per part; a layer computes once it has arrived and the previous
    one is done (kept layers at once);
  - the *wrap* model, the ring without its end: a layer that does not fit before the ring's end
    continues at its start (as it could in device pages mapped twice, back to back, through the
    CUDA/HIP virtual-memory calls; the cache does not do this), so no room is left unused for a lap;
  - the *fluid* model, the same without placement: any byte freed anywhere takes the next byte
    to arrive, and a layer's copy pays the latency once;

and, with --search, looks for the set with the shortest pass (in the ring model, or the wrap or
fluid one with --search-model) among those moving at most
--bytes-goal times the bytes bound (local search: swap, add or drop one layer of at most 6% of
that bound; simulated annealing with --temperature). The set to start from is the cache's own, read from a trace of `vramcache simulate`
(the layers it uploaded in the last two denoiser passes), or else the smallest layers.

    apt-get install -y python3-yaml
    ./build/tools/vramcache simulate --workload workloads/sd15.yaml --vram-gb 2.2007 \\
        --bandwidth-gbps 25 --steps 8 --config cfg.yaml --trace t.json
    python3 tools/ring_model.py workloads/sd15.yaml --usable-fraction 0.75 --bandwidth-gbps 25 \\
        --trace t.json --search 20000

`--compare` checks the model against the simulator's own figure for the traced run (CI does, for
SD 1.5 at 75% and 25 GB/s). Single models only (a step group's passes are not modelled); figures are per pass over
max(compute, (bytes - usable) / bandwidth), as bench_streaming's time/LB. Measured results:
docs/performance.md.
"""
import argparse
import json
import math
import random
import sys

try:
    from workload_layers import denoiser_layers
except ImportError as e:
    sys.exit(f"ring_model.py: {e.name} is missing: apt-get install -y python3-yaml")


class Pass:
    def __init__(self, layers, usable, bandwidth, latency, flops, part_min=0.0):
        self.b = [b for b, _ in layers]
        self.c = [f / flops for _, f in layers]
        self.n = len(layers)
        self.total = sum(self.b)
        self.usable = usable
        self.bw = bandwidth
        self.lat = latency
        self.part_min = part_min
        self.lb_bytes = max(0.0, self.total - usable)
        self.lb_time = max(sum(self.c), self.lb_bytes / bandwidth)

    def room(self, stream):
        """What the streamed layers may occupy: usable VRAM less the kept layers."""
        return self.usable - (self.total - sum(self.b[j] for j in stream))

    def ring(self, stream, room, passes=4, wrap=False):
        n, b, c = self.n, self.b, self.c
        occ = []  # (start, end, occurrence) of the ring's occupants
        off = copy_free = t_end = 0.0
        release, arrive, starts = {}, {}, []
        for k in range(n * passes):
            j = k % n
            if j in stream:  # placed and copied as its turn comes (copies stay in pass order)
                if not wrap and off + b[j] > room + 1e-6:
                    off = 0.0
                s, e = off, off + b[j]
                parts, rest = [], []
                sh = room if wrap else 0.0
                for o in occ:
                    (parts if o[1] + sh > s + 1e-9 and o[0] + sh < e - 1e-9 else rest).append(o)
                if wrap:
                    parts = [(ps + room, pe + room, q) for ps, pe, q in parts]
                occ = rest + [(s, e, k)]
                off = e
                # as copy_fenced: the part up to each occupant goes before waiting for its release,
                # when it is at least the minimum part; the rest after the last occupant's release
                done, t = s, copy_free
                for ps, pe, q in sorted(parts):
                    at = max(ps, s)
                    if at > done + 1e-9 and at - done >= self.part_min:
                        t += self.lat + (at - done) / self.bw
                        done = at
                    t = max(t, release[q])
                if done < e - 1e-9:
                    t += self.lat + (e - done) / self.bw
                copy_free = arrive[k] = t
            start = max(t_end, arrive.get(k, 0.0))
            starts.append(start)
            t_end = release[k] = start + c[j]
        return (starts[(passes - 1) * n] - starts[(passes - 2) * n]) / self.lb_time

    def fluid(self, stream, room, passes=4):
        n, b, c = self.n, self.b, self.c
        order = [k for k in range(n * passes) if k % n in stream]
        got = {}
        qi, in_use, t, t_end, lat_left = 0, 0.0, 0.0, 0.0, self.lat
        starts, k, busy = [], 0, None  # busy: (occurrence, end) of the layer computing
        while k < n * passes or busy:
            if busy is None and k < n * passes:
                j = k % n
                if j not in stream or got.get(k, 0.0) >= b[j] - 1e-6:
                    starts.append(t)
                    busy = (k, t + c[j])
                    k += 1
                    continue
            q = order[qi] if qi < len(order) else None
            copying = q is not None and in_use < room - 1e-6 and q < k + 2 * n
            ends = [busy[1]] if busy else []
            if copying:
                ends += [t + lat_left] if lat_left > 0 else \
                    [t + (b[q % n] - got.get(q, 0.0)) / self.bw, t + (room - in_use) / self.bw]
            if not ends:
                raise ValueError("no progress: the room is smaller than a streamed layer")
            dt = min(ends) - t
            t = min(ends)
            if copying and lat_left > 0:
                lat_left = lat_left - dt if lat_left - dt > 1e-12 else 0.0
            elif copying:
                amount = min(dt * self.bw, b[q % n] - got.get(q, 0.0), room - in_use)
                got[q] = got.get(q, 0.0) + amount
                in_use += amount
                if got[q] >= b[q % n] - 1e-6:
                    qi, lat_left = qi + 1, self.lat
            if busy and t >= busy[1] - 1e-15:
                if busy[0] % n in stream:
                    in_use -= b[busy[0] % n]
                busy = None
        return (starts[(passes - 1) * n] - starts[(passes - 2) * n]) / self.lb_time


def traced_set(path, model, names):
    with open(path) as f:
        doc = json.load(f)
    events = doc["traceEvents"] if isinstance(doc, dict) else doc
    runs = sorted(e["ts"] for e in events if e.get("ph") == "X" and e.get("cat") == model)
    if len(runs) < 3 * len(names):
        sys.exit(f"ring_model.py: {path} holds fewer than 3 passes of '{model}'")
    since = runs[len(runs) - 2 * len(names)]
    index = {nm: i for i, nm in enumerate(names)}
    return {index[e["name"]] for e in events
            if e.get("ph") == "X" and e.get("cat") in ("upload", "prefetch") and e["ts"] >= since
            and (e.get("args") or {}).get("model") == model and e["name"] in index}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("workload")
    ap.add_argument("--usable-fraction", type=float, help="usable VRAM as a fraction of the denoiser's bytes")
    ap.add_argument("--usable-gb", type=float, help="usable VRAM in GB of 2^30 bytes")
    ap.add_argument("--bandwidth-gbps", type=float, default=25)
    ap.add_argument("--tflops", type=float, default=60)
    ap.add_argument("--latency-us", type=float, default=10, help="per copy, as the simulator's default")
    ap.add_argument("--copy-part-min-mb", type=float, default=1.0,
                    help="smallest part of a fenced copy in MB of 2^20 bytes, as the cache's copy_part_min_bytes")
    ap.add_argument("--trace", help="trace of `vramcache simulate` giving the cache's streamed set")
    ap.add_argument("--search", type=int, default=0, help="local search moves to try")
    ap.add_argument("--search-model", choices=("ring", "fluid", "wrap"), default="ring", help="what the search minimises")
    ap.add_argument("--bytes-goal", type=float, default=1.05)
    ap.add_argument("--temperature", type=float, default=0.0,
                    help="simulated annealing: accept a worse set with probability exp(-loss / T), T falling "
                         "linearly from this to 0 over the search (0: only better sets, a local search)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--compare", metavar="SIM_JSON",
                    help="`vramcache simulate --json` output of the traced run: fail unless the ring model's "
                         "time/LB for the cache's set is within 0.02 of the simulator's (the run's usable "
                         "VRAM, link and TFLOP/s unless given)")
    a = ap.parse_args()
    name, layers, names = denoiser_layers(a.workload)
    total = sum(b for b, _ in layers)
    sim = None
    if a.compare:
        if not a.trace:
            sys.exit("ring_model.py: --compare needs the --trace of the same run")
        with open(a.compare) as f:
            sim = json.load(f)
        if a.usable_fraction is None and a.usable_gb is None:  # the run's own device
            a.usable_gb = sim["usable_vram_bytes"] / 2**30
            a.bandwidth_gbps, a.tflops = sim["bandwidth_gbps"], sim["tflops"]
    if (a.usable_fraction is None) == (a.usable_gb is None):
        sys.exit("ring_model.py: give one of --usable-fraction and --usable-gb")
    usable = a.usable_fraction * total if a.usable_fraction is not None else a.usable_gb * 2**30
    p = Pass(layers, usable, a.bandwidth_gbps * 1e9, a.latency_us * 1e-6, a.tflops * 1e12, a.copy_part_min_mb * 2**20)
    if p.lb_bytes <= 0:
        sys.exit("ring_model.py: the denoiser fits; nothing streams")

    def report(what, stream):
        room = p.room(stream)
        print(f"{what}: {len(stream)} of {p.n} layers stream, bytes/LB {room / p.lb_bytes + 1:.3f}, room "
              f"{room / 1e6:.1f} MB; time/LB ring {p.ring(stream, room):.3f}, wrap {p.ring(stream, room, wrap=True):.3f}, fluid {p.fluid(stream, room):.3f}")

    if a.trace:
        start = traced_set(a.trace, name, names)
        report("the cache's set (trace)", start)
        if sim:
            cache = sim["step_time_s"] / sim["lower_bound_step_time_s"]
            model = p.ring(start, p.room(start))
            print(f"simulator: time/LB {cache:.3f}; ring model {model:.3f}")
            if abs(model - cache) > 0.02:
                sys.exit("ring_model.py: the ring model no longer matches the cache's streaming region "
                         "(src/residency.c); bring the model up to date before using its figures")
    else:
        start, moved = set(), 0.0
        for j in sorted(range(p.n), key=lambda j: p.b[j]):
            if moved + p.b[j] > a.bytes_goal * p.lb_bytes:
                break
            start.add(j)
            moved += p.b[j]
        report("the smallest layers", start)
    if not a.search:
        return
    rng = random.Random(a.seed)
    small = [j for j in range(p.n) if p.b[j] <= 0.06 * p.lb_bytes]

    def score(s):
        room = p.room(s)
        if not s or room / p.lb_bytes + 1 > a.bytes_goal or room < max(p.b[j] for j in s):
            return None
        return p.ring(s, room) if a.search_model == "ring" else p.ring(s, room, wrap=True) if a.search_model == "wrap" else p.fluid(s, room)

    best, cur = score(start), set(start)
    if best is None:
        best = float("inf")
    cur_t, best_set = best, set(cur)
    for it in range(a.search):
        cand, out = set(cur), [j for j in small if j not in cur]
        move = rng.random()
        if move < 0.5 and cand and out:
            cand.remove(rng.choice(sorted(cand)))
            cand.add(rng.choice(out))
        elif move < 0.75 and out:
            cand.add(rng.choice(out))
        elif cand:
            cand.remove(rng.choice(sorted(cand)))
        t = score(cand)
        if t is None:
            continue
        temp = a.temperature * (1 - it / a.search)
        if t < cur_t - 1e-9 or (temp > 0 and rng.random() < math.exp(-(t - cur_t) / temp)):
            cur, cur_t = cand, t
            if t < best - 1e-9:
                best, best_set = t, set(cand)
    if best == float("inf"):
        print(f"search: no set within bytes/LB {a.bytes_goal} found")
    else:
        report(f"best of {a.search} moves ({a.search_model} model, bytes/LB <= {a.bytes_goal})", best_set)


if __name__ == "__main__":
    main()
