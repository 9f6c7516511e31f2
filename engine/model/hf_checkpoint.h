// HF checkpoint <-> engine weights, for every family through its tensor layout
// (engine/model/tensor_layout.h). HF stores experts per expert
// (model.layers.N.mlp.experts.E.{gate,up,down}_proj.weight, [out, in]); the engine keeps them
// fused, gate_up [E, H, 2F] = [gate^T | up^T] and down [E, F, H] = down_proj^T. The
// conversion is exact (transposes and concatenations only) in both directions. Buffers (the
// router's selection bias) are held in fp32 and saved in the checkpoint dtype. MTP layers
// (layers num_hidden_layers .. + num_nextn_predict_layers) are carried: a save copies them from
// the loaded checkpoint byte for byte.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"
#include "engine/model/config.h"
#include "engine/model/transformer.h"
#include "engine/model/weights.h"

namespace ftd::engine {

// The dtype named by config.json's dtype field.
at::ScalarType DtypeFromName(const std::string& name);
std::string DtypeName(at::ScalarType dtype);

// Reads the weights of `config`'s model from an HF directory (safetensors, single or sharded),
// in options.dtype on options.device, only this rank's experts. Missing or misshaped tensors
// are errors naming the tensor and the file.
absl::StatusOr<ModelWeights> LoadHfWeights(const std::string& model_dir, const ModelConfig& config,
                                           const ModelOptions& options);

// Random initialisation as HF's _init_weights: normal(0, initializer_range) for linear,
// embedding, router and expert weights, ones for norms, zeros for biases and buffers. Deterministic in
// `seed`, and identical for every expert sharding (expert e's values do not depend on the rank).
ModelWeights InitRandomWeights(const ModelConfig& config, const ModelOptions& options, uint64_t seed);

// Marks every parameter as requiring gradients (leaf tensors).
void EnableGradients(ModelWeights& weights);

// Which tensors ToHfTensors returns: all, the routed experts' (sharded over ep) or the rest.
enum class TensorSelection { kAll, kExperts, kDense };

// HF-named tensors (per-expert keys) on CPU in `dtype`, this rank's experts only
// (expert indices offset by options.expert_begin); carried tensors not included.
std::vector<std::pair<std::string, at::Tensor>> ToHfTensors(ModelWeights& weights, const ModelConfig& config,
                                                            const ModelOptions& options, at::ScalarType dtype,
                                                            TensorSelection which = TensorSelection::kAll);
// The carried tensors (weights.carried), read from their source checkpoint as stored.
absl::StatusOr<std::vector<std::pair<std::string, at::Tensor>>> CarriedHfTensors(const ModelWeights& weights);

// Writes config.json + safetensors (sharded past max_shard_bytes) into `dir` atomically: a
// temporary sibling directory, fsync, rename over any previous `dir`.
absl::Status SaveHfCheckpoint(const std::string& dir, const ModelConfig& config, ModelWeights& weights,
                              const ModelOptions& options, at::ScalarType dtype,
                              uint64_t max_shard_bytes = 5ull << 30);

}  // namespace ftd::engine
