// Direct 2-D convolution for tiny channel counts (stride 1, no dilation, symmetric zero padding,
// groups), forward and backward. HaBa's hallucinators convolve 3 channels per group over 30×30 /
// 32×32 planes, where PyTorch's CPU conv (im2col + a GEMM with K = 27, or oneDNN's blocked
// layouts for grouped transposed convs) spends its time in packing and reaches ~0.5–5 GFLOP/s.
//
// Layout of the work: one (sample, group) at a time, its input planes zero-padded into a small
// thread-local buffer (rows widened to whole SIMD vectors) so the inner loops carry no bounds
// tests. An output row (~30 columns = 4 AVX vectors of floats) is accumulated in registers over
// all cin·K·K taps, `acc[j] += w · x[row, j·L + kx ...]`, each weight broadcast once for the whole
// row; the kernel size is a template parameter for the common 1/3/5/7 so the kx taps unroll.
// Planes are ~4 KB, so everything stays in L1 (~25 GFLOP/s single-thread on AVX2, vs PyTorch's
// ~2 GFLOP/s for the grouped transposed conv).
//
//   forward : y = b + Σ_{ic,ky,kx} w · x_pad, parallel over (sample, group).
//   grad_x  : the same forward on grad_y with padding K−1−p and the kernel flipped with in/out
//             swapped per group (re-laid out here; it is tiny), so padding must be <= K−1.
//   grad_w/b: reductions over the batch. The batch is cut into fixed chunks of kChunk samples
//             (independent of the thread count); each (chunk, group) sums its partial in a fixed
//             order, and the partials are added chunk by chunk: bitwise repeatable, no atomics.
// bfloat16 / float16 (storage S, computed in float32): input planes are widened as they are copied
// into the padded buffers, weights and bias (tiny) are read as float32 copies, rows accumulate in
// float32 registers and are rounded once as they are stored; grad_w / grad_b sum in float32 and
// are rounded at the end.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "check.h"
#include "ops.h"
#include "simd.h"

namespace ddkernels {
namespace {

constexpr int64_t kChunk = 8;  // samples per grad_w/grad_b partial (fixed => deterministic)

// Work items handed to one thread at a time: at least ~32k FMAs, so tiny calls (tests, a handful of
// samples) run inline instead of paying for a thread team.
int64_t grain(int64_t fmas_per_item) { return std::max<int64_t>(1, (1 << 15) / std::max<int64_t>(1, fmas_per_item)); }

struct Geometry {
  int64_t N, C, H, W;  // input
  int64_t O, K, pad, groups, cin, cout;  // weight (O, cin, K, K); cin/cout per group
  int64_t Hp, Wp, Ho, Wo;  // padded input, output
};

Geometry make_geometry(const at::Tensor& x, const at::Tensor& w, int64_t padding, int64_t groups) {
  Geometry g;
  g.N = x.size(0), g.C = x.size(1), g.H = x.size(2), g.W = x.size(3);
  g.O = w.size(0), g.cin = w.size(1), g.K = w.size(2);
  g.pad = padding, g.groups = groups;
  TORCH_CHECK(groups >= 1, "groups must be >= 1, got ", groups);
  TORCH_CHECK(w.size(3) == g.K, "weight must have a square kernel (O, C/groups, K, K), got shape ",
              w.sizes());
  TORCH_CHECK(g.K >= 1, "weight kernel size must be >= 1, got shape ", w.sizes());
  TORCH_CHECK(padding >= 0 && padding <= g.K - 1, "padding must be in [0, K-1=", g.K - 1,
              "], got ", padding);
  TORCH_CHECK(g.C == g.cin * groups, "x has ", g.C, " channels but weight expects C/groups=", g.cin,
              " with groups=", groups, " (weight shape ", w.sizes(), ")");
  TORCH_CHECK(g.O % groups == 0, "weight.size(0)=", g.O, " must be divisible by groups=", groups);
  g.cout = g.O / groups;
  g.Hp = g.H + 2 * padding, g.Wp = g.W + 2 * padding;
  g.Ho = g.Hp - g.K + 1, g.Wo = g.Wp - g.K + 1;
  TORCH_CHECK(g.Ho >= 1 && g.Wo >= 1, "x spatial size ", g.H, "x", g.W, " with padding ", padding,
              " is smaller than the kernel size ", g.K);
  return g;
}

void check_common(const at::Tensor& x, const at::Tensor& weight) {
  DDK_CHECK_CPU(x);
  DDK_CHECK_CPU(weight);
  DDK_CHECK_CONTIG(x);
  DDK_CHECK_CONTIG(weight);
  DDK_CHECK_DIM(x, 4, "(N, C, H, W)");
  DDK_CHECK_DIM(weight, 4, "(O, C/groups, K, K)");
  DDK_CHECK_FLOATING(x);
  DDK_CHECK_DTYPE(weight, x.scalar_type());
}

// 32-byte SIMD vectors through GCC/Clang vector extensions (AVX on x86, two NEON registers on
// ARM): explicit register accumulators instead of hoping the compiler keeps rows in registers.
template <typename T>
struct Simd {
  typedef T V __attribute__((vector_size(32)));
  static constexpr int64_t L = 32 / sizeof(T);
  static V load(const T* p) {  // unaligned
    V v;
    std::memcpy(&v, p, sizeof(V));
    return v;
  }
  static T sum(V v) {  // lanes in a fixed order: repeatable
    T s = v[0];
    for (int64_t i = 1; i < L; ++i) s += v[i];
    return s;
  }
};

inline int64_t round_up(int64_t a, int64_t m) { return (a + m - 1) / m * m; }

// Output rows are computed Wv = round_up(Wo, lanes) wide, so every load is a whole vector. The
// `cin` planes of one (sample, group) are copied into a zeroed buffer of Hp rows × Wb = Wv + K − 1
// columns with the data at (pad, pad): no bounds tests anywhere, and the extra lanes read zeros.
template <typename T, typename St>
void pad_planes(const St* x, int64_t cin, int64_t H, int64_t W, int64_t pad, int64_t Hp, int64_t Wb,
                T* buf) {
  std::fill(buf, buf + cin * Hp * Wb, T(0));
  for (int64_t c = 0; c < cin; ++c)
    for (int64_t r = 0; r < H; ++r)
      convert_n(x + (c * H + r) * W, buf + (c * Hp + r + pad) * Wb + pad, W);
}

// M vectors (M·L output columns) of one output row: acc = b + Σ_{ic,ky,kx} w · x, each weight
// broadcast once and used for M FMAs; KT > 0 unrolls the kx taps, KT == 0 is the runtime-K path.
template <typename T, int KT, int M>
inline void row_block(const T* src, const T* woc, T b0, T* out, int64_t cin, int64_t K, int64_t Hp,
                      int64_t Wb, int64_t oy) {
  using S = Simd<T>;
  typename S::V acc[M];
  for (int j = 0; j < M; ++j) acc[j] = typename S::V{} + b0;
  const int64_t nk = KT > 0 ? KT : K;
  for (int64_t ic = 0; ic < cin; ++ic)
    for (int64_t ky = 0; ky < nk; ++ky) {
      const T* xr = src + (ic * Hp + oy + ky) * Wb;
      const T* wk = woc + (ic * nk + ky) * nk;
      for (int64_t kx = 0; kx < nk; ++kx) {
        const T wv = wk[kx];
        for (int j = 0; j < M; ++j) acc[j] += wv * S::load(xr + j * S::L + kx);
      }
    }
  std::memcpy(out, acc, sizeof(acc));
}

// Forward of one (sample, group): src = padded planes (cin, Hp, Wb), w = (cout, cin, K, K),
// y = (cout, Ho, Wo) in storage St; `row` is a Wv-wide scratch row.
template <typename T, int KT, typename St>
void conv_group(const T* src, const T* w, const T* bias, St* y, int64_t cin, int64_t cout,
                int64_t K, int64_t Hp, int64_t Wb, int64_t Ho, int64_t Wo, int64_t Wv, T* row) {
  constexpr int64_t L = Simd<T>::L;
  for (int64_t oc = 0; oc < cout; ++oc) {
    const T b0 = bias ? bias[oc] : T(0);
    const T* woc = w + oc * cin * K * K;
    for (int64_t oy = 0; oy < Ho; ++oy) {
      int64_t c0 = 0;
      for (; c0 + 4 * L <= Wv; c0 += 4 * L)
        row_block<T, KT, 4>(src + c0, woc, b0, row + c0, cin, K, Hp, Wb, oy);
      for (; c0 < Wv; c0 += L) row_block<T, KT, 1>(src + c0, woc, b0, row + c0, cin, K, Hp, Wb, oy);
      convert_n(row, y + (oc * Ho + oy) * Wo, Wo);
    }
  }
}

// y = conv(x, w) + bias over all (sample, group) pairs; x (N, groups·cin, H, W) with padding pad.
// x and y in storage St, w and bias in its compute type T.
template <typename St, int KT, typename T = acc_t<St>>
void conv_all(const St* X, const T* Wt, const T* B, St* Y, int64_t N, int64_t groups, int64_t cin,
              int64_t cout, int64_t K, int64_t H, int64_t W, int64_t pad) {
  const int64_t Hp = H + 2 * pad, Ho = Hp - K + 1, Wo = W + 2 * pad - K + 1;
  const int64_t Wv = round_up(Wo, Simd<T>::L), Wb = Wv + K - 1;
  at::parallel_for(0, N * groups, grain(cout * cin * K * K * Ho * Wv), [&](int64_t begin, int64_t end) {
    std::vector<T> buf(cin * Hp * Wb), row(Wv);
    for (int64_t p = begin; p < end; ++p) {
      const int64_t n = p / groups, gi = p % groups;
      pad_planes(X + (n * groups + gi) * cin * H * W, cin, H, W, pad, Hp, Wb, buf.data());
      conv_group<T, KT>(buf.data(), Wt + gi * cout * cin * K * K, B ? B + gi * cout : nullptr,
                        Y + (n * groups + gi) * cout * Ho * Wo, cin, cout, K, Hp, Wb, Ho, Wo, Wv,
                        row.data());
    }
  });
}

// out[kx0 + a] += Σ_{oy,ox} gy[oy][ox] · src[oy + ky][ox + kx0 + a] for a < NA, one (oc, ic, ky):
// gy rows are Wv wide with zeros past Wo, so the padded lanes add nothing. NA vector accumulators,
// reduced lane by lane at the end: a fixed summation order.
template <typename T, int NA>
void weight_taps(const T* gy, const T* src, T* out, int64_t kx0, int64_t Wb, int64_t Ho,
                 int64_t Wv) {
  using S = Simd<T>;
  typename S::V acc[NA];
  for (int a = 0; a < NA; ++a) acc[a] = typename S::V{};
  for (int64_t oy = 0; oy < Ho; ++oy)
    for (int64_t c = 0; c < Wv; c += S::L) {
      const typename S::V g = S::load(gy + oy * Wv + c);
      const T* xr = src + oy * Wb + c + kx0;
      for (int a = 0; a < NA; ++a) acc[a] += g * S::load(xr + a);
    }
  for (int a = 0; a < NA; ++a) out[kx0 + a] += S::sum(acc[a]);
}

// grad_w, grad_b (compute type T, added into GW / GB) from x and grad_y in storage St.
template <typename St, int KT, typename T = acc_t<St>>
void weight_grads(const St* X, const St* GY, T* GW, T* GB, const Geometry& g, bool need_w,
                  bool need_b) {
  using S = Simd<T>;
  const int64_t chunks = (g.N + kChunk - 1) / kChunk;
  const int64_t wsize = g.cout * g.cin * g.K * g.K;  // per group
  const int64_t psize = g.groups * (wsize + g.cout);   // one chunk's partial, all groups
  const int64_t Wv = round_up(g.Wo, S::L), Wb = Wv + g.K - 1;
  std::vector<T> partial(chunks * psize, T(0));
  const int64_t fmas = kChunk * (g.cout * g.cin * g.K * g.K + 1) * g.Ho * Wv;
  at::parallel_for(0, chunks * g.groups, grain(fmas), [&](int64_t begin, int64_t end) {
    std::vector<T> buf(g.cin * g.Hp * Wb), gbuf(g.cout * g.Ho * Wv);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t ch = item / g.groups, gi = item % g.groups;
      T* pw = partial.data() + ch * psize + gi * (wsize + g.cout);
      T* pb = pw + wsize;
      for (int64_t n = ch * kChunk; n < std::min(g.N, (ch + 1) * kChunk); ++n) {
        // grad_y planes as Wv-wide rows, zero past Wo (pad_planes with no padding).
        pad_planes(GY + (n * g.groups + gi) * g.cout * g.Ho * g.Wo, g.cout, g.Ho, g.Wo, 0, g.Ho,
                   Wv, gbuf.data());
        if (need_w) {
          pad_planes(X + (n * g.groups + gi) * g.cin * g.H * g.W, g.cin, g.H, g.W, g.pad, g.Hp, Wb,
                     buf.data());
          for (int64_t oc = 0; oc < g.cout; ++oc)
            for (int64_t ic = 0; ic < g.cin; ++ic)
              for (int64_t ky = 0; ky < g.K; ++ky) {
                const T* gy = gbuf.data() + oc * g.Ho * Wv;
                const T* src = buf.data() + (ic * g.Hp + ky) * Wb;
                T* out = pw + ((oc * g.cin + ic) * g.K + ky) * g.K;
                if constexpr (KT > 0) {
                  weight_taps<T, KT>(gy, src, out, 0, Wb, g.Ho, Wv);
                } else {
                  for (int64_t kx = 0; kx < g.K; ++kx) weight_taps<T, 1>(gy, src, out, kx, Wb, g.Ho, Wv);
                }
              }
        }
        if (need_b) {
          for (int64_t oc = 0; oc < g.cout; ++oc) {
            typename S::V a{};
            const T* r = gbuf.data() + oc * g.Ho * Wv;
            for (int64_t i = 0; i < g.Ho * Wv; i += S::L) a += S::load(r + i);
            pb[oc] += S::sum(a);
          }
        }
      }
    }
  });
  // Chunk partials added in chunk order: the result does not depend on the thread count.
  for (int64_t gi = 0; gi < g.groups; ++gi) {
    for (int64_t ch = 0; ch < chunks; ++ch) {
      const T* pw = partial.data() + ch * psize + gi * (wsize + g.cout);
      if (need_w)
        for (int64_t i = 0; i < wsize; ++i) GW[gi * wsize + i] += pw[i];
      if (need_b)
        for (int64_t oc = 0; oc < g.cout; ++oc) GB[gi * g.cout + oc] += pw[wsize + oc];
    }
  }
}

// Runs F<KT> with the kernel size as a template argument where it is a common one.
template <typename T, template <typename, int> class F, typename... Args>
void with_kernel_size(int64_t K, Args&&... args) {
  switch (K) {
    case 1: F<T, 1>::run(args...); break;
    case 3: F<T, 3>::run(args...); break;
    case 5: F<T, 5>::run(args...); break;
    case 7: F<T, 7>::run(args...); break;
    default: F<T, 0>::run(args...); break;
  }
}

template <typename St, int KT>
struct ConvAll {
  template <typename... A>
  static void run(A&&... a) { conv_all<St, KT>(a...); }
};

template <typename St, int KT>
struct WeightGrads {
  template <typename... A>
  static void run(A&&... a) { weight_grads<St, KT>(a...); }
};

#define DDK_DISPATCH_FLOATING(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, TYPE, NAME, __VA_ARGS__)

// A (small) parameter tensor in the compute dtype: float32 for half storage.
at::Tensor acc_param(const at::Tensor& t) {
  return t.scalar_type() == at::kBFloat16 || t.scalar_type() == at::kHalf ? t.to(at::kFloat) : t;
}

}  // namespace

at::Tensor small_conv2d_fwd_cpu(const at::Tensor& x, const at::Tensor& weight,
                                const std::optional<at::Tensor>& bias, int64_t padding,
                                int64_t groups) {
  check_common(x, weight);
  const Geometry g = make_geometry(x, weight, padding, groups);
  if (bias.has_value()) {
    const at::Tensor& b = *bias;
    DDK_CHECK_CPU(b);
    DDK_CHECK_CONTIG(b);
    DDK_CHECK_DTYPE(b, x.scalar_type());
    TORCH_CHECK(b.dim() == 1 && b.size(0) == g.O, "bias must be 1-D of size weight.size(0)=", g.O,
                ", got shape ", b.sizes());
  }
  at::Tensor y = x.new_empty({g.N, g.O, g.Ho, g.Wo});
  if (y.numel() == 0) return y;
  const at::Tensor w = acc_param(weight);
  const std::optional<at::Tensor> b = bias.has_value() ? std::optional<at::Tensor>(acc_param(*bias)) : std::nullopt;
  DDK_DISPATCH_FLOATING(x.scalar_type(), "small_conv2d_fwd_cpu", [&] {
    using T = acc_t<scalar_t>;
    with_kernel_size<scalar_t, ConvAll>(
        g.K, (const scalar_t*)x.data_ptr<scalar_t>(), (const T*)w.data_ptr<T>(),
        b.has_value() ? (const T*)b->data_ptr<T>() : (const T*)nullptr,
        y.data_ptr<scalar_t>(), g.N, g.groups, g.cin, g.cout, g.K, g.H, g.W, g.pad);
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> small_conv2d_bwd_cpu(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& weight, int64_t padding,
    int64_t groups, bool need_x, bool need_w, bool need_b) {
  check_common(x, weight);
  DDK_CHECK_CPU(grad_y);
  DDK_CHECK_CONTIG(grad_y);
  DDK_CHECK_DTYPE(grad_y, x.scalar_type());
  const Geometry g = make_geometry(x, weight, padding, groups);
  TORCH_CHECK(grad_y.dim() == 4 && grad_y.size(0) == g.N && grad_y.size(1) == g.O &&
                  grad_y.size(2) == g.Ho && grad_y.size(3) == g.Wo,
              "grad_y must have the output shape (", g.N, ", ", g.O, ", ", g.Ho, ", ", g.Wo,
              "), got ", grad_y.sizes());
  // Gradients nobody asked for come back as empty tensors (the schema has no optional returns).
  // grad_w / grad_b accumulate in the compute dtype (float32 for half x) and are rounded at the end.
  const at::Tensor w_acc = acc_param(weight);
  at::Tensor gx = need_x ? x.new_empty(x.sizes()) : x.new_empty({0});
  at::Tensor gw = need_w ? w_acc.new_zeros(weight.sizes()) : x.new_empty({0});
  at::Tensor gb = need_b ? w_acc.new_zeros({g.O}) : x.new_empty({0});
  if (g.N == 0) return {gx, gw.to(x.scalar_type()), gb.to(x.scalar_type())};
  DDK_DISPATCH_FLOATING(x.scalar_type(), "small_conv2d_bwd_cpu", [&] {
    using St = scalar_t;
    using T = acc_t<St>;
    if (need_x && gx.numel() > 0) {
      // grad_x = conv(grad_y, w'), w'[g·cin + i][o][ky][kx] = w[g·cout + o][i][K−1−ky][K−1−kx].
      const int64_t K = g.K, KK = K * K;
      std::vector<T> wf(g.groups * g.cin * g.cout * KK);
      const T* w = w_acc.data_ptr<T>();
      for (int64_t gi = 0; gi < g.groups; ++gi)
        for (int64_t o = 0; o < g.cout; ++o)
          for (int64_t i = 0; i < g.cin; ++i)
            for (int64_t t = 0; t < KK; ++t)
              wf[((gi * g.cin + i) * g.cout + o) * KK + (KK - 1 - t)] =
                  w[((gi * g.cout + o) * g.cin + i) * KK + t];
      with_kernel_size<St, ConvAll>(K, (const St*)grad_y.data_ptr<St>(), (const T*)wf.data(),
                                    (const T*)nullptr, gx.data_ptr<St>(), g.N, g.groups, g.cout,
                                    g.cin, K, g.Ho, g.Wo, K - 1 - g.pad);
    }
    if (need_w || need_b)
      with_kernel_size<St, WeightGrads>(g.K, (const St*)x.data_ptr<St>(),
                                        (const St*)grad_y.data_ptr<St>(),
                                        need_w ? gw.data_ptr<T>() : (T*)nullptr,
                                        need_b ? gb.data_ptr<T>() : (T*)nullptr, g, need_w, need_b);
  });
  return {gx, gw.to(x.scalar_type()), gb.to(x.scalar_type())};
}

}  // namespace ddkernels
