// One optimizer step of one rank: the code path of every training run, used by the trainer
// (ftd-train, as ftd-worker starts it) and by ftd-bench alike.
//
// A step takes this rank's micro-batches (host tensors from the data pipeline), runs forward and
// backward on each, and updates the parameters with AdamW under the precision policy. Two ways:
//
//   optimizer in backward   grad_clip 0, one micro-batch, one rank: each parameter is updated,
//                           and its gradient freed, as soon as its gradient is complete
//                           (AdamW::EnableStepInBackward); the embedding table from its lookup's
//                           token rows. The gradient norm comes out of the updates themselves.
//   after backward          otherwise (HF Trainer's semantics): gradients are accumulated over
//                           the micro-batches (and reduced over ranks), the global norm of the
//                           whole step's gradient is taken on the device, and the update runs
//                           with the clipping factor applied inside the kernels.
//
// Nothing in a step reads a device value on the host: the loss is normalised by a fixed
// constant F (the most targets a step can have) in backward and the ratio F / targets, the
// learning rate and the clipping factor reach the kernels as device scalars. The host reads the
// step's loss, gradient norm and expert load once, in Wait(). On one CUDA device with one
// micro-batch per step, the whole step (forward, backward, norm, update) is captured as a CUDA
// graph after warm-up steps and replayed (one launch instead of thousands); packed rows get a
// graph per bucket of document counts (cu_seqlens padded to a power of two).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"
#include "engine/model/transformer.h"
#include "engine/train/optimizer.h"
#include "engine/train/token_dataset.h"

namespace ftd::engine {

class ExpertParallelDispatch;
class SafetensorsReader;
struct ProcessGroups;

struct TrainStepOptions {
  PrecisionPolicy precision = PrecisionPolicy::kCompact;
  AdamWConfig adam;
  double grad_clip = 1.0;        // global-norm clipping (HF's max_grad_norm); 0: none
  int64_t micro_batches = 1;     // this rank's micro-batches per optimizer step
  int64_t micro_batch = 1;       // rows per micro-batch
  int64_t seq_len = 2048;        // tokens per row (CUDA graphs pad rows to it)
  bool cuda_graphs = true;       // capture and replay the step where it can be
  int64_t warmup_before_capture = 2;  // eager steps (per graph key) before capturing
  // lm_head's GEMMs skip rows without a target (a prompt's, padding): the loss runs on the
  // target rows rounded up to an eighth of the micro-batch (a CUDA graph per eighth).
  bool loss_skips_ignored_rows = true;
  // Several ranks: the dense parameters are ZeRO-2 sharded (optimizer state and gradients);
  // 3 also shards the decoder layers' dense parameters, gathered per layer (engine/dist/zero3.h).
  int64_t zero_stage = 2;
  // DeepSeek-V3's aux-loss-free balancing: after each update, every MoE layer's selection bias
  // moves by this much towards balance (core/moe/router.h UpdateSelectionBias); 0: off.
  double router_bias_update_speed = 0;
};

// A step's inputs: this rank's micro-batches on the host (CollateMicroBatch), the number of
// targets over every rank's micro-batches (the loss is their mean), and the learning rate.
struct StepInput {
  std::vector<MicroBatchTensors> micro;
  int64_t targets_total = 0;
  double lr = 0.0;
};

struct StepOutcome {
  double loss = 0;       // this rank's share: sum over its micro-batches of loss_sum / targets_total + aux
  double grad_norm = 0;  // of the whole step's gradient, before clipping (NaN when not known)
  at::Tensor expert_load;  // [moe layers, experts] fp64 on the CPU: tokens per expert, this rank
  bool replayed = false;   // the step ran as a CUDA graph replay
  // Replayed steps allocate nothing: the memory the graphs hold (measured once after capture:
  // the allocator's peak or what stays reserved, whichever is larger); 0 otherwise.
  int64_t graph_memory_bytes = 0;
  // Phase times of an eager step (device events on CUDA, the host clock on the CPU), summed over
  // the micro-batches; the optimizer in backward counts as backward. 0 when replayed.
  double forward_seconds = 0, backward_seconds = 0, optimizer_seconds = 0;
  // A step launched while the previous one was still in flight (CUDA): the device time from
  // the previous step's end to its own, which is its share of the wall clock (the host clock
  // between their results would give it work the host did for the step after it, such as
  // capturing a CUDA graph). 0 otherwise.
  double pipelined_seconds = 0;
};

class TrainStep {
 public:
  // `groups` null or of world size 1: one process. `dispatch`: the model's expert-parallel
  // dispatch when ep > 1 (else null). The model must outlive the step.
  static absl::StatusOr<std::unique_ptr<TrainStep>> Create(MoeTransformer* model, ProcessGroups* groups,
                                                           ExpertParallelDispatch* dispatch,
                                                           const TrainStepOptions& options);
  ~TrainStep();
  TrainStep(const TrainStep&) = delete;
  TrainStep& operator=(const TrainStep&) = delete;

  // Queues one optimizer step on the device (collectives of a multi-rank step run as they come);
  // on the CPU it runs it. On CUDA a second step may be launched before the first is waited
  // for: it queues behind it (its inputs are copied in stream order).
  absl::Status Launch(const StepInput& input);
  // Waits for the oldest launched step and reads its results.
  absl::StatusOr<StepOutcome> Wait();

  // "optimizer in backward" or "optimizer after backward (clip 1.0)", and whether CUDA graphs
  // are on: for the start-up log.
  std::string Describe() const;
  // Expert weights whose gradient the optimizer took from their GEMM in the last backward the
  // host ran (AdamWConfig::fuse_expert_update; replays run none): 0 when none qualified.
  int64_t expert_weights_from_gemm() const;
  bool optimizer_in_backward() const;

  // Resumable optimizer state of this rank, and its loading.
  std::vector<std::pair<std::string, at::Tensor>> StateTensors() const;
  absl::Status LoadState(const SafetensorsReader& reader, int64_t steps);
  int64_t OptimizerStateBytes() const;
  // Of the ZeRO-sharded dense parameters (several ranks; 0 for one process).
  int64_t DenseOptimizerStateBytes() const;
  // Bytes of the reduced gradient slice (ZeRO) a multi-rank step holds, for memory accounting.
  int64_t GradientSliceBytes() const;
  // ZeRO-3: every parameter resident (to save a checkpoint), then released again; no-ops
  // otherwise. Collective.
  absl::Status GatherParameters();
  void ReleaseParameters();
  int zero_stage() const;

 private:
  struct State;
  explicit TrainStep(std::unique_ptr<State> state);
  std::unique_ptr<State> s_;
};

}  // namespace ftd::engine
