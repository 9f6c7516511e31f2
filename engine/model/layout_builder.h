// Builds a family's tensor layout (engine/model/tensor_layout.h) in checkpoint order: the pieces
// every decoder family names alike (embedding, per-layer norms, SwiGLU MLPs, fused routed experts,
// final norm and head), so that a family's Layout() spells out only what is its own.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/model/config.h"
#include "engine/model/tensor_layout.h"

namespace ftd::engine {

class LayoutBuilder {
 public:
  explicit LayoutBuilder(const ModelConfig& c) : c_(c) {}

  // One tensor; returns it so that a caller can set the rarer fields (expert_names).
  TensorSpec& Add(std::string name, Slot slot, int64_t layer, std::vector<int64_t> shape,
                  TensorRole role = TensorRole::kWeight, bool matmul = false, bool expert = false) {
    out_.push_back({std::move(name), slot, layer, std::move(shape), role, expert, matmul});
    return out_.back();
  }
  // A GEMM weight every token passes through (counted in FLOPs).
  TensorSpec& Matmul(std::string name, Slot slot, int64_t layer, std::vector<int64_t> shape) {
    return Add(std::move(name), slot, layer, std::move(shape), TensorRole::kWeight, /*matmul=*/true);
  }
  TensorSpec& Norm(std::string name, Slot slot, int64_t layer, int64_t size) {
    return Add(std::move(name), slot, layer, {size}, TensorRole::kNorm);
  }

  // "model.layers.<layer>."
  static std::string LayerPrefix(int64_t layer) { return absl::StrCat("model.layers.", layer, "."); }

  // model.embed_tokens.weight [V, H]
  void Embedding() { Add("model.embed_tokens.weight", Slot::kEmbed, -1, {c_.vocab_size, c_.hidden_size}); }

  // model.layers.<layer>.input_layernorm.weight, .post_attention_layernorm.weight [H]
  void LayerNorms(int64_t layer) {
    const std::string p = LayerPrefix(layer);
    Norm(p + "input_layernorm.weight", Slot::kInputNorm, layer, c_.hidden_size);
    Norm(p + "post_attention_layernorm.weight", Slot::kPostAttnNorm, layer, c_.hidden_size);
  }

  // model.layers.<layer>.self_attn.{q,k,v,o}_proj.weight ([q_dim, H], [kv_dim, H] twice,
  // [H, q_dim]); q/k/v biases with attention_bias or qkv_bias, the o bias with attention_bias.
  void GqaProjections(int64_t layer) {
    const std::string p = LayerPrefix(layer) + "self_attn.";
    const int64_t H = c_.hidden_size;
    Matmul(p + "q_proj.weight", Slot::kQProj, layer, {c_.q_dim(), H});
    Matmul(p + "k_proj.weight", Slot::kKProj, layer, {c_.kv_dim(), H});
    Matmul(p + "v_proj.weight", Slot::kVProj, layer, {c_.kv_dim(), H});
    Matmul(p + "o_proj.weight", Slot::kOProj, layer, {H, c_.q_dim()});
    if (c_.attention_bias || c_.qkv_bias) {
      Add(p + "q_proj.bias", Slot::kQBias, layer, {c_.q_dim()}, TensorRole::kBias);
      Add(p + "k_proj.bias", Slot::kKBias, layer, {c_.kv_dim()}, TensorRole::kBias);
      Add(p + "v_proj.bias", Slot::kVBias, layer, {c_.kv_dim()}, TensorRole::kBias);
    }
    if (c_.attention_bias) Add(p + "o_proj.bias", Slot::kOBias, layer, {H}, TensorRole::kBias);
  }

  // <prefix>gate_proj.weight, up_proj.weight [F, H] and down_proj.weight [H, F]: a layer's dense
  // MLP (kMlp* slots) or an MoE block's shared experts (kShared* slots).
  void SwigluMlp(const std::string& prefix, int64_t layer, int64_t F, bool shared_experts) {
    const int64_t H = c_.hidden_size;
    Matmul(prefix + "gate_proj.weight", shared_experts ? Slot::kSharedGate : Slot::kMlpGate, layer, {F, H});
    Matmul(prefix + "up_proj.weight", shared_experts ? Slot::kSharedUp : Slot::kMlpUp, layer, {F, H});
    Matmul(prefix + "down_proj.weight", shared_experts ? Slot::kSharedDown : Slot::kMlpDown, layer, {H, F});
  }

  // The routed experts, fused: <prefix>gate_up [E, H, 2F] and <prefix>down [E, F, H], sharded
  // over ep; `names` says how the checkpoint keys each expert.
  void RoutedExperts(const std::string& prefix, int64_t layer, ExpertNames names) {
    const int64_t E = c_.num_experts, F = c_.moe_intermediate_size, H = c_.hidden_size;
    Add(prefix + "gate_up", Slot::kExpertsGateUp, layer, {E, H, 2 * F}, TensorRole::kWeight, true, true)
        .expert_names = names;
    Add(prefix + "down", Slot::kExpertsDown, layer, {E, F, H}, TensorRole::kWeight, true, true).expert_names = names;
  }

  // model.norm.weight [H], then lm_head.weight [V, H] unless tied to the embedding.
  void FinalNormAndHead() {
    Norm("model.norm.weight", Slot::kFinalNorm, -1, c_.hidden_size);
    if (!c_.tie_word_embeddings) Add("lm_head.weight", Slot::kLmHead, -1, {c_.vocab_size, c_.hidden_size});
  }

  std::vector<TensorSpec> Take() && { return std::move(out_); }

 private:
  const ModelConfig& c_;
  std::vector<TensorSpec> out_;
};

}  // namespace ftd::engine
