// SwiGLU with the routing weight folded in, the activation of the MoE expert MLP:
//   out[n, f] = silu(h[n, f]) * h[n, F + f] * w[n]       h [N, 2F] = [gate | up], w [N]
// and, through SwigluOptions, GPT-OSS's clamped variant (HF GptOssExperts, bias already in h):
//   g = min(gate, limit), u = clamp(up, -limit, limit)
//   out[n, f] = g * sigmoid(alpha * g) * (u + up_offset) * w[n]
// The clamps pass the gradient where the input is within the limits, boundary included, and
// zero elsewhere (NaN included), as autograd's clamp does. One kernel serves both: the plain
// options (alpha 1, no clamp, offset 0) compute exactly the plain formula.
// Forward and backward have a CUDA kernel (bf16/fp16/fp32) and a LibTorch reference.
#pragma once

#include <tuple>

#include <ATen/core/Tensor.h>

#include "kernels/kernels_available.h"

namespace ftd::kernels {

struct SwigluOptions {
  double alpha = 1.0;      // gate * sigmoid(alpha * gate)
  double limit = 0.0;      // > 0: gate clamped above at limit, up to [-limit, limit]; 0: no clamp
  double up_offset = 0.0;  // added to the (clamped) up

  // GPT-OSS's experts: (up + 1) * gate * sigmoid(alpha * gate), both clamped (limit 0: unclamped).
  static SwigluOptions GptOss(double limit, double alpha) { return {alpha, limit, 1.0}; }
  bool plain() const { return alpha == 1.0 && limit == 0.0 && up_offset == 0.0; }
  // Throws (naming `op` and the field) unless alpha and up_offset are finite and limit is >= 0.
  void Check(const char* op) const;
};

// Differentiable op: the CUDA kernels on CUDA tensors when built with CUDA (h and w of one
// dtype), else the reference.
at::Tensor WeightedSwiglu(const at::Tensor& h, const at::Tensor& w, const SwigluOptions& opts = {});

// LibTorch references (autograd-free math, fp32 accumulation like the kernels).
at::Tensor WeightedSwigluForwardReference(const at::Tensor& h, const at::Tensor& w, const SwigluOptions& opts = {});
// Returns (dh [N, 2F], dw [N]).
std::tuple<at::Tensor, at::Tensor> WeightedSwigluBackwardReference(const at::Tensor& dout, const at::Tensor& h,
                                                                   const at::Tensor& w, const SwigluOptions& opts = {});

// The raw CUDA launchers (FTD_WITH_CUDA; CPU-only builds define them to throw).
at::Tensor WeightedSwigluForwardCuda(const at::Tensor& h, const at::Tensor& w, const SwigluOptions& opts = {});
std::tuple<at::Tensor, at::Tensor> WeightedSwigluBackwardCuda(const at::Tensor& dout, const at::Tensor& h,
                                                              const at::Tensor& w, const SwigluOptions& opts = {});

// A dense MLP's SwiGLU of its two projections (no routing weight, no clamp):
//   out = silu(gate) * up       gate, up [..., F], one dtype
// Differentiable. On CUDA tensors (built with CUDA) one kernel each way, computing in fp32 and
// rounding once, and autograd keeps gate and up only; elsewhere ATen's at::silu(gate) * up, as
// HF computes it (the CPU parity tests' path).
at::Tensor Swiglu(const at::Tensor& gate, const at::Tensor& up);

// The kernels' math in LibTorch: fp32 (for 16-bit inputs), one rounding to the input dtype.
at::Tensor SwigluForwardReference(const at::Tensor& gate, const at::Tensor& up);
// Returns (dgate, dup).
std::tuple<at::Tensor, at::Tensor> SwigluBackwardReference(const at::Tensor& dout, const at::Tensor& gate,
                                                           const at::Tensor& up);

// The raw CUDA launchers (FTD_WITH_CUDA; CPU-only builds define them to throw).
at::Tensor SwigluForwardCuda(const at::Tensor& gate, const at::Tensor& up);
std::tuple<at::Tensor, at::Tensor> SwigluBackwardCuda(const at::Tensor& dout, const at::Tensor& gate,
                                                      const at::Tensor& up);

}  // namespace ftd::kernels
