// The output cache (output_cache.cpp): the allocator of the kernels' outputs.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

namespace torchshift2_cpu {

// The strides of a dense tensor of `sizes`: contiguous, or channels innermost (the physical
// order N, spatial..., C) when channels_last. What cached_empty allocates, and what ops.cpp
// expects of the copies it makes.
std::vector<int64_t> dense_strides(at::IntArrayRef sizes, bool channels_last);

// An uninitialised CPU tensor from the cache, with dense_strides(sizes, channels_last).
at::Tensor cached_empty(at::IntArrayRef sizes, at::ScalarType dtype, bool channels_last);

// Releases the free blocks.
void empty_cache();

// (free bytes, free blocks, limit in bytes, hits, misses).
std::vector<int64_t> cache_info();

}  // namespace torchshift2_cpu
