#include "engine/model/layers.h"

#include <cmath>

#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>

#include "kernels/kernels_available.h"
#include "kernels/rms_norm.h"
#include "kernels/rope.h"

namespace ftd::engine {

using kernels::OnKernelDevice;

at::Tensor RmsNorm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  if (OnKernelDevice(x) && kernels::RmsNormCudaSupports(x, weight)) return kernels::RmsNorm(x, weight, eps);
  at::Tensor xf = x.to(at::kFloat);
  at::Tensor variance = xf.pow(2).mean(-1, /*keepdim=*/true);
  xf = xf * at::rsqrt(variance + eps);
  return weight * xf.to(x.scalar_type());
}

std::pair<at::Tensor, at::Tensor> AddRmsNorm(const at::Tensor& x, const at::Tensor& residual, const at::Tensor& weight,
                                             double eps) {
  if (OnKernelDevice(x) && kernels::RmsNormCudaSupports(x, weight) && residual.sizes() == x.sizes() &&
      residual.scalar_type() == x.scalar_type()) {
    auto [normed, sum] = kernels::AddRmsNorm(x, residual, weight, eps);
    return {normed, sum};
  }
  at::Tensor sum = x + residual;
  return {RmsNorm(sum, weight, eps), sum};
}

std::pair<at::Tensor, double> RopeInverseFrequencies(const ModelConfig& c) {
  const int64_t dim = c.head_dim;
  const double base = c.rope.theta;
  auto opts = at::TensorOptions().dtype(at::kFloat);
  // HF: 1 / base ** (arange(0, dim, 2) / dim), in fp32.
  at::Tensor exponents = at::arange(0, dim, 2, at::TensorOptions().dtype(at::kLong)).to(at::kFloat) / dim;
  at::Tensor inv_freq = 1.0 / at::pow(at::scalar_tensor(base, opts), exponents);
  double scaling = 1.0;
  const RopeConfig& r = c.rope;
  if (r.type == "linear") {
    inv_freq = inv_freq / r.factor;
  } else if (r.type == "llama3") {
    const double old_len = static_cast<double>(r.original_max_position_embeddings);
    const double low_wavelen = old_len / r.low_freq_factor;
    const double high_wavelen = old_len / r.high_freq_factor;
    at::Tensor wavelen = 2 * M_PI / inv_freq;
    at::Tensor llama = at::where(wavelen > low_wavelen, inv_freq / r.factor, inv_freq);
    at::Tensor smooth = (old_len / wavelen - r.low_freq_factor) / (r.high_freq_factor - r.low_freq_factor);
    at::Tensor smoothed = (1 - smooth) * llama / r.factor + smooth * llama;
    at::Tensor is_medium = (wavelen >= high_wavelen).logical_and(wavelen <= low_wavelen);
    inv_freq = at::where(is_medium, smoothed, llama);
  } else if (r.type == "yarn") {
    const double factor = r.factor;
    const double orig = r.original_max_position_embeddings > 0 ? r.original_max_position_embeddings
                                                               : c.max_position_embeddings;
    scaling = r.attention_factor > 0 ? r.attention_factor : (factor <= 1 ? 1.0 : 0.1 * std::log(factor) + 1.0);
    auto correction_dim = [&](double rotations) {
      return (dim * std::log(orig / (rotations * 2 * M_PI))) / (2 * std::log(base));
    };
    double low = std::max(std::floor(correction_dim(r.beta_fast)), 0.0);
    double high = std::min(std::ceil(correction_dim(r.beta_slow)), static_cast<double>(dim - 1));
    if (low == high) high += 0.001;
    at::Tensor pos_freqs = at::pow(at::scalar_tensor(base, opts), exponents);
    at::Tensor extrapolation = 1.0 / pos_freqs;
    at::Tensor interpolation = 1.0 / (factor * pos_freqs);
    at::Tensor ramp = ((at::arange(dim / 2, opts) - low) / (high - low)).clamp(0, 1);
    at::Tensor extrapolation_factor = 1 - ramp;
    inv_freq = interpolation * (1 - extrapolation_factor) + extrapolation * extrapolation_factor;
  }
  return {inv_freq, scaling};
}

std::pair<at::Tensor, at::Tensor> RopeCosSin(const at::Tensor& inv_freq, double attention_scaling,
                                             const at::Tensor& position_ids, at::ScalarType dtype) {
  at::Tensor freqs = position_ids.unsqueeze(-1).to(at::kFloat) * inv_freq.to(position_ids.device());
  at::Tensor emb = at::cat({freqs, freqs}, -1);  // [B, S, D]
  at::Tensor cos = emb.cos(), sin = emb.sin();
  if (attention_scaling != 1.0) {
    cos = cos * attention_scaling;
    sin = sin * attention_scaling;
  }
  return {cos.to(dtype), sin.to(dtype)};
}

at::Tensor ApplyRope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  if (OnKernelDevice(x)) {
    at::Tensor bshd = x.transpose(1, 2);  // [B, S, heads, D]
    if (bshd.is_contiguous() && kernels::RopeCudaSupports(bshd, cos, sin, {})) {
      return kernels::Rope(bshd, cos, sin).transpose(1, 2);
    }
  }
  const int64_t half = x.size(-1) / 2;
  at::Tensor rotated = at::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
  return x * cos.unsqueeze(1) + rotated * sin.unsqueeze(1);
}

at::Tensor PackedCausalMask(const at::Tensor& segment_ids) {
  if (!segment_ids.defined()) return {};
  const int64_t S = segment_ids.size(1);
  at::Tensor same_doc = segment_ids.unsqueeze(2).eq(segment_ids.unsqueeze(1));  // [B, S, S]
  at::Tensor causal = at::ones({S, S}, segment_ids.options().dtype(at::kBool)).tril();
  return same_doc.logical_and(causal).unsqueeze(1);
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

at::Tensor Attention(const at::Tensor& x, const AttentionWeights& w, const ModelConfig& c,
                     const AttentionContext& ctx) {
  const int64_t B = x.size(0), S = x.size(1), D = c.head_dim;
  const int64_t Hq = c.num_attention_heads, Hkv = c.num_key_value_heads;
  at::Tensor q, k, v;
  if (w.q_bias.defined() || w.k_bias.defined() || w.v_bias.defined()) {
    q = at::linear(x, w.q_proj, w.q_bias);
    k = at::linear(x, w.k_proj, w.k_bias);
    v = at::linear(x, w.v_proj, w.v_bias);
  } else {
    auto qkv = QkvProjection::apply(x, w.q_proj, w.k_proj, w.v_proj);
    q = qkv[0], k = qkv[1], v = qkv[2];
  }
  q = q.view({B, S, Hq, D});
  k = k.view({B, S, Hkv, D});
  v = v.view({B, S, Hkv, D});
  // q, k stay [B, S, heads, D] (contiguous on CUDA) through norm and rotation.
  if (c.qk_norm && OnKernelDevice(q) && kernels::RopeCudaSupports(q, ctx.cos, ctx.sin, w.q_norm) &&
      kernels::RopeCudaSupports(k, ctx.cos, ctx.sin, w.k_norm)) {
    // One read and one write per tensor for norm + rotation.
    q = kernels::RmsNormRope(q, w.q_norm, c.rms_norm_eps, ctx.cos, ctx.sin);
    k = kernels::RmsNormRope(k, w.k_norm, c.rms_norm_eps, ctx.cos, ctx.sin);
  } else {
    if (c.qk_norm) {
      q = RmsNorm(q, w.q_norm, c.rms_norm_eps);
      k = RmsNorm(k, w.k_norm, c.rms_norm_eps);
    }
    q = ApplyRope(q.transpose(1, 2), ctx.cos, ctx.sin).transpose(1, 2);
    k = ApplyRope(k.transpose(1, 2), ctx.cos, ctx.sin).transpose(1, 2);
  }
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  at::Tensor out;  // [B, S, Hq * D]
  if (ctx.varlen.cu_seqlens.defined()) {
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
  return at::linear(out, w.o_proj, w.o_bias);
}

at::Tensor DenseMlp(const at::Tensor& x, const DenseMlpWeights& w) {
  return at::linear(at::silu(at::linear(x, w.gate_proj)) * at::linear(x, w.up_proj), w.down_proj);
}

}  // namespace ftd::engine
