// The cost model of the channels-last forward's choice among the taps, the gathers and the
// planes (README.md, kernel selection). The taps cost grows with the shift spread: a block
// of channels (one 64-byte vector) costs one masked read per distinct offset its channels
// read (its taps), so a block whose channels all move alike costs a copy, and one whose 16
// channels read 16 places costs 16 reads. The gathers cost one indexed read per corner and
// vector, the planes two transposes and the planar kernel, whatever the spread. Each is
// estimated in nanoseconds per output vector for one thread with the data in cache; the
// dispatcher takes the cheapest kernel that can run the call.
//
// The constants are fitted by benchmarks/tools/calibrate_cl.py (its last run, with the
// machine, is benchmarks/results/calibrate-cl-*.txt); they rank kernels, so only their
// ratios matter. AVX2-only
// builds keep the fixed rules of choose_kernel (their gathers are slower still).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "corners.h"
#include "geometry.h"
#include "kernels.h"

namespace torchshift2_cpu {

struct CostModel {
  // SSL: taps = ssl_tap_base + ssl_tap * taps; gather (one per vector); planes.
  double ssl_tap_base, ssl_tap, ssl_gather, ssl_planes;
  // Active Shift: taps = active_tap_base + active_tap * taps (a tap per distinct corner
  // offset); gather per corner pair (2^(D-1) per vector); planes (2D; 3D: times
  // active_planes_3d, eight corners per position in the planar kernel).
  double active_tap_base, active_tap, active_gather_pair, active_planes, active_planes_3d;
  // SSL planes of two spatial dims larger than kLargePlaneBytes, and any planes that go to
  // memory between the passes (PlanesFit::spills): the SSL planes then cost several times
  // their in-cache cost (the planar pass is a copy, so the transposes dominate), the Active
  // ones little more (calibrate_cl.py --shapes with large planes shows both).
  double ssl_planes_large, active_planes_spill;
  double copies_factor;
};

inline constexpr CostModel kCostModel{1.5,  0.75, 9.0, 6.3, 2.4, 0.87,
                                      10.7, 7.0,  1.4, 4.0, 1.2, 2.0};
// Calls beyond half the last-level cache (strided_prefetch_pays, cache.h), where the taps
// prefetch and stream: the first eight constants are the medians of three fits by
// calibrate_cl.py --threads 2 --repeats 25 on calls of that size (single fits moved the
// taps / planes crossover between 7 and 12 taps; benchmarks/results/
// calibrate-cl-beyond-*.txt), the factors are kCostModel's but for ssl_planes_large (large
// planes measured no dearer than small ones there). The gathers are not chosen there
// (choose_cl_forward): they were never the fastest where measured.
inline constexpr CostModel kCostModelBeyondCache{0.73, 0.54, 5.28, 5.44, 1.31, 0.49,
                                                 6.27, 7.57, 1.4,  1.0,  1.2,  2.0};
inline constexpr int64_t kLargePlaneBytes = 32 << 10;

// The mean number of taps of a block of `lanes` channels (a 64-byte vector): the distinct
// offsets its channels read, over all of a channel's corners (SSL: the rounded shift;
// Active Shift: floor(w) + a for a in {0, 1}^D). weight: (C, D) contiguous float64.
inline double mean_taps(const double* weight, const Geometry& g, int64_t lanes, bool active) {
  if (g.channels == 0) return 0;
  const Shifts<double> shifts = channel_shifts<double>(weight, g, /*rounded=*/!active);
  const int corners = active ? corner_count(g) : 1;
  std::vector<Offset> keys;
  int64_t total = 0, blocks = 0;
  for (int64_t c0 = 0; c0 < g.channels; c0 += lanes, ++blocks) {
    keys.clear();
    for (int64_t c = c0; c < std::min(g.channels, c0 + lanes); ++c)
      for (int k = 0; k < corners; ++k) keys.push_back(corner_offset(shifts[c], k));
    std::sort(keys.begin(), keys.end());
    total += std::unique(keys.begin(), keys.end()) - keys.begin();
  }
  return static_cast<double>(total) / static_cast<double>(blocks);
}

// Estimated costs (the model's units) of the three channels-last forwards for a call whose
// blocks read `taps` offsets on average; beyond_cache: by kCostModelBeyondCache. The planes run one
// task per (sample, group of blocks) (planes_fit): with fewer tasks than threads the others wait,
// which the taps and the gathers (parallel over rows) do not.
struct ForwardCosts {
  double taps, gather, planes;
  // The planar kernel on contiguous copies of blocks (where the planes do not fit a task):
  // the in-cache planes' cost, plus (copies_factor - 1) times it for the two layout copies
  // through memory, times copy_waste where a block's channels fill less than a cache line
  // (ops.cpp, block_copy_waste).
  double copies;
};

inline ForwardCosts forward_costs(bool active, int ndim, double taps, const PlanesFit& fit,
                                  int64_t threads, double copy_waste = 1.0,
                                  bool beyond_cache = false) {
  const CostModel& m = beyond_cache ? kCostModelBeyondCache : kCostModel;
  const double idle = fit.tasks > 0 && fit.tasks < threads
                          ? static_cast<double>(threads) / static_cast<double>(fit.tasks)
                          : 1.0;
  if (!active) {
    const bool large = fit.spills || (ndim == 2 && fit.plane_bytes > kLargePlaneBytes);
    return {m.ssl_tap_base + m.ssl_tap * taps, m.ssl_gather,
            m.ssl_planes * (large ? m.ssl_planes_large : 1.0) * idle,
            m.ssl_planes * (1.0 + (m.copies_factor - 1.0) * copy_waste)};
  }
  const double planes = m.active_planes * (ndim == 3 ? m.active_planes_3d : 1.0);
  return {m.active_tap_base + m.active_tap * taps,
          m.active_gather_pair * static_cast<double>(1 << (ndim - 1)),
          planes * (fit.spills ? m.active_planes_spill : 1.0) * idle,
          planes * (1.0 + (m.copies_factor - 1.0) * copy_waste)};
}

}  // namespace torchshift2_cpu
