// LoRA (method lora): low-rank adapters on a frozen base, as PEFT builds them on the transformers
// v5 model. Linears (attention projections, dense MLPs, shared experts, LatentMoE's latent
// projections) get A [r, in] and
// B [out, r] (PEFT's lora_A / lora_B weights); the fused routed experts get one adapter per
// expert, applied with grouped GEMMs on the same permuted rows as the base experts
// (core/moe/grouped_experts.h), stored a [E, in, r], b [E, r, out]. PEFT keeps experts' adapters
// as lora_A [E*r, in] (expert-major) and lora_B [out, r*E] (expert-minor) of its ParamWrapper on
// mlp.experts.{gate_up_proj, down_proj} (Nemotron-H's relu^2 experts: mixer.experts.{up_proj,
// down_proj}) (target_parameters); the conversion is exact. lora_B's
// rows follow the base weight's HF column order: GPT-OSS's gate_up interleaves gate (even) and
// up (odd), the engine keeps [gate | up] (gate_up_columns.h), converted at import and export.
// Scale: alpha / r, or alpha / sqrt(r) with use_rslora. A starts kaiming-uniform(a = sqrt(5))
// (uniform in +-1/sqrt(in)), B at zero: the adapted model starts equal to the base.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"
#include "engine/model/config.h"
#include "engine/model/lora_targets.h"
#include "engine/model/weights.h"

namespace ftd::engine {

struct ModelOptions;

struct LoraOptions {
  int64_t rank = 16;
  double alpha = 32;
  bool use_rslora = false;
  uint32_t targets = kDefaultLoraTargets;
  double scale() const;
};

// One adapter slot of a model: the HF module it adapts and where its tensors live.
struct LoraSite {
  std::string module;         // transformers v5's: model.layers.3.self_attn.q_proj, model.layers.3.mlp.experts
  int64_t layer = -1;
  LoraTarget target;
  LoraLinear* linear = nullptr;    // exactly one of linear / experts
  LoraExperts* experts = nullptr;
  const char* expert_param = "";   // experts: gate_up_proj (relu^2: up_proj) | down_proj (the HF v5 parameter)
  const TensorSpec* spec = nullptr;  // the adapted weight's layout entry (in weights.layout)
  at::Tensor* base = nullptr;       // the adapted weight
  std::vector<int64_t> base_shape;  // its engine shape ([out, in]; experts [E, in, out], all experts)
};

// Every place `config`'s model can take an adapter, in layout order (targets of any kind).
std::vector<LoraSite> LoraSites(ModelWeights& weights);

// A rank-r adapter on every site of `options.targets`: A uniform, B zero, deterministic in
// `seed` and the same for every expert sharding (expert e's A does not depend on the rank).
// Freezes the base (requires_grad false), marks the adapters trainable and sets weights.lora.
// Error, naming lora.targets, when no site of the model matches a target.
absl::Status AddLoraAdapters(ModelWeights& weights, const ModelConfig& config, const ModelOptions& model_options,
                             const LoraOptions& options, uint64_t seed);

// y = x W^T + b (+ scale (x A^T) B^T when `lora` is defined). x [..., in] -> [..., out].
at::Tensor LinearWithLora(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias, const LoraLinear& lora);

// The adapters in PEFT's saved layout and names (base_model.model.<module>.lora_{A,B}.weight),
// every expert: `full_experts(site_tensor)` returns the all-expert tensor of an expert adapter
// tensor of this rank (identity in one process, an all-gather over ep otherwise). `grads`
// takes the adapters' gradients instead of their values.
using ExpertGather = std::function<at::Tensor(const at::Tensor& local)>;
std::vector<std::pair<std::string, at::Tensor>> PeftAdapterTensors(ModelWeights& weights, const ExpertGather& full_experts,
                                                                   bool grads = false);

// adapter_config.json as PEFT writes it for these adapters (target_modules: the attention
// projections' names; target_parameters: the experts' fused parameters and the dense/shared MLP
// weights by full name, which PEFT's v4->v5 renaming of gate_proj/up_proj/down_proj leaves alone,
// LatentMoE's latent projections likewise).
std::string PeftAdapterConfigJson(ModelWeights& weights, const LoraOptions& options, const std::string& base_model);

// Whether routed experts of this layout entry have a per-expert adapter layout (below): the
// gated experts of per-expert checkpoints (Qwen, DeepSeek, OLMoE, Mixtral). Not GPT-OSS's fused
// experts (no per-expert modules), nor Nemotron-H's relu^2 up/down experts (no gate to pair with
// up; PEFT's stacked layout on mixer.experts.up_proj/down_proj is their export).
bool HasPerExpertAdapterLayout(const TensorSpec& experts);

// The same adapters in the per-expert layout of the HF checkpoint's names, the layout vLLM loads
// for MoE LoRA on Qwen3-MoE-style models (and PEFT, converting it, on transformers v5): experts
// as <experts module>.<e>.{gate_proj, up_proj, down_proj} (Mixtral: w1, w3, w2) with lora_A
// [r, in] and lora_B [out, r]; gate and up share their expert's A (the fused adapter's), each
// with its half of B, so the update is exactly the fused one. Linears as in PeftAdapterTensors.
// Only for experts with HasPerExpertAdapterLayout (PeftAdapterTensors is the others').
std::vector<std::pair<std::string, at::Tensor>> PerExpertAdapterTensors(ModelWeights& weights,
                                                                        const ExpertGather& full_experts);
// adapter_config.json for PerExpertAdapterTensors: every adapted module by name (target_modules).
std::string PerExpertAdapterConfigJson(ModelWeights& weights, const LoraOptions& options,
                                       const std::string& base_model);

// Loads a PEFT adapter directory (adapter_config.json + adapter_model.safetensors) onto
// `weights` (this rank's experts of options.expert_begin/count), freezing the base. Settings the
// engine does not implement (lora_dropout > 0, rank/alpha patterns, DoRA, biases) and tensors
// that match no site are errors naming them. Returns the adapter's options.
absl::StatusOr<LoraOptions> LoadPeftAdapter(const std::string& dir, ModelWeights& weights, const ModelConfig& config,
                                            const ModelOptions& model_options);

// W += scale * B A on every adapted weight (experts: W[e] += scale * a[e] b[e]); the adapters
// are then dropped and weights.lora cleared, leaving a plain model to save as an HF checkpoint.
void MergeLoraAdapters(ModelWeights& weights);

}  // namespace ftd::engine
