// Longer than the ~800 lines a file should hold: the layout plans, the kernel choice, the
// block driver and the op registrations share the Plan, Query and Scratch types, which are
// private to this translation unit on purpose (kernels.h is the only interface of the
// kernels); the cost model's arithmetic lives in cost_model.h.
//
// torchshift2 CPU ops: the argument checks, output allocation, the choice of a kernel for a
// call (choose_kernel: README.md's kernel selection table, which
// tests/test_cpu_kernel_table.py checks through the kernel_name op), the dispatch to the
// entry points of kernels.h, and the registrations of the private ops torchshift2_cpu::*.
//
// Two layouts have kernels: channels innermost with every row (n, i0, i1) a W x C block
// ("cl"), and planes with a unit-stride last dim ("planar"). Other strides are copied into
// the nearer of the two first. The layout rules (plan_forward, plan_backward) work on sizes
// and strides only, so that kernel_name answers for tensors that do not exist.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <c10/util/accumulate.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <string>
#include <tuple>
#include <vector>

#include "cache.h"
#include "corners.h"
#include "cost_model.h"
#include "geometry.h"
#include "isa.h"
#include "kernels.h"
#include "ops.h"
#include "output_cache.h"
#include "simd.h"

namespace torchshift2_cpu {
namespace {

// --- Arguments -------------------------------------------------------------------------

// The argument checks every op shares; returns the weight as contiguous float64, the form
// the kernels read (converted once per call).
at::Tensor check_common(const at::Tensor& input, const at::Tensor& weight) {
  TORCH_CHECK(input.device().is_cpu() && weight.device().is_cpu(),
              "torchshift2_cpu: expected CPU tensors, got input on ", input.device(),
              " and weight on ", weight.device());
  const int64_t C = input.size(1);
  TORCH_CHECK(weight.dim() == 2 && weight.size(1) == input.dim() - 2 &&
                  (C == 0 ? weight.size(0) == 0 : weight.size(0) > 0 && weight.size(0) % C == 0),
              "weight: expected shape (k·C, D) = (k·", C, ", ", input.dim() - 2,
              ") with an integer k >= 1, got ", weight.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(weight.scalar_type()),
                   "weight: expected a floating dtype, got ", weight.scalar_type());
  // SPEC §5: non-finite shifts are refused on CPU, before anything is allocated or read.
  const at::Tensor w = weight.to(at::kDouble).contiguous();
  const double* data = w.const_data_ptr<double>();
  for (int64_t i = 0; i < w.numel(); ++i)
    TORCH_CHECK_VALUE(std::isfinite(data[i]), "weight: expected finite values on CPU, got ",
                      data[i], " at [", i / std::max<int64_t>(1, w.size(1)), ", ",
                      i % std::max<int64_t>(1, w.size(1)), "]");
  return w;
}

Geometry geometry_of(at::IntArrayRef sizes, int64_t padding, at::IntArrayRef crop) {
  const int64_t ndim = static_cast<int64_t>(sizes.size()) - 2;
  TORCH_CHECK(ndim >= 1 && ndim <= kSlots, "input: expected 3D, 4D or 5D, got ", sizes.size(), "D");
  TORCH_CHECK(padding >= kZeros && padding <= kSymmetric, "padding: unknown code ", padding);
  TORCH_CHECK(static_cast<int64_t>(crop.size()) == 2 * ndim, "crop: expected ", 2 * ndim,
              " values, got ", crop.size());
  Geometry g;
  g.batch = sizes[0];
  g.channels = sizes[1];
  g.padding = padding;
  for (int64_t d = 0; d < ndim; ++d) {
    const int64_t slot = kSlots - ndim + d;
    const int64_t before = crop[2 * d], after = crop[2 * d + 1];
    const int64_t length = sizes[2 + d];
    TORCH_CHECK(before >= 0 && after >= 0 && before + after <= length, "crop: dim ", d, " of size ",
                length, " cannot drop ", before, " + ", after);
    g.length[slot] = length;
    g.out_length[slot] = length - before - after;
    g.before[slot] = before;
    g.is_spatial[slot] = true;
  }
  return g;
}

Strides strides_of(at::IntArrayRef strides) {
  Strides s;
  const int64_t ndim = static_cast<int64_t>(strides.size()) - 2;
  s.batch = strides[0];
  s.channel = strides[1];
  for (int64_t d = 0; d < ndim; ++d) s.slot[kSlots - ndim + d] = strides[2 + d];
  return s;
}

void check_output(const at::Tensor& t, at::IntArrayRef sizes, at::ScalarType dtype,
                  const char* name) {
  TORCH_CHECK(t.sizes() == sizes && t.scalar_type() == dtype && t.device().is_cpu(), name,
              ": expected a CPU tensor of shape ", sizes, " and dtype ", dtype, ", got ", t.sizes(),
              " ", t.scalar_type());
}

// channels: the output's (k·C with a channel multiplier).
std::vector<int64_t> output_sizes(at::IntArrayRef sizes, const Geometry& g, int64_t channels) {
  std::vector<int64_t> out{sizes[0], channels};
  const int64_t ndim = static_cast<int64_t>(sizes.size()) - 2;
  for (int64_t d = 0; d < ndim; ++d) out.push_back(g.out_length[kSlots - ndim + d]);
  return out;
}

// The bits of `fill` in input's dtype (0 is all-zero bits in every dtype).
uint64_t fill_bits(const at::Tensor& input, double fill) {
  uint64_t bits = 0;
  if (fill != 0) {
    const at::Tensor value = at::full({}, fill, input.options());
    std::memcpy(&bits, value.const_data_ptr(), input.element_size());
  }
  return bits;
}

// --- Layouts ---------------------------------------------------------------------------

// Channels innermost, more than one channel: the channels-last kernels' layout.
bool channels_inner(at::IntArrayRef sizes, at::IntArrayRef strides) {
  return sizes[1] > 1 && strides[1] == 1 && strides.back() != 1;
}

// Every row (n, i0, i1) a W x C block.
bool channel_rows(at::IntArrayRef sizes, at::IntArrayRef strides) {
  return strides[1] == 1 && (sizes.back() == 1 || strides.back() == sizes[1]);
}

bool is_contiguous(at::IntArrayRef sizes, at::IntArrayRef strides) {
  int64_t expected = 1;
  for (int64_t d = static_cast<int64_t>(sizes.size()) - 1; d >= 0; --d) {
    if (sizes[d] == 1) continue;
    if (strides[d] != expected) return false;
    expected *= sizes[d];
  }
  return true;
}

// The row length (in elements) of a tensor whose channels are innermost and whose positions
// are dense rows of that length (a channels-last tensor or a slice of its channels), or 0.
int64_t position_rows(at::IntArrayRef sizes, at::IntArrayRef strides) {
  if (sizes[1] > 1 && strides[1] != 1) return 0;
  const int64_t row = strides.back();
  int64_t expected = row;
  for (int64_t d = static_cast<int64_t>(sizes.size()) - 1; d >= 2; --d) {
    if (sizes[d] > 1 && strides[d] != expected) return 0;
    expected *= sizes[d];
  }
  return row >= sizes[1] ? row : 0;
}

// dst.copy_(src), by the planes' transposes (kernels.h) between channels-innermost rows and
// contiguous planes of 4-byte elements, where ATen's copy_ would move one element at a time.
void layout_copy(at::Tensor dst, const at::Tensor& src) {
  const int64_t positions = c10::multiply_integers(src.sizes().slice(2));
  const bool four = src.element_size() == 4 && dst.scalar_type() == src.scalar_type();
  if (four && src.size(1) > 1 && positions > 1) {
    const int64_t src_row = position_rows(src.sizes(), src.strides());
    const int64_t dst_row = position_rows(dst.sizes(), dst.strides());
    const bool src_planar = is_contiguous(src.sizes().slice(1), src.strides().slice(1));
    const bool dst_planar = is_contiguous(dst.sizes().slice(1), dst.strides().slice(1));
    if (src_row > 0 && dst_planar)
      return rows_to_planes(src.const_data_ptr(), src.stride(0), src_row, src.size(1),
                            dst.data_ptr(), dst.stride(0), positions, src.size(0));
    if (src_planar && dst_row > 0)
      return planes_to_rows(src.const_data_ptr(), src.stride(0), src.size(1), dst.data_ptr(),
                            dst.stride(0), dst_row, positions, src.size(0));
  }
  dst.copy_(src);
}

// The copy a kernel needs of a tensor: none, contiguous, or dense channels innermost
// (channels_last / _3d, or (N, L, C) for 1D).
enum class Copy { kNone, kContiguous, kChannelsLast };

// The strides a copy into `copy`'s layout leaves (Scratch::copied).
std::vector<int64_t> strides_after(Copy copy, at::IntArrayRef sizes, at::IntArrayRef strides) {
  if (copy == Copy::kContiguous && !is_contiguous(sizes, strides))
    return dense_strides(sizes, false);
  if (copy == Copy::kChannelsLast && !channel_rows(sizes, strides))
    return dense_strides(sizes, true);
  return strides.vec();
}

// Buffers for the copies a call makes (layout copies, widened copies, temporaries), one per
// role, allocated for the first block and reused by the next ones: a call in blocks
// allocates each of them once, of one block's size.
enum Role {
  kInput,
  kGradOutput,
  kGradInput,
  kWideInput,
  kWideGradOutput,
  kWideGradInput,
  kWideOutput,
  kOutput,
  kPart,
  kRoles
};

class Scratch {
 public:
  // An uninitialised tensor of `sizes` and dtype, dense (contiguous, or channels innermost).
  at::Tensor tensor(Role role, at::IntArrayRef sizes, at::ScalarType dtype, bool channels_last) {
    const int64_t count = c10::multiply_integers(sizes);
    at::Tensor& buffer = buffers_[role];
    if (!buffer.defined() || buffer.scalar_type() != dtype || buffer.numel() < count)
      buffer = cached_empty({count}, dtype, false);  // recycled: no page faults per call
    return buffer.as_strided(sizes, dense_strides(sizes, channels_last));
  }

  // `t` in the layout `copy` asks for: `t` itself when it has it already.
  at::Tensor copied(Role role, Copy copy, const at::Tensor& t) {
    const std::vector<int64_t> strides = strides_after(copy, t.sizes(), t.strides());
    if (strides == t.strides().vec()) return t;
    at::Tensor copy_of = tensor(role, t.sizes(), t.scalar_type(), copy == Copy::kChannelsLast);
    layout_copy(copy_of, t);
    return copy_of;
  }

  // bfloat16 / half `t` widened to float, channels innermost (the float kernels' layout for
  // the calls that widen); rounded back by copy_ (nearest even, as the reduced kernels round
  // their float sums).
  at::Tensor widened(Role role, const at::Tensor& t) {
    return tensor(role, t.sizes(), at::kFloat, true).copy_(t);
  }

 private:
  at::Tensor buffers_[kRoles];
};

// --- The kernel selection table ------------------------------------------------------------

enum class Direction { kForward, kBackward, kInplace };

// How a backward kernel leaves grad_weight (kernels.h): kSlots per (n, c), or 2^D corners
// per (row, c) with one row per sample or one per gather chunk.
enum class Partials { kNone, kPlanes, kCorners, kCornerChunks };

// A kernel of the table: its entry point and name; or `widen`: bfloat16 / half inputs go
// to the float kernels on widened copies (choose again for float32). writes_grad_input: a
// backward kernel that always computes grad_input (the others skip it when it is null).
struct Choice {
  const char* name = "none";
  ForwardKernel forward = nullptr;
  BackwardKernel backward = nullptr;
  InplaceKernel inplace = nullptr;
  Partials partials = Partials::kNone;
  bool widen = false;
  bool writes_grad_input = false;
  // `planar`: a channels-last call that goes to the planar kernels on contiguous copies of
  // blocks of its tensors (choose again for the contiguous layout): where the planes do not
  // fit a task's budget and the channels-last kernels would cost more than the copies.
  bool planar = false;
};

constexpr Choice kWiden{"widen", nullptr, nullptr, nullptr, Partials::kNone, true};
constexpr Choice kPlanar{"planar", nullptr, nullptr, nullptr, Partials::kNone, false, false, true};

#define TS2_FORWARD(f) \
  Choice { #f, &f, nullptr, nullptr, Partials::kNone, false }
#define TS2_BACKWARD(f, partials) \
  Choice { #f, nullptr, &f, nullptr, partials, false }
#define TS2_BACKWARD_WITH_GRAD_INPUT(f, partials) \
  Choice { #f, nullptr, &f, nullptr, partials, false, true }
#define TS2_INPLACE(f) \
  Choice { #f, nullptr, nullptr, &f, Partials::kNone, false }

// What choose_kernel reads of a call: the strides are those the kernel will see, after the
// layout copies of plan_forward / plan_backward.
struct Query {
  Direction direction;
  bool active;
  at::ScalarType dtype;
  const Geometry& g;
  bool cl;  // the channels-last kernels run (channels innermost, rows W x C blocks)
  Strides input, output, grad_input;  // output: forward's output / backward's grad_output
  bool needs_grad_input = true;       // backward: output_mask[0]
  // Forward: the (C, D) float64 weight of the kernel's channels, for the shift spread of the
  // cost model; null: the widest spread (every corner of every channel a tap of its own).
  const double* weight = nullptr;
};

// A call that would copy tensors of its own size (plan copies), or has a channel multiplier
// (k > 1, whose k grad_input contributions are summed), runs in blocks of samples and, for a
// sample bigger than the budget, of input channels: its temporaries are one block's
// (SPEC §5: buffers that do not grow with the input). Each block runs the kernels for k = 1:
// output channels j, j + k, ... of the block are a strided view, weight rows j::k.
constexpr int64_t kBlockBytes = int64_t(8) << 20;

// The input channels of one block of a call that runs in blocks (for_blocks): all of them
// where a sample fits kBlockBytes, else as many planes as fit, in multiples of 16 where 16
// fit.
int64_t block_channels(int64_t channels, int64_t plane_bytes) {
  if (channels * plane_bytes <= kBlockBytes) return channels;
  const int64_t fit = std::max<int64_t>(1, kBlockBytes / std::max<int64_t>(1, plane_bytes));
  return fit >= 16 ? fit / 16 * 16 : fit;
}

// The bytes per (n, c) by which a forward in blocks is cut (run_forward): op-math bytes, as a
// bfloat16 / half block is widened to float.
int64_t forward_block_plane_bytes(const Geometry& g, int64_t element_size) {
  return g.in_plane() * std::max<int64_t>(element_size, 4);
}

// How many times its own bytes the layout copies of a channels-last call in blocks move:
// a block of fewer channels than a 64-byte line holds reads (and writes) every line of its
// channels' rows, which also hold other blocks' channels; at most all of a row.
double block_copy_waste(const Geometry& g, int64_t element_size) {
  const int64_t step = block_channels(g.channels, forward_block_plane_bytes(g, element_size));
  if (step >= g.channels) return 1.0;
  const double line = static_cast<double>(kVectorBytes) / static_cast<double>(step * element_size);
  return std::max(1.0, std::min(static_cast<double>(g.channels) / static_cast<double>(step), line));
}

// A kernel forced by set_kernel_override (benchmarks/tools/calibrate_cl.py times each
// channels-last kernel on the same call that way); kNone in normal use.
enum class Override { kNone, kTaps, kGather, kPlanes, kPlanar };
std::atomic<Override> kernel_override{Override::kNone};

// The mean taps per 64-byte block of the call's channels (cost_model.h).
double call_taps(const Query& q, int64_t lanes) {
  if (q.weight != nullptr) return mean_taps(q.weight, q.g, lanes, q.active);
  return static_cast<double>(std::min(lanes, q.g.channels) * (q.active ? corner_count(q.g) : 1));
}

// The channels-last forward of op-math (and for SSL any) elements on AVX-512 or portable
// builds: the cheapest by the cost model among the kernels that can run the call. The
// taps run every call; the gathers need 32-bit indices (and 4- or 8-byte elements); the
// planes two or three spatial dims, dense samples, bounded buffers (and for SSL 4-byte
// elements).
Choice choose_cl_forward(const Query& q, int64_t size) {
  const Geometry& g = q.g;
  const PlanesFit fit = planes_fit(size, g, q.input, q.output, nullptr);
  const bool can_planes = fit.possible && g.spatial_dims() >= 2 && (q.active || size == 4);
  const bool can_gather = (size == 4 || size == 8) && gather_indexable(g, q.input);
  const Choice taps =
      q.active ? TS2_FORWARD(active_forward_cl_taps) : TS2_FORWARD(ssl_forward_cl_taps);
  const Choice gather =
      q.active ? TS2_FORWARD(active_forward_cl_gather) : TS2_FORWARD(ssl_forward_cl_gather);
  const Choice planes =
      q.active ? TS2_FORWARD(active_forward_cl_planes) : TS2_FORWARD(ssl_forward_cl_planes);
  switch (kernel_override.load()) {
    case Override::kNone:
      break;
    case Override::kTaps:
      return taps;
    case Override::kGather:
      TORCH_CHECK(can_gather, "set_kernel_override: 'gather' cannot run this call (it needs ",
                  "4- or 8-byte elements and 32-bit indices)");
      return gather;
    case Override::kPlanes:
      TORCH_CHECK(can_planes, "set_kernel_override: 'planes' cannot run this call (it needs ",
                  "dense channels-last samples, planes within the task budget, and for SSL ",
                  "4-byte elements)");
      return planes;
    case Override::kPlanar:
      TORCH_CHECK(size == 4 && g.spatial_dims() >= 2, "set_kernel_override: 'planar' cannot ",
                  "run this call (it needs 4-byte elements and two or three spatial dims)");
      return kPlanar;
  }
  const bool beyond_cache = strided_prefetch_pays(g.forward_bytes(size));
  const ForwardCosts cost =
      forward_costs(q.active, g.spatial_dims(), call_taps(q, kVectorBytes / size), fit,
                    at::get_num_threads(), block_copy_waste(g, size), beyond_cache);
  Choice best = taps;
  double best_cost = cost.taps;
  // Not the gathers of a 3D Active Shift (four corner pairs per vector), nor any beyond the
  // cache: they were never the fastest where measured, and beyond the cache their time
  // varies most (benchmarks/archive/NOTES.md v8, v15, v17), which the model does not see.
  const bool model_gather = can_gather && !beyond_cache && !(q.active && g.spatial_dims() == 3);
  if (model_gather && cost.gather < best_cost) {
    best = gather;
    best_cost = cost.gather;
  }
  if (can_planes && cost.planes < best_cost) best = planes;
  if (!can_planes && size == 4 && g.spatial_dims() >= 2 && cost.copies < best_cost) best = kPlanar;
  return best;
}

// The one place that decides which kernel runs (README.md, kernel selection).
Choice choose_kernel(const Query& q) {
  const Geometry& g = q.g;
  const int64_t size = c10::elementSize(q.dtype);
  const bool reduced = q.dtype == at::kBFloat16 || q.dtype == at::kHalf;
  const bool op_math = q.dtype == at::kFloat || q.dtype == at::kDouble;
  switch (q.direction) {
    case Direction::kForward:
      if (!q.active) {
        if (!q.cl)
          return flat_planes(g, q.input, q.output) ? TS2_FORWARD(ssl_forward_planar)
                                                   : TS2_FORWARD(ssl_forward_strided);
        if (!kAvx2Only) return choose_cl_forward(q, size);
        // AVX2 (slow gathers): planes in 3D only, since in 2D the three passes cost as
        // much as the gathers (benchmarks/archive/NOTES.md v10).
        if (size == 4 && g.is_spatial[0] && through_planes(size, g, q.input, q.output, nullptr))
          return TS2_FORWARD(ssl_forward_cl_planes);
        // 2-byte elements too: the portable per-lane gather, since their taps would be one
        // per-lane loop per distinct shift of a block.
        if ((size == 4 || size == 8 || size == 2) && gather_indexable(g, q.input))
          return TS2_FORWARD(ssl_forward_cl_gather);
        return TS2_FORWARD(ssl_forward_cl_taps);
      }
      if (!q.cl) return TS2_FORWARD(active_forward_planar);
      // 3D only: in 2D the conversions cost what the float kernel saves (v14).
      if (reduced && g.is_spatial[0]) return kWiden;
      if (op_math && !kAvx2Only) return choose_cl_forward(q, size);
      if (op_math) {
        if (through_planes(size, g, q.input, q.output, nullptr))
          return TS2_FORWARD(active_forward_cl_planes);
        if (gather_indexable(g, q.input)) return TS2_FORWARD(active_forward_cl_gather);
      }
      return TS2_FORWARD(active_forward_cl_taps);
    case Direction::kBackward:
      if (!q.cl)
        return reduced ? TS2_BACKWARD(backward_planar_widened, Partials::kPlanes)
                       : TS2_BACKWARD(backward_planar, Partials::kPlanes);
      // The reduced-type kernels converted inside their inner loops (v14).
      if (reduced) return kWiden;
      TORCH_INTERNAL_ASSERT(op_math, "choose_kernel: backward of ", q.dtype);
      if (kernel_override.load() != Override::kNone) {
        const Override o = kernel_override.load();
        const bool gathers = gather_indexable(g, q.input) && gather_indexable(g, q.output) &&
                             gather_indexable(g, q.grad_input);
        TORCH_CHECK(o != Override::kTaps && o != Override::kPlanar,
                    "set_kernel_override: the backward has no taps or planar-copies choice");
        TORCH_CHECK(o != Override::kPlanes ||
                        planes_fit(size, g, q.input, q.output, &q.grad_input).possible,
                    "set_kernel_override: 'planes' cannot run this call");
        TORCH_CHECK(o != Override::kGather || gathers,
                    "set_kernel_override: 'gather' cannot run this call");
        if (o == Override::kPlanes) return TS2_BACKWARD(backward_cl_planes, Partials::kPlanes);
        return g.padding == kZeros ? TS2_BACKWARD(backward_cl_gather_fused, Partials::kCornerChunks)
                                   : TS2_BACKWARD(backward_cl_gather, Partials::kCornerChunks);
      }
      if (through_planes(size, g, q.input, q.output, &q.grad_input))
        return TS2_BACKWARD(backward_cl_planes, Partials::kPlanes);
      if (gather_indexable(g, q.input) && gather_indexable(g, q.output) &&
          gather_indexable(g, q.grad_input))
        return g.padding == kZeros ? TS2_BACKWARD(backward_cl_gather_fused, Partials::kCornerChunks)
                                   : TS2_BACKWARD(backward_cl_gather, Partials::kCornerChunks);
      return TS2_BACKWARD_WITH_GRAD_INPUT(backward_cl_blocks, Partials::kCorners);
    case Direction::kInplace: {
      // (AVX2's gathers are slow: not there.)
      if (q.cl && !kAvx2Only && size == 4 && q.weight != nullptr &&
          block_gather_pays(g, moving_block(q.weight, g, 16)))
        return TS2_INPLACE(shift_inplace_cl_block_gather);
      if (q.cl)
        return g.batch >= at::get_num_threads() ? TS2_INPLACE(shift_inplace_cl_one_pass)
                                                : TS2_INPLACE(shift_inplace_cl_two_pass);
      const Strides& st = q.input;
      const int64_t L0 = g.length[0], L1 = g.length[1], L2 = g.length[2];
      const bool dense = (st.slot[2] == 1 || L2 == 1) && (st.slot[1] == L2 || L1 == 1) &&
                         (st.slot[0] == L1 * L2 || L0 == 1);
      if (!dense) return TS2_INPLACE(shift_inplace_strided);
      return g.padding == kZeros ? TS2_INPLACE(shift_inplace_planar_zeros)
                                 : TS2_INPLACE(shift_inplace_planar);
    }
  }
  TORCH_INTERNAL_ASSERT(false, "choose_kernel: unknown direction");
  return Choice{};
}

#undef TS2_FORWARD
#undef TS2_BACKWARD
#undef TS2_BACKWARD_WITH_GRAD_INPUT
#undef TS2_INPLACE

// A call's kernel and the copies it needs; widened: bfloat16 / half run on widened float
// copies of every input (the kernel is float32's choice for them).
struct Plan {
  Choice choice;
  bool widened = false;
  bool cl = false;
  Copy input = Copy::kNone, grad_output = Copy::kNone;
  bool copies_input = false, copies_grad_output = false;  // the Copy is not a no-op
  bool grad_input_temp = false;  // the kernel writes a temporary, copied into grad_input
  bool output_temp = false;      // the forward writes a contiguous temporary, copied into out
};

// weight: the (C, D) float64 weight of the call's channels (null: assume the widest spread).
Plan plan_forward(at::ScalarType dtype, const Geometry& g, bool active, at::IntArrayRef sizes,
                  at::IntArrayRef strides, at::IntArrayRef out_sizes, at::IntArrayRef out_strides,
                  const double* weight = nullptr) {
  // The planar kernel on a contiguous copy of the input, into a contiguous temporary copied
  // into the channels-innermost output (in blocks: run_forward).
  auto planar_plan = [&] {
    Plan planar;
    planar.input = Copy::kContiguous;
    planar.copies_input = true;
    planar.output_temp = true;
    const std::vector<int64_t> dense = dense_strides(sizes, false);
    const std::vector<int64_t> out_dense = dense_strides(out_sizes, false);
    planar.choice = choose_kernel({Direction::kForward,
                                   active,
                                   dtype,
                                   g,
                                   false,
                                   strides_of(dense),
                                   strides_of(out_dense),
                                   {}});
    return planar;
  };
  Plan p;
  p.cl = channels_inner(sizes, strides) && channel_rows(out_sizes, out_strides);
  // A block of the channels of a channels-last call (run_forward): its output rows hold all
  // the channels, which the channels-last kernels cannot write; the planar kernels would
  // write them one element at a time.
  if (!p.cl && channels_inner(sizes, strides) && position_rows(out_sizes, out_strides) > 0 &&
      c10::elementSize(dtype) == 4)
    return planar_plan();
  if (p.cl && !channel_rows(sizes, strides)) p.input = Copy::kChannelsLast;
  if (!p.cl && sizes.back() > 1 && strides.back() != 1) p.input = Copy::kContiguous;
  const std::vector<int64_t> is = strides_after(p.input, sizes, strides);
  p.copies_input = is != strides.vec();
  Query query{Direction::kForward,     active, dtype, g, p.cl, strides_of(is),
              strides_of(out_strides), {}};
  query.weight = weight;
  p.choice = choose_kernel(query);
  if (p.choice.planar) return planar_plan();
  if (!p.choice.widen) return p;
  Plan wide = plan_forward(at::kFloat, g, active, sizes, dense_strides(sizes, true), out_sizes,
                           out_strides, weight);
  wide.widened = true;
  return wide;
}

// grad_input_strides: those of the grad_input the op writes (ignored without
// needs_grad_input, the output_mask's first entry).
Plan plan_backward(at::ScalarType dtype, const Geometry& g, bool active, at::IntArrayRef sizes,
                   at::IntArrayRef strides, at::IntArrayRef out_sizes,
                   at::IntArrayRef grad_output_strides, at::IntArrayRef grad_input_strides,
                   bool needs_grad_input = true) {
  Plan p;
  p.cl = channels_inner(sizes, strides);
  if (p.cl && g.is_spatial[0]) {
    // Three spatial dims whose planes do not fit a task: the planar kernel on contiguous
    // copies (in blocks), whose cost does not grow with the spread, rather than a gather per
    // corner (eight).
    const Strides dense = strides_of(dense_strides(sizes, true));
    const Strides out_dense = strides_of(dense_strides(out_sizes, true));
    if (!planes_fit(c10::elementSize(dtype), g, dense, out_dense, &dense).possible) p.cl = false;
  }
  std::vector<int64_t> gis =
      needs_grad_input ? grad_input_strides.vec() : dense_strides(sizes, p.cl);
  if (p.cl) {
    // Rows of input and grad_output must be W x C blocks.
    p.input = p.grad_output = Copy::kChannelsLast;
    // So must grad_input's: a channel block's slice of a channels-last grad_input (run_backward)
    // has rows of the full C, which the kernels would write as W x C-block rows.
    p.grad_input_temp = !channel_rows(sizes, gis);
    if (p.grad_input_temp) gis = dense_strides(sizes, true);
  } else {
    // The plane kernel wants each (n, c) plane dense: channels-last and other layouts go
    // through planar copies, which costs less than strided walks over every plane.
    p.input = p.grad_output = Copy::kContiguous;
    p.grad_input_temp = !is_contiguous(sizes, gis);
    if (p.grad_input_temp) gis = dense_strides(sizes, false);
  }
  const std::vector<int64_t> is = strides_after(p.input, sizes, strides);
  const std::vector<int64_t> gos = strides_after(p.grad_output, out_sizes, grad_output_strides);
  p.copies_input = is != strides.vec();
  p.copies_grad_output = gos != grad_output_strides.vec();
  p.choice = choose_kernel({Direction::kBackward, active, dtype, g, p.cl, strides_of(is),
                            strides_of(gos), strides_of(gis), needs_grad_input});
  if (!p.choice.widen) return p;
  Plan wide = plan_backward(at::kFloat, g, active, sizes, dense_strides(sizes, true), out_sizes,
                            dense_strides(out_sizes, true), gis, needs_grad_input);
  wide.widened = true;
  return wide;
}

// Whether a plan copies anything of the size of its tensors (layout copies, widened copies,
// a grad_input written elsewhere first): such calls run in blocks (run_forward, run_backward).
bool copies(const Plan& p) {
  return p.widened || p.copies_input || p.copies_grad_output || p.grad_input_temp || p.output_temp;
}

// weight: (C, D) float64, or null (the kernel that does not depend on it).
Choice choose_inplace(at::ScalarType dtype, const Geometry& g, at::IntArrayRef strides,
                      const double* weight) {
  const Strides st = strides_of(strides);
  return choose_kernel({Direction::kInplace,
                        false,
                        dtype,
                        g,
                        st.channel == 1 && g.channels > 1,
                        st,
                        {},
                        {},
                        true,
                        weight});
}

// --- grad_weight from the kernels' partials ------------------------------------------------

// Plane partials (kSlots per (n, c)) added to sum (C x D float64, any row stride): a serial
// fixed-order sum over the batch; slots of missing leading dims are dropped.
void add_plane_partials(const at::Tensor& partials, const Geometry& g, int64_t ndim,
                        at::Tensor sum) {
  at::Tensor total = at::zeros({g.channels, ndim}, at::kDouble);
  const double* part = partials.const_data_ptr<double>();
  double* out = total.data_ptr<double>();
  for (int64_t n = 0; n < g.batch; ++n)
    for (int64_t c = 0; c < g.channels; ++c)
      for (int64_t d = 0; d < ndim; ++d)
        out[c * ndim + d] += part[(n * g.channels + c) * kSlots + kSlots - ndim + d];
  sum.add_(total);
}

// Corner partials (2^D per (row, c), corners.h): a fixed-order sum over the rows, then
// d/dw_d = sum_k corner_slope(k, d) D_k, in double, added to sum (C x D).
void add_corner_partials(const at::Tensor& partials, const Geometry& g, const at::Tensor& weight64,
                         at::Tensor sum) {
  const int64_t C = g.channels, ndim = weight64.size(1), K = corner_count(g);
  const int64_t rows = partials.size(0);
  const double* part = partials.const_data_ptr<double>();
  const at::Tensor w = weight64.contiguous();
  const double* wd = w.const_data_ptr<double>();
  at::Tensor total = at::zeros({C, ndim}, at::kDouble);
  double* out = total.data_ptr<double>();
  std::vector<double> D(K);
  for (int64_t c = 0; c < C; ++c) {
    std::fill(D.begin(), D.end(), 0.0);
    for (int64_t n = 0; n < rows; ++n)
      for (int64_t k = 0; k < K; ++k) D[k] += part[(n * C + c) * K + k];
    double f[kSlots] = {0, 0, 0};
    for (int64_t d = 0; d < ndim; ++d) {
      const double v = wd[c * ndim + d];
      f[kSlots - ndim + d] = v - std::floor(v);
    }
    for (int64_t k = 0; k < K; ++k)
      for (int64_t d = 0; d < ndim; ++d)
        out[c * ndim + d] += corner_slope(g, f, static_cast<int>(k), kSlots - ndim + d) * D[k];
  }
  sum.add_(total);
}

// --- Running a call ------------------------------------------------------------------------

// fn(n0, n1, c0, c1) over blocks of samples [n0, n1) and input channels [c0, c1) of at
// most kBlockBytes of per-(n, c) bytes (or one channel); channel blocks are multiples of 16
// channels (a channels-last vector of float32) where 16 planes fit.
template <typename F>
void for_blocks(int64_t batch, int64_t channels, int64_t plane_bytes, F fn) {
  const int64_t sample = std::max<int64_t>(1, channels * plane_bytes);
  if (sample <= kBlockBytes) {
    const int64_t step = std::max<int64_t>(1, kBlockBytes / sample);
    for (int64_t n = 0; n < batch; n += step) fn(n, std::min(batch, n + step), 0, channels);
    return;
  }
  const int64_t step = block_channels(channels, plane_bytes);
  for (int64_t n = 0; n < batch; ++n)
    for (int64_t c = 0; c < channels; c += step) fn(n, n + 1, c, std::min(channels, c + step));
}

Geometry block_geometry(const Geometry& g, int64_t n0, int64_t n1, int64_t c0, int64_t c1) {
  Geometry b = g;
  b.batch = n1 - n0;
  b.channels = c1 - c0;
  return b;
}

// Output channels j, j + k, ... of block [c0, c1) of input channels: along `dim` (1 for the
// output and grad_output, 0 for the rows of the weight and of grad_weight).
at::Tensor reading(const at::Tensor& t, int64_t dim, int64_t c0, int64_t c1, int64_t k, int64_t j) {
  return t.slice(dim, c0 * k + j, c1 * k, k);
}

// SPEC §3 into `out` (k = 1; any strides the plan accepts): the kernel of plan_forward, on
// the input copied into its layout where needed (into `scratch`'s buffers).
void forward_into(at::Tensor out, const at::Tensor& input_, const at::Tensor& weight64,
                  const Geometry& g, bool active, double fill, Scratch& scratch) {
  const Plan plan = plan_forward(input_.scalar_type(), g, active, input_.sizes(), input_.strides(),
                                 out.sizes(), out.strides(), weight64.const_data_ptr<double>());
  if (plan.widened) {
    at::Tensor result = scratch.tensor(kWideOutput, out.sizes(), at::kFloat,
                                       channel_rows(out.sizes(), out.strides()));
    forward_into(result, scratch.widened(kWideInput, input_), weight64, g, active, fill, scratch);
    out.copy_(result);
    return;
  }
  const at::Tensor input = scratch.copied(kInput, plan.input, input_);
  const at::Tensor result =
      plan.output_temp ? scratch.tensor(kOutput, out.sizes(), out.scalar_type(), false) : out;
  const ForwardCall call{input.const_data_ptr(),
                         result.data_ptr(),
                         input.scalar_type(),
                         g,
                         strides_of(input.strides()),
                         strides_of(result.strides()),
                         weight64.const_data_ptr<double>(),
                         active ? 0 : fill_bits(input, fill)};
  plan.choice.forward(call);
  if (plan.output_temp) layout_copy(out, result);
}

void run_forward(at::Tensor out, const at::Tensor& input, const at::Tensor& weight64,
                 const Geometry& g, int64_t k, bool active, double fill) {
  Scratch scratch;
  if (k == 1) {
    // With the weight: the cost model's choice decides whether the call copies.
    const Plan plan = plan_forward(input.scalar_type(), g, active, input.sizes(), input.strides(),
                                   out.sizes(), out.strides(), weight64.const_data_ptr<double>());
    if (!copies(plan)) return forward_into(out, input, weight64, g, active, fill, scratch);
  }
  const int64_t plane = forward_block_plane_bytes(g, input.element_size());
  for_blocks(g.batch, g.channels, plane, [&](int64_t n0, int64_t n1, int64_t c0, int64_t c1) {
    const at::Tensor in = input.slice(0, n0, n1).slice(1, c0, c1);
    const Geometry b = block_geometry(g, n0, n1, c0, c1);
    for (int64_t j = 0; j < k; ++j)
      forward_into(reading(out.slice(0, n0, n1), 1, c0, c1, k, j), in,
                   reading(weight64, 0, c0, c1, k, j).contiguous(), b, active, fill, scratch);
  });
}

// SPEC §4 for k = 1: grad_input into `grad_input` (undefined: not asked for), grad_weight
// added to `weight_sum` (C x D float64; undefined: not asked for).
void backward_into(at::Tensor grad_input, at::Tensor weight_sum, const at::Tensor& grad_output_,
                   const at::Tensor& input_, const at::Tensor& weight64, const Geometry& g,
                   bool active, Scratch& scratch) {
  const bool needs_input = grad_input.defined(), needs_weight = weight_sum.defined();
  const std::vector<int64_t> gis =
      needs_input ? grad_input.strides().vec() : dense_strides(input_.sizes(), false);
  const Plan plan = plan_backward(input_.scalar_type(), g, active, input_.sizes(), input_.strides(),
                                  grad_output_.sizes(), grad_output_.strides(), gis, needs_input);
  if (plan.widened) {
    at::Tensor wide_grad;
    if (needs_input) wide_grad = scratch.tensor(kWideGradInput, input_.sizes(), at::kFloat, true);
    backward_into(wide_grad, weight_sum, scratch.widened(kWideGradOutput, grad_output_),
                  scratch.widened(kWideInput, input_), weight64, g, active, scratch);
    if (needs_input) grad_input.copy_(wide_grad);
    return;
  }
  const at::Tensor input = scratch.copied(kInput, plan.input, input_);
  const at::Tensor grad_output = scratch.copied(kGradOutput, plan.grad_output, grad_output_);
  at::Tensor kernel_grad = grad_input;
  if ((needs_input && plan.grad_input_temp) || (!needs_input && plan.choice.writes_grad_input))
    kernel_grad = scratch.tensor(kGradInput, input.sizes(), input.scalar_type(), plan.cl);
  at::Tensor partials;
  if (needs_weight) {
    const int64_t corners = corner_count(g);
    switch (plan.choice.partials) {
      case Partials::kPlanes:
        partials = at::empty({g.batch, g.channels, kSlots}, at::kDouble);
        break;
      case Partials::kCorners:
        partials = at::empty({g.batch, g.channels, corners}, at::kDouble);
        break;
      case Partials::kCornerChunks:
        partials = at::empty({g.batch * gather_chunks(g), g.channels, corners}, at::kDouble);
        break;
      default:
        TORCH_INTERNAL_ASSERT(false, "backward: ", plan.choice.name, " without partials");
    }
  }
  const BackwardCall call{grad_output.const_data_ptr(),
                          input.const_data_ptr(),
                          kernel_grad.defined() ? kernel_grad.data_ptr() : nullptr,
                          needs_weight ? partials.data_ptr<double>() : nullptr,
                          input.scalar_type(),
                          g,
                          strides_of(grad_output.strides()),
                          strides_of(input.strides()),
                          strides_of(kernel_grad.defined() ? kernel_grad.strides() : gis),
                          weight64.const_data_ptr<double>(),
                          active};
  plan.choice.backward(call);
  if (needs_input && !kernel_grad.is_same(grad_input)) layout_copy(grad_input, kernel_grad);
  if (!needs_weight) return;
  if (plan.choice.partials == Partials::kPlanes)
    add_plane_partials(partials, g, weight64.size(1), weight_sum);
  else
    add_corner_partials(partials, g, weight64, weight_sum);
}

// Whether grad_input alone is the forward with the negated shift, which the forward kernels
// run at their speed (a copy for SSL). With zeros (or periodic) padding and no crop, an SSL
// shift moves every element to one place (or permutes them), so its adjoint is the opposite
// shift. An Active Shift by w reads, per dim, x[o - floor(w)] and x[o - floor(w) - 1] with
// weights 1 - f and f (f = w - floor(w)); the one by -w reads g[i + floor(w)] and
// g[i + floor(w) + 1] with weights 1 - f and f (its own fraction is 1 - f, and floor(-w) =
// -floor(w) - 1; for whole w the single read g[i + w]): the adjoint's reads and weights.
bool inverse_shift(const Geometry& g, bool needs_input, bool needs_weight, int64_t k) {
  if (!needs_input || needs_weight || k != 1) return false;
  if (g.padding != kZeros && g.padding != kPeriodic) return false;
  for (int d = 0; d < kSlots; ++d)
    if (g.out_length[d] != g.length[d]) return false;
  return true;
}

// Whether a backward that asks for both gradients runs grad_input as that forward and then
// the grad_weight pass alone, rather than PlaneBackward's one sweep for both: float32 whose
// input, grad_output and grad_input are contiguous (NCHW), in inverse_shift's geometry. There
// the forward kernels write grad_input faster than the sweep's adjoint does, by more than
// the second read of grad_output costs, in and beyond the cache (benchmarks/archive/NOTES.md
// v20); channels-last would transpose grad_output twice, and float64 and bfloat16 Active
// Shift measured no faster.
bool split_backward(const Geometry& g, at::ScalarType dtype, bool contiguous, bool needs_input,
                    bool needs_weight, int64_t k) {
  return needs_input && needs_weight && dtype == at::kFloat && contiguous &&
         inverse_shift(g, true, false, k);
}

// The weight of that forward: -w (Active Shift), -round(w) (SSL).
at::Tensor inverse_weight(const at::Tensor& weight64, bool active) {
  return active ? weight64.neg() : weight64.round().neg_();
}

void run_backward(at::Tensor grad_input, at::Tensor weight_sum, const at::Tensor& grad_output,
                  const at::Tensor& input, const at::Tensor& weight64, const Geometry& g, int64_t k,
                  bool active) {
  if (inverse_shift(g, grad_input.defined(), weight_sum.defined(), k))
    return run_forward(grad_input, grad_output, inverse_weight(weight64, active), g, 1, active,
                       0.0);
  if (split_backward(g, input.scalar_type(),
                     input.is_contiguous() && grad_output.is_contiguous() &&
                         (!grad_input.defined() || grad_input.is_contiguous()),
                     grad_input.defined(), weight_sum.defined(), k)) {
    run_forward(grad_input, grad_output, inverse_weight(weight64, active), g, 1, active, 0.0);
    return run_backward(at::Tensor(), weight_sum, grad_output, input, weight64, g, k, active);
  }
  Scratch scratch;
  if (k == 1) {
    const std::vector<int64_t> gis =
        grad_input.defined() ? grad_input.strides().vec() : dense_strides(input.sizes(), false);
    const Plan plan =
        plan_backward(input.scalar_type(), g, active, input.sizes(), input.strides(),
                      grad_output.sizes(), grad_output.strides(), gis, grad_input.defined());
    if (!copies(plan))
      return backward_into(grad_input, weight_sum, grad_output, input, weight64, g, active,
                           scratch);
  }
  const int64_t plane =
      std::max(g.in_plane(), g.out_plane() * k) * std::max<int64_t>(input.element_size(), 4);
  for_blocks(g.batch, g.channels, plane, [&](int64_t n0, int64_t n1, int64_t c0, int64_t c1) {
    const at::Tensor in = input.slice(0, n0, n1).slice(1, c0, c1);
    const Geometry b = block_geometry(g, n0, n1, c0, c1);
    const at::Tensor gi =
        grad_input.defined() ? grad_input.slice(0, n0, n1).slice(1, c0, c1) : at::Tensor();
    for (int64_t j = 0; j < k; ++j) {
      // The k contributions to a block's grad_input after the first go through a buffer.
      at::Tensor target = gi;
      if (gi.defined() && j > 0)
        target = scratch.tensor(kPart, gi.sizes(), gi.scalar_type(),
                                channel_rows(gi.sizes(), gi.strides()));
      backward_into(target,
                    weight_sum.defined() ? reading(weight_sum, 0, c0, c1, k, j) : at::Tensor(),
                    reading(grad_output.slice(0, n0, n1), 1, c0, c1, k, j), in,
                    reading(weight64, 0, c0, c1, k, j).contiguous(), b, active, scratch);
      if (gi.defined() && j > 0) gi.add_(target);
    }
  });
}

}  // namespace

// --- The ops -------------------------------------------------------------------------------

at::Tensor forward(const at::Tensor& input, const at::Tensor& weight, int64_t padding, bool active,
                   at::IntArrayRef crop, double fill, bool channels_last) {
  const at::Tensor weight64 = check_common(input, weight);
  const Geometry g = geometry_of(input.sizes(), padding, crop);
  const int64_t k = g.channels == 0 ? 1 : weight.size(0) / g.channels;
  at::Tensor out = cached_empty(output_sizes(input.sizes(), g, weight.size(0)), input.scalar_type(),
                                channels_last);
  if (out.numel() == 0) return out;
  if (active)
    TORCH_CHECK_TYPE(at::isFloatingType(input.scalar_type()),
                     "input: active=True needs a floating dtype, got ", input.scalar_type());
  run_forward(out, input, weight64, g, k, active, fill);
  return out;
}

std::tuple<at::Tensor, at::Tensor> backward(const at::Tensor& grad_output, const at::Tensor& input,
                                            const at::Tensor& weight, int64_t padding, bool active,
                                            at::IntArrayRef crop, bool channels_last,
                                            std::array<bool, 2> output_mask) {
  const at::Tensor weight64 = check_common(input, weight);
  TORCH_CHECK_TYPE(at::isFloatingType(input.scalar_type()),
                   "input: gradients need a floating dtype, got ", input.scalar_type());
  const Geometry g = geometry_of(input.sizes(), padding, crop);
  const int64_t k = g.channels == 0 ? 1 : weight.size(0) / g.channels;
  check_output(grad_output, output_sizes(input.sizes(), g, weight.size(0)), input.scalar_type(),
               "grad_output");
  at::Tensor grad_input, weight_sum;
  if (output_mask[0]) grad_input = cached_empty(input.sizes(), input.scalar_type(), channels_last);
  if (output_mask[1]) weight_sum = at::zeros(weight.sizes(), at::kDouble);
  if (input.numel() == 0 || grad_output.numel() == 0) {
    if (grad_input.defined()) grad_input.zero_();
  } else if (output_mask[0] || output_mask[1]) {
    run_backward(grad_input, weight_sum, grad_output, input, weight64, g, k, active);
  }
  at::Tensor grad_weight;
  if (output_mask[1]) grad_weight = at::empty(weight.sizes(), weight.options()).copy_(weight_sum);
  return {grad_input, grad_weight};
}

void shift_inplace(at::Tensor input, const at::Tensor& weight, int64_t padding) {
  const at::Tensor weight64 = check_common(input, weight);
  TORCH_CHECK(weight.size(0) == input.size(1),
              "weight: shifting in place keeps the channels, "
              "expected shape (",
              input.size(1), ", ", input.dim() - 2, "), got ", weight.sizes());
  const int64_t ndim = input.dim() - 2;
  const std::vector<int64_t> no_crop(2 * std::max<int64_t>(ndim, 0), 0);
  const Geometry g = geometry_of(input.sizes(), padding, no_crop);
  TORCH_CHECK(input.is_non_overlapping_and_dense(),
              "input: shifting in place needs a dense tensor without overlapping memory");
  if (input.numel() == 0) return;
  const Choice choice =
      choose_inplace(input.scalar_type(), g, input.strides(), weight64.const_data_ptr<double>());
  const InplaceCall call{input.data_ptr(), input.element_size(), g, strides_of(input.strides()),
                         weight64.const_data_ptr<double>()};
  choice.inplace(call);
}

namespace {

// The kernel a call would run, without running it (tests, README.md's table): direction
// "forward", "backward" or "inplace"; sizes / strides of the input (any tensor, even one
// that does not exist); grad_output_strides: empty for the layout the forward would give;
// multiplier: k of a (k·C, D) weight; needs_grad_input / needs_grad_weight: the backward's
// output_mask. "<name>", with " [widened]" (bfloat16 / half on float copies), " [blocks]"
// (the call runs in blocks: run_forward, run_backward) and " [inverse shift]" (a backward
// run as the forward with the negated shift; "<forward> [inverse shift] + <backward>": that
// forward for grad_input, then the backward for grad_weight alone), or "none" (empty).
std::string kernel_name(c10::string_view direction, at::ScalarType dtype, at::IntArrayRef sizes,
                        at::IntArrayRef strides, int64_t padding, bool active, at::IntArrayRef crop,
                        bool channels_last, at::IntArrayRef grad_output_strides, int64_t multiplier,
                        bool needs_grad_input, bool needs_grad_weight,
                        const std::optional<at::Tensor>& weight) {
  TORCH_CHECK(sizes.size() == strides.size(), "kernel_name: sizes and strides differ in length");
  TORCH_CHECK(multiplier >= 1, "multiplier: expected an int >= 1, got ", multiplier);
  const Geometry g = geometry_of(sizes, padding, crop);
  // The weight rows of the first kernel call (j = 0 of a channel multiplier), for the cost
  // model's shift spread; without a weight, the widest spread.
  at::Tensor weight64;
  if (weight.has_value() && weight->defined()) {
    TORCH_CHECK(weight->dim() == 2 && weight->size(0) == sizes[1] * multiplier &&
                    weight->size(1) == static_cast<int64_t>(sizes.size()) - 2,
                "weight: expected shape (", sizes[1] * multiplier, ", ", sizes.size() - 2,
                "), got ", weight->sizes());
    weight64 = weight->to(at::kDouble).slice(0, 0, sizes[1] * multiplier, multiplier).contiguous();
  }
  const double* w = weight64.defined() ? weight64.const_data_ptr<double>() : nullptr;
  // The output of all k·C channels, then the view of output channels j::k a kernel writes.
  std::vector<int64_t> out_sizes = output_sizes(sizes, g, sizes[1] * multiplier);
  std::vector<int64_t> out_strides = dense_strides(out_sizes, channels_last);
  if (!grad_output_strides.empty()) out_strides = grad_output_strides.vec();
  out_sizes[1] = sizes[1];
  out_strides[1] *= multiplier;
  const bool empty = g.batch * g.channels * g.in_plane() == 0 || g.out_plane() == 0;
  Plan plan;
  if (direction == "forward") {
    if (empty) return "none";
    plan = plan_forward(dtype, g, active, sizes, strides, out_sizes, out_strides, w);
  } else if (direction == "backward") {
    if (empty) return "none";
    std::vector<int64_t> go_strides = out_strides;
    go_strides[1] /= multiplier;
    // run_backward: the forward from grad_output (its strides) into grad_input.
    auto inverse_name = [&] {
      const at::Tensor inverse =
          weight64.defined() ? inverse_weight(weight64, active) : at::Tensor();
      const Plan inverse_plan = plan_forward(
          dtype, g, active, out_sizes, go_strides, sizes, dense_strides(sizes, channels_last),
          inverse.defined() ? inverse.const_data_ptr<double>() : nullptr);
      return std::string(inverse_plan.choice.name) + (inverse_plan.widened ? " [widened]" : "") +
             (copies(inverse_plan) ? " [blocks]" : "") + " [inverse shift]";
    };
    if (inverse_shift(g, needs_grad_input, needs_grad_weight, multiplier)) return inverse_name();
    if (split_backward(g, dtype,
                       is_contiguous(sizes, dense_strides(sizes, channels_last)) &&
                           is_contiguous(sizes, strides) && is_contiguous(out_sizes, go_strides),
                       needs_grad_input, needs_grad_weight, multiplier))
      return inverse_name() + " + " +
             kernel_name(direction, dtype, sizes, strides, padding, active, crop, channels_last,
                         grad_output_strides, multiplier, false, true, weight);
    plan = plan_backward(dtype, g, active, sizes, strides, out_sizes, out_strides,
                         dense_strides(sizes, channels_last), needs_grad_input);
  } else if (direction == "inplace") {
    if (g.batch * g.channels * g.in_plane() == 0) return "none";
    plan.choice = choose_inplace(dtype, g, strides, w);
  } else {
    TORCH_CHECK(false, "kernel_name: unknown direction ", direction);
  }
  const bool blocks = direction != "inplace" && (multiplier > 1 || copies(plan));
  return std::string(plan.choice.name) + (plan.widened ? " [widened]" : "") +
         (blocks ? " [blocks]" : "");
}

std::string isa() { return kIsa; }

// "none", "taps", "gather" or "planes": the channels-last kernel every later call runs where
// it can (an error where it cannot), for calibrating the cost model (cost_model.h).
void set_kernel_override(c10::string_view kernel) {
  Override o = Override::kNone;
  if (kernel == "taps")
    o = Override::kTaps;
  else if (kernel == "gather")
    o = Override::kGather;
  else if (kernel == "planes")
    o = Override::kPlanes;
  else if (kernel == "planar")
    o = Override::kPlanar;
  else
    TORCH_CHECK(kernel == "none",
                "kernel: expected 'none', 'taps', 'gather', 'planes' or 'planar', got '", kernel,
                "'");
  kernel_override.store(o);
}

}  // namespace

TORCH_LIBRARY(torchshift2_cpu, m) {
  m.def(
      "forward(Tensor input, Tensor weight, int padding, bool active, int[] crop, float fill, "
      "bool channels_last) -> Tensor");
  // An output not in output_mask is undefined (None in Python).
  m.def(
      "backward(Tensor grad_output, Tensor input, Tensor weight, int padding, bool active, "
      "int[] crop, bool channels_last, bool[2] output_mask) -> (Tensor, Tensor)");
  m.def("shift_inplace(Tensor(a!) input, Tensor weight, int padding) -> ()");
  // The eager entry (eager.cpp). padding twice: the code for the kernels, the name for
  // torchshift2::shift_backward.
  m.def(
      "shift_autograd(Tensor input, Tensor weight, str padding, int padding_code, "
      "bool active, int[] crop, bool channels_last) -> Tensor");
  m.def(
      "eager_shift(Tensor input, Tensor weight, str padding, int padding_code, bool active, "
      "int ndim, bool channels_last) -> Tensor");
  m.def("eager_shift_inplace(Tensor(a!) input, Tensor weight, int padding_code) -> bool");
  m.def("empty_cache() -> ()");
  m.def("cache_info() -> int[]");
  // Introspection (README.md, kernel selection).
  m.def(
      "kernel_name(str direction, ScalarType dtype, int[] sizes, int[] strides, int padding, "
      "bool active, int[] crop, bool channels_last, int[] grad_output_strides, int multiplier, "
      "bool needs_grad_input, bool needs_grad_weight, Tensor? weight=None) -> str");
  m.def("set_kernel_override(str kernel) -> ()");
  m.def("set_cache_bytes(int bytes) -> int");
  m.def("isa() -> str");
}

TORCH_LIBRARY_IMPL(torchshift2_cpu, CPU, m) {
  m.impl("forward", &forward);
  m.impl("backward", &backward);
  m.impl("shift_inplace", &shift_inplace);
}

TORCH_LIBRARY_IMPL(torchshift2_cpu, CatchAll, m) {
  m.impl("empty_cache", &empty_cache);
  m.impl("cache_info", &cache_info);
  m.impl("kernel_name", &kernel_name);
  m.impl("set_kernel_override", &set_kernel_override);
  m.impl("set_cache_bytes", &set_cache_bytes);
  m.impl("isa", &isa);
}

}  // namespace torchshift2_cpu
