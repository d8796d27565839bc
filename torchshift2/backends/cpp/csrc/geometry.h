// The vocabulary every kernel shares: the padding rule (SPEC.md §2), the geometry of a call
// in three right-aligned slots, strides, and the per-channel shifts (SPEC.md §3).
//
// Slots: the D spatial dims of the input sit in the last D of kSlots = 3 slots. A slot that
// is not spatial (D < 3) has length 1, stride 0 and shift 0, so one loop nest serves D = 1,
// 2, 3. Slots 0 and 1 are the "outer" dims (a source row is picked per output position);
// slot 2 is the last dim, walked by row routines whose interior (no padding involved) is a
// plain shifted copy or axpy, with the padding rule only at the row ends.
#pragma once

#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace torchshift2_cpu {

// Same order as torchshift2._spec.PADDINGS.
enum Padding : int64_t { kZeros = 0, kBorder = 1, kPeriodic = 2, kReflect = 3, kSymmetric = 4 };
constexpr int kSlots = 3;
// source_index's answer for a read of zeros padding.
constexpr int64_t kOutside = -1;
// Enough elements per parallel task to amortise its start-up.
constexpr int64_t kGrainElements = 32768;

inline int64_t floor_mod(int64_t a, int64_t m) {
  const int64_t r = a % m;
  return r < 0 ? r + m : r;
}

inline int64_t clamp(int64_t v, int64_t lo, int64_t hi) { return std::min(std::max(v, lo), hi); }

// SPEC §2: the index position k reads from, or kOutside (zeros padding).
inline int64_t source_index(int64_t k, int64_t length, int64_t padding) {
  if (k >= 0 && k < length) return k;
  switch (padding) {
    case kBorder:
      return k < 0 ? 0 : length - 1;
    case kPeriodic:
      return floor_mod(k, length);
    case kReflect: {
      if (length == 1) return 0;
      const int64_t period = 2 * length - 2;
      const int64_t m = floor_mod(k, period);
      return m < length ? m : period - m;
    }
    case kSymmetric: {
      const int64_t m = floor_mod(k, 2 * length);
      return m < length ? m : 2 * length - 1 - m;
    }
    default:
      return kOutside;
  }
}

// An equivalent small shift for an integer-valued double (as reference._reduce_shift), so
// that index arithmetic cannot overflow however large the weight.
inline int64_t reduce_shift(double shift, int64_t length, int64_t padding) {
  // The representative in (-p/2, p/2]: a small negative shift stays small, so the rows keep
  // a long interior (no padding logic) instead of wrapping around almost a whole period.
  auto mod = [](double s, double p) {
    double r = std::fmod(s, p);
    if (r < 0) r += p;
    if (r > p / 2) r -= p;
    return static_cast<int64_t>(r);
  };
  switch (padding) {
    case kPeriodic:
      return mod(shift, static_cast<double>(length));
    case kReflect:
      return length > 1 ? mod(shift, static_cast<double>(2 * length - 2)) : 0;
    case kSymmetric:
      return mod(shift, static_cast<double>(2 * length));
    default: {
      const double bound = static_cast<double>(length + 2);
      return static_cast<int64_t>(std::min(std::max(shift, -bound), bound));
    }
  }
}

// The sizes of a call, per slot: the input's length, the output's (after the crop) and the
// elements cropped before it. Output o of a slot reads input o + before - shift.
struct Geometry {
  int64_t batch = 0, channels = 0, padding = 0;
  int64_t length[kSlots] = {1, 1, 1};
  int64_t out_length[kSlots] = {1, 1, 1};
  int64_t before[kSlots] = {0, 0, 0};
  bool is_spatial[kSlots] = {false, false, false};  // the slot holds one of the D dims
  int64_t out_plane() const { return out_length[0] * out_length[1] * out_length[2]; }
  int64_t in_plane() const { return length[0] * length[1] * length[2]; }
  // The bytes a forward reads and writes (input and output, `element_size` each): what the
  // choices of cache.h weigh.
  int64_t forward_bytes(int64_t element_size) const {
    return batch * channels * (in_plane() + out_plane()) * element_size;
  }
  int spatial_dims() const { return int(is_spatial[0]) + int(is_spatial[1]) + int(is_spatial[2]); }
};

// Element strides of a tensor in the slot order (0 for the slots that are not spatial).
struct Strides {
  int64_t batch = 0, channel = 0;
  int64_t slot[kSlots] = {0, 0, 0};
};

// Dense (n, c) planes of lengths `length` (a geometry's input or output sizes).
inline Strides plane_strides(const int64_t* length) {
  Strides s;
  s.slot[0] = length[1] * length[2], s.slot[1] = length[2], s.slot[2] = 1;
  return s;
}

// Output positions [lo, hi) of a row read source k = o + before - shift - corner inside
// [0, length) for every corner in [0, corners): there no padding rule is needed.
struct Interior {
  int64_t lo, hi;
};
inline Interior interior(int64_t out_length, int64_t length, int64_t before, int64_t shift,
                         int corners) {
  const int64_t lo = clamp(shift + corners - 1 - before, 0, out_length);
  const int64_t hi = clamp(length - before + shift, lo, out_length);
  return {lo, hi};
}

// Whether the (n, c) planes of `in` (input-sized) and `out` (output-sized) are dense rows
// of one flat run each, with slot 2 not cropped: the precondition of the flat runs.
inline bool flat_planes(const Geometry& g, const Strides& in, const Strides& out) {
  const int64_t L1 = g.length[1], L2 = g.length[2], O1 = g.out_length[1];
  return g.out_length[2] == L2 && (in.slot[2] == 1 || L2 == 1) && (out.slot[2] == 1 || L2 == 1) &&
         (in.slot[1] == L2 || L1 == 1) && (out.slot[1] == L2 || O1 == 1);
}

// Whether every 64-byte block of channels a channels-last kernel writes (at out + n * batch
// + o0 * slot0 + o1 * slot1 + w * C + b * 64 / E, element size E) starts on a cache line:
// the condition of streaming stores, which fault on any other address.
inline bool blocks_on_lines(const void* out, const Strides& os, int64_t C, int64_t E) {
  return reinterpret_cast<uintptr_t>(out) % 64 == 0 && (C * E) % 64 == 0 &&
         (os.batch * E) % 64 == 0 && (os.slot[0] * E) % 64 == 0 && (os.slot[1] * E) % 64 == 0;
}

// Per channel and slot: the integer shift of corner 0 and the interpolation fraction.
template <typename opmath_t>
struct ChannelShift {
  int64_t shift[kSlots] = {0, 0, 0};
  opmath_t frac[kSlots] = {0, 0, 0};
};
template <typename opmath_t>
using Shifts = std::vector<ChannelShift<opmath_t>>;

// The shifts of a weight (C, D) as contiguous finite float64 (ops.cpp checks and converts
// it once per call). rounded: SSL's round-half-to-even shift (frac = 0); else floor(w) and
// w - floor(w).
template <typename opmath_t>
Shifts<opmath_t> channel_shifts(const double* weight, const Geometry& g, bool rounded) {
  const int ndim = g.spatial_dims();
  Shifts<opmath_t> shifts(g.channels);
  for (int64_t c = 0; c < g.channels; ++c) {
    for (int d = 0; d < ndim; ++d) {
      const int slot = kSlots - ndim + d;
      const double value = weight[c * ndim + d];
      const double base = rounded ? std::nearbyint(value) : std::floor(value);
      shifts[c].shift[slot] = reduce_shift(base, g.length[slot], g.padding);
      shifts[c].frac[slot] = static_cast<opmath_t>(rounded ? 0.0 : value - base);
    }
  }
  return shifts;
}

// A backward's two sets of shifts (SPEC §4): `interp` (floor + fraction: the interpolation
// derivative, grad_weight) and `read` (what the forward read: SSL rounded, Active the same).
template <typename opmath_t>
struct BackwardShifts {
  Shifts<opmath_t> interp, read;
  BackwardShifts(const double* weight, const Geometry& g, bool active)
      : interp(channel_shifts<opmath_t>(weight, g, /*rounded=*/false)),
        read(active ? interp : channel_shifts<opmath_t>(weight, g, /*rounded=*/true)) {}
};

}  // namespace torchshift2_cpu
