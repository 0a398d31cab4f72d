/*
 * Lower bounds on the time of one pass of a model streamed through limited device memory.
 */
#ifndef VC_STEP_BOUND_H
#define VC_STEP_BOUND_H

#include <stddef.h>

/* The segment bound on one pass of a repeating loop of n layers (bytes[i] of weights, secs[i] of
 * compute each, in execution order) with `usable` bytes of device memory for weights and a link of
 * `bandwidth` bytes/s. Any run of consecutive layers lasts at least its compute, and at least the
 * time to copy the part of its bytes that was not resident when it began (at most `usable` was):
 * max(compute, (bytes - usable) / bandwidth). Cutting the pass into runs and summing gives a bound
 * for every cut; this returns the largest over all cuts of the cyclic pass, which no schedule of
 * whole or partial layers can beat. It is never below max(total compute, (total bytes - usable) /
 * bandwidth). O(n^3) time up to 256 layers; longer passes try 256 evenly spread first cuts (still a
 * bound, at most a little less tight), O(256 n^2), and passes of more than 1448 fewer, so that
 * the work stays under 2^28 steps; past 23170, cuts fall only between 23170 groups of consecutive
 * layers (with `back`, runs of at most 2^28 / n layers instead).
 * O(n) memory; returns -1 when that memory is short.
 *
 * A pass may use a layer more than once (a UNet run twice per step, for the two halves of
 * classifier-free guidance): back[i] is then how many positions before i (round the loop, 1 to n)
 * the same layer was last used, n for a layer used once. A run counts a layer's bytes once, at its
 * first use in the run (it may stay resident for the next). back NULL: every layer is used once. */
double vc__segment_time_bound(const double *bytes, const double *secs, size_t n, double usable, double bandwidth,
                              const size_t *back);

#endif
