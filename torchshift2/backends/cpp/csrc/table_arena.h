// Table<T>: a std::vector whose memory comes from a per-thread bump arena, for the per-call
// tables of the kernels (per-channel plans: tap indices, edge lists, adjoint lists).
//
// Why: those are many small vectors, and with glibc's malloc and free they cost more than
// the kernel itself on small tensors with many channels (benchmarks/archive/NOTES.md). Every block
// records its arena; a free only counts the arena's live blocks down (atomically: tables
// built in parallel tasks are freed by the calling thread), and the owning thread starts
// again from the beginning at its next allocation once none is live. So a Table must not
// outlive the call that made it (none is kept between calls).
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

namespace torchshift2_cpu {

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
  bool operator==(const TableAllocator<U>&) const {
    return true;
  }
  template <typename U>
  bool operator!=(const TableAllocator<U>&) const {
    return false;
  }
};

template <typename T>
using Table = std::vector<T, TableAllocator<T>>;

}  // namespace torchshift2_cpu
