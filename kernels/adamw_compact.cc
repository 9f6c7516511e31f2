#include "kernels/adamw_compact.h"

#include <cmath>

#include <ATen/ATen.h>

#include "kernels/stochastic_round.h"

namespace ftd::kernels {
namespace {

constexpr int64_t kTwo32 = int64_t{1} << 32;

// [n] -> [blocks, kCompactBlock], zero-padded.
at::Tensor Blocked(const at::Tensor& x) {
  const int64_t n = x.numel(), padded = CompactBlocks(n) * kCompactBlock;
  at::Tensor flat = x.reshape({-1});
  if (padded != n) flat = at::cat({flat, at::zeros({padded - n}, flat.options())});
  return flat.view({-1, kCompactBlock});
}

// [blocks, kCompactBlock] -> the first n elements.
at::Tensor Unblocked(const at::Tensor& x, int64_t n) { return x.reshape({-1}).narrow(0, 0, n); }

// s = sqrt(v) from its codes and the block maxima, [blocks, kCompactBlock].
at::Tensor DecodeS(const at::Tensor& codes_blocked, const at::Tensor& s_max) {
  at::Tensor c = codes_blocked.to(at::kFloat);
  at::Tensor s = at::exp2((c - 255.0f) / 16.0f) * s_max.unsqueeze(1);
  return at::where(codes_blocked.ne(0), s, at::zeros_like(s));
}

}  // namespace

CompactMoments CompactMoments::Zeros(int64_t numel, c10::Device device) {
  auto opts = at::TensorOptions().device(device);
  const int64_t blocks = CompactBlocks(numel);
  return {at::zeros({numel}, opts.dtype(at::kChar)), at::zeros({numel}, opts.dtype(at::kByte)),
          at::zeros({blocks}, opts.dtype(at::kFloat)), at::zeros({blocks}, opts.dtype(at::kFloat))};
}

CompactMoments CompactMoments::Narrow(int64_t begin, int64_t length) const {
  TORCH_CHECK(begin % kCompactBlock == 0, "CompactMoments::Narrow: begin ", begin, " is not a block boundary");
  const int64_t b0 = begin / kCompactBlock;
  return {r_codes.narrow(0, begin, length), s_codes.narrow(0, begin, length),
          r_scale.narrow(0, b0, CompactBlocks(length)), s_max.narrow(0, b0, CompactBlocks(length))};
}

int64_t CompactMoments::Bytes() const {
  return r_codes.nbytes() + s_codes.nbytes() + r_scale.nbytes() + s_max.nbytes();
}

at::Tensor MasterFromSplit(const at::Tensor& param_bf16, const at::Tensor& master_low) {
  TORCH_CHECK(param_bf16.scalar_type() == at::kBFloat16 && master_low.scalar_type() == at::kShort &&
                  param_bf16.numel() == master_low.numel(),
              "MasterFromSplit: needs a bf16 parameter and an int16 low half of the same size");
  // int64 arithmetic: the high half is unsigned, the low half signed, the sum taken mod 2^32.
  at::Tensor hi = param_bf16.contiguous().view(at::kShort).to(at::kLong).bitwise_and(0xFFFF);
  at::Tensor bits = (hi * 65536 + master_low.to(at::kLong)).bitwise_and(kTwo32 - 1);
  bits = at::where(bits.ge(kTwo32 / 2), bits - kTwo32, bits);
  return bits.to(at::kInt).view(at::kFloat).view(param_bf16.sizes());
}

std::pair<at::Tensor, at::Tensor> SplitMaster(const at::Tensor& master) {
  TORCH_CHECK(master.scalar_type() == at::kFloat, "SplitMaster: needs fp32 values");
  at::Tensor bits = master.contiguous().view(at::kInt).to(at::kLong).bitwise_and(kTwo32 - 1);
  // Rounded half away from zero (in magnitude), so that the remainder fits in int16.
  at::Tensor hi = (bits + 0x8000).bitwise_right_shift(16).bitwise_and(0xFFFF);
  at::Tensor low = bits - hi * 65536;
  at::Tensor hi16 = at::where(hi.ge(0x8000), hi - 0x10000, hi).to(at::kShort);
  return {hi16.view(at::kBFloat16).view(master.sizes()), low.to(at::kShort).view(master.sizes())};
}

std::pair<at::Tensor, at::Tensor> DecodeCompactMoments(const CompactMoments& mo) {
  const int64_t n = mo.r_codes.numel();
  at::Tensor s = DecodeS(Blocked(mo.s_codes), mo.s_max);
  at::Tensor r = Blocked(mo.r_codes).to(at::kFloat) * mo.r_scale.unsqueeze(1);
  return {Unblocked(r * s, n), Unblocked(s * s, n)};
}

void EncodeCompactMoments(const at::Tensor& m, const at::Tensor& v, const CompactMoments& out) {
  const int64_t n = out.r_codes.numel();
  TORCH_CHECK(m.numel() == n && v.numel() == n, "EncodeCompactMoments: ", n, " elements expected");
  at::Tensor s = Blocked(v.to(at::kFloat)).sqrt();  // [B, 256]
  at::Tensor s_max = std::get<0>(s.max(1));
  // As the kernel: products with the reciprocals of the block maxima.
  at::Tensor inv_s_max = at::where(s_max.gt(0), 1.0f / s_max, at::zeros_like(s_max)).unsqueeze(1);
  at::Tensor code = at::round(255.0f + 16.0f * at::log2(s * inv_s_max)).clamp(1, 255);
  code = at::where(s.gt(0), code, at::zeros_like(code));
  at::Tensor inv_code = at::where(code.gt(0), at::exp2((255.0f - code) / 16.0f), at::zeros_like(code));
  at::Tensor r = Blocked(m.to(at::kFloat)) * (inv_code * inv_s_max);  // m / sqrt(v) as stored
  at::Tensor r_max = std::get<0>(r.abs().max(1));
  at::Tensor inv_r_scale = at::where(r_max.gt(0), 127.0f / r_max, at::zeros_like(r_max)).unsqueeze(1);
  at::Tensor r_code = at::round(r * inv_r_scale).clamp(-127, 127);
  at::Tensor r_scale = r_max / 127.0f;
  out.s_codes.copy_(Unblocked(code, n).to(at::kByte));
  out.r_codes.copy_(Unblocked(r_code, n).to(at::kChar));
  out.s_max.copy_(s_max);
  out.r_scale.copy_(r_scale);
}

void CompactAdamWStepReference(const at::Tensor& param, const at::Tensor& master_low, const at::Tensor& grad,
                               const CompactMoments& moments, const at::Tensor& step, const AdamWHyper& h) {
  TORCH_CHECK(grad.numel() == param.numel() && moments.r_codes.numel() == param.numel(),
              "CompactAdamWStep: gradient and moments must have the parameter's ", param.numel(), " elements");
  TORCH_CHECK(master_low.defined() ? param.scalar_type() == at::kBFloat16
                                    : (param.scalar_type() == at::kFloat || param.scalar_type() == at::kBFloat16),
              "CompactAdamWStep: an fp32 parameter takes no master's low half, a bf16 one its low half or none "
              "(stochastic rounding); got ", param.scalar_type(), master_low.defined() ? " with" : " without",
              " a low half");
  // Per-step values as 0-dim fp32 tensors (device-side when given there: no host read).
  at::Tensor lr, grad_scale;
  if (h.scalars.defined()) {
    lr = h.scalars.select(0, 0).to(param.device());
    grad_scale = h.scalars.select(0, 1).to(param.device());
  } else {
    auto f32 = at::TensorOptions().dtype(at::kFloat).device(param.device());
    lr = at::full({}, h.lr, f32);
    grad_scale = at::full({}, h.grad_scale, f32);
  }
  // Bias corrections in double, as the kernel (and ATen's fused AdamW).
  at::Tensor st = step.to(param.device(), at::kDouble);
  at::Tensor bc1 = 1.0 - at::pow(h.beta1, st), bc2 = 1.0 - at::pow(h.beta2, st);
  at::Tensor step_size = (lr.to(at::kDouble) / bc1).to(at::kFloat);
  at::Tensor inv_bc2_sqrt = (1.0 / bc2.sqrt()).to(at::kFloat);

  at::Tensor w = master_low.defined() ? MasterFromSplit(param, master_low) : param.to(at::kFloat);
  w = w.reshape({-1});
  at::Tensor g = grad.reshape({-1}).to(at::kFloat) * grad_scale;
  if (h.grad_sq_sum.defined()) h.grad_sq_sum.add_(g.square().sum().to(h.grad_sq_sum.device()));
  auto [m_old, v_old] = DecodeCompactMoments(moments);
  w = w - lr * static_cast<float>(h.weight_decay) * w;
  at::Tensor m = m_old * static_cast<float>(h.beta1) + g * static_cast<float>(1 - h.beta1);
  at::Tensor v = v_old * static_cast<float>(h.beta2) + g * g * static_cast<float>(1 - h.beta2);  // as the kernel
  w = w - step_size * m / (v.sqrt() * inv_bc2_sqrt + static_cast<float>(h.eps));
  EncodeCompactMoments(m, v, moments);
  if (master_low.defined()) {
    auto [hi, low] = SplitMaster(w);
    param.view({-1}).copy_(hi);
    master_low.view({-1}).copy_(low);
  } else if (param.scalar_type() == at::kBFloat16) {
    param.view({-1}).copy_(StochasticRoundToBf16(w, step, h.round_salt, h.round_index_base));
  } else {
    param.view({-1}).copy_(w);
  }
}

at::Tensor StochasticRoundToBf16(const at::Tensor& values, const at::Tensor& step, uint32_t salt, int64_t index_base) {
  namespace sr = stochastic_round;
  // Element by element on the host: the reference for the kernels' rounding, bit for bit.
  const at::Tensor bits = values.detach().to(at::kCPU, at::kFloat).contiguous().view(at::kInt);
  const uint32_t key = sr::StepKey(salt, static_cast<uint32_t>(step.to(at::kCPU, at::kFloat).item<float>()));
  at::Tensor out = at::empty(bits.sizes(), bits.options().dtype(at::kShort));
  const auto* in = reinterpret_cast<const uint32_t*>(bits.data_ptr<int32_t>());
  auto* o = reinterpret_cast<uint16_t*>(out.data_ptr<int16_t>());
  for (int64_t i = 0; i < bits.numel(); ++i) o[i] = sr::RoundBits(in[i], sr::RandomBits(key, index_base + i));
  return out.view(at::kBFloat16).to(values.device());
}

void CompactAdamWStep(const at::Tensor& param, const at::Tensor& master_low, const at::Tensor& grad,
                      const CompactMoments& moments, const at::Tensor& step, const AdamWHyper& h) {
  if (CompactAdamWCudaSupports(param, master_low, grad, moments, step, h)) {
    CompactAdamWStepCuda(param, master_low, grad, moments, step, h);
  } else {
    CompactAdamWStepReference(param, master_low, grad, moments, step, h);
  }
}

CompactUpdateHyper MakeCompactUpdateHyper(const AdamWHyper& h) {
  return {static_cast<float>(h.lr),
          static_cast<float>(h.grad_scale),
          static_cast<float>(h.beta1),
          static_cast<float>(h.beta2),
          static_cast<float>(1 - h.beta1),
          static_cast<float>(1 - h.beta2),
          static_cast<float>(h.weight_decay),
          static_cast<float>(h.eps),
          h.beta1,
          h.beta2,
          h.scalars.defined() ? h.scalars.data_ptr<float>() : nullptr,
          h.grad_sq_sum.defined() ? h.grad_sq_sum.data_ptr<float>() : nullptr,
          h.round_salt,
          h.round_index_base};
}

bool CompactAdamWCudaSupports(const at::Tensor& param, const at::Tensor& master_low, const at::Tensor& grad,
                              const CompactMoments& moments, const at::Tensor& step, const AdamWHyper& h) {
#ifdef FTD_WITH_CUDA
  const int64_t n = param.numel();
  if (!param.is_cuda() || !param.is_contiguous()) return false;
  const c10::Device dev = param.device();
  if (master_low.defined()) {
    if (param.scalar_type() != at::kBFloat16 || master_low.scalar_type() != at::kShort) return false;
    if (!master_low.is_contiguous() || master_low.numel() != n || master_low.device() != dev) return false;
  } else if (param.scalar_type() != at::kFloat && param.scalar_type() != at::kBFloat16) {
    return false;
  }
  if (!grad.is_contiguous() || grad.numel() != n || grad.device() != dev ||
      (grad.scalar_type() != at::kBFloat16 && grad.scalar_type() != at::kFloat)) {
    return false;
  }
  for (const at::Tensor* t : {&moments.r_codes, &moments.s_codes, &moments.r_scale, &moments.s_max}) {
    if (!t->is_contiguous() || t->device() != dev) return false;
  }
  if (moments.r_codes.numel() != n || moments.s_codes.numel() != n || moments.r_scale.numel() != CompactBlocks(n) ||
      moments.s_max.numel() != CompactBlocks(n)) {
    return false;
  }
  if (h.scalars.defined() && !StepScalarsValid(h.scalars, dev)) return false;
  if (h.grad_sq_sum.defined() &&
      (h.grad_sq_sum.scalar_type() != at::kFloat || h.grad_sq_sum.device() != dev || h.grad_sq_sum.numel() != 1)) {
    return false;
  }
  return step.is_cuda() && step.device() == dev && step.numel() == 1 && step.scalar_type() == at::kFloat;
#else
  (void)param;
  (void)master_low;
  (void)grad;
  (void)moments;
  (void)step;
  (void)h;
  return false;
#endif
}

bool CompactAdamWRowsSupports(const at::Tensor& param, const at::Tensor& master_low, const CompactMoments& moments,
                              const at::Tensor& step, const AdamWHyper& h) {
  return param.dim() == 2 && param.size(1) % kCompactBlock == 0 &&
         CompactAdamWCudaSupports(param, master_low, param, moments, step, h);
}

#ifndef FTD_WITH_CUDA
void CompactAdamWStepCuda(const at::Tensor&, const at::Tensor&, const at::Tensor&, const CompactMoments&,
                          const at::Tensor&, const AdamWHyper&) {
  TORCH_CHECK(false, "CompactAdamWStepCuda: this build has no CUDA kernels (FTD_CUDA=OFF)");
}
void CompactAdamWRowsStepCuda(const at::Tensor&, const at::Tensor&, const CompactMoments&, const at::Tensor&,
                              const at::Tensor&, const at::Tensor&, const AdamWHyper&) {
  TORCH_CHECK(false, "CompactAdamWRowsStepCuda: this build has no CUDA kernels (FTD_CUDA=OFF)");
}
#endif

}  // namespace ftd::kernels
