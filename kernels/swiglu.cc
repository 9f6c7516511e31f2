#include "kernels/swiglu.h"

#include <cmath>

#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>

namespace ftd::kernels {

void SwigluOptions::Check(const char* op) const {
  TORCH_CHECK(std::isfinite(alpha), op, ": SwigluOptions.alpha must be finite, got ", alpha);
  TORCH_CHECK(std::isfinite(limit) && limit >= 0, op, ": SwigluOptions.limit must be >= 0 (0: no clamp), got ", limit);
  TORCH_CHECK(std::isfinite(up_offset), op, ": SwigluOptions.up_offset must be finite, got ", up_offset);
}

namespace {
// The math dtype of the references: fp32 for 16-bit inputs (as the kernels), else the input's.
at::ScalarType MathType(const at::Tensor& t) { return at::promote_types(t.scalar_type(), at::kFloat); }

// The gate and up halves of h [N, 2F] in the math dtype, clamped as `o` asks, with the masks of
// the elements whose gradient passes the clamp (autograd's: inside the limits or on them; NaN not).
struct GateUp {
  at::Tensor g, u;            // [N, F] clamped
  at::Tensor g_pass, u_pass;  // [N, F] bool, undefined without a clamp
};

GateUp SplitAndClamp(const at::Tensor& h, const SwigluOptions& o) {
  const int64_t F = h.size(-1) / 2;
  const auto m = MathType(h);
  GateUp r{h.narrow(-1, 0, F).to(m), h.narrow(-1, F, F).to(m), {}, {}};
  if (o.limit > 0) {
    r.g_pass = r.g <= o.limit;
    r.u_pass = (r.u >= -o.limit).logical_and_(r.u <= o.limit);
    r.g = r.g.clamp_max(o.limit);
    r.u = r.u.clamp(-o.limit, o.limit);
  }
  if (o.up_offset != 0) r.u = r.u + o.up_offset;
  return r;
}

at::Tensor Sigmoid(const at::Tensor& g, const SwigluOptions& o) {
  return at::sigmoid(o.alpha == 1.0 ? g : g * o.alpha);
}

at::Tensor Masked(const at::Tensor& grad, const at::Tensor& pass) {
  return pass.defined() ? at::where(pass, grad, at::zeros({}, grad.options())) : grad;
}

}  // namespace

at::Tensor WeightedSwigluForwardReference(const at::Tensor& h, const at::Tensor& w, const SwigluOptions& opts) {
  opts.Check("WeightedSwigluForwardReference");
  const GateUp x = SplitAndClamp(h, opts);
  const auto m = x.g.scalar_type();
  return (x.g * Sigmoid(x.g, opts) * x.u * w.to(m).unsqueeze(-1)).to(h.scalar_type());
}

std::tuple<at::Tensor, at::Tensor> WeightedSwigluBackwardReference(const at::Tensor& dout, const at::Tensor& h,
                                                                   const at::Tensor& w, const SwigluOptions& opts) {
  opts.Check("WeightedSwigluBackwardReference");
  const GateUp x = SplitAndClamp(h, opts);
  const auto m = x.g.scalar_type();
  const at::Tensor &g = x.g, &u = x.u;
  at::Tensor d = dout.to(m), wf = w.to(m).unsqueeze(-1);
  at::Tensor s = Sigmoid(g, opts);
  at::Tensor glu = g * s;
  // d/dg [g * s(alpha g)] = s * (1 + alpha * g * (1 - s)).
  at::Tensor ag = opts.alpha == 1.0 ? g : g * opts.alpha;
  // dw sums the products autograd of (u * glu) * w sums, bit for bit: GPT-OSS's AdamW parity
  // test (clamped config) turns a last-bit change in dw, through the router, into 5e-4 of loss.
  at::Tensor dact = d * wf;
  at::Tensor dg = Masked(dact * u * s * (1 + ag * (1 - s)), x.g_pass);
  at::Tensor du = Masked(dact * glu, x.u_pass);
  at::Tensor dw = (d * (u * glu)).sum(-1);
  return {at::cat({dg, du}, -1).to(h.scalar_type()), dw.to(w.scalar_type())};
}

namespace {

// Whether the CUDA kernels take (h, w): CUDA tensors of one dtype in a build with the kernels.
bool OnCudaKernels(const at::Tensor& h, const at::Tensor& w) {
#ifdef FTD_WITH_CUDA
  return h.is_cuda() && h.scalar_type() == w.scalar_type();
#else
  (void)h;
  (void)w;
  return false;
#endif
}

struct WeightedSwigluFunction : public torch::autograd::Function<WeightedSwigluFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& h, const at::Tensor& w,
                            double alpha, double limit, double up_offset) {
    ctx->save_for_backward({h, w});
    ctx->saved_data["alpha"] = alpha;
    ctx->saved_data["limit"] = limit;
    ctx->saved_data["up_offset"] = up_offset;
    const SwigluOptions opts{alpha, limit, up_offset};
    if (OnCudaKernels(h, w)) return WeightedSwigluForwardCuda(h, w, opts);
    return WeightedSwigluForwardReference(h, w, opts);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const SwigluOptions opts{ctx->saved_data["alpha"].toDouble(), ctx->saved_data["limit"].toDouble(),
                             ctx->saved_data["up_offset"].toDouble()};
    at::Tensor dout = grads[0].contiguous();
    auto [dh, dw] = OnCudaKernels(saved[0], saved[1]) ? WeightedSwigluBackwardCuda(dout, saved[0], saved[1], opts)
                                                      : WeightedSwigluBackwardReference(dout, saved[0], saved[1], opts);
    return {dh, dw, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor WeightedSwiglu(const at::Tensor& h, const at::Tensor& w, const SwigluOptions& opts) {
  opts.Check("WeightedSwiglu");
  return WeightedSwigluFunction::apply(h.contiguous(), w.contiguous(), opts.alpha, opts.limit, opts.up_offset);
}

at::Tensor SwigluForwardReference(const at::Tensor& gate, const at::Tensor& up) {
  const auto m = MathType(gate);
  return (at::silu(gate.to(m)) * up.to(m)).to(gate.scalar_type());
}

std::tuple<at::Tensor, at::Tensor> SwigluBackwardReference(const at::Tensor& dout, const at::Tensor& gate,
                                                           const at::Tensor& up) {
  const auto m = MathType(gate);
  at::Tensor g = gate.to(m), u = up.to(m), d = dout.to(m);
  at::Tensor s = at::sigmoid(g);
  at::Tensor dg = d * u * s * (1 + g * (1 - s));
  at::Tensor du = d * g * s;
  return {dg.to(gate.scalar_type()), du.to(up.scalar_type())};
}

namespace {

struct SwigluFunction : public torch::autograd::Function<SwigluFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& gate, const at::Tensor& up) {
    ctx->save_for_backward({gate, up});
    return SwigluForwardCuda(gate, up);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto saved = ctx->get_saved_variables();
    auto [dgate, dup] = SwigluBackwardCuda(grads[0].contiguous(), saved[0], saved[1]);
    return {dgate, dup};
  }
};

}  // namespace

at::Tensor Swiglu(const at::Tensor& gate, const at::Tensor& up) {
#ifdef FTD_WITH_CUDA
  if (gate.is_cuda() && gate.scalar_type() == up.scalar_type() && gate.sizes() == up.sizes()) {
    return SwigluFunction::apply(gate.contiguous(), up.contiguous());
  }
#endif
  return at::silu(gate) * up;
}

#ifndef FTD_WITH_CUDA
// CPU-only builds (FTD_CUDA=OFF): the raw launchers exist so that callers and the CUDA tests
// (which skip without a GPU) link; callers check the kernel applies first.
at::Tensor WeightedSwigluForwardCuda(const at::Tensor&, const at::Tensor&, const SwigluOptions&) {
  TORCH_CHECK(false, "WeightedSwigluForwardCuda: this build has no CUDA kernels (FTD_CUDA=OFF)");
}
std::tuple<at::Tensor, at::Tensor> WeightedSwigluBackwardCuda(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                              const SwigluOptions&) {
  TORCH_CHECK(false, "WeightedSwigluBackwardCuda: this build has no CUDA kernels (FTD_CUDA=OFF)");
}
at::Tensor SwigluForwardCuda(const at::Tensor&, const at::Tensor&) {
  TORCH_CHECK(false, "SwigluForwardCuda: this build has no CUDA kernels (FTD_CUDA=OFF)");
}
std::tuple<at::Tensor, at::Tensor> SwigluBackwardCuda(const at::Tensor&, const at::Tensor&, const at::Tensor&) {
  TORCH_CHECK(false, "SwigluBackwardCuda: this build has no CUDA kernels (FTD_CUDA=OFF)");
}
#endif

}  // namespace ftd::kernels
