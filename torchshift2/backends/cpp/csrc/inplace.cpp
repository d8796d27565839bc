// In place (SSL, no crop; the Sparse Shift Layer at inference): the input shifted in its
// own memory. After training most rounded shifts are 0, so only channels that move are
// touched: in planar layouts their (n, c) planes, each through a plane-sized buffer or, with
// zeros padding on dense planes, directly (ssl_shift_plane_inplace_zeros); with channels
// innermost, the rows of each sample (see ChannelsLastInplace).
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <type_traits>
#include <vector>

#include "copy.h"
#include "dispatch.h"
#include "geometry.h"
#include "kernels.h"
#include "planes.h"

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
// line holds 16 float32 channels), so the cost is one pass over the tensor at best.
// One pass per sample (batch >= threads): output rows (slots 0, 1 flattened) in increasing
// order, each row's moving channels saved before it is written. A source row q of output
// row r is then read from the saved copy if q <= r (already overwritten) and from the
// tensor if q > r (not yet), whatever the padding. Fewer samples than threads: two passes
// parallel over rows, all moving channels copied out first, then written back shifted.
template <typename T>
struct ChannelsLastInplace {
  T* data;
  const Geometry& g;
  const Strides& st;
  const Shifts<double>& shifts;
  const std::vector<int64_t>& moving;
  const T fill = T(0);
  const int64_t K, L0, L1, L2, R, Lmax;
  // src[(k * kSlots + s) * Lmax + o]: source index of output o along slot s, kOutside: fill.
  std::vector<int64_t> src;

  ChannelsLastInplace(T* data_, const Geometry& g_, const Strides& st_,
                      const Shifts<double>& shifts_, const std::vector<int64_t>& moving_)
      : data(data_),
        g(g_),
        st(st_),
        shifts(shifts_),
        moving(moving_),
        K(static_cast<int64_t>(moving_.size())),
        L0(g_.length[0]),
        L1(g_.length[1]),
        L2(g_.length[2]),
        R(L0 * L1),
        Lmax(std::max({L0, L1, L2})),
        src(K * kSlots * Lmax, kOutside) {
    for (int64_t k = 0; k < K; ++k)
      for (int s = 0; s < kSlots; ++s)
        for (int64_t o = 0; o < g.length[s]; ++o)
          src[(k * kSlots + s) * Lmax + o] =
              source_index(o - shifts[moving[k]].shift[s], g.length[s], g.padding);
  }

  const int64_t* slot_src(int64_t k, int s) const { return src.data() + (k * kSlots + s) * Lmax; }
  T* row_of(T* sample, int64_t r) const {
    return sample + (r / L1) * st.slot[0] + (r % L1) * st.slot[1];
  }
  // The moving channels of row `row` into b (K per position).
  void save_row(const T* row, T* b) const {
    for (int64_t i2 = 0; i2 < L2; ++i2)
      for (int64_t k = 0; k < K; ++k) b[i2 * K + k] = row[i2 * st.slot[2] + moving[k]];
  }
  // Output row r of `sample`: channel k's source row is read through from[k] with element
  // stride step[k] along slot 2 (from[k] null: the whole row is the fill).
  void write_row(T* row, const T* const* from, const int64_t* step) const {
    for (int64_t o2 = 0; o2 < L2; ++o2)
      for (int64_t k = 0; k < K; ++k) {
        const int64_t j = slot_src(k, 2)[o2];
        row[o2 * st.slot[2] + moving[k]] =
            from[k] == nullptr || j == kOutside ? fill : from[k][j * step[k]];
      }
  }

  void one_pass() const {
    at::parallel_for(0, g.batch, 1, [&](int64_t begin, int64_t end) {
      std::unique_ptr<T[]> saved(new T[R * L2 * K]);
      std::vector<const T*> from(K);
      std::vector<int64_t> step(K);
      for (int64_t n = begin; n < end; ++n) {
        T* sample = data + n * st.batch;
        for (int64_t r = 0; r < R; ++r) {
          T* row = row_of(sample, r);
          save_row(row, saved.get() + r * L2 * K);
          const int64_t o0 = r / L1, o1 = r % L1;
          for (int64_t k = 0; k < K; ++k) {
            const int64_t q0 = slot_src(k, 0)[o0], q1 = slot_src(k, 1)[o1];
            const int64_t q = q0 * L1 + q1;
            if (q0 == kOutside || q1 == kOutside)
              from[k] = nullptr;
            else if (q <= r)
              from[k] = saved.get() + q * L2 * K + k, step[k] = K;
            else
              from[k] = row_of(sample, q) + moving[k], step[k] = st.slot[2];
          }
          write_row(row, from.data(), step.data());
        }
      }
    });
  }

  void two_pass() const {
    const int64_t rows = g.batch * R;
    std::unique_ptr<T[]> buffer(new T[rows * L2 * K]);
    const int64_t grain = std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, L2 * K));
    at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r)
        save_row(row_of(data + (r / R) * st.batch, r % R), buffer.get() + r * L2 * K);
    });
    at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
      std::vector<const T*> from(K);
      std::vector<int64_t> step(K, K);
      for (int64_t r = begin; r < end; ++r) {
        const int64_t n = r / R, o0 = (r % R) / L1, o1 = r % L1;
        for (int64_t k = 0; k < K; ++k) {
          const int64_t q0 = slot_src(k, 0)[o0], q1 = slot_src(k, 1)[o1];
          from[k] = q0 == kOutside || q1 == kOutside
                        ? nullptr
                        : buffer.get() + ((n * L0 + q0) * L1 + q1) * L2 * K + k;
        }
        write_row(row_of(data + n * st.batch, r % R), from.data(), step.data());
      }
    });
  }
};

}  // namespace

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
