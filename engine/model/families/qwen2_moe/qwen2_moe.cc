// Qwen2-MoE (model_type qwen2_moe: Qwen1.5-MoE-A2.7B, Qwen2-57B-A14B), as HF transformers'
// Qwen2MoeForCausalLM: GQA attention with q/k/v biases (qkv_bias; o_proj unbiased), no q/k norm,
// a softmax top-k router (renormalised only with norm_topk_prob), one shared SwiGLU expert of
// shared_expert_intermediate_size whose output is scaled by sigmoid(shared_expert_gate · x),
// dense layers where decoder_sparse_step / mlp_only_layers say, sliding-window attention in the
// layer_types' sliding layers when use_sliding_window (HF ignores sliding_window without it).
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "engine/model/families/gqa_moe/gqa_moe_family.h"

namespace ftd::engine {
namespace {

using nlohmann::json;

class Qwen2Moe final : public GqaMoeFamily {
 public:
  const char* model_type() const override { return "qwen2_moe"; }
  const char* display_name() const override { return "Qwen2-MoE"; }

  std::vector<std::string> PresetNames() const override {
    return {"tiny-qwen2-moe", "qwen1.5-moe-a2.7b", "qwen2-57b-a14b"};
  }

  absl::StatusOr<ModelConfig> Preset(const std::string& name) const override {
    ModelConfig c;
    c.model_type = model_type();
    c.architecture = "Qwen2MoeForCausalLM";
    c.qk_norm = false;
    c.qkv_bias = true;
    c.shared_expert_gate = true;
    c.norm_topk_prob = false;
    c.router_aux_loss_coef = 0.001;
    c.rope.theta = 1000000.0;
    c.bos_token_id = 151643;
    c.eos_token_id = 151643;
    c.vocab_size = 151936;
    c.dtype = "bfloat16";
    if (name == "tiny-qwen2-moe") {
      // CPU-sized with every feature on: GQA, a dense layer, a shared expert wider than the routed.
      c.vocab_size = 512;
      c.hidden_size = 64;
      c.intermediate_size = 96;
      c.moe_intermediate_size = 32;
      c.shared_expert_intermediate_size = 80;
      c.num_hidden_layers = 3;
      c.num_attention_heads = 4;
      c.num_key_value_heads = 2;
      c.head_dim = 16;
      c.max_position_embeddings = 4096;
      c.num_experts = 6;
      c.num_experts_per_tok = 2;
      c.mlp_only_layers = {1};
      c.bos_token_id = c.eos_token_id = -1;
      c.dtype = "float32";
    } else if (name == "qwen1.5-moe-a2.7b") {
      // Qwen/Qwen1.5-MoE-A2.7B's config.json.
      c.hidden_size = 2048;
      c.intermediate_size = 5632;
      c.moe_intermediate_size = 1408;
      c.shared_expert_intermediate_size = 5632;
      c.num_hidden_layers = 24;
      c.num_attention_heads = 16;
      c.num_key_value_heads = 16;
      c.head_dim = 128;
      c.max_position_embeddings = 8192;
      c.num_experts = 60;
      c.num_experts_per_tok = 4;
    } else if (name == "qwen2-57b-a14b") {
      // Qwen/Qwen2-57B-A14B's config.json.
      c.hidden_size = 3584;
      c.intermediate_size = 18944;
      c.moe_intermediate_size = 2560;
      c.shared_expert_intermediate_size = 20480;
      c.num_hidden_layers = 28;
      c.num_attention_heads = 28;
      c.num_key_value_heads = 4;
      c.head_dim = 128;
      c.max_position_embeddings = 131072;
      c.num_experts = 64;
      c.num_experts_per_tok = 8;
    } else {
      return absl::NotFoundError(absl::StrCat("qwen2_moe has no preset \"", name, "\""));
    }
    return c;
  }

 protected:
  Traits traits() const override {
    Traits t;
    t.architecture = "Qwen2MoeForCausalLM";
    t.default_max_position_embeddings = 32768;
    return t;
  }

  absl::Status ParseFamilyFields(const FieldReader& r, ModelConfig* c) const override {
    c->qk_norm = false;
    c->qkv_bias = true;
    c->shared_expert_gate = true;
    c->shared_expert_intermediate_size = 5632;  // HF Qwen2MoeConfig's default
    FTD_RETURN_IF_ERROR(r.Bool("qkv_bias", &c->qkv_bias));
    FTD_RETURN_IF_ERROR(r.Int("shared_expert_intermediate_size", &c->shared_expert_intermediate_size, false));
    if (c->shared_expert_intermediate_size <= 0) {
      return r.Invalid("\"shared_expert_intermediate_size\" must be positive");
    }
    FTD_RETURN_IF_ERROR(ParseSparseLayout(r, c));
    return ParseQwenSlidingWindow(r, c);
  }

  void FamilyFieldsToJson(const ModelConfig& c, json* j) const override {
    SparseLayoutToJson(c, j);
    (*j)["qkv_bias"] = c.qkv_bias;
    (*j)["shared_expert_intermediate_size"] = c.shared_expert_intermediate_size;
    QwenSlidingWindowToJson(c, j);
  }
};

}  // namespace

const ModelFamily& Qwen2MoeFamily() {
  static const Qwen2Moe family;
  return family;
}

}  // namespace ftd::engine
