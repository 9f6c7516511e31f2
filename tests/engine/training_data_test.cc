// The streamed training data (engine/train/training_data.h) against the path it replaced, kept
// here as the reference: every document packed up front in file order (or, pre-tokenized, read
// whole with ReadTokenJsonl), then SampleOrder over the rows, rank r taking its slice of each
// global batch. The stream must give every rank exactly those rows, step after step across
// epochs, and from any saved position; the held-out split must be disjoint from training.
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include <ATen/ATen.h>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "engine/data/byte_level.h"
#include "engine/data/document_encoder.h"
#include "engine/data/document_source.h"
#include "engine/data/sequence_packer.h"
#include "engine/train/packed_batch.h"
#include "engine/train/training_data.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace ftd::engine {
namespace {

namespace fs = std::filesystem;
constexpr int64_t kVocab = 5000;
constexpr int64_t kSeqLen = 24;

std::string TempDir(const std::string& name) {
  fs::path p = fs::temp_directory_path() / ("ftd_training_data_test_" + name + "_" + std::to_string(::getpid()));
  EXPECT_TRUE(RemoveTree(p.string()).ok());
  fs::create_directories(p);
  return p.string();
}

// Document d: tokens 100 * (d % 40) + i + 1 (so a row's first token names its document; with
// labels, small ids for the byte-level test tokenizer's vocabulary), lengths
// 2..31 (some longer than kSeqLen); with labels, every third document masks its first half and
// every seventh is untrained entirely. Blank lines in between, as real files have.
std::string WriteDocuments(const std::string& dir, int count, bool with_labels) {
  const std::string path = dir + "/data.jsonl";
  std::ofstream f(path);
  for (int d = 0; d < count; ++d) {
    const int length = 2 + (d * 11) % 30;
    std::string ids, labels;
    for (int i = 0; i < length; ++i) {
      const int id = with_labels ? 1 + (d * 7 + i) % 250 : 100 * (d % 40) + i + 1;  // < 256: the test tokenizer's
      const bool masked = d % 7 == 6 || (d % 3 == 0 && i < length / 2);
      absl::StrAppend(&ids, i ? "," : "", id);
      absl::StrAppend(&labels, i ? "," : "", masked ? -100 : id);
    }
    f << "{\"input_ids\":[" << ids << "]" << (with_labels ? absl::StrCat(",\"labels\":[", labels, "]") : "") << "}\n";
    if (d % 5 == 2) f << "\n";
  }
  return path;
}

// A byte-level BPE tokenizer.json without merges: "auto" and the chat formats need one (the
// token-id records here never use it).
void WriteByteTokenizer(const std::string& dir) {
  nlohmann::json vocab = nlohmann::json::object();
  for (int b = 0; b < 256; ++b) {
    std::string symbol;
    data::AppendByteLevel(std::string(1, static_cast<char>(b)), &symbol);
    vocab[symbol] = b;
  }
  nlohmann::json tokenizer = {
      {"version", "1.0"}, {"truncation", nullptr}, {"padding", nullptr}, {"added_tokens", nlohmann::json::array()},
      {"normalizer", nullptr},
      {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}}},
      {"post_processor", nullptr}, {"decoder", {{"type", "ByteLevel"}}},
      {"model", {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr}, {"fuse_unk", false},
                 {"byte_fallback", false}, {"ignore_merges", false}, {"vocab", vocab},
                 {"merges", nlohmann::json::array()}}}};
  std::ofstream(dir + "/tokenizer.json") << tokenizer.dump();
}

TrainSpec Spec(const std::string& dir, const std::string& data, const std::string& format) {
  TrainSpec spec;
  spec.base_model = dir;  // no tokenizer.json: token-id records only
  spec.train_data = data;
  spec.data_format = format;
  spec.seq_len = kSeqLen;
  spec.seed = 17;
  return spec;
}

// The whole-dataset reference: all rows in memory, in file order.
std::vector<TokenSequence> WholeDatasetRows(const std::string& path, const std::string& format) {
  if (format == "tokens") {
    auto rows = ReadTokenJsonl(path, kVocab);
    EXPECT_TRUE(rows.ok()) << rows.status();
    return rows.ok() ? *rows : std::vector<TokenSequence>{};
  }
  auto encoder = data::DocumentEncoder::Create(nullptr);
  auto source = data::JsonlDocumentSource::Open(path, data::DatasetFormat::kAuto, encoder->get());
  EXPECT_TRUE(source.ok()) << source.status();
  data::PackingOptions packing;
  packing.seq_len = kSeqLen;
  packing.shuffle = false;
  packing.num_epochs = 1;
  auto packer = data::SequencePacker::Create(source->get(), packing);
  std::vector<TokenSequence> rows;
  while (true) {
    auto sample = (*packer)->Next();
    EXPECT_TRUE(sample.ok()) << sample.status();
    if (!sample.ok() || !*sample) break;
    TokenSequence row;
    row.input_ids.assign(sample->value().input_ids.begin(), sample->value().input_ids.end());
    row.targets.assign(sample->value().labels.begin(), sample->value().labels.end());
    row.position_ids.assign(sample->value().position_ids.begin(), sample->value().position_ids.end());
    row.segment_ids = SegmentIdsFromCuSeqlens(sample->value().cu_seqlens, kSeqLen);
    rows.push_back(std::move(row));
  }
  return rows;
}

// What training sees of a row: its collated tensors.
void ExpectSameRow(const TokenSequence& got, const TokenSequence& want, const std::string& where) {
  MicroBatchTensors a = CollateMicroBatch({&got}, kSeqLen), b = CollateMicroBatch({&want}, kSeqLen);
  ASSERT_TRUE(at::equal(a.input_ids, b.input_ids)) << where;
  ASSERT_TRUE(at::equal(a.targets, b.targets)) << where;
  ASSERT_EQ(a.position_ids.defined(), b.position_ids.defined()) << where;
  if (a.position_ids.defined()) {
    ASSERT_TRUE(at::equal(a.position_ids, b.position_ids)) << where;
    ASSERT_TRUE(at::equal(a.segment_ids, b.segment_ids)) << where;
  }
}

class TrainingDataTest : public ::testing::TestWithParam<std::string> {};

TEST_P(TrainingDataTest, StreamGivesEveryRankTheWholeDatasetPathsRows) {
  const std::string format = GetParam();
  const std::string dir = TempDir("stream_" + format);
  const std::string path = WriteDocuments(dir, 45, /*with_labels=*/format != "tokens");
  if (format == "auto") WriteByteTokenizer(dir);
  const std::vector<TokenSequence> reference = WholeDatasetRows(path, format);
  std::ostringstream log;
  auto data = TrainingData::Open(Spec(dir, path, format), kVocab, log);
  ASSERT_TRUE(data.ok()) << data.status();
  ASSERT_EQ((*data)->num_rows(), static_cast<int64_t>(reference.size())) << log.str();
  if (format == "tokens") {
    EXPECT_EQ(reference.size(), 45u);
  } else {
    EXPECT_THAT(log.str(), ::testing::HasSubstr(absl::StrCat("packed into ", reference.size(), " rows of 24 tokens")));
  }

  constexpr int64_t kGlobalBatch = 6, kSteps = 25;  // 25 x 6 rows: several epochs, steps across their ends
  for (int world : {1, 3}) {
    const int64_t per_rank = kGlobalBatch / world;
    SampleOrder order((*data)->num_rows(), 17);
    DataPosition expected_position;
    std::vector<std::unique_ptr<TrainingStream>> streams;
    for (int rank = 0; rank < world; ++rank) {
      auto stream = (*data)->Stream({}, rank, world, kGlobalBatch, /*queue_depth=*/2);
      ASSERT_TRUE(stream.ok()) << stream.status();
      streams.push_back(std::move(*stream));
    }
    for (int64_t step = 0; step < kSteps; ++step) {
      const std::vector<int64_t> ids = order.Take(kGlobalBatch, &expected_position);
      for (int rank = 0; rank < world; ++rank) {
        auto rows = streams[rank]->TakeStep();
        ASSERT_TRUE(rows.ok()) << rows.status();
        ASSERT_EQ(static_cast<int64_t>(rows->size()), per_rank);
        for (int64_t i = 0; i < per_rank; ++i) {
          ExpectSameRow((*rows)[i], reference[ids[rank * per_rank + i]],
                        absl::StrCat(format, " world ", world, " rank ", rank, " step ", step, " row ", i));
        }
        EXPECT_EQ(streams[rank]->position().epoch, expected_position.epoch);
        EXPECT_EQ(streams[rank]->position().index, expected_position.index);
      }
    }
    EXPECT_GE(expected_position.epoch, 2);
  }

  // Resuming from a saved mid-epoch position continues with exactly the rows that came next.
  auto full = (*data)->Stream({}, 1, 2, kGlobalBatch);
  ASSERT_TRUE(full.ok());
  std::vector<std::vector<TokenSequence>> steps;
  for (int i = 0; i < 12; ++i) steps.push_back(*(*full)->TakeStep());
  auto first = (*data)->Stream({}, 1, 2, kGlobalBatch);
  for (int i = 0; i < 5; ++i) ASSERT_TRUE((*first)->TakeStep().ok());
  const DataPosition saved = (*first)->position();
  ASSERT_GT(saved.index, 0);
  auto resumed = (*data)->Stream(saved, 1, 2, kGlobalBatch);
  ASSERT_TRUE(resumed.ok());
  for (int i = 5; i < 12; ++i) {
    auto rows = (*resumed)->TakeStep();
    ASSERT_TRUE(rows.ok());
    for (size_t r = 0; r < rows->size(); ++r) ExpectSameRow((*rows)[r], steps[i][r], absl::StrCat("resumed step ", i));
  }
  EXPECT_FALSE((*data)->Stream({}, 0, 4, kGlobalBatch).ok());  // 6 rows do not split over 4 ranks
}

INSTANTIATE_TEST_SUITE_P(Formats, TrainingDataTest, ::testing::Values("tokens", "auto"));

TEST(TrainingDataHoldoutTest, HeldOutRowsAreDisjointFromTrainingRows) {
  const std::string dir = TempDir("holdout");
  const std::string path = WriteDocuments(dir, 40, /*with_labels=*/false);  // first token names the document
  TrainSpec spec = Spec(dir, path, "tokens");
  spec.validation_fraction = 0.25;
  std::ostringstream log;
  auto data = TrainingData::Open(spec, kVocab, log);
  ASSERT_TRUE(data.ok()) << data.status();
  EXPECT_THAT(log.str(), ::testing::HasSubstr("10 documents held out of"));
  ASSERT_EQ((*data)->num_validation_rows(), 10);
  ASSERT_EQ((*data)->num_rows(), 30);
  std::set<int64_t> held, trained;
  auto reader = (*data)->ReadValidation(0, 100);
  ASSERT_TRUE(reader.ok());
  auto rows = (*reader)->Take(100);
  ASSERT_TRUE(rows.ok());
  ASSERT_EQ(rows->size(), 10u);
  for (const TokenSequence& row : *rows) held.insert(row.input_ids[0]);
  auto middle = (*data)->ReadValidation(7, 2);  // a reader of any rows
  ASSERT_TRUE(middle.ok());
  auto two = (*middle)->Take(5);
  ASSERT_TRUE(two.ok());
  ASSERT_EQ(two->size(), 2u);  // no more than asked for
  EXPECT_EQ((*two)[0].input_ids, (*rows)[7].input_ids);
  EXPECT_EQ((*two)[1].input_ids, (*rows)[8].input_ids);
  EXPECT_FALSE((*data)->ReadValidation(10, 1).ok());
  auto stream = (*data)->Stream({}, 0, 1, 30);
  auto epoch = (*stream)->TakeStep();  // one step = one epoch: every training row once
  ASSERT_TRUE(epoch.ok());
  for (const TokenSequence& row : *epoch) trained.insert(row.input_ids[0]);
  EXPECT_EQ(held.size(), 10u);
  EXPECT_EQ(trained.size(), 30u);
  for (int64_t id : held) EXPECT_EQ(trained.count(id), 0u) << "held-out document " << id << " is trained on";
  // The same seed holds out the same documents; another seed others.
  auto again = TrainingData::Open(spec, kVocab, log);
  EXPECT_EQ((*(*(*again)->ReadValidation(0, 100))->Take(100))[3].input_ids, (*rows)[3].input_ids);
  spec.seed = 18;
  auto other = TrainingData::Open(spec, kVocab, log);
  std::set<int64_t> other_held;
  for (const TokenSequence& row : *(*(*other)->ReadValidation(0, 100))->Take(100)) other_held.insert(row.input_ids[0]);
  EXPECT_NE(other_held, held);
}

TEST(TrainingDataErrorsTest, BadLinesAndMissingTokenizerAreNamed) {
  const std::string dir = TempDir("errors");
  const std::string path = dir + "/bad.jsonl";
  std::ofstream(path) << "{\"input_ids\":[1,2,3]}\n\n{\"input_ids\":[1,99999]}\n";
  std::ostringstream log;
  auto data = TrainingData::Open(Spec(dir, path, "tokens"), kVocab, log);
  ASSERT_FALSE(data.ok());
  EXPECT_THAT(std::string(data.status().message()), ::testing::HasSubstr("bad.jsonl:3:"));
  auto text = TrainingData::Open(Spec(dir, path, "text"), kVocab, log);
  ASSERT_FALSE(text.ok());
  EXPECT_THAT(std::string(text.status().message()), ::testing::HasSubstr("tokenizer.json"));
  TrainSpec tiny = Spec(dir, dir + "/one.jsonl", "tokens");
  std::ofstream(tiny.train_data) << "{\"input_ids\":[1,2,3]}\n";
  tiny.validation_fraction = 0.5;
  auto one = TrainingData::Open(tiny, kVocab, log);
  ASSERT_FALSE(one.ok());
  EXPECT_THAT(std::string(one.status().message()), ::testing::HasSubstr("datasets.validation_fraction"));
}

}  // namespace
}  // namespace ftd::engine
