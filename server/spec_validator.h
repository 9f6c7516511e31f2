// SpecValidator: checks every field of a JobSpec (and a create request's labels and
// request_id), fills in defaults, rejects settings the engine cannot honour yet, and confines
// every path to the calling tenant's namespace of the configured roots: tenant T's base models,
// datasets and outputs lie under <root>/T/ of --model-root, --data-root and --output-root;
// base models may also come from the operator's shared read-only roots (--shared-model-root).
// Symlinks are resolved before the check. Errors are INVALID_ARGUMENT whose message starts
// with the field path, e.g. "spec.hyperparameters.seq_len: must be in [1, 131072], got 0".
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
  std::vector<std::string> model_roots;         // --model-root: tenant T's base models in <root>/T/
  std::vector<std::string> shared_model_roots;  // --shared-model-root: base models for every tenant, read-only
  std::vector<std::string> data_roots;          // --data-root: tenant T's datasets in <root>/T/
  std::vector<std::string> output_roots;        // tenant T's outputs in <root>/T/ (first: the default)
  // --webhook-allow: the destinations spec.webhook_url may name, as HOST or HOST:PORT (the
  // scheme's default port when none is given); empty: webhooks are refused.
  std::vector<std::string> webhook_allow;
  ValidationLimits limits;
};

class SpecValidator {
 public:
  // Resolves every root with realpath; INVALID_ARGUMENT naming the root that does not exist.
  static absl::StatusOr<SpecValidator> Create(const ValidatorConfig& config);

  // Validates `spec` of `tenant` in place and normalizes it: defaults for empty enumerations
  // and sizes, paths replaced by their canonical (symlink-free) form. `notes` receives one line
  // per default applied. An empty output stays empty (the caller picks the job's directory).
  absl::Status ValidateAndNormalize(const std::string& tenant, ftd::v1::JobSpec* spec,
                                    std::vector<std::string>* notes) const;

  // Label keys: [a-z0-9]([a-z0-9._/-]{0,62}); values: up to 256 printable ASCII characters.
  absl::Status ValidateLabels(const google::protobuf::Map<std::string, std::string>& labels) const;
  // Up to 128 characters of [A-Za-z0-9._:-].
  static absl::Status ValidateRequestId(const std::string& request_id);

  // The canonical form of `path` if it lies inside one of `roots` (after resolving symlinks
  // of the part that exists); INVALID_ARGUMENT naming `field` otherwise. A relative path is
  // taken relative to the first root under which it exists, else the first root; `file://`
  // is accepted.
  absl::StatusOr<std::string> ConfinePath(const std::string& field, const std::string& path,
                                          const std::vector<std::string>& roots) const;

  // OK when the host (and port) of `url` is in the webhook allow-list; INVALID_ARGUMENT naming
  // spec.webhook_url otherwise (also checked again before every delivery).
  absl::Status CheckWebhookDestination(const std::string& url) const;

  // Whether `path` is `root` or lies below it (both canonical).
  static bool PathWithin(const std::string& path, const std::string& root);

  // `roots` with `/<tenant>` appended: the tenant's namespaces.
  static std::vector<std::string> TenantRoots(const std::vector<std::string>& roots,
                                              const std::string& tenant);
  // Where a job's output goes when its spec names none: <first output root>/<tenant>/<job_id>.
  std::string DefaultOutput(const std::string& tenant, const std::string& job_id) const;

  const ValidatorConfig& config() const { return config_; }

 private:
  explicit SpecValidator(ValidatorConfig config) : config_(std::move(config)) {}
  // spec.lora of a method lora job: defaults (rank 16, alpha 2 x rank, targets attention and
  // experts) noted, each field checked by name, init_adapter confined to the model roots.
  absl::Status ValidateLora(ftd::v1::JobSpec* spec, const std::vector<std::string>& model_roots,
                            std::vector<std::string>* notes) const;
  ValidatorConfig config_;  // roots canonical
};

}  // namespace ftd::server
