#include "kernels/rms_norm.h"

#include <ATen/ATen.h>

#include "gtest/gtest.h"
#include "tests/kernels/kernel_test_util.h"

namespace ftd::kernels {
namespace {

using testing::Close;
using testing::PoisonCudaAllocator;
using testing::Same;
using testing::Tol;

// The textbook RMSNorm under autograd, in double (HF's cast points are no-ops there).
TEST(RmsNorm, ReferenceMatchesAutograd) {
  at::manual_seed(1);
  at::Tensor x = at::randn({3, 5, 24}, at::kDouble).requires_grad_(true);
  at::Tensor w = at::randn({24}, at::kDouble).requires_grad_(true);
  at::Tensor expected = w * (x * at::rsqrt(x.pow(2).mean(-1, true) + 1e-6));
  at::Tensor dy = at::randn_like(expected);
  expected.backward(dy);
  auto [y, rstd] = RmsNormForwardReference(x.detach(), w.detach(), 1e-6);
  EXPECT_TRUE(Close(y, expected.detach(), 1e-12, 1e-12));
  EXPECT_EQ(rstd.sizes(), (at::IntArrayRef{15}));
  auto [dx, dw] = RmsNormBackwardReference(dy, x.detach(), w.detach(), rstd);
  EXPECT_TRUE(Close(dx, x.grad(), 1e-10, 1e-10));
  EXPECT_TRUE(Close(dw, w.grad(), 1e-10, 1e-10));
}

// HF's formula in bf16 (cast after normalising, weight multiply in bf16) is the reference's.
TEST(RmsNorm, ReferenceFollowsHfCastsInBf16) {
  at::manual_seed(2);
  at::Tensor x = at::randn({9, 64}).to(at::kBFloat16);
  at::Tensor w = (1 + 0.1 * at::randn({64})).to(at::kBFloat16);
  at::Tensor xf = x.to(at::kFloat);
  at::Tensor hf = w * (xf * at::rsqrt(xf.pow(2).mean(-1, true) + 1e-6)).to(at::kBFloat16);
  EXPECT_TRUE(Same(std::get<0>(RmsNormForwardReference(x, w, 1e-6)), hf));
}

TEST(RmsNorm, OpsGradientsOnCpu) {
  at::manual_seed(3);
  at::Tensor x = at::randn({7, 16}).requires_grad_(true);
  at::Tensor r = at::randn({7, 16}).requires_grad_(true);
  at::Tensor w = at::randn({16}).requires_grad_(true);
  auto [normed, sum] = AddRmsNorm(x, r, w, 1e-5);
  at::Tensor dn = at::randn_like(normed), ds = at::randn_like(sum);
  (normed * dn + sum * ds).sum().backward();

  at::Tensor x2 = x.detach().clone().requires_grad_(true), r2 = r.detach().clone().requires_grad_(true);
  at::Tensor w2 = w.detach().clone().requires_grad_(true);
  at::Tensor s2 = x2 + r2;
  at::Tensor n2 = w2 * (s2 * at::rsqrt(s2.pow(2).mean(-1, true) + 1e-5));
  (n2 * dn + s2 * ds).sum().backward();
  EXPECT_TRUE(Close(normed, n2, 1e-5, 1e-5));
  EXPECT_TRUE(Same(sum, s2));
  EXPECT_TRUE(Close(x.grad(), x2.grad(), 1e-4, 1e-5));
  EXPECT_TRUE(Close(r.grad(), r2.grad(), 1e-4, 1e-5));
  EXPECT_TRUE(Close(w.grad(), w2.grad(), 1e-4, 1e-5));

  at::Tensor x3 = x.detach().clone().requires_grad_(true);
  at::Tensor y3 = RmsNorm(x3, w.detach(), 1e-5);
  y3.backward(dn);
  auto [rdx, rdw] = RmsNormBackwardReference(dn, x.detach(), w.detach(), std::get<1>(RmsNormForwardReference(x.detach(), w.detach(), 1e-5)));
  EXPECT_TRUE(Close(x3.grad(), rdx, 1e-6, 1e-6));
}

// Fresh inputs per shape and dtype; outputs poisoned; kernel against reference, forward and
// backward, with and without the residual.
TEST(RmsNorm, CudaMatchesReference) {
  if (!CudaKernelsAvailable()) GTEST_SKIP() << "no CUDA kernels in this build or no GPU visible";
  struct Case {
    int64_t rows, D;
  };
  const std::vector<Case> cases = {{0, 64},    {1, 1},    {5, 3},     {7, 127},  {257, 64},  {33, 128},
                                   {19, 1000}, {3, 2048}, {4096, 2048}, {131072, 128}, {11, 8192}, {64, 4096}};
  for (auto dtype : {at::kFloat, at::kBFloat16, at::kHalf}) {
    for (const Case& c : cases) {
      for (bool with_residual : {false, true}) {
        SCOPED_TRACE(::testing::Message() << dtype << " rows " << c.rows << " D " << c.D << " residual "
                                          << with_residual);
        auto opts = at::TensorOptions().device(at::kCUDA).dtype(dtype);
        at::Tensor x = at::randn({c.rows, c.D}, opts);
        at::Tensor res = with_residual ? at::randn({c.rows, c.D}, opts) : at::Tensor();
        at::Tensor w = (1 + 0.2 * at::randn({c.D}, opts.dtype(at::kFloat))).to(dtype);
        at::Tensor dy = at::randn({c.rows, c.D}, opts);
        at::Tensor dsum = with_residual ? at::randn({c.rows, c.D}, opts) : at::Tensor();
        const double tol = Tol(dtype);

        PoisonCudaAllocator();
        auto [y, sum, rstd] = RmsNormForwardCuda(x, res, w, 1e-6);
        at::Tensor normed_in = with_residual ? x + res : x;
        auto [ry, rrstd] = RmsNormForwardReference(normed_in, w, 1e-6);
        if (with_residual) {
          EXPECT_TRUE(Same(sum, normed_in));
        }
        EXPECT_TRUE(Close(rstd, rrstd.to(at::kFloat), 1e-5, 1e-6));
        EXPECT_TRUE(Close(y, ry, tol, tol));

        PoisonCudaAllocator();
        auto [dx, dw] = RmsNormBackwardCuda(dy, dsum, normed_in, w, rstd);
        auto [rdx, rdw] = RmsNormBackwardReference(dy, normed_in, w, rstd);
        if (with_residual) rdx = (rdx.to(at::kFloat) + dsum.to(at::kFloat)).to(dtype);
        EXPECT_TRUE(Close(dx, rdx, 2 * tol, 2 * tol));
        // dw sums `rows` products: scale the absolute tolerance with sqrt(rows).
        EXPECT_TRUE(Close(dw, rdw, 2 * tol, 1e-4 * std::sqrt(static_cast<double>(c.rows) + 1)));
      }
    }
  }
}

// A contiguous view at an odd element offset takes the scalar path and still matches.
TEST(RmsNorm, CudaMisalignedInputs) {
  if (!CudaKernelsAvailable()) GTEST_SKIP() << "no CUDA kernels in this build or no GPU visible";
  auto opts = at::TensorOptions().device(at::kCUDA).dtype(at::kBFloat16);
  const int64_t rows = 37, D = 256;
  at::Tensor x = at::randn({rows * D + 1}, opts).narrow(0, 1, rows * D).view({rows, D});
  at::Tensor w = at::randn({D + 1}, opts).narrow(0, 1, D);
  at::Tensor dy = at::randn({rows * D + 1}, opts).narrow(0, 1, rows * D).view({rows, D});
  PoisonCudaAllocator();
  auto [y, sum, rstd] = RmsNormForwardCuda(x, {}, w, 1e-6);
  EXPECT_TRUE(Close(y, std::get<0>(RmsNormForwardReference(x, w, 1e-6)), Tol(at::kBFloat16), Tol(at::kBFloat16)));
  auto [dx, dw] = RmsNormBackwardCuda(dy, {}, x, w, rstd);
  auto [rdx, rdw] = RmsNormBackwardReference(dy, x, w, rstd);
  EXPECT_TRUE(Close(dx, rdx, 3e-2, 3e-2));
  EXPECT_TRUE(Close(dw, rdw, 3e-2, 3e-2));
}

// The differentiable ops on CUDA give the reference gradients (the autograd wiring).
TEST(RmsNorm, CudaOpsGradients) {
  if (!CudaKernelsAvailable()) GTEST_SKIP() << "no CUDA kernels in this build or no GPU visible";
  auto opts = at::TensorOptions().device(at::kCUDA).dtype(at::kFloat);
  at::Tensor x = at::randn({4096, 2048}, opts).requires_grad_(true);
  at::Tensor r = at::randn({4096, 2048}, opts).requires_grad_(true);
  at::Tensor w = at::randn({2048}, opts).requires_grad_(true);
  auto [normed, sum] = AddRmsNorm(x, r, w, 1e-6);
  at::Tensor dn = at::randn_like(normed), ds = at::randn_like(sum);
  (normed * dn + sum * ds).sum().backward();
  at::Tensor s = (x + r).detach();
  auto [ry, rstd] = RmsNormForwardReference(s, w.detach(), 1e-6);
  auto [rdx, rdw] = RmsNormBackwardReference(dn, s, w.detach(), rstd);
  EXPECT_TRUE(Close(normed, ry, 1e-5, 1e-5));
  EXPECT_TRUE(Close(x.grad(), rdx + ds, 1e-4, 1e-4));
  EXPECT_TRUE(Close(r.grad(), rdx + ds, 1e-4, 1e-4));
  EXPECT_TRUE(Close(w.grad(), rdw, 1e-4, 1e-2));

  at::Tensor x2 = x.detach().clone().requires_grad_(true);
  at::Tensor y2 = RmsNorm(x2.view({64, 64, 2048}), w.detach(), 1e-6);
  EXPECT_EQ(y2.sizes(), (at::IntArrayRef{64, 64, 2048}));
  y2.backward(dn.view({64, 64, 2048}));
  auto [rdx2, rdw2] = RmsNormBackwardReference(dn, x.detach(), w.detach(), std::get<1>(RmsNormForwardReference(x.detach(), w.detach(), 1e-6)));
  EXPECT_TRUE(Close(x2.grad(), rdx2, 1e-4, 1e-4));
}

}  // namespace
}  // namespace ftd::kernels
