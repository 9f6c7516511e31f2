#include "engine/model/core/mla_attention.h"

#include <ATen/ATen.h>

#include "engine/model/core/norms.h"
#include "engine/model/core/rope.h"
#include "engine/model/lora.h"
#include "engine/model/varlen_attention.h"

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
  at::Tensor k_rope = compressed.narrow(-1, m.kv_lora_rank, dr).unsqueeze(1);  // [B, 1, S, dr]
  at::Tensor kv = LinearWithLora(RmsNorm(latent, w.kv_a_norm, kMlaLatentNormEps), w.kv_b_proj, {}, w.kv_b_lora)
                      .view({B, S, Hq, dn + dv});                               // [B, S, Hq, dn + dv]

  // Rotary part: q [B, Hq, S, dr], k [B, 1, S, dr] (one head, shared).
  at::Tensor q_rope = q.narrow(-1, dn, dr).transpose(1, 2);
  if (c.rope.interleave) {
    q_rope = ApplyRopeInterleaved(q_rope, ctx.cos, ctx.sin);
    k_rope = ApplyRopeInterleaved(k_rope, ctx.cos, ctx.sin);
  } else {
    q_rope = ApplyRope(q_rope, ctx.cos, ctx.sin);
    k_rope = ApplyRope(k_rope, ctx.cos, ctx.sin);
  }
  // [B, S, Hq, dqk] each; k's rotary part broadcast to every head.
  at::Tensor query = at::cat({q.narrow(-1, 0, dn), q_rope.transpose(1, 2)}, -1);
  at::Tensor key = at::cat({kv.narrow(-1, 0, dn), k_rope.transpose(1, 2).expand({B, S, Hq, dr})}, -1);
  at::Tensor value = kv.narrow(-1, dn, dv);

  const double scale = c.AttentionScale();
  // CUDA: flash needs one head size; V padded to dqk (zeros), the output columns past dv dropped.
  const bool pad_value = x.is_cuda() && dv < dqk;
  if (pad_value) value = at::constant_pad_nd(value, {0, dqk - dv});
  at::Tensor out;  // [B, S, Hq, dv or dqk]
  if (ctx.varlen.cu_seqlens.defined()) {
    out = VarlenCausalAttention(query.reshape({B * S, Hq, dqk}), key.reshape({B * S, Hq, dqk}),
                                value.reshape({B * S, Hq, value.size(-1)}), ctx.varlen, scale)
              .view({B, S, Hq, -1});
  } else {
    at::Tensor qt = query.transpose(1, 2), kt = key.transpose(1, 2), vt = value.transpose(1, 2);
    out = ctx.mask.defined()
              ? at::scaled_dot_product_attention(qt, kt, vt, ctx.mask, 0.0, /*is_causal=*/false, scale)
              : at::scaled_dot_product_attention(qt, kt, vt, {}, 0.0, /*is_causal=*/true, scale);
    out = out.transpose(1, 2);
  }
  if (pad_value) out = out.narrow(-1, 0, dv);
  return LinearWithLora(out.reshape({B, S, Hq * dv}), w.o_proj, w.o_bias, w.o_lora);
}

}  // namespace ftd::engine
