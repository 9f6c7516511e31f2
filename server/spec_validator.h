// SpecValidator: checks every field of a JobSpec (and a create request's labels and
// request_id), fills in defaults, and confines every path to the configured roots. Errors are
// INVALID_ARGUMENT whose message starts with the field path, e.g.
// "spec.hyperparameters.seq_len: must be in [1, 131072], got 0".
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "ftd/v1/jobs.pb.h"
#include "google/protobuf/map.h"

namespace ftd::server {

struct ValidationLimits {
  int max_world_size = 4096;
  int max_gpus_per_node = 16;
  int max_nodes = 1024;
  int max_seq_len = 131072;
  int max_path_length = 4096;
  int max_labels = 64;
  int max_string_length = 1024;  // free-text fields other than paths
};

struct ValidatorConfig {
  std::vector<std::string> model_roots;   // --model-root: where base models may live
  std::vector<std::string> data_roots;    // --data-root: datasets
  std::vector<std::string> output_roots;  // where outputs may be written (first: default)
  ValidationLimits limits;
};

class SpecValidator {
 public:
  // Resolves every root with realpath; INVALID_ARGUMENT naming the root that does not exist.
  static absl::StatusOr<SpecValidator> Create(const ValidatorConfig& config);

  // Validates `spec` in place and normalizes it: defaults for empty enumerations and sizes,
  // paths replaced by their canonical (symlink-free) form. `notes` receives one line per
  // default applied.
  absl::Status ValidateAndNormalize(ftd::v1::JobSpec* spec, std::vector<std::string>* notes) const;

  // Label keys: [a-z0-9]([a-z0-9._/-]{0,62}); values: up to 256 printable ASCII characters.
  absl::Status ValidateLabels(const google::protobuf::Map<std::string, std::string>& labels) const;
  // Up to 128 characters of [A-Za-z0-9._:-].
  static absl::Status ValidateRequestId(const std::string& request_id);

  // The canonical form of `path` if it lies inside one of `roots` (after resolving symlinks
  // of the part that exists); INVALID_ARGUMENT naming `field` otherwise. Relative paths are
  // taken relative to the first root; `file://` is accepted.
  absl::StatusOr<std::string> ConfinePath(const std::string& field, const std::string& path,
                                          const std::vector<std::string>& roots) const;

  const ValidatorConfig& config() const { return config_; }

 private:
  explicit SpecValidator(ValidatorConfig config) : config_(std::move(config)) {}
  ValidatorConfig config_;  // roots canonical
};

}  // namespace ftd::server
