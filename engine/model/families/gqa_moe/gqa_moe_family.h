// The families whose decoder layers are GQA attention + a softmax top-k MoE block (Qwen3-MoE,
// Mixtral, Qwen2-MoE, OLMoE). They share one config parser, one config writer and one tensor
// layout; a family is its data (Traits: names and defaults) plus two small overrides for the
// config fields only it has. LibTorch-free.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/status/status.h"
#include "engine/model/config_fields.h"
#include "engine/model/registry.h"

namespace ftd::engine {

class GqaMoeFamily : public ModelFamily {
 public:
  absl::Status Parse(const nlohmann::json& root, const std::string& source, ModelConfig* c) const final;
  std::string ToJson(const ModelConfig& c) const final;
  std::vector<TensorSpec> Layout(const ModelConfig& c) const final;

 protected:
  struct Traits {
    const char* architecture = "";                // architectures[0] when absent
    const char* moe_module = "mlp";                // "block_sparse_moe" (Mixtral's checkpoint)
    ExpertNames expert_names = ExpertNames::kGateUpDown;
    const char* experts_field = "num_experts";     // the config field of the expert count
    // Whether the experts' width is moe_intermediate_size (with dense layers of
    // intermediate_size); false: intermediate_size is the experts' width and no layer is dense.
    bool moe_intermediate_field = true;
    const char* shared_expert_module = "shared_expert";  // Qwen2-MoE
    int64_t default_max_position_embeddings = 4096;
  };
  virtual Traits traits() const = 0;
  // The family's own fields and constants (qk_norm, norm_topk_prob, ...), after the shared ones.
  // Fields the engine does not implement must be refused here, naming the field.
  virtual absl::Status ParseFamilyFields(const FieldReader& r, ModelConfig* c) const = 0;
  // The family's own fields into config.json (HF v5 names).
  virtual void FamilyFieldsToJson(const ModelConfig& c, nlohmann::json* j) const = 0;
  // Sparse-step fields of the Qwen families: decoder_sparse_step, mlp_only_layers, norm_topk_prob.
  static absl::Status ParseSparseLayout(const FieldReader& r, ModelConfig* c);
  static void SparseLayoutToJson(const ModelConfig& c, nlohmann::json* j);
  // Qwen3-MoE's sliding window is not implemented: use_sliding_window true is refused, naming it.
  static absl::Status RefuseSlidingWindow(const FieldReader& r);
  // Mixtral: sliding_window (null: none) applies to every layer.
  static absl::Status ParseSlidingWindowEveryLayer(const FieldReader& r, ModelConfig* c);
  // Qwen2-MoE: use_sliding_window turns sliding_window on in the layer_types' "sliding_attention"
  // layers; without layer_types, HF's rule: layers l < max_window_layers with l + 1 odd.
  static absl::Status ParseQwenSlidingWindow(const FieldReader& r, ModelConfig* c);
  static void QwenSlidingWindowToJson(const ModelConfig& c, nlohmann::json* j);
};

}  // namespace ftd::engine
