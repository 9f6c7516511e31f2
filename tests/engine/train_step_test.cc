// engine/train/train_step.h, the step every training job runs:
// - the default (compact) policy trains bf16 weights as fp32 masters do: on the tiny preset at
//   lr 1e-5 for 20 steps with clipping, the trained delta is within 5% of fp32_master's, where
//   bf16_pure leaves most weights unchanged; compact_sr's stochastically rounded bf16 weights
//   move as fp32_master's on average;
// - the optimizer in backward (no clipping) and after backward (clipping that never bites) give
//   the same weights and the same gradient norm;
// - gradient accumulation equals one micro-batch holding the same rows;
// - on a GPU, a step replayed from a CUDA graph equals the eager step, for unpacked rows and for
//   packed rows of varying document counts (one graph per bucket), in both optimizer modes;
// - lm_head's GEMMs over the rows with a target only train as over every row, on the CPU and
//   from CUDA graphs (one per share of loss rows).
#include <chrono>
#include <cmath>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include "engine/model/config.h"
#include "engine/model/hf_checkpoint.h"
#include "engine/model/transformer.h"
#include "engine/train/train_step.h"
#include "gtest/gtest.h"
#include "kernels/adamw_compact.h"

namespace ftd::engine {
namespace {

struct TrainRun {
  std::unique_ptr<MoeTransformer> model;
  std::unique_ptr<TrainStep> step;
};

TrainRun MakeRun(at::Device device, at::ScalarType dtype, const TrainStepOptions& o, bool aux_loss = true) {
  ModelConfig c = *PresetConfig("tiny");
  if (!aux_loss) c.router_aux_loss_coef = 0;
  ModelOptions mo;
  mo.device = device;
  mo.dtype = dtype;
  ModelWeights w = InitRandomWeights(c, mo, /*seed=*/3);
  EnableGradients(w);
  TrainRun r;
  r.model = *MoeTransformer::Create(c, mo, std::move(w));
  auto step = TrainStep::Create(r.model.get(), nullptr, nullptr, o);
  EXPECT_TRUE(step.ok()) << step.status();
  r.step = std::move(*step);
  return r;
}

// Random rows (labels = inputs), or packed rows of `docs` documents when docs > 0.
MicroBatchTensors Rows(int64_t batch, int64_t seq, uint64_t seed, int64_t docs = 0) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  at::Tensor ids = at::randint(0, 512, {batch, seq}, gen, at::kLong);
  MicroBatchTensors mb{ids, ShiftLabels(ids), {}, {}};
  if (docs > 0) {
    // Documents of equal length (the last takes the rest); targets never cross a boundary.
    const int64_t len = seq / docs;
    mb.segment_ids = (at::arange(seq, at::kLong) / len).clamp_max(docs - 1).repeat({batch, 1});
    mb.position_ids = at::arange(seq, at::kLong).repeat({batch, 1}) - mb.segment_ids * len;
    at::Tensor boundary = mb.segment_ids.narrow(1, 1, seq - 1).ne(mb.segment_ids.narrow(1, 0, seq - 1));
    mb.targets.narrow(1, 0, seq - 1).masked_fill_(boundary, -100);
  }
  return mb;
}

StepInput Input(std::vector<MicroBatchTensors> micro, double lr) {
  StepInput in;
  in.lr = lr;
  for (const MicroBatchTensors& mb : micro) in.targets_total += mb.targets.ne(-100).sum().item<int64_t>();
  in.micro = std::move(micro);
  return in;
}

StepOutcome Step(TrainRun& r, const StepInput& in) {
  absl::Status launched = r.step->Launch(in);
  EXPECT_TRUE(launched.ok()) << launched;
  auto out = r.step->Wait();
  EXPECT_TRUE(out.ok()) << out.status();
  return *out;
}

// The weights as the optimizer holds them (fp32 masters), by parameter name, on the CPU.
std::map<std::string, at::Tensor> Masters(TrainRun& r) {
  std::map<std::string, at::Tensor> state;
  for (auto& [k, v] : r.step->StateTensors()) state[k] = v;
  std::map<std::string, at::Tensor> out;
  for (NamedParam& p : r.model->Parameters()) {
    at::Tensor param = p.tensor->detach().cpu();
    if (state.count("master." + p.name)) {
      out[p.name] = state["master." + p.name].to(at::kFloat);
    } else if (state.count("master_low." + p.name)) {
      out[p.name] = kernels::MasterFromSplit(param, state["master_low." + p.name]);
    } else {
      out[p.name] = param.to(at::kFloat);
    }
  }
  return out;
}

at::Tensor Flat(const std::map<std::string, at::Tensor>& m) {
  std::vector<at::Tensor> parts;
  for (const auto& [k, v] : m) parts.push_back(v.reshape({-1}));
  return at::cat(parts);
}

TEST(TrainStep, CompactTrainsBf16WeightsLikeFp32Masters) {
  const TrainStepOptions base{.grad_clip = 1.0, .micro_batch = 2, .seq_len = 64};
  std::map<PrecisionPolicy, at::Tensor> delta;
  at::Tensor initial;
  for (PrecisionPolicy policy : {PrecisionPolicy::kFp32Master, PrecisionPolicy::kCompact, PrecisionPolicy::kBf16Pure,
                                 PrecisionPolicy::kCompactSr}) {
    TrainStepOptions o = base;
    o.precision = policy;
    TrainRun r = MakeRun(at::kCPU, at::kBFloat16, o);
    if (!initial.defined()) initial = Flat(Masters(r));
    for (int s = 0; s < 20; ++s) Step(r, Input({Rows(2, 64, 100 + s)}, 1e-5));
    delta[policy] = Flat(Masters(r)) - initial;
  }
  const at::Tensor& ref = delta[PrecisionPolicy::kFp32Master];
  auto rel = [&](const at::Tensor& d) { return ((d - ref).norm() / ref.norm()).item<double>(); };
  const double compact = rel(delta[PrecisionPolicy::kCompact]), pure = rel(delta[PrecisionPolicy::kBf16Pure]);
  EXPECT_LT(compact, 0.05) << "compact vs fp32_master: relative L2 of the trained delta";
  // Not vacuous: bf16 round-to-nearest drops most of these updates.
  EXPECT_GT(pure, 0.5);
  EXPECT_GT(delta[PrecisionPolicy::kBf16Pure].eq(0).to(at::kFloat).mean().item<double>(), 0.5);
  EXPECT_LT(delta[PrecisionPolicy::kCompact].eq(0).to(at::kFloat).mean().item<double>(), 0.01);
  // compact_sr: each weight's delta is whole bf16 ulps at random, exact on average; the trained
  // delta projected on fp32_master's is fp32_master's (bf16_pure's keeps a small part of it).
  auto slope = [&](const at::Tensor& d) { return ((d * ref).sum() / ref.square().sum()).item<double>(); };
  const double sr_slope = slope(delta[PrecisionPolicy::kCompactSr]), pure_slope = slope(delta[PrecisionPolicy::kBf16Pure]);
  EXPECT_NEAR(sr_slope, 1.0, 0.1);
  EXPECT_LT(pure_slope, 0.7);
  std::cout << "trained delta vs fp32_master: compact " << compact << " (slope " << slope(delta[PrecisionPolicy::kCompact])
            << "), bf16_pure " << pure << " (slope "
            << pure_slope << "), compact_sr slope " << sr_slope << " (relative L2 " << rel(delta[PrecisionPolicy::kCompactSr])
            << ")\n";
}

TEST(TrainStep, OptimizerInBackwardEqualsAfterBackward) {
  for (PrecisionPolicy policy : {PrecisionPolicy::kCompact, PrecisionPolicy::kFp32Master}) {
    SCOPED_TRACE(PrecisionPolicyName(policy));
    TrainStepOptions in_bwd{.precision = policy, .grad_clip = 0.0, .micro_batch = 2, .seq_len = 48};
    TrainStepOptions after = in_bwd;
    after.grad_clip = 1e30;  // clipping that never bites: the same update, after backward
    TrainRun a = MakeRun(at::kCPU, at::kFloat, in_bwd), b = MakeRun(at::kCPU, at::kFloat, after);
    ASSERT_TRUE(a.step->optimizer_in_backward());
    ASSERT_FALSE(b.step->optimizer_in_backward());
    for (int s = 0; s < 3; ++s) {
      StepInput in = Input({Rows(2, 48, 7 + s)}, 1e-3);
      StepOutcome oa = Step(a, in), ob = Step(b, in);
      EXPECT_NEAR(oa.loss, ob.loss, 1e-6 * std::abs(ob.loss)) << "step " << s;
      if (policy == PrecisionPolicy::kCompact) {  // the updates themselves report the norm
        EXPECT_NEAR(oa.grad_norm, ob.grad_norm, 1e-4 * ob.grad_norm) << "step " << s;
      } else {
        EXPECT_TRUE(std::isnan(oa.grad_norm));
      }
      EXPECT_GT(ob.grad_norm, 0);
    }
    at::Tensor wa = Flat(Masters(a)), wb = Flat(Masters(b));
    EXPECT_TRUE(at::allclose(wa, wb, 1e-6, 1e-7)) << (wa - wb).abs().max().item<double>();
  }
}

TEST(TrainStep, AccumulationEqualsOneMicroBatchOfTheSameRows) {
  TrainStepOptions one{.precision = PrecisionPolicy::kFp32Master, .grad_clip = 0.5, .micro_batches = 1,
                       .micro_batch = 4, .seq_len = 32};
  TrainStepOptions four = one;
  four.micro_batches = 4;
  four.micro_batch = 1;
  // No load-balancing loss: it is a per-micro-batch statistic (as in HF), so it differs.
  TrainRun a = MakeRun(at::kCPU, at::kFloat, one, false), b = MakeRun(at::kCPU, at::kFloat, four, false);
  const at::Tensor initial = Flat(Masters(a));
  for (int s = 0; s < 3; ++s) {
    MicroBatchTensors whole = Rows(4, 32, 40 + s);
    std::vector<MicroBatchTensors> parts;
    for (int64_t i = 0; i < 4; ++i) {
      parts.push_back({whole.input_ids.narrow(0, i, 1), whole.targets.narrow(0, i, 1), {}, {}});
    }
    StepOutcome oa = Step(a, Input({whole}, 1e-3)), ob = Step(b, Input(parts, 1e-3));
    EXPECT_NEAR(oa.loss, ob.loss, 1e-5 * std::abs(oa.loss)) << "step " << s;
    EXPECT_NEAR(oa.grad_norm, ob.grad_norm, 1e-4 * oa.grad_norm) << "step " << s;
  }
  // The gradients agree to fp32 rounding; AdamW's first steps turn the sign of a gradient at the
  // rounding level (embedding rows no loss reaches) into a whole lr either way, so the trained
  // deltas are compared as a whole.
  at::Tensor da = Flat(Masters(a)) - initial, db = Flat(Masters(b)) - initial;
  EXPECT_LT(((da - db).norm() / da.norm()).item<double>(), 1e-2);
}

// Rows whose first `prompt` targets are ignored (-100), as a chat row's prompt.
MicroBatchTensors Prompted(MicroBatchTensors mb, int64_t prompt) {
  mb.targets.narrow(1, 0, prompt).fill_(-100);
  return mb;
}

// lm_head's GEMMs over the target rows only (the default) train as over every row: the loss's
// rows are the targets rounded up to an eighth of the micro-batch, here 1 to 8 eighths.
TEST(TrainStep, LossOverTargetRowsOnlyEqualsEveryRow) {
  TrainStepOptions skip{.precision = PrecisionPolicy::kFp32Master, .grad_clip = 1.0, .micro_batch = 2, .seq_len = 64};
  ASSERT_TRUE(skip.loss_skips_ignored_rows);
  TrainStepOptions every = skip;
  every.loss_skips_ignored_rows = false;
  TrainRun a = MakeRun(at::kCPU, at::kFloat, skip), b = MakeRun(at::kCPU, at::kFloat, every);
  const at::Tensor initial = Flat(Masters(a));
  const int64_t prompts[] = {0, 40, 63, 10, 64};  // 64: a row of prompt only (the other has targets)
  for (int s = 0; s < 5; ++s) {
    MicroBatchTensors mb = Rows(2, 64, 60 + s);
    mb.targets.narrow(0, 0, 1).narrow(1, 0, prompts[s]).fill_(-100);
    mb.targets.narrow(0, 1, 1).narrow(1, 0, prompts[s] / 2).fill_(-100);
    StepInput in = Input({mb}, 1e-3);
    StepOutcome oa = Step(a, in), ob = Step(b, in);
    EXPECT_NEAR(oa.loss, ob.loss, 1e-6 * std::abs(ob.loss)) << "step " << s;
    EXPECT_NEAR(oa.grad_norm, ob.grad_norm, 1e-5 * ob.grad_norm) << "step " << s;
  }
  at::Tensor da = Flat(Masters(a)) - initial, db = Flat(Masters(b)) - initial;
  EXPECT_GT(db.abs().max().item<double>(), 0.0);
  EXPECT_LT(((da - db).norm() / db.norm()).item<double>(), 1e-4);
}

// GPU: a step replayed from a CUDA graph does what the eager step does. Rows vary every step
// (the graph reads the static inputs refilled in place); packed rows with 3, 5 and 2 documents
// use the graphs of buckets 4, 8 and 2 (cu_seqlens padded with empty sequences).
TEST(TrainStepCuda, GraphReplayEqualsEagerSteps) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  for (double clip : {0.0, 1.0}) {
    for (int64_t docs_base : {0, 1}) {
      SCOPED_TRACE(::testing::Message() << "clip " << clip << " packed " << docs_base);
      TrainStepOptions o{.precision = PrecisionPolicy::kCompact, .grad_clip = clip, .micro_batch = 2, .seq_len = 64};
      o.warmup_before_capture = 1;
      TrainStepOptions eager_o = o;
      eager_o.cuda_graphs = false;
      TrainRun g = MakeRun(at::Device(at::kCUDA, 0), at::kBFloat16, o);
      TrainRun e = MakeRun(at::Device(at::kCUDA, 0), at::kBFloat16, eager_o);
      const int64_t docs[] = {3, 5, 2, 3, 5, 2, 3};
      int replays = 0;
      for (int s = 0; s < 7; ++s) {
        StepInput in = Input({Rows(2, 64, 300 + s, docs_base * docs[s])}, 1e-4);
        StepOutcome og = Step(g, in), oe = Step(e, in);
        replays += og.replayed;
        EXPECT_FALSE(oe.replayed);
        EXPECT_NEAR(og.loss, oe.loss, 2e-3 * std::abs(oe.loss)) << "step " << s;
        EXPECT_NEAR(og.grad_norm, oe.grad_norm, 1e-2 * oe.grad_norm) << "step " << s;
      }
      EXPECT_GE(replays, 3);
      at::Tensor wg = Flat(Masters(g)), we = Flat(Masters(e));
      EXPECT_TRUE(at::allclose(wg, we, 1e-3, 1e-5)) << (wg - we).abs().max().item<double>();
    }
  }
}

// GPU: steps of different prompt shares take a graph per share of loss rows (here 8, 5, 2 and
// 5 eighths again), each replay equal to eager steps over every row.
TEST(TrainStepCuda, GraphPerShareOfLossRowsEqualsEagerSteps) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  TrainStepOptions o{.precision = PrecisionPolicy::kCompact, .grad_clip = 1.0, .micro_batch = 2, .seq_len = 64};
  o.warmup_before_capture = 1;
  TrainStepOptions eager_o = o;
  eager_o.cuda_graphs = false;
  eager_o.loss_skips_ignored_rows = false;
  TrainRun g = MakeRun(at::Device(at::kCUDA, 0), at::kBFloat16, o);
  TrainRun e = MakeRun(at::Device(at::kCUDA, 0), at::kBFloat16, eager_o);
  const int64_t prompts[] = {0, 30, 50, 0, 30, 50, 30, 0, 50, 30};
  int replays = 0;
  for (int s = 0; s < 10; ++s) {
    StepInput in = Input({Prompted(Rows(2, 64, 700 + s), prompts[s])}, 1e-4);
    StepOutcome og = Step(g, in), oe = Step(e, in);
    replays += og.replayed;
    EXPECT_NEAR(og.loss, oe.loss, 2e-3 * std::abs(oe.loss)) << "step " << s;
    EXPECT_NEAR(og.grad_norm, oe.grad_norm, 1e-2 * oe.grad_norm) << "step " << s;
  }
  EXPECT_GE(replays, 4);  // each share's graph captured on its second step, replayed after
  at::Tensor wg = Flat(Masters(g)), we = Flat(Masters(e));
  EXPECT_TRUE(at::allclose(wg, we, 1e-3, 1e-5)) << (wg - we).abs().max().item<double>();
}

// A CUDA run (CUDA graphs as asked, captured after one eager step) and a CPU twin of the same
// model and options.
std::pair<TrainRun, TrainRun> CudaAndCpuRuns(PrecisionPolicy policy, at::ScalarType dtype, double clip, bool graphs) {
  TrainStepOptions o{.precision = policy, .grad_clip = clip, .micro_batch = 2, .seq_len = 64};
  o.warmup_before_capture = 1;
  o.cuda_graphs = graphs;
  TrainStepOptions cpu_o = o;
  cpu_o.cuda_graphs = false;
  return {MakeRun(at::Device(at::kCUDA, 0), dtype, o), MakeRun(at::kCPU, dtype, cpu_o)};
}

// GPU: the clipping norm taken during backward (kernels/squared_norm.h on the optimizer's side
// stream, eager and from the CUDA graph) is the CPU step's norm of the same model and rows, to
// bf16's noise (the two devices round the bf16 forward and backward differently).
TEST(TrainStepCuda, ClippedNormMatchesTheCpuStep) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  for (bool graphs : {false, true}) {
    SCOPED_TRACE(::testing::Message() << "cuda graphs " << graphs);
    auto [g, c] = CudaAndCpuRuns(PrecisionPolicy::kCompact, at::kBFloat16, /*clip=*/0.05, graphs);
    for (int s = 0; s < 4; ++s) {
      StepInput in = Input({Rows(2, 64, 500 + s)}, 1e-4);
      StepOutcome og = Step(g, in), oc = Step(c, in);
      EXPECT_GT(oc.grad_norm, 0.05) << "step " << s << ": the clip must bite for the test to mean anything";
      EXPECT_NEAR(og.grad_norm, oc.grad_norm, 3e-2 * oc.grad_norm) << "step " << s;
    }
  }
}

// GPU: a job with dtype fp32 (ftd-train's `dtype: fp32`) trains on CUDA with the CPU's losses.
// Its experts run one GEMM each, sized on the host, so a step that asks for CUDA graphs runs
// eagerly (it failed at the capture, step 2, before).
TEST(TrainStepCuda, Fp32StepsMatchTheCpu) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  for (bool graphs : {false, true}) {
    SCOPED_TRACE(::testing::Message() << "cuda graphs " << graphs);
    auto [g, c] = CudaAndCpuRuns(PrecisionPolicy::kFp32Master, at::kFloat, /*clip=*/1.0, graphs);
    for (int s = 0; s < 4; ++s) {
      StepInput in = Input({Rows(2, 64, 700 + s)}, 1e-3);
      absl::Status launched = g.step->Launch(in);
      ASSERT_TRUE(launched.ok()) << "step " << s << ": " << launched;
      auto og = g.step->Wait();
      ASSERT_TRUE(og.ok()) << "step " << s << ": " << og.status();
      EXPECT_FALSE(og->replayed);
      StepOutcome oc = Step(c, in);
      EXPECT_NEAR(og->loss, oc.loss, 1e-3 * std::abs(oc.loss)) << "step " << s;
    }
    if (graphs) EXPECT_NE(g.step->Describe().find("CUDA graphs off"), std::string::npos) << g.step->Describe();
  }
}

// GPU: steps launched as the trainer launches them on one device (the next before the current
// one's results are read) are timed on the device, each from its predecessor's end: the step
// that captures its CUDA graph (on the host, between launches) carries the capture, and the
// steps' times add up to the wall clock from the first step's end to the last one's.
TEST(TrainStepCuda, PipelinedStepsAreTimedFromThePreviousStepsEnd) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  TrainStepOptions o{.precision = PrecisionPolicy::kCompact, .grad_clip = 1.0, .micro_batch = 2, .seq_len = 64};
  o.warmup_before_capture = 3;  // steps 1-3 eager, step 4 captured, then replays
  TrainRun r = MakeRun(at::Device(at::kCUDA, 0), at::kBFloat16, o);
  for (int s = 1; s <= 2; ++s) EXPECT_EQ(Step(r, Input({Rows(2, 64, 500 + s)}, 1e-4)).pipelined_seconds, 0);
  const auto start = std::chrono::steady_clock::now();
  ASSERT_TRUE(r.step->Launch(Input({Rows(2, 64, 503)}, 1e-4)).ok());  // step 3: nothing in flight
  std::vector<StepOutcome> outcomes;  // steps 3..9
  for (int s = 4; s <= 9; ++s) {
    ASSERT_TRUE(r.step->Launch(Input({Rows(2, 64, 500 + s)}, 1e-4)).ok());
    auto out = r.step->Wait();
    ASSERT_TRUE(out.ok()) << out.status();
    outcomes.push_back(*out);
  }
  auto last = r.step->Wait();
  ASSERT_TRUE(last.ok()) << last.status();
  outcomes.push_back(*last);
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(outcomes[0].pipelined_seconds, 0);  // launched alone: the trainer's host clock times it
  double total = 0, replayed_max = 0;
  for (size_t i = 1; i < outcomes.size(); ++i) {
    SCOPED_TRACE(::testing::Message() << "step " << i + 3);
    EXPECT_GT(outcomes[i].pipelined_seconds, 0);
    EXPECT_TRUE(outcomes[i].replayed);
    total += outcomes[i].pipelined_seconds;
    if (i >= 2) replayed_max = std::max(replayed_max, outcomes[i].pipelined_seconds);
  }
  EXPECT_LE(total, wall);
  EXPECT_GE(total, 0.5 * wall);
  EXPECT_GT(outcomes[1].pipelined_seconds, replayed_max);  // step 4 carries its capture
}

}  // namespace
}  // namespace ftd::engine
