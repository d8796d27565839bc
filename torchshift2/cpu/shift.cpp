// torchshift2 CPU kernels: forward, grad_input and grad_weight of the shift (SPEC.md §2-§4).
//
// Registered as private ops torchshift2_cpu::forward / ::backward that write into outputs
// allocated by torchshift2/ops.py (so real and fake tensors agree on memory format).
// Geometry: the D spatial dims are right-aligned into 3 slots; missing leading slots have
// size 1, stride 0 and shift 0, so one loop nest serves D = 1, 2, 3. Slots 0 and 1 are the
// "outer" dims (a row is picked per output position), slot 2 is the last dim, walked by row
// routines whose interior (no padding involved) is a plain shifted copy / axpy, with the
// padding logic only at the row ends.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

namespace torchshift2_cpu {
namespace {

// Same order as torchshift2._spec.PADDINGS.
enum Padding : int64_t { kZeros = 0, kBorder = 1, kPeriodic = 2, kReflect = 3, kSymmetric = 4 };
constexpr int kSlots = 3;
constexpr int64_t kOutside = -1;
// Enough elements per parallel task to amortise its start-up.
constexpr int64_t kGrainElements = 32768;

inline int64_t floor_mod(int64_t a, int64_t m) {
  const int64_t r = a % m;
  return r < 0 ? r + m : r;
}

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
  auto mod = [](double s, double p) {
    const double r = std::fmod(s, p);
    return static_cast<int64_t>(r < 0 ? r + p : r);
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

inline int64_t clamp(int64_t v, int64_t lo, int64_t hi) { return std::min(std::max(v, lo), hi); }

struct Geometry {
  int64_t batch = 0, channels = 0, padding = 0;
  int64_t length[kSlots] = {1, 1, 1};
  int64_t out_length[kSlots] = {1, 1, 1};
  int64_t before[kSlots] = {0, 0, 0};
  bool real[kSlots] = {false, false, false};
  int64_t out_plane() const { return out_length[0] * out_length[1] * out_length[2]; }
  int64_t in_plane() const { return length[0] * length[1] * length[2]; }
};

struct Strides {
  int64_t batch = 0, channel = 0;
  int64_t slot[kSlots] = {0, 0, 0};
};

Strides strides_of(const at::Tensor& t) {
  Strides s;
  const int64_t ndim = t.dim() - 2;
  s.batch = t.stride(0);
  s.channel = t.stride(1);
  for (int64_t d = 0; d < ndim; ++d) s.slot[kSlots - ndim + d] = t.stride(2 + d);
  return s;
}

Geometry geometry_of(const at::Tensor& input, int64_t padding, at::IntArrayRef crop) {
  const int64_t ndim = input.dim() - 2;
  TORCH_CHECK(ndim >= 1 && ndim <= kSlots, "input: expected 3D, 4D or 5D, got ", input.dim(), "D");
  TORCH_CHECK(padding >= kZeros && padding <= kSymmetric, "padding: unknown code ", padding);
  TORCH_CHECK(static_cast<int64_t>(crop.size()) == 2 * ndim, "crop: expected ", 2 * ndim,
              " values, got ", crop.size());
  Geometry g;
  g.batch = input.size(0);
  g.channels = input.size(1);
  g.padding = padding;
  for (int64_t d = 0; d < ndim; ++d) {
    const int64_t slot = kSlots - ndim + d;
    const int64_t before = crop[2 * d], after = crop[2 * d + 1];
    const int64_t length = input.size(2 + d);
    TORCH_CHECK(before >= 0 && after >= 0 && before + after <= length, "crop: dim ", d,
                " of size ", length, " cannot drop ", before, " + ", after);
    g.length[slot] = length;
    g.out_length[slot] = length - before - after;
    g.before[slot] = before;
    g.real[slot] = true;
  }
  return g;
}

// Per channel and slot: the integer shift of corner 0 and the interpolation fraction.
template <typename opmath_t>
struct ChannelShift {
  int64_t shift[kSlots] = {0, 0, 0};
  opmath_t frac[kSlots] = {0, 0, 0};
};

// rounded: SSL's round-half-to-even shift (frac = 0); else floor(w) and w - floor(w).
template <typename opmath_t>
std::vector<ChannelShift<opmath_t>> channel_shifts(const at::Tensor& weight, const Geometry& g,
                                                   bool rounded) {
  const at::Tensor w = weight.to(at::kDouble).contiguous();
  const double* data = w.const_data_ptr<double>();
  const int64_t ndim = weight.size(1);
  std::vector<ChannelShift<opmath_t>> shifts(g.channels);
  for (int64_t c = 0; c < g.channels; ++c) {
    for (int64_t d = 0; d < ndim; ++d) {
      const int64_t slot = kSlots - ndim + d;
      const double value = data[c * ndim + d];
      TORCH_CHECK(std::isfinite(value), "weight: expected finite values on CPU, got ", value,
                  " at [", c, ", ", d, "]");
      const double base = rounded ? std::nearbyint(value) : std::floor(value);
      shifts[c].shift[slot] = reduce_shift(base, g.length[slot], g.padding);
      shifts[c].frac[slot] = static_cast<opmath_t>(rounded ? 0.0 : value - base);
    }
  }
  return shifts;
}

// One source row of an output row: for every corner of the outer slots (0, 1) that reads
// inside the tensor, its offset, its interpolation weight and the derivatives of that weight
// with respect to the fractions of slots 0 and 1.
template <typename opmath_t>
struct Row {
  int64_t offset;
  opmath_t weight, dfrac0, dfrac1;
};
constexpr int kMaxRows = 4;

template <typename opmath_t>
int outer_rows(Row<opmath_t>* rows, const Geometry& g, const ChannelShift<opmath_t>& cs,
               int64_t o0, int64_t o1, int64_t stride0, int64_t stride1, bool interpolate) {
  const int corners0 = interpolate && g.real[0] ? 2 : 1;
  const int corners1 = interpolate && g.real[1] ? 2 : 1;
  int count = 0;
  for (int a0 = 0; a0 < corners0; ++a0) {
    const int64_t i0 = source_index(o0 + g.before[0] - cs.shift[0] - a0, g.length[0], g.padding);
    if (i0 == kOutside) continue;
    const opmath_t w0 = corners0 == 1 ? opmath_t(1) : (a0 ? cs.frac[0] : 1 - cs.frac[0]);
    const opmath_t d0 = a0 ? opmath_t(1) : opmath_t(-1);
    for (int a1 = 0; a1 < corners1; ++a1) {
      const int64_t i1 =
          source_index(o1 + g.before[1] - cs.shift[1] - a1, g.length[1], g.padding);
      if (i1 == kOutside) continue;
      const opmath_t w1 = corners1 == 1 ? opmath_t(1) : (a1 ? cs.frac[1] : 1 - cs.frac[1]);
      const opmath_t d1 = a1 ? opmath_t(1) : opmath_t(-1);
      rows[count++] = Row<opmath_t>{i0 * stride0 + i1 * stride1, w0 * w1, d0 * w1, w0 * d1};
    }
  }
  return count;
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

// ---------------------------------------------------------------------------------------
// SSL forward: values are moved, never computed, so T is an integer carrier of the element
// size and every dtype (floating, integer, bool, quantized int_repr) shares this code.

template <typename T>
void copy_row(const T* x, int64_t xs, T* y, int64_t ys, const Geometry& g, int64_t shift,
              T fill) {
  const int64_t out_length = g.out_length[2], length = g.length[2], before = g.before[2];
  const Interior in = interior(out_length, length, before, shift, 1);
  auto edge = [&](int64_t o) {
    const int64_t idx = source_index(o + before - shift, length, g.padding);
    y[o * ys] = idx == kOutside ? fill : x[idx * xs];
  };
  for (int64_t o = 0; o < in.lo; ++o) edge(o);
  const T* src = x + (before - shift) * xs;
  if (xs == 1 && ys == 1) {
    std::memcpy(y + in.lo, src + in.lo, (in.hi - in.lo) * sizeof(T));
  } else {
    for (int64_t o = in.lo; o < in.hi; ++o) y[o * ys] = src[o * xs];
  }
  for (int64_t o = in.hi; o < out_length; ++o) edge(o);
}

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

template <typename T>
void ssl_forward_planes(const T* in, T* out, const Geometry& g, const Strides& is,
                        const Strides& os, const std::vector<ChannelShift<double>>& shifts,
                        T fill) {
  const int64_t grain = std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, g.out_plane()));
  at::parallel_for(0, g.batch * g.channels, grain, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const int64_t n = p / g.channels, c = p % g.channels;
      ssl_forward_plane(in + n * is.batch + c * is.channel, is.slot,
                        out + n * os.batch + c * os.channel, os.slot, g, shifts[c], fill);
    }
  });
}

// In place (the Sparse Shift Layer at inference): after training most rounded shifts are 0,
// and only the planes of channels that move are touched, each through a plane-sized buffer.
template <typename T>
void ssl_shift_inplace(T* data, const Geometry& g, const Strides& st,
                       const std::vector<ChannelShift<double>>& shifts, T fill) {
  std::vector<int64_t> moving;
  for (int64_t c = 0; c < g.channels; ++c)
    if (shifts[c].shift[0] != 0 || shifts[c].shift[1] != 0 || shifts[c].shift[2] != 0)
      moving.push_back(c);
  if (moving.empty()) return;
  const int64_t plane = g.in_plane();
  const int64_t tasks = g.batch * static_cast<int64_t>(moving.size());
  const int64_t dense[kSlots] = {g.length[1] * g.length[2], g.length[2], 1};
  const int64_t grain = std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, plane));
  at::parallel_for(0, tasks, grain, [&](int64_t begin, int64_t end) {
    std::vector<T> buffer(plane);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n = t / static_cast<int64_t>(moving.size());
      const int64_t c = moving[t % static_cast<int64_t>(moving.size())];
      T* p = data + n * st.batch + c * st.channel;
      T* b = buffer.data();
      for (int64_t i0 = 0; i0 < g.length[0]; ++i0)
        for (int64_t i1 = 0; i1 < g.length[1]; ++i1) {
          const T* row = p + i0 * st.slot[0] + i1 * st.slot[1];
          T* dst = b + i0 * dense[0] + i1 * dense[1];
          if (st.slot[2] == 1)
            std::memcpy(dst, row, g.length[2] * sizeof(T));
          else
            for (int64_t i2 = 0; i2 < g.length[2]; ++i2) dst[i2] = row[i2 * st.slot[2]];
        }
      ssl_forward_plane(static_cast<const T*>(b), dense, p, st.slot, g, shifts[c], fill);
    }
  });
}

// Channels-last: one task per output row (n, o0, o1) and, inside, each channel's row copied
// with stride C. The row (W x C elements) stays in L1, so it leaves as whole cache lines.
template <typename T>
void ssl_forward_channels_last(const T* in, T* out, const Geometry& g, const Strides& is,
                               const Strides& os,
                               const std::vector<ChannelShift<double>>& shifts, T fill) {
  const int64_t rows = g.batch * g.out_length[0] * g.out_length[1];
  const int64_t grain =
      std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, g.out_length[2] * g.channels));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / (g.out_length[0] * g.out_length[1]);
      const int64_t o0 = (r / g.out_length[1]) % g.out_length[0], o1 = r % g.out_length[1];
      T* yrow = out + n * os.batch + o0 * os.slot[0] + o1 * os.slot[1];
      for (int64_t c = 0; c < g.channels; ++c) {
        const ChannelShift<double>& cs = shifts[c];
        const int64_t i0 = source_index(o0 + g.before[0] - cs.shift[0], g.length[0], g.padding);
        const int64_t i1 = source_index(o1 + g.before[1] - cs.shift[1], g.length[1], g.padding);
        T* y = yrow + c * os.channel;
        if (i0 == kOutside || i1 == kOutside) {
          for (int64_t o = 0; o < g.out_length[2]; ++o) y[o * os.slot[2]] = fill;
          continue;
        }
        copy_row(in + n * is.batch + c * is.channel + i0 * is.slot[0] + i1 * is.slot[1],
                 is.slot[2], y, os.slot[2], g, cs.shift[2], fill);
      }
    }
  });
}

// ---------------------------------------------------------------------------------------
// Active forward: out = sum over corners of their weights times the padded reads (SPEC §3).

// Interior of an active output row: y[o] = sum_r c0[r] * src_r[o] + c1[r] * src_r[o - 1].
template <int kRows, typename scalar_t, typename opmath_t>
void interpolate_interior(scalar_t* y, const scalar_t* const* src, const opmath_t* c0,
                          const opmath_t* c1, int64_t lo, int64_t hi) {
#pragma omp simd
  for (int64_t o = lo; o < hi; ++o) {
    opmath_t value = 0;
    for (int r = 0; r < kRows; ++r)
      value += c0[r] * static_cast<opmath_t>(src[r][o]) +
               c1[r] * static_cast<opmath_t>(src[r][o - 1]);
    y[o] = static_cast<scalar_t>(value);
  }
}

// One active output row along slot 2 from the source rows of the outer corners:
// y[o] = sum_r weight_r ((1 - f) V_r(k) + f V_r(k - 1)), k = o + before - shift.
template <typename scalar_t, typename opmath_t>
void interpolate_row(scalar_t* y, int64_t ys, const Row<opmath_t>* rows, int count,
                     const scalar_t* x, int64_t xs, const Geometry& g, int64_t shift,
                     opmath_t frac) {
  const int64_t out_length = g.out_length[2], length = g.length[2], before = g.before[2];
  opmath_t c0[kMaxRows], c1[kMaxRows];
  for (int r = 0; r < count; ++r) {
    c0[r] = rows[r].weight * (1 - frac);
    c1[r] = rows[r].weight * frac;
  }
  const Interior in = interior(out_length, length, before, shift, 2);
  auto read = [&](const scalar_t* row, int64_t k) -> opmath_t {
    const int64_t idx = source_index(k, length, g.padding);
    return idx == kOutside ? opmath_t(0) : static_cast<opmath_t>(row[idx * xs]);
  };
  auto edge = [&](int64_t o) {
    const int64_t k = o + before - shift;
    opmath_t value = 0;
    for (int r = 0; r < count; ++r)
      value += c0[r] * read(x + rows[r].offset, k) + c1[r] * read(x + rows[r].offset, k - 1);
    y[o * ys] = static_cast<scalar_t>(value);
  };
  for (int64_t o = 0; o < in.lo; ++o) edge(o);
  for (int64_t o = in.hi; o < out_length; ++o) edge(o);
  if (xs == 1 && ys == 1 && count > 0) {
    const scalar_t* src[kMaxRows];
    for (int r = 0; r < count; ++r) src[r] = x + rows[r].offset + before - shift;
    switch (count) {
      case 1: interpolate_interior<1>(y, src, c0, c1, in.lo, in.hi); break;
      case 2: interpolate_interior<2>(y, src, c0, c1, in.lo, in.hi); break;
      case 3: interpolate_interior<3>(y, src, c0, c1, in.lo, in.hi); break;
      default: interpolate_interior<4>(y, src, c0, c1, in.lo, in.hi); break;
    }
  } else {
    for (int64_t o = in.lo; o < in.hi; ++o) {
      const int64_t k = o + before - shift;
      opmath_t value = 0;
      for (int r = 0; r < count; ++r) {
        const scalar_t* src = x + rows[r].offset + k * xs;
        value += c0[r] * static_cast<opmath_t>(src[0]) + c1[r] * static_cast<opmath_t>(src[-xs]);
      }
      y[o * ys] = static_cast<scalar_t>(value);
    }
  }
}

// Channels-last active forward: output rows outside, channels inside (as the SSL one).
template <typename scalar_t>
void active_forward_channels_last(
    const scalar_t* in, scalar_t* out, const Geometry& g, const Strides& is, const Strides& os,
    const std::vector<ChannelShift<at::opmath_type<scalar_t>>>& shifts) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t rows_total = g.batch * g.out_length[0] * g.out_length[1];
  const int64_t grain =
      std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, g.out_length[2] * g.channels));
  at::parallel_for(0, rows_total, grain, [&](int64_t begin, int64_t end) {
    Row<opmath_t> rows[kMaxRows];
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / (g.out_length[0] * g.out_length[1]);
      const int64_t o0 = (r / g.out_length[1]) % g.out_length[0], o1 = r % g.out_length[1];
      scalar_t* yrow = out + n * os.batch + o0 * os.slot[0] + o1 * os.slot[1];
      for (int64_t c = 0; c < g.channels; ++c) {
        const auto& cs = shifts[c];
        const int count = outer_rows(rows, g, cs, o0, o1, is.slot[0], is.slot[1], true);
        interpolate_row(yrow + c * os.channel, os.slot[2], rows, count,
                        in + n * is.batch + c * is.channel, is.slot[2], g, cs.shift[2],
                        cs.frac[2]);
      }
    }
  });
}

template <typename scalar_t>
void active_forward_planes(const scalar_t* in, scalar_t* out, const Geometry& g,
                           const Strides& is, const Strides& os,
                           const std::vector<ChannelShift<at::opmath_type<scalar_t>>>& shifts) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t grain = std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, g.out_plane()));
  at::parallel_for(0, g.batch * g.channels, grain, [&](int64_t begin, int64_t end) {
    Row<opmath_t> rows[kMaxRows];
    for (int64_t p = begin; p < end; ++p) {
      const int64_t n = p / g.channels, c = p % g.channels;
      const auto& cs = shifts[c];
      const scalar_t* x = in + n * is.batch + c * is.channel;
      scalar_t* y = out + n * os.batch + c * os.channel;
      for (int64_t o0 = 0; o0 < g.out_length[0]; ++o0) {
        for (int64_t o1 = 0; o1 < g.out_length[1]; ++o1) {
          const int count = outer_rows(rows, g, cs, o0, o1, is.slot[0], is.slot[1], true);
          interpolate_row(y + o0 * os.slot[0] + o1 * os.slot[1], os.slot[2], rows, count, x,
                          is.slot[2], g, cs.shift[2], cs.frac[2]);
        }
      }
    }
  });
}

// ---------------------------------------------------------------------------------------
// Backward. grad_input is the adjoint: every output scatters its gradient (times the corner
// weight) onto the input element it read, so paddings that make several outputs read one
// input sum their contributions. Each task owns whole (n, c) planes: no atomics, no races.
// grad_weight: per-plane partial sums, reduced over the batch in a fixed order afterwards,
// so the result does not depend on the thread count.

// acc[P(k)] += weight * g[o], k = o + before - shift (one corner of slot 2).
template <typename scalar_t, typename opmath_t>
void scatter_row(opmath_t* acc, const scalar_t* go, int64_t gs, const Geometry& g,
                 int64_t shift, opmath_t weight) {
  const int64_t out_length = g.out_length[2], length = g.length[2], before = g.before[2];
  const Interior in = interior(out_length, length, before, shift, 1);
  auto edge = [&](int64_t o) {
    const int64_t idx = source_index(o + before - shift, length, g.padding);
    if (idx != kOutside) acc[idx] += weight * static_cast<opmath_t>(go[o * gs]);
  };
  for (int64_t o = 0; o < in.lo; ++o) edge(o);
  opmath_t* dst = acc + before - shift;
  if (gs == 1) {
#pragma omp simd
    for (int64_t o = in.lo; o < in.hi; ++o) dst[o] += weight * static_cast<opmath_t>(go[o]);
  } else {
    for (int64_t o = in.lo; o < in.hi; ++o) dst[o] += weight * static_cast<opmath_t>(go[o * gs]);
  }
  for (int64_t o = in.hi; o < out_length; ++o) edge(o);
}

// Interior dot products sum_o g[o] * src_r[o] and sum_o g[o] * src_r[o - 1] of all source
// rows at once: grad_output is loaded once per element, and the loop vectorises.
template <int kRows, typename scalar_t, typename opmath_t>
void interior_dots(opmath_t* dot0, opmath_t* dot1, const scalar_t* const* src,
                   const scalar_t* go, int64_t lo, int64_t hi) {
  opmath_t d0[kRows] = {}, d1[kRows] = {};
#pragma omp simd reduction(+ : d0[:kRows], d1[:kRows])
  for (int64_t o = lo; o < hi; ++o) {
    const opmath_t grad = static_cast<opmath_t>(go[o]);
    for (int r = 0; r < kRows; ++r) {
      d0[r] += grad * static_cast<opmath_t>(src[r][o]);
      d1[r] += grad * static_cast<opmath_t>(src[r][o - 1]);
    }
  }
  for (int r = 0; r < kRows; ++r) {
    dot0[r] = d0[r];
    dot1[r] = d1[r];
  }
}

// grad_weight contributions of one output row (SPEC §4): with interp_r and diff_r the
// slot-2 interpolation and difference V(k - 1) - V(k) of source row r, slot 2 gets
// sum_r weight_r <g, diff_r> and slots 0 / 1 get sum_r dfrac_r <g, interp_r>.
template <typename scalar_t, typename opmath_t>
void weight_grad_row(opmath_t* sum, const Row<opmath_t>* rows, int count, const scalar_t* x,
                     int64_t xs, const scalar_t* go, int64_t gs, const Geometry& g,
                     int64_t shift, opmath_t frac) {
  if (count == 0) return;
  const int64_t out_length = g.out_length[2], length = g.length[2], before = g.before[2];
  const Interior in = interior(out_length, length, before, shift, 2);
  opmath_t dot0[kMaxRows] = {}, dot1[kMaxRows] = {};
  auto read = [&](const scalar_t* row, int64_t k) -> opmath_t {
    const int64_t idx = source_index(k, length, g.padding);
    return idx == kOutside ? opmath_t(0) : static_cast<opmath_t>(row[idx * xs]);
  };
  auto edge = [&](int64_t o) {
    const opmath_t grad = static_cast<opmath_t>(go[o * gs]);
    const int64_t k = o + before - shift;
    for (int r = 0; r < count; ++r) {
      dot0[r] += grad * read(x + rows[r].offset, k);
      dot1[r] += grad * read(x + rows[r].offset, k - 1);
    }
  };
  for (int64_t o = 0; o < in.lo; ++o) edge(o);
  for (int64_t o = in.hi; o < out_length; ++o) edge(o);
  if (in.hi > in.lo) {
    opmath_t inner0[kMaxRows] = {}, inner1[kMaxRows] = {};
    if (xs == 1 && gs == 1) {
      const scalar_t* src[kMaxRows];
      for (int r = 0; r < count; ++r) src[r] = x + rows[r].offset + before - shift;
      switch (count) {
        case 1: interior_dots<1>(inner0, inner1, src, go, in.lo, in.hi); break;
        case 2: interior_dots<2>(inner0, inner1, src, go, in.lo, in.hi); break;
        case 3: interior_dots<3>(inner0, inner1, src, go, in.lo, in.hi); break;
        default: interior_dots<4>(inner0, inner1, src, go, in.lo, in.hi); break;
      }
    } else {
      for (int64_t o = in.lo; o < in.hi; ++o) {
        const opmath_t grad = static_cast<opmath_t>(go[o * gs]);
        for (int r = 0; r < count; ++r) {
          const scalar_t* src = x + rows[r].offset + (o + before - shift) * xs;
          inner0[r] += grad * static_cast<opmath_t>(src[0]);
          inner1[r] += grad * static_cast<opmath_t>(src[-xs]);
        }
      }
    }
    for (int r = 0; r < count; ++r) {
      dot0[r] += inner0[r];
      dot1[r] += inner1[r];
    }
  }
  for (int r = 0; r < count; ++r) {
    const opmath_t interp = (1 - frac) * dot0[r] + frac * dot1[r];
    sum[0] += rows[r].dfrac0 * interp;
    sum[1] += rows[r].dfrac1 * interp;
    sum[2] += rows[r].weight * (dot1[r] - dot0[r]);
  }
}

template <typename scalar_t>
void backward_planes(const scalar_t* grad_out, const scalar_t* in, scalar_t* grad_in,
                     double* partials, const Geometry& g, const Strides& gos,
                     const Strides& is, const Strides& gis, bool active,
                     const std::vector<ChannelShift<at::opmath_type<scalar_t>>>& read_shifts,
                     const std::vector<ChannelShift<at::opmath_type<scalar_t>>>& interp_shifts) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t plane = g.in_plane();
  const int64_t grain = std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, plane));
  // Strides of the dense accumulation plane of grad_input.
  const int64_t acc_stride0 = g.length[1] * g.length[2], acc_stride1 = g.length[2];
  at::parallel_for(0, g.batch * g.channels, grain, [&](int64_t begin, int64_t end) {
    std::vector<opmath_t> acc(plane);
    Row<opmath_t> rows[kMaxRows];
    for (int64_t p = begin; p < end; ++p) {
      const int64_t n = p / g.channels, c = p % g.channels;
      const scalar_t* go = grad_out + n * gos.batch + c * gos.channel;
      const scalar_t* x = in + n * is.batch + c * is.channel;

      // grad_input, accumulated in op-math precision.
      std::fill(acc.begin(), acc.end(), opmath_t(0));
      const auto& rs = read_shifts[c];
      for (int64_t o0 = 0; o0 < g.out_length[0]; ++o0) {
        for (int64_t o1 = 0; o1 < g.out_length[1]; ++o1) {
          const scalar_t* gorow = go + o0 * gos.slot[0] + o1 * gos.slot[1];
          const int count = outer_rows(rows, g, rs, o0, o1, acc_stride0, acc_stride1, active);
          for (int r = 0; r < count; ++r) {
            opmath_t* dst = acc.data() + rows[r].offset;
            if (active) {
              scatter_row(dst, gorow, gos.slot[2], g, rs.shift[2], rows[r].weight * (1 - rs.frac[2]));
              scatter_row(dst, gorow, gos.slot[2], g, rs.shift[2] + 1, rows[r].weight * rs.frac[2]);
            } else {
              scatter_row(dst, gorow, gos.slot[2], g, rs.shift[2], rows[r].weight);
            }
          }
        }
      }
      scalar_t* gi = grad_in + n * gis.batch + c * gis.channel;
      for (int64_t i0 = 0; i0 < g.length[0]; ++i0)
        for (int64_t i1 = 0; i1 < g.length[1]; ++i1) {
          const opmath_t* src = acc.data() + i0 * acc_stride0 + i1 * acc_stride1;
          scalar_t* dst = gi + i0 * gis.slot[0] + i1 * gis.slot[1];
          for (int64_t i2 = 0; i2 < g.length[2]; ++i2)
            dst[i2 * gis.slot[2]] = static_cast<scalar_t>(src[i2]);
        }

      // grad_weight: the interpolation derivative at the unrounded weight (SPEC §4).
      if (partials == nullptr) continue;
      const auto& ws = interp_shifts[c];
      opmath_t sum[kSlots] = {0, 0, 0};
      for (int64_t o0 = 0; o0 < g.out_length[0]; ++o0) {
        for (int64_t o1 = 0; o1 < g.out_length[1]; ++o1) {
          const scalar_t* gorow = go + o0 * gos.slot[0] + o1 * gos.slot[1];
          const int count = outer_rows(rows, g, ws, o0, o1, is.slot[0], is.slot[1], true);
          weight_grad_row(sum, rows, count, x, is.slot[2], gorow, gos.slot[2], g, ws.shift[2],
                          ws.frac[2]);
        }
      }
      for (int s = 0; s < kSlots; ++s) partials[p * kSlots + s] = static_cast<double>(sum[s]);
    }
  });
}

at::ScalarType carrier_type(int64_t element_size) {
  switch (element_size) {
    case 1: return at::kByte;
    case 2: return at::kShort;
    case 4: return at::kInt;
    case 8: return at::kLong;
    default: TORCH_CHECK(false, "input: unsupported element size ", element_size);
  }
}

bool channels_inner(const at::Tensor& t) {
  return t.size(1) > 1 && t.stride(1) == 1 && t.stride(t.dim() - 1) != 1;
}

void check_common(const at::Tensor& input, const at::Tensor& weight) {
  TORCH_CHECK(input.device().is_cpu() && weight.device().is_cpu(),
              "torchshift2_cpu: expected CPU tensors, got input on ", input.device(),
              " and weight on ", weight.device());
  TORCH_CHECK(weight.dim() == 2 && weight.size(0) == input.size(1) &&
                  weight.size(1) == input.dim() - 2,
              "weight: expected shape (", input.size(1), ", ", input.dim() - 2, "), got ",
              weight.sizes());
  TORCH_CHECK(at::isFloatingType(weight.scalar_type()), "weight: expected a floating dtype, got ",
              weight.scalar_type());
}

void check_output(const at::Tensor& t, at::IntArrayRef sizes, at::ScalarType dtype,
                  const char* name) {
  TORCH_CHECK(t.sizes() == sizes && t.scalar_type() == dtype && t.device().is_cpu(), name,
              ": expected a CPU tensor of shape ", sizes, " and dtype ", dtype, ", got ",
              t.sizes(), " ", t.scalar_type());
}

std::vector<int64_t> output_sizes(const at::Tensor& input, const Geometry& g) {
  std::vector<int64_t> sizes{input.size(0), input.size(1)};
  const int64_t ndim = input.dim() - 2;
  for (int64_t d = 0; d < ndim; ++d) sizes.push_back(g.out_length[kSlots - ndim + d]);
  return sizes;
}

void forward(const at::Tensor& input_, const at::Tensor& weight, at::Tensor out, int64_t padding,
             bool active, at::IntArrayRef crop, double fill) {
  check_common(input_, weight);
  const Geometry g = geometry_of(input_, padding, crop);
  check_output(out, output_sizes(input_, g), input_.scalar_type(), "out");
  if (out.numel() == 0) return;
  const at::Tensor input = input_.is_non_overlapping_and_dense() ? input_ : input_.contiguous();
  const Strides is = strides_of(input), os = strides_of(out);
  const bool cl = channels_inner(input);
  if (!active) {
    const auto shifts = channel_shifts<double>(weight, g, /*rounded=*/true);
    const at::ScalarType carrier = carrier_type(input.element_size());
    const at::Tensor fill_value = at::full({}, fill, input.options()).view(carrier);
    AT_DISPATCH_INTEGRAL_TYPES(carrier, "torchshift2_ssl_forward", [&] {
      const scalar_t* src = static_cast<const scalar_t*>(input.const_data_ptr());
      scalar_t* dst = static_cast<scalar_t*>(out.data_ptr());
      const scalar_t f = fill_value.item<scalar_t>();
      if (cl)
        ssl_forward_channels_last(src, dst, g, is, os, shifts, f);
      else
        ssl_forward_planes(src, dst, g, is, os, shifts, f);
    });
    return;
  }
  TORCH_CHECK(at::isFloatingType(input.scalar_type()),
              "input: active=True needs a floating dtype, got ", input.scalar_type());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                  "torchshift2_active_forward", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const auto shifts = channel_shifts<opmath_t>(weight, g, /*rounded=*/false);
    if (cl)
      active_forward_channels_last(input.const_data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), g,
                                   is, os, shifts);
    else
      active_forward_planes(input.const_data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), g, is,
                            os, shifts);
  });
}

void backward(const at::Tensor& grad_output_, const at::Tensor& input_, const at::Tensor& weight,
              at::Tensor grad_input, at::Tensor grad_weight, int64_t padding, bool active,
              at::IntArrayRef crop) {
  check_common(input_, weight);
  TORCH_CHECK(at::isFloatingType(input_.scalar_type()),
              "input: gradients need a floating dtype, got ", input_.scalar_type());
  const Geometry g = geometry_of(input_, padding, crop);
  check_output(grad_output_, output_sizes(input_, g), input_.scalar_type(), "grad_output");
  check_output(grad_input, input_.sizes(), input_.scalar_type(), "grad_input");
  check_output(grad_weight, weight.sizes(), weight.scalar_type(), "grad_weight");
  if (input_.numel() == 0 || grad_output_.numel() == 0) {
    grad_input.zero_();
    grad_weight.zero_();
    return;
  }
  // The plane kernel wants each (n, c) plane dense: channels-last and other layouts go
  // through planar copies, which costs less than strided walks over every plane.
  const at::Tensor input = input_.contiguous();
  const at::Tensor grad_output = grad_output_.contiguous();
  at::Tensor planar_grad = grad_input.is_contiguous() ? grad_input : at::empty_like(input);
  const Strides gos = strides_of(grad_output), is = strides_of(input), gis = strides_of(planar_grad);
  at::Tensor partials = at::empty({g.batch, g.channels, kSlots}, at::kDouble);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                  "torchshift2_backward", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const auto interp_shifts = channel_shifts<opmath_t>(weight, g, /*rounded=*/false);
    const auto read_shifts =
        active ? interp_shifts : channel_shifts<opmath_t>(weight, g, /*rounded=*/true);
    backward_planes(grad_output.const_data_ptr<scalar_t>(), input.const_data_ptr<scalar_t>(),
                    planar_grad.data_ptr<scalar_t>(), partials.data_ptr<double>(), g, gos, is,
                    gis, active, read_shifts, interp_shifts);
  });
  if (!planar_grad.is_same(grad_input)) grad_input.copy_(planar_grad);
  // Serial fixed-order reduction over the batch; slots of missing leading dims are dropped.
  const int64_t ndim = input.dim() - 2;
  at::Tensor total = at::zeros({g.channels, ndim}, at::kDouble);
  const double* part = partials.const_data_ptr<double>();
  double* sum = total.data_ptr<double>();
  for (int64_t n = 0; n < g.batch; ++n)
    for (int64_t c = 0; c < g.channels; ++c)
      for (int64_t d = 0; d < ndim; ++d)
        sum[c * ndim + d] += part[(n * g.channels + c) * kSlots + kSlots - ndim + d];
  grad_weight.copy_(total);
}

void shift_inplace(at::Tensor input, const at::Tensor& weight, int64_t padding) {
  check_common(input, weight);
  const int64_t ndim = input.dim() - 2;
  const std::vector<int64_t> no_crop(2 * std::max<int64_t>(ndim, 0), 0);
  const Geometry g = geometry_of(input, padding, no_crop);
  TORCH_CHECK(input.is_non_overlapping_and_dense(),
              "input: shifting in place needs a dense tensor without overlapping memory");
  if (input.numel() == 0) return;
  const auto shifts = channel_shifts<double>(weight, g, /*rounded=*/true);
  const at::ScalarType carrier = carrier_type(input.element_size());
  const Strides st = strides_of(input);
  AT_DISPATCH_INTEGRAL_TYPES(carrier, "torchshift2_shift_inplace", [&] {
    ssl_shift_inplace(static_cast<scalar_t*>(input.data_ptr()), g, st, shifts, scalar_t(0));
  });
}

}  // namespace

TORCH_LIBRARY(torchshift2_cpu, m) {
  m.def("forward(Tensor input, Tensor weight, Tensor(a!) out, int padding, bool active, "
        "int[] crop, float fill) -> ()");
  m.def("backward(Tensor grad_output, Tensor input, Tensor weight, Tensor(a!) grad_input, "
        "Tensor(b!) grad_weight, int padding, bool active, int[] crop) -> ()");
  m.def("shift_inplace(Tensor(a!) input, Tensor weight, int padding) -> ()");
}

TORCH_LIBRARY_IMPL(torchshift2_cpu, CPU, m) {
  m.impl("forward", &forward);
  m.impl("backward", &backward);
  m.impl("shift_inplace", &shift_inplace);
}

}  // namespace torchshift2_cpu
