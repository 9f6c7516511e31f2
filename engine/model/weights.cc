#include "engine/model/weights.h"

#include "absl/strings/str_cat.h"

namespace ftd::engine {

std::vector<NamedParam> ListParameters(ModelWeights& w) {
  std::vector<NamedParam> out;
  auto add = [&out](std::string name, at::Tensor& t, bool expert = false) {
    if (t.defined()) out.push_back({std::move(name), &t, expert});
  };
  add("model.embed_tokens.weight", w.embed);
  for (size_t l = 0; l < w.layers.size(); ++l) {
    LayerWeights& L = w.layers[l];
    std::string p = absl::StrCat("model.layers.", l, ".");
    add(p + "input_layernorm.weight", L.input_norm);
    add(p + "self_attn.q_proj.weight", L.attn.q_proj);
    add(p + "self_attn.k_proj.weight", L.attn.k_proj);
    add(p + "self_attn.v_proj.weight", L.attn.v_proj);
    add(p + "self_attn.o_proj.weight", L.attn.o_proj);
    add(p + "self_attn.q_proj.bias", L.attn.q_bias);
    add(p + "self_attn.k_proj.bias", L.attn.k_bias);
    add(p + "self_attn.v_proj.bias", L.attn.v_bias);
    add(p + "self_attn.o_proj.bias", L.attn.o_bias);
    add(p + "self_attn.q_norm.weight", L.attn.q_norm);
    add(p + "self_attn.k_norm.weight", L.attn.k_norm);
    add(p + "post_attention_layernorm.weight", L.post_attn_norm);
    if (L.is_moe) {
      add(p + "mlp.gate.weight", L.moe.router);
      add(p + "mlp.experts.gate_up", L.moe.gate_up, /*expert=*/true);
      add(p + "mlp.experts.down", L.moe.down, /*expert=*/true);
    } else {
      add(p + "mlp.gate_proj.weight", L.mlp.gate_proj);
      add(p + "mlp.up_proj.weight", L.mlp.up_proj);
      add(p + "mlp.down_proj.weight", L.mlp.down_proj);
    }
  }
  add("model.norm.weight", w.norm);
  if (!w.tied) add("lm_head.weight", w.lm_head);
  return out;
}

}  // namespace ftd::engine
