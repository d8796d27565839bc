// The instruction set the library is compiled for (build.py passes -march=native, so: the
// CPU that built it). Three builds exist, and some kernel choices differ between them
// (README.md, kernel selection):
//   TS2_AVX512  AVX-512 F and BW: 64-byte vectors, masked moves of every lane size, gathers.
//   TS2_AVX2    AVX2 and FMA without AVX-512: a 64-byte vector is two 32-byte halves; masked
//               moves and gathers exist for 4- and 8-byte lanes only, and gathers are slow.
//   neither     portable loops that the compiler vectorises as it can.
#pragma once

#if defined(__AVX512F__) && defined(__AVX512BW__)
#define TS2_AVX512 1
#elif defined(__AVX2__) && defined(__FMA__)
#define TS2_AVX2 1
#endif

namespace torchshift2_cpu {

// CPUs with AVX2 but not AVX-512: slower gathers, no masked moves of 1- and 2-byte lanes.
#if defined(TS2_AVX2)
constexpr bool kAvx2Only = true;
#else
constexpr bool kAvx2Only = false;
#endif

// The build's name in the kernel selection table.
#if defined(TS2_AVX512)
constexpr const char* kIsa = "avx512";
#elif defined(TS2_AVX2)
constexpr const char* kIsa = "avx2";
#else
constexpr const char* kIsa = "portable";
#endif

}  // namespace torchshift2_cpu
