// The per-step metrics file of `ftd-train train --metrics-out FILE` (the cross-team contract in
// CONTRACT.md): JSON lines appended as training goes. Every rank writes its own step lines
// (rank 0 to FILE, rank R > 0 to FILE.rank<R>); rank 0 also writes the checkpoint and done
// events. Each line is flushed as soon as it is written, so a reader tailing the file sees
// complete lines only.
#pragma once

#include <cstdio>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "engine/train/trainer.h"

namespace ftd::engine {

// FILE for rank 0 (and for one process), FILE.rank<R> otherwise.
std::string MetricsFilePath(const std::string& base, int rank, int world_size);

// The JSON line of one step (without the newline), with the contract's field names.
std::string StepMetricsLine(const StepReport& r);

class MetricsFile {
 public:
  // Opens (creating, appending) the rank's file; errors name the path.
  static absl::StatusOr<std::unique_ptr<MetricsFile>> Open(const std::string& base, int rank, int world_size);
  ~MetricsFile();
  MetricsFile(const MetricsFile&) = delete;
  MetricsFile& operator=(const MetricsFile&) = delete;

  const std::string& path() const { return path_; }
  absl::Status WriteStep(const StepReport& r);
  // {"event":"checkpoint","step":N,"path":"/abs/dir"}
  absl::Status WriteCheckpoint(int64_t step, const std::string& dir);
  // {"event":"done","step":N,"path":"/abs/final/checkpoint"}
  absl::Status WriteDone(int64_t step, const std::string& dir);
  // {"event":"eval","step":N,"loss":X,"targets":T} (rank 0)
  absl::Status WriteEval(int64_t step, double loss, int64_t targets);

 private:
  MetricsFile(std::string path, std::FILE* f) : path_(std::move(path)), file_(f) {}
  absl::Status WriteLine(const std::string& line);
  std::string path_;
  std::FILE* file_;
};

}  // namespace ftd::engine
