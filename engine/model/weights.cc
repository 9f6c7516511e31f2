#include "engine/model/weights.h"

#include "absl/strings/str_cat.h"
#include "engine/model/lora.h"

namespace ftd::engine {

at::Tensor& SlotTensor(ModelWeights& w, const TensorSpec& spec) {
  switch (spec.slot) {
    case Slot::kEmbed: return w.embed;
    case Slot::kFinalNorm: return w.norm;
    case Slot::kLmHead: return w.lm_head;
    default: break;
  }
  LayerWeights& L = w.layers.at(static_cast<size_t>(spec.layer));
  switch (spec.slot) {
    case Slot::kInputNorm: return L.input_norm;
    case Slot::kPostAttnNorm: return L.post_attn_norm;
    case Slot::kQProj: return L.attn.q_proj;
    case Slot::kKProj: return L.attn.k_proj;
    case Slot::kVProj: return L.attn.v_proj;
    case Slot::kOProj: return L.attn.o_proj;
    case Slot::kQBias: return L.attn.q_bias;
    case Slot::kKBias: return L.attn.k_bias;
    case Slot::kVBias: return L.attn.v_bias;
    case Slot::kOBias: return L.attn.o_bias;
    case Slot::kQNorm: return L.attn.q_norm;
    case Slot::kSinks: return L.attn.sinks;
    case Slot::kKNorm: return L.attn.k_norm;
    case Slot::kQaProj: return L.attn.q_a_proj;
    case Slot::kQaBias: return L.attn.q_a_bias;
    case Slot::kQaNorm: return L.attn.q_a_norm;
    case Slot::kQbProj: return L.attn.q_b_proj;
    case Slot::kKvaProj: return L.attn.kv_a_proj;
    case Slot::kKvaBias: return L.attn.kv_a_bias;
    case Slot::kKvaNorm: return L.attn.kv_a_norm;
    case Slot::kKvbProj: return L.attn.kv_b_proj;
    case Slot::kRouter: return L.moe.router;
    case Slot::kRouterBias: return L.moe.router_bias;
    case Slot::kExpertsGateUp: return L.moe.gate_up;
    case Slot::kExpertsDown: return L.moe.down;
    case Slot::kRouterLogitBias: return L.moe.router_logit_bias;
    case Slot::kExpertsGateUpBias: return L.moe.gate_up_bias;
    case Slot::kExpertsDownBias: return L.moe.down_bias;
    case Slot::kSharedGate: return L.moe.shared.gate_proj;
    case Slot::kSharedUp: return L.moe.shared.up_proj;
    case Slot::kSharedDown: return L.moe.shared.down_proj;
    case Slot::kSharedExpertGate: return L.moe.shared_expert_gate;
    case Slot::kMlpGate: return L.mlp.gate_proj;
    case Slot::kMlpUp: return L.mlp.up_proj;
    case Slot::kMlpDown: return L.mlp.down_proj;
    case Slot::kLatentDown: return L.moe.latent_down;
    case Slot::kLatentUp: return L.moe.latent_up;
    case Slot::kMambaInProj: return L.mamba.in_proj;
    case Slot::kMambaConvWeight: return L.mamba.conv_weight;
    case Slot::kMambaConvBias: return L.mamba.conv_bias;
    case Slot::kMambaALog: return L.mamba.a_log;
    case Slot::kMambaD: return L.mamba.d;
    case Slot::kMambaDtBias: return L.mamba.dt_bias;
    case Slot::kMambaNorm: return L.mamba.norm;
    case Slot::kMambaOutProj: return L.mamba.out_proj;
    default: break;
  }
  // Unreachable: every slot is bound above.
  return w.embed;
}

ModelWeights EmptyWeights(const ModelConfig& c) {
  ModelWeights w;
  w.layers.resize(static_cast<size_t>(c.num_hidden_layers));
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    LayerWeights& L = w.layers[static_cast<size_t>(l)];
    L.is_moe = c.IsMoeLayer(l);
    L.moe.swiglu_limit = c.swiglu_limit;
    L.moe.swiglu_alpha = c.swiglu_alpha;
    L.moe.activation = c.mlp_activation;
  }
  w.tied = c.tie_word_embeddings;
  w.layout = ModelTensorLayout(c);
  return w;
}

namespace {

// The adapters of method lora as parameters (engine names: PEFT's module path, then
// lora_A/lora_B; experts' under their fused parameter's name, in the engine layout).
std::vector<NamedParam> ListLoraParameters(ModelWeights& w, int64_t only_layer) {
  std::vector<NamedParam> out;
  for (LoraSite& site : LoraSites(w)) {
    if (only_layer >= 0 && site.layer != only_layer) continue;
    if (site.linear != nullptr && site.linear->defined()) {
      out.push_back({site.module + ".lora_A.weight", &site.linear->a, false, site.layer});
      out.push_back({site.module + ".lora_B.weight", &site.linear->b, false, site.layer});
    } else if (site.experts != nullptr && site.experts->defined()) {
      out.push_back({absl::StrCat(site.module, ".", site.expert_param, ".lora_A"), &site.experts->a, true, site.layer});
      out.push_back({absl::StrCat(site.module, ".", site.expert_param, ".lora_B"), &site.experts->b, true, site.layer});
    }
  }
  return out;
}

}  // namespace

std::vector<NamedParam> ListParameters(ModelWeights& w) {
  if (w.lora) return ListLoraParameters(w, -1);
  std::vector<NamedParam> out;
  for (const TensorSpec& spec : w.layout) {
    if (spec.role == TensorRole::kBuffer) continue;
    at::Tensor& t = SlotTensor(w, spec);
    if (t.defined()) out.push_back({spec.name, &t, spec.expert, spec.layer});
  }
  return out;
}

std::vector<at::Tensor> LayerParameters(ModelWeights& w, int64_t layer) {
  std::vector<at::Tensor> out;
  if (w.lora) {
    for (NamedParam& p : ListLoraParameters(w, layer)) out.push_back(*p.tensor);
    return out;
  }
  for (const TensorSpec& spec : w.layout) {
    if (spec.layer != layer || spec.role == TensorRole::kBuffer) continue;
    const at::Tensor& t = SlotTensor(w, spec);
    if (t.defined()) out.push_back(t);
  }
  return out;
}

}  // namespace ftd::engine
