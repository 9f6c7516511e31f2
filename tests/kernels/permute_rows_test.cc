#include "kernels/permute_rows.h"

#include <ATen/ATen.h>

#include "gtest/gtest.h"
#include "kernels/expert_sort.h"
#include "tests/kernels/kernel_test_util.h"

namespace ftd::kernels {
namespace {

using testing::Close;
using testing::PoisonCudaAllocator;
using testing::Same;
using testing::Tol;

// The references agree with the engine's formulation (index_select by token, index_add back).
TEST(PermuteRows, ReferencesMatchIndexOps) {
  at::manual_seed(1);
  const int64_t T = 20, k = 3, E = 5, H = 6;
  ExpertOrder o = SortByExpertReference(at::randint(0, E, {T, k}, at::kLong), E);
  at::Tensor x = at::randn({T, H}, at::kDouble);
  at::Tensor token = o.order.div(k, "floor");
  EXPECT_TRUE(Same(PermuteRowsReference(x, o.order, k), x.index_select(0, token)));
  at::Tensor y = at::randn({T * k, H}, at::kDouble);
  EXPECT_TRUE(Close(UnpermuteSumReference(y, o.inverse, k), at::zeros({T, H}, at::kDouble).index_add(0, token, y),
                    1e-12, 1e-12));
}

// Each op's gradient is the other op (CPU path through the references).
TEST(PermuteRows, OpsAreEachOthersBackward) {
  at::manual_seed(2);
  const int64_t T = 13, k = 2, E = 4, H = 8;
  ExpertOrder o = SortByExpertReference(at::randint(0, E, {T, k}, at::kLong), E);
  at::Tensor x = at::randn({T, H}, at::kDouble).requires_grad_(true);
  at::Tensor rows = PermuteRows(x, o.order, o.inverse, k);
  at::Tensor dy = at::randn_like(rows);
  rows.backward(dy);
  EXPECT_TRUE(Close(x.grad(), UnpermuteSumReference(dy, o.inverse, k), 1e-12, 1e-12));
  at::Tensor y = at::randn({T * k, H}, at::kDouble).requires_grad_(true);
  at::Tensor out = UnpermuteSum(y, o.order, o.inverse, k);
  at::Tensor dout = at::randn_like(out);
  out.backward(dout);
  EXPECT_TRUE(Same(y.grad(), PermuteRowsReference(dout, o.order, k)));
}

TEST(PermuteRows, CudaMatchesReference) {
  if (!CudaKernelsAvailable()) GTEST_SKIP() << "no CUDA kernels in this build or no GPU visible";
  struct Case {
    int64_t T, k, E, H;
  };
  const std::vector<Case> cases = {{0, 8, 128, 2048}, {1, 1, 1, 1},    {7, 2, 3, 3},      {33, 4, 8, 8},
                                   {100, 8, 128, 2047}, {257, 3, 16, 100}, {4096, 8, 128, 2048}};
  for (auto dtype : {at::kFloat, at::kBFloat16, at::kHalf}) {
    for (const Case& c : cases) {
      SCOPED_TRACE(::testing::Message() << dtype << " T " << c.T << " k " << c.k << " H " << c.H);
      auto opts = at::TensorOptions().device(at::kCUDA).dtype(dtype);
      ExpertOrder o = SortByExpertReference(at::randint(0, c.E, {c.T, c.k}, opts.dtype(at::kLong)), c.E);
      at::Tensor x = at::randn({c.T, c.H}, opts);
      at::Tensor y = at::randn({c.T * c.k, c.H}, opts);
      PoisonCudaAllocator();
      EXPECT_TRUE(Same(PermuteRowsCuda(x, o.order, c.k), PermuteRowsReference(x, o.order, c.k)));
      PoisonCudaAllocator();
      at::Tensor sum = UnpermuteSumCuda(y, o.inverse, c.k);
      EXPECT_TRUE(Close(sum, UnpermuteSumReference(y, o.inverse, c.k), Tol(dtype), Tol(dtype)));
    }
  }
}

// Views at odd element offsets take the narrower-access paths.
TEST(PermuteRows, CudaMisalignedRows) {
  if (!CudaKernelsAvailable()) GTEST_SKIP() << "no CUDA kernels in this build or no GPU visible";
  auto opts = at::TensorOptions().device(at::kCUDA).dtype(at::kBFloat16);
  const int64_t T = 65, k = 4, E = 9, H = 64;
  ExpertOrder o = SortByExpertReference(at::randint(0, E, {T, k}, opts.dtype(at::kLong)), E);
  at::Tensor x = at::randn({T * H + 1}, opts).narrow(0, 1, T * H).view({T, H});
  at::Tensor y = at::randn({T * k * H + 3}, opts).narrow(0, 3, T * k * H).view({T * k, H});
  PoisonCudaAllocator();
  EXPECT_TRUE(Same(PermuteRowsCuda(x, o.order, k), PermuteRowsReference(x, o.order, k)));
  PoisonCudaAllocator();
  EXPECT_TRUE(Close(UnpermuteSumCuda(y, o.inverse, k), UnpermuteSumReference(y, o.inverse, k), 1.6e-2, 1.6e-2));
}

TEST(PermuteRows, CudaOpsGradients) {
  if (!CudaKernelsAvailable()) GTEST_SKIP() << "no CUDA kernels in this build or no GPU visible";
  auto opts = at::TensorOptions().device(at::kCUDA).dtype(at::kFloat);
  const int64_t T = 512, k = 8, E = 128, H = 256;
  ExpertOrder o = SortByExpert(at::randint(0, E, {T, k}, opts.dtype(at::kLong)), E);
  at::Tensor x = at::randn({T, H}, opts).requires_grad_(true);
  at::Tensor rows = PermuteRows(x, o.order, o.inverse, k);
  at::Tensor out = UnpermuteSum(rows * 2, o.order, o.inverse, k);
  at::Tensor dout = at::randn_like(out);
  out.backward(dout);
  EXPECT_TRUE(Close(out, x.detach() * (2 * k), 1e-5, 1e-5));
  EXPECT_TRUE(Close(x.grad(), dout * (2 * k), 1e-5, 1e-5));
}

}  // namespace
}  // namespace ftd::kernels
