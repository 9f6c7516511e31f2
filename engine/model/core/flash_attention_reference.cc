#include "engine/model/core/flash_attention_reference.h"

#include <limits>

#include <ATen/ATen.h>

namespace ftd::engine {

namespace {

// fp16/bf16/fp32 compute in fp32 (as the kernel accumulates), fp64 in fp64.
at::ScalarType ComputeType(const at::Tensor& t) {
  return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// [T, T] bool: key j is visible to query i (same sequence, j <= i, i - j < window when window > 0).
at::Tensor AllowedKeys(const at::Tensor& cu_seqlens, int64_t T, int64_t window, at::Device device) {
  at::Tensor cu = cu_seqlens.to(at::kCPU, at::kLong).contiguous();
  const int64_t* bounds = cu.const_data_ptr<int64_t>();
  const int64_t N = cu.numel() - 1;
  TORCH_CHECK(N >= 1 && bounds[0] == 0 && bounds[N] == T, "flash reference: cu_seqlens must run from 0 to ", T,
              " tokens, got ", cu);
  at::Tensor sequence = at::empty({T}, at::kLong);
  for (int64_t n = 0; n < N; ++n) sequence.narrow(0, bounds[n], bounds[n + 1] - bounds[n]).fill_(n);
  sequence = sequence.to(device);
  at::Tensor pos = at::arange(T, at::TensorOptions().dtype(at::kLong).device(device));
  at::Tensor distance = pos.unsqueeze(1) - pos.unsqueeze(0);  // [T, T]: i - j
  at::Tensor allowed = sequence.unsqueeze(1).eq(sequence.unsqueeze(0)).logical_and(distance.ge(0));
  if (window > 0) allowed = allowed.logical_and(distance.lt(window));
  return allowed;
}

// [T, heads, D] -> [Hq, T, D] in `type`, K/V heads repeated to their q heads.
at::Tensor HeadsFirst(const at::Tensor& t, int64_t q_heads, at::ScalarType type) {
  at::Tensor h = t.to(type).transpose(0, 1);
  return t.size(1) == q_heads ? h : h.repeat_interleave(q_heads / t.size(1), 0);
}

// Masked scores [Hq, T, T] in the compute type.
at::Tensor Scores(const at::Tensor& qh, const at::Tensor& kh, const at::Tensor& allowed, double scale) {
  return at::matmul(qh, kh.transpose(1, 2)).mul_(scale).masked_fill_(allowed.logical_not(),
                                                                    -std::numeric_limits<double>::infinity());
}

// [Hq, T, D] gradients of repeated K/V heads -> [T, Hkv, D], summed over each group.
at::Tensor SumGroups(const at::Tensor& per_q_head, int64_t kv_heads, at::ScalarType type) {
  const int64_t Hq = per_q_head.size(0), T = per_q_head.size(1), D = per_q_head.size(2);
  return per_q_head.view({kv_heads, Hq / kv_heads, T, D}).sum(1).transpose(0, 1).to(type).contiguous();
}

}  // namespace

std::pair<at::Tensor, at::Tensor> FlashAttentionReferenceForward(const at::Tensor& q, const at::Tensor& k,
                                                                 const at::Tensor& v, const at::Tensor& cu_seqlens,
                                                                 int64_t window, double scale) {
  const int64_t T = q.size(0), Hq = q.size(1);
  const at::ScalarType ct = ComputeType(q);
  at::Tensor qh = HeadsFirst(q, Hq, ct), kh = HeadsFirst(k, Hq, ct), vh = HeadsFirst(v, Hq, ct);
  at::Tensor scores = Scores(qh, kh, AllowedKeys(cu_seqlens, T, window, q.device()), scale);  // [Hq, T, T]
  at::Tensor lse = at::logsumexp(scores, -1);                                                   // [Hq, T]
  at::Tensor out = at::matmul(at::exp(scores - lse.unsqueeze(-1)), vh);                         // [Hq, T, D]
  return {out.transpose(0, 1).to(q.scalar_type()).contiguous(), lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> FlashAttentionReferenceBackward(
    const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
    const at::Tensor& logsumexp, const at::Tensor& cu_seqlens, int64_t window, double scale) {
  const int64_t T = q.size(0), Hq = q.size(1), Hkv = k.size(1);
  const at::ScalarType ct = ComputeType(q);
  at::Tensor qh = HeadsFirst(q, Hq, ct), kh = HeadsFirst(k, Hq, ct), vh = HeadsFirst(v, Hq, ct);
  at::Tensor doh = HeadsFirst(dout, Hq, ct), oh = HeadsFirst(out, Hq, ct);
  at::Tensor scores = Scores(qh, kh, AllowedKeys(cu_seqlens, T, window, q.device()), scale);
  at::Tensor probs = at::exp(scores - logsumexp.to(ct).unsqueeze(-1));  // [Hq, T, T], recomputed
  at::Tensor row_term = (doh * oh).sum(-1, /*keepdim=*/true);           // D [Hq, T, 1], from `out`
  at::Tensor dscores = probs * (at::matmul(doh, vh.transpose(1, 2)) - row_term);
  at::Tensor dq = at::matmul(dscores, kh).mul_(scale).transpose(0, 1).to(q.scalar_type()).contiguous();
  at::Tensor dk = SumGroups(at::matmul(dscores.transpose(1, 2), qh).mul_(scale), Hkv, k.scalar_type());
  at::Tensor dv = SumGroups(at::matmul(probs.transpose(1, 2), doh), Hkv, v.scalar_type());
  return {dq, dk, dv};
}

}  // namespace ftd::engine
