#include "kernels/causal_conv1d.h"

#include <ATen/ATen.h>

#include "gtest/gtest.h"
#include "tests/kernels/kernel_test_util.h"

namespace ftd::kernels {
namespace {

// Packed rows: documents of 5, 9 and the rest in row 0, one document in row 1.
at::Tensor Segments(int64_t B, int64_t S, at::Device device) {
  at::Tensor seg = at::zeros({B, S}, at::kLong);
  if (S > 14) {
    seg[0].narrow(0, 5, 9).fill_(1);
    seg[0].narrow(0, 14, S - 14).fill_(2);
  }
  return seg.to(device);
}

// The reference against autograd of HF's formula (conv1d with K-1 padding, the first S outputs,
// SiLU), and with segment ids against each document alone (runs everywhere).
TEST(CausalConv1dSilu, ReferenceMatchesConv1dAndAutograd) {
  at::manual_seed(1);
  const int64_t B = 2, S = 23, C = 6, K = 4;
  at::Tensor x = at::randn({B, S, C}, at::kDouble).requires_grad_(true);
  at::Tensor w = at::randn({C, K}, at::kDouble).requires_grad_(true);
  at::Tensor bias = at::randn({C}, at::kDouble).requires_grad_(true);
  at::Tensor expected =
      at::silu(at::conv1d(x.transpose(1, 2), w.unsqueeze(1), bias, 1, K - 1, 1, C).narrow(2, 0, S).transpose(1, 2));
  at::Tensor dy = at::randn({B, S, C}, at::kDouble);
  expected.backward(dy);
  EXPECT_TRUE(at::allclose(CausalConv1dSiluForwardReference(x.detach(), w.detach(), bias.detach(), {}).to(at::kDouble),
                           expected.detach(), 1e-6, 1e-6));
  auto [dx, dw, db] = CausalConv1dSiluBackwardReference(dy, x.detach(), w.detach(), bias.detach(), {});
  EXPECT_TRUE(at::allclose(dx, x.grad(), 1e-5, 1e-5));
  EXPECT_TRUE(at::allclose(dw, w.grad(), 1e-5, 1e-5));
  EXPECT_TRUE(at::allclose(db, bias.grad(), 1e-5, 1e-5));

  // Packed: each document equals itself alone, gradients included.
  at::Tensor seg = Segments(B, S, at::kCPU);
  at::Tensor packed = CausalConv1dSiluForwardReference(x.detach(), w.detach(), bias.detach(), seg);
  auto [pdx, pdw, pdb] = CausalConv1dSiluBackwardReference(dy, x.detach(), w.detach(), bias.detach(), seg);
  at::Tensor sum_dw = at::zeros_like(pdw), sum_db = at::zeros_like(pdb);
  const std::pair<int64_t, int64_t> docs[] = {{0, 5}, {5, 9}, {14, S - 14}};
  for (auto [start, len] : docs) {
    at::Tensor xd = x.detach().narrow(0, 0, 1).narrow(1, start, len), dyd = dy.narrow(0, 0, 1).narrow(1, start, len);
    EXPECT_TRUE(at::allclose(packed.narrow(0, 0, 1).narrow(1, start, len),
                             CausalConv1dSiluForwardReference(xd, w.detach(), bias.detach(), {}), 1e-6, 1e-6));
    auto [ddx, ddw, ddb] = CausalConv1dSiluBackwardReference(dyd, xd, w.detach(), bias.detach(), {});
    EXPECT_TRUE(at::allclose(pdx.narrow(0, 0, 1).narrow(1, start, len), ddx, 1e-6, 1e-6));
    sum_dw += ddw;
    sum_db += ddb;
  }
  auto [rdx, rdw, rdb] =
      CausalConv1dSiluBackwardReference(dy.narrow(0, 1, 1), x.detach().narrow(0, 1, 1), w.detach(), bias.detach(), {});
  EXPECT_TRUE(at::allclose(pdw, sum_dw + rdw, 1e-6, 1e-6));
  EXPECT_TRUE(at::allclose(pdb, sum_db + rdb, 1e-6, 1e-6));
}

// The op on CPU gives autograd's gradients through the reference.
TEST(CausalConv1dSilu, OpGradientsOnCpu) {
  at::manual_seed(2);
  at::Tensor x = at::randn({2, 9, 5}).requires_grad_(true), w = at::randn({5, 3}).requires_grad_(true);
  at::Tensor out = CausalConv1dSilu(x, w, {}, {});
  at::Tensor dy = at::randn_like(out);
  out.backward(dy);
  auto [dx, dw, db] = CausalConv1dSiluBackwardReference(dy, x.detach(), w.detach(), {}, {});
  EXPECT_FALSE(db.defined());
  EXPECT_TRUE(at::allclose(x.grad(), dx, 1e-6, 1e-6));
  EXPECT_TRUE(at::allclose(w.grad(), dw, 1e-6, 1e-6));
}

// The CUDA kernels against the reference: dtypes, with and without bias and segment ids, a
// strided x (a column slice, as the mixer passes it), K 2..4, Nemotron Nano 3's width
// (C = 4096 + 2 * 8 * 128 = 6144) at seq 4096.
TEST(CausalConv1dSilu, CudaMatchesReference) {
  if (!CudaKernelsAvailable()) GTEST_SKIP() << "no CUDA kernels in this build or no GPU visible";
  struct Shape {
    int64_t B, S, C, K;
  };
  for (auto dtype : {at::kFloat, at::kBFloat16}) {
    for (Shape s : {Shape{2, 23, 6, 4}, Shape{1, 1, 3, 2}, Shape{3, 257, 130, 3}, Shape{1, 4096, 6144, 4}}) {
      for (bool packed : {false, true}) {
        for (bool with_bias : {false, true}) {
          SCOPED_TRACE(::testing::Message() << dtype << " B " << s.B << " S " << s.S << " C " << s.C << " K " << s.K
                                            << (packed ? " packed" : "") << (with_bias ? " bias" : ""));
          auto opts = at::TensorOptions().device(at::kCUDA).dtype(dtype);
          at::Tensor wide = at::randn({s.B, s.S, s.C + 7}, opts);
          at::Tensor x = wide.narrow(2, 3, s.C);  // strided rows
          at::Tensor w = at::randn({s.C, s.K}, opts) * 0.5, bias = with_bias ? at::randn({s.C}, opts) : at::Tensor();
          at::Tensor seg = packed ? Segments(s.B, s.S, at::kCUDA) : at::Tensor();
          at::Tensor dy = at::randn({s.B, s.S, s.C}, opts);
          const double tol = testing::Tol(dtype) * 2;
          testing::PoisonCudaAllocator();
          at::Tensor y = CausalConv1dSiluForwardCuda(x, w, bias, seg);
          EXPECT_TRUE(testing::Close(y, CausalConv1dSiluForwardReference(x, w, bias, seg), tol, tol));
          testing::PoisonCudaAllocator();
          auto [dx, dw, db] = CausalConv1dSiluBackwardCuda(dy, x, w, bias, seg);
          auto [rdx, rdw, rdb] = CausalConv1dSiluBackwardReference(dy, x, w, bias, seg);
          EXPECT_TRUE(testing::Close(dx, rdx, tol, tol));
          // dw and dbias sum B * S products: allow for the order (and bf16's final rounding).
          const double sum_tol = 1e-3 * std::sqrt(static_cast<double>(s.B * s.S));
          EXPECT_TRUE(testing::Close(dw, rdw, tol, sum_tol));
          if (with_bias) EXPECT_TRUE(testing::Close(db, rdb, tol, sum_tol));
        }
      }
    }
  }
}

}  // namespace
}  // namespace ftd::kernels
