// ZeRO-3 (FSDP-style) for the dense parameters of the decoder layers: each layer's dense
// parameters are one unit, sharded over the data-parallel group by its own ShardedAdamW; only
// a layer being computed holds its full parameters. Around each layer (MoeTransformer's
// LayerHooks):
//   forward   Enter: all-gather the unit            Exit: free the unit's storage
//   backward  before the layer's backward: all-gather it again (the forward's saved variables
//             are the parameter tensors themselves, refilled in place, versions untouched);
//             after it: reduce-scatter the unit's gradients into this rank's slice (added up
//             over micro-batches) and free the gradients and the storage.
// Embedding, final norm and lm_head stay resident (ZeRO-2, as FSDP keeps its root unit), as do
// the experts (sharded over ep, never gathered). No prefetch yet: each gather waits.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"
#include "engine/dist/communicator.h"
#include "engine/dist/zero_optimizer.h"
#include "engine/model/transformer.h"

namespace ftd::engine {

class Zero3Layers final : public LayerHooks {
 public:
  // `layer_params`: the dense parameters of decoder layers (NamedParam::layer >= 0), all
  // resident; they are released when this returns. Every rank must pass the same layout.
  static absl::StatusOr<std::unique_ptr<Zero3Layers>> Create(std::vector<NamedParam> layer_params, int64_t num_layers,
                                                             Communicator* dp, PrecisionPolicy policy,
                                                             const AdamWConfig& config);

  std::vector<at::Tensor> Enter(int64_t layer, std::vector<at::Tensor> inputs) override;
  std::vector<at::Tensor> Exit(int64_t layer, std::vector<at::Tensor> outputs) override;

  // After backward: the units whose backward hook did not run (no gradient reached the layer)
  // reduce their (absent) gradients too, so every rank steps every unit. Collective.
  absl::Status FinishBackward();
  // Sum of squares of this rank's slices of every unit's reduced gradient.
  at::Tensor SliceSquaredNorm() const;
  // Sets every unit's (lr, grad_scale) from [2] fp32 `scalars` on the parameters' device.
  void SetStepScalars(const at::Tensor& scalars);
  // AdamW on every unit's slice; the parameters stay released. Collective-free.
  absl::Status Step();

  // Every unit's parameters resident (to save a checkpoint), and released again.
  absl::Status GatherAll();
  void ReleaseAll();

  std::vector<std::pair<std::string, at::Tensor>> StateTensors() const;
  absl::Status LoadState(const SafetensorsReader& reader, int64_t steps);
  int64_t StateBytes() const;
  int64_t SliceBytes() const;          // the reduced gradient slices (fp32)
  int64_t ParameterBytes() const;      // of every unit, full
  int64_t MaxUnitParameterBytes() const;

  // Internal (autograd hooks): the unit's parameters gathered / its gradients reduced and freed.
  // Failures are thrown (they happen inside backward).
  void GatherForBackward(int64_t layer);
  void ReduceAfterBackward(int64_t layer);

 private:
  Zero3Layers() = default;
  std::vector<std::unique_ptr<ShardedAdamW>> units_;  // by layer (null: a layer without dense parameters)
  std::vector<bool> reduced_;                         // this step's backward reduced the unit
  at::Tensor anchor_;  // a leaf requiring grad: the hooks' nodes run even if the stream needs none
};

}  // namespace ftd::engine
