// The data a training run streams (datasets.train, datasets.format) and evaluates on
// (datasets.validation, or datasets.validation_fraction held out of the training file):
// - "tokens" / "input_ids": pre-tokenized JSONL, one unpacked row per line (the layout the HF
//   parity tests use);
// - "messages" | "prompt_completion" | "text" | "auto": records tokenized with the base model's
//   tokenizer.json (chat template from its files, loss on assistant turns / completions), packed
//   into seq_len rows with document boundaries kept (engine/data/sequence_packer.h).
//
// Open() validates every record first, so a bad line fails with its file, line and reason before
// step 1. The same pass keeps each document's packed length (4 bytes a document, no tokens), and
// replaying the packer's greedy rule on those lengths (data::ForEachPlannedSample) gives the
// rows: where each starts in the file (8 bytes a row). That is the row count total_steps needs.
// Rows are then tokenized and packed again as training asks for them, by a background thread
// (data::PackedBatchProducer) into a bounded queue, so memory does not grow with the dataset
// beyond those per-document and per-row integers and the file's line index.
//
// Order (as when the whole dataset was packed in memory first): the documents are packed once,
// in file order; epoch e visits the rows in a permutation drawn from (seed, e) (SampleOrder);
// a step takes the next global_batch rows, crossing into the next epoch as needed, and rank r
// of W takes rows [r * global_batch / W, (r + 1) * global_batch / W) of them. The position
// (epoch, index) after a step is the same on every rank and goes into checkpoints; resuming from
// it continues the exact order.
#pragma once

#include <cstdint>
#include <memory>
#include <ostream>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/data/packed_batch_producer.h"
#include "engine/data/sequence_packer.h"
#include "engine/train/token_dataset.h"
#include "engine/train/train_spec.h"

namespace ftd::data {
class DocumentEncoder;
class DocumentSource;
class HoldoutView;
class JsonlDocumentSource;
class Tokenizer;
}  // namespace ftd::data

namespace ftd::engine {

// A packed sample as the trainer's row: packed layouts keep targets, positions and segments;
// unpacked ones (PackingOptions::pack off) become input_ids + unshifted labels.
TokenSequence ToTokenSequence(const data::PackedSample& sample, bool packed);

// One rank's rows, produced ahead by a background thread.
class TrainingStream {
 public:
  // This rank's rows of the next step (global_batch / world of them), waiting while the producer
  // is behind.
  absl::StatusOr<std::vector<TokenSequence>> TakeStep();
  // Where to resume after the steps taken so far (the same on every rank).
  const DataPosition& position() const { return position_; }
  data::ProducerStats stats() const { return producer_->stats(); }

 private:
  friend class TrainingData;
  TrainingStream(std::unique_ptr<data::PackedBatchProducer> producer, bool packed, int64_t rows_per_rank,
                 DataPosition start)
      : producer_(std::move(producer)), packed_(packed), rows_per_rank_(rows_per_rank), position_(start) {}
  std::unique_ptr<data::PackedBatchProducer> producer_;
  bool packed_;
  int64_t rows_per_rank_;
  DataPosition position_;
};

// Consecutive rows, tokenized and packed as they are taken (validation).
class RowReader {
 public:
  // The next `count` rows, fewer (or none) past the reader's last row.
  absl::StatusOr<std::vector<TokenSequence>> Take(int64_t count);

 private:
  friend class TrainingData;
  RowReader(std::unique_ptr<data::DocumentSource> documents, std::unique_ptr<data::SequencePacker> packer, bool packed)
      : documents_(std::move(documents)), packer_(std::move(packer)), packed_(packed) {}
  std::unique_ptr<data::DocumentSource> documents_;  // what packer_ reads
  std::unique_ptr<data::SequencePacker> packer_;
  bool packed_;
};

class TrainingData {
 public:
  // Validates and plans datasets.train (and the validation data); logs what it found.
  static absl::StatusOr<std::unique_ptr<TrainingData>> Open(const TrainSpec& spec, int64_t vocab_size,
                                                            std::ostream& log);
  ~TrainingData();
  TrainingData(const TrainingData&) = delete;
  TrainingData& operator=(const TrainingData&) = delete;

  // Training rows (every epoch has them all).
  int64_t num_rows() const { return static_cast<int64_t>(train_starts_.size()); }
  // Rank `rank` of `world`'s rows of each step of `global_batch` rows, from `start` (a saved
  // position, or {} for the beginning). `global_batch` must be a multiple of `world`. The stream
  // must not outlive this object.
  absl::StatusOr<std::unique_ptr<TrainingStream>> Stream(const DataPosition& start, int rank, int world,
                                                         int64_t global_batch, size_t queue_depth = 8) const;

  // Validation rows (0 without validation data), in file order.
  int64_t num_validation_rows() const { return static_cast<int64_t>(validation_starts_.size()); }
  // Validation rows [first, first + count) (fewer at the end; 0 <= first < num_validation_rows()).
  absl::StatusOr<std::unique_ptr<RowReader>> ReadValidation(int64_t first, int64_t count) const;

 private:
  TrainingData() = default;

  std::unique_ptr<data::Tokenizer> tokenizer_;
  std::unique_ptr<data::DocumentEncoder> encoder_;
  std::unique_ptr<data::JsonlDocumentSource> train_file_, validation_file_;
  std::unique_ptr<data::HoldoutView> train_side_, held_out_side_;  // with validation_fraction
  const data::DocumentSource* train_ = nullptr;
  const data::DocumentSource* validation_ = nullptr;
  data::PackingOptions packing_;             // file order, one pass: how rows are formed
  uint64_t seed_ = 0;                        // of the per-epoch row order
  std::vector<int64_t> train_starts_;        // the document each training row starts at
  std::vector<int64_t> validation_starts_;   // the document each validation row starts at
};

}  // namespace ftd::engine
