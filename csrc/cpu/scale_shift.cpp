// HaBa hallucinator scale-shift on CPU: y[n, c] = scale[k, c] * norm(x[n, c]) + shift[k, c] with
// k = index[n], where norm is the identity or instance normalization over the plane.
//
// Every tensor arrives flattened to planes: x (N, C, L), scale/shift (Hn, C, S) with S = L
// (per-pixel, HaBa) or S = 1 (per-channel). Product mode is this op with index = the hallucinator
// of each row, built in Python.
//   forward  = one pass per (n, c) plane, planes split across threads; with normalize the plane's
//              statistics are computed first while it sits in L1, then applied.
//   backward = one task per (k, c) — or, for plain per-pixel parameters, per (k, block of the
//              C·L row) — walks the samples of hallucinator k in the segment table's fixed order,
//              writes dx for each and accumulates dscale/dshift in a private buffer. Each output
//              element has exactly one writer and a fixed summation order, so there are no
//              atomics and results are bitwise repeatable (and independent of the thread count).
//              Three algorithms, one function each, picked by bwd_dispatch: plain per-pixel
//              (bwd_plain_pixel), per-channel with or without normalize (bwd_per_channel), and
//              normalized per-pixel (bwd_norm_pixel).
// Plane-wide sums use plane.h's fixed-order lane sums.
// Per-pixel dscale/dshift sum over up to B samples: scalar_t partial sums over CHUNK samples are
// folded into double, which keeps the inner loop at full vector width with the accuracy of a
// CHUNK-long sum.
// bfloat16 / float16 (storage S, compute T = float32): the streaming loops read half planes
// directly, widening 8 values at a time in registers (simd.h's vload), and round every output
// once as it is stored (write_each over the storage type). Only what is read more than once
// goes through a float32 L1 buffer first: a normalized plane (its statistics take two passes) and
// the per-channel backward's planes (lane sums). mean and rstd are float32.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "check.h"
#include "ops.h"
#include "plane.h"
#include "simd.h"

namespace ddkernels {
namespace {

constexpr int64_t CHUNK = 16;

// The streaming loops take their arrays as __restrict__ parameters: GCC honours restrict on
// parameters (not on local pointers). Each prefetches `next` (the plane or row processed after this
// one, or null) while it runs and writes through write_each (simd.h), streaming when `stream`.
// (x - mean) * rstd first, not folded into the affine map: folding cancels catastrophically when
// |mean| >> std (and breaks y == shift exactly on constant planes). The plain map is m = 0, r = 1,
// exact in floating point.
// x is read from storage SX (a plane, or its float32 L1 copy) and y written in storage SY.
template <typename T, typename SX, typename SY>
void affine_norm(int64_t L, const T* __restrict__ s, const T* __restrict__ t,
                 const SX* __restrict__ x, T m, T r, SY* __restrict__ y, const SX* next, bool stream) {
  using V = typename Vec<T>::type;
  write_each(
      y, L, stream, [&](int64_t i) { if (next) prefetch(next + i); },
      [&](int64_t i) {
        V sv, tv;
        DDK_VLOAD(sv, s + i);
        DDK_VLOAD(tv, t + i);
        return V(sv * ((vload<T>(x + i) - m) * r) + tv);
      },
      [&](int64_t i) { return s[i] * ((T(x[i]) - m) * r) + t[i]; });
}

// dx = s * dy and the per-pixel partial sums of dy * x and dy, from one read of dy and x (storage
// S; s and the partial sums in T).
template <typename T, typename S>
void bwd_sweep(int64_t L, const T* __restrict__ s, const S* __restrict__ g,
               const S* __restrict__ x, S* __restrict__ gx, T* __restrict__ ps,
               T* __restrict__ pt, const S* next_g, const S* next_x, bool stream) {
  using V = typename Vec<T>::type;
  write_each(
      gx, L, stream,
      [&](int64_t i) {
        if (next_g) prefetch(next_g + i), prefetch(next_x + i);
      },
      [&](int64_t i) {
        V sv, pv, tv;
        DDK_VLOAD(sv, s + i);
        DDK_VLOAD(pv, ps + i);
        DDK_VLOAD(tv, pt + i);
        const V gv = vload<T>(g + i), xv = vload<T>(x + i);
        pv += gv * xv;
        tv += gv;
        DDK_VSTORE(ps + i, pv);
        DDK_VSTORE(pt + i, tv);
        return V(sv * gv);
      },
      [&](int64_t i) {
        const T gf = T(g[i]), xf = T(x[i]);
        ps[i] += gf * xf;
        pt[i] += gf;
        return s[i] * gf;
      });
}

// One pass over a normalized plane's inputs: xhat = (x - m)·r and d = s·dy into L1 buffers, the
// per-pixel partial sums of dy·xhat and dy, and Σd, Σd·xhat in LANES partial sums (the same order
// as lane_sum), combined in double. Written with vector types: GCC does not vectorize this many
// streams with two reductions on its own.
template <typename T, typename S>
void norm_bwd_pass(int64_t L, const T* __restrict__ s, const S* __restrict__ g,
                   const S* __restrict__ x, T m, T r, T* __restrict__ xh, T* __restrict__ d,
                   T* __restrict__ ps, T* __restrict__ pt, double& sum_d, double& sum_dx,
                   const S* next_g, const S* next_x) {
  // 32-byte vectors (wider ones spill on AVX2); H of them cover the LANES partial sums.
  using V = typename Vec<T>::type;
  constexpr int64_t W = Vec<T>::lanes, H = LANES / W;
  static_assert(LANES % W == 0, "LANES must be a whole number of vectors");
  V a[H] = {}, b[H] = {};
  int64_t i = 0;
  for (; i + LANES <= L; i += LANES) {
    if (next_g) prefetch(next_g + i), prefetch(next_x + i);
    for (int64_t h = 0; h < H; ++h) {
      const int64_t j = i + h * W;
      V sv, pv, tv;
      const V xv = vload<T>(x + j), gv = vload<T>(g + j);
      DDK_VLOAD(sv, s + j);
      DDK_VLOAD(pv, ps + j);
      DDK_VLOAD(tv, pt + j);
      const V xn = (xv - m) * r, dv = sv * gv;
      pv += gv * xn;
      tv += gv;
      a[h] += dv;
      b[h] += dv * xn;
      DDK_VSTORE(xh + j, xn);
      DDK_VSTORE(d + j, dv);
      DDK_VSTORE(ps + j, pv);
      DDK_VSTORE(pt + j, tv);
    }
  }
  T al[LANES], bl[LANES];
  std::memcpy(al, a, sizeof(a));
  std::memcpy(bl, b, sizeof(b));
  for (; i < L; ++i) {
    const T gi = T(g[i]), xn = (T(x[i]) - m) * r, dv = s[i] * gi;
    xh[i] = xn;
    d[i] = dv;
    ps[i] += gi * xn;
    pt[i] += gi;
    al[i % LANES] += dv;
    bl[i % LANES] += dv * xn;
  }
  sum_d = combine_lanes(al), sum_dx = combine_lanes(bl);
}

// A prefetch target for the float code: the next storage row itself, or none for half storage
// (the float code would prefetch a buffer; the conversion loops stream well on their own).
template <typename T, typename S>
inline const T* same_or_null(const S* p) {
  if constexpr (std::is_same_v<S, T>)
    return p;
  else
    return nullptr;
}

template <typename T, typename A>
void flush(int64_t L, T* __restrict__ ps, T* __restrict__ pt, A* __restrict__ tot_s,
           A* __restrict__ tot_t) {
  for (int64_t i = 0; i < L; ++i) {
    tot_s[i] += ps[i];
    tot_t[i] += pt[i];
    ps[i] = pt[i] = 0;
  }
}

// The backward's tensors as raw pointers, for the three algorithms below: storage type S,
// compute type T.
template <typename S, typename T>
struct BwdArgs {
  int64_t C, L, Hn;
  const S* G;         // grad_y (N, C, L)
  const S* X;         // x (N, C, L)
  const S* SC;        // scale (Hn, C, S)
  const T* M;         // mean, rstd (N, C); null without normalize
  const T* R;
  const int64_t* ord;  // segment table: ord[off[k]:off[k + 1]] are the rows using hallucinator k
  const int64_t* off;
  S* GX;              // grad_x (N, C, L)
  S* GS;              // grad_scale, grad_shift (Hn, C, S)
  S* GT;
  bool stream;        // grad_x is large enough for non-temporal stores
};

// Per-pixel dscale/dshift of one task: T partial sums over CHUNK samples (the inner loops stay at
// full vector width) folded into double totals (the accuracy of a CHUNK-long sum).
template <typename T>
class PixelSums {
 public:
  explicit PixelSums(int64_t width) : w_(width), tot_(2 * width), part_(2 * width) {}
  T* ps() { return part_.data(); }
  T* pt() { return part_.data() + w_; }
  void start() {
    std::fill(tot_.begin(), tot_.end(), 0.0);
    std::fill(part_.begin(), part_.end(), T(0));
    in_chunk_ = 0;
  }
  // After each sample's n partial sums were added.
  void sample_done(int64_t n) {
    if (++in_chunk_ == CHUNK) {
      flush(n, ps(), pt(), tot_.data(), tot_.data() + w_);
      in_chunk_ = 0;
    }
  }
  // The totals rounded to T, then to the output's storage type O.
  template <typename O>
  void finish(int64_t n, O* __restrict__ gs, O* __restrict__ gt) {
    flush(n, ps(), pt(), tot_.data(), tot_.data() + w_);
    for (int64_t i = 0; i < n; ++i) {
      gs[i] = O(T(tot_[i]));
      gt[i] = O(T(tot_[w_ + i]));
    }
  }

 private:
  int64_t w_, in_chunk_ = 0;
  std::vector<double> tot_;
  std::vector<T> part_;
};

// One plane with a per-channel scale s0 (S = 1): Σdy and Σdy·n(x) (the plane's shares of dshift
// and dscale) and dx. n(x) is x itself or, with normalize, x̂ = (x − m)·r, formed in xhat.
template <typename T, typename S>
void channel_plane_bwd(int64_t L, T s0, const T* __restrict__ g, const T* __restrict__ x,
                       bool normalize, T m, T r, T* __restrict__ xhat, S* __restrict__ gx,
                       double& sum_g, double& sum_gx) {
  using V = typename Vec<T>::type;
  const T* xn = x;
  if (normalize) {
    for (int64_t i = 0; i < L; ++i) xhat[i] = (x[i] - m) * r;
    xn = xhat;
  }
  sum_g = lane_sum<T>(L, [&](int64_t i) { return g[i]; });
  sum_gx = lane_sum<T>(L, [&](int64_t i) { return g[i] * xn[i]; });
  if (normalize) {
    // dx = rstd * (d - mean(d) - xhat * mean(d * xhat)) with d = scale * dy, written as
    // s0 * (g - mean(g)) so constant planes cancel exactly (dx = 0) despite FMA contraction.
    const T mg = T(sum_g / L), mdx = T(double(s0) * sum_gx / L);
    write_each(
        gx, L, false, [](int64_t) {},
        [&](int64_t i) {
          V gv, xv;
          DDK_VLOAD(gv, g + i);
          DDK_VLOAD(xv, xn + i);
          return V(r * (s0 * (gv - mg) - xv * mdx));
        },
        [&](int64_t i) { return r * (s0 * (g[i] - mg) - xn[i] * mdx); });
  } else {
    write_each(
        gx, L, false, [](int64_t) {},
        [&](int64_t i) {
          V gv;
          DDK_VLOAD(gv, g + i);
          return V(s0 * gv);
        },
        [&](int64_t i) { return s0 * g[i]; });
  }
}

// One normalized plane with per-pixel parameters s: the same formula as channel_plane_bwd, with
// d = s·dy stored first (norm_bwd_pass) so that d − mean(d) cancels exactly where it must.
template <typename T, typename S>
void norm_pixel_plane_bwd(int64_t L, const T* s, const S* g, const S* x, T m, T r, T* xhat,
                          T* d, T* ps, T* pt, S* gx, const S* next_g, const S* next_x,
                          bool stream) {
  double sum_d, sum_dx;
  norm_bwd_pass(L, s, g, x, m, r, xhat, d, ps, pt, sum_d, sum_dx, next_g, next_x);
  const T md = T(sum_d / L), mdx = T(sum_dx / L);
  using V = typename Vec<T>::type;
  write_each(
      gx, L, stream, [](int64_t) {},
      [&](int64_t i) {
        V dv, xv;
        DDK_VLOAD(dv, d + i);
        DDK_VLOAD(xv, xhat + i);
        return V(r * ((dv - md) - xv * mdx));
      },
      [&](int64_t i) { return r * ((d[i] - md) - xhat[i] * mdx); });
}

// HaBa's default: per-pixel parameters, no normalization, hence no plane-wide sums. Every
// (c, pixel) column is independent, so a task is (hallucinator, block of the flattened C·L row)
// and each sample is one long contiguous run (~25% faster than per-channel planes: fewer
// prefetch restarts). Columns are summed in the same sample order and chunks as bwd_norm_pixel.
template <typename S, typename T>
void bwd_plain_pixel(const BwdArgs<S, T>& a) {
  const int64_t CL = a.C * a.L, nblk = (CL + 4095) / 4096, width = (CL + nblk - 1) / nblk;
  at::parallel_for(0, a.Hn * nblk, 1, [&](int64_t begin, int64_t end) {
    PixelSums<T> sums(width);
    std::vector<T> sb(half_buf<T, S>(width));
    for (int64_t task = begin; task < end; ++task) {
      const int64_t k = task / nblk, lo = (task % nblk) * width, w = std::min(width, CL - lo);
      const T* sc = load_plane(a.SC + k * CL + lo, w, sb.data());
      sums.start();
      for (int64_t q = a.off[k]; q < a.off[k + 1]; ++q) {
        const int64_t row = a.ord[q] * CL + lo;
        const int64_t next = q + 1 < a.off[k + 1] ? a.ord[q + 1] * CL + lo : -1;
        if (next >= 0) prefetch_half<T>(a.G + next, w), prefetch_half<T>(a.X + next, w);
        // Half rows convert in registers and were prefetched whole above.
        bwd_sweep(w, sc, a.G + row, a.X + row, a.GX + row, sums.ps(), sums.pt(),
                  next < 0 || is_half_v<S> ? nullptr : a.G + next,
                  next < 0 || is_half_v<S> ? nullptr : a.X + next, a.stream);
        sums.sample_done(w);
      }
      sums.finish(w, a.GS + k * CL + lo, a.GT + k * CL + lo);
    }
    if (a.stream) stream_fence();
  });
}

// Per-channel parameters (S = 1), with or without normalize: one task per (k, c), whose dscale
// and dshift are double sums of the planes' lane sums.
template <typename S, typename T>
void bwd_per_channel(const BwdArgs<S, T>& a, bool normalize) {
  at::parallel_for(0, a.Hn * a.C, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> xhat(normalize ? a.L : 0);
    const int64_t hb = half_buf<T, S>(a.L);
    std::vector<T> gb(hb), xb(hb);
    for (int64_t kc = begin; kc < end; ++kc) {
      const int64_t k = kc / a.C, c = kc % a.C;
      double gs = 0, gt = 0;
      for (int64_t q = a.off[k]; q < a.off[k + 1]; ++q) {
        const int64_t p = a.ord[q] * a.C + c;
        double sum_g, sum_gx;
        if (q + 1 < a.off[k + 1]) {
          const int64_t pn = a.ord[q + 1] * a.C + c;
          prefetch_half<T>(a.G + pn * a.L, a.L), prefetch_half<T>(a.X + pn * a.L, a.L);
        }
        channel_plane_bwd(a.L, T(a.SC[kc]), load_plane(a.G + p * a.L, a.L, gb.data()),
                          load_plane(a.X + p * a.L, a.L, xb.data()), normalize,
                          normalize ? a.M[p] : T(0), normalize ? a.R[p] : T(1), xhat.data(),
                          a.GX + p * a.L, sum_g, sum_gx);
        gs += sum_gx;
        gt += sum_g;
      }
      a.GS[kc] = S(T(gs));
      a.GT[kc] = S(T(gt));
    }
  });
}

// Normalized planes with per-pixel parameters: one task per (k, c).
template <typename S, typename T>
void bwd_norm_pixel(const BwdArgs<S, T>& a) {
  const int64_t C = a.C, L = a.L;
  at::parallel_for(0, a.Hn * C, 1, [&](int64_t begin, int64_t end) {
    PixelSums<T> sums(L);
    std::vector<T> xhat(L), d(L), sb(half_buf<T, S>(L));
    for (int64_t kc = begin; kc < end; ++kc) {
      const int64_t k = kc / C, c = kc % C;
      const T* sc = load_plane(a.SC + kc * L, L, sb.data());
      sums.start();
      for (int64_t q = a.off[k]; q < a.off[k + 1]; ++q) {
        const int64_t p = a.ord[q] * C + c;
        const int64_t pn = q + 1 < a.off[k + 1] ? a.ord[q + 1] * C + c : -1;
        if (pn >= 0) prefetch_half<T>(a.G + pn * L, L), prefetch_half<T>(a.X + pn * L, L);
        // Half storage prefetches whole planes above (a vector is a quarter line).
        norm_pixel_plane_bwd(L, sc, a.G + p * L, a.X + p * L, a.M[p], a.R[p], xhat.data(), d.data(),
                             sums.ps(), sums.pt(), a.GX + p * L,
                             pn < 0 || is_half_v<S> ? nullptr : a.G + pn * L,
                             pn < 0 || is_half_v<S> ? nullptr : a.X + pn * L, a.stream);
        sums.sample_done(L);
      }
      sums.finish(L, a.GS + kc * L, a.GT + kc * L);
    }
    if (a.stream) stream_fence();
  });
}

template <typename St, typename T>
void bwd_dispatch(const BwdArgs<St, T>& a, int64_t S, bool normalize) {
  if (S == 1)
    bwd_per_channel(a, normalize);
  else if (normalize)
    bwd_norm_pixel(a);
  else
    bwd_plain_pixel(a);
}

void check_params(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& shift) {
  DDK_CHECK_CPU(scale);
  DDK_CHECK_CPU(shift);
  DDK_CHECK_CONTIG(scale);
  DDK_CHECK_CONTIG(shift);
  DDK_CHECK_DIM(scale, 3, "(Hn, C, L or 1)");
  DDK_CHECK_DTYPE(scale, x.scalar_type());
  DDK_CHECK_DTYPE(shift, x.scalar_type());
  TORCH_CHECK(shift.sizes() == scale.sizes(), "shift must have the shape of scale ", scale.sizes(),
              ", got ", shift.sizes());
  TORCH_CHECK(scale.size(1) == x.size(1), "scale must have C=", x.size(1),
              " channels like x, got shape ", scale.sizes());
  TORCH_CHECK(scale.size(2) == x.size(2) || scale.size(2) == 1, "scale must have L=", x.size(2),
              " (per-pixel) or 1 (per-channel) in its last dimension, got shape ", scale.sizes());
}

void check_x(const at::Tensor& x, const char* layout) {
  DDK_CHECK_CPU(x);
  DDK_CHECK_CONTIG(x);
  TORCH_CHECK(x.dim() == 3, "x must be 3-D ", layout, ", got shape ", x.sizes());
  DDK_CHECK_FLOATING(x);
}

at::ScalarType acc_type(const at::Tensor& x) {
  return x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kHalf ? at::kFloat : x.scalar_type();
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> scale_shift_fwd_cpu(const at::Tensor& x,
                                                                   const at::Tensor& scale,
                                                                   const at::Tensor& shift,
                                                                   const at::Tensor& index,
                                                                   bool normalize, double eps) {
  check_x(x, "(N, C, L)");
  check_params(x, scale, shift);
  DDK_CHECK_CPU(index);
  DDK_CHECK_CONTIG(index);
  DDK_CHECK_DTYPE(index, at::kLong);
  const int64_t N = x.size(0), C = x.size(1), L = x.size(2), Hn = scale.size(0);
  const int64_t S = scale.size(2);
  TORCH_CHECK(index.dim() == 1 && index.size(0) == N, "index must have shape (N=", N, ",), got ",
              index.sizes());
  TORCH_CHECK(eps >= 0, "eps must be non-negative, got ", eps);
  const int64_t* idx = index.data_ptr<int64_t>();
  for (int64_t n = 0; n < N; ++n)
    TORCH_CHECK(idx[n] >= 0 && idx[n] < Hn, "index holds ", idx[n], " at position ", n,
                ", outside [0, Hn=", Hn, ")");

  at::Tensor y = x.new_empty(x.sizes());
  at::Tensor mean = x.new_empty({normalize ? N : 0, C}, x.options().dtype(acc_type(x)));
  at::Tensor rstd = x.new_empty({normalize ? N : 0, C}, x.options().dtype(acc_type(x)));
  if (y.numel() == 0) return {y, mean, rstd};

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "scale_shift_fwd_cpu", [&] {
    using St = scalar_t;          // storage
    using scalar_t = acc_t<St>;   // computation
    const St* __restrict__ X = x.data_ptr<St>();
    // The (small) parameters once in the accumulation type (the tensors themselves for float).
    const at::Tensor sc_acc = scale.to(acc_type(x)), sh_acc = shift.to(acc_type(x));
    const scalar_t* __restrict__ SC = sc_acc.data_ptr<scalar_t>();
    const scalar_t* __restrict__ SH = sh_acc.data_ptr<scalar_t>();
    St* __restrict__ Y = y.data_ptr<St>();
    scalar_t* M = normalize ? mean.data_ptr<scalar_t>() : nullptr;
    scalar_t* R = normalize ? rstd.data_ptr<scalar_t>() : nullptr;

    const bool stream = !is_half_v<St> && y.numel() * int64_t(sizeof(St)) >= kStreamBytes;
    // A HaBa plane is 900 elements: batch several per task so scheduling stays negligible.
    at::parallel_for(0, N * C, std::max<int64_t>(1, 16384 / std::max<int64_t>(L, 1)),
                     [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> xb(normalize ? half_buf<scalar_t, St>(L) : 0);
      for (int64_t p = begin; p < end; ++p) {
        const int64_t n = p / C, c = p % C;
        if (p + 1 < end) prefetch_half<scalar_t>(X + (p + 1) * L, L);
        const St* next = p + 1 < end ? X + (p + 1) * L : nullptr;
        const scalar_t* __restrict__ s = SC + (idx[n] * C + c) * S;
        const scalar_t* __restrict__ t = SH + (idx[n] * C + c) * S;
        St* __restrict__ yp = Y + p * L;
        if (!normalize && S != 1) {  // HaBa's default: one streaming pass, straight from storage
          affine_norm(L, s, t, X + p * L, scalar_t(0), scalar_t(1), yp, is_half_v<St> ? nullptr : next, stream);
          continue;
        }
        using V = typename Vec<scalar_t>::type;
        const scalar_t s0 = s[0], t0 = t[0];  // the per-channel (S == 1) parameters
        if (!normalize) {
          const St* __restrict__ xs = X + p * L;
          write_each(
              yp, L, false, [](int64_t) {}, [&](int64_t i) { return V(s0 * vload<scalar_t>(xs + i) + t0); },
              [&](int64_t i) { return s0 * scalar_t(xs[i]) + t0; });
          continue;
        }
        // Normalized: the plane is read three times (two statistics passes, then the map).
        const scalar_t* __restrict__ xp = load_plane(X + p * L, L, xb.data());
        plane_stats(xp, L, eps, M[p], R[p]);
        const scalar_t m = M[p], r = R[p];
        if (S == 1)
          write_each(
              yp, L, false, [](int64_t) {}, [&](int64_t i) { return V(s0 * ((vload<scalar_t>(xp + i) - m) * r) + t0); },
              [&](int64_t i) { return s0 * ((xp[i] - m) * r) + t0; });
        else
          affine_norm(L, s, t, xp, m, r, yp, same_or_null<scalar_t>(next), stream);
      }
      if (stream) stream_fence();
    });
  });
  return {y, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> scale_shift_bwd_cpu(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& scale, const at::Tensor& order,
    const at::Tensor& offsets, const at::Tensor& mean, const at::Tensor& rstd, bool normalize) {
  check_x(grad_y, "(N, C, L)");
  check_x(x, "(N, C, L)");
  TORCH_CHECK(grad_y.sizes() == x.sizes(), "grad_y must have the shape of x ", x.sizes(), ", got ",
              grad_y.sizes());
  DDK_CHECK_DTYPE(grad_y, x.scalar_type());
  check_params(x, scale, scale);
  for (const at::Tensor* t : {&order, &offsets}) {
    DDK_CHECK_CPU((*t));
    DDK_CHECK_CONTIG((*t));
    DDK_CHECK_DTYPE((*t), at::kLong);
  }
  const int64_t N = x.size(0), C = x.size(1), L = x.size(2), Hn = scale.size(0);
  const int64_t S = scale.size(2);
  TORCH_CHECK(order.dim() == 1 && order.size(0) == N, "order must have shape (N=", N, ",), got ",
              order.sizes());
  TORCH_CHECK(offsets.dim() == 1 && offsets.size(0) == Hn + 1, "offsets must have shape (Hn+1=",
              Hn + 1, ",), got ", offsets.sizes());
  const int64_t* ord = order.data_ptr<int64_t>();
  const int64_t* off = offsets.data_ptr<int64_t>();
  // The segment table is trusted inside the loops; one pass here keeps a bad one from writing
  // out of bounds.
  TORCH_CHECK(off[0] == 0 && off[Hn] == N, "offsets must run from 0 to N=", N, ", got ", off[0],
              " to ", off[Hn]);
  for (int64_t k = 0; k < Hn; ++k)
    TORCH_CHECK(off[k] <= off[k + 1], "offsets must be non-decreasing, got ", off[k], " > ",
                off[k + 1], " at position ", k);
  for (int64_t n = 0; n < N; ++n)
    TORCH_CHECK(ord[n] >= 0 && ord[n] < N, "order holds ", ord[n], " outside [0, N=", N, ")");
  if (normalize) {
    for (const at::Tensor* t : {&mean, &rstd}) {
      DDK_CHECK_CPU((*t));
      DDK_CHECK_CONTIG((*t));
      DDK_CHECK_DTYPE((*t), acc_type(x));
    }
    TORCH_CHECK(mean.dim() == 2 && mean.size(0) == N && mean.size(1) == C && mean.sizes() == rstd.sizes(),
                "mean and rstd must have shape (N=", N, ", C=", C, "), got ", mean.sizes(), " and ",
                rstd.sizes());
  }

  at::Tensor grad_x = x.new_empty(x.sizes());
  at::Tensor grad_scale = scale.new_zeros(scale.sizes());  // hallucinators with no samples keep 0
  at::Tensor grad_shift = scale.new_zeros(scale.sizes());
  if (x.numel() == 0) return {grad_x, grad_scale, grad_shift};

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "scale_shift_bwd_cpu", [&] {
    using T = acc_t<scalar_t>;
    const BwdArgs<scalar_t, T> args{
        C, L, Hn, grad_y.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), scale.data_ptr<scalar_t>(),
        normalize ? mean.data_ptr<T>() : nullptr,
        normalize ? rstd.data_ptr<T>() : nullptr, ord, off, grad_x.data_ptr<scalar_t>(),
        grad_scale.data_ptr<scalar_t>(), grad_shift.data_ptr<scalar_t>(),
        !is_half_v<scalar_t> && grad_x.numel() * int64_t(sizeof(scalar_t)) >= kStreamBytes};
    bwd_dispatch(args, S, normalize);
  });
  return {grad_x, grad_scale, grad_shift};
}

}  // namespace ddkernels
