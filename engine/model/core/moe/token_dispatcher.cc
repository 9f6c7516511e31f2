#include "engine/model/core/moe/token_dispatcher.h"

#include <ATen/ATen.h>

#include "engine/model/core/moe/expert_mlp.h"
#include "engine/model/core/backends.h"
#include "engine/model/core/moe/grouped_experts.h"
#include "kernels/expert_sort.h"
#include "kernels/kernels_available.h"
#include "kernels/permute_rows.h"

namespace ftd::engine {

using kernels::OnKernelDevice;

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

DispatchResult LocalTokenDispatcher::Dispatch(const at::Tensor& flat, const Routing& routing, const MoeWeights& w) {
  const int64_t E = w.gate_up.size(0);
  Permutation perm = PermuteByExpert(routing, E);
  const int64_t k = routing.experts.size(1);
  const bool fused = perm.order.defined();  // CUDA: gather and k-way sum kernels, each the other's backward
  const bool adapters = w.gate_up_lora.defined() || w.down_lora.defined();
  // GPT-OSS's biased, clamped experts take ExpertsForward's path (the fused op has no biases).
  // Nemotron-H's relu^2 experts as well (the fused op computes SwiGLU).
  const bool plain_swiglu = w.swiglu_limit == 0 && !w.gate_up_bias.defined() && !w.down_bias.defined() &&
                            w.activation == MlpActivation::kSwiglu;
  // backends.experts loop: ExpertsForward's per-expert matmuls (the fused op is grouped GEMMs).
  const bool grouped = CurrentExpertsBackend() != ExpertsBackend::kLoop;
  if (fused && grouped && !adapters && plain_swiglu && ExpertMlpRecomputeSupports(flat, perm.weights, w.gate_up)) {
    // One op from gather to k-way sum, saving only h for backward.
    at::Tensor out = ExpertMlpRecompute(flat, perm.order, perm.inverse, perm.weights, perm.counts, w.gate_up, w.down, k,
                                        save_expert_activation_);
    return {out, perm.counts};
  }
  at::Tensor rows = fused ? kernels::PermuteRows(flat, perm.order, perm.inverse, k)
                          : flat.index_select(0, perm.token_index);  // [T*k, H]
  at::Tensor y = ExpertsForward(rows, perm.weights, perm.counts, w);
  at::Tensor out = fused ? kernels::UnpermuteSum(y, perm.order, perm.inverse, k)
                         : at::zeros_like(flat).index_add(0, perm.token_index, y);
  return {out, perm.counts};
}

}  // namespace ftd::engine
