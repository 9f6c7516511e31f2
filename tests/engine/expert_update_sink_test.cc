// The optimizer as the experts' weight-gradient sink (AdamW::StepFromExpertWeightGrad and
// DeferExpertWeightGrad, reached through engine/model/core/moe/expert_weight_grad_sink.h): inside
// a step in backward, or in the norm-taking backward of a clipped step, it takes dW = a^T b of a
// stacked expert weight as that weight's whole gradient, leaves the weight as a step from the
// formed gradient does, and refuses what it must not take. CPU: the reference path.
#include <algorithm>
#include <memory>
#include <utility>
#include <vector>

#include <ATen/ATen.h>

#include "engine/model/core/moe/expert_weight_grad_sink.h"
#include "engine/train/optimizer.h"
#include "gtest/gtest.h"
#include "kernels/grouped_gemm.h"

namespace ftd::engine {
namespace {

struct Twin {
  at::Tensor weight, other;  // [E, K, M] expert weight, and a 2-D parameter
  std::unique_ptr<AdamW> opt;
};

// On the heap: the optimizer keeps pointers to the tensors.
std::unique_ptr<Twin> MakeTwin(const at::Tensor& weight, const at::Tensor& other, bool fuse, bool in_backward = true,
                               bool epilogue = false, int64_t chunk_bytes = 0) {
  auto t = std::make_unique<Twin>();
  t->weight = weight.clone().requires_grad_();
  t->other = other.clone().requires_grad_();
  AdamWConfig config;
  config.fuse_expert_update = fuse;
  config.deferred_update_in_epilogue = epilogue;
  config.deferred_update_chunk_bytes = chunk_bytes;
  auto opt = AdamW::Create({{"experts.w", &t->weight, true, 0}, {"norm.weight", &t->other, false, 0}},
                           PrecisionPolicy::kCompact, config);
  EXPECT_TRUE(opt.ok()) << opt.status();
  t->opt = std::move(*opt);
  if (in_backward) {
    t->opt->EnableStepInBackward();
  } else {
    t->opt->EnableNormInBackward();
  }
  return t;
}

TEST(ExpertUpdateSink, StepsTheWeightAsItsFormedGradientDoes) {
  at::manual_seed(9);
  const std::vector<int64_t> counts = {3, 0, 9, 4};
  const int64_t E = 4, K = 16, M = 256, N = 16;
  const at::Tensor offs = at::tensor(counts, at::kLong).cumsum(0).to(at::kInt);
  const at::Tensor weight = (at::randn({E, K, M}) * 0.02).to(at::kBFloat16);
  const at::Tensor other = at::randn({4, 8}).to(at::kBFloat16);
  auto fused_twin = MakeTwin(weight, other, true), formed_twin = MakeTwin(weight, other, true);
  Twin &fused = *fused_twin, &formed = *formed_twin;
  for (int step = 0; step < 2; ++step) {
    const at::Tensor a = at::randn({N, K}).to(at::kBFloat16), b = at::randn({N, M}).to(at::kBFloat16);
    const at::Tensor other_grad = at::randn({4, 8}).to(at::kBFloat16);
    fused.opt->BeginStepInBackward(1e-3);
    ExpertWeightGradSink* sink = CurrentExpertWeightGradSink();
    ASSERT_NE(sink, nullptr) << "no sink installed during the step";
    EXPECT_TRUE(sink->Consume(fused.weight, a, b, offs));
    EXPECT_FALSE(sink->Consume(fused.other, a, b, offs)) << "a parameter that is not a stacked expert weight";
    EXPECT_FALSE(sink->Consume(formed.weight, a, b, offs)) << "another optimizer's parameter";
    fused.other.backward(other_grad);  // the hook steps the ordinary parameter
    fused.opt->FinishStepInBackward();
    EXPECT_EQ(CurrentExpertWeightGradSink(), nullptr) << "the sink outlived the step";
    EXPECT_EQ(fused.opt->fused_expert_steps(), 1);
    EXPECT_FALSE(fused.weight.grad().defined());

    formed.opt->BeginStepInBackward(1e-3);
    formed.weight.backward(kernels::GroupedMmWeightGradReference(a, b, offs));
    formed.other.backward(other_grad);
    formed.opt->FinishStepInBackward();
    EXPECT_EQ(formed.opt->fused_expert_steps(), 0);
  }
  EXPECT_TRUE(at::equal(fused.weight, formed.weight));
  EXPECT_TRUE(at::equal(fused.other, formed.other));
  EXPECT_FALSE(at::equal(fused.weight, weight)) << "the steps changed nothing";
  // The optimizer state (masters and moments) too, as a resumed run would load it.
  const auto fs = fused.opt->StateTensors(), ms = formed.opt->StateTensors();
  ASSERT_EQ(fs.size(), ms.size());
  for (size_t i = 0; i < fs.size(); ++i) EXPECT_TRUE(at::equal(fs[i].second, ms[i].second)) << fs[i].first;
}

// The clipped step (grad_clip > 0, the default spec): the norm is taken in backward, the update
// after it (the GEMM again, then the step, on the whole weight or a few experts at a time; or the
// GEMM with the step in its epilogue). clip: no clipping (the scale is exactly 1, so the steps are
// bit-identical), then clipping (the two paths sum the same squares in different orders).
TEST(ExpertUpdateSink, ClippedStepFromDeferredOperandsEqualsTheFormedGradientsStep) {
  struct Case {
    double clip;
    bool epilogue;
    int64_t chunk_bytes;  // an expert's gradient is 16 x 256 bf16 = 8 KiB
  };
  for (const Case& c : {Case{1e6, false, 0}, Case{1e-3, false, 0}, Case{1e6, true, 0}, Case{1e6, false, 8192},
                        Case{1e6, false, 3 * 8192 + 100}, Case{1e-3, false, 2 * 8192}}) {
    const double clip = c.clip;
    SCOPED_TRACE(::testing::Message() << "clip " << clip << " epilogue " << c.epilogue << " chunk bytes "
                                      << c.chunk_bytes);
    at::manual_seed(11);
    const std::vector<int64_t> counts = {5, 0, 7, 4};
    const int64_t E = 4, K = 16, M = 256, N = 16;
    const at::Tensor offs = at::tensor(counts, at::kLong).cumsum(0).to(at::kInt);
    const at::Tensor weight = (at::randn({E, K, M}) * 0.02).to(at::kBFloat16);
    const at::Tensor other = at::randn({4, 8}).to(at::kBFloat16);
    auto fused_twin = MakeTwin(weight, other, true, false, c.epilogue, c.chunk_bytes),
         formed_twin = MakeTwin(weight, other, true, false);
    for (int step = 0; step < 2; ++step) {
      const at::Tensor a = at::randn({N, K}).to(at::kBFloat16), b = at::randn({N, M}).to(at::kBFloat16);
      const at::Tensor other_grad = at::randn({4, 8}).to(at::kBFloat16);
      double norms[2];
      for (int which = 0; which < 2; ++which) {
        Twin& t = which == 0 ? *fused_twin : *formed_twin;
        t.opt->BeginNormInBackward();
        if (which == 0) {
          ASSERT_NE(CurrentExpertWeightGradSink(), nullptr);
          EXPECT_TRUE(CurrentExpertWeightGradSink()->Consume(t.weight, a, b, offs));
          EXPECT_FALSE(CurrentExpertWeightGradSink()->Consume(t.weight, a, b, offs)) << "taken twice in a step";
        } else {
          t.weight.backward(kernels::GroupedMmWeightGradReference(a, b, offs));
        }
        t.other.backward(other_grad);
        t.opt->FinishNormInBackward();
        EXPECT_EQ(CurrentExpertWeightGradSink(), nullptr);
        const at::Tensor norm = t.opt->SquaredGradNorm().sqrt();
        norms[which] = norm.item<double>();
        t.opt->SetStepScalars(1e-3, std::min(1.0, clip / (norms[which] + 1e-6)));
        t.opt->Step();
        t.opt->ZeroGrad();
        EXPECT_EQ(t.opt->fused_expert_steps(), which == 0 ? 1 : 0);
      }
      EXPECT_NEAR(norms[0], norms[1], 1e-5 * norms[1]);
    }
    const Twin &fused = *fused_twin, &formed = *formed_twin;
    EXPECT_FALSE(at::equal(fused.weight, weight)) << "the steps changed nothing";
    if (clip > 1.0) {
      EXPECT_TRUE(at::equal(fused.weight, formed.weight));
      EXPECT_TRUE(at::equal(fused.other, formed.other));
    } else {
      const double rel = ((fused.weight.to(at::kFloat) - formed.weight.to(at::kFloat)).norm() /
                          (formed.weight.to(at::kFloat) - weight.to(at::kFloat)).norm()).item<double>();
      EXPECT_LT(rel, 1e-2) << "relative to the update";
    }
  }
}

TEST(ExpertUpdateSink, OutsideAStepOrTurnedOffItTakesNothing) {
  const at::Tensor weight = at::zeros({2, 8, 256}, at::kBFloat16), other = at::zeros({2, 2}, at::kBFloat16);
  const at::Tensor a = at::ones({4, 8}, at::kBFloat16), b = at::ones({4, 256}, at::kBFloat16);
  const at::Tensor offs = at::tensor({2, 4}, at::kInt);
  auto on = MakeTwin(weight, other, true);
  EXPECT_FALSE(on->opt->StepFromExpertWeightGrad(on->weight, a, b, offs)) << "outside Begin/FinishStepInBackward";
  auto off = MakeTwin(weight, other, false);
  off->opt->BeginStepInBackward(1e-3);
  EXPECT_EQ(CurrentExpertWeightGradSink(), nullptr) << "fuse_expert_update false installed a sink";
  EXPECT_FALSE(off->opt->StepFromExpertWeightGrad(off->weight, a, b, offs)) << "fuse_expert_update false";
  off->opt->FinishStepInBackward();
}

}  // namespace
}  // namespace ftd::engine
