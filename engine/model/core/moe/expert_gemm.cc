#include "engine/model/core/moe/expert_gemm.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>

#include "engine/model/core/backends.h"
#include "kernels/grouped_gemm.h"

namespace ftd::engine {

namespace {

// The own kernels' tiles are 128 or 256 wide in the output columns and 64 deep in K: a LoRA
// adapter's rank-16 side (K or output columns) would waste most of each tile, so GEMMs with a
// side under this stay on at::_grouped_mm, whose heuristics pick narrow tiles.
constexpr int64_t kOwnGemmMinSide = 128;

bool UseOwn(const at::Tensor& rows, const at::Tensor& w) {
  return CurrentExpertsBackend() == ExpertsBackend::kFtd && rows.size(-1) >= kOwnGemmMinSide &&
         w.size(-1) >= kOwnGemmMinSide && kernels::GroupedMmCudaSupports(rows, w);
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
  if (!UseOwn(rows, w)) return at::_grouped_mm(rows, w, offs);
  const auto operands =
      w.is_contiguous() ? kernels::GroupedOperands::kRowsTimesWeight : kernels::GroupedOperands::kRowsTimesWeightT;
  return kernels::GroupedMmCuda(rows, w, offs, kernels::DefaultGroupedGemmTile(operands));
}

at::Tensor ExpertGemmWeightGrad(const at::Tensor& a, const at::Tensor& b, const at::Tensor& offs) {
  if (CurrentExpertsBackend() == ExpertsBackend::kFtd && a.size(-1) >= kOwnGemmMinSide &&
      b.size(-1) >= kOwnGemmMinSide && kernels::GroupedMmWeightGradCudaSupports(a, b)) {
    return kernels::GroupedMmWeightGradCuda(a, b, offs,
                                            kernels::DefaultGroupedGemmTile(kernels::GroupedOperands::kWeightGrad));
  }
  return at::_grouped_mm(a.t(), b, offs);
}

at::Tensor ExpertGemmDifferentiable(const at::Tensor& rows, const at::Tensor& w, const at::Tensor& offs) {
  if (!UseOwn(rows.contiguous(), w)) return at::_grouped_mm(rows, w, offs);
  return ExpertGemmFunction::apply(rows.contiguous(), w, offs);
}

}  // namespace ftd::engine
