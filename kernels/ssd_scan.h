// The Mamba2 (SSD) selective scan as a recurrence, one token at a time, for every (batch, head):
//   h_t = a_t h_{t-1} + dt_t x_t B_t^T,   a_t = exp(dt_t A)  (0 at a document's first token)
//   y_t = h_t C_t + D x_t
// x [B, S, nh, P], dt [B, S, nh] fp32 (after softplus and clamp), A [nh] fp32, b/c [B, S, G, N]
// (heads h*G/nh .. share group g), D [nh], segment_ids [B, S] or undefined (packed rows: the
// state restarts at every document). y [B, S, nh, P] fp32. The same function as the chunked form
// (engine/model/core/mamba2.h), computed as a scan: fp32 state, bf16 (or fp16/fp32) inputs.
// CUDA: forward keeps the state every 128 tokens for backward (B * nh * S/128 * P * N fp32);
// backward recomputes the states between them (16 at a time in registers) and runs the adjoint
// scan in reverse.
#pragma once

#include <tuple>

#include <ATen/core/Tensor.h>

#include "kernels/kernels_available.h"

namespace ftd::kernels {

// Differentiable op: the CUDA kernels on CUDA tensors when built with CUDA, else the reference.
// Gradients for x, dt, A, b, c and D.
at::Tensor SsdScan(const at::Tensor& x, const at::Tensor& dt, const at::Tensor& A, const at::Tensor& b,
                   const at::Tensor& c, const at::Tensor& D, const at::Tensor& segment_ids);

// LibTorch reference: the recurrence token by token in fp32 (differentiable through autograd).
at::Tensor SsdScanForwardReference(const at::Tensor& x, const at::Tensor& dt, const at::Tensor& A, const at::Tensor& b,
                                   const at::Tensor& c, const at::Tensor& D, const at::Tensor& segment_ids);
struct SsdScanGrads {
  at::Tensor dx, ddt, dA, db, dc, dD;  // in the inputs' shapes and dtypes
};
// Gradients of sum(y * dy) by autograd through the reference.
SsdScanGrads SsdScanBackwardReference(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& dt,
                                      const at::Tensor& A, const at::Tensor& b, const at::Tensor& c,
                                      const at::Tensor& D, const at::Tensor& segment_ids);

// The raw CUDA launchers (FTD_WITH_CUDA; CPU-only builds define them to throw). N <= 128.
// Forward returns (y, checkpoints); backward takes them.
std::tuple<at::Tensor, at::Tensor> SsdScanForwardCuda(const at::Tensor& x, const at::Tensor& dt, const at::Tensor& A,
                                                      const at::Tensor& b, const at::Tensor& c, const at::Tensor& D,
                                                      const at::Tensor& segment_ids);
SsdScanGrads SsdScanBackwardCuda(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& dt, const at::Tensor& A,
                                 const at::Tensor& b, const at::Tensor& c, const at::Tensor& D,
                                 const at::Tensor& segment_ids, const at::Tensor& checkpoints);
// Whether the CUDA scan takes these shapes (state size N <= 128).
bool SsdScanCudaSupports(const at::Tensor& x, const at::Tensor& b);

}  // namespace ftd::kernels
