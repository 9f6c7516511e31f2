// Mixtral (model_type mixtral), as HF transformers' MixtralForCausalLM: GQA attention without
// q/k norms, every layer sparse, a softmax top-k router whose top-k weights are renormalised,
// experts intermediate_size wide stored as block_sparse_moe.experts.<e>.{w1,w3,w2} (gate, up,
// down), sliding_window (every layer) when set. router_jitter_noise > 0 is not implemented, so refused.
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "engine/model/families/gqa_moe/gqa_moe_family.h"

namespace ftd::engine {
namespace {

using nlohmann::json;

class Mixtral final : public GqaMoeFamily {
 public:
  const char* model_type() const override { return "mixtral"; }
  const char* display_name() const override { return "Mixtral"; }

  std::vector<std::string> PresetNames() const override { return {"tiny-mixtral", "mixtral-8x7b"}; }

  absl::StatusOr<ModelConfig> Preset(const std::string& name) const override {
    ModelConfig c;
    c.model_type = model_type();
    c.architecture = "MixtralForCausalLM";
    c.qk_norm = false;
    c.norm_topk_prob = true;
    c.rms_norm_eps = 1e-5;
    c.bos_token_id = 1;
    c.eos_token_id = 2;
    if (name == "tiny-mixtral") {
      c.vocab_size = 512;
      c.hidden_size = 64;
      c.intermediate_size = 48;
      c.num_hidden_layers = 2;
      c.num_attention_heads = 4;
      c.num_key_value_heads = 2;
      c.head_dim = 16;
      c.max_position_embeddings = 4096;
      c.num_experts = 6;
      c.num_experts_per_tok = 2;
      c.rope.theta = 1000000.0;
      c.router_aux_loss_coef = 0.02;
    } else if (name == "mixtral-8x7b") {
      // mistralai/Mixtral-8x7B-v0.1's config.json.
      c.vocab_size = 32000;
      c.hidden_size = 4096;
      c.intermediate_size = 14336;
      c.num_hidden_layers = 32;
      c.num_attention_heads = 32;
      c.num_key_value_heads = 8;
      c.head_dim = 128;
      c.max_position_embeddings = 32768;
      c.num_experts = 8;
      c.num_experts_per_tok = 2;
      c.rope.theta = 1000000.0;
      c.router_aux_loss_coef = 0.02;
      c.dtype = "bfloat16";
    } else {
      return absl::NotFoundError(absl::StrCat("mixtral has no preset \"", name, "\""));
    }
    c.moe_intermediate_size = c.intermediate_size;
    return c;
  }

 protected:
  Traits traits() const override {
    Traits t;
    t.architecture = "MixtralForCausalLM";
    t.moe_module = "block_sparse_moe";
    t.expert_names = ExpertNames::kW1W3W2;
    t.experts_field = "num_local_experts";
    t.moe_intermediate_field = false;
    t.default_max_position_embeddings = 4096 * 32;
    return t;
  }

  absl::Status ParseFamilyFields(const FieldReader& r, ModelConfig* c) const override {
    c->qk_norm = false;
    c->norm_topk_prob = true;  // MixtralTopKRouter always renormalises
    FTD_RETURN_IF_ERROR(ParseSlidingWindowEveryLayer(r, c));
    double jitter = 0.0;
    FTD_RETURN_IF_ERROR(r.Double("router_jitter_noise", &jitter, false));
    if (jitter != 0.0) return r.Invalid("\"router_jitter_noise\" must be 0 (router jitter is not implemented)");
    return absl::OkStatus();
  }

  void FamilyFieldsToJson(const ModelConfig& c, json* j) const override {
    (*j)["router_jitter_noise"] = 0.0;
    (*j)["sliding_window"] = c.sliding_window > 0 ? json(c.sliding_window) : json(nullptr);
  }
};

}  // namespace

const ModelFamily& MixtralFamily() {
  static const Mixtral family;
  return family;
}

}  // namespace ftd::engine
