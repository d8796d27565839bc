// torchshift2 CPU kernels for channels-last tensors (channels innermost: channels_last,
// channels_last_3d, or (N, L, C) for 1D), compiled after shift.cpp into the same library.
//
// The shift of channel c by d reads, at every output position o, the source position
// o + before - d. Channels sharing an offset d form a *tap*; the padding rule of a tap's
// read depends only on the position, never on the channel, so a tap is a plain vector read
// of the channels it covers from one source row (SSL: a masked move; Active Shift: each of
// the 2^D interpolation corners of a channel is a tap with its weight as a per-lane
// coefficient). A 64-byte block of channels then costs one vector read per tap that
// covers it: an output row is a sparse depthwise convolution with per-block tap lists.
// grad_input is the same gather with the adjoint offsets, plus the reads that went
// through padding folded back (SPEC §4); grad_weight accumulates, per tap, grad_output
// times the tap's read in per-lane accumulators.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#if defined(__AVX512F__) && defined(__AVX512BW__)
#include <immintrin.h>
#define TS2_AVX512 1
#elif defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define TS2_AVX2 1
#endif

#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <map>
#include <memory>
#include <set>
#include <vector>

namespace torchshift2_cpu {
namespace {

// ---------------------------------------------------------------------------------------
// A minimal 64-byte SIMD layer: AVX-512 where the compiler targets it, two AVX2 halves for
// 4- and 8-byte lanes where it targets AVX2 only, plain loops (which the compiler vectorises
// as it can) elsewhere. Masks select lanes; lane i is bit i.

constexpr int kVectorBytes = 64;

// Raw bits: SSL moves values without looking at them; E is the element size.
template <int E>
struct Bits;

#ifdef TS2_AVX512
// One specialisation per element size: the intrinsics differ only in their suffix.
#define TS2_BITS(E, MASK, SUFFIX, LANE)                                                     \
  template <>                                                                               \
  struct Bits<E> {                                                                          \
    using V = __m512i;                                                                      \
    static V or_(V a, V b) { return _mm512_or_si512(a, b); }                                \
    static V set1(uint64_t v) { return _mm512_set1_##SUFFIX(static_cast<LANE>(v)); }       \
    static V load_merge(V acc, uint64_t m, const void* p) {                                 \
      return _mm512_mask_loadu_##SUFFIX(acc, static_cast<MASK>(m), p);                      \
    }                                                                                       \
    static V load_zero(uint64_t m, const void* p) {                                         \
      return _mm512_maskz_loadu_##SUFFIX(static_cast<MASK>(m), p);                          \
    }                                                                                       \
    static V blend(uint64_t m, V a, V b) {                                                  \
      return _mm512_mask_blend_##SUFFIX(static_cast<MASK>(m), a, b);                        \
    }                                                                                       \
    static void store(void* p, uint64_t m, V v) {                                           \
      _mm512_mask_storeu_##SUFFIX(p, static_cast<MASK>(m), v);                              \
    }                                                                                       \
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
  return _mm256_cmpeq_epi64(_mm256_and_si256(_mm256_set1_epi64x(static_cast<int64_t>(m & 0xf)), bit),
                            bit);
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
      if (E == 4) _mm256_maskstore_epi32(reinterpret_cast<int*>(c + 32 * h), k, v.h[h]);
      else _mm256_maskstore_epi64(reinterpret_cast<long long*>(c + 32 * h), k, v.h[h]);
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
#define TS2_MATH(T, VEC, LANES, MASK, SUFFIX)                                               \
  template <>                                                                               \
  struct Math<T> {                                                                          \
    using V = VEC;                                                                          \
    static constexpr int kLanes = LANES;                                                    \
    static V zero() { return _mm512_setzero_##SUFFIX(); }                                   \
    static V load(const T* c) { return _mm512_loadu_##SUFFIX(c); }                          \
    static V load(uint64_t m, const T* p) {                                                 \
      return _mm512_maskz_loadu_##SUFFIX(static_cast<MASK>(m), p);                          \
    }                                                                                       \
    static V fma(V a, V b, V c) { return _mm512_fmadd_##SUFFIX(a, b, c); }                  \
    static V mul(V a, V b) { return _mm512_mul_##SUFFIX(a, b); }                            \
    static V add(V a, V b) { return _mm512_add_##SUFFIX(a, b); }                            \
    static void store(T* p, uint64_t m, V v) {                                              \
      _mm512_mask_storeu_##SUFFIX(p, static_cast<MASK>(m), v);                              \
    }                                                                                       \
    static void spill(T* p, V v) { _mm512_storeu_##SUFFIX(p, v); }                          \
    /* Lanes in m from a, the others from b. */                                             \
    static V select(uint64_t m, V a, V b) {                                                 \
      return _mm512_mask_blend_##SUFFIX(static_cast<MASK>(m), b, a);                        \
    }                                                                                       \
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
        if (!_mm256_testz_si256(k, k)) _mm256_maskstore_##SUFFIX(p + h * kHalf, k, v.h[h]);       \
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
// Taps.

// A tap: the per-slot offset d of its reads (output o reads source o + before - d).
using Offset = std::array<int64_t, kSlots>;

// Corner a of the slots that exist as (a0, a1, a2) bits, slot 2 the lowest bit (the order
// combine_corner_partials expects).
inline void corner_bits(const Geometry& g, int a, int64_t* bits) {
  int rest = a;
  for (int s = kSlots - 1; s >= 0; --s) {
    bits[s] = g.real[s] ? rest & 1 : 0;
    if (g.real[s]) rest >>= 1;
  }
}

// The offset corner a reads at: the channel's integer shift plus the corner bits.
template <typename opmath_t>
Offset corner_offset(const Geometry& g, const ChannelShift<opmath_t>& cs, int a) {
  int64_t bits[kSlots];
  corner_bits(g, a, bits);
  return Offset{cs.shift[0] + bits[0], cs.shift[1] + bits[1], cs.shift[2] + bits[2]};
}

template <typename opmath_t>
opmath_t corner_weight(const Geometry& g, const ChannelShift<opmath_t>& cs, int a) {
  int64_t bits[kSlots];
  corner_bits(g, a, bits);
  opmath_t w = 1;
  for (int s = 0; s < kSlots; ++s)
    if (g.real[s]) w *= bits[s] ? cs.frac[s] : 1 - cs.frac[s];
  return w;
}



// The taps of one block of channels: which lanes each covers, and (Active Shift) the
// per-lane coefficient.
template <typename opmath_t>
struct BlockTaps {
  Table<int> tap;           // index into TapTable::offset
  Table<uint64_t> mask;
  Table<opmath_t> coef;     // [j * lanes + lane]
  int64_t lo = 0, hi = 0;   // slot-2 outputs where every tap of the block reads inside
  Table<int64_t> edge_col;  // the other slot-2 outputs
  Table<int64_t> edge_src;  // [e * taps + j]: source column of tap j, or kOutside
};

// All taps of a call: their offsets, per tap the source index of every slot-0 / slot-1
// output (kOutside: zeros padding), and per block the taps that cover it.
template <typename opmath_t>
struct TapTable {
  int lanes = 16;
  Table<Offset> offset;
  Table<Table<int64_t>> src0, src1;
  Table<BlockTaps<opmath_t>> blocks;
};

// Builds the taps of `channels` channels whose corners (SPEC §3) are given by
// offset_of(c, a) and weight_of(c, a), a in [0, corners). The geometry is that of
// the forward (out_length outputs reading `length` sources with `before` cropped) or, for
// grad_input, its adjoint (the caller swaps lengths and negates offsets and before).
template <typename opmath_t, typename OffsetFn, typename WeightFn>
TapTable<opmath_t> tap_table(int64_t channels, int lanes, int corners,
                             const int64_t* out_length, const int64_t* length,
                             const int64_t* before, int64_t padding, OffsetFn offset_of,
                             WeightFn weight_of) {
  TapTable<opmath_t> t;
  t.lanes = lanes;
  std::map<Offset, int> ids;
  const int64_t nblocks = (channels + lanes - 1) / lanes;
  t.blocks.resize(nblocks);
  for (int64_t b = 0; b < nblocks; ++b) {
    BlockTaps<opmath_t>& bt = t.blocks[b];
    std::map<int, int> local;  // global tap -> index in this block
    for (int64_t lane = 0; lane < lanes && b * lanes + lane < channels; ++lane) {
      const int64_t c = b * lanes + lane;
      for (int a = 0; a < corners; ++a) {
        const Offset d = offset_of(c, a);
        auto found = ids.find(d);
        int id;
        if (found == ids.end()) {
          id = static_cast<int>(t.offset.size());
          ids.emplace(d, id);
          t.offset.push_back(d);
        } else {
          id = found->second;
        }
        auto at = local.find(id);
        int j;
        if (at == local.end()) {
          j = static_cast<int>(bt.tap.size());
          local.emplace(id, j);
          bt.tap.push_back(id);
          bt.mask.push_back(0);
          bt.coef.resize((j + 1) * lanes, opmath_t(0));
        } else {
          j = at->second;
        }
        bt.mask[j] |= uint64_t(1) << lane;
        bt.coef[j * lanes + lane] += weight_of(c, a);
      }
    }
  }
  const size_t taps = t.offset.size();
  t.src0.resize(taps);
  t.src1.resize(taps);
  for (size_t i = 0; i < taps; ++i) {
    t.src0[i].resize(out_length[0]);
    t.src1[i].resize(out_length[1]);
    for (int64_t o = 0; o < out_length[0]; ++o)
      t.src0[i][o] = source_index(o + before[0] - t.offset[i][0], length[0], padding);
    for (int64_t o = 0; o < out_length[1]; ++o)
      t.src1[i][o] = source_index(o + before[1] - t.offset[i][1], length[1], padding);
  }
  for (BlockTaps<opmath_t>& bt : t.blocks) {
    const int64_t O2 = out_length[2], L2 = length[2], b2 = before[2];
    bt.lo = 0;
    bt.hi = O2;
    for (const int id : bt.tap) {
      const Interior in = interior(O2, L2, b2, t.offset[id][2], 1);
      bt.lo = std::max(bt.lo, in.lo);
      bt.hi = std::min(bt.hi, in.hi);
    }
    if (bt.hi < bt.lo) bt.hi = bt.lo;
    const size_t nt = bt.tap.size();
    for (int64_t w = 0; w < O2; ++w) {
      if (w >= bt.lo && w < bt.hi) continue;
      bt.edge_col.push_back(w);
      for (size_t j = 0; j < nt; ++j)
        bt.edge_src.push_back(source_index(w + b2 - t.offset[bt.tap[j]][2], L2, padding));
    }
  }
  return t;
}

// Per output row: the source row of every tap of a block (nullptr: outside, zeros padding).
// `row_base` gives the address of source row (i0, i1); column w of tap j is then
// row[j] + (w + before2 - d2) * C, which is what `base` holds at w = 0.
template <typename T, typename opmath_t>
int block_rows(const T** base, const T** row, uint64_t* mask, const opmath_t** coef,
               const TapTable<opmath_t>& t, const BlockTaps<opmath_t>& bt,
               int64_t o0, int64_t o1, const T* image, int64_t stride0, int64_t stride1,
               int64_t C, int64_t before2, int64_t block_offset, int* which) {
  int count = 0;
  for (size_t j = 0; j < bt.tap.size(); ++j) {
    const int id = bt.tap[j];
    const int64_t i0 = t.src0[id][o0], i1 = t.src1[id][o1];
    if (i0 == kOutside || i1 == kOutside) continue;
    const T* r = image + i0 * stride0 + i1 * stride1 + block_offset;
    row[count] = r;
    base[count] = r + (before2 - t.offset[id][2]) * C;
    mask[count] = bt.mask[j];
    coef[count] = bt.coef.data() + j * t.lanes;
    which[count++] = static_cast<int>(j);
  }
  return count;
}

// ---------------------------------------------------------------------------------------
// Forward.

// The taps of every block for one output row, flattened: block b's entries are
// [first[b], first[b + 1]). Columns are walked outermost so that the reads and writes of an
// output row advance through memory together (block-by-block passes over a row read every
// fourth cache line, which the hardware prefetchers do not follow).
template <typename T, typename opmath_t>
struct RowTaps {
  std::vector<const T*> base, row;
  std::vector<uint64_t> mask;
  std::vector<const opmath_t*> coef;
  std::vector<int> which;
  std::vector<int> first;
  std::vector<uint64_t> covered;
  int64_t lo = 0, hi = 0;  // columns interior for every block

  explicit RowTaps(const TapTable<opmath_t>& t) {
    size_t total = 0;
    for (const auto& bt : t.blocks) total += bt.tap.size();
    base.resize(total);
    row.resize(total);
    mask.resize(total);
    coef.resize(total);
    which.resize(total);
    first.resize(t.blocks.size() + 1);
    covered.resize(t.blocks.size());
  }

  void fill(const TapTable<opmath_t>& t, int64_t o0, int64_t o1, const T* image,
            int64_t stride0, int64_t stride1, int64_t C, int64_t before2, int64_t O2) {
    int at = 0;
    lo = 0;
    hi = O2;
    for (size_t b = 0; b < t.blocks.size(); ++b) {
      const BlockTaps<opmath_t>& bt = t.blocks[b];
      first[b] = at;
      const int k = block_rows(base.data() + at, row.data() + at, mask.data() + at,
                               coef.data() + at, t, bt, o0, o1, image,
                               stride0, stride1, C, before2, static_cast<int64_t>(b) * t.lanes,
                               which.data() + at);
      uint64_t cov = 0;
      for (int j = 0; j < k; ++j) cov |= mask[at + j];
      covered[b] = cov;
      at += k;
      lo = std::max(lo, bt.lo);
      hi = std::min(hi, bt.hi);
    }
    first[t.blocks.size()] = at;
    if (hi < lo) hi = lo;
  }
};

// SSL: each lane takes its channel's tap (a masked move); lanes whose tap reads outside keep
// `fill`. Zero-masked reads are ORed (the taps of a block cover disjoint lanes), so there is
// no dependency chain through a merging destination.
template <typename T>
void ssl_forward_taps(const T* in, T* out, const Geometry& g, const Strides& is,
                      const Strides& os, const std::vector<ChannelShift<double>>& shifts,
                      T fill) {
  constexpr int E = sizeof(T);
  constexpr int L = kVectorBytes / E;
  using B = Bits<E>;
  using V = typename B::V;
  const int64_t C = g.channels, O0 = g.out_length[0], O1 = g.out_length[1];
  const int64_t O2 = g.out_length[2];
  const TapTable<float> t = tap_table<float>(
      C, L, 1, g.out_length, g.length, g.before, g.padding,
      [&](int64_t c, int) { return Offset{shifts[c].shift[0], shifts[c].shift[1], shifts[c].shift[2]}; },
      [](int64_t, int) { return 1.0f; });
  uint64_t fill_bits = 0;
  std::memcpy(&fill_bits, &fill, E);
  const int64_t nblocks = static_cast<int64_t>(t.blocks.size());
  const int64_t rows = g.batch * O0 * O1;
  const int64_t grain = std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, O2 * C));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    RowTaps<T, float> rt(t);
    const V fillv = B::set1(fill_bits);
    const V zero = B::set1(0);
    std::vector<uint64_t> valid(nblocks);
    for (int64_t b = 0; b < nblocks; ++b)
      valid[b] = lanes_below(static_cast<int>(std::min<int64_t>(L, C - b * L)));
    // One column of block b, w interior for the block.
    // Lanes that no tap of the block reads this row (outside: zeros padding) take fill.
    auto start = [&](int64_t b) { return B::blend(~rt.covered[b], zero, fillv); };
    auto column = [&](T* yb, int64_t b, int64_t w) {
      V a = start(b);
      for (int j = rt.first[b]; j < rt.first[b + 1]; ++j)
        a = B::or_(a, B::load_zero(rt.mask[j], rt.base[j] + w * C));
      B::store(yb + w * C, valid[b], a);
    };
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / (O0 * O1), o0 = (r / O1) % O0, o1 = r % O1;
      rt.fill(t, o0, o1, in + n * is.batch, is.slot[0], is.slot[1], C, g.before[2], O2);
      T* y = out + n * os.batch + o0 * os.slot[0] + o1 * os.slot[1];
      int64_t w = rt.lo;
      const int64_t stride = C;
      const T* const* bases = rt.base.data();
      const uint64_t* masks = rt.mask.data();
      for (; w + 4 <= rt.hi; w += 4)
        for (int64_t b = 0; b < nblocks; ++b) {
          T* yb = y + b * L + w * stride;
          V a0 = start(b), a1 = a0, a2 = a0, a3 = a0;
          const int j1 = rt.first[b + 1];
          for (int j = rt.first[b]; j < j1; ++j) {
            const T* p = bases[j] + w * stride;
            const uint64_t m = masks[j];
            a0 = B::or_(a0, B::load_zero(m, p));
            a1 = B::or_(a1, B::load_zero(m, p + stride));
            a2 = B::or_(a2, B::load_zero(m, p + 2 * stride));
            a3 = B::or_(a3, B::load_zero(m, p + 3 * stride));
          }
          B::store(yb, valid[b], a0);
          B::store(yb + stride, valid[b], a1);
          B::store(yb + 2 * stride, valid[b], a2);
          B::store(yb + 3 * stride, valid[b], a3);
        }
      for (; w < rt.hi; ++w)
        for (int64_t b = 0; b < nblocks; ++b) column(y + b * L, b, w);
      // Columns outside the common interior: each block's own interior, then its edges.
      for (int64_t b = 0; b < nblocks; ++b) {
        const BlockTaps<float>& bt = t.blocks[b];
        T* yb = y + b * L;
        for (int64_t v = bt.lo; v < std::min(rt.lo, bt.hi); ++v) column(yb, b, v);
        for (int64_t v = std::max(rt.hi, bt.lo); v < bt.hi; ++v) column(yb, b, v);
        const size_t nt = bt.tap.size();
        for (size_t e = 0; e < bt.edge_col.size(); ++e) {
          V a = fillv;
          for (int j = rt.first[b]; j < rt.first[b + 1]; ++j) {
            const int64_t m = bt.edge_src[e * nt + rt.which[j]];
            if (m != kOutside) a = B::load_merge(a, rt.mask[j], rt.row[j] + m * C);
          }
          B::store(yb + bt.edge_col[e] * C, valid[b], a);
        }
      }
    }
  });
}

// Active Shift: per output row and block, the sum over taps of coefficient x read.
template <typename scalar_t>
void active_forward_taps(const scalar_t* in, scalar_t* out, const Geometry& g, const Strides& is,
                         const Strides& os,
                         const std::vector<ChannelShift<at::opmath_type<scalar_t>>>& shifts) {
  using opmath_t = at::opmath_type<scalar_t>;
  using M = Math<scalar_t>;
  constexpr int L = M::kLanes;
  const int64_t C = g.channels, O0 = g.out_length[0], O1 = g.out_length[1];
  const int64_t O2 = g.out_length[2];
  const int corners = (g.real[0] ? 2 : 1) * (g.real[1] ? 2 : 1) * 2;
  const TapTable<opmath_t> t = tap_table<opmath_t>(
      C, L, corners, g.out_length, g.length, g.before, g.padding,
      [&](int64_t c, int a) { return corner_offset(g, shifts[c], a); },
      [&](int64_t c, int a) { return corner_weight(g, shifts[c], a); });
  const int64_t rows = g.batch * O0 * O1;
  const int64_t grain = std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, O2 * C));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    const size_t most = t.offset.size();
    std::vector<const scalar_t*> base(most), row(most);
    std::vector<uint64_t> mask(most);
    std::vector<const opmath_t*> coef(most);
    std::vector<int> which(most);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / (O0 * O1), o0 = (r / O1) % O0, o1 = r % O1;
      const scalar_t* image = in + n * is.batch;
      scalar_t* y = out + n * os.batch + o0 * os.slot[0] + o1 * os.slot[1];
      for (size_t b = 0; b < t.blocks.size(); ++b) {
        const BlockTaps<opmath_t>& bt = t.blocks[b];
        const int64_t off = static_cast<int64_t>(b) * L;
        const uint64_t valid = lanes_below(static_cast<int>(std::min<int64_t>(L, C - off)));
        const int k = block_rows(base.data(), row.data(), mask.data(), coef.data(),
                                 t, bt, o0, o1, image, is.slot[0], is.slot[1],
                                 C, g.before[2], off, which.data());
        scalar_t* yb = y + off;
        int64_t w = bt.lo;
        // Four columns at a time, two partial sums each: eight independent FMA chains.
        for (; w + 4 <= bt.hi; w += 4) {
          typename M::V a0 = M::zero(), a1 = M::zero(), a2 = M::zero(), a3 = M::zero();
          typename M::V b0 = M::zero(), b1 = M::zero(), b2 = M::zero(), b3 = M::zero();
          int j = 0;
          for (; j + 2 <= k; j += 2) {
            const typename M::V cj = M::load(coef[j]), ck = M::load(coef[j + 1]);
            const scalar_t* p = base[j] + w * C;
            const scalar_t* q = base[j + 1] + w * C;
            a0 = M::fma(cj, M::load(mask[j], p), a0);
            a1 = M::fma(cj, M::load(mask[j], p + C), a1);
            a2 = M::fma(cj, M::load(mask[j], p + 2 * C), a2);
            a3 = M::fma(cj, M::load(mask[j], p + 3 * C), a3);
            b0 = M::fma(ck, M::load(mask[j + 1], q), b0);
            b1 = M::fma(ck, M::load(mask[j + 1], q + C), b1);
            b2 = M::fma(ck, M::load(mask[j + 1], q + 2 * C), b2);
            b3 = M::fma(ck, M::load(mask[j + 1], q + 3 * C), b3);
          }
          if (j < k) {
            const typename M::V cj = M::load(coef[j]);
            const scalar_t* p = base[j] + w * C;
            a0 = M::fma(cj, M::load(mask[j], p), a0);
            a1 = M::fma(cj, M::load(mask[j], p + C), a1);
            a2 = M::fma(cj, M::load(mask[j], p + 2 * C), a2);
            a3 = M::fma(cj, M::load(mask[j], p + 3 * C), a3);
          }
          M::store(yb + w * C, valid, M::add(a0, b0));
          M::store(yb + (w + 1) * C, valid, M::add(a1, b1));
          M::store(yb + (w + 2) * C, valid, M::add(a2, b2));
          M::store(yb + (w + 3) * C, valid, M::add(a3, b3));
        }
        for (; w < bt.hi; ++w) {
          typename M::V a = M::zero();
          for (int j = 0; j < k; ++j)
            a = M::fma(M::load(coef[j]), M::load(mask[j], base[j] + w * C), a);
          M::store(yb + w * C, valid, a);
        }
        const size_t nt = bt.tap.size();
        for (size_t e = 0; e < bt.edge_col.size(); ++e) {
          typename M::V a = M::zero();
          for (int j = 0; j < k; ++j) {
            const int64_t m = bt.edge_src[e * nt + which[j]];
            if (m != kOutside) a = M::fma(M::load(coef[j]), M::load(mask[j], row[j] + m * C), a);
          }
          M::store(yb + bt.edge_col[e] * C, valid, a);
        }
      }
    }
  });
}

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
  static I index(const int32_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
  static I add(I i, int32_t v) { return _mm256_add_epi32(i, _mm256_set1_epi32(v)); }
  static I add(I i, I j) { return _mm256_add_epi32(i, j); }
  static void store_index(int32_t* p, I i) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), i); }
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
  static I index(const int32_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
  static I add(I i, int32_t v) { return _mm256_add_epi32(i, _mm256_set1_epi32(v)); }
  static I add(I i, I j) { return _mm256_add_epi32(i, j); }
  static void store_index(int32_t* p, I i) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), i); }
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

// Per block of L channels and per interpolation corner (one corner for SSL), all index
// work of a call: per lane, the element offset of its source row for every slot-0 and
// slot-1 output (`row0`, `row1`; a lane whose read is outside, zeros padding, is cleared in
// `mask0` / `mask1`), the column offset of interior columns, and the element offset of
// each column outside the interior.
template <typename opmath_t>
struct GatherCorner {
  Table<int32_t> row0, row1;     // [o * L + lane]
  Table<uint64_t> mask0, mask1;  // [o]
  Table<int32_t> col;            // [lane]: (before2 - d2) * C + channel
  Table<int64_t> d0, d1;         // [lane] (for the prefetcher)
  Table<opmath_t> weight;        // [lane]
  Interior cols{0, 0};           // columns where every lane reads inside
  Table<int64_t> edge_col;       // the other columns, ascending
  Table<int32_t> edge_idx;       // [e * L + lane]: i2 * C + channel
  Table<uint64_t> edge_mask;     // [e]: lanes reading inside
};

template <typename opmath_t>
struct GatherPlan {
  int lanes = 16, corners = 1;
  int64_t blocks = 0;
  Table<GatherCorner<opmath_t>> corner;  // [block * corners + corner]
  Table<uint64_t> valid;                 // lanes that are channels, per block
  Interior cols{0, 0};                   // columns interior for every corner
};

// Whether 32-bit element indices reach every element of a sample.
inline bool gather_indexable(const Geometry& g, const Strides& s) {
  int64_t span = g.channels;
  for (int k = 0; k < kSlots; ++k) {
    if (s.slot[k] < 0) return false;
    span += (g.length[k] - 1) * s.slot[k];
  }
  return span < (int64_t(1) << 30);
}

// offset(c, a): the corner's per-slot offset d (output o reads o + before - d), weight(c, a).
template <typename opmath_t, typename OffsetFn, typename WeightFn>
GatherPlan<opmath_t> gather_plan(const Geometry& g, const Strides& s, int lanes, int corners,
                                 const int64_t* out_length, const int64_t* length,
                                 const int64_t* before, int64_t padding, OffsetFn offset,
                                 WeightFn weight) {
  GatherPlan<opmath_t> p;
  const int64_t C = g.channels;
  p.lanes = lanes;
  p.corners = corners;
  p.blocks = (C + lanes - 1) / lanes;
  p.corner.resize(p.blocks * corners);
  p.valid.resize(p.blocks);
  p.cols = {0, out_length[2]};
  for (int64_t b = 0; b < p.blocks; ++b) {
    const int64_t count = std::min<int64_t>(lanes, C - b * lanes);
    p.valid[b] = lanes_below(static_cast<int>(count));
    for (int a = 0; a < corners; ++a) {
      GatherCorner<opmath_t>& k = p.corner[b * corners + a];
      k.row0.assign(out_length[0] * lanes, 0);
      k.row1.assign(out_length[1] * lanes, 0);
      k.mask0.assign(out_length[0], 0);
      k.mask1.assign(out_length[1], 0);
      k.col.assign(lanes, 0);
      k.d0.assign(lanes, 0);
      k.d1.assign(lanes, 0);
      k.weight.assign(lanes, opmath_t(0));
      k.cols = {0, out_length[2]};
      std::vector<int64_t> d2(lanes, 0);
      for (int64_t l = 0; l < count; ++l) {
        const int64_t c = b * lanes + l;
        const Offset d = offset(c, a);
        k.d0[l] = d[0];
        k.d1[l] = d[1];
        d2[l] = d[2];
        k.col[l] = static_cast<int32_t>((before[2] - d[2]) * C + c);
        k.weight[l] = weight(c, a);
        const Interior in = interior(out_length[2], length[2], before[2], d[2], 1);
        k.cols.lo = std::max(k.cols.lo, in.lo);
        k.cols.hi = std::min(k.cols.hi, in.hi);
        for (int64_t o = 0; o < out_length[0]; ++o) {
          const int64_t i = source_index(o + before[0] - d[0], length[0], padding);
          if (i == kOutside) continue;
          k.row0[o * lanes + l] = static_cast<int32_t>(i * s.slot[0]);
          k.mask0[o] |= uint64_t(1) << l;
        }
        for (int64_t o = 0; o < out_length[1]; ++o) {
          const int64_t i = source_index(o + before[1] - d[1], length[1], padding);
          if (i == kOutside) continue;
          k.row1[o * lanes + l] = static_cast<int32_t>(i * s.slot[1]);
          k.mask1[o] |= uint64_t(1) << l;
        }
      }
      if (k.cols.hi < k.cols.lo) k.cols.hi = k.cols.lo;
      for (int64_t w = 0; w < out_length[2]; ++w) {
        if (w >= k.cols.lo && w < k.cols.hi) continue;
        k.edge_col.push_back(w);
        uint64_t m = 0;
        for (int64_t l = 0; l < lanes; ++l) {
          const int64_t i2 =
              l < count ? source_index(w + before[2] - d2[l], length[2], padding) : kOutside;
          if (i2 != kOutside) m |= uint64_t(1) << l;
          k.edge_idx.push_back(i2 == kOutside ? 0 : static_cast<int32_t>(i2 * C + b * lanes + l));
        }
        k.edge_mask.push_back(m);
      }
      p.cols.lo = std::max(p.cols.lo, k.cols.lo);
      p.cols.hi = std::min(p.cols.hi, k.cols.hi);
    }
  }
  if (p.cols.hi < p.cols.lo) p.cols.hi = p.cols.lo;
  return p;
}

// Gathers train no hardware prefetcher, so the source rows an output row reads for the first
// time (the rows the previous output row did not read) are prefetched during the previous
// output row, a column chunk at a time. Rows are identified by their element offset.
struct RowPrefetch {
  std::vector<std::pair<int64_t, int64_t>> d;  // distinct (d0, d1) of all reads
  std::vector<int64_t> current, next, fresh;
  int64_t row_bytes = 0, before[2] = {0, 0}, length[2] = {1, 1}, stride[2] = {0, 0};
  int64_t padding = 0;

  // The reads of `plan` (made with these before / length / padding) from a tensor with
  // strides `s`, whose slot-2 rows hold row_elements elements.
  template <typename opmath_t>
  void init(const GatherPlan<opmath_t>& plan, const int64_t* before_, const int64_t* length_,
            int64_t padding_, const Strides& s, int64_t row_elements, int64_t element_size) {
    std::set<std::pair<int64_t, int64_t>> seen;
    for (const auto& k : plan.corner)
      for (size_t l = 0; l < k.d0.size(); ++l) seen.emplace(k.d0[l], k.d1[l]);
    d.assign(seen.begin(), seen.end());
    row_bytes = row_elements * element_size;
    for (int k = 0; k < 2; ++k) {
      before[k] = before_[k];
      length[k] = length_[k];
      stride[k] = s.slot[k];
    }
    padding = padding_;
  }
  // The rows output row (o0, o1) reads.
  void rows_of(std::vector<int64_t>& out, int64_t o0, int64_t o1) const {
    out.clear();
    for (const auto& p : d) {
      const int64_t i0 = source_index(o0 + before[0] - p.first, length[0], padding);
      const int64_t i1 = source_index(o1 + before[1] - p.second, length[1], padding);
      if (i0 != kOutside && i1 != kOutside) out.push_back(i0 * stride[0] + i1 * stride[1]);
    }
    std::sort(out.begin(), out.end());
    out.erase(std::unique(out.begin(), out.end()), out.end());
  }
  // Called once per output row before its columns: which rows the next one adds.
  void plan_next(bool has_next, int64_t o0, int64_t o1, int64_t n0, int64_t n1, bool first) {
    if (first) {
      rows_of(current, o0, o1);
    } else {
      current.swap(next);  // the previous call's next row is this row
    }
    fresh.clear();
    if (!has_next) return;
    rows_of(next, n0, n1);
    std::set_difference(next.begin(), next.end(), current.begin(), current.end(),
                        std::back_inserter(fresh));
  }
  // Columns [w0, w1) of the next output row's fresh rows (into L2: by the time that row
  // is read they would have left L1).
  template <typename T>
  void columns(const T* image, int64_t C, int64_t w0, int64_t w1) const {
    const int64_t esize = static_cast<int64_t>(sizeof(T));
    const int64_t b0 = w0 * C * esize, b1 = std::min(row_bytes, w1 * C * esize);
    for (const int64_t r : fresh) {
      const char* p = reinterpret_cast<const char*>(image + r);
      for (int64_t b = b0; b < b1; b += 64) __builtin_prefetch(p + b, 0, 2);
    }
  }
};

// The index vectors of every (block, corner) for one output row: `rows` (the lane's source
// row), `idx` (plus the interior column offset, read at image + w * C), `mask`; and, for the
// columns outside the common interior, a cursor per corner over its edge columns.
template <typename opmath_t>
struct RowIndex {
  std::vector<int32_t> rows, idx;  // [q * L + lane], q = block * corners + corner
  std::vector<uint64_t> mask;      // [q]
  std::vector<opmath_t> weight;    // [q * L + lane]
  std::vector<size_t> cursor;      // [q]
  explicit RowIndex(const GatherPlan<opmath_t>& p) {
    const int64_t q = p.blocks * p.corners;
    rows.resize(q * p.lanes);
    idx.resize(q * p.lanes);
    mask.resize(q);
    cursor.resize(q);
    weight.resize(q * p.lanes);
    for (int64_t k = 0; k < q; ++k)
      std::copy(p.corner[k].weight.begin(), p.corner[k].weight.end(),
                weight.begin() + k * p.lanes);
  }
  template <typename G>
  void fill(const GatherPlan<opmath_t>& p, int64_t o0, int64_t o1) {
    const int L = p.lanes;
    for (int64_t q = 0; q < p.blocks * p.corners; ++q) {
      const GatherCorner<opmath_t>& k = p.corner[q];
      const typename G::I r = G::add(G::index(k.row0.data() + o0 * L), G::index(k.row1.data() + o1 * L));
      G::store_index(rows.data() + q * L, r);
      G::store_index(idx.data() + q * L, G::add(r, G::index(k.col.data())));
      mask[q] = k.mask0[o0] & k.mask1[o1];
      cursor[q] = 0;
    }
  }
  // Column w of corner q (columns visited in ascending order): the mask and index vector,
  // and whether the index is relative to image + w * C (interior) or to image (edge).
  template <typename G>
  bool at_column(const GatherPlan<opmath_t>& p, int64_t q, int64_t w, uint64_t& m,
                 typename G::I& i) {
    const GatherCorner<opmath_t>& k = p.corner[q];
    const int L = p.lanes;
    if (w >= k.cols.lo && w < k.cols.hi) {
      m = mask[q];
      i = G::index(idx.data() + q * L);
      return true;
    }
    size_t& e = cursor[q];
    while (k.edge_col[e] < w) ++e;
    m = mask[q] & k.edge_mask[e];
    i = G::add(G::index(rows.data() + q * L), G::index(k.edge_idx.data() + e * L));
    return false;
  }
  // The read of corner q at column w (ascending, as at_column) from image (C channels).
  template <typename G, typename scalar_t>
  typename Math<scalar_t>::V read(const GatherPlan<opmath_t>& p, int64_t q, int64_t w,
                                  const scalar_t* image, int64_t C) {
    uint64_t m;
    typename G::I i;
    const bool inside = at_column<G>(p, q, w, m, i);
    return G::floats(m, i, inside ? image + w * C : image);
  }
  // The reads that the pairs loops (corners 2 o and 2 o + 1 of a block, a2 = 0 and 1) carry
  // into their first column w: corner 2 o + first of every block and pair, into
  // carry[(block * corners / 2 + o) * L + lane].
  template <typename G, typename scalar_t>
  void carry_in(const GatherPlan<opmath_t>& p, int first, int64_t w, const scalar_t* image,
                int64_t C, scalar_t* carry) {
    const int pairs = p.corners / 2;
    for (int64_t b = 0; b < p.blocks; ++b)
      for (int o = 0; o < pairs; ++o)
        Math<scalar_t>::spill(carry + (b * pairs + o) * p.lanes,
                              read<G>(p, b * p.corners + 2 * o + first, w, image, C));
  }
};

// Walks the output rows of a channels-last forward in parallel: per row, the index vectors
// of every (block, corner) and the prefetch plan of the next row, then
// row(image, y, ri, prefetch) writes it. make_row() is called once per task (per-task
// scratch lives in the closure it returns).
template <typename T, typename opmath_t, typename MakeRow>
void for_each_gather_row(const T* in, T* out, const Geometry& g, const Strides& is,
                         const Strides& os, const GatherPlan<opmath_t>& plan,
                         MakeRow make_row) {
  using G = Gather<sizeof(T)>;
  const int64_t C = g.channels, O0 = g.out_length[0], O1 = g.out_length[1];
  const int64_t rows_total = g.batch * O0 * O1;
  const int64_t grain =
      std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, g.out_length[2] * C));
  at::parallel_for(0, rows_total, grain, [&](int64_t begin, int64_t end) {
    RowIndex<opmath_t> ri(plan);
    RowPrefetch prefetch;
    prefetch.init(plan, g.before, g.length, g.padding, is, g.length[2] * C, sizeof(T));
    auto row = make_row();
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / (O0 * O1), o0 = (r / O1) % O0, o1 = r % O1;
      const bool same_image = r + 1 < end && (r + 1) / (O0 * O1) == n;
      prefetch.plan_next(same_image, o0, o1, ((r + 1) / O1) % O0, (r + 1) % O1,
                         r == begin || r % (O0 * O1) == 0);
      ri.template fill<G>(plan, o0, o1);
      row(in + n * is.batch, out + n * os.batch + o0 * os.slot[0] + o1 * os.slot[1], ri,
          prefetch);
    }
  });
}

// SSL forward by gathers (4- and 8-byte elements), columns outermost (the layout's
// order), every block of a column inside.
template <typename T>
void ssl_forward_gather(const T* in, T* out, const Geometry& g, const Strides& is,
                        const Strides& os, const std::vector<ChannelShift<double>>& shifts,
                        T fill) {
  constexpr int E = sizeof(T);
  using G = Gather<E>;
  using B = Bits<E>;
  constexpr int L = G::kLanes;
  const int64_t C = g.channels, O2 = g.out_length[2];
  const GatherPlan<float> plan = gather_plan<float>(
      g, is, L, 1, g.out_length, g.length, g.before, g.padding,
      [&](int64_t c, int) { return corner_offset(g, shifts[c], 0); },
      [](int64_t, int) { return 1.0f; });
  uint64_t fill_bits = 0;
  std::memcpy(&fill_bits, &fill, E);
  const int64_t nb = plan.blocks;
  const uint64_t* valid = plan.valid.data();
  for_each_gather_row(in, out, g, is, os, plan, [&] {
    return [&, fillv = B::set1(fill_bits)](const T* image, T* y, RowIndex<float>& ri,
                                            RowPrefetch& prefetch) {
      const int32_t* idx = ri.idx.data();
      const uint64_t* mask = ri.mask.data();
      const int64_t lo = plan.cols.lo, hi = plan.cols.hi;
      if (lo > 0) prefetch.columns(image, C, 0, lo);
      for (int64_t w = lo; w < hi; ++w) {
        prefetch.columns(image, C, w, w + 1);
        const T* base = image + w * C;
        T* yw = y + w * C;
        for (int64_t b = 0; b < nb; ++b)
          B::store(yw + b * L, valid[b], G::bits(fillv, mask[b], G::index(idx + b * L), base));
      }
      prefetch.columns(image, C, hi, O2);
      for (int64_t w = 0; w < O2; ++w) {
        if (w >= lo && w < hi) continue;
        for (int64_t b = 0; b < nb; ++b) {
          uint64_t m;
          typename G::I i;
          const bool inside = ri.template at_column<G>(plan, b, w, m, i);
          B::store(y + w * C + b * L, valid[b],
                   G::bits(fillv, m, i, inside ? image + w * C : image));
        }
      }
    };
  });
}

// Active forward by gathers (float, double): out = sum over corners of weight x read.
template <int R, typename scalar_t>
void active_forward_gather_corners(const scalar_t* in, scalar_t* out, const Geometry& g,
                                   const Strides& is, const Strides& os,
                                   const GatherPlan<scalar_t>& plan) {
  using G = Gather<sizeof(scalar_t)>;
  using M = Math<scalar_t>;
  constexpr int L = G::kLanes;
  const int64_t C = g.channels, O2 = g.out_length[2];
  const int64_t nb = plan.blocks;
  const uint64_t* valid = plan.valid.data();
  for_each_gather_row(in, out, g, is, os, plan, [&] {
    return [&, carry_buffer = std::vector<scalar_t>(nb * (R / 2) * L)](
               const scalar_t* image, scalar_t* y, RowIndex<scalar_t>& ri,
               RowPrefetch& prefetch) mutable {
      scalar_t* carry = carry_buffer.data();
      const scalar_t* weight = ri.weight.data();
      const int32_t* idx = ri.idx.data();
      const uint64_t* mask = ri.mask.data();
      const int64_t lo = plan.cols.lo, hi = plan.cols.hi;
      if (lo > 0) prefetch.columns(image, C, 0, lo);
      // Corners come in pairs (a2 = 0, 1) that read adjacent columns: the a2 = 1 read at
      // column w is the a2 = 0 read at w - 1, carried over, so each column costs R / 2
      // gathers per block.
      if (lo < hi) ri.template carry_in<G>(plan, 1, lo, image, C, carry);
      for (int64_t w = lo; w < hi; ++w) {
        prefetch.columns(image, C, w, w + 1);
        const scalar_t* base = image + w * C;
        scalar_t* yw = y + w * C;
        for (int64_t b = 0; b < nb; ++b) {
          typename M::V acc = M::zero();
          for (int o = 0; o < R / 2; ++o) {
            const int64_t q0 = b * R + 2 * o;
            scalar_t* cv = carry + (b * (R / 2) + o) * L;
            const typename M::V cur = G::floats(mask[q0], G::index(idx + q0 * L), base);
            acc = M::fma(M::load(weight + q0 * L), cur, acc);
            acc = M::fma(M::load(weight + (q0 + 1) * L), M::load(cv), acc);
            M::spill(cv, cur);
          }
          M::store(yw + b * L, valid[b], acc);
        }
      }
      prefetch.columns(image, C, hi, O2);
      for (int64_t w = 0; w < O2; ++w) {
        if (w >= lo && w < hi) continue;
        for (int64_t b = 0; b < nb; ++b) {
          typename M::V acc = M::zero();
          for (int a = 0; a < R; ++a)
            acc = M::fma(M::load(weight + (b * R + a) * L),
                         ri.template read<G>(plan, b * R + a, w, image, C), acc);
          M::store(y + w * C + b * L, valid[b], acc);
        }
      }
    };
  });
}

template <typename scalar_t>
void active_forward_gather(const scalar_t* in, scalar_t* out, const Geometry& g,
                           const Strides& is, const Strides& os,
                           const std::vector<ChannelShift<scalar_t>>& shifts) {
  constexpr int L = Gather<sizeof(scalar_t)>::kLanes;
  const int corners = (g.real[0] ? 2 : 1) * (g.real[1] ? 2 : 1) * 2;
  const GatherPlan<scalar_t> plan = gather_plan<scalar_t>(
      g, is, L, corners, g.out_length, g.length, g.before, g.padding,
      [&](int64_t c, int a) { return corner_offset(g, shifts[c], a); },
      [&](int64_t c, int a) { return corner_weight(g, shifts[c], a); });
  switch (corners) {
    case 2: active_forward_gather_corners<2>(in, out, g, is, os, plan); break;
    case 4: active_forward_gather_corners<4>(in, out, g, is, os, plan); break;
    default: active_forward_gather_corners<8>(in, out, g, is, os, plan); break;
  }
}

// ---------------------------------------------------------------------------------------
// Backward (float, double) by gathers.
//
// grad_input: the adjoint gather: input i gets weight_a * grad_output[i - before + d_a] for
// every read corner a (d_a = shift + a) whose output exists; the reads that went through
// padding (non-zeros paddings) are then folded back, a scalar pass over the borders.
// grad_weight: per channel and corner, D_a = <grad_output, V(o + before - f - a)> at the
// unrounded weight's floor f (SPEC §4), in per-lane accumulators, summed per chunk of rows
// (fixed, so the result does not depend on the thread count) and combined afterwards.

// Rows of grad_weight partials: per image, chunks of this many output rows.
constexpr int64_t kChunkRows = 8;

// A task's per-lane corner accumulators acc[(block * R + a) * L + lane] as its row of
// grad_weight partials: part[c * R + a], c < C.
template <int L, int R, typename scalar_t>
void store_partials(const scalar_t* acc, int64_t C, double* part) {
  for (int64_t c = 0; c < C; ++c)
    for (int a = 0; a < R; ++a)
      part[c * R + a] = static_cast<double>(acc[((c / L) * R + a) * L + c % L]);
}

template <int R, int RI, typename scalar_t>
void backward_gather_corners(const scalar_t* grad_out, const scalar_t* in, scalar_t* grad_in,
                             double* partials, const Geometry& g, const Strides& gos,
                             const Strides& is, const Strides& gis,
                             const GatherPlan<scalar_t>& gip, const GatherPlan<scalar_t>& gwp,
                             int64_t chunks) {
  using G = Gather<sizeof(scalar_t)>;
  using M = Math<scalar_t>;
  constexpr int L = G::kLanes;
  const int64_t C = g.channels;
  const int64_t L0 = g.length[0], L1 = g.length[1], L2 = g.length[2];
  const int64_t O0 = g.out_length[0], O1 = g.out_length[1], O2 = g.out_length[2];
  const int64_t in_rows = L0 * L1, out_rows = O0 * O1, rows = std::max(in_rows, out_rows);
  const int64_t nb = gwp.blocks;
  const int64_t neg_before[kSlots] = {-g.before[0], -g.before[1], -g.before[2]};
  at::parallel_for(0, g.batch * chunks, 1, [&](int64_t begin, int64_t end) {
    RowIndex<scalar_t> gi_idx(gip), gw_idx(gwp);
    std::vector<scalar_t> carry_buffer(nb * std::max(1, R / 2) * L), acc_buffer(nb * R * L);
    scalar_t* carry = carry_buffer.data();
    scalar_t* acc = acc_buffer.data();
    RowPrefetch g_prefetch, x_prefetch;
    g_prefetch.init(gip, neg_before, g.out_length, kZeros, gos, O2 * C, sizeof(scalar_t));
    x_prefetch.init(gwp, g.before, g.length, g.padding, is, L2 * C, sizeof(scalar_t));
    const uint64_t* valid = gwp.valid.data();
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / chunks, chunk = task % chunks;
      const int64_t t0 = chunk * kChunkRows, t1 = std::min(rows, t0 + kChunkRows);
      const scalar_t* go = grad_out + n * gos.batch;
      const scalar_t* x = in + n * is.batch;
      scalar_t* gi = grad_in + n * gis.batch;
      std::fill(acc_buffer.begin(), acc_buffer.end(), scalar_t(0));
      for (int64_t t = t0; t < t1; ++t) {
        // grad_input row t: gathers from grad_output.
        if (t < in_rows) {
          const int64_t i0 = t / L1, i1 = t % L1;
          g_prefetch.plan_next(t + 1 < std::min(t1, in_rows), i0, i1, (t + 1) / L1, (t + 1) % L1,
                               t == t0);
          gi_idx.template fill<G>(gip, i0, i1);
          const int32_t* idx = gi_idx.idx.data();
          const uint64_t* mask = gi_idx.mask.data();
          const scalar_t* wt = gi_idx.weight.data();
          scalar_t* row = gi + i0 * gis.slot[0] + i1 * gis.slot[1];
          const int64_t lo = gip.cols.lo, hi = gip.cols.hi;
          if (lo > 0) g_prefetch.columns(go, C, 0, lo);
          if constexpr (RI == 1) {
            for (int64_t w = lo; w < hi; ++w) {
              g_prefetch.columns(go, C, w, w + 1);
              for (int64_t b = 0; b < nb; ++b)
                M::store(row + w * C + b * L, valid[b],
                         M::mul(M::load(wt + b * L),
                                G::floats(mask[b], G::index(idx + b * L), go + w * C)));
            }
          } else {
            // Pairs (a2 = 0, 1): a2 = 1 reads one column later, so its read at w - 1 is the
            // a2 = 0 read at w.
            if (lo < hi) gi_idx.template carry_in<G>(gip, 0, lo, go, C, carry);
            for (int64_t w = lo; w < hi; ++w) {
              g_prefetch.columns(go, C, w, w + 1);
              const scalar_t* base = go + w * C;
              for (int64_t b = 0; b < nb; ++b) {
                typename M::V sum = M::zero();
                for (int o = 0; o < RI / 2; ++o) {
                  const int64_t q1 = b * RI + 2 * o + 1;
                  scalar_t* cv = carry + (b * (RI / 2) + o) * L;
                  const typename M::V cur = G::floats(mask[q1], G::index(idx + q1 * L), base);
                  sum = M::fma(M::load(wt + (q1 - 1) * L), M::load(cv), sum);
                  sum = M::fma(M::load(wt + q1 * L), cur, sum);
                  M::spill(cv, cur);
                }
                M::store(row + w * C + b * L, valid[b], sum);
              }
            }
          }
          g_prefetch.columns(go, C, hi, O2);
          for (int64_t w = 0; w < L2; ++w) {
            if (w >= lo && w < hi) continue;
            for (int64_t b = 0; b < nb; ++b) {
              typename M::V sum = M::zero();
              for (int a = 0; a < RI; ++a) {
                const int64_t q = b * RI + a;
                sum = M::fma(M::load(wt + q * L), gi_idx.template read<G>(gip, q, w, go, C), sum);
              }
              M::store(row + w * C + b * L, valid[b], sum);
            }
          }
        }
        // grad_weight, output row t: grad_output times the gathered reads of every corner.
        if (t < out_rows) {
          const int64_t o0 = t / O1, o1 = t % O1;
          x_prefetch.plan_next(t + 1 < std::min(t1, out_rows), o0, o1, (t + 1) / O1,
                               (t + 1) % O1, t == t0);
          gw_idx.template fill<G>(gwp, o0, o1);
          const int32_t* idx = gw_idx.idx.data();
          const uint64_t* mask = gw_idx.mask.data();
          const scalar_t* grow = go + o0 * gos.slot[0] + o1 * gos.slot[1];
          const int64_t lo = gwp.cols.lo, hi = gwp.cols.hi;
          if (lo > 0) x_prefetch.columns(x, C, 0, lo);
          if (lo < hi) gw_idx.template carry_in<G>(gwp, 1, lo, x, C, carry);
          for (int64_t w = lo; w < hi; ++w) {
            x_prefetch.columns(x, C, w, w + 1);
            const scalar_t* base = x + w * C;
            for (int64_t b = 0; b < nb; ++b) {
              const typename M::V gv = M::load(valid[b], grow + w * C + b * L);
              for (int o = 0; o < R / 2; ++o) {
                const int64_t q0 = b * R + 2 * o;
                scalar_t* cv = carry + (b * (R / 2) + o) * L;
                const typename M::V cur = G::floats(mask[q0], G::index(idx + q0 * L), base);
                M::spill(acc + q0 * L, M::fma(gv, cur, M::load(acc + q0 * L)));
                M::spill(acc + (q0 + 1) * L, M::fma(gv, M::load(cv), M::load(acc + (q0 + 1) * L)));
                M::spill(cv, cur);
              }
            }
          }
          x_prefetch.columns(x, C, hi, L2);
          for (int64_t w = 0; w < O2; ++w) {
            if (w >= lo && w < hi) continue;
            for (int64_t b = 0; b < nb; ++b) {
              const typename M::V gv = M::load(valid[b], grow + w * C + b * L);
              for (int a = 0; a < R; ++a) {
                const int64_t q = b * R + a;
                M::spill(acc + q * L, M::fma(gv, gw_idx.template read<G>(gwp, q, w, x, C),
                                             M::load(acc + q * L)));
              }
            }
          }
        }
      }
      store_partials<L, R>(acc, C, partials + task * C * R);
    }
  });
}

// Zeros padding: grad_input and grad_weight in one pass over the input positions i, with
// one set of gathers. Output o = i - before + f + a reads input i through corner a (f the
// floor of the weight), so the corner-a gather of grad_output at i serves both: grad_input
// takes it with the corner's weight (SSL: the one corner at the rounded shift), and D_a
// (SPEC §4) adds input[i] x it. Every read of zeros padding is 0, so summing over the input
// positions misses no term of D_a. Half the gathers of backward_gather_corners (Active
// Shift: R / 2 per vector instead of R; SSL: R / 2 instead of R / 2 + 1).
// plan: the grad_input gather plan over all R corners; select (SSL): per (block, corner),
// the lanes whose rounded shift is that corner.
template <int R, bool kActive, typename scalar_t>
void backward_gather_fused(const scalar_t* grad_out, const scalar_t* in, scalar_t* grad_in,
                           double* partials, const Geometry& g, const Strides& gos,
                           const Strides& is, const Strides& gis, const GatherPlan<scalar_t>& plan,
                           const std::vector<uint64_t>& select, int64_t chunks) {
  using G = Gather<sizeof(scalar_t)>;
  using M = Math<scalar_t>;
  constexpr int L = G::kLanes;
  const int64_t C = g.channels;
  const int64_t L1 = g.length[1], L2 = g.length[2];
  const int64_t rows = g.length[0] * L1;
  const int64_t nb = plan.blocks;
  const int64_t neg_before[kSlots] = {-g.before[0], -g.before[1], -g.before[2]};
  at::parallel_for(0, g.batch * chunks, 1, [&](int64_t begin, int64_t end) {
    RowIndex<scalar_t> index(plan);
    std::vector<scalar_t> carry_buffer(nb * (R / 2) * L), acc_buffer(nb * R * L);
    scalar_t* carry = carry_buffer.data();
    scalar_t* acc = acc_buffer.data();
    RowPrefetch prefetch;
    prefetch.init(plan, neg_before, g.out_length, kZeros, gos, g.out_length[2] * C,
                  sizeof(scalar_t));
    const uint64_t* valid = plan.valid.data();
    // Corner q's read v of block b at column w: grad_input's term and D_q's.
    auto take = [&](int64_t q, const typename M::V& xv, const typename M::V& v,
                    typename M::V& sum, const scalar_t* weight) {
      M::spill(acc + q * L, M::fma(xv, v, M::load(acc + q * L)));
      if constexpr (kActive) sum = M::fma(M::load(weight + q * L), v, sum);
      else sum = M::select(select[q], v, sum);
    };
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / chunks, chunk = task % chunks;
      const int64_t t0 = chunk * kChunkRows, t1 = std::min(rows, t0 + kChunkRows);
      const scalar_t* go = grad_out + n * gos.batch;
      std::fill(acc_buffer.begin(), acc_buffer.end(), scalar_t(0));
      const int64_t lo = plan.cols.lo, hi = plan.cols.hi;
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t i0 = t / L1, i1 = t % L1;
        prefetch.plan_next(t + 1 < t1, i0, i1, (t + 1) / L1, (t + 1) % L1, t == t0);
        index.template fill<G>(plan, i0, i1);
        const int32_t* idx = index.idx.data();
        const uint64_t* mask = index.mask.data();
        const scalar_t* weight = index.weight.data();
        const scalar_t* x = in + n * is.batch + i0 * is.slot[0] + i1 * is.slot[1];
        scalar_t* gi = grad_in + n * gis.batch + i0 * gis.slot[0] + i1 * gis.slot[1];
        // The columns outside the interior (ascending, as at_column wants them).
        auto edges = [&](int64_t e0, int64_t e1) {
          for (int64_t w = e0; w < e1; ++w)
            for (int64_t b = 0; b < nb; ++b) {
              const typename M::V xv = M::load(valid[b], x + w * C + b * L);
              typename M::V sum = M::zero();
              for (int a = 0; a < R; ++a)
                take(b * R + a, xv, index.template read<G>(plan, b * R + a, w, go, C), sum,
                     weight);
              M::store(gi + w * C + b * L, valid[b], sum);
            }
        };
        prefetch.columns(go, C, 0, lo);
        edges(0, lo);
        // Pairs (a2 = 0, 1): a2 = 1 reads one column later, so its read at w - 1 is the
        // a2 = 0 read at w.
        if (lo < hi) index.template carry_in<G>(plan, 0, lo, go, C, carry);
        for (int64_t w = lo; w < hi; ++w) {
          prefetch.columns(go, C, w, w + 1);
          const scalar_t* base = go + w * C;
          for (int64_t b = 0; b < nb; ++b) {
            const typename M::V xv = M::load(valid[b], x + w * C + b * L);
            typename M::V sum = M::zero();
            for (int o = 0; o < R / 2; ++o) {
              const int64_t q1 = b * R + 2 * o + 1;
              scalar_t* cv = carry + (b * (R / 2) + o) * L;
              const typename M::V cur = G::floats(mask[q1], G::index(idx + q1 * L), base);
              take(q1 - 1, xv, M::load(cv), sum, weight);
              take(q1, xv, cur, sum, weight);
              M::spill(cv, cur);
            }
            M::store(gi + w * C + b * L, valid[b], sum);
          }
        }
        prefetch.columns(go, C, hi, g.out_length[2]);
        edges(hi, L2);
      }
      store_partials<L, R>(acc, C, partials + task * C * R);
    }
  });
}

// The reads that went through padding (non-zeros paddings), folded into grad_input.
template <typename scalar_t>
void fold_padded_reads(const scalar_t* grad_out, scalar_t* grad_in, const Geometry& g,
                       const Strides& gos, const Strides& gis,
                       const std::vector<ChannelShift<scalar_t>>& read_shifts, int corners) {
  if (g.padding == kZeros) return;
  const int64_t C = g.channels;
  const int64_t L[kSlots] = {g.length[0], g.length[1], g.length[2]};
  const int64_t O[kSlots] = {g.out_length[0], g.out_length[1], g.out_length[2]};
  const int64_t* b = g.before;
  at::parallel_for(0, g.batch * C, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / C, c = task % C;
      const scalar_t* go = grad_out + n * gos.batch + c;
      scalar_t* gi = grad_in + n * gis.batch + c;
      for (int a = 0; a < corners; ++a) {
        int64_t bits[kSlots];
        corner_bits(g, a, bits);
        const scalar_t w = corners == 1 ? scalar_t(1) : corner_weight(g, read_shifts[c], a);
        int64_t d[kSlots];
        for (int s = 0; s < kSlots; ++s) d[s] = read_shifts[c].shift[s] + bits[s];
        const Interior cols = interior(O[2], L[2], b[2], d[2], 1);
        for (int64_t o0 = 0; o0 < O[0]; ++o0) {
          const int64_t k0 = o0 + b[0] - d[0];
          const bool in0 = k0 >= 0 && k0 < L[0];
          const int64_t p0 = source_index(k0, L[0], g.padding);
          for (int64_t o1 = 0; o1 < O[1]; ++o1) {
            const int64_t k1 = o1 + b[1] - d[1];
            const bool in1 = k1 >= 0 && k1 < L[1];
            const int64_t p1 = source_index(k1, L[1], g.padding);
            const scalar_t* gr = go + o0 * gos.slot[0] + o1 * gos.slot[1];
            scalar_t* ir = gi + p0 * gis.slot[0] + p1 * gis.slot[1];
            auto fold = [&](int64_t o2) {
              const int64_t p2 = source_index(o2 + b[2] - d[2], L[2], g.padding);
              ir[p2 * gis.slot[2]] += w * gr[o2 * gos.slot[2]];
            };
            if (in0 && in1) {
              for (int64_t o2 = 0; o2 < cols.lo; ++o2) fold(o2);
              for (int64_t o2 = std::max(cols.hi, cols.lo); o2 < O[2]; ++o2) fold(o2);
            } else {
              for (int64_t o2 = 0; o2 < O[2]; ++o2) fold(o2);
            }
          }
        }
      }
    }
  });
}

template <typename scalar_t>
void backward_gather(const scalar_t* grad_out, const scalar_t* in, scalar_t* grad_in,
                     double* partials, const Geometry& g, const Strides& gos, const Strides& is,
                     const Strides& gis, bool active,
                     const std::vector<ChannelShift<scalar_t>>& read_shifts,
                     const std::vector<ChannelShift<scalar_t>>& interp_shifts, int64_t chunks) {
  constexpr int L = Gather<sizeof(scalar_t)>::kLanes;
  const int R = (g.real[0] ? 2 : 1) * (g.real[1] ? 2 : 1) * 2;
  const int RI = active ? R : 1;
  const int64_t neg_before[kSlots] = {-g.before[0], -g.before[1], -g.before[2]};
  if (g.padding == kZeros) {
    // One plan over the R corners at the floor of the weight (read_shifts == interp_shifts
    // for Active Shift); SSL selects, per lane, the corner of its rounded shift.
    const GatherPlan<scalar_t> plan = gather_plan<scalar_t>(
        g, gos, L, R, g.length, g.out_length, neg_before, kZeros,
        [&](int64_t c, int a) {
          const Offset d = corner_offset(g, interp_shifts[c], a);
          return Offset{-d[0], -d[1], -d[2]};
        },
        [&](int64_t c, int a) { return corner_weight(g, interp_shifts[c], a); });
    std::vector<uint64_t> select(plan.blocks * R, 0);
    if (!active)
      for (int64_t c = 0; c < g.channels; ++c)
        for (int a = 0; a < R; ++a)
          if (corner_offset(g, interp_shifts[c], a) == Offset{read_shifts[c].shift[0],
                                                              read_shifts[c].shift[1],
                                                              read_shifts[c].shift[2]})
            select[(c / L) * R + a] |= uint64_t(1) << (c % L);
#define TS2_FUSED(R_)                                                                         \
  (active ? backward_gather_fused<R_, true>(grad_out, in, grad_in, partials, g, gos, is, gis,  \
                                            plan, select, chunks)                             \
          : backward_gather_fused<R_, false>(grad_out, in, grad_in, partials, g, gos, is, gis, \
                                             plan, select, chunks))
    switch (R) {
      case 2: TS2_FUSED(2); break;
      case 4: TS2_FUSED(4); break;
      default: TS2_FUSED(8); break;
    }
#undef TS2_FUSED
    return;
  }
  // grad_input reads grad_output: lengths swapped, offsets and before negated; reads
  // outside grad_output contribute nothing whatever the padding (folds add the rest).
  const GatherPlan<scalar_t> gip = gather_plan<scalar_t>(
      g, gos, L, RI, g.length, g.out_length, neg_before, kZeros,
      [&](int64_t c, int a) {
        int64_t bits[kSlots];
        corner_bits(g, a, bits);
        if (!active) bits[0] = bits[1] = bits[2] = 0;
        return Offset{-(read_shifts[c].shift[0] + bits[0]), -(read_shifts[c].shift[1] + bits[1]),
                      -(read_shifts[c].shift[2] + bits[2])};
      },
      [&](int64_t c, int a) {
        return active ? corner_weight(g, read_shifts[c], a) : scalar_t(1);
      });
  const GatherPlan<scalar_t> gwp = gather_plan<scalar_t>(
      g, is, L, R, g.out_length, g.length, g.before, g.padding,
      [&](int64_t c, int a) { return corner_offset(g, interp_shifts[c], a); },
      [](int64_t, int) { return scalar_t(1); });
#define TS2_BACKWARD(R_, RI_)                                                                \
  backward_gather_corners<R_, RI_>(grad_out, in, grad_in, partials, g, gos, is, gis, gip, gwp, \
                                   chunks)
  switch (R * 16 + RI) {
    case 2 * 16 + 1: TS2_BACKWARD(2, 1); break;
    case 2 * 16 + 2: TS2_BACKWARD(2, 2); break;
    case 4 * 16 + 1: TS2_BACKWARD(4, 1); break;
    case 4 * 16 + 4: TS2_BACKWARD(4, 4); break;
    case 8 * 16 + 1: TS2_BACKWARD(8, 1); break;
    default: TS2_BACKWARD(8, 8); break;
  }
#undef TS2_BACKWARD
  fold_padded_reads(grad_out, grad_in, g, gos, gis, read_shifts, RI);
}

// ---------------------------------------------------------------------------------------
// Channels-last through L2-resident planes. A task (n, block of one vector of channels)
// transposes its input blocks into dense planes in a per-thread buffer, runs the planar
// kernel on them while they sit in L2, and transposes the result back: each tensor is read
// or written once in memory, with whole cache lines, and the per-element work is the planar
// kernel's (no gathers, whose lanes miss L1 one by one).

// Whether a channels-last tensor's samples are dense: slot strides (L1 L2 C, L2 C, C) on
// the slots that exist, channel stride 1.
inline bool dense_channels_last(const Strides& s, const int64_t* length, int64_t channels) {
  if (s.channel != 1 && channels > 1) return false;
  int64_t expected = channels;
  for (int slot = kSlots - 1; slot >= 0; --slot) {
    if (length[slot] > 1 && s.slot[slot] != expected) return false;
    expected *= length[slot];
  }
  return true;
}

// Channels per block: one 64-byte vector of elements.
template <typename T>
constexpr int64_t kTransposeLanes = kVectorBytes / sizeof(T);

#ifdef TS2_AVX512
// r[i] (16 lanes) becomes column i of the 16 x 16 matrix whose rows were r: 32-bit, then
// 64-bit interleaves transpose the 4 x 4 blocks inside each 128-bit lane, two 128-bit
// shuffles transpose the 4 x 4 matrix of lanes.
inline void transpose16(__m512 r[16]) {
  __m512 t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  __m512d u[16];
  for (int j = 0; j < 4; ++j) {
    const __m512d a = _mm512_castps_pd(t[4 * j]), b = _mm512_castps_pd(t[4 * j + 1]),
                  c = _mm512_castps_pd(t[4 * j + 2]), d = _mm512_castps_pd(t[4 * j + 3]);
    u[4 * j] = _mm512_unpacklo_pd(a, c);
    u[4 * j + 1] = _mm512_unpackhi_pd(a, c);
    u[4 * j + 2] = _mm512_unpacklo_pd(b, d);
    u[4 * j + 3] = _mm512_unpackhi_pd(b, d);
  }
  // u[4 j + m], lane k: column 4 k + m of rows 4 j .. 4 j + 3.
  for (int m = 0; m < 4; ++m) {
    const __m512 u0 = _mm512_castpd_ps(u[m]), u1 = _mm512_castpd_ps(u[4 + m]),
                 u2 = _mm512_castpd_ps(u[8 + m]), u3 = _mm512_castpd_ps(u[12 + m]);
    const __m512 s0 = _mm512_shuffle_f32x4(u0, u1, _MM_SHUFFLE(1, 0, 1, 0));
    const __m512 s1 = _mm512_shuffle_f32x4(u0, u1, _MM_SHUFFLE(3, 2, 3, 2));
    const __m512 s2 = _mm512_shuffle_f32x4(u2, u3, _MM_SHUFFLE(1, 0, 1, 0));
    const __m512 s3 = _mm512_shuffle_f32x4(u2, u3, _MM_SHUFFLE(3, 2, 3, 2));
    r[m] = _mm512_shuffle_f32x4(s0, s2, _MM_SHUFFLE(2, 0, 2, 0));
    r[4 + m] = _mm512_shuffle_f32x4(s0, s2, _MM_SHUFFLE(3, 1, 3, 1));
    r[8 + m] = _mm512_shuffle_f32x4(s1, s3, _MM_SHUFFLE(2, 0, 2, 0));
    r[12 + m] = _mm512_shuffle_f32x4(s1, s3, _MM_SHUFFLE(3, 1, 3, 1));
  }
}
#endif

#ifdef TS2_AVX2
// r[i] (8 lanes) becomes column i of the 8 x 8 matrix whose rows were r.
inline void transpose8(__m256 r[8]) {
  __m256 t[8], u[8];
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int j = 0; j < 2; ++j) {
    u[4 * j] = _mm256_shuffle_ps(t[4 * j], t[4 * j + 2], _MM_SHUFFLE(1, 0, 1, 0));
    u[4 * j + 1] = _mm256_shuffle_ps(t[4 * j], t[4 * j + 2], _MM_SHUFFLE(3, 2, 3, 2));
    u[4 * j + 2] = _mm256_shuffle_ps(t[4 * j + 1], t[4 * j + 3], _MM_SHUFFLE(1, 0, 1, 0));
    u[4 * j + 3] = _mm256_shuffle_ps(t[4 * j + 1], t[4 * j + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int m = 0; m < 4; ++m) {
    r[m] = _mm256_permute2f128_ps(u[m], u[4 + m], 0x20);
    r[4 + m] = _mm256_permute2f128_ps(u[m], u[4 + m], 0x31);
  }
}
#endif

// planes[c * plane + p] = rows[p * channels + c] for c < lanes, p < positions: a 16 x 16
// (AVX2: 8 x 8) transpose per block of lanes, the blocks of a position group one after the
// other, so that the rows are read a whole cache line after the other.
template <typename T>
void to_planes(const T* rows, int64_t channels, int64_t lanes, int64_t positions, T* planes,
               int64_t plane) {
  int64_t p0 = 0;
#ifdef TS2_AVX512
  if constexpr (std::is_same<T, float>::value) {
    __m512 r[16];
    for (; p0 + 16 <= positions; p0 += 16)
      for (int64_t c0 = 0; c0 < lanes; c0 += 16) {
        const __mmask16 m = static_cast<__mmask16>(lanes_below(static_cast<int>(lanes - c0)));
        for (int i = 0; i < 16; ++i)
          r[i] = _mm512_maskz_loadu_ps(m, rows + (p0 + i) * channels + c0);
        transpose16(r);
        for (int64_t c = c0; c < std::min<int64_t>(lanes, c0 + 16); ++c)
          _mm512_storeu_ps(planes + c * plane + p0, r[c - c0]);
      }
  }
#elif defined(TS2_AVX2)
  if constexpr (std::is_same<T, float>::value) {
    __m256 r[8];
    for (; p0 + 8 <= positions; p0 += 8)
      for (int64_t c0 = 0; c0 < lanes; c0 += 8) {
        const __m256i m = lane_mask32(lanes_below(static_cast<int>(lanes - c0)));
        for (int i = 0; i < 8; ++i) r[i] = _mm256_maskload_ps(rows + (p0 + i) * channels + c0, m);
        transpose8(r);
        for (int64_t c = c0; c < std::min<int64_t>(lanes, c0 + 8); ++c)
          _mm256_storeu_ps(planes + c * plane + p0, r[c - c0]);
      }
  }
#endif
  for (; p0 < positions; ++p0)
    for (int64_t c = 0; c < lanes; ++c) planes[c * plane + p0] = rows[p0 * channels + c];
}

// rows[p * channels + c] = planes[c * plane + p] for c < lanes, p < positions (to_planes'
// inverse, in the same order).
template <typename T>
void from_planes(const T* planes, int64_t plane, int64_t lanes, int64_t positions, T* rows,
                 int64_t channels) {
  int64_t p0 = 0;
#ifdef TS2_AVX512
  if constexpr (std::is_same<T, float>::value) {
    __m512 r[16];
    for (; p0 + 16 <= positions; p0 += 16)
      for (int64_t c0 = 0; c0 < lanes; c0 += 16) {
        const int64_t count = std::min<int64_t>(16, lanes - c0);
        const __mmask16 m = static_cast<__mmask16>(lanes_below(static_cast<int>(count)));
        for (int64_t c = 0; c < 16; ++c)
          r[c] = c < count ? _mm512_loadu_ps(planes + (c0 + c) * plane + p0) : _mm512_setzero_ps();
        transpose16(r);
        for (int i = 0; i < 16; ++i) _mm512_mask_storeu_ps(rows + (p0 + i) * channels + c0, m, r[i]);
      }
  }
#elif defined(TS2_AVX2)
  if constexpr (std::is_same<T, float>::value) {
    __m256 r[8];
    for (; p0 + 8 <= positions; p0 += 8)
      for (int64_t c0 = 0; c0 < lanes; c0 += 8) {
        const uint64_t bits = lanes_below(static_cast<int>(lanes - c0));
        const __m256i m = lane_mask32(bits);
        for (int64_t c = 0; c < 8; ++c)
          r[c] = c0 + c < lanes ? _mm256_loadu_ps(planes + (c0 + c) * plane + p0) : _mm256_setzero_ps();
        transpose8(r);
        for (int i = 0; i < 8; ++i) {
          float* dst = rows + (p0 + i) * channels + c0;
          if ((bits & 0xff) == 0xff) _mm256_storeu_ps(dst, r[i]);
          else _mm256_maskstore_ps(dst, m, r[i]);
        }
      }
  }
#endif
  for (; p0 < positions; ++p0)
    for (int64_t c = 0; c < lanes; ++c) rows[p0 * channels + c] = planes[c * plane + p0];
}

// The distance in elements between consecutive planes of `positions` elements in a plane
// buffer: an odd number of cache lines, so that a transpose's 16 plane rows fall in 16
// different L1 sets. Dense planes of a power-of-two size (3d: 16 x 32 x 32 floats = 64 KiB)
// put all 16 in one set, past its 12 ways.
template <typename T>
constexpr int64_t plane_pitch(int64_t positions) {
  const int64_t lines = (positions * static_cast<int64_t>(sizeof(T)) + 63) / 64;
  return (lines | 1) * 64 / static_cast<int64_t>(sizeof(T));
}

// Bytes of plane buffers per task: half of this CPU's L2, so that the planes stay there
// while the planar kernel works on them.
inline int64_t plane_budget_bytes() {
  static const int64_t budget = [] {
    const long l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
    return static_cast<int64_t>(l2 > 0 ? l2 / 2 : 256 << 10);
  }();
  return budget;
}

// Blocks of kTransposeLanes channels in a sample (the last one may be partial).
template <typename T>
int64_t channel_blocks(const Geometry& g) {
  return (g.channels + kTransposeLanes<T> - 1) / kTransposeLanes<T>;
}

// Blocks of kTransposeLanes channels per task of a plane kernel whose buffers hold
// `buffers` elements per channel: as many as plane_budget_bytes holds. Where not even one
// block's planes fit (3d: 3 MiB for a backward), they leave L2 whatever the group, and only
// the transposes' reads still gain from more blocks: then as many as kSpillFactor budgets
// hold, at least one.
constexpr int64_t kSpillFactor = 8;
template <typename T>
int64_t group_blocks(const Geometry& g, int64_t buffers) {
  const int64_t block_bytes = std::max<int64_t>(1, kTransposeLanes<T> * buffers * sizeof(T));
  int64_t fit = plane_budget_bytes() / block_bytes;
  if (fit == 0) fit = kSpillFactor * plane_budget_bytes() / block_bytes;
  return std::max<int64_t>(1, std::min(channel_blocks<T>(g), fit));
}

// Plane buffer elements per channel: a forward's input and output planes, a backward's
// input, grad_input and grad_output planes.
template <typename T>
int64_t plane_buffers(const Geometry& g, bool backward) {
  return plane_pitch<T>(g.in_plane()) * (backward ? 2 : 1) + plane_pitch<T>(g.out_plane());
}

// Tasks (n, group of group_blocks blocks of channels), each given a per-thread, 64-byte
// aligned buffer of `buffers` elements per channel of a group: fn(n, c0, lanes, group,
// buffer), lanes <= group channels from c0. The blocks of a group are transposed together,
// so that a sample's rows are read several whole cache lines after the other.
template <typename T, typename F>
void for_each_channel_block(const Geometry& g, int64_t buffers, F fn) {
  const int64_t per_group = group_blocks<T>(g, buffers);
  const int64_t groups = (channel_blocks<T>(g) + per_group - 1) / per_group;
  const int64_t group = per_group * kTransposeLanes<T>;
  at::parallel_for(0, g.batch * groups, 1, [&](int64_t begin, int64_t end) {
    std::unique_ptr<T[], void (*)(void*)> buffer(
        static_cast<T*>(std::aligned_alloc(64, (group * buffers * sizeof(T) + 63) / 64 * 64)),
        std::free);
    TORCH_CHECK(buffer != nullptr, "torchshift2: out of memory for channels-last plane buffers");
    for (int64_t t = begin; t < end; ++t) {
      const int64_t c0 = (t % groups) * group;
      fn(t / groups, c0, std::min(group, g.channels - c0), group, buffer.get());
    }
  });
}

// Whether a channels-last kernel of element type T goes through planes (dense samples): for
// three spatial dims, where a gather per interpolation corner (8 of them) costs more than
// the transposes (benchmarks/NOTES.md, v8); for two on CPUs with AVX2 but not AVX-512,
// whose gathers are slower (v10), and for float where a task's group of blocks reads at
// least four cache lines of a position, or all of them, while its planes stay in L2 (v11:
// 2d_28 Active Shift forward 3.6 -> 2.8x copy_, backward 5.5 / 8.4 -> 4.7 / 5.4x; with one
// block of 64 channels per task, as at 2d_56, the transposes' strided reads cost more than
// the gathers).
// grad_input: the strides of a backward's grad_input, null for a forward.
// kAvx2Only: CPUs with AVX2 but not AVX-512 (slower gathers, no 2-byte masked moves).
#if defined(TS2_AVX2)
constexpr bool kAvx2Only = true;
#else
constexpr bool kAvx2Only = false;
#endif
template <typename T>
inline bool through_planes(const Geometry& g, const Strides& input, const Strides& output,
                           const Strides* grad_input) {
  if (!dense_channels_last(input, g.length, g.channels) ||
      !dense_channels_last(output, g.out_length, g.channels) ||
      (grad_input != nullptr && !dense_channels_last(*grad_input, g.length, g.channels)))
    return false;
  if (g.real[0]) return true;
  if (!g.real[1]) return false;
  if (kAvx2Only) return true;
  if (sizeof(T) != sizeof(float)) return false;
  const int64_t group = group_blocks<T>(g, plane_buffers<T>(g, grad_input != nullptr));
  return group >= 4 || group == channel_blocks<T>(g);
}

// Channels-last backward through planes (dense channels-last samples, see
// dense_channels_last); partials: kSlots per (n, c) as backward_planes writes them.
template <typename scalar_t>
void backward_transposed(const scalar_t* grad_out, const scalar_t* in, scalar_t* grad_in,
                         double* partials, const Geometry& g, const Strides& gos,
                         const Strides& is, const Strides& gis, bool active,
                         const std::vector<ChannelShift<at::opmath_type<scalar_t>>>& read_shifts,
                         const std::vector<ChannelShift<at::opmath_type<scalar_t>>>& interp_shifts) {
  const PlaneBackward<scalar_t> kernel(g, active, read_shifts, interp_shifts);
  const int64_t C = g.channels, P = g.in_plane(), Q = g.out_plane();
  const int64_t PP = plane_pitch<scalar_t>(P), QP = plane_pitch<scalar_t>(Q);
  const Strides ps = plane_strides(g.length), qs = plane_strides(g.out_length);
  for_each_channel_block<scalar_t>(g, plane_buffers<scalar_t>(g, true), [&](int64_t n,
                                   int64_t c0, int64_t lanes, int64_t group, scalar_t* buffer) {
    thread_local typename PlaneBackward<scalar_t>::Scratch scratch;
    scalar_t* x = buffer;
    scalar_t* gi = buffer + group * PP;
    scalar_t* go = buffer + 2 * group * PP;
    to_planes(in + n * is.batch + c0, C, lanes, P, x, PP);
    to_planes(grad_out + n * gos.batch + c0, C, lanes, Q, go, QP);
    for (int64_t c = 0; c < lanes; ++c)
      kernel.plane(scratch, c0 + c, go + c * QP, x + c * PP, gi + c * PP, qs, ps, ps, nullptr,
                   nullptr, partials == nullptr ? nullptr : partials + (n * C + c0 + c) * kSlots);
    from_planes(gi, PP, lanes, P, grad_in + n * gis.batch + c0, C);
  });
}

// Channels-last Active Shift forward through planes (dense channels-last samples).
template <typename scalar_t>
void active_forward_transposed(const scalar_t* in, scalar_t* out, const Geometry& g,
                               const Strides& is, const Strides& os,
                               const std::vector<ChannelShift<scalar_t>>& shifts) {
  const ActiveForwardPlanes<scalar_t> kernel(g, shifts);
  const int64_t C = g.channels, P = g.in_plane();
  const int64_t PP = plane_pitch<scalar_t>(P);
  const Strides ps = plane_strides(g.length), qs = plane_strides(g.out_length);
  // The output is made one slab (o0) of the group's channels at a time, into a slab buffer
  // that stays in L1 / L2, and transposed back from there (in 2D, one slab is the plane). In
  // 3D, output planes as large as the input's (1 MiB per block at 16 x 32 x 32) would leave
  // L2 and be read back from beyond it (3d Active Shift forward 1.04-1.10 -> 0.98-1.03 ms at
  // the kernel level; benchmarks/NOTES.md, v12).
  const int64_t slab = g.out_length[1] * g.out_length[2];
  const int64_t SP = plane_pitch<scalar_t>(slab);
  for_each_channel_block<scalar_t>(g, PP + SP, [&](int64_t n, int64_t c0, int64_t lanes,
                                                  int64_t group, scalar_t* buffer) {
    scalar_t* x = buffer;
    scalar_t* y = buffer + group * PP;
    to_planes(in + n * is.batch + c0, C, lanes, P, x, PP);
    for (int64_t o0 = 0; o0 < g.out_length[0]; ++o0) {
      for (int64_t c = 0; c < lanes; ++c)
        kernel.plane(c0 + c, x + c * PP, ps, y + c * SP, qs, nullptr, o0, o0 + 1);
      from_planes(y, SP, lanes, slab, out + n * os.batch + o0 * slab * C + c0, C);
    }
  });
}

// Channels-last backward: the gather kernels (float, double; `gathers` says whether 32-bit
// indices reach every element, and then `chunks` rows of grad_weight partials per sample),
// else backward_cl (one row of partials per sample).
template <typename scalar_t>
void backward_channels_last(
    const scalar_t* grad_out, const scalar_t* in, scalar_t* grad_in, double* partials,
    const Geometry& g, const Strides& gos, const Strides& is, const Strides& gis, bool active,
    const std::vector<ChannelShift<at::opmath_type<scalar_t>>>& read_shifts,
    const std::vector<ChannelShift<at::opmath_type<scalar_t>>>& interp_shifts, bool gathers,
    int64_t chunks) {
  if constexpr (std::is_same<scalar_t, at::opmath_type<scalar_t>>::value) {
    if (gathers) {
      backward_gather(grad_out, in, grad_in, partials, g, gos, is, gis, active, read_shifts,
                      interp_shifts, chunks);
      return;
    }
  }
  auto run = [&](auto corners) {
    constexpr int R = decltype(corners)::value;
    if (active)
      backward_cl<scalar_t, R, true>(grad_out, in, grad_in, partials, g, gos, is, gis,
                                     read_shifts, interp_shifts);
    else
      backward_cl<scalar_t, R, false>(grad_out, in, grad_in, partials, g, gos, is, gis,
                                      read_shifts, interp_shifts);
  };
  switch (g.real[0] ? 3 : g.real[1] ? 2 : 1) {
    case 1: run(std::integral_constant<int, 1>()); break;
    case 2: run(std::integral_constant<int, 2>()); break;
    default: run(std::integral_constant<int, 4>()); break;
  }
}

// Channels-last SSL forward through planes (4-byte elements, dense channels-last samples):
// the bits move through the float transposes unchanged, and each plane is the planar SSL
// forward (a memcpy per slab and its edge columns).
template <typename T>
void ssl_forward_transposed(const T* in, T* out, const Geometry& g, const Strides& is,
                            const Strides& os, const std::vector<ChannelShift<double>>& shifts,
                            T fill) {
  static_assert(sizeof(T) == sizeof(float), "the transposes move 4-byte lanes");
  const int64_t C = g.channels, P = g.in_plane(), Q = g.out_plane();
  const int64_t PP = plane_pitch<float>(P), QP = plane_pitch<float>(Q);
  const Strides ps = plane_strides(g.length), qs = plane_strides(g.out_length);
  const bool flat = flat_planes(g, ps, qs);
  // Per channel: the input and output planes, and room for the edge columns' indices.
  for_each_channel_block<float>(g, plane_buffers<float>(g, false) + g.length[2], [&](int64_t n,
                                int64_t c0, int64_t lanes, int64_t group, float* buffer) {
    T* x = reinterpret_cast<T*>(buffer);
    T* y = x + group * PP;
    int64_t* edges = reinterpret_cast<int64_t*>(y + group * QP);
    to_planes(reinterpret_cast<const float*>(in + n * is.batch + c0), C, lanes, P,
              reinterpret_cast<float*>(x), PP);
    for (int64_t c = 0; c < lanes; ++c) {
      if (flat)
        ssl_forward_plane_flat(static_cast<const T*>(x + c * PP), ps.slot[0], y + c * QP,
                               qs.slot[0], g, shifts[c0 + c], fill, edges);
      else
        ssl_forward_plane(static_cast<const T*>(x + c * PP), ps.slot, y + c * QP, qs.slot, g,
                          shifts[c0 + c], fill);
    }
    from_planes(reinterpret_cast<const float*>(y), QP, lanes, Q,
                reinterpret_cast<float*>(out + n * os.batch + c0), C);
  });
}

// Channels-last forward for tensors whose rows (n, o0, o1) are W x C blocks: gathers where
// they exist for the element size (and 32-bit indices reach the sample), taps otherwise
// (planes where through_planes and the element size allow).
template <typename T>
void ssl_forward_channels_last_rows(const T* in, T* out, const Geometry& g, const Strides& is,
                                    const Strides& os,
                                    const std::vector<ChannelShift<double>>& shifts, T fill) {
  if constexpr (sizeof(T) == 4) {
    // Where gathers are slow (kAvx2Only), and for three dims only: in 2D the three passes
    // cost as much as the gathers (benchmarks/NOTES.md, v10).
    if (kAvx2Only && g.real[0] && through_planes<T>(g, is, os, nullptr)) {
      ssl_forward_transposed(in, out, g, is, os, shifts, fill);
      return;
    }
  }
  // 2-byte elements on AVX2-only CPUs: the portable per-lane gather; their taps would be
  // one per-lane loop per distinct shift of a block (up to 32 x 32 lane moves per 32 lanes).
  if constexpr (sizeof(T) == 4 || sizeof(T) == 8 || (kAvx2Only && sizeof(T) == 2)) {
    if (gather_indexable(g, is)) {
      ssl_forward_gather(in, out, g, is, os, shifts, fill);
      return;
    }
  }
  ssl_forward_taps(in, out, g, is, os, shifts, fill);
}

template <typename scalar_t>
void active_forward_channels_last_rows(
    const scalar_t* in, scalar_t* out, const Geometry& g, const Strides& is, const Strides& os,
    const std::vector<ChannelShift<at::opmath_type<scalar_t>>>& shifts) {
  if constexpr (std::is_same<scalar_t, at::opmath_type<scalar_t>>::value) {
    if (through_planes<scalar_t>(g, is, os, nullptr)) {
      active_forward_transposed(in, out, g, is, os, shifts);
      return;
    }
    if (gather_indexable(g, is)) {
      active_forward_gather(in, out, g, is, os, shifts);
      return;
    }
  }
  active_forward_taps(in, out, g, is, os, shifts);
}

}  // namespace
}  // namespace torchshift2_cpu
