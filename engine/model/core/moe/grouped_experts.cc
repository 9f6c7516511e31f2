#include "engine/model/core/moe/grouped_experts.h"

#include <vector>

#include <ATen/ATen.h>

#include "engine/model/core/backends.h"
#include "engine/model/core/moe/expert_gemm.h"
#include "kernels/kernels_available.h"
#include "kernels/relu2.h"
#include "kernels/swiglu.h"

namespace ftd::engine {

using kernels::OnKernelDevice;

at::Tensor GroupedMatmul(const at::Tensor& rows, const at::Tensor& w, const at::Tensor& counts) {
  // _grouped_mm needs 16-byte aligned rows: K and N multiples of 8 in bf16 (a LoRA rank of 4,
  // say, is not; such GEMMs take the loop below, as does everything under backends.experts loop).
  if (CurrentExpertsBackend() != ExpertsBackend::kLoop && rows.is_cuda() && rows.scalar_type() == at::kBFloat16 &&
      w.size(1) % 8 == 0 && w.size(2) % 8 == 0) {
    // offs[-1] must equal rows: rows past it would be left uninitialised.
    at::Tensor offs = counts.cumsum(0).to(at::kInt);
    return ExpertGemmDifferentiable(rows, w, offs);  // backends.experts: at::_grouped_mm or ftd's kernel
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

namespace {

// rows @ w[e] (+ scale * (rows @ a[e]) @ b[e] with an adapter): two more grouped GEMMs on the
// same grouped rows, [N, K] -> [N, r] -> [N, M].
at::Tensor GroupedMatmulWithLora(const at::Tensor& rows, const at::Tensor& w, const LoraExperts& lora,
                                 const at::Tensor& counts) {
  at::Tensor y = GroupedMatmul(rows, w, counts);
  if (!lora.defined()) return y;
  return y + GroupedMatmul(GroupedMatmul(rows, lora.a, counts), lora.b, counts) * lora.scale;
}

}  // namespace

namespace {

// GPT-OSS's experts (HF GptOssExperts): biases on both GEMMs and the clamped SwiGLU, the routing
// weight applied to the whole output (bias included): (act @ down + b_down) * w, computed as
// (act * w) @ down + b_down * w so that the weight folds into the activation op (the CUDA
// kernels on CUDA, the reference elsewhere); the same value up to rounding.
// Each row's expert bias is added as a GEMM with the rows' one-hot expert matrix, out = x +
// onehot @ bias (addmm): its backward is onehot^T @ grad, a GEMM accumulating in fp32, where a
// gather's backward (index_add) would scatter every row's gradient with bf16 atomics. The
// one-hot product is exact (one non-zero per row), so the forward equals the gathered add.
at::Tensor BiasedClampedExpertsForward(const at::Tensor& rows, const at::Tensor& row_weights, const at::Tensor& counts,
                                       const MoeWeights& w) {
  const int64_t E = w.gate_up.size(0);
  // The local expert of each grouped row [N], and as one-hot rows [N, E] (no host sync).
  at::Tensor expert_of_row = at::repeat_interleave(at::arange(E, counts.options()), counts, /*dim=*/0, rows.size(0));
  at::Tensor onehot = expert_of_row.unsqueeze(1).eq(at::arange(E, counts.options())).to(rows.scalar_type());
  at::Tensor h = GroupedMatmulWithLora(rows, w.gate_up, w.gate_up_lora, counts);  // [N, 2F] = [gate | up]
  if (w.gate_up_bias.defined()) h = at::addmm(h, onehot, w.gate_up_bias);  // + gate_up_bias[expert]
  const auto activation = kernels::SwigluOptions::GptOss(w.swiglu_limit, w.swiglu_alpha);
  at::Tensor act = kernels::WeightedSwiglu(h, row_weights, activation);    // [N, F], routing weight folded in
  at::Tensor y = GroupedMatmulWithLora(act, w.down, w.down_lora, counts);  // [N, H]
  // + down_bias[expert] * row weight: the weight in the one-hot matrix [N, E].
  if (w.down_bias.defined()) y = at::addmm(y, onehot * row_weights.unsqueeze(-1), w.down_bias);
  return y;
}

}  // namespace

at::Tensor ExpertsForward(const at::Tensor& rows, const at::Tensor& row_weights, const at::Tensor& counts,
                          const MoeWeights& w) {
  if (w.activation == MlpActivation::kRelu2) {
    // Nemotron-H: up only (gate_up holds up [E, K, F]), relu^2, the routing weight folded in
    // before the down GEMM (linear: HF applies it after).
    at::Tensor h = GroupedMatmulWithLora(rows, w.gate_up, w.gate_up_lora, counts);  // [N, F]
    at::Tensor act = OnKernelDevice(h) && h.scalar_type() == row_weights.scalar_type()
                         ? kernels::WeightedRelu2(h, row_weights)                    // one fused pass, CUDA
                         : at::relu(h).square() * row_weights.unsqueeze(-1);        // [N, F]
    return GroupedMatmulWithLora(act, w.down, w.down_lora, counts);                // [N, K]
  }
  if (w.swiglu_limit > 0 || w.gate_up_bias.defined() || w.down_bias.defined()) {
    return BiasedClampedExpertsForward(rows, row_weights, counts, w);
  }
  const int64_t F = w.down.size(1);
  at::Tensor h = GroupedMatmulWithLora(rows, w.gate_up, w.gate_up_lora, counts);  // [N, 2F]
  if (OnKernelDevice(h) && h.scalar_type() == row_weights.scalar_type()) {
    return GroupedMatmulWithLora(kernels::WeightedSwiglu(h, row_weights), w.down, w.down_lora, counts);
  }
  at::Tensor act = at::silu(h.narrow(-1, 0, F)) * h.narrow(-1, F, F) * row_weights.unsqueeze(-1);
  return GroupedMatmulWithLora(act, w.down, w.down_lora, counts);  // [N, H]
}

}  // namespace ftd::engine
