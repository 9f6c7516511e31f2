// model_type -> model family, as TorchTitan's ModelSpec: a family parses its config.json (every
// HF field it has), writes it back, lists its tensors (engine/model/tensor_layout.h: the ONLY
// list of its HF tensor names) and names its presets. The layer stack itself is data in the
// config (attention kind, which layers are sparse, shared experts), so the decoder
// (engine/model/transformer.h) builds every family from the same blocks. LibTorch-free.
//
// Adding a family: engine/model/families/<model_type>/<model_type>.cc defining a ModelFamily,
// and one line in registry.cc.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/model/config.h"
#include "engine/model/tensor_layout.h"

namespace ftd::engine {

class ModelFamily {
 public:
  virtual ~ModelFamily() = default;
  virtual const char* model_type() const = 0;    // "deepseek_v3"
  virtual const char* display_name() const = 0;  // "DeepSeek-V3"
  // Fills `c` (model_type already set) from config.json's object; errors name the field and
  // `source`.
  virtual absl::Status Parse(const nlohmann::json& root, const std::string& source, ModelConfig* c) const = 0;
  // config.json text in HF's v5 format, loadable by transformers.
  virtual std::string ToJson(const ModelConfig& c) const = 0;
  // Every tensor of the model, in checkpoint order.
  virtual std::vector<TensorSpec> Layout(const ModelConfig& c) const = 0;
  virtual std::vector<std::string> PresetNames() const = 0;
  // NOT_FOUND for a name that is not one of PresetNames().
  virtual absl::StatusOr<ModelConfig> Preset(const std::string& name) const = 0;
};

// The family of `model_type`, or null.
const ModelFamily* FindModelFamily(const std::string& model_type);
std::vector<const ModelFamily*> ModelFamilies();
// "qwen3_moe, deepseek_v3, ...", for errors.
std::string SupportedModelTypes();

}  // namespace ftd::engine
