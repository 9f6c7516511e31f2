// GPT-OSS (model_type gpt_oss), as HF transformers' GptOssForCausalLM: GQA attention with biases
// on q/k/v/o and a learned sink logit per head, alternating sliding-window (layer_types) and full
// layers, YaRN rope; every layer sparse: a router with a trained logit bias whose weights are the
// softmax over the top-k logits, and experts with biases and the clamped SwiGLU (swiglu_limit,
// swiglu_alpha). The checkpoint keeps each layer's experts fused (mlp.experts.gate_up_proj
// [E, H, 2F], gate and up interleaved, down_proj [E, F, H], and their biases): the layout marks
// them ExpertNames::kFusedInterleaved and the loader converts them exactly and reversibly.
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "engine/model/config_fields.h"
#include "engine/model/layout_builder.h"
#include "engine/model/registry.h"

namespace ftd::engine {
namespace {

using nlohmann::json;

// HF GptOssConfig's layer_types default: sliding_attention where l + 1 is odd.
std::vector<std::string> AlternatingLayerTypes(int64_t layers) {
  std::vector<std::string> out;
  for (int64_t l = 0; l < layers; ++l) out.push_back((l + 1) % 2 == 1 ? "sliding_attention" : "full_attention");
  return out;
}

class GptOss final : public ModelFamily {
 public:
  const char* model_type() const override { return "gpt_oss"; }
  const char* display_name() const override { return "GPT-OSS"; }

  absl::Status Parse(const json& root, const std::string& source, ModelConfig* c) const override {
    FieldReader r(root, source);
    FTD_RETURN_IF_ERROR(ParseCommonFields(root, r, "GptOssForCausalLM", c));
    c->attention = AttentionKind::kGqa;
    c->router_scoring = RouterScoring::kSoftmax;
    c->qk_norm = false;
    c->norm_topk_prob = true;  // softmax over the top-k logits = softmax, top-k, renormalised
    c->attention_sinks = true;
    c->router_logit_bias = true;
    c->expert_bias = true;
    c->attention_bias = true;  // GptOssConfig's default
    FTD_RETURN_IF_ERROR(r.Bool("attention_bias", &c->attention_bias));
    c->rms_norm_eps = 1e-5;
    FTD_RETURN_IF_ERROR(r.Double("rms_norm_eps", &c->rms_norm_eps, false));
    FTD_RETURN_IF_ERROR(r.Int("vocab_size", &c->vocab_size, true));
    FTD_RETURN_IF_ERROR(r.Int("hidden_size", &c->hidden_size, true));
    FTD_RETURN_IF_ERROR(r.Int("intermediate_size", &c->intermediate_size, true));
    c->moe_intermediate_size = c->intermediate_size;
    FTD_RETURN_IF_ERROR(r.Int("num_hidden_layers", &c->num_hidden_layers, true));
    FTD_RETURN_IF_ERROR(r.Int("num_attention_heads", &c->num_attention_heads, true));
    c->num_key_value_heads = c->num_attention_heads;
    FTD_RETURN_IF_ERROR(r.Int("num_key_value_heads", &c->num_key_value_heads, false));
    c->head_dim = c->num_attention_heads > 0 ? c->hidden_size / c->num_attention_heads : 0;
    FTD_RETURN_IF_ERROR(r.Int("head_dim", &c->head_dim, false));
    c->max_position_embeddings = 131072;
    FTD_RETURN_IF_ERROR(r.Int("max_position_embeddings", &c->max_position_embeddings, false));
    if (r.Has("rope_parameters") || r.Has("rope_scaling")) {
      FTD_RETURN_IF_ERROR(ParseRope(root, source, c->max_position_embeddings, &c->rope));
    } else {  // GptOssConfig's default rope
      c->rope.type = "yarn";
      c->rope.theta = 150000.0;
      FTD_RETURN_IF_ERROR(r.Double("rope_theta", &c->rope.theta, false));
      c->rope.factor = 32.0;
      c->rope.beta_fast = 32.0;
      c->rope.beta_slow = 1.0;
      c->rope.truncate = false;
      c->rope.original_max_position_embeddings = 4096;
    }
    FTD_RETURN_IF_ERROR(r.Int("num_local_experts", &c->num_experts, false));
    FTD_RETURN_IF_ERROR(r.Int("num_experts", &c->num_experts, false));
    if (c->num_experts <= 0) return r.Invalid("\"num_local_experts\" must be positive");
    FTD_RETURN_IF_ERROR(r.Int("num_experts_per_tok", &c->num_experts_per_tok, true));
    c->router_aux_loss_coef = 0.001;
    FTD_RETURN_IF_ERROR(r.Double("router_aux_loss_coef", &c->router_aux_loss_coef, false));
    FTD_RETURN_IF_ERROR(r.Bool("output_router_logits", &c->output_router_logits));
    c->swiglu_limit = 7.0;
    c->swiglu_alpha = 1.702;
    FTD_RETURN_IF_ERROR(r.Double("swiglu_limit", &c->swiglu_limit, false));
    FTD_RETURN_IF_ERROR(r.Double("swiglu_alpha", &c->swiglu_alpha, false));
    if (!(c->swiglu_limit > 0)) return r.Invalid("\"swiglu_limit\" must be positive");
    double dropout = 0.0;
    FTD_RETURN_IF_ERROR(r.Double("attention_dropout", &dropout, false));
    if (dropout != 0.0) return r.Invalid("\"attention_dropout\" must be 0 (attention dropout is not implemented)");
    // Sliding windows: null sliding_window means none (every layer full).
    c->sliding_window = 128;
    if (root.contains("sliding_window") && root["sliding_window"].is_null()) c->sliding_window = 0;
    FTD_RETURN_IF_ERROR(r.Int("sliding_window", &c->sliding_window, false));
    if (c->sliding_window < 0) return r.Invalid("\"sliding_window\" must be positive or null");
    c->layer_types.clear();
    FTD_RETURN_IF_ERROR(r.StringList("layer_types", &c->layer_types));
    if (c->layer_types.empty()) c->layer_types = AlternatingLayerTypes(c->num_hidden_layers);
    if (static_cast<int64_t>(c->layer_types.size()) != c->num_hidden_layers) {
      return r.Invalid(absl::StrCat("\"layer_types\" has ", c->layer_types.size(), " entries, num_hidden_layers is ",
                                    c->num_hidden_layers));
    }
    for (const std::string& t : c->layer_types) {
      if (t != "sliding_attention" && t != "full_attention") {
        return r.Invalid(absl::StrCat("\"layer_types\": \"", t, "\" is not sliding_attention or full_attention"));
      }
      if (t == "sliding_attention" && c->sliding_window == 0) {
        return r.Invalid("\"layer_types\" has sliding_attention layers but \"sliding_window\" is null");
      }
    }
    // The hub's checkpoints: experts in MXFP4, dequantised at load (engine/model/mxfp4.h); a
    // saved checkpoint is unquantised and carries no quantization_config.
    if (auto q = root.find("quantization_config"); q != root.end() && !q->is_null()) {
      const std::string method =
          q->is_object() && q->contains("quant_method") && (*q)["quant_method"].is_string()
              ? (*q)["quant_method"].get<std::string>()
              : "";
      if (method != "mxfp4") {
        return r.Invalid(absl::StrCat("\"quantization_config\": quant_method \"", method,
                                      "\" is not supported (mxfp4 only, dequantised at load)"));
      }
    }
    FTD_RETURN_IF_ERROR(ValidateCommon(r, *c));
    if (c->head_dim <= 0) return r.Invalid("\"head_dim\" must be positive");
    return absl::OkStatus();
  }

  std::string ToJson(const ModelConfig& c) const override {
    json j = CommonFieldsToJson(c);
    j["head_dim"] = c.head_dim;
    j["num_local_experts"] = c.num_experts;
    j["router_aux_loss_coef"] = c.router_aux_loss_coef;
    j["sliding_window"] = c.sliding_window > 0 ? json(c.sliding_window) : json(nullptr);
    json types = json::array();
    for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
      types.push_back(c.IsSlidingLayer(l) ? "sliding_attention" : "full_attention");
    }
    j["layer_types"] = types;
    j["swiglu_alpha"] = c.swiglu_alpha;
    j["swiglu_limit"] = c.swiglu_limit;
    return j.dump(2) + "\n";
  }

  std::vector<TensorSpec> Layout(const ModelConfig& c) const override {
    LayoutBuilder out(c);
    const int64_t H = c.hidden_size, E = c.num_experts, F = c.moe_intermediate_size;
    const TensorRole kBias = TensorRole::kBias;
    out.Embedding();
    for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
      const std::string p = LayoutBuilder::LayerPrefix(l);
      out.LayerNorms(l);
      out.GqaProjections(l);  // with attention_bias: biases on q, k, v and o
      // HF initialises the sinks normal(0, initializer_range), as a weight.
      out.Add(p + "self_attn.sinks", Slot::kSinks, l, {c.num_attention_heads});
      const std::string m = p + "mlp.";
      out.Matmul(m + "router.weight", Slot::kRouter, l, {E, H});
      out.Add(m + "router.bias", Slot::kRouterLogitBias, l, {E}, kBias);
      const ExpertNames fused = ExpertNames::kFusedInterleaved;
      out.Add(m + "experts.gate_up_proj", Slot::kExpertsGateUp, l, {E, H, 2 * F}, TensorRole::kWeight, true, true)
          .expert_names = fused;
      out.Add(m + "experts.gate_up_proj_bias", Slot::kExpertsGateUpBias, l, {E, 2 * F}, kBias, false, true)
          .expert_names = fused;
      out.Add(m + "experts.down_proj", Slot::kExpertsDown, l, {E, F, H}, TensorRole::kWeight, true, true)
          .expert_names = fused;
      out.Add(m + "experts.down_proj_bias", Slot::kExpertsDownBias, l, {E, H}, kBias, false, true).expert_names =
          fused;
    }
    out.FinalNormAndHead();
    return std::move(out).Take();
  }

  std::vector<std::string> PresetNames() const override { return {"tiny-gpt-oss", "gpt-oss-20b", "gpt-oss-120b"}; }

  absl::StatusOr<ModelConfig> Preset(const std::string& name) const override {
    ModelConfig c;
    c.model_type = model_type();
    c.architecture = "GptOssForCausalLM";
    c.attention = AttentionKind::kGqa;
    c.qk_norm = false;
    c.norm_topk_prob = true;
    c.attention_bias = true;
    c.attention_sinks = true;
    c.router_logit_bias = true;
    c.expert_bias = true;
    c.swiglu_limit = 7.0;
    c.swiglu_alpha = 1.702;
    c.rms_norm_eps = 1e-5;
    c.rope.type = "yarn";
    c.rope.theta = 150000.0;
    c.rope.factor = 32.0;
    c.rope.beta_fast = 32.0;
    c.rope.beta_slow = 1.0;
    c.rope.truncate = false;
    c.rope.original_max_position_embeddings = 4096;
    c.max_position_embeddings = 131072;
    c.sliding_window = 128;
    if (name == "tiny-gpt-oss") {
      c.vocab_size = 512;
      c.hidden_size = 64;
      c.intermediate_size = 48;
      c.num_hidden_layers = 2;
      c.num_attention_heads = 4;
      c.num_key_value_heads = 2;
      c.head_dim = 16;
      c.num_experts = 8;
      c.num_experts_per_tok = 2;
      c.sliding_window = 8;
      c.router_aux_loss_coef = 0.001;
    } else if (name == "gpt-oss-20b" || name == "gpt-oss-120b") {
      // openai/gpt-oss-20b's and gpt-oss-120b's config.json.
      const bool big = name == "gpt-oss-120b";
      c.vocab_size = 201088;
      c.hidden_size = 2880;
      c.intermediate_size = 2880;
      c.num_hidden_layers = big ? 36 : 24;
      c.num_attention_heads = 64;
      c.num_key_value_heads = 8;
      c.head_dim = 64;
      c.num_experts = big ? 128 : 32;
      c.num_experts_per_tok = 4;
      c.router_aux_loss_coef = 0.9;
      c.eos_token_id = 200002;
      c.pad_token_id = 199999;
      c.dtype = "bfloat16";
    } else {
      return absl::NotFoundError(absl::StrCat("gpt_oss has no preset \"", name, "\""));
    }
    c.moe_intermediate_size = c.intermediate_size;
    c.layer_types = AlternatingLayerTypes(c.num_hidden_layers);
    return c;
  }
};

}  // namespace

const ModelFamily& GptOssFamily() {
  static const GptOss family;
  return family;
}

}  // namespace ftd::engine
