#include "engine/model/families/gqa_moe/gqa_moe_family.h"

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "engine/model/layout_builder.h"

namespace ftd::engine {

using nlohmann::json;

absl::Status GqaMoeFamily::Parse(const json& root, const std::string& source, ModelConfig* c) const {
  const Traits t = traits();
  FieldReader r(root, source);
  FTD_RETURN_IF_ERROR(ParseCommonFields(root, r, t.architecture, c));
  c->attention = AttentionKind::kGqa;
  c->router_scoring = RouterScoring::kSoftmax;
  FTD_RETURN_IF_ERROR(r.Int("vocab_size", &c->vocab_size, true));
  FTD_RETURN_IF_ERROR(r.Int("hidden_size", &c->hidden_size, true));
  FTD_RETURN_IF_ERROR(r.Int("intermediate_size", &c->intermediate_size, true));
  if (t.moe_intermediate_field) {
    FTD_RETURN_IF_ERROR(r.Int("moe_intermediate_size", &c->moe_intermediate_size, true));
  } else {
    c->moe_intermediate_size = c->intermediate_size;
  }
  FTD_RETURN_IF_ERROR(r.Int("num_hidden_layers", &c->num_hidden_layers, true));
  FTD_RETURN_IF_ERROR(r.Int("num_attention_heads", &c->num_attention_heads, true));
  c->num_key_value_heads = c->num_attention_heads;
  FTD_RETURN_IF_ERROR(r.Int("num_key_value_heads", &c->num_key_value_heads, false));
  c->head_dim = c->num_attention_heads > 0 ? c->hidden_size / c->num_attention_heads : 0;
  FTD_RETURN_IF_ERROR(r.Int("head_dim", &c->head_dim, false));
  c->max_position_embeddings = t.default_max_position_embeddings;
  FTD_RETURN_IF_ERROR(r.Int("max_position_embeddings", &c->max_position_embeddings, false));
  FTD_RETURN_IF_ERROR(ParseRope(root, source, c->max_position_embeddings, &c->rope));
  // HF v5 may write num_local_experts (an attribute map) where v4 configs have num_experts.
  FTD_RETURN_IF_ERROR(r.Int("num_experts", &c->num_experts, false));
  FTD_RETURN_IF_ERROR(r.Int("num_local_experts", &c->num_experts, false));
  if (c->num_experts <= 0) return r.Invalid(absl::StrCat("\"", t.experts_field, "\" must be positive"));
  FTD_RETURN_IF_ERROR(r.Int("num_experts_per_tok", &c->num_experts_per_tok, true));
  FTD_RETURN_IF_ERROR(r.Double("router_aux_loss_coef", &c->router_aux_loss_coef, false));
  FTD_RETURN_IF_ERROR(r.Bool("output_router_logits", &c->output_router_logits));
  FTD_RETURN_IF_ERROR(ParseFamilyFields(r, c));
  FTD_RETURN_IF_ERROR(ValidateCommon(r, *c));
  if (c->head_dim <= 0) return r.Invalid("\"head_dim\" must be positive");
  if (c->decoder_sparse_step <= 0) return r.Invalid("\"decoder_sparse_step\" must be positive");
  return absl::OkStatus();
}

std::string GqaMoeFamily::ToJson(const ModelConfig& c) const {
  const Traits t = traits();
  json j = CommonFieldsToJson(c);
  j["head_dim"] = c.head_dim;
  if (t.moe_intermediate_field) j["moe_intermediate_size"] = c.moe_intermediate_size;
  j[t.experts_field] = c.num_experts;
  j["router_aux_loss_coef"] = c.router_aux_loss_coef;
  FamilyFieldsToJson(c, &j);
  return j.dump(2) + "\n";
}

std::vector<TensorSpec> GqaMoeFamily::Layout(const ModelConfig& c) const {
  const Traits t = traits();
  LayoutBuilder out(c);
  const int64_t H = c.hidden_size;
  out.Embedding();
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = LayoutBuilder::LayerPrefix(l);
    out.LayerNorms(l);
    out.GqaProjections(l);
    if (c.qk_norm) {
      out.Norm(p + "self_attn.q_norm.weight", Slot::kQNorm, l, c.head_dim);
      out.Norm(p + "self_attn.k_norm.weight", Slot::kKNorm, l, c.head_dim);
    } else if (c.qk_norm_full) {
      out.Norm(p + "self_attn.q_norm.weight", Slot::kQNorm, l, c.q_dim());
      out.Norm(p + "self_attn.k_norm.weight", Slot::kKNorm, l, c.kv_dim());
    }
    if (c.IsMoeLayer(l)) {
      const std::string m = p + t.moe_module + ".";
      out.Matmul(m + "gate.weight", Slot::kRouter, l, {c.num_experts, H});
      out.RoutedExperts(m + "experts.", l, t.expert_names);
      if (const int64_t Fs = c.shared_intermediate_size(); Fs > 0) {
        out.SwigluMlp(m + t.shared_expert_module + ".", l, Fs, /*shared_experts=*/true);
        if (c.shared_expert_gate) out.Matmul(m + "shared_expert_gate.weight", Slot::kSharedExpertGate, l, {1, H});
      }
    } else {
      out.SwigluMlp(p + "mlp.", l, c.intermediate_size, /*shared_experts=*/false);
    }
  }
  out.FinalNormAndHead();
  return std::move(out).Take();
}

absl::Status GqaMoeFamily::ParseSparseLayout(const FieldReader& r, ModelConfig* c) {
  FTD_RETURN_IF_ERROR(r.Bool("norm_topk_prob", &c->norm_topk_prob));
  FTD_RETURN_IF_ERROR(r.Int("decoder_sparse_step", &c->decoder_sparse_step, false));
  FTD_RETURN_IF_ERROR(r.IntList("mlp_only_layers", &c->mlp_only_layers));
  return absl::OkStatus();
}

void GqaMoeFamily::SparseLayoutToJson(const ModelConfig& c, json* j) {
  (*j)["decoder_sparse_step"] = c.decoder_sparse_step;
  (*j)["mlp_only_layers"] = c.mlp_only_layers;
  (*j)["norm_topk_prob"] = c.norm_topk_prob;
}

absl::Status GqaMoeFamily::RefuseSlidingWindow(const FieldReader& r) {
  bool use_sliding_window = false;
  FTD_RETURN_IF_ERROR(r.Bool("use_sliding_window", &use_sliding_window));
  if (use_sliding_window) {
    return r.Invalid("\"use_sliding_window\": true is not supported for this family (no sliding-window attention)");
  }
  return absl::OkStatus();
}

absl::Status GqaMoeFamily::ParseSlidingWindowEveryLayer(const FieldReader& r, ModelConfig* c) {
  c->sliding_window = 0;
  FTD_RETURN_IF_ERROR(r.Int("sliding_window", &c->sliding_window, false));
  if (c->sliding_window < 0) return r.Invalid("\"sliding_window\" must be positive or null");
  c->layer_types.assign(static_cast<size_t>(c->num_hidden_layers),
                        c->sliding_window > 0 ? "sliding_attention" : "full_attention");
  return absl::OkStatus();
}

absl::Status GqaMoeFamily::ParseQwenSlidingWindow(const FieldReader& r, ModelConfig* c) {
  bool use_sliding_window = false;
  int64_t window = 4096, max_window_layers = 28;  // HF Qwen2MoeConfig's defaults
  FTD_RETURN_IF_ERROR(r.Bool("use_sliding_window", &use_sliding_window));
  FTD_RETURN_IF_ERROR(r.Int("sliding_window", &window, false));
  FTD_RETURN_IF_ERROR(r.Int("max_window_layers", &max_window_layers, false));
  c->layer_types.clear();
  FTD_RETURN_IF_ERROR(r.StringList("layer_types", &c->layer_types));
  const size_t L = static_cast<size_t>(c->num_hidden_layers);
  if (c->layer_types.empty()) {
    for (size_t l = 0; l < L; ++l) {
      const bool sliding = use_sliding_window && (l + 1) % 2 == 1 && static_cast<int64_t>(l) < max_window_layers;
      c->layer_types.push_back(sliding ? "sliding_attention" : "full_attention");
    }
  }
  if (c->layer_types.size() != L) {
    return r.Invalid(absl::StrCat("\"layer_types\" has ", c->layer_types.size(), " entries, num_hidden_layers is ", L));
  }
  bool any_sliding = false;
  for (const std::string& t : c->layer_types) {
    if (t != "sliding_attention" && t != "full_attention") {
      return r.Invalid(absl::StrCat("\"layer_types\": \"", t, "\" is not sliding_attention or full_attention"));
    }
    any_sliding = any_sliding || t == "sliding_attention";
  }
  // HF sets sliding_window to 0 without use_sliding_window: its sliding layers would attend to nothing.
  if (any_sliding && !use_sliding_window) {
    return r.Invalid("\"layer_types\" has sliding_attention layers but \"use_sliding_window\" is false");
  }
  c->sliding_window = use_sliding_window ? window : 0;
  if (use_sliding_window && window <= 0) return r.Invalid("\"sliding_window\" must be positive with use_sliding_window");
  return absl::OkStatus();
}

void GqaMoeFamily::QwenSlidingWindowToJson(const ModelConfig& c, json* j) {
  (*j)["use_sliding_window"] = c.sliding_window > 0;
  (*j)["sliding_window"] = c.sliding_window > 0 ? json(c.sliding_window) : json(nullptr);
  json types = json::array();
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    types.push_back(c.IsSlidingLayer(l) ? "sliding_attention" : "full_attention");
  }
  (*j)["layer_types"] = types;
}

}  // namespace ftd::engine
