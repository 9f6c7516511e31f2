// LoRA adapters in the engine (engine/model/lora.h): fresh adapters as PEFT initialises them,
// frozen base, adapters as the only parameters, expert adapters identical under any expert
// sharding, targets that match nothing refused, and merging equal to applying; GPT-OSS's
// interleaved gate_up adapters exported in HF's column order and imported back exactly;
// Nemotron-H's adapters under transformers' module names.
#include <cmath>
#include <map>
#include <memory>

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include "engine/model/config.h"
#include "engine/model/gate_up_columns.h"
#include "engine/model/hf_checkpoint.h"
#include "engine/model/lora.h"
#include "engine/model/transformer.h"
#include "engine/train/train_step.h"
#include "gtest/gtest.h"

namespace ftd::engine {
namespace {

const char* kConfig = R"({"model_type": "qwen3_moe", "vocab_size": 64, "hidden_size": 16,
  "intermediate_size": 24, "moe_intermediate_size": 8, "num_hidden_layers": 2, "num_attention_heads": 4,
  "num_key_value_heads": 2, "head_dim": 4, "num_experts": 4, "num_experts_per_tok": 2,
  "mlp_only_layers": [1], "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}})";

ModelConfig Config() {
  auto c = ParseModelConfig(kConfig);
  EXPECT_TRUE(c.ok()) << c.status();
  return *c;
}

LoraOptions AllTargets() {
  LoraOptions o;
  o.rank = 3;
  o.alpha = 6;
  o.targets = kLoraAttention | kLoraExperts | kLoraMlp;
  return o;
}

at::Tensor Logits(const ModelConfig& c, const ModelOptions& mo, ModelWeights w) {
  auto model = MoeTransformer::Create(c, mo, std::move(w));
  EXPECT_TRUE(model.ok()) << model.status();
  c10::NoGradGuard no_grad;
  Batch batch;
  batch.input_ids = at::arange(10, at::kLong).remainder(c.vocab_size).view({1, 10});
  return (*model)->Forward(batch, /*return_logits=*/true).logits;
}

TEST(Lora, FreshAdaptersAsPeftWithTheBaseFrozen) {
  ModelConfig c = Config();
  ModelOptions mo;
  ModelWeights w = InitRandomWeights(c, mo, 1);
  EnableGradients(w);
  ASSERT_TRUE(AddLoraAdapters(w, c, mo, AllTargets(), 5).ok());
  EXPECT_TRUE(w.lora);
  EXPECT_FALSE(w.layers[0].attn.q_proj.requires_grad());
  EXPECT_FALSE(w.layers[0].moe.gate_up.requires_grad());
  EXPECT_FALSE(w.embed.requires_grad());
  int experts = 0, linears = 0;
  for (const NamedParam& p : ListParameters(w)) {
    EXPECT_NE(p.name.find(".lora_"), std::string::npos) << p.name;
    EXPECT_TRUE(p.tensor->requires_grad()) << p.name;
    const bool is_b = p.name.find(".lora_B") != std::string::npos;
    if (is_b) {
      EXPECT_EQ(p.tensor->abs().max().item<float>(), 0.0f) << p.name;  // B starts at zero
    } else {
      // kaiming_uniform(a = sqrt(5)): uniform in +-1/sqrt(fan_in); the input width is dim 1 of
      // both A [r, in] and the experts' a [E, in, r].
      const int64_t in = p.tensor->size(1);
      EXPECT_LE(p.tensor->abs().max().item<float>(), 1.0 / std::sqrt(static_cast<double>(in)) + 1e-7) << p.name;
      EXPECT_GT(p.tensor->std().item<float>(), 0.1 / std::sqrt(static_cast<double>(in))) << p.name;
    }
    (p.expert ? experts : linears)++;
  }
  EXPECT_EQ(experts, 2 * 2);                // one MoE layer: gate_up and down, A and B
  EXPECT_EQ(linears, 2 * (2 * 4) + 2 * 3);  // q/k/v/o in both layers, the dense layer's MLP
  EXPECT_DOUBLE_EQ(w.layers[0].attn.q_lora.scale, 2.0);
  EXPECT_EQ(w.layers[0].moe.gate_up_lora.a.sizes(), (std::vector<int64_t>{4, 16, 3}));
  EXPECT_EQ(w.layers[0].moe.gate_up_lora.b.sizes(), (std::vector<int64_t>{4, 3, 16}));

  // B = 0: the adapted model is the base model, exactly.
  ModelWeights base = InitRandomWeights(c, mo, 1);
  EXPECT_TRUE(at::equal(Logits(c, mo, w), Logits(c, mo, base)));
}

TEST(Lora, RsloraScale) {
  LoraOptions o = AllTargets();
  o.rank = 16;
  o.alpha = 8;
  EXPECT_DOUBLE_EQ(o.scale(), 0.5);
  o.use_rslora = true;
  EXPECT_DOUBLE_EQ(o.scale(), 2.0);
}

TEST(Lora, ExpertAdaptersDoNotDependOnTheSharding) {
  ModelConfig c = Config();
  ModelOptions all, half;
  half.expert_begin = 2;
  half.expert_count = 2;
  ModelWeights w_all = InitRandomWeights(c, all, 1), w_half = InitRandomWeights(c, half, 1);
  ASSERT_TRUE(AddLoraAdapters(w_all, c, all, AllTargets(), 9).ok());
  ASSERT_TRUE(AddLoraAdapters(w_half, c, half, AllTargets(), 9).ok());
  EXPECT_TRUE(at::equal(w_half.layers[0].moe.gate_up_lora.a, w_all.layers[0].moe.gate_up_lora.a.narrow(0, 2, 2)));
  EXPECT_TRUE(at::equal(w_half.layers[0].moe.down_lora.a, w_all.layers[0].moe.down_lora.a.narrow(0, 2, 2)));
  EXPECT_TRUE(at::equal(w_half.layers[1].attn.o_lora.a, w_all.layers[1].attn.o_lora.a));
}

TEST(Lora, TargetMatchingNothingIsRefused) {
  ModelConfig c = Config();
  ModelOptions mo;
  ModelWeights w = InitRandomWeights(c, mo, 1);
  LoraOptions o = AllTargets();
  o.targets = kLoraAttention | kLoraSharedExperts;  // Qwen3-MoE has no shared experts
  absl::Status s = AddLoraAdapters(w, c, mo, o, 1);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("lora.targets: shared_experts"), std::string::npos) << s;
  uint32_t bit = 0;
  EXPECT_FALSE(LoraTargetFromName("router", &bit));
  EXPECT_TRUE(LoraTargetFromName("experts", &bit));
  EXPECT_EQ(bit, kLoraExperts);
}

// A preset's random model (seed 1) with rank-3, alpha-6 adapters on `targets`, every adapter
// tensor drawn off its init (B off zero) so that the adapters matter.
struct AdaptedModel {
  ModelConfig config;
  ModelWeights weights;
  LoraOptions options;
};
AdaptedModel AdaptedPreset(const std::string& preset, uint32_t targets) {
  AdaptedModel m;
  auto c = PresetConfig(preset);
  EXPECT_TRUE(c.ok()) << c.status();
  m.config = *c;
  m.weights = InitRandomWeights(m.config, ModelOptions{}, 1);
  m.options.rank = 3;
  m.options.alpha = 6;
  m.options.targets = targets;
  absl::Status added = AddLoraAdapters(m.weights, m.config, ModelOptions{}, m.options, 5);
  EXPECT_TRUE(added.ok()) << added;
  c10::NoGradGuard no_grad;
  for (NamedParam& p : ListParameters(m.weights)) p.tensor->normal_(0, 0.3);
  return m;
}

TEST(Lora, MergedWeightsGiveTheAdaptedLogits) {
  ModelConfig c = Config();
  ModelOptions mo;
  ModelWeights w = InitRandomWeights(c, mo, 1);
  ASSERT_TRUE(AddLoraAdapters(w, c, mo, AllTargets(), 5).ok());
  {
    c10::NoGradGuard no_grad;
    for (NamedParam& p : ListParameters(w)) p.tensor->normal_(0, 0.3);  // B off zero
  }
  at::Tensor adapted = Logits(c, mo, w);
  ModelWeights merged = w;  // shares the tensors: merge in place afterwards
  MergeLoraAdapters(merged);
  EXPECT_FALSE(merged.lora);
  EXPECT_FALSE(merged.layers[0].attn.q_lora.defined());
  at::Tensor after = Logits(c, mo, merged);
  ModelWeights base = InitRandomWeights(c, mo, 1);
  EXPECT_GT((adapted - Logits(c, mo, base)).abs().max().item<float>(), 1e-3);  // the adapters matter
  EXPECT_LE((adapted - after).abs().max().item<float>(), 1e-5);
}

// GPT-OSS: the experts take adapters; PEFT's lora_B of gate_up has HF's interleaved rows, so
// that PEFT's per-expert delta A[e]^T B[e]^T is the engine's a[e] b[e] with gate/up interleaved;
// merging equals applying.
TEST(Lora, GptOssExpertAdaptersInHfColumns) {
  AdaptedModel m = AdaptedPreset("tiny-gpt-oss", kLoraAttention | kLoraExperts);
  const ModelConfig& c = m.config;
  const LoraOptions& o = m.options;
  ModelWeights& w = m.weights;
  ModelOptions mo;
  const LoraExperts& gu = w.layers[0].moe.gate_up_lora;
  const int64_t E = c.num_experts, r = o.rank;
  std::map<std::string, at::Tensor> peft;
  for (auto& [k, t] : PeftAdapterTensors(w, [](const at::Tensor& t) { return t; })) peft[k] = t;
  const std::string key = "base_model.model.model.layers.0.mlp.experts.base_layer.";
  ASSERT_TRUE(peft.count(key + "lora_A.weight") && peft.count(key + "lora_B.weight"));
  at::Tensor A = peft[key + "lora_A.weight"].view({E, r, -1});                       // [E, r, H]
  at::Tensor B = peft[key + "lora_B.weight"].view({-1, r, E}).permute({2, 0, 1});  // [E, 2F, r]
  at::Tensor peft_delta = at::bmm(A.transpose(1, 2), B.transpose(1, 2));          // [E, H, 2F], HF's columns
  at::Tensor ours = InterleaveGateUp(at::bmm(gu.a, gu.b));
  EXPECT_TRUE(at::allclose(peft_delta, ours, 1e-5, 1e-6));
  EXPECT_FALSE(at::allclose(peft_delta, at::bmm(gu.a, gu.b), 1e-3, 1e-3));  // the order matters
  EXPECT_TRUE(at::equal(DeinterleaveGateUp(InterleaveGateUp(gu.b)), gu.b));

  at::Tensor adapted = Logits(c, mo, w);
  ModelWeights merged = w;
  MergeLoraAdapters(merged);
  EXPECT_GT((adapted - Logits(c, mo, InitRandomWeights(c, mo, 1))).abs().max().item<float>(), 1e-3);
  // W + s·B·A against Wx + s·B(Ax) in fp32, through two layers: ~1e-6 typically, up to 3e-5 seen
  // over random draws (logits ~0.6); the adapters move the logits by ~0.8.
  EXPECT_LE((adapted - Logits(c, mo, merged)).abs().max().item<float>(), 1e-4);
}

// Nemotron-H (tiny preset: Mamba2, attention, relu^2 MLP, MoE with LatentMoE and a shared
// expert): every family takes adapters under transformers v5's names (model.*, not the
// checkpoint's backbone.*), the relu^2 experts as PEFT's ParamWrappers on mixer.experts.up_proj
// (innermost) / down_proj, the latent projections with the experts; Mamba2's in_proj/out_proj
// and the router take none; merging equals applying.
TEST(Lora, NemotronHAdaptersUnderTransformersNames) {
  AdaptedModel m =  // ME*E-M
      AdaptedPreset("tiny-nemotron-h", kLoraAttention | kLoraMlp | kLoraExperts | kLoraSharedExperts);
  const ModelConfig& c = m.config;
  const LoraOptions& o = m.options;
  ModelWeights& w = m.weights;
  ModelOptions mo;
  std::map<std::string, at::Tensor> peft;
  for (auto& [k, t] : PeftAdapterTensors(w, [](const at::Tensor& t) { return t; })) peft[k] = t;
  const std::string p = "base_model.model.model.layers.";
  const int64_t E = c.num_experts, r = o.rank, L = c.moe_latent_size, F = c.moe_intermediate_size;
  const std::map<std::string, std::vector<int64_t>> want = {
      {p + "1.mixer.experts.base_layer.lora_A.weight", {E * r, L}},  // up_proj [E, F, L] in HF
      {p + "1.mixer.experts.base_layer.lora_B.weight", {F, r * E}},
      {p + "1.mixer.experts.lora_A.weight", {E * r, F}},             // down_proj
      {p + "1.mixer.experts.lora_B.weight", {L, r * E}},
      {p + "1.mixer.fc1_latent_proj.lora_A.weight", {r, c.hidden_size}},
      {p + "1.mixer.fc2_latent_proj.lora_B.weight", {c.hidden_size, r}},
      {p + "1.mixer.shared_experts.up_proj.lora_A.weight", {r, c.hidden_size}},
      {p + "2.mixer.q_proj.lora_A.weight", {r, c.hidden_size}},
      {p + "4.mixer.up_proj.lora_B.weight", {c.intermediate_size, r}},
  };
  for (const auto& [key, shape] : want) {
    ASSERT_TRUE(peft.count(key)) << key;
    EXPECT_EQ(peft[key].sizes().vec(), shape) << key;
  }
  // A and B of: 2 MoE layers x (up, down, 2 latent, 2 shared), q/k/v/o, the MLP's up/down.
  EXPECT_EQ(peft.size(), size_t{2 * (2 * 6 + 4 + 2)});
  for (const auto& [key, t] : peft) {
    EXPECT_EQ(key.find("backbone"), std::string::npos) << key;
    EXPECT_EQ(key.find("in_proj"), std::string::npos) << key;
    EXPECT_EQ(key.find("out_proj"), std::string::npos) << key;
    EXPECT_EQ(key.find(".gate."), std::string::npos) << key;
  }
  const std::string config = PeftAdapterConfigJson(w, o, "base");
  EXPECT_NE(config.find("\"mixer.experts.up_proj\""), std::string::npos) << config;
  EXPECT_NE(config.find("\"mixer.experts.down_proj\""), std::string::npos) << config;
  EXPECT_NE(config.find("\"model.layers.1.mixer.fc1_latent_proj.weight\""), std::string::npos) << config;
  for (const LoraSite& site : LoraSites(w)) {  // no gate: PEFT's stacked layout is the only export
    if (site.experts != nullptr) EXPECT_FALSE(HasPerExpertAdapterLayout(*site.spec)) << site.module;
  }

  at::Tensor adapted = Logits(c, mo, w);
  ModelWeights merged = w;
  MergeLoraAdapters(merged);
  EXPECT_GT((adapted - Logits(c, mo, InitRandomWeights(c, mo, 1))).abs().max().item<float>(), 1e-3);
  EXPECT_LE((adapted - Logits(c, mo, merged)).abs().max().item<float>(), 1e-5);
}

// Training with the step every job runs: the base is bit-identical afterwards, every adapter
// moved, and the optimizer's state names adapters only; in both optimizer modes (after backward
// with clipping, inside backward without), with and without activation checkpointing.
TEST(Lora, TrainingLeavesTheBaseBitIdenticalAndStatesOnlyAdapters) {
  for (bool in_backward : {false, true}) {
    for (bool checkpointing : {false, true}) {
      ModelConfig c = Config();
      ModelOptions mo;
      mo.activation_checkpointing = checkpointing;
      ModelWeights w = InitRandomWeights(c, mo, 1);
      ModelWeights original = InitRandomWeights(c, mo, 1);
      ASSERT_TRUE(AddLoraAdapters(w, c, mo, AllTargets(), 5).ok());
      EnableGradients(w);
      std::vector<at::Tensor> adapters_before;
      for (NamedParam& p : ListParameters(w)) adapters_before.push_back(p.tensor->detach().clone());
      auto model = MoeTransformer::Create(c, mo, std::move(w));
      ASSERT_TRUE(model.ok()) << model.status();
      TrainStepOptions o;
      o.precision = PrecisionPolicy::kFp32Master;
      o.adam.weight_decay = 0.1;
      o.grad_clip = in_backward ? 0.0 : 1.0;
      o.seq_len = 12;
      auto step = TrainStep::Create(model->get(), nullptr, nullptr, o);
      ASSERT_TRUE(step.ok()) << step.status();
      EXPECT_EQ((*step)->optimizer_in_backward(), in_backward);
      for (int i = 0; i < 3; ++i) {
        at::Tensor ids = (at::arange(12, at::kLong) * (7 + i)).remainder(c.vocab_size).view({1, 12});
        StepInput in;
        in.micro.push_back({ids, ShiftLabels(ids), {}, {}});
        in.targets_total = 11;
        in.lr = 1e-2;
        ASSERT_TRUE((*step)->Launch(in).ok());
        ASSERT_TRUE((*step)->Wait().ok());
      }
      ModelWeights& trained = (*model)->weights();
      for (const TensorSpec& spec : trained.layout) {
        const at::Tensor& t = SlotTensor(trained, spec);
        EXPECT_FALSE(t.requires_grad()) << spec.name;
        EXPECT_TRUE(at::equal(t, SlotTensor(original, spec))) << spec.name << " changed";
      }
      std::vector<NamedParam> params = ListParameters(trained);
      ASSERT_EQ(params.size(), adapters_before.size());
      for (size_t i = 0; i < params.size(); ++i) {
        EXPECT_FALSE(at::equal(*params[i].tensor, adapters_before[i])) << params[i].name << " did not train";
      }
      auto state = (*step)->StateTensors();
      ASSERT_FALSE(state.empty());
      for (const auto& [name, t] : state) {
        if (t.numel() <= 1) continue;  // step counters and scalars
        EXPECT_NE(name.find(".lora_"), std::string::npos) << name << " is not an adapter's state";
      }
    }
  }
}

}  // namespace
}  // namespace ftd::engine
