#include "engine/model/registry.h"

#include "absl/strings/str_join.h"

namespace ftd::engine {

// Defined in engine/model/families/<model_type>/.
const ModelFamily& Qwen3MoeFamily();
const ModelFamily& DeepseekV3Family();
const ModelFamily& MixtralFamily();
const ModelFamily& Qwen2MoeFamily();
const ModelFamily& OlmoeFamily();
const ModelFamily& GptOssFamily();
const ModelFamily& NemotronHFamily();

std::vector<const ModelFamily*> ModelFamilies() {
  return {&Qwen3MoeFamily(), &DeepseekV3Family(), &MixtralFamily(), &Qwen2MoeFamily(), &OlmoeFamily(),
          &GptOssFamily(), &NemotronHFamily()};
}

const ModelFamily* FindModelFamily(const std::string& model_type) {
  for (const ModelFamily* f : ModelFamilies()) {
    if (model_type == f->model_type()) return f;
  }
  return nullptr;
}

std::string SupportedModelTypes() {
  std::vector<std::string> names;
  for (const ModelFamily* f : ModelFamilies()) names.push_back(f->model_type());
  return absl::StrJoin(names, ", ");
}

}  // namespace ftd::engine
