#include "client/model_inspect.h"

#include <dirent.h>
#include <sys/stat.h>

#include <cstdio>
#include <fstream>
#include <regex>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "engine/model/config.h"
#include "engine/model/registry.h"
#include "engine/model/tensor_layout.h"

namespace ftd::client {
namespace {

int64_t GetInt(const nlohmann::json& c, std::initializer_list<const char*> keys, int64_t fallback = 0) {
  for (const char* k : keys) {
    auto it = c.find(k);
    if (it != c.end() && it->is_number_integer()) return it->get<int64_t>();
  }
  return fallback;
}

std::string FamilyName(const std::string& model_type) {
  static const std::map<std::string, std::string> kNames = {
      {"qwen3_moe", "Qwen3-MoE"},       {"qwen2_moe", "Qwen2-MoE"},  {"deepseek_v3", "DeepSeek-V3"},
      {"deepseek_v2", "DeepSeek-V2"},   {"mixtral", "Mixtral"},      {"gpt_oss", "GPT-OSS"},
      {"nemotron_h", "Nemotron-H"},     {"olmoe", "OLMoE"},          {"qwen3", "Qwen3 (dense)"},
      {"llama", "Llama (dense)"},       {"glm4_moe", "GLM-4-MoE"},   {"granitemoe", "Granite-MoE"}};
  auto it = kNames.find(model_type);
  return it == kNames.end() ? (model_type.empty() ? "unknown" : model_type) : it->second;
}

int64_t ElementCount(const nlohmann::json& shape) {
  int64_t n = 1;
  for (const auto& d : shape) n *= d.get<int64_t>();
  return n;
}

// Sum of the sizes of regular files under `dir` (recursively).
int64_t DiskUsage(const std::string& dir) {
  int64_t total = 0;
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return 0;
  while (dirent* e = ::readdir(d)) {
    std::string name = e->d_name;
    if (name == "." || name == "..") continue;
    std::string path = dir + "/" + name;
    struct stat st;
    if (::stat(path.c_str(), &st) != 0) continue;
    if (S_ISDIR(st.st_mode)) {
      total += DiskUsage(path);
    } else if (S_ISREG(st.st_mode)) {
      total += st.st_size;
    }
  }
  ::closedir(d);
  return total;
}

// The engine's counts for a family it trains (the same code as the engine's and the plan's).
bool CountFromFamily(const std::string& config_text, const std::string& source, ModelSummary* s) {
  absl::StatusOr<engine::ModelConfig> config = engine::ParseModelConfig(config_text, source);
  if (!config.ok()) {
    s->config_error = std::string(config.status().message());
    return false;
  }
  // The family's parse is authoritative where config.json has no num_hidden_layers (Nemotron-H
  // counts its layers_block_type).
  s->layers = config->num_hidden_layers;
  const engine::ParameterCounts counts = engine::CountParameters(*config);
  s->parameters_total = counts.total;
  s->parameters_active = counts.active;
  s->expert_parameters = counts.expert;
  s->parameters_source = "family layout (config.json)";
  return true;
}

}  // namespace

absl::StatusOr<nlohmann::json> ReadSafetensorsHeader(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  in.seekg(0, std::ios::end);
  const int64_t size = in.tellg();
  in.seekg(0);
  unsigned char len_bytes[8];
  if (size < 8 || !in.read(reinterpret_cast<char*>(len_bytes), 8)) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": shorter than a safetensors header (8 bytes)"));
  }
  uint64_t len = 0;
  for (int i = 7; i >= 0; --i) len = (len << 8) | len_bytes[i];
  if (len > static_cast<uint64_t>(size - 8) || len > (uint64_t{100} << 20)) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": header length ", len, " exceeds the file (",
                                                   size, " bytes) or 100 MiB"));
  }
  std::string header(len, '\0');
  in.read(header.data(), static_cast<std::streamsize>(len));
  nlohmann::json j = nlohmann::json::parse(header, nullptr, false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": the header is not a JSON object"));
  }
  const uint64_t data_size = static_cast<uint64_t>(size) - 8 - len;
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (it.key() == "__metadata__") continue;
    const auto& t = it.value();
    if (!t.is_object() || !t.contains("dtype") || !t.contains("shape") || !t.contains("data_offsets") ||
        !t["shape"].is_array() || !t["data_offsets"].is_array() || t["data_offsets"].size() != 2) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": tensor ", it.key(),
                                                     ": needs dtype, shape and data_offsets [begin, end]"));
    }
    if (t["data_offsets"][1].get<uint64_t>() > data_size) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": tensor ", it.key(), ": data beyond the end of the file"));
    }
  }
  return j;
}

std::string ModelSummary::dtype() const {
  std::string best;
  int64_t most = -1;
  for (const auto& [dt, n] : dtype_params) {
    if (n > most) best = dt, most = n;
  }
  if (!best.empty()) return best;
  return config_dtype.empty() ? "unknown" : config_dtype;
}

nlohmann::json ModelSummary::ToJson() const {
  nlohmann::json j;
  j["dir"] = dir;
  j["family"] = family;
  j["model_type"] = model_type;
  j["architecture"] = architecture;
  j["layers"] = layers;
  j["hidden_size"] = hidden_size;
  j["vocab_size"] = vocab_size;
  j["experts"] = experts;
  j["experts_per_token"] = experts_per_token;
  j["shared_experts"] = shared_experts;
  j["moe_intermediate_size"] = moe_intermediate_size;
  j["dtype"] = dtype();
  j["dtype_parameters"] = dtype_params;
  j["parameters_total"] = parameters_total;
  j["parameters_active"] = parameters_active;
  j["expert_parameters"] = expert_parameters;
  j["parameters_estimated"] = parameters_estimated;
  j["parameters_source"] = parameters_source;
  j["parameters_stored"] = parameters_stored;
  j["supported"] = supported;
  if (!config_error.empty()) j["config_error"] = config_error;
  j["tensors"] = tensor_count;
  j["safetensors_files"] = safetensors_files;
  j["size_on_disk_bytes"] = size_on_disk;
  return j;
}

absl::StatusOr<ModelSummary> InspectModel(const std::string& dir) {
  struct stat st;
  if (::stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    return absl::NotFoundError(absl::StrCat(dir, ": not a directory"));
  }
  ModelSummary s;
  s.dir = dir;
  absl::StatusOr<std::string> text = ReadFileToString(dir + "/config.json");
  if (!text.ok()) return absl::NotFoundError(absl::StrCat(dir, "/config.json: cannot read (not an HF model directory?)"));
  nlohmann::json c = nlohmann::json::parse(*text, nullptr, false);
  if (c.is_discarded() || !c.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(dir, "/config.json: not a JSON object"));
  }
  // Multimodal wrappers keep the language model's config in text_config.
  if (c.contains("text_config") && c["text_config"].is_object() && !c.contains("num_hidden_layers")) {
    nlohmann::json t = c["text_config"];
    for (auto& k : {"architectures", "torch_dtype"}) {
      if (c.contains(k) && !t.contains(k)) t[k] = c[k];
    }
    c = t;
  }
  s.model_type = c.value("model_type", "");
  if (c.contains("architectures") && c["architectures"].is_array() && !c["architectures"].empty()) {
    s.architecture = c["architectures"][0].get<std::string>();
  }
  s.family = FamilyName(s.model_type);
  if (const engine::ModelFamily* f = engine::FindModelFamily(s.model_type)) {
    s.family = f->display_name();
    s.supported = true;
  }
  s.layers = GetInt(c, {"num_hidden_layers", "n_layer"});
  s.hidden_size = GetInt(c, {"hidden_size", "d_model"});
  s.vocab_size = GetInt(c, {"vocab_size"});
  s.experts = GetInt(c, {"num_experts", "n_routed_experts", "num_local_experts"});
  s.experts_per_token = GetInt(c, {"num_experts_per_tok", "num_experts_per_token", "moe_topk"});
  s.shared_experts = GetInt(c, {"n_shared_experts", "num_shared_experts"});
  if (s.shared_experts == 0 && GetInt(c, {"shared_expert_intermediate_size"}) > 0) s.shared_experts = 1;
  s.moe_intermediate_size = GetInt(c, {"moe_intermediate_size"});
  for (const char* k : {"torch_dtype", "dtype"}) {
    if (c.contains(k) && c[k].is_string()) s.config_dtype = c[k].get<std::string>();
  }

  // Weights: every *.safetensors file of the directory (sharded or not).
  std::set<std::string> files;
  if (DIR* d = ::opendir(dir.c_str())) {
    while (dirent* e = ::readdir(d)) {
      if (absl::EndsWith(e->d_name, ".safetensors")) files.insert(e->d_name);
    }
    ::closedir(d);
  }
  // Routed experts: per-expert HF keys (...experts.7.gate_proj...) or fused (...experts.gate_up_proj).
  static const std::regex kExpert(R"((^|\.)experts\.)");
  for (const std::string& f : files) {
    FTD_ASSIGN_OR_RETURN(nlohmann::json header, ReadSafetensorsHeader(dir + "/" + f));
    ++s.safetensors_files;
    for (auto it = header.begin(); it != header.end(); ++it) {
      if (it.key() == "__metadata__") continue;
      const int64_t n = ElementCount(it.value()["shape"]);
      ++s.tensor_count;
      s.parameters_total += n;
      s.dtype_params[it.value()["dtype"].get<std::string>()] += n;
      if (std::regex_search(it.key(), kExpert)) s.expert_parameters += n;
    }
  }
  s.parameters_stored = s.parameters_total;
  if (s.supported && CountFromFamily(c.dump(), dir + "/config.json", &s)) {
    s.parameters_estimated = s.tensor_count == 0;
  } else if (s.tensor_count > 0) {
    const int64_t non_expert = s.parameters_total - s.expert_parameters;
    s.parameters_active = s.experts > 0 && s.experts_per_token > 0
                              ? non_expert + s.expert_parameters * s.experts_per_token / s.experts
                              : s.parameters_total;
    s.parameters_source = "safetensors headers";
  } else {
    // Neither a family the engine knows nor weights: nothing to count from.
    s.expert_parameters = 0;
    s.parameters_source = "none";
  }
  s.size_on_disk = DiskUsage(dir);
  return s;
}

}  // namespace ftd::client
