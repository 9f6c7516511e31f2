#include "engine/train/training_data.h"

#include <algorithm>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"
#include "engine/data/dataset_record.h"
#include "engine/data/dataset_validator.h"
#include "engine/data/document_encoder.h"
#include "engine/data/document_source.h"
#include "engine/data/tokenizer.h"
#include "engine/train/packed_batch.h"

namespace ftd::engine {
namespace {

std::vector<int64_t> Widen(const std::vector<int32_t>& v) { return std::vector<int64_t>(v.begin(), v.end()); }

// What the validation pass learns of a file besides its errors.
struct FileSummary {
  std::vector<int32_t> lengths;  // PackedLength per record
  std::vector<int32_t> targets;  // trained tokens per record, for the log
};

// Validates every record of `path` (errors name file:line) and measures each document.
absl::StatusOr<FileSummary> ValidateAndMeasure(const std::string& path, data::DatasetFormat format,
                                               const data::Tokenizer* tokenizer, int64_t vocab_size,
                                               const data::PackingOptions& packing) {
  FileSummary summary;
  data::ValidationOptions options;
  options.on_document = [&](int64_t index, const data::TokenizedDocument& document) {
    if (static_cast<int64_t>(summary.lengths.size()) <= index) {
      summary.lengths.resize(index + 1, 0);
      summary.targets.resize(index + 1, 0);
    }
    const int32_t length = data::PackedLength(document, packing);
    summary.lengths[index] = length;
    for (int32_t i = 1; i < length; ++i) summary.targets[index] += document.labels[i] != data::kIgnoreLabel;
  };
  if (tokenizer != nullptr) {
    FTD_RETURN_IF_ERROR(data::ValidateDataset(path, format, tokenizer, options));
  } else {
    FTD_RETURN_IF_ERROR(data::ValidateDataset(path, format, static_cast<int32_t>(vocab_size), options));
  }
  return summary;
}

// The lengths of `view`'s documents, from those of its base.
std::vector<int32_t> Select(const std::vector<int32_t>& base_lengths, const data::HoldoutView& view) {
  std::vector<int32_t> lengths(view.size());
  for (size_t i = 0; i < view.size(); ++i) lengths[i] = base_lengths[view.base_index(i)];
  return lengths;
}

int64_t SumLengths(const std::vector<int32_t>& lengths) {
  int64_t total = 0;
  for (int32_t length : lengths) total += length;
  return total;
}

// The documents of rows [first, last] of a plan: packing them gives exactly those rows.
data::DocumentRange RowDocuments(const data::DocumentSource* source, const std::vector<int64_t>& starts, int64_t first,
                                 int64_t last) {
  const auto end = last + 1 < static_cast<int64_t>(starts.size()) ? static_cast<size_t>(starts[last + 1]) : source->size();
  return data::DocumentRange(source, static_cast<size_t>(starts[first]), end);
}

// One rank's rows in training order, for the producer thread: the row order of SampleOrder,
// this rank's slice of each step's global batch, each row packed from the documents the plan
// gives it (reading no others). Every sample's next_position carries the trainer's position
// after its step (epoch, and the row index in doc_index).
class RankRowStream final : public data::SampleStream {
 public:
  RankRowStream(const data::DocumentSource* source, const data::PackingOptions& packing,
                const std::vector<int64_t>* starts, uint64_t seed, DataPosition start, int64_t global_batch,
                int64_t first, int64_t count)
      : source_(source), packing_(packing), starts_(starts), order_(static_cast<int64_t>(starts->size()), seed),
        position_(start), global_batch_(global_batch), first_(first), count_(count) {}

  absl::StatusOr<std::optional<data::PackedSample>> Next() override {
    if (next_ == slice_.size()) {
      const std::vector<int64_t> ids = order_.Take(global_batch_, &position_);
      slice_.assign(ids.begin() + first_, ids.begin() + first_ + count_);
      next_ = 0;
    }
    const int64_t row = slice_[next_++];
    const data::DocumentRange documents = RowDocuments(source_, *starts_, row, row);
    FTD_ASSIGN_OR_RETURN(std::unique_ptr<data::SequencePacker> packer, data::SequencePacker::Create(&documents, packing_));
    FTD_ASSIGN_OR_RETURN(std::optional<data::PackedSample> sample, packer->Next());
    FTD_ASSIGN_OR_RETURN(std::optional<data::PackedSample> beyond, packer->Next());
    if (!sample || beyond) {
      return absl::InternalError(absl::StrCat("training data: row ", row, " does not pack as planned"));
    }
    sample->epoch = position_.epoch;
    sample->next_position = data::DataPosition{position_.epoch, position_.index, 0, 0};
    return sample;
  }

  data::PackedSample PaddingSample() const override {  // unused: the stream never ends
    data::PackedSample sample;
    sample.input_ids.assign(packing_.seq_len, packing_.pad_token_id);
    sample.labels.assign(packing_.seq_len, data::kIgnoreLabel);
    for (int32_t i = 0; i < packing_.seq_len; ++i) sample.position_ids.push_back(i);
    sample.cu_seqlens = {0, packing_.seq_len};
    return sample;
  }

 private:
  const data::DocumentSource* source_;
  const data::PackingOptions packing_;
  const std::vector<int64_t>* starts_;
  SampleOrder order_;
  DataPosition position_;
  const int64_t global_batch_, first_, count_;
  std::vector<int64_t> slice_;
  size_t next_ = 0;
};

}  // namespace

TokenSequence ToTokenSequence(const data::PackedSample& sample, bool packed) {
  TokenSequence row;
  row.input_ids = Widen(sample.input_ids);
  if (packed) {
    row.targets = Widen(sample.labels);
    row.position_ids = Widen(sample.position_ids);
    row.segment_ids = SegmentIdsFromCuSeqlens(sample.cu_seqlens, static_cast<int64_t>(sample.input_ids.size()));
  } else {
    // One document: CollateMicroBatch shifts labels itself (target i = labels[i + 1]), so undo
    // the packer's shift; labels[0] is never a target.
    row.labels.resize(sample.labels.size());
    if (!row.labels.empty()) row.labels[0] = data::kIgnoreLabel;
    for (size_t i = 0; i + 1 < sample.labels.size(); ++i) row.labels[i + 1] = sample.labels[i];
  }
  return row;
}

absl::StatusOr<std::vector<TokenSequence>> TrainingStream::TakeStep() {
  std::vector<TokenSequence> rows;
  rows.reserve(rows_per_rank_);
  for (int64_t i = 0; i < rows_per_rank_; ++i) {
    FTD_ASSIGN_OR_RETURN(std::optional<data::PackedSample> sample, producer_->Next());
    if (!sample) return absl::InternalError("training data: the row stream ended (it runs through the epochs)");
    position_ = DataPosition{sample->next_position.epoch, sample->next_position.doc_index};
    rows.push_back(ToTokenSequence(*sample, packed_));
  }
  return rows;
}

TrainingData::~TrainingData() = default;

absl::StatusOr<std::unique_ptr<TrainingData>> TrainingData::Open(const TrainSpec& spec, int64_t vocab_size,
                                                                 std::ostream& log) {
  std::unique_ptr<TrainingData> d(new TrainingData());
  const bool pretokenized = spec.data_format == "tokens" || spec.data_format == "input_ids";
  auto format = data::ParseDatasetFormat(spec.data_format);
  if (!format.ok()) return absl::InvalidArgumentError(absl::StrCat("datasets.format: ", format.status().message()));

  // The tokenizer is optional only for token-id records; the encoder says so per record.
  const bool has_tokenizer = std::filesystem::exists(std::filesystem::path(spec.base_model) / "tokenizer.json");
  if (has_tokenizer && !pretokenized) {
    auto t = data::Tokenizer::FromFile(spec.base_model);
    if (!t.ok()) return absl::Status(t.status().code(), absl::StrCat("base_model tokenizer: ", t.status().message()));
    d->tokenizer_ = std::move(*t);
    if (d->tokenizer_->vocab_size() > vocab_size) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "base_model: tokenizer.json has %d tokens but config.json's vocab_size is %d", d->tokenizer_->vocab_size(),
          vocab_size));
    }
  } else if (!has_tokenizer && *format != data::DatasetFormat::kTokenIds) {
    return absl::FailedPreconditionError(absl::StrCat("datasets.format \"", spec.data_format, "\" needs ",
                                                      spec.base_model, "/tokenizer.json, which does not exist"));
  }
  FTD_ASSIGN_OR_RETURN(d->encoder_, data::DocumentEncoder::Create(d->tokenizer_.get()));
  if (d->tokenizer_ && (*format == data::DatasetFormat::kMessages || *format == data::DatasetFormat::kAuto)) {
    log << "chat records: " << d->encoder_->DescribeChat() << "\n";
  }

  // Rows are formed once, in file order; the order rows are visited in is SampleOrder's.
  data::PackingOptions& packing = d->packing_;
  packing.seq_len = static_cast<int32_t>(spec.seq_len);
  packing.shuffle = false;
  packing.num_epochs = 1;
  packing.pad_token_id = d->tokenizer_ && d->tokenizer_->pad_id() ? *d->tokenizer_->pad_id() : 0;
  packing.pack = !pretokenized;                      // pre-tokenized: one row per line, as given,
  packing.skip_untrained_documents = !pretokenized;  // every line a row
  d->seed_ = spec.seed;

  // Pass 1 (before any training): every record checked, each document's packed length kept.
  FTD_ASSIGN_OR_RETURN(FileSummary train, ValidateAndMeasure(spec.train_data, *format, d->tokenizer_.get(),
                                                             vocab_size, packing));
  FTD_ASSIGN_OR_RETURN(d->train_file_,
                       data::JsonlDocumentSource::Open(spec.train_data, *format, d->encoder_.get()));
  if (train.lengths.size() != d->train_file_->size()) {
    return absl::InternalError(absl::StrCat(spec.train_data, ": validated ", train.lengths.size(),
                                            " records but indexed ", d->train_file_->size(), " (did the file change?)"));
  }
  std::vector<int32_t> train_lengths, train_targets, validation_lengths;
  std::string validation_name;
  if (spec.validation_fraction > 0) {
    using Side = data::HoldoutView::Side;
    d->train_side_ = std::make_unique<data::HoldoutView>(d->train_file_.get(), spec.validation_fraction, spec.seed,
                                                         Side::kTrain);
    d->held_out_side_ = std::make_unique<data::HoldoutView>(d->train_file_.get(), spec.validation_fraction,
                                                            spec.seed, Side::kHeldOut);
    if (d->held_out_side_->size() == 0) {
      return absl::InvalidArgumentError(absl::StrCat("datasets.validation_fraction: ", spec.train_data, " has ",
                                                     d->train_file_->size(),
                                                     " record(s); a held-out split needs at least 2"));
    }
    d->train_ = d->train_side_.get();
    d->validation_ = d->held_out_side_.get();
    train_lengths = Select(train.lengths, *d->train_side_);
    train_targets = Select(train.targets, *d->train_side_);
    validation_lengths = Select(train.lengths, *d->held_out_side_);
    validation_name = absl::StrFormat("%d documents held out of %s (datasets.validation_fraction %g, seed %d)",
                                      d->held_out_side_->size(), spec.train_data, spec.validation_fraction, spec.seed);
  } else {
    d->train_ = d->train_file_.get();
    train_lengths = std::move(train.lengths);
    train_targets = std::move(train.targets);
  }
  if (!spec.validation_data.empty()) {
    FTD_ASSIGN_OR_RETURN(FileSummary validation, ValidateAndMeasure(spec.validation_data, *format, d->tokenizer_.get(),
                                                                     vocab_size, packing));
    FTD_ASSIGN_OR_RETURN(d->validation_file_,
                         data::JsonlDocumentSource::Open(spec.validation_data, *format, d->encoder_.get()));
    d->validation_ = d->validation_file_.get();
    validation_lengths = std::move(validation.lengths);
    validation_name = spec.validation_data;
  }

  // The rows: where each starts (the packer's rule replayed on the lengths).
  const auto plan = [&](const std::vector<int32_t>& lengths, std::vector<int64_t>* starts) -> absl::Status {
    return data::ForEachPlannedSample(lengths, packing, 0, [&](const data::DataPosition& start) {
             starts->push_back(start.doc_index);
           }).status();
  };
  FTD_RETURN_IF_ERROR(plan(train_lengths, &d->train_starts_));
  int64_t documents = 0;  // those with a trained token (the others are skipped)
  for (int32_t length : train_lengths) documents += length > 0;
  const int64_t rows = d->num_rows();
  if (rows == 0) return absl::InvalidArgumentError(absl::StrCat(spec.train_data, ": no document has a trained token"));
  if (packing.pack) {
    log << absl::StrFormat(
        "data %s (%s): %d documents packed into %d rows of %d tokens (%.1f%% filled, %d trained tokens); "
        "tokenized and packed during training by a background thread\n",
        spec.train_data, data::DatasetFormatName(*format), documents, rows, spec.seq_len,
        100.0 * SumLengths(train_lengths) / (static_cast<double>(rows) * spec.seq_len), SumLengths(train_targets));
  } else {
    log << absl::StrFormat("data %s (input_ids): %d rows of up to %d tokens, one per line; read during training by "
                           "a background thread\n",
                           spec.train_data, rows, spec.seq_len);
  }
  if (d->validation_ != nullptr) {
    FTD_RETURN_IF_ERROR(plan(validation_lengths, &d->validation_starts_));
    if (d->validation_starts_.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(validation_name, ": no validation document has a target token"));
    }
    log << absl::StrFormat("validation %s: %d rows\n", validation_name, d->validation_starts_.size());
  }
  return d;
}

absl::StatusOr<std::unique_ptr<TrainingStream>> TrainingData::Stream(const DataPosition& start, int rank, int world,
                                                                     int64_t global_batch, size_t queue_depth) const {
  if (world < 1 || rank < 0 || rank >= world || global_batch % world != 0) {
    return absl::InvalidArgumentError(absl::StrCat("training data: rank ", rank, " of ", world,
                                                   " cannot take an equal share of ", global_batch, " rows"));
  }
  const int64_t per_rank = global_batch / world;
  data::ProducerOptions options;
  options.queue_depth = queue_depth;
  FTD_ASSIGN_OR_RETURN(
      std::unique_ptr<data::PackedBatchProducer> producer,
      data::PackedBatchProducer::Start(std::make_unique<RankRowStream>(train_, packing_, &train_starts_, seed_, start,
                                                                       global_batch, rank * per_rank, per_rank),
                                       options));
  return std::unique_ptr<TrainingStream>(new TrainingStream(std::move(producer), packing_.pack, per_rank, start));
}

absl::StatusOr<std::unique_ptr<RowReader>> TrainingData::ReadValidation(int64_t first, int64_t count) const {
  if (first < 0 || first >= num_validation_rows() || count < 1) {
    return absl::OutOfRangeError(absl::StrCat("validation rows ", first, " + ", count, " of ", num_validation_rows()));
  }
  const int64_t last = std::min(first + count, num_validation_rows()) - 1;
  auto documents =
      std::make_unique<data::DocumentRange>(RowDocuments(validation_, validation_starts_, first, last));
  FTD_ASSIGN_OR_RETURN(std::unique_ptr<data::SequencePacker> packer,
                       data::SequencePacker::Create(documents.get(), packing_));
  return std::unique_ptr<RowReader>(new RowReader(std::move(documents), std::move(packer), packing_.pack));
}

absl::StatusOr<std::vector<TokenSequence>> RowReader::Take(int64_t count) {
  std::vector<TokenSequence> rows;
  while (static_cast<int64_t>(rows.size()) < count) {
    FTD_ASSIGN_OR_RETURN(std::optional<data::PackedSample> sample, packer_->Next());
    if (!sample) break;
    rows.push_back(ToTokenSequence(*sample, packed_));
  }
  return rows;
}

}  // namespace ftd::engine
