// Rotary position embedding (rotate-half, as HF's apply_rotary_pos_emb), optionally fused with
// the per-head q/k RMSNorm that Qwen3 applies just before it:
//   Rope(x, cos, sin)              = x * cos + rotate_half(x) * sin
//   RmsNormRope(x, w, eps, cos, sin) = Rope(RmsNorm(x, w, eps), cos, sin)   (one read, one write)
// x [B, S, H, D] contiguous (heads not yet transposed), cos/sin [B or 1, S, D], w [D].
// CUDA: one block per token; cos/sin (and w) are loaded once and reused across the heads; a
// head's row is owned by a lane group with 16-byte accesses. The fused backward recomputes the
// normalised row and reduces dw as per-block partials.
#pragma once

#include <tuple>

#include <ATen/core/Tensor.h>

#include "kernels/kernels_available.h"

namespace ftd::kernels {

// Differentiable in x (and w). The kernels run for CUDA tensors of one floating dtype with D
// even and D <= 256; otherwise the references do.
at::Tensor Rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);
at::Tensor RmsNormRope(const at::Tensor& x, const at::Tensor& w, double eps, const at::Tensor& cos,
                       const at::Tensor& sin);

bool RopeCudaSupports(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, const at::Tensor& w);

// References: forward and the gradient of x for given dy.
at::Tensor RopeReference(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);
at::Tensor RopeBackwardReference(const at::Tensor& dy, const at::Tensor& cos, const at::Tensor& sin);

// Raw CUDA launchers (FTD_WITH_CUDA; CPU-only builds define them to throw). `w` undefined: plain RoPE (rstd undefined).
// Returns (y, rstd [B*S*H] fp32).
std::tuple<at::Tensor, at::Tensor> RopeForwardCuda(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin,
                                                   const at::Tensor& w, double eps);
// Returns (dx, dw); dw undefined without w.
std::tuple<at::Tensor, at::Tensor> RopeBackwardCuda(const at::Tensor& dy, const at::Tensor& cos, const at::Tensor& sin,
                                                    const at::Tensor& x, const at::Tensor& w, const at::Tensor& rstd);

}  // namespace ftd::kernels
