#include "engine/model/core/moe/expert_gemm.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>

#include "engine/model/core/backends.h"
#include "engine/model/core/moe/expert_weight_grad_sink.h"
#include "kernels/grouped_gemm.h"

namespace ftd::engine {

namespace {

// The own kernels' tiles are 128 or 256 wide in the output columns and 64 deep in K: a LoRA
// adapter's rank-16 side (K or output columns) would waste most of each tile, so GEMMs with a
// side under this stay on at::_grouped_mm, whose heuristics pick narrow tiles.
constexpr int64_t kOwnGemmMinSide = 128;

// Whether backends.experts asks for the own kernel and the GEMM is wide enough for its tiles:
// `a` the left operand (its columns are K, or dW's rows), `b` the right one (its last dimension
// the output columns).
bool OwnBackendFor(const at::Tensor& a, const at::Tensor& b) {
  return CurrentExpertsBackend() == ExpertsBackend::kFtd && a.size(-1) >= kOwnGemmMinSide &&
         b.size(-1) >= kOwnGemmMinSide;
}

bool UseOwn(const at::Tensor& rows, const at::Tensor& w) {
  return OwnBackendFor(rows, w) && kernels::GroupedMmCudaSupports(rows, w);
}

struct ExpertGemmFunction : public torch::autograd::Function<ExpertGemmFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& rows, const at::Tensor& w,
                            const at::Tensor& offs) {
    ctx->save_for_backward({rows, w, offs});
    return ExpertGemm(rows, w, offs);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto s = ctx->get_saved_variables();
    const at::Tensor dy = grads[0].contiguous();
    at::Tensor drows, dw;
    if (ctx->needs_input_grad(0)) drows = ExpertGemm(dy, s[1].transpose(1, 2), s[2]);
    if (ctx->needs_input_grad(1)) dw = ExpertGemmWeightGrad(s[0], dy, s[2]);
    return {drows, dw, at::Tensor()};
  }
};

}  // namespace

bool OwnExpertGemmAvailable() {
  if (!at::hasCUDA()) return false;
  const auto bf = at::TensorOptions().dtype(at::kBFloat16).device(at::kCUDA);
  return kernels::GroupedMmCudaSupports(at::empty({8, 8}, bf), at::empty({1, 8, 8}, bf));
}

at::Tensor ExpertGemm(const at::Tensor& rows, const at::Tensor& w, const at::Tensor& offs) {
  return UseOwn(rows, w) ? kernels::GroupedMm(rows, w, offs) : at::_grouped_mm(rows, w, offs);
}

at::Tensor ExpertGemmWeightGrad(const at::Tensor& a, const at::Tensor& b, const at::Tensor& offs) {
  return OwnBackendFor(a, b) && kernels::GroupedMmWeightGradCudaSupports(a, b)
             ? kernels::GroupedMmWeightGrad(a, b, offs)
             : at::_grouped_mm(a.t(), b, offs);
}

bool ExpertWeightGradConsumed(const at::Tensor& weight, const at::Tensor& a, const at::Tensor& b,
                              const at::Tensor& offs) {
  if (!OwnBackendFor(a, b)) return false;
  ExpertWeightGradSink* sink = CurrentExpertWeightGradSink();
  return sink != nullptr && sink->Consume(weight, a, b, offs);
}

at::Tensor ExpertGemmDifferentiable(const at::Tensor& rows, const at::Tensor& w, const at::Tensor& offs) {
  const at::Tensor contiguous = rows.contiguous();
  if (!UseOwn(contiguous, w)) return at::_grouped_mm(rows, w, offs);
  return ExpertGemmFunction::apply(contiguous, w, offs);
}

}  // namespace ftd::engine
