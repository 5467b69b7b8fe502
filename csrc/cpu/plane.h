// Per-plane reductions shared by the kernels that normalize (n, c) planes (scale_shift's
// instance norm, norm_relu_pool). Sums go through LANES independent scalar_t accumulators,
// combined in double in a fixed order, so the loops vectorize without -ffast-math (which would
// also make the summation order compiler-dependent) and results do not depend on thread count.
#pragma once
#include <cmath>
#include <cstdint>

namespace ddkernels {

constexpr int64_t LANES = 16;

// The LANES partial sums of a plane combined in double as a pairwise tree: a fixed order, and a
// dependency chain of log2(LANES) adds instead of LANES (which dominated 8×8 planes).
template <typename scalar_t>
inline double combine_lanes(const scalar_t* part) {
  double t[LANES];
  for (int64_t l = 0; l < LANES; ++l) t[l] = part[l];
  for (int64_t w = LANES / 2; w > 0; w /= 2)
    for (int64_t l = 0; l < w; ++l) t[l] += t[l + w];
  return t[0];
}

// Σ f(i) for i in [0, n) in LANES interleaved partial sums, combined in a fixed order.
template <typename scalar_t, typename F>
inline double lane_sum(int64_t n, F f) {
  scalar_t part[LANES] = {};
  int64_t i = 0;
  for (; i + LANES <= n; i += LANES)
    for (int64_t l = 0; l < LANES; ++l) part[l] += f(i + l);
  for (; i < n; ++i) part[i % LANES] += f(i);
  return combine_lanes(part);
}

// Biased mean and 1/sqrt(var + eps) of one plane; two passes over L1-resident data are more
// accurate than a one-pass E[x²] - E[x]², which cancels badly for planes with a large mean.
template <typename scalar_t>
inline void plane_stats(const scalar_t* __restrict__ x, int64_t L, double eps, scalar_t& mean,
                        scalar_t& rstd) {
  const scalar_t m = scalar_t(lane_sum<scalar_t>(L, [&](int64_t i) { return x[i]; }) / L);
  const double v = lane_sum<scalar_t>(L, [&](int64_t i) {
                     const scalar_t d = x[i] - m;
                     return d * d;
                   }) / L;
  mean = m;
  rstd = scalar_t(1.0 / std::sqrt(v + eps));
}

}  // namespace ddkernels
