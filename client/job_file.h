// The job file of `ftctl submit/plan -f job.yaml`: YAML (or JSON) whose keys are JobSpec's
// field names (proto names or their lowerCamel JSON names), converted into a CreateJobRequest
// through the proto descriptors, with the line of every key kept so that a server error
// naming a field path (`spec.hyperparameters.lr: ...`) can point at the line that set it.
//
// Two layouts are accepted:
//   base_model: /models/qwen3          |  spec:
//   hyperparameters: {lr: 1e-5, ...}   |    base_model: /models/qwen3
//   labels: {team: nlp}                |  labels: {team: nlp}
//   request_id: nightly-42             |  request_id: nightly-42
// `--set key=value` overrides (or adds) one field: `hyperparameters.lr=2e-5`, `spec.output=/o`,
// `labels.team=nlp`, `request_id=x`.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "ftd/v1/jobs.pb.h"

namespace ftd::client {

class JobFile {
 public:
  // Reads `path` ("-" for stdin) and applies `sets` (each "key=value").
  static absl::StatusOr<JobFile> Load(const std::string& path, const std::vector<std::string>& sets);
  // The same from text; `source` names it in errors.
  static absl::StatusOr<JobFile> Parse(const std::string& text, const std::string& source,
                                       const std::vector<std::string>& sets);

  const ftd::v1::CreateJobRequest& request() const { return request_; }
  ftd::v1::CreateJobRequest* mutable_request() { return &request_; }
  const std::string& source() const { return source_; }

  // A label given outside the file (`--label k=v`); errors about it name `where`.
  void AddLabel(const std::string& key, const std::string& value, const std::string& where);

  // Where `field_path` (a proto path as the server names it: "spec.hyperparameters.lr",
  // "labels[team]", "request_id") was set: "job.yaml:12", "--set hyperparameters.lr=2"; for a
  // field the file does not set, the line of its nearest enclosing section ("job.yaml:9") or
  // the file alone. `exact` (optional) tells whether the field itself was found.
  std::string Locate(const std::string& field_path, bool* exact = nullptr) const;

  // A server error message "FIELD: what" rewritten as "LOCATION: FIELD: what" when FIELD is a
  // field path; other messages are returned unchanged, prefixed with the file name.
  std::string Annotate(const std::string& server_message) const;

 private:
  JobFile() = default;

  ftd::v1::CreateJobRequest request_;
  std::string source_;
  std::map<std::string, int> lines_;         // "spec.hyperparameters.lr" -> 1-based line
  std::map<std::string, std::string> sets_;  // field path -> "--set k=v" that set it
};

}  // namespace ftd::client
