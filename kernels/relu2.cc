#include "kernels/relu2.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>

namespace ftd::kernels {

namespace {
// The math dtype of the references: fp32 for 16-bit inputs (as the kernels), else the input's.
at::ScalarType MathType(const at::Tensor& t) { return at::promote_types(t.scalar_type(), at::kFloat); }
}  // namespace

at::Tensor WeightedRelu2ForwardReference(const at::Tensor& h, const at::Tensor& w) {
  const auto m = MathType(h);
  return (at::relu(h.to(m)).square() * w.to(m).unsqueeze(-1)).to(h.scalar_type());
}

std::tuple<at::Tensor, at::Tensor> WeightedRelu2BackwardReference(const at::Tensor& dout, const at::Tensor& h,
                                                                  const at::Tensor& w) {
  const auto m = MathType(h);
  at::Tensor r = at::relu(h.to(m)), d = dout.to(m);
  at::Tensor dh = 2 * r * d * w.to(m).unsqueeze(-1);
  at::Tensor dw = (d * r.square()).sum(-1);
  return {dh.to(h.scalar_type()), dw.to(w.scalar_type())};
}

namespace {

struct WeightedRelu2Function : public torch::autograd::Function<WeightedRelu2Function> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& h, const at::Tensor& w) {
    ctx->save_for_backward({h, w});
#ifdef FTD_WITH_CUDA
    if (h.is_cuda()) return WeightedRelu2ForwardCuda(h, w);
#endif
    return WeightedRelu2ForwardReference(h, w);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto saved = ctx->get_saved_variables();
    at::Tensor dout = grads[0].contiguous();
#ifdef FTD_WITH_CUDA
    if (dout.is_cuda()) {
      auto [dh, dw] = WeightedRelu2BackwardCuda(dout, saved[0], saved[1]);
      return {dh, dw};
    }
#endif
    auto [dh, dw] = WeightedRelu2BackwardReference(dout, saved[0], saved[1]);
    return {dh, dw};
  }
};

}  // namespace

at::Tensor WeightedRelu2(const at::Tensor& h, const at::Tensor& w) {
  return WeightedRelu2Function::apply(h.contiguous(), w.contiguous());
}

#ifndef FTD_WITH_CUDA
// CPU-only builds (FTD_CUDA=OFF): the raw launchers exist so that callers and the CUDA tests
// (which skip without a GPU) link; callers check the kernel applies first.
at::Tensor WeightedRelu2ForwardCuda(const at::Tensor&, const at::Tensor&) {
  TORCH_CHECK(false, "WeightedRelu2ForwardCuda: this build has no CUDA kernels (FTD_CUDA=OFF)");
}
std::tuple<at::Tensor, at::Tensor> WeightedRelu2BackwardCuda(const at::Tensor&, const at::Tensor&, const at::Tensor&) {
  TORCH_CHECK(false, "WeightedRelu2BackwardCuda: this build has no CUDA kernels (FTD_CUDA=OFF)");
}
#endif

}  // namespace ftd::kernels
