// The device-independent half of varlen attention (engine/model/varlen_attention.h): document
// boundaries from segment ids (padding, several rows), their agreement with the dense mask the
// CPU uses, the per-document reference the CUDA tests compare against, and which inputs the
// CUDA path accepts. The CUDA half is varlen_attention_cuda_test.cc.
#include <iostream>
#include <vector>

#include <ATen/ATen.h>
#include <torch/csrc/autograd/autograd.h>

#include "engine/data/document_source.h"
#include "engine/data/sequence_packer.h"
#include "engine/model/core/gqa_attention.h"
#include "engine/model/varlen_attention.h"
#include "engine/train/packed_batch.h"
#include "gtest/gtest.h"
#include "tests/engine/varlen_test_util.h"

namespace ftd::engine {
namespace {

using testing::SegmentIdsFromRuns;

std::vector<int32_t> Cu(const at::Tensor& segment_ids, int64_t* max_seqlen) {
  at::Tensor ids = segment_ids.contiguous();
  return CuSeqlensFromSegmentIds(ids.data_ptr<int64_t>(), ids.size(0), ids.size(1), max_seqlen);
}

TEST(VarlenBoundaries, DocumentsAndPackerPaddingInOneRow) {
  // The packer's layout: documents 3, 2, 3, then padding as a segment of its own (id 3).
  at::Tensor ids = at::tensor(std::vector<int64_t>{0, 0, 0, 1, 1, 2, 2, 2, 3, 3}, at::kLong).unsqueeze(0);
  int64_t max_seqlen = 0;
  EXPECT_EQ(Cu(ids, &max_seqlen), (std::vector<int32_t>{0, 3, 5, 8, 10}));
  EXPECT_EQ(max_seqlen, 3);
}

TEST(VarlenBoundaries, CollatorPaddingIsItsOwnSequence) {
  // The collator pads short rows with id -1 after the row's documents.
  at::Tensor ids = at::tensor(std::vector<int64_t>{0, 0, 1, 1, 1, -1, -1}, at::kLong).unsqueeze(0);
  int64_t max_seqlen = 0;
  EXPECT_EQ(Cu(ids, &max_seqlen), (std::vector<int32_t>{0, 2, 5, 7}));
  EXPECT_EQ(max_seqlen, 3);
}

TEST(VarlenBoundaries, RowsNeverJoinAndOffsetsAreFlattened) {
  // Row 1 starts with the id row 0 ends with; row 2 is one token then padding.
  at::Tensor ids = at::tensor(std::vector<int64_t>{0, 0, 0, 0, /**/ 0, 0, 1, 1, /**/ 5, -1, -1, -1}, at::kLong)
                       .view({3, 4});
  int64_t max_seqlen = 0;
  EXPECT_EQ(Cu(ids, &max_seqlen), (std::vector<int32_t>{0, 4, 6, 8, 9, 12}));
  EXPECT_EQ(max_seqlen, 4);
}

TEST(VarlenBoundaries, UnpackedRowsAndSingleTokenDocuments) {
  int64_t max_seqlen = 0;
  EXPECT_EQ(Cu(at::zeros({2, 5}, at::kLong), &max_seqlen), (std::vector<int32_t>{0, 5, 10}));
  EXPECT_EQ(max_seqlen, 5);
  EXPECT_EQ(Cu(at::arange(4, at::kLong).unsqueeze(0), &max_seqlen), (std::vector<int32_t>{0, 1, 2, 3, 4}));
  EXPECT_EQ(max_seqlen, 1);
}

TEST(VarlenBoundaries, FromPackerSamplesThroughSegmentIds) {
  // Packer cu_seqlens -> segment ids (packed_batch.h) -> varlen boundaries gives the packer's
  // boundaries back, row b shifted by b * seq_len, padding included as a sequence.
  std::vector<data::TokenizedDocument> docs;
  for (int length : {6, 9, 4, 12, 3, 7}) {
    data::TokenizedDocument d;
    for (int i = 0; i < length; ++i) d.input_ids.push_back(1 + (i * 7 + length) % 50);
    d.labels = d.input_ids;
    docs.push_back(d);
  }
  data::InMemoryDocumentSource source(docs);
  data::PackingOptions packing;
  packing.seq_len = 20;
  packing.shuffle = false;
  auto packer = data::SequencePacker::Create(&source, packing);
  ASSERT_TRUE(packer.ok()) << packer.status();
  std::vector<data::PackedSample> samples;
  std::vector<int32_t> expected = {0};
  while (true) {
    auto sample = (*packer)->Next();
    ASSERT_TRUE(sample.ok()) << sample.status();
    if (!sample->has_value()) break;
    const int32_t offset = static_cast<int32_t>(samples.size()) * packing.seq_len;
    for (size_t i = 1; i < (*sample)->cu_seqlens.size(); ++i) expected.push_back(offset + (*sample)->cu_seqlens[i]);
    samples.push_back(**sample);
  }
  ASSERT_EQ(samples.size(), 3u);  // 6+9+4 (1 padding), 12+3 (5), 7 (13)
  Batch batch = BatchFromPackedSamples(samples, at::Device(at::kCPU));
  VarlenBoundaries b = VarlenBoundariesFromSegmentIds(batch.segment_ids, at::Device(at::kCPU));
  EXPECT_EQ(b.cu_seqlens.scalar_type(), at::kInt);
  EXPECT_EQ(std::vector<int32_t>(b.cu_seqlens.data_ptr<int32_t>(), b.cu_seqlens.data_ptr<int32_t>() + b.cu_seqlens.numel()),
            expected);
  EXPECT_EQ(b.num_sequences, static_cast<int64_t>(expected.size()) - 1);
  EXPECT_EQ(b.total_tokens, 3 * packing.seq_len);
  EXPECT_EQ(b.max_seqlen, 13);  // the last row's padding
}

// The varlen boundaries allow exactly what the CPU's dense mask allows: token i of row b
// attends to token j iff both lie in one sequence and j <= i.
TEST(VarlenBoundaries, SameAttentionPatternAsTheDenseMask) {
  at::Tensor ids = SegmentIdsFromRuns({{5, 1, 17, 9, -8}, {40}, {1, 1, 1, 30, -7}, {12, 12, 12, -4}});
  const int64_t B = ids.size(0), S = ids.size(1);
  int64_t max_seqlen = 0;
  std::vector<int32_t> cu = Cu(ids, &max_seqlen);
  EXPECT_EQ(max_seqlen, 40);
  at::Tensor sequence = at::empty({B * S}, at::kLong);  // sequence index of each flattened token
  for (size_t s = 0; s + 1 < cu.size(); ++s) sequence.narrow(0, cu[s], cu[s + 1] - cu[s]).fill_(static_cast<int64_t>(s));
  sequence = sequence.view({B, S});
  at::Tensor causal = at::ones({S, S}, at::kBool).tril();
  at::Tensor from_cu = sequence.unsqueeze(2).eq(sequence.unsqueeze(1)).logical_and(causal).unsqueeze(1);
  EXPECT_TRUE(at::equal(from_cu, PackedCausalMask(ids)));
}

// The reference of the CUDA tests (each document alone through SDPA) equals the engine's CPU
// path (one masked SDPA over [B, heads, S, D]) in fp32, outputs and gradients, with GQA.
TEST(VarlenReference, PerDocumentSdpaMatchesTheMaskPath) {
  at::manual_seed(3);
  at::Tensor ids = SegmentIdsFromRuns({{9, 1, 14, -8}, {20, 12}});
  const int64_t B = 2, S = 32, Hq = 8, Hkv = 2, D = 16;
  const double scale = 0.25;
  int64_t max_seqlen = 0;
  std::vector<int32_t> cu = Cu(ids, &max_seqlen);
  at::Tensor q = at::randn({B, S, Hq, D}).requires_grad_(true);
  at::Tensor k = at::randn({B, S, Hkv, D}).requires_grad_(true);
  at::Tensor v = at::randn({B, S, Hkv, D}).requires_grad_(true);
  at::Tensor dout = at::randn({B * S, Hq, D});

  at::Tensor masked = at::scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                       PackedCausalMask(ids), 0.0, false, scale, true)
                          .transpose(1, 2)
                          .reshape({B * S, Hq, D});
  auto grads_of = [&](const at::Tensor& out) { return torch::autograd::grad({out}, {q, k, v}, {dout}); };
  auto masked_grads = grads_of(masked);
  at::Tensor per_doc = testing::PerDocumentAttention(q.reshape({B * S, Hq, D}), k.reshape({B * S, Hkv, D}),
                                                     v.reshape({B * S, Hkv, D}), cu, scale);
  auto per_doc_grads = grads_of(per_doc);
  EXPECT_TRUE(at::allclose(per_doc, masked, 1e-5, 1e-5));
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(at::allclose(per_doc_grads[i], masked_grads[i], 1e-4, 1e-5)) << i;
  EXPECT_EQ(per_doc_grads[1].sizes(), (at::IntArrayRef{B, S, Hkv, D}));  // K/V gradients not repeated
}

TEST(VarlenBoundaries, OnlyCudaHalfTypesQualify) {
  const at::Device cuda(at::kCUDA, 0), cpu(at::kCPU);
  EXPECT_TRUE(VarlenAttentionSupports(cuda, at::kBFloat16, 128, 32, 4));
  EXPECT_TRUE(VarlenAttentionSupports(cuda, at::kHalf, 64, 8, 8));
  EXPECT_FALSE(VarlenAttentionSupports(cpu, at::kBFloat16, 128, 32, 4));  // CPU keeps the mask
  EXPECT_FALSE(VarlenAttentionSupports(cuda, at::kFloat, 128, 32, 4));    // FlashAttention: no fp32
  EXPECT_FALSE(VarlenAttentionSupports(cuda, at::kBFloat16, 4, 4, 2));     // head_dim % 8
  EXPECT_FALSE(VarlenAttentionSupports(cuda, at::kBFloat16, 512, 4, 2));   // head_dim > 256
  EXPECT_FALSE(VarlenAttentionSupports(cuda, at::kBFloat16, 128, 6, 4));   // groups must divide
}

TEST(VarlenBoundaries, CpuTensorsAreRefusedWithAReason) {
  at::Tensor q = at::randn({10, 4, 8}, at::kBFloat16), k = at::randn({10, 2, 8}, at::kBFloat16);
  VarlenBoundaries b = VarlenBoundariesFromSegmentIds(at::zeros({1, 10}, at::kLong), at::Device(at::kCPU));
  try {
    VarlenCausalAttention(q, k, k, b, 0.3);
    FAIL() << "expected an error";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("varlen attention: unsupported"), std::string::npos) << e.what();
  }
  VarlenBoundaries wrong = VarlenBoundariesFromSegmentIds(at::zeros({1, 12}, at::kLong), at::Device(at::kCPU));
  EXPECT_THROW(VarlenCausalAttention(q, k, k, wrong, 0.3), c10::Error);  // 10 tokens, boundaries for 12
}

// Calibrates the CUDA tests' tolerances (varlen_attention_cuda_test.cc CheckPackedLoss) on the
// CPU's mask path: fp16/bf16 rounding alone keeps the packed rows within them of the documents
// run one by one, and a leak across documents stands far outside.
void CheckPackedLossOnCpu(at::ScalarType dtype, double loss_tol, double logits_tol, double grad_tol) {
  testing::PackedVsSeparate r = testing::ComparePackedWithSeparate(at::Device(at::kCPU), dtype, true);
  std::cout << c10::toString(dtype) << ": " << testing::Describe(r) << std::endl;
  EXPECT_FALSE(r.used_varlen);
  EXPECT_EQ(r.targets_packed, r.targets_separate);
  EXPECT_NEAR(r.loss_packed, r.loss_separate, loss_tol * std::abs(r.loss_separate));
  EXPECT_LT(r.logits_error, logits_tol);
  EXPECT_LT(r.grad_error, grad_tol);
  EXPECT_GT(r.leak_logits_error, 0.2);
}

TEST(PackedLossHalf, CpuMaskPathInBf16WithinTheCudaTolerances) {
  CheckPackedLossOnCpu(at::kBFloat16, 1e-2, 5e-2, 5e-2);
}

TEST(PackedLossHalf, CpuMaskPathInFp16WithinTheCudaTolerances) {
  CheckPackedLossOnCpu(at::kHalf, 3e-3, 1e-2, 1e-2);
}

}  // namespace
}  // namespace ftd::engine
