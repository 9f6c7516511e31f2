// The column order of a fused expert gate_up tensor: GPT-OSS's checkpoint (and transformers'
// GptOssExperts, and PEFT's lora_B on it) interleave gate and up in the last dim (gate at even,
// up at odd columns); the engine keeps [gate | up]. Both directions are pure permutations
// (exact), shared by the weight loader/saver and the LoRA adapters' import/export so that the
// base weights and their adapters' B always agree.
#pragma once

#include <ATen/core/Tensor.h>

#include "engine/model/tensor_layout.h"

namespace ftd::engine {

// Whether `spec`'s last dim is stored interleaved in HF (GPT-OSS's gate_up and gate_up_bias).
bool HasInterleavedGateUp(const TensorSpec& spec);

// [..., 2F] (g0 u0 g1 u1 ...) -> [..., 2F] (g | u).
at::Tensor DeinterleaveGateUp(const at::Tensor& t);
// [..., 2F] (g | u) -> [..., 2F] (g0 u0 g1 u1 ...).
at::Tensor InterleaveGateUp(const at::Tensor& t);

}  // namespace ftd::engine
