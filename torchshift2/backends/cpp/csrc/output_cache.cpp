// torchshift2 CPU output cache: the allocator behind the outputs of the C++ kernels
// (forward's output, backward's grad_input).
//
// Why: a fresh multi-megabyte CPU tensor is page-faulted in on first touch, which costs
// several times streaming it (benchmarks/archive/NOTES.md), and glibc hands big blocks back to the
// kernel (mmap above its threshold, heap trimming below), so a training step that
// allocates and frees the same activations every iteration faults them in every time. This
// allocator keeps freed blocks of at least kMinBytes and hands them out again for requests
// of the same rounded size, like the CUDA caching allocator does for GPU memory. Smaller
// requests go to torch's default CPU allocator.
//
// The cache holds at most limit bytes of free blocks (TORCHSHIFT2_CPU_CACHE_MB, default: an
// eighth of physical memory, at most 4 GiB; 0 disables it); beyond that the oldest free
// blocks are released. empty_cache() releases them all. Thread-safe; the pool object is
// never destroyed, so tensors freed during interpreter shutdown are still handled.
#include "output_cache.h"

#include <ATen/EmptyTensor.h>
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>

#include <pthread.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <list>
#include <mutex>
#include <unordered_map>

namespace torchshift2_cpu {
namespace {

constexpr size_t kMinBytes = size_t(1) << 20;
constexpr size_t kRounding = size_t(64) << 10;
constexpr size_t kAlignment = 4096;

size_t default_limit() {
  if (const char* env = std::getenv("TORCHSHIFT2_CPU_CACHE_MB")) {
    char* end = nullptr;
    const long long mb = std::strtoll(env, &end, 10);
    if (end != env && mb >= 0) return static_cast<size_t>(mb) << 20;
  }
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
  const size_t physical = pages > 0 && page > 0 ? size_t(pages) * size_t(page) : 0;
  return std::min(physical / 8, size_t(4) << 30);
}

class OutputCache final : public c10::Allocator {
 public:
  static OutputCache& get() {
    static OutputCache* cache = new OutputCache();  // never destroyed (see above)
    return *cache;
  }

  c10::DataPtr allocate(size_t n) override {
    if (n < kMinBytes || limit_ == 0) return c10::GetDefaultCPUAllocator()->allocate(n);
    const size_t size = (n + kRounding - 1) / kRounding * kRounding;
    void* block = nullptr;
    {
      std::lock_guard<std::mutex> guard(mutex_);
      auto bucket = free_.find(size);
      if (bucket != free_.end() && !bucket->second.empty()) {
        block = bucket->second.back().first;
        age_.erase(bucket->second.back().second);
        bucket->second.pop_back();
        cached_ -= size;
        ++hits_;
      } else {
        ++misses_;
      }
    }
    if (block == nullptr) {
      if (posix_memalign(&block, kAlignment, size) != 0) {
        empty();
        TORCH_CHECK(posix_memalign(&block, kAlignment, size) == 0,
                    "torchshift2: out of memory allocating ", size, " bytes");
      }
      std::lock_guard<std::mutex> guard(mutex_);
      sizes_[block] = size;
    }
    return {block, block, &release, c10::Device(c10::DeviceType::CPU)};
  }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  void empty() {
    std::lock_guard<std::mutex> guard(mutex_);
    for (const auto& entry : age_) {
      sizes_.erase(entry.first);
      std::free(entry.first);
    }
    age_.clear();
    free_.clear();
    cached_ = 0;
  }

  std::vector<int64_t> info() {
    std::lock_guard<std::mutex> guard(mutex_);
    return {static_cast<int64_t>(cached_), static_cast<int64_t>(age_.size()),
            static_cast<int64_t>(limit_), static_cast<int64_t>(hits_),
            static_cast<int64_t>(misses_)};
  }

 private:
  using Age = std::list<std::pair<void*, size_t>>;  // free blocks, oldest first

  OutputCache() : limit_(default_limit()) {
    // A fork while another thread holds the lock would leave the child's copy locked.
    pthread_atfork([] { get().mutex_.lock(); }, [] { get().mutex_.unlock(); },
                   [] { get().mutex_.unlock(); });
  }

  static void release(void* block) { get().give_back(block); }

  void give_back(void* block) {
    std::vector<void*> evicted;
    {
      std::lock_guard<std::mutex> guard(mutex_);
      auto known = sizes_.find(block);
      TORCH_INTERNAL_ASSERT(known != sizes_.end(), "torchshift2: unknown block freed");
      const size_t size = known->second;
      if (size > limit_) {
        sizes_.erase(known);
        evicted.push_back(block);
      } else {
        while (cached_ + size > limit_ && !age_.empty()) {
          auto& oldest = age_.front();
          auto& bucket = free_[oldest.second];
          for (auto it = bucket.begin(); it != bucket.end(); ++it)
            if (it->first == oldest.first) {
              bucket.erase(it);
              break;
            }
          cached_ -= oldest.second;
          sizes_.erase(oldest.first);
          evicted.push_back(oldest.first);
          age_.pop_front();
        }
        age_.emplace_back(block, size);
        free_[size].emplace_back(block, std::prev(age_.end()));
        cached_ += size;
      }
    }
    for (void* b : evicted) std::free(b);
  }

  std::mutex mutex_;
  const size_t limit_;
  size_t cached_ = 0, hits_ = 0, misses_ = 0;
  std::unordered_map<void*, size_t> sizes_;  // every live or free block of this cache
  Age age_;
  std::unordered_map<size_t, std::vector<std::pair<void*, Age::iterator>>> free_;
};

}  // namespace

std::vector<int64_t> dense_strides(at::IntArrayRef sizes, bool channels_last) {
  const int64_t dim = static_cast<int64_t>(sizes.size());
  std::vector<int64_t> strides(dim);
  if (channels_last && dim >= 3) {
    int64_t stride = 1;
    strides[1] = stride;
    stride *= std::max<int64_t>(sizes[1], 1);
    for (int64_t d = dim - 1; d >= 2; --d) {
      strides[d] = stride;
      stride *= std::max<int64_t>(sizes[d], 1);
    }
    strides[0] = stride;
  } else {
    int64_t stride = 1;
    for (int64_t d = dim - 1; d >= 0; --d) {
      strides[d] = stride;
      stride *= std::max<int64_t>(sizes[d], 1);
    }
  }
  return strides;
}

at::Tensor cached_empty(at::IntArrayRef sizes, at::ScalarType dtype, bool channels_last) {
  return at::detail::empty_strided_generic(sizes, dense_strides(sizes, channels_last),
                                           &OutputCache::get(),
                                           c10::DispatchKeySet(c10::DispatchKey::CPU), dtype);
}

void empty_cache() { OutputCache::get().empty(); }

std::vector<int64_t> cache_info() { return OutputCache::get().info(); }

}  // namespace torchshift2_cpu
