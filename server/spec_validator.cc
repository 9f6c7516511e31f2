#include "server/spec_validator.h"

#include <limits.h>
#include <stdlib.h>
#include <unistd.h>

#include <cmath>
#include <memory>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/strip.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/status_macros.h"

namespace ftd::server {
namespace {

absl::Status FieldError(absl::string_view field, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", what));
}

template <typename T>
absl::Status CheckRange(absl::string_view field, T value, T lo, T hi) {
  if (value < lo || value > hi) {
    return FieldError(field, absl::StrCat("must be in [", lo, ", ", hi, "], got ", value));
  }
  return absl::OkStatus();
}

absl::Status CheckFinite(absl::string_view field, double value, double lo, double hi) {
  if (!std::isfinite(value) || value < lo || value > hi) {
    return FieldError(field, absl::StrCat("must be a finite number in [", lo, ", ", hi, "], got ",
                                          value));
  }
  return absl::OkStatus();
}

// Fills an empty enumeration-like string with its default (noting it) and checks membership.
absl::Status CheckChoice(absl::string_view field, std::string* value,
                         const std::vector<std::string>& choices, std::vector<std::string>* notes) {
  if (value->empty()) {
    *value = choices.front();
    notes->push_back(absl::StrCat(field, " defaulted to ", choices.front()));
    return absl::OkStatus();
  }
  for (const std::string& c : choices) {
    if (*value == c) return absl::OkStatus();
  }
  return FieldError(field, absl::StrCat("must be one of ", absl::StrJoin(choices, ", "),
                                        "; got `", absl::CEscape(value->substr(0, 64)), "`"));
}

// A choice the engine may not support yet: an empty value takes `supported` (noted); a value
// of `unsupported` is refused with its reason; anything else is not a choice at all.
absl::Status CheckSupportedChoice(absl::string_view field, std::string* value, const std::string& supported,
                                  const std::vector<std::pair<std::string, std::string>>& unsupported,
                                  std::vector<std::string>* notes) {
  if (value->empty()) {
    *value = supported;
    notes->push_back(absl::StrCat(field, " defaulted to ", supported));
    return absl::OkStatus();
  }
  if (*value == supported) return absl::OkStatus();
  std::vector<std::string> names = {supported};
  for (const auto& [name, reason] : unsupported) {
    if (*value == name) return FieldError(field, absl::StrCat(name, " is not supported yet: ", reason));
    names.push_back(name);
  }
  return FieldError(field, absl::StrCat("must be one of ", absl::StrJoin(names, ", "), " (", supported,
                                        " is the one available now); got `", absl::CEscape(value->substr(0, 64)),
                                        "`"));
}

bool IsTenantName(absl::string_view t) {
  if (t.empty() || t.size() > 63 || t == "." || t == "..") return false;
  for (char c : t) {
    if (!(absl::ascii_isalnum(c) || c == '.' || c == '_' || c == '-')) return false;
  }
  return true;
}

// "host" or "host:port" of an http(s) URL (lower-case host, the scheme's port when none).
struct UrlTarget {
  std::string host;
  int port = 0;
};

absl::StatusOr<UrlTarget> ParseUrlTarget(absl::string_view url) {
  absl::string_view rest;
  int default_port = 0;
  if (absl::ConsumePrefix(&url, "https://")) {
    default_port = 443;
  } else if (absl::ConsumePrefix(&url, "http://")) {
    default_port = 80;
  } else {
    return absl::InvalidArgumentError("must be an http:// or https:// URL");
  }
  rest = url.substr(0, url.find_first_of("/?#"));
  if (absl::StrContains(rest, "@")) return absl::InvalidArgumentError("must not carry user information (`@`)");
  UrlTarget t;
  absl::string_view host = rest;
  t.port = default_port;
  if (!host.empty() && host.front() == '[') {
    return absl::InvalidArgumentError("IPv6 literal hosts are not supported");
  }
  if (size_t colon = host.rfind(':'); colon != absl::string_view::npos) {
    if (!absl::SimpleAtoi(host.substr(colon + 1), &t.port) || t.port <= 0 || t.port > 65535) {
      return absl::InvalidArgumentError("has an invalid port");
    }
    host = host.substr(0, colon);
  }
  if (host.empty()) return absl::InvalidArgumentError("must have a host");
  for (char c : host) {
    if (!(absl::ascii_isalnum(c) || c == '.' || c == '-')) {
      return absl::InvalidArgumentError("host must be letters, digits, `.` and `-`");
    }
  }
  t.host = absl::AsciiStrToLower(host);
  return t;
}

bool IsPrintable(absl::string_view s) {
  for (unsigned char c : s) {
    if (c < 0x20 || c == 0x7f) return false;
  }
  return true;
}

bool IsWithin(const std::string& path, const std::string& root) {
  if (root == "/") return true;
  return path == root || (absl::StartsWith(path, root) && path[root.size()] == '/');
}

// realpath() of the longest existing prefix of `abs_path` (which has no `..`), with the
// missing remainder appended: symlinks in the existing part are resolved, so a link that
// points outside a root is caught even when the target file does not exist yet.
absl::StatusOr<std::string> CanonicalizeExistingPrefix(const std::string& abs_path) {
  std::vector<std::string> parts = absl::StrSplit(abs_path, '/', absl::SkipEmpty());
  for (size_t keep = parts.size() + 1; keep-- > 0;) {
    std::string prefix = "/" + absl::StrJoin(parts.begin(), parts.begin() + keep, "/");
    char resolved[PATH_MAX];
    if (::realpath(prefix.c_str(), resolved) != nullptr) {
      std::string out = resolved;
      for (size_t i = keep; i < parts.size(); ++i) {
        if (out != "/") out += "/";
        out += parts[i];
      }
      return out;
    }
  }
  return absl::InternalError("cannot resolve /");
}

}  // namespace

absl::StatusOr<SpecValidator> SpecValidator::Create(const ValidatorConfig& config) {
  ValidatorConfig canonical = config;
  auto resolve = [](std::vector<std::string>* roots, absl::string_view flag) -> absl::Status {
    for (std::string& root : *roots) {
      char resolved[PATH_MAX];
      if (::realpath(root.c_str(), resolved) == nullptr) {
        return absl::InvalidArgumentError(
            absl::StrCat(flag, " ", root, ": does not exist or is not accessible"));
      }
      root = resolved;
    }
    return absl::OkStatus();
  };
  FTD_RETURN_IF_ERROR(resolve(&canonical.model_roots, "--model-root"));
  FTD_RETURN_IF_ERROR(resolve(&canonical.shared_model_roots, "--shared-model-root"));
  FTD_RETURN_IF_ERROR(resolve(&canonical.data_roots, "--data-root"));
  FTD_RETURN_IF_ERROR(resolve(&canonical.output_roots, "--output-root"));
  for (const std::string& shared : canonical.shared_model_roots) {
    for (const std::string& out : canonical.output_roots) {
      if (IsWithin(out, shared) || IsWithin(shared, out)) {
        return absl::InvalidArgumentError(absl::StrCat("--shared-model-root ", shared, " overlaps --output-root ", out,
                                                       ": shared models must stay read-only"));
      }
    }
  }
  for (std::string& entry : canonical.webhook_allow) {
    // Parsed as a URL's authority, so the entry and a job's URL compare alike.
    absl::StatusOr<UrlTarget> t = ParseUrlTarget(absl::StrCat("http://", entry));
    if (!t.ok() || entry.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("--webhook-allow `", entry, "`: expected HOST or HOST:PORT"));
    }
    entry = absl::StrContains(entry, ":") ? absl::StrCat(t->host, ":", t->port) : t->host;
  }
  return SpecValidator(std::move(canonical));
}

bool SpecValidator::PathWithin(const std::string& path, const std::string& root) {
  return !path.empty() && !root.empty() && IsWithin(path, root);
}

std::vector<std::string> SpecValidator::TenantRoots(const std::vector<std::string>& roots,
                                                    const std::string& tenant) {
  std::vector<std::string> out;
  out.reserve(roots.size());
  for (const std::string& root : roots) out.push_back(root == "/" ? "/" + tenant : root + "/" + tenant);
  return out;
}

std::string SpecValidator::DefaultOutput(const std::string& tenant, const std::string& job_id) const {
  if (config_.output_roots.empty()) return "";
  return absl::StrCat(TenantRoots({config_.output_roots.front()}, tenant).front(), "/", job_id);
}

absl::StatusOr<std::string> SpecValidator::ConfinePath(const std::string& field,
                                                       const std::string& path,
                                                       const std::vector<std::string>& roots) const {
  if (path.empty()) return FieldError(field, "is required");
  if (static_cast<int>(path.size()) > config_.limits.max_path_length) {
    return FieldError(field, absl::StrCat("longer than ", config_.limits.max_path_length, " bytes"));
  }
  if (!IsPrintable(path)) return FieldError(field, "contains control characters");
  std::string local = path;
  if (absl::StartsWith(local, "file://")) {
    local = local.substr(7);
  } else if (local.find("://") != std::string::npos) {
    return FieldError(field, "only local paths and file:// URIs are supported");
  }
  for (absl::string_view part : absl::StrSplit(local, '/')) {
    if (part == "..") return FieldError(field, "must not contain `..`");
  }
  if (roots.empty()) return FieldError(field, "no root is configured for this kind of path");
  if (local.empty() || local[0] != '/') {
    std::string relative = local;
    local = absl::StrCat(roots.front(), "/", relative);
    for (const std::string& root : roots) {
      const std::string candidate = absl::StrCat(root, "/", relative);
      if (::access(candidate.c_str(), F_OK) == 0) {
        local = candidate;
        break;
      }
    }
  }
  FTD_ASSIGN_OR_RETURN(std::string canonical, CanonicalizeExistingPrefix(local));
  for (const std::string& root : roots) {
    if (IsWithin(canonical, root)) return canonical;
  }
  return FieldError(field, absl::StrCat("`", absl::CEscape(path.substr(0, 256)),
                                        "` resolves outside the allowed roots (",
                                        absl::StrJoin(roots, ", "), ")"));
}

absl::Status SpecValidator::ValidateLabels(
    const google::protobuf::Map<std::string, std::string>& labels) const {
  if (static_cast<int>(labels.size()) > config_.limits.max_labels) {
    return FieldError("labels", absl::StrCat("at most ", config_.limits.max_labels, " labels"));
  }
  for (const auto& [key, value] : labels) {
    const std::string field = absl::StrCat("labels[", absl::CEscape(key.substr(0, 64)), "]");
    bool ok = !key.empty() && key.size() <= 63 &&
              (absl::ascii_islower(key[0]) || absl::ascii_isdigit(key[0]));
    for (char c : key) {
      ok = ok && (absl::ascii_islower(c) || absl::ascii_isdigit(c) || c == '.' || c == '_' ||
                  c == '/' || c == '-');
    }
    if (!ok) return FieldError(field, "key must match [a-z0-9][a-z0-9._/-]{0,62}");
    if (value.size() > 256 || !IsPrintable(value)) {
      return FieldError(field, "value must be at most 256 printable characters");
    }
    for (unsigned char c : value) {
      if (c >= 0x80) return FieldError(field, "value must be printable ASCII");
    }
  }
  return absl::OkStatus();
}

absl::Status SpecValidator::ValidateRequestId(const std::string& request_id) {
  if (request_id.size() > 128) return FieldError("request_id", "longer than 128 characters");
  for (char c : request_id) {
    if (!(absl::ascii_isalnum(c) || c == '.' || c == '_' || c == ':' || c == '-')) {
      return FieldError("request_id", "must be characters of [A-Za-z0-9._:-]");
    }
  }
  return absl::OkStatus();
}

absl::Status SpecValidator::ValidateLora(ftd::v1::JobSpec* spec, const std::vector<std::string>& model_roots,
                                         std::vector<std::string>* notes) const {
  auto* lora = spec->mutable_lora();
  if (lora->rank() == 0) {
    lora->set_rank(16);
    notes->push_back("spec.lora.rank defaulted to 16");
  }
  FTD_RETURN_IF_ERROR(CheckRange("spec.lora.rank", lora->rank(), 1, 4096));
  if (lora->alpha() == 0) {
    lora->set_alpha(2.0 * lora->rank());
    notes->push_back(absl::StrCat("spec.lora.alpha defaulted to ", 2 * lora->rank(), " (2 x rank)"));
  }
  if (!std::isfinite(lora->alpha()) || lora->alpha() <= 0) {
    return FieldError("spec.lora.alpha", absl::StrCat("must be a positive finite number, got ", lora->alpha()));
  }
  if (lora->dropout() != 0) {
    return FieldError("spec.lora.dropout", absl::StrCat("only 0 is supported (got ", lora->dropout(),
                                                        "): dropout cannot be applied to the fused experts' adapters"));
  }
  if (lora->targets().empty()) {
    lora->add_targets("attention");
    lora->add_targets("experts");
    notes->push_back("spec.lora.targets defaulted to attention, experts");
  }
  for (const std::string& t : lora->targets()) {
    if (t == "router") return FieldError("spec.lora.targets", "router cannot be adapted (the router stays frozen)");
    if (t != "attention" && t != "mlp" && t != "experts" && t != "shared_experts") {
      return FieldError("spec.lora.targets", absl::StrCat("`", absl::CEscape(t.substr(0, 64)),
                                                          "` is not one of attention, mlp, experts, shared_experts"));
    }
  }
  if (!lora->init_adapter().empty()) {
    FTD_ASSIGN_OR_RETURN(std::string init, ConfinePath("spec.lora.init_adapter", lora->init_adapter(), model_roots));
    lora->set_init_adapter(init);
  }
  if (spec->parallelism().zero_stage() == 3) {
    return FieldError("spec.parallelism.zero_stage", "3 is not supported with method lora (use 2)");
  }
  return absl::OkStatus();
}

absl::Status SpecValidator::ValidateAndNormalize(const std::string& tenant, ftd::v1::JobSpec* spec,
                                                 std::vector<std::string>* notes) const {
  const ValidationLimits& lim = config_.limits;
  if (!IsTenantName(tenant)) {
    return absl::PermissionDeniedError(absl::StrCat("tenant `", absl::CEscape(tenant.substr(0, 64)),
                                                    "` cannot own paths (1-63 characters of [A-Za-z0-9._-])"));
  }
  // The tenant's namespaces; base models also come from the shared read-only roots.
  std::vector<std::string> model_roots = TenantRoots(config_.model_roots, tenant);
  model_roots.insert(model_roots.end(), config_.shared_model_roots.begin(), config_.shared_model_roots.end());
  const std::vector<std::string> data_roots = TenantRoots(config_.data_roots, tenant);
  const std::vector<std::string> output_roots = TenantRoots(config_.output_roots, tenant);

  FTD_ASSIGN_OR_RETURN(std::string base_model, ConfinePath("spec.base_model", spec->base_model(), model_roots));
  spec->set_base_model(base_model);

  auto* ds = spec->mutable_datasets();
  FTD_ASSIGN_OR_RETURN(std::string train, ConfinePath("spec.datasets.train", ds->train(), data_roots));
  ds->set_train(train);
  if (!ds->validation().empty()) {
    FTD_ASSIGN_OR_RETURN(std::string validation,
                         ConfinePath("spec.datasets.validation", ds->validation(), data_roots));
    ds->set_validation(validation);
  }
  FTD_RETURN_IF_ERROR(CheckChoice("spec.datasets.format", ds->mutable_format(),
                                  {"jsonl_tokens", "messages", "prompt_completion", "text"}, notes));
  if (!std::isfinite(ds->validation_fraction()) || ds->validation_fraction() < 0 || ds->validation_fraction() >= 1) {
    return FieldError("spec.datasets.validation_fraction",
                      absl::StrCat("must be a finite number in [0, 1), got ", ds->validation_fraction()));
  }
  if (ds->validation_fraction() > 0 && !ds->validation().empty()) {
    return FieldError("spec.datasets.validation_fraction",
                      "excludes spec.datasets.validation (a held-out split or a file, not both)");
  }

  FTD_RETURN_IF_ERROR(CheckChoice("spec.method", spec->mutable_method(), {"full", "lora"}, notes));
  if (spec->method() == "lora") {
    FTD_RETURN_IF_ERROR(ValidateLora(spec, model_roots, notes));
  } else if (spec->has_lora()) {
    return FieldError("spec.lora", "only with spec.method lora");
  }
  FTD_RETURN_IF_ERROR(CheckChoice("spec.precision", spec->mutable_precision(),
                                  {"auto", "compact", "compact_sr", "fp32_master", "bf16_pure"}, notes));

  // Resources first: batch divisibility and ep_size depend on the world size.
  auto* res = spec->mutable_resources();
  if (res->nodes() == 0) {
    res->set_nodes(1);
    notes->push_back("spec.resources.nodes defaulted to 1");
  }
  FTD_RETURN_IF_ERROR(CheckRange("spec.resources.nodes", res->nodes(), 1, lim.max_nodes));
  FTD_RETURN_IF_ERROR(
      CheckRange("spec.resources.gpus_per_node", res->gpus_per_node(), 1, lim.max_gpus_per_node));
  const int64_t world = int64_t{res->nodes()} * res->gpus_per_node();
  if (world > lim.max_world_size) {
    return FieldError("spec.resources", absl::StrCat("world size nodes x gpus_per_node = ", world,
                                                     " exceeds the limit of ", lim.max_world_size));
  }

  auto* hp = spec->mutable_hyperparameters();
  FTD_RETURN_IF_ERROR(CheckRange<int64_t>("spec.hyperparameters.max_steps", hp->max_steps(), 0,
                                          int64_t{1} << 40));
  FTD_RETURN_IF_ERROR(CheckRange("spec.hyperparameters.epochs", hp->epochs(), 0, 100000));
  if (hp->max_steps() == 0 && hp->epochs() == 0) {
    return FieldError("spec.hyperparameters.max_steps", "max_steps or epochs must be positive");
  }
  FTD_RETURN_IF_ERROR(CheckRange("spec.hyperparameters.micro_batch", hp->micro_batch(), 1, 65536));
  FTD_RETURN_IF_ERROR(
      CheckRange("spec.hyperparameters.global_batch", hp->global_batch(), 1, 1 << 24));
  if (hp->global_batch() % (int64_t{hp->micro_batch()} * world) != 0) {
    return FieldError("spec.hyperparameters.global_batch",
                      absl::StrCat("must be a multiple of micro_batch x world size = ",
                                   int64_t{hp->micro_batch()} * world, ", got ", hp->global_batch()));
  }
  FTD_RETURN_IF_ERROR(CheckRange("spec.hyperparameters.seq_len", hp->seq_len(), 1, lim.max_seq_len));
  if (!std::isfinite(hp->lr()) || hp->lr() <= 0 || hp->lr() > 1) {
    return FieldError("spec.hyperparameters.lr",
                      absl::StrCat("must be a finite number in (0, 1], got ", hp->lr()));
  }
  FTD_RETURN_IF_ERROR(CheckChoice("spec.hyperparameters.schedule", hp->mutable_schedule(),
                                  {"cosine", "linear", "constant"}, notes));
  FTD_RETURN_IF_ERROR(
      CheckRange("spec.hyperparameters.warmup_steps", hp->warmup_steps(), 0, 1 << 30));
  if (hp->max_steps() > 0 && hp->warmup_steps() > hp->max_steps()) {
    return FieldError("spec.hyperparameters.warmup_steps",
                      absl::StrCat("exceeds max_steps (", hp->max_steps(), ")"));
  }
  FTD_RETURN_IF_ERROR(CheckFinite("spec.hyperparameters.weight_decay", hp->weight_decay(), 0, 10));
  if (!hp->has_grad_clip()) {
    hp->set_grad_clip(1.0);
    notes->push_back("spec.hyperparameters.grad_clip defaulted to 1.0");
  }
  FTD_RETURN_IF_ERROR(CheckFinite("spec.hyperparameters.grad_clip", hp->grad_clip(), 0, 1e6));
  FTD_RETURN_IF_ERROR(CheckRange("spec.hyperparameters.eval_every", hp->eval_every(), 0, 1 << 30));
  if (hp->eval_every() > 0 && spec->datasets().validation().empty() && spec->datasets().validation_fraction() == 0) {
    return FieldError("spec.hyperparameters.eval_every",
                      "needs spec.datasets.validation or spec.datasets.validation_fraction");
  }

  auto* par = spec->mutable_parallelism();
  if (par->ep_size() == 0) {
    par->set_ep_size(1);
    notes->push_back("spec.parallelism.ep_size defaulted to 1");
  }
  FTD_RETURN_IF_ERROR(
      CheckRange<int64_t>("spec.parallelism.ep_size", par->ep_size(), 1, world));
  if (world % par->ep_size() != 0) {
    return FieldError("spec.parallelism.ep_size",
                      absl::StrCat("must divide the world size ", world, ", got ", par->ep_size()));
  }
  // The engine shards the dense parameters' gradients and optimizer state over the world (ZeRO-2),
  // and with stage 3 the dense parameters too (gathered per layer).
  if (par->zero_stage() == 0) {
    par->set_zero_stage(2);
    notes->push_back("spec.parallelism.zero_stage defaulted to 2");
  } else if (par->zero_stage() != 2 && par->zero_stage() != 3) {
    return FieldError("spec.parallelism.zero_stage",
                      absl::StrCat("must be 2 (dense gradients reduce-scattered and optimizer state sharded over "
                                   "the world) or 3 (dense parameters sharded too, gathered per layer); got ",
                                   par->zero_stage()));
  }

  // Each backend names what the engine runs; the alternatives are refused until they exist
  // (a setting that is accepted must take effect). The engine refuses flash/cudnn on a CPU rank.
  auto* be = spec->mutable_backends();
  FTD_RETURN_IF_ERROR(CheckChoice("spec.backends.attention", be->mutable_attention(), {"sdpa", "flash", "cudnn"}, notes));
  if (par->recompute_expert_grads() && be->experts().empty()) {
    // The one backend that setting runs on; an explicit other backend is refused below.
    be->set_experts("ftd");
    notes->push_back("spec.backends.experts defaulted to ftd (parallelism.recompute_expert_grads runs on its grouped GEMM)");
  }
  FTD_RETURN_IF_ERROR(CheckChoice("spec.backends.experts", be->mutable_experts(), {"grouped_mm", "ftd", "loop"}, notes));
  FTD_RETURN_IF_ERROR(CheckSupportedChoice(
      "spec.backends.dispatcher", be->mutable_dispatcher(), "alltoall",
      {{"fused", "no fused (DeepEP-style) dispatch kernel exists yet; use alltoall"}}, notes));
  FTD_RETURN_IF_ERROR(
      CheckChoice("spec.backends.gate", be->mutable_gate(), {"real", "balanced"}, notes));
  if (par->recompute_expert_grads()) {
    // The optimizer takes the experts' gradient norm from ftd's grouped GEMM in backward and forms
    // each gradient again after it; the engine does that only on one rank, one micro-batch a
    // step, for full weights under the compact policy.
    const char* field = "spec.parallelism.recompute_expert_grads";
    if (spec->method() == "lora") return FieldError(field, "applies to method full (LoRA trains no expert weights)");
    if (world != 1) {
      return FieldError(field, absl::StrCat("needs one GPU (the world size is ", world,
                                            ": expert gradients are reduced between ranks as formed tensors)"));
    }
    if (be->experts() != "ftd") {
      return FieldError(field, absl::StrCat("needs backends.experts ftd (its grouped GEMM takes the gradient's norm "
                                            "and forms it again), got ", be->experts()));
    }
    if (hp->global_batch() != hp->micro_batch()) {
      return FieldError(field, "needs one micro-batch a step (hyperparameters.global_batch equal to micro_batch)");
    }
    if (spec->precision() != "auto" && spec->precision() != "compact") {
      return FieldError(field, absl::StrCat("needs precision compact (or auto), got ", spec->precision()));
    }
  }

  const auto& ck = spec->checkpointing();
  FTD_RETURN_IF_ERROR(
      CheckRange("spec.checkpointing.every_n_steps", ck.every_n_steps(), 0, 1 << 30));
  FTD_RETURN_IF_ERROR(CheckRange("spec.checkpointing.keep_last", ck.keep_last(), 0, 10000));

  const auto& sc = spec->scheduling();
  FTD_RETURN_IF_ERROR(CheckRange("spec.scheduling.priority", sc.priority(), -1000, 1000));
  FTD_RETURN_IF_ERROR(CheckRange<int64_t>("spec.scheduling.max_runtime_seconds",
                                          sc.max_runtime_seconds(), 0, int64_t{366} * 86400));
  FTD_RETURN_IF_ERROR(CheckRange("spec.scheduling.max_restarts", sc.max_restarts(), 0, 1000));

  if (!spec->output().empty()) {
    FTD_ASSIGN_OR_RETURN(std::string output, ConfinePath("spec.output", spec->output(), output_roots));
    spec->set_output(output);
  }

  const std::string& hook = spec->webhook_url();
  if (!hook.empty()) {
    if (static_cast<int>(hook.size()) > lim.max_string_length) {
      return FieldError("spec.webhook_url", absl::StrCat("longer than ", lim.max_string_length, " bytes"));
    }
    for (char c : hook) {
      if (c <= 0x20 || c >= 0x7f) return FieldError("spec.webhook_url", "must have no spaces or control characters");
    }
    absl::StatusOr<UrlTarget> target = ParseUrlTarget(hook);
    if (!target.ok()) return FieldError("spec.webhook_url", target.status().message());
    FTD_RETURN_IF_ERROR(CheckWebhookDestination(hook));
  }
  return absl::OkStatus();
}

absl::Status SpecValidator::CheckWebhookDestination(const std::string& url) const {
  absl::StatusOr<UrlTarget> target = ParseUrlTarget(url);
  if (!target.ok()) return FieldError("spec.webhook_url", target.status().message());
  if (config_.webhook_allow.empty()) {
    return FieldError("spec.webhook_url", "webhooks are disabled on this coordinator (no --webhook-allow)");
  }
  const std::string with_port = absl::StrCat(target->host, ":", target->port);
  for (const std::string& allowed : config_.webhook_allow) {
    if (allowed == target->host || allowed == with_port) return absl::OkStatus();
  }
  return FieldError("spec.webhook_url",
                    absl::StrCat("destination ", with_port, " is not in the operator's allow-list (--webhook-allow)"));
}

}  // namespace ftd::server
