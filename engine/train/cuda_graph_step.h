// A training step replayed from two CUDA graphs: the forward, and the backward with the optimizer
// stepped inside it (AdamW::EnableStepInBackward). A replay is one launch instead of a few
// hundred small ones, so the GPU no longer idles while the CPU launches the first layers' small
// kernels after each synchronisation (about 1 ms of each phase at the Qwen3-30B-A3B shapes).
//
// What a replay repeats is what the capture recorded: the same shapes, the same tensor addresses
// (refill the input tensors in place between steps) and the same host-side values (the learning
// rate given to BeginStepInBackward). Device-side state moves on as usual (AdamW's step counters
// are device tensors, so bias correction advances with every replay). Neither function may read
// a device value on the host (no .item(): set Batch::num_targets).
#pragma once

#include <functional>
#include <memory>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"

namespace ftd::engine {

class CudaGraphStep {
 public:
  // Returns the scalar loss that backward starts from.
  using ForwardFn = std::function<at::Tensor()>;
  // Runs backward from `loss`, with the optimizer stepping inside it.
  using BackwardFn = std::function<void(const at::Tensor& loss)>;

  // Records forward, then backward, on the current CUDA stream (not the default stream:
  // ComputeStreamScope provides one); nothing runs on the GPU while recording. The two graphs
  // share one memory pool: backward frees and reuses what forward saved, as in an eager step.
  // Run a few eager steps first (cuBLAS, cuDNN and the allocator set themselves up then).
  static absl::StatusOr<std::unique_ptr<CudaGraphStep>> Capture(const ForwardFn& forward, const BackwardFn& backward);
  ~CudaGraphStep();
  CudaGraphStep(const CudaGraphStep&) = delete;
  CudaGraphStep& operator=(const CudaGraphStep&) = delete;

  void ReplayForward();   // then loss() holds this step's loss
  void ReplayBackward();  // gradients, and the optimizer step
  const at::Tensor& loss() const { return loss_; }

 private:
  struct Graphs;
  explicit CudaGraphStep(std::unique_ptr<Graphs> graphs);
  std::unique_ptr<Graphs> graphs_;
  at::Tensor loss_;
};

}  // namespace ftd::engine
