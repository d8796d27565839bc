// Row routines shared by the planar forward and backward (and the channels-last kernels'
// rounding): the op-math-to-storage rounding, and the masked vector loop of the flat runs.
#pragma once

#include <c10/util/BFloat16.h>

#include <cstdint>
#include <cstring>

namespace torchshift2_cpu {

// Lanes of the vector blocks (16 float32 lanes of AVX-512): grad_weight's partial sums and
// the flat runs (stencil_run, adjoint_run, run_dots_flat).
constexpr int kLanes = 16;

// An op-math value rounded to the output type: static_cast, except float -> bfloat16, which
// is c10's rounding (nearest even, NaN -> 0x7FC0) written without its branch so that loops
// of it vectorise (c10's scalar NaN test kept the bfloat16 Active Shift forward's stores
// scalar; benchmarks/archive/NOTES.md v11).
template <typename scalar_t, typename opmath_t>
inline scalar_t round_to(opmath_t v) {
  return static_cast<scalar_t>(v);
}
template <>
inline c10::BFloat16 round_to<c10::BFloat16, float>(float v) {
  uint32_t u;
  std::memcpy(&u, &v, sizeof(u));
  const uint32_t rounded = (u + UINT32_C(0x7FFF) + ((u >> 16) & 1u)) >> 16;
  const uint16_t bits = (u & UINT32_C(0x7FFFFFFF)) > UINT32_C(0x7F800000)
                            ? UINT16_C(0x7FC0)
                            : static_cast<uint16_t>(rounded);
  return c10::BFloat16(bits, c10::BFloat16::from_bits());
}

// Writes an op-math row into the output (a copy when the types agree, a rounding otherwise).
template <typename scalar_t, typename opmath_t>
inline void store_row(scalar_t* dst, const opmath_t* src, int64_t n) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) dst[j] = round_to<scalar_t>(src[j]);
}

// The vector loop of the flat runs: dst[j] = sum over taps a of sum_k c[k][a] s[k][a][j],
// for j in [lo, end) (lo < L2), tap a dropped by a select where inside[a][j mod L2] is 0.
template <int K, int A, typename scalar_t, typename opmath_t>
inline void masked_taps(opmath_t* __restrict__ dst, const scalar_t* (&s)[K][A],
                        const opmath_t (&c)[K][A], const int32_t* const* inside, int64_t lo,
                        int64_t end, int64_t L2) {
  auto value = [&](int64_t j, const int32_t* m0, const int32_t* m1) {
    opmath_t v0 = 0, v1 = 0;
    for (int k = 0; k < K; ++k) {
      v0 += c[k][0] * static_cast<opmath_t>(s[k][0][j]);
      if (A == 2) v1 += c[k][A - 1] * static_cast<opmath_t>(s[k][A - 1][j]);
    }
    opmath_t v = *m0 ? v0 : opmath_t(0);
    if (A == 2) v += *m1 ? v1 : opmath_t(0);
    return v;
  };
  int64_t j = lo, column = lo;  // column = j mod L2
  for (; j + kLanes <= end; j += kLanes) {
    const int32_t* m0 = inside[0] + column;
    const int32_t* m1 = inside[A - 1] + column;
    // Written out, not through `value`: GCC does not vectorise the lambda's selects.
#pragma omp simd
    for (int l = 0; l < kLanes; ++l) {
      opmath_t v0 = 0, v1 = 0;
      for (int k = 0; k < K; ++k) {
        v0 += c[k][0] * static_cast<opmath_t>(s[k][0][j + l]);
        if (A == 2) v1 += c[k][A - 1] * static_cast<opmath_t>(s[k][A - 1][j + l]);
      }
      opmath_t v = m0[l] ? v0 : opmath_t(0);
      if (A == 2) v += m1[l] ? v1 : opmath_t(0);
      dst[j + l] = v;
    }
    column += kLanes;
    while (column >= L2) column -= L2;
  }
  for (; j < end; ++j, column = column + 1 == L2 ? 0 : column + 1)
    dst[j] = value(j, inside[0] + column, inside[A - 1] + column);
}

}  // namespace torchshift2_cpu
