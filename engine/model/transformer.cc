#include "engine/model/transformer.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/model/layers.h"
#include "engine/model/linear_cross_entropy.h"
#include "engine/model/varlen_attention.h"

namespace ftd::engine {

at::Tensor ShiftLabels(const at::Tensor& labels) {
  at::Tensor pad = at::full({labels.size(0), 1}, -100, labels.options());
  return at::cat({labels.narrow(1, 1, labels.size(1) - 1), pad}, 1);
}

namespace {

// Activation checkpointing for one layer: only the layer input is kept; the layer runs again
// under autograd in backward. Parameters are explicit inputs so their gradients flow.
using LayerFn = std::function<at::Tensor(const at::Tensor&)>;

// Holds the layer closure inside the autograd context (as an IValue capsule).
struct LayerFnHolder : public torch::CustomClassHolder {
  explicit LayerFnHolder(LayerFn f) : fn(std::move(f)) {}
  LayerFn fn;
};

// Activation checkpointing for one layer: only the layer input is kept; the layer runs again
// under autograd in backward. Parameters are explicit inputs so their gradients flow.
struct CheckpointedLayer : public torch::autograd::Function<CheckpointedLayer> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, at::Tensor input,
                                                at::TensorList params, LayerFn fn) {
    auto holder = c10::make_intrusive<LayerFnHolder>(std::move(fn));
    ctx->saved_data["fn"] = c10::IValue::make_capsule(holder);
    ctx->saved_data["params"] = c10::List<at::Tensor>(params.vec());
    ctx->save_for_backward({input});
    c10::NoGradGuard no_grad;
    return {holder->fn(input)};
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_out) {
    at::Tensor input = ctx->get_saved_variables()[0].detach().requires_grad_(true);
    auto holder = c10::static_intrusive_pointer_cast<LayerFnHolder>(ctx->saved_data["fn"].toCapsule());
    std::vector<at::Tensor> inputs = {input};
    for (const at::Tensor& p : ctx->saved_data["params"].toTensorList()) inputs.push_back(p);
    at::Tensor out;
    {
      c10::AutoGradMode grad_mode(true);
      out = holder->fn(input);
    }
    torch::autograd::variable_list grads = torch::autograd::grad({out}, inputs, {grad_out[0]},
                                                                 /*retain_graph=*/false,
                                                                 /*create_graph=*/false, /*allow_unused=*/true);
    grads.push_back(at::Tensor());  // no gradient for the closure
    return grads;
  }
};

void CollectLayerParams(LayerWeights& L, std::vector<at::Tensor>* out) {
  for (at::Tensor* t : {&L.input_norm, &L.post_attn_norm, &L.attn.q_proj, &L.attn.k_proj, &L.attn.v_proj,
                        &L.attn.o_proj, &L.attn.q_bias, &L.attn.k_bias, &L.attn.v_bias, &L.attn.o_bias,
                        &L.attn.q_norm, &L.attn.k_norm, &L.moe.router, &L.moe.gate_up, &L.moe.down,
                        &L.mlp.gate_proj, &L.mlp.up_proj, &L.mlp.down_proj}) {
    if (t->defined()) out->push_back(*t);
  }
}

absl::Status CheckShape(const std::string& name, const at::Tensor& t, std::vector<int64_t> want) {
  if (!t.defined()) return absl::InvalidArgumentError(absl::StrCat("missing tensor ", name));
  if (t.sizes().vec() != want) {
    return absl::InvalidArgumentError(absl::StrCat("tensor ", name, " has shape [", absl::StrJoin(t.sizes(), ", "),
                                                   "], expected [", absl::StrJoin(want, ", "), "]"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateWeights(const ModelConfig& c, const ModelOptions& o, const ModelWeights& w) {
  const int64_t H = c.hidden_size, V = c.vocab_size;
  const int64_t E_local = o.expert_count < 0 ? c.num_experts : o.expert_count;
  auto check = CheckShape;
  if (auto s = check("model.embed_tokens.weight", w.embed, {V, H}); !s.ok()) return s;
  if (auto s = check("model.norm.weight", w.norm, {H}); !s.ok()) return s;
  if (auto s = check("lm_head.weight", w.lm_head, {V, H}); !s.ok()) return s;
  if (static_cast<int64_t>(w.layers.size()) != c.num_hidden_layers) {
    return absl::InvalidArgumentError(absl::StrCat("expected ", c.num_hidden_layers, " layers, got ", w.layers.size()));
  }
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const LayerWeights& L = w.layers[l];
    std::string p = absl::StrCat("model.layers.", l, ".");
    std::vector<std::pair<std::string, std::pair<const at::Tensor*, std::vector<int64_t>>>> items = {
        {"input_layernorm.weight", {&L.input_norm, {H}}},
        {"post_attention_layernorm.weight", {&L.post_attn_norm, {H}}},
        {"self_attn.q_proj.weight", {&L.attn.q_proj, {c.q_dim(), H}}},
        {"self_attn.k_proj.weight", {&L.attn.k_proj, {c.kv_dim(), H}}},
        {"self_attn.v_proj.weight", {&L.attn.v_proj, {c.kv_dim(), H}}},
        {"self_attn.o_proj.weight", {&L.attn.o_proj, {H, c.q_dim()}}},
    };
    if (c.qk_norm) {
      items.push_back({"self_attn.q_norm.weight", {&L.attn.q_norm, {c.head_dim}}});
      items.push_back({"self_attn.k_norm.weight", {&L.attn.k_norm, {c.head_dim}}});
    }
    if (c.attention_bias) {
      items.push_back({"self_attn.q_proj.bias", {&L.attn.q_bias, {c.q_dim()}}});
      items.push_back({"self_attn.k_proj.bias", {&L.attn.k_bias, {c.kv_dim()}}});
      items.push_back({"self_attn.v_proj.bias", {&L.attn.v_bias, {c.kv_dim()}}});
      items.push_back({"self_attn.o_proj.bias", {&L.attn.o_bias, {H}}});
    }
    if (L.is_moe != c.IsMoeLayer(l)) {
      return absl::InvalidArgumentError(absl::StrCat(p, "mlp: sparse/dense layout disagrees with the config"));
    }
    const int64_t F = c.moe_intermediate_size, Fd = c.intermediate_size;
    if (L.is_moe) {
      items.push_back({"mlp.gate.weight", {&L.moe.router, {c.num_experts, H}}});
      items.push_back({"mlp.experts.gate_up", {&L.moe.gate_up, {E_local, H, 2 * F}}});
      items.push_back({"mlp.experts.down", {&L.moe.down, {E_local, F, H}}});
    } else {
      items.push_back({"mlp.gate_proj.weight", {&L.mlp.gate_proj, {Fd, H}}});
      items.push_back({"mlp.up_proj.weight", {&L.mlp.up_proj, {Fd, H}}});
      items.push_back({"mlp.down_proj.weight", {&L.mlp.down_proj, {H, Fd}}});
    }
    for (const auto& [name, spec] : items) {
      if (auto s = CheckShape(p + name, *spec.first, spec.second); !s.ok()) return s;
    }
  }
  return absl::OkStatus();
}

MoeTransformer::MoeTransformer(const ModelConfig& config, const ModelOptions& options, ModelWeights weights)
    : config_(config), options_(options), weights_(std::move(weights)) {
  auto [inv_freq, scaling] = RopeInverseFrequencies(config_);
  inv_freq_ = inv_freq.to(options_.device);
  rope_scaling_ = scaling;
}

absl::StatusOr<std::unique_ptr<MoeTransformer>> MoeTransformer::Create(const ModelConfig& config,
                                                                       const ModelOptions& options,
                                                                       ModelWeights weights) {
  if (auto s = ValidateWeights(config, options, weights); !s.ok()) return s;
  return std::unique_ptr<MoeTransformer>(new MoeTransformer(config, options, std::move(weights)));
}

namespace {

// The norm that reads the residual stream, adding a pending branch output first: the add and the
// norm are one kernel forward and backward (kernels/rms_norm.h). Returns (normed, stream).
std::pair<at::Tensor, at::Tensor> NormStream(const ResidualStream& r, const at::Tensor& weight, double eps) {
  if (!r.pending.defined()) return {RmsNorm(r.sum, weight, eps), r.sum};
  return AddRmsNorm(r.pending, r.sum, weight, eps);
}

}  // namespace

at::Tensor ResidualStream::Materialize() const { return pending.defined() ? sum + pending : sum; }

ResidualStream MoeTransformer::Layer(int64_t index, const ResidualStream& in, const AttentionContext& ctx,
                                     std::vector<at::Tensor>* router_logits, std::vector<at::Tensor>* counts) {
  LayerWeights& L = weights_.layers[index];
  auto [attn_in, h] = NormStream(in, L.input_norm, config_.rms_norm_eps);
  at::Tensor attn = Attention(attn_in, L.attn, config_, ctx);
  auto [normed, x] = AddRmsNorm(attn, h, L.post_attn_norm, config_.rms_norm_eps);  // x = h + attn
  if (!L.is_moe) return {x, DenseMlp(normed, L.mlp)};
  MoeOutput moe = token_dispatch_ ? MoeBlockByToken(normed, L.moe, config_, options_.gate, token_dispatch_)
                                  : MoeBlock(normed, L.moe, config_, options_.gate, options_.save_expert_activation);
  if (router_logits) router_logits->push_back(moe.router_logits);
  if (counts) counts->push_back(moe.expert_counts);
  return {x, moe.out};  // the next norm adds them
}

ForwardResult MoeTransformer::Forward(const Batch& batch, bool return_logits) {
  const int64_t B = batch.input_ids.size(0), S = batch.input_ids.size(1);
  at::Tensor positions = batch.position_ids;
  if (!positions.defined()) {
    positions = at::arange(S, batch.input_ids.options()).unsqueeze(0).expand({B, S});
  }
  AttentionContext ctx;
  std::tie(ctx.cos, ctx.sin) = RopeCosSin(inv_freq_, rope_scaling_, positions, options_.dtype);
  if (batch.varlen.cu_seqlens.defined()) {
    ctx.varlen = batch.varlen;
  } else if (batch.segment_ids.defined()) {
    // Once per micro-batch, shared by every layer (and by checkpointed recomputation).
    if (options_.varlen_attention &&
        VarlenAttentionSupports(options_.device, options_.dtype, config_.head_dim, config_.num_attention_heads,
                                config_.num_key_value_heads)) {
      ctx.varlen = VarlenBoundariesFromSegmentIds(batch.segment_ids, options_.device);
    } else {
      ctx.mask = PackedCausalMask(batch.segment_ids.to(options_.device));
    }
  }

  ForwardResult result;
  std::vector<at::Tensor> router_logits;
  const bool own_lookup = embedding_lookup_ && !weights_.tied;
  ResidualStream stream{own_lookup ? embedding_lookup_(weights_.embed, batch.input_ids)
                                   : at::embedding(weights_.embed, batch.input_ids),
                        {}};  // [B, S, H]
  for (int64_t l = 0; l < config_.num_hidden_layers; ++l) {
    if (options_.activation_checkpointing && at::GradMode::is_enabled()) {
      std::vector<at::Tensor> params;
      CollectLayerParams(weights_.layers[l], &params);
      // Router logits and counts are captured during the first (no-grad) pass only.
      // The closure outlives Forward (backward recomputes through it): it holds the context
      // by value, and the outputs only during the first, no-grad pass inside Forward.
      std::vector<at::Tensor>* logits_out = &router_logits;
      std::vector<at::Tensor>* counts_out = &result.expert_counts;
      auto fn = [this, l, ctx, logits_out, counts_out](const at::Tensor& in) {
        bool first = !at::GradMode::is_enabled();
        return Layer(l, ResidualStream{in, {}}, ctx, first ? logits_out : nullptr, first ? counts_out : nullptr)
            .Materialize();
      };
      stream = {CheckpointedLayer::apply(stream.Materialize(), at::TensorList(params), LayerFn(fn))[0], {}};
    } else {
      stream = Layer(l, stream, ctx, &router_logits, &result.expert_counts);
    }
  }
  at::Tensor h = NormStream(stream, weights_.norm, config_.rms_norm_eps).first;
  at::Tensor logits;
  if (return_logits) logits = at::linear(h, weights_.lm_head).to(at::kFloat);  // [B, S, V]
  if (batch.targets.defined()) {
    at::Tensor targets = batch.targets.reshape({-1});
    result.loss_sum =
        return_logits
            ? at::cross_entropy_loss(logits.view({B * S, -1}), targets, {}, at::Reduction::Sum, -100)
            : LinearCrossEntropySum(h.reshape({B * S, -1}), weights_.lm_head, targets, options_.loss_chunk_tokens,
                                    batch.loss_grad_scale, batch.loss_grad_exact);
    result.num_targets = batch.num_targets >= 0 ? batch.num_targets : targets.ne(-100).sum().item<int64_t>();
  }
  if (config_.output_router_logits && config_.router_aux_loss_coef != 0 && !router_logits.empty()) {
    result.aux_loss = LoadBalancingLoss(router_logits, config_.num_experts, config_.num_experts_per_tok);
  }
  if (return_logits) result.logits = logits;
  return result;
}

}  // namespace ftd::engine
