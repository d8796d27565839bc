// Channels-last backward (float, double; bfloat16 and half arrive widened, see ops.cpp):
// the gathers, fused (zeros padding) or one pass per gradient (other paddings), and the
// per-block kernel for samples that 32-bit indices do not reach (backward_cl_blocks).
// grad_weight leaves as corner partials (kernels.h), which ops.cpp reduces.
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

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
// Backward by gathers.
//
// grad_input: the adjoint gather: input i gets weight_a * grad_output[i - before + d_a] for
// every read corner a (d_a = shift + a) whose output exists; the reads that went through
// padding (non-zeros paddings) are then folded back, a scalar pass over the borders.
// grad_weight: per channel and corner, D_a = <grad_output, V(o + before - f - a)> at the
// unrounded weight's floor f (SPEC §4), in per-lane accumulators, summed per chunk of
// kChunkRows rows (fixed, so the result does not depend on the thread count) and combined
// afterwards.

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
                             const Strides& is, const Strides& gis, const GatherPlan<scalar_t>& gip,
                             const GatherPlan<scalar_t>& gwp, int64_t chunks) {
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
      scalar_t* gi = grad_in == nullptr ? nullptr : grad_in + n * gis.batch;
      std::fill(acc_buffer.begin(), acc_buffer.end(), scalar_t(0));
      for (int64_t t = t0; t < t1; ++t) {
        // grad_input row t: gathers from grad_output.
        if (gi != nullptr && t < in_rows) {
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
        if (partials != nullptr && t < out_rows) {
          const int64_t o0 = t / O1, o1 = t % O1;
          x_prefetch.plan_next(t + 1 < std::min(t1, out_rows), o0, o1, (t + 1) / O1, (t + 1) % O1,
                               t == t0);
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
      if (partials != nullptr) store_partials<L, R>(acc, C, partials + task * C * R);
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
// kWeights false: grad_input only (no D_a, no input read; partials unused); kInputs false:
// grad_weight only (no grad_input sums or stores; grad_in unused).
template <int R, bool kActive, bool kWeights, bool kInputs, typename scalar_t>
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
    auto take = [&](int64_t q, const typename M::V& xv, const typename M::V& v, typename M::V& sum,
                    const scalar_t* weight) {
      if constexpr (kWeights) M::spill(acc + q * L, M::fma(xv, v, M::load(acc + q * L)));
      if constexpr (!kInputs) return;
      if constexpr (kActive)
        sum = M::fma(M::load(weight + q * L), v, sum);
      else
        sum = M::select(select[q], v, sum);
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
        scalar_t* gi =
            kInputs ? grad_in + n * gis.batch + i0 * gis.slot[0] + i1 * gis.slot[1] : nullptr;
        // The columns outside the interior (ascending, as at_column wants them).
        auto edges = [&](int64_t e0, int64_t e1) {
          for (int64_t w = e0; w < e1; ++w)
            for (int64_t b = 0; b < nb; ++b) {
              const typename M::V xv = kWeights ? M::load(valid[b], x + w * C + b * L) : M::zero();
              typename M::V sum = M::zero();
              for (int a = 0; a < R; ++a)
                take(b * R + a, xv, index.template read<G>(plan, b * R + a, w, go, C), sum, weight);
              if constexpr (kInputs) M::store(gi + w * C + b * L, valid[b], sum);
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
            const typename M::V xv = kWeights ? M::load(valid[b], x + w * C + b * L) : M::zero();
            typename M::V sum = M::zero();
            for (int o = 0; o < R / 2; ++o) {
              const int64_t q1 = b * R + 2 * o + 1;
              scalar_t* cv = carry + (b * (R / 2) + o) * L;
              const typename M::V cur = G::floats(mask[q1], G::index(idx + q1 * L), base);
              take(q1 - 1, xv, M::load(cv), sum, weight);
              take(q1, xv, cur, sum, weight);
              M::spill(cv, cur);
            }
            if constexpr (kInputs) M::store(gi + w * C + b * L, valid[b], sum);
          }
        }
        prefetch.columns(go, C, hi, g.out_length[2]);
        edges(hi, L2);
      }
      if constexpr (kWeights) store_partials<L, R>(acc, C, partials + task * C * R);
    }
  });
}

// The reads that went through padding (non-zeros paddings), folded into grad_input.
template <typename scalar_t>
void fold_padded_reads(const scalar_t* grad_out, scalar_t* grad_in, const Geometry& g,
                       const Strides& gos, const Strides& gis, const Shifts<scalar_t>& read_shifts,
                       int corners) {
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
        const scalar_t w = corners == 1 ? scalar_t(1) : corner_weight(g, read_shifts[c].frac, a);
        const Offset d = corner_offset(read_shifts[c], a);
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

// ---------------------------------------------------------------------------------------
// backward_cl_blocks.

// Channels-last kernels. The tensors they read through per-channel pointers have channel
// stride 1 and slot-2 stride C, so a row (n, o0, o1) is one contiguous W x C block. Per row,
// each channel (and each outer interpolation corner) gets one source pointer; then every
// column w is a gather across channels, y[w*C + c] = q[c][w*C]. In the common interior (no
// channel needs padding) the offsets are w*C; in the few row-end columns they come from a
// table built once per call (source_index per column and channel; -1 = the padding value).
// Rows that read outside the tensor (zeros padding) point into a row of zeros / fill.
// The slot-2 neighbour an interpolation needs (k - 1) is the value gathered one column
// before, carried in a per-channel array, so each source element is gathered once.

// Bytes (of op-math values) of channels per backward task: 64 float32 channels. Narrower
// blocks (one 64-byte line) made each task read every 4th line of a row, which the hardware
// prefetchers do not follow; whole rows stream.
constexpr int64_t kBlockBytes = 256;

template <typename opmath_t>
std::vector<int64_t> slot_shifts(const Shifts<opmath_t>& shifts, int slot) {
  std::vector<int64_t> s(shifts.size());
  for (size_t c = 0; c < shifts.size(); ++c) s[c] = shifts[c].shift[slot];
  return s;
}

// Columns [0, length) split into a common interior [lo, hi) and the edge columns around it;
// off[a][e * C + c]: the element offset (index * C) that column edges[e] of channel c reads
// for corner a, or -1.
struct EdgeTable {
  Interior mid{0, 0};
  Table<int64_t> columns;
  Table<int64_t> off[2];
};

// index(w, c, a): the source index read (any value outside [0, limit) reads the padding).
template <typename F>
EdgeTable edge_table(Interior mid, int64_t length, int64_t channels, int corners, F index) {
  EdgeTable t;
  if (mid.hi < mid.lo) mid.hi = mid.lo;
  t.mid = mid;
  for (int64_t w = 0; w < mid.lo; ++w) t.columns.push_back(w);
  for (int64_t w = mid.hi; w < length; ++w) t.columns.push_back(w);
  const int64_t ncol = static_cast<int64_t>(t.columns.size());
  for (int a = 0; a < corners; ++a) {
    t.off[a].resize(ncol * channels);
    for (int64_t e = 0; e < ncol; ++e)
      for (int64_t c = 0; c < channels; ++c) {
        const int64_t idx = index(t.columns[e], c, a);
        t.off[a][e * channels + c] = idx == kOutside ? -1 : idx * channels;
      }
  }
  return t;
}

// Read edge table for a shift per channel: column w reads source_index(w + before - s - a).
EdgeTable read_edges(const Geometry& g, const std::vector<int64_t>& shift, int corners) {
  const int64_t O2 = g.out_length[2], L2 = g.length[2], b2 = g.before[2];
  Interior mid{0, O2};
  for (const int64_t s : shift) {
    const Interior i = interior(O2, L2, b2, s, corners);
    mid.lo = std::max(mid.lo, i.lo);
    mid.hi = std::min(mid.hi, i.hi);
  }
  return edge_table(mid, O2, static_cast<int64_t>(shift.size()), corners,
                    [&](int64_t w, int64_t c, int a) {
                      return source_index(w + b2 - shift[c] - a, L2, g.padding);
                    });
}

// The channels-last backward where the gathers cannot run (32-bit indices do not reach
// every element of a sample). Tasks are (n, block of CB channels): each owns its grad_input
// elements and its grad_weight partials, so there are no races and nothing depends on the
// thread count. grad_input = the direct part, a gather from grad_output (input i was read by
// output o = i - before + shift + corner when that output exists), plus, for paddings other
// than zeros, a scatter of the reads that went through padding (near the borders only).
// grad_weight: per (n, c) the dot products D_a = <grad_output, V(i - floor(w) - a)> for the
// 2^D corners a; d out / d w_d = sum_a sign_d(a) prod_{e != d} weight_e(a_e) V_a, so the
// gradient is that combination of the D_a (done after the fixed-order batch reduction).
// A partial last block runs with its missing channels reading a row of zeros.
// R = 2^(D - 1) outer corners; the partials are in the corner format (kernels.h).
template <typename scalar_t, int R, bool kActive>
void backward_cl_blocks(const scalar_t* grad_out, const scalar_t* in, scalar_t* grad_in,
                        double* partials, const Geometry& g, const Strides& gos, const Strides& is,
                        const Strides& gis, const Shifts<scalar_t>& read_shifts,
                        const Shifts<scalar_t>& interp_shifts) {
  using opmath_t = scalar_t;                              // float, double
  constexpr int RR = kActive ? R : 1;                     // outer corners read by grad_input
  constexpr int A2 = kActive ? 2 : 1;                     // slot-2 corners read by grad_input
  constexpr int K = 2 * R;                                // corners of grad_weight
  constexpr int64_t CB = kBlockBytes / sizeof(opmath_t);  // lanes per block
  const int64_t C = g.channels, L0 = g.length[0], L1 = g.length[1], L2 = g.length[2];
  const int64_t O0 = g.out_length[0], O1 = g.out_length[1], O2 = g.out_length[2];
  const int64_t b0 = g.before[0], b1 = g.before[1], b2 = g.before[2];
  const int64_t blocks = (C + CB - 1) / CB;
  const std::vector<int64_t> rs0 = slot_shifts(read_shifts, 0), rs1 = slot_shifts(read_shifts, 1),
                             rs2 = slot_shifts(read_shifts, 2);
  const std::vector<int64_t> ws0 = slot_shifts(interp_shifts, 0),
                             ws1 = slot_shifts(interp_shifts, 1),
                             ws2 = slot_shifts(interp_shifts, 2);
  // grad_input coefficient of outer corner r and slot-2 corner a2 (zero for padded channels).
  std::vector<opmath_t> dcoef(RR * A2 * blocks * CB, opmath_t(0));
  for (int64_t c = 0; c < C; ++c)
    for (int r = 0; r < RR; ++r)
      for (int a2 = 0; a2 < A2; ++a2) {
        const auto& f = read_shifts[c].frac;
        dcoef[(r * A2 + a2) * blocks * CB + c] =
            kActive ? corner_weight(g, f, 2 * r + a2) : opmath_t(1);
      }
  // grad_input columns: i2 reads outputs o2 = i2 - b2 + s2 + a2 that exist (else nothing).
  Interior gmid{0, L2};
  for (int64_t c = 0; c < C; ++c) {
    const int64_t lo = clamp(b2 - rs2[c], 0, L2);
    const int64_t hi = clamp(O2 + b2 - rs2[c] - (A2 - 1), lo, L2);
    gmid.lo = std::max(gmid.lo, lo);
    gmid.hi = std::min(gmid.hi, hi);
  }
  const EdgeTable gedges =
      edge_table(gmid, L2, C, A2, [&](int64_t i2, int64_t c, int a2) -> int64_t {
        const int64_t o2 = i2 - b2 + rs2[c] + a2;
        return o2 >= 0 && o2 < O2 ? o2 : kOutside;
      });
  const EdgeTable wedges = read_edges(g, ws2, 2);

  at::parallel_for(0, g.batch * blocks, 1, [&](int64_t begin, int64_t end) {
    const std::vector<scalar_t> zero((std::max(L2, O2) + 3) * C, scalar_t(0));
    const scalar_t* zrow = zero.data() + C;
    std::vector<opmath_t> accbuf;
    const scalar_t* base[R][CB];
    const scalar_t* q[R][CB];
    opmath_t carry[R][CB];
    double total[K][CB];
    opmath_t rowsum[K][CB];
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n = t / blocks, cb0 = (t % blocks) * CB, nb = std::min(CB, C - cb0);
      const scalar_t* go = grad_out + n * gos.batch + cb0;
      const scalar_t* x = in + n * is.batch + cb0;
      // grad_input goes straight to grad_in when the block is whole; else through a dense
      // buffer.
      const bool direct = nb == CB;
      opmath_t* acc;
      int64_t as0, as1, as2;
      if (direct) {
        acc = reinterpret_cast<opmath_t*>(grad_in + n * gis.batch + cb0);
        as0 = gis.slot[0], as1 = gis.slot[1], as2 = gis.slot[2];
      } else {
        if (accbuf.empty()) accbuf.resize(L0 * L1 * L2 * CB);
        acc = accbuf.data();
        as0 = L1 * L2 * CB, as1 = L2 * CB, as2 = CB;
      }
      const opmath_t* dc = dcoef.data() + cb0;
      const int64_t dstride = blocks * CB;
      // The channel of each block lane, or -1 past the last channel (such lanes read zeros
      // at the first channel's shift, so their reads stay inside the zero row).
      int64_t cmap[CB];
      for (int64_t c = 0; c < CB; ++c) cmap[c] = c < nb ? cb0 + c : -1;

      // 1. grad_input, direct part (every element written), one input row at a time.
      auto grad_input_row = [&](int64_t i0, int64_t i1) {
        for (int r = 0; r < RR; ++r) {
          int a0 = corner_side(2 * r, 0), a1 = corner_side(2 * r, 1);
          if (!kActive) a0 = a1 = 0;
          for (int64_t c = 0; c < CB; ++c) {
            const int64_t cc = cmap[c];
            const scalar_t* b = zrow + c;
            if (cc >= 0) {
              const int64_t o0 = i0 - b0 + rs0[cc] + a0, o1 = i1 - b1 + rs1[cc] + a1;
              if (o0 >= 0 && o0 < O0 && o1 >= 0 && o1 < O1)
                b = go + o0 * gos.slot[0] + o1 * gos.slot[1] + c;
            }
            base[r][c] = b;
            q[r][c] = b + (rs2[cc >= 0 ? cc : cb0] - b2) * C;
          }
        }
        opmath_t* arow = acc + i0 * as0 + i1 * as1;
        for (size_t e = 0; e < gedges.columns.size(); ++e) {
          opmath_t* __restrict__ ar = arow + gedges.columns[e] * as2;
          for (int64_t c = 0; c < nb; ++c) {
            opmath_t v = 0;
            for (int r = 0; r < RR; ++r)
              for (int a2 = 0; a2 < A2; ++a2) {
                const int64_t o = gedges.off[a2][e * C + cb0 + c];
                if (o >= 0)
                  v += dc[(r * A2 + a2) * dstride + c] * static_cast<opmath_t>(base[r][c][o]);
              }
            ar[c] = v;
          }
        }
        const int64_t lo = gedges.mid.lo, hi = gedges.mid.hi;
        if (lo >= hi) return;
        if (A2 == 2)
          for (int r = 0; r < RR; ++r)
            for (int64_t c = 0; c < CB; ++c) carry[r][c] = static_cast<opmath_t>(q[r][c][lo * C]);
        for (int64_t i2 = lo; i2 < hi; ++i2) {
          opmath_t* __restrict__ ar = arow + i2 * as2;
          const int64_t off = i2 * C;
          opmath_t v[CB];
#pragma omp simd
          for (int64_t c = 0; c < CB; ++c) {
            opmath_t s = 0;
            for (int r = 0; r < RR; ++r) {
              if (A2 == 2) {
                const opmath_t nxt = static_cast<opmath_t>(q[r][c][off + C]);
                s +=
                    dc[(r * A2) * dstride + c] * carry[r][c] + dc[(r * A2 + 1) * dstride + c] * nxt;
                carry[r][c] = nxt;
              } else {
                s += dc[(r * A2) * dstride + c] * static_cast<opmath_t>(q[r][c][off]);
              }
            }
            v[c] = s;
          }
          for (int64_t c = 0; c < CB; ++c) ar[c] = v[c];
        }
      };
      // 3. grad_weight: corner dot products, per row in op-math, summed in double.
      auto grad_weight_row = [&](int64_t o0, int64_t o1) {
        const scalar_t* grow = go + o0 * gos.slot[0] + o1 * gos.slot[1];
        for (int r = 0; r < R; ++r) {
          int a0 = corner_side(2 * r, 0), a1 = corner_side(2 * r, 1);
          for (int64_t c = 0; c < CB; ++c) {
            const int64_t cc = cmap[c];
            const scalar_t* b = zrow + c;
            if (cc >= 0) {
              const int64_t i0 = source_index(o0 + b0 - ws0[cc] - a0, L0, g.padding);
              const int64_t i1 = source_index(o1 + b1 - ws1[cc] - a1, L1, g.padding);
              if (i0 != kOutside && i1 != kOutside) b = x + i0 * is.slot[0] + i1 * is.slot[1] + c;
            }
            base[r][c] = b;
            q[r][c] = b + (b2 - ws2[cc >= 0 ? cc : cb0]) * C;
          }
        }
        for (int k = 0; k < K; ++k)
          for (int64_t c = 0; c < CB; ++c) rowsum[k][c] = 0;
        for (size_t e = 0; e < wedges.columns.size(); ++e) {
          const scalar_t* gw = grow + wedges.columns[e] * C;
          const int64_t* ei = wedges.off[0].data() + e * C + cb0;
          const int64_t* ej = wedges.off[1].data() + e * C + cb0;
          for (int64_t c = 0; c < nb; ++c) {
            const opmath_t gv = static_cast<opmath_t>(gw[c]);
            for (int r = 0; r < R; ++r) {
              if (ei[c] >= 0) rowsum[2 * r][c] += gv * static_cast<opmath_t>(base[r][c][ei[c]]);
              if (ej[c] >= 0) rowsum[2 * r + 1][c] += gv * static_cast<opmath_t>(base[r][c][ej[c]]);
            }
          }
        }
        const int64_t lo = wedges.mid.lo, hi = wedges.mid.hi;
        if (lo < hi) {
          for (int r = 0; r < R; ++r)
            for (int64_t c = 0; c < CB; ++c)
              carry[r][c] = static_cast<opmath_t>(q[r][c][(lo - 1) * C]);
          for (int64_t o2 = lo; o2 < hi; ++o2) {
            const int64_t off = o2 * C;
            const scalar_t* gw = grow + off;
            opmath_t gv[CB];
            for (int64_t c = 0; c < CB; ++c) gv[c] = c < nb ? static_cast<opmath_t>(gw[c]) : 0;
#pragma omp simd
            for (int64_t c = 0; c < CB; ++c) {
              for (int r = 0; r < R; ++r) {
                const opmath_t cur = static_cast<opmath_t>(q[r][c][off]);
                rowsum[2 * r][c] += gv[c] * cur;
                rowsum[2 * r + 1][c] += gv[c] * carry[r][c];
                carry[r][c] = cur;
              }
            }
          }
        }
        for (int k = 0; k < K; ++k)
          for (int64_t c = 0; c < CB; ++c) total[k][c] += static_cast<double>(rowsum[k][c]);
      };
      // Rows of both passes interleaved: the grad_output rows that grad_input gathers
      // are still in cache when grad_weight reads them.
      for (int k = 0; k < K; ++k)
        for (int64_t c = 0; c < CB; ++c) total[k][c] = 0.0;
      for (int64_t row = 0; row < std::max(L0 * L1, O0 * O1); ++row) {
        if (row < L0 * L1) grad_input_row(row / L1, row % L1);
        if (partials != nullptr && row < O0 * O1) grad_weight_row(row / O1, row % O1);
      }

      // 2. grad_input, reads that went through padding (never outside for these paddings).
      if (g.padding != kZeros) {
        for (int64_t c = 0; c < nb; ++c) {
          const int64_t cc = cb0 + c;
          for (int r = 0; r < RR; ++r) {
            int a0 = corner_side(2 * r, 0), a1 = corner_side(2 * r, 1);
            if (!kActive) a0 = a1 = 0;
            for (int64_t o0 = 0; o0 < O0; ++o0) {
              const int64_t k0 = o0 + b0 - rs0[cc] - a0;
              const bool in0 = k0 >= 0 && k0 < L0;
              const int64_t p0 = source_index(k0, L0, g.padding);
              for (int64_t o1 = 0; o1 < O1; ++o1) {
                const int64_t k1 = o1 + b1 - rs1[cc] - a1;
                const bool in1 = k1 >= 0 && k1 < L1;
                const int64_t p1 = source_index(k1, L1, g.padding);
                const scalar_t* grow = go + o0 * gos.slot[0] + o1 * gos.slot[1] + c;
                opmath_t* arow = acc + p0 * as0 + p1 * as1 + c;
                for (int a2 = 0; a2 < A2; ++a2) {
                  const opmath_t coef = dc[(r * A2 + a2) * dstride + c];
                  const int64_t shift = rs2[cc] + a2;
                  auto add = [&](int64_t o2) {
                    const int64_t p2 = source_index(o2 + b2 - shift, L2, g.padding);
                    arow[p2 * as2] += coef * static_cast<opmath_t>(grow[o2 * C]);
                  };
                  if (in0 && in1) {
                    const Interior it = interior(O2, L2, b2, shift, 1);
                    for (int64_t o2 = 0; o2 < it.lo; ++o2) add(o2);
                    for (int64_t o2 = it.hi; o2 < O2; ++o2) add(o2);
                  } else {
                    for (int64_t o2 = 0; o2 < O2; ++o2) add(o2);
                  }
                }
              }
            }
          }
        }
      }
      if (!direct) {
        for (int64_t i0 = 0; i0 < L0; ++i0)
          for (int64_t i1 = 0; i1 < L1; ++i1) {
            scalar_t* dst = grad_in + n * gis.batch + cb0 + i0 * gis.slot[0] + i1 * gis.slot[1];
            const opmath_t* src = acc + i0 * as0 + i1 * as1;
            for (int64_t i2 = 0; i2 < L2; ++i2)
              for (int64_t c = 0; c < nb; ++c) dst[i2 * gis.slot[2] + c] = src[i2 * as2 + c];
          }
      }
      if (partials == nullptr) continue;
      for (int64_t c = 0; c < nb; ++c)
        for (int k = 0; k < K; ++k) partials[(n * C + cb0 + c) * K + k] = total[k][c];
    }
  });
}

// The typed body `kernel` for the call's dtype (float, double), with its pointers and shifts.
template <typename F>
void run_backward(const BackwardCall& call, const char* name, F kernel) {
  dispatch_type<float, double>(call.dtype, name, [&](auto type) {
    using scalar_t = typename decltype(type)::type;
    const BackwardShifts<scalar_t> shifts(call.weight, call.g, call.active);
    kernel(static_cast<const scalar_t*>(call.grad_output), static_cast<const scalar_t*>(call.input),
           static_cast<scalar_t*>(call.grad_input), shifts);
  });
}

}  // namespace

// Zeros padding: one plan over the 2^D corners at the floor of the weight (the read shifts
// are the same for Active Shift); SSL selects, per lane, the corner of its rounded shift.
void backward_cl_gather_fused(const BackwardCall& call) {
  const Geometry& g = call.g;
  TORCH_INTERNAL_ASSERT(g.padding == kZeros, "backward_cl_gather_fused: zeros padding only");
  run_backward(call, "backward_cl_gather_fused",
               [&](const auto* grad_out, const auto* in, auto* grad_in, const auto& shifts) {
                 using scalar_t = std::remove_const_t<std::remove_pointer_t<decltype(in)>>;
                 constexpr int L = Gather<sizeof(scalar_t)>::kLanes;
                 const int R = corner_count(g);
                 const int64_t neg_before[kSlots] = {-g.before[0], -g.before[1], -g.before[2]};
                 const GatherPlan<scalar_t> plan = gather_plan<scalar_t>(
                     g, call.gos, L, R, g.length, g.out_length, neg_before, kZeros,
                     [&](int64_t c, int a) {
                       const Offset d = corner_offset(shifts.interp[c], a);
                       return Offset{-d[0], -d[1], -d[2]};
                     },
                     [&](int64_t c, int a) { return corner_weight(g, shifts.interp[c].frac, a); });
                 std::vector<uint64_t> select(plan.blocks * R, 0);
                 if (!call.active)
                   for (int64_t c = 0; c < g.channels; ++c)
                     for (int a = 0; a < R; ++a)
                       if (corner_offset(shifts.interp[c], a) == corner_offset(shifts.read[c], 0))
                         select[(c / L) * R + a] |= uint64_t(1) << (c % L);
                 TORCH_INTERNAL_ASSERT(grad_in != nullptr || call.partials != nullptr,
                                       "backward_cl_gather_fused: no gradient asked for");
                 dispatch_count<2, 4, 8>(R, [&](auto r) {
                   dispatch_bool(call.active, [&](auto kActive) {
                     dispatch_bool(call.partials != nullptr, [&](auto kWeights) {
                       dispatch_bool(grad_in != nullptr, [&](auto kInputs) {
                         backward_gather_fused<decltype(r)::value, decltype(kActive)::value,
                                               decltype(kWeights)::value, decltype(kInputs)::value>(
                             grad_out, in, grad_in, call.partials, g, call.gos, call.is, call.gis,
                             plan, select, gather_chunks(g));
                       });
                     });
                   });
                 });
               });
}

// Other paddings: grad_input by the adjoint gather (reads outside grad_output contribute
// nothing whatever the padding; fold_padded_reads adds the reads that went through padding),
// grad_weight by gathers of the input at the floor of the weight.
void backward_cl_gather(const BackwardCall& call) {
  const Geometry& g = call.g;
  run_backward(call, "backward_cl_gather",
               [&](const auto* grad_out, const auto* in, auto* grad_in, const auto& shifts) {
                 using scalar_t = std::remove_const_t<std::remove_pointer_t<decltype(in)>>;
                 constexpr int L = Gather<sizeof(scalar_t)>::kLanes;
                 const int R = corner_count(g);
                 const int RI = call.active ? R : 1;
                 const int64_t neg_before[kSlots] = {-g.before[0], -g.before[1], -g.before[2]};
                 // grad_input reads grad_output: lengths swapped, offsets and before negated.
                 const GatherPlan<scalar_t> gip = gather_plan<scalar_t>(
                     g, call.gos, L, RI, g.length, g.out_length, neg_before, kZeros,
                     [&](int64_t c, int a) {
                       const Offset d = corner_offset(shifts.read[c], a);
                       return Offset{-d[0], -d[1], -d[2]};
                     },
                     [&](int64_t c, int a) {
                       return call.active ? corner_weight(g, shifts.read[c].frac, a) : scalar_t(1);
                     });
                 const GatherPlan<scalar_t> gwp = gather_plan<scalar_t>(
                     g, call.is, L, R, g.out_length, g.length, g.before, g.padding,
                     [&](int64_t c, int a) { return corner_offset(shifts.interp[c], a); },
                     [](int64_t, int) { return scalar_t(1); });
                 dispatch_count<2, 4, 8>(R, [&](auto r) {
                   constexpr int kR = decltype(r)::value;
                   dispatch_count<1, kR>(RI, [&](auto ri) {
                     backward_gather_corners<kR, decltype(ri)::value>(
                         grad_out, in, grad_in, call.partials, g, call.gos, call.is, call.gis, gip,
                         gwp, gather_chunks(g));
                   });
                 });
                 if (grad_in != nullptr)
                   fold_padded_reads(grad_out, grad_in, g, call.gos, call.gis, shifts.read, RI);
               });
}

void backward_cl_blocks(const BackwardCall& call) {
  const Geometry& g = call.g;
  run_backward(call, "backward_cl_blocks",
               [&](const auto* grad_out, const auto* in, auto* grad_in, const auto& shifts) {
                 using scalar_t = std::remove_const_t<std::remove_pointer_t<decltype(in)>>;
                 dispatch_count<1, 2, 4>(corner_count(g) / 2, [&](auto r) {
                   dispatch_bool(call.active, [&](auto kActive) {
                     backward_cl_blocks<scalar_t, decltype(r)::value, decltype(kActive)::value>(
                         grad_out, in, grad_in, call.partials, g, call.gos, call.is, call.gis,
                         shifts.read, shifts.interp);
                   });
                 });
               });
}

}  // namespace torchshift2_cpu
