// The kernels' entry points: every function ops.cpp may run for a call, by direction, with
// one signature per direction (ForwardCall, BackwardCall, InplaceCall), and the conditions
// ops.cpp's choose_kernel reads. Which one runs for which call is the kernel selection
// table of README.md (checked by tests/test_cpu_kernel_table.py).
//
// An entry point dispatches the dtype itself and asserts that it was given one it is
// compiled for; choose_kernel only picks one for such dtypes. To change what a kernel
// receives, change its call struct here and the dispatch in ops.cpp that fills it.
#pragma once

#include <c10/core/ScalarType.h>

#include <algorithm>
#include <cstdint>

#include "geometry.h"

namespace torchshift2_cpu {

// --- Forward (SPEC §3): output = the shift of input --------------------------------------

struct ForwardCall {
  const void* input;
  void* output;
  c10::ScalarType dtype;  // of input and output (SSL kernels use only its size)
  Geometry g;
  Strides is, os;        // input, output
  const double* weight;  // (C, D), contiguous float64, finite
  uint64_t fill;         // SSL: the bits (element size) of what zeros padding reads
};

using ForwardKernel = void (*)(const ForwardCall&);

// SSL, any element size. Planar: the input's slot 2 unit-stride.
void ssl_forward_planar(const ForwardCall&);   // flat planes (flat_planes): a copy per slab
void ssl_forward_strided(const ForwardCall&);  // any other strides: a copy per row
// SSL, channels innermost, rows (n, i0, i1) W x C blocks.
void ssl_forward_cl_taps(const ForwardCall&);    // masked moves per distinct shift
void ssl_forward_cl_gather(const ForwardCall&);  // 4 / 8 bytes (AVX2-only builds: 2 too)
void ssl_forward_cl_planes(const ForwardCall&);  // 4 bytes, dense (through_planes)
// Active Shift: float, double, bfloat16, half, except where noted.
void active_forward_planar(const ForwardCall&);  // the input's slot 2 unit-stride
void active_forward_cl_taps(const ForwardCall&);
void active_forward_cl_gather(const ForwardCall&);  // float, double
void active_forward_cl_planes(const ForwardCall&);  // float, double; dense (through_planes)

// --- Backward (SPEC §4): grad_input and grad_weight partials -----------------------------

struct BackwardCall {
  const void* grad_output;
  const void* input;
  // Null when grad_input is not asked for (output_mask); accepted by every kernel but
  // backward_cl_blocks (Choice::writes_grad_input in ops.cpp).
  void* grad_input;
  // grad_weight partials: kSlots doubles per (n, c) (the "plane" format, reduced by
  // ops.cpp's add_plane_partials) for backward_planar*, backward_cl_planes; 2^D doubles
  // per (row, c), corners as corners.h encodes them (the "corner" format, reduced by
  // add_corner_partials) for the others, rows = batch x gather_chunks(g) for the
  // gathers and batch for backward_cl_blocks. Null when grad_weight is not asked for:
  // every kernel then skips its grad_weight work.
  double* partials;
  c10::ScalarType dtype;
  Geometry g;
  Strides gos, is, gis;  // grad_output, input, grad_input
  const double* weight;  // (C, D), contiguous float64, finite
  bool active;
};

using BackwardKernel = void (*)(const BackwardCall&);

// Planar: dense planes (slot 2 unit-stride in all three tensors).
void backward_planar(const BackwardCall&);          // float, double
void backward_planar_widened(const BackwardCall&);  // bfloat16, half: through float planes
// Channels innermost, rows W x C blocks; float, double.
void backward_cl_planes(const BackwardCall&);        // dense (through_planes)
void backward_cl_gather_fused(const BackwardCall&);  // zeros padding, gather_indexable
void backward_cl_gather(const BackwardCall&);        // other paddings, gather_indexable
void backward_cl_blocks(const BackwardCall&);        // the rest

// --- In place (SSL, no crop): the input shifted in its own memory ------------------------

struct InplaceCall {
  void* data;
  int64_t element_size;
  Geometry g;
  Strides st;
  const double* weight;  // (C, D), contiguous float64, finite
};

using InplaceKernel = void (*)(const InplaceCall&);

// Only channels with a nonzero rounded shift are touched (none: nothing is).
void shift_inplace_planar_zeros(const InplaceCall&);  // dense planes, zeros padding
void shift_inplace_planar(const InplaceCall&);        // dense planes, other paddings
void shift_inplace_strided(const InplaceCall&);       // other dense layouts
void shift_inplace_cl_one_pass(const InplaceCall&);   // channels innermost, batch >= threads
void shift_inplace_cl_two_pass(const InplaceCall&);   // channels innermost, fewer samples
// Channels innermost, 4-byte elements: the moving channels in one narrow block.
void shift_inplace_cl_block_gather(const InplaceCall&);

// The channels [first, first + width) that hold every channel whose rounded shift is not 0,
// width the smallest multiple of `lanes` that does (or all the channels, if fewer); width
// 0: no channel moves. `moving`: how many channels move.
struct MovingBlock {
  int64_t first = 0, width = 0, moving = 0;
};
MovingBlock moving_block(const double* weight, const Geometry& g, int64_t lanes);

// Whether shift_inplace_cl_block_gather runs a call whose moving channels are `block`:
// its 32-bit gather indices reach a sample's saved block, and gathering the whole block
// costs less than moving the moving channels one by one.
bool block_gather_pays(const Geometry& g, const MovingBlock& block);

// --- Layout copies (4-byte elements; cl_planes.cpp) ----------------------------------------

// Per sample n < batch: `lanes` planes of `positions` elements at dst + n * dst_batch from
// the first `lanes` elements of `positions` rows of `channels` at src + n * src_batch.
void rows_to_planes(const void* src, int64_t src_batch, int64_t channels, int64_t lanes, void* dst,
                    int64_t dst_batch, int64_t positions, int64_t batch);
// The inverse: rows (the first `lanes` of `channels` elements each) from dense planes.
void planes_to_rows(const void* src, int64_t src_batch, int64_t lanes, void* dst, int64_t dst_batch,
                    int64_t channels, int64_t positions, int64_t batch);

// --- Conditions --------------------------------------------------------------------------

// Whether the through-planes kernels can run a call (dense channels-last samples, bounded
// buffers), and how many blocks of 16 channels a task transposes together (group) of the
// sample's (blocks), whether they spill out of L2, and the tasks of the call. grad_input: a
// backward's strides, null for a forward.
struct PlanesFit {
  bool possible = false;
  int64_t group = 0, blocks = 0;
  bool spills = false;      // one block's planes go to memory between the passes
  int64_t plane_bytes = 0;  // one input plane as float
  int64_t tasks = 0;        // (sample, group) tasks of the call
};
PlanesFit planes_fit(int64_t element_size, const Geometry& g, const Strides& input,
                     const Strides& output, const Strides* grad_input);

// Whether a channels-last kernel of elements of this size goes through planes where the cost
// model (cost_model.h) does not decide (cl_planes.cpp explains the rule).
bool through_planes(int64_t element_size, const Geometry& g, const Strides& input,
                    const Strides& output, const Strides* grad_input);

// Whether 32-bit element indices reach every element of a sample (the gathers' indices).
inline bool gather_indexable(const Geometry& g, const Strides& s) {
  int64_t span = g.channels;
  for (int k = 0; k < kSlots; ++k) {
    if (s.slot[k] < 0) return false;
    span += (g.length[k] - 1) * s.slot[k];
  }
  return span < (int64_t(1) << 30);
}

// Rows of corner partials per sample of the backward gathers: one per chunk of this many
// input / output rows (fixed, so grad_weight does not depend on the thread count).
constexpr int64_t kChunkRows = 8;
inline int64_t gather_chunks(const Geometry& g) {
  const int64_t rows = std::max(g.length[0] * g.length[1], g.out_length[0] * g.out_length[1]);
  return (rows + kChunkRows - 1) / kChunkRows;
}

}  // namespace torchshift2_cpu
