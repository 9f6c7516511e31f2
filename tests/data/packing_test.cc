#include <map>
#include <set>

#include "engine/data/data_position.h"
#include "engine/data/document_encoder.h"
#include "engine/data/epoch_order.h"
#include "engine/data/packed_batch_producer.h"
#include "engine/data/sequence_packer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/data/test_tokenizer_util.h"

namespace ftd::data {
namespace {

// Document d has tokens 1000*d + i (unique, so each token names its document and position),
// with length 1 + (d * 7) % 13; every third document masks its first half (a "prompt").
std::vector<TokenizedDocument> MakeDocuments(int count) {
  std::vector<TokenizedDocument> documents;
  for (int d = 0; d < count; ++d) {
    TokenizedDocument document;
    const int length = 2 + (d * 7) % 13;
    for (int i = 0; i < length; ++i) {
      document.input_ids.push_back(1000 * (d + 1) + i);
      const bool masked = d % 3 == 0 && i < length / 2;
      document.labels.push_back(masked ? kIgnoreLabel : document.input_ids.back());
    }
    documents.push_back(std::move(document));
  }
  return documents;
}

std::vector<PackedSample> Drain(SequencePacker* packer) {
  std::vector<PackedSample> samples;
  while (true) {
    auto sample = packer->Next();
    EXPECT_TRUE(sample.ok()) << sample.status();
    if (!sample.ok() || !*sample) break;
    samples.push_back(std::move(**sample));
  }
  return samples;
}

PackingOptions Options(int32_t seq_len, int64_t epochs = 1) {
  PackingOptions options;
  options.seq_len = seq_len;
  options.seed = 1234;
  options.num_epochs = epochs;
  options.pad_token_id = 7;
  options.skip_untrained_documents = false;
  return options;
}

TEST(PackingTest, InvariantsHoldForEverySample) {
  const auto documents = MakeDocuments(50);
  InMemoryDocumentSource source(documents);
  auto packer = SequencePacker::Create(&source, Options(32));
  ASSERT_TRUE(packer.ok());
  std::multiset<int32_t> seen_docs;
  for (const PackedSample& s : Drain(packer->get())) {
    ASSERT_EQ(s.input_ids.size(), 32u);
    ASSERT_EQ(s.labels.size(), 32u);
    ASSERT_EQ(s.position_ids.size(), 32u);
    ASSERT_EQ(s.cu_seqlens.front(), 0);
    ASSERT_EQ(s.cu_seqlens.back(), 32);
    int32_t loss_tokens = 0;
    for (size_t seg = 0; seg + 1 < s.cu_seqlens.size(); ++seg) {
      const int32_t begin = s.cu_seqlens[seg], end = s.cu_seqlens[seg + 1];
      ASSERT_LT(begin, end);
      const bool padding = seg == static_cast<size_t>(s.num_documents);
      const int32_t doc = padding ? -1 : s.input_ids[begin] / 1000 - 1;
      if (!padding) seen_docs.insert(doc);
      for (int32_t i = begin; i < end; ++i) {
        EXPECT_EQ(s.position_ids[i], i - begin) << "positions restart per document";
        if (padding) {
          EXPECT_EQ(s.input_ids[i], 7);
          EXPECT_EQ(s.labels[i], kIgnoreLabel);
          continue;
        }
        EXPECT_EQ(s.input_ids[i], 1000 * (doc + 1) + (i - begin)) << "documents are contiguous and whole";
        if (i == end - 1) {
          EXPECT_EQ(s.labels[i], kIgnoreLabel) << "no label crosses a document end";
        } else {
          // Shifted: the label is the next token of the same document, or masked as the data says.
          EXPECT_EQ(s.labels[i], documents[doc].labels[i - begin + 1]);
        }
        loss_tokens += s.labels[i] != kIgnoreLabel;
      }
    }
    EXPECT_EQ(loss_tokens, s.num_loss_tokens);
    EXPECT_EQ(s.cu_seqlens[s.num_documents], s.num_real_tokens);
  }
  // Every document exactly once per epoch.
  EXPECT_EQ(seen_docs.size(), documents.size());
  EXPECT_EQ(std::set<int32_t>(seen_docs.begin(), seen_docs.end()).size(), documents.size());
}

TEST(PackingTest, ShuffleIsDeterministicPerSeedAndEpoch) {
  EXPECT_EQ(EpochOrder(1000, 1, 0, true), EpochOrder(1000, 1, 0, true));
  EXPECT_NE(EpochOrder(1000, 1, 0, true), EpochOrder(1000, 2, 0, true));
  EXPECT_NE(EpochOrder(1000, 1, 0, true), EpochOrder(1000, 1, 1, true));
  auto order = EpochOrder(1000, 1, 0, true);
  std::sort(order.begin(), order.end());
  EXPECT_EQ(order, EpochOrder(1000, 1, 0, false));
  // Pinned values: the order must not change across platforms or releases (resumed runs and
  // recorded experiments depend on it).
  EXPECT_THAT(EpochOrder(10, 42, 0, true), ::testing::ElementsAre(7, 5, 8, 0, 9, 6, 2, 1, 4, 3));
}

TEST(PackingTest, ResumeMidEpochContinuesTheExactOrder) {
  // A real JSONL file through the tokenizer-free input_ids path.
  std::string jsonl;
  for (const auto& document : MakeDocuments(40)) {
    jsonl += "{\"input_ids\":[";
    for (size_t i = 0; i < document.input_ids.size(); ++i) jsonl += (i ? "," : "") + std::to_string(document.input_ids[i]);
    jsonl += "],\"labels\":[";
    for (size_t i = 0; i < document.labels.size(); ++i) jsonl += (i ? "," : "") + std::to_string(document.labels[i]);
    jsonl += "]}\n";
  }
  const std::string path = testing::WriteTempFile("resume.jsonl", jsonl);
  auto encoder = DocumentEncoder::Create(nullptr);
  ASSERT_TRUE(encoder.ok());
  auto source = JsonlDocumentSource::Open(path, DatasetFormat::kTokenIds, encoder->get());
  ASSERT_TRUE(source.ok()) << source.status();
  PackingOptions options = Options(24, /*epochs=*/3);
  auto full_packer = SequencePacker::Create(source->get(), options);
  const auto full = Drain(full_packer->get());
  ASSERT_GT(full.size(), 20u);
  for (size_t cut : {size_t{1}, full.size() / 3, full.size() / 2 + 1, full.size() - 1}) {
    // Save the position as a checkpoint would (JSON), and resume from it.
    auto position = DataPosition::FromJson(full[cut - 1].next_position.ToJson());
    ASSERT_TRUE(position.ok());
    EXPECT_EQ(*position, full[cut - 1].next_position);
    auto resumed_packer = SequencePacker::Create(source->get(), options, *position);
    ASSERT_TRUE(resumed_packer.ok());
    const auto resumed = Drain(resumed_packer->get());
    ASSERT_EQ(resumed.size(), full.size() - cut) << "cut " << cut;
    for (size_t i = 0; i < resumed.size(); ++i) {
      EXPECT_EQ(resumed[i].input_ids, full[cut + i].input_ids) << "cut " << cut << " sample " << i;
      EXPECT_EQ(resumed[i].labels, full[cut + i].labels);
      EXPECT_EQ(resumed[i].next_position, full[cut + i].next_position);
    }
  }
  // Epochs differ in order but hold the same documents.
  std::map<int64_t, std::multiset<int32_t>> firsts;
  for (const auto& s : full) {
    for (int d = 0; d < s.num_documents; ++d) firsts[s.epoch].insert(s.input_ids[s.cu_seqlens[d]]);
  }
  ASSERT_EQ(firsts.size(), 3u);
  EXPECT_EQ(firsts[0], firsts[1]);
  EXPECT_NE(full.front().input_ids, full[full.size() / 3 + 1].input_ids);
}

TEST(PackingTest, LongDocumentsTruncateOrSplit) {
  TokenizedDocument long_document;
  for (int i = 0; i < 25; ++i) {
    long_document.input_ids.push_back(i + 1);
    long_document.labels.push_back(i + 1);
  }
  InMemoryDocumentSource source({long_document});
  auto truncating = SequencePacker::Create(&source, Options(10));
  const auto truncated = Drain(truncating->get());
  ASSERT_EQ(truncated.size(), 1u);
  EXPECT_EQ(truncated[0].input_ids, (std::vector<int32_t>{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}));
  EXPECT_EQ(truncated[0].labels.back(), kIgnoreLabel);

  PackingOptions split = Options(10);
  split.long_documents = LongDocumentPolicy::kSplit;
  auto splitting = SequencePacker::Create(&source, split);
  const auto chunks = Drain(splitting->get());
  ASSERT_EQ(chunks.size(), 3u);
  EXPECT_EQ(chunks[1].input_ids[0], 11);
  EXPECT_EQ(chunks[1].next_position.token_offset, 20);
  EXPECT_EQ(chunks[2].input_ids[4], 25);
  EXPECT_EQ(chunks[2].num_real_tokens, 5);
  // Resume between chunks.
  auto resumed = SequencePacker::Create(&source, split, chunks[0].next_position);
  ASSERT_TRUE(resumed.ok());
  EXPECT_EQ(Drain(resumed->get())[0].input_ids, chunks[1].input_ids);
}

TEST(PackingTest, UntrainedDocumentsAreSkippedByDefault) {
  TokenizedDocument untrained{{1, 2, 3}, {kIgnoreLabel, kIgnoreLabel, kIgnoreLabel}};
  TokenizedDocument trained{{4, 5}, {4, 5}};
  InMemoryDocumentSource source({untrained, trained});
  PackingOptions options = Options(8);
  options.skip_untrained_documents = true;
  options.shuffle = false;
  auto packer = SequencePacker::Create(&source, options);
  const auto samples = Drain(packer->get());
  ASSERT_EQ(samples.size(), 1u);
  EXPECT_EQ(samples[0].num_documents, 1);
  EXPECT_EQ(samples[0].input_ids[0], 4);
}

TEST(ProducerTest, DeliversThePackerStreamAndShardsInStep) {
  const auto documents = MakeDocuments(60);
  InMemoryDocumentSource source(documents);
  const PackingOptions options = Options(20, 2);
  auto packer = SequencePacker::Create(&source, options);
  const auto expected = Drain(packer->get());

  auto producer = PackedBatchProducer::Start(&source, options, {}, {.queue_depth = 3});
  ASSERT_TRUE(producer.ok());
  size_t index = 0;
  while (true) {
    auto sample = (*producer)->Next();
    ASSERT_TRUE(sample.ok());
    if (!*sample) break;
    ASSERT_LT(index, expected.size());
    EXPECT_EQ((*sample)->input_ids, expected[index].input_ids);
    ++index;
  }
  EXPECT_EQ(index, expected.size());

  // Three ranks: each takes every third sample, all report the same positions, and ranks left
  // without a final sample get padding so every rank takes the same number of steps.
  std::vector<std::vector<PackedSample>> per_rank(3);
  for (int32_t rank = 0; rank < 3; ++rank) {
    auto sharded = PackedBatchProducer::Start(&source, options, {}, {.queue_depth = 2, .shard_index = rank, .num_shards = 3});
    ASSERT_TRUE(sharded.ok());
    while (true) {
      auto sample = (*sharded)->Next();
      ASSERT_TRUE(sample.ok());
      if (!*sample) break;
      per_rank[rank].push_back(std::move(**sample));
    }
  }
  const size_t steps = (expected.size() + 2) / 3;
  for (int32_t rank = 0; rank < 3; ++rank) {
    ASSERT_EQ(per_rank[rank].size(), steps) << "rank " << rank;
    for (size_t step = 0; step < steps; ++step) {
      const size_t global = step * 3 + rank;
      if (global < expected.size()) {
        EXPECT_EQ(per_rank[rank][step].input_ids, expected[global].input_ids);
      } else {
        EXPECT_EQ(per_rank[rank][step].num_loss_tokens, 0);
      }
      EXPECT_EQ(per_rank[rank][step].next_position, per_rank[0][step].next_position);
    }
  }
}

TEST(ProducerTest, ReportsBadLinesWithFileAndLine) {
  const std::string path = testing::WriteTempFile("bad_in_training.jsonl",
                                                  "{\"input_ids\":[1,2,3]}\n{\"input_ids\":[1,\"x\"]}\n");
  auto encoder = DocumentEncoder::Create(nullptr);
  auto source = JsonlDocumentSource::Open(path, DatasetFormat::kAuto, encoder->get());
  ASSERT_TRUE(source.ok());
  PackingOptions options = Options(4);
  options.shuffle = false;
  auto producer = PackedBatchProducer::Start(source->get(), options);
  ASSERT_TRUE(producer.ok());
  absl::Status error;
  while (true) {
    auto sample = (*producer)->Next();
    if (!sample.ok()) {
      error = sample.status();
      break;
    }
    if (!*sample) break;
  }
  EXPECT_THAT(std::string(error.message()), ::testing::HasSubstr("bad_in_training.jsonl:2: \"input_ids\"[1] must be an integer"));
}

TEST(DataPositionTest, JsonRoundTripAndErrors) {
  DataPosition position{3, 17, 5, 99};
  auto parsed = DataPosition::FromJson(position.ToJson());
  ASSERT_TRUE(parsed.ok());
  EXPECT_EQ(*parsed, position);
  EXPECT_THAT(std::string(DataPosition::FromJson(R"({"epoch":1})").status().message()),
              ::testing::HasSubstr("\"doc_index\" is missing"));
  EXPECT_THAT(std::string(DataPosition::FromJson(R"({"epoch":-1,"doc_index":0,"token_offset":0,"samples_emitted":0})")
                              .status()
                              .message()),
              ::testing::HasSubstr("\"epoch\" must be a non-negative integer"));
}

TEST(HoldoutViewTest, EveryNthDocumentIsHeldOut) {
  InMemoryDocumentSource source(MakeDocuments(10));
  HoldoutView train(&source, 4, HoldoutView::Side::kTrain);
  HoldoutView held(&source, 4, HoldoutView::Side::kHeldOut);
  ASSERT_EQ(held.size(), 2u);
  ASSERT_EQ(train.size(), 8u);
  EXPECT_EQ(held.Get(0)->input_ids[0], 4000);  // document 3
  EXPECT_EQ(held.Get(1)->input_ids[0], 8000);  // document 7
  EXPECT_EQ(train.Get(3)->input_ids[0], 5000);  // documents 0,1,2,4,...
}

}  // namespace
}  // namespace ftd::data
