#include "engine/model/core/mla_attention.h"

#include <optional>

#include <ATen/ATen.h>
#include <ATen/SDPBackend.h>

#include "engine/model/core/norms.h"
#include "engine/model/lora.h"
#include "engine/model/varlen_attention.h"
#include "kernels/mla_qkv.h"

namespace ftd::engine {

at::Tensor MlaAttention(const at::Tensor& x, const AttentionWeights& w, const ModelConfig& c,
                        const AttentionContext& ctx) {
  const int64_t B = x.size(0), S = x.size(1), Hq = c.num_attention_heads;
  const MlaConfig& m = c.mla;
  const int64_t dn = m.qk_nope_head_dim, dr = m.qk_rope_head_dim, dv = m.v_head_dim, dqk = dn + dr;

  at::Tensor q = w.q_b_proj.defined()
                     ? LinearWithLora(RmsNorm(LinearWithLora(x, w.q_a_proj, w.q_a_bias, w.q_a_lora), w.q_a_norm,
                                              kMlaLatentNormEps),
                                      w.q_b_proj, {}, w.q_b_lora)
                     : LinearWithLora(x, w.q_proj, {}, w.q_lora);                // [B, S, Hq * dqk]
  q = q.view({B, S, Hq, dqk});
  at::Tensor compressed = LinearWithLora(x, w.kv_a_proj, w.kv_a_bias, w.kv_a_lora);  // [B, S, kv_lora + dr]
  at::Tensor latent = compressed.narrow(-1, 0, m.kv_lora_rank);
  at::Tensor k_rope = compressed.narrow(-1, m.kv_lora_rank, dr);  // [B, S, dr], one head shared by all
  at::Tensor kv = LinearWithLora(RmsNorm(latent, w.kv_a_norm, kMlaLatentNormEps), w.kv_b_proj, {}, w.kv_b_lora)
                      .view({B, S, Hq, dn + dv});                               // [B, S, Hq, dn + dv]

  // query, key [B, S, Hq, dqk] (rotary columns rotated, k's broadcast to every head), value
  // [B, S, Hq, dv]: one fused kernel on CUDA. Flash attention (and its varlen kernel) needs one
  // head size: there V is zero-padded to dqk and the output's padding dropped; cuDNN takes dv < dqk.
  const bool varlen = ctx.varlen.cu_seqlens.defined();
  const bool pad_for_varlen = varlen && x.is_cuda() && dv < dqk;
  const kernels::MlaQkv qkv =
      kernels::MlaQueryKeyValue(q, kv, k_rope, ctx.cos, ctx.sin, dn, pad_for_varlen ? dqk : dv, c.rope.interleave);
  const double scale = c.AttentionScale();
  at::Tensor out;  // [B, S, Hq, value width]
  if (varlen) {
    out = VarlenCausalAttention(qkv.query.reshape({B * S, Hq, dqk}), qkv.key.reshape({B * S, Hq, dqk}),
                                qkv.value.reshape({B * S, Hq, qkv.value.size(-1)}), ctx.varlen, scale)
              .view({B, S, Hq, -1});
  } else {
    at::Tensor qt = qkv.query.transpose(1, 2), kt = qkv.key.transpose(1, 2), vt = qkv.value.transpose(1, 2);
    const bool causal = !ctx.mask.defined();
    const std::optional<at::Tensor> mask = causal ? std::nullopt : std::optional<at::Tensor>(ctx.mask);
    constexpr auto kCudnn = static_cast<int64_t>(at::SDPBackend::cudnn_attention);
    if (x.is_cuda() && dv < dqk && at::_fused_sdp_choice(qt, kt, vt, mask, 0.0, causal, scale) != kCudnn) {
      vt = at::constant_pad_nd(vt, {0, dqk - dv});  // for flash
    }
    out = at::scaled_dot_product_attention(qt, kt, vt, mask, 0.0, causal, scale).transpose(1, 2);
  }
  if (out.size(-1) > dv) out = out.narrow(-1, 0, dv);
  return LinearWithLora(out.reshape({B, S, Hq * dv}), w.o_proj, w.o_bias, w.o_lora);
}

}  // namespace ftd::engine
