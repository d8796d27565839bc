// Longer than the ~800 lines a file should hold: the row routines below (the adjoint per
// padding, the flat runs, the grad_weight dots) are the inner loops of one sweep and share
// its tables; split, each half would be unreadable without the other.
//
// Planar backward: grad_input and the grad_weight terms of dense (n, c) planes (SPEC §4),
// and PlaneBackward, the per-plane kernel that the channels-last backward through planes
// (cl_planes.cpp) runs too.
//
// The forward of one (n, c) plane is a tensor product of one linear map per slot (the taps
// of that slot with their padding rule), so grad_input is the product of the adjoint maps,
// computed as a gather: each grad_input row is written once, as a sum of the grad_output
// rows whose reads land on it (outer slots, from per-channel tables) shifted back along
// slot 2 (a plain copy / two-tap interpolation in the interior), plus a short fix-up for the
// outputs whose slot-2 reads went through padding (none for zeros padding).
// grad_weight: per-plane corner dot products, computed in the same sweep (slab by slab,
// right after the slab's grad_input rows, while its grad_output is in L1 / L2), reduced over
// the batch in a fixed order afterwards (ops.cpp), so the result does not depend on the
// thread count. Each task owns whole (n, c) planes: no atomics, no races.
//
// Longer than the other files (over 800 lines) because it is one kernel: the adjoint tables,
// the row routines and PlaneBackward use each other's types and must inline into each
// other; split across files they would need a header of templates as long as this file.
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <map>
#include <type_traits>
#include <utility>
#include <vector>

#include "corners.h"
#include "dispatch.h"
#include "geometry.h"
#include "kernels.h"
#include "planes.h"
#include "rows.h"
#include "table_arena.h"

namespace torchshift2_cpu {
namespace {

// Software prefetch of one row (the hardware prefetchers stop at every 4 KiB page, and each
// phase of the planar backward jumps between two streams).
inline void prefetch_row(const void* p, int64_t bytes) {
  const char* c = static_cast<const char*>(p);
  for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(c + b, 0, 3);
}
inline void prefetch_row_for_write(const void* p, int64_t bytes) {
  const char* c = static_cast<const char*>(p);
  for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(c + b, 1, 3);
}
// grad_input rows are prefetched for writing this many rows ahead.
constexpr int64_t kAhead = 4;

// One source row of an output row, for grad_weight: for an outer corner r (corners.h: r =
// k >> 1, the sides of slots 0 and 1) that reads inside the tensor, the row's offset.
struct OuterRow {
  int64_t offset;
  int corner;  // r
};
constexpr int kMaxRows = 4;

// The source rows of output row (o0, o1) of channel shift cs, every outer corner that
// reads inside (interpolate: both sides of each spatial outer slot; else side 0).
template <typename opmath_t>
int outer_rows(OuterRow* rows, const Geometry& g, const ChannelShift<opmath_t>& cs, int64_t o0,
               int64_t o1, int64_t stride0, int64_t stride1, bool interpolate) {
  const int corners0 = interpolate && g.is_spatial[0] ? 2 : 1;
  const int corners1 = interpolate && g.is_spatial[1] ? 2 : 1;
  int count = 0;
  for (int a0 = 0; a0 < corners0; ++a0) {
    const int64_t i0 = source_index(o0 + g.before[0] - cs.shift[0] - a0, g.length[0], g.padding);
    if (i0 == kOutside) continue;
    for (int a1 = 0; a1 < corners1; ++a1) {
      const int64_t i1 = source_index(o1 + g.before[1] - cs.shift[1] - a1, g.length[1], g.padding);
      if (i1 == kOutside) continue;
      rows[count++] = OuterRow{i0 * stride0 + i1 * stride1, a0 * 2 + a1};
    }
  }
  return count;
}

// The adjoint of the forward's per-slot maps and the grad_weight row ends, as tables per
// slot: each depends on one slot's integer shifts only, so channels share them as soon as
// those agree (a 2D layer with shifts in [-3, 3] needs 7 outer and at most 14 row tables,
// not one per distinct shift pair). Interpolation weights are not stored, only which
// corner (0: weight 1 - frac, 1: frac) each entry is, so Active Shift channels whose shifts
// have the same integer parts share tables too.
//
// Outer slot d (0 or 1) for read shift `shift`: input index j receives output index out[e]
// from corner corner[e], e in [start[j], start[j + 1]), in increasing (o, corner) order.
// Slot 1 only: run[j] = how many rows from j on have the regular list out = j + offset1 + a
// for every corner a (no padding involved), 0 if row j is not regular.
struct SlotAdjoint {
  Table<int64_t> start, out;
  Table<int8_t> corner;
  Table<int64_t> run;
};

SlotAdjoint slot_adjoint(const Geometry& g, int d, int64_t shift, bool active) {
  SlotAdjoint t;
  const int corners = active && g.is_spatial[d] ? 2 : 1;
  const int64_t L = g.length[d], O = g.out_length[d];
  Table<int64_t> target, outs;
  Table<int8_t> cs;
  t.start.assign(L + 1, 0);
  for (int64_t o = 0; o < O; ++o)
    for (int a = 0; a < corners; ++a) {
      const int64_t j = source_index(o + g.before[d] - shift - a, L, g.padding);
      if (j == kOutside) continue;
      target.push_back(j);
      outs.push_back(o);
      cs.push_back(static_cast<int8_t>(a));
      ++t.start[j + 1];
    }
  for (int64_t j = 0; j < L; ++j) t.start[j + 1] += t.start[j];
  Table<int64_t> fill(t.start.begin(), t.start.end() - 1);
  t.out.resize(outs.size());
  t.corner.resize(outs.size());
  for (size_t e = 0; e < outs.size(); ++e) {
    const int64_t pos = fill[target[e]]++;
    t.out[pos] = outs[e];
    t.corner[pos] = cs[e];
  }
  if (d == 1) {
    const int64_t off = shift - g.before[1];
    t.run.assign(L + 1, 0);
    for (int64_t j = L - 1; j >= 0; --j) {
      bool regular = t.start[j + 1] - t.start[j] == corners;
      for (int a = 0; regular && a < corners; ++a) regular = t.out[t.start[j] + a] == j + off + a;
      t.run[j] = regular ? t.run[j + 1] + 1 : 0;
    }
  }
  return t;
}

// Slot 2 for read shift rs.shift[2] and floor shift ws.shift[2] (grad_weight).
template <typename opmath_t>
struct RowAdjoint {
  // Slot 2: input j2 reads output j2 + offset + a2 with the weight of corner a2 where that
  // output exists; the outputs whose reads were padded add (weight of corner extra_a)
  // * g[extra_o] to input extra_j.
  int64_t offset = 0;
  Table<int64_t> extra_o, extra_j;
  Table<int8_t> extra_a;
  // grad_weight (floor shifts): slot-2 columns outside the interior and the source indices
  // of their two taps (k, k - 1), kOutside for padding.
  Interior wmid{0, 0};
  Table<int64_t> wcol, widx0, widx1;
  // For the flat runs (slot 2 not cropped), i < L2 + kLanes: ginside[a][i] = 1 where
  // grad_input tap a of column i mod L2 reads an output inside the row (adjoint_run), and
  // winside[a][i] where grad_weight tap a (k, k - 1) reads a source inside the row
  // (run_dots_flat), plus the grad_weight edge reads through padding (wpad_*; none for zeros
  // padding). 32-bit: their selects vectorise at float width.
  Table<int32_t> ginside[2], winside[2];
  Table<int64_t> wpad_col, wpad_src;
  Table<int8_t> wpad_tap;
};

template <typename opmath_t>
RowAdjoint<opmath_t> row_adjoint(const Geometry& g, const ChannelShift<opmath_t>& rs,
                                 const ChannelShift<opmath_t>& ws, bool active) {
  RowAdjoint<opmath_t> t;
  const int64_t L2 = g.length[2], O2 = g.out_length[2], b2 = g.before[2];
  const int A2 = active ? 2 : 1;
  t.offset = rs.shift[2] - b2;
  for (int64_t o = 0; o < O2; ++o)
    for (int a = 0; a < A2; ++a) {
      const int64_t k = o + b2 - rs.shift[2] - a;
      if (k >= 0 && k < L2) continue;
      const int64_t j = source_index(k, L2, g.padding);
      if (j == kOutside) continue;
      t.extra_o.push_back(o);
      t.extra_j.push_back(j);
      t.extra_a.push_back(static_cast<int8_t>(a));
    }
  t.wmid = interior(O2, L2, b2, ws.shift[2], 2);
  auto wedge = [&](int64_t o) {
    const int64_t k = o + b2 - ws.shift[2];
    t.wcol.push_back(o);
    t.widx0.push_back(source_index(k, L2, g.padding));
    t.widx1.push_back(source_index(k - 1, L2, g.padding));
  };
  for (int64_t o = 0; o < t.wmid.lo; ++o) wedge(o);
  for (int64_t o = t.wmid.hi; o < O2; ++o) wedge(o);
  for (int a = 0; a < 2; ++a) {
    t.ginside[a].resize(L2 + kLanes);
    t.winside[a].resize(L2 + kLanes);
    for (int64_t i = 0; i < L2 + kLanes; ++i) {
      const int64_t o = i % L2 + t.offset + a, k = i % L2 + b2 - ws.shift[2] - a;
      t.ginside[a][i] = o >= 0 && o < O2;
      t.winside[a][i] = k >= 0 && k < L2;
    }
  }
  for (size_t e = 0; e < t.wcol.size(); ++e)
    for (int a = 0; a < 2; ++a) {
      const int64_t k = t.wcol[e] + b2 - ws.shift[2] - a;
      const int64_t m = a == 0 ? t.widx0[e] : t.widx1[e];
      if ((k < 0 || k >= L2) && m != kOutside) {
        t.wpad_col.push_back(t.wcol[e]);
        t.wpad_src.push_back(m);
        t.wpad_tap.push_back(static_cast<int8_t>(a));
      }
    }
  return t;
}

// dst[j] (= or +=) sum_k p0[k] src_k[j + offset] + p1[k] src_k[j + offset + 1] for j in
// [0, L2), taps outside [0, O2) dropped (A2 = 1: the first tap only).
template <int K, int A2, bool kAdd, typename scalar_t, typename opmath_t>
void adjoint_row(opmath_t* __restrict__ dst, const scalar_t* const* src, const opmath_t* p0,
                 const opmath_t* p1, int64_t offset, int64_t L2, int64_t O2) {
  const int64_t lo = clamp(-offset, 0, L2);
  const int64_t hi = clamp(O2 - offset - (A2 - 1), lo, L2);
  auto edge = [&](int64_t j) {
    const int64_t o = j + offset;
    opmath_t v = 0;
    for (int k = 0; k < K; ++k) {
      if (o >= 0 && o < O2) v += p0[k] * static_cast<opmath_t>(src[k][o]);
      if (A2 == 2 && o + 1 >= 0 && o + 1 < O2) v += p1[k] * static_cast<opmath_t>(src[k][o + 1]);
    }
    dst[j] = kAdd ? dst[j] + v : v;
  };
  for (int64_t j = 0; j < lo; ++j) edge(j);
  const scalar_t* s[K];
  opmath_t c0[K], c1[K];
  for (int k = 0; k < K; ++k) {
    s[k] = src[k] + offset;
    c0[k] = p0[k];
    c1[k] = p1[k];
  }
#pragma omp simd
  for (int64_t j = lo; j < hi; ++j) {
    opmath_t v = 0;
    for (int k = 0; k < K; ++k) {
      v += c0[k] * static_cast<opmath_t>(s[k][j]);
      if (A2 == 2) v += c1[k] * static_cast<opmath_t>(s[k][j + 1]);
    }
    dst[j] = kAdd ? dst[j] + v : v;
  }
  for (int64_t j = hi; j < L2; ++j) edge(j);
}

// adjoint_row (dst =, K <= 4 source rows) for `rows` consecutive grad_input rows that are one
// flat run of length L2 rows, as are their grad_output rows (slot 2 not cropped: O2 == L2):
// one vector loop from the first row's interior to the last row's, the taps that would read
// an output of the neighbouring row dropped by inside0 / inside1 (RowAdjoint::ginside);
// the first row's leading and the last row's trailing columns are then done per column.
template <int K, int A2, typename scalar_t, typename opmath_t>
void adjoint_run(opmath_t* __restrict__ dst, const scalar_t* const* src, const opmath_t* p0,
                 const opmath_t* p1, int64_t offset, int64_t L2, int64_t rows,
                 const int32_t* inside0, const int32_t* inside1) {
  const int64_t lo = clamp(-offset, 0, L2);
  const int64_t hi = clamp(L2 - offset - (A2 - 1), lo, L2);
  auto edge = [&](int64_t r, int64_t j) {
    const int64_t o = j + offset;
    opmath_t v = 0;
    for (int k = 0; k < K; ++k) {
      const scalar_t* row = src[k] + r * L2;
      if (o >= 0 && o < L2) v += p0[k] * static_cast<opmath_t>(row[o]);
      if (A2 == 2 && o + 1 >= 0 && o + 1 < L2) v += p1[k] * static_cast<opmath_t>(row[o + 1]);
    }
    dst[r * L2 + j] = v;
  };
  if (hi <= lo) {
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = 0; j < L2; ++j) edge(r, j);
    return;
  }
  const scalar_t* taps[K][A2];
  opmath_t coef[K][A2];
  for (int k = 0; k < K; ++k) {
    taps[k][0] = src[k] + offset;
    coef[k][0] = p0[k];
    if (A2 == 2) {
      taps[k][A2 - 1] = src[k] + offset + 1;
      coef[k][A2 - 1] = p1[k];
    }
  }
  const int32_t* const inside[2] = {inside0, inside1};
  masked_taps<K, A2>(dst, taps, coef, inside, lo, (rows - 1) * L2 + hi, L2);
  for (int64_t c = 0; c < lo; ++c) edge(0, c);
  for (int64_t c = hi; c < L2; ++c) edge(rows - 1, c);
}

// adjoint_run for 1-4 source rows, A2 = 1 (SSL) or 2 (Active Shift) slot-2 taps.
template <typename scalar_t, typename opmath_t>
void adjoint_run_any(int taps, opmath_t* dst, int count, const scalar_t* const* src,
                     const opmath_t* p0, const opmath_t* p1, int64_t offset, int64_t L2,
                     int64_t rows, const int32_t* inside0, const int32_t* inside1) {
  dispatch_count<1, 2>(taps, [&](auto a2) {
    dispatch_count<1, 2, 3, 4>(count, [&](auto k) {
      adjoint_run<decltype(k)::value, decltype(a2)::value>(dst, src, p0, p1, offset, L2, rows,
                                                           inside0, inside1);
    });
  });
}

// adjoint_row for 1-4 source rows (add: into dst), A2 slot-2 taps.
template <typename scalar_t, typename opmath_t>
void adjoint_chunk(int taps, opmath_t* dst, bool add, int count, const scalar_t* const* src,
                   const opmath_t* p0, const opmath_t* p1, int64_t offset, int64_t L2, int64_t O2) {
  dispatch_count<1, 2>(taps, [&](auto a2) {
    dispatch_bool(add, [&](auto kAdd) {
      dispatch_count<1, 2, 3, 4>(count, [&](auto k) {
        adjoint_row<decltype(k)::value, decltype(a2)::value, decltype(kAdd)::value>(
            dst, src, p0, p1, offset, L2, O2);
      });
    });
  });
}

// Per plane: for each outer corner r and slot-2 side a2 (corner 2 r + a2, corners.h), the dot
// product of grad_output with the source values that corner reads, kept in kLanes partial
// sums so rows add into vectors and the horizontal sum happens once per plane, in a fixed
// order.
template <typename opmath_t>
struct CornerDots {
  // Row ends go to separate scalars: a scalar store into a lane that a vector load reads
  // next stalls the load (no store forwarding), once per row and corner.
  alignas(64) opmath_t lane[4][2][kLanes];
  opmath_t edge[4][2];
  void clear() {
    std::fill(&lane[0][0][0], &lane[0][0][0] + 4 * 2 * kLanes, opmath_t(0));
    std::fill(&edge[0][0], &edge[0][0] + 4 * 2, opmath_t(0));
  }
  // The lanes summed as a fixed pairwise tree (vector adds instead of a chain of 16
  // dependent scalar adds, per corner and plane), then the row ends.
  opmath_t total(int corner, int a2) const {
    alignas(64) opmath_t t[kLanes];
    for (int j = 0; j < kLanes; ++j) t[j] = lane[corner][a2][j];
    for (int width = kLanes / 2; width >= 1; width /= 2) {
#pragma omp simd
      for (int j = 0; j < width; ++j) t[j] += t[j + width];
    }
    return t[0] + edge[corner][a2];
  }
};

// A run's per-source-row accumulators (lanes d0 / d1, row ends e0 / e1) into the plane's
// CornerDots, by corner.
template <int K, typename opmath_t>
void add_run_dots(CornerDots<opmath_t>& dots, const OuterRow* rows, const opmath_t (&d0)[K][kLanes],
                  const opmath_t (&d1)[K][kLanes], const opmath_t (&e0)[K],
                  const opmath_t (&e1)[K]) {
  for (int k = 0; k < K; ++k) {
    opmath_t* __restrict__ l0 = dots.lane[rows[k].corner][0];
    opmath_t* __restrict__ l1 = dots.lane[rows[k].corner][1];
#pragma omp simd
    for (int j = 0; j < kLanes; ++j) {
      l0[j] += d0[k][j];
      l1[j] += d1[k][j];
    }
    dots.edge[rows[k].corner][0] += e0[k];
    dots.edge[rows[k].corner][1] += e1[k];
  }
}

// The row ends of one output row (grad_output row go_row) whose columns t.wcol lie in
// [from, to), into the run's row-end sums: source row k at base[k] + at.
template <int K, typename scalar_t, typename opmath_t>
inline void add_row_ends(opmath_t (&e0)[K], opmath_t (&e1)[K], const scalar_t* go_row,
                         const scalar_t* const (&base)[K], int64_t at,
                         const RowAdjoint<opmath_t>& t, int64_t from, int64_t to) {
  for (size_t e = 0; e < t.wcol.size(); ++e) {
    if (t.wcol[e] < from || t.wcol[e] >= to) continue;
    const opmath_t grad = static_cast<opmath_t>(go_row[t.wcol[e]]);
    const int64_t i0 = t.widx0[e], i1 = t.widx1[e];
    for (int k = 0; k < K; ++k) {
      const scalar_t* r = base[k] + at;
      if (i0 != kOutside) e0[k] += grad * static_cast<opmath_t>(r[i0]);
      if (i1 != kOutside) e1[k] += grad * static_cast<opmath_t>(r[i1]);
    }
  }
}

// grad_weight contributions of output rows (SPEC §4), as corner dot products: for source
// row r, <g, V_r(k)> and <g, V_r(k - 1)>, combined per plane by combine_plane_dots. Slot 2
// is unit-stride here (dense planes); the row ends use the channel's precomputed indices.
// A run of `count_rows` consecutive rows along slot 1 whose source rows all lie inside the
// tensor advances every pointer by the slot-1 strides, so the accumulators (16 lanes per
// source row and tap) stay in registers for the whole run and are added to the plane's
// CornerDots once. A partial last block of a row is redone as the row's last 16 interior
// elements with the already counted ones masked out.
// noinline (also run_dots_flat): the code the compiler makes of it, FMA contractions
// included, then does not depend on the dispatch around it, so float32 grad_weight stays the
// same bit for bit when that changes (README.md, compiler flags).
template <int K, typename scalar_t, typename opmath_t>
__attribute__((noinline)) void run_dots(CornerDots<opmath_t>& dots, const OuterRow* rows,
                                        const scalar_t* x, const scalar_t* go, int64_t count_rows,
                                        int64_t xs1, int64_t gs1, const RowAdjoint<opmath_t>& t,
                                        int64_t read_offset, const scalar_t* pf,
                                        const scalar_t* pf_x, int64_t pf_bytes) {
  opmath_t d0[K][kLanes], d1[K][kLanes], e0[K], e1[K];
  const scalar_t* base[K];
  for (int k = 0; k < K; ++k) {
    base[k] = x + rows[k].offset;
    e0[k] = e1[k] = opmath_t(0);
    for (int j = 0; j < kLanes; ++j) d0[k][j] = d1[k][j] = opmath_t(0);
  }
  const int64_t lo = t.wmid.lo, hi = t.wmid.hi;
  for (int64_t row = 0; row < count_rows; ++row, go += gs1) {
    if (pf != nullptr) prefetch_row(pf + row * gs1, pf_bytes);
    if (pf_x != nullptr) prefetch_row(pf_x + row * xs1, pf_bytes);
    const scalar_t* s[K];
    for (int k = 0; k < K; ++k) s[k] = base[k] + row * xs1 + read_offset;
    int64_t o = lo;
    for (; o + kLanes <= hi; o += kLanes) {
      for (int k = 0; k < K; ++k) {
#pragma omp simd
        for (int j = 0; j < kLanes; ++j) {
          const opmath_t grad = static_cast<opmath_t>(go[o + j]);
          d0[k][j] += grad * static_cast<opmath_t>(s[k][o + j]);
          d1[k][j] += grad * static_cast<opmath_t>(s[k][o + j - 1]);
        }
      }
    }
    if (o < hi && hi - lo >= kLanes) {
      const int64_t skip = o - (hi - kLanes);
      o = hi - kLanes;
      for (int k = 0; k < K; ++k) {
#pragma omp simd
        for (int j = 0; j < kLanes; ++j) {
          const opmath_t grad = j >= skip ? static_cast<opmath_t>(go[o + j]) : opmath_t(0);
          d0[k][j] += grad * static_cast<opmath_t>(s[k][o + j]);
          d1[k][j] += grad * static_cast<opmath_t>(s[k][o + j - 1]);
        }
      }
    } else {
      for (; o < hi; ++o) {
        const opmath_t grad = static_cast<opmath_t>(go[o]);
        for (int k = 0; k < K; ++k) {
          e0[k] += grad * static_cast<opmath_t>(s[k][o]);
          e1[k] += grad * static_cast<opmath_t>(s[k][o - 1]);
        }
      }
    }
    add_row_ends<K>(e0, e1, go, base, row * xs1, t, 0, std::numeric_limits<int64_t>::max());
  }
  add_run_dots<K>(dots, rows, d0, d1, e0, e1);
}

// run_dots for a run whose rows are one flat run in x and grad_output (slot 2 not cropped:
// row stride L2 in both): one vector loop from the first row's interior to the last row's,
// each tap's products dropped where its read would wrap into the neighbouring row
// (RowAdjoint::winside; a select, so what the wrapped read holds never matters); then the
// first row's leading and the last row's trailing columns as in run_dots, and the reads
// through padding of the other edge columns.
template <int K, typename scalar_t, typename opmath_t>
__attribute__((noinline)) void run_dots_flat(CornerDots<opmath_t>& dots, const OuterRow* rows,
                                             const scalar_t* x, const scalar_t* go,
                                             int64_t count_rows, int64_t L2,
                                             const RowAdjoint<opmath_t>& t, int64_t read_offset,
                                             const scalar_t* pf, const scalar_t* pf_x) {
  opmath_t d0[K][kLanes], d1[K][kLanes], e0[K], e1[K];
  const scalar_t* base[K];
  const scalar_t* s[K];
  for (int k = 0; k < K; ++k) {
    base[k] = x + rows[k].offset;
    s[k] = base[k] + read_offset;
    e0[k] = e1[k] = opmath_t(0);
    for (int j = 0; j < kLanes; ++j) d0[k][j] = d1[k][j] = opmath_t(0);
  }
  // All edge reads of columns [from, to) of row r.
  auto edge_columns = [&](int64_t r, int64_t from, int64_t to) {
    add_row_ends<K>(e0, e1, go + r * L2, base, r * L2, t, from, to);
  };
  const int64_t lo = t.wmid.lo, hi = t.wmid.hi;
  if (hi > lo) {
    const int32_t* in0 = t.winside[0].data();
    const int32_t* in1 = t.winside[1].data();
    const int64_t end = (count_rows - 1) * L2 + hi;
    int64_t o = lo, column = lo;  // column = o mod L2
    for (; o + kLanes <= end; o += kLanes) {
      if (pf != nullptr) __builtin_prefetch(pf + o, 0, 3);
      if (pf_x != nullptr) __builtin_prefetch(pf_x + o, 0, 3);
      const int32_t* m0 = in0 + column;
      const int32_t* m1 = in1 + column;
      for (int k = 0; k < K; ++k) {
#pragma omp simd
        for (int j = 0; j < kLanes; ++j) {
          const opmath_t grad = static_cast<opmath_t>(go[o + j]);
          // A select of the sum (not of the product): one masked FMA per tap.
          const opmath_t a0 = d0[k][j] + grad * static_cast<opmath_t>(s[k][o + j]);
          const opmath_t a1 = d1[k][j] + grad * static_cast<opmath_t>(s[k][o + j - 1]);
          d0[k][j] = m0[j] ? a0 : d0[k][j];
          d1[k][j] = m1[j] ? a1 : d1[k][j];
        }
      }
      column += kLanes;
      while (column >= L2) column -= L2;
    }
    for (; o < end; ++o, column = column + 1 == L2 ? 0 : column + 1) {
      const opmath_t grad = static_cast<opmath_t>(go[o]);
      for (int k = 0; k < K; ++k) {
        if (in0[column]) e0[k] += grad * static_cast<opmath_t>(s[k][o]);
        if (in1[column]) e1[k] += grad * static_cast<opmath_t>(s[k][o - 1]);
      }
    }
    edge_columns(0, 0, lo);
    edge_columns(count_rows - 1, hi, L2);
    for (int64_t r = 0; r < count_rows; ++r)
      for (size_t e = 0; e < t.wpad_col.size(); ++e) {
        const int64_t col = t.wpad_col[e];
        if ((r == 0 && col < lo) || (r == count_rows - 1 && col >= hi)) continue;
        const opmath_t grad = static_cast<opmath_t>(go[r * L2 + col]);
        for (int k = 0; k < K; ++k) {
          const opmath_t v = grad * static_cast<opmath_t>(base[k][r * L2 + t.wpad_src[e]]);
          if (t.wpad_tap[e] == 0)
            e0[k] += v;
          else
            e1[k] += v;
        }
      }
  } else {
    for (int64_t r = 0; r < count_rows; ++r) edge_columns(r, 0, L2);
  }
  add_run_dots<K>(dots, rows, d0, d1, e0, e1);
}

// flat: rows are one flat run in x and grad_output (xs1 == gs1 == L2, see run_dots_flat).
template <typename scalar_t, typename opmath_t>
void weight_grad_rows(CornerDots<opmath_t>& dots, const OuterRow* rows, int count,
                      const scalar_t* x, const scalar_t* go, int64_t count_rows, int64_t xs1,
                      int64_t gs1, const RowAdjoint<opmath_t>& t, int64_t read_offset,
                      const scalar_t* pf, const scalar_t* pf_x, int64_t pf_bytes, bool flat) {
  if (count_rows <= 0 || count == 0) return;
  dispatch_count<1, 2, 3, 4>(count, [&](auto k) {
    if (flat && count_rows > 1)
      run_dots_flat<decltype(k)::value>(dots, rows, x, go, count_rows, xs1, t, read_offset, pf,
                                        pf_x);
    else
      run_dots<decltype(k)::value>(dots, rows, x, go, count_rows, xs1, gs1, t, read_offset, pf,
                                   pf_x, pf_bytes);
  });
}

// d/d frac of the plane's output from its corner dot products: with D0, D1 the slot-2
// sides of outer corner r, slot 2 gets sum_r weight_r (D1 - D0) and slots 0 / 1 get
// sum_r dweight_r/dfrac ((1 - f2) D0 + f2 D1).
template <typename opmath_t>
void combine_plane_dots(opmath_t* sum, const CornerDots<opmath_t>& dots, const Geometry& g,
                        const ChannelShift<opmath_t>& ws) {
  const int corners0 = g.is_spatial[0] ? 2 : 1, corners1 = g.is_spatial[1] ? 2 : 1;
  for (int a0 = 0; a0 < corners0; ++a0)
    for (int a1 = 0; a1 < corners1; ++a1) {
      const opmath_t w0 = corners0 == 1 ? opmath_t(1) : side_weight(ws.frac[0], a0);
      const opmath_t w1 = corners1 == 1 ? opmath_t(1) : side_weight(ws.frac[1], a1);
      const opmath_t d0 = side_slope<opmath_t>(a0), d1 = side_slope<opmath_t>(a1);
      const opmath_t D0 = dots.total(a0 * 2 + a1, 0), D1 = dots.total(a0 * 2 + a1, 1);
      const opmath_t interp = (1 - ws.frac[2]) * D0 + ws.frac[2] * D1;
      sum[0] += d0 * w1 * interp;
      sum[1] += w0 * d1 * interp;
      sum[2] += w0 * w1 * (D1 - D0);
    }
}

}  // namespace

template <typename scalar_t>
struct PlaneScratch<scalar_t>::Impl {
  std::vector<const scalar_t*> src;
  std::vector<scalar_t> cf, p0, p1;
  OuterRow rows[kMaxRows];
  CornerDots<scalar_t> dots;
};

template <typename scalar_t>
PlaneScratch<scalar_t>::PlaneScratch() : impl(new Impl) {}
template <typename scalar_t>
PlaneScratch<scalar_t>::~PlaneScratch() = default;

// Per channel c: outer[d][outer_of[d][c]] (slots 0, 1) and row_tables[row_of[c]] (slot 2).
template <typename scalar_t>
struct PlaneBackward<scalar_t>::Tables {
  Table<SlotAdjoint> outer[2];
  Table<int64_t> outer_of[2], row_of;
  Table<RowAdjoint<scalar_t>> row_tables;
};

template <typename scalar_t>
PlaneBackward<scalar_t>::PlaneBackward(const Geometry& g, bool active,
                                       const Shifts<scalar_t>& read_shifts,
                                       const Shifts<scalar_t>& interp_shifts)
    : g_(g), active_(active), read_shifts_(read_shifts), interp_shifts_(interp_shifts) {
  static_assert(std::is_same<scalar_t, at::opmath_type<scalar_t>>::value,
                "PlaneBackward: op-math storage only");
  auto* tables = new Tables;
  tables_.reset(tables);
  // Channels whose keys agree share a table; the distinct ones are built in parallel.
  auto share = [&](auto key_of, Table<int64_t>& index_of, auto& built, auto build) {
    using Key = decltype(key_of(int64_t(0)));
    Table<int64_t> first;  // a channel of each distinct table
    std::map<Key, int64_t> ids;
    index_of.resize(g.channels);
    for (int64_t c = 0; c < g.channels; ++c) {
      const auto found = ids.emplace(key_of(c), static_cast<int64_t>(first.size()));
      if (found.second) first.push_back(c);
      index_of[c] = found.first->second;
    }
    built.resize(first.size());
    at::parallel_for(0, static_cast<int64_t>(first.size()), 64, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) built[i] = build(first[i]);
    });
  };
  for (int d = 0; d < 2; ++d)
    share([&](int64_t c) { return read_shifts[c].shift[d]; }, tables->outer_of[d], tables->outer[d],
          [&](int64_t c) { return slot_adjoint(g, d, read_shifts[c].shift[d], active); });
  share(
      [&](int64_t c) { return std::make_pair(read_shifts[c].shift[2], interp_shifts[c].shift[2]); },
      tables->row_of, tables->row_tables,
      [&](int64_t c) { return row_adjoint(g, read_shifts[c], interp_shifts[c], active); });
}

template <typename scalar_t>
PlaneBackward<scalar_t>::~PlaneBackward() = default;

template <typename scalar_t>
void PlaneBackward<scalar_t>::plane(PlaneScratch<scalar_t>& scratch, int64_t c, const scalar_t* go,
                                    const scalar_t* x, scalar_t* gi, const Strides& gos,
                                    const Strides& is, const Strides& gis, const scalar_t* next_go,
                                    const scalar_t* next_x, double* partial) const {
  using opmath_t = scalar_t;
  typename PlaneScratch<scalar_t>::Impl& s = *scratch.impl;
  const Geometry& g = g_;
  const bool active = active_;
  const int64_t L0 = g.length[0], L1 = g.length[1], L2 = g.length[2];
  const int64_t O0 = g.out_length[0], O1 = g.out_length[1], O2 = g.out_length[2];
  const SlotAdjoint& t0 = tables_->outer[0][tables_->outer_of[0][c]];
  const SlotAdjoint& t1 = tables_->outer[1][tables_->outer_of[1][c]];
  const RowAdjoint<opmath_t>& t = tables_->row_tables[tables_->row_of[c]];
  const auto& ws = interp_shifts_[c];
  // The side weights of the read shifts' interpolation (SPEC §4), per slot: side[slot][a];
  // a slot that does not interpolate has the one side a = 0 of weight 1.
  const auto& rs = read_shifts_[c];
  opmath_t side[kSlots][2];
  for (int d = 0; d < kSlots; ++d) {
    const bool interpolates = active && g.is_spatial[d];
    side[d][0] = interpolates ? side_weight(rs.frac[d], 0) : opmath_t(1);
    side[d][1] = interpolates ? side_weight(rs.frac[d], 1) : opmath_t(0);
  }
  const opmath_t* tap = side[2];
  const int taps = active ? 2 : 1;
  const int64_t read_offset = g.before[2] - ws.shift[2];
  const bool weights = partial != nullptr;
  const bool dense_rows = gos.slot[2] == 1 || O2 == 1;
  if (!dense_rows) next_go = nullptr;
  if (!dense_rows || !(is.slot[2] == 1 || L2 == 1)) next_x = nullptr;
  const int64_t row_bytes = O2 * static_cast<int64_t>(sizeof(scalar_t));
  // Input-sized rows (input, grad_input): dense, see the precondition above.
  const int64_t in_row_bytes =
      is.slot[2] == 1 || L2 == 1 ? L2 * static_cast<int64_t>(sizeof(scalar_t)) : 0;
  // Output rows along slot 1 whose grad_weight source rows need no padding rule.
  const Interior w1 = interior(O1, L1, g.before[1], ws.shift[1], g.is_spatial[1] ? 2 : 1);

  // Flat planes of grad_input and grad_output (slot 2 not cropped): a run of regular rows
  // is one adjoint_run.
  const bool flat_rows = flat_planes(g, gis, gos);
  // The same for input and grad_output: runs of grad_weight rows are flat.
  const bool flat_weight_rows = flat_planes(g, is, gos);
  // grad_input rows (j0, j1 .. j1 + count_rows - 1): gather of the grad_output rows that
  // read them. A run of rows with regular slot-1 lists (t1.run) reads the same outputs
  // shifted by one row per row, so its pointers just advance.
  auto grad_input_rows = [&](int64_t j0, int64_t j1, int64_t count_rows) {
    auto& src = s.src;
    auto& cf = s.cf;
    src.clear();
    cf.clear();
    for (int64_t e0 = t0.start[j0]; e0 < t0.start[j0 + 1]; ++e0)
      for (int64_t e1 = t1.start[j1]; e1 < t1.start[j1 + 1]; ++e1) {
        src.push_back(go + t0.out[e0] * gos.slot[0] + t1.out[e1] * gos.slot[1]);
        cf.push_back(side[0][t0.corner[e0]] * side[1][t1.corner[e1]]);
      }
    const int count = static_cast<int>(src.size());
    s.p0.resize(count);
    s.p1.resize(count);
    for (int k = 0; k < count; ++k) {
      s.p0[k] = cf[k] * tap[0];
      s.p1[k] = cf[k] * tap[1];
    }
    const size_t extras = t.extra_o.size();
    if (flat_rows && count_rows > 1 && count >= 1 && count <= 4) {
      // No prefetch of these rows' input here (the per-row path below has one): the
      // previous plane's grad_weight pass fetched it (next_x), and re-issuing it cost time
      // (benchmarks/archive/NOTES.md, v12).
      opmath_t* dst = gi + j0 * gis.slot[0] + j1 * L2;
      adjoint_run_any(taps, dst, count, src.data(), s.p0.data(), s.p1.data(), t.offset, L2,
                      count_rows, t.ginside[0].data(), t.ginside[1].data());
      for (int64_t r = 0; r < count_rows; ++r, dst += L2)
        for (int k = 0; k < count; ++k)
          for (size_t e = 0; e < extras; ++e)
            dst[t.extra_j[e]] +=
                cf[k] * tap[t.extra_a[e]] * static_cast<opmath_t>(src[k][r * L2 + t.extra_o[e]]);
      return;
    }
    for (int64_t r = 0; r < count_rows; ++r) {
      if (weights) prefetch_row(x + j0 * is.slot[0] + (j1 + r) * is.slot[1], in_row_bytes);
      if (j1 + r + kAhead < L1)
        prefetch_row_for_write(gi + j0 * gis.slot[0] + (j1 + r + kAhead) * gis.slot[1],
                               in_row_bytes);
      opmath_t* dst = gi + j0 * gis.slot[0] + (j1 + r) * gis.slot[1];
      if (count == 0) {
        std::fill(dst, dst + L2, opmath_t(0));
      } else {
        for (int q = 0; q < count; q += 4)
          adjoint_chunk(taps, dst, q > 0, std::min(4, count - q), src.data() + q, s.p0.data() + q,
                        s.p1.data() + q, t.offset, L2, O2);
        for (int k = 0; k < count; ++k)
          for (size_t e = 0; e < extras; ++e)
            dst[t.extra_j[e]] +=
                cf[k] * tap[t.extra_a[e]] * static_cast<opmath_t>(src[k][t.extra_o[e]]);
        for (int k = 0; k < count; ++k) src[k] += gos.slot[1];
      }
    }
  };
  // grad_weight, output rows (o0, o1 .. o1 + count_rows - 1): the interpolation
  // derivative at the unrounded weight (SPEC §4).
  auto grad_weight_rows = [&](int64_t o0, int64_t o1, int64_t count_rows) {
    const int count = outer_rows(s.rows, g, ws, o0, o1, is.slot[0], is.slot[1], true);
    const int64_t at = o0 * gos.slot[0] + o1 * gos.slot[1];
    weight_grad_rows(s.dots, s.rows, count, x, go + at, count_rows, is.slot[1], gos.slot[1], t,
                     read_offset, next_go == nullptr ? nullptr : next_go + at,
                     next_x == nullptr ? nullptr : next_x + o0 * is.slot[0] + o1 * is.slot[1],
                     row_bytes, flat_weight_rows);
  };

  // Slab by slab along slot 0 (the whole plane for D <= 2): grad_input rows, then the
  // grad_weight rows of the same slab while its grad_output rows are still in L1 / L2.
  if (weights) s.dots.clear();
  for (int64_t i = 0; i < std::max(L0, O0); ++i) {
    if (i < L0 && gi != nullptr)
      for (int64_t j1 = 0; j1 < L1;) {
        const int64_t rows_run = std::max<int64_t>(1, t1.run[j1]);
        grad_input_rows(i, j1, rows_run);
        j1 += rows_run;
      }
    if (!weights || i >= O0) continue;
    for (int64_t o1 = 0; o1 < w1.lo; ++o1) grad_weight_rows(i, o1, 1);
    if (w1.hi > w1.lo) grad_weight_rows(i, w1.lo, w1.hi - w1.lo);
    for (int64_t o1 = std::max(w1.hi, w1.lo); o1 < O1; ++o1) grad_weight_rows(i, o1, 1);
  }
  if (!weights) return;
  opmath_t sum[kSlots] = {0, 0, 0};
  combine_plane_dots(sum, s.dots, g, ws);
  for (int k = 0; k < kSlots; ++k) partial[k] = static_cast<double>(sum[k]);
}

template class PlaneScratch<float>;
template class PlaneScratch<double>;
template class PlaneBackward<float>;
template class PlaneBackward<double>;

// Dense (n, c) planes of float / double; partials: kSlots per plane, or null.
void backward_planar(const BackwardCall& call) {
  const Geometry& g = call.g;
  const Strides &gos = call.gos, &is = call.is, &gis = call.gis;
  double* partials = call.partials;
  dispatch_type<float, double>(call.dtype, "backward_planar", [&](auto type) {
    using scalar_t = typename decltype(type)::type;
    const scalar_t* grad_out = static_cast<const scalar_t*>(call.grad_output);
    const scalar_t* in = static_cast<const scalar_t*>(call.input);
    scalar_t* grad_in = static_cast<scalar_t*>(call.grad_input);
    const BackwardShifts<scalar_t> shifts(call.weight, g, call.active);
    const PlaneBackward<scalar_t> kernel(g, call.active, shifts.read, shifts.interp);
    const int64_t grain = std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, g.in_plane()));
    at::parallel_for(0, g.batch * g.channels, grain, [&](int64_t begin, int64_t end) {
      PlaneScratch<scalar_t> scratch;
      for (int64_t p = begin; p < end; ++p) {
        const int64_t n = p / g.channels, c = p % g.channels;
        // The next plane's grad_output and input are prefetched during this plane's
        // grad_weight phase (input too: benchmarks/archive/NOTES.md v12).
        const scalar_t* next_go = nullptr;
        const scalar_t* next_x = nullptr;
        if (p + 1 < end) {
          const int64_t nn = (p + 1) / g.channels, nc = (p + 1) % g.channels;
          next_go = grad_out + nn * gos.batch + nc * gos.channel;
          next_x = in + nn * is.batch + nc * is.channel;
        }
        kernel.plane(scratch, c, grad_out + n * gos.batch + c * gos.channel,
                     in + n * is.batch + c * is.channel,
                     grad_in == nullptr ? nullptr : grad_in + n * gis.batch + c * gis.channel, gos,
                     is, gis, next_go, next_x,
                     partials == nullptr ? nullptr : partials + p * kSlots);
      }
    });
  });
}

// backward_planar for reduced-precision storage (bfloat16, half): each plane is widened into
// float buffers, the float kernel runs there (its flat runs vectorise; a reduced-type one
// would convert per element inside them: benchmarks/archive/NOTES.md v14), and grad_input is
// rounded back. Same op-math values in, float accumulation.
void backward_planar_widened(const BackwardCall& call) {
  const Geometry& g = call.g;
  const Strides &gos = call.gos, &is = call.is, &gis = call.gis;
  double* partials = call.partials;
  dispatch_type<c10::BFloat16, c10::Half>(call.dtype, "backward_planar_widened", [&](auto type) {
    using scalar_t = typename decltype(type)::type;
    using opmath_t = at::opmath_type<scalar_t>;
    const scalar_t* grad_out = static_cast<const scalar_t*>(call.grad_output);
    const scalar_t* in = static_cast<const scalar_t*>(call.input);
    scalar_t* grad_in = static_cast<scalar_t*>(call.grad_input);
    const BackwardShifts<opmath_t> shifts(call.weight, g, call.active);
    const PlaneBackward<opmath_t> kernel(g, call.active, shifts.read, shifts.interp);
    const int64_t P = g.in_plane(), Q = g.out_plane();
    const Strides ps = plane_strides(g.length), qs = plane_strides(g.out_length);
    auto dense = [&](const Strides& s, const Strides& plane, const int64_t* length) {
      for (int d = 0; d < kSlots; ++d)
        if (length[d] > 1 && s.slot[d] != plane.slot[d]) return false;
      return true;
    };
    TORCH_INTERNAL_ASSERT(dense(is, ps, g.length) &&
                              (grad_in == nullptr || dense(gis, ps, g.length)) &&
                              dense(gos, qs, g.out_length),
                          "backward_planar_widened: planes must be dense");
    const int64_t grain = std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, P));
    at::parallel_for(0, g.batch * g.channels, grain, [&](int64_t begin, int64_t end) {
      PlaneScratch<opmath_t> scratch;
      std::vector<opmath_t> buffer(2 * P + Q);
      opmath_t* x = buffer.data();
      opmath_t* gi = x + P;
      opmath_t* go = gi + P;
      for (int64_t p = begin; p < end; ++p) {
        const int64_t n = p / g.channels, c = p % g.channels;
        const scalar_t* x_plane = in + n * is.batch + c * is.channel;
        const scalar_t* go_plane = grad_out + n * gos.batch + c * gos.channel;
        if (partials != nullptr)  // grad_input alone does not read the input
          for (int64_t i = 0; i < P; ++i) x[i] = static_cast<opmath_t>(x_plane[i]);
        for (int64_t i = 0; i < Q; ++i) go[i] = static_cast<opmath_t>(go_plane[i]);
        kernel.plane(scratch, c, go, x, grad_in == nullptr ? nullptr : gi, qs, ps, ps, nullptr,
                     nullptr, partials == nullptr ? nullptr : partials + p * kSlots);
        if (grad_in != nullptr) store_row(grad_in + n * gis.batch + c * gis.channel, gi, P);
      }
    });
  });
}

}  // namespace torchshift2_cpu
