#include "engine/model/core/mamba2.h"

#include <limits>
#include <vector>

#include <ATen/ATen.h>

#include "kernels/causal_conv1d.h"
#include "kernels/kernels_available.h"
#include "kernels/ssd_scan.h"

namespace ftd::engine {

namespace {

// Zeros appended along dim 1 up to a multiple of `chunk` (HF's pad_tensor_by_size).
at::Tensor PadSeq(const at::Tensor& t, int64_t pad) {
  if (pad == 0) return t;
  std::vector<int64_t> shape = t.sizes().vec();
  shape[1] = pad;
  return at::cat({t, at::zeros(shape, t.options())}, 1);
}

// [B, S_pad, ...] -> [B, S_pad / Q, Q, ...]
at::Tensor Chunked(const at::Tensor& t, int64_t Q) {
  std::vector<int64_t> shape = t.sizes().vec();
  shape[1] = shape[1] / Q;
  shape.insert(shape.begin() + 2, Q);
  return t.reshape(shape);
}

// HF's segment_sum: a [..., T] -> [..., T, T] with out[.., i, j] = sum of a[k] for j < k <= i,
// -inf above the diagonal (exp of it is the causal decay from j to i).
at::Tensor SegmentSum(const at::Tensor& a) {
  const int64_t T = a.size(-1);
  std::vector<int64_t> shape = a.sizes().vec();
  shape.push_back(T);
  at::Tensor x = a.unsqueeze(-1).expand(shape);  // x[.., i, j] = a[.., i]
  at::Tensor strict = at::ones({T, T}, a.options().dtype(at::kBool)).tril(-1);
  x = x.masked_fill(strict.logical_not(), 0);
  at::Tensor sums = x.cumsum(-2);
  at::Tensor lower = at::ones({T, T}, a.options().dtype(at::kBool)).tril(0);
  return sums.masked_fill(lower.logical_not(), -std::numeric_limits<float>::infinity());
}

}  // namespace

at::Tensor CausalDepthwiseConv1d(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                                 const at::Tensor& segment_ids) {
  const int64_t S = x.size(1), C = x.size(2), K = weight.size(-1);
  if (!segment_ids.defined()) {
    // HF's causal_conv1d_fn: padding K-1 on both sides, the first S outputs kept.
    at::Tensor xt = x.transpose(1, 2).to(weight.scalar_type());  // [B, C, S]
    at::Tensor out = at::conv1d(xt, weight, bias, /*stride=*/1, /*padding=*/K - 1, /*dilation=*/1, /*groups=*/C);
    return out.narrow(2, 0, S).transpose(1, 2).to(x.scalar_type());  // [B, S, C]
  }
  // Packed rows: tap j (x[t-j]) counts only when t-j is in t's document.
  at::Tensor padded = PadSeq(x.flip(1), K - 1).flip(1);  // [B, K-1 + S, C], zeros first
  at::Tensor seg_padded = at::cat({at::full({segment_ids.size(0), K - 1}, -1, segment_ids.options()), segment_ids}, 1);
  at::Tensor w = weight.view({C, K});
  at::Tensor out = bias.defined() ? bias.to(x.scalar_type()).expand_as(x) : at::zeros_like(x);
  for (int64_t j = 0; j < K; ++j) {
    at::Tensor same = seg_padded.narrow(1, K - 1 - j, S).eq(segment_ids).unsqueeze(-1).to(x.scalar_type());  // [B, S, 1]
    out = out + padded.narrow(1, K - 1 - j, S) * same * w.select(1, K - 1 - j);
  }
  return out;
}

at::Tensor SsdChunkScan(const at::Tensor& x_in, const at::Tensor& dt_in, const at::Tensor& A_in, const at::Tensor& b_in,
                        const at::Tensor& c_in, const at::Tensor& D_in, int64_t Q, const at::Tensor& segment_ids) {
  // Letters: b batch, c chunk, l and s positions in a chunk, h head, p head_dim, n state, g group.
  const int64_t B = x_in.size(0), S = x_in.size(1), nh = x_in.size(2), P = x_in.size(3), G = b_in.size(2);
  const int64_t pad = (Q - S % Q) % Q;
  at::Tensor x = x_in.to(at::kFloat);                                                      // [B, S, h, p]
  at::Tensor dt = dt_in.to(at::kFloat);                                                    // [B, S, h]
  at::Tensor Bm = b_in.to(at::kFloat).repeat_interleave(nh / G, 2, nh);                    // [B, S, h, n]
  at::Tensor Cm = c_in.to(at::kFloat).repeat_interleave(nh / G, 2, nh);                    // [B, S, h, n]
  at::Tensor D_residual = D_in.to(at::kFloat).unsqueeze(-1) * x;                           // [B, S, h, p]
  at::Tensor xdt = Chunked(PadSeq(x * dt.unsqueeze(-1), pad), Q);                          // [b, c, l, h, p]
  at::Tensor Adt = Chunked(PadSeq(A_in.to(at::kFloat) * dt, pad), Q).permute({0, 3, 1, 2});  // [b, h, c, l]
  Bm = Chunked(PadSeq(Bm, pad), Q);                                                        // [b, c, l, h, n]
  Cm = Chunked(PadSeq(Cm, pad), Q);                                                        // [b, c, l, h, n]
  at::Tensor A_cumsum = Adt.cumsum(-1);                                                    // [b, h, c, l]

  // Packed rows: masks that keep every term inside one document (documents are contiguous
  // runs, so "same document at both ends" means "no boundary in between").
  at::Tensor same_in_chunk, to_chunk_end, from_prev_end, chunk_to_chunk;
  if (segment_ids.defined()) {
    at::Tensor seg = segment_ids.to(x.device());
    if (pad > 0) seg = at::cat({seg, seg.narrow(1, S - 1, 1).expand({B, pad})}, 1);  // padding: last document
    at::Tensor segc = seg.view({B, -1, Q});                                             // [b, c, l]
    at::Tensor ends = segc.select(2, Q - 1);                                            // [b, c]
    at::Tensor none = at::full({B, 1}, -1, seg.options());                              // before the row
    at::Tensor ends_from_start = at::cat({none, ends}, 1);                              // [b, c+1]: state z's document
    same_in_chunk = segc.unsqueeze(3).eq(segc.unsqueeze(2));                            // [b, c, l, s]
    to_chunk_end = segc.eq(ends.unsqueeze(2));                                          // [b, c, l]
    from_prev_end = segc.eq(ends_from_start.narrow(1, 0, ends.size(1)).unsqueeze(2));   // [b, c, l]
    chunk_to_chunk = ends_from_start.unsqueeze(2).eq(ends_from_start.unsqueeze(1));     // [b, z, c+1]
  }

  // 1. Within each chunk (diagonal blocks): y_l = sum_s (C_l . B_s) exp(sum_{s<k<=l} A dt_k) x_s dt_s.
  at::Tensor L = SegmentSum(Adt).exp();                                                    // [b, h, c, l, s]
  at::Tensor scores = at::einsum("bclhn,bcshn->bclsh", {Cm, Bm});                          // [b, c, l, s, h]
  at::Tensor M = scores * L.permute({0, 2, 3, 4, 1});                                      // [b, c, l, s, h]
  if (same_in_chunk.defined()) M = M * same_in_chunk.unsqueeze(-1).to(M.scalar_type());
  at::Tensor Y_diag = at::einsum("bclsh,bcshp->bclhp", {M, xdt});                         // [b, c, l, h, p]

  // 2. Each chunk's final state from its own tokens.
  at::Tensor decay_states = (A_cumsum.narrow(-1, Q - 1, 1) - A_cumsum).exp();             // [b, h, c, l]
  at::Tensor B_decay = Bm * decay_states.permute({0, 2, 3, 1}).unsqueeze(-1);              // [b, c, l, h, n]
  if (to_chunk_end.defined()) B_decay = B_decay * to_chunk_end.unsqueeze(-1).unsqueeze(-1).to(at::kFloat);
  at::Tensor states = at::einsum("bclhn,bclhp->bchpn", {B_decay, xdt});                    // [b, c, h, p, n]

  // 3. The state entering each chunk: the earlier chunks' states carried across chunk ends.
  states = at::cat({at::zeros_like(states.narrow(1, 0, 1)), states}, 1);                   // [b, c+1, h, p, n]
  at::Tensor chunk_decay =
      SegmentSum(at::constant_pad_nd(A_cumsum.select(-1, Q - 1), {1, 0})).exp().transpose(1, 3);  // [b, z, c+1, h]
  if (chunk_to_chunk.defined()) chunk_decay = chunk_decay * chunk_to_chunk.unsqueeze(-1).to(at::kFloat);
  at::Tensor entering = at::einsum("bzch,bzhpn->bchpn", {chunk_decay, states});            // [b, c+1, h, p, n]
  entering = entering.narrow(1, 0, entering.size(1) - 1);                                  // [b, c, h, p, n]

  // 4. The entering state read out at every position: C_l . state, decayed to l.
  at::Tensor C_states = at::einsum("bclhn,bchpn->bclhp", {Cm, entering});                  // [b, c, l, h, p]
  at::Tensor Y_off = C_states * A_cumsum.exp().permute({0, 2, 3, 1}).unsqueeze(-1);        // [b, c, l, h, p]
  if (from_prev_end.defined()) Y_off = Y_off * from_prev_end.unsqueeze(-1).unsqueeze(-1).to(at::kFloat);

  at::Tensor y = (Y_diag + Y_off).reshape({B, -1, nh, P});                                 // [B, S_pad, h, p]
  return y.narrow(1, 0, S) + D_residual;                                                   // [B, S, h, p]
}

at::Tensor SsdSequentialReference(const at::Tensor& x, const at::Tensor& dt, const at::Tensor& A, const at::Tensor& b,
                                  const at::Tensor& c, const at::Tensor& D, const at::Tensor& segment_ids) {
  return kernels::SsdScanForwardReference(x, dt, A, b, c, D, segment_ids);
}

at::Tensor GatedRmsNorm(const at::Tensor& y, const at::Tensor& z, const at::Tensor& weight, int64_t group_size,
                        double eps) {
  at::Tensor g = y.to(at::kFloat) * at::silu(z.to(at::kFloat));  // [.., I]
  std::vector<int64_t> grouped = g.sizes().vec();
  grouped.back() = g.size(-1) / group_size;
  grouped.push_back(group_size);
  at::Tensor gg = g.reshape(grouped);                                 // [.., G, I/G]
  gg = gg * at::rsqrt(gg.pow(2).mean(-1, /*keepdim=*/true) + eps);
  return weight.to(at::kFloat) * gg.reshape(g.sizes());
}

at::Tensor Mamba2Mixer(const at::Tensor& x, const MambaWeights& w, const ModelConfig& c,
                       const at::Tensor& segment_ids, bool use_kernels) {
  const MambaConfig& m = c.mamba;
  const int64_t B = x.size(0), S = x.size(1);
  const int64_t I = m.intermediate(), GN = m.n_groups * m.state_size, nh = m.num_heads;
  at::Tensor zxbcdt = at::linear(x, w.in_proj);             // [B, S, I + I + 2GN + nh]
  at::Tensor z = zxbcdt.narrow(-1, 0, I);                    // [B, S, I] gate of the norm
  at::Tensor xbc = zxbcdt.narrow(-1, I, m.conv_dim());       // [B, S, I + 2GN]
  at::Tensor dt = zxbcdt.narrow(-1, I + m.conv_dim(), nh);   // [B, S, nh]
  const int64_t K = w.conv_weight.size(-1);
  if (use_kernels && kernels::OnKernelDevice(xbc) && K <= 8 && w.conv_weight.scalar_type() == xbc.scalar_type()) {
    // CUDA: conv + bias + SiLU in one kernel each way, reading the in_proj slice in place.
    xbc = kernels::CausalConv1dSilu(xbc, w.conv_weight.view({m.conv_dim(), K}), w.conv_bias, segment_ids);
  } else {
    xbc = at::silu(CausalDepthwiseConv1d(xbc, w.conv_weight, w.conv_bias, segment_ids));
  }
  at::Tensor xs = xbc.narrow(-1, 0, I).reshape({B, S, nh, m.head_dim});             // [B, S, nh, P]
  at::Tensor Bm = xbc.narrow(-1, I, GN).reshape({B, S, m.n_groups, m.state_size});  // [B, S, G, N]
  at::Tensor Cm = xbc.narrow(-1, I + GN, GN).reshape({B, S, m.n_groups, m.state_size});
  dt = at::softplus(dt.to(at::kFloat) + w.dt_bias.to(at::kFloat));
  dt = m.time_step_max_limit > 0 ? dt.clamp(m.time_step_min_limit, m.time_step_max_limit)
                                 : dt.clamp_min(m.time_step_min_limit);
  at::Tensor A = -w.a_log.to(at::kFloat).exp();                                     // [nh]
  // [B, S, nh, P] fp32. CUDA: the scan kernel (the recurrence, fp32 state; equal to the chunked
  // form up to rounding); elsewhere HF's chunked form.
  at::Tensor y = use_kernels && kernels::OnKernelDevice(xs) && kernels::SsdScanCudaSupports(xs, Bm)
                     ? kernels::SsdScan(xs, dt, A, Bm, Cm, w.d, segment_ids)
                     : SsdChunkScan(xs, dt, A, Bm, Cm, w.d, m.chunk_size, segment_ids);
  at::Tensor normed = GatedRmsNorm(y.reshape({B, S, I}), z, w.norm, I / m.n_groups, c.rms_norm_eps);
  return at::linear(normed.to(x.scalar_type()), w.out_proj);  // [B, S, H]
}

}  // namespace ftd::engine
