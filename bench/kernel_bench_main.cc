// ftd-kernel-bench: times each fused kernel at the Qwen3-30B-A3B shapes (T = 4096 tokens,
// H = 2048, 32 q / 4 kv heads of 128, E = 128, k = 8, F = 768) and prints one JSON line per
// kernel: forward and backward median times over 20 runs (CUDA events, after warm-up, L2
// flushed before each run), the bytes each moves at minimum, the achieved GB/s and its share of
// the H100's 3.35 TB/s, and the ATen reference's forward time for comparison.
// Without a GPU (or without the CUDA kernels in the build) it says so and exits 0.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <c10/core/GradMode.h>
#include <nlohmann/json.hpp>

#include "engine/model/linear_cross_entropy.h"
#include "kernels/adamw.h"
#include "kernels/adamw_compact.h"
#include "kernels/adamw_compact_bulk.h"
#include "kernels/cross_entropy.h"
#include "kernels/expert_sort.h"
#include "kernels/grouped_gemm.h"
#include "kernels/grouped_gemm_adamw.h"
#include "kernels/permute_rows.h"
#include "kernels/relu2.h"
#include "kernels/causal_conv1d.h"
#include "kernels/ssd_scan.h"
#include "kernels/squared_norm.h"
#include "kernels/rms_norm.h"
#include "kernels/mla_qkv.h"
#include "kernels/rope.h"
#include "kernels/router.h"
#include "kernels/swiglu.h"

#ifdef FTD_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#endif

namespace ftd::kernels {
namespace {

constexpr double kHbmBytesPerSecond = 3.35e12;  // H100 SXM HBM3

#ifdef FTD_WITH_CUDA

// Median milliseconds of fn over 20 timed runs after 5 warm-ups; L2 (50 MB) flushed before each.
double MedianMs(const std::function<void()>& fn) {
  static at::Tensor flush = at::empty({int64_t{256} << 20}, at::TensorOptions().device(at::kCUDA).dtype(at::kByte));
  for (int i = 0; i < 5; ++i) fn();
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  std::vector<double> ms;
  for (int i = 0; i < 20; ++i) {
    flush.fill_(static_cast<uint8_t>(i));
    cudaEventRecord(start, stream);
    fn();
    cudaEventRecord(stop, stream);
    cudaEventSynchronize(stop);
    float t = 0;
    cudaEventElapsedTime(&t, start, stop);
    ms.push_back(t);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  std::sort(ms.begin(), ms.end());
  return (ms[9] + ms[10]) / 2;
}

// A bf16 parameter of n random elements with its compact state after three steps (moments
// filled), its gradient and hyperparameters with weight decay (no block is skipped).
struct CompactBenchState {
  at::Tensor p, low, g, step;
  CompactMoments mo;
  AdamWHyper h;
};
CompactBenchState MakeCompactBenchState(int64_t n) {
  auto bf = at::TensorOptions().device(at::kCUDA).dtype(at::kBFloat16);
  CompactBenchState st;
  std::tie(st.p, st.low) = SplitMaster(at::randn({n}, bf.dtype(at::kFloat)) * 0.02);
  st.g = at::randn({n}, bf);
  st.mo = CompactMoments::Zeros(n, st.p.device());
  st.step = at::zeros({}, bf.dtype(at::kFloat));
  st.h = AdamWHyper{1e-5, 0.9, 0.999, 0.01, 1e-8};
  st.h.scalars = at::tensor({1e-5f, 1.0f}).to(st.p.device());
  for (int i = 0; i < 3; ++i) {
    st.step.add_(1.0);
    CompactAdamWStepCuda(st.p, st.low, st.g, st.mo, st.step, st.h);
  }
  return st;
}

void Report(const std::string& kernel, const std::string& shape, double fwd_bytes, double fwd_ms, double bwd_bytes,
            double bwd_ms, double ref_fwd_ms) {
  auto gbps = [](double bytes, double ms) { return bytes / (ms * 1e-3) / 1e9; };
  nlohmann::json j;
  j["kernel"] = kernel;
  j["shape"] = shape;
  j["fwd_ms"] = fwd_ms;
  j["fwd_gbps"] = gbps(fwd_bytes, fwd_ms);
  j["fwd_pct_hbm"] = 100.0 * gbps(fwd_bytes, fwd_ms) * 1e9 / kHbmBytesPerSecond;
  if (bwd_ms > 0) {
    j["bwd_ms"] = bwd_ms;
    j["bwd_gbps"] = gbps(bwd_bytes, bwd_ms);
    j["bwd_pct_hbm"] = 100.0 * gbps(bwd_bytes, bwd_ms) * 1e9 / kHbmBytesPerSecond;
  }
  j["ref_fwd_ms"] = ref_fwd_ms;
  j["ref_speedup"] = ref_fwd_ms / fwd_ms;
  std::printf("%s\n", j.dump().c_str());
  std::fflush(stdout);
}

void RunLibraryOps();
void RunNemotronKernels();
void RunGroupedGemms(bool fused_update_only);
void RunAdamWCompactCeiling();
void RunMlaQkv();
void RunSquaredNorm();
void RunSwigluPair();

// The gradient-norm pass of global-norm clipping on the largest gradients a step has (a layer's
// expert gate_up of Qwen3-30B-A3B and Moonlight, the lm_head of each), against ATen's
// _foreach_norm on the same tensor (what the optimizer ran before): bytes = the gradient, read once.
void RunSquaredNorm() {
  auto bf = at::TensorOptions().device(at::kCUDA).dtype(at::kBFloat16);
  const std::vector<std::pair<std::string, std::vector<int64_t>>> shapes = {
      {"qwen3 experts gate_up 128x1536x2048", {128, 1536, 2048}},
      {"moonlight experts gate_up 64x2816x2048", {64, 2816, 2048}},
      {"qwen3 lm_head 151936x2048", {151936, 2048}},
      {"moonlight lm_head 163840x2048", {163840, 2048}},
      {"norm weight 2048", {2048}}};
  for (const auto& [name, shape] : shapes) {
    at::Tensor g = at::randn(shape, bf);
    at::Tensor sum = at::zeros({}, bf.dtype(at::kFloat));
    const double own = MedianMs([&] { AddSquaredNormCuda(g, sum); });
    const double ref = MedianMs([&] { AddSquaredNormReference(g, sum); });
    Report("squared_norm", name + " bf16", 2.0 * g.numel(), own, 0, 0, ref);
  }
}

// A dense MLP's SwiGLU of two projections: Moonlight-16B-A3B's dense layer (T 4096, F 11,264);
// the reference is ATen's silu(gate) * up (what the dense MLP ran before), forward.
void RunSwigluPair() {
  auto bf = at::TensorOptions().device(at::kCUDA).dtype(at::kBFloat16);
  const int64_t T = 4096, Fd = 11264;
  const double b16 = 2;
  at::Tensor g = at::randn({T, Fd}, bf), u = at::randn({T, Fd}, bf), dout = at::randn({T, Fd}, bf);
  const double fwd = MedianMs([&] { SwigluForwardCuda(g, u); });
  const double bwd = MedianMs([&] { SwigluBackwardCuda(dout, g, u); });
  const double ref = MedianMs([&] { at::silu(g) * u; });
  Report("swiglu_pair", "4096x11264 bf16", 3.0 * T * Fd * b16, fwd, 5.0 * T * Fd * b16, bwd, ref);
}

void RunMlaQkv() {
  const int64_t T = 4096;
  const double b16 = 2;
  auto bf = at::TensorOptions().device(at::kCUDA).dtype(at::kBFloat16);
  auto fp = bf.dtype(at::kFloat);
  // MLA's query/key/value from its projections (Moonlight-16B-A3B / DeepSeek-V3 heads:
  // 16 heads here, nope 128, rope 64 interleaved, v 128), V as it is and padded to 192.
  const int64_t mh = 16, dn = 128, dr = 64, dv = 128, dqk = dn + dr;
  at::Tensor f = at::arange(T, fp).view({1, T, 1}) * (1.0 / at::pow(1e4, at::arange(0, dr, 2, fp) / dr));
  at::Tensor emb = at::cat({f, f}, -1);
  at::Tensor mcos = emb.cos().to(at::kBFloat16), msin = emb.sin().to(at::kBFloat16);
  at::Tensor q = at::randn({1, T, mh, dqk}, bf), kv = at::randn({1, T, mh, dn + dv}, bf);
  at::Tensor compressed = at::randn({1, T, 512 + dr}, bf);
  at::Tensor k_rope = compressed.narrow(-1, 512, dr);
  for (int64_t v_width : {dv, dqk}) {
    const std::string shape = "1x4096x16 heads, nope 128 rope 64 v " + std::to_string(dv) + " as " +
                              std::to_string(v_width) + ", interleaved, bf16";
    const double tok = static_cast<double>(T) * b16, cs = 2.0 * T * dr * b16;
    const double fwd_bytes = tok * (mh * dqk + mh * (dn + dv) + dr + 2 * mh * dqk + mh * v_width) + cs;
    const double bwd_bytes = tok * (2 * mh * dqk + mh * v_width + mh * dqk + mh * (dn + dv) + dr) + cs;
    auto [dquery, dkey, dvalue] = MlaQkvForwardCuda(q, kv, k_rope, mcos, msin, dn, v_width, true);
    const double fwd = MedianMs([&] { MlaQkvForwardCuda(q, kv, k_rope, mcos, msin, dn, v_width, true); });
    const double bwd = MedianMs([&] { MlaQkvBackwardCuda(dquery, dkey, dvalue, mcos, msin, dn, dv, true); });
    const double ref = MedianMs([&] { MlaQueryKeyValueReference(q, kv, k_rope, mcos, msin, dn, v_width, true); });
    Report("mla_qkv", shape, fwd_bytes, fwd, bwd_bytes, bwd, ref);
  }
}

int Run() {
  c10::NoGradGuard no_grad;
  const int64_t T = 4096, H = 2048, D = 128, Hq = 32, Hkv = 4, E = 128, k = 8, F = 768;
  const double b16 = 2, f32 = 4, i64 = 8;
  auto bf = at::TensorOptions().device(at::kCUDA).dtype(at::kBFloat16);
  auto fp = bf.dtype(at::kFloat);
  at::manual_seed(0);

  {  // RMSNorm over the hidden size.
    at::Tensor x = at::randn({T, H}, bf), w = at::randn({H}, bf), dy = at::randn({T, H}, bf);
    at::Tensor rstd = std::get<2>(RmsNormForwardCuda(x, {}, w, 1e-6));
    const double fwd = MedianMs([&] { RmsNormForwardCuda(x, {}, w, 1e-6); });
    const double bwd = MedianMs([&] { RmsNormBackwardCuda(dy, {}, x, w, rstd); });
    const double ref = MedianMs([&] { RmsNormForwardReference(x, w, 1e-6); });
    Report("rms_norm", "4096x2048 bf16", 2 * T * H * b16 + T * f32, fwd, 3 * T * H * b16 + T * f32, bwd, ref);
  }
  {  // Residual add + RMSNorm (the decoder layer's post-attention norm).
    at::Tensor x = at::randn({T, H}, bf), r = at::randn({T, H}, bf), w = at::randn({H}, bf);
    at::Tensor dy = at::randn({T, H}, bf), ds = at::randn({T, H}, bf);
    auto [y, sum, rstd] = RmsNormForwardCuda(x, r, w, 1e-6);
    const double fwd = MedianMs([&] { RmsNormForwardCuda(x, r, w, 1e-6); });
    const double bwd = MedianMs([&] { RmsNormBackwardCuda(dy, ds, sum, w, rstd); });
    const double ref = MedianMs([&] { RmsNormForwardReference(x + r, w, 1e-6); });
    Report("add_rms_norm", "4096x2048 bf16", 4 * T * H * b16 + T * f32, fwd, 4 * T * H * b16 + T * f32, bwd, ref);
  }
  at::Tensor cos, sin;
  {
    at::Tensor inv = 1.0 / at::pow(1e6, at::arange(0, D, 2, fp) / D);
    at::Tensor f = at::arange(T, fp).view({1, T, 1}) * inv;
    at::Tensor emb = at::cat({f, f}, -1);
    cos = emb.cos().to(at::kBFloat16);
    sin = emb.sin().to(at::kBFloat16);
  }
  for (int64_t heads : {Hq, Hkv}) {  // q/k RMSNorm over head_dim fused with RoPE, and RoPE alone.
    const std::string shape = "1x4096x" + std::to_string(heads) + "x128 bf16";
    at::Tensor x = at::randn({1, T, heads, D}, bf), w = at::randn({D}, bf), dy = at::randn({1, T, heads, D}, bf);
    const double n = static_cast<double>(T * heads * D), cs = 2.0 * T * D * b16;
    at::Tensor rstd = std::get<1>(RopeForwardCuda(x, cos, sin, w, 1e-6));
    double fwd = MedianMs([&] { RopeForwardCuda(x, cos, sin, w, 1e-6); });
    double bwd = MedianMs([&] { RopeBackwardCuda(dy, cos, sin, x, w, rstd); });
    double ref = MedianMs([&] { RopeReference(std::get<0>(RmsNormForwardReference(x, w, 1e-6)), cos, sin); });
    Report("qk_norm_rope", shape, 2 * n * b16 + cs, fwd, 3 * n * b16 + cs, bwd, ref);
    fwd = MedianMs([&] { RopeForwardCuda(x, cos, sin, {}, 0); });
    bwd = MedianMs([&] { RopeBackwardCuda(dy, cos, sin, {}, {}, {}); });
    ref = MedianMs([&] { RopeReference(x, cos, sin); });
    Report("rope", shape, 2 * n * b16 + cs, fwd, 2 * n * b16 + cs, bwd, ref);
  }
  RunMlaQkv();
  at::Tensor experts;
  {  // Fused router: softmax, top-8 of 128, renormalise, counts.
    at::Tensor logits = at::randn({T, E}, fp);
    RouterOptions o{k, RouterScore::kSoftmax, true, 1.0, at::kBFloat16};
    RouterOutput r = RouterTopKForwardCuda(logits, {}, o);
    experts = r.experts;
    at::Tensor dw = at::randn({T, k}, bf);
    const double fwd = MedianMs([&] { RouterTopKForwardCuda(logits, {}, o); });
    const double bwd = MedianMs([&] { RouterTopKBackwardCuda(dw, logits, r.experts, o); });
    // The engine's ATen path: softmax, topk, renormalise, bincount.
    const double ref = MedianMs([&] {
      auto [v, i] = at::softmax(logits, -1).topk(k, -1);
      (v / v.sum(-1, true)).to(at::kBFloat16);
      at::bincount(i.reshape({-1}), {}, E);
    });
    Report("router_topk", "4096x128 fp32 k=8", T * E * f32 + T * k * (b16 + i64), fwd,
           T * E * f32 * 2 + T * k * (b16 + i64), bwd, ref);
  }
  ExpertOrder order;
  {  // Counting sort of the (token, slot) pairs by expert.
    order = SortByExpertCuda(experts, E);
    const double fwd = MedianMs([&] { SortByExpertCuda(experts, E); });
    const double ref = MedianMs([&] { SortByExpertReference(experts, E); });
    Report("expert_sort", "4096x8 E=128", T * k * i64 * 3, fwd, 0, 0, ref);
  }
  {  // Permute rows into expert order, and the k-way unpermute-sum back (each the other's backward).
    at::Tensor x = at::randn({T, H}, bf), y = at::randn({T * k, H}, bf);
    const double bytes = 2.0 * T * k * H * b16;
    const double fwd = MedianMs([&] { PermuteRowsCuda(x, order.order, k); });
    const double bwd = MedianMs([&] { UnpermuteSumCuda(y, order.inverse, k); });
    const double ref = MedianMs([&] { PermuteRowsReference(x, order.order, k); });
    Report("permute_rows", "4096x2048 -> 32768x2048 bf16", bytes, fwd, T * k * H * b16 + T * H * b16, bwd, ref);
    const double uref = MedianMs([&] { UnpermuteSumReference(y, order.inverse, k); });
    Report("unpermute_sum", "32768x2048 -> 4096x2048 bf16", T * k * H * b16 + T * H * b16, bwd, bytes, fwd, uref);
  }
  {  // SwiGLU with the routing weight folded in.
    const int64_t N = T * k;
    at::Tensor h = at::randn({N, 2 * F}, bf), w = at::rand({N}, bf), dout = at::randn({N, F}, bf);
    const double fwd = MedianMs([&] { WeightedSwigluForwardCuda(h, w); });
    const double bwd = MedianMs([&] { WeightedSwigluBackwardCuda(dout, h, w); });
    const double ref = MedianMs([&] { WeightedSwigluForwardReference(h, w); });
    Report("weighted_swiglu", "32768x1536 bf16", 3.0 * N * F * b16 + N * b16, fwd, 5.0 * N * F * b16 + 2 * N * b16,
           bwd, ref);
  }
  RunSwigluPair();
  {  // GPT-OSS's clamped SwiGLU (limit 7, alpha 1.702, up + 1), weight folded in: GPT-OSS-20B's
     // experts (top-4, F = 2880); inputs * 4 so that the clamps bite. Same bytes as weighted_swiglu.
    const int64_t N = T * 4, Fo = 2880;
    const SwigluOptions gpt_oss = SwigluOptions::GptOss(7.0, 1.702);
    at::Tensor h = at::randn({N, 2 * Fo}, bf) * 4, w = at::rand({N}, bf), dout = at::randn({N, Fo}, bf);
    const double fwd = MedianMs([&] { WeightedSwigluForwardCuda(h, w, gpt_oss); });
    const double bwd = MedianMs([&] { WeightedSwigluBackwardCuda(dout, h, w, gpt_oss); });
    const double ref = MedianMs([&] { WeightedSwigluForwardReference(h, w, gpt_oss); });
    Report("clamped_swiglu", "16384x5760 bf16", 3.0 * N * Fo * b16 + N * b16, fwd, 5.0 * N * Fo * b16 + 2 * N * b16,
           bwd, ref);
  }
  {  // relu^2 with the routing weight folded in: Nemotron Nano 3's experts (top-6, F = 1856).
    const int64_t N = T * 6, Fn = 1856;
    at::Tensor h = at::randn({N, Fn}, bf), w = at::rand({N}, bf), dout = at::randn({N, Fn}, bf);
    const double fwd = MedianMs([&] { WeightedRelu2ForwardCuda(h, w); });
    const double bwd = MedianMs([&] { WeightedRelu2BackwardCuda(dout, h, w); });
    const double ref = MedianMs([&] { WeightedRelu2ForwardReference(h, w); });
    Report("weighted_relu2", "24576x1856 bf16", 2.0 * N * Fn * b16 + N * b16, fwd, 3.0 * N * Fn * b16 + 2 * N * b16,
           bwd, ref);
  }
  RunSquaredNorm();
  RunNemotronKernels();
  RunGroupedGemms(/*fused_update_only=*/false);
  RunLibraryOps();
  return 0;
}

// Achieved TFLOP/s of a matrix op against the measured dense bf16 ceiling (~800 on H100).
void ReportFlops(const std::string& op, const std::string& shape, double flops, double ms) {
  nlohmann::json j;
  j["op"] = op;
  j["shape"] = shape;
  j["ms"] = ms;
  j["tflops"] = flops / (ms * 1e-3) / 1e12;
  j["pct_989"] = 100.0 * flops / (ms * 1e-3) / 989e12;
  std::printf("%s\n", j.dump().c_str());
  std::fflush(stdout);
}

// The library ops on the hot path: attention backends (GQA, causal), grouped GEMM, the fused
// linear cross-entropy and the fused AdamW step.
void RunLibraryOps() {
  const int64_t T = 4096, H = 2048, D = 128, Hq = 32, Hkv = 4, E = 128, k = 8, F = 768, V = 151936;
  auto bf = at::TensorOptions().device(at::kCUDA).dtype(at::kBFloat16);
  // Causal attention fwd: 2 GEMMs of 2*S*S*D per head, halved by the mask; bwd 2.5x that.
  const double attn_fwd_flops = 4.0 * T * T * D * Hq / 2;
  auto& ctx = at::globalContext();
  struct Backend {
    const char* name;
    bool flash, efficient, cudnn, math;
  };
  for (const Backend& b : {Backend{"flash", true, false, false, false}, Backend{"efficient", false, true, false, false},
                           Backend{"cudnn", false, false, true, false}}) {
    ctx.setSDPUseFlash(b.flash);
    ctx.setSDPUseMemEfficient(b.efficient);
    ctx.setSDPUseCuDNN(b.cudnn);
    ctx.setSDPUseMath(b.math);
    for (bool gqa : {true, false}) {
      try {
        at::Tensor q = at::randn({1, Hq, T, D}, bf).requires_grad_(true);
        at::Tensor kk = at::randn({1, gqa ? Hkv : Hq, T, D}, bf).requires_grad_(true);
        at::Tensor v = at::randn({1, gqa ? Hkv : Hq, T, D}, bf).requires_grad_(true);
        at::Tensor dout = at::randn({1, Hq, T, D}, bf);
        c10::AutoGradMode grad(true);
        const double fwd = MedianMs([&] {
          c10::NoGradGuard ng;
          at::scaled_dot_product_attention(q, kk, v, {}, 0.0, true, {}, gqa);
        });
        const double fb = MedianMs([&] {
          at::Tensor o = at::scaled_dot_product_attention(q, kk, v, {}, 0.0, true, {}, gqa);
          o.backward(dout);
        });
        ReportFlops(std::string("sdpa_") + b.name + (gqa ? "_gqa" : "_mha") + "_fwd", "1x32x4096x128 causal",
                    attn_fwd_flops, fwd);
        ReportFlops(std::string("sdpa_") + b.name + (gqa ? "_gqa" : "_mha") + "_fwd+bwd", "1x32x4096x128 causal",
                    3.5 * attn_fwd_flops, fb);
      } catch (const std::exception& e) {
        nlohmann::json j = {{"op", std::string("sdpa_") + b.name + (gqa ? "_gqa" : "_mha")},
                            {"error", std::string(e.what()).substr(0, 160)}};
        std::printf("%s\n", j.dump().c_str());
      }
    }
  }
  ctx.setSDPUseFlash(true);
  ctx.setSDPUseMemEfficient(true);
  ctx.setSDPUseCuDNN(true);
  ctx.setSDPUseMath(true);
  {  // Expert GEMMs at the real router's row counts (random logits, top-8 of 128).
    at::Tensor logits = at::randn({T, E}, bf.dtype(at::kFloat));
    RouterOutput r = RouterTopKForwardCuda(logits, {}, RouterOptions{k, RouterScore::kSoftmax, true, 1.0, at::kBFloat16});
    at::Tensor offs = r.counts.cumsum(0).to(at::kInt);
    const int64_t N = T * k;
    at::Tensor x = at::randn({N, H}, bf), wgu = at::randn({E, H, 2 * F}, bf) * 0.02, wd = at::randn({E, F, H}, bf) * 0.02;
    at::Tensor a = at::randn({N, F}, bf), dy = at::randn({N, H}, bf), dh = at::randn({N, 2 * F}, bf);
    ReportFlops("grouped_mm_gate_up", "32768x2048 @ 128x2048x1536", 2.0 * N * H * 2 * F,
                MedianMs([&] { at::_grouped_mm(x, wgu, offs); }));
    ReportFlops("grouped_mm_down", "32768x768 @ 128x768x2048", 2.0 * N * F * H, MedianMs([&] { at::_grouped_mm(a, wd, offs); }));
    ReportFlops("grouped_mm_down_dX", "32768x2048 @ 128x2048x768", 2.0 * N * F * H,
                MedianMs([&] { at::_grouped_mm(dy, wd.transpose(1, 2), offs); }));
    ReportFlops("grouped_mm_down_dW", "(768x32768 @ 32768x2048) x128", 2.0 * N * F * H,
                MedianMs([&] { at::_grouped_mm(a.t(), dy, offs); }));
    ReportFlops("grouped_mm_gate_up_dW", "(2048x32768 @ 32768x1536) x128", 2.0 * N * H * 2 * F,
                MedianMs([&] { at::_grouped_mm(x.t(), dh, offs); }));
    ReportFlops("dense_mm_ref", "32768x2048 @ 2048x1536", 2.0 * N * H * 2 * F,
                MedianMs([&] { at::mm(x, wgu.select(0, 0)); }));
  }
  {  // Fused linear cross-entropy (forward computes both gradients), lm_head 151936x2048.
    at::Tensor h = (at::randn({T, H}, bf)).requires_grad_(true);
    at::Tensor w = (at::randn({V, H}, bf) * 0.02).requires_grad_(true);
    at::Tensor t = at::randint(0, V, {T}, bf.dtype(at::kLong));
    c10::AutoGradMode grad(true);
    for (int64_t chunk : {1024, 2048, 4096}) {
      const double ms = MedianMs([&] { ftd::engine::LinearCrossEntropySum(h, w, t, chunk); });
      ReportFlops("linear_ce_fwd+bwd_chunk" + std::to_string(chunk), "4096x2048 @ 2048x151936", 6.0 * T * H * V, ms);
    }
  }
  {  // Cross-entropy rows over one chunk of bf16 lm_head logits, gradient written in place.
    const int64_t n = 1024;
    at::Tensor logits = at::randn({n, V}, bf) * 3, work = at::empty_like(logits);
    at::Tensor t = at::randint(0, V, {n}, bf.dtype(at::kLong));
    const double ms = MedianMs([&] {
      work.copy_(logits);
      CrossEntropyRowsInPlaceCuda(work, t, -100);
    });
    const double copy_ms = MedianMs([&] { work.copy_(logits); });
    const double ref = MedianMs([&] { CrossEntropyRowsReference(logits, t, -100); });
    // Two reads and one write of the row (the copy that refreshes the input is timed apart).
    Report("cross_entropy_rows", "1024x151936 bf16", 3.0 * n * V * 2, ms - copy_ms, 0, 0, ref);
  }
  {  // Fused AdamW over one bf16 tensor of 311M elements (an embedding): reads p, g, m, v, writes p, m, v.
    const int64_t n = V * H;
    at::Tensor p = at::randn({n}, bf), g = at::randn({n}, bf), m = at::randn({n}, bf) * 0.01, v = at::rand({n}, bf);
    at::Tensor step = at::zeros({}, bf.dtype(at::kFloat));
    const double ms = MedianMs([&] {
      at::_fused_adamw_({p}, {g}, {m}, {v}, {}, {step}, 1e-5, 0.9, 0.95, 0.0, 1e-8, false, false, std::nullopt, std::nullopt);
    });
    at::Tensor p2 = p.clone(), m2 = m.clone(), v2 = v.clone();
    const double ours = MedianMs([&] { AdamWStepCuda(p2, g, m2, v2, step, AdamWHyper{1e-5, 0.9, 0.999, 0.01, 1e-8}); });
    Report("adamw_step", "311M bf16 params", 7.0 * n * 2, ours, 0, 0, ms);
    const double bytes = 7.0 * n * 2;
    nlohmann::json j = {{"op", "fused_adamw_bf16"}, {"shape", "311M params"}, {"ms", ms}, {"gbps", bytes / (ms * 1e-3) / 1e9},
                        {"pct_hbm", 100.0 * bytes / (ms * 1e-3) / kHbmBytesPerSecond}};
    std::printf("%s\n", j.dump().c_str());
  }
  {  // Compact AdamW (kernels/adamw_compact.h) over the same 311M bf16 elements: reads p, its low
     // half, g and the two 1-byte moments, writes all but g (14 bytes per element, as bf16 AdamW).
    const int64_t n = V * H;
    auto [p, low, g, step, mo, h] = MakeCompactBenchState(n);
    const double ms = MedianMs([&] { CompactAdamWStepCuda(p, low, g, mo, step, h); });
    at::Tensor p2 = at::randn({n}, bf), m2 = at::zeros({n}, bf), v2 = at::zeros({n}, bf);
    const double legacy = MedianMs([&] { AdamWStepCuda(p2, g, m2, v2, step, AdamWHyper{1e-5, 0.9, 0.999, 0.01, 1e-8}); });
    Report("adamw_compact", "311M bf16 params (split master, 8-bit moments)", 14.0 * n + 16.0 * n / 256, ms, 0, 0,
           legacy);
    // compact_sr: no low half, the bf16 weights rounded stochastically (10 bytes per element).
    low = at::Tensor();
    h.round_salt = 17;
    const double sr_ms = MedianMs([&] { CompactAdamWStepCuda(p, low, g, mo, step, h); });
    Report("adamw_compact_sr", "311M bf16 params (stochastically rounded, 8-bit moments)", 10.0 * n + 16.0 * n / 256,
           sr_ms, 0, 0, ms);
  }
  {  // Row-sparse AdamW over the [V, H] embedding after a 4096-token step from fresh state: the
     // touched rows get the dense update, the rest are skipped after reading their gradient row.
    at::Tensor p = at::randn({V, H}, bf), m = at::zeros({V, H}, bf), v = at::zeros({V, H}, bf);
    at::Tensor g = at::zeros({V, H}, bf);
    at::Tensor rows = at::randint(0, V, {4096}, bf.dtype(at::kLong));
    g.index_put_({rows}, at::randn({4096, H}, bf));
    const int64_t touched_rows = std::get<0>(at::_unique(rows)).numel();
    at::Tensor touched = at::zeros({V}, bf.dtype(at::kByte));
    at::Tensor step = at::ones({}, bf.dtype(at::kFloat));
    const AdamWHyper h{1e-5, 0.9, 0.999, 0.0, 1e-8};  // row skipping is exact only without decay
    const double ms = MedianMs([&] {
      touched.zero_();
      AdamWRowSparseStepCuda(p, g, m, v, step, touched, h);
    });
    at::Tensor p2 = p.clone(), m2 = m.clone(), v2 = v.clone();
    const double dense = MedianMs([&] { AdamWStepCuda(p2, g, m2, v2, step, h); });
    // Bytes: every gradient row read; touched rows also read p, m, v and write p, m, v.
    Report("adamw_row_sparse", "151936x2048 bf16, " + std::to_string(touched_rows) + " rows touched",
           2.0 * V * H + 12.0 * touched_rows * H, ms, 0, 0, dense);

    // The same step from the lookup's gradient dy [4096, H] (AdamW::EmbeddingLookup): no dense
    // gradient. Reference: the path it replaces, embedding backward then the row-sparse update.
    at::Tensor dy = at::randn({4096, H}, bf);
    at::Tensor slot_of = at::full({V}, -1, bf.dtype(at::kInt));
    const double fused = MedianMs([&] {
      touched.zero_();
      AdamWEmbeddingStepCuda(p, m, v, step, touched, slot_of, rows, dy, h);
    });
    const double replaced = MedianMs([&] {
      touched.zero_();
      at::Tensor dense_grad = at::embedding_dense_backward(dy, rows, V, -1, false);
      AdamWRowSparseStepCuda(p2, dense_grad, m2, v2, step, touched, h);
    });
    // Bytes: dy read, the summed rows written and read, touched rows' p, m, v read and written.
    Report("adamw_embedding_from_lookup", "151936x2048 bf16, 4096 tokens, " + std::to_string(touched_rows) + " rows",
           2.0 * 4096 * H + 4.0 * touched_rows * H + 12.0 * touched_rows * H, fused, 0, 0, replaced);
  }
}

// Nemotron-H's Mamba2 kernels at Nemotron Nano 3's shape (seq 4096): the causal conv1d + SiLU
// over the x|B|C channels (4096 + 2 x 8 x 128 = 6144, K = 4, read in place from the in_proj
// output [4096, 10304]) and the SSD scan (64 heads of 64, 8 groups, state 128). The scan is
// latency-bound (4096 dependent steps); its line also reports FLOP/s (4 x S x nh x P x N forward,
// about 3x that backward with the recomputation) against 989 TFLOP/s.
void RunNemotronKernels() {
  const int64_t S = 4096, nh = 64, P = 64, G = 8, N = 128, C = nh * P + 2 * G * N, K = 4;
  const double b16 = 2, f32 = 4;
  auto bf = at::TensorOptions().device(at::kCUDA).dtype(at::kBFloat16);
  auto fp = bf.dtype(at::kFloat);
  {
    at::Tensor zxbcdt = at::randn({1, S, nh * P + C + nh}, bf);
    at::Tensor x = zxbcdt.narrow(2, nh * P, C);
    at::Tensor w = at::randn({C, K}, bf), bias = at::randn({C}, bf), dy = at::randn({1, S, C}, bf);
    const double fwd = MedianMs([&] { CausalConv1dSiluForwardCuda(x, w, bias, {}); });
    const double bwd = MedianMs([&] { CausalConv1dSiluBackwardCuda(dy, x, w, bias, {}); });
    const double ref = MedianMs([&] { CausalConv1dSiluForwardReference(x, w, bias, {}); });
    Report("causal_conv1d_silu", "1x4096x6144 K4 bf16", 2.0 * S * C * b16, fwd, 3.0 * S * C * b16, bwd, ref);
  }
  {
    at::Tensor xbc = at::randn({1, S, C}, bf);
    at::Tensor x = xbc.narrow(2, 0, nh * P).view({1, S, nh, P});
    at::Tensor b = xbc.narrow(2, nh * P, G * N).view({1, S, G, N});
    at::Tensor c = xbc.narrow(2, nh * P + G * N, G * N).view({1, S, G, N});
    at::Tensor dt = at::softplus(at::randn({1, S, nh}, fp) - 2), A = -at::rand({nh}, fp) - 0.1;
    at::Tensor D = at::randn({nh}, bf);
    auto [y, ckpt] = SsdScanForwardCuda(x, dt, A, b, c, D, {});
    at::Tensor dy = at::randn_like(y);
    const double fwd = MedianMs([&] { SsdScanForwardCuda(x, dt, A, b, c, D, {}); });
    const double bwd = MedianMs([&] { SsdScanBackwardCuda(dy, x, dt, A, b, c, D, {}, ckpt); });
    // The reference scan is an ATen loop over tokens: timed once over 256 tokens, scaled to 4096.
    auto t0 = std::chrono::steady_clock::now();
    SsdScanForwardReference(x.narrow(1, 0, 256), dt.narrow(1, 0, 256), A, b.narrow(1, 0, 256), c.narrow(1, 0, 256), D,
                            {});
    cudaDeviceSynchronize();
    const double ref = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() * (S / 256);
    const double bytes = S * (nh * P + 2 * G * N) * b16 + S * nh * f32 + S * nh * P * f32;
    Report("ssd_scan", "1x4096, 64 heads x 64, 8 groups, state 128, bf16 in / fp32 state", bytes, fwd,
           bytes + S * nh * P * f32 + 2 * S * G * N * f32, bwd, ref);
    ReportFlops("ssd_scan_fwd", "1x4096x64x64x128", 4.0 * S * nh * P * N, fwd);
    ReportFlops("ssd_scan_bwd", "1x4096x64x64x128", 12.0 * S * nh * P * N, bwd);
  }
}

// ftd's own grouped GEMM (kernels/grouped_gemm.h), every tile, against at::_grouped_mm on the same
// operands: the six expert GEMMs of a layer (forward gate_up and down, the backward's two dX and
// two dW) at the real router's row counts (softmax top-k of random logits), for each family's
// expert shape. One JSON line per GEMM: each kernel's ms and TFLOP/s, the best tile, the
// largest difference from _grouped_mm's output relative to its largest element, and the GEMM's
// roofline: each operand read once and the output written once at 3.35 TB/s, or 989 TFLOP/s,
// whichever binds. Each expert's weights serve only ~T*k/E rows, so these GEMMs sit near the
// H100's ridge point (295 FLOP/byte): moving the weights (or dW) costs about as much as the math.
void RunGroupedGemms(bool fused_update_only) {
  struct Shape {
    const char* name;
    int64_t T, H, E, k, F;
  };
  const Shape shapes[] = {{"qwen3_30b_a3b", 4096, 2048, 128, 8, 768},
                          {"moonlight_16b_a3b", 4096, 2048, 64, 6, 1408},
                          {"gpt_oss_20b", 4096, 2880, 32, 4, 2880},
                          {"mixtral_8x7b", 4096, 4096, 8, 2, 14336}};
  auto bf = at::TensorOptions().device(at::kCUDA).dtype(at::kBFloat16);
  for (const Shape& sh : shapes) {
    const int64_t N = sh.T * sh.k, H = sh.H, F = sh.F, E = sh.E;
    at::Tensor logits = at::randn({sh.T, E}, bf.dtype(at::kFloat));
    RouterOutput r =
        RouterTopKForwardCuda(logits, {}, RouterOptions{sh.k, RouterScore::kSoftmax, true, 1.0, at::kBFloat16});
    at::Tensor offs = r.counts.cumsum(0).to(at::kInt);
    at::Tensor x = at::randn({N, H}, bf), wgu = at::randn({E, H, 2 * F}, bf) * 0.02, wd = at::randn({E, F, H}, bf) * 0.02;
    at::Tensor a = at::randn({N, F}, bf), dy = at::randn({N, H}, bf), dh = at::randn({N, 2 * F}, bf);
    struct Op {
      const char* name;
      double flops;
      double bytes;  // operands once, output once
      std::function<at::Tensor()> aten;
      std::function<at::Tensor(GroupedGemmTile)> own;
    };
    const double gu = 2.0 * N * H * 2 * F, dn = 2.0 * N * F * H;
    const double rows_h = 2.0 * N * H, rows_f = 2.0 * N * F, rows_2f = 4.0 * N * F, w_gu = 4.0 * E * H * F,
                 w_dn = 2.0 * E * F * H;
    const Op ops[] = {
        {"gate_up", gu, rows_h + w_gu + rows_2f, [&] { return at::_grouped_mm(x, wgu, offs); }, [&](GroupedGemmTile t) { return GroupedMmCuda(x, wgu, offs, t); }},
        {"down", dn, rows_f + w_dn + rows_h, [&] { return at::_grouped_mm(a, wd, offs); }, [&](GroupedGemmTile t) { return GroupedMmCuda(a, wd, offs, t); }},
        {"down_dX", dn, rows_h + w_dn + rows_f, [&] { return at::_grouped_mm(dy, wd.transpose(1, 2), offs); },
         [&](GroupedGemmTile t) { return GroupedMmCuda(dy, wd.transpose(1, 2), offs, t); }},
        {"gate_up_dX", gu, rows_2f + w_gu + rows_h, [&] { return at::_grouped_mm(dh, wgu.transpose(1, 2), offs); },
         [&](GroupedGemmTile t) { return GroupedMmCuda(dh, wgu.transpose(1, 2), offs, t); }},
        {"down_dW", dn, rows_f + rows_h + w_dn, [&] { return at::_grouped_mm(a.t(), dy, offs); },
         [&](GroupedGemmTile t) { return GroupedMmWeightGradCuda(a, dy, offs, t); }},
        {"gate_up_dW", gu, rows_h + rows_2f + w_gu, [&] { return at::_grouped_mm(x.t(), dh, offs); },
         [&](GroupedGemmTile t) { return GroupedMmWeightGradCuda(x, dh, offs, t); }},
    };
    at::Tensor counts = r.counts.to(at::kCPU);
    for (const Op& op : ops) {
      if (fused_update_only) break;
      nlohmann::json j;
      j["op"] = std::string("grouped_gemm_") + op.name;
      j["shape"] = std::string(sh.name) + ": T " + std::to_string(sh.T) + " top-" + std::to_string(sh.k) + " of " +
                   std::to_string(E) + ", H " + std::to_string(H) + ", F " + std::to_string(F);
      j["rows_per_expert_min_max"] = {counts.min().item<int64_t>(), counts.max().item<int64_t>()};
      auto tflops = [&](double ms) { return op.flops / (ms * 1e-3) / 1e12; };
      at::Tensor expected = op.aten().to(at::kFloat);
      const double scale = expected.abs().max().item<double>();
      const double aten_ms = MedianMs([&] { op.aten(); });
      j["aten_grouped_mm"] = {{"ms", aten_ms}, {"tflops", tflops(aten_ms)}};
      double best_ms = 1e30;
      std::string best;
      for (int t = 0; t < kGroupedGemmTileCount; ++t) {
        const auto tile = static_cast<GroupedGemmTile>(t);
        try {
          const double diff = (op.own(tile).to(at::kFloat) - expected).abs().max().item<double>() / scale;
          const double ms = MedianMs([&] { op.own(tile); });
          j[GroupedGemmTileName(tile)] = {{"ms", ms}, {"tflops", tflops(ms)}, {"max_rel_diff", diff}};
          if (ms < best_ms) best_ms = ms, best = GroupedGemmTileName(tile);
        } catch (const std::exception& e) {
          j[GroupedGemmTileName(tile)] = {{"error", std::string(e.what()).substr(0, 200)}};
        }
      }
      j["best"] = best;
      j["best_tflops"] = tflops(best_ms);
      const double roofline_s = std::max(op.bytes / kHbmBytesPerSecond, op.flops / 989e12);
      j["roofline_tflops"] = op.flops / roofline_s / 1e12;
      j["best_pct_of_roofline"] = 100.0 * roofline_s / (best_ms * 1e-3);
      j["speedup_vs_aten"] = aten_ms / best_ms;
      std::printf("%s\n", j.dump().c_str());
      std::fflush(stdout);
    }
    // The weight gradient taken into the compact AdamW step (the optimizer in backward): the
    // fused kernel (update in the GEMM's epilogue) against the weight-gradient GEMM followed by
    // the element-wise compact step, on the layer's two stacked weights. Bytes: the operands once,
    // and the parameter's 12 bytes of state traffic (bf16 weight, int16 low half, two 1-byte
    // codes, read and written); the unfused pair adds dW's write and read (4 bytes).
    struct Fused {
      const char* name;
      at::Tensor a, b, param;
      double flops, operand_bytes;
    };
    const Fused fused_ops[] = {{"down", a, dy, wd, dn, rows_f + rows_h}, {"gate_up", x, dh, wgu, gu, rows_h + rows_2f}};
    for (const Fused& f : fused_ops) {
      if (f.param.size(2) % kCompactBlock != 0) continue;
      const int64_t n = f.param.numel();
      auto [p0, low0] = SplitMaster(f.param.to(at::kFloat));
      CompactMoments m0 = CompactMoments::Zeros(n, p0.device());
      AdamWHyper h;
      h.lr = 1e-5;
      h.scalars = at::tensor({1e-5f, 1.0f}, at::TensorOptions().device(at::kCUDA));
      at::Tensor step = at::ones({}, at::TensorOptions().device(at::kCUDA));
      at::Tensor p = p0.clone(), low = low0.clone();
      const double fused_ms = MedianMs([&] { GroupedMmWeightGradCompactAdamWCuda(f.a, f.b, offs, p, low, m0, step, h); });
      const double unfused_ms = MedianMs([&] {
        CompactAdamWStepCuda(p, low, GroupedMmWeightGradCuda(f.a, f.b, offs, GroupedGemmTile::kCooperative128x256), m0,
                             step, h);
      });
      nlohmann::json j;
      j["op"] = std::string("grouped_gemm_") + f.name + "_dW_compact_adamw";
      j["shape"] = std::string(sh.name) + ": param " + std::to_string(f.param.size(0)) + "x" +
                   std::to_string(f.param.size(1)) + "x" + std::to_string(f.param.size(2));
      const double bytes = f.operand_bytes + 12.0 * n;
      j["fused"] = {{"ms", fused_ms}, {"GB_s", bytes / (fused_ms * 1e-3) / 1e9},
                    {"pct_of_hbm", 100.0 * bytes / kHbmBytesPerSecond / (fused_ms * 1e-3)}};
      j["unfused_gemm_then_step"] = {{"ms", unfused_ms}};
      j["speedup"] = unfused_ms / fused_ms;
      j["roofline_ms"] = 1e3 * std::max(bytes / kHbmBytesPerSecond, f.flops / 989e12);
      std::printf("%s\n", j.dump().c_str());
      std::fflush(stdout);
    }
    // The clipping norm of the same weights' gradients without forming them
    // (parallelism.recompute_expert_grads): the squares-only weight-gradient GEMM (dW's FLOPs)
    // against the groups' token Gram matrices (2 T_g^2 (K + M) FLOPs a group), with the norms'
    // relative difference. TFLOP/s of the Grams count their own FLOPs.
    const double gram_rows_sq = counts.to(at::kDouble).square().sum().item<double>();
    for (const Fused& f : fused_ops) {
      at::Tensor sq = at::zeros({1}, at::TensorOptions().device(at::kCUDA));
      if (!GroupedMmWeightGradSquaredNormCudaSupports(f.a, f.b, sq)) continue;
      auto norm_ms = [&](WeightGradNormMethod method) {
        return MedianMs([&] { GroupedMmWeightGradSquaredNormCuda(f.a, f.b, offs, sq, method); });
      };
      auto norm = [&](WeightGradNormMethod method) {
        sq.zero_();
        GroupedMmWeightGradSquaredNormCuda(f.a, f.b, offs, sq, method);
        return sq.item<double>();
      };
      const double squares_ms = norm_ms(WeightGradNormMethod::kSquaresOnly);
      const double gram_ms = norm_ms(WeightGradNormMethod::kGram);
      const double want = norm(WeightGradNormMethod::kSquaresOnly), got = norm(WeightGradNormMethod::kGram);
      const double gram_flops = 2.0 * gram_rows_sq * static_cast<double>(f.a.size(1) + f.b.size(1));
      nlohmann::json j;
      j["op"] = std::string("grouped_gemm_") + f.name + "_dW_squared_norm";
      j["shape"] = std::string(sh.name) + ": a " + std::to_string(N) + "x" + std::to_string(f.a.size(1)) + ", b " +
                   std::to_string(N) + "x" + std::to_string(f.b.size(1)) + ", " + std::to_string(E) + " groups";
      j["squares_only_gemm"] = {{"ms", squares_ms}, {"tflops", f.flops / (squares_ms * 1e-3) / 1e12}};
      j["gram"] = {{"ms", gram_ms}, {"tflops", gram_flops / (gram_ms * 1e-3) / 1e12}, {"flops_of_dW", gram_flops / f.flops}};
      j["speedup"] = squares_ms / gram_ms;
      j["auto_picks"] = PickWeightGradNormMethod(N, E, f.a.size(1), f.b.size(1)) == WeightGradNormMethod::kGram
                            ? "gram"
                            : "squares_only";
      j["rel_diff"] = std::abs(got - want) / want;
      std::printf("%s\n", j.dump().c_str());
      std::fflush(stdout);
    }
  }
}

// The compact AdamW update beside a GEMM on another stream (issue 25's overlap): can a few SMs
// move the update's bytes while the others compute? The update is one Qwen3-30B-A3B layer's
// experts (604M bf16 parameters, 14 bytes each). Lines:
//  - adamw_compact_sms: the element-wise kernel on the whole GPU, and the bulk-copy kernel
//    (kernels/adamw_compact_bulk.h) on K SMs: ms, GB/s, GB/s an SM;
//  - adamw_overlap: GEMM runs (the experts' gate_up grouped GEMM, or a dense lm_head-sized GEMM
//    through cuBLASLt) on 132 - K SMs (ATen's SM carve-out, which both honour) while the bulk
//    update runs on K: the pair's time against each alone and against the two one after the
//    other on the whole GPU (what the step does now).
// The element-wise compact step alone against its ceiling: a device copy of the same bytes
// (7 read and 7 written a parameter), over one Qwen3-30B-A3B layer's expert weights.
void RunAdamWCompactCeiling() {
  const int64_t n = int64_t{128} * 3 * 2048 * 768;
  auto [p, low, g, step, mo, h] = MakeCompactBenchState(n);
  const double bytes = 14.0 * n + 16.0 * n / 256;
  auto gbps = [&](double ms) { return bytes / (ms * 1e-3) / 1e9; };
  const double update_ms = MedianMs([&] { CompactAdamWStepCuda(p, low, g, mo, step, h); });
  at::Tensor src = at::empty({7 * n}, p.options().dtype(at::kByte)), dst = at::empty_like(src);
  src.fill_(1);
  const double copy_ms = MedianMs([&] { dst.copy_(src); });
  nlohmann::json j = {{"op", "adamw_compact_ceiling"}, {"shape", "604M bf16 params"},
                      {"update_ms", update_ms},        {"update_GB_s", gbps(update_ms)},
                      {"copy_ms", copy_ms},            {"copy_GB_s", gbps(copy_ms)},
                      {"update_of_copy", copy_ms / update_ms}};
  std::printf("%s\n", j.dump().c_str());
  {  // compact_sr on the same parameter: no low half, stochastic rounding; 10 bytes an element.
    const double sr_bytes = 10.0 * n + 16.0 * n / 256;
    h.round_salt = 17;
    const double sr_ms = MedianMs([&] { CompactAdamWStepCuda(p, at::Tensor(), g, mo, step, h); });
    at::Tensor sr_dst = dst.narrow(0, 0, 5 * n), sr_src = src.narrow(0, 0, 5 * n);
    const double sr_copy_ms = MedianMs([&] { sr_dst.copy_(sr_src); });
    nlohmann::json sr = {{"op", "adamw_compact_sr_ceiling"},  {"shape", "604M bf16 params"},
                         {"update_ms", sr_ms},                 {"update_GB_s", sr_bytes / (sr_ms * 1e-3) / 1e9},
                         {"copy_ms", sr_copy_ms},              {"update_of_copy", sr_copy_ms / sr_ms},
                         {"compact_update_ms", update_ms},     {"speedup_over_compact", update_ms / sr_ms}};
    std::printf("%s\n", sr.dump().c_str());
  }

  // The embedding table's step from its lookup's token rows (Qwen3-30B-A3B's table, 4096 tokens
  // of which ~3,900 distinct, three steps in so that their rows' moments are set): the kernel
  // walks every block of the table and updates those with a gradient or moments.
  const int64_t V = 151936, H = 2048, T = 4096;
  auto bf = at::TensorOptions().device(at::kCUDA).dtype(at::kBFloat16);
  auto [tp, tlow] = SplitMaster(at::randn({V, H}, bf.dtype(at::kFloat)) * 0.02);
  CompactMoments tmo = CompactMoments::Zeros(V * H, tp.device());
  at::Tensor tstep = at::zeros({}, bf.dtype(at::kFloat)), slot_of = at::full({V}, -1, bf.dtype(at::kInt));
  at::Tensor ids = at::randint(0, V, {T}, bf.dtype(at::kLong)), dy = at::randn({T, H}, bf);
  AdamWHyper th{1e-5, 0.9, 0.999, 0.0, 1e-8};
  th.scalars = at::tensor({1e-5f, 1.0f}).to(tp.device());
  auto rows_step = [&] {
    at::Tensor token_rows = EmbeddingTokenRowsCuda(ids, dy, slot_of);
    CompactAdamWRowsStepCuda(tp, tlow, tmo, tstep, token_rows, slot_of, th);
  };
  for (int i = 0; i < 3; ++i) {
    tstep.add_(1.0);
    rows_step();
  }
  const double distinct = static_cast<double>(std::get<0>(at::_unique(ids)).numel());
  const double rows_ms = MedianMs(rows_step);
  nlohmann::json r = {{"op", "adamw_compact_embedding_rows"},
                      {"shape", "151936x2048 bf16 table, 4096 token ids"},
                      {"distinct_rows", distinct},
                      {"ms", rows_ms},
                      {"GB_s_of_touched_rows", (14.0 * distinct * H + 4.0 * T * H) / (rows_ms * 1e-3) / 1e9}};
  std::printf("%s\n", r.dump().c_str());
}

void RunAdamWOverlap() {
  auto bf = at::TensorOptions().device(at::kCUDA).dtype(at::kBFloat16);
  const int64_t n = int64_t{128} * 3 * 2048 * 768;
  auto [p, low, g, step, mo, h] = MakeCompactBenchState(n);
  const double bytes = 14.0 * n + 16.0 * n / 256;
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  auto gbps = [&](double ms) { return bytes / (ms * 1e-3) / 1e9; };
  const double elementwise_ms = MedianMs([&] { CompactAdamWStepCuda(p, low, g, mo, step, h); });
  {
    nlohmann::json j = {{"op", "adamw_compact_sms"}, {"shape", "604M bf16 params"}, {"kernel", "elementwise"},
                        {"sms", sms}, {"ms", elementwise_ms}, {"GB_s", gbps(elementwise_ms)}};
    std::printf("%s\n", j.dump().c_str());
  }
  if (!CompactAdamWBulkSupports(p, low, g, mo, step, h)) {
    std::printf("{\"op\": \"adamw_compact_sms\", \"skipped\": \"the bulk-copy kernel does not take these tensors\"}\n");
    return;
  }
  {  // The bulk kernel equals the element-wise one bit for bit (one step from the same state).
    at::Tensor p2 = p.clone(), low2 = low.clone(), p3 = p.clone(), low3 = low.clone();
    CompactMoments m2{mo.r_codes.clone(), mo.s_codes.clone(), mo.r_scale.clone(), mo.s_max.clone()};
    CompactMoments m3{mo.r_codes.clone(), mo.s_codes.clone(), mo.r_scale.clone(), mo.s_max.clone()};
    CompactAdamWStepCuda(p2, low2, g, m2, step, h);
    CompactAdamWStepBulkCuda(p3, low3, g, m3, step, h, 24);
    const bool same = at::equal(p2, p3) && at::equal(low2, low3) && at::equal(m2.r_codes, m3.r_codes) &&
                      at::equal(m2.s_codes, m3.s_codes) && at::equal(m2.s_max, m3.s_max);
    std::printf("{\"op\": \"adamw_compact_bulk_equals_elementwise\", \"equal\": %s}\n", same ? "true" : "false");
  }
  for (int k : {0, 66, 48, 32, 24, 16, 8}) {
    const double ms = MedianMs([&] { CompactAdamWStepBulkCuda(p, low, g, mo, step, h, k); });
    const int used = k == 0 ? sms : k;
    nlohmann::json j = {{"op", "adamw_compact_sms"}, {"shape", "604M bf16 params"}, {"kernel", "bulk"},
                        {"sms", used}, {"ms", ms}, {"GB_s", gbps(ms)}, {"GB_s_per_sm", gbps(ms) / used}};
    std::printf("%s\n", j.dump().c_str());
    std::fflush(stdout);
  }

  // The GEMMs beside it.
  const int64_t T = 4096, H = 2048, E = 128, K = 8, F = 768, V = 151936;
  at::Tensor logits = at::randn({T, E}, bf.dtype(at::kFloat));
  RouterOutput r = RouterTopKForwardCuda(logits, {}, RouterOptions{K, RouterScore::kSoftmax, true, 1.0, at::kBFloat16});
  at::Tensor offs = r.counts.cumsum(0).to(at::kInt);
  at::Tensor x = at::randn({T * K, H}, bf), wgu = at::randn({E, H, 2 * F}, bf) * 0.02;
  at::Tensor hidden = at::randn({T, H}, bf), lm_head = at::randn({V, H}, bf) * 0.02;
  struct Gemm {
    const char* name;
    int runs;
    std::function<void()> run;
  };
  const Gemm gemms[] = {
      {"experts_gate_up_grouped_gemm", 10, [&] { GroupedMmCuda(x, wgu, offs, GroupedGemmTile::kCooperative128x256); }},
      {"lm_head_logits_mm_cublaslt", 2, [&] { at::mm(hidden, lm_head.t()); }},
  };
  const auto saved_backend = at::globalContext().blasPreferredBackend();
  at::globalContext().setBlasPreferredBackend(at::BlasBackend::Cublaslt);
  c10::cuda::CUDAStream side = c10::cuda::getStreamFromPool(/*isHighPriority=*/false);
  cudaEvent_t fork, join;
  cudaEventCreateWithFlags(&fork, cudaEventDisableTiming);
  cudaEventCreateWithFlags(&join, cudaEventDisableTiming);
  for (const Gemm& gm : gemms) {
    auto gemm_runs = [&] {
      for (int i = 0; i < gm.runs; ++i) gm.run();
    };
    const double gemm_all_ms = MedianMs(gemm_runs);
    for (int k : {32, 24, 16}) {
      at::globalContext()._setSMCarveout_EXPERIMENTAL(k);
      const double gemm_ms = MedianMs(gemm_runs);
      const double update_ms = MedianMs([&] { CompactAdamWStepBulkCuda(p, low, g, mo, step, h, k); });
      const double both_ms = MedianMs([&] {
        cudaStream_t main = c10::cuda::getCurrentCUDAStream().stream();
        cudaEventRecord(fork, main);
        cudaStreamWaitEvent(side.stream(), fork);
        {
          c10::cuda::CUDAStreamGuard guard(side);
          CompactAdamWStepBulkCuda(p, low, g, mo, step, h, k);
        }
        cudaEventRecord(join, side.stream());
        gemm_runs();
        cudaStreamWaitEvent(main, join);
      });
      at::globalContext()._setSMCarveout_EXPERIMENTAL(std::nullopt);
      nlohmann::json j = {{"op", "adamw_overlap"},
                          {"gemm", std::string(gm.name) + " x" + std::to_string(gm.runs)},
                          {"update_sms", k},
                          {"gemm_all_sms_ms", gemm_all_ms},
                          {"gemm_carved_ms", gemm_ms},
                          {"update_alone_ms", update_ms},
                          {"together_ms", both_ms},
                          {"serial_all_sms_ms", gemm_all_ms + elementwise_ms},
                          {"saved_ms", gemm_all_ms + elementwise_ms - both_ms}};
      std::printf("%s\n", j.dump().c_str());
      std::fflush(stdout);
    }
  }
  at::globalContext().setBlasPreferredBackend(saved_backend);
  cudaEventDestroy(fork);
  cudaEventDestroy(join);
}

#endif  // FTD_WITH_CUDA

}  // namespace
}  // namespace ftd::kernels

// `ftd-kernel-bench grouped_gemm` runs only the grouped GEMM comparison (`grouped_gemm_adamw`
// only its weight-gradient GEMMs with the update in the epilogue), `ftd-kernel-bench
// adamw_overlap` only the update beside a GEMM, `ftd-kernel-bench adamw_compact` the element-wise
// update against a copy of the same bytes, `ftd-kernel-bench squared_norm` the clipping norm's pass, `swiglu_pair` the dense MLP's activation.
int main(int argc, char** argv) {
  const std::string only = argc > 1 ? argv[1] : "";
  if (!ftd::kernels::CudaKernelsAvailable()) {
    std::printf("{\"skipped\": \"ftd-kernel-bench needs the CUDA kernels (FTD_WITH_CUDA) and a visible GPU\"}\n");
    return 0;
  }
#ifdef FTD_WITH_CUDA
  if (only == "grouped_gemm" || only == "grouped_gemm_adamw") {
    c10::NoGradGuard no_grad;
    ftd::kernels::RunGroupedGemms(/*fused_update_only=*/only == "grouped_gemm_adamw");
    return 0;
  }
  if (only == "mla_qkv") {
    c10::NoGradGuard no_grad;
    ftd::kernels::RunMlaQkv();
    return 0;
  }
  if (only == "squared_norm" || only == "swiglu_pair") {
    c10::NoGradGuard no_grad;
    only == "squared_norm" ? ftd::kernels::RunSquaredNorm() : ftd::kernels::RunSwigluPair();
    return 0;
  }
  if (only == "adamw_compact") {
    c10::NoGradGuard no_grad;
    ftd::kernels::RunAdamWCompactCeiling();
    return 0;
  }
  if (only == "adamw_overlap") {
    c10::NoGradGuard no_grad;
    ftd::kernels::RunAdamWOverlap();
    return 0;
  }
  return ftd::kernels::Run();
#else
  return 0;
#endif
}
