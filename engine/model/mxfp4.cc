#include "engine/model/mxfp4.h"

#include <ATen/ATen.h>

namespace ftd::engine {

at::Tensor DequantizeMxfp4(const at::Tensor& blocks, const at::Tensor& scales) {
  TORCH_CHECK(blocks.dim() == 4 && blocks.size(3) == 16 && blocks.scalar_type() == at::kByte,
              "MXFP4 blocks must be uint8 [E, N, G, 16], got ", blocks.sizes());
  TORCH_CHECK(scales.scalar_type() == at::kByte && scales.sizes() == blocks.sizes().slice(0, 3),
              "MXFP4 scales must be uint8 [E, N, G] matching the blocks, got ", scales.sizes());
  // The E2M1 code points (sign bit 3), as transformers' FP4_VALUES.
  static const float kFp4[16] = {+0.0f, +0.5f, +1.0f, +1.5f, +2.0f, +3.0f, +4.0f, +6.0f,
                                 -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};
  const at::Tensor lut = at::tensor(at::ArrayRef<float>(kFp4, 16)).to(blocks.device());
  const int64_t E = blocks.size(0), N = blocks.size(1), G = blocks.size(2);
  at::Tensor codes = blocks.to(at::kInt);
  at::Tensor lo = lut.index_select(0, codes.bitwise_and(0x0F).reshape({-1})).view({E, N, G, 16});
  at::Tensor hi = lut.index_select(0, codes.bitwise_right_shift(4).reshape({-1})).view({E, N, G, 16});
  at::Tensor values = at::stack({lo, hi}, -1).view({E, N, G, 32});  // low nibble at even positions
  at::Tensor exponent = scales.to(at::kInt).sub(127).unsqueeze(-1);   // [E, N, G, 1]
  at::Tensor w = at::ldexp(values, exponent).view({E, N, G * 32});    // [E, N, K]
  return w.transpose(1, 2).contiguous();                               // [E, K, N]
}

}  // namespace ftd::engine
