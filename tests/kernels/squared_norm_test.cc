#include "kernels/squared_norm.h"

#include <ATen/ATen.h>

#include "gtest/gtest.h"
#include "kernels/kernels_available.h"

namespace ftd::kernels {
namespace {

// sum(x^2) in fp64 over x's values.
double ExactSquares(const at::Tensor& x) { return x.to(at::kDouble).square().sum().item<double>(); }

// The reference adds to what the sum holds, on CPU (the path of CPU jobs).
TEST(SquaredNorm, ReferenceAddsTheSquaresOnCpu) {
  at::manual_seed(3);
  at::Tensor x = at::randn({37, 19}, at::kFloat);
  at::Tensor sum = at::full({}, 1.5, at::kFloat);
  AddSquaredNorm(x, sum);
  EXPECT_NEAR(sum.item<double>(), 1.5 + ExactSquares(x), 1e-5 * (1.5 + ExactSquares(x)));
  AddSquaredNorm(at::empty({0}, at::kFloat), sum);  // nothing to add
  EXPECT_NEAR(sum.item<double>(), 1.5 + ExactSquares(x), 1e-5 * (1.5 + ExactSquares(x)));
  EXPECT_THROW(AddSquaredNorm(x, at::zeros({2}, at::kFloat)), c10::Error);
  EXPECT_THROW(AddSquaredNorm(x, at::zeros({}, at::kDouble)), c10::Error);
}

// The CUDA kernel on random inputs of every dtype: sizes below one vector, at one, odd, and
// several grids' worth; offsets that misalign the start (head elements) by 0-7 elements.
TEST(SquaredNorm, CudaMatchesTheExactSum) {
  if (!CudaKernelsAvailable()) GTEST_SKIP() << "no CUDA kernels in this build or no GPU visible";
  at::manual_seed(4);
  for (auto dtype : {at::kFloat, at::kBFloat16, at::kHalf}) {
    for (int64_t n : {1, 3, 8, 1000, 4097, (1 << 20) + 3, 3000001}) {
      for (int64_t off : {0, 1, 5}) {
        SCOPED_TRACE(::testing::Message() << dtype << " n " << n << " offset " << off);
        auto opts = at::TensorOptions().device(at::kCUDA).dtype(dtype);
        at::Tensor x = at::randn({n + off}, opts).narrow(0, off, n);
        at::Tensor sum = at::full({}, 2.0, opts.dtype(at::kFloat));
        AddSquaredNormCuda(x, sum);
        const double expected = 2.0 + ExactSquares(x);
        EXPECT_NEAR(sum.item<double>(), expected, 1e-5 * expected);
        // Deterministic: the same bits on a second run.
        at::Tensor again = at::full({}, 2.0, opts.dtype(at::kFloat));
        AddSquaredNormCuda(x, again);
        EXPECT_TRUE(at::equal(sum, again));
      }
    }
  }
}

// Non-contiguous input (a transposed gradient) and the dispatching op on CUDA; zero-sized input
// adds nothing.
TEST(SquaredNorm, CudaNonContiguousAndEmpty) {
  if (!CudaKernelsAvailable()) GTEST_SKIP() << "no CUDA kernels in this build or no GPU visible";
  at::manual_seed(5);
  auto opts = at::TensorOptions().device(at::kCUDA).dtype(at::kBFloat16);
  at::Tensor x = at::randn({513, 1031}, opts).t();
  at::Tensor sum = at::zeros({}, opts.dtype(at::kFloat));
  AddSquaredNorm(x, sum);
  AddSquaredNorm(at::empty({0, 4}, opts), sum);
  EXPECT_NEAR(sum.item<double>(), ExactSquares(x), 1e-5 * ExactSquares(x));
  EXPECT_THROW(AddSquaredNormCuda(x, at::zeros({}, at::kFloat)), c10::Error);  // sum on the CPU
}

}  // namespace
}  // namespace ftd::kernels
