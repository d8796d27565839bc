// Byte copies for the kernels that move runs of elements (the SSL planar forward, the
// in-place shift, the layout transposes), and outputs written with streaming stores where
// they cannot stay in the cache (LineStreamer; when: streaming_stores_pay, cache.h).
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
#else
inline void stream_line(char* d, const char* s) { std::memcpy(d, s, 64); }  // plain stores
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

// Orders the streaming stores before this thread's later stores (and so before its
// threads synchronise): the end of every task that streams.
inline void stream_fence() {
#if defined(TS2_AVX512) || defined(TS2_AVX2)
  _mm_sfence();
#endif
}

// Writes an output y front to back with streaming (non-temporal) stores: lines written
// without first being read into the cache, and not kept there (builds without AVX: plain
// stores). A plain store reads every line it
// writes (the line is fetched before it is modified), so for an output that cannot stay in
// cache anyway this saves a third of a copy's traffic. The output comes as a sequence of
// runs, copied (copy) or filled (fill): the whole lines of a run are streamed straight from
// its source, and the lines runs share are assembled first (in a register with AVX-512),
// so reads and streaming stores interleave as in a plain copy loop; a chunk made in a
// buffer and streamed after it serialises them (benchmarks/archive/NOTES.md, v18). Only y's
// first and last partial lines get plain stores (a neighbouring plane's owner may write
// their other bytes). finish() ends with a store fence (streaming stores are not ordered
// with other stores; the caller's threads synchronise after it). y: aligned to T.
template <typename T>
class LineStreamer {
 public:
  LineStreamer(T* y, T fill) : first_(reinterpret_cast<char*>(y)), next_(first_) {
#if defined(TS2_AVX512)
    line_ = _mm512_setzero_si512();
    alignas(64) T pattern[64 / sizeof(T)];
    std::fill(pattern, pattern + 64 / sizeof(T), fill);
    fill_ = _mm512_load_si512(pattern);
#else
    std::fill(fill_, fill_ + 64 / sizeof(T), fill);
#endif
  }

  // The next `count` elements of y: src[0, count).
  void copy(const T* src, int64_t count) {
    write_fill();
    const char* s = reinterpret_cast<const char*>(src);
    int64_t n = count * int64_t(sizeof(T));
    const int64_t open = offset();
    if (open > 0 && n > 0) {
      const int64_t k = std::min<int64_t>(64 - open, n);
      put(open, k, s - open);
      s += k;
      n -= k;
    }
    for (; n >= 64; n -= 64, s += 64, next_ += 64) copy_detail::stream_line(next_, s);
    if (n > 0) put(0, n, s);
  }

  // The next `count` elements of y: the fill (written with the next copy or finish, so
  // that neighbouring fills, such as the edge columns of consecutive rows, are one run).
  void fill(int64_t count) { pending_fill_ += count; }

  // Writes the open line's bytes (plain stores) and fences.
  void finish() {
    write_fill();
    const int64_t open = offset();
    if (open > 0) {
      char* line = next_ - open;
      store_plain(line, std::max<int64_t>(first_ - line, 0), open);
    }
    stream_fence();
  }

 private:
  int64_t offset() const { return int64_t(reinterpret_cast<uintptr_t>(next_) & 63); }

  void write_fill() {
    int64_t n = pending_fill_ * int64_t(sizeof(T));
    pending_fill_ = 0;
    const int64_t open = offset();
    if (open > 0 && n > 0) {
      const int64_t k = std::min<int64_t>(64 - open, n);
      put(open, k, nullptr);
      n -= k;
    }
    for (; n >= 64; n -= 64, next_ += 64) stream_fill_line();
    if (n > 0) put(0, n, nullptr);
  }

  // Bytes [lo, lo + k) of the open line: src[lo, lo + k) (src: where the line's byte 0
  // would come from), or the fill where src is null; writes the line out once complete.
  void put(int64_t lo, int64_t k, const char* src) {
#if defined(TS2_AVX512)
    const __mmask64 m = byte_mask(lo, lo + k);
    line_ = src ? _mm512_mask_loadu_epi8(line_, m, src) : _mm512_mask_mov_epi8(line_, m, fill_);
#else
    // Element moves, not a memcpy call per piece: pieces are a few elements.
    const T* from = src ? reinterpret_cast<const T*>(src) : fill_;
    for (int64_t e = lo / int64_t(sizeof(T)); e < (lo + k) / int64_t(sizeof(T)); ++e)
      line_[e] = from[e];
#endif
    next_ += k;
    if (lo + k == 64) close_line(next_ - 64);
  }

  // Writes the completed line at `line`: streamed, or plain for y's first line when y
  // starts inside it.
  void close_line(char* line) {
    const int64_t lo = std::max<int64_t>(first_ - line, 0);
    if (lo > 0) {
      store_plain(line, lo, 64);
      return;
    }
#if defined(TS2_AVX512)
    _mm512_stream_si512(reinterpret_cast<__m512i*>(line), line_);
#else
    copy_detail::stream_line(line, reinterpret_cast<const char*>(line_));
#endif
  }

  // Bytes [lo, hi) of the open line to `line`, with plain stores: y's partial first and
  // last lines, whose other bytes a neighbouring plane's owner may write.
  void store_plain(char* line, int64_t lo, int64_t hi) {
#if defined(TS2_AVX512)
    _mm512_mask_storeu_epi8(line, byte_mask(lo, hi), line_);
#else
    std::memcpy(line + lo, reinterpret_cast<const char*>(line_) + lo, hi - lo);
#endif
  }

  void stream_fill_line() {
#if defined(TS2_AVX512)
    _mm512_stream_si512(reinterpret_cast<__m512i*>(next_), fill_);
#else
    copy_detail::stream_line(next_, reinterpret_cast<const char*>(fill_));
#endif
  }

#if defined(TS2_AVX512)
  static __mmask64 byte_mask(int64_t lo, int64_t hi) {  // bytes [lo, hi), 0 <= lo < hi <= 64
    const uint64_t below_hi = hi == 64 ? ~uint64_t(0) : (uint64_t(1) << hi) - 1;
    return __mmask64(below_hi & ~((uint64_t(1) << lo) - 1));
  }
  __m512i line_, fill_;
#else
  alignas(64) T line_[64 / sizeof(T)];
  alignas(64) T fill_[64 / sizeof(T)];
#endif
  char* const first_;
  char* next_;
  int64_t pending_fill_ = 0;  // elements
};

}  // namespace torchshift2_cpu
