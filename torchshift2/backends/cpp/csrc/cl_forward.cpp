// Channels-last forward (channels innermost: channels_last, channels_last_3d, or (N, L, C)
// for 1D; every row (n, i0, i1) a W x C block): the taps and the gathers.
//
// Taps: the shift of channel c by d reads, at every output position o, the source position
// o + before - d. Channels sharing an offset d form a *tap*; the padding rule of a tap's
// read depends only on the position, never on the channel, so a tap is a plain vector read
// of the channels it covers from one source row (SSL: a masked move; Active Shift: each of
// the 2^D interpolation corners of a channel is a tap with its weight as a per-lane
// coefficient). A 64-byte block of channels then costs one vector read per tap that
// covers it: an output row is a sparse depthwise convolution with per-block tap lists.
//
// Gathers (gather_plan.h): one indexed read per block and corner, whatever the shifts of
// the block's channels; faster than the taps where a block's shifts differ, for the element
// sizes that have gathers.
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <vector>

#include "cache.h"
#include "copy.h"
#include "corners.h"
#include "dispatch.h"
#include "gather_plan.h"
#include "geometry.h"
#include "kernels.h"
#include "simd.h"
#include "table_arena.h"

namespace torchshift2_cpu {
namespace {

// ---------------------------------------------------------------------------------------
// Taps.

// The taps of one block of channels: which lanes each covers, and (Active Shift) the
// per-lane coefficient.
template <typename opmath_t>
struct BlockTaps {
  Table<int> tap;  // index into TapTable::offset
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
TapTable<opmath_t> tap_table(int64_t channels, int lanes, int corners, const int64_t* out_length,
                             const int64_t* length, const int64_t* before, int64_t padding,
                             OffsetFn offset_of, WeightFn weight_of) {
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
               const TapTable<opmath_t>& t, const BlockTaps<opmath_t>& bt, int64_t o0, int64_t o1,
               const T* image, int64_t stride0, int64_t stride1, int64_t C, int64_t before2,
               int64_t block_offset, int* which) {
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

  void fill(const TapTable<opmath_t>& t, int64_t o0, int64_t o1, const T* image, int64_t stride0,
            int64_t stride1, int64_t C, int64_t before2, int64_t O2) {
    int at = 0;
    lo = 0;
    hi = O2;
    for (size_t b = 0; b < t.blocks.size(); ++b) {
      const BlockTaps<opmath_t>& bt = t.blocks[b];
      first[b] = at;
      const int k = block_rows(base.data() + at, row.data() + at, mask.data() + at,
                               coef.data() + at, t, bt, o0, o1, image, stride0, stride1, C, before2,
                               static_cast<int64_t>(b) * t.lanes, which.data() + at);
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

// How far ahead of its reads a tap prefetches (NOTES.md v17: 4, 8 and 16 KB measured alike).
constexpr int64_t kTapPrefetchBytes = 4096;

// SSL: each lane takes its channel's tap (a masked move); lanes whose tap reads outside keep
// `fill`. Zero-masked reads are ORed (the taps of a block cover disjoint lanes), so there is
// no dependency chain through a merging destination.
template <typename T>
void ssl_forward_cl_taps(const T* in, T* out, const Geometry& g, const Strides& is,
                         const Strides& os, const Shifts<double>& shifts, T fill) {
  constexpr int E = sizeof(T);
  constexpr int L = kVectorBytes / E;
  using B = Bits<E>;
  using V = typename B::V;
  const int64_t C = g.channels, O0 = g.out_length[0], O1 = g.out_length[1];
  const int64_t O2 = g.out_length[2];
  const TapTable<float> t = tap_table<float>(
      C, L, 1, g.out_length, g.length, g.before, g.padding,
      [&](int64_t c, int) {
        return Offset{shifts[c].shift[0], shifts[c].shift[1], shifts[c].shift[2]};
      },
      [](int64_t, int) { return 1.0f; });
  uint64_t fill_bits = 0;
  std::memcpy(&fill_bits, &fill, E);
  const int64_t nblocks = static_cast<int64_t>(t.blocks.size());
  const int64_t rows = g.batch * O0 * O1;
  const int64_t grain = std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, O2 * C));
  // Blocks of several taps read each source row at a stride (one line in four or fewer):
  // their next columns are prefetched where the sources come from memory (cache.h).
  const int64_t traffic = g.forward_bytes(E);
  const bool prefetch = strided_prefetch_pays(traffic);
  // Beyond the cache, whole blocks that start on a cache line are streamed out (cache.h;
  // AVX-512 only: the other builds have no Bits::stream).
#if defined(TS2_AVX512)
  const bool stream = streaming_stores_pay(traffic) && blocks_on_lines(out, os, C, E);
#else
  const bool stream = false;
#endif
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
      const int64_t ahead = std::max<int64_t>(4, kTapPrefetchBytes / (stride * E));
      for (; w + 4 <= rt.hi; w += 4)
        for (int64_t b = 0; b < nblocks; ++b) {
          T* yb = y + b * L + w * stride;
          V a0 = start(b), a1 = a0, a2 = a0, a3 = a0;
          const int j1 = rt.first[b + 1];
          const bool fetch = prefetch && j1 - rt.first[b] > 1;
          for (int j = rt.first[b]; j < j1; ++j) {
            const T* p = bases[j] + w * stride;
            const uint64_t m = masks[j];
            if (fetch)
              for (int k = 0; k < 4; ++k) __builtin_prefetch(p + (ahead + k) * stride, 0, 3);
            a0 = B::or_(a0, B::load_zero(m, p));
            a1 = B::or_(a1, B::load_zero(m, p + stride));
            a2 = B::or_(a2, B::load_zero(m, p + 2 * stride));
            a3 = B::or_(a3, B::load_zero(m, p + 3 * stride));
          }
#if defined(TS2_AVX512)
          if (stream) {
            B::stream(yb, a0);
            B::stream(yb + stride, a1);
            B::stream(yb + 2 * stride, a2);
            B::stream(yb + 3 * stride, a3);
            continue;
          }
#endif
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
    if (stream) stream_fence();
  });
}

// Active Shift: per output row and block, the sum over taps of coefficient x read.
template <typename scalar_t>
void active_forward_cl_taps(const scalar_t* in, scalar_t* out, const Geometry& g, const Strides& is,
                            const Strides& os, const Shifts<at::opmath_type<scalar_t>>& shifts) {
  using opmath_t = at::opmath_type<scalar_t>;
  using M = Math<scalar_t>;
  constexpr int L = M::kLanes;
  const int64_t C = g.channels, O0 = g.out_length[0], O1 = g.out_length[1];
  const int64_t O2 = g.out_length[2];
  const int corners = corner_count(g);
  const TapTable<opmath_t> t = tap_table<opmath_t>(
      C, L, corners, g.out_length, g.length, g.before, g.padding,
      [&](int64_t c, int a) { return corner_offset(shifts[c], a); },
      [&](int64_t c, int a) { return corner_weight(g, shifts[c].frac, a); });
  const int64_t rows = g.batch * O0 * O1;
  const int64_t grain = std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, O2 * C));
  // A block's pass over a row reads one line in four (or fewer) of each source row: its
  // next columns are prefetched where the sources come from memory (cache.h).
  const int64_t traffic = g.forward_bytes(sizeof(scalar_t));
  const bool prefetch = strided_prefetch_pays(traffic);
  const int64_t ahead = std::max<int64_t>(4, kTapPrefetchBytes / (C * int64_t(sizeof(scalar_t))));
  // Beyond the cache, whole blocks that start on a cache line are streamed out (float and
  // double, whose vectors are a line; AVX-512 only).
#if defined(TS2_AVX512)
  constexpr bool kLineVectors = sizeof(scalar_t) == sizeof(opmath_t);
  const bool stream = kLineVectors && streaming_stores_pay(traffic) &&
                      blocks_on_lines(out, os, C, int64_t(sizeof(scalar_t)));
#else
  const bool stream = false;
#endif
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
        const int k = block_rows(base.data(), row.data(), mask.data(), coef.data(), t, bt, o0, o1,
                                 image, is.slot[0], is.slot[1], C, g.before[2], off, which.data());
        scalar_t* yb = y + off;
        int64_t w = bt.lo;
        // Four columns at a time, two partial sums each: eight independent FMA chains.
        for (; w + 4 <= bt.hi; w += 4) {
          typename M::V a0 = M::zero(), a1 = M::zero(), a2 = M::zero(), a3 = M::zero();
          typename M::V b0 = M::zero(), b1 = M::zero(), b2 = M::zero(), b3 = M::zero();
          if (prefetch)
            for (int i = 0; i < k; ++i)
              for (int c = 0; c < 4; ++c) __builtin_prefetch(base[i] + (w + ahead + c) * C, 0, 3);
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
#if defined(TS2_AVX512)
          if constexpr (kLineVectors) {
            if (stream) {
              M::stream(yb + w * C, M::add(a0, b0));
              M::stream(yb + (w + 1) * C, M::add(a1, b1));
              M::stream(yb + (w + 2) * C, M::add(a2, b2));
              M::stream(yb + (w + 3) * C, M::add(a3, b3));
              continue;
            }
          }
#endif
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
    if (stream) stream_fence();
  });
}

// Walks the output rows of a channels-last forward in parallel: per row, the index vectors
// of every (block, corner) and the prefetch plan of the next row, then
// row(image, y, ri, prefetch) writes it. make_row() is called once per task (per-task
// scratch lives in the closure it returns).
template <typename T, typename opmath_t, typename MakeRow>
void for_each_gather_row(const T* in, T* out, const Geometry& g, const Strides& is,
                         const Strides& os, const GatherPlan<opmath_t>& plan, MakeRow make_row) {
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
      row(in + n * is.batch, out + n * os.batch + o0 * os.slot[0] + o1 * os.slot[1], ri, prefetch);
    }
  });
}

// SSL forward by gathers (4- and 8-byte elements), columns outermost (the layout's
// order), every block of a column inside.
template <typename T>
void ssl_forward_cl_gather(const T* in, T* out, const Geometry& g, const Strides& is,
                           const Strides& os, const Shifts<double>& shifts, T fill) {
  constexpr int E = sizeof(T);
  using G = Gather<E>;
  using B = Bits<E>;
  constexpr int L = G::kLanes;
  const int64_t C = g.channels, O2 = g.out_length[2];
  const GatherPlan<float> plan = gather_plan<float>(
      g, is, L, 1, g.out_length, g.length, g.before, g.padding,
      [&](int64_t c, int) { return corner_offset(shifts[c], 0); },
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
void active_forward_cl_gather_corners(const scalar_t* in, scalar_t* out, const Geometry& g,
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
void active_forward_cl_gather(const scalar_t* in, scalar_t* out, const Geometry& g,
                              const Strides& is, const Strides& os,
                              const Shifts<scalar_t>& shifts) {
  constexpr int L = Gather<sizeof(scalar_t)>::kLanes;
  const int corners = corner_count(g);
  const GatherPlan<scalar_t> plan = gather_plan<scalar_t>(
      g, is, L, corners, g.out_length, g.length, g.before, g.padding,
      [&](int64_t c, int a) { return corner_offset(shifts[c], a); },
      [&](int64_t c, int a) { return corner_weight(g, shifts[c].frac, a); });
  dispatch_count<2, 4, 8>(corners, [&](auto r) {
    active_forward_cl_gather_corners<decltype(r)::value>(in, out, g, is, os, plan);
  });
}

// The typed SSL kernel `kernel` for the call's carrier among Es, with its shifts and fill.
template <int... Es, typename F>
void run_ssl(const ForwardCall& call, F kernel) {
  const Shifts<double> shifts = channel_shifts<double>(call.weight, call.g, /*rounded=*/true);
  dispatch_carrier<Es...>(c10::elementSize(call.dtype), [&](auto type) {
    using T = typename decltype(type)::type;
    T fill;
    std::memcpy(&fill, &call.fill, sizeof(T));
    kernel(static_cast<const T*>(call.input), static_cast<T*>(call.output), shifts, fill);
  });
}

// The typed Active Shift kernel `kernel` for the call's dtype among Ts, with its shifts.
template <typename... Ts, typename F>
void run_active(const ForwardCall& call, const char* name, F kernel) {
  dispatch_type<Ts...>(call.dtype, name, [&](auto type) {
    using scalar_t = typename decltype(type)::type;
    using opmath_t = at::opmath_type<scalar_t>;
    const Shifts<opmath_t> shifts =
        channel_shifts<opmath_t>(call.weight, call.g, /*rounded=*/false);
    kernel(static_cast<const scalar_t*>(call.input), static_cast<scalar_t*>(call.output), shifts);
  });
}

}  // namespace

void ssl_forward_cl_taps(const ForwardCall& call) {
  run_ssl<1, 2, 4, 8>(call,
                      [&](const auto* in, auto* out, const Shifts<double>& shifts, auto fill) {
                        ssl_forward_cl_taps(in, out, call.g, call.is, call.os, shifts, fill);
                      });
}

// Gathers exist for 4- and 8-byte lanes; on AVX2-only CPUs 2-byte elements take the
// portable per-lane gather too (kernel selection: their taps would be one per-lane loop per
// distinct shift of a block).
void ssl_forward_cl_gather(const ForwardCall& call) {
  auto kernel = [&](const auto* in, auto* out, const Shifts<double>& shifts, auto fill) {
    ssl_forward_cl_gather(in, out, call.g, call.is, call.os, shifts, fill);
  };
#if defined(TS2_AVX512)
  run_ssl<4, 8>(call, kernel);
#else
  run_ssl<2, 4, 8>(call, kernel);
#endif
}

void active_forward_cl_taps(const ForwardCall& call) {
  run_active<float, double, c10::BFloat16, c10::Half>(
      call, "active_forward_cl_taps", [&](const auto* in, auto* out, const auto& shifts) {
        active_forward_cl_taps(in, out, call.g, call.is, call.os, shifts);
      });
}

void active_forward_cl_gather(const ForwardCall& call) {
  run_active<float, double>(call, "active_forward_cl_gather",
                            [&](const auto* in, auto* out, const auto& shifts) {
                              active_forward_cl_gather(in, out, call.g, call.is, call.os, shifts);
                            });
}

}  // namespace torchshift2_cpu
