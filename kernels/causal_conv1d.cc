#include "kernels/causal_conv1d.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>

namespace ftd::kernels {

namespace {

// x[b, t - j, c] at [b, t, c] (zeros before the row): [B, S, C] fp32.
at::Tensor ShiftBack(const at::Tensor& x, int64_t j) {
  if (j == 0) return x;
  const int64_t S = x.size(1);
  if (j >= S) return at::zeros_like(x);
  return at::cat({at::zeros_like(x.narrow(1, 0, j)), x.narrow(1, 0, S - j)}, 1);
}
// x[b, t + j, c] at [b, t, c] (zeros past the row).
at::Tensor ShiftForward(const at::Tensor& x, int64_t j) {
  if (j == 0) return x;
  const int64_t S = x.size(1);
  if (j >= S) return at::zeros_like(x);
  return at::cat({x.narrow(1, j, S - j), at::zeros_like(x.narrow(1, 0, j))}, 1);
}
// [B, S, 1] fp32: 1 where t - j is in the row and in t's document.
at::Tensor TapValid(const at::Tensor& segment_ids, int64_t B, int64_t S, int64_t j, const at::TensorOptions& o) {
  at::Tensor t = at::arange(S, o.dtype(at::kLong)).ge(j).view({1, S, 1}).expand({B, S, 1});
  if (segment_ids.defined()) {
    at::Tensor seg = segment_ids.to(o.device(), at::kLong).unsqueeze(-1).to(at::kFloat);  // [B, S, 1]
    t = t.logical_and(ShiftBack(seg, j).eq(seg));
  }
  return t.to(o.dtype(at::kFloat));
}

// The pre-activation in fp32 [B, S, C].
at::Tensor PreActivation(const at::Tensor& xf, const at::Tensor& wf, const at::Tensor& bias,
                         const at::Tensor& segment_ids) {
  const int64_t B = xf.size(0), S = xf.size(1), K = wf.size(1);
  at::Tensor pre = bias.defined() ? bias.to(at::kFloat).expand_as(xf).clone() : at::zeros_like(xf);
  for (int64_t j = 0; j < K; ++j) {
    pre = pre + ShiftBack(xf, j) * TapValid(segment_ids, B, S, j, xf.options()) * wf.select(1, K - 1 - j);
  }
  return pre;
}

}  // namespace

at::Tensor CausalConv1dSiluForwardReference(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias,
                                            const at::Tensor& segment_ids) {
  return at::silu(PreActivation(x.to(at::kFloat), w.to(at::kFloat), bias, segment_ids)).to(x.scalar_type());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> CausalConv1dSiluBackwardReference(const at::Tensor& dy,
                                                                                 const at::Tensor& x,
                                                                                 const at::Tensor& w,
                                                                                 const at::Tensor& bias,
                                                                                 const at::Tensor& segment_ids) {
  const int64_t B = x.size(0), S = x.size(1), K = w.size(1);
  at::Tensor xf = x.to(at::kFloat), wf = w.to(at::kFloat);
  at::Tensor pre = PreActivation(xf, wf, bias, segment_ids);
  at::Tensor s = at::sigmoid(pre);
  at::Tensor dpre = dy.to(at::kFloat) * s * (1 + pre * (1 - s));  // [B, S, C]
  at::Tensor dx = at::zeros_like(xf);
  std::vector<at::Tensor> dw_cols(static_cast<size_t>(K));
  for (int64_t j = 0; j < K; ++j) {
    at::Tensor valid = TapValid(segment_ids, B, S, j, xf.options());  // output t reads x[t - j]
    at::Tensor masked = dpre * valid;                                  // [B, S, C] at the output t
    dx = dx + ShiftForward(masked * wf.select(1, K - 1 - j), j);       // to the input t - j
    dw_cols[static_cast<size_t>(K - 1 - j)] = (masked * ShiftBack(xf, j)).sum(at::IntArrayRef{0, 1});  // [C]
  }
  at::Tensor dw = at::stack(dw_cols, 1).to(w.scalar_type());  // [C, K]
  at::Tensor db = bias.defined() ? dpre.sum(at::IntArrayRef{0, 1}).to(bias.scalar_type()) : at::Tensor();
  return {dx.to(x.scalar_type()), dw, db};
}

namespace {

// Autograd functions take no undefined tensors: absent ones travel as empty placeholders.
at::Tensor Placeholder(const at::Tensor& t, const at::TensorOptions& o) { return t.defined() ? t : at::empty({0}, o); }
at::Tensor Optional(const at::Tensor& t) { return t.numel() > 0 ? t : at::Tensor(); }

struct CausalConv1dSiluFunction : public torch::autograd::Function<CausalConv1dSiluFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w,
                            const at::Tensor& bias_or_empty, const at::Tensor& segment_ids_or_empty) {
    ctx->save_for_backward({x, w, bias_or_empty, segment_ids_or_empty});
    const at::Tensor bias = Optional(bias_or_empty), segment_ids = Optional(segment_ids_or_empty);
#ifdef FTD_WITH_CUDA
    if (x.is_cuda()) return CausalConv1dSiluForwardCuda(x, w, bias, segment_ids);
#endif
    return CausalConv1dSiluForwardReference(x, w, bias, segment_ids);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto s = ctx->get_saved_variables();
    s[2] = Optional(s[2]);
    s[3] = Optional(s[3]);
    at::Tensor dy = grads[0].contiguous();
    at::Tensor dx, dw, db;
#ifdef FTD_WITH_CUDA
    if (dy.is_cuda()) {
      std::tie(dx, dw, db) = CausalConv1dSiluBackwardCuda(dy, s[0], s[1], s[2], s[3]);
      return {dx, dw, db, at::Tensor()};
    }
#endif
    std::tie(dx, dw, db) = CausalConv1dSiluBackwardReference(dy, s[0], s[1], s[2], s[3]);
    return {dx, dw, db, at::Tensor()};
  }
};

}  // namespace

at::Tensor CausalConv1dSilu(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias,
                            const at::Tensor& segment_ids) {
  return CausalConv1dSiluFunction::apply(x, w, Placeholder(bias, x.options()),
                                         Placeholder(segment_ids, x.options().dtype(at::kLong)));
}

#ifndef FTD_WITH_CUDA
// CPU-only builds (FTD_CUDA=OFF): the raw launchers exist so that callers and the CUDA tests
// (which skip without a GPU) link; callers check the kernel applies first.
at::Tensor CausalConv1dSiluForwardCuda(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&) {
  TORCH_CHECK(false, "CausalConv1dSiluForwardCuda: this build has no CUDA kernels (FTD_CUDA=OFF)");
}
std::tuple<at::Tensor, at::Tensor, at::Tensor> CausalConv1dSiluBackwardCuda(const at::Tensor&, const at::Tensor&,
                                                                            const at::Tensor&, const at::Tensor&,
                                                                            const at::Tensor&) {
  TORCH_CHECK(false, "CausalConv1dSiluBackwardCuda: this build has no CUDA kernels (FTD_CUDA=OFF)");
}
#endif

}  // namespace ftd::kernels
