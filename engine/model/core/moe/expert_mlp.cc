#include "engine/model/core/moe/expert_mlp.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>

#include "engine/model/core/moe/expert_gemm.h"
#include "kernels/permute_rows.h"
#include "kernels/swiglu.h"

namespace ftd::engine {

#ifdef FTD_WITH_CUDA
namespace {

struct ExpertMlpFunction : public torch::autograd::Function<ExpertMlpFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& order,
                            const at::Tensor& inverse, const at::Tensor& row_weights, const at::Tensor& offs,
                            const at::Tensor& gate_up, const at::Tensor& down, int64_t k, bool save_activation) {
    at::Tensor rows = kernels::PermuteRowsCuda(x, order, k);                 // [N, H]
    at::Tensor h = ExpertGemm(rows, gate_up, offs);                          // [N, 2F]
    rows = at::Tensor();
    at::Tensor act = kernels::WeightedSwigluForwardCuda(h, row_weights);    // [N, F]
    at::Tensor y = ExpertGemm(act, down, offs);                              // [N, H]
    if (!save_activation) act = at::Tensor();
    ctx->save_for_backward({x, order, inverse, row_weights, offs, gate_up, down, h, act});
    ctx->saved_data["k"] = k;
    return kernels::UnpermuteSumCuda(y, inverse, k);                         // [T, H]
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto s = ctx->get_saved_variables();
    const at::Tensor &x = s[0], &order = s[1], &inverse = s[2], &w = s[3], &offs = s[4], &gate_up = s[5],
                     &down = s[6], &h = s[7];
    const int64_t k = ctx->saved_data["k"].toInt();
    at::Tensor dy = kernels::PermuteRowsCuda(grads[0].contiguous(), order, k);  // [N, H]
    at::Tensor d_down, d_gate_up, dx, dw;
    // Each weight's input gradient before its weight gradient: an optimizer that takes the weight
    // gradient (ExpertWeightGradConsumed) may step the weight in place right there.
    at::Tensor dact = ExpertGemm(dy, down.transpose(1, 2), offs);  // [N, F]
    {
      at::Tensor act = s[8].defined() ? s[8] : kernels::WeightedSwigluForwardCuda(h, w);  // saved or recomputed
      if (!ExpertWeightGradConsumed(down, act, dy, offs)) d_down = ExpertGemmWeightGrad(act, dy, offs);  // [E, F, H]
    }
    dy = at::Tensor();
    at::Tensor dh;
    std::tie(dh, dw) = kernels::WeightedSwigluBackwardCuda(dact, h, w);  // [N, 2F], [N]
    dact = at::Tensor();
    dx = kernels::UnpermuteSumCuda(ExpertGemm(dh, gate_up.transpose(1, 2), offs), inverse, k);  // [N, H] -> [T, H]
    {
      at::Tensor rows = kernels::PermuteRowsCuda(x, order, k);  // recomputed
      if (!ExpertWeightGradConsumed(gate_up, rows, dh, offs)) d_gate_up = ExpertGemmWeightGrad(rows, dh, offs);  // [E, H, 2F]
    }
    return {dx, at::Tensor(), at::Tensor(), dw, at::Tensor(), d_gate_up, d_down, at::Tensor(), at::Tensor()};
  }
};

}  // namespace
#endif

bool ExpertMlpRecomputeSupports(const at::Tensor& x, const at::Tensor& row_weights, const at::Tensor& gate_up) {
#ifdef FTD_WITH_CUDA
  return x.is_cuda() && x.scalar_type() == at::kBFloat16 && row_weights.scalar_type() == at::kBFloat16 &&
         gate_up.scalar_type() == at::kBFloat16;
#else
  (void)x;
  (void)row_weights;
  (void)gate_up;
  return false;
#endif
}

at::Tensor ExpertMlpRecompute(const at::Tensor& x, const at::Tensor& order, const at::Tensor& inverse,
                              const at::Tensor& row_weights, const at::Tensor& counts, const at::Tensor& gate_up,
                              const at::Tensor& down, int64_t k, bool save_activation) {
  TORCH_CHECK(ExpertMlpRecomputeSupports(x, row_weights, gate_up), "ExpertMlpRecompute: needs bf16 CUDA tensors");
#ifdef FTD_WITH_CUDA
  // offs[-1] == T*k: every row is covered (rows past offs[-1] would be left uninitialised).
  at::Tensor offs = counts.cumsum(0).to(at::kInt);
  return ExpertMlpFunction::apply(x.contiguous(), order, inverse, row_weights.contiguous(), offs, gate_up, down, k,
                                  save_activation);
#else
  (void)order;
  (void)inverse;
  (void)counts;
  (void)down;
  (void)k;
  (void)save_activation;
  return {};
#endif
}

}  // namespace ftd::engine
