#include "engine/model/config.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace ftd::engine {
namespace {

using nlohmann::json;

// Field readers that name the field on error.
class FieldReader {
 public:
  FieldReader(const json& obj, std::string source) : obj_(obj), source_(std::move(source)) {}

  absl::Status Int(const char* key, int64_t* out, bool required) {
    auto it = obj_.find(key);
    if (it == obj_.end() || it->is_null()) return Missing(key, required);
    if (!it->is_number_integer()) return Bad(key, "an integer");
    *out = it->get<int64_t>();
    return absl::OkStatus();
  }
  absl::Status Double(const char* key, double* out, bool required) {
    auto it = obj_.find(key);
    if (it == obj_.end() || it->is_null()) return Missing(key, required);
    if (!it->is_number()) return Bad(key, "a number");
    *out = it->get<double>();
    return absl::OkStatus();
  }
  absl::Status Bool(const char* key, bool* out) {
    auto it = obj_.find(key);
    if (it == obj_.end() || it->is_null()) return absl::OkStatus();
    if (!it->is_boolean()) return Bad(key, "true or false");
    *out = it->get<bool>();
    return absl::OkStatus();
  }
  absl::Status String(const char* key, std::string* out, bool required) {
    auto it = obj_.find(key);
    if (it == obj_.end() || it->is_null()) return Missing(key, required);
    if (!it->is_string()) return Bad(key, "a string");
    *out = it->get<std::string>();
    return absl::OkStatus();
  }
  absl::Status IntList(const char* key, std::vector<int64_t>* out) {
    auto it = obj_.find(key);
    if (it == obj_.end() || it->is_null()) return absl::OkStatus();
    if (!it->is_array()) return Bad(key, "a list of integers");
    out->clear();
    for (const auto& v : *it) {
      if (!v.is_number_integer()) return Bad(key, "a list of integers");
      out->push_back(v.get<int64_t>());
    }
    return absl::OkStatus();
  }
  // A token id: an integer, null, or a list (the first is kept).
  absl::Status TokenId(const char* key, int64_t* out) {
    auto it = obj_.find(key);
    if (it == obj_.end() || it->is_null()) return absl::OkStatus();
    if (it->is_number_integer()) {
      *out = it->get<int64_t>();
    } else if (it->is_array() && !it->empty() && (*it)[0].is_number_integer()) {
      *out = (*it)[0].get<int64_t>();
    } else {
      return Bad(key, "an integer token id");
    }
    return absl::OkStatus();
  }
  absl::Status Bad(const std::string& key, const char* want) const {
    return absl::InvalidArgumentError(absl::StrCat(source_, ": field \"", key, "\" must be ", want));
  }

 private:
  absl::Status Missing(const char* key, bool required) const {
    if (!required) return absl::OkStatus();
    return absl::InvalidArgumentError(absl::StrCat(source_, ": missing required field \"", key, "\""));
  }
  const json& obj_;
  std::string source_;
};

absl::Status ParseRope(const json& root, const std::string& source, RopeConfig* rope) {
  // v5 writes rope_parameters {rope_type, rope_theta, ...}; v4 rope_theta + rope_scaling.
  FieldReader top(root, source);
  FTD_RETURN_IF_ERROR(top.Double("rope_theta", &rope->theta, false));
  const json* params = nullptr;
  std::string field;
  for (const char* key : {"rope_parameters", "rope_scaling"}) {
    auto it = root.find(key);
    if (it != root.end() && !it->is_null()) {
      if (!it->is_object()) return top.Bad(key, "an object");
      params = &*it;
      field = key;
      break;
    }
  }
  if (params == nullptr) return absl::OkStatus();
  FieldReader r(*params, absl::StrCat(source, ": ", field));
  std::string type;
  FTD_RETURN_IF_ERROR(r.String("rope_type", &type, false));
  if (type.empty()) FTD_RETURN_IF_ERROR(r.String("type", &type, false));
  if (!type.empty()) rope->type = type;
  FTD_RETURN_IF_ERROR(r.Double("rope_theta", &rope->theta, false));
  FTD_RETURN_IF_ERROR(r.Double("factor", &rope->factor, false));
  FTD_RETURN_IF_ERROR(r.Double("low_freq_factor", &rope->low_freq_factor, false));
  FTD_RETURN_IF_ERROR(r.Double("high_freq_factor", &rope->high_freq_factor, false));
  FTD_RETURN_IF_ERROR(
      r.Int("original_max_position_embeddings", &rope->original_max_position_embeddings, false));
  FTD_RETURN_IF_ERROR(r.Double("beta_fast", &rope->beta_fast, false));
  FTD_RETURN_IF_ERROR(r.Double("beta_slow", &rope->beta_slow, false));
  FTD_RETURN_IF_ERROR(r.Double("attention_factor", &rope->attention_factor, false));
  static const char* kSupported[] = {"default", "linear", "llama3", "yarn"};
  if (std::find(std::begin(kSupported), std::end(kSupported), rope->type) == std::end(kSupported)) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": ", field, ".rope_type \"", rope->type,
                                                   "\" is not supported (default, linear, llama3, yarn)"));
  }
  return absl::OkStatus();
}

}  // namespace

bool ModelConfig::IsMoeLayer(int64_t layer) const {
  if (std::find(mlp_only_layers.begin(), mlp_only_layers.end(), layer) != mlp_only_layers.end()) {
    return false;
  }
  return num_experts > 0 && (layer + 1) % decoder_sparse_step == 0;
}

int64_t ModelConfig::NumMoeLayers() const {
  int64_t n = 0;
  for (int64_t l = 0; l < num_hidden_layers; ++l) n += IsMoeLayer(l) ? 1 : 0;
  return n;
}

namespace {
int64_t AttentionParams(const ModelConfig& c) {
  int64_t p = c.hidden_size * c.q_dim() + 2 * c.hidden_size * c.kv_dim() + c.q_dim() * c.hidden_size;
  if (c.attention_bias) p += c.q_dim() + 2 * c.kv_dim() + c.hidden_size;
  if (c.qk_norm) p += 2 * c.head_dim;
  return p + 2 * c.hidden_size;  // the two layer norms
}
}  // namespace

int64_t ModelConfig::TotalParameters() const {
  int64_t p = vocab_size * hidden_size * (tie_word_embeddings ? 1 : 2) + hidden_size;
  for (int64_t l = 0; l < num_hidden_layers; ++l) {
    p += AttentionParams(*this);
    p += IsMoeLayer(l) ? num_experts * 3 * hidden_size * moe_intermediate_size + num_experts * hidden_size
                       : 3 * hidden_size * intermediate_size;
  }
  return p;
}

int64_t ModelConfig::ActiveParameters() const {
  int64_t p = vocab_size * hidden_size * (tie_word_embeddings ? 1 : 2) + hidden_size;
  for (int64_t l = 0; l < num_hidden_layers; ++l) {
    p += AttentionParams(*this);
    p += IsMoeLayer(l) ? num_experts_per_tok * 3 * hidden_size * moe_intermediate_size + num_experts * hidden_size
                       : 3 * hidden_size * intermediate_size;
  }
  return p;
}

double ModelConfig::TrainingFlopsPerToken(int64_t seq) const {
  // 6 × (L × (attn_proj + router + k·3·H·F [dense layers: 3·H·F_dense]) + V·H)
  //   + L × 6 × S × H_q·d_head  (causal attention fwd+bwd, halved for the mask).
  double per_layer_sum = 0;
  const double attn_proj = static_cast<double>(hidden_size) * (2.0 * q_dim() + 2.0 * kv_dim());
  for (int64_t l = 0; l < num_hidden_layers; ++l) {
    double mlp = IsMoeLayer(l)
                     ? num_experts_per_tok * 3.0 * hidden_size * moe_intermediate_size +
                           static_cast<double>(hidden_size) * num_experts
                     : 3.0 * hidden_size * intermediate_size;
    per_layer_sum += attn_proj + mlp;
  }
  double dense = 6.0 * (per_layer_sum + static_cast<double>(vocab_size) * hidden_size);
  double attention = num_hidden_layers * 6.0 * seq * static_cast<double>(q_dim());
  return dense + attention;
}

absl::StatusOr<ModelConfig> ParseModelConfig(const std::string& json_text, const std::string& source) {
  json root = json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded() || !root.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": not a JSON object"));
  }
  ModelConfig c;
  FieldReader r(root, source);
  FTD_RETURN_IF_ERROR(r.String("model_type", &c.model_type, true));
  static const char* kFamilies[] = {"qwen3_moe"};
  if (std::find(std::begin(kFamilies), std::end(kFamilies), c.model_type) == std::end(kFamilies)) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": model_type \"", c.model_type,
                                                   "\" is not supported (supported: qwen3_moe)"));
  }
  c.architecture = "Qwen3MoeForCausalLM";
  if (auto it = root.find("architectures"); it != root.end() && it->is_array() && !it->empty() &&
                                            (*it)[0].is_string()) {
    c.architecture = (*it)[0].get<std::string>();
  }
  FTD_RETURN_IF_ERROR(r.Int("vocab_size", &c.vocab_size, true));
  FTD_RETURN_IF_ERROR(r.Int("hidden_size", &c.hidden_size, true));
  FTD_RETURN_IF_ERROR(r.Int("intermediate_size", &c.intermediate_size, true));
  FTD_RETURN_IF_ERROR(r.Int("moe_intermediate_size", &c.moe_intermediate_size, true));
  FTD_RETURN_IF_ERROR(r.Int("num_hidden_layers", &c.num_hidden_layers, true));
  FTD_RETURN_IF_ERROR(r.Int("num_attention_heads", &c.num_attention_heads, true));
  c.num_key_value_heads = c.num_attention_heads;
  FTD_RETURN_IF_ERROR(r.Int("num_key_value_heads", &c.num_key_value_heads, false));
  c.head_dim = c.num_attention_heads > 0 ? c.hidden_size / c.num_attention_heads : 0;
  FTD_RETURN_IF_ERROR(r.Int("head_dim", &c.head_dim, false));
  c.max_position_embeddings = 32768;
  FTD_RETURN_IF_ERROR(r.Int("max_position_embeddings", &c.max_position_embeddings, false));
  FTD_RETURN_IF_ERROR(r.Double("rms_norm_eps", &c.rms_norm_eps, false));
  FTD_RETURN_IF_ERROR(ParseRope(root, source, &c.rope));
  FTD_RETURN_IF_ERROR(r.Bool("attention_bias", &c.attention_bias));
  FTD_RETURN_IF_ERROR(r.String("hidden_act", &c.hidden_act, false));
  if (c.hidden_act != "silu") {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": hidden_act \"", c.hidden_act, "\" is not supported (silu)"));
  }
  FTD_RETURN_IF_ERROR(r.Bool("tie_word_embeddings", &c.tie_word_embeddings));
  FTD_RETURN_IF_ERROR(r.Double("initializer_range", &c.initializer_range, false));
  // HF v5 writes num_local_experts (attribute map); v4 configs num_experts.
  FTD_RETURN_IF_ERROR(r.Int("num_experts", &c.num_experts, false));
  FTD_RETURN_IF_ERROR(r.Int("num_local_experts", &c.num_experts, false));
  FTD_RETURN_IF_ERROR(r.Int("num_experts_per_tok", &c.num_experts_per_tok, true));
  FTD_RETURN_IF_ERROR(r.Bool("norm_topk_prob", &c.norm_topk_prob));
  FTD_RETURN_IF_ERROR(r.Int("decoder_sparse_step", &c.decoder_sparse_step, false));
  FTD_RETURN_IF_ERROR(r.IntList("mlp_only_layers", &c.mlp_only_layers));
  FTD_RETURN_IF_ERROR(r.Double("router_aux_loss_coef", &c.router_aux_loss_coef, false));
  FTD_RETURN_IF_ERROR(r.Bool("output_router_logits", &c.output_router_logits));
  FTD_RETURN_IF_ERROR(r.String("torch_dtype", &c.dtype, false));
  FTD_RETURN_IF_ERROR(r.String("dtype", &c.dtype, false));
  FTD_RETURN_IF_ERROR(r.TokenId("bos_token_id", &c.bos_token_id));
  FTD_RETURN_IF_ERROR(r.TokenId("eos_token_id", &c.eos_token_id));
  FTD_RETURN_IF_ERROR(r.TokenId("pad_token_id", &c.pad_token_id));

  auto positive = [&](const char* name, int64_t v) -> absl::Status {
    if (v <= 0) return absl::InvalidArgumentError(absl::StrCat(source, ": \"", name, "\" must be positive"));
    return absl::OkStatus();
  };
  FTD_RETURN_IF_ERROR(positive("vocab_size", c.vocab_size));
  FTD_RETURN_IF_ERROR(positive("hidden_size", c.hidden_size));
  FTD_RETURN_IF_ERROR(positive("num_hidden_layers", c.num_hidden_layers));
  FTD_RETURN_IF_ERROR(positive("num_attention_heads", c.num_attention_heads));
  FTD_RETURN_IF_ERROR(positive("num_key_value_heads", c.num_key_value_heads));
  FTD_RETURN_IF_ERROR(positive("head_dim", c.head_dim));
  FTD_RETURN_IF_ERROR(positive("decoder_sparse_step", c.decoder_sparse_step));
  if (c.num_attention_heads % c.num_key_value_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        source, ": num_attention_heads (", c.num_attention_heads, ") must be a multiple of num_key_value_heads (",
        c.num_key_value_heads, ")"));
  }
  if (c.num_experts > 0 && (c.num_experts_per_tok <= 0 || c.num_experts_per_tok > c.num_experts)) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": num_experts_per_tok must be in [1, num_experts=", c.num_experts, "]"));
  }
  if (c.dtype != "float32" && c.dtype != "bfloat16" && c.dtype != "float16") {
    return absl::InvalidArgumentError(absl::StrCat(source, ": dtype \"", c.dtype, "\" is not supported"));
  }
  return c;
}

absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& model_dir) {
  std::string path = absl::StrCat(model_dir, "/config.json");
  FTD_ASSIGN_OR_RETURN(std::string text, ReadFileToString(path));
  return ParseModelConfig(text, path);
}

std::string ModelConfigToJson(const ModelConfig& c) {
  json j = json::object();
  j["architectures"] = json::array({c.architecture});
  j["attention_bias"] = c.attention_bias;
  j["attention_dropout"] = 0.0;
  auto token = [](int64_t id) { return id < 0 ? json(nullptr) : json(id); };
  j["bos_token_id"] = token(c.bos_token_id);
  j["eos_token_id"] = token(c.eos_token_id);
  j["pad_token_id"] = token(c.pad_token_id);
  j["decoder_sparse_step"] = c.decoder_sparse_step;
  j["dtype"] = c.dtype;
  j["head_dim"] = c.head_dim;
  j["hidden_act"] = c.hidden_act;
  j["hidden_size"] = c.hidden_size;
  j["initializer_range"] = c.initializer_range;
  j["intermediate_size"] = c.intermediate_size;
  j["max_position_embeddings"] = c.max_position_embeddings;
  j["mlp_only_layers"] = c.mlp_only_layers;
  j["model_type"] = c.model_type;
  j["moe_intermediate_size"] = c.moe_intermediate_size;
  j["norm_topk_prob"] = c.norm_topk_prob;
  j["num_attention_heads"] = c.num_attention_heads;
  j["num_experts_per_tok"] = c.num_experts_per_tok;
  j["num_hidden_layers"] = c.num_hidden_layers;
  j["num_key_value_heads"] = c.num_key_value_heads;
  j["num_experts"] = c.num_experts;
  j["output_router_logits"] = c.output_router_logits;
  j["rms_norm_eps"] = c.rms_norm_eps;
  json rope = {{"rope_type", c.rope.type}, {"rope_theta", c.rope.theta}};
  if (c.rope.type != "default") rope["factor"] = c.rope.factor;
  if (c.rope.type == "llama3") {
    rope["low_freq_factor"] = c.rope.low_freq_factor;
    rope["high_freq_factor"] = c.rope.high_freq_factor;
  }
  if (c.rope.type == "llama3" || c.rope.type == "yarn") {
    rope["original_max_position_embeddings"] = c.rope.original_max_position_embeddings;
  }
  if (c.rope.type == "yarn") {
    rope["beta_fast"] = c.rope.beta_fast;
    rope["beta_slow"] = c.rope.beta_slow;
    if (c.rope.attention_factor > 0) rope["attention_factor"] = c.rope.attention_factor;
  }
  j["rope_parameters"] = rope;
  j["router_aux_loss_coef"] = c.router_aux_loss_coef;
  j["sliding_window"] = nullptr;
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  j["use_cache"] = true;
  j["use_sliding_window"] = false;
  j["vocab_size"] = c.vocab_size;
  return j.dump(2) + "\n";
}

std::vector<std::string> PresetNames() { return {"tiny", "qwen3-30b-a3b"}; }

absl::StatusOr<ModelConfig> PresetConfig(const std::string& name) {
  ModelConfig c;
  c.model_type = "qwen3_moe";
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
    return absl::InvalidArgumentError(
        absl::StrCat("unknown preset \"", name, "\" (known: ", absl::StrJoin(PresetNames(), ", "), ")"));
  }
  return c;
}

}  // namespace ftd::engine
