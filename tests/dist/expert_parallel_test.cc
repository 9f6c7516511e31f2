// Expert-parallel dispatch (ranks as threads, real Gloo all-to-alls) against the single-process
// MoE block holding every expert: outputs and every gradient, for each gate, for ep 2 and 4
// (with expert replicas), with ranks that send or receive no tokens.
#include <mutex>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "engine/dist/expert_parallel.h"
#include "engine/model/core/moe/moe_block.h"
#include "tests/dist/ranks_util.h"

namespace ftd::engine {
namespace {

constexpr int64_t kH = 16, kF = 8, kE = 8, kK = 2;

ModelConfig SmallConfig() {
  ModelConfig c;
  c.hidden_size = kH;
  c.moe_intermediate_size = kF;
  c.num_experts = kE;
  c.num_experts_per_tok = kK;
  c.norm_topk_prob = true;
  return c;
}

at::Tensor Randn(std::vector<int64_t> shape, uint64_t seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  return at::normal(0.0, 1.0, shape, gen, at::TensorOptions().dtype(at::kFloat));
}

struct Case {
  GateMode gate;
  int world;
  int ep;
  std::vector<int64_t> tokens_per_rank;
};

struct RankResult {
  at::Tensor out, x_grad, router_grad, gate_up_grad, down_grad;
  int64_t rows_sent = 0, rows_received = 0;
  double seconds = 0;
};

void CheckAgainstSingleProcess(const Case& tc) {
  const ModelConfig c = SmallConfig();
  at::Tensor router = Randn({kE, kH}, 1), gate_up = Randn({kE, kH, 2 * kF}, 2) * 0.3, down = Randn({kE, kF, kH}, 3) * 0.3;
  std::vector<at::Tensor> xs, gs;
  for (int r = 0; r < tc.world; ++r) {
    xs.push_back(Randn({1, tc.tokens_per_rank[r], kH}, 10 + r));
    gs.push_back(Randn({1, tc.tokens_per_rank[r], kH}, 20 + r));
  }

  // Reference: one process, every expert, each rank's tokens as their own batch.
  MoeWeights full;
  full.router = router.clone().requires_grad_();
  full.gate_up = gate_up.clone().requires_grad_();
  full.down = down.clone().requires_grad_();
  std::vector<at::Tensor> ref_out, ref_x;
  at::Tensor total = at::zeros({});
  for (int r = 0; r < tc.world; ++r) {
    at::Tensor x = xs[r].clone().requires_grad_();
    at::Tensor out = tc.tokens_per_rank[r] > 0 ? MoeBlock(x, full, c, tc.gate, nullptr).out : x * 0;
    total = total + (out * gs[r]).sum();
    ref_out.push_back(out.detach());
    ref_x.push_back(x);
  }
  total.backward();

  std::vector<RankResult> results(tc.world);
  std::mutex mu;
  testing::RunRanks({.world_size = tc.world, .ep_size = tc.ep, .num_experts = kE}, [&](int r, ProcessGroups& g) {
    const int64_t El = g.mesh.experts_per_rank(), begin = g.mesh.expert_begin();
    MoeWeights local;
    local.router = router.clone().requires_grad_();
    local.gate_up = gate_up.narrow(0, begin, El).clone().requires_grad_();
    local.down = down.narrow(0, begin, El).clone().requires_grad_();
    ExpertParallelDispatch dispatch(g.ep.get(), kE);
    at::Tensor x = xs[r].clone().requires_grad_();
    MoeOutput out = MoeBlock(x, local, c, tc.gate, &dispatch);
    (out.out * gs[r]).sum().backward();
    RankResult res;
    res.out = out.out.detach();
    res.x_grad = x.grad();
    res.router_grad = local.router.grad();
    res.gate_up_grad = local.gate_up.grad();
    res.down_grad = local.down.grad();
    std::tie(res.rows_sent, res.rows_received) = dispatch.TakeRowCounts();
    res.seconds = dispatch.TakeAllToAllSeconds();
    std::lock_guard<std::mutex> lock(mu);
    results[r] = std::move(res);
  });

  at::Tensor router_grad = at::zeros_like(router);
  at::Tensor gate_up_grad = at::zeros_like(gate_up), down_grad = at::zeros_like(down);
  for (int r = 0; r < tc.world; ++r) {
    const RankResult& res = results[r];
    ASSERT_TRUE(res.out.defined()) << "rank " << r;
    EXPECT_TRUE(at::allclose(res.out, ref_out[r], 1e-5, 1e-6)) << "rank " << r << " output";
    if (tc.tokens_per_rank[r] > 0) {
      EXPECT_TRUE(at::allclose(res.x_grad, ref_x[r].grad(), 1e-5, 1e-6)) << "rank " << r << " input gradient";
    }
    if (res.router_grad.defined()) router_grad += res.router_grad;
    EXPECT_GT(res.seconds, 0.0) << "rank " << r << ": exchanges are timed";
    // Experts are gradient-complete once summed over their replicas. A rank that received no
    // rows leaves its experts without a gradient (zeros to the trainer); any other has both.
    if (res.rows_received == 0) {
      EXPECT_FALSE(res.gate_up_grad.defined() || res.down_grad.defined()) << "rank " << r;
      continue;
    }
    ASSERT_TRUE(res.gate_up_grad.defined() && res.down_grad.defined()) << "rank " << r << ": expert grads undefined";
    const int64_t El = kE / tc.ep, begin = (r % tc.ep) * El;
    gate_up_grad.narrow(0, begin, El).add_(res.gate_up_grad);
    down_grad.narrow(0, begin, El).add_(res.down_grad);
  }
  if (full.router.grad().defined()) {
    EXPECT_TRUE(at::allclose(router_grad, full.router.grad(), 1e-5, 1e-6)) << "router gradient";
  }
  EXPECT_TRUE(at::allclose(gate_up_grad, full.gate_up.grad(), 1e-5, 1e-6)) << "gate_up gradient";
  EXPECT_TRUE(at::allclose(down_grad, full.down.grad(), 1e-5, 1e-6)) << "down gradient";

  // Each token goes once to each ep rank that serves it: never more rows than token choices.
  for (int r = 0; r < tc.world; ++r) {
    EXPECT_LE(results[r].rows_sent, tc.tokens_per_rank[r] * kK);
    EXPECT_GE(results[r].rows_sent, tc.tokens_per_rank[r]);
  }
  if (tc.gate == GateMode::kSkewFirstK) {
    // Experts [0, k) live on ep rank 0: one row per token, and nothing for the other ep ranks.
    for (int r = 0; r < tc.world; ++r) {
      EXPECT_EQ(results[r].rows_sent, tc.tokens_per_rank[r]);
      if (r % tc.ep != 0) EXPECT_EQ(results[r].rows_received, 0) << "rank " << r;
    }
  }
  if (tc.gate == GateMode::kSkewLowerHalf) {
    for (int r = 0; r < tc.world; ++r) {
      if (r % tc.ep >= tc.ep / 2) EXPECT_EQ(results[r].rows_received, 0) << "rank " << r;
    }
  }
}

TEST(ExpertParallelTest, RealRouterEp4) { CheckAgainstSingleProcess({GateMode::kReal, 4, 4, {13, 7, 11, 9}}); }
TEST(ExpertParallelTest, RealRouterEp2WithReplicas) { CheckAgainstSingleProcess({GateMode::kReal, 4, 2, {5, 12, 8, 10}}); }
TEST(ExpertParallelTest, BalancedGateEp4) { CheckAgainstSingleProcess({GateMode::kBalanced, 4, 4, {12, 9, 6, 3}}); }
TEST(ExpertParallelTest, EverythingToOneRank) { CheckAgainstSingleProcess({GateMode::kSkewFirstK, 4, 4, {10, 6, 8, 4}}); }
TEST(ExpertParallelTest, UpperRanksGetNoTokens) { CheckAgainstSingleProcess({GateMode::kSkewLowerHalf, 4, 4, {9, 7, 5, 11}}); }
TEST(ExpertParallelTest, RankWithNoTokensAtAll) { CheckAgainstSingleProcess({GateMode::kReal, 4, 4, {10, 0, 8, 6}}); }
TEST(ExpertParallelTest, SingleRankGroup) { CheckAgainstSingleProcess({GateMode::kReal, 2, 1, {9, 4}}); }

}  // namespace
}  // namespace ftd::engine
