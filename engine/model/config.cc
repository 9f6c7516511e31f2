#include "engine/model/config.h"

#include <algorithm>
#include <cmath>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "engine/model/registry.h"
#include "engine/model/tensor_layout.h"

namespace ftd::engine {

bool ModelConfig::IsMoeLayer(int64_t layer) const {
  if (IsHybrid()) return num_experts > 0 && BlockOf(layer) == LayerBlock::kMoe;
  if (num_experts <= 0 || layer < first_k_dense_replace) return false;
  if (std::find(mlp_only_layers.begin(), mlp_only_layers.end(), layer) != mlp_only_layers.end()) return false;
  return (layer + 1) % decoder_sparse_step == 0;
}

bool ModelConfig::IsSlidingLayer(int64_t layer) const {
  return sliding_window > 0 && layer >= 0 && layer < static_cast<int64_t>(layer_types.size()) &&
         layer_types[static_cast<size_t>(layer)] == "sliding_attention";
}

int64_t ModelConfig::NumAttentionLayers() const {
  if (!IsHybrid()) return num_hidden_layers;
  return std::count(layer_blocks.begin(), layer_blocks.end(), LayerBlock::kAttention);
}

int64_t ModelConfig::NumMambaLayers() const {
  return std::count(layer_blocks.begin(), layer_blocks.end(), LayerBlock::kMamba);
}

int64_t ModelConfig::NumMoeLayers() const {
  int64_t n = 0;
  for (int64_t l = 0; l < num_hidden_layers; ++l) n += IsMoeLayer(l) ? 1 : 0;
  return n;
}

double ModelConfig::AttentionScale() const {
  double scale = 1.0 / std::sqrt(static_cast<double>(qk_head_dim()));
  // HF yarn_apply_mscale: MLA models scale q·k by mscale(factor, mscale_all_dim)^2 as well.
  if (attention == AttentionKind::kMla && rope.type != "default" && rope.mscale_all_dim != 0 && rope.factor > 1) {
    const double m = 0.1 * rope.mscale_all_dim * std::log(rope.factor) + 1.0;
    scale *= m * m;
  }
  return scale;
}

int64_t ModelConfig::TotalParameters() const { return CountParameters(*this).total; }

int64_t ModelConfig::ActiveParameters() const { return CountParameters(*this).active; }

double ModelConfig::TrainingFlopsPerToken(int64_t seq) const {
  // 6 × (active GEMM parameters of the layers [attention projections, router, k of E experts,
  // shared experts, dense MLPs] + V·H) + causal attention L × 3 × S × H_q × (d_qk + d_v)
  // (fwd+bwd, halved for the mask; = L × 6 × S × H_q·d_head when d_qk = d_v).
  double gemm = 0;
  for (const TensorSpec& t : ModelTensorLayout(*this)) {
    if (!t.matmul || t.layer < 0) continue;
    double n = static_cast<double>(t.numel());
    if (t.expert) n = n / num_experts * num_experts_per_tok;
    gemm += n;
  }
  const double dense = 6.0 * (gemm + static_cast<double>(vocab_size) * hidden_size);
  const double attention = NumAttentionLayers() * 3.0 * seq * static_cast<double>(num_attention_heads) *
                           static_cast<double>(qk_head_dim() + v_head_dim());
  // Mamba2's SSD scan in its chunked (matmul) form, per token and layer, forward: C·B^T scores
  // within the chunk (Q·N per group), their product with x (Q·P per head) (both halved for
  // the causal mask), the chunk state B^T x and its read-out C·state (N·P per head each);
  // 2 FLOPs per multiply-add, x3 for forward and backward.
  const double Q = static_cast<double>(std::min<int64_t>(mamba.chunk_size, seq));
  const double N = static_cast<double>(mamba.state_size), P = static_cast<double>(mamba.head_dim);
  const double ssd = 3.0 * 2.0 *
                     (0.5 * Q * N * static_cast<double>(mamba.n_groups) +
                      static_cast<double>(mamba.num_heads) * (0.5 * Q * P + 2.0 * N * P));
  return dense + attention + NumMambaLayers() * ssd;
}

namespace {

// Source fields never carried into a saved config.json: the saved weights are unquantised
// (GPT-OSS's MXFP4 experts are dequantised at load), and the saved dtype is the family's "dtype".
bool NeverCarried(const std::string& field) {
  return field == "quantization_config" || field == "torch_dtype" || field == "dtype";
}

// The fields of `root` that the family's own config.json (`modeled`) does not write.
std::string CarriedFields(const nlohmann::json& root, const nlohmann::json& modeled) {
  nlohmann::json carried = nlohmann::json::object();
  for (auto it = root.begin(); it != root.end(); ++it) {
    if (!modeled.contains(it.key()) && !NeverCarried(it.key())) carried[it.key()] = it.value();
  }
  return carried.empty() ? std::string() : carried.dump();
}

}  // namespace

absl::StatusOr<ModelConfig> ParseModelConfig(const std::string& json_text, const std::string& source) {
  nlohmann::json root = nlohmann::json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded() || !root.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": not a JSON object"));
  }
  auto it = root.find("model_type");
  if (it == root.end() || it->is_null()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": missing required field \"model_type\""));
  }
  if (!it->is_string()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": field \"model_type\" must be a string"));
  }
  ModelConfig c;
  c.model_type = it->get<std::string>();
  const ModelFamily* family = FindModelFamily(c.model_type);
  if (family == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": model_type \"", c.model_type,
                                                   "\" is not supported (supported: ", SupportedModelTypes(), ")"));
  }
  FTD_RETURN_IF_ERROR(family->Parse(root, source, &c));
  c.carried_fields_json = CarriedFields(root, nlohmann::json::parse(family->ToJson(c)));
  return c;
}

absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& model_dir) {
  std::string path = absl::StrCat(model_dir, "/config.json");
  FTD_ASSIGN_OR_RETURN(std::string text, ReadFileToString(path));
  return ParseModelConfig(text, path);
}

std::string ModelConfigToJson(const ModelConfig& c) {
  const ModelFamily* family = FindModelFamily(c.model_type);
  if (family == nullptr) return "{}\n";
  if (c.carried_fields_json.empty()) return family->ToJson(c);
  nlohmann::json out = nlohmann::json::parse(family->ToJson(c));
  const nlohmann::json carried = nlohmann::json::parse(c.carried_fields_json, nullptr, /*allow_exceptions=*/false);
  if (carried.is_object()) {
    for (auto it = carried.begin(); it != carried.end(); ++it) {
      if (!out.contains(it.key())) out[it.key()] = it.value();  // the family's own value wins
    }
  }
  return out.dump(2) + "\n";
}

std::vector<std::string> PresetNames() {
  std::vector<std::string> names;
  for (const ModelFamily* f : ModelFamilies()) {
    for (std::string& n : f->PresetNames()) names.push_back(std::move(n));
  }
  return names;
}

absl::StatusOr<ModelConfig> PresetConfig(const std::string& name) {
  for (const ModelFamily* f : ModelFamilies()) {
    auto names = f->PresetNames();
    if (std::find(names.begin(), names.end(), name) != names.end()) return f->Preset(name);
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown preset \"", name, "\" (known: ", absl::StrJoin(PresetNames(), ", "), ")"));
}

ModelConfig WithLayers(const ModelConfig& config, int64_t layers) {
  ModelConfig c = config;
  c.num_hidden_layers = layers;
  if (!config.layer_types.empty()) {
    c.layer_types.resize(static_cast<size_t>(layers));
    for (size_t l = config.layer_types.size(); l < c.layer_types.size(); ++l) {
      c.layer_types[l] = config.layer_types[l % config.layer_types.size()];
    }
  }
  if (!config.layer_blocks.empty()) {
    c.layer_blocks.resize(static_cast<size_t>(layers));
    for (size_t l = config.layer_blocks.size(); l < c.layer_blocks.size(); ++l) {
      c.layer_blocks[l] = config.layer_blocks[l % config.layer_blocks.size()];
    }
  }
  return c;
}

}  // namespace ftd::engine
