#include "engine/train/metrics_file.h"

#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace ftd::engine {
namespace {

// JSON has no NaN/Inf: a value that cannot be measured (or diverged) is written as 0 for the
// timing fields; a non-finite loss is written as null so a reader can tell it apart.
double Finite(double v) { return std::isfinite(v) ? v : 0.0; }

std::string AbsolutePath(const std::string& p) {
  std::error_code ec;
  std::filesystem::path abs = std::filesystem::absolute(p, ec);
  return ec ? p : abs.lexically_normal().string();
}

}  // namespace

std::string MetricsFilePath(const std::string& base, int rank, int world_size) {
  if (world_size <= 1 || rank == 0) return base;
  return absl::StrCat(base, ".rank", rank);
}

std::string StepMetricsLine(const StepReport& r) {
  nlohmann::ordered_json j = nlohmann::ordered_json::object();
  j["event"] = "step";
  j["rank"] = r.rank;
  j["world_size"] = r.world_size;
  j["step"] = r.step;
  j["total_steps"] = r.total_steps;
  j["epoch"] = r.epoch;
  j["tokens"] = r.tokens;
  j["loss"] = std::isfinite(r.loss) ? nlohmann::ordered_json(r.loss) : nlohmann::ordered_json(nullptr);
  j["grad_norm"] = std::isfinite(r.grad_norm) ? nlohmann::ordered_json(r.grad_norm) : nlohmann::ordered_json(nullptr);
  j["lr"] = Finite(r.lr);
  j["step_seconds"] = Finite(r.step_seconds);
  j["forward_seconds"] = Finite(r.forward_seconds);
  j["backward_seconds"] = Finite(r.backward_seconds);
  j["optimizer_seconds"] = Finite(r.optimizer_seconds);
  j["all_to_all_seconds"] = Finite(r.all_to_all_seconds);
  j["tokens_per_second"] = Finite(r.tokens_per_second);
  j["tokens_per_second_per_gpu"] = Finite(r.tokens_per_second_per_gpu);
  j["tflops_per_gpu"] = Finite(r.tflops_per_gpu);
  j["mfu"] = Finite(r.mfu);
  j["peak_memory_bytes"] = r.peak_memory_bytes;
  j["reserved_memory_bytes"] = r.reserved_memory_bytes;
  j["expert_load_imbalance"] = Finite(r.expert_load_imbalance);
  return j.dump();
}

absl::StatusOr<std::unique_ptr<MetricsFile>> MetricsFile::Open(const std::string& base, int rank, int world_size) {
  if (base.empty()) return absl::InvalidArgumentError("--metrics-out: empty path");
  std::string path = MetricsFilePath(base, rank, world_size);
  std::FILE* f = std::fopen(path.c_str(), "a");
  if (f == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("--metrics-out: cannot open ", path, ": ", std::strerror(errno)));
  }
  return std::unique_ptr<MetricsFile>(new MetricsFile(std::move(path), f));
}

MetricsFile::~MetricsFile() {
  if (file_ != nullptr) std::fclose(file_);
}

absl::Status MetricsFile::WriteLine(const std::string& line) {
  std::string text = line + "\n";
  if (std::fwrite(text.data(), 1, text.size(), file_) != text.size() || std::fflush(file_) != 0) {
    return absl::InternalError(absl::StrCat("cannot write metrics to ", path_, ": ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

absl::Status MetricsFile::WriteStep(const StepReport& r) { return WriteLine(StepMetricsLine(r)); }

absl::Status MetricsFile::WriteCheckpoint(int64_t step, const std::string& dir) {
  nlohmann::ordered_json j = {{"event", "checkpoint"}, {"step", step}, {"path", AbsolutePath(dir)}};
  return WriteLine(j.dump());
}

absl::Status MetricsFile::WriteDone(int64_t step, const std::string& dir) {
  nlohmann::ordered_json j = {{"event", "done"}, {"step", step}, {"path", AbsolutePath(dir)}};
  return WriteLine(j.dump());
}

absl::Status MetricsFile::WriteEval(int64_t step, double loss, int64_t targets) {
  nlohmann::ordered_json j = {{"event", "eval"}, {"step", step}, {"loss", loss}, {"targets", targets}};
  return WriteLine(j.dump());
}

}  // namespace ftd::engine
