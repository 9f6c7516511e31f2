// ZeRO-2 AdamW for the dense (replicated) parameters over the data-parallel group. The dense
// parameters are laid end to end in one flat index space, each starting at a multiple of
// kernels::kCompactBlock (so the compact policy's moment blocks are those of the unsharded
// AdamW), padded to a multiple of the group size; rank r owns the slice [r*S, (r+1)*S). Per step: the full gradients are reduce-scattered
// (summed) into the rank's fp32 slice, AdamW updates the rank's master weights and moments for
// that slice only, and the updated slices are all-gathered back into every rank's parameters.
// The update equals AdamW's (engine/train/optimizer.h) on the summed gradients.
//
// ZeRO-3 (engine/dist/zero3.h) keeps one ShardedAdamW per decoder layer whose parameters are
// not resident: Release() frees their storage (the tensors keep their shapes and autograd
// identity), Gather() refills it from the slices before the layer runs, and the gradients are
// reduce-scattered as soon as the layer's backward is done (ReduceGradients with accumulate).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"
#include "engine/dist/communicator.h"
#include "engine/model/weights.h"
#include "engine/train/optimizer.h"
#include "kernels/adamw_compact.h"

namespace ftd::engine {

class SafetensorsReader;

class ShardedAdamW {
 public:
  // All params must share one dtype and device and require gradients.
  // `state_prefix` names the resumable state tensors (several optimizers in one file).
  static absl::StatusOr<std::unique_ptr<ShardedAdamW>> Create(std::vector<NamedParam> params, Communicator* dp,
                                                              PrecisionPolicy policy, const AdamWConfig& config,
                                                              std::string state_prefix = "zero.");

  // Sums the gradients over the group into this rank's slice and drops the full gradients. A
  // parameter without a gradient on some ranks counts as zeros there; one without a gradient on
  // every rank is left out of this step (as AdamW skips it). `accumulate`: add to the slice
  // reduced earlier in this step (ZeRO-3 reduces each micro-batch's gradients in backward).
  absl::Status ReduceGradients(bool accumulate = false);
  // Sum of squares of this rank's slice of the summed gradients (fp32 scalar tensor).
  at::Tensor SliceSquaredNorm() const;
  // (lr, grad_scale) read by the update when it runs, as AdamW::step_scalars(): [2] fp32 on the
  // parameters' device; the reduced gradients are multiplied by grad_scale (normalisation and
  // clipping) inside the update.
  const at::Tensor& step_scalars() const { return scalars_; }
  void SetStepScalars(double lr, double grad_scale = 1.0);
  // AdamW on the slice with step_scalars(), then (gather) all-gathers the updated weights into
  // the parameters; without, the parameters are left as they are (released under ZeRO-3).
  absl::Status Step(bool gather = true);
  absl::Status Step(double lr) {
    SetStepScalars(lr);
    return Step();
  }

  // Resumable state of this rank's slice: "zero.<exp_avg|exp_avg_sq|master>" [S] and the
  // layout ("zero.layout": numel of each parameter, then the group size) that must match on load.
  std::vector<std::pair<std::string, at::Tensor>> StateTensors() const;
  absl::Status LoadState(const SafetensorsReader& reader, int64_t steps);

  // ZeRO-3: the parameters' full values from every rank's slice, into storage allocated again
  // if released. Written without bumping the tensors' autograd versions, so that a backward
  // whose forward saved them finds them valid. Collective.
  absl::Status Gather();
  // Frees the parameters' storage (shapes, strides and identity stay). Local.
  void Release();
  bool released() const { return released_; }
  // Bytes of the parameters when resident.
  int64_t ParameterBytes() const;

  int64_t total_numel() const { return total_numel_; }
  int64_t slice_numel() const { return slice_numel_; }
  // Bytes of this rank's optimizer state (master slice and both moments).
  int64_t StateBytes() const;

 private:
  struct Segment {
    size_t param;          // index into params_
    int64_t slice_offset;  // where in the slice
    int64_t param_offset;  // where in the flattened parameter
    int64_t length;
    at::Tensor step;       // AdamW's step count for this piece
    uint32_t round_salt;   // compact_sr: the parameter's stochastic-rounding salt (of its name)
  };
  at::Tensor Layout() const;
  // All-gathers the slices into the parameters (those stepped this step, or all).
  absl::Status GatherParameters(bool stepped_only);
  ShardedAdamW(Communicator* dp, PrecisionPolicy policy, const AdamWConfig& config, std::string state_prefix)
      : dp_(dp), policy_(policy), config_(config), prefix_(std::move(state_prefix)) {}

  Communicator* dp_;
  PrecisionPolicy policy_;
  AdamWConfig config_;
  std::string prefix_;
  bool released_ = false;
  std::vector<NamedParam> params_;
  std::vector<int64_t> offsets_;  // flat offset of each parameter
  std::vector<bool> decay_;
  std::vector<bool> stepped_;     // the parameter has a gradient on some rank this step
  int64_t total_numel_ = 0, slice_numel_ = 0;
  std::vector<Segment> segments_;
  // [S] each: the fp32 master (the parameters' dtype with bf16_pure and compact_sr), the moments
  // (fp32_master, bf16_pure) or their compact codes, and the reduced gradient during a step.
  at::Tensor master_, exp_avg_, exp_avg_sq_, grad_;
  kernels::CompactMoments compact_;
  at::Tensor scalars_;  // [2] fp32: lr, grad_scale
};

}  // namespace ftd::engine
