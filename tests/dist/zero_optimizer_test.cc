// ZeRO-2 AdamW (ranks as threads, real Gloo reduce-scatter/all-gather) against the engine's
// AdamW on the summed gradients; its resumable state; per-rank memory accounting.
#include <mutex>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include "engine/dist/memory_accounting.h"
#include "engine/dist/zero_optimizer.h"
#include "engine/io/safetensors.h"
#include "engine/model/hf_checkpoint.h"
#include "engine/train/optimizer.h"
#include "tests/dist/ranks_util.h"

namespace ftd::engine {
namespace {

at::Tensor Randn(std::vector<int64_t> shape, uint64_t seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  return at::normal(0.0, 1.0, shape, gen, at::TensorOptions().dtype(at::kFloat));
}

// Odd sizes so that slices cut through parameters and the last rank is padded.
const std::vector<std::pair<std::string, std::vector<int64_t>>> kParams = {
    {"model.embed_tokens.weight", {7, 5}},
    {"model.layers.0.input_layernorm.weight", {5}},       // no weight decay
    {"model.layers.0.self_attn.q_proj.weight", {3, 5}},
    {"model.layers.0.mlp.gate.weight", {4, 5}},           // no gradient anywhere: skipped
    {"model.layers.0.self_attn.o_proj.weight", {5, 3}},   // a gradient on rank 0 only
};
constexpr int kWorld = 3;
constexpr int kSteps = 3;

// Rank r's gradient of parameter i at step s (undefined where the case wants none).
at::Tensor GradFor(size_t i, int r, int s) {
  if (i == 3) return {};
  if (i == 4 && r != 0) return {};
  return Randn(kParams[i].second, 1000 * s + 100 * i + r);
}

std::vector<at::Tensor> InitialValues(at::ScalarType dtype = at::kFloat) {
  std::vector<at::Tensor> v;
  for (size_t i = 0; i < kParams.size(); ++i) v.push_back(Randn(kParams[i].second, 7 + i).to(dtype));
  return v;
}

struct Owned {
  std::vector<at::Tensor> tensors;
  std::vector<NamedParam> params;
  explicit Owned(const std::vector<at::Tensor>& init) {
    for (const at::Tensor& t : init) tensors.push_back(t.clone().requires_grad_());
    for (size_t i = 0; i < kParams.size(); ++i) params.push_back({kParams[i].first, &tensors[i], false});
  }
};

const AdamWConfig kAdam{0.9, 0.95, 1e-8, 0.1};

// Under each policy the sharded optimizer steps as AdamW on the summed gradients (the compact
// moments' blocks are the unsharded ones: each parameter starts at a block boundary).
// With min_equal_fraction > 0, that share of the elements must be equal bit for bit.
void CheckEqualsAdamW(PrecisionPolicy policy, double rtol, double atol, at::ScalarType dtype = at::kFloat,
                      double min_equal_fraction = 0.0) {
  // Reference: AdamW, gradients summed over the ranks (missing ones count as zeros).
  Owned ref(InitialValues(dtype));
  auto adam = AdamW::Create(ref.params, policy, kAdam);
  ASSERT_TRUE(adam.ok());
  for (int s = 0; s < kSteps + 1; ++s) {
    for (size_t i = 0; i < kParams.size(); ++i) {
      at::Tensor sum;
      for (int r = 0; r < kWorld; ++r) {
        at::Tensor g = GradFor(i, r, s);
        if (g.defined()) sum = sum.defined() ? sum + g : g;
      }
      if (sum.defined()) ref.tensors[i].mutable_grad() = sum;
    }
    (*adam)->Step(1e-2 * (s + 1));
    (*adam)->ZeroGrad();
  }

  const std::string state_dir = testing::FreshTempDir("zero_state");
  std::mutex mu;
  testing::RunRanks({.world_size = kWorld}, [&](int r, ProcessGroups& g) {
    Owned mine(InitialValues(dtype));
    auto zero = ShardedAdamW::Create(mine.params, g.world.get(), policy, kAdam);
    ASSERT_TRUE(zero.ok()) << zero.status();
    // Every parameter starts at a multiple of the compact block (256), the slices too.
    EXPECT_EQ((*zero)->total_numel(), 5 * 256);
    EXPECT_EQ((*zero)->slice_numel(), 512);
    auto run_step = [&](ShardedAdamW& opt, int s) {
      for (size_t i = 0; i < kParams.size(); ++i) mine.tensors[i].mutable_grad() = GradFor(i, r, s);
      ASSERT_TRUE(opt.ReduceGradients().ok());
      for (const at::Tensor& t : mine.tensors) EXPECT_FALSE(t.grad().defined());  // freed
      ASSERT_TRUE(opt.Step(1e-2 * (s + 1)).ok());
    };
    for (int s = 0; s < kSteps; ++s) run_step(**zero, s);
    // Save this rank's slice, start a fresh optimizer from it, take the last step there.
    ASSERT_TRUE(SaveSafetensors(state_dir + "/" + std::to_string(r), (*zero)->StateTensors()).ok());
    Owned resumed(InitialValues(dtype));  // wrong values on purpose: LoadState restores the weights
    auto again = ShardedAdamW::Create(resumed.params, g.world.get(), policy, kAdam);
    ASSERT_TRUE(again.ok());
    auto reader = SafetensorsReader::Open(state_dir + "/" + std::to_string(r));
    ASSERT_TRUE(reader.ok());
    ASSERT_TRUE((*again)->LoadState(**reader, kSteps).ok());
    for (size_t i = 0; i < kParams.size(); ++i) EXPECT_TRUE(resumed.tensors[i].equal(mine.tensors[i])) << i;
    mine.tensors.swap(resumed.tensors);
    for (size_t i = 0; i < kParams.size(); ++i) mine.params[i].tensor = &mine.tensors[i];
    run_step(**again, kSteps);
    std::lock_guard<std::mutex> lock(mu);
    double equal = 0, total = 0;
    for (size_t i = 0; i < kParams.size(); ++i) {
      EXPECT_TRUE(at::allclose(mine.tensors[i], ref.tensors[i], rtol, atol))
          << "rank " << r << " " << kParams[i].first << " max diff "
          << (mine.tensors[i] - ref.tensors[i]).abs().max().item<float>();
      equal += mine.tensors[i].eq(ref.tensors[i]).sum().item<double>();
      total += static_cast<double>(mine.tensors[i].numel());
    }
    EXPECT_GE(equal / total, min_equal_fraction) << "rank " << r;
    // The parameter without gradients never moved (AdamW skipped it too: no weight decay).
    EXPECT_TRUE(mine.tensors[3].equal(InitialValues(dtype)[3]));
  });
}

TEST(ShardedAdamWTest, EqualsAdamWOnSummedGradientsAndResumes) { CheckEqualsAdamW(PrecisionPolicy::kFp32Master, 1e-6, 1e-7); }

// Gloo sums the ranks' gradients in another order than the reference: a moment code may round
// the other way (one step of the 8-bit code: at most 0.4% of the block's largest update).
TEST(ShardedAdamWTest, CompactEqualsAdamWOnSummedGradientsAndResumes) {
  CheckEqualsAdamW(PrecisionPolicy::kCompact, 1e-5, 2e-4);
}

// compact_sr on bf16 weights, resumed from the saved state (every parameter of kParams lies in
// one slice).
TEST(ShardedAdamWTest, CompactSrEqualsAdamWOnSummedGradientsAndResumes) {
  CheckEqualsAdamW(PrecisionPolicy::kCompactSr, 8e-3, 2e-4, at::kBFloat16, /*min_equal_fraction=*/0.9);
}

// compact_sr with a parameter cut by the slices: each rank rounds its part stochastically with
// the bits of the elements' offsets in the whole parameter, so the shards round as the unsharded
// optimizer does (apart from the order of the gradients' sums: an update that lands within a few
// fp32 ulps of a rounding threshold may go the other way, one bf16 ulp). With the slices' own
// offsets about half of the second and third ranks' elements would differ (updates of 1e-2 to
// 3e-2 on bf16 ulps of 2^-8 to 2^-7).
TEST(ShardedAdamWTest, CompactSrShardsRoundAsTheWholeParameter) {
  const std::vector<int64_t> shape = {1500};  // slices of 512: ranks 1 and 2 hold its middle and end
  auto grad_for = [](int r, int s) { return Randn({1500}, 500 + 10 * s + r); };
  const at::Tensor init = Randn({1500}, 77).to(at::kBFloat16);
  at::Tensor ref = init.clone().requires_grad_();
  auto adam = AdamW::Create({{"model.layers.0.mlp.experts.down_proj", &ref, false}}, PrecisionPolicy::kCompactSr, kAdam);
  ASSERT_TRUE(adam.ok());
  for (int s = 0; s < kSteps; ++s) {
    ref.mutable_grad() = grad_for(0, s) + grad_for(1, s) + grad_for(2, s);
    (*adam)->Step(1e-2 * (s + 1));
    (*adam)->ZeroGrad();
  }
  EXPECT_GT(ref.ne(init).to(at::kFloat).mean().item<double>(), 0.5);  // not vacuous: most moved
  std::mutex mu;
  testing::RunRanks({.world_size = kWorld}, [&](int r, ProcessGroups& g) {
    at::Tensor mine = init.clone().requires_grad_();
    auto zero = ShardedAdamW::Create({{"model.layers.0.mlp.experts.down_proj", &mine, false}}, g.world.get(),
                                     PrecisionPolicy::kCompactSr, kAdam);
    ASSERT_TRUE(zero.ok()) << zero.status();
    ASSERT_EQ((*zero)->slice_numel(), 512);
    for (int s = 0; s < kSteps; ++s) {
      mine.mutable_grad() = grad_for(r, s);
      ASSERT_TRUE((*zero)->ReduceGradients().ok());
      ASSERT_TRUE((*zero)->Step(1e-2 * (s + 1)).ok());
    }
    std::lock_guard<std::mutex> lock(mu);
    for (int part = 0; part < 3; ++part) {
      const int64_t begin = 512 * part, length = std::min<int64_t>(512, 1500 - begin);
      const at::Tensor a = mine.detach().narrow(0, begin, length), b = ref.detach().narrow(0, begin, length);
      EXPECT_GE(a.eq(b).to(at::kFloat).mean().item<double>(), 0.95) << "rank " << r << ", slice " << part;
      EXPECT_TRUE(at::allclose(a.to(at::kFloat), b.to(at::kFloat), 8e-3, 0)) << "rank " << r << ", slice " << part;
    }
  });
}

TEST(ShardedAdamWTest, RejectsMixedDtypes) {
  testing::RunRanks({.world_size = 1}, [](int, ProcessGroups& g) {
    at::Tensor a = at::zeros({2}).requires_grad_(), b = at::zeros({2}, at::kDouble).requires_grad_();
    auto opt = ShardedAdamW::Create({{"a", &a}, {"b", &b}}, g.world.get(), PrecisionPolicy::kFp32Master, kAdam);
    EXPECT_FALSE(opt.ok());
  });
}

TEST(RankMemoryTest, ExpertBytesAreTheTotalOverEp) {
  ModelConfig c = *PresetConfig("tiny");
  ModelOptions all;
  ModelWeights full = InitRandomWeights(c, all, 0);
  EnableGradients(full);
  const RankMemory whole = AccountRankMemory(ListParameters(full), PrecisionPolicy::kFp32Master, 0, 0);
  const int64_t expert_total = c.NumMoeLayers() * c.num_experts * 3 * c.hidden_size * c.moe_intermediate_size * 4;
  EXPECT_EQ(whole.expert_param_bytes, expert_total);
  for (int ep : {2, 4}) {
    for (int j = 0; j < ep; ++j) {
      ModelOptions o;
      o.expert_count = c.num_experts / ep;
      o.expert_begin = j * o.expert_count;
      ModelWeights w = InitRandomWeights(c, o, 0);
      EnableGradients(w);
      RankMemory m = AccountRankMemory(ListParameters(w), PrecisionPolicy::kFp32Master, 0, 0);
      EXPECT_EQ(m.expert_param_bytes * ep, expert_total) << "ep " << ep;
      EXPECT_EQ(m.dense_param_bytes, whole.dense_param_bytes);
      EXPECT_EQ(m.expert_optimizer_bytes, 2 * m.expert_param_bytes);  // fp32: two moments, no master
    }
  }
  // bf16 parameters keep an fp32 master besides two fp32 moments.
  ModelOptions bf16;
  bf16.dtype = at::kBFloat16;
  ModelWeights w = InitRandomWeights(c, bf16, 0);
  EnableGradients(w);
  RankMemory m = AccountRankMemory(ListParameters(w), PrecisionPolicy::kFp32Master, 0, 0);
  EXPECT_EQ(m.expert_optimizer_bytes, 6 * m.expert_param_bytes);
}

}  // namespace
}  // namespace ftd::engine
