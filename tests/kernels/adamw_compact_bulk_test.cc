// kernels/adamw_compact_bulk.h: on an sm90 GPU the bulk-copy kernel leaves the parameter, its low
// half, both codes and both scales bit for bit as the element-wise kernel does, on few thread
// blocks (each cycling through its ring of stages many times) and on one an SM, with and without
// weight decay (idle blocks skipped), and adds the same sum of gradient squares.
#include <ATen/ATen.h>

#include "gtest/gtest.h"
#include "kernels/adamw_compact.h"
#include "kernels/adamw_compact_bulk.h"

namespace ftd::kernels {
namespace {

struct State {
  at::Tensor param, low;
  CompactMoments moments;
  State Clone() const {
    return {param.clone(), low.clone(),
            {moments.r_codes.clone(), moments.s_codes.clone(), moments.r_scale.clone(), moments.s_max.clone()}};
  }
};

void ExpectSame(const State& a, const State& b, int step) {
  EXPECT_TRUE(at::equal(a.param, b.param)) << "param, step " << step;
  EXPECT_TRUE(at::equal(a.low, b.low)) << "low half, step " << step;
  EXPECT_TRUE(at::equal(a.moments.r_codes, b.moments.r_codes)) << "r codes, step " << step;
  EXPECT_TRUE(at::equal(a.moments.s_codes, b.moments.s_codes)) << "s codes, step " << step;
  EXPECT_TRUE(at::equal(a.moments.r_scale, b.moments.r_scale)) << "r scales, step " << step;
  EXPECT_TRUE(at::equal(a.moments.s_max, b.moments.s_max)) << "s maxima, step " << step;
}

TEST(CompactAdamWBulkCuda, EqualsTheElementwiseKernel) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  auto cuda = at::TensorOptions().device(at::kCUDA);
  const int64_t n = 37 * kCompactBulkChunk;
  at::manual_seed(5);
  auto [p, low] = SplitMaster(at::randn({n}, cuda.dtype(at::kFloat)) * 0.05);
  if (!CompactAdamWBulkSupports(p, low, at::zeros({n}, cuda.dtype(at::kBFloat16)), CompactMoments::Zeros(n, at::kCUDA),
                                at::zeros({}, cuda.dtype(at::kFloat)), AdamWHyper{})) {
    GTEST_SKIP() << "the bulk-copy kernel needs an sm90 GPU";
  }
  for (double decay : {0.0, 0.1}) {
    for (int ctas : {3, 0}) {
      SCOPED_TRACE(::testing::Message() << "decay " << decay << " ctas " << ctas);
      State elementwise{p.clone(), low.clone(), CompactMoments::Zeros(n, at::kCUDA)};
      State bulk = elementwise.Clone();
      at::Tensor step = at::zeros({}, cuda.dtype(at::kFloat));
      for (int s = 0; s < 4; ++s) {
        at::manual_seed(100 + s);
        at::Tensor g = (at::randn({n}, cuda.dtype(at::kFloat)) * (s + 1)).to(at::kBFloat16);
        g.narrow(0, 3 * kCompactBlock, 2 * kCompactBlock).zero_();  // blocks that never get a gradient
        AdamWHyper h{3e-4, 0.9, 0.999, decay, 1e-8};
        h.scalars = at::tensor({3e-4f, 0.7f}).to(at::kCUDA);
        AdamWHyper h_bulk = h;
        h.grad_sq_sum = at::zeros({1}, cuda.dtype(at::kFloat));
        h_bulk.grad_sq_sum = at::zeros({1}, cuda.dtype(at::kFloat));
        step.add_(1.0);
        CompactAdamWStepCuda(elementwise.param, elementwise.low, g, elementwise.moments, step, h);
        ASSERT_TRUE(CompactAdamWBulkSupports(bulk.param, bulk.low, g, bulk.moments, step, h_bulk));
        CompactAdamWStepBulkCuda(bulk.param, bulk.low, g, bulk.moments, step, h_bulk, ctas);
        ExpectSame(elementwise, bulk, s);
        const double want = h.grad_sq_sum.item<double>();
        EXPECT_GT(want, 0.0);
        EXPECT_NEAR(h_bulk.grad_sq_sum.item<double>(), want, 1e-5 * want) << "step " << s;
      }
      if (decay == 0.0) {  // the idle blocks were left as they were
        EXPECT_TRUE(bulk.moments.s_max.narrow(0, 3, 2).eq(0).all().item<bool>());
      }
    }
  }
}

TEST(CompactAdamWBulk, TakesOnlyWholeChunksOfSplitBf16State) {
  const int64_t n = 2 * kCompactBulkChunk + kCompactBlock;  // not whole chunks
  auto [p, low] = SplitMaster(at::randn({n}) * 0.05);
  // On the CPU (or with a partial chunk) the bulk kernel is never chosen.
  EXPECT_FALSE(CompactAdamWBulkSupports(p, low, at::zeros({n}, at::kBFloat16), CompactMoments::Zeros(n, at::kCPU),
                                        at::zeros({}), AdamWHyper{}));
  if (!at::hasCUDA()) return;
  auto cuda = at::TensorOptions().device(at::kCUDA);
  EXPECT_FALSE(CompactAdamWBulkSupports(p.to(at::kCUDA), low.to(at::kCUDA), at::zeros({n}, cuda.dtype(at::kBFloat16)),
                                        CompactMoments::Zeros(n, at::kCUDA), at::zeros({}, cuda.dtype(at::kFloat)),
                                        AdamWHyper{}));
}

}  // namespace
}  // namespace ftd::kernels
