#include "tests/kernels/kernel_test_util.h"

#include <sstream>
#include <vector>

#include <ATen/ATen.h>
#ifdef FTD_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#endif

namespace ftd::kernels::testing {

void PoisonCudaAllocator() {
#ifdef FTD_WITH_CUDA
  c10::cuda::CUDACachingAllocator::emptyCache();
  auto opts = at::TensorOptions().device(at::kCUDA).dtype(at::kByte);
  std::vector<at::Tensor> blocks;
  // Requests up to 1 MiB come from 2 MiB small-pool segments; larger ones split large blocks.
  for (int i = 0; i < 48; ++i) blocks.push_back(at::empty({1 << 20}, opts));
  for (int i = 0; i < 4; ++i) blocks.push_back(at::empty({int64_t{5} << 20}, opts));
  blocks.push_back(at::empty({int64_t{3} << 30}, opts));
  for (at::Tensor& b : blocks) b.fill_(0xFF);
#endif
}

::testing::AssertionResult Close(const at::Tensor& actual, const at::Tensor& expected, double rtol, double atol) {
  if (actual.sizes() != expected.sizes()) {
    return ::testing::AssertionFailure() << "shape " << actual.sizes() << " != expected " << expected.sizes();
  }
  if (actual.numel() == 0) return ::testing::AssertionSuccess();
  at::Tensor a = actual.detach().to(at::kCPU, at::kDouble), e = expected.detach().to(at::kCPU, at::kDouble);
  at::Tensor nan = a.isnan().logical_or(a.isinf());
  if (nan.any().item<bool>()) {
    const int64_t at_index = nan.reshape({-1}).nonzero()[0].item<int64_t>();
    return ::testing::AssertionFailure() << nan.sum().item<int64_t>() << " NaN/Inf elements, first at flat index "
                                         << at_index << " (expected " << e.reshape({-1})[at_index].item<double>()
                                         << ")";
  }
  at::Tensor excess = (a - e).abs() - (atol + rtol * e.abs());
  const int64_t worst = excess.reshape({-1}).argmax().item<int64_t>();
  if (excess.reshape({-1})[worst].item<double>() > 0) {
    return ::testing::AssertionFailure() << "flat index " << worst << ": " << a.reshape({-1})[worst].item<double>()
                                         << " vs expected " << e.reshape({-1})[worst].item<double>() << " (rtol "
                                         << rtol << ", atol " << atol << "; max |diff| "
                                         << (a - e).abs().max().item<double>() << ")";
  }
  return ::testing::AssertionSuccess();
}

::testing::AssertionResult Same(const at::Tensor& actual, const at::Tensor& expected) {
  if (actual.sizes() != expected.sizes() || actual.scalar_type() != expected.scalar_type()) {
    return ::testing::AssertionFailure() << actual.scalar_type() << actual.sizes() << " vs expected "
                                         << expected.scalar_type() << expected.sizes();
  }
  if (actual.numel() == 0) return ::testing::AssertionSuccess();
  at::Tensor a = actual.detach().to(at::kCPU), e = expected.detach().to(at::kCPU);
  at::Tensor differ = a.ne(e).reshape({-1});
  if (differ.any().item<bool>()) {
    const int64_t i = differ.nonzero()[0].item<int64_t>();
    return ::testing::AssertionFailure() << differ.sum().item<int64_t>() << " elements differ, first at flat index "
                                         << i << ": " << a.reshape({-1})[i].item<double>() << " vs expected "
                                         << e.reshape({-1})[i].item<double>();
  }
  return ::testing::AssertionSuccess();
}

double Tol(at::ScalarType t) {
  switch (t) {
    case at::kBFloat16:
      return 1.6e-2;
    case at::kHalf:
      return 2e-3;
    default:
      return 1e-5;
  }
}

}  // namespace ftd::kernels::testing
