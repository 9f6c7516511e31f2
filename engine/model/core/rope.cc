#include "engine/model/core/rope.h"

#include <algorithm>
#include <cmath>

#include <ATen/ATen.h>

#include "kernels/kernels_available.h"
#include "kernels/rope.h"

namespace ftd::engine {

using kernels::OnKernelDevice;

namespace {

// YaRN's mscale (HF yarn_get_mscale): 0.1 * mscale * ln(scale) + 1, 1 for scale <= 1.
double YarnMscale(double scale, double mscale) { return scale <= 1 ? 1.0 : 0.1 * mscale * std::log(scale) + 1.0; }

}  // namespace

std::pair<at::Tensor, double> RopeInverseFrequencies(const ModelConfig& c) {
  const int64_t dim = c.rope_dim();
  const double base = c.rope.theta;
  auto opts = at::TensorOptions().dtype(at::kFloat);
  // HF: 1 / base ** (arange(0, dim, 2) / dim), in fp32.
  at::Tensor exponents = at::arange(0, dim, 2, at::TensorOptions().dtype(at::kLong)).to(at::kFloat) / dim;
  at::Tensor inv_freq = 1.0 / at::pow(at::scalar_tensor(base, opts), exponents);
  double scaling = 1.0;
  const RopeConfig& r = c.rope;
  if (r.type == "linear") {
    inv_freq = inv_freq / r.factor;
  } else if (r.type == "llama3") {
    const double old_len = static_cast<double>(r.original_max_position_embeddings);
    const double low_wavelen = old_len / r.low_freq_factor;
    const double high_wavelen = old_len / r.high_freq_factor;
    at::Tensor wavelen = 2 * M_PI / inv_freq;
    at::Tensor llama = at::where(wavelen > low_wavelen, inv_freq / r.factor, inv_freq);
    at::Tensor smooth = (old_len / wavelen - r.low_freq_factor) / (r.high_freq_factor - r.low_freq_factor);
    at::Tensor smoothed = (1 - smooth) * llama / r.factor + smooth * llama;
    at::Tensor is_medium = (wavelen >= high_wavelen).logical_and(wavelen <= low_wavelen);
    inv_freq = at::where(is_medium, smoothed, llama);
  } else if (r.type == "yarn") {
    // HF _compute_yarn_parameters.
    const double factor = r.factor;
    const double orig = r.original_max_position_embeddings > 0 ? r.original_max_position_embeddings
                                                               : c.max_position_embeddings;
    if (r.attention_factor > 0) {
      scaling = r.attention_factor;
    } else if (r.mscale != 0 && r.mscale_all_dim != 0) {
      scaling = YarnMscale(factor, r.mscale) / YarnMscale(factor, r.mscale_all_dim);
    } else {
      scaling = YarnMscale(factor, 1.0);
    }
    auto correction_dim = [&](double rotations) {
      return (dim * std::log(orig / (rotations * 2 * M_PI))) / (2 * std::log(base));
    };
    double low = correction_dim(r.beta_fast), high = correction_dim(r.beta_slow);
    if (r.truncate) {
      low = std::floor(low);
      high = std::ceil(high);
    }
    low = std::max(low, 0.0);
    high = std::min(high, static_cast<double>(dim - 1));
    if (low == high) high += 0.001;
    at::Tensor pos_freqs = at::pow(at::scalar_tensor(base, opts), exponents);
    at::Tensor extrapolation = 1.0 / pos_freqs;
    at::Tensor interpolation = 1.0 / (factor * pos_freqs);
    at::Tensor ramp = ((at::arange(dim / 2, opts) - low) / (high - low)).clamp(0, 1);
    at::Tensor extrapolation_factor = 1 - ramp;
    inv_freq = interpolation * (1 - extrapolation_factor) + extrapolation * extrapolation_factor;
  }
  return {inv_freq, scaling};
}

std::pair<at::Tensor, at::Tensor> RopeCosSin(const at::Tensor& inv_freq, double attention_scaling,
                                             const at::Tensor& position_ids, at::ScalarType dtype) {
  at::Tensor freqs = position_ids.unsqueeze(-1).to(at::kFloat) * inv_freq.to(position_ids.device());
  at::Tensor emb = at::cat({freqs, freqs}, -1);  // [B, S, D]
  at::Tensor cos = emb.cos(), sin = emb.sin();
  if (attention_scaling != 1.0) {
    cos = cos * attention_scaling;
    sin = sin * attention_scaling;
  }
  return {cos.to(dtype), sin.to(dtype)};
}

at::Tensor ApplyRope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  if (OnKernelDevice(x)) {
    at::Tensor bshd = x.transpose(1, 2);  // [B, S, heads, D]
    if (bshd.is_contiguous() && kernels::RopeCudaSupports(bshd, cos, sin, {})) {
      return kernels::Rope(bshd, cos, sin).transpose(1, 2);
    }
  }
  const int64_t half = x.size(-1) / 2;
  at::Tensor rotated = at::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
  return x * cos.unsqueeze(1) + rotated * sin.unsqueeze(1);
}

}  // namespace ftd::engine
