#include "engine/model/core/sink_attention_flash.h"

#include <optional>

#include <ATen/ATen.h>
#include <ATen/ops/_flash_attention_backward.h>
#include <ATen/ops/_flash_attention_forward.h>
#include <torch/csrc/autograd/custom_function.h>

#include "engine/model/core/flash_attention_reference.h"

namespace ftd::engine {

bool SinkAttentionFlashSupports(c10::Device device, c10::ScalarType dtype, int64_t head_dim, int64_t q_heads,
                                int64_t kv_heads) {
  if (device.is_cpu()) return at::isFloatingType(dtype) && kv_heads > 0 && q_heads % kv_heads == 0;
  return VarlenAttentionSupports(device, dtype, head_dim, q_heads, kv_heads);
}

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// FlashAttention's window arguments for HF's sliding window: keys i - (window - 1) .. i.
std::optional<int64_t> WindowLeft(int64_t window) { return window > 0 ? std::optional<int64_t>(window - 1) : std::nullopt; }
std::optional<int64_t> WindowRight(int64_t window) { return window > 0 ? std::optional<int64_t>(0) : std::nullopt; }

// softmax over the real keys only: out [T, Hq, D], logsumexp [Hq, T]; on CUDA also the
// kernel's rng_state and `unused` its backward takes back (dropout is 0: meaningless values).
struct KernelForward {
  at::Tensor out, logsumexp, rng_state, unused;
};

KernelForward RunForward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& cu_seqlens,
                         int64_t max_seqlen, int64_t window, double scale) {
  if (!q.is_cuda()) {
    auto [out, lse] = FlashAttentionReferenceForward(q, k, v, cu_seqlens, window, scale);
    return {out, lse, at::Tensor(), at::Tensor()};
  }
  auto [out, lse, rng_state, unused, debug_mask] = at::_flash_attention_forward(
      q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, /*dropout_p=*/0.0, /*is_causal=*/true,
      /*return_debug_mask=*/false, scale, WindowLeft(window), WindowRight(window));
  (void)debug_mask;
  return {out, lse, rng_state, unused};
}

struct SinkAttentionFlashFunction : public torch::autograd::Function<SinkAttentionFlashFunction> {
  // q [T, Hq, D], k, v [T, Hkv, D], sinks [Hq], cu_seqlens [N + 1] int32 -> [T, Hq, D].
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const at::Tensor& sinks, const at::Tensor& cu_seqlens, int64_t max_seqlen, int64_t window,
                            double scale) {
    KernelForward f = RunForward(q, k, v, cu_seqlens, max_seqlen, window, scale);
    // r [Hq, T] in the logsumexp's precision (fp32; fp64 for fp64 inputs): the real keys' share.
    at::Tensor r = at::sigmoid(f.logsumexp - sinks.to(f.logsumexp.scalar_type()).unsqueeze(1));
    at::Tensor out = (f.out.to(r.scalar_type()) * r.t().unsqueeze(-1)).to(q.scalar_type());  // O_sink [T, Hq, D]
    // O_sink, not O: the backward's row term needs it (header), and the caller holds it anyway.
    ctx->save_for_backward({q, k, v, out, f.logsumexp, r, cu_seqlens, f.rng_state, f.unused});
    ctx->saved_data["max_seqlen"] = max_seqlen;
    ctx->saved_data["window"] = window;
    ctx->saved_data["scale"] = scale;
    ctx->saved_data["sinks_dtype"] = sinks.scalar_type();
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list s = ctx->get_saved_variables();
    const at::Tensor &q = s[0], &k = s[1], &v = s[2], &out = s[3], &lse = s[4], &r = s[5], &cu_seqlens = s[6];
    const int64_t max_seqlen = ctx->saved_data["max_seqlen"].toInt();
    const int64_t window = ctx->saved_data["window"].toInt();
    const double scale = ctx->saved_data["scale"].toDouble();
    const at::ScalarType ct = r.scalar_type();
    const at::Tensor g = grads[0].contiguous();  // G [T, Hq, D]
    const at::Tensor r_rows = r.t().unsqueeze(-1);  // [T, Hq, 1]
    // dout = r * G; `out` = O_sink makes the kernel's D = rowsum(dout * O_sink) the sink-corrected one.
    at::Tensor dout = (g.to(ct) * r_rows).to(q.scalar_type());
    at::Tensor dq, dk, dv;
    if (q.is_cuda()) {
      std::tie(dq, dk, dv) = at::_flash_attention_backward(dout, q, k, v, out, lse, cu_seqlens, cu_seqlens, max_seqlen,
                                                           max_seqlen, /*dropout_p=*/0.0, /*is_causal=*/true, s[7],
                                                           s[8], scale, WindowLeft(window), WindowRight(window));
    } else {
      std::tie(dq, dk, dv) = FlashAttentionReferenceBackward(dout, q, k, v, out, lse, cu_seqlens, window, scale);
    }
    // dsink [Hq] = -sum_t (1 - r) * rowsum(G * O_sink): the sink's probability is 1 - r, its value 0.
    at::Tensor g_dot_out = (g.to(ct) * out.to(ct)).sum(-1);  // [T, Hq]
    at::Tensor dsinks = (g_dot_out * (1 - r).t()).sum(0).neg().to(ctx->saved_data["sinks_dtype"].toScalarType());
    return {dq, dk, dv, dsinks, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor SinkAttentionFlash(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& sinks,
                              const VarlenBoundaries& documents, int64_t window, double scale) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.sizes() == k.sizes() && q.size(0) == k.size(0) &&
                  q.size(1) == k.size(1) && q.size(3) == k.size(3),
              "SinkAttentionFlash: q must be [B, S, Hq, D] and k, v [B, S, Hkv, D]; got q ", q.sizes(), ", k ",
              k.sizes(), ", v ", v.sizes());
  const int64_t B = q.size(0), S = q.size(1), Hq = q.size(2), D = q.size(3), Hkv = k.size(2), T = B * S;
  TORCH_CHECK(sinks.dim() == 1 && sinks.size(0) == Hq, "SinkAttentionFlash: sinks must be [", Hq, "], got ",
              sinks.sizes());
  TORCH_CHECK(SinkAttentionFlashSupports(q.device(), q.scalar_type(), D, Hq, Hkv) &&
                  k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(),
              "SinkAttentionFlash: unsupported q ", q.scalar_type(), q.sizes(), " on ", q.device(), " with k ",
              k.scalar_type(), k.sizes(), " (CUDA needs fp16/bf16, head_dim a multiple of 8 up to 256)");
  at::Tensor cu_seqlens;
  int64_t max_seqlen = S;
  if (documents.cu_seqlens.defined()) {
    TORCH_CHECK(documents.total_tokens == T, "SinkAttentionFlash: ", T, " tokens but the document boundaries cover ",
                documents.total_tokens);
    cu_seqlens = documents.cu_seqlens;
    max_seqlen = documents.max_seqlen;
  } else {
    // One sequence per row, built on the device (no host copy: capturable in a CUDA graph).
    cu_seqlens = at::arange(0, T + 1, S, at::TensorOptions().dtype(at::kInt).device(q.device()));
  }
  // [B * S, heads, D] views: copies only where the layout is strided (the kernel needs dense rows).
  at::Tensor out = SinkAttentionFlashFunction::apply(q.reshape({T, Hq, D}).contiguous(),
                                                     k.reshape({T, Hkv, D}).contiguous(),
                                                     v.reshape({T, Hkv, D}).contiguous(), sinks, cu_seqlens,
                                                     max_seqlen, window, scale);
  return out.view({B, S, Hq, D});
}

}  // namespace ftd::engine
