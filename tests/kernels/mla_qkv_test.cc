#include "kernels/mla_qkv.h"

#include <ATen/ATen.h>

#include "gtest/gtest.h"
#include "kernels/kernels_available.h"
#include "tests/kernels/kernel_test_util.h"

namespace ftd::kernels {
namespace {

using testing::Close;
using testing::PoisonCudaAllocator;
using testing::Tol;

// cos/sin [Bc, S, dr] as the engine builds them (both halves equal).
std::pair<at::Tensor, at::Tensor> CosSin(int64_t Bc, int64_t S, int64_t dr, at::TensorOptions opts) {
  at::Tensor inv = 1.0 / at::pow(10000.0, at::arange(0, dr, 2, opts.dtype(at::kFloat)) / dr);
  at::Tensor f = at::randint(0, 4096, {Bc, S}, opts.dtype(at::kFloat)).unsqueeze(-1) * inv;
  at::Tensor emb = at::cat({f, f}, -1);
  return {emb.cos().to(opts.dtype()), emb.sin().to(opts.dtype())};
}

// The rotation as complex numbers, independently of rotate-half: pair j is (x_j, x_{j+dr/2}),
// or (x_{2j}, x_{2j+1}) when interleaved; it turns by the angle of position and frequency j; the
// result is [real parts | imaginary parts].
at::Tensor ComplexRotation(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, bool interleave) {
  const int64_t half = x.size(-1) / 2;
  at::Tensor re = interleave ? x.slice(-1, 0, x.size(-1), 2) : x.narrow(-1, 0, half);
  at::Tensor im = interleave ? x.slice(-1, 1, x.size(-1), 2) : x.narrow(-1, half, half);
  at::Tensor c = cos.narrow(-1, 0, half).unsqueeze(2), s = sin.narrow(-1, 0, half).unsqueeze(2);
  return at::cat({re * c - im * s, re * s + im * c}, -1);
}

TEST(MlaQkv, ReferenceIsTheComplexRotation) {
  at::manual_seed(3);
  const int64_t B = 2, S = 5, H = 3, dn = 4, dr = 6, dv = 5;
  auto [cos, sin] = CosSin(B, S, dr, at::TensorOptions().dtype(at::kDouble));
  at::Tensor q = at::randn({B, S, H, dn + dr}, at::kDouble), kv = at::randn({B, S, H, dn + dv}, at::kDouble);
  at::Tensor compressed = at::randn({B, S, 7 + dr}, at::kDouble);
  at::Tensor k_rope = compressed.narrow(-1, 7, dr);
  for (bool interleave : {false, true}) {
    SCOPED_TRACE(::testing::Message() << "interleave " << interleave);
    for (int64_t v_width : {dv, dn + dr}) {
      MlaQkv out = MlaQueryKeyValueReference(q, kv, k_rope, cos, sin, dn, v_width, interleave);
      ASSERT_EQ(out.value.sizes(), (std::vector<int64_t>{B, S, H, v_width}));
      EXPECT_TRUE(Close(out.query.narrow(-1, 0, dn), q.narrow(-1, 0, dn), 0, 0));
      EXPECT_TRUE(Close(out.query.narrow(-1, dn, dr), ComplexRotation(q.narrow(-1, dn, dr), cos, sin, interleave),
                        1e-12, 1e-12));
      EXPECT_TRUE(Close(out.key.narrow(-1, 0, dn), kv.narrow(-1, 0, dn), 0, 0));
      at::Tensor k_rotated = ComplexRotation(k_rope.unsqueeze(2), cos, sin, interleave);
      for (int64_t h = 0; h < H; ++h) {
        EXPECT_TRUE(Close(out.key.select(2, h).narrow(-1, dn, dr), k_rotated.squeeze(2), 1e-12, 1e-12));
      }
      EXPECT_TRUE(Close(out.value.narrow(-1, 0, dv), kv.narrow(-1, dn, dv), 0, 0));
      if (v_width > dv) EXPECT_TRUE(out.value.narrow(-1, dv, v_width - dv).eq(0).all().item<bool>());
    }
  }
}

TEST(MlaQkv, TakesTheReferenceOffTheKernelDevice) {
  const at::Tensor q = at::randn({1, 2, 2, 24}), kv = at::randn({1, 2, 2, 24}), k_rope = at::randn({1, 2, 8});
  auto [cos, sin] = CosSin(1, 2, 8, at::TensorOptions());
  EXPECT_FALSE(MlaQkvCudaSupports(q, kv, k_rope, cos, sin, 16, 8));
  MlaQkv a = MlaQueryKeyValue(q, kv, k_rope, cos, sin, 16, 8, true);
  MlaQkv b = MlaQueryKeyValueReference(q, kv, k_rope, cos, sin, 16, 8, true);
  EXPECT_TRUE(at::equal(a.query, b.query) && at::equal(a.key, b.key) && at::equal(a.value, b.value));
}

struct MlaCase {
  int64_t B, S, H, dn, dr, dv, v_width;
  bool interleave, cos_batch_one;
  at::ScalarType dtype;
};

// Forward and every gradient of the kernels against the reference under autograd, with k_rope a
// view into the wider compressed projection as in the model.
TEST(MlaQkv, CudaMatchesReference) {
  if (!CudaKernelsAvailable()) GTEST_SKIP() << "no CUDA kernels in this build or no GPU visible";
  const std::vector<MlaCase> cases = {
      {1, 7, 2, 16, 8, 8, 8, false, false, at::kBFloat16},
      {2, 33, 3, 128, 64, 128, 192, true, true, at::kBFloat16},   // Moonlight / DeepSeek-V3 head, padded V
      {2, 33, 3, 128, 64, 128, 128, true, false, at::kBFloat16},  // the same, V as it is
      {1, 17, 4, 32, 16, 24, 48, false, true, at::kHalf},
      {2, 9, 5, 8, 12, 4, 20, true, false, at::kFloat},
  };
  for (const MlaCase& k : cases) {
    SCOPED_TRACE(::testing::Message() << "B " << k.B << " S " << k.S << " H " << k.H << " dn " << k.dn << " dr "
                                      << k.dr << " dv " << k.dv << " v_width " << k.v_width << " interleave "
                                      << k.interleave << " dtype " << k.dtype);
    PoisonCudaAllocator();
    at::manual_seed(11);
    auto opts = at::TensorOptions().device(at::kCUDA).dtype(k.dtype);
    auto [cos, sin] = CosSin(k.cos_batch_one ? 1 : k.B, k.S, k.dr, opts);
    at::Tensor q = at::randn({k.B, k.S, k.H, k.dn + k.dr}, opts).requires_grad_(true);
    at::Tensor kv = at::randn({k.B, k.S, k.H, k.dn + k.dv}, opts).requires_grad_(true);
    at::Tensor compressed = at::randn({k.B, k.S, 40 + k.dr}, opts).requires_grad_(true);
    at::Tensor k_rope = compressed.narrow(-1, 40, k.dr);
    ASSERT_TRUE(MlaQkvCudaSupports(q, kv, k_rope, cos, sin, k.dn, k.v_width));
    MlaQkv got = MlaQueryKeyValue(q, kv, k_rope, cos, sin, k.dn, k.v_width, k.interleave);

    at::Tensor q32 = q.detach().to(at::kFloat).requires_grad_(true);
    at::Tensor kv32 = kv.detach().to(at::kFloat).requires_grad_(true);
    at::Tensor c32 = compressed.detach().to(at::kFloat).requires_grad_(true);
    MlaQkv want = MlaQueryKeyValueReference(q32, kv32, c32.narrow(-1, 40, k.dr), cos.to(at::kFloat),
                                            sin.to(at::kFloat), k.dn, k.v_width, k.interleave);
    const double tol = Tol(k.dtype);
    EXPECT_TRUE(Close(got.query.to(at::kFloat), want.query, tol, tol));
    EXPECT_TRUE(Close(got.key.to(at::kFloat), want.key, tol, tol));
    EXPECT_TRUE(Close(got.value.to(at::kFloat), want.value, 0, 0));

    at::Tensor dquery = at::randn_like(want.query), dkey = at::randn_like(want.key);
    at::Tensor dvalue = at::randn_like(want.value);
    at::Tensor loss = (got.query.to(at::kFloat) * dquery).sum() + (got.key.to(at::kFloat) * dkey).sum() +
                      (got.value.to(at::kFloat) * dvalue).sum();
    loss.backward();
    at::Tensor loss_ref = (want.query * dquery).sum() + (want.key * dkey).sum() + (want.value * dvalue).sum();
    loss_ref.backward();
    // dk_rope sums H rounded terms: its tolerance grows with the heads.
    EXPECT_TRUE(Close(q.grad().to(at::kFloat), q32.grad(), tol, tol));
    EXPECT_TRUE(Close(kv.grad().to(at::kFloat), kv32.grad(), tol, tol));
    EXPECT_TRUE(Close(compressed.grad().to(at::kFloat), c32.grad(), tol, tol * k.H));
  }
}

// A graph that uses only some outputs (value unused) still gets the gradients of the others.
TEST(MlaQkv, CudaBackwardWithAnUnusedOutput) {
  if (!CudaKernelsAvailable()) GTEST_SKIP() << "no CUDA kernels in this build or no GPU visible";
  auto opts = at::TensorOptions().device(at::kCUDA).dtype(at::kFloat);
  auto [cos, sin] = CosSin(1, 5, 8, opts);
  at::Tensor q = at::randn({1, 5, 2, 16}, opts).requires_grad_(true);
  at::Tensor kv = at::randn({1, 5, 2, 12}, opts).requires_grad_(true);
  at::Tensor k_rope = at::randn({1, 5, 8}, opts).requires_grad_(true);
  MlaQkv got = MlaQueryKeyValue(q, kv, k_rope, cos, sin, 8, 4, false);
  got.query.sum().backward();
  ASSERT_TRUE(q.grad().defined());
  EXPECT_TRUE(kv.grad().eq(0).all().item<bool>());
  EXPECT_TRUE(k_rope.grad().eq(0).all().item<bool>());
  at::Tensor q2 = q.detach().clone().requires_grad_(true);
  MlaQueryKeyValueReference(q2, kv.detach(), k_rope.detach(), cos, sin, 8, 4, false).query.sum().backward();
  EXPECT_TRUE(Close(q.grad(), q2.grad(), 1e-5, 1e-5));
}

}  // namespace
}  // namespace ftd::kernels
