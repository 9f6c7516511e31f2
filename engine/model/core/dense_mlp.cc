#include "engine/model/core/dense_mlp.h"

#include <ATen/ATen.h>

namespace ftd::engine {

at::Tensor DenseMlp(const at::Tensor& x, const DenseMlpWeights& w) {
  return at::linear(at::silu(at::linear(x, w.gate_proj)) * at::linear(x, w.up_proj), w.down_proj);
}

}  // namespace ftd::engine
