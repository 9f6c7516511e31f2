// MLA's attention inputs from its projections (DeepSeek-V3 attention,
// engine/model/core/mla_attention.cc), with dn = nope_dim, dr the rotary width, dv the value width:
//   query [B, S, H, dn + dr]  = [q_nope | rope(q_rope)]           from q [B, S, H, dn + dr]
//   key   [B, S, H, dn + dr]  = [k_nope | rope(k_rope), each head] from kv [B, S, H, dn + dv]
//                                                                   and k_rope [B, S, dr] (one head)
//   value [B, S, H, v_width]  = [v | zeros]                        from kv; v_width >= dv (zero
//                                                                   padding for kernels that need one head size)
// rope is HF's rotate-half; with `interleave` DeepSeek-V3's pairs (x0, x1), (x2, x3), ... rotate
// together and the result is in rotate-half order, as HF's apply_rotary_pos_emb_interleave
// returns it. cos/sin [B or 1, S, dr].
//
// CUDA: one kernel writes the three tensors and one kernel their gradients (dq, dkv, and dk_rope
// summed over the heads), in place of the ATen path's slicing, rotation, concatenation and
// padding (~20 small kernels a layer each way). The rotation runs in fp32 and rounds once.
#pragma once

#include <cstdint>
#include <tuple>

#include <ATen/core/Tensor.h>

namespace ftd::kernels {

struct MlaQkv {
  at::Tensor query;  // [B, S, H, dn + dr]
  at::Tensor key;    // [B, S, H, dn + dr]
  at::Tensor value;  // [B, S, H, v_width]
};

// Differentiable in q, kv and k_rope. The kernels run where MlaQkvCudaSupports; elsewhere the reference.
MlaQkv MlaQueryKeyValue(const at::Tensor& q, const at::Tensor& kv, const at::Tensor& k_rope, const at::Tensor& cos,
                        const at::Tensor& sin, int64_t nope_dim, int64_t v_width, bool interleave);

// The same with ATen ops (any device, differentiable by autograd).
MlaQkv MlaQueryKeyValueReference(const at::Tensor& q, const at::Tensor& kv, const at::Tensor& k_rope,
                                 const at::Tensor& cos, const at::Tensor& sin, int64_t nope_dim, int64_t v_width,
                                 bool interleave);

// CUDA tensors of one floating dtype; q and kv contiguous; k_rope's rows unit-stride; every width
// a multiple of 16 bytes' elements; dr even.
bool MlaQkvCudaSupports(const at::Tensor& q, const at::Tensor& kv, const at::Tensor& k_rope, const at::Tensor& cos,
                        const at::Tensor& sin, int64_t nope_dim, int64_t v_width);

// Raw CUDA launchers (FTD_WITH_CUDA; CPU-only builds define them to throw).
// Returns (query, key, value).
std::tuple<at::Tensor, at::Tensor, at::Tensor> MlaQkvForwardCuda(const at::Tensor& q, const at::Tensor& kv,
                                                                 const at::Tensor& k_rope, const at::Tensor& cos,
                                                                 const at::Tensor& sin, int64_t nope_dim,
                                                                 int64_t v_width, bool interleave);
// dquery, dkey [B, S, H, dn + dr] and dvalue [B, S, H, v_width] contiguous; returns (dq, dkv, dk_rope)
// with dkv [B, S, H, dn + dv] and dk_rope [B, S, dr] (the value padding's gradient dropped).
std::tuple<at::Tensor, at::Tensor, at::Tensor> MlaQkvBackwardCuda(const at::Tensor& dquery, const at::Tensor& dkey,
                                                                  const at::Tensor& dvalue, const at::Tensor& cos,
                                                                  const at::Tensor& sin, int64_t nope_dim,
                                                                  int64_t v_dim, bool interleave);

}  // namespace ftd::kernels
