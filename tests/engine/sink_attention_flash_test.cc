// Attention with sinks on FlashAttention's outputs (engine/model/core/sink_attention_flash.h):
// - on the CPU, through the dense reference of the kernel's contract (logsumexp out, the row
//   term taken from the `out` the backward is given), it equals autograd of HF's dense formula
//   (SinkAttentionDense) in fp64 and fp32: output, dq, dk, dv and dsinks, for causal rows, a
//   sliding window shorter than the sequence, GQA and packed documents;
// - on CUDA (skipped without a GPU), the FlashAttention-2 kernel in bf16 against the dense
//   formula in fp32 and the SDPA form (SinkAttentionSdpa) in bf16, on the same cases;
// - a GPT-OSS model with ModelOptions::sink_attention kFlash gives what the mask path gives, and
//   its packed rows (through cu_seqlens) give each document what it gets alone.
#include <algorithm>
#include <functional>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include "engine/model/config.h"
#include "engine/model/core/gqa_attention.h"
#include "engine/model/core/sink_attention_flash.h"
#include "engine/model/hf_checkpoint.h"
#include "engine/model/transformer.h"
#include "engine/model/varlen_attention.h"
#include "gtest/gtest.h"
#include "tests/engine/packed_row_test_util.h"

namespace ftd::engine {
namespace {

struct SinkCase {
  std::string name;
  int64_t q_heads, kv_heads;
  bool packed;     // rows of several documents (different boundaries per row)
  int64_t window;  // 0: full causal
};

const std::vector<SinkCase>& Cases() {
  static const std::vector<SinkCase> cases = {
      {"causal", 4, 4, false, 0},        {"causal_gqa", 8, 2, false, 0},   {"window", 4, 4, false, 3},
      {"window_gqa", 8, 2, false, 4},    {"packed_gqa", 8, 2, true, 0},    {"packed_window_gqa", 8, 2, true, 3},
      {"window_beyond_rows", 4, 2, false, 64},
  };
  return cases;
}

// Row 0: documents of 4, 1 and 8 tokens; row 1: 6 and 7 (S = 13).
at::Tensor Segments() {
  return at::tensor({0, 0, 0, 0, 1, 2, 2, 2, 2, 2, 2, 2, 2, 5, 5, 5, 5, 5, 5, 7, 7, 7, 7, 7, 7, 7}, at::kLong)
      .view({2, 13});
}

// HF's dense mask for a case: undefined (causal), document and/or window.
at::Tensor DenseMask(const SinkCase& c, int64_t S) {
  at::Tensor segments = c.packed ? Segments() : at::Tensor();
  if (c.window > 0) return SlidingWindowCausalMask(S, c.window, segments, at::kCPU);
  return PackedCausalMask(segments);
}

struct Inputs {
  at::Tensor q, k, v, sinks, g;  // q [B, S, Hq, D], k, v [B, S, Hkv, D], g like q
};

Inputs RandomInputs(const SinkCase& c, at::ScalarType dtype, at::Device device) {
  const int64_t B = 2, S = 13, D = 16;
  at::TensorOptions o = at::TensorOptions().dtype(dtype).device(device);
  Inputs in;
  in.q = at::randn({B, S, c.q_heads, D}, at::kDouble).to(o);
  in.k = at::randn({B, S, c.kv_heads, D}, at::kDouble).to(o);
  in.v = at::randn({B, S, c.kv_heads, D}, at::kDouble).to(o);
  in.sinks = (2 * at::randn({c.q_heads}, at::kDouble)).to(o);  // large enough to matter
  in.g = at::randn({B, S, c.q_heads, D}, at::kDouble).to(o);
  return in;
}

// Output and the gradients of sum(out * g) in q, k, v, sinks, all as fp64 on the CPU.
struct Result {
  at::Tensor out;
  std::vector<at::Tensor> grads;
};

using SinkFn = std::function<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&)>;

Result RunSink(const Inputs& in, at::ScalarType dtype, const SinkFn& fn) {
  std::vector<at::Tensor> leaves;
  for (const at::Tensor& t : {in.q, in.k, in.v, in.sinks}) leaves.push_back(t.to(dtype).detach().requires_grad_(true));
  at::Tensor out = fn(leaves[0], leaves[1], leaves[2], leaves[3]);
  (out * in.g.to(dtype)).sum().backward();
  Result r{out.detach().to(at::kCPU, at::kDouble), {}};
  for (const at::Tensor& t : leaves) {  // undefined: the formula does not use it (plain attention's sinks)
    r.grads.push_back((t.grad().defined() ? t.grad() : at::zeros_like(t)).to(at::kCPU, at::kDouble));
  }
  return r;
}

SinkFn Flash(const SinkCase& c, at::Device device) {
  return [c, device](const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& sinks) {
    VarlenBoundaries documents = c.packed ? VarlenBoundariesFromSegmentIds(Segments(), device) : VarlenBoundaries{};
    return SinkAttentionFlash(q, k, v, sinks, documents, c.window, 0.25);
  };
}

// The [B, heads, S, D] formulas on [B, S, heads, D] tensors.
SinkFn HeadsFirst(const SinkCase& c, bool sdpa) {
  return [c, sdpa](const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& sinks) {
    at::Tensor mask = DenseMask(c, q.size(1));
    if (mask.defined()) mask = mask.to(q.device());
    auto f = sdpa ? SinkAttentionSdpa : SinkAttentionDense;
    return f(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), mask, sinks, 0.25).transpose(1, 2);
  };
}

void ExpectClose(const Result& ours, const Result& ref, double rtol, double atol, const std::string& what) {
  EXPECT_TRUE(at::allclose(ours.out, ref.out, rtol, atol))
      << what << " out: max diff " << (ours.out - ref.out).abs().max().item<double>();
  const char* names[] = {"dq", "dk", "dv", "dsinks"};
  for (size_t i = 0; i < ref.grads.size(); ++i) {
    const double scale = ref.grads[i].abs().max().item<double>();
    EXPECT_TRUE(at::allclose(ours.grads[i], ref.grads[i], rtol, atol * std::max(1.0, scale)))
        << what << " " << names[i] << ": max diff " << (ours.grads[i] - ref.grads[i]).abs().max().item<double>()
        << " of max " << scale;
  }
  EXPECT_GT(ref.grads[3].abs().sum().item<double>(), 0) << what;  // the sinks take gradients
}

TEST(SinkAttentionFlash, ReferenceKernelEqualsTheDenseFormulaForwardAndBackward) {
  for (const SinkCase& c : Cases()) {
    at::manual_seed(3);
    Inputs in = RandomInputs(c, at::kDouble, at::kCPU);
    ExpectClose(RunSink(in, at::kDouble, Flash(c, at::kCPU)), RunSink(in, at::kDouble, HeadsFirst(c, false)), 1e-10, 1e-12,
                c.name + " fp64");
    ExpectClose(RunSink(in, at::kFloat, Flash(c, at::kCPU)), RunSink(in, at::kFloat, HeadsFirst(c, false)), 1e-4, 1e-5,
                c.name + " fp32");
  }
}

// Without sinks' mass (sink -inf) the decomposition is plain attention: r = 1, dsinks = 0.
TEST(SinkAttentionFlash, VanishingSinksGivePlainAttention) {
  SinkCase c{"packed_window_gqa", 8, 2, true, 3};
  at::manual_seed(5);
  Inputs in = RandomInputs(c, at::kDouble, at::kCPU);
  in.sinks.fill_(-1e4);
  Result ours = RunSink(in, at::kDouble, Flash(c, at::kCPU));
  Result plain = RunSink(in, at::kDouble, [&](const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor&) {
    at::Tensor mask = DenseMask(c, q.size(1));
    return at::scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), mask, 0.0, false,
                                            0.25, /*enable_gqa=*/true)
        .transpose(1, 2);
  });
  EXPECT_TRUE(at::allclose(ours.out, plain.out, 1e-10, 1e-12));
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(at::allclose(ours.grads[i], plain.grads[i], 1e-10, 1e-12)) << i;
  EXPECT_EQ(ours.grads[3].abs().max().item<double>(), 0);
}

TEST(SinkAttentionFlash, RejectsWhatTheKernelCannotServe) {
  at::Tensor q = at::randn({1, 4, 3, 8}), k = at::randn({1, 4, 2, 8});
  try {
    SinkAttentionFlash(q, k, k, at::zeros({3}), {}, 0, 1.0);
    FAIL() << "3 q heads over 2 K/V heads accepted";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("SinkAttentionFlash: unsupported"), std::string::npos) << e.what();
  }
  try {
    SinkAttentionFlash(at::randn({1, 4, 2, 8}), k, k, at::zeros({3}), {}, 0, 1.0);
    FAIL() << "3 sinks for 2 heads accepted";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("sinks must be [2]"), std::string::npos) << e.what();
  }
}

TEST(SinkAttentionFlashCuda, KernelInBf16MatchesTheDenseFormulaAndSdpa) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  const at::Device cuda(at::kCUDA, 0);
  for (const SinkCase& c : Cases()) {
    at::manual_seed(3);
    Inputs in = RandomInputs(c, at::kFloat, cuda);
    Result flash = RunSink(in, at::kBFloat16, Flash(c, cuda));
    Result dense = RunSink(in, at::kFloat, HeadsFirst(c, false));
    Result sdpa = RunSink(in, at::kBFloat16, HeadsFirst(c, true));
    // bf16 activations against fp32: a few bf16 ulps of the largest values.
    ExpectClose(flash, dense, 2e-2, 2e-2, c.name + " flash bf16 vs dense fp32");
    ExpectClose(sdpa, dense, 2e-2, 2e-2, c.name + " sdpa bf16 vs dense fp32");
    // Flash no further from fp32 than SDPA (the path it replaces), up to bf16 noise.
    const double flash_err = (flash.out - dense.out).abs().max().item<double>();
    const double sdpa_err = (sdpa.out - dense.out).abs().max().item<double>();
    EXPECT_LE(flash_err, 2 * sdpa_err + 1e-2) << c.name;
  }
}

// The model-level wiring: sliding layers get the window, packed rows cu_seqlens, no masks.
TEST(SinkAttentionFlash, GptOssModelEqualsTheMaskPath) {
  ModelConfig c = *PresetConfig("tiny-gpt-oss");
  c.sliding_window = 3;
  ModelOptions mask_path;
  mask_path.sink_attention = SinkAttentionPath::kSdpa;
  ModelOptions flash_path;
  flash_path.sink_attention = SinkAttentionPath::kFlash;
  ModelWeights init = InitRandomWeights(c, mask_path, 11);
  {
    c10::NoGradGuard no_grad;
    for (LayerWeights& L : init.layers) L.attn.sinks.normal_(0, 1);
  }
  // A packed row (two documents) through both paths; PackedRowRun's packed model holds its gradients.
  testing::PackedRowRun masked = testing::RunPackedRowAndDocuments(c, mask_path, init, 7, 9, 3);
  testing::PackedRowRun flash = testing::RunPackedRowAndDocuments(c, flash_path, init, 7, 9, 3);
  testing::ExpectPackedRowEqualsDocuments(flash);
  EXPECT_TRUE(at::allclose(flash.packed_result.logits, masked.packed_result.logits, 1e-5, 1e-5));
  std::vector<NamedParam> a = flash.packed_model->Parameters(), b = masked.packed_model->Parameters();
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_TRUE(at::allclose(a[i].tensor->grad(), b[i].tensor->grad(), 1e-4, 1e-5)) << a[i].name;
  }
}

}  // namespace
}  // namespace ftd::engine
