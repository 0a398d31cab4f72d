#!/usr/bin/env python3
"""The fastest step any streaming schedule could reach, by linear programming.

bench_streaming measures the step time against max(compute, (bytes - usable VRAM) / bandwidth) and
against the segment bound (src/step_bound.h). This tool computes a tighter bound for one denoiser
pass: a linear program over every periodic schedule of fractional layers with fluid copies, which
relaxes every real schedule of whole layers (so its optimum is a lower bound for them):

  - each layer j keeps a fraction 1 - x_j of its bytes resident and copies x_j of them per pass,
    between its previous use and its next one;
  - the copy engine moves at most `bandwidth` bytes per second; the pass is the layers' compute in
    order plus stalls w_k before each layer (the copy engine also works during stalls);
  - at the end of each layer's compute, the kept bytes, that layer, and what has arrived for the
    layers still to come fit in the usable VRAM.

It prints, per cell of the bench_streaming sweep (usable 25/50/75% of the denoiser, 25 and 55 GB/s,
60 TFLOP/s by default), the least step time over the simple bound any schedule can reach (bisection,
to 0.001), and the least bytes over the bytes bound at a time goal, if one is reachable.

    apt-get install -y python3-scipy python3-yaml
    python3 tools/stream_bound.py workloads/sd15.yaml [--tflops 60] [--time-goal 1.10] [--bytes-goal 1.05]

Runs take about a minute per workload (HiGHS through scipy); whole-layer (integer) versions of the
same program are far slower and not part of this tool.
"""
import argparse
import sys

try:
    import numpy as np
    import scipy.sparse as sp
    from scipy.optimize import linprog
    from workload_layers import denoiser_layers
except ImportError as e:  # not part of the build: say what to install
    sys.exit(f"stream_bound.py: {e.name} is missing: apt-get install -y python3-scipy python3-yaml")


class Program:
    """The LP of one cell; solve(time_ratio) gives the least bytes per pass, or None if infeasible."""

    def __init__(self, layers, usable_fraction, bandwidth, flops):
        n = len(layers)
        self.n = n
        mb = 1e6  # bytes in MB keep the coefficients well scaled
        s = np.array([b for b, _ in layers]) / mb
        c = np.array([f / flops for _, f in layers])
        total = s.sum()
        self.usable = usable_fraction * total
        self.lb_bytes = total - self.usable
        self.bw = bandwidth / mb
        self.compute = c.sum()
        self.lb_time = max(self.compute, self.lb_bytes / self.bw)
        # variables: x_j, w_k, then per layer j and window position r = 1..n (interval (j + r) % n;
        # r = n is j's own stall): copies during the stall y0 and the compute y1, cumulative z.
        nv = 0

        def new():
            nonlocal nv
            nv += 1
            return nv - 1

        X = [new() for _ in range(n)]
        W = [new() for _ in range(n)]
        Y, Z = {}, {}
        for j in range(n):
            for r in range(1, n + 1):
                Y[j, r, 0] = new()
                if r < n:
                    Y[j, r, 1] = new()
                Z[j, r] = new()
        eq, ub = ([], [], []), ([], [], [])
        b_eq, b_ub = [], []

        def row(m, bvec, terms, rhs):
            k = len(bvec)
            for col, val in terms:
                m[0].append(k)
                m[1].append(col)
                m[2].append(val)
            bvec.append(rhs)

        for j in range(n):  # z accumulates y; all of x_j s_j arrives by j's compute
            for r in range(1, n + 1):
                t = [(Z[j, r], 1.0), (Y[j, r, 0], -1.0)]
                if r > 1:
                    t.append((Z[j, r - 1], -1.0))
                if r < n:
                    t.append((Y[j, r, 1], -1.0))
                row(eq, b_eq, t, 0.0)
            row(eq, b_eq, [(Z[j, n], 1.0), (X[j], -s[j])], 0.0)
        for k in range(n):  # the copy engine's rate, during stall k and during compute k
            for part in (0, 1):
                t = []
                for j in range(n):
                    r = (k - j) % n or n
                    if (j, r, part) in Y:
                        t.append((Y[j, r, part], 1.0))
                if part == 0:
                    row(ub, b_ub, t + [(W[k], -self.bw)], 0.0)
                else:
                    row(ub, b_ub, t, self.bw * c[k])
        self.stall_row = len(b_ub)
        row(ub, b_ub, [(W[k], 1.0) for k in range(n)], 0.0)  # stall budget, set per solve
        for m in range(n):  # memory at the end of layer m's compute
            t = [(X[i], -s[i]) for i in range(n) if i != m]
            t += [(Z[j, (m - j) % n], 1.0) for j in range(n) if j != m]
            row(ub, b_ub, t, self.usable - total)
        self.A_eq = sp.csr_matrix((eq[2], (eq[0], eq[1])), shape=(len(b_eq), nv))
        self.A_ub = sp.csr_matrix((ub[2], (ub[0], ub[1])), shape=(len(b_ub), nv))
        self.b_eq, self.b_ub = np.array(b_eq), np.array(b_ub)
        self.obj = np.zeros(nv)
        self.obj[X] = s
        self.bounds = [(0, None)] * nv
        for j in X:
            self.bounds[j] = (0, 1)

    def solve(self, time_ratio):
        self.b_ub[self.stall_row] = time_ratio * self.lb_time - self.compute
        if self.b_ub[self.stall_row] < 0:
            return None
        res = linprog(self.obj, A_ub=self.A_ub, b_ub=self.b_ub, A_eq=self.A_eq, b_eq=self.b_eq,
                      bounds=self.bounds, method="highs")
        return res.fun / self.lb_bytes if res.status == 0 else None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("workload")
    ap.add_argument("--tflops", type=float, default=60)
    ap.add_argument("--time-goal", type=float, default=1.10)
    ap.add_argument("--bytes-goal", type=float, default=1.05)
    a = ap.parse_args()
    name, layers, _ = denoiser_layers(a.workload)
    print(f"{a.workload}: model '{name}', {len(layers)} layers, {a.tflops:g} TFLOP/s")
    print("usable  GB/s | least time/LB (any bytes) | least time/LB (bytes <= %.2f) | least bytes/LB at time <= %.2f"
          % (a.bytes_goal, a.time_goal))
    for frac in (0.25, 0.50, 0.75):
        for gbps in (25, 55):
            p = Program(layers, frac, gbps * 1e9, a.tflops * 1e12)
            least = []
            for cap in (None, a.bytes_goal):
                lo, hi = 1.0, 4.0
                while hi - lo > 0.001:
                    mid = (lo + hi) / 2
                    r = p.solve(mid)
                    if r is not None and (cap is None or r <= cap):
                        hi = mid
                    else:
                        lo = mid
                least.append(hi)
            at_goal = p.solve(a.time_goal)
            print("%5.0f%% %5d | %25.3f | %29.3f | %s" % (frac * 100, gbps, least[0], least[1],
                  "unreachable" if at_goal is None else "%.4f" % at_goal), flush=True)


if __name__ == "__main__":
    sys.exit(main())
