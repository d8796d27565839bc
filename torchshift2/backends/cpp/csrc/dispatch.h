// From runtime values to template arguments: the one helper every kernel uses to turn a
// count (source rows, corners, element size) or a flag into a compile-time constant, and
// the element types of the kernels' dtypes.
//
//   dispatch_count<1, 2, 3, 4>(count, [&](auto k) { run<decltype(k)::value>(...); });
//   dispatch_bool(active, [&](auto kActive) { run<decltype(kActive)::value>(...); });
//
// A value outside the list is an internal error (the callers guarantee the range).
#pragma once

#include <c10/core/ScalarType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <type_traits>

namespace torchshift2_cpu {

// f(std::integral_constant<int, N>{}) for the N of Ns equal to n.
template <int... Ns, typename F>
inline void dispatch_count(int64_t n, F&& f) {
  const bool found = ((n == Ns && (f(std::integral_constant<int, Ns>{}), true)) || ...);
  TORCH_INTERNAL_ASSERT(found, "torchshift2: no kernel instantiation for the count ", n);
}

// f(std::true_type{}) or f(std::false_type{}).
template <typename F>
inline void dispatch_bool(bool b, F&& f) {
  if (b)
    f(std::true_type{});
  else
    f(std::false_type{});
}

// The types a dtype dispatch hands out: f(Type<T>{}), T = typename decltype(t)::type.
template <typename T>
struct Type {
  using type = T;
};

// f(Type<T>{}) for the T of Ts whose dtype is `dtype`; `kernel` names the caller in the
// internal error for any other dtype.
template <typename... Ts, typename F>
inline void dispatch_type(c10::ScalarType dtype, const char* kernel, F&& f) {
  const bool found =
      ((dtype == c10::CppTypeToScalarType<Ts>::value && (f(Type<Ts>{}), true)) || ...);
  TORCH_INTERNAL_ASSERT(found, "torchshift2: ", kernel, " has no instantiation for ", dtype);
}

// The SSL kernels move values without looking at them: one integer carrier per element
// size serves every dtype (floating, integer, bool, the int_repr of quantized tensors).
template <int E>
struct CarrierOf;
template <>
struct CarrierOf<1> {
  using type = uint8_t;
};
template <>
struct CarrierOf<2> {
  using type = int16_t;
};
template <>
struct CarrierOf<4> {
  using type = int32_t;
};
template <>
struct CarrierOf<8> {
  using type = int64_t;
};

// f(Type<T>{}) with T the carrier of `element_size` among Es.
template <int... Es, typename F>
inline void dispatch_carrier(int64_t element_size, F&& f) {
  dispatch_count<Es...>(element_size,
                        [&](auto e) { f(Type<typename CarrierOf<decltype(e)::value>::type>{}); });
}

}  // namespace torchshift2_cpu
