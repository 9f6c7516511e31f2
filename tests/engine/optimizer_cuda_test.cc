// engine/train/optimizer.h on CUDA: AdamW::Step runs kernels/adamw.h (dense, and row-sparse for
// embedding tables) and must give what ATen's fused AdamW gives on the same tensors, for the
// pure-bf16 and the fp32-master policies, over several steps with an embedding that only some
// rows' tokens reach. With the compact policy in backward, the bulk-copy kernel on a few SMs
// (AdamWConfig::side_stream_bulk_sms) steps as the element-wise kernel does.
#include <tuple>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include "engine/train/optimizer.h"
#include "gtest/gtest.h"
#include "kernels/adamw_compact_bulk.h"

namespace ftd::engine {
namespace {

TEST(AdamWCuda, StepMatchesAtenFusedAdamW) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  for (PrecisionPolicy policy : {PrecisionPolicy::kBf16Pure, PrecisionPolicy::kFp32Master}) {
    SCOPED_TRACE(policy == PrecisionPolicy::kBf16Pure ? "bf16 pure" : "fp32 master");
    auto bf = at::TensorOptions().device(at::kCUDA).dtype(at::kBFloat16);
    at::manual_seed(3);
    at::Tensor embed = at::randn({1000, 64}, bf).requires_grad_(true);
    at::Tensor proj = at::randn({64, 48}, bf).requires_grad_(true);
    at::Tensor norm = at::ones({64}, bf).requires_grad_(true);
    std::vector<NamedParam> params = {{"model.embed_tokens.weight", &embed}, {"model.layers.0.proj.weight", &proj},
                                      {"model.norm.weight", &norm}};
    // The reference: ATen's fused AdamW on fp32 copies (master) or on bf16 copies (pure).
    const auto ref_dtype = policy == PrecisionPolicy::kBf16Pure ? at::kBFloat16 : at::kFloat;
    std::vector<at::Tensor> ref_p, ref_m, ref_v, ref_step;
    for (auto& p : params) {
      ref_p.push_back(p.tensor->detach().to(ref_dtype).clone());
      ref_m.push_back(at::zeros_like(ref_p.back()));
      ref_v.push_back(at::zeros_like(ref_p.back()));
      ref_step.push_back(at::zeros({}, bf.dtype(at::kFloat)));
    }
    const at::Tensor proj_before = proj.detach().clone();
    AdamWConfig config;
    config.weight_decay = 0.01;
    auto opt = AdamW::Create(params, policy, config);
    ASSERT_TRUE(opt.ok()) << opt.status();
    const double lr = 1e-4;
    for (int step = 0; step < 3; ++step) {
      // The embedding's gradient reaches 50 of its 1000 rows, different ones each step.
      at::Tensor rows = at::randint(0, 1000, {50}, bf.dtype(at::kLong));
      at::Tensor g_embed = at::zeros({1000, 64}, bf).index_put_({rows}, at::randn({50, 64}, bf));
      std::vector<at::Tensor> grads = {g_embed, at::randn({64, 48}, bf), at::randn({64}, bf)};
      for (size_t i = 0; i < params.size(); ++i) params[i].tensor->mutable_grad() = grads[i].clone();
      (*opt)->Step(lr);
      (*opt)->ZeroGrad();
      for (size_t i = 0; i < params.size(); ++i) {
        const double wd = i == 2 ? 0.0 : config.weight_decay;  // norms take no decay
        ref_step[i].add_(1.0);
        at::_fused_adamw_({ref_p[i]}, {grads[i].to(ref_dtype)}, {ref_m[i]}, {ref_v[i]}, {}, {ref_step[i]}, lr,
                          config.beta1, config.beta2, wd, config.eps, false, false, std::nullopt, std::nullopt);
        // Same fp32 arithmetic, rounded once to the stored dtype: at most an ulp of bf16 apart.
        at::Tensor got = params[i].tensor->detach().to(at::kFloat), want = ref_p[i].to(at::kBFloat16).to(at::kFloat);
        EXPECT_TRUE(at::allclose(got, want, 8e-3, 1e-6))
            << "param " << i << " step " << step << " max diff " << (got - want).abs().max().item<double>();
      }
    }
    EXPECT_FALSE(at::equal(proj.detach(), proj_before));  // the updates moved the parameters
  }
}

// AdamW::EmbeddingLookup with the optimizer in backward: the lookup's backward steps the table
// from the token rows (no dense gradient is formed) as the dense gradient's update would, and the
// other parameters step as usual.
TEST(AdamWCuda, EmbeddingLookupStepsTheTableInBackward) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  auto bf = at::TensorOptions().device(at::kCUDA).dtype(at::kBFloat16);
  at::manual_seed(5);
  const at::Tensor embed0 = at::randn({900, 64}, bf), proj0 = at::randn({64, 32}, bf);
  struct Run {
    at::Tensor embed, proj;
    bool grad_seen = false;
  };
  auto train = [&](bool lookup) {
    Run r{embed0.clone().requires_grad_(true), proj0.clone().requires_grad_(true)};
    std::vector<NamedParam> params = {{"model.embed_tokens.weight", &r.embed}, {"model.layers.0.proj.weight", &r.proj}};
    AdamWConfig config;  // no weight decay: rows no token reached stay as they are
    auto opt = AdamW::Create(params, PrecisionPolicy::kBf16Pure, config);
    EXPECT_TRUE(opt.ok()) << opt.status();
    (*opt)->EnableStepInBackward();
    auto gen = at::make_generator<at::CPUGeneratorImpl>(9);
    for (int step = 0; step < 3; ++step) {
      at::Tensor ids = at::randint(0, 300, {4, 50}, gen, at::kLong).to(at::kCUDA);  // repeats, rows 300+ never
      at::Tensor x = lookup ? (*opt)->EmbeddingLookup(r.embed, ids) : at::embedding(r.embed, ids);
      at::Tensor loss = at::matmul(x, r.proj).to(at::kFloat).pow(2).mean();
      (*opt)->BeginStepInBackward(1e-3);
      loss.backward();
      (*opt)->FinishStepInBackward();
      r.grad_seen |= r.embed.grad().defined();
    }
    return r;
  };
  Run dense = train(false), fused = train(true);
  EXPECT_FALSE(fused.grad_seen);
  for (auto [got, want, name] : {std::tuple{fused.embed, dense.embed, "embed"}, std::tuple{fused.proj, dense.proj, "proj"}}) {
    at::Tensor g = got.detach().to(at::kFloat), w = want.detach().to(at::kFloat);
    // The same updates up to the order of fp32 sums over repeated tokens: a bf16 ulp or two.
    EXPECT_TRUE(at::allclose(g, w, 1.6e-2, 1e-5)) << name << " max diff " << (g - w).abs().max().item<double>();
  }
  at::Tensor moved = fused.embed.detach().ne(embed0).any(1);
  EXPECT_TRUE(moved.slice(0, 0, 300).any().item<bool>());
  EXPECT_FALSE(moved.slice(0, 300).any().item<bool>());  // rows no token reached keep their values
}


// The compact step in backward by the bulk-copy kernel on 8 SMs (with the GEMMs' carve-out)
// leaves every parameter bit for bit as the element-wise kernel does: a weight of whole chunks,
// one with a partial chunk (its rest element-wise), one smaller than a chunk, and an fp32 one
// (its own master: the element-wise kernel).
TEST(AdamWCuda, BulkStepInBackwardEqualsTheElementwiseStep) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  auto bf = at::TensorOptions().device(at::kCUDA).dtype(at::kBFloat16);
  const int64_t chunk = kernels::kCompactBulkChunk;
  {
    auto [p, low] = kernels::SplitMaster(at::zeros({chunk}, bf.dtype(at::kFloat)));
    if (!kernels::CompactAdamWBulkSupports(p, low, p, kernels::CompactMoments::Zeros(chunk, at::kCUDA),
                                           at::zeros({}, bf.dtype(at::kFloat)), kernels::AdamWHyper{})) {
      GTEST_SKIP() << "the bulk-copy kernel needs an sm90 GPU";
    }
  }
  at::manual_seed(17);
  const at::Tensor w0 = at::randn({8, chunk / 4}, bf) * 0.05;           // 2 chunks
  const at::Tensor w1 = at::randn({3 * chunk / 64 + 4, 64}, bf) * 0.05;  // 3 chunks and 256 more
  const at::Tensor w2 = at::randn({16, 64}, bf) * 0.05;                 // under a chunk
  const at::Tensor w3 = at::randn({2 * chunk}, bf.dtype(at::kFloat)) * 0.05;  // fp32
  auto train = [&](int bulk_sms) {
    std::vector<at::Tensor> w = {w0.clone().requires_grad_(true), w1.clone().requires_grad_(true),
                                 w2.clone().requires_grad_(true), w3.clone().requires_grad_(true)};
    std::vector<NamedParam> params = {{"model.layers.0.a.weight", &w[0]},
                                      {"model.layers.0.b.weight", &w[1]},
                                      {"model.layers.0.c.weight", &w[2]},
                                      {"model.layers.0.d.weight", &w[3]}};
    AdamWConfig config;
    config.side_stream_bulk_sms = bulk_sms;
    config.backward_sm_carveout = bulk_sms;
    auto opt = AdamW::Create(params, PrecisionPolicy::kCompact, config);
    EXPECT_TRUE(opt.ok()) << opt.status();
    (*opt)->EnableStepInBackward();
    for (int step = 0; step < 3; ++step) {
      at::manual_seed(40 + step);
      at::Tensor loss = at::zeros({}, bf.dtype(at::kFloat));
      for (auto& t : w) loss = loss + (t.to(at::kFloat) * at::randn(t.sizes(), bf.dtype(at::kFloat))).sum();
      (*opt)->BeginStepInBackward(1e-3);
      loss.backward();
      (*opt)->FinishStepInBackward();
    }
    return w;
  };
  const std::vector<at::Tensor> elementwise = train(0), bulk = train(8);
  for (size_t i = 0; i < bulk.size(); ++i) {
    EXPECT_TRUE(at::equal(bulk[i], elementwise[i])) << "weight " << i;
    EXPECT_FALSE(at::equal(bulk[i], std::vector<at::Tensor>{w0, w1, w2, w3}[i])) << "weight " << i << " moved";
  }
}

}  // namespace
}  // namespace ftd::engine
