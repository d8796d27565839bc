// The size of the last-level cache, and the kernel choices that depend on whether a call's
// data stays in it (benchmarks/archive/NOTES.md, v17).
#pragma once

#include <cstdint>

namespace torchshift2_cpu {

// The last-level cache in bytes: the largest cache sysfs lists for CPU 0, else sysconf's
// L3, else 32 MiB; or what set_cache_bytes set.
int64_t last_level_cache_bytes();

// Makes last_level_cache_bytes() answer `bytes` (negative: the machine's again), for tests
// and benchmarks; returns the previous setting (-1: the machine's). Process-wide.
int64_t set_cache_bytes(int64_t bytes);

// Whether a call that reads and writes `traffic` bytes in all should write its output with
// streaming stores (LineStreamer, copy.h, or the kernels' own): when the traffic exceeds
// the cache. Then the call's own traffic evicts most of what it writes before anything
// reads it again; below that, the output would be read from the cache by whatever runs next
// (a loop of the same call included), and streaming it out costs more than the line reads
// it saves.
inline bool streaming_stores_pay(int64_t traffic) { return traffic > last_level_cache_bytes(); }

// Whether such a call should prefetch the reads that the hardware prefetchers do not follow:
// when the traffic exceeds half the cache. A channels-last tap of a few channels reads one
// line in four (or fewer) of its source row; the through-planes backward's transposes read
// a few lines of each position's row, pages apart after a few rows. From memory those reads
// stall; from the cache the prefetches cost more than they save.
inline bool strided_prefetch_pays(int64_t traffic) {
  return 2 * traffic > last_level_cache_bytes();
}

}  // namespace torchshift2_cpu
