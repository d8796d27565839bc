// torchshift2 CPU: the op kernels (argument checks, output allocation, layout dispatch to
// the planar / channels-last kernels of shift.cpp and channels_last.cpp), the registrations of
// the private ops torchshift2_cpu::*, and the eager fast path: `shift_autograd`, the forward
// with a C++ autograd node, and `eager_shift` / `eager_shift_inplace`, which also take over
// the common case of the Python argument checks.
//
// Why a fast path: the public custom ops (torchshift2/ops.py) run through torch's Python
// custom-op and autograd wrappers, which cost 20-120 us per call here (more for big
// tensors: the wrappers' Python runs from caches the kernel has just streamed through).
// torchshift2.functional takes this path only for plain eager CPU tensors with the C++
// backend selected; compile, export, tracing, dispatch modes and tensor subclasses all see
// the custom ops. Both paths call the same kernels (forward / backward below).
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <cstdlib>
#include <string>
#include <tuple>
#include <vector>

namespace torchshift2_cpu {

// output_cache.cpp
void empty_cache();
std::vector<int64_t> cache_info();

namespace {

at::ScalarType carrier_type(int64_t element_size) {
  switch (element_size) {
    case 1: return at::kByte;
    case 2: return at::kShort;
    case 4: return at::kInt;
    case 8: return at::kLong;
    default: TORCH_CHECK(false, "input: unsupported element size ", element_size);
  }
}

bool channels_inner(const at::Tensor& t) {
  return t.size(1) > 1 && t.stride(1) == 1 && t.stride(t.dim() - 1) != 1;
}

// The argument checks every op shares; returns the weight as contiguous float64, the form
// channel_shifts reads (converted once per call).
at::Tensor check_common(const at::Tensor& input, const at::Tensor& weight) {
  TORCH_CHECK(input.device().is_cpu() && weight.device().is_cpu(),
              "torchshift2_cpu: expected CPU tensors, got input on ", input.device(),
              " and weight on ", weight.device());
  TORCH_CHECK(weight.dim() == 2 && weight.size(0) == input.size(1) &&
                  weight.size(1) == input.dim() - 2,
              "weight: expected shape (", input.size(1), ", ", input.dim() - 2, "), got ",
              weight.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(weight.scalar_type()),
                   "weight: expected a floating dtype, got ", weight.scalar_type());
  // SPEC §5: non-finite shifts are refused on CPU, before anything is allocated or read.
  const at::Tensor w = weight.to(at::kDouble).contiguous();
  const double* data = w.const_data_ptr<double>();
  for (int64_t i = 0; i < w.numel(); ++i)
    TORCH_CHECK_VALUE(std::isfinite(data[i]), "weight: expected finite values on CPU, got ",
                      data[i], " at [", i / std::max<int64_t>(1, w.size(1)), ", ",
                      i % std::max<int64_t>(1, w.size(1)), "]");
  return w;
}

void check_output(const at::Tensor& t, at::IntArrayRef sizes, at::ScalarType dtype,
                  const char* name) {
  TORCH_CHECK(t.sizes() == sizes && t.scalar_type() == dtype && t.device().is_cpu(), name,
              ": expected a CPU tensor of shape ", sizes, " and dtype ", dtype, ", got ",
              t.sizes(), " ", t.scalar_type());
}

std::vector<int64_t> output_sizes(const at::Tensor& input, const Geometry& g) {
  std::vector<int64_t> sizes{input.size(0), input.size(1)};
  const int64_t ndim = input.dim() - 2;
  for (int64_t d = 0; d < ndim; ++d) sizes.push_back(g.out_length[kSlots - ndim + d]);
  return sizes;
}

// Channels-innermost bfloat16 / half: the float kernels run on widened copies (cached blocks,
// channels innermost) and the result is rounded back by copy_ (nearest even, as the reduced
// kernels round their float sums). The reduced kernels read through per-element conversions
// in taps and per-lane loops: backward 3d 13-18 -> 2.9-3.3 ms, 2d_28 3.1-4.2 -> 1.8-1.9 ms,
// 2d_56 12-15 -> 9.9-10.4 ms (benchmarks/NOTES.md, v14).
bool widens(const at::Tensor& input) {
  return (input.scalar_type() == at::kBFloat16 || input.scalar_type() == at::kHalf) &&
         channels_inner(input);
}

at::Tensor widened(const at::Tensor& t) {
  at::Tensor w = cached_empty(t.sizes(), at::kFloat, /*channels_last=*/true);
  w.copy_(t);
  return w;
}

}  // namespace

// SPEC §3 into a new tensor from the output cache, contiguous or (channels_last) channels
// innermost, as torchshift2._spec.is_channels_last decides in Python.
at::Tensor forward(const at::Tensor& input_, const at::Tensor& weight, int64_t padding,
                   bool active, at::IntArrayRef crop, double fill, bool channels_last) {
  const at::Tensor weight64 = check_common(input_, weight);
  const Geometry g = geometry_of(input_, padding, crop);
  at::Tensor out = cached_empty(output_sizes(input_, g), input_.scalar_type(), channels_last);
  if (out.numel() == 0) return out;
  // Two layouts have kernels: channels innermost with every row (n, o0, o1) a W x C block
  // (when the output is channels-last too), and planes with a unit-stride last dim. Other
  // strides are copied into the nearer of the two first.
  const bool cl = channels_inner(input_) && channel_rows(out);
  at::Tensor input = input_;
  if (cl && !channel_rows(input)) input = channels_last_copy(input);
  if (!cl && input.size(-1) > 1 && input.stride(-1) != 1) input = input.contiguous();
  const Strides is = strides_of(input), os = strides_of(out);
  if (!active) {
    const auto shifts = channel_shifts<double>(weight64, g, /*rounded=*/true);
    const at::ScalarType carrier = carrier_type(input.element_size());
    AT_DISPATCH_INTEGRAL_TYPES(carrier, "torchshift2_ssl_forward", [&] {
      const scalar_t* src = static_cast<const scalar_t*>(input.const_data_ptr());
      scalar_t* dst = static_cast<scalar_t*>(out.data_ptr());
      // The bits of `fill` in input's dtype (0 is all-zero bits in every dtype).
      const scalar_t f =
          fill == 0 ? scalar_t(0)
                    : at::full({}, fill, input.options()).view(carrier).item<scalar_t>();
      if (cl)
        ssl_forward_channels_last_rows(src, dst, g, is, os, shifts, f);
      else
        ssl_forward_planes(src, dst, g, is, os, shifts, f);
    });
    return out;
  }
  TORCH_CHECK_TYPE(at::isFloatingType(input.scalar_type()),
                   "input: active=True needs a floating dtype, got ", input.scalar_type());
  // Forward: three spatial dims only (3d Active Shift forward 4.1 -> 1.6 ms; in 2D the
  // conversions cost what the float kernel saves: 2d_28 1.03 -> 1.12 ms, 2d_56 5.3 both).
  if (cl && widens(input) && input.dim() == 5) {
    out.copy_(forward(widened(input), weight, padding, active, crop, fill, channels_last));
    return out;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                  "torchshift2_active_forward", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const auto shifts = channel_shifts<opmath_t>(weight64, g, /*rounded=*/false);
    const scalar_t* src = input.const_data_ptr<scalar_t>();
    scalar_t* dst = out.data_ptr<scalar_t>();
    if (cl)
      active_forward_channels_last_rows(src, dst, g, is, os, shifts);
    else
      active_forward_planes(src, dst, g, is, os, shifts);
  });
  return out;
}

// SPEC §4: the backward's shifts: interpolation (floor + fraction, for grad_weight) and read
// (SSL: rounded; active: the same).
template <typename opmath_t>
std::pair<std::vector<ChannelShift<opmath_t>>, std::vector<ChannelShift<opmath_t>>>
backward_shifts(const at::Tensor& weight64, const Geometry& g, bool active) {
  auto interp = channel_shifts<opmath_t>(weight64, g, /*rounded=*/false);
  auto read = active ? interp : channel_shifts<opmath_t>(weight64, g, /*rounded=*/true);
  return {std::move(interp), std::move(read)};
}

// grad_weight from per-(n, c) plane partials (kSlots each): a serial fixed-order sum over
// the batch; slots of missing leading dims are dropped.
void reduce_plane_partials(const at::Tensor& partials, const Geometry& g, at::Tensor grad_weight) {
  const int64_t ndim = grad_weight.size(1);
  at::Tensor total = at::zeros({g.channels, ndim}, at::kDouble);
  const double* part = partials.const_data_ptr<double>();
  double* sum = total.data_ptr<double>();
  for (int64_t n = 0; n < g.batch; ++n)
    for (int64_t c = 0; c < g.channels; ++c)
      for (int64_t d = 0; d < ndim; ++d)
        sum[c * ndim + d] += part[(n * g.channels + c) * kSlots + kSlots - ndim + d];
  grad_weight.copy_(total);
}

// SPEC §4: (grad_input, grad_weight); grad_input from the output cache in the layout that
// channels_last names (see forward).
std::tuple<at::Tensor, at::Tensor> backward(const at::Tensor& grad_output_,
                                            const at::Tensor& input_, const at::Tensor& weight,
                                            int64_t padding, bool active, at::IntArrayRef crop,
                                            bool channels_last) {
  const at::Tensor weight64 = check_common(input_, weight);
  TORCH_CHECK_TYPE(at::isFloatingType(input_.scalar_type()),
                   "input: gradients need a floating dtype, got ", input_.scalar_type());
  const Geometry g = geometry_of(input_, padding, crop);
  check_output(grad_output_, output_sizes(input_, g), input_.scalar_type(), "grad_output");
  at::Tensor grad_input = cached_empty(input_.sizes(), input_.scalar_type(), channels_last);
  at::Tensor grad_weight = at::empty(weight.sizes(), weight.options());
  if (input_.numel() == 0 || grad_output_.numel() == 0) {
    grad_input.zero_();
    grad_weight.zero_();
    return {grad_input, grad_weight};
  }
  if (widens(input_)) {
    const auto [wide_grad_input, wide_grad_weight] =
        backward(widened(grad_output_), widened(input_), weight, padding, active, crop,
                 channels_last);
    grad_input.copy_(wide_grad_input);
    return {grad_input, wide_grad_weight};
  }
  if (channels_inner(input_)) {
    // Channels-last kernel: rows of input and grad_output must be W x C blocks.
    const at::Tensor input = channel_rows(input_) ? input_ : channels_last_copy(input_);
    const at::Tensor grad_output =
        channel_rows(grad_output_) ? grad_output_ : channels_last_copy(grad_output_);
    at::Tensor cl_grad = grad_input.stride(1) == 1 ? grad_input : channels_last_empty(input);
    const Strides gos = strides_of(grad_output), is = strides_of(input), gis = strides_of(cl_grad);
    // Through L2-resident planes where that is faster (through_planes).
    if ((input.scalar_type() == at::kFloat && through_planes<float>(g, is, gos, &gis)) ||
        (input.scalar_type() == at::kDouble && through_planes<double>(g, is, gos, &gis))) {
      at::Tensor partials = at::empty({g.batch, g.channels, kSlots}, at::kDouble);
      AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "torchshift2_backward_transposed", [&] {
        const auto [interp_shifts, read_shifts] = backward_shifts<scalar_t>(weight64, g, active);
        backward_transposed(grad_output.const_data_ptr<scalar_t>(),
                            input.const_data_ptr<scalar_t>(), cl_grad.data_ptr<scalar_t>(),
                            partials.data_ptr<double>(), g, gos, is, gis, active, read_shifts,
                            interp_shifts);
      });
      if (!cl_grad.is_same(grad_input)) grad_input.copy_(cl_grad);
      reduce_plane_partials(partials, g, grad_weight);
      return {grad_input, grad_weight};
    }
    const int64_t corners = int64_t(2) << (input.dim() - 3);
    // Gathers (float / double, 32-bit indices) keep grad_weight partials per chunk of rows;
    // the other kernel per sample.
    const bool gathers = (input.scalar_type() == at::kFloat || input.scalar_type() == at::kDouble) &&
                         gather_indexable(g, is) && gather_indexable(g, gos) &&
                         gather_indexable(g, gis);
    const int64_t rows = std::max(g.length[0] * g.length[1], g.out_length[0] * g.out_length[1]);
    const int64_t chunks = gathers ? (rows + kChunkRows - 1) / kChunkRows : 1;
    at::Tensor partials = at::empty({g.batch * chunks, g.channels, corners}, at::kDouble);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                    "torchshift2_backward_cl", [&] {
      using opmath_t = at::opmath_type<scalar_t>;
      const auto [interp_shifts, read_shifts] = backward_shifts<opmath_t>(weight64, g, active);
      backward_channels_last(grad_output.const_data_ptr<scalar_t>(),
                             input.const_data_ptr<scalar_t>(), cl_grad.data_ptr<scalar_t>(),
                             partials.data_ptr<double>(), g, gos, is, gis, active, read_shifts,
                             interp_shifts, gathers, chunks);
    });
    if (!cl_grad.is_same(grad_input)) grad_input.copy_(cl_grad);
    combine_corner_partials(partials.const_data_ptr<double>(), g.batch * chunks, weight,
                            grad_weight);
    return {grad_input, grad_weight};
  }
  // The plane kernel wants each (n, c) plane dense: channels-last and other layouts go
  // through planar copies, which costs less than strided walks over every plane.
  const at::Tensor input = input_.contiguous();
  const at::Tensor grad_output = grad_output_.contiguous();
  at::Tensor planar_grad = grad_input.is_contiguous() ? grad_input : at::empty_like(input);
  const Strides gos = strides_of(grad_output), is = strides_of(input), gis = strides_of(planar_grad);
  at::Tensor partials = at::empty({g.batch, g.channels, kSlots}, at::kDouble);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                  "torchshift2_backward", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const auto [interp_shifts, read_shifts] = backward_shifts<opmath_t>(weight64, g, active);
    backward_planes(grad_output.const_data_ptr<scalar_t>(), input.const_data_ptr<scalar_t>(),
                    planar_grad.data_ptr<scalar_t>(), partials.data_ptr<double>(), g, gos, is,
                    gis, active, read_shifts, interp_shifts);
  });
  if (!planar_grad.is_same(grad_input)) grad_input.copy_(planar_grad);
  reduce_plane_partials(partials, g, grad_weight);
  return {grad_input, grad_weight};
}

void shift_inplace(at::Tensor input, const at::Tensor& weight, int64_t padding) {
  const at::Tensor weight64 = check_common(input, weight);
  const int64_t ndim = input.dim() - 2;
  const std::vector<int64_t> no_crop(2 * std::max<int64_t>(ndim, 0), 0);
  const Geometry g = geometry_of(input, padding, no_crop);
  TORCH_CHECK(input.is_non_overlapping_and_dense(),
              "input: shifting in place needs a dense tensor without overlapping memory");
  if (input.numel() == 0) return;
  const auto shifts = channel_shifts<double>(weight64, g, /*rounded=*/true);
  const at::ScalarType carrier = carrier_type(input.element_size());
  const Strides st = strides_of(input);
  AT_DISPATCH_INTEGRAL_TYPES(carrier, "torchshift2_shift_inplace", [&] {
    ssl_shift_inplace(static_cast<scalar_t*>(input.data_ptr()), g, st, shifts, scalar_t(0));
  });
}


namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct ShiftFunction : public torch::autograd::Function<ShiftFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input,
                            const at::Tensor& weight, const std::string& padding,
                            int64_t padding_code, bool active, std::vector<int64_t> crop,
                            bool channels_last) {
    at::Tensor out;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      out = torchshift2_cpu::forward(input, weight, padding_code, active, crop, 0.0,
                                     channels_last);
    }
    ctx->save_for_backward({input, weight});
    ctx->saved_data["padding"] = padding;
    ctx->saved_data["padding_code"] = padding_code;
    ctx->saved_data["active"] = active;
    ctx->saved_data["crop"] = crop;
    ctx->saved_data["channels_last"] = channels_last;
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& input = saved[0];
    const at::Tensor& weight = saved[1];
    const bool active = ctx->saved_data["active"].toBool();
    const std::vector<int64_t> crop = ctx->saved_data["crop"].toIntVector();
    at::Tensor grad_input, grad_weight;
    if (at::GradMode::is_enabled()) {
      // create_graph=True: go through the public op, whose own backward refuses double
      // backward with a clear error (SPEC §4), instead of returning gradients that would
      // silently have no graph.
      static auto op =
          c10::Dispatcher::singleton()
              .findSchemaOrThrow("torchshift2::shift_backward", "")
              .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                        const at::Tensor&, c10::string_view,
                                                        bool, at::IntArrayRef)>();
      std::tie(grad_input, grad_weight) =
          op.call(grads[0], input, weight, ctx->saved_data["padding"].toStringRef(), active,
                  crop);
    } else {
      std::tie(grad_input, grad_weight) = torchshift2_cpu::backward(
          grads[0], input, weight, ctx->saved_data["padding_code"].toInt(), active, crop,
          ctx->saved_data["channels_last"].toBool());
    }
    return {ctx->needs_input_grad(0) ? grad_input : at::Tensor(),
            ctx->needs_input_grad(1) ? grad_weight : at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor shift_autograd(const at::Tensor& input, const at::Tensor& weight,
                          c10::string_view padding, int64_t padding_code, bool active,
                          at::IntArrayRef crop, bool channels_last) {
  return ShiftFunction::apply(input, weight, std::string(padding), padding_code, active,
                              crop.vec(), channels_last);
}

// TORCHSHIFT2_BACKEND as torchshift2.backend.selected_backend reads it (Python's os.environ
// writes through to the C environment): unset, empty, "auto" or "cpp" select this backend
// on CPU. An unknown name is not accepted here; the full path reports it.
bool environment_selects_cpp() {
  const char* value = std::getenv("TORCHSHIFT2_BACKEND");
  if (value == nullptr) return true;
  const std::string text(value);
  const char* space = " \t\n\r\f\v";
  const size_t first = text.find_first_not_of(space);
  if (first == std::string::npos) return true;
  const std::string name = text.substr(first, text.find_last_not_of(space) - first + 1);
  return name == "auto" || name == "cpp";
}

// The part of torchshift2.functional.check_shift_args that the eager entry points accept
// without Python: a floating CPU input of the expected dims (ndim spatial dims, or any of
// 1-3 for ndim < 0), not quantized, and a floating (C, D) CPU weight.
bool eager_accepts(const at::Tensor& input, const at::Tensor& weight, int64_t ndim) {
  const int64_t dim = input.dim();
  return environment_selects_cpp() && (ndim < 0 ? dim >= 3 && dim <= 5 : dim == ndim + 2) &&
         input.device().is_cpu() && weight.device().is_cpu() && !input.is_quantized() &&
         at::isFloatingType(input.scalar_type()) && at::isFloatingType(weight.scalar_type()) &&
         weight.dim() == 2 && weight.size(0) == input.size(1) && weight.size(1) == dim - 2;
}

// torchshift2.ops.eager_shift without crop: forward, or with a C++ autograd node when a
// gradient is wanted. An undefined result (None in Python) declines the call, which then
// takes the full Python path (and its error messages). Calling the kernels directly also
// leaves out the Python cost per call, 20 us warm and ~140 us when the caches are cold
// (benchmarks/NOTES.md, v10).
at::Tensor eager_shift(const at::Tensor& input, const at::Tensor& weight, c10::string_view padding,
                       int64_t padding_code, bool active, int64_t ndim, bool channels_last) {
  if (!eager_accepts(input, weight, ndim)) return at::Tensor();
  const std::vector<int64_t> crop(2 * (input.dim() - 2), 0);
  if (at::GradMode::is_enabled() && (input.requires_grad() || weight.requires_grad()))
    return shift_autograd(input, weight, padding, padding_code, active, crop, channels_last);
  return forward(input, weight, padding_code, active, crop, 0.0, channels_last);
}

// torchshift2.ops.eager_shift_: true when done; false declines (see eager_shift), which also
// covers the calls the full path refuses (gradients wanted) and empty tensors.
bool eager_shift_inplace(at::Tensor input, const at::Tensor& weight, int64_t padding_code) {
  if (!eager_accepts(input, weight, -1) || input.numel() == 0 ||
      (at::GradMode::is_enabled() && (input.requires_grad() || weight.requires_grad())))
    return false;
  shift_inplace(input, weight, padding_code);
  // What the dispatcher's autograd fallback does for a mutated argument.
  torch::autograd::impl::bump_version(input);
  return true;
}

}  // namespace

TORCH_LIBRARY(torchshift2_cpu, m) {
  m.def("forward(Tensor input, Tensor weight, int padding, bool active, int[] crop, float fill, "
        "bool channels_last) -> Tensor");
  m.def("backward(Tensor grad_output, Tensor input, Tensor weight, int padding, bool active, "
        "int[] crop, bool channels_last) -> (Tensor, Tensor)");
  m.def("shift_inplace(Tensor(a!) input, Tensor weight, int padding) -> ()");
  // padding twice: the code for the kernels, the name for torchshift2::shift_backward.
  m.def("shift_autograd(Tensor input, Tensor weight, str padding, int padding_code, "
        "bool active, int[] crop, bool channels_last) -> Tensor");
  m.def("eager_shift(Tensor input, Tensor weight, str padding, int padding_code, bool active, "
        "int ndim, bool channels_last) -> Tensor");
  m.def("eager_shift_inplace(Tensor(a!) input, Tensor weight, int padding_code) -> bool");
  m.def("empty_cache() -> ()");
  m.def("cache_info() -> int[]");
}

TORCH_LIBRARY_IMPL(torchshift2_cpu, CPU, m) {
  m.impl("forward", &forward);
  m.impl("backward", &backward);
  m.impl("shift_inplace", &shift_inplace);
}

TORCH_LIBRARY_IMPL(torchshift2_cpu, CompositeImplicitAutograd, m) {
  m.impl("shift_autograd", &shift_autograd);
  m.impl("eager_shift", &eager_shift);
  m.impl("eager_shift_inplace", &eager_shift_inplace);
}

TORCH_LIBRARY_IMPL(torchshift2_cpu, CatchAll, m) {
  m.impl("empty_cache", &empty_cache);
  m.impl("cache_info", &cache_info);
}

}  // namespace torchshift2_cpu
