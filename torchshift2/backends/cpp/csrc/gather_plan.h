// The gather plans of the channels-last kernels (cl_forward.cpp, cl_backward.cpp): one
// vector holds one element of each of L consecutive channels, and lane c reads its own
// source position through a 32-bit element index relative to the image (Gather, simd.h).
// A plan holds all index work of a call; RowIndex turns it into index vectors per output
// row; RowPrefetch prefetches the source rows the next output row reads first, since
// gathers train no hardware prefetcher.
#pragma once

#include <algorithm>
#include <cstdint>
#include <iterator>
#include <set>
#include <utility>
#include <vector>

#include "corners.h"
#include "geometry.h"
#include "simd.h"
#include "table_arena.h"

namespace torchshift2_cpu {

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
      std::copy(p.corner[k].weight.begin(), p.corner[k].weight.end(), weight.begin() + k * p.lanes);
  }
  template <typename G>
  void fill(const GatherPlan<opmath_t>& p, int64_t o0, int64_t o1) {
    const int L = p.lanes;
    for (int64_t q = 0; q < p.blocks * p.corners; ++q) {
      const GatherCorner<opmath_t>& k = p.corner[q];
      const typename G::I r =
          G::add(G::index(k.row0.data() + o0 * L), G::index(k.row1.data() + o1 * L));
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

}  // namespace torchshift2_cpu
