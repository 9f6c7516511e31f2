// Helpers of the kernel tests: poisoning the CUDA caching allocator so that an output element a
// kernel forgets to write reads as NaN (or -1 for integers), and closeness checks that name the
// worst element.
#pragma once

#include <string>

#include <ATen/core/Tensor.h>

#include "gtest/gtest.h"

namespace ftd::kernels::testing {

// Empties the CUDA cache, then fills fresh small- and large-pool blocks with 0xFF bytes and frees
// them back into the cache: later allocations start as NaN (floats) or -1 (integers).
void PoisonCudaAllocator();

// |actual - expected| <= atol + rtol * |expected| everywhere, no NaN in actual; on failure the
// message names the worst element.
::testing::AssertionResult Close(const at::Tensor& actual, const at::Tensor& expected, double rtol, double atol);

// Exact equality (shapes, dtypes and every element).
::testing::AssertionResult Same(const at::Tensor& actual, const at::Tensor& expected);

// The tolerance of a dtype's single rounding (plus margin): fp32 1e-5, fp16 2e-3, bf16 1.6e-2.
double Tol(at::ScalarType t);

}  // namespace ftd::kernels::testing
