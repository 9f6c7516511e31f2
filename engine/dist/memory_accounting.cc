#include "engine/dist/memory_accounting.h"

#include "absl/strings/str_format.h"

namespace ftd::engine {

RankMemory AccountRankMemory(const std::vector<NamedParam>& params, PrecisionPolicy policy,
                             int64_t dense_optimizer_bytes, int64_t dense_grad_slice_bytes) {
  RankMemory m;
  for (const NamedParam& p : params) {
    const at::Tensor& t = *p.tensor;
    const int64_t bytes = static_cast<int64_t>(t.nbytes());
    if (p.expert) {
      m.expert_param_bytes += bytes;
      m.expert_grad_bytes += bytes;
      m.expert_optimizer_bytes += static_cast<int64_t>(
          static_cast<double>(t.numel()) * OptimizerStateBytesPerParameter(policy, static_cast<int>(t.element_size())));
    } else if (t.storage().nbytes() == 0 && bytes > 0) {
      m.dense_released_bytes += bytes;  // released by ZeRO-3
    } else {
      m.dense_param_bytes += bytes;
      m.dense_grad_bytes += bytes;
      if (dense_optimizer_bytes < 0) {
        m.dense_optimizer_bytes += static_cast<int64_t>(static_cast<double>(t.numel()) *
                                                        OptimizerStateBytesPerParameter(policy, static_cast<int>(t.element_size())));
      }
    }
  }
  if (dense_optimizer_bytes >= 0) m.dense_optimizer_bytes = dense_optimizer_bytes;
  m.dense_grad_slice_bytes = dense_grad_slice_bytes;
  return m;
}

std::string FormatRankMemory(const RankMemory& m, int rank, int world_size) {
  auto mib = [](int64_t b) { return static_cast<double>(b) / (1 << 20); };
  return absl::StrFormat(
      "rank %d/%d memory: parameters %.3f MiB (dense %.3f MiB, experts %.3f MiB), gradients %.3f MiB (dense %.3f MiB "
      "until reduce-scatter, slice %.3f MiB, experts %.3f MiB), optimizer %.3f MiB (dense slice %.3f MiB, experts "
      "%.3f MiB)%s; bytes: expert_params=%d dense_params=%d optimizer=%d",
      rank, world_size, mib(m.param_bytes()), mib(m.dense_param_bytes), mib(m.expert_param_bytes), mib(m.grad_bytes()),
      mib(m.dense_grad_bytes), mib(m.dense_grad_slice_bytes), mib(m.expert_grad_bytes), mib(m.optimizer_bytes()),
      mib(m.dense_optimizer_bytes), mib(m.expert_optimizer_bytes),
      m.dense_released_bytes > 0
          ? absl::StrFormat("; ZeRO-3: %.3f MiB of layer parameters gathered per layer, not resident",
                            mib(m.dense_released_bytes))
          : std::string(),
      m.expert_param_bytes, m.dense_param_bytes,
      m.optimizer_bytes());
}

}  // namespace ftd::engine
