#include "engine/model/core/gqa_attention.h"

#include <cmath>
#include <limits>

#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>

#include "engine/model/core/norms.h"
#include "engine/model/lora.h"
#include "engine/model/core/rope.h"
#include "engine/model/core/sink_attention_flash.h"
#include "kernels/kernels_available.h"
#include "kernels/rope.h"

namespace ftd::engine {

using kernels::OnKernelDevice;

at::Tensor PackedCausalMask(const at::Tensor& segment_ids) {
  if (!segment_ids.defined()) return {};
  // Floating ids would compare unequal where integers are meant equal (every token its own document).
  TORCH_CHECK(!at::isFloatingType(segment_ids.scalar_type()), "PackedCausalMask: segment_ids must be integers, got ",
              segment_ids.scalar_type());
  const int64_t S = segment_ids.size(1);
  at::Tensor same_doc = segment_ids.unsqueeze(2).eq(segment_ids.unsqueeze(1));  // [B, S, S]
  at::Tensor causal = at::ones({S, S}, segment_ids.options().dtype(at::kBool)).tril();
  return same_doc.logical_and(causal).unsqueeze(1);
}

at::Tensor SlidingWindowCausalMask(int64_t S, int64_t window, const at::Tensor& segment_ids, at::Device device) {
  at::Tensor pos = at::arange(S, at::TensorOptions().dtype(at::kLong).device(device));
  at::Tensor distance = pos.unsqueeze(1) - pos.unsqueeze(0);  // [S, S]: i - j
  at::Tensor allowed = distance.ge(0).logical_and(distance.lt(window)).view({1, 1, S, S});
  if (!segment_ids.defined()) return allowed;
  at::Tensor ids = segment_ids.to(device);
  return allowed.logical_and(ids.unsqueeze(2).eq(ids.unsqueeze(1)).unsqueeze(1));  // [B, 1, S, S]
}

namespace {

// The q, k and v projections of one input [.., H] (no biases). Backward sums the three input
// gradients in the GEMM epilogues (beta = 1) rather than in two separate adds over [T, H].
struct QkvProjection : public torch::autograd::Function<QkvProjection> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                                                const at::Tensor& wq, const at::Tensor& wk, const at::Tensor& wv) {
    ctx->save_for_backward({x, wq, wk, wv});
    return {at::linear(x, wq), at::linear(x, wk), at::linear(x, wv)};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const at::Tensor& x = saved[0];
    const at::Tensor x2 = x.reshape({-1, x.size(-1)});  // [T, H]
    at::Tensor dx;                                      // [T, H]
    torch::autograd::variable_list out(4);
    for (int i = 0; i < 3; ++i) {
      if (!grads[i].defined()) continue;
      const at::Tensor& w = saved[1 + i];                     // [out, H]
      const at::Tensor dy = grads[i].reshape({-1, w.size(0)});  // [T, out]
      if (ctx->needs_input_grad(0)) dx = dx.defined() ? dx.addmm_(dy, w) : at::mm(dy, w);
      if (ctx->needs_input_grad(1 + i)) out[1 + i] = at::mm(dy.t(), x2);
    }
    if (ctx->needs_input_grad(0)) out[0] = dx.defined() ? dx.view(x.sizes()) : at::zeros_like(x);
    return out;
  }
};

}  // namespace

at::Tensor SinkAttentionDense(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask,
                              const at::Tensor& sinks, double scale) {
  // HF's eager formula: scores in the activation dtype (softmax accumulates in fp32 inside).
  const int64_t B = q.size(0), Hq = q.size(1), S = q.size(2), D = q.size(3), Hkv = k.size(1);
  auto repeat_kv = [&](const at::Tensor& t) {  // [B, Hkv, S, D] -> [B, Hq, S, D]
    return Hq == Hkv ? t : t.unsqueeze(2).expand({B, Hkv, Hq / Hkv, S, D}).reshape({B, Hq, S, D});
  };
  at::Tensor scores = at::matmul(q, repeat_kv(k).transpose(2, 3)).mul(scale);  // [B, Hq, S, S]
  at::Tensor allowed =
      mask.defined() ? mask : at::ones({S, S}, q.options().dtype(at::kBool)).tril().view({1, 1, S, S});
  scores = scores.masked_fill(allowed.logical_not(), -std::numeric_limits<float>::infinity());
  at::Tensor sink = sinks.to(scores.scalar_type()).view({1, Hq, 1, 1}).expand({B, Hq, S, 1});
  at::Tensor probs = at::softmax(at::cat({scores, sink}, -1), -1).narrow(-1, 0, S);  // the sink's share dropped
  return at::matmul(probs, repeat_kv(v));
}

at::Tensor SinkAttentionSdpa(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask,
                             const at::Tensor& sinks, double scale) {
  // The sink as one more key that SDPA sees: every head's q and k get `kPad` more dimensions,
  // q's first extra one 1 and the rest 0, real keys' all 0 (their logits are unchanged), and the
  // sink key [0 .. 0, sink / scale, 0 ..] with a zero value, appended after the S keys and
  // visible to every query. Its logit is then exactly the sink (scale is a power of two for
  // head_dim 64), and SDPA's backward gives the sinks their gradient through that key. K/V are
  // repeated to the q heads (the sink differs per q head). A boolean mask keeps SDPA on its
  // memory-efficient kernel on CUDA: no [S, S] scores are materialised in training.
  constexpr int64_t kPad = 8;  // extra dims, keeping rows 16-byte aligned
  const int64_t B = q.size(0), Hq = q.size(1), S = q.size(2), D = q.size(3), Hkv = k.size(1);
  const at::TensorOptions opts = q.options();
  auto repeat_kv = [&](const at::Tensor& t) {  // [B, Hkv, S, D] -> [B, Hq, S, D]
    return Hq == Hkv ? t : t.unsqueeze(2).expand({B, Hkv, Hq / Hkv, S, D}).reshape({B, Hq, S, D});
  };
  at::Tensor q_extra = at::cat({at::ones({B, Hq, S, 1}, opts), at::zeros({B, Hq, S, kPad - 1}, opts)}, -1);
  at::Tensor q2 = at::cat({q, q_extra}, -1);                                              // [B, Hq, S, D+8]
  at::Tensor sink_logit = (sinks.to(q.scalar_type()) / scale).view({1, Hq, 1, 1}).expand({B, Hq, 1, 1});
  at::Tensor sink_key = at::cat({at::zeros({B, Hq, 1, D}, opts), sink_logit, at::zeros({B, Hq, 1, kPad - 1}, opts)}, -1);
  at::Tensor k2 = at::cat({at::cat({repeat_kv(k), at::zeros({B, Hq, S, kPad}, opts)}, -1), sink_key}, 2);
  at::Tensor v2 = at::cat({at::cat({repeat_kv(v), at::zeros({B, Hq, S, kPad}, opts)}, -1),
                           at::zeros({B, Hq, 1, D + kPad}, opts)},
                          2);                                                             // [B, Hq, S+1, D+8]
  at::Tensor allowed =
      mask.defined() ? mask : at::ones({S, S}, opts.dtype(at::kBool)).tril().view({1, 1, S, S});
  at::Tensor allowed2 = at::cat({allowed, at::ones({allowed.size(0), 1, S, 1}, allowed.options())}, -1);
  at::Tensor out = at::scaled_dot_product_attention(q2, k2, v2, allowed2, 0.0, /*is_causal=*/false, scale);
  return out.narrow(-1, 0, D);  // [B, Hq, S, D]
}

at::Tensor SinkAttention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask,
                         const at::Tensor& sinks, double scale) {
  return q.is_cuda() ? SinkAttentionSdpa(q, k, v, mask, sinks, scale) : SinkAttentionDense(q, k, v, mask, sinks, scale);
}

at::Tensor GqaAttention(const at::Tensor& x, const AttentionWeights& w, const ModelConfig& c,
                        const AttentionContext& ctx) {
  const int64_t B = x.size(0), S = x.size(1), D = c.head_dim;
  const int64_t Hq = c.num_attention_heads, Hkv = c.num_key_value_heads;
  at::Tensor q, k, v;
  if (w.q_bias.defined() || w.k_bias.defined() || w.v_bias.defined() || w.q_lora.defined() || w.k_lora.defined() ||
      w.v_lora.defined()) {
    q = LinearWithLora(x, w.q_proj, w.q_bias, w.q_lora);
    k = LinearWithLora(x, w.k_proj, w.k_bias, w.k_lora);
    v = LinearWithLora(x, w.v_proj, w.v_bias, w.v_lora);
  } else {
    auto qkv = QkvProjection::apply(x, w.q_proj, w.k_proj, w.v_proj);
    q = qkv[0], k = qkv[1], v = qkv[2];
  }
  if (c.qk_norm_full) {  // OLMoE: over the whole projection, before the heads are split
    q = RmsNorm(q, w.q_norm, c.rms_norm_eps);
    k = RmsNorm(k, w.k_norm, c.rms_norm_eps);
  }
  if (c.clip_qkv > 0) {
    q = q.clamp(-c.clip_qkv, c.clip_qkv);
    k = k.clamp(-c.clip_qkv, c.clip_qkv);
    v = v.clamp(-c.clip_qkv, c.clip_qkv);
  }
  q = q.view({B, S, Hq, D});
  k = k.view({B, S, Hkv, D});
  v = v.view({B, S, Hkv, D});
  // q, k stay [B, S, heads, D] (contiguous on CUDA) through norm and rotation.
  if (c.qk_norm && c.rope_enabled && OnKernelDevice(q) && kernels::RopeCudaSupports(q, ctx.cos, ctx.sin, w.q_norm) &&
      kernels::RopeCudaSupports(k, ctx.cos, ctx.sin, w.k_norm)) {
    // One read and one write per tensor for norm + rotation.
    q = kernels::RmsNormRope(q, w.q_norm, c.rms_norm_eps, ctx.cos, ctx.sin);
    k = kernels::RmsNormRope(k, w.k_norm, c.rms_norm_eps, ctx.cos, ctx.sin);
  } else {
    if (c.qk_norm) {
      q = RmsNorm(q, w.q_norm, c.rms_norm_eps);
      k = RmsNorm(k, w.k_norm, c.rms_norm_eps);
    }
    if (c.rope_enabled) {  // Nemotron-H's attention has no position embedding
      q = ApplyRope(q.transpose(1, 2), ctx.cos, ctx.sin).transpose(1, 2);
      k = ApplyRope(k.transpose(1, 2), ctx.cos, ctx.sin).transpose(1, 2);
    }
  }
  const double scale = c.AttentionScale();
  at::Tensor out;  // [B, S, Hq * D]
  if (w.sinks.defined() && ctx.flash_sinks) {
    // GPT-OSS on FlashAttention: [B, S, heads, D] as they are, documents as sequences, the window in the kernel.
    out = SinkAttentionFlash(q, k, v, w.sinks, ctx.varlen, ctx.window, scale).reshape({B, S, c.q_dim()});
  } else if (w.sinks.defined()) {
    // GPT-OSS on the mask path: never through varlen; packed rows carry their document mask.
    TORCH_CHECK(!ctx.varlen.cu_seqlens.defined() && ctx.window == 0,
                "attention sinks outside SinkAttentionFlash take the dense path: no varlen boundaries or window");
    out = SinkAttention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), ctx.mask, w.sinks, scale)
              .transpose(1, 2)
              .reshape({B, S, c.q_dim()});
  } else if (ctx.varlen.cu_seqlens.defined()) {
    // Packed documents on CUDA: [B * S, heads, D] views (copies only if the rotation left a
    // strided layout), one causal sequence per document, no [S, S] mask.
    out = VarlenCausalAttention(q.reshape({B * S, Hq, D}), k.reshape({B * S, Hkv, D}), v.reshape({B * S, Hkv, D}),
                                ctx.varlen, scale)
              .view({B, S, Hq * D});
  } else {
    // SDPA takes [B, heads, S, D].
    at::Tensor qt = q.transpose(1, 2), kt = k.transpose(1, 2), vt = v.transpose(1, 2);
    if (ctx.mask.defined()) {
      out = at::scaled_dot_product_attention(qt, kt, vt, ctx.mask, 0.0, /*is_causal=*/false, scale,
                                             /*enable_gqa=*/true);
    } else {
      out = at::scaled_dot_product_attention(qt, kt, vt, {}, 0.0, /*is_causal=*/true, scale, /*enable_gqa=*/true);
    }
    out = out.transpose(1, 2).reshape({B, S, c.q_dim()});
  }
  return LinearWithLora(out, w.o_proj, w.o_bias, w.o_lora);
}

}  // namespace ftd::engine
