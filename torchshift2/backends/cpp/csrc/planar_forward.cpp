// Planar forward (NCHW and other layouts whose rows are unit-stride): the SSL forward
// (values moved, never computed: T is an integer carrier of the element size, so every
// dtype shares that code) and the Active Shift forward (interpolation), plus their
// per-plane kernels of planes.h.
//
// All per-channel index work (which source row each output row reads, where a row needs
// its padding rule) is done once per call into per-channel tables; the per-row code is a
// short vector loop over the row's interior plus a list of edge terms.
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <map>
#include <vector>

#include "cache.h"
#include "copy.h"
#include "corners.h"
#include "dispatch.h"
#include "geometry.h"
#include "kernels.h"
#include "planes.h"
#include "rows.h"
#include "table_arena.h"

namespace torchshift2_cpu {
namespace {

// ---------------------------------------------------------------------------------------
// SSL forward.

template <typename T>
void copy_row(const T* x, int64_t xs, T* y, int64_t ys, const Geometry& g, int64_t shift, T fill) {
  const int64_t out_length = g.out_length[2], length = g.length[2], before = g.before[2];
  const Interior in = interior(out_length, length, before, shift, 1);
  auto edge = [&](int64_t o) {
    const int64_t idx = source_index(o + before - shift, length, g.padding);
    y[o * ys] = idx == kOutside ? fill : x[idx * xs];
  };
  for (int64_t o = 0; o < in.lo; ++o) edge(o);
  const T* src = x + (before - shift) * xs;
  if (xs == 1 && ys == 1) {
    copy_bytes(y + in.lo, src + in.lo, (in.hi - in.lo) * sizeof(T));
  } else {
    for (int64_t o = in.lo; o < in.hi; ++o) y[o * ys] = src[o * xs];
  }
  for (int64_t o = in.hi; o < out_length; ++o) edge(o);
}

}  // namespace

// One (n, c) plane: y = x shifted by the channel's rounded shift.
template <typename T>
void ssl_forward_plane(const T* x, const int64_t* xs, T* y, const int64_t* ys, const Geometry& g,
                       const ChannelShift<double>& cs, T fill) {
  for (int64_t o0 = 0; o0 < g.out_length[0]; ++o0) {
    const int64_t i0 = source_index(o0 + g.before[0] - cs.shift[0], g.length[0], g.padding);
    for (int64_t o1 = 0; o1 < g.out_length[1]; ++o1) {
      const int64_t i1 = source_index(o1 + g.before[1] - cs.shift[1], g.length[1], g.padding);
      T* yrow = y + o0 * ys[0] + o1 * ys[1];
      if (i0 == kOutside || i1 == kOutside) {
        for (int64_t o = 0; o < g.out_length[2]; ++o) yrow[o * ys[2]] = fill;
        continue;
      }
      copy_row(x + i0 * xs[0] + i1 * xs[1], xs[2], yrow, ys[2], g, cs.shift[2], fill);
    }
  }
}

namespace {

// SSL, one plane, when a slab (slots 1, 2) is one flat run in both tensors and slot 2 is
// not cropped: the rows of a slab whose source rows are inside are one copy, shifted by
// the slot-2 shift; the few columns per row that this wraps are then fixed. The plan is
// made per plane (a few index computations) into a per-task buffer of L2 indices: per
// channel tables cost more than the copy itself on small planes.
struct FlatSSL {
  Interior rows{0, 0}, cols{0, 0};
  int64_t s2 = 0;
  // Source column (or kOutside) of each column to fix: [0, cols.lo), then [cols.hi, L2).
  const int64_t* edge_src = nullptr;
};

// The interior rows of a slab (the rows reading inside) as one flat copy from slab x to slab
// y: y[dst, dst + n) = x[src, src + n), nothing when n <= 0. Reads are clamped to the slab;
// the clamped elements are edge columns of the first / last row, which edge_columns writes.
struct FlatRange {
  int64_t dst, src, n;
};

inline FlatRange flat_interior(const Geometry& g, const FlatSSL& f, int64_t s1) {
  const int64_t L1 = g.length[1], L2 = g.length[2];
  FlatRange r{f.rows.lo * L2, (f.rows.lo + g.before[1] - s1) * L2 - f.s2,
              (f.rows.hi - f.rows.lo) * L2};
  if (r.src < 0) {
    r.dst -= r.src;
    r.n += r.src;
    r.src = 0;
  }
  r.n = std::min(r.n, L1 * L2 - r.src);
  return r;
}

// The edge columns of `rows` output rows from y on, whose source rows start at x, a column
// at a time: a few strided stores per column instead of a loop per row (the per-row loops
// took a large share of a small plane's time; benchmarks/archive/NOTES.md v10). x is only read for
// columns whose source is inside (none with zeros padding).
template <typename T>
void edge_columns(T* y, const T* x, int64_t rows, int64_t L2, const FlatSSL& f, T fill) {
  const int64_t* src = f.edge_src;
  auto column = [&](int64_t o, int64_t from) {
    if (from == kOutside)
      for (int64_t r = 0; r < rows; ++r) y[r * L2 + o] = fill;
    else
      for (int64_t r = 0; r < rows; ++r) y[r * L2 + o] = x[r * L2 + from];
  };
  for (int64_t o = 0; o < f.cols.lo; ++o) column(o, *src++);
  for (int64_t o = f.cols.hi; o < L2; ++o) column(o, *src++);
}

// A whole slab: the rows whose source rows are outside (a fill or a row copy each), the
// interior rows as one flat copy, then their edge columns (edge_columns).
template <typename T>
void ssl_forward_slab_flat(const T* x, T* y, const Geometry& g, const FlatSSL& f, int64_t s1,
                           T fill) {
  const int64_t L1 = g.length[1], L2 = g.length[2], O1 = g.out_length[1], b1 = g.before[1];
  // The columns of output row yr that read through padding, from source row xr.
  auto edges = [&](T* yr, const T* xr) {
    const int64_t* src = f.edge_src;
    for (int64_t o = 0; o < f.cols.lo; ++o, ++src) yr[o] = *src == kOutside ? fill : xr[*src];
    for (int64_t o = f.cols.hi; o < L2; ++o, ++src) yr[o] = *src == kOutside ? fill : xr[*src];
  };
  auto row_from = [&](int64_t o1, const T* src) {
    T* yr = y + o1 * L2;
    if (src == nullptr) {
      std::fill(yr, yr + L2, fill);
      return;
    }
    const int64_t lo = clamp(f.s2, 0, L2), hi = clamp(L2 + f.s2, lo, L2);
    if (hi > lo) copy_bytes(yr + lo, src + lo - f.s2, (hi - lo) * sizeof(T));
    edges(yr, src);
  };
  for (int64_t o1 = 0; o1 < f.rows.lo; ++o1) {
    const int64_t i1 = source_index(o1 + b1 - s1, L1, g.padding);
    row_from(o1, i1 == kOutside ? nullptr : x + i1 * L2);
  }
  if (f.rows.hi > f.rows.lo) {
    const FlatRange r = flat_interior(g, f, s1);
    if (r.n > 0) copy_bytes(y + r.dst, x + r.src, r.n * sizeof(T));
    edge_columns(y + f.rows.lo * L2, x + (f.rows.lo + b1 - s1) * L2, f.rows.hi - f.rows.lo, L2, f,
                 fill);
  }
  for (int64_t o1 = std::max(f.rows.hi, f.rows.lo); o1 < O1; ++o1) {
    const int64_t i1 = source_index(o1 + b1 - s1, L1, g.padding);
    row_from(o1, i1 == kOutside ? nullptr : x + i1 * L2);
  }
}

// edge_src: room for L2 indices, which the plan points into.
FlatSSL flat_ssl_plan(const Geometry& g, const ChannelShift<double>& cs, int64_t* edge_src) {
  FlatSSL f;
  const int64_t L2 = g.length[2];
  f.rows = interior(g.out_length[1], g.length[1], g.before[1], cs.shift[1], 1);
  f.s2 = cs.shift[2];
  f.cols = interior(L2, L2, 0, f.s2, 1);
  f.edge_src = edge_src;
  for (int64_t o = 0; o < f.cols.lo; ++o) *edge_src++ = source_index(o - f.s2, L2, g.padding);
  for (int64_t o = f.cols.hi; o < L2; ++o) *edge_src++ = source_index(o - f.s2, L2, g.padding);
  return f;
}

// The streamed path writes a row at a time, a run per row and per edge column, which on
// short rows costs more than the streaming saves. So a slab of rows shorter than
// kShortRowBytes whose columns shift is made whole in a buffer (ssl_forward_slab_flat) and
// then streamed, if it fits in kBufferedSlabBytes; and a call whose rows are that short
// streams only when at most half its channels shift their columns (the others stream whole
// slabs as one run); otherwise plain stores win (benchmarks/archive/NOTES.md, v18).
constexpr int64_t kShortRowBytes = 128;
constexpr int64_t kBufferedSlabBytes = 4096;

// Channel cs's output plane into ys (the streamed path), a slab at a time: short-row slabs
// as said above; otherwise a row at a time, as ssl_forward_slab_flat makes them: per row its
// fill, or its edge columns and interior run; the interior rows of an unshifted column as
// one run. xs0: the input's slot-0 stride; buffer: room for kBufferedSlabBytes.
template <typename T>
void ssl_forward_plane_streamed(const T* x, int64_t xs0, const Geometry& g, const FlatSSL& f,
                                const ChannelShift<double>& cs, T fill, T* buffer,
                                LineStreamer<T>& ys) {
  const int64_t L1 = g.length[1], L2 = g.length[2], O1 = g.out_length[1], b1 = g.before[1];
  const int64_t s1 = cs.shift[1];
  const bool whole_rows = f.cols.lo == 0 && f.cols.hi == L2;
  // An edge column read from source column `from` of row xr, or through zeros padding.
  auto edge = [&](const T* xr, int64_t from) {
    if (from == kOutside)
      ys.fill(1);
    else
      ys.copy(xr + from, 1);
  };
  auto row = [&](int64_t o1, const T* slab) {
    const int64_t i1 = source_index(o1 + b1 - s1, L1, g.padding);
    if (i1 == kOutside) {
      ys.fill(L2);
      return;
    }
    const T* xr = slab + i1 * L2;
    const int64_t* src = f.edge_src;
    for (int64_t o = 0; o < f.cols.lo; ++o) edge(xr, *src++);
    ys.copy(xr + f.cols.lo - f.s2, f.cols.hi - f.cols.lo);
    for (int64_t o = f.cols.hi; o < L2; ++o) edge(xr, *src++);
  };
  for (int64_t o0 = 0; o0 < g.out_length[0]; ++o0) {
    const int64_t i0 = source_index(o0 + g.before[0] - cs.shift[0], g.length[0], g.padding);
    if (i0 == kOutside) {
      ys.fill(O1 * L2);
      continue;
    }
    const T* slab = x + i0 * xs0;
    if (!whole_rows && L2 * int64_t(sizeof(T)) < kShortRowBytes &&
        O1 * L2 * int64_t(sizeof(T)) <= kBufferedSlabBytes) {
      ssl_forward_slab_flat(slab, buffer, g, f, s1, fill);
      ys.copy(buffer, O1 * L2);
      continue;
    }
    if (!whole_rows) {
      for (int64_t o1 = 0; o1 < O1; ++o1) row(o1, slab);
      continue;
    }
    for (int64_t o1 = 0; o1 < f.rows.lo; ++o1) row(o1, slab);
    if (f.rows.hi > f.rows.lo)
      ys.copy(slab + (f.rows.lo + b1 - s1) * L2, (f.rows.hi - f.rows.lo) * L2);
    for (int64_t o1 = std::max(f.rows.hi, f.rows.lo); o1 < O1; ++o1) row(o1, slab);
  }
}

}  // namespace

// One plane whose slabs are flat (see FlatSSL); xs0 / ys0: the slot-0 strides; edge_scratch:
// room for L2 indices.
template <typename T>
void ssl_forward_plane_flat(const T* x, int64_t xs0, T* y, int64_t ys0, const Geometry& g,
                            const ChannelShift<double>& cs, T fill, int64_t* edge_scratch) {
  const int64_t L2 = g.length[2], O1 = g.out_length[1];
  const FlatSSL f = flat_ssl_plan(g, cs, edge_scratch);
  for (int64_t o0 = 0; o0 < g.out_length[0]; ++o0) {
    T* ys = y + o0 * ys0;
    const int64_t i0 = source_index(o0 + g.before[0] - cs.shift[0], g.length[0], g.padding);
    if (i0 == kOutside) {
      std::fill(ys, ys + O1 * L2, fill);
      continue;
    }
    ssl_forward_slab_flat(x + i0 * xs0, ys, g, f, cs.shift[1], fill);
  }
}

// One dense plane shifted in place with zeros padding (no crop), without a buffer: every
// read through padding is the fill, so the only reads are each slab's interior, one
// overlap-safe memmove from its source slab. Slabs are visited away from the slot-0 shift,
// so a source slab is read before its own output is written, and within a slab the fills
// come after the move they would clobber. Half the memory traffic of going through a buffer.
template <typename T>
void ssl_shift_plane_inplace_zeros(T* p, const Geometry& g, const ChannelShift<double>& cs, T fill,
                                   int64_t* edge_scratch) {
  const int64_t L0 = g.length[0], L1 = g.length[1], L2 = g.length[2], slab = L1 * L2;
  const int64_t s0 = cs.shift[0], s1 = cs.shift[1];
  const FlatSSL f = flat_ssl_plan(g, cs, edge_scratch);
  auto shift_slab = [&](int64_t o0) {
    T* ys = p + o0 * slab;
    const int64_t i0 = o0 - s0;
    if (i0 < 0 || i0 >= L0 || f.rows.hi <= f.rows.lo) {
      std::fill(ys, ys + slab, fill);
      return;
    }
    const FlatRange r = flat_interior(g, f, s1);
    if (r.n > 0) move_bytes(ys + r.dst, p + i0 * slab + r.src, r.n * sizeof(T));
    // Zeros padding: every edge column is the fill, no source is read.
    edge_columns(ys + f.rows.lo * L2, static_cast<const T*>(ys), f.rows.hi - f.rows.lo, L2, f,
                 fill);
    std::fill(ys, ys + f.rows.lo * L2, fill);
    std::fill(ys + f.rows.hi * L2, ys + slab, fill);
  };
  if (s0 > 0)
    for (int64_t o0 = L0 - 1; o0 >= 0; --o0) shift_slab(o0);
  else
    for (int64_t o0 = 0; o0 < L0; ++o0) shift_slab(o0);
}

void ssl_forward_strided(const ForwardCall& call) {
  const Geometry& g = call.g;
  const Shifts<double> shifts = channel_shifts<double>(call.weight, g, /*rounded=*/true);
  dispatch_carrier<1, 2, 4, 8>(c10::elementSize(call.dtype), [&](auto type) {
    using T = typename decltype(type)::type;
    const T* in = static_cast<const T*>(call.input);
    T* out = static_cast<T*>(call.output);
    const Strides &is = call.is, &os = call.os;
    T fill;
    std::memcpy(&fill, &call.fill, sizeof(T));
    const int64_t grain =
        std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, g.out_plane()));
    at::parallel_for(0, g.batch * g.channels, grain, [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) {
        const int64_t n = p / g.channels, c = p % g.channels;
        ssl_forward_plane(in + n * is.batch + c * is.channel, is.slot,
                          out + n * os.batch + c * os.channel, os.slot, g, shifts[c], fill);
      }
    });
  });
}

void ssl_forward_planar(const ForwardCall& call) {
  const Geometry& g = call.g;
  TORCH_INTERNAL_ASSERT(flat_planes(g, call.is, call.os), "ssl_forward_planar: flat planes only");
  const Shifts<double> shifts = channel_shifts<double>(call.weight, g, /*rounded=*/true);
  dispatch_carrier<1, 2, 4, 8>(c10::elementSize(call.dtype), [&](auto type) {
    using T = typename decltype(type)::type;
    const T* in = static_cast<const T*>(call.input);
    T* out = static_cast<T*>(call.output);
    const Strides &is = call.is, &os = call.os;
    T fill;
    std::memcpy(&fill, &call.fill, sizeof(T));
    const int64_t L2 = g.length[2], plane = g.out_plane();
    const int64_t grain = std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, plane));
    auto input_plane = [&](int64_t p) {
      return in + (p / g.channels) * is.batch + (p % g.channels) * is.channel;
    };
    // An output too large for the cache is written with streaming stores (copy.h), the
    // task's planes as one run: a stream per plane would end small planes with a fence and
    // two partial lines each.
    const bool dense_output = (g.out_length[0] == 1 || os.slot[0] == g.out_length[1] * L2) &&
                              os.channel == plane && os.batch == g.channels * plane;
    auto short_rows_pay = [&] {
      if (L2 * int64_t(sizeof(T)) >= kShortRowBytes) return true;
      int64_t moving = 0;
      for (int64_t c = 0; c < g.channels; ++c) moving += shifts[c].shift[2] != 0;
      return 2 * moving <= g.channels;
    };
    const bool stream =
        dense_output && streaming_stores_pay(g.forward_bytes(sizeof(T))) && short_rows_pay();
    at::parallel_for(0, g.batch * g.channels, grain, [&](int64_t begin, int64_t end) {
      std::vector<int64_t> edges(L2);
      if (stream) {
        LineStreamer<T> ys(out + begin * plane, fill);
        alignas(64) char buffer[kBufferedSlabBytes];
        for (int64_t p = begin; p < end; ++p) {
          const ChannelShift<double>& cs = shifts[p % g.channels];
          ssl_forward_plane_streamed(input_plane(p), is.slot[0], g,
                                     flat_ssl_plan(g, cs, edges.data()), cs, fill,
                                     reinterpret_cast<T*>(buffer), ys);
        }
        ys.finish();
        return;
      }
      for (int64_t p = begin; p < end; ++p) {
        const int64_t n = p / g.channels, c = p % g.channels;
        ssl_forward_plane_flat(in + n * is.batch + c * is.channel, is.slot[0],
                               out + n * os.batch + c * os.channel, os.slot[0], g, shifts[c], fill,
                               edges.data());
      }
    });
  });
}

namespace {

// ---------------------------------------------------------------------------------------
// Active Shift forward.

// How the outputs of one slot read their sources: output o, tap a reads
// source_index(o + before - shift - a) (kOutside: zeros padding).
struct SlotTaps {
  int taps = 1;
  Table<int64_t> src;  // [o * taps + a]
};

SlotTaps slot_taps(int64_t out_length, int64_t length, int64_t before, int64_t shift, int taps,
                   int64_t padding) {
  SlotTaps t;
  t.taps = taps;
  t.src.resize(out_length * taps);
  for (int64_t o = 0; o < out_length; ++o)
    for (int a = 0; a < taps; ++a)
      t.src[o * taps + a] = source_index(o + before - shift - a, length, padding);
  return t;
}

// A stencil along slot 2: dst[j] = sum_a tap[a] * src[j + offset[a]] for j in [lo, hi)
// (no padding there), and for every other j of [0, length): zero, plus the edge terms
// (dst_j, src_m, a): dst[j] += tap[a] * src[m], applied in order after the interior.
struct RowPlan {
  int64_t length = 0, lo = 0, hi = 0;
  int64_t offset[2] = {0, 0};
  Table<int64_t> edge_dst, edge_src;
  Table<int8_t> edge_tap;
  // For stencil_run: inside[a][i] = 1 where tap a of output i mod length reads inside
  // [0, length) (i < length + kLanes), and the edge terms that read through padding
  // (a subset of the edge terms: none for zeros padding).
  Table<int32_t> inside[2];  // 32-bit: the selects vectorise at float width
  Table<int64_t> pad_dst, pad_src;
  Table<int8_t> pad_tap;
  void edge(int64_t j, int64_t m, int a) {
    edge_dst.push_back(j);
    edge_src.push_back(m);
    edge_tap.push_back(static_cast<int8_t>(a));
  }
};

// The forward along slot 2: output o, tap a reads source o + before - shift - a.
RowPlan forward_row_plan(int64_t out_length, int64_t length, int64_t before, int64_t shift,
                         int taps, int64_t padding) {
  RowPlan p;
  p.length = out_length;
  const Interior in = interior(out_length, length, before, shift, taps);
  p.lo = in.lo;
  p.hi = in.hi;
  for (int a = 0; a < taps; ++a) p.offset[a] = before - shift - a;
  for (int64_t o = 0; o < out_length; ++o) {
    if (o >= p.lo && o < p.hi) continue;
    for (int a = 0; a < taps; ++a) {
      const int64_t k = o + before - shift - a;
      const int64_t m = source_index(k, length, padding);
      if (m == kOutside) continue;
      p.edge(o, m, a);
      if (k < 0 || k >= length) {
        p.pad_dst.push_back(o);
        p.pad_src.push_back(m);
        p.pad_tap.push_back(static_cast<int8_t>(a));
      }
    }
  }
  for (int a = 0; a < taps; ++a) {
    p.inside[a].resize(out_length + kLanes);
    for (int64_t i = 0; i < out_length + kLanes; ++i) {
      const int64_t k = i % out_length + before - shift - a;
      p.inside[a][i] = k >= 0 && k < length;
    }
  }
  return p;
}

// Edge terms (dst_j, src_m, tap a) of a RowPlan list whose dst_j lies in [from, to):
// d[dst_j] += tap[a] * sum_k coef[k] src[k][at + src_m], in list order.
template <int K, typename scalar_t, typename opmath_t>
inline void add_edge_terms(opmath_t* d, const scalar_t* const* src, int64_t at,
                           const opmath_t* coef, const opmath_t* tap, const Table<int64_t>& dsts,
                           const Table<int64_t>& srcs, const Table<int8_t>& taps, int64_t from,
                           int64_t to) {
  for (size_t e = 0; e < dsts.size(); ++e) {
    const int64_t j = dsts[e];
    if (j < from || j >= to) continue;
    opmath_t v = 0;
    for (int k = 0; k < K; ++k) v += coef[k] * static_cast<opmath_t>(src[k][at + srcs[e]]);
    d[j] += tap[taps[e]] * v;
  }
}

// Per source row k and slot-2 tap a: the coefficient and the read pointer of a stencil row.
template <int K, int A, typename scalar_t, typename opmath_t>
inline void stencil_taps(opmath_t (&c)[K][A], const scalar_t* (&s)[K][A],
                         const scalar_t* const* src, const opmath_t* coef, const opmath_t* tap,
                         const RowPlan& p) {
  for (int k = 0; k < K; ++k)
    for (int a = 0; a < A; ++a) {
      c[k][a] = coef[k] * tap[a];
      s[k][a] = src[k] + p.offset[a];
    }
}

// dst[j] for j in [0, p.length) from K source rows with coefficients coef[k] and the slot-2
// taps tap[a] (SPEC §3 forward rows and §4 grad_input rows alike); kAdd adds to dst instead
// (more source rows than one call takes). dst is op-math.
template <int K, int A, bool kAdd, typename scalar_t, typename opmath_t>
inline void stencil_row(opmath_t* __restrict__ dst, const scalar_t* const* src,
                        const opmath_t* coef, const opmath_t* tap, const RowPlan& p) {
  opmath_t c[K][A];
  const scalar_t* s[K][A];
  stencil_taps<K, A>(c, s, src, coef, tap, p);
  if (!kAdd)
    for (int64_t j = 0; j < p.lo; ++j) dst[j] = opmath_t(0);
#pragma omp simd
  for (int64_t j = p.lo; j < p.hi; ++j) {
    opmath_t v = kAdd ? dst[j] : opmath_t(0);
    for (int k = 0; k < K; ++k)
      for (int a = 0; a < A; ++a) v += c[k][a] * static_cast<opmath_t>(s[k][a][j]);
    dst[j] = v;
  }
  if (!kAdd)
    for (int64_t j = p.hi; j < p.length; ++j) dst[j] = opmath_t(0);
  add_edge_terms<K>(dst, src, 0, coef, tap, p.edge_dst, p.edge_src, p.edge_tap, 0, p.length);
}

// stencil_row for `rows` consecutive output rows of length L2 that are one flat run, as
// are their K source rows (row r of source k at src[k] + r * L2; slot 2 not cropped, so
// p.length == L2): one vector loop over the run from the first row's interior to the last
// row's, whose reads stay inside the K source runs; a tap's reads that wrap into the
// neighbouring row are dropped by p.inside (a select, so what they read never matters). The
// first row's leading and the last row's trailing columns are then done as in stencil_row,
// and the reads through padding of the other edge columns added. Per-row fix-ups instead
// (scalar stores into just-stored vectors) cost as much as the vector work at 28 wide.
template <int K, int A, typename scalar_t, typename opmath_t>
void stencil_run(opmath_t* __restrict__ dst, const scalar_t* const* src, const opmath_t* coef,
                 const opmath_t* tap, const RowPlan& p, int64_t rows) {
  const int64_t L2 = p.length;
  opmath_t c[K][A];
  const scalar_t* s[K][A];
  stencil_taps<K, A>(c, s, src, coef, tap, p);
  // Columns [from, to) of row r as stencil_row computes them outside the interior.
  auto edge_columns = [&](int64_t r, int64_t from, int64_t to) {
    opmath_t* d = dst + r * L2;
    for (int64_t j = from; j < to; ++j) d[j] = opmath_t(0);
    add_edge_terms<K>(d, src, r * L2, coef, tap, p.edge_dst, p.edge_src, p.edge_tap, from, to);
  };
  if (p.hi <= p.lo) {
    for (int64_t r = 0; r < rows; ++r) edge_columns(r, 0, L2);
    return;
  }
  const int32_t* const inside[2] = {p.inside[0].data(), p.inside[A - 1].data()};
  masked_taps<K, A>(dst, s, c, inside, p.lo, (rows - 1) * L2 + p.hi, L2);
  edge_columns(0, 0, p.lo);
  edge_columns(rows - 1, p.hi, L2);
  if (p.pad_dst.empty()) return;
  // The first row's columns below p.lo and the last row's from p.hi on are already whole.
  for (int64_t r = 0; r < rows; ++r)
    add_edge_terms<K>(dst + r * L2, src, r * L2, coef, tap, p.pad_dst, p.pad_src, p.pad_tap,
                      r == 0 ? p.lo : 0, r == rows - 1 ? p.hi : L2);
}

// Any number (1-4) of source rows as one flat run (stencil_run).
template <int A, typename scalar_t, typename opmath_t>
void stencil_run_any(opmath_t* dst, int count, const scalar_t* const* src, const opmath_t* coef,
                     const opmath_t* tap, const RowPlan& p, int64_t rows) {
  dispatch_count<1, 2, 3, 4>(
      count, [&](auto k) { stencil_run<decltype(k)::value, A>(dst, src, coef, tap, p, rows); });
}

// Any number of source rows, four at a time.
template <int A, typename scalar_t, typename opmath_t>
void stencil_rows(opmath_t* dst, int64_t count, const scalar_t* const* src, const opmath_t* coef,
                  const opmath_t* tap, const RowPlan& p) {
  if (count == 0) {
    std::fill(dst, dst + p.length, opmath_t(0));
    return;
  }
  for (int64_t k = 0; k < count; k += 4) {
    dispatch_bool(k > 0, [&](auto add) {
      dispatch_count<1, 2, 3, 4>(std::min<int64_t>(4, count - k), [&](auto m) {
        stencil_row<decltype(m)::value, A, decltype(add)::value>(dst, src + k, coef + k, tap, p);
      });
    });
  }
}

// Tap weights of one slot: (1 - frac, frac) where it interpolates, else the one tap (1).
template <typename opmath_t>
struct TapWeights {
  int taps = 1;
  opmath_t w[2] = {1, 0};
};

template <typename opmath_t>
TapWeights<opmath_t> tap_weights(bool interpolates, opmath_t frac) {
  TapWeights<opmath_t> t;
  if (interpolates) {
    t.taps = 2;
    t.w[0] = side_weight(frac, 0);
    t.w[1] = side_weight(frac, 1);
  }
  return t;
}

// Active forward: per channel the tap weights, and the index tables of its integer shifts
// (the taps of slots 0 / 1 and the slot-2 row plan; channels with equal integer shifts share
// them); per output row the up to four source rows it interpolates between, then one
// stencil row.
struct ForwardTables {
  SlotTaps t0, t1;
  RowPlan row;
};

template <typename opmath_t>
struct ForwardPlan {
  TapWeights<opmath_t> w0, w1, w2;
  int64_t shift1 = 0;  // integer shift along slot 1
  int64_t tables = 0;  // index into Plans::tables
};

}  // namespace

template <typename scalar_t>
struct ActiveForwardPlanes<scalar_t>::Plans {
  Table<ForwardPlan<opmath_t>> plans;
  Table<ForwardTables> tables;
};

template <typename scalar_t>
ActiveForwardPlanes<scalar_t>::ActiveForwardPlanes(const Geometry& g,
                                                   const Shifts<opmath_t>& shifts)
    : g_(g) {
  auto* p = new Plans;
  plans_.reset(p);
  p->plans.resize(g.channels);
  std::map<std::array<int64_t, kSlots>, int64_t> ids;
  for (int64_t c = 0; c < g.channels; ++c) {
    const auto& cs = shifts[c];
    ForwardPlan<opmath_t>& f = p->plans[c];
    f.w0 = tap_weights<opmath_t>(g.is_spatial[0], cs.frac[0]);
    f.w1 = tap_weights<opmath_t>(g.is_spatial[1], cs.frac[1]);
    f.w2 = tap_weights<opmath_t>(g.is_spatial[2], cs.frac[2]);
    f.shift1 = cs.shift[1];
    const std::array<int64_t, kSlots> key{cs.shift[0], cs.shift[1], cs.shift[2]};
    const auto found = ids.emplace(key, static_cast<int64_t>(p->tables.size()));
    f.tables = found.first->second;
    if (!found.second) continue;
    ForwardTables& t = p->tables.emplace_back();
    t.t0 = slot_taps(g.out_length[0], g.length[0], g.before[0], cs.shift[0], f.w0.taps, g.padding);
    t.t1 = slot_taps(g.out_length[1], g.length[1], g.before[1], cs.shift[1], f.w1.taps, g.padding);
    t.row = forward_row_plan(g.out_length[2], g.length[2], g.before[2], cs.shift[2], f.w2.taps,
                             g.padding);
  }
}

template <typename scalar_t>
ActiveForwardPlanes<scalar_t>::~ActiveForwardPlanes() = default;

template <typename scalar_t>
void ActiveForwardPlanes<scalar_t>::plane(int64_t c, const scalar_t* x, const Strides& is,
                                          scalar_t* y, const Strides& os, opmath_t* buffer,
                                          int64_t o0_begin, int64_t o0_end) const {
  const Geometry& g = g_;
  const int64_t O0 = o0_end < 0 ? g.out_length[0] : o0_end;
  const int64_t O1 = g.out_length[1], O2 = g.out_length[2];
  const ForwardPlan<opmath_t>& f = plans_->plans[c];
  const ForwardTables& t = plans_->tables[f.tables];
  const bool dense_out = os.slot[2] == 1 || O2 == 1;
  const scalar_t* src[4];
  opmath_t coef[4];
  // Output rows along slot 1 whose slot-1 taps all read inside: with flat planes (and
  // slot 2 not cropped) each slab's run of them is one stencil_run.
  const int64_t L1 = g.length[1], L2 = g.length[2];
  const bool flat = flat_planes(g, is, os);
  const Interior run = flat ? interior(O1, L1, g.before[1], f.shift1, f.w1.taps) : Interior{0, 0};
  for (int64_t o0 = o0_begin; o0 < O0; ++o0)
    for (int64_t o1 = 0; o1 < O1; ++o1) {
      if (o1 == run.lo && run.hi - run.lo > 1) {
        int count = 0;
        for (int a0 = 0; a0 < f.w0.taps; ++a0) {
          const int64_t i0 = t.t0.src[o0 * f.w0.taps + a0];
          if (i0 == kOutside) continue;
          for (int a1 = 0; a1 < f.w1.taps; ++a1) {
            src[count] = x + i0 * is.slot[0] + t.t1.src[o1 * f.w1.taps + a1] * L2;
            coef[count++] = f.w0.w[a0] * f.w1.w[a1];
          }
        }
        scalar_t* yrun = y + (o0 - o0_begin) * os.slot[0] + o1 * L2;
        opmath_t* dst = buffer == nullptr ? reinterpret_cast<opmath_t*>(yrun) : buffer;
        const int64_t rows = run.hi - run.lo;
        if (count == 0)
          std::fill(dst, dst + rows * L2, opmath_t(0));
        else
          dispatch_count<1, 2>(f.w2.taps, [&](auto taps) {
            stencil_run_any<decltype(taps)::value>(dst, count, src, coef, f.w2.w, t.row, rows);
          });
        if (buffer != nullptr) store_row(yrun, dst, rows * L2);
        o1 = run.hi - 1;
        continue;
      }
      int count = 0;
      for (int a0 = 0; a0 < f.w0.taps; ++a0) {
        const int64_t i0 = t.t0.src[o0 * f.w0.taps + a0];
        if (i0 == kOutside) continue;
        for (int a1 = 0; a1 < f.w1.taps; ++a1) {
          const int64_t i1 = t.t1.src[o1 * f.w1.taps + a1];
          if (i1 == kOutside) continue;
          src[count] = x + i0 * is.slot[0] + i1 * is.slot[1];
          coef[count++] = f.w0.w[a0] * f.w1.w[a1];
        }
      }
      scalar_t* yr = y + (o0 - o0_begin) * os.slot[0] + o1 * os.slot[1];
      opmath_t* dst = buffer == nullptr ? reinterpret_cast<opmath_t*>(yr) : buffer;
      dispatch_count<1, 2>(f.w2.taps, [&](auto taps) {
        stencil_rows<decltype(taps)::value>(dst, count, src, coef, f.w2.w, t.row);
      });
      if (buffer == nullptr) continue;
      if (dense_out)
        store_row(yr, dst, O2);
      else
        for (int64_t o = 0; o < O2; ++o) yr[o * os.slot[2]] = round_to<scalar_t>(dst[o]);
    }
}

template class ActiveForwardPlanes<float>;
template class ActiveForwardPlanes<double>;
template class ActiveForwardPlanes<c10::BFloat16>;
template class ActiveForwardPlanes<c10::Half>;

// Active Shift forward of (n, c) planes whose input rows are unit-stride.
void active_forward_planar(const ForwardCall& call) {
  const Geometry& g = call.g;
  const Strides &is = call.is, &os = call.os;
  TORCH_INTERNAL_ASSERT(is.slot[2] == 1 || g.length[2] == 1, "planar input must be unit-stride");
  dispatch_type<float, double, c10::BFloat16, c10::Half>(
      call.dtype, "active_forward_planar", [&](auto type) {
        using scalar_t = typename decltype(type)::type;
        using opmath_t = at::opmath_type<scalar_t>;
        const scalar_t* in = static_cast<const scalar_t*>(call.input);
        scalar_t* out = static_cast<scalar_t*>(call.output);
        const Shifts<opmath_t> shifts = channel_shifts<opmath_t>(call.weight, g, /*rounded=*/false);
        const ActiveForwardPlanes<scalar_t> kernel(g, shifts);
        const bool buffered = kernel.buffered(os);
        const int64_t grain =
            std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, g.out_plane()));
        at::parallel_for(0, g.batch * g.channels, grain, [&](int64_t begin, int64_t end) {
          std::vector<opmath_t> buffer(buffered ? kernel.buffer_size() : 0);
          for (int64_t p = begin; p < end; ++p) {
            const int64_t n = p / g.channels, c = p % g.channels;
            kernel.plane(c, in + n * is.batch + c * is.channel, is,
                         out + n * os.batch + c * os.channel, os,
                         buffered ? buffer.data() : nullptr);
          }
        });
      });
}

// The per-plane SSL kernels of planes.h, for every carrier.
#define TS2_INSTANTIATE(T)                                                                         \
  template void ssl_forward_plane<T>(const T*, const int64_t*, T*, const int64_t*,                 \
                                     const Geometry&, const ChannelShift<double>&, T);             \
  template void ssl_forward_plane_flat<T>(const T*, int64_t, T*, int64_t, const Geometry&,         \
                                          const ChannelShift<double>&, T, int64_t*);               \
  template void ssl_shift_plane_inplace_zeros<T>(T*, const Geometry&, const ChannelShift<double>&, \
                                                 T, int64_t*);
TS2_INSTANTIATE(uint8_t)
TS2_INSTANTIATE(int16_t)
TS2_INSTANTIATE(int32_t)
TS2_INSTANTIATE(int64_t)
#undef TS2_INSTANTIATE

}  // namespace torchshift2_cpu
