// A minimal 64-byte SIMD layer for the channels-last kernels: AVX-512 where the compiler
// targets it, two AVX2 halves for 4- and 8-byte lanes where it targets AVX2 only, plain
// loops (which the compiler vectorises as it can) elsewhere (isa.h). Masks select lanes;
// lane i is bit i.
//
//   Bits<E>    raw E-byte lanes: masked moves (SSL moves values without looking at them)
//   Math<T>    arithmetic lanes (float for float / bfloat16 / half storage, double for
//              double): loads convert from the storage type, masked-off lanes read 0
//   Gather<E>  per-lane reads through 32-bit element indices (4- and 8-byte elements)
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "isa.h"

#if defined(TS2_AVX512) || defined(TS2_AVX2)
#include <immintrin.h>
#endif

namespace torchshift2_cpu {

constexpr int kVectorBytes = 64;

// Raw bits: SSL moves values without looking at them; E is the element size.
template <int E>
struct Bits;

#ifdef TS2_AVX512
// One specialisation per element size: the intrinsics differ only in their suffix.
#define TS2_BITS(E, MASK, SUFFIX, LANE)                                              \
  template <>                                                                        \
  struct Bits<E> {                                                                   \
    using V = __m512i;                                                               \
    static V or_(V a, V b) { return _mm512_or_si512(a, b); }                         \
    static V set1(uint64_t v) { return _mm512_set1_##SUFFIX(static_cast<LANE>(v)); } \
    static V load_merge(V acc, uint64_t m, const void* p) {                          \
      return _mm512_mask_loadu_##SUFFIX(acc, static_cast<MASK>(m), p);               \
    }                                                                                \
    static V load_zero(uint64_t m, const void* p) {                                  \
      return _mm512_maskz_loadu_##SUFFIX(static_cast<MASK>(m), p);                   \
    }                                                                                \
    static V blend(uint64_t m, V a, V b) {                                           \
      return _mm512_mask_blend_##SUFFIX(static_cast<MASK>(m), a, b);                 \
    }                                                                                \
    static void store(void* p, uint64_t m, V v) {                                    \
      _mm512_mask_storeu_##SUFFIX(p, static_cast<MASK>(m), v);                       \
    }                                                                                \
    /* A whole vector to a 64-byte aligned p, with a streaming store (copy.h). */    \
    static void stream(void* p, V v) { _mm512_stream_si512(static_cast<V*>(p), v); } \
  };
TS2_BITS(1, __mmask64, epi8, char)
TS2_BITS(2, __mmask32, epi16, short)
TS2_BITS(4, __mmask16, epi32, int)
TS2_BITS(8, __mmask8, epi64, long long)
#undef TS2_BITS
#else
template <int E>
struct Bits {
  static constexpr int kLanes = kVectorBytes / E;
  struct V {
    uint8_t b[kVectorBytes];
  };
  static V set1(uint64_t v) {
    V r;
    for (int i = 0; i < kLanes; ++i) std::memcpy(r.b + i * E, &v, E);
    return r;
  }
  static V load_merge(V acc, uint64_t m, const void* p) {
    for (int i = 0; i < kLanes; ++i)
      if (m >> i & 1) std::memcpy(acc.b + i * E, static_cast<const uint8_t*>(p) + i * E, E);
    return acc;
  }
  static void store(void* p, uint64_t m, V v) {
    for (int i = 0; i < kLanes; ++i)
      if (m >> i & 1) std::memcpy(static_cast<uint8_t*>(p) + i * E, v.b + i * E, E);
  }
  static V load_zero(uint64_t m, const void* p) {
    V r{};
    return load_merge(r, m, p);
  }
  static V or_(V a, V b) {
    for (int i = 0; i < kVectorBytes; ++i) a.b[i] |= b.b[i];
    return a;
  }
  // Lanes of m from b, the others from a.
  static V blend(uint64_t m, V a, V b) {
    for (int i = 0; i < kLanes; ++i)
      if (m >> i & 1) std::memcpy(a.b + i * E, b.b + i * E, E);
    return a;
  }
};

#ifdef TS2_AVX2
// AVX2 has masked loads and stores for 4- and 8-byte lanes only (1- and 2-byte elements
// keep the loops above); a 64-byte vector is two 32-byte halves, and a bit mask becomes a
// lane mask per half. Masked-off lanes of vmaskmov neither fault nor store.
inline __m256i lane_mask32(uint64_t m) {  // 8 lanes of 4 bytes from bits 0-7
  const __m256i bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
  return _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32(static_cast<int>(m & 0xff)), bit),
                            bit);
}
inline __m256i lane_mask64(uint64_t m) {  // 4 lanes of 8 bytes from bits 0-3
  const __m256i bit = _mm256_setr_epi64x(1, 2, 4, 8);
  return _mm256_cmpeq_epi64(
      _mm256_and_si256(_mm256_set1_epi64x(static_cast<int64_t>(m & 0xf)), bit), bit);
}
// The lane mask of half h of a 64-byte vector of E-byte lanes.
template <int E>
inline __m256i half_mask(uint64_t m, int h) {
  return E == 4 ? lane_mask32(m >> (8 * h)) : lane_mask64(m >> (4 * h));
}

template <int E>
struct Avx2Bits {
  static_assert(E == 4 || E == 8, "AVX2 masked moves exist for 4- and 8-byte lanes");
  static constexpr int kLanes = kVectorBytes / E;
  static constexpr uint64_t kAll = (uint64_t(1) << kLanes) - 1;
  struct V {
    __m256i h[2];
  };
  static __m256i maskload(const void* p, __m256i k) {
    if (E == 4) return _mm256_maskload_epi32(static_cast<const int*>(p), k);
    return _mm256_maskload_epi64(static_cast<const long long*>(p), k);
  }
  static V set1(uint64_t v) {
    const __m256i x = E == 4 ? _mm256_set1_epi32(static_cast<int>(v))
                             : _mm256_set1_epi64x(static_cast<long long>(v));
    return V{{x, x}};
  }
  static V load_zero(uint64_t m, const void* p) {
    const char* c = static_cast<const char*>(p);
    if ((m & kAll) == kAll)
      return V{{_mm256_loadu_si256(reinterpret_cast<const __m256i*>(c)),
                _mm256_loadu_si256(reinterpret_cast<const __m256i*>(c + 32))}};
    return V{{maskload(c, half_mask<E>(m, 0)), maskload(c + 32, half_mask<E>(m, 1))}};
  }
  static V load_merge(V acc, uint64_t m, const void* p) {
    if ((m & kAll) == kAll) return load_zero(m, p);
    const char* c = static_cast<const char*>(p);
    for (int h = 0; h < 2; ++h) {
      const __m256i k = half_mask<E>(m, h);
      acc.h[h] = _mm256_blendv_epi8(acc.h[h], maskload(c + 32 * h, k), k);
    }
    return acc;
  }
  static V or_(V a, V b) {
    return V{{_mm256_or_si256(a.h[0], b.h[0]), _mm256_or_si256(a.h[1], b.h[1])}};
  }
  // Lanes of m from b, the others from a.
  static V blend(uint64_t m, V a, V b) {
    for (int h = 0; h < 2; ++h) a.h[h] = _mm256_blendv_epi8(a.h[h], b.h[h], half_mask<E>(m, h));
    return a;
  }
  static void store(void* p, uint64_t m, V v) {
    char* c = static_cast<char*>(p);
    if ((m & kAll) == kAll) {  // vmaskmov stores are slow on some CPUs: plain ones when full
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(c), v.h[0]);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(c + 32), v.h[1]);
      return;
    }
    for (int h = 0; h < 2; ++h) {
      const __m256i k = half_mask<E>(m, h);
      if (_mm256_testz_si256(k, k)) continue;
      if (E == 4)
        _mm256_maskstore_epi32(reinterpret_cast<int*>(c + 32 * h), k, v.h[h]);
      else
        _mm256_maskstore_epi64(reinterpret_cast<long long*>(c + 32 * h), k, v.h[h]);
    }
  }
};
template <>
struct Bits<4> : Avx2Bits<4> {};
template <>
struct Bits<8> : Avx2Bits<8> {};
#endif
#endif

// Arithmetic lanes: float (16) for float / bfloat16 / half storage, double (8) for double.
// Loads convert from the storage type; lanes outside the mask read as 0.
template <typename scalar_t>
struct Math;

#ifdef TS2_AVX512
#define TS2_MATH(T, VEC, LANES, MASK, SUFFIX)                              \
  template <>                                                              \
  struct Math<T> {                                                         \
    using V = VEC;                                                         \
    static constexpr int kLanes = LANES;                                   \
    static V zero() { return _mm512_setzero_##SUFFIX(); }                  \
    static V load(const T* c) { return _mm512_loadu_##SUFFIX(c); }         \
    static V load(uint64_t m, const T* p) {                                \
      return _mm512_maskz_loadu_##SUFFIX(static_cast<MASK>(m), p);         \
    }                                                                      \
    static V fma(V a, V b, V c) { return _mm512_fmadd_##SUFFIX(a, b, c); } \
    static V mul(V a, V b) { return _mm512_mul_##SUFFIX(a, b); }           \
    static V add(V a, V b) { return _mm512_add_##SUFFIX(a, b); }           \
    static void store(T* p, uint64_t m, V v) {                             \
      _mm512_mask_storeu_##SUFFIX(p, static_cast<MASK>(m), v);             \
    }                                                                      \
    static void spill(T* p, V v) { _mm512_storeu_##SUFFIX(p, v); }         \
    /* A whole vector to a 64-byte aligned p, with a streaming store. */   \
    static void stream(T* p, V v) { _mm512_stream_##SUFFIX(p, v); }        \
    /* Lanes in m from a, the others from b. */                            \
    static V select(uint64_t m, V a, V b) {                                \
      return _mm512_mask_blend_##SUFFIX(static_cast<MASK>(m), b, a);       \
    }                                                                      \
  };
TS2_MATH(float, __m512, 16, __mmask16, ps)
TS2_MATH(double, __m512d, 8, __mmask8, pd)
#undef TS2_MATH
template <>
struct Math<c10::BFloat16> : Math<float> {
  using Math<float>::load;
  static V load(uint64_t m, const c10::BFloat16* p) {
    const __m256i h = _mm256_maskz_loadu_epi16(static_cast<__mmask16>(m), p);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
  // Round to nearest even as c10::BFloat16 does (NaN becomes the canonical 0x7fc0).
  static void store(c10::BFloat16* p, uint64_t m, V v) {
    const __m512i bits = _mm512_castps_si512(v);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
    const __m512i rounded = _mm512_srli_epi32(
        _mm512_add_epi32(bits, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
    const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    const __m512i out = _mm512_mask_blend_epi32(nan, rounded, _mm512_set1_epi32(0x7fc0));
    _mm256_mask_storeu_epi16(p, static_cast<__mmask16>(m), _mm512_cvtepi32_epi16(out));
  }
};
template <>
struct Math<c10::Half> : Math<float> {
  using Math<float>::load;
  static V load(uint64_t m, const c10::Half* p) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(static_cast<__mmask16>(m), p));
  }
  static void store(c10::Half* p, uint64_t m, V v) {
    _mm256_mask_storeu_epi16(p, static_cast<__mmask16>(m),
                             _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
};
#else
template <typename opmath_t, int L>
struct PortableMath {
  struct V {
    opmath_t v[L];
  };
  static constexpr int kLanes = L;
  static V zero() {
    V r;
    for (int i = 0; i < L; ++i) r.v[i] = 0;
    return r;
  }
  static V load(const opmath_t* c) {
    V r;
    for (int i = 0; i < L; ++i) r.v[i] = c[i];
    return r;
  }
  template <typename T>
  static V load(uint64_t m, const T* p) {
    V r;
    for (int i = 0; i < L; ++i) r.v[i] = m >> i & 1 ? static_cast<opmath_t>(p[i]) : opmath_t(0);
    return r;
  }
  static V fma(V a, V b, V c) {
    for (int i = 0; i < L; ++i) c.v[i] += a.v[i] * b.v[i];
    return c;
  }
  static V mul(V a, V b) {
    for (int i = 0; i < L; ++i) a.v[i] *= b.v[i];
    return a;
  }
  static V add(V a, V b) {
    for (int i = 0; i < L; ++i) a.v[i] += b.v[i];
    return a;
  }
  template <typename T>
  static void store(T* p, uint64_t m, V v) {
    for (int i = 0; i < L; ++i)
      if (m >> i & 1) p[i] = static_cast<T>(v.v[i]);
  }
  static void spill(opmath_t* p, V v) {
    for (int i = 0; i < L; ++i) p[i] = v.v[i];
  }
  static V select(uint64_t m, V a, V b) {
    for (int i = 0; i < L; ++i)
      if (m >> i & 1) b.v[i] = a.v[i];
    return b;
  }
};
#ifdef TS2_AVX2
// 64-byte vectors as two AVX2 halves (see Avx2Bits); reduced-precision storage converts
// through a lane buffer.
#define TS2_MATH(T, VEC, E, SUFFIX)                                                         \
  template <>                                                                               \
  struct Math<T> {                                                                          \
    struct V {                                                                              \
      VEC h[2];                                                                             \
    };                                                                                      \
    static constexpr int kLanes = kVectorBytes / E, kHalf = kLanes / 2;                     \
    static constexpr uint64_t kAll = (uint64_t(1) << kLanes) - 1;                           \
    static V zero() { return V{{_mm256_setzero_##SUFFIX(), _mm256_setzero_##SUFFIX()}}; }   \
    static V load(const T* c) {                                                             \
      return V{{_mm256_loadu_##SUFFIX(c), _mm256_loadu_##SUFFIX(c + kHalf)}};               \
    }                                                                                       \
    static V load(uint64_t m, const T* p) {                                                 \
      if ((m & kAll) == kAll) return load(p);                                               \
      return V{{_mm256_maskload_##SUFFIX(p, half_mask<E>(m, 0)),                            \
                _mm256_maskload_##SUFFIX(p + kHalf, half_mask<E>(m, 1))}};                  \
    }                                                                                       \
    static V fma(V a, V b, V c) {                                                           \
      return V{{_mm256_fmadd_##SUFFIX(a.h[0], b.h[0], c.h[0]),                              \
                _mm256_fmadd_##SUFFIX(a.h[1], b.h[1], c.h[1])}};                            \
    }                                                                                       \
    static V mul(V a, V b) {                                                                \
      return V{{_mm256_mul_##SUFFIX(a.h[0], b.h[0]), _mm256_mul_##SUFFIX(a.h[1], b.h[1])}}; \
    }                                                                                       \
    static V add(V a, V b) {                                                                \
      return V{{_mm256_add_##SUFFIX(a.h[0], b.h[0]), _mm256_add_##SUFFIX(a.h[1], b.h[1])}}; \
    }                                                                                       \
    static void spill(T* p, V v) {                                                          \
      _mm256_storeu_##SUFFIX(p, v.h[0]);                                                    \
      _mm256_storeu_##SUFFIX(p + kHalf, v.h[1]);                                            \
    }                                                                                       \
    static void store(T* p, uint64_t m, V v) {                                              \
      if ((m & kAll) == kAll) return spill(p, v);                                           \
      for (int h = 0; h < 2; ++h) {                                                         \
        const __m256i k = half_mask<E>(m, h);                                               \
        if (!_mm256_testz_si256(k, k)) _mm256_maskstore_##SUFFIX(p + h * kHalf, k, v.h[h]); \
      }                                                                                     \
    }                                                                                       \
    static V select(uint64_t m, V a, V b) {                                                 \
      const auto k0 = _mm256_castsi256_##SUFFIX(half_mask<E>(m, 0));                        \
      const auto k1 = _mm256_castsi256_##SUFFIX(half_mask<E>(m, 1));                        \
      return V{{_mm256_blendv_##SUFFIX(b.h[0], a.h[0], k0),                                 \
                _mm256_blendv_##SUFFIX(b.h[1], a.h[1], k1)}};                               \
    }                                                                                       \
  };
TS2_MATH(float, __m256, 4, ps)
TS2_MATH(double, __m256d, 8, pd)
#undef TS2_MATH
template <typename T>
struct ConvertingMath : Math<float> {
  using Math<float>::load;
  using Math<float>::store;
  static V load(uint64_t m, const T* p) {
    alignas(32) float lanes[16];
    for (int i = 0; i < 16; ++i) lanes[i] = m >> i & 1 ? static_cast<float>(p[i]) : 0.0f;
    return Math<float>::load(lanes);
  }
  static void store(T* p, uint64_t m, V v) {
    alignas(32) float lanes[16];
    Math<float>::spill(lanes, v);
    for (int i = 0; i < 16; ++i)
      if (m >> i & 1) p[i] = static_cast<T>(lanes[i]);
  }
};
template <>
struct Math<c10::BFloat16> : ConvertingMath<c10::BFloat16> {};
template <>
struct Math<c10::Half> : ConvertingMath<c10::Half> {};
#else
template <>
struct Math<float> : PortableMath<float, 16> {};
template <>
struct Math<double> : PortableMath<double, 8> {};
template <>
struct Math<c10::BFloat16> : PortableMath<float, 16> {};
template <>
struct Math<c10::Half> : PortableMath<float, 16> {};
#endif
#endif

inline uint64_t lanes_below(int n) { return n >= 64 ? ~uint64_t(0) : (uint64_t(1) << n) - 1; }

// ---------------------------------------------------------------------------------------
// Indexed gathers. One vector holds one element of each of L consecutive channels; lane c
// reads its own source position through a 32-bit element index relative to the image.
// Faster than the taps when the shifts of a block differ (one gather instead of one masked
// read per distinct shift); used for 4- and 8-byte elements (the gathers that exist).

template <int E>
struct Gather;

#ifdef TS2_AVX512
template <>
struct Gather<4> {
  static constexpr int kLanes = 16;
  using I = __m512i;
  using Bv = __m512i;
  using Fv = __m512;
  static I index(const int32_t* p) { return _mm512_loadu_si512(p); }
  static I add(I i, int32_t v) { return _mm512_add_epi32(i, _mm512_set1_epi32(v)); }
  static I add(I i, I j) { return _mm512_add_epi32(i, j); }
  static void store_index(int32_t* p, I i) { _mm512_storeu_si512(p, i); }
  static Bv bits(Bv src, uint64_t m, I i, const void* base) {
    return _mm512_mask_i32gather_epi32(src, static_cast<__mmask16>(m), i, base, 4);
  }
  static Fv floats(uint64_t m, I i, const float* base) {
    return _mm512_mask_i32gather_ps(_mm512_setzero_ps(), static_cast<__mmask16>(m), i, base, 4);
  }
};
template <>
struct Gather<8> {
  static constexpr int kLanes = 8;
  using I = __m256i;
  using Bv = __m512i;
  using Fv = __m512d;
  static I index(const int32_t* p) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  }
  static I add(I i, int32_t v) { return _mm256_add_epi32(i, _mm256_set1_epi32(v)); }
  static I add(I i, I j) { return _mm256_add_epi32(i, j); }
  static void store_index(int32_t* p, I i) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), i);
  }
  static Bv bits(Bv src, uint64_t m, I i, const void* base) {
    return _mm512_mask_i32gather_epi64(src, static_cast<__mmask8>(m), i, base, 8);
  }
  static Fv floats(uint64_t m, I i, const double* base) {
    return _mm512_mask_i32gather_pd(_mm512_setzero_pd(), static_cast<__mmask8>(m), i, base, 8);
  }
};
#else
template <int E>
struct Gather {
  static constexpr int kLanes = kVectorBytes / E;
  struct I {
    int32_t v[kLanes];
  };
  using Bv = typename Bits<E>::V;
  using opmath_t = typename std::conditional<E == 8, double, float>::type;
  using Fv = typename Math<opmath_t>::V;
  static I index(const int32_t* p) {
    I r;
    for (int l = 0; l < kLanes; ++l) r.v[l] = p[l];
    return r;
  }
  static I add(I i, int32_t v) {
    for (int l = 0; l < kLanes; ++l) i.v[l] += v;
    return i;
  }
  static I add(I i, I j) {
    for (int l = 0; l < kLanes; ++l) i.v[l] += j.v[l];
    return i;
  }
  static void store_index(int32_t* p, I i) {
    for (int l = 0; l < kLanes; ++l) p[l] = i.v[l];
  }
  static Bv bits(Bv src, uint64_t m, I i, const void* base) {
    for (int l = 0; l < kLanes; ++l)
      if (m >> l & 1)
        std::memcpy(src.b + l * E, static_cast<const uint8_t*>(base) + int64_t(i.v[l]) * E, E);
    return src;
  }
  static Fv floats(uint64_t m, I i, const opmath_t* base) {
    Fv r;
    for (int l = 0; l < kLanes; ++l) r.v[l] = m >> l & 1 ? base[i.v[l]] : opmath_t(0);
    return r;
  }
};
#ifdef TS2_AVX2
// AVX2 gathers of 8 x 4 or 4 x 8 bytes per half, masked by lane masks (see Avx2Bits).
template <>
struct Gather<4> {
  static constexpr int kLanes = 16;
  struct I {
    __m256i h[2];
  };
  using Bv = Bits<4>::V;
  using Fv = Math<float>::V;
  static I index(const int32_t* p) {
    return I{{_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)),
              _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 8))}};
  }
  static I add(I i, int32_t v) {
    const __m256i x = _mm256_set1_epi32(v);
    return I{{_mm256_add_epi32(i.h[0], x), _mm256_add_epi32(i.h[1], x)}};
  }
  static I add(I i, I j) {
    return I{{_mm256_add_epi32(i.h[0], j.h[0]), _mm256_add_epi32(i.h[1], j.h[1])}};
  }
  static void store_index(int32_t* p, I i) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), i.h[0]);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p + 8), i.h[1]);
  }
  static Bv bits(Bv src, uint64_t m, I i, const void* base) {
    const int* b = static_cast<const int*>(base);
    for (int h = 0; h < 2; ++h)
      src.h[h] = _mm256_mask_i32gather_epi32(src.h[h], b, i.h[h], lane_mask32(m >> (8 * h)), 4);
    return src;
  }
  static Fv floats(uint64_t m, I i, const float* base) {
    Fv r;
    for (int h = 0; h < 2; ++h)
      r.h[h] = _mm256_mask_i32gather_ps(_mm256_setzero_ps(), base, i.h[h],
                                        _mm256_castsi256_ps(lane_mask32(m >> (8 * h))), 4);
    return r;
  }
};
template <>
struct Gather<8> {
  static constexpr int kLanes = 8;
  using I = __m256i;
  using Bv = Bits<8>::V;
  using Fv = Math<double>::V;
  static I index(const int32_t* p) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  }
  static I add(I i, int32_t v) { return _mm256_add_epi32(i, _mm256_set1_epi32(v)); }
  static I add(I i, I j) { return _mm256_add_epi32(i, j); }
  static void store_index(int32_t* p, I i) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), i);
  }
  static __m128i half(I i, int h) {
    return h == 0 ? _mm256_castsi256_si128(i) : _mm256_extracti128_si256(i, 1);
  }
  static Bv bits(Bv src, uint64_t m, I i, const void* base) {
    const long long* b = static_cast<const long long*>(base);
    for (int h = 0; h < 2; ++h)
      src.h[h] = _mm256_mask_i32gather_epi64(src.h[h], b, half(i, h), lane_mask64(m >> (4 * h)), 8);
    return src;
  }
  static Fv floats(uint64_t m, I i, const double* base) {
    Fv r;
    for (int h = 0; h < 2; ++h)
      r.h[h] = _mm256_mask_i32gather_pd(_mm256_setzero_pd(), base, half(i, h),
                                        _mm256_castsi256_pd(lane_mask64(m >> (4 * h))), 8);
    return r;
  }
};
#endif
#endif

}  // namespace torchshift2_cpu
