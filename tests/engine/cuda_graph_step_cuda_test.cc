// engine/train/cuda_graph_step.h: a step replayed from the captured graphs trains as an eager
// step does (same losses, same parameter updates, with new batch contents refilled in place
// every step and the optimizer stepped inside backward on its side stream), and capture refuses
// the default stream.
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include "engine/model/config.h"
#include "engine/model/hf_checkpoint.h"
#include "engine/model/transformer.h"
#include "engine/train/cuda_graph_step.h"
#include "engine/train/optimizer.h"
#include "engine/util/compute_stream.h"
#include "gtest/gtest.h"

namespace ftd::engine {
namespace {

constexpr int64_t kBatch = 2, kSeq = 64, kSteps = 5, kEagerFirst = 2;
constexpr double kLr = 1e-2;

struct TrainRun {
  std::vector<double> losses;
  std::vector<at::Tensor> params_after_eager;  // after the kEagerFirst eager steps
  std::vector<at::Tensor> params_final;
};

std::vector<at::Tensor> Snapshot(const std::vector<NamedParam>& params) {
  std::vector<at::Tensor> out;
  for (const NamedParam& p : params) out.push_back(p.tensor->detach().to(at::kFloat).clone());
  return out;
}

// kSteps steps on fixed random batches; with `graphed`, the steps after the first
// kEagerFirst replay a capture.
TrainRun Train(bool graphed) {
  ModelConfig config = *PresetConfig("tiny");
  ModelOptions options;
  options.device = at::Device(at::kCUDA, 0);
  options.dtype = at::kBFloat16;
  ModelWeights weights = InitRandomWeights(config, options, 7);
  EnableGradients(weights);
  auto model = MoeTransformer::Create(config, options, std::move(weights));
  EXPECT_TRUE(model.ok()) << model.status();
  std::vector<NamedParam> params = (*model)->Parameters();
  auto opt = AdamW::Create(params, PrecisionPolicy::kBf16Pure, AdamWConfig{});
  EXPECT_TRUE(opt.ok()) << opt.status();
  (*opt)->EnableStepInBackward();
  AdamW* adamw = opt->get();  // the table steps inside its lookup's backward (captured as well)
  (*model)->SetEmbeddingLookup([adamw](const at::Tensor& t, const at::Tensor& ids) { return adamw->EmbeddingLookup(t, ids); });

  ComputeStreamScope scope(options.device);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(11);
  auto next_ids = [&] { return at::randint(0, config.vocab_size, {kBatch, kSeq}, gen, at::kLong).to(options.device); };
  at::Tensor ids = next_ids();
  Batch b;
  b.input_ids = ids;
  b.targets = ShiftLabels(ids);
  b.num_targets = kBatch * (kSeq - 1);
  b.loss_grad_scale = 1.0 / static_cast<double>(b.num_targets);
  auto forward = [&] {
    ForwardResult r = (*model)->Forward(b, false);
    return r.loss_sum / static_cast<double>(r.num_targets);
  };
  auto backward = [&](const at::Tensor& loss) {
    (*opt)->BeginStepInBackward(kLr);
    loss.backward();
    (*opt)->FinishStepInBackward();
  };

  TrainRun run;
  std::unique_ptr<CudaGraphStep> graph;
  for (int64_t step = 0; step < kSteps; ++step) {
    if (step > 0) {  // new contents, same tensors
      at::Tensor fresh = next_ids();
      b.input_ids.copy_(fresh);
      b.targets.copy_(ShiftLabels(fresh));
    }
    if (step == kEagerFirst) {
      run.params_after_eager = Snapshot(params);
      if (graphed) {
        auto captured = CudaGraphStep::Capture(forward, backward);
        EXPECT_TRUE(captured.ok()) << captured.status();
        if (!captured.ok()) return run;
        graph = std::move(*captured);
      }
    }
    if (graph) {
      graph->ReplayForward();
      run.losses.push_back(graph->loss().item<double>());
      graph->ReplayBackward();
    } else {
      at::Tensor loss = forward();
      run.losses.push_back(loss.item<double>());
      backward(loss);
    }
  }
  run.params_final = Snapshot(params);
  return run;
}

TEST(CudaGraphStep, ReplaysTrainLikeEagerSteps) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  TrainRun eager = Train(false);
  TrainRun graphed = Train(true);
  ASSERT_EQ(graphed.losses.size(), static_cast<size_t>(kSteps));
  for (int64_t i = 0; i < kSteps; ++i) {
    // Same kernels on the same values; only reductions that use atomics may reorder.
    EXPECT_NEAR(graphed.losses[i], eager.losses[i], 2e-3 * std::abs(eager.losses[i])) << "step " << i;
  }
  ASSERT_EQ(graphed.params_final.size(), eager.params_final.size());
  for (size_t i = 0; i < eager.params_final.size(); ++i) {
    // The replayed steps' updates (lr 1e-2: far above bf16 rounding) match the eager ones.
    at::Tensor want = eager.params_final[i] - eager.params_after_eager[i];
    at::Tensor got = graphed.params_final[i] - graphed.params_after_eager[i];
    ASSERT_GT(want.abs().max().item<double>(), 1e-3) << "param " << i << " did not move in the eager run";
    const double rel = (got - want).norm().item<double>() / want.norm().item<double>();
    EXPECT_LT(rel, 0.05) << "param " << i << ": replayed updates differ from the eager ones by " << rel;
  }
}

TEST(CudaGraphStep, RefusesTheDefaultStream) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  int ran = 0;
  auto s = CudaGraphStep::Capture([&] { ++ran; return at::zeros({}, at::kCUDA); }, [](const at::Tensor&) {});
  EXPECT_EQ(s.status().code(), absl::StatusCode::kFailedPrecondition) << s.status();
  EXPECT_EQ(ran, 0);
}

TEST(CudaGraphStep, NeedsACudaBuild) {
#ifdef FTD_WITH_CUDA
  GTEST_SKIP() << "CUDA build";
#else
  auto s = CudaGraphStep::Capture([] { return at::zeros({}); }, [](const at::Tensor&) {});
  EXPECT_EQ(s.status().code(), absl::StatusCode::kFailedPrecondition);
#endif
}

}  // namespace
}  // namespace ftd::engine
