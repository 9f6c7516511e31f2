#include "kernels/swiglu.h"

#include <cmath>
#include <string>

#include <ATen/ATen.h>

#include "gtest/gtest.h"
#include "tests/kernels/kernel_test_util.h"

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

// GPT-OSS's experts as HF writes them (GptOssExperts, and ExpertsForward before the fused op):
// the ATen formula whose autograd the clamped SwiGLU must reproduce. h [N, 2F] = [gate | up].
at::Tensor GptOssActivation(const at::Tensor& h, const at::Tensor& w, double limit, double alpha) {
  const int64_t F = h.size(1) / 2;
  at::Tensor gate = h.narrow(1, 0, F), up = h.narrow(1, F, F);
  if (limit > 0) {
    gate = gate.clamp_max(limit);
    up = up.clamp(-limit, limit);
  }
  return (up + 1) * (gate * at::sigmoid(gate * alpha)) * w.unsqueeze(1);
}

// Gate and up values well past GPT-OSS's limit of 7 (randn * 6), some exactly on it (the
// boundary passes the gradient in autograd's clamp) or just past it, in both halves.
at::Tensor ClampTestInput(int64_t rows, int64_t F, at::TensorOptions opts) {
  at::Tensor h = at::randn({rows, 2 * F}, opts) * 6;
  if (rows >= 2 && F >= 4) {
    for (const int64_t half : {int64_t{0}, F}) {
      h[0][half + 0] = 7.0;
      h[0][half + 1] = -7.0;
      h[0][half + 2] = 7.0625;  // exact in bf16, fp16 and fp32
      h[0][half + 3] = -7.0625;
      h[1][half + 0] = 6.9375;
    }
  }
  return h;
}

// The reference against autograd of the ATen formula, in fp64 (agreement to rounding) and fp32,
// for the clamped options and the unclamped ones with alpha and the up offset.
TEST(WeightedSwiglu, ClampedReferenceMatchesAutograd) {
  at::manual_seed(3);
  for (auto dtype : {at::kDouble, at::kFloat}) {
    for (double limit : {7.0, 0.0}) {
      SCOPED_TRACE(::testing::Message() << dtype << " limit " << limit);
      const SwigluOptions opts = SwigluOptions::GptOss(limit, 1.702);
      const double tol = dtype == at::kDouble ? 1e-12 : 1e-5;
      at::Tensor h = ClampTestInput(41, 24, at::dtype(dtype)).requires_grad_(true);
      at::Tensor w = at::rand({41}, at::dtype(dtype)).requires_grad_(true);
      at::Tensor expected = GptOssActivation(h, w, limit, 1.702);
      at::Tensor dout = at::randn({41, 24}, at::dtype(dtype));
      expected.backward(dout);
      at::Tensor out = WeightedSwigluForwardReference(h.detach(), w.detach(), opts);
      EXPECT_TRUE(testing::Close(out, expected.detach(), tol, tol));
      auto [dh, dw] = WeightedSwigluBackwardReference(dout, h.detach(), w.detach(), opts);
      EXPECT_TRUE(testing::Close(dh, h.grad(), tol, tol));
      EXPECT_TRUE(testing::Close(dw, w.grad(), tol, tol * 10));
      if (limit > 0) {
        // The clamps cut some gradients and pass the boundary's: the test exercises both.
        at::Tensor beyond = h.detach().abs() > limit;
        EXPECT_GT(beyond.sum().item<int64_t>(), 50);
        EXPECT_EQ(dh[0][24 + 0].item<double>(), h.grad()[0][24 + 0].item<double>());
        EXPECT_NE(dh[0][24 + 1].item<double>(), 0.0);  // up == -limit passes
        EXPECT_EQ(dh[0][2].item<double>(), 0.0);       // gate past the limit: cut
        EXPECT_EQ(dh[0][24 + 3].item<double>(), 0.0);  // up below -limit: cut
        EXPECT_NE(dh[0][3].item<double>(), 0.0);       // gate is clamped above only
      }
    }
  }
}

// NaN inputs: forward NaN as at::clamp gives it, and the gradient masks of autograd's clamp
// (a NaN gate's gradient is cut to 0; a NaN up's passes NaN on, like the routing weight's).
TEST(WeightedSwiglu, ClampedReferenceNanLikeAutograd) {
  at::Tensor h = at::randn({2, 8}, at::kDouble);
  h[0][1] = std::nan("");
  h[1][4 + 2] = std::nan("");
  h = h.requires_grad_(true);
  at::Tensor w = at::rand({2}, at::kDouble).requires_grad_(true);
  at::Tensor expected = GptOssActivation(h, w, 7.0, 1.702);
  at::Tensor dout = at::randn({2, 4}, at::kDouble);
  expected.backward(dout);
  const SwigluOptions opts = SwigluOptions::GptOss(7.0, 1.702);
  EXPECT_TRUE(at::allclose(WeightedSwigluForwardReference(h.detach(), w.detach(), opts), expected.detach(), 1e-12,
                           1e-12, /*equal_nan=*/true));
  auto [dh, dw] = WeightedSwigluBackwardReference(dout, h.detach(), w.detach(), opts);
  EXPECT_TRUE(at::allclose(dh, h.grad(), 1e-12, 1e-12, /*equal_nan=*/true));
  EXPECT_TRUE(at::allclose(dw, w.grad(), 1e-12, 1e-12, /*equal_nan=*/true));
  EXPECT_EQ(dh[0][1].item<double>(), 0.0);
}

// The differentiable op WeightedSwiglu (GPT-OSS's options) against autograd of the ATen formula
// on a clamp test input of `rows` x 2F on `opts`' device, fp32. dw_atol: its sums of F products.
void ExpectClampedOpMatchesAtenAutograd(int64_t rows, int64_t F, at::TensorOptions opts, double tol, double dw_atol) {
  at::Tensor h = ClampTestInput(rows, F, opts.dtype(at::kFloat)).requires_grad_(true);
  at::Tensor w = at::rand({rows}, opts.dtype(at::kFloat)).requires_grad_(true);
  at::Tensor h2 = h.detach().clone().requires_grad_(true), w2 = w.detach().clone().requires_grad_(true);
  at::Tensor out = WeightedSwiglu(h, w, SwigluOptions::GptOss(7.0, 1.702));
  at::Tensor expected = GptOssActivation(h2, w2, 7.0, 1.702);
  EXPECT_TRUE(testing::Close(out, expected, tol, tol));
  at::Tensor dout = at::randn_like(out);
  out.backward(dout);
  expected.backward(dout);
  EXPECT_TRUE(testing::Close(h.grad(), h2.grad(), tol * 10, tol));
  EXPECT_TRUE(testing::Close(w.grad(), w2.grad(), tol * 10, dw_atol));
}

// On CPU the op is the reference: what ExpertsForward's GPT-OSS path relies on for HF parity.
TEST(WeightedSwiglu, ClampedOpGradientsOnCpu) {
  at::manual_seed(4);
  ExpectClampedOpMatchesAtenAutograd(33, 16, at::TensorOptions(), 1e-6, 1e-5);
}

// The routing weight's gradient on CPU is autograd's bit for bit (the same products, the same
// sum): the AdamW parity tests amplify its last bit through the router.
TEST(WeightedSwiglu, ClampedOpWeightGradientIsAutogradsExactly) {
  at::manual_seed(6);
  at::Tensor h = (at::randn({57, 2 * 24}) * 0.2).requires_grad_(true);
  at::Tensor w = at::rand({57}).requires_grad_(true);
  at::Tensor h2 = h.detach().clone().requires_grad_(true), w2 = w.detach().clone().requires_grad_(true);
  at::Tensor out = WeightedSwiglu(h, w, SwigluOptions::GptOss(0.05, 1.702));
  at::Tensor expected = GptOssActivation(h2, w2, 0.05, 1.702);
  EXPECT_TRUE(testing::Same(out, expected));
  at::Tensor dout = at::randn_like(out);
  out.backward(dout);
  expected.backward(dout);
  EXPECT_TRUE(testing::Same(w.grad(), w2.grad()));
}

TEST(WeightedSwiglu, RejectsBadOptions) {
  at::Tensor h = at::randn({2, 8}), w = at::rand({2});
  SwigluOptions negative = SwigluOptions::GptOss(-1.0, 1.702);
  EXPECT_THROW(
      {
        try {
          WeightedSwiglu(h, w, negative);
        } catch (const c10::Error& e) {
          EXPECT_NE(std::string(e.what()).find("SwigluOptions.limit"), std::string::npos) << e.what();
          throw;
        }
      },
      c10::Error);
  EXPECT_THROW(WeightedSwigluForwardReference(h, w, SwigluOptions::GptOss(7.0, std::nan(""))), c10::Error);
  EXPECT_THROW(WeightedSwigluBackwardReference(h.narrow(1, 0, 4), h, w, {1.0, 0.0, INFINITY}), c10::Error);
}

// The CUDA kernels against the reference, on fresh random inputs, outputs poisoned first; odd F
// takes the scalar path, F % 8 == 0 the 16-byte one; F 768 is the Qwen3-30B-A3B shape. Plain
// options on randn inputs, then GPT-OSS's clamped ones on inputs past and on the limit.
TEST(WeightedSwiglu, CudaMatchesReference) {
  if (!CudaKernelsAvailable()) GTEST_SKIP() << "no CUDA kernels in this build or no GPU visible";
  for (const bool clamped : {false, true}) {
    const SwigluOptions act = clamped ? SwigluOptions::GptOss(7.0, 1.702) : SwigluOptions{};
    for (auto dtype : {at::kFloat, at::kBFloat16, at::kHalf}) {
      for (int64_t rows : {0, 1, 257, 4099}) {
        for (int64_t F : {1, 64, 99, 768, 1000}) {
          SCOPED_TRACE(::testing::Message() << dtype << " rows " << rows << " F " << F << " clamped " << clamped);
          auto opts = at::TensorOptions().device(at::kCUDA).dtype(dtype);
          at::Tensor h = clamped ? ClampTestInput(rows, F, opts) : at::randn({rows, 2 * F}, opts);
          at::Tensor w = at::rand({rows}, opts);
          at::Tensor dout = at::randn({rows, F}, opts);
          const double tol = testing::Tol(dtype) * 2;
          testing::PoisonCudaAllocator();
          at::Tensor out = WeightedSwigluForwardCuda(h, w, act);
          EXPECT_TRUE(testing::Close(out, WeightedSwigluForwardReference(h, w, act), tol, tol));
          testing::PoisonCudaAllocator();
          auto [dh, dw] = WeightedSwigluBackwardCuda(dout, h, w, act);
          auto [rdh, rdw] = WeightedSwigluBackwardReference(dout, h, w, act);
          EXPECT_TRUE(testing::Close(dh, rdh, tol, tol));
          if (clamped && rows > 0) {  // exactly zero wherever a clamp cut the input
            at::Tensor hf = h.to(at::kFloat);
            at::Tensor cut = at::cat({hf.narrow(1, 0, F) > 7.0, hf.narrow(1, F, F).abs() > 7.0}, 1);
            EXPECT_TRUE(dh.masked_select(cut).eq(0).all().item<bool>());
          }
          // dw sums F products (up to 8 * 7 * 42 each when clamped): allow for the accumulation order.
          const double dw_atol = (clamped ? 1e-2 : 1e-4) * std::sqrt(static_cast<double>(F));
          EXPECT_TRUE(testing::Close(dw, rdw, tol, dw_atol));
        }
      }
    }
  }
}

// On CUDA the op takes the kernels (fp32, GPT-OSS-20B's F = 2880; dw sums products up to ~400).
TEST(WeightedSwiglu, CudaClampedOpMatchesAtenAutograd) {
  if (!CudaKernelsAvailable()) GTEST_SKIP() << "no CUDA kernels in this build or no GPU visible";
  at::manual_seed(5);
  ExpectClampedOpMatchesAtenAutograd(513, 2880, at::TensorOptions().device(at::kCUDA), 1e-5, 1e-2);
}

TEST(WeightedSwiglu, CudaModelShapeAndMisaligned) {
  if (!CudaKernelsAvailable()) GTEST_SKIP() << "no CUDA kernels in this build or no GPU visible";
  auto opts = at::TensorOptions().device(at::kCUDA).dtype(at::kBFloat16);
  const int64_t rows = 4096 * 8, F = 768;
  for (bool misaligned : {false, true}) {
    SCOPED_TRACE(misaligned ? "misaligned" : "aligned");
    const int64_t off = misaligned ? 1 : 0;
    at::Tensor h = at::randn({rows * 2 * F + off}, opts).narrow(0, off, rows * 2 * F).view({rows, 2 * F});
    at::Tensor w = at::rand({rows + off}, opts).narrow(0, off, rows);
    at::Tensor dout = at::randn({rows * F + off}, opts).narrow(0, off, rows * F).view({rows, F});
    testing::PoisonCudaAllocator();
    at::Tensor out = WeightedSwigluForwardCuda(h, w);
    EXPECT_TRUE(testing::Close(out, WeightedSwigluForwardReference(h, w), 3.2e-2, 3.2e-2));
    testing::PoisonCudaAllocator();
    auto [dh, dw] = WeightedSwigluBackwardCuda(dout, h, w);
    auto [rdh, rdw] = WeightedSwigluBackwardReference(dout, h, w);
    EXPECT_TRUE(testing::Close(dh, rdh, 3.2e-2, 3.2e-2));
    EXPECT_TRUE(testing::Close(dw, rdw, 3.2e-2, 1e-2));
  }
}

// The dense MLP's SwiGLU of two projections: the reference against autograd of silu(g) * u.
TEST(Swiglu, PairReferenceMatchesAutograd) {
  at::manual_seed(11);
  at::Tensor g = at::randn({5, 7, 24}, at::kDouble).requires_grad_(true);
  at::Tensor u = at::randn({5, 7, 24}, at::kDouble).requires_grad_(true);
  at::Tensor expected = at::silu(g) * u;
  at::Tensor dout = at::randn_like(expected);
  expected.backward(dout);
  EXPECT_TRUE(at::allclose(SwigluForwardReference(g.detach(), u.detach()), expected.detach(), 1e-12, 1e-12));
  auto [dg, du] = SwigluBackwardReference(dout, g.detach(), u.detach());
  EXPECT_TRUE(at::allclose(dg, g.grad(), 1e-12, 1e-12));
  EXPECT_TRUE(at::allclose(du, u.grad(), 1e-12, 1e-12));
}

// On CPU the op is ATen's silu(g) * u exactly (HF's arithmetic for the CPU parity tests).
TEST(Swiglu, PairOpOnCpuIsAtensFormula) {
  at::manual_seed(12);
  at::Tensor g = at::randn({9, 16}, at::kBFloat16), u = at::randn({9, 16}, at::kBFloat16);
  EXPECT_TRUE(at::equal(Swiglu(g, u), at::silu(g) * u));
}

// The CUDA kernels against the reference, outputs poisoned first: [B, T, F] inputs, F odd
// (scalar path) and a multiple of 8 (16-byte vectors; 11264 and 2816 are Moonlight's dense and
// shared-expert widths), views that misalign the start, and the op's autograd gradients.
TEST(Swiglu, CudaPairMatchesReference) {
  if (!CudaKernelsAvailable()) GTEST_SKIP() << "no CUDA kernels in this build or no GPU visible";
  at::manual_seed(13);
  for (auto dtype : {at::kFloat, at::kBFloat16, at::kHalf}) {
    for (int64_t F : {1, 99, 2816, 11264}) {
      for (int64_t off : {0, 1}) {
        SCOPED_TRACE(::testing::Message() << dtype << " F " << F << " offset " << off);
        auto opts = at::TensorOptions().device(at::kCUDA).dtype(dtype);
        const int64_t rows = 2 * 37;
        auto make = [&] { return at::randn({rows * F + off}, opts).narrow(0, off, rows * F).view({2, 37, F}); };
        at::Tensor g = make(), u = make(), dout = make();
        const double tol = testing::Tol(dtype) * 2;
        testing::PoisonCudaAllocator();
        at::Tensor out = SwigluForwardCuda(g, u);
        EXPECT_EQ(out.sizes(), g.sizes());
        EXPECT_TRUE(testing::Close(out, SwigluForwardReference(g, u), tol, tol));
        testing::PoisonCudaAllocator();
        auto [dg, du] = SwigluBackwardCuda(dout, g, u);
        auto [rdg, rdu] = SwigluBackwardReference(dout, g, u);
        EXPECT_TRUE(testing::Close(dg, rdg, tol, tol));
        EXPECT_TRUE(testing::Close(du, rdu, tol, tol));
        // The differentiable op on CUDA runs these kernels.
        at::Tensor gl = g.detach().requires_grad_(true), ul = u.detach().requires_grad_(true);
        Swiglu(gl, ul).backward(dout);
        EXPECT_TRUE(testing::Close(gl.grad(), rdg, tol, tol));
        EXPECT_TRUE(testing::Close(ul.grad(), rdu, tol, tol));
      }
    }
  }
  auto opts = at::TensorOptions().device(at::kCUDA).dtype(at::kBFloat16);
  EXPECT_THROW(SwigluForwardCuda(at::zeros({4, 8}, opts), at::zeros({4, 9}, opts)), c10::Error);
  EXPECT_THROW(SwigluForwardCuda(at::zeros({4, 8}, opts), at::zeros({4, 8}, opts.dtype(at::kFloat))), c10::Error);
}

}  // namespace
}  // namespace ftd::kernels
