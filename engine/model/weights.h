// The parameters of a decoder-only MoE transformer, as plain tensors (TorchTitan style: data,
// not a module tree). Dense weights keep HF's [out, in] layout so loading is a copy; expert
// weights live fused for grouped GEMM: gate_up [E_local, H, 2F], down [E_local, F, H].
#pragma once

#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

namespace ftd::engine {

struct AttentionWeights {
  at::Tensor q_proj, k_proj, v_proj, o_proj;  // [q_dim, H], [kv_dim, H], [kv_dim, H], [H, q_dim]
  at::Tensor q_bias, k_bias, v_bias, o_bias;  // defined only with attention_bias
  at::Tensor q_norm, k_norm;                  // [head_dim], defined with qk_norm
};

struct MoeWeights {
  at::Tensor router;   // [E, H] (all experts: every rank routes every token)
  at::Tensor gate_up;  // [E_local, H, 2F]: [..., :F] gate, [..., F:] up
  at::Tensor down;     // [E_local, F, H]
};

struct DenseMlpWeights {
  at::Tensor gate_proj, up_proj, down_proj;  // [F, H], [F, H], [H, F]
};

struct LayerWeights {
  at::Tensor input_norm;      // [H]
  at::Tensor post_attn_norm;  // [H]
  AttentionWeights attn;
  bool is_moe = false;
  MoeWeights moe;
  DenseMlpWeights mlp;
};

struct ModelWeights {
  at::Tensor embed;    // [V, H]
  std::vector<LayerWeights> layers;
  at::Tensor norm;     // [H]
  at::Tensor lm_head;  // [V, H]; the same tensor as embed when tied
  bool tied = false;
};

// A parameter with its engine name; `expert` marks expert-sharded tensors (reduced only across
// the ranks that own the same experts).
struct NamedParam {
  std::string name;
  at::Tensor* tensor;
  bool expert = false;
};

// Every trainable tensor once (a tied lm_head is listed once, as the embedding).
std::vector<NamedParam> ListParameters(ModelWeights& w);

}  // namespace ftd::engine
