// Where the experts' fused backward (expert_mlp.h) can hand a stacked expert weight's gradient
// before it is formed: the optimizer stepping inside backward takes dW = a^T b per expert
// straight into the weight's update (kernels/grouped_gemm_adamw.h), so dW is never written.
// The model knows nothing of the optimizer: the optimizer installs itself here around the
// backward it steps in, and a weight it does not take gets its gradient as usual.
#pragma once

#include <ATen/core/Tensor.h>

namespace ftd::engine {

class ExpertWeightGradSink {
 public:
  virtual ~ExpertWeightGradSink() = default;
  // `weight` [E, K, M] (the parameter itself), a [N, K], b [N, M], offs [E] int32 (inclusive
  // prefix sums of the rows per expert): takes dW[g] = a[rows_g]^T @ b[rows_g] as the weight's
  // whole gradient for this step and returns true, or returns false and does nothing. The
  // caller is the weight's only use in the step's graph, and has already read the weight (the
  // sink may step it in place).
  virtual bool Consume(const at::Tensor& weight, const at::Tensor& a, const at::Tensor& b, const at::Tensor& offs) = 0;
};

// The sink of the backward running now (null: none). Set before backward, cleared after it;
// backward may run on another thread than the one that sets it.
void SetExpertWeightGradSink(ExpertWeightGradSink* sink);
ExpertWeightGradSink* CurrentExpertWeightGradSink();

}  // namespace ftd::engine
