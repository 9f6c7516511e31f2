#include "engine/model/transformer.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/model/core/gqa_attention.h"
#include "engine/model/core/mla_attention.h"
#include "engine/model/core/dense_mlp.h"
#include "engine/model/core/mamba2.h"
#include "engine/model/core/norms.h"
#include "engine/model/core/rope.h"
#include "engine/model/core/sink_attention_flash.h"
#include "engine/model/linear_cross_entropy.h"
#include "engine/model/varlen_attention.h"

namespace ftd::engine {

bool PackedRowsUseVarlen(const ModelConfig& config, const ModelOptions& options) {
  return options.varlen_attention && (!config.attention_sinks || SinkLayersUseFlash(config, options)) &&
         VarlenAttentionSupports(options.device, options.dtype, config.qk_head_dim(), config.num_attention_heads,
                                 config.num_key_value_heads);
}

bool SinkLayersUseFlash(const ModelConfig& config, const ModelOptions& options) {
  if (!config.attention_sinks || options.sink_attention == SinkAttentionPath::kSdpa) return false;
  if (options.sink_attention == SinkAttentionPath::kAuto && !options.device.is_cuda()) return false;
  return SinkAttentionFlashSupports(options.device, options.dtype, config.head_dim, config.num_attention_heads,
                                    config.num_key_value_heads);
}

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
  const int64_t E_local = o.expert_count < 0 ? c.num_experts : o.expert_count;
  if (static_cast<int64_t>(w.layers.size()) != c.num_hidden_layers) {
    return absl::InvalidArgumentError(absl::StrCat("expected ", c.num_hidden_layers, " layers, got ", w.layers.size()));
  }
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    if (w.layers[l].is_moe != c.IsMoeLayer(l)) {
      return absl::InvalidArgumentError(
          absl::StrCat("model.layers.", l, ".mlp: sparse/dense layout disagrees with the config"));
    }
  }
  ModelWeights& mutable_w = const_cast<ModelWeights&>(w);  // SlotTensor binds by reference; nothing is changed
  for (const TensorSpec& spec : ModelTensorLayout(c)) {
    std::vector<int64_t> want = spec.shape;
    if (spec.expert) want[0] = E_local;
    if (auto s = CheckShape(spec.name, SlotTensor(mutable_w, spec), want); !s.ok()) return s;
  }
  if (c.tie_word_embeddings && !w.lm_head.is_same(w.embed)) {
    return absl::InvalidArgumentError("the output projection must be the embedding (tie_word_embeddings)");
  }
  return absl::OkStatus();
}

MoeTransformer::MoeTransformer(const ModelConfig& config, const ModelOptions& options, ModelWeights weights)
    : config_(config),
      options_(options),
      weights_(std::move(weights)),
      local_dispatcher_(options.save_expert_activation) {
  if (weights_.layout.empty()) weights_.layout = ModelTensorLayout(config_);
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
  if (config_.IsHybrid()) {
    // Nemotron-H: norm -> one mixer -> added to the residual stream by the next norm.
    auto [normed, h] = NormStream(in, L.input_norm, config_.rms_norm_eps);
    switch (config_.BlockOf(index)) {
      case LayerBlock::kMamba:
        return {h, Mamba2Mixer(normed, L.mamba, config_, ctx.segment_ids, options_.mamba_kernels)};
      case LayerBlock::kAttention: return {h, GqaAttention(normed, L.attn, config_, ctx)};
      case LayerBlock::kMlp: return {h, DenseMlp(normed, L.mlp)};
      case LayerBlock::kMoe: break;
    }
    MoeOutput moe = MoeBlock(normed, L.moe, config_, options_.gate, dispatcher_);
    if (router_logits) router_logits->push_back(moe.router_logits);
    if (counts) counts->push_back(moe.expert_counts);
    return {h, moe.out};
  }
  auto [attn_in, h] = NormStream(in, L.input_norm, config_.rms_norm_eps);
  at::Tensor attn = config_.attention == AttentionKind::kMla ? MlaAttention(attn_in, L.attn, config_, ctx)
                                                             : GqaAttention(attn_in, L.attn, config_, ctx);
  auto [normed, x] = AddRmsNorm(attn, h, L.post_attn_norm, config_.rms_norm_eps);  // x = h + attn
  if (!L.is_moe) return {x, DenseMlp(normed, L.mlp)};
  MoeOutput moe = MoeBlock(normed, L.moe, config_, options_.gate, dispatcher_);
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
  if (config_.rope_enabled) {
    std::tie(ctx.cos, ctx.sin) = RopeCosSin(inv_freq_, rope_scaling_, positions, options_.dtype);
  }
  if (config_.NumMambaLayers() > 0) {
    TORCH_CHECK(batch.segment_ids.defined() || !batch.varlen.cu_seqlens.defined(),
                "Mamba2 layers over packed documents need the batch's segment_ids");
    if (batch.segment_ids.defined()) ctx.segment_ids = batch.segment_ids.to(options_.device);
  }
  // Models whose packed rows do not take the varlen kernel (PackedRowsUseVarlen: sinks without
  // SinkAttentionFlash) attend through the dense document mask, built from segment_ids.
  const bool sinks = config_.attention_sinks;
  const bool flash_sinks = SinkLayersUseFlash(config_, options_);
  TORCH_CHECK(!sinks || options_.sink_attention != SinkAttentionPath::kFlash || flash_sinks,
              "sink_attention flash: FlashAttention serves CUDA fp16/bf16 (head_dim a multiple of 8 up to 256) "
              "or the CPU, not ", options_.dtype, " on ", options_.device);
  ctx.flash_sinks = flash_sinks;
  const bool varlen = PackedRowsUseVarlen(config_, options_);
  if (batch.varlen.cu_seqlens.defined() && (varlen || flash_sinks)) {
    ctx.varlen = batch.varlen;
  } else if (batch.segment_ids.defined()) {
    // Once per micro-batch, shared by every layer (and by checkpointed recomputation). Flash
    // sink layers take the documents as sequences on the CPU too (the reference kernel).
    if (varlen || flash_sinks) {
      ctx.varlen = VarlenBoundariesFromSegmentIds(batch.segment_ids, options_.device);
    } else {
      ctx.mask = PackedCausalMask(batch.segment_ids.to(options_.device));
    }
  }

  // Sliding-window layers (Mixtral, Qwen2-MoE, GPT-OSS) attend through a window mask when the
  // window is shorter than the sequence (dense: VarlenCausalAttention takes no window), except
  // flash sink layers, whose kernel takes the window.
  AttentionContext sliding_ctx = ctx;
  bool any_sliding = false;
  for (int64_t l = 0; l < config_.num_hidden_layers; ++l) any_sliding = any_sliding || config_.IsSlidingLayer(l);
  const bool window_applies = any_sliding && config_.sliding_window < S;
  TORCH_CHECK(varlen || flash_sinks || batch.segment_ids.defined() || !batch.varlen.cu_seqlens.defined(),
              "packed documents of a model without varlen attention (sinks) need the batch's segment_ids");
  if (window_applies && flash_sinks) {
    // FlashAttention's own window over the same documents (no mask).
    sliding_ctx.window = config_.sliding_window;
  } else if (window_applies) {
    TORCH_CHECK(batch.segment_ids.defined() || !batch.varlen.cu_seqlens.defined(),
                "sliding-window attention over packed documents needs the batch's segment_ids");
    sliding_ctx.varlen = VarlenBoundaries{};
    sliding_ctx.mask = SlidingWindowCausalMask(S, config_.sliding_window, batch.segment_ids, options_.device);
  }

  ForwardResult result;
  std::vector<at::Tensor> router_logits;
  const bool own_lookup = embedding_lookup_ && !weights_.tied;
  ResidualStream stream{own_lookup ? embedding_lookup_(weights_.embed, batch.input_ids)
                                   : at::embedding(weights_.embed, batch.input_ids),
                        {}};  // [B, S, H]
  // The residual stream through a hook: its defined tensors out and back in.
  auto through_hook = [this](int64_t l, const ResidualStream& r, bool enter) {
    std::vector<at::Tensor> parts = {r.sum};
    if (r.pending.defined()) parts.push_back(r.pending);
    parts = enter ? layer_hooks_->Enter(l, std::move(parts)) : layer_hooks_->Exit(l, std::move(parts));
    return ResidualStream{parts[0], parts.size() > 1 ? parts[1] : at::Tensor()};
  };
  for (int64_t l = 0; l < config_.num_hidden_layers; ++l) {
    if (layer_hooks_ != nullptr) stream = through_hook(l, stream, /*enter=*/true);
    const AttentionContext& layer_ctx = window_applies && config_.IsSlidingLayer(l) ? sliding_ctx : ctx;
    if (options_.activation_checkpointing && at::GradMode::is_enabled()) {
      std::vector<at::Tensor> params = LayerParameters(weights_, l);
      // Router logits and counts are captured during the first (no-grad) pass only.
      // The closure outlives Forward (backward recomputes through it): it holds the context
      // by value, and the outputs only during the first, no-grad pass inside Forward.
      std::vector<at::Tensor>* logits_out = &router_logits;
      std::vector<at::Tensor>* counts_out = &result.expert_counts;
      auto fn = [this, l, layer_ctx, logits_out, counts_out](const at::Tensor& in) {
        bool first = !at::GradMode::is_enabled();
        return Layer(l, ResidualStream{in, {}}, layer_ctx, first ? logits_out : nullptr, first ? counts_out : nullptr)
            .Materialize();
      };
      stream = {CheckpointedLayer::apply(stream.Materialize(), at::TensorList(params), LayerFn(fn))[0], {}};
    } else {
      stream = Layer(l, stream, layer_ctx, &router_logits, &result.expert_counts);
    }
    if (layer_hooks_ != nullptr) stream = through_hook(l, stream, /*enter=*/false);
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
                                    batch.loss_grad_scale, batch.loss_grad_exact, batch.loss_rows);
    result.num_targets = batch.num_targets >= 0 ? batch.num_targets : targets.ne(-100).sum().item<int64_t>();
  }
  if (config_.output_router_logits && config_.router_aux_loss_coef != 0 && !router_logits.empty()) {
    result.aux_loss = LoadBalancingLoss(router_logits, config_.num_experts, config_.num_experts_per_tok);
  }
  if (return_logits) result.logits = logits;
  return result;
}

}  // namespace ftd::engine
