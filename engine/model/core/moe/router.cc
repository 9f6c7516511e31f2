#include "engine/model/core/moe/router.h"

#include <algorithm>
#include <limits>

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include "kernels/kernels_available.h"
#include "kernels/router.h"

namespace ftd::engine {

using kernels::OnKernelDevice;

namespace {

// Whether the group limit removes candidates at all.
bool GroupLimited(const ModelConfig& c) { return c.n_group > 1 && c.topk_group < c.n_group; }

// HF DeepseekV3TopkRouter: groups ranked by the sum of their two best selection scores; the
// experts outside the topk_group best groups become -inf.
at::Tensor LimitToGroups(const at::Tensor& selection, const ModelConfig& c) {
  const int64_t T = selection.size(0), G = c.n_group, per_group = c.num_experts / G;
  at::Tensor group_scores = std::get<0>(selection.view({T, G, per_group}).topk(2, -1)).sum(-1);  // [T, G]
  at::Tensor group_index = std::get<1>(group_scores.topk(c.topk_group, -1));
  at::Tensor keep = at::zeros({T, G}, selection.options().dtype(at::kBool)).scatter_(1, group_index, true);
  keep = keep.unsqueeze(-1).expand({T, G, per_group}).reshape({T, c.num_experts});
  return selection.masked_fill(keep.logical_not(), -std::numeric_limits<float>::infinity());
}

}  // namespace

Routing Route(const at::Tensor& x, const at::Tensor& router_weight, const ModelConfig& c, GateMode gate,
              const at::Tensor& selection_bias, const at::Tensor& logit_bias) {
  const int64_t T = x.size(0), E = c.num_experts, k = c.num_experts_per_tok;
  Routing r;
  if (OnKernelDevice(x) && x.scalar_type() == at::kBFloat16 && router_weight.scalar_type() == at::kBFloat16) {
    // CUDA bf16: the logits GEMM in bf16 (fp32 accumulate) as HF's Qwen3-MoE gate, then fp32
    // for the scores; fp32 GEMMs of this shape ran on a SIMT path (1.9 ms a step at 4 layers).
    r.logits = at::linear(x, router_weight, logit_bias).to(at::kFloat);  // [T, E]
  } else {
    r.logits = at::linear(x.to(at::kFloat), router_weight.to(at::kFloat),
                          logit_bias.defined() ? logit_bias.to(at::kFloat) : logit_bias);  // [T, E]
  }
  if (gate == GateMode::kBalanced) {
    auto long_opts = x.options().dtype(at::kLong);
    at::Tensor t = at::arange(T, long_opts).unsqueeze(1);
    at::Tensor j = at::arange(k, long_opts).unsqueeze(0);
    r.experts = (t * k + j).remainder(E);
    r.weights = at::full({T, k}, 1.0 / static_cast<double>(k), x.options());
    return r;
  }
  const bool sigmoid = c.router_scoring == RouterScoring::kSigmoid;
  if (gate == GateMode::kReal && OnKernelDevice(x) && E <= 1024 && k <= 32 && !GroupLimited(c)) {
    // One kernel: scores, biased selection (ties to the lower expert), renormalisation,
    // scaling and the counts.
    kernels::RouterOptions o;
    o.top_k = k;
    o.score = sigmoid ? kernels::RouterScore::kSigmoid : kernels::RouterScore::kSoftmax;
    o.renormalize = c.norm_topk_prob;
    o.scale = c.routed_scaling_factor;
    o.weight_dtype = x.scalar_type();
    kernels::RouterOutput out = kernels::RouterTopK(r.logits, selection_bias, o);
    r.weights = out.weights;
    r.experts = out.experts;
    r.counts = out.counts;
    return r;
  }
  at::Tensor gate_logits = r.logits, excluded;
  if (gate == GateMode::kSkewFirstK || gate == GateMode::kSkewLowerHalf) {
    const int64_t allowed = gate == GateMode::kSkewFirstK ? k : std::max(k, E / 2);
    excluded = at::arange(E, x.options().dtype(at::kLong)).ge(allowed);
    gate_logits = r.logits.masked_fill(excluded, -std::numeric_limits<float>::infinity());
  }
  at::Tensor scores = sigmoid ? at::sigmoid(gate_logits) : at::softmax(gate_logits, -1);
  at::Tensor top_values, top_index;
  if (!selection_bias.defined() && !GroupLimited(c)) {
    std::tie(top_values, top_index) = scores.topk(k, -1);
  } else {
    {
      c10::NoGradGuard no_grad;  // the selection picks the experts; the weights come from the scores
      at::Tensor selection = selection_bias.defined() ? scores.detach() + selection_bias.to(at::kFloat) : scores.detach();
      if (GroupLimited(c)) selection = LimitToGroups(selection, c);
      if (excluded.defined()) selection = selection.masked_fill(excluded, -std::numeric_limits<float>::infinity());
      top_index = std::get<1>(selection.topk(k, -1));
    }
    top_values = scores.gather(1, top_index);
  }
  if (c.norm_topk_prob) {
    // DeepSeek-V3 (sigmoid) adds 1e-20 to the sum, as HF; Qwen3-MoE's softmax does not.
    at::Tensor sum = top_values.sum(-1, /*keepdim=*/true);
    top_values = top_values / (sigmoid ? sum + 1e-20 : sum);
  }
  if (c.routed_scaling_factor != 1.0) top_values = top_values * c.routed_scaling_factor;
  r.weights = top_values.to(x.scalar_type());
  r.experts = top_index;
  return r;
}

at::Tensor LoadBalancingLoss(const std::vector<at::Tensor>& router_logits, int64_t E, int64_t top_k) {
  at::Tensor tokens_per_expert;
  at::Tensor prob_per_expert;
  int64_t rows = 0;
  for (const at::Tensor& logits : router_logits) {
    at::Tensor probs = at::softmax(logits.to(at::kFloat), -1);
    at::Tensor selected = std::get<1>(probs.topk(top_k, -1));
    at::Tensor counts = at::zeros({E}, probs.options()).index_add(
        0, selected.reshape({-1}), at::ones({selected.numel()}, probs.options()));
    at::Tensor psum = probs.sum(0);
    tokens_per_expert = tokens_per_expert.defined() ? tokens_per_expert + counts : counts;
    prob_per_expert = prob_per_expert.defined() ? prob_per_expert + psum : psum;
    rows += logits.size(0);
  }
  if (!tokens_per_expert.defined()) return {};
  return (tokens_per_expert / rows * (prob_per_expert / rows)).sum() * E;
}

void UpdateSelectionBias(at::Tensor& bias, const at::Tensor& load, double speed) {
  c10::NoGradGuard no_grad;
  at::Tensor l = load.to(bias.device(), at::kFloat);
  bias.add_(at::sign(l.mean() - l) * speed);
}

}  // namespace ftd::engine
