#include "kernels/rope.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>

#include "kernels/rms_norm.h"

namespace ftd::kernels {

namespace {

at::Tensor RotateHalf(const at::Tensor& x) {
  const int64_t half = x.size(-1) / 2;
  return at::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
}

// cos/sin [B, S, D] against x [B, S, H, D].
at::Tensor PerHead(const at::Tensor& t) { return t.unsqueeze(2); }

}  // namespace

at::Tensor RopeReference(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  return x * PerHead(cos) + RotateHalf(x) * PerHead(sin);
}

at::Tensor RopeBackwardReference(const at::Tensor& dy, const at::Tensor& cos, const at::Tensor& sin) {
  // The adjoint of rotate_half: [a, b] -> [b, -a].
  at::Tensor g = dy * PerHead(sin);
  const int64_t half = g.size(-1) / 2;
  at::Tensor rotated_back = at::cat({g.narrow(-1, half, half), -g.narrow(-1, 0, half)}, -1);
  return dy * PerHead(cos) + rotated_back;
}

namespace {

bool UseCuda(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, const at::Tensor& w) {
#ifdef FTD_WITH_CUDA
  return RopeCudaSupports(x, cos, sin, w);
#else
  (void)x, (void)cos, (void)sin, (void)w;
  return false;
#endif
}

struct RopeFunction : public torch::autograd::Function<RopeFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& cos,
                            const at::Tensor& sin) {
    ctx->save_for_backward({cos, sin});
    ctx->saved_data["cuda"] = UseCuda(x, cos, sin, {});
#ifdef FTD_WITH_CUDA
    if (ctx->saved_data["cuda"].toBool()) return std::get<0>(RopeForwardCuda(x, cos, sin, {}, 0.0));
#endif
    return RopeReference(x, cos, sin);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto saved = ctx->get_saved_variables();
    at::Tensor dy = grads[0].contiguous();
#ifdef FTD_WITH_CUDA
    if (ctx->saved_data["cuda"].toBool()) {
      return {std::get<0>(RopeBackwardCuda(dy, saved[0], saved[1], {}, {}, {})), at::Tensor(), at::Tensor()};
    }
#endif
    return {RopeBackwardReference(dy, saved[0], saved[1]), at::Tensor(), at::Tensor()};
  }
};

struct RmsNormRopeFunction : public torch::autograd::Function<RmsNormRopeFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w,
                            double eps, const at::Tensor& cos, const at::Tensor& sin) {
    TORCH_CHECK(UseCuda(x, cos, sin, w), "RmsNormRopeFunction runs only where the CUDA kernels apply");
    at::Tensor y, rstd;
#ifdef FTD_WITH_CUDA
    std::tie(y, rstd) = RopeForwardCuda(x, cos, sin, w, eps);
#endif
    ctx->save_for_backward({x, w, rstd, cos, sin});
    return y;
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto s = ctx->get_saved_variables();
    at::Tensor dx, dw;
#ifdef FTD_WITH_CUDA
    std::tie(dx, dw) = RopeBackwardCuda(grads[0].contiguous(), s[3], s[4], s[0], s[1], s[2]);
#endif
    return {dx, dw, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

bool RopeCudaSupports(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, const at::Tensor& w) {
  if (!x.is_cuda() || x.dim() != 4 || cos.dim() != 3 || sin.sizes() != cos.sizes() || !cos.is_cuda() ||
      !sin.is_cuda()) {
    return false;
  }
  const auto t = x.scalar_type();
  if (t != at::kFloat && t != at::kBFloat16 && t != at::kHalf) return false;
  if (cos.scalar_type() != t || sin.scalar_type() != t) return false;
  const int64_t D = x.size(3);
  if (D % 2 != 0 || cos.size(2) != D || cos.size(1) != x.size(1) || (cos.size(0) != 1 && cos.size(0) != x.size(0))) {
    return false;
  }
  if (w.defined() && (!w.is_cuda() || w.scalar_type() != t || w.dim() != 1 || w.size(0) != D)) return false;
  return D <= 256;
}

at::Tensor Rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  return RopeFunction::apply(x.contiguous(), cos.contiguous(), sin.contiguous());
}

at::Tensor RmsNormRope(const at::Tensor& x, const at::Tensor& w, double eps, const at::Tensor& cos,
                       const at::Tensor& sin) {
  if (!UseCuda(x, cos, sin, w)) return Rope(RmsNorm(x, w, eps), cos, sin);
  return RmsNormRopeFunction::apply(x.contiguous(), w.contiguous(), eps, cos.contiguous(), sin.contiguous());
}

#ifndef FTD_WITH_CUDA
// CPU-only builds (FTD_CUDA=OFF): the raw launchers exist so that callers and the CUDA tests
// (which skip without a GPU) link; callers check the kernel applies first.
std::tuple<at::Tensor, at::Tensor> RopeForwardCuda(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                   const at::Tensor&, double) {
  TORCH_CHECK(false, "RopeForwardCuda: this build has no CUDA kernels (FTD_CUDA=OFF)");
}
std::tuple<at::Tensor, at::Tensor> RopeBackwardCuda(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                    const at::Tensor&, const at::Tensor&, const at::Tensor&) {
  TORCH_CHECK(false, "RopeBackwardCuda: this build has no CUDA kernels (FTD_CUDA=OFF)");
}
#endif

}  // namespace ftd::kernels
