// Batched layer-wise gradient-matching distance on CPU (DC `match_loss`, IDC `dist`).
//
// Every tensor arrives in the batched layout (K, *param_shape). A packed row table, built once per
// call from the shapes, cuts each class's slice of each tensor into rows (the metric's rows for
// "ours"/"l1_mean", the first parameter dim otherwise) so all (class, layer, row) reductions are
// one flat parallel loop:
//   forward  = per row, one read of syn and real giving (dot, |syn|², |real|²) or the row's
//              Σ(s-r)² / Σ|s-r|; then a serial per-class sum over rows in table order;
//   backward = per row, the row's coefficients from the saved statistics, then one elementwise
//              pass writing both gradients.
// Rows are independent and every sum has a fixed order (lanes, then rows in table order), so the
// results do not depend on the thread split and are bitwise repeatable.
// bfloat16 / float16: the same loops read the half rows directly, widening 8 values at a time into
// float32 registers (simd.h's vload), so a half row costs half the bytes and no extra pass;
// statistics stay float32, gradients are rounded once as they are stored, the distances too.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "check.h"
#include "ops.h"
#include "simd.h"


namespace ddkernels {
namespace {

enum class Metric { Ours, Mse, L1, L1Mean, GlobalCos };
constexpr double kEps = 1e-6;  // added to the product of the norms, as DC and IDC do

Metric parse_metric(const std::string& m) {
  if (m == "ours") return Metric::Ours;
  if (m == "mse") return Metric::Mse;
  if (m == "l1") return Metric::L1;
  if (m == "l1_mean") return Metric::L1Mean;
  if (m == "global_cos") return Metric::GlobalCos;
  TORCH_CHECK(false, "metric must be one of 'ours', 'mse', 'l1', 'l1_mean', 'global_cos', got '", m,
              "'");
}

struct Seg {
  int64_t tensor, rowlen, per_class;  // per_class = elements of one class's slice
  double scale;                       // multiplies the row sum (1/rowlen for l1_mean)
  bool active;                        // false: a 1-D tensor under "ours" (contributes exactly 0)
};

struct Layout {
  int64_t K = 0, R = 0;
  std::vector<Seg> segs;
  std::vector<int64_t> row_seg, row_in_seg;  // for each of the R rows of a class
};

Layout make_layout(at::TensorList syn, at::TensorList real, Metric metric) {
  TORCH_CHECK(syn.size() == real.size(), "syn and real must have the same length, got ",
              syn.size(), " and ", real.size());
  TORCH_CHECK(!syn.empty(), "syn must hold at least one tensor");
  Layout L;
  L.K = syn[0].dim() > 0 ? syn[0].size(0) : 0;
  for (size_t i = 0; i < syn.size(); ++i) {
    const at::Tensor &s = syn[i], &r = real[i];
    TORCH_CHECK(s.device().is_cpu() && r.device().is_cpu(), "syn[", i, "] and real[", i,
                "] must be CPU tensors, got ", s.device(), " and ", r.device());
    TORCH_CHECK(s.is_contiguous() && r.is_contiguous(), "syn[", i, "] and real[", i,
                "] must be contiguous");
    TORCH_CHECK(s.scalar_type() == syn[0].scalar_type() && r.scalar_type() == syn[0].scalar_type(),
                "syn[", i, "] and real[", i, "] must have dtype ", syn[0].scalar_type(), ", got ",
                s.scalar_type(), " and ", r.scalar_type());
    TORCH_CHECK(s.sizes() == r.sizes(), "syn[", i, "] and real[", i,
                "] must have the same shape, got ", s.sizes(), " and ", r.sizes());
    TORCH_CHECK(s.dim() >= 2, "syn[", i, "] must be (K, *param_shape) with a parameter of >= 1 dim, got ",
                s.sizes());
    TORCH_CHECK(s.size(0) == L.K, "syn[", i, "] must have K=", L.K, " classes in dim 0, got ",
                s.size(0));
    const int64_t per_class = L.K ? s.numel() / L.K : 0;
    const bool one_d = s.dim() == 2;
    // "ours" and "l1_mean" define rows as the first parameter dim; for the other metrics rows are
    // only a summation grouping, so 1-D parameters stay one row instead of many length-1 rows.
    const int64_t rows = one_d ? 1 : s.size(1);
    const int64_t rowlen = rows ? per_class / rows : 0;
    const double scale = (metric == Metric::L1Mean && !one_d && rowlen) ? 1.0 / rowlen : 1.0;
    L.segs.push_back({int64_t(i), rowlen, per_class, scale, !(metric == Metric::Ours && one_d)});
    for (int64_t q = 0; q < rows; ++q) {
      L.row_seg.push_back(int64_t(L.segs.size() - 1));
      L.row_in_seg.push_back(q);
    }
  }
  L.R = int64_t(L.row_seg.size());
  return L;
}

bool is_half(const at::Tensor& t) {
  return t.scalar_type() == at::kBFloat16 || t.scalar_type() == at::kHalf;
}

at::ScalarType acc_type(const at::Tensor& t) { return is_half(t) ? at::kFloat : t.scalar_type(); }

int64_t written_bytes(at::TensorList syn, bool need_syn, bool need_real) {
  int64_t bytes = 0;
  for (const at::Tensor& t : syn) bytes += t.numel() * int64_t(t.element_size());
  return bytes * (int64_t(need_syn) + int64_t(need_real));
}

// Rows per parallel task so that one task reads roughly 16K elements.
int64_t grain(const Layout& L) {
  int64_t elems = 0;
  for (const Seg& s : L.segs) elems += s.per_class;
  const int64_t avg = L.R ? std::max<int64_t>(1, elems / L.R) : 1;
  return std::max<int64_t>(1, 16384 / avg);
}

// Reductions use GCC/Clang vector extensions (simd.h): the auto-vectorizer handles these
// multi-accumulator loops badly (it vectorizes across rows and drowns in shuffles). One 32-byte
// vector per sum gives a fixed summation order (lanes, then the tail), so results are bitwise
// repeatable.
template <typename T, typename V>
T hsum(const V& v) {
  T lane[Vec<T>::lanes];
  std::memcpy(lane, &v, sizeof v);
  T t = 0;
  for (int l = 0; l < Vec<T>::lanes; ++l) t += lane[l];
  return t;
}

// (Σ s·r, Σ s², Σ r²) of one row of storage S, in T = acc_t<S>.
template <typename T, typename S>
void row_dots(const S* __restrict__ s, const S* __restrict__ r, int64_t n, T* out) {
  using V = typename Vec<T>::type;
  constexpr int W = Vec<T>::lanes;
  V d = {}, ss = {}, rr = {};
  int64_t i = 0;
  for (; i + W <= n; i += W) {
    const V a = vload<T>(s + i), b = vload<T>(r + i);
    d += a * b, ss += a * a, rr += b * b;
  }
  T td = hsum<T>(d), ts = hsum<T>(ss), tr = hsum<T>(rr);
  for (; i < n; ++i) {
    const T a = T(s[i]), b = T(r[i]);
    td += a * b, ts += a * a, tr += b * b;
  }
  out[0] = td, out[1] = ts, out[2] = tr;
}

// Σ (s-r)² (square) or Σ |s-r| of one row.
template <typename T, bool kSquare, typename S>
T row_diff(const S* __restrict__ s, const S* __restrict__ r, int64_t n) {
  using V = typename Vec<T>::type;
  constexpr int W = Vec<T>::lanes;
  V acc = {};
  int64_t i = 0;
  for (; i + W <= n; i += W) {
    const V e = vload<T>(s + i) - vload<T>(r + i);
    acc += kSquare ? V(e * e) : V(e < 0 ? -e : e);
  }
  T t = hsum<T>(acc);
  for (; i < n; ++i) {
    const T e = T(s[i]) - T(r[i]);
    t += kSquare ? e * e : std::abs(e);
  }
  return t;
}

// d/ds and d/dr of 1 - dot / (|s|·|r| + eps), scaled by g: gs = as·s + b·r, gr = ar·r + b·s.
// A zero norm gets a zero coefficient, as torch.norm's backward does.
template <typename T>
void cos_coeffs(T dot, T ss, T rr, T g, T& as, T& ar, T& b) {
  const T ns = std::sqrt(ss), nr = std::sqrt(rr), den = ns * nr + T(kEps);
  b = -g / den;
  const T c = g * dot / (den * den);
  as = ns > 0 ? c * nr / ns : T(0);
  ar = nr > 0 ? c * ns / nr : T(0);
}


// out = (a·x + b·y)·g. The next row usually follows this one in memory: it is prefetched while
// this one is written.
template <typename T, typename S>
void axpby(S* __restrict__ out, T a, const S* __restrict__ x, T b, const S* __restrict__ y, T g,
           int64_t n, bool stream) {
  using V = typename Vec<T>::type;
  write_each(
      out, n, stream,
      [&](int64_t i) {
        prefetch(x + i + n);
        prefetch(y + i + n);
      },
      [&](int64_t i) {
        const V u = vload<T>(x + i), v = vload<T>(y + i);
        return V(V(a * u + b * v) * g);
      },
      [&](int64_t i) { return T(a * T(x[i]) + b * T(y[i])) * g; });
}

// One row's gradients for upstream gradient g: d/ds into os and d/dr into orr (either may be null).
// `o` holds the row's statistics for "ours" and the class totals for "global_cos". The gradient is
// formed at upstream gradient 1 and then multiplied by g, so it is bitwise what the forward writes
// (g = 1, exact) scaled by the autograd Function (one rounding, the same multiply).
template <typename T, typename S>
void row_grads(Metric metric, const Seg& sg, const S* __restrict__ s, const S* __restrict__ r,
               int64_t n, const T* o, T g, S* __restrict__ os, S* __restrict__ orr, bool stream) {
  if (metric == Metric::Ours || metric == Metric::GlobalCos) {
    T as = 0, ar = 0, b = 0;  // an inactive row keeps all-zero coefficients: zero gradient
    if (sg.active) cos_coeffs(o[0], o[1], o[2], T(1), as, ar, b);
    if (os) axpby(os, as, s, b, r, g, n, stream);
    if (orr) axpby(orr, ar, r, b, s, g, n, stream);
    return;
  }
  // d/ds of the row term; d/dr is its negation.
  const T c = metric == Metric::Mse ? T(2) : T(sg.scale);
  if (metric == Metric::Mse) {
    if (os) axpby(os, c, s, -c, r, g, n, stream);
    if (orr) axpby(orr, c, r, -c, s, g, n, stream);
    return;
  }
  S* __restrict__ first = os ? os : orr;
  const T sign_first = os ? T(1) : T(-1);
  for (int64_t i = 0; i < n; ++i) {
    const T e = T(s[i]) - T(r[i]);
    first[i] = S(T(sign_first * c * (T(e > 0) - T(e < 0))) * g);
  }
  if (os && orr)  // exact: negation commutes with rounding
    for (int64_t i = 0; i < n; ++i) orr[i] = S(-T(os[i]));
}

}  // namespace

namespace {

// The forward pass; with need_syn / need_real it also writes each row's gradients at upstream
// gradient 1 while the row is still in L1, so a later backward has nothing left to read (global_cos
// needs every row's statistics first and is refused here).
std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>> forward_impl(
    at::TensorList syn, at::TensorList real, Metric metric, bool need_syn, bool need_real) {
  const Layout L = make_layout(syn, real, metric);
  DDK_CHECK_FLOATING(syn[0]);
  TORCH_CHECK(!(need_syn || need_real) || metric != Metric::GlobalCos,
              "grad_distance_fwd_grad: metric 'global_cos' needs the class totals before any gradient");
  const at::TensorOptions acc = syn[0].options().dtype(acc_type(syn[0]));
  at::Tensor dist = syn[0].new_empty({L.K}, acc);
  at::Tensor stats = syn[0].new_zeros({L.K, L.R, 3}, acc);  // per row: (dot, |s|², |r|²) or (sum, 0, 0)
  std::vector<at::Tensor> gs, gr;
  for (size_t i = 0; i < syn.size(); ++i) {
    if (need_syn) gs.push_back(syn[i].new_empty(syn[i].sizes()));
    if (need_real) gr.push_back(real[i].new_empty(real[i].sizes()));
  }
  if (L.K == 0) return {dist.to(syn[0].scalar_type()), stats, gs, gr};

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, syn[0].scalar_type(), "grad_distance_fwd_cpu", [&] {
    using St = scalar_t;             // storage
    using scalar_t = acc_t<St>;      // computation
    std::vector<const St*> S(syn.size()), Rp(syn.size());
    std::vector<St*> GS(syn.size(), nullptr), GR(syn.size(), nullptr);
    for (size_t i = 0; i < syn.size(); ++i) {
      S[i] = syn[i].data_ptr<St>(), Rp[i] = real[i].data_ptr<St>();
      if (need_syn) GS[i] = gs[i].data_ptr<St>();
      if (need_real) GR[i] = gr[i].data_ptr<St>();
    }
    scalar_t* st = stats.data_ptr<scalar_t>();
    const bool stream = written_bytes(syn, need_syn, need_real) >= kStreamBytes;
    at::parallel_for(0, L.K * L.R, grain(L), [&](int64_t begin, int64_t end) {
      for (int64_t idx = begin; idx < end; ++idx) {
        const int64_t k = idx / L.R, q = idx % L.R;
        const Seg& g = L.segs[L.row_seg[q]];
        const int64_t off = k * g.per_class + L.row_in_seg[q] * g.rowlen;
        const St* s = S[g.tensor] + off;
        const St* r = Rp[g.tensor] + off;
        scalar_t* o = st + idx * 3;
        if (g.active) {
          switch (metric) {
            case Metric::Ours:
            case Metric::GlobalCos: row_dots(s, r, g.rowlen, o); break;
            case Metric::Mse: o[0] = row_diff<scalar_t, true>(s, r, g.rowlen); break;
            case Metric::L1:
            case Metric::L1Mean: o[0] = scalar_t(g.scale) * row_diff<scalar_t, false>(s, r, g.rowlen); break;
          }
        }
        if (need_syn || need_real)
          row_grads(metric, g, s, r, g.rowlen, static_cast<const scalar_t*>(o), scalar_t(1),
                    need_syn ? GS[g.tensor] + off : nullptr, need_real ? GR[g.tensor] + off : nullptr,
                    stream);
      }
      if (stream) stream_fence();
    });
    scalar_t* D = dist.data_ptr<scalar_t>();
    for (int64_t k = 0; k < L.K; ++k) {
      const scalar_t* o = st + k * L.R * 3;
      scalar_t acc = 0, dot = 0, ss = 0, rr = 0;
      for (int64_t q = 0; q < L.R; ++q, o += 3) {
        if (metric == Metric::Ours) {
          if (L.segs[L.row_seg[q]].active)
            acc += 1 - o[0] / (std::sqrt(o[1]) * std::sqrt(o[2]) + scalar_t(kEps));
        } else if (metric == Metric::GlobalCos) {
          dot += o[0], ss += o[1], rr += o[2];
        } else {
          acc += o[0];
        }
      }
      D[k] = metric == Metric::GlobalCos ? 1 - dot / (std::sqrt(ss) * std::sqrt(rr) + scalar_t(kEps))
                                         : acc;
    }
  });
  return {dist.to(syn[0].scalar_type()), stats, gs, gr};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> grad_distance_fwd_cpu(at::TensorList syn, at::TensorList real,
                                                         c10::string_view metric_name) {
  auto out = forward_impl(syn, real, parse_metric(std::string(metric_name)), false, false);
  return {std::get<0>(out), std::get<1>(out)};
}

std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>>
grad_distance_fwd_grad_cpu(at::TensorList syn, at::TensorList real, c10::string_view metric_name,
                           bool need_syn, bool need_real) {
  return forward_impl(syn, real, parse_metric(std::string(metric_name)), need_syn, need_real);
}

std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>> grad_distance_bwd_cpu(
    const at::Tensor& grad, at::TensorList syn, at::TensorList real, const at::Tensor& stats,
    c10::string_view metric_name, bool need_syn, bool need_real) {
  const Metric metric = parse_metric(std::string(metric_name));
  const Layout L = make_layout(syn, real, metric);
  DDK_CHECK_FLOATING(syn[0]);
  DDK_CHECK_CPU(grad);
  DDK_CHECK_CPU(stats);
  DDK_CHECK_CONTIG(stats);
  DDK_CHECK_DTYPE(grad, syn[0].scalar_type());
  DDK_CHECK_DTYPE(stats, acc_type(syn[0]));
  TORCH_CHECK(grad.dim() == 1 && grad.size(0) == L.K, "grad must have shape (K=", L.K, ",), got ",
              grad.sizes());
  TORCH_CHECK(stats.dim() == 3 && stats.size(0) == L.K && stats.size(1) == L.R && stats.size(2) == 3,
              "stats must have shape (K=", L.K, ", rows=", L.R, ", 3), got ", stats.sizes());
  std::vector<at::Tensor> gs, gr;
  for (size_t i = 0; i < syn.size(); ++i) {
    if (need_syn) gs.push_back(syn[i].new_empty(syn[i].sizes()));
    if (need_real) gr.push_back(real[i].new_empty(real[i].sizes()));
  }
  if (L.K == 0 || (!need_syn && !need_real)) return {gs, gr};

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, syn[0].scalar_type(), "grad_distance_bwd_cpu", [&] {
    using St = scalar_t;
    using T = acc_t<St>;
    const at::Tensor g_c = grad.contiguous().to(acc_type(syn[0]));
    const T* G = g_c.data_ptr<T>();
    const T* st = stats.data_ptr<T>();
    // global_cos: one cosine per class, its statistics summed over all rows in table order.
    std::vector<T> tot(metric == Metric::GlobalCos ? 3 * L.K : 0, T(0));
    for (int64_t k = 0; k < int64_t(tot.size()) / 3; ++k)
      for (int64_t q = 0; q < L.R; ++q)
        for (int j = 0; j < 3; ++j) tot[3 * k + j] += st[(k * L.R + q) * 3 + j];
    std::vector<const St*> S(syn.size()), Rp(syn.size());
    std::vector<St*> GS(syn.size(), nullptr), GR(syn.size(), nullptr);
    for (size_t i = 0; i < syn.size(); ++i) {
      S[i] = syn[i].data_ptr<St>(), Rp[i] = real[i].data_ptr<St>();
      if (need_syn) GS[i] = gs[i].data_ptr<St>();
      if (need_real) GR[i] = gr[i].data_ptr<St>();
    }
    const bool stream = written_bytes(syn, need_syn, need_real) >= kStreamBytes;
    at::parallel_for(0, L.K * L.R, grain(L), [&](int64_t begin, int64_t end) {
      for (int64_t idx = begin; idx < end; ++idx) {
        const int64_t k = idx / L.R, q = idx % L.R, n = L.segs[L.row_seg[q]].rowlen;
        const Seg& sg = L.segs[L.row_seg[q]];
        const int64_t off = k * sg.per_class + L.row_in_seg[q] * n;
        const T* o = metric == Metric::GlobalCos ? tot.data() + 3 * k : st + idx * 3;
        row_grads(metric, sg, S[sg.tensor] + off, Rp[sg.tensor] + off, n, o, G[k],
                  need_syn ? GS[sg.tensor] + off : nullptr, need_real ? GR[sg.tensor] + off : nullptr,
                  stream);
      }
      if (stream) stream_fence();
    });
  });
  return {gs, gr};
}

}  // namespace ddkernels
