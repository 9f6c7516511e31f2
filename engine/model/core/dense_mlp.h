// The dense SwiGLU MLP: dense layers, and DeepSeek-V3's shared experts.
#pragma once

#include <ATen/core/Tensor.h>

#include "engine/model/weights.h"

namespace ftd::engine {

// x [..., H] -> [..., H]: down(silu(gate(x)) * up(x)).
at::Tensor DenseMlp(const at::Tensor& x, const DenseMlpWeights& w);

}  // namespace ftd::engine
