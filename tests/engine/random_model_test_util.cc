#include "tests/engine/random_model_test_util.h"

#include <stdexcept>
#include <string>
#include <utility>

#include "engine/model/hf_checkpoint.h"

namespace ftd::engine::testing {

std::unique_ptr<MoeTransformer> TrainableRandomModel(const ModelConfig& config, const ModelOptions& options,
                                                     uint64_t seed) {
  ModelWeights w = InitRandomWeights(config, options, seed);
  EnableGradients(w);
  auto model = MoeTransformer::Create(config, options, std::move(w));
  if (!model.ok()) throw std::runtime_error(std::string(model.status().message()));
  return std::move(*model);
}

std::unique_ptr<MoeTransformer> TrainableRandomCudaModel(const ModelConfig& config, uint64_t seed) {
  ModelOptions mo;
  mo.device = at::Device(at::kCUDA, 0);
  mo.dtype = at::kBFloat16;
  return TrainableRandomModel(config, mo, seed);
}

}  // namespace ftd::engine::testing
