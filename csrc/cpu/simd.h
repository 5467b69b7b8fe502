// Small SIMD helpers shared by the streaming kernels: a 32-byte vector type (GCC/Clang vector
// extensions, so sums have a fixed lane order without -ffast-math), non-temporal stores and
// software prefetch.
#pragma once
#include <cstdint>
#include <cstring>

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

// out[i] = f(i) for i in [0, n): fv(i) gives the vector of elements i .. i+lanes-1, fs(i) one
// element (head and tail). pre(i) runs once per vector, for software prefetch of what comes next:
// kernels that alternate reading a plane and writing it stall the hardware prefetcher at every
// switch. With `stream` the vectors go out with non-temporal stores (see kStreamBytes).
template <typename T, typename Pre, typename FV, typename FS>
inline void write_each(T* __restrict__ out, int64_t n, bool stream, Pre&& pre, FV&& fv, FS&& fs) {
  using V = typename Vec<T>::type;
  constexpr int W = Vec<T>::lanes;
  int64_t i = 0;
  if (stream)
    for (const int64_t h = unaligned_head(out, n); i < h; ++i) out[i] = fs(i);
  for (; i + W <= n; i += W) {
    pre(i);
    const V v = fv(i);
    if (stream)
      store_stream(out + i, v);
    else
      DDK_VSTORE(out + i, v);
  }
  for (; i < n; ++i) out[i] = fs(i);
}

}  // namespace ddkernels
