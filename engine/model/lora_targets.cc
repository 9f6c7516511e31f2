#include "engine/model/lora_targets.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/model/config.h"

namespace ftd::engine {
namespace {

struct TargetName {
  const char* name;
  LoraTarget bit;
};
constexpr TargetName kTargetNames[] = {{"attention", kLoraAttention},
                                       {"mlp", kLoraMlp},
                                       {"experts", kLoraExperts},
                                       {"shared_experts", kLoraSharedExperts}};

}  // namespace

bool LoraTargetFromName(const std::string& name, uint32_t* bit) {
  for (const TargetName& t : kTargetNames) {
    if (name == t.name) {
      *bit = t.bit;
      return true;
    }
  }
  return false;
}

std::vector<std::string> LoraTargetNames(uint32_t targets) {
  std::vector<std::string> out;
  for (const TargetName& t : kTargetNames) {
    if (targets & t.bit) out.push_back(t.name);
  }
  return out;
}

LoraTarget LoraTargetOfSlot(Slot slot) {
  switch (slot) {
    case Slot::kQProj: case Slot::kKProj: case Slot::kVProj: case Slot::kOProj:
    case Slot::kQaProj: case Slot::kQbProj: case Slot::kKvaProj: case Slot::kKvbProj:
      return kLoraAttention;
    case Slot::kMlpGate: case Slot::kMlpUp: case Slot::kMlpDown:
      return kLoraMlp;
    case Slot::kSharedGate: case Slot::kSharedUp: case Slot::kSharedDown:
      return kLoraSharedExperts;
    // LatentMoE's fc1/fc2_latent_proj carry only the routed experts' tokens (into and out of
    // their latent width): adapted with them.
    case Slot::kExpertsGateUp: case Slot::kExpertsDown: case Slot::kLatentDown: case Slot::kLatentUp:
      return kLoraExperts;
    default:
      return kLoraNone;
  }
}

LoraParameterCounts CountLoraParameters(const ModelConfig& config, int64_t rank, uint32_t targets) {
  LoraParameterCounts n;
  for (const TensorSpec& spec : ModelTensorLayout(config)) {
    const LoraTarget t = LoraTargetOfSlot(spec.slot);
    if (t == kLoraNone || !(targets & t)) continue;
    if (spec.expert) {
      n.expert += spec.shape[0] * rank * (spec.shape[1] + spec.shape[2]);  // [E, in, out]
    } else {
      n.dense += rank * (spec.shape[0] + spec.shape[1]);  // [out, in]
    }
  }
  return n;
}

absl::Status CheckLoraTargets(const ModelConfig& config, uint32_t targets, const std::string& field) {
  uint32_t matched = 0;
  for (const TensorSpec& spec : ModelTensorLayout(config)) matched |= LoraTargetOfSlot(spec.slot);
  const uint32_t missing = targets & ~matched;
  if (missing == 0) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", absl::StrJoin(LoraTargetNames(missing), ", "),
                                                 " matches nothing in this ", config.model_type, " model"));
}

}  // namespace ftd::engine
