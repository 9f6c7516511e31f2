#include "engine/model/varlen_attention.h"

#include <algorithm>
#include <limits>
#include <optional>

#include <ATen/ATen.h>
#include <ATen/ops/_flash_attention_backward.h>
#include <ATen/ops/_flash_attention_forward.h>
#include <torch/csrc/autograd/custom_function.h>

namespace ftd::engine {

std::vector<int32_t> CuSeqlensFromSegmentIds(const int64_t* segment_ids, int64_t B, int64_t S, int64_t* max_seqlen) {
  TORCH_CHECK(B * S <= std::numeric_limits<int32_t>::max(), "varlen attention: B * S = ", B * S,
              " tokens exceed the int32 offsets of cu_seqlens");
  std::vector<int32_t> cu = {0};
  int64_t longest = 0;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t* row = segment_ids + b * S;
    for (int64_t i = 1; i <= S; ++i) {
      if (i == S || row[i] != row[i - 1]) {  // a run ends: at the row end or where the id changes
        const int64_t end = b * S + i;
        longest = std::max<int64_t>(longest, end - cu.back());
        cu.push_back(static_cast<int32_t>(end));
      }
    }
  }
  if (max_seqlen) *max_seqlen = longest;
  return cu;
}

VarlenBoundaries VarlenBoundariesFromSegmentIds(const at::Tensor& segment_ids, c10::Device device) {
  TORCH_CHECK(segment_ids.dim() == 2, "varlen attention: segment_ids must be [B, S], got ", segment_ids.sizes());
  TORCH_CHECK(!at::isFloatingType(segment_ids.scalar_type()),
              "varlen attention: segment_ids must be integers, got ", segment_ids.scalar_type());
  // No-op for the CPU segment ids the trainer passes; one small device-to-host copy otherwise.
  at::Tensor ids = segment_ids.to(at::kCPU, at::kLong).contiguous();
  const int64_t B = ids.size(0), S = ids.size(1);
  VarlenBoundaries out;
  std::vector<int32_t> cu = CuSeqlensFromSegmentIds(ids.const_data_ptr<int64_t>(), B, S, &out.max_seqlen);
  out.num_sequences = static_cast<int64_t>(cu.size()) - 1;
  out.total_tokens = B * S;
  out.cu_seqlens = at::tensor(at::ArrayRef<int32_t>(cu), at::TensorOptions().dtype(at::kInt)).to(device);
  return out;
}

bool VarlenAttentionSupports(c10::Device device, c10::ScalarType dtype, int64_t head_dim, int64_t q_heads,
                             int64_t kv_heads) {
  return device.is_cuda() && (dtype == at::kHalf || dtype == at::kBFloat16) && head_dim % 8 == 0 &&
         head_dim > 0 && head_dim <= 256 && kv_heads > 0 && q_heads % kv_heads == 0;
}

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// FlashAttention-2 (ATen's vendored copy) in its variable-length mode. Signatures as declared
// in LibTorch 2.11's ATen/ops/_flash_attention_{forward,backward}.h; the forward's outputs and
// what the backward takes back mirror ATen's own autograd formula for this op
// (FlashAttentionBackward0 in torch/csrc/autograd/generated/Functions.h saves output,
// softmax_logsumexp, rng_state and unused) and torch.nn.attention.varlen.
struct VarlenAttentionFunction : public torch::autograd::Function<VarlenAttentionFunction> {
  // q [T, Hq, D], k, v [T, Hkv, D], cu_seqlens [N + 1] int32 -> out [T, Hq, D].
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const at::Tensor& cu_seqlens, int64_t max_seqlen, double scale) {
    // Outputs: out [T, Hq, D]; logsumexp [Hq, T] fp32 (3-D varlen layout, see the op's meta
    // function in torch/_meta_registrations.py); rng_state and `unused` (dropout's Philox
    // state, meaningless with dropout 0 but what the backward expects); an empty debug mask.
    auto [out, logsumexp, rng_state, unused, debug_mask] = at::_flash_attention_forward(
        q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, /*dropout_p=*/0.0, /*is_causal=*/true,
        /*return_debug_mask=*/false, scale);
    (void)debug_mask;
    ctx->save_for_backward({q, k, v, out, logsumexp, cu_seqlens, rng_state, unused});
    ctx->saved_data["max_seqlen"] = max_seqlen;
    ctx->saved_data["scale"] = scale;
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list s = ctx->get_saved_variables();
    const at::Tensor &q = s[0], &k = s[1], &v = s[2], &out = s[3], &logsumexp = s[4], &cu_seqlens = s[5];
    const int64_t max_seqlen = ctx->saved_data["max_seqlen"].toInt();
    const double scale = ctx->saved_data["scale"].toDouble();
    // dq [T, Hq, D]; dk, dv [T, Hkv, D] (the kernel sums the query heads of each KV group).
    auto [dq, dk, dv] = at::_flash_attention_backward(grads[0].contiguous(), q, k, v, out, logsumexp, cu_seqlens,
                                                      cu_seqlens, max_seqlen, max_seqlen, /*dropout_p=*/0.0,
                                                      /*is_causal=*/true, /*rng_state=*/s[6], /*unused=*/s[7], scale);
    return {dq, dk, dv, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor VarlenCausalAttention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                 const VarlenBoundaries& boundaries, double scale) {
  TORCH_CHECK(q.dim() == 3 && k.dim() == 3 && v.sizes() == k.sizes(),
              "varlen attention: q must be [T, Hq, D] and k, v [T, Hkv, D]; got q ", q.sizes(), ", k ", k.sizes(),
              ", v ", v.sizes());
  TORCH_CHECK(q.size(0) == k.size(0) && q.size(2) == k.size(2), "varlen attention: q ", q.sizes(), " and k ",
              k.sizes(), " disagree in tokens or head_dim");
  TORCH_CHECK(boundaries.cu_seqlens.defined() && q.size(0) == boundaries.total_tokens,
              "varlen attention: ", q.size(0), " tokens but cu_seqlens covers ", boundaries.total_tokens);
  TORCH_CHECK(VarlenAttentionSupports(q.device(), q.scalar_type(), q.size(2), q.size(1), k.size(1)) &&
                  k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(),
              "varlen attention: unsupported q ", q.scalar_type(), q.sizes(), " on ", q.device(), " with k ",
              k.scalar_type(), k.sizes());
  TORCH_CHECK(q.stride(-1) == 1 && k.stride(-1) == 1 && v.stride(-1) == 1,
              "varlen attention: the head dimension must be contiguous");
  return VarlenAttentionFunction::apply(q, k, v, boundaries.cu_seqlens, boundaries.max_seqlen, scale);
}

}  // namespace ftd::engine
