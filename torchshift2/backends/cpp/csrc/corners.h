// Interpolation corners (SPEC §3): Active Shift reads 2^D corners per output, corner a at
// the integer offset floor(w) + a_slot per slot, with the weight prod_slot (f or 1 - f).
//
// One encoding everywhere: a corner is an int k whose bit (kSlots - 1 - slot) is a_slot,
// i.e. bit 0 is the last dim (slot 2), bit 1 slot 1, bit 2 slot 0. Slots that are not
// spatial have a_slot = 0, so a tensor with D spatial dims has the corners k < 2^D, and
// k = 2 r + a2 where r is the outer corner (slots 0 and 1, r < 2^(D - 1)): the planar
// kernels index their per-row sums by r; the gather kernels read corners 2 r and 2 r + 1,
// which differ by one column, as a pair; grad_weight partials are stored by k.
//
// One definition of the weights: side_weight is a slot's factor, corner_weight the product
// over the spatial slots, slot 0 first (so every kernel rounds it alike); the planar
// kernels keep the per-slot factors and multiply them in the same order.
#pragma once

#include <array>
#include <cstdint>

#include "geometry.h"

namespace torchshift2_cpu {

// a_slot of corner k.
constexpr int corner_side(int k, int slot) { return (k >> (kSlots - 1 - slot)) & 1; }

// The corners of a geometry: 2^D.
inline int corner_count(const Geometry& g) { return 1 << g.spatial_dims(); }

// A slot's interpolation factor for side a: 1 - frac (a = 0) or frac (a = 1), and its
// derivative with respect to frac.
template <typename T>
inline T side_weight(T frac, int a) {
  return a ? frac : 1 - frac;
}
template <typename T>
inline T side_slope(int a) {
  return a ? T(1) : T(-1);
}

// Corner k's weight for the fractions frac[slot]: the product of its sides over the
// spatial slots.
template <typename T>
inline T corner_weight(const Geometry& g, const T* frac, int k) {
  T w = 1;
  for (int s = 0; s < kSlots; ++s)
    if (g.is_spatial[s]) w *= side_weight(frac[s], corner_side(k, s));
  return w;
}

// d corner_weight / d frac[slot] (SPEC §4 grad_weight).
template <typename T>
inline T corner_slope(const Geometry& g, const T* frac, int k, int slot) {
  T w = 1;
  for (int s = 0; s < kSlots; ++s)
    if (g.is_spatial[s])
      w *= s == slot ? side_slope<T>(corner_side(k, s)) : side_weight(frac[s], corner_side(k, s));
  return w;
}

// The per-slot offset d of a read (output o reads source o + before - d).
using Offset = std::array<int64_t, kSlots>;

// The offset corner k of a channel reads at: its integer shift plus the corner's sides.
template <typename opmath_t>
Offset corner_offset(const ChannelShift<opmath_t>& cs, int k) {
  return Offset{cs.shift[0] + corner_side(k, 0), cs.shift[1] + corner_side(k, 1),
                cs.shift[2] + corner_side(k, 2)};
}

}  // namespace torchshift2_cpu
