#include "kernels/swiglu.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>

namespace ftd::kernels {

namespace {
// The math dtype of the references: fp32 for 16-bit inputs (as the kernels), else the input's.
at::ScalarType MathType(const at::Tensor& t) { return at::promote_types(t.scalar_type(), at::kFloat); }
}  // namespace

at::Tensor WeightedSwigluForwardReference(const at::Tensor& h, const at::Tensor& w) {
  const int64_t F = h.size(-1) / 2;
  const auto m = MathType(h);
  at::Tensor g = h.narrow(-1, 0, F).to(m), u = h.narrow(-1, F, F).to(m);
  return (at::silu(g) * u * w.to(m).unsqueeze(-1)).to(h.scalar_type());
}

std::tuple<at::Tensor, at::Tensor> WeightedSwigluBackwardReference(const at::Tensor& dout, const at::Tensor& h,
                                                                   const at::Tensor& w) {
  const int64_t F = h.size(-1) / 2;
  const auto m = MathType(h);
  at::Tensor g = h.narrow(-1, 0, F).to(m), u = h.narrow(-1, F, F).to(m);
  at::Tensor d = dout.to(m), wf = w.to(m).unsqueeze(-1);
  at::Tensor s = at::sigmoid(g);
  at::Tensor silu = g * s;
  at::Tensor dg = d * u * wf * s * (1 + g * (1 - s));
  at::Tensor du = d * silu * wf;
  at::Tensor dw = (d * silu * u).sum(-1);
  return {at::cat({dg, du}, -1).to(h.scalar_type()), dw.to(w.scalar_type())};
}

namespace {

struct WeightedSwigluFunction : public torch::autograd::Function<WeightedSwigluFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& h, const at::Tensor& w) {
    ctx->save_for_backward({h, w});
#ifdef FTD_WITH_CUDA
    if (h.is_cuda()) return WeightedSwigluForwardCuda(h, w);
#endif
    return WeightedSwigluForwardReference(h, w);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto saved = ctx->get_saved_variables();
    at::Tensor dout = grads[0].contiguous();
#ifdef FTD_WITH_CUDA
    if (dout.is_cuda()) {
      auto [dh, dw] = WeightedSwigluBackwardCuda(dout, saved[0], saved[1]);
      return {dh, dw};
    }
#endif
    auto [dh, dw] = WeightedSwigluBackwardReference(dout, saved[0], saved[1]);
    return {dh, dw};
  }
};

}  // namespace

at::Tensor WeightedSwiglu(const at::Tensor& h, const at::Tensor& w) {
  return WeightedSwigluFunction::apply(h.contiguous(), w.contiguous());
}

#ifndef FTD_WITH_CUDA
// CPU-only builds (FTD_CUDA=OFF): the raw launchers exist so that callers and the CUDA tests
// (which skip without a GPU) link; callers check the kernel applies first.
at::Tensor WeightedSwigluForwardCuda(const at::Tensor&, const at::Tensor&) {
  TORCH_CHECK(false, "WeightedSwigluForwardCuda: this build has no CUDA kernels (FTD_CUDA=OFF)");
}
std::tuple<at::Tensor, at::Tensor> WeightedSwigluBackwardCuda(const at::Tensor&, const at::Tensor&, const at::Tensor&) {
  TORCH_CHECK(false, "WeightedSwigluBackwardCuda: this build has no CUDA kernels (FTD_CUDA=OFF)");
}
#endif

}  // namespace ftd::kernels
