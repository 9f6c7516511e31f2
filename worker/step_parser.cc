#include "worker/step_parser.h"

#include <cmath>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "nlohmann/json.hpp"

namespace ftd::worker {
namespace {

bool ParseSeconds(absl::string_view v, double* out) {
  absl::ConsumeSuffix(&v, "s");
  return absl::SimpleAtod(v, out);
}

}  // namespace

std::optional<ftd::v1::RankReport> ParseStdoutLine(absl::string_view line, int world_size,
                                                   bool steps_from_metrics_file) {
  line = absl::StripAsciiWhitespace(line);
  ftd::v1::RankReport r;
  if (absl::ConsumePrefix(&line, "final checkpoint: ")) {
    if (steps_from_metrics_file) return std::nullopt;
    r.set_final_checkpoint(std::string(line));
    return r;
  }
  if (absl::ConsumePrefix(&line, "checkpoint ")) {
    if (steps_from_metrics_file) return std::nullopt;
    std::string path(line);
    const size_t dash = path.rfind("checkpoint-");
    int64_t step = 0;
    if (dash == std::string::npos || !absl::SimpleAtoi(path.substr(dash + 11), &step)) {
      return std::nullopt;
    }
    r.mutable_checkpoint()->set_step(step);
    r.mutable_checkpoint()->set_path(path);
    return r;
  }
  if (absl::ConsumePrefix(&line, "eval ")) {
    // eval step N/M loss X targets T
    if (steps_from_metrics_file) return std::nullopt;
    std::vector<absl::string_view> f = absl::StrSplit(line, ' ', absl::SkipEmpty());
    if (f.size() < 4 || f[0] != "step" || f[2] != "loss") return std::nullopt;
    std::pair<absl::string_view, absl::string_view> nm = absl::StrSplit(f[1], absl::MaxSplits('/', 1));
    int64_t step = 0, targets = 0;
    double loss = 0;
    if (!absl::SimpleAtoi(nm.first, &step) || !absl::SimpleAtod(f[3], &loss) || !std::isfinite(loss)) {
      return std::nullopt;
    }
    if (f.size() >= 6 && f[4] == "targets") absl::SimpleAtoi(f[5], &targets);
    r.mutable_eval()->set_step(step);
    r.mutable_eval()->set_loss(loss);
    r.mutable_eval()->set_targets(targets);
    return r;
  }
  if (!absl::StartsWith(line, "step ") || steps_from_metrics_file) return std::nullopt;
  std::vector<absl::string_view> f = absl::StrSplit(line, ' ', absl::SkipEmpty());
  if (f.size() < 4) return std::nullopt;
  std::pair<absl::string_view, absl::string_view> nm = absl::StrSplit(f[1], absl::MaxSplits('/', 1));
  int64_t step = 0, total = 0;
  if (!absl::SimpleAtoi(nm.first, &step) || !absl::SimpleAtoi(nm.second, &total)) return std::nullopt;
  ftd::v1::StepReport* s = r.mutable_step();
  s->mutable_progress()->set_step(step);
  s->mutable_progress()->set_total_steps(total);
  ftd::v1::JobMetrics* m = s->mutable_metrics();
  m->set_world_size(world_size);
  double tps = 0;
  for (size_t i = 2; i + 1 < f.size(); i += 2) {
    double v = 0;
    const absl::string_view key = f[i];
    if (!ParseSeconds(f[i + 1], &v)) continue;
    if (key == "loss") m->set_loss(v);
    else if (key == "grad_norm") m->set_grad_norm(v);
    else if (key == "lr") m->set_lr(v);
    else if (key == "tokens/s") tps = v;
    else if (key == "step_time") m->set_step_seconds(v);
    else if (key == "a2a") m->set_all_to_all_seconds(v);
  }
  if (world_size > 0) m->set_tokens_per_second_per_gpu(tps / world_size);
  const int64_t tokens = std::llround(tps * m->step_seconds());
  m->set_tokens(tokens);
  s->mutable_progress()->set_tokens(tokens * step);
  return r;
}

std::optional<ftd::v1::RankReport> ParseMetricsLine(absl::string_view line) {
  nlohmann::json j = nlohmann::json::parse(std::string(line), nullptr, /*allow_exceptions=*/false);
  if (!j.is_object() || !j.contains("event") || !j["event"].is_string()) return std::nullopt;
  auto num = [&](const char* k) -> double {
    auto it = j.find(k);
    return it != j.end() && it->is_number() ? it->get<double>() : 0.0;
  };
  const std::string event = j["event"].get<std::string>();
  ftd::v1::RankReport r;
  if (event == "step") {
    ftd::v1::StepReport* s = r.mutable_step();
    auto* p = s->mutable_progress();
    p->set_step(static_cast<int64_t>(num("step")));
    p->set_total_steps(static_cast<int64_t>(num("total_steps")));
    p->set_epoch(static_cast<int32_t>(num("epoch")));
    p->set_tokens(static_cast<int64_t>(num("tokens")) * p->step());
    ftd::v1::JobMetrics* m = s->mutable_metrics();
    m->set_tokens_per_second_per_gpu(num("tokens_per_second_per_gpu"));
    m->set_model_tflops_per_gpu(num("tflops_per_gpu"));
    m->set_mfu(num("mfu"));
    m->set_peak_memory_bytes(static_cast<int64_t>(num("peak_memory_bytes")));
    m->set_loss(num("loss"));
    m->set_grad_norm(num("grad_norm"));
    m->set_lr(num("lr"));
    m->set_step_seconds(num("step_seconds"));
    m->set_forward_seconds(num("forward_seconds"));
    m->set_backward_seconds(num("backward_seconds"));
    m->set_optimizer_seconds(num("optimizer_seconds"));
    m->set_all_to_all_seconds(num("all_to_all_seconds"));
    m->set_reserved_memory_bytes(static_cast<int64_t>(num("reserved_memory_bytes")));
    m->set_expert_load_imbalance(num("expert_load_imbalance"));
    m->set_tokens(static_cast<int64_t>(num("tokens")));
    m->set_world_size(static_cast<int32_t>(num("world_size")));
    return r;
  }
  if (event == "eval") {
    auto step = j.find("step");
    auto loss = j.find("loss");
    if (step == j.end() || !step->is_number() || loss == j.end() || !loss->is_number()) return std::nullopt;
    r.mutable_eval()->set_step(static_cast<int64_t>(num("step")));
    r.mutable_eval()->set_loss(num("loss"));
    r.mutable_eval()->set_targets(static_cast<int64_t>(num("targets")));
    return r;
  }
  auto path = j.find("path");
  if (path == j.end() || !path->is_string()) return std::nullopt;
  if (event == "checkpoint") {
    r.mutable_checkpoint()->set_step(static_cast<int64_t>(num("step")));
    r.mutable_checkpoint()->set_path(path->get<std::string>());
    return r;
  }
  if (event == "done") {
    r.set_final_checkpoint(path->get<std::string>());
    return r;
  }
  return std::nullopt;
}

}  // namespace ftd::worker
