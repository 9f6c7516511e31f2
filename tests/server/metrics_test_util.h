// Helpers for the /metrics tests: a parser for the Prometheus text format (samples only) and
// a daemon-side driver that moves a job through its states and records metric samples, as the
// scheduler does.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "ftd/v1/jobs.pb.h"
#include "server/daemon.h"

namespace ftd::testing {

struct Sample {
  std::string name;
  std::map<std::string, std::string> labels;
  double value = 0;
};

// Parses the sample lines of a text exposition (comments skipped). Errors name the line.
absl::StatusOr<std::vector<Sample>> ParseExposition(const std::string& text);

// The value of the one sample named `name` whose labels include `labels`; nullopt when none.
std::optional<double> FindSample(const std::vector<Sample>& samples, const std::string& name,
                                 const std::map<std::string, std::string>& labels = {});
// How many samples are named `name` and include `labels`.
int CountSamples(const std::vector<Sample>& samples, const std::string& name,
                 const std::map<std::string, std::string>& labels = {});

// GET /metrics on `http_port`, parsed; the raw text goes to *raw when given.
absl::StatusOr<std::vector<Sample>> Scrape(int http_port, std::string* raw = nullptr);

// A plausible step sample for `step` of a small job (loss falls as step grows).
ftd::v1::JobMetrics StepSample(int step, int world_size = 2);

}  // namespace ftd::testing
