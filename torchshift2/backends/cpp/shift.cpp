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
#include <array>
#include <atomic>
#include <cmath>
#include <limits>
#include <map>
#include <memory>
#include <cstring>
#include <type_traits>
#include <vector>

namespace torchshift2_cpu {

// output_cache.cpp (compiled into the same library).
at::Tensor cached_empty(at::IntArrayRef sizes, at::ScalarType dtype, bool channels_last);
void empty_cache();
std::vector<int64_t> cache_info();

namespace {

// Same order as torchshift2._spec.PADDINGS.
enum Padding : int64_t { kZeros = 0, kBorder = 1, kPeriodic = 2, kReflect = 3, kSymmetric = 4 };
constexpr int kSlots = 3;
constexpr int64_t kOutside = -1;
// Enough elements per parallel task to amortise its start-up.
constexpr int64_t kGrainElements = 32768;

// An op-math value rounded to the output type: static_cast, except float -> bfloat16, which
// is c10's rounding (nearest even, NaN -> 0x7FC0) written without its branch so that loops
// of it vectorise (c10's scalar NaN test left the bfloat16 Active Shift forward's stores
// scalar: 70% of its time; benchmarks/NOTES.md v11).
template <typename scalar_t, typename opmath_t>
inline scalar_t round_to(opmath_t v) {
  return static_cast<scalar_t>(v);
}
template <>
inline c10::BFloat16 round_to<c10::BFloat16, float>(float v) {
  uint32_t u;
  std::memcpy(&u, &v, sizeof(u));
  const uint32_t rounded = (u + UINT32_C(0x7FFF) + ((u >> 16) & 1u)) >> 16;
  const uint16_t bits =
      (u & UINT32_C(0x7FFFFFFF)) > UINT32_C(0x7F800000) ? UINT16_C(0x7FC0) : static_cast<uint16_t>(rounded);
  return c10::BFloat16(bits, c10::BFloat16::from_bits());
}

// Writes an op-math row into the output (a copy when the types agree, a rounding otherwise).
template <typename scalar_t, typename opmath_t>
inline void store_row(scalar_t* dst, const opmath_t* src, int64_t n) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) dst[j] = round_to<scalar_t>(src[j]);
}

// Lanes of the vector blocks (16 float32 lanes of AVX-512): grad_weight's partial sums and
// the flat runs (stencil_run, adjoint_run, run_dots_flat).
constexpr int kLanes = 16;

// Per-call tables (the per-channel plans: tap indices, edge lists, adjoint lists) are many
// small vectors. With glibc's malloc and free they cost more than the kernel on small tensors
// with many channels: 35 of the 62 us of an Active Shift forward of 256 one-element planes.
// Table<T> takes them from a per-thread bump arena instead. Every block records its arena;
// a free only counts the arena's live blocks down (atomically: tables built in parallel
// tasks are freed by the calling thread), and the owning thread starts again from the
// beginning at its next allocation once none is live. So a Table must not outlive the call
// that made it (none is kept between calls).
class TableArena {
 public:
  static constexpr size_t kAlignment = 16;  // of every block

  static TableArena& local() {
    thread_local TableArena arena;
    return arena;
  }

  void* allocate(size_t bytes) {
    const size_t need = kHeader + ((bytes + kAlign - 1) & ~(kAlign - 1));
    if (live_.load(std::memory_order_acquire) == 0) rewind();
    if (chunks_.empty() || used_ + need > chunks_.back().size) grow(need);
    char* block = chunks_.back().data.get() + used_;
    used_ += need;
    live_.fetch_add(1, std::memory_order_relaxed);
    *reinterpret_cast<TableArena**>(block) = this;
    return block + kHeader;
  }

  static void deallocate(void* p) {
    TableArena* owner = *reinterpret_cast<TableArena**>(static_cast<char*>(p) - kHeader);
    owner->live_.fetch_sub(1, std::memory_order_release);
  }

  ~TableArena() {
    // A thread ending while a table it made is alive elsewhere: leave the memory to it.
    if (live_.load() != 0)
      for (Chunk& c : chunks_) c.data.release();
  }

 private:
  static constexpr size_t kAlign = kAlignment, kHeader = kAlignment;
  static constexpr size_t kFirstChunk = size_t(64) << 10, kKeepAtMost = size_t(16) << 20;
  struct Chunk {
    std::unique_ptr<char[]> data;
    size_t size;
  };

  void grow(size_t need) {
    const size_t last = chunks_.empty() ? kFirstChunk / 2 : chunks_.back().size;
    const size_t size = std::max(need, 2 * last);
    chunks_.push_back({std::unique_ptr<char[]>(new char[size]), size});
    used_ = 0;
  }

  // Nothing is live: one chunk as large as all of them (the next call of the same shape
  // fits in it), or none if that would hold more than kKeepAtMost.
  void rewind() {
    used_ = 0;
    if (chunks_.size() <= 1 && (chunks_.empty() || chunks_[0].size <= kKeepAtMost)) return;
    size_t total = 0;
    for (const Chunk& c : chunks_) total += c.size;
    chunks_.clear();
    if (total <= kKeepAtMost) chunks_.push_back({std::unique_ptr<char[]>(new char[total]), total});
  }

  std::vector<Chunk> chunks_;
  size_t used_ = 0;
  std::atomic<int64_t> live_{0};
};

template <typename T>
struct TableAllocator {
  using value_type = T;
  TableAllocator() = default;
  template <typename U>
  TableAllocator(const TableAllocator<U>&) {}
  T* allocate(size_t n) {
    static_assert(alignof(T) <= TableArena::kAlignment, "Table<T>: T needs more alignment");
    return static_cast<T*>(TableArena::local().allocate(n * sizeof(T)));
  }
  void deallocate(T* p, size_t) { TableArena::deallocate(p); }
  template <typename U>
  bool operator==(const TableAllocator<U>&) const { return true; }
  template <typename U>
  bool operator!=(const TableAllocator<U>&) const { return false; }
};

template <typename T>
using Table = std::vector<T, TableAllocator<T>>;

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

// Whether the (n, c) planes of `in` (input-sized) and `out` (output-sized) are dense rows
// of one flat run each, with slot 2 not cropped: the precondition of the flat runs.
inline bool flat_planes(const Geometry& g, const Strides& in, const Strides& out) {
  const int64_t L1 = g.length[1], L2 = g.length[2], O1 = g.out_length[1];
  return g.out_length[2] == L2 && (in.slot[2] == 1 || L2 == 1) && (out.slot[2] == 1 || L2 == 1) &&
         (in.slot[1] == L2 || L1 == 1) && (out.slot[1] == L2 || O1 == 1);
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
      const double value = data[c * ndim + d];  // finite: check_finite ran first
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
  int corner;  // a0 * 2 + a1
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
      rows[count++] =
          Row<opmath_t>{i0 * stride0 + i1 * stride1, w0 * w1, d0 * w1, w0 * d1, a0 * 2 + a1};
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

// Any strides (the fallback of ssl_forward_planes).
template <typename T>
void ssl_forward_planes_strided(const T* in, T* out, const Geometry& g, const Strides& is,
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

// In place with channels innermost. Only the cache lines holding a moving channel need to be
// read and written, but with channels spread over the lines that is most of them (a 64-byte
// line holds 16 float32 channels), so the cost is one pass over the tensor at best.
// One pass per sample (batch >= threads): output rows (slots 0, 1 flattened) in increasing
// order, each row's moving channels saved before it is written. A source row q of output
// row r is then read from the saved copy if q <= r (already overwritten) and from the
// tensor if q > r (not yet), whatever the padding. Fewer samples than threads: two passes
// parallel over rows, all moving channels copied out first, then written back shifted.
template <typename T>
void ssl_shift_inplace_channels_last(T* data, const Geometry& g, const Strides& st,
                                     const std::vector<ChannelShift<double>>& shifts,
                                     const std::vector<int64_t>& moving, T fill) {
  const int64_t K = static_cast<int64_t>(moving.size());
  const int64_t L0 = g.length[0], L1 = g.length[1], L2 = g.length[2];
  const int64_t R = L0 * L1;  // rows per sample
  // src[(k * kSlots + s) * L + o]: source index of output o along slot s, kOutside: fill.
  const int64_t Lmax = std::max({L0, L1, L2});
  std::vector<int64_t> src(K * kSlots * Lmax, kOutside);
  for (int64_t k = 0; k < K; ++k)
    for (int s = 0; s < kSlots; ++s)
      for (int64_t o = 0; o < g.length[s]; ++o)
        src[(k * kSlots + s) * Lmax + o] =
            source_index(o - shifts[moving[k]].shift[s], g.length[s], g.padding);
  auto slot_src = [&](int64_t k, int s) { return src.data() + (k * kSlots + s) * Lmax; };
  auto row_of = [&](T* sample, int64_t r) {
    return sample + (r / L1) * st.slot[0] + (r % L1) * st.slot[1];
  };
  // The moving channels of row `row` into b (K per position).
  auto save_row = [&](const T* row, T* b) {
    for (int64_t i2 = 0; i2 < L2; ++i2)
      for (int64_t k = 0; k < K; ++k) b[i2 * K + k] = row[i2 * st.slot[2] + moving[k]];
  };
  // Output row r of `sample`: channel k's source row is read through from[k] with element
  // stride step[k] along slot 2 (from[k] null: the whole row is the fill).
  auto write_row = [&](T* row, const T* const* from, const int64_t* step) {
    for (int64_t o2 = 0; o2 < L2; ++o2)
      for (int64_t k = 0; k < K; ++k) {
        const int64_t j = slot_src(k, 2)[o2];
        row[o2 * st.slot[2] + moving[k]] =
            from[k] == nullptr || j == kOutside ? fill : from[k][j * step[k]];
      }
  };
  if (g.batch >= at::get_num_threads()) {
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
    return;
  }
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

// ---------------------------------------------------------------------------------------
// Planar backward. The forward of one (n, c) plane is a tensor product of one linear map per
// slot (the taps of that slot with their padding rule), so grad_input is the product of the
// adjoint maps, computed as a gather: each grad_input row is written once, as a sum of the
// grad_output rows whose reads land on it (outer slots, from per-channel tables) shifted back
// along slot 2 (a plain copy / two-tap interpolation in the interior), plus a short fix-up
// for the outputs whose slot-2 reads went through padding (none for zeros padding).
// grad_weight: per-plane corner dot products, computed in the same sweep (slab by slab, right
// after the slab's grad_input rows, while its grad_output is in L1 / L2), reduced over the
// batch in a fixed order afterwards, so the result does not depend on the thread count.
// Each task owns whole (n, c) planes: no atomics, no races.

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
  const int corners = active && g.real[d] ? 2 : 1;
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

// The vector loop of the flat runs: dst[j] = sum over taps a of sum_k c[k][a] s[k][a][j],
// for j in [lo, end) (lo < L2), tap a dropped by a select where inside[a][j mod L2] is 0.
template <int K, int A, typename scalar_t, typename opmath_t>
inline void masked_taps(opmath_t* __restrict__ dst, const scalar_t* (&s)[K][A],
                        const opmath_t (&c)[K][A], const int32_t* const* inside, int64_t lo,
                        int64_t end, int64_t L2) {
  auto value = [&](int64_t j, const int32_t* m0, const int32_t* m1) {
    opmath_t v0 = 0, v1 = 0;
    for (int k = 0; k < K; ++k) {
      v0 += c[k][0] * static_cast<opmath_t>(s[k][0][j]);
      if (A == 2) v1 += c[k][A - 1] * static_cast<opmath_t>(s[k][A - 1][j]);
    }
    opmath_t v = *m0 ? v0 : opmath_t(0);
    if (A == 2) v += *m1 ? v1 : opmath_t(0);
    return v;
  };
  int64_t j = lo, column = lo;  // column = j mod L2
  for (; j + kLanes <= end; j += kLanes) {
    const int32_t* m0 = inside[0] + column;
    const int32_t* m1 = inside[A - 1] + column;
    // Written out, not through `value`: GCC does not vectorise the lambda's selects.
#pragma omp simd
    for (int l = 0; l < kLanes; ++l) {
      opmath_t v0 = 0, v1 = 0;
      for (int k = 0; k < K; ++k) {
        v0 += c[k][0] * static_cast<opmath_t>(s[k][0][j + l]);
        if (A == 2) v1 += c[k][A - 1] * static_cast<opmath_t>(s[k][A - 1][j + l]);
      }
      opmath_t v = m0[l] ? v0 : opmath_t(0);
      if (A == 2) v += m1[l] ? v1 : opmath_t(0);
      dst[j + l] = v;
    }
    column += kLanes;
    while (column >= L2) column -= L2;
  }
  for (; j < end; ++j, column = column + 1 == L2 ? 0 : column + 1)
    dst[j] = value(j, inside[0] + column, inside[A - 1] + column);
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

template <int A2, typename scalar_t, typename opmath_t>
void adjoint_run_any(opmath_t* dst, int count, const scalar_t* const* src, const opmath_t* p0,
                     const opmath_t* p1, int64_t offset, int64_t L2, int64_t rows,
                     const int32_t* inside0, const int32_t* inside1) {
  switch (count) {
    case 1: adjoint_run<1, A2>(dst, src, p0, p1, offset, L2, rows, inside0, inside1); break;
    case 2: adjoint_run<2, A2>(dst, src, p0, p1, offset, L2, rows, inside0, inside1); break;
    case 3: adjoint_run<3, A2>(dst, src, p0, p1, offset, L2, rows, inside0, inside1); break;
    case 4: adjoint_run<4, A2>(dst, src, p0, p1, offset, L2, rows, inside0, inside1); break;
    default: TORCH_INTERNAL_ASSERT(false, "adjoint_run: 1 to 4 source rows, got ", count);
  }
}

template <int A2, typename scalar_t, typename opmath_t>
void adjoint_chunk(opmath_t* dst, bool add, int count, const scalar_t* const* src,
                   const opmath_t* p0, const opmath_t* p1, int64_t offset, int64_t L2,
                   int64_t O2) {
#define TS2_ADJ(K)                                                                   \
  (add ? adjoint_row<K, A2, true>(dst, src, p0, p1, offset, L2, O2)                  \
       : adjoint_row<K, A2, false>(dst, src, p0, p1, offset, L2, O2))
  switch (count) {
    case 1: TS2_ADJ(1); break;
    case 2: TS2_ADJ(2); break;
    case 3: TS2_ADJ(3); break;
    default: TS2_ADJ(4); break;
  }
#undef TS2_ADJ
}

// Per plane: for each outer corner (a0 * 2 + a1) and slot-2 corner, the dot product of
// grad_output with the source values that corner reads, kept in kLanes partial sums so rows
// add into vectors and the horizontal sum happens once per plane, in a fixed order.
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
void add_run_dots(CornerDots<opmath_t>& dots, const Row<opmath_t>* rows,
                  const opmath_t (&d0)[K][kLanes], const opmath_t (&d1)[K][kLanes],
                  const opmath_t (&e0)[K], const opmath_t (&e1)[K]) {
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
template <int K, typename scalar_t, typename opmath_t>
void run_dots(CornerDots<opmath_t>& dots, const Row<opmath_t>* rows, const scalar_t* x,
              const scalar_t* go, int64_t count_rows, int64_t xs1, int64_t gs1,
              const RowAdjoint<opmath_t>& t, int64_t read_offset, const scalar_t* pf,
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
void run_dots_flat(CornerDots<opmath_t>& dots, const Row<opmath_t>* rows, const scalar_t* x,
                   const scalar_t* go, int64_t count_rows, int64_t L2,
                   const RowAdjoint<opmath_t>& t, int64_t read_offset, const scalar_t* pf,
                   const scalar_t* pf_x) {
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
void weight_grad_rows(CornerDots<opmath_t>& dots, const Row<opmath_t>* rows, int count,
                      const scalar_t* x, const scalar_t* go, int64_t count_rows, int64_t xs1,
                      int64_t gs1, const RowAdjoint<opmath_t>& t, int64_t read_offset,
                      const scalar_t* pf, const scalar_t* pf_x, int64_t pf_bytes, bool flat) {
  if (count_rows <= 0) return;
  // call(K) for K = count source rows (kernels are instantiated for 1-4).
  auto by_count = [&](auto call) {
    switch (count) {
      case 0: break;
      case 1: call(std::integral_constant<int, 1>()); break;
      case 2: call(std::integral_constant<int, 2>()); break;
      case 3: call(std::integral_constant<int, 3>()); break;
      default: call(std::integral_constant<int, 4>()); break;
    }
  };
  if (flat && count_rows > 1)
    by_count([&](auto k) {
      run_dots_flat<decltype(k)::value>(dots, rows, x, go, count_rows, xs1, t, read_offset, pf,
                                        pf_x);
    });
  else
    by_count([&](auto k) {
      run_dots<decltype(k)::value>(dots, rows, x, go, count_rows, xs1, gs1, t, read_offset, pf,
                                   pf_x, pf_bytes);
    });
}

// d/d frac of the plane's output from its corner dot products: with D0, D1 the slot-2
// corners, slot 2 gets sum_corner weight (D1 - D0) and slots 0 / 1 get
// sum_corner dweight/dfrac ((1 - f2) D0 + f2 D1).
template <typename opmath_t>
void combine_plane_dots(opmath_t* sum, const CornerDots<opmath_t>& dots, const Geometry& g,
                        const ChannelShift<opmath_t>& ws) {
  const int corners0 = g.real[0] ? 2 : 1, corners1 = g.real[1] ? 2 : 1;
  for (int a0 = 0; a0 < corners0; ++a0)
    for (int a1 = 0; a1 < corners1; ++a1) {
      const opmath_t w0 = corners0 == 1 ? opmath_t(1) : (a0 ? ws.frac[0] : 1 - ws.frac[0]);
      const opmath_t w1 = corners1 == 1 ? opmath_t(1) : (a1 ? ws.frac[1] : 1 - ws.frac[1]);
      const opmath_t d0 = a0 ? opmath_t(1) : opmath_t(-1), d1 = a1 ? opmath_t(1) : opmath_t(-1);
      const opmath_t D0 = dots.total(a0 * 2 + a1, 0), D1 = dots.total(a0 * 2 + a1, 1);
      const opmath_t interp = (1 - ws.frac[2]) * D0 + ws.frac[2] * D1;
      sum[0] += d0 * w1 * interp;
      sum[1] += w0 * d1 * interp;
      sum[2] += w0 * w1 * (D1 - D0);
    }
}

// The planar backward of single (n, c) planes: per-channel tables built once, then plane()
// per plane. Dense planes only: slot 2 of grad_output, input and grad_input is unit-stride
// (or of length 1), as backward() guarantees with contiguous copies and the channels-last
// path with its transposed blocks. Op-math storage (float, double) only: bfloat16 and half
// planes are widened first (backward_planes_widened).
template <typename scalar_t>
struct PlaneBackward {
  using opmath_t = at::opmath_type<scalar_t>;
  static_assert(std::is_same<scalar_t, opmath_t>::value, "PlaneBackward: op-math storage only");
  // Per-thread working memory of plane().
  struct Scratch {
    std::vector<const scalar_t*> src;
    std::vector<opmath_t> cf, p0, p1;
    Row<opmath_t> rows[kMaxRows];
    CornerDots<opmath_t> dots;
  };

  const Geometry& g;
  bool active;
  const std::vector<ChannelShift<opmath_t>>& read_shifts;
  const std::vector<ChannelShift<opmath_t>>& interp_shifts;
  // Per channel c: outer[d][outer_of[d][c]] (slots 0, 1) and row_tables[row_of[c]] (slot 2).
  Table<SlotAdjoint> outer[2];
  Table<int64_t> outer_of[2], row_of;
  Table<RowAdjoint<opmath_t>> row_tables;

  PlaneBackward(const Geometry& g_, bool active_,
                const std::vector<ChannelShift<opmath_t>>& read_shifts_,
                const std::vector<ChannelShift<opmath_t>>& interp_shifts_)
      : g(g_), active(active_), read_shifts(read_shifts_), interp_shifts(interp_shifts_) {
    // Channels whose keys agree share a table; the distinct ones are built in parallel.
    auto share = [&](auto key_of, Table<int64_t>& index_of, auto& tables, auto build) {
      using Key = decltype(key_of(int64_t(0)));
      Table<int64_t> first;  // a channel of each distinct table
      std::map<Key, int64_t> ids;
      index_of.resize(g.channels);
      for (int64_t c = 0; c < g.channels; ++c) {
        const auto found = ids.emplace(key_of(c), static_cast<int64_t>(first.size()));
        if (found.second) first.push_back(c);
        index_of[c] = found.first->second;
      }
      tables.resize(first.size());
      at::parallel_for(0, static_cast<int64_t>(first.size()), 64, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) tables[i] = build(first[i]);
      });
    };
    for (int d = 0; d < 2; ++d)
      share([&](int64_t c) { return read_shifts[c].shift[d]; }, outer_of[d], outer[d],
            [&](int64_t c) { return slot_adjoint(g, d, read_shifts[c].shift[d], active); });
    share([&](int64_t c) { return std::make_pair(read_shifts[c].shift[2], interp_shifts[c].shift[2]); },
          row_of, row_tables,
          [&](int64_t c) { return row_adjoint(g, read_shifts[c], interp_shifts[c], active); });
  }

  // One plane of channel c: grad_input into gi and, when partial is not null, its kSlots
  // grad_weight terms. next_go, next_x (or null): the next plane's grad_output and input,
  // prefetched during this plane's grad_weight phase (which reads only L1 / L2), at the
  // same row indices: it is a hint, exact only without crop.
  void plane(Scratch& s, int64_t c, const scalar_t* go, const scalar_t* x, scalar_t* gi,
             const Strides& gos, const Strides& is, const Strides& gis, const scalar_t* next_go,
             const scalar_t* next_x, double* partial) const {
    const int64_t L0 = g.length[0], L1 = g.length[1], L2 = g.length[2];
    const int64_t O0 = g.out_length[0], O1 = g.out_length[1], O2 = g.out_length[2];
    const SlotAdjoint& t0 = outer[0][outer_of[0][c]];
    const SlotAdjoint& t1 = outer[1][outer_of[1][c]];
    const RowAdjoint<opmath_t>& t = row_tables[row_of[c]];
    const auto& ws = interp_shifts[c];
    // The corner weights (SPEC §4 interpolation of the read shifts): slots 0 / 1 and slot 2.
    const auto& rs = read_shifts[c];
    opmath_t corner_weight[kSlots][2];
    for (int d = 0; d < kSlots; ++d) {
      const bool interpolates = active && (g.real[d] || d == 2);
      corner_weight[d][0] = interpolates ? 1 - rs.frac[d] : opmath_t(1);
      corner_weight[d][1] = interpolates ? rs.frac[d] : opmath_t(0);
    }
    const opmath_t* tap = corner_weight[2];
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
    const Interior w1 = interior(O1, L1, g.before[1], ws.shift[1], g.real[1] ? 2 : 1);

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
          cf.push_back(corner_weight[0][t0.corner[e0]] * corner_weight[1][t1.corner[e1]]);
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
        // previous plane's grad_weight pass fetched it (next_x), and re-issuing it cost 2-4%
        // (benchmarks/NOTES.md, v12).
        opmath_t* dst = gi + j0 * gis.slot[0] + j1 * L2;
        if (active)
          adjoint_run_any<2>(dst, count, src.data(), s.p0.data(), s.p1.data(), t.offset, L2,
                             count_rows, t.ginside[0].data(), t.ginside[1].data());
        else
          adjoint_run_any<1>(dst, count, src.data(), s.p0.data(), s.p1.data(), t.offset, L2,
                             count_rows, t.ginside[0].data(), t.ginside[1].data());
        for (int64_t r = 0; r < count_rows; ++r, dst += L2)
          for (int k = 0; k < count; ++k)
            for (size_t e = 0; e < extras; ++e)
              dst[t.extra_j[e]] += cf[k] * tap[t.extra_a[e]] *
                                   static_cast<opmath_t>(src[k][r * L2 + t.extra_o[e]]);
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
          for (int q = 0; q < count; q += 4) {
            const int m = std::min(4, count - q);
            if (active)
              adjoint_chunk<2>(dst, q > 0, m, src.data() + q, s.p0.data() + q, s.p1.data() + q,
                               t.offset, L2, O2);
            else
              adjoint_chunk<1>(dst, q > 0, m, src.data() + q, s.p0.data() + q, s.p1.data() + q,
                               t.offset, L2, O2);
          }
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
      weight_grad_rows(s.dots, s.rows, count, x, go + at, count_rows, is.slot[1], gos.slot[1],
                       t, read_offset, next_go == nullptr ? nullptr : next_go + at,
                       next_x == nullptr ? nullptr : next_x + o0 * is.slot[0] + o1 * is.slot[1],
                       row_bytes, flat_weight_rows);
    };

    // Slab by slab along slot 0 (the whole plane for D <= 2): grad_input rows, then the
    // grad_weight rows of the same slab while its grad_output rows are still in L1 / L2.
    if (weights) s.dots.clear();
    for (int64_t i = 0; i < std::max(L0, O0); ++i) {
      if (i < L0)
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
};

// Dense planes of a geometry's input and output sizes.
inline Strides plane_strides(const int64_t* length) {
  Strides s;
  s.slot[0] = length[1] * length[2], s.slot[1] = length[2], s.slot[2] = 1;
  return s;
}

// backward_planes for reduced-precision storage (bfloat16, half): each plane is widened into
// float buffers, the float kernel runs there (its flat runs vectorise; the reduced-type one
// converts per element inside them, 3d SSL backward 3.9 ms against float's 0.72), and
// grad_input is rounded back. Same op-math values in, float accumulation as before.
template <typename scalar_t>
void backward_planes_widened(
    const scalar_t* grad_out, const scalar_t* in, scalar_t* grad_in, double* partials,
    const Geometry& g, const Strides& gos, const Strides& is, const Strides& gis, bool active,
    const std::vector<ChannelShift<at::opmath_type<scalar_t>>>& read_shifts,
    const std::vector<ChannelShift<at::opmath_type<scalar_t>>>& interp_shifts) {
  using opmath_t = at::opmath_type<scalar_t>;
  const PlaneBackward<opmath_t> kernel(g, active, read_shifts, interp_shifts);
  const int64_t P = g.in_plane(), Q = g.out_plane();
  const Strides ps = plane_strides(g.length), qs = plane_strides(g.out_length);
  auto dense = [&](const Strides& s, const Strides& plane, const int64_t* length) {
    for (int d = 0; d < kSlots; ++d)
      if (length[d] > 1 && s.slot[d] != plane.slot[d]) return false;
    return true;
  };
  TORCH_INTERNAL_ASSERT(dense(is, ps, g.length) && dense(gis, ps, g.length) &&
                            dense(gos, qs, g.out_length),
                        "backward_planes_widened: planes must be dense");
  const int64_t grain = std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, P));
  at::parallel_for(0, g.batch * g.channels, grain, [&](int64_t begin, int64_t end) {
    typename PlaneBackward<opmath_t>::Scratch scratch;
    std::vector<opmath_t> buffer(2 * P + Q);
    opmath_t* x = buffer.data();
    opmath_t* gi = x + P;
    opmath_t* go = gi + P;
    for (int64_t p = begin; p < end; ++p) {
      const int64_t n = p / g.channels, c = p % g.channels;
      const scalar_t* x_plane = in + n * is.batch + c * is.channel;
      const scalar_t* go_plane = grad_out + n * gos.batch + c * gos.channel;
      scalar_t* gi_plane = grad_in + n * gis.batch + c * gis.channel;
      for (int64_t i = 0; i < P; ++i) x[i] = static_cast<opmath_t>(x_plane[i]);
      for (int64_t i = 0; i < Q; ++i) go[i] = static_cast<opmath_t>(go_plane[i]);
      kernel.plane(scratch, c, go, x, gi, qs, ps, ps, nullptr, nullptr,
                   partials == nullptr ? nullptr : partials + p * kSlots);
      store_row(gi_plane, gi, P);
    }
  });
}

// Dense (n, c) planes (see PlaneBackward); partials: kSlots per plane, or null.
template <typename scalar_t>
void backward_planes(const scalar_t* grad_out, const scalar_t* in, scalar_t* grad_in,
                     double* partials, const Geometry& g, const Strides& gos,
                     const Strides& is, const Strides& gis, bool active,
                     const std::vector<ChannelShift<at::opmath_type<scalar_t>>>& read_shifts,
                     const std::vector<ChannelShift<at::opmath_type<scalar_t>>>& interp_shifts) {
  if constexpr (!std::is_same<scalar_t, at::opmath_type<scalar_t>>::value) {
    backward_planes_widened(grad_out, in, grad_in, partials, g, gos, is, gis, active,
                            read_shifts, interp_shifts);
  } else {
    const PlaneBackward<scalar_t> kernel(g, active, read_shifts, interp_shifts);
    const int64_t grain = std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, g.in_plane()));
    at::parallel_for(0, g.batch * g.channels, grain, [&](int64_t begin, int64_t end) {
      typename PlaneBackward<scalar_t>::Scratch scratch;
      for (int64_t p = begin; p < end; ++p) {
        const int64_t n = p / g.channels, c = p % g.channels;
        // The next plane's grad_output and input are prefetched during this plane's
        // grad_weight phase (input too: 2d_56 SSL backward 2.41-3.08 -> 2.14-2.30 ms).
        const scalar_t* next_go = nullptr;
        const scalar_t* next_x = nullptr;
        if (p + 1 < end) {
          const int64_t nn = (p + 1) / g.channels, nc = (p + 1) % g.channels;
          next_go = grad_out + nn * gos.batch + nc * gos.channel;
          next_x = in + nn * is.batch + nc * is.channel;
        }
        kernel.plane(scratch, c, grad_out + n * gos.batch + c * gos.channel,
                     in + n * is.batch + c * is.channel, grad_in + n * gis.batch + c * gis.channel,
                     gos, is, gis, next_go, next_x,
                     partials == nullptr ? nullptr : partials + p * kSlots);
      }
    });
  }
}

// ---------------------------------------------------------------------------------------
// Planar kernels: every (n, c) plane is dense along slot 2 (unit stride). All per-channel
// index work (which source row each output row reads, where a row needs its padding rule)
// is done once per call into per-channel tables; the per-row code is a short vector loop
// over the row's interior plus a list of edge terms.

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

template <int A, typename scalar_t, typename opmath_t>
void stencil_run_any(opmath_t* dst, int count, const scalar_t* const* src, const opmath_t* coef,
                     const opmath_t* tap, const RowPlan& p, int64_t rows) {
  switch (count) {
    case 1: stencil_run<1, A>(dst, src, coef, tap, p, rows); break;
    case 2: stencil_run<2, A>(dst, src, coef, tap, p, rows); break;
    case 3: stencil_run<3, A>(dst, src, coef, tap, p, rows); break;
    case 4: stencil_run<4, A>(dst, src, coef, tap, p, rows); break;
    default: TORCH_INTERNAL_ASSERT(false, "stencil_run: 1 to 4 source rows, got ", count);
  }
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
    const int64_t m = std::min<int64_t>(4, count - k);
#define TS2_STENCIL(K)                                                    \
  (k == 0 ? stencil_row<K, A, false>(dst, src + k, coef + k, tap, p)     \
          : stencil_row<K, A, true>(dst, src + k, coef + k, tap, p))
    switch (m) {
      case 1: TS2_STENCIL(1); break;
      case 2: TS2_STENCIL(2); break;
      case 3: TS2_STENCIL(3); break;
      default: TS2_STENCIL(4); break;
    }
#undef TS2_STENCIL
  }
}


// Tap weights of one slot: (1 - frac, frac), or (1) for SSL / a missing slot.
template <typename opmath_t>
struct TapWeights {
  int taps = 1;
  opmath_t w[2] = {1, 0};
};

template <typename opmath_t>
TapWeights<opmath_t> tap_weights(bool interpolate, bool real, opmath_t frac) {
  TapWeights<opmath_t> t;
  if (interpolate && real) {
    t.taps = 2;
    t.w[0] = 1 - frac;
    t.w[1] = frac;
  }
  return t;
}

// --- Forward ---------------------------------------------------------------------------

// SSL, one plane, when a slab (slots 1, 2) is one flat run in both tensors and slot 2 is
// not cropped: the rows of a slab whose source rows are inside are one memcpy, shifted by
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
// were 12-16% of a 2d_28 forward's profile, against 33% for its memcpy; benchmarks/NOTES.md
// v10). x is only read for columns whose source is inside (none with zeros padding).
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
    if (hi > lo) std::memcpy(yr + lo, src + lo - f.s2, (hi - lo) * sizeof(T));
    edges(yr, src);
  };
  for (int64_t o1 = 0; o1 < f.rows.lo; ++o1) {
    const int64_t i1 = source_index(o1 + b1 - s1, L1, g.padding);
    row_from(o1, i1 == kOutside ? nullptr : x + i1 * L2);
  }
  if (f.rows.hi > f.rows.lo) {
    const FlatRange r = flat_interior(g, f, s1);
    if (r.n > 0) std::memcpy(y + r.dst, x + r.src, r.n * sizeof(T));
    edge_columns(y + f.rows.lo * L2, x + (f.rows.lo + b1 - s1) * L2, f.rows.hi - f.rows.lo, L2,
                 f, fill);
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

template <typename T>
void ssl_forward_planes(const T* in, T* out, const Geometry& g, const Strides& is,
                           const Strides& os, const std::vector<ChannelShift<double>>& shifts,
                           T fill) {
  const int64_t L2 = g.length[2];
  if (!flat_planes(g, is, os)) {
    ssl_forward_planes_strided(in, out, g, is, os, shifts, fill);
    return;
  }
  const int64_t grain = std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, g.out_plane()));
  at::parallel_for(0, g.batch * g.channels, grain, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> edges(L2);
    for (int64_t p = begin; p < end; ++p) {
      const int64_t n = p / g.channels, c = p % g.channels;
      ssl_forward_plane_flat(in + n * is.batch + c * is.channel, is.slot[0],
                             out + n * os.batch + c * os.channel, os.slot[0], g, shifts[c], fill,
                             edges.data());
    }
  });
}

// One dense plane shifted in place with zeros padding (no crop), without a buffer: every
// read through padding is the fill, so the only reads are each slab's interior, one
// overlap-safe memmove from its source slab. Slabs are visited away from the slot-0 shift,
// so a source slab is read before its own output is written, and within a slab the fills
// come after the move they would clobber. Half the memory traffic of going through a buffer.
template <typename T>
void ssl_shift_plane_inplace_zeros(T* p, const Geometry& g, const ChannelShift<double>& cs,
                                   T fill, int64_t* edge_scratch) {
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
    if (r.n > 0) std::memmove(ys + r.dst, p + i0 * slab + r.src, r.n * sizeof(T));
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

// In place (the Sparse Shift Layer at inference): after training most rounded shifts are 0,
// and only the planes of channels that move are touched, each through a plane-sized buffer
// (zeros padding: directly, ssl_shift_plane_inplace_zeros).
template <typename T>
void ssl_shift_inplace(T* data, const Geometry& g, const Strides& st,
                       const std::vector<ChannelShift<double>>& shifts, T fill) {
  std::vector<int64_t> moving;
  for (int64_t c = 0; c < g.channels; ++c)
    if (shifts[c].shift[0] != 0 || shifts[c].shift[1] != 0 || shifts[c].shift[2] != 0)
      moving.push_back(c);
  if (moving.empty()) return;
  if (st.channel == 1 && g.channels > 1) {
    ssl_shift_inplace_channels_last(data, g, st, shifts, moving, fill);
    return;
  }
  const int64_t L0 = g.length[0], L1 = g.length[1], L2 = g.length[2];
  const int64_t plane = g.in_plane();
  const bool dense = (st.slot[2] == 1 || L2 == 1) && (st.slot[1] == L2 || L1 == 1) &&
                     (st.slot[0] == L1 * L2 || L0 == 1);
  const int64_t tasks = g.batch * static_cast<int64_t>(moving.size());
  const int64_t packed[kSlots] = {L1 * L2, L2, 1};
  const int64_t grain = std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, plane));
  at::parallel_for(0, tasks, grain, [&](int64_t begin, int64_t end) {
    std::vector<T> buffer(plane);
    std::vector<int64_t> edges(L2);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n = t / static_cast<int64_t>(moving.size());
      const int64_t k = t % static_cast<int64_t>(moving.size()), c = moving[k];
      T* p = data + n * st.batch + c * st.channel;
      T* b = buffer.data();
      if (dense && g.padding == kZeros) {
        ssl_shift_plane_inplace_zeros(p, g, shifts[c], fill, edges.data());
        continue;
      }
      if (dense) {
        std::memcpy(b, p, plane * sizeof(T));
        ssl_forward_plane_flat(static_cast<const T*>(b), packed[0], p, st.slot[0], g, shifts[c],
                               fill, edges.data());
        continue;
      }
      for (int64_t i0 = 0; i0 < L0; ++i0)
        for (int64_t i1 = 0; i1 < L1; ++i1) {
          const T* row = p + i0 * st.slot[0] + i1 * st.slot[1];
          T* dst = b + i0 * packed[0] + i1 * packed[1];
          for (int64_t i2 = 0; i2 < L2; ++i2) dst[i2] = row[i2 * st.slot[2]];
        }
      ssl_forward_plane(static_cast<const T*>(b), packed, p, st.slot, g, shifts[c], fill);
    }
  });
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
  int64_t tables = 0;  // index into ActiveForwardPlanes::tables
};

// Active Shift forward of single planes (unit stride along slot 2 of the input): per-channel
// plans built once, then plane() per plane.
template <typename scalar_t>
struct ActiveForwardPlanes {
  using opmath_t = at::opmath_type<scalar_t>;
  static constexpr bool kDirect = std::is_same<scalar_t, opmath_t>::value;
  const Geometry& g;
  Table<ForwardPlan<opmath_t>> plans;
  Table<ForwardTables> tables;

  ActiveForwardPlanes(const Geometry& g_, const std::vector<ChannelShift<opmath_t>>& shifts)
      : g(g_), plans(g_.channels) {
    std::map<std::array<int64_t, kSlots>, int64_t> ids;
    for (int64_t c = 0; c < g.channels; ++c) {
      const auto& cs = shifts[c];
      ForwardPlan<opmath_t>& f = plans[c];
      f.w0 = tap_weights<opmath_t>(true, g.real[0], cs.frac[0]);
      f.w1 = tap_weights<opmath_t>(true, g.real[1], cs.frac[1]);
      f.w2 = tap_weights<opmath_t>(true, g.real[2], cs.frac[2]);
      f.shift1 = cs.shift[1];
      const std::array<int64_t, kSlots> key{cs.shift[0], cs.shift[1], cs.shift[2]};
      const auto found = ids.emplace(key, static_cast<int64_t>(tables.size()));
      f.tables = found.first->second;
      if (!found.second) continue;
      ForwardTables& t = tables.emplace_back();
      t.t0 = slot_taps(g.out_length[0], g.length[0], g.before[0], cs.shift[0], f.w0.taps,
                       g.padding);
      t.t1 = slot_taps(g.out_length[1], g.length[1], g.before[1], cs.shift[1], f.w1.taps,
                       g.padding);
      t.row = forward_row_plan(g.out_length[2], g.length[2], g.before[2], cs.shift[2],
                               f.w2.taps, g.padding);
    }
  }

  // Whether plane() needs an op-math buffer for outputs with these strides, and its size:
  // a slab's rows (a flat run is computed there whole, then rounded into the output).
  bool buffered(const Strides& os) const {
    return !(kDirect && (os.slot[2] == 1 || g.out_length[2] == 1));
  }
  int64_t buffer_size() const { return g.out_length[1] * g.out_length[2]; }

  // Output slabs [o0_begin, o0_end) of channel c's plane (o0_end < 0: to the last), y the
  // address of slab o0_begin.
  void plane(int64_t c, const scalar_t* x, const Strides& is, scalar_t* y, const Strides& os,
             opmath_t* buffer, int64_t o0_begin = 0, int64_t o0_end = -1) const {
    const int64_t O0 = o0_end < 0 ? g.out_length[0] : o0_end;
    const int64_t O1 = g.out_length[1], O2 = g.out_length[2];
    const ForwardPlan<opmath_t>& f = plans[c];
    const ForwardTables& t = tables[f.tables];
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
          else if (f.w2.taps == 2)
            stencil_run_any<2>(dst, count, src, coef, f.w2.w, t.row, rows);
          else
            stencil_run_any<1>(dst, count, src, coef, f.w2.w, t.row, rows);
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
        if (f.w2.taps == 2)
          stencil_rows<2>(dst, count, src, coef, f.w2.w, t.row);
        else
          stencil_rows<1>(dst, count, src, coef, f.w2.w, t.row);
        if (buffer == nullptr) continue;
        if (dense_out)
          store_row(yr, dst, O2);
        else
          for (int64_t o = 0; o < O2; ++o) yr[o * os.slot[2]] = round_to<scalar_t>(dst[o]);
      }
  }
};

template <typename scalar_t>
void active_forward_planes(const scalar_t* in, scalar_t* out, const Geometry& g,
                              const Strides& is, const Strides& os,
                              const std::vector<ChannelShift<at::opmath_type<scalar_t>>>& shifts) {
  using opmath_t = at::opmath_type<scalar_t>;
  TORCH_INTERNAL_ASSERT(is.slot[2] == 1 || g.length[2] == 1, "planar input must be unit-stride");
  const ActiveForwardPlanes<scalar_t> kernel(g, shifts);
  const bool buffered = kernel.buffered(os);
  const int64_t grain = std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, g.out_plane()));
  at::parallel_for(0, g.batch * g.channels, grain, [&](int64_t begin, int64_t end) {
    std::vector<opmath_t> buffer(buffered ? kernel.buffer_size() : 0);
    for (int64_t p = begin; p < end; ++p) {
      const int64_t n = p / g.channels, c = p % g.channels;
      kernel.plane(c, in + n * is.batch + c * is.channel, is, out + n * os.batch + c * os.channel,
                   os, buffered ? buffer.data() : nullptr);
    }
  });
}

// ---------------------------------------------------------------------------------------
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

inline bool channel_rows(const at::Tensor& t) {
  const int64_t last = t.dim() - 1;
  return t.stride(1) == 1 && (t.size(last) == 1 || t.stride(last) == t.size(1));
}

// A dense copy with channels innermost (channels_last / _3d, or (N, L, C) for 1D).
at::Tensor channels_last_copy(const at::Tensor& t) {
  std::vector<int64_t> order{0}, inverse{0, t.dim() - 1};
  for (int64_t d = 2; d < t.dim(); ++d) {
    order.push_back(d);
    inverse.push_back(d - 1);
  }
  order.push_back(1);
  return t.permute(order).contiguous().permute(inverse);
}

at::Tensor channels_last_empty(const at::Tensor& t) {
  std::vector<int64_t> sizes{t.size(0)}, inverse{0, t.dim() - 1};
  for (int64_t d = 2; d < t.dim(); ++d) {
    sizes.push_back(t.size(d));
    inverse.push_back(d - 1);
  }
  sizes.push_back(t.size(1));
  return at::empty(sizes, t.options()).permute(inverse);
}

template <typename opmath_t>
std::vector<int64_t> slot_shifts(const std::vector<ChannelShift<opmath_t>>& shifts, int slot) {
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

// Outer corner r of R: (a0, a1) = (r / corners1, r % corners1).
template <int R>
inline void outer_corner(int r, int& a0, int& a1) {
  constexpr int corners1 = R >= 2 ? 2 : 1;
  a0 = r / corners1;
  a1 = r % corners1;
}

// Weight of outer corner r (slots 0 and 1) for fractions f0, f1.
template <int R, typename opmath_t>
inline opmath_t outer_weight(int r, opmath_t f0, opmath_t f1) {
  int a0, a1;
  outer_corner<R>(r, a0, a1);
  const opmath_t w0 = R == 4 ? (a0 ? f0 : 1 - f0) : opmath_t(1);
  const opmath_t w1 = R >= 2 ? (a1 ? f1 : 1 - f1) : opmath_t(1);
  return w0 * w1;
}

// Channels-last backward. Tasks are (n, block of CB channels): each owns its grad_input
// elements and its grad_weight partials, so there are no races and nothing depends on the
// thread count. grad_input = the direct part, a gather from grad_output (input i was read by
// output o = i - before + shift + corner when that output exists), plus, for paddings other
// than zeros, a scatter of the reads that went through padding (near the borders only).
// grad_weight: per (n, c) the dot products D_a = <grad_output, V(i - floor(w) - a)> for the
// 2^D corners a; d out / d w_d = sum_a sign_d(a) prod_{e != d} weight_e(a_e) V_a, so the
// gradient is that combination of the D_a (done after the fixed-order batch reduction).
// A partial last block runs with its missing channels reading a row of zeros.
template <typename scalar_t, int R, bool kActive>
void backward_cl(const scalar_t* grad_out, const scalar_t* in, scalar_t* grad_in,
                 double* partials, const Geometry& g, const Strides& gos, const Strides& is,
                 const Strides& gis,
                 const std::vector<ChannelShift<at::opmath_type<scalar_t>>>& read_shifts,
                 const std::vector<ChannelShift<at::opmath_type<scalar_t>>>& interp_shifts) {
  using opmath_t = at::opmath_type<scalar_t>;
  constexpr int RR = kActive ? R : 1;  // outer corners read by grad_input
  constexpr int A2 = kActive ? 2 : 1;  // slot-2 corners read by grad_input
  constexpr int K = 2 * R;             // corners of grad_weight
  // Lanes per block, counted in op-math size: a reduced-precision block is as wide as a
  // float32 one and its op-math buffer (the whole image of the block) stays small.
  constexpr int64_t CB = kBlockBytes / sizeof(opmath_t);
  constexpr bool kDirect = std::is_same<scalar_t, opmath_t>::value;
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
            kActive ? outer_weight<R>(r, f[0], f[1]) * (a2 ? f[2] : 1 - f[2]) : opmath_t(1);
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
    std::vector<opmath_t> accbuf(kDirect ? 0 : L0 * L1 * L2 * CB);
    const scalar_t* base[R][CB];
    const scalar_t* q[R][CB];
    opmath_t carry[R][CB];
    double total[K][CB];
    opmath_t rowsum[K][CB];
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n = t / blocks, cb0 = (t % blocks) * CB, nb = std::min(CB, C - cb0);
      const scalar_t* go = grad_out + n * gos.batch + cb0;
      const scalar_t* x = in + n * is.batch + cb0;
      // grad_input goes straight to grad_in when it has the op-math type and the block is
      // whole; else through a dense op-math buffer.
      const bool direct = kDirect && nb == CB;
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
            int a0, a1;
            outer_corner<R>(r, a0, a1);
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
              for (int64_t c = 0; c < CB; ++c)
                carry[r][c] = static_cast<opmath_t>(q[r][c][lo * C]);
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
                  s += dc[(r * A2) * dstride + c] * carry[r][c] +
                       dc[(r * A2 + 1) * dstride + c] * nxt;
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
            int a0, a1;
            outer_corner<R>(r, a0, a1);
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
                if (ej[c] >= 0)
                  rowsum[2 * r + 1][c] += gv * static_cast<opmath_t>(base[r][c][ej[c]]);
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
            int a0, a1;
            outer_corner<R>(r, a0, a1);
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
              for (int64_t c = 0; c < nb; ++c)
                dst[i2 * gis.slot[2] + c] = round_to<scalar_t>(src[i2 * as2 + c]);
          }
      }
      if (partials == nullptr) continue;
      for (int64_t c = 0; c < nb; ++c)
        for (int k = 0; k < K; ++k) partials[(n * C + cb0 + c) * K + k] = total[k][c];
    }
  });
}

// grad_weight from the corner partials of backward_cl: a fixed-order sum over the batch,
// then d/dw_d = sum_a sign_d(a) prod_{e != d} weight_e(a_e) D_a, in double.
void combine_corner_partials(const double* partials, int64_t batch, const at::Tensor& weight,
                             at::Tensor grad_weight) {
  const int64_t C = weight.size(0), ndim = weight.size(1), R = int64_t(1) << (ndim - 1),
                K = 2 * R;
  const at::Tensor w = weight.to(at::kDouble).contiguous();
  const double* wd = w.const_data_ptr<double>();
  at::Tensor total = at::zeros({C, ndim}, at::kDouble);
  double* out = total.data_ptr<double>();
  std::vector<double> D(K);
  for (int64_t c = 0; c < C; ++c) {
    std::fill(D.begin(), D.end(), 0.0);
    for (int64_t n = 0; n < batch; ++n)
      for (int64_t k = 0; k < K; ++k) D[k] += partials[(n * C + c) * K + k];
    double f[kSlots] = {0, 0, 0};
    for (int64_t d = 0; d < ndim; ++d) {
      const double v = wd[c * ndim + d];
      f[kSlots - ndim + d] = v - std::floor(v);
    }
    for (int64_t k = 0; k < K; ++k) {
      // corner bits per slot: slot 2 = k % 2; r = k / 2 = a0 * corners1 + a1.
      const int64_t r = k / 2, corners1 = R >= 2 ? 2 : 1;
      const int a[kSlots] = {static_cast<int>(r / corners1), static_cast<int>(r % corners1),
                             static_cast<int>(k % 2)};
      for (int64_t d = 0; d < ndim; ++d) {
        const int64_t slot = kSlots - ndim + d;
        double term = a[slot] ? 1.0 : -1.0;
        for (int64_t e = kSlots - ndim; e < kSlots; ++e)
          if (e != slot) term *= a[e] ? f[e] : 1 - f[e];
        out[c * ndim + d] += term * D[k];
      }
    }
  }
  grad_weight.copy_(total);
}

}  // namespace

}  // namespace torchshift2_cpu
