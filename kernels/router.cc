#include "kernels/router.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>

namespace ftd::kernels {

namespace {

at::Tensor Scores(const at::Tensor& logits, RouterScore score) {
  return score == RouterScore::kSoftmax ? at::softmax(logits, -1) : at::sigmoid(logits);
}

void CheckRouterInputs(const at::Tensor& logits, const at::Tensor& bias, const RouterOptions& o) {
  TORCH_CHECK(logits.dim() == 2 && logits.scalar_type() == at::kFloat, "RouterTopK: logits must be fp32 [T, E], got ",
              logits.scalar_type(), " ", logits.sizes());
  TORCH_CHECK(o.top_k >= 1 && o.top_k <= logits.size(1), "RouterTopK: top_k must be in [1, E = ", logits.size(1),
              "], got ", o.top_k);
  if (bias.defined()) {
    TORCH_CHECK(bias.dim() == 1 && bias.size(0) == logits.size(1) && bias.scalar_type() == at::kFloat,
                "RouterTopK: bias must be fp32 [E]");
  }
}

}  // namespace

RouterOutput RouterTopKReference(const at::Tensor& logits, const at::Tensor& bias, const RouterOptions& o) {
  CheckRouterInputs(logits, bias, o);
  at::Tensor scores = Scores(logits, o.score);
  at::Tensor selection = bias.defined() ? scores + bias : scores;
  // A stable descending sort: among equal scores the lower expert index comes first.
  at::Tensor experts = std::get<1>(selection.sort(/*stable=*/true, /*dim=*/-1, /*descending=*/true))
                           .narrow(-1, 0, o.top_k)
                           .contiguous();
  at::Tensor chosen = scores.gather(-1, experts);
  if (o.renormalize) chosen = chosen / chosen.sum(-1, /*keepdim=*/true);
  if (o.scale != 1.0) chosen = chosen * o.scale;
  RouterOutput r;
  r.weights = chosen.to(o.weight_dtype);
  r.experts = experts;
  r.counts = at::bincount(experts.reshape({-1}), {}, logits.size(1));
  return r;
}

at::Tensor RouterTopKBackwardReference(const at::Tensor& dweights, const at::Tensor& logits, const at::Tensor& experts,
                                       const RouterOptions& o) {
  at::Tensor p = Scores(logits, o.score);
  at::Tensor v = p.gather(-1, experts);  // [T, k] chosen scores
  at::Tensor dw = dweights.to(p.scalar_type());  // p is fp32 or wider (double in tests)
  at::Tensor dv;
  if (o.renormalize) {
    at::Tensor z = v.sum(-1, /*keepdim=*/true);
    dv = o.scale / z * (dw - (dw * v).sum(-1, /*keepdim=*/true) / z);
  } else {
    dv = dw * o.scale;
  }
  at::Tensor dp = at::zeros_like(p).scatter_(-1, experts, dv);
  if (o.score == RouterScore::kSoftmax) return p * (dp - (dv * v).sum(-1, /*keepdim=*/true));
  return dp * p * (1 - p);
}

namespace {

struct RouterTopKFunction : public torch::autograd::Function<RouterTopKFunction> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& logits,
                                                const at::Tensor& bias, int64_t top_k, int64_t score,
                                                bool renormalize, double scale, int64_t weight_dtype) {
    RouterOptions o{top_k, static_cast<RouterScore>(score), renormalize, scale,
                    static_cast<at::ScalarType>(weight_dtype)};
    // An empty bias stands for "no bias": autograd cannot take an undefined tensor as an input.
    const at::Tensor b = bias.numel() == 0 ? at::Tensor() : bias;
    RouterOutput r;
#ifdef FTD_WITH_CUDA
    if (logits.is_cuda()) r = RouterTopKForwardCuda(logits, b, o);
#endif
    if (!r.weights.defined()) r = RouterTopKReference(logits, b, o);
    ctx->save_for_backward({logits, r.experts});
    ctx->saved_data["top_k"] = top_k;
    ctx->saved_data["score"] = score;
    ctx->saved_data["renormalize"] = renormalize;
    ctx->saved_data["scale"] = scale;
    ctx->mark_non_differentiable({r.experts, r.counts});
    return {r.weights, r.experts, r.counts};
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto saved = ctx->get_saved_variables();
    RouterOptions o;
    o.top_k = ctx->saved_data["top_k"].toInt();
    o.score = static_cast<RouterScore>(ctx->saved_data["score"].toInt());
    o.renormalize = ctx->saved_data["renormalize"].toBool();
    o.scale = ctx->saved_data["scale"].toDouble();
    at::Tensor dlogits;
    if (grads[0].defined()) {
      at::Tensor dw = grads[0].contiguous();
#ifdef FTD_WITH_CUDA
      if (dw.is_cuda()) dlogits = RouterTopKBackwardCuda(dw, saved[0], saved[1], o);
#endif
      if (!dlogits.defined()) dlogits = RouterTopKBackwardReference(dw, saved[0], saved[1], o);
    }
    return {dlogits, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

RouterOutput RouterTopK(const at::Tensor& logits, const at::Tensor& bias, const RouterOptions& o) {
  CheckRouterInputs(logits, bias, o);
  auto outs = RouterTopKFunction::apply(logits.contiguous(),
                                        bias.defined() ? bias.contiguous() : at::empty({0}, logits.options()), o.top_k,
                                        static_cast<int64_t>(o.score), o.renormalize, o.scale,
                                        static_cast<int64_t>(o.weight_dtype));
  return {outs[0], outs[1], outs[2]};
}

#ifndef FTD_WITH_CUDA
// CPU-only builds (FTD_CUDA=OFF): the raw launchers exist so that callers and the CUDA tests
// (which skip without a GPU) link; callers check the kernel applies first.
RouterOutput RouterTopKForwardCuda(const at::Tensor&, const at::Tensor&, const RouterOptions&) {
  TORCH_CHECK(false, "RouterTopKForwardCuda: this build has no CUDA kernels (FTD_CUDA=OFF)");
}
at::Tensor RouterTopKBackwardCuda(const at::Tensor&, const at::Tensor&, const at::Tensor&, const RouterOptions&) {
  TORCH_CHECK(false, "RouterTopKBackwardCuda: this build has no CUDA kernels (FTD_CUDA=OFF)");
}
#endif

}  // namespace ftd::kernels
