// A trainable model with random weights, as the engine tests build one on any device and dtype.
#pragma once

#include <cstdint>
#include <memory>

#include "engine/model/config.h"
#include "engine/model/transformer.h"

namespace ftd::engine::testing {

// `config` with InitRandomWeights(seed) on options' device and dtype, every parameter trainable.
std::unique_ptr<MoeTransformer> TrainableRandomModel(const ModelConfig& config, const ModelOptions& options,
                                                     uint64_t seed);

// The same in bf16 on the first CUDA device (the GPU tests' setting).
std::unique_ptr<MoeTransformer> TrainableRandomCudaModel(const ModelConfig& config, uint64_t seed);

}  // namespace ftd::engine::testing
