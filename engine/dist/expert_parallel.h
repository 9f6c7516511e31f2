// Expert-parallel token dispatch over an ep group: each rank routes its own tokens, sends every
// token once to each ep rank that holds one of its top-k experts (with the local expert ids and
// routing weights of those choices), the receiver expands the rows to its experts, runs the
// grouped GEMMs, sums each row's expert outputs and sends the rows back, where they are added
// into the token outputs. Both all-to-alls are differentiable (the backward is the reverse
// exchange), so gradients reach the tokens, the routing weights and the local experts.
#pragma once

#include <atomic>
#include <cstdint>

#include <ATen/core/Tensor.h>

#include "engine/dist/communicator.h"
#include "engine/model/core/moe/moe_block.h"

namespace ftd::engine {

class ExpertParallelDispatch final : public TokenDispatcher {
 public:
  // `ep` is the ep group; this rank holds experts [ep->rank()*E/ep, (ep->rank()+1)*E/ep).
  ExpertParallelDispatch(Communicator* ep, int64_t num_experts);

  // The MoE layer's combined output [T, H] for tokens [T, H] routed by `routing`, with this
  // rank's experts `local` (gate_up [E/ep, H, 2F], down [E/ep, F, H]). Collective over the ep
  // group: every rank must call it for the same layers in the same order. Throws (as ATen does)
  // when an exchange fails, since it runs inside autograd.
  at::Tensor Forward(const at::Tensor& tokens, const Routing& routing, const MoeWeights& local);
  // The dispatcher interface (MoeTransformer::SetTokenDispatcher): Forward, and the tokens per
  // expert of this rank's routing.
  DispatchResult Dispatch(const at::Tensor& tokens, const Routing& routing, const MoeWeights& local) override;

  // Seconds spent in the row exchanges (forward and backward, waits included) since the last
  // call, which resets the count.
  double TakeAllToAllSeconds();
  // Rows this rank sent and received (forward) since the last call, which resets them.
  std::pair<int64_t, int64_t> TakeRowCounts();

  // Internal: records one exchange's duration.
  void AddExchangeNanos(int64_t nanos) { exchange_nanos_ += nanos; }

 private:
  Communicator* ep_;
  int64_t num_experts_;
  int64_t experts_per_rank_;
  std::atomic<int64_t> exchange_nanos_{0};
  std::atomic<int64_t> rows_sent_{0}, rows_received_{0};
};

}  // namespace ftd::engine
