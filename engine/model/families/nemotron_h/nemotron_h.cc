// Nemotron-H (model_type nemotron_h: NVIDIA Nemotron-H, Nemotron Nano 2/3, Super, Ultra), as HF
// transformers' NemotronHForCausalLM: a hybrid stack in which every layer is one RMSNorm and one
// mixer added to the residual, the mixer being what layers_block_type (or the legacy
// hybrid_override_pattern, M * - E) names: a Mamba2 mixer, GQA attention without position
// embedding, a relu^2 MLP (up, down), or an MoE block: a DeepSeek-V3-style router (sigmoid,
// e_score_correction_bias for the choice only, n_group/topk_group, renormalised, times
// routed_scaling_factor), relu^2 experts (up_proj, down_proj per expert), one shared relu^2 expert
// of moe_shared_expert_intermediate_size and, with moe_latent_size (LatentMoE), the routed experts
// working in that width between fc1_latent_proj and fc2_latent_proj. Checkpoint names are
// backbone.* (HF renames them to model.* in memory and back when saving). MTP layers (mtp.*) are
// carried through load/save untouched, not modelled.
#include <cmath>
#include <limits>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "engine/model/config_fields.h"
#include "engine/model/layout_builder.h"
#include "engine/model/registry.h"

namespace ftd::engine {
namespace {

using nlohmann::json;

// layers_block_type's names (HF v5 and the legacy ones it remaps) and the pattern letters.
bool BlockFromName(const std::string& name, LayerBlock* out) {
  if (name == "linear_attention" || name == "mamba") *out = LayerBlock::kMamba;
  else if (name == "full_attention" || name == "attention") *out = LayerBlock::kAttention;
  else if (name == "mlp") *out = LayerBlock::kMlp;
  else if (name == "moe") *out = LayerBlock::kMoe;
  else return false;
  return true;
}
bool BlockFromLetter(char letter, LayerBlock* out) {
  switch (letter) {
    case 'M': *out = LayerBlock::kMamba; return true;
    case '*': *out = LayerBlock::kAttention; return true;
    case '-': *out = LayerBlock::kMlp; return true;
    case 'E': *out = LayerBlock::kMoe; return true;
    default: return false;
  }
}
const char* BlockName(LayerBlock b) {
  switch (b) {
    case LayerBlock::kMamba: return "linear_attention";
    case LayerBlock::kAttention: return "full_attention";
    case LayerBlock::kMlp: return "mlp";
    case LayerBlock::kMoe: return "moe";
  }
  return "";
}
std::vector<LayerBlock> Pattern(const std::string& letters) {
  std::vector<LayerBlock> out;
  for (char ch : letters) {
    LayerBlock b;
    if (BlockFromLetter(ch, &b)) out.push_back(b);
  }
  return out;
}

// One bound of time_step_limit: a number, or HF's {"__float__": "Infinity"} (how it writes inf).
bool TimeStepBound(const json& v, double* out) {
  if (v.is_number()) {
    *out = v.get<double>();
    return true;
  }
  if (v.is_object() && v.contains("__float__") && v["__float__"].is_string()) {
    const std::string s = v["__float__"].get<std::string>();
    if (s == "Infinity" || s == "inf") {
      *out = std::numeric_limits<double>::infinity();
      return true;
    }
  }
  return false;
}

// Reads the first present of `keys` (HF's name, then its legacy aliases).
absl::Status IntAny(const FieldReader& r, std::initializer_list<const char*> keys, int64_t* out) {
  for (const char* k : keys) FTD_RETURN_IF_ERROR(r.Int(k, out, false));
  return absl::OkStatus();
}
absl::Status DoubleAny(const FieldReader& r, std::initializer_list<const char*> keys, double* out) {
  for (const char* k : keys) FTD_RETURN_IF_ERROR(r.Double(k, out, false));
  return absl::OkStatus();
}

// Settings HF reads whose non-default values the engine does not implement: refused by name.
absl::Status RefuseIfTrue(const FieldReader& r, const char* key, const char* why) {
  bool v = false;
  FTD_RETURN_IF_ERROR(r.Bool(key, &v));
  if (v) return r.Invalid(absl::StrCat("\"", key, "\" true is not supported (", why, ")"));
  return absl::OkStatus();
}

void SetFamilyConstants(ModelConfig* c) {
  c->attention = AttentionKind::kGqa;
  c->qk_norm = false;
  c->rope_enabled = false;
  c->mlp_activation = MlpActivation::kRelu2;
  c->router_scoring = RouterScoring::kSigmoid;
  c->router_correction_bias = true;
  c->norm_topk_prob = true;
  c->n_shared_experts = 1;
}

class NemotronH final : public ModelFamily {
 public:
  const char* model_type() const override { return "nemotron_h"; }
  const char* display_name() const override { return "Nemotron-H"; }

  absl::Status Parse(const json& root, const std::string& source, ModelConfig* c) const override {
    FieldReader r(root, source);
    c->bos_token_id = 1;  // HF NemotronHConfig's defaults
    c->eos_token_id = 2;
    c->pad_token_id = 0;
    FTD_RETURN_IF_ERROR(ParseCommonFields(root, r, "NemotronHForCausalLM", c));
    SetFamilyConstants(c);
    c->attention_bias = false;  // HF's NemotronHAttention has no biases whatever attention_bias says
    c->rms_norm_eps = 1e-5;
    FTD_RETURN_IF_ERROR(r.Double("layer_norm_epsilon", &c->rms_norm_eps, false));
    FTD_RETURN_IF_ERROR(r.Int("vocab_size", &c->vocab_size, true));
    FTD_RETURN_IF_ERROR(r.Int("hidden_size", &c->hidden_size, true));
    c->intermediate_size = 21504;
    FTD_RETURN_IF_ERROR(r.Int("intermediate_size", &c->intermediate_size, false));
    c->max_position_embeddings = 4096;
    FTD_RETURN_IF_ERROR(r.Int("max_position_embeddings", &c->max_position_embeddings, false));

    // The stack: layers_block_type (v5; layer_types is its alias), else hybrid_override_pattern.
    std::vector<std::string> names;
    const char* list_field = r.Has("layers_block_type") ? "layers_block_type" : "layer_types";
    FTD_RETURN_IF_ERROR(r.StringList(list_field, &names));
    c->layer_blocks.clear();
    if (!names.empty()) {
      for (const std::string& n : names) {
        LayerBlock b;
        if (!BlockFromName(n, &b)) {
          return r.Invalid(absl::StrCat("\"", list_field, "\": \"", n,
                                        "\" is not one of linear_attention (mamba), full_attention (attention), "
                                        "mlp, moe"));
        }
        c->layer_blocks.push_back(b);
      }
    } else if (r.Has("hybrid_override_pattern")) {
      std::string pattern;
      FTD_RETURN_IF_ERROR(r.String("hybrid_override_pattern", &pattern, true));
      for (char ch : pattern) {
        LayerBlock b;
        if (!BlockFromLetter(ch, &b)) {
          return r.Invalid(absl::StrCat("\"hybrid_override_pattern\": '", std::string(1, ch),
                                        "' is not one of M (mamba), * (attention), - (mlp), E (moe)"));
        }
        c->layer_blocks.push_back(b);
      }
    } else {
      c->layer_blocks = {LayerBlock::kMamba, LayerBlock::kMoe, LayerBlock::kAttention, LayerBlock::kMlp};  // HF's
    }
    if (c->layer_blocks.empty()) return r.Invalid(absl::StrCat("\"", list_field, "\" is empty"));
    c->num_hidden_layers = static_cast<int64_t>(c->layer_blocks.size());
    int64_t declared_layers = c->num_hidden_layers;
    FTD_RETURN_IF_ERROR(r.Int("num_hidden_layers", &declared_layers, false));
    if (declared_layers != c->num_hidden_layers) {
      return r.Invalid(absl::StrCat("\"num_hidden_layers\" is ", declared_layers, " but the layer pattern has ",
                                    c->num_hidden_layers, " layers"));
    }

    // Attention (no rope, no biases).
    c->num_attention_heads = 32;
    FTD_RETURN_IF_ERROR(r.Int("num_attention_heads", &c->num_attention_heads, false));
    c->num_key_value_heads = 8;
    FTD_RETURN_IF_ERROR(r.Int("num_key_value_heads", &c->num_key_value_heads, false));
    c->head_dim = 128;
    FTD_RETURN_IF_ERROR(r.Int("head_dim", &c->head_dim, false));
    double dropout = 0.0;
    FTD_RETURN_IF_ERROR(r.Double("attention_dropout", &dropout, false));
    if (dropout != 0.0) return r.Invalid("\"attention_dropout\" must be 0 (attention dropout is not implemented)");

    // MLPs and experts: relu^2 without biases.
    std::string act = "relu2";
    FTD_RETURN_IF_ERROR(r.String("mlp_hidden_act", &act, false));
    if (act != "relu2") return r.Invalid(absl::StrCat("\"mlp_hidden_act\" \"", act, "\" is not supported (relu2)"));
    FTD_RETURN_IF_ERROR(RefuseIfTrue(r, "mlp_bias", "MLP and latent projection biases are not implemented"));

    // Mamba2 (HF's names, then the legacy ones its config remaps).
    MambaConfig& m = c->mamba;
    m.num_heads = 128;
    m.head_dim = 64;
    m.state_size = 128;
    m.n_groups = 8;
    FTD_RETURN_IF_ERROR(r.Int("mamba_num_heads", &m.num_heads, false));
    FTD_RETURN_IF_ERROR(r.Int("mamba_head_dim", &m.head_dim, false));
    FTD_RETURN_IF_ERROR(r.Int("ssm_state_size", &m.state_size, false));
    FTD_RETURN_IF_ERROR(IntAny(r, {"n_groups", "mamba_n_groups"}, &m.n_groups));
    FTD_RETURN_IF_ERROR(IntAny(r, {"conv_kernel", "mamba_d_conv"}, &m.conv_kernel));
    FTD_RETURN_IF_ERROR(IntAny(r, {"chunk_size", "mamba_chunk_size"}, &m.chunk_size));
    FTD_RETURN_IF_ERROR(r.Bool("use_conv_bias", &m.conv_bias));
    FTD_RETURN_IF_ERROR(r.Bool("mamba_conv_bias", &m.conv_bias));
    FTD_RETURN_IF_ERROR(DoubleAny(r, {"time_step_min", "mamba_dt_min"}, &m.time_step_min));
    FTD_RETURN_IF_ERROR(DoubleAny(r, {"time_step_max", "mamba_dt_max"}, &m.time_step_max));
    FTD_RETURN_IF_ERROR(DoubleAny(r, {"time_step_floor", "mamba_dt_init_floor"}, &m.time_step_floor));
    for (const char* key : {"time_step_limit", "mamba_dt_limit"}) {
      auto it = root.find(key);
      if (it == root.end() || it->is_null()) continue;
      double lo = 0, hi = 0;
      if (!it->is_array() || it->size() != 2 || !TimeStepBound((*it)[0], &lo) || !TimeStepBound((*it)[1], &hi) ||
          !(lo >= 0) || !(hi > lo)) {
        return r.Bad(key, "[min, max] with 0 <= min < max (max may be Infinity)");
      }
      m.time_step_min_limit = lo;
      m.time_step_max_limit = std::isinf(hi) ? 0.0 : hi;
    }
    std::string mamba_act = "silu";
    FTD_RETURN_IF_ERROR(r.String("mamba_hidden_act", &mamba_act, false));
    if (mamba_act != "silu") {
      return r.Invalid(absl::StrCat("\"mamba_hidden_act\" \"", mamba_act, "\" is not supported (silu)"));
    }
    FTD_RETURN_IF_ERROR(RefuseIfTrue(r, "use_bias", "in_proj/out_proj biases are not implemented"));

    // MoE.
    c->num_experts = 8;
    FTD_RETURN_IF_ERROR(r.Int("n_routed_experts", &c->num_experts, false));
    FTD_RETURN_IF_ERROR(r.Int("num_local_experts", &c->num_experts, false));
    c->num_experts_per_tok = 2;
    FTD_RETURN_IF_ERROR(r.Int("num_experts_per_tok", &c->num_experts_per_tok, false));
    c->moe_intermediate_size = 7688;
    FTD_RETURN_IF_ERROR(r.Int("moe_intermediate_size", &c->moe_intermediate_size, false));
    c->shared_expert_intermediate_size = 7688;
    FTD_RETURN_IF_ERROR(r.Int("moe_shared_expert_intermediate_size", &c->shared_expert_intermediate_size, false));
    FTD_RETURN_IF_ERROR(r.Int("moe_latent_size", &c->moe_latent_size, false));
    FTD_RETURN_IF_ERROR(r.Double("routed_scaling_factor", &c->routed_scaling_factor, false));
    FTD_RETURN_IF_ERROR(r.Int("n_group", &c->n_group, false));
    FTD_RETURN_IF_ERROR(r.Int("topk_group", &c->topk_group, false));
    FTD_RETURN_IF_ERROR(r.Bool("norm_topk_prob", &c->norm_topk_prob));
    FTD_RETURN_IF_ERROR(r.Bool("output_router_logits", &c->output_router_logits));
    FTD_RETURN_IF_ERROR(r.Int("num_nextn_predict_layers", &c->num_nextn_predict_layers, false));
    FTD_RETURN_IF_ERROR(r.StringList("mtp_layers_block_type", &c->mtp_layer_blocks));
    if (c->mtp_layer_blocks.empty() && r.Has("mtp_hybrid_override_pattern")) {
      std::string pattern;
      FTD_RETURN_IF_ERROR(r.String("mtp_hybrid_override_pattern", &pattern, true));
      for (LayerBlock b : Pattern(pattern)) c->mtp_layer_blocks.push_back(BlockName(b));
    }

    FTD_RETURN_IF_ERROR(ValidateCommon(r, *c));
    auto positive = [&](const char* name, int64_t v) -> absl::Status {
      if (v <= 0) return r.Invalid(absl::StrCat("\"", name, "\" must be positive"));
      return absl::OkStatus();
    };
    FTD_RETURN_IF_ERROR(positive("head_dim", c->head_dim));
    FTD_RETURN_IF_ERROR(positive("intermediate_size", c->intermediate_size));
    FTD_RETURN_IF_ERROR(positive("mamba_num_heads", m.num_heads));
    FTD_RETURN_IF_ERROR(positive("mamba_head_dim", m.head_dim));
    FTD_RETURN_IF_ERROR(positive("ssm_state_size", m.state_size));
    FTD_RETURN_IF_ERROR(positive("n_groups", m.n_groups));
    FTD_RETURN_IF_ERROR(positive("conv_kernel", m.conv_kernel));
    FTD_RETURN_IF_ERROR(positive("chunk_size", m.chunk_size));
    if (m.num_heads % m.n_groups != 0) {
      return r.Invalid(absl::StrCat("\"n_groups\" (", m.n_groups, ") must divide mamba_num_heads (", m.num_heads, ")"));
    }
    if (c->num_experts <= 0) return r.Invalid("\"n_routed_experts\" must be positive");
    FTD_RETURN_IF_ERROR(positive("moe_intermediate_size", c->moe_intermediate_size));
    FTD_RETURN_IF_ERROR(positive("moe_shared_expert_intermediate_size", c->shared_expert_intermediate_size));
    if (c->moe_latent_size < 0) return r.Invalid("\"moe_latent_size\" must be positive or null");
    FTD_RETURN_IF_ERROR(ValidateGroupLimitedRouting(r, *c));
    if (c->num_nextn_predict_layers < 0) return r.Invalid("\"num_nextn_predict_layers\" must not be negative");
    return absl::OkStatus();
  }

  std::string ToJson(const ModelConfig& c) const override {
    // The fields HF's NemotronHConfig.save_pretrained writes.
    const MambaConfig& m = c.mamba;
    auto token = [](int64_t id) { return id < 0 ? json(nullptr) : json(id); };
    json j = json::object();
    j["architectures"] = json::array({c.architecture});
    j["attention_bias"] = false;
    j["attention_dropout"] = 0.0;
    j["bos_token_id"] = token(c.bos_token_id);
    j["chunk_size"] = m.chunk_size;
    j["conv_kernel"] = m.conv_kernel;
    j["dtype"] = c.dtype;
    j["eos_token_id"] = token(c.eos_token_id);
    j["head_dim"] = c.head_dim;
    j["hidden_size"] = c.hidden_size;
    j["initializer_range"] = c.initializer_range;
    j["intermediate_size"] = c.intermediate_size;
    j["layer_norm_epsilon"] = c.rms_norm_eps;
    json blocks = json::array();
    for (LayerBlock b : c.layer_blocks) blocks.push_back(BlockName(b));
    j["layers_block_type"] = blocks;
    j["mamba_head_dim"] = m.head_dim;
    j["mamba_hidden_act"] = "silu";
    j["mamba_num_heads"] = m.num_heads;
    j["max_position_embeddings"] = c.max_position_embeddings;
    j["mlp_bias"] = false;
    j["mlp_hidden_act"] = "relu2";
    j["model_type"] = c.model_type;
    j["moe_intermediate_size"] = c.moe_intermediate_size;
    j["moe_latent_size"] = c.moe_latent_size > 0 ? json(c.moe_latent_size) : json(nullptr);
    j["moe_shared_expert_intermediate_size"] = c.shared_expert_intermediate_size;
    j["n_group"] = c.n_group;
    j["n_groups"] = m.n_groups;
    j["n_routed_experts"] = c.num_experts;
    j["n_shared_experts"] = 1;
    j["norm_topk_prob"] = c.norm_topk_prob;
    j["num_attention_heads"] = c.num_attention_heads;
    j["num_experts_per_tok"] = c.num_experts_per_tok;
    j["num_key_value_heads"] = c.num_key_value_heads;
    j["num_nextn_predict_layers"] = c.num_nextn_predict_layers;
    if (!c.mtp_layer_blocks.empty()) j["mtp_layers_block_type"] = c.mtp_layer_blocks;
    j["output_router_logits"] = c.output_router_logits;
    j["pad_token_id"] = token(c.pad_token_id);
    j["routed_scaling_factor"] = c.routed_scaling_factor;
    j["ssm_state_size"] = m.state_size;
    j["tie_word_embeddings"] = c.tie_word_embeddings;
    j["time_step_floor"] = m.time_step_floor;
    j["time_step_limit"] = json::array({m.time_step_min_limit, m.time_step_max_limit > 0
                                                                  ? json(m.time_step_max_limit)
                                                                  : json({{"__float__", "Infinity"}})});
    j["time_step_max"] = m.time_step_max;
    j["time_step_min"] = m.time_step_min;
    j["topk_group"] = c.topk_group;
    j["use_bias"] = false;
    j["use_cache"] = true;
    j["use_conv_bias"] = m.conv_bias;
    j["vocab_size"] = c.vocab_size;
    return j.dump(2) + "\n";
  }

  std::vector<TensorSpec> Layout(const ModelConfig& c) const override {
    LayoutBuilder out(c);
    const int64_t H = c.hidden_size;
    const MambaConfig& m = c.mamba;
    out.Add("backbone.embeddings.weight", Slot::kEmbed, -1, {c.vocab_size, H});
    for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
      const std::string p = absl::StrCat("backbone.layers.", l, ".");
      const std::string x = p + "mixer.";
      out.Norm(p + "norm.weight", Slot::kInputNorm, l, H);
      switch (c.BlockOf(l)) {
        case LayerBlock::kMamba:
          out.Matmul(x + "in_proj.weight", Slot::kMambaInProj, l, {m.in_proj_size(), H});
          out.Add(x + "conv1d.weight", Slot::kMambaConvWeight, l, {m.conv_dim(), 1, m.conv_kernel});
          if (m.conv_bias) out.Add(x + "conv1d.bias", Slot::kMambaConvBias, l, {m.conv_dim()}, TensorRole::kBias);
          out.Add(x + "A_log", Slot::kMambaALog, l, {m.num_heads});
          out.Add(x + "D", Slot::kMambaD, l, {m.num_heads}, TensorRole::kNorm);  // ones at init, as HF
          out.Add(x + "dt_bias", Slot::kMambaDtBias, l, {m.num_heads}, TensorRole::kBias);
          out.Norm(x + "norm.weight", Slot::kMambaNorm, l, m.intermediate());
          out.Matmul(x + "out_proj.weight", Slot::kMambaOutProj, l, {H, m.intermediate()});
          break;
        case LayerBlock::kAttention:
          out.Matmul(x + "q_proj.weight", Slot::kQProj, l, {c.q_dim(), H});
          out.Matmul(x + "k_proj.weight", Slot::kKProj, l, {c.kv_dim(), H});
          out.Matmul(x + "v_proj.weight", Slot::kVProj, l, {c.kv_dim(), H});
          out.Matmul(x + "o_proj.weight", Slot::kOProj, l, {H, c.q_dim()});
          break;
        case LayerBlock::kMlp:
          out.Matmul(x + "up_proj.weight", Slot::kMlpUp, l, {c.intermediate_size, H});
          out.Matmul(x + "down_proj.weight", Slot::kMlpDown, l, {H, c.intermediate_size});
          break;
        case LayerBlock::kMoe: {
          const int64_t E = c.num_experts, F = c.moe_intermediate_size, K = c.expert_width();
          const int64_t Fs = c.shared_expert_intermediate_size;
          out.Matmul(x + "gate.weight", Slot::kRouter, l, {E, H});
          out.Add(x + "gate.e_score_correction_bias", Slot::kRouterBias, l, {E}, TensorRole::kBuffer);
          out.Add(x + "experts.gate_up", Slot::kExpertsGateUp, l, {E, K, F}, TensorRole::kWeight, true, true)
              .expert_names = ExpertNames::kUpDown;
          out.Add(x + "experts.down", Slot::kExpertsDown, l, {E, F, K}, TensorRole::kWeight, true, true).expert_names =
              ExpertNames::kUpDown;
          if (c.moe_latent_size > 0) {
            out.Matmul(x + "fc1_latent_proj.weight", Slot::kLatentDown, l, {K, H});
            out.Matmul(x + "fc2_latent_proj.weight", Slot::kLatentUp, l, {H, K});
          }
          out.Matmul(x + "shared_experts.up_proj.weight", Slot::kSharedUp, l, {Fs, H});
          out.Matmul(x + "shared_experts.down_proj.weight", Slot::kSharedDown, l, {H, Fs});
          break;
        }
      }
    }
    out.Norm("backbone.norm_f.weight", Slot::kFinalNorm, -1, H);
    if (!c.tie_word_embeddings) out.Add("lm_head.weight", Slot::kLmHead, -1, {c.vocab_size, H});
    return std::move(out).Take();
  }

  std::vector<std::string> PresetNames() const override { return {"tiny-nemotron-h", "nemotron-nano-3-30b-a3b"}; }

  absl::StatusOr<ModelConfig> Preset(const std::string& name) const override {
    ModelConfig c;
    c.model_type = model_type();
    c.architecture = "NemotronHForCausalLM";
    SetFamilyConstants(&c);
    c.bos_token_id = 1;
    c.eos_token_id = 2;
    c.pad_token_id = 0;
    c.rms_norm_eps = 1e-5;
    if (name == "tiny-nemotron-h") {
      // CPU-sized with every block kind and feature: Mamba2 with 2 B/C groups and a chunk that
      // does not divide the usual sequence lengths, attention (GQA 2:1), a relu^2 MLP, MoE with
      // groups, a shared expert and LatentMoE.
      c.layer_blocks = Pattern("ME*E-M");
      c.vocab_size = 512;
      c.hidden_size = 64;
      c.intermediate_size = 96;
      c.num_attention_heads = 4;
      c.num_key_value_heads = 2;
      c.head_dim = 16;
      c.max_position_embeddings = 4096;
      c.mamba = {/*num_heads=*/8, /*head_dim=*/16, /*state_size=*/16, /*n_groups=*/2, /*conv_kernel=*/4,
                 /*chunk_size=*/16};
      c.num_experts = 8;
      c.num_experts_per_tok = 2;
      c.moe_intermediate_size = 32;
      c.shared_expert_intermediate_size = 48;
      c.moe_latent_size = 32;
      c.n_group = 4;
      c.topk_group = 2;
      c.routed_scaling_factor = 2.5;
    } else if (name == "nemotron-nano-3-30b-a3b") {
      // nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16's config.json.
      c.layer_blocks = Pattern("MEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEMEM*EMEMEMEME");
      c.vocab_size = 131072;
      c.hidden_size = 2688;
      c.intermediate_size = 1856;
      c.num_attention_heads = 32;
      c.num_key_value_heads = 2;
      c.head_dim = 128;
      c.max_position_embeddings = 262144;
      c.mamba = {/*num_heads=*/64, /*head_dim=*/64, /*state_size=*/128, /*n_groups=*/8, /*conv_kernel=*/4,
                 /*chunk_size=*/128};
      c.num_experts = 128;
      c.num_experts_per_tok = 6;
      c.moe_intermediate_size = 1856;
      c.shared_expert_intermediate_size = 3712;
      c.n_group = 1;
      c.topk_group = 1;
      c.routed_scaling_factor = 2.5;
      c.dtype = "bfloat16";
    } else {
      return absl::NotFoundError(absl::StrCat("nemotron_h has no preset \"", name, "\""));
    }
    c.num_hidden_layers = static_cast<int64_t>(c.layer_blocks.size());
    return c;
  }
};

}  // namespace

const ModelFamily& NemotronHFamily() {
  static const NemotronH family;
  return family;
}

}  // namespace ftd::engine
