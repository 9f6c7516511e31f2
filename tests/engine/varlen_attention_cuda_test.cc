// Varlen (cu_seqlens) attention on CUDA: the kernel against each document run alone through
// SDPA in fp32, forward and backward, at the production shape (32 query / 4 KV heads, head_dim
// 128); and the packing guarantee of issue 10 through the whole model on the GPU. Every test
// skips without a visible GPU (the device-independent half is varlen_boundaries_test.cc).
#include <cmath>
#include <iostream>
#include <memory>
#include <vector>

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include "engine/model/config.h"
#include "engine/model/hf_checkpoint.h"
#include "engine/model/transformer.h"
#include "engine/model/varlen_attention.h"
#include "engine/util/device_memory.h"
#include "gtest/gtest.h"
#include "tests/engine/varlen_test_util.h"

namespace ftd::engine {
namespace {

using testing::MaxRelativeError;
using testing::PerDocumentAttention;
using testing::RelativeError;

#define SKIP_WITHOUT_CUDA() \
  if (!at::hasCUDA()) GTEST_SKIP() << "no GPU visible (or a CPU-only LibTorch)"

struct Tolerance {
  double max_error;   // MaxRelativeError: worst element against the largest expected magnitude
  double norm_error;  // RelativeError: over the whole tensor
};

// fp16 keeps 11 significant bits, bf16 8: the kernel rounds P to the input type before P @ V
// and its outputs once more.
Tolerance AttentionTolerance(at::ScalarType t) { return t == at::kHalf ? Tolerance{8e-3, 3e-3} : Tolerance{4e-2, 1.5e-2}; }

void CheckAgainstPerDocumentReference(at::ScalarType dtype) {
  SCOPED_TRACE(c10::toString(dtype));
  at::manual_seed(7);
  const int64_t Hq = 32, Hkv = 4, D = 128;
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  // Two rows of 384: a 1-token document, lengths that are not multiples of the kernel's tiles,
  // collator padding (-12) and an unpacked-like long document.
  at::Tensor segment_ids = testing::SegmentIdsFromRuns({{1, 130, 64, 77, 100, -12}, {200, 3, 181}});
  const int64_t B = segment_ids.size(0), S = segment_ids.size(1), T = B * S;
  const VarlenBoundaries b = VarlenBoundariesFromSegmentIds(segment_ids, at::Device(at::kCUDA));
  ASSERT_EQ(b.num_sequences, 9);
  ASSERT_EQ(b.max_seqlen, 200);
  int64_t unused_max = 0;
  at::Tensor ids = segment_ids.contiguous();
  const std::vector<int32_t> cu = CuSeqlensFromSegmentIds(ids.data_ptr<int64_t>(), B, S, &unused_max);

  auto opts = at::TensorOptions().device(at::kCUDA).dtype(dtype);
  // As the model holds them: [B, S, heads, D] contiguous, passed as [B * S, heads, D] views.
  at::Tensor q4 = at::randn({B, S, Hq, D}, opts).requires_grad_(true);
  at::Tensor k4 = at::randn({B, S, Hkv, D}, opts).requires_grad_(true);
  at::Tensor v4 = at::randn({B, S, Hkv, D}, opts).requires_grad_(true);
  at::Tensor out = VarlenCausalAttention(q4.view({T, Hq, D}), k4.view({T, Hkv, D}), v4.view({T, Hkv, D}), b, scale);
  ASSERT_EQ(out.sizes(), (at::IntArrayRef{T, Hq, D}));
  ASSERT_EQ(out.scalar_type(), dtype);
  at::Tensor dout = at::randn_like(out);
  out.backward(dout);
  ASSERT_TRUE(q4.grad().defined() && k4.grad().defined() && v4.grad().defined());
  EXPECT_EQ(k4.grad().sizes(), k4.sizes());  // K/V gradients per KV head: never repeated
  EXPECT_EQ(v4.grad().sizes(), v4.sizes());

  // Reference: every document alone through SDPA (is_causal, enable_gqa) in fp32 on the CPU
  // (no TF32 anywhere), from the same rounded inputs.
  auto f32 = [](const at::Tensor& t, std::vector<int64_t> shape) {
    return t.detach().to(at::kCPU, at::kFloat).reshape(shape).requires_grad_(true);
  };
  at::Tensor qr = f32(q4, {T, Hq, D}), kr = f32(k4, {T, Hkv, D}), vr = f32(v4, {T, Hkv, D});
  at::Tensor ref = PerDocumentAttention(qr, kr, vr, cu, scale);
  ref.backward(dout.to(at::kCPU, at::kFloat));

  const Tolerance tol = AttentionTolerance(dtype);
  struct Item {
    const char* name;
    at::Tensor actual, expected;
  };
  for (const Item& it : {Item{"out", out, ref}, Item{"dq", q4.grad().view({T, Hq, D}), qr.grad()},
                         Item{"dk", k4.grad().view({T, Hkv, D}), kr.grad()},
                         Item{"dv", v4.grad().view({T, Hkv, D}), vr.grad()}}) {
    const double max_error = MaxRelativeError(it.actual, it.expected), norm_error = RelativeError(it.actual, it.expected);
    std::cout << c10::toString(dtype) << " " << it.name << ": max error " << max_error << ", norm error " << norm_error
              << std::endl;
    EXPECT_LT(max_error, tol.max_error) << it.name;  // NaN fails too
    EXPECT_LT(norm_error, tol.norm_error) << it.name;
  }
  // The data can tell a leak: the same rows as one causal sequence each are far off.
  at::Tensor rowwise = PerDocumentAttention(qr.detach(), kr.detach(), vr.detach(), {0, int32_t(S), int32_t(T)}, scale);
  EXPECT_GT(RelativeError(rowwise, ref), 20 * tol.norm_error);
}

TEST(VarlenAttentionCuda, MatchesPerDocumentSdpaForwardAndBackwardBf16) {
  SKIP_WITHOUT_CUDA();
  CheckAgainstPerDocumentReference(at::kBFloat16);
}

TEST(VarlenAttentionCuda, MatchesPerDocumentSdpaForwardAndBackwardFp16) {
  SKIP_WITHOUT_CUDA();
  CheckAgainstPerDocumentReference(at::kHalf);
}

// Issue 10's guarantee on the GPU: a packed batch (two rows, seven documents, padding) gives the
// loss, the per-document logits and the gradients of the documents run one by one. The same
// check on the CPU's mask path in bf16 (varlen_boundaries_test.cc) calibrates the tolerances.
void CheckPackedLoss(at::ScalarType dtype, double loss_tol, double logits_tol, double grad_tol) {
  testing::PackedVsSeparate r = testing::ComparePackedWithSeparate(at::Device(at::kCUDA), dtype, true);
  std::cout << c10::toString(dtype) << ": " << testing::Describe(r) << std::endl;
  EXPECT_TRUE(r.used_varlen);
  EXPECT_EQ(r.targets_packed, r.targets_separate);
  EXPECT_NEAR(r.loss_packed, r.loss_separate, loss_tol * std::abs(r.loss_separate));
  EXPECT_LT(r.logits_error, logits_tol);
  EXPECT_LT(r.grad_error, grad_tol);
  EXPECT_GT(r.leak_logits_error, 0.2);  // and without document boundaries it would not hold
}

TEST(VarlenAttentionCuda, PackedLossEqualsDocumentsOneByOneBf16) {
  SKIP_WITHOUT_CUDA();
  CheckPackedLoss(at::kBFloat16, 1e-2, 5e-2, 5e-2);
}

TEST(VarlenAttentionCuda, PackedLossEqualsDocumentsOneByOneFp16) {
  SKIP_WITHOUT_CUDA();
  CheckPackedLoss(at::kHalf, 3e-3, 1e-2, 1e-2);
}

std::unique_ptr<MoeTransformer> TinyModel(at::ScalarType dtype, bool varlen, bool checkpointing) {
  auto config = ParseModelConfig(testing::TinyModelConfigJson());
  EXPECT_TRUE(config.ok()) << config.status();
  ModelOptions options;
  options.device = at::Device(at::kCUDA);
  options.dtype = dtype;
  options.varlen_attention = varlen;
  options.activation_checkpointing = checkpointing;
  auto model = MoeTransformer::Create(*config, options, InitRandomWeights(*config, options, 21));
  EXPECT_TRUE(model.ok()) << model.status();
  auto params = (*model)->Parameters();
  for (auto& p : params) p.tensor->set_requires_grad(true);
  return std::move(*model);
}

// Everything but attention is the same computation, so the varlen model follows the dense-mask
// model (the CUDA path before varlen, still used for fp32) closely; with activation
// checkpointing the recomputed layers reuse the batch's boundaries.
TEST(VarlenAttentionCuda, ModelMatchesTheMaskPathWithAndWithoutCheckpointing) {
  SKIP_WITHOUT_CUDA();
  at::manual_seed(8);
  Batch batch = testing::RandomPackedBatch({{17, 1, 40, 9, -13}, {64, 16}, {3, 5, 72}}, 128, at::Device(at::kCUDA));
  struct Run {
    double loss;
    at::Tensor logits, grads;
  };
  auto run = [&](bool varlen, bool checkpointing) {
    std::unique_ptr<MoeTransformer> model = TinyModel(at::kBFloat16, varlen, checkpointing);
    ForwardResult fr = model->Forward(batch, /*return_logits=*/true);
    fr.loss_sum.backward();
    std::vector<at::Tensor> g;
    for (auto& p : model->Parameters()) {
      const at::Tensor& grad = p.tensor->grad();
      g.push_back((grad.defined() ? grad : at::zeros_like(*p.tensor)).reshape({-1}).to(at::kCPU, at::kDouble));
    }
    return Run{fr.loss_sum.item<double>(), fr.logits.detach(), at::cat(g)};
  };
  const Run mask = run(false, false), varlen = run(true, false), checkpointed = run(true, true);
  for (const Run* r : {&varlen, &checkpointed}) {
    EXPECT_NEAR(r->loss, mask.loss, 5e-3 * std::abs(mask.loss));
    EXPECT_LT(MaxRelativeError(r->logits, mask.logits), 5e-2);
    EXPECT_LT(RelativeError(r->grads, mask.grads), 5e-2);
  }
  std::cout << "loss mask " << mask.loss << ", varlen " << varlen.loss << ", varlen+checkpointing " << checkpointed.loss
            << "; logits error " << MaxRelativeError(varlen.logits, mask.logits) << ", gradient error "
            << RelativeError(varlen.grads, mask.grads) << ", checkpointing gradient error "
            << RelativeError(checkpointed.grads, varlen.grads) << std::endl;
  EXPECT_LT(RelativeError(checkpointed.grads, varlen.grads), 1e-2);
}

// A packed row of 32768 tokens: the forward pass stays far below the S*S bytes that the dense
// block-causal mask alone would take (1 GiB here).
TEST(VarlenAttentionCuda, LongPackedRowAllocatesNoSequenceSquaredMask) {
  SKIP_WITHOUT_CUDA();
  at::manual_seed(9);
  const int64_t S = 32768;
  std::vector<int64_t> runs(8, S / 8);
  runs.back() -= 100;
  runs.push_back(-100);  // padding
  Batch batch = testing::RandomPackedBatch({runs}, 128, at::Device(at::kCUDA));
  std::unique_ptr<MoeTransformer> model = TinyModel(at::kBFloat16, true, false);
  c10::NoGradGuard no_grad;
  model->Forward(batch, false);  // warm-up: library workspaces
  DeviceSynchronize();
  ResetPeakMemory();
  const int64_t before = PeakMemoryBytes();
  ForwardResult fr = model->Forward(batch, false);
  DeviceSynchronize();
  const int64_t extra = PeakMemoryBytes() - before;
  std::cout << "S = " << S << ": forward peak " << extra / (1 << 20) << " MiB above the inputs; the mask would be "
            << S * S / (1 << 20) << " MiB" << std::endl;
  EXPECT_TRUE(std::isfinite(fr.loss_sum.item<double>()));
  EXPECT_LT(extra, S * S / 4);
}

}  // namespace
}  // namespace ftd::engine
