#include "kernels/cross_entropy.h"

#include <ATen/ATen.h>

#include "gtest/gtest.h"
#include "tests/kernels/kernel_test_util.h"

namespace ftd::kernels {
namespace {

using testing::Close;
using testing::PoisonCudaAllocator;
using testing::Tol;

// The reference against F.cross_entropy's formulation under autograd, in double.
TEST(CrossEntropyRows, ReferenceMatchesAutograd) {
  at::manual_seed(4);
  at::Tensor logits = at::randn({9, 37}, at::kDouble) * 3;
  at::Tensor targets = at::randint(0, 37, {9}, at::kLong);
  targets[2] = -100;
  targets[7] = -100;
  auto [loss, grad] = CrossEntropyRowsReference(logits, targets, -100);
  at::Tensor ld = logits.clone().requires_grad_(true);
  at::Tensor want = at::cross_entropy_loss(ld, targets, {}, at::Reduction::None, -100);
  EXPECT_TRUE(Close(loss, want.detach().to(at::kFloat), 1e-6, 1e-6));
  want.sum().backward();
  EXPECT_TRUE(Close(grad.to(at::kDouble), ld.grad(), 1e-6, 1e-7));
  EXPECT_EQ(grad[2].abs().sum().item<double>(), 0.0);
}

struct CeCase {
  int64_t N, V;
};

TEST(CrossEntropyRows, CudaMatchesReference) {
  if (!CudaKernelsAvailable()) GTEST_SKIP() << "no CUDA kernels in this build or no GPU visible";
  // Vocabulary sizes: vectorised (multiples of 8), odd (scalar path), Qwen3's 151,936, and tiny.
  const std::vector<CeCase> cases = {{0, 64}, {1, 1}, {3, 7}, {17, 1000}, {64, 4099}, {33, 32000}, {256, 151936}};
  for (auto dtype : {at::kFloat, at::kBFloat16, at::kHalf}) {
    for (const CeCase& c : cases) {
      SCOPED_TRACE(::testing::Message() << dtype << " N " << c.N << " V " << c.V);
      auto opts = at::TensorOptions().device(at::kCUDA).dtype(dtype);
      at::Tensor logits = (at::randn({c.N, c.V}, opts.dtype(at::kFloat)) * 4).to(dtype);
      at::Tensor targets = at::randint(0, c.V, {c.N}, opts.dtype(at::kLong));
      if (c.N > 2) targets[1] = -100;
      auto [want_loss, want_grad] = CrossEntropyRowsReference(logits, targets, -100);
      PoisonCudaAllocator();
      at::Tensor work = at::empty_like(logits);
      work.copy_(logits);
      at::Tensor loss = CrossEntropyRowsInPlaceCuda(work, targets, -100);
      EXPECT_TRUE(Close(loss, want_loss, 1e-5, 1e-5));
      // One rounding of a value in [-1, 1] to dtype, plus exp's few ulps in fp32.
      EXPECT_TRUE(Close(work, want_grad, Tol(dtype), 1e-6));
      if (c.N > 0) {
        EXPECT_NEAR(work.to(at::kFloat).sum().item<double>(), 0.0, 1e-2 * c.N);
      }
    }
  }
}

// A row of equal logits and a row with one dominant logit: loss log(V) and ~0.
TEST(CrossEntropyRows, CudaEdgeRows) {
  if (!CudaKernelsAvailable()) GTEST_SKIP() << "no CUDA kernels in this build or no GPU visible";
  auto opts = at::TensorOptions().device(at::kCUDA).dtype(at::kBFloat16);
  at::Tensor logits = at::zeros({2, 4096}, opts);
  logits[1][5] = 80.0;
  at::Tensor targets = at::tensor({3L, 5L}, opts.dtype(at::kLong));
  at::Tensor loss = CrossEntropyRowsInPlaceCuda(logits, targets, -100).cpu();
  EXPECT_NEAR(loss[0].item<double>(), std::log(4096.0), 1e-5);
  EXPECT_NEAR(loss[1].item<double>(), 0.0, 1e-6);
  EXPECT_NEAR(logits[0][3].item<double>(), 1.0 / 4096 - 1, 1e-2);
}

}  // namespace
}  // namespace ftd::kernels
