// AdamW with a precision policy: on CUDA each parameter is stepped by kernels/adamw.h (the
// arithmetic of PyTorch's fused AdamW at ~2.7 TB/s; embedding tables row-sparse), elsewhere by
// LibTorch's fused multi-tensor AdamW (the vectorised loop on CPU).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"
#include "engine/model/weights.h"
#include "kernels/adamw.h"

namespace ftd::engine {

class SafetensorsReader;

enum class PrecisionPolicy {
  kFp32Master,  // fp32 master weights and fp32 moments (default); params may be bf16
  kBf16Pure,    // bf16 parameters and bf16 moments, no master copy (HF/NeMo benchmark setting)
};
absl::StatusOr<PrecisionPolicy> ParsePrecisionPolicy(const std::string& name);

struct AdamWConfig {
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;
  // Step in backward on CUDA: SMs that the backward GEMMs (cuBLAS, grouped GEMM) leave to the
  // side-stream optimizer, so that its memory-bound updates run beside the compute-bound GEMMs
  // instead of between them; 0 = the GEMMs take every SM. Only set while backward runs.
  int backward_sm_carveout = 0;
  // Step in backward on CUDA: AdamW launches of short blocks (see kernels::AdamWHyper).
  bool side_stream_short_blocks = false;
  // Step in backward on CUDA: > 0 runs the updates in a green context of this many SMs (a fixed
  // SM partition), so that they never hold the SMs the backward kernels need; 0 = an ordinary
  // low-priority stream. Pair with backward_sm_carveout of the same size.
  int side_stream_sms = 0;
  // Step in backward inside a CUDA graph capture: gradient bytes held until the compute stream
  // has waited for their side-stream updates (AdamW::StepSlot explains why they are held).
  int64_t capture_pending_grad_bytes = int64_t{1} << 30;
};

// Whether a parameter gets weight decay: not norms, not biases (HF Trainer's convention).
bool DecaysWeight(const std::string& name);

class AdamW {
 public:
  static absl::StatusOr<std::unique_ptr<AdamW>> Create(std::vector<NamedParam> params, PrecisionPolicy policy,
                                                       const AdamWConfig& config);

  // One update with learning rate `lr` from the parameters' .grad().
  void Step(double lr);
  // Drops every gradient (frees the memory).
  void ZeroGrad();

  // The optimizer fused into backward: each parameter is stepped, and its gradient freed, by a
  // post-accumulate-grad hook as soon as its gradient is complete, so the gradients never all
  // exist at once. On CUDA the updates run on a side stream, overlapping the backward GEMMs.
  // Valid only without gradient accumulation and without global-norm clipping (the update
  // cannot wait for the global norm). Between BeginStepInBackward(lr) and FinishStepInBackward(),
  // run exactly one backward().
  void EnableStepInBackward();
  void BeginStepInBackward(double lr);
  void FinishStepInBackward();

  // The lookup of `table` (one of this optimizer's parameters) at `ids` [..]: [.., H]. With the
  // optimizer stepped in backward and a row-sparse CUDA table (kernels::AdamWEmbeddingSupports),
  // the lookup's backward updates the table from the token rows' gradient itself and the dense
  // [V, H] gradient is never formed; otherwise it is at::embedding. The table must take no
  // gradient from anywhere else (not tied to the output projection), and the optimizer must
  // outlive the backward of the lookups it returned.
  at::Tensor EmbeddingLookup(const at::Tensor& table, const at::Tensor& ids);
  bool step_in_backward() const { return step_in_backward_; }
  int64_t steps() const { return steps_; }

  // State for resumption: "<kind>.<param name>" tensors (exp_avg, exp_avg_sq, master) on CPU.
  std::vector<std::pair<std::string, at::Tensor>> StateTensors() const;
  absl::Status LoadState(const SafetensorsReader& reader, int64_t steps);

 private:
  struct Slot {
    NamedParam param;
    at::Tensor master;  // fp32 master (the param itself when it is already fp32 or policy is pure)
    at::Tensor exp_avg, exp_avg_sq, step;
    // Embedding tables on CUDA: rows whose moments are nonzero [rows] uint8 (the row-sparse
    // update of kernels/adamw.h skips the others); undefined for other parameters.
    at::Tensor touched_rows;
    at::Tensor slot_of;  // EmbeddingLookup's scratch [rows] int32 (kernels::AdamWEmbeddingStepCuda)
    bool decay = true;
  };
  AdamW(PrecisionPolicy policy, const AdamWConfig& config) : policy_(policy), config_(config) {}
  // One parameter's update from its gradient (the in-backward path).
  void StepSlot(Slot& slot, double lr);
  // The update by kernels/adamw.h when it serves these tensors (CUDA); false otherwise.
  bool KernelStep(Slot& slot, const at::Tensor& grad, double lr);
  kernels::AdamWHyper Hyper(const Slot& slot, double lr) const;
  // EmbeddingLookup's backward: the table's update from dy [T, H] at ids [T].
  void StepEmbeddingRows(size_t slot, const at::Tensor& ids, const at::Tensor& dy);
  friend class StepInBackwardHook;
  friend struct EmbeddingUpdateInBackward;

  PrecisionPolicy policy_;
  AdamWConfig config_;
  std::vector<Slot> slots_;
  int64_t steps_ = 0;
  bool step_in_backward_ = false;
  double backward_lr_ = 0.0;
  std::optional<int32_t> saved_carveout_;  // the global GEMM carveout before BeginStepInBackward
  struct SideStream;
  std::shared_ptr<SideStream> side_;  // CUDA side stream and events (null on CPU)
};

// Global L2 norm of all gradients (fp32); scales them so that the norm is at most max_norm
// when max_norm > 0. Returns the norm before clipping.
double ClipGradNorm(const std::vector<NamedParam>& params, double max_norm);

}  // namespace ftd::engine
