// Issue 10's packing guarantee through the engine: a packed batch (several documents in one
// row, positions restarting per document, attention blocked at boundaries) gives the same
// summed loss and the same gradients as running each document on its own.
#include <vector>

#include <ATen/ATen.h>

#include "engine/data/document_source.h"
#include "engine/data/sequence_packer.h"
#include "engine/model/config.h"
#include "engine/model/hf_checkpoint.h"
#include "engine/model/transformer.h"
#include "engine/train/packed_batch.h"
#include "gtest/gtest.h"

namespace ftd::engine {
namespace {

const char* kConfig = R"({"model_type": "qwen3_moe", "vocab_size": 64, "hidden_size": 16,
  "intermediate_size": 24, "moe_intermediate_size": 8, "num_hidden_layers": 2, "num_attention_heads": 4,
  "num_key_value_heads": 2, "head_dim": 4, "num_local_experts": 5, "num_experts_per_tok": 2,
  "mlp_only_layers": [1], "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}})";

data::TokenizedDocument RandomDocument(int64_t length, int64_t vocab, bool mask_prompt) {
  at::Tensor ids = at::randint(1, vocab, {length}, at::kLong);
  data::TokenizedDocument d;
  for (int64_t i = 0; i < length; ++i) d.input_ids.push_back(static_cast<int32_t>(ids[i].item<int64_t>()));
  d.labels = d.input_ids;
  if (mask_prompt) {  // a chat-like document: no loss on its first three tokens
    for (int i = 0; i < 3; ++i) d.labels[i] = data::kIgnoreLabel;
  }
  return d;
}

// One document alone, HF convention: labels unshifted -> targets shifted.
Batch SingleDocumentBatch(const data::TokenizedDocument& d) {
  std::vector<int64_t> ids(d.input_ids.begin(), d.input_ids.end()), labels(d.labels.begin(), d.labels.end());
  Batch b;
  b.input_ids = at::tensor(ids, at::kLong).unsqueeze(0);
  b.targets = ShiftLabels(at::tensor(labels, at::kLong).unsqueeze(0));
  return b;
}

TEST(PackedLoss, PackedBatchEqualsDocumentsOneByOne) {
  at::manual_seed(5);
  auto config = ParseModelConfig(kConfig);
  ASSERT_TRUE(config.ok()) << config.status();
  ModelOptions options;
  auto model = MoeTransformer::Create(*config, options, InitRandomWeights(*config, options, 9));
  ASSERT_TRUE(model.ok()) << model.status();

  std::vector<data::TokenizedDocument> docs = {RandomDocument(7, 64, false), RandomDocument(5, 64, true),
                                               RandomDocument(9, 64, false), RandomDocument(4, 64, true)};
  data::InMemoryDocumentSource source(docs);
  data::PackingOptions packing;
  packing.seq_len = 32;  // all four documents (25 tokens) fit in one row, plus padding
  packing.shuffle = false;
  auto packer = data::SequencePacker::Create(&source, packing);
  ASSERT_TRUE(packer.ok()) << packer.status();
  auto sample = (*packer)->Next();
  ASSERT_TRUE(sample.ok() && sample->has_value());
  ASSERT_EQ((*sample)->num_documents, 4);
  Batch packed = BatchFromPackedSamples({**sample}, at::Device(at::kCPU));
  ASSERT_EQ(packed.input_ids.sizes(), (at::IntArrayRef{1, 32}));

  auto params = (*model)->Parameters();
  for (auto& p : params) p.tensor->set_requires_grad(true);
  auto zero_grads = [&] {
    for (auto& p : params) p.tensor->mutable_grad() = at::Tensor();
  };
  auto grads = [&] {
    std::vector<at::Tensor> g;
    for (auto& p : params) g.push_back(p.tensor->grad().defined() ? p.tensor->grad().clone() : at::zeros_like(*p.tensor));
    return g;
  };

  zero_grads();
  ForwardResult pr = (*model)->Forward(packed, false);
  pr.loss_sum.backward();
  const std::vector<at::Tensor> packed_grads = grads();

  zero_grads();
  double separate_sum = 0;
  int64_t separate_targets = 0;
  for (const auto& d : docs) {
    ForwardResult r = (*model)->Forward(SingleDocumentBatch(d), false);
    r.loss_sum.backward();  // gradients accumulate over the documents
    separate_sum += r.loss_sum.item<double>();
    separate_targets += r.num_targets;
  }
  const std::vector<at::Tensor> separate_grads = grads();

  EXPECT_EQ(pr.num_targets, separate_targets);
  EXPECT_EQ(pr.num_targets, (*sample)->num_loss_tokens);
  EXPECT_NEAR(pr.loss_sum.item<double>(), separate_sum, 1e-4 * std::abs(separate_sum));
  for (size_t i = 0; i < params.size(); ++i) {
    EXPECT_TRUE(at::allclose(packed_grads[i], separate_grads[i], 1e-4, 1e-6)) << params[i].name;
  }
}

// The opposite check, so the test above cannot pass by accident: without document ids the
// packed row attends across boundaries and the loss differs.
TEST(PackedLoss, WithoutSegmentsDocumentsLeak) {
  at::manual_seed(6);
  auto config = ParseModelConfig(kConfig);
  ASSERT_TRUE(config.ok());
  ModelOptions options;
  auto model = MoeTransformer::Create(*config, options, InitRandomWeights(*config, options, 9));
  ASSERT_TRUE(model.ok());
  data::InMemoryDocumentSource source({RandomDocument(8, 64, false), RandomDocument(8, 64, false)});
  data::PackingOptions packing;
  packing.seq_len = 16;
  packing.shuffle = false;
  auto packer = data::SequencePacker::Create(&source, packing);
  ASSERT_TRUE(packer.ok());
  auto sample = (*packer)->Next();
  ASSERT_TRUE(sample.ok() && sample->has_value());
  Batch packed = BatchFromPackedSamples({**sample}, at::Device(at::kCPU));
  const double with_segments = (*model)->Forward(packed, false).loss_sum.item<double>();
  packed.segment_ids = at::Tensor();
  packed.position_ids = at::Tensor();
  const double without = (*model)->Forward(packed, false).loss_sum.item<double>();
  EXPECT_GT(std::abs(with_segments - without), 1e-3);
}

TEST(PackedLoss, SegmentIdsFollowCuSeqlens) {
  EXPECT_EQ(SegmentIdsFromCuSeqlens({0, 3, 5, 8}, 8), (std::vector<int64_t>{0, 0, 0, 1, 1, 2, 2, 2}));
}

}  // namespace
}  // namespace ftd::engine
