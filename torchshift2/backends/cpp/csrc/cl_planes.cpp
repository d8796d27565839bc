// Channels-last through L2-resident planes. A task (n, group of blocks of one vector of
// channels each) transposes its input blocks into dense planes in a per-thread buffer, runs
// the planar per-plane kernel (planes.h) on them while they sit in L2, and transposes the
// result back: each tensor is read or written once in memory, with whole cache lines, and
// the per-element work is the planar kernel's (no gathers, whose lanes miss L1 one by one).
// through_planes decides where that is faster than the gathers.
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <type_traits>
#include <vector>

#include "cache.h"
#include "copy.h"
#include "dispatch.h"
#include "geometry.h"
#include "kernels.h"
#include "planes.h"
#include "simd.h"

namespace torchshift2_cpu {
namespace {

// Whether a channels-last tensor's samples are dense: slot strides (L1 L2 C, L2 C, C) on
// the slots that exist, channel stride 1.
inline bool dense_channels_last(const Strides& s, const int64_t* length, int64_t channels) {
  if (s.channel != 1 && channels > 1) return false;
  int64_t expected = channels;
  for (int slot = kSlots - 1; slot >= 0; --slot) {
    if (length[slot] > 1 && s.slot[slot] != expected) return false;
    expected *= length[slot];
  }
  return true;
}

// Channels per block: one 64-byte vector of elements.
template <typename T>
constexpr int64_t kTransposeLanes = kVectorBytes / sizeof(T);

#ifdef TS2_AVX512
// r[i] (16 lanes) becomes column i of the 16 x 16 matrix whose rows were r: 32-bit, then
// 64-bit interleaves transpose the 4 x 4 blocks inside each 128-bit lane, two 128-bit
// shuffles transpose the 4 x 4 matrix of lanes.
inline void transpose16(__m512 r[16]) {
  __m512 t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  __m512d u[16];
  for (int j = 0; j < 4; ++j) {
    const __m512d a = _mm512_castps_pd(t[4 * j]), b = _mm512_castps_pd(t[4 * j + 1]),
                  c = _mm512_castps_pd(t[4 * j + 2]), d = _mm512_castps_pd(t[4 * j + 3]);
    u[4 * j] = _mm512_unpacklo_pd(a, c);
    u[4 * j + 1] = _mm512_unpackhi_pd(a, c);
    u[4 * j + 2] = _mm512_unpacklo_pd(b, d);
    u[4 * j + 3] = _mm512_unpackhi_pd(b, d);
  }
  // u[4 j + m], lane k: column 4 k + m of rows 4 j .. 4 j + 3.
  for (int m = 0; m < 4; ++m) {
    const __m512 u0 = _mm512_castpd_ps(u[m]), u1 = _mm512_castpd_ps(u[4 + m]),
                 u2 = _mm512_castpd_ps(u[8 + m]), u3 = _mm512_castpd_ps(u[12 + m]);
    const __m512 s0 = _mm512_shuffle_f32x4(u0, u1, _MM_SHUFFLE(1, 0, 1, 0));
    const __m512 s1 = _mm512_shuffle_f32x4(u0, u1, _MM_SHUFFLE(3, 2, 3, 2));
    const __m512 s2 = _mm512_shuffle_f32x4(u2, u3, _MM_SHUFFLE(1, 0, 1, 0));
    const __m512 s3 = _mm512_shuffle_f32x4(u2, u3, _MM_SHUFFLE(3, 2, 3, 2));
    r[m] = _mm512_shuffle_f32x4(s0, s2, _MM_SHUFFLE(2, 0, 2, 0));
    r[4 + m] = _mm512_shuffle_f32x4(s0, s2, _MM_SHUFFLE(3, 1, 3, 1));
    r[8 + m] = _mm512_shuffle_f32x4(s1, s3, _MM_SHUFFLE(2, 0, 2, 0));
    r[12 + m] = _mm512_shuffle_f32x4(s1, s3, _MM_SHUFFLE(3, 1, 3, 1));
  }
}
#endif

#ifdef TS2_AVX2
// r[i] (8 lanes) becomes column i of the 8 x 8 matrix whose rows were r.
inline void transpose8(__m256 r[8]) {
  __m256 t[8], u[8];
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int j = 0; j < 2; ++j) {
    u[4 * j] = _mm256_shuffle_ps(t[4 * j], t[4 * j + 2], _MM_SHUFFLE(1, 0, 1, 0));
    u[4 * j + 1] = _mm256_shuffle_ps(t[4 * j], t[4 * j + 2], _MM_SHUFFLE(3, 2, 3, 2));
    u[4 * j + 2] = _mm256_shuffle_ps(t[4 * j + 1], t[4 * j + 3], _MM_SHUFFLE(1, 0, 1, 0));
    u[4 * j + 3] = _mm256_shuffle_ps(t[4 * j + 1], t[4 * j + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int m = 0; m < 4; ++m) {
    r[m] = _mm256_permute2f128_ps(u[m], u[4 + m], 0x20);
    r[4 + m] = _mm256_permute2f128_ps(u[m], u[4 + m], 0x31);
  }
}
#endif

// Positions ahead of the transposed ones whose rows to_planes prefetches.
constexpr int64_t kPrefetchPositions = 32;

// The lines of `lanes` channels from c0 of the rows of positions [p, p + count), prefetched.
template <typename T>
inline void prefetch_rows(const T* rows, int64_t channels, int64_t c0, int64_t p, int64_t count) {
  for (int64_t i = 0; i < count; ++i) __builtin_prefetch(rows + (p + i) * channels + c0, 0, 3);
}

// planes[c * plane + p] = rows[p * channels + c] for c < lanes, p < positions: a 16 x 16
// (AVX2: 8 x 8) transpose per block of lanes, the blocks of a position group one after the
// other, so that the rows are read a whole cache line after the other. prefetch: the rows
// kPrefetchPositions ahead too (strided_prefetch_pays, cache.h): a group of a few blocks
// reads a few lines of each row, pages apart after a few rows, which the hardware
// prefetchers follow only partly.
template <typename T>
void to_planes(const T* rows, int64_t channels, int64_t lanes, int64_t positions, T* planes,
               int64_t plane, bool prefetch = false) {
  int64_t p0 = 0;
#ifdef TS2_AVX512
  if constexpr (std::is_same<T, float>::value) {
    __m512 r[16];
    for (; p0 + 16 <= positions; p0 += 16)
      for (int64_t c0 = 0; c0 < lanes; c0 += 16) {
        if (prefetch && p0 + kPrefetchPositions + 16 <= positions)
          prefetch_rows(rows, channels, c0, p0 + kPrefetchPositions, 16);
        const __mmask16 m = static_cast<__mmask16>(lanes_below(static_cast<int>(lanes - c0)));
        for (int i = 0; i < 16; ++i)
          r[i] = _mm512_maskz_loadu_ps(m, rows + (p0 + i) * channels + c0);
        transpose16(r);
        for (int64_t c = c0; c < std::min<int64_t>(lanes, c0 + 16); ++c)
          _mm512_storeu_ps(planes + c * plane + p0, r[c - c0]);
      }
  }
#elif defined(TS2_AVX2)
  if constexpr (std::is_same<T, float>::value) {
    __m256 r[8];
    for (; p0 + 8 <= positions; p0 += 8)
      for (int64_t c0 = 0; c0 < lanes; c0 += 8) {
        // One 64-byte line holds two blocks: the even ones prefetch it.
        if (prefetch && c0 % 16 == 0 && p0 + kPrefetchPositions + 8 <= positions)
          prefetch_rows(rows, channels, c0, p0 + kPrefetchPositions, 8);
        const __m256i m = lane_mask32(lanes_below(static_cast<int>(lanes - c0)));
        for (int i = 0; i < 8; ++i) r[i] = _mm256_maskload_ps(rows + (p0 + i) * channels + c0, m);
        transpose8(r);
        for (int64_t c = c0; c < std::min<int64_t>(lanes, c0 + 8); ++c)
          _mm256_storeu_ps(planes + c * plane + p0, r[c - c0]);
      }
  }
#endif
  for (; p0 < positions; ++p0)
    for (int64_t c = 0; c < lanes; ++c) planes[c * plane + p0] = rows[p0 * channels + c];
}

// rows[p * channels + c] = planes[c * plane + p] for c < lanes, p < positions (to_planes'
// inverse, in the same order). stream: whole 16-channel blocks of float rows with streaming
// stores (AVX-512; rows + c0 on a cache line, see rows_on_lines); the caller fences.
template <typename T>
void from_planes(const T* planes, int64_t plane, int64_t lanes, int64_t positions, T* rows,
                 int64_t channels, bool stream = false) {
  int64_t p0 = 0;
#ifdef TS2_AVX512
  if constexpr (std::is_same<T, float>::value) {
    __m512 r[16];
    for (; p0 + 16 <= positions; p0 += 16)
      for (int64_t c0 = 0; c0 < lanes; c0 += 16) {
        const int64_t count = std::min<int64_t>(16, lanes - c0);
        const __mmask16 m = static_cast<__mmask16>(lanes_below(static_cast<int>(count)));
        for (int64_t c = 0; c < 16; ++c)
          r[c] = c < count ? _mm512_loadu_ps(planes + (c0 + c) * plane + p0) : _mm512_setzero_ps();
        transpose16(r);
        if (stream && count == 16)
          for (int i = 0; i < 16; ++i) _mm512_stream_ps(rows + (p0 + i) * channels + c0, r[i]);
        else
          for (int i = 0; i < 16; ++i)
            _mm512_mask_storeu_ps(rows + (p0 + i) * channels + c0, m, r[i]);
      }
  }
#elif defined(TS2_AVX2)
  if constexpr (std::is_same<T, float>::value) {
    __m256 r[8];
    for (; p0 + 8 <= positions; p0 += 8)
      for (int64_t c0 = 0; c0 < lanes; c0 += 8) {
        const uint64_t bits = lanes_below(static_cast<int>(lanes - c0));
        const __m256i m = lane_mask32(bits);
        for (int64_t c = 0; c < 8; ++c)
          r[c] = c0 + c < lanes ? _mm256_loadu_ps(planes + (c0 + c) * plane + p0)
                                : _mm256_setzero_ps();
        transpose8(r);
        for (int i = 0; i < 8; ++i) {
          float* dst = rows + (p0 + i) * channels + c0;
          if ((bits & 0xff) == 0xff)
            _mm256_storeu_ps(dst, r[i]);
          else
            _mm256_maskstore_ps(dst, m, r[i]);
        }
      }
  }
#endif
  for (; p0 < positions; ++p0)
    for (int64_t c = 0; c < lanes; ++c) rows[p0 * channels + c] = planes[c * plane + p0];
}

// The distance in elements between consecutive planes of `positions` elements in a plane
// buffer: an odd number of cache lines, so that a transpose's 16 plane rows fall in 16
// different L1 sets. Dense planes of a power-of-two size (3d: 16 x 32 x 32 floats = 64 KiB)
// put all 16 in one set, past its 12 ways.
template <typename T>
constexpr int64_t plane_pitch(int64_t positions) {
  const int64_t lines = (positions * static_cast<int64_t>(sizeof(T)) + 63) / 64;
  return (lines | 1) * 64 / static_cast<int64_t>(sizeof(T));
}

// Bytes of plane buffers per task: half of this CPU's L2, so that the planes stay there
// while the planar kernel works on them.
inline int64_t plane_budget_bytes() {
  static const int64_t budget = [] {
    const long l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
    return static_cast<int64_t>(l2 > 0 ? l2 / 2 : 256 << 10);
  }();
  return budget;
}

// Blocks of kTransposeLanes channels in a sample (the last one may be partial).
template <typename T>
int64_t channel_blocks(const Geometry& g) {
  return (g.channels + kTransposeLanes<T> - 1) / kTransposeLanes<T>;
}

// Blocks of kTransposeLanes channels per task of a plane kernel whose buffers hold
// `buffers` elements per channel: as many as plane_budget_bytes holds. Where one block's
// planes exceed the budget but not the whole L2 (2D backward, 56 x 56), one block: its
// planes mostly stay in L2, which more blocks would spill. Where not even that fits (3d:
// 3 MiB for a backward), they leave L2 whatever the group, and only the transposes' reads
// still gain from more blocks: then as many as kSpillFactor budgets hold, at least one.
constexpr int64_t kSpillFactor = 8;
// Where one block's planes exceed this many budgets, they go to memory between the passes
// (PlanesFit::spills; cost_model.h).
constexpr int64_t kPlanesSpill = 2 * kSpillFactor;
// The most a task's plane buffers may take (through_planes): their size must not grow with
// the input's (SPEC §5).
constexpr int64_t kMaxTaskBytes = int64_t(16) << 20;
template <typename T>
int64_t group_blocks(const Geometry& g, int64_t buffers) {
  const int64_t block_bytes = std::max<int64_t>(1, kTransposeLanes<T> * buffers * sizeof(T));
  int64_t fit = plane_budget_bytes() / block_bytes;
  if (fit == 0 && block_bytes <= 2 * plane_budget_bytes()) fit = 1;
  if (fit == 0) fit = kSpillFactor * plane_budget_bytes() / block_bytes;
  return std::max<int64_t>(1, std::min(channel_blocks<T>(g), fit));
}

// Plane buffer elements per channel: a forward's input and output planes, a backward's
// input, grad_input and grad_output planes.
template <typename T>
int64_t plane_buffers(const Geometry& g, bool backward) {
  return plane_pitch<T>(g.in_plane()) * (backward ? 2 : 1) + plane_pitch<T>(g.out_plane());
}

// Tasks (n, group of group_blocks blocks of channels), each given a per-thread, 64-byte
// aligned buffer of `buffers` elements per channel of a group: fn(n, c0, lanes, group,
// buffer), lanes <= group channels from c0. The blocks of a group are transposed together,
// so that a sample's rows are read several whole cache lines after the other.
template <typename T, typename F>
void for_each_channel_block(const Geometry& g, int64_t buffers, F fn) {
  const int64_t per_group = group_blocks<T>(g, buffers);
  const int64_t groups = (channel_blocks<T>(g) + per_group - 1) / per_group;
  const int64_t group = per_group * kTransposeLanes<T>;
  at::parallel_for(0, g.batch * groups, 1, [&](int64_t begin, int64_t end) {
    std::unique_ptr<T[], void (*)(void*)> buffer(
        static_cast<T*>(std::aligned_alloc(64, (group * buffers * sizeof(T) + 63) / 64 * 64)),
        std::free);
    TORCH_CHECK(buffer != nullptr, "torchshift2: out of memory for channels-last plane buffers");
    for (int64_t t = begin; t < end; ++t) {
      const int64_t c0 = (t % groups) * group;
      fn(t / groups, c0, std::min(group, g.channels - c0), group, buffer.get());
    }
  });
}

}  // namespace

// Whether the through-planes kernels can run a call: dense channels-last samples (input,
// output / grad_output, and for a backward grad_input; else null), and planes small enough
// that a task's buffers hold at least one block's (kMaxTaskBytes: they must not grow with the
// input, SPEC §5); with the blocks per task (group) and per sample.
PlanesFit planes_fit(int64_t element_size, const Geometry& g, const Strides& input,
                     const Strides& output, const Strides* grad_input) {
  PlanesFit fit;
  if (!dense_channels_last(input, g.length, g.channels) ||
      !dense_channels_last(output, g.out_length, g.channels) ||
      (grad_input != nullptr && !dense_channels_last(*grad_input, g.length, g.channels)))
    return fit;
  const int64_t buffers = plane_buffers<float>(g, grad_input != nullptr);
  if (kTransposeLanes<float> * buffers * std::max<int64_t>(element_size, 4) > kMaxTaskBytes)
    return fit;
  fit.possible = true;
  fit.group = group_blocks<float>(g, buffers);
  fit.blocks = channel_blocks<float>(g);
  fit.spills = kTransposeLanes<float> * buffers * static_cast<int64_t>(sizeof(float)) >
               kPlanesSpill * plane_budget_bytes();
  fit.tasks = g.batch * ((fit.blocks + fit.group - 1) / fit.group);
  fit.plane_bytes = g.in_plane() * static_cast<int64_t>(sizeof(float));
  return fit;
}

// Whether the planes kernels write a channels-last float output (`out`, strides `os`, C
// channels) with streaming stores: beyond the cache (cache.h), AVX-512, and every 16-channel
// block of every row on a cache line (blocks_on_lines).
bool rows_on_lines(const void* out, const Strides& os, int64_t C, int64_t element_size,
                   int64_t traffic) {
#if defined(TS2_AVX512)
  return element_size == 4 && streaming_stores_pay(traffic) && blocks_on_lines(out, os, C, 4);
#else
  return false;
#endif
}

// Whether a channels-last backward, or a forward the cost model does not decide, goes through
// planes (planes_fit, and):
// - three spatial dims: always; a gather per interpolation corner (8 of them) costs more
//   than the transposes (benchmarks/archive/NOTES.md v8);
// - two, on CPUs with AVX2 but not AVX-512, whose gathers are slower: always (v10);
// - two, with AVX-512: 4-byte elements only (v11 chose the gathers where a task holds fewer
//   than four blocks; `benchmarks/tools/calibrate_cl.py --backward` found the planes faster
//   there, and little slower elsewhere, on the AMD machine of docs/dev/numbers.md);
// - one: never.
bool through_planes(int64_t element_size, const Geometry& g, const Strides& input,
                    const Strides& output, const Strides* grad_input) {
  const PlanesFit fit = planes_fit(element_size, g, input, output, grad_input);
  if (!fit.possible) return false;
  if (g.is_spatial[0]) return true;
  if (!g.is_spatial[1]) return false;
  if (kAvx2Only) return true;
  if (element_size != 4) return false;
  return true;
}

// Backward through planes (float, double); partials: kSlots per (n, c) (the plane format).
void backward_cl_planes(const BackwardCall& call) {
  const Geometry& g = call.g;
  dispatch_type<float, double>(call.dtype, "backward_cl_planes", [&](auto type) {
    using scalar_t = typename decltype(type)::type;
    const scalar_t* grad_out = static_cast<const scalar_t*>(call.grad_output);
    const scalar_t* in = static_cast<const scalar_t*>(call.input);
    scalar_t* grad_in = static_cast<scalar_t*>(call.grad_input);
    double* partials = call.partials;
    const BackwardShifts<scalar_t> shifts(call.weight, g, call.active);
    const PlaneBackward<scalar_t> kernel(g, call.active, shifts.read, shifts.interp);
    const int64_t C = g.channels, P = g.in_plane(), Q = g.out_plane();
    const int64_t PP = plane_pitch<scalar_t>(P), QP = plane_pitch<scalar_t>(Q);
    const Strides ps = plane_strides(g.length), qs = plane_strides(g.out_length);
    const int64_t traffic =
        g.batch * C * (P + Q + (partials != nullptr ? P : 0)) * sizeof(scalar_t);
    const bool stream =
        grad_in != nullptr && rows_on_lines(grad_in, call.gis, C, sizeof(scalar_t), traffic);
    // The forwards' transposes (one input) do not prefetch: there it measured no faster, or
    // slower (benchmarks/archive/NOTES.md, v19).
    const bool prefetch = strided_prefetch_pays(traffic);
    for_each_channel_block<scalar_t>(
        g, plane_buffers<scalar_t>(g, true),
        [&](int64_t n, int64_t c0, int64_t lanes, int64_t group, scalar_t* buffer) {
          thread_local PlaneScratch<scalar_t> scratch;
          scalar_t* x = buffer;
          scalar_t* gi = buffer + group * PP;
          scalar_t* go = buffer + 2 * group * PP;
          if (partials != nullptr)  // grad_input alone does not read the input
            to_planes(in + n * call.is.batch + c0, C, lanes, P, x, PP, prefetch);
          to_planes(grad_out + n * call.gos.batch + c0, C, lanes, Q, go, QP, prefetch);
          for (int64_t c = 0; c < lanes; ++c)
            kernel.plane(scratch, c0 + c, go + c * QP, x + c * PP,
                         grad_in == nullptr ? nullptr : gi + c * PP, qs, ps, ps, nullptr, nullptr,
                         partials == nullptr ? nullptr : partials + (n * C + c0 + c) * kSlots);
          if (grad_in != nullptr)
            from_planes(gi, PP, lanes, P, grad_in + n * call.gis.batch + c0, C, stream);
          if (stream) stream_fence();
        });
  });
}

// Active Shift forward through planes (float, double).
void active_forward_cl_planes(const ForwardCall& call) {
  const Geometry& g = call.g;
  dispatch_type<float, double>(call.dtype, "active_forward_cl_planes", [&](auto type) {
    using scalar_t = typename decltype(type)::type;
    const scalar_t* in = static_cast<const scalar_t*>(call.input);
    scalar_t* out = static_cast<scalar_t*>(call.output);
    const Shifts<scalar_t> shifts = channel_shifts<scalar_t>(call.weight, g, /*rounded=*/false);
    const ActiveForwardPlanes<scalar_t> kernel(g, shifts);
    const int64_t C = g.channels, P = g.in_plane();
    const int64_t PP = plane_pitch<scalar_t>(P);
    const Strides ps = plane_strides(g.length), qs = plane_strides(g.out_length);
    // The output is made one slab (o0) of the group's channels at a time, into a slab buffer
    // that stays in L1 / L2, and transposed back from there (in 2D, one slab is the plane). In
    // 3D, output planes as large as the input's would leave L2 and be read back from beyond
    // it (benchmarks/archive/NOTES.md, v12).
    const int64_t slab = g.out_length[1] * g.out_length[2];
    const int64_t SP = plane_pitch<scalar_t>(slab);
    const bool stream =
        rows_on_lines(out, call.os, C, sizeof(scalar_t), g.forward_bytes(sizeof(scalar_t)));
    for_each_channel_block<scalar_t>(
        g, PP + SP, [&](int64_t n, int64_t c0, int64_t lanes, int64_t group, scalar_t* buffer) {
          scalar_t* x = buffer;
          scalar_t* y = buffer + group * PP;
          to_planes(in + n * call.is.batch + c0, C, lanes, P, x, PP);
          for (int64_t o0 = 0; o0 < g.out_length[0]; ++o0) {
            for (int64_t c = 0; c < lanes; ++c)
              kernel.plane(c0 + c, x + c * PP, ps, y + c * SP, qs, nullptr, o0, o0 + 1);
            from_planes(y, SP, lanes, slab, out + n * call.os.batch + o0 * slab * C + c0, C,
                        stream);
          }
          if (stream) stream_fence();
        });
  });
}

// SSL forward through planes (4-byte elements): the bits move through the float transposes
// unchanged, and each plane is the planar SSL forward (a copy per slab and its edge
// columns).
void ssl_forward_cl_planes(const ForwardCall& call) {
  const Geometry& g = call.g;
  TORCH_INTERNAL_ASSERT(c10::elementSize(call.dtype) == 4,
                        "ssl_forward_cl_planes: 4-byte elements only");
  using T = int32_t;
  const T* in = static_cast<const T*>(call.input);
  T* out = static_cast<T*>(call.output);
  T fill;
  std::memcpy(&fill, &call.fill, sizeof(T));
  const Shifts<double> shifts = channel_shifts<double>(call.weight, g, /*rounded=*/true);
  const int64_t C = g.channels, P = g.in_plane(), Q = g.out_plane();
  const int64_t PP = plane_pitch<float>(P), QP = plane_pitch<float>(Q);
  const Strides ps = plane_strides(g.length), qs = plane_strides(g.out_length);
  const bool flat = flat_planes(g, ps, qs);
  const bool stream = rows_on_lines(out, call.os, C, 4, g.forward_bytes(4));
  // Per channel: the input and output planes, and room for the edge columns' indices.
  for_each_channel_block<float>(
      g, plane_buffers<float>(g, false) + g.length[2],
      [&](int64_t n, int64_t c0, int64_t lanes, int64_t group, float* buffer) {
        T* x = reinterpret_cast<T*>(buffer);
        T* y = x + group * PP;
        int64_t* edges = reinterpret_cast<int64_t*>(y + group * QP);
        to_planes(reinterpret_cast<const float*>(in + n * call.is.batch + c0), C, lanes, P,
                  reinterpret_cast<float*>(x), PP);
        for (int64_t c = 0; c < lanes; ++c) {
          if (flat)
            ssl_forward_plane_flat(static_cast<const T*>(x + c * PP), ps.slot[0], y + c * QP,
                                   qs.slot[0], g, shifts[c0 + c], fill, edges);
          else
            ssl_forward_plane(static_cast<const T*>(x + c * PP), ps.slot, y + c * QP, qs.slot, g,
                              shifts[c0 + c], fill);
        }
        from_planes(reinterpret_cast<const float*>(y), QP, lanes, Q,
                    reinterpret_cast<float*>(out + n * call.os.batch + c0), C, stream);
        if (stream) stream_fence();
      });
}

// Layout copies between channels innermost and planes for 4-byte elements, by the
// transposes above (ATen's copy_ between the two layouts moves one element at a time).
// Each of `batch` samples: src holds `positions` rows of `channels` elements (the first
// `lanes` of them copied, the rest untouched) at src + n * src_batch; dst holds `lanes`
// dense planes of `positions` elements at dst + n * dst_batch. Parallel over (sample, chunk
// of positions); a chunk goes through a buffer of plane_pitch rows, since dense planes of
// a size with a large power-of-two factor put a transpose's 16 plane rows in one L1 set.
namespace {
constexpr int64_t kTransposeChunk = 4096;  // positions per task: 16 KiB per channel
template <typename F>
void for_position_chunks(int64_t batch, int64_t positions, F fn) {
  const int64_t chunks = (positions + kTransposeChunk - 1) / kTransposeChunk;
  constexpr int64_t pitch = plane_pitch<float>(kTransposeChunk);
  at::parallel_for(0, batch * chunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> buffer(kTransposeLanes<float> * pitch);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t p0 = (t % chunks) * kTransposeChunk;
      fn(t / chunks, p0, std::min(kTransposeChunk, positions - p0), buffer.data(), pitch);
    }
  });
}
}  // namespace

void rows_to_planes(const void* src, int64_t src_batch, int64_t channels, int64_t lanes, void* dst,
                    int64_t dst_batch, int64_t positions, int64_t batch) {
  const float* in = static_cast<const float*>(src);
  float* out = static_cast<float*>(dst);
  for_position_chunks(
      batch, positions, [&](int64_t n, int64_t p0, int64_t count, float* buf, int64_t pitch) {
        for (int64_t c0 = 0; c0 < lanes; c0 += kTransposeLanes<float>) {
          const int64_t block = std::min<int64_t>(kTransposeLanes<float>, lanes - c0);
          to_planes(in + n * src_batch + p0 * channels + c0, channels, block, count, buf, pitch);
          for (int64_t c = 0; c < block; ++c)
            copy_bytes(out + n * dst_batch + (c0 + c) * positions + p0, buf + c * pitch,
                       count * sizeof(float));
        }
      });
}

void planes_to_rows(const void* src, int64_t src_batch, int64_t lanes, void* dst, int64_t dst_batch,
                    int64_t channels, int64_t positions, int64_t batch) {
  const float* in = static_cast<const float*>(src);
  float* out = static_cast<float*>(dst);
  for_position_chunks(
      batch, positions, [&](int64_t n, int64_t p0, int64_t count, float* buf, int64_t pitch) {
        for (int64_t c0 = 0; c0 < lanes; c0 += kTransposeLanes<float>) {
          const int64_t block = std::min<int64_t>(kTransposeLanes<float>, lanes - c0);
          for (int64_t c = 0; c < block; ++c)
            copy_bytes(buf + c * pitch, in + n * src_batch + (c0 + c) * positions + p0,
                       count * sizeof(float));
          from_planes(buf, pitch, block, count, out + n * dst_batch + p0 * channels + c0, channels);
        }
      });
}

}  // namespace torchshift2_cpu
