// The eager entry: `shift_autograd`, the forward with a C++ autograd node, and
// `eager_shift` / `eager_shift_inplace`, which also take over the common case of the Python
// argument checks (torchshift2._eager calls them).
//
// Why: the public custom ops (torchshift2/ops.py) run through torch's Python custom-op and
// autograd wrappers, which cost more per call than the kernel on small tensors
// (benchmarks/archive/NOTES.md v10). torchshift2.functional takes this path only for plain eager
// CPU tensors with the C++ backend selected; compile, export, tracing, dispatch modes and
// tensor subclasses all see the custom ops. Both paths call the same op kernels (ops.h).
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <cstdlib>
#include <string>
#include <tuple>
#include <vector>

#include "ops.h"

namespace torchshift2_cpu {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct ShiftFunction : public torch::autograd::Function<ShiftFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& weight,
                            const std::string& padding, int64_t padding_code, bool active,
                            std::vector<int64_t> crop, bool channels_last) {
    at::Tensor out;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      out = torchshift2_cpu::forward(input, weight, padding_code, active, crop, 0.0, channels_last);
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
      static auto op = c10::Dispatcher::singleton()
                           .findSchemaOrThrow("torchshift2::shift_backward", "")
                           .typed<std::tuple<at::Tensor, at::Tensor>(
                               const at::Tensor&, const at::Tensor&, const at::Tensor&,
                               c10::string_view, bool, at::IntArrayRef, std::array<bool, 2>)>();
      std::tie(grad_input, grad_weight) =
          op.call(grads[0], input, weight, ctx->saved_data["padding"].toStringRef(), active, crop,
                  {ctx->needs_input_grad(0), ctx->needs_input_grad(1)});
    } else {
      std::tie(grad_input, grad_weight) = torchshift2_cpu::backward(
          grads[0], input, weight, ctx->saved_data["padding_code"].toInt(), active, crop,
          ctx->saved_data["channels_last"].toBool(),
          {ctx->needs_input_grad(0), ctx->needs_input_grad(1)});
    }
    return {ctx->needs_input_grad(0) ? grad_input : at::Tensor(),
            ctx->needs_input_grad(1) ? grad_weight : at::Tensor(),
            at::Tensor(),
            at::Tensor(),
            at::Tensor(),
            at::Tensor(),
            at::Tensor()};
  }
};

at::Tensor shift_autograd(const at::Tensor& input, const at::Tensor& weight,
                          c10::string_view padding, int64_t padding_code, bool active,
                          at::IntArrayRef crop, bool channels_last) {
  return ShiftFunction::apply(input, weight, std::string(padding), padding_code, active, crop.vec(),
                              channels_last);
}

// TORCHSHIFT2_BACKEND as torchshift2.backends.selected_backend reads it (Python's os.environ
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
// 1-3 for ndim < 0), not quantized, and a floating (k·C, D) CPU weight.
bool eager_accepts(const at::Tensor& input, const at::Tensor& weight, int64_t ndim) {
  const int64_t dim = input.dim();
  return environment_selects_cpp() && (ndim < 0 ? dim >= 3 && dim <= 5 : dim == ndim + 2) &&
         input.device().is_cpu() && weight.device().is_cpu() && !input.is_quantized() &&
         at::isFloatingType(input.scalar_type()) && at::isFloatingType(weight.scalar_type()) &&
         weight.dim() == 2 && weight.size(1) == dim - 2 && input.size(1) > 0 &&
         weight.size(0) > 0 && weight.size(0) % input.size(1) == 0;
}

// torchshift2.ops.eager_shift without crop: forward, or with a C++ autograd node when a
// gradient is wanted. An undefined result (None in Python) declines the call, which then
// takes the full Python path (and its error messages). Calling the kernels directly also
// leaves out the Python cost per call (benchmarks/archive/NOTES.md, v10).
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
  if (!eager_accepts(input, weight, -1) || weight.size(0) != input.size(1) || input.numel() == 0 ||
      (at::GradMode::is_enabled() && (input.requires_grad() || weight.requires_grad())))
    return false;
  shift_inplace(input, weight, padding_code);
  // What the dispatcher's autograd fallback does for a mutated argument.
  torch::autograd::impl::bump_version(input);
  return true;
}

}  // namespace

TORCH_LIBRARY_IMPL(torchshift2_cpu, CompositeImplicitAutograd, m) {
  m.impl("shift_autograd", &shift_autograd);
  m.impl("eager_shift", &eager_shift);
  m.impl("eager_shift_inplace", &eager_shift_inplace);
}

}  // namespace torchshift2_cpu
