// Byte copies for the kernels that move runs of elements (the SSL planar forward, the
// in-place shift, the layout transposes), and outputs written with streaming stores where
// they cannot stay in the cache (stream_elements; when: streaming_stores_pay, cache.h).
//
// Why not std::memcpy: glibc copies runs of a few KB and more with `rep movsb`, which some
// CPUs (AMD Zen among them) run far slower when source and destination are not equally
// aligned, and a shifted copy is exactly that (a shift of one column offsets them by one
// element). A loop of unaligned vector moves runs at the same speed for every alignment
// (benchmarks/archive/NOTES.md, v15).
#pragma once

#include <algorithm>
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
inline void stream_line(char* d, const char* s) {  // d: 64-byte aligned
  _mm512_stream_si512(reinterpret_cast<__m512i*>(d), _mm512_loadu_si512(s));
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
inline void stream_line(char* d, const char* s) {  // d: 64-byte aligned
  const __m256i* p = reinterpret_cast<const __m256i*>(s);
  const __m256i a = _mm256_loadu_si256(p), b = _mm256_loadu_si256(p + 1);
  _mm256_stream_si256(reinterpret_cast<__m256i*>(d), a);
  _mm256_stream_si256(reinterpret_cast<__m256i*>(d + 32), b);
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

namespace copy_detail {

// n bytes from src to dst (not overlapping), the whole cache lines of dst with streaming
// stores, the partial lines at either end with plain ones; no fence.
inline void stream_bytes(char* d, const char* s, int64_t n) {
#if defined(TS2_AVX512) || defined(TS2_AVX2)
  const int64_t head = std::min<int64_t>(n, -reinterpret_cast<intptr_t>(d) & 63);
  const int64_t end = head + (n - head) / 64 * 64;
  copy_forward(d, s, head);
  int64_t i = head;
  for (; i + 256 <= end; i += 256) {
    stream_line(d + i, s + i);
    stream_line(d + i + 64, s + i + 64);
    stream_line(d + i + 128, s + i + 128);
    stream_line(d + i + 192, s + i + 192);
  }
  for (; i < end; i += 64) stream_line(d + i, s + i);
  copy_forward(d + end, s + end, n - end);
#else
  std::memcpy(d, s, n);
#endif
}

// stream_elements' chunk: 1 KB and 4 KB chunks measured slower (NOTES.md v17).
constexpr int64_t kStreamChunkBytes = 2048;

}  // namespace copy_detail

// Orders the streaming stores before this thread's later stores (and so before its
// threads synchronise): the end of every task that streams.
inline void stream_fence() {
#if defined(TS2_AVX512) || defined(TS2_AVX2)
  _mm_sfence();
#endif
}

// Writes y[0, n) with streaming (non-temporal) stores: lines written without first being
// read into the cache, and not kept there. A plain store reads every line it writes (the
// line is fetched before it is modified), so for an output that cannot stay in cache anyway
// this saves a third of a copy's traffic. make(begin, end, buffer) writes elements
// [begin, end) of y into buffer[0, end - begin); the chunks are a few KB and end on y's
// cache lines, so only y's first and last partial lines get plain stores (a neighbouring
// plane's owner may write their other bytes), and each chunk's sources are read right before
// it is streamed: a whole plane made first and streamed after serialises its reads and writes
// and loses most of the gain (benchmarks/archive/NOTES.md, v17). Ends with a store fence
// (streaming stores are not ordered with other stores; the caller's threads synchronise
// after it).
template <typename T, typename Make>
void stream_elements(T* y, int64_t n, Make&& make) {
  using namespace copy_detail;
  constexpr int64_t kChunk = kStreamChunkBytes / int64_t(sizeof(T));
  alignas(64) T buffer[kChunk];
  for (int64_t begin = 0; begin < n;) {
    int64_t end = std::min(n, begin + kChunk);
    if (end < n) end -= int64_t(reinterpret_cast<uintptr_t>(y + end) & 63) / int64_t(sizeof(T));
    make(begin, end, buffer);
    stream_bytes(reinterpret_cast<char*>(y + begin), reinterpret_cast<const char*>(buffer),
                 (end - begin) * int64_t(sizeof(T)));
    begin = end;
  }
  stream_fence();
}

}  // namespace torchshift2_cpu
