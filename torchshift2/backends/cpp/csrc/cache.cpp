// last_level_cache_bytes (cache.h): read once from sysfs, or set for tests.
#include "cache.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <fstream>
#include <string>

namespace torchshift2_cpu {
namespace {

// The largest cache of CPU 0 that sysfs lists (the kernel's view; sysconf's
// _SC_LEVEL3_CACHE_SIZE reports the whole host's L3 in some VMs), else sysconf's, else
// 32 MiB.
int64_t machine_cache_bytes() {
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

std::atomic<int64_t> cache_override{-1};

}  // namespace

int64_t last_level_cache_bytes() {
  static const int64_t machine = machine_cache_bytes();
  const int64_t forced = cache_override.load();
  return forced >= 0 ? forced : machine;
}

int64_t set_cache_bytes(int64_t bytes) { return cache_override.exchange(bytes < 0 ? -1 : bytes); }

}  // namespace torchshift2_cpu
