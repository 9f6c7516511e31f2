// DeepSeek-V3 (model_type deepseek_v3: DeepSeek-V3/V3.1, Moonlight-16B-A3B, Kimi-K2), as HF
// transformers' DeepseekV3ForCausalLM: multi-head latent attention (q_lora_rank or a plain
// q_proj, kv_lora_rank, decoupled rope dims, optionally interleaved, YaRN with mscale), the
// first first_k_dense_replace layers dense, the rest MoE with a sigmoid router whose
// e_score_correction_bias moves only the selection, group-limited top-k (n_group, topk_group),
// renormalised and scaled by routed_scaling_factor, plus n_shared_experts shared SwiGLU experts.
// MTP layers (num_nextn_predict_layers, stored as layers >= num_hidden_layers) are carried
// through load/save untouched by the checkpoint code, not modelled.
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "engine/model/layout_builder.h"
#include "engine/model/config_fields.h"
#include "engine/model/registry.h"

namespace ftd::engine {
namespace {

using nlohmann::json;

class DeepseekV3 final : public ModelFamily {
 public:
  const char* model_type() const override { return "deepseek_v3"; }
  const char* display_name() const override { return "DeepSeek-V3"; }

  absl::Status Parse(const json& root, const std::string& source, ModelConfig* c) const override {
    FieldReader r(root, source);
    c->bos_token_id = 0;  // HF DeepseekV3Config's defaults
    c->eos_token_id = 1;
    FTD_RETURN_IF_ERROR(ParseCommonFields(root, r, "DeepseekV3ForCausalLM", c));
    c->attention = AttentionKind::kMla;
    c->qk_norm = false;
    c->router_scoring = RouterScoring::kSigmoid;
    c->router_correction_bias = true;
    c->norm_topk_prob = true;
    c->rope.interleave = true;
    FTD_RETURN_IF_ERROR(r.Int("vocab_size", &c->vocab_size, true));
    FTD_RETURN_IF_ERROR(r.Int("hidden_size", &c->hidden_size, true));
    FTD_RETURN_IF_ERROR(r.Int("intermediate_size", &c->intermediate_size, true));
    FTD_RETURN_IF_ERROR(r.Int("moe_intermediate_size", &c->moe_intermediate_size, true));
    FTD_RETURN_IF_ERROR(r.Int("num_hidden_layers", &c->num_hidden_layers, true));
    FTD_RETURN_IF_ERROR(r.Int("num_attention_heads", &c->num_attention_heads, true));
    c->num_key_value_heads = c->num_attention_heads;
    FTD_RETURN_IF_ERROR(r.Int("num_key_value_heads", &c->num_key_value_heads, false));
    c->max_position_embeddings = 4096;
    FTD_RETURN_IF_ERROR(r.Int("max_position_embeddings", &c->max_position_embeddings, false));
    FTD_RETURN_IF_ERROR(ParseRope(root, source, c->max_position_embeddings, &c->rope));
    FTD_RETURN_IF_ERROR(r.Bool("rope_interleave", &c->rope.interleave));
    // MLA. q_lora_rank null: one q_proj (Moonlight).
    FTD_RETURN_IF_ERROR(r.Int("q_lora_rank", &c->mla.q_lora_rank, false));
    FTD_RETURN_IF_ERROR(r.Int("kv_lora_rank", &c->mla.kv_lora_rank, true));
    FTD_RETURN_IF_ERROR(r.Int("qk_nope_head_dim", &c->mla.qk_nope_head_dim, true));
    FTD_RETURN_IF_ERROR(r.Int("qk_rope_head_dim", &c->mla.qk_rope_head_dim, true));
    FTD_RETURN_IF_ERROR(r.Int("v_head_dim", &c->mla.v_head_dim, true));
    c->head_dim = c->mla.qk_rope_head_dim;  // as HF: the rotary width
    // MoE. v5 may write num_local_experts (attribute map of n_routed_experts).
    FTD_RETURN_IF_ERROR(r.Int("n_routed_experts", &c->num_experts, false));
    FTD_RETURN_IF_ERROR(r.Int("num_local_experts", &c->num_experts, false));
    if (c->num_experts <= 0) return r.Invalid("\"n_routed_experts\" must be positive");
    FTD_RETURN_IF_ERROR(r.Int("num_experts_per_tok", &c->num_experts_per_tok, true));
    FTD_RETURN_IF_ERROR(r.Int("n_shared_experts", &c->n_shared_experts, false));
    FTD_RETURN_IF_ERROR(r.Double("routed_scaling_factor", &c->routed_scaling_factor, false));
    FTD_RETURN_IF_ERROR(r.Int("n_group", &c->n_group, false));
    FTD_RETURN_IF_ERROR(r.Int("topk_group", &c->topk_group, false));
    FTD_RETURN_IF_ERROR(r.Bool("norm_topk_prob", &c->norm_topk_prob));
    c->first_k_dense_replace = 3;
    FTD_RETURN_IF_ERROR(r.Int("first_k_dense_replace", &c->first_k_dense_replace, false));
    c->num_nextn_predict_layers = 1;
    FTD_RETURN_IF_ERROR(r.Int("num_nextn_predict_layers", &c->num_nextn_predict_layers, false));
    FTD_RETURN_IF_ERROR(r.Int("num_mtp_layers", &c->num_nextn_predict_layers, false));
    FTD_RETURN_IF_ERROR(r.Bool("output_router_logits", &c->output_router_logits));
    // The original (remote-code) config's fields that name the routing: only DeepSeek-V3's.
    std::string scoring = "sigmoid", topk_method = "noaux_tc";
    int64_t moe_layer_freq = 1;
    FTD_RETURN_IF_ERROR(r.String("scoring_func", &scoring, false));
    FTD_RETURN_IF_ERROR(r.String("topk_method", &topk_method, false));
    FTD_RETURN_IF_ERROR(r.Int("moe_layer_freq", &moe_layer_freq, false));
    if (scoring != "sigmoid") return r.Invalid(absl::StrCat("scoring_func \"", scoring, "\" is not supported (sigmoid)"));
    if (topk_method != "noaux_tc") {
      return r.Invalid(absl::StrCat("topk_method \"", topk_method, "\" is not supported (noaux_tc)"));
    }
    if (moe_layer_freq != 1) return r.Invalid("moe_layer_freq must be 1 (every layer after the dense ones is MoE)");

    FTD_RETURN_IF_ERROR(ValidateCommon(r, *c));
    auto positive = [&](const char* name, int64_t v) -> absl::Status {
      if (v <= 0) return r.Invalid(absl::StrCat("\"", name, "\" must be positive"));
      return absl::OkStatus();
    };
    FTD_RETURN_IF_ERROR(positive("kv_lora_rank", c->mla.kv_lora_rank));
    FTD_RETURN_IF_ERROR(positive("qk_nope_head_dim", c->mla.qk_nope_head_dim));
    FTD_RETURN_IF_ERROR(positive("qk_rope_head_dim", c->mla.qk_rope_head_dim));
    FTD_RETURN_IF_ERROR(positive("v_head_dim", c->mla.v_head_dim));
    FTD_RETURN_IF_ERROR(positive("moe_intermediate_size", c->moe_intermediate_size));
    if (c->mla.q_lora_rank < 0) return r.Invalid("\"q_lora_rank\" must be positive or null");
    if (c->mla.qk_rope_head_dim % 2 != 0) return r.Invalid("\"qk_rope_head_dim\" must be even");
    if (c->num_key_value_heads != c->num_attention_heads) {
      // MLA expands K/V per head from the latent: HF never repeats them.
      return r.Invalid("num_key_value_heads must equal num_attention_heads for MLA");
    }
    FTD_RETURN_IF_ERROR(ValidateGroupLimitedRouting(r, *c));
    if (c->n_shared_experts < 0) return r.Invalid("\"n_shared_experts\" must not be negative");
    if (c->first_k_dense_replace < 0) return r.Invalid("\"first_k_dense_replace\" must not be negative");
    if (c->num_nextn_predict_layers < 0) return r.Invalid("\"num_nextn_predict_layers\" must not be negative");
    return absl::OkStatus();
  }

  std::string ToJson(const ModelConfig& c) const override {
    json j = CommonFieldsToJson(c);
    j["first_k_dense_replace"] = c.first_k_dense_replace;
    j["head_dim"] = c.mla.qk_rope_head_dim;
    j["kv_lora_rank"] = c.mla.kv_lora_rank;
    j["moe_intermediate_size"] = c.moe_intermediate_size;
    j["n_group"] = c.n_group;
    j["n_routed_experts"] = c.num_experts;
    j["n_shared_experts"] = c.n_shared_experts;
    j["norm_topk_prob"] = c.norm_topk_prob;
    j["num_nextn_predict_layers"] = c.num_nextn_predict_layers;
    j["q_lora_rank"] = c.mla.q_lora_rank > 0 ? json(c.mla.q_lora_rank) : json(nullptr);
    j["qk_head_dim"] = c.mla.qk_head_dim();
    j["qk_nope_head_dim"] = c.mla.qk_nope_head_dim;
    j["qk_rope_head_dim"] = c.mla.qk_rope_head_dim;
    j["rope_interleave"] = c.rope.interleave;
    j["routed_scaling_factor"] = c.routed_scaling_factor;
    j["topk_group"] = c.topk_group;
    j["v_head_dim"] = c.mla.v_head_dim;
    return j.dump(2) + "\n";
  }

  std::vector<TensorSpec> Layout(const ModelConfig& c) const override {
    LayoutBuilder out(c);
    const int64_t H = c.hidden_size, Hq = c.num_attention_heads;
    const MlaConfig& m = c.mla;
    const TensorRole kBias = TensorRole::kBias;
    out.Embedding();
    for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
      const std::string p = LayoutBuilder::LayerPrefix(l);
      const std::string a = p + "self_attn.";
      out.LayerNorms(l);
      if (m.q_lora_rank > 0) {
        out.Matmul(a + "q_a_proj.weight", Slot::kQaProj, l, {m.q_lora_rank, H});
        if (c.attention_bias) out.Add(a + "q_a_proj.bias", Slot::kQaBias, l, {m.q_lora_rank}, kBias);
        out.Norm(a + "q_a_layernorm.weight", Slot::kQaNorm, l, m.q_lora_rank);
        out.Matmul(a + "q_b_proj.weight", Slot::kQbProj, l, {Hq * m.qk_head_dim(), m.q_lora_rank});
      } else {
        out.Matmul(a + "q_proj.weight", Slot::kQProj, l, {Hq * m.qk_head_dim(), H});
      }
      out.Matmul(a + "kv_a_proj_with_mqa.weight", Slot::kKvaProj, l, {m.kv_lora_rank + m.qk_rope_head_dim, H});
      if (c.attention_bias) {
        out.Add(a + "kv_a_proj_with_mqa.bias", Slot::kKvaBias, l, {m.kv_lora_rank + m.qk_rope_head_dim}, kBias);
      }
      out.Norm(a + "kv_a_layernorm.weight", Slot::kKvaNorm, l, m.kv_lora_rank);
      out.Matmul(a + "kv_b_proj.weight", Slot::kKvbProj, l, {Hq * (m.qk_nope_head_dim + m.v_head_dim), m.kv_lora_rank});
      out.Matmul(a + "o_proj.weight", Slot::kOProj, l, {H, Hq * m.v_head_dim});
      if (c.attention_bias) out.Add(a + "o_proj.bias", Slot::kOBias, l, {H}, kBias);
      if (c.IsMoeLayer(l)) {
        const int64_t E = c.num_experts;
        out.Matmul(p + "mlp.gate.weight", Slot::kRouter, l, {E, H});
        out.Add(p + "mlp.gate.e_score_correction_bias", Slot::kRouterBias, l, {E}, TensorRole::kBuffer);
        out.RoutedExperts(p + "mlp.experts.", l, ExpertNames::kGateUpDown);
        if (const int64_t Fs = c.shared_intermediate_size(); Fs > 0) {
          out.SwigluMlp(p + "mlp.shared_experts.", l, Fs, /*shared_experts=*/true);
        }
      } else {
        out.SwigluMlp(p + "mlp.", l, c.intermediate_size, /*shared_experts=*/false);
      }
    }
    out.FinalNormAndHead();
    return std::move(out).Take();
  }

  std::vector<std::string> PresetNames() const override {
    return {"tiny-deepseek-v3", "moonlight-16b-a3b", "deepseek-v3"};
  }

  absl::StatusOr<ModelConfig> Preset(const std::string& name) const override {
    ModelConfig c;
    c.model_type = model_type();
    c.architecture = "DeepseekV3ForCausalLM";
    c.attention = AttentionKind::kMla;
    c.qk_norm = false;
    c.router_scoring = RouterScoring::kSigmoid;
    c.router_correction_bias = true;
    c.norm_topk_prob = true;
    c.rope.interleave = true;
    c.num_nextn_predict_layers = 0;
    if (name == "tiny-deepseek-v3") {
      // CPU-sized with every feature on: q_lora, groups, 2 shared experts, a dense first layer, YaRN.
      c.vocab_size = 512;
      c.hidden_size = 64;
      c.intermediate_size = 96;
      c.moe_intermediate_size = 32;
      c.num_hidden_layers = 3;
      c.num_attention_heads = 4;
      c.mla = {/*q_lora_rank=*/48, /*kv_lora_rank=*/32, /*qk_nope_head_dim=*/16, /*qk_rope_head_dim=*/8,
               /*v_head_dim=*/16};
      c.max_position_embeddings = 4096;
      c.num_experts = 8;
      c.num_experts_per_tok = 2;
      c.n_group = 4;
      c.topk_group = 2;
      c.routed_scaling_factor = 2.5;
      c.n_shared_experts = 2;
      c.first_k_dense_replace = 1;
      c.rope = {"yarn", 10000.0, 4.0};
      c.rope.original_max_position_embeddings = 1024;
      c.rope.mscale = 1.0;
      c.rope.mscale_all_dim = 1.0;
      c.rope.interleave = true;
      c.bos_token_id = 0;
      c.eos_token_id = 1;
    } else if (name == "moonlight-16b-a3b") {
      // moonshotai/Moonlight-16B-A3B's config.json.
      c.vocab_size = 163840;
      c.hidden_size = 2048;
      c.intermediate_size = 11264;
      c.moe_intermediate_size = 1408;
      c.num_hidden_layers = 27;
      c.num_attention_heads = 16;
      c.mla = {/*q_lora_rank=*/0, /*kv_lora_rank=*/512, /*qk_nope_head_dim=*/128, /*qk_rope_head_dim=*/64,
               /*v_head_dim=*/128};
      c.max_position_embeddings = 8192;
      c.rms_norm_eps = 1e-5;
      c.rope.theta = 50000.0;
      c.num_experts = 64;
      c.num_experts_per_tok = 6;
      c.n_group = 1;
      c.topk_group = 1;
      c.routed_scaling_factor = 2.446;
      c.n_shared_experts = 2;
      c.first_k_dense_replace = 1;
      c.bos_token_id = 163584;
      c.eos_token_id = 163585;
      c.dtype = "bfloat16";
    } else if (name == "deepseek-v3") {
      // deepseek-ai/DeepSeek-V3's config.json (its MTP layer is not generated).
      c.vocab_size = 129280;
      c.hidden_size = 7168;
      c.intermediate_size = 18432;
      c.moe_intermediate_size = 2048;
      c.num_hidden_layers = 61;
      c.num_attention_heads = 128;
      c.mla = {/*q_lora_rank=*/1536, /*kv_lora_rank=*/512, /*qk_nope_head_dim=*/128, /*qk_rope_head_dim=*/64,
               /*v_head_dim=*/128};
      c.max_position_embeddings = 163840;
      c.rope = {"yarn", 10000.0, 40.0};
      c.rope.original_max_position_embeddings = 4096;
      c.rope.mscale = 1.0;
      c.rope.mscale_all_dim = 1.0;
      c.rope.interleave = true;
      c.num_experts = 256;
      c.num_experts_per_tok = 8;
      c.n_group = 8;
      c.topk_group = 4;
      c.routed_scaling_factor = 2.5;
      c.n_shared_experts = 1;
      c.first_k_dense_replace = 3;
      c.bos_token_id = 0;
      c.eos_token_id = 1;
      c.dtype = "bfloat16";
    } else {
      return absl::NotFoundError(absl::StrCat("deepseek_v3 has no preset \"", name, "\""));
    }
    c.num_key_value_heads = c.num_attention_heads;
    c.head_dim = c.mla.qk_rope_head_dim;
    return c;
  }
};

}  // namespace

const ModelFamily& DeepseekV3Family() {
  static const DeepseekV3 family;
  return family;
}

}  // namespace ftd::engine
