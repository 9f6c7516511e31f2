// Qwen3-MoE (model_type qwen3_moe): GQA attention with per-head q/k RMSNorm, softmax top-k
// router, routed SwiGLU experts, dense MLP layers where mlp_only_layers / decoder_sparse_step say.
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "engine/model/families/gqa_moe/gqa_moe_family.h"

namespace ftd::engine {
namespace {

using nlohmann::json;

class Qwen3Moe final : public GqaMoeFamily {
 public:
  const char* model_type() const override { return "qwen3_moe"; }
  const char* display_name() const override { return "Qwen3-MoE"; }

 protected:
  Traits traits() const override {
    Traits t;
    t.architecture = "Qwen3MoeForCausalLM";
    t.default_max_position_embeddings = 32768;
    return t;
  }

  absl::Status ParseFamilyFields(const FieldReader& r, ModelConfig* c) const override {
    c->qk_norm = true;
    FTD_RETURN_IF_ERROR(ParseSparseLayout(r, c));
    return RefuseSlidingWindow(r);
  }

  void FamilyFieldsToJson(const ModelConfig& c, json* j) const override {
    SparseLayoutToJson(c, j);
    (*j)["sliding_window"] = nullptr;
    (*j)["use_sliding_window"] = false;
  }

 public:
  std::vector<std::string> PresetNames() const override { return {"tiny", "qwen3-30b-a3b"}; }

  absl::StatusOr<ModelConfig> Preset(const std::string& name) const override {
    ModelConfig c;
    c.model_type = model_type();
    c.architecture = "Qwen3MoeForCausalLM";
    c.hidden_act = "silu";
    c.qk_norm = true;
    if (name == "tiny") {
      // CPU-sized, but with every feature on: GQA, a dense layer, an odd expert count.
      c.vocab_size = 512;
      c.hidden_size = 64;
      c.intermediate_size = 128;
      c.moe_intermediate_size = 32;
      c.num_hidden_layers = 3;
      c.num_attention_heads = 4;
      c.num_key_value_heads = 2;
      c.head_dim = 16;
      c.max_position_embeddings = 4096;
      c.num_experts = 8;
      c.num_experts_per_tok = 2;
      c.norm_topk_prob = true;
      c.mlp_only_layers = {1};  // one dense layer between sparse ones
      c.rope.theta = 10000.0;
      c.router_aux_loss_coef = 0.001;
    } else if (name == "qwen3-30b-a3b") {
      // Qwen/Qwen3-30B-A3B's config.json.
      c.vocab_size = 151936;
      c.hidden_size = 2048;
      c.intermediate_size = 6144;
      c.moe_intermediate_size = 768;
      c.num_hidden_layers = 48;
      c.num_attention_heads = 32;
      c.num_key_value_heads = 4;
      c.head_dim = 128;
      c.max_position_embeddings = 40960;
      c.num_experts = 128;
      c.num_experts_per_tok = 8;
      c.norm_topk_prob = true;
      c.rms_norm_eps = 1e-6;
      c.rope.theta = 1000000.0;
      c.router_aux_loss_coef = 0.001;
      c.bos_token_id = 151643;
      c.eos_token_id = 151645;
      c.dtype = "bfloat16";
    } else {
      return absl::NotFoundError(absl::StrCat("qwen3_moe has no preset \"", name, "\""));
    }
    return c;
  }
};

}  // namespace

const ModelFamily& Qwen3MoeFamily() {
  static const Qwen3Moe family;
  return family;
}

}  // namespace ftd::engine
