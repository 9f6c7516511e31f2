// The Mamba2 mixer of Nemotron-H, as HF's NemotronHMamba2Mixer computes it without the mamba_ssm
// kernels (its torch path): in_proj -> depthwise causal conv1d (+ bias) -> SiLU -> the SSD
// chunked scan (A = -exp(A_log), dt = clamp(softplus(dt + dt_bias), time_step_limit), B and C
// shared by the heads of each of n_groups groups, D skip) -> RMSNorm gated by SiLU(z), per group
// -> out_proj. Packed rows (segment_ids) never mix documents: the convolution reads no tap of
// another document and the scan's state starts from zero at each document's first token.
#pragma once

#include <cstdint>

#include <ATen/core/Tensor.h>

#include "engine/model/config.h"
#include "engine/model/weights.h"

namespace ftd::engine {

// x [B, S, C], weight [C, 1, K], bias [C] or undefined -> [B, S, C]: out[t] = bias +
// sum_j weight[:, 0, K-1-j] * x[t-j] over j < K, taps before the row or (segment_ids [B, S]
// defined) in another document reading zero.
at::Tensor CausalDepthwiseConv1d(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                                 const at::Tensor& segment_ids);

// The SSD scan in HF's chunked form (mamba2_chunk_scan), in fp32:
//   h_t = exp(dt_t A) h_{t-1} + dt_t B_t x_t^T,  y_t = C_t h_t + D x_t
// x [B, S, nh, P], dt [B, S, nh] (after softplus and clamp), A [nh], b/c [B, S, G, N], D [nh];
// chunk_size any (the last chunk is padded); segment_ids [B, S] or undefined: the state is reset
// at every document's first token. Returns y [B, S, nh, P] fp32.
at::Tensor SsdChunkScan(const at::Tensor& x, const at::Tensor& dt, const at::Tensor& A, const at::Tensor& b,
                        const at::Tensor& c, const at::Tensor& D, int64_t chunk_size, const at::Tensor& segment_ids);

// The same recurrence one token at a time (fp32; kernels/ssd_scan.h's reference, which the
// chunked form and the CUDA scan are tested against).
at::Tensor SsdSequentialReference(const at::Tensor& x, const at::Tensor& dt, const at::Tensor& A, const at::Tensor& b,
                                  const at::Tensor& c, const at::Tensor& D, const at::Tensor& segment_ids);

// HF's NemotronHRMSNormGated: y * silu(z) normalised over groups of `group_size` channels in fp32,
// times weight. y, z [.., I] -> [.., I] fp32.
at::Tensor GatedRmsNorm(const at::Tensor& y, const at::Tensor& z, const at::Tensor& weight, int64_t group_size,
                        double eps);

// x [B, S, H] -> [B, S, H]. segment_ids [B, S] (on x's device) for packed rows, or undefined.
// On CUDA, `kernels` runs the conv1d and the scan as CUDA kernels; otherwise (and on the CPU)
// they are ATen ops in HF's chunked form.
at::Tensor Mamba2Mixer(const at::Tensor& x, const MambaWeights& w, const ModelConfig& config,
                       const at::Tensor& segment_ids, bool kernels = true);

}  // namespace ftd::engine
