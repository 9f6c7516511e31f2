// Causal attention over packed documents without a [S, S] mask: the B rows of a micro-batch are
// flattened to T = B * S tokens, every document (a maximal run of equal segment ids within a
// row) becomes one sequence of FlashAttention-2's variable-length interface (cu_seqlens), and
// each sequence attends causally to itself only. CUDA (fp16/bf16) only; CPU keeps the dense
// block-causal mask (core/gqa_attention.h PackedCausalMask), which is the reference for this path.
#pragma once

#include <cstdint>
#include <vector>

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

namespace ftd::engine {

// Document boundaries of one micro-batch, built once per batch and shared by every layer.
struct VarlenBoundaries {
  at::Tensor cu_seqlens;      // [N + 1] int32 on the attention device: sequence k is tokens
                              // [cu_seqlens[k], cu_seqlens[k + 1]) of the flattened [B * S]
  int64_t max_seqlen = 0;     // longest sequence (host value: the kernels size their grid by it)
  int64_t num_sequences = 0;  // N
  int64_t total_tokens = 0;   // T = B * S = cu_seqlens[N]
};

// Host-side boundaries of segment_ids [B, S] given as row-major values: a new sequence starts
// at every row start and wherever the id changes. Padding needs no special case: whatever id
// it carries (its own segment from the packer, -1 from the collator), a padding run is a
// sequence of its own and attends only to padding. Returns [0, ..., B * S] (N + 1 entries) and
// the longest sequence in *max_seqlen.
std::vector<int32_t> CuSeqlensFromSegmentIds(const int64_t* segment_ids, int64_t B, int64_t S, int64_t* max_seqlen);

// The same from a tensor (any device; on CPU no device sync is needed, so pass the batch's
// segment ids before they are moved), with cu_seqlens placed on `device`.
VarlenBoundaries VarlenBoundariesFromSegmentIds(const at::Tensor& segment_ids, c10::Device device);

// Whether VarlenCausalAttention serves activations of `dtype` on `device` with these heads:
// CUDA, fp16 or bf16, head_dim a multiple of 8 up to 256, q_heads a multiple of kv_heads (GQA
// without repeating K/V). FlashAttention-2 needs sm80+; the project builds for sm90 only.
bool VarlenAttentionSupports(c10::Device device, c10::ScalarType dtype, int64_t head_dim, int64_t q_heads,
                             int64_t kv_heads);

// Causal attention within each sequence of `boundaries`, differentiable in q, k and v.
// q [T, Hq, D], k, v [T, Hkv, D] (last dim contiguous; [B * S, heads, D] views of
// [B, S, heads, D] tensors need no copy) -> [T, Hq, D].
at::Tensor VarlenCausalAttention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                 const VarlenBoundaries& boundaries, double scale);

}  // namespace ftd::engine
