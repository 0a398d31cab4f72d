/*
 * The segment bound (see step_bound.h). The bound, max(compute, (bytes - usable) /
 * bandwidth), treats the pass as one run; a model whose bytes and compute sit in different places
 * (SD 1.5: the low-resolution blocks hold most bytes, the high-resolution ones most compute) cannot
 * hide the copies of a byte-heavy stretch behind compute elsewhere without memory to hold them, so
 * cutting the pass at the right places gives a higher bound. Benchmarks print both, so that a cell
 * that misses a goal set against the simple bound shows whether any schedule could meet it.
 */
#include "step_bound.h"

#include <stdlib.h>

#define MAX_ROTATIONS 256
#define MAX_STEPS 268435456.0 /* 2^28 */

static double run_time(double bytes, double compute, double usable, double bandwidth) {
    double copy = (bytes - usable) / bandwidth;
    return compute > copy ? compute : copy;
}

double vc__segment_time_bound(const double *bytes, const double *secs, size_t n, double usable, double bandwidth,
                              const size_t *back) {
    if (!n || bandwidth <= 0) return 0;
    /* A pass so long that even one first cut's pairs exceed MAX_STEPS (more than 23170 uses: a model
     * registered tensor by tensor): cut only between groups of consecutive uses, as many groups as
     * the work allows. A cut between groups is a cut of the pass, so this is still a bound, and a
     * byte-heavy stretch of the pass spans many groups, so it loses little. */
    const size_t groups = 23170; /* sqrt(2 * MAX_STEPS) */
    if (!back && n > groups) {
        double *gb = calloc(groups, sizeof(*gb)), *gt = calloc(groups, sizeof(*gt));
        if (!gb || !gt) {
            free(gb);
            free(gt);
            return -1;
        }
        for (size_t i = 0; i < n; i++) {
            size_t g = (size_t)((double)i * (double)groups / (double)n);
            gb[g] += bytes[i];
            gt[g] += secs[i];
        }
        double bound = vc__segment_time_bound(gb, gt, groups, usable, bandwidth, NULL);
        free(gb);
        free(gt);
        return bound;
    }
    /* prefix sums over the pass written twice, so every rotation is a window of it */
    double *pb = malloc((2 * n + 1) * sizeof(*pb));
    double *pt = malloc((2 * n + 1) * sizeof(*pt));
    double *best = malloc((n + 1) * sizeof(*best));
    double *ub = back ? malloc((n + 1) * sizeof(*ub)) : NULL; /* bytes of the runs [a, b) that end at b */
    if (!pb || !pt || !best || (back && !ub)) {
        free(pb);
        free(pt);
        free(best);
        free(ub);
        return -1;
    }
    pb[0] = pt[0] = 0;
    for (size_t i = 0; i < 2 * n; i++) {
        pb[i + 1] = pb[i] + bytes[i % n];
        pt[i + 1] = pt[i] + secs[i % n];
    }
    /* Every rotation's best cut is a valid bound, so on long passes a spread of MAX_ROTATIONS of them
     * keeps the cost at O(MAX_ROTATIONS * n^2), and on very long ones (a whole image of an 8-step
     * SDXL as one cycle: 2878 uses) fewer, so that no more than MAX_STEPS pairs (a, b) are visited
     * (about a second): 256 rotations up to 1448 uses, 61 at 2878. */
    size_t rotations = MAX_ROTATIONS;
    double pairs = (double)n * (double)n / 2;
    if (pairs * rotations > MAX_STEPS) rotations = pairs >= MAX_STEPS ? 1 : (size_t)(MAX_STEPS / pairs);
    size_t stride = (n + rotations - 1) / rotations;
    /* Past that with uses repeated in the pass (back), which groups would blur: only runs of up to
     * max_run uses are tried, still a bound (a max over fewer cuts), and the whole pass as one run
     * below keeps it at least the simple bound. */
    size_t max_run = pairs > MAX_STEPS ? (size_t)(MAX_STEPS / (double)n) : n;
    if (max_run < 1) max_run = 1;
    double whole = 0; /* the pass's distinct bytes: each layer at its first use in [0, n) */
    for (size_t i = 0; i < n; i++) whole += !back || back[i] > i ? bytes[i] : 0;
    double bound = run_time(whole, pt[n], usable, bandwidth);
    for (size_t r = 0; r < n; r += stride) { /* the pass cut first before layer r */
        best[0] = 0;
        for (size_t b = 1; b <= n; b++) {
            size_t a0 = b > max_run ? b - max_run : 0; /* runs [a, b) of at most max_run uses */
            if (back) { /* extend every run [a, b-1) by layer b-1: its bytes count unless used since a */
                size_t p = r + b - 1, d = back[p % n];
                for (size_t a = a0; a + 1 < b; a++) ub[a] += d <= b - 1 - a && d < n ? 0 : bytes[p % n];
                ub[b - 1] = bytes[p % n];
            }
            double v = 0;
            for (size_t a = a0; a < b; a++) {
                double run_bytes = back ? ub[a] : pb[r + b] - pb[r + a];
                double t = best[a] + run_time(run_bytes, pt[r + b] - pt[r + a], usable, bandwidth);
                if (t > v) v = t;
            }
            best[b] = v;
        }
        if (best[n] > bound) bound = best[n];
    }
    free(pb);
    free(pt);
    free(best);
    free(ub);
    return bound;
}
