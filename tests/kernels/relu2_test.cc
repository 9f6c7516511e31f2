#include "kernels/relu2.h"

#include <cmath>

#include <ATen/ATen.h>

#include "gtest/gtest.h"
#include "tests/kernels/kernel_test_util.h"

namespace ftd::kernels {
namespace {

// The reference against plain autograd of the textbook formula (runs everywhere).
TEST(WeightedRelu2, ReferenceMatchesAutograd) {
  at::manual_seed(1);
  at::Tensor h = at::randn({37, 24}, at::kDouble).requires_grad_(true);
  at::Tensor w = at::rand({37}, at::kDouble).requires_grad_(true);
  at::Tensor expected = at::relu(h).pow(2) * w.unsqueeze(1);
  at::Tensor dout = at::randn({37, 24}, at::kDouble);
  expected.backward(dout);
  EXPECT_TRUE(at::allclose(WeightedRelu2ForwardReference(h.detach(), w.detach()), expected.detach(), 1e-12, 1e-12));
  auto [dh, dw] = WeightedRelu2BackwardReference(dout, h.detach(), w.detach());
  EXPECT_TRUE(at::allclose(dh, h.grad(), 1e-12, 1e-12));
  EXPECT_TRUE(at::allclose(dw, w.grad(), 1e-12, 1e-12));
}

// The differentiable op on CPU goes through the reference and gives autograd's gradients.
TEST(WeightedRelu2, OpGradientsOnCpu) {
  at::manual_seed(2);
  at::Tensor h = at::randn({9, 16}, at::kFloat).requires_grad_(true);
  at::Tensor w = at::rand({9}, at::kFloat).requires_grad_(true);
  at::Tensor out = WeightedRelu2(h, w);
  at::Tensor dout = at::randn_like(out);
  out.backward(dout);
  auto [dh, dw] = WeightedRelu2BackwardReference(dout, h.detach(), w.detach());
  EXPECT_TRUE(at::allclose(h.grad(), dh, 1e-6, 1e-6));
  EXPECT_TRUE(at::allclose(w.grad(), dw, 1e-6, 1e-6));
}

// The CUDA kernels against the reference on fresh random inputs, outputs poisoned first; odd F
// takes the scalar path, F % 8 == 0 the 16-byte one; F 1856 is Nemotron Nano 3's expert width.
TEST(WeightedRelu2, CudaMatchesReference) {
  if (!CudaKernelsAvailable()) GTEST_SKIP() << "no CUDA kernels in this build or no GPU visible";
  for (auto dtype : {at::kFloat, at::kBFloat16, at::kHalf}) {
    for (int64_t rows : {0, 1, 257, 4099}) {
      for (int64_t F : {1, 64, 99, 1856}) {
        SCOPED_TRACE(::testing::Message() << dtype << " rows " << rows << " F " << F);
        auto opts = at::TensorOptions().device(at::kCUDA).dtype(dtype);
        at::Tensor h = at::randn({rows, F}, opts);
        at::Tensor w = at::rand({rows}, opts);
        at::Tensor dout = at::randn({rows, F}, opts);
        const double tol = testing::Tol(dtype) * 2;
        testing::PoisonCudaAllocator();
        at::Tensor out = WeightedRelu2ForwardCuda(h, w);
        EXPECT_TRUE(testing::Close(out, WeightedRelu2ForwardReference(h, w), tol, tol));
        testing::PoisonCudaAllocator();
        auto [dh, dw] = WeightedRelu2BackwardCuda(dout, h, w);
        auto [rdh, rdw] = WeightedRelu2BackwardReference(dout, h, w);
        EXPECT_TRUE(testing::Close(dh, rdh, tol, tol));
        // dw sums F products: allow for the accumulation order.
        EXPECT_TRUE(testing::Close(dw, rdw, tol, 1e-4 * std::sqrt(static_cast<double>(F))));
      }
    }
  }
}

TEST(WeightedRelu2, CudaMisaligned) {
  if (!CudaKernelsAvailable()) GTEST_SKIP() << "no CUDA kernels in this build or no GPU visible";
  auto opts = at::TensorOptions().device(at::kCUDA).dtype(at::kBFloat16);
  const int64_t rows = 4096 * 6, F = 1856, off = 1;
  at::Tensor h = at::randn({rows * F + off}, opts).narrow(0, off, rows * F).view({rows, F});
  at::Tensor w = at::rand({rows + off}, opts).narrow(0, off, rows);
  at::Tensor dout = at::randn({rows * F + off}, opts).narrow(0, off, rows * F).view({rows, F});
  testing::PoisonCudaAllocator();
  EXPECT_TRUE(testing::Close(WeightedRelu2ForwardCuda(h, w), WeightedRelu2ForwardReference(h, w), 3.2e-2, 3.2e-2));
  auto [dh, dw] = WeightedRelu2BackwardCuda(dout, h, w);
  auto [rdh, rdw] = WeightedRelu2BackwardReference(dout, h, w);
  EXPECT_TRUE(testing::Close(dh, rdh, 3.2e-2, 3.2e-2));
  EXPECT_TRUE(testing::Close(dw, rdw, 3.2e-2, 1e-1));
}

}  // namespace
}  // namespace ftd::kernels
