#include "engine/train/training_data.h"

#include <filesystem>
#include <memory>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"
#include "engine/data/dataset_record.h"
#include "engine/data/dataset_validator.h"
#include "engine/data/document_encoder.h"
#include "engine/data/document_source.h"
#include "engine/data/sequence_packer.h"
#include "engine/data/tokenizer.h"
#include "engine/train/packed_batch.h"

namespace ftd::engine {
namespace {

std::vector<int64_t> Widen(const std::vector<int32_t>& v) { return std::vector<int64_t>(v.begin(), v.end()); }

}  // namespace

absl::StatusOr<std::vector<TokenSequence>> LoadTrainingSequences(const TrainSpec& spec, int64_t vocab_size,
                                                                 std::ostream& log) {
  if (spec.data_format == "tokens" || spec.data_format == "input_ids") {
    return ReadTokenJsonl(spec.train_data, vocab_size);
  }
  auto format = data::ParseDatasetFormat(spec.data_format);
  if (!format.ok()) return absl::InvalidArgumentError(absl::StrCat("datasets.format: ", format.status().message()));

  // The tokenizer is optional only for token-id records; the encoder says so per record.
  std::unique_ptr<data::Tokenizer> tokenizer;
  const bool has_tokenizer = std::filesystem::exists(std::filesystem::path(spec.base_model) / "tokenizer.json");
  if (has_tokenizer) {
    auto t = data::Tokenizer::FromFile(spec.base_model);
    if (!t.ok()) return absl::Status(t.status().code(), absl::StrCat("base_model tokenizer: ", t.status().message()));
    tokenizer = std::move(*t);
    if (tokenizer->vocab_size() > vocab_size) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "base_model: tokenizer.json has %d tokens but config.json's vocab_size is %d", tokenizer->vocab_size(),
          vocab_size));
    }
  } else if (*format != data::DatasetFormat::kTokenIds) {
    return absl::FailedPreconditionError(absl::StrCat("datasets.format \"", spec.data_format, "\" needs ",
                                                      spec.base_model, "/tokenizer.json, which does not exist"));
  }
  if (tokenizer) {
    FTD_RETURN_IF_ERROR(data::ValidateDataset(spec.train_data, *format, tokenizer.get()));
  } else {
    FTD_RETURN_IF_ERROR(data::ValidateDataset(spec.train_data, *format, static_cast<int32_t>(vocab_size)));
  }
  FTD_ASSIGN_OR_RETURN(std::unique_ptr<data::DocumentEncoder> encoder, data::DocumentEncoder::Create(tokenizer.get()));
  FTD_ASSIGN_OR_RETURN(std::unique_ptr<data::JsonlDocumentSource> source,
                       data::JsonlDocumentSource::Open(spec.train_data, *format, encoder.get()));

  // One pass in file order; the trainer's SampleOrder shuffles the packed rows per epoch.
  data::PackingOptions packing;
  packing.seq_len = static_cast<int32_t>(spec.seq_len);
  packing.shuffle = false;
  packing.num_epochs = 1;
  packing.pad_token_id = tokenizer && tokenizer->pad_id() ? *tokenizer->pad_id() : 0;
  FTD_ASSIGN_OR_RETURN(std::unique_ptr<data::SequencePacker> packer, data::SequencePacker::Create(source.get(), packing));
  std::vector<TokenSequence> rows;
  int64_t documents = 0, loss_tokens = 0, real_tokens = 0;
  while (true) {
    FTD_ASSIGN_OR_RETURN(std::optional<data::PackedSample> sample, packer->Next());
    if (!sample) break;
    TokenSequence row;
    row.input_ids = Widen(sample->input_ids);
    row.targets = Widen(sample->labels);
    row.position_ids = Widen(sample->position_ids);
    row.segment_ids = SegmentIdsFromCuSeqlens(sample->cu_seqlens, static_cast<int64_t>(sample->input_ids.size()));
    documents += sample->num_documents;
    loss_tokens += sample->num_loss_tokens;
    real_tokens += sample->num_real_tokens;
    rows.push_back(std::move(row));
  }
  if (rows.empty()) return absl::InvalidArgumentError(absl::StrCat(spec.train_data, ": no document has a trained token"));
  log << absl::StrFormat("data %s (%s): %d documents packed into %d rows of %d tokens (%.1f%% filled, %d trained tokens)\n",
                         spec.train_data, data::DatasetFormatName(*format), documents, rows.size(), spec.seq_len,
                         100.0 * real_tokens / (static_cast<double>(rows.size()) * spec.seq_len), loss_tokens);
  return rows;
}

}  // namespace ftd::engine
