#include "engine/model/moe.h"

#include <algorithm>
#include <limits>

#include <ATen/ATen.h>

#include "engine/model/expert_mlp.h"
#include "kernels/kernels_available.h"
#include "kernels/expert_sort.h"
#include "kernels/permute_rows.h"
#include "kernels/router.h"
#include "kernels/swiglu.h"

namespace ftd::engine {

using kernels::OnKernelDevice;

Routing Route(const at::Tensor& x, const at::Tensor& router_weight, const ModelConfig& c, GateMode gate) {
  const int64_t T = x.size(0), E = c.num_experts, k = c.num_experts_per_tok;
  Routing r;
  if (OnKernelDevice(x) && x.scalar_type() == at::kBFloat16 && router_weight.scalar_type() == at::kBFloat16) {
    // CUDA bf16: the logits GEMM in bf16 (fp32 accumulate) as HF's Qwen3-MoE gate, then fp32
    // for the scores; fp32 GEMMs of this shape ran on a SIMT path (1.9 ms a step at 4 layers).
    r.logits = at::linear(x, router_weight).to(at::kFloat);  // [T, E]
  } else {
    r.logits = at::linear(x.to(at::kFloat), router_weight.to(at::kFloat));  // [T, E]
  }
  if (gate == GateMode::kBalanced) {
    auto long_opts = x.options().dtype(at::kLong);
    at::Tensor t = at::arange(T, long_opts).unsqueeze(1);
    at::Tensor j = at::arange(k, long_opts).unsqueeze(0);
    r.experts = (t * k + j).remainder(E);
    r.weights = at::full({T, k}, 1.0 / static_cast<double>(k), x.options());
    return r;
  }
  if (gate == GateMode::kReal && OnKernelDevice(x) && E <= 1024 && k <= 32) {
    // One kernel: scores, top-k (ties to the lower expert), renormalisation and the counts.
    kernels::RouterOptions o;
    o.top_k = k;
    o.score = c.router_scoring == RouterScoring::kSoftmax ? kernels::RouterScore::kSoftmax
                                                          : kernels::RouterScore::kSigmoid;
    o.renormalize = c.norm_topk_prob;
    o.weight_dtype = x.scalar_type();
    kernels::RouterOutput out = kernels::RouterTopK(r.logits, {}, o);
    r.weights = out.weights;
    r.experts = out.experts;
    r.counts = out.counts;
    return r;
  }
  at::Tensor gate_logits = r.logits;
  if (gate == GateMode::kSkewFirstK || gate == GateMode::kSkewLowerHalf) {
    const int64_t allowed = gate == GateMode::kSkewFirstK ? k : std::max(k, E / 2);
    at::Tensor excluded = at::arange(E, x.options().dtype(at::kLong)).ge(allowed);
    gate_logits = r.logits.masked_fill(excluded, -std::numeric_limits<float>::infinity());
  }
  at::Tensor scores = c.router_scoring == RouterScoring::kSoftmax ? at::softmax(gate_logits, -1)
                                                                  : at::sigmoid(gate_logits);
  auto [top_values, top_index] = scores.topk(k, -1);
  if (c.norm_topk_prob) top_values = top_values / top_values.sum(-1, /*keepdim=*/true);
  r.weights = top_values.to(x.scalar_type());
  r.experts = top_index;
  return r;
}

Permutation PermuteByExpert(const Routing& routing, int64_t num_experts) {
  const int64_t k = routing.experts.size(1);
  if (OnKernelDevice(routing.experts) && num_experts <= 1024) {
    // Counting sort: the same stable order as the sort below, plus its inverse for UnpermuteSum.
    kernels::ExpertOrder o = kernels::SortByExpert(routing.experts, num_experts);
    Permutation p;
    p.order = o.order;
    p.inverse = o.inverse;
    p.token_index = o.order.div(k, "floor");
    p.weights = routing.weights.reshape({-1}).index_select(0, o.order);
    p.counts = o.counts;
    return p;
  }
  at::Tensor flat = routing.experts.reshape({-1});
  auto [sorted, order] = flat.sort(/*stable=*/true, /*dim=*/0, /*descending=*/false);
  Permutation p;
  p.token_index = order.div(k, "floor");
  p.weights = routing.weights.reshape({-1}).index_select(0, order);
  p.counts = at::bincount(flat, {}, num_experts);
  return p;
}

at::Tensor GroupedMatmul(const at::Tensor& rows, const at::Tensor& w, const at::Tensor& counts) {
  if (rows.is_cuda() && rows.scalar_type() == at::kBFloat16) {
    // offs[-1] must equal rows: rows past it would be left uninitialised.
    at::Tensor offs = counts.cumsum(0).to(at::kInt);
    return at::_grouped_mm(rows, w, offs);
  }
  at::Tensor counts_cpu = counts.to(at::kCPU);
  std::vector<int64_t> sizes(counts_cpu.data_ptr<int64_t>(), counts_cpu.data_ptr<int64_t>() + counts_cpu.numel());
  std::vector<at::Tensor> parts = rows.split_with_sizes(sizes, 0);
  std::vector<at::Tensor> outs;
  outs.reserve(parts.size());
  for (size_t e = 0; e < parts.size(); ++e) {
    if (sizes[e] == 0) continue;
    outs.push_back(at::mm(parts[e], w.select(0, static_cast<int64_t>(e))));
  }
  if (outs.empty()) return at::zeros({0, w.size(2)}, rows.options()) + 0 * w.sum();
  return at::cat(outs, 0);
}

at::Tensor ExpertsForward(const at::Tensor& rows, const at::Tensor& row_weights, const at::Tensor& counts,
                          const MoeWeights& w) {
  const int64_t F = w.down.size(1);
  at::Tensor h = GroupedMatmul(rows, w.gate_up, counts);  // [N, 2F]
  if (OnKernelDevice(h) && h.scalar_type() == row_weights.scalar_type()) {
    return GroupedMatmul(kernels::WeightedSwiglu(h, row_weights), w.down, counts);
  }
  at::Tensor act = at::silu(h.narrow(-1, 0, F)) * h.narrow(-1, F, F) * row_weights.unsqueeze(-1);
  return GroupedMatmul(act, w.down, counts);  // [N, H]
}

MoeOutput MoeBlock(const at::Tensor& x, const MoeWeights& w, const ModelConfig& c, GateMode gate,
                   bool save_expert_activation) {
  const int64_t B = x.size(0), S = x.size(1), H = x.size(2);
  at::Tensor flat = x.reshape({B * S, H});
  Routing routing = Route(flat, w.router, c, gate);
  Permutation perm = PermuteByExpert(routing, c.num_experts);
  const int64_t k = routing.experts.size(1);
  const bool fused = perm.order.defined();  // CUDA: gather and k-way sum kernels, each the other's backward
  if (fused && ExpertMlpRecomputeSupports(flat, perm.weights, w.gate_up)) {
    // One op from gather to k-way sum, saving only h for backward (engine/model/expert_mlp.h).
    at::Tensor out = ExpertMlpRecompute(flat, perm.order, perm.inverse, perm.weights, perm.counts, w.gate_up, w.down, k,
                                        save_expert_activation);
    return {out.view({B, S, H}), routing.logits, perm.counts};
  }
  at::Tensor rows = fused ? kernels::PermuteRows(flat, perm.order, perm.inverse, k)
                          : flat.index_select(0, perm.token_index);  // [T*k, H]
  at::Tensor y = ExpertsForward(rows, perm.weights, perm.counts, w);
  at::Tensor out = fused ? kernels::UnpermuteSum(y, perm.order, perm.inverse, k)
                         : at::zeros_like(flat).index_add(0, perm.token_index, y);
  return {out.view({B, S, H}), routing.logits, perm.counts};
}

MoeOutput MoeBlockByToken(const at::Tensor& x, const MoeWeights& w, const ModelConfig& c, GateMode gate,
                          const TokenDispatch& dispatch) {
  const int64_t B = x.size(0), S = x.size(1), H = x.size(2);
  at::Tensor flat = x.reshape({B * S, H});
  Routing routing = Route(flat, w.router, c, gate);
  at::Tensor out = dispatch(flat, routing, w);
  return {out.view({B, S, H}), routing.logits, at::bincount(routing.experts.reshape({-1}), {}, c.num_experts)};
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

}  // namespace ftd::engine
