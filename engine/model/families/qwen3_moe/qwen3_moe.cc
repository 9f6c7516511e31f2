// Qwen3-MoE (model_type qwen3_moe): GQA attention with per-head q/k RMSNorm, softmax top-k
// router, routed SwiGLU experts, dense MLP layers where mlp_only_layers / decoder_sparse_step say.
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "engine/model/config_fields.h"
#include "engine/model/registry.h"

namespace ftd::engine {
namespace {

using nlohmann::json;

class Qwen3Moe final : public ModelFamily {
 public:
  const char* model_type() const override { return "qwen3_moe"; }
  const char* display_name() const override { return "Qwen3-MoE"; }

  absl::Status Parse(const json& root, const std::string& source, ModelConfig* c) const override {
    FieldReader r(root, source);
    FTD_RETURN_IF_ERROR(ParseCommonFields(root, r, "Qwen3MoeForCausalLM", c));
    c->attention = AttentionKind::kGqa;
    c->qk_norm = true;
    c->router_scoring = RouterScoring::kSoftmax;
    FTD_RETURN_IF_ERROR(r.Int("vocab_size", &c->vocab_size, true));
    FTD_RETURN_IF_ERROR(r.Int("hidden_size", &c->hidden_size, true));
    FTD_RETURN_IF_ERROR(r.Int("intermediate_size", &c->intermediate_size, true));
    FTD_RETURN_IF_ERROR(r.Int("moe_intermediate_size", &c->moe_intermediate_size, true));
    FTD_RETURN_IF_ERROR(r.Int("num_hidden_layers", &c->num_hidden_layers, true));
    FTD_RETURN_IF_ERROR(r.Int("num_attention_heads", &c->num_attention_heads, true));
    c->num_key_value_heads = c->num_attention_heads;
    FTD_RETURN_IF_ERROR(r.Int("num_key_value_heads", &c->num_key_value_heads, false));
    c->head_dim = c->num_attention_heads > 0 ? c->hidden_size / c->num_attention_heads : 0;
    FTD_RETURN_IF_ERROR(r.Int("head_dim", &c->head_dim, false));
    c->max_position_embeddings = 32768;
    FTD_RETURN_IF_ERROR(r.Int("max_position_embeddings", &c->max_position_embeddings, false));
    FTD_RETURN_IF_ERROR(ParseRope(root, source, c->max_position_embeddings, &c->rope));
    // HF v5 writes num_local_experts (attribute map); v4 configs num_experts.
    FTD_RETURN_IF_ERROR(r.Int("num_experts", &c->num_experts, false));
    FTD_RETURN_IF_ERROR(r.Int("num_local_experts", &c->num_experts, false));
    FTD_RETURN_IF_ERROR(r.Int("num_experts_per_tok", &c->num_experts_per_tok, true));
    FTD_RETURN_IF_ERROR(r.Bool("norm_topk_prob", &c->norm_topk_prob));
    FTD_RETURN_IF_ERROR(r.Int("decoder_sparse_step", &c->decoder_sparse_step, false));
    FTD_RETURN_IF_ERROR(r.IntList("mlp_only_layers", &c->mlp_only_layers));
    FTD_RETURN_IF_ERROR(r.Double("router_aux_loss_coef", &c->router_aux_loss_coef, false));
    FTD_RETURN_IF_ERROR(r.Bool("output_router_logits", &c->output_router_logits));
    FTD_RETURN_IF_ERROR(ValidateCommon(r, *c));
    if (c->head_dim <= 0) return r.Invalid("\"head_dim\" must be positive");
    if (c->decoder_sparse_step <= 0) return r.Invalid("\"decoder_sparse_step\" must be positive");
    return absl::OkStatus();
  }

  std::string ToJson(const ModelConfig& c) const override {
    json j = CommonFieldsToJson(c);
    j["decoder_sparse_step"] = c.decoder_sparse_step;
    j["head_dim"] = c.head_dim;
    j["mlp_only_layers"] = c.mlp_only_layers;
    j["moe_intermediate_size"] = c.moe_intermediate_size;
    j["norm_topk_prob"] = c.norm_topk_prob;
    j["num_experts"] = c.num_experts;
    j["output_router_logits"] = c.output_router_logits;
    j["router_aux_loss_coef"] = c.router_aux_loss_coef;
    j["sliding_window"] = nullptr;
    j["use_sliding_window"] = false;
    return j.dump(2) + "\n";
  }

  std::vector<TensorSpec> Layout(const ModelConfig& c) const override {
    std::vector<TensorSpec> out;
    auto add = [&out](std::string name, Slot slot, int64_t layer, std::vector<int64_t> shape,
                      TensorRole role = TensorRole::kWeight, bool matmul = false, bool expert = false) {
      out.push_back({std::move(name), slot, layer, std::move(shape), role, expert, matmul});
    };
    const int64_t H = c.hidden_size, V = c.vocab_size;
    add("model.embed_tokens.weight", Slot::kEmbed, -1, {V, H});
    for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
      const std::string p = absl::StrCat("model.layers.", l, ".");
      add(p + "input_layernorm.weight", Slot::kInputNorm, l, {H}, TensorRole::kNorm);
      add(p + "post_attention_layernorm.weight", Slot::kPostAttnNorm, l, {H}, TensorRole::kNorm);
      add(p + "self_attn.q_proj.weight", Slot::kQProj, l, {c.q_dim(), H}, TensorRole::kWeight, true);
      add(p + "self_attn.k_proj.weight", Slot::kKProj, l, {c.kv_dim(), H}, TensorRole::kWeight, true);
      add(p + "self_attn.v_proj.weight", Slot::kVProj, l, {c.kv_dim(), H}, TensorRole::kWeight, true);
      add(p + "self_attn.o_proj.weight", Slot::kOProj, l, {H, c.q_dim()}, TensorRole::kWeight, true);
      if (c.attention_bias) {
        add(p + "self_attn.q_proj.bias", Slot::kQBias, l, {c.q_dim()}, TensorRole::kBias);
        add(p + "self_attn.k_proj.bias", Slot::kKBias, l, {c.kv_dim()}, TensorRole::kBias);
        add(p + "self_attn.v_proj.bias", Slot::kVBias, l, {c.kv_dim()}, TensorRole::kBias);
        add(p + "self_attn.o_proj.bias", Slot::kOBias, l, {H}, TensorRole::kBias);
      }
      if (c.qk_norm) {
        add(p + "self_attn.q_norm.weight", Slot::kQNorm, l, {c.head_dim}, TensorRole::kNorm);
        add(p + "self_attn.k_norm.weight", Slot::kKNorm, l, {c.head_dim}, TensorRole::kNorm);
      }
      if (c.IsMoeLayer(l)) {
        const int64_t E = c.num_experts, F = c.moe_intermediate_size;
        add(p + "mlp.gate.weight", Slot::kRouter, l, {E, H}, TensorRole::kWeight, true);
        add(p + "mlp.experts.gate_up", Slot::kExpertsGateUp, l, {E, H, 2 * F}, TensorRole::kWeight, true, true);
        add(p + "mlp.experts.down", Slot::kExpertsDown, l, {E, F, H}, TensorRole::kWeight, true, true);
      } else {
        const int64_t F = c.intermediate_size;
        add(p + "mlp.gate_proj.weight", Slot::kMlpGate, l, {F, H}, TensorRole::kWeight, true);
        add(p + "mlp.up_proj.weight", Slot::kMlpUp, l, {F, H}, TensorRole::kWeight, true);
        add(p + "mlp.down_proj.weight", Slot::kMlpDown, l, {H, F}, TensorRole::kWeight, true);
      }
    }
    add("model.norm.weight", Slot::kFinalNorm, -1, {H}, TensorRole::kNorm);
    if (!c.tie_word_embeddings) add("lm_head.weight", Slot::kLmHead, -1, {V, H});
    return out;
  }

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
