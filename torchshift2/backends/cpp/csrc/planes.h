// The per-plane kernels: what the planar files compute for one (n, c) plane, shared with
// the in-place kernels (inplace.cpp) and the channels-last kernels that go through planes
// (cl_planes.cpp). Each is called once per plane (or per slab of a plane), never per row, so
// nothing here needs inlining across files. Defined in planar_forward.cpp (SSL, Active
// Shift) and planar_backward.cpp (backward), instantiated there for the types listed.
#pragma once

#include <ATen/OpMathType.h>

#include <cstdint>
#include <memory>
#include <type_traits>

#include "geometry.h"

namespace torchshift2_cpu {

// --- SSL forward of one plane (T: a carrier, dispatch.h) --------------------------------

// Any strides: xs / ys are the three slot strides of the input and output planes.
template <typename T>
void ssl_forward_plane(const T* x, const int64_t* xs, T* y, const int64_t* ys, const Geometry& g,
                       const ChannelShift<double>& cs, T fill);

// A plane whose slabs (slots 1, 2) are one flat run in both tensors, slot 2 not cropped
// (flat_planes): one copy per slab plus its edge columns. xs0 / ys0: the slot-0 strides;
// edge_scratch: room for g.length[2] indices.
template <typename T>
void ssl_forward_plane_flat(const T* x, int64_t xs0, T* y, int64_t ys0, const Geometry& g,
                            const ChannelShift<double>& cs, T fill, int64_t* edge_scratch);

// A dense plane shifted in place with zeros padding and no crop, without a buffer (one
// overlap-safe memmove per slab). edge_scratch: room for g.length[2] indices.
template <typename T>
void ssl_shift_plane_inplace_zeros(T* p, const Geometry& g, const ChannelShift<double>& cs, T fill,
                                   int64_t* edge_scratch);

// --- Active Shift forward of single planes ----------------------------------------------

// Per-channel plans built once per call (the constructor), then plane() per plane. The
// input's slot 2 must be unit-stride. scalar_t: float, double, bfloat16, half.
template <typename scalar_t>
class ActiveForwardPlanes {
 public:
  using opmath_t = at::opmath_type<scalar_t>;
  ActiveForwardPlanes(const Geometry& g, const Shifts<opmath_t>& shifts);
  ~ActiveForwardPlanes();

  // Whether plane() needs an op-math buffer for outputs with these strides, and its size:
  // a slab's rows (a flat run is computed there whole, then rounded into the output).
  bool buffered(const Strides& os) const {
    return !(std::is_same<scalar_t, opmath_t>::value && (os.slot[2] == 1 || g_.out_length[2] == 1));
  }
  int64_t buffer_size() const { return g_.out_length[1] * g_.out_length[2]; }

  // Output slabs [o0_begin, o0_end) of channel c's plane (o0_end < 0: to the last), y the
  // address of slab o0_begin; buffer: buffer_size() elements where buffered(os), else null.
  void plane(int64_t c, const scalar_t* x, const Strides& is, scalar_t* y, const Strides& os,
             opmath_t* buffer, int64_t o0_begin = 0, int64_t o0_end = -1) const;

 private:
  struct Plans;  // planar_forward.cpp
  const Geometry& g_;
  std::unique_ptr<const Plans> plans_;
};

// --- Backward of single planes ----------------------------------------------------------

// Per-thread working memory of PlaneBackward::plane.
template <typename scalar_t>
class PlaneScratch {
 public:
  PlaneScratch();
  ~PlaneScratch();
  struct Impl;  // planar_backward.cpp
  std::unique_ptr<Impl> impl;
};

// grad_input and the grad_weight terms of single (n, c) planes: per-channel tables built
// once per call (the constructor), then plane() per plane. Dense planes only: slot 2 of
// grad_output, input and grad_input is unit-stride (or of length 1). Op-math storage only
// (float, double): bfloat16 and half planes are widened first (backward_planar_widened).
template <typename scalar_t>
class PlaneBackward {
 public:
  PlaneBackward(const Geometry& g, bool active, const Shifts<scalar_t>& read_shifts,
                const Shifts<scalar_t>& interp_shifts);
  ~PlaneBackward();

  // One plane of channel c: grad_input into gi and, when partial is not null, its kSlots
  // grad_weight terms. next_go, next_x (or null): the next plane's grad_output and input,
  // prefetched during this plane's grad_weight phase (which reads only L1 / L2), at the
  // same row indices: a hint, exact only without crop.
  void plane(PlaneScratch<scalar_t>& scratch, int64_t c, const scalar_t* go, const scalar_t* x,
             scalar_t* gi, const Strides& gos, const Strides& is, const Strides& gis,
             const scalar_t* next_go, const scalar_t* next_x, double* partial) const;

 private:
  struct Tables;  // planar_backward.cpp
  const Geometry& g_;
  const bool active_;
  const Shifts<scalar_t>& read_shifts_;
  const Shifts<scalar_t>& interp_shifts_;
  std::unique_ptr<const Tables> tables_;
};

}  // namespace torchshift2_cpu
