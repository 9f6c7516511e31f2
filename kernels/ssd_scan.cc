#include "kernels/ssd_scan.h"

#include <vector>

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>

namespace ftd::kernels {

at::Tensor SsdScanForwardReference(const at::Tensor& x_in, const at::Tensor& dt_in, const at::Tensor& A_in,
                                   const at::Tensor& b_in, const at::Tensor& c_in, const at::Tensor& D_in,
                                   const at::Tensor& segment_ids) {
  const int64_t B = x_in.size(0), S = x_in.size(1), nh = x_in.size(2), P = x_in.size(3), G = b_in.size(2),
                N = b_in.size(3);
  at::Tensor x = x_in.to(at::kFloat), dt = dt_in.to(at::kFloat), A = A_in.to(at::kFloat);
  at::Tensor Bm = b_in.to(at::kFloat).repeat_interleave(nh / G, 2, nh);  // [B, S, nh, N]
  at::Tensor Cm = c_in.to(at::kFloat).repeat_interleave(nh / G, 2, nh);
  at::Tensor seg = segment_ids.defined() ? segment_ids.to(x.device(), at::kLong) : at::Tensor();
  at::Tensor h = at::zeros({B, nh, P, N}, x.options());
  std::vector<at::Tensor> ys;
  ys.reserve(static_cast<size_t>(S));
  for (int64_t t = 0; t < S; ++t) {
    at::Tensor decay = (dt.select(1, t) * A).exp();  // [B, nh]
    if (seg.defined() && t > 0) {
      decay = decay * seg.select(1, t).eq(seg.select(1, t - 1)).to(at::kFloat).unsqueeze(1);
    }
    at::Tensor xt = x.select(1, t) * dt.select(1, t).unsqueeze(-1);                               // [B, nh, P]
    h = h * decay.unsqueeze(-1).unsqueeze(-1) + xt.unsqueeze(-1) * Bm.select(1, t).unsqueeze(2);  // [B, nh, P, N]
    at::Tensor y = (h * Cm.select(1, t).unsqueeze(2)).sum(-1);                                    // [B, nh, P]
    ys.push_back(y + D_in.to(at::kFloat).unsqueeze(-1) * x.select(1, t));
  }
  return at::stack(ys, 1);  // [B, S, nh, P]
}

SsdScanGrads SsdScanBackwardReference(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& dt,
                                      const at::Tensor& A, const at::Tensor& b, const at::Tensor& c,
                                      const at::Tensor& D, const at::Tensor& segment_ids) {
  c10::AutoGradMode grad_mode(true);
  std::vector<at::Tensor> in;
  for (const at::Tensor& t : {x, dt, A, b, c, D}) in.push_back(t.detach().requires_grad_(true));
  at::Tensor y = SsdScanForwardReference(in[0], in[1], in[2], in[3], in[4], in[5], segment_ids);
  auto g = torch::autograd::grad({y}, in, {dy.to(y.scalar_type())}, /*retain_graph=*/false, /*create_graph=*/false,
                                 /*allow_unused=*/true);
  for (size_t i = 0; i < g.size(); ++i) {
    if (!g[i].defined()) g[i] = at::zeros_like(in[i]);
  }
  return {g[0], g[1], g[2], g[3], g[4], g[5]};
}

namespace {

// Autograd functions take no undefined tensors: no segment ids travel as an empty placeholder.
at::Tensor Optional(const at::Tensor& t) { return t.numel() > 0 ? t : at::Tensor(); }

struct SsdScanFunction : public torch::autograd::Function<SsdScanFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& dt,
                            const at::Tensor& A, const at::Tensor& b, const at::Tensor& c, const at::Tensor& D,
                            const at::Tensor& segment_ids_or_empty) {
    const at::Tensor segment_ids = Optional(segment_ids_or_empty);
#ifdef FTD_WITH_CUDA
    if (x.is_cuda()) {
      auto [y, checkpoints] = SsdScanForwardCuda(x, dt, A, b, c, D, segment_ids);
      ctx->save_for_backward({x, dt, A, b, c, D, segment_ids_or_empty, checkpoints});
      return y;
    }
#endif
    ctx->save_for_backward({x, dt, A, b, c, D, segment_ids_or_empty, at::Tensor()});
    return SsdScanForwardReference(x, dt, A, b, c, D, segment_ids);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto s = ctx->get_saved_variables();
    s[6] = Optional(s[6]);
    at::Tensor dy = grads[0].contiguous();
    SsdScanGrads g;
#ifdef FTD_WITH_CUDA
    if (dy.is_cuda()) {
      g = SsdScanBackwardCuda(dy, s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]);
      return {g.dx, g.ddt, g.dA, g.db, g.dc, g.dD, at::Tensor()};
    }
#endif
    g = SsdScanBackwardReference(dy, s[0], s[1], s[2], s[3], s[4], s[5], s[6]);
    return {g.dx, g.ddt, g.dA, g.db, g.dc, g.dD, at::Tensor()};
  }
};

}  // namespace

at::Tensor SsdScan(const at::Tensor& x, const at::Tensor& dt, const at::Tensor& A, const at::Tensor& b,
                   const at::Tensor& c, const at::Tensor& D, const at::Tensor& segment_ids) {
  return SsdScanFunction::apply(x, dt, A, b, c, D,
                                segment_ids.defined() ? segment_ids : at::empty({0}, x.options().dtype(at::kLong)));
}

#ifndef FTD_WITH_CUDA
// CPU-only builds (FTD_CUDA=OFF): the raw launchers exist so that callers and the CUDA tests
// (which skip without a GPU) link; callers check the kernel applies first.
std::tuple<at::Tensor, at::Tensor> SsdScanForwardCuda(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                      const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                      const at::Tensor&) {
  TORCH_CHECK(false, "SsdScanForwardCuda: this build has no CUDA kernels (FTD_CUDA=OFF)");
}
SsdScanGrads SsdScanBackwardCuda(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                 const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                 const at::Tensor&) {
  TORCH_CHECK(false, "SsdScanBackwardCuda: this build has no CUDA kernels (FTD_CUDA=OFF)");
}
bool SsdScanCudaSupports(const at::Tensor&, const at::Tensor&) { return false; }
#endif

}  // namespace ftd::kernels
