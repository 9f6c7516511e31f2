// The parameters of a decoder-only transformer, as plain tensors (TorchTitan style: data, not a
// module tree). Dense weights keep HF's [out, in] layout so loading is a copy; expert weights
// live fused for grouped GEMM: gate_up [E_local, H, 2F], down [E_local, F, H]. Which tensors a
// model has, and their names, come from its family's layout (engine/model/tensor_layout.h);
// SlotTensor binds a layout entry to its field here. Fields a family does not use stay undefined.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

#include "engine/model/config.h"
#include "engine/model/tensor_layout.h"

namespace ftd::engine {

// A LoRA adapter on one linear y = x W^T (+ b): y += scale * (x A^T) B^T, with A [r, in] and
// B [out, r] as PEFT's lora_A / lora_B weights (engine/model/lora.h). Undefined: no adapter.
struct LoraLinear {
  at::Tensor a, b;
  double scale = 0;
  bool defined() const { return a.defined(); }
};

// LoRA on fused routed experts, in the experts' x @ W layout so the grouped GEMMs need no
// transpose: a [E_local, in, r], b [E_local, r, out]; rows of expert e get
// scale * (x a[e]) b[e] added to x W[e].
struct LoraExperts {
  at::Tensor a, b;
  double scale = 0;
  bool defined() const { return a.defined(); }
};

struct AttentionWeights {
  // GQA: q_proj [q_dim, H] (MLA without q_lora_rank: [Hq * d_qk, H]), k/v [kv_dim, H], o [H, q_dim]
  // (MLA: [H, Hq * d_v]); biases only with attention_bias; q/k norms [head_dim] with qk_norm.
  at::Tensor q_proj, k_proj, v_proj, o_proj;
  at::Tensor q_bias, k_bias, v_bias, o_bias;
  at::Tensor q_norm, k_norm;
  at::Tensor sinks;  // [Hq] attention sink logits (GPT-OSS), or undefined
  // MLA: q_a [q_lora, H] + q_a_norm [q_lora] + q_b [Hq * d_qk, q_lora] (with q_lora_rank),
  // kv_a [kv_lora + d_rope, H] + kv_a_norm [kv_lora], kv_b [Hq * (d_nope + d_v), kv_lora].
  at::Tensor q_a_proj, q_a_bias, q_a_norm, q_b_proj;
  at::Tensor kv_a_proj, kv_a_bias, kv_a_norm, kv_b_proj;
  // LoRA adapters (method lora), one per projection; undefined where not targeted.
  LoraLinear q_lora, k_lora, v_lora, o_lora, q_a_lora, q_b_lora, kv_a_lora, kv_b_lora;
};

struct DenseMlpWeights {
  at::Tensor gate_proj, up_proj, down_proj;  // [F, H], [F, H], [H, F]
  LoraLinear gate_lora, up_lora, down_lora;   // method lora, or undefined
};

struct MoeWeights {
  at::Tensor router;       // [E, H] (all experts: every rank routes every token)
  at::Tensor router_bias;  // [E] fp32 selection bias (DeepSeek-V3), not trained by gradient; or undefined
  at::Tensor gate_up;      // [E_local, H, 2F]: [..., :F] gate, [..., F:] up; relu^2 experts: up [E_local, H, F]
  at::Tensor down;         // [E_local, F, H]
  DenseMlpWeights shared;  // shared experts [Fs, H] ... (DeepSeek-V3, Qwen2-MoE), undefined without
  at::Tensor shared_expert_gate;  // [1, H]: shared output times sigmoid(gate · x) (Qwen2-MoE), or undefined
  LoraExperts gate_up_lora, down_lora;  // method lora: this rank's experts' adapters, or undefined
  // GPT-OSS: router_logit_bias [E] on the router logits (trained); gate_up_bias [E_local, 2F],
  // down_bias [E_local, H]; undefined elsewhere.
  at::Tensor router_logit_bias, gate_up_bias, down_bias;
  // The experts' activation constants (the config's swiglu_limit/alpha; limit 0: plain SwiGLU),
  // set by EmptyWeights so that every dispatcher's expert compute sees them.
  double swiglu_limit = 0.0;
  double swiglu_alpha = 1.702;
  MlpActivation activation = MlpActivation::kSwiglu;  // the config's mlp_activation, set by EmptyWeights
  // Nemotron-H LatentMoE: latent_down [L, H] (fc1_latent_proj) before the routed experts,
  // latent_up [H, L] (fc2_latent_proj) after them; undefined without moe_latent_size. The
  // experts (and the dispatcher's tokens) are then L wide.
  at::Tensor latent_down, latent_up;
  LoraLinear latent_down_lora, latent_up_lora;  // method lora (target experts), or undefined
};

// Nemotron-H's Mamba2 mixer (engine/model/core/mamba2.h).
struct MambaWeights {
  at::Tensor in_proj;      // [I + conv_dim + nh, H]: z | x B C | dt
  at::Tensor conv_weight;  // [conv_dim, 1, K] depthwise causal convolution
  at::Tensor conv_bias;    // [conv_dim] or undefined
  at::Tensor a_log;        // [nh]: A = -exp(A_log)
  at::Tensor d;            // [nh] skip
  at::Tensor dt_bias;      // [nh]
  at::Tensor norm;         // [I] gated RMSNorm weight
  at::Tensor out_proj;     // [H, I]
};

struct LayerWeights {
  at::Tensor input_norm;      // [H] (hybrid stacks: the block's only norm)
  at::Tensor post_attn_norm;  // [H]
  AttentionWeights attn;
  MambaWeights mamba;         // hybrid stacks' Mamba2 layers
  bool is_moe = false;
  MoeWeights moe;
  DenseMlpWeights mlp;
};

// Checkpoint tensors the model does not use but a save must write back unchanged (DeepSeek-V3's
// MTP layers): read from `source_dir` when saved, never held in memory.
struct CarriedTensors {
  std::string source_dir;
  std::vector<std::string> names;
};

struct ModelWeights {
  at::Tensor embed;    // [V, H]
  std::vector<LayerWeights> layers;
  at::Tensor norm;     // [H]
  at::Tensor lm_head;  // [V, H]; the same tensor as embed when tied
  bool tied = false;
  CarriedTensors carried;
  // The family's layout of these weights (all experts' shapes; this rank may hold fewer).
  std::vector<TensorSpec> layout;
  // Method lora: the base is frozen and the parameters are the LoRA adapters (engine/model/lora.h).
  bool lora = false;
};

// Weights with the layers and layout of `config`, every tensor undefined.
ModelWeights EmptyWeights(const ModelConfig& config);

// The field of `w` that layout entry `spec` binds.
at::Tensor& SlotTensor(ModelWeights& w, const TensorSpec& spec);

// A parameter with its engine name; `expert` marks expert-sharded tensors (reduced only across
// the ranks that own the same experts); `layer` is its decoder layer (-1: embedding, final norm,
// head).
struct NamedParam {
  std::string name;
  at::Tensor* tensor;
  bool expert = false;
  int64_t layer = -1;
};

// Every trainable tensor once, in layout order (a tied lm_head is listed once, as the
// embedding; buffers such as the router's selection bias are not parameters). With LoRA
// (w.lora) the adapters' A and B, and nothing of the frozen base.
std::vector<NamedParam> ListParameters(ModelWeights& w);
// The tensors of decoder layer `layer` that are trained (for activation checkpointing).
std::vector<at::Tensor> LayerParameters(ModelWeights& w, int64_t layer);

}  // namespace ftd::engine
