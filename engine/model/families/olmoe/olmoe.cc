// OLMoE (model_type olmoe: OLMoE-1B-7B), as HF transformers' OlmoeForCausalLM: GQA attention
// whose q and k RMSNorms span the whole projection (q_dim, kv_dim), not one head; q, k and v
// clamped to [-clip_qkv, clip_qkv] after the norm when clip_qkv is set; every layer sparse with
// experts intermediate_size wide; a softmax top-k router, renormalised only with norm_topk_prob
// (false in OLMoE's checkpoints).
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "engine/model/families/gqa_moe/gqa_moe_family.h"

namespace ftd::engine {
namespace {

using nlohmann::json;

class Olmoe final : public GqaMoeFamily {
 public:
  const char* model_type() const override { return "olmoe"; }
  const char* display_name() const override { return "OLMoE"; }

  std::vector<std::string> PresetNames() const override { return {"tiny-olmoe", "olmoe-1b-7b"}; }

  absl::StatusOr<ModelConfig> Preset(const std::string& name) const override {
    ModelConfig c;
    c.model_type = model_type();
    c.architecture = "OlmoeForCausalLM";
    c.qk_norm = false;
    c.qk_norm_full = true;
    c.norm_topk_prob = false;
    c.rms_norm_eps = 1e-5;
    c.router_aux_loss_coef = 0.01;
    c.rope.theta = 10000.0;
    c.pad_token_id = 1;
    c.eos_token_id = 50279;
    if (name == "tiny-olmoe") {
      c.vocab_size = 512;
      c.hidden_size = 64;
      c.intermediate_size = 32;
      c.num_hidden_layers = 2;
      c.num_attention_heads = 4;
      c.num_key_value_heads = 4;
      c.head_dim = 16;
      c.max_position_embeddings = 4096;
      c.num_experts = 8;
      c.num_experts_per_tok = 3;
      c.clip_qkv = 8.0;
      c.eos_token_id = 2;
    } else if (name == "olmoe-1b-7b") {
      // allenai/OLMoE-1B-7B-0924's config.json.
      c.vocab_size = 50304;
      c.hidden_size = 2048;
      c.intermediate_size = 1024;
      c.num_hidden_layers = 16;
      c.num_attention_heads = 16;
      c.num_key_value_heads = 16;
      c.head_dim = 128;
      c.max_position_embeddings = 4096;
      c.num_experts = 64;
      c.num_experts_per_tok = 8;
      c.dtype = "bfloat16";
    } else {
      return absl::NotFoundError(absl::StrCat("olmoe has no preset \"", name, "\""));
    }
    c.moe_intermediate_size = c.intermediate_size;
    return c;
  }

 protected:
  Traits traits() const override {
    Traits t;
    t.architecture = "OlmoeForCausalLM";
    t.moe_intermediate_field = false;
    t.default_max_position_embeddings = 4096;
    return t;
  }

  absl::Status ParseFamilyFields(const FieldReader& r, ModelConfig* c) const override {
    c->qk_norm = false;
    c->qk_norm_full = true;
    FTD_RETURN_IF_ERROR(r.Bool("norm_topk_prob", &c->norm_topk_prob));
    FTD_RETURN_IF_ERROR(r.Double("clip_qkv", &c->clip_qkv, false));
    if (c->clip_qkv < 0 || (r.Has("clip_qkv") && c->clip_qkv == 0)) {
      return r.Invalid("\"clip_qkv\" must be positive or null");
    }
    // HF sizes the q/k norms from hidden_size: the heads must tile it.
    if (c->head_dim * c->num_attention_heads != c->hidden_size) {
      return r.Invalid(absl::StrCat("\"head_dim\" (", c->head_dim, ") times num_attention_heads must equal hidden_size (",
                                    c->hidden_size, ") for OLMoE's q/k norms"));
    }
    return absl::OkStatus();
  }

  void FamilyFieldsToJson(const ModelConfig& c, json* j) const override {
    (*j)["clip_qkv"] = c.clip_qkv > 0 ? json(c.clip_qkv) : json(nullptr);
    (*j)["norm_topk_prob"] = c.norm_topk_prob;
  }
};

}  // namespace

const ModelFamily& OlmoeFamily() {
  static const Olmoe family;
  return family;
}

}  // namespace ftd::engine
