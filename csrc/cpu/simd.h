// Small SIMD helpers shared by the streaming kernels: a 32-byte vector type (GCC/Clang vector
// extensions, so sums have a fixed lane order without -ffast-math), non-temporal stores, software
// prefetch, and the half-precision planes (bfloat16 / float16 storage computed in float32).
#pragma once
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

#if defined(__AVX__)
#include <immintrin.h>
#endif

namespace ddkernels {

template <typename T>
struct Vec {
  typedef T type __attribute__((vector_size(32)));
  static constexpr int lanes = 32 / sizeof(T);
};

#define DDK_VLOAD(v, p) std::memcpy(&(v), (p), sizeof(v))
#define DDK_VSTORE(p, v) std::memcpy((p), &(v), sizeof(v))

// Outputs at least this large are written with non-temporal stores: they are read back only after
// the whole pass, so pulling their lines into the cache first (read-for-ownership) adds half again
// to the write traffic and evicts the inputs being streamed. Smaller ones stay in cache for the
// consumer.
constexpr int64_t kStreamBytes = int64_t(4) << 20;

// Elements of p to write one by one before p is 32-byte aligned (at most n).
template <typename T>
inline int64_t unaligned_head(const T* p, int64_t n) {
  const int64_t mis = int64_t(reinterpret_cast<std::uintptr_t>(p) % 32);
  if (mis % sizeof(T)) return n;  // never aligns: write everything one by one
  const int64_t h = mis ? (32 - mis) / int64_t(sizeof(T)) : 0;
  return h < n ? h : n;
}

// Stores v at p (32-byte aligned) without allocating its line in the cache; a plain store where
// the build has no AVX.
template <typename T>
inline void store_stream(T* p, const typename Vec<T>::type& v) {
#if defined(__AVX__)
  if constexpr (sizeof(T) == 4)
    _mm256_stream_ps(reinterpret_cast<float*>(p), reinterpret_cast<const __m256&>(v));
  else
    _mm256_stream_pd(reinterpret_cast<double*>(p), reinterpret_cast<const __m256d&>(v));
#else
  std::memcpy(p, &v, sizeof v);
#endif
}

// Orders this thread's non-temporal stores before the results are used (end of a parallel task).
inline void stream_fence() {
#if defined(__AVX__)
  _mm_sfence();
#endif
}

inline void prefetch(const void* p) { __builtin_prefetch(p, 0, 3); }

// --- half precision: storage type S, compute type acc_t<S> -------------------------------------
// bfloat16 and float16 tensors are loaded into float32 L1 buffers a plane (or row block) at a time,
// computed by the same float32 code and accumulated in float32 (double where the float path does),
// and rounded back once on the way out. float32 / float64 use their storage directly (no copy).

template <typename S>
using acc_t = std::conditional_t<std::is_same_v<S, double>, double, float>;

template <typename S>
constexpr bool is_half_v = std::is_same_v<S, c10::BFloat16> || std::is_same_v<S, c10::Half>;

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define DDK_MASKED_TAIL 1
// The last n % 16 elements go through masked loads/stores: planes and rows here are short (a
// 28-wide row is 16 + 12), and a scalar tail would round most of them one by one.
inline __mmask16 tail_mask(int64_t r) { return __mmask16((1u << r) - 1u); }
#endif

// n half values at src as float32 at dst (exact).
inline void to_float(const c10::BFloat16* src, float* dst, int64_t n) {
  int64_t i = 0;
#if defined(__AVX512F__)
  for (; i + 16 <= n; i += 16) {  // bfloat16 is the top half of a float32
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i));
    _mm512_storeu_ps(dst + i, _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)));
  }
#endif
#if defined(DDK_MASKED_TAIL)
  if (i < n) {
    const __mmask16 k = tail_mask(n - i);
    const __m256i h = _mm256_maskz_loadu_epi16(k, src + i);
    _mm512_mask_storeu_ps(dst + i, k, _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)));
    return;
  }
#endif
  for (; i < n; ++i) dst[i] = float(src[i]);
}

inline void to_float(const c10::Half* src, float* dst, int64_t n) {
  int64_t i = 0;
#if defined(__AVX512F__)
  for (; i + 16 <= n; i += 16)
    _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i))));
#endif
#if defined(DDK_MASKED_TAIL)
  if (i < n) {
    const __mmask16 k = tail_mask(n - i);
    _mm512_mask_storeu_ps(dst + i, k, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(k, src + i)));
    return;
  }
#endif
  for (; i < n; ++i) dst[i] = float(src[i]);
}

// n float32 values rounded to nearest even, as c10's scalar conversions (NaN stays NaN).
inline void from_float(const float* src, c10::BFloat16* dst, int64_t n) {
  int64_t i = 0;
#if defined(__AVX512F__) && defined(__AVX512BW__)
  // Integer rounding (not VCVTNEPS2BF16, which flushes subnormals): bits + 0x7FFF + lsb, top half.
  const __m512i bias = _mm512_set1_epi32(0x7FFF), one = _mm512_set1_epi32(1);
  const __m512i qnan = _mm512_set1_epi32(0x7FC0);
  const auto round = [&](const __m512 f) {
    const __m512i b = _mm512_castps_si512(f);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(b, 16), one);
    __m512i r = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(b, bias), lsb), 16);
    return _mm512_cvtepi32_epi16(_mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(f, f, _CMP_UNORD_Q), qnan));
  };
  for (; i + 16 <= n; i += 16)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), round(_mm512_loadu_ps(src + i)));
#if defined(DDK_MASKED_TAIL)
  if (i < n) {
    const __mmask16 k = tail_mask(n - i);
    _mm256_mask_storeu_epi16(dst + i, k, round(_mm512_maskz_loadu_ps(k, src + i)));
    return;
  }
#endif
#endif
  for (; i < n; ++i) dst[i] = c10::BFloat16(src[i]);
}

inline void from_float(const float* src, c10::Half* dst, int64_t n) {
  int64_t i = 0;
#if defined(__AVX512F__)
  for (; i + 16 <= n; i += 16)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i),
                        _mm512_cvtps_ph(_mm512_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#if defined(DDK_MASKED_TAIL)
  if (i < n) {
    const __mmask16 k = tail_mask(n - i);
    _mm256_mask_storeu_epi16(dst + i, k, _mm512_cvtps_ph(_mm512_maskz_loadu_ps(k, src + i),
                                                         _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    return;
  }
#endif
#endif
  for (; i < n; ++i) dst[i] = c10::Half(src[i]);
}

// n values from src to dst, converting between a half type and float32 where they differ.
template <typename A, typename B>
inline void convert_n(const A* src, B* dst, int64_t n) {
  if constexpr (std::is_same_v<A, B>)
    std::memcpy(dst, src, n * sizeof(A));
  else if constexpr (std::is_same_v<B, float>)
    to_float(src, dst, n);
  else
    from_float(src, dst, n);
}

// A plane of n storage values as compute type T: p itself when the types agree, else converted
// into buf (n elements).
template <typename T, typename S>
inline const T* load_plane(const S* p, int64_t n, T* buf) {
  if constexpr (std::is_same_v<S, T>) {
    return p;
  } else {
    to_float(p, buf, n);
    return buf;
  }
}

// Where to compute an output plane: the output itself when the types agree, else buf; then
// store_plane rounds buf into the output (a no-op when they agree).
template <typename T, typename S>
inline T* out_plane(S* p, T* buf) {
  if constexpr (std::is_same_v<S, T>)
    return p;
  else
    return buf;
}

template <typename T, typename S>
inline void store_plane(const T* buf, S* p, int64_t n) {
  if constexpr (!std::is_same_v<S, T>) from_float(buf, p, n);
}

// One float vector (Vec<float>, 8 lanes) loaded from 8 half values, and stored into 8 half values
// (rounded to nearest even, NaN kept), for streaming loops that convert in registers instead of
// through a buffer.
using VF = Vec<float>::type;

inline VF load8(const c10::BFloat16* p) {
  VF v;
#if defined(__AVX2__)
  const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  const __m256 f = _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
  std::memcpy(&v, &f, sizeof v);
#else
  for (int l = 0; l < 8; ++l) v[l] = float(p[l]);
#endif
  return v;
}

inline VF load8(const c10::Half* p) {
  VF v;
#if defined(__F16C__)
  const __m256 f = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  std::memcpy(&v, &f, sizeof v);
#else
  for (int l = 0; l < 8; ++l) v[l] = float(p[l]);
#endif
  return v;
}

inline void store8(c10::BFloat16* p, const VF& v) {
#if defined(__AVX512VL__) && defined(__AVX512BW__)
  __m256 f;
  std::memcpy(&f, &v, sizeof v);
  const __m256i b = _mm256_castps_si256(f);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(b, 16), _mm256_set1_epi32(1));
  __m256i r = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(b, _mm256_set1_epi32(0x7FFF)), lsb), 16);
  r = _mm256_mask_mov_epi32(r, _mm256_cmp_ps_mask(f, f, _CMP_UNORD_Q), _mm256_set1_epi32(0x7FC0));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtepi32_epi16(r));
#else
  for (int l = 0; l < 8; ++l) p[l] = c10::BFloat16(v[l]);
#endif
}

inline void store8(c10::Half* p, const VF& v) {
#if defined(__F16C__)
  __m256 f;
  std::memcpy(&f, &v, sizeof v);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(f, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#else
  for (int l = 0; l < 8; ++l) p[l] = c10::Half(v[l]);
#endif
}

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__)
#define DDK_STORE16 1
// Two float vectors (16 values) rounded into half storage with 512-bit operations: the rounding is
// most of a half output's cost (~8 µops a vector), and one 512-bit pass does two 256-bit ones' work.
inline __m512 join16(const VF& a, const VF& b) {
  __m256 fa, fb;
  std::memcpy(&fa, &a, sizeof a);
  std::memcpy(&fb, &b, sizeof b);
  return _mm512_insertf32x8(_mm512_castps256_ps512(fa), fb, 1);
}

inline void store16(c10::BFloat16* p, const VF& a, const VF& b) {  // as from_float
  const __m512 f = join16(a, b);
  const __m512i bits = _mm512_castps_si512(f);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(bits, _mm512_set1_epi32(0x7FFF)), lsb), 16);
  r = _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(f, f, _CMP_UNORD_Q), _mm512_set1_epi32(0x7FC0));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(r));
}

inline void store16(c10::Half* p, const VF& a, const VF& b) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p),
                      _mm512_cvtps_ph(join16(a, b), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
#endif

// One vector of compute type T loaded from storage S (a plain load when they agree; 8 half values
// widened in registers otherwise), and stored back into S (rounded there, once).
template <typename T, typename S>
inline typename Vec<T>::type vload(const S* p) {
  if constexpr (std::is_same_v<S, T>) {
    typename Vec<T>::type v;
    DDK_VLOAD(v, p);
    return v;
  } else {
    return load8(p);
  }
}

template <typename T, typename S>
inline void vstore(S* p, const typename Vec<T>::type& v) {
  if constexpr (std::is_same_v<S, T>)
    DDK_VSTORE(p, v);
  else
    store8(p, v);
}

// out[i] = f(i) for i in [0, n), computed in acc_t<S> and written in the storage type S: fv(i)
// gives the vector of elements i .. i+lanes-1, fs(i) one element (head and tail). pre(i) runs once
// per vector, for software prefetch of what comes next: kernels that alternate reading a plane and
// writing it stall the hardware prefetcher at every switch. With `stream` the vectors go out with
// non-temporal stores (see kStreamBytes; float32 / float64 storage only).
template <typename S, typename Pre, typename FV, typename FS>
inline void write_each(S* __restrict__ out, int64_t n, bool stream, Pre&& pre, FV&& fv, FS&& fs) {
  using T = acc_t<S>;
  constexpr int W = Vec<T>::lanes;
  stream = stream && std::is_same_v<S, T>;
  int64_t i = 0;
  if (stream)
    for (const int64_t h = unaligned_head(out, n); i < h; ++i) out[i] = S(fs(i));
#if defined(DDK_STORE16)
  if constexpr (!std::is_same_v<S, T>)  // half storage: round two vectors at a time
    for (; i + 2 * W <= n; i += 2 * W) {
      pre(i);
      const typename Vec<T>::type a = fv(i);
      pre(i + W);
      const typename Vec<T>::type b = fv(i + W);
      store16(out + i, a, b);
    }
#endif
  for (; i + W <= n; i += W) {
    pre(i);
    const typename Vec<T>::type v = fv(i);
    if constexpr (std::is_same_v<S, T>) {
      if (stream)
        store_stream(out + i, v);
      else
        DDK_VSTORE(out + i, v);
    } else {
      vstore<T>(out + i, v);
    }
  }
  for (; i < n; ++i) out[i] = S(fs(i));
}

// Prefetches the n storage values at p (the next plane or row) when they are half storage, whose
// conversion loops would otherwise start every plane with a chain of cache misses: the float code
// paths prefetch from inside their own loops, which read the float buffers in the half case.
template <typename T, typename S>
inline void prefetch_half(const S* p, int64_t n) {
  if constexpr (!std::is_same_v<S, T>) {
    const char* b = reinterpret_cast<const char*>(p);
    for (int64_t off = 0; off < n * int64_t(sizeof(S)); off += 64) prefetch(b + off);
  }
}

// A per-task scratch buffer that only half storage needs (empty otherwise).
template <typename T, typename S>
inline int64_t half_buf(int64_t n) {
  return std::is_same_v<S, T> ? 0 : n;
}

}  // namespace ddkernels
