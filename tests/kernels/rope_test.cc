#include "kernels/rope.h"

#include <ATen/ATen.h>

#include "gtest/gtest.h"
#include "kernels/rms_norm.h"
#include "tests/kernels/kernel_test_util.h"

namespace ftd::kernels {
namespace {

using testing::Close;
using testing::PoisonCudaAllocator;
using testing::Tol;

// cos/sin as the engine builds them: [B, S, D] from positions, both halves equal.
std::pair<at::Tensor, at::Tensor> CosSin(int64_t B, int64_t S, int64_t D, at::TensorOptions opts) {
  at::Tensor inv = 1.0 / at::pow(10000.0, at::arange(0, D, 2, opts.dtype(at::kFloat)) / D);
  at::Tensor pos = at::randint(0, 4096, {B, S}, opts.dtype(at::kFloat));
  at::Tensor f = pos.unsqueeze(-1) * inv;
  at::Tensor emb = at::cat({f, f}, -1);
  return {emb.cos().to(opts.dtype()), emb.sin().to(opts.dtype())};
}

TEST(Rope, ReferenceMatchesAutograd) {
  at::manual_seed(1);
  at::Tensor x = at::randn({2, 5, 3, 8}, at::kDouble).requires_grad_(true);
  // Different halves: the backward must not assume cos/sin halves are equal.
  at::Tensor cos = at::randn({2, 5, 8}, at::kDouble), sin = at::randn({2, 5, 8}, at::kDouble);
  at::Tensor rotated = at::cat({-x.narrow(-1, 4, 4), x.narrow(-1, 0, 4)}, -1);
  at::Tensor expected = x * cos.unsqueeze(2) + rotated * sin.unsqueeze(2);
  at::Tensor dy = at::randn_like(expected);
  expected.backward(dy);
  EXPECT_TRUE(Close(RopeReference(x.detach(), cos, sin), expected.detach(), 1e-12, 1e-12));
  EXPECT_TRUE(Close(RopeBackwardReference(dy, cos, sin), x.grad(), 1e-12, 1e-12));
}

TEST(Rope, OpsGradientsOnCpu) {
  at::manual_seed(2);
  auto [cos, sin] = CosSin(2, 6, 16, at::TensorOptions());
  at::Tensor x = at::randn({2, 6, 4, 16}).requires_grad_(true);
  at::Tensor w = at::randn({16}).requires_grad_(true);
  at::Tensor y = RmsNormRope(x, w, 1e-6, cos, sin);
  at::Tensor dy = at::randn_like(y);
  y.backward(dy);
  at::Tensor x2 = x.detach().clone().requires_grad_(true), w2 = w.detach().clone().requires_grad_(true);
  at::Tensor y2 = RopeReference(w2 * (x2 * at::rsqrt(x2.pow(2).mean(-1, true) + 1e-6)), cos, sin);
  y2.backward(dy);
  EXPECT_TRUE(Close(y, y2, 1e-5, 1e-5));
  EXPECT_TRUE(Close(x.grad(), x2.grad(), 1e-4, 1e-5));
  EXPECT_TRUE(Close(w.grad(), w2.grad(), 1e-4, 1e-5));
}

struct RopeCase {
  int64_t B, S, H, D;
  bool cos_batch_one;
};

TEST(Rope, CudaMatchesReference) {
  if (!CudaKernelsAvailable()) GTEST_SKIP() << "no CUDA kernels in this build or no GPU visible";
  const std::vector<RopeCase> cases = {{1, 1, 1, 2, false},   {2, 3, 5, 6, false},    {2, 17, 4, 128, false},
                                       {3, 9, 7, 128, true},  {1, 5, 3, 64, false},   {1, 7, 2, 256, false},
                                       {2, 3, 3, 250, false}, {1, 0, 4, 128, false},  {1, 4096, 32, 128, false},
                                       {1, 4096, 4, 128, false}};
  for (auto dtype : {at::kFloat, at::kBFloat16, at::kHalf}) {
    for (const RopeCase& c : cases) {
      SCOPED_TRACE(::testing::Message() << dtype << " B" << c.B << " S" << c.S << " H" << c.H << " D" << c.D
                                        << (c.cos_batch_one ? " cos batch 1" : ""));
      auto opts = at::TensorOptions().device(at::kCUDA).dtype(dtype);
      auto [cos, sin] = CosSin(c.cos_batch_one ? 1 : c.B, c.S, c.D, opts);
      at::Tensor x = at::randn({c.B, c.S, c.H, c.D}, opts);
      at::Tensor dy = at::randn({c.B, c.S, c.H, c.D}, opts);
      at::Tensor w = (1 + 0.2 * at::randn({c.D}, opts.dtype(at::kFloat))).to(dtype);
      const double tol = Tol(dtype);
      ASSERT_TRUE(RopeCudaSupports(x, cos, sin, w));

      PoisonCudaAllocator();
      at::Tensor y = std::get<0>(RopeForwardCuda(x, cos, sin, {}, 0.0));
      EXPECT_TRUE(Close(y, RopeReference(x, cos, sin), 2 * tol, 2 * tol));
      PoisonCudaAllocator();
      at::Tensor dx = std::get<0>(RopeBackwardCuda(dy, cos, sin, {}, {}, {}));
      EXPECT_TRUE(Close(dx, RopeBackwardReference(dy, cos, sin), 2 * tol, 2 * tol));

      // Fused with the q/k RMSNorm.
      PoisonCudaAllocator();
      auto [yn, rstd] = RopeForwardCuda(x, cos, sin, w, 1e-6);
      auto [normed, rrstd] = RmsNormForwardReference(x, w, 1e-6);
      EXPECT_TRUE(Close(rstd, rrstd.to(at::kFloat), 1e-5, 1e-6));
      EXPECT_TRUE(Close(yn, RopeReference(normed, cos, sin), 3 * tol, 3 * tol));
      PoisonCudaAllocator();
      auto [dxn, dw] = RopeBackwardCuda(dy, cos, sin, x, w, rstd);
      // Gradient of the normed row: the kernel rotates in fp32 and rounds once to dtype; the
      // ATen formula in dtype rounds three times, which moves dw by ~1 ulp x sqrt(rows).
      at::Tensor g = RopeBackwardReference(dy.to(at::kFloat), cos.to(at::kFloat), sin.to(at::kFloat)).to(dtype);
      auto [rdx, rdw] = RmsNormBackwardReference(g, x, w, rstd);
      EXPECT_TRUE(Close(dxn, rdx, 4 * tol, 4 * tol));
      const double rows = static_cast<double>(c.B * c.S * c.H);
      EXPECT_TRUE(Close(dw, rdw, 4 * tol, 2e-4 * std::sqrt(rows + 1)));
    }
  }
}

TEST(Rope, CudaOpsGradients) {
  if (!CudaKernelsAvailable()) GTEST_SKIP() << "no CUDA kernels in this build or no GPU visible";
  auto opts = at::TensorOptions().device(at::kCUDA).dtype(at::kFloat);
  auto [cos, sin] = CosSin(2, 64, 128, opts);
  at::Tensor x = at::randn({2, 64, 8, 128}, opts).requires_grad_(true);
  at::Tensor w = at::randn({128}, opts).requires_grad_(true);
  at::Tensor y = RmsNormRope(x, w, 1e-6, cos, sin);
  at::Tensor dy = at::randn_like(y);
  y.backward(dy);
  at::Tensor x2 = x.detach().clone().requires_grad_(true), w2 = w.detach().clone().requires_grad_(true);
  at::Tensor y2 = RopeReference(w2 * (x2 * at::rsqrt(x2.pow(2).mean(-1, true) + 1e-6)), cos, sin);
  y2.backward(dy);
  EXPECT_TRUE(Close(y, y2, 1e-5, 1e-5));
  EXPECT_TRUE(Close(x.grad(), x2.grad(), 1e-4, 1e-4));
  EXPECT_TRUE(Close(w.grad(), w2.grad(), 1e-4, 1e-3));

  at::Tensor x3 = x.detach().clone().requires_grad_(true);
  at::Tensor y3 = Rope(x3, cos, sin);
  y3.backward(dy);
  EXPECT_TRUE(Close(y3, RopeReference(x.detach(), cos, sin), 1e-6, 1e-6));
  EXPECT_TRUE(Close(x3.grad(), RopeBackwardReference(dy, cos, sin), 1e-6, 1e-6));
}

}  // namespace
}  // namespace ftd::kernels
