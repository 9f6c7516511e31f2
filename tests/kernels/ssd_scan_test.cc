#include "kernels/ssd_scan.h"

#include <cmath>

#include <ATen/ATen.h>

#include "gtest/gtest.h"
#include "tests/kernels/kernel_test_util.h"

namespace ftd::kernels {
namespace {

struct Inputs {
  at::Tensor x, dt, A, b, c, D, seg;
};

// Random scan inputs; x, b and c as strided slices of one wider tensor, as the mixer passes them.
Inputs RandomInputs(int64_t B, int64_t S, int64_t nh, int64_t P, int64_t G, int64_t N, bool packed,
                    const at::TensorOptions& opts) {
  Inputs in;
  const int64_t width = nh * P + 2 * G * N + 3;
  at::Tensor wide = at::randn({B, S, width}, opts);
  in.x = wide.narrow(2, 0, nh * P).view({B, S, nh, P});
  in.b = wide.narrow(2, nh * P, G * N).view({B, S, G, N});
  in.c = wide.narrow(2, nh * P + G * N, G * N).view({B, S, G, N});
  auto f32 = opts.dtype(at::kFloat);
  in.dt = at::softplus(at::randn({B, S, nh}, f32) - 1);
  in.A = -(at::rand({nh}, f32) * 2 + 0.05);
  in.D = at::randn({nh}, opts);
  if (packed) {
    in.seg = at::zeros({B, S}, f32.dtype(at::kLong));
    if (S > 20) {
      in.seg.narrow(1, 7, S - 7).fill_(1);     // a boundary inside the first 16 tokens
      in.seg.narrow(1, S / 2, S - S / 2).fill_(2);  // and one further on
    }
  }
  return in;
}

// The op on CPU: the reference forward, autograd's gradients; the state restarts at document starts.
TEST(SsdScan, OpOnCpuAndDocumentResets) {
  at::manual_seed(1);
  Inputs in = RandomInputs(2, 29, 4, 3, 2, 5, /*packed=*/true, at::TensorOptions().dtype(at::kFloat));
  for (at::Tensor* t : {&in.x, &in.dt, &in.A, &in.b, &in.c, &in.D}) *t = t->detach().clone().requires_grad_(true);
  at::Tensor y = SsdScan(in.x, in.dt, in.A, in.b, in.c, in.D, in.seg);
  at::Tensor dy = at::randn_like(y);
  y.backward(dy);
  SsdScanGrads ref = SsdScanBackwardReference(dy, in.x, in.dt, in.A, in.b, in.c, in.D, in.seg);
  EXPECT_TRUE(at::allclose(in.x.grad(), ref.dx, 1e-5, 1e-5));
  EXPECT_TRUE(at::allclose(in.dt.grad(), ref.ddt, 1e-5, 1e-5));
  EXPECT_TRUE(at::allclose(in.A.grad(), ref.dA, 1e-5, 1e-5));
  EXPECT_TRUE(at::allclose(in.b.grad(), ref.db, 1e-5, 1e-5));
  // The last document (tokens 14..28 of row 0) alone gives the same outputs.
  auto doc = [](const at::Tensor& t) { return t.detach().narrow(0, 0, 1).narrow(1, 14, 15); };
  at::Tensor alone = SsdScanForwardReference(doc(in.x), doc(in.dt), in.A.detach(), doc(in.b), doc(in.c), in.D.detach(), {});
  EXPECT_TRUE(at::allclose(doc(y), alone, 1e-5, 1e-5));
  // Unpacked rows (no segment ids) through the op as well.
  in.x.mutable_grad().zero_();
  SsdScan(in.x, in.dt, in.A, in.b, in.c, in.D, {}).backward(dy);
  SsdScanGrads unpacked = SsdScanBackwardReference(dy, in.x, in.dt, in.A, in.b, in.c, in.D, {});
  EXPECT_TRUE(at::allclose(in.x.grad(), unpacked.dx, 1e-5, 1e-5));
}

// The CUDA scan against the reference: fp32 and bf16 inputs, one and several B/C groups, a head
// dim that is not a multiple of the 16-row tile, sequences that cross the 128-token checkpoints
// and end inside a 16-token sub-chunk, packed rows, state sizes 5 to 128 (each NK), and Nemotron
// Nano 3's head shape (64 heads of 64, 8 groups, state 128).
TEST(SsdScan, CudaMatchesReference) {
  if (!CudaKernelsAvailable()) GTEST_SKIP() << "no CUDA kernels in this build or no GPU visible";
  struct Shape {
    int64_t B, S, nh, P, G, N;
  };
  for (auto dtype : {at::kFloat, at::kBFloat16}) {
    for (Shape s : {Shape{2, 23, 4, 8, 2, 16}, Shape{1, 300, 2, 20, 1, 5}, Shape{2, 129, 6, 16, 3, 40},
                    Shape{1, 1, 1, 1, 1, 1}, Shape{1, 640, 64, 64, 8, 128}}) {
      for (bool packed : {false, true}) {
        SCOPED_TRACE(::testing::Message() << dtype << " B " << s.B << " S " << s.S << " nh " << s.nh << " P " << s.P
                                          << " G " << s.G << " N " << s.N << (packed ? " packed" : ""));
        at::manual_seed(3);
        Inputs in = RandomInputs(s.B, s.S, s.nh, s.P, s.G, s.N, packed,
                                 at::TensorOptions().device(at::kCUDA).dtype(dtype));
        testing::PoisonCudaAllocator();
        auto [y, ckpt] = SsdScanForwardCuda(in.x, in.dt, in.A, in.b, in.c, in.D, in.seg);
        at::Tensor ref = SsdScanForwardReference(in.x, in.dt, in.A, in.b, in.c, in.D, in.seg);
        // fp32 state either way; the sums over N and the decays in another order.
        const double tol = 2e-4 * std::sqrt(static_cast<double>(s.N));
        EXPECT_TRUE(testing::Close(y, ref, tol, tol));
        at::Tensor dy = at::randn_like(y);
        testing::PoisonCudaAllocator();
        SsdScanGrads g = SsdScanBackwardCuda(dy, in.x, in.dt, in.A, in.b, in.c, in.D, in.seg, ckpt);
        SsdScanGrads r = SsdScanBackwardReference(dy, in.x, in.dt, in.A, in.b, in.c, in.D, in.seg);
        const double gtol = testing::Tol(dtype) * 2 + tol;
        EXPECT_TRUE(testing::Close(g.dx, r.dx, gtol, gtol));
        // Gradients summed over tokens, rows and heads: scale the absolute tolerance.
        const double sum_tol = gtol * std::sqrt(static_cast<double>(s.S * s.P * s.nh / s.G));
        EXPECT_TRUE(testing::Close(g.ddt, r.ddt, gtol, gtol * std::sqrt(static_cast<double>(s.P * s.N))));
        EXPECT_TRUE(testing::Close(g.db, r.db, gtol, sum_tol));
        EXPECT_TRUE(testing::Close(g.dc, r.dc, gtol, sum_tol));
        EXPECT_TRUE(testing::Close(g.dA, r.dA, 1e-3, sum_tol * std::sqrt(static_cast<double>(s.N))));
        EXPECT_TRUE(testing::Close(g.dD, r.dD, gtol, sum_tol));
      }
    }
  }
}

// The differentiable op on CUDA gives the launchers' gradients (the autograd wiring).
TEST(SsdScan, CudaOpWiring) {
  if (!CudaKernelsAvailable()) GTEST_SKIP() << "no CUDA kernels in this build or no GPU visible";
  at::manual_seed(4);
  Inputs in = RandomInputs(1, 40, 2, 8, 1, 16, false, at::TensorOptions().device(at::kCUDA).dtype(at::kFloat));
  std::vector<at::Tensor*> ts = {&in.x, &in.dt, &in.A, &in.b, &in.c, &in.D};
  for (at::Tensor* t : ts) *t = t->detach().clone().requires_grad_(true);
  at::Tensor y = SsdScan(in.x, in.dt, in.A, in.b, in.c, in.D, {});
  at::Tensor dy = at::randn_like(y);
  y.backward(dy);
  SsdScanGrads r = SsdScanBackwardReference(dy, in.x, in.dt, in.A, in.b, in.c, in.D, {});
  EXPECT_TRUE(testing::Close(in.x.grad(), r.dx, 1e-3, 1e-3));
  EXPECT_TRUE(testing::Close(in.D.grad(), r.dD, 1e-3, 1e-2));
}

}  // namespace
}  // namespace ftd::kernels
