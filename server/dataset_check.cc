#include "server/dataset_check.h"

#include <filesystem>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "engine/data/dataset_record.h"
#include "engine/data/dataset_validator.h"
#include "engine/data/tokenizer.h"
#include "server/job_plan.h"

namespace ftd::server {
namespace {

absl::Status Named(const char* field, const absl::Status& status) {
  return absl::Status(status.code(), absl::StrCat(field, ": ", status.message()));
}

}  // namespace

absl::Status CheckDatasets(const ftd::v1::JobSpec& spec) {
  const std::string& name = spec.datasets().format();
  absl::StatusOr<data::DatasetFormat> format =
      data::ParseDatasetFormat(name == "jsonl_tokens" ? std::string("input_ids") : name);
  if (!format.ok()) return Named("spec.datasets.format", format.status());

  std::unique_ptr<data::Tokenizer> tokenizer;
  int32_t vocab_size = 0;
  if (std::filesystem::exists(std::filesystem::path(spec.base_model()) / "tokenizer.json")) {
    auto t = data::Tokenizer::FromFile(spec.base_model());
    if (!t.ok()) return Named("spec.base_model", t.status());
    tokenizer = std::move(*t);
  } else if (*format != data::DatasetFormat::kTokenIds) {
    return absl::InvalidArgumentError(absl::StrCat("spec.datasets.format: ", name, " needs ", spec.base_model(),
                                                   "/tokenizer.json, which does not exist"));
  }
  // Token ids are bounded by the model's vocabulary when config.json says what it is.
  if (absl::StatusOr<std::string> config = ReadFileToString(spec.base_model() + "/config.json"); config.ok()) {
    if (absl::StatusOr<ModelSize> size = CountParameters(*config); size.ok()) {
      vocab_size = static_cast<int32_t>(size->vocab_size);
    }
  }
  auto check = [&](const char* field, const std::string& path) -> absl::Status {
    if (path.empty()) return absl::OkStatus();
    absl::Status s = tokenizer ? data::ValidateDataset(path, *format, tokenizer.get())
                               : data::ValidateDataset(path, *format, vocab_size);
    return s.ok() ? s : Named(field, s);
  };
  if (absl::Status s = check("spec.datasets.train", spec.datasets().train()); !s.ok()) return s;
  return check("spec.datasets.validation", spec.datasets().validation());
}

}  // namespace ftd::server
