// IDC multi-formation decode on CPU: pad(0.5) + f×f tile crop + bilinear resize, tile-major.
//
// Both passes are separable and work one input plane (b, c) at a time, so planes are independent
// and split across threads with no atomics. The horizontal (column) steps would be per-element
// gathers in row-major layout (slow: ~4 cycles per element even with AVX2 gathers), so they run
// on a transposed copy in L1 where every inner loop is a contiguous blend of whole columns:
//   forward  = transpose the padded plane, blend source columns into the W output columns of
//              each tile column (shared by the f tiles under it), transpose back, then a vertical
//              blend that writes each output row contiguously;
//   backward = the exact adjoint as a *gather*: vertical adjoint per source row from the
//              precomputed inverse tap table, transpose, horizontal adjoint per source column,
//              transpose into grad_x. Summation order is fixed by the tables, so results are
//              bitwise repeatable.
// Tap tables (indices + weights, computed once per shape in Python) are tile-local, so the same
// table serves every tile.
// bfloat16 / float16: rows are converted into the float32 L1 buffers as they are copied in (and
// grad_out rows as the vertical adjoint reads them), the blends run in float32 (tap weights are
// float32), and each output row is rounded once, in registers, as it is stored.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>

#include <algorithm>
#include <vector>

#include "check.h"
#include "ops.h"
#include "simd.h"
#include "transpose.h"

namespace ddkernels {
namespace {

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int64_t round8(int64_t a) { return ceil_div(a, 8) * 8; }

// The tap weights' dtype: float32 for half data.
at::ScalarType acc_type(at::ScalarType t) {
  return t == at::kBFloat16 || t == at::kHalf ? at::kFloat : t;
}

void check_tables(const at::Tensor& row_idx, const at::Tensor& row_w, const at::Tensor& col_idx,
                  const at::Tensor& col_w, at::ScalarType wdtype) {
  DDK_CHECK_CPU(row_idx);
  DDK_CHECK_CPU(row_w);
  DDK_CHECK_CPU(col_idx);
  DDK_CHECK_CPU(col_w);
  DDK_CHECK_CONTIG(row_idx);
  DDK_CHECK_CONTIG(row_w);
  DDK_CHECK_CONTIG(col_idx);
  DDK_CHECK_CONTIG(col_w);
  DDK_CHECK_DIM(row_idx, 2, "tap table");
  DDK_CHECK_DIM(col_idx, 2, "tap table");
  DDK_CHECK_DTYPE(row_idx, at::kLong);
  DDK_CHECK_DTYPE(col_idx, at::kLong);
  DDK_CHECK_DTYPE(row_w, wdtype);
  DDK_CHECK_DTYPE(col_w, wdtype);
  TORCH_CHECK(row_w.sizes() == row_idx.sizes(), "row_w must have the shape of row_idx ",
              row_idx.sizes(), ", got ", row_w.sizes());
  TORCH_CHECK(col_w.sizes() == col_idx.sizes(), "col_w must have the shape of col_idx ",
              col_idx.sizes(), ", got ", col_w.sizes());
}

// Indices in the tables are trusted for speed; this one pass keeps a bad table from reading
// out of bounds.
void check_index_range(const at::Tensor& idx, int64_t limit, const char* name) {
  const int64_t* p = idx.data_ptr<int64_t>();
  for (int64_t n = 0; n < idx.numel(); ++n)
    TORCH_CHECK(p[n] >= 0 && p[n] < limit, name, " holds index ", p[n], " outside [0, ", limit,
                ")");
}

}  // namespace

at::Tensor multi_formation_fwd_cpu(const at::Tensor& x, int64_t factor, const at::Tensor& row_idx,
                                   const at::Tensor& row_w, const at::Tensor& col_idx,
                                   const at::Tensor& col_w) {
  DDK_CHECK_CPU(x);
  DDK_CHECK_CONTIG(x);
  DDK_CHECK_DIM(x, 4, "(N, C, h, w)");
  DDK_CHECK_FLOATING(x);
  const int64_t N = x.size(0), C = x.size(1), h = x.size(2), w = x.size(3);
  TORCH_CHECK(factor >= 1 && factor <= std::min(h, w), "factor must be in [1, min(h, w)=",
              std::min(h, w), "], got ", factor);
  check_tables(row_idx, row_w, col_idx, col_w, acc_type(x.scalar_type()));
  TORCH_CHECK(row_idx.size(0) == 2 && col_idx.size(0) == 2,
              "forward tap tables must have shape (2, out), got row_idx ", row_idx.sizes(),
              " and col_idx ", col_idx.sizes());
  const int64_t f = factor, sh = ceil_div(h, f), sw = ceil_div(w, f);
  const int64_t H = row_idx.size(1), W = col_idx.size(1);
  check_index_range(row_idx, sh, "row_idx");
  check_index_range(col_idx, sw, "col_idx");

  at::Tensor out = x.new_empty({f * f * N, C, H, W});
  if (out.numel() == 0) return out;
  const int64_t planes = N * C, hp = sh * f, wp = sw * f;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "multi_formation_fwd_cpu", [&] {
    using S = scalar_t;
    using scalar_t = acc_t<S>;  // the blends below compute in the accumulation type
    using V = typename Vec<scalar_t>::type;
    const S* __restrict__ X = x.data_ptr<S>();
    S* __restrict__ Y = out.data_ptr<S>();
    const int64_t* ri0 = row_idx.data_ptr<int64_t>();
    const int64_t* ri1 = ri0 + H;
    const scalar_t* rw0 = row_w.data_ptr<scalar_t>();
    const scalar_t* rw1 = rw0 + H;
    const int64_t* ci0 = col_idx.data_ptr<int64_t>();
    const int64_t* ci1 = ci0 + W;
    const scalar_t* cw0 = col_w.data_ptr<scalar_t>();
    const scalar_t* cw1 = cw0 + W;
    const scalar_t pad = scalar_t(0.5);

    // Buffer sides are rounded up to 8 so every transpose is whole 8×8 register blocks; the
    // extra rows/columns hold padding or unused values that never reach the output.
    const int64_t hp8 = round8(hp), wp8 = round8(wp), W8 = round8(W);
    at::parallel_for(0, planes, 1, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> plane(hp8 * wp8);    // padded source plane, row-major
      std::vector<scalar_t> xt(wp8 * hp8);       // its transpose: xt[x][r]
      std::vector<scalar_t> ht(W8 * hp8, 0);     // one tile column resized horizontally, transposed
      std::vector<scalar_t> hbuf(f * hp8 * W8);  // hbuf[j][r][ox], row-major again
      for (int64_t p = begin; p < end; ++p) {
        const int64_t b = p / C, c = p % C;
        const S* src = X + p * h * w;
        if (p + 1 < end) prefetch_half<scalar_t>(src + h * w, h * w);
        // The 0.5 padding becomes data, so the blends below have no branches.
        for (int64_t r = 0; r < hp8; ++r) {
          scalar_t* row = plane.data() + r * wp8;
          const int64_t valid = r < h ? w : 0;
          convert_n(src + r * w, row, valid);
          std::fill(row + valid, row + wp8, pad);
        }
        transpose(plane.data(), wp8, xt.data(), hp8, hp8, wp8);
        for (int64_t j = 0; j < f; ++j) {
          const scalar_t* seg = xt.data() + j * sw * hp8;
          for (int64_t ox = 0; ox < W; ++ox) {
            const scalar_t* __restrict__ a0 = seg + ci0[ox] * hp8;
            const scalar_t* __restrict__ a1 = seg + ci1[ox] * hp8;
            const scalar_t w0 = cw0[ox], w1 = cw1[ox];
            scalar_t* __restrict__ dst = ht.data() + ox * hp8;
            for (int64_t r = 0; r < hp8; ++r) dst[r] = w0 * a0[r] + w1 * a1[r];
          }
          transpose(ht.data(), hp8, hbuf.data() + j * hp8 * W8, W8, W8, hp8);
        }
        for (int64_t i = 0; i < f; ++i) {
          for (int64_t j = 0; j < f; ++j) {
            const int64_t k = i * f + j;
            const scalar_t* base = hbuf.data() + (j * hp8 + i * sh) * W8;
            S* __restrict__ o = Y + ((k * N + b) * C + c) * H * W;
            for (int64_t oy = 0; oy < H; ++oy) {
              const scalar_t* __restrict__ a0 = base + ri0[oy] * W8;
              const scalar_t* __restrict__ a1 = base + ri1[oy] * W8;
              const scalar_t w0 = rw0[oy], w1 = rw1[oy];
              write_each(
                  o + oy * W, W, false, [](int64_t) {},
                  [&](int64_t ox) { return V(w0 * vload<scalar_t>(a0 + ox) + w1 * vload<scalar_t>(a1 + ox)); },
                  [&](int64_t ox) { return w0 * a0[ox] + w1 * a1[ox]; });
            }
          }
        }
      }
    });
  });
  return out;
}

at::Tensor multi_formation_bwd_cpu(const at::Tensor& grad_out, int64_t factor, int64_t in_h,
                                   int64_t in_w, const at::Tensor& row_idx, const at::Tensor& row_w,
                                   const at::Tensor& col_idx, const at::Tensor& col_w) {
  DDK_CHECK_CPU(grad_out);
  DDK_CHECK_CONTIG(grad_out);
  DDK_CHECK_DIM(grad_out, 4, "(f*f*N, C, H, W)");
  DDK_CHECK_FLOATING(grad_out);
  const int64_t h = in_h, w = in_w, f = factor;
  TORCH_CHECK(h >= 1 && w >= 1, "in_h and in_w must be positive, got ", h, " and ", w);
  TORCH_CHECK(f >= 1 && f <= std::min(h, w), "factor must be in [1, min(in_h, in_w)=",
              std::min(h, w), "], got ", f);
  TORCH_CHECK(grad_out.size(0) % (f * f) == 0, "grad_out.size(0) must be a multiple of factor^2=",
              f * f, ", got ", grad_out.size(0));
  check_tables(row_idx, row_w, col_idx, col_w, acc_type(grad_out.scalar_type()));
  const int64_t sh = ceil_div(h, f), sw = ceil_div(w, f);
  const int64_t N = grad_out.size(0) / (f * f), C = grad_out.size(1);
  const int64_t H = grad_out.size(2), W = grad_out.size(3);
  TORCH_CHECK(row_idx.size(0) == sh && col_idx.size(0) == sw,
              "adjoint tap tables must have shape (tile_h=", sh, ", K) and (tile_w=", sw,
              ", K), got row_idx ", row_idx.sizes(), " and col_idx ", col_idx.sizes());
  check_index_range(row_idx, H, "row_idx");
  check_index_range(col_idx, W, "col_idx");

  at::Tensor grad_x = grad_out.new_empty({N, C, h, w});
  if (grad_x.numel() == 0) return grad_x;
  const int64_t KH = row_idx.size(1), KW = col_idx.size(1), planes = N * C;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, grad_out.scalar_type(), "multi_formation_bwd_cpu", [&] {
    using S = scalar_t;
    using scalar_t = acc_t<S>;  // the adjoint computes in the accumulation type
    using V = typename Vec<scalar_t>::type;
    const S* __restrict__ G = grad_out.data_ptr<S>();
    S* __restrict__ GX = grad_x.data_ptr<S>();
    const int64_t* rgi = row_idx.data_ptr<int64_t>();
    const scalar_t* rgw = row_w.data_ptr<scalar_t>();
    const int64_t* cgi = col_idx.data_ptr<int64_t>();
    const scalar_t* cgw = col_w.data_ptr<scalar_t>();

    // Sides rounded up to 8 as in the forward; rows/columns past the tile are computed from
    // whatever the buffers hold and never copied out.
    const int64_t sh8 = round8(sh), sw8 = round8(sw), W8 = round8(W);
    at::parallel_for(0, planes, 1, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> vbuf(sh8 * W8, 0);  // vertical adjoint of one tile: vbuf[r][ox]
      std::vector<scalar_t> vt(W8 * sh8, 0);    // its transpose: vt[ox][r]
      std::vector<scalar_t> gt(sw8 * sh8, 0);   // horizontal adjoint, transposed: gt[xc][r]
      std::vector<scalar_t> gb(sh8 * sw8, 0);   // the tile's gradient, row-major
      for (int64_t p = begin; p < end; ++p) {
        const int64_t b = p / C, c = p % C;
        S* gx = GX + p * h * w;
        // Tiles do not overlap, so every stored pixel is written by exactly one tile; pixels
        // of the 0.5 padding have no gradient and are never visited.
        for (int64_t i = 0; i < f; ++i) {
          const int64_t rows = std::min(sh, h - i * sh);
          for (int64_t j = 0; j < f; ++j) {
            const int64_t cols = std::min(sw, w - j * sw);
            if (rows <= 0 || cols <= 0) continue;
            const S* g = G + (((i * f + j) * N + b) * C + c) * H * W;
            for (int64_t r = 0; r < rows; ++r) {
              scalar_t* __restrict__ t = vbuf.data() + r * W8;
              const int64_t* gi = rgi + r * KH;
              const scalar_t* gw = rgw + r * KH;
              const S* __restrict__ g0 = g + gi[0] * W;
              const scalar_t w0 = gw[0];
              write_each(
                  t, W, false, [](int64_t) {}, [&](int64_t ox) { return V(w0 * vload<scalar_t>(g0 + ox)); },
                  [&](int64_t ox) { return w0 * scalar_t(g0[ox]); });
              for (int64_t q = 1; q < KH; ++q) {
                const scalar_t wt = gw[q];
                const S* __restrict__ gq = g + gi[q] * W;
                int64_t ox = 0;
                for (; ox + Vec<scalar_t>::lanes <= W; ox += Vec<scalar_t>::lanes) {
                  V acc;
                  DDK_VLOAD(acc, t + ox);
                  acc += wt * vload<scalar_t>(gq + ox);
                  DDK_VSTORE(t + ox, acc);
                }
                for (; ox < W; ++ox) t[ox] += wt * scalar_t(gq[ox]);
              }
            }
            transpose(vbuf.data(), W8, vt.data(), sh8, sh8, W8);
            for (int64_t xc = 0; xc < cols; ++xc) {
              scalar_t* __restrict__ o = gt.data() + xc * sh8;
              const int64_t* gi = cgi + xc * KW;
              const scalar_t* gw = cgw + xc * KW;
              const scalar_t* __restrict__ v0 = vt.data() + gi[0] * sh8;
              for (int64_t r = 0; r < sh8; ++r) o[r] = gw[0] * v0[r];
              for (int64_t q = 1; q < KW; ++q) {
                const scalar_t wt = gw[q];
                const scalar_t* __restrict__ vq = vt.data() + gi[q] * sh8;
                for (int64_t r = 0; r < sh8; ++r) o[r] += wt * vq[r];
              }
            }
            transpose(gt.data(), sh8, gb.data(), sw8, sw8, sh8);
            for (int64_t r = 0; r < rows; ++r)
              convert_n(gb.data() + r * sw8, gx + (i * sh + r) * w + j * sw, cols);
          }
        }
      }
    });
  });
  return grad_x;
}

}  // namespace ddkernels
