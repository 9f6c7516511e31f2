// The routed experts of one MoE layer on rows already grouped by expert: grouped GEMM gate_up
// -> SwiGLU with the routing weight folded in -> grouped GEMM down.
#pragma once

#include <ATen/core/Tensor.h>

#include "engine/model/weights.h"

namespace ftd::engine {

// out[r] = rows[r] @ w[e(r)] where rows of expert e are the e-th contiguous group of `counts`.
// rows [N, K], w [E, K, M] -> [N, M]. bf16 CUDA uses at::_grouped_mm (K and M multiples of 8);
// otherwise a loop of mm.
at::Tensor GroupedMatmul(const at::Tensor& rows, const at::Tensor& w, const at::Tensor& counts);

// Expert compute on grouped rows: [N, H] -> [N, H] (SwiGLU or relu^2 as w.activation says, row
// weight folded in; H is the latent width for LatentMoE); `counts`
// [E_local] int64 rows per local expert of `w`.
at::Tensor ExpertsForward(const at::Tensor& rows, const at::Tensor& row_weights, const at::Tensor& counts,
                          const MoeWeights& w);

}  // namespace ftd::engine
