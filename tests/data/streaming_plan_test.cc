// What streamed training relies on in engine/data: planning samples from document lengths alone
// (ForEachPlannedSample must agree with the packer sample for sample), one-document samples,
// the seeded held-out split, the validator's per-document callback, and a producer running any
// SampleStream with its wait times.
#include <chrono>
#include <random>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "engine/data/dataset_validator.h"
#include "engine/data/document_encoder.h"
#include "engine/data/document_source.h"
#include "engine/data/packed_batch_producer.h"
#include "engine/data/sequence_packer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/data/test_tokenizer_util.h"

namespace ftd::data {
namespace {

// Document d: tokens 1000 * (d + 1) + i, lengths 1..40 (some longer than the test seq_len),
// every fifth document entirely untrained, every third with a masked first half.
std::vector<TokenizedDocument> RandomDocuments(int count, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<TokenizedDocument> documents;
  for (int d = 0; d < count; ++d) {
    TokenizedDocument document;
    const int length = 1 + static_cast<int>(rng() % 40);
    for (int i = 0; i < length; ++i) {
      document.input_ids.push_back(1000 * (d + 1) + i);
      const bool masked = d % 5 == 4 || (d % 3 == 0 && i < length / 2);
      document.labels.push_back(masked ? kIgnoreLabel : document.input_ids.back());
    }
    documents.push_back(std::move(document));
  }
  return documents;
}

std::vector<PackedSample> Drain(SampleStream* stream) {
  std::vector<PackedSample> samples;
  while (true) {
    auto sample = stream->Next();
    EXPECT_TRUE(sample.ok()) << sample.status();
    if (!sample.ok() || !*sample) break;
    samples.push_back(std::move(**sample));
  }
  return samples;
}

TEST(PackingPlanTest, PlannedSamplesAreThePackersSamples) {
  const auto documents = RandomDocuments(120, 7);
  InMemoryDocumentSource source(documents);
  int cases = 0;
  for (bool pack : {true, false}) {
    for (bool shuffle : {true, false}) {
      for (bool skip : {true, false}) {
        PackingOptions options;
        options.seq_len = 32;
        options.seed = 99;
        options.shuffle = shuffle;
        options.num_epochs = 3;
        options.pack = pack;
        options.skip_untrained_documents = skip;
        std::vector<int32_t> lengths;
        for (const auto& document : documents) lengths.push_back(PackedLength(document, options));
        auto packer = SequencePacker::Create(&source, options);
        ASSERT_TRUE(packer.ok());
        const auto all = Drain(packer->get());
        for (int64_t epoch = 0; epoch < 3; ++epoch) {
          std::vector<const PackedSample*> expected;
          for (const auto& s : all) {
            if (s.epoch == epoch) expected.push_back(&s);
          }
          std::vector<DataPosition> starts;
          auto count = ForEachPlannedSample(lengths, options, epoch,
                                            [&](const DataPosition& start) { starts.push_back(start); });
          ASSERT_TRUE(count.ok()) << count.status();
          const std::string where = absl::StrCat("pack ", pack, " shuffle ", shuffle, " skip ", skip, " epoch ", epoch);
          ASSERT_EQ(*count, static_cast<int64_t>(expected.size())) << where;
          ASSERT_EQ(starts.size(), expected.size()) << where;
          for (size_t k = 0; k < starts.size(); ++k) {
            EXPECT_EQ(starts[k].epoch, epoch);
            // A packer started where the plan says returns exactly that sample.
            auto from_start = SequencePacker::Create(&source, options, starts[k]);
            ASSERT_TRUE(from_start.ok()) << from_start.status();
            auto sample = (*from_start)->Next();
            ASSERT_TRUE(sample.ok() && sample->has_value()) << where << " sample " << k;
            EXPECT_EQ((*sample)->input_ids, expected[k]->input_ids) << where << " sample " << k;
            EXPECT_EQ((*sample)->labels, expected[k]->labels) << where << " sample " << k;
            EXPECT_EQ((*sample)->cu_seqlens, expected[k]->cu_seqlens) << where << " sample " << k;
          }
          ++cases;
        }
      }
    }
  }
  EXPECT_EQ(cases, 24);
  PackingOptions split;
  split.long_documents = LongDocumentPolicy::kSplit;
  EXPECT_FALSE(ForEachPlannedSample({3, 4}, split, 0, [](const DataPosition&) {}).ok());
}

TEST(PackingPlanTest, UnpackedSamplesHoldOneDocumentUnpadded) {
  TokenizedDocument a{{1, 2, 3}, {1, 2, 3}};
  TokenizedDocument b{{4, 5, 6, 7, 8, 9}, {kIgnoreLabel, kIgnoreLabel, 6, 7, 8, 9}};
  InMemoryDocumentSource source({a, b});
  PackingOptions options;
  options.seq_len = 5;
  options.shuffle = false;
  options.pack = false;
  options.pad_token_id = 77;
  auto packer = SequencePacker::Create(&source, options);
  ASSERT_TRUE(packer.ok());
  const auto samples = Drain(packer->get());
  ASSERT_EQ(samples.size(), 2u);
  EXPECT_EQ(samples[0].input_ids, (std::vector<int32_t>{1, 2, 3}));
  EXPECT_EQ(samples[0].labels, (std::vector<int32_t>{2, 3, kIgnoreLabel}));  // shifted, no padding
  EXPECT_EQ(samples[0].cu_seqlens, (std::vector<int32_t>{0, 3}));
  EXPECT_EQ(samples[1].input_ids, (std::vector<int32_t>{4, 5, 6, 7, 8}));  // truncated to seq_len
  EXPECT_EQ(samples[1].labels, (std::vector<int32_t>{kIgnoreLabel, 6, 7, 8, kIgnoreLabel}));
  EXPECT_EQ(PackedLength(b, options), 5);
  EXPECT_EQ((*packer)->PaddingSample().input_ids, std::vector<int32_t>(5, 77));
}

TEST(HoldoutViewTest, SeededFractionIsDisjointDeterministicAndSized) {
  InMemoryDocumentSource source(RandomDocuments(200, 3));
  using Side = HoldoutView::Side;
  const auto split = [&](double fraction, uint64_t seed) {
    HoldoutView train(&source, fraction, seed, Side::kTrain), held(&source, fraction, seed, Side::kHeldOut);
    std::vector<size_t> t, h;
    for (size_t i = 0; i < train.size(); ++i) t.push_back(train.base_index(i));
    for (size_t i = 0; i < held.size(); ++i) h.push_back(held.base_index(i));
    return std::make_pair(t, h);
  };
  const auto [train, held] = split(0.1, 5);
  ASSERT_EQ(held.size(), 20u);
  ASSERT_EQ(train.size(), 180u);
  std::set<size_t> all(train.begin(), train.end());
  for (size_t i : held) EXPECT_TRUE(all.insert(i).second) << "document " << i << " is on both sides";
  EXPECT_EQ(all.size(), 200u);
  EXPECT_TRUE(std::is_sorted(held.begin(), held.end()));  // file order on both sides
  EXPECT_TRUE(std::is_sorted(train.begin(), train.end()));
  EXPECT_EQ(split(0.1, 5).second, held);  // the same seed, the same split
  EXPECT_NE(split(0.1, 6).second, held);  // another seed, another split
  std::vector<size_t> every_tenth;
  HoldoutView tenth(&source, size_t{10}, Side::kHeldOut);
  for (size_t i = 0; i < tenth.size(); ++i) every_tenth.push_back(tenth.base_index(i));
  EXPECT_NE(every_tenth, held);  // drawn, not a stride
  // Views read the base's documents.
  HoldoutView held_view(&source, 0.1, 5, Side::kHeldOut);
  EXPECT_EQ(held_view.Get(0)->input_ids, source.Get(held[0])->input_ids);
  // At least one document each side; nothing to split with fewer than two.
  EXPECT_EQ(split(1e-6, 1).second.size(), 1u);
  EXPECT_EQ(split(0.9999, 1).first.size(), 1u);
  InMemoryDocumentSource one(RandomDocuments(1, 3));
  EXPECT_EQ(HoldoutView(&one, 0.5, 1, Side::kHeldOut).size(), 0u);
  EXPECT_EQ(HoldoutView(&one, 0.5, 1, Side::kTrain).size(), 1u);
}

TEST(ValidateDatasetTest, ReportsEveryGoodDocumentWithItsRecordIndex) {
  const std::string path = testing::WriteTempFile(
      "measured.jsonl", "{\"input_ids\":[1,2,3]}\n\n  \n{\"input_ids\":[4,5],\"labels\":[-100,5]}\r\n{\"input_ids\":[6]}");
  ValidationOptions options;
  std::vector<std::pair<int64_t, TokenizedDocument>> seen;
  options.on_document = [&](int64_t index, const TokenizedDocument& document) { seen.emplace_back(index, document); };
  ASSERT_TRUE(ValidateDataset(path, DatasetFormat::kTokenIds, 10, options).ok());
  auto encoder = DocumentEncoder::Create(nullptr);
  auto source = JsonlDocumentSource::Open(path, DatasetFormat::kTokenIds, encoder->get());
  ASSERT_TRUE(source.ok());
  ASSERT_EQ(seen.size(), (*source)->size());
  for (size_t i = 0; i < seen.size(); ++i) {
    EXPECT_EQ(seen[i].first, static_cast<int64_t>(i));  // JsonlFile's record numbering (blank lines skipped)
    EXPECT_EQ(seen[i].second.input_ids, (*source)->Get(i)->input_ids);
    EXPECT_EQ(seen[i].second.labels, (*source)->Get(i)->labels);
  }
  // Without a tokenizer, text records cannot be measured: each is a bad line, named.
  const std::string text = testing::WriteTempFile("text_no_tokenizer.jsonl", "{\"text\":\"hi\"}\n");
  absl::Status status = ValidateDataset(text, DatasetFormat::kText, 0, options);
  EXPECT_THAT(std::string(status.message()), ::testing::HasSubstr("text_no_tokenizer.jsonl:1: text records need a tokenizer"));
}

// Yields `count` one-token samples, sleeping `delay` before each.
class SlowStream final : public SampleStream {
 public:
  SlowStream(int count, std::chrono::milliseconds delay) : left_(count), delay_(delay) {}
  absl::StatusOr<std::optional<PackedSample>> Next() override {
    if (left_ == 0) return std::optional<PackedSample>();
    std::this_thread::sleep_for(delay_);
    PackedSample sample;
    sample.input_ids = {left_--};
    sample.next_position.samples_emitted = 3 - left_;
    return std::optional<PackedSample>(std::move(sample));
  }
  PackedSample PaddingSample() const override { return {}; }

 private:
  int left_;
  std::chrono::milliseconds delay_;
};

TEST(ProducerTest, RunsAnySampleStreamAndTimesBothSidesWaiting) {
  // A slow stream: the consumer waits for every sample (3 x 30 ms; at least one wait is seen
  // unless this thread stalls longer than the producer's sleeps).
  auto slow = PackedBatchProducer::Start(std::make_unique<SlowStream>(3, std::chrono::milliseconds(30)));
  ASSERT_TRUE(slow.ok());
  std::vector<int32_t> got;
  while (true) {
    auto sample = (*slow)->Next();
    ASSERT_TRUE(sample.ok());
    if (!*sample) break;
    got.push_back((*sample)->input_ids[0]);
  }
  EXPECT_EQ(got, (std::vector<int32_t>{3, 2, 1}));
  EXPECT_GT((*slow)->stats().consumer_wait_seconds, 0.0);
  EXPECT_EQ((*slow)->stats().samples_delivered, 3);

  // A fast stream and a late consumer: the producer fills its queue of 1 and waits.
  auto fast = PackedBatchProducer::Start(std::make_unique<SlowStream>(3, std::chrono::milliseconds(0)),
                                         {.queue_depth = 1});
  ASSERT_TRUE(fast.ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  int delivered = 0;
  while (true) {
    auto sample = (*fast)->Next();
    ASSERT_TRUE(sample.ok());
    if (!*sample) break;
    ++delivered;
  }
  EXPECT_EQ(delivered, 3);
  EXPECT_GT((*fast)->stats().producer_wait_seconds, 0.0);
}

}  // namespace
}  // namespace ftd::data
