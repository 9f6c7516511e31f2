#include "kernels/mla_qkv.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>

#include "kernels/rope.h"

namespace ftd::kernels {

namespace {

// x [B, S, H, dr] rotated by cos/sin [B or 1, S, dr]; interleaved pairs first gathered into
// rotate-half order ([evens | odds]).
at::Tensor RotateRows(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, bool interleave) {
  at::Tensor split = x;
  if (interleave) {
    std::vector<int64_t> pairs = x.sizes().vec();
    pairs.back() /= 2;
    pairs.push_back(2);
    split = x.reshape(pairs).transpose(-1, -2).reshape(x.sizes());
  }
  return RopeReference(split, cos, sin);
}

}  // namespace

MlaQkv MlaQueryKeyValueReference(const at::Tensor& q, const at::Tensor& kv, const at::Tensor& k_rope,
                                 const at::Tensor& cos, const at::Tensor& sin, int64_t nope_dim, int64_t v_width,
                                 bool interleave) {
  const int64_t dn = nope_dim, dr = q.size(-1) - dn, dv = kv.size(-1) - dn;
  const int64_t B = q.size(0), S = q.size(1), H = q.size(2);
  MlaQkv out;
  out.query = at::cat({q.narrow(-1, 0, dn), RotateRows(q.narrow(-1, dn, dr), cos, sin, interleave)}, -1);
  at::Tensor k_rotated = RotateRows(k_rope.unsqueeze(2), cos, sin, interleave);  // [B, S, 1, dr]
  out.key = at::cat({kv.narrow(-1, 0, dn), k_rotated.expand({B, S, H, dr})}, -1);
  out.value = kv.narrow(-1, dn, dv);
  if (v_width > dv) out.value = at::constant_pad_nd(out.value, {0, v_width - dv});
  return out;
}

bool MlaQkvCudaSupports(const at::Tensor& q, const at::Tensor& kv, const at::Tensor& k_rope, const at::Tensor& cos,
                        const at::Tensor& sin, int64_t nope_dim, int64_t v_width) {
  if (!q.is_cuda() || !kv.is_cuda() || !k_rope.is_cuda() || !cos.is_cuda() || !sin.is_cuda()) return false;
  if (q.dim() != 4 || kv.dim() != 4 || k_rope.dim() != 3 || cos.dim() != 3 || sin.sizes() != cos.sizes()) return false;
  const auto t = q.scalar_type();
  if (t != at::kFloat && t != at::kBFloat16 && t != at::kHalf) return false;
  for (const at::Tensor* o : {&kv, &k_rope, &cos, &sin}) {
    if (o->scalar_type() != t) return false;
  }
  const int64_t B = q.size(0), S = q.size(1), H = q.size(2), dn = nope_dim, dr = q.size(3) - dn, dv = kv.size(3) - dn;
  if (dn < 0 || dr <= 0 || dr % 2 != 0 || dr > 256 || dv <= 0 || v_width < dv) return false;
  if (kv.size(0) != B || kv.size(1) != S || kv.size(2) != H) return false;
  if (k_rope.size(0) != B || k_rope.size(1) != S || k_rope.size(2) != dr) return false;
  if (cos.size(1) != S || cos.size(2) != dr || (cos.size(0) != 1 && cos.size(0) != B)) return false;
  if (!q.is_contiguous() || !kv.is_contiguous() || !cos.is_contiguous() || !sin.is_contiguous()) return false;
  if (k_rope.stride(2) != 1 || k_rope.stride(0) != S * k_rope.stride(1)) return false;
  const int64_t vec = 16 / static_cast<int64_t>(q.element_size());
  return dn % vec == 0 && dr % vec == 0 && dv % vec == 0 && v_width % vec == 0 &&
         reinterpret_cast<uintptr_t>(q.data_ptr()) % 16 == 0 && reinterpret_cast<uintptr_t>(kv.data_ptr()) % 16 == 0;
}

#ifdef FTD_WITH_CUDA
namespace {

struct MlaQkvFunction : public torch::autograd::Function<MlaQkvFunction> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& q,
                                                const at::Tensor& kv, const at::Tensor& k_rope, const at::Tensor& cos,
                                                const at::Tensor& sin, int64_t nope_dim, int64_t v_width,
                                                bool interleave) {
    ctx->save_for_backward({cos, sin});
    ctx->saved_data["nope_dim"] = nope_dim;
    ctx->saved_data["v_dim"] = kv.size(-1) - nope_dim;
    ctx->saved_data["interleave"] = interleave;
    ctx->saved_data["qk_sizes"] = q.sizes().vec();
    ctx->saved_data["v_width"] = v_width;
    auto [query, key, value] = MlaQkvForwardCuda(q, kv, k_rope, cos, sin, nope_dim, v_width, interleave);
    return {query, key, value};
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const std::vector<int64_t> qk_sizes = ctx->saved_data["qk_sizes"].toIntVector();
    std::vector<int64_t> v_sizes = qk_sizes;
    v_sizes.back() = ctx->saved_data["v_width"].toInt();
    // An output that got no gradient (unused) counts as zeros.
    auto dense = [&](const at::Tensor& g, const std::vector<int64_t>& sizes) {
      return g.defined() ? g.contiguous() : at::zeros(sizes, saved[0].options());
    };
    auto [dq, dkv, dk_rope] = MlaQkvBackwardCuda(
        dense(grads[0], qk_sizes), dense(grads[1], qk_sizes), dense(grads[2], v_sizes), saved[0], saved[1],
        ctx->saved_data["nope_dim"].toInt(), ctx->saved_data["v_dim"].toInt(), ctx->saved_data["interleave"].toBool());
    return {dq, dkv, dk_rope, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace
#endif

MlaQkv MlaQueryKeyValue(const at::Tensor& q, const at::Tensor& kv, const at::Tensor& k_rope, const at::Tensor& cos,
                        const at::Tensor& sin, int64_t nope_dim, int64_t v_width, bool interleave) {
#ifdef FTD_WITH_CUDA
  if (MlaQkvCudaSupports(q, kv, k_rope, cos, sin, nope_dim, v_width)) {
    auto outs = MlaQkvFunction::apply(q, kv, k_rope, cos, sin, nope_dim, v_width, interleave);
    return {outs[0], outs[1], outs[2]};
  }
#endif
  return MlaQueryKeyValueReference(q, kv, k_rope, cos, sin, nope_dim, v_width, interleave);
}

#ifndef FTD_WITH_CUDA
// CPU-only builds (FTD_CUDA=OFF): the raw launchers exist so that the CUDA tests (which skip
// without a GPU) link.
std::tuple<at::Tensor, at::Tensor, at::Tensor> MlaQkvForwardCuda(const at::Tensor&, const at::Tensor&,
                                                                 const at::Tensor&, const at::Tensor&,
                                                                 const at::Tensor&, int64_t, int64_t, bool) {
  TORCH_CHECK(false, "MlaQkvForwardCuda: this build has no CUDA kernels (FTD_CUDA=OFF)");
}
std::tuple<at::Tensor, at::Tensor, at::Tensor> MlaQkvBackwardCuda(const at::Tensor&, const at::Tensor&,
                                                                  const at::Tensor&, const at::Tensor&,
                                                                  const at::Tensor&, int64_t, int64_t, bool) {
  TORCH_CHECK(false, "MlaQkvBackwardCuda: this build has no CUDA kernels (FTD_CUDA=OFF)");
}
#endif

}  // namespace ftd::kernels
