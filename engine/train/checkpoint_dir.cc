#include "engine/train/checkpoint_dir.h"

#include <algorithm>
#include <filesystem>
#include <regex>
#include <utility>
#include <vector>

#include "common/file_util.h"
#include "nlohmann/json.hpp"

namespace ftd::engine {
namespace fs = std::filesystem;
namespace {
const std::regex& CheckpointName() {
  static const std::regex kName("checkpoint-([0-9]+)");
  return kName;
}
}  // namespace

std::optional<ResumePoint> FindResumePoint(const std::string& output) {
  std::optional<ResumePoint> best;
  std::error_code ec;
  if (!fs::is_directory(output, ec)) return best;
  for (const auto& entry : fs::directory_iterator(output, ec)) {
    std::smatch m;
    std::string name = entry.path().filename().string();
    if (!std::regex_match(name, m, CheckpointName())) continue;
    auto state = ReadFileToString((entry.path() / "training_state" / "trainer_state.json").string());
    if (!state.ok()) continue;
    auto j = nlohmann::json::parse(*state, nullptr, false);
    if (j.is_discarded()) continue;
    ResumePoint p{entry.path().string(), j.value("step", int64_t{0}),
                  {j.value("epoch", int64_t{0}), j.value("index", int64_t{0})},
                  j.value("world_size", int64_t{1}), j.value("ep_size", int64_t{1})};
    if (!best || p.step > best->step) best = p;
  }
  return best;
}

void PruneCheckpoints(const std::string& output, int64_t keep_last) {
  if (keep_last <= 0) return;
  std::vector<std::pair<int64_t, fs::path>> found;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(output, ec)) {
    std::smatch m;
    std::string name = entry.path().filename().string();
    if (std::regex_match(name, m, CheckpointName())) found.emplace_back(std::stoll(m[1]), entry.path());
  }
  std::sort(found.begin(), found.end());
  for (size_t i = 0; i + keep_last < found.size(); ++i) (void)RemoveTree(found[i].second.string());
}

void CopyTokenizerFiles(const std::string& from, const std::string& to) {
  for (const char* name : {"tokenizer.json", "tokenizer_config.json", "generation_config.json",
                           "special_tokens_map.json", "chat_template.jinja"}) {
    std::error_code ec;
    fs::path src = fs::path(from) / name;
    if (fs::exists(src, ec)) fs::copy_file(src, fs::path(to) / name, fs::copy_options::overwrite_existing, ec);
  }
}

}  // namespace ftd::engine
