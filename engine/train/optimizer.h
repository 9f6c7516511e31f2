// AdamW with a precision policy (common/precision_policy.h). On CUDA each parameter is stepped
// by one fused kernel: kernels/adamw_compact.h for compact and compact_sr, kernels/adamw.h for
// fp32_master and bf16_pure (the arithmetic of PyTorch's fused AdamW); elsewhere by the compact
// reference or LibTorch's fused multi-tensor AdamW.
//
// The per-step values (learning rate, gradient scale) live in a device tensor that the kernels
// read when they run (step_scalars()), so a step captured in a CUDA graph replays with new values
// and clipping can scale the gradients by a factor the host never reads.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"
#include "common/precision_policy.h"
#include "engine/model/weights.h"
#include "kernels/adamw.h"
#include "kernels/adamw_compact.h"

namespace ftd::engine {

using ftd::ParsePrecisionPolicy;
using ftd::PrecisionPolicy;
using ftd::PrecisionPolicyName;
using ftd::UsesCompactMoments;

class SafetensorsReader;

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
  // Step in backward on CUDA, compact policy: > 0 runs each update with the bulk-copy kernel
  // (kernels/adamw_compact_bulk.h) on this many SMs, which stay resident while the update lasts,
  // so that the backward GEMMs keep the rest; pair with backward_sm_carveout of the same size.
  // 0: the element-wise kernel on every SM it gets. Off by default: on an H100 the kernel moves
  // only ~12 GB/s an SM (the update's arithmetic, not memory, bounds 8 warps an SM), and the
  // Qwen3-30B-A3B 4-layer step took 100-181 ms with K = 32-16 against 45.7 (bench/RESULTS.md).
  int side_stream_bulk_sms = 0;
  // Step in backward inside a CUDA graph capture: gradient bytes held until the compute stream
  // has waited for their side-stream updates (AdamW::StepSlot explains why they are held).
  int64_t capture_pending_grad_bytes = int64_t{1} << 30;
  // Compact policy, backends.experts ftd on sm90: the stacked expert weights are stepped inside
  // their weight-gradient GEMM (kernels/grouped_gemm_adamw.h; the optimizer in backward), or, in
  // the clipped step, only their norm is taken in backward and the GEMM runs again with the update
  // after it; their gradients are never stored. Off by default: on an H100 (Qwen3-30B-A3B layers)
  // the first fused kernel moved 1.3 TB/s against the unfused pair's 2.6 and the step took 51.0
  // ms against 45.0 (grad_clip 0) and 55.9 against 47.1 (grad_clip 1.0, at 20.6 GiB against
  // 23.8). With the deferred update as GEMM then step (below) the clipped step took 47.2 ms at
  // 21.15 GiB against 45.1 at 23.81 (Mixtral-8x7B, 2 layers: 67.5 at 22.77 against 59.2 at
  // 25.83); bench/RESULTS.md. ftd-bench --fused-expert-update turns it on.
  bool fuse_expert_update = false;
  // With fuse_expert_update, the clipped step's deferred expert update (after the clip factor is
  // known): false runs the plain weight-gradient GEMM into a temporary, one weight at a time, and
  // the element-wise step on it (the GEMM's 2.6 TB/s update, dW's round trip paid once more per
  // weight); true runs the GEMM with the update in its epilogue (no dW at all, but the epilogue
  // moves 1.0-1.3 TB/s). Memory: the temporary is one weight's dW, freed before the next.
  bool deferred_update_in_epilogue = false;
  // > 0: the GEMM-then-step form forms the gradient a few experts at a time, whole experts of at
  // most this many bytes together (at least one expert); a layer's gate_up dW of Mixtral-8x7B is
  // 1.9 GB, which sits on top of the step's peak. 0: the whole weight at once. The trainer sets
  // kRecomputedExpertGradChunkBytes (512 MiB) with parallelism.recompute_expert_grads: on an
  // H100 it took Mixtral-8x7B's 2-layer peak from 22.77 to 21.01 GiB, and Qwen3-30B-A3B's from
  // 21.15 to 20.92 at the same step time (bench/RESULTS.md). ftd-bench --deferred-chunk-mib.
  int64_t deferred_update_chunk_bytes = 0;
};

// Whether a parameter gets weight decay: not norms, not biases (HF Trainer's convention).
bool DecaysWeight(const std::string& name);

class AdamW {
 public:
  static absl::StatusOr<std::unique_ptr<AdamW>> Create(std::vector<NamedParam> params, PrecisionPolicy policy,
                                                       const AdamWConfig& config);
  ~AdamW();

  // [2] fp32 on the parameters' device: (lr, grad_scale), read by every update when it runs;
  // the gradients are multiplied by grad_scale first. Write it in place (it is never replaced).
  const at::Tensor& step_scalars() const { return scalars_; }

  // compact_sr: the stochastic rounding of `param` draws the bits of element i + offset
  // (kernels/stochastic_round.h), so that a rank holding a part of a parameter (its experts
  // under expert parallelism) rounds it as one process holding the whole does. No effect under
  // the other policies; an error for a tensor that is not one of the parameters.
  absl::Status SetRoundingOffset(const at::Tensor& param, int64_t offset);
  void SetStepScalars(double lr, double grad_scale = 1.0);

  // One update from the parameters' .grad() (and the embedding rows its lookups held) with
  // step_scalars(); gradients are kept (ZeroGrad drops them).
  void Step();
  void Step(double lr) {
    SetStepScalars(lr);
    Step();
  }
  // Drops every gradient (frees the memory).
  void ZeroGrad();
  // Compact policy: [1] fp32 on the device to which every update adds the sum of squares of the
  // (scaled) gradient it used: the in-backward step's gradient norm, which no other pass sees.
  // Zero it before a step; undefined under the other policies.
  const at::Tensor& update_grad_sq_sum() const { return update_grad_sq_sum_; }
  // Sum of the squares of the gradients Step() would use, an fp32 scalar on the parameters'
  // device (no host read): .grad() in fp32 and the held embedding rows.
  at::Tensor SquaredGradNorm();

  // The optimizer fused into backward: each parameter is stepped, and its gradient freed, by a
  // post-accumulate-grad hook as soon as its gradient is complete, so the gradients never all
  // exist at once. On CUDA the updates run on a side stream, overlapping the backward GEMMs.
  // Valid only without gradient accumulation and without global-norm clipping (the update
  // cannot wait for the global norm). Between BeginStepInBackward() and FinishStepInBackward(),
  // run exactly one backward(); the updates read step_scalars() as they stand then.
  void EnableStepInBackward();
  void BeginStepInBackward();
  void BeginStepInBackward(double lr) {
    SetStepScalars(lr);
    BeginStepInBackward();
  }
  void FinishStepInBackward();

  // Under EnableStepInBackward with fuse_expert_update: takes dW[g] = a[rows_g]^T @ b[rows_g] as
  // the whole gradient of `weight` (a compact-policy parameter [E, K, M]) and steps it now, on the
  // current stream; false when it does not serve (not between Begin/FinishStepInBackward, another
  // parameter, one that already has a gradient, or the fused kernel does not take these CUDA
  // operands). The experts' backward reaches it through engine/model/core/moe/expert_weight_grad_sink.h.
  bool StepFromExpertWeightGrad(const at::Tensor& weight, const at::Tensor& a, const at::Tensor& b,
                                const at::Tensor& offs);
  // Under EnableNormInBackward with fuse_expert_update, between Begin/FinishNormInBackward (the
  // step's only backward): takes dW of `weight` as its whole gradient for the next Step(), which
  // runs the fused update from (a, b, offs) with the clipped scale; now only dW's squared norm is
  // taken (on an sm90 GPU from the tokens' Gram matrices, dW not formed: kernels/grouped_gemm_adamw.h). The operands stay alive until then
  // instead of dW (Qwen3-30B-A3B: 0.4 GB a layer against 1.2 GB). false when it does not serve.
  bool DeferExpertWeightGrad(const at::Tensor& weight, const at::Tensor& a, const at::Tensor& b,
                             const at::Tensor& offs);
  // Expert weights stepped inside their weight-gradient GEMM (StepFromExpertWeightGrad, or
  // DeferExpertWeightGrad then Step) in the last step.
  int64_t fused_expert_steps() const { return fused_expert_steps_; }

  // The gradient norm taken during backward: each parameter's squared gradient norm is summed
  // (on CUDA on the side stream, beside the backward kernels) as soon as the backward that
  // completes its gradient has accumulated it, so SquaredGradNorm() after backward reads no
  // gradient again. Between BeginNormInBackward() and FinishNormInBackward() run the step's last
  // backward (earlier micro-batches' backwards accumulate before it). Not with the optimizer in
  // backward (it takes the norm from the updates).
  void EnableNormInBackward();
  void BeginNormInBackward();
  void FinishNormInBackward();

  // The lookup of `table` (one of this optimizer's parameters) at `ids` [..]: [.., H]. On CUDA
  // with a table the kernels serve (row-sparse), the dense [V, H] gradient is never formed: the
  // lookup's backward sums the token rows of its output gradient and either steps the table
  // from them at once (optimizer in backward) or holds them for Step() (and SquaredGradNorm());
  // otherwise it is at::embedding. The table must take no gradient from anywhere else (not tied
  // to the output projection), and the optimizer must outlive the backward of the lookups it
  // returned.
  at::Tensor EmbeddingLookup(const at::Tensor& table, const at::Tensor& ids);
  bool step_in_backward() const { return step_in_backward_; }
  int64_t steps() const { return steps_; }
  PrecisionPolicy policy() const { return policy_; }
  // Bytes of optimizer state (masters, moments, step counters).
  int64_t StateBytes() const;

  // State for resumption, on CPU: "<kind>.<param name>": exp_avg, exp_avg_sq and master
  // (fp32_master, bf16_pure); master_low, moment_r, moment_s, moment_r_scale, moment_s_max
  // (compact; compact_sr without master_low).
  std::vector<std::pair<std::string, at::Tensor>> StateTensors() const;
  absl::Status LoadState(const SafetensorsReader& reader, int64_t steps);

 private:
  struct Slot {
    NamedParam param;
    // fp32_master, bf16_pure: master (a separate fp32 copy, or the parameter itself) and moments.
    at::Tensor master;
    at::Tensor exp_avg, exp_avg_sq;
    // compact: the low half of the master (bf16 parameters) and the 8-bit moments.
    at::Tensor master_low;
    kernels::CompactMoments moments;
    uint32_t round_salt = 0;  // compact_sr: the stochastic rounding's salt (of the name)
    int64_t round_offset = 0;  // and the offset of this tensor's elements in the whole parameter
    at::Tensor step;
    // Embedding tables on CUDA (fp32_master, bf16_pure): rows whose moments are nonzero [rows]
    // uint8 (the row-sparse update of kernels/adamw.h skips the others); undefined otherwise.
    at::Tensor touched_rows;
    at::Tensor slot_of;  // EmbeddingLookup's scratch [rows] int32, -1 between steps
    // EmbeddingLookup outside the in-backward step: this step's (ids [T], dy [T, H]) pairs, and
    // once summed (SquaredGradNorm or Step) their token rows.
    std::vector<std::pair<at::Tensor, at::Tensor>> held_lookups;
    at::Tensor held_rows;
    bool decay = true;
    bool norm_taken = false;  // its squared gradient norm is in norm_sum_ (norm in backward)
    // DeferExpertWeightGrad: the weight-gradient GEMM's operands for Step(), and dW's squared
    // norm [1] fp32 (kept apart from norm_sum_, which the side stream adds to).
    at::Tensor deferred_a, deferred_b, deferred_offs, deferred_sq;
  };
  AdamW(PrecisionPolicy policy, const AdamWConfig& config);
  // The slots of 3-D parameters (stacked expert weights) and the sink that reaches them.
  void InstallExpertSlots();
  // The slot of `weight` if it is a stacked expert weight whose gradient the sink may take now:
  // none from elsewhere yet (an earlier micro-batch, another use of the weight), none deferred.
  Slot* ExpertSlotFree(const at::Tensor& weight);
  // Whether the weight-gradient GEMM with the update in its epilogue takes this slot and these
  // operands (always on the CPU, where the reference runs).
  bool FusedUpdateServes(const Slot& slot, const at::Tensor& a, const at::Tensor& b, const at::Tensor& offs) const;
  // One parameter's update from its gradient (the in-backward path).
  void StepSlot(Slot& slot);
  // Adds one parameter's squared gradient norm to norm_sum_ (the norm-in-backward path).
  void TakeNorm(Slot& slot);
  // The update of one slot from `grad` (incremented step counter included).
  void UpdateSlot(Slot& slot, const at::Tensor& grad);
  // The clipped step's deferred expert update from the held operands (DeferExpertWeightGrad).
  void UpdateFromDeferredOperands(Slot& slot);
  // The compact update by the bulk-copy kernel on config_.side_stream_bulk_sms SMs (the whole
  // chunks; the rest element-wise) when that is configured and serves; false otherwise.
  bool BulkStep(Slot& slot, const at::Tensor& param, const at::Tensor& grad);
  // The update by kernels/adamw.h when it serves these tensors (CUDA); false otherwise.
  bool KernelStep(Slot& slot, const at::Tensor& grad);
  kernels::AdamWHyper Hyper(const Slot& slot) const;
  // Whether EmbeddingLookup's own backward serves this slot's table.
  bool LookupServes(const Slot& slot, const at::Tensor& ids) const;
  // EmbeddingLookup's backward: dy [T, H] at ids [T].
  void LookupBackward(size_t slot, const at::Tensor& ids, const at::Tensor& dy);
  // Sums a slot's held lookups into held_rows (setting slot_of).
  void SumHeldRows(Slot& slot);
  friend class StepInBackwardHook;
  friend class NormInBackwardHook;
  friend struct EmbeddingLookupFunction;

  PrecisionPolicy policy_;
  AdamWConfig config_;
  std::vector<Slot> slots_;
  at::Tensor scalars_;  // [2] fp32: lr, grad_scale
  at::Tensor update_grad_sq_sum_;
  int64_t steps_ = 0;
  bool step_in_backward_ = false;
  bool norm_in_backward_ = false, norm_active_ = false;
  at::Tensor norm_sum_;  // [] fp32: the squared norms taken in backward
  std::optional<int32_t> saved_carveout_;  // the global GEMM carveout before BeginStepInBackward
  struct SideStream;
  std::shared_ptr<SideStream> side_;  // CUDA side stream and events (null on CPU)
  class ExpertSink;
  std::unique_ptr<ExpertSink> expert_sink_;  // installed between Begin/FinishStepInBackward
  std::unordered_map<const c10::TensorImpl*, size_t> expert_slots_;  // 3-D parameters by tensor
  bool in_backward_step_ = false;
  int64_t fused_expert_steps_ = 0;
};

}  // namespace ftd::engine
