// The op kernels of ops.cpp that the eager entry (eager.cpp) calls.
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <cstdint>
#include <tuple>

namespace torchshift2_cpu {

// SPEC §3 into a new tensor from the output cache, contiguous or (channels_last) channels
// innermost, as torchshift2._spec.is_channels_last decides in Python.
at::Tensor forward(const at::Tensor& input, const at::Tensor& weight, int64_t padding, bool active,
                   at::IntArrayRef crop, double fill, bool channels_last);

// SPEC §4: (grad_input, grad_weight), each only where output_mask asks for it (undefined
// otherwise); grad_input from the output cache in the layout that channels_last names.
std::tuple<at::Tensor, at::Tensor> backward(const at::Tensor& grad_output, const at::Tensor& input,
                                            const at::Tensor& weight, int64_t padding, bool active,
                                            at::IntArrayRef crop, bool channels_last,
                                            std::array<bool, 2> output_mask);

// SSL with no crop, in the input's memory.
void shift_inplace(at::Tensor input, const at::Tensor& weight, int64_t padding);

}  // namespace torchshift2_cpu
