// Byte copies for the kernels that move runs of elements (the SSL planar forward, the
// in-place shift, the layout transposes).
//
// Why not std::memcpy: glibc copies runs of a few KB and more with `rep movsb`, which some
// CPUs (AMD Zen among them) run far slower when source and destination are not equally
// aligned, and a shifted copy is exactly that (a shift of one column offsets them by one
// element). A loop of unaligned vector moves runs at the same speed for every alignment
// (benchmarks/archive/NOTES.md, v15).
#pragma once

#include <cstdint>
#include <cstring>

#include "isa.h"

#if defined(TS2_AVX512) || defined(TS2_AVX2)
#include <immintrin.h>
#endif

namespace torchshift2_cpu {

namespace copy_detail {

#if defined(TS2_AVX512)
constexpr int64_t kVector = 64;
inline void move_vectors(char* d, const char* s, int64_t i) {  // 4 vectors: loads, then stores
  const __m512i a = _mm512_loadu_si512(s + i), b = _mm512_loadu_si512(s + i + 64),
                c = _mm512_loadu_si512(s + i + 128), e = _mm512_loadu_si512(s + i + 192);
  _mm512_storeu_si512(d + i, a);
  _mm512_storeu_si512(d + i + 64, b);
  _mm512_storeu_si512(d + i + 128, c);
  _mm512_storeu_si512(d + i + 192, e);
}
inline void move_vector(char* d, const char* s, int64_t i) {
  _mm512_storeu_si512(d + i, _mm512_loadu_si512(s + i));
}
#elif defined(TS2_AVX2)
constexpr int64_t kVector = 32;
inline void move_vectors(char* d, const char* s, int64_t i) {
  const __m256i* p = reinterpret_cast<const __m256i*>(s + i);
  const __m256i a = _mm256_loadu_si256(p), b = _mm256_loadu_si256(p + 1),
                c = _mm256_loadu_si256(p + 2), e = _mm256_loadu_si256(p + 3);
  __m256i* q = reinterpret_cast<__m256i*>(d + i);
  _mm256_storeu_si256(q, a);
  _mm256_storeu_si256(q + 1, b);
  _mm256_storeu_si256(q + 2, c);
  _mm256_storeu_si256(q + 3, e);
}
inline void move_vector(char* d, const char* s, int64_t i) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + i),
                      _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + i)));
}
#endif

}  // namespace copy_detail

// n bytes from src to dst. Overlap is allowed when dst <= src (each group of vectors is
// loaded before it is stored, front to back), which copy_backward covers the other way.
inline void copy_forward(void* dst, const void* src, int64_t n) {
#if defined(TS2_AVX512) || defined(TS2_AVX2)
  using namespace copy_detail;
  char* d = static_cast<char*>(dst);
  const char* s = static_cast<const char*>(src);
  int64_t i = 0;
  for (; i + 4 * kVector <= n; i += 4 * kVector) move_vectors(d, s, i);
  for (; i + kVector <= n; i += kVector) move_vector(d, s, i);
  if (i < n) std::memmove(d + i, s + i, n - i);  // under one vector: never `rep movsb`
#else
  std::memmove(dst, src, n);
#endif
}

// n bytes from src to dst, back to front: for overlapping runs with dst > src.
inline void copy_backward(void* dst, const void* src, int64_t n) {
#if defined(TS2_AVX512) || defined(TS2_AVX2)
  using namespace copy_detail;
  char* d = static_cast<char*>(dst);
  const char* s = static_cast<const char*>(src);
  int64_t i = n;
  for (; i >= 4 * kVector; i -= 4 * kVector) move_vectors(d, s, i - 4 * kVector);
  for (; i >= kVector; i -= kVector) move_vector(d, s, i - kVector);
  if (i > 0) std::memmove(d, s, i);
#else
  std::memmove(dst, src, n);
#endif
}

// std::memcpy without `rep movsb` (see above): dst and src must not overlap.
inline void copy_bytes(void* dst, const void* src, int64_t n) { copy_forward(dst, src, n); }

// std::memmove without `rep movsb`.
inline void move_bytes(void* dst, const void* src, int64_t n) {
  if (static_cast<char*>(dst) <= static_cast<const char*>(src))
    copy_forward(dst, src, n);
  else
    copy_backward(dst, src, n);
}

}  // namespace torchshift2_cpu
