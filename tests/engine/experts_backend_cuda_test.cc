// backends.experts ftd on a GPU (skipped without an sm90 GPU and the CUTLASS build): the experts'
// grouped GEMMs on ftd's own Hopper kernel give the losses and gradients of at::_grouped_mm's, on
// the fused expert op (Qwen3-MoE, Moonlight's sigmoid router with shared experts) and on the
// autograd path (GPT-OSS's biased experts, and LoRA adapters on the experts); with the optimizer
// stepping in backward, the expert weights stepped inside their weight-gradient GEMM end up bit
// for bit as those stepped from the formed gradient.
#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <c10/core/GradMode.h>

#include "engine/model/config.h"
#include "engine/model/core/backends.h"
#include "engine/model/core/moe/expert_gemm.h"
#include "engine/model/hf_checkpoint.h"
#include "engine/model/lora.h"
#include "engine/model/transformer.h"
#include "engine/train/optimizer.h"
#include "gtest/gtest.h"

namespace ftd::engine {
namespace {

double Rel(const at::Tensor& a, const at::Tensor& b) {
  return ((a.to(at::kFloat) - b.to(at::kFloat)).norm() / b.to(at::kFloat).norm().clamp_min(1e-12)).item<double>();
}

struct LossAndGrads {
  double loss;
  std::vector<std::pair<std::string, at::Tensor>> grads;
};

LossAndGrads LossAndGradsWith(const ModelConfig& c, ExpertsBackend backend, int64_t lora_rank) {
  SetExpertsBackend(backend);
  ModelOptions mo;
  mo.device = at::Device(at::kCUDA, 0);
  mo.dtype = at::kBFloat16;
  mo.gate = GateMode::kBalanced;  // routing by position: nothing flips between the two runs
  ModelWeights w = InitRandomWeights(c, mo, 11);
  if (lora_rank > 0) {
    LoraOptions lora;
    lora.rank = lora_rank;
    lora.alpha = 2.0 * lora_rank;
    const absl::Status added = AddLoraAdapters(w, c, mo, lora, 12);
    EXPECT_TRUE(added.ok()) << added;
    // B away from its zero start, so that A's gradient is not zero too.
    auto gen = at::make_generator<at::CPUGeneratorImpl>(13);
    c10::NoGradGuard no_grad;
    for (LoraSite& site : LoraSites(w)) {
      at::Tensor& b = site.linear ? site.linear->b : site.experts->b;
      if (b.defined()) b.copy_(at::normal(0.0, 0.02, b.sizes(), gen));
    }
  } else {
    EnableGradients(w);
  }
  auto model = *MoeTransformer::Create(c, mo, std::move(w));
  auto gen = at::make_generator<at::CPUGeneratorImpl>(3);
  Batch b;
  b.input_ids = at::randint(0, c.vocab_size, {2, 64}, gen, at::kLong).to(mo.device);
  b.targets = ShiftLabels(b.input_ids);
  ForwardResult r = model->Forward(b, /*return_logits=*/false);
  at::Tensor loss = r.loss_sum / static_cast<double>(r.num_targets);
  loss.backward();
  LossAndGrads out{loss.item<double>(), {}};
  for (NamedParam& p : model->Parameters()) {
    if (p.tensor->grad().defined()) out.grads.emplace_back(p.name, p.tensor->grad().cpu());
  }
  SetExpertsBackend(ExpertsBackend::kGroupedMm);
  return out;
}

struct Case {
  std::string preset;
  int64_t lora_rank;
};

class ExpertsBackendFtd : public ::testing::TestWithParam<Case> {};

TEST_P(ExpertsBackendFtd, MatchesGroupedMm) {
  if (!OwnExpertGemmAvailable()) GTEST_SKIP() << "no sm90 GPU or no CUTLASS grouped GEMM in this build";
  ModelConfig c = *PresetConfig(GetParam().preset);
  c.hidden_size = 128;  // 16-byte rows for the grouped GEMMs
  c.moe_intermediate_size = 128;  // every base expert GEMM's sides >= 128: the own kernel takes them
  c.intermediate_size = 128;
  const LossAndGrads aten = LossAndGradsWith(c, ExpertsBackend::kGroupedMm, GetParam().lora_rank);
  const LossAndGrads own = LossAndGradsWith(c, ExpertsBackend::kFtd, GetParam().lora_rank);
  EXPECT_NEAR(own.loss, aten.loss, 1e-2 * aten.loss);
  ASSERT_EQ(own.grads.size(), aten.grads.size());
  int experts = 0;
  for (size_t i = 0; i < aten.grads.size(); ++i) {
    const auto& [name, ref] = aten.grads[i];
    ASSERT_EQ(own.grads[i].first, name);
    if (ref.norm().item<double>() == 0) continue;
    // bf16 outputs of two fp32-accumulating GEMMs that sum in different orders.
    EXPECT_LT(Rel(own.grads[i].second, ref), 3e-2) << name;
    if (name.find("experts") != std::string::npos) ++experts;
  }
  EXPECT_GT(experts, 0) << "no expert gradient compared";
}

INSTANTIATE_TEST_SUITE_P(Families, ExpertsBackendFtd,
                         ::testing::Values(Case{"tiny", 0}, Case{"tiny-deepseek-v3", 0}, Case{"tiny-gpt-oss", 0},
                                           Case{"tiny", 8}),
                         [](const auto& info) {
                           std::string n = info.param.preset + (info.param.lora_rank ? "_lora" : "");
                           for (char& ch : n) ch = ch == '-' ? '_' : ch;
                           return n;
                         });

// Two steps with the compact optimizer inside backward (in_backward), or after it with the norm
// taken in backward (the clipped step, at a clip that never binds; its deferred expert update in
// the GEMM's epilogue or as GEMM then step); the parameters after them.
// `norms` (the clipped step): each step's gradient norm.
std::vector<at::Tensor> ParamsAfterSteps(const ModelConfig& c, bool fuse, bool in_backward, bool epilogue,
                                         int64_t chunk_bytes, int64_t* fused_steps,
                                         std::vector<double>* norms = nullptr) {
  SetExpertsBackend(ExpertsBackend::kFtd);
  ModelOptions mo;
  mo.device = at::Device(at::kCUDA, 0);
  mo.dtype = at::kBFloat16;
  mo.gate = GateMode::kBalanced;
  ModelWeights w = InitRandomWeights(c, mo, 21);
  EnableGradients(w);
  auto model = *MoeTransformer::Create(c, mo, std::move(w));
  AdamWConfig config;
  config.fuse_expert_update = fuse;
  config.deferred_update_in_epilogue = epilogue;
  config.deferred_update_chunk_bytes = chunk_bytes;
  auto adamw = *AdamW::Create(model->Parameters(), PrecisionPolicy::kCompact, config);
  if (in_backward) {
    adamw->EnableStepInBackward();
  } else {
    adamw->EnableNormInBackward();
  }
  auto gen = at::make_generator<at::CPUGeneratorImpl>(4);
  for (int step = 0; step < 2; ++step) {
    Batch b;
    b.input_ids = at::randint(0, c.vocab_size, {1, 128}, gen, at::kLong).to(mo.device);
    b.targets = ShiftLabels(b.input_ids);
    if (in_backward) {
      adamw->BeginStepInBackward(1e-3);
    } else {
      adamw->BeginNormInBackward();
    }
    ForwardResult r = model->Forward(b, /*return_logits=*/false);
    (r.loss_sum / static_cast<double>(r.num_targets)).backward();
    if (in_backward) {
      adamw->FinishStepInBackward();
      continue;
    }
    adamw->FinishNormInBackward();
    if (fuse) {  // every stacked expert weight was taken by its GEMM: it holds no gradient
      for (NamedParam& p : model->Parameters()) {
        if (p.tensor->dim() == 3) EXPECT_FALSE(p.tensor->grad().defined()) << p.name << ", step " << step;
      }
    }
    const double norm = adamw->SquaredGradNorm().sqrt().item<double>();
    EXPECT_GT(norm, 0.0);
    if (norms != nullptr) norms->push_back(norm);
    adamw->SetStepScalars(1e-3, std::min(1.0, 1e6 / (norm + 1e-6)));  // 1 exactly
    adamw->Step();
    adamw->ZeroGrad();
  }
  *fused_steps = adamw->fused_expert_steps();
  std::vector<at::Tensor> params;
  for (NamedParam& p : model->Parameters()) params.push_back(p.tensor->detach().cpu());
  SetExpertsBackend(ExpertsBackend::kGroupedMm);
  return params;
}

// How the experts' update runs: inside backward, or after it (clipped) as GEMM then step or in the
// GEMM's epilogue.
enum class FusedMode { kStepInBackward, kClippedGemmThenStep, kClippedGemmThenStepByExpert, kClippedEpilogue };

class ExpertsBackendFtdFusedUpdate : public ::testing::TestWithParam<FusedMode> {};

TEST_P(ExpertsBackendFtdFusedUpdate, EqualsTheFormedGradientsStep) {
  if (!OwnExpertGemmAvailable()) GTEST_SKIP() << "no sm90 GPU or no CUTLASS grouped GEMM in this build";
  ModelConfig c = *PresetConfig("tiny");
  c.hidden_size = 256;  // the fused update takes weights whose rows are whole 256-element blocks:
  c.moe_intermediate_size = 128;  // down [E, F, 256] and gate_up [E, 256, 2F = 256]
  c.intermediate_size = 128;
  const bool in_backward = GetParam() == FusedMode::kStepInBackward;
  const bool epilogue = GetParam() == FusedMode::kClippedEpilogue;
  // 1 byte: every expert's gradient formed and stepped on its own (a one-group GEMM each).
  const int64_t chunk_bytes = GetParam() == FusedMode::kClippedGemmThenStepByExpert ? 1 : 0;
  int64_t fused_steps = 0, unfused_steps = 0;
  std::vector<double> fused_norms, unfused_norms;
  const std::vector<at::Tensor> fused =
      ParamsAfterSteps(c, true, in_backward, epilogue, chunk_bytes, &fused_steps, &fused_norms);
  const std::vector<at::Tensor> unfused =
      ParamsAfterSteps(c, false, in_backward, epilogue, chunk_bytes, &unfused_steps, &unfused_norms);
  // The clipped step's norm: the experts' part from the squares-only GEMM epilogue, the rest from
  // the norm pass, against the norm pass over every formed gradient (the same bf16 values summed
  // in another order). The parameters alone would not show a wrong norm: the clip never binds.
  ASSERT_EQ(fused_norms.size(), unfused_norms.size());
  for (size_t i = 0; i < fused_norms.size(); ++i) {
    EXPECT_NEAR(fused_norms[i], unfused_norms[i], 1e-5 * unfused_norms[i]) << "step " << i;
  }
  int64_t moe_layers = 0;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) moe_layers += c.IsMoeLayer(l) ? 1 : 0;
  ASSERT_GT(moe_layers, 0);
  EXPECT_EQ(fused_steps, 2 * moe_layers) << "gate_up and down of every MoE layer, fused";
  EXPECT_EQ(unfused_steps, 0);
  ASSERT_EQ(fused.size(), unfused.size());
  for (size_t i = 0; i < fused.size(); ++i) EXPECT_TRUE(at::equal(fused[i], unfused[i])) << "parameter " << i;
}

INSTANTIATE_TEST_SUITE_P(Optimizer, ExpertsBackendFtdFusedUpdate,
                         ::testing::Values(FusedMode::kStepInBackward, FusedMode::kClippedGemmThenStep,
                                           FusedMode::kClippedGemmThenStepByExpert, FusedMode::kClippedEpilogue),
                         [](const auto& info) {
                           switch (info.param) {
                             case FusedMode::kStepInBackward: return "StepInBackward";
                             case FusedMode::kClippedGemmThenStep: return "ClippedGemmThenStep";
                             case FusedMode::kClippedGemmThenStepByExpert: return "ClippedGemmThenStepByExpert";
                             default: return "ClippedEpilogue";
                           }
                         });

}  // namespace
}  // namespace ftd::engine
