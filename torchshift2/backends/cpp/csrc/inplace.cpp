// In place (SSL, no crop; the Sparse Shift Layer at inference): the input shifted in its
// own memory. After training most rounded shifts are 0, so only channels that move are
// touched: in planar layouts their (n, c) planes, each through a plane-sized buffer or, with
// zeros padding on dense planes, directly (ssl_shift_plane_inplace_zeros); with channels
// innermost, the rows of each sample (see ChannelsLastInplace), or, where the moving
// channels lie in a narrow block, that block gathered back (shift_inplace_cl_block_gather).
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <type_traits>
#include <vector>

#include "copy.h"
#include "dispatch.h"
#include "geometry.h"
#include "isa.h"
#include "kernels.h"
#include "planes.h"

#if defined(TS2_AVX512)
#include <immintrin.h>
#endif

namespace torchshift2_cpu {
namespace {

// The channels whose rounded shift is not 0.
std::vector<int64_t> moving_channels(const Shifts<double>& shifts) {
  std::vector<int64_t> moving;
  for (int64_t c = 0; c < static_cast<int64_t>(shifts.size()); ++c)
    if (shifts[c].shift[0] != 0 || shifts[c].shift[1] != 0 || shifts[c].shift[2] != 0)
      moving.push_back(c);
  return moving;
}

// fn(T* data, shifts, moving) with T the call's carrier, unless no channel moves.
template <typename F>
void with_moving_channels(const InplaceCall& call, F fn) {
  const Shifts<double> shifts = channel_shifts<double>(call.weight, call.g, /*rounded=*/true);
  const std::vector<int64_t> moving = moving_channels(shifts);
  if (moving.empty()) return;
  dispatch_carrier<1, 2, 4, 8>(call.element_size, [&](auto type) {
    using T = typename decltype(type)::type;
    fn(static_cast<T*>(call.data), shifts, moving);
  });
}

// fn(n, c, plane, buffer, edges) for every (sample, moving channel) plane, in parallel;
// buffer: `buffer_size` elements per task, edges: room for g.length[2] indices.
template <typename T, typename F>
void for_each_moving_plane(T* data, const Geometry& g, const Strides& st,
                           const std::vector<int64_t>& moving, int64_t buffer_size, F fn) {
  const int64_t plane = g.in_plane();
  const int64_t count = static_cast<int64_t>(moving.size());
  const int64_t grain = std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, plane));
  at::parallel_for(0, g.batch * count, grain, [&](int64_t begin, int64_t end) {
    std::vector<T> buffer(buffer_size);
    std::vector<int64_t> edges(g.length[2]);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n = t / count, c = moving[t % count];
      fn(c, data + n * st.batch + c * st.channel, buffer.data(), edges.data());
    }
  });
}

// In place with channels innermost. Only the cache lines holding a moving channel need to be
// read and written, but with channels spread over the lines that is most of them (a 64-byte
// line holds 16 float32 channels), so the cost is one pass over the tensor at best; after
// torchshift2.group_channels the moving channels share few lines.
// One pass per sample (batch >= threads): output rows (slots 0, 1 flattened) in increasing
// order, each row's moving channels saved before it is written. A source row q of output
// row r is then read from the saved copy if q <= r (already overwritten) and from the
// tensor if q > r (not yet), whatever the padding. Fewer samples than threads: two passes
// parallel over rows, all moving channels copied out first, then written back shifted.
// The moving channels are handled as runs (adjacent channels with the same shift, as
// grouping leaves them; see write_row for the loop order).
template <typename T>
struct ChannelsLastInplace {
  // Channels [channel, channel + length) shift alike; `offset`: the first one's place among
  // the K saved moving channels of a position.
  struct Run {
    int64_t channel, length, offset;
  };
  T* data;
  const Geometry& g;
  const Strides& st;
  const T fill = T(0);
  const int64_t K, L0, L1, L2, R, Lmax, S;  // S: the stride of slot 2
  const std::vector<int64_t>& moving;
  std::vector<Run> runs;
  // src[(u * kSlots + s) * Lmax + o]: source index of output o along slot s for run u,
  // kOutside: fill.
  std::vector<int64_t> src;

  ChannelsLastInplace(T* data_, const Geometry& g_, const Strides& st_,
                      const Shifts<double>& shifts, const std::vector<int64_t>& moving_)
      : data(data_),
        g(g_),
        st(st_),
        K(static_cast<int64_t>(moving_.size())),
        L0(g_.length[0]),
        L1(g_.length[1]),
        L2(g_.length[2]),
        R(L0 * L1),
        Lmax(std::max({L0, L1, L2})),
        S(st_.slot[2]),
        moving(moving_) {
    const bool merge = !by_position();
    for (int64_t k = 0; k < K; ++k) {
      const int64_t c = moving[k];
      if (merge && !runs.empty()) {
        Run& last = runs.back();
        const int64_t* prev = shifts[last.channel].shift;
        const int64_t* cur = shifts[c].shift;
        if (last.channel + last.length == c && std::equal(prev, prev + kSlots, cur)) {
          ++last.length;
          continue;
        }
      }
      runs.push_back({c, 1, k});
    }
    src.assign(runs.size() * kSlots * Lmax, kOutside);
    for (size_t u = 0; u < runs.size(); ++u)
      for (int s = 0; s < kSlots; ++s)
        for (int64_t o = 0; o < g.length[s]; ++o)
          src[(u * kSlots + s) * Lmax + o] =
              source_index(o - shifts[runs[u].channel].shift[s], g.length[s], g.padding);
  }

  const int64_t* slot_src(size_t u, int s) const { return src.data() + (u * kSlots + s) * Lmax; }
  T* row_of(T* sample, int64_t r) const {
    return sample + (r / L1) * st.slot[0] + (r % L1) * st.slot[1];
  }
  // Each row is written either a run at a time over chunks of positions whose lines stay in
  // L1 (a run's shift and source hoisted out of a loop over the chunk), or a position at a
  // time over the moving channels (then each is a run of its own): whichever inner loop is
  // longer. Many moving channels over wide rows (hundreds of channels) favour the second,
  // few the first.
  int64_t chunk_positions() const {
    constexpr int64_t kChunkBytes = 8192;
    return std::max<int64_t>(1, kChunkBytes / std::max<int64_t>(1, S * int64_t(sizeof(T))));
  }
  bool by_position() const { return K > chunk_positions(); }
  template <typename F>
  void in_chunks(F fn) const {
    const int64_t chunk = chunk_positions();
    for (int64_t lo = 0; lo < L2; lo += chunk) fn(lo, std::min(L2, lo + chunk));
  }
  // The moving channels of row `row` into b (K per position).
  void save_row(const T* row, T* b) const {
    if (by_position()) {  // (runs of one channel: run k is moving[k])
      for (int64_t i2 = 0; i2 < L2; ++i2)
        for (int64_t k = 0; k < K; ++k) b[i2 * K + k] = row[i2 * st.slot[2] + moving[k]];
      return;
    }
    in_chunks([&](int64_t lo, int64_t hi) {
      for (const Run& run : runs) {
        const T* x = row + run.channel;
        T* y = b + run.offset;
        if (run.length == 1) {
          for (int64_t i2 = lo; i2 < hi; ++i2) y[i2 * K] = x[i2 * S];
        } else {
          for (int64_t i2 = lo; i2 < hi; ++i2) std::copy_n(x + i2 * S, run.length, y + i2 * K);
        }
      }
    });
  }
  // An output row: run u's source row is read through from[u] with element stride step[u]
  // along slot 2 (from[u] null: the whole row is the fill).
  void write_row(T* row, const T* const* from, const int64_t* step) const {
    if (by_position()) {  // (runs of one channel: run k is moving[k])
      for (int64_t o2 = 0; o2 < L2; ++o2)
        for (int64_t k = 0; k < K; ++k) {
          const int64_t j = slot_src(k, 2)[o2];
          row[o2 * st.slot[2] + moving[k]] =
              from[k] == nullptr || j == kOutside ? fill : from[k][j * step[k]];
        }
      return;
    }
    in_chunks([&](int64_t lo, int64_t hi) {
      for (size_t u = 0; u < runs.size(); ++u) {
        const int64_t n = runs[u].length, jstep = step[u];
        const int64_t* js = slot_src(u, 2);
        const T* x = from[u];
        T* y = row + runs[u].channel;
        if (x == nullptr) {
          for (int64_t o2 = lo; o2 < hi; ++o2) std::fill_n(y + o2 * S, n, fill);
        } else if (n == 1) {
          for (int64_t o2 = lo; o2 < hi; ++o2)
            y[o2 * S] = js[o2] == kOutside ? fill : x[js[o2] * jstep];
        } else {
          for (int64_t o2 = lo; o2 < hi; ++o2) {
            if (js[o2] == kOutside)
              std::fill_n(y + o2 * S, n, fill);
            else
              std::copy_n(x + js[o2] * jstep, n, y + o2 * S);
          }
        }
      }
    });
  }

  void one_pass() const {
    const size_t U = runs.size();
    at::parallel_for(0, g.batch, 1, [&](int64_t begin, int64_t end) {
      std::unique_ptr<T[]> saved(new T[R * L2 * K]);
      std::vector<const T*> from(U);
      std::vector<int64_t> step(U);
      for (int64_t n = begin; n < end; ++n) {
        T* sample = data + n * st.batch;
        for (int64_t r = 0; r < R; ++r) {
          T* row = row_of(sample, r);
          save_row(row, saved.get() + r * L2 * K);
          const int64_t o0 = r / L1, o1 = r % L1;
          for (size_t u = 0; u < U; ++u) {
            const int64_t q0 = slot_src(u, 0)[o0], q1 = slot_src(u, 1)[o1];
            const int64_t q = q0 * L1 + q1;
            if (q0 == kOutside || q1 == kOutside)
              from[u] = nullptr;
            else if (q <= r)
              from[u] = saved.get() + q * L2 * K + runs[u].offset, step[u] = K;
            else
              from[u] = row_of(sample, q) + runs[u].channel, step[u] = S;
          }
          write_row(row, from.data(), step.data());
        }
      }
    });
  }

  void two_pass() const {
    const size_t U = runs.size();
    const int64_t rows = g.batch * R;
    std::unique_ptr<T[]> buffer(new T[rows * L2 * K]);
    const int64_t grain = std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, L2 * K));
    at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r)
        save_row(row_of(data + (r / R) * st.batch, r % R), buffer.get() + r * L2 * K);
    });
    at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
      std::vector<const T*> from(U);
      std::vector<int64_t> step(U, K);
      for (int64_t r = begin; r < end; ++r) {
        const int64_t n = r / R, o0 = (r % R) / L1, o1 = r % L1;
        for (size_t u = 0; u < U; ++u) {
          const int64_t q0 = slot_src(u, 0)[o0], q1 = slot_src(u, 1)[o1];
          from[u] = q0 == kOutside || q1 == kOutside
                        ? nullptr
                        : buffer.get() + ((n * L0 + q0) * L1 + q1) * L2 * K + runs[u].offset;
        }
        write_row(row_of(data + n * st.batch, r % R), from.data(), step.data());
      }
    });
  }
};

}  // namespace

namespace {

MovingBlock moving_block_of(const Shifts<double>& shifts, const Geometry& g, int64_t lanes) {
  const std::vector<int64_t> moving = moving_channels(shifts);
  MovingBlock b;
  if (moving.empty()) return b;
  b.moving = static_cast<int64_t>(moving.size());
  const int64_t span = moving.back() - moving.front() + 1;
  b.width = std::min(g.channels, (span + lanes - 1) / lanes * lanes);
  b.first = std::min(moving.front(), g.channels - b.width);
  return b;
}

}  // namespace

MovingBlock moving_block(const double* weight, const Geometry& g, int64_t lanes) {
  return moving_block_of(channel_shifts<double>(weight, g, /*rounded=*/true), g, lanes);
}

// A gathered lane costs about half of what moving one channel in ChannelsLastInplace's
// loops does, so a block of up to kGatherWidthPerMoving lanes per moving channel is cheaper
// gathered (benchmarks/archive/NOTES.md, v16).
constexpr int64_t kGatherWidthPerMoving = 2;

bool block_gather_pays(const Geometry& g, const MovingBlock& b) {
  const int64_t positions = g.length[0] * g.length[1] * g.length[2];
  return b.width > 0 && b.width % 16 == 0 && positions * b.width < (int64_t(1) << 29) &&
         b.width <= kGatherWidthPerMoving * b.moving;
}

// In place with channels innermost, 4-byte elements, the moving channels inside one block of
// W channels (a multiple of 16; after torchshift2.group_channels, the few cache lines that
// hold them): per sample, the block of every position is saved, then each output position's
// block gathered back from the saved copy (AVX-512: 16 channels per gather), through per-channel
// tables of source indices (so every padding is the same rule; a channel of the block that
// does not move is gathered from itself). Indices are 32-bit within a sample's saved copy;
// kOutsideIndex makes any sum holding one negative, masked to the zero fill.
void shift_inplace_cl_block_gather(const InplaceCall& call) {
  const Geometry& g = call.g;
  const Strides& st = call.st;
  TORCH_INTERNAL_ASSERT(call.element_size == 4, "shift_inplace_cl_block_gather: element size");
  const Shifts<double> shifts = channel_shifts<double>(call.weight, g, /*rounded=*/true);
  const MovingBlock b = moving_block_of(shifts, g, 16);
  if (b.width == 0) return;
  TORCH_INTERNAL_ASSERT(block_gather_pays(g, b), "shift_inplace_cl_block_gather: block");
  const int64_t W = b.width, L0 = g.length[0], L1 = g.length[1], L2 = g.length[2];
  const int64_t R = L0 * L1, positions = R * L2, S = st.slot[2];
  constexpr int32_t kOutsideIndex = -(1 << 29);  // three of them still fit in 32 bits
  // part[s][o * W + w]: channel first + w's source along slot s of output o, as an index
  // into a saved block (position-major, W per position).
  const int64_t scale[kSlots] = {L1 * L2 * W, L2 * W, W};
  std::vector<int32_t> part[kSlots];
  for (int s = 0; s < kSlots; ++s) {
    part[s].resize(g.length[s] * W);
    for (int64_t w = 0; w < W; ++w)
      for (int64_t o = 0; o < g.length[s]; ++o) {
        const int64_t i = source_index(o - shifts[b.first + w].shift[s], g.length[s], g.padding);
        part[s][o * W + w] =
            i == kOutside ? kOutsideIndex : static_cast<int32_t>(i * scale[s] + (s == 2 ? w : 0));
      }
  }
  int32_t* data = static_cast<int32_t*>(call.data);
  auto row_of = [&](int32_t* sample, int64_t r) {
    return sample + (r / L1) * st.slot[0] + (r % L1) * st.slot[1] + b.first;
  };
  auto save = [&](int32_t* sample, int64_t r0, int64_t r1, int32_t* saved) {
    for (int64_t r = r0; r < r1; ++r) {
      const int32_t* row = row_of(sample, r);
      int32_t* to = saved + r * L2 * W;
      for (int64_t i2 = 0; i2 < L2; ++i2) copy_bytes(to + i2 * W, row + i2 * S, W * 4);
    }
  };
  auto write = [&](int32_t* sample, int64_t r0, int64_t r1, const int32_t* saved) {
    for (int64_t r = r0; r < r1; ++r) {
      int32_t* row = row_of(sample, r);
      const int32_t* p0 = part[0].data() + (r / L1) * W;
      const int32_t* p1 = part[1].data() + (r % L1) * W;
      for (int64_t o2 = 0; o2 < L2; ++o2) {
        const int32_t* p2 = part[2].data() + o2 * W;
#if defined(TS2_AVX512)
        for (int64_t v = 0; v < W; v += 16) {
          const __m512i idx = _mm512_add_epi32(
              _mm512_add_epi32(_mm512_loadu_si512(p0 + v), _mm512_loadu_si512(p1 + v)),
              _mm512_loadu_si512(p2 + v));
          const __mmask16 inside = _mm512_cmpge_epi32_mask(idx, _mm512_setzero_si512());
          _mm512_storeu_si512(row + o2 * S + v, _mm512_mask_i32gather_epi32(_mm512_setzero_si512(),
                                                                            inside, idx, saved, 4));
        }
#else
        for (int64_t w = 0; w < W; ++w) {
          const int32_t idx = p0[w] + p1[w] + p2[w];
          row[o2 * S + w] = idx >= 0 ? saved[idx] : 0;
        }
#endif
      }
    }
  };
  if (g.batch >= at::get_num_threads()) {
    at::parallel_for(0, g.batch, 1, [&](int64_t begin, int64_t end) {
      std::unique_ptr<int32_t[]> saved(new int32_t[positions * W]);
      for (int64_t n = begin; n < end; ++n) {
        save(data + n * st.batch, 0, R, saved.get());
        write(data + n * st.batch, 0, R, saved.get());
      }
    });
    return;
  }
  // Fewer samples than threads: every sample saved (in parallel over rows), then written.
  std::unique_ptr<int32_t[]> saved(new int32_t[g.batch * positions * W]);
  const int64_t rows = g.batch * R;
  const int64_t grain = std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, L2 * W));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n = t / R, r = t % R;
      save(data + n * st.batch, r, r + 1, saved.get() + n * positions * W);
    }
  });
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n = t / R, r = t % R;
      write(data + n * st.batch, r, r + 1, saved.get() + n * positions * W);
    }
  });
}

// Dense planes, zeros padding: one memmove per slab, no buffer.
void shift_inplace_planar_zeros(const InplaceCall& call) {
  const Geometry& g = call.g;
  with_moving_channels(call, [&](auto* data, const Shifts<double>& shifts,
                                 const std::vector<int64_t>& moving) {
    using T = std::remove_pointer_t<decltype(data)>;
    for_each_moving_plane(data, g, call.st, moving, 0, [&](int64_t c, T* p, T*, int64_t* edges) {
      ssl_shift_plane_inplace_zeros(p, g, shifts[c], T(0), edges);
    });
  });
}

// Dense planes, other paddings: each moving plane copied out, then the flat forward back.
void shift_inplace_planar(const InplaceCall& call) {
  const Geometry& g = call.g;
  const Strides& st = call.st;
  with_moving_channels(call, [&](auto* data, const Shifts<double>& shifts,
                                 const std::vector<int64_t>& moving) {
    using T = std::remove_pointer_t<decltype(data)>;
    const int64_t plane = g.in_plane();
    for_each_moving_plane(data, g, st, moving, plane, [&](int64_t c, T* p, T* b, int64_t* edges) {
      copy_bytes(b, p, plane * sizeof(T));
      ssl_forward_plane_flat(static_cast<const T*>(b), g.length[1] * g.length[2], p, st.slot[0], g,
                             shifts[c], T(0), edges);
    });
  });
}

// Any other dense layout (channels not innermost): each moving plane packed into the
// buffer, then the strided forward back.
void shift_inplace_strided(const InplaceCall& call) {
  const Geometry& g = call.g;
  const Strides& st = call.st;
  with_moving_channels(call, [&](auto* data, const Shifts<double>& shifts,
                                 const std::vector<int64_t>& moving) {
    using T = std::remove_pointer_t<decltype(data)>;
    const int64_t L0 = g.length[0], L1 = g.length[1], L2 = g.length[2];
    const int64_t packed[kSlots] = {L1 * L2, L2, 1};
    for_each_moving_plane(data, g, st, moving, g.in_plane(), [&](int64_t c, T* p, T* b, int64_t*) {
      for (int64_t i0 = 0; i0 < L0; ++i0)
        for (int64_t i1 = 0; i1 < L1; ++i1) {
          const T* row = p + i0 * st.slot[0] + i1 * st.slot[1];
          T* dst = b + i0 * packed[0] + i1 * packed[1];
          for (int64_t i2 = 0; i2 < L2; ++i2) dst[i2] = row[i2 * st.slot[2]];
        }
      ssl_forward_plane(static_cast<const T*>(b), packed, p, st.slot, g, shifts[c], T(0));
    });
  });
}

void shift_inplace_cl_one_pass(const InplaceCall& call) {
  with_moving_channels(
      call, [&](auto* data, const Shifts<double>& shifts, const std::vector<int64_t>& moving) {
        using T = std::remove_pointer_t<decltype(data)>;
        ChannelsLastInplace<T>(data, call.g, call.st, shifts, moving).one_pass();
      });
}

void shift_inplace_cl_two_pass(const InplaceCall& call) {
  with_moving_channels(
      call, [&](auto* data, const Shifts<double>& shifts, const std::vector<int64_t>& moving) {
        using T = std::remove_pointer_t<decltype(data)>;
        ChannelsLastInplace<T>(data, call.g, call.st, shifts, moving).two_pass();
      });
}

}  // namespace torchshift2_cpu
