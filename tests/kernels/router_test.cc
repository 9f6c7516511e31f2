#include "kernels/router.h"

#include <ATen/ATen.h>

#include "gtest/gtest.h"
#include "tests/kernels/kernel_test_util.h"

namespace ftd::kernels {
namespace {

using testing::Close;
using testing::PoisonCudaAllocator;
using testing::Same;
using testing::Tol;

// The HF formulation (softmax in fp32, topk, renormalise) under autograd, in double.
at::Tensor ComposedWeights(const at::Tensor& logits, const at::Tensor& experts, const RouterOptions& o) {
  at::Tensor scores = o.score == RouterScore::kSoftmax ? at::softmax(logits, -1) : at::sigmoid(logits);
  at::Tensor v = scores.gather(-1, experts);
  if (o.renormalize) v = v / v.sum(-1, true);
  return v * o.scale;
}

TEST(Router, ReferenceMatchesTopkAndAutograd) {
  at::manual_seed(1);
  for (RouterScore score : {RouterScore::kSoftmax, RouterScore::kSigmoid}) {
    for (bool renorm : {false, true}) {
      RouterOptions o{3, score, renorm, renorm ? 2.5 : 1.0, at::kFloat};
      at::Tensor logits = at::randn({11, 9});
      RouterOutput r = RouterTopKReference(logits, {}, o);
      at::Tensor scores = score == RouterScore::kSoftmax ? at::softmax(logits, -1) : at::sigmoid(logits);
      auto [values, index] = scores.topk(3, -1);
      EXPECT_TRUE(Same(r.experts, index));
      EXPECT_TRUE(Same(r.counts, at::bincount(index.reshape({-1}), {}, 9)));
      at::Tensor ld = logits.to(at::kDouble).requires_grad_(true);
      at::Tensor w = ComposedWeights(ld, r.experts, o);
      EXPECT_TRUE(Close(r.weights, w.detach(), 1e-6, 1e-7));
      at::Tensor dw = at::randn({11, 3}, at::kDouble);
      w.backward(dw);
      EXPECT_TRUE(Close(RouterTopKBackwardReference(dw, ld.detach(), r.experts, o), ld.grad(), 1e-10, 1e-12));
    }
  }
}

// Equal scores: the lower expert index ranks first; the bias moves the choice, not the weights.
TEST(Router, ReferenceTiesAndBias) {
  RouterOptions o{2, RouterScore::kSigmoid, false, 1.0, at::kFloat};
  at::Tensor logits = at::tensor({0.5f, 1.0f, 1.0f, 0.5f, 1.0f}).view({1, 5});
  EXPECT_TRUE(Same(RouterTopKReference(logits, {}, o).experts, at::tensor({1L, 2L}).view({1, 2})));
  at::Tensor bias = at::tensor({0.f, 0.f, 0.f, 1.f, 0.f});
  RouterOutput r = RouterTopKReference(logits, bias, o);
  EXPECT_TRUE(Same(r.experts, at::tensor({3L, 1L}).view({1, 2})));
  EXPECT_TRUE(Close(r.weights, at::sigmoid(at::tensor({0.5f, 1.0f})).view({1, 2}), 1e-7, 1e-7));
}

TEST(Router, OpGradientsOnCpu) {
  at::manual_seed(3);
  RouterOptions o{4, RouterScore::kSoftmax, true, 1.0, at::kFloat};
  at::Tensor logits = at::randn({17, 12}).requires_grad_(true);
  RouterOutput r = RouterTopK(logits, {}, o);
  at::Tensor dw = at::randn_like(r.weights);
  r.weights.backward(dw);
  EXPECT_TRUE(Close(logits.grad(), RouterTopKBackwardReference(dw, logits.detach(), r.experts, o), 1e-6, 1e-7));
}

struct RouterCase {
  int64_t T, E, k;
};

TEST(Router, CudaMatchesReference) {
  if (!CudaKernelsAvailable()) GTEST_SKIP() << "no CUDA kernels in this build or no GPU visible";
  const std::vector<RouterCase> cases = {{0, 128, 8},  {1, 1, 1},     {1, 8, 8},      {33, 8, 2},  {257, 60, 4},
                                         {100, 256, 8}, {64, 1000, 32}, {4096, 128, 8}, {513, 33, 5}};
  auto f32 = at::TensorOptions().device(at::kCUDA).dtype(at::kFloat);
  for (const RouterCase& c : cases) {
    for (RouterScore score : {RouterScore::kSoftmax, RouterScore::kSigmoid}) {
      for (bool renorm : {false, true}) {
        for (bool with_bias : {false, true}) {
          for (bool quantized : {false, true}) {
            for (auto wdtype : {at::kFloat, at::kBFloat16}) {
              SCOPED_TRACE(::testing::Message() << "T " << c.T << " E " << c.E << " k " << c.k << " sigmoid "
                                                << (score == RouterScore::kSigmoid) << " renorm " << renorm
                                                << " bias " << with_bias << " ties " << quantized << " " << wdtype);
              RouterOptions o{c.k, score, renorm, with_bias ? 2.5 : 1.0, wdtype};
              // Quantised logits make exact ties common: the tie order must match the reference.
              at::Tensor logits = quantized ? at::randint(-4, 4, {c.T, c.E}, f32) * 0.5 : at::randn({c.T, c.E}, f32) * 2;
              at::Tensor bias = with_bias ? (quantized ? at::randint(0, 2, {c.E}, f32) * 0.25 : at::randn({c.E}, f32) * 0.1)
                                          : at::Tensor();
              PoisonCudaAllocator();
              RouterOutput got = RouterTopKForwardCuda(logits, bias, o);
              RouterOutput want = RouterTopKReference(logits, bias, o);
              EXPECT_TRUE(Same(got.experts, want.experts));
              EXPECT_TRUE(Same(got.counts, want.counts));
              EXPECT_TRUE(Close(got.weights, want.weights, Tol(wdtype), Tol(wdtype)));
              at::Tensor dw = at::randn({c.T, c.k}, f32.dtype(wdtype));
              PoisonCudaAllocator();
              at::Tensor dl = RouterTopKBackwardCuda(dw, logits, want.experts, o);
              EXPECT_TRUE(Close(dl, RouterTopKBackwardReference(dw, logits, want.experts, o), 1e-4, 1e-5));
            }
          }
        }
      }
    }
  }
}

TEST(Router, CudaOpGradients) {
  if (!CudaKernelsAvailable()) GTEST_SKIP() << "no CUDA kernels in this build or no GPU visible";
  auto f32 = at::TensorOptions().device(at::kCUDA).dtype(at::kFloat);
  RouterOptions o{8, RouterScore::kSoftmax, true, 1.0, at::kBFloat16};
  at::Tensor logits = at::randn({4096, 128}, f32).requires_grad_(true);
  RouterOutput r = RouterTopK(logits, {}, o);
  EXPECT_EQ(r.weights.scalar_type(), at::kBFloat16);
  EXPECT_FALSE(r.experts.requires_grad());
  at::Tensor dw = at::randn_like(r.weights);
  r.weights.backward(dw);
  EXPECT_TRUE(Close(logits.grad(), RouterTopKBackwardReference(dw, logits.detach(), r.experts, o), 1e-4, 1e-6));
  EXPECT_EQ(r.counts.sum().item<int64_t>(), 4096 * 8);
}

}  // namespace
}  // namespace ftd::kernels
