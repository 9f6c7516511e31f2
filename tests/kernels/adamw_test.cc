#include "kernels/adamw.h"

#include <ATen/ATen.h>

#include "gtest/gtest.h"
#include "tests/kernels/kernel_test_util.h"

namespace ftd::kernels {
namespace {

using testing::Close;
using testing::Tol;

// The reference is PyTorch's fused AdamW: ATen's own CPU kernel gives the same result.
TEST(AdamW, ReferenceMatchesAtenFusedAdamW) {
  at::manual_seed(6);
  for (double wd : {0.0, 0.1}) {
    at::Tensor p = at::randn({1000}), g = at::randn({1000}), m = at::randn({1000}) * 0.1, v = at::rand({1000}) * 0.1;
    at::Tensor step = at::full({}, 3.0f);
    at::Tensor p2 = p.clone(), m2 = m.clone(), v2 = v.clone(), step2 = step.clone();
    AdamWHyper h{1e-3, 0.9, 0.95, wd, 1e-8};
    AdamWStepReference(p, g, m, v, step, h);
    at::_fused_adamw_({p2}, {g}, {m2}, {v2}, {}, {step2}, h.lr, h.beta1, h.beta2, h.weight_decay, h.eps, false, false,
                      std::nullopt, std::nullopt);
    EXPECT_TRUE(Close(p, p2, 1e-6, 1e-7));
    EXPECT_TRUE(Close(m, m2, 1e-6, 1e-7));
    EXPECT_TRUE(Close(v, v2, 1e-6, 1e-7));
  }
}

TEST(AdamW, CudaMatchesAtenFusedAdamW) {
  if (!CudaKernelsAvailable()) GTEST_SKIP() << "no CUDA kernels in this build or no GPU visible";
  // Sizes: vectorised, with a tail, smaller than one vector, one element, and large.
  for (auto dtype : {at::kFloat, at::kBFloat16}) {
    for (int64_t n : {int64_t{1}, int64_t{5}, int64_t{4096}, int64_t{4099}, int64_t{3} << 20}) {
      for (double wd : {0.0, 0.01}) {
        SCOPED_TRACE(::testing::Message() << dtype << " n " << n << " wd " << wd);
        auto opts = at::TensorOptions().device(at::kCUDA).dtype(dtype);
        at::Tensor p = at::randn({n}, opts), g = at::randn({n}, opts);
        at::Tensor m = at::randn({n}, opts) * 0.01, v = at::rand({n}, opts) * 0.01;
        at::Tensor step = at::full({}, 7.0f, opts.dtype(at::kFloat));
        at::Tensor p2 = p.clone(), m2 = m.clone(), v2 = v.clone(), step2 = step.clone();
        AdamWHyper h{1e-3, 0.9, 0.999, wd, 1e-8};
        ASSERT_TRUE(AdamWCudaSupports(p, g, m, v, step));
        AdamWStepCuda(p, g, m, v, step, h);
        at::_fused_adamw_({p2}, {g}, {m2}, {v2}, {}, {step2}, h.lr, h.beta1, h.beta2, h.weight_decay, h.eps, false,
                          false, std::nullopt, std::nullopt);
        // The same fp32 arithmetic rounded once to the dtype: at most an ulp apart.
        const double tol = dtype == at::kFloat ? 1e-6 : Tol(dtype) / 2;
        EXPECT_TRUE(Close(p, p2, tol, 1e-7));
        EXPECT_TRUE(Close(m, m2, tol, 1e-7));
        EXPECT_TRUE(Close(v, v2, tol, 1e-9));
      }
    }
  }
}

// The row-sparse update equals the dense kernel bit for bit over several steps in which
// different rows receive gradients (some rows never, some once then zero again).
TEST(AdamW, RowSparseIsBitIdenticalToDense) {
  if (!CudaKernelsAvailable()) GTEST_SKIP() << "no CUDA kernels in this build or no GPU visible";
  const int64_t rows = 3001, cols = 256;
  auto opts = at::TensorOptions().device(at::kCUDA).dtype(at::kBFloat16);
  at::Tensor p = at::randn({rows, cols}, opts), m = at::zeros({rows, cols}, opts), v = at::zeros({rows, cols}, opts);
  at::Tensor p2 = p.clone(), m2 = m.clone(), v2 = v.clone();
  at::Tensor touched = at::zeros({rows}, opts.dtype(at::kByte));
  at::Tensor step = at::zeros({}, opts.dtype(at::kFloat)), step2 = step.clone();
  const AdamWHyper h{1e-5, 0.9, 0.999, 0.0, 1e-8};
  ASSERT_TRUE(AdamWRowSparseSupports(p, p, m, v, step, touched, h));
  for (int s = 0; s < 4; ++s) {
    // Gradient rows: a random ~10% of rows per step, the rest exactly zero.
    at::Tensor g = at::randn({rows, cols}, opts) * at::rand({rows, 1}, opts.dtype(at::kFloat)).lt(0.1).to(at::kBFloat16);
    step.add_(1.0);
    step2.add_(1.0);
    AdamWRowSparseStepCuda(p, g, m, v, step, touched, h);
    AdamWStepCuda(p2, g, m2, v2, step2, h);
    ASSERT_TRUE(at::equal(p, p2)) << "step " << s;
    ASSERT_TRUE(at::equal(m, m2)) << "step " << s;
    ASSERT_TRUE(at::equal(v, v2)) << "step " << s;
  }
  // Not vacuous: some rows were skipped and some updated.
  const int64_t n_touched = touched.sum().item<int64_t>();
  EXPECT_GT(n_touched, rows / 10);
  EXPECT_LT(n_touched, rows / 2);
  // Weight decay moves untouched rows too: the row-sparse form is refused, however small.
  EXPECT_FALSE(AdamWRowSparseSupports(p, p, m, v, step, touched, {1e-5, 0.9, 0.999, 1e-4, 1e-8}));
}

// The update from the lookup's gradient equals the dense path (the embedding gradient summed in
// fp32 and rounded once, then the row-sparse update) over steps with repeated tokens, rows
// reached once then no more, and rows never reached: at most an ulp of bf16 apart (the fp32 sums
// may add in another order).
TEST(AdamW, EmbeddingUpdateFromLookupMatchesDensePath) {
  if (!CudaKernelsAvailable()) GTEST_SKIP() << "no CUDA kernels in this build or no GPU visible";
  const int64_t rows = 5003, cols = 264, tokens = 700;
  auto opts = at::TensorOptions().device(at::kCUDA).dtype(at::kBFloat16);
  at::Tensor p = at::randn({rows, cols}, opts), m = at::zeros({rows, cols}, opts), v = at::zeros({rows, cols}, opts);
  at::Tensor p2 = p.clone(), m2 = m.clone(), v2 = v.clone();
  at::Tensor touched = at::zeros({rows}, opts.dtype(at::kByte)), touched2 = touched.clone();
  at::Tensor slot_of = at::full({rows}, -1, opts.dtype(at::kInt));
  at::Tensor step = at::zeros({}, opts.dtype(at::kFloat)), step2 = step.clone();
  const AdamWHyper h{1e-3, 0.9, 0.999, 0.0, 1e-8};
  for (int s = 0; s < 4; ++s) {
    // Every row of [50 s, 50 s + 300) once, then 400 repeats from it, shuffled.
    at::Tensor ids = at::cat({at::arange(s * 50, s * 50 + 300, opts.dtype(at::kLong)),
                              at::randint(s * 50, s * 50 + 300, {tokens - 300}, opts.dtype(at::kLong))});
    ids = ids.index_select(0, at::randperm(tokens, opts.dtype(at::kLong)));
    at::Tensor dy = at::randn({tokens, cols}, opts);
    ASSERT_TRUE(AdamWEmbeddingSupports(p, m, v, step, touched, ids, h));
    step.add_(1.0);
    step2.add_(1.0);
    AdamWEmbeddingStepCuda(p, m, v, step, touched, slot_of, ids, dy, h);
    // The reference gradient: fp32 sums over repeated tokens, rounded once to bf16.
    at::Tensor g = at::embedding_dense_backward(dy.to(at::kFloat), ids, rows, -1, false).to(at::kBFloat16);
    AdamWRowSparseStepCuda(p2, g, m2, v2, step2, touched2, h);
    const double tol = Tol(at::kBFloat16) / 2;
    EXPECT_TRUE(Close(p, p2, tol, 1e-7)) << "step " << s;
    EXPECT_TRUE(Close(m, m2, tol, 1e-9)) << "step " << s;
    EXPECT_TRUE(Close(v, v2, tol, 1e-12)) << "step " << s;
    // The scratch map is restored; touched covers every row a token reached (a superset of the
    // dense path's, which marks only nonzero gradient rows).
    EXPECT_EQ(slot_of.ne(-1).sum().item<int64_t>(), 0) << "step " << s;
    EXPECT_TRUE(touched.ge(touched2).all().item<bool>()) << "step " << s;
    // The next step starts both paths from the same state.
    p.copy_(p2), m.copy_(m2), v.copy_(v2);
  }
  // Rows no token reached are untouched and unchanged (no weight decay).
  EXPECT_EQ(touched.slice(0, 500).sum().item<int64_t>(), 0);
  EXPECT_EQ(touched.slice(0, 0, 450).sum().item<int64_t>(), 450);
}

}  // namespace
}  // namespace ftd::kernels
