// streaming_stores_pay (copy.h): the size of the last-level cache, read once, and the
// threshold that tests and benchmarks set instead (set_streaming_threshold).
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <fstream>
#include <string>

#include "copy.h"

namespace torchshift2_cpu {
namespace {

// The largest cache of CPU 0 that sysfs lists (the kernel's view; sysconf's
// _SC_LEVEL3_CACHE_SIZE reports the whole host's L3 in some VMs), else sysconf's, else
// 32 MiB.
int64_t last_level_cache_bytes() {
  int64_t largest = 0;
  for (int index = 0; index < 8; ++index) {
    std::ifstream file("/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(index) +
                       "/size");
    int64_t size = 0;
    std::string unit;
    if (!(file >> size)) continue;
    file >> unit;  // "32768K"'s "K" (the number stops before it)
    if (unit == "K") size <<= 10;
    if (unit == "M") size <<= 20;
    largest = std::max(largest, size);
  }
  if (largest > 0) return largest;
  const long llc = sysconf(_SC_LEVEL3_CACHE_SIZE);
  return llc > 0 ? llc : int64_t(32) << 20;
}

// The threshold in force: -1 until set (the machine's rule below).
std::atomic<int64_t> threshold_override{-1};

}  // namespace

bool streaming_stores_pay(int64_t bytes) {
  static const int64_t machine_threshold = last_level_cache_bytes() + 1;
  const int64_t forced = threshold_override.load();
  return bytes >= (forced >= 0 ? forced : machine_threshold);
}

int64_t set_streaming_threshold(int64_t bytes) {
  return threshold_override.exchange(bytes < 0 ? -1 : bytes);
}

}  // namespace torchshift2_cpu
