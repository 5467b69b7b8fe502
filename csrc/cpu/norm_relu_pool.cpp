// ConvNet-3's block epilogue on CPU (docs/spec.md §0.2): out = avgpool2x2(relu(γ_c·(x − μ)·rstd + β_c)),
// with μ, rstd the statistics of each (n, c) plane ("instance norm" = GroupNorm(C, C)).
//
// PyTorch runs this as GroupNorm (stats pass + apply pass), ReLU (in place) and AvgPool2d: about
// six passes over a conv output that is far larger than the cache, plus the same again and more
// in the backward. Here every (n, c) plane (32×32 floats = 4 KB at most in ConvNet-3) is one task
// that stays in L1:
//   forward  = two stat passes over the plane, then one pass that normalizes, rectifies and pools
//              two rows at a time; only the pooled quarter is written. Saved: x, μ, rstd.
//   backward = spread the pooled gradient over its 2×2 windows into an L1 buffer, one pass that
//              applies the ReLU mask (recomputed from x) and sums Σd, Σd·x̂, one pass writing dx.
//              dγ, dβ: per-plane partial sums, then summed over n in a fixed order — no atomics,
//              bitwise repeatable and independent of the thread count.
//   double backward (create_graph=True, e.g. gradient matching's meta-gradient) = the closed form
//              of reference.double_backward: one pass for d and five plane sums, one pass writing
//              ∂/∂x and the masked e that pools into ∂/∂grad_out; ∂/∂γ from per-plane partials.
// Rows/columns the floor-mode pool drops (odd H or W) get no gradient, as in PyTorch.
// bfloat16 / float16 x: each plane is converted into a float32 L1 buffer and the same float32 code
// runs on it (simd.h's load_plane / store_plane); γ/β (float32 or x's dtype), μ, rstd and the
// parameter gradients' sums are float32, results are rounded once into x's dtype.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cstring>
#include <optional>
#include <vector>

#include "check.h"
#include "ops.h"
#include "plane.h"
#include "simd.h"

namespace ddkernels {
namespace {

// relu(g·((x − m)·r) + b) for vectors and scalars. (x − m)·r is formed first, not folded into
// one affine map, which cancels badly when |m| ≫ std. `z < 0 ? 0 : z` keeps NaN, like torch.relu.
template <typename V, typename T>
inline V act(V x, T m, T r, T g, T b) {
  const V z = g * ((x - m) * r) + b;
  return z < 0 ? V{} : z;
}

// Two rows of the plane rectified and summed column-wise into t (n columns): half the pooling,
// at full vector width on contiguous data.
template <typename T>
void rows_sum(int64_t n, const T* __restrict__ x0, const T* __restrict__ x1, T m, T r, T g, T b,
              T* __restrict__ t) {
  using V = typename Vec<T>::type;
  write_each(
      t, n, false, [](int64_t) {},
      [&](int64_t j) {
        V a, c;
        DDK_VLOAD(a, x0 + j);
        DDK_VLOAD(c, x1 + j);
        return V(act<V>(a, m, r, g, b) + act<V>(c, m, r, g, b));
      },
      [&](int64_t j) { return act<T>(x0[j], m, r, g, b) + act<T>(x1[j], m, r, g, b); });
}

template <typename T>
void fwd_plane(const T* __restrict__ x, int64_t H, int64_t W, T m, T r, T g, T b, bool pool,
               T* __restrict__ out, T* __restrict__ t) {
  if (!pool) {
    using V = typename Vec<T>::type;
    write_each(
        out, H * W, false, [](int64_t) {},
        [&](int64_t i) {
          V v;
          DDK_VLOAD(v, x + i);
          return act<V>(v, m, r, g, b);
        },
        [&](int64_t i) { return act<T>(x[i], m, r, g, b); });
    return;
  }
  const int64_t Ho = H / 2, Wo = W / 2;
  for (int64_t i = 0; i < Ho; ++i) {
    rows_sum(2 * Wo, x + 2 * i * W, x + (2 * i + 1) * W, m, r, g, b, t);
    T* __restrict__ o = out + i * Wo;
    for (int64_t j = 0; j < Wo; ++j) o[j] = (t[2 * j] + t[2 * j + 1]) * T(0.25);
  }
}

// u = the pooled gradient spread over its 2×2 windows (0.25 each, 0 where the pool drops).
template <typename T>
void spread(const T* __restrict__ go, int64_t H, int64_t W, T* __restrict__ u) {
  const int64_t Ho = H / 2, Wo = W / 2;
  for (int64_t i = 0; i < H; ++i) {
    T* __restrict__ row = u + i * W;
    if (i >= 2 * Ho) {
      std::fill(row, row + W, T(0));
      continue;
    }
    const T* __restrict__ g = go + (i / 2) * Wo;
    for (int64_t j = 0; j < Wo; ++j) row[2 * j] = row[2 * j + 1] = g[j] * T(0.25);
    for (int64_t j = 2 * Wo; j < W; ++j) row[j] = 0;
  }
}

// d = u where the forward's ReLU passed (recomputed from x), 0 elsewhere, into d (may alias u), and
// the plane sums Σd, Σd·x̂ (the backward) and, with GG (gg, the upstream gradient of dx; the double
// backward), Σgg, Σgg·x̂, Σgg·d — LANES partial sums each (plane.h's order), combined in double.
template <typename T, bool GG>
void mask_sums(int64_t L, const T* __restrict__ x, const T* u, const T* __restrict__ gg, T m, T r,
               T g, T b, T* d, double* sums) {
  using V = typename Vec<T>::type;
  constexpr int64_t W = Vec<T>::lanes, NV = LANES / W;
  V acc[5][NV] = {};
  int64_t i = 0;
  for (; i + LANES <= L; i += LANES) {
    for (int64_t h = 0; h < NV; ++h) {
      const int64_t k = i + h * W;
      V xv, uv;
      DDK_VLOAD(xv, x + k);
      DDK_VLOAD(uv, u + k);
      const V xh = (xv - m) * r;
      const V dv = g * xh + b > 0 ? uv : V{};
      DDK_VSTORE(d + k, dv);
      acc[0][h] += dv;
      acc[1][h] += dv * xh;
      if constexpr (GG) {
        V gv;
        DDK_VLOAD(gv, gg + k);
        acc[2][h] += gv;
        acc[3][h] += gv * xh;
        acc[4][h] += gv * dv;
      }
    }
  }
  T lanes[5][LANES];
  std::memcpy(lanes, acc, sizeof(acc));
  for (; i < L; ++i) {
    const T xh = (x[i] - m) * r;
    const T dv = g * xh + b > 0 ? u[i] : T(0);
    d[i] = dv;
    lanes[0][i % LANES] += dv;
    lanes[1][i % LANES] += dv * xh;
    if constexpr (GG) {
      lanes[2][i % LANES] += gg[i];
      lanes[3][i % LANES] += gg[i] * xh;
      lanes[4][i % LANES] += gg[i] * d[i];
    }
  }
  for (int k = 0; k < 5; ++k) sums[k] = GG || k < 2 ? combine_lanes(lanes[k]) : 0.0;
}

// The per-plane constants of the double backward's closed form (reference.double_backward).
template <typename T>
struct Bwd2 {
  T m, r, g, b;        // the plane's statistics and affine parameters
  T dm, a, gm, bq, cq;  // d̄, mean(d·x̂), mean(gg), mean(gg·x̂), mean(gg·d) − mean(gg)·d̄
  T ww, wb;            // the upstream gradients of dγ and dβ for this channel
};

// Double backward, pass 2: e = [mask]·(γr(gg − ḡ − x̂B) + ggw·x̂ + ggb) into e (pooled by the
// caller into ∂/∂grad_out), and ∂/∂x = γr²(−B(d − d̄) − A(gg − ḡ) + x̂(3AB − C)) + ggw·r(d − d̄ − x̂A)
// into gx; either may be null.
template <typename T, bool GG>
void bwd2_outputs(int64_t L, const T* __restrict__ x, const T* __restrict__ d,
                  const T* __restrict__ gg, const Bwd2<T>& k, T* __restrict__ e, T* __restrict__ gx) {
  using V = typename Vec<T>::type;
  const T gr = k.g * k.r, grr = gr * k.r, k3 = 3 * k.a * k.bq - k.cq, wr = k.ww * k.r;
  const auto xhat = [&](auto xv) { return (xv - k.m) * k.r; };
  if (e)
    write_each(
        e, L, false, [](int64_t) {},
        [&](int64_t i) {
          V xv, gv = {};
          DDK_VLOAD(xv, x + i);
          if constexpr (GG) DDK_VLOAD(gv, gg + i);
          const V xh = xhat(xv);
          const V ev = gr * (gv - k.gm - xh * k.bq) + k.ww * xh + k.wb;
          return V(k.g * xh + k.b > 0 ? ev : V{});
        },
        [&](int64_t i) {
          const T xh = xhat(x[i]), gv = GG ? gg[i] : T(0);
          return k.g * xh + k.b > 0 ? gr * (gv - k.gm - xh * k.bq) + k.ww * xh + k.wb : T(0);
        });
  if (gx)
    write_each(
        gx, L, false, [](int64_t) {},
        [&](int64_t i) {
          V xv, dv, gv = {};
          DDK_VLOAD(xv, x + i);
          DDK_VLOAD(dv, d + i);
          if constexpr (GG) DDK_VLOAD(gv, gg + i);
          const V xh = xhat(xv), dd = dv - k.dm;
          return V(grr * (-k.bq * dd - k.a * (gv - k.gm) + xh * k3) + wr * (dd - xh * k.a));
        },
        [&](int64_t i) {
          const T xh = xhat(x[i]), dd = d[i] - k.dm, gv = GG ? gg[i] : T(0);
          return grr * (-k.bq * dd - k.a * (gv - k.gm) + xh * k3) + wr * (dd - xh * k.a);
        });
}

// dx = g·r·((d − mean d) − x̂·mean(d·x̂)), the instance-norm backward with d the gradient of its output.
// dx is written in its storage type S (rounded in registers for half storage).
template <typename T, typename S>
void dx_pass(int64_t L, const T* __restrict__ x, const T* __restrict__ d, T m, T r, T k, T md,
             T mdx, S* __restrict__ dx) {
  using V = typename Vec<T>::type;
  write_each(
      dx, L, false, [](int64_t) {},
      [&](int64_t i) {
        V xv, dv;
        DDK_VLOAD(xv, x + i);
        DDK_VLOAD(dv, d + i);
        return V(k * ((dv - md) - ((xv - m) * r) * mdx));
      },
      [&](int64_t i) { return k * ((d[i] - md) - ((x[i] - m) * r) * mdx); });
}

void check_x(const at::Tensor& x, const char* name) {
  TORCH_CHECK(x.device().is_cpu(), name, " must be a CPU tensor, got device ", x.device());
  TORCH_CHECK(x.is_contiguous(), name, " must be contiguous (got strides ", x.strides(), ")");
  TORCH_CHECK(x.dim() == 4, name, " must be 4-D (N, C, H, W), got shape ", x.sizes());
  DDK_CHECK_FLOATING(x);
}

bool is_half(const at::Tensor& x) {
  return x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kHalf;
}

// The accumulation dtype of x: float32 for the half types.
at::ScalarType acc_type(const at::Tensor& x) { return is_half(x) ? at::kFloat : x.scalar_type(); }

// weight, bias (and ggw, ggb): x's dtype, or float32 with a half x (autocast's GroupNorm).
void check_channel(const at::Tensor& t, const at::Tensor& x, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor, got device ", t.device());
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous (got strides ", t.strides(), ")");
  TORCH_CHECK(t.scalar_type() == x.scalar_type() || t.scalar_type() == acc_type(x), name,
              " must have x's dtype ", x.scalar_type(), " (or float32 for a half x), got ",
              t.scalar_type());
  TORCH_CHECK(t.dim() == 1 && t.size(0) == x.size(1), name, " must have shape (C=", x.size(1),
              ",), got ", t.sizes());
}

// 2×2 average of the plane e (H×W) into out (H/2 × W/2), floor mode.
template <typename T>
void pool_plane(const T* __restrict__ e, int64_t H, int64_t W, T* __restrict__ out) {
  const int64_t Ho = H / 2, Wo = W / 2;
  for (int64_t i = 0; i < Ho; ++i) {
    const T* __restrict__ r0 = e + 2 * i * W;
    const T* __restrict__ r1 = r0 + W;
    for (int64_t j = 0; j < Wo; ++j)
      out[i * Wo + j] = ((r0[2 * j] + r1[2 * j]) + (r0[2 * j + 1] + r1[2 * j + 1])) * T(0.25);
  }
}

// The inputs both backward kernels share: x, grad_out of the block's output shape, (C,) weight and
// bias, (N, C) mean and rstd of x's accumulation dtype.
void check_backward_inputs(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
                           const at::Tensor& bias, const at::Tensor& mean, const at::Tensor& rstd,
                           bool pool) {
  check_x(x, "x");
  check_x(grad_out, "grad_out");
  check_channel(weight, x, "weight");
  check_channel(bias, x, "bias");
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t Ho = pool ? H / 2 : H, Wo = pool ? W / 2 : W;
  TORCH_CHECK(grad_out.scalar_type() == x.scalar_type(), "grad_out must have x's dtype ",
              x.scalar_type(), ", got ", grad_out.scalar_type());
  TORCH_CHECK(grad_out.size(0) == N && grad_out.size(1) == C && grad_out.size(2) == Ho &&
                  grad_out.size(3) == Wo,
              "grad_out must have shape (", N, ", ", C, ", ", Ho, ", ", Wo, "), got ",
              grad_out.sizes());
  for (const at::Tensor* t : {&mean, &rstd}) {
    DDK_CHECK_CPU((*t));
    DDK_CHECK_CONTIG((*t));
    DDK_CHECK_DTYPE((*t), acc_type(x));
    TORCH_CHECK(t->dim() == 2 && t->size(0) == N && t->size(1) == C,
                "mean and rstd must have shape (N=", N, ", C=", C, "), got ", t->sizes());
  }
}

// out[c] = Σ_n part[(n·C + c)·K + k]: one field of the per-plane partials summed over the batch in
// a fixed order (the parameter gradients; no atomics, independent of the thread count).
template <typename T>
void sum_over_batch(const std::vector<double>& part, int64_t N, int64_t C, int64_t K, int64_t k,
                    T* out) {
  for (int64_t c = 0; c < C; ++c) {
    double t = 0;
    for (int64_t n = 0; n < N; ++n) t += part[(n * C + c) * K + k];
    out[c] = T(t);
  }
}

// A few planes per task: ConvNet-3's deepest planes are 8×8, and a task per plane would cost more
// to schedule than to run.
int64_t grain(int64_t L) { return std::max<int64_t>(1, 8192 / std::max<int64_t>(L, 1)); }

// A (C,) parameter in the accumulation dtype (the tensor itself when it already is).
at::Tensor acc_param(const at::Tensor& t, const at::Tensor& x) { return t.to(acc_type(x)); }

#define DDK_DISPATCH_FLOATING(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, TYPE, NAME, __VA_ARGS__)

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> norm_relu_pool_fwd_cpu(const at::Tensor& x,
                                                                      const at::Tensor& weight,
                                                                      const at::Tensor& bias,
                                                                      double eps, bool pool) {
  check_x(x, "x");
  check_channel(weight, x, "weight");
  check_channel(bias, x, "bias");
  TORCH_CHECK(eps >= 0, "eps must be non-negative, got ", eps);
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), L = H * W;
  TORCH_CHECK(!pool || (H >= 2 && W >= 2), "pooling needs H, W >= 2, got ", H, "x", W);
  const int64_t Ho = pool ? H / 2 : H, Wo = pool ? W / 2 : W;
  at::Tensor out = x.new_empty({N, C, Ho, Wo});
  at::Tensor mean = x.new_empty({N, C}, x.options().dtype(acc_type(x)));
  at::Tensor rstd = x.new_empty({N, C}, mean.options());
  if (N * C == 0 || L == 0) return {out, mean, rstd};
  const at::Tensor w = acc_param(weight, x), b = acc_param(bias, x);

  DDK_DISPATCH_FLOATING(x.scalar_type(), "norm_relu_pool_fwd_cpu", [&] {
    using S = scalar_t;
    using T = acc_t<S>;
    const S* X = x.data_ptr<S>();
    const T* G = w.data_ptr<T>();
    const T* B = b.data_ptr<T>();
    S* O = out.data_ptr<S>();
    T* M = mean.data_ptr<T>();
    T* R = rstd.data_ptr<T>();
    at::parallel_for(0, N * C, grain(L), [&](int64_t begin, int64_t end) {
      std::vector<T> t(W), xb(half_buf<T, S>(L)), ob(half_buf<T, S>(Ho * Wo));
      for (int64_t p = begin; p < end; ++p) {
        if (p + 1 < end) prefetch(X + (p + 1) * L), prefetch_half<T>(X + (p + 1) * L, L);
        const T* xp = load_plane(X + p * L, L, xb.data());
        plane_stats(xp, L, eps, M[p], R[p]);
        const int64_t c = p % C;
        T* op = out_plane(O + p * Ho * Wo, ob.data());
        fwd_plane(xp, H, W, M[p], R[p], G[c], B[c], pool, op, t.data());
        store_plane(op, O + p * Ho * Wo, Ho * Wo);
      }
    });
  });
  return {out, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> norm_relu_pool_bwd_cpu(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
    const at::Tensor& bias, const at::Tensor& mean, const at::Tensor& rstd, bool pool, bool need_x,
    bool need_wb) {
  check_backward_inputs(grad_out, x, weight, bias, mean, rstd, pool);
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), L = H * W;
  const int64_t Ho = pool ? H / 2 : H, Wo = pool ? W / 2 : W;
  const at::ScalarType acc = acc_type(x);
  at::Tensor grad_x = need_x ? x.new_empty(x.sizes()) : x.new_empty({0});
  at::Tensor grad_w = need_wb ? weight.new_zeros({C}, weight.options().dtype(acc)) : x.new_empty({0});
  at::Tensor grad_b = need_wb ? weight.new_zeros({C}, weight.options().dtype(acc)) : x.new_empty({0});
  if (N * C == 0 || L == 0 || !(need_x || need_wb))
    return {grad_x, need_wb ? grad_w.to(weight.scalar_type()) : grad_w,
            need_wb ? grad_b.to(bias.scalar_type()) : grad_b};
  const at::Tensor w = acc_param(weight, x), b = acc_param(bias, x);

  DDK_DISPATCH_FLOATING(x.scalar_type(), "norm_relu_pool_bwd_cpu", [&] {
    using S = scalar_t;
    using T = acc_t<S>;
    const S* GO = grad_out.data_ptr<S>();
    const S* X = x.data_ptr<S>();
    const T* G = w.data_ptr<T>();
    const T* B = b.data_ptr<T>();
    const T* M = mean.data_ptr<T>();
    const T* R = rstd.data_ptr<T>();
    S* DX = need_x ? grad_x.data_ptr<S>() : nullptr;
    // Per-plane Σd·x̂ and Σd, summed over n below.
    std::vector<double> part(need_wb ? 2 * N * C : 0);
    at::parallel_for(0, N * C, grain(L), [&](int64_t begin, int64_t end) {
      std::vector<T> buf(L), xb(half_buf<T, S>(L)), gb(half_buf<T, S>(Ho * Wo));
      for (int64_t p = begin; p < end; ++p) {
        const int64_t c = p % C;
        if (p + 1 < end) {
          prefetch(X + (p + 1) * L), prefetch(GO + (p + 1) * Ho * Wo);
          prefetch_half<T>(X + (p + 1) * L, L), prefetch_half<T>(GO + (p + 1) * Ho * Wo, Ho * Wo);
        }
        const T* xp = load_plane(X + p * L, L, xb.data());
        const T* gp = load_plane(GO + p * Ho * Wo, Ho * Wo, gb.data());
        const T* u = gp;  // without pooling the output gradient is already per pixel
        if (pool) {
          spread(gp, H, W, buf.data());
          u = buf.data();
        }
        double s[5];
        mask_sums<T, false>(L, xp, u, nullptr, M[p], R[p], G[c], B[c], buf.data(), s);
        const double sum_d = s[0], sum_dx = s[1];
        if (need_wb) part[2 * p] = sum_dx, part[2 * p + 1] = sum_d;
        if (need_x)
          dx_pass(L, xp, buf.data(), M[p], R[p], T(G[c] * R[p]), T(sum_d / L), T(sum_dx / L), DX + p * L);
      }
    });
    if (need_wb) {
      sum_over_batch(part, N, C, 2, 0, grad_w.data_ptr<T>());
      sum_over_batch(part, N, C, 2, 1, grad_b.data_ptr<T>());
    }
  });
  if (!need_wb) return {grad_x, grad_w, grad_b};
  return {grad_x, grad_w.to(weight.scalar_type()), grad_b.to(bias.scalar_type())};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> norm_relu_pool_bwd2_cpu(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
    const at::Tensor& bias, const at::Tensor& mean, const at::Tensor& rstd, bool pool,
    const std::optional<at::Tensor>& ggx, const std::optional<at::Tensor>& ggw,
    const std::optional<at::Tensor>& ggb, bool need_go, bool need_x, bool need_w) {
  check_backward_inputs(grad_out, x, weight, bias, mean, rstd, pool);
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), L = H * W;
  const int64_t Ho = pool ? H / 2 : H, Wo = pool ? W / 2 : W;
  if (ggx) {
    check_x(*ggx, "ggx");
    TORCH_CHECK(ggx->sizes() == x.sizes() && ggx->scalar_type() == x.scalar_type(),
                "ggx must have x's shape and dtype, got ", ggx->sizes(), " ", ggx->scalar_type());
  }
  if (ggw) check_channel(*ggw, x, "ggw");
  if (ggb) check_channel(*ggb, x, "ggb");
  const at::ScalarType acc = acc_type(x);
  at::Tensor g_go = need_go ? grad_out.new_empty(grad_out.sizes()) : x.new_empty({0});
  at::Tensor g_x = need_x ? x.new_empty(x.sizes()) : x.new_empty({0});
  at::Tensor g_w = need_w ? weight.new_zeros({C}, weight.options().dtype(acc)) : x.new_empty({0});
  if (N * C == 0 || L == 0 || !(need_go || need_x || need_w)) {
    if (need_go) g_go.zero_();
    if (need_x) g_x.zero_();
    return {g_go, g_x, need_w ? g_w.to(weight.scalar_type()) : g_w};
  }
  const at::Tensor w = acc_param(weight, x), b = acc_param(bias, x);
  const std::optional<at::Tensor> ggw_a = ggw ? std::optional<at::Tensor>(acc_param(*ggw, x)) : std::nullopt;
  const std::optional<at::Tensor> ggb_a = ggb ? std::optional<at::Tensor>(acc_param(*ggb, x)) : std::nullopt;

  DDK_DISPATCH_FLOATING(x.scalar_type(), "norm_relu_pool_bwd2_cpu", [&] {
    using S = scalar_t;
    using T = acc_t<S>;
    const S* GO = grad_out.data_ptr<S>();
    const S* X = x.data_ptr<S>();
    const T* G = w.data_ptr<T>();
    const T* B = b.data_ptr<T>();
    const T* M = mean.data_ptr<T>();
    const T* R = rstd.data_ptr<T>();
    const S* GGX = ggx ? ggx->data_ptr<S>() : nullptr;
    const T* GGW = ggw_a ? ggw_a->data_ptr<T>() : nullptr;
    const T* GGB = ggb_a ? ggb_a->data_ptr<T>() : nullptr;
    S* DGO = need_go ? g_go.data_ptr<S>() : nullptr;
    S* DX = need_x ? g_x.data_ptr<S>() : nullptr;
    std::vector<double> part(need_w ? N * C : 0);
    at::parallel_for(0, N * C, grain(L), [&](int64_t begin, int64_t end) {
      std::vector<T> dbuf(L), ebuf(pool ? L : 0);
      std::vector<T> xb(half_buf<T, S>(L)), gb(half_buf<T, S>(Ho * Wo)), ggb_(half_buf<T, S>(GGX ? L : 0));
      std::vector<T> eo_b(half_buf<T, S>(L)), xo_b(half_buf<T, S>(L));
      for (int64_t p = begin; p < end; ++p) {
        const int64_t c = p % C;
        if (p + 1 < end) {
          prefetch_half<T>(X + (p + 1) * L, L), prefetch_half<T>(GO + (p + 1) * Ho * Wo, Ho * Wo);
          if (GGX) prefetch_half<T>(GGX + (p + 1) * L, L);
        }
        const T* xp = load_plane(X + p * L, L, xb.data());
        const T* gp = load_plane(GO + p * Ho * Wo, Ho * Wo, gb.data());
        const T* gg = GGX ? load_plane(GGX + p * L, L, ggb_.data()) : nullptr;
        const T m = M[p], r = R[p], g = G[c], b = B[c];
        const T* u = gp;
        if (pool) {
          spread(gp, H, W, dbuf.data());
          u = dbuf.data();
        }
        double s[5];
        if (gg)
          mask_sums<T, true>(L, xp, u, gg, m, r, g, b, dbuf.data(), s);
        else
          mask_sums<T, false>(L, xp, u, gg, m, r, g, b, dbuf.data(), s);
        const Bwd2<T> k{m, r, g, b, T(s[0] / L), T(s[1] / L), T(s[2] / L), T(s[3] / L),
                        T(s[4] / L - (s[2] / L) * (s[0] / L)), GGW ? GGW[c] : T(0), GGB ? GGB[c] : T(0)};
        if (need_w) part[p] = gg ? double(r) * L * (double(k.cq) - double(k.a) * k.bq) : 0.0;
        T* eo = !DGO ? nullptr : pool ? ebuf.data() : out_plane(DGO + p * L, eo_b.data());
        T* xo = DX ? out_plane(DX + p * L, xo_b.data()) : nullptr;
        if (gg)
          bwd2_outputs<T, true>(L, xp, dbuf.data(), gg, k, eo, xo);
        else
          bwd2_outputs<T, false>(L, xp, dbuf.data(), gg, k, eo, xo);
        if (DGO) {
          if (pool) {
            T* po = out_plane(DGO + p * Ho * Wo, eo_b.data());
            pool_plane(ebuf.data(), H, W, po);
            store_plane(po, DGO + p * Ho * Wo, Ho * Wo);
          } else {
            store_plane(eo, DGO + p * L, L);
          }
        }
        if (DX) store_plane(xo, DX + p * L, L);
      }
    });
    if (need_w) sum_over_batch(part, N, C, 1, 0, g_w.data_ptr<T>());
  });
  return {g_go, g_x, need_w ? g_w.to(weight.scalar_type()) : g_w};
}

}  // namespace ddkernels
