// Affine crop on CPU: every window (top, left, height, width) of a stored plane resized bilinearly
// (align_corners=False, taps clamped to the window, taps outside the image read `pad`), forward and
// backward w.r.t. both the image and the windows. ddkernels/ops/affine_crop/reference.py is the spec.
//
// Separable, one input plane (b, c) at a time: planes are independent and split across threads,
// with no atomics. The tap tables (per window and axis: two padded indices, two weights and
// ds/dheight) are built once per call before the parallel loop; every window's taps are monotone
// in the output coordinate, so each window reads a contiguous band of source rows and columns.
//   forward  = vertical blend of whole rows of the band into V (H × band columns), transpose,
//              horizontal blend of whole (transposed) columns, transpose into the output plane.
//   backward = the image's gradient as thread-private scatters into one padded plane, in fixed
//              window/row order (the horizontal adjoint on transposed rows, transpose, the vertical
//              adjoint); the windows' gradient as per-plane partials (dy/ds = upper tap − lower tap,
//              from V for the columns and from a horizontal-first resample for the rows), summed over
//              channels afterwards in channel order. Results are bitwise repeatable for any thread count.
// bfloat16 / float16: theta has x's dtype (the op's rule; under autocast both arrive as float32) and
// is widened to float32 once, so the taps are computed in float32 from exactly the stored windows;
// planes (x, grad_y) are converted into the float32 buffers as they are loaded, every blend and
// scatter runs in float32 (the windows' gradient in double, as for float32), and each output plane
// is rounded once on the way out.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "check.h"
#include "ops.h"
#include "simd.h"
#include "transpose.h"

namespace ddkernels {
namespace {

// One axis of one window: for each output coordinate the lower/upper tap (indices into the axis
// padded by one pixel each side), their weights and ds/dlength (ds/dstart is 1 everywhere).
template <typename T>
struct AxisTaps {
  std::vector<int64_t> i0, i1;
  std::vector<T> w0, w1, dlen;
  int64_t lo = 0, hi = 0;  // the band of padded indices the window reads, [lo, hi]
};

template <typename T>
void axis_taps(T start, T length, int64_t out, int64_t size, AxisTaps<T>& a) {
  a.i0.resize(out), a.i1.resize(out), a.w0.resize(out), a.w1.resize(out), a.dlen.resize(out);
  // The window [start, start + max(length − 1, 0)]: never empty, so taps stay monotone in o.
  const bool grows = length - T(1) >= T(0);
  const T scale = length / T(out), upper = start + (grows ? length - T(1) : T(0));
  for (int64_t o = 0; o < out; ++o) {
    const T u = T(o) + T(0.5);
    T s = start + (scale * u - T(0.5));
    T d = u / T(out);
    if (s < start) {  // lower bound first, as the reference
      s = start, d = T(0);
    } else if (s > upper) {
      s = upper, d = grows ? T(1) : T(0);
    }
    const T f = std::floor(s);
    const T lam = s - f;
    // The padded index of the lower tap; far outside the image both taps read the pad ring.
    a.i0[o] = static_cast<int64_t>(std::min(std::max(double(f) + 1.0, 0.0), double(size + 1)));
    a.i1[o] = static_cast<int64_t>(std::min(std::max(double(f) + 2.0, 0.0), double(size + 1)));
    a.w0[o] = T(1) - lam;
    a.w1[o] = lam;
    a.dlen[o] = d;
  }
  // Taps are non-decreasing in o (see the reference), so the band is [first lower, last upper].
  a.lo = out ? a.i0[0] : 0;
  a.hi = out ? a.i1[out - 1] : 0;
}

void check_theta(const at::Tensor& theta, const at::Tensor& x) {
  DDK_CHECK_CPU(theta);
  DDK_CHECK_CONTIG(theta);
  DDK_CHECK_DIM(theta, 3, "(N, T, 4)");
  TORCH_CHECK(theta.size(0) == x.size(0) && theta.size(2) == 4, "theta must have shape (N=", x.size(0),
              ", T, 4), got ", theta.sizes());
  DDK_CHECK_DTYPE(theta, x.scalar_type());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, theta.scalar_type(), "affine_crop_check_theta", [&] {
    const scalar_t* t = theta.data_ptr<scalar_t>();
    for (int64_t i = 0; i < theta.numel(); ++i)
      TORCH_CHECK(std::isfinite(double(t[i])), "theta must be finite, got ", double(t[i]), " at flat index ", i);
  });
}

// Tables for every (image, window): rows then columns, index b * T + k, computed in T = acc_t<S>
// from theta's storage S (half windows widened exactly first).
template <typename T, typename S>
void build_tables(const S* theta, int64_t NT, int64_t H, int64_t W, int64_t h, int64_t w,
                  std::vector<AxisTaps<T>>& rows, std::vector<AxisTaps<T>>& cols) {
  std::vector<T> buf(half_buf<T, S>(4 * NT));
  const T* th = load_plane<T>(theta, 4 * NT, buf.data());
  rows.resize(NT), cols.resize(NT);
  at::parallel_for(0, NT, 16, [&](int64_t begin, int64_t end) {
    for (int64_t q = begin; q < end; ++q) {
      const T* t = th + 4 * q;
      axis_taps<T>(t[0], t[2], H, h, rows[q]);
      axis_taps<T>(t[1], t[3], W, w, cols[q]);
    }
  });
}

// The padded plane: row r + 1, column x + 1 hold x[r][x] (widened to T); the one-pixel ring holds `pad`.
template <typename T, typename S>
void load_padded(const S* src, int64_t h, int64_t w, T pad, T* P) {
  const int64_t ld = w + 2;
  std::fill(P, P + ld, pad);
  for (int64_t r = 0; r < h; ++r) {
    T* row = P + (r + 1) * ld;
    row[0] = pad;
    convert_n(src + r * w, row + 1, w);
    row[w + 1] = pad;
  }
  std::fill(P + (h + 1) * ld, P + (h + 2) * ld, pad);
}

// V[oy][j] = w0·P[i0][lo + j] + w1·P[i1][lo + j] over the window's column band (nc columns).
template <typename T>
void vertical(const T* P, int64_t ld, const AxisTaps<T>& ry, int64_t lo, int64_t nc, T* V) {
  const int64_t H = static_cast<int64_t>(ry.i0.size());
  for (int64_t oy = 0; oy < H; ++oy) {
    const T* __restrict__ a0 = P + ry.i0[oy] * ld + lo;
    const T* __restrict__ a1 = P + ry.i1[oy] * ld + lo;
    const T w0 = ry.w0[oy], w1 = ry.w1[oy];
    T* __restrict__ v = V + oy * nc;
    for (int64_t j = 0; j < nc; ++j) v[j] = w0 * a0[j] + w1 * a1[j];
  }
}

}  // namespace

at::Tensor affine_crop_fwd_cpu(const at::Tensor& x, const at::Tensor& theta, int64_t out_h, int64_t out_w,
                               double pad) {
  DDK_CHECK_CPU(x);
  DDK_CHECK_CONTIG(x);
  DDK_CHECK_DIM(x, 4, "(N, C, h, w)");
  DDK_CHECK_FLOATING(x);
  check_theta(theta, x);
  TORCH_CHECK(out_h >= 1 && out_w >= 1, "out_h and out_w must be positive, got ", out_h, " and ", out_w);
  const int64_t N = x.size(0), C = x.size(1), h = x.size(2), w = x.size(3), T = theta.size(1);
  const int64_t H = out_h, W = out_w;
  at::Tensor out = x.new_empty({T * N, C, H, W});
  if (out.numel() == 0) return out;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "affine_crop_fwd_cpu", [&] {
    using S = scalar_t;
    using A = acc_t<S>;  // the compute type: float32 for half storage
    const S* __restrict__ X = x.data_ptr<S>();
    S* __restrict__ Y = out.data_ptr<S>();
    std::vector<AxisTaps<A>> rows, cols;
    build_tables<A>(theta.data_ptr<S>(), N * T, H, W, h, w, rows, cols);
    at::parallel_for(0, N * C, 1, [&](int64_t begin, int64_t end) {
      std::vector<A> P((h + 2) * (w + 2)), V, Vt, Yt(W * H), Yb(half_buf<A, S>(H * W));
      for (int64_t p = begin; p < end; ++p) {
        const int64_t b = p / C, c = p % C;
        load_padded<A>(X + p * h * w, h, w, A(pad), P.data());
        for (int64_t k = 0; k < T; ++k) {
          const AxisTaps<A>& ry = rows[b * T + k];
          const AxisTaps<A>& cx = cols[b * T + k];
          const int64_t lo = cx.lo, nc = cx.hi - cx.lo + 1;
          V.resize(H * nc), Vt.resize(nc * H);
          vertical<A>(P.data(), w + 2, ry, lo, nc, V.data());
          transpose(V.data(), nc, Vt.data(), H, H, nc);  // Vt[j][oy]
          for (int64_t ox = 0; ox < W; ++ox) {
            const A* __restrict__ a0 = Vt.data() + (cx.i0[ox] - lo) * H;
            const A* __restrict__ a1 = Vt.data() + (cx.i1[ox] - lo) * H;
            const A w0 = cx.w0[ox], w1 = cx.w1[ox];
            A* __restrict__ yt = Yt.data() + ox * H;
            for (int64_t oy = 0; oy < H; ++oy) yt[oy] = w0 * a0[oy] + w1 * a1[oy];
          }
          S* y = Y + ((k * N + b) * C + c) * H * W;
          A* o = out_plane<A>(y, Yb.data());  // half: transposed into float32, then rounded once
          transpose(Yt.data(), H, o, W, W, H);
          store_plane(o, y, H * W);
        }
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> affine_crop_bwd_cpu(const at::Tensor& grad_y, const at::Tensor& x,
                                                       const at::Tensor& theta, double pad, bool need_x,
                                                       bool need_theta) {
  DDK_CHECK_CPU(grad_y);
  DDK_CHECK_CONTIG(grad_y);
  DDK_CHECK_DIM(grad_y, 4, "(T*N, C, H, W)");
  DDK_CHECK_CPU(x);
  DDK_CHECK_CONTIG(x);
  DDK_CHECK_DIM(x, 4, "(N, C, h, w)");
  DDK_CHECK_FLOATING(x);
  DDK_CHECK_DTYPE(grad_y, x.scalar_type());
  check_theta(theta, x);
  const int64_t N = x.size(0), C = x.size(1), h = x.size(2), w = x.size(3), T = theta.size(1);
  TORCH_CHECK(grad_y.size(0) == T * N && grad_y.size(1) == C, "grad_y must have shape (T*N=", T * N,
              ", C=", C, ", H, W), got ", grad_y.sizes());
  const int64_t H = grad_y.size(2), W = grad_y.size(3);
  // An unwanted gradient comes back as an empty tensor.
  at::Tensor grad_x = need_x ? x.new_zeros(x.sizes()) : x.new_empty({0});
  at::Tensor grad_theta = need_theta ? theta.new_zeros(theta.sizes()) : theta.new_empty({0});
  if (grad_y.numel() == 0 || x.numel() == 0) return {grad_x, grad_theta};

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "affine_crop_bwd_cpu", [&] {
    using S = scalar_t;
    using A = acc_t<S>;  // the compute type: float32 for half storage
    const S* __restrict__ X = x.data_ptr<S>();
    const S* __restrict__ G = grad_y.data_ptr<S>();
    S* GX = need_x ? grad_x.data_ptr<S>() : nullptr;
    std::vector<AxisTaps<A>> rows, cols;
    build_tables<A>(theta.data_ptr<S>(), N * T, H, W, h, w, rows, cols);
    // Per-plane partials of the windows' gradient (top, left, height, width), in double.
    std::vector<double> part(need_theta ? N * C * T * 4 : 0, 0.0);
    const int64_t hp = h + 2, wp = w + 2;
    at::parallel_for(0, N * C, 1, [&](int64_t begin, int64_t end) {
      std::vector<A> P(hp * wp), Pt(wp * hp), gP(need_x ? hp * wp : 0), Gt(W * H), V, Vt, U, Ut, Hb, Hbt;
      std::vector<A> Gb(half_buf<A, S>(H * W));
      for (int64_t p = begin; p < end; ++p) {
        const int64_t b = p / C, c = p % C;
        load_padded<A>(X + p * h * w, h, w, A(pad), P.data());
        if (need_theta) transpose(P.data(), wp, Pt.data(), hp, hp, wp);  // Pt[col][row]
        if (need_x) std::fill(gP.begin(), gP.end(), A(0));
        for (int64_t k = 0; k < T; ++k) {
          const AxisTaps<A>& ry = rows[b * T + k];
          const AxisTaps<A>& cx = cols[b * T + k];
          const A* g = load_plane<A>(G + ((k * N + b) * C + c) * H * W, H * W, Gb.data());
          transpose(g, W, Gt.data(), H, H, W);  // Gt[ox][oy]
          const int64_t lo = cx.lo, nc = cx.hi - cx.lo + 1;
          if (need_theta) {
            double* acc = part.data() + (p * T + k) * 4;
            // Columns: dy/ds_x = V[:, upper] − V[:, lower].
            V.resize(H * nc), Vt.resize(nc * H);
            vertical<A>(P.data(), wp, ry, lo, nc, V.data());
            transpose(V.data(), nc, Vt.data(), H, H, nc);
            for (int64_t ox = 0; ox < W; ++ox) {
              const A* a0 = Vt.data() + (cx.i0[ox] - lo) * H;
              const A* a1 = Vt.data() + (cx.i1[ox] - lo) * H;
              const A* gt = Gt.data() + ox * H;
              double d = 0;
              for (int64_t oy = 0; oy < H; ++oy) d += double(gt[oy]) * double(a1[oy] - a0[oy]);
              acc[1] += d;
              acc[3] += d * double(cx.dlen[ox]);
            }
            // Rows: dy/ds_y = Hb[upper, :] − Hb[lower, :], Hb the horizontal-first resample of the row band.
            const int64_t rlo = ry.lo, nr = ry.hi - ry.lo + 1;
            Hbt.resize(W * nr), Hb.resize(nr * W);
            for (int64_t ox = 0; ox < W; ++ox) {
              const A* __restrict__ a0 = Pt.data() + cx.i0[ox] * hp + rlo;
              const A* __restrict__ a1 = Pt.data() + cx.i1[ox] * hp + rlo;
              const A w0 = cx.w0[ox], w1 = cx.w1[ox];
              A* __restrict__ o = Hbt.data() + ox * nr;
              for (int64_t r = 0; r < nr; ++r) o[r] = w0 * a0[r] + w1 * a1[r];
            }
            transpose(Hbt.data(), nr, Hb.data(), W, W, nr);  // Hb[r][ox]
            for (int64_t oy = 0; oy < H; ++oy) {
              const A* a0 = Hb.data() + (ry.i0[oy] - rlo) * W;
              const A* a1 = Hb.data() + (ry.i1[oy] - rlo) * W;
              const A* gr = g + oy * W;
              double d = 0;
              for (int64_t ox = 0; ox < W; ++ox) d += double(gr[ox]) * double(a1[ox] - a0[ox]);
              acc[0] += d;
              acc[2] += d * double(ry.dlen[oy]);
            }
          }
          if (need_x) {
            // Horizontal adjoint on transposed rows: Ut[j][oy] gathers the output columns reading column lo + j.
            Ut.assign(nc * H, A(0)), U.resize(H * nc);
            for (int64_t ox = 0; ox < W; ++ox) {
              const A* __restrict__ gt = Gt.data() + ox * H;
              A* __restrict__ u0 = Ut.data() + (cx.i0[ox] - lo) * H;
              const A w0 = cx.w0[ox];
              for (int64_t oy = 0; oy < H; ++oy) u0[oy] += w0 * gt[oy];
              A* __restrict__ u1 = Ut.data() + (cx.i1[ox] - lo) * H;
              const A w1 = cx.w1[ox];
              for (int64_t oy = 0; oy < H; ++oy) u1[oy] += w1 * gt[oy];
            }
            transpose(Ut.data(), H, U.data(), nc, nc, H);  // U[oy][j]
            for (int64_t oy = 0; oy < H; ++oy) {
              const A* __restrict__ u = U.data() + oy * nc;
              A* __restrict__ d0 = gP.data() + ry.i0[oy] * wp + lo;
              const A w0 = ry.w0[oy];
              for (int64_t j = 0; j < nc; ++j) d0[j] += w0 * u[j];
              A* __restrict__ d1 = gP.data() + ry.i1[oy] * wp + lo;
              const A w1 = ry.w1[oy];
              for (int64_t j = 0; j < nc; ++j) d1[j] += w1 * u[j];
            }
          }
        }
        if (need_x) {  // the pad ring is a constant: its gradient is dropped
          S* gx = GX + p * h * w;
          for (int64_t r = 0; r < h; ++r) convert_n(gP.data() + (r + 1) * wp + 1, gx + r * w, w);
        }
      }
    });
    if (need_theta) {  // channels summed in order, whatever the thread split
      S* GT = grad_theta.data_ptr<S>();
      for (int64_t b = 0; b < N; ++b)
        for (int64_t q = 0; q < T * 4; ++q) {
          double s = 0;
          for (int64_t c = 0; c < C; ++c) s += part[(b * C + c) * T * 4 + q];
          GT[b * T * 4 + q] = S(A(s));  // half: through float32, as c10 converts
        }
    }
  });
  return {grad_x, grad_theta};
}

}  // namespace ddkernels
