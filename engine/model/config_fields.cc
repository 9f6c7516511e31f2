#include "engine/model/config_fields.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace ftd::engine {

using nlohmann::json;

absl::Status FieldReader::Int(const char* key, int64_t* out, bool required) const {
  auto it = obj_.find(key);
  if (it == obj_.end() || it->is_null()) return Missing(key, required);
  if (!it->is_number_integer()) return Bad(key, "an integer");
  *out = it->get<int64_t>();
  return absl::OkStatus();
}

absl::Status FieldReader::Double(const char* key, double* out, bool required) const {
  auto it = obj_.find(key);
  if (it == obj_.end() || it->is_null()) return Missing(key, required);
  if (!it->is_number()) return Bad(key, "a number");
  *out = it->get<double>();
  return absl::OkStatus();
}

absl::Status FieldReader::Bool(const char* key, bool* out) const {
  auto it = obj_.find(key);
  if (it == obj_.end() || it->is_null()) return absl::OkStatus();
  if (!it->is_boolean()) return Bad(key, "true or false");
  *out = it->get<bool>();
  return absl::OkStatus();
}

absl::Status FieldReader::String(const char* key, std::string* out, bool required) const {
  auto it = obj_.find(key);
  if (it == obj_.end() || it->is_null()) return Missing(key, required);
  if (!it->is_string()) return Bad(key, "a string");
  *out = it->get<std::string>();
  return absl::OkStatus();
}

absl::Status FieldReader::IntList(const char* key, std::vector<int64_t>* out) const {
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

absl::Status FieldReader::StringList(const char* key, std::vector<std::string>* out) const {
  auto it = obj_.find(key);
  if (it == obj_.end() || it->is_null()) return absl::OkStatus();
  if (!it->is_array()) return Bad(key, "a list of strings");
  out->clear();
  for (const auto& v : *it) {
    if (!v.is_string()) return Bad(key, "a list of strings");
    out->push_back(v.get<std::string>());
  }
  return absl::OkStatus();
}

absl::Status FieldReader::TokenId(const char* key, int64_t* out) const {
  auto it = obj_.find(key);
  if (it == obj_.end()) return absl::OkStatus();
  if (it->is_null()) {
    *out = -1;  // an explicit null stays null (over a family's default)
    return absl::OkStatus();
  }
  if (it->is_number_integer()) {
    *out = it->get<int64_t>();
  } else if (it->is_array() && !it->empty() && (*it)[0].is_number_integer()) {
    *out = (*it)[0].get<int64_t>();
  } else {
    return Bad(key, "an integer token id");
  }
  return absl::OkStatus();
}

bool FieldReader::Has(const char* key) const {
  auto it = obj_.find(key);
  return it != obj_.end() && !it->is_null();
}

absl::Status FieldReader::Bad(const std::string& key, const std::string& want) const {
  return absl::InvalidArgumentError(absl::StrCat(source_, ": field \"", key, "\" must be ", want));
}

absl::Status FieldReader::Invalid(const std::string& message) const {
  return absl::InvalidArgumentError(absl::StrCat(source_, ": ", message));
}

absl::Status FieldReader::Missing(const char* key, bool required) const {
  if (!required) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(source_, ": missing required field \"", key, "\""));
}

absl::Status ParseRope(const json& root, const std::string& source, int64_t max_position_embeddings,
                       RopeConfig* rope) {
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
  const bool has_factor = r.Has("factor");
  FTD_RETURN_IF_ERROR(r.Double("factor", &rope->factor, false));
  FTD_RETURN_IF_ERROR(r.Double("low_freq_factor", &rope->low_freq_factor, false));
  FTD_RETURN_IF_ERROR(r.Double("high_freq_factor", &rope->high_freq_factor, false));
  FTD_RETURN_IF_ERROR(
      r.Int("original_max_position_embeddings", &rope->original_max_position_embeddings, false));
  FTD_RETURN_IF_ERROR(r.Double("beta_fast", &rope->beta_fast, false));
  FTD_RETURN_IF_ERROR(r.Double("beta_slow", &rope->beta_slow, false));
  FTD_RETURN_IF_ERROR(r.Double("attention_factor", &rope->attention_factor, false));
  FTD_RETURN_IF_ERROR(r.Double("mscale", &rope->mscale, false));
  FTD_RETURN_IF_ERROR(r.Double("mscale_all_dim", &rope->mscale_all_dim, false));
  FTD_RETURN_IF_ERROR(r.Bool("truncate", &rope->truncate));
  static const char* kSupported[] = {"default", "linear", "llama3", "yarn"};
  if (std::find(std::begin(kSupported), std::end(kSupported), rope->type) == std::end(kSupported)) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": ", field, ".rope_type \"", rope->type,
                                                   "\" is not supported (default, linear, llama3, yarn)"));
  }
  if (rope->type == "yarn" || rope->type == "llama3") {
    // HF v5 (standardize_rope_params): the pretraining length defaults to max_position_embeddings.
    if (rope->original_max_position_embeddings <= 0) rope->original_max_position_embeddings = max_position_embeddings;
  }
  if (rope->type == "yarn" && !has_factor && rope->original_max_position_embeddings > 0) {
    rope->factor = static_cast<double>(max_position_embeddings) / rope->original_max_position_embeddings;
  }
  if (rope->type != "default" && !(rope->factor > 0)) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": ", field, ".factor must be positive"));
  }
  return absl::OkStatus();
}

json RopeToJson(const RopeConfig& r) {
  json rope = {{"rope_type", r.type}, {"rope_theta", r.theta}};
  if (r.type != "default") rope["factor"] = r.factor;
  if (r.type == "llama3") {
    rope["low_freq_factor"] = r.low_freq_factor;
    rope["high_freq_factor"] = r.high_freq_factor;
  }
  if (r.type == "llama3" || r.type == "yarn") {
    rope["original_max_position_embeddings"] = r.original_max_position_embeddings;
  }
  if (r.type == "yarn") {
    rope["beta_fast"] = r.beta_fast;
    rope["beta_slow"] = r.beta_slow;
    if (r.attention_factor > 0) rope["attention_factor"] = r.attention_factor;
    if (r.mscale > 0) rope["mscale"] = r.mscale;
    if (r.mscale_all_dim > 0) rope["mscale_all_dim"] = r.mscale_all_dim;
    if (!r.truncate) rope["truncate"] = false;
  }
  return rope;
}

absl::Status ParseCommonFields(const json& root, const FieldReader& r, const std::string& fallback_architecture,
                               ModelConfig* c) {
  c->architecture = fallback_architecture;
  if (auto it = root.find("architectures"); it != root.end() && it->is_array() && !it->empty() &&
                                            (*it)[0].is_string()) {
    c->architecture = (*it)[0].get<std::string>();
  }
  FTD_RETURN_IF_ERROR(r.Double("rms_norm_eps", &c->rms_norm_eps, false));
  FTD_RETURN_IF_ERROR(r.Bool("attention_bias", &c->attention_bias));
  FTD_RETURN_IF_ERROR(r.String("hidden_act", &c->hidden_act, false));
  if (c->hidden_act != "silu") {
    return r.Invalid(absl::StrCat("hidden_act \"", c->hidden_act, "\" is not supported (silu)"));
  }
  FTD_RETURN_IF_ERROR(r.Bool("tie_word_embeddings", &c->tie_word_embeddings));
  FTD_RETURN_IF_ERROR(r.Double("initializer_range", &c->initializer_range, false));
  FTD_RETURN_IF_ERROR(r.String("torch_dtype", &c->dtype, false));
  FTD_RETURN_IF_ERROR(r.String("dtype", &c->dtype, false));
  FTD_RETURN_IF_ERROR(r.TokenId("bos_token_id", &c->bos_token_id));
  FTD_RETURN_IF_ERROR(r.TokenId("eos_token_id", &c->eos_token_id));
  FTD_RETURN_IF_ERROR(r.TokenId("pad_token_id", &c->pad_token_id));
  return absl::OkStatus();
}

json CommonFieldsToJson(const ModelConfig& c) {
  json j = json::object();
  j["architectures"] = json::array({c.architecture});
  j["attention_bias"] = c.attention_bias;
  j["attention_dropout"] = 0.0;
  auto token = [](int64_t id) { return id < 0 ? json(nullptr) : json(id); };
  j["bos_token_id"] = token(c.bos_token_id);
  j["eos_token_id"] = token(c.eos_token_id);
  j["pad_token_id"] = token(c.pad_token_id);
  j["dtype"] = c.dtype;
  j["hidden_act"] = c.hidden_act;
  j["hidden_size"] = c.hidden_size;
  j["initializer_range"] = c.initializer_range;
  j["intermediate_size"] = c.intermediate_size;
  j["max_position_embeddings"] = c.max_position_embeddings;
  j["model_type"] = c.model_type;
  j["num_attention_heads"] = c.num_attention_heads;
  j["num_experts_per_tok"] = c.num_experts_per_tok;
  j["num_hidden_layers"] = c.num_hidden_layers;
  j["num_key_value_heads"] = c.num_key_value_heads;
  j["output_router_logits"] = c.output_router_logits;
  j["rms_norm_eps"] = c.rms_norm_eps;
  j["rope_parameters"] = RopeToJson(c.rope);
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  j["use_cache"] = true;
  j["vocab_size"] = c.vocab_size;
  return j;
}

absl::Status ValidateCommon(const FieldReader& r, const ModelConfig& c) {
  auto positive = [&](const char* name, int64_t v) -> absl::Status {
    if (v <= 0) return r.Invalid(absl::StrCat("\"", name, "\" must be positive"));
    return absl::OkStatus();
  };
  FTD_RETURN_IF_ERROR(positive("vocab_size", c.vocab_size));
  FTD_RETURN_IF_ERROR(positive("hidden_size", c.hidden_size));
  FTD_RETURN_IF_ERROR(positive("num_hidden_layers", c.num_hidden_layers));
  FTD_RETURN_IF_ERROR(positive("num_attention_heads", c.num_attention_heads));
  FTD_RETURN_IF_ERROR(positive("num_key_value_heads", c.num_key_value_heads));
  if (c.num_attention_heads % c.num_key_value_heads != 0) {
    return r.Invalid(absl::StrCat("num_attention_heads (", c.num_attention_heads,
                                  ") must be a multiple of num_key_value_heads (", c.num_key_value_heads, ")"));
  }
  if (c.num_experts < 0) return r.Invalid("the number of experts must not be negative");
  if (c.num_experts > 0 && (c.num_experts_per_tok <= 0 || c.num_experts_per_tok > c.num_experts)) {
    return r.Invalid(absl::StrCat("num_experts_per_tok must be in [1, num_experts=", c.num_experts, "]"));
  }
  if (c.dtype != "float32" && c.dtype != "bfloat16" && c.dtype != "float16") {
    return r.Invalid(absl::StrCat("dtype \"", c.dtype, "\" is not supported"));
  }
  return absl::OkStatus();
}

absl::Status ValidateGroupLimitedRouting(const FieldReader& r, const ModelConfig& c) {
  if (c.n_group <= 0 || c.num_experts % c.n_group != 0) {
    return r.Invalid(absl::StrCat("n_group (", c.n_group, ") must divide n_routed_experts (", c.num_experts, ")"));
  }
  if (c.topk_group <= 0 || c.topk_group > c.n_group) {
    return r.Invalid(absl::StrCat("topk_group must be in [1, n_group=", c.n_group, "]"));
  }
  if (c.num_experts / c.n_group < 2 && c.n_group > 1) {
    return r.Invalid("each expert group needs at least 2 experts (groups are ranked by their two best)");
  }
  if (c.num_experts_per_tok > c.topk_group * (c.num_experts / c.n_group)) {
    return r.Invalid("num_experts_per_tok exceeds the experts of topk_group groups");
  }
  return absl::OkStatus();
}

}  // namespace ftd::engine
