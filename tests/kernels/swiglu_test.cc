#include "kernels/swiglu.h"

#include <ATen/ATen.h>

#include "gtest/gtest.h"

namespace ftd::kernels {
namespace {

// The reference against plain autograd of the textbook formula (runs everywhere).
TEST(WeightedSwiglu, ReferenceMatchesAutograd) {
  at::manual_seed(1);
  at::Tensor h = at::randn({37, 2 * 24}, at::kDouble).requires_grad_(true);
  at::Tensor w = at::rand({37}, at::kDouble).requires_grad_(true);
  at::Tensor expected = at::silu(h.narrow(1, 0, 24)) * h.narrow(1, 24, 24) * w.unsqueeze(1);
  at::Tensor dout = at::randn({37, 24}, at::kDouble);
  expected.backward(dout);
  at::Tensor out = WeightedSwigluForwardReference(h.detach(), w.detach());
  EXPECT_TRUE(at::allclose(out, expected.detach(), 1e-12, 1e-12));
  auto [dh, dw] = WeightedSwigluBackwardReference(dout, h.detach(), w.detach());
  EXPECT_TRUE(at::allclose(dh, h.grad(), 1e-12, 1e-12));
  EXPECT_TRUE(at::allclose(dw, w.grad(), 1e-12, 1e-12));
}

// The differentiable op on CPU goes through the reference and gives autograd's gradients.
TEST(WeightedSwiglu, OpGradientsOnCpu) {
  at::manual_seed(2);
  at::Tensor h = at::randn({9, 16}, at::kFloat).requires_grad_(true);
  at::Tensor w = at::rand({9}, at::kFloat).requires_grad_(true);
  at::Tensor out = WeightedSwiglu(h, w);
  at::Tensor dout = at::randn_like(out);
  out.backward(dout);
  auto [dh, dw] = WeightedSwigluBackwardReference(dout, h.detach(), w.detach());
  EXPECT_TRUE(at::allclose(h.grad(), dh, 1e-6, 1e-6));
  EXPECT_TRUE(at::allclose(w.grad(), dw, 1e-6, 1e-6));
}

// The CUDA kernels against the reference, on fresh random inputs, outputs poisoned first.
TEST(WeightedSwiglu, CudaMatchesReference) {
  if (!CudaKernelsAvailable()) GTEST_SKIP() << "no CUDA kernels in this build or no GPU visible";
  for (auto dtype : {at::kFloat, at::kBFloat16}) {
    for (int64_t rows : {0, 1, 257, 4099}) {
      for (int64_t F : {64, 768, 1000}) {
        auto opts = at::TensorOptions().device(at::kCUDA).dtype(dtype);
        at::Tensor h = at::randn({rows, 2 * F}, opts);
        at::Tensor w = at::rand({rows}, opts);
        at::Tensor dout = at::randn({rows, F}, opts);
        at::Tensor out = WeightedSwigluForwardCuda(h, w);
        at::Tensor ref = WeightedSwigluForwardReference(h, w);
        const double tol = dtype == at::kFloat ? 1e-5 : 2e-2;
        EXPECT_TRUE(at::allclose(out.to(at::kFloat), ref.to(at::kFloat), tol, tol)) << rows << "x" << F;
        auto [dh, dw] = WeightedSwigluBackwardCuda(dout, h, w);
        auto [rdh, rdw] = WeightedSwigluBackwardReference(dout, h, w);
        EXPECT_TRUE(at::allclose(dh.to(at::kFloat), rdh.to(at::kFloat), tol, tol)) << rows << "x" << F;
        // dw sums F products: allow for the accumulation order.
        EXPECT_TRUE(at::allclose(dw.to(at::kFloat), rdw.to(at::kFloat), tol * 4, tol * 4)) << rows << "x" << F;
      }
    }
  }
}

}  // namespace
}  // namespace ftd::kernels
