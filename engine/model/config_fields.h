// Helpers the families share to read and write config.json (LibTorch-free): typed field
// readers whose errors name the field and the file, and the rope parameters.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/status/status.h"
#include "engine/model/config.h"

namespace ftd::engine {

class FieldReader {
 public:
  FieldReader(const nlohmann::json& obj, std::string source) : obj_(obj), source_(std::move(source)) {}

  // Absent or null leaves *out unchanged unless required (then an error naming the field).
  absl::Status Int(const char* key, int64_t* out, bool required = false) const;
  absl::Status Double(const char* key, double* out, bool required = false) const;
  absl::Status Bool(const char* key, bool* out) const;
  absl::Status String(const char* key, std::string* out, bool required = false) const;
  absl::Status IntList(const char* key, std::vector<int64_t>* out) const;
  absl::Status StringList(const char* key, std::vector<std::string>* out) const;
  // A token id: an integer, null (-1), or a list (the first is kept).
  absl::Status TokenId(const char* key, int64_t* out) const;
  // Whether the field is present and not null.
  bool Has(const char* key) const;

  absl::Status Bad(const std::string& key, const std::string& want) const;
  absl::Status Invalid(const std::string& message) const;  // "<source>: <message>"
  const std::string& source() const { return source_; }

 private:
  absl::Status Missing(const char* key, bool required) const;
  const nlohmann::json& obj_;
  std::string source_;
};

// rope_theta + rope_parameters (v5) or rope_scaling (v4): type, factor, llama3 and yarn fields
// (mscale, mscale_all_dim, truncate included). `default_factor_from_lengths`: yarn's factor,
// when absent, is max_position_embeddings / original_max_position_embeddings (HF v5).
absl::Status ParseRope(const nlohmann::json& root, const std::string& source, int64_t max_position_embeddings,
                       RopeConfig* rope);
// rope_parameters as HF v5 writes them (rope_theta inside).
nlohmann::json RopeToJson(const RopeConfig& rope);

// The fields every family reads the same way: architecture (architectures[0] or `fallback`),
// dtype / torch_dtype, token ids, rms_norm_eps, initializer_range, tie_word_embeddings,
// hidden_act (silu only), attention_bias.
absl::Status ParseCommonFields(const nlohmann::json& root, const FieldReader& r, const std::string& fallback_architecture,
                               ModelConfig* c);
// The fields every family writes the same way (HF v5 names): architectures, attention_bias,
// attention_dropout, token ids, dtype, hidden_act, hidden_size, initializer_range,
// intermediate_size, max_position_embeddings, model_type, num_attention_heads,
// num_experts_per_tok, num_hidden_layers, num_key_value_heads, output_router_logits,
// rms_norm_eps, rope_parameters, tie_word_embeddings, use_cache, vocab_size.
nlohmann::json CommonFieldsToJson(const ModelConfig& c);
// Checks shared by every family: positive sizes, a supported dtype, k in [1, E].
absl::Status ValidateCommon(const FieldReader& r, const ModelConfig& c);
// DeepSeek-style group-limited routing (DeepSeek-V3, Nemotron-H): n_group divides the experts,
// topk_group in [1, n_group], groups of at least 2 experts, k within the kept groups.
absl::Status ValidateGroupLimitedRouting(const FieldReader& r, const ModelConfig& c);

}  // namespace ftd::engine
