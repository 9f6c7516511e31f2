// Model configuration parsed from a Hugging Face config.json, for every supported family
// (engine/model/registry.h). LibTorch-free: the coordinator's plan and `ftctl model inspect`
// use this and the counting below, as the engine does.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace ftd::engine {

enum class RouterScoring { kSoftmax, kSigmoid };
enum class AttentionKind {
  kGqa,  // q/k/v/o projections, grouped K/V heads, optional per-head q/k RMSNorm (Qwen3)
  kMla,  // multi-head latent attention (DeepSeek-V2/V3): low-rank q and kv, decoupled rope dims
};

// Nemotron-H's hybrid stack: each layer is one norm and one mixer of these kinds (HF's
// layers_block_type: linear_attention = Mamba2, full_attention, mlp, moe), added to the residual.
enum class LayerBlock : uint8_t { kMamba, kAttention, kMlp, kMoe };

// The dense MLPs' and experts' activation: SwiGLU (gate, up, down) or relu^2 (up, down;
// Nemotron-H's mlp_hidden_act "relu2").
enum class MlpActivation : uint8_t { kSwiglu, kRelu2 };

// The Mamba2 mixer (Nemotron-H, HF's NemotronHMamba2Mixer).
struct MambaConfig {
  int64_t num_heads = 0;   // mamba_num_heads
  int64_t head_dim = 0;    // mamba_head_dim
  int64_t state_size = 0;  // ssm_state_size (N)
  int64_t n_groups = 1;    // B/C groups (heads per group share B and C)
  int64_t conv_kernel = 4;
  int64_t chunk_size = 128;
  bool conv_bias = true;
  // dt = clamp(softplus(dt + dt_bias), time_step_limit)
  double time_step_min_limit = 0.0;
  double time_step_max_limit = 0.0;  // 0: +infinity (HF's default (0, inf))
  // Initialisation of dt_bias (HF: dt = exp(U(log min, log max)) clamped below by floor).
  double time_step_min = 0.001, time_step_max = 0.1, time_step_floor = 1e-4;
  int64_t intermediate() const { return num_heads * head_dim; }                   // I
  int64_t conv_dim() const { return intermediate() + 2 * n_groups * state_size; }  // I + 2GN
  int64_t in_proj_size() const { return intermediate() + conv_dim() + num_heads;  }  // z | xBC | dt
};

struct RopeConfig {
  std::string type = "default";  // default | linear | llama3 | yarn
  double theta = 10000.0;
  double factor = 1.0;
  // llama3 / yarn parameters.
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 0;
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  double attention_factor = 0.0;  // yarn: 0 means derived from factor (and mscale, mscale_all_dim)
  double mscale = 0.0;            // yarn (DeepSeek): 0 = absent
  double mscale_all_dim = 0.0;    // yarn (DeepSeek): also scales the softmax (mscale^2); 0 = absent
  bool truncate = true;           // yarn: floor/ceil the correction range
  bool interleave = false;        // DeepSeek-V3 rope_interleave: rotary pairs are (x0, x1), (x2, x3), ...
};

// Multi-head latent attention (AttentionKind::kMla).
struct MlaConfig {
  int64_t q_lora_rank = 0;  // 0: q is one projection (q_proj), as Moonlight
  int64_t kv_lora_rank = 0;
  int64_t qk_nope_head_dim = 0;
  int64_t qk_rope_head_dim = 0;
  int64_t v_head_dim = 0;
  int64_t qk_head_dim() const { return qk_nope_head_dim + qk_rope_head_dim; }
};

struct ModelConfig {
  std::string model_type;     // e.g. "qwen3_moe", "deepseek_v3"
  std::string architecture;   // e.g. "Qwen3MoeForCausalLM"
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;      // dense MLP layers
  int64_t moe_intermediate_size = 0;  // per expert
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;
  int64_t head_dim = 0;  // GQA: q/k/v head size; MLA: HF writes qk_rope_head_dim here
  int64_t max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  RopeConfig rope;
  AttentionKind attention = AttentionKind::kGqa;
  MlaConfig mla;
  bool attention_bias = false;
  bool qk_norm = true;  // GQA (Qwen3): RMSNorm over head_dim on q and k
  // GQA (OLMoE): RMSNorm over the whole q projection [q_dim] and k projection [kv_dim], not per head.
  bool qk_norm_full = false;
  bool qkv_bias = false;  // GQA (Qwen2-MoE): q/k/v projections biased, o_proj not
  // Sliding-window attention (Mixtral, Qwen2-MoE): in the layers whose layer_types entry is
  // "sliding_attention", a query attends to itself and the sliding_window - 1 keys before it.
  // 0: full attention everywhere (layer_types then empty or all "full_attention").
  int64_t sliding_window = 0;
  std::vector<std::string> layer_types;  // HF v5's per-layer attention kinds, num_hidden_layers long
  // Nemotron-H: one block per layer (norm -> mixer -> + residual); empty for the attention+MLP
  // decoder layer of every other family.
  std::vector<LayerBlock> layer_blocks;
  MambaConfig mamba;
  bool rope_enabled = true;  // Nemotron-H's attention has no position embedding
  MlpActivation mlp_activation = MlpActivation::kSwiglu;
  // Nemotron-H LatentMoE: routed experts work in this width between fc1_latent_proj [L, H] and
  // fc2_latent_proj [H, L]; 0: hidden_size (no projections).
  int64_t moe_latent_size = 0;
  // GPT-OSS: a learned logit per query head (self_attn.sinks [Hq]) joins every softmax
  // denominator as one more key that carries no value.
  bool attention_sinks = false;
  double clip_qkv = 0.0;  // GQA (OLMoE): q, k, v clamped to [-clip_qkv, clip_qkv] after the norm; 0: none
  std::string hidden_act = "silu";
  bool tie_word_embeddings = false;
  double initializer_range = 0.02;
  // MoE.
  int64_t num_experts = 0;
  int64_t num_experts_per_tok = 0;
  bool norm_topk_prob = false;
  RouterScoring router_scoring = RouterScoring::kSoftmax;
  // DeepSeek-V3: a per-expert bias added to the scores for selection only (not to the weights),
  // HF's mlp.gate.e_score_correction_bias; a buffer, not trained by gradient.
  bool router_correction_bias = false;
  int64_t n_group = 1;        // experts split into n_group groups; the top topk_group groups
  int64_t topk_group = 1;     // (by their two best scores) are the only candidates
  double routed_scaling_factor = 1.0;  // routed output weights are multiplied by it
  int64_t n_shared_experts = 0;        // shared SwiGLU expert of n_shared × moe_intermediate_size
  // Qwen2-MoE: one shared expert of this width (instead of n_shared × moe_intermediate_size),
  // its output scaled by sigmoid(shared_expert_gate · x) when shared_expert_gate.
  int64_t shared_expert_intermediate_size = 0;
  bool shared_expert_gate = false;
  int64_t decoder_sparse_step = 1;     // Qwen3-MoE: layer l is sparse when (l + 1) % step == 0
  std::vector<int64_t> mlp_only_layers;
  // GPT-OSS: a trained bias on the router logits (mlp.router.bias [E]); the routing weights are
  // the softmax over the selected top-k logits (= softmax, top-k, renormalised).
  bool router_logit_bias = false;
  // GPT-OSS experts: biases on gate_up [E, 2F] and down [E, H], and the clamped SwiGLU
  // (gate <= limit, |up| <= limit, out = (up + 1) * gate * sigmoid(alpha * gate)). 0: plain SwiGLU.
  bool expert_bias = false;
  double swiglu_limit = 0.0;
  double swiglu_alpha = 1.702;
  int64_t first_k_dense_replace = 0;   // DeepSeek-V3: layers [0, k) are dense
  int64_t num_nextn_predict_layers = 0;  // MTP layers in the checkpoint (carried, not trained)
  // Nemotron-H: the MTP layers' block kinds (config mtp_layers_block_type), written back unchanged.
  std::vector<std::string> mtp_layer_blocks;
  double router_aux_loss_coef = 0.0;
  bool output_router_logits = false;
  std::string dtype = "float32";  // the checkpoint's dtype (config "dtype"/"torch_dtype")
  // The source config.json's fields that the family does not model (topk_method, auto_map,
  // transformers_version, ...), as a JSON object's text ("" for presets): a saved config.json
  // carries them unchanged, so that what transformers, vLLM and SGLang read from a fine-tuned
  // checkpoint is what they read from its base (vLLM's DeepSeek-V3 needs topk_method, say).
  std::string carried_fields_json;
  // Token ids, kept so that a saved config.json carries them unchanged (-1: null).
  int64_t bos_token_id = -1;
  int64_t eos_token_id = -1;
  int64_t pad_token_id = -1;

  // Whether layer `layer` has a sparse MoE block (else a dense MLP), as HF decides it.
  bool IsMoeLayer(int64_t layer) const;
  bool IsSlidingLayer(int64_t layer) const;
  bool IsHybrid() const { return !layer_blocks.empty(); }
  // Hybrid stacks: the block of `layer`.
  LayerBlock BlockOf(int64_t layer) const { return layer_blocks.at(static_cast<size_t>(layer)); }
  // Layers with attention (every layer outside hybrid stacks) and with a Mamba2 mixer.
  int64_t NumAttentionLayers() const;
  int64_t NumMambaLayers() const;
  // The routed experts' input width: moe_latent_size, else hidden_size.
  int64_t expert_width() const { return moe_latent_size > 0 ? moe_latent_size : hidden_size; }
  int64_t NumMoeLayers() const;
  // Attention shapes: per-head q/k width, v width and the rotary width.
  int64_t qk_head_dim() const { return attention == AttentionKind::kMla ? mla.qk_head_dim() : head_dim; }
  int64_t v_head_dim() const { return attention == AttentionKind::kMla ? mla.v_head_dim : head_dim; }
  int64_t rope_dim() const { return attention == AttentionKind::kMla ? mla.qk_rope_head_dim : head_dim; }
  int64_t q_dim() const { return num_attention_heads * qk_head_dim(); }
  int64_t kv_dim() const { return num_key_value_heads * head_dim; }  // GQA
  int64_t shared_intermediate_size() const {
    return shared_expert_intermediate_size > 0 ? shared_expert_intermediate_size
                                               : n_shared_experts * moe_intermediate_size;
  }
  // The softmax scale of attention: 1/sqrt(qk_head_dim), times mscale(factor, mscale_all_dim)^2
  // for MLA with YaRN (HF's yarn_apply_mscale).
  double AttentionScale() const;

  // Parameter counts (from the family's tensor layout, engine/model/tensor_layout.h): all
  // trained parameters, and those active for one token (top-k of the routed experts).
  int64_t TotalParameters() const;
  int64_t ActiveParameters() const;
  // Dense-equivalent training FLOPs per token at sequence length `seq` (DESIGN.md formula).
  double TrainingFlopsPerToken(int64_t seq) const;
};

// Parses config.json text through the family of its model_type. Unknown model types and
// missing or ill-typed fields are INVALID_ARGUMENT errors naming the field and `source`.
absl::StatusOr<ModelConfig> ParseModelConfig(const std::string& json_text,
                                             const std::string& source = "config.json");
// Reads DIR/config.json.
absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& model_dir);
// config.json text in HF's v5 format for the config's family, loadable by transformers, with the
// source's carried fields (ModelConfig::carried_fields_json) beside the family's own.
std::string ModelConfigToJson(const ModelConfig& config);

// Named shapes for init-model and the benchmark (every family's presets): "tiny",
// "qwen3-30b-a3b", "tiny-deepseek-v3", "moonlight-16b-a3b", "deepseek-v3".
absl::StatusOr<ModelConfig> PresetConfig(const std::string& name);
std::vector<std::string> PresetNames();
// `config` with `layers` decoder layers; per-layer settings (layer_types, layer_blocks) keep their pattern
// (truncated, or repeated with the period of the preset's pattern).
ModelConfig WithLayers(const ModelConfig& config, int64_t layers);

}  // namespace ftd::engine
