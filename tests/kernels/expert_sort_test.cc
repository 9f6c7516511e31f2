#include "kernels/expert_sort.h"

#include <ATen/ATen.h>

#include "gtest/gtest.h"
#include "tests/kernels/kernel_test_util.h"

namespace ftd::kernels {
namespace {

using testing::PoisonCudaAllocator;
using testing::Same;

// The reference against a plain host-side stable bucket sort.
TEST(ExpertSort, ReferenceIsAStableCountingSort) {
  at::manual_seed(1);
  const int64_t T = 50, k = 3, E = 7;
  at::Tensor experts = at::randint(0, E, {T, k}, at::kLong);
  ExpertOrder r = SortByExpertReference(experts, E);
  std::vector<std::vector<int64_t>> buckets(E);
  at::Tensor flat = experts.reshape({-1});
  auto acc = flat.accessor<int64_t, 1>();
  for (int64_t i = 0; i < T * k; ++i) buckets[acc[i]].push_back(i);
  std::vector<int64_t> order, counts, ends;
  int64_t total = 0;
  for (const auto& b : buckets) {
    order.insert(order.end(), b.begin(), b.end());
    counts.push_back(static_cast<int64_t>(b.size()));
    total += static_cast<int64_t>(b.size());
    ends.push_back(total);
  }
  EXPECT_TRUE(Same(r.order, at::tensor(order, at::kLong)));
  EXPECT_TRUE(Same(r.counts, at::tensor(counts, at::kLong)));
  EXPECT_TRUE(Same(r.ends, at::tensor(ends, at::kLong).to(at::kInt)));
  EXPECT_TRUE(Same(r.order.index_select(0, r.inverse), at::arange(T * k, at::kLong)));
  // The dispatching entry point on CPU is the reference.
  ExpertOrder op = SortByExpert(experts, E);
  EXPECT_TRUE(Same(op.order, r.order));
  EXPECT_TRUE(Same(op.inverse, r.inverse));
}

TEST(ExpertSort, CudaMatchesReferenceExactly) {
  if (!CudaKernelsAvailable()) GTEST_SKIP() << "no CUDA kernels in this build or no GPU visible";
  struct Case {
    int64_t T, k, E;
  };
  const std::vector<Case> cases = {{0, 8, 128},  {1, 1, 1},     {1, 8, 128},  {5, 2, 3},     {333, 3, 7},
                                   {1000, 8, 1024}, {4096, 8, 128}, {4097, 8, 128}, {70000, 4, 64}, {8192, 8, 128}};
  auto opts = at::TensorOptions().device(at::kCUDA).dtype(at::kLong);
  for (const Case& c : cases) {
    // Uniform ids, all on one expert (stability across every chunk), and reversed runs.
    std::vector<at::Tensor> inputs = {at::randint(0, c.E, {c.T, c.k}, opts), at::full({c.T, c.k}, c.E - 1, opts),
                                      (c.E - 1 - at::arange(c.T * c.k, opts).div(7, "floor").remainder(c.E))
                                          .view({c.T, c.k})};
    for (size_t v = 0; v < inputs.size(); ++v) {
      SCOPED_TRACE(::testing::Message() << "T " << c.T << " k " << c.k << " E " << c.E << " input " << v);
      PoisonCudaAllocator();
      ExpertOrder got = SortByExpertCuda(inputs[v], c.E);
      ExpertOrder want = SortByExpertReference(inputs[v], c.E);
      EXPECT_TRUE(Same(got.counts, want.counts));
      EXPECT_TRUE(Same(got.ends, want.ends));
      EXPECT_TRUE(Same(got.order, want.order));
      EXPECT_TRUE(Same(got.inverse, want.inverse));
    }
  }
}

}  // namespace
}  // namespace ftd::kernels
