// `ftctl model inspect DIR`: what a Hugging Face MoE checkpoint is, from its config.json and
// the headers of its .safetensors files (read directly: 8-byte little-endian length, JSON),
// without loading any tensor and without LibTorch. For the families the engine trains the
// parameter counts are the engine's own (engine/model/tensor_layout.h, from config.json); for
// others they are summed from the headers.
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include <nlohmann/json.hpp>

#include "absl/status/statusor.h"

namespace ftd::client {

struct ModelSummary {
  std::string dir;
  std::string model_type;    // config.json model_type, e.g. "qwen3_moe"
  std::string architecture;  // architectures[0]
  std::string family;        // human name: "Qwen3-MoE"
  bool supported = false;    // the engine trains this family (engine/model/registry.h)
  std::string config_error;  // why config.json does not parse as its family, if it does not
  int64_t layers = 0;
  int64_t hidden_size = 0;
  int64_t vocab_size = 0;
  int64_t experts = 0;            // routed experts per MoE layer (0: dense)
  int64_t experts_per_token = 0;  // top-k
  int64_t shared_experts = 0;
  int64_t moe_intermediate_size = 0;
  std::string config_dtype;       // torch_dtype / dtype of config.json
  // From the safetensors headers (tensor_count 0 when the directory has no weights).
  int64_t tensor_count = 0;
  int64_t safetensors_files = 0;
  std::map<std::string, int64_t> dtype_params;  // "BF16" -> parameters stored in it
  int64_t parameters_total = 0;
  int64_t parameters_active = 0;  // per token: non-expert + routed experts x k / E
  int64_t expert_parameters = 0;  // routed experts, all of them
  bool parameters_estimated = false;  // from config.json (no weights present)
  std::string parameters_source;      // "family layout (config.json)" or "safetensors headers"
  int64_t parameters_stored = 0;      // summed over the stored tensors (MTP layers, buffers included)
  int64_t size_on_disk = 0;  // bytes of all files in DIR (not following symlinks' targets' dirs)

  std::string dtype() const;  // the dominant stored dtype, else the config's
  nlohmann::json ToJson() const;
};

absl::StatusOr<ModelSummary> InspectModel(const std::string& dir);

// Reads one safetensors header: tensor name -> {dtype, shape, data_offsets}. Errors name the
// file and what is wrong (short file, header length beyond the file, bad JSON).
absl::StatusOr<nlohmann::json> ReadSafetensorsHeader(const std::string& path);

}  // namespace ftd::client
