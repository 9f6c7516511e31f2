// MXFP4 (OCP microscaling FP4) expert weights as the GPT-OSS hub checkpoints store them:
// <name>_blocks [E, N, G, 16] uint8 (two E2M1 values a byte, the low nibble first) and
// <name>_scales [E, N, G] uint8 (a power-of-two exponent per 32 values, biased by 127), for
// the x @ W tensor <name> [E, K = G * 32, N]. Dequantised at load, as transformers'
// integrations/mxfp4.py convert_moe_packed_tensors does.
#pragma once

#include <ATen/core/Tensor.h>

namespace ftd::engine {

// blocks [E, N, G, 16] uint8, scales [E, N, G] uint8 -> [E, G * 32, N] float32 (exact: every
// value is an E2M1 value times a power of two).
at::Tensor DequantizeMxfp4(const at::Tensor& blocks, const at::Tensor& scales);

}  // namespace ftd::engine
