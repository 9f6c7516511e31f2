#include "engine/model/tensor_layout.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "engine/model/config.h"
#include "engine/model/registry.h"

namespace ftd::engine {

int64_t TensorSpec::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string ExpertTensorName(const TensorSpec& spec, int64_t expert, const char* proj) {
  // spec.name is "<experts module>.gate_up" or "<experts module>.down".
  const std::string module = spec.name.substr(0, spec.name.rfind('.'));
  std::string name = proj;
  if (spec.expert_names == ExpertNames::kW1W3W2) {
    name = name == "gate_proj" ? "w1" : name == "up_proj" ? "w3" : "w2";
  }
  return absl::StrCat(module, ".", expert, ".", name, ".weight");
}

std::vector<TensorSpec> ModelTensorLayout(const ModelConfig& config) {
  const ModelFamily* family = FindModelFamily(config.model_type);
  return family == nullptr ? std::vector<TensorSpec>{} : family->Layout(config);
}

ParameterCounts CountParameters(const ModelConfig& config) {
  ParameterCounts c;
  std::vector<int64_t> layer_dense(static_cast<size_t>(std::max<int64_t>(config.num_hidden_layers, 0)), 0);
  for (const TensorSpec& t : ModelTensorLayout(config)) {
    const int64_t n = t.numel();
    if (t.role == TensorRole::kBuffer) {
      c.buffers += n;
      continue;
    }
    c.total += n;
    if (t.expert) {
      c.expert += n;
      c.active += n / config.num_experts * config.num_experts_per_tok;
    } else {
      c.dense += n;
      c.active += n;
      if (t.layer >= 0 && t.layer < config.num_hidden_layers) {
        layer_dense[static_cast<size_t>(t.layer)] += n;
        c.layer_dense += n;
      }
    }
  }
  for (int64_t n : layer_dense) c.max_layer_dense = std::max(c.max_layer_dense, n);
  return c;
}

}  // namespace ftd::engine
