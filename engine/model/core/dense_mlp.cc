#include "engine/model/core/dense_mlp.h"

#include <ATen/ATen.h>

#include "engine/model/lora.h"
#include "kernels/swiglu.h"

namespace ftd::engine {

at::Tensor DenseMlp(const at::Tensor& x, const DenseMlpWeights& w) {
  if (!w.gate_proj.defined()) {  // relu^2 (Nemotron-H): down(relu(up(x))^2)
    return LinearWithLora(at::relu(LinearWithLora(x, w.up_proj, {}, w.up_lora)).square(), w.down_proj, {}, w.down_lora);
  }
  if (w.gate_lora.defined() || w.up_lora.defined() || w.down_lora.defined()) {
    return LinearWithLora(kernels::Swiglu(LinearWithLora(x, w.gate_proj, {}, w.gate_lora),
                                          LinearWithLora(x, w.up_proj, {}, w.up_lora)),
                          w.down_proj, {}, w.down_lora);
  }
  // silu(gate) * up: one kernel each way on CUDA (kernels/swiglu.h), ATen's ops on CPU.
  return at::linear(kernels::Swiglu(at::linear(x, w.gate_proj), at::linear(x, w.up_proj)), w.down_proj);
}

}  // namespace ftd::engine
